//! The container's cgroup, as runc's cgroupfs driver makes it: the
//! directory `linux.cgroupsPath` names in every hierarchy (cgroup v2's
//! one, or each v1 controller's), the container's process moved into it
//! before it starts, and the memory limit written there, so that
//! containerd's statistics and out-of-memory events are the tender's.
//! With `--systemd-cgroup` the path `SLICE:PREFIX:NAME` becomes the
//! directory `SLICE/PREFIX-NAME.scope`, made directly rather than asked of
//! systemd.

use std::path::{Path, PathBuf};

use crate::Failure;

const ROOT: &str = "/sys/fs/cgroup";
/// The v1 hierarchies a container joins (cpuset needs its CPUs and memory
/// nodes copied down first, and a tender does not need it).
const V1: &[&str] = &["memory", "pids", "cpu", "cpuacct", "blkio", "devices", "freezer", "systemd"];

/// The path under each hierarchy, checked: no `..`, nothing empty.
pub fn relative(path: &str, systemd: bool) -> Result<PathBuf, Failure> {
    let rel = if systemd {
        let parts: Vec<&str> = path.split(':').collect();
        match parts.as_slice() {
            [slice, prefix, name] => format!("{slice}/{prefix}-{name}.scope"),
            _ => {
                return Err(Failure::new(
                    format!("cgroupsPath {path:?} is not SLICE:PREFIX:NAME, as --systemd-cgroup takes"),
                    "drop --systemd-cgroup (SystemdCgroup = false) or give a systemd path",
                ));
            }
        }
    } else {
        path.trim_start_matches('/').to_string()
    };
    if rel.is_empty() || rel.split('/').any(|c| c == ".." || c == ".") {
        return Err(Failure::new(format!("cgroupsPath {path:?} is not a usable path"), "give a path without .."));
    }
    Ok(PathBuf::from(rel))
}

fn write(path: &Path, value: &str) -> Result<(), Failure> {
    std::fs::write(path, value).map_err(|e| {
        Failure::new(format!("writing {value} to {}: {e}", path.display()), "check the cgroup file system")
    })
}

/// Makes the cgroup `rel`, moves `pid` into it and limits its memory;
/// the directories made, for `remove`, even when it fails half-way.
pub fn enter(rel: &Path, pid: i32, memory_limit: Option<i64>, made: &mut Vec<PathBuf>) -> Result<(), Failure> {
    let mkdir = |dir: &Path, made: &mut Vec<PathBuf>| -> Result<(), Failure> {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| {
                Failure::new(format!("making the cgroup {}: {e}", dir.display()), "check the cgroup file system")
            })?;
            made.push(dir.to_path_buf());
        }
        Ok(())
    };
    let unified = Path::new(ROOT).join("cgroup.controllers").exists();
    if unified {
        // The memory controller must be enabled down to the parent.
        let mut at = PathBuf::from(ROOT);
        for c in rel.parent().into_iter().flat_map(|p| p.components()) {
            let _ = std::fs::write(at.join("cgroup.subtree_control"), "+memory +pids");
            at.push(c);
            mkdir(&at, made)?;
        }
        let _ = std::fs::write(at.join("cgroup.subtree_control"), "+memory +pids");
        let dir = Path::new(ROOT).join(rel);
        mkdir(&dir, made)?;
        if let Some(limit) = memory_limit {
            write(&dir.join("memory.max"), &limit.to_string())?;
        }
        return write(&dir.join("cgroup.procs"), &pid.to_string());
    }
    for controller in V1 {
        let hierarchy = Path::new(ROOT).join(controller);
        if !hierarchy.join("cgroup.procs").exists() {
            continue;
        }
        let dir = hierarchy.join(rel);
        mkdir(&dir, made)?;
        if *controller == "memory"
            && let Some(limit) = memory_limit
        {
            write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        }
        write(&dir.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// Removes the directories `enter` made, deepest first; a cgroup still
/// holding a process stays (rmdir refuses), as with runc.
pub fn remove(made: &[PathBuf]) {
    let mut dirs: Vec<&PathBuf> = made.iter().collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        let _ = std::fs::remove_dir(d);
    }
}
