//! BLAKE3 content hashes of context files, with a daemon-wide cache keyed by stat
//! identity so an unchanged file is never read twice.
//!
//! The racy-file rule (as git's): a hash is only reused if the file's mtime is
//! older than the moment we started hashing it by more than [`RACY_WINDOW_NS`].
//! A file written in the same timestamp tick as our read may change again without
//! its stat changing, so such entries are always re-hashed.

use super::scan::FileMeta;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Coarser than any filesystem's timestamp granularity we support (ext4, xfs, btrfs: ns; some: 1 s... we take 2 s to be safe).
pub const RACY_WINDOW_NS: i128 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct StatKey {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
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

#[derive(Default)]
pub struct HashCache {
    entries: Mutex<HashMap<PathBuf, (StatKey, [u8; 32])>>,
    bytes_hashed: std::sync::atomic::AtomicU64,
}

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
        if let Some((cached_key, digest)) = self.lock().get(path) {
            if *cached_key == key {
                return Ok(*digest);
            }
        }
        let started = now_ns();
        let digest = hash_file(path)?;
        self.bytes_hashed
            .fetch_add(meta.size, std::sync::atomic::Ordering::Relaxed);
        if started - meta.mtime_ns > RACY_WINDOW_NS {
            self.lock().insert(path.to_path_buf(), (key, digest));
        }
        Ok(digest)
    }

    /// Hashes many files on all cores; results in input order.
    pub fn hash_all(&self, files: &[(PathBuf, FileMeta)]) -> io::Result<Vec<[u8; 32]>> {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(files.len().max(1));
        if workers <= 1 || files.len() < 64 {
            return files.iter().map(|(p, m)| self.hash(p, m)).collect();
        }
        let chunk = files.len().div_ceil(workers);
        std::thread::scope(|s| {
            let handles: Vec<_> = files
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|(p, m)| self.hash(p, m))
                            .collect::<io::Result<Vec<_>>>()
                    })
                })
                .collect();
            let mut out = Vec::with_capacity(files.len());
            for h in handles {
                let part = h
                    .join()
                    .map_err(|_| io::Error::other("hashing thread panicked"))??;
                out.extend(part);
            }
            Ok(out)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (StatKey, [u8; 32])>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn hash_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(*hasher.finalize().as_bytes())
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}
