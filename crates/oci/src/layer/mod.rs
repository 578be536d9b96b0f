//! Layers: a [`ChangeSet`] (what a step adds to the filesystem) written as a
//! deterministic tar, gzip-compressed as independent members (see [`pieces`]:
//! compressed on all cores, reused across layers), hashed while streaming; and
//! reading a stored layer's entries back.
//!
//! Determinism: entries are sorted by path, owners are numeric (no user or group
//! names), and every entry carries its own mtime in whole seconds (as
//! containerd's and BuildKit's tar writers truncate them): a context file's,
//! an archive entry's, a file a RUN wrote. Mtimes are not a cache input: a
//! cache hit returns the layer the step's first build wrote, with its times.
//! With SOURCE_DATE_EPOCH the caller clamps them ([`ChangeSet::clamp_mtimes`]).

use flate2::read::MultiGzDecoder;
use memobuild_store::{BlobStore, LayerRecord, StoreError};
use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod pieces;
mod prefetch;

pub use pieces::LayerWriter;
use pieces::PieceSink;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A context file differs from what the step's cache key was computed from.
    #[error("{path} changed while the build was reading it")]
    ContextChanged { path: String },
    #[error("writing layer entry {path}: {source}")]
    Write { path: String, source: io::Error },
    #[error("reading layer {digest}: {source}")]
    Read { digest: String, source: io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A build context file whose BLAKE3 went into the step's cache key: the
    /// layer gets exactly those bytes or the write fails with `ContextChanged`.
    Checked {
        path: PathBuf,
        blake3: [u8; 32],
    },
    /// A file on the host (build context or a step's staging dir).
    Path(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File(Content),
    Dir,
    Symlink(String),
    /// Hard link to another path in the same layer (absolute, no leading slash).
    Hardlink(String),
    /// The path was deleted: written as the OCI whiteout `DIR/.wh.NAME` (an empty
    /// regular file), which hides `DIR/NAME` of the lower layers.
    Whiteout,
    /// A directory that replaces the one of the lower layers: written as the
    /// directory entry followed by the OCI opaque marker `DIR/.wh..wh..opq`, which
    /// hides everything the lower layers had below it (entries of this layer stay).
    OpaqueDir,
    /// A FIFO or device node: a tar entry of that type (with the device
    /// numbers), as containerd's tar writer and BuildKit's context copy keep
    /// them.
    Node(Node),
}

/// A special file that is neither a regular file, a directory nor a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Node {
    Fifo,
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
}

impl Node {
    /// The tar entry type that holds it.
    pub fn entry_type(self) -> tar::EntryType {
        match self {
            Node::Fifo => tar::EntryType::Fifo,
            Node::CharDevice { .. } => tar::EntryType::Char,
            Node::BlockDevice { .. } => tar::EntryType::Block,
        }
    }

    /// The node a tar header describes, if it is a FIFO or a device. Blank
    /// device number fields (as some writers leave them) read as 0, as GNU
    /// tar reads them.
    pub fn from_header(header: &tar::Header) -> Option<Node> {
        let number = |n: io::Result<Option<u32>>| n.ok().flatten().unwrap_or(0);
        let numbers = || (number(header.device_major()), number(header.device_minor()));
        match header.entry_type() {
            tar::EntryType::Fifo => Some(Node::Fifo),
            tar::EntryType::Char => {
                let (major, minor) = numbers();
                Some(Node::CharDevice { major, minor })
            }
            tar::EntryType::Block => {
                let (major, minor) = numbers();
                Some(Node::BlockDevice { major, minor })
            }
            _ => None,
        }
    }

