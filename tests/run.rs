//! RUN steps against a real containerd and runc (the daemon's private one):
//! failures, limits, network, secrets, cache and bind mounts, USER/WORKDIR,
//! and what a cancelled build or a killed daemon leaves behind (nothing).
//!
//! Every context is a [`busybox_context`]: a copy of /bin/busybox (Debian
//! `busybox-static`) and a Dockerfile starting with its base. Needs `containerd`, `runc` and `ctr`
//! (Debian `containerd`); without them these tests fail, they never skip.

mod common;
use common::{busybox_context, BuildOutcome, Daemon};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A process's command line, arguments separated by spaces ("" if gone).
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Host processes whose command line is exactly `args` (joined by spaces).
fn host_processes(args: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if cmdline(pid).trim_end() == args && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// Waits up to `within` until some host process runs `args`: a step that
/// has printed a line may not have forked its next command yet.
fn wait_present(args: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    while host_processes(args).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what} (`{args}`) is not running on the host"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `within` until no host process runs `args`.
fn wait_gone(args: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let pids = host_processes(args);
        if pids.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} (`{args}`, pids {pids:?}) still runs on the host"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn message(out: &BuildOutcome) -> String {
    out.error()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Output lines of the step whose instruction starts with `prefix`.
fn step_log(out: &BuildOutcome, prefix: &str) -> Vec<String> {
    let index = step_index(out, prefix);
    out.events
        .iter()
        .filter(|e| e["event"] == "log" && e["step"].as_u64() == Some(index))
        .filter_map(|e| e["line"].as_str().map(String::from))
        .collect()
}

fn step_index(out: &BuildOutcome, prefix: &str) -> u64 {
    let planned = out
        .events
        .iter()
        .find(|e| e["event"] == "planned")
        .unwrap_or_else(|| panic!("no planned event:\n{}", out.text()));
    planned["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            s["instruction"]
                .as_str()
                .unwrap_or_default()
                .starts_with(prefix)
        })
        .and_then(|s| s["index"].as_u64())
        .unwrap_or_else(|| panic!("no step {prefix:?} planned:\n{}", out.text()))
}

