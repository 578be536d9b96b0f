//! Writing a built image out of the daemon: `-o type=oci` (a tar archive in the
//! OCI image layout), `-o type=oci-layout` (the layout as a directory),
//! `-o type=docker` (the OCI archive plus `docker save`'s manifest.json, to a
//! file, stdout or the Docker Engine), `-o type=tar` and `-o type=local` (the
//! final filesystem, see rootfs.rs). Blobs
//! are fetched in chunks and verified against their digests before they are
//! written, so a corrupt store can never produce a corrupt output.

use crate::connect::{ctx, rpc_failed};
use crate::{containerd, docker, rootfs};
use memobuild_proto::{BlobRef, ImageSummary, MemobuildClient, RpcError, BLOB_CHUNK_BYTES};
use sha2::{Digest, Sha256};
use std::io::{IsTerminal, Seek, Write};
use std::path::{Path, PathBuf};

/// What an `-o` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The OCI image layout as a tar archive.
    OciArchive,
    /// The OCI image layout as a directory.
    OciLayout,
    /// A `docker save` archive (manifest.json + repositories) that also holds
    /// the OCI layout; without dest, loaded into the Docker Engine.
    Docker,
    /// The final filesystem as a tar archive.
    Tar,
    /// The final filesystem in a directory.
    Local,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::OciArchive => "oci",
            Kind::OciLayout => "oci-layout",
            Kind::Docker => "docker",
            Kind::Tar => "tar",
            Kind::Local => "local",
        }
    }
}

/// Where an `-o` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Path(PathBuf),
    /// `dest=-`
    Stdout,
    /// `type=docker` without dest, and `--load`: the local Docker Engine, or
    /// containerd when no Engine answers (decided before the build).
    Engine,
    /// `--load` into containerd's image store (containerd.rs).
    Containerd(crate::containerd::Target),
}

#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub kind: Kind,
    pub dest: Dest,
    /// `name=` (else the build's `-t` names): the names recorded in the archive.
    pub names: Vec<String>,
}

const OUTPUT_HINT: &str = "use -o type=docker|oci|tar,dest=FILE (or dest=- for stdout), -o type=oci-layout|local,dest=DIR, -o DIR, -o type=docker (into the Docker Engine) or -o type=registry,name=REF";

impl OutputSpec {
    /// Parses an `-o` value as `docker buildx build` does: `-` (a tar of the
    /// filesystem on stdout), `DIR` (type=local), or `type=T,key=value,...`.
    /// `type=registry` is not an output written here: `Ok(None)`.
    pub fn parse(spec: &str) -> Result<Option<OutputSpec>, RpcError> {
        if spec == "-" {
            return Ok(Some(OutputSpec {
                kind: Kind::Tar,
                dest: Dest::Stdout,
                names: Vec::new(),
            }));
        }
        if !spec.contains('=') {
            if spec.is_empty() {
                return Err(RpcError::with_hint("-o needs a value", OUTPUT_HINT));
            }
            return Ok(Some(OutputSpec {
                kind: Kind::Local,
                dest: Dest::Path(PathBuf::from(spec)),
                names: Vec::new(),
            }));
        }
        let mut kind = None;
        let mut dest = None;
        let mut names = Vec::new();
        let mut tar = None;
        for part in spec.split(',') {
            match part.split_once('=') {
                Some(("type", v)) => kind = Some(v.to_string()),
                Some(("dest", v)) => dest = Some(v.to_string()),
                Some(("name", v)) if !v.is_empty() => names.push(v.to_string()),
                Some(("tar", v @ ("true" | "false"))) => tar = Some(v == "true"),
                _ => {
                    return Err(RpcError::with_hint(
                        format!("unsupported output option {part:?} in -o {spec}"),
                        OUTPUT_HINT,
                    ))
                }
            }
        }
        let kind = match (kind.as_deref().unwrap_or(""), tar) {
            ("registry", _) => return Ok(None),
            ("oci", Some(false)) | ("oci-layout", _) => Kind::OciLayout,
            ("oci", _) => Kind::OciArchive,
            ("docker", None | Some(true)) => Kind::Docker,
            ("tar", None) => Kind::Tar,
            ("local", None) => Kind::Local,
            ("docker" | "tar" | "local", Some(_)) => {
                return Err(RpcError::with_hint(
                    format!("-o {spec}: tar= applies to type=oci only"),
                    OUTPUT_HINT,
                ))
            }
            ("image", _) => {
                return Err(RpcError::with_hint(
                    format!("-o {spec}: type=image is not supported"),
                    "use -t NAME to name the image in memobuild's store, --load or -o type=docker to load it into Docker, --push or -o type=registry,name=REF to push it",
                ))
            }
            ("cacheonly", _) => {
                return Err(RpcError::with_hint(
                    format!("-o {spec}: type=cacheonly is not supported"),
                    "every build fills memobuild's step cache; leave -o out",
                ))
            }
            (other, _) => {
                return Err(RpcError::with_hint(
                    format!("unsupported output type {other:?} in -o {spec}"),
                    OUTPUT_HINT,
                ))
            }
        };
        let dest = match (dest.as_deref(), kind) {
            (None, Kind::Docker) => Dest::Engine,
            (None | Some(""), _) => {
                return Err(RpcError::with_hint(
                    format!("-o {spec} has no dest"),
                    format!(
                        "add dest=PATH (or dest=- for stdout) to type={}",
                        kind.name()
                    ),
                ))
            }
            (Some("-"), Kind::OciLayout | Kind::Local) => {
                return Err(RpcError::with_hint(
                    format!(
                        "-o {spec}: type={} writes a directory, not a stream",
                        kind.name()
                    ),
                    "give it dest=DIR, or use type=tar,dest=- (or type=oci,dest=-) for stdout",
                ))
            }
            (Some("-"), _) => Dest::Stdout,
            (Some(path), _) => Dest::Path(PathBuf::from(path)),
        };
        if !names.is_empty() && !matches!(kind, Kind::Docker | Kind::OciArchive | Kind::OciLayout) {
            return Err(RpcError::with_hint(
                format!("-o {spec}: name= applies to type=docker and type=oci only"),
                OUTPUT_HINT,
            ));
        }
        Ok(Some(OutputSpec { kind, dest, names }))
    }

