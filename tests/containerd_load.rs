//! `--load` / `-o type=docker` with no Docker Engine: the image goes into
//! containerd's image store (`CONTAINERD_ADDRESS`, `CONTAINERD_NAMESPACE`),
//! where `ctr images ls` lists it under Docker's full name and `ctr run`
//! runs it. The containerd is the real one the daemon starts for RUN steps;
//! the test uses its own namespace there.

mod common;
use common::{bin_dir, busybox_context, Daemon};
use std::path::Path;
use std::process::Command;

fn ctr(socket: &Path, namespace: &str, args: &[&str]) -> std::process::Output {
    Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", namespace])
        .args(args)
        .output()
        .expect("run ctr (Debian package containerd)")
}

fn ctr_ok(socket: &Path, namespace: &str, args: &[&str]) -> String {
    let out = ctr(socket, namespace, args);
    assert!(
        out.status.success(),
        "ctr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// memobuild-ctl with no Docker Engine and `CONTAINERD_*` set.
fn ctl(d: &Daemon, containerd: &Path, namespace: &str, args: &[&str]) -> std::process::Output {
    let nowhere = tempfile::tempdir().unwrap();
    Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env(
            "DOCKER_HOST",
            format!("unix://{}/docker.sock", nowhere.path().display()),
        )
        .env("CONTAINERD_ADDRESS", containerd)
        .env("CONTAINERD_NAMESPACE", namespace)
        .output()
        .unwrap()
}

#[test]
fn load_without_docker_goes_into_containerd_and_ctr_runs_it() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "RUN echo \"made by RUN in $(pwd)\" > /made.txt\nENTRYPOINT [\"/bin/cat\"]\nCMD [\"/made.txt\"]\n",
        &[],
    );
    // The RUN step starts the daemon's private containerd; its socket is ours too.
    d.build_ok(ctx.path(), &[]);
    let out = ctl(
        &d,
        &d.containerd_socket(),
        "mbload",
        &[
            "build",
            "--progress",
            "plain",
            "--load",
            "-t",
            "mb-test/ctr:1",
            "-t",
            "localhost:5000/other",
            ctx.path().to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", d.log());
    let socket = d.containerd_socket();
    assert!(
        stderr.contains(&format!(
            "loaded into containerd at {} (namespace mbload)",
            socket.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("Loaded image: docker.io/mb-test/ctr:1"),
        "{stderr}"
    );
    let listed = ctr_ok(&socket, "mbload", &["images", "ls", "-q"]);
    let mut names: Vec<&str> = listed.lines().collect();
    names.sort();
    assert_eq!(
        names,
        ["docker.io/mb-test/ctr:1", "localhost:5000/other:latest"],
        "{listed}"
    );
    // The digest containerd keeps is the one memobuild built.
    let manifest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let table = ctr_ok(&socket, "mbload", &["images", "ls"]);
    assert!(table.contains(&manifest), "{manifest} not in\n{table}");
    // ctr run: the image's ENTRYPOINT + CMD print the file RUN wrote.
    let ran = ctr_ok(
        &socket,
        "mbload",
        &["run", "--rm", "docker.io/mb-test/ctr:1", "mb-ctr-run-test"],
    );
    assert_eq!(ran, "made by RUN in /\n");
    // The daemon's own namespace is untouched.
    assert!(!d.ctr(&["images", "ls", "-q"]).contains("mb-test/ctr"));

    // No name: containerd keeps the image under its digest, as Docker under its ID.
    let out = ctl(
        &d,
        &socket,
        "mbload2",
        &[
            "build",
            "--progress",
            "plain",
            "--load",
            ctx.path().to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let listed = ctr_ok(&socket, "mbload2", &["images", "ls", "-q"]);
    assert!(
        listed.lines().any(|l| l.ends_with(&format!("@{manifest}"))),
        "{manifest} not in {listed}"
    );
}

#[test]
fn a_docker_host_memobuild_cannot_speak_to_is_an_error_not_a_fallback() {
    let d = Daemon::start();
    let ctx = busybox_context("RUN true\n", &[]);
    d.build_ok(ctx.path(), &[]);
    let out = Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["build", "--progress", "plain", "--load"])
        .arg(ctx.path())
        .env("DOCKER_HOST", "ssh://builder@example.invalid")
        .env("CONTAINERD_ADDRESS", d.containerd_socket())
        .env("CONTAINERD_NAMESPACE", "mbssh")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("DOCKER_HOST=ssh://builder@example.invalid is not supported"),
        "{stderr}"
    );
    let listed = ctr_ok(&d.containerd_socket(), "mbssh", &["images", "ls", "-q"]);
    assert_eq!(listed, "", "nothing went into containerd");
}

#[test]
fn load_with_neither_docker_nor_containerd_names_both_before_the_build() {
    let d = Daemon::start();
    let ctx = busybox_context("", &[]);
    let nowhere = tempfile::tempdir().unwrap();
    let socket = nowhere.path().join("containerd.sock");
    let out = ctl(
        &d,
        &socket,
        "default",
        &[
            "build",
            "--progress",
            "plain",
            "--load",
            ctx.path().to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no Docker Engine answers at"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no containerd answers at {} (CONTAINERD_ADDRESS)",
            socket.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("-o type=docker,dest=FILE.tar"), "{stderr}");
    assert!(
        !stderr.contains("#1 "),
        "the build must not start: {stderr}"
    );
}
