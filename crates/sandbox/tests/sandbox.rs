//! RUN in a real containerd: each test starts a private containerd (the
//! `containerd` and `runc` Debian packages) in a temp dir, on a base layer made
//! from busybox-static (`/bin/busybox`) and written by the engine's layer writer
//! into a real blob store. Missing packages fail these tests; they never skip.

use memobuild_oci::{ChangeSet, Content, EntryKind, LayerEntry};
use memobuild_sandbox::{
    ExitReason, LayerInput, Network, OutputChunk, OutputStream, PrivateContainerd, RunOutcome,
    RunSpec, Sandbox, LABEL_RUN,
};
use memobuild_store::Store;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const BUSYBOX: &str = "/bin/busybox";

fn entry(kind: EntryKind, mode: u32) -> LayerEntry {
    LayerEntry {
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime: 7,
    }
}

fn bytes(text: &str) -> EntryKind {
    EntryKind::File(Content::Bytes(text.as_bytes().to_vec()))
}

/// busybox with every applet linked in /bin, plus a few files the tests change.
fn base_changes() -> ChangeSet {
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} is missing: apt-get install busybox-static"
    );
    let mut c = ChangeSet::default();
    c.insert("bin".into(), entry(EntryKind::Dir, 0o755));
    c.insert(
        "bin/busybox".into(),
        entry(EntryKind::File(Content::Path(BUSYBOX.into())), 0o755),
    );
    let list = std::process::Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" && !applet.contains('/') {
            c.insert(
                format!("bin/{applet}"),
                entry(EntryKind::Symlink("busybox".into()), 0o777),
            );
        }
    }
    c.insert("data".into(), entry(EntryKind::Dir, 0o755));
    c.insert("data/keep.txt".into(), entry(bytes("keep\n"), 0o644));
    c.insert("data/remove.txt".into(), entry(bytes("remove\n"), 0o644));
    c.insert("data/chmod.txt".into(), entry(bytes("chmod\n"), 0o644));
    c.insert("replaced".into(), entry(EntryKind::Dir, 0o755));
    c.insert("replaced/a".into(), entry(bytes("a\n"), 0o644));
    c.insert("replaced/b".into(), entry(bytes("b\n"), 0o644));
    c.insert("tmp".into(), entry(EntryKind::Dir, 0o1777));
    // Like real images, the base has the mount-point directories; on a base
    // without them the first RUN layer adds them, as BuildKit's does (covered
    // by the conformance cases).
    for dir in ["dev", "etc", "proc", "sys"] {
        c.insert(dir.into(), entry(EntryKind::Dir, 0o755));
    }
    c
}

struct Env {
    sandbox: Sandbox,
    containerd_dir: std::path::PathBuf,
    containerd: Option<PrivateContainerd>,
    store: Store,
    base: Vec<LayerInput>,
    _dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        // Short path: the containerd socket must fit in sun_path.
        let dir = tempfile::Builder::new()
            .prefix("mb-sbx-")
            .tempdir_in("/tmp")
            .unwrap();
        let store = Store::open(&dir.path().join("store")).unwrap();
        let record = base_changes().write(&store.blobs).unwrap();
        let base = vec![layer_input(&store.blobs, &record)];
        let (sandbox, containerd) = Sandbox::start_private(&dir.path().join("ctd"))
            .await
            .unwrap_or_else(|e| panic!("private containerd: {e}"));
        assert_eq!(sandbox.cleanup_orphans().await.unwrap(), 0);
        Env {
            sandbox,
            containerd_dir: dir.path().join("ctd"),
            containerd: Some(containerd),
            store,
            base,
            _dir: dir,
        }
    }

    /// Stops containerd after checking nothing of any run is left.
    async fn finish(mut self) {
        assert_clean(&self.sandbox).await;
        if let Some(c) = self.containerd.take() {
            c.shutdown().await;
        }
    }
}

fn sh(script: &str) -> RunSpec {
    RunSpec {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["HOME=/root".into()],
        hostname: "memobuild-test".into(),
        ..RunSpec::default()
    }
}

