//! Editors see the truth live (issue 13): `status` is never stale, whatever
//! the interleaving of saves and builds; failures are data (step, file, line,
//! column, exit code, last output); `status --follow` streams every change;
//! `status`/`explain` pick among the projects of one context by Dockerfile
//! and target; projects nobody uses are forgotten.
//!
//! Everything runs through the real memobuildd (with its private containerd
//! for RUN) and the real memobuild-ctl.

mod common;
use common::{bin_dir, busybox_context, write_files, BuildOutcome, Daemon, Rng};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn status(d: &Daemon, ctx: &Path) -> Value {
    let out = d.ctl(&["status", "--json", ctx.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "status failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// The one project of `ctx`.
fn project(d: &Daemon, ctx: &Path) -> Value {
    let s = status(d, ctx);
    let projects = s["projects"].as_array().cloned().unwrap_or_default();
    assert_eq!(projects.len(), 1, "one project expected: {s:#}");
    projects[0].clone()
}

fn wait_project(d: &Daemon, ctx: &Path, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let p = project(d, ctx);
        if ok(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "status never showed {what}; last:\n{p:#}\n--- daemon log ---\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn step<'a>(p: &'a Value, instruction: &str) -> &'a Value {
    p["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["instruction"] == instruction))
        .unwrap_or_else(|| panic!("no step {instruction:?} in {p:#}"))
}

/// Instructions of the steps in `state`.
fn steps_in(p: &Value, state: &str) -> BTreeSet<String> {
    p["steps"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter(|s| s["state"] == state)
                .filter_map(|s| s["instruction"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// 1. Never stale
// ---------------------------------------------------------------------------

/// The reproduction: a save lands while the build runs, after its
/// COPY read the file. Right after the build, the project and the COPY (and
/// what follows it) are dirty, and the next build re-runs exactly those.
#[test]
fn a_save_after_the_copy_read_the_file_leaves_the_build_dirty() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "FROM base\nCOPY app.txt /app.txt\nRUN sleep 2 && cat /app.txt\n",
        &[("app.txt", "v1")],
    );
    d.build_ok(ctx.path(), &[]);
    std::fs::write(ctx.path().join("app.txt"), "v2").unwrap();
    let build = d.spawn_build(ctx.path(), &[]);
    // The COPY has read v2 and the RUN sleeps: save v3 now.
    let during = wait_project(&d, ctx.path(), "the COPY done and the RUN building", |p| {
        p["state"] == "building"
            && step(p, "COPY app.txt /app.txt")["state"] == "done"
            && step(p, "RUN sleep 2 && cat /app.txt")["state"] == "building"
    });
    // A running step says since when; every step has its planned cache key.
    let running = step(&during, "RUN sleep 2 && cat /app.txt");
    let since = running["started_at_ms"].as_i64().expect("started_at_ms");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((0..30_000).contains(&(now_ms - since)), "{during:#}");
    assert_eq!(
        running["cache_key"].as_str().unwrap().len(),
        64,
        "{during:#}"
    );
    assert_eq!(
        step(&during, "COPY app.txt /app.txt")["started_at_ms"],
        Value::Null
    );
    std::fs::write(ctx.path().join("app.txt"), "v3").unwrap();
    let out = BuildOutcome::wait(build);
    assert!(out.success, "{}", out.text());
    assert!(out
        .executed()
        .contains(&"COPY app.txt /app.txt".to_string()));

    // Right after the build: no waiting.
    let p = project(&d, ctx.path());
    assert_eq!(p["state"], "dirty", "{p:#}");
    let copy = step(&p, "COPY app.txt /app.txt");
    assert_eq!(copy["state"], "dirty", "{p:#}");
    assert!(
        strs(&copy["why"]).contains(&"file changed: app.txt".to_string()),
        "{p:#}"
    );
    assert_eq!(step(&p, "RUN sleep 2 && cat /app.txt")["state"], "dirty");
    assert_eq!(
        steps_in(&p, "clean"),
        [
            "COPY busybox /bin/busybox",
            "RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]"
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );
    assert!(strs(&p["changed_files"]).contains(&"app.txt".to_string()));

    let next = d.build_ok(ctx.path(), &[]);
    assert_eq!(
        next.executed(),
        vec!["COPY app.txt /app.txt", "RUN sleep 2 && cat /app.txt"]
    );
    let p = project(&d, ctx.path());
    assert_eq!(p["state"], "clean", "{p:#}");
}

/// Saves at random moments while builds run. After every build, the steps
/// `status` calls dirty are exactly the steps a quiet build then runs (a
/// from-scratch plan, compared with the cache), and after that build the
/// project is clean. Every save writes new bytes, so a dirty step is never
/// in the cache already.
#[test]
fn status_agrees_with_the_next_build_whatever_the_save_timing() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "FROM base\nCOPY a.txt /a.txt\nRUN sleep 0.5\nCOPY b.txt /b.txt\nRUN cat /a.txt /b.txt > /out\n",
        &[("a.txt", "a0"), ("b.txt", "b0"), ("c.txt", "c0")],
    );
    d.build_ok(ctx.path(), &[]);
    let mut rng = Rng::from_time();
    let mut dirty_seen = 0;
    for round in 0..12 {
        // The build has work to do: the COPY of a.txt and all after it.
        std::fs::write(
            ctx.path().join("a.txt"),
            format!("start {round} {}", rng.next()),
        )
        .unwrap();
        let build = d.spawn_build(ctx.path(), &[]);
        std::thread::sleep(Duration::from_millis(rng.below(1500)));
        let file = ["a.txt", "b.txt", "c.txt"][rng.below(3) as usize];
        let content = format!("{file} round {round} {}", rng.next());
        std::fs::write(ctx.path().join(file), &content).unwrap();
        let out = BuildOutcome::wait(build);
        assert!(out.success, "round {round}: {}", out.text());
        // The daemon sees a save within milliseconds; one that landed after
        // the build ended is given that long.
        std::thread::sleep(Duration::from_millis(150));
        let p = project(&d, ctx.path());
        let dirty = steps_in(&p, "dirty");
        assert_eq!(
            p["state"] == "dirty",
            !dirty.is_empty(),
            "round {round}: state and steps disagree: {p:#}"
        );
        dirty_seen += usize::from(!dirty.is_empty());
        let quiet = d.build_ok(ctx.path(), &[]);
        let ran: BTreeSet<String> = quiet.executed().into_iter().collect();
        assert_eq!(
            dirty, ran,
            "round {round} (saved {file}): status said these steps were dirty, the next build ran those; status was:\n{p:#}"
        );
        let after = project(&d, ctx.path());
        assert_eq!(after["state"], "clean", "round {round}: {after:#}");
    }
    eprintln!("{dirty_seen} of 12 rounds ended dirty");
}

/// `watch` rebuilds for a save that landed during its build.
#[test]
fn watch_rebuilds_for_a_save_during_its_build() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "FROM base\nCOPY f /f\nRUN sleep 2 && cat /f\n",
        &[("f", "one")],
    );
    let watch = d.ctl_lines(&["watch", "--progress", "plain", ctx.path().to_str().unwrap()]);
    let wait_for = |what: &str| watch.wait_for(what, Duration::from_secs(60));
    wait_for("== built");
    std::fs::write(ctx.path().join("f"), "two").unwrap();
    // The rebuild copied "two"; its RUN sleeps: save again.
    wait_for("COPY f /f DONE");
    std::fs::write(ctx.path().join("f"), "three").unwrap();
    wait_for("== built");
    let next = wait_for("== built");
    drop(watch);
    assert!(
        next.iter().any(|l| l.contains("COPY f /f DONE")),
        "the save during the build must be built: {next:?}"
    );
    let p = project(&d, ctx.path());
    assert_eq!(p["state"], "clean", "{p:#}");
}

// ---------------------------------------------------------------------------
// 2. Failures as data
// ---------------------------------------------------------------------------

fn assert_one_line(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"));
    assert!(
        !s.contains('\n') && !s.contains('\r'),
        "{what} has a line break: {s:?}"
    );
}

#[test]
fn a_failed_run_is_data_in_status_explain_and_the_failed_event() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "FROM base\nCOPY a.txt /a.txt\n  RUN echo first line && echo boom >&2 && exit 3\nRUN echo never\n",
        &[("a.txt", "a")],
    );
    std::fs::create_dir(ctx.path().join("sub")).unwrap();
    let ctx_path = ctx.path().canonicalize().unwrap();
    let dockerfile = ctx_path.join("Dockerfile").display().to_string();
    // An unnormalized -f: the reports name the file by its clean path.
    let build = || {
        BuildOutcome::from_output(d.ctl_in(
            &[
                "build",
                "--progress",
                "json",
                "-f",
                "./sub/../Dockerfile",
                ".",
            ],
            Some(&ctx_path),
        ))
    };
    let out = build();
    assert!(!out.success, "{}", out.text());
    let failed_run = "RUN echo first line && echo boom >&2 && exit 3";

    let planned = out
        .events
        .iter()
        .find(|e| e["event"] == "planned")
        .expect("planned event");
    let index = planned["steps"]
        .as_array()
        .unwrap()
        .iter()
        .position(|s| s["instruction"] == failed_run)
        .expect("the failing step is planned");

    let event = out
        .events
        .iter()
        .find(|e| e["event"] == "failed")
        .expect("failed event");
    let failure = &event["failure"];
    assert_eq!(failure["kind"], "step_failed", "{event:#}");
    assert_eq!(failure["step"], index, "{event:#}");
    assert_eq!(failure["file"], dockerfile.as_str(), "{event:#}");
    assert_eq!(failure["line"], 6, "{event:#}");
    assert_eq!(failure["column"], 3, "{event:#}");
    assert_eq!(failure["exit_code"], 3, "{event:#}");
    assert_eq!(
        failure["message"],
        format!("{failed_run} failed: exit code 3"),
        "{event:#}"
    );
    let output = strs(&failure["output"]);
    assert!(
        output.iter().any(|l| l.contains("first line")),
        "{output:?}"
    );
    assert!(output.iter().any(|l| l.contains("boom")), "{output:?}");
    for l in failure["output"].as_array().unwrap() {
        assert_one_line(l, "an output line");
    }

    // status: the failed step, the steps before it clean, the one after not built.
    let p = project(&d, &ctx_path);
    assert_eq!(p["state"], "failed", "{p:#}");
    let s = step(&p, failed_run);
    assert_eq!(s["state"], "failed", "{p:#}");
    assert_eq!(&s["failure"], failure, "{p:#}");
    assert_eq!(step(&p, "COPY a.txt /a.txt")["state"], "clean", "{p:#}");
    let never = step(&p, "RUN echo never");
    assert_eq!(never["state"], "dirty", "{p:#}");
    assert!(strs(&never["why"])[0].starts_with("not built"), "{p:#}");
    assert_eq!(&p["last_build"]["failure"], failure, "{p:#}");
    assert_one_line(&p["last_build"]["error"], "last_build.error");
    // The error names the Dockerfile by its clean path too.
    assert!(
        p["last_build"]["error"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{dockerfile}:6:3: ")),
        "{p:#}"
    );
    assert_eq!(p["dockerfile"], dockerfile.as_str());

    // explain: what failed and why it ran.
    let e = d.ctl_json(&["explain", ctx_path.to_str().unwrap()]);
    assert_eq!(&e["failure"], failure, "{e:#}");
    assert_one_line(&e["failed"], "explain's failed");
    let steps = e["steps"].as_array().unwrap();
    assert_eq!(steps[index]["outcome"], "failed", "{e:#}");
    assert_eq!(&steps[index]["failure"], failure, "{e:#}");
    assert_eq!(
        strs(&steps[index]["why"]),
        vec!["new step (no earlier build of it)"],
        "{e:#}"
    );
    assert_eq!(steps[index + 1]["outcome"], "not_built", "{e:#}");
    assert_eq!(steps[index - 1]["outcome"], "rebuilt", "{e:#}");
    // explain in text says it too, and exits non-zero.
    let text = d.ctl(&["explain", ctx_path.to_str().unwrap()]);
    assert!(!text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("FAILED") && text.contains("exit code 3"),
        "{text}"
    );

    // Fixing the line makes that step dirty, and a build fixes the project.
    let fixed = std::fs::read_to_string(ctx_path.join("Dockerfile"))
        .unwrap()
        .replace("exit 3", "exit 0");
    std::fs::write(ctx_path.join("Dockerfile"), fixed).unwrap();
    let p = wait_project(&d, &ctx_path, "the fixed step dirty", |p| {
        p["state"] == "dirty"
    });
    // Steps are listed as the last build had them, with why they are dirty.
    let s = step(&p, failed_run);
    assert_eq!(s["state"], "dirty", "{p:#}");
    assert!(
        strs(&s["why"])[0].starts_with("instruction changed (line 6)"),
        "{p:#}"
    );
    assert_eq!(s["failure"], Value::Null, "{p:#}");
    assert!(steps_in(&p, "failed").is_empty(), "{p:#}");
    let out = build();
    assert!(out.success, "{}", out.text());
    assert_eq!(project(&d, &ctx_path)["state"], "clean");
}

#[test]
fn a_dockerfile_that_does_not_parse_fails_with_its_place() {
    let d = Daemon::start();
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[
            ("Dockerfile", "FROM scratch\nCOPY a /a\nBOGUS x\n"),
            ("a", "a"),
        ],
    );
    let ctx_path = ctx.path().canonicalize().unwrap();
    let out = d.build(&ctx_path, &[]);
    assert!(!out.success);
    let event = out
        .events
        .iter()
        .find(|e| e["event"] == "failed")
        .expect("failed event");
    let failure = &event["failure"];
    assert_eq!(failure["kind"], "invalid_input", "{event:#}");
    assert_eq!(failure["step"], Value::Null, "{event:#}");
    assert_eq!(failure["line"], 3, "{event:#}");
    assert_eq!(failure["column"], 1, "{event:#}");
    assert_eq!(
        failure["file"],
        ctx_path.join("Dockerfile").display().to_string()
    );
    assert_one_line(&failure["message"], "message");
    assert!(
        !failure["message"]
            .as_str()
            .unwrap()
            .starts_with("Dockerfile:"),
        "{event:#}"
    );
    let p = project(&d, &ctx_path);
    assert_eq!(p["state"], "failed");
    assert_eq!(&p["last_build"]["failure"], failure, "{p:#}");
}

// ---------------------------------------------------------------------------
// 3. The stream
// ---------------------------------------------------------------------------

/// Reads `status --follow` lines on a thread.
fn follow(d: &Daemon, args: &[&str]) -> (std::process::Child, mpsc::Receiver<Value>) {
    let mut child = Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["status", "--json", "--follow"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            let _ = tx.send(v);
        }
    });
    (child, rx)
}

