//! Running a build: plan it, look every step up in the cache, execute only the
//! misses, store their results, assemble the image. Independent stages run
//! concurrently. Progress goes out as [`BuildEvent`]s that clients long-poll.

mod content;
pub(crate) mod copy;
pub(crate) mod fsview;
pub(crate) mod run;
mod runner;
mod snapshots;
pub(crate) mod users;

mod build;
pub(crate) mod flight;
mod ops;
pub(crate) mod queue;
mod urls;

pub use ops::DEFAULT_MAX_PARALLEL_BUILDS;
pub use run::RunSettings;
pub use runner::Runner;

use crate::project::Projects;
use fsview::LayerCache;
use memobuild_context::{HashCache, Watcher};
use memobuild_proto::{BuildEvent, BuildId, BuildRequest, EventBatch, RpcError};
use memobuild_store::Store;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Whose rights a build reads its context with (`None`: the daemon's own).
pub(crate) fn reader_of(request: &BuildRequest) -> Option<Arc<memobuild_rootpath::creds::Creds>> {
    request.read_as.as_ref().map(|r| {
        Arc::new(memobuild_rootpath::creds::Creds {
            uid: r.uid,
            gid: r.gid,
            groups: r.groups.clone(),
        })
    })
}

/// How long an `events` call waits for something new before returning empty.
const LONG_POLL: Duration = Duration::from_secs(3);

/// A finished build's events stay in memory this long for its clients to read
/// (after that `memobuild-ctl logs` reads the build's log file)...
const KEEP_FINISHED: Duration = Duration::from_secs(300);
/// ...and at most this many finished builds' events, so a daemon running for
/// weeks does not grow.
const MAX_FINISHED: usize = 100;

/// The shared machinery every build uses.
pub struct Engine {
    pub(crate) store: Arc<Store>,
    pub(crate) layers: LayerCache,
    /// Writes step layers; remembers their gzip members so the next layer
    /// of an edited step reuses them (oci::layer).
    pub(crate) layer_writer: memobuild_oci::LayerWriter,
    /// The last snapshot written for each step, for deltas.
    recent: snapshots::Recent,
    pub(crate) hashes: HashCache,
    pub(crate) merkle: memobuild_context::merkle::DirDigests,
    pub(crate) watcher: Arc<Watcher>,
    pub(crate) projects: Projects,
    /// Reloadable on SIGHUP (the limits and network default; see
    /// [`Engine::set_run_settings`]), hence behind a lock.
    pub(crate) run_settings: parking_lot::RwLock<RunSettings>,
    /// Bounds the RUN steps running at once, across builds.
    pub(crate) run_slots: tokio::sync::Semaphore,
    sandbox: tokio::sync::Mutex<Option<SandboxHandle>>,
    /// Runs RUN steps instead of containerd (`Engine::with_runner`).
    custom_runner: Option<Arc<dyn Runner>>,
    cache_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Uploads in progress for `image import` / a local cache, by random id,
    /// each with the uid that began it (only that uid may write or commit it).
    uploads: Mutex<HashMap<u64, (u32, memobuild_store::Upload)>>,
    /// Blobs each uid committed through an upload (the layers its local
    /// cache import may name); bounded by [`MAX_UPLOADED`] per uid.
    uploaded: Mutex<HashMap<u32, std::collections::HashSet<String>>>,
    builds: Mutex<HashMap<BuildId, Arc<BuildLog>>>,
    next_id: AtomicU64,
    // Observability (docs/OBSERVABILITY.md).
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    build_logs: std::sync::OnceLock<Arc<crate::buildlogs::BuildLogs>>,
    /// Finished builds still in `builds`, oldest first.
    finished: Mutex<VecDeque<(BuildId, std::time::Instant)>>,
    lifecycle: Lifecycle,
    // Disk GC, single flight and the build queue (exec/ops.rs).
    pub(crate) queue: Arc<queue::Queue>,
    pub(crate) flights: flight::Flights,
    /// Held from the single-flight lookup to the new build's registration:
    /// two identical requests arriving together must share one build.
    starting: Mutex<()>,
    /// `max-storage` in bytes; 0 = no cap.
    max_storage: AtomicU64,
    gc_running: std::sync::atomic::AtomicBool,
    /// `forget-projects-after`, `max-projects` (tidy.rs).
    pub(crate) project_limits: Arc<crate::tidy::ProjectLimits>,
    /// Eager builds running (eager.rs).
    pub(crate) eager: crate::eager::EagerBuilds,
    /// The clients' ssh forwarding sessions (ssh_agents.rs).
    pub(crate) ssh: crate::ssh_agents::SshSessions,
}

/// The containerd connection RUN steps use, and the private containerd behind
/// it when the daemon started its own.
struct SandboxHandle {
    sandbox: memobuild_sandbox::Sandbox,
    private: Option<memobuild_sandbox::PrivateContainerd>,
}

/// A build's events so far; clients read it from any cursor.
#[derive(Default)]
pub(crate) struct BuildLog {
    /// The build's id (0 for logs outside a daemon build).
    pub(crate) id: BuildId,
    /// The project the build belongs to (`EventBatch::project`).
    pub(crate) project: String,
    /// A background build nobody asked for (eager.rs).
    pub(crate) eager: bool,
    /// Who asked for the build (`None`: the daemon itself, an eager build);
    /// its owner is [`crate::owner::owner_of`] the request.
    pub(crate) caller: Option<crate::owner::Caller>,
    /// The uid owning the build: its events, log and cancel are its own.
    pub(crate) owner: Option<u32>,
    /// Where the events are persisted, when the daemon keeps build logs.
    journal: Option<crate::buildlogs::Journal>,
    pub(crate) events: Mutex<Vec<BuildEvent>>,
    finished: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
    cancelled: std::sync::atomic::AtomicBool,
    cancel: tokio::sync::Notify,
    /// The step that failed the build, first one wins (`failure.rs`).
    failed_step: Mutex<Option<crate::failure::FailedStep>>,
    /// The build's failure as data, for the `failed` event.
    failure: Mutex<Option<memobuild_proto::FailureInfo>>,
}

impl BuildLog {
    /// Notes that `step` failed the build (a later note of another step, which
    /// was only stopped because of this one, is ignored).
    pub(crate) fn note_failed_step(
        &self,
        step: usize,
        exit_code: Option<i32>,
        output: Vec<String>,
    ) {
        self.failed_step
            .lock()
            .get_or_insert(crate::failure::FailedStep {
                step,
                exit_code,
                output,
            });
    }

    pub(crate) fn failed_step(&self) -> Option<crate::failure::FailedStep> {
        self.failed_step.lock().clone()
    }

    /// Forgets a noted failure (a build starting over).
    pub(crate) fn clear_failed_step(&self) {
        *self.failed_step.lock() = None;
    }

    pub(crate) fn set_failure(&self, failure: memobuild_proto::FailureInfo) {
        *self.failure.lock() = Some(failure);
    }

    pub(crate) fn failure(&self) -> Option<memobuild_proto::FailureInfo> {
        self.failure.lock().clone()
    }

    pub(crate) fn push(&self, event: BuildEvent) {
        let terminal = matches!(
            event,
            BuildEvent::Finished { .. } | BuildEvent::Failed { .. }
        );
        if let Some(journal) = &self.journal {
            journal.record(&event);
        }
        self.events.lock().push(event);
        if terminal {
            self.finished.store(true, Ordering::SeqCst);
        }
        self.changed.notify_waiters();
    }

    /// Resolves once the build is cancelled.
    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.cancel.notified();
            if self.cancelled.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// The events from `cursor` on, at most [`MAX_BATCH_BYTES`] of them (at
    /// least one), so one answer always fits a frame on the socket.
    fn batch(&self, cursor: u64) -> EventBatch {
        let events = self.events.lock();
        let start = (cursor as usize).min(events.len());
        let mut end = start;
        let mut bytes = 0;
        while end < events.len()
            && (end == start || bytes + weight(&events[end]) <= MAX_BATCH_BYTES)
        {
            bytes += weight(&events[end]);
            end += 1;
        }
        EventBatch {
            events: events[start..end].to_vec(),
            next_cursor: end as u64,
            finished: end == events.len() && self.finished.load(Ordering::SeqCst),
            project: self.project.clone(),
        }
    }
}

/// The most event bytes one `events` answer carries (the socket's frames
/// allow 32 MiB; RUN output is already cut into lines of at most 16 KiB).
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// About how many bytes an event takes on the wire.
fn weight(event: &BuildEvent) -> usize {
    match event {
        BuildEvent::Log { line, .. } => line.len() + 32,
        _ => 512,
    }
}

impl Engine {
    /// Creates the engine, starts its file watcher and dirty tracking, and
    /// resumes watching the contexts of known projects (needs a tokio runtime).
    pub fn new(store: Arc<Store>, run_settings: RunSettings) -> Arc<Engine> {
        Engine::open(store, run_settings, None)
    }

    /// An engine whose RUN steps go to `runner` instead of containerd (no
    /// snapshots are written, nothing is cleaned up in containerd). For
    /// tests of everything around the sandbox.
    pub fn with_runner(
        store: Arc<Store>,
        run_settings: RunSettings,
        runner: Arc<dyn Runner>,
    ) -> Arc<Engine> {
        Engine::open(store, run_settings, Some(runner))
    }

    fn open(
        store: Arc<Store>,
        run_settings: RunSettings,
        custom_runner: Option<Arc<dyn Runner>>,
    ) -> Arc<Engine> {
        let projects = Projects::load(&store);
        let hashes = HashCache::new();
        match store.hashes() {
            Ok(records) => {
                let n = hashes.load(records.into_iter());
                tracing::info!(
                    entries = n,
                    "content hashes loaded; files are re-validated by stat"
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot load persisted content hashes"),
        }
        let engine = Arc::new(Engine {
            store,
            layers: LayerCache::default(),
            layer_writer: memobuild_oci::LayerWriter::new(),
            recent: Default::default(),
            hashes,
            merkle: Default::default(),
            watcher: Watcher::start(),
            projects,
            run_slots: tokio::sync::Semaphore::new(run_settings.max_parallel.max(1)),
            run_settings: parking_lot::RwLock::new(run_settings),
            sandbox: tokio::sync::Mutex::new(None),
            custom_runner,
            cache_locks: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            uploaded: Mutex::new(HashMap::new()),
            builds: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            // The metric names are constants: only a programming error fails here.
            metrics: Arc::new(crate::metrics::Metrics::new().expect("metrics register")),
            build_logs: std::sync::OnceLock::new(),
            finished: Mutex::new(VecDeque::new()),
            lifecycle: Lifecycle::default(),
            queue: queue::Queue::new(ops::DEFAULT_MAX_PARALLEL_BUILDS),
            flights: flight::Flights::default(),
            starting: Mutex::new(()),
            max_storage: AtomicU64::new(0),
            gc_running: Default::default(),
            project_limits: Default::default(),
            eager: Default::default(),
            ssh: Default::default(),
        });
        tokio::spawn(ops::expire_leases(Arc::downgrade(&engine)));
        tokio::spawn(build::track_dirty(
            Arc::downgrade(&engine),
            engine.watcher.subscribe(),
        ));
        tokio::spawn(build::resume_watching(engine.clone()));
        crate::tidy::spawn(&engine);
        // A containerd used before may hold what a crashed daemon left behind.
        let containerd_used = engine.run_settings().containerd_socket.is_some()
            || engine.store.root().join("containerd").is_dir();
        if containerd_used && engine.custom_runner.is_none() {
            let e = engine.clone();
            tokio::spawn(async move {
                if let Err(err) = e.sandbox().await {
                    tracing::warn!(error = %err.message, "RUN steps are unavailable");
                }
            });
        }
        engine
    }

    /// What runs RUN steps: containerd (see [`Engine::sandbox`]) unless the
    /// engine was opened [`Engine::with_runner`].
    pub async fn runner(&self) -> Result<Arc<dyn Runner>, RpcError> {
        match &self.custom_runner {
            Some(runner) => Ok(runner.clone()),
            None => Ok(Arc::new(self.sandbox().await?)),
        }
    }

    /// The containerd sandbox: connects (or starts the private containerd)
    /// on first use, and removes what a crashed daemon left in it. An engine
    /// with a custom runner has none.
    pub async fn sandbox(&self) -> Result<memobuild_sandbox::Sandbox, RpcError> {
        if self.custom_runner.is_some() {
            return Err(RpcError::of(
                memobuild_proto::ErrorKind::Unavailable,
                "this engine runs steps without containerd",
            ));
        }
        let mut guard = self.sandbox.lock().await;
        if let Some(handle) = guard.as_ref() {
            return Ok(handle.sandbox.clone());
        }
        let handle = match &self.run_settings().containerd_socket {
            Some(socket) => memobuild_sandbox::Sandbox::connect(socket)
                .await
                .map(|sandbox| SandboxHandle { sandbox, private: None }),
            None => memobuild_sandbox::Sandbox::start_private(&self.store.root().join("containerd"))
                .await
                .map(|(sandbox, p)| SandboxHandle { sandbox, private: Some(p) }),
        }
        .map_err(|e| {
            RpcError::with_hint(
                format!("RUN needs containerd and runc: {e}"),
                format!(
                    "install the Debian packages `{}` (the daemon starts its own containerd), or point --containerd-socket at a running one",
                    memobuild_sandbox::PACKAGES
                ),
            )
        })?;
        match handle.sandbox.cleanup_orphans().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removed = n,
                "removed containerd resources left by an earlier daemon"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot clean up containerd leftovers"),
        }
        let sandbox = handle.sandbox.clone();
        *guard = Some(handle);
        Ok(sandbox)
    }

    /// Stops the private containerd, if the daemon started one.
    pub async fn shutdown(&self) {
        if let Some(handle) = self.sandbox.lock().await.take() {
            handle.sandbox.release_network().await;
            if let Some(private) = handle.private {
                private.shutdown().await;
            }
        }
    }

    /// The lock of cache mount `name` (for sharing=locked and private).
    pub(crate) fn cache_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.cache_locks
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Writes content hashes computed since the last call to the store, so a
    /// restarted daemon re-validates by stat instead of re-hashing.
    pub async fn persist_hashes(self: &Arc<Self>) {
        let engine = self.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || {
            let records = engine.hashes.take_new();
            engine.store.put_hashes(&records)
        })
        .await;
        tracing::debug!(took = ?started.elapsed(), "content hashes persisted");
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "cannot persist content hashes");
        }
    }

    pub fn running_builds(&self) -> u64 {
        self.projects.running()
    }

    /// Persists every build's events under `logs` from now on; build ids
    /// continue above the ones already there, so an id never names two builds.
    pub fn attach_build_logs(&self, logs: Arc<crate::buildlogs::BuildLogs>) {
        self.next_id.fetch_max(logs.last_id() + 1, Ordering::SeqCst);
        let _ = self.build_logs.set(logs);
    }

    /// The per-build logs, when the daemon keeps them.
    pub(crate) fn build_logs(&self) -> Option<&Arc<crate::buildlogs::BuildLogs>> {
        self.build_logs.get()
    }

    /// Whether build `id` is running now (known and not finished).
    pub(crate) fn is_running(&self, id: BuildId) -> bool {
        self.log(id)
            .is_ok_and(|log| !log.finished.load(Ordering::SeqCst))
    }

    /// Drops the events of builds that finished long enough ago, or beyond
    /// [`MAX_FINISHED`]; their log files stay.
    fn evict_finished(&self, id: BuildId) {
        let mut finished = self.finished.lock();
        finished.push_back((id, std::time::Instant::now()));
        let mut builds = self.builds.lock();
        for _ in 0..evictable(&finished, std::time::Instant::now()) {
            if let Some((old, _)) = finished.pop_front() {
                builds.remove(&old);
            }
        }
    }

    /// Starts a build in the background and returns its id; an identical
    /// request while one runs joins that build instead (single flight).
    pub fn start(self: &Arc<Self>, request: BuildRequest, caller: crate::Caller) -> BuildId {
        // An explicit build never waits for background work.
        self.eager_yield();
        self.start_build(request, false, Some(caller))
    }

    /// Starts an eager build (eager.rs): as [`Engine::start`], but it yields.
    pub(crate) fn start_eager(self: &Arc<Self>, request: BuildRequest) -> BuildId {
        self.start_build(request, true, None)
    }

    fn start_build(
        self: &Arc<Self>,
        request: BuildRequest,
        eager: bool,
        caller: Option<crate::Caller>,
    ) -> BuildId {
        let key = flight::key_of(&request);
        let starting = self.starting.lock();
        if let Some(id) = self.flights.join(&key) {
            tracing::info!(build = id, "identical build running: joined it");
            return id;
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let project = crate::project::ProjectKey::of(&request).id();
        let owner = crate::owner::owner_of(&request);
        let journal = self.build_logs.get().map(|logs| {
            logs.begin(crate::buildlogs::Header {
                build: id,
                project: project.clone(),
                context: request.context.clone(),
                dockerfile: request.dockerfile.clone(),
                target: request.target.clone(),
                started_at_ms: crate::buildlogs::now_ms(),
                owner,
            })
        });
        let log = Arc::new(BuildLog {
            id,
            project: project.clone(),
            eager,
            caller,
            owner,
            journal,
            ..BuildLog::default()
        });
        self.builds.lock().insert(id, log.clone());
        self.flights.insert(key, id);
        drop(starting);
        // Eager builds wait while explicit ones run (eager.rs).
        let explicit = (!eager).then(|| crate::eager::Explicit::begin(self));
        let engine = self.clone();
        // A root span: the build outlives the RPC that started it.
        let span = tracing::info_span!(parent: None, "build", build = id, project = %project, context = %request.context, target = %request.target);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let _explicit = explicit;
                let Some(slot) = engine.queue_for_slot(id, &request, &log).await else {
                    engine.flights.finish(id);
                    log.push(BuildEvent::Failed {
                        error: RpcError::new("build cancelled while queued"),
                        failure: None,
                    });
                    return;
                };
                engine.store.pin_build(id);
                let started = std::time::Instant::now();
                tracing::info!("build started");
                let running = engine.metrics.build_running();
                let outcome = build::run(&engine, id, &request, &log).await;
                drop(running);
                engine.metrics.build_ended(match &outcome {
                    Ok(_) => "success",
                    Err(e) if e.is(memobuild_proto::ErrorKind::Cancelled) => "cancelled",
                    Err(_) => "failed",
                });
                engine
                    .build_ended(id, outcome.as_ref().ok().map(|d| d.manifest_digest.clone()))
                    .await;
                match outcome {
                    Ok(done) => {
                        tracing::info!(digest = %done.manifest_digest, millis = started.elapsed().as_millis() as u64, "build finished");
                        log.push(BuildEvent::Finished {
                            manifest_digest: done.manifest_digest,
                            config_digest: done.config_digest,
                            tags: done.tags,
                            millis: started.elapsed().as_millis() as u64,
                        });
                    }
                    Err(error) => {
                        let error = engine.shutdown_error(&log, error);
                        tracing::warn!(error = %error.message, "build failed");
                        let failure = log.failure();
                        log.push(BuildEvent::Failed { error, failure });
                    }
                }
                // After the client has its answer: the hashes only spare the
                // next daemon start a re-hash (shutdown persists them too).
                engine.persist_hashes().await;
                engine.evict_finished(id);
                drop(slot);
                // A save during an eager build found it running and started
                // nothing: now that it has ended, the project gets the next one.
                if log.eager {
                    engine.maybe_eager(&log.project);
                }
                engine.auto_gc().await;
            },
            span,
        ));
        id
    }

    /// Cancels a build: its running steps are dropped (RUN containers killed and
    /// removed) and it fails with "cancelled".
    pub fn cancel(&self, id: BuildId, caller: crate::Caller) -> Result<(), RpcError> {
        let log = self.log_for(id, caller)?;
        // Other clients still wait on this build: only this one leaves.
        if !self.flights.leave(id) {
            tracing::info!(build = id, "a client left; others still wait on the build");
            return Ok(());
        }
        self.abort(&log);
        Ok(())
    }

    /// Cancels a build whoever waits on it (daemon shutdown, expired lease).
    pub(crate) fn abort_build(&self, id: BuildId) -> Result<(), RpcError> {
        self.abort(&*self.log(id)?);
        Ok(())
    }

    fn abort(&self, log: &BuildLog) {
        log.cancelled.store(true, Ordering::SeqCst);
        log.cancel.notify_waiters();
    }

    /// Begins an upload for `caller`: its id is a random u64 (not
    /// guessable), and only `caller`'s uid may write or commit it.
    pub fn upload_begin(&self, caller: crate::Caller) -> Result<u64, RpcError> {
        let upload = self
            .store
            .blobs
            .upload()
            .map_err(|e| RpcError::new(e.to_string()))?;
        let mut uploads = self.uploads.lock();
        let id = loop {
            let mut bytes = [0u8; 8];
            getrandom::getrandom(&mut bytes)
                .map_err(|e| RpcError::new(format!("cannot draw a random upload id: {e}")))?;
            let id = u64::from_le_bytes(bytes);
            if id != 0 && !uploads.contains_key(&id) {
                break id;
            }
        };
        uploads.insert(id, (caller.uid, upload));
        Ok(id)
    }

    pub(crate) fn upload_chunk_now(
        &self,
        id: u64,
        data: &[u8],
        caller: crate::Caller,
    ) -> Result<(), RpcError> {
        let mut uploads = self.uploads.lock();
        let (owner, upload) = uploads.get_mut(&id).ok_or_else(|| no_upload(id))?;
        if *owner != caller.uid {
            return Err(caller.denied(&format!("upload {id}"), Some(*owner)));
        }
        upload.write(data).map_err(|e| RpcError::new(e.to_string()))
    }

    pub(crate) fn upload_commit_now(
        &self,
        id: u64,
        digest: &str,
        caller: crate::Caller,
    ) -> Result<u64, RpcError> {
        let upload = {
            let mut uploads = self.uploads.lock();
            match uploads.get(&id) {
                None => return Err(no_upload(id)),
                Some((owner, _)) if *owner != caller.uid => {
                    return Err(caller.denied(&format!("upload {id}"), Some(*owner)))
                }
                Some(_) => uploads
                    .remove(&id)
                    .map(|(_, u)| u)
                    .ok_or_else(|| no_upload(id))?,
            }
        };
        self.store.pin_uploads();
        let size = self
            .store
            .blobs
            .commit_upload(upload, digest)
            .map_err(|e| RpcError::new(e.to_string()))?;
        let mut uploaded = self.uploaded.lock();
        let mine = uploaded.entry(caller.uid).or_default();
        if mine.len() >= MAX_UPLOADED {
            mine.clear();
        }
        mine.insert(digest.to_string());
        Ok(size)
    }

    /// The blobs `uid` committed through uploads (the newest, at most [`MAX_UPLOADED`]).
    pub(crate) fn uploaded_by(&self, uid: u32) -> std::collections::HashSet<String> {
        self.uploaded.lock().get(&uid).cloned().unwrap_or_default()
    }

    /// Build `id`'s events, if `caller` may see them (its owner or an admin).
    fn log_for(&self, id: BuildId, caller: crate::Caller) -> Result<Arc<BuildLog>, RpcError> {
        let log = self.log(id)?;
        if !caller.may_change(log.owner) {
            return Err(caller.denied(&format!("build {id}"), log.owner));
        }
        Ok(log)
    }

    fn log(&self, id: BuildId) -> Result<Arc<BuildLog>, RpcError> {
        self.builds
            .lock()
            .get(&id)
            .cloned()
            .ok_or_else(|| {
                RpcError::with_hint(
                    format!("no build with id {id} in the daemon's memory (it finished a while ago, or the daemon restarted)"),
                    format!("`memobuild-ctl logs {id}` prints its log"),
                )
            })
    }

    /// Events of build `id` from `cursor`, waiting briefly for new ones.
    pub async fn events(
        &self,
        id: BuildId,
        cursor: u64,
        caller: crate::Caller,
    ) -> Result<EventBatch, RpcError> {
        let log = self.log_for(id, caller)?;
        self.flights.seen(id);
        let notified = log.changed.notified();
        let batch = log.batch(cursor);
        if !batch.events.is_empty() || batch.finished {
            return Ok(batch);
        }
        let _ = tokio::time::timeout(LONG_POLL, notified).await;
        Ok(log.batch(cursor))
    }
}

