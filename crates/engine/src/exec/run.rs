//! RUN steps: from a planned [`RunOp`] to a sandbox run and a layer. Resolves
//! what needs the parent filesystem (the user), prepares the step's mounts
//! (cache directories kept by the daemon, secrets on tmpfs, bind sources),
//! streams output into the build's log, and turns a failure into an error with
//! the command, how it ended and its last lines of output.

use super::fsview::{FsView, ViewKind};
use super::users;
use super::{BuildLog, Engine};
use memobuild_oci::ChangeSet;
use memobuild_plan::{CacheOwner, CacheSharing, RunMount, RunNetwork, RunOp};
use memobuild_proto::{BuildEvent, BuildRequest, ErrorKind, RpcError};
use memobuild_sandbox::{ExtraMount, LayerInput, MountSource, Network, OutputChunk, RunSpec};
use memobuild_store::{LayerRecord, StepRecord};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Lines of output a failed step's error shows.
const TAIL_LINES: usize = 20;

/// Daemon-wide settings for RUN steps.
#[derive(Debug, Clone, Default)]
pub struct RunSettings {
    /// An existing containerd; `None` starts a private one under the data dir.
    pub containerd_socket: Option<PathBuf>,
    /// What `RUN` without `--network` gets: no network at all, instead of its
    /// own namespace with outbound access (NAT on the host bridge).
    pub default_network_none: bool,
    /// Entitlements (`network.host`, `security.insecure`) the administrator
    /// lets builds ask for with `--allow` (`insecure-entitlements`).
    pub insecure_entitlements: Vec<String>,
    pub step_timeout: Option<Duration>,
    pub memory_bytes: Option<u64>,
    pub cpus: Option<f64>,
    pub pids: Option<i64>,
    /// Most RUN steps running at once (all builds together).
    pub max_parallel: usize,
    /// Registries: plain-HTTP hosts and the default remote cache.
    pub registries: memobuild_registry::RegistrySettings,
}

/// Everything one RUN needs from its build.
pub(crate) struct RunContext<'a> {
    pub engine: &'a Arc<Engine>,
    pub request: &'a BuildRequest,
    pub log: &'a Arc<BuildLog>,
    pub step: usize,
    pub display: &'a str,
    pub parent_layers: &'a [LayerRecord],
    /// Layers of the stages bind mounts read, by stage position.
    pub stage_layers: &'a std::collections::BTreeMap<usize, Vec<LayerRecord>>,
    pub context_root: &'a Path,
    pub epoch: Option<i64>,
    /// A later step of the build is a RUN: write this result as a snapshot
    /// for it (see `exec::snapshots`).
    pub snapshot_for_later_run: bool,
    /// The step runs because of `--no-cache`/`--no-cache-filter`: a cache
    /// mount with `uid=`/`gid=`/`mode=` starts empty (see `Mounts::cache_dir`).
    pub no_cache: bool,
}

use memobuild_rootpath::creds::{as_reader, reading_as};

fn err(message: impl Into<String>) -> RpcError {
    RpcError::new(message.into())
}

/// The entitlements `op` needs, each with what asks for it.
fn needs(op: &RunOp, request: &BuildRequest) -> Vec<(&'static str, &'static str)> {
    let mut needs = Vec::new();
    match op.network {
        RunNetwork::Host => needs.push(("network.host", "RUN --network=host")),
        RunNetwork::Default if request.network == "host" => {
            needs.push(("network.host", "build --network host"))
        }
        _ => {}
    }
    if op.insecure {
        needs.push(("security.insecure", "RUN --security=insecure"));
    }
    needs
}

/// `Ok` if the build asked for `entitlement` (`--allow`) and the daemon's
/// administrator enabled it (`insecure-entitlements`), as BuildKit's
/// entitlements; else a `PermissionDenied` error saying which is missing.
fn entitled(
    settings: &RunSettings,
    request: &BuildRequest,
    entitlement: &str,
    what: &str,
) -> Result<(), RpcError> {
    let asked = request.entitlements.iter().any(|e| e == entitlement);
    let enabled = settings
        .insecure_entitlements
        .iter()
        .any(|e| e == entitlement);
    let daemon_side = format!(
        "the daemon's administrator must enable it too: insecure-entitlements = [\"{entitlement}\"] in /etc/memobuild/memobuildd.toml (or memobuildd --insecure-entitlements {entitlement}), see docs/SECURITY.md"
    );
    match (asked, enabled) {
        (true, true) => Ok(()),
        (false, _) => Err(RpcError::with_hint(
            format!("{what} needs the {entitlement} entitlement, which this build did not ask for ({entitlement} is not allowed)"),
            format!("build with --allow {entitlement} if you trust this Dockerfile; {daemon_side}"),
        )
        .kind(ErrorKind::PermissionDenied)),
        (true, false) => Err(RpcError::with_hint(
            format!("{what}: this daemon does not grant the {entitlement} entitlement (--allow {entitlement} was given, but {entitlement} is not allowed here)"),
            format!("{daemon_side}; or drop {what}"),
        )
        .kind(ErrorKind::PermissionDenied)),
    }
}