fn next_line(rx: &mpsc::Receiver<Value>, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if ok(&v) => return v,
            Ok(v) => seen.push(v),
            Err(_) => panic!("no line with {what}; saw {seen:#?}"),
        }
    }
}

/// CPU ticks (user + system) a process used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn status_follow_prints_a_line_per_change_and_idles_without_spinning() {
    let d = Daemon::start();
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "one")],
    );
    let ctx_path = ctx.path().canonicalize().unwrap();
    let built = d.build_ok(&ctx_path, &[]);
    let id = project(&d, &ctx_path)["id"].as_str().unwrap().to_string();
    // Events carry the project id, `planned` included.
    assert!(built.events.iter().any(|e| e["event"] == "planned"));
    for e in &built.events {
        assert_eq!(e["project"], id.as_str(), "{e}");
    }

    let (mut child, rx) = follow(&d, &[ctx_path.to_str().unwrap()]);
    let first = next_line(&rx, "the project, clean", |v| v["id"] == id.as_str());
    assert_eq!(first["state"], "clean", "{first:#}");
    assert_eq!(first["steps"][0]["instruction"], "COPY f /f");

    // Idle: a long poll, not a loop.
    let pid = child.id();
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(pid) - before;
    assert!(used <= 5, "an idle follow used {used} CPU ticks in 2 s");

    std::fs::write(ctx_path.join("f"), "two").unwrap();
    let dirty = next_line(&rx, "state dirty", |v| v["state"] == "dirty");
    assert_eq!(dirty["id"], id.as_str());
    assert!(strs(&dirty["changed_files"]).contains(&"f".to_string()));
    d.build_ok(&ctx_path, &[]);
    next_line(&rx, "state building", |v| v["state"] == "building");
    next_line(&rx, "state clean", |v| v["state"] == "clean");
    let forgot = d.ctl(&["forget", ctx_path.to_str().unwrap()]);
    assert!(forgot.status.success());
    let gone = next_line(&rx, "forgotten", |v| v["state"] == "forgotten");
    assert_eq!(gone["id"], id.as_str());
    let _ = child.kill();
    let _ = child.wait();
}