/// Runs and collects the output (stdout, stderr).
async fn run(
    sandbox: &Sandbox,
    layers: &[LayerInput],
    spec: &RunSpec,
) -> (RunOutcome, String, String) {
    let (tx, mut rx) = mpsc::channel::<OutputChunk>(16);
    let collect = tokio::spawn(async move {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(chunk) = rx.recv().await {
            match chunk.stream {
                OutputStream::Stdout => out.extend(chunk.data),
                OutputStream::Stderr => err.extend(chunk.data),
            }
        }
        (
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )
    });
    let outcome = sandbox
        .run(layers, spec, tx)
        .await
        .unwrap_or_else(|e| panic!("run {:?}: {e}", spec.args));
    let (out, err) = collect.await.unwrap();
    (outcome, out, err)
}

/// No runc container, rootfs mount, task, container, lease or run snapshot
/// of any run is left; only the committed layer chain remains.
async fn assert_clean(sandbox: &Sandbox) {
    use memobuild_sandbox::NAMESPACE;
    let runs = sandbox.runs_present().await;
    assert!(runs.is_empty(), "left: {runs:?}");
    let client = sandbox.client();
    let containers = client
        .containers()
        .list(
            sandbox.req(containerd_client::services::v1::ListContainersRequest { filters: vec![] }),
        )
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "containers left: {containers:?}");
    let tasks = client
        .tasks()
        .list(
            sandbox.req(containerd_client::services::v1::ListTasksRequest {
                filter: String::new(),
            }),
        )
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(tasks.is_empty(), "tasks left: {tasks:?}");
    let leases = client
        .leases()
        .list(sandbox.req(containerd_client::services::v1::ListRequest { filters: vec![] }))
        .await
        .unwrap()
        .into_inner()
        .leases;
    assert!(leases.is_empty(), "leases left in {NAMESPACE}: {leases:?}");
    let mut stream = client
        .snapshots()
        .list(sandbox.req(
            containerd_client::services::v1::snapshots::ListSnapshotsRequest {
                snapshotter: "overlayfs".into(),
                filters: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    while let Some(msg) = stream.message().await.unwrap() {
        for info in msg.info {
            assert!(
                info.labels.contains_key("memobuild.chain")
                    && !info.labels.contains_key(LABEL_RUN)
                    && info.kind
                        == containerd_client::services::v1::snapshots::Kind::Committed as i32,
                "snapshot left: {info:?}"
            );
        }
    }
}

async fn chain_snapshots(sandbox: &Sandbox) -> usize {
    let mut stream = sandbox
        .client()
        .snapshots()
        .list(sandbox.req(
            containerd_client::services::v1::snapshots::ListSnapshotsRequest {
                snapshotter: "overlayfs".into(),
                filters: vec!["labels.\"memobuild.chain\"".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(msg) = stream.message().await.unwrap() {
        n += msg.info.len();
    }
    n
}

/// (kind, mode, uid, gid) per path, with file contents read now.
fn describe(changes: &ChangeSet) -> BTreeMap<String, String> {
    changes
        .entries
        .iter()
        .map(|(path, e)| {
            let kind = match &e.kind {
                EntryKind::File(Content::Path(p) | Content::Checked { path: p, .. }) => {
                    format!("file {:?}", std::fs::read_to_string(p).unwrap())
                }
                EntryKind::File(Content::Bytes(b)) => {
                    format!("file {:?}", String::from_utf8_lossy(b))
                }
                EntryKind::Dir => "dir".into(),
                EntryKind::OpaqueDir => "opaque dir".into(),
                EntryKind::Symlink(t) => format!("symlink {t}"),
                EntryKind::Hardlink(t) => format!("hardlink {t}"),
                EntryKind::Whiteout => "whiteout".into(),
                EntryKind::Node(n) => format!("node {n:?}"),
            };
            (
                path.clone(),
                format!("{kind} {:o} {}:{}", e.mode, e.uid, e.gid),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_gives_exactly_its_changes_and_streams_output() {
    let env = Env::start().await;

    // Two steps at once on a chain nobody has unpacked yet: both unpack it,
    // one commit wins, both run.
    let (spec_a, spec_b) = (sh("echo a"), sh("echo b"));
    let (a, b) = tokio::join!(
        run(&env.sandbox, &env.base, &spec_a),
        run(&env.sandbox, &env.base, &spec_b)
    );
    assert_eq!((a.1.as_str(), b.1.as_str()), ("a\n", "b\n"));
    assert!(a.0.changes.is_empty() && b.0.changes.is_empty());
    a.0.snapshot.release().await;
    b.0.snapshot.release().await;

    let script = r#"set -e
echo hello-stdout
echo hello-stderr >&2
echo new > /data/new.txt
rm /data/remove.txt
chmod 0600 /data/chmod.txt
ln -s /data/keep.txt /data/link
mkdir -p /newdir/sub
echo x > /newdir/sub/f
ln /newdir/sub/f /newdir/hard
chown 1000:1000 /newdir/sub
rm -rf /replaced
mkdir /replaced
echo n > /replaced/new
mknod /newdir/pipe p
mknod /newdir/null c 1 3
"#;
    let started = Instant::now();
    let (outcome, out, err) = run(&env.sandbox, &env.base, &sh(script)).await;
    let elapsed = started.elapsed();
    assert_eq!(outcome.exit, ExitReason::Code(0), "stderr: {err}");
    assert_eq!(out, "hello-stdout\n");
    assert_eq!(err, "hello-stderr\n");
    let got = describe(&outcome.changes);
    let expected: BTreeMap<String, String> = [
        ("data", "dir 755 0:0"),
        ("data/chmod.txt", "file \"chmod\\n\" 600 0:0"),
        ("data/link", "symlink /data/keep.txt 777 0:0"),
        ("data/new.txt", "file \"new\\n\" 644 0:0"),
        ("data/remove.txt", "whiteout 0 0:0"),
        ("newdir", "dir 755 0:0"),
        ("newdir/hard", "file \"x\\n\" 644 0:0"),
        (
            "newdir/null",
            "node CharDevice { major: 1, minor: 3 } 644 0:0",
        ),
        ("newdir/pipe", "node Fifo 644 0:0"),
        ("newdir/sub", "dir 755 1000:1000"),
        ("newdir/sub/f", "hardlink newdir/hard 644 0:0"),
        ("replaced", "opaque dir 755 0:0"),
        ("replaced/new", "file \"n\\n\" 644 0:0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(got, expected);

    // The layer: OCI whiteout and opaque markers, readable as a tar.
    let record = outcome.changes.write(&env.store.blobs).unwrap();
    let again = outcome.changes.write(&env.store.blobs).unwrap();
    assert_eq!(record, again, "layers must be deterministic");
    let mut names = Vec::new();
    let mut tar = tar::Archive::new(
        memobuild_oci::layer::open_layer(&env.store.blobs, &record.digest).unwrap(),
    );
    for e in tar.entries().unwrap() {
        let e = e.unwrap();
        names.push(e.path().unwrap().to_string_lossy().into_owned());
    }
    assert!(
        names.contains(&"data/.wh.remove.txt".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"replaced/.wh..wh..opq".to_string()),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.starts_with("etc")
            || n.starts_with("proc")
            || n.starts_with("dev")
            || n.starts_with("sys")),
        "{names:?}"
    );
    outcome.snapshot.release().await;
    eprintln!(
        "first RUN (incl. unpacking the base layer): {elapsed:?} {:?}",
        outcome.timings
    );

    // A step on top of that layer sees it applied (by containerd's applier).
    let mut layers = env.base.clone();
    layers.push(layer_input(&env.store.blobs, &record));
    let check = "test ! -e /data/remove.txt && ls /replaced && cat /data/link && stat -c '%a %u' /data/chmod.txt /newdir/sub && stat -c '%F %t %T' /newdir/pipe /newdir/null && test -e /etc/hosts && hostname";
    let (outcome, out, err) = run(&env.sandbox, &layers, &sh(check)).await;
    assert_eq!(outcome.exit, ExitReason::Code(0), "stderr: {err}");
    assert_eq!(
        out,
        "new\nkeep\n600 0\n755 1000\nfifo 0 0\ncharacter special file 1 3\nmemobuild-test\n"
    );
    assert!(
        outcome.changes.is_empty(),
        "{:?}",
        describe(&outcome.changes)
    );
    outcome.snapshot.release().await;

    // A trivial RUN on an unpacked chain: the cost of one step.
    let mut samples = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let (outcome, out, _) = run(&env.sandbox, &layers, &sh("echo hi")).await;
        assert_eq!(out, "hi\n");
        let timings = outcome.timings;
        let released = Instant::now();
        outcome.snapshot.release().await;
        samples.push((started.elapsed(), timings, released.elapsed()));
    }
    for (total, t, release) in &samples {
        eprintln!(
            "trivial RUN: total {total:?} = setup {:?} + run {:?} + teardown {:?} + diff {:?} + release {release:?}",
            t.setup, t.run, t.teardown, t.diff
        );
    }
    // The chain (base, base+step) stays unpacked for the next steps.
    assert_eq!(chain_snapshots(&env.sandbox).await, 2);
    // Disk GC: keep the base's chain only, then nothing.
    let base_chain = memobuild_sandbox::chain_ids(env.base.iter().map(|l| l.diff_id.as_str()));
    let keep = base_chain.iter().cloned().collect();
    assert_eq!(env.sandbox.prune_chains(&keep).await.unwrap(), 1);
    assert_eq!(chain_snapshots(&env.sandbox).await, 1);
    assert_eq!(
        env.sandbox.prune_chains(&Default::default()).await.unwrap(),
        1
    );
    assert_eq!(chain_snapshots(&env.sandbox).await, 0);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_limits_and_isolation() {
    let env = Env::start().await;
    let sandbox = &env.sandbox;

    // Non-zero exit: reported, output kept, nothing to diff.
    let (outcome, out, _) = run(sandbox, &env.base, &sh("echo before; touch /x; exit 3")).await;
    assert_eq!(outcome.exit, ExitReason::Code(3));
    assert_eq!(out, "before\n");
    assert!(outcome.changes.is_empty());

    // Timeout.
    let spec = RunSpec {
        timeout: Some(Duration::from_secs(1)),
        ..sh("echo start; sleep 60")
    };
    let started = Instant::now();
    let (outcome, out, _) = run(sandbox, &env.base, &spec).await;
    assert_eq!(outcome.exit, ExitReason::Timeout(Duration::from_secs(1)));
    assert_eq!(out, "start\n");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );

    // Memory: 32 MiB, and a shell that holds 128 MiB in a variable.
    let spec = RunSpec {
        memory_bytes: Some(32 << 20),
        ..sh("x=$(head -c 134217728 /dev/zero | tr '\\0' a); echo ${#x}")
    };
    let (outcome, out, err) = run(sandbox, &env.base, &spec).await;
    assert_eq!(
        outcome.exit,
        ExitReason::OutOfMemory {
            limit: Some(32 << 20)
        },
        "stdout {out:?} stderr {err:?}"
    );
    assert!(outcome.exit.to_string().contains("memory limit of 32 MiB"));

    // Pids: a fork bomb of sleeps with at most 16 processes.
    let spec = RunSpec {
        pids: Some(16),
        ..sh("i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done; wait")
    };
    let started = Instant::now();
    let (outcome, _, err) = run(sandbox, &env.base, &spec).await;
    assert_eq!(
        outcome.exit,
        ExitReason::PidsLimit { limit: Some(16) },
        "stderr {err:?}"
    );
    assert!(outcome.exit.to_string().contains("limit of 16 processes"));
    assert!(started.elapsed() < Duration::from_secs(20));

    // The limits as the step's own cgroup shows them (v1 here, v2 elsewhere).
    let spec = RunSpec {
        cpus: Some(0.5),
        memory_bytes: Some(64 << 20),
        pids: Some(100),
        ..sh("if [ -e /sys/fs/cgroup/cpu.max ]; then cd /sys/fs/cgroup; cat cpu.max memory.max pids.max; \
              else echo $(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us); \
              cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max; fi")
    };
    let (outcome, out, err) = run(sandbox, &env.base, &spec).await;
    assert_eq!(outcome.exit, ExitReason::Code(0), "{err}");
    assert_eq!(out, "50000 100000\n67108864\n100\n");
    outcome.snapshot.release().await;

    // Network none: only lo, and it is up.
    let (outcome, out, err) = run(sandbox, &env.base, &sh("ls /sys/class/net; cat /sys/class/net/lo/operstate; ip -o addr show lo | grep -c 127.0.0.1")).await;
    assert_eq!(outcome.exit, ExitReason::Code(0), "{err}");
    assert_eq!(out, "lo\nunknown\n1\n");
    outcome.snapshot.release().await;

    // Network host: the host's interfaces.
    let spec = RunSpec {
        network: Network::Host,
        ..sh("ls /sys/class/net")
    };
    let (outcome, out, err) = run(sandbox, &env.base, &spec).await;
    assert_eq!(outcome.exit, ExitReason::Code(0), "{err}");
    let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    assert_eq!(out.lines().collect::<Vec<_>>(), host);
    outcome.snapshot.release().await;

    // No host paths: the host's root has /usr/bin/containerd; the step has only
    // the image's files and the default mounts.
    let (outcome, out, err) = run(
        sandbox,
        &env.base,
        &sh("ls /; test ! -e /usr; id -u; wc -c < /etc/resolv.conf"),
    )
    .await;
    assert_eq!(outcome.exit, ExitReason::Code(0), "{err}");
    assert_eq!(out, "bin\ndata\ndev\netc\nproc\nreplaced\nsys\ntmp\n0\n0\n");
    assert!(
        outcome.changes.is_empty(),
        "{:?}",
        describe(&outcome.changes)
    );
    outcome.snapshot.release().await;

    // User, cwd, env, extra mounts (never in the diff).
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("secret"), "s3cret").unwrap();
    let spec = RunSpec {
        uid: 1000,
        gid: 1000,
        cwd: "/tmp".into(),
        env: vec!["FOO=bar".into()],
        mounts: vec![
            memobuild_sandbox::ExtraMount {
                source: memobuild_sandbox::MountSource::Host(host.path().join("secret")),
                target: "/run/secrets/token".into(),
                readonly: true,
            },
            memobuild_sandbox::ExtraMount {
                source: memobuild_sandbox::MountSource::Host(host.path().to_path_buf()),
                target: "/cache".into(),
                readonly: false,
            },
        ],
        ..sh("id -u; id -g; pwd; echo $FOO; cat /run/secrets/token; echo; echo cached > /cache/out; echo mine > /tmp/mine")
    };
    std::fs::set_permissions(
        host.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let (outcome, out, err) = run(sandbox, &env.base, &spec).await;
    assert_eq!(outcome.exit, ExitReason::Code(0), "{err}");
    assert_eq!(out, "1000\n1000\n/tmp\nbar\ns3cret\n");
    assert_eq!(
        std::fs::read_to_string(host.path().join("out")).unwrap(),
        "cached\n"
    );
    let got = describe(&outcome.changes);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        vec!["tmp", "tmp/mine"],
        "{got:?}"
    );
    outcome.snapshot.release().await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_crashed_runs_leave_nothing() {
    let env = Env::start().await;
    let sandbox = &env.sandbox;
    let (tx, _rx) = mpsc::channel(16);

    // Cancelled: the future is dropped mid-run; the guard cleans up.
    let spec = sh("sleep 60");
    let run = sandbox.run(&env.base, &spec, tx.clone());
    assert!(tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .is_err());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let containers = sandbox
            .client()
            .containers()
            .list(
                sandbox.req(containerd_client::services::v1::ListContainersRequest {
                    filters: vec![],
                }),
            )
            .await
            .unwrap()
            .into_inner()
            .containers;
        let leases = sandbox
            .client()
            .leases()
            .list(sandbox.req(containerd_client::services::v1::ListRequest { filters: vec![] }))
            .await
            .unwrap()
            .into_inner()
            .leases;
        if containers.is_empty() && leases.is_empty() && sandbox.runs_present().await.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled run was not cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_clean(sandbox).await;

    // Crashed: the future is forgotten (no guard runs), as if the daemon died;
    // cleanup_orphans at the next start removes the runc container, the
    // rootfs mount, the snapshot and the lease.
    let mut run = Box::pin(sandbox.run(&env.base, &spec, tx.clone()));
    assert!(tokio::time::timeout(Duration::from_secs(3), &mut run)
        .await
        .is_err());
    std::mem::forget(run);
    assert_eq!(
        sandbox.runs_present().await.len(),
        2,
        "the run is under way"
    );
    let removed = sandbox.cleanup_orphans().await.unwrap();
    assert_eq!(removed, 4, "runc container, mount, snapshot and lease");
    assert_clean(sandbox).await;

    // And the next run works.
    let (outcome, out, _) = self::run(sandbox, &env.base, &sh("echo ok")).await;
    assert_eq!(outcome.exit, ExitReason::Code(0));
    assert_eq!(out, "ok\n");
    outcome.snapshot.release().await;

    // kill -9 of the daemon mid-RUN: its private containerd and the step's
    // runc live on. The next start stops that containerd, starts a fresh one on the
    // same root and state, and cleanup_orphans removes the run.
    let mut env = env;
    let mut run = Box::pin(env.sandbox.run(&env.base, &spec, tx.clone()));
    assert!(tokio::time::timeout(Duration::from_secs(3), &mut run)
        .await
        .is_err());
    std::mem::forget(run);
    let old = env.containerd.take().unwrap();
    let old_pid = old.pid().unwrap();
    std::mem::forget(old);
    let (sandbox, containerd) = Sandbox::start_private(&env.containerd_dir).await.unwrap();
    assert!(
        !Path::new(&format!("/proc/{old_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{old_pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        "the old containerd still runs"
    );
    assert_eq!(sandbox.cleanup_orphans().await.unwrap(), 4);
    env.sandbox = sandbox;
    env.containerd = Some(containerd);
    assert_clean(&env.sandbox).await;
    let (outcome, out, _) = self::run(&env.sandbox, &env.base, &sh("echo again")).await;
    assert_eq!(out, "again\n");
    outcome.snapshot.release().await;
    env.finish().await;
}

#[test]
fn layer_writer_emits_oci_markers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut c = ChangeSet::default();
    c.insert("a".into(), entry(EntryKind::OpaqueDir, 0o750));
    c.insert("a/new".into(), entry(bytes("n"), 0o644));
    c.insert("gone".into(), entry(EntryKind::Whiteout, 0));
    c.insert("d/gone".into(), entry(EntryKind::Whiteout, 0));
    let record = c.write(&store.blobs).unwrap();
    assert_eq!(record, c.write(&store.blobs).unwrap());
    let mut reader = memobuild_oci::layer::open_layer(&store.blobs, &record.digest).unwrap();
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw).unwrap();
    let mut tar = tar::Archive::new(raw.as_slice());
    let got: Vec<(String, tar::EntryType, u32, u64)> = tar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                e.path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string(),
                h.entry_type(),
                h.mode().unwrap(),
                h.mtime().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("a".into(), tar::EntryType::Directory, 0o750, 7),
            ("a/.wh..wh..opq".into(), tar::EntryType::Regular, 0, 7),
            ("a/new".into(), tar::EntryType::Regular, 0o644, 7),
            ("d/.wh.gone".into(), tar::EntryType::Regular, 0, 7),
            (".wh.gone".into(), tar::EntryType::Regular, 0, 7),
        ]
    );
}

/// A stored layer as the sandbox takes it.
fn layer_input(
    blobs: &memobuild_store::BlobStore,
    layer: &memobuild_store::LayerRecord,
) -> LayerInput {
    LayerInput {
        digest: layer.digest.clone(),
        diff_id: layer.diff_id.clone(),
        path: blobs.path(&layer.digest).unwrap(),
        media_type: layer.media_type.clone(),
    }
}
