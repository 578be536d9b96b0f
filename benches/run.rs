//! RUN-step benchmark (issue 3, "Measure"): the real `memobuildd` +
//! `memobuild-ctl` release binaries against `DOCKER_BUILDKIT=1 docker build`,
//! side by side in one run, plus memobuild's per-phase times measured
//! in-process through the `memobuildd` library.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench --bench run`.
//!
//! Every Dockerfile starts with a busybox base made without a registry (the
//! context holds a copy of `/bin/busybox`, Debian `busybox-static`):
//!
//! ```text
//! FROM scratch AS base
//! COPY busybox /bin/busybox
//! RUN ["/bin/busybox", "--install", "-s", "/bin"]
//! ```
//!
//! Scenarios (wall time of the whole client process, runs of the two tools
//! interleaved so machine noise hits both alike):
//!
//! 1. trivial RUN: `ARG NONCE` + `RUN echo $NONCE > /n`, NONCE changed every
//!    run, so exactly that step re-executes and the base is cached. Also the
//!    first build of that Dockerfile on a fresh daemon (containerd start, layer
//!    unpack) and, for BuildKit, with this bench's cache records pruned.
//! 2. 10,000-file / 100 MB context (benches/common generator): `COPY . /app/` +
//!    `RUN find /app -type f | wc -l > /count`. Cold build (fresh memobuild data
//!    dir; BuildKit with this bench's records pruned and a fresh client identity,
//!    so the whole context is transferred again), then rebuilds after one file
//!    changed (COPY and RUN re-execute).
//! 4. stage edit (issue 15): a builder stage `COPY src/` + RUN writes one file,
//!    the final stage `COPY --from=builder` that file + a 2 s RUN; then an edit
//!    of a source file the builder reads but does not pass on. Both tools key
//!    `COPY --from` on the copied content, so only the builder's steps re-run.
//! 3. phases (memobuild only, in-process): `Sandbox::run`'s own timings (setup,
//!    run, diff, teardown), the layer write and the snapshot release, the private
//!    containerd's start, and the unpack of a new 100 MB layer.
//!
//! Environment:
//!
//! * `MEMOBUILD_BENCH_FILES=N`      context of N files (N x 10 kB), default 10000
//! * `MEMOBUILD_BENCH_RUN_STEPS=N`  trivial RUN rebuilds per tool, default 20
//! * `MEMOBUILD_BENCH_RUNS=N`       cold and one-file-change runs per tool, default 5
//! * `MEMOBUILD_BENCH_ONLY=a,b`     run only some of: trivial, context, stage, phases
//! * `MEMOBUILD_BENCH_WORKDIR=1`    the context scenario as `WORKDIR /app` + `COPY . .`
//! * `MEMOBUILD_BENCH_NO_DOCKER=1`  skip BuildKit even if it is reachable
//! * `MEMOBUILD_BENCH_SETTLE_SECS=N` before each cold build of either tool,
//!   `sync` and wait N s (61 lets ext4 reuse the inodes the last clean-up
//!   freed; see [`settle`]), default 0
//! * `DOCKER_HOST`                  which Docker daemon (a unix socket; else
//!   /tmp/dockerd/docker.sock, else /var/run/docker.sock)
//!
//! Docker hygiene. The Docker daemon is shared, and other clients build on it
//! while this bench runs, so diffing the list of build-cache records around a
//! build would also catch theirs. This bench therefore only prunes records it
//! can tie to its own builds (see [`Docker::claim`]): the chain of step records
//! that ends in a RUN only this bench runs, cut at the first step the build
//! reported `CACHED`, and the local-source records (context, .dockerignore,
//! Dockerfile) created during one of its builds whose size matches what it
//! sent. The Dockerfiles and `.dockerignore` end in a comment padded to a size
//! unique to this process for that purpose. Each BuildKit cold run uses a fresh
//! `DOCKER_CONFIG` (a new build node id), so BuildKit cannot reuse an earlier
//! upload of the context. It removes the images its builds produced, by id.
//! Records it cannot attribute are left alone and counted.

mod common;

use common::buildkit::{BkBuild, BkRun, Docker, Records};
use common::daemon::{stop_processes_under, unmount_below, Daemon, MbRun};
use common::report::{fmt, print_notes, print_side_by_side, tenths, Samples, SideRow, Table};
use common::{timed, wanted, Bins, GenFile, SEED};
use memobuild_engine::{FsView, LayerCache};
use memobuild_oci::{ChangeSet, Content, EntryKind, LayerEntry};
use memobuild_sandbox::{LayerInput, Network, OutputChunk, RunSpec, Sandbox, DEFAULT_PATH};
use memobuild_store::{LayerRecord, Store};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BENCH: &str = "run";
const BUSYBOX: &str = "/bin/busybox";
const BASE: &str = "FROM scratch AS base
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
";
const TRIVIAL_TAIL: &str = "ARG NONCE\nRUN echo $NONCE > /n\n";
const TRIVIAL_RUN: &str = "RUN echo $NONCE > /n";
const CONTEXT_RUN: &str = "RUN find /app -type f | wc -l > /count";

