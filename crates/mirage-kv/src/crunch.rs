//! The build-time half of [`crate::Crunched`]: a directory to Rust source.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use sha2::Digest as _;

fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            walk(root, &path, out)?;
        } else if ft.is_file() {
            let rel = path.strip_prefix(root).map_err(io::Error::other)?;
            let mut key = String::new();
            for c in rel.components() {
                let s = c.as_os_str().to_str().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("{}: file name is not UTF-8", path.display()))
                })?;
                key.push('/');
                key.push_str(s);
            }
            out.push((key, path));
        }
        // Symbolic links and special files are left out: the image holds
        // plain files only.
    }
    Ok(())
}

/// The regular files below `dir`, each with its key (`/a/b`), sorted by
/// key: what a store of the directory holds, compiled in or archived.
pub fn files(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort();
    Ok(files)
}

/// Writes Rust source defining `static NAME: mirage_kv::Crunched` with every
/// regular file below `dir` (NAME is the directory's name, upper-cased,
/// non-alphanumerics as `_`), and prints the `cargo:rerun-if-changed`
/// lines that rebuild the unikernel when a file changes.
pub fn generate(dir: &Path, out: &Path) -> io::Result<String> {
    let dir = dir.canonicalize()?;
    let name: String = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("kv")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect();
    let name = if name.starts_with(|c: char| c.is_ascii_digit()) { format!("KV_{name}") } else { name };
    generate_named(&dir, out, &name)?;
    Ok(name)
}

/// [`generate`] with the static's name given.
pub fn generate_named(dir: &Path, out: &Path, name: &str) -> io::Result<()> {
    let files = files(dir)?;
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut src = format!(
        "/// The contents of `{}`, compiled in.\npub static {name}: mirage_kv::Crunched = mirage_kv::Crunched::new(&[\n",
        dir.display()
    );
    for (key, path) in files {
        println!("cargo:rerun-if-changed={}", path.display());
        let data = std::fs::read(&path)?;
        let digest: [u8; 32] = sha2::Sha256::digest(&data).into();
        let modified =
            std::fs::metadata(&path)?.modified()?.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let _ = writeln!(
            src,
            "    mirage_kv::Entry {{ path: {key:?}, data: include_bytes!({:?}), modified: mirage_kv::Timestamp({modified}), digest: {digest:?} }},",
            path.display().to_string()
        );
    }
    src.push_str("]);\n");
    std::fs::write(out, src)
}
