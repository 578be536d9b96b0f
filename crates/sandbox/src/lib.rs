//! RUN steps in sandboxes: one call to [`Sandbox::run`] runs one step with
//! runc on an overlayfs snapshot (containerd's) of the parent's layers,
//! streams its output, enforces its limits, and returns its exit and its
//! filesystem changes as a [`ChangeSet`] ready for the layer writer.
//!
//! ```text
//! layers ──▶ rootfs: chain of committed snapshots, named by chain id (reused)
//!              │ prepare (active, overlay), mounted at BUNDLE/rootfs
//!              ▼
//!            `runc run` (runc.rs; spec.rs), stdout/stderr pipes ──▶ output channel
//!              │ wait / timeout ─▶ kill;  cgroup events ─▶ OOM / pids limit
//!              ▼
//!            diff.rs: the snapshot's upperdir ──▶ ChangeSet
//!              │ (the snapshot lives until the caller has written the layer)
//!              ▼
//!            teardown: container, mount, active snapshot, lease
//! ```
//!
//! Talks to containerd over gRPC only (the `containerd-client` crate) in its
//! own namespace ([`NAMESPACE`]) for snapshots, leases and content, and runs
//! `runc` itself (no containerd task or shim per step: docs/PERFORMANCE.md);
//! it reads the snapshot's upperdir (the diff) and the container's cgroup
//! (which limit it hit) on the same host.
//!
//! **Always clean.** Everything a run creates in containerd carries the label
//! `memobuild.run=<run id>` and is held by a lease of the same name (which
//! also expires after a day, so containerd's GC reclaims it even if nobody
//! cleans); its runc container is named after the run, under memobuild's own
//! runc root. A guard removes the container, the rootfs mount, the active
//! snapshot, the lease and the run directory when the run ends, fails, times
//! out or its future is dropped (cancellation); [`Sandbox::cleanup_orphans`]
//! removes whatever a crashed daemon left. The unpacked layer chain is not a
//! leftover: it is the cache that makes the next run start fast.

// What other crates may use is what this file exports; the rest is private.
#![warn(unreachable_pub)]

mod cgroup;
mod diff;
mod io;
mod materialize;
mod net;
mod private;
mod rootfs;
mod runc;
mod seccomp;
mod spec;

pub use materialize::{Base, Materialized};
pub use net::{BRIDGE, CNI_PACKAGE, GATEWAY, SUBNET};
pub use private::{PrivateContainerd, PACKAGES};
pub use rootfs::chain_ids;
pub use spec::DEFAULT_PATH;

use containerd_client::services::v1::snapshots::{
    ListSnapshotsRequest, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use containerd_client::services::v1::{
    CreateRequest as CreateLeaseRequest, DeleteContainerRequest,
    DeleteRequest as DeleteLeaseRequest, DeleteTaskRequest, KillRequest, ListContainersRequest,
    ListRequest as ListLeasesRequest, WaitRequest,
};
use containerd_client::tonic::metadata::AsciiMetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request, Status};
use memobuild_oci::ChangeSet;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// The containerd namespace memobuild works in unless told otherwise.
pub const NAMESPACE: &str = "memobuild";

/// The label on every container, snapshot and lease a run creates.
pub const LABEL_RUN: &str = "memobuild.run";
const SNAPSHOTTER: &str = "overlayfs";
/// A run's lease expires after this long, so a run nobody cleaned up is
/// reclaimed by containerd's GC anyway.
const LEASE_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// How long teardown waits for a killed task to exit.
const KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("RUN needs `{binary}`, which is not installed; install the Debian packages `containerd` and `runc` (apt-get install {PACKAGES}), or point --containerd-socket at a running containerd")]
    NotInstalled { binary: String },
    #[error("cannot connect to containerd at {socket}: {message}; is it running? (a private one is started when no --containerd-socket is given)")]
    Connect { socket: PathBuf, message: String },
    #[error("could not start a private containerd: {message}{}", if log_tail.is_empty() { String::new() } else { format!("\nlast lines of its log:\n{log_tail}") })]
    Start { message: String, log_tail: String },
    #[error("containerd: {op} failed: {message} ({code:?})")]
    Rpc {
        op: &'static str,
        code: Code,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("layer {digest}: {message}")]
    Layer { digest: String, message: String },
    #[error("reading the step's filesystem changes: {0}")]
    Diff(String),
    #[error("invalid RUN: {0}")]
    Invalid(String),
    /// The step's network namespace could not be set up.
    #[error("the RUN network: {0}")]
    Network(String),
    /// runc, or the mount of the step's root filesystem, failed.
    #[error("the OCI runtime: {0}")]
    Runtime(String),
}