fn cache_keys(out: &BuildOutcome) -> Vec<String> {
    out.events
        .iter()
        .find(|e| e["event"] == "planned")
        .and_then(|e| e["steps"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|s| s["cache_key"].as_str().unwrap_or_default().to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Image contents, read from an `-o type=oci-layout` export.

#[derive(Debug, Clone)]
struct Entry {
    kind: tar::EntryType,
    uid: u64,
    gid: u64,
    data: Vec<u8>,
}

/// The image's filesystem: path ("/a/b") -> entry, layers applied with whiteouts.
struct Image {
    files: BTreeMap<String, Entry>,
    /// The layout directory (for searching its blobs).
    layout: tempfile::TempDir,
}

impl Image {
    fn text(&self, path: &str) -> String {
        let entry = self
            .files
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not in the image; it has {:?}", self.paths()));
        String::from_utf8_lossy(&entry.data).into_owned()
    }

    fn paths(&self) -> Vec<&String> {
        self.files
            .keys()
            .filter(|p| !p.starts_with("/bin/") && p.as_str() != "/bin")
            .collect()
    }

    /// Paths at or below `dir`.
    fn under(&self, dir: &str) -> Vec<String> {
        self.files
            .keys()
            .filter(|p| *p == dir || p.starts_with(&format!("{dir}/")))
            .cloned()
            .collect()
    }
}

/// Builds `ctx` and exports the image as an OCI layout; returns both.
fn build_image(d: &Daemon, ctx: &Path, extra: &[&str]) -> (BuildOutcome, Image) {
    let layout = tempfile::tempdir().unwrap();
    let dest = layout.path().join("image");
    let spec = format!("type=oci-layout,dest={}", dest.display());
    let mut args = extra.to_vec();
    args.extend(["-o", spec.as_str()]);
    let out = d.build_ok(ctx, &args);
    let files = read_layout(&dest);
    (out, Image { files, layout })
}

fn read_layout(dir: &Path) -> BTreeMap<String, Entry> {
    let blob = |digest: &str| {
        let path = dir.join("blobs").join(digest.replacen(':', "/", 1));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&blob(
        index["manifests"][0]["digest"]
            .as_str()
            .expect("index.json names a manifest"),
    ))
    .unwrap();
    // A nested index points at the image manifest.
    while manifest.get("manifests").is_some() {
        let digest = manifest["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .to_string();
        manifest = serde_json::from_slice(&blob(&digest)).unwrap();
    }
    let mut files: BTreeMap<String, Entry> = BTreeMap::new();
    for layer in manifest["layers"].as_array().cloned().unwrap_or_default() {
        let bytes = blob(layer["digest"].as_str().unwrap());
        let tar_bytes = gunzip(&bytes).unwrap_or(bytes);
        let mut archive = tar::Archive::new(&tar_bytes[..]);
        let mut added: Vec<(String, Entry)> = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let raw = entry.path().unwrap().display().to_string();
            let path = format!(
                "/{}",
                raw.trim_start_matches("./")
                    .trim_start_matches('/')
                    .trim_end_matches('/')
            );
            let (parent, name) = path.rsplit_once('/').unwrap();
            if name == ".wh..wh..opq" {
                let prefix = format!("{parent}/");
                files.retain(|p, _| !p.starts_with(&prefix));
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let gone = format!("{parent}/{hidden}");
                files.retain(|p, _| *p != gone && !p.starts_with(&format!("{gone}/")));
                continue;
            }
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            let header = entry.header();
            added.push((
                path,
                Entry {
                    kind: header.entry_type(),
                    uid: header.uid().unwrap_or(u64::MAX),
                    gid: header.gid().unwrap_or(u64::MAX),
                    data,
                },
            ));
        }
        files.extend(added);
    }
    files
}

fn gunzip(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b {
        return None;
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

// ---------------------------------------------------------------------------
// The private containerd, seen through `ctr`.

/// runc containers and rootfs mounts of steps, and containers, tasks, run
/// snapshots (labelled memobuild.run, or active) and run leases in the
/// daemon's containerd namespace.
fn leftovers(d: &Daemon) -> Vec<String> {
    assert!(
        d.containerd_socket().exists(),
        "the daemon's private containerd is not running (no {})",
        d.containerd_socket().display()
    );
    let mut found = Vec::new();
    let rows = |out: String| -> Vec<String> {
        out.lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()
    };
    found.extend(common::runc_leftovers(&d.data));
    for row in rows(d.ctr(&["containers", "ls"])) {
        found.push(format!("container: {row}"));
    }
    for row in rows(d.ctr(&["tasks", "ls"])) {
        found.push(format!("task: {row}"));
    }
    for row in rows(d.ctr(&["snapshots", "ls"])) {
        let key = row.split_whitespace().next().unwrap().to_string();
        // Cleanup may remove a snapshot between `ls` and `info`: then it is gone.
        let info = Command::new("ctr")
            .arg("--address")
            .arg(d.containerd_socket())
            .args(["-n", "memobuild", "snapshots", "info", &key])
            .output()
            .expect("ctr");
        if !info.status.success() {
            continue;
        }
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap_or_default();
        if info["Labels"].get("memobuild.run").is_some() || info["Kind"] == "Active" {
            found.push(format!("snapshot: {info}"));
        }
    }
    for row in rows(d.ctr(&["leases", "ls"])) {
        if row.contains("memobuild.run") || row.contains("mb-run-") {
            found.push(format!("lease: {row}"));
        }
    }
    found
}

/// Waits up to `within` for containerd to hold nothing of any run.
fn assert_no_leftovers(d: &Daemon, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let found = leftovers(d);
        if found.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "containerd still holds, {}s after the run ended:\n{}\n--- daemon log ---\n{}",
            within.as_secs(),
            found.join("\n"),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// A build running in the background.

struct BgBuild {
    child: Child,
    lines: mpsc::Receiver<String>,
    stdout: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

fn spawn_build(d: &Daemon, ctx: &Path, extra: &[&str]) -> BgBuild {
    let mut child = d.spawn_build(ctx, extra);
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut pipe = child.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = String::new();
        let _ = pipe.read_to_string(&mut buf);
        sink.lock().unwrap().push_str(&buf);
    });
    BgBuild {
        child,
        lines: rx,
        stdout: Vec::new(),
        stderr,
    }
}

impl BgBuild {
    /// Waits until a progress line contains `needle`.
    fn wait_for(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.stdout.iter().any(|l| l.contains(needle)) {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stdout.push(line),
                Err(_) => panic!(
                    "no progress line with {needle:?} within {}s:\n{}\nstderr:\n{}",
                    within.as_secs(),
                    self.stdout.join("\n"),
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    /// Waits for the client to exit; `None` if it is still running after `within`.
    fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.stdout.push(line);
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn output(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.join("\n"),
            self.stderr.lock().unwrap()
        )
    }
}

impl Drop for BgBuild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------

#[test]
fn failing_run_reports_command_exit_code_and_last_output_and_is_not_cached() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "RUN echo building; for i in $(seq 1 30); do echo out-$i; done; echo oops-on-stderr >&2; exit 3\n",
        &[],
    );
    let started = Instant::now();
    let out = d.build(ctx.path(), &[]);
    assert!(
        !out.success,
        "a RUN exiting 3 must fail the build:\n{}",
        out.text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the failure took {:?}",
        started.elapsed()
    );
    let msg = message(&out);
    for needed in [
        "RUN echo building",
        "exit code 3",
        "out-30",
        "out-29",
        "oops-on-stderr",
    ] {
        assert!(
            msg.contains(needed),
            "the error must contain {needed:?}:\n{msg}"
        );
    }
    // The output streamed live too.
    let lines = step_log(&out, "RUN echo building");
    assert!(lines.contains(&"out-1".to_string()), "{lines:?}");
    assert_no_leftovers(&d, Duration::from_secs(5));

    // Nothing of it was cached: a second build runs it again.
    let again = d.build(ctx.path(), &[]);
    assert!(!again.success);
    assert!(
        !again
            .cached()
            .iter()
            .any(|s| s.starts_with("RUN echo building")),
        "the failed RUN came from the cache:\n{}",
        again.text()
    );
    assert!(
        step_log(&again, "RUN echo building").contains(&"out-1".to_string()),
        "the failed RUN did not run again:\n{}",
        again.text()
    );
    assert!(message(&again).contains("exit code 3"));

    // What a user at a terminal sees: `error: ...` on stderr and a non-zero exit.
    let plain = d.ctl(&["build", "--progress", "plain", ctx.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success());
    assert_ne!(plain.status.code(), Some(0));
    assert!(
        stderr.contains("error:") && stderr.contains("exit code 3") && stderr.contains("out-30"),
        "{stderr}"
    );
    assert_no_leftovers(&d, Duration::from_secs(5));
    // docs/CLI.md: errors print `error: FILE:LINE:COL: what`; the RUN is on line 4.
    assert!(
        stderr.contains("error: Dockerfile:4:"),
        "the error does not say where (Dockerfile:4:COL):\n{stderr}"
    );
}

#[test]
fn step_timeout_kills_the_step_and_the_daemon_keeps_serving() {
    let d = Daemon::start_with(&["--step-timeout", "2"]);
    let ctx = busybox_context("RUN echo before-sleep; sleep 60\n", &[]);
    let started = Instant::now();
    let out = d.build(ctx.path(), &[]);
    let took = started.elapsed();
    assert!(!out.success, "{}", out.text());
    assert!(
        took < Duration::from_secs(10),
        "the 2 s timeout took {took:?}"
    );
    let msg = message(&out);
    assert!(
        msg.to_lowercase().contains("timeout") && msg.contains("RUN echo before-sleep"),
        "the error must say the step timed out:\n{msg}"
    );
    assert!(
        msg.contains("2s") || msg.contains("2 s") || msg.contains("2 seconds"),
        "the error must name the timeout (2 s):\n{msg}"
    );
    assert_no_leftovers(&d, Duration::from_secs(5));
    wait_gone(
        "sleep 60",
        Duration::from_secs(5),
        "the timed-out step's process",
    );

    let next = busybox_context("RUN echo fine > /ok\n", &[]);
    let (_, image) = build_image(&d, next.path(), &[]);
    assert_eq!(image.text("/ok"), "fine\n");
}

const MEMORY_HOG: &str = "RUN dd if=/dev/zero of=/dev/null bs=128M count=1\n";

#[test]
fn memory_limit_fails_the_step_with_a_message_naming_it() {
    let d = Daemon::start();
    let ctx = busybox_context(MEMORY_HOG, &[]);
    let out = d.build(ctx.path(), &["--memory", "32m"]);
    assert!(
        !out.success,
        "a step holding 128 MiB under --memory 32m must fail:\n{}",
        out.text()
    );
    let msg = message(&out);
    assert!(
        msg.to_lowercase().contains("memory") && msg.contains("32"),
        "the error must name the memory limit (32 MiB):\n{msg}"
    );
    assert_no_leftovers(&d, Duration::from_secs(5));
    // The daemon carries on, and the limit was this build's: without it the step runs.
    let ok = d.build(ctx.path(), &[]);
    assert!(ok.success, "{}\n{}", ok.text(), d.log());
    assert!(ok.executed().iter().any(|s| s.starts_with("RUN dd")));
}

#[test]
fn pids_limit_fails_the_step_and_a_concurrent_build_carries_on() {
    let d = Daemon::start();
    let other = busybox_context(
        "RUN echo other-started; sleep 3; echo other > /other\n",
        &[],
    );
    let mut bg = spawn_build(&d, other.path(), &[]);
    bg.wait_for("other-started", Duration::from_secs(60));

    let ctx = busybox_context("RUN for i in $(seq 1 100); do sleep 33 & done; wait\n", &[]);
    let started = Instant::now();
    let out = d.build(ctx.path(), &["--pids-limit", "32"]);
    assert!(
        !out.success,
        "100 processes under --pids-limit 32 must fail:\n{}",
        out.text()
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    let msg = message(&out);
    let lower = msg.to_lowercase();
    assert!(
        (lower.contains("process") || lower.contains("pids")) && msg.contains("32"),
        "the error must name the process limit (32):\n{msg}"
    );

    let status = bg
        .wait_exit(Duration::from_secs(60))
        .expect("the other build hangs");
    assert!(
        status.success(),
        "the concurrent build failed:\n{}",
        bg.output()
    );
    assert_no_leftovers(&d, Duration::from_secs(5));
    wait_gone(
        "sleep 33",
        Duration::from_secs(5),
        "the failed step's processes",
    );
    // And the daemon still builds.
    let next = busybox_context("RUN echo fine > /ok\n", &[]);
    let (_, image) = build_image(&d, next.path(), &[]);
    assert_eq!(image.text("/ok"), "fine\n");
}

#[test]
fn daemon_wide_memory_and_pids_limits_apply_to_every_build() {
    let d = Daemon::start_with(&["--memory", "32m", "--pids-limit", "32"]);
    let mem = busybox_context(MEMORY_HOG, &[]);
    let out = d.build(mem.path(), &[]);
    assert!(!out.success, "{}", out.text());
    let msg = message(&out);
    assert!(
        msg.to_lowercase().contains("memory") && msg.contains("32"),
        "{msg}"
    );
    let pids = busybox_context("RUN for i in $(seq 1 100); do sleep 34 & done; wait\n", &[]);
    let out = d.build(pids.path(), &[]);
    assert!(!out.success, "{}", out.text());
    let msg = message(&out);
    let lower = msg.to_lowercase();
    assert!(
        (lower.contains("process") || lower.contains("pids")) && msg.contains("32"),
        "{msg}"
    );
    assert_no_leftovers(&d, Duration::from_secs(5));
    let next = busybox_context("RUN echo fine > /ok\n", &[]);
    let (_, image) = build_image(&d, next.path(), &[]);
    assert_eq!(image.text("/ok"), "fine\n");
}

/// Interface names in /proc/net/dev text.
fn interfaces<S: AsRef<str>>(lines: &[S]) -> Vec<String> {
    let mut names: Vec<String> = lines
        .iter()
        .filter_map(|l| l.as_ref().split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .filter(|n| !n.is_empty() && !n.contains('|'))
        .collect();
    names.sort();
    names
}

#[test]
fn network_none_leaves_only_loopback_and_the_daemon_can_make_it_the_default() {
    let host = interfaces(
        &std::fs::read_to_string("/proc/net/dev")
            .unwrap()
            .lines()
            .collect::<Vec<_>>(),
    );
    let dockerfile = "RUN --network=none cat /proc/net/dev
RUN cat /proc/net/dev
RUN --network=none ip link
";
    let ctx = busybox_context(dockerfile, &[]);

    let d = Daemon::start();
    let out = d.build_ok(ctx.path(), &[]);
    assert_eq!(
        interfaces(&step_log(&out, "RUN --network=none cat")),
        vec!["lo".to_string()],
        "{}",
        out.text()
    );
    let links = step_log(&out, "RUN --network=none ip link");
    assert!(
        links.iter().any(|l| l.contains(": lo:"))
            && links.iter().filter(|l| l.contains(": <")).count() == 1,
        "ip link must show lo only: {links:?}"
    );
    // Without --network a step has its own network (lo and eth0 on the
    // daemon's bridge), as with Docker, not the host's.
    assert_eq!(interfaces(&step_log(&out, "RUN cat")), ["eth0", "lo"]);
    assert_ne!(host, ["eth0", "lo"], "the host must have other interfaces");

    let d = Daemon::start_with(&["--default-network", "none"]);
    let out = d.build_ok(ctx.path(), &[]);
    assert_eq!(
        interfaces(&step_log(&out, "RUN cat")),
        vec!["lo".to_string()],
        "with --default-network none a plain RUN has no network:\n{}",
        out.text()
    );
    assert_eq!(
        interfaces(&step_log(&out, "RUN --network=none cat")),
        vec!["lo".to_string()]
    );
}

/// Files (regular, readable) below `root` whose bytes, or gunzipped bytes, contain `needle`.
fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                // Never open FIFOs or sockets: only regular files.
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                if contains(&bytes, needle)
                    || gunzip(&bytes).is_some_and(|plain| contains(&plain, needle))
                {
                    found.push(path);
                }
            }
        }
    }
    found
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A 32-character random token.
fn random_token() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    hex::encode(bytes)
}

#[test]
fn secret_is_usable_in_its_step_and_leaks_nowhere() {
    let d = Daemon::start();
    let secrets = tempfile::tempdir().unwrap();
    let token = random_token();
    assert_eq!(token.len(), 32);
    let src = secrets.path().join("tok");
    std::fs::write(&src, &token).unwrap();
    // The search below finds the token in plain and in gzipped files.
    {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(format!("xx{token}yy").as_bytes()).unwrap();
        let probe = tempfile::tempdir().unwrap();
        std::fs::write(probe.path().join("probe.gz"), gz.finish().unwrap()).unwrap();
        assert_eq!(files_containing(probe.path(), token.as_bytes()).len(), 1);
        assert_eq!(
            files_containing(secrets.path(), token.as_bytes()),
            vec![src.clone()]
        );
    }
    let ctx = busybox_context(
        "RUN --mount=type=secret,id=tok cat /run/secrets/tok | wc -c > /len
RUN --mount=type=secret,id=tok,target=/etc/tok.txt,required wc -c < /etc/tok.txt > /len2
RUN ls /run/secrets > /after 2>&1 || echo gone > /after
",
        &[],
    );
    let secret_arg = format!("id=tok,src={}", src.display());
    let (out, image) = build_image(&d, ctx.path(), &["--secret", &secret_arg]);
    assert_eq!(image.text("/len").trim(), "32");
    assert_eq!(image.text("/len2").trim(), "32");
    // Present only during the step that mounts it.
    assert!(
        !image.text("/after").contains("tok"),
        "{}",
        image.text("/after")
    );
    assert!(
        image.under("/run/secrets/tok").is_empty(),
        "{:?}",
        image.paths()
    );
    assert!(
        image.under("/etc/tok.txt").is_empty(),
        "{:?}",
        image.paths()
    );

    // The keys of the steps that mount the secret cover its MAC (never its
    // value; tests/secret_cache.rs): a new value runs them again.
    let token2 = random_token();
    std::fs::write(&src, &token2).unwrap();
    let again = d.build_ok(ctx.path(), &["--secret", &secret_arg]);
    assert_ne!(cache_keys(&again), cache_keys(&out));
    assert_eq!(again.executed().len(), 3, "{:?}", again.executed());

    // Search everything the daemon keeps and says for either value.
    let status = d.ctl(&["status", "--json"]);
    let explain = d.ctl(&["explain", "--json", ctx.path().to_str().unwrap()]);
    for tok in [&token, &token2] {
        let needle = tok.as_bytes();
        let leaks = files_containing(&d.data, needle);
        assert!(
            leaks.is_empty(),
            "the secret is in the daemon's data dir: {leaks:?}"
        );
        let leaks = files_containing(image.layout.path(), needle);
        assert!(
            leaks.is_empty(),
            "the secret is in the exported image: {leaks:?}"
        );
        assert!(
            !d.log().contains(tok.as_str()),
            "the secret is in the daemon log"
        );
        assert!(
            !out.text().contains(tok.as_str()),
            "the secret is in the build output"
        );
        assert!(
            !again.text().contains(tok.as_str()),
            "the secret is in the build output"
        );
        for o in [&status, &explain] {
            assert!(!contains(&o.stdout, needle) && !contains(&o.stderr, needle));
        }
        let leaks = files_containing(Path::new("/dev/shm"), needle);
        assert!(
            leaks.is_empty(),
            "the secret outlived its step in {leaks:?}"
        );
    }

    // A step that prints the secret puts it in the log by the user's choice;
    // still, no layer and no metadata may hold it.
    let token3 = random_token();
    std::fs::write(&src, &token3).unwrap();
    let printing = busybox_context(
        "RUN --mount=type=secret,id=tok cat /run/secrets/tok && echo > /printed\n",
        &[],
    );
    let (printed, image) = build_image(&d, printing.path(), &["--secret", &secret_arg]);
    assert!(
        printed.stdout.contains(&token3),
        "the step did not print the secret"
    );
    let needle = token3.as_bytes();
    for place in [d.data.join("blobs"), d.data.join("containerd/root")] {
        let leaks = files_containing(&place, needle);
        assert!(
            leaks.is_empty(),
            "the printed secret is stored in {leaks:?}"
        );
    }
    assert!(
        !contains(&std::fs::read(d.data.join("meta.redb")).unwrap(), needle),
        "the printed secret is stored in meta.redb"
    );
    assert!(files_containing(image.layout.path(), needle).is_empty());
}

#[test]
fn cache_mount_persists_across_builds_and_restarts_and_stays_out_of_the_image() {
    let mut d = Daemon::start();
    let ctx = busybox_context(
        "ARG N
RUN --mount=type=cache,target=/cache echo \"build-$N\" >> /cache/log && wc -l < /cache/log > /count && cp /cache/log /seen
RUN --mount=type=cache,id=/cache,target=/other wc -l < /other/log > /count-by-id
",
        &[],
    );
    let count = |image: &Image| image.text("/count").trim().to_string();
    for n in 1..=3 {
        let arg = format!("N={n}");
        let (out, image) = build_image(&d, ctx.path(), &["--build-arg", &arg]);
        assert!(
            out.executed()
                .iter()
                .any(|s| s.starts_with("RUN --mount=type=cache,target")),
            "{}",
            out.text()
        );
        assert_eq!(count(&image), n.to_string(), "build {n}");
        assert_eq!(image.text("/count-by-id").trim(), n.to_string());
        assert!(
            image.under("/cache").is_empty(),
            "{:?}",
            image.under("/cache")
        );
        assert!(
            image.under("/other").is_empty(),
            "{:?}",
            image.under("/other")
        );
        if n == 3 {
            assert_eq!(image.text("/seen"), "build-1\nbuild-2\nbuild-3\n");
        }
    }
    // The cache's contents are not in the key: N=1 again is a cache hit.
    let (out, image) = build_image(&d, ctx.path(), &["--build-arg", "N=1"]);
    assert!(out.executed().is_empty(), "{:?}", out.executed());
    assert_eq!(count(&image), "1");
    // --no-cache re-runs the step, which still sees the cache.
    let (_, image) = build_image(&d, ctx.path(), &["--no-cache", "--build-arg", "N=3"]);
    assert_eq!(count(&image), "4");
    // The daemon keeps it across a restart.
    d.restart();
    let (_, image) = build_image(&d, ctx.path(), &["--build-arg", "N=5"]);
    assert_eq!(count(&image), "5");
    assert!(image.under("/cache").is_empty());
}

/// `ARG D` and a RUN that prints `started` and sleeps D seconds.
fn sleeper(default: u32) -> tempfile::TempDir {
    busybox_context(
        &format!("ARG D={default}\nRUN echo started; sleep $D; echo finished > /done\n"),
        &[],
    )
}

#[test]
fn cancelled_build_stops_its_step_and_leaves_nothing_in_containerd() {
    let d = Daemon::start();
    let ctx = sleeper(31);
    let mut bg = spawn_build(&d, ctx.path(), &[]);
    bg.wait_for("\"started\"", Duration::from_secs(60));
    wait_present("sleep 31", Duration::from_secs(5), "the step's process");
    let signalled = Instant::now();
    bg.signal("INT");
    let status = bg
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("memobuild-ctl ignored Ctrl-C:\n{}", bg.output()));
    assert!(!status.success(), "a cancelled build must exit non-zero");
    assert_no_leftovers(&d, Duration::from_secs(5));
    wait_gone(
        "sleep 31",
        Duration::from_secs(10).saturating_sub(signalled.elapsed()),
        "the cancelled step's process",
    );
    // Editors see that nothing is building any more.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status: serde_json::Value =
            serde_json::from_slice(&d.ctl(&["status", "--json"]).stdout).unwrap();
        if status["daemon"]["running_builds"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still building: {status}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, image) = build_image(&d, ctx.path(), &["--build-arg", "D=0"]);
    assert_eq!(image.text("/done"), "finished\n");
    assert_no_leftovers(&d, Duration::from_secs(5));
}

#[test]
fn daemon_killed_mid_run_restarts_cleans_up_and_builds() {
    let mut d = Daemon::start();
    let ctx = sleeper(37);
    let mut bg = spawn_build(&d, ctx.path(), &[]);
    bg.wait_for("\"started\"", Duration::from_secs(60));
    let old_containerd: u32 = std::fs::read_to_string(d.data.join("containerd/containerd.pid"))
        .expect("the private containerd's pid file")
        .trim()
        .parse()
        .unwrap();
    d.kill9();
    let status = bg.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "memobuild-ctl hangs after the daemon died:\n{}",
            bg.output()
        )
    });
    assert!(!status.success());

    d.spawn();
    let (_, image) = build_image(&d, ctx.path(), &["--build-arg", "D=0"]);
    assert_eq!(image.text("/done"), "finished\n");
    assert_no_leftovers(&d, Duration::from_secs(5));
    // The killed step's process and the old containerd are gone too.
    wait_gone(
        "sleep 37",
        Duration::from_secs(10),
        "the killed daemon's step",
    );
    assert!(
        !alive(old_containerd) || !cmdline(old_containerd).contains("containerd"),
        "the killed daemon's containerd ({old_containerd}) still runs"
    );
    // And a full rebuild works.
    let again = d.build_ok(ctx.path(), &["--no-cache", "--build-arg", "D=0"]);
    assert!(again
        .executed()
        .iter()
        .any(|s| s.starts_with("RUN echo started")));
    assert_no_leftovers(&d, Duration::from_secs(5));
}

