//! The one way a bench runs memobuild: a release `memobuildd` on a private
//! socket and data dir under the bench's temp dir, driven by the release
//! `memobuild-ctl`, and stopped on drop (SIGTERM, then SIGKILL), with anything
//! it left running or mounted under its dir reported as a leak and removed.

use super::{timed, Bins};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    child: Child,
    bench: &'static str,
    ctl: PathBuf,
    /// Everything of this daemon's: socket, data dir, log (removed on drop).
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// XDG_DATA_HOME of the clients: should the daemon vanish, an
    /// auto-started one stays in the bench's temp dir.
    pub xdg: PathBuf,
    /// Leave `dir` to the bench's temp dir (removed when the bench ends).
    keep_dir: bool,
}

impl Daemon {
    /// Stopping this daemon leaves its dir for the bench's temp dir to
    /// remove at the end. A cold build right after removing the last cold
    /// build's tens of thousands of files would measure the file system:
    /// ext4 without a journal (these VMs) skips inodes freed in the last
    /// minute when it allocates new ones, and creating files in a group full
    /// of them costs up to 10x (docs/PERFORMANCE.md, "Cold builds").
    pub fn keep_dir_on_drop(&mut self) {
        self.keep_dir = true;
    }

    /// Starts memobuildd in `dir` (created), its log filter from the environment.
    pub fn start(bins: &Bins, dir: &Path) -> Daemon {
        Daemon::spawn(bins, dir, None)
    }

    /// Starts memobuildd in `dir` with `MEMOBUILD_LOG=filter` (e.g.
    /// `info,memobuild_sandbox=debug` to log each layer unpack).
    pub fn start_logging(bins: &Bins, dir: &Path, filter: &str) -> Daemon {
        Daemon::spawn(bins, dir, Some(filter))
    }

    fn spawn(bins: &Bins, dir: &Path, filter: Option<&str>) -> Daemon {
        fs::create_dir_all(dir).unwrap();
        let socket = dir.join("memobuildd.sock");
        let log = dir.join("memobuildd.log");
        let log_file = fs::File::create(&log).unwrap();
        let mut cmd = Command::new(&bins.daemon);
        if let Some(filter) = filter {
            cmd.env("MEMOBUILD_LOG", filter);
        }
        // Extra daemon flags for a variant of a bench, e.g.
        // `MEMOBUILD_BENCH_DAEMON_ARGS="--default-network none"`.
        if let Ok(extra) = std::env::var("MEMOBUILD_BENCH_DAEMON_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        let child = cmd
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bins.daemon.display()));
        let mut d = Daemon {
            child,
            bench: bins.bench,
            ctl: bins.ctl.clone(),
            dir: dir.to_path_buf(),
            socket,
            log,
            xdg: dir.join("xdg-data"),
            keep_dir: false,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!(
                    "memobuildd exited at start-up ({status}); its log:\n{}",
                    d.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "memobuildd did not open {} within 20 s",
                d.socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("memobuildd died ({status}); its log:\n{}", self.log_text());
        }
    }

    /// A field of /proc/PID/status in KiB (VmRSS, VmHWM).
    pub fn proc_kib(&self, field: &str) -> u64 {
        let text = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading the daemon's /proc status");
        text.lines()
            .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
    }

    fn log_len(&self) -> usize {
        fs::metadata(&self.log)
            .map(|m| m.len() as usize)
            .unwrap_or(0)
    }

    /// Layer unpacks (containerd upload + apply) logged after byte `from`
    /// (logged at debug: start with `info,memobuild_sandbox=debug`).
    fn unpacks_since(&self, from: usize) -> Vec<Duration> {
        let text = fs::read(&self.log).unwrap_or_default();
        let text = String::from_utf8_lossy(&text[from.min(text.len())..]).into_owned();
        text.lines()
            .filter(|l| l.contains("unpacked layer"))
            .filter_map(|l| {
                let v = l.split("elapsed=").nth(1)?.split_whitespace().next()?;
                // A `Duration`'s Debug text: "88.845079ms", "1.2s", "850µs".
                humantime::parse_duration(v).ok()
            })
            .collect()
    }

