//! The RPC surface: accepts connections on the Unix socket and answers the
//! [`Memobuild`] service by delegating to the engine and the store.

use crate::context::watch::Mode;
use crate::exec::Engine;
use crate::oci::image::read_image;
use futures::StreamExt;
use memobuild_shared::{
    BlobRef, BuildId, BuildRequest, DaemonHealth, DaemonInfo, EventBatch, Explanation, ImageBlobs,
    ImageSummary, ImportSpec, Memobuild, RpcError, StatusReport, TreeStatus, BLOB_CHUNK_BYTES,
    MAX_FRAME_BYTES,
};
use std::sync::Arc;
use tarpc::context::Context;
use tarpc::server::{BaseChannel, Channel};
use tarpc::tokio_serde::formats::Bincode;
use tarpc::tokio_util::codec::length_delimited::LengthDelimitedCodec;
use tokio::net::UnixListener;

#[derive(Clone)]
pub struct Server {
    pub engine: Arc<Engine>,
    pub info: Arc<DaemonInfo>,
}

/// Serves connections until the listener fails; peers `access` refuses get
/// their permission error for every request instead.
pub async fn serve(
    listener: UnixListener,
    server: Server,
    access: Arc<crate::access::Access>,
) -> std::io::Result<()> {
    let mut codec = LengthDelimitedCodec::builder();
    codec.max_frame_length(MAX_FRAME_BYTES);
    loop {
        let (conn, _) = listener.accept().await?;
        let peer = crate::access::peer_of(&conn);
        let transport = tarpc::serde_transport::new(codec.new_framed(conn), Bincode::default());
        let server = server.clone();
        let access = access.clone();
        tokio::spawn(async move {
            let verdict = match peer {
                Ok(peer) => access.check(peer).await.map_err(|e| (peer, e)),
                Err(e) => Err((
                    crate::access::Peer {
                        uid: u32::MAX,
                        gid: u32::MAX,
                        pid: None,
                    },
                    format!("permission denied: cannot read the peer's credentials: {e}"),
                )),
            };
            if let Err((peer, message)) = verdict {
                tracing::warn!(uid = peer.uid, gid = peer.gid, pid = ?peer.pid, "refused a connection: {message}");
                return crate::access::refuse(transport, message).await;
            }
            BaseChannel::with_defaults(transport)
                .execute(server.serve())
                .for_each(|response| async move {
                    tokio::spawn(response);
                })
                .await;
        });
    }
}

fn store_err(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(e.to_string())
}

impl Memobuild for Server {
    async fn hello(self, _: Context) -> DaemonInfo {
        (*self.info).clone()
    }

    async fn start_build(self, _: Context, request: BuildRequest) -> Result<BuildId, RpcError> {
        if !std::path::Path::new(&request.context).is_absolute() {
            return Err(RpcError::new("the build context must be an absolute path"));
        }
        if self.engine.is_shutting_down() {
            return Err(RpcError::with_hint(
                "memobuildd is shutting down: it finishes the running builds and accepts no new ones",
                "run the build again once the daemon is back (systemd restarts it, or start memobuildd)",
            ));
        }
        Ok(self.engine.start(request))
    }

    async fn events(self, _: Context, build: BuildId, cursor: u64) -> Result<EventBatch, RpcError> {
        self.engine.events(build, cursor).await
    }

    async fn images(self, _: Context) -> Result<Vec<ImageSummary>, RpcError> {
        let store = self.engine.store.clone();
        let images = tokio::task::spawn_blocking(move || store.images())
            .await
            .map_err(store_err)?
            .map_err(store_err)?;
        Ok(images
            .into_iter()
            .map(|(name, r)| ImageSummary {
                name,
                manifest_digest: r.manifest_digest,
                config_digest: r.config_digest,
                size: r.size,
                tagged_at: r.tagged_at,
            })
            .collect())
    }

