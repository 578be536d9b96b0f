//! Writing a built image out of the daemon: `-o type=oci` (a tar archive in the
//! OCI image layout) and `-o type=oci-layout` (the layout as a directory). Blobs
//! are fetched in chunks and verified against their digests before they are
//! written, so a corrupt store can never produce a corrupt output.

use crate::connect::{ctx, rpc_failed};
use memobuild_proto::{BlobRef, ImageSummary, MemobuildClient, RpcError, BLOB_CHUNK_BYTES};
use sha2::{Digest, Sha256};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

pub struct OutputSpec {
    pub kind: String,
    pub dest: PathBuf,
}

impl OutputSpec {
    /// Parses `type=oci,dest=FILE` / `type=oci-layout,dest=DIR`.
    pub fn parse(spec: &str) -> Result<OutputSpec, RpcError> {
        let mut kind = None;
        let mut dest = None;
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("type", v)) => kind = Some(v.to_string()),
                Some(("dest", v)) => dest = Some(PathBuf::from(v)),
                _ => {
                    return Err(RpcError::with_hint(
                        format!("unsupported output option {part:?} in -o {spec}"),
                        "use -o type=oci,dest=FILE.tar or -o type=oci-layout,dest=DIR",
                    ))
                }
            }
        }
        let kind = kind.unwrap_or_default();
        if kind != "oci" && kind != "oci-layout" {
            return Err(RpcError::with_hint(
                format!("unsupported output type {kind:?}"),
                "supported: type=oci (a tar archive) and type=oci-layout (a directory)",
            ));
        }
        let dest = dest.ok_or_else(|| {
            RpcError::with_hint(format!("-o {spec} has no dest"), "add dest=PATH")
        })?;
        Ok(OutputSpec { kind, dest })
    }
}

pub fn print_images(images: &[ImageSummary], json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(images).unwrap_or_default()
        );
        return;
    }
    println!("{:<40} {:<20} {:>10}", "NAME", "DIGEST", "SIZE");
    for i in images {
        let short = i
            .manifest_digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>();
        println!("{:<40} {:<20} {:>10}", i.name, short, human_size(i.size));
    }
}

pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1}{}", units[u])
}

pub async fn export(
    client: &MemobuildClient,
    manifest: &str,
    tags: &[String],
    spec: &OutputSpec,
) -> Result<(), RpcError> {
    let blobs = client
        .image_blobs(ctx(), manifest.to_string())
        .await
        .map_err(rpc_failed)??;
    let mut all = vec![blobs.config.clone()];
    all.extend(blobs.layers.iter().cloned());
    all.push(blobs.manifest.clone());
    let staging_parent = spec
        .dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let staging = tempfile::tempdir_in(staging_parent).map_err(|e| {
        RpcError::new(format!(
            "creating a temp dir in {}: {e}",
            staging_parent.display()
        ))
    })?;
    let mut files = Vec::new();
    for blob in &all {
        files.push((blob.clone(), fetch(client, blob, staging.path()).await?));
    }
    let index = index_json(&blobs.manifest, tags);
    match spec.kind.as_str() {
        "oci" => write_archive(&spec.dest, &files, &index),
        _ => write_layout(&spec.dest, &files, &index),
    }
}

/// Downloads a blob into `dir`, verifying its size and digest.
async fn fetch(client: &MemobuildClient, blob: &BlobRef, dir: &Path) -> Result<PathBuf, RpcError> {
    let path = dir.join(blob.digest.replace(':', "-"));
    let mut file = std::fs::File::create(&path)
        .map_err(|e| RpcError::new(format!("{}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut offset = 0;
    while offset < blob.size {
        let chunk = client
            .read_blob(ctx(), blob.digest.clone(), offset, BLOB_CHUNK_BYTES)
            .await
            .map_err(rpc_failed)??;
        if chunk.is_empty() {
            break;
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(|e| RpcError::new(format!("{}: {e}", path.display())))?;
        offset += chunk.len() as u64;
    }
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if actual != blob.digest || offset != blob.size {
        return Err(RpcError::with_hint(
            format!(
                "blob {} from the daemon is corrupt (got {actual}, {offset} bytes)",
                blob.digest
            ),
            "rebuild with --no-cache; the daemon will replace the blob",
        ));
    }
    Ok(path)
}

fn index_json(manifest: &BlobRef, tags: &[String]) -> Vec<u8> {
    let mut desc = serde_json::json!({
        "mediaType": manifest.media_type,
        "digest": manifest.digest,
        "size": manifest.size,
    });
    if let Some(tag) = tags.first() {
        let short = tag.rsplit(':').next().unwrap_or("latest");
        desc["annotations"] = serde_json::json!({
            "io.containerd.image.name": tag,
            "org.opencontainers.image.ref.name": short,
        });
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [desc],
    });
    serde_json::to_vec(&index).unwrap_or_default()
}

const LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

fn write_archive(dest: &Path, files: &[(BlobRef, PathBuf)], index: &[u8]) -> Result<(), RpcError> {
    let err = |e: std::io::Error| RpcError::new(format!("writing {}: {e}", dest.display()));
    let tmp = dest.with_extension("partial");
    let file = std::fs::File::create(&tmp).map_err(err)?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
    let mut add = |name: &str, size: u64, data: &mut dyn std::io::Read| -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, data)
    };
    add("oci-layout", LAYOUT.len() as u64, &mut &LAYOUT[..]).map_err(err)?;
    add("index.json", index.len() as u64, &mut &index[..]).map_err(err)?;
    let mut seen = std::collections::HashSet::new();
    for (blob, path) in files {
        if !seen.insert(blob.digest.clone()) {
            continue;
        }
        let mut f = std::fs::File::open(path).map_err(err)?;
        f.rewind().map_err(err)?;
        add(&blob_path(&blob.digest), blob.size, &mut f).map_err(err)?;
    }
    tar.into_inner().and_then(|mut w| w.flush()).map_err(err)?;
    std::fs::rename(&tmp, dest).map_err(err)
}

fn write_layout(dest: &Path, files: &[(BlobRef, PathBuf)], index: &[u8]) -> Result<(), RpcError> {
    let err = |e: std::io::Error| RpcError::new(format!("writing {}: {e}", dest.display()));
    std::fs::create_dir_all(dest.join("blobs/sha256")).map_err(err)?;
    for (blob, path) in files {
        std::fs::copy(path, dest.join(blob_path(&blob.digest))).map_err(err)?;
    }
    std::fs::write(dest.join("oci-layout"), LAYOUT).map_err(err)?;
    std::fs::write(dest.join("index.json"), index).map_err(err)
}
