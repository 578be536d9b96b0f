//! One build, start to finish: request -> plan -> cache lookup -> execute misses
//! -> store -> image.

use super::copy;
use super::fsview::{FsView, ViewKind};
use super::reader_of;
use super::{BuildLog, Engine};
use crate::project::{BuildSummary, ProjectKey};
use crate::registry_hooks::BuildRegistry;
use memobuild_context::dockerignore::DockerIgnore;
use memobuild_context::{ContextIndex, Tree};
use memobuild_dockerfile::{self as dockerfile, DockerfileError};
use memobuild_oci::config::History;
use memobuild_oci::image::StoredImage;
use memobuild_oci::{ChangeSet, OciError};
use memobuild_plan::{self as graph, Base, Op, Plan, Step};
use memobuild_proto::{
    BuildEvent, BuildId, BuildRequest, ErrorKind, RpcError, StepInfo, StepState,
};
use memobuild_rootpath::creds::{reading_as, Creds};
use memobuild_store::{ImageRecord, LayerRecord, Lookup, StepRecord};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;

/// The context directory opened with the requesting user's rights: a user
/// may build only a directory they may list, and the daemon does not even
/// start watching one they may not.
fn check_context_dir(request: &BuildRequest) -> Result<(), RpcError> {
    let Some(reader) = reader_of(request) else {
        return Ok(());
    };
    let context = Path::new(&request.context);
    let uid = reader.uid;
    let opened = reading_as(Some(reader), || {
        memobuild_rootpath::creds::as_reader(|| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
                .open(context)
        })
    })
    .map_err(|e| RpcError::new(e.to_string()))?;
    match opened {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(RpcError::of(
            ErrorKind::PermissionDenied,
            format!(
                "build context {}: permission denied: uid {uid} may not list it, and memobuildd reads build contexts with the rights of the user who asks",
                context.display()
            ),
        )
        .hint("build a directory you can read, or ask its owner for read access")),
        Err(e) => Err(RpcError::with_hint(
            format!("build context {}: {e}", context.display()),
            "pass the directory to build, e.g. `memobuild-ctl build .`",
        )),
    }
}

/// Builds whose context changes under them start over this many times at most.
const MAX_ATTEMPTS: u32 = 5;

pub(super) struct Done {
    pub manifest_digest: String,
    pub config_digest: String,
    pub tags: Vec<String>,
}

/// The filesystem and history a stage ends with.
#[derive(Debug, Clone, Default)]
struct StageResult {
    layers: Vec<LayerRecord>,
    history: Vec<History>,
    /// The key of the stage's result as the build resolved it (see `Step::pending`).
    key: String,
}

/// Content digests the step cache remembers, for planning.
struct StoreContents<'a>(&'a memobuild_store::Store);

impl graph::StageContents for StoreContents<'_> {
    fn content_digest(&self, ref_key: &str) -> Option<String> {
        self.0.stage_content(ref_key).ok().flatten()
    }
}

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(e.to_string())
}

fn access_error(e: memobuild_context::access::AccessError) -> RpcError {
    use memobuild_context::access::AccessError;
    let kind = match &e {
        AccessError::Denied { .. } => ErrorKind::PermissionDenied,
        AccessError::Changed { .. } => ErrorKind::ContextChanged,
        AccessError::Io { .. } | AccessError::Switch(_) => ErrorKind::Internal,
    };
    let hint = match &e {
        AccessError::Denied { .. } => Some(
            "add it to .dockerignore if the build does not need it, or ask its owner for read access"
                .to_string(),
        ),
        _ => None,
    };
    RpcError {
        kind,
        message: e.to_string(),
        hint,
        location: None,
    }
}

fn dockerfile_error(e: DockerfileError) -> RpcError {
    let kind = if e.changed_during_build {
        ErrorKind::ContextChanged
    } else {
        ErrorKind::InvalidInput
    };
    RpcError::of(kind, e.to_string())
        .at(memobuild_proto::Location {
            file: e.file,
            line: e.loc.line,
            column: e.loc.column,
        })
        .hint_opt(e.hint)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RpcError> + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RpcError::new(format!("internal error: build task failed: {e}")))?
}

pub(super) async fn run(
    engine: &Arc<Engine>,
    id: BuildId,
    request: &BuildRequest,
    log: &Arc<BuildLog>,
) -> Result<Done, RpcError> {
    let started = Instant::now();
    let context = Path::new(&request.context);
    {
        let request = request.clone();
        blocking(move || check_context_dir(&request)).await?;
    }
    if !context.is_dir() {
        return Err(RpcError::with_hint(
            format!("build context {} is not a directory", context.display()),
            "pass the directory to build, e.g. `memobuild-ctl build .`",
        ));
    }
    let scan_error = |e: std::io::Error| {
        RpcError::new(format!("scanning build context {}: {e}", context.display()))
    };
    // What the keys of steps that mount a secret or an ssh agent cover
    // (secret_ids.rs).
    let secrets = {
        let (data, given) = (engine.store.root().to_path_buf(), request.secrets.clone());
        let ssh_user = request
            .ssh
            .as_ref()
            .map(|_| crate::owner::build_caller(log.caller, request).uid);
        Arc::new(blocking(move || crate::secret_ids::secret_ids(&data, &given, ssh_user)).await?)
    };
    let root = engine.watcher.ensure(context).await.map_err(scan_error)?;
    let project = engine.projects.register(request, &root);
    // A new project may push the least recently used one over max-projects.
    {
        let e = engine.clone();
        blocking(move || Ok(e.tidy_projects())).await?;
    }
    // Registries: FROM images pulled and remote caches read once per build.
    let note = registry_note(log);
    let (df_path, df_name) = (dockerfile_path(request), dockerfile_display(request));
    let settings = &engine.run_settings().registries;
    let remote = tokio::select! {
        r = BuildRegistry::prepare(&engine.store, settings, request, crate::owner::build_caller(log.caller, request), &df_path, &df_name, &note) => Arc::new(r?),
        _ = log.cancelled() => return Err(RpcError::cancelled()),
    };
    let mut attempt = 1;
    let (result, generation) = loop {
        let (tree, generation) = engine.watcher.sync(&root).await.map_err(scan_error)?;
        // A remote cache export needs the plan, so it skips the fast path.
        let fast = match remote.needs_plan() {
            true => None,
            false => {
                let (e, r, s, p, l) = (
                    engine.clone(),
                    request.clone(),
                    secrets.clone(),
                    project.clone(),
                    log.clone(),
                );
                blocking(move || fast_path(&e, id, &r, &s, &p, generation, &l)).await?
            }
        };
        if let Some(done) = fast {
            remote
                .finish(&engine.store, None, &done.manifest_digest, &note)
                .await?;
            return Ok(done);
        }
        engine.projects.build_started(&project);
        log.clear_failed_step();
        let result = tokio::select! {
            r = build_planned(engine, id, request, &secrets, &project, tree, log, &remote) => r,
            // Dropping the build's future stops every step; RUN sandboxes clean up.
            _ = log.cancelled() => Err(RpcError::cancelled()),
        };
        match result {
            // Files changed under the build: never store a mix; start over on a
            // fresh snapshot (steps already done come from the cache).
            Err(e) if e.is(ErrorKind::ContextChanged) && attempt < MAX_ATTEMPTS => {
                log.push(BuildEvent::Log {
                    step: None,
                    line: format!(
                        "the build context changed during the build; starting over ({})",
                        e.message
                    ),
                });
                attempt += 1;
            }
            Err(e) if e.is(ErrorKind::ContextChanged) => {
                let hint = "files in the context kept changing during the build; build again once they settle";
                break (Err(e.hint(hint)), generation);
            }
            other => break (other, generation),
        }
    };
    let result = match result {
        Ok((done, plan)) => tokio::select! {
            r = remote.finish(&engine.store, Some(&plan), &done.manifest_digest, &note) => {
                r.map(|()| (done, plan))
            }
            _ = log.cancelled() => Err(RpcError::cancelled()),
        },
        Err(e) => Err(e),
    };
    let mut summary = BuildSummary {
        ok: result.is_ok(),
        finished_at: memobuild_store::now_secs(),
        millis: started.elapsed().as_millis() as u64,
        manifest_digest: None,
        config_digest: None,
        error: result.as_ref().err().map(|e| e.message.clone()),
        no_cache: request.no_cache,
        epoch: request.source_date_epoch,
        steps: Vec::new(),
        images: Default::default(),
        options: options_digest(request, &secrets),
        failure: None,
        secrets: (*secrets).clone(),
    };
    match &result {
        Ok((done, plan)) => {
            summary.manifest_digest = Some(done.manifest_digest.clone());
            summary.config_digest = Some(done.config_digest.clone());
            summary.steps = BuildSummary::from_plan(plan, &cached_steps(plan.steps.len(), log));
            summary.images = plan.images.clone();
        }
        Err(e) => {
            let planned = engine.projects.planned_steps(&project);
            let failure = crate::failure::failure_info(
                e,
                &ProjectKey::of(request).dockerfile,
                log.failed_step().as_ref(),
                planned.as_deref(),
            );
            if let Some(planned) = planned {
                let n = planned.len();
                summary.steps = crate::failure::failed_build_steps(
                    planned,
                    &cached_steps(n, log),
                    &finished_steps(n, log),
                    &failure,
                );
            }
            log.set_failure(failure.clone());
            summary.failure = Some(failure);
        }
    }
    // A cancelled eager build leaves no trace: the last build stays the
    // baseline, and the project gets another eager build when it may.
    if log.eager && result.as_ref().is_err_and(|e| e.is(ErrorKind::Cancelled)) {
        engine.projects.build_abandoned(&project);
        engine.maybe_eager(&project);
        return result.map(|(done, _)| done);
    }
    {
        // Persisting the project record is a redb commit.
        let (e, p) = (engine.clone(), project.clone());
        let finished = blocking(move || {
            e.projects.build_finished(&e.store, &p, summary, generation);
            Ok(())
        });
        finished.await?;
    }
    // Saves that landed after the build's steps read their files: compare
    // the tree now with the new baseline before the client hears the result.
    if let Ok((_, now)) = engine.watcher.sync(&root).await {
        if now != generation {
            if let Some(request) = engine.projects.request(&project) {
                recompute_dirty(engine, &project, request, &root).await;
                engine.maybe_eager(&project);
            }
        }
    }
    result.map(|(done, _)| done)
}