/// Fails the build before any step runs (or is taken from the cache) if a
/// RUN needs an entitlement the build or the daemon does not grant; the error
/// points at the first such RUN.
pub(crate) fn check_entitlements(
    settings: &RunSettings,
    request: &BuildRequest,
    plan: &memobuild_plan::Plan,
) -> Result<(), RpcError> {
    for step in &plan.steps {
        let memobuild_plan::Op::Run(op) = &step.op else {
            continue;
        };
        for (entitlement, what) in needs(op, request) {
            entitled(settings, request, entitlement, what).map_err(|e| {
                RpcError {
                    message: format!(
                        "{}:{}:{}: {}",
                        plan.file, step.loc.line, step.loc.column, e.message
                    ),
                    ..e
                }
                .at(memobuild_proto::Location {
                    file: plan.file.clone(),
                    line: step.loc.line,
                    column: step.loc.column,
                })
            })?;
        }
    }
    Ok(())
}

/// Runs the step; returns its cache record (its layer, if it changed anything).
pub(crate) async fn run(cx: &RunContext<'_>, op: &RunOp) -> Result<StepRecord, RpcError> {
    let engine = cx.engine;
    let runner = engine.runner().await?;
    let _slot = engine
        .run_slots
        .acquire()
        .await
        .map_err(|_| err("the daemon is shutting down").kind(ErrorKind::Unavailable))?;
    let store = engine.store.clone();
    let (layers, user) = {
        let (engine, parent, user) = (engine.clone(), cx.parent_layers.to_vec(), op.user.clone());
        tokio::task::spawn_blocking(move || {
            // The user (and, without USER, root's supplementary groups) come
            // from the parent's /etc/passwd and /etc/group; a stage with no
            // layers has neither.
            let ids = match user.as_deref() {
                Some(u) => {
                    let view = FsView::load(&engine.store, &engine.layers, &parent)
                        .map_err(|e| err(e.to_string()))?;
                    users::resolve_exec(u, &view, &engine.store)
                        .map_err(|e| err(format!("USER {u}: {e}")))?
                }
                None if parent.is_empty() => users::ExecUser::root(),
                None => {
                    let view = FsView::load(&engine.store, &engine.layers, &parent)
                        .map_err(|e| err(e.to_string()))?;
                    users::default_exec(&view, &engine.store)
                        .map_err(|e| err(format!("the default user (root): {e}")))?
                }
            };
            let inputs = parent
                .iter()
                .map(|l| layer_input(&engine.store.blobs, l))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            Ok::<_, RpcError>((inputs, ids))
        })
        .await
        .map_err(|e| err(format!("internal error: {e}")))??
    };
    let (uid, gid) = (user.uid, user.gid);
    let settings = &engine.run_settings();
    // Checked for the whole plan before any step (`check_entitlements`);
    // again here, where the step would get them.
    for (entitlement, what) in needs(op, cx.request) {
        entitled(settings, cx.request, entitlement, what)?;
    }
    let mounts = Mounts::prepare(cx, op, uid, gid).await?;
    let network = match (op.network, cx.request.network.as_str()) {
        (RunNetwork::None, _) => Network::None,
        (RunNetwork::Host, _) => Network::Host,
        // `build --network`: what RUN without `--network` gets.
        (RunNetwork::Default, "none") => Network::None,
        (RunNetwork::Default, "host") => Network::Host,
        (RunNetwork::Default, _) if settings.default_network_none => Network::None,
        (RunNetwork::Default, _) => Network::Isolated,
    };
    let rlimits = cx
        .request
        .ulimits
        .iter()
        .filter_map(|(name, (soft, hard))| {
            let kind = memobuild_proto::ULIMITS.iter().find(|(n, _)| n == name)?.1;
            Some((kind.to_string(), *soft, *hard))
        })
        .collect();
    let spec = RunSpec {
        args: op.args.clone(),
        env: with_secret_env(with_proxy_env(&op.env, &cx.request.build_args), &mounts.env),
        cwd: op.cwd.clone(),
        uid,
        gid,
        additional_gids: user.groups.clone(),
        hostname: sandbox_hostname(&cx.request.build_args),
        network,
        memory_bytes: cx.request.memory_bytes.or(settings.memory_bytes),
        cpus: cx
            .request
            .millicpus
            .map(|m| m as f64 / 1000.0)
            .or(settings.cpus),
        pids: cx.request.pids_limit.or(settings.pids),
        timeout: settings.step_timeout,
        mounts: mounts.extra.clone(),
        extra_hosts: extra_hosts(&cx.request.add_hosts),
        shm_bytes: cx.request.shm_bytes,
        rlimits,
        insecure: op.insecure,
        // An eager build runs at the lowest CPU weight (eager.rs).
        low_priority: cx.log.eager,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let printer = tokio::spawn(stream_output(rx, cx.log.clone(), cx.step));
    let outcome = runner.run(&layers, &spec, tx).await;
    if let Ok(o) = &outcome {
        let t = &o.timings;
        tracing::debug!(setup = ?t.setup, run = ?t.run, diff = ?t.diff, teardown = ?t.teardown, unpacked_layers = t.unpacked_layers, "sandbox finished");
        engine
            .metrics
            .snapshots("unpacked", t.unpacked_layers.into());
    }
    let tail = printer.await.unwrap_or_default();
    drop(mounts);
    let outcome = outcome.map_err(|e| {
        RpcError::with_hint(
            format!("{}: the sandbox failed: {e}", cx.display),
            "see the daemon's log; `memobuild-ctl status` shows its health",
        )
    })?;
    if !outcome.exit.success() {
        let exit = outcome.exit;
        let code = match exit {
            memobuild_sandbox::ExitReason::Code(code) => Some(code),
            _ => None,
        };
        cx.log
            .note_failed_step(cx.step, code, tail.iter().cloned().collect());
        outcome.snapshot.release().await;
        let mut message = format!("{} failed: {exit}", cx.display);
        if !tail.is_empty() {
            message.push_str("\nlast output:\n");
            message.push_str(&tail.iter().cloned().collect::<Vec<_>>().join("\n"));
        }
        return Err(RpcError::of(ErrorKind::StepFailed, message));
    }
    let mut changes: ChangeSet = outcome.changes;
    // Files keep the times the step left them (in whole seconds); the
    // snapshot written from these changes gets the same times as the layer.
    changes.clamp_mtimes(cx.epoch);
    if changes.is_empty() {
        // Nothing links to its files: tear down off the step's path.
        tokio::spawn(outcome.snapshot.release());
        return Ok(StepRecord {
            layer: None,
            created_at: memobuild_store::now_secs(),
            owner: None,
            imported: false,
        });
    }
    // The layer blob and the next step's snapshot (hard links to the files
    // in this step's upper dir, which stays until both are done).
    let changes = std::sync::Arc::new(changes);
    let write = {
        let (engine, changes) = (engine.clone(), changes.clone());
        tokio::task::spawn_blocking(move || {
            let (layer, sizes) = engine
                .layer_writer
                .write_sized(&changes, &store.blobs)
                .map_err(|e| err(e.to_string()))?;
            engine.layers.remember(&layer.diff_id, &changes, &sizes);
            Ok::<_, RpcError>(layer)
        })
    };
    let snapshot = async {
        match cx.snapshot_for_later_run {
            true => {
                let changes = changes.clone();
                let upper = outcome.snapshot.upper();
                super::snapshots::materialize(engine, cx.parent_layers, changes, None, upper).await
            }
            false => None,
        }
    };
    let started = std::time::Instant::now();
    let (layer, snapshot) = tokio::join!(write, snapshot);
    tracing::debug!(took = ?started.elapsed(), "layer and snapshot written");
    let layer = layer.map_err(|e| err(format!("internal error: {e}")))?;
    if let (Ok(layer), Some(snapshot)) = (&layer, snapshot) {
        super::snapshots::commit(engine, cx.parent_layers, &layer.diff_id, snapshot).await;
    }
    match cx.snapshot_for_later_run {
        // The next snapshot holds hard links to this step's files: they are
        // unlinked here before a later RUN can see their link counts.
        true => outcome.snapshot.release().await,
        // Nothing links to them: tear down off the step's path.
        false => drop(tokio::spawn(outcome.snapshot.release())),
    }
    Ok(StepRecord {
        layer: Some(layer?),
        created_at: memobuild_store::now_secs(),
        owner: None,
        imported: false,
    })
}

/// `--add-host` lines for RUN's /etc/hosts: `host-gateway` is the host as
/// RUN steps reach it, the host end of their bridge (Docker writes its
/// host-gateway IP there).
fn extra_hosts(add_hosts: &[(String, String)]) -> Vec<(String, String)> {
    add_hosts
        .iter()
        .map(|(host, ip)| match ip.as_str() {
            memobuild_proto::HOST_GATEWAY => (host.clone(), memobuild_sandbox::GATEWAY.to_string()),
            _ => (host.clone(), ip.clone()),
        })
        .collect()
}

/// The RUN sandbox's hostname: the build arg `BUILDKIT_SANDBOX_HOSTNAME`
/// (BuildKit's dockerui option), else `buildkitsandbox`. Like BuildKit, it is
/// not part of the step's cache key.
fn sandbox_hostname(build_args: &std::collections::BTreeMap<String, String>) -> String {
    build_args
        .get("BUILDKIT_SANDBOX_HOSTNAME")
        .filter(|h| !h.is_empty())
        .cloned()
        .unwrap_or_else(|| "buildkitsandbox".into())
}

/// Docker's predefined proxy args reach RUN without an ARG line, in both
/// spellings, and stay out of the cache key (they are added here, not planned).
/// `env` with each `NAME=VALUE` of `secrets` replacing any NAME there.
fn with_secret_env(mut env: Vec<String>, secrets: &[String]) -> Vec<String> {
    for pair in secrets {
        let name = pair.split('=').next().unwrap_or("");
        env.retain(|e| e.split('=').next() != Some(name));
        env.push(pair.clone());
    }
    env
}

fn with_proxy_env(
    env: &[String],
    build_args: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = env.to_vec();
    let has = |out: &[String], name: &str| out.iter().any(|kv| kv.split('=').next() == Some(name));
    for (name, value) in build_args {
        if !memobuild_plan::is_predefined_arg(name) {
            continue;
        }
        for spelling in [name.to_ascii_uppercase(), name.to_ascii_lowercase()] {
            if !has(&out, &spelling) {
                out.push(format!("{spelling}={value}"));
            }
        }
    }
    out
}

/// The most output of one step kept in its build log, as BuildKit's default
/// (`BUILDKIT_STEP_LOG_MAX_SIZE`); the rest is drained and dropped.
pub(crate) const MAX_STEP_LOG_BYTES: usize = 2 * 1024 * 1024;
/// Longer lines are cut into pieces of this size (a line without a newline
/// would otherwise grow without bound in memory).
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;

/// Forwards the step's output to the build log line by line, clipped as
/// BuildKit clips it; returns the last lines (for the failure message).
async fn stream_output(
    mut rx: tokio::sync::mpsc::Receiver<OutputChunk>,
    log: Arc<BuildLog>,
    step: usize,
) -> VecDeque<String> {
    let mut out = StepOutput::new(log, step);
    let mut partial = [Vec::new(), Vec::new()];
    while let Some(chunk) = rx.recv().await {
        let buf =
            &mut partial[usize::from(chunk.stream == memobuild_sandbox::OutputStream::Stderr)];
        buf.extend_from_slice(&chunk.data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            out.line(&line[..line.len() - 1]);
        }
        while buf.len() >= MAX_LINE_BYTES {
            let piece: Vec<u8> = buf.drain(..MAX_LINE_BYTES).collect();
            out.line(&piece);
        }
    }
    for buf in partial.iter().filter(|b| !b.is_empty()) {
        out.line(buf);
    }
    out.tail
}

/// One step's output on its way into the build log.
struct StepOutput {
    log: Arc<BuildLog>,
    step: usize,
    logged: usize,
    clipped: bool,
    tail: VecDeque<String>,
}

impl StepOutput {
    fn new(log: Arc<BuildLog>, step: usize) -> StepOutput {
        StepOutput {
            log,
            step,
            logged: 0,
            clipped: false,
            tail: VecDeque::with_capacity(TAIL_LINES),
        }
    }

    fn line(&mut self, bytes: &[u8]) {
        let line = String::from_utf8_lossy(bytes).into_owned();
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line.clone());
        if self.logged + line.len() > MAX_STEP_LOG_BYTES {
            if !self.clipped {
                self.clipped = true;
                self.push(format!(
                    "[output clipped, log limit {}MiB reached]",
                    MAX_STEP_LOG_BYTES >> 20
                ));
            }
            return;
        }
        self.logged += line.len() + 1;
        self.push(line);
    }

    fn push(&self, line: String) {
        self.log.push(BuildEvent::Log {
            step: Some(self.step),
            line,
        });
    }
}

