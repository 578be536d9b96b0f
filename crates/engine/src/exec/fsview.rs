//! A read-only view of a filesystem made of layers: which path exists, as what,
//! with which mode and owner, and in which layer its bytes are. Built from tar
//! headers only (OCI whiteouts applied), and cached per layer digest.

use memobuild_oci::layer::{clean_entry_path, open_layer};
use memobuild_oci::{ChangeSet, EntryKind, Node, OciError};
use memobuild_store::{LayerRecord, Store};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewKind {
    File,
    Dir,
    Symlink(String),
    Hardlink(String),
    /// A FIFO or device node (with its device numbers).
    Node(Node),
    /// Any other tar entry type (copied by nothing).
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewEntry {
    pub kind: ViewKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Modification time, Unix seconds (the tar header's).
    pub mtime: u64,
    /// Index of the layer holding this version.
    pub layer: usize,
}

/// One layer's entries, in tar order; whiteouts are kept as markers.
#[derive(Debug, PartialEq)]
struct LayerIndex {
    entries: Vec<(String, ViewEntry)>,
    whiteouts: Vec<String>,
    opaque_dirs: Vec<String>,
}

/// Parsed layer indexes, shared by all builds, by diff_id (the uncompressed
/// tar: one index whatever the compression, and known before the blob is).
#[derive(Default)]
pub struct LayerCache {
    layers: Mutex<HashMap<String, Arc<LayerIndex>>>,
}

impl LayerCache {
    fn index(&self, store: &Store, layer: &LayerRecord) -> Result<Arc<LayerIndex>, OciError> {
        if let Some(found) = self.layers.lock().get(&layer.diff_id) {
            return Ok(found.clone());
        }
        let index = Arc::new(read_index(store, &layer.digest)?);
        self.layers
            .lock()
            .insert(layer.diff_id.clone(), index.clone());
        Ok(index)
    }

    /// Indexes the layer `diff_id` being written from `changes` (`file_sizes`:
    /// what the writer gave each regular file, in order), so the next step
    /// does not read its headers back (decompressing the whole layer), nor
    /// wait for its blob. False if the sizes do not fit the changes.
    pub(crate) fn remember(&self, diff_id: &str, changes: &ChangeSet, file_sizes: &[u64]) -> bool {
        let Some(index) = index_of_changes(changes, file_sizes) else {
            return false;
        };
        self.layers
            .lock()
            .insert(diff_id.to_string(), Arc::new(index));
        true
    }
}

/// What [`read_index`] reads from the layer written from `changes`.
fn index_of_changes(changes: &ChangeSet, file_sizes: &[u64]) -> Option<LayerIndex> {
    let mut sizes = file_sizes.iter();
    let mut index = LayerIndex {
        entries: Vec::new(),
        whiteouts: Vec::new(),
        opaque_dirs: Vec::new(),
    };
    for (path, entry) in changes.tar_order() {
        let (kind, size) = match &entry.kind {
            EntryKind::File(_) => (ViewKind::File, *sizes.next()?),
            EntryKind::Dir => (ViewKind::Dir, 0),
            EntryKind::OpaqueDir => {
                index.opaque_dirs.push(path.clone());
                (ViewKind::Dir, 0)
            }
            EntryKind::Symlink(target) => (ViewKind::Symlink(target.clone()), 0),
            EntryKind::Hardlink(target) => (ViewKind::Hardlink(clean_entry_path(target)), 0),
            EntryKind::Node(node) => (ViewKind::Node(*node), 0),
            EntryKind::Whiteout => {
                index.whiteouts.push(path.clone());
                continue;
            }
        };
        let view = ViewEntry {
            kind,
            mode: entry.mode & 0o7777,
            uid: entry.uid,
            gid: entry.gid,
            size,
            mtime: entry.mtime,
            layer: 0,
        };
        index.entries.push((path.clone(), view));
    }
    sizes.next().is_none().then_some(index)
}

fn read_err(digest: &str, source: std::io::Error) -> OciError {
    OciError::Read {
        digest: digest.to_string(),
        source,
    }
}

fn read_index(store: &Store, digest: &str) -> Result<LayerIndex, OciError> {
    let mut archive = tar::Archive::new(open_layer(&store.blobs, digest)?);
    let mut index = LayerIndex {
        entries: Vec::new(),
        whiteouts: Vec::new(),
        opaque_dirs: Vec::new(),
    };
    for entry in archive.entries().map_err(|e| read_err(digest, e))? {
        let entry = entry.map_err(|e| read_err(digest, e))?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let path = clean_entry_path(&raw);
        if path.is_empty() {
            continue;
        }
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (p.to_string(), n),
            None => (String::new(), path.as_str()),
        };
        if name == ".wh..wh..opq" {
            index.opaque_dirs.push(parent);
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            index.whiteouts.push(join(&parent, hidden));
            continue;
        }
        let header = entry.header();
        let link = || {
            entry
                .link_name_bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let kind = match header.entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => ViewKind::File,
            tar::EntryType::Directory => ViewKind::Dir,
            tar::EntryType::Symlink => ViewKind::Symlink(link()),
            tar::EntryType::Link => ViewKind::Hardlink(clean_entry_path(&link())),
            _ => match Node::from_header(header) {
                Some(node) => ViewKind::Node(node),
                None => ViewKind::Other,
            },
        };
        index.entries.push((
            path,
            ViewEntry {
                kind,
                mode: header.mode().map_err(|e| read_err(digest, e))? & 0o7777,
                uid: header.uid().map_err(|e| read_err(digest, e))? as u32,
                gid: header.gid().map_err(|e| read_err(digest, e))? as u32,
                size: header.size().map_err(|e| read_err(digest, e))?,
                mtime: header.mtime().map_err(|e| read_err(digest, e))?,
                layer: 0,
            },
        ));
    }
    Ok(index)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The merged filesystem of a list of layers.
#[derive(Debug, Clone, Default)]
pub struct FsView {
    pub entries: BTreeMap<String, ViewEntry>,
    pub layers: Vec<LayerRecord>,
}

impl FsView {
    pub fn load(
        store: &Store,
        cache: &LayerCache,
        layers: &[LayerRecord],
    ) -> Result<FsView, OciError> {
        let mut entries: BTreeMap<String, ViewEntry> = BTreeMap::new();
        for (i, layer) in layers.iter().enumerate() {
            let index = cache.index(store, layer)?;
            for dir in &index.opaque_dirs {
                remove_below(&mut entries, dir);
            }
            for gone in &index.whiteouts {
                entries.remove(gone);
                remove_below(&mut entries, gone);
            }
            for (path, entry) in &index.entries {
                if entry.kind != ViewKind::Dir {
                    // A non-directory replaces a directory and everything in it.
                    remove_below(&mut entries, path);
                }
                let mut entry = entry.clone();
                entry.layer = i;
                entries.insert(path.clone(), entry);
            }
        }
        Ok(FsView {
            entries,
            layers: layers.to_vec(),
        })
    }

    pub fn get(&self, path: &str) -> Option<&ViewEntry> {
        self.entries.get(path)
    }

    pub fn is_dir(&self, path: &str) -> bool {
        path.is_empty() || matches!(self.get(path).map(|e| &e.kind), Some(ViewKind::Dir))
    }

    pub fn exists(&self, path: &str) -> bool {
        path.is_empty() || self.entries.contains_key(path)
    }

    pub fn below<'a>(
        &'a self,
        dir: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a ViewEntry)> + 'a {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.entries
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
    }

    /// Follows symlinks in every component of `path` with this view's root as `/`.
    pub fn resolve(&self, path: &str) -> Option<String> {
        memobuild_rootpath::resolve(path, |p| match self.get(p) {
            Some(ViewEntry {
                kind: ViewKind::Symlink(target),
                ..
            }) => Some(target.clone()),
            _ => None,
        })
    }

    /// Reads a small file (e.g. /etc/passwd) from the view.
    pub fn read_file(&self, store: &Store, path: &str) -> Result<Option<Vec<u8>>, OciError> {
        let Some(resolved) = self.resolve(path) else {
            return Ok(None);
        };
        let Some(entry) = self.get(&resolved) else {
            return Ok(None);
        };
        if entry.kind != ViewKind::File {
            return Ok(None);
        }
        let digest = &self.layers[entry.layer].digest;
        let mut archive = tar::Archive::new(open_layer(&store.blobs, digest)?);
        for e in archive.entries().map_err(|e| read_err(digest, e))? {
            let mut e = e.map_err(|e| read_err(digest, e))?;
            if clean_entry_path(&String::from_utf8_lossy(&e.path_bytes())) == resolved {
                let mut buf = Vec::new();
                e.read_to_end(&mut buf)
                    .map_err(|err| read_err(digest, err))?;
                return Ok(Some(buf));
            }
        }
        Ok(None)
    }

    /// Writes the content of the given files (paths in this view) into `staging`
    /// and returns where each landed. Reads each layer at most once.
    pub fn extract(
        &self,
        store: &Store,
        paths: &[String],
        staging: &Path,
    ) -> Result<HashMap<String, PathBuf>, OciError> {
        let mut by_layer: BTreeMap<usize, Vec<&String>> = BTreeMap::new();
        for p in paths {
            if let Some(e) = self.get(p) {
                by_layer.entry(e.layer).or_default().push(p);
            }
        }
        let mut out = HashMap::new();
        for (layer, wanted) in by_layer {
            let digest = &self.layers[layer].digest;
            let wanted: std::collections::HashSet<&String> = wanted.into_iter().collect();
            let mut archive = tar::Archive::new(open_layer(&store.blobs, digest)?);
            for e in archive.entries().map_err(|e| read_err(digest, e))? {
                let mut e = e.map_err(|e| read_err(digest, e))?;
                let path = clean_entry_path(&String::from_utf8_lossy(&e.path_bytes()));
                if !wanted.contains(&path) {
                    continue;
                }
                let dest = staging.join(format!("{}", out.len()));
                let mut file = std::fs::File::create(&dest).map_err(|err| read_err(digest, err))?;
                std::io::copy(&mut e, &mut file).map_err(|err| read_err(digest, err))?;
                out.insert(path, dest);
            }
        }
        Ok(out)
    }
}

