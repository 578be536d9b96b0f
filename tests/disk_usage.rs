//! `memobuild-ctl du` counts everything under the data dir, including the
//! private containerd's unpacked snapshots, and `prune --all` reclaims those
//! (issue 15, item 4). Real daemon, containerd and runc.

mod common;
use common::{busybox_context, Daemon};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// `du -sb PATH` (apparent bytes, as the daemon counts them).
fn du_sb(path: &Path) -> u64 {
    let out = Command::new("du")
        .arg("-sb")
        .arg(path)
        .output()
        .expect("du (coreutils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .expect("du -sb prints a number")
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The overlay snapshots of the private containerd.
fn snapshots_dir(d: &Daemon) -> std::path::PathBuf {
    d.data
        .join("containerd/root/io.containerd.snapshotter.v1.overlayfs")
}

#[test]
fn du_counts_the_whole_data_dir_and_prune_all_reclaims_snapshots() {
    let d = Daemon::start();
    // Each stage's RUN unpacks its parent chain into containerd snapshots.
    let ctx = busybox_context(
        "FROM base AS one
RUN head -c 3000000 /dev/urandom > /one.bin
RUN head -c 2000000 /dev/urandom > /two.bin && cat /one.bin > /dev/null
FROM base AS two
RUN head -c 1000000 /dev/urandom > /three.bin
RUN ls /three.bin
FROM scratch
COPY --from=one /two.bin /
COPY --from=two /three.bin /
",
        &[],
    );
    d.build_ok(ctx.path(), &[]);
    let snapshots_before = du_sb(&snapshots_dir(&d));
    assert!(
        snapshots_before > 3_000_000,
        "the RUN steps left no unpacked chains ({snapshots_before} bytes)"
    );
    let u = d.ctl_json(&["du"]);
    let on_disk = du_sb(&d.data);
    let counted = n(&u["disk_bytes"]);
    assert!(
        counted.abs_diff(on_disk) * 10 <= on_disk,
        "du says {counted} bytes, du -sb {on_disk}: {u:#}"
    );
    // The snapshots are in it: more than the blobs alone.
    assert!(
        n(&u["containerd_bytes"]) >= snapshots_before / 10 * 9,
        "{u:#}"
    );
    assert!(
        counted > n(&u["total_bytes"]) + snapshots_before / 2,
        "{u:#}"
    );
    // The human table shows both.
    let table = String::from_utf8_lossy(&d.ctl(&["du"]).stdout).into_owned();
    assert!(
        table.contains("snapshots") && table.contains("on disk"),
        "{table}"
    );

    let r = d.ctl_json(&["prune", "--all"]);
    assert!(n(&r["cache_entries_removed"]) > 0, "{r:#}");
    let snapshots_after = du_sb(&snapshots_dir(&d));
    assert!(
        snapshots_after * 2 < snapshots_before,
        "prune --all left the unpacked chains: {snapshots_before} -> {snapshots_after} bytes\n{}",
        d.log()
            .lines()
            .filter(|l| l.contains("snapshot") || l.contains("chain") || l.contains("garbage"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let after = d.ctl_json(&["du"]);
    assert!(
        n(&after["containerd_bytes"]) < n(&u["containerd_bytes"]),
        "{after:#}"
    );
    let on_disk = du_sb(&d.data);
    assert!(
        n(&after["disk_bytes"]).abs_diff(on_disk) * 10 <= on_disk,
        "{after:#}"
    );
    // And the next build works from scratch.
    d.build_ok(ctx.path(), &[]);
    d.assert_store_consistent();
}
