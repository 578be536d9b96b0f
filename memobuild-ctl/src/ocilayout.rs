//! `--build-context NAME=oci-layout://DIR[:TAG][@sha256:DIGEST]`: an image
//! in an OCI image layout directory (what `-o type=oci-layout` writes) as a
//! build context. The client reads the layout, as `image import` reads an
//! archive, and uploads the image's blobs the daemon lacks (each verified
//! against its digest on the way, and again by the daemon); the image is
//! named for this build only and the build gets `docker-image://` that name.

use crate::connect::{ctx, rpc_failed};
use memobuild_proto::{ImportSpec, MemobuildClient, RpcError};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The annotation an OCI index entry's tag is in.
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A parsed `oci-layout://` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    pub dir: PathBuf,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

/// Parses what follows `oci-layout://`: `DIR[:TAG][@sha256:HEX]`, as buildx
/// (the tag is after the last `:` of the last path component).
pub fn parse(value: &str) -> Result<LayoutRef, String> {
    let (rest, digest) = match value.split_once('@') {
        Some((rest, digest)) => {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| format!("{digest:?} is not a sha256:HEX digest"))?;
            if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(format!("{digest:?} is not a sha256:HEX digest"));
            }
            (rest, Some(digest.to_ascii_lowercase()))
        }
        None => (value, None),
    };
    let last = rest.rsplit('/').next().unwrap_or(rest);
    let (dir, tag) = match last.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() => (&rest[..rest.len() - tag.len() - 1], Some(tag)),
        _ => (rest, None),
    };
    if dir.is_empty() {
        return Err("no directory".into());
    }
    Ok(LayoutRef {
        dir: PathBuf::from(dir),
        tag: tag.map(String::from),
        digest,
    })
}

fn layout_err(dir: &Path, what: impl std::fmt::Display) -> RpcError {
    RpcError::with_hint(
        format!("OCI layout {}: {what}", dir.display()),
        "give a directory `-o type=oci-layout,dest=DIR` wrote: oci-layout://DIR[:TAG][@sha256:DIGEST]",
    )
}

fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs").join(digest.replacen(':', "/", 1))
}

/// Reads blob `digest` of the layout, checking that it hashes to it.
fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>, RpcError> {
    let bytes = std::fs::read(blob_path(dir, digest))
        .map_err(|e| layout_err(dir, format!("blob {digest}: {e}")))?;
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if actual != digest {
        return Err(layout_err(
            dir,
            format!("blob {digest} is corrupt: its content hashes to {actual}"),
        ));
    }
    Ok(bytes)
}

fn json(dir: &Path, what: &str, bytes: &[u8]) -> Result<serde_json::Value, RpcError> {
    serde_json::from_slice(bytes).map_err(|e| layout_err(dir, format!("{what}: {e}")))
}

fn is_index(value: &serde_json::Value) -> bool {
    value.get("manifests").is_some() && value.get("layers").is_none()
}

/// The image manifest `layout` names: by digest (an entry of index.json, or
/// any blob of the layout), else by tag (`org.opencontainers.image.ref.name`;
/// `latest` when none is given), else the only image index.json lists. An
/// index is resolved to the host's platform. Returns (digest, manifest).
pub fn resolve(layout: &LayoutRef) -> Result<(String, serde_json::Value), RpcError> {
    let dir = &layout.dir;
    let index_bytes = std::fs::read(dir.join("index.json"))
        .map_err(|e| layout_err(dir, format!("index.json: {e}")))?;
    let index = json(dir, "index.json", &index_bytes)?;
    let entries = index["manifests"].as_array().cloned().unwrap_or_default();
    let tags = || {
        let names: Vec<&str> = entries
            .iter()
            .filter_map(|m| m["annotations"][REF_NAME].as_str())
            .collect();
        if names.is_empty() {
            "its index.json tags none".to_string()
        } else {
            format!("its tags: {}", names.join(", "))
        }
    };
    let digest = match (&layout.digest, &layout.tag) {
        (Some(digest), _) => digest.clone(),
        (None, tag) => {
            let wanted = tag.as_deref().unwrap_or("latest");
            let tagged = entries
                .iter()
                .find(|m| m["annotations"][REF_NAME].as_str() == Some(wanted));
            let entry = match (tagged, tag) {
                (Some(entry), _) => entry,
                (None, None) if entries.len() == 1 => &entries[0],
                _ => {
                    return Err(layout_err(
                        dir,
                        format!("no image tagged {wanted:?} ({})", tags()),
                    ))
                }
            };
            entry["digest"]
                .as_str()
                .ok_or_else(|| layout_err(dir, "an index.json entry has no digest"))?
                .to_string()
        }
    };
    let mut digest = digest;
    // An index (the layout's, or one nested): the host's platform's image.
    for _ in 0..4 {
        let manifest = json(dir, &digest, &read_blob(dir, &digest)?)?;
        if !is_index(&manifest) {
            if manifest["config"]["digest"].as_str().is_none() {
                return Err(layout_err(
                    dir,
                    format!("{digest} is not an image manifest"),
                ));
            }
            return Ok((digest, manifest));
        }
        let chosen = crate::import::pick_manifest(&manifest)?;
        digest = chosen["digest"]
            .as_str()
            .ok_or_else(|| layout_err(dir, "an index entry has no digest"))?
            .to_string();
    }
    Err(layout_err(dir, "indexes nest too deep"))
}

/// Uploads the image `layout` names (the blobs the daemon lacks) and names
/// it `name` in the daemon's image store.
pub async fn import(
    client: &MemobuildClient,
    layout: &LayoutRef,
    name: &str,
) -> Result<(), RpcError> {
    let (digest, manifest) = resolve(layout)?;
    let blobs = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(std::iter::once(&manifest["config"]))
        .map(|d| {
            d["digest"].as_str().map(String::from).ok_or_else(|| {
                layout_err(
                    &layout.dir,
                    format!("{digest} names a blob without a digest"),
                )
            })
        })
        .chain(std::iter::once(Ok(digest.clone())))
        .collect::<Result<Vec<String>, RpcError>>()?;
    for blob in blobs {
        // Already in the daemon's store (and readable to this user): nothing to send.
        if client
            .read_blob(ctx(), blob.clone(), 0, 1)
            .await
            .map_err(rpc_failed)?
            .is_ok()
        {
            continue;
        }
        let path = blob_path(&layout.dir, &blob);
        if !path.is_file() {
            return Err(layout_err(
                &layout.dir,
                format!("blob {blob} of image {digest} is missing"),
            ));
        }
        // The daemon keeps it only if it hashes to `blob`.
        crate::localcache::upload(client, &path, &blob).await?;
    }
    client
        .import_image(ctx(), name.to_string(), ImportSpec::Manifest { digest })
        .await
        .map_err(rpc_failed)??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_buildx() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = |dir: &str, tag: Option<&str>, digest: Option<&str>| LayoutRef {
            dir: PathBuf::from(dir),
            tag: tag.map(String::from),
            digest: digest.map(String::from),
        };
        assert_eq!(parse("/l").unwrap(), r("/l", None, None));
        assert_eq!(parse("/a:b/l:v1").unwrap(), r("/a:b/l", Some("v1"), None));
        assert_eq!(parse(&format!("/l@{d}")).unwrap(), r("/l", None, Some(&d)));
        assert_eq!(
            parse(&format!("rel/l:t@{d}")).unwrap(),
            r("rel/l", Some("t"), Some(&d))
        );
        assert!(parse("/l@sha256:abc").is_err());
        assert!(parse("/l@md5:abc").is_err());
        assert!(parse(":tag").is_err());
    }
}