impl SandboxError {
    fn rpc(op: &'static str, status: Status) -> SandboxError {
        SandboxError::Rpc {
            op,
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// One layer of the step's parent, as a blob file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInput {
    /// Digest of the blob (compressed).
    pub digest: String,
    /// Digest of the uncompressed tar.
    pub diff_id: String,
    pub path: PathBuf,
    pub media_type: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// An own network namespace with only `lo` (up).
    #[default]
    None,
    /// An own network namespace with `lo` and `eth0` on the host bridge
    /// [`BRIDGE`], NAT for outbound traffic (Docker's default network).
    Isolated,
    /// The host's network namespace.
    Host,
}

/// A host path bound into the step (cache mounts, secrets, bind mounts) or a
/// fresh tmpfs. Its contents never reach the diff, nor does the mount point
/// runc creates for it. Always nosuid and nodev.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraMount {
    pub source: MountSource,
    /// Absolute path in the container.
    pub target: String,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A host file or directory, bind-mounted.
    Host(PathBuf),
    /// A new, empty tmpfs (kernel default size, half the RAM, unless `size`).
    Tmpfs { size: Option<u64> },
}

/// What to run. Everything is resolved by the caller: shell form is already
/// `[shell..., command]`, USER is numeric, ENV and build args are `KEY=value`
/// (a `PATH` is added as BuildKit does when none is given).
#[derive(Debug, Clone, PartialEq)]
pub struct RunSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    pub network: Network,
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    pub timeout: Option<Duration>,
    pub mounts: Vec<ExtraMount>,
    /// Lines added to /etc/hosts: (host name, address), as `--add-host`.
    pub extra_hosts: Vec<(String, String)>,
    /// Size of /dev/shm (64 MiB when `None`, as Docker).
    pub shm_bytes: Option<u64>,
    /// Process limits (`--ulimit`): (`RLIMIT_NOFILE`-style name, soft, hard);
    /// unset ones are inherited from containerd.
    pub rlimits: Vec<(String, u64, u64)>,
    /// `RUN --security=insecure`: every capability the daemon has, no seccomp filter, no
    /// masked /proc paths, /sys writable (Docker's `--privileged`). Otherwise
    /// Docker's default capabilities and seccomp profile.
    pub insecure: bool,
    /// A background run (an eager build): the smallest CPU weight, so that
    /// any other task of the host gets the CPU first (`cpu.shares` 2, which
    /// runc writes as cgroup v2 `cpu.weight` 1).
    pub low_priority: bool,
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            args: Vec::new(),
            env: Vec::new(),
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            hostname: "memobuild".into(),
            network: Network::None,
            memory_bytes: None,
            cpus: None,
            pids: None,
            timeout: None,
            mounts: Vec::new(),
            extra_hosts: Vec::new(),
            shm_bytes: None,
            rlimits: Vec::new(),
            insecure: false,
            low_priority: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Bytes the step wrote, in the order each stream produced them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: OutputStream,
    pub data: Vec<u8>,
}

/// How the step ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ExitReason {
    /// The process exited with this status (128+N when killed by signal N,
    /// as a shell reports it; containerd does not tell the two apart).
    Code(i32),
    /// The step ran longer than its timeout and was killed.
    Timeout(Duration),
    /// The step failed and the kernel's OOM killer killed a process in it.
    OutOfMemory { limit: Option<u64> },
    /// The step failed and a fork or clone in it hit the pids limit.
    PidsLimit { limit: Option<i64> },
}

