//! Access control: the daemon checks each connection's peer credentials
//! against allowed-users/allowed-groups. The tests run as root and connect as
//! `nobody` (uid 65534) to a socket made world-writable, so only the daemon's
//! own check stands in the way. SIGHUP re-reads the rules.

mod common;
use common::{ctl_as, Daemon};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

/// A daemon started with `--config FILE` saying `text`, reachable by anyone;
/// also the file (kept as long as the returned directory lives).
fn daemon_with_config(text: &str) -> (Daemon, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("memobuildd.toml");
    std::fs::write(&config, text).unwrap();
    let d = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    d.open_socket_to_all();
    (d, dir, config)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A context any user can read, built without RUN (no containerd needed).
fn copy_context() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hi\n").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn assert_refused(d: &Daemon, out: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "permission denied: user nobody (uid 65534) is not allowed to use memobuildd at {}",
        d.socket.display()
    );
    assert!(!out.status.success(), "{}", text(out));
    assert!(stderr.contains(&expected), "{}", text(out));
    assert!(stderr.contains("ask an admin"), "{}", text(out));
    assert!(!stderr.contains("lost the connection"), "{}", text(out));
}

#[test]
fn a_user_not_allowed_gets_a_clear_refusal_and_the_daemon_keeps_serving() {
    let d = Daemon::start();
    d.open_socket_to_all();
    let ctx = copy_context();
    for args in [
        vec!["status"],
        vec!["images"],
        vec!["build", ctx.path().to_str().unwrap()],
    ] {
        let out = ctl_as(NOBODY, NOGROUP, &d.socket, &args);
        assert_refused(&d, &out);
    }
    // The daemon says who it refused, and still serves the users it allows.
    let log = d.log();
    assert!(
        log.contains("refused a connection: permission denied: user nobody (uid 65534)"),
        "{log}"
    );
    let out = d.build_ok(ctx.path(), &[]);
    assert!(!out.manifest_digest().is_empty());
}

#[test]
fn users_and_groups_from_the_config_may_build() {
    let ctx = copy_context();
    for config in [
        "allowed-users = [\"nobody\"]\n",
        "allowed-users = [65534]\n",
        "allowed-groups = [\"nogroup\"]\n",
    ] {
        let (d, _dir, _) = daemon_with_config(config);
        let out = ctl_as(
            NOBODY,
            NOGROUP,
            &d.socket,
            &["build", "--progress", "plain", ctx.path().to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{config}: {}\n--- daemon log ---\n{}",
            text(&out),
            d.log()
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("sha256:"),
            "{}",
            text(&out)
        );
    }
    // As flags too.
    let d = Daemon::start_with(&["--allowed-users", "someone,nobody"]);
    d.open_socket_to_all();
    let out = ctl_as(NOBODY, NOGROUP, &d.socket, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn members_of_the_socket_group_are_allowed_by_default() {
    let d = Daemon::start_with(&["--socket-group", "nogroup"]);
    d.open_socket_to_all();
    let out = ctl_as(NOBODY, NOGROUP, &d.socket, &["status"]);
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    // Someone outside the group is told which group to join.
    let out = ctl_as(4242, 4242, &d.socket, &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr.contains("permission denied: uid 4242 is not allowed")
            && stderr.contains("group nogroup"),
        "{}",
        text(&out)
    );
}

#[test]
fn sighup_reloads_the_allowed_users_and_a_bad_file_keeps_the_old_rules() {
    let (d, _dir, original) = daemon_with_config("allowed-users = [\"root\"]\n");
    assert_refused(&d, &ctl_as(NOBODY, NOGROUP, &d.socket, &["status"]));

    std::fs::write(&original, "allowed-users = [\"root\", \"nobody\"]\n").unwrap();
    d.signal("HUP");
    wait_until(Duration::from_secs(10), &d, || {
        ctl_as(NOBODY, NOGROUP, &d.socket, &["status"])
            .status
            .success()
    });

    // A broken file: the error is logged and the old rules stay.
    std::fs::write(&original, "allowed-users = [\"nobody\"\n").unwrap();
    d.signal("HUP");
    wait_until(Duration::from_secs(10), &d, || {
        d.log().contains("config not reloaded, keeping the old one")
    });
    let out = ctl_as(NOBODY, NOGROUP, &d.socket, &["status"]);
    assert!(out.status.success(), "{}", text(&out));

    // Options that need a restart say so.
    std::fs::write(&original, "max-parallel-runs = 7\n").unwrap();
    d.signal("HUP");
    wait_until(Duration::from_secs(10), &d, || {
        d.log()
            .contains("max-parallel-runs changed; it needs restart")
    });
    assert_refused(&d, &ctl_as(NOBODY, NOGROUP, &d.socket, &["status"]));
}

fn wait_until(within: Duration, d: &Daemon, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out; daemon log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