/// Steps of a build that came from the cache or ran to the end.
fn finished_steps(n: usize, log: &BuildLog) -> Vec<bool> {
    let mut finished = vec![false; n];
    for e in log.events.lock().iter() {
        if let BuildEvent::StepCached { step } | BuildEvent::StepDone { step, .. } = e {
            if let Some(f) = finished.get_mut(*step) {
                *f = true;
            }
        }
    }
    finished
}

fn cached_steps(n: usize, log: &BuildLog) -> Vec<bool> {
    let mut cached = vec![false; n];
    for e in log.events.lock().iter() {
        if let BuildEvent::StepCached { step } = e {
            if let Some(c) = cached.get_mut(*step) {
                *c = true;
            }
        }
    }
    cached
}

/// A project whose tree has not changed since its last good build gets that
/// build's image at once: no plan, no walk, no hashing.
fn fast_path(
    engine: &Engine,
    id: BuildId,
    request: &BuildRequest,
    secrets: &BTreeMap<String, String>,
    project: &str,
    generation: u64,
    log: &BuildLog,
) -> Result<Option<Done>, RpcError> {
    // A build with `--allow` always plans: its entitlements are checked
    // against the daemon's settings of now (`run::check_entitlements`).
    if request.no_cache || !request.no_cache_filter.is_empty() || !request.entitlements.is_empty() {
        return Ok(None);
    }
    let Some(last) = engine.projects.clean_result(project, generation) else {
        return Ok(None);
    };
    // Labels, RUN options, a Dockerfile from stdin or secrets other than the
    // last build's.
    if last.options != options_digest(request, secrets) {
        return Ok(None);
    }
    let (Some(manifest), Some(config)) = (last.manifest_digest.clone(), last.config_digest.clone())
    else {
        return Ok(None);
    };
    if last.epoch != request.source_date_epoch || !image_intact(engine, id, &manifest) {
        return Ok(None);
    }
    // A build that downloaded a URL or a git repository asks its server
    // again (ADD https://..., ADD REPO#REF): the planner records each as a
    // key input named by the URL (a git one with the value `git:COMMIT`).
    if last.steps.iter().any(|s| {
        s.inputs.files.iter().any(|(k, v)| {
            k.starts_with("http://") || k.starts_with("https://") || v.starts_with("git:")
        })
    }) {
        return Ok(None);
    }
    // A base image re-tagged or removed since makes the last result stale.
    for (name, digest) in &last.images {
        let now = engine.store.image(name).map_err(internal)?;
        if now.as_ref().map(|r| &r.manifest_digest) != Some(digest) {
            return Ok(None);
        }
    }
    // The last build's steps are in use again (LRU for garbage collection).
    for step in &last.steps {
        engine.store.note_used(&step.key);
    }
    log.push(BuildEvent::Planned {
        build: id,
        steps: last
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepInfo {
                index: i,
                stage: s.stage.clone(),
                instruction: s.instruction.clone(),
                location: format!("{}:{}", dockerfile_display(request), s.line),
                cache_key: s.key.clone(),
                from: s.from.clone(),
            })
            .collect(),
        project: project.to_string(),
        // Nothing changed since the last plan: its lint still holds.
        warnings: engine.projects.lint(project),
    });
    for step in 0..last.steps.len() {
        log.push(BuildEvent::StepCached { step });
    }
    engine
        .metrics
        .cache("memory", true, last.steps.len() as u64);
    let tags = tag_digests(engine, request, log, &manifest, &config, None)?;
    Ok(Some(Done {
        manifest_digest: manifest,
        config_digest: config,
        tags,
    }))
}

/// The last build's image blobs all exist and are unchanged since verified
/// (stat check; see `BlobStore::verify_cached`); else the build runs normally,
/// which drops and rebuilds a corrupt layer.
fn image_intact(engine: &Engine, build: BuildId, manifest: &str) -> bool {
    // Pinned before the check, so GC cannot remove them between it and the tag.
    engine.store.pin_digests(build, [&manifest.to_string()]);
    let Ok(image) = memobuild_oci::image::read_image(&engine.store, manifest) else {
        return false;
    };
    let digests = [&image.config_digest]
        .into_iter()
        .chain(image.layers.iter().map(|l| &l.digest));
    engine.store.pin_digests(build, digests);
    // Checked again now that they are pinned.
    engine.store.blobs.contains(manifest)
        && engine.store.blobs.contains(&image.config_digest)
        && image
            .layers
            .iter()
            .all(|l| engine.store.blobs.verify_cached(&l.digest).is_ok())
}