/// With no daemon, `status --json` and `status --json --follow` print a JSON
/// error object and exit 69 (docs/CLI.md, "Exit status").
#[test]
fn status_json_without_a_daemon_prints_a_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    for follow in [false, true] {
        let mut cmd = Command::new(bin_dir().join("memobuild-ctl"));
        cmd.arg("--socket").arg(&socket).args(["status", "--json"]);
        if follow {
            cmd.arg("--follow");
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(69), "follow={follow}");
        let v: Value = serde_json::from_slice(&out.stdout).expect("a JSON error object");
        assert_eq!(v["error"]["kind"], "unavailable", "{v:#}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("none.sock"));
    }
}

// ---------------------------------------------------------------------------
// 4. Tidy projects
// ---------------------------------------------------------------------------

#[test]
fn status_and_explain_pick_by_dockerfile_and_target() {
    let d = Daemon::start();
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[
            (
                "Dockerfile",
                "FROM scratch AS a\nCOPY a /a\nFROM scratch AS b\nCOPY b /b\n",
            ),
            ("other.Dockerfile", "FROM scratch\nCOPY a /other\n"),
            ("a", "a"),
            ("b", "b"),
        ],
    );
    let ctx_path = ctx.path().canonicalize().unwrap();
    let c = ctx_path.to_str().unwrap();
    d.build_ok(&ctx_path, &["--target", "a"]);
    d.build_ok(&ctx_path, &["--target", "b"]);
    let other = ctx_path.join("other.Dockerfile");
    d.build_ok(&ctx_path, &["-f", other.to_str().unwrap()]);
    assert_eq!(
        status(&d, &ctx_path)["projects"].as_array().unwrap().len(),
        3
    );

    // One context, three projects: explain needs to be told which.
    let out = d.ctl(&["explain", "--json", c]);
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "invalid_input", "{v:#}");
    // ... and says which ones there are, by id, Dockerfile and target.
    let message = v["error"]["message"].as_str().unwrap();
    for p in status(&d, &ctx_path)["projects"].as_array().unwrap() {
        assert!(message.contains(p["id"].as_str().unwrap()), "{v:#}");
    }
    assert!(message.contains("other.Dockerfile"), "{v:#}");
    assert!(message.contains("target b"), "{v:#}");

    let b = d.ctl_json(&["status", c, "--target", "b"]);
    let projects = b["projects"].as_array().unwrap();
    assert_eq!(projects.len(), 1, "{b:#}");
    assert_eq!(projects[0]["target"], "b");
    let e = d.ctl_json(&["explain", c, "--target", "b"]);
    assert_eq!(e["project"], projects[0]["id"]);
    assert_eq!(e["steps"][0]["instruction"], "COPY b /b");

    // -f as a build takes it: relative to the working directory, unnormalized.
    let o = d.ctl_in(
        &["status", "--json", ".", "-f", "./a/../other.Dockerfile"],
        Some(&ctx_path),
    );
    // `a` is a file, not a directory: the path is taken lexically.
    let o: Value = serde_json::from_slice(&o.stdout).unwrap();
    let projects = o["projects"].as_array().unwrap();
    assert_eq!(projects.len(), 1, "{o:#}");
    assert_eq!(projects[0]["dockerfile"], other.display().to_string());
    let e = d.ctl_json(&["explain", c, "-f", other.to_str().unwrap()]);
    assert_eq!(e["steps"][0]["instruction"], "COPY a /other");

    let none = d.ctl(&["status", "--json", c, "--target", "c"]);
    assert!(!none.status.success());
    let v: Value = serde_json::from_slice(&none.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "not_found", "{v:#}");
}

