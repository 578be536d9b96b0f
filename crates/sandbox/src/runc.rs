//! Running a step's container with `runc` directly, as BuildKit's OCI worker
//! does: one `runc run` process per step, its stdout and stderr our pipes.
//!
//! containerd keeps what it is good at (snapshots, leases, content); a
//! containerd task would add a `containerd-shim-runc-v2` process per step and
//! three runc processes (create, start, delete) behind a dozen gRPC calls,
//! ~50-70 ms of a trivial step's ~90 ms (docs/PERFORMANCE.md). `runc run
//! --keep` creates, starts and waits in one process; the stopped container
//! keeps its cgroup until `runc delete`, so the sandbox can read which limit
//! it hit.
//!
//! The rootfs is the step's overlay snapshot, mounted by us at
//! `BUNDLE/rootfs` (the spec's `root.path`) and unmounted at teardown.
//! Containers live under their own runc root (`RUN_DIR/runc`), so
//! [`Runc::list`] sees only ours when a crashed daemon's leftovers are
//! cleaned up.

use super::SandboxError;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// runc's `PATH` when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The runc binary and the state directory of memobuild's containers.
#[derive(Debug, Clone)]
pub(crate) struct Runc {
    binary: PathBuf,
    root: PathBuf,
}

impl Runc {
    /// `runc` from `PATH`, with its state under `root`.
    pub(crate) fn find(root: PathBuf) -> Result<Runc, SandboxError> {
        let binary = super::private::which("runc").ok_or_else(|| SandboxError::NotInstalled {
            binary: "runc".into(),
        })?;
        Ok(Runc { binary, root })
    }

    /// The same runc with its state under `root`.
    pub(crate) fn with_root(self, root: PathBuf) -> Runc {
        Runc { root, ..self }
    }