impl ExitReason {
    pub fn success(&self) -> bool {
        *self == ExitReason::Code(0)
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReason::Code(code) => write!(f, "exit code {code}"),
            ExitReason::Timeout(t) => {
                write!(f, "killed after the step timeout of {}s", t.as_secs_f64())
            }
            ExitReason::OutOfMemory { limit: Some(l) } => write!(
                f,
                "out of memory: the step hit its memory limit of {} MiB (raise it with --memory)",
                l / (1024 * 1024)
            ),
            ExitReason::OutOfMemory { limit: None } => write!(f, "out of memory"),
            ExitReason::PidsLimit { limit } => write!(
                f,
                "the step hit its limit of {} processes (raise it with --pids-limit)",
                limit.map(|l| l.to_string()).unwrap_or_else(|| "?".into())
            ),
        }
    }
}

/// Where a run's time went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Layers, snapshot, container and task until the process started.
    pub setup: Duration,
    /// From start to exit.
    pub run: Duration,
    /// Reading the upperdir.
    pub diff: Duration,
    /// Deleting the task and container (and, for a failed step, the snapshot
    /// and lease; for a successful one they go with its [`SnapshotHold`]).
    pub teardown: Duration,
    /// Parent layers that were not unpacked yet and had to be (part of `setup`).
    pub unpacked_layers: u32,
}

#[derive(Debug)]
pub struct RunOutcome {
    pub exit: ExitReason,
    /// The step's changes; empty unless the step succeeded. Regular files are
    /// [`memobuild_oci::Content::Path`]s into the snapshot's upperdir: write the
    /// layer before dropping `snapshot`.
    pub changes: ChangeSet,
    /// Keeps the step's snapshot (and its lease) alive for `changes`.
    pub snapshot: SnapshotHold,
    pub timings: Timings,
}

/// The step's active snapshot and lease. [`SnapshotHold::release`] removes
/// them; dropping the hold does it in the background.
pub struct SnapshotHold {
    guard: Option<RunGuard>,
    /// The snapshot's upper directory, emptied on release.
    upper: Option<PathBuf>,
}

impl std::fmt::Debug for SnapshotHold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.guard {
            Some(g) => write!(f, "SnapshotHold(mb-run-{})", g.state.id),
            None => write!(f, "SnapshotHold(none)"),
        }
    }
}

impl SnapshotHold {
    /// Holds nothing: for a run whose changes do not live in a snapshot
    /// (a runner other than containerd).
    pub fn none() -> SnapshotHold {
        SnapshotHold {
            guard: None,
            upper: None,
        }
    }

    /// The step's upper directory (where its changes' files are), while held.
    pub fn upper(&self) -> Option<&Path> {
        self.guard.as_ref().and(self.upper.as_deref())
    }

    /// Removes the snapshot and lease. Its files are unlinked first, right
    /// away (containerd deletes a removed snapshot's directory only at its
    /// next GC): a snapshot written from this step's changes holds hard
    /// links to them, and their link count must not depend on when that GC
    /// runs.
    pub async fn release(mut self) {
        // The container and its mount first: the upper dir is emptied below.
        if let Some(guard) = self.guard.as_mut() {
            guard.release_container().await;
        }
        if let (Some(upper), Some(_)) = (self.upper.take(), &self.guard) {
            let emptied = tokio::task::spawn_blocking(move || empty_dir(&upper)).await;
            if let Ok(Err(e)) = emptied {
                tracing::warn!(error = %e, "could not empty a finished step's snapshot");
            }
        }
        if let Some(mut guard) = self.guard.take() {
            guard.release().await;
        }
    }
}

/// Removes everything inside `dir` (not `dir` itself), never following a
/// symlink out of it.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// A connection to containerd.
#[derive(Clone)]
pub struct Sandbox {
    channel: Channel,
    namespace: AsciiMetadataValue,
    snapshotter: String,
    /// FIFOs and the /etc files of each run, in `mb-run-<id>` directories.
    run_dir: PathBuf,
    /// Network namespaces for [`Network::Isolated`] steps.
    net: std::sync::Arc<net::NetPool>,
    /// Runs the steps' containers (state under `run_dir/runc`).
    runc: runc::Runc,
}

