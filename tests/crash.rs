//! Crash safety: memobuildd killed with -9 at random moments across 50 builds
//! (COPY-only and RUN, contexts edited between builds so new cache entries and
//! blobs keep being written, automatic GC running after builds, layer blobs
//! still being written behind the RUN that stands on their snapshot) never leaves a
//! cache entry or image pointing at a missing or corrupt blob, nor temp files;
//! and the restarted daemon builds the same images as a fresh one, also when
//! its RUN steps run again on the snapshots the killed daemons wrote.

mod common;
use common::{busybox_context, BuildOutcome, Daemon, Rng};
use std::time::{Duration, Instant};

/// Small enough that automatic GC runs after most builds (and gets killed too).
const FLAGS: &[&str] = &["--max-storage", "300k"];

/// Every build of the test pins SOURCE_DATE_EPOCH: the images of two daemons
/// are then comparable byte for byte (without it a step that ran on each has
/// each run's file and history times, as in BuildKit).
const EPOCH: [&str; 2] = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];

/// (context, file edited before each build, is a RUN build).
fn contexts() -> Vec<(tempfile::TempDir, &'static str, bool)> {
    let copy_only = tempfile::tempdir().unwrap();
    std::fs::write(
        copy_only.path().join("Dockerfile"),
        "FROM scratch\nCOPY data.bin /data.bin\nCOPY note.txt /etc/note.txt\nWORKDIR /app\n",
    )
    .unwrap();
    std::fs::write(copy_only.path().join("note.txt"), "fixed\n").unwrap();
    let copy_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        copy_dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY src/ /src/\nENV A=1\nCOPY src/data.bin /copy.bin\n",
    )
    .unwrap();
    common::write_files(copy_dir.path(), &[("src/a.txt", "a\n")]);
    let run = busybox_context(
        "COPY data.bin /in.bin\nRUN cat /in.bin /in.bin > /out.bin && echo ok > /ok\n",
        &[],
    );
    let run2 = busybox_context(
        "COPY data.bin /in.bin\nRUN sha256sum /in.bin > /sum\nRUN mkdir -p /x && cp /sum /x/sum\n",
        &[],
    );
    vec![
        (copy_only, "data.bin", false),
        (copy_dir, "src/data.bin", false),
        (run, "data.bin", true),
        (run2, "data.bin", true),
    ]
}

#[test]
fn kill_9_at_random_moments_never_corrupts_the_store() {
    let started = Instant::now();
    let mut rng = Rng::from_time();
    let mut d = Daemon::start_with(FLAGS);
    let contexts = contexts();
    let mut finished = 0;
    for i in 0..52 {
        let (ctx, file, run) = &contexts[i % contexts.len()];
        // A new version most of the time, an old one (cached) sometimes. The
        // RUN builds' files are larger: their COPY layer's blob is still being
        // compressed while the RUN runs on its snapshot, and kills land there.
        let len = match run {
            false => 8 * 1024 + rng.below(120 * 1024) as usize,
            true => (1 << 20) + rng.below(3 << 20) as usize,
        };
        let seed = if rng.below(4) == 0 { 7 } else { rng.next() };
        std::fs::write(ctx.path().join(file), Rng(seed | 1).bytes(len)).unwrap();
        let tag = format!("crash{}:latest", i % contexts.len());
        let child = d.spawn_build(ctx.path(), &["-t", &tag, EPOCH[0], EPOCH[1]]);
        let window = if *run { 1500 } else { 120 };
        std::thread::sleep(Duration::from_millis(rng.below(window)));
        d.kill9();
        if BuildOutcome::wait(child).success {
            finished += 1;
        }
        d.spawn_with(FLAGS);
    }
    eprintln!("{finished} of 52 builds finished before their kill");

    let report = d.assert_store_consistent();
    assert_eq!(
        report["temp_files"], 0,
        "temp leftovers after restart: {report:#}"
    );
    assert!(
        report["blobs"].as_u64().unwrap() > 0,
        "nothing was ever written: {report:#}"
    );

    // The restarted daemon and a fresh one build the same images.
    let fresh = Daemon::start();
    for (i, (ctx, _, _)) in contexts.iter().enumerate() {
        let tag = format!("crash{i}:latest");
        let after = d
            .build_ok(ctx.path(), &["-t", &tag, EPOCH[0], EPOCH[1]])
            .manifest_digest();
        let clean = fresh.build_ok(ctx.path(), &EPOCH).manifest_digest();
        assert_eq!(
            after,
            clean,
            "context {i}: the crashed daemon's cache gave another image:\n{}\nfresh:\n{}\ncrashed daemon's log:\n{}",
            describe(&d, &after),
            describe(&fresh, &clean),
            d.log()
        );
    }
    // RUN steps again on the snapshots the killed daemons wrote (COPY and RUN
    // results written straight into containerd, possibly killed halfway):
    // none that is incomplete may be trusted, so the steps see what a fresh
    // daemon's see.
    for (i, (ctx, _, run)) in contexts.iter().enumerate() {
        if !*run {
            continue;
        }
        let again = d
            .build_ok(ctx.path(), &["--no-cache", EPOCH[0], EPOCH[1]])
            .manifest_digest();
        let clean = fresh.build_ok(ctx.path(), &EPOCH).manifest_digest();
        assert_eq!(
            again, clean,
            "context {i}: RUN on the crashed daemon's snapshots"
        );
    }
    d.assert_store_consistent();
    fresh.assert_store_consistent();
    eprintln!("took {:?}", started.elapsed());
}

/// An image's config and layers, for a failure message.
fn describe(d: &Daemon, digest: &str) -> String {
    let out = d.ctl(&["image", "inspect", digest]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}
