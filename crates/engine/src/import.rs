//! Naming images whose blobs a client uploaded (`memobuild-ctl image import`):
//! an OCI manifest as it is, or a `docker save` image given a new OCI manifest.
//! Every blob is verified; nothing is named until the whole image reads back.

use memobuild_oci::image::{read_image, write_manifest_for};
use memobuild_proto::{ImageSummary, ImportSpec, RpcError};
use memobuild_store::{ImageRecord, LayerRecord, Store};

fn err(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(e.to_string())
}

/// Names the image `spec` describes `name`, owned by `owner`.
pub(crate) fn import(
    store: &Store,
    name: &str,
    spec: &ImportSpec,
    owner: Option<u32>,
) -> Result<ImageSummary, RpcError> {
    let image = match spec {
        ImportSpec::Manifest { digest } => read_image(store, digest).map_err(err)?,
        ImportSpec::Docker { config, layers } => {
            let config_bytes = store.blobs.read_verified(config).map_err(err)?;
            let parsed: memobuild_oci::ImageConfig = serde_json::from_slice(&config_bytes)
                .map_err(|e| RpcError::new(format!("the image config is not valid JSON: {e}")))?;
            if parsed.rootfs.diff_ids.len() != layers.len() {
                return Err(RpcError::new(format!(
                    "the image config lists {} layers but the archive has {}",
                    parsed.rootfs.diff_ids.len(),
                    layers.len()
                )));
            }
            let records = layers
                .iter()
                .zip(&parsed.rootfs.diff_ids)
                .map(|(digest, diff_id)| {
                    Ok(LayerRecord {
                        digest: digest.clone(),
                        diff_id: diff_id.clone(),
                        size: store.blobs.size(digest).map_err(err)?,
                        media_type: memobuild_oci::MEDIA_LAYER_TAR.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, RpcError>>()?;
            write_manifest_for(store, config, &records).map_err(err)?
        }
    };
    for layer in &image.layers {
        store.blobs.verify(&layer.digest).map_err(err)?;
    }
    let full = memobuild_oci::normalize_image_name(name);
    let record = ImageRecord {
        manifest_digest: image.manifest_digest.clone(),
        config_digest: image.config_digest.clone(),
        size: image.size,
        tagged_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
        owner,
        repo_digest: None,
    };
    store.put_image(&full, &record).map_err(err)?;
    Ok(ImageSummary {
        name: full,
        manifest_digest: record.manifest_digest,
        config_digest: record.config_digest,
        size: record.size,
        tagged_at: record.tagged_at,
        owner: record.owner,
        repo_digest: None,
    })
}
