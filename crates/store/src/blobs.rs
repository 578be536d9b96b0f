//! Content-addressed blob store: `blobs/sha256/<hex>`, one file per blob.
//!
//! Durability rule (see docs/CACHE.md): a blob is written to `tmp/`, fsynced,
//! checked against its digest and renamed into place (then the directory is
//! fsynced) before any redb transaction that refers to it commits. A crash can
//! therefore leave only unreferenced temp files or unreferenced blobs, never a
//! reference to a missing or partial blob. Reads verify the digest.

use super::StoreError;
use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// `sha256:<64 hex>`.
pub type Digest = String;

#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    tmp: PathBuf,
    /// Blobs whose content was hashed and found right, by the stat they had
    /// then: a blob is re-hashed only when its file changed (see [`BlobStore::verify_cached`]).
    verified: parking_lot::Mutex<std::collections::HashMap<String, StatKey>>,
}

/// What changes when a file's bytes are rewritten (ctime cannot be set back).
type StatKey = (u64, i64, i64, i64, i64, u64);

fn stat_key(meta: &fs::Metadata) -> StatKey {
    use std::os::unix::fs::MetadataExt;
    (
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
        meta.ino(),
    )
}

/// A blob file as found on disk (for disk usage and garbage collection).
#[derive(Debug, Clone)]
pub struct BlobFile {
    pub digest: Digest,
    pub size: u64,
    pub modified: std::time::SystemTime,
}

impl BlobStore {
    pub fn open(root: &Path) -> Result<BlobStore, StoreError> {
        let dir = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        for d in [&dir, &tmp] {
            fs::create_dir_all(d).map_err(|e| StoreError::io(d, e))?;
        }
        clear_temp_leftovers(&tmp);
        Ok(BlobStore {
            dir,
            tmp,
            verified: Default::default(),
        })
    }

    /// Where temporary files for blobs and staging live (same filesystem as the
    /// blobs, so renames are atomic).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    pub fn path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.dir.join(hex_of(digest)?))
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    pub fn size(&self, digest: &str) -> Result<u64, StoreError> {
        let path = self.path(digest)?;
        let meta = fs::metadata(&path).map_err(|e| StoreError::io(&path, e))?;
        Ok(meta.len())
    }

