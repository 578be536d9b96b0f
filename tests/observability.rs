//! Logs and metrics as an operator uses them: `memobuild-ctl logs BUILD`
//! (also after a restart), the daemon's log files and JSON format, and
//! `memobuild-ctl metrics` / GET /metrics counting what builds really did.
//!
//! Real daemon, real containerd (the daemon's private one; Debian
//! `containerd`, `runc`), busybox from Debian `busybox-static`.

mod common;
use common::{write_files, Daemon};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// A busybox base image without a registry, then a RUN that prints a marker.
const DOCKERFILE: &str = "FROM scratch AS base
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
RUN echo observable-run-output && echo second-line
COPY f.txt /f.txt
";

fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", dir.path().join("busybox"))
        .expect("/bin/busybox is missing: apt-get install busybox-static");
    write_files(
        dir.path(),
        &[("Dockerfile", dockerfile), ("f.txt", "twelve bytes")],
    );
    dir
}

/// The build id from a `--progress json` build's `planned` event.
fn build_id(out: &common::BuildOutcome) -> u64 {
    out.events
        .iter()
        .find(|e| e["event"] == "planned")
        .and_then(|e| e["build"].as_u64())
        .unwrap_or_else(|| panic!("no planned event:\n{}", out.text()))
}

fn ctl_ok(d: &Daemon, args: &[&str]) -> String {
    let out = d.ctl(args);
    assert!(
        out.status.success(),
        "memobuild-ctl {args:?} failed:\n{}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn logs_show_every_step_and_run_output_and_survive_a_restart() {
    let mut d = Daemon::start();
    let ctx = context(DOCKERFILE);
    let out = d.build_ok(ctx.path(), &[]);
    let id = build_id(&out);
    let steps = 4;

    let log = ctl_ok(&d, &["logs", &id.to_string()]);
    assert!(log.starts_with(&format!("build {id} of ")), "{log}");
    for step in [
        "COPY busybox /bin/busybox DONE",
        "RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"] DONE",
        "RUN echo observable-run-output && echo second-line DONE",
        "COPY f.txt /f.txt DONE",
    ] {
        assert!(log.contains(step), "no {step:?} in:\n{log}");
    }
    assert!(log.contains("#3 observable-run-output"), "{log}");
    assert!(log.contains("#3 second-line"), "{log}");
    assert!(
        log.contains(&format!("FINISHED {}", out.manifest_digest())),
        "{log}"
    );

    // `last` and the context directory name the same build.
    assert_eq!(ctl_ok(&d, &["logs", "last"]), log);
    assert_eq!(ctl_ok(&d, &["logs", ctx.path().to_str().unwrap()]), log);

    // A failing build: its log ends with the error, the failed step shows.
    let bad = context("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo about-to-fail; exit 3\"]\n");
    let failed = d.build(bad.path(), &[]);
    assert!(!failed.success, "{}", failed.text());
    let failed_id = build_id(&failed);
    assert!(failed_id > id);
    let flog = ctl_ok(&d, &["logs", &failed_id.to_string()]);
    assert!(flog.contains("#2 about-to-fail"), "{flog}");
    assert!(flog.contains("STARTED"), "{flog}");
    assert!(flog.contains("FAILED: Dockerfile:3:1:"), "{flog}");

    // --json: the stable schema, one object.
    let json: Value =
        serde_json::from_str(&ctl_ok(&d, &["logs", "--json", &id.to_string()])).unwrap();
    assert_eq!(json["build"], id);
    assert_eq!(json["state"], "finished");
    let entries = json["entries"].as_array().unwrap();
    assert_eq!(
        entries.iter().filter(|e| e["event"] == "step_done").count(),
        steps
    );
    assert!(entries
        .iter()
        .all(|e| e["at_ms"].as_i64().unwrap() >= json["started_at_ms"].as_i64().unwrap()));

    // After a restart the log is read back from disk, and new ids go on
    // above the old ones (an id never names two builds).
    d.restart();
    assert_eq!(ctl_ok(&d, &["logs", &id.to_string()]), log);
    assert_eq!(ctl_ok(&d, &["logs", "last"]), flog);
    std::fs::write(ctx.path().join("f.txt"), "changed").unwrap();
    // A person's build prints the id `logs` takes first.
    let plain = d.ctl(&["build", "--progress", "plain", ctx.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&plain.stderr).into_owned();
    assert!(plain.status.success(), "{stderr}");
    let after: u64 = stderr
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("build "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `build ID` first line:\n{stderr}"));
    assert!(after > failed_id, "ids repeat after a restart");
    let after_log = ctl_ok(&d, &["logs", &after.to_string()]);
    assert!(after_log.contains("COPY f.txt /f.txt DONE"), "{after_log}");
    assert!(
        after_log.contains("RUN echo observable-run-output && echo second-line CACHED"),
        "{after_log}"
    );

    // Unknown builds: a clear error with a hint, and the daemon keeps serving.
    let unknown = d.ctl(&["logs", "987654"]);
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("no build log for \"987654\"") && err.contains("hint:"),
        "{err}"
    );
    let nonsense = d.ctl(&["logs", "no-such-project"]);
    assert!(!nonsense.status.success());
    assert!(String::from_utf8_lossy(&nonsense.stderr).contains("no build log"));
    ctl_ok(&d, &["logs", "last"]);
}

#[test]
fn log_files_are_written_and_json_lines_carry_the_build() {
    let log_dir = tempfile::tempdir().unwrap();
    let d = Daemon::start_with(&[
        "--log-format",
        "json",
        "--log-dir",
        log_dir.path().to_str().unwrap(),
    ]);
    let ctx = context(DOCKERFILE);
    let id = build_id(&d.build_ok(ctx.path(), &[]));

    // The daily file (memobuildd.YYYY-MM-DD.log) and the build's own log.
    assert!(log_dir.path().join(format!("builds/{id}.jsonl")).is_file());
    // The file writer flushes in the background; a test running over
    // midnight (UTC) finds its lines in two files. "build finished" is the
    // last line the build logs.
    let lines = wait_for_lines(log_dir.path(), "build finished");
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let of_build = |v: &&Value| {
        v["spans"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["name"] == "build" && s["build"] == id))
    };
    let step_lines: Vec<&Value> = parsed
        .iter()
        .filter(|v| v["fields"]["message"] == "step done")
        .collect();
    assert_eq!(step_lines.len(), 4, "{lines:#?}");
    for v in &step_lines {
        assert!(of_build(v), "step line without its build: {v}");
        assert_eq!(v["span"]["name"], "step");
        assert_eq!(v["span"]["build"], id);
        assert!(v["span"]["instruction"].is_string(), "{v}");
    }
    let finished = parsed
        .iter()
        .find(|v| v["fields"]["message"] == "build finished")
        .expect("a build finished line");
    assert!(of_build(&finished), "{finished}");
    assert_eq!(finished["span"]["build"], id);

    // stderr carries the same JSON objects.
    let stderr_json = d
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "step done" && v["span"]["build"] == id)
        .count();
    assert_eq!(stderr_json, 4, "{}", d.log());
}