    /// `memobuild-ctl build -t TAG --progress json [--build-arg A]... -f
    /// CTX/DOCKERFILE CTX` against this daemon, not started.
    pub fn build_cmd(&self, ctx: &Path, dockerfile: &str, tag: &str, args: &[String]) -> Command {
        let mut cmd = Command::new(&self.ctl);
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(["build", "-t", tag, "--progress", "json"]);
        for a in args {
            cmd.arg("--build-arg").arg(a);
        }
        cmd.arg("-f")
            .arg(ctx.join(dockerfile))
            .arg(ctx)
            .env("XDG_DATA_HOME", &self.xdg);
        cmd
    }

    /// One build, timed as the whole client process; panics if it fails.
    pub fn build(&mut self, ctx: &Path, dockerfile: &str, tag: &str, args: &[String]) -> MbRun {
        self.assert_alive();
        let log_from = self.log_len();
        let (wall, out) = timed(&mut self.build_cmd(ctx, dockerfile, tag, args));
        let mut run = MbRun::parse(wall, &out, self);
        run.unpacks = self.unpacks_since(log_from);
        run
    }

    /// `memobuild-ctl ARGS` against this daemon (stdin closed).
    pub fn ctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.ctl);
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env("XDG_DATA_HOME", &self.xdg);
        cmd
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: the daemon stops its private containerd (up to 10 s), then exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                eprintln!(
                    "{} bench: memobuildd did not stop within 30 s; killing it",
                    self.bench
                );
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Anything still running from this daemon's dir is a leak: report and stop it.
        for p in stop_processes_under(&self.dir) {
            eprintln!(
                "{} bench: LEAK: process left by memobuildd: {p}",
                self.bench
            );
        }
        for m in unmount_below(&self.dir) {
            eprintln!("{} bench: LEAK: mount left by memobuildd: {m}", self.bench);
        }
        if !self.keep_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// What one `memobuild-ctl build --progress json` did.
#[derive(Default)]
pub struct MbRun {
    /// The whole client process, spawn to exit.
    pub wall: Duration,
    /// The daemon's own idea of the build time (the `finished` event).
    pub daemon: Duration,
    /// Steps that ran: instruction and the daemon's step time.
    pub executed: Vec<(String, Duration)>,
    pub cached: Vec<String>,
    pub digest: String,
    /// Layer unpacks into containerd during the build (see [`Daemon::start_logging`]).
    pub unpacks: Vec<Duration>,
}

impl MbRun {
    /// Parses the JSON events of a finished client; panics (with the
    /// daemon's log) if the build failed.
    pub fn parse(wall: Duration, out: &Output, daemon: &Daemon) -> MbRun {
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            panic!(
                "memobuild-ctl build failed ({}):\n{stdout}\n{}\ndaemon log:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                daemon.log_text()
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
            let millis =
                |v: &serde_json::Value| Duration::from_millis(v["millis"].as_u64().unwrap_or(0));
            match v["event"].as_str() {
                Some("planned") => {
                    for s in v["steps"].as_array().into_iter().flatten() {
                        if let (Some(i), Some(text)) =
                            (s["index"].as_u64(), s["instruction"].as_str())
                        {
                            steps.insert(i, text.to_string());
                        }
                    }
                }
                Some("step_done") => run.executed.push((name(&v), millis(&v))),
                Some("step_cached") => run.cached.push(name(&v)),
                Some("finished") => {
                    run.digest = v["manifest_digest"].as_str().unwrap_or("").to_string();
                    run.daemon = millis(&v);
                }
                _ => {}
            }
        }
        assert!(!run.digest.is_empty(), "no finished event in:\n{stdout}");
        run
    }

    /// The daemon's time for the executed step `instruction`.
    pub fn step(&self, instruction: &str) -> Option<Duration> {
        self.executed
            .iter()
            .find(|(i, _)| i == instruction)
            .map(|(_, d)| *d)
    }

    /// Executed steps other than ARG (which "runs" in 0 ms and writes nothing).
    pub fn executed_real(&self) -> Vec<&str> {
        self.executed
            .iter()
            .map(|(i, _)| i.as_str())
            .filter(|i| !i.starts_with("ARG "))
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Processes and mounts a bench may leave behind on a failure

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

/// Stops every process whose command line names `dir` (a containerd or shim
/// a bench's daemon started and did not stop); returns what it found.
pub fn stop_processes_under(dir: &Path) -> Vec<String> {
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

/// Lazily unmounts whatever is still mounted below `dir` (only a bench's temp
/// dir); returns what it found.
pub fn unmount_below(dir: &Path) -> Vec<String> {
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
