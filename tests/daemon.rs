//! The daemon as users meet it: socket discovery and permissions, starting on
//! demand, clear errors for bad input, and never reading outside the context.

mod common;
use common::{bin_dir, write_files, Daemon};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn socket_is_private_to_the_user() {
    let d = Daemon::start();
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let d = Daemon::start();
    let out = Command::new(bin_dir().join("memobuildd"))
        .arg("--socket")
        .arg(&d.socket)
        .arg("--data-dir")
        .arg(d.dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
    // And the first one still serves.
    assert!(d.ctl(&["images"]).status.success());
}

#[test]
fn build_starts_a_daemon_when_none_runs() {
    let home = tempfile::tempdir().unwrap();
    let socket = home.path().join("run/memobuild/memobuildd.sock");
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x")],
    );
    let out = Command::new(bin_dir().join("memobuild-ctl"))
        .args(["build", "-t", "auto:1"])
        .arg(ctx.path())
        .env("MEMOBUILD_SOCKET", &socket)
        .env("XDG_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "autostart build failed: {stderr}");
    assert!(stderr.contains("started memobuildd"), "{stderr}");
    assert!(home.path().join("data/memobuild/meta.redb").is_file());
    // The started daemon keeps serving: a second command finds it.
    let images = Command::new(bin_dir().join("memobuild-ctl"))
        .args(["images", "--json"])
        .env("MEMOBUILD_SOCKET", &socket)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&images.stdout).contains("auto:1"));
    // Stop it: it runs with this socket on its command line.
    let pids = Command::new("pgrep")
        .args(["-f", &socket.display().to_string()])
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
        let _ = Command::new("kill").arg(pid).status();
    }
}

/// With MEMOBUILD_NO_AUTOSTART a build on a socket whose daemon is gone (the
/// socket file a killed daemon left) fails and starts nothing.
#[test]
fn no_autostart_leaves_a_dead_daemons_socket_alone() {
    let mut d = Daemon::start();
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x")],
    );
    d.kill9();
    let home = tempfile::tempdir().unwrap();
    // ctl_command sets MEMOBUILD_NO_AUTOSTART.
    let out = d
        .ctl_command()
        .arg("build")
        .arg(ctx.path())
        .env("XDG_DATA_HOME", home.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("cannot reach memobuildd"), "{stderr}");
    assert!(stderr.contains("MEMOBUILD_NO_AUTOSTART is set"), "{stderr}");
    assert!(!stderr.contains("started memobuildd"), "{stderr}");
    let left = Command::new("pgrep")
        .args(["-f", &d.socket.display().to_string()])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "a daemon was started on the socket");
    d.spawn();
}

#[test]
fn images_without_a_daemon_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(dir.path().join("nothing.sock"))
        .arg("images")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot reach memobuildd") && stderr.contains("hint:"),
        "{stderr}"
    );
}

#[test]
fn bad_dockerfiles_get_positioned_errors_and_the_daemon_keeps_serving() {
    let d = Daemon::start();
    let cases: &[(&str, &str, &str)] = &[
        (
            "FROM scratch\nCOPY --frm=x a /\n",
            "Dockerfile:2:6",
            "unknown flag: --frm (did you mean from?)",
        ),
        (
            "FROM scratch\nFOO bar\n",
            "Dockerfile:2:",
            "unknown instruction",
        ),
        ("COPY a /\n", "Dockerfile:1:", "FROM"),
        (
            "FROM scratch\nCOPY missing.txt /\n",
            "Dockerfile:2:",
            "not found in the build context",
        ),
        (
            "FROM scratch\nCOPY a b /x\n",
            "Dockerfile:2:",
            "must be a directory and end with a /",
        ),
        (
            "FROM scratch\nRUN --security=bogus true\n",
            "Dockerfile:2:",
            "unknown RUN --security=bogus",
        ),
        (
            "FROM scratch\nRUN --mount=type=nfs,target=/x true\n",
            "Dockerfile:2:",
            "unsupported mount type \"nfs\"",
        ),
        (
            "FROM scratch\nENV A=\"${B:?must be set}\"\n",
            "Dockerfile:2:",
            "must be set",
        ),
        (
            "FROM nosuchimage\n",
            "Dockerfile:1:1",
            "not in memobuild's image store",
        ),
        (
            "FROM scratch\nCOPY --from=nope a /\n",
            "Dockerfile:2:",
            "COPY --from=nope: not in memobuild's image store",
        ),
        (
            "FROM scratch\nSTOPSIGNAL SIGFOO\n",
            "Dockerfile:2:1",
            "invalid signal",
        ),
    ];
    for (dockerfile, position, message) in cases {
        let ctx = tempfile::tempdir().unwrap();
        write_files(
            ctx.path(),
            &[("Dockerfile", dockerfile), ("a", "a"), ("b", "b")],
        );
        let out = d.build(ctx.path(), &[]);
        assert!(!out.success, "expected failure for {dockerfile:?}");
        let err = out.error();
        let text = err["message"].as_str().unwrap().to_string();
        assert!(
            text.contains(position),
            "{dockerfile:?}: error {text:?} lacks position {position}"
        );
        assert!(
            text.contains(message),
            "{dockerfile:?}: error {text:?} lacks {message:?}"
        );
    }
    // Plain progress prints the error and a hint, and exits non-zero.
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[
            ("Dockerfile", "FROM scratch\nCOPY --frm=x a /\n"),
            ("a", "a"),
        ],
    );
    let out = d.ctl(&["build", ctx.path().to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: Dockerfile:2:6") && stderr.contains("hint: COPY supports"),
        "{stderr}"
    );
    assert!(
        d.ctl(&["images"]).status.success(),
        "daemon stopped serving"
    );
}