#[test]
fn bind_mounts_read_the_context_and_never_write_back() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "RUN --mount=type=bind,source=data,target=/data cat /data/x > /copied && cat /data/sub/y > /copied-sub
RUN --mount=type=bind,source=data,target=/data,rw echo changed > /data/x && echo new > /data/new && cat /data/x > /rw-seen
RUN --mount=type=bind,source=data,target=/data cat /data/x > /after-rw; if echo y > /data/x 2>/dev/null; then echo writable; else echo readonly; fi > /ro-check
RUN --mount=type=bind,source=data/x,target=/etc/x.conf cat /etc/x.conf > /single-file
",
        &[("data/x", "from-context\n"), ("data/sub/y", "y\n")],
    );
    let (_, image) = build_image(&d, ctx.path(), &[]);
    assert_eq!(image.text("/copied"), "from-context\n");
    assert_eq!(image.text("/copied-sub"), "y\n");
    // rw: the step may write, for itself only.
    assert_eq!(image.text("/rw-seen"), "changed\n");
    assert_eq!(image.text("/after-rw"), "from-context\n");
    // Without rw a bind mount is read-only, as with BuildKit.
    assert_eq!(image.text("/ro-check"), "readonly\n");
    assert_eq!(image.text("/single-file"), "from-context\n");
    // The user's files are untouched.
    assert_eq!(
        std::fs::read_to_string(ctx.path().join("data/x")).unwrap(),
        "from-context\n"
    );
    assert!(!ctx.path().join("data/new").exists());
    // Mounted files are not part of the image.
    for dir in ["/data", "/etc/x.conf"] {
        let under: Vec<String> = image.under(dir).into_iter().filter(|p| p != dir).collect();
        assert!(under.is_empty(), "{dir}: {under:?}");
    }
    assert!(image
        .under("/etc/x.conf")
        .iter()
        .all(|p| image.files[p].data.is_empty()));
}

