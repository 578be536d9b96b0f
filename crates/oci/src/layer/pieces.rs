//! Layer blobs assembled from gzip members, one per *piece* of the tar stream.
//!
//! A gzip file may hold several members back to back, and readers treat them as
//! one stream (RFC 1952 §2.2; Go's `compress/gzip`, containerd, Docker and
//! registries all do). That lets a layer be built from independent pieces:
//!
//! * the misses are compressed on every core at once, not on one;
//! * a member is a pure function of its uncompressed bytes, so one already
//!   written into an earlier blob (found by the BLAKE3 of those bytes in the
//!   [`LayerWriter`]'s index) is copied from there, not compressed again. An
//!   edit of one file in a large COPY compresses one piece; what stays is the
//!   two SHA-256 passes every layer needs (diff_id and blob digest).
//!
//! Determinism: where the stream is cut depends only on the entries (their
//! paths and sizes), never on timing, thread count or what the index holds, and
//! a copied member is byte for byte what compressing would give. So the same
//! inputs give the same blob digest on any host, warm or cold.
//!
//! Cutting rule: an entry whose tar bytes reach [`BIG`] is its own piece (cut
//! every [`CHUNK`] bytes inside it); small entries are grouped, and a group ends
//! after an entry whose path hash picks it (1 in [`GROUP_ONE_IN`]) or once it
//! reaches [`BIG`]. Cutting by path keeps an edit from moving the boundaries of
//! the pieces after it.

use super::OciError;
use flate2::Crc;
use libdeflater::{CompressionLvl, Compressor};
use memobuild_store::{BlobStore, BlobWriter, Digest};
use parking_lot::{Condvar, Mutex};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;

/// Entries whose tar bytes reach this size are pieces of their own.
const BIG: usize = 64 * 1024;
/// The largest piece: big entries are cut into pieces of this size.
const CHUNK: usize = 4 << 20;
/// About one small entry in this many ends a group.
const GROUP_ONE_IN: u8 = 16;
/// Raw bytes between the tar writer and the blob, at most. Large enough that
/// the tar writer (and so the diff_id) of a typical layer finishes well before
/// its compression does: the step after it starts on the diff_id, while the
/// blob is still being written (see [`write_layer`]). A piece larger than
/// what is left waits until nothing else is in flight.
const IN_FLIGHT_BYTES: usize = 256 << 20;
/// The index forgets everything beyond this many members (about 100 bytes each).
const INDEX_CAP: usize = 1 << 20;
/// The gzip member header: magic, deflate, no flags, mtime 0, no extra
/// flags, OS "unknown" (RFC 1952), so members do not depend on the host.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// Where a member already lives: a range of a stored blob.
#[derive(Clone, Debug)]
struct Located {
    blob: Arc<str>,
    offset: u64,
    len: u64,
    /// The member's trailer (CRC-32 and size), checked when it is copied.
    trailer: [u8; 8],
}

/// Writes layers, remembering the members of the blobs it wrote so later
/// layers reuse them. One per daemon; cheap to share.
#[derive(Default)]
pub struct LayerWriter {
    index: Mutex<HashMap<[u8; 32], Located>>,
    /// The last layer written for each step slot the caller named, so the
    /// next one resumes where the two first differ (see [`Resume`]).
    pub(super) traces: Mutex<HashMap<String, Arc<super::Trace>>>,
    pub(super) resumed_entries: std::sync::atomic::AtomicU64,
}

impl LayerWriter {
    pub fn new() -> LayerWriter {
        LayerWriter::default()
    }

    fn lookup(&self, key: &[u8; 32]) -> Option<Located> {
        self.index.lock().get(key).cloned()
    }

    fn forget(&self, key: &[u8; 32]) {
        self.index.lock().remove(key);
    }

    fn remember(&self, blob: &str, members: Members) {
        let blob: Arc<str> = Arc::from(blob);
        let mut index = self.index.lock();
        if index.len() + members.len() > INDEX_CAP {
            index.clear();
        }
        for (key, offset, len, trailer) in members {
            let located = Located {
                blob: blob.clone(),
                offset,
                len,
                trailer,
            };
            index.entry(key).or_insert(located);
        }
    }
}

/// One piece of the tar stream on its way to the blob.
struct Piece {
    seq: u64,
    key: [u8; 32],
    raw: Vec<u8>,
    /// The diff_id's SHA-256 state after this piece.
    diff_state: Sha256,
    /// When the piece ends where an entry does: how many entries precede
    /// that point.
    ends_entries: Option<usize>,
    /// Set when the index knows a member for these bytes.
    found: Option<Located>,
    /// The compressed member, once made.
    member: Option<Vec<u8>>,
}

