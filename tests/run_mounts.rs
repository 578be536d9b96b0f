//! RUN mounts against a real daemon, containerd and runc: cache mount locking
//! (issue 15, item 1) and the mount points a step leaves in its layer (item 3).
//! Needs `containerd`, `runc` and busybox-static, like tests/run.rs.

mod common;
use common::{busybox_context, write_files, BuildOutcome, Daemon};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// Builds `ctx` with `-o type=tar` and returns the flattened filesystem:
/// path (no leading `/`, directories without a trailing one) -> (is a dir, content).
fn build_tar(
    d: &Daemon,
    ctx: &Path,
    within: Duration,
) -> (BuildOutcome, BTreeMap<String, (bool, Vec<u8>)>) {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let dest = out_dir.path().join("fs.tar");
    let spec = format!("type=tar,dest={}", dest.display());
    let child = d.spawn_build(ctx, &["-o", &spec]);
    let pid = child.id();
    let deadline = Instant::now() + within;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(BuildOutcome::wait(child));
    });
    let out = loop {
        if let Ok(out) = rx.recv_timeout(Duration::from_millis(200)) {
            break out;
        }
        if Instant::now() > deadline {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            panic!(
                "the build did not finish within {within:?}\n--- daemon log ---\n{}",
                d.log()
            );
        }
    };
    assert!(
        out.success,
        "build failed:\n{}\n--- daemon log ---\n{}",
        out.text(),
        d.log()
    );
    let mut files = BTreeMap::new();
    let mut tar = tar::Archive::new(std::fs::File::open(&dest).expect("open tar output"));
    for entry in tar.entries().expect("tar entries") {
        let mut entry = entry.expect("tar entry");
        let path = entry.path().expect("entry path").display().to_string();
        let path = path
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let is_dir = entry.header().entry_type().is_dir();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("read entry");
        if !path.is_empty() && path != "." {
            files.insert(path, (is_dir, data));
        }
    }
    (out, files)
}

/// apt's common pattern: two `sharing=locked` cache mounts of one id in one
/// RUN. The step takes the id's lock once (it used to wait forever on the lock
/// it already held) and both targets are the same directory. Two stages that
/// lock the same two ids in opposite orders run side by side without deadlock.
#[test]
fn one_run_with_two_locked_mounts_of_one_id_finishes_and_both_see_one_directory() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "FROM base AS one
RUN --mount=type=cache,id=apt,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,id=apt,target=/var/lib/apt,sharing=locked \
    echo one > /var/cache/apt/marker && cat /var/lib/apt/marker > /seen-one \
    && touch /var/lib/apt/other && ls /var/cache/apt > /listing-one
FROM base AS two
RUN --mount=type=cache,id=b,target=/b,sharing=locked --mount=type=cache,id=a,target=/a,sharing=locked \
    --mount=type=cache,id=a,target=/a2,sharing=private \
    echo two > /a/m2 && cat /a2/m2 > /seen-two && sleep 1
FROM base AS three
RUN --mount=type=cache,id=a,target=/a,sharing=locked --mount=type=cache,id=b,target=/b,sharing=locked \
    echo three > /b/m3 && sleep 1
FROM scratch
COPY --from=one /seen-one /listing-one /
COPY --from=two /seen-two /
COPY --from=three /bin/busybox /three-ran
",
        &[],
    );
    let (out, files) = build_tar(&d, ctx.path(), Duration::from_secs(120));
    assert_eq!(files["seen-one"].1, b"one\n", "{}", out.text());
    assert_eq!(files["listing-one"].1, b"marker\nother\n");
    assert_eq!(files["seen-two"].1, b"two\n");
    assert!(files.contains_key("three-ran"));
    // And a second time with the cache directories already there.
    let df = std::fs::read_to_string(ctx.path().join("Dockerfile")).expect("read");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        df.replace("echo one >", "echo one-again >"),
    )
    .expect("write");
    let (_, files) = build_tar(&d, ctx.path(), Duration::from_secs(120));
    assert_eq!(files["seen-one"].1, b"one-again\n");
    assert_eq!(files["listing-one"].1, b"marker\nother\n");
}

/// BuildKit's `testMountStubsDirectory` (client/client_mount_test.go), with
/// the Dockerfile's mount types: the mount point a step's mounts need and
/// that the step leaves empty is removed with the parents made only for it
/// (`RemoveMountStubsRecursive`, which BuildKit's LLB sets on every exec
/// since v0.13); a stub the step put files into stays, and so does a
/// directory that existed before. Docker 20.10's BuildKit (v0.8) predates
/// stub removal and leaves them all.
#[test]
fn empty_mount_points_are_removed_as_buildkit_does_and_others_stay() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "FROM base AS work
RUN mkdir -p /test/qux /root && chmod 700 /test /test/qux
RUN --mount=type=tmpfs,target=/test/foo \
    --mount=type=tmpfs,target=/test/bar/x/y \
    --mount=type=tmpfs,target=/test/baz/x \
    --mount=type=tmpfs,target=/test/qux \
    --mount=type=cache,target=/root/.cache/pip \
    --mount=type=cache,target=/test/cache/x \
    --mount=type=bind,source=wheels,target=/wheels \
    --mount=type=bind,source=wheels,target=/test/wheels \
    touch /test/baz/keep /root/.cache/pip/in-cache && mkdir /test/cache/kept \
    && ls /wheels > /test/wheels-seen
FROM scratch
COPY --from=work /test /
COPY --from=work /root /root/
",
        &[],
    );
    write_files(ctx.path(), &[("wheels/a.whl", "wheel")]);
    let (out, files) = build_tar(&d, ctx.path(), Duration::from_secs(120));
    let paths: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        [
            "baz",
            "baz/keep",
            "cache",
            "cache/kept",
            "qux",
            "root",
            "wheels-seen"
        ],
        "{}",
        out.text()
    );
    assert_eq!(files["wheels-seen"].1, b"a.whl\n");
    assert!(files["qux"].0 && files["cache"].0 && files["root"].0);
}
