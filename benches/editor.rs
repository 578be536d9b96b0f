//! Editor benchmark (issue 13, "Speed"): what an editor sees of the daemon.
//! Drives the real `memobuildd` + `memobuild-ctl` release binaries on a
//! private socket and data dir; the LSP client is scripted here, as in
//! tests/lsp.rs.
//!
//! Run: `cargo build --release --workspace --bins && cargo bench --bench editor`.
//!
//! Scenarios (targets from issue 13):
//!
//! 1. `lens`: save -> LSP code lens updated, on a 10,000-file / 100 MB context
//!    (`FROM scratch`, `COPY . /app/`) open in `memobuild-ctl lsp`: from a
//!    file's write returning to the `textDocument/codeLens` answer that shows
//!    the step `dirty` (the client asks when the server sends
//!    `workspace/codeLens/refresh`). A build restores `clean` between samples.
//!    Target p99 <= 50 ms.
//! 2. `status`: `memobuild-ctl status --json`, whole process, one project
//!    registered. Target p99 <= 5 ms.
//! 3. `eager`: with eager builds on, the COPY + RUN scenario of benches/run.rs
//!    (busybox base, the 10,000-file context, `COPY . /app/`, `RUN find /app
//!    -type f | wc -l > /count`): save -> image ready (the project `clean`
//!    again, polled every 5 ms over the RPC), reported; and `memobuild-ctl
//!    build` issued 1 s after a save, whole process. Target p50 <= 20 ms.
//!
//! Environment:
//!
//! * `MEMOBUILD_BENCH_FILES=N`          context of N files (N x 10 kB), default 10000
//! * `MEMOBUILD_BENCH_LENS_SAMPLES=N`   default 50
//! * `MEMOBUILD_BENCH_STATUS_RUNS=N`    default 200
//! * `MEMOBUILD_BENCH_EAGER_SAMPLES=N`  default 10 (each: one save timed to ready, one build 1 s after a save)
//! * `MEMOBUILD_BENCH_ONLY=a,b`         run only some of: lens, status, eager
//!
//! Percentiles are nearest-rank (p99 of fewer than 100 samples is the maximum).

mod common;

use serde_json::{json, Value};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BENCH: &str = "editor";
const SEED: u64 = 0x6564_6974_6f72; // "editor"

fn knob(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|_| {
            eprintln!("{BENCH} bench: {name}={v:?} is not a number");
            std::process::exit(2)
        }),
        _ => default,
    }
}

fn wanted(part: &str) -> bool {
    match std::env::var("MEMOBUILD_BENCH_ONLY") {
        Ok(v) if !v.is_empty() => v.split(',').any(|p| p.trim() == part),
        _ => true,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn report(what: &str, mut samples: Vec<Duration>, target: &str) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: n={} p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target: {target})",
        samples.len(),
        ms(percentile(&samples, 50.0)),
        ms(percentile(&samples, 99.0)),
        ms(samples.last().copied().unwrap_or_default()),
    );
}

struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    ctl: PathBuf,
}

impl Daemon {
    fn start(bins: &common::Bins, dir: &Path) -> Daemon {
        fs::create_dir_all(dir).unwrap();
        let socket = dir.join("memobuildd.sock");
        let log = dir.join("memobuildd.log");
        let log_file = fs::File::create(&log).unwrap();
        let child = Command::new(&bins.daemon)
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("MEMOBUILD_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bins.daemon.display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "memobuildd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            socket,
            log,
            ctl: bins.ctl.clone(),
        }
    }

    fn ctl(&self, args: &[&str]) -> (Duration, std::process::Output) {
        let started = Instant::now();
        let out = Command::new(&self.ctl)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run memobuild-ctl");
        (started.elapsed(), out)
    }

    fn ok(&self, args: &[&str]) -> Duration {
        let (t, out) = self.ctl(args);
        assert!(
            out.status.success(),
            "memobuild-ctl {args:?}: {}\n--- daemon log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&self.log).unwrap_or_default()
        );
        t
    }