/// `MEMOBUILD_BENCH_WORKDIR=1`: the context scenario as `WORKDIR /app` +
/// `COPY . .` (the destination exists, so the layer's first entries stay the
/// same across edits) instead of `COPY . /app/` (which creates /app, with
/// the step's time).
fn workdir_variant() -> bool {
    std::env::var("MEMOBUILD_BENCH_WORKDIR").is_ok_and(|v| v == "1")
}

/// The context scenario's COPY step as the builders display it.
fn context_copy() -> &'static str {
    match workdir_variant() {
        true => "COPY . .",
        false => "COPY . /app/",
    }
}

/// The context scenario's Dockerfile after the busybox base.
fn context_tail() -> &'static str {
    match workdir_variant() {
        true => "WORKDIR /app\nCOPY . .\nRUN find /app -type f | wc -l > /count\n",
        false => "COPY . /app/\nRUN find /app -type f | wc -l > /count\n",
    }
}
/// BuildKit's description of the exec records of our two final RUNs (unique to this bench).
const TRIVIAL_EXEC: &str = "mount / from exec /bin/sh -c echo $NONCE > /n";
const CONTEXT_EXEC: &str = "mount / from exec /bin/sh -c find /app -type f | wc -l > /count";
const TAG_TRIVIAL: &str = "memobuild-bench-run-trivial";
const TAG_CONTEXT: &str = "memobuild-bench-run-context";
/// Scenario 4 (issue 15): a builder stage reads `src/`, the final stage copies
/// one file the builder wrote and runs an expensive step on it. An edit to a
/// source file the builder does not pass on must keep the final stage cached.
const STAGE_TAIL: &str = "FROM base AS builder\nCOPY src/ /src/\n\
RUN mkdir -p /out && cp /src/used.txt /out/used && cat /src/other.txt > /dev/null\n\
FROM base\nCOPY --from=builder /out/used /app/used\n\
RUN sleep 2 && sha256sum /app/used > /app/sum\n";
const STAGE_FINAL_RUN: &str = "RUN sleep 2 && sha256sum /app/used > /app/sum";
const STAGE_EXEC: &str = "mount / from exec /bin/sh -c sleep 2 && sha256sum /app/used > /app/sum";
const TAG_STAGE: &str = "memobuild-bench-run-stage";
/// Daemon log filter: memobuildd's sandbox logs each layer unpack at debug.
const DAEMON_LOG: &str = "info,memobuild_sandbox=debug";

fn env_usize(name: &str, default: usize) -> usize {
    common::env_usize(BENCH, name, default)
}

/// One memobuild build of `ctx`'s Dockerfile.
fn memobuild_build(d: &mut Daemon, ctx: &Path, tag: &str, build_args: &[String]) -> MbRun {
    d.build(ctx, "Dockerfile", tag, build_args)
}

/// One BuildKit build of `ctx`'s Dockerfile; `anchor`: the description of
/// its last RUN's exec record (see [`Docker::claim`]).
fn docker_build(
    dk: &mut Docker,
    ctx: &Path,
    tag: &str,
    build_args: &[String],
    anchor: &'static str,
    big_context: Option<i64>,
) -> BkRun {
    dk.build(&BkBuild {
        ctx,
        dockerfile: "Dockerfile",
        tag,
        build_args,
        anchor,
        big_context,
    })
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Contexts

/// Writes `text` padded with a trailing comment to exactly `len` bytes.
fn padded(text: &str, len: usize) -> String {
    let head = format!("{text}# memobuild RUN bench (pid {}): ", std::process::id());
    assert!(head.len() + 1 < len, "padding target too small");
    format!("{head}{}\n", "x".repeat(len - head.len() - 1))
}

/// busybox, a Dockerfile (`BASE` + `tail`) and a comment-only .dockerignore,
/// both padded to sizes unique to this process (see [`Docker::claim`]).
fn write_context(ctx: &Path, tail: &str, dockerfile_len: usize) {
    fs::create_dir_all(ctx).unwrap();
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: apt-get install busybox-static"
    );
    fs::copy(BUSYBOX, ctx.join("busybox")).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        padded(&format!("{BASE}{tail}"), dockerfile_len),
    )
    .unwrap();
    let pid = std::process::id() as usize;
    fs::write(
        ctx.join(".dockerignore"),
        padded("", 2003 + 2 * (pid % 487)),
    )
    .unwrap();
}

fn dockerfile_len(which: usize) -> usize {
    3001 + 4 * (std::process::id() as usize % 499) + which
}

// ---------------------------------------------------------------------------
// Report

/// A step measured in both builders.
#[derive(Default)]
struct StepRow {
    label: String,
    mb: Samples,
    bk: Samples,
}

impl StepRow {
    fn new(label: impl Into<String>) -> StepRow {
        StepRow {
            label: label.into(),
            ..StepRow::default()
        }
    }
}

#[derive(Default)]
struct Report {
    side: Vec<SideRow>,
    steps: Vec<StepRow>,
    phases: Vec<(String, Samples)>,
    notes: Vec<String>,
}

