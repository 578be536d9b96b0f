//! The engine's operations side: the build queue and single flight around
//! [`Engine::start`], disk usage, pruning (by hand and above `max-storage`),
//! store verification, and the numbers metrics report.

use super::{BuildLog, Engine};
use crate::gc::{PruneOptions, PruneReport, Usage};
use crate::verify::VerifyReport;
use memobuild_proto::{BuildEvent, BuildId, BuildRequest, RpcError};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Builds running at once unless `max-parallel-builds` says otherwise.
pub const DEFAULT_MAX_PARALLEL_BUILDS: usize = 4;

/// How long a finished build's image is kept from GC for its clients to fetch.
const RESULT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Automatic GC prunes to this share of `max-storage`, so it does not run
/// again after every build.
const AUTO_GC_TARGET_PERCENT: u64 = 90;

fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(e.to_string())
}

impl Engine {
    /// Applies `max-parallel-builds` and `max-storage` (None: no cap).
    pub fn set_limits(&self, max_parallel_builds: usize, max_storage: Option<u64>) {
        self.queue.set_limit(max_parallel_builds);
        self.max_storage
            .store(max_storage.unwrap_or(0), Ordering::SeqCst);
    }

    /// `max-storage` in bytes, if set.
    pub fn max_storage(&self) -> Option<u64> {
        Some(self.max_storage.load(Ordering::SeqCst)).filter(|m| *m > 0)
    }

    /// Builds waiting for a slot (for status and metrics).
    pub fn queued_builds(&self) -> u64 {
        self.queue.queued() as u64
    }

    /// Ids of projects with a build waiting for a slot (`status` shows them `queued`).
    pub fn queued_projects(&self) -> std::collections::HashSet<String> {
        self.flights.queued_projects()
    }

    /// Waits for a build slot, saying so in the build's progress; None when the
    /// build is cancelled while it waits.
    pub(super) async fn queue_for_slot(
        &self,
        id: BuildId,
        request: &BuildRequest,
        log: &Arc<BuildLog>,
    ) -> Option<super::queue::Slot> {
        let who = super::queue::Who {
            user: crate::owner::owner_of(request),
            project: request.context.clone(),
        };
        if let Some(slot) = self.queue.try_acquire(&who) {
            return Some(slot);
        }
        let line = format!(
            "queued: {} builds running (max-parallel-builds = {}), {} waiting",
            self.queue.running(),
            self.queue.limit(),
            self.queue.queued()
        );
        tracing::info!(build = id, "{line}");
        log.push(BuildEvent::Log { step: None, line });
        let project = crate::project::ProjectKey::of(request).id();
        self.flights.set_queued(id, Some(project));
        let slot = tokio::select! {
            slot = self.queue.wait(&who) => Some(slot),
            _ = log.cancelled() => None,
        };
        self.flights.set_queued(id, None);
        let slot = slot?;
        log.push(BuildEvent::Log {
            step: None,
            line: "started: a build slot is free".into(),
        });
        Some(slot)
    }

