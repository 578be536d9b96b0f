//! BLAKE3 content hashes of context files, with a daemon-wide cache keyed by stat
//! identity so an unchanged file is never read twice.
//!
//! The racy-file rule (as git's): a hash is only reused if the file's mtime is
//! older than the moment we started hashing it by more than [`RACY_WINDOW_NS`].
//! A file written in the same timestamp tick as our read may change again without
//! its stat changing, so such entries are always re-hashed.

use super::scan::FileMeta;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Coarser than any filesystem's timestamp granularity we support (ext4, xfs, btrfs: ns; some: 1 s... we take 2 s to be safe).
pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct StatKey {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    dev: u64,
}

impl StatKey {
    fn of(meta: &FileMeta) -> StatKey {
        StatKey {
            size: meta.size,
            mtime_ns: meta.mtime_ns,
            ctime_ns: meta.ctime_ns,
            ino: meta.ino,
            dev: meta.dev,
        }
    }
}

pub struct HashCache {
    entries: Mutex<HashMap<PathBuf, (StatKey, [u8; 32])>>,
    /// Entries added since the last [`HashCache::take_new`], to persist.
    fresh: Mutex<Vec<PathBuf>>,
    bytes_hashed: std::sync::atomic::AtomicU64,
    /// Single flight: a file is hashed under its stripe's lock, so a build and
    /// a background re-plan asking for the same file at once read it once.
    stripes: [Mutex<()>; STRIPES],
}

const STRIPES: usize = 64;

impl Default for HashCache {
    fn default() -> Self {
        HashCache {
            entries: Mutex::default(),
            fresh: Mutex::default(),
            bytes_hashed: std::sync::atomic::AtomicU64::new(0),
            stripes: std::array::from_fn(|_| Mutex::new(())),
        }
    }
}

/// A cache entry in its persisted form: 72 bytes, fixed layout (little endian):
/// size u64, mtime_ns i64, ctime_ns i64, inode u64, device u64, BLAKE3 [32].
pub const RECORD_LEN: usize = 72;

impl HashCache {
    pub fn new() -> HashCache {
        HashCache::default()
    }

    /// Total bytes read for hashing since start (a metric, and a test's witness
    /// that nothing was re-hashed).
    pub fn bytes_hashed(&self) -> u64 {
        self.bytes_hashed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// BLAKE3 of the file at `path` whose scan gave `meta`.
    pub fn hash(&self, path: &Path, meta: &FileMeta) -> io::Result<[u8; 32]> {
        let key = StatKey::of(meta);
        let cached = || match self.lock().get(path) {
            Some((cached_key, digest)) if *cached_key == key => Some(*digest),
            _ => None,
        };
        if let Some(digest) = cached() {
            return Ok(digest);
        }
        let stripe = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            path.hash(&mut h);
            h.finish() as usize % STRIPES
        };
        let _flight = self.stripes[stripe].lock();
        // Whoever held the stripe may have just hashed this very file.
        if let Some(digest) = cached() {
            return Ok(digest);
        }
        let started = crate::now_ns();
        let digest = hash_file(path)?;
        self.bytes_hashed
            .fetch_add(meta.size, std::sync::atomic::Ordering::Relaxed);
        if started - meta.mtime_ns > RACY_WINDOW_NS {
            self.lock().insert(path.to_path_buf(), (key, digest));
            self.fresh.lock().push(path.to_path_buf());
        }
        Ok(digest)
    }

    /// Entries added since the last call, encoded for the store.
    pub fn take_new(&self) -> Vec<(String, [u8; RECORD_LEN])> {
        let fresh = std::mem::take(&mut *self.fresh.lock());
        let entries = self.lock();
        fresh
            .into_iter()
            .filter_map(|path| {
                let (key, digest) = entries.get(&path)?;
                Some((path.to_str()?.to_string(), encode(key, digest)))
            })
            .collect()
    }

