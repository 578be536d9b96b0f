//! The OCI runtime spec of a RUN task (containerd passes it to runc
//! unchanged), built with oci-spec's runtime types. Their `Default`s fill in
//! youki's choices (rlimits, default mounts, namespaces, masked paths), so
//! every field of every object is set here explicitly: nothing is added
//! behind our back, and the unit test below pins the whole document.
//!
//! What a RUN gets, as Docker/BuildKit give it: its own pid, ipc, uts and mount
//! namespaces (and network unless `Network::Host`: a fresh one with only `lo`
//! for `Network::None`, the one `net.rs` prepared for `Network::Isolated`), /proc, a tmpfs /dev with
//! pts, shm and mqueue, read-only /sys and cgroupfs, /etc/hosts,
//! /etc/resolv.conf bound read-only from files we write (no /etc/hostname, as BuildKit),
//! Docker's default capabilities and seccomp profile (`seccomp.rs`), masked and
//! read-only /proc paths (all capabilities, no seccomp, no masked paths and a
//! writable /sys for `RunSpec::insecure`, as Docker's `--privileged`), a
//! deny-all device cgroup (runc adds the standard devices), and the limits
//! of [`RunSpec`]. Only the rlimits of [`RunSpec::rlimits`] (`--ulimit`) are
//! set: the others are inherited from containerd (as a Docker RUN inherits
//! dockerd's), so a host's `LimitNOFILE=` applies. No host path is visible except the
//! step's own [`ExtraMount`]s.

use super::{MountSource, Network, RunSpec, SandboxError};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use std::path::{Path, PathBuf};

/// What BuildKit puts on `PATH` when the image's config sets none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The in-rootfs mount points of the default mounts (relative to `/`) that are
/// dropped from the diff when runc had to create them: the /etc files. The
/// directories runc creates (`proc`, `dev`, `sys`, and `etc` as the files'
/// parent) stay in the layer, as they do in BuildKit's.
pub(crate) const DEFAULT_MOUNT_POINTS: &[&str] = &["etc/hosts", "etc/resolv.conf"];

