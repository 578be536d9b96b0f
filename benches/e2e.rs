//! End-to-end build benchmark: the real `memobuildd` + `memobuild-ctl`
//! binaries on a generated 10,000-file / 100 MB context, compared with
//! `b3sum` (hashing reference) and, when a Docker daemon is reachable, with
//! `DOCKER_BUILDKIT=1 docker build` on the same context. Runs of the two
//! builders are interleaved so machine noise hits both alike.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench --bench e2e`
//! (or `./x bench`). Environment:
//!
//! * `MEMOBUILD_BENCH_FILES=N`   context of N files (N x 10 kB), default 10000
//! * `MEMOBUILD_BENCH_RUNS=N`    cold and one-file-change runs per tool, default 5
//! * `MEMOBUILD_BENCH_NO_DOCKER=1` skip BuildKit even if it is reachable
//! * `DOCKER_HOST`               which Docker daemon (else /tmp/dockerd/docker.sock,
//!   else /var/run/docker.sock)
//!
//! Every figure is the wall time of the whole client process
//! (`memobuild-ctl build` or `docker build`), from spawn to exit. See
//! docs/PERFORMANCE.md for what each scenario means.

mod common;

use common::buildkit::{BkBuild, Docker, Records};
use common::daemon::Daemon;
use common::report::{fmt, print_side_by_side, SideRow};
use common::{timed, SEED};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const BENCH: &str = "e2e";
const CACHED_RUNS: usize = 30;
const DOCKER_CACHED_RUNS: usize = 10;

fn env_usize(name: &str, default: usize) -> usize {
    common::env_usize(BENCH, name, default)
}

/// BuildKit's build: wall time and image id.
fn docker_build(
    dk: &mut Docker,
    ctx: &Path,
    dockerfile: &str,
    tag: &str,
) -> (std::time::Duration, String) {
    let r = dk.build(&BkBuild {
        ctx,
        dockerfile,
        tag,
        build_args: &[],
        anchor: "",
        big_context: None,
    });
    (r.wall, r.image)
}

// ---------------------------------------------------------------------------
// The benchmark

struct Variant {
    name: &'static str,
    dockerfile: &'static str,
    text: &'static str,
    /// Build steps that must run again after the one-file change.
    steps_after_change: usize,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "single COPY",
        dockerfile: "Dockerfile",
        text: "FROM scratch\nCOPY . /app/\n",
        steps_after_change: 1,
    },
    Variant {
        name: "3 COPYs",
        dockerfile: "Dockerfile.multi",
        // File names are unique across directories, so merging is safe.
        text: "FROM scratch\nCOPY d0 d1 d2 d3 d4 d5 d6 d7 /app/deps/\nCOPY d8 /app/assets/\nCOPY d9 /app/src/\n",
        steps_after_change: 1,
    },
];

/// memobuild's builds pin SOURCE_DATE_EPOCH: without it a step run again
/// gets the time it ran (as in BuildKit), so two cold builds would give two
/// image digests and the bench could not check that they are the same image.
fn pinned_epoch() -> [String; 1] {
    ["SOURCE_DATE_EPOCH=1700000000".to_string()]
}

