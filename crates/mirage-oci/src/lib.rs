//! Unikernels as OCI images and containers.
//!
//! A mirage-rs unikernel travels as an ordinary OCI image: one layer
//! holding the image for solo5-hvt or solo5-spt, the tender it was built
//! with, and its disk images, plus a description of how to boot it in
//! annotations ([`Unikernel`]). The names follow urunc's
//! (`com.urunc.unikernel.*`) where urunc has one, so that urunc can boot
//! the same images; what urunc does not describe (the tender in the
//! image, the devices by name, the memory) is under `org.mirage-rs.*`.
//! High-level runtimes rarely pass image annotations down to the OCI
//! runtime, so, as urunc does, the description is also a file at the root
//! of the image, `/urunc.json`, its values base64-encoded.
//!
//! [`image::write`] makes the tarball `ctr images import` takes (an OCI
//! image layout); the `mirage-runc` binary is the runtime containerd calls
//! in runc's place.
//!
//! ```
//! use mirage_oci::{Unikernel, Target};
//! let u = Unikernel {
//!     target: Target::Hvt,
//!     binary: "/unikernel/web.hvt".into(),
//!     tender: "/unikernel/solo5-hvt".into(),
//!     cmdline: "--port=8080".into(),
//!     mem_mib: Some(32),
//!     nets: vec!["service".into()],
//!     blocks: vec![],
//!     version: "0.1.0".into(),
//! };
//! let back = Unikernel::from_annotations(&u.annotations()).unwrap().unwrap();
//! assert_eq!(back, u);
//! ```

#![forbid(unsafe_code)]

pub mod image;
pub mod proto;
pub mod ttrpc;

use std::collections::BTreeMap;

/// `com.urunc.unikernel.unikernelType`: `mirage` for ours (urunc's name
/// for MirageOS-style Solo5 unikernels, whose devices and boot arguments
/// ours share).
pub const TYPE: &str = "com.urunc.unikernel.unikernelType";
/// `com.urunc.unikernel.hypervisor`: `hvt` or `spt`.
pub const HYPERVISOR: &str = "com.urunc.unikernel.hypervisor";
/// `com.urunc.unikernel.binary`: the unikernel's path in the image.
pub const BINARY: &str = "com.urunc.unikernel.binary";
/// `com.urunc.unikernel.cmdline`: its command line (Solo5's one string).
pub const CMDLINE: &str = "com.urunc.unikernel.cmdline";
/// `com.urunc.unikernel.unikernelVersion`: the mirage-rs version.
pub const VERSION: &str = "com.urunc.unikernel.unikernelVersion";
/// `com.urunc.unikernel.block`: urunc's one block device, attached as
/// `storage`; written only when the unikernel's one disk has that name.
pub const URUNC_BLOCK: &str = "com.urunc.unikernel.block";
/// `org.mirage-rs.unikernel.tender`: the tender's path in the image.
pub const TENDER: &str = "org.mirage-rs.unikernel.tender";
/// `org.mirage-rs.unikernel.net`: the network interfaces, comma-separated,
/// in the unikernel's order; the first is joined to the container's.
pub const NET: &str = "org.mirage-rs.unikernel.net";
/// `org.mirage-rs.unikernel.block`: `NAME=PATH` pairs, comma-separated.
pub const BLOCK: &str = "org.mirage-rs.unikernel.block";
/// `org.mirage-rs.unikernel.mem`: guest memory in MiB (`--mem`), when the
/// container has no memory limit.
pub const MEM: &str = "org.mirage-rs.unikernel.mem";

/// The file at the image's root holding the description (urunc's name).
pub const DESCRIPTION_FILE: &str = "urunc.json";

/// The longest command line accepted (Solo5's tenders take 8 KiB).
pub const MAX_CMDLINE: usize = 8192;

/// The tender a unikernel runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Hvt,
    Spt,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Hvt => "hvt",
            Target::Spt => "spt",
        }
    }
}

/// How to boot a unikernel packed in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unikernel {
    pub target: Target,
    /// Absolute path of the unikernel in the image.
    pub binary: String,
    /// Absolute path of the tender in the image.
    pub tender: String,
    /// Boot arguments, already quoted into Solo5's one command line.
    pub cmdline: String,
    pub mem_mib: Option<u32>,
    /// Network interfaces, in the unikernel's order.
    pub nets: Vec<String>,
    /// Block devices: name, absolute path in the image.
    pub blocks: Vec<(String, String)>,
    pub version: String,
}

/// A description that cannot be used, with what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub cause: String,
    pub fix: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.cause, self.fix)
    }
}

fn invalid(cause: impl Into<String>, fix: impl Into<String>) -> Invalid {
    Invalid { cause: cause.into(), fix: fix.into() }
}

