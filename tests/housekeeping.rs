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
