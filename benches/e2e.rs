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

use common::{timed, Bins, GenFile};

const BENCH: &str = "e2e";

fn env_usize(name: &str, default: usize) -> usize {
    common::env_usize(BENCH, name, default)
}

fn find_bins() -> Bins {
    common::find_bins(BENCH)
}
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SEED: u64 = 0x6d65_6d6f_6275_696c; // "memobuil"
const CACHED_RUNS: usize = 30;
const DOCKER_CACHED_RUNS: usize = 10;

// ---------------------------------------------------------------------------
// Binaries

// ---------------------------------------------------------------------------
// Timing helpers

/// Runs a command with a deadline; `None` if it failed or timed out.
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
                    use std::io::Read;
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

// ---------------------------------------------------------------------------
// memobuild

struct Daemon {
    child: Child,
    socket: PathBuf,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(bins: &Bins, dir: &Path) -> Daemon {
        fs::create_dir_all(dir).unwrap();
        let socket = dir.join("memobuildd.sock");
        let data_dir = dir.join("data");
        let log = dir.join("memobuildd.log");
        let log_file = fs::File::create(&log).unwrap();
        let child = Command::new(&bins.daemon)
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(&data_dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bins.daemon.display()));
        let mut d = Daemon {
            child,
            socket,
            data_dir,
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
            if Instant::now() > deadline {
                panic!("memobuildd did not open {} within 20 s", d.socket.display());
            }
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM (clean shutdown), then SIGKILL if it lingers.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = fs::remove_dir_all(&self.data_dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.data_dir);
    }
}

struct MbRun {
    wall: Duration,
    /// The daemon's own idea of the build time (the `finished` event).
    daemon_millis: u64,
    done: usize,
    cached: usize,
    digest: String,
}

fn memobuild_build(
    bins: &Bins,
    daemon: &mut Daemon,
    work: &Path,
    ctx: &Path,
    dockerfile: &str,
    tag: &str,
) -> MbRun {
    daemon.assert_alive();
    let (wall, out) = timed(
        Command::new(&bins.ctl)
            .arg("--socket")
            .arg(&daemon.socket)
            .args(["build", "-t", tag, "--progress", "json", "-f"])
            .arg(ctx.join(dockerfile))
            .arg(ctx)
            // Should the daemon vanish, an auto-started one stays in our temp dir.
            .env("XDG_DATA_HOME", work.join("xdg-data")),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        panic!(
            "memobuild-ctl build failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut run = MbRun {
        wall,
        daemon_millis: 0,
        done: 0,
        cached: 0,
        digest: String::new(),
    };
    for line in stdout.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match v["event"].as_str() {
            Some("step_done") => run.done += 1,
            Some("step_cached") => run.cached += 1,
            Some("finished") => {
                run.digest = v["manifest_digest"].as_str().unwrap_or("").to_string();
                run.daemon_millis = v["millis"].as_u64().unwrap_or(0);
            }
            _ => {}
        }
    }
    assert!(!run.digest.is_empty(), "no finished event in:\n{stdout}");
    run
}

// ---------------------------------------------------------------------------
// Docker (BuildKit)

struct Docker {
    host: String,
    version: String,
    driver: String,
    /// Build-cache records our builds created (pruned by id, never the rest:
    /// the daemon may hold other people's cache).
    created: BTreeSet<String>,
    tags: BTreeSet<String>,
}

