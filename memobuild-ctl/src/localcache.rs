//! `--cache-to type=local,dest=DIR[,mode=min|max]` and `--cache-from
//! type=local,src=DIR`: the step cache in a directory, written and read by
//! this client (the daemon never opens users' files). DIR is an OCI image
//! layout holding one manifest in the registry cache's format (docs/CACHE.md,
//! "Remote cache"): its config maps step keys to layers, its layers are the
//! blobs. Exporting merges with what DIR held; importing uploads the layers
//! the daemon lacks, and the daemon checks each one's diff_id.

use crate::connect::{ctx, rpc_failed};
use memobuild_proto::{
    BlobRef, BuildId, CacheLayer, CacheStep, MemobuildClient, RpcError, BLOB_CHUNK_BYTES,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

const MEDIA_CACHE: &str = "application/vnd.memobuild.cache.v1+json";
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCache {
    pub dir: PathBuf,
    pub max: bool,
}

/// `Some` for a `type=local` spec of `flag` (`--cache-from` takes `src=`,
/// `--cache-to` `dest=` and `mode=`).
pub fn parse(flag: &str, spec: &str) -> Result<Option<LocalCache>, RpcError> {
    if !spec.split(',').any(|p| p == "type=local") {
        return Ok(None);
    }
    let to = flag == "--cache-to";
    let usage = if to {
        "use --cache-to type=local,dest=DIR[,mode=min|max]"
    } else {
        "use --cache-from type=local,src=DIR"
    };
    let mut dir = None;
    let mut max = false;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("type", "local")) => {}
            Some(("dest", d)) if to && !d.is_empty() => dir = Some(PathBuf::from(d)),
            Some(("src", d)) if !to && !d.is_empty() => dir = Some(PathBuf::from(d)),
            Some(("mode", "max")) if to => max = true,
            Some(("mode", "min")) if to => max = false,
            _ => {
                return Err(RpcError::with_hint(
                    format!("{flag} {spec}: {part:?} is not understood"),
                    usage,
                ))
            }
        }
    }
    let dir =
        dir.ok_or_else(|| RpcError::with_hint(format!("{flag} {spec} names no directory"), usage))?;
    Ok(Some(LocalCache { dir, max }))
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs").join(digest.replacen(':', "/", 1))
}

fn io(dir: &Path, e: impl std::fmt::Display) -> RpcError {
    RpcError::new(format!("local cache {}: {e}", dir.display()))
}

/// The cache index (key -> layer) DIR holds; `None` when DIR has no cache.
/// A cache directory's step index: key -> layer, and key -> when the step
/// was first built (optional; older caches lack it).
#[derive(Default, serde::Deserialize)]
struct Index {
    steps: BTreeMap<String, Option<CacheLayer>>,
    #[serde(default)]
    created: BTreeMap<String, i64>,
}

fn read_index(dir: &Path) -> Result<Option<Index>, RpcError> {
    let index = match std::fs::read(dir.join("index.json")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(dir, e)),
    };
    let index: serde_json::Value =
        serde_json::from_slice(&index).map_err(|e| io(dir, format!("index.json: {e}")))?;
    let Some(manifest) = index["manifests"][0]["digest"].as_str() else {
        return Ok(None);
    };
    let manifest = read_verified(dir, manifest)?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest).map_err(|e| io(dir, format!("manifest: {e}")))?;
    if manifest["config"]["mediaType"].as_str() != Some(MEDIA_CACHE) {
        return Err(RpcError::with_hint(
            format!(
                "{} is not a memobuild cache (its config is not a step index)",
                dir.display()
            ),
            "point type=local at a directory used only for memobuild's cache",
        ));
    }
    let config = read_verified(
        dir,
        manifest["config"]["digest"].as_str().unwrap_or_default(),
    )?;
    let index: Index =
        serde_json::from_slice(&config).map_err(|e| io(dir, format!("cache index: {e}")))?;
    Ok(Some(index))
}

/// A blob of DIR, checked against its digest.
fn read_verified(dir: &Path, digest: &str) -> Result<Vec<u8>, RpcError> {
    let bytes =
        std::fs::read(blob_path(dir, digest)).map_err(|e| io(dir, format!("{digest}: {e}")))?;
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if actual != digest {
        return Err(io(
            dir,
            format!("blob {digest} is corrupt (it hashes to {actual})"),
        ));
    }
    Ok(bytes)
}

/// Before the build: records DIR's steps in the daemon. A DIR without a
/// cache is a warning, as with BuildKit.
pub async fn import(
    client: &MemobuildClient,
    cache: &LocalCache,
    mut note: impl FnMut(&str),
) -> Result<(), RpcError> {
    let dir = &cache.dir;
    let Some(Index { steps, created }) = read_index(dir)? else {
        note(&format!(
            "warning: local cache {} holds no cache yet",
            dir.display()
        ));
        return Ok(());
    };
    let mut uploaded = 0;
    let mut done = std::collections::BTreeSet::new();
    for layer in steps.values().flatten() {
        if !done.insert(layer.digest.clone()) {
            continue;
        }
        // Already in the daemon's store: nothing to send.
        if client
            .read_blob(ctx(), layer.digest.clone(), 0, 1)
            .await
            .map_err(rpc_failed)?
            .is_ok()
        {
            continue;
        }
        upload(client, &blob_path(dir, &layer.digest), &layer.digest).await?;
        uploaded += 1;
    }
    let steps: Vec<CacheStep> = steps
        .into_iter()
        .map(|(key, layer)| CacheStep {
            created_at: created.get(&key).copied(),
            key,
            layer,
        })
        .collect();
    let n = client
        .import_cache_steps(ctx(), steps)
        .await
        .map_err(rpc_failed)??;
    note(&format!(
        "local cache {}: {n} steps recorded ({uploaded} layers uploaded)",
        dir.display()
    ));
    Ok(())
}

