//! The parent's layers as a chain of committed containerd snapshots, named by
//! their OCI chain ids, so a chain unpacked once serves every later step on it.
//!
//! Each missing layer is uploaded into containerd's content store and applied
//! by containerd's own Diff service onto an active snapshot of its parent,
//! which is then committed under the chain id. We let containerd apply the tar
//! (rather than untarring into the snapshot ourselves) because its applier is
//! the one BuildKit and `ctr` use: OCI whiteouts and opaque directories,
//! ownership, xattrs, device nodes, hard links and path-escape checks are
//! handled exactly as everywhere else, it verifies the diff id, and it needs
//! nothing but the gRPC socket. The upload costs one extra copy of each layer
//! the first time a chain is built; the uploaded blob is held only by the
//! run's lease, so containerd's GC frees it afterwards.
//!
//! Committed chain snapshots carry `containerd.io/gc.root` (kept across runs
//! and restarts) and `memobuild.chain=<diff id>`. Temporary extraction
//! snapshots carry `memobuild.run=<run id>` like everything else a run creates,
//! so `cleanup_orphans` finds them after a crash.

use super::{LayerInput, Sandbox, SandboxError};
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    AddResourceRequest, ApplyRequest, InfoRequest, Resource, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::Descriptor;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use tokio::io::AsyncReadExt;

const CHUNK: usize = 1 << 20;

/// OCI chain ids of the layers with these diff ids (bottom first):
/// `chain[0] = diff_id[0]`, `chain[n] = sha256(chain[n-1] + " " + diff_id[n])`.
pub fn chain_ids<'a>(diff_ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for diff_id in diff_ids {
        let next = match out.last() {
            None => diff_id.to_string(),
            Some(parent) => {
                let mut h = Sha256::new();
                h.update(parent.as_bytes());
                h.update(b" ");
                h.update(diff_id.as_bytes());
                format!("sha256:{}", hex::encode(h.finalize()))
            }
        };
        out.push(next);
    }
    out
}

impl Sandbox {
    /// Whether the unpacked chain `chain_id` (see [`chain_ids`]) is there,
    /// so a step standing on it needs none of its layers' blobs.
    pub async fn has_chain(&self, chain_id: &str) -> bool {
        self.snapshot_exists(chain_id).await.unwrap_or(false)
    }

