//! Warm-daemon benchmark (issue 4, "Speed"): what the resident daemon's warm,
//! watched index buys. Drives the real `memobuildd` + `memobuild-ctl` release
//! binaries on a private socket and data dir, and talks tarpc to the daemon
//! directly where the RPC alone is measured.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench --bench warm`.
//!
//! Scenarios (targets from issue 4):
//!
//! 1. no-op `memobuild-ctl build` of a 10,000-file / 100 MB context (`FROM scratch`,
//!    `COPY . /app/`) with the daemon warm: wall time of the whole ctl process,
//!    after a warm-up build. Target p50 <= 10 ms, p99 <= 20 ms.
//! 2. `memobuild-ctl status --json` (whole process; target p99 <= 5 ms), and the
//!    `status("")` RPC alone on one open connection (target <= 1 ms).
//! 3. save-to-dirty: write one file in place, then poll `status` over the RPC in a
//!    tight loop until the project is `dirty`; time from the write returning to the
//!    first dirty answer (target <= 50 ms). A build restores `clean` between samples.
//! 4. index memory: VmRSS growth of a fresh daemon once it indexes a tree of
//!    1,000,000 empty files in 1,000 directories (the project copies one small file,
//!    so nothing else is hashed), per indexed entry. Target <= 200 bytes.
//! 5. first index of a cold 100 MB tree vs `b3sum` on the same files: the daemon
//!    indexes a fresh copy of the context (new paths, so its hash cache misses; same
//!    content, so the step is cached and no layer is written). Target: hashing
//!    throughput >= 70% of b3sum's.
//!
//! Environment:
//!
//! * `MEMOBUILD_BENCH_FILES=N`          context of N files (N x 10 kB), default 10000
//! * `MEMOBUILD_BENCH_INDEX_FILES=N`    files in the memory scenario's tree, default 1000000
//! * `MEMOBUILD_BENCH_NOOP_RUNS=N`      default 200
//! * `MEMOBUILD_BENCH_STATUS_RUNS=N`    default 200 (ctl processes)
//! * `MEMOBUILD_BENCH_RPC_CALLS=N`      default 1000
//! * `MEMOBUILD_BENCH_DIRTY_SAMPLES=N`  default 50
//! * `MEMOBUILD_BENCH_COLD_RUNS=N`      default 5
//! * `MEMOBUILD_BENCH_POLL_US=N`        save-to-dirty: sleep between status polls, default 0 (tight loop)
//! * `MEMOBUILD_BENCH_INDEX_SAVES=N`    saves (+ builds) in the big tree after the memory reading, default 3
//! * `MEMOBUILD_BENCH_ONLY=a,b`         run only some of: noop, status, dirty, cold, index
//!
//! Percentiles are nearest-rank (p99 of fewer than 100 samples is the maximum).

mod common;

use common::daemon::{Daemon, MbRun};
use common::report::{fmt as fmt_d, print_notes, Samples, Table};
use common::{timed, wanted, Bins, GenFile, SEED};
use memobuild_proto::{MemobuildClient, ProjectState, StatusReport};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = "warm";
const DOCKERFILE: &str = "FROM scratch\nCOPY . /app/\n";
const TAG: &str = "memobuild-bench-warm";
/// Directories of the memory scenario's tree.
const INDEX_DIRS: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    common::env_usize(BENCH, name, default)
}

/// One tarpc connection to the daemon, as memobuild-ctl makes it
/// (memobuild-ctl/src/connect.rs), on a current-thread runtime.
struct Rpc {
    rt: tokio::runtime::Runtime,
    client: MemobuildClient,
}

fn rpc_ctx() -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = Instant::now() + Duration::from_secs(60);
    ctx
}

impl Rpc {
    fn connect(socket: &Path) -> Rpc {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let client = rt.block_on(async {
            let conn = tokio::net::UnixStream::connect(socket)
                .await
                .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
            let transport = memobuild_proto::wire::transport(conn);
            MemobuildClient::new(tarpc::client::Config::default(), transport).spawn()
        });
        let rpc = Rpc { rt, client };
        let info = rpc
            .rt
            .block_on(rpc.client.hello(rpc_ctx()))
            .expect("hello RPC")
            .expect("allowed to use the daemon");
        assert_eq!(
            info.protocol_version,
            memobuild_proto::PROTOCOL_VERSION,
            "daemon speaks another protocol"
        );
        rpc
    }

    fn status(&self, filter: &str) -> StatusReport {
        self.rt
            .block_on(self.client.status(rpc_ctx(), filter.to_string()))
            .expect("status RPC transport")
            .unwrap_or_else(|e| panic!("status({filter:?}): {e}"))
    }