/// The lines of every daily log file (`memobuildd.YYYY-MM-DD.log`) in `dir`,
/// once one of them contains `needle` (10 s at most).
fn wait_for_lines(dir: &Path, needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with("memobuildd.") && name.ends_with(".log")
            })
            .collect();
        files.sort();
        assert!(
            !files.is_empty() || Instant::now() < deadline,
            "no daily log file in {}",
            dir.display()
        );
        let text: String = files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect();
        if text.contains(needle) || Instant::now() > deadline {
            return text.lines().map(String::from).collect();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of one series (`name{labels}` exactly as printed) in Prometheus text.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

fn hits(text: &str, tier: &str) -> f64 {
    value(
        text,
        &format!("memobuild_cache_hits_total{{tier=\"{tier}\"}}"),
    )
}

fn misses(text: &str, tier: &str) -> f64 {
    value(
        text,
        &format!("memobuild_cache_misses_total{{tier=\"{tier}\"}}"),
    )
}

fn steps(text: &str, kind: &str, outcome: &str) -> f64 {
    value(
        text,
        &format!(
            "memobuild_step_duration_seconds_count{{instruction=\"{kind}\",outcome=\"{outcome}\"}}"
        ),
    )
}

/// The metrics port from the daemon's "metrics at http://ADDR/metrics" line.
fn metrics_addr(d: &Daemon) -> String {
    let log = d.log();
    let start = log
        .find("metrics at http://")
        .expect("metrics address logged")
        + 18;
    let rest = &log[start..];
    rest[..rest.find("/metrics").unwrap()].to_string()
}

fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn metrics_count_what_builds_did_and_are_served_over_http() {
    let d = Daemon::start_with(&["--metrics-listen", "127.0.0.1:0"]);
    let ctx = context(DOCKERFILE);
    let before = ctl_ok(&d, &["metrics"]);
    assert_eq!(
        value(&before, "memobuild_builds_total{result=\"success\"}"),
        0.0
    );
    assert_eq!(value(&before, "memobuild_hashed_bytes_total"), 0.0);
    assert_eq!(value(&before, "memobuild_build_queue_depth"), 0.0);

    // Cold: every step misses both tiers and executes; the COPY sources are hashed.
    d.build_ok(ctx.path(), &[]);
    let cold = ctl_ok(&d, &["metrics"]);
    assert_eq!(
        value(&cold, "memobuild_builds_total{result=\"success\"}"),
        1.0
    );
    assert_eq!(value(&cold, "memobuild_builds_running"), 0.0);
    assert_eq!(misses(&cold, "memory"), 4.0);
    assert_eq!(misses(&cold, "local"), 4.0);
    assert_eq!(hits(&cold, "local"), 0.0);
    assert_eq!(hits(&cold, "remote") + misses(&cold, "remote"), 0.0);
    assert_eq!(steps(&cold, "COPY", "executed"), 2.0);
    assert_eq!(steps(&cold, "RUN", "executed"), 2.0);
    let busybox = std::fs::metadata("/bin/busybox").unwrap().len() as f64;
    let hashed = value(&cold, "memobuild_hashed_bytes_total");
    assert_eq!(hashed, busybox + 12.0, "busybox and f.txt, once each");
    assert!(value(&cold, "memobuild_store_blob_bytes") > 0.0);

    // Nothing changed: the fast path answers every step from memory.
    d.build_ok(ctx.path(), &[]);
    let noop = ctl_ok(&d, &["metrics"]);
    assert_eq!(
        value(&noop, "memobuild_builds_total{result=\"success\"}"),
        2.0
    );
    assert_eq!(hits(&noop, "memory"), 4.0);
    assert_eq!(misses(&noop, "local"), 4.0);
    assert_eq!(value(&noop, "memobuild_hashed_bytes_total"), hashed);

    // A forgotten project has no warm state: the store's step cache answers.
    ctl_ok(&d, &["forget", ctx.path().to_str().unwrap()]);
    d.build_ok(ctx.path(), &[]);
    let cached = ctl_ok(&d, &["metrics"]);
    assert_eq!(
        value(&cached, "memobuild_builds_total{result=\"success\"}"),
        3.0
    );
    assert_eq!(misses(&cached, "memory"), 8.0);
    assert_eq!(hits(&cached, "local"), 4.0);
    assert_eq!(misses(&cached, "local"), 4.0);
    assert_eq!(steps(&cached, "COPY", "cached"), 2.0);
    assert_eq!(steps(&cached, "RUN", "cached"), 2.0);
    assert_eq!(steps(&cached, "RUN", "executed"), 2.0);

    // A failed build counts as failed.
    let bad =
        context("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"false\"]\n");
    assert!(!d.build(bad.path(), &[]).success);
    let text = ctl_ok(&d, &["metrics"]);
    assert_eq!(
        value(&text, "memobuild_builds_total{result=\"failed\"}"),
        1.0
    );

    // The HTTP listener serves the same metrics.
    let addr = metrics_addr(&d);
    let (head, body) = http_get(&addr, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    for series in [
        "memobuild_builds_total{result=\"success\"}",
        "memobuild_builds_total{result=\"failed\"}",
        "memobuild_cache_hits_total{tier=\"local\"}",
        "memobuild_hashed_bytes_total",
        "memobuild_store_blob_bytes",
    ] {
        assert_eq!(value(&body, series), value(&text, series), "{series}");
    }
    let (head, _) = http_get(&addr, "/other");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
}

#[test]
fn a_non_loopback_metrics_address_is_refused_with_a_hint() {
    let out = std::process::Command::new(common::bin_dir().join("memobuildd"))
        .args(["--metrics-listen", "0.0.0.0:9464", "--check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address") && err.contains("hint:"),
        "{err}"
    );
}