    pub(super) async fn snapshot_exists(&self, key: &str) -> Result<bool, SandboxError> {
        let req = StatSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.to_string(),
        };
        match self.client().snapshots().stat(self.req(req)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(SandboxError::rpc("stat snapshot", s)),
        }
    }

    /// Makes sure the snapshot chain of `layers` exists; returns its top chain
    /// id (`None` for no layers) and how many layers had to be unpacked. Work
    /// happens under `lease`.
    pub(super) async fn ensure_chain(
        &self,
        layers: &[LayerInput],
        run_id: &str,
        lease: &str,
    ) -> Result<(Option<String>, u32), SandboxError> {
        let chain = chain_ids(layers.iter().map(|l| l.diff_id.as_str()));
        // Find the deepest chain id already unpacked.
        let mut have = 0;
        for i in (0..chain.len()).rev() {
            if self.snapshot_exists(&chain[i]).await? {
                have = i + 1;
                break;
            }
        }
        for i in have..chain.len() {
            let parent = if i == 0 { "" } else { chain[i - 1].as_str() };
            self.unpack_layer(&layers[i], parent, &chain[i], run_id, lease)
                .await?;
        }
        Ok((chain.last().cloned(), (chain.len() - have) as u32))
    }

    async fn unpack_layer(
        &self,
        layer: &LayerInput,
        parent: &str,
        chain_id: &str,
        run_id: &str,
        lease: &str,
    ) -> Result<(), SandboxError> {
        let started = std::time::Instant::now();
        let size = self.upload(layer, lease).await?;
        let key = format!("mb-extract-{run_id}-{}", hex_tail(chain_id));
        let mounts = self
            .prepare_snapshot(
                &key,
                parent.to_string(),
                run_id,
                lease,
                "prepare snapshot to unpack a layer",
            )
            .await?;
        let result = async {
            let apply = ApplyRequest {
                diff: Some(Descriptor {
                    media_type: layer.media_type.clone(),
                    digest: layer.digest.clone(),
                    size: size as i64,
                    annotations: HashMap::new(),
                }),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            };
            let applied = self
                .client()
                .diff()
                .apply(self.req_leased(apply, lease))
                .await
                .map_err(|s| SandboxError::Layer {
                    digest: layer.digest.clone(),
                    message: format!("containerd could not apply it: {}", s.message()),
                })?
                .into_inner()
                .applied
                .map(|d| d.digest)
                .unwrap_or_default();
            if applied != layer.diff_id {
                return Err(SandboxError::Layer {
                    digest: layer.digest.clone(),
                    message: format!(
                        "its uncompressed content is {applied}, but the image says {}",
                        layer.diff_id
                    ),
                });
            }
            let commit = CommitSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                name: chain_id.to_string(),
                key: key.clone(),
                labels: HashMap::from([
                    ("containerd.io/gc.root".to_string(), unix_now().to_string()),
                    ("memobuild.chain".to_string(), layer.diff_id.clone()),
                ]),
            };
            match self
                .client()
                .snapshots()
                .commit(self.req_leased(commit, lease))
                .await
            {
                Ok(_) => Ok(true),
                // Another run committed the same chain first: use theirs.
                Err(s) if s.code() == Code::AlreadyExists => Ok(false),
                Err(s) => Err(SandboxError::rpc("commit unpacked layer", s)),
            }
        }
        .await;
        if !matches!(result, Ok(true)) {
            let remove = RemoveSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key,
            };
            let _ = self.client().snapshots().remove(self.req(remove)).await;
        }
        result?;
        tracing::debug!(digest = %layer.digest, chain_id, elapsed = ?started.elapsed(), "unpacked layer");
        Ok(())
    }

    /// Adds content `digest` (present or about to be written) to `lease`.
    async fn hold_content(&self, digest: &str, lease: &str) -> Result<(), SandboxError> {
        let add = AddResourceRequest {
            id: lease.to_string(),
            resource: Some(Resource {
                id: digest.to_string(),
                r#type: "content".to_string(),
            }),
        };
        match self.client().leases().add_resource(self.req(add)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(SandboxError::rpc("hold content in the run's lease", s)),
        }
    }

    /// Puts the layer blob into containerd's content store (if not there yet);
    /// returns its size.
    async fn upload(&self, layer: &LayerInput, lease: &str) -> Result<u64, SandboxError> {
        let io = |source| SandboxError::Io {
            path: layer.path.clone(),
            source,
        };
        let mut file = tokio::fs::File::open(&layer.path).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        let info = InfoRequest {
            digest: layer.digest.clone(),
        };
        // Content nothing references may go in containerd's next GC, even
        // between the check below and the apply that reads it: the run's
        // lease holds it first, then we look.
        self.hold_content(&layer.digest, lease).await?;
        match self.client().content().info(self.req(info)).await {
            Ok(_) => return Ok(size),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(SandboxError::rpc("content info", s)),
        }
        let reference = format!("memobuild-{}-{}", layer.digest, super::new_id());
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(4);
        let base = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference,
            total: size as i64,
            expected: layer.digest.clone(),
            offset: 0,
            data: Vec::new(),
            labels: HashMap::new(),
        };
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut client = self.client().content();
        let call = client.write(self.req_leased(stream, lease));
        let feed = async {
            let mut offset = 0u64;
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = file.read(&mut buf[filled..]).await.map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buf.truncate(filled);
                let last = offset + filled as u64 >= size || filled == 0;
                let msg = WriteContentRequest {
                    action: if last {
                        WriteAction::Commit as i32
                    } else {
                        WriteAction::Write as i32
                    },
                    offset: offset as i64,
                    data: buf,
                    ..base.clone()
                };
                offset += filled as u64;
                if tx.send(msg).await.is_err() {
                    break;
                }
                if last {
                    break;
                }
            }
            drop(tx);
            Ok::<u64, SandboxError>(offset)
        };
        let (sent, response) = tokio::join!(feed, async {
            let mut responses = call.await?.into_inner();
            while responses.message().await?.is_some() {}
            Ok::<(), containerd_client::tonic::Status>(())
        });
        let sent = sent?;
        match response {
            Ok(()) => {}
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => {
                return Err(SandboxError::Layer {
                    digest: layer.digest.clone(),
                    message: format!("uploading it to containerd failed: {}", s.message()),
                })
            }
        }
        if sent != size {
            return Err(SandboxError::Layer {
                digest: layer.digest.clone(),
                message: format!(
                    "the blob file changed while it was read ({sent} of {size} bytes)"
                ),
            });
        }
        Ok(size)
    }
}