impl Report {
    fn phase(&mut self, label: &str) -> &mut Samples {
        if let Some(i) = self.phases.iter().position(|(l, _)| l == label) {
            return &mut self.phases[i].1;
        }
        self.phases.push((label.to_string(), Samples::default()));
        &mut self.phases.last_mut().unwrap().1
    }

    fn print(&self, docker: bool) {
        print_side_by_side(&self.side, Vec::new(), docker);
        if !self.steps.is_empty() {
            println!();
            println!("Step times as each builder reports them (memobuild: `step_done` millis;");
            println!("BuildKit: the step's `DONE` seconds in --progress=plain, 0.1 s resolution).");
            println!();
            let mut t = Table::new(&[
                "step",
                "runs (mb/bk)",
                "memobuild p50",
                "memobuild p99",
                "BuildKit p50",
                "BuildKit p99",
            ]);
            for s in &self.steps {
                t.row(vec![
                    s.label.clone(),
                    format!("{}/{}", s.mb.len(), s.bk.len()),
                    fmt(s.mb.p50()),
                    fmt(s.mb.p99()),
                    tenths(s.bk.p50()),
                    tenths(s.bk.p99()),
                ]);
            }
            t.print();
        }
        if !self.phases.is_empty() {
            println!();
            println!(
                "memobuild phases, in-process (`Sandbox::run` timings, layer writer, containerd):"
            );
            println!();
            let mut t = Table::new(&["phase", "n", "p50", "p99"]);
            for (label, s) in &self.phases {
                t.row(vec![
                    label.clone(),
                    s.len().to_string(),
                    fmt(s.p50()),
                    fmt(s.p99()),
                ]);
            }
            t.print();
        }
        print_notes(&self.notes);
        if !docker {
            println!("\nBuildKit columns skipped: no usable Docker daemon.");
        }
    }
}

// ---------------------------------------------------------------------------
// Scenario 1: one trivial RUN

fn trivial(bins: &Bins, work: &Path, docker: &mut Option<Docker>, steps: usize, rep: &mut Report) {
    let ctx = work.join("trivial");
    write_context(&ctx, TRIVIAL_TAIL, dockerfile_len(0));
    let mut daemon = Daemon::start_logging(bins, &work.join("d-trivial"), DAEMON_LOG);
    // Unique to this process, so no cache anywhere (BuildKit's is shared) has it.
    let salt = format!("{}-{}", std::process::id(), now_ns());
    let arg = |n: usize| vec![format!("NONCE={salt}-{n}")];

    // First build: fresh data dir (private containerd starts at the first RUN,
    // both layers are unpacked); BuildKit: our records pruned, new identity.
    let mut first = SideRow::new(
        "trivial RUN: first build (memobuild: fresh data dir; BuildKit: our cache pruned)",
    );
    let r = memobuild_build(&mut daemon, &ctx, TAG_TRIVIAL, &arg(0));
    assert!(r.cached.is_empty(), "first build used the cache");
    first.mb.push(r.wall);
    first.mb_daemon.push(r.daemon);
    rep.notes.push(format!(
        "memobuild first trivial build: {} wall; steps {}; layer unpacks {}",
        fmt(Some(r.wall)),
        r.executed
            .iter()
            .map(|(i, d)| format!("`{}` {}", short(i), fmt(Some(*d))))
            .collect::<Vec<_>>()
            .join(", "),
        r.unpacks
            .iter()
            .map(|d| fmt(Some(*d)))
            .collect::<Vec<_>>()
            .join(" + ")
    ));
    if let Some(dk) = docker.as_mut() {
        dk.clean();
        dk.new_identity();
        let b = docker_build(dk, &ctx, TAG_TRIVIAL, &arg(0), TRIVIAL_EXEC, None);
        first.bk.push(b.wall);
        rep.notes.push(format!(
            "BuildKit first trivial build: {} wall, {} of {} steps CACHED (records other clients of this daemon made from the same busybox)",
            fmt(Some(b.wall)),
            b.cached_count(),
            b.steps.len()
        ));
    }
    rep.side.push(first);

    let mut row =
        SideRow::new("trivial RUN: `RUN echo $NONCE > /n` re-run (NONCE changed), rest cached");
    let mut step = StepRow::new(format!("`{TRIVIAL_RUN}`"));
    let mut overhead = Samples::default();
    let mut mb_digest = String::new();
    let mut bk_image = String::new();
    for i in 1..=steps {
        let mut mb = |row: &mut SideRow, step: &mut StepRow| {
            let r = memobuild_build(&mut daemon, &ctx, TAG_TRIVIAL, &arg(i));
            assert_eq!(
                r.executed_real(),
                vec![TRIVIAL_RUN],
                "memobuild re-ran other steps"
            );
            assert_ne!(r.digest, mb_digest, "NONCE did not change the image");
            assert!(r.unpacks.is_empty(), "the cached chain was unpacked again");
            mb_digest = r.digest.clone();
            row.mb.push(r.wall);
            row.mb_daemon.push(r.daemon);
            let s = r.step(TRIVIAL_RUN).unwrap();
            step.mb.push(s);
            overhead.push(r.daemon.saturating_sub(s));
        };
        let mut bk = |row: &mut SideRow, step: &mut StepRow, dk: &mut Docker| {
            let b = docker_build(dk, &ctx, TAG_TRIVIAL, &arg(i), TRIVIAL_EXEC, None);
            assert_eq!(
                b.executed(),
                vec![format!("RUN echo {salt}-{i} > /n").as_str()],
                "BuildKit re-ran other steps"
            );
            assert_ne!(b.image, bk_image, "NONCE did not change BuildKit's image");
            bk_image = b.image.clone();
            row.bk.push(b.wall);
            if let Some(s) = b.step_time("RUN echo") {
                step.bk.push(s);
            }
        };
        if i % 2 == 1 {
            mb(&mut row, &mut step);
            if let Some(dk) = docker.as_mut() {
                bk(&mut row, &mut step, dk);
            }
        } else {
            if let Some(dk) = docker.as_mut() {
                bk(&mut row, &mut step, dk);
            }
            mb(&mut row, &mut step);
        }
    }
    rep.side.push(row);
    rep.steps.push(step);
    rep.notes.push(format!(
        "memobuild trivial rebuild, daemon-side time outside the RUN step (context walk, keys, image write): p50 {}",
        fmt(overhead.p50())
    ));
    drop(daemon);
    eprintln!("run bench: trivial RUN done");
}