/// The tar stream's sink: hashes it (the diff_id), cuts it into pieces and
/// sends each one to the workers (which compress it, or find its member in
/// the index) on its way to the blob writer.
pub(super) struct PieceSink<'w> {
    diff_id: Sha256,
    buf: Vec<u8>,
    seq: u64,
    /// Whether the entry being written is a big one (cut at [`CHUNK`]).
    big_entry: bool,
    /// Entries written so far (counting those a resumed write skipped).
    entries_done: usize,
    to_compress: Sender<Piece>,
    /// Bounds the raw bytes in flight; the blob writer gives them back.
    budget: &'w Budget,
}

/// Raw bytes in flight between the tar writer and the blob writer.
struct Budget {
    state: Mutex<BudgetState>,
    changed: Condvar,
}

#[derive(Default)]
struct BudgetState {
    used: usize,
    /// The blob writer stopped: nothing will be given back.
    closed: bool,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            state: Mutex::new(BudgetState::default()),
            changed: Condvar::new(),
        }
    }

    /// Waits until `n` more bytes fit (or nothing is in flight).
    fn take(&self, n: usize) -> io::Result<()> {
        let mut state = self.state.lock();
        while !state.closed && state.used > 0 && state.used + n > IN_FLIGHT_BYTES {
            self.changed.wait(&mut state);
        }
        if state.closed {
            return Err(stopped());
        }
        state.used += n;
        Ok(())
    }

    fn give_back(&self, n: usize) {
        self.state.lock().used -= n;
        self.changed.notify_all();
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.changed.notify_all();
    }
}

impl PieceSink<'_> {
    /// Called before each entry with the size of its data.
    pub(super) fn begin_entry(&mut self, data_len: u64) -> io::Result<()> {
        let big = data_len as usize + 512 >= BIG;
        if big && !self.buf.is_empty() {
            self.cut(Some(self.entries_done))?;
        }
        self.big_entry = big;
        Ok(())
    }

    /// Called after each entry with its path.
    pub(super) fn end_entry(&mut self, path: &str) -> io::Result<()> {
        let picked = blake3::hash(path.as_bytes()).as_bytes()[0].is_multiple_of(GROUP_ONE_IN);
        self.entries_done += 1;
        if self.big_entry || picked || self.buf.len() >= BIG {
            self.cut(Some(self.entries_done))?;
        }
        self.big_entry = false;
        Ok(())
    }

    fn cut(&mut self, ends_entries: Option<usize>) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let raw = std::mem::take(&mut self.buf);
        self.diff_id.update(&raw);
        // Wait for room: the blob writer may be behind.
        self.budget.take(raw.len())?;
        let piece = Piece {
            seq: self.seq,
            key: [0; 32],
            raw,
            diff_state: self.diff_id.clone(),
            ends_entries,
            found: None,
            member: None,
        };
        self.seq += 1;
        // A worker hashes it and looks it up: this thread's time is the
        // diff_id's.
        if self.to_compress.send(piece).is_ok() {
            Ok(())
        } else {
            Err(stopped())
        }
    }

    /// Cuts the last piece and returns the diff_id.
    pub(super) fn finish(&mut self) -> io::Result<String> {
        self.cut(None)?;
        let diff_id = std::mem::take(&mut self.diff_id);
        Ok(format!("sha256:{}", hex::encode(diff_id.finalize())))
    }
}

impl Write for PieceSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = if self.big_entry {
            data.len().min(CHUNK - self.buf.len())
        } else {
            data.len()
        };
        self.buf.extend_from_slice(&data[..n]);
        if self.big_entry && self.buf.len() == CHUNK {
            self.cut(None)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the layer writer stopped")
}

/// Where a written layer stood after one of its pieces: enough to write a
/// later layer that begins with the same pieces without reading, hashing or
/// compressing them again (see [`Resume`]).
#[derive(Clone)]
pub(super) struct Mark {
    /// When the piece ends where an entry does: how many entries precede it.
    pub(super) ends_entries: Option<usize>,
    diff_state: Sha256,
    blob_state: Sha256,
    blob_end: u64,
    member: Member,
}

/// A member's key, offset, length and trailer in its blob.
type Member = ([u8; 32], u64, u64, [u8; 8]);

/// A layer that begins with the first pieces of an earlier one: the earlier
/// blob, and its marks up to the last piece the two share (which must end
/// where an entry does). The new blob starts as a kernel copy of that prefix,
/// with the hash states it left, and the tar writer starts at the entry after
/// it. The prefix is only trusted while the earlier blob passes the store's
/// verification.
pub(super) struct Resume<'a> {
    pub(super) blob: &'a str,
    pub(super) marks: &'a [Mark],
}

