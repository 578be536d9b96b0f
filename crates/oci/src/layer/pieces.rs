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
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use memobuild_store::{BlobStore, BlobWriter, Digest};
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;

/// Entries whose tar bytes reach this size are pieces of their own.
const BIG: usize = 64 * 1024;
/// The largest piece: big entries are cut into pieces of this size.
const CHUNK: usize = 4 << 20;
/// About one small entry in this many ends a group.
const GROUP_ONE_IN: u8 = 16;
/// Pieces between the tar writer and the blob, at most (bounds memory to
/// about this many times [`CHUNK`]).
const IN_FLIGHT: usize = 32;
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
    /// Set when the index knows a member for these bytes.
    found: Option<Located>,
    /// The compressed member, once made.
    member: Option<Vec<u8>>,
}

/// The tar stream's sink: hashes it (the diff_id), cuts it into pieces and
/// sends each one on, to the compressors or, when the index has it, straight
/// to the blob writer.
pub(super) struct PieceSink<'w> {
    writer: &'w LayerWriter,
    diff_id: Sha256,
    buf: Vec<u8>,
    seq: u64,
    /// Whether the entry being written is a big one (cut at [`CHUNK`]).
    big_entry: bool,
    to_compress: SyncSender<Piece>,
    to_blob: Sender<Piece>,
    /// A slot per piece in flight; the blob writer gives them back.
    slots: Receiver<()>,
}

impl PieceSink<'_> {
    /// Called before each entry with the size of its data.
    pub(super) fn begin_entry(&mut self, data_len: u64) -> io::Result<()> {
        let big = data_len as usize + 512 >= BIG;
        if big && !self.buf.is_empty() {
            self.cut()?;
        }
        self.big_entry = big;
        Ok(())
    }

    /// Called after each entry with its path.
    pub(super) fn end_entry(&mut self, path: &str) -> io::Result<()> {
        let picked = blake3::hash(path.as_bytes()).as_bytes()[0].is_multiple_of(GROUP_ONE_IN);
        if self.big_entry || picked || self.buf.len() >= BIG {
            self.cut()?;
        }
        self.big_entry = false;
        Ok(())
    }

    fn cut(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let raw = std::mem::take(&mut self.buf);
        self.diff_id.update(&raw);
        let key = *blake3::hash(&raw).as_bytes();
        // Wait for a slot: the blob writer may be behind.
        self.slots.recv().map_err(|_| stopped())?;
        let found = self.writer.lookup(&key);
        let piece = Piece {
            seq: self.seq,
            key,
            raw,
            found,
            member: None,
        };
        self.seq += 1;
        let sent = if piece.found.is_some() {
            self.to_blob.send(piece).is_ok()
        } else {
            self.to_compress.send(piece).is_ok()
        };
        if sent {
            Ok(())
        } else {
            Err(stopped())
        }
    }

    /// Cuts the last piece and returns the diff_id.
    pub(super) fn finish(&mut self) -> io::Result<String> {
        self.cut()?;
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
            self.cut()?;
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

/// Writes one layer: `produce` writes the tar stream into the sink it is given
/// (calling `begin_entry`/`end_entry` around entries); pieces are compressed
/// on all cores and appended to a new blob in order. Returns the committed blob
/// digest, its size and the diff_id.
pub(super) fn write_layer(
    writer: &LayerWriter,
    blobs: &BlobStore,
    produce: impl FnOnce(&mut PieceSink<'_>) -> Result<(), OciError> + Send,
) -> Result<(Digest, u64, String), OciError> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (to_compress, compress_rx) = mpsc::sync_channel::<Piece>(workers);
    let compress_rx = Mutex::new(compress_rx);
    let (to_blob, blob_rx) = mpsc::channel::<Piece>();
    let (slot_tx, slots) = mpsc::sync_channel::<()>(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let _ = slot_tx.send(());
    }
    let blob = blobs.writer()?;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (rx, tx) = (&compress_rx, to_blob.clone());
            scope.spawn(move || compress_pieces(rx, tx));
        }
        let producer = scope.spawn(move || {
            let mut sink = PieceSink {
                writer,
                diff_id: Sha256::new(),
                buf: Vec::new(),
                seq: 0,
                big_entry: false,
                to_compress,
                to_blob,
                slots,
            };
            produce(&mut sink)?;
            let diff_id = sink.finish().map_err(|source| OciError::Write {
                path: "<end of archive>".into(),
                source,
            })?;
            Ok::<_, OciError>(diff_id)
        });
        let written = append_pieces(writer, blobs, blob, blob_rx, slot_tx);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(OciError::Invalid("the layer's tar writer panicked".into())));
        // The producer's error is the cause; the writer's follows from it.
        let diff_id = produced?;
        // Committed only now: a tar writer that failed leaves no blob.
        let (blob, members) = written?;
        let (digest, size) = blob.commit()?;
        writer.remember(&digest, members);
        Ok((digest, size, diff_id))
    })
}

