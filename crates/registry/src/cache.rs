//! The step cache in a registry (docs/CACHE.md, "Remote cache"): one OCI
//! manifest at the cache reference whose config blob maps step cache keys to
//! layer records and whose layers are every layer those steps made, so the
//! registry keeps them. Reading verifies each layer's digest and its diff_id
//! before recording the step locally.

use super::{RegistryError, Session};
use memobuild_oci::reference::{self, Reference};
use memobuild_store::{LayerRecord, StepRecord, Store};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

/// Media type of the cache's config blob (the key -> layer map).
pub(crate) const MEDIA_CACHE: &str = "application/vnd.memobuild.cache.v1+json";

/// Docker's image config media type (OCI's is `memobuild_oci::MEDIA_CONFIG`).
const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The config blob of a remote cache.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheIndex {
    pub version: u32,
    /// Step cache key (hex BLAKE3, docs/CACHE.md) -> the layer the step added,
    /// `null` for steps that only change the config.
    pub steps: BTreeMap<String, Option<LayerRecord>>,
    /// Step cache key -> when its result was first built (Unix seconds):
    /// an importing host's image history gets the same times, so it is the
    /// same image. Optional: indexes written before it lack it (their steps
    /// count as built when imported), and readers that do not know it
    /// ignore it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub created: BTreeMap<String, i64>,
}

/// A remote cache read at the start of a build.
pub struct RemoteCache {
    pub reference: Reference,
    pub index: CacheIndex,
}