    /// `(major, minor)` of a device, `(0, 0)` for a FIFO.
    pub fn numbers(self) -> (u32, u32) {
        match self {
            Node::Fifo => (0, 0),
            Node::CharDevice { major, minor } | Node::BlockDevice { major, minor } => {
                (major, minor)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    pub kind: EntryKind,
    /// Permission bits plus setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Modification time, Unix seconds (what the tar header and the
    /// snapshot get).
    pub mtime: u64,
}

/// What a step adds, keyed by path relative to `/` (no leading slash).
#[derive(Debug, Default, Clone)]
pub struct ChangeSet {
    pub entries: BTreeMap<String, LayerEntry>,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn insert(&mut self, path: String, entry: LayerEntry) {
        self.entries.insert(path, entry);
    }

    /// Writes the layer blob and returns its record. A daemon keeps one
    /// [`LayerWriter`] and calls [`LayerWriter::write`] instead, so layers
    /// reuse each other's members.
    pub fn write(&self, blobs: &BlobStore) -> Result<LayerRecord, OciError> {
        LayerWriter::new().write(self, blobs)
    }

    /// The entries in the order the layer's tar holds them: everything but
    /// plain directories by path, then the plain directories by path.
    /// Directories last keep the start of the stream the same when only a
    /// directory's time changes (a directory the step creates has the step's
    /// time; adding a file changes its directory's), so an edit's layer shares
    /// the start of the previous one (see [`LayerWriter::write_early`]).
    /// Extractors (containerd, Docker, tar) create a missing parent and apply
    /// the directory's own entry when it comes. An opaque directory stays
    /// before its children: it may replace a file or symlink of the lower
    /// layers (see [`ChangeSet::mark_replacing_dirs`]).
    pub fn tar_order(&self) -> impl Iterator<Item = (&String, &LayerEntry)> + Clone {
        let is_dir = |e: &LayerEntry| e.kind == EntryKind::Dir;
        let others = self.entries.iter().filter(move |(_, e)| !is_dir(e));
        let dirs = self.entries.iter().filter(move |(_, e)| is_dir(e));
        others.chain(dirs)
    }

    /// Marks as opaque each directory for which `non_dir_below` says the
    /// lower layers have something else at its path (a file, a symlink):
    /// [`ChangeSet::tar_order`] keeps opaque directories before their
    /// children, so an extractor replaces that file or symlink with the
    /// directory before it writes into it, rather than writing through it.
    /// Nothing lies below a non-directory, so the layer means the same.
    pub fn mark_replacing_dirs(&mut self, non_dir_below: impl Fn(&str) -> bool) {
        for (path, entry) in self.entries.iter_mut() {
            if entry.kind == EntryKind::Dir && non_dir_below(path) {
                entry.kind = EntryKind::OpaqueDir;
            }
        }
    }

    /// SOURCE_DATE_EPOCH as BuildKit's `rewrite-timestamp` applies it: every
    /// mtime later than `epoch` becomes `epoch`; earlier ones stay.
    pub fn clamp_mtimes(&mut self, epoch: Option<i64>) {
        let Some(epoch) = epoch else {
            return;
        };
        let epoch = epoch.max(0) as u64;
        for entry in self.entries.values_mut() {
            entry.mtime = entry.mtime.min(epoch);
        }
    }
}

impl ChangeSet {
    /// What turns the filesystem `old` gave (on the same lower layers) into
    /// the one `self` gives: the entries that are new or differ, and the
    /// paths `old` had and `self` lacks (to be whited out). `None` when the
    /// two cannot be related that simply: either holds whiteouts, opaque
    /// directories or hard links. A file is the same only if both name
    /// content of the same digest (a context file) or the same bytes.
    pub fn delta_from(&self, old: &ChangeSet) -> Option<(ChangeSet, Vec<String>)> {
        let simple = |c: &ChangeSet| {
            c.entries.values().all(|e| {
                !matches!(
                    e.kind,
                    EntryKind::Whiteout | EntryKind::OpaqueDir | EntryKind::Hardlink(_)
                )
            })
        };
        if !simple(self) || !simple(old) {
            return None;
        }
        let mut delta = ChangeSet::default();
        for (path, entry) in &self.entries {
            if !old.entries.get(path).is_some_and(|o| same_entry(o, entry)) {
                delta.insert(path.clone(), entry.clone());
            }
        }
        let removed = old
            .entries
            .keys()
            .filter(|p| !self.entries.contains_key(*p))
            .cloned()
            .collect();
        Some((delta, removed))
    }
}

fn same_entry(a: &LayerEntry, b: &LayerEntry) -> bool {
    let same_kind = match (&a.kind, &b.kind) {
        (EntryKind::File(x), EntryKind::File(y)) => match (x, y) {
            (Content::Checked { blake3: x, .. }, Content::Checked { blake3: y, .. }) => x == y,
            (Content::Bytes(x), Content::Bytes(y)) => x == y,
            _ => false,
        },
        (x, y) => x == y,
    };
    same_kind && a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.mtime == b.mtime
}

impl LayerWriter {
    /// Writes `changes` as a layer blob (a deterministic tar, as gzip members:
    /// see [`pieces`]) and returns its record.
    pub fn write(&self, changes: &ChangeSet, blobs: &BlobStore) -> Result<LayerRecord, OciError> {
        self.write_sized(changes, blobs).map(|(record, _)| record)
    }

    /// Like [`LayerWriter::write`], also returning the size the layer gives
    /// each regular file of `changes`, in their order (what a reader of the
    /// layer's headers would see, without reading them back).
    pub fn write_sized(
        &self,
        changes: &ChangeSet,
        blobs: &BlobStore,
    ) -> Result<(LayerRecord, Vec<u64>), OciError> {
        self.write_with(changes, blobs, None, |_, _| {})
    }

    /// Like [`LayerWriter::write_sized`], calling `on_diff_id` with the
    /// diff_id and the file sizes as soon as every byte of the tar stream is
    /// read and hashed. Compressing and appending its last pieces (at most
    /// a few hundred MiB of raw bytes) may go on after that, so a caller that
    /// needs only the diff_id does not wait for the blob.
    ///
    /// `slot` names the step the layer is a result of (any string stable
    /// across builds). The writer remembers the last layer of each slot; the
    /// next one shares the pieces before the first entry that differs, so an
    /// edit reads, hashes and compresses only from that entry on. The blob is
    /// byte for byte what a whole write gives.
    pub fn write_early(
        &self,
        changes: &Arc<ChangeSet>,
        blobs: &BlobStore,
        slot: Option<&str>,
        on_diff_id: impl FnOnce(&str, &[u64]) + Send,
    ) -> Result<(LayerRecord, Vec<u64>), OciError> {
        let kept = slot.map(|slot| (slot, changes));
        self.write_with(changes, blobs, kept, on_diff_id)
    }

    /// Total entries layers took from the earlier layer of their slot
    /// instead of writing them (see [`LayerWriter::write_early`]).
    pub fn resumed_entries(&self) -> u64 {
        self.resumed_entries
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn write_with(
        &self,
        changes: &ChangeSet,
        blobs: &BlobStore,
        kept: Option<(&str, &Arc<ChangeSet>)>,
        on_diff_id: impl FnOnce(&str, &[u64]) + Send,
    ) -> Result<(LayerRecord, Vec<u64>), OciError> {
        let slot = kept.map(|(slot, _)| slot);
        let trace = slot.and_then(|slot| self.traces.lock().get(slot).cloned());
        let resume = trace.as_deref().and_then(|trace| {
            let shared = trace.shared_pieces(changes)?;
            Some(pieces::Resume {
                blob: &trace.blob,
                marks: &trace.marks[..shared],
            })
        });
        let produce = |sink: &mut PieceSink<'_>, first: usize| {
            let mut sizes = trace
                .as_deref()
                .map(|trace| trace.file_sizes_before(first))
                .unwrap_or_default();
            let prefetch = prefetch::Prefetch::new(changes.tar_order().skip(first).map(|(_, e)| e));
            prefetch.run(|| {
                let mut tar = tar::Builder::new(sink);
                for (i, (path, entry)) in changes.tar_order().skip(first).enumerate() {
                    let ahead = prefetch.take(i);
                    let written = append_entry(&mut tar, path, entry, ahead)
                        .map_err(|source| entry_error(path, source))?;
                    if let EntryKind::File(_) = entry.kind {
                        sizes.push(written);
                    }
                }
                tar.finish().map_err(|source| OciError::Write {
                    path: "<end of archive>".into(),
                    source,
                })?;
                Ok(sizes)
            })
        };
        let on_diff_id = |diff_id: &str, sizes: &Vec<u64>| on_diff_id(diff_id, sizes);
        let written = pieces::write_layer(self, blobs, resume, produce, on_diff_id)?;
        let record = LayerRecord {
            digest: written.digest.clone(),
            diff_id: written.diff_id.clone(),
            size: written.size,
            media_type: super::MEDIA_LAYER_GZIP.to_string(),
        };
        self.resumed_entries.fetch_add(
            written.resumed_entries as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if let Some((slot, changes)) = kept {
            self.keep_trace(slot, &written, changes);
        }
        Ok((record, written.produced))
    }

    fn keep_trace(
        &self,
        slot: &str,
        written: &pieces::Written<Vec<u64>>,
        changes: &Arc<ChangeSet>,
    ) {
        let trace = Trace {
            blob: written.digest.clone(),
            marks: written.marks.clone(),
            sizes: written.produced.clone(),
            changes: changes.clone(),
        };
        let mut traces = self.traces.lock();
        if traces.len() >= TRACES_CAP && !traces.contains_key(slot) {
            traces.clear();
        }
        traces.insert(slot.to_string(), Arc::new(trace));
    }
}

/// Step slots whose last layer a [`LayerWriter`] remembers, at most (each
/// costs about 50 bytes per 64 KiB of tar plus the entries).
const TRACES_CAP: usize = 32;

/// A layer written for a step slot (see [`LayerWriter::write_early`]).
pub(crate) struct Trace {
    blob: String,
    marks: Vec<pieces::Mark>,
    /// The size of each regular file, in entry order.
    sizes: Vec<u64>,
    changes: Arc<ChangeSet>,
}

impl Trace {
    /// How many of this layer's pieces a layer of `changes` begins with:
    /// those that end before the first entry the two differ in. `None` if
    /// none.
    fn shared_pieces(&self, changes: &ChangeSet) -> Option<usize> {
        let first_difference = self
            .changes
            .tar_order()
            .zip(changes.tar_order())
            .take_while(|((p1, e1), (p2, e2))| p1 == p2 && same_entry(e1, e2))
            .count();
        let last = self.marks.iter().rposition(|m| {
            m.ends_entries
                .is_some_and(|e| e > 0 && e <= first_difference)
        })?;
        Some(last + 1)
    }

    /// The sizes of the regular files among its first `count` entries.
    fn file_sizes_before(&self, count: usize) -> Vec<u64> {
        let files = self
            .changes
            .tar_order()
            .take(count)
            .filter(|(_, e)| matches!(e.kind, EntryKind::File(_)))
            .count();
        self.sizes[..files.min(self.sizes.len())].to_vec()
    }
}

fn entry_error(path: &str, source: io::Error) -> OciError {
    if source.kind() == io::ErrorKind::NotFound || source.kind() == io::ErrorKind::InvalidData {
        OciError::ContextChanged {
            path: path.to_string(),
        }
    } else {
        OciError::Write {
            path: path.to_string(),
            source,
        }
    }
}

/// Appends one entry, telling the sink where it begins and ends (pieces are
/// cut at entry boundaries); returns the size of its data.
fn append_entry(
    tar: &mut tar::Builder<&mut PieceSink<'_>>,
    path: &str,
    entry: &LayerEntry,
    ahead: prefetch::Ahead,
) -> io::Result<u64> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(entry.mode & 0o7777);
    header.set_uid(entry.uid.into());
    header.set_gid(entry.gid.into());
    header.set_mtime(entry.mtime);
    let data = match ahead {
        prefetch::Ahead::Failed(e) => return Err(e),
        // Read and checked by a reader thread.
        prefetch::Ahead::Read(bytes) => Data::Read(bytes),
        prefetch::Ahead::Writer => Data::of(&entry.kind)?,
    };
    let len = data.len();
    tar.get_mut().begin_entry(len)?;
    match data {
        Data::Read(bytes) => append_regular(tar, header, path, bytes.as_slice(), len)?,
        Data::Inline(bytes) => append_regular(tar, header, path, bytes, len)?,
        Data::File(file, _, None) => {
            // take(): a file that grows while we read it must not corrupt the tar.
            append_regular(tar, header, path, BufReader::new(file).take(len), len)?
        }
        // A context file: the layer gets exactly the bytes its cache key was
        // made from, or the write fails as `InvalidData` (the context changed).
        Data::File(file, _, Some(blake3)) => {
            let mut reader = CheckingReader::new(BufReader::new(file).take(len));
            append_regular(tar, header, path, &mut reader, len)?;
            reader.finish(len, blake3)?
        }
        Data::None => append_other(tar, header, path, &entry.kind)?,
    }
    tar.get_mut().end_entry(path)?;
    Ok(len)
}

/// Where a regular file entry's bytes come from.
enum Data<'e> {
    /// Read ahead (and checked) by a reader thread.
    Read(Vec<u8>),
    /// In the entry itself.
    Inline(&'e [u8]),
    /// Opened now, with its length; checked against the digest if it has one.
    File(std::fs::File, u64, Option<&'e [u8; 32]>),
    /// Not a regular file.
    None,
}

impl<'e> Data<'e> {
    fn of(kind: &'e EntryKind) -> io::Result<Data<'e>> {
        Ok(match kind {
            // Never a FIFO or device swapped in since the file was listed.
            EntryKind::File(Content::Path(src)) => {
                let (file, len) = memobuild_rootpath::safefs::open_regular(src, false)?;
                Data::File(file, len, None)
            }
            EntryKind::File(Content::Checked { path, blake3 }) => {
                let (file, len) = memobuild_rootpath::safefs::open_regular(path, false)?;
                Data::File(file, len, Some(blake3))
            }
            EntryKind::File(Content::Bytes(bytes)) => Data::Inline(bytes),
            _ => Data::None,
        })
    }

    fn len(&self) -> u64 {
        match self {
            Data::Read(bytes) => bytes.len() as u64,
            Data::Inline(bytes) => bytes.len() as u64,
            Data::File(_, len, _) => *len,
            Data::None => 0,
        }
    }
}

/// A regular file of `len` bytes read from `data`.
fn append_regular<W: Write>(
    tar: &mut tar::Builder<W>,
    mut header: tar::Header,
    path: impl AsRef<Path>,
    data: impl Read,
    len: u64,
) -> io::Result<()> {
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(len);
    tar.append_data(&mut header, path, data)
}

fn append_other<W: Write>(
    tar: &mut tar::Builder<W>,
    mut header: tar::Header,
    path: &str,
    kind: &EntryKind,
) -> io::Result<()> {
    match kind {
        EntryKind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, format!("{path}/"), io::empty())
        }
        EntryKind::Symlink(target) => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, path, target)
        }
        EntryKind::Hardlink(target) => {
            header.set_entry_type(tar::EntryType::Link);
            header.set_size(0);
            tar.append_link(&mut header, path, target)
        }
        EntryKind::Whiteout => {
            let (dir, name) = match path.rsplit_once('/') {
                Some((dir, name)) => (Some(dir), name),
                None => (None, path),
            };
            let marker = match dir {
                Some(dir) => format!("{dir}/.wh.{name}"),
                None => format!(".wh.{name}"),
            };
            append_marker(tar, header, marker)
        }
        EntryKind::OpaqueDir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header.clone(), format!("{path}/"), io::empty())?;
            append_marker(tar, header, format!("{path}/.wh..wh..opq"))
        }
        EntryKind::Node(node) => {
            header.set_entry_type(node.entry_type());
            let (major, minor) = node.numbers();
            header.set_device_major(major)?;
            header.set_device_minor(minor)?;
            header.set_size(0);
            tar.append_data(&mut header, path, io::empty())
        }
        EntryKind::File(_) => Err(io::Error::other("a file entry without its file")),
    }
}

