//! Step results written straight into containerd snapshots (issue 10): a RUN
//! after a COPY or RUN sees exactly what it would see had containerd unpacked
//! the layer blobs, and no layer is unpacked when the daemon wrote the
//! snapshot itself. Real containerd, runc and busybox.

mod common;
use common::{oci_file, Daemon};
use std::path::Path;

/// A COPY and a RUN that produce every kind of entry a layer has: modes with
/// setuid/sticky bits, owners, symlinks, hard links, deletions (whiteouts) of
/// lower files and directories, a directory replaced (opaque), and parent
/// directories that come from a lower layer. The last RUN lists the tree
/// (names, types, modes, owners, sizes, link counts, file mtimes, content).
const DOCKERFILE: &str = r#"FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /t/keep /t/gone/deep /t/swap && echo low > /t/keep/low && echo old > /t/gone/deep/x && echo o > /t/swap/old && chmod 0751 /t/keep
COPY --chown=12:34 tree/ /t/copied/
COPY --chmod=4755 tool /t/keep/tool
RUN echo made > /t/keep/made && ln /t/keep/made /t/keep/hard && ln -s ../keep/made /t/keep/soft \
 && rm -rf /t/gone /t/swap && mkdir /t/swap && echo n > /t/swap/new && chmod 1777 /t/swap \
 && chown 7:8 /t/keep/made && mkdir -p /t/copied/sub/new && rm -rf /t/copied/a
ARG NONCE
RUN echo $NONCE > /nonce && find /t | sort | while read p; do \
      if [ -d "$p" ]; then stat -c '%n %F %a %u %g' "$p"; \
      else stat -c '%n %F %a %u %g %s %h %Y' "$p"; fi; \
      [ -f "$p" ] && [ ! -L "$p" ] && cat "$p"; \
    done > /dump
"#;

fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", dir.path().join("busybox"))
        .expect("/bin/busybox is missing: apt-get install busybox-static");
    std::fs::write(dir.path().join("Dockerfile"), DOCKERFILE).unwrap();
    common::write_files(
        dir.path(),
        &[
            ("tree/a", "a\n"),
            ("tree/sub/b", "b\n"),
            ("tree/sub/deeper/c", "c\n"),
            ("tool", "#!/bin/sh\n"),
        ],
    );
    std::os::unix::fs::symlink("sub/b", dir.path().join("tree/link")).unwrap();
    dir
}

fn dump(d: &Daemon, ctx: &Path, nonce: &str) -> String {
    let out = ctx.join(format!("out-{nonce}.tar"));
    let dest = format!("type=oci,dest={}", out.display());
    d.build_ok(
        ctx,
        &["--build-arg", &format!("NONCE={nonce}"), "-o", &dest],
    );
    let bytes = oci_file(&out, "/dump").expect("the image has /dump");
    String::from_utf8(bytes).unwrap()
}

/// `memobuild_step_snapshots_total{how}` from `memobuild-ctl metrics`.
fn snapshots(d: &Daemon, how: &str) -> u64 {
    let out = d.ctl(&["metrics"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let series = format!("memobuild_step_snapshots_total{{how=\"{how}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[test]
fn a_rootfs_written_as_snapshots_is_what_unpacking_the_layers_gives() {
    let ctx = context();
    let mut d = Daemon::start();
    let written = dump(&d, ctx.path(), "1");
    // The context's files were copied, never linked into a snapshot (whose
    // owner and mode would then be theirs).
    for rel in ["tree/a", "tree/sub/b", "tool"] {
        let meta = std::fs::metadata(ctx.path().join(rel)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (meta.nlink(), meta.uid(), meta.mode() & 0o7777),
            (1, 0, 0o644),
            "{rel}"
        );
    }
    // Every layer below the last RUN was written as a snapshot, none unpacked.
    assert_eq!(snapshots(&d, "unpacked"), 0, "{}", d.log());
    assert!(snapshots(&d, "written") >= 6, "{}", d.log());

    // The same store with containerd's snapshots gone: the last RUN's parent
    // chain is now unpacked from the layer blobs by containerd.
    d.stop();
    d.stop_stray_containerd();
    std::fs::remove_dir_all(d.data.join("containerd")).unwrap();
    d.spawn();
    let unpacked = dump(&d, ctx.path(), "2");
    assert!(snapshots(&d, "unpacked") >= 6, "{}", d.log());
    assert_eq!(written, unpacked);
    // A sanity check that the listing is what the Dockerfile made: copied
    // files keep their context mtimes (BuildKit), a RUN's files theirs.
    let mtime = |rel: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(ctx.path().join(rel)).unwrap().mtime()
    };
    for line in [
        format!(
            "/t/copied/sub/b regular file 644 12 34 2 1 {}\n",
            mtime("tree/sub/b")
        ),
        "/t/copied/link symbolic link 777 12 34".to_string(),
        format!(
            "/t/keep/tool regular file 4755 0 0 10 1 {}\n",
            mtime("tool")
        ),
        "/t/keep/hard regular file 644 7 8 5 2 ".to_string(),
        "/t/swap directory 1777 0 0".to_string(),
        "/t/keep directory 751 0 0".to_string(),
    ] {
        assert!(written.contains(&line), "{line:?} missing from:\n{written}");
    }
    assert!(!written.contains("/t/gone"), "{written}");
    assert!(!written.contains("/t/swap/old"), "{written}");
    assert!(!written.contains("/t/copied/a "), "{written}");
    d.stop();
}

/// SOURCE_DATE_EPOCH makes the two builds comparable byte for byte (file
/// times and history times are clamped to it; without it they are the
/// times each build ran, as in BuildKit).
const ARGS: [&str; 4] = [
    "--build-arg",
    "NONCE=x",
    "--build-arg",
    "SOURCE_DATE_EPOCH=1700000000",
];

#[test]
fn an_edit_loop_gives_the_image_a_fresh_daemon_builds() {
    let ctx = context();
    let d = Daemon::start();
    d.build_ok(ctx.path(), &ARGS);
    let tree = ctx.path().join("tree");
    for i in 0..10 {
        // Edits, new files, deletions and a file turned into a directory.
        std::fs::write(tree.join("sub/b"), format!("edit {i}\n")).unwrap();
        std::fs::write(tree.join(format!("new{i}")), format!("{i}\n")).unwrap();
        if i > 0 {
            std::fs::remove_file(tree.join(format!("new{}", i - 1))).unwrap();
        }
        if i == 4 {
            std::fs::remove_dir_all(tree.join("sub/deeper")).unwrap();
        }
        if i == 6 {
            std::fs::remove_file(tree.join("a")).unwrap();
            std::fs::create_dir(tree.join("a")).unwrap();
            std::fs::write(tree.join("a/inside"), "in\n").unwrap();
        }
        let out = d.build_ok(ctx.path(), &ARGS);
        assert!(
            out.executed().iter().any(|s| s.starts_with("COPY --chown")),
            "edit {i} re-ran the COPY: {:?}",
            out.executed()
        );
    }
    let warm = d.build_ok(ctx.path(), &ARGS);
    assert_eq!(snapshots(&d, "unpacked"), 0, "{}", d.log());
    assert!(
        snapshots(&d, "delta") >= 8,
        "edits were not written as deltas"
    );
    // A fresh daemon builds the final context from scratch (whole snapshots).
    let fresh = Daemon::start();
    let cold = fresh.build_ok(ctx.path(), &ARGS);
    assert_eq!(snapshots(&fresh, "delta"), 0);
    assert_eq!(warm.manifest_digest(), cold.manifest_digest());
}