    fn project(&self, ctx: &Path) -> Value {
        let (_, out) = self.ctl(&["status", "--json", ctx.to_str().unwrap()]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["projects"][0].clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `memobuild-ctl lsp` with a scripted client on its stdin/stdout.
struct Lsp {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<Value>,
    next_id: u64,
}

impl Lsp {
    fn start(d: &Daemon) -> Lsp {
        let mut child = Command::new(&d.ctl)
            .arg("--socket")
            .arg(&d.socket)
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("memobuild-ctl lsp");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        length = v.parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                if r.read_exact(&mut body).is_err() {
                    return;
                }
                if let Ok(v) = serde_json::from_slice(&body) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        Lsp {
            child,
            stdin,
            rx,
            next_id: 0,
        }
    }

    fn send(&mut self, message: Value) {
        let body = message.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next message `ok` takes (others are dropped), within 30 s.
    fn wait(&mut self, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) if ok(&m) => return m,
                Ok(_) => {}
                Err(_) => panic!("{BENCH} bench: the language server went quiet for 30 s"),
            }
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        self.wait(|m| m["id"] == id && m.get("method").is_none())["result"].clone()
    }

    fn lens_titles(&mut self, uri: &str) -> Vec<String> {
        let lenses = self.request(
            "textDocument/codeLens",
            json!({"textDocument": {"uri": uri}}),
        );
        lenses
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| l["command"]["title"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Rewrites `rel` under `root` with new content of the same size.
fn save(root: &Path, rel: &str, generation: u64) {
    let path = root.join(rel);
    let mut bytes = fs::read(&path).unwrap();
    let stamp = format!("{generation:016x}");
    if bytes.len() < stamp.len() {
        bytes = stamp.into_bytes();
    } else {
        bytes[..stamp.len()].copy_from_slice(stamp.as_bytes());
    }
    fs::write(&path, bytes).unwrap();
}

fn lens_and_status(bins: &common::Bins, work: &Path, files: usize) {
    let ctx = work.join("ctx-scratch");
    fs::create_dir_all(&ctx).unwrap();
    let tree = common::generate_tree(&ctx, files, files as u64 * 10_000, SEED).unwrap();
    common::wait_out_racy_window();
    fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY . /app/\n").unwrap();
    let ctx = ctx.canonicalize().unwrap();
    let c = ctx.to_str().unwrap().to_string();
    let d = Daemon::start(bins, &work.join("daemon-lens"));
    d.ok(&["build", "--progress", "quiet", &c]);

    if wanted("lens") {
        let samples = knob("MEMOBUILD_BENCH_LENS_SAMPLES", 50);
        let uri = format!("file://{}", ctx.join("Dockerfile").display());
        let mut lsp = Lsp::start(&d);
        lsp.request(
            "initialize",
            json!({"processId": null, "rootUri": null,
                   "capabilities": {"workspace": {"codeLens": {"refreshSupport": true}}}}),
        );
        lsp.send(json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
        lsp.send(
            json!({"jsonrpc": "2.0", "method": "textDocument/didOpen", "params":
            {"textDocument": {"uri": uri, "languageId": "dockerfile", "version": 1, "text": ""}}}),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while lsp.lens_titles(&uri).is_empty() {
            assert!(Instant::now() < deadline, "no lenses");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut times = Vec::new();
        for i in 0..samples {
            let file = &tree[(i * 7919) % tree.len()];
            let saved = Instant::now();
            save(&ctx, &file.rel, i as u64 + 1);
            let written = Instant::now();
            loop {
                let refresh = lsp.wait(|m| m["method"] == "workspace/codeLens/refresh");
                lsp.send(json!({"jsonrpc": "2.0", "id": refresh["id"], "result": null}));
                if lsp.lens_titles(&uri).iter().any(|t| t.starts_with("dirty")) {
                    break;
                }
            }
            times.push(written.elapsed());
            let _ = saved;
            // Back to clean, and the server's view of it settled.
            d.ok(&["build", "--progress", "quiet", &c]);
            let deadline = Instant::now() + Duration::from_secs(30);
            while lsp
                .lens_titles(&uri)
                .iter()
                .any(|t| !(t == "cached" || t == "built"))
            {
                assert!(Instant::now() < deadline, "lenses never clean again");
                std::thread::sleep(Duration::from_millis(10));
            }
            while lsp.rx.try_recv().is_ok() {}
        }
        report(
            &format!("save -> code lens updated ({files} files)"),
            times,
            "p99 <= 50 ms",
        );
        lsp.request("shutdown", Value::Null);
        lsp.send(json!({"jsonrpc": "2.0", "method": "exit"}));
        let _ = lsp.child.wait();
    }

    if wanted("status") {
        let runs = knob("MEMOBUILD_BENCH_STATUS_RUNS", 200);
        for _ in 0..10 {
            d.ok(&["status", "--json"]);
        }
        let times = (0..runs).map(|_| d.ok(&["status", "--json"])).collect();
        report(
            "`memobuild-ctl status --json`, whole process",
            times,
            "p99 <= 5 ms",
        );
    }
}

fn eager(bins: &common::Bins, work: &Path, files: usize) {
    let ctx = work.join("ctx-run");
    fs::create_dir_all(&ctx).unwrap();
    let tree = common::generate_tree(&ctx, files, files as u64 * 10_000, SEED).unwrap();
    common::wait_out_racy_window();
    fs::copy("/bin/busybox", ctx.join("busybox"))
        .expect("/bin/busybox is missing: apt-get install busybox-static");
    fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch AS base\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         FROM base\nCOPY . /app/\nRUN find /app -type f | wc -l > /count\n",
    )
    .unwrap();
    let ctx = ctx.canonicalize().unwrap();
    let c = ctx.to_str().unwrap().to_string();
    let d = Daemon::start(bins, &work.join("daemon-eager"));
    d.ok(&["build", "--progress", "quiet", &c]);
    d.ok(&["eager", "on", &c]);
    let samples = knob("MEMOBUILD_BENCH_EAGER_SAMPLES", 10);
    let mut ready = Vec::new();
    let mut build_after_1s = Vec::new();
    let mut generation = 1000;
    let wait_clean = |d: &Daemon| {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let p = d.project(&ctx);
            if p["state"] == "clean" && p["changed_files"] == json!([]) {
                return;
            }
            assert!(Instant::now() < deadline, "never clean: {p:#}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    for i in 0..samples {
        // Save -> ready.
        generation += 1;
        let file = &tree[(i * 104_729) % tree.len()];
        save(&ctx, &file.rel, generation);
        let saved = Instant::now();
        // The save seen (the project leaves `clean`), then clean again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.project(&ctx)["state"] == "clean" && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        wait_clean(&d);
        ready.push(saved.elapsed());

        // `build` 1 s after a save.
        generation += 1;
        save(&ctx, &tree[(i * 7_919 + 1) % tree.len()].rel, generation);
        std::thread::sleep(Duration::from_secs(1));
        build_after_1s.push(d.ok(&["build", "--progress", "quiet", &c]));
        wait_clean(&d);
    }
    report(
        &format!("eager on, COPY + RUN ({files} files): save -> image ready"),
        ready,
        "reported",
    );
    report(
        "eager on: `memobuild-ctl build` issued 1 s after a save, whole process",
        build_after_1s,
        "p50 <= 20 ms",
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing else is taken.
    let bins = common::find_bins(BENCH);
    let files = knob("MEMOBUILD_BENCH_FILES", 10_000);
    let work = tempfile::tempdir().expect("tempdir");
    println!("{BENCH} bench, {}", common::machine::machine_line());
    if wanted("lens") || wanted("status") {
        lens_and_status(&bins, work.path(), files);
    }
    if wanted("eager") {
        eager(&bins, work.path(), files);
    }
}
