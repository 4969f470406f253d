//! The OCI image of a unikernel, as a tarball in the OCI image layout
//! (`oci-layout`, `index.json`, `blobs/sha256/…`) that `ctr images import`
//! and other tools read: one uncompressed layer with the files, an image
//! config whose labels are the description, and a manifest with the same
//! annotations.
//!
//! Every time in the archives is zero and every entry is written in a
//! fixed order, so the same files make the same image, digest for digest.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use sha2::{Digest, Sha256};

use crate::{DESCRIPTION_FILE, Unikernel};

/// A file of the image's layer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Absolute path in the image.
    pub path: String,
    /// Permission bits (0o755 for the tender).
    pub mode: u32,
    pub data: Vec<u8>,
}

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A ustar archive being written in memory.
struct Tar(Vec<u8>);

impl Tar {
    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8) -> std::io::Result<()> {
        // Paths here are made by the tool (a few short components); ustar's
        // 100-byte name is enough, and refusing is better than truncating.
        if path.len() > 100 || path.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the path {path:?} does not fit a tar header (at most 100 bytes)"),
            ));
        }
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        let mut octal = |at: std::ops::Range<usize>, v: u64| {
            let digits = at.len() - 1;
            h[at.start..at.start + digits].copy_from_slice(format!("{v:0digits$o}").as_bytes());
        };
        octal(100..108, u64::from(mode & 0o7777));
        octal(108..116, 0);
        octal(116..124, 0);
        octal(124..136, size);
        octal(136..148, 0);
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.0.extend_from_slice(&h);
        Ok(())
    }

    fn dir(&mut self, path: &str) -> std::io::Result<()> {
        self.header(&format!("{path}/"), 0o755, 0, b'5')
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.header(path, mode, data.len() as u64, b'0')?;
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0; 1024]);
        self.0
    }
}

fn digest(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": digest(data), "size": data.len() })
}

/// The layer: `files`, the directories above them and `/urunc.json`.
pub fn layer(unikernel: &Unikernel, files: &[Entry]) -> std::io::Result<Vec<u8>> {
    let mut entries: Vec<Entry> = files.to_vec();
    entries.push(Entry {
        path: format!("/{DESCRIPTION_FILE}"),
        mode: 0o644,
        data: unikernel.description_file().into_bytes(),
    });
    tar_of(entries)
}

/// A layer of `entries` and the directories above them, sorted.
fn tar_of(mut entries: Vec<Entry>) -> std::io::Result<Vec<u8>> {
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let mut dirs = BTreeSet::new();
    for e in &entries {
        let mut at = e.path.trim_start_matches('/');
        while let Some((parent, _)) = at.rsplit_once('/') {
            dirs.insert(parent.to_string());
            at = parent;
        }
    }
    let mut tar = Tar(Vec::new());
    for d in &dirs {
        tar.dir(d)?;
    }
    for e in &entries {
        tar.file(e.path.trim_start_matches('/'), e.mode, &e.data)?;
    }
    Ok(tar.finish())
}

/// Writes the image `reference` (`host/name:tag`) of `unikernel`, whose
/// layer holds `files`, as an OCI image layout tarball to `out`.
pub fn write(reference: &str, unikernel: &Unikernel, files: &[Entry], out: &mut dyn Write) -> std::io::Result<()> {
    let layer = layer(unikernel, files)?;
    write_layout(reference, std::slice::from_ref(&unikernel.binary), &unikernel.annotations(), &layer, out)
}

/// Writes an ordinary image, no unikernel: `files` in one layer, run as
/// `entrypoint` (the benchmarks' nginx, which runc runs).
pub fn write_plain(
    reference: &str,
    entrypoint: &[String],
    files: &[Entry],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let layer = tar_of(files.to_vec())?;
    write_layout(reference, entrypoint, &BTreeMap::new(), &layer, out)
}