fn remove_below(entries: &mut BTreeMap<String, ViewEntry>, dir: &str) {
    memobuild_rootpath::remove_below(entries, dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use memobuild_oci::{Content, LayerEntry};

    fn entry(kind: EntryKind, mode: u32) -> LayerEntry {
        LayerEntry {
            kind,
            mode,
            uid: 3,
            gid: 4,
            mtime: 0,
        }
    }

    /// The index made from a change set is the one read back from its layer.
    #[test]
    fn an_index_from_changes_equals_the_index_read_from_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let src = dir.path().join("src.bin");
        std::fs::write(&src, vec![7u8; 70_000]).unwrap();
        let mut c = ChangeSet::default();
        c.insert("a".into(), entry(EntryKind::Dir, 0o755));
        c.insert(
            "a/big".into(),
            entry(EntryKind::File(Content::Path(src)), 0o4755),
        );
        c.insert(
            "a/f".into(),
            entry(EntryKind::File(Content::Bytes(b"hi".to_vec())), 0o600),
        );
        c.insert(
            "a/hl".into(),
            entry(EntryKind::Hardlink("/a/f".into()), 0o600),
        );
        c.insert(
            "a/ln".into(),
            entry(EntryKind::Symlink("../x".into()), 0o777),
        );
        c.insert("gone".into(), entry(EntryKind::Whiteout, 0));
        c.insert("opq".into(), entry(EntryKind::OpaqueDir, 0o1777));
        c.insert("a/pipe".into(), entry(EntryKind::Node(Node::Fifo), 0o640));
        let null = Node::CharDevice { major: 1, minor: 3 };
        c.insert("a/null".into(), entry(EntryKind::Node(null), 0o666));
        let blk = Node::BlockDevice {
            major: 259,
            minor: 70_000,
        };
        c.insert("a/blk".into(), entry(EntryKind::Node(blk), 0o600));
        c.insert(
            format!("a/{}", "long".repeat(50)),
            entry(EntryKind::File(Content::Bytes(vec![])), 0o644),
        );
        let writer = memobuild_oci::LayerWriter::new();
        let (record, sizes) = writer.write_sized(&c, &store.blobs).unwrap();
        assert_eq!(sizes, vec![70_000, 2, 0]);
        let read = read_index(&store, &record.digest).unwrap();
        assert_eq!(index_of_changes(&c, &sizes).unwrap(), read);
        let kind = |p: &str| {
            read.entries
                .iter()
                .find(|(q, _)| q == p)
                .unwrap()
                .1
                .kind
                .clone()
        };
        assert_eq!(kind("a/blk"), ViewKind::Node(blk));
        assert_eq!(kind("a/null"), ViewKind::Node(null));
        assert_eq!(kind("a/pipe"), ViewKind::Node(Node::Fifo));
    }
}