/// `max-projects` forgets the least recently built project when one more is
/// built, `forget-projects-after` the ones nobody built for that long; their
/// watches go with them.
#[test]
fn unused_projects_and_those_beyond_the_cap_are_forgotten_with_their_watches() {
    let d = Daemon::start_with(&["--max-projects", "2", "--forget-projects-after", "6s"]);
    let contexts: Vec<tempfile::TempDir> = (0..3)
        .map(|i| {
            let ctx = tempfile::tempdir().unwrap();
            write_files(
                ctx.path(),
                &[
                    ("Dockerfile", "FROM scratch\nCOPY f /f\n"),
                    ("f", &format!("{i}")),
                ],
            );
            ctx
        })
        .collect();
    let paths: Vec<String> = contexts
        .iter()
        .map(|c| c.path().canonicalize().unwrap().display().to_string())
        .collect();
    let watched = |s: &Value| -> BTreeSet<String> {
        s["daemon"]["trees"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["root"].as_str().unwrap().to_string())
            .collect()
    };
    let listed = |s: &Value| -> BTreeSet<String> {
        s["projects"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["context"].as_str().unwrap().to_string())
            .collect()
    };
    for p in &paths {
        d.build_ok(Path::new(p), &[]);
    }
    let s = d.ctl_json(&["status"]);
    let newest: BTreeSet<String> = paths[1..].iter().cloned().collect();
    assert_eq!(listed(&s), newest, "{s:#}");
    assert!(!watched(&s).contains(&paths[0]), "{s:#}");
    assert!(newest.iter().all(|p| watched(&s).contains(p)), "{s:#}");
    assert!(s["projects"][0]["last_used"].as_i64().unwrap() > 1_700_000_000);

    // Building one again keeps it: the other is now the least recently used.
    d.build_ok(Path::new(&paths[1]), &[]);
    d.build_ok(Path::new(&paths[0]), &[]);
    let s = d.ctl_json(&["status"]);
    assert_eq!(
        listed(&s),
        [paths[0].clone(), paths[1].clone()].into_iter().collect(),
        "{s:#}"
    );

    // Then nobody builds: all are forgotten, and nothing is watched.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = d.ctl_json(&["status"]);
        if listed(&s).is_empty() && s["daemon"]["watch_count"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "still kept after 20 s: {s:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(d.log().contains("forgot projects"), "{}", d.log());
}

// ---------------------------------------------------------------------------
// 6. Eager builds
// ---------------------------------------------------------------------------

/// With `eager on`, a save is built in the background: the next `build` is
/// the fast path and its image has the save. Without it, nothing builds by
/// itself.
#[test]
fn eager_builds_have_the_image_ready_and_only_for_projects_that_opted_in() {
    let d = Daemon::start();
    let ctx = busybox_context("FROM base\nCOPY f /f\nRUN cat /f > /g\n", &[("f", "one")]);
    let ctx_path = ctx.path().canonicalize().unwrap();
    let c = ctx_path.to_str().unwrap();
    d.build_ok(&ctx_path, &[]);

    // Not opted in: a save leaves the project dirty.
    std::fs::write(ctx_path.join("f"), "two").unwrap();
    wait_project(&d, &ctx_path, "dirty", |p| p["state"] == "dirty");
    std::thread::sleep(Duration::from_millis(1500));
    let p = project(&d, &ctx_path);
    assert_eq!(p["state"], "dirty", "{p:#}");
    assert_eq!(p["eager"], false);

    // Opted in while dirty: it builds at once.
    let on = d.ctl(&["eager", "on", c]);
    assert!(
        on.status.success(),
        "{}",
        String::from_utf8_lossy(&on.stderr)
    );
    let p = wait_project(&d, &ctx_path, "clean after the eager build", |p| {
        p["state"] == "clean"
    });
    assert_eq!(p["eager"], true);

    // A save: built in the background; then `build` finds the image ready.
    std::fs::write(ctx_path.join("f"), "three").unwrap();
    wait_project(&d, &ctx_path, "the save seen", |p| p["state"] != "clean");
    wait_project(&d, &ctx_path, "clean again", |p| p["state"] == "clean");
    let out_dir = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out_dir.path().display());
    let next = d.build_ok(&ctx_path, &["-o", &dest]);
    assert!(next.executed().is_empty(), "{}", next.text());
    assert_eq!(
        std::fs::read_to_string(out_dir.path().join("g")).unwrap(),
        "three"
    );

    // Off again: saves wait for a build.
    let off = d.ctl(&["eager", "off", c]);
    assert!(off.status.success());
    std::fs::write(ctx_path.join("f"), "four").unwrap();
    wait_project(&d, &ctx_path, "dirty", |p| p["state"] == "dirty");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(project(&d, &ctx_path)["state"], "dirty");
}

