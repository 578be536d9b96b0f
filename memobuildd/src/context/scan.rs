//! Walking a context directory into a [`ContextIndex`]: every path the build may
//! see (after `.dockerignore`), with its type, mode and stat identity. Symlinks
//! are recorded, never followed.

use super::dockerignore::DockerIgnore;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// Sockets, devices, FIFOs: Docker skips these in a context; so do we.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub kind: FileKind,
    /// Permission bits plus setuid/setgid/sticky.
    pub mode: u32,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub ino: u64,
    pub dev: u64,
    pub link_target: Option<String>,
}

impl FileMeta {
    fn from_metadata(meta: &fs::Metadata, link_target: Option<String>) -> FileMeta {
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_file() {
            FileKind::File
        } else {
            FileKind::Other
        };
        FileMeta {
            kind,
            mode: meta.mode() & 0o7777,
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
            ino: meta.ino(),
            dev: meta.dev(),
            link_target,
        }
    }
}

/// The paths of a context that survive `.dockerignore`, keyed by slash-separated
/// path relative to the context root (the root itself is `""`).
#[derive(Debug, Clone)]
pub struct ContextIndex {
    pub root: PathBuf,
    pub entries: BTreeMap<String, FileMeta>,
}

impl ContextIndex {
    /// Walks `root`. Excluded directories are skipped unless an exception pattern
    /// could re-include something below them.
    pub fn scan(root: &Path, ignore: &DockerIgnore) -> io::Result<ContextIndex> {
        let meta = fs::metadata(root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        let mut entries = BTreeMap::new();
        entries.insert(String::new(), FileMeta::from_metadata(&meta, None));
        walk(root, "", ignore, &mut entries)?;
        Ok(ContextIndex {
            root: root.to_path_buf(),
            entries,
        })
    }

    pub fn get(&self, rel: &str) -> Option<&FileMeta> {
        self.entries.get(rel)
    }

    /// Host path of an entry.
    pub fn host_path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// Entries strictly below directory `rel`, in path order.
    pub fn below<'a>(
        &'a self,
        rel: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a FileMeta)> + 'a {
        let prefix = if rel.is_empty() {
            String::new()
        } else {
            format!("{rel}/")
        };
        self.entries
            .range(prefix.clone()..)
            .skip_while(move |(k, _)| k.is_empty() && rel.is_empty())
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }
}

fn walk(
    root: &Path,
    rel_dir: &str,
    ignore: &DockerIgnore,
    out: &mut BTreeMap<String, FileMeta>,
) -> io::Result<()> {
    let dir = if rel_dir.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel_dir)
    };
    let read = match fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("reading directory {}: {e}", dir.display()),
            ))
        }
    };
    for entry in read {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!(dir = %dir.display(), "skipping a file whose name is not UTF-8");
            continue;
        };
        let rel = if rel_dir.is_empty() {
            name.to_string()
        } else {
            format!("{rel_dir}/{name}")
        };
        let meta = fs::symlink_metadata(entry.path())?;
        let excluded = ignore.is_excluded(&rel);
        if meta.is_dir() {
            if excluded && !ignore.may_reinclude_below(&rel) {
                continue;
            }
            if !excluded {
                out.insert(rel.clone(), FileMeta::from_metadata(&meta, None));
            }
            walk(root, &rel, ignore, out)?;
            continue;
        }
        if excluded {
            continue;
        }
        let target = if meta.file_type().is_symlink() {
            Some(fs::read_link(entry.path())?.to_string_lossy().into_owned())
        } else {
            None
        };
        let meta = FileMeta::from_metadata(&meta, target);
        if meta.kind != FileKind::Other {
            out.insert(rel, meta);
        }
    }
    Ok(())
}
