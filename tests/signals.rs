//! SIGTERM/SIGINT stop the daemon gracefully: new builds are refused, running
//! ones get the shutdown grace and then are cancelled (their containers
//! removed), and the daemon exits 0. SIGHUP applies new RUN defaults (access
//! reloads are in tests/access.rs). Real daemon, real containerd and runc
//! (Debian `containerd`, `runc`, `busybox-static`).

mod common;
use common::{bin_dir, busybox_context, leftovers_after_exit, Daemon};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `memobuild-ctl build --progress json` running in the background, its
/// output going to files.
struct BgBuild {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

fn spawn_build(d: &Daemon, ctx: &Path) -> BgBuild {
    let dir = tempfile::tempdir().unwrap();
    let (stdout, stderr) = (dir.path().join("out"), dir.path().join("err"));
    let child = Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["build", "--progress", "json"])
        .arg(ctx)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .expect("run memobuild-ctl");
    BgBuild {
        child,
        stdout,
        stderr,
        _dir: dir,
    }
}

impl BgBuild {
    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            std::fs::read_to_string(&self.stdout).unwrap_or_default(),
            std::fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    fn wait_for(&self, needle: &str, within: Duration, d: &Daemon) {
        let deadline = Instant::now() + within;
        while !self.output().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {}s:\n{}\n--- daemon log ---\n{}",
                within.as_secs(),
                self.output(),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client's exit status and everything it printed.
    fn finish(mut self, within: Duration) -> (bool, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.success(), self.output());
            }
            assert!(
                Instant::now() < deadline,
                "memobuild-ctl still runs after {}s:\n{}",
                within.as_secs(),
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BgBuild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RUN that prints `started`, sleeps `secs` and writes /done.
fn sleeper(secs: u32) -> tempfile::TempDir {
    busybox_context(
        &format!("RUN echo started; sleep {secs}; echo finished > /done\n"),
        &[],
    )
}

/// Host processes running exactly `sleep N`.
fn sleeping(secs: u32) -> bool {
    let want = format!("sleep\0{secs}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes()))
}

#[test]
fn sigterm_lets_a_running_build_finish_refuses_new_ones_and_exits_0() {
    let mut d = Daemon::start_with(&["--shutdown-grace", "1m"]);
    let ctx = sleeper(4);
    let bg = spawn_build(&d, ctx.path());
    bg.wait_for("\"started\"", Duration::from_secs(60), &d);
    d.signal("TERM");
    // During the grace: a new build is refused with a clear message.
    let other = busybox_context("RUN echo other\n", &[]);
    let refused = d.build(other.path(), &[]);
    assert!(!refused.success, "{}", refused.text());
    let message = refused.error()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("memobuildd is shutting down"),
        "{}",
        refused.text()
    );
    let (ok, output) = bg.finish(Duration::from_secs(60));
    assert!(ok, "the running build must finish:\n{output}\n{}", d.log());
    assert!(output.contains("\"finished\""), "{output}");
    let status = d
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("daemon did not exit:\n{}", d.log()));
    assert!(status.success(), "exit {status}:\n{}", d.log());
    assert!(
        !d.socket.exists(),
        "the daemon removes the socket it created"
    );
    // The finished build's image survived the stop: a restart serves it from cache.
    d.spawn();
    let again = d.build_ok(ctx.path(), &[]);
    assert!(again.executed().is_empty(), "{}", again.text());
}

#[test]
fn sigterm_past_the_grace_cancels_the_run_and_leaves_nothing_in_containerd() {
    let mut d = Daemon::start_with(&["--shutdown-grace", "1"]);
    let ctx = sleeper(37);
    let bg = spawn_build(&d, ctx.path());
    bg.wait_for("\"started\"", Duration::from_secs(60), &d);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sleeping(37) {
        assert!(Instant::now() < deadline, "the step's sleep is not running");
        std::thread::sleep(Duration::from_millis(20));
    }
    let signalled = Instant::now();
    d.signal("TERM");
    let (ok, output) = bg.finish(Duration::from_secs(30));
    assert!(!ok, "a cancelled build must exit non-zero:\n{output}");
    assert!(
        output.contains("memobuildd is shutting down") && output.contains("shutdown grace (1s)"),
        "the client must say why the build stopped:\n{output}"
    );
    assert!(
        !output.contains("lost the connection"),
        "the client must get the build's error, not a transport error:\n{output}"
    );
    let status = d
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("daemon did not exit:\n{}", d.log()));
    assert!(status.success(), "exit {status}:\n{}", d.log());
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "stopping took {:?}, the grace was 1s",
        signalled.elapsed()
    );
    assert!(!sleeping(37), "the cancelled step's process still runs");
    let left = leftovers_after_exit(&d.data);
    assert!(
        left.is_empty(),
        "containerd still holds:\n{}",
        left.join("\n")
    );
}

#[test]
fn sigint_with_nothing_running_exits_0_at_once() {
    let mut d = Daemon::start();
    let started = Instant::now();
    d.signal("INT");
    let status = d
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("daemon did not exit:\n{}", d.log()));
    assert!(status.success(), "exit {status}:\n{}", d.log());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn sighup_applies_new_run_defaults_to_the_next_steps() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("memobuildd.toml");
    std::fs::write(&config, "step-timeout = 1\n").unwrap();
    let d = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    let ctx = sleeper(3);
    let out = d.build(ctx.path(), &[]);
    let message = out.error()["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(message.contains("timeout"), "{}", out.text());
    std::fs::write(&config, "step-timeout = 60\n").unwrap();
    d.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("SIGHUP: config reloaded") {
        assert!(Instant::now() < deadline, "no reload:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    d.build_ok(ctx.path(), &[]);
}