fn stage_edit(
    bins: &Bins,
    work: &Path,
    docker: &mut Option<Docker>,
    runs: usize,
    rep: &mut Report,
) {
    let ctx = work.join("stage");
    write_context(&ctx, STAGE_TAIL, dockerfile_len(2));
    fs::create_dir_all(ctx.join("src")).unwrap();
    fs::write(
        ctx.join("src/used.txt"),
        "the file the final stage copies\n",
    )
    .unwrap();
    let mut daemon = Daemon::start_logging(bins, &work.join("d-stage"), DAEMON_LOG);
    let edit = |n: usize| {
        fs::write(
            ctx.join("src/other.txt"),
            format!("edit {n} of a file not passed on\n"),
        )
        .unwrap();
    };
    edit(0);
    let first = memobuild_build(&mut daemon, &ctx, TAG_STAGE, &[]);
    if let Some(dk) = docker.as_mut() {
        docker_build(dk, &ctx, TAG_STAGE, &[], STAGE_EXEC, None);
    }
    let mut row = SideRow::new("stage edit: a builder-stage source changed, the file it passes on did not (builder re-runs, final stage cached)");
    for i in 1..=runs {
        edit(i);
        let mut mb = |row: &mut SideRow| {
            let r = memobuild_build(&mut daemon, &ctx, TAG_STAGE, &[]);
            assert!(
                r.step(STAGE_FINAL_RUN).is_none(),
                "memobuild re-ran the final stage: {:?}",
                r.executed
            );
            assert_eq!(r.digest, first.digest, "the image changed");
            row.mb.push(r.wall);
            row.mb_daemon.push(r.daemon);
        };
        let bk = |row: &mut SideRow, dk: &mut Docker| {
            let b = docker_build(dk, &ctx, TAG_STAGE, &[], STAGE_EXEC, None);
            assert!(
                !b.executed().iter().any(|s| s.contains("sha256sum")),
                "BuildKit re-ran the final stage: {:?}",
                b.executed()
            );
            row.bk.push(b.wall);
        };
        // Interleaved, alternating who goes first.
        if i % 2 == 1 {
            mb(&mut row);
            if let Some(dk) = docker.as_mut() {
                bk(&mut row, dk);
            }
        } else {
            if let Some(dk) = docker.as_mut() {
                bk(&mut row, dk);
            }
            mb(&mut row);
        }
    }
    rep.side.push(row);
    drop(daemon);
    eprintln!("run bench: stage edit done");
}

fn short(instruction: &str) -> String {
    if instruction.len() > 32 {
        format!("{}...", &instruction[..29])
    } else {
        instruction.to_string()
    }
}

// ---------------------------------------------------------------------------
// Scenario 2: 10,000-file context, COPY + RUN