/// Host directories and files bound into one step; temporary ones are removed on drop.
struct Mounts {
    extra: Vec<ExtraMount>,
    /// `NAME=VALUE` of secrets mounted with `env=`, over the step's own.
    env: Vec<String>,
    _temp: Vec<tempfile::TempDir>,
    /// Cache mount locks this step holds, by directory name: each id is locked
    /// once per step, however many of its mounts use it.
    locks: std::collections::BTreeMap<String, tokio::sync::OwnedMutexGuard<()>>,
    /// The ssh agent sockets' forwarding, ended when the step ends.
    forwards: Vec<AbortOnDrop>,
}

/// A task aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A cache mount's directory under `cache-mounts/`, per requesting user:
/// `uid-N/HASH` for uid N, `HASH` for root (where every cache lived before
/// they were per user), so one user's step never sees another's cache.
fn cache_dir_name(request: &BuildRequest, id: &str) -> String {
    let hash = blake3::hash(id.as_bytes()).to_hex()[..32].to_string();
    match crate::owner::owner_of(request) {
        Some(uid) if uid != 0 => format!("uid-{uid}/{hash}"),
        _ => hash,
    }
}

impl Mounts {
    async fn prepare(
        cx: &RunContext<'_>,
        op: &RunOp,
        uid: u32,
        gid: u32,
    ) -> Result<Mounts, RpcError> {
        let mut m = Mounts {
            extra: Vec::new(),
            env: Vec::new(),
            _temp: Vec::new(),
            locks: std::collections::BTreeMap::new(),
            forwards: Vec::new(),
        };
        // `sharing=locked` ids first, each once and in one order (by name) for
        // every step: two mounts of one id in a step share its lock, and two
        // steps locking the same ids cannot deadlock.
        let locked: std::collections::BTreeSet<String> = op
            .mounts
            .iter()
            .filter_map(|mount| match mount {
                RunMount::Cache {
                    id,
                    sharing: CacheSharing::Locked,
                    ..
                } => Some(cache_dir_name(cx.request, id)),
                _ => None,
            })
            .collect();
        for name in locked {
            let guard = cx.engine.cache_lock(&name).lock_owned().await;
            m.locks.insert(name, guard);
        }
        for mount in &op.mounts {
            match mount {
                RunMount::Cache {
                    target,
                    id,
                    sharing,
                    readonly,
                    owner,
                    source,
                } => {
                    let mut dir = m.cache_dir(cx, id, *sharing, *owner)?;
                    if let Some(source) = source {
                        dir = cache_subdir(&dir, source).map_err(|e| {
                            RpcError::of(
                                ErrorKind::InvalidInput,
                                format!("{}: cache mount source={source}: {e}", cx.display),
                            )
                        })?;
                    }
                    m.extra.push(ExtraMount {
                        source: MountSource::Host(dir),
                        target: target.clone(),
                        readonly: *readonly,
                    });
                }
                RunMount::Secret {
                    id,
                    target,
                    required,
                    env,
                    owner,
                } => {
                    let Some(secret) = cx.request.secrets.get(id) else {
                        if *required {
                            // BuildKit's text: "secret ID: not found".
                            return Err(RpcError::of(
                                ErrorKind::InvalidInput,
                                format!(
                                    "{}: secret {id}: not found (the mount is required)",
                                    cx.display
                                ),
                            )
                            .hint(format!("pass it with --secret id={id},src=FILE")));
                        }
                        continue;
                    };
                    if let Some(name) = env {
                        let value = String::from_utf8(secret.0.clone()).map_err(|_| {
                            RpcError::of(
                                ErrorKind::InvalidInput,
                                format!(
                                    "{}: secret {id} is not UTF-8 text, so it cannot be the value of {name}",
                                    cx.display
                                ),
                            )
                            .hint("mount it as a file (target=PATH without env=)")
                        })?;
                        m.env.push(format!("{name}={value}"));
                    }
                    let Some(target) = target else { continue };
                    let dir = secret_dir()?;
                    let file = dir.path().join("secret");
                    match owner {
                        Some(o) => {
                            write_private(&file, &secret.0, o.uid, o.gid)?;
                            use std::os::unix::fs::PermissionsExt;
                            let mode = std::fs::Permissions::from_mode(o.mode & 0o7777);
                            std::fs::set_permissions(&file, mode).map_err(|e| {
                                err(format!("{}: writing secret {id}: {e}", cx.display))
                            })?;
                        }
                        None => write_private(&file, &secret.0, uid, gid)?,
                    }
                    m.extra.push(ExtraMount {
                        source: MountSource::Host(file),
                        target: target.clone(),
                        readonly: true,
                    });
                    m._temp.push(dir);
                }
                RunMount::Ssh {
                    id,
                    target,
                    required,
                    owner,
                } => {
                    let Some(agent) = cx.engine.ssh.agent(cx.request, id)? else {
                        if *required {
                            // BuildKit's text: "no SSH key ID forwarded from the client".
                            return Err(RpcError::of(
                                ErrorKind::InvalidInput,
                                format!(
                                    "{}: no SSH key {id:?} forwarded from the client (the mount is required)",
                                    cx.display
                                ),
                            )
                            .hint(format!(
                                "pass --ssh {id} (the agent at $SSH_AUTH_SOCK), --ssh {id}=SOCKET or --ssh {id}=KEYFILE"
                            )));
                        }
                        continue;
                    };
                    // Like a secret's: in a directory only the daemon enters.
                    let dir = secret_dir()?;
                    let path = dir.path().join("agent.sock");
                    let (log, step) = (cx.log.clone(), cx.step);
                    let note = move |line: String| {
                        log.push(memobuild_proto::BuildEvent::Log {
                            step: Some(step),
                            line,
                        })
                    };
                    let task = crate::ssh_agents::listen(
                        &path, owner.uid, owner.gid, owner.mode, agent, note,
                    )
                    .map_err(|e| err(format!("{}: ssh agent socket {id}: {e}", cx.display)))?;
                    m.forwards.push(AbortOnDrop(task));
                    m.extra.push(ExtraMount {
                        source: MountSource::Host(path),
                        target: target.clone(),
                        readonly: false,
                    });
                    m._temp.push(dir);
                }
                RunMount::File {
                    target,
                    content,
                    mode,
                } => {
                    let dir = temp_in(cx)?;
                    let file = dir.path().join("file");
                    write_mode(&file, content, *mode)
                        .map_err(|e| err(format!("{}: writing {target}: {e}", cx.display)))?;
                    m.extra.push(ExtraMount {
                        source: MountSource::Host(file),
                        target: target.clone(),
                        readonly: true,
                    });
                    m._temp.push(dir);
                }
                RunMount::Tmpfs { target, size } => m.extra.push(ExtraMount {
                    source: MountSource::Tmpfs { size: *size },
                    target: target.clone(),
                    readonly: false,
                }),
                RunMount::Bind {
                    target,
                    source,
                    from,
                    readwrite,
                } => {
                    let (path, temp) = bind_source(cx, source, *from, *readwrite).await?;
                    m.extra.push(ExtraMount {
                        source: MountSource::Host(path),
                        target: target.clone(),
                        readonly: !*readwrite,
                    });
                    m._temp.extend(temp);
                }
            }
        }
        Ok(m)
    }