    /// Checks, before the build, that the output can be written: the parent
    /// directory exists, stdout is not a terminal.
    pub fn preflight(&self, flag: &str) -> Result<(), RpcError> {
        match &self.dest {
            Dest::Path(path) => check_parent(flag, path),
            Dest::Stdout => {
                if std::io::stdout().is_terminal() {
                    return Err(RpcError::with_hint(
                        format!("{flag}: dest=- would write a {} archive to the terminal", self.kind.name()),
                        "redirect stdout to a file or a pipe (`> image.tar`, `| tar -t`), or give dest=FILE",
                    ));
                }
                Ok(())
            }
            Dest::Engine | Dest::Containerd(_) => Ok(()),
        }
    }

    pub fn describe(&self) -> String {
        match &self.dest {
            Dest::Path(p) => format!("wrote {} to {}", self.kind.name(), p.display()),
            Dest::Stdout => format!("wrote {} to stdout", self.kind.name()),
            Dest::Engine => "loaded into the Docker Engine".to_string(),
            Dest::Containerd(target) => format!("loaded into {}", target.describe()),
        }
    }
}

/// `path`'s directory must exist (as with docker, the file itself is created).
pub fn check_parent(flag: &str, path: &Path) -> Result<(), RpcError> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(RpcError::with_hint(
            format!("{flag}: {} is not a directory", parent.display()),
            format!(
                "choose a path for {} inside an existing directory",
                path.display()
            ),
        )),
        Err(e) => Err(RpcError::with_hint(
            format!(
                "{flag}: the directory {} for {} does not exist ({e})",
                parent.display(),
                path.display()
            ),
            format!(
                "create it first (mkdir -p {}) or choose another path; nothing was built",
                parent.display()
            ),
        )),
    }
}