/// Whether `name` is a Solo5 device name: letters, digits and `_`, at most
/// 67 bytes (the manifest's limit).
pub fn valid_device_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 67 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Checks that `path` (the value of annotation `key`) is an absolute path
/// inside the image: no `..`, no NUL.
fn image_path(key: &str, path: &str) -> Result<(), Invalid> {
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") || path.contains('\0') || path.len() > 4096 {
        return Err(invalid(
            format!("{key}={path:?} is not an absolute path inside the image"),
            "repack the image with mirage package --oci, or give a path such as /unikernel/NAME.hvt",
        ));
    }
    Ok(())
}

impl Unikernel {
    /// The annotations describing it, values as they are.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        a.insert(TYPE.into(), "mirage".into());
        a.insert(HYPERVISOR.into(), self.target.name().into());
        a.insert(BINARY.into(), self.binary.clone());
        a.insert(CMDLINE.into(), self.cmdline.clone());
        a.insert(VERSION.into(), self.version.clone());
        a.insert(TENDER.into(), self.tender.clone());
        a.insert(NET.into(), self.nets.join(","));
        let blocks: Vec<String> = self.blocks.iter().map(|(n, p)| format!("{n}={p}")).collect();
        a.insert(BLOCK.into(), blocks.join(","));
        if let [(name, path)] = self.blocks.as_slice()
            && name == "storage"
        {
            a.insert(URUNC_BLOCK.into(), path.clone());
        }
        if let Some(m) = self.mem_mib {
            a.insert(MEM.into(), m.to_string());
        }
        a
    }

    /// The description in `annotations`: `None` when they describe no
    /// unikernel at all (no `com.urunc.unikernel.*` or `org.mirage-rs.*`
    /// key), an error when they describe one that cannot be booted here.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Option<Unikernel>, Invalid> {
        let ours = annotations.keys().any(|k| k.starts_with("com.urunc.unikernel.") || k.starts_with("org.mirage-rs."));
        if !ours {
            return Ok(None);
        }
        let get = |k: &str| annotations.get(k).map(String::as_str);
        let required = |k: &str| {
            get(k).filter(|v| !v.is_empty()).ok_or_else(|| {
                invalid(format!("the annotation {k} is missing"), "repack the image with mirage package --oci")
            })
        };
        match get(TYPE) {
            Some("mirage") => {}
            Some(other) => {
                return Err(invalid(
                    format!("{TYPE}={other:?}: not a mirage-rs unikernel"),
                    "run unikernels of other kinds with urunc; mirage-runc boots type \"mirage\"",
                ));
            }
            None => return Err(invalid(format!("the annotation {TYPE} is missing"), "set it to \"mirage\"")),
        }
        let target = match required(HYPERVISOR)? {
            "hvt" => Target::Hvt,
            "spt" => Target::Spt,
            other => {
                return Err(invalid(
                    format!("{HYPERVISOR}={other:?}: mirage-runc runs hvt and spt"),
                    "build the unikernel for hvt or spt (mirage configure -t hvt)",
                ));
            }
        };
        let binary = required(BINARY)?.to_string();
        image_path(BINARY, &binary)?;
        let tender = required(TENDER)?.to_string();
        image_path(TENDER, &tender)?;
        let cmdline = get(CMDLINE).unwrap_or("").to_string();
        if cmdline.len() > MAX_CMDLINE || cmdline.contains('\0') {
            return Err(invalid(
                format!("{CMDLINE} is {} bytes or holds a NUL", cmdline.len()),
                format!("keep the command line under {MAX_CMDLINE} bytes"),
            ));
        }
        let mem_mib = match get(MEM).filter(|m| !m.is_empty()) {
            None => None,
            Some(m) => match m.parse::<u32>() {
                Ok(n) if (2..=65536).contains(&n) => Some(n),
                _ => {
                    return Err(invalid(
                        format!("{MEM}={m:?} is not a memory size in MiB from 2 to 65536"),
                        "give a whole number of MiB, such as 32",
                    ));
                }
            },
        };
        let list = |k: &str| get(k).unwrap_or("").split(',').filter(|s| !s.is_empty()).map(String::from);
        let nets: Vec<String> = list(NET).collect();
        if let Some(bad) = nets.iter().find(|n| !valid_device_name(n)) {
            return Err(invalid(
                format!("{NET} names the interface {bad:?}"),
                "use Solo5 device names: letters, digits and _",
            ));
        }
        let mut blocks = Vec::new();
        for pair in list(BLOCK) {
            let Some((name, path)) = pair.split_once('=') else {
                return Err(invalid(format!("{BLOCK} holds {pair:?}, not NAME=PATH"), "write NAME=PATH pairs"));
            };
            if !valid_device_name(name) {
                return Err(invalid(
                    format!("{BLOCK} names the device {name:?}"),
                    "use Solo5 device names: letters, digits and _",
                ));
            }
            image_path(BLOCK, path)?;
            blocks.push((name.to_string(), path.to_string()));
        }
        let version = get(VERSION).unwrap_or("").to_string();
        Ok(Some(Unikernel { target, binary, tender, cmdline, mem_mib, nets, blocks, version }))
    }

    /// The description as `/urunc.json` holds it: a JSON object of the
    /// annotations, each value base64-encoded (urunc's format).
    pub fn description_file(&self) -> String {
        let map: serde_json::Map<String, serde_json::Value> =
            self.annotations().into_iter().map(|(k, v)| (k, serde_json::Value::String(base64(v.as_bytes())))).collect();
        serde_json::to_string_pretty(&serde_json::Value::Object(map)).unwrap_or_default()
    }

    /// Reads `/urunc.json`: `None` when it describes no unikernel.
    pub fn from_description_file(text: &[u8]) -> Result<Option<Unikernel>, Invalid> {
        let fix = "repack the image with mirage package --oci";
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|e| invalid(format!("/{DESCRIPTION_FILE} is not JSON ({e})"), fix))?;
        let object = value.as_object().ok_or_else(|| invalid(format!("/{DESCRIPTION_FILE} is not an object"), fix))?;
        let mut map = BTreeMap::new();
        for (k, v) in object {
            let s = v.as_str().ok_or_else(|| invalid(format!("/{DESCRIPTION_FILE}: {k} is not a string"), fix))?;
            let bytes =
                unbase64(s).ok_or_else(|| invalid(format!("/{DESCRIPTION_FILE}: {k} is not base64 ({s:?})"), fix))?;
            let text =
                String::from_utf8(bytes).map_err(|_| invalid(format!("/{DESCRIPTION_FILE}: {k} is not UTF-8"), fix))?;
            map.insert(k.clone(), text);
        }
        Unikernel::from_annotations(&map)
    }
}

