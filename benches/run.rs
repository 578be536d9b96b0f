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
//! * `MEMOBUILD_BENCH_NO_DOCKER=1`  skip BuildKit even if it is reachable
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

use common::{timed, Bins, GenFile};

const BENCH: &str = "run";

fn env_usize(name: &str, default: usize) -> usize {
    common::env_usize(BENCH, name, default)
}

fn find_bins() -> Bins {
    common::find_bins(BENCH)
}
use memobuild_engine::exec::fsview::{FsView, LayerCache};
use memobuild_oci::{ChangeSet, Content, EntryKind, LayerEntry};
use memobuild_sandbox::{LayerInput, Network, OutputChunk, RunSpec, Sandbox, DEFAULT_PATH};
use memobuild_store::{LayerRecord, Store};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SEED: u64 = 0x6d65_6d6f_6275_696c; // "memobuil", as the e2e bench
const BUSYBOX: &str = "/bin/busybox";
const BASE: &str = "FROM scratch AS base
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
";
const TRIVIAL_TAIL: &str = "ARG NONCE\nRUN echo $NONCE > /n\n";
const TRIVIAL_RUN: &str = "RUN echo $NONCE > /n";
const CONTEXT_TAIL: &str = "COPY . /app/\nRUN find /app -type f | wc -l > /count\n";
const CONTEXT_COPY: &str = "COPY . /app/";
const CONTEXT_RUN: &str = "RUN find /app -type f | wc -l > /count";
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

fn wanted(part: &str) -> bool {
    match std::env::var("MEMOBUILD_BENCH_ONLY") {
        Ok(v) if !v.is_empty() => v.split(',').any(|p| p.trim() == part),
        _ => true,
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Binaries (as benches/e2e.rs)

// ---------------------------------------------------------------------------
// Timing helpers

fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Option<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                if let Some(mut s) = child.stdout.take() {
                    let _ = s.read_to_string(&mut out);
                }
                return status.success().then_some(out);
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[derive(Default, Clone)]
struct Samples(Vec<f64>);

impl Samples {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64());
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    /// Nearest-rank percentile (p99 of fewer than 100 samples is the maximum).
    fn pct(&self, p: f64) -> Option<f64> {
        if self.0.is_empty() {
            return None;
        }
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
        Some(v[rank.min(v.len()) - 1])
    }
    fn p50(&self) -> Option<f64> {
        self.pct(50.0)
    }
    fn p99(&self) -> Option<f64> {
        self.pct(99.0)
    }
}

fn secs(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s >= 1.0 => format!("{s:.2} s"),
        Some(s) if s >= 0.1 => format!("{:.0} ms", s * 1e3),
        Some(s) if s >= 0.01 => format!("{:.1} ms", s * 1e3),
        Some(s) => format!("{:.2} ms", s * 1e3),
    }
}

/// BuildKit's step times have 0.1 s resolution.
fn tenths(v: Option<f64>) -> String {
    v.map(|s| format!("{s:.1} s")).unwrap_or_else(|| "-".into())
}

/// A `Duration`'s `Debug` text ("88.845079ms", "1.2s", "850µs") back to a duration.
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ns") {
        (n, 1e-9)
    } else if let Some(n) = s.strip_suffix("µs").or_else(|| s.strip_suffix("us")) {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    num.parse::<f64>()
        .ok()
        .map(|v| Duration::from_secs_f64(v * scale))
}

// ---------------------------------------------------------------------------
// Processes and mounts we may leave behind on a failure

/// Command lines of live processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if !zombie && cmdline.contains(needle) {
            found.push((pid, cmdline.trim_end().to_string()));
        }
    }
    found
}

/// Stops every process whose command line names our private temp dir (a
/// containerd or shim this bench's daemons started and did not stop).
fn stop_processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let procs = processes_mentioning(&needle);
    for (pid, _) in &procs {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&needle).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for (pid, _) in processes_mentioning(&needle) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    procs
        .into_iter()
        .map(|(pid, c)| format!("{pid}: {c}"))
        .collect()
}

/// Mount points at or below `dir` (mountinfo field 5, octal escapes decoded).
fn mounts_below(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            m.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
        })
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.len()));
    out
}

/// Lazily unmounts whatever is still mounted below `dir` (only our temp dir).
fn unmount_below(dir: &Path) -> Vec<String> {
    let mounts = mounts_below(dir);
    for m in &mounts {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(m)
            .stderr(Stdio::null())
            .status();
    }
    mounts
}

// ---------------------------------------------------------------------------
// memobuild

struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(bins: &Bins, dir: &Path) -> Daemon {
        fs::create_dir_all(dir).unwrap();
        let socket = dir.join("memobuildd.sock");
        let log = dir.join("memobuildd.log");
        let log_file = fs::File::create(&log).unwrap();
        let child = Command::new(&bins.daemon)
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("MEMOBUILD_LOG", DAEMON_LOG)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bins.daemon.display()));
        let mut d = Daemon {
            child,
            dir: dir.to_path_buf(),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&d.socket).is_ok() {
                return d;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!(
                    "memobuildd exited at start-up ({status}); its log:\n{}",
                    fs::read_to_string(&d.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "memobuildd did not open {} within 20 s",
                d.socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "memobuildd died ({status}); its log:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    fn log_len(&self) -> usize {
        fs::metadata(&self.log)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    /// Layer unpacks (containerd upload + apply) logged after byte `from`.
    fn unpacks_since(&self, from: usize) -> Vec<Duration> {
        let text = fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[from.min(text.len())..]).into_owned();
        text.lines()
            .filter(|l| l.contains("unpacked layer"))
            .filter_map(|l| {
                let v = l.split("elapsed=").nth(1)?;
                parse_debug_duration(v.split_whitespace().next()?)
            })
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: the daemon stops its private containerd (up to 10 s), then exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !exited {
            eprintln!("run bench: memobuildd did not stop within 30 s; killing it");
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Anything still running from this daemon's dir is a leak: report and stop it.
        for p in stop_processes_under(&self.dir) {
            eprintln!("run bench: LEAK: process left by memobuildd: {p}");
        }
        for m in unmount_below(&self.dir) {
            eprintln!("run bench: LEAK: mount left by memobuildd: {m}");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[derive(Default)]
struct MbRun {
    wall: Duration,
    daemon: Duration,
    /// Steps that ran: instruction and the daemon's step time.
    executed: Vec<(String, Duration)>,
    cached: Vec<String>,
    digest: String,
    unpacks: Vec<Duration>,
}

impl MbRun {
    fn step(&self, instruction: &str) -> Option<Duration> {
        self.executed
            .iter()
            .find(|(i, _)| i == instruction)
            .map(|(_, d)| *d)
    }

    /// Executed steps other than ARG (which "runs" in 0 ms and writes nothing).
    fn executed_real(&self) -> Vec<&str> {
        self.executed
            .iter()
            .map(|(i, _)| i.as_str())
            .filter(|i| !i.starts_with("ARG "))
            .collect()
    }
}

fn memobuild_build(
    bins: &Bins,
    daemon: &mut Daemon,
    work: &Path,
    ctx: &Path,
    tag: &str,
    build_args: &[String],
) -> MbRun {
    daemon.assert_alive();
    let log_from = daemon.log_len();
    let mut cmd = Command::new(&bins.ctl);
    cmd.arg("--socket")
        .arg(&daemon.socket)
        .args(["build", "-t", tag, "--progress", "json"]);
    for a in build_args {
        cmd.arg("--build-arg").arg(a);
    }
    cmd.arg("-f")
        .arg(ctx.join("Dockerfile"))
        .arg(ctx)
        // Should the daemon vanish, an auto-started one stays in our temp dir.
        .env("XDG_DATA_HOME", work.join("xdg-data"));
    let (wall, out) = timed(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        panic!(
            "memobuild-ctl build failed ({}):\n{stdout}\n{}\ndaemon log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&daemon.log).unwrap_or_default()
        );
    }
    let mut run = MbRun {
        wall,
        ..MbRun::default()
    };
    let mut steps: HashMap<u64, String> = HashMap::new();
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = |v: &serde_json::Value| {
            v["step"]
                .as_u64()
                .and_then(|i| steps.get(&i).cloned())
                .unwrap_or_default()
        };
        match v["event"].as_str() {
            Some("planned") => {
                for s in v["steps"].as_array().into_iter().flatten() {
                    if let (Some(i), Some(text)) = (s["index"].as_u64(), s["instruction"].as_str())
                    {
                        steps.insert(i, text.to_string());
                    }
                }
            }
            Some("step_done") => run.executed.push((
                name(&v),
                Duration::from_millis(v["millis"].as_u64().unwrap_or(0)),
            )),
            Some("step_cached") => run.cached.push(name(&v)),
            Some("finished") => {
                run.digest = v["manifest_digest"].as_str().unwrap_or("").to_string();
                run.daemon = Duration::from_millis(v["millis"].as_u64().unwrap_or(0));
            }
            _ => {}
        }
    }
    assert!(!run.digest.is_empty(), "no finished event in:\n{stdout}");
    run.unpacks = daemon.unpacks_since(log_from);
    run
}

// ---------------------------------------------------------------------------
// Docker / BuildKit

/// One build-cache record, from `GET /system/df`.
#[derive(Debug, Clone)]
struct CacheRecord {
    id: String,
    parent: String,
    kind: String,
    description: String,
    size: i64,
    created: i128,
    last_used: i128,
    usage: i64,
}

/// What one of our BuildKit builds did, for attributing its records.
struct BkBuildLog {
    start: i128,
    end: i128,
    /// Description of the exec record of the Dockerfile's last RUN.
    anchor: &'static str,
    /// Steps (COPY/RUN) that ran, counted from the last one back to the first
    /// that was `CACHED`: that many records of the chain are this build's.
    executed_tail: usize,
    /// Sizes of what this build sent (Dockerfile, .dockerignore, context).
    dockerfile_len: i64,
    ignore_len: i64,
    big_context: Option<i64>,
}

struct BkStep {
    name: String,
    cached: bool,
    secs: Option<f64>,
}

struct BkRun {
    wall: Duration,
    image: String,
    steps: Vec<BkStep>,
    /// Largest "transferring context: N" of the build.
    transferred: u64,
}

impl BkRun {
    fn executed(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| !s.cached)
            .map(|s| s.name.as_str())
            .collect()
    }

    fn cached_count(&self) -> usize {
        self.steps.iter().filter(|s| s.cached).count()
    }

    fn step_secs(&self, prefix: &str) -> Option<f64> {
        self.steps
            .iter()
            .find(|s| !s.cached && s.name.starts_with(prefix))
            .and_then(|s| s.secs)
    }

    fn executed_tail(&self) -> usize {
        self.steps.iter().rev().take_while(|s| !s.cached).count()
    }
}

/// "1.98MB", "2B", "100.4MB" (go-units, decimal) to bytes.
fn parse_human_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let scale = match unit {
        "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    Some((num * scale) as u64)
}

/// Parses `--progress=plain` output: the COPY/RUN steps in order, and the
/// largest context transfer.
fn parse_plain(text: &str) -> (Vec<BkStep>, u64) {
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    let mut cached: BTreeSet<usize> = BTreeSet::new();
    let mut done: HashMap<usize, f64> = HashMap::new();
    let mut transferred = 0u64;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((num, body)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(n) = num.parse::<usize>() else {
            continue;
        };
        if body.starts_with('[') && !body.starts_with("[internal]") {
            if let Some((_, name)) = body.split_once("] ") {
                if name.starts_with("RUN ") || name.starts_with("COPY ") {
                    names.entry(n).or_insert_with(|| name.to_string());
                }
            }
        } else if body == "CACHED" {
            cached.insert(n);
        } else if let Some(t) = body.strip_prefix("DONE ") {
            if let Ok(s) = t.trim_end_matches('s').parse::<f64>() {
                done.insert(n, s);
            }
        } else if let Some(t) = body.strip_prefix("transferring context: ") {
            if let Some(size) = t.split_whitespace().next().and_then(parse_human_size) {
                transferred = transferred.max(size);
            }
        }
    }
    let steps = names
        .into_iter()
        .map(|(n, name)| BkStep {
            name,
            cached: cached.contains(&n),
            secs: done.get(&n).copied(),
        })
        .collect();
    (steps, transferred)
}

/// RFC 3339 UTC ("2026-11-22T07:56:04.494025446Z") to Unix nanoseconds.
fn parse_rfc3339(s: &str) -> Option<i128> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = match time.split_once('.') {
        Some((a, b)) => (a, b),
        None => (time, "0"),
    };
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    let mut frac = frac.to_string();
    frac.truncate(9);
    while frac.len() < 9 {
        frac.push('0');
    }
    Some(secs as i128 * 1_000_000_000 + frac.parse::<i128>().ok()?)
}

struct Docker {
    host: String,
    socket: PathBuf,
    version: String,
    driver: String,
    /// Parent of the private DOCKER_CONFIG dirs (one per client identity).
    config_root: PathBuf,
    config_dir: PathBuf,
    identities: usize,
    builds: Vec<BkBuildLog>,
    images: BTreeSet<String>,
    tags: BTreeSet<String>,
    /// Records pruned, records of ours still there after pruning.
    pruned: usize,
    failed: BTreeSet<String>,
    images_removed: usize,
}

impl Docker {
    fn detect(work: &Path) -> Result<Docker, String> {
        if !Path::new("/usr/bin/docker").is_file() {
            return Err("/usr/bin/docker is not installed".into());
        }
        let host = match std::env::var("DOCKER_HOST") {
            Ok(h) if !h.is_empty() => h,
            _ if Path::new("/tmp/dockerd/docker.sock").exists() => {
                "unix:///tmp/dockerd/docker.sock".into()
            }
            _ => "unix:///var/run/docker.sock".into(),
        };
        let socket = PathBuf::from(host.strip_prefix("unix://").ok_or_else(|| {
            format!("DOCKER_HOST={host}: this bench finds its own cache records through the API on a unix socket")
        })?);
        let config_root = work.join("docker-config");
        let mut d = Docker {
            host,
            socket,
            version: String::new(),
            driver: String::new(),
            config_dir: config_root.join("id0"),
            config_root,
            identities: 0,
            builds: Vec::new(),
            images: BTreeSet::new(),
            tags: BTreeSet::new(),
            pruned: 0,
            failed: BTreeSet::new(),
            images_removed: 0,
        };
        d.new_identity();
        let version = run_with_timeout(
            d.cmd().args(["version", "--format", "{{.Server.Version}}"]),
            Duration::from_secs(20),
        )
        .ok_or_else(|| format!("no Docker daemon answered at {}", d.host))?;
        d.version = version.trim().to_string();
        d.driver = run_with_timeout(
            d.cmd().args(["info", "--format", "{{.Driver}}"]),
            Duration::from_secs(20),
        )
        .unwrap_or_default()
        .trim()
        .to_string();
        d.records()?;
        Ok(d)
    }

    /// A fresh client identity: a new DOCKER_CONFIG, so a new build node id and
    /// new shared keys for BuildKit's local sources (no reuse of earlier uploads).
    fn new_identity(&mut self) {
        self.identities += 1;
        self.config_dir = self.config_root.join(format!("id{}", self.identities));
        fs::create_dir_all(&self.config_dir).unwrap();
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.env("DOCKER_HOST", &self.host)
            .env("DOCKER_BUILDKIT", "1")
            .env("DOCKER_CONFIG", &self.config_dir);
        c
    }

    /// `GET path` on the daemon's socket (HTTP/1.0, so no chunking).
    fn api_get(&self, path: &str) -> Result<serde_json::Value, String> {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket)
            .map_err(|e| format!("{}: {e}", self.socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no HTTP header end")?;
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "GET {path}: {}",
                head.lines().next().unwrap_or_default()
            ));
        }
        serde_json::from_slice(&raw[split + 4..]).map_err(|e| format!("GET {path}: {e}"))
    }

    fn records(&self) -> Result<Vec<CacheRecord>, String> {
        let v = self.api_get("/system/df")?;
        let t = |x: &serde_json::Value| x.as_str().and_then(parse_rfc3339).unwrap_or(0);
        Ok(v["BuildCache"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| CacheRecord {
                id: r["ID"].as_str().unwrap_or("").to_string(),
                parent: r["Parent"].as_str().unwrap_or("").to_string(),
                kind: r["Type"].as_str().unwrap_or("").to_string(),
                description: r["Description"].as_str().unwrap_or("").to_string(),
                size: r["Size"].as_i64().unwrap_or(-1),
                created: t(&r["CreatedAt"]),
                last_used: t(&r["LastUsedAt"]),
                usage: r["UsageCount"].as_i64().unwrap_or(0),
            })
            .collect())
    }

    /// `docker build --progress=plain`: wall time, image id and the steps.
    fn build(
        &mut self,
        ctx: &Path,
        tag: &str,
        build_args: &[String],
        anchor: &'static str,
        big_context: Option<i64>,
    ) -> BkRun {
        let iid = self.config_root.join("iid");
        let _ = fs::remove_file(&iid);
        let mut cmd = self.cmd();
        // This daemon runs with --bridge=none: BuildKit's default network fails
        // ("network bridge not found"). Host networking is also memobuild's default.
        cmd.args([
            "build",
            "--network",
            "host",
            "--progress",
            "plain",
            "--iidfile",
        ])
        .arg(&iid)
        .args(["-t", tag]);
        for a in build_args {
            cmd.arg("--build-arg").arg(a);
        }
        cmd.arg("-f").arg(ctx.join("Dockerfile")).arg(ctx);
        let start = now_ns();
        let (wall, out) = timed(&mut cmd);
        let end = now_ns();
        self.tags.insert(tag.to_string());
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let (steps, transferred) = parse_plain(&text);
        let image = fs::read_to_string(&iid)
            .unwrap_or_default()
            .trim()
            .to_string();
        if !image.is_empty() {
            self.images.insert(image.clone());
        }
        let run = BkRun {
            wall,
            image,
            steps,
            transferred,
        };
        self.builds.push(BkBuildLog {
            start,
            end,
            anchor,
            executed_tail: run.executed_tail(),
            dockerfile_len: file_len(&ctx.join("Dockerfile")),
            ignore_len: file_len(&ctx.join(".dockerignore")),
            big_context,
        });
        if !out.status.success() || run.image.is_empty() {
            panic!("docker build failed ({}):\n{text}", out.status);
        }
        run
    }

    /// The records of `all` this bench's builds created.
    fn claim(&self, all: &[CacheRecord]) -> Vec<CacheRecord> {
        let by_id: HashMap<&str, &CacheRecord> = all.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut ours: BTreeMap<String, CacheRecord> = BTreeMap::new();
        let inside = |t: i128, b: &BkBuildLog| t >= b.start && t <= b.end;
        for b in &self.builds {
            // 1. The step chain: our last RUN's exec record, then its parents,
            //    as many as the build ran (a CACHED step's record is someone's).
            for anchor in all
                .iter()
                .filter(|r| r.description == b.anchor && inside(r.created, b))
            {
                let mut cur = Some(anchor);
                let mut n = 0;
                while let Some(r) = cur {
                    if n >= b.executed_tail.max(1) || !inside(r.created, b) {
                        break;
                    }
                    ours.insert(r.id.clone(), r.clone());
                    n += 1;
                    cur = by_id.get(r.parent.as_str()).copied();
                }
            }
            // 2. Local sources created during the build whose size is what we sent.
            for r in all
                .iter()
                .filter(|r| r.kind == "source.local" && inside(r.created, b))
            {
                let sent = |len: i64| len > 0 && (r.size == len || r.size == 2 * len);
                let mine = match r.description.as_str() {
                    "local source for dockerfile" => sent(b.dockerfile_len),
                    "local source for context" => {
                        sent(b.ignore_len) || b.big_context.is_some_and(|big| r.size >= big / 2)
                    }
                    _ => false,
                };
                if mine {
                    ours.insert(r.id.clone(), r.clone());
                }
            }
        }
        // 3. The busybox-only context upload of the trivial scenario has the same
        //    size as anyone's busybox context: ours only if created during one of
        //    our builds and reused by a later one (same client identity).
        let busybox = file_len(Path::new(BUSYBOX));
        for r in all.iter().filter(|r| {
            r.kind == "source.local"
                && r.description == "local source for context"
                && (r.size == busybox || r.size == 2 * busybox)
                && r.usage >= 2
        }) {
            let created = self.builds.iter().any(|b| inside(r.created, b));
            let last = self.builds.iter().any(|b| inside(r.last_used, b));
            if created && last {
                ours.insert(r.id.clone(), r.clone());
            }
        }
        ours.into_values().collect()
    }

    /// Removes our images (tags, then the ids our builds produced) and the
    /// build-cache records we can attribute, one `--filter id=` at a time.
    fn clean(&mut self) {
        for tag in std::mem::take(&mut self.tags) {
            let _ = self
                .cmd()
                .args(["rmi", &tag])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for id in std::mem::take(&mut self.images) {
            // Only images left untagged: an identical image someone else tagged
            // stays (a plain `rmi ID` would delete it along with its one tag).
            let tags = run_with_timeout(
                self.cmd()
                    .args(["image", "inspect", "--format", "{{len .RepoTags}}", &id]),
                Duration::from_secs(30),
            );
            if tags.as_deref().map(str::trim) != Some("0") {
                continue;
            }
            let ok = self
                .cmd()
                .args(["rmi", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                self.images_removed += 1;
            }
        }
        for attempt in 0..3 {
            let all = match self.records() {
                Ok(all) => all,
                Err(e) => {
                    eprintln!("run bench: listing build cache: {e}");
                    return;
                }
            };
            let mut ours = self.claim(&all);
            if ours.is_empty() {
                self.failed.clear();
                return;
            }
            if attempt == 2 {
                self.failed = ours.into_iter().map(|r| r.id).collect();
                return;
            }
            // Children before parents.
            ours.sort_by_key(|r| std::cmp::Reverse(r.created));
            for r in &ours {
                let ok = self
                    .cmd()
                    .args([
                        "builder",
                        "prune",
                        "-af",
                        "--filter",
                        &format!("id={}", r.id),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    self.pruned += 1;
                }
            }
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        self.clean();
    }
}

fn file_len(p: &Path) -> i64 {
    fs::metadata(p).map(|m| m.len() as i64).unwrap_or(0)
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

#[derive(Default)]
struct Row {
    label: String,
    mb: Samples,
    mb_daemon: Samples,
    bk: Samples,
}

#[derive(Default)]
struct StepRow {
    label: String,
    mb: Samples,
    bk: Samples,
}

#[derive(Default)]
struct Report {
    side: Vec<Row>,
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
        println!();
        println!("Wall time of the whole client process. p50 = median; p99 is nearest-rank,");
        println!("i.e. the maximum when there are fewer than 100 runs. ratio = memobuild p50 / BuildKit p50");
        println!("(< 1: memobuild is faster).");
        println!();
        println!("| scenario | runs (mb/bk) | memobuild p50 | memobuild p99 | (daemon-side p50) | BuildKit p50 | BuildKit p99 | ratio |");
        println!("|---|---|---|---|---|---|---|---|");
        for r in &self.side {
            let ratio = match (r.mb.p50(), r.bk.p50()) {
                (Some(m), Some(b)) if docker => format!("{:.2}", m / b),
                _ => "-".into(),
            };
            println!(
                "| {} | {}/{} | {} | {} | {} | {} | {} | {} |",
                r.label,
                r.mb.len(),
                r.bk.len(),
                secs(r.mb.p50()),
                secs(r.mb.p99()),
                secs(r.mb_daemon.p50()),
                secs(r.bk.p50()),
                secs(r.bk.p99()),
                ratio
            );
        }
        if !self.steps.is_empty() {
            println!();
            println!("Step times as each builder reports them (memobuild: `step_done` millis;");
            println!("BuildKit: the step's `DONE` seconds in --progress=plain, 0.1 s resolution).");
            println!();
            println!("| step | runs (mb/bk) | memobuild p50 | memobuild p99 | BuildKit p50 | BuildKit p99 |");
            println!("|---|---|---|---|---|---|");
            for s in &self.steps {
                println!(
                    "| {} | {}/{} | {} | {} | {} | {} |",
                    s.label,
                    s.mb.len(),
                    s.bk.len(),
                    secs(s.mb.p50()),
                    secs(s.mb.p99()),
                    tenths(s.bk.p50()),
                    tenths(s.bk.p99())
                );
            }
        }
        if !self.phases.is_empty() {
            println!();
            println!(
                "memobuild phases, in-process (`Sandbox::run` timings, layer writer, containerd):"
            );
            println!();
            println!("| phase | n | p50 | p99 |");
            println!("|---|---|---|---|");
            for (label, s) in &self.phases {
                println!(
                    "| {label} | {} | {} | {} |",
                    s.len(),
                    secs(s.p50()),
                    secs(s.p99())
                );
            }
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("* {n}");
            }
        }
        if !docker {
            println!("\nBuildKit columns skipped: no usable Docker daemon.");
        }
        let _ = std::io::stdout().flush();
    }
}

// ---------------------------------------------------------------------------
// Scenario 1: one trivial RUN

fn trivial(bins: &Bins, work: &Path, docker: &mut Option<Docker>, steps: usize, rep: &mut Report) {
    let ctx = work.join("trivial");
    write_context(&ctx, TRIVIAL_TAIL, dockerfile_len(0));
    let mut daemon = Daemon::start(bins, &work.join("d-trivial"));
    // Unique to this process, so no cache anywhere (BuildKit's is shared) has it.
    let salt = format!("{}-{}", std::process::id(), now_ns());
    let arg = |n: usize| vec![format!("NONCE={salt}-{n}")];

    // First build: fresh data dir (private containerd starts at the first RUN,
    // both layers are unpacked); BuildKit: our records pruned, new identity.
    let mut first = Row {
        label: "trivial RUN: first build (memobuild: fresh data dir; BuildKit: our cache pruned)"
            .into(),
        ..Row::default()
    };
    let r = memobuild_build(bins, &mut daemon, work, &ctx, TAG_TRIVIAL, &arg(0));
    assert!(r.cached.is_empty(), "first build used the cache");
    first.mb.push(r.wall);
    first.mb_daemon.push(r.daemon);
    rep.notes.push(format!(
        "memobuild first trivial build: {} wall; steps {}; layer unpacks {}",
        secs(Some(r.wall.as_secs_f64())),
        r.executed
            .iter()
            .map(|(i, d)| format!("`{}` {}", short(i), secs(Some(d.as_secs_f64()))))
            .collect::<Vec<_>>()
            .join(", "),
        r.unpacks
            .iter()
            .map(|d| secs(Some(d.as_secs_f64())))
            .collect::<Vec<_>>()
            .join(" + ")
    ));
    if let Some(dk) = docker.as_mut() {
        dk.clean();
        dk.new_identity();
        let b = dk.build(&ctx, TAG_TRIVIAL, &arg(0), TRIVIAL_EXEC, None);
        first.bk.push(b.wall);
        rep.notes.push(format!(
            "BuildKit first trivial build: {} wall, {} of {} steps CACHED (records other clients of this daemon made from the same busybox)",
            secs(Some(b.wall.as_secs_f64())),
            b.cached_count(),
            b.steps.len()
        ));
    }
    rep.side.push(first);

    let mut row = Row {
        label: "trivial RUN: `RUN echo $NONCE > /n` re-run (NONCE changed), rest cached".into(),
        ..Row::default()
    };
    let mut step = StepRow {
        label: format!("`{TRIVIAL_RUN}`"),
        ..StepRow::default()
    };
    let mut overhead = Samples::default();
    let mut mb_digest = String::new();
    let mut bk_image = String::new();
    for i in 1..=steps {
        let mut mb = |row: &mut Row, step: &mut StepRow| {
            let r = memobuild_build(bins, &mut daemon, work, &ctx, TAG_TRIVIAL, &arg(i));
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
        let mut bk = |row: &mut Row, step: &mut StepRow, dk: &mut Docker| {
            let b = dk.build(&ctx, TAG_TRIVIAL, &arg(i), TRIVIAL_EXEC, None);
            assert_eq!(
                b.executed(),
                vec![format!("RUN echo {salt}-{i} > /n").as_str()],
                "BuildKit re-ran other steps"
            );
            assert_ne!(b.image, bk_image, "NONCE did not change BuildKit's image");
            bk_image = b.image.clone();
            row.bk.push(b.wall);
            if let Some(s) = b.step_secs("RUN echo") {
                step.bk.push(Duration::from_secs_f64(s));
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
        secs(overhead.p50())
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
    let mut daemon = Daemon::start(bins, &work.join("d-stage"));
    let edit = |n: usize| {
        fs::write(
            ctx.join("src/other.txt"),
            format!("edit {n} of a file not passed on\n"),
        )
        .unwrap();
    };
    edit(0);
    let first = memobuild_build(bins, &mut daemon, work, &ctx, TAG_STAGE, &[]);
    if let Some(dk) = docker.as_mut() {
        dk.build(&ctx, TAG_STAGE, &[], STAGE_EXEC, None);
    }
    let mut row = Row {
        label: "stage edit: a builder-stage source changed, the file it passes on did not (builder re-runs, final stage cached)".into(),
        ..Row::default()
    };
    for i in 1..=runs {
        edit(i);
        let mut mb = |row: &mut Row| {
            let r = memobuild_build(bins, &mut daemon, work, &ctx, TAG_STAGE, &[]);
            assert!(
                r.step(STAGE_FINAL_RUN).is_none(),
                "memobuild re-ran the final stage: {:?}",
                r.executed
            );
            assert_eq!(r.digest, first.digest, "the image changed");
            row.mb.push(r.wall);
            row.mb_daemon.push(r.daemon);
        };
        let bk = |row: &mut Row, dk: &mut Docker| {
            let b = dk.build(&ctx, TAG_STAGE, &[], STAGE_EXEC, None);
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
    let mut cold = Row {
        label: format!("{expected_count}-file context: cold build (COPY . /app/ + RUN find)"),
        ..Row::default()
    };
    let mut change = Row {
        label: format!(
            "{expected_count}-file context: rebuild after 1 file changed (COPY + RUN re-run)"
        ),
        ..Row::default()
    };
    let mut s_copy_cold = StepRow {
        label: format!("`{CONTEXT_COPY}`, cold"),
        ..StepRow::default()
    };
    let mut s_run_cold = StepRow {
        label: format!("`{CONTEXT_RUN}`, cold"),
        ..StepRow::default()
    };
    let mut s_copy = StepRow {
        label: format!("`{CONTEXT_COPY}`, 1 file changed"),
        ..StepRow::default()
    };
    let mut s_run = StepRow {
        label: format!("`{CONTEXT_RUN}`, 1 file changed"),
        ..StepRow::default()
    };
    let mut unpack_cold = Samples::default();
    let mut unpack_change = Samples::default();
    let mut bk_cached = Vec::new();
    let mut bk_sent = Vec::new();
    let mut daemon: Option<Daemon> = None;
    let mut digest = String::new();

    for i in 0..runs {
        let mut mb = |cold: &mut Row, a: &mut StepRow, b: &mut StepRow| {
            drop(daemon.take());
            let mut d = Daemon::start(bins, &work.join(format!("d-ctx{i}")));
            let r = memobuild_build(bins, &mut d, work, ctx, TAG_CONTEXT, &[]);
            assert!(r.cached.is_empty(), "cold build used the cache");
            assert_eq!(r.executed_real().len(), 4, "cold build steps");
            cold.mb.push(r.wall);
            cold.mb_daemon.push(r.daemon);
            a.mb.push(r.step(CONTEXT_COPY).unwrap());
            b.mb.push(r.step(CONTEXT_RUN).unwrap());
            unpack_cold.push(r.unpacks.iter().sum());
            digest = r.digest.clone();
            daemon = Some(d);
        };
        let mut bk = |cold: &mut Row, a: &mut StepRow, b: &mut StepRow, dk: &mut Docker| {
            dk.clean();
            dk.new_identity();
            let r = dk.build(ctx, TAG_CONTEXT, &[], CONTEXT_EXEC, Some(total_bytes));
            cold.bk.push(r.wall);
            if let Some(s) = r.step_secs(CONTEXT_COPY) {
                a.bk.push(Duration::from_secs_f64(s));
            }
            if let Some(s) = r.step_secs(CONTEXT_RUN) {
                b.bk.push(Duration::from_secs_f64(s));
            }
            assert!(
                r.executed().contains(&CONTEXT_COPY) && r.executed().contains(&CONTEXT_RUN),
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
        let mut mb = |change: &mut Row, a: &mut StepRow, b: &mut StepRow| {
            let r = memobuild_build(bins, d, work, ctx, TAG_CONTEXT, &[]);
            assert_eq!(
                r.executed_real(),
                vec![CONTEXT_COPY, CONTEXT_RUN],
                "steps re-run after a one-file change"
            );
            assert_ne!(r.digest, digest, "the change did not change the image");
            digest = r.digest.clone();
            change.mb.push(r.wall);
            change.mb_daemon.push(r.daemon);
            a.mb.push(r.step(CONTEXT_COPY).unwrap());
            b.mb.push(r.step(CONTEXT_RUN).unwrap());
            unpack_change.push(r.unpacks.iter().sum());
        };
        let mut bk = |change: &mut Row, a: &mut StepRow, b: &mut StepRow, dk: &mut Docker| {
            let r = dk.build(ctx, TAG_CONTEXT, &[], CONTEXT_EXEC, Some(total_bytes));
            assert_eq!(
                r.executed(),
                vec![CONTEXT_COPY, CONTEXT_RUN],
                "BuildKit steps re-run after a one-file change"
            );
            assert_ne!(r.image, bk_image, "BuildKit did not see the change");
            bk_image = r.image.clone();
            change.bk.push(r.wall);
            if let Some(s) = r.step_secs(CONTEXT_COPY) {
                a.bk.push(Duration::from_secs_f64(s));
            }
            if let Some(s) = r.step_secs(CONTEXT_RUN) {
                b.bk.push(Duration::from_secs_f64(s));
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
        secs(unpack_cold.p50()),
        secs(unpack_change.p50())
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
        (!changes.is_empty()).then(|| changes.write(&st.blobs, 0).unwrap())
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
    let l1 = c.write(&store.blobs, 0).unwrap();

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
            let l3 = tokio::task::spawn_blocking(move || changes.write(&st.blobs, 0).unwrap())
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
    let bins = find_bins();

    // Short path: containerd's socket (under each data dir) must fit in sun_path.
    let work_dir = tempfile::Builder::new()
        .prefix("mb-runbench-")
        .tempdir_in("/tmp")
        .expect("creating a temp dir in /tmp");
    let work = work_dir.path().to_path_buf();

    println!("memobuild RUN-step benchmark");
    print_machine();

    let mut docker = if std::env::var("MEMOBUILD_BENCH_NO_DOCKER").is_ok_and(|v| !v.is_empty()) {
        println!("BuildKit: skipped (MEMOBUILD_BENCH_NO_DOCKER)");
        None
    } else {
        match Docker::detect(&work) {
            Ok(d) => {
                println!(
                    "BuildKit: Docker {} ({} storage driver) at {}, `docker build --network host`",
                    d.version, d.driver, d.host
                );
                Some(d)
            }
            Err(why) => {
                println!("BuildKit: skipped ({why}); only memobuild rows are measured");
                None
            }
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
        write_context(&ctx, CONTEXT_TAIL, dockerfile_len(1));
        let changed = plan
            .iter()
            .filter(|f| f.rel.starts_with("d9/"))
            .min_by_key(|f| f.size.abs_diff(10_000))
            .cloned()
            .expect("a file in d9");
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
        rep.notes.push(format!(
            "Docker clean-up: {} images removed, {} build-cache records pruned (attributed to this bench's {} builds); {} of ours could not be pruned{}",
            dk.images_removed,
            dk.pruned,
            dk.builds.len(),
            dk.failed.len(),
            if dk.failed.is_empty() {
                String::new()
            } else {
                format!(": {:?}", dk.failed)
            }
        ));
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

fn print_machine() {
    let machine = common::machine_line();
    let containerd = Command::new("containerd")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "not installed".into());
    let runc = Command::new("runc")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_else(|_| "not installed".into());
    println!("{machine}");
    println!("memobuild's sandbox: {containerd}; {runc}");
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
