//! The system service: the units in systemd/ pass `systemd-analyze verify`,
//! the example config is valid, and memobuildd speaks systemd's protocols —
//! it serves on a socket passed by socket activation (`systemd-socket-activate`,
//! Debian `systemd`) and sends READY=1, WATCHDOG=1 and STOPPING=1 to
//! NOTIFY_SOCKET (here a datagram socket the test binds).

mod common;
use common::{bin_dir, busybox_context, repo_root};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let units = repo_root().join("systemd");
    // ExecStart names the installed path; verify a copy that names the built binary.
    let daemon = bin_dir().join("memobuildd");
    let service = std::fs::read_to_string(units.join("memobuildd.service")).unwrap();
    assert!(service.contains("ExecStart=/usr/local/bin/memobuildd"));
    std::fs::write(
        dir.path().join("memobuildd.service"),
        service.replace(
            "ExecStart=/usr/local/bin/memobuildd",
            &format!("ExecStart={}", daemon.display()),
        ),
    )
    .unwrap();
    std::fs::copy(
        units.join("memobuildd.socket"),
        dir.path().join("memobuildd.socket"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("memobuildd.socket"))
        .arg(dir.path().join("memobuildd.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify only warns about unknown keys and bad values: any output is a finding.
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
    for (unit, needle) in [
        (&service, "Type=notify"),
        (&service, "WatchdogSec="),
        (&service, "KillMode=mixed"),
        (&service, "ProtectHome=read-only"),
    ] {
        assert!(unit.contains(needle), "memobuildd.service lacks {needle}");
    }
}

#[test]
fn the_example_config_is_valid_and_names_the_new_options() {
    let out = Command::new(bin_dir().join("memobuildd"))
        .arg("--config")
        .arg(repo_root().join("systemd/memobuildd.toml.example"))
        .arg("--check-config")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("shutdown-grace = \"30s\""), "{stdout}");
    assert!(stdout.contains("allowed-users = []"), "{stdout}");
}

/// Datagrams received on the notify socket until `until` says stop or `within` passes.
fn receive(
    sock: &UnixDatagram,
    got: &mut Vec<String>,
    within: Duration,
    until: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while !until(got) && Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

fn count(got: &[String], line: &str) -> usize {
    got.iter().filter(|m| m.lines().any(|l| l == line)).count()
}

#[test]
fn socket_activation_serves_builds_and_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("memobuildd.sock");
    let unused = dir.path().join("not-this.sock");
    let data = dir.path().join("data");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let activator = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(&socket)
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .arg("-E")
        .arg("WATCHDOG_USEC=300000")
        .arg(bin_dir().join("memobuildd"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--socket")
        .arg(&unused)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("systemd-socket-activate (Debian package systemd)");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let daemon_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The first connection starts memobuildd (as systemd would).
    while UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "no socket: {}", daemon_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut got = Vec::new();
    receive(&notify, &mut got, Duration::from_secs(20), |g| {
        count(g, "READY=1") > 0
    });
    assert_eq!(count(&got, "READY=1"), 1, "{got:?}\n{}", daemon_log());
    let pid = activator.id();
    let mut activator_guard = Kill(activator);
    // READY means serving: a client gets an answer at once.
    let status = ctl(&socket, &["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        status["daemon"]["pid"], pid,
        "the activated process serves the socket"
    );
    assert!(!unused.exists(), "the daemon bound its own socket instead");

    // A real build, RUN included (the private containerd must not claim to be us).
    // Nobody reads the notify socket meanwhile: its queue fills up with pings,
    // which must not stall the daemon.
    // The step gets none of the daemon's descriptors (runc, which also reads
    // LISTEN_FDS, would pass the activated socket on): ls sees 0-2 and its
    // own directory descriptor only.
    let ctx = busybox_context(
        "COPY Dockerfile /etc/\nRUN echo built > /built && ls /proc/self/fd > /fds && [ \"$(wc -l < /fds)\" -le 4 ]\n",
        &[],
    );
    let build = ctl(
        &socket,
        &["build", "--progress", "plain", ctx.path().to_str().unwrap()],
    );
    assert!(build.status.success(), "{}\n{}", text(&build), daemon_log());

    got.clear();
    receive(&notify, &mut got, Duration::from_millis(1200), |_| false);
    assert!(
        count(&got, "WATCHDOG=1") >= 3,
        "WATCHDOG_USEC=300000 wants a ping every 150 ms: {got:?}"
    );
    assert_eq!(count(&got, "READY=1"), 0, "a second READY: {got:?}");

    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    receive(&notify, &mut got, Duration::from_secs(10), |g| {
        count(g, "STOPPING=1") > 0
    });
    assert_eq!(count(&got, "STOPPING=1"), 1, "{got:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(s) = activator_guard.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "did not exit: {}", daemon_log());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "exit {exit}: {}", daemon_log());
    assert!(
        socket.exists(),
        "an activated socket belongs to systemd: the daemon must not remove it"
    );
    assert!(
        !data.join("containerd/containerd.pid").exists(),
        "the private containerd was not stopped"
    );
}

fn ctl(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