    /// The daemon's directory for cache mount `id`: its root (0:0, 0755), or
    /// with `uid=`/`gid=`/`mode=` its `cache/` subdirectory created with those
    /// (BuildKit mounts `/cache` of a Mkdir state then).
    fn cache_dir(
        &mut self,
        cx: &RunContext<'_>,
        id: &str,
        sharing: CacheSharing,
        owner: Option<CacheOwner>,
    ) -> Result<PathBuf, RpcError> {
        let name = cache_dir_name(cx.request, id);
        let dir = cx.engine.store.root().join("cache-mounts").join(&name);
        match sharing {
            CacheSharing::Shared => {}
            // Locked ids were locked up front (see `prepare`).
            CacheSharing::Locked => {}
            // This step already holds it (another mount of the same id).
            CacheSharing::Private if self.locks.contains_key(&name) => {}
            CacheSharing::Private => match cx.engine.cache_lock(&name).try_lock_owned() {
                Ok(guard) => {
                    self.locks.insert(name, guard);
                }
                // In use by another step: this one gets a fresh, throwaway directory.
                Err(_) => {
                    let temp = temp_in(cx)?;
                    let path = temp.path().to_path_buf();
                    self._temp.push(temp);
                    return match owner {
                        None => Ok(path),
                        Some(o) => {
                            let sub = path.join("cache");
                            create_cache_dir(&sub, o.uid, o.gid, o.mode).map_err(|e| {
                                err(format!("creating cache mount {}: {e}", sub.display()))
                            })?;
                            Ok(sub)
                        }
                    };
                }
            },
        }
        if !dir.exists() {
            private_parent(&dir)
                .and_then(|()| create_cache_dir(&dir, 0, 0, 0o755))
                .map_err(|e| err(format!("creating cache mount {}: {e}", dir.display())))?;
        }
        match owner {
            None => Ok(dir),
            Some(o) => {
                let sub = dir.join("cache");
                // BuildKit makes such a cache from a Mkdir of its own, which
                // --no-cache runs again: the step gets a new, empty cache, and
                // later steps of that id see what it left (moby/buildkit#5305).
                // The old one is moved aside (a step still using it keeps it
                // until this step ends), then removed.
                if cx.no_cache && sub.exists() {
                    let old = temp_in(cx)?;
                    std::fs::rename(&sub, old.path().join("cache")).map_err(|e| {
                        err(format!("resetting cache mount {}: {e}", sub.display()))
                    })?;
                    self._temp.push(old);
                }
                if !sub.exists() {
                    create_cache_dir(&sub, o.uid, o.gid, o.mode)
                        .map_err(|e| err(format!("creating cache mount {}: {e}", sub.display())))?;
                }
                Ok(sub)
            }
        }
    }
}