#[allow(clippy::too_many_arguments)]
async fn build_planned(
    engine: &Arc<Engine>,
    id: BuildId,
    request: &BuildRequest,
    secrets: &Arc<BTreeMap<String, String>>,
    project: &str,
    tree: Tree,
    log: &Arc<BuildLog>,
    remote: &Arc<BuildRegistry>,
) -> Result<(Done, Arc<Plan>), RpcError> {
    let plan = {
        let engine = engine.clone();
        let (request, secrets) = (request.clone(), secrets.clone());
        let caller = crate::owner::build_caller(log.caller, &request);
        // A client that leaves cancels the build: planning stops too.
        let log = log.clone();
        blocking(move || {
            let cancelled = Some(&log.cancelled);
            let inputs = PlanInputs {
                request: &request,
                secrets: &secrets,
                tree: &tree,
                focus: None,
                caller,
                cancelled,
            };
            make_plan(&engine, &inputs, !log.eager)
        })
        .await?
    };
    for name in &request.no_cache_filter {
        if !plan.stages.iter().any(|s| &s.label == name) {
            let names: Vec<&str> = plan.stages.iter().map(|s| s.label.as_str()).collect();
            return Err(RpcError::with_hint(
                format!("--no-cache-filter {name}: the build has no stage {name:?}"),
                format!("stages this build runs: {}", names.join(", ")),
            ));
        }
    }
    super::run::check_entitlements(&engine.run_settings(), request, &plan)?;
    remote
        .import_steps(&engine.store, &plan, request.no_cache, &registry_note(log))
        .await;

    log.push(BuildEvent::Planned {
        build: id,
        steps: plan
            .steps
            .iter()
            .map(|s| StepInfo {
                index: s.index,
                stage: plan.stages[s.stage].label.clone(),
                instruction: s.display.clone(),
                location: format!("{}:{}", dockerfile_display(request), s.loc.line),
                cache_key: s.key.clone(),
                from: crate::project::stage_from(&plan, s.stage),
            })
            .collect(),
        project: project.to_string(),
        warnings: crate::project::lint_warnings(&plan.lint),
    });
    engine.projects.build_planned(project, &plan);
    // `# check=error=true` (or BUILDKIT_DOCKERFILE_CHECK): BuildKit fails the
    // build before any step runs.
    if let Some(violation) = &plan.lint_error {
        return Err(crate::project::lint_violation(violation));
    }
    for w in &plan.warnings {
        log.push(BuildEvent::Log {
            step: None,
            line: format!("warning: {w}"),
        });
    }
    let plan = Arc::new(plan);
    let (results, resolved) =
        run_stages(engine, id, &plan, request, log, project, remote.clone()).await?;
    let plan = if resolved.is_empty() {
        plan
    } else {
        Arc::new(resolve_plan(&plan, &resolved))
    };
    let target = &plan.stages[plan.target];
    let result = results.get(&plan.target).cloned().unwrap_or_default();
    let (image, tags) = {
        let engine = engine.clone();
        let mut config = target.config.clone();
        if !request.labels.is_empty() {
            let labels = config.config.labels.get_or_insert_with(Default::default);
            labels.extend(request.labels.clone());
        }
        let epoch = plan.epoch;
        let plan_ref = plan.clone();
        let annotations = request.annotations.clone();
        let inline = request.inline_cache.then(|| plan.clone());
        let (request, log) = (request.clone(), log.clone());
        blocking(move || {
            config.rootfs.diff_ids = result.layers.iter().map(|l| l.diff_id.clone()).collect();
            config.history = result.history.clone();
            // BuildKit's exporter: untimed entries filled in, `created` the
            // last entry's time.
            config.created = memobuild_oci::config::fill_history_times(&mut config.history);
            let rewritten = epoch.map(|e| (base_image_layers(&plan_ref, &result.layers), e));
            let cache = inline
                .map(|plan| crate::inline_cache::record(&engine.store, &plan, &result.layers));
            let image = memobuild_oci::image::write_image_with(
                &engine.store,
                &config,
                &result.layers,
                &memobuild_oci::image::ImageExtras {
                    annotations: &annotations,
                    inline_cache: cache.as_ref(),
                    rewritten,
                },
            )
            .map_err(internal)?;
            let tags = tag_image(&engine, &request, &log, &image)?;
            Ok((image, tags))
        })
        .await?
    };
    Ok((
        Done {
            manifest_digest: image.manifest_digest,
            config_digest: image.config_digest,
            tags,
        },
        plan,
    ))
}

/// Progress lines of the registry work, to the client and the daemon's log.
fn registry_note(log: &BuildLog) -> impl Fn(String) + Send + Sync + '_ {
    move |line| {
        tracing::info!("{line}");
        log.push(BuildEvent::Log { step: None, line });
    }
}

fn dockerfile_display(request: &BuildRequest) -> String {
    if request.dockerfile.is_empty() {
        let path = crate::project::default_dockerfile(Path::new(&request.context));
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "Dockerfile".into())
    } else {
        memobuild_proto::paths::normalize(Path::new(&request.dockerfile))
            .display()
            .to_string()
    }
}

fn dockerfile_path(request: &BuildRequest) -> PathBuf {
    let context = Path::new(&request.context);
    match request.dockerfile.as_str() {
        "" => crate::project::default_dockerfile(context),
        p if Path::new(p).is_absolute() => PathBuf::from(p),
        p => context.join(p),
    }
}

/// Largest `.dockerignore` the daemon reads.
const MAX_IGNORE_BYTES: u64 = 1 << 20;

/// `<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's `.dockerignore`.
/// Errors never quote the file: it may be a link to a file the user cannot read.
fn read_ignore(request: &BuildRequest, dockerfile: &Path) -> Result<DockerIgnore, RpcError> {
    let specific = PathBuf::from(format!("{}.dockerignore", dockerfile.display()));
    let general = Path::new(&request.context).join(".dockerignore");
    for path in [specific, general] {
        match memobuild_rootpath::safefs::read_text_capped(&path, MAX_IGNORE_BYTES) {
            Ok(text) => {
                return DockerIgnore::parse_cached(&text).map_err(|e| {
                    RpcError::with_hint(
                        format!("{}: line {}: {}", path.display(), e.line, e.redacted_message()),
                        "fix or remove the pattern on that line; .dockerignore uses Go filepath.Match syntax plus **",
                    )
                })
            }
            Err(e) if e.is_not_found() => continue,
            Err(e) => {
                return Err(RpcError::with_hint(
                    format!("cannot read {e}"),
                    "the ignore file must be a regular text file of at most 1 MiB",
                ))
            }
        }
    }
    Ok(DockerIgnore::empty())
}

/// What a plan is made from, besides the engine's state.
pub(super) struct PlanInputs<'a> {
    pub request: &'a BuildRequest,
    /// The secrets' MACs (see [`graph::PlanInput::secrets`]).
    pub secrets: &'a BTreeMap<String, String>,
    /// The context as the build reads it.
    pub tree: &'a Tree,
    /// Only to tell which steps are dirty (see [`graph::PlanInput::focus`]).
    pub focus: Option<&'a std::collections::BTreeSet<String>>,
    pub caller: crate::Caller,
    /// The build's flag, so a plan nobody waits for stops (see
    /// [`graph::PlanInput::cancelled`]).
    pub cancelled: Option<&'a AtomicBool>,
}

/// Plans `inputs.request` against `inputs.tree`. `with_agents`: the plan of
/// a client's build, which may fetch with the ssh agents it forwards (`ADD
/// git@...`); else no agent is reached (re-plans, eager builds,
/// `--call=check`; see [`super::urls::GitSsh`]).
pub(super) fn make_plan(
    engine: &Engine,
    inputs: &PlanInputs<'_>,
    with_agents: bool,
) -> Result<Plan, RpcError> {
    let request = inputs.request;
    // Every read of planning (Dockerfile, ignore file, context files hashed)
    // with the requesting user's rights; and everything the build may use
    // must be readable by them (see memobuild_context::access).
    let ssh = if with_agents {
        super::urls::GitSsh::Request {
            sessions: &engine.ssh,
            request,
        }
    } else {
        super::urls::GitSsh::Offline {
            owner: crate::owner::owner_of(request).unwrap_or(0),
        }
    };
    reading_as(reader_of(request), || plan_as_reader(engine, inputs, ssh))
}

