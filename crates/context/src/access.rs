//! Whether the user a build reads for may read what the build can use.
//!
//! The watcher indexes and hashes a context with the daemon's rights, and the
//! step cache answers for content by its digest, so reading each file as the
//! user at copy time alone would not stop a user from getting files they may
//! not read (the warm digests and a cached layer need no read). [`check_readable`]
//! therefore opens, with the reader's rights ([`memobuild_rootpath::creds`]),
//! every entry of the build's view of the context (after `.dockerignore`):
//! directories are opened for listing, regular files for reading, links and
//! sockets are looked up; each must be the very inode the index holds
//! (device and inode number), so the digests the plan uses are digests of
//! files this user could open. Later reads (hashing a changed file, copying)
//! open with the user's rights too.

use crate::scan::{ContextIndex, FileKind};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("{path}: permission denied: uid {uid} may not read it, and memobuildd reads build contexts with the rights of the user who asks")]
    Denied { path: String, uid: u32 },
    #[error("{path} {}", crate::CHANGED_DURING_BUILD)]
    Changed { path: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{0}")]
    Switch(io::Error),
}

/// Checks, with the reader set on this thread by
/// [`memobuild_rootpath::creds::reading_as`], that every entry of `index` can
/// be opened (see the module's doc). Without a reader, does nothing.
pub fn check_readable(index: &ContextIndex) -> Result<(), AccessError> {
    let Some(creds) = memobuild_rootpath::creds::current() else {
        return Ok(());
    };
    memobuild_rootpath::creds::as_reader(|| walk(index, creds.uid)).map_err(AccessError::Switch)?
}

fn walk(index: &ContextIndex, uid: u32) -> Result<(), AccessError> {
    let root = index.host_path("");
    let shown = |rel: &str| {
        if rel.is_empty() {
            root.display().to_string()
        } else {
            index.host_path(rel).display().to_string()
        }
    };
    let fail = |rel: &str, e: io::Error| match e.kind() {
        io::ErrorKind::PermissionDenied => AccessError::Denied {
            path: shown(rel),
            uid,
        },
        io::ErrorKind::NotFound => AccessError::Changed { path: shown(rel) },
        _ if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::ENOTDIR) => {
            AccessError::Changed { path: shown(rel) }
        }
        _ => AccessError::Io {
            path: shown(rel),
            source: e,
        },
    };
    open_dir(&root, true).map_err(|e| fail("", e))?;
    for (rel, meta) in index.iter() {
        let path = index.host_path(rel);
        let found = match meta.kind {
            FileKind::Dir => open_dir(&path, false),
            FileKind::File => memobuild_rootpath::safefs::open_regular(&path, false)
                .map_err(io::Error::from)
                .and_then(|(f, _)| f.metadata()),
            // Never opened (opening a FIFO blocks, a device is not ours to open).
            FileKind::Symlink
            | FileKind::Socket
            | FileKind::Fifo
            | FileKind::CharDevice
            | FileKind::BlockDevice => std::fs::symlink_metadata(&path),
            // Its name cannot be opened from here; a build that would copy it
            // fails when planned (scan::FileKind::NotUtf8).
            FileKind::NotUtf8 => continue,
        }
        .map_err(|e| fail(rel, e))?;
        if (found.dev(), found.ino()) != (meta.dev, meta.ino) {
            return Err(AccessError::Changed { path: shown(rel) });
        }
    }
    Ok(())
}

/// Opens a directory for listing (read permission on it, search on the way).
fn open_dir(path: &Path, follow: bool) -> io::Result<std::fs::Metadata> {
    let mut flags = libc::O_DIRECTORY | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(path)?
        .metadata()
}