    async fn image_blobs(
        self,
        _: Context,
        manifest_digest: String,
    ) -> Result<ImageBlobs, RpcError> {
        let store = self.engine.store.clone();
        tokio::task::spawn_blocking(move || {
            let image = read_image(&store, &manifest_digest).map_err(store_err)?;
            // An export follows: keep these blobs from GC meanwhile.
            store.pin_image_for(&image.manifest_digest, std::time::Duration::from_secs(600));
            let manifest_size = store
                .blobs
                .size(&image.manifest_digest)
                .map_err(store_err)?;
            let config_size = store.blobs.size(&image.config_digest).map_err(store_err)?;
            Ok(ImageBlobs {
                manifest: BlobRef {
                    digest: image.manifest_digest.clone(),
                    size: manifest_size,
                    media_type: crate::oci::MEDIA_MANIFEST.into(),
                },
                config: BlobRef {
                    digest: image.config_digest.clone(),
                    size: config_size,
                    media_type: crate::oci::MEDIA_CONFIG.into(),
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
        .map_err(store_err)?
    }

    async fn read_blob(
        self,
        _: Context,
        digest: String,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, RpcError> {
        let store = self.engine.store.clone();
        let len = len.min(BLOB_CHUNK_BYTES);
        tokio::task::spawn_blocking(move || {
            // The first chunk checks the whole blob (hashed once per change of
            // its file); a corrupt one is dropped so the next build rebuilds it.
            if offset == 0 {
                if let Err(e @ crate::store::StoreError::Corrupt { .. }) =
                    store.blobs.verify_cached(&digest)
                {
                    tracing::warn!(digest, error = %e, "corrupt blob: dropping it and its cache entries");
                    store.drop_blob(&digest)?;
                    return Err(e);
                }
            }
            store.blobs.read_range(&digest, offset, len)
        })
            .await
            .map_err(store_err)?
            .map_err(store_err)
    }

    async fn status(self, _: Context, filter: String) -> Result<StatusReport, RpcError> {
        let ids = self.matching(&filter)?;
        let mut projects = self.engine.projects.status(&ids);
        // A project whose build waits for a slot (and none of its builds runs).
        let queued = self.engine.queued_projects();
        for p in projects.iter_mut() {
            if queued.contains(&p.id) && p.state != "building" {
                p.state = "queued".into();
            }
        }
        Ok(StatusReport {
            daemon: self.health(),
            projects,
        })
    }

    async fn forget(self, _: Context, filter: String) -> Result<Vec<String>, RpcError> {
        let ids = self.matching(&filter)?;
        if filter.is_empty() {
            return Err(RpcError::with_hint(
                "forget needs a project",
                "pass a project id or context path (see `memobuild-ctl projects`)",
            ));
        }
        for root in self.engine.projects.forget(&self.engine.store, &ids) {
            self.engine.watcher.forget(&root);
        }
        Ok(ids)
    }

    async fn explain(self, _: Context, filter: String) -> Result<Explanation, RpcError> {
        let ids = self.matching(&filter)?;
        let [id] = ids.as_slice() else {
            return Err(RpcError::with_hint(
                format!("{} projects match {filter:?}", ids.len()),
                "name one project by id or context path (see `memobuild-ctl projects`)",
            ));
        };
        self.engine.projects.explain(id).ok_or_else(|| {
            RpcError::with_hint(
                format!("project {id} has not been built yet"),
                "run `memobuild-ctl build` first",
            )
        })
    }

    async fn wait_change(
        self,
        _: Context,
        project: String,
        generation: u64,
    ) -> Result<u64, RpcError> {
        self.engine
            .projects
            .wait_change(&project, generation, std::time::Duration::from_secs(3))
            .await
            .ok_or_else(|| RpcError::new(format!("no project {project}")))
    }

    async fn cancel(self, _: Context, build: BuildId) -> Result<(), RpcError> {
        self.engine.cancel(build)
    }

    async fn upload_begin(self, _: Context) -> Result<u64, RpcError> {
        self.engine.upload_begin()
    }

    async fn upload_chunk(self, _: Context, upload: u64, data: Vec<u8>) -> Result<(), RpcError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.upload_chunk(upload, &data))
            .await
            .map_err(store_err)?
    }

    async fn upload_commit(self, _: Context, upload: u64, digest: String) -> Result<u64, RpcError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.upload_commit(upload, &digest))
            .await
            .map_err(store_err)?
    }

    async fn import_image(
        self,
        _: Context,
        name: String,
        spec: ImportSpec,
    ) -> Result<ImageSummary, RpcError> {
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || crate::oci::import::import(&engine.store, &name, &spec))
            .await
            .map_err(store_err)?
    }

    async fn remove_image(self, _: Context, name: String) -> Result<(), RpcError> {
        let full = crate::graph::normalize_image_name(&name);
        match self.engine.store.remove_image(&full).map_err(store_err)? {
            true => Ok(()),
            false => Err(RpcError::with_hint(
                format!("no image named {full}"),
                "`memobuild-ctl images` lists them",
            )),
        }
    }

    async fn build_log(
        self,
        _: Context,
        build: String,
    ) -> Result<memobuild_shared::BuildLogReport, RpcError> {
        let logs = self
            .engine
            .build_logs()
            .cloned()
            .ok_or_else(|| RpcError::new("this daemon keeps no build logs"))?;
        let id = self.resolve_build(&logs, build.trim())?;
        let running = self.engine.is_running(id);
        tokio::task::spawn_blocking(move || logs.read(id, running))
            .await
            .map_err(store_err)?
            .map_err(|e| match e {
                crate::buildlogs::BuildLogsError::Missing(_) => no_build_log(&id.to_string()),
                e => store_err(e),
            })
    }

    async fn metrics(self, _: Context) -> Result<String, RpcError> {
        crate::metrics::scrape(&self.engine)
            .await
            .map_err(store_err)
    }

    async fn disk_usage(self, _: Context) -> Result<memobuild_shared::DiskUsage, RpcError> {
        self.disk_usage_impl().await
    }

    async fn prune(
        self,
        _: Context,
        request: memobuild_shared::PruneRequest,
    ) -> Result<memobuild_shared::PruneResult, RpcError> {
        self.prune_impl(request).await
    }

    async fn verify_store(self, _: Context) -> Result<memobuild_shared::VerifyResult, RpcError> {
        self.verify_store_impl().await
    }
}

fn no_build_log(which: &str) -> RpcError {
    RpcError::with_hint(
        format!("no build log for {which:?}"),
        "name a build by the id `memobuild-ctl build` prints first (`build ID`), `last`, or a project id or context path; logs are kept for the newest builds only (--build-logs-keep)",
    )
}

impl Server {
    /// A build id from what the user typed: an id, `last`, or a project
    /// (id or context path), meaning its latest build.
    fn resolve_build(
        &self,
        logs: &crate::buildlogs::BuildLogs,
        which: &str,
    ) -> Result<BuildId, RpcError> {
        if let Ok(id) = which.parse::<BuildId>() {
            return Ok(id);
        }
        if which == "last" {
            return logs.latest().ok_or_else(|| no_build_log(which));
        }
        let projects = self.matching(which).map_err(|_| no_build_log(which))?;
        logs.latest_where(|h| projects.contains(&h.project))
            .ok_or_else(|| no_build_log(which))
    }
}

// Disk: usage, garbage collection, verification (store/gc.rs, store/verify.rs).
impl Server {
    async fn disk_usage_impl(self) -> Result<memobuild_shared::DiskUsage, RpcError> {
        let mut usage = self.engine.disk_usage().await?;
        usage.max_storage = self.engine.max_storage();
        Ok(usage)
    }

