//! Test harness: a real memobuildd on a private socket and data dir, driven
//! through the real memobuild-ctl binary, as a user would.
#![allow(dead_code)]

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Directory holding the workspace's built binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/debug/deps/test-xxxx -> target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for bin in ["memobuildd", "memobuild-ctl"] {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: run `cargo build --workspace --bins` before the tests (./x test does)",
            dir.join(bin).display()
        );
    }
    dir
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running daemon with its own socket and data dir, killed on drop.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub data: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    pub fn start() -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/memobuildd.sock");
        let data = dir.path().join("data");
        let mut d = Daemon {
            dir,
            socket,
            data,
            child: None,
        };
        d.spawn();
        d
    }

    /// Starts (again) on the same socket and data dir.
    pub fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix_kill(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs memobuild-ctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_in(args, None)
    }

    pub fn ctl_in(&self, args: &[&str], cwd: Option<&Path>) -> Output {
        let mut cmd = Command::new(bin_dir().join("memobuild-ctl"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("SOURCE_DATE_EPOCH");
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        cmd.output().expect("run memobuild-ctl")
    }

    /// `build --progress json` and its parsed result.
    pub fn build(&self, context: &Path, extra: &[&str]) -> BuildOutcome {
        let mut args = vec!["build", "--progress", "json"];
        args.extend_from_slice(extra);
        let ctx = context.to_str().expect("utf-8 path");
        args.push(ctx);
        BuildOutcome::from_output(self.ctl(&args))
    }

    pub fn build_ok(&self, context: &Path, extra: &[&str]) -> BuildOutcome {
        let out = self.build(context, extra);
        assert!(
            out.success,
            "build of {} failed:\n{}\n--- daemon log ---\n{}",
            context.display(),
            out.text(),
            self.log()
        );
        out
    }
}

impl Drop for Daemon {
    /// A graceful stop, so the daemon stops its private containerd too.
    fn drop(&mut self) {
        self.stop();
    }
}

fn nix_kill(pid: u32, sig: &str) -> std::io::Result<()> {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map(|_| ())
}

/// What a `--progress json` build printed.
pub struct BuildOutcome {
    pub success: bool,
    pub events: Vec<Value>,
    pub stdout: String,
    pub stderr: String,
}

impl BuildOutcome {
    fn from_output(out: Output) -> BuildOutcome {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let events = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        BuildOutcome {
            success: out.status.success(),
            events,
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn text(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr)
    }

    fn steps(&self) -> Vec<Value> {
        self.events
            .iter()
            .find(|e| e["event"] == "planned")
            .and_then(|e| e["steps"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Instructions (as written) of the steps that executed rather than came from cache.
    pub fn executed(&self) -> Vec<String> {
        self.steps_with("step_done")
    }

    pub fn cached(&self) -> Vec<String> {
        self.steps_with("step_cached")
    }

    fn steps_with(&self, kind: &str) -> Vec<String> {
        let steps = self.steps();
        self.events
            .iter()
            .filter(|e| e["event"] == kind)
            .filter_map(|e| e["step"].as_u64())
            .filter_map(|i| steps.get(i as usize))
            .filter_map(|s| s["instruction"].as_str().map(String::from))
            .collect()
    }

    pub fn manifest_digest(&self) -> String {
        self.events
            .iter()
            .find(|e| e["event"] == "finished")
            .and_then(|e| e["manifest_digest"].as_str().map(String::from))
            .unwrap_or_else(|| panic!("no finished event:\n{}", self.text()))
    }

    pub fn error(&self) -> Value {
        self.events
            .iter()
            .find(|e| e["event"] == "failed")
            .map(|e| e["error"].clone())
            .unwrap_or_else(|| panic!("no failed event:\n{}", self.text()))
    }
}

/// Writes files (path, content) under `dir`, creating parents.
pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (path, content) in files {
        let p = dir.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write");
    }
}

/// Runs fsdump.py on an image archive: the canonical JSON of its filesystem and config.
pub fn fsdump(archive: &Path) -> Value {
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("tests/conformance/fsdump.py"));
    // The RUN cases copy the host's busybox into their images; its bytes
    // depend on the package version, so the expected data masks them.
    if Path::new("/bin/busybox").exists() {
        cmd.arg("--mask-sha256-of").arg("/bin/busybox");
    }
    let out = cmd
        .arg(archive)
        .output()
        .expect("python3 (needed by the conformance tests)");
    assert!(
        out.status.success(),
        "fsdump.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("fsdump JSON")
}

impl Daemon {
    /// Like [`Daemon::start`], with extra memobuildd flags (e.g. `--step-timeout 2`).
    pub fn start_with(extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/memobuildd.sock");
        let data = dir.path().join("data");
        let mut d = Daemon {
            dir,
            socket,
            data,
            child: None,
        };
        d.spawn_with(extra);
        d
    }

    /// Starts (again) on the same socket and data dir, with extra memobuildd
    /// flags; the log is appended to, so a restart keeps the earlier run's.
    pub fn spawn_with(&mut self, extra: &[&str]) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("log file");
        let child = Command::new(bin_dir().join("memobuildd"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--data-dir")
            .arg(&self.data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start memobuildd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "memobuildd did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The pid of the running memobuildd, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The socket of the private containerd the daemon starts for RUN steps.
    pub fn containerd_socket(&self) -> PathBuf {
        self.data.join("containerd/containerd.sock")
    }

    /// `ctr --address <private containerd> -n memobuild ARGS...` (stdout; panics on failure).
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(self.containerd_socket())
            .args(["-n", "memobuild"])
            .args(args)
            .output()
            .expect("run ctr (Debian package containerd)");
        assert!(
            out.status.success(),
            "ctr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

// ---- Registries (tests/registry.rs, benches/registry.rs) ----

pub mod registry;
