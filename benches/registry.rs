//! Registry benchmark on loopback, against Debian's docker-registry
//! (Distribution 2.8) started as in tests/registry.rs:
//!
//! 1. push throughput of an image of MEMOBUILD_BENCH_REGISTRY_MB (default 200)
//!    MB of incompressible data (`-t REF --push`, the daemon's `pushed … in T`);
//! 2. pull throughput of the same image on a second daemon with an empty store
//!    (`FROM REF`, the daemon's `pulled … in T`);
//! 3. a second build host: the cold build time of a project with RUN steps on an
//!    empty daemon, against the same build on another empty daemon that reads
//!    the first host's registry cache (`--cache-from`).
//!
//! Run: `cargo build --release --workspace --bins && cargo bench --bench registry`.
//! Numbers go to docs/PERFORMANCE.md.

mod common;
#[path = "../tests/common/mod.rs"]
mod harness;

use harness::registry::{busybox_layout, Registry};
use harness::{write_files, BuildOutcome, Daemon};
use std::path::Path;
use std::time::Duration;

const BENCH: &str = "registry";

fn main() {
    common::find_bins(BENCH);
    let mb = common::env_usize(BENCH, "MEMOBUILD_BENCH_REGISTRY_MB", 200);
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = Registry::start();
    let flags = ["--insecure-registry", reg.host.as_str()];

    let (push, pull) = transfer(dir.path(), &reg, &flags, mb);
    println!(
        "registry/push {mb} MB: {:.2}s = {:.0} MB/s",
        push.as_secs_f64(),
        mb as f64 / push.as_secs_f64()
    );
    println!(
        "registry/pull {mb} MB: {:.2}s = {:.0} MB/s",
        pull.as_secs_f64(),
        mb as f64 / pull.as_secs_f64()
    );

    let (cold, shared) = second_host(dir.path(), &reg, &flags);
    println!(
        "registry/second-host cold build: {:.2}s; from the registry cache: {:.2}s ({:.1}x)",
        cold.as_secs_f64(),
        shared.as_secs_f64(),
        cold.as_secs_f64() / shared.as_secs_f64()
    );
}

/// Seconds the daemon reported for a `pushed`/`pulled` line.
fn reported(out: &BuildOutcome, prefix: &str) -> Duration {
    let line = out
        .logs()
        .into_iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} line:\n{}", out.text()));
    let secs = line
        .split(" in ")
        .nth(1)
        .and_then(|t| t.split('s').next())
        .and_then(|t| t.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"));
    Duration::from_secs_f64(secs)
}

/// Push, then pull on an empty daemon, an image of `mb` MB of random bytes.
fn transfer(dir: &Path, reg: &Registry, flags: &[&str], mb: usize) -> (Duration, Duration) {
    let ctx = dir.join("big");
    std::fs::create_dir_all(&ctx).expect("mkdir");
    let mut rng = common::Rng::new(7);
    let mut buf = vec![0u8; 1 << 20];
    for part in 0..4 {
        let mut file = std::fs::File::create(ctx.join(format!("part{part}"))).expect("create");
        for _ in 0..mb / 4 {
            rng.fill(&mut buf);
            std::io::Write::write_all(&mut file, &buf).expect("write");
        }
    }
    write_files(&ctx, &[("Dockerfile", "FROM scratch\nCOPY part* /data/\n")]);
    let image = reg.image("bench/big:1");
    let d1 = Daemon::start_with(flags);
    d1.build_ok(&ctx, &[]);
    let push = reported(&d1.build_ok(&ctx, &["-t", &image, "--push"]), "pushed");

    let child = dir.join("big-child");
    write_files(
        &child,
        &[("Dockerfile", &format!("FROM {image}\nLABEL pulled=yes\n"))],
    );
    let d2 = Daemon::start_with(flags);
    let pull = reported(&d2.build_ok(&child, &[]), "pulled");
    (push, pull)
}

/// Cold build on an empty daemon vs the same on an empty daemon with the cache.
fn second_host(dir: &Path, reg: &Registry, flags: &[&str]) -> (Duration, Duration) {
    let maker = Daemon::start();
    reg.push_layout(&busybox_layout(&maker, dir, "bench"), "bench/base:1", &[]);
    let ctx = dir.join("project");
    let run = |script: &str| format!("RUN [\"/bin/busybox\", \"sh\", \"-c\", \"{script}\"]\n");
    let dockerfile = format!(
        "FROM {}\n{}{}{}COPY app.txt /app/\n",
        reg.image("bench/base:1"),
        run("/bin/busybox dd if=/dev/urandom of=/blob bs=1M count=20 2>/dev/null"),
        run("/bin/busybox sleep 1; echo compiled > /compiled"),
        run("/bin/busybox sha256sum /blob > /blob.sum"),
    );
    write_files(&ctx, &[("Dockerfile", &dockerfile), ("app.txt", "app\n")]);
    let cache = format!("type=registry,ref={}", reg.image("bench/cache:main"));

    let first = Daemon::start_with(flags);
    first.build_ok(&ctx, &["--cache-to", &format!("{cache},mode=max")]);

    let timed_build = |extra: &[&str]| {
        let d = Daemon::start_with(flags);
        let mut args = vec!["build", "--progress", "plain"];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().expect("utf-8"));
        let started = std::time::Instant::now();
        let out = d.ctl(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        started.elapsed()
    };
    let cold = timed_build(&[]);
    let shared = timed_build(&["--cache-from", &cache]);
    (cold, shared)
}
