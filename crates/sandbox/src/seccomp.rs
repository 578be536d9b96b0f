//! Docker's default seccomp profile for RUN steps.
//!
//! The profile is data: `seccomp/default.json` is Moby's published default
//! profile, unmodified (`seccomp/update.sh` fetches it again; `seccomp/SOURCE`
//! names the commit). Its rules carry conditions (an architecture, a
//! capability the process must or must not have, a minimum kernel); they are
//! evaluated here for the step's capabilities, the host's architecture and the
//! running kernel, as dockerd and containerd do, and the result is the OCI
//! `linux.seccomp` object runc compiles into a BPF filter.

use super::SandboxError;
use oci_spec::runtime::LinuxSeccomp;
use serde_json::{json, Map, Value};

/// Moby's `seccomp/default.json`.
const DEFAULT_PROFILE: &str = include_str!("../seccomp/default.json");

/// Go's name for the architecture this daemon runs on, as the profile's
/// conditions spell it.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// The seccomp architecture of the host (the profile's `archMap` key).
fn scmp_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "SCMP_ARCH_X86_64",
        "x86" => "SCMP_ARCH_X86",
        "aarch64" => "SCMP_ARCH_AARCH64",
        "arm" => "SCMP_ARCH_ARM",
        "powerpc64" => "SCMP_ARCH_PPC64LE",
        "s390x" => "SCMP_ARCH_S390X",
        "riscv64" => "SCMP_ARCH_RISCV64",
        "loongarch64" => "SCMP_ARCH_LOONGARCH64",
        _ => "SCMP_ARCH_NATIVE",
    }
}

/// The running kernel's (major, minor), as `uname -r` gives it.
fn kernel_version() -> (u64, u64) {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .and_then(|release| parse_version(release.trim()))
        .unwrap_or((0, 0))
}

fn parse_version(text: &str) -> Option<(u64, u64)> {
    let mut parts = text.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().unwrap_or("0").parse().unwrap_or(0);
    Some((major, minor))
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The profile for a process whose bounding set is `caps` (`CAP_...` names),
/// on this host.
///
/// # Errors
///
/// [`SandboxError::Invalid`] if the bundled profile does not parse (a bad
/// `seccomp/default.json`; the unit tests catch it).
pub(crate) fn default_profile(caps: &[String]) -> Result<LinuxSeccomp, SandboxError> {
    let host = Host {
        arch: go_arch(),
        scmp_arch: scmp_arch(),
        kernel: kernel_version(),
        x32: kernel_runs_x32(),
    };
    profile_for(caps, &host)
}

/// What the profile's conditions are evaluated against.
struct Host<'a> {
    /// Go's name of the architecture (`amd64`).
    arch: &'a str,
    /// Its seccomp name (`SCMP_ARCH_X86_64`).
    scmp_arch: &'a str,
    /// The kernel's (major, minor).
    kernel: (u64, u64),
    /// Whether the kernel runs x32 programs (see [`kernel_runs_x32`]).
    x32: bool,
}

/// Whether this kernel runs x32 programs (`CONFIG_X86_X32_ABI`, not turned
/// off at boot). Where it does not, no x32 program can start, so the
/// profile's `SCMP_ARCH_X32` sub-architecture is left out: it adds nothing
/// such a kernel would let through, and runc compiling the filter for it
/// costs ~8 ms of every RUN (docs/PERFORMANCE.md, "Trivial RUN").
///
/// Asked once, by a child process: an x32 system call from the daemon
/// itself could be fatal under a seccomp filter of its own (systemd's
/// `SystemCallArchitectures=native`). Any doubt keeps the sub-architecture.
#[cfg(target_arch = "x86_64")]
fn kernel_runs_x32() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
        // SAFETY: the child makes one system call and exits: nothing that
        // could need a lock or the allocator another thread held at fork.
        match unsafe { libc::fork() } {
            0 => unsafe {
                let answer = libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid);
                let unknown = answer == -1 && *libc::__errno_location() == libc::ENOSYS;
                libc::_exit(if unknown { 0 } else { 1 })
            },
            -1 => true,
            child => {
                let mut status = 0;
                // SAFETY: waits for the child just forked; `status` is ours.
                let waited = unsafe { libc::waitpid(child, &mut status, 0) };
                let no_x32 =
                    waited == child && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
                !no_x32
            }
        }
    })
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel_runs_x32() -> bool {
    false
}

