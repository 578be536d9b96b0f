//! The final filesystem of an image, from its layers: `-o type=tar` (one tar
//! archive) and `-o type=local` / `-o DIR` (a directory).
//!
//! Layers are applied as the OCI image spec says: a later layer's entry
//! replaces an earlier one at the same path, `.wh.NAME` removes NAME (and what
//! is below it) from the layers beneath, `.wh..wh..opq` empties its directory
//! of what the layers beneath put there. The first pass over the layers finds
//! which entry wins each path; the second copies exactly those entries, with
//! their headers (modes, owners, times, links, device numbers) and xattrs,
//! into one tar. Unpacking it makes FIFOs and device nodes as such.

use memobuild_proto::{BlobRef, RpcError};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// A layer blob (an open file: the daemon's descriptor, or a downloaded
/// copy) and its media type.
pub type Layer<'a> = (BlobRef, &'a File);

/// Reads a file from offset 0 without using or moving its file position (the
/// same blob is read once per pass and per output).
struct ReadAt<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Opens a layer's uncompressed tar stream.
fn open<'a>(layer: &Layer<'a>) -> Result<Box<dyn Read + 'a>, RpcError> {
    let (blob, file) = layer;
    let file = io::BufReader::with_capacity(256 * 1024, ReadAt { file, pos: 0 });
    let media = blob.media_type.as_str();
    if media.ends_with("gzip") {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(file)))
    } else if media.ends_with(".tar") || media.ends_with("layer.v1.tar") {
        Ok(Box::new(file))
    } else {
        Err(RpcError::with_hint(
            format!(
                "layer {} has media type {media}, which -o type=tar/local cannot unpack yet",
                blob.digest
            ),
            "use -o type=oci or -o type=docker for this image (its base has zstd layers)",
        ))
    }
}

/// `./a//b/` -> `a/b`; `None` for the root itself.
fn normalize(path: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(path.len());
    for part in path.split(|b| *b == b'/') {
        if part.is_empty() || part == b"." {
            continue;
        }
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(part);
    }
    (!out.is_empty()).then_some(out)
}

fn split_name(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        return name.to_vec();
    }
    let mut out = dir.to_vec();
    out.push(b'/');
    out.extend_from_slice(name);
    out
}

/// Winner of each path: (layer, entry index in that layer).
type Winners = BTreeMap<Vec<u8>, (usize, usize)>;

/// Removes what layers below `layer` put under `dir` (and `dir` itself with `with_self`).
fn remove_below(winners: &mut Winners, dir: &[u8], with_self: bool, layer: usize) {
    if with_self && winners.get(dir).is_some_and(|(l, _)| *l < layer) {
        winners.remove(dir);
    }
    let mut start = dir.to_vec();
    start.push(b'/');
    let mut end = dir.to_vec();
    end.push(b'/' + 1);
    let doomed: Vec<Vec<u8>> = winners
        .range(start..end)
        .filter(|(_, (l, _))| *l < layer)
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        winners.remove(&k);
    }
}

fn layer_err(blob: &BlobRef) -> impl Fn(io::Error) -> RpcError + '_ {
    move |e| RpcError::new(format!("reading layer {}: {e}", blob.digest))
}

fn winners(layers: &[Layer<'_>]) -> Result<Winners, RpcError> {
    let mut winners = Winners::new();
    for (l, layer) in layers.iter().enumerate() {
        let err = layer_err(&layer.0);
        let mut archive = tar::Archive::new(open(layer)?);
        for (i, entry) in archive.entries().map_err(&err)?.enumerate() {
            let entry = entry.map_err(&err)?;
            let Some(path) = normalize(&entry.path_bytes()) else {
                continue;
            };
            let (dir, name) = split_name(&path);
            if name == OPAQUE {
                remove_below(&mut winners, dir, false, l);
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                if !hidden.starts_with(WHITEOUT) {
                    remove_below(&mut winners, &join(dir, hidden), true, l);
                }
            } else {
                if entry.header().entry_type() != tar::EntryType::Directory {
                    // A file where a directory was: nothing stays below it.
                    remove_below(&mut winners, &path, false, l + 1);
                }
                winners.insert(path, (l, i));
            }
        }
    }
    Ok(winners)
}

/// Writes the final filesystem of `layers` as one tar archive to `out`.
pub fn write_tar<W: Write>(out: W, layers: &[Layer<'_>]) -> Result<W, RpcError> {
    let winners = winners(layers)?;
    let mut builder = tar::Builder::new(out);
    let werr = |e: io::Error| RpcError::new(format!("writing the filesystem tar: {e}"));
    for (l, layer) in layers.iter().enumerate() {
        let err = layer_err(&layer.0);
        let mut archive = tar::Archive::new(open(layer)?);
        for (i, entry) in archive.entries().map_err(&err)?.enumerate() {
            let mut entry = entry.map_err(&err)?;
            let Some(path) = normalize(&entry.path_bytes()) else {
                continue;
            };
            if winners.get(&path) != Some(&(l, i)) {
                continue;
            }
            let xattrs: Vec<(String, Vec<u8>)> = match entry.pax_extensions().map_err(&err)? {
                Some(exts) => exts
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let key = e.key().ok()?;
                        (key.starts_with("SCHILY.xattr.") || key.starts_with("LIBARCHIVE.xattr."))
                            .then(|| (key.to_string(), e.value_bytes().to_vec()))
                    })
                    .collect(),
                None => Vec::new(),
            };
            if !xattrs.is_empty() {
                builder
                    .append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                    .map_err(werr)?;
            }
            let mut header = entry.header().clone();
            let name = Path::new(OsStr::from_bytes(&path));
            match header.entry_type() {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let raw = entry.link_name_bytes().unwrap_or_default().into_owned();
                    let target = if header.entry_type() == tar::EntryType::Link {
                        normalize(&raw).unwrap_or(raw)
                    } else {
                        raw
                    };
                    builder
                        .append_link(&mut header, name, Path::new(OsStr::from_bytes(&target)))
                        .map_err(werr)?;
                }
                _ => builder
                    .append_data(&mut header, name, &mut entry)
                    .map_err(werr)?,
            }
        }
    }
    builder.into_inner().map_err(werr)
}

