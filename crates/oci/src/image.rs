//! Images: writing a manifest and config for a built stage, and reading a stored
//! image back (for `FROM name` and for `-o` outputs).

use super::{ImageConfig, OciError, MEDIA_CONFIG};
use memobuild_store::{LayerRecord, Store};
use oci_spec::image::{Descriptor, ImageManifest, ImageManifestBuilder, MediaType};
use std::str::FromStr;

/// A stored image: where its manifest and config are, and its layers in order.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub manifest_digest: String,
    pub config_digest: String,
    pub config: ImageConfig,
    pub layers: Vec<LayerRecord>,
    /// Manifest + config + layers.
    pub size: u64,
}

/// Writes `config` (whose rootfs must list `layers`' diff_ids) and a manifest
/// naming it and `layers`, with `annotations` (`--annotation`; none leaves
/// the manifest without an `annotations` field), into the blob store.
pub fn write_image_annotated(
    store: &Store,
    config: &ImageConfig,
    layers: &[LayerRecord],
    annotations: &std::collections::BTreeMap<String, String>,
) -> Result<StoredImage, OciError> {
    write_image_with(
        store,
        config,
        layers,
        &ImageExtras {
            annotations,
            inline_cache: None,
            rewritten: None,
        },
    )
}

/// The image config's top-level key of an inline step cache
/// (`--cache-to type=inline`; docs/CACHE.md, "Inline cache"), as BuildKit's
/// `moby.buildkit.cache.v0`.
pub const INLINE_CACHE_KEY: &str = "dev.memobuild.cache.v0";

/// The config with an inline cache after its own fields (their order kept,
/// so the JSON is as stable as the config's).
#[derive(serde::Serialize)]
struct WithInlineCache<'a> {
    #[serde(flatten)]
    config: &'a ImageConfig,
    #[serde(rename = "dev.memobuild.cache.v0")]
    cache: &'a serde_json::Value,
}

/// The layer annotation BuildKit's `rewrite-timestamp` writes on each layer
/// whose times it clamped to SOURCE_DATE_EPOCH (value: the epoch, seconds).
pub const REWRITTEN_TIMESTAMP: &str = "buildkit/rewritten-timestamp";

/// What an image carries besides its config and layers.
pub struct ImageExtras<'a> {
    /// Annotations of the manifest (`--annotation`; none leaves the manifest
    /// without an `annotations` field).
    pub annotations: &'a std::collections::BTreeMap<String, String>,
    /// An inline step cache, in the config under [`INLINE_CACHE_KEY`].
    pub inline_cache: Option<&'a serde_json::Value>,
    /// `Some((from, epoch))`: the layers from index `from` on (those the
    /// build made, not the base image's) carry [`REWRITTEN_TIMESTAMP`] =
    /// `epoch`, as BuildKit's do.
    pub rewritten: Option<(usize, i64)>,
}

/// [`write_image_annotated`] with everything [`ImageExtras`] can add.
pub fn write_image_with(
    store: &Store,
    config: &ImageConfig,
    layers: &[LayerRecord],
    extras: &ImageExtras<'_>,
) -> Result<StoredImage, OciError> {
    let config_bytes = match extras.inline_cache {
        None => serde_json::to_vec(config),
        Some(cache) => serde_json::to_vec(&WithInlineCache { config, cache }),
    }
    .map_err(|e| OciError::Invalid(format!("image config: {e}")))?;
    let (config_digest, config_size) = store.blobs.put_bytes(&config_bytes)?;
    let mut manifest = build_manifest(&config_digest, config_size, layers)?;
    if let Some((from, epoch)) = extras.rewritten {
        let mut descriptors = manifest.layers().clone();
        for d in descriptors.iter_mut().skip(from) {
            let mut a = d.annotations().clone().unwrap_or_default();
            a.insert(REWRITTEN_TIMESTAMP.to_string(), epoch.to_string());
            d.set_annotations(Some(a));
        }
        manifest.set_layers(descriptors);
    }
    if !extras.annotations.is_empty() {
        manifest.set_annotations(Some(
            extras
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ));
    }
    let manifest_bytes = serde_json::to_vec(&manifest)
        .map_err(|e| OciError::Invalid(format!("image manifest: {e}")))?;
    let (manifest_digest, manifest_size) = store.blobs.put_bytes(&manifest_bytes)?;
    let layer_bytes: u64 = layers.iter().map(|l| l.size).sum();
    Ok(StoredImage {
        manifest_digest,
        config_digest,
        config: config.clone(),
        layers: layers.to_vec(),
        size: manifest_size + config_size + layer_bytes,
    })
}