/// `source=` below a cache directory: each component a real directory
/// (created when missing, 0755), never a symlink, so a step cannot make a
/// later mount reach outside the cache (BuildKit refuses the same).
fn cache_subdir(dir: &Path, source: &str) -> Result<PathBuf, String> {
    let mut path = dir.to_path_buf();
    for part in source.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!(
                    "{part} is a symbolic link; a cache source must stay inside the cache"
                ))
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(format!("{part} is not a directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_cache_dir(&path, 0, 0, 0o755).map_err(|e| e.to_string())?;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(path)
}

/// `cache-mounts/` itself: 0700.
fn private_parent(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A cache mount's directory, with the owner and mode the step sees, in
/// `cache-mounts/` which is 0700, so no host user but root can reach what
/// steps leave there (a setuid binary, say).
fn create_cache_dir(dir: &Path, uid: u32, gid: u32, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        // Another step sharing it made it first.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        other => other?,
    }
    nix::unistd::chown(dir, Some(uid.into()), Some(gid.into()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7777))
}

fn temp_in(cx: &RunContext<'_>) -> Result<tempfile::TempDir, RpcError> {
    tempfile::tempdir_in(cx.engine.store.blobs.tmp_dir())
        .map_err(|e| err(format!("creating a temp dir: {e}")))
}

/// Secrets live on tmpfs (never on disk), in a directory only root can enter.
fn secret_dir() -> Result<tempfile::TempDir, RpcError> {
    let base = Path::new("/dev/shm");
    let dir = if base.is_dir() {
        tempfile::Builder::new()
            .prefix("memobuild-secret-")
            .tempdir_in(base)
    } else {
        tempfile::tempdir()
    };
    let dir = dir.map_err(|e| err(format!("creating a secret dir: {e}")))?;
    use std::os::unix::fs::PermissionsExt;
    // 0700: only the daemon (root) enters; runc bind-mounts the file itself, so
    // the step reads it while no host user, not even the step's uid, can.
    let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700));
    Ok(dir)
}

