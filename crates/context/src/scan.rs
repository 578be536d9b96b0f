//! What a build may see of its context: a [`ContextIndex`] is a view of a
//! [`Tree`] snapshot (the context may be a subdirectory of a watched tree) with
//! the build's `.dockerignore` applied. Symlinks are recorded, never followed.

use super::dockerignore::DockerIgnore;
use super::tree::{Entries, Stamps, Tree};
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A Unix socket: BuildKit's context transfer (fsutil) clears the socket
    /// bit, so COPY/ADD give an empty regular file with the socket's
    /// permission bits.
    Socket,
    /// A FIFO (named pipe): copied as a FIFO, as BuildKit's context
    /// transfer (fsutil) sends it and its copy makes it (`mknod`).
    Fifo,
    /// A character device: copied as a device node with the same device
    /// numbers ([`FileMeta::device_numbers`]), as in BuildKit. Only root can
    /// make one, so only a root-made context has them.
    CharDevice,
    /// A block device: as [`FileKind::CharDevice`].
    BlockDevice,
    /// An entry whose name is not UTF-8 (any type; a directory is not
    /// walked). Paths here are UTF-8 strings, so its key in the tree is the
    /// name with each byte that is not UTF-8 written `\xNN`
    /// ([`crate::tree::escape_name`]). A build that would copy or hash it
    /// fails with [`not_utf8_error`] rather than leave it out;
    /// `.dockerignore` patterns match the escaped name.
    NotUtf8,
}

/// The error for a context entry whose name is not UTF-8 (`path` escaped, as
/// the tree keys it), naming it and what to do.
pub fn not_utf8_error(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "\"{path}\": the file name is not UTF-8 (shown with \\xNN for the bytes that are not); memobuild cannot copy such names byte for byte yet and refuses rather than leave the file out: rename it to UTF-8 (e.g. `convmv -f latin1 -t utf-8 --notest -r .`) or add it to .dockerignore"
        ),
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub kind: FileKind,
    /// Permission bits plus setuid/setgid/sticky.
    pub mode: u32,
    /// A regular file's length; for a device node its device number
    /// (`st_rdev`: what a device has instead of content, so a node made
    /// again with other numbers shows as changed); 0 for a FIFO.
    pub size: u64,
    /// Nanoseconds since the epoch (i64 lasts until 2262).
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub dev: u64,
    /// A symlink's target (`Box<str>`: 8 bytes less per entry than `String`,
    /// and the index holds one `FileMeta` per path).
    pub link_target: Option<Box<str>>,
}

impl FileMeta {
    /// `(major, minor)` of a device node, `None` for any other entry.
    pub fn device_numbers(&self) -> Option<(u32, u32)> {
        matches!(self.kind, FileKind::CharDevice | FileKind::BlockDevice)
            .then(|| (libc::major(self.size), libc::minor(self.size)))
    }

    /// What a device node has in a cache key instead of content: its major
    /// and minor numbers (little-endian u32 each); empty for anything else.
    pub fn device_key(&self) -> Vec<u8> {
        match self.device_numbers() {
            Some((major, minor)) => [major.to_le_bytes(), minor.to_le_bytes()].concat(),
            None => Vec::new(),
        }
    }

    pub(crate) fn from_metadata(meta: &fs::Metadata, link_target: Option<String>) -> FileMeta {
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_file() {
            FileKind::File
        } else if ft.is_socket() {
            FileKind::Socket
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else if ft.is_char_device() {
            FileKind::CharDevice
        } else {
            FileKind::BlockDevice
        };
        let size = match kind {
            FileKind::CharDevice | FileKind::BlockDevice => meta.rdev(),
            FileKind::Fifo => 0,
            _ => meta.size(),
        };
        FileMeta {
            kind,
            mode: meta.mode() & 0o7777,
            size,
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime_ns: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
            link_target: link_target.map(String::into_boxed_str),
        }
    }
}

/// The context as one build sees it. Paths are slash-separated and relative to
/// the context root (the root itself is `""`).
#[derive(Debug, Clone)]
pub struct ContextIndex {
    /// The context directory on the host.
    pub root: PathBuf,
    entries: Entries,
    /// Where the context sits in the tree (`""` when it is the tree's root), with
    /// a trailing `/` when not empty.
    prefix: String,
    ignore: DockerIgnore,
    tree_id: u64,
    stamps: Stamps,
    /// Identifies prefix and ignore rules, for caches of derived data.
    view_id: [u8; 16],
}

impl ContextIndex {
    /// A view of `tree` for the context at `root` (inside the tree's root).
    pub fn view(tree: &Tree, root: &Path, ignore: DockerIgnore) -> ContextIndex {
        let rel = root
            .strip_prefix(&tree.root)
            .ok()
            .and_then(|p| p.to_str())
            .unwrap_or("")
            .to_string();
        let prefix = if rel.is_empty() {
            rel
        } else {
            format!("{rel}/")
        };
        let mut view = blake3::Hasher::new();
        view.update(prefix.as_bytes())
            .update(b"\0")
            .update(ignore.canonical().as_bytes());
        let mut view_id = [0; 16];
        view_id.copy_from_slice(&view.finalize().as_bytes()[..16]);
        ContextIndex {
            root: root.to_path_buf(),
            entries: tree.entries.clone(),
            prefix,
            ignore,
            tree_id: tree.id,
            stamps: tree.stamps.clone(),
            view_id,
        }
    }