/// A layer [`write_layer`] wrote.
pub(super) struct Written<T> {
    pub(super) digest: Digest,
    pub(super) size: u64,
    pub(super) diff_id: String,
    pub(super) produced: T,
    /// Where it stood after each piece, for a later [`Resume`].
    pub(super) marks: Vec<Mark>,
    /// How many entries a resumed write took from the earlier layer.
    pub(super) resumed_entries: usize,
}

/// Writes one layer: `produce` writes the tar stream, from the entry whose
/// index it is given (0, or where a [`Resume`] ends), into the sink it is
/// given (calling `begin_entry`/`end_entry` around entries); pieces are
/// compressed on all cores and appended to a new blob in order.
///
/// `on_diff_id` is called as soon as the whole tar stream is hashed, with
/// the diff_id and what `produce` returned, while the last pieces may still
/// be compressed and appended: a caller that needs only the diff_id (to name
/// a snapshot) goes on from there.
pub(super) fn write_layer<T: Send>(
    writer: &LayerWriter,
    blobs: &BlobStore,
    resume: Option<Resume<'_>>,
    produce: impl FnOnce(&mut PieceSink<'_>, usize) -> Result<T, OciError> + Send,
    on_diff_id: impl FnOnce(&str, &T) + Send,
) -> Result<Written<T>, OciError> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (to_compress, compress_rx) = mpsc::channel::<Piece>();
    let compress_rx = Mutex::new(compress_rx);
    let (to_blob, blob_rx) = mpsc::channel::<Piece>();
    let budget = Budget::new();
    let (blob, marks) = match resume.and_then(|r| resumed_blob(blobs, r)) {
        Some(resumed) => resumed,
        None => (blobs.writer()?, Vec::new()),
    };
    let first_entry = marks.last().and_then(|m| m.ends_entries).unwrap_or(0);
    let diff_state = marks
        .last()
        .map_or_else(Sha256::new, |m| m.diff_state.clone());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (rx, tx) = (&compress_rx, to_blob.clone());
            scope.spawn(move || compress_pieces(writer, rx, tx));
        }
        // The blob writer stops when the compressors do.
        drop(to_blob);
        let budget = &budget;
        let producer = scope.spawn(move || {
            let mut sink = PieceSink {
                diff_id: diff_state,
                buf: Vec::new(),
                seq: 0,
                big_entry: false,
                entries_done: first_entry,
                to_compress,
                budget,
            };
            let produced = produce(&mut sink, first_entry)?;
            let diff_id = sink.finish().map_err(|source| OciError::Write {
                path: "<end of archive>".into(),
                source,
            })?;
            // The compressors stop once the queue is drained.
            drop(sink);
            on_diff_id(&diff_id, &produced);
            Ok::<_, OciError>((diff_id, produced))
        });
        let written = append_pieces(writer, blobs, blob, marks, blob_rx, budget);
        budget.close();
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(OciError::Invalid("the layer's tar writer panicked".into())));
        // The producer's error is the cause; the writer's follows from it.
        let (diff_id, produced) = produced?;
        // Committed only now: a tar writer that failed leaves no blob.
        let (blob, marks) = written?;
        let (digest, size) = blob.commit()?;
        writer.remember(&digest, marks.iter().map(|m| m.member).collect());
        Ok(Written {
            digest,
            size,
            diff_id,
            produced,
            marks,
            resumed_entries: first_entry,
        })
    })
}

/// The new blob of a [`Resume`], holding its prefix, and the marks it keeps.
fn resumed_blob<'b>(
    blobs: &'b BlobStore,
    resume: Resume<'_>,
) -> Option<(BlobWriter<'b>, Vec<Mark>)> {
    let last = resume.marks.last()?;
    last.ends_entries?;
    // An earlier blob that is gone or fails verification: written whole.
    let blob = blobs
        .writer_with_prefix(resume.blob, last.blob_end, last.blob_state.clone())
        .ok()?;
    Some((blob, resume.marks.to_vec()))
}

/// A compressor thread: takes pieces until the tar writer is done, and
/// compresses those the index has no member for. If the blob writer has
/// stopped it keeps draining, so the tar writer sees the stop at its next
/// piece.
fn compress_pieces(writer: &LayerWriter, rx: &Mutex<Receiver<Piece>>, tx: Sender<Piece>) {
    let mut deflate = member_compressor();
    let mut blob_writer_gone = false;
    loop {
        let next = rx.lock().recv();
        let Ok(mut piece) = next else { return };
        if blob_writer_gone {
            continue;
        }
        piece.key = *blake3::hash(&piece.raw).as_bytes();
        piece.found = writer.lookup(&piece.key);
        if piece.found.is_none() {
            piece.member = Some(gzip_member(&mut deflate, &piece.raw));
        }
        blob_writer_gone = tx.send(piece).is_err();
    }
}