/// BuildKit's lint rules on `request`'s Dockerfile (`build --call=check`),
/// read with the requesting user's rights; nothing is planned.
pub(super) fn lint_request(
    request: &BuildRequest,
) -> Result<memobuild_dockerfile::lint::Report, RpcError> {
    reading_as(reader_of(request), || {
        let df_path = dockerfile_path(request);
        let text = dockerfile_text(request, &df_path)?;
        let df =
            dockerfile::parse(&text, &dockerfile_display(request)).map_err(dockerfile_error)?;
        let ignore = read_ignore(request, &df_path)?;
        Ok(memobuild_plan::lint::lint(
            &text,
            &df,
            &request.target,
            &request.build_args,
            &ignore,
            &[],
        ))
    })
}

impl Engine {
    /// `build --call=check`: BuildKit's lint rules on `request`'s Dockerfile.
    /// When it can be planned against the context as it is now (its base
    /// images in the store), the rules that need a plan (`UndefinedVar`,
    /// `InvalidBaseImagePlatform`) run too; else only the others
    /// ([`lint_request`]). Nothing is built, registered or downloaded, and an
    /// unwatched context is scanned once, not watched.
    pub(crate) async fn lint_report(
        self: &Arc<Self>,
        request: BuildRequest,
    ) -> Result<memobuild_dockerfile::lint::Report, RpcError> {
        let context = PathBuf::from(&request.context);
        let tree = match self.watcher.sync(&context).await {
            Ok((tree, _)) => Some(tree),
            Err(_) => blocking(move || Ok(Tree::scan(&context).ok())).await?,
        };
        let engine = self.clone();
        blocking(move || {
            let caller = crate::owner::build_caller(None, &request);
            // A focus plan keys steps without downloading (exec/urls.rs).
            let focus = std::collections::BTreeSet::new();
            let planned = tree.and_then(|tree| {
                let inputs = PlanInputs {
                    request: &request,
                    secrets: &BTreeMap::new(),
                    tree: &tree,
                    focus: Some(&focus),
                    caller,
                    cancelled: None,
                };
                make_plan(&engine, &inputs, false).ok()
            });
            match planned {
                Some(plan) => Ok(memobuild_dockerfile::lint::Report {
                    warnings: plan.lint,
                    error: plan.lint_error,
                }),
                None => lint_request(&request),
            }
        })
        .await
    }
}

/// The lint warnings of `request`'s Dockerfile when it cannot be planned
/// (a plan carries its own, [`Plan::lint`]): empty if it cannot be read or
/// parsed.
pub(super) fn lint_unplanned(request: &BuildRequest) -> Vec<memobuild_dockerfile::lint::Warning> {
    lint_request(request)
        .map(|r| r.warnings)
        .unwrap_or_default()
}

/// The Dockerfile's text: the one sent with the request (stdin), else the
/// file at `df_path` (read as the caller is reading; capped, regular files only).
fn dockerfile_text(request: &BuildRequest, df_path: &Path) -> Result<String, RpcError> {
    match &request.dockerfile_text {
        Some(text) => Ok(text.clone()),
        None => dockerfile::read_file(df_path).map_err(|e| {
            let kind = match e.is_not_found() {
                true => ErrorKind::NotFound,
                false => ErrorKind::InvalidInput,
            };
            RpcError::of(kind, format!("cannot read the Dockerfile: {e}")).hint(
                "pass the path of a regular file of at most 16 MiB with -f, relative to the context or absolute",
            )
        }),
    }
}

fn plan_as_reader(
    engine: &Engine,
    inputs: &PlanInputs<'_>,
    ssh: super::urls::GitSsh<'_>,
) -> Result<Plan, RpcError> {
    let PlanInputs {
        request,
        secrets,
        tree,
        focus,
        caller,
        cancelled,
    } = *inputs;
    let context = Path::new(&request.context);
    let df_path = dockerfile_path(request);
    let text = dockerfile_text(request, &df_path)?;
    let run_options = run_options(request);
    let df = dockerfile::parse(&text, &dockerfile_display(request)).map_err(dockerfile_error)?;
    crate::contexts::check_stage_names(&df, request)?;
    let aliases = crate::contexts::image_aliases(request)?;
    // Only images the caller may read (image_access.rs).
    let readable = crate::image_access::Readable::new(&engine.store, caller);
    let images = crate::contexts::Aliased {
        inner: &readable,
        aliases: &aliases,
    };
    let ignore = read_ignore(request, &df_path)?;
    let index = Arc::new(ContextIndex::view(tree, context, ignore));
    memobuild_context::access::check_readable(&index).map_err(access_error)?;
    let mut plan = graph::plan(&graph::PlanInput {
        dockerfile: &df,
        target: &request.target,
        build_args: &request.build_args,
        context: index.clone(),
        hashes: &engine.hashes,
        merkle: &engine.merkle,
        focus,
        images: &images,
        epoch: request.source_date_epoch,
        run_options: &run_options,
        stage_contents: &StoreContents(&engine.store),
        urls: &super::urls::Downloads::new(
            engine.store.root().join("downloads"),
            focus.is_some(),
            ssh,
        ),
        secrets,
        cancelled,
    })
    .map_err(|e| readable.explain(dockerfile_error(e)))?;
    // After planning: the lint takes what planning found.
    let lint = memobuild_plan::lint::lint(
        &text,
        &df,
        &request.target,
        &request.build_args,
        index.ignore(),
        &plan.lint_found,
    );
    plan.lint = lint.warnings;
    plan.lint_error = lint.error;
    Ok(plan)
}

/// The build-wide RUN options as one canonical text, a key input of every RUN
/// (docs/CACHE.md); empty when none is set.
pub(super) fn run_options(request: &BuildRequest) -> String {
    let mut parts = Vec::new();
    if !matches!(request.network.as_str(), "" | "default") {
        parts.push(format!("network={}", request.network));
    }
    for (host, ip) in &request.add_hosts {
        parts.push(format!("add-host={host}:{ip}"));
    }
    if let Some(shm) = request.shm_bytes {
        parts.push(format!("shm-size={shm}"));
    }
    for (name, (soft, hard)) in &request.ulimits {
        parts.push(format!("ulimit={name}={soft}:{hard}"));
    }
    parts.join("\n")
}

/// What besides the project's key makes an image differ: labels, RUN options,
/// a Dockerfile sent as text, the secrets (their MACs). The fast path reuses
/// a result only when equal.
fn options_digest(request: &BuildRequest, secrets: &BTreeMap<String, String>) -> String {
    let mut k = memobuild_plan::key::KeyHasher::new("options");
    for (name, value) in &request.labels {
        k.str(name).str(value);
    }
    // Only when set: the digest of a build without annotations stays as it was.
    for (name, value) in &request.annotations {
        k.str("annotation").str(name).str(value);
    }
    for (name, value) in &request.build_contexts {
        k.str("build-context").str(name).str(value);
    }
    // Only when set: an inline cache makes another config.
    if request.inline_cache {
        k.str("inline-cache");
    }
    // A result built with entitlements is no fast answer to a build without.
    for entitlement in &request.entitlements {
        k.str("allow").str(entitlement);
    }
    k.str(&run_options(request));
    k.str(request.dockerfile_text.as_deref().unwrap_or(""));
    // Only when given: the digest of a build without secrets stays as it was.
    for (id, mac) in secrets {
        k.str("secret").str(id).str(mac);
    }
    k.finish()
}