/// A new file with `bytes` and exactly `mode` (no umask).
fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
}

fn write_private(path: &Path, bytes: &[u8], uid: u32, gid: u32) -> Result<(), RpcError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(path)
        .map_err(|e| err(format!("writing a secret: {e}")))?;
    f.write_all(bytes)
        .map_err(|e| err(format!("writing a secret: {e}")))?;
    let _ = nix::unistd::chown(path, Some(uid.into()), Some(gid.into()));
    Ok(())
}

/// Where a bind mount's files come from: the context (copied when writable, so
/// a step can never change the user's files) or a stage (materialised).
async fn bind_source(
    cx: &RunContext<'_>,
    source: &str,
    from: Option<usize>,
    readwrite: bool,
) -> Result<(PathBuf, Option<tempfile::TempDir>), RpcError> {
    match from {
        None => {
            // A user other than root gets a copy made with their rights: the
            // step (root in its container) must not see through a live bind
            // what they may not read.
            let reader = super::reader_of(cx.request);
            let path = cx.context_root.join(source);
            let real = reading_as(reader.clone(), || as_reader(|| path.canonicalize()))
                .map_err(|e| err(e.to_string()))?
                .map_err(|e| err(format!("bind mount source {source:?}: {e}")))?;
            if !real.starts_with(cx.context_root) {
                return Err(RpcError::with_hint(
                    format!("bind mount source {source:?} leads outside the build context"),
                    "bind mounts read the build context only",
                ));
            }
            if !readwrite && reader.is_none() {
                return Ok((real, None));
            }
            let temp = temp_in(cx)?;
            let copy = temp.path().join("src");
            let (from, to) = (real.clone(), copy.clone());
            tokio::task::spawn_blocking(move || reading_as(reader, || copy_tree(&from, &to)))
                .await
                .map_err(|e| err(format!("internal error: {e}")))?
                .map_err(|e| err(format!("copying bind mount source {source:?}: {e}")))?;
            Ok((copy, Some(temp)))
        }
        Some(stage) => {
            let layers = cx.stage_layers.get(&stage).cloned().unwrap_or_default();
            let temp = temp_in(cx)?;
            let dest = temp.path().join("src");
            let engine = cx.engine.clone();
            let source = source.to_string();
            let staging = temp.path().join("staging");
            let d = dest.clone();
            tokio::task::spawn_blocking(move || {
                materialize(&engine, &layers, &source, &d, &staging)
            })
            .await
            .map_err(|e| err(format!("internal error: {e}")))??;
            Ok((dest, Some(temp)))
        }
    }
}

