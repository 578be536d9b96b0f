//! The OCI runtime spec of a RUN task, as JSON (containerd passes it to runc
//! unchanged). Written by hand rather than with oci-spec's runtime types: every
//! field is visible here, and nothing is added behind our back.
//!
//! What a RUN gets, as Docker/BuildKit give it: its own pid, ipc, uts and mount
//! namespaces (and network unless `Network::Host`), /proc, a tmpfs /dev with
//! pts, shm and mqueue, read-only /sys and cgroupfs, /etc/hosts,
//! /etc/resolv.conf bound read-only from files we write (no /etc/hostname, as BuildKit),
//! Docker's default capabilities, masked and read-only /proc paths, a
//! deny-all device cgroup (runc adds the standard devices), and the limits
//! of [`RunSpec`]. Only the rlimits of [`RunSpec::rlimits`] (`--ulimit`) are
//! set: the others are inherited from containerd (as a Docker RUN inherits
//! dockerd's), so a host's `LimitNOFILE=` applies. No host path is visible except the
//! step's own [`ExtraMount`]s.

use super::{MountSource, Network, RunSpec};
use serde_json::{json, Value};
use std::path::Path;

/// What BuildKit puts on `PATH` when the image's config sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The in-rootfs mount points of the default mounts (relative to `/`) that are
/// dropped from the diff when runc had to create them: the /etc files. The
/// directories runc creates (`proc`, `dev`, `sys`, and `etc` as the files'
/// parent) stay in the layer, as they do in BuildKit's.
pub const DEFAULT_MOUNT_POINTS: &[&str] = &["etc/hosts", "etc/resolv.conf"];

const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

const READONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Files bound over /etc/hosts and /etc/resolv.conf.
pub struct EtcFiles<'a> {
    pub hosts: &'a Path,
    pub resolv_conf: &'a Path,
}

/// Whether cgroup v1 has swap accounting (`memory.memsw.*`); without it runc
/// fails if the spec sets a swap limit.
fn v1_swap_accounting() -> bool {
    super::cgroup::v1_mount("memory")
        .map(|m| m.join("memory.memsw.limit_in_bytes").exists())
        .unwrap_or(false)
}

pub fn build(spec: &RunSpec, etc: &EtcFiles<'_>, cgroups_path: &str) -> Value {
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let caps: Vec<&str> = CAPS.to_vec();
    let bind_ro = |dest: &str, src: &Path| {
        json!({
            "destination": dest,
            "type": "bind",
            "source": src.to_string_lossy(),
            "options": ["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"],
        })
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777",
                           format!("size={}", spec.shm_bytes.unwrap_or(64 << 20))]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        bind_ro("/etc/hosts", etc.hosts),
        bind_ro("/etc/resolv.conf", etc.resolv_conf),
    ];
    for m in &spec.mounts {
        let rw = if m.readonly { "ro" } else { "rw" };
        mounts.push(match &m.source {
            MountSource::Host(source) => json!({
                "destination": m.target,
                "type": "bind",
                "source": source.to_string_lossy(),
                "options": ["rbind", "rprivate", "nosuid", "nodev", rw],
            }),
            MountSource::Tmpfs { size } => {
                let mut options = vec!["nosuid".to_string(), "nodev".into(), rw.into()];
                options.extend(size.map(|s| format!("size={s}")));
                json!({
                    "destination": m.target,
                    "type": "tmpfs",
                    "source": "tmpfs",
                    "options": options,
                })
            }
        });
    }

    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if spec.network == Network::None {
        namespaces.push(json!({"type": "network"}));
    }

    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
    });
    if let Some(limit) = spec.memory_bytes {
        let mut memory = json!({"limit": limit});
        // No swap beyond the limit; v1 only accepts it with swap accounting.
        if super::cgroup::is_v2() || v1_swap_accounting() {
            memory["swap"] = json!(limit);
        }
        resources["memory"] = memory;
    }
    if let Some(cpus) = spec.cpus {
        let period: u64 = 100_000;
        let quota = ((cpus * period as f64).round() as i64).max(1000);
        resources["cpu"] = json!({"quota": quota, "period": period});
    }
    if let Some(pids) = spec.pids {
        resources["pids"] = json!({"limit": pids});
    }

    let rlimits: Vec<Value> = spec
        .rlimits
        .iter()
        .map(|(kind, soft, hard)| json!({"type": kind, "soft": soft, "hard": hard}))
        .collect();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {
                "uid": spec.uid,
                "gid": spec.gid,
                "additionalGids": spec.additional_gids,
            },
            "args": spec.args,
            "env": env,
            "cwd": if spec.cwd.is_empty() { "/" } else { spec.cwd.as_str() },
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
            },
            "noNewPrivileges": false,
            "rlimits": rlimits,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroups_path,
            "resources": resources,
            "namespaces": namespaces,
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY,
        },
    })
}