    /// Starts writing a new blob; its digest is known when it is committed.
    pub fn writer(&self) -> Result<BlobWriter<'_>, StoreError> {
        let file =
            tempfile::NamedTempFile::new_in(&self.tmp).map_err(|e| StoreError::io(&self.tmp, e))?;
        Ok(BlobWriter {
            store: self,
            file: io::BufWriter::with_capacity(256 * 1024, file),
            hasher: Sha256::new(),
            size: 0,
            written_back: 0,
        })
    }

    /// A writer whose blob begins with the first `len` bytes of the stored
    /// blob `from` (copied in the kernel, not read), `state` being the
    /// SHA-256 state after those bytes (as [`BlobWriter::hash_state`] gave it
    /// when `from` was written). `from` must pass [`BlobStore::verify_cached`]:
    /// its bytes are the ones that state was made from.
    pub fn writer_with_prefix(
        &self,
        from: &str,
        len: u64,
        state: Sha256,
    ) -> Result<BlobWriter<'_>, StoreError> {
        self.verify_cached(from)?;
        let path = self.path(from)?;
        let source = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        let mut file =
            tempfile::NamedTempFile::new_in(&self.tmp).map_err(|e| StoreError::io(&self.tmp, e))?;
        let copied = io::copy(&mut (&source).take(len), file.as_file_mut())
            .map_err(|e| StoreError::io(&path, e))?;
        if copied != len {
            return Err(StoreError::io(
                &path,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the blob is shorter than the prefix",
                ),
            ));
        }
        Ok(BlobWriter {
            store: self,
            file: io::BufWriter::with_capacity(256 * 1024, file),
            hasher: state,
            size: len,
            written_back: 0,
        })
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<(Digest, u64), StoreError> {
        // Small blobs (configs, manifests) are often already stored: skip the
        // write and its fsyncs then.
        let digest = sha256_digest(bytes);
        if self.contains(&digest) && self.verify_cached(&digest).is_ok() {
            self.touch(&self.path(&digest)?);
            return Ok((digest, bytes.len() as u64));
        }
        let mut w = self.writer()?;
        w.write_all(bytes)
            .map_err(|e| StoreError::io(&self.tmp, e))?;
        w.commit()
    }

    /// Reads a whole blob and checks it against its digest.
    pub fn read_verified(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(digest)?;
        let bytes = fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(StoreError::Corrupt {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Checks a blob's content against its digest by streaming it.
    pub fn verify(&self, digest: &str) -> Result<(), StoreError> {
        let path = self.path(digest)?;
        let mut file = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        let mut hasher = Sha256::new();
        io::copy(&mut file, &mut hasher).map_err(|e| StoreError::io(&path, e))?;
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(StoreError::Corrupt {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(())
    }

    /// Like [`BlobStore::verify`], but skips the hashing when the file has the
    /// same stat as when it was last found right (or written by us). Reading a
    /// layer on every cache hit would cost more than the build; a changed stat
    /// is how bytes flipped on disk show up without reading them.
    pub fn verify_cached(&self, digest: &str) -> Result<(), StoreError> {
        let path = self.path(digest)?;
        let meta = fs::metadata(&path).map_err(|e| StoreError::io(&path, e))?;
        let key = stat_key(&meta);
        if self.verified_lock().get(digest) == Some(&key) {
            return Ok(());
        }
        self.verify(digest)?;
        self.verified_lock().insert(digest.to_string(), key);
        Ok(())
    }

    fn verified_lock(
        &self,
    ) -> parking_lot::MutexGuard<'_, std::collections::HashMap<String, StatKey>> {
        self.verified.lock()
    }

    /// Records a blob we just hashed while writing it as verified.
    fn remember_verified(&self, digest: &str) {
        if let Ok(meta) = self
            .path(digest)
            .and_then(|p| fs::metadata(&p).map_err(|e| StoreError::io(&p, e)))
        {
            self.verified_lock()
                .insert(digest.to_string(), stat_key(&meta));
        }
    }

    /// Marks an existing blob as just written (its mtime), so garbage collection
    /// treats it as new: a running build may be about to record it.
    fn touch(&self, path: &Path) {
        let now = std::time::SystemTime::now();
        if let Err(e) = File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(now))
        {
            tracing::debug!(path = %path.display(), error = %e, "cannot touch blob");
        }
        // The mtime changed; keep the verification (we just compared the bytes or trust the digest).
        if let Some(digest) = path
            .file_name()
            .map(|n| format!("sha256:{}", n.to_string_lossy()))
        {
            if self.verified_lock().contains_key(&digest) {
                self.remember_verified(&digest);
            }
        }
    }

    /// Removes a blob file (garbage collection, or a corrupt blob). Missing is fine.
    pub fn remove(&self, digest: &str) -> Result<(), StoreError> {
        let path = self.path(digest)?;
        self.verified_lock().remove(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Every blob on disk, with its size and mtime.
    pub fn list(&self) -> Result<Vec<BlobFile>, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| StoreError::io(&self.dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&self.dir, e))?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if hex_of(&digest).is_err() {
                continue;
            }
            // Removed meanwhile (GC or a corrupt blob): not there any more.
            let Ok(meta) = entry.metadata() else { continue };
            out.push(BlobFile {
                digest,
                size: meta.len(),
                modified: meta.modified().unwrap_or(std::time::UNIX_EPOCH),
            });
        }
        Ok(out)
    }

    /// Files in the temp directory (leftovers, or in use by running builds).
    pub fn temp_entries(&self) -> usize {
        fs::read_dir(&self.tmp).map(|d| d.count()).unwrap_or(0)
    }

    pub fn open_blob(&self, digest: &str) -> Result<File, StoreError> {
        let path = self.path(digest)?;
        File::open(&path).map_err(|e| StoreError::io(&path, e))
    }

    /// Reads `len` bytes at `offset` (fewer at the end of the blob).
    pub fn read_range(&self, digest: &str, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        let path = self.path(digest)?;
        let mut file = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| StoreError::io(&path, e))?;
        let mut buf = Vec::with_capacity(len.min(64 * 1024 * 1024) as usize);
        file.take(len)
            .read_to_end(&mut buf)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(buf)
    }
}

