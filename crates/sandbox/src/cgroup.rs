//! Which limit a task hit, read from its cgroup after it exited and before the
//! task is deleted (runc removes the cgroup on delete). runc places the task at
//! the spec's `cgroupsPath` below each hierarchy's root, on cgroup v1 (one
//! mount per controller, as on this project's build hosts) and on v2.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

/// True on a unified (v2-only) hierarchy.
pub(crate) fn is_v2() -> bool {
    Path::new(ROOT).join("cgroup.controllers").exists()
}

/// The mount point of a v1 controller (from /proc/self/mounts).
pub(crate) fn v1_mount(controller: &str) -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let _source = fields.next()?;
        let target = fields.next()?;
        let fstype = fields.next()?;
        let options = fields.next()?;
        (fstype == "cgroup" && options.split(',').any(|o| o == controller))
            .then(|| PathBuf::from(target))
    })
}

/// What a task's cgroup says about the limits it hit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LimitEvents {
    /// Processes the kernel's OOM killer killed in the cgroup.
    pub oom_kills: u64,
    /// Times a fork or clone failed because of the pids limit.
    pub pids_max: u64,
}

fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok()).flatten()
    })
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Reads the counters of the cgroup at `cgroups_path` (absolute, as in the
/// spec). Missing files read as zero.
pub(crate) fn limit_events(cgroups_path: &str) -> LimitEvents {
    let rel = cgroups_path.trim_start_matches('/');
    if is_v2() {
        let dir = Path::new(ROOT).join(rel);
        return LimitEvents {
            oom_kills: counter(&read(dir.join("memory.events")), "oom_kill").unwrap_or(0),
            pids_max: counter(&read(dir.join("pids.events")), "max").unwrap_or(0),
        };
    }
    let oom_kills = v1_mount("memory")
        .map(|m| {
            let dir = m.join(rel);
            // `oom_kill` (Linux >= 4.13); else a hit limit with an OOM-killed task.
            let control = read(dir.join("memory.oom_control"));
            counter(&control, "oom_kill").unwrap_or_else(|| {
                let under_oom = counter(&control, "under_oom").unwrap_or(0);
                let failcnt = read(dir.join("memory.failcnt"))
                    .trim()
                    .parse()
                    .unwrap_or(0u64);
                u64::from(under_oom > 0 || failcnt > 0)
            })
        })
        .unwrap_or(0);
    let pids_max = v1_mount("pids")
        .map(|m| counter(&read(m.join(rel).join("pids.events")), "max").unwrap_or(0))
        .unwrap_or(0);
    LimitEvents {
        oom_kills,
        pids_max,
    }
}