/// An OCI whiteout marker: an empty regular file, mode 0, owned by 0:0 (as
/// BuildKit and containerd write them); only the header's mtime is kept.
fn append_marker<W: Write>(
    tar: &mut tar::Builder<W>,
    mut header: tar::Header,
    name: String,
) -> io::Result<()> {
    header.set_mode(0);
    header.set_uid(0);
    header.set_gid(0);
    append_regular(tar, header, name, io::empty(), 0)
}

/// Reads a context file (into a layer, or a snapshot) while hashing it, so
/// the bytes can be checked against the hash the cache key was made from
/// ([`Content::Checked`]).
pub struct CheckingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
    read: u64,
}

impl<R> CheckingReader<R> {
    pub fn new(inner: R) -> CheckingReader<R> {
        CheckingReader {
            inner,
            hasher: blake3::Hasher::new(),
            read: 0,
        }
    }

    /// Ok if exactly `len` bytes hashing to `blake3` were read; else
    /// `InvalidData` (the file changed since the key was made).
    pub fn finish(self, len: u64, blake3: &[u8; 32]) -> io::Result<()> {
        if self.read != len || self.hasher.finalize().as_bytes() != blake3 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the context file changed since the step's key was made",
            ));
        }
        Ok(())
    }
}

impl<R: Read> Read for CheckingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Opens a stored layer as an uncompressed tar stream (gzip and zstd, as
/// pulled images may have, detected by magic).
pub fn open_layer(blobs: &BlobStore, digest: &str) -> Result<Box<dyn Read + Send>, OciError> {
    let file = blobs.open_blob(digest)?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let magic = peek(&mut reader, digest)?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(MultiGzDecoder::new(reader)))
    } else if magic.starts_with(&super::zstd::MAGIC) {
        Ok(Box::new(super::zstd::Frames::new(reader)))
    } else {
        Ok(Box::new(reader))
    }
}

fn peek(reader: &mut BufReader<std::fs::File>, digest: &str) -> Result<Vec<u8>, OciError> {
    use std::io::BufRead;
    let buf = reader.fill_buf().map_err(|source| OciError::Read {
        digest: digest.to_string(),
        source,
    })?;
    Ok(buf[..buf.len().min(4)].to_vec())
}

/// Normalises a tar entry path: no `./`, no leading or trailing `/`, no `..`.
pub fn clean_entry_path(raw: &str) -> String {
    memobuild_rootpath::clean(raw)
}