impl Sandbox {
    /// Removes unpacked chain snapshots that neither `keep` nor any of their
    /// descendants needs (disk GC: pass the chain ids, see [`chain_ids`], of the
    /// layers still worth having unpacked). Snapshots in use by a running step
    /// are kept. Returns how many went.
    pub async fn prune_chains(
        &self,
        keep: &std::collections::HashSet<String>,
    ) -> Result<usize, SandboxError> {
        use containerd_client::services::v1::snapshots::ListSnapshotsRequest;
        let list = ListSnapshotsRequest {
            snapshotter: self.snapshotter.clone(),
            filters: Vec::new(),
        };
        let mut stream = self
            .client()
            .snapshots()
            .list(self.req(list))
            .await
            .map_err(|s| SandboxError::rpc("list snapshots", s))?
            .into_inner();
        // name -> (parent, is a chain snapshot)
        let mut all: HashMap<String, (String, bool)> = HashMap::new();
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|s| SandboxError::rpc("list snapshots", s))?
        {
            for info in msg.info {
                let chain = info.labels.contains_key("memobuild.chain");
                all.insert(info.name, (info.parent, chain));
            }
        }
        // Kept: `keep`, every snapshot that is not a chain (running steps),
        // and all their ancestors.
        let mut protected = std::collections::HashSet::new();
        for (name, (_, chain)) in &all {
            if !chain || keep.contains(name) {
                let mut cur = Some(name.clone());
                while let Some(n) = cur {
                    if !protected.insert(n.clone()) {
                        break;
                    }
                    cur = all
                        .get(&n)
                        .map(|(p, _)| p.clone())
                        .filter(|p| !p.is_empty());
                }
            }
        }
        let mut removed = 0;
        loop {
            let parents: std::collections::HashSet<&String> =
                all.values().map(|(p, _)| p).collect();
            let leaves: Vec<String> = all
                .keys()
                .filter(|n| !protected.contains(*n) && !parents.contains(n))
                .cloned()
                .collect();
            if leaves.is_empty() {
                break;
            }
            for leaf in leaves {
                let remove = RemoveSnapshotRequest {
                    snapshotter: self.snapshotter.clone(),
                    key: leaf.clone(),
                };
                match self.client().snapshots().remove(self.req(remove)).await {
                    Ok(_) => removed += 1,
                    Err(s) if s.code() == Code::NotFound => {}
                    // In use after all (a step started meanwhile): keep it.
                    Err(s) => tracing::debug!(snapshot = leaf, "not pruned: {}", s.message()),
                }
                all.remove(&leaf);
            }
        }
        if removed > 0 {
            self.collect_garbage().await;
        }
        Ok(removed)
    }

    /// Runs containerd's garbage collection now: a removed snapshot leaves
    /// only its metadata at once, its directory goes when the collector runs
    /// (which containerd otherwise schedules after many more changes).
    /// Deleting a lease with `sync` makes the collection run before the call
    /// returns.
    async fn collect_garbage(&self) {
        use super::{CreateLeaseRequest, DeleteLeaseRequest};
        let id = format!("memobuild-gc-{}", std::process::id());
        let create = CreateLeaseRequest {
            id: id.clone(),
            labels: HashMap::new(),
        };
        if let Err(s) = self.client().leases().create(self.req(create)).await {
            tracing::warn!(
                "cannot start containerd's garbage collection: {}",
                s.message()
            );
            return;
        }
        let delete = DeleteLeaseRequest { id, sync: true };
        if let Err(s) = self.client().leases().delete(self.req(delete)).await {
            tracing::warn!("containerd's garbage collection: {}", s.message());
        }
    }
}

fn hex_tail(digest: &str) -> &str {
    let hex = digest.rsplit(':').next().unwrap_or(digest);
    &hex[..hex.len().min(16)]
}

pub(super) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
