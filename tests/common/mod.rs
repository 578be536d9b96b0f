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
    /// The umask memobuildd starts with (the test's own when `None`).
    pub umask: Option<&'static str>,
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
            umask: None,
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

    /// memobuild-ctl against this daemon, without SOURCE_DATE_EPOCH from the
    /// test's environment, and without the auto-start: this daemon is the
    /// test's, and one killed or restarting must not be replaced by an
    /// auto-started one with another data dir (the crash test once built on
    /// such a one, with /var/lib/memobuild's old cache).
    pub fn ctl_command(&self) -> Command {
        let mut cmd = Command::new(bin_dir().join("memobuild-ctl"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .env_remove("SOURCE_DATE_EPOCH")
            .env("MEMOBUILD_NO_AUTOSTART", "1");
        cmd
    }

    /// Runs memobuild-ctl against this daemon.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_in(args, None)
    }

    pub fn ctl_in(&self, args: &[&str], cwd: Option<&Path>) -> Output {
        let mut cmd = self.ctl_command();
        cmd.args(args);
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
    /// A graceful stop, so the daemon stops its private containerd too; and
    /// the private containerd a daemon killed with -9 left running.
    fn drop(&mut self) {
        self.stop();
        self.stop_stray_containerd();
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
    pub fn from_output(out: Output) -> BuildOutcome {
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
            umask: None,
        };
        d.spawn_with(extra);
        d
    }

    /// Like [`Daemon::start_with`], memobuildd started with umask `mask` (e.g. "000").
    pub fn start_with_umask(mask: &'static str, extra: &[&str]) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Daemon {
            socket: dir.path().join("run/memobuildd.sock"),
            data: dir.path().join("data"),
            dir,
            child: None,
            umask: Some(mask),
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
        let daemon = bin_dir().join("memobuildd");
        let mut command = match self.umask {
            // `exec`: the child's pid stays the daemon's.
            Some(mask) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("umask {mask} && exec \"$0\" \"$@\""))
                    .arg(daemon);
                c
            }
            None => Command::new(daemon),
        };
        let child = command
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

// ---------------------------------------------------------------------------
// Lifecycle, access and RUN helpers (tests/signals.rs, tests/access.rs,
// tests/systemd.rs).

impl Daemon {
    /// Sends `sig` ("TERM", "INT", "HUP") to the daemon.
    pub fn signal(&self, sig: &str) {
        let pid = self.pid().expect("daemon running");
        nix_kill(pid, sig).expect("kill");
    }

    /// Waits for the daemon to exit by itself; `None` if it still runs after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        let child = self.child.as_mut().expect("daemon running");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A daemon that lets `users` in (its `allowed-users`), through a socket
    /// open to all, so only the daemon's own checks stand in the way; and the
    /// directory of its configuration file.
    #[allow(dead_code)]
    pub fn start_shared(users: &[u32]) -> (Daemon, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("memobuildd.toml");
        let list: Vec<String> = users.iter().map(u32::to_string).collect();
        let text = format!("allowed-users = [{}]\n", list.join(", "));
        std::fs::write(&config, text).unwrap();
        let d = Daemon::start_with(&["--config", config.to_str().unwrap()]);
        d.open_socket_to_all();
        (d, dir)
    }

    /// Lets every local user reach the socket (directories 0755, socket
    /// 0666), so only the daemon's own access check stands in the way.
    pub fn open_socket_to_all(&self) {
        use std::os::unix::fs::PermissionsExt;
        let run = self.socket.parent().expect("socket dir");
        for (path, mode) in [
            (self.dir.path(), 0o755),
            (run, 0o755),
            (&self.socket, 0o666),
        ] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
    }
}

/// `memobuild-ctl build --ssh default=AGENT -o type=oci,dest=...` of `ctx`
/// run as user `uid` against `socket`: the outcome, the archive's path and
/// the directory (owned by `uid`) that holds it.
#[allow(dead_code)]
pub fn build_as_with_agent(
    uid: u32,
    socket: &Path,
    agent: &Path,
    ctx: &Path,
) -> (BuildOutcome, PathBuf, tempfile::TempDir) {
    let out_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(out_dir.path(), Some(uid), Some(uid)).unwrap();
    let archive = out_dir.path().join("out.tar");
    let dest = format!("type=oci,dest={}", archive.display());
    let ssh = format!("default={}", agent.display());
    let args = [
        "build",
        "--progress",
        "json",
        "--ssh",
        &ssh,
        "-o",
        &dest,
        ctx.to_str().unwrap(),
    ];
    let out = ctl_as(uid, uid, socket, &args);
    (BuildOutcome::from_output(out), archive, out_dir)
}

/// memobuild-ctl run as user `uid`/`gid` against `socket`; fails the test if it
/// has not exited within 30 s (a refused client must not hang).
pub fn ctl_as(uid: u32, gid: u32, socket: &Path, args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .uid(uid)
        .gid(gid)
        .current_dir("/")
        .env("HOME", "/nonexistent")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("XDG_DATA_HOME")
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run memobuild-ctl");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("memobuild-ctl {args:?} as uid {uid} hung for 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("memobuild-ctl output")
}

/// What RUN steps left in a stopped daemon's private containerd (containers,
/// tasks, run snapshots, run leases): starts that containerd alone on its
/// config, asks it with `ctr`, and stops it again.
pub fn leftovers_after_exit(data: &Path) -> Vec<String> {
    let dir = data.join("containerd");
    let socket = dir.join("containerd.sock");
    let mut containerd = Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("containerd (Debian package containerd)");
    struct Stop(Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = nix_kill(self.0.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ctr_ok(&socket, &["version"]) {
        assert!(
            containerd.try_wait().expect("wait").is_none() && Instant::now() < deadline,
            "the private containerd under {} did not start again",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _stop = Stop(containerd);
    let mut found = Vec::new();
    found.extend(runc_leftovers(data));
    for what in ["containers", "tasks", "leases"] {
        for row in ctr_rows(&socket, &[what, "ls"]) {
            if what != "leases" || row.contains("memobuild.run") || row.contains("mb-run-") {
                found.push(format!("{what}: {row}"));
            }
        }
    }
    for row in ctr_rows(&socket, &["snapshots", "ls"]) {
        let key = row
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let info = ctr(&socket, &["snapshots", "info", &key]);
        let info: Value = serde_json::from_str(&info).unwrap_or_default();
        if info["Labels"].get("memobuild.run").is_some() || info["Kind"] == "Active" {
            found.push(format!("snapshot: {info}"));
        }
    }
    found
}

fn ctr(socket: &Path, args: &[&str]) -> String {
    let out = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["-n", "memobuild"])
        .args(args)
        .output()
        .expect("ctr (Debian package containerd)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ctr_ok(socket: &Path, args: &[&str]) -> bool {
    Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn ctr_rows(socket: &Path, args: &[&str]) -> Vec<String> {
    ctr(socket, args)
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect()
}

// ---------------------------------------------------------------------------
// Disk, crash and concurrency helpers (tests/gc.rs, tests/crash.rs,
// tests/concurrency.rs).
// ---------------------------------------------------------------------------

/// Lines 1-3 of a Dockerfile whose stage has busybox (copied from the host's
/// /bin/busybox by [`busybox_context`]) and so can RUN shell commands.
pub const BUSYBOX_BASE: &str = "FROM scratch AS base
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
";

/// A context with busybox, `Dockerfile` = [`BUSYBOX_BASE`] + `rest`, and `files`.
pub fn busybox_context(rest: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy("/bin/busybox", dir.path().join("busybox"))
        .expect("/bin/busybox is missing: apt-get install busybox-static");
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("{BUSYBOX_BASE}{rest}"),
    )
    .expect("write Dockerfile");
    write_files(dir.path(), files);
    // Readable by any local user: tests/access.rs builds it as `nobody`.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

impl Daemon {
    /// Starts `memobuild-ctl build --progress json EXTRA CONTEXT` without waiting.
    pub fn spawn_build(&self, context: &Path, extra: &[&str]) -> Child {
        self.ctl_command()
            .args(["build", "--progress", "json"])
            .args(extra)
            .arg(context)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start memobuild-ctl")
    }

    /// `memobuild-ctl ARGS --json`, parsed; panics if it fails.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.ctl(&all);
        assert!(
            out.status.success(),
            "memobuild-ctl {args:?} failed: {}{}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// Asserts the store is consistent: `memobuild-ctl verify` finds every
    /// record's blobs present and intact, every blob hashing to its name.
    pub fn assert_store_consistent(&self) -> Value {
        let out = self.ctl(&["verify", "--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "verify printed no JSON: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(
            out.status.success() && report["problems"].as_array().is_some_and(|p| p.is_empty()),
            "store is inconsistent: {report:#}"
        );
        report
    }

    /// Stops the private containerd a daemon killed with -9 left running.
    pub fn stop_stray_containerd(&self) {
        let pid_file = self.data.join("containerd/containerd.pid");
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        else {
            return;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let config = self.data.join("containerd/config.toml");
        if !cmdline.contains(&config.display().to_string()) {
            return;
        }
        let _ = nix_kill(pid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix_kill(pid, "KILL");
    }
}

/// A running `memobuild-ctl` (e.g. `watch`) whose stderr is read line by
/// line as it comes; killed on drop.
pub struct CtlLines {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Daemon {
    /// Starts `memobuild-ctl ARGS` against this daemon, reading its stderr.
    pub fn ctl_lines(&self, args: &[&str]) -> CtlLines {
        let mut child = self
            .ctl_command()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start memobuild-ctl");
        let (tx, lines) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        CtlLines { child, lines }
    }
}

impl CtlLines {
    /// The lines up to and including the first that contains `what`; panics
    /// (with what it saw) if no line does within `within` of the last one.
    pub fn wait_for(&self, what: &str, within: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match self.lines.recv_timeout(within) {
                Ok(line) => {
                    let hit = line.contains(what);
                    seen.push(line);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => panic!("no {what:?} within {within:?}; saw {seen:?}"),
            }
        }
    }
}

impl Drop for CtlLines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl BuildOutcome {
    /// The outcome of a build started with [`Daemon::spawn_build`].
    pub fn wait(child: Child) -> BuildOutcome {
        BuildOutcome::from_output(child.wait_with_output().expect("wait for memobuild-ctl"))
    }

    /// The build id from the `planned` event.
    pub fn build_id(&self) -> u64 {
        self.events
            .iter()
            .find(|e| e["event"] == "planned")
            .and_then(|e| e["build"].as_u64())
            .unwrap_or_else(|| panic!("no planned event:\n{}", self.text()))
    }

    /// Lines of `log` events.
    pub fn log_lines(&self) -> Vec<String> {
        self.events
            .iter()
            .filter(|e| e["event"] == "log")
            .filter_map(|e| e["line"].as_str().map(String::from))
            .collect()
    }
}

/// An `-o type=oci` archive read whole: its `index.json` and its blobs by digest.
pub fn oci_archive(archive: &Path) -> (Value, std::collections::HashMap<String, Vec<u8>>) {
    use std::io::Read;
    let mut blobs = std::collections::HashMap::new();
    let mut index = Vec::new();
    let mut tar = tar::Archive::new(std::fs::File::open(archive).expect("open archive"));
    for entry in tar.entries().expect("archive entries") {
        let mut entry = entry.expect("archive entry");
        let name = entry.path().expect("entry path").display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read entry");
        if name == "index.json" {
            index = bytes;
        } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
            blobs.insert(format!("sha256:{hex}"), bytes);
        }
    }
    let index = serde_json::from_slice(&index).expect("index.json");
    (index, blobs)
}

/// The content of `path` (absolute, in the image) in an `-o type=oci` archive:
/// the last layer that has it wins; None if no layer has it.
pub fn oci_file(archive: &Path, path: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    let (index, blobs) = oci_archive(archive);
    let manifest = &blobs[index["manifests"][0]["digest"].as_str().expect("manifest")];
    let manifest: Value = serde_json::from_slice(manifest).expect("manifest JSON");
    let want = path.trim_start_matches('/');
    let mut found = None;
    for layer in manifest["layers"].as_array().expect("layers") {
        let blob = &blobs[layer["digest"].as_str().expect("layer digest")];
        let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(blob.as_slice()));
        for entry in tar.entries().expect("layer entries") {
            let mut entry = entry.expect("layer entry");
            let name = entry.path().expect("path").display().to_string();
            if name.trim_start_matches("./").trim_end_matches('/') == want {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).expect("read file");
                found = Some(bytes);
            }
        }
    }
    found
}

/// A small deterministic pseudo-random generator (tests print their seed).
pub struct Rng(pub u64);

impl Rng {
    pub fn from_time() -> Rng {
        let seed = std::env::var("MEMOBUILD_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("random seed: {seed} (MEMOBUILD_TEST_SEED={seed} repeats this run)");
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.max(1).wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// `len` bytes that do not compress (so layers have a predictable size).
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next() >> 32) as u8).collect()
    }
}

// ---- Registries (tests/registry.rs, benches/registry.rs) ----

pub mod registry;

// ---- Docker Engine (tests/docker_load.rs) ----

pub mod docker;

/// The project's entry in `status --json`, polled until `ok` holds (20 s).
pub fn wait_status(d: &Daemon, ctx: &Path, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let ctx = ctx.canonicalize().expect("canonical context");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = d.ctl_json(&["status"]);
        let project = status["projects"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["context"] == ctx.display().to_string())
            .cloned()
            .unwrap_or(Value::Null);
        if ok(&project) {
            return project;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}; last:\n{project:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Builds the stand-in for the official busybox image (tests/buildkit/busybox:
/// its /etc/passwd, /etc/group, directories, PATH and CMD, with the host's
/// static busybox) in `work`, named each of `names`.
pub fn stand_in_images(d: &Daemon, work: &Path, names: &[&str]) {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }
    let ctx = work.join("busybox-image");
    copy_dir(&repo_root().join("tests/buildkit/busybox"), &ctx);
    std::fs::copy("/bin/busybox", ctx.join("busybox"))
        .expect("/bin/busybox is missing: apt-get install busybox-static");
    let tags: Vec<&str> = names.iter().flat_map(|n| ["-t", *n]).collect();
    d.build_ok(&ctx, &tags);
}

/// What RUN steps left outside containerd under the data dir `data`: runc
/// containers under the daemon's runc root, and mounts of steps' root
/// filesystems (`mb-run-*` run directories).
pub fn runc_leftovers(data: &Path) -> Vec<String> {
    let root = data.join("containerd/runs/runc");
    let mut found = Vec::new();
    if root.exists() {
        let out = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["list", "-q"])
            .output()
            .expect("runc (Debian package runc)");
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            if !id.trim().is_empty() {
                found.push(format!("runc container: {id}"));
            }
        }
    }
    let runs = data.join("containerd/runs");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mounts.lines() {
        if let Some(point) = line.split(' ').nth(4) {
            if Path::new(point).starts_with(&runs) {
                found.push(format!("mount: {point}"));
            }
        }
    }
    found
}

/// Compiles the C program `source` statically into `dir/name` (a helper a
/// step runs on the busybox image, which has no libc to link against).
pub fn compile_static(dir: &Path, name: &str, source: &str) {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(dir.join(name))
        .arg(&src)
        .output()
        .expect("gcc (apt-get install gcc libc6-dev)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(&src).unwrap();
}

/// Runs `f` on a thread that has taken `uid` (raw `setresgid`/`setresuid`
/// change only the calling thread, not the process as glibc's wrappers do).
pub fn as_uid<T: Send + 'static>(uid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let id = uid as libc::c_long;
        // SAFETY: plain system calls on this thread's credentials; the thread
        // ends when `f` returns.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, id, id, id), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, id, id, id), 0);
        }
        f()
    })
    .join()
    .expect("thread")
}

/// A tarpc client connected to `socket` as `uid` ([`as_uid`]): the kernel
/// records the uid at connect, so the daemon's SO_PEERCRED sees it.
pub fn client_as(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
    uid: u32,
) -> memobuild_proto::MemobuildClient {
    let socket = socket.to_path_buf();
    let conn = as_uid(uid, move || {
        std::os::unix::net::UnixStream::connect(&socket)
    })
    .expect("connect to the daemon");
    conn.set_nonblocking(true).unwrap();
    rt.block_on(async move {
        let conn = tokio::net::UnixStream::from_std(conn).unwrap();
        let transport = memobuild_proto::wire::transport(conn);
        memobuild_proto::MemobuildClient::new(tarpc::client::Config::default(), transport).spawn()
    })
}

/// The step cache index (step key -> layer) a `type=local` cache directory
/// holds: its one manifest's config.
pub fn local_cache_steps(dir: &Path) -> serde_json::Map<String, Value> {
    let blob =
        |digest: &str| std::fs::read(dir.join("blobs").join(digest.replacen(':', "/", 1))).unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let config: Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    config["steps"].as_object().unwrap().clone()
}

/// A running `ssh-agent` of user `uid`; killed when dropped.
#[allow(dead_code)]
pub struct Agent {
    child: Child,
    pub socket: PathBuf,
    /// The public half of the key it holds (none for an empty agent).
    pub public_key: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl Agent {
    /// Starts an agent as `uid`, holding one generated ed25519 key whose
    /// comment is `comment` (none: an empty agent). Only the agent holds
    /// the private key: its file is removed once added.
    pub fn start(uid: u32, comment: Option<&str>) -> Agent {
        use std::os::unix::fs::{chown, PermissionsExt};
        use std::os::unix::process::CommandExt;
        let dir = tempfile::Builder::new()
            .prefix("mb-agent")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        chown(dir.path(), Some(uid), Some(uid)).unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .uid(uid)
            .gid(uid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent (apt-get install openssh-client)");
        let mut agent = Agent {
            child,
            socket,
            public_key: None,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !agent.socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(comment) = comment {
            let key = agent._dir.path().join("key");
            let made = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(&key)
                .output()
                .unwrap();
            assert!(made.status.success(), "{made:?}");
            // ssh-keygen wants a passwd entry; the agent's user owns the key.
            chown(&key, Some(uid), Some(uid)).unwrap();
            let added = Command::new("ssh-add")
                .arg(&key)
                .env("SSH_AUTH_SOCK", &agent.socket)
                .uid(uid)
                .gid(uid)
                .output()
                .unwrap();
            assert!(added.status.success(), "{added:?}");
            std::fs::remove_file(&key).unwrap();
            agent.public_key = Some(agent._dir.path().join("key.pub"));
        }
        agent
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
