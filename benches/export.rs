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

use common::{timed, Bins};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = "export";
const SEED: u64 = 0x6d65_6d6f_6275_696c; // "memobuil", as the e2e bench
const DOCKERFILE: &str = "FROM scratch\nCOPY . /app/\n";

struct Daemon {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(bins: &Bins, dir: &Path) -> Daemon {
        let socket = dir.join("memobuildd.sock");
        let log = dir.join("memobuildd.log");
        let log_file = fs::File::create(&log).unwrap();
        let child = Command::new(&bins.daemon)
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bins.daemon.display()));
        let mut d = Daemon { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!(
                    "memobuildd exited at start-up ({status}): {}",
                    fs::read_to_string(&d.log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "memobuildd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One timed `memobuild-ctl build` (whole process); panics on failure.
fn build(bins: &Bins, d: &Daemon, ctx: &Path, outputs: &[String], fds: bool) -> Duration {
    let mut cmd = Command::new(&bins.ctl);
    cmd.arg("--socket").arg(&d.socket).args([
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
            fs::read_to_string(&d.log).unwrap_or_default()
        );
    }
    took
}

struct Scenario {
    name: &'static str,
    /// `-o` values; `{}` is replaced by this scenario's output path.
    output: Option<&'static str>,
    fds: bool,
    /// Remove the previous output before the run (untimed).
    fresh: bool,
    times: Vec<f64>,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let files = common::env_usize(BENCH, "MEMOBUILD_BENCH_FILES", 10_000).max(10);
    let runs = common::env_usize(BENCH, "MEMOBUILD_BENCH_RUNS", 10).max(1);
    let total = files as u64 * 10_000;
    let bins = match std::env::var_os("MEMOBUILD_BENCH_BIN_DIR") {
        Some(dir) => Bins {
            daemon: PathBuf::from(&dir).join("memobuildd"),
            ctl: PathBuf::from(&dir).join("memobuild-ctl"),
        },
        None => common::find_bins(BENCH),
    };
    let work_dir = tempfile::Builder::new()
        .prefix("memobuild-export-")
        .tempdir_in("/tmp")
        .expect("creating a temp dir in /tmp");
    let work = work_dir.path();
    let ctx = work.join("ctx");
    let out = work.join("out");
    fs::create_dir_all(&ctx).unwrap();
    fs::create_dir_all(&out).unwrap();
    println!("memobuild export benchmark ({})", bins.ctl.display());
    print_machine();
    common::generate_tree(&ctx, files, total, SEED).expect("generating the context");
    fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    let d = Daemon::start(&bins, work);
    let cold = build(&bins, &d, &ctx, &[], true);
    let probe = out.join("probe.tar");
    build(
        &bins,
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

    let mut scenarios = vec![
        Scenario {
            name: "no-op build alone",
            output: None,
            fds: true,
            fresh: true,
            times: vec![],
        },
        Scenario {
            name: "+ -o type=oci (fd)",
            output: Some("type=oci,dest={}"),
            fds: true,
            fresh: true,
            times: vec![],
        },
        Scenario {
            name: "+ -o type=oci (fd), replacing the last archive",
            output: Some("type=oci,dest={}"),
            fds: true,
            fresh: false,
            times: vec![],
        },
        Scenario {
            name: "+ -o type=oci-layout (fd)",
            output: Some("type=oci-layout,dest={}"),
            fds: true,
            fresh: true,
            times: vec![],
        },
        Scenario {
            name: "+ -o type=docker,dest= (fd)",
            output: Some("type=docker,dest={}"),
            fds: true,
            fresh: true,
            times: vec![],
        },
        Scenario {
            name: "+ -o type=oci (read_blob chunks)",
            output: Some("type=oci,dest={}"),
            fds: false,
            fresh: true,
            times: vec![],
        },
    ];
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
            let took = build(&bins, &d, &ctx, &outputs, s.fds);
            s.times.push(took.as_secs_f64());
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

    for s in scenarios.iter_mut() {
        s.times.sort_by(f64::total_cmp);
    }
    let noop = pct(&scenarios[0].times, 50.0);
    println!();
    println!(
        "| scenario (whole ctl process, {runs} runs) | p50 | p99 | over the no-op build (p50) |"
    );
    println!("| --- | --- | --- | --- |");
    for s in &scenarios {
        let p50 = pct(&s.times, 50.0);
        let over = if s.output.is_some() {
            format!("{:.3} s", p50 - noop)
        } else {
            "-".to_string()
        };
        println!(
            "| {} | {:.3} s | {:.3} s | {over} |",
            s.name,
            p50,
            pct(&s.times, 99.0)
        );
    }
    let fd_over = pct(&scenarios[1].times, 50.0) - noop;
    let rpc_over = pct(&scenarios[5].times, 50.0) - noop;
    println!(
        "\ntype=oci export cost: {fd_over:.3} s by descriptor vs {rpc_over:.3} s by read_blob chunks: {:.1}x less",
        rpc_over / fd_over.max(1e-6)
    );
}

fn print_machine() {
    let machine = common::machine_line();
    println!("{machine}");
}
