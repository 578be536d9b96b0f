//! The filesystem changes of a step, read from the overlay upperdir of its
//! snapshot (everything the step wrote lands there; the lower layers are
//! read-only), and turned into OCI layer entries:
//!
//! | in the upperdir | in the layer |
//! | --- | --- |
//! | regular file, directory, symlink | the same, mode (incl. setuid/setgid/sticky) and numeric owner kept |
//! | several names of one inode | the first name (in path order) as a file, the others as hard links to it |
//! | character device 0:0 (overlay whiteout) | `.wh.NAME` whiteout |
//! | directory with `trusted.overlay.opaque=y` | directory plus `.wh..wh..opq` |
//! | fifo, character or block device (other than 0:0) | the same, with its device numbers (as containerd's tar writer keeps them) |
//! | socket | skipped with a warning (containerd's tar writer skips sockets too) |
//!
//! Then the traces of the sandbox itself are dropped, as BuildKit does: the
//! mount points runc created for the default and extra mounts (a path that
//! the lower layers lack and that is an empty file or directory in the
//! upperdir), the directories created only to hold them, and directories the
//! overlay copied up without any change below them and with the same mode and
//! owner as below (e.g. `/etc` when only the `/etc/hosts` mount point was
//! created in it).
//!
//! Overlay features that would hide data from an upperdir reader
//! (`redirect_dir`, `metacopy`) are detected and refused with an error; containerd
//! does not enable them and this project's hosts have them off.

use super::SandboxError;
use memobuild_oci::{ChangeSet, Content, EntryKind, LayerEntry, Node};
use std::collections::{BTreeMap, HashMap};
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

const OPAQUE: &str = "trusted.overlay.opaque";
const REDIRECT: &str = "trusted.overlay.redirect";
const METACOPY: &str = "trusted.overlay.metacopy";
/// Since Linux 6.7 a whiteout may also be a regular file with this xattr in a
/// directory marked `opaque=x`.
const XWHITEOUT: &str = "trusted.overlay.whiteout";

/// The value of extended attribute `name` of `path` itself (not of a
/// symlink's target), if it has one of at most 4 KiB.
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::lgetxattr(path, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn is_whiteout(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn diff_err(path: &Path, e: std::io::Error) -> SandboxError {
    SandboxError::Diff(format!("{}: {e}", path.display()))
}

/// The metadata of `rel` in the merged lower layers (`lowers` top first), or
/// `None` if they do not have it (absent, whited out, or hidden by an opaque
/// directory).
pub(crate) fn lower_meta(lowers: &[PathBuf], rel: &str) -> Option<Metadata> {
    let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
    if comps.is_empty() {
        return None;
    }
    for lower in lowers {
        let mut path = lower.clone();
        let mut hidden_below = false;
        for (i, comp) in comps.iter().enumerate() {
            path.push(comp);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                break;
            };
            if is_whiteout(&meta) {
                return None;
            }
            if i + 1 == comps.len() {
                return Some(meta);
            }
            if !meta.is_dir() {
                return None;
            }
            if xattr(&path, OPAQUE).as_deref() == Some(b"y") {
                hidden_below = true;
            }
        }
        if hidden_below {
            return None;
        }
    }
    None
}

struct Walked {
    changes: ChangeSet,
    /// Size of each regular file (to recognise empty mount points).
    sizes: HashMap<String, u64>,
}

fn walk(upper: &Path) -> Result<Walked, SandboxError> {
    let mut out = Walked {
        changes: ChangeSet::default(),
        sizes: HashMap::new(),
    };
    // Inode -> names, for hard links.
    let mut inodes: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut stack = vec![(upper.to_path_buf(), String::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| diff_err(&dir, e))? {
            let entry = entry.map_err(|e| diff_err(&dir, e))?;
            names.push(entry.file_name());
        }
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let name = name.to_string_lossy();
            let rel = if rel_dir.is_empty() {
                name.into_owned()
            } else {
                format!("{rel_dir}/{name}")
            };
            let meta = std::fs::symlink_metadata(&path).map_err(|e| diff_err(&path, e))?;
            let ft = meta.file_type();
            // The time the step left (whole seconds, as the layer keeps it).
            let mut entry = LayerEntry {
                kind: EntryKind::Dir,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime().max(0) as u64,
            };
            if is_whiteout(&meta) || (ft.is_file() && xattr(&path, XWHITEOUT).is_some()) {
                entry.kind = EntryKind::Whiteout;
                entry.mode = 0;
                entry.uid = 0;
                entry.gid = 0;
                entry.mtime = 0;
            } else if ft.is_dir() {
                if xattr(&path, REDIRECT).is_some() {
                    return Err(SandboxError::Diff(format!(
                        "{}: overlay redirect_dir is in use; memobuild cannot read such a step's changes (load the overlay module with redirect_dir=off)",
                        path.display()
                    )));
                }
                if xattr(&path, OPAQUE).as_deref() == Some(b"y") {
                    entry.kind = EntryKind::OpaqueDir;
                }
                stack.push((path.clone(), rel.clone()));
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| diff_err(&path, e))?;
                entry.kind = EntryKind::Symlink(target.to_string_lossy().into_owned());
                entry.mode = 0o777;
            } else if ft.is_file() {
                if xattr(&path, METACOPY).is_some() {
                    return Err(SandboxError::Diff(format!(
                        "{}: overlay metacopy is in use; memobuild cannot read such a step's changes (load the overlay module with metacopy=off)",
                        path.display()
                    )));
                }
                if meta.nlink() > 1 {
                    inodes
                        .entry((meta.dev(), meta.ino()))
                        .or_default()
                        .push(rel.clone());
                }
                out.sizes.insert(rel.clone(), meta.len());
                entry.kind = EntryKind::File(Content::Path(path.clone()));
            } else if ft.is_fifo() {
                entry.kind = EntryKind::Node(Node::Fifo);
            } else if ft.is_char_device() || ft.is_block_device() {
                // Not 0:0: that is a whiteout (above).
                let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
                entry.kind = EntryKind::Node(if ft.is_char_device() {
                    Node::CharDevice { major, minor }
                } else {
                    Node::BlockDevice { major, minor }
                });
            } else {
                tracing::warn!(path = %rel, "a RUN step created a socket; it is not kept in the layer (as BuildKit's, whose tar writer skips sockets)");
                continue;
            }
            out.changes.insert(rel, entry);
        }
    }
    for mut names in inodes.into_values() {
        if names.len() < 2 {
            continue;
        }
        // The tar is written in path order: the link target must come first.
        names.sort();
        let first = names[0].clone();
        for name in &names[1..] {
            if let Some(entry) = out.changes.entries.get_mut(name) {
                entry.kind = EntryKind::Hardlink(first.clone());
            }
        }
    }
    Ok(out)
}