/// Every capability by number, for `--security=insecure`: those in the
/// daemon's own bounding set are given (as containerd's `WithPrivileged`), since
/// runc cannot grant more.
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The daemon's bounding set (`CapBnd` of /proc/self/status), if readable.
fn own_bounding_set() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// The capabilities of a privileged step: every one the daemon has.
fn privileged_caps() -> Vec<&'static str> {
    let have = own_bounding_set().unwrap_or(u64::MAX);
    ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| have & (1u64 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// Docker's default capabilities (containerd's `oci.WithDefaultSpec` gives the same).
const CAPS: &[Capability] = &[
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
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

/// `cpu.shares` of a [`RunSpec::low_priority`] run: the kernel's minimum
/// (cgroup v2 `cpu.weight` 1 after runc's conversion; the default is 1024/100).
pub(crate) const LOW_PRIORITY_SHARES: u64 = 2;

/// Files bound over /etc/hosts and /etc/resolv.conf.
pub(crate) struct EtcFiles<'a> {
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

fn invalid(e: oci_spec::OciSpecError) -> SandboxError {
    SandboxError::Invalid(format!("building the OCI runtime spec: {e}"))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_string()).collect()
}

/// `--ulimit`s as the spec's rlimits (`None` when there are none).
fn rlimits(spec: &RunSpec) -> Result<Option<Vec<PosixRlimit>>, SandboxError> {
    if spec.rlimits.is_empty() {
        return Ok(None);
    }
    spec.rlimits
        .iter()
        .map(|(kind, soft, hard)| {
            let typ: PosixRlimitType = kind
                .parse()
                .map_err(|_| SandboxError::Invalid(format!("unknown rlimit {kind}")))?;
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(*soft)
                .hard(*hard)
                .build()
                .map_err(invalid)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn mount(
    destination: &str,
    typ: &str,
    source: &str,
    options: &[&str],
) -> Result<Mount, SandboxError> {
    mount_owned(destination, typ, source, strings(options))
}

fn mount_owned(
    destination: &str,
    typ: &str,
    source: &str,
    options: Vec<String>,
) -> Result<Mount, SandboxError> {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(source)
        .options(options)
        .build()
        .map_err(invalid)
}

/// The spec for `spec`'s RUN.
///
/// # Errors
///
/// [`SandboxError::Invalid`] if oci-spec rejects a value (a mount it
/// considers malformed).
pub(crate) fn build(
    spec: &RunSpec,
    etc: &EtcFiles<'_>,
    cgroups_path: &str,
    netns: Option<&str>,
) -> Result<Spec, SandboxError> {
    let mut env = spec.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    let lossy = |path: &Path| path.to_string_lossy().into_owned();
    let bind_ro = |dest: &str, src: &Path| {
        mount(
            dest,
            "bind",
            &lossy(src),
            &["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"],
        )
    };
    // Docker's default /dev/shm, written as Docker writes it; `--shm-size` in bytes.
    let shm_size = match spec.shm_bytes {
        Some(bytes) => format!("size={bytes}"),
        None => "size=65536k".to_string(),
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", &shm_size],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &[
                "nosuid",
                "noexec",
                "nodev",
                if spec.insecure { "rw" } else { "ro" },
            ],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
        bind_ro("/etc/hosts", etc.hosts)?,
        bind_ro("/etc/resolv.conf", etc.resolv_conf)?,
    ];
    for m in &spec.mounts {
        let rw = if m.readonly { "ro" } else { "rw" };
        mounts.push(match &m.source {
            MountSource::Host(source) => mount(
                &m.target,
                "bind",
                &lossy(source),
                &["rbind", "rprivate", "nosuid", "nodev", rw],
            )?,
            MountSource::Tmpfs { size } => {
                let mut options = strings(&["nosuid", "nodev", rw]);
                options.extend(size.map(|s| format!("size={s}")));
                mount_owned(&m.target, "tmpfs", "tmpfs", options)?
            }
        });
    }

    let namespace_types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    let network_path = match spec.network {
        Network::Host => None,
        Network::None => Some(None),
        Network::Isolated => match netns {
            Some(path) => Some(Some(path)),
            None => {
                return Err(SandboxError::Invalid(
                    "an isolated network step needs its network namespace".into(),
                ))
            }
        },
    };
    let mut namespaces = namespace_types
        .into_iter()
        .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    if let Some(path) = network_path {
        let mut ns = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(path) = path {
            ns = ns.path(PathBuf::from(path));
        }
        namespaces.push(ns.build().map_err(invalid)?);
    }

    let deny_all = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(invalid)?;
    let mut resources = LinuxResourcesBuilder::default().devices(vec![deny_all]);
    if let Some(limit) = spec.memory_bytes {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut memory = LinuxMemoryBuilder::default().limit(limit);
        // No swap beyond the limit; v1 only accepts it with swap accounting.
        if super::cgroup::is_v2() || v1_swap_accounting() {
            memory = memory.swap(limit);
        }
        resources = resources.memory(memory.build().map_err(invalid)?);
    }
    if spec.cpus.is_some() || spec.low_priority {
        let mut cpu = LinuxCpuBuilder::default();
        if let Some(cpus) = spec.cpus {
            let period: u64 = 100_000;
            let quota = ((cpus * period as f64).round() as i64).max(1000);
            cpu = cpu.quota(quota).period(period);
        }
        if spec.low_priority {
            cpu = cpu.shares(LOW_PRIORITY_SHARES);
        }
        resources = resources.cpu(cpu.build().map_err(invalid)?);
    }
    if let Some(pids) = spec.pids {
        let pids = LinuxPidsBuilder::default()
            .limit(pids)
            .build()
            .map_err(invalid)?;
        resources = resources.pids(pids);
    }

    let caps: oci_spec::runtime::Capabilities = if spec.insecure {
        privileged_caps()
            .into_iter()
            .map(|name| serde_json::from_value(serde_json::json!(name)))
            .collect::<Result<_, _>>()
            .map_err(|e| SandboxError::Invalid(format!("capability names: {e}")))?
    } else {
        CAPS.iter().copied().collect()
    };
    let seccomp = if spec.insecure {
        None
    } else {
        let mut names: Vec<String> = caps
            .iter()
            .filter_map(|c| serde_json::to_value(c).ok()?.as_str().map(String::from))
            .collect();
        names.sort();
        Some(super::seccomp::default_profile(&names)?)
    };
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(invalid)?;
    let mut capabilities = capabilities;
    // oci-spec's default also fills `inheritable` and `ambient`.
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);

    let user = UserBuilder::default()
        .uid(spec.uid)
        .gid(spec.gid)
        .additional_gids(spec.additional_gids.clone())
        .build()
        .map_err(invalid)?;
    let cwd = if spec.cwd.is_empty() {
        "/"
    } else {
        spec.cwd.as_str()
    };
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(spec.args.clone())
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(false)
        .build()
        .map_err(invalid)?;
    // The defaults' `RLIMIT_NOFILE` of 1024 must not apply (see the top);
    // only what `--ulimit` asks for is set.
    process.set_rlimits(rlimits(spec)?);

    let mut linux = LinuxBuilder::default()
        .cgroups_path(PathBuf::from(cgroups_path))
        .resources(resources.build().map_err(invalid)?)
        .namespaces(namespaces)
        .masked_paths(if spec.insecure {
            Vec::new()
        } else {
            strings(MASKED)
        })
        .readonly_paths(if spec.insecure {
            Vec::new()
        } else {
            strings(READONLY)
        })
        .build()
        .map_err(invalid)?;
    // Everything else a default `Linux` carries stays unset.
    linux.set_uid_mappings(None);
    linux.set_gid_mappings(None);
    linux.set_sysctl(None);
    linux.set_devices(None);
    linux.set_rootfs_propagation(None);
    linux.set_mount_label(None);
    linux.set_intel_rdt(None);
    linux.set_personality(None);
    linux.set_seccomp(seccomp);

    let root = RootBuilder::default()
        .path("rootfs")
        .readonly(false)
        .build()
        .map_err(invalid)?;
    let mut oci = SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(root)
        .hostname(spec.hostname.clone())
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(invalid)?;
    oci.set_annotations(None);
    Ok(oci)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ExtraMount;
    use serde_json::{json, Value};

    /// The document as it was written by hand with `json!` before oci-spec's
    /// types were used: every key and value, in runc's field names.
    fn expected(swap: bool) -> Value {
        let caps = [
            "CAP_AUDIT_WRITE",
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_KILL",
            "CAP_MKNOD",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_RAW",
            "CAP_SETFCAP",
            "CAP_SETGID",
            "CAP_SETPCAP",
            "CAP_SETUID",
            "CAP_SYS_CHROOT",
        ];
        let mut memory = json!({"limit": 536_870_912});
        if swap {
            memory["swap"] = json!(536_870_912);
        }
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 1000, "gid": 1001, "additionalGids": [27, 100]},
                "args": ["/bin/sh", "-c", "make"],
                "env": [DEFAULT_PATH, "A=1"],
                "cwd": "/src",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
                "noNewPrivileges": false,
            },
            "root": {"path": "rootfs", "readonly": false},
            "hostname": "buildhost",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
                {"destination": "/etc/hosts", "type": "bind", "source": "/run/x/hosts",
                 "options": ["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"]},
                {"destination": "/etc/resolv.conf", "type": "bind", "source": "/run/x/resolv.conf",
                 "options": ["rbind", "rprivate", "ro", "nosuid", "nodev", "noexec"]},
                {"destination": "/cache", "type": "bind", "source": "/var/cache/m",
                 "options": ["rbind", "rprivate", "nosuid", "nodev", "rw"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "nodev", "ro", "size=1048576"]},
            ],
            "linux": {
                "cgroupsPath": "/memobuild/step",
                "resources": {
                    "devices": [{"allow": false, "access": "rwm"}],
                    "memory": memory,
                    "cpu": {"quota": 150_000, "period": 100_000},
                    "pids": {"limit": 64},
                },
                "namespaces": [
                    {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                    {"type": "network"},
                ],
                "maskedPaths": MASKED,
                "readonlyPaths": READONLY,
            },
        })
    }

    /// Capabilities are sets in oci-spec; sort them to compare.
    fn sort_capabilities(doc: &mut Value) {
        for set in ["bounding", "effective", "permitted"] {
            if let Some(Value::Array(caps)) =
                doc.pointer_mut(&format!("/process/capabilities/{set}"))
            {
                caps.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }

    fn run_spec() -> RunSpec {
        RunSpec {
            args: vec!["/bin/sh".into(), "-c".into(), "make".into()],
            env: vec!["A=1".into()],
            cwd: "/src".into(),
            uid: 1000,
            gid: 1001,
            additional_gids: vec![27, 100],
            hostname: "buildhost".into(),
            network: Network::None,
            memory_bytes: Some(512 << 20),
            cpus: Some(1.5),
            pids: Some(64),
            timeout: None,
            extra_hosts: Vec::new(),
            shm_bytes: None,
            rlimits: Vec::new(),
            insecure: false,
            low_priority: false,
            mounts: vec![
                ExtraMount {
                    source: MountSource::Host("/var/cache/m".into()),
                    target: "/cache".into(),
                    readonly: false,
                },
                ExtraMount {
                    source: MountSource::Tmpfs {
                        size: Some(1 << 20),
                    },
                    target: "/tmp".into(),
                    readonly: true,
                },
            ],
        }
    }

    fn etc() -> EtcFiles<'static> {
        EtcFiles {
            hosts: Path::new("/run/x/hosts"),
            resolv_conf: Path::new("/run/x/resolv.conf"),
        }
    }

    #[test]
    fn the_whole_document_is_what_runc_was_given_before() {
        let spec = build(&run_spec(), &etc(), "/memobuild/step", None).unwrap();
        let mut doc = serde_json::to_value(&spec).unwrap();
        sort_capabilities(&mut doc);
        // Docker's profile for these capabilities (seccomp.rs tests it).
        let seccomp = doc["linux"]
            .as_object_mut()
            .unwrap()
            .remove("seccomp")
            .unwrap();
        assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO");
        let swap = crate::cgroup::is_v2() || v1_swap_accounting();
        assert_eq!(doc, expected(swap));
    }

    #[test]
    fn host_network_limits_and_path_are_optional() {
        let run = RunSpec {
            env: vec!["PATH=/opt/bin".into()],
            cwd: String::new(),
            network: Network::Host,
            ..RunSpec::default()
        };
        let doc = serde_json::to_value(build(&run, &etc(), "/memobuild/s", None).unwrap()).unwrap();
        assert_eq!(doc["process"]["env"], json!(["PATH=/opt/bin"]));
        assert_eq!(doc["process"]["cwd"], "/");
        assert_eq!(doc["process"]["user"]["additionalGids"], json!([]));
        assert!(doc["process"].get("rlimits").is_none());
        let namespaces = doc["linux"]["namespaces"].as_array().unwrap();
        assert!(!namespaces.contains(&json!({"type": "network"})));
        assert_eq!(namespaces.len(), 4);
        assert_eq!(
            doc["linux"]["resources"],
            json!({"devices": [{"allow": false, "access": "rwm"}]})
        );
        assert_eq!(doc["mounts"].as_array().unwrap().len(), 9);
    }

    #[test]
    fn isolated_network_joins_the_prepared_namespace() {
        let run = RunSpec {
            network: Network::Isolated,
            ..RunSpec::default()
        };
        assert!(build(&run, &etc(), "/m", None).is_err());
        let doc =
            serde_json::to_value(build(&run, &etc(), "/m", Some("/proc/1/task/2/ns/net")).unwrap())
                .unwrap();
        let namespaces = doc["linux"]["namespaces"].as_array().unwrap();
        assert!(namespaces.contains(&json!({"type": "network", "path": "/proc/1/task/2/ns/net"})));
        assert_eq!(namespaces.len(), 5);
    }

    #[test]
    fn insecure_is_privileged_and_default_is_not() {
        let default =
            serde_json::to_value(build(&RunSpec::default(), &etc(), "/m", None).unwrap()).unwrap();
        assert!(default["linux"]["seccomp"].is_object());
        let bounding = default["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert_eq!(bounding.len(), CAPS.len());
        assert!(!bounding.contains(&json!("CAP_SYS_ADMIN")));
        let run = RunSpec {
            insecure: true,
            ..RunSpec::default()
        };
        let doc = serde_json::to_value(build(&run, &etc(), "/m", None).unwrap()).unwrap();
        assert!(doc["linux"].get("seccomp").is_none());
        let bounding = doc["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap();
        assert_eq!(bounding.len(), privileged_caps().len());
        assert!(bounding.len() > CAPS.len());
        assert!(bounding.contains(&json!("CAP_SYS_ADMIN")));
        assert!(
            doc["linux"].get("maskedPaths").is_none() || doc["linux"]["maskedPaths"] == json!([])
        );
        let sys = doc["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(sys["options"].as_array().unwrap().contains(&json!("rw")));
    }

    #[test]
    fn a_low_priority_run_gets_the_smallest_cpu_weight() {
        let run = RunSpec {
            low_priority: true,
            ..RunSpec::default()
        };
        let doc = serde_json::to_value(build(&run, &etc(), "/m", None).unwrap()).unwrap();
        assert_eq!(
            doc["linux"]["resources"]["cpu"],
            serde_json::json!({"shares": 2})
        );
        let normal =
            serde_json::to_value(build(&RunSpec::default(), &etc(), "/m", None).unwrap()).unwrap();
        assert!(
            normal["linux"]["resources"].get("cpu").is_none(),
            "{normal:#}"
        );
    }

    #[test]
    fn tiny_cpu_shares_get_the_smallest_quota() {
        let run = RunSpec {
            cpus: Some(0.001),
            ..RunSpec::default()
        };
        let doc = serde_json::to_value(build(&run, &etc(), "/m", None).unwrap()).unwrap();
        assert_eq!(
            doc["linux"]["resources"]["cpu"],
            json!({"quota": 1000, "period": 100_000})
        );
    }
}
