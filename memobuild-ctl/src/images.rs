//! Looking at stored images as `docker` users do: `image inspect` (Docker's
//! JSON shape), `history`, the `images` table with IMAGE ID and CREATED, and
//! `image import -` (an archive on stdin). All read through the daemon's
//! existing calls (`images`, `image_blobs`, `read_blob`).

use crate::connect::{ctx, rpc_failed};
use crate::output::human_size;
use memobuild_proto::{ImageSummary, MemobuildClient, RpcError, BLOB_CHUNK_BYTES};
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The stored image `name` names: an exact name, `NAME` for `NAME:latest`,
/// or an image ID (config digest, `sha256:` optional, at least 4 hex digits).
pub fn find<'a>(images: &'a [ImageSummary], name: &str) -> Option<&'a ImageSummary> {
    let with_latest = format!("{name}:latest");
    let last = name.rsplit('/').next().unwrap_or(name);
    images
        .iter()
        .find(|i| i.name == name)
        .or_else(|| {
            (!last.contains(':') && !name.contains('@'))
                .then(|| images.iter().find(|i| i.name == with_latest))
                .flatten()
        })
        .or_else(|| {
            let hex = name.strip_prefix("sha256:").unwrap_or(name);
            (hex.len() >= 4 && hex.chars().all(|c| c.is_ascii_hexdigit()))
                .then(|| {
                    images.iter().find(|i| {
                        i.config_digest
                            .trim_start_matches("sha256:")
                            .starts_with(hex)
                    })
                })
                .flatten()
        })
}

fn not_found(name: &str) -> RpcError {
    RpcError::with_hint(
        format!("no such image: {name}"),
        "`memobuild-ctl images` lists the stored images; build one with -t NAME or load one with `memobuild-ctl image import`",
    )
    .kind(memobuild_proto::ErrorKind::NotFound)
}

/// Reads a whole (small) blob, verifying its digest.
pub async fn read_blob(
    client: &MemobuildClient,
    digest: &str,
    size: u64,
) -> Result<Vec<u8>, RpcError> {
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        let chunk = client
            .read_blob(
                ctx(),
                digest.to_string(),
                out.len() as u64,
                BLOB_CHUNK_BYTES,
            )
            .await
            .map_err(rpc_failed)??;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&out)));
    if actual != digest {
        return Err(RpcError::with_hint(
            format!("blob {digest} from the daemon is corrupt (got {actual})"),
            "run `memobuild-ctl verify`; the daemon drops corrupt blobs",
        ));
    }
    Ok(out)
}

/// One image's manifest and config, as JSON.
struct Loaded {
    manifest: serde_json::Value,
    config: serde_json::Value,
    layer_sizes: Vec<u64>,
}

async fn load(client: &MemobuildClient, summary: &ImageSummary) -> Result<Loaded, RpcError> {
    let blobs = client
        .image_blobs(ctx(), summary.manifest_digest.clone())
        .await
        .map_err(rpc_failed)??;
    let manifest = read_blob(client, &blobs.manifest.digest, blobs.manifest.size).await?;
    let config = read_blob(client, &blobs.config.digest, blobs.config.size).await?;
    let parse = |what: &str, bytes: &[u8]| {
        serde_json::from_slice(bytes)
            .map_err(|e| RpcError::new(format!("the image's {what} is not JSON: {e}")))
    };
    Ok(Loaded {
        manifest: parse("manifest", &manifest)?,
        config: parse("config", &config)?,
        layer_sizes: blobs.layers.iter().map(|l| l.size).collect(),
    })
}

async fn list(client: &MemobuildClient) -> Result<Vec<ImageSummary>, RpcError> {
    client.images(ctx()).await.map_err(rpc_failed)?
}

