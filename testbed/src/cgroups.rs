//! The bed's cgroups: the kubelet's `cgroupRoot` (`/inflight-<name>`) in every hierarchy, under
//! which every pod of the bed runs; `down` kills what is left in them and removes them.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::layout::Layout;
use crate::{process, Error};

/// The bed's cgroup directories in every hierarchy (cgroup v1 controllers and the v2 mount).
pub(crate) fn dirs(layout: &Layout) -> Vec<PathBuf> {
    let root = layout.cgroup_root();
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return Vec::new();
    };
    let mut dirs = Vec::new();
    for h in hierarchies.flatten() {
        let top = h.path().join(&root);
        if top.is_dir() {
            collect_dirs(&top, &mut dirs);
        }
        // Hybrid hosts: a cgroup v2 tree mounted at /sys/fs/cgroup/unified.
        let direct = Path::new("/sys/fs/cgroup").join(&root);
        if direct.is_dir() && !dirs.contains(&direct) {
            collect_dirs(&direct, &mut dirs);
        }
    }
    dirs
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// The kubelet's `cgroupRoot` must exist in every v1 hierarchy before it starts.
pub(crate) fn create(layout: &Layout) -> Result<(), Error> {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return Ok(());
    };
    for h in hierarchies.flatten() {
        let base = h.path();
        if !base.join("cgroup.procs").exists() {
            continue;
        }
        let dir = base.join(layout.cgroup_root());
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        // A new cpuset has no CPUs or memory nodes until given its parent's.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(parent) = fs::read_to_string(base.join(file)) {
                let path = dir.join(file);
                fs::write(&path, parent.trim()).map_err(|e| Error::io(&path, e))?;
            }
        }
    }
    Ok(())
}

pub(crate) fn pids(layout: &Layout) -> Vec<i32> {
    let mut pids: Vec<i32> = dirs(layout)
        .iter()
        .filter_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

pub(crate) fn remove(layout: &Layout) {
    for _ in 0..20 {
        let mut dirs = dirs(layout);
        if dirs.is_empty() {
            return;
        }
        for pid in pids(layout) {
            process::kill_now(pid);
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = fs::remove_dir(d);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
