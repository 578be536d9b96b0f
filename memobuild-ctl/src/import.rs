//! `memobuild-ctl image import`: reads an OCI image-layout archive or a
//! `docker save` archive here, in the client, and uploads its blobs to the
//! daemon in verified chunks (the daemon never opens users' files).

use crate::connect::{ctx, rpc_failed};
use memobuild_proto::{ImageSummary, ImportSpec, MemobuildClient, RpcError, BLOB_CHUNK_BYTES};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> RpcError + '_ {
    move |e| RpcError::new(format!("{}: {e}", path.display()))
}

fn entries_err(path: &Path, e: std::io::Error) -> RpcError {
    RpcError::with_hint(
        format!("{} is not a readable tar archive: {e}", path.display()),
        "import takes the tar written by `docker save` or by `-o type=oci`",
    )
}

/// `image import -`: stdin copied to a temporary file (an archive is read
/// twice: its index first, then its blobs).
pub fn stdin_to_file() -> Result<tempfile::NamedTempFile, RpcError> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(RpcError::with_hint(
            "image import -: stdin is a terminal, not an archive",
            "pipe the archive in: `memobuild-ctl image import - < image.tar`",
        ));
    }
    let mut file = tempfile::Builder::new()
        .prefix("memobuild-import-")
        .tempfile()
        .map_err(|e| RpcError::new(format!("image import -: cannot create a temp file: {e}")))?;
    std::io::copy(&mut std::io::stdin().lock(), file.as_file_mut())
        .map_err(|e| RpcError::new(format!("image import -: reading stdin: {e}")))?;
    Ok(file)
}

/// The small JSON files that say what the archive holds.
fn read_index_files(path: &Path) -> Result<HashMap<String, Vec<u8>>, RpcError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut archive = tar::Archive::new(file);
    let mut out = HashMap::new();
    for entry in archive.entries().map_err(|e| entries_err(path, e))? {
        let mut entry = entry.map_err(|e| entries_err(path, e))?;
        let name = entry.path().map_err(io_err(path))?.display().to_string();
        let name = name.trim_start_matches("./").to_string();
        if matches!(name.as_str(), "index.json" | "manifest.json" | "oci-layout") {
            let mut buf = Vec::new();
            entry.read_to_end(&mut buf).map_err(io_err(path))?;
            out.insert(name, buf);
        }
    }
    Ok(out)
}

pub async fn import(
    client: &MemobuildClient,
    path: &Path,
    name: Option<String>,
) -> Result<ImageSummary, RpcError> {
    let index = read_index_files(path)?;
    if let Some(bytes) = index.get("index.json") {
        let index: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| RpcError::new(format!("index.json: {e}")))?;
        let manifest = pick_manifest(&index)?;
        let digest = manifest["digest"].as_str().unwrap_or_default().to_string();
        let annotations = &manifest["annotations"];
        let name = name
            .or_else(|| {
                annotations["io.containerd.image.name"]
                    .as_str()
                    .map(String::from)
            })
            .or_else(|| {
                annotations["org.opencontainers.image.ref.name"]
                    .as_str()
                    .map(String::from)
            })
            .ok_or_else(|| {
                RpcError::with_hint("the archive names no image", "give one with --name NAME")
            })?;
        upload_entries(client, path, |entry| {
            let hex = entry.strip_prefix("blobs/sha256/")?;
            Some(format!("sha256:{hex}"))
        })
        .await?;
        return client
            .import_image(ctx(), name, ImportSpec::Manifest { digest })
            .await
            .map_err(rpc_failed)?;
    }
    let Some(bytes) = index.get("manifest.json") else {
        return Err(RpcError::with_hint(
            format!(
                "{} has neither index.json nor manifest.json",
                path.display()
            ),
            "import takes the tar written by `docker save` or by `-o type=oci`",
        ));
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| RpcError::new(format!("manifest.json: {e}")))?;
    let image = &manifest[0];
    let config = image["Config"]
        .as_str()
        .ok_or_else(|| RpcError::new("manifest.json names no Config"))?
        .to_string();
    let layers: Vec<String> = image["Layers"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let name = name
        .or_else(|| image["RepoTags"][0].as_str().map(String::from))
        .ok_or_else(|| {
            RpcError::with_hint("the archive names no image", "give one with --name NAME")
        })?;
    let wanted: Vec<String> = std::iter::once(config.clone())
        .chain(layers.iter().cloned())
        .collect();
    let digests = upload_entries(client, path, |entry| {
        wanted.contains(&entry.to_string()).then(String::new)
    })
    .await?;
    let digest_of = |p: &str| {
        digests.get(p).cloned().ok_or_else(|| {
            RpcError::new(format!(
                "{p} is named in manifest.json but missing from the archive"
            ))
        })
    };
    let spec = ImportSpec::Docker {
        config: digest_of(&config)?,
        layers: layers
            .iter()
            .map(|l| digest_of(l))
            .collect::<Result<_, _>>()?,
    };
    client
        .import_image(ctx(), name, spec)
        .await
        .map_err(rpc_failed)?
}

/// The image manifest an OCI index points at (the host's platform for a multi-platform index).
pub(crate) fn pick_manifest(index: &serde_json::Value) -> Result<serde_json::Value, RpcError> {
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    manifests
        .iter()
        .find(|m| m["platform"]["architecture"].as_str() == Some(arch))
        .or_else(|| manifests.first())
        .cloned()
        .ok_or_else(|| RpcError::new("index.json lists no manifest"))
}

/// Uploads the entries `select` picks (it returns the expected digest, or ""
/// to learn it while uploading); returns entry path -> digest.
async fn upload_entries(
    client: &MemobuildClient,
    path: &Path,
    select: impl Fn(&str) -> Option<String>,
) -> Result<HashMap<String, String>, RpcError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut archive = tar::Archive::new(file);
    let mut out = HashMap::new();
    for entry in archive.entries().map_err(|e| entries_err(path, e))? {
        let mut entry = entry.map_err(|e| entries_err(path, e))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path().map_err(io_err(path))?.display().to_string();
        let name = name.trim_start_matches("./").to_string();
        let Some(expected) = select(&name) else {
            continue;
        };
        let upload = client.upload_begin(ctx()).await.map_err(rpc_failed)??;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; BLOB_CHUNK_BYTES as usize];
        loop {
            let n = read_full(&mut entry, &mut buf).map_err(io_err(path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            client
                .upload_chunk(ctx(), upload, memobuild_proto::ByteBuf::from(&buf[..n]))
                .await
                .map_err(rpc_failed)??;
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if !expected.is_empty() && actual != expected {
            return Err(RpcError::new(format!(
                "{name} in {} is corrupt: its content hashes to {actual}",
                path.display()
            )));
        }
        client
            .upload_commit(ctx(), upload, actual.clone())
            .await
            .map_err(rpc_failed)??;
        out.insert(name, actual);
    }
    Ok(out)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