// ---------------------------------------------------------------------------
// Lifecycle: graceful shutdown (SIGTERM/SIGINT) and reloaded settings (SIGHUP).

/// Whether the daemon is stopping, and why builds were cancelled.
#[derive(Default)]
struct Lifecycle {
    shutting_down: std::sync::atomic::AtomicBool,
    /// Set when the shutdown grace ran out: the grace, for the error message.
    cancelled_after: Mutex<Option<Duration>>,
}

impl Engine {
    /// The RUN settings in effect now.
    pub fn run_settings(&self) -> RunSettings {
        self.run_settings.read().clone()
    }

    /// Replaces the RUN defaults for steps that start from now on. The
    /// containerd socket and the parallelism stay as they were at start-up.
    pub fn set_run_settings(&self, new: RunSettings) {
        let mut current = self.run_settings.write();
        *current = RunSettings {
            containerd_socket: current.containerd_socket.clone(),
            max_parallel: current.max_parallel,
            ..new
        };
    }

    /// From now on `start_build` is refused; running builds carry on.
    pub fn begin_shutdown(&self) {
        self.lifecycle.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.lifecycle.shutting_down.load(Ordering::SeqCst)
    }

    /// Builds that have not finished or failed yet.
    pub fn unfinished_builds(&self) -> usize {
        self.builds
            .lock()
            .values()
            .filter(|log| !log.finished.load(Ordering::SeqCst))
            .count()
    }