    fn command(&self) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.binary);
        c.arg("--root").arg(&self.root).stdin(Stdio::null());
        // None of the daemon's environment: runc acts on NOTIFY_SOCKET (it
        // would wait for the step to say READY=1) and on LISTEN_FDS (it
        // would hand the daemon's activated socket to the step), both set
        // under systemd.
        c.env_clear().env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
        );
        // The daemon's umask is 077; runc creates what the rootfs lacks
        // (mount points, /etc entries a copy-up makes) with its own, and a
        // 0700 /etc would lock a USER step out of /etc/passwd. containerd's
        // shim ran runc with 022.
        // SAFETY: umask(2) is async-signal-safe and touches nothing else.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        c
    }

    /// Starts container `id` from `bundle` (its `config.json` and mounted
    /// `rootfs`), with the process's stdout and stderr piped to us; the
    /// child exits with the container's exit status. `--keep`: the stopped
    /// container (and its cgroup) stays until [`Runc::delete`].
    pub(crate) fn run(
        &self,
        id: &str,
        bundle: &Path,
    ) -> Result<tokio::process::Child, SandboxError> {
        std::fs::create_dir_all(&self.root).map_err(|source| SandboxError::Io {
            path: self.root.clone(),
            source,
        })?;
        self.command()
            .args(["run", "--keep", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Killing runc would leave the container running: teardown
            // kills the container through runc instead.
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| SandboxError::Io {
                path: self.binary.clone(),
                source,
            })
    }

    /// SIGKILL to every process of container `id`.
    pub(crate) async fn kill(&self, id: &str) -> Result<(), SandboxError> {
        self.quietly(id, &["kill", "--all", id, "KILL"]).await
    }

    /// Removes container `id`, killing what still runs in it, and its cgroups.
    pub(crate) async fn delete(&self, id: &str) -> Result<(), SandboxError> {
        self.quietly(id, &["delete", "--force", id]).await
    }

    /// The ids of the containers under our runc root.
    pub(crate) async fn list(&self) -> Vec<String> {
        let Ok(out) = self.command().args(["list", "-q"]).output().await else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    }

    /// Runs one runc command on container `id`; a container that is
    /// already gone (no state directory under our root) is no error.
    async fn quietly(&self, id: &str, args: &[&str]) -> Result<(), SandboxError> {
        if !self.root.join(id).exists() {
            return Ok(());
        }
        let out = self
            .command()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| SandboxError::Io {
                path: self.binary.clone(),
                source,
            })?;
        if out.status.success() || !self.root.join(id).exists() {
            return Ok(());
        }
        Err(SandboxError::Runtime(format!(
            "runc {}: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Mounts the step's snapshot (containerd's mounts for it: one overlay, or
/// one bind for a snapshot without parents) at `target`.
pub(crate) fn mount_rootfs(
    mounts: &[containerd_client::types::Mount],
    target: &Path,
) -> Result<(), SandboxError> {
    use nix::mount::{mount, MsFlags};
    let [m] = mounts else {
        return Err(SandboxError::Invalid(format!(
            "expected one mount for the step's snapshot, got {}",
            mounts.len()
        )));
    };
    let io = |source: std::io::Error| SandboxError::Io {
        path: target.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(target).map_err(io)?;
    match m.r#type.as_str() {
        "bind" => {
            let mut flags = MsFlags::MS_BIND | MsFlags::MS_REC;
            if m.options.iter().any(|o| o == "ro") {
                flags |= MsFlags::MS_RDONLY;
            }
            mount(
                Some(Path::new(&m.source)),
                target,
                None::<&str>,
                flags,
                None::<&str>,
            )
            .map_err(|e| io(e.into()))
        }
        "overlay" => {
            let data = m.options.join(",");
            // mount(2) takes at most a page of options; containerd's shim
            // shortens long lower directory lists the same way.
            if data.len() < 4000 {
                return mount(
                    Some("overlay"),
                    target,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(data.as_str()),
                )
                .map_err(|e| io(e.into()));
            }
            mount_overlay_relative(&m.options, target)
        }
        other => Err(SandboxError::Invalid(format!(
            "the step's snapshot has a mount of type {other:?}"
        ))),
    }
}

/// An overlay mount whose options are too long for a page: the directories
/// are given relative to their common parent, from a `mount` process whose
/// working directory that is (the kernel resolves them against it).
fn mount_overlay_relative(options: &[String], target: &Path) -> Result<(), SandboxError> {
    let dirs: Vec<&str> = options
        .iter()
        .filter_map(|o| o.split_once('=').map(|(_, v)| v))
        .flat_map(|v| v.split(':'))
        .filter(|v| v.starts_with('/'))
        .collect();
    let common = common_parent(&dirs).ok_or_else(|| {
        SandboxError::Invalid("the step's overlay directories share no parent".into())
    })?;
    let prefix = format!("{}/", common.display());
    let relative: Vec<String> = options
        .iter()
        .map(|o| match o.split_once('=') {
            Some((k, v)) if matches!(k, "lowerdir" | "upperdir" | "workdir") => {
                let v: Vec<&str> = v
                    .split(':')
                    .map(|d| d.strip_prefix(&prefix).unwrap_or(d))
                    .collect();
                format!("{k}={}", v.join(":"))
            }
            _ => o.clone(),
        })
        .collect();
    let status = std::process::Command::new("mount")
        .current_dir(&common)
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(relative.join(","))
        .arg(target)
        .stdin(Stdio::null())
        .status()
        .map_err(|source| SandboxError::Io {
            path: PathBuf::from("mount"),
            source,
        })?;
    if !status.success() {
        return Err(SandboxError::Runtime(format!(
            "mounting the step's overlay ({} lower directories) failed: {status}",
            dirs.len()
        )));
    }
    Ok(())
}

fn common_parent(dirs: &[&str]) -> Option<PathBuf> {
    let mut common = Path::new(dirs.first()?).parent()?.to_path_buf();
    for d in dirs {
        while !Path::new(d).starts_with(&common) {
            common = common.parent()?.to_path_buf();
        }
    }
    (common != Path::new("/")).then_some(common)
}

/// Unmounts the step's rootfs (lazily if something still holds it, so a
/// teardown never hangs).
pub(crate) fn unmount_rootfs(target: &Path) {
    use nix::mount::{umount2, MntFlags};
    if umount2(target, MntFlags::empty()).is_err() {
        let _ = umount2(target, MntFlags::MNT_DETACH);
    }
}

/// The mount points under `dir` (a run directory) still mounted, deepest
/// first: what a crashed daemon left.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let n = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_overlay_options_are_made_relative_to_a_common_parent() {
        assert_eq!(
            common_parent(&["/a/s/1/fs", "/a/s/22/fs", "/a/s/3/work"]),
            Some(PathBuf::from("/a/s"))
        );
        assert_eq!(common_parent(&["/x/1", "/y/2"]), None);
        assert_eq!(
            unescape_mount_path("/tmp/a\\040b"),
            PathBuf::from("/tmp/a b")
        );
    }
}
