//! Directory digests of a build context (a Merkle tree over what `.dockerignore`
//! lets a build see), cached across plans so that after a one-file save only
//! the directories on that file's path are digested again.
//!
//! A directory's digest covers, for each visible child in name order, its name,
//! type, permission bits and content: a file's BLAKE3, a symlink's target, a
//! subdirectory's digest. Never times, owners or inode numbers, so equal trees
//! give equal digests on any host. The exact encoding is in docs/CACHE.md.
//!
//! A cached digest is keyed by the tree snapshot's identity, the view (context
//! prefix and ignore rules) and the directory, and is valid while the
//! directory's stamp (see `tree`) is unchanged. A directory holding a file
//! modified within the racy window (see `hash`) is never cached: such a file
//! may change again without its stat or the tree changing.

use super::hash::RACY_WINDOW_NS;
use super::scan::{ContextIndex, FileKind, FileMeta};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;

pub type Digest = [u8; 32];

/// Beyond this many cached directories the cache starts over (stale entries
/// of replaced snapshots and forgotten projects go with it).
const MAX_ENTRIES: usize = 2_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    tree: u64,
    view: [u8; 16],
    dir: String,
}

/// Daemon-wide cache of directory digests.
#[derive(Default)]
pub struct DirDigests {
    map: Mutex<HashMap<Key, (u64, Digest)>>,
}

/// How a digest walk gets the BLAKE3 of a file: (context path, its stat).
pub type FileDigest<'a> = dyn Fn(&str, &FileMeta) -> io::Result<Digest> + 'a;

impl DirDigests {
    pub fn new() -> DirDigests {
        DirDigests::default()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<Key, (u64, Digest)>> {
        self.map.lock()
    }

    /// The digest of directory `dir` (relative to the context) as `index`
    /// sees it.
    pub fn digest(
        &self,
        index: &ContextIndex,
        dir: &str,
        file_digest: &FileDigest<'_>,
    ) -> io::Result<Digest> {
        let walk = Walk {
            cache: self,
            index,
            file_digest,
            racy_after: crate::now_ns().saturating_sub(RACY_WINDOW_NS),
        };
        Ok(walk.dir(dir)?.digest)
    }
}

struct Walk<'a> {
    cache: &'a DirDigests,
    index: &'a ContextIndex,
    file_digest: &'a FileDigest<'a>,
    /// Files modified after this (ns since the epoch) are racy.
    racy_after: i64,
}

struct Node {
    digest: Digest,
    /// Something visible below (an excluded directory without visible
    /// descendants leaves no trace, as in a flat listing).
    visible: bool,
    cacheable: bool,
}

impl Walk<'_> {
    fn dir(&self, dir: &str) -> io::Result<Node> {
        let key = Key {
            tree: self.index.tree_id(),
            view: self.index.view_id(),
            dir: self.index.tree_path(dir),
        };
        let stamp = self.index.stamp(&key.dir);
        if let Some((at, digest)) = self.cache.lock().get(&key) {
            if *at == stamp {
                return Ok(Node {
                    digest: *digest,
                    visible: *digest != empty_dir(),
                    cacheable: true,
                });
            }
        }
        let node = self.compute(dir)?;
        if node.cacheable {
            let mut map = self.cache.lock();
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            map.insert(key, (stamp, node.digest));
        }
        Ok(node)
    }

    fn compute(&self, dir: &str) -> io::Result<Node> {
        let mut records = Records::new();
        let mut cacheable = true;
        for (path, meta) in self.index.children(dir) {
            let name = path.rsplit('/').next().unwrap_or(path);
            let excluded = self.index.ignore().is_excluded(path);
            match meta.kind {
                FileKind::Dir => {
                    if excluded && !self.index.ignore().may_reinclude_below(path) {
                        continue;
                    }
                    let sub = self.dir(path)?;
                    cacheable &= sub.cacheable;
                    if excluded && !sub.visible {
                        continue;
                    }
                    let tag = if excluded { b'x' } else { b'd' };
                    let mode = if excluded { 0 } else { meta.mode };
                    records.push(name, tag, mode, &sub.digest);
                }
                _ if excluded => {}
                FileKind::File => {
                    cacheable &= meta.mtime_ns <= self.racy_after;
                    let digest = (self.file_digest)(path, meta)?;
                    records.push(name, b'f', meta.mode, &digest);
                }
                FileKind::Symlink => {
                    let target = meta.link_target.as_deref().unwrap_or("");
                    records.push(name, b'l', meta.mode, target.as_bytes());
                }
                // An empty file once copied (see `FileKind::Socket`).
                FileKind::Socket => records.push(name, b's', meta.mode, &[]),
                FileKind::Fifo => records.push(name, b'p', meta.mode, &[]),
                FileKind::CharDevice | FileKind::BlockDevice => {
                    let tag = if meta.kind == FileKind::CharDevice {
                        b'c'
                    } else {
                        b'b'
                    };
                    records.push(name, tag, meta.mode, &meta.device_key());
                }
                // Never left out silently: the build refuses (scan::FileKind).
                FileKind::NotUtf8 => return Err(super::scan::not_utf8_error(path)),
            }
        }
        Ok(Node {
            visible: records.count > 0,
            digest: records.finish(),
            cacheable,
        })
    }
}