/// `images --json`: the summaries as one JSON array (the table is images.rs).
pub fn print_images_json(images: &[ImageSummary]) {
    println!(
        "{}",
        serde_json::to_string_pretty(images).unwrap_or_default()
    );
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

/// Writes the built image `manifest` to every output in `specs`; `note` is
/// told what each wrote. Blobs are fetched from the daemon once for all.
pub async fn export(
    client: &MemobuildClient,
    manifest: &str,
    tags: &[String],
    specs: &[OutputSpec],
    mut note: impl FnMut(&str),
) -> Result<(), RpcError> {
    if specs.is_empty() {
        return Ok(());
    }
    let blobs = client
        .image_blobs(ctx(), manifest.to_string())
        .await
        .map_err(rpc_failed)??;
    let mut all = vec![blobs.config.clone()];
    all.extend(blobs.layers.iter().cloned());
    all.push(blobs.manifest.clone());
    // Staged beside the first file output (a big image may not fit in /tmp).
    let staging_parent = specs
        .iter()
        .find_map(|s| match &s.dest {
            Dest::Path(p) => Some(
                p.parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."))
                    .to_path_buf(),
            ),
            _ => None,
        })
        .unwrap_or_else(std::env::temp_dir);
    let staging = tempfile::tempdir_in(&staging_parent).map_err(|e| {
        RpcError::new(format!(
            "creating a temp dir in {}: {e}",
            staging_parent.display()
        ))
    })?;
    let mut files = Vec::new();
    for blob in &all {
        files.push((blob.clone(), fetch(client, blob, staging.path()).await?));
    }
    let layers: Vec<rootfs::Layer> = files[1..files.len() - 1].to_vec();
    for spec in specs {
        let names = if spec.names.is_empty() {
            tags
        } else {
            &spec.names[..]
        };
        let index = index_json(&blobs.manifest, names);
        let docker_files = (spec.kind == Kind::Docker)
            .then(|| docker::save_files(&blobs.config, &blobs.layers, names));
        let extra: &[(String, Vec<u8>)] = docker_files.as_ref().map_or(&[], |f| &f[..]);
        match (&spec.dest, spec.kind) {
            (Dest::Path(dest), Kind::OciLayout) => write_layout(dest, &files, &index)?,
            (Dest::Path(dest), Kind::Local) => rootfs::unpack(dest, &layers, staging.path())?,
            (Dest::Path(dest), Kind::Tar) => {
                write_file(dest, |w| rootfs::write_tar(w, &layers).map(drop))?
            }
            (Dest::Path(dest), _) => write_file(dest, |w| {
                write_archive(w, &files, &index, extra)
                    .map(drop)
                    .map_err(|e| io_error(dest, e))
            })?,
            (Dest::Stdout, kind) => {
                let out = std::io::BufWriter::new(std::io::stdout().lock());
                let mut out = match kind {
                    Kind::Tar => rootfs::write_tar(out, &layers)?,
                    _ => write_archive(out, &files, &index, extra)
                        .map_err(|e| io_error(Path::new("stdout"), e))?,
                };
                out.flush().map_err(|e| io_error(Path::new("stdout"), e))?;
            }
            (Dest::Engine, _) => {
                let archive = staging.path().join("docker-load.tar");
                write_file(&archive, |w| {
                    write_archive(w, &files, &index, extra)
                        .map(drop)
                        .map_err(|e| io_error(&archive, e))
                })?;
                for line in docker::load(&archive).await? {
                    note(&line);
                }
                let _ = std::fs::remove_file(&archive);
            }
            (Dest::Containerd(target), _) => {
                // An OCI archive naming the image once per name, as containerd
                // (and Docker) spell it: docker.io/library/NAME:TAG.
                let names: Vec<String> = names.iter().map(|n| containerd::normalize(n)).collect();
                let index = containerd_index(&blobs.manifest, &names);
                let archive = staging.path().join("containerd-import.tar");
                write_file(&archive, |w| {
                    write_archive(w, &files, &index, &[])
                        .map(drop)
                        .map_err(|e| io_error(&archive, e))
                })?;
                for name in containerd::import(target, &archive, &names).await? {
                    note(&format!("Loaded image: {name}"));
                }
                let _ = std::fs::remove_file(&archive);
            }
        }
        note(&spec.describe());
    }
    Ok(())
}

fn io_error(path: &Path, e: std::io::Error) -> RpcError {
    RpcError::new(format!("writing {}: {e}", path.display()))
}

/// Writes `dest` through `write` into `dest.partial`, then renames it: a
/// failed or interrupted export never leaves a truncated file under the name.
fn write_file(
    dest: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<(), RpcError>,
) -> Result<(), RpcError> {
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let file = std::fs::File::create(&tmp).map_err(|e| io_error(dest, e))?;
    let mut w = std::io::BufWriter::new(file);
    let result = write(&mut w).and_then(|()| w.flush().map_err(|e| io_error(dest, e)));
    drop(w);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dest).map_err(|e| io_error(dest, e))
}

/// Downloads a blob into `dir`, verifying its size and digest.
pub async fn fetch(
    client: &MemobuildClient,
    blob: &BlobRef,
    dir: &Path,
) -> Result<PathBuf, RpcError> {
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
        let short = docker::repo_tag(tag).map_or_else(|| "latest".to_string(), |(_, t)| t);
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

/// index.json for `ctr images import`: the manifest once per name, each
/// with `io.containerd.image.name` (the name containerd gives the image).
fn containerd_index(manifest: &BlobRef, names: &[String]) -> Vec<u8> {
    let desc = |name: Option<&String>| {
        let mut d = serde_json::json!({
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": manifest.size,
        });
        if let Some(name) = name {
            d["annotations"] = serde_json::json!({ "io.containerd.image.name": name });
        }
        d
    };
    let manifests: Vec<serde_json::Value> = if names.is_empty() {
        vec![desc(None)]
    } else {
        names.iter().map(|n| desc(Some(n))).collect()
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    serde_json::to_vec(&index).unwrap_or_default()
}

const LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// The OCI image layout as a tar archive; `extra` adds files at the top
/// (`manifest.json` and `repositories` for a docker archive).
fn write_archive<W: Write>(
    out: W,
    files: &[(BlobRef, PathBuf)],
    index: &[u8],
    extra: &[(String, Vec<u8>)],
) -> std::io::Result<W> {
    let mut tar = tar::Builder::new(out);
    let mut add = |name: &str, size: u64, data: &mut dyn std::io::Read| -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, data)
    };
    add("oci-layout", LAYOUT.len() as u64, &mut &LAYOUT[..])?;
    add("index.json", index.len() as u64, &mut &index[..])?;
    for (name, bytes) in extra {
        add(name, bytes.len() as u64, &mut &bytes[..])?;
    }
    let mut seen = std::collections::HashSet::new();
    for (blob, path) in files {
        if !seen.insert(blob.digest.clone()) {
            continue;
        }
        let mut f = std::fs::File::open(path)?;
        f.rewind()?;
        add(&blob_path(&blob.digest), blob.size, &mut f)?;
    }
    tar.into_inner()
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