impl Sandbox {
    /// Connects to an existing containerd (namespace [`NAMESPACE`]).
    pub async fn connect(socket: &Path) -> Result<Sandbox, SandboxError> {
        let err = |message: String| SandboxError::Connect {
            socket: socket.to_path_buf(),
            message,
        };
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| err(format_source(&e)))?;
        let run_dir = std::env::temp_dir().join("memobuild-sandbox");
        let sandbox = Sandbox {
            channel,
            namespace: AsciiMetadataValue::from_static(NAMESPACE),
            snapshotter: SNAPSHOTTER.into(),
            runc: runc::Runc::find(run_dir.join("runc"))?,
            run_dir,
            net: Default::default(),
        };
        sandbox
            .client()
            .version()
            .version(Request::new(()))
            .await
            .map_err(|s| err(s.message().to_string()))?;
        Ok(sandbox)
    }

    /// Starts and supervises a private containerd with its root, state, socket,
    /// config and log under `dir`, and connects to it. If a previous daemon's
    /// containerd is still running there (after a crash), it is stopped first.
    pub async fn start_private(dir: &Path) -> Result<(Sandbox, PrivateContainerd), SandboxError> {
        private::start(dir).await
    }

    /// Tears down the network namespaces made ahead for later steps (call it
    /// at shutdown; a daemon killed before leaves addresses that the next
    /// one releases).
    pub async fn release_network(&self) {
        let net = self.net.clone();
        let _ = tokio::task::spawn_blocking(move || net.drain()).await;
    }

    /// Where runs keep their FIFOs and /etc files.
    pub(crate) fn with_run_dir(mut self, dir: PathBuf) -> Sandbox {
        self.runc = self.runc.with_root(dir.join("runc"));
        self.run_dir = dir;
        self
    }

    pub fn namespace(&self) -> &str {
        self.namespace.to_str().unwrap_or(NAMESPACE)
    }

    /// The raw containerd API, for callers and tests that need more.
    pub fn client(&self) -> containerd_client::Client {
        containerd_client::Client::from(self.channel.clone())
    }

    /// `msg` as a request in our namespace.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert("containerd-namespace", self.namespace.clone());
        req
    }

    /// Prepares an active snapshot `key` on `parent`, labelled as run `run_id`'s
    /// and held by `lease`; returns its mounts.
    async fn prepare_snapshot(
        &self,
        key: &str,
        parent: String,
        run_id: &str,
        lease: &str,
        what: &'static str,
    ) -> Result<Vec<containerd_client::types::Mount>, SandboxError> {
        let prepare = PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
            parent,
            labels: HashMap::from([(LABEL_RUN.to_string(), run_id.to_string())]),
        };
        Ok(self
            .client()
            .snapshots()
            .prepare(self.req_leased(prepare, lease))
            .await
            .map_err(|s| SandboxError::rpc(what, s))?
            .into_inner()
            .mounts)
    }

    fn req_leased<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut req = self.req(msg);
        if let Ok(value) = lease.parse::<AsciiMetadataValue>() {
            req.metadata_mut().insert("containerd-lease", value);
        }
        req
    }

    /// Runs one step. The rootfs is `layers` (bottom first) on an overlayfs
    /// snapshot; its output goes to `output` as it comes (read it concurrently:
    /// a full channel makes the step wait on its writes). A step that fails
    /// (non-zero exit, timeout, a limit) is an `Ok` with that [`ExitReason`];
    /// `Err` is for the sandbox itself failing. Dropping the future cleans up.
    pub async fn run(
        &self,
        layers: &[LayerInput],
        spec: &RunSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<RunOutcome, SandboxError> {
        if spec.args.is_empty() {
            return Err(SandboxError::Invalid("no command to run".into()));
        }
        for m in &spec.mounts {
            if !m.target.starts_with('/') {
                return Err(SandboxError::Invalid(format!(
                    "mount target {:?} is not absolute",
                    m.target
                )));
            }
        }
        let id = new_id();
        let mut guard = RunGuard {
            sandbox: self.clone(),
            state: Leftovers {
                id: id.clone(),
                ..Leftovers::default()
            },
        };
        match self.run_inner(&mut guard, &id, layers, spec, output).await {
            Ok(mut outcome) => {
                if outcome.exit.success() {
                    outcome.snapshot.guard = Some(guard);
                } else {
                    let started = Instant::now();
                    guard.release().await;
                    outcome.timings.teardown += started.elapsed();
                }
                Ok(outcome)
            }
            Err(e) => {
                guard.release().await;
                Err(e)
            }
        }
    }

    /// Creates the lease `name` that holds everything run `id` makes (it
    /// expires by itself after [`LEASE_EXPIRY`]).
    async fn create_run_lease(
        &self,
        guard: &mut RunGuard,
        name: &str,
        id: &str,
    ) -> Result<(), SandboxError> {
        let expires = unix_secs() + LEASE_EXPIRY.as_secs() as i64;
        let lease = CreateLeaseRequest {
            id: name.to_string(),
            labels: HashMap::from([
                (LABEL_RUN.to_string(), id.to_string()),
                (
                    "containerd.io/gc.expire".to_string(),
                    memobuild_oci::rfc3339(expires),
                ),
            ]),
        };
        self.client()
            .leases()
            .create(self.req(lease))
            .await
            .map_err(|s| SandboxError::rpc("create lease", s))?;
        guard.state.lease = true;
        Ok(())
    }

    async fn run_inner(
        &self,
        guard: &mut RunGuard,
        id: &str,
        layers: &[LayerInput],
        spec: &RunSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<RunOutcome, SandboxError> {
        let started = Instant::now();
        let name = format!("mb-run-{id}");

        // Per-run directory: FIFOs and the files bound over /etc.
        let dir = self.run_dir.join(&name);
        create_private_dir(&self.run_dir)?;
        create_private_dir(&dir)?;
        guard.state.run_dir = Some(dir.clone());

        self.create_run_lease(guard, &name, id).await?;

        guard.state.unpacking = true;
        let (parent, unpacked_layers) = self.ensure_chain(layers, id, &name).await?;
        guard.state.unpacking = false;

        let mounts = self
            .prepare_snapshot(
                &name,
                parent.unwrap_or_default(),
                id,
                &name,
                "prepare the step's snapshot",
            )
            .await?;
        guard.state.snapshot = true;
        let (upper, lowers) = diff::upper_and_lowers(&mounts)?;

        // Held until the run returns; dropped, it is torn down in the background.
        let netns = match spec.network {
            Network::Isolated => {
                let pool = self.net.clone();
                Some(
                    tokio::task::spawn_blocking(move || pool.take())
                        .await
                        .map_err(|e| SandboxError::Network(e.to_string()))??,
                )
            }
            Network::None | Network::Host => None,
        };
        let etc = write_etc_files(&dir, spec)?;
        let cgroups_path = format!("/memobuild/{id}");
        let oci_spec = spec::build(
            spec,
            &spec::EtcFiles {
                hosts: &etc[0],
                resolv_conf: &etc[1],
            },
            &cgroups_path,
            netns.as_ref().map(|n| n.path()),
        )?;
        let spec_bytes =
            serde_json::to_vec(&oci_spec).map_err(|e| SandboxError::Invalid(e.to_string()))?;
        let io_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SandboxError::Io { path, source }
        };
        let config = dir.join("config.json");
        std::fs::write(&config, &spec_bytes).map_err(io_error(&config))?;
        let rootfs = dir.join("rootfs");
        guard.state.mounted = Some(rootfs.clone());
        {
            let (mounts, rootfs) = (mounts.clone(), rootfs.clone());
            tokio::task::spawn_blocking(move || runc::mount_rootfs(&mounts, &rootfs))
                .await
                .map_err(|e| SandboxError::Runtime(e.to_string()))??;
        }
        // Marked before the call: a container whose start we could not see
        // is still deleted.
        guard.state.container = true;
        let mut child = self.runc.run(&name, &dir)?;
        let readers = [
            io::spawn_pipe_reader(child.stdout.take(), OutputStream::Stdout, output.clone()),
            io::spawn_pipe_reader(child.stderr.take(), OutputStream::Stderr, output),
        ];
        let setup = started.elapsed();
        let ran = Instant::now();

        let mut timed_out = None;
        let waited = match spec.timeout {
            None => child.wait().await,
            Some(limit) => match tokio::time::timeout(limit, child.wait()).await {
                Ok(waited) => waited,
                Err(_) => {
                    timed_out = Some(limit);
                    self.runc.kill(&name).await?;
                    child.wait().await
                }
            },
        };
        let status = waited.map_err(io_error(Path::new("runc")))?;
        let run = ran.elapsed();

        // The stopped container keeps its cgroup: read which limit it hit.
        let events = cgroup::limit_events(&cgroups_path);
        let teardown_started = Instant::now();
        for reader in readers {
            // EOF comes when the container's processes are gone; never wait forever.
            let _ = tokio::time::timeout(KILL_WAIT, reader).await;
        }
        // The stopped container, the rootfs mount and the run directory go
        // with the snapshot (`SnapshotHold::release`), which the caller may
        // do in the background: nothing reads them any more.
        let teardown = teardown_started.elapsed();

        // runc exits with the container's status, 128 + N for a signal.
        let status = {
            use std::os::unix::process::ExitStatusExt;
            status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
        };
        let code = status as i32;
        let exit = if let Some(limit) = timed_out {
            ExitReason::Timeout(limit)
        } else if code != 0 && events.oom_kills > 0 {
            ExitReason::OutOfMemory {
                limit: spec.memory_bytes,
            }
        } else if code != 0 && events.pids_max > 0 {
            ExitReason::PidsLimit { limit: spec.pids }
        } else {
            ExitReason::Code(code)
        };

        let diff_started = Instant::now();
        let changes = if exit.success() {
            let mut points: Vec<String> = spec::DEFAULT_MOUNT_POINTS
                .iter()
                .map(|p| p.to_string())
                .collect();
            points.extend(spec.mounts.iter().map(|m| m.target.clone()));
            let upper = upper.clone();
            tokio::task::spawn_blocking(move || diff::changes(&upper, &lowers, &points))
                .await
                .map_err(|e| SandboxError::Diff(e.to_string()))??
        } else {
            ChangeSet::default()
        };
        Ok(RunOutcome {
            exit,
            changes,
            snapshot: SnapshotHold {
                guard: None,
                upper: Some(upper.clone()),
            },
            timings: Timings {
                setup,
                run,
                diff: diff_started.elapsed(),
                teardown,
                unpacked_layers,
            },
        })
    }

    /// SIGKILL to every process of the task.
    async fn kill(&self, container_id: &str) -> Result<(), SandboxError> {
        let kill = KillRequest {
            container_id: container_id.to_string(),
            exec_id: String::new(),
            signal: libc::SIGKILL as u32,
            all: true,
        };
        match self.client().tasks().kill(self.req(kill)).await {
            Ok(_) => Ok(()),
            Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => Ok(()),
            Err(s) => Err(SandboxError::rpc("kill task", s)),
        }
    }

    /// Kills and deletes a task if there is one, then deletes the container.
    async fn remove_container(&self, id: &str, task: bool, container: bool) {
        let mut tasks = self.client().tasks();
        if task {
            if let Err(e) = self.kill(id).await {
                tracing::warn!(container = id, "{e}");
            }
            let wait = tasks.wait(self.req(WaitRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }));
            let _ = tokio::time::timeout(KILL_WAIT, wait).await;
            let delete = DeleteTaskRequest {
                container_id: id.to_string(),
            };
            match tasks.delete(self.req(delete)).await {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => tracing::warn!(container = id, "deleting task: {}", s.message()),
            }
        }
        if container {
            let delete = DeleteContainerRequest { id: id.to_string() };
            match self.client().containers().delete(self.req(delete)).await {
                Ok(_) => {}
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => tracing::warn!(container = id, "deleting container: {}", s.message()),
            }
        }
    }

    async fn remove_snapshot(&self, key: &str) -> bool {
        let remove = RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
        };
        match self.client().snapshots().remove(self.req(remove)).await {
            Ok(_) => true,
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => {
                tracing::warn!(snapshot = key, "removing snapshot: {}", s.message());
                false
            }
        }
    }

    async fn delete_lease(&self, id: &str) -> bool {
        let delete = DeleteLeaseRequest {
            id: id.to_string(),
            sync: false,
        };
        match self.client().leases().delete(self.req(delete)).await {
            Ok(_) => true,
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => {
                tracing::warn!(lease = id, "deleting lease: {}", s.message());
                false
            }
        }
    }

    /// Snapshot keys carrying `memobuild.run` (all runs, or one).
    async fn run_snapshots(&self, run: Option<&str>) -> Result<Vec<String>, SandboxError> {
        let filter = match run {
            Some(id) => format!("labels.\"{LABEL_RUN}\"==\"{id}\""),
            None => format!("labels.\"{LABEL_RUN}\""),
        };
        let list = ListSnapshotsRequest {
            snapshotter: self.snapshotter.clone(),
            filters: vec![filter],
        };
        let mut stream = self
            .client()
            .snapshots()
            .list(self.req(list))
            .await
            .map_err(|s| SandboxError::rpc("list snapshots", s))?
            .into_inner();
        let mut keys = Vec::new();
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| SandboxError::rpc("list snapshots", s))?
        {
            keys.extend(msg.info.into_iter().map(|i| i.name));
        }
        Ok(keys)
    }

    /// The runc containers and rootfs mounts of runs that exist now (during
    /// a run, its own; after every run has ended, what was not cleaned up).
    pub async fn runs_present(&self) -> Vec<String> {
        let mut found: Vec<String> = self
            .runc
            .list()
            .await
            .into_iter()
            .map(|id| format!("runc container {id}"))
            .collect();
        let run_dir = self.run_dir.clone();
        let mounts = tokio::task::spawn_blocking(move || runc::mounts_under(&run_dir))
            .await
            .unwrap_or_default();
        found.extend(mounts.iter().map(|m| format!("mount {}", m.display())));
        found
    }

    /// Removes the containers, tasks, snapshots and leases of runs that did not
    /// clean up (a crashed or killed daemon), and their run directories. Call it
    /// at start-up, before any run: every run in the namespace is taken as
    /// ours. Unpacked layer chains are kept. Returns how many objects went.
    pub async fn cleanup_orphans(&self) -> Result<usize, SandboxError> {
        let mut removed = 0;
        for id in self.runc.list().await {
            match self.runc.delete(&id).await {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(container = id, "{e}"),
            }
        }
        let run_dir = self.run_dir.clone();
        removed += tokio::task::spawn_blocking(move || {
            let mounts = runc::mounts_under(&run_dir);
            for m in &mounts {
                runc::unmount_rootfs(m);
            }
            mounts.len()
        })
        .await
        .unwrap_or(0);
        // Containers and tasks of daemons from before steps ran under runc
        // directly.
        let filter = format!("labels.\"{LABEL_RUN}\"");
        let containers = self
            .client()
            .containers()
            .list(self.req(ListContainersRequest {
                filters: vec![filter.clone()],
            }))
            .await
            .map_err(|s| SandboxError::rpc("list containers", s))?
            .into_inner()
            .containers;
        for container in containers {
            self.remove_container(&container.id, true, true).await;
            removed += 1;
        }
        for key in self.run_snapshots(None).await? {
            if self.remove_snapshot(&key).await {
                removed += 1;
            }
        }
        let leases = self
            .client()
            .leases()
            .list(self.req(ListLeasesRequest {
                filters: vec![filter],
            }))
            .await
            .map_err(|s| SandboxError::rpc("list leases", s))?
            .into_inner()
            .leases;
        for lease in leases {
            if self.delete_lease(&lease.id).await {
                removed += 1;
            }
        }
        let run_dir = self.run_dir.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for dir in std::fs::read_dir(run_dir).into_iter().flatten().flatten() {
                if dir.file_name().to_string_lossy().starts_with("mb-run-") {
                    let _ = std::fs::remove_dir_all(dir.path());
                }
            }
        })
        .await;
        if removed > 0 {
            tracing::info!(
                removed,
                namespace = self.namespace(),
                "removed what earlier RUN steps left in containerd"
            );
        }
        Ok(removed)
    }
}