#[test]
fn sources_never_leave_the_context() {
    let d = Daemon::start();
    let outside = tempfile::tempdir().unwrap();
    write_files(outside.path(), &[("secret", "TOP-SECRET")]);
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY ../secret /a\nCOPY link /b\nCOPY dir/ /c/\n",
            ),
            ("secret", "inside"),
            ("dir/f", "f"),
        ],
    );
    std::os::unix::fs::symlink(outside.path().join("secret"), ctx.path().join("link")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), ctx.path().join("dir/escape"))
        .unwrap();
    // `../secret` is cleaned to `secret` inside the context; `link` points out
    // of the context, so following it inside the context finds nothing.
    let out = d.build(ctx.path(), &[]);
    assert!(!out.success);
    assert!(out.error()["message"]
        .as_str()
        .unwrap()
        .contains("not found in the build context"));
    write_files(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY ../secret /a\nCOPY dir/ /c/\n",
        )],
    );
    let image = tempfile::tempdir().unwrap();
    let tar = image.path().join("i.tar");
    d.build_ok(
        ctx.path(),
        &["-o", &format!("type=oci,dest={}", tar.display())],
    );
    let dump = common::fsdump(&tar);
    let files = dump["files"].as_array().unwrap();
    let find = |p: &str| {
        files
            .iter()
            .find(|f| f["path"] == p)
            .cloned()
            .unwrap_or_else(|| panic!("{p} missing: {dump}"))
    };
    assert_eq!(
        find("/a")["size"],
        6,
        "../secret must resolve inside the context"
    );
    assert_eq!(
        find("/c/escape")["type"],
        "symlink",
        "symlinks are copied as links, never followed"
    );
    // No blob anywhere holds the outside file's bytes.
    for entry in std::fs::read_dir(d.data.join("blobs/sha256")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let mut raw = Vec::new();
        let _ = std::io::Read::read_to_end(
            &mut flate2::read::MultiGzDecoder::new(&bytes[..]),
            &mut raw,
        );
        for hay in [&bytes, &raw] {
            assert!(
                !hay.windows(10).any(|w| w == b"TOP-SECRET"),
                "outside file leaked into a blob"
            );
        }
    }
}

/// An editor polling `status --json` while no daemon runs gets JSON it can
/// read, with the error's kind, and the documented exit status (69).
#[test]
fn json_commands_report_a_missing_daemon_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    for args in [
        &["status", "--json"][..],
        &["images", "--json"],
        &["du", "--json"],
    ] {
        let out = Command::new(bin_dir().join("memobuild-ctl"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(69), "{args:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e})"));
        assert_eq!(v["error"]["kind"], "unavailable", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("cannot reach memobuildd"),
            "{v}"
        );
    }
    assert!(!socket.exists(), "a status query never starts a daemon");
}

/// `explain` after a failed build says that it failed and why, and exits 1
/// (it printed nothing and exited 0).
#[test]
fn explain_says_why_the_last_build_failed() {
    let d = Daemon::start();
    let ctx = common::busybox_context("RUN echo about to fail && exit 3\n", &[]);
    let out = d.build(ctx.path(), &[]);
    assert!(!out.success, "{}", out.text());
    let context = ctx.path().to_str().unwrap();
    let json = d.ctl_json(&["explain", context]);
    let failed = json["failed"].as_str().unwrap_or_default();
    assert!(failed.contains("exit"), "{json}");
    let text = d.ctl(&["explain", context]);
    assert_eq!(text.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("the last build failed"), "{stdout}");
}