/// A project `COPY f /f` + `RUN sleep SECS && cat /f > /g`, built, opted in
/// to eager builds, and `f` saved: returns once the eager build runs its RUN.
fn eager_build_running(d: &Daemon, secs: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let run = format!("RUN sleep {secs} && cat /f > /g");
    let ctx = busybox_context(&format!("FROM base\nCOPY f /f\n{run}\n"), &[("f", "one")]);
    let path = ctx.path().canonicalize().unwrap();
    d.build_ok(&path, &[]);
    let on = d.ctl(&["eager", "on", path.to_str().unwrap()]);
    assert!(on.status.success());
    std::fs::write(path.join("f"), "two").unwrap();
    wait_project(d, &path, "the eager build running its RUN", |p| {
        p["state"] == "building" && step(p, &run)["state"] == "building"
    });
    (ctx, path)
}

/// An explicit build never waits for an eager one: the eager build is
/// cancelled (leaving no failed build behind) and resumes after it.
#[test]
fn an_eager_build_yields_to_an_explicit_build_and_resumes_after_it() {
    let d = Daemon::start();
    let (_slow, slow_path) = eager_build_running(&d, 4);

    let other = tempfile::tempdir().unwrap();
    write_files(
        other.path(),
        &[("Dockerfile", "FROM scratch\nCOPY x /x\n"), ("x", "x")],
    );
    let started = Instant::now();
    d.build_ok(other.path(), &[]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the explicit build waited {:?}",
        started.elapsed()
    );
    assert!(d.log().contains("the eager build yields"), "{}", d.log());

    // The eager build comes back and finishes; no failed build was recorded.
    let p = wait_project(&d, &slow_path, "clean after the resumed eager build", |p| {
        p["state"] == "clean"
    });
    assert_eq!(p["last_build"]["result"], "success", "{p:#}");
    let next = d.build_ok(&slow_path, &[]);
    assert!(next.executed().is_empty(), "{}", next.text());
}