/// What a run has created and not yet removed.
#[derive(Debug, Default)]
struct Leftovers {
    id: String,
    lease: bool,
    /// Temporary unpack snapshots may exist.
    unpacking: bool,
    snapshot: bool,
    /// The runc container may exist.
    container: bool,
    /// The step's rootfs may be mounted here.
    mounted: Option<PathBuf>,
    run_dir: Option<PathBuf>,
}

impl Leftovers {
    fn is_empty(&self) -> bool {
        !(self.lease
            || self.unpacking
            || self.snapshot
            || self.container
            || self.mounted.is_some()
            || self.run_dir.is_some())
    }
}

/// Removes what a run created, in dependency order, when released or dropped.
struct RunGuard {
    sandbox: Sandbox,
    state: Leftovers,
}

impl RunGuard {
    /// Deletes the stopped container, unmounts its rootfs and removes the
    /// run directory; the snapshot and lease stay.
    async fn release_container(&mut self) {
        let state = Leftovers {
            id: self.state.id.clone(),
            container: std::mem::take(&mut self.state.container),
            mounted: self.state.mounted.take(),
            run_dir: self.state.run_dir.take(),
            ..Leftovers::default()
        };
        release(&self.sandbox, state).await;
    }

    async fn release(&mut self) {
        let state = std::mem::take(&mut self.state);
        release(&self.sandbox, state).await;
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if self.state.is_empty() {
            return;
        }
        let mut state = std::mem::take(&mut self.state);
        // Unmounted here, at once: a mount must not outlive a runtime that
        // stops before the spawned release runs (a quick syscall).
        if let Some(rootfs) = state.mounted.take() {
            runc::unmount_rootfs(&rootfs);
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let sandbox = self.sandbox.clone();
                handle.spawn(async move { release(&sandbox, state).await });
            }
            Err(_) => tracing::warn!(
                run = state.id,
                "a RUN step was abandoned outside the runtime; cleanup_orphans will remove it"
            ),
        }
    }
}

