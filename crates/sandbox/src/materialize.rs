//! Step results written straight into containerd snapshots.
//!
//! A COPY's result used to reach a later RUN as a tar: written and gzipped for
//! the layer, then uploaded into containerd, gunzipped and untarred by its Diff
//! service (seconds for 100 MB). Here the step's [`ChangeSet`] is written
//! directly into the upper directory of a snapshot prepared on the parent's
//! chain, in parallel with the layer blob, and committed under the chain id
//! the layer gives it, so the RUN finds the chain unpacked and starts at once.
//!
//! The snapshot holds what unpacking the layer would give: the same entries,
//! modes, numeric owners and mtimes (whole seconds, as in the layer); whiteouts as overlay whiteouts
//! (character device 0:0) and opaque directories with `trusted.overlay.opaque`;
//! FIFOs and device nodes made with `mknodat` (only in the snapshot's upper
//! directory, below the daemon's data dir).
//! Parent directories that the step did not write but needs come from the
//! lower layers with their attributes, as overlay's copy-up would make them.
//!
//! Safety: the daemon writes here as root. Every path is resolved below the
//! upper directory without following any symlink (`openat2` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), files are created `O_EXCL |
//! O_NOFOLLOW`, and an entry below a symlink or a file of the same step is
//! refused (the caller then lets containerd unpack the layer instead). A
//! context file must still have the content the step's key was made from.
//!
//! Crash safety: until [`Materialized::commit`] the snapshot is an active one
//! labelled with the run id and held by the run's lease, so a crash leaves
//! nothing a later run trusts (`cleanup_orphans` removes it); a committed
//! snapshot is complete.

use super::{diff, LayerInput, Leftovers, RunGuard, Sandbox, SandboxError};
use containerd_client::services::v1::snapshots::CommitSnapshotRequest;
use containerd_client::tonic::Code;
use memobuild_oci::layer::CheckingReader;
use memobuild_oci::{ChangeSet, Content, EntryKind, LayerEntry, Node};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A step result written into an active snapshot, waiting for its chain id.
/// Dropping it removes the snapshot.
pub struct Materialized {
    guard: RunGuard,
    key: String,
    /// Parent layers that had to be unpacked first.
    pub unpacked_layers: u32,
}

/// What a materialized snapshot is written on.
pub enum Base<'a> {
    /// The chain of these layers (unpacked first where missing): the
    /// snapshot gets the step's whole changes.
    Layers(&'a [LayerInput]),
    /// An existing snapshot holding an earlier result of the same step on
    /// the same parent: the snapshot gets only what differs (an edit of one
    /// file writes one file). The paths that result had and this one lacks
    /// are whited out; if one of them also exists below that result, the
    /// delta cannot express it and materializing fails.
    Previous {
        snapshot: &'a str,
        removed: Vec<String>,
    },
}

impl Sandbox {
    /// Writes `changes` (each entry with its own mtime) into a new snapshot on
    /// `base`. Commit it with the layer's chain id once the layer is written.
    ///
    /// Files under `linkable` (a directory the daemon made for this step and
    /// discards afterwards: a RUN's upper directory, a staging directory) are
    /// hard linked instead of copied; any other file is copied, never linked
    /// (a user's context file must not share an inode with a snapshot).
    pub async fn materialize(
        &self,
        base: Base<'_>,
        changes: Arc<ChangeSet>,
        linkable: Option<PathBuf>,
    ) -> Result<Materialized, SandboxError> {
        let id = super::new_id();
        let key = format!("mb-run-{id}");
        let mut guard = RunGuard {
            sandbox: self.clone(),
            state: Leftovers {
                id: id.clone(),
                ..Leftovers::default()
            },
        };
        self.create_run_lease(&mut guard, &key, &id).await?;
        let (parent, unpacked_layers, removed) = match base {
            Base::Layers(layers) => {
                guard.state.unpacking = true;
                let (parent, unpacked) = self.ensure_chain(layers, &id, &key).await?;
                guard.state.unpacking = false;
                (parent, unpacked, Vec::new())
            }
            Base::Previous { snapshot, removed } => {
                if !self.snapshot_exists(snapshot).await? {
                    return Err(SandboxError::Invalid(format!(
                        "snapshot {snapshot} is gone"
                    )));
                }
                (Some(snapshot.to_string()), 0, removed)
            }
        };
        let mounts = self
            .prepare_snapshot(
                &key,
                parent.unwrap_or_default(),
                &id,
                &key,
                "prepare a snapshot for a step's result",
            )
            .await?;
        guard.state.snapshot = true;
        let (upper, lowers) = diff::upper_and_lowers(&mounts)?;
        tokio::task::spawn_blocking(move || {
            write_changes(&upper, &lowers, &changes, &removed, linkable)
        })
        .await
        .map_err(|e| SandboxError::Invalid(format!("writing a step's snapshot: {e}")))??;
        Ok(Materialized {
            guard,
            key,
            unpacked_layers,
        })
    }
}

