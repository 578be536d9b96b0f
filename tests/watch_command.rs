//! `memobuild-ctl watch`: builds, then rebuilds after every change.

mod common;
use common::{write_files, Daemon};
use std::time::Duration;

#[test]
fn watch_rebuilds_after_each_save() {
    let d = Daemon::start();
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "one")],
    );
    let watch = d.ctl_lines(&["watch", "--progress", "plain", ctx.path().to_str().unwrap()]);
    let wait_for = |what: &str| watch.wait_for(what, Duration::from_secs(15));
    let first = wait_for("== built");
    assert!(
        first.iter().any(|l| l.contains("COPY f /f DONE")),
        "{first:?}"
    );
    for content in ["two", "three"] {
        std::fs::write(ctx.path().join("f"), content).unwrap();
        let next = wait_for("== built");
        assert!(
            next.iter().any(|l| l.contains("COPY f /f DONE")),
            "a save must rebuild the COPY: {next:?}"
        );
    }
}