    /// Bookkeeping once a build's work is over, before its result is published.
    /// The result's blobs stay pinned a little longer: its clients fetch them
    /// for `-o` right after (and `image_blobs` pins them for the export).
    pub(super) async fn build_ended(self: &Arc<Self>, id: BuildId, result: Option<String>) {
        self.flights.finish(id);
        let engine = self.clone();
        let started = std::time::Instant::now();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(manifest) = result {
                let mut digests = std::collections::HashSet::new();
                crate::gc::image_digests(&engine.store, &manifest, &mut digests);
                engine.store.pin_for(digests, RESULT_GRACE);
            }
            engine.store.unpin_build(id);
            if let Err(e) = engine.store.flush() {
                tracing::warn!(error = %e, "cannot make the build's records durable");
            }
        })
        .await;
        tracing::debug!(took = ?started.elapsed(), "build's results pinned, its records made durable");
    }

    /// After a build: prunes least-recently-used entries when the store is
    /// above `max-storage` (one collection at a time; builds go on meanwhile).
    pub(super) async fn auto_gc(self: &Arc<Self>) {
        let max = self.max_storage.load(Ordering::SeqCst);
        if max == 0 || self.gc_running.swap(true, Ordering::SeqCst) {
            return;
        }
        // Everything under the data dir counts (blobs, unpacked snapshots,
        // cache mounts, the database): unpacked chains go first, then
        // least-recently-used entries until the blobs fit in what is left.
        let root = self.store.root().to_path_buf();
        let disk = tokio::task::spawn_blocking(move || crate::gc::dir_bytes(&root))
            .await
            .unwrap_or(0);
        if disk <= max {
            self.gc_running.store(false, Ordering::SeqCst);
            return;
        }
        self.prune_chains(false).await;
        let engine = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            // Downloads next: the network gives them back.
            crate::gc::prune_downloads(&engine.store, None);
            let disk = crate::gc::dir_bytes(engine.store.root());
            if disk <= max {
                return Ok(None);
            }
            let blobs: u64 = engine.store.blobs.list()?.iter().map(|b| b.size).sum();
            let other = disk.saturating_sub(blobs);
            let keep = (max / 100 * AUTO_GC_TARGET_PERCENT).saturating_sub(other);
            let opts = PruneOptions {
                all: false,
                keep_bytes: Some(keep),
                ..PruneOptions::default()
            };
            crate::gc::prune(&engine.store, &opts).map(|r| Some((r, other)))
        })
        .await;
        match result {
            Ok(Ok(Some((report, other)))) => {
                if report.bytes_after + other > max {
                    tracing::warn!(
                        bytes = report.bytes_after + other,
                        max,
                        "the data dir is above max-storage after GC: images, projects' last builds and cache mounts are kept; remove images or run `memobuild-ctl prune --all`"
                    );
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "automatic garbage collection failed"),
            Err(e) => tracing::warn!(error = %e, "automatic garbage collection task failed"),
        }
        self.gc_running.store(false, Ordering::SeqCst);
    }

    /// `memobuild-ctl du`.
    pub async fn disk_usage(self: &Arc<Self>) -> Result<Usage, RpcError> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || crate::gc::usage(&engine.store))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    /// `memobuild-ctl prune`.
    pub async fn prune(self: &Arc<Self>, opts: PruneOptions) -> Result<PruneReport, RpcError> {
        // Unpacked chains of other users' projects stay for a user's --all.
        let all = opts.all && opts.owner.is_none();
        let engine = self.clone();
        let report = tokio::task::spawn_blocking(move || {
            let mut report = crate::gc::prune(&engine.store, &opts)?;
            // Downloads are the daemon's, not a user's: an admin's prune
            // (or the daemon's own) drops them.
            if opts.owner.is_none() {
                if let Some((_, freed)) =
                    crate::gc::prune_downloads(&engine.store, opts.unused_for_secs)
                {
                    report.bytes_freed += freed;
                }
            }
            Ok::<_, memobuild_store::StoreError>(report)
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        self.prune_chains(all).await;
        Ok(report)
    }

    /// `memobuild-ctl verify`.
    pub async fn verify_store(self: &Arc<Self>) -> Result<VerifyReport, RpcError> {
        let engine = self.clone();
        tokio::task::spawn_blocking(move || crate::verify::verify(&engine.store))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    /// Drops containerd's unpacked chain snapshots that are not a prefix of a
    /// named image's layers (or, unless `all`, of a project's last builds).
    /// Only while no build runs: a running step may be about to use a chain,
    /// and the sandbox cannot pin one. Never starts containerd for this.
    async fn prune_chains(self: &Arc<Self>, all: bool) {
        if self.store.pinned_builds() > 0 {
            return;
        }
        let Some(sandbox) = self
            .sandbox
            .lock()
            .await
            .as_ref()
            .map(|h| h.sandbox.clone())
        else {
            return;
        };
        let engine = self.clone();
        let keep = tokio::task::spawn_blocking(move || kept_chains(&engine, all))
            .await
            .unwrap_or_default();
        match sandbox.prune_chains(&keep).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "pruned unpacked layer chains in containerd"),
            Err(e) => tracing::warn!(error = %e, "cannot prune containerd snapshots"),
        }
    }
}

/// Chain ids (every prefix) of images and, unless `all`, projects' remembered builds.
fn kept_chains(engine: &Engine, all: bool) -> std::collections::HashSet<String> {
    let store = &engine.store;
    let mut manifests: Vec<String> = store
        .images()
        .unwrap_or_default()
        .into_iter()
        .map(|(_, r)| r.manifest_digest)
        .collect();
    for (_, raw) in store.projects().unwrap_or_default() {
        if all {
            break;
        }
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&raw) {
            for b in ["last", "previous"] {
                if let Some(m) = v[b]["manifest_digest"].as_str() {
                    manifests.push(m.to_string());
                }
            }
        }
    }
    let mut keep = std::collections::HashSet::new();
    for m in manifests {
        if let Ok(image) = memobuild_oci::image::read_image(store, &m) {
            let diff_ids = image.layers.iter().map(|l| l.diff_id.as_str());
            keep.extend(memobuild_sandbox::chain_ids(diff_ids));
        }
    }
    keep
}

/// Cancels builds no client has polled within the lease (clients that died
/// without cancelling).
pub(super) async fn expire_leases(engine: std::sync::Weak<Engine>) {
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let Some(engine) = engine.upgrade() else {
            return;
        };
        for id in engine.flights.abandoned() {
            tracing::warn!(
                build = id,
                "no client has polled the build for {:?}: cancelling it",
                super::flight::LEASE
            );
            let _ = engine.abort_build(id);
        }
    }
}
