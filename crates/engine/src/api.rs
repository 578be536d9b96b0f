//! The requests the daemon's server forwards, answered in the protocol's
//! types. Blocking store work runs on the blocking pool, never on an async
//! worker thread.

use crate::{gc, import, Caller, Engine};
use memobuild_context::watch::Mode;
use memobuild_oci::image::read_image;
use memobuild_proto::{
    BlobRef, BuildId, BuildLogReport, DaemonHealth, DiskUsage, ErrorKind, Explanation, ImageBlobs,
    ImageSummary, ImportSpec, ProjectState, PruneRequest, PruneResult, RpcError, StatusReport,
    TreeMode, TreeStatus, VerifyResult, BLOB_CHUNK_BYTES,
};
use memobuild_store::StoreError;
use std::sync::Arc;
use std::time::Duration;

/// Longest a `status_wait` call waits for a change.
const STATUS_WAIT: Duration = Duration::from_secs(30);

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(e.to_string())
}

/// Runs blocking work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RpcError> + Send + 'static,
) -> Result<T, RpcError> {
    tokio::task::spawn_blocking(work).await.map_err(internal)?
}

/// Who the daemon is, for `status`: filled in by the process.
#[derive(Debug, Clone)]
pub struct DaemonIdentity {
    pub pid: u32,
    pub version: String,
}

