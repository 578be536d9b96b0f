//! Many clients at once against one daemon (real containerd): identical
//! requests share one build, different projects run in parallel up to
//! `--max-parallel-builds` and queue fairly beyond it, and a client's Ctrl-C
//! cancels a shared build only when it was the last one waiting.

mod common;
use common::{busybox_context, oci_file, BuildOutcome, Daemon};
use std::process::Child;
use std::time::{Duration, Instant};

#[test]
fn twenty_identical_builds_share_one_execution() {
    let d = Daemon::start();
    // The RUN's output is random: one execution is the only way every
    // client can get the same image. It runs long enough for all 20 clients
    // to start and connect even on a loaded 2-core CI machine (a client that
    // came after the end would rightly get a new, cached build).
    let ctx = busybox_context(
        "RUN sleep 10 && cat /proc/sys/kernel/random/uuid > /stamp\n",
        &[],
    );
    let children: Vec<Child> = (0..20).map(|_| d.spawn_build(ctx.path(), &[])).collect();
    let outcomes: Vec<BuildOutcome> = children.into_iter().map(BuildOutcome::wait).collect();
    for o in &outcomes {
        assert!(o.success, "a client's build failed:\n{}", o.text());
    }
    let ids: std::collections::BTreeSet<u64> = outcomes.iter().map(|o| o.build_id()).collect();
    assert_eq!(ids.len(), 1, "identical requests ran as builds {ids:?}");
    let digests: std::collections::BTreeSet<String> =
        outcomes.iter().map(|o| o.manifest_digest()).collect();
    assert_eq!(
        digests.len(),
        1,
        "clients got different images: {digests:?}"
    );
    // Every client saw the live progress of the one execution.
    for o in &outcomes {
        assert!(
            o.executed().iter().any(|s| s.starts_with("RUN sleep 10")),
            "a client did not see the RUN step run:\n{}",
            o.text()
        );
    }
    // The next request starts a new build (answered from the cache).
    let again = d.build_ok(ctx.path(), &[]);
    assert_ne!(again.build_id(), *ids.iter().next().unwrap());
    assert_eq!(again.manifest_digest(), *digests.iter().next().unwrap());
}

#[test]
fn different_projects_run_in_parallel_up_to_the_limit_and_queue_beyond() {
    let d = Daemon::start_with(&["--max-parallel-builds", "2"]);
    let contexts: Vec<tempfile::TempDir> = (0..6)
        .map(|i| {
            busybox_context(
                "COPY in.txt /in.txt\nRUN sleep 1 && cat /in.txt /in.txt > /out.txt\n",
                &[("in.txt", &format!("old {i}\n"))],
            )
        })
        .collect();
    // Known projects (built once), so `status` lists them while they queue.
    for c in &contexts {
        d.build_ok(c.path(), &[]);
    }
    for (i, c) in contexts.iter().enumerate() {
        std::fs::write(c.path().join("in.txt"), format!("project {i}\n")).unwrap();
    }
    let dests: Vec<std::path::PathBuf> = (0..6)
        .map(|i| d.dir.path().join(format!("out{i}.tar")))
        .collect();
    let mut children: Vec<Child> = contexts
        .iter()
        .zip(&dests)
        .map(|(c, dest)| {
            let spec = format!("type=oci,dest={}", dest.display());
            d.spawn_build(c.path(), &["-o", &spec])
        })
        .collect();
    // Watch the daemon while they run: never more than 2 at once, some queued.
    let (mut max_running, mut max_queued, mut queued_projects) = (0, 0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = d.ctl_json(&["status"]);
        max_running = max_running.max(status["daemon"]["running_builds"].as_u64().unwrap());
        max_queued = max_queued.max(status["daemon"]["queued_builds"].as_u64().unwrap());
        let projects = status["projects"].as_array().cloned().unwrap_or_default();
        queued_projects =
            queued_projects.max(projects.iter().filter(|p| p["state"] == "queued").count());
        // (Their progress output is small: the pipes cannot fill up.)
        let all_exited = children
            .iter_mut()
            .all(|c| c.try_wait().expect("client status").is_some());
        if all_exited || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let outcomes: Vec<BuildOutcome> = children.into_iter().map(BuildOutcome::wait).collect();
    let mut queued = 0;
    for (i, o) in outcomes.iter().enumerate() {
        assert!(o.success, "build {i} failed:\n{}", o.text());
        if o.log_lines().iter().any(|l| l.starts_with("queued:")) {
            queued += 1;
        }
        let out = oci_file(&dests[i], "/out.txt").expect("/out.txt in the image");
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("project {i}\nproject {i}\n")
        );
    }
    assert!(max_running <= 2, "{max_running} builds ran at once");
    assert!(max_running >= 1);
    assert!(
        queued >= 3,
        "only {queued} of 6 builds reported being queued"
    );
    assert!(max_queued >= 1, "status never showed a queued build");
    assert!(queued_projects >= 1, "status never showed a project queued");
}