pub(crate) async fn upload(
    client: &MemobuildClient,
    path: &Path,
    digest: &str,
) -> Result<(), RpcError> {
    let mut file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let id = client.upload_begin(ctx()).await.map_err(rpc_failed)??;
    let mut buf = vec![0u8; BLOB_CHUNK_BYTES as usize];
    loop {
        let n = file.read(&mut buf).map_err(|e| io(path, e))?;
        if n == 0 {
            break;
        }
        client
            .upload_chunk(ctx(), id, memobuild_proto::ByteBuf::from(&buf[..n]))
            .await
            .map_err(rpc_failed)??;
    }
    // The daemon keeps the blob only if it hashes to `digest`.
    client
        .upload_commit(ctx(), id, digest.to_string())
        .await
        .map_err(rpc_failed)??;
    Ok(())
}

/// After the build: writes its steps into DIR, merged over what DIR held.
pub async fn export(
    client: &MemobuildClient,
    build: BuildId,
    cache: &LocalCache,
    mut note: impl FnMut(&str),
) -> Result<(), RpcError> {
    let dir = &cache.dir;
    let steps = client
        .cache_steps(ctx(), build, cache.max)
        .await
        .map_err(rpc_failed)??;
    std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(|e| io(dir, e))?;
    let Index {
        steps: mut index,
        mut created,
    } = read_index(dir).ok().flatten().unwrap_or_default();
    let n = steps.len();
    let mut written = 0;
    let staging = tempfile::tempdir_in(dir).map_err(|e| io(dir, e))?;
    for step in &steps {
        if let Some(l) = &step.layer {
            let path = blob_path(dir, &l.digest);
            if std::fs::metadata(&path).is_ok_and(|m| m.len() == l.size) {
                continue;
            }
            let blob = BlobRef {
                digest: l.digest.clone(),
                size: l.size,
                media_type: l.media_type.clone(),
            };
            drop(crate::output::fetch(client, &blob, staging.path()).await?);
            let fetched = crate::output::fetched_path(staging.path(), &blob.digest);
            std::fs::rename(&fetched, &path).map_err(|e| io(dir, e))?;
            written += 1;
        }
    }
    for step in steps {
        if let Some(t) = step.created_at {
            created.insert(step.key.clone(), t);
        }
        index.insert(step.key, step.layer);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "version": 1,
        "steps": index,
        "created": created,
    }))
    .map_err(|e| io(dir, e))?;
    let config_digest = put(dir, &config)?;
    let mut layers: BTreeMap<&str, &CacheLayer> = BTreeMap::new();
    for l in index.values().flatten() {
        layers.insert(&l.digest, l);
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CACHE, "digest": config_digest, "size": config.len()},
        "layers": layers.values().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.size,
        })).collect::<Vec<_>>(),
        "annotations": {"org.opencontainers.image.description": "memobuild step cache"},
    }))
    .map_err(|e| io(dir, e))?;
    let manifest_digest = put(dir, &manifest)?;
    let index_json = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "cache"},
        }],
    });
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| io(dir, e))?;
    // index.json last, by rename: a reader never sees it name missing blobs.
    let tmp = dir.join("index.json.partial");
    std::fs::write(&tmp, serde_json::to_vec(&index_json).unwrap_or_default())
        .map_err(|e| io(dir, e))?;
    std::fs::rename(&tmp, dir.join("index.json")).map_err(|e| io(dir, e))?;
    note(&format!(
        "local cache {}: wrote {n} steps ({written} layers written)",
        dir.display()
    ));
    Ok(())
}

/// Writes `bytes` as a blob of DIR; returns its digest.
fn put(dir: &Path, bytes: &[u8]) -> Result<String, RpcError> {
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    std::fs::write(blob_path(dir, &digest), bytes).map_err(|e| io(dir, e))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(parse("--cache-to", "type=registry,ref=x").unwrap(), None);
        assert_eq!(
            parse("--cache-to", "type=local,dest=d,mode=max").unwrap(),
            Some(LocalCache {
                dir: "d".into(),
                max: true
            })
        );
        assert_eq!(
            parse("--cache-from", "type=local,src=d").unwrap(),
            Some(LocalCache {
                dir: "d".into(),
                max: false
            })
        );
        assert!(parse("--cache-from", "type=local,dest=d").is_err());
        assert!(parse("--cache-to", "type=local").is_err());
        assert!(parse("--cache-to", "type=local,dest=d,compression=zstd").is_err());
    }
}