impl Docker {
    fn cmd(&self) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.env("DOCKER_HOST", &self.host).env("DOCKER_BUILDKIT", "1");
        c
    }

    fn detect() -> Result<Docker, String> {
        if std::env::var("MEMOBUILD_BENCH_NO_DOCKER").is_ok_and(|v| !v.is_empty() && v != "0") {
            return Err("MEMOBUILD_BENCH_NO_DOCKER is set".into());
        }
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
        let mut d = Docker {
            host,
            version: String::new(),
            driver: String::new(),
            created: BTreeSet::new(),
            tags: BTreeSet::new(),
        };
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
        Ok(d)
    }

    /// Ids of every build-cache record in the daemon.
    fn cache_ids(&self) -> BTreeSet<String> {
        let out = self
            .cmd()
            .args(["system", "df", "-v"])
            .stderr(Stdio::null())
            .output()
            .expect("docker system df");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut ids = BTreeSet::new();
        let mut in_cache = false;
        for line in text.lines() {
            if line.starts_with("CACHE ID") {
                in_cache = true;
                continue;
            }
            if in_cache {
                if let Some(id) = line.split_whitespace().next() {
                    ids.insert(id.to_string());
                }
            }
        }
        ids
    }

    /// `docker build -q`: wall time and image id. Records the cache records it created.
    fn build(&mut self, ctx: &Path, dockerfile: &str, tag: &str) -> (Duration, String) {
        let before = self.cache_ids();
        let (wall, out) = timed(
            self.cmd()
                .args(["build", "-q", "-t", tag, "-f"])
                .arg(ctx.join(dockerfile))
                .arg(ctx),
        );
        self.tags.insert(tag.to_string());
        let after = self.cache_ids();
        self.created.extend(after.difference(&before).cloned());
        if !out.status.success() {
            panic!(
                "docker build failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (
            wall,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    }

    /// Forgets everything our builds left: images and their build-cache records.
    fn clean(&mut self) {
        for tag in std::mem::take(&mut self.tags) {
            let _ = self
                .cmd()
                .args(["rmi", "-f", &tag])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // One id per call: this daemon refuses several values for one filter.
        for id in std::mem::take(&mut self.created) {
            let _ = self
                .cmd()
                .args(["builder", "prune", "-af", "--filter", &format!("id={id}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
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

#[derive(Default)]
struct Row {
    label: String,
    mb: Samples,
    mb_daemon: Samples,
    bk: Samples,
}

fn main() {
    let files = env_usize("MEMOBUILD_BENCH_FILES", 10_000).max(10);
    let runs = env_usize("MEMOBUILD_BENCH_RUNS", 5).max(1);
    let total = files as u64 * 10_000;
    let bins = find_bins();

    let work_dir = tempfile::Builder::new()
        .prefix("memobuild-e2e-")
        .tempdir_in("/tmp")
        .expect("creating a temp dir in /tmp");
    let work = work_dir.path().to_path_buf();
    let ctx = work.join("ctx");
    fs::create_dir(&ctx).unwrap();

    println!("memobuild e2e benchmark");
    print_machine();
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
    let changed: GenFile = plan
        .iter()
        .filter(|f| f.rel.starts_with("d9/"))
        .min_by_key(|f| f.size.abs_diff(10_000))
        .cloned()
        .expect("a file in d9");
    println!(
        "one-file change edits {} ({} bytes)",
        changed.rel, changed.size
    );

    // Hashing reference.
    let mut b3 = Samples::default();
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

    let mut docker = match Docker::detect() {
        Ok(d) => {
            println!(
                "BuildKit: Docker {} ({} storage driver) at {}",
                d.version, d.driver, d.host
            );
            Some(d)
        }
        Err(why) => {
            println!("BuildKit: skipped ({why}); only memobuild rows are measured");
            None
        }
    };

    let mut rows: Vec<Row> = Vec::new();
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
        let mut cold = Row {
            label: format!("{}: cold build", v.name),
            ..Row::default()
        };
        let mut cold_digest = String::new();
        for i in 0..runs {
            let mut mb = || {
                drop(daemon.take());
                daemon_n += 1;
                let mut d = Daemon::start(&bins, &work.join(format!("daemon{daemon_n}")));
                let r = memobuild_build(&bins, &mut d, &work, &ctx, v.dockerfile, &tag);
                assert_eq!(r.cached, 0, "cold build used the cache");
                daemon = Some(d);
                r
            };
            let bk = |docker: &mut Docker| {
                docker.clean();
                docker.build(&ctx, v.dockerfile, &tag).0
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
            cold.mb_daemon.push(Duration::from_millis(r.daemon_millis));
        }
        rows.push(cold);

        // (b) Fully cached rebuilds. One untimed warm-up each first.
        let d = daemon.as_mut().unwrap();
        let mut cached = Row {
            label: format!("{}: cached rebuild, nothing changed", v.name),
            ..Row::default()
        };
        memobuild_build(&bins, d, &work, &ctx, v.dockerfile, &tag);
        let mut image_id = docker
            .as_mut()
            .map(|dk| dk.build(&ctx, v.dockerfile, &tag).1);
        let every = CACHED_RUNS.div_ceil(DOCKER_CACHED_RUNS);
        for i in 0..CACHED_RUNS {
            let r = memobuild_build(&bins, d, &work, &ctx, v.dockerfile, &tag);
            assert_eq!(r.done, 0, "a cached rebuild re-ran {} steps", r.done);
            assert_eq!(r.digest, cold_digest, "cached rebuild changed the image");
            cached.mb.push(r.wall);
            cached
                .mb_daemon
                .push(Duration::from_millis(r.daemon_millis));
            if i % every == every - 1 {
                if let Some(dk) = docker.as_mut() {
                    let (t, id) = dk.build(&ctx, v.dockerfile, &tag);
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
        let mut change = Row {
            label: format!("{}: rebuild after 1 file changed", v.name),
            ..Row::default()
        };
        let mut digest = cold_digest.clone();
        for i in 0..runs {
            generation += 1;
            common::rewrite_file(&ctx, &changed, generation).unwrap();
            let mut mb = || {
                let r = memobuild_build(&bins, d, &work, &ctx, v.dockerfile, &tag);
                assert_eq!(
                    r.done, v.steps_after_change,
                    "steps re-run after a one-file change"
                );
                assert_ne!(r.digest, digest, "the change did not change the image");
                digest = r.digest.clone();
                change
                    .mb_daemon
                    .push(Duration::from_millis(r.daemon_millis));
                r.wall
            };
            let mut bk = |dk: &mut Docker| {
                let (t, id) = dk.build(&ctx, v.dockerfile, &tag);
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
    if let Some(dk) = docker.as_mut() {
        dk.clean();
    }
    drop(work_dir);

    print_table(&rows, &b3, total, docker.is_some());
}

fn secs(v: Option<f64>) -> String {
    match v {
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
        None => "-".into(),
    }
}

fn print_table(rows: &[Row], b3: &Samples, total: u64, docker: bool) {
    println!();
    println!("Wall time of the whole client process. p50 = median; p99 is nearest-rank,");
    println!(
        "i.e. the maximum when there are fewer than 100 runs. ratio = memobuild p50 / BuildKit p50"
    );
    println!("(< 1: memobuild is faster).");
    println!();
    println!("| scenario | runs (mb/bk) | memobuild p50 | memobuild p99 | (daemon-side p50) | BuildKit p50 | BuildKit p99 | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        let ratio = match (r.mb.p50(), r.bk.p50()) {
            (Some(m), Some(b)) if docker => format!("{:.2}", m / b),
            _ => "-".into(),
        };
        println!(
            "| {} | {}/{} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.mb.0.len(),
            r.bk.0.len(),
            secs(r.mb.p50()),
            secs(r.mb.p99()),
            secs(r.mb_daemon.p50()),
            secs(r.bk.p50()),
            secs(r.bk.p99()),
            ratio
        );
    }
    if let Some(p50) = b3.p50() {
        println!(
            "| reference: b3sum over the same files (find, xargs) | {}/- | {} | {} | ({:.0} MB/s) | | | |",
            b3.0.len(),
            secs(Some(p50)),
            secs(b3.p99()),
            total as f64 / 1e6 / p50
        );
    }
    if !docker {
        println!("\nBuildKit rows skipped: no Docker daemon reachable.");
    }
    let _ = std::io::stdout().flush();
}

fn print_machine() {
    let machine = common::machine_line();
    println!("{machine}");
}