/// The encoding of one directory's children.
struct Records {
    hasher: blake3::Hasher,
    count: u64,
}

impl Records {
    fn new() -> Records {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"memobuild-dir-v1\0");
        Records { hasher, count: 0 }
    }

    fn push(&mut self, name: &str, tag: u8, mode: u32, content: &[u8]) {
        self.count += 1;
        self.hasher
            .update(&(name.len() as u64).to_le_bytes())
            .update(name.as_bytes())
            .update(&[tag])
            .update(&mode.to_le_bytes())
            .update(&(content.len() as u64).to_le_bytes())
            .update(content);
    }

    fn finish(mut self) -> Digest {
        self.hasher.update(&self.count.to_le_bytes());
        *self.hasher.finalize().as_bytes()
    }
}

/// The digest of a directory with nothing visible in it.
fn empty_dir() -> Digest {
    Records::new().finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerignore::DockerIgnore;
    use crate::{HashCache, Tree};
    use std::collections::{BTreeMap, BTreeSet};
    use std::fs;
    use std::path::Path;

    use crate::testutil::write;

    /// The same digest from nothing but the flat, filtered listing the
    /// builds copy (`ContextIndex::below`): the cache must agree with it.
    fn from_listing(index: &ContextIndex, hashes: &HashCache) -> Digest {
        let listed: BTreeMap<String, FileMeta> = index
            .below("")
            .map(|(p, m)| (p.to_string(), m.clone()))
            .collect();
        // Directories that are not listed but hold listed entries.
        let mut hidden_dirs = BTreeSet::new();
        for path in listed.keys() {
            let mut dir = path.as_str();
            while let Some(i) = dir.rfind('/') {
                dir = &dir[..i];
                if !listed.contains_key(dir) {
                    hidden_dirs.insert(dir.to_string());
                }
            }
        }
        fn digest_of(
            dir: &str,
            listed: &BTreeMap<String, FileMeta>,
            hidden: &BTreeSet<String>,
            index: &ContextIndex,
            hashes: &HashCache,
        ) -> Digest {
            let mut names: BTreeMap<String, Option<&FileMeta>> = BTreeMap::new();
            let parent_of = |p: &str| p.rfind('/').map_or(String::new(), |i| p[..i].to_string());
            for (p, m) in listed {
                if parent_of(p) == dir {
                    names.insert(p.clone(), Some(m));
                }
            }
            for p in hidden {
                if parent_of(p) == dir {
                    names.insert(p.clone(), None);
                }
            }
            let mut records = Records::new();
            for (path, meta) in names {
                let name = path.rsplit('/').next().unwrap();
                match meta {
                    None => {
                        let d = digest_of(&path, listed, hidden, index, hashes);
                        records.push(name, b'x', 0, &d);
                    }
                    Some(m) if m.kind == FileKind::Dir => {
                        let d = digest_of(&path, listed, hidden, index, hashes);
                        records.push(name, b'd', m.mode, &d);
                    }
                    Some(m) if m.kind == FileKind::File => {
                        let d = hashes.hash(&index.host_path(&path), m).unwrap();
                        records.push(name, b'f', m.mode, &d);
                    }
                    Some(m) => records.push(
                        name,
                        b'l',
                        m.mode,
                        m.link_target.as_deref().unwrap_or("").as_bytes(),
                    ),
                }
            }
            records.finish()
        }
        digest_of("", &listed, &hidden_dirs, index, hashes)
    }

    fn cached(cache: &DirDigests, index: &ContextIndex, hashes: &HashCache) -> Digest {
        cache
            .digest(index, "", &|p, m| hashes.hash(&index.host_path(p), m))
            .unwrap()
    }

    #[test]
    fn cached_digests_follow_every_change_and_match_the_flat_listing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for (rel, text) in [
            ("a/b/c.txt", "1"),
            ("a/d.txt", "2"),
            ("a/b.txt", "sibling sorted between a/b and a/b/"),
            ("node_modules/x/y.js", "3"),
            ("node_modules/keep/k.js", "4"),
            ("logs/x.log", "5"),
            ("top.txt", "6"),
        ] {
            write(root, rel, text);
        }
        std::os::unix::fs::symlink("a/d.txt", root.join("link")).unwrap();
        let ignore =
            DockerIgnore::parse("node_modules\n!node_modules/keep\nlogs\n*.tmp\n").unwrap();
        let hashes = HashCache::new();
        let cache = DirDigests::new();
        let mut tree = Tree::scan(root).unwrap();
        let mut seen = BTreeSet::new();
        let check = |tree: &Tree, what: &str| {
            let index = ContextIndex::view(tree, root, ignore.clone());
            let want = from_listing(&index, &hashes);
            assert_eq!(cached(&cache, &index, &hashes), want, "after {what}");
            // Twice: the second answer comes from the cache.
            assert_eq!(
                cached(&cache, &index, &hashes),
                want,
                "cached, after {what}"
            );
            want
        };
        seen.insert(check(&tree, "the scan"));
        let steps: Vec<(&str, Edit)> = vec![
            ("an edit", Box::new(|r| write(r, "a/b/c.txt", "changed"))),
            ("an ignored edit", Box::new(|r| write(r, "logs/x.log", "x"))),
            ("a new file", Box::new(|r| write(r, "a/b/new.txt", "n"))),
            (
                "a re-included edit",
                Box::new(|r| write(r, "node_modules/keep/k.js", "k2")),
            ),
            (
                "a removed subtree",
                Box::new(|r| fs::remove_dir_all(r.join("a/b")).unwrap()),
            ),
            (
                "a chmod",
                Box::new(|r| {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(r.join("top.txt"), fs::Permissions::from_mode(0o600))
                        .unwrap()
                }),
            ),
        ];
        for (what, step) in steps {
            step(root);
            // Old mtimes: not racy, so the directory digests are cached.
            for file in walkdir(root) {
                crate::testutil::age(&file);
            }
            let mut changed = Vec::new();
            for rel in [
                "",
                "a",
                "a/b",
                "node_modules/keep",
                "logs",
                "top.txt",
                "a/b/c.txt",
                "a/b/new.txt",
                "node_modules/keep/k.js",
                "logs/x.log",
            ] {
                tree.refresh(rel, &mut changed).unwrap();
            }
            let digest = check(&tree, what);
            let ignored = what == "an ignored edit";
            assert_eq!(
                !seen.insert(digest),
                ignored,
                "{what} changed the digest: {}",
                !ignored
            );
        }
        assert!(!cache.is_empty());
    }

    type Edit = Box<dyn Fn(&Path)>;

    fn walkdir(root: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(root).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                out.extend(walkdir(&p));
            } else if e.file_type().unwrap().is_file() {
                out.push(p);
            }
        }
        out
    }
}