#[test]
fn bind_mount_from_a_stage_reads_that_stage() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "FROM base AS gen
RUN mkdir -p /out && echo generated > /out/g.txt
FROM base
RUN --mount=type=bind,from=gen,source=/out,target=/gen cat /gen/g.txt > /from-stage
RUN --mount=type=bind,from=gen,source=/out/g.txt,target=/one.txt cat /one.txt > /from-stage-file
",
        &[],
    );
    let (_, image) = build_image(&d, ctx.path(), &[]);
    assert_eq!(image.text("/from-stage"), "generated\n");
    assert_eq!(image.text("/from-stage-file"), "generated\n");
    let under: Vec<String> = image
        .under("/gen")
        .into_iter()
        .filter(|p| p != "/gen")
        .collect();
    assert!(under.is_empty(), "{under:?}");
    assert!(
        image.under("/out").is_empty(),
        "the gen stage's files leaked into the image"
    );
}

#[test]
fn user_and_workdir_apply_inside_run() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "COPY etc/ /etc/
RUN mkdir -m 1777 /tmp && mkdir -p /work
WORKDIR /work
USER 1000:1000
RUN id -u > /tmp/uid && id -g > /tmp/gid && pwd > /tmp/pwd && touch /tmp/owned
USER builder
WORKDIR /home/builder/sub
RUN id -u > /tmp/uid2 && id -g > /tmp/gid2 && pwd > /tmp/pwd2
",
        &[
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1001:1002::/home/builder:/bin/sh\n",
            ),
            ("etc/group", "root:x:0:\nbuilders:x:1002:\n"),
        ],
    );
    let (_, image) = build_image(&d, ctx.path(), &[]);
    assert_eq!(image.text("/tmp/uid"), "1000\n");
    assert_eq!(image.text("/tmp/gid"), "1000\n");
    assert_eq!(image.text("/tmp/pwd"), "/work\n");
    let owned = &image.files["/tmp/owned"];
    assert_eq!((owned.uid, owned.gid), (1000, 1000), "{owned:?}");
    assert_eq!(owned.kind, tar::EntryType::Regular);
    assert_eq!(image.text("/tmp/uid2"), "1001\n");
    assert_eq!(image.text("/tmp/gid2"), "1002\n");
    assert_eq!(image.text("/tmp/pwd2"), "/home/builder/sub\n");
}