/// `word` quoted, if it must be, so that the unikernel's command-line
/// splitting (a shell's: `mirage_runtime::args::split_cmdline`) gives it
/// back as one word.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_=:,./@%+^".contains(c));
    if plain {
        return word.to_string();
    }
    // Inside single quotes nothing is special; a single quote itself is
    // closed, escaped and reopened.
    format!("'{}'", word.replace('\'', "'\\''"))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional); `None` if it is not.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        let v = BASE64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Unikernel {
        Unikernel {
            target: Target::Spt,
            binary: "/unikernel/web.spt".into(),
            tender: "/unikernel/solo5-spt".into(),
            cmdline: "'--hello=Hola Mundo'".into(),
            mem_mib: None,
            nets: vec!["service".into(), "admin".into()],
            blocks: vec![("storage".into(), "/unikernel/storage.img".into())],
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn base64_round_trips() {
        assert_eq!(base64(b"hvt"), "aHZ0");
        assert_eq!(base64(b"mirage"), "bWlyYWdl");
        assert_eq!(base64(b"ab"), "YWI=");
        for n in 0..40 {
            let data: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            assert_eq!(unbase64(&base64(&data)).unwrap(), data);
        }
        assert_eq!(unbase64("a"), None);
        assert_eq!(unbase64("a*bc"), None);
    }

    #[test]
    fn the_description_file_reads_back() {
        let u = web();
        let file = u.description_file();
        assert!(file.contains("\"com.urunc.unikernel.hypervisor\": \"c3B0\""), "{file}");
        assert_eq!(Unikernel::from_description_file(file.as_bytes()).unwrap().unwrap(), u);
        // urunc's one block device, for urunc.
        assert_eq!(u.annotations().get(URUNC_BLOCK).map(String::as_str), Some("/unikernel/storage.img"));
    }

    #[test]
    fn bad_descriptions_are_refused_with_the_key() {
        let cases = [
            (HYPERVISOR, "qemu", "mirage-runc runs hvt and spt"),
            (TYPE, "unikraft", "not a mirage-rs unikernel"),
            (BINARY, "../../bin/sh", "not an absolute path inside the image"),
            (TENDER, "/unikernel/../../../usr/bin/env", "not an absolute path"),
            (MEM, "lots", "not a memory size"),
            (MEM, "0", "not a memory size"),
            (NET, "eth0,../x", "names the interface"),
            (BLOCK, "storage", "not NAME=PATH"),
            (BLOCK, "disk=/dev/../etc/shadow", "not an absolute path"),
            (BINARY, "", "is missing"),
        ];
        for (key, value, want) in cases {
            let mut a = web().annotations();
            a.insert(key.into(), value.into());
            let e = Unikernel::from_annotations(&a).unwrap_err();
            assert!(e.cause.contains(want) && !e.fix.is_empty(), "{key}={value}: {e}");
        }
        assert_eq!(Unikernel::from_annotations(&BTreeMap::new()).unwrap(), None);
        assert!(Unikernel::from_description_file(b"{\"com.urunc.unikernel.binary\": \"%%%\"}").is_err());
        assert!(Unikernel::from_description_file(b"[]").is_err());
    }
}