/// The raw-deflate compressor of members: libdeflate at level 1. Part of
/// the blob's bytes, so changing it (or its level) changes every new layer's
/// digest; members are only reused from blobs this daemon wrote.
fn member_compressor() -> Compressor {
    Compressor::new(CompressionLvl::fastest())
}

/// One gzip member of `raw`, from a reused raw-deflate compressor.
fn gzip_member(deflate: &mut Compressor, raw: &[u8]) -> Vec<u8> {
    let header = GZIP_HEADER.len();
    // libdeflate writes into an initialized slice; `vec![0; n]` is calloc,
    // and a buffer this large comes from fresh (already zero) pages.
    let mut out = vec![0u8; header + deflate.deflate_compress_bound(raw.len()) + 8];
    out[..header].copy_from_slice(&GZIP_HEADER);
    let written = deflate
        .deflate_compress(raw, &mut out[header..])
        .expect("the output buffer has libdeflate's bound");
    out.truncate(header + written);
    let mut crc = Crc::new();
    crc.update(raw);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out
}

type Members = Vec<Member>;

/// The blob writer: appends members in order, after those `marks` already
/// hold; returns the blob uncommitted and the marks of all its pieces.
fn append_pieces<'b>(
    writer: &LayerWriter,
    blobs: &BlobStore,
    mut blob: BlobWriter<'b>,
    mut marks: Vec<Mark>,
    rx: Receiver<Piece>,
    budget: &Budget,
) -> Result<(BlobWriter<'b>, Vec<Mark>), OciError> {
    let mut next = 0u64;
    let mut waiting: BTreeMap<u64, Piece> = BTreeMap::new();
    let mut offset = marks.last().map_or(0, |m| m.blob_end);
    let mut open_blobs: HashMap<Arc<str>, Option<std::fs::File>> = HashMap::new();
    for piece in rx {
        waiting.insert(piece.seq, piece);
        while let Some(mut piece) = waiting.remove(&next) {
            let (key, raw_len, ends_entries) = (piece.key, piece.raw.len(), piece.ends_entries);
            let diff_state = std::mem::take(&mut piece.diff_state);
            let member = member_bytes(writer, blobs, piece, &mut open_blobs);
            blob.write_all(&member).map_err(|source| OciError::Write {
                path: "<layer blob>".into(),
                source,
            })?;
            let mut trailer = [0u8; 8];
            trailer.copy_from_slice(&member[member.len() - 8..]);
            let len = member.len() as u64;
            marks.push(Mark {
                ends_entries,
                diff_state,
                blob_state: blob.hash_state(),
                blob_end: offset + len,
                member: (key, offset, len, trailer),
            });
            offset += len;
            next += 1;
            budget.give_back(raw_len);
        }
    }
    if !waiting.is_empty() {
        // The tar writer stopped early; its error is reported instead.
        return Err(OciError::Invalid("the layer was not complete".into()));
    }
    Ok((blob, marks))
}

/// The compressed member of a piece: made by a compressor, or copied from the
/// blob the index names (compressed here if that blob is gone or changed).
fn member_bytes(
    writer: &LayerWriter,
    blobs: &BlobStore,
    piece: Piece,
    open_blobs: &mut HashMap<Arc<str>, Option<std::fs::File>>,
) -> Vec<u8> {
    if let Some(member) = piece.member {
        return member;
    }
    if let Some(found) = &piece.found {
        if let Some(member) = read_member(blobs, found, open_blobs) {
            return member;
        }
        writer.forget(&piece.key);
    }
    gzip_member(&mut member_compressor(), &piece.raw)
}

/// A member copied out of an earlier blob, if that blob is still there and
/// the range still ends in the member's trailer.
fn read_member(
    blobs: &BlobStore,
    found: &Located,
    open_blobs: &mut HashMap<Arc<str>, Option<std::fs::File>>,
) -> Option<Vec<u8>> {
    // Only from a blob that still holds the bytes its digest names (checked
    // once per layer, stat-cached): a member's trailer says nothing of the
    // compressed bytes before it.
    let file = open_blobs
        .entry(found.blob.clone())
        .or_insert_with(|| {
            blobs.verify_cached(&found.blob).ok()?;
            blobs.open_blob(&found.blob).ok()
        })
        .as_ref()?;
    let mut member = vec![0u8; usize::try_from(found.len).ok()?];
    file.read_exact_at(&mut member, found.offset).ok()?;
    (member.len() >= GZIP_HEADER.len() + 8 && member[member.len() - 8..] == found.trailer)
        .then_some(member)
}