/// A blob arriving in pieces over the socket (image import). Unlike
/// [`BlobWriter`] it owns no borrow, so it can wait between RPCs.
pub struct Upload {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
}

impl BlobStore {
    pub fn upload(&self) -> Result<Upload, StoreError> {
        let file =
            tempfile::NamedTempFile::new_in(&self.tmp).map_err(|e| StoreError::io(&self.tmp, e))?;
        Ok(Upload {
            file,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Stores an upload if its content hashes to `expected`.
    pub fn commit_upload(&self, upload: Upload, expected: &str) -> Result<u64, StoreError> {
        let actual = format!("sha256:{}", hex::encode(upload.hasher.finalize()));
        if actual != expected {
            return Err(StoreError::Corrupt {
                digest: expected.to_string(),
                actual,
            });
        }
        let dest = self.path(expected)?;
        upload
            .file
            .as_file()
            .sync_all()
            .map_err(|e| StoreError::io(&self.tmp, e))?;
        if dest.exists() && self.verify_cached(expected).is_ok() {
            self.touch(&dest);
        } else {
            upload
                .file
                .persist(&dest)
                .map_err(|e| StoreError::io(&dest, e.error))?;
            sync_dir(&self.dir)?;
            self.remember_verified(expected);
        }
        Ok(upload.size)
    }
}

impl Upload {
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(data)
            .map_err(|e| StoreError::io(self.file.path(), e))?;
        self.hasher.update(data);
        self.size += data.len() as u64;
        Ok(())
    }
}

/// A blob being written: hashes while writing, lands atomically on `commit`.
pub struct BlobWriter<'a> {
    store: &'a BlobStore,
    file: io::BufWriter<tempfile::NamedTempFile>,
    hasher: Sha256,
    size: u64,
    /// The file's bytes before this offset are being written back already.
    written_back: u64,
}

/// Bytes between two writeback starts of a [`BlobWriter`]. The kernel writes
/// them out while the rest of the blob is made, so `commit`'s fsync of a
/// 100 MB layer waits for the last few megabytes instead of all of them.
const WRITEBACK_EVERY: u64 = 8 << 20;

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        let in_file = self.size - self.file.buffer().len() as u64;
        if in_file - self.written_back >= WRITEBACK_EVERY {
            start_writeback(self.file.get_ref().as_file(), self.written_back, in_file);
            self.written_back = in_file;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter<'_> {
    /// The SHA-256 state after the bytes written so far.
    pub fn hash_state(&self) -> Sha256 {
        self.hasher.clone()
    }

    /// fsyncs the data, renames it into place and fsyncs the directory.
    pub fn commit(self) -> Result<(Digest, u64), StoreError> {
        let tmp = self.store.tmp.clone();
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        let file = self
            .file
            .into_inner()
            .map_err(|e| StoreError::io(&tmp, e.into_error()))?;
        file.as_file()
            .sync_all()
            .map_err(|e| StoreError::io(&tmp, e))?;
        let dest = self.store.path(&digest)?;
        if dest.exists() && self.store.verify_cached(&digest).is_ok() {
            // Same content already stored; the temp file is dropped (deleted).
            // (A corrupt file under that name is replaced by the good bytes.)
            self.store.touch(&dest);
            return Ok((digest, self.size));
        }
        file.persist(&dest)
            .map_err(|e| StoreError::io(&dest, e.error))?;
        sync_dir(&self.store.dir)?;
        self.store.remember_verified(&digest);
        Ok((digest, self.size))
    }
}

/// Starts writing `from..to` of `file` back to disk, without waiting. Only
/// a head start for a later fsync, so a failure is ignored (the fsync reports
/// any real one).
fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    // SAFETY: a plain syscall on a descriptor `file` keeps open; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(dir, e))
}

/// Temp files are only ever half-written blobs or staging trees of a build that
/// died with the previous daemon.
fn clear_temp_leftovers(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let result = if path.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "could not remove temp leftover");
        }
    }
}

pub fn sha256_digest(bytes: &[u8]) -> Digest {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The hex part of a `sha256:` digest, validated so it can be used as a file name.
fn hex_of(digest: &str) -> Result<&str, StoreError> {
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| StoreError::BadDigest(digest.to_string()))?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(StoreError::BadDigest(digest.to_string()));
    }
    Ok(hex)
}
