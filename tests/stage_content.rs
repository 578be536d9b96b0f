//! `COPY --from=STAGE` and `RUN --mount=type=bind,from=STAGE` are keyed on
//! the content of the paths they read, not on the stage's key (issue 15,
//! item 2; docs/CACHE.md, "Stage content"), against a real daemon, containerd
//! and runc: an edit in a builder stage that leaves those paths as they were
//! keeps the rest cached, as in BuildKit.

mod common;
use common::{busybox_context, oci_file, wait_status, BuildOutcome, Daemon};
use std::path::Path;

/// Builds with `-o type=oci` and returns the outcome and the archive's path.
fn build(d: &Daemon, ctx: &Path, out: &Path) -> BuildOutcome {
    let spec = format!("type=oci,dest={}", out.display());
    d.build_ok(ctx, &["-o", &spec])
}

fn text(archive: &Path, path: &str) -> String {
    String::from_utf8(oci_file(archive, path).unwrap_or_else(|| panic!("{path} not in the image")))
        .expect("utf-8")
}

const DOCKERFILE: &str = "FROM base AS builder
COPY a.txt b.txt /in/
RUN mkdir /out && tr a-z A-Z < /in/a.txt > /out/a && tr a-z A-Z < /in/b.txt > /out/b
FROM base
COPY --from=builder /out/a /app/a
RUN cat /app/a /app/a > /app/twice
RUN --mount=type=bind,from=builder,source=/out/a,target=/m cp /m /app/bound
";

#[test]
fn copy_from_and_bind_from_a_stage_rerun_only_when_the_paths_they_read_change() {
    let d = Daemon::start();
    let ctx = busybox_context(DOCKERFILE, &[("a.txt", "alpha\n"), ("b.txt", "beta\n")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("image.tar");
    let first = build(&d, ctx.path(), &out);
    assert_eq!(text(&out, "/app/twice"), "ALPHA\nALPHA\n");
    assert_eq!(text(&out, "/app/bound"), "ALPHA\n");
    let first_digest = first.manifest_digest();

    // b.txt feeds /out/b, which the final stage does not read.
    std::fs::write(ctx.path().join("b.txt"), "beta, edited\n").expect("write");
    wait_status(&d, ctx.path(), "the builder's COPY dirty", |p| {
        p["state"] == "dirty"
    });
    let second = build(&d, ctx.path(), &out);
    assert_eq!(
        second.executed(),
        [
            "COPY a.txt b.txt /in/",
            "RUN mkdir /out && tr a-z A-Z < /in/a.txt > /out/a && tr a-z A-Z < /in/b.txt > /out/b"
        ],
        "{}",
        second.text()
    );
    assert!(second
        .cached()
        .contains(&"COPY --from=builder /out/a /app/a".to_string()));
    assert!(second
        .cached()
        .contains(&"RUN cat /app/a /app/a > /app/twice".to_string()));
    assert!(second
        .cached()
        .iter()
        .any(|s| s.starts_with("RUN --mount=type=bind,from=builder")));
    // The final image is the same image.
    assert_eq!(second.manifest_digest(), first_digest);
    // The dirty check agrees with the build: nothing is left to do.
    wait_status(&d, ctx.path(), "the project clean after the build", |p| {
        p["state"] == "clean"
    });
    let third = build(&d, ctx.path(), &out);
    assert!(third.executed().is_empty(), "{}", third.text());

    // a.txt feeds /out/a, which the final stage copies and binds.
    std::fs::write(ctx.path().join("a.txt"), "alpha, edited\n").expect("write");
    let fourth = build(&d, ctx.path(), &out);
    let executed = fourth.executed();
    for step in [
        "COPY --from=builder /out/a /app/a",
        "RUN cat /app/a /app/a > /app/twice",
    ] {
        assert!(
            executed.contains(&step.to_string()),
            "{step} did not run: {executed:?}"
        );
    }
    assert!(executed
        .iter()
        .any(|s| s.starts_with("RUN --mount=type=bind,from=builder")));
    assert_eq!(text(&out, "/app/twice"), "ALPHA, EDITED\nALPHA, EDITED\n");
    assert_eq!(text(&out, "/app/bound"), "ALPHA, EDITED\n");
    wait_status(&d, ctx.path(), "the project clean after the build", |p| {
        p["state"] == "clean"
    });

    // A restarted daemon remembers the content digests: the dirty check
    // after the restart and the build agree that nothing changed.
    let mut d = d;
    d.restart();
    let fifth = build(&d, ctx.path(), &out);
    assert!(fifth.executed().is_empty(), "{}", fifth.text());
}

/// BuildKit's `testMountRWCache` (frontend/dockerfile/dockerfile_mount_test.go):
/// a writable bind mount from a stage whose input changed but whose mounted
/// directory did not is "still cached by content": the step that writes a
/// random file does not run again.
#[test]
fn rw_bind_mount_from_a_stage_is_cached_by_content() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "FROM base AS build
COPY cachebust /
RUN mkdir out && echo foo > out/foo
FROM base AS second
RUN --mount=from=build,src=out,target=/out,rw touch /out/bar && head -c 100 /dev/urandom | sha256sum > /unique
FROM scratch
COPY --from=second /unique /unique
",
        &[("cachebust", "0")],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("image.tar");
    build(&d, ctx.path(), &out);
    let first = text(&out, "/unique");
    std::fs::write(ctx.path().join("cachebust"), "1").expect("write");
    let again = build(&d, ctx.path(), &out);
    assert_eq!(text(&out, "/unique"), first, "{}", again.text());
    assert_eq!(
        again.executed(),
        ["COPY cachebust /", "RUN mkdir out && echo foo > out/foo"]
    );
}
