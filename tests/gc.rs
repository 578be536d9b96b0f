//! Disk garbage collection and corrupt blobs, against a real daemon: `du`,
//! `prune` (with and without --all, --keep-storage LRU), `--max-storage`, GC
//! while builds run, and a layer blob corrupted on disk being dropped,
//! reported and rebuilt. Every test ends with `memobuild-ctl verify` clean.

mod common;
use common::{busybox_context, oci_file, Daemon, Rng};
use std::path::Path;
use std::time::{Duration, Instant};

const KB: u64 = 1024;

/// Finished builds' images are kept this long for their clients to fetch.
fn wait_result_grace() {
    std::thread::sleep(Duration::from_millis(3500));
}

/// A `FROM scratch` context copying one incompressible file of `len` bytes.
fn copy_context(rng: &mut Rng, len: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY big.bin /big.bin\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("big.bin"), rng.bytes(len)).unwrap();
    dir
}

fn du(d: &Daemon) -> serde_json::Value {
    d.ctl_json(&["du"])
}

fn n(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn du_and_prune_keep_what_images_and_last_builds_use() {
    let mut rng = Rng::from_time();
    let d = Daemon::start();
    let a = copy_context(&mut rng, 200 * KB as usize);
    let first = rng.bytes(200 * KB as usize);
    std::fs::write(a.path().join("big.bin"), &first).unwrap();
    d.build_ok(a.path(), &[]);
    for _ in 0..2 {
        std::fs::write(a.path().join("big.bin"), rng.bytes(200 * KB as usize)).unwrap();
        d.build_ok(a.path(), &[]);
    }
    let b = copy_context(&mut rng, 100 * KB as usize);
    d.build_ok(b.path(), &["-t", "keep:1"]);

    let before = du(&d);
    assert_eq!(n(&before["images"]), 1);
    assert!(n(&before["image_bytes"]) >= 100 * KB, "{before:#}");
    // Three layers of A: the last two builds' and one only a cache entry names.
    assert!(n(&before["cache_bytes"]) >= 600 * KB, "{before:#}");
    assert_eq!(
        n(&before["total_bytes"]),
        n(&before["image_bytes"]) + n(&before["cache_bytes"]) + n(&before["unreferenced_bytes"])
    );
    let human = String::from_utf8_lossy(&d.ctl(&["du"]).stdout).into_owned();
    assert!(
        human.contains("build cache") && human.contains("images"),
        "{human}"
    );

    // Without --all: only A's first layer goes (no image, no last build uses it).
    wait_result_grace();
    let pruned = d.ctl_json(&["prune"]);
    assert_eq!(n(&pruned["cache_entries_removed"]), 1, "{pruned:#}");
    assert!(n(&pruned["bytes_freed"]) >= 200 * KB, "{pruned:#}");
    let after = du(&d);
    assert_eq!(n(&after["unreferenced_bytes"]), 0, "{after:#}");
    assert_eq!(n(&after["image_bytes"]), n(&before["image_bytes"]));
    d.assert_store_consistent();
    assert!(
        d.build_ok(a.path(), &[]).executed().is_empty(),
        "A's last build must stay cached"
    );
    std::fs::write(a.path().join("big.bin"), &first).unwrap();
    let rebuilt = d.build_ok(a.path(), &[]);
    assert_eq!(
        rebuilt.executed(),
        ["COPY big.bin /big.bin"],
        "the pruned entry must be rebuilt"
    );

    // --all: every cache entry goes; the image's blobs stay.
    wait_result_grace();
    let all = d.ctl_json(&["prune", "--all"]);
    assert!(n(&all["cache_entries_removed"]) >= 2, "{all:#}");
    let emptied = du(&d);
    assert_eq!(n(&emptied["cache_entries"]), 0, "{emptied:#}");
    assert_eq!(n(&emptied["image_bytes"]), n(&before["image_bytes"]));
    assert_eq!(
        n(&emptied["cache_bytes"]) + n(&emptied["unreferenced_bytes"]),
        0,
        "{emptied:#}"
    );
    d.assert_store_consistent();
    let out = d.dir.path().join("b.tar");
    let spec = format!("type=oci,dest={}", out.display());
    let again = d.build_ok(b.path(), &["-t", "keep:1", "-o", &spec]);
    assert_eq!(
        again.manifest_digest(),
        d.build_ok(b.path(), &[]).manifest_digest()
    );
    assert_eq!(
        oci_file(&out, "/big.bin").unwrap(),
        std::fs::read(b.path().join("big.bin")).unwrap()
    );
    d.assert_store_consistent();
}

#[test]
fn keep_storage_removes_least_recently_used_entries_first() {
    let mut rng = Rng::from_time();
    let d = Daemon::start();
    let contexts: Vec<_> = (0..3)
        .map(|_| copy_context(&mut rng, 300 * KB as usize))
        .collect();
    // Last use, oldest first: Y (1), Z (2), X (0, used again last).
    for i in [0, 1, 2, 0] {
        d.build_ok(contexts[i].path(), &[]);
        std::thread::sleep(Duration::from_millis(1100));
    }
    wait_result_grace();
    let r = d.ctl_json(&["prune", "--all", "--keep-storage", "700k"]);
    assert_eq!(n(&r["cache_entries_removed"]), 1, "{r:#}");
    assert!(n(&r["bytes_after"]) <= 700 * KB, "{r:#}");
    d.assert_store_consistent();
    assert!(d.build_ok(contexts[0].path(), &[]).executed().is_empty());
    assert!(d.build_ok(contexts[2].path(), &[]).executed().is_empty());
    assert_eq!(
        d.build_ok(contexts[1].path(), &[]).executed().len(),
        1,
        "the LRU entry was kept"
    );
    // Nothing to do when the store is already small enough.
    let r = d.ctl_json(&["prune", "--keep-storage", "10g"]);
    assert_eq!(n(&r["cache_entries_removed"]), 0, "{r:#}");
    let bad = d.ctl(&["prune", "--keep-storage", "lots"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("invalid size"));
}

#[test]
fn max_storage_prunes_after_builds() {
    let mut rng = Rng::from_time();
    let d = Daemon::start_with(&["--max-storage", "1m"]);
    let ctx = copy_context(&mut rng, 400 * KB as usize);
    for _ in 0..6 {
        std::fs::write(ctx.path().join("big.bin"), rng.bytes(400 * KB as usize)).unwrap();
        d.build_ok(ctx.path(), &[]);
    }
    // GC runs after a build; earlier results' grace has passed by the next one.
    wait_result_grace();
    assert!(d.build_ok(ctx.path(), &[]).executed().is_empty());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let u = du(&d);
        assert_eq!(n(&u["max_storage"]), 1024 * KB);
        if n(&u["total_bytes"]) <= 1024 * KB {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "store stayed above max-storage: {u:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The log is written by a background writer: the line may trail the freed bytes.
    while !d.log().contains("garbage collection") {
        assert!(Instant::now() < deadline, "no GC in the log: {}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.build_ok(ctx.path(), &[]).executed().is_empty());
    d.assert_store_consistent();
    let check = |size: &str| {
        std::process::Command::new(common::bin_dir().join("memobuildd"))
            .args(["--check-config", "--max-storage", size])
            .output()
            .unwrap()
    };
    let ok = check("20GB");
    assert!(ok.status.success());
    assert!(String::from_utf8_lossy(&ok.stdout).contains("max-storage = 21474836480"));
    let bad = check("20 gigs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("max-storage: invalid size"));
}

/// Builds `ctx` with `-o type=oci` and checks `path` in the image has `want`.
fn build_and_check(d: &Daemon, ctx: &Path, out: &Path, path: &str, want: &[u8]) {
    let spec = format!("type=oci,dest={}", out.display());
    d.build_ok(ctx, &["-o", &spec]);
    let got = oci_file(out, path).unwrap_or_else(|| panic!("{path} missing in the image"));
    assert!(
        got == want,
        "{path} in the image of {} is wrong",
        ctx.display()
    );
}

#[test]
fn gc_during_builds_never_breaks_them() {
    let d = Daemon::start();
    // Builders still running; each lowers it when it ends, even by panicking.
    let remaining = std::sync::atomic::AtomicUsize::new(4);
    struct Done<'a>(&'a std::sync::atomic::AtomicUsize);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    std::thread::scope(|s| {
        let mut builders = Vec::new();
        for t in 0..4u64 {
            let (d, remaining) = (&d, &remaining);
            builders.push(s.spawn(move || {
                let _done = Done(remaining);
                let mut rng = Rng(t * 7919 + 1);
                let run = t % 2 == 0;
                let ctx = if run {
                    busybox_context(
                        "COPY in.bin /in.bin\nRUN cat /in.bin /in.bin > /out.bin\n",
                        &[],
                    )
                } else {
                    busybox_context("COPY in.bin /out.bin\n", &[])
                };
                for round in 0..4 {
                    let content = rng.bytes(50 * 1024);
                    std::fs::write(ctx.path().join("in.bin"), &content).unwrap();
                    let want = if run {
                        [content.clone(), content].concat()
                    } else {
                        content
                    };
                    let out = d.dir.path().join(format!("gc-{t}-{round}.tar"));
                    build_and_check(d, ctx.path(), &out, "/out.bin", &want);
                }
            }));
        }
        let pruner = s.spawn(|| {
            let mut prunes = 0;
            while remaining.load(std::sync::atomic::Ordering::SeqCst) > 0 {
                let args: &[&str] = match prunes % 3 {
                    0 => &["prune", "--all", "--keep-storage", "1k"],
                    1 => &["prune", "--all"],
                    _ => &["prune"],
                };
                let out = d.ctl(args);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                prunes += 1;
                std::thread::sleep(Duration::from_millis(30));
            }
            prunes
        });
        for b in builders {
            b.join().expect("a builder failed");
        }
        let prunes = pruner.join().expect("pruner failed");
        assert!(prunes >= 5, "only {prunes} prunes ran during the builds");
    });
    d.assert_store_consistent();
    d.ctl_json(&["prune", "--all"]);
    let report = d.assert_store_consistent();
    assert_eq!(report["cache_entries"], 0, "{report:#}");
}

/// Flips bytes in the middle of the largest blob (the big layer); returns its digest.
fn corrupt_largest_blob(data: &Path) -> String {
    let dir = data.join("blobs/sha256");
    let (path, len) = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| (e.path(), e.metadata().unwrap().len()))
        .max_by_key(|(_, len)| *len)
        .expect("a blob");
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[(len / 2) as usize..(len / 2) as usize + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&path, bytes).unwrap();
    format!("sha256:{}", path.file_name().unwrap().to_string_lossy())
}

#[test]
fn a_corrupt_layer_blob_is_reported_dropped_and_rebuilt() {
    let mut rng = Rng::from_time();
    let mut d = Daemon::start();
    let ctx = copy_context(&mut rng, 100 * KB as usize);
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY big.bin /big.bin\nCOPY Dockerfile /Dockerfile\n",
    )
    .unwrap();
    let content = std::fs::read(ctx.path().join("big.bin")).unwrap();
    let out = d.dir.path().join("img.tar");
    let spec = format!("type=oci,dest={}", out.display());
    // SOURCE_DATE_EPOCH: the rebuilt COPY is a new result (its files' and
    // history's times would be the rebuild's); with it, the image is the same.
    let args = ["-o", &spec, "--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let good = d.build_ok(ctx.path(), &args).manifest_digest();
    for restart in [false, true] {
        let digest = corrupt_largest_blob(&d.data);
        let verify = d.ctl(&["verify"]);
        assert!(!verify.status.success());
        assert!(String::from_utf8_lossy(&verify.stdout).contains(&digest));
        if restart {
            d.restart();
        }
        let rebuilt = d.build_ok(ctx.path(), &args);
        let warning = rebuilt
            .log_lines()
            .into_iter()
            .find(|l| l.contains("corrupt"));
        assert!(
            warning.as_deref().is_some_and(|w| w.contains(&digest)),
            "no corrupt-blob warning in the progress:\n{}",
            rebuilt.text()
        );
        assert_eq!(
            rebuilt.executed(),
            ["COPY big.bin /big.bin"],
            "{}",
            rebuilt.text()
        );
        assert_eq!(rebuilt.manifest_digest(), good);
        assert_eq!(oci_file(&out, "/big.bin").unwrap(), content);
        assert!(
            d.log().contains("corrupt blob"),
            "no warning in the daemon log"
        );
        d.assert_store_consistent();
        assert_eq!(n(&du(&d)["unreferenced_blobs"]), 0);
    }
}

/// Committed snapshots (unpacked layer chains) in the daemon's private containerd.
fn chain_snapshots(d: &Daemon) -> Vec<String> {
    d.ctr(&["snapshots", "ls"])
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(2) == Some("Committed"))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn prune_drops_unpacked_layer_chains_no_image_needs() {
    let d = Daemon::start();
    let tagged = busybox_context("RUN echo a > /a\n", &[]);
    let other = busybox_context(
        "COPY in.txt /in.txt\nRUN cat /in.txt > /b\n",
        &[("in.txt", "x\n")],
    );
    d.build_ok(tagged.path(), &["-t", "tagged:1"]);
    d.build_ok(other.path(), &[]);
    let before = chain_snapshots(&d);
    assert!(before.len() >= 2, "no chains were unpacked: {before:?}");
    wait_result_grace();
    d.ctl_json(&["prune", "--all"]);
    let after = chain_snapshots(&d);
    assert!(
        after.len() < before.len(),
        "before {before:?}, after {after:?}"
    );
    // The tagged image's chain (busybox installed) is kept; the rest went.
    assert!(!after.is_empty(), "the tagged image's chains went too");
    // Builds unpack what they need again.
    std::fs::write(other.path().join("in.txt"), "y\n").unwrap();
    let out = d.dir.path().join("o.tar");
    let spec = format!("type=oci,dest={}", out.display());
    d.build_ok(other.path(), &["-o", &spec]);
    assert_eq!(oci_file(&out, "/b").unwrap(), b"y\n");
    d.assert_store_consistent();
}

/// Serves `body` for every GET (and HEAD) with a fixed ETag, on 127.0.0.1;
/// counts the GETs.
fn serve_bytes(body: Vec<u8>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/big.bin", listener.local_addr().unwrap());
    let gets = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = gets.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                    break;
                }
            }
            let head = request.starts_with("HEAD");
            if !head {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            let mut conn = conn;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if !head {
                let _ = conn.write_all(&body);
            }
        }
    });
    (url, gets)
}