/// Keeps every project's dirty set current: re-plans the projects a change
/// touches against the (already updated) tree and compares the step keys.
pub(super) async fn track_dirty(
    engine: std::sync::Weak<Engine>,
    mut changes: tokio::sync::broadcast::Receiver<memobuild_context::watch::Change>,
) {
    loop {
        let change = match changes.recv().await {
            Ok(c) => c,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "dirty tracking fell behind; the next change re-plans"
                );
                continue;
            }
            Err(_) => return,
        };
        let Some(engine) = engine.upgrade() else {
            return;
        };
        for (project, request) in engine.projects.paths_changed(&change.root, &change.paths) {
            engine.eager_cancel(&project);
            recompute_dirty(&engine, &project, request, &change.root).await;
            engine.maybe_eager(&project);
        }
    }
}

/// Re-plans one project against the current tree and records its dirty steps.
async fn recompute_dirty(engine: &Arc<Engine>, project: &str, request: BuildRequest, root: &Path) {
    let Ok((tree, generation)) = engine.watcher.tree(root) else {
        return;
    };
    let (e, project) = (engine.clone(), project.to_string());
    let focus = engine.projects.focus(&project);
    // Secret steps keyed on the last build's secrets: clean while unchanged.
    let secrets = engine.projects.last_secrets(&project);
    // Planning, comparing and dropping the plan all stay off the async workers.
    let done = tokio::task::spawn_blocking(move || {
        let caller = crate::owner::build_caller(None, &request);
        let inputs = PlanInputs {
            request: &request,
            secrets: &secrets,
            tree: &tree,
            focus: focus.as_ref(),
            caller,
            cancelled: None,
        };
        match make_plan(&e, &inputs, false) {
            Ok(plan) => e.projects.set_dirty(&project, generation, Ok(&plan)),
            Err(err) => {
                e.projects.set_lint(&project, &lint_unplanned(&request));
                e.projects.set_dirty(&project, generation, Err(&err))
            }
        }
    })
    .await;
    if let Err(err) = done {
        tracing::warn!(error = %err, "dirty re-plan task failed");
    }
}

/// After a restart: watch the contexts of known projects again, and compare
/// them with their last builds (files may have changed while no daemon watched).
pub(super) async fn resume_watching(engine: Arc<Engine>) {
    for context in engine.projects.contexts() {
        if !context.is_dir() {
            continue;
        }
        match engine.watcher.ensure(&context).await {
            Ok(root) => {
                for (project, request) in engine.projects.set_root(&context, &root) {
                    recompute_dirty(&engine, &project, request, &root).await;
                }
            }
            Err(e) => {
                tracing::warn!(context = %context.display(), error = %e, "cannot watch project context")
            }
        }
    }
}