impl Session {
    /// Reads the cache index at `name`; an empty index when there is none yet.
    pub async fn load_cache(
        &self,
        store: &Arc<Store>,
        name: &str,
    ) -> Result<RemoteCache, RegistryError> {
        let reference = reference::parse(name)?;
        let bytes = match self.fetch_manifest(&reference).await {
            Ok((bytes, _)) => bytes,
            Err(e) if e.kind == memobuild_proto::ErrorKind::NotFound => {
                return Ok(RemoteCache {
                    reference,
                    index: CacheIndex::default(),
                })
            }
            Err(e) => return Err(e),
        };
        let manifest: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::new(name, format!("cache manifest: {e}")))?;
        if manifest["config"]["mediaType"].as_str() != Some(MEDIA_CACHE) {
            // An image: its config may carry an inline cache.
            let index = self.load_inline_cache(store, &reference, manifest).await?;
            return Ok(RemoteCache { reference, index });
        }
        let config = manifest["config"]["digest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        self.fetch_blob(store, &reference, &config).await?;
        let store = store.clone();
        let index = tokio::task::spawn_blocking(move || {
            let bytes = store
                .blobs
                .read_verified(&config)
                .map_err(|e| e.to_string())?;
            serde_json::from_slice::<CacheIndex>(&bytes).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| RegistryError::new(name, e.to_string()))?
        .map_err(|e| RegistryError::new(name, format!("cache index: {e}")))?;
        Ok(RemoteCache { reference, index })
    }

    /// The inline cache (docs/CACHE.md, "Inline cache") in the config of the
    /// image `manifest` (an index: this build's platform's image), keeping
    /// only the steps whose layer is one of that image's layers, so every
    /// layer it hands over is in the image's repository.
    async fn load_inline_cache(
        &self,
        store: &Arc<Store>,
        reference: &Reference,
        manifest: serde_json::Value,
    ) -> Result<CacheIndex, RegistryError> {
        let name = reference.whole();
        let manifest = if super::pull::is_index(&manifest) {
            let entry = self
                .platform
                .select(&manifest)
                .map_err(|m| RegistryError::new(&name, m))?;
            let chosen = entry["digest"].as_str().unwrap_or_default().to_string();
            let (bytes, _) = self
                .fetch_manifest(&reference.clone_with_digest(chosen))
                .await?;
            serde_json::from_slice(&bytes)
                .map_err(|e| RegistryError::new(&name, format!("image manifest: {e}")))?
        } else {
            manifest
        };
        let not_inline = || {
            RegistryError::new(
                &name,
                "is neither a memobuild cache nor an image with an inline cache",
            )
            .hint("build and push the image with --cache-to type=inline, or point --cache-from at a --cache-to type=registry,ref=REF cache")
        };
        let config = match manifest["config"]["mediaType"].as_str() {
            Some(memobuild_oci::MEDIA_CONFIG | MEDIA_DOCKER_CONFIG) => manifest["config"]["digest"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            _ => return Err(not_inline()),
        };
        let layers: std::collections::BTreeSet<&str> = manifest["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["digest"].as_str())
            .collect();
        self.fetch_blob(store, reference, &config).await?;
        let store = store.clone();
        let value = tokio::task::spawn_blocking(move || {
            let bytes = store
                .blobs
                .read_verified(&config)
                .map_err(|e| e.to_string())?;
            let mut config: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            Ok::<_, String>(
                config
                    .get_mut(memobuild_oci::image::INLINE_CACHE_KEY)
                    .map(serde_json::Value::take),
            )
        })
        .await
        .map_err(|e| RegistryError::new(&name, e.to_string()))?
        .map_err(|e| RegistryError::new(&name, format!("image config: {e}")))?;
        let Some(value) = value else {
            return Err(not_inline());
        };
        let mut index: CacheIndex = serde_json::from_value(value)
            .map_err(|e| RegistryError::new(&name, format!("inline cache: {e}")))?;
        if index.version != 1 {
            return Err(RegistryError::new(
                &name,
                format!(
                    "inline cache version {} is not one this memobuild reads",
                    index.version
                ),
            ));
        }
        index.steps.retain(|_, layer| {
            layer
                .as_ref()
                .is_none_or(|l| layers.contains(l.digest.as_str()))
        });
        Ok(index)
    }

    /// Records step `key` from a remote cache: downloads its layer (digest
    /// verified on the way in), checks the layer's diff_id, then writes the
    /// step record, marked imported and owned by `importer` (the uid whose
    /// build imports it). `Ok(false)` when the cache does not have the step.
    pub async fn import_step(
        &self,
        store: &Arc<Store>,
        cache: &RemoteCache,
        key: &str,
        importer: Option<u32>,
    ) -> Result<bool, RegistryError> {
        let Some(layer) = cache.index.steps.get(key) else {
            return Ok(false);
        };
        if let Some(layer) = layer {
            self.fetch_blob(store, &cache.reference, &layer.digest)
                .await?;
        }
        let created = cache.index.created.get(key).copied();
        let (store, key, layer) = (store.clone(), key.to_string(), layer.clone());
        let what = format!("{} step {key}", cache.reference.whole());
        tokio::task::spawn_blocking(move || {
            if let Some(layer) = &layer {
                check_diff_id(&store, layer)?;
            }
            let record = StepRecord {
                layer,
                created_at: created.unwrap_or_else(memobuild_store::now_secs),
                owner: importer,
                imported: true,
            };
            store.put_step(&key, &record).map_err(|e| e.to_string())?;
            // Newest in LRU order: GC keeps it for the build about to use it.
            store.note_used(&key);
            Ok::<(), String>(())
        })
        .await
        .map_err(|e| RegistryError::new(&what, e.to_string()))?
        .map_err(|e| RegistryError::new(&what, e))?;
        Ok(true)
    }

    /// Writes `steps` (key -> layer, all in the store) to the cache at `name`,
    /// merged over what `previous` held. Returns how many blobs were uploaded.
    pub async fn export_cache(
        &self,
        store: &Arc<Store>,
        name: &str,
        steps: BTreeMap<String, Option<LayerRecord>>,
        previous: Option<&CacheIndex>,
    ) -> Result<usize, RegistryError> {
        let reference = reference::parse(name)?;
        self.client()
            .store_auth_if_needed(reference.resolve_registry(), &self.auth(&reference))
            .await;
        let mut uploaded = 0;
        let mut sent = std::collections::BTreeSet::new();
        for layer in steps.values().flatten() {
            if sent.insert(layer.digest.clone()) {
                let how = self
                    .send_blob(store, &reference, &layer.digest, &[])
                    .await?;
                uploaded += usize::from(matches!(how, super::blobs::Sent::Uploaded(_)));
            }
        }
        let created = {
            let (store, keys) = (store.clone(), steps.keys().cloned().collect::<Vec<_>>());
            tokio::task::spawn_blocking(move || {
                keys.into_iter()
                    .filter_map(|key| match store.lookup_step(&key) {
                        Ok(memobuild_store::Lookup::Hit(r)) => Some((key, r.created_at)),
                        _ => None,
                    })
                    .collect::<BTreeMap<String, i64>>()
            })
            .await
            .map_err(|e| RegistryError::new(name, e.to_string()))?
        };
        let mut index = previous.cloned().unwrap_or_default();
        index.version = 1;
        index.created.extend(created);
        index.steps.extend(steps);
        let config =
            serde_json::to_vec(&index).map_err(|e| RegistryError::new(name, e.to_string()))?;
        let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config)));
        let config_size = config.len();
        let bytes = bytes::Bytes::from(config);
        self.retry(&reference, name, || {
            self.client()
                .push_blob(&reference, bytes.clone(), &config_digest)
        })
        .await?;
        let manifest = cache_manifest(&index, &config_digest, config_size);
        self.put_manifest(&reference, manifest).await?;
        Ok(uploaded)
    }
}

/// The manifest naming the index and every layer it refers to.
fn cache_manifest(index: &CacheIndex, config_digest: &str, config_size: usize) -> Vec<u8> {
    let mut layers: BTreeMap<&str, &LayerRecord> = BTreeMap::new();
    for layer in index.steps.values().flatten() {
        layers.insert(&layer.digest, layer);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": super::pull::MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CACHE, "digest": config_digest, "size": config_size},
        "layers": layers.values().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.size,
        })).collect::<Vec<_>>(),
        "annotations": {"org.opencontainers.image.description": "memobuild step cache"},
    });
    serde_json::to_vec(&manifest).unwrap_or_default()
}

/// The uncompressed layer must hash to the diff_id the cache claims, or the
/// images built from it would name a filesystem they do not hold.
fn check_diff_id(store: &Store, layer: &LayerRecord) -> Result<(), String> {
    let mut reader =
        memobuild_oci::layer::open_layer(&store.blobs, &layer.digest).map_err(|e| e.to_string())?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("layer {} does not decompress: {e}", layer.digest))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != layer.diff_id {
        return Err(format!(
            "layer {} uncompresses to {actual}, not the diff_id {} the cache claims; the entry was rejected",
            layer.digest, layer.diff_id
        ));
    }
    Ok(())
}