/// Sends SIGINT (what Ctrl-C does) to a client.
fn ctrl_c(child: &Child) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits until a host process runs exactly `args` (the RUN step's command).
/// Waits until the daemon reports a build running.
fn wait_until_building(d: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.ctl_json(&["status"])["daemon"]["running_builds"] != 1 {
        assert!(Instant::now() < deadline, "the build never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_for_process(args: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " ").trim_end() == args)
                .unwrap_or(false)
        });
        if running {
            return;
        }
        assert!(Instant::now() < deadline, "`{args}` never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_cancels_a_shared_build_only_for_the_last_client() {
    let d = Daemon::start();
    let ctx = busybox_context("RUN sleep 3 && echo done > /done\n", &[]);
    let first = d.spawn_build(ctx.path(), &[]);
    let second = d.spawn_build(ctx.path(), &[]);
    wait_for_process("sleep 3");
    ctrl_c(&first);
    let first = BuildOutcome::wait(first);
    assert!(!first.success, "the interrupted client should fail");
    let second = BuildOutcome::wait(second);
    assert!(
        second.success,
        "the other client's build was cancelled:\n{}\n{}",
        second.text(),
        d.log()
    );
    assert_eq!(first.build_id(), second.build_id());

    // Both clients interrupt: the build is cancelled.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "{}RUN sleep 30 && echo done > /done\n",
            common::BUSYBOX_BASE
        ),
    )
    .unwrap();
    let started = Instant::now();
    let a = d.spawn_build(ctx.path(), &[]);
    let b = d.spawn_build(ctx.path(), &[]);
    wait_for_process("sleep 30");
    ctrl_c(&a);
    std::thread::sleep(Duration::from_millis(300));
    ctrl_c(&b);
    let (a, b) = (BuildOutcome::wait(a), BuildOutcome::wait(b));
    assert!(!a.success && !b.success);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = d.ctl_json(&["status"]);
        let last = &status["projects"][0]["last_build"];
        if last["result"] == "failed" {
            let error = last["error"].as_str().unwrap_or("");
            assert!(error.contains("cancelled"), "{last}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the build was not cancelled: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the cancelled build ran to its end"
    );
}

#[test]
fn a_build_whose_clients_all_vanished_is_cancelled_after_the_lease() {
    let d = Daemon::start();
    let ctx = busybox_context("RUN sleep 120 && echo done > /done\n", &[]);
    let mut client = d.spawn_build(ctx.path(), &[]);
    // This daemon's build, not another test run's `sleep 120` on the machine.
    wait_until_building(&d);
    wait_for_process("sleep 120");
    // Killed without a chance to send `cancel`.
    client.kill().unwrap();
    let _ = client.wait();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    loop {
        let status = d.ctl_json(&["status"]);
        let last = &status["projects"][0]["last_build"];
        if last["result"] == "failed" {
            assert!(
                last["error"].as_str().unwrap_or("").contains("cancelled"),
                "{last}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned build was not cancelled: {status:#}\ndaemon log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Not before the lease (30 s) ran out.
    assert!(
        started.elapsed() >= Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert!(d.log().contains("no client has polled the build"));
}