/// Runs every stage once its dependencies are done, independent ones at once.
async fn run_stages(
    engine: &Arc<Engine>,
    build: BuildId,
    plan: &Arc<Plan>,
    request: &BuildRequest,
    log: &Arc<BuildLog>,
    project: &str,
    remote: Arc<BuildRegistry>,
) -> Result<ResolvedStages, RpcError> {
    let run = Arc::new(StageRun {
        remote,
        engine: engine.clone(),
        build,
        plan: plan.clone(),
        log: log.clone(),
        project: project.to_string(),
        no_cache: request.no_cache,
        epoch: plan.epoch,
        request: Arc::new(request.clone()),
        resolved: parking_lot::Mutex::new(BTreeMap::new()),
    });
    let mut done: BTreeMap<usize, StageResult> = BTreeMap::new();
    let mut started = vec![false; plan.stages.len()];
    let mut running = JoinSet::new();
    loop {
        for (i, stage) in plan.stages.iter().enumerate() {
            if started[i] || !stage.deps.iter().all(|d| done.contains_key(d)) {
                continue;
            }
            started[i] = true;
            let inputs: BTreeMap<usize, StageResult> =
                stage.deps.iter().map(|d| (*d, done[d].clone())).collect();
            let run = run.clone();
            // The stage's task keeps the build's span: its log lines carry the build id.
            running.spawn(tracing::Instrument::in_current_span(async move {
                (i, run_stage(&run, i, &inputs).await)
            }));
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (i, result) =
            joined.map_err(|e| RpcError::new(format!("internal error: stage task failed: {e}")))?;
        match result {
            Ok(r) => {
                done.insert(i, r);
            }
            Err(e) => {
                running.abort_all();
                return Err(e);
            }
        }
    }
    let resolved = std::mem::take(&mut *run.resolved.lock());
    Ok((done, resolved))
}

/// Every stage's result, and the keys of the pending steps as resolved.
type ResolvedStages = (
    BTreeMap<usize, StageResult>,
    BTreeMap<usize, (String, Vec<String>)>,
);

/// What every stage of one build shares.
struct StageRun {
    engine: Arc<Engine>,
    /// The build's registry caches: a pending step's key, once resolved, is
    /// looked up there too.
    remote: Arc<BuildRegistry>,
    build: BuildId,
    plan: Arc<Plan>,
    log: Arc<BuildLog>,
    project: String,
    no_cache: bool,
    epoch: Option<i64>,
    request: Arc<BuildRequest>,
    /// Keys of the pending steps as resolved, by step index (see `Step::pending`).
    resolved: parking_lot::Mutex<BTreeMap<usize, (String, Vec<String>)>>,
}

/// `plan` with the keys of its pending steps replaced by the ones the build
/// resolved: what the build summary (status, explain) and cache exports use.
fn resolve_plan(plan: &Plan, resolved: &BTreeMap<usize, (String, Vec<String>)>) -> Plan {
    let mut plan = plan.clone();
    let mut parent: BTreeMap<usize, String> = BTreeMap::new();
    for (i, (key, digests)) in resolved {
        let step = &mut plan.steps[*i];
        step.key = key.clone();
        step.pending = false;
        for (c, digest) in step.contents.iter().zip(digests) {
            let label = plan.stages[c.stage].label.clone();
            step.inputs
                .files
                .insert(format!("stage:{label}"), digest.clone());
        }
        parent.insert(*i + 1, key.clone());
    }
    // A step after a resolved one in its stage names the resolved key as parent.
    for stage in &plan.stages {
        for &i in stage.steps.iter().skip(1) {
            if let Some(key) = parent.get(&i) {
                plan.steps[i].inputs.parent_key = key.clone();
            }
        }
    }
    plan
}

async fn run_stage(
    run: &StageRun,
    stage_index: usize,
    inputs: &BTreeMap<usize, StageResult>,
) -> Result<StageResult, RpcError> {
    let StageRun {
        engine,
        plan,
        log,
        project,
        no_cache,
        epoch,
        ..
    } = run;
    let (no_cache, epoch) = (*no_cache, *epoch);
    let stage = &plan.stages[stage_index];
    let no_cache = no_cache || run.request.no_cache_filter.contains(&stage.label);
    let mut state = match &stage.base {
        Base::Scratch => StageResult {
            key: stage.base_key.clone(),
            ..StageResult::default()
        },
        Base::Stage(_) => plan
            .base_stage(stage_index)
            .and_then(|position| inputs.get(&position))
            .cloned()
            .unwrap_or_default(),
        Base::Image(image) => StageResult {
            layers: base_layers(engine, run.build, &image.layers).await?,
            history: image.config.history.clone(),
            key: stage.base_key.clone(),
        },
    };
    // Layers of this stage whose blobs are still being written.
    let mut pending: Vec<Unsettled> = Vec::new();
    for &step_index in &stage.steps {
        let step = &plan.steps[step_index];
        if !pending.is_empty() {
            if !stands_on_pending(engine, step, &state, &pending).await {
                settle(&mut state, &mut pending).await?;
            } else if matches!(step.op, Op::Run(_)) {
                let behind = pending.iter().filter(|p| !p.record.is_finished()).count();
                engine.metrics.layers_in_background(behind as u64);
            }
        }
        let step_key = if step.pending {
            let key = resolve_key(engine, step, &state.key, inputs).await?;
            run.resolved.lock().insert(step_index, key.clone());
            key.0
        } else {
            step.key.clone()
        };
        state.key = step_key.clone();
        let span = tracing::info_span!("step", build = log.id, step = step_index, instruction = %step.display);
        log.push(BuildEvent::StepStarted { step: step_index });
        engine
            .projects
            .step_state(project, step_index, StepState::Building);
        let started = Instant::now();
        let mut cached = if no_cache {
            None
        } else {
            lookup(engine, run.build, step_index, &step_key, log).await?
        };
        // Planning imported the remote cache's steps by their planned keys;
        // a pending step's key is only known now.
        if cached.is_none()
            && step.pending
            && !no_cache
            && run
                .remote
                .import_key(&engine.store, &step_key, &registry_note(log))
                .await
        {
            cached = lookup(engine, run.build, step_index, &step_key, log).await?;
        }
        if !no_cache {
            // The fast path (memory tier) did not answer this build. A step
            // imported from a remote cache was a local miss the remote tier
            // answered (the import put it in the local store).
            let remote = run.remote.imported(&step_key);
            engine.metrics.cache("memory", false, 1);
            engine
                .metrics
                .cache("local", cached.is_some() && !remote, 1);
            if run.remote.has_caches() && (cached.is_none() || remote) {
                engine.metrics.cache("remote", remote, 1);
            }
        }
        let record = match cached {
            Some(record) => {
                engine.metrics.step(&step.display, true, started.elapsed());
                tracing::info!(parent: &span, "step cached");
                log.push(BuildEvent::StepCached { step: step_index });
                engine
                    .projects
                    .step_state(project, step_index, StepState::Cached);
                record
            }
            None => {
                let executed = match &step.op {
                    Op::Run(op) => {
                        let stage_layers =
                            inputs.iter().map(|(k, v)| (*k, v.layers.clone())).collect();
                        let cx = super::run::RunContext {
                            engine,
                            request: &run.request,
                            log,
                            step: step_index,
                            display: &step.display,
                            parent_layers: &state.layers,
                            stage_layers: &stage_layers,
                            context_root: std::path::Path::new(&run.request.context),
                            epoch,
                            snapshot_for_later_run: later_run(plan, step),
                            no_cache,
                        };
                        let run =
                            tracing::Instrument::instrument(super::run::run(&cx, op), span.clone());
                        let record = run.await.map_err(|e| {
                            note_failed(log, step_index, &e);
                            RpcError {
                                message: format!(
                                    "{}:{}:{}: {}",
                                    plan.file, step.loc.line, step.loc.column, e.message
                                ),
                                ..e
                            }
                            .at(step_location(plan, step))
                        })?;
                        Executed::Done(record)
                    }
                    _ => {
                        let reader = reader_of(&run.request);
                        let exec = execute(engine, plan, step, &state, inputs, epoch, reader);
                        tracing::Instrument::instrument(exec, span.clone())
                            .await
                            .inspect_err(|e| note_failed(log, step_index, e))?
                    }
                };
                // Shared by key; its maker's (or an admin's) prune drops it.
                let owner = crate::owner::owner_of(&run.request);
                let record = match executed {
                    Executed::Done(record) => {
                        let stored = StepRecord {
                            owner,
                            ..record.clone()
                        };
                        record_step(engine, run.build, &step_key, stored).await?;
                        record
                    }
                    Executed::Pending { created_at, layer } => {
                        let provisional = layer.provisional();
                        pending.push(Unsettled {
                            position: state.layers.len(),
                            user_files: layer.user_files,
                            record: record_when_written(
                                engine, run.build, &step_key, created_at, owner, layer,
                            ),
                        });
                        StepRecord {
                            layer: Some(provisional),
                            created_at,
                            owner: None,
                            imported: false,
                        }
                    }
                };
                engine.metrics.step(&step.display, false, started.elapsed());
                let millis = started.elapsed().as_millis() as u64;
                tracing::info!(parent: &span, millis, "step done");
                log.push(BuildEvent::StepDone {
                    step: step_index,
                    millis,
                });
                engine
                    .projects
                    .step_state(project, step_index, StepState::Done);
                record
            }
        };
        if let Some(created_by) = &step.history {
            // BuildKit: SOURCE_DATE_EPOCH, else a layer's time is when its
            // step result was first built (kept with the cache entry, so a
            // cached rebuild writes the same config); an entry without a
            // layer gets its time when the image is assembled
            // (`fill_history_times`).
            let created = match (epoch, &record.layer) {
                (Some(epoch), _) => Some(memobuild_oci::rfc3339(epoch)),
                (None, Some(_)) => Some(memobuild_oci::rfc3339(record.created_at)),
                (None, None) => None,
            };
            state.history.push(History {
                created,
                created_by: Some(created_by.clone()),
                comment: Some(HISTORY_COMMENT.into()),
                empty_layer: record.layer.is_none(),
            });
        }
        if let Some(layer) = record.layer {
            state.layers.push(layer);
        }
    }
    settle(&mut state, &mut pending).await?;
    Ok(state)
}

/// A layer of the stage whose blob is still being written (see
/// [`PendingLayer`]).
struct Unsettled {
    /// Where its provisional record is in the stage's layers.
    position: usize,
    user_files: bool,
    /// Its real record, once the blob is written and the step recorded.
    record: tokio::task::JoinHandle<Result<LayerRecord, RpcError>>,
}

/// Waits for `layer`'s blob in the background and records the step then
/// (even if the build stops meanwhile: the result is complete).
fn record_when_written(
    engine: &Arc<Engine>,
    build: BuildId,
    key: &str,
    created_at: i64,
    owner: Option<u32>,
    layer: PendingLayer,
) -> tokio::task::JoinHandle<Result<LayerRecord, RpcError>> {
    let (engine, key) = (engine.clone(), key.to_string());
    tokio::spawn(async move {
        let written = layer.write.await.map_err(internal)??;
        let record = StepRecord {
            layer: Some(written.clone()),
            created_at,
            owner,
            imported: false,
        };
        record_step(&engine, build, &key, record).await?;
        Ok(written)
    })
}

/// Stores `record` as the cache entry of step `key`, made by `build`.
async fn record_step(
    engine: &Arc<Engine>,
    build: BuildId,
    key: &str,
    record: StepRecord,
) -> Result<(), RpcError> {
    let (engine, key) = (engine.clone(), key.to_string());
    blocking(move || {
        engine
            .store
            .record_step(build, &key, &record)
            .map_err(internal)
    })
    .await
}

/// Whether `step` can run while layers of its stage are still being written:
/// metadata can; a RUN can if the snapshot it stands on is there and it needs
/// no file of theirs (the users it runs as); anything else reads layers.
async fn stands_on_pending(
    engine: &Arc<Engine>,
    step: &Step,
    state: &StageResult,
    pending: &[Unsettled],
) -> bool {
    match step.op {
        Op::Meta => true,
        Op::Run(_) if !pending.iter().any(|p| p.user_files) => {
            let Some(top) = super::snapshots::top_chain_id(&state.layers, None) else {
                return false;
            };
            match engine.sandbox().await {
                Ok(sandbox) => sandbox.has_chain(&top).await,
                Err(_) => false,
            }
        }
        _ => false,
    }
}

/// Puts the real records of `pending` layers in place of their provisional ones.
async fn settle(state: &mut StageResult, pending: &mut Vec<Unsettled>) -> Result<(), RpcError> {
    for unsettled in pending.drain(..) {
        let layer = unsettled.record.await.map_err(internal)??;
        state.layers[unsettled.position] = layer;
    }
    Ok(())
}

/// The history comment of a Dockerfile instruction, as BuildKit writes it.
const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// The number of leading layers of `plan`'s target that are its base
/// image's, unchanged (BuildKit leaves those out of `rewrite-timestamp`).
fn base_image_layers(plan: &Plan, layers: &[memobuild_store::LayerRecord]) -> usize {
    let mut position = plan.target;
    let mut guard = 0;
    let image = loop {
        match &plan.stages[position].base {
            Base::Image(image) => break Some(image),
            Base::Stage(_) if guard < plan.stages.len() => match plan.base_stage(position) {
                Some(p) => position = p,
                None => break None,
            },
            _ => break None,
        }
        guard += 1;
    };
    image.map_or(0, |image| {
        layers
            .iter()
            .zip(&image.layers)
            .take_while(|(a, b)| a.diff_id == b.diff_id)
            .count()
    })
}

/// The key of a pending step, now that the stages it reads have run: its
/// parent's resolved key and the content digests of the paths it reads.
async fn resolve_key(
    engine: &Arc<Engine>,
    step: &Step,
    parent: &str,
    inputs: &BTreeMap<usize, StageResult>,
) -> Result<(String, Vec<String>), RpcError> {
    let glob = matches!(step.op, Op::Copy(_));
    let mut digests = Vec::new();
    for c in &step.contents {
        let source = inputs.get(&c.stage).cloned().ok_or_else(|| {
            internal(format!(
                "internal error: {} reads a stage that has not run",
                step.display
            ))
        })?;
        let (e, paths) = (engine.clone(), c.paths.clone());
        let digest = blocking(move || {
            super::content::stage_content(&e, &source.key, &source.layers, &paths, glob)
                .map_err(internal)
        })
        .await?;
        digests.push(digest);
    }
    let key = graph::key::step_key(parent, &step.own_key, &digests);
    Ok((key, digests))
}

/// Looks a step up (pinning what it finds for this build); a corrupt cached
/// layer is reported in the build's progress and the step runs again.
async fn lookup(
    engine: &Arc<Engine>,
    build: BuildId,
    step: usize,
    key: &str,
    log: &BuildLog,
) -> Result<Option<StepRecord>, RpcError> {
    let (e, k) = (engine.clone(), key.to_string());
    let found = blocking(move || e.store.use_step(build, &k).map_err(internal)).await?;
    let caller = crate::owner::acting_for(log.caller, log.owner);
    Ok(match found {
        // Imported by another user (--cache-from): theirs alone, run it here.
        Lookup::Hit(record) if !caller.may_use_step(&record) => None,
        Lookup::Hit(record) => Some(record),
        Lookup::Miss => None,
        Lookup::Corrupt { digest, message } => {
            log.push(BuildEvent::Log {
                step: Some(step),
                line: format!(
                    "warning: the cached layer {digest} of this step is corrupt on disk ({message}); dropped it, running the step again"
                ),
            });
            None
        }
    })
}

/// A base image's layers, verified (a corrupt one cannot be rebuilt: the
/// image must be imported or pulled again) and pinned for this build.
async fn base_layers(
    engine: &Arc<Engine>,
    build: BuildId,
    layers: &[LayerRecord],
) -> Result<Vec<LayerRecord>, RpcError> {
    let (e, l) = (engine.clone(), layers.to_vec());
    blocking(move || {
        e.store.pin_digests(build, l.iter().map(|l| &l.digest));
        for layer in &l {
            e.store.blobs.verify_cached(&layer.digest).map_err(|err| {
                RpcError::with_hint(
                    format!("base image layer {}: {err}", layer.digest),
                    "import the base image again (`memobuild-ctl image import`)",
                )
            })?;
        }
        Ok(l)
    })
    .await
}

/// An error of a step: `FILE:LINE:COL: instruction: what`.
fn step_error(plan: &Plan, step: &Step, e: impl StepFailure) -> RpcError {
    RpcError::of(
        e.kind(),
        format!(
            "{}:{}:{}: {}: {e}",
            plan.file, step.loc.line, step.loc.column, step.display
        ),
    )
    .at(step_location(plan, step))
}

fn step_location(plan: &Plan, step: &Step) -> memobuild_proto::Location {
    memobuild_proto::Location {
        file: plan.file.clone(),
        line: step.loc.line,
        column: step.loc.column,
    }
}

/// Notes the step whose failure fails the build (not one that only saw its
/// files change, which starts the build over, nor a cancelled one).
fn note_failed(log: &BuildLog, step: usize, e: &RpcError) {
    if !e.is(ErrorKind::ContextChanged) && !e.is(ErrorKind::Cancelled) {
        log.note_failed_step(step, None, Vec::new());
    }
}

/// A COPY/ADD/WORKDIR failure and its kind: a context file that changed
/// under the build is retried, anything else fails the step.
trait StepFailure: std::fmt::Display {
    fn kind(&self) -> ErrorKind;
}

impl StepFailure for OciError {
    fn kind(&self) -> ErrorKind {
        match self {
            OciError::ContextChanged { .. } => ErrorKind::ContextChanged,
            _ => ErrorKind::StepFailed,
        }
    }
}

impl StepFailure for copy::CopyError {
    fn kind(&self) -> ErrorKind {
        match self {
            copy::CopyError::Oci(e) => StepFailure::kind(e),
            _ => ErrorKind::StepFailed,
        }
    }
}

/// What running a filesystem step gave.
enum Executed {
    Done(StepRecord),
    /// Its snapshot is committed and its diff_id known; the layer blob is
    /// still being written (see [`PendingLayer`]).
    Pending {
        created_at: i64,
        layer: PendingLayer,
    },
}

/// A step result whose layer blob is still being compressed and written,
/// while the RUN after it already runs on its snapshot (committed under the
/// chain id, which needs only the diff_id). The stage takes its real
/// [`LayerRecord`] (and records the step) when the blob is done: before any
/// step that is not a RUN or metadata, and before the stage ends.
struct PendingLayer {
    diff_id: String,
    /// Whether it holds a file named `passwd` or `group`: the RUN after it
    /// may read users from its bytes, so it waits for the blob.
    user_files: bool,
    write: tokio::task::JoinHandle<Result<LayerRecord, RpcError>>,
}

impl PendingLayer {
    /// What the steps after it see until the blob is done: the diff_id (for
    /// the chain id and the layer index, see `LayerCache`) and, in place of
    /// the blob digest, the diff_id again, which names no blob, so nothing
    /// can read a blob that is not there yet.
    fn provisional(&self) -> LayerRecord {
        LayerRecord {
            digest: self.diff_id.clone(),
            diff_id: self.diff_id.clone(),
            size: 0,
            media_type: memobuild_oci::MEDIA_LAYER_GZIP.to_string(),
        }
    }
}

fn has_user_files(changes: &ChangeSet) -> bool {
    changes.entries.iter().any(|(path, entry)| {
        let name = path.rsplit('/').next().unwrap_or(path);
        matches!(entry.kind, memobuild_oci::EntryKind::File(_))
            && (name == "passwd" || name == "group")
    })
}

/// Runs one step that missed the cache.
async fn execute(
    engine: &Arc<Engine>,
    plan: &Arc<Plan>,
    step: &Step,
    parent: &StageResult,
    inputs: &BTreeMap<usize, StageResult>,
    epoch: Option<i64>,
    reader: Option<Arc<Creds>>,
) -> Result<Executed, RpcError> {
    let now = memobuild_store::now_secs();
    let empty = || {
        Executed::Done(StepRecord {
            layer: None,
            created_at: now,
            owner: None,
            imported: false,
        })
    };
    if matches!(step.op, Op::Meta) {
        return Ok(empty());
    }
    let (engine, plan, step) = (engine.clone(), plan.clone(), step.clone());
    let parent_layers = parent.layers.clone();
    let source_layers = match &step.op {
        Op::Copy(c) => match &c.source {
            graph::CopySource::Stage { stage, .. } => Some(
                inputs
                    .get(stage)
                    .map(|r| r.layers.clone())
                    .unwrap_or_default(),
            ),
            _ => None,
        },
        _ => None,
    };
    let wants_snapshot = later_run(&plan, &step);
    let (mut changes, staging) = {
        let (engine, plan, step, parent_layers) = (
            engine.clone(),
            plan.clone(),
            step.clone(),
            parent_layers.clone(),
        );
        blocking(move || {
            step_changes(
                &engine,
                &plan,
                &step,
                &parent_layers,
                source_layers,
                reader,
                now,
            )
        })
        .await?
    };
    changes.clamp_mtimes(epoch);
    if changes.is_empty() {
        return Ok(empty());
    }
    // The layer blob and, when a RUN may need it, the unpacked snapshot are
    // written at the same time from the same changes. The snapshot is
    // committed as soon as the tar stream's diff_id is known; the blob may
    // still be compressing then.
    let started = Instant::now();
    let changes = Arc::new(changes);
    let staged = staging.path().to_path_buf();
    // The step's previous layer and snapshot are found by its slot.
    let slot = super::snapshots::slot(&parent_layers, &step.display);
    let slot_name = format!("{}\n{}", slot.0, slot.1);
    // Kept until both the blob and the snapshot are written (the snapshot
    // links files from it).
    let staging = Arc::new(staging);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<(String, bool)>();
    let write = {
        let (engine, plan, step, changes, staging) = (
            engine.clone(),
            plan.clone(),
            step.clone(),
            changes.clone(),
            staging.clone(),
        );
        let started = Instant::now();
        tokio::task::spawn_blocking(move || {
            let indexed = |diff_id: &str, sizes: &[u64]| {
                tracing::debug!(took = ?started.elapsed(), "layer's diff_id known");
                let remembered = engine.layers.remember(diff_id, &changes, sizes);
                let _ = ready_tx.send((diff_id.to_string(), remembered));
            };
            let written = engine.layer_writer.write_early(
                &changes,
                &engine.store.blobs,
                Some(&slot_name),
                indexed,
            );
            tracing::debug!(took = ?started.elapsed(), "layer blob written");
            // Its files are in the blob (and linked into the snapshot) now.
            drop(staging);
            let (layer, _) = written.map_err(|e| step_error(&plan, &step, e))?;
            Ok(layer)
        })
    };
    let snapshot = async {
        match wants_snapshot {
            true => {
                let changes = changes.clone();
                super::snapshots::materialize(
                    &engine,
                    &parent_layers,
                    changes,
                    Some(slot),
                    Some(&staged),
                )
                .await
            }
            false => None,
        }
    };
    let (ready, snapshot) = tokio::join!(ready_rx, snapshot);
    drop(staging);
    tracing::debug!(took = ?started.elapsed(), "step result's snapshot written");
    let committed = match (&ready, snapshot) {
        (Ok((diff_id, _)), Some(snapshot)) => {
            super::snapshots::commit(&engine, &parent_layers, diff_id, snapshot).await
        }
        _ => false,
    };
    match ready {
        Ok((diff_id, true)) if committed => Ok(Executed::Pending {
            created_at: now,
            layer: PendingLayer {
                diff_id,
                user_files: has_user_files(&changes),
                write,
            },
        }),
        _ => {
            let layer = write.await.map_err(internal)??;
            Ok(Executed::Done(StepRecord {
                layer: Some(layer),
                created_at: now,
                owner: None,
                imported: false,
            }))
        }
    }
}

/// Whether a RUN comes after `step` (a stage is only ever built on an
/// earlier one, so a RUN that can stand on this result has a higher index).
fn later_run(plan: &Plan, step: &Step) -> bool {
    plan.steps
        .iter()
        .any(|s| s.index > step.index && matches!(s.op, Op::Run(_)))
}

/// What a COPY, ADD or WORKDIR adds, and the staging directory its files
/// may live in (kept until the layer is written).
fn step_changes(
    engine: &Engine,
    plan: &Plan,
    step: &Step,
    parent_layers: &[memobuild_store::LayerRecord],
    source_layers: Option<Vec<memobuild_store::LayerRecord>>,
    reader: Option<Arc<Creds>>,
    now: i64,
) -> Result<(ChangeSet, tempfile::TempDir), RpcError> {
    let now = now.max(0) as u64;
    let store = &engine.store;
    let view = FsView::load(store, &engine.layers, parent_layers)
        .map_err(|e| step_error(plan, step, e))?;
    let staging = tempfile::tempdir_in(store.blobs.tmp_dir()).map_err(internal)?;
    let changes = match &step.op {
        Op::Workdir { path, user } => copy::workdir(path, user.as_deref(), &view, store, now),
        Op::Copy(op) => {
            let source_view = match &source_layers {
                Some(layers) => Some(
                    FsView::load(store, &engine.layers, layers)
                        .map_err(|e| step_error(plan, step, e))?,
                ),
                None => None,
            };
            // COPY and ADD open context files (ADD's archives) with the
            // requesting user's rights. The layer and the snapshot are written
            // with the daemon's (its staging files are its own): context files
            // go in as `Content::Checked`, holding exactly the bytes whose
            // digests, computed and checked as the user, made the key.
            reading_as(reader, || {
                copy::copy(op, &view, source_view.as_ref(), store, staging.path(), now)
            })
        }
        Op::Meta | Op::Run(_) => Ok(ChangeSet::default()),
    }
    .map_err(|e| step_error(plan, step, e))?;
    let mut changes = changes;
    changes.mark_replacing_dirs(|dir| view.get(dir).is_some_and(|e| e.kind != ViewKind::Dir));
    Ok((changes, staging))
}

fn tag_image(
    engine: &Engine,
    request: &BuildRequest,
    log: &BuildLog,
    image: &StoredImage,
) -> Result<Vec<String>, RpcError> {
    tag_digests(
        engine,
        request,
        log,
        &image.manifest_digest,
        &image.config_digest,
        Some(image.size),
    )
}

/// Points each of the request's tags at the image, owned by the build's
/// owner; a tag that already does is left alone (no write). A name another
/// user holds is refused unless the build's caller is an admin.
fn tag_digests(
    engine: &Engine,
    request: &BuildRequest,
    log: &BuildLog,
    manifest: &str,
    config: &str,
    size: Option<u64>,
) -> Result<Vec<String>, RpcError> {
    let owner = crate::owner::owner_of(request);
    let mut names = Vec::new();
    for tag in &request.tags {
        let name = memobuild_oci::normalize_image_name(tag);
        let existing = engine.store.image(&name).map_err(internal)?;
        if let Some(current) = existing.as_ref().filter(|r| r.owner != owner) {
            let may = log.caller.is_some_and(|c| c.may_change(current.owner));
            if !may {
                let caller = log.caller.unwrap_or(crate::Caller {
                    uid: owner.unwrap_or(0),
                    admin: false,
                });
                return Err(caller.denied(&format!("image name {name}"), current.owner));
            }
        }
        let same = existing
            .as_ref()
            .is_some_and(|r| r.manifest_digest == manifest && r.owner == owner);
        if !same {
            let size = size.unwrap_or_else(|| {
                memobuild_oci::image::read_image(&engine.store, manifest).map_or(0, |i| i.size)
            });
            let record = ImageRecord {
                manifest_digest: manifest.to_string(),
                config_digest: config.to_string(),
                size,
                tagged_at: memobuild_store::now_secs(),
                owner,
                repo_digest: None,
            };
            // Durable with the build's last flush, before its client hears (ops.rs).
            engine
                .store
                .put_image_deferred(&name, &record)
                .map_err(internal)?;
        }
        names.push(name);
    }
    Ok(names)
}
