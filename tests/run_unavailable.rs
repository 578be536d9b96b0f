//! Without containerd, RUN fails with an error naming the packages to install,
//! and builds without RUN keep working.

mod common;
use common::{bin_dir, write_files};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn run_without_containerd_names_the_packages_and_other_builds_work() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    // A PATH without containerd or runc.
    let mut daemon = Command::new(bin_dir().join("memobuildd"))
        .arg("--socket")
        .arg(&socket)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("PATH", dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ctl = |ctx: &std::path::Path| {
        Command::new(bin_dir().join("memobuild-ctl"))
            .arg("--socket")
            .arg(&socket)
            .arg("build")
            .arg(ctx)
            .output()
            .unwrap()
    };
    let with_run = tempfile::tempdir().unwrap();
    write_files(
        with_run.path(),
        &[("Dockerfile", "FROM scratch\nRUN [\"/bin/true\"]\n")],
    );
    let out = ctl(with_run.path());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let without_run = tempfile::tempdir().unwrap();
    write_files(
        without_run.path(),
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x")],
    );
    let ok = ctl(without_run.path());
    let _ = daemon.kill();
    let _ = daemon.wait();
    assert!(!out.status.success());
    assert!(
        stderr.contains("containerd") && stderr.contains("runc") && stderr.contains("hint:"),
        "{stderr}"
    );
    assert!(
        ok.status.success(),
        "a build without RUN must still work: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
}