/// Writes `source` (a path in the stage made of `layers`) to `dest` on the host.
fn materialize(
    engine: &Engine,
    layers: &[LayerRecord],
    source: &str,
    dest: &Path,
    staging: &Path,
) -> Result<(), RpcError> {
    let view =
        FsView::load(&engine.store, &engine.layers, layers).map_err(|e| err(e.to_string()))?;
    let root = view
        .resolve(source)
        .ok_or_else(|| err(format!("bind mount source {source:?}: symlink loop")))?;
    std::fs::create_dir_all(staging).map_err(|e| err(e.to_string()))?;
    let entry = view.get(&root).cloned();
    let mut files = Vec::new();
    let mut items: Vec<(String, ViewKind, u32, u64)> = Vec::new();
    match entry.as_ref().map(|e| &e.kind) {
        None if !root.is_empty() => {
            return Err(err(format!(
                "bind mount source {source:?} not found in the stage"
            )))
        }
        Some(ViewKind::File) => files.push(root.clone()),
        _ => {
            let prefix = if root.is_empty() { 0 } else { root.len() + 1 };
            for (path, e) in view.below(&root) {
                if e.kind == ViewKind::File {
                    files.push(path.clone());
                }
                items.push((path[prefix..].to_string(), e.kind.clone(), e.mode, e.mtime));
            }
        }
    }
    let staged = view
        .extract(&engine.store, &files, staging)
        .map_err(|e| err(e.to_string()))?;
    let single_file = matches!(entry.as_ref().map(|e| &e.kind), Some(ViewKind::File));
    if single_file {
        let mode = entry.as_ref().map(|e| e.mode).unwrap_or(0o644);
        let staged_file = staged.get(&root).ok_or_else(|| {
            err(format!(
                "bind mount source {source:?}: its content is missing from the stage's layers"
            ))
        })?;
        use std::os::unix::fs::PermissionsExt;
        let mtime = entry.as_ref().map_or(0, |e| e.mtime);
        set_mtime(staged_file, mtime)
            .and_then(|()| {
                std::fs::set_permissions(staged_file, std::fs::Permissions::from_mode(mode))
            })
            .and_then(|()| std::fs::rename(staged_file, dest))
            .map_err(|e| err(format!("materialising {source:?}: {e}")))?;
        return Ok(());
    }
    // The stage's root (or a directory without an entry) is 0755, as in an image.
    let root_mode = entry.as_ref().map(|e| e.mode).unwrap_or(0o755);
    std::fs::create_dir(dest).map_err(|e| err(e.to_string()))?;
    // Every write below `dest` resolves inside it: the stage's symlinks (even
    // `esc -> /etc` with entries under `esc/`) can never lead out to the host.
    let tree = memobuild_rootpath::safefs::Root::open(dest)
        .map_err(|e| err(format!("opening {}: {e}", dest.display())))?;
    for (rel, kind, mode, mtime) in items {
        let src_path = if root.is_empty() {
            rel.clone()
        } else {
            format!("{root}/{rel}")
        };
        let result = match &kind {
            ViewKind::Dir => tree.mkdir(&rel, mode),
            ViewKind::File => match staged.get(&src_path) {
                // The stage's file time (its layer's), set on the daemon's
                // own staged file before it moves in.
                Some(p) => set_mtime(p, mtime).and_then(|()| tree.move_in(p, &rel, mode)),
                None => Ok(()),
            },
            ViewKind::Symlink(t) => tree.symlink(t, &rel),
            _ => Ok(()),
        };
        if let Err(e) = result {
            // A path under one of the stage's symlinks that leads nowhere inside
            // the mount: a real unpack of the stage could not create it there either.
            tracing::warn!(path = %src_path, error = %e, "bind mount from a stage: entry skipped");
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(root_mode))
        .map_err(|e| err(format!("materialising {source:?}: {e}")))?;
    Ok(())
}

/// Sets the mtime of `path`, a file the daemon staged itself.
fn set_mtime(path: &Path, secs: u64) -> std::io::Result<()> {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    std::fs::File::open(path)?.set_modified(at)
}

/// Copies a context directory for a writable bind mount. `to` is the daemon's
/// own new path; `from` is the user's: nothing in it is followed (symlinks are
/// copied as links) and only regular files are opened, so a FIFO or device
/// (which the context's index skips too) is left out instead of blocking.
///
/// With a reader set on the thread, `from` is looked up, listed and opened
/// with that user's rights (writes below `to` stay the daemon's).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let meta = as_reader(|| std::fs::symlink_metadata(from))??;
    if meta.is_dir() {
        std::fs::create_dir(to)?;
        let names = as_reader(|| {
            std::fs::read_dir(from)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<Vec<_>>>()
        })??;
        for name in names {
            copy_tree(&from.join(&name), &to.join(&name))?;
        }
        // The directory's time, as the context has it (after its entries,
        // whose creation moved it).
        std::fs::File::open(to)?.set_modified(meta.modified()?)?;
        std::fs::set_permissions(to, meta.permissions())
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(as_reader(|| std::fs::read_link(from))??, to)
    } else if meta.is_file() {
        let (mut src, _) = match memobuild_rootpath::safefs::open_regular(from, false) {
            Ok(f) => f,
            // Replaced by something else since: skipped like any special file.
            Err(memobuild_rootpath::safefs::ReadError::NotRegular { .. }) => return Ok(()),
            Err(memobuild_rootpath::safefs::ReadError::Io { source, .. }) => return Err(source),
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)?;
        std::io::copy(&mut src, &mut out)?;
        // The file's time, as the context has it (BuildKit mounts the files).
        out.set_modified(meta.modified()?)?;
        out.set_permissions(std::fs::Permissions::from_mode(
            meta.permissions().mode() & 0o7777,
        ))
    } else {
        Ok(())
    }
}

/// A stored layer as the sandbox takes it: a blob file on disk.
pub(crate) fn layer_input(
    blobs: &memobuild_store::BlobStore,
    layer: &memobuild_store::LayerRecord,
) -> Result<LayerInput, memobuild_store::StoreError> {
    Ok(LayerInput {
        digest: layer.digest.clone(),
        diff_id: layer.diff_id.clone(),
        path: blobs.path(&layer.digest)?,
        media_type: layer.media_type.clone(),
    })
}