#[allow(clippy::too_many_arguments)]
fn context(
    bins: &Bins,
    work: &Path,
    ctx: &Path,
    changed: &GenFile,
    generation: &mut u64,
    docker: &mut Option<Docker>,
    runs: usize,
    rep: &mut Report,
) {
    let total_bytes = dir_bytes(ctx) as i64;
    let expected_count = count_files(ctx);
    let mut cold = SideRow::new(format!(
        "{expected_count}-file context: cold build ({} + RUN find)",
        context_copy()
    ));
    let mut change = SideRow::new(format!(
        "{expected_count}-file context: rebuild after 1 file changed (COPY + RUN re-run)"
    ));
    let mut s_copy_cold = StepRow::new(format!("`{}`, cold", context_copy()));
    let mut s_run_cold = StepRow::new(format!("`{CONTEXT_RUN}`, cold"));
    let mut s_copy = StepRow::new(format!("`{}`, 1 file changed", context_copy()));
    let mut s_run = StepRow::new(format!("`{CONTEXT_RUN}`, 1 file changed"));
    let mut unpack_cold = Samples::default();
    let mut unpack_change = Samples::default();
    let mut bk_cached = Vec::new();
    let mut bk_sent = Vec::new();
    let mut daemon: Option<Daemon> = None;
    let mut digest = String::new();

    for i in 0..runs {
        let mut mb = |cold: &mut SideRow, a: &mut StepRow, b: &mut StepRow| {
            drop(daemon.take());
            let mut d = Daemon::start_logging(bins, &work.join(format!("d-ctx{i}")), DAEMON_LOG);
            d.keep_dir_on_drop();
            settle();
            let r = memobuild_build(&mut d, ctx, TAG_CONTEXT, &[]);
            assert!(r.cached.is_empty(), "cold build used the cache");
            let steps = if workdir_variant() { 5 } else { 4 };
            assert_eq!(r.executed_real().len(), steps, "cold build steps");
            cold.mb.push(r.wall);
            cold.mb_daemon.push(r.daemon);
            a.mb.push(r.step(context_copy()).unwrap());
            b.mb.push(r.step(CONTEXT_RUN).unwrap());
            unpack_cold.push(r.unpacks.iter().sum());
            digest = r.digest.clone();
            daemon = Some(d);
        };
        let mut bk = |cold: &mut SideRow, a: &mut StepRow, b: &mut StepRow, dk: &mut Docker| {
            dk.clean();
            dk.new_identity();
            settle();
            let r = docker_build(dk, ctx, TAG_CONTEXT, &[], CONTEXT_EXEC, Some(total_bytes));
            cold.bk.push(r.wall);
            if let Some(s) = r.step_time(context_copy()) {
                a.bk.push(s);
            }
            if let Some(s) = r.step_time(CONTEXT_RUN) {
                b.bk.push(s);
            }
            assert!(
                r.executed().contains(&context_copy()) && r.executed().contains(&CONTEXT_RUN),
                "BuildKit's cold build did not run COPY and RUN"
            );
            bk_cached.push(r.cached_count());
            bk_sent.push(r.transferred);
        };
        if i % 2 == 0 {
            mb(&mut cold, &mut s_copy_cold, &mut s_run_cold);
            if let Some(dk) = docker.as_mut() {
                bk(&mut cold, &mut s_copy_cold, &mut s_run_cold, dk);
            }
        } else {
            if let Some(dk) = docker.as_mut() {
                bk(&mut cold, &mut s_copy_cold, &mut s_run_cold, dk);
            }
            mb(&mut cold, &mut s_copy_cold, &mut s_run_cold);
        }
    }
    eprintln!("run bench: context cold builds done");

    let d = daemon.as_mut().unwrap();
    let mut bk_image = String::new();
    for i in 0..runs {
        *generation += 1;
        common::rewrite_file(ctx, changed, *generation).unwrap();
        let mut mb = |change: &mut SideRow, a: &mut StepRow, b: &mut StepRow| {
            let r = memobuild_build(d, ctx, TAG_CONTEXT, &[]);
            assert_eq!(
                r.executed_real(),
                vec![context_copy(), CONTEXT_RUN],
                "steps re-run after a one-file change"
            );
            assert_ne!(r.digest, digest, "the change did not change the image");
            digest = r.digest.clone();
            change.mb.push(r.wall);
            change.mb_daemon.push(r.daemon);
            a.mb.push(r.step(context_copy()).unwrap());
            b.mb.push(r.step(CONTEXT_RUN).unwrap());
            unpack_change.push(r.unpacks.iter().sum());
        };
        let mut bk = |change: &mut SideRow, a: &mut StepRow, b: &mut StepRow, dk: &mut Docker| {
            let r = docker_build(dk, ctx, TAG_CONTEXT, &[], CONTEXT_EXEC, Some(total_bytes));
            assert_eq!(
                r.executed(),
                vec![context_copy(), CONTEXT_RUN],
                "BuildKit steps re-run after a one-file change"
            );
            assert_ne!(r.image, bk_image, "BuildKit did not see the change");
            bk_image = r.image.clone();
            change.bk.push(r.wall);
            if let Some(s) = r.step_time(context_copy()) {
                a.bk.push(s);
            }
            if let Some(s) = r.step_time(CONTEXT_RUN) {
                b.bk.push(s);
            }
        };
        if i % 2 == 0 {
            mb(&mut change, &mut s_copy, &mut s_run);
            if let Some(dk) = docker.as_mut() {
                bk(&mut change, &mut s_copy, &mut s_run, dk);
            }
        } else {
            if let Some(dk) = docker.as_mut() {
                bk(&mut change, &mut s_copy, &mut s_run, dk);
            }
            mb(&mut change, &mut s_copy, &mut s_run);
        }
    }
    drop(daemon.take());
    rep.side.push(cold);
    rep.side.push(change);
    rep.steps.extend([s_copy_cold, s_run_cold, s_copy, s_run]);
    rep.notes.push(format!(
        "memobuild layer unpacks into containerd (upload + apply, from the daemon's debug log), per build: cold p50 {} (all 4 layers), one file changed p50 {} (the new /app layer)",
        fmt(unpack_cold.p50()),
        fmt(unpack_change.p50())
    ));
    if docker.is_some() {
        rep.notes.push(format!(
            "BuildKit cold builds: CACHED steps per run {bk_cached:?} (base steps another client of this daemon had cached); context sent per run {:?} MB (of {:.1} MB)",
            bk_sent.iter().map(|b| (*b as f64 / 1e6 * 10.0).round() / 10.0).collect::<Vec<_>>(),
            total_bytes as f64 / 1e6
        ));
    }
    eprintln!("run bench: context one-file changes done");
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            total += dir_bytes(&e.path());
        } else {
            total += m.len();
        }
    }
    total
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            n += count_files(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

// ---------------------------------------------------------------------------
// Scenario 3: memobuild's phases, in-process

fn entry(kind: EntryKind, mode: u32) -> LayerEntry {
    LayerEntry {
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 0,
    }
}

/// `COPY . /app/` as a change set: every entry of `ctx` below `app/`.
fn copy_changes(ctx: &Path) -> ChangeSet {
    use std::os::unix::fs::PermissionsExt;
    let mut c = ChangeSet::default();
    c.insert("app".into(), entry(EntryKind::Dir, 0o755));
    let mut stack = vec![(ctx.to_path_buf(), "app".to_string())];
    while let Some((dir, rel)) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let m = e.metadata().unwrap();
            let name = format!("{rel}/{}", e.file_name().to_string_lossy());
            let mode = m.permissions().mode() & 0o7777;
            if m.is_dir() {
                c.insert(name.clone(), entry(EntryKind::Dir, mode));
                stack.push((e.path(), name));
            } else {
                c.insert(name, entry(EntryKind::File(Content::Path(e.path())), mode));
            }
        }
    }
    c
}