/// What `DATA/downloads` holds (names), temporary entries aside.
fn downloads(d: &Daemon) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(d.data.join("downloads"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(".tmp"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `ADD https://...` downloads into `DATA/downloads`; an admin's `prune`
/// drops them (`--filter until=` keeps those used since), a user's build
/// downloads again afterwards, and `max-storage` drops them after a build.
#[test]
fn prune_and_max_storage_drop_downloads() {
    use sha2::Digest;
    let mut rng = Rng::from_time();
    let body = rng.bytes(600 * KB as usize);
    let sha = hex::encode(sha2::Sha256::digest(&body));
    let (url, gets) = serve_bytes(body.clone());
    let d = Daemon::start();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM scratch\nADD {url} /big.bin\n"),
    )
    .unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("img.tar");
    build_and_check(&d, ctx.path(), &out, "big.bin", &body);
    assert_eq!(downloads(&d), std::slice::from_ref(&sha));
    // Reused (same ETag) by the next build, which marks it used.
    build_and_check(&d, ctx.path(), &out, "big.bin", &body);
    assert_eq!(gets.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Used within the last hour: kept.
    d.ctl_json(&["prune", "--filter", "until=1h"]);
    assert_eq!(downloads(&d), std::slice::from_ref(&sha));
    let pruned = d.ctl_json(&["prune"]);
    assert_eq!(downloads(&d), Vec::<String>::new());
    assert!(n(&pruned["bytes_freed"]) >= 600 * KB, "{pruned:#}");
    // The next build downloads it again.
    build_and_check(&d, ctx.path(), &out, "big.bin", &body);
    assert_eq!(gets.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(downloads(&d), std::slice::from_ref(&sha));
    drop(d);

    // Above max-storage after a build, downloads go.
    let d = Daemon::start_with(&["--max-storage", "1m"]);
    build_and_check(&d, ctx.path(), &out, "big.bin", &body);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !downloads(&d).is_empty() {
        assert!(
            Instant::now() < deadline,
            "downloads stayed above max-storage: {:?}\n{}",
            downloads(&d),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.assert_store_consistent();
}
