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
    let d = Daemon::start_with(&["--insecure-registry", &reg.host]);
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
