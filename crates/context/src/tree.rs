//! A directory tree's stat index: every path below a root (no `.dockerignore`
//! applied: several projects with different ignore files may share one tree),
//! refreshed path by path as the watcher reports changes.
//!
//! The map sits behind an `Arc` so a build can hold a consistent snapshot while
//! the watcher updates the tree (copy-on-write: the copy only happens if a build
//! still holds the old snapshot).
//!
//! Every refresh stamps the directories above what it changed, so a cached
//! digest of a directory (see `merkle`) stays valid exactly as long as its
//! stamp in the snapshot at hand is the one it was computed under.

use super::scan::FileMeta;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Files the daemon itself writes into watched trees (barrier cookies).
pub const COOKIE_PREFIX: &str = ".memobuild-cookie-";

pub type Entries = Arc<BTreeMap<String, FileMeta>>;

/// Directory -> the refresh that last changed something below it. Directories
/// not listed have not changed since the scan (stamp 0).
pub type Stamps = Arc<std::collections::HashMap<String, u64>>;

#[derive(Debug, Clone)]
pub struct Tree {
    pub root: PathBuf,
    pub entries: Entries,
    /// Unique per scan in this process: stamps of different scans never mix.
    pub id: u64,
    pub stamps: Stamps,
    clock: u64,
}

static NEXT_TREE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn is_cookie(name: &str) -> bool {
    name.starts_with(COOKIE_PREFIX)
}

/// A directory entry's name as the tree keys it: the name itself when it is
/// UTF-8 (`Ok`), else (`Err`) the name with each byte that is not UTF-8
/// written `\xNN` (lowercase hex), for a [`super::FileKind::NotUtf8`] entry.
pub(crate) fn escape_name(name: &std::ffi::OsStr) -> Result<&str, String> {
    use std::os::unix::ffi::OsStrExt;
    if let Some(name) = name.to_str() {
        return Ok(name);
    }
    let mut out = String::new();
    for chunk in name.as_bytes().utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    Err(out)
}

