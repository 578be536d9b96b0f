//! Export benchmark (issue 10 item 5): what `-o type=oci|oci-layout|docker`
//! of a 100 MB image adds to a build with nothing to build, with the blobs
//! handed over as file descriptors (the default) and read through the
//! `read_blob` RPC in 4 MiB chunks (`MEMOBUILD_BLOB_FDS=0`, what every export
//! did before, and what a client still does against an older daemon).
//!
//! Run: `cargo build --release --workspace --bins && cargo bench --bench export`.
//!
//! The context is the 10,000-file / 100 MB tree of benches/common (same seed
//! as the e2e bench), built as `FROM scratch` + `COPY . /app/`: one layer of
//! about 80 MB gzip. After one cold build every timed run is a no-op build,
//! so the difference to the no-op build alone is the export. Runs of all
//! scenarios are interleaved so machine noise hits them alike. Each output
//! goes to a path whose previous file was removed beforehand (untimed), except
//! the `replacing` scenario, which writes over the archive of the run before
//! (the old file's blocks are freed when the new one is renamed over it).
//!
//! Environment:
//!
//! * `MEMOBUILD_BENCH_FILES=N`    context of N files (N x 10 kB), default 10000
//! * `MEMOBUILD_BENCH_RUNS=N`     runs per scenario, default 10
//! * `MEMOBUILD_BENCH_BIN_DIR=D`  the binaries to drive (default: the release
//!   binaries next to this bench, as the other end-to-end benches)

mod common;

use common::daemon::Daemon;
use common::report::{fmt, Samples, Table};
use common::{timed, SEED};
use std::fs;
use std::path::Path;
use std::time::Duration;

const BENCH: &str = "export";
const DOCKERFILE: &str = "FROM scratch\nCOPY . /app/\n";

/// One timed `memobuild-ctl build` (whole process); panics on failure.
fn build(d: &Daemon, ctx: &Path, outputs: &[String], fds: bool) -> Duration {
    let mut cmd = d.ctl(&[
        "build",
        "--progress",
        "quiet",
        "-t",
        "memobuild-bench-export:1",
    ]);
    for o in outputs {
        cmd.args(["-o", o]);
    }
    cmd.arg(ctx);
    if !fds {
        cmd.env("MEMOBUILD_BLOB_FDS", "0");
    }
    let (took, out) = timed(&mut cmd);
    if !out.status.success() {
        panic!(
            "memobuild-ctl build {outputs:?} failed ({}): {}\n--- daemon log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            d.log_text()
        );
    }
    took
}

struct Scenario {
    name: &'static str,
    /// `-o` value; `{}` is replaced by this scenario's output path.
    output: Option<&'static str>,
    fds: bool,
    /// Remove the previous output before the run (untimed).
    fresh: bool,
    times: Samples,
}

/// (name, output, blobs by descriptor, fresh output path): the scenarios, in
/// the order of the report; `no-op` must stay first, the two `type=oci` with
/// and without descriptors second and last (their archives are compared).
const SCENARIOS: [(&str, Option<&str>, bool, bool); 6] = [
    ("no-op build alone", None, true, true),
    ("+ -o type=oci (fd)", Some("type=oci,dest={}"), true, true),
    (
        "+ -o type=oci (fd), replacing the last archive",
        Some("type=oci,dest={}"),
        true,
        false,
    ),
    (
        "+ -o type=oci-layout (fd)",
        Some("type=oci-layout,dest={}"),
        true,
        true,
    ),
    (
        "+ -o type=docker,dest= (fd)",
        Some("type=docker,dest={}"),
        true,
        true,
    ),
    (
        "+ -o type=oci (read_blob chunks)",
        Some("type=oci,dest={}"),
        false,
        true,
    ),
];

fn main() {
    let files = common::env_usize(BENCH, "MEMOBUILD_BENCH_FILES", 10_000).max(10);
    let runs = common::env_usize(BENCH, "MEMOBUILD_BENCH_RUNS", 10).max(1);
    let total = files as u64 * 10_000;
    let bins = common::find_bins(BENCH);
    let work_dir = common::work_dir("memobuild-export-");
    let work = work_dir.path();
    let ctx = work.join("ctx");
    let out = work.join("out");
    fs::create_dir_all(&ctx).unwrap();
    fs::create_dir_all(&out).unwrap();
    println!("memobuild export benchmark ({})", bins.ctl.display());
    println!("{}", common::machine::machine_line());
    common::generate_tree(&ctx, files, total, SEED).expect("generating the context");
    fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    let d = Daemon::start(&bins, &work.join("daemon"));
    let cold = build(&d, &ctx, &[], true);
    let probe = out.join("probe.tar");
    build(
        &d,
        &ctx,
        &[format!("type=oci,dest={}", probe.display())],
        true,
    );
    let image_bytes = fs::metadata(&probe).map(|m| m.len()).unwrap_or(0);
    println!(
        "context: {files} files, {:.1} MB; cold build {:.2} s; the type=oci archive is {:.1} MB",
        total as f64 / 1e6,
        cold.as_secs_f64(),
        image_bytes as f64 / 1e6
    );

    let mut scenarios: Vec<Scenario> = SCENARIOS
        .iter()
        .map(|&(name, output, fds, fresh)| Scenario {
            name,
            output,
            fds,
            fresh,
            times: Samples::default(),
        })
        .collect();
    for run in 0..runs {
        for (i, s) in scenarios.iter_mut().enumerate() {
            let path = out.join(format!("s{i}"));
            if s.fresh {
                let _ = fs::remove_file(&path);
                let _ = fs::remove_dir_all(&path);
            }
            let outputs: Vec<String> = s
                .output
                .map(|o| o.replace("{}", &path.display().to_string()))
                .into_iter()
                .collect();
            s.times.push(build(&d, &ctx, &outputs, s.fds));
        }
        eprint!("\rrun {}/{runs}", run + 1);
    }
    eprintln!();
    // What the two ways wrote is the same archive.
    let (fd, rpc) = (
        fs::read(out.join("s1")).unwrap(),
        fs::read(out.join("s5")).unwrap(),
    );
    assert!(fd == rpc, "the fd and the chunked type=oci archives differ");
    drop(d);

    let p50 = |s: &Scenario| s.times.p50().unwrap_or_default().as_secs_f64();
    let noop = p50(&scenarios[0]);
    println!();
    println!("Percentiles are nearest-rank (p99 of fewer than 100 runs is the maximum).");
    println!();
    let head = format!("scenario (whole ctl process, {runs} runs)");
    let mut t = Table::new(&[head.as_str(), "p50", "p99", "over the no-op build (p50)"]);
    for s in &scenarios {
        let over = if s.output.is_some() {
            format!("{:.3} s", p50(s) - noop)
        } else {
            "-".to_string()
        };
        t.row(vec![
            s.name.to_string(),
            fmt(s.times.p50()),
            fmt(s.times.p99()),
            over,
        ]);
    }
    t.print();
    let fd_over = p50(&scenarios[1]) - noop;
    let rpc_over = p50(&scenarios[5]) - noop;
    println!(
        "\ntype=oci export cost: {fd_over:.3} s by descriptor vs {rpc_over:.3} s by read_blob chunks: {:.1}x less",
        rpc_over / fd_over.max(1e-6)
    );
}
