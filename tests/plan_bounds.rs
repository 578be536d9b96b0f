//! A hostile Dockerfile costs the daemon little (issue 14 item 7): instruction,
//! ARG, ENV, LABEL, config-size, path-length and expansion limits fail the
//! build fast with `Dockerfile:LINE:COL` and the limit's name; the daemon's
//! memory stays bounded, a watched project rewritten into such a file does not
//! take the daemon down, and SIGTERM stops the daemon while a client holds a
//! half-sent request.
//!
//! No RUN: needs no containerd.

mod common;
use common::Daemon;
use std::time::{Duration, Instant};

/// What one hostile build may take at most (a debug daemon on a loaded host).
const GUARD: Duration = Duration::from_secs(20);

fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write");
    dir
}

fn rss_kib(d: &Daemon) -> u64 {
    let pid = d.pid().expect("daemon pid");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Builds `dockerfile`; it must fail within [`GUARD`] with `expected` (a
/// location and a message part) in its output.
fn assert_fails_fast(d: &Daemon, name: &str, dockerfile: &str, location: &str, expected: &str) {
    let ctx = context(dockerfile);
    let started = Instant::now();
    let out = d.build(ctx.path(), &[]);
    let took = started.elapsed();
    let text = out.text();
    assert!(!out.success, "{name}: built\n{text}");
    assert!(took < GUARD, "{name}: took {took:?}");
    assert!(
        text.contains(location) && text.contains(expected),
        "{name}: expected {location} and {expected:?} in:\n{}",
        &text[..text.len().min(4000)]
    );
}

#[test]
fn hostile_dockerfiles_fail_fast_with_located_errors_and_bounded_memory() {
    let d = Daemon::start();
    let lines = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<String>();
    assert_fails_fast(
        &d,
        "100k ENV",
        &format!(
            "FROM scratch\n{}",
            lines(100_000, &|i| format!("ENV E{i}=v{i}\n"))
        ),
        "Dockerfile:5001:1",
        "more than 5000 instructions",
    );
    assert_fails_fast(
        &d,
        "1001 ARGs",
        &format!(
            "FROM scratch\n{}",
            lines(1001, &|i| format!("ARG A{i}=v{i}\n"))
        ),
        "Dockerfile:1002:1",
        "more than 1000 ARGs",
    );
    assert_fails_fast(
        &d,
        "one ENV line with 5000 variables",
        &format!(
            "FROM scratch\nENV {}\n",
            (0..5000).map(|i| format!("E{i}=v ")).collect::<String>()
        ),
        "Dockerfile:2:1",
        "more than 1000 ENV",
    );
    assert_fails_fast(
        &d,
        "a 300 KiB config",
        &format!(
            "FROM scratch\n{}",
            lines(3, &|i| format!("LABEL l{i}={}\n", "x".repeat(100_000)))
        ),
        "Dockerfile:4:1",
        "image config grows to",
    );
    assert_fails_fast(
        &d,
        "1 MB WORKDIR",
        &format!("FROM scratch\nWORKDIR /{}\n", "a/".repeat(500_000)),
        "Dockerfile:2:1",
        "paths have at most 4096",
    );
    assert_fails_fast(
        &d,
        "doubling ARGs",
        &format!(
            "FROM scratch\nARG a={}\n{}",
            "x".repeat(100_000),
            lines(40, &|_| "ARG a=$a$a\n".to_string())
        ),
        "Dockerfile:6:",
        "expand to more than 1048576 bytes",
    );
    assert_fails_fast(
        &d,
        "a long COPY destination",
        &format!("FROM scratch\nCOPY Dockerfile /{}\n", "d".repeat(5000)),
        "Dockerfile:2:",
        "paths have at most 4096",
    );
    // Within the limits, big files still plan quickly: 2,400 stages.
    let ctx = context(&lines(2400, &|i| {
        format!("FROM scratch AS s{i}\nENV A={i}\n")
    }));
    let started = Instant::now();
    d.build_ok(ctx.path(), &[]);
    assert!(started.elapsed() < GUARD, "{:?}", started.elapsed());
    let rss = rss_kib(&d);
    assert!(
        rss < 1 << 20,
        "the daemon holds {rss} KiB after the hostile builds"
    );
}

#[test]
fn a_watched_project_turned_hostile_does_not_take_the_daemon_down() {
    let d = Daemon::start();
    let ctx = context("FROM scratch\nCOPY Dockerfile /\n");
    d.build_ok(ctx.path(), &[]);
    // Edited into 6,000 ARGs without building: the background re-plan fails
    // fast instead of eating the host's memory (a crash loop before).
    let hostile: String = (0..6000).map(|i| format!("ARG A{i}=v{i}\n")).collect();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM scratch\n{hostile}"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let out = d.ctl(&["status"]);
    assert!(
        out.status.success(),
        "{out:?}\n--- daemon log ---\n{}",
        d.log()
    );
    let rss = rss_kib(&d);
    assert!(rss < 1 << 20, "the daemon holds {rss} KiB");
    let good = context("FROM scratch\nCOPY Dockerfile /\n");
    d.build_ok(good.path(), &[]);
}

#[test]
fn sigterm_stops_the_daemon_while_a_client_holds_a_half_sent_request() {
    let mut d = Daemon::start();
    let mut held = std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");
    // A frame header promising far more than is ever sent.
    std::io::Write::write_all(&mut held, &[0, 0, 16, 0, 0x85]).expect("write");
    let pid = d.pid().expect("pid");
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
        && started.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "SIGTERM took {took:?}\n{}",
        d.log()
    );
    drop(held);
    d.stop();
}
