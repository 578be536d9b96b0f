//! Writing a built image out of the daemon: `-o type=oci` (a tar archive in the
//! OCI image layout), `-o type=oci-layout` (the layout as a directory),
//! `-o type=docker` (the OCI archive plus `docker save`'s manifest.json, to a
//! file, stdout or the Docker Engine), `-o type=tar` and `-o type=local` (the
//! final filesystem, see rootfs.rs). Blobs come from the daemon as open,
//! read-only files (blobfd.rs; the daemon verifies each against its digest
//! before it hands it over) or, from older daemons, in chunks the client
//! verifies; either way a corrupt store cannot produce a corrupt output.
//! Everything is written by this process, with the user's permissions.

use crate::connect::{ctx, rpc_failed};
use crate::{blobfd, containerd, docker, rootfs};
use memobuild_proto::{
    BlobRef, ImageSummary, MemobuildClient, RpcError, BLOB_CHUNK_BYTES, FEATURE_BLOB_FDS,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
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
/// told what each wrote. Blobs come from the daemon once for all outputs: as
/// its open, read-only files when it can hand them over ([`blobfd`]), else
/// downloaded in chunks.
pub async fn export(
    conn: crate::connect::Conn<'_>,
    manifest: &str,
    tags: &[String],
    specs: &[OutputSpec],
    mut note: impl FnMut(&str),
) -> Result<(), RpcError> {
    if specs.is_empty() {
        return Ok(());
    }
    let (client, socket) = (conn.client, conn.socket);
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
    let sources = match handed_over(client, socket, manifest, &all).await? {
        Some(sources) => sources,
        None => {
            let mut sources = HashMap::new();
            for blob in &all {
                if !sources.contains_key(&blob.digest) {
                    let file = fetch(client, blob, staging.path()).await?;
                    sources.insert(blob.digest.clone(), file);
                }
            }
            sources
        }
    };
    let mut files = Vec::with_capacity(all.len());
    for blob in &all {
        let file = sources
            .get(&blob.digest)
            .ok_or_else(|| RpcError::new(format!("blob {} was not received", blob.digest)))?;
        files.push((blob.clone(), file));
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
            (Dest::Path(dest), Kind::Tar) => write_file(dest, |f| {
                let mut w = rootfs::write_tar(std::io::BufWriter::new(f), &layers)?;
                w.flush().map_err(|e| io_error(dest, e))
            })?,
            (Dest::Path(dest), _) => write_file(dest, |f| {
                write_archive(f, &files, &index, extra)
                    .map(drop)
                    .map_err(|e| io_error(dest, e))
            })?,
            (Dest::Stdout, kind) => {
                let stdout = std::io::stdout().lock();
                let mut out = match kind {
                    Kind::Tar => rootfs::write_tar(std::io::BufWriter::new(stdout), &layers)?
                        .into_inner()
                        .map_err(|e| io_error(Path::new("stdout"), e.into_error()))?,
                    _ => write_archive(stdout, &files, &index, extra)
                        .map_err(|e| io_error(Path::new("stdout"), e))?,
                };
                out.flush().map_err(|e| io_error(Path::new("stdout"), e))?;
            }
            (Dest::Engine, _) => {
                let archive = staging.path().join("docker-load.tar");
                write_file(&archive, |f| {
                    write_archive(f, &files, &index, extra)
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
                let index = index_json(&blobs.manifest, &names);
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

/// The image's blobs as the daemon's own read-only files, by digest, when
/// the daemon can hand them over; `None` means: download them instead (an
/// older daemon, `MEMOBUILD_BLOB_FDS=0`, or a handoff that did not work out).
/// An error the daemon reports about the image itself is returned.
async fn handed_over(
    client: &MemobuildClient,
    socket: &Path,
    manifest: &str,
    all: &[BlobRef],
) -> Result<Option<HashMap<String, std::fs::File>>, RpcError> {
    if !blobfd::enabled() {
        return Ok(None);
    }
    let info = client.hello(ctx()).await.map_err(rpc_failed)??;
    if !info.features.iter().any(|f| f == FEATURE_BLOB_FDS) {
        return Ok(None);
    }
    let handoff = client
        .open_blobs(ctx(), manifest.to_string())
        .await
        .map_err(rpc_failed)??;
    let (socket, token, count) = (socket.to_path_buf(), handoff.token, handoff.blobs.len());
    let received = tokio::task::spawn_blocking(move || blobfd::receive(&socket, &token, count))
        .await
        .map_err(|e| RpcError::new(e.to_string()))?;
    let files = match received {
        Ok(files) => files,
        Err(e) => {
            eprintln!("note: reading the image's blobs through the socket instead ({e})");
            return Ok(None);
        }
    };
    let mut sources = HashMap::new();
    for (blob, file) in handoff.blobs.into_iter().zip(files) {
        // What the daemon handed over must be the blob the image names, whole.
        let meta = file
            .metadata()
            .map_err(|e| RpcError::new(format!("blob {}: {e}", blob.digest)))?;
        if !meta.is_file() || meta.len() != blob.size {
            return Err(corrupt(&blob, "a file of another size"));
        }
        sources.insert(blob.digest, file);
    }
    match all.iter().find(|b| {
        sources
            .get(&b.digest)
            .is_none_or(|f| f.metadata().map_or(true, |m| m.len() != b.size))
    }) {
        Some(missing) => Err(corrupt(missing, "no such blob in the handoff")),
        None => Ok(Some(sources)),
    }
}

fn corrupt(blob: &BlobRef, what: &str) -> RpcError {
    RpcError::with_hint(
        format!("blob {} from the daemon is wrong ({what})", blob.digest),
        "run `memobuild-ctl verify`, then build again with --no-cache",
    )
}

fn io_error(path: &Path, e: std::io::Error) -> RpcError {
    RpcError::new(format!("writing {}: {e}", path.display()))
}

/// Writes `dest` through `write` into `dest.partial` (created with the
/// user's umask), then renames it: a failed or interrupted export never
/// leaves a truncated file under the name.
fn write_file(
    dest: &Path,
    write: impl FnOnce(&mut std::fs::File) -> Result<(), RpcError>,
) -> Result<(), RpcError> {
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(|e| io_error(dest, e))?;
    let result = write(&mut file);
    drop(file);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dest).map_err(|e| io_error(dest, e))
}

/// Downloads a blob into `dir` in chunks, verifying its size and digest.
pub async fn fetch(
    client: &MemobuildClient,
    blob: &BlobRef,
    dir: &Path,
) -> Result<std::fs::File, RpcError> {
    let path = fetched_path(dir, &blob.digest);
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
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
    Ok(file)
}

/// Where [`fetch`] puts blob `digest` in `dir`.
pub fn fetched_path(dir: &Path, digest: &str) -> PathBuf {
    dir.join(digest.replace(':', "-"))
}

/// index.json naming the manifest once per name, as containerd's archive
/// exporter (behind BuildKit's `oci` and `docker` outputs) writes it: each
/// record has `io.containerd.image.name` (the name) and
/// `org.opencontainers.image.ref.name` (its tag). Without names, one record
/// without annotations.
fn index_json(manifest: &BlobRef, names: &[String]) -> Vec<u8> {
    let record = |name: Option<&String>| {
        let mut d = serde_json::json!({
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": manifest.size,
        });
        if let Some(name) = name {
            // A name without a tag is NAME:latest, as `-t` names are.
            let (name, tag) = match docker::repo_tag(name) {
                Some((repo, tag)) => (format!("{repo}:{tag}"), tag),
                None => (name.clone(), "latest".to_string()),
            };
            d["annotations"] = serde_json::json!({
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag,
            });
        }
        d
    };
    let manifests: Vec<serde_json::Value> = if names.is_empty() {
        vec![record(None)]
    } else {
        names.iter().map(Some).map(record).collect()
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
/// (`manifest.json` and `repositories` for a docker archive). Blob bytes go
/// from their files to `out` with [`blobfd::copy`] (copy_file_range when
/// `out` is a file); the archive is the same byte for byte as `tar`'s
/// builder writes it.
fn write_archive<W: Write + AsFd>(
    out: W,
    files: &[(BlobRef, &std::fs::File)],
    index: &[u8],
    extra: &[(String, Vec<u8>)],
) -> std::io::Result<W> {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    fn header(out: &mut impl Write, name: &str, size: u64) -> std::io::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(size);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path(name)?;
        h.set_cksum();
        out.write_all(h.as_bytes())
    }
    fn pad(out: &mut impl Write, size: u64) -> std::io::Result<()> {
        let rest = (512 - size % 512) % 512;
        out.write_all(&[0u8; 512][..rest as usize])
    }
    let small = |out: &mut std::io::BufWriter<W>, name: &str, bytes: &[u8]| {
        header(out, name, bytes.len() as u64)?;
        out.write_all(bytes)?;
        pad(out, bytes.len() as u64)
    };
    small(&mut out, "oci-layout", LAYOUT)?;
    small(&mut out, "index.json", index)?;
    for (name, bytes) in extra {
        small(&mut out, name, bytes)?;
    }
    let mut seen = std::collections::HashSet::new();
    for (blob, file) in files {
        if !seen.insert(blob.digest.clone()) {
            continue;
        }
        header(&mut out, &blob_path(&blob.digest), blob.size)?;
        out.flush()?;
        blobfd::copy(file, blob.size, out.get_mut())?;
        pad(&mut out, blob.size)?;
    }
    out.write_all(&[0u8; 1024])?;
    out.into_inner().map_err(|e| e.into_error())
}

/// The OCI image layout as a directory: every file created by this process
/// (so with the user's owner and umask), blobs copied with [`blobfd::copy`].
fn write_layout(
    dest: &Path,
    files: &[(BlobRef, &std::fs::File)],
    index: &[u8],
) -> Result<(), RpcError> {
    let err = |e: std::io::Error| RpcError::new(format!("writing {}: {e}", dest.display()));
    std::fs::create_dir_all(dest.join("blobs/sha256")).map_err(err)?;
    let mut seen = std::collections::HashSet::new();
    for (blob, file) in files {
        if !seen.insert(blob.digest.clone()) {
            continue;
        }
        let mut out = std::fs::File::create(dest.join(blob_path(&blob.digest))).map_err(err)?;
        blobfd::copy(file, blob.size, &mut out).map_err(err)?;
    }
    std::fs::write(dest.join("oci-layout"), LAYOUT).map_err(err)?;
    std::fs::write(dest.join("index.json"), index).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive is what `tar::Builder` would write for the same entries
    /// (the format the outputs had before blobs were copied by descriptor).
    #[test]
    fn the_archive_matches_tars_builder_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let blobs: Vec<(BlobRef, Vec<u8>)> = [&b"config"[..], &vec![7u8; 70_000], b""]
            .iter()
            .map(|bytes| {
                let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
                let blob = BlobRef {
                    digest,
                    size: bytes.len() as u64,
                    media_type: String::new(),
                };
                (blob, bytes.to_vec())
            })
            .collect();
        let opened: Vec<(BlobRef, std::fs::File)> = blobs
            .iter()
            .map(|(b, bytes)| {
                let path = dir.path().join(b.digest.replace(':', "-"));
                std::fs::write(&path, bytes).unwrap();
                (b.clone(), std::fs::File::open(&path).unwrap())
            })
            .collect();
        let mut files: Vec<(BlobRef, &std::fs::File)> =
            opened.iter().map(|(b, f)| (b.clone(), f)).collect();
        files.push(files[0].clone()); // a repeated blob is written once
        let extra = vec![("manifest.json".to_string(), b"[]".to_vec())];
        let out = std::fs::File::create(dir.path().join("ours.tar")).unwrap();
        write_archive(out, &files, b"{}", &extra).unwrap();

        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut h, name, data).unwrap();
        };
        add("oci-layout", LAYOUT);
        add("index.json", b"{}");
        add("manifest.json", b"[]");
        for (b, bytes) in &blobs {
            add(&blob_path(&b.digest), bytes);
        }
        let expected = tar.into_inner().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("ours.tar")).unwrap(),
            expected
        );
    }
}