fn spec(args: &[&str], env: &[String]) -> RunSpec {
    let mut e = vec![DEFAULT_PATH.to_string()];
    e.extend(env.iter().cloned());
    RunSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: e,
        hostname: "buildkitsandbox".into(),
        // The daemon's default for RUN without --network (as Docker's).
        network: Network::Host,
        ..RunSpec::default()
    }
}

/// One RUN as exec/run.rs does it: sandbox run, layer write, snapshot release.
/// Records each phase under `label`; returns the new layer and the content of
/// `read` in the step's changes, if asked.
async fn phase_run(
    sandbox: &Sandbox,
    store: &Arc<Store>,
    layers: &[LayerRecord],
    spec: &RunSpec,
    label: &str,
    read: Option<&str>,
    rep: &mut Report,
) -> (Option<LayerRecord>, Option<String>) {
    let inputs: Vec<LayerInput> = layers
        .iter()
        .map(|l| layer_input(&store.blobs, l))
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<OutputChunk>(256);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let started = Instant::now();
    let outcome = sandbox
        .run(&inputs, spec, tx)
        .await
        .unwrap_or_else(|e| panic!("{label}: sandbox: {e}"));
    let ran = started.elapsed();
    let _ = drain.await;
    assert!(outcome.exit.success(), "{label}: {}", outcome.exit);
    let t = outcome.timings;
    let text = read.and_then(|p| match outcome.changes.entries.get(p).map(|e| &e.kind) {
        Some(EntryKind::File(Content::Path(path))) => fs::read_to_string(path).ok(),
        Some(EntryKind::File(Content::Bytes(b))) => Some(String::from_utf8_lossy(b).into()),
        _ => None,
    });
    let w = Instant::now();
    let changes = outcome.changes;
    let st = store.clone();
    let layer = tokio::task::spawn_blocking(move || {
        (!changes.is_empty()).then(|| changes.write(&st.blobs).unwrap())
    })
    .await
    .unwrap();
    let write = w.elapsed();
    let r = Instant::now();
    outcome.snapshot.release().await;
    let release = r.elapsed();
    rep.phase(&format!(
        "{label}: setup (lease, rootfs chain, snapshot, container, task start)"
    ))
    .push(t.setup);
    rep.phase(&format!("{label}: run (task start to exit)"))
        .push(t.run);
    rep.phase(&format!("{label}: diff (read the upperdir)"))
        .push(t.diff);
    rep.phase(&format!("{label}: teardown (delete task + container)"))
        .push(t.teardown);
    rep.phase(&format!("{label}: layer write (tar + gzip + sha256)"))
        .push(write);
    rep.phase(&format!("{label}: release (remove snapshot + lease)"))
        .push(release);
    rep.phase(&format!("{label}: total"))
        .push(ran + write + release);
    (layer, text)
}