    async fn prune_impl(
        self,
        request: memobuild_shared::PruneRequest,
    ) -> Result<memobuild_shared::PruneResult, RpcError> {
        let opts = crate::store::gc::PruneOptions {
            all: request.all,
            keep_bytes: request.keep_bytes,
        };
        let r = self.engine.prune(opts).await?;
        Ok(memobuild_shared::PruneResult {
            cache_entries_removed: r.records_removed,
            blobs_removed: r.blobs_removed,
            bytes_freed: r.bytes_freed,
            bytes_after: r.bytes_after,
        })
    }

    async fn verify_store_impl(self) -> Result<memobuild_shared::VerifyResult, RpcError> {
        let r = self.engine.verify_store().await?;
        Ok(memobuild_shared::VerifyResult {
            cache_entries: r.cache_entries,
            images: r.images,
            blobs: r.blobs,
            temp_files: r.temp_files,
            problems: r.problems,
        })
    }
}

impl Server {
    /// Project ids for a filter; a filter naming a directory is canonicalised
    /// (as the client does for builds).
    fn matching(&self, filter: &str) -> Result<Vec<String>, RpcError> {
        let filter = match std::path::Path::new(filter).canonicalize() {
            Ok(p) if filter.contains('/') || std::path::Path::new(filter).is_dir() => {
                p.display().to_string()
            }
            _ => filter.to_string(),
        };
        let ids = self.engine.projects.matching(&filter);
        if ids.is_empty() && !filter.is_empty() {
            return Err(RpcError::with_hint(
                format!("no project matches {filter:?}"),
                "projects are registered by building them; `memobuild-ctl projects` lists them",
            ));
        }
        Ok(ids)
    }

    fn health(&self) -> DaemonHealth {
        let health = self.engine.watcher.health();
        let trees: Vec<TreeStatus> = health
            .trees
            .iter()
            .map(|t| {
                let (mode, reason) = match &t.mode {
                    Mode::Watching => ("watching", None),
                    Mode::RescanPending(r) => ("rescan_pending", Some(r.clone())),
                    Mode::Polling(r) => ("polling", Some(r.clone())),
                };
                TreeStatus {
                    root: t.root.display().to_string(),
                    mode: mode.to_string(),
                    reason,
                    entries: t.entries as u64,
                    rescans: t.rescans,
                }
            })
            .collect();
        DaemonHealth {
            pid: self.info.pid,
            version: self.info.daemon_version.clone(),
            watching: trees.iter().all(|t| t.mode == "watching"),
            index_entries: trees.iter().map(|t| t.entries).sum(),
            watch_count: trees.len() as u64,
            trees,
            events: health.events,
            hashed_bytes: self.engine.hashes.bytes_hashed(),
            running_builds: self.engine.running_builds(),
            queued_builds: self.engine.queued_builds(),
        }
    }
}
