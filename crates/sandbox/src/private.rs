//! A private containerd, started and supervised by memobuildd: the zero-setup
//! default when no `--containerd-socket` is given. Its root, state, socket,
//! config and log all live under one directory (the daemon's data dir), so it
//! never touches a system containerd.

use super::{Sandbox, SandboxError};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The Debian packages RUN needs, named in every "not installed" error.
pub const PACKAGES: &str = "containerd runc";

/// Binaries a private containerd needs on `PATH`.
const BINARIES: &[&str] = &["containerd", "containerd-shim-runc-v2", "runc"];

/// How long a private containerd may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `sun_path` is 108 bytes, NUL included.
const MAX_SOCKET_PATH: usize = 107;

/// A containerd child process. [`PrivateContainerd::shutdown`] stops it
/// gracefully (SIGTERM, then SIGKILL after a grace period); dropping it does
/// the same without waiting long.
pub struct PrivateContainerd {
    child: Option<std::process::Child>,
    dir: PathBuf,
    socket: PathBuf,
}

impl PrivateContainerd {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops containerd: SIGTERM, up to 10 s for it to exit, then SIGKILL.
    pub async fn shutdown(mut self) {
        if let Some(child) = self.child.take() {
            let _ = tokio::task::spawn_blocking(move || stop(child, Duration::from_secs(10))).await;
        }
        let _ = std::fs::remove_file(self.dir.join(PID_FILE));
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(child, Duration::from_secs(2));
            let _ = std::fs::remove_file(self.dir.join(PID_FILE));
        }
    }
}

const PID_FILE: &str = "containerd.pid";

fn stop(mut child: std::process::Child, grace: Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Finds `name` on `PATH`.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Errors with the packages to install if a binary RUN needs is missing.
pub(crate) fn check_binaries() -> Result<(), SandboxError> {
    for binary in BINARIES {
        if which(binary).is_none() {
            return Err(SandboxError::NotInstalled {
                binary: (*binary).to_string(),
            });
        }
    }
    Ok(())
}

fn config(dir: &Path, socket: &Path) -> String {
    let q = |p: &Path| toml_string(&p.to_string_lossy());
    format!(
        r#"# Written by memobuildd for its private containerd; rewritten at every start.
version = 2
root = {root}
state = {state}
# Only what RUN steps use: no CRI (Kubernetes), no snapshotters but overlayfs and native.
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[debug]
  address = ""
  level = "info"

[metrics]
  address = ""
"#,
        root = q(&dir.join("root")),
        state = q(&dir.join("state")),
        socket = q(socket),
        ttrpc = q(&socket.with_extension("sock.ttrpc")),
    )
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Stops every containerd left running by a previous daemon that died (kill -9):
/// those whose command line names our config file. Found by scanning /proc,
/// not only by the pid file: a daemon killed between starting containerd and
/// writing the pid file leaves one the file does not name, and it would hold
/// the metadata database's lock so no new containerd could start.
fn stop_stale(dir: &Path, config_path: &Path) {
    let recorded = std::fs::read_to_string(dir.join(PID_FILE))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.extend(recorded);
    pids.sort_unstable();
    pids.dedup();
    for pid in pids {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = cmdline
            .split(|b| *b == 0)
            .any(|arg| arg == config_path.as_os_str().as_encoded_bytes());
        if ours && alive(pid) {
            stop_pid(pid);
        }
    }
}

fn stop_pid(pid: i32) {
    tracing::warn!(
        pid,
        "stopping the private containerd left by a previous memobuildd"
    );
    let pid = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !alive(pid.as_raw()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
}

/// Running, i.e. neither gone nor a zombie waiting for its parent to reap it.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

pub(super) async fn start(dir: &Path) -> Result<(Sandbox, PrivateContainerd), SandboxError> {
    check_binaries()?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SandboxError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dir = std::fs::canonicalize(dir).map_err(io(dir))?;
    let socket = dir.join("containerd.sock");
    if socket.as_os_str().len() + ".ttrpc".len() > MAX_SOCKET_PATH {
        return Err(SandboxError::Start {
            message: format!(
                "the socket path {} is too long for a Unix socket (at most {MAX_SOCKET_PATH} bytes); use a shorter --data-dir",
                socket.display()
            ),
            log_tail: String::new(),
        });
    }
    let config_path = dir.join("config.toml");
    {
        let (dir, config_path) = (dir.clone(), config_path.clone());
        let _ = tokio::task::spawn_blocking(move || stop_stale(&dir, &config_path)).await;
    }
    std::fs::write(&config_path, config(&dir, &socket)).map_err(io(&config_path))?;
    let _ = std::fs::remove_file(&socket);
    let log_path = dir.join("containerd.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;
    let log2 = log.try_clone().map_err(io(&log_path))?;
    let mut command = std::process::Command::new("containerd");
    command
        .arg("--config")
        .arg(&config_path)
        // systemd's variables are the daemon's: containerd would report
        // READY/STOPPING as if it were memobuildd.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // The daemon's umask is 077; containerd (and runc under it) get the usual
    // 022, or snapshot directories, and so a step's `/`, would be 0700. Its
    // state is still private: it lives under the 0700 data dir.
    // SAFETY: umask(2) is async-signal-safe and touches no memory.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SandboxError::NotInstalled {
            binary: "containerd".into(),
        },
        _ => SandboxError::Io {
            path: PathBuf::from("containerd"),
            source: e,
        },
    })?;
    let pid_path = dir.join(PID_FILE);
    std::fs::write(&pid_path, format!("{}\n", child.id())).map_err(io(&pid_path))?;
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last_error = String::from("no socket yet");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let _ = std::fs::remove_file(&pid_path);
            return Err(SandboxError::Start {
                message: format!(
                    "containerd exited at start-up ({status}); its log is {}",
                    log_path.display()
                ),
                log_tail: log_tail(&log_path),
            });
        }
        if socket.exists() {
            match Sandbox::connect(&socket).await {
                Ok(sandbox) => {
                    let sandbox = sandbox.with_run_dir(dir.join("runs"));
                    let handle = PrivateContainerd {
                        child: Some(child),
                        dir: dir.clone(),
                        socket,
                    };
                    return Ok((sandbox, handle));
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        if Instant::now() > deadline {
            stop(child, Duration::from_secs(2));
            let _ = std::fs::remove_file(&pid_path);
            return Err(SandboxError::Start {
                message: format!(
                    "containerd did not answer on {} within {}s ({last_error}); its log is {}",
                    socket.display(),
                    START_TIMEOUT.as_secs(),
                    log_path.display()
                ),
                log_tail: log_tail(&log_path),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