/// A save that lands while an eager build runs is not lost: that build ends
/// dirty, and the project gets another eager build right after it, so the
/// next `build` finds the last save's image ready.
#[test]
fn a_save_during_an_eager_build_gets_the_next_eager_build() {
    let d = Daemon::start();
    let (_ctx, ctx_path) = eager_build_running(&d, 2);
    std::fs::write(ctx_path.join("f"), "three").unwrap();

    wait_project(&d, &ctx_path, "clean after the next eager build", |p| {
        p["state"] == "clean"
    });
    let out_dir = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out_dir.path().display());
    let next = d.build_ok(&ctx_path, &["-o", &dest]);
    assert!(next.executed().is_empty(), "{}", next.text());
    assert_eq!(
        std::fs::read_to_string(out_dir.path().join("g")).unwrap(),
        "three"
    );
}

/// A project whose Dockerfile came on stdin (`-f -`) is re-planned with that
/// text after an edit: its COPY is dirty because of the file, not "cannot be
/// planned" for want of a file named `-` in the context.
#[test]
fn a_dockerfile_from_stdin_is_replanned_after_an_edit() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let ctx = dir.path().canonicalize().unwrap();
    std::fs::write(ctx.join("a.txt"), "1").unwrap();
    std::fs::write(ctx.join("b.txt"), "1").unwrap();
    let mut build = d
        .ctl_command()
        .args(["build", "--progress", "json", "-f", "-"])
        .arg(&ctx)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    build
        .stdin
        .take()
        .unwrap()
        .write_all(b"FROM scratch\nCOPY a.txt /a\nCOPY b.txt /b\n")
        .unwrap();
    let built = build.wait_with_output().unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    wait_project(&d, &ctx, "clean", |p| p["state"] == "clean");

    std::fs::write(ctx.join("b.txt"), "2").unwrap();
    let p = wait_project(&d, &ctx, "the second COPY dirty", |p| {
        step(p, "COPY b.txt /b")["state"] == "dirty"
    });
    assert_eq!(step(&p, "COPY a.txt /a")["state"], "clean", "{p:#}");
    let why = step(&p, "COPY b.txt /b")["why"].to_string();
    assert!(why.contains("b.txt"), "{p:#}");
    assert!(!why.contains("cannot be planned"), "{p:#}");
}