impl Materialized {
    /// Commits the snapshot as the unpacked chain `chain_id` (the chain id of
    /// the parent's layers plus the layer with `diff_id`). If that chain is
    /// already there, this copy is dropped.
    pub async fn commit(mut self, chain_id: &str, diff_id: &str) -> Result<(), SandboxError> {
        let sandbox = self.guard.sandbox.clone();
        let commit = CommitSnapshotRequest {
            snapshotter: sandbox.snapshotter.clone(),
            name: chain_id.to_string(),
            key: self.key.clone(),
            labels: HashMap::from([
                (
                    "containerd.io/gc.root".to_string(),
                    super::rootfs::unix_now().to_string(),
                ),
                ("memobuild.chain".to_string(), diff_id.to_string()),
            ]),
        };
        let result = sandbox
            .client()
            .snapshots()
            .commit(sandbox.req_leased(commit, &self.key))
            .await;
        match result {
            Ok(_) => self.guard.state.snapshot = false,
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => {
                self.guard.release().await;
                return Err(SandboxError::rpc("commit a step's snapshot", s));
            }
        }
        self.guard.release().await;
        Ok(())
    }
}

fn werr(path: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Diff(format!("writing {path} into a snapshot: {e}"))
}

/// Writes `changes` into the empty upper directory `upper` (lower layers
/// `lowers`, top first), and whiteouts for `removed` (see [`Base::Previous`]).
pub(crate) fn write_changes(
    upper: &Path,
    lowers: &[PathBuf],
    changes: &ChangeSet,
    removed: &[String],
    linkable: Option<PathBuf>,
) -> Result<(), SandboxError> {
    let mut upper = Upper::open(upper, lowers)?;
    upper.linkable = linkable;
    for (path, entry) in &changes.entries {
        upper.ensure_parents(path, changes)?;
        let time = Timespec {
            tv_sec: i64::try_from(entry.mtime).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        upper.put(path, entry, time).map_err(|e| werr(path, e))?;
    }
    upper.white_out(removed, changes)?;
    upper.set_dir_times()
}

struct Upper<'a> {
    root: OwnedFd,
    lowers: &'a [PathBuf],
    /// Directories made in the upper so far.
    dirs: HashSet<String>,
    /// Directories whose times are set last (writing into them moves them).
    dir_times: Vec<(String, Timespec)>,
    /// The last parent directory opened (entries come sorted, so siblings share it).
    cached: Option<(String, OwnedFd)>,
    buf: Vec<u8>,
    /// Files below this directory may be hard linked (see `Sandbox::materialize`).
    linkable: Option<PathBuf>,
}

fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