/// The entry of a name that is not UTF-8: its stat, marked (never walked).
fn not_utf8(meta: &fs::Metadata) -> FileMeta {
    FileMeta {
        kind: super::FileKind::NotUtf8,
        ..FileMeta::from_metadata(meta, None)
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

impl Tree {
    /// Walks `root` completely (stat only; symlinks recorded, never followed).
    pub fn scan(root: &Path) -> io::Result<Tree> {
        let meta = fs::metadata(root)?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        let mut entries = BTreeMap::new();
        entries.insert(String::new(), FileMeta::from_metadata(&meta, None));
        walk(root, "", &mut entries)?;
        Ok(Tree {
            root: root.to_path_buf(),
            entries: Arc::new(entries),
            id: NEXT_TREE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            stamps: Stamps::default(),
            clock: 0,
        })
    }

    /// The stamp of directory `dir` (tree-relative) in this snapshot.
    pub fn stamp(&self, dir: &str) -> u64 {
        stamp_of(&self.stamps, dir)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Re-stats `rel` (and walks it if it is a directory that is new or whose
    /// listing changed). Returns the paths whose entry changed.
    pub fn refresh(&mut self, rel: &str, changed: &mut Vec<String>) -> io::Result<()> {
        let first = changed.len();
        let result = self.refresh_entries(rel, changed);
        self.stamp_ancestors(&changed[first..]);
        result
    }

    /// Gives every directory above `paths` a new stamp.
    fn stamp_ancestors(&mut self, paths: &[String]) {
        if paths.is_empty() {
            return;
        }
        self.clock += 1;
        let stamps = Arc::make_mut(&mut self.stamps);
        for path in paths {
            let mut dir = path.as_str();
            while !dir.is_empty() {
                dir = dir.rfind('/').map_or("", |i| &dir[..i]);
                if stamps.get(dir) == Some(&self.clock) {
                    break;
                }
                stamps.insert(dir.to_string(), self.clock);
            }
        }
    }

    fn refresh_entries(&mut self, rel: &str, changed: &mut Vec<String>) -> io::Result<()> {
        if rel.rsplit('/').next().is_some_and(is_cookie) {
            return Ok(());
        }
        let host = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        let entries = Arc::make_mut(&mut self.entries);
        let meta = match fs::symlink_metadata(&host) {
            Ok(m) => m,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                remove_subtree(entries, rel, changed);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let target = if meta.file_type().is_symlink() {
            Some(fs::read_link(&host)?.to_string_lossy().into_owned())
        } else {
            None
        };
        let new = FileMeta::from_metadata(&meta, target);
        let was_dir = entries
            .get(rel)
            .is_some_and(|m| m.kind == super::FileKind::Dir);
        if new.kind != super::FileKind::Dir && was_dir {
            remove_subtree(entries, rel, changed);
        }
        match entries.get(rel) {
            Some(old) if old == &new => {}
            // A directory's times change whenever an entry is added or removed
            // below it; those entries report themselves, and times are no input.
            Some(old) if old.kind == super::FileKind::Dir && same_dir(old, &new) => {
                entries.insert(rel.to_string(), new.clone());
            }
            _ => {
                entries.insert(rel.to_string(), new.clone());
                changed.push(rel.to_string());
            }
        }
        if new.kind == super::FileKind::Dir {
            sync_listing(&self.root, rel, entries, changed, !was_dir)?;
        }
        Ok(())
    }
}

pub(crate) fn stamp_of(stamps: &Stamps, dir: &str) -> u64 {
    stamps.get(dir).copied().unwrap_or(0)
}

/// Brings the children of directory `rel` in line with the disk: removes the
/// ones that are gone, adds new ones (walking new directories completely).
fn sync_listing(
    root: &Path,
    rel: &str,
    entries: &mut BTreeMap<String, FileMeta>,
    changed: &mut Vec<String>,
    new_dir: bool,
) -> io::Result<()> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let mut on_disk = std::collections::BTreeSet::new();
    let read = match fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in read {
        let entry = entry?;
        let file_name = entry.file_name();
        let (name, utf8) = match escape_name(&file_name) {
            Ok(name) => (name.to_string(), true),
            Err(escaped) => (escaped, false),
        };
        if is_cookie(&name) {
            continue;
        }
        let child = join(rel, &name);
        on_disk.insert(name);
        if !utf8 {
            if new_dir || !entries.contains_key(&child) {
                let meta = match entry.metadata() {
                    Ok(m) => not_utf8(&m),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                changed.push(child.clone());
                entries.insert(child, meta);
            }
            continue;
        }
        if new_dir || !entries.contains_key(&child) {
            let meta = entry.metadata()?;
            let target = if meta.file_type().is_symlink() {
                Some(fs::read_link(entry.path())?.to_string_lossy().into_owned())
            } else {
                None
            };
            let meta = FileMeta::from_metadata(&meta, target);
            let mut added = BTreeMap::new();
            if meta.kind == super::FileKind::Dir {
                walk(root, &child, &mut added)?;
            }
            added.insert(child, meta);
            for (path, meta) in added {
                if entries.get(&path) != Some(&meta) {
                    changed.push(path.clone());
                    entries.insert(path, meta);
                }
            }
        }
    }
    let prefix = if rel.is_empty() {
        String::new()
    } else {
        format!("{rel}/")
    };
    let gone: Vec<String> = entries
        .range(prefix.clone()..)
        .skip(usize::from(rel.is_empty()))
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter(|(k, _)| !k[prefix.len()..].contains('/') && !on_disk.contains(&k[prefix.len()..]))
        .map(|(k, _)| k.clone())
        .collect();
    for g in gone {
        remove_subtree(entries, &g, changed);
    }
    Ok(())
}

/// Two stats of one directory that differ at most in times and size.
pub(crate) fn same_dir(a: &FileMeta, b: &FileMeta) -> bool {
    a.kind == b.kind && a.mode == b.mode && a.ino == b.ino && a.dev == b.dev
}

fn remove_subtree(entries: &mut BTreeMap<String, FileMeta>, rel: &str, changed: &mut Vec<String>) {
    if entries.remove(rel).is_some() {
        changed.push(rel.to_string());
    }
    // For the root itself (`""`) that is everything.
    changed.extend(memobuild_rootpath::remove_below(entries, rel));
}

fn walk(root: &Path, rel_dir: &str, out: &mut BTreeMap<String, FileMeta>) -> io::Result<()> {
    let dir = if rel_dir.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel_dir)
    };
    let read = match fs::read_dir(&dir) {
        Ok(r) => r,
        // Gone between the event and the walk: the next event will say so.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
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
        let name = match escape_name(&name) {
            Ok(name) => name,
            Err(escaped) => {
                // Kept as a marker: a build that would copy it refuses.
                match entry.metadata() {
                    Ok(m) => out.insert(join(rel_dir, &escaped), not_utf8(&m)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                continue;
            }
        };
        if is_cookie(name) {
            continue;
        }
        let rel = join(rel_dir, name);
        // DirEntry::metadata is an fstatat relative to the open directory: no
        // full path resolution per file.
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let target = if meta.file_type().is_symlink() {
            Some(fs::read_link(entry.path())?.to_string_lossy().into_owned())
        } else {
            None
        };
        let meta = FileMeta::from_metadata(&meta, target);
        match meta.kind {
            super::FileKind::Dir => {
                out.insert(rel.clone(), meta);
                walk(root, &rel, out)?;
            }
            super::FileKind::NotUtf8 => {}
            _ => {
                out.insert(rel, meta);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::write;

    fn fresh(root: &Path) -> Vec<String> {
        Tree::scan(root).unwrap().entries.keys().cloned().collect()
    }

    #[test]
    fn names_that_are_not_utf8_are_kept_as_escaped_markers() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "sub/ok.txt", "1");
        fs::write(root.join(std::ffi::OsStr::from_bytes(b"caf\xe9")), "2").unwrap();
        let bad_dir = root.join("sub").join(std::ffi::OsStr::from_bytes(b"d\xff"));
        fs::create_dir(&bad_dir).unwrap();
        fs::write(bad_dir.join("inner"), "3").unwrap();
        let tree = Tree::scan(root).unwrap();
        let kind = |p: &str| tree.entries.get(p).map(|m| m.kind);
        assert_eq!(kind("caf\\xe9"), Some(crate::FileKind::NotUtf8));
        // A directory is one marker, not walked.
        assert_eq!(kind("sub/d\\xff"), Some(crate::FileKind::NotUtf8));
        assert_eq!(kind("sub/d\\xff/inner"), None);
        assert_eq!(kind("sub/ok.txt"), Some(crate::FileKind::File));
        // The parent's refresh (what the watcher does for such a name)
        // removes and adds markers as a fresh scan would.
        let mut tree = tree;
        let mut changed = Vec::new();
        fs::remove_dir_all(&bad_dir).unwrap();
        tree.refresh("sub", &mut changed).unwrap();
        assert_eq!(changed, ["sub/d\\xff"]);
        fs::write(
            root.join("sub").join(std::ffi::OsStr::from_bytes(b"\x80x")),
            "4",
        )
        .unwrap();
        tree.refresh("sub", &mut changed).unwrap();
        assert_eq!(
            tree.entries.keys().cloned().collect::<Vec<_>>(),
            fresh(root)
        );
        assert_eq!(kind_of(&tree, "sub/\\x80x"), Some(crate::FileKind::NotUtf8));
        assert_eq!(
            escape_name(std::ffi::OsStr::from_bytes(b"a\xc3\xa9\xe9b")),
            Err("a\u{e9}\\xe9b".to_string())
        );
        assert_eq!(
            escape_name(std::ffi::OsStr::new("caf\u{e9}")),
            Ok("caf\u{e9}")
        );
    }

    fn kind_of(tree: &Tree, path: &str) -> Option<crate::FileKind> {
        tree.entries.get(path).map(|m| m.kind)
    }

    #[test]
    fn refresh_matches_a_fresh_scan_after_every_kind_of_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "a/b/c.txt", "1");
        write(root, "a/d.txt", "2");
        let mut tree = Tree::scan(root).unwrap();
        let mut changed = Vec::new();
        // New subtree moved in: one event for its top only.
        let outside = tempfile::tempdir_in(root.parent().unwrap()).unwrap();
        write(outside.path(), "src/x/y.txt", "3");
        fs::rename(outside.path().join("src"), root.join("m")).unwrap();
        tree.refresh("m", &mut changed).unwrap();
        // Deleted subtree.
        fs::remove_dir_all(root.join("a/b")).unwrap();
        tree.refresh("a/b", &mut changed).unwrap();
        // A file replaced by a directory.
        fs::remove_file(root.join("a/d.txt")).unwrap();
        write(root, "a/d.txt/inner", "4");
        tree.refresh("a/d.txt", &mut changed).unwrap();
        assert_eq!(
            tree.entries.keys().cloned().collect::<Vec<_>>(),
            fresh(root)
        );
        assert!(changed.contains(&"m/x/y.txt".to_string()));
        assert!(changed.contains(&"a/b/c.txt".to_string()));
    }
}