impl Engine {
    /// Checks what a build request names before the build starts: `-t` names
    /// as Docker parses them, `--network`, `--ulimit` names.
    pub fn check_request(&self, request: &memobuild_proto::BuildRequest) -> Result<(), RpcError> {
        for tag in &request.tags {
            let bad = |why: String| {
                RpcError::of(
                    ErrorKind::InvalidInput,
                    format!("invalid tag {tag:?}: invalid reference format: {why}"),
                )
                .hint("a name is [HOST[:PORT]/]PATH[:TAG] in lower case, e.g. -t myapp:1.0")
            };
            let reference = memobuild_oci::reference::parse(tag).map_err(|e| bad(e.message))?;
            if reference.digest().is_some() {
                return Err(bad("a tag cannot have a digest (@sha256:...)".into()));
            }
        }
        if !matches!(request.network.as_str(), "" | "default" | "none" | "host") {
            return Err(RpcError::of(
                ErrorKind::InvalidInput,
                format!("--network {:?} is not supported", request.network),
            )
            .hint("use --network default, none or host (RUN steps have no other networks)"));
        }
        self.ssh.check(request)?;
        for name in request.ulimits.keys() {
            if !memobuild_proto::ULIMITS.iter().any(|(n, _)| n == name) {
                return Err(RpcError::of(
                    ErrorKind::InvalidInput,
                    format!("--ulimit {name}: unknown limit"),
                )
                .hint("use one of as, core, cpu, data, fsize, locks, memlock, msgqueue, nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack"));
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Checks that `caller` may point each of `tags` at a new image: a name
    /// nobody holds, or one that is the caller's (an admin's: any). Checked
    /// before a build starts, and again when it tags.
    pub async fn check_tags(
        self: &Arc<Self>,
        tags: &[String],
        caller: Caller,
    ) -> Result<(), RpcError> {
        let store = self.store.clone();
        let names: Vec<String> = tags
            .iter()
            .map(|t| memobuild_oci::normalize_image_name(t))
            .collect();
        blocking(move || {
            for name in names {
                may_name(&store, &name, caller)?;
            }
            Ok(())
        })
        .await
    }

    /// Images in the image store: for an admin all of them; for anyone else
    /// those it may read: its own, those without an owner (pulled base
    /// images, names set before owners were recorded) and root's.
    pub async fn images(self: &Arc<Self>, caller: Caller) -> Result<Vec<ImageSummary>, RpcError> {
        let store = self.store.clone();
        let images = blocking(move || store.images().map_err(internal)).await?;
        Ok(images
            .into_iter()
            .filter(|(_, r)| caller.may_read(r.owner))
            .map(|(name, r)| ImageSummary {
                name,
                manifest_digest: r.manifest_digest,
                config_digest: r.config_digest,
                size: r.size,
                tagged_at: r.tagged_at,
                owner: r.owner,
                repo_digest: r.repo_digest,
            })
            .collect())
    }

    /// The blobs an image needs, for `-o` outputs; kept from GC meanwhile.
    /// Only an image `caller` may read: one named by an image it may read
    /// (its own, unowned, root's) or one of its own builds' results.
    pub async fn image_blobs(
        self: &Arc<Self>,
        manifest_digest: String,
        caller: Caller,
    ) -> Result<ImageBlobs, RpcError> {
        let store = self.store.clone();
        let engine = self.clone();
        blocking(move || {
            engine.check_blob_readable(caller, &manifest_digest)?;
            let image = read_image(&store, &manifest_digest).map_err(internal)?;
            // An export follows: keep these blobs from GC meanwhile.
            let blobs = [&image.manifest_digest, &image.config_digest]
                .into_iter()
                .cloned()
                .chain(image.layers.iter().map(|l| l.digest.clone()))
                .collect();
            store.pin_for(blobs, Duration::from_secs(600));
            let manifest_size = store.blobs.size(&image.manifest_digest).map_err(internal)?;
            let config_size = store.blobs.size(&image.config_digest).map_err(internal)?;
            Ok(ImageBlobs {
                manifest: BlobRef {
                    digest: image.manifest_digest.clone(),
                    size: manifest_size,
                    media_type: memobuild_oci::MEDIA_MANIFEST.into(),
                },
                config: BlobRef {
                    digest: image.config_digest.clone(),
                    size: config_size,
                    media_type: memobuild_oci::MEDIA_CONFIG.into(),
                },
                layers: image
                    .layers
                    .iter()
                    .map(|l| BlobRef {
                        digest: l.digest.clone(),
                        size: l.size,
                        media_type: l.media_type.clone(),
                    })
                    .collect(),
            })
        })
        .await
    }

    /// Every blob of the image `manifest_digest`, each once (config, layers,
    /// manifest), verified and opened read-only (`O_RDONLY | O_CLOEXEC |
    /// O_NOFOLLOW`), for the daemon to hand to an exporting client. The same
    /// blobs [`Engine::image_blobs`] names and pins; nothing else.
    pub async fn open_image_blobs(
        self: &Arc<Self>,
        manifest_digest: String,
        caller: Caller,
    ) -> Result<Vec<(BlobRef, std::fs::File)>, RpcError> {
        let blobs = self.image_blobs(manifest_digest, caller).await?;
        let store = self.store.clone();
        let opened = blocking(move || {
            let mut seen = std::collections::HashSet::new();
            let mut out = Vec::new();
            let all = std::iter::once(blobs.config)
                .chain(blobs.layers)
                .chain(std::iter::once(blobs.manifest));
            for blob in all {
                if !seen.insert(blob.digest.clone()) {
                    continue;
                }
                if let Err(e @ StoreError::Corrupt { .. }) = store.blobs.verify_cached(&blob.digest)
                {
                    tracing::warn!(digest = blob.digest, error = %e, "corrupt blob: dropping it and its cache entries");
                    store.drop_blob(&blob.digest).map_err(internal)?;
                    return Err(internal(e).hint(
                        "build again: the daemon rebuilds what the dropped blob held",
                    ));
                }
                let file = open_read_only(&store, &blob)?;
                out.push((blob, file));
            }
            Ok(out)
        })
        .await?;
        self.metrics.export_blobs("fd", opened.len() as u64);
        Ok(opened)
    }

    /// At most [`BLOB_CHUNK_BYTES`] of a blob from `offset`: a blob of an
    /// image `caller` may read (see [`Engine::image_blobs`]) or a layer of
    /// its own builds' steps.
    pub async fn read_blob(
        self: &Arc<Self>,
        digest: String,
        offset: u64,
        len: u64,
        caller: Caller,
    ) -> Result<Vec<u8>, RpcError> {
        let store = self.store.clone();
        let len = len.min(BLOB_CHUNK_BYTES);
        let metrics = self.metrics.clone();
        let engine = self.clone();
        blocking(move || {
            engine.check_blob_readable(caller, &digest)?;
            // The first chunk checks the whole blob (hashed once per change of
            // its file); a corrupt one is dropped so the next build rebuilds it.
            if offset == 0 {
                metrics.export_blobs("rpc", 1);
                if let Err(e @ StoreError::Corrupt { .. }) = store.blobs.verify_cached(&digest) {
                    tracing::warn!(digest, error = %e, "corrupt blob: dropping it and its cache entries");
                    store.drop_blob(&digest).map_err(internal)?;
                    return Err(internal(e));
                }
            }
            store.blobs.read_range(&digest, offset, len).map_err(internal)
        })
        .await
    }

    /// The projects `filter` names (of those `caller` owns), with the daemon's health.
    pub fn status(
        &self,
        filter: &str,
        daemon: &DaemonIdentity,
        caller: Caller,
    ) -> Result<StatusReport, RpcError> {
        // Read first: a change after this shows in a later generation.
        let generation = self.projects.epoch();
        let ids = self.matching_for(filter, caller)?;
        let mut projects = self.projects.status(&ids);
        // A project whose build waits for a slot (and none of its builds runs).
        let queued = self.queued_projects();
        for p in projects.iter_mut() {
            if queued.contains(&p.id) && p.state != ProjectState::Building {
                p.state = ProjectState::Queued;
            }
        }
        Ok(StatusReport {
            daemon: self.health(daemon),
            projects,
            generation,
        })
    }

    /// `status` once the status generation moved past `generation` (or
    /// after [`STATUS_WAIT`] with nothing new): the long poll under
    /// `status --follow`. No project matching `filter` is not an error here:
    /// the report is empty until one is built.
    pub async fn status_wait(
        &self,
        filter: &str,
        generation: u64,
        daemon: &DaemonIdentity,
        caller: Caller,
    ) -> Result<StatusReport, RpcError> {
        self.projects.wait_any(generation, STATUS_WAIT).await;
        match self.status(filter, daemon, caller) {
            Err(e) if e.is(ErrorKind::NotFound) => Ok(StatusReport {
                daemon: self.health(daemon),
                projects: Vec::new(),
                generation: self.projects.epoch(),
            }),
            other => other,
        }
    }

    /// BuildKit's lint rules on the request's Dockerfile (`build
    /// --call=check`); nothing is built or registered.
    pub async fn check(
        self: &Arc<Self>,
        request: memobuild_proto::BuildRequest,
    ) -> Result<memobuild_proto::LintReport, RpcError> {
        let report = self.lint_report(request).await?;
        Ok(memobuild_proto::LintReport {
            warnings: crate::project::lint_warnings(&report.warnings),
            error: report.error,
        })
    }

    /// Forgets the projects `filter` names, and their watches.
    pub async fn forget(
        self: &Arc<Self>,
        filter: &str,
        caller: Caller,
    ) -> Result<Vec<String>, RpcError> {
        let ids = self.matching_for(filter, caller)?;
        if filter.is_empty() {
            return Err(
                RpcError::of(ErrorKind::InvalidInput, "forget needs a project")
                    .hint("pass a project id or context path (see `memobuild-ctl projects`)"),
            );
        }
        // Forgetting deletes project records (redb commits).
        let engine = self.clone();
        blocking(move || {
            for root in engine.projects.forget(&engine.store, &ids) {
                engine.watcher.forget(&root);
            }
            Ok(ids)
        })
        .await
    }

    /// Why each step of one project's last build ran or was cached.
    pub fn explain(&self, filter: &str, caller: Caller) -> Result<Explanation, RpcError> {
        let ids = self.matching_for(filter, caller)?;
        let [id] = ids.as_slice() else {
            // Which ones, so the caller can name one (a context with two
            // Dockerfiles, targets or build-arg sets is two projects).
            let listed: Vec<String> = self
                .projects
                .status(&ids)
                .into_iter()
                .map(|p| match p.target.as_str() {
                    "" => format!("{} ({})", p.id, p.dockerfile),
                    target => format!("{} ({}, target {target})", p.id, p.dockerfile),
                })
                .collect();
            let message = match listed.is_empty() {
                true => format!("no project matches {filter:?}"),
                false => format!(
                    "{} projects match {filter:?}: {}",
                    ids.len(),
                    listed.join(", ")
                ),
            };
            return Err(RpcError::of(ErrorKind::InvalidInput, message).hint(
                "name one by its id, or pick it with -f and --target as for the build (see `memobuild-ctl projects`)",
            ));
        };
        self.projects.explain(id).ok_or_else(|| {
            RpcError::of(
                ErrorKind::NotFound,
                format!("project {id} has not been built yet"),
            )
            .hint("run `memobuild-ctl build` first")
        })
    }

    /// Waits (a few seconds at most) for `project` to move past `generation`.
    pub async fn wait_change(
        &self,
        project: &str,
        generation: u64,
        caller: Caller,
    ) -> Result<u64, RpcError> {
        if let Some(owner) = self.projects.owner(project) {
            if !caller.may_change(owner) {
                return Err(caller.denied(&format!("project {project}"), owner));
            }
        }
        self.projects
            .wait_change(project, generation, Duration::from_secs(3))
            .await
            .ok_or_else(|| RpcError::of(ErrorKind::NotFound, format!("no project {project}")))
    }

    /// Appends to an upload `caller` began with `upload_begin` (another
    /// uid's upload: permission denied).
    pub async fn upload_chunk(
        self: &Arc<Self>,
        upload: u64,
        data: Vec<u8>,
        caller: Caller,
    ) -> Result<(), RpcError> {
        let engine = self.clone();
        blocking(move || engine.upload_chunk_now(upload, &data, caller)).await
    }

    /// Verifies `caller`'s upload against `digest` and stores it; returns its size.
    pub async fn upload_commit(
        self: &Arc<Self>,
        upload: u64,
        digest: String,
        caller: Caller,
    ) -> Result<u64, RpcError> {
        let engine = self.clone();
        blocking(move || engine.upload_commit_now(upload, &digest, caller)).await
    }

    /// Names an image whose blobs a client uploaded.
    pub async fn import_image(
        self: &Arc<Self>,
        name: String,
        spec: ImportSpec,
        caller: Caller,
    ) -> Result<ImageSummary, RpcError> {
        let store = self.store.clone();
        blocking(move || {
            may_name(&store, &memobuild_oci::normalize_image_name(&name), caller)?;
            import::import(&store, &name, &spec, Some(caller.uid))
        })
        .await
    }

    /// Removes an image name (its blobs go at the next GC): the caller's own,
    /// or any for an admin.
    pub async fn remove_image(
        self: &Arc<Self>,
        name: String,
        caller: Caller,
    ) -> Result<(), RpcError> {
        let full = memobuild_oci::normalize_image_name(&name);
        let store = self.store.clone();
        let lookup = full.clone();
        let removed = blocking(move || {
            // Checked and removed under the store's write lock order: a
            // re-tag in between is caught by the owner check below.
            let Some(record) = store.image(&lookup).map_err(internal)? else {
                return Ok(false);
            };
            if !caller.may_change(record.owner) {
                return Err(caller.denied(&format!("image {lookup}"), record.owner));
            }
            store
                .remove_image_if(&lookup, |r| r.owner == record.owner)
                .map_err(internal)
        })
        .await?;
        match removed {
            true => Ok(()),
            false => Err(
                RpcError::of(ErrorKind::NotFound, format!("no image named {full}"))
                    .hint("`memobuild-ctl images` lists them"),
            ),
        }
    }

    /// A build's log: by id, `last`, or a project's latest build; the
    /// caller's own builds only (an admin's: any).
    pub async fn build_log(
        self: &Arc<Self>,
        which: String,
        caller: Caller,
    ) -> Result<BuildLogReport, RpcError> {
        let logs = self
            .build_logs()
            .cloned()
            .ok_or_else(|| RpcError::new("this daemon keeps no build logs"))?;
        let id = self.resolve_build(&logs, which.trim(), caller)?;
        let header = logs
            .header(id)
            .ok_or_else(|| no_build_log(&id.to_string()))?;
        if !caller.may_change(header.owner) {
            return Err(caller.denied(&format!("the log of build {id}"), header.owner));
        }
        let running = self.is_running(id);
        blocking(move || {
            logs.read(id, running).map_err(|e| match e {
                crate::buildlogs::BuildLogsError::Missing(_) => no_build_log(&id.to_string()),
                e => internal(e),
            })
        })
        .await
    }

    /// The Prometheus text exposition.
    pub async fn metrics_text(self: &Arc<Self>) -> Result<String, RpcError> {
        crate::metrics::scrape(self).await.map_err(internal)
    }

    /// What the store holds, by use, with the configured bound.
    pub async fn disk_usage_report(self: &Arc<Self>) -> Result<DiskUsage, RpcError> {
        let mut usage = self.disk_usage().await?;
        usage.max_storage = self.max_storage();
        Ok(usage)
    }

    /// Garbage collection on request.
    /// Garbage collection on request: an admin's drops any entry; anyone
    /// else's only the step cache entries their own builds made (and, with
    /// `all`, no longer keeps what their own projects' last builds use).
    pub async fn prune_request(
        self: &Arc<Self>,
        request: PruneRequest,
        caller: Caller,
    ) -> Result<PruneResult, RpcError> {
        let opts = gc::PruneOptions {
            all: request.all,
            keep_bytes: request.keep_bytes,
            unused_for_secs: request.unused_for_secs,
            owner: caller.scope(),
        };
        let r = self.prune(opts).await?;
        Ok(PruneResult {
            cache_entries_removed: r.records_removed,
            blobs_removed: r.blobs_removed,
            bytes_freed: r.bytes_freed,
            bytes_after: r.bytes_after,
        })
    }

    /// The step results of finished build `build` for a local cache: its
    /// project's last build's steps (`max`: all; else the target stage and
    /// the stages it is built on), each with its stored layer.
    pub async fn cache_steps(
        self: &Arc<Self>,
        build: BuildId,
        max: bool,
        caller: Caller,
    ) -> Result<Vec<memobuild_proto::CacheStep>, RpcError> {
        let report = self.build_log(build.to_string(), caller).await?;
        let steps = self.projects.last_steps(&report.project).ok_or_else(|| {
            RpcError::of(
                ErrorKind::NotFound,
                format!("build {build} has no finished steps"),
            )
        })?;
        let steps = if max {
            steps
        } else {
            crate::localcache::target_chain(steps)
        };
        let store = self.store.clone();
        blocking(move || crate::localcache::cache_steps(&store, &steps)).await
    }

    /// Records step results from a local cache whose layers were uploaded.
    pub async fn import_cache_steps(
        self: &Arc<Self>,
        steps: Vec<memobuild_proto::CacheStep>,
        caller: Caller,
    ) -> Result<u64, RpcError> {
        let engine = self.clone();
        blocking(move || {
            let readable = engine.readable_blobs(caller)?;
            let uploaded = engine.uploaded_by(caller.uid);
            let may_use_layer = |digest: &str| {
                readable.as_ref().is_none_or(|r| r.contains(digest)) || uploaded.contains(digest)
            };
            crate::localcache::import(&engine.store, &steps, caller, &may_use_layer)
        })
        .await
    }

    /// The store's consistency check.
    pub async fn verify_report(self: &Arc<Self>) -> Result<VerifyResult, RpcError> {
        let r = self.verify_store().await?;
        Ok(VerifyResult {
            cache_entries: r.cache_entries,
            images: r.images,
            blobs: r.blobs,
            temp_files: r.temp_files,
            problems: r.problems,
        })
    }

    /// A build id from what the user typed: an id, `last`, or a project
    /// (id or context path), meaning its latest build.
    fn resolve_build(
        &self,
        logs: &crate::buildlogs::BuildLogs,
        which: &str,
        caller: Caller,
    ) -> Result<BuildId, RpcError> {
        if let Ok(id) = which.parse::<BuildId>() {
            return Ok(id);
        }
        if which == "last" {
            return logs
                .latest_where(|h| caller.may_change(h.owner))
                .ok_or_else(|| no_build_log(which));
        }
        let projects = match self.matching_for(which, caller) {
            Err(e) if e.is(ErrorKind::PermissionDenied) => return Err(e),
            other => other.map_err(|_| no_build_log(which))?,
        };
        logs.latest_where(|h| projects.contains(&h.project))
            .ok_or_else(|| no_build_log(which))
    }

    /// Project ids for a filter, of the projects `caller` owns (an admin:
    /// all). A filter that names only other users' projects is refused.
    pub(crate) fn matching_for(
        &self,
        filter: &str,
        caller: Caller,
    ) -> Result<Vec<String>, RpcError> {
        let ids = self.matching(filter)?;
        let Some(uid) = caller.scope() else {
            return Ok(ids);
        };
        let (mine, theirs): (Vec<String>, Vec<String>) = ids
            .into_iter()
            .partition(|id| self.projects.owner(id) == Some(Some(uid)));
        match theirs.first() {
            Some(id) if mine.is_empty() && !filter.is_empty() => {
                Err(caller.denied(&format!("project {id}"), self.projects.owner(id).flatten()))
            }
            _ => Ok(mine),
        }
    }

    /// Project ids for a filter; a filter naming a directory is canonicalised
    /// (as the client does for builds).
    fn matching(&self, filter: &str) -> Result<Vec<String>, RpcError> {
        let filter = match std::path::Path::new(filter).canonicalize() {
            Ok(p) if filter.contains('/') || std::path::Path::new(filter).is_dir() => {
                p.display().to_string()
            }
            _ => filter.to_string(),
        };
        let ids = self.projects.matching(&filter);
        if ids.is_empty() && !filter.is_empty() {
            return Err(RpcError::of(
                ErrorKind::NotFound,
                format!("no project matches {filter:?}"),
            )
            .hint(
                "projects are registered by building them; `memobuild-ctl projects` lists them",
            ));
        }
        Ok(ids)
    }

    fn health(&self, daemon: &DaemonIdentity) -> DaemonHealth {
        let health = self.watcher.health();
        let trees: Vec<TreeStatus> = health
            .trees
            .iter()
            .map(|t| {
                let (mode, reason) = match &t.mode {
                    Mode::Watching => (TreeMode::Watching, None),
                    Mode::RescanPending(r) => (TreeMode::RescanPending, Some(r.clone())),
                    Mode::Polling(r) => (TreeMode::Polling, Some(r.clone())),
                };
                TreeStatus {
                    root: t.root.display().to_string(),
                    mode,
                    reason,
                    entries: t.entries as u64,
                    rescans: t.rescans,
                }
            })
            .collect();
        DaemonHealth {
            pid: daemon.pid,
            version: daemon.version.clone(),
            watching: trees.iter().all(|t| t.mode == TreeMode::Watching),
            index_entries: trees.iter().map(|t| t.entries).sum(),
            watch_count: trees.len() as u64,
            trees,
            events: health.events,
            hashed_bytes: self.hashes.bytes_hashed(),
            running_builds: self.running_builds(),
            queued_builds: self.queued_builds(),
        }
    }
}

/// A store blob opened for reading only, never through a symlink, and
/// checked to be a regular file of the size the image records.
fn open_read_only(
    store: &memobuild_store::Store,
    blob: &BlobRef,
) -> Result<std::fs::File, RpcError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = store.blobs.path(&blob.digest).map_err(internal)?;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .and_then(|f| Ok((f.metadata()?, f)));
    let (meta, file) = opened.map_err(|e| {
        RpcError::of(
            ErrorKind::NotFound,
            format!("opening blob {} ({}): {e}", blob.digest, path.display()),
        )
        .hint("build again: the daemon rebuilds blobs that went missing")
    })?;
    if !meta.file_type().is_file() || meta.len() != blob.size {
        return Err(internal(format!(
            "blob {} at {} is not a regular file of {} bytes",
            blob.digest,
            path.display(),
            blob.size
        ))
        .hint("run `memobuild-ctl verify`, then build again"));
    }
    Ok(file)
}

/// Whether `caller` may point image name `name` somewhere: nobody holds it,
/// or its holder is the caller (an admin may take any).
fn may_name(store: &memobuild_store::Store, name: &str, caller: Caller) -> Result<(), RpcError> {
    match store.image(name).map_err(internal)? {
        Some(record) if !caller.may_change(record.owner) => {
            Err(caller.denied(&format!("image name {name}"), record.owner))
        }
        _ => Ok(()),
    }
}

fn no_build_log(which: &str) -> RpcError {
    RpcError::of(ErrorKind::NotFound, format!("no build log for {which:?}")).hint(
        "name a build by the id `memobuild-ctl build` prints first (`build ID`), `last`, or a project id or context path; logs are kept for the newest builds only (--build-logs-keep)",
    )
}