/// Writes a manifest for an imported config blob and layer blobs (already stored).
pub fn write_manifest_for(
    store: &Store,
    config_digest: &str,
    layers: &[LayerRecord],
) -> Result<StoredImage, OciError> {
    let config_size = store.blobs.size(config_digest)?;
    let manifest = build_manifest(config_digest, config_size, layers)?;
    let bytes = serde_json::to_vec(&manifest)
        .map_err(|e| OciError::Invalid(format!("image manifest: {e}")))?;
    let (digest, _) = store.blobs.put_bytes(&bytes)?;
    read_image(store, &digest)
}

fn build_manifest(
    config_digest: &str,
    config_size: u64,
    layers: &[LayerRecord],
) -> Result<ImageManifest, OciError> {
    let config = descriptor(MEDIA_CONFIG, config_digest, config_size)?;
    let layers = layers
        .iter()
        .map(|l| descriptor(oci_layer_type(&l.media_type), &l.digest, l.size))
        .collect::<Result<Vec<_>, _>>()?;
    ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()
        .map_err(|e| OciError::Invalid(format!("image manifest: {e}")))
}

/// Layers of images pulled in Docker's format keep their bytes but get the OCI
/// media type in our (OCI) manifests, as BuildKit does.
fn oci_layer_type(media_type: &str) -> &str {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => super::MEDIA_LAYER_GZIP,
        "application/vnd.docker.image.rootfs.diff.tar" => super::MEDIA_LAYER_TAR,
        other => other,
    }
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> Result<Descriptor, OciError> {
    let digest = oci_spec::image::Digest::from_str(digest)
        .map_err(|e| OciError::Invalid(format!("digest {digest}: {e}")))?;
    Ok(Descriptor::new(MediaType::from(media_type), size, digest))
}

/// Where `FROM` names resolve. The planner asks this and never reads the
/// store itself, so it stays a pure function of its inputs (tests answer from
/// a map; the daemon from its [`Store`]).
pub trait ImageSource {
    /// The image named `name` (normalized, e.g. `busybox:latest`), if there is one.
    fn image(&self, name: &str) -> Result<Option<StoredImage>, OciError>;
}

impl ImageSource for Store {
    fn image(&self, name: &str) -> Result<Option<StoredImage>, OciError> {
        match Store::image(self, name)? {
            Some(record) => read_image(self, &record.manifest_digest).map(Some),
            None => Ok(None),
        }
    }
}

impl ImageSource for std::collections::BTreeMap<String, StoredImage> {
    fn image(&self, name: &str) -> Result<Option<StoredImage>, OciError> {
        Ok(self.get(name).cloned())
    }
}

/// Reads and verifies a stored image's manifest and config.
pub fn read_image(store: &Store, manifest_digest: &str) -> Result<StoredImage, OciError> {
    let manifest_bytes = store.blobs.read_verified(manifest_digest)?;
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| OciError::Invalid(format!("manifest {manifest_digest}: {e}")))?;
    let config_digest = manifest.config().digest().to_string();
    let config_bytes = store.blobs.read_verified(&config_digest)?;
    let config: ImageConfig = serde_json::from_slice(&config_bytes)
        .map_err(|e| OciError::Invalid(format!("image config {config_digest}: {e}")))?;
    let layers: Vec<LayerRecord> = manifest
        .layers()
        .iter()
        .zip(config.rootfs.diff_ids.iter())
        .map(|(desc, diff_id)| LayerRecord {
            digest: desc.digest().to_string(),
            diff_id: diff_id.clone(),
            size: desc.size(),
            media_type: desc.media_type().to_string(),
        })
        .collect();
    if layers.len() != manifest.layers().len() {
        return Err(OciError::Invalid(format!(
            "image {manifest_digest}: manifest has {} layers but the config lists {} diff_ids",
            manifest.layers().len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let size = manifest_bytes.len() as u64
        + config_bytes.len() as u64
        + layers.iter().map(|l| l.size).sum::<u64>();
    Ok(StoredImage {
        manifest_digest: manifest_digest.to_string(),
        config_digest,
        config,
        layers,
        size,
    })
}
