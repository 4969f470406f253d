//! The container's root file system: the snapshot mounts containerd
//! passes with the task (an overlay, or a bind of a single layer) made at
//! `BUNDLE/rootfs`, as containerd's runc shim does, so that `mirage-runc`
//! finds the unikernel in it.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `containerd.types.Mount`: type = 1, source = 2, target = 3, options = 4.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    pub kind: String,
    pub source: String,
    pub target: String,
    pub options: Vec<String>,
}

impl Mount {
    pub fn decode(b: &[u8]) -> Result<Mount, mirage_oci::proto::Malformed> {
        let mut m = Mount::default();
        let mut r = mirage_oci::proto::Reader::new(b);
        while let Some((field, v)) = r.next_field()? {
            match field {
                1 => m.kind = v.string()?,
                2 => m.source = v.string()?,
                3 => m.target = v.string()?,
                4 => m.options.push(v.string()?),
                _ => {}
            }
        }
        Ok(m)
    }
}

/// The mount flags `options` name, and the rest as the file system's data
/// (`lowerdir=…`, `upperdir=…`), as mount(8) and containerd split them.
pub fn flags(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "noatime" => (libc::MS_NOATIME, 0),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "defaults" => (0, 0),
            other => {
                data.push(other);
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, data.join(","))
}

fn cstring(s: &[u8], what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("the {what} holds a NUL byte"))
}

fn mount(source: &str, target: &Path, kind: &str, flags: libc::c_ulong, data: &str) -> Result<(), String> {
    let (src, tgt) =
        (cstring(source.as_bytes(), "mount's source")?, cstring(target.as_os_str().as_bytes(), "mount's target")?);
    let (fs, dat) = (cstring(kind.as_bytes(), "mount's type")?, cstring(data.as_bytes(), "mount's options")?);
    // SAFETY: every pointer is to a NUL-terminated string that lives past
    // the call.
    let r = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), flags, dat.as_ptr().cast()) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        return Err(format!("mounting {kind} {source} on {}: {e}", target.display()));
    }
    Ok(())
}

/// Mounts `mounts` at `BUNDLE/rootfs`, in order; on a failure, unmounts
/// what it mounted. Whether anything was mounted.
pub fn mount_rootfs(bundle: &Path, mounts: &[Mount]) -> Result<bool, String> {
    if mounts.is_empty() {
        return Ok(false);
    }
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).map_err(|e| format!("cannot make {}: {e}", rootfs.display()))?;
    for (i, m) in mounts.iter().enumerate() {
        let target: PathBuf =
            if m.target.is_empty() { rootfs.clone() } else { rootfs.join(m.target.trim_start_matches('/')) };
        if target.components().any(|c| c == std::path::Component::ParentDir) {
            unmount_n(&rootfs, i);
            return Err(format!("a root file system mount's target {:?} leads out of the bundle", m.target));
        }
        let (flags, data) = flags(&m.options);
        let result = mount(&m.source, &target, &m.kind, flags & !libc::MS_RDONLY, &data).and_then(|()| {
            // A bind mount ignores MS_RDONLY until remounted with it.
            if flags & libc::MS_BIND != 0 && flags & libc::MS_RDONLY != 0 {
                mount("", &target, "", libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | (flags & libc::MS_REC), "")
            } else if flags & libc::MS_RDONLY != 0 {
                mount("", &target, "", libc::MS_REMOUNT | libc::MS_RDONLY, &data)
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            unmount_n(&rootfs, i + usize::from(is_mounted(&target)));
            return Err(e);
        }
    }
    Ok(true)
}

fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

fn unmount_n(rootfs: &Path, n: usize) {
    for _ in 0..n {
        if let Ok(c) = CString::new(rootfs.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Unmounts whatever is mounted at `BUNDLE/rootfs` (several mounts may be
/// stacked there).
pub fn unmount_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    for _ in 0..16 {
        if !is_mounted(&rootfs) {
            return;
        }
        unmount_n(&rootfs, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let o = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (f, d) = flags(&o(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b"]));
        assert_eq!((f, d.as_str()), (0, "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b"));
        let (f, d) = flags(&o(&["ro", "rbind"]));
        assert_eq!(f, libc::MS_RDONLY | libc::MS_BIND | libc::MS_REC);
        assert!(d.is_empty());
        let (f, _) = flags(&o(&["ro", "rw", "nosuid"]));
        assert_eq!(f, libc::MS_NOSUID);
    }

    #[test]
    fn a_bind_mount_is_made_read_only_and_undone() {
        let base = std::env::temp_dir().join(format!("shim-mount-{}", std::process::id()));
        let (layer, bundle) = (base.join("layer"), base.join("bundle"));
        std::fs::create_dir_all(&layer).unwrap();
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(layer.join("unikernel"), b"image").unwrap();
        let m = Mount {
            kind: "bind".into(),
            source: layer.display().to_string(),
            target: String::new(),
            options: vec!["ro".into(), "rbind".into()],
        };
        assert!(mount_rootfs(&bundle, std::slice::from_ref(&m)).unwrap());
        assert_eq!(std::fs::read(bundle.join("rootfs/unikernel")).unwrap(), b"image");
        assert!(std::fs::write(bundle.join("rootfs/new"), b"x").is_err(), "the bind mount is writable");
        unmount_rootfs(&bundle);
        assert!(!bundle.join("rootfs/unikernel").exists());
        // A failing mount leaves nothing mounted and says what failed.
        let bad = Mount { kind: "bind".into(), source: base.join("missing").display().to_string(), ..m };
        let e = mount_rootfs(&bundle, &[bad]).unwrap_err();
        assert!(e.contains("missing"), "{e}");
        assert!(!is_mounted(&bundle.join("rootfs")));
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_mount_is_decoded() {
        let mut w = mirage_oci::proto::Writer::new();
        w.string(1, "overlay").string(2, "overlay").repeated(4, b"lowerdir=/l").repeated(4, b"index=off");
        let m = Mount::decode(&w.finish()).unwrap();
        assert_eq!(m.kind, "overlay");
        assert_eq!(m.options, ["lowerdir=/l", "index=off"]);
    }
}