/// `image inspect NAME...`: a JSON array in `docker image inspect`'s shape.
pub async fn inspect(client: &MemobuildClient, names: &[String]) -> Result<(), RpcError> {
    let images = list(client).await?;
    let mut out = Vec::new();
    for name in names {
        let summary = find(&images, name).ok_or_else(|| not_found(name))?;
        let l = load(client, summary).await?;
        let tags: Vec<&str> = images
            .iter()
            .filter(|i| i.manifest_digest == summary.manifest_digest)
            .map(|i| i.name.as_str())
            .collect();
        let c = &l.config;
        out.push(serde_json::json!({
            "Id": summary.config_digest,
            "RepoTags": tags,
            "RepoDigests": repo_digests(&images, &summary.manifest_digest),
            "Parent": "",
            "Comment": c.get("comment").cloned().unwrap_or(serde_json::json!("")),
            "Created": c.get("created").cloned().unwrap_or(serde_json::Value::Null),
            "Author": c.get("author").cloned().unwrap_or(serde_json::json!("")),
            "Config": c.get("config").cloned().unwrap_or(serde_json::json!({})),
            "Architecture": c["architecture"],
            "Variant": c.get("variant").cloned(),
            "Os": c["os"],
            "Size": summary.size,
            "RootFS": {
                "Type": "layers",
                "Layers": c["rootfs"]["diff_ids"],
            },
            "Metadata": { "LastTagTime": rfc3339(summary.tagged_at) },
            "Descriptor": {
                "mediaType": l.manifest["mediaType"],
                "digest": summary.manifest_digest,
            },
            "ManifestAnnotations": l.manifest.get("annotations").cloned(),
        }));
        // Docker leaves Variant out when there is none.
        if let Some(o) = out.last_mut().and_then(|v| v.as_object_mut()) {
            o.retain(|k, v| {
                !(matches!(k.as_str(), "Variant" | "ManifestAnnotations") && v.is_null())
            });
        }
    }
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    Ok(())
}