fn has_descendants(entries: &BTreeMap<String, LayerEntry>, path: &str) -> bool {
    let prefix = format!("{path}/");
    entries
        .range(prefix.clone()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(&prefix))
}

/// The changes in `upper`. `lowers` are the lower layer directories (top first);
/// `mount_points` are the mount targets (relative to `/`) whose stubs must not
/// show.
pub(crate) fn changes(
    upper: &Path,
    lowers: &[PathBuf],
    mount_points: &[String],
) -> Result<ChangeSet, SandboxError> {
    let Walked { mut changes, sizes } = walk(upper)?;
    let entries = &mut changes.entries;

    // Mount points runc created.
    let mut stub_parents = Vec::new();
    for point in mount_points {
        let point = memobuild_oci::layer::clean_entry_path(point);
        if point.is_empty() || lower_meta(lowers, &point).is_some() {
            continue;
        }
        let is_stub = match entries.get(&point).map(|e| &e.kind) {
            Some(EntryKind::File(_)) => sizes.get(&point) == Some(&0),
            Some(EntryKind::Dir) => !has_descendants(entries, &point),
            _ => false,
        };
        if is_stub {
            entries.remove(&point);
            // The /etc that runc makes for the default files stays, as in BuildKit.
            if super::spec::DEFAULT_MOUNT_POINTS.contains(&point.as_str()) {
                continue;
            }
            let mut parent = point.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                stub_parents.push(p.to_string());
                parent = p;
            }
        }
    }

    // Directories with nothing left below them that add nothing: new ones made
    // only to hold a mount point, and unchanged copied-up ones. Reverse path
    // order visits children before their parents.
    let dirs: Vec<String> = entries
        .iter()
        .rev()
        .filter(|(_, e)| e.kind == EntryKind::Dir)
        .map(|(k, _)| k.clone())
        .collect();
    for dir in dirs {
        if has_descendants(entries, &dir) {
            continue;
        }
        let Some(entry) = entries.get(&dir) else {
            continue;
        };
        let drop = match lower_meta(lowers, &dir) {
            None => stub_parents.contains(&dir),
            Some(lower) => {
                lower.is_dir()
                    && lower.mode() & 0o7777 == entry.mode
                    && lower.uid() == entry.uid
                    && lower.gid() == entry.gid
            }
        };
        if drop {
            entries.remove(&dir);
        }
    }
    // A directory where the lower layers have a file or symlink must reach
    // extractors before its children, which the layer lists first.
    changes.mark_replacing_dirs(|dir| lower_meta(lowers, dir).is_some_and(|m| !m.is_dir()));
    Ok(changes)
}

/// Parses the snapshot's mounts into (upperdir, lowerdirs top first).
pub(crate) fn upper_and_lowers(
    mounts: &[containerd_client::types::Mount],
) -> Result<(PathBuf, Vec<PathBuf>), SandboxError> {
    let [mount] = mounts else {
        return Err(SandboxError::Diff(format!(
            "expected one overlay or bind mount for the step's snapshot, got {}",
            mounts.len()
        )));
    };
    match mount.r#type.as_str() {
        "bind" => Ok((PathBuf::from(&mount.source), Vec::new())),
        "overlay" => {
            let mut upper = None;
            let mut lowers = Vec::new();
            for option in &mount.options {
                if let Some(dir) = option.strip_prefix("upperdir=") {
                    upper = Some(PathBuf::from(dir));
                } else if let Some(dirs) = option.strip_prefix("lowerdir=") {
                    lowers = dirs.split(':').map(PathBuf::from).collect();
                }
            }
            let upper = upper.ok_or_else(|| {
                SandboxError::Diff("the step's overlay mount has no upperdir".into())
            })?;
            Ok((upper, lowers))
        }
        other => Err(SandboxError::Diff(format!(
            "the step's snapshot is a {other:?} mount; memobuild needs the overlayfs snapshotter"
        ))),
    }
}