async fn release(sandbox: &Sandbox, state: Leftovers) {
    let name = format!("mb-run-{}", state.id);
    if state.container {
        // Kills whatever still runs in it (a cancelled or timed-out step).
        if let Err(e) = sandbox.runc.delete(&name).await {
            tracing::warn!(container = name, "{e}");
        }
    }
    if let Some(rootfs) = state.mounted {
        let _ = tokio::task::spawn_blocking(move || runc::unmount_rootfs(&rootfs)).await;
    }
    if let Some(dir) = &state.run_dir {
        let _ = tokio::fs::remove_dir_all(dir).await;
    }
    if state.snapshot {
        sandbox.remove_snapshot(&name).await;
    }
    if state.unpacking {
        match sandbox.run_snapshots(Some(&state.id)).await {
            Ok(keys) => {
                for key in keys {
                    sandbox.remove_snapshot(&key).await;
                }
            }
            Err(e) => tracing::warn!(run = state.id, "{e}"),
        }
    }
    if state.lease {
        sandbox.delete_lease(&name).await;
    }
}

fn create_private_dir(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(source) => Err(SandboxError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// /etc/hosts and /etc/resolv.conf for the step.
fn write_etc_files(dir: &Path, spec: &RunSpec) -> Result<[PathBuf; 2], SandboxError> {
    let hostname = if spec.hostname.is_empty() {
        "memobuild"
    } else {
        spec.hostname.as_str()
    };
    let mut hosts =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for (host, address) in &spec.extra_hosts {
        hosts.push_str(&format!("{address}\t{host}\n"));
    }
    let resolv = match spec.network {
        // No network, no resolver; an empty file keeps libc quiet.
        Network::None => String::new(),
        Network::Isolated => {
            net::resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        }
        Network::Host => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    let files = [
        (dir.join("hosts"), hosts),
        (dir.join("resolv.conf"), resolv),
    ];
    for (path, text) in &files {
        std::fs::write(path, text).map_err(|source| SandboxError::Io {
            path: path.clone(),
            source,
        })?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    }
    let [a, b] = files;
    Ok([a.0, b.0])
}

fn format_source(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A short unique id for a run (16 hex digits).
fn new_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.finalize().to_hex()[..16].to_string()
}

fn unix_secs() -> i64 {
    rootfs::unix_now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_oci() {
        let ids = chain_ids(["sha256:a", "sha256:b"]);
        assert_eq!(ids[0], "sha256:a");
        let expected = {
            use sha2::Digest;
            format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(b"sha256:a sha256:b"))
            )
        };
        assert_eq!(ids[1], expected);
    }
}