/// `history NAME`: the config's history, newest first, with each layer's
/// size (compressed, as stored) beside the step that made it.
pub async fn history(client: &MemobuildClient, name: &str, json: bool) -> Result<(), RpcError> {
    let images = list(client).await?;
    let summary = find(&images, name).ok_or_else(|| not_found(name))?;
    let l = load(client, summary).await?;
    let history = l.config["history"].as_array().cloned().unwrap_or_default();
    let mut layers = l.layer_sizes.iter();
    let mut rows = Vec::new();
    for h in &history {
        let empty = h["empty_layer"].as_bool().unwrap_or(false);
        let size = if empty {
            0
        } else {
            layers.next().copied().unwrap_or(0)
        };
        rows.push(serde_json::json!({
            "created": h.get("created").cloned().unwrap_or(serde_json::Value::Null),
            "created_by": h["created_by"].as_str().unwrap_or(""),
            "size": size,
            "empty_layer": empty,
            "comment": h["comment"].as_str().unwrap_or(""),
        }));
    }
    rows.reverse();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{:<14} {:<16} {:<50} {:>10}  COMMENT",
        "IMAGE", "CREATED", "CREATED BY", "SIZE"
    );
    let id = short_id(&summary.config_digest);
    for (i, r) in rows.iter().enumerate() {
        let created_by: String = r["created_by"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(50)
            .collect();
        println!(
            "{:<14} {:<16} {:<50} {:>10}  {}",
            if i == 0 { id.as_str() } else { "<missing>" },
            ago(r["created"].as_str()),
            created_by,
            human_size(r["size"].as_u64().unwrap_or(0)),
            r["comment"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

pub fn short_id(config_digest: &str) -> String {
    config_digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

fn rfc3339(unix: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// "3 minutes ago", as docker prints times; "N/A" without one.
pub fn ago(rfc3339: Option<&str>) -> String {
    let Some(t) = rfc3339.and_then(|t| humantime::parse_rfc3339_weak(t).ok()) else {
        return "N/A".into();
    };
    let secs = SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (n, unit) = match secs {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (secs / 60, "minute"),
        3600..=86_399 => (secs / 3600, "hour"),
        86_400..=604_799 => (secs / 86_400, "day"),
        604_800..=2_591_999 => (secs / 604_800, "week"),
        2_592_000..=31_535_999 => (secs / 2_592_000, "month"),
        _ => (secs / 31_536_000, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// `images`: Docker's columns. CREATED is the config's `created`; an image
/// whose config has none (e.g. FROM scratch with metadata only) shows when
/// its name was set.
pub async fn print_table(
    client: &MemobuildClient,
    images: &[ImageSummary],
    digests: bool,
) -> Result<(), RpcError> {
    // `--digests`: the registry's digest in full, `<none>` when the name was
    // never pushed or pulled, as `docker images --digests`.
    let width = if digests { 71 } else { 14 };
    println!(
        "{:<40} {:<14} {:<width$} {:<22} {:>10}",
        "NAME", "IMAGE ID", "DIGEST", "CREATED", "SIZE"
    );
    for i in images {
        let created = match load(client, i).await {
            Ok(l) if l.config["created"].is_string() => ago(l.config["created"].as_str()),
            _ => ago(Some(&rfc3339(i.tagged_at))),
        };
        let digest = match digests {
            true => i.repo_digest.clone().unwrap_or_else(|| "<none>".into()),
            false => short_id(&i.manifest_digest),
        };
        println!(
            "{:<40} {:<14} {:<width$} {:<22} {:>10}",
            i.name,
            short_id(&i.config_digest),
            digest,
            created,
            human_size(i.size)
        );
    }
    Ok(())
}

/// `docker image inspect`'s `RepoDigests` of the image `manifest`:
/// `REPOSITORY@DIGEST` for each of its names a registry holds (pushed or
/// pulled), sorted, each repository once per digest.
fn repo_digests(images: &[ImageSummary], manifest: &str) -> Vec<String> {
    let mut out: Vec<String> = images
        .iter()
        .filter(|i| i.manifest_digest == manifest)
        .filter_map(|i| {
            let digest = i.repo_digest.as_ref()?;
            Some(format!("{}@{digest}", repository(&i.name)))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A stored name without its tag or digest: `HOST:PORT/team/app:1` ->
/// `HOST:PORT/team/app`.
fn repository(name: &str) -> &str {
    let name = name.split('@').next().unwrap_or(name);
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(name: &str, config: &str) -> ImageSummary {
        ImageSummary {
            name: name.into(),
            manifest_digest: "sha256:ff".into(),
            config_digest: config.into(),
            size: 1,
            tagged_at: 0,
            owner: None,
            repo_digest: None,
        }
    }

    #[test]
    fn names_and_ids_find_images() {
        let images = [
            img("demo:latest", "sha256:abcdef01"),
            img("x/y:2", "sha256:12345678"),
        ];
        assert_eq!(find(&images, "demo").unwrap().name, "demo:latest");
        assert_eq!(find(&images, "x/y:2").unwrap().name, "x/y:2");
        assert_eq!(find(&images, "abcd").unwrap().name, "demo:latest");
        assert_eq!(find(&images, "sha256:1234").unwrap().name, "x/y:2");
        assert!(find(&images, "x/y").is_none());
        assert!(find(&images, "abc").is_none());
    }

    #[test]
    fn repo_digests_name_the_repository_without_the_tag() {
        assert_eq!(
            repository("127.0.0.1:5000/team/app:1"),
            "127.0.0.1:5000/team/app"
        );
        assert_eq!(repository("busybox:latest"), "busybox");
        assert_eq!(repository("h:5/app@sha256:00"), "h:5/app");
        assert_eq!(repository("h:5/app"), "h:5/app");
        let mut a = img("h:5/app:1", "sha256:aa");
        a.repo_digest = Some("sha256:ff".into());
        let mut b = img("h:5/app:2", "sha256:aa");
        b.repo_digest = Some("sha256:ff".into());
        let c = img("local:1", "sha256:aa");
        assert_eq!(
            repo_digests(&[a, b, c], "sha256:ff"),
            vec!["h:5/app@sha256:ff".to_string()]
        );
    }

    #[test]
    fn times_read_as_docker_prints_them() {
        assert_eq!(ago(None), "N/A");
        assert!(ago(Some("1970-01-01T00:00:00Z")).ends_with("years ago"));
    }
}