async fn phases_async(
    work: &Path,
    ctx: Option<(&Path, &GenFile)>,
    generation: &mut u64,
    steps: usize,
    runs: usize,
    rep: &mut Report,
) {
    let dir = work.join("ph");
    let store = Arc::new(Store::open(&dir.join("store")).unwrap());

    // COPY busybox /bin/busybox
    let mut c = ChangeSet::default();
    c.insert("bin".into(), entry(EntryKind::Dir, 0o755));
    c.insert(
        "bin/busybox".into(),
        entry(EntryKind::File(Content::Path(BUSYBOX.into())), 0o755),
    );
    let l1 = c.write(&store.blobs).unwrap();

    let t = Instant::now();
    let (sandbox, containerd) = Sandbox::start_private(&dir.join("ctd"))
        .await
        .unwrap_or_else(|e| panic!("private containerd: {e}"));
    rep.phase("private containerd: start (spawn until it answers on its socket)")
        .push(t.elapsed());
    let t = Instant::now();
    sandbox.cleanup_orphans().await.unwrap();
    rep.phase("private containerd: cleanup_orphans at first use")
        .push(t.elapsed());

    // RUN ["/bin/busybox", "--install", "-s", "/bin"]: the first RUN on a fresh
    // containerd (unpacks the busybox layer).
    let (l2, _) = phase_run(
        &sandbox,
        &store,
        std::slice::from_ref(&l1),
        &spec(&["/bin/busybox", "--install", "-s", "/bin"], &[]),
        "first RUN (busybox --install) on a fresh containerd, unpacks 1 layer",
        None,
        rep,
    )
    .await;
    let base = vec![l1, l2.expect("busybox --install changed nothing")];

    // The trivial RUN: first on the new chain (unpacks the symlink layer), then cached.
    let echo = |n: usize| {
        spec(
            &["/bin/sh", "-c", "echo $NONCE > /n"],
            &[format!("NONCE={n}")],
        )
    };
    phase_run(
        &sandbox,
        &store,
        &base,
        &echo(0),
        "trivial RUN, first on its chain (unpacks the busybox --install layer)",
        None,
        rep,
    )
    .await;
    for i in 1..=steps {
        let (_, n) = phase_run(
            &sandbox,
            &store,
            &base,
            &echo(i),
            "trivial RUN `echo $NONCE > /n`, chain unpacked",
            Some("n"),
            rep,
        )
        .await;
        assert_eq!(n.as_deref(), Some(format!("{i}\n").as_str()));
    }

    bare_runc(&dir, steps, rep);

    // What exec/run.rs does before each RUN: the parent's FsView (for USER).
    let cache = LayerCache::default();
    let t = Instant::now();
    FsView::load(&store, &cache, &base).unwrap();
    rep.phase("FsView::load of the 2 base layers, not cached")
        .push(t.elapsed());

    if let Some((ctx, changed)) = ctx {
        let expected = count_files(ctx);
        let mb = format!("{:.0} MB", dir_bytes(ctx) as f64 / 1e6);
        for _ in 0..runs.min(3) {
            *generation += 1;
            common::rewrite_file(ctx, changed, *generation).unwrap();
            let changes = copy_changes(ctx);
            let st = store.clone();
            let t = Instant::now();
            let l3 = tokio::task::spawn_blocking(move || changes.write(&st.blobs).unwrap())
                .await
                .unwrap();
            rep.phase(&format!(
                "context: COPY . /app/ layer write, {mb} (tar + gzip + sha256)"
            ))
            .push(t.elapsed());
            let mut layers = base.clone();
            layers.push(l3);
            let cache = LayerCache::default();
            let t = Instant::now();
            FsView::load(&store, &cache, &layers).unwrap();
            rep.phase(&format!("context: FsView::load incl. the new {mb} layer, not cached (exec/run.rs, every RUN)"))
                .push(t.elapsed());
            let t = Instant::now();
            FsView::load(&store, &cache, &layers).unwrap();
            rep.phase("context: FsView::load, layer indexes cached")
                .push(t.elapsed());
            let (_, count) = phase_run(
                &sandbox,
                &store,
                &layers,
                &spec(
                    &["/bin/sh", "-c", "find /app -type f | wc -l > /count"],
                    &[],
                ),
                &format!("context: RUN find on a new {mb} layer (setup unpacks it)"),
                Some("count"),
                rep,
            )
            .await;
            assert_eq!(
                count.as_deref().map(str::trim),
                Some(expected.to_string().as_str()),
                "find /app counted"
            );
        }
    }

    let t = Instant::now();
    containerd.shutdown().await;
    rep.phase("private containerd: shutdown").push(t.elapsed());
    for m in unmount_below(&dir) {
        eprintln!("run bench: LEAK: mount left in-process: {m}");
    }
    let _ = fs::remove_dir_all(&dir);
}

/// Before a cold build: with `MEMOBUILD_BENCH_SETTLE_SECS=N`, `sync` and
/// wait N s. BuildKit's clean-up before its cold build frees tens of
/// thousands of inodes, and ext4 without a journal (these VMs) skips inodes
/// freed in the last minute (five, while their inode table is unwritten) when
/// it allocates new ones: creating 10,000 files next to them costs up to 10x.
/// memobuild's cold runs keep their data dirs until the end instead
/// ([`Daemon::keep_dir_on_drop`]), but BuildKit's clean-up is also before
/// memobuild's next cold run.
fn settle() {
    let secs = common::env_usize(BENCH, "MEMOBUILD_BENCH_SETTLE_SECS", 0);
    if secs > 0 {
        let _ = Command::new("sync").status();
        std::thread::sleep(Duration::from_secs(secs as u64));
    }
}