    /// Adds persisted entries (from an earlier daemon run). Each is still checked
    /// against a fresh stat before use, like any cached hash.
    pub fn load(&self, records: impl Iterator<Item = (String, Vec<u8>)>) -> usize {
        let mut entries = self.lock();
        let before = entries.len();
        for (path, bytes) in records {
            if let Some((key, digest)) = decode(&bytes) {
                entries.insert(PathBuf::from(path), (key, digest));
            }
        }
        entries.len() - before
    }

    /// Hashes many files on all cores; results in input order. Files whose
    /// stat matches the cache are answered under one lock, without threads.
    pub fn hash_all(&self, files: &[(PathBuf, FileMeta)]) -> io::Result<Vec<[u8; 32]>> {
        let mut out: Vec<Option<[u8; 32]>> = {
            let entries = self.lock();
            files
                .iter()
                .map(|(p, m)| match entries.get(p) {
                    Some((key, digest)) if *key == StatKey::of(m) => Some(*digest),
                    _ => None,
                })
                .collect()
        };
        let misses: Vec<usize> = (0..files.len()).filter(|i| out[*i].is_none()).collect();
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(misses.len().max(1));
        if workers <= 1 || misses.len() < 64 {
            for i in misses {
                out[i] = Some(self.hash(&files[i].0, &files[i].1)?);
            }
        } else {
            let chunk = misses.len().div_ceil(workers);
            // Workers open files with the rights of this thread's reader, if any.
            let reader = memobuild_rootpath::creds::current();
            let hashed = std::thread::scope(|s| {
                let handles: Vec<_> = misses
                    .chunks(chunk)
                    .map(|part| {
                        let reader = reader.clone();
                        s.spawn(move || {
                            memobuild_rootpath::creds::reading_as(reader, || {
                                part.iter()
                                    .map(|&i| self.hash(&files[i].0, &files[i].1).map(|d| (i, d)))
                                    .collect::<io::Result<Vec<_>>>()
                            })
                        })
                    })
                    .collect();
                let mut all = Vec::with_capacity(misses.len());
                for h in handles {
                    all.extend(
                        h.join()
                            .map_err(|_| io::Error::other("hashing thread panicked"))??,
                    );
                }
                Ok::<_, io::Error>(all)
            })?;
            for (i, d) in hashed {
                out[i] = Some(d);
            }
        }
        Ok(out.into_iter().map(|d| d.unwrap_or([0; 32])).collect())
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<PathBuf, (StatKey, [u8; 32])>> {
        self.entries.lock()
    }
}

thread_local! {
    /// One read buffer per hashing thread: allocating (and zeroing) one per file
    /// cost more than hashing small files.
    static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 128 * 1024]);
}

fn hash_file(path: &Path) -> io::Result<[u8; 32]> {
    // A context file replaced by a FIFO or device since the scan is refused, not read.
    let (mut file, _) = memobuild_rootpath::safefs::open_regular(path, false)?;
    let mut hasher = blake3::Hasher::new();
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok::<(), io::Error>(())
    })?;
    Ok(*hasher.finalize().as_bytes())
}

fn encode(key: &StatKey, digest: &[u8; 32]) -> [u8; RECORD_LEN] {
    let mut out = [0u8; RECORD_LEN];
    out[0..8].copy_from_slice(&key.size.to_le_bytes());
    out[8..16].copy_from_slice(&key.mtime_ns.to_le_bytes());
    out[16..24].copy_from_slice(&key.ctime_ns.to_le_bytes());
    out[24..32].copy_from_slice(&key.ino.to_le_bytes());
    out[32..40].copy_from_slice(&key.dev.to_le_bytes());
    out[40..72].copy_from_slice(digest);
    out
}

fn decode(bytes: &[u8]) -> Option<(StatKey, [u8; 32])> {
    if bytes.len() != RECORD_LEN {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap_or([0; 8]));
    let key = StatKey {
        size: u64_at(0),
        mtime_ns: u64_at(8) as i64,
        ctime_ns: u64_at(16) as i64,
        ino: u64_at(24),
        dev: u64_at(32),
    };
    let digest: [u8; 32] = bytes[40..72].try_into().ok()?;
    Some((key, digest))
}
