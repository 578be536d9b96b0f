//! Housekeeping as Docker users expect it: `prune` asks on a terminal unless
//! `-f`, `--filter until=`; docker credential helpers; completions and man
//! pages; `daemon status|stop`.

mod common;
use common::{bin_dir, busybox_context, Daemon};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

/// `memobuild-ctl ARGS` on a pseudo-terminal (util-linux `script`), with
/// `input` typed at it; returns (success, what the terminal showed).
fn on_pty(d: &Daemon, args: &str, input: &str) -> (bool, String) {
    let line = format!(
        "{} --socket {} {args}",
        bin_dir().join("memobuild-ctl").display(),
        d.socket.display()
    );
    let mut child = Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (bsdutils)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn prune_asks_on_a_terminal_and_filters_by_age() {
    let d = Daemon::start();
    let ctx = busybox_context("COPY f /f\n", &[("f", "1")]);
    d.build_ok(ctx.path(), &[]);
    let entries = |d: &Daemon| n(&d.ctl_json(&["du"])["cache_entries"]);
    let before = entries(&d);
    assert!(before >= 2);

    // On a terminal: Docker's question; "n" keeps everything.
    let (ok, screen) = on_pty(&d, "prune --all", "n\n");
    assert!(ok, "{screen}");
    assert!(
        screen.contains(
            "WARNING! This will remove all build cache. Are you sure you want to continue? [y/N]"
        ),
        "{screen}"
    );
    assert!(screen.contains("nothing removed"), "{screen}");
    assert_eq!(entries(&d), before);

    // until=24h: everything was used a moment ago, nothing goes.
    let r = d.ctl_json(&["prune", "--all", "-f", "--filter", "until=24h"]);
    assert_eq!(n(&r["cache_entries_removed"]), 0, "{r}");
    assert_eq!(entries(&d), before);
    // -f on a terminal: no question; until=0s takes all that is not pinned.
    let (ok, screen) = on_pty(&d, "prune --all -f --filter until=0s", "");
    assert!(ok, "{screen}");
    assert!(!screen.contains("WARNING!"), "{screen}");
    assert!(
        screen.contains(&format!("removed {before} cache entries")),
        "{screen}"
    );
    assert_eq!(entries(&d), 0);

    let out = d.ctl(&["prune", "-f", "--filter", "type=regular"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not supported"));
    let out = d.ctl(&["prune", "-f", "--filter", "until=soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--filter until=soon"));
}

/// A `docker-credential-NAME` script in `dir` that logs each request and
/// answers `user`/`secret` for any server.
fn credential_helper(dir: &std::path::Path, name: &str, user: &str, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("docker-credential-{name}"));
    let log = dir.join(format!("{name}.log"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nread -r server\necho \"$1 $server\" >> {log}\ncase \"$1\" in\n  get) printf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{secret}\"}}' \"$server\";;\n  *) echo unsupported; exit 1;;\nesac\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn docker_credential_helpers_log_in_to_the_registry() {
    use common::registry::{build_env, busybox_layout, Registry};
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let reg = Registry::start_with_auth("builder", "s3cret-pw");
    reg.push_layout(
        &busybox_layout(&maker, dir.path(), "helper"),
        "private/base:1",
        &[],
    );
    let d = common::registry::daemon_for(&reg);
    let ctx = busybox_context("", &[]);
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {} AS base\nFROM base\nCOPY busybox /copy\n",
            reg.image("private/base:1")
        ),
    )
    .unwrap();
    let bin = tempfile::tempdir().unwrap();
    credential_helper(bin.path(), "mbstore", "builder", "s3cret-pw");
    credential_helper(bin.path(), "mbwrong", "builder", "wrong");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    let config = tempfile::tempdir().unwrap();
    let env = [
        ("DOCKER_CONFIG", config.path().to_str().unwrap()),
        ("PATH", path.as_str()),
    ];

    // credsStore: the helper is asked for this registry's login, once.
    std::fs::write(
        config.path().join("config.json"),
        format!(
            "{{\"auths\": {{\"{}\": {{}}}}, \"credsStore\": \"mbstore\"}}",
            reg.host
        ),
    )
    .unwrap();
    let push = reg.image("team/app:1");
    let out = build_env(&d, ctx.path(), &["-t", &push, "--push"], &env);
    assert!(out.success, "{}\n{}", out.text(), d.log());
    assert_eq!(reg.digest("team/app:1"), out.manifest_digest());
    let log = std::fs::read_to_string(bin.path().join("mbstore.log")).unwrap();
    assert_eq!(
        log,
        format!("get {}\n", reg.host),
        "only the registry the build uses: {}",
        out.text()
    );
    assert!(!d.log().contains("s3cret-pw"));

    // credHelpers wins over credsStore for its registry: a wrong password is refused.
    std::fs::write(
        config.path().join("config.json"),
        format!(
            "{{\"credsStore\": \"mbstore\", \"credHelpers\": {{\"{}\": \"mbwrong\"}}}}",
            reg.host
        ),
    )
    .unwrap();
    let out = build_env(&d, ctx.path(), &["--pull=always"], &env);
    assert!(!out.success);
    assert!(
        out.error()["hint"]
            .as_str()
            .unwrap()
            .contains("were rejected"),
        "{}",
        out.text()
    );
    assert!(std::fs::read_to_string(bin.path().join("mbwrong.log"))
        .unwrap()
        .contains("get"));

    // A helper that is not installed: named, with what to do.
    std::fs::write(
        config.path().join("config.json"),
        "{\"credsStore\": \"not-installed\"}",
    )
    .unwrap();
    let out = build_env(&d, ctx.path(), &[], &env);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("docker-credential-not-installed cannot be run"),
        "{}",
        out.stderr
    );

    // A broken config is a warning; a build that needs no login goes on
    // (its base is already in the store), and one with no registry is not told.
    std::fs::write(config.path().join("config.json"), "{ not json").unwrap();
    let out = build_env(&d, ctx.path(), &[], &env);
    assert!(out.success, "{}", out.text());
    assert!(out.stderr.contains("is not valid JSON"), "{}", out.stderr);
    let local = busybox_context("COPY busybox /again\n", &[]);
    let out = build_env(&d, local.path(), &[], &env);
    assert!(out.success, "{}", out.text());
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}

#[test]
fn x_install_puts_binaries_man_pages_and_completions_where_shells_find_them() {
    let prefix = tempfile::tempdir().unwrap();
    let out = Command::new(common::repo_root().join("x"))
        .arg("install")
        .arg("--prefix")
        .arg(prefix.path())
        .arg("--from")
        .arg(bin_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("is not on PATH"), "{stdout}");
    let p = prefix.path();
    let ctl = p.join("bin/memobuild-ctl");
    assert!(p.join("bin/memobuildd").is_file());
    let version = Command::new(&ctl).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("memobuild-ctl "));

    // man renders the pages; one per command.
    let page = Command::new("man")
        .arg("-l")
        .arg(p.join("share/man/man1/memobuild-ctl-build.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output();
    let roff = std::fs::read_to_string(p.join("share/man/man1/memobuild-ctl-build.1")).unwrap();
    assert!(roff.contains(".TH memobuild-ctl-build 1"), "{roff}");
    assert!(
        roff.contains("\\-\\-iidfile"),
        "the build flags are documented"
    );
    if let Ok(page) = page {
        if page.status.success() {
            assert!(String::from_utf8_lossy(&page.stdout).contains("--metadata-file"));
        }
    }
    let daemon_page =
        std::fs::read_to_string(p.join("share/man/man8/memobuildd.8")).expect("memobuildd.8");
    assert!(daemon_page.contains(".TH memobuildd 8"), "{daemon_page}");
    assert!(
        daemon_page.contains("\\-\\-max\\-storage"),
        "the daemon's flags are documented"
    );
    // A user-level unit starting the installed daemon; systemd accepts it.
    let unit = p.join("lib/systemd/user/memobuildd.service");
    let text = std::fs::read_to_string(&unit).expect("user unit");
    assert!(
        text.contains(&format!("ExecStart={}/bin/memobuildd ", p.display())),
        "{text}"
    );
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && stderr.trim().is_empty(),
        "{stderr}"
    );
    for cmd in [
        "memobuild-ctl",
        "memobuild-ctl-daemon-stop",
        "memobuild-ctl-image-inspect",
    ] {
        assert!(
            p.join(format!("share/man/man1/{cmd}.1")).is_file(),
            "{cmd}.1"
        );
    }

    // bash: the completion script registers itself and completes subcommands and flags.
    let script = p.join("share/bash-completion/completions/memobuild-ctl");
    let probe = format!(
        "source {}; COMP_WORDS=(memobuild-ctl bui); COMP_CWORD=1; _memobuild__ctl memobuild-ctl bui memobuild-ctl; echo \"${{COMPREPLY[@]}}\"; \
         COMP_WORDS=(memobuild-ctl build --iid); COMP_CWORD=2; _memobuild__ctl memobuild-ctl --iid build; echo \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = Command::new("bash").args(["-c", &probe]).output().unwrap();
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(
        lines.first().map(String::as_str),
        Some("build"),
        "{lines:?}"
    );
    assert_eq!(
        lines.get(1).map(String::as_str),
        Some("--iidfile"),
        "{lines:?}"
    );
    assert!(
        std::fs::read_to_string(p.join("share/zsh/site-functions/_memobuild-ctl"))
            .unwrap()
            .starts_with("#compdef memobuild-ctl")
    );
    assert!(p
        .join("share/fish/vendor_completions.d/memobuild-ctl.fish")
        .is_file());
}

#[test]
fn daemon_status_and_stop() {
    let mut d = Daemon::start();
    let out = d.ctl(&["daemon", "status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let pid = d.pid().unwrap();
    assert!(text.contains(&format!("is running: pid {pid}")), "{text}");
    let status = d.ctl_json(&["daemon", "status"]);
    assert_eq!(status["running"], true);
    assert_eq!(n(&status["pid"]), pid as u64);
    assert_eq!(status["data_dir"], d.data.display().to_string());
    // What this daemon understands beyond protocol 3 (a client checks before using it).
    assert_eq!(
        status["features"],
        serde_json::json!([
            "blob_fds",
            "annotations",
            "build-contexts",
            "prune-until",
            "local-cache",
            "check",
            "inline-cache",
            "ssh",
            "host-gateway"
        ])
    );

    let out = d.ctl(&["daemon", "stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("stopped memobuildd (pid {pid})"))
    );
    // Really gone: it exited by itself, gracefully.
    let exit = d
        .wait_exit(std::time::Duration::from_secs(10))
        .expect("the daemon exited");
    assert!(exit.success(), "{exit:?}");
    assert!(std::os::unix::net::UnixStream::connect(&d.socket).is_err());

    let out = d.ctl(&["daemon", "status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("memobuildd is not running"));
    let out = d.ctl(&["daemon", "status", "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], false);
    // Stopping what is not running is not an error (as systemctl stop).
    assert!(d.ctl(&["daemon", "stop"]).status.success());
}

/// What `./x demo` does at its end: examples/hello, with busybox-static as
/// the `busybox` build context, loaded into Docker, runs there.
#[test]
fn the_demo_image_runs_in_docker() {
    let d = Daemon::start();
    let engine = common::docker::Dockerd::start();
    let tools = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tools.path().join("bin")).unwrap();
    std::fs::copy("/bin/busybox", tools.path().join("bin/busybox"))
        .expect("/bin/busybox (busybox-static)");
    let hello = common::repo_root().join("examples/hello");
    let out = Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args([
            "build",
            "-q",
            "-t",
            "hello:demo",
            "--load",
            "--build-context",
        ])
        .arg(format!("busybox={}", tools.path().display()))
        .arg(&hello)
        .env("DOCKER_HOST", engine.host())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    let page = engine.docker_ok(&[
        "run",
        "--rm",
        "--entrypoint",
        "/bin/busybox",
        "hello:demo",
        "cat",
        "/srv/www/index.html",
    ]);
    assert_eq!(
        page,
        std::fs::read_to_string(hello.join("site/index.html")).unwrap()
    );
    // Its CMD serves the site with busybox's httpd.
    let id = engine.docker_ok(&["run", "-d", "--network", "none", "hello:demo"]);
    let id = id.trim();
    let mut served = String::new();
    for _ in 0..50 {
        let o = engine.docker(&[
            "exec",
            id,
            "/bin/busybox",
            "wget",
            "-qO-",
            "http://127.0.0.1:8080/",
        ]);
        served = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = engine.docker(&["rm", "-f", id]);
    assert_eq!(served, page);
}