/// Reference floor for container set-up: `runc run` of `busybox sh -c 'echo
/// $NONCE > /n'` on a plain directory rootfs (no containerd, no shim, no
/// overlay snapshot, no diff), default `runc spec` (new namespaces incl. network).
fn bare_runc(dir: &Path, steps: usize, rep: &mut Report) {
    let bundle = dir.join("bundle");
    let state = dir.join("runc-state");
    fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
    fs::copy(BUSYBOX, bundle.join("rootfs/bin/busybox")).unwrap();
    let ok = Command::new("runc")
        .arg("spec")
        .arg("--bundle")
        .arg(&bundle)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        rep.notes
            .push("bare runc reference skipped: `runc spec` failed".into());
        return;
    }
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["root"]["readonly"] = false.into();
    fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    for i in 0..steps {
        let mut c = config.clone();
        c["process"]["args"] = serde_json::json!(["/bin/busybox", "sh", "-c", "echo $NONCE > /n"]);
        c["process"]["env"] = serde_json::json!([DEFAULT_PATH, format!("NONCE={i}")]);
        fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
        let id = format!("mb-runbench-{}-{i}", std::process::id());
        let (wall, out) = timed(
            Command::new("runc")
                .arg("--root")
                .arg(&state)
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(&id),
        );
        assert!(
            out.status.success(),
            "runc run: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        rep.phase("reference: bare `runc run` (create, start, wait, delete) of the same echo on a plain rootfs")
            .push(wall);
    }
}

// ---------------------------------------------------------------------------

fn main() {
    let files = env_usize("MEMOBUILD_BENCH_FILES", 10_000).max(10);
    let steps = env_usize("MEMOBUILD_BENCH_RUN_STEPS", 20).max(1);
    let runs = env_usize("MEMOBUILD_BENCH_RUNS", 5).max(1);
    let total = files as u64 * 10_000;
    let bins = common::find_bins(BENCH);

    // Short path: containerd's socket (under each data dir) must fit in sun_path.
    let work_dir = common::work_dir("mb-runbench-");
    let work = work_dir.path().to_path_buf();

    println!("memobuild RUN-step benchmark");
    println!("{}", common::machine::machine_line());
    println!("{}", common::machine::sandbox_line());

    let mut docker = match Docker::detect(BENCH, &work, Records::Claimed) {
        Ok(mut d) => {
            println!("BuildKit: {}", d.describe());
            // The busybox-only context upload of the trivial scenario has the
            // size of anyone's busybox context.
            d.shared_upload = fs::metadata(BUSYBOX).map_or(0, |m| m.len() as i64);
            Some(d)
        }
        Err(why) => {
            println!("BuildKit: skipped ({why}); only memobuild rows are measured");
            None
        }
    };

    let mut rep = Report::default();
    let mut generation = 0u64;

    if wanted("trivial") {
        trivial(&bins, &work, &mut docker, steps, &mut rep);
    }

    if wanted("stage") {
        stage_edit(&bins, &work, &mut docker, runs, &mut rep);
    }

    let mut ctx_plan: Option<(PathBuf, GenFile)> = None;
    if wanted("context") || wanted("phases") {
        let ctx = work.join("ctx");
        fs::create_dir(&ctx).unwrap();
        let t = Instant::now();
        let plan = common::generate_tree(&ctx, files, total, SEED).expect("generating the context");
        write_context(&ctx, context_tail(), dockerfile_len(1));
        let changed = common::file_to_change(&plan);
        println!(
            "context: {} files, {:.1} MB + busybox in {} (generated in {:.1} s); one-file change edits {} ({} bytes)",
            files,
            total as f64 / 1e6,
            ctx.display(),
            t.elapsed().as_secs_f64(),
            changed.rel,
            changed.size
        );
        ctx_plan = Some((ctx, changed));
    }

    if wanted("context") {
        let (ctx, changed) = ctx_plan.as_ref().unwrap();
        context(
            &bins,
            &work,
            ctx,
            changed,
            &mut generation,
            &mut docker,
            runs,
            &mut rep,
        );
    }

    if wanted("phases") {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ctx = ctx_plan.as_ref().map(|(c, f)| (c.as_path(), f));
        rt.block_on(phases_async(
            &work,
            ctx,
            &mut generation,
            steps,
            runs,
            &mut rep,
        ));
        eprintln!("run bench: phases done");
    }

    // Clean up before printing, so a failure to print leaves nothing behind.
    let have_docker = docker.is_some();
    if let Some(mut dk) = docker.take() {
        dk.clean();
        rep.notes.push(dk.clean_note());
    }
    for p in stop_processes_under(&work) {
        eprintln!("run bench: LEAK: process still running: {p}");
    }
    for m in unmount_below(&work) {
        eprintln!("run bench: LEAK: mount still present: {m}");
    }
    drop(work_dir);

    rep.print(have_docker);
}

/// A stored layer as the sandbox takes it.
fn layer_input(
    blobs: &memobuild_store::BlobStore,
    layer: &memobuild_store::LayerRecord,
) -> LayerInput {
    LayerInput {
        digest: layer.digest.clone(),
        diff_id: layer.diff_id.clone(),
        path: blobs.path(&layer.digest).unwrap(),
        media_type: layer.media_type.clone(),
    }
}
