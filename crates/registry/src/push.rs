//! Pushing a stored image: every blob the registry lacks (HEAD first, then a
//! cross-repository mount from where its base came from, then a chunked
//! upload), the manifest last, byte for byte as stored, so the pushed image
//! has the digest the build printed.

use super::blobs::Sent;
use super::{RegistryError, Session};
use memobuild_oci::image::read_image;
use memobuild_oci::reference::{self, Reference};
use memobuild_store::Store;
use std::sync::Arc;

/// What a push did, for the progress line.
#[derive(Debug, Default, Clone, Copy)]
pub struct PushStats {
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    pub present: usize,
    pub mounted: usize,
}

impl Session {
    /// Pushes image `manifest_digest` to `target`; `mount_from` are repositories
    /// (of the build's base images) that may hold some of its blobs already.
    pub async fn push(
        &self,
        store: &Arc<Store>,
        manifest_digest: &str,
        target: &str,
        mount_from: &[String],
    ) -> Result<PushStats, RegistryError> {
        let reference = reference::parse(target)?;
        let sources: Vec<Reference> = mount_from
            .iter()
            .filter_map(|n| reference::parse(n).ok())
            .collect();
        let (image, manifest) = {
            let (store, digest, what) = (
                store.clone(),
                manifest_digest.to_string(),
                target.to_string(),
            );
            tokio::task::spawn_blocking(move || {
                let image = read_image(&store, &digest)
                    .map_err(|e| RegistryError::new(&what, e.to_string()))?;
                let bytes = store
                    .blobs
                    .read_verified(&digest)
                    .map_err(|e| RegistryError::new(&what, e.to_string()))?;
                Ok::<_, RegistryError>((image, bytes))
            })
            .await
            .map_err(|e| RegistryError::new(target, e.to_string()))??
        };
        self.client()
            .store_auth_if_needed(reference.resolve_registry(), &self.auth(&reference))
            .await;
        let mut stats = PushStats::default();
        let blobs = image
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .chain(std::iter::once(image.config_digest.clone()));
        for digest in blobs {
            match self.send_blob(store, &reference, &digest, &sources).await? {
                Sent::Present => stats.present += 1,
                Sent::Mounted => stats.mounted += 1,
                Sent::Uploaded(n) => {
                    stats.uploaded += 1;
                    stats.uploaded_bytes += n;
                }
            }
        }
        self.put_manifest(&reference, manifest).await?;
        // The name, if it is one in the image store for this image, now has
        // this digest in the registry (the manifest went byte for byte).
        let (store, name, digest) = (
            store.clone(),
            reference::store_name(target),
            manifest_digest.to_string(),
        );
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = store.set_repo_digest(&name, &digest, &digest) {
                tracing::warn!("recording the registry digest of {name}: {e}");
            }
        })
        .await;
        Ok(stats)
    }

    /// PUTs manifest bytes under `reference`'s tag, with the media type they declare.
    pub(super) async fn put_manifest(
        &self,
        reference: &Reference,
        bytes: Vec<u8>,
    ) -> Result<(), RegistryError> {
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::new(reference.whole(), e.to_string()))?;
        let media = json["mediaType"]
            .as_str()
            .unwrap_or(super::pull::MEDIA_MANIFEST)
            .to_string();
        let content_type =
            reqwest_header(&media).map_err(|e| RegistryError::new(reference.whole(), e))?;
        let bytes = bytes::Bytes::from(bytes);
        self.retry(reference, &reference.whole(), || {
            self.client()
                .push_manifest_raw(reference, bytes.clone(), content_type.clone())
        })
        .await?;
        Ok(())
    }
}

fn reqwest_header(media: &str) -> Result<http::HeaderValue, String> {
    http::HeaderValue::from_str(media).map_err(|e| format!("media type {media:?}: {e}"))
}