    /// Waits until no build is running; false if some still are after `within`.
    pub async fn wait_idle(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.unfinished_builds() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Cancels every running build (as `memobuild-ctl` cancel does: RUN
    /// containers are killed and removed); `grace` is named in their errors.
    pub fn cancel_all(&self, grace: Duration) {
        *self.lifecycle.cancelled_after.lock() = Some(grace);
        let logs: Vec<Arc<BuildLog>> = self
            .builds
            .lock()
            .values()
            .filter(|log| !log.finished.load(Ordering::SeqCst))
            .cloned()
            .collect();
        for log in logs {
            self.abort(&log);
        }
    }

    /// Removes whatever cancelled RUN steps may still hold in containerd
    /// (their guards release it in background tasks), before containerd stops.
    pub async fn release_runs(&self) {
        let sandbox = match self.sandbox.lock().await.as_ref() {
            Some(handle) => handle.sandbox.clone(),
            None => return,
        };
        if let Err(e) = sandbox.cleanup_orphans().await {
            tracing::warn!(error = %e, "cannot clean up containerd at shutdown");
        }
    }

    /// A build cancelled by the shutdown says so, instead of "build cancelled".
    fn shutdown_error(&self, log: &BuildLog, error: RpcError) -> RpcError {
        let grace = *self.lifecycle.cancelled_after.lock();
        match grace {
            Some(grace) if log.cancelled.load(Ordering::SeqCst) => RpcError::of(
                memobuild_proto::ErrorKind::Cancelled,
                format!(
                    "build cancelled: memobuildd is shutting down and the build did not finish within the shutdown grace ({})",
                    humantime::format_duration(grace)
                ),
            )
            .hint("run the build again when the daemon is back; admins can raise shutdown-grace"),
            _ => error,
        }
    }
}

/// How many of the finished builds (oldest first) to drop from memory now:
/// those older than [`KEEP_FINISHED`], and the oldest beyond [`MAX_FINISHED`].
fn evictable(finished: &VecDeque<(BuildId, std::time::Instant)>, now: std::time::Instant) -> usize {
    let expired = finished
        .iter()
        .take_while(|(_, at)| now.saturating_duration_since(*at) >= KEEP_FINISHED)
        .count();
    expired.max(finished.len().saturating_sub(MAX_FINISHED))
}

/// How many uploaded blobs are remembered per uid.
const MAX_UPLOADED: usize = 100_000;

/// An upload id no upload in progress has.
fn no_upload(id: u64) -> RpcError {
    RpcError::of(
        memobuild_proto::ErrorKind::NotFound,
        format!("no upload {id}"),
    )
    .hint("begin an upload with upload_begin and use the id it returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn finished_builds_leave_memory_after_a_while_or_beyond_a_count() {
        let old = Instant::now();
        let now = old + KEEP_FINISHED + Duration::from_secs(1);
        let mut finished: VecDeque<(BuildId, Instant)> = VecDeque::new();
        finished.extend([(1, old), (2, old), (3, now)]);
        assert_eq!(evictable(&finished, now), 2);
        let fresh: VecDeque<(BuildId, Instant)> =
            (0..MAX_FINISHED as u64 + 3).map(|i| (i, now)).collect();
        assert_eq!(evictable(&fresh, now), 3);
        assert_eq!(evictable(&VecDeque::new(), now), 0);
    }
}
