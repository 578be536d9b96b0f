//! `memobuild-ctl watch`: builds, then rebuilds after every change.

mod common;
use common::{bin_dir, write_files, Daemon};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn watch_rebuilds_after_each_save() {
    let d = Daemon::start();
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "one")],
    );
    let mut child = Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["watch", "--progress", "plain"])
        .arg(ctx.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let wait_for = |what: &str, rx: &mpsc::Receiver<String>| -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(15)) {
                Ok(line) => {
                    let hit = line.contains(what);
                    seen.push(line);
                    if hit {
                        return seen;
                    }
                }
                Err(_) => panic!("no {what:?} within 15 s; saw {seen:?}"),
            }
        }
    };
    let first = wait_for("== built", &rx);
    assert!(
        first.iter().any(|l| l.contains("COPY f /f DONE")),
        "{first:?}"
    );
    for content in ["two", "three"] {
        std::fs::write(ctx.path().join("f"), content).unwrap();
        let next = wait_for("== built", &rx);
        assert!(
            next.iter().any(|l| l.contains("COPY f /f DONE")),
            "a save must rebuild the COPY: {next:?}"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}