/// A compressor thread: takes pieces until the tar writer is done. If the
/// blob writer has stopped it keeps draining, so the tar writer never blocks
/// on a full queue and sees the stop at its next piece.
fn compress_pieces(rx: &Mutex<Receiver<Piece>>, tx: Sender<Piece>) {
    let mut deflate = Compress::new(Compression::fast(), false);
    let mut blob_writer_gone = false;
    loop {
        let next = rx.lock().recv();
        let Ok(mut piece) = next else { return };
        if blob_writer_gone {
            continue;
        }
        piece.member = Some(gzip_member(&mut deflate, &piece.raw));
        blob_writer_gone = tx.send(piece).is_err();
    }
}

/// One gzip member of `raw`, from a reused raw-deflate compressor.
fn gzip_member(deflate: &mut Compress, raw: &[u8]) -> Vec<u8> {
    deflate.reset();
    let mut out = Vec::with_capacity(raw.len() / 2 + 64);
    out.extend_from_slice(&GZIP_HEADER);
    let mut input = raw;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.len().max(4096));
        }
        let before = deflate.total_in();
        let status = deflate
            .compress_vec(input, &mut out, FlushCompress::Finish)
            .expect("deflate of an in-memory buffer cannot fail");
        input = &input[(deflate.total_in() - before) as usize..];
        if status == Status::StreamEnd {
            break;
        }
    }
    let mut crc = Crc::new();
    crc.update(raw);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out
}

type Members = Vec<([u8; 32], u64, u64, [u8; 8])>;

/// The blob writer: appends members in order; returns the blob uncommitted
/// and where each member landed.
fn append_pieces<'b>(
    writer: &LayerWriter,
    blobs: &BlobStore,
    mut blob: BlobWriter<'b>,
    rx: Receiver<Piece>,
    slots: SyncSender<()>,
) -> Result<(BlobWriter<'b>, Members), OciError> {
    let mut next = 0u64;
    let mut waiting: BTreeMap<u64, Piece> = BTreeMap::new();
    let mut offset = 0u64;
    let mut members = Vec::new();
    let mut open_blobs: HashMap<Arc<str>, Option<std::fs::File>> = HashMap::new();
    for piece in rx {
        waiting.insert(piece.seq, piece);
        while let Some(piece) = waiting.remove(&next) {
            let key = piece.key;
            let member = member_bytes(writer, blobs, piece, &mut open_blobs);
            blob.write_all(&member).map_err(|source| OciError::Write {
                path: "<layer blob>".into(),
                source,
            })?;
            let mut trailer = [0u8; 8];
            trailer.copy_from_slice(&member[member.len() - 8..]);
            members.push((key, offset, member.len() as u64, trailer));
            offset += member.len() as u64;
            next += 1;
            let _ = slots.try_send(());
        }
    }
    if !waiting.is_empty() {
        // The tar writer stopped early; its error is reported instead.
        return Err(OciError::Invalid("the layer was not complete".into()));
    }
    Ok((blob, members))
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
    gzip_member(&mut Compress::new(Compression::fast(), false), &piece.raw)
}

/// A member copied out of an earlier blob, if that blob is still there and
/// the range still ends in the member's trailer.
fn read_member(
    blobs: &BlobStore,
    found: &Located,
    open_blobs: &mut HashMap<Arc<str>, Option<std::fs::File>>,
) -> Option<Vec<u8>> {
    let file = open_blobs
        .entry(found.blob.clone())
        .or_insert_with(|| blobs.open_blob(&found.blob).ok())
        .as_ref()?;
    let mut member = vec![0u8; usize::try_from(found.len).ok()?];
    file.read_exact_at(&mut member, found.offset).ok()?;
    (member.len() >= GZIP_HEADER.len() + 8 && member[member.len() - 8..] == found.trailer)
        .then_some(member)
}