/// Writes the final filesystem of `layers` into `dir` (created if missing):
/// modes, times, symlinks and hard links as in the image, owners too when
/// running as root. `scratch` holds the intermediate tar.
pub fn unpack(dir: &Path, layers: &[Layer<'_>], scratch: &Path) -> Result<(), RpcError> {
    let err = |e: io::Error| RpcError::new(format!("writing {}: {e}", dir.display()));
    let tmp = tempfile::tempfile_in(scratch).map_err(err)?;
    let mut tmp = write_tar(io::BufWriter::new(tmp), layers)?
        .into_inner()
        .map_err(|e| err(e.into_error()))?;
    io::Seek::rewind(&mut tmp).map_err(err)?;
    std::fs::create_dir_all(dir).map_err(err)?;
    let root = nix::unistd::geteuid().is_root();
    let mut archive = tar::Archive::new(io::BufReader::new(tmp));
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(root);
    archive.set_unpack_xattrs(root);
    archive.set_overwrite(true);
    // As `Archive::unpack` (directories last, in its order), but FIFOs and
    // device nodes are made as such (tar-rs would make them empty files).
    let dir = &dir.canonicalize().map_err(err)?;
    let mut dirs = Vec::new();
    for entry in archive.entries().map_err(err)? {
        let mut entry = entry.map_err(err)?;
        match entry.header().entry_type() {
            tar::EntryType::Directory => dirs.push(entry),
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                unpack_node(&mut entry, dir, root).map_err(err)?
            }
            _ => {
                entry.unpack_in(dir).map_err(err)?;
            }
        }
    }
    dirs.sort_by(|a, b| b.path_bytes().cmp(&a.path_bytes()));
    for mut entry in dirs {
        entry.unpack_in(dir).map_err(err)?;
    }
    Ok(())
}

/// A FIFO or device node entry: tar-rs checks the path stays inside `dir`
/// and puts an empty file there, which is then replaced by the node with the
/// entry's mode, time and (as root) owner. Making a device node needs root;
/// otherwise this fails naming the path.
fn unpack_node<R: Read>(entry: &mut tar::Entry<'_, R>, dir: &Path, root: bool) -> io::Result<()> {
    let header = entry.header().clone();
    let Some(rel) = normalize(&entry.path_bytes()) else {
        return Ok(());
    };
    if !entry.unpack_in(dir)? {
        return Ok(());
    }
    let path = dir.join(OsStr::from_bytes(&rel));
    let kind = match header.entry_type() {
        tar::EntryType::Fifo => nix::sys::stat::SFlag::S_IFIFO,
        tar::EntryType::Char => nix::sys::stat::SFlag::S_IFCHR,
        _ => nix::sys::stat::SFlag::S_IFBLK,
    };
    let major = header.device_major()?.unwrap_or(0);
    let minor = header.device_minor()?.unwrap_or(0);
    let mode = header.mode()? & 0o7777;
    std::fs::remove_file(&path)?;
    let perm = nix::sys::stat::Mode::from_bits_truncate(0o600);
    let dev = nix::sys::stat::makedev(major.into(), minor.into());
    nix::sys::stat::mknod(&path, kind, perm, dev).map_err(|e| {
        let why = if kind == nix::sys::stat::SFlag::S_IFIFO {
            String::new()
        } else {
            "; making a device node needs root".to_string()
        };
        io::Error::new(
            io::Error::from(e).kind(),
            format!("making {}: {e}{why}", path.display()),
        )
    })?;
    if root {
        let uid = u32::try_from(header.uid()?).unwrap_or(u32::MAX);
        let gid = u32::try_from(header.gid()?).unwrap_or(u32::MAX);
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
    let mtime = nix::sys::time::TimeSpec::new(i64::try_from(header.mtime()?).unwrap_or(0), 0);
    nix::sys::stat::utimensat(
        None,
        &path,
        &mtime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize(b"./a//b/"), Some(b"a/b".to_vec()));
        assert_eq!(normalize(b"/etc/passwd"), Some(b"etc/passwd".to_vec()));
        assert_eq!(normalize(b"./"), None);
        assert_eq!(split_name(b"a/b/.wh.c"), (&b"a/b"[..], &b".wh.c"[..]));
        assert_eq!(split_name(b".wh.c"), (&b""[..], &b".wh.c"[..]));
    }

    #[test]
    fn whiteouts_remove_only_what_lower_layers_put_there() {
        let mut w = Winners::new();
        for (p, l) in [
            ("d", 0),
            ("d/a", 0),
            ("d/b/c", 0),
            ("d/b", 1),
            ("d0", 0),
            ("d/n", 2),
        ] {
            w.insert(p.as_bytes().to_vec(), (l, 0));
        }
        remove_below(&mut w, b"d", false, 2);
        let left: Vec<&[u8]> = w.keys().map(|k| k.as_slice()).collect();
        assert_eq!(left, vec![&b"d"[..], b"d/n", b"d0"]);
        remove_below(&mut w, b"d", true, 3);
        let left: Vec<&[u8]> = w.keys().map(|k| k.as_slice()).collect();
        assert_eq!(left, vec![&b"d0"[..]]);
    }
}