    fn forget(&self, filter: &str) {
        let _ = self
            .rt
            .block_on(self.client.forget(rpc_ctx(), filter.to_string()));
    }
}

/// `memobuild-ctl build --progress json -f CTX/Dockerfile CTX`, wall time of the process.
fn ctl_build(daemon: &mut Daemon, ctx: &Path) -> MbRun {
    daemon.build(ctx, "Dockerfile", TAG, &[])
}

/// Where the daemon's hashing happened inside one build, seen from outside:
/// `hashed_bytes` polled every `gap` while the build runs.
struct HashWindow {
    /// From spawning the client to the first poll that saw hashed_bytes grow.
    first: Duration,
    /// From spawning the client to the first poll that saw the final value.
    last: Duration,
    bytes: u64,
}

/// A build while polling `status` for `hashed_bytes` (every 2 ms, so the poller
/// hardly takes CPU from the daemon).
fn ctl_build_watching_hashes(daemon: &mut Daemon, rpc: &Rpc, ctx: &Path) -> (MbRun, HashWindow) {
    daemon.assert_alive();
    let gap = Duration::from_millis(2);
    let base = rpc.status("").daemon.hashed_bytes;
    let started = Instant::now();
    let mut child = daemon
        .build_cmd(ctx, "Dockerfile", TAG, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning memobuild-ctl");
    let mut seen: Vec<(Duration, u64)> = Vec::new();
    let wall = loop {
        let h = rpc.status("").daemon.hashed_bytes - base;
        let t = started.elapsed();
        if seen.last().is_none_or(|(_, b)| *b != h) {
            seen.push((t, h));
        }
        if let Some(_status) = child.try_wait().expect("waiting for memobuild-ctl") {
            break started.elapsed();
        }
        std::thread::sleep(gap);
    };
    let out = child.wait_with_output().expect("memobuild-ctl output");
    let run = MbRun::parse(wall, &out, daemon);
    let final_bytes = rpc.status("").daemon.hashed_bytes - base;
    let first = seen
        .iter()
        .find(|(_, b)| *b > 0)
        .map(|(t, _)| *t)
        .unwrap_or(wall);
    let last = seen
        .iter()
        .find(|(_, b)| *b == final_bytes)
        .map(|(t, _)| *t)
        .unwrap_or(wall);
    (
        run,
        HashWindow {
            first,
            last,
            bytes: final_bytes,
        },
    )
}

fn project_of(rpc: &Rpc, ctx: &Path) -> memobuild_proto::ProjectStatus {
    let mut s = rpc.status(&ctx.display().to_string());
    assert_eq!(
        s.projects.len(),
        1,
        "expected one project for {}",
        ctx.display()
    );
    s.projects.remove(0)
}

/// Polls `status(project)` until its state is `want` (or `timeout`).
fn wait_state(rpc: &Rpc, project: &str, want: ProjectState, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let s = rpc.status(project);
        if s.projects.first().is_some_and(|p| p.state == want) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sh(script: &str) -> Duration {
    let (d, out) = timed(Command::new("sh").args(["-c", script]));
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

// ---------------------------------------------------------------------------
// Results

#[derive(Default)]
struct Report {
    rows: Vec<[String; 5]>,
    notes: Vec<String>,
}

impl Report {
    /// `pass`: None = no target (information only).
    fn row(&mut self, what: &str, n: String, target: &str, measured: String, pass: Option<bool>) {
        let verdict = match pass {
            Some(true) => "PASS",
            Some(false) => "**FAIL**",
            None => "(info)",
        };
        self.rows.push([
            what.to_string(),
            n,
            target.to_string(),
            measured,
            verdict.to_string(),
        ]);
    }

    fn note(&mut self, s: String) {
        eprintln!("warm bench: {s}");
        self.notes.push(s);
    }

    fn print(&self) {
        println!();
        let mut t = Table::new(&["scenario", "n", "target", "measured", "result"]);
        for r in &self.rows {
            t.row(r.to_vec());
        }
        t.print();
        print_notes(&self.notes);
    }
}

fn le(d: Option<Duration>, ms: f64) -> Option<bool> {
    d.map(|d| d.as_secs_f64() * 1000.0 <= ms)
}

// ---------------------------------------------------------------------------
// Scenarios

/// 1. No-op builds of the warm project.
fn noop_builds(d: &mut Daemon, rpc: &Rpc, ctx: &Path, digest: &str, label: &str, rep: &mut Report) {
    let runs = env_usize("MEMOBUILD_BENCH_NOOP_RUNS", 200).max(1);
    let before = rpc.status("");
    let gen_before = project_of(rpc, ctx).generation;
    let mut wall = Samples::default();
    let mut daemon_side = Samples::default();
    for _ in 0..runs {
        let r = ctl_build(d, ctx);
        assert_eq!(r.executed.len(), 0, "a no-op build ran {:?}", r.executed);
        assert_eq!(r.digest, digest, "a no-op build changed the image");
        wall.push(r.wall);
        daemon_side.push(r.daemon);
    }
    let after = rpc.status("");
    let hashed = after.daemon.hashed_bytes - before.daemon.hashed_bytes;
    let tree_gen: Vec<_> = after.daemon.trees.iter().map(|t| t.entries).collect();
    eprintln!(
        "warm bench: no-op: {runs} builds, {hashed} bytes hashed meanwhile, {} watch events, tree entries {tree_gen:?}, project generation {gen_before} -> {}",
        after.daemon.events - before.daemon.events,
        project_of(rpc, ctx).generation
    );
    if hashed != 0 {
        rep.note(format!(
            "no-op builds hashed {hashed} bytes: some took the slow path"
        ));
    }
    let n = wall.len().to_string();
    rep.row(
        &format!("1. no-op `ctl build`, {label}, whole process: p50"),
        n.clone(),
        "≤ 10 ms",
        fmt_d(wall.p50()),
        le(wall.p50(), 10.0),
    );
    rep.row(
        "1. same: p99",
        n.clone(),
        "≤ 20 ms",
        fmt_d(wall.p99()),
        le(wall.p99(), 20.0),
    );
    rep.row(
        "1. same: max (min)",
        n.clone(),
        "",
        format!("{} ({})", fmt_d(wall.max()), fmt_d(wall.min())),
        None,
    );
    rep.row(
        "1. same, daemon-side (`finished.millis`, whole ms): p50 / p99",
        n,
        "",
        format!(
            "{} / {}",
            fmt_d(daemon_side.p50()),
            fmt_d(daemon_side.p99())
        ),
        None,
    );
}

/// 2. `status --json` as a process, and the RPC alone.
fn status_latency(bins: &Bins, d: &mut Daemon, rpc: &Rpc, rep: &mut Report) {
    let runs = env_usize("MEMOBUILD_BENCH_STATUS_RUNS", 200).max(1);
    let calls = env_usize("MEMOBUILD_BENCH_RPC_CALLS", 1000).max(1);
    d.assert_alive();
    let mut proc_ = Samples::default();
    let mut floor = Samples::default();
    let mut true_floor = Samples::default();
    let mut bytes = 0;
    for i in 0..runs {
        let (t, out) = timed(&mut Command::new("true"));
        assert!(out.status.success());
        true_floor.push(t);
        // The floor: the same binary started and exiting at once (clap prints the
        // version before any runtime or connection), interleaved so load hits both.
        let (t, out) = timed(Command::new(&bins.ctl).arg("--version"));
        assert!(out.status.success());
        floor.push(t);
        let (t, out) = timed(
            Command::new(&bins.ctl)
                .arg("--socket")
                .arg(&d.socket)
                .args(["status", "--json"]),
        );
        assert!(
            out.status.success(),
            "status --json failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if i == 0 {
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
            assert!(v["daemon"]["index_entries"].as_u64().unwrap_or(0) > 0);
            bytes = out.stdout.len();
        }
        proc_.push(t);
    }
    // The RPC alone: one connection, warm-up calls first.
    let rpc_samples = rpc.rt.block_on(async {
        for _ in 0..20 {
            rpc.client
                .status(rpc_ctx(), String::new())
                .await
                .unwrap()
                .unwrap();
        }
        let mut s = Samples::default();
        for _ in 0..calls {
            let t = Instant::now();
            let r = rpc.client.status(rpc_ctx(), String::new()).await;
            s.push(t.elapsed());
            r.expect("status RPC").expect("status");
        }
        s
    });
    eprintln!("warm bench: status --json prints {bytes} bytes");
    let n = proc_.len().to_string();
    rep.row(
        "2. `ctl status --json`, whole process: p50",
        n.clone(),
        "",
        fmt_d(proc_.p50()),
        None,
    );
    rep.row(
        "2. same: p99",
        n,
        "≤ 5 ms",
        fmt_d(proc_.p99()),
        le(proc_.p99(), 5.0),
    );
    rep.row(
        "2. floor: `ctl --version` process (spawn, exit), interleaved: p50 / p99",
        floor.len().to_string(),
        "",
        format!("{} / {}", fmt_d(floor.p50()), fmt_d(floor.p99())),
        None,
    );
    rep.row(
        "2. floor: `true` process, interleaved: p50 / p99",
        true_floor.len().to_string(),
        "",
        format!("{} / {}", fmt_d(true_floor.p50()), fmt_d(true_floor.p99())),
        None,
    );
    let n = rpc_samples.len().to_string();
    rep.row(
        "2. `status(\"\")` RPC alone, one connection: p50",
        n.clone(),
        "≤ 1 ms",
        fmt_d(rpc_samples.p50()),
        le(rpc_samples.p50(), 1.0),
    );
    rep.row(
        "2. same: p99 (max)",
        n,
        "≤ 1 ms",
        format!(
            "{} ({})",
            fmt_d(rpc_samples.p99()),
            fmt_d(rpc_samples.max())
        ),
        le(rpc_samples.p99(), 1.0),
    );
}

/// 3. Save (write in place) -> first `dirty` answer.
fn save_to_dirty(d: &mut Daemon, rpc: &Rpc, ctx: &Path, file: &GenFile, rep: &mut Report) {
    let samples = env_usize("MEMOBUILD_BENCH_DIRTY_SAMPLES", 50).max(1);
    // 0 = a tight loop (the default); else sleep this long between polls.
    let poll_gap = Duration::from_micros(env_usize("MEMOBUILD_BENCH_POLL_US", 0) as u64);
    let project = project_of(rpc, ctx);
    let id = project.id.clone();
    assert_eq!(
        project.state,
        ProjectState::Clean,
        "the project must start clean"
    );
    let mut to_changed = Samples::default();
    let mut to_dirty = Samples::default();
    let mut replan = Samples::default();
    let mut polls_total = 0usize;
    let mut missed = 0;
    let mut restore_anomalies = 0;
    let mut build_times = Samples::default();
    for i in 0..samples {
        // Let the previous build's own after-effects settle.
        std::thread::sleep(Duration::from_millis(50));
        if !wait_state(rpc, &id, ProjectState::Clean, Duration::from_secs(5)) {
            panic!("project {id} is not clean before sample {i}");
        }
        common::rewrite_file(ctx, file, 1000 + i as u64).unwrap();
        let written = Instant::now();
        let (changed, dirty, polls, why) = rpc.rt.block_on(async {
            let mut changed = None;
            let mut polls = 0usize;
            loop {
                let s = rpc
                    .client
                    .status(rpc_ctx(), id.clone())
                    .await
                    .expect("status RPC")
                    .expect("status");
                polls += 1;
                let elapsed = written.elapsed();
                let Some(p) = s.projects.first() else {
                    panic!("project {id} vanished")
                };
                if changed.is_none() && p.changed_files.contains(&file.rel) {
                    changed = Some(elapsed);
                }
                if p.state == ProjectState::Dirty {
                    let why = p
                        .steps
                        .iter()
                        .flat_map(|s| s.why.clone())
                        .collect::<Vec<_>>();
                    return (changed.or(Some(elapsed)), Some(elapsed), polls, why);
                }
                if elapsed > Duration::from_secs(5) {
                    return (changed, None, polls, Vec::new());
                }
                if !poll_gap.is_zero() {
                    tokio::time::sleep(poll_gap).await;
                }
            }
        });
        polls_total += polls;
        match dirty {
            Some(t) => {
                to_dirty.push(t);
                if let Some(c) = changed {
                    to_changed.push(c);
                    replan.push(t.saturating_sub(c));
                }
                if !why.iter().any(|w| w.contains(&file.rel)) {
                    eprintln!(
                        "warm bench: sample {i}: dirty, but `why` does not name {}: {why:?}",
                        file.rel
                    );
                }
            }
            None => missed += 1,
        }
        // Restore: build (the one COPY runs again).
        let r = ctl_build(d, ctx);
        build_times.push(r.wall);
        assert_eq!(
            r.executed.len(),
            1,
            "the restoring build ran {:?}",
            r.executed
        );
        if !wait_state(rpc, &id, ProjectState::Clean, Duration::from_secs(2)) {
            restore_anomalies += 1;
            // A dirty re-plan that finished after the build: build once more.
            ctl_build(d, ctx);
        }
    }
    let mut slow: Vec<(Duration, Duration)> = to_dirty
        .0
        .iter()
        .copied()
        .zip(to_changed.0.iter().copied())
        .collect();
    slow.sort();
    slow.reverse();
    eprintln!(
        "warm bench: save-to-dirty: {} polls per sample on average (gap {poll_gap:?}); restoring builds p50 {}; slowest (dirty, changed): {:?}",
        polls_total / samples,
        fmt_d(build_times.p50()),
        &slow[..slow.len().min(6)]
    );
    if missed > 0 {
        rep.note(format!(
            "save-to-dirty: {missed} of {samples} saves were not dirty within 5 s"
        ));
    }
    if restore_anomalies > 0 {
        rep.note(format!(
            "save-to-dirty: after {restore_anomalies} of {samples} restoring builds the project was not `clean` within 2 s"
        ));
    }
    let n = to_dirty.len().to_string();
    rep.row(
        "3. save (write in place) -> `dirty` in status: p50",
        n.clone(),
        "≤ 50 ms",
        fmt_d(to_dirty.p50()),
        le(to_dirty.p50(), 50.0),
    );
    rep.row(
        "3. same: p99",
        n.clone(),
        "≤ 50 ms",
        fmt_d(to_dirty.p99()),
        le(to_dirty.p99(), 50.0).map(|p| p && missed == 0),
    );
    rep.row(
        "3. save -> file listed in `changed_files` (before the re-plan): p50 / p99",
        to_changed.len().to_string(),
        "",
        format!("{} / {}", fmt_d(to_changed.p50()), fmt_d(to_changed.p99())),
        None,
    );
    rep.row(
        "3. `changed_files` -> `dirty` (the re-plan): p50 / p99",
        replan.len().to_string(),
        "",
        format!("{} / {}", fmt_d(replan.p50()), fmt_d(replan.p99())),
        None,
    );
    if !poll_gap.is_zero() {
        rep.note(format!(
            "save-to-dirty polled every {poll_gap:?}, not in a tight loop"
        ));
    }
}

/// 5. First index of a cold copy of the context, next to b3sum and the library.
fn first_index(d: &mut Daemon, rpc: &Rpc, work: &Path, ctx: &Path, digest: &str, rep: &mut Report) {
    let runs = env_usize("MEMOBUILD_BENCH_COLD_RUNS", 5).max(1);
    let have_b3sum = Command::new("b3sum")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    let mut daemon_wall = Samples::default();
    let mut before_hash = Samples::default();
    let mut hashing = Samples::default();
    let mut after_hash = Samples::default();
    let mut daemon_side = Samples::default();
    let mut lib = Samples::default();
    let mut b3_plain = Samples::default();
    let mut b3_t2 = Samples::default();
    let mut b3_p2 = Samples::default();
    let mut bytes = 0u64;
    for i in 0..runs {
        let copy = work.join(format!("cold{i}"));
        sh(&format!(
            "cp -a '{}' '{}' && sync",
            ctx.display(),
            copy.display()
        ));
        let files = format!("find '{}' -type f -print0", copy.display());
        if have_b3sum {
            b3_plain.push(sh(&format!("{files} | xargs -0 b3sum > /dev/null")));
            b3_t2.push(sh(&format!(
                "{files} | xargs -0 b3sum --num-threads 2 > /dev/null"
            )));
            b3_p2.push(sh(&format!(
                "{files} | xargs -0 -P 2 -n 500 b3sum > /dev/null"
            )));
        }
        // The library, in this process (as benches/micro.rs): an empty HashCache.
        {
            use memobuild_context::dockerignore::DockerIgnore;
            use memobuild_context::{ContextIndex, FileKind, HashCache};
            let index = ContextIndex::scan(&copy, &DockerIgnore::empty()).unwrap();
            let input: Vec<_> = index
                .iter()
                .filter(|(_, m)| m.kind == FileKind::File)
                .map(|(rel, m)| (index.host_path(rel), m.clone()))
                .collect();
            let cache = HashCache::new();
            let t = Instant::now();
            cache.hash_all(&input).unwrap();
            lib.push(t.elapsed());
            bytes = cache.bytes_hashed();
        }
        // The daemon: a tree it has never seen (walk + hash every file); the step
        // itself is cached (same content), so no layer is written.
        let (r, window) = ctl_build_watching_hashes(d, rpc, &copy);
        let hashed = window.bytes;
        before_hash.push(window.first);
        hashing.push(window.last.saturating_sub(window.first));
        after_hash.push(r.wall.saturating_sub(window.last));
        assert_eq!(r.digest, digest, "the copy built another image");
        if !r.executed.is_empty() {
            rep.note(format!(
                "first index run {i}: {} steps ran (expected all cached): the time includes layer writing",
                r.executed.len()
            ));
        }
        if hashed != bytes {
            rep.note(format!(
                "first index run {i}: the daemon hashed {hashed} bytes, the tree has {bytes}"
            ));
        }
        daemon_wall.push(r.wall);
        daemon_side.push(r.daemon);
        rpc.forget(&copy.display().to_string());
        fs::remove_dir_all(&copy).unwrap();
    }
    let mbps = |d: Option<Duration>| d.map(|d| bytes as f64 / 1e6 / d.as_secs_f64());
    let show = |d: Option<Duration>| match mbps(d) {
        Some(v) => format!("{} ({v:.0} MB/s)", fmt_d(d)),
        None => "-".into(),
    };
    let n = runs.to_string();
    rep.row(
        "5. first index of a fresh copy of the context, daemon-side (walk + hash + cached plan): p50",
        n.clone(),
        "",
        show(daemon_side.p50()),
        None,
    );
    rep.row(
        "5. same, whole `ctl build` process: p50",
        n.clone(),
        "",
        show(daemon_wall.p50()),
        None,
    );
    rep.row(
        "5. same build, split by polling `hashed_bytes` every 2 ms: spawn -> first bytes hashed / hashing / last bytes hashed -> exit (p50 each)",
        n.clone(),
        "",
        format!(
            "{} / {} / {}",
            fmt_d(before_hash.p50()),
            show(hashing.p50()),
            fmt_d(after_hash.p50())
        ),
        None,
    );
    rep.row(
        "5. `HashCache::hash_all` (library, empty cache, 2 threads): p50",
        n.clone(),
        "",
        show(lib.p50()),
        None,
    );
    if have_b3sum {
        rep.row(
            "5. `find | xargs -0 b3sum`: p50",
            n.clone(),
            "",
            show(b3_plain.p50()),
            None,
        );
        rep.row(
            "5. `find | xargs -0 b3sum --num-threads 2`: p50",
            n.clone(),
            "",
            show(b3_t2.p50()),
            None,
        );
        rep.row(
            "5. `find | xargs -0 -P 2 -n 500 b3sum` (two b3sum processes): p50",
            n.clone(),
            "",
            show(b3_p2.p50()),
            None,
        );
        let ratio = |ours: Option<Duration>, theirs: Option<Duration>| {
            ours.zip(theirs)
                .map(|(o, t)| t.as_secs_f64() / o.as_secs_f64())
        };
        let fmt_ratio = |r: Option<f64>| {
            r.map(|r| format!("{:.0}%", r * 100.0))
                .unwrap_or("-".into())
        };
        let r_plain = ratio(daemon_side.p50(), b3_plain.p50());
        rep.row(
            "5. daemon first-index throughput / `b3sum` (the issue's command)",
            n.clone(),
            "≥ 70%",
            fmt_ratio(r_plain),
            r_plain.map(|r| r >= 0.70),
        );
        let best = [b3_plain.p50(), b3_t2.p50(), b3_p2.p50()]
            .into_iter()
            .flatten()
            .min();
        let r_best = ratio(daemon_side.p50(), best);
        rep.row(
            "5. daemon first-index throughput / fastest b3sum variant",
            n.clone(),
            "≥ 70%",
            fmt_ratio(r_best),
            r_best.map(|r| r >= 0.70),
        );
        let r_hash = ratio(hashing.p50(), b3_plain.p50());
        let r_hash_best = ratio(hashing.p50(), best);
        rep.row(
            "5. daemon's hashing part only / `b3sum` (the issue's command); / fastest variant",
            n.clone(),
            "≥ 70%",
            format!("{}; {}", fmt_ratio(r_hash), fmt_ratio(r_hash_best)),
            r_hash.zip(r_hash_best).map(|(a, b)| a >= 0.70 && b >= 0.70),
        );
        let r_lib = ratio(lib.p50(), best);
        rep.row(
            "5. `hash_all` throughput / fastest b3sum variant",
            n,
            "",
            fmt_ratio(r_lib),
            None,
        );
    } else {
        rep.note("b3sum is not installed: no hashing reference (apt-get install b3sum)".into());
    }
}

/// 4. Index memory on a big tree of empty files.
fn index_memory(bins: &Bins, work: &Path, rep: &mut Report) {
    let mut n = env_usize("MEMOBUILD_BENCH_INDEX_FILES", 1_000_000).max(INDEX_DIRS);
    // Enough inodes? (n files + the directories, with a 10% margin for others.)
    let free_inodes = Command::new("df")
        .args(["--output=iavail", "/tmp"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)?
                .trim()
                .parse::<u64>()
                .ok()
        });
    eprintln!("warm bench: /tmp has {free_inodes:?} free inodes");
    if let Some(free) = free_inodes {
        let budget = free / 2;
        if (n as u64) > budget {
            rep.note(format!(
                "index memory: /tmp has only {free} free inodes; using {budget} files instead of {n}"
            ));
            n = budget as usize;
        }
    }
    let per_dir = n.div_ceil(INDEX_DIRS);
    let tree = work.join("bigtree");
    fs::create_dir(&tree).unwrap();
    let t = Instant::now();
    let mut made = 0usize;
    'outer: for dir in 0..INDEX_DIRS {
        let dpath = tree.join(format!("d{dir:03}"));
        fs::create_dir(&dpath).unwrap();
        for f in 0..per_dir {
            if made == n {
                break 'outer;
            }
            fs::File::create(dpath.join(format!("f{f:06}"))).unwrap();
            made += 1;
        }
    }
    fs::write(tree.join("small.txt"), b"hello\n").unwrap();
    fs::write(
        tree.join("Dockerfile"),
        "FROM scratch\nCOPY small.txt /small.txt\n",
    )
    .unwrap();
    eprintln!(
        "warm bench: index memory: {made} empty files in {INDEX_DIRS} directories generated in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let watches: Option<u64> = fs::read_to_string("/proc/sys/fs/inotify/max_user_watches")
        .ok()
        .and_then(|s| s.trim().parse().ok());

    let mut d = Daemon::start(bins, &work.join("daemon-index"));
    let rpc = Rpc::connect(&d.socket);
    // Exercise the RPC path once so its code is paged in before the baseline.
    rpc.status("");
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = d.proc_kib("VmRSS");
    let r = ctl_build(&mut d, &tree);
    let deadline = Instant::now() + Duration::from_secs(120);
    let entries = loop {
        let s = rpc.status("");
        let e: u64 = s
            .daemon
            .trees
            .iter()
            .filter(|t| Path::new(&t.root) == tree)
            .map(|t| t.entries)
            .sum();
        if e as usize >= made {
            if s.daemon
                .trees
                .iter()
                .any(|t| t.mode != memobuild_proto::TreeMode::Watching)
            {
                rep.note(format!(
                    "index memory: the tree is not in `watching` mode: {:?} (max_user_watches {watches:?})",
                    s.daemon.trees
                ));
            }
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "the tree was not indexed within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = d.proc_kib("VmRSS");
    let hwm = d.proc_kib("VmHWM");
    let per_entry = (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / entries as f64;
    eprintln!(
        "warm bench: index memory: size_of FileMeta {} B, String {} B (per entry before heap and map overhead: {} B)",
        std::mem::size_of::<memobuild_context::FileMeta>(),
        std::mem::size_of::<String>(),
        std::mem::size_of::<memobuild_context::FileMeta>() + std::mem::size_of::<String>()
    );
    eprintln!(
        "warm bench: index memory: VmRSS {rss_before} KiB -> {rss_after} KiB (peak {hwm} KiB), {entries} entries, first build {}",
        fmt_d(Some(r.wall))
    );

    // One save in the big tree: how long until it shows, and what it costs.
    let id = project_of(&rpc, &tree).id;
    let mut to_changed = Samples::default();
    let mut to_dirty = Samples::default();
    let saves = env_usize("MEMOBUILD_BENCH_INDEX_SAVES", 3);
    let mut rss_trail = Vec::new();
    for i in 0..saves {
        std::thread::sleep(Duration::from_millis(100));
        wait_state(&rpc, &id, ProjectState::Clean, Duration::from_secs(30));
        fs::write(tree.join("small.txt"), format!("hello {i}\n")).unwrap();
        let written = Instant::now();
        loop {
            let s = rpc.status(&id);
            let p = &s.projects[0];
            if to_changed.len() == i && p.changed_files.iter().any(|f| f == "small.txt") {
                to_changed.push(written.elapsed());
            }
            if p.state == ProjectState::Dirty {
                to_dirty.push(written.elapsed());
                break;
            }
            if written.elapsed() > Duration::from_secs(30) {
                break;
            }
        }
        ctl_build(&mut d, &tree);
        rss_trail.push(d.proc_kib("VmRSS") / 1024);
    }
    eprintln!("warm bench: index memory: VmRSS (MiB) after each save + build: {rss_trail:?}");
    let hwm_after_saves = d.proc_kib("VmHWM");
    let rss_after_saves = d.proc_kib("VmRSS");
    eprintln!(
        "warm bench: index memory: after {saves} saves + builds VmRSS {rss_after_saves} KiB, peak {hwm_after_saves} KiB"
    );
    drop(rpc);
    drop(d);
    let t = Instant::now();
    fs::remove_dir_all(&tree).unwrap();
    eprintln!(
        "warm bench: index memory: tree removed in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let what = format!("4. index memory, {entries} entries ({made} empty files): ΔVmRSS per entry");
    rep.row(
        &what,
        "1".into(),
        "≤ 200 B",
        format!(
            "{per_entry:.0} B ({:.0} MiB; peak RSS {:.0} MiB)",
            (rss_after - rss_before) as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
        Some(per_entry <= 200.0),
    );
    rep.row(
        "4. same tree: first `ctl build` (walk of every entry; one file hashed)",
        "1".into(),
        "",
        fmt_d(Some(r.wall)),
        None,
    );
    rep.row(
        "4. same tree: save -> `changed_files` / -> `dirty`: p50",
        to_dirty.len().to_string(),
        "",
        format!("{} / {}", fmt_d(to_changed.p50()), fmt_d(to_dirty.p50())),
        None,
    );
    rep.row(
        "4. same tree: RSS after those saves and builds (peak)",
        saves.to_string(),
        "",
        format!(
            "{:.0} MiB ({:.0} MiB)",
            rss_after_saves as f64 / 1024.0,
            hwm_after_saves as f64 / 1024.0
        ),
        None,
    );
}

// ---------------------------------------------------------------------------

fn main() {
    let files = env_usize("MEMOBUILD_BENCH_FILES", 10_000).max(10);
    let total = files as u64 * 10_000;
    let bins = common::find_bins(BENCH);
    let work_dir = common::work_dir("memobuild-warm-");
    let work = work_dir.path().to_path_buf();
    let mut rep = Report::default();

    println!("memobuild warm-daemon benchmark (issue 4)");
    println!("{}", common::machine::machine_line());
    println!("load average at start: {}", common::machine::load_average());
    let t0 = Instant::now();

    let need_ctx = ["noop", "status", "dirty", "cold"]
        .iter()
        .any(|p| wanted(p));
    if need_ctx {
        let ctx = work.join("ctx");
        fs::create_dir(&ctx).unwrap();
        let t = Instant::now();
        let plan = common::generate_tree(&ctx, files, total, SEED).expect("generating the context");
        fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
        println!(
            "context: {files} files, {:.1} MB, 100 directories (generated in {:.1} s)",
            total as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        common::wait_out_racy_window();
        let changed = common::file_to_change(&plan);

        let mut d = Daemon::start(&bins, &work.join("daemon"));
        let rpc = Rpc::connect(&d.socket);
        // Cold build (fresh data dir), then a warm-up no-op.
        let cold = ctl_build(&mut d, &ctx);
        let hashed = rpc.status("").daemon.hashed_bytes;
        println!(
            "cold build (fresh daemon, every file hashed, the layer written): {} wall, {} ms daemon-side, {hashed} bytes hashed",
            fmt_d(Some(cold.wall)),
            cold.daemon.as_millis()
        );
        let warm = ctl_build(&mut d, &ctx);
        assert_eq!(warm.executed.len(), 0, "the warm-up rebuild ran steps");
        assert_eq!(warm.digest, cold.digest);
        let p = project_of(&rpc, &ctx);
        println!(
            "project {} is {}; warm-up rebuild {}",
            p.id,
            p.state,
            fmt_d(Some(warm.wall))
        );

        if wanted("noop") {
            let label = format!("{files} files / {:.0} MB", total as f64 / 1e6);
            noop_builds(&mut d, &rpc, &ctx, &cold.digest, &label, &mut rep);
            eprintln!(
                "warm bench: no-op builds done ({:.0} s)",
                t0.elapsed().as_secs_f64()
            );
        }
        if wanted("status") {
            status_latency(&bins, &mut d, &rpc, &mut rep);
            eprintln!(
                "warm bench: status done ({:.0} s)",
                t0.elapsed().as_secs_f64()
            );
        }
        let mut digest = cold.digest.clone();
        if wanted("dirty") {
            save_to_dirty(&mut d, &rpc, &ctx, &changed, &mut rep);
            digest = ctl_build(&mut d, &ctx).digest;
            eprintln!(
                "warm bench: save-to-dirty done ({:.0} s)",
                t0.elapsed().as_secs_f64()
            );
        }
        if wanted("cold") {
            first_index(&mut d, &rpc, &work, &ctx, &digest, &mut rep);
            eprintln!(
                "warm bench: first index done ({:.0} s)",
                t0.elapsed().as_secs_f64()
            );
        }
        drop(rpc);
        drop(d);
        fs::remove_dir_all(&ctx).unwrap();
    }
    if wanted("index") {
        index_memory(&bins, &work, &mut rep);
        eprintln!(
            "warm bench: index memory done ({:.0} s)",
            t0.elapsed().as_secs_f64()
        );
    }
    drop(work_dir);
    println!();
    println!(
        "load average at the end: {}",
        common::machine::load_average()
    );
    println!("Percentiles are nearest-rank. Whole-process figures are the wall time from");
    println!("spawning memobuild-ctl until it exits.");
    rep.print();
}