impl<'a> Upper<'a> {
    fn open(upper: &Path, lowers: &'a [PathBuf]) -> Result<Upper<'a>, SandboxError> {
        let root = rfs::open(
            upper,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| werr("/", e))?;
        Ok(Upper {
            root,
            lowers,
            dirs: HashSet::new(),
            dir_times: Vec::new(),
            cached: None,
            buf: vec![0u8; 256 * 1024],
            linkable: None,
        })
    }

    /// The directory `dir` (relative), opened without following symlinks.
    fn dir_fd(&mut self, dir: &str) -> std::io::Result<&OwnedFd> {
        let hit = matches!(&self.cached, Some((d, _)) if d == dir);
        if !hit {
            let fd = rfs::openat2(
                &self.root,
                if dir.is_empty() { "." } else { dir },
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            )?;
            self.cached = Some((dir.to_string(), fd));
        }
        Ok(&self.cached.as_ref().expect("just set").1)
    }

    /// Makes every ancestor of `path` a directory in the upper: one the step
    /// wrote is there already; one it did not is copied up from the lower
    /// layers, as overlay would.
    fn ensure_parents(&mut self, path: &str, changes: &ChangeSet) -> Result<(), SandboxError> {
        let mut ancestors: Vec<&str> = Vec::new();
        let mut cur = path;
        while let Some((parent, _)) = cur.rsplit_once('/') {
            if self.dirs.contains(parent) {
                break;
            }
            ancestors.push(parent);
            cur = parent;
        }
        for dir in ancestors.into_iter().rev() {
            if changes.entries.contains_key(dir) {
                return Err(werr(path, "it is below a non-directory of the same step"));
            }
            let lower = diff::lower_meta(self.lowers, dir)
                .filter(|m| m.is_dir())
                .ok_or_else(|| werr(path, format!("its parent {dir} is not a directory")))?;
            let time = Timespec {
                tv_sec: lower.mtime(),
                tv_nsec: lower.mtime_nsec(),
            };
            let entry = LayerEntry {
                kind: EntryKind::Dir,
                mode: lower.mode() & 0o7777,
                uid: lower.uid(),
                gid: lower.gid(),
                mtime: lower.mtime().max(0) as u64,
            };
            self.put(dir, &entry, time).map_err(|e| werr(dir, e))?;
        }
        Ok(())
    }

    fn put(&mut self, path: &str, entry: &LayerEntry, time: Timespec) -> std::io::Result<()> {
        let (dir, name) = split(path);
        match &entry.kind {
            EntryKind::Dir | EntryKind::OpaqueDir => {
                let parent = self.dir_fd(dir)?;
                rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700))?;
                set_owner_mode(parent, name, entry)?;
                if entry.kind == EntryKind::OpaqueDir {
                    let fd = rfs::openat(
                        parent,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    rfs::fsetxattr(
                        &fd,
                        "trusted.overlay.opaque",
                        b"y",
                        rfs::XattrFlags::empty(),
                    )?;
                }
                self.dirs.insert(path.to_string());
                self.dir_times.push((path.to_string(), time));
                Ok(())
            }
            EntryKind::File(Content::Path(src))
                if self.linkable.as_ref().is_some_and(|l| src.starts_with(l)) =>
            {
                // A file of the step's own upper dir or staging directory: a
                // hard link, if they share the file system, is all it takes.
                let (file, _) = memobuild_rootpath::safefs::open_regular(src, false)?;
                let parent = self.dir_fd(dir)?;
                match rfs::linkat(&file, "", parent, name, AtFlags::EMPTY_PATH) {
                    Ok(()) => set_file_attrs(&file, entry, time),
                    Err(rustix::io::Errno::XDEV) => self.put_copy(path, entry, time),
                    Err(e) => Err(e.into()),
                }
            }
            EntryKind::File(_) => self.put_copy(path, entry, time),
            EntryKind::Symlink(target) => {
                let parent = self.dir_fd(dir)?;
                rfs::symlinkat(target.as_str(), parent, name)?;
                set_owner(parent, name, entry)?;
                rfs::utimensat(parent, name, &times(time), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(Into::into)
            }
            EntryKind::Hardlink(target) => {
                let target = memobuild_oci::layer::clean_entry_path(target);
                let (tdir, tname) = split(&target);
                let tparent = self.dir_fd(tdir)?.try_clone()?;
                let parent = self.dir_fd(dir)?;
                rfs::linkat(&tparent, tname, parent, name, AtFlags::empty()).map_err(Into::into)
            }
            EntryKind::Whiteout => {
                let parent = self.dir_fd(dir)?;
                rfs::mknodat(parent, name, FileType::CharacterDevice, Mode::empty(), 0)
                    .map_err(Into::into)
            }
            EntryKind::Node(node) => {
                let (file_type, (major, minor)) = match node {
                    Node::Fifo => (FileType::Fifo, (0, 0)),
                    Node::CharDevice { .. } => (FileType::CharacterDevice, node.numbers()),
                    Node::BlockDevice { .. } => (FileType::BlockDevice, node.numbers()),
                };
                if file_type == FileType::CharacterDevice && (major, minor) == (0, 0) {
                    // That is overlay's whiteout: it would hide the path instead.
                    return Err(std::io::Error::other(
                        "a character device 0:0 cannot be kept in an overlay snapshot",
                    ));
                }
                let parent = self.dir_fd(dir)?;
                rfs::mknodat(
                    parent,
                    name,
                    file_type,
                    Mode::empty(),
                    rfs::makedev(major, minor),
                )?;
                set_owner_mode(parent, name, entry)?;
                rfs::utimensat(parent, name, &times(time), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(Into::into)
            }
        }
    }

    /// A new file with the entry's bytes, owner, mode and time.
    fn put_copy(&mut self, path: &str, entry: &LayerEntry, time: Timespec) -> std::io::Result<()> {
        let (dir, name) = split(path);
        let EntryKind::File(content) = &entry.kind else {
            return Err(std::io::Error::other("not a file entry"));
        };
        let parent = self.dir_fd(dir)?;
        let fd = rfs::openat(
            parent,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let mut file = std::fs::File::from(fd);
        write_content(&mut file, content, &mut self.buf)?;
        set_file_attrs(&file, entry, time)
    }

    /// Whiteouts for `removed` (sorted), whose lowers start with the previous
    /// result: only paths nothing below that result has.
    fn white_out(&mut self, removed: &[String], changes: &ChangeSet) -> Result<(), SandboxError> {
        let below = self.lowers.get(1..).unwrap_or_default();
        let mut hidden: Vec<&str> = Vec::new();
        let whiteout = LayerEntry {
            kind: EntryKind::Whiteout,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
        };
        for path in removed {
            let under =
                |h: &&str| path.starts_with(*h) && path.as_bytes().get(h.len()) == Some(&b'/');
            if hidden.iter().any(under) {
                continue;
            }
            if diff::lower_meta(below, path).is_some() {
                return Err(werr(
                    path,
                    "it exists below the previous result; a delta cannot uncover it",
                ));
            }
            self.ensure_parents(path, changes)?;
            let time = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            self.put(path, &whiteout, time).map_err(|e| werr(path, e))?;
            hidden.push(path);
        }
        Ok(())
    }

    fn set_dir_times(&mut self) -> Result<(), SandboxError> {
        let dirs = std::mem::take(&mut self.dir_times);
        for (path, time) in dirs.iter().rev() {
            let (dir, name) = split(path);
            let parent = self.dir_fd(dir).map_err(|e| werr(path, e))?;
            rfs::utimensat(parent, name, &times(*time), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| werr(path, e))?;
        }
        Ok(())
    }
}

fn times(time: Timespec) -> rfs::Timestamps {
    rfs::Timestamps {
        last_access: time,
        last_modification: time,
    }
}

/// Owner, then mode (chown clears setuid and setgid), then times.
fn set_file_attrs(
    file: &impl std::os::fd::AsFd,
    entry: &LayerEntry,
    time: Timespec,
) -> std::io::Result<()> {
    rfs::fchown(
        file,
        Some(rustix::fs::Uid::from_raw(entry.uid)),
        Some(rustix::fs::Gid::from_raw(entry.gid)),
    )?;
    rfs::fchmod(file, Mode::from_raw_mode(entry.mode & 0o7777))?;
    rfs::futimens(file, &times(time)).map_err(Into::into)
}

fn set_owner(parent: &OwnedFd, name: &str, entry: &LayerEntry) -> std::io::Result<()> {
    rfs::chownat(
        parent,
        name,
        Some(rustix::fs::Uid::from_raw(entry.uid)),
        Some(rustix::fs::Gid::from_raw(entry.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(Into::into)
}

fn set_owner_mode(parent: &OwnedFd, name: &str, entry: &LayerEntry) -> std::io::Result<()> {
    set_owner(parent, name, entry)?;
    rfs::chmodat(
        parent,
        name,
        Mode::from_raw_mode(entry.mode & 0o7777),
        AtFlags::empty(),
    )
    .map_err(Into::into)
}

/// Copies a file's bytes in; a context file must hash to its key's digest.
fn write_content(
    out: &mut std::fs::File,
    content: &Content,
    buf: &mut [u8],
) -> std::io::Result<()> {
    match content {
        Content::Bytes(bytes) => out.write_all(bytes),
        Content::Path(src) => {
            let (file, len) = memobuild_rootpath::safefs::open_regular(src, false)?;
            std::io::copy(&mut file.take(len), out).map(|_| ())
        }
        Content::Checked { path, blake3 } => {
            let (file, len) = memobuild_rootpath::safefs::open_regular(path, false)?;
            let mut reader = CheckingReader::new(file.take(len));
            loop {
                let n = reader.read(buf)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buf[..n])?;
            }
            reader.finish(len, blake3)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn entry(kind: EntryKind, mode: u32, uid: u32, gid: u32) -> LayerEntry {
        LayerEntry {
            kind,
            mode,
            uid,
            gid,
            mtime: 1_600_000_000,
        }
    }

    /// FIFOs and devices are made with their numbers, owner, mode and time;
    /// a character device 0:0 (overlay's whiteout) is refused.
    #[test]
    fn fifos_and_devices_are_made_as_such() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: making a device node needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut c = ChangeSet::default();
        c.insert("d".into(), entry(EntryKind::Dir, 0o755, 0, 0));
        c.insert(
            "d/pipe".into(),
            entry(EntryKind::Node(Node::Fifo), 0o4640, 1, 2),
        );
        let null = Node::CharDevice { major: 1, minor: 3 };
        c.insert("d/null".into(), entry(EntryKind::Node(null), 0o666, 3, 4));
        let blk = Node::BlockDevice {
            major: 7,
            minor: 300,
        };
        c.insert("blk".into(), entry(EntryKind::Node(blk), 0o600, 0, 6));
        write_changes(dir.path(), &[], &c, &[], None).unwrap();
        let meta = |p: &str| std::fs::symlink_metadata(dir.path().join(p)).unwrap();
        let pipe = meta("d/pipe");
        assert!(pipe.file_type().is_fifo());
        let got = (pipe.mode() & 0o7777, pipe.uid(), pipe.gid(), pipe.mtime());
        assert_eq!(got, (0o4640, 1, 2, 1_600_000_000));
        let null = meta("d/null");
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(
            (null.mode() & 0o7777, null.uid(), null.gid()),
            (0o666, 3, 4)
        );
        let blk = meta("blk");
        assert!(blk.file_type().is_block_device());
        assert_eq!(blk.rdev(), rustix::fs::makedev(7, 300));
        assert_eq!((blk.mode() & 0o7777, blk.gid()), (0o600, 6));

        let mut zero = ChangeSet::default();
        let node = Node::CharDevice { major: 0, minor: 0 };
        zero.insert("z".into(), entry(EntryKind::Node(node), 0o600, 0, 0));
        let other = tempfile::tempdir().unwrap();
        assert!(write_changes(other.path(), &[], &zero, &[], None).is_err());
    }
}