fn profile_for(caps: &[String], host: &Host<'_>) -> Result<LinuxSeccomp, SandboxError> {
    let (arch, scmp_arch, kernel) = (host.arch, host.scmp_arch, host.kernel);
    let bad = |what: &str| SandboxError::Invalid(format!("the default seccomp profile: {what}"));
    let profile: Value = serde_json::from_str(DEFAULT_PROFILE).map_err(|e| bad(&e.to_string()))?;
    let has_cap = |c: &str| caps.iter().any(|have| have == c);
    let kernel_at_least = |min: Option<&Value>| {
        min.and_then(Value::as_str)
            .and_then(parse_version)
            .map(|min| kernel >= min)
    };

    let mut syscalls = Vec::new();
    for rule in profile["syscalls"]
        .as_array()
        .ok_or_else(|| bad("no syscalls"))?
    {
        let includes = rule.get("includes");
        let excludes = rule.get("excludes");
        let ex_arches = strings(excludes.and_then(|e| e.get("arches")));
        if ex_arches.contains(&arch) {
            continue;
        }
        if strings(excludes.and_then(|e| e.get("caps")))
            .iter()
            .any(|c| has_cap(c))
        {
            continue;
        }
        if kernel_at_least(excludes.and_then(|e| e.get("minKernel"))) == Some(true) {
            continue;
        }
        let in_arches = strings(includes.and_then(|i| i.get("arches")));
        if !in_arches.is_empty() && !in_arches.contains(&arch) {
            continue;
        }
        if !strings(includes.and_then(|i| i.get("caps")))
            .iter()
            .all(|c| has_cap(c))
        {
            continue;
        }
        if kernel_at_least(includes.and_then(|i| i.get("minKernel"))) == Some(false) {
            continue;
        }
        let mut call = Map::new();
        for key in ["names", "action", "errnoRet", "args"] {
            if let Some(v) = rule.get(key).filter(|v| !v.is_null()) {
                call.insert(key.to_string(), v.clone());
            }
        }
        syscalls.push(Value::Object(call));
    }

    let mut architectures = Vec::new();
    for entry in profile["archMap"].as_array().into_iter().flatten() {
        if entry["architecture"].as_str() == Some(scmp_arch) {
            architectures.push(json!(scmp_arch));
            architectures.extend(
                strings(entry.get("subArchitectures"))
                    .into_iter()
                    .filter(|sub| host.x32 || *sub != "SCMP_ARCH_X32")
                    .map(|s| json!(s)),
            );
        }
    }
    let mut doc = json!({
        "defaultAction": profile["defaultAction"],
        "architectures": architectures,
        "syscalls": syscalls,
    });
    if let Some(errno) = profile.get("defaultErrnoRet").filter(|v| !v.is_null()) {
        doc["defaultErrnoRet"] = errno.clone();
    }
    serde_json::from_value(doc).map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKER_CAPS: &[&str] = &[
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

    fn caps(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A host whose kernel runs x32 programs.
    fn host<'a>(arch: &'a str, scmp_arch: &'a str, kernel: (u64, u64)) -> Host<'a> {
        Host {
            arch,
            scmp_arch,
            kernel,
            x32: true,
        }
    }

    fn allowed(p: &LinuxSeccomp, name: &str) -> Vec<serde_json::Value> {
        let doc = serde_json::to_value(p).unwrap();
        doc["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| {
                c["names"].as_array().unwrap().contains(&json!(name))
                    && c["action"] == "SCMP_ACT_ALLOW"
            })
            .cloned()
            .collect()
    }

    /// Docker's capabilities on an amd64 host with kernel 6.1.
    fn docker_amd64(x32: bool) -> LinuxSeccomp {
        let host = Host {
            x32,
            ..host("amd64", "SCMP_ARCH_X86_64", (6, 1))
        };
        profile_for(&caps(DOCKER_CAPS), &host).unwrap()
    }

    #[test]
    fn docker_defaults_deny_namespaces_and_mounts_without_sys_admin() {
        let p = docker_amd64(true);
        let doc = serde_json::to_value(&p).unwrap();
        assert_eq!(doc["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(doc["defaultErrnoRet"], 1);
        assert_eq!(
            doc["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"])
        );
        for denied in ["unshare", "mount", "setns", "umount2", "bpf"] {
            assert!(
                allowed(&p, denied).is_empty(),
                "{denied} must not be allowed"
            );
        }
        // clone only without namespace flags (CLONE_NEWNS|...|CLONE_NEWUSER...).
        let clone = allowed(&p, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        // clone3 fails with ENOSYS so libc falls back to the filtered clone.
        let c3 = doc["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["names"] == json!(["clone3"]))
            .unwrap();
        assert_eq!(c3["action"], "SCMP_ACT_ERRNO");
        assert_eq!(c3["errnoRet"], 38);
        for ok in ["read", "socket", "arch_prctl", "chroot", "ptrace"] {
            assert!(!allowed(&p, ok).is_empty(), "{ok} must be allowed");
        }
        assert!(
            allowed(&p, "set_tls").is_empty(),
            "an arm-only rule on amd64"
        );
    }

    #[test]
    fn conditions_follow_caps_arch_and_kernel() {
        let mut with_admin = caps(DOCKER_CAPS);
        with_admin.push("CAP_SYS_ADMIN".into());
        let p = profile_for(&with_admin, &host("amd64", "SCMP_ARCH_X86_64", (6, 1))).unwrap();
        assert!(!allowed(&p, "unshare").is_empty());
        let clone = allowed(&p, "clone");
        assert!(clone.iter().all(|c| c.get("args").is_none()));
        // ptrace needs 4.8 without CAP_SYS_PTRACE.
        let old = profile_for(
            &caps(DOCKER_CAPS),
            &host("amd64", "SCMP_ARCH_X86_64", (4, 4)),
        )
        .unwrap();
        assert!(allowed(&old, "ptrace").is_empty());
        let arm = profile_for(
            &caps(DOCKER_CAPS),
            &host("arm64", "SCMP_ARCH_AARCH64", (6, 1)),
        )
        .unwrap();
        let doc = serde_json::to_value(&arm).unwrap();
        assert_eq!(
            doc["architectures"],
            json!(["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"])
        );
        assert!(!allowed(&arm, "set_tls").is_empty());
        assert!(allowed(&arm, "arch_prctl").is_empty());
    }

    /// Without the x32 ABI in the kernel the filter leaves x32 out; the
    /// rules stay the same.
    #[test]
    fn x32_only_where_the_kernel_runs_it() {
        let (with, without) = (docker_amd64(true), docker_amd64(false));
        let (with, without) = (
            serde_json::to_value(&with).unwrap(),
            serde_json::to_value(&without).unwrap(),
        );
        assert_eq!(
            without["architectures"],
            json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"])
        );
        assert_eq!(with["syscalls"], without["syscalls"]);
    }

    /// The probe agrees with the kernel's configuration, where it is readable.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_x32_probe_matches_the_kernel_config() {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let config = std::fs::read_to_string(format!("/boot/config-{}", release.trim()))
            .ok()
            .or_else(|| {
                let out = std::process::Command::new("zcat")
                    .arg("/proc/config.gz")
                    .output()
                    .ok()?;
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into())
            });
        let Some(config) = config else {
            eprintln!("skipped: neither /boot/config-RELEASE nor /proc/config.gz");
            return;
        };
        let built_in = config.lines().any(|l| l == "CONFIG_X86_X32_ABI=y");
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        let turned_off = cmdline.split_whitespace().any(|w| w == "syscall.x32=n");
        assert_eq!(kernel_runs_x32(), built_in && !turned_off);
    }

    #[test]
    fn the_host_profile_builds() {
        let p = default_profile(&caps(DOCKER_CAPS)).unwrap();
        assert!(!p.syscalls().as_ref().unwrap().is_empty());
        assert_eq!(parse_version("6.18.44-fc-v1300"), Some((6, 18)));
    }
}