    /// Walks `root` now (no watcher): for one-off builds and tests.
    pub fn scan(root: &Path, ignore: &DockerIgnore) -> io::Result<ContextIndex> {
        let tree = Tree::scan(root)?;
        Ok(ContextIndex::view(&tree, root, ignore.clone()))
    }

    pub fn ignore(&self) -> &DockerIgnore {
        &self.ignore
    }

    /// The snapshot's tree (see `Tree::id`).
    pub(crate) fn tree_id(&self) -> u64 {
        self.tree_id
    }

    pub(crate) fn view_id(&self) -> [u8; 16] {
        self.view_id
    }

    /// The stamp of directory `tree_path` (see [`ContextIndex::tree_path`]).
    pub fn stamp(&self, tree_path: &str) -> u64 {
        super::tree::stamp_of(&self.stamps, tree_path)
    }

    /// Where context path `rel` sits in the tree.
    pub(crate) fn tree_path(&self, rel: &str) -> String {
        self.full(rel)
    }

    /// The direct children of directory `rel`, in name order, `.dockerignore`
    /// not applied. Each child's subtree is skipped with one seek.
    pub fn children<'a>(&'a self, rel: &str) -> Children<'a> {
        let start = if rel.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{rel}/", self.prefix)
        };
        Children {
            entries: &self.entries,
            strip: self.prefix.len(),
            range: self.entries.range(start.clone()..),
            start,
        }
    }

    fn full(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.prefix.trim_end_matches('/').to_string()
        } else {
            format!("{}{rel}", self.prefix)
        }
    }

    pub fn get(&self, rel: &str) -> Option<&FileMeta> {
        if !rel.is_empty() && self.ignore.is_excluded(rel) {
            return None;
        }
        self.entries.get(&self.full(rel))
    }

    /// Host path of an entry.
    pub fn host_path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// Entries strictly below directory `rel` (paths relative to the context), in
    /// path order, `.dockerignore` applied.
    pub fn below<'a>(&'a self, rel: &str) -> impl Iterator<Item = (&'a str, &'a FileMeta)> + 'a {
        let start = if rel.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}{rel}/", self.prefix)
        };
        let strip = self.prefix.len();
        self.entries
            .range(start.clone()..)
            .take_while(move |(k, _)| k.starts_with(&start))
            .filter(move |(k, _)| k.len() > strip)
            .map(move |(k, m)| (&k[strip..], m))
            .filter(move |(k, _)| !self.ignore.is_excluded(k))
    }

    /// Every entry of the context except its root.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FileMeta)> + '_ {
        self.below("")
    }
}

/// See [`ContextIndex::children`].
pub struct Children<'a> {
    entries: &'a std::collections::BTreeMap<String, FileMeta>,
    /// Tree path of the directory, with its trailing `/` (empty for the root).
    start: String,
    strip: usize,
    range: std::collections::btree_map::Range<'a, String, FileMeta>,
}

impl<'a> Iterator for Children<'a> {
    type Item = (&'a str, &'a FileMeta);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (key, meta) = self.range.next()?;
            let rest = key.strip_prefix(self.start.as_str())?;
            if rest.is_empty() {
                continue; // the directory itself (the tree's root sorts first)
            }
            match rest.find('/') {
                // A grandchild: skip what is left of that child's subtree.
                // `0` is the character after `/`, so `child0` sorts after
                // every `child/...` and before any later sibling.
                Some(i) => {
                    let next = format!("{}{}0", self.start, &rest[..i]);
                    self.range = self.entries.range(next..);
                }
                None => return Some((&key[self.strip..], meta)),
            }
        }
    }
}