fn write_layout(
    reference: &str,
    entrypoint: &[String],
    annotations: &BTreeMap<String, String>,
    layer: &[u8],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": entrypoint,
            "Labels": annotations,
        },
        "rootfs": { "type": "layers", "diff_ids": [digest(layer)] },
        "history": [{ "created_by": "mirage package --oci" }],
    });
    let config = serde_json::to_vec(&config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": descriptor(CONFIG, &config),
        "layers": [descriptor(LAYER, layer)],
        "annotations": annotations,
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let tag = reference.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map_or("latest", |(_, t)| t);
    let mut entry = descriptor(MANIFEST, &manifest);
    entry["platform"] = serde_json::json!({ "architecture": "amd64", "os": "linux" });
    entry["annotations"] = serde_json::json!({
        "io.containerd.image.name": reference,
        "org.opencontainers.image.ref.name": tag,
    });
    let index = serde_json::json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": [entry] });
    let mut tar = Tar(Vec::new());
    tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar.file("index.json", 0o644, &serde_json::to_vec(&index)?)?;
    tar.dir("blobs")?;
    tar.dir("blobs/sha256")?;
    for blob in [layer, &config, &manifest] {
        let name = digest(blob).replace("sha256:", "blobs/sha256/");
        tar.file(&name, 0o644, blob)?;
    }
    out.write_all(&tar.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Target;

    fn unikernel() -> Unikernel {
        Unikernel {
            target: Target::Hvt,
            binary: "/unikernel/web.hvt".into(),
            tender: "/unikernel/solo5-hvt".into(),
            cmdline: String::new(),
            mem_mib: Some(16),
            nets: vec!["service".into()],
            blocks: vec![],
            version: "0.1.0".into(),
        }
    }

    /// Lists a tar archive with GNU tar: names, modes, sizes.
    fn gnu_tar_list(archive: &[u8]) -> String {
        let dir = std::env::temp_dir().join(format!("mirage-oci-test-{}-{}", std::process::id(), archive.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.tar");
        std::fs::write(&file, archive).unwrap();
        let out = std::process::Command::new("tar").arg("tvf").arg(&file).output().expect("GNU tar");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn the_layer_is_a_tar_with_directories_modes_and_the_description() {
        let files = [
            Entry { path: "/unikernel/solo5-hvt".into(), mode: 0o755, data: vec![1; 1000] },
            Entry { path: "/unikernel/web.hvt".into(), mode: 0o644, data: vec![2; 10] },
        ];
        let list = gnu_tar_list(&layer(&unikernel(), &files).unwrap());
        let line = |name: &str| {
            list.lines()
                .find(|l| l.ends_with(name))
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line(" unikernel/"), "drwxr-xr-x 0/0 0 1970-01-01 00:00 unikernel/", "{list}");
        assert_eq!(line("solo5-hvt"), "-rwxr-xr-x 0/0 1000 1970-01-01 00:00 unikernel/solo5-hvt", "{list}");
        assert_eq!(line("web.hvt"), "-rw-r--r-- 0/0 10 1970-01-01 00:00 unikernel/web.hvt", "{list}");
        assert!(line(" urunc.json").starts_with("-rw-r--r-- 0/0"), "{list}");
    }

    #[test]
    fn the_layout_names_each_blob_by_its_digest() {
        let mut out = Vec::new();
        let files = [Entry { path: "/unikernel/web.hvt".into(), mode: 0o644, data: b"image".to_vec() }];
        write("localhost/mirage/web:hvt", &unikernel(), &files, &mut out).unwrap();
        let list = gnu_tar_list(&out);
        assert!(list.contains("oci-layout") && list.contains("index.json"), "{list}");
        assert_eq!(list.matches("blobs/sha256/").count(), 4, "{list}");
        // The same input, the same bytes.
        let mut again = Vec::new();
        write("localhost/mirage/web:hvt", &unikernel(), &files, &mut again).unwrap();
        assert_eq!(out, again);
        // Each blob's name is its digest (GNU tar extracts them).
        let dir = std::env::temp_dir().join(format!("mirage-oci-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("i.tar"), &out).unwrap();
        let ok = std::process::Command::new("tar").arg("xf").arg("i.tar").current_dir(&dir).status().unwrap();
        assert!(ok.success());
        let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "localhost/mirage/web:hvt");
        assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "hvt");
        for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            let data = std::fs::read(e.path()).unwrap();
            assert_eq!(digest(&data), format!("sha256:{}", e.file_name().to_string_lossy()));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_long_path_is_refused() {
        let files = [Entry { path: format!("/{}", "x".repeat(120)), mode: 0o644, data: vec![] }];
        assert!(layer(&unikernel(), &files).is_err());
    }
}
