//! OCI formats: layers (deterministic tar, gzip), the image config (with
//! Docker's extension fields), manifests, and the stores' view of an image.
//!
//! Digests here are sha256, as OCI requires. Everything is serialised with
//! sorted maps so the same inputs give the same bytes, build after build.

// What other crates may use is what this file exports; the rest is private.
#![warn(unreachable_pub)]

pub mod config;
pub mod image;
pub mod layer;
pub mod reference;
pub mod zstd;

pub use config::{ImageConfig, RunConfig};
pub use layer::{ChangeSet, Content, EntryKind, LayerEntry, LayerWriter, Node, OciError};
pub use reference::normalize_image_name;

/// Unix seconds as RFC 3339 UTC (`1970-01-01T00:00:00Z`), as image configs
/// and containerd's expiry labels write times.
pub fn rfc3339(secs: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

pub const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
