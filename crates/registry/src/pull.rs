//! Pulling an image into the image store: the manifest (through an index or
//! manifest list to this build's platform), its config and layers, each
//! verified by digest, then the image named as `FROM` will look it up.

use super::{RegistryError, Session};
use futures::{StreamExt, TryStreamExt};
use memobuild_oci::image::{read_image, StoredImage};
use memobuild_oci::reference::{self, Reference};
use memobuild_store::{ImageRecord, Store};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;

pub(crate) const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const MEDIA_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const MEDIA_DOCKER_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v2+json";

/// Layer blobs the image store, containerd and the filesystem view can read:
/// OCI and Docker; gzip, zstd or plain tar.
const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
];

/// Layers downloaded at once.
const PARALLEL_DOWNLOADS: usize = 3;

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Session {
    /// Pulls `name` (as written in FROM) and names it in the image store.
    pub async fn pull(&self, store: &Arc<Store>, name: &str) -> Result<StoredImage, RegistryError> {
        let reference = reference::parse(name)?;
        let (bytes, digest) = self.fetch_manifest(&reference).await?;
        // What the name resolves to in the registry, an index or the image.
        let repo_digest = digest.clone();
        let json = parse_json(&reference, &bytes)?;
        let (bytes, digest, json) = if is_index(&json) {
            let entry = self.platform.select(&json).map_err(|m| {
                RegistryError::new(reference.whole(), m).hint("pick one with --platform")
            })?;
            let chosen = entry["digest"].as_str().unwrap_or_default().to_string();
            let by_digest = reference.clone_with_digest(chosen);
            let (bytes, digest) = self.fetch_manifest(&by_digest).await?;
            let json = parse_json(&reference, &bytes)?;
            (bytes, digest, json)
        } else {
            (bytes, digest, json)
        };
        let (config, layers) = blobs_of(&reference, &json)?;
        self.fetch_blob(store, &reference, &config).await?;
        // Owned digests: a closure over borrowed ones is not `Send` enough for tokio::spawn.
        let reference = &reference;
        let downloads = layers
            .into_iter()
            .map(|layer| async move { self.fetch_blob(store, reference, &layer).await });
        futures::stream::iter(downloads)
            .buffer_unordered(PARALLEL_DOWNLOADS)
            .try_collect::<Vec<()>>()
            .await?;
        let (store, name) = (store.clone(), reference::store_name(name));
        let what = reference.whole();
        tokio::task::spawn_blocking(move || {
            let (stored, _) = store
                .blobs
                .put_bytes(&bytes)
                .map_err(|e| RegistryError::new(&what, e.to_string()))?;
            debug_assert_eq!(stored, digest);
            let image = read_image(&store, &digest)
                .map_err(|e| RegistryError::new(&what, e.to_string()))?;
            name_image(&store, &name, &image, Some(&repo_digest))
                .map_err(|e| RegistryError::new(&what, e))?;
            Ok(image)
        })
        .await
        .map_err(|e| RegistryError::new(name_of(reference), e.to_string()))?
    }

    /// The manifest or index at `reference`, checked against the digest it
    /// was asked by (a tag's digest is what the bytes hash to).
    pub(super) async fn fetch_manifest(
        &self,
        reference: &Reference,
    ) -> Result<(bytes::Bytes, String), RegistryError> {
        let auth = self.auth(reference);
        let accept = [
            MEDIA_INDEX,
            MEDIA_MANIFEST,
            MEDIA_DOCKER_LIST,
            MEDIA_DOCKER_MANIFEST,
        ];
        let what = reference.whole();
        let (bytes, _) = self
            .retry(reference, &what, || {
                self.client().pull_manifest_raw(reference, &auth, &accept)
            })
            .await?;
        let digest = sha256(&bytes);
        if let Some(wanted) = reference.digest() {
            if wanted != digest {
                return Err(RegistryError::new(
                    what,
                    format!(
                        "the registry sent a manifest whose digest is {digest}; it was rejected"
                    ),
                ));
            }
        }
        Ok((bytes, digest))
    }
}

fn name_of(reference: &Reference) -> String {
    reference.whole()
}

fn parse_json(reference: &Reference, bytes: &[u8]) -> Result<serde_json::Value, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| {
        RegistryError::new(
            reference.whole(),
            format!("the manifest is not valid JSON: {e}"),
        )
    })
}

pub(crate) fn is_index(json: &serde_json::Value) -> bool {
    matches!(
        json["mediaType"].as_str(),
        Some(MEDIA_INDEX) | Some(MEDIA_DOCKER_LIST)
    ) || (json.get("manifests").is_some() && json.get("layers").is_none())
}

/// The config digest and layer digests of an image manifest, after checking
/// it is one we can build on.
fn blobs_of(
    reference: &Reference,
    json: &serde_json::Value,
) -> Result<(String, Vec<String>), RegistryError> {
    let what = reference.whole();
    if json["schemaVersion"].as_u64() != Some(2) {
        return Err(RegistryError::new(
            what,
            "the image uses Docker's old schema 1 manifest, which is not supported",
        )
        .hint("push the image again with a current docker or skopeo"));
    }
    let config = json["config"]["digest"]
        .as_str()
        .ok_or_else(|| RegistryError::new(&what, "the manifest names no config"))?
        .to_string();
    let mut layers = Vec::new();
    for layer in json["layers"].as_array().into_iter().flatten() {
        let media = layer["mediaType"].as_str().unwrap_or_default();
        if !LAYER_TYPES.contains(&media) {
            return Err(RegistryError::new(
                &what,
                format!("layer media type {media:?} is not supported (only tar, tar+gzip and tar+zstd layers)"),
            ));
        }
        let digest = layer["digest"]
            .as_str()
            .ok_or_else(|| RegistryError::new(&what, "a layer has no digest"))?;
        layers.push(digest.to_string());
    }
    Ok((config, layers))
}

/// Points `name` at `image` in the image store; `repo_digest`: the digest
/// the registry holds for the name ([`ImageRecord::repo_digest`]).
pub fn name_image(
    store: &Store,
    name: &str,
    image: &StoredImage,
    repo_digest: Option<&str>,
) -> Result<(), String> {
    // A name keeps its owner when a pull re-points it (the engine pulls only
    // names the caller may change), as `docker pull` re-points a local tag;
    // a new name is a base image: shared, an admin's to remove.
    let owner = store
        .image(name)
        .map_err(|e| e.to_string())?
        .and_then(|r| r.owner);
    let record = ImageRecord {
        manifest_digest: image.manifest_digest.clone(),
        config_digest: image.config_digest.clone(),
        size: image.size,
        tagged_at: memobuild_store::now_secs(),
        owner,
        repo_digest: repo_digest.map(String::from),
    };
    store.put_image(name, &record).map_err(|e| e.to_string())
}