fn main() {
    let files = env_usize("MEMOBUILD_BENCH_FILES", 10_000).max(10);
    let runs = env_usize("MEMOBUILD_BENCH_RUNS", 5).max(1);
    let total = files as u64 * 10_000;
    let bins = common::find_bins(BENCH);

    let work_dir = common::work_dir("memobuild-e2e-");
    let work = work_dir.path().to_path_buf();
    let ctx = work.join("ctx");
    fs::create_dir(&ctx).unwrap();

    println!("memobuild e2e benchmark");
    println!("{}", common::machine::machine_line());
    let t = Instant::now();
    let plan = common::generate_tree(&ctx, files, total, SEED).expect("generating the context");
    for v in VARIANTS {
        fs::write(ctx.join(v.dockerfile), v.text).unwrap();
    }
    println!(
        "context: {} files, {:.1} MB, 100 directories in {} (generated in {:.1} s)",
        files,
        total as f64 / 1e6,
        ctx.display(),
        t.elapsed().as_secs_f64()
    );
    // The file the change scenario edits: a ~10 kB file in d9 (the last COPY).
    let changed = common::file_to_change(&plan);
    println!(
        "one-file change edits {} ({} bytes)",
        changed.rel, changed.size
    );

    // Hashing reference.
    let mut b3 = common::report::Samples::default();
    let find = format!(
        "find '{}' -type f -print0 | xargs -0 b3sum > /dev/null",
        ctx.display()
    );
    let have_b3sum = Command::new("b3sum")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if have_b3sum {
        for _ in 0..5 {
            let (d, out) = timed(Command::new("sh").args(["-c", &find]));
            assert!(
                out.status.success(),
                "b3sum failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            b3.push(d);
        }
    } else {
        println!("b3sum not installed: no hashing reference");
    }

    let mut docker = match Docker::detect(BENCH, &work, Records::Appeared) {
        Ok(d) => {
            println!("BuildKit: {}", d.describe());
            Some(d)
        }
        Err(why) => {
            println!("BuildKit: skipped ({why}); only memobuild rows are measured");
            None
        }
    };

    let mut rows: Vec<SideRow> = Vec::new();
    let mut daemon_n = 0;
    let mut daemon: Option<Daemon> = None;
    let mut generation = 0u64;

    for v in VARIANTS {
        let tag = format!(
            "memobuild-bench-{}",
            if v.dockerfile == "Dockerfile" {
                "single"
            } else {
                "multi"
            }
        );

        // (a) Cold: a fresh daemon (empty data dir, empty hash cache) for
        // memobuild; for BuildKit, our image and cache records are removed first.
        let mut cold = SideRow::new(format!("{}: cold build", v.name));
        let mut cold_digest = String::new();
        for i in 0..runs {
            let mut mb = || {
                drop(daemon.take());
                daemon_n += 1;
                let mut d = Daemon::start(&bins, &work.join(format!("daemon{daemon_n}")));
                let r = d.build(&ctx, v.dockerfile, &tag, &pinned_epoch());
                assert_eq!(r.cached.len(), 0, "cold build used the cache");
                daemon = Some(d);
                r
            };
            let bk = |docker: &mut Docker| {
                docker.clean();
                docker_build(docker, &ctx, v.dockerfile, &tag).0
            };
            // Alternate who goes first.
            let r = if i % 2 == 0 {
                let r = mb();
                if let Some(d) = docker.as_mut() {
                    cold.bk.push(bk(d));
                }
                r
            } else {
                if let Some(d) = docker.as_mut() {
                    cold.bk.push(bk(d));
                }
                mb()
            };
            if !cold_digest.is_empty() {
                assert_eq!(cold_digest, r.digest, "cold builds are not reproducible");
            }
            cold_digest = r.digest.clone();
            cold.mb.push(r.wall);
            cold.mb_daemon.push(r.daemon);
        }
        rows.push(cold);

        // (b) Fully cached rebuilds. One untimed warm-up each first.
        let d = daemon.as_mut().unwrap();
        let mut cached = SideRow::new(format!("{}: cached rebuild, nothing changed", v.name));
        d.build(&ctx, v.dockerfile, &tag, &pinned_epoch());
        let mut image_id = docker
            .as_mut()
            .map(|dk| docker_build(dk, &ctx, v.dockerfile, &tag).1);
        let every = CACHED_RUNS.div_ceil(DOCKER_CACHED_RUNS);
        for i in 0..CACHED_RUNS {
            let r = d.build(&ctx, v.dockerfile, &tag, &pinned_epoch());
            assert_eq!(
                r.executed.len(),
                0,
                "a cached rebuild re-ran {:?}",
                r.executed
            );
            assert_eq!(r.digest, cold_digest, "cached rebuild changed the image");
            cached.mb.push(r.wall);
            cached.mb_daemon.push(r.daemon);
            if i % every == every - 1 {
                if let Some(dk) = docker.as_mut() {
                    let (t, id) = docker_build(dk, &ctx, v.dockerfile, &tag);
                    assert_eq!(
                        Some(&id),
                        image_id.as_ref(),
                        "BuildKit's cached rebuild changed the image"
                    );
                    cached.bk.push(t);
                }
            }
        }
        rows.push(cached);

        // (c) One file changed (same size, new content), then rebuild.
        let mut change = SideRow::new(format!("{}: rebuild after 1 file changed", v.name));
        let mut digest = cold_digest.clone();
        for i in 0..runs {
            generation += 1;
            common::rewrite_file(&ctx, &changed, generation).unwrap();
            let mut mb = || {
                let r = d.build(&ctx, v.dockerfile, &tag, &pinned_epoch());
                assert_eq!(
                    r.executed.len(),
                    v.steps_after_change,
                    "steps re-run after a one-file change"
                );
                assert_ne!(r.digest, digest, "the change did not change the image");
                digest = r.digest.clone();
                change.mb_daemon.push(r.daemon);
                r.wall
            };
            let mut bk = |dk: &mut Docker| {
                let (t, id) = docker_build(dk, &ctx, v.dockerfile, &tag);
                assert_ne!(
                    Some(&id),
                    image_id.as_ref(),
                    "BuildKit did not see the change"
                );
                image_id = Some(id);
                t
            };
            if i % 2 == 0 {
                change.mb.push(mb());
                if let Some(dk) = docker.as_mut() {
                    change.bk.push(bk(dk));
                }
            } else {
                if let Some(dk) = docker.as_mut() {
                    change.bk.push(bk(dk));
                }
                change.mb.push(mb());
            }
        }
        rows.push(change);
        eprintln!("e2e bench: {} done", v.name);
    }

    // Clean up before printing, so a failure to print leaves nothing behind.
    drop(daemon.take());
    let have_docker = docker.is_some();
    drop(docker.take());
    drop(work_dir);

    let mut extra = Vec::new();
    if let Some(p50) = b3.p50() {
        extra.push(vec![
            "reference: b3sum over the same files (find, xargs)".to_string(),
            format!("{}/-", b3.len()),
            fmt(Some(p50)),
            fmt(b3.p99()),
            format!("({:.0} MB/s)", total as f64 / 1e6 / p50.as_secs_f64()),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    print_side_by_side(&rows, extra, have_docker);
    if !have_docker {
        println!("\nBuildKit rows skipped: no Docker daemon reachable.");
    }
}
