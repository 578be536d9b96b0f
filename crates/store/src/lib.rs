//! The daemon's persistent state: a redb database for metadata (step cache
//! entries, image names) and a content-addressed blob store for layers, configs
//! and manifests.
//!
//! Every record that names a blob is committed only after the blob is durable
//! (see [`blobs`]), so the database never points at a missing blob.

// What other crates may use is what this file exports; the rest is private.
#![warn(unreachable_pub)]

pub mod blobs;
mod pins;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub use blobs::{BlobStore, BlobWriter, Digest, Upload};
pub use pins::Pins;

/// Seconds since the Unix epoch (0 if the clock is before it): the time
/// records carry (`created_at`, `tagged_at`, last use).
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Cache key (hex BLAKE3) -> JSON [`StepRecord`].
const STEPS: TableDefinition<&str, &[u8]> = TableDefinition::new("steps_v1");
/// Image name -> JSON [`ImageRecord`].
const IMAGES: TableDefinition<&str, &[u8]> = TableDefinition::new("images_v1");
/// Absolute file path -> persisted content hash (see `context::hash`).
const HASHES: TableDefinition<&str, &[u8]> = TableDefinition::new("hashes_v2");
/// Project id -> JSON project record (see `project`).
const PROJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("projects_v1");
/// Cache key -> Unix seconds the step was last a cache hit or written (LRU for
/// garbage collection; written in batches, see [`Store::flush`]).
const LAST_USED: TableDefinition<&str, i64> = TableDefinition::new("last_used_v1");
/// Content digests of paths in a stage's result: the hex key of
/// (stage key, paths) -> hex digest (docs/CACHE.md, "Stage content").
const STAGE_CONTENT: TableDefinition<&str, &str> = TableDefinition::new("stage_content_v1");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata database: {0}")]
    Db(String),
    #[error(
        "blob {digest} is corrupt (its content hashes to {actual}); it will be dropped and rebuilt"
    )]
    Corrupt { digest: String, actual: String },
    #[error("not a valid sha256 digest: {0:?}")]
    BadDigest(String),
    #[error("record for {key} is unreadable: {message}")]
    BadRecord { key: String, message: String },
}

impl StoreError {
    pub fn io(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The result of one build step, as kept in the cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepRecord {
    /// The layer the step added; `None` for steps that only change the config.
    pub layer: Option<LayerRecord>,
    /// Unix seconds when the step ran.
    pub created_at: i64,
    /// The uid whose build ran the step. The step cache is shared (a key
    /// covers every input, so any build with that key may use the result),
    /// but only its owner's `prune` (or an admin's) drops the entry. `None`:
    /// imported from a remote cache before importers were recorded, or
    /// written before owners were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    /// Imported from a cache (`--cache-from`, a local directory or a
    /// registry) rather than built here: `owner` is the importer, and only
    /// the importer's (and admins') builds use it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub imported: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// Digest of the compressed blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar (the image config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    pub size: u64,
    pub media_type: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub size: u64,
    pub tagged_at: i64,
    /// The uid that named the image; `None` for base images pulled from a
    /// registry and for names set before owners were recorded (only admins
    /// may remove or re-tag those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    /// The manifest digest the registry holds for this name, once the name
    /// was pushed (`--push`) or pulled (`FROM`): the digest of what the tag
    /// resolved to there (an index, for a multi-platform image). `docker
    /// image inspect`'s `RepoDigests` lists it as `REPOSITORY@DIGEST`. A new
    /// image under the name drops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo_digest: Option<String>,
}

pub struct Store {
    root: PathBuf,
    db: Database,
    pub blobs: BlobStore,
    /// Last-use times not yet written to [`LAST_USED`].
    recent: parking_lot::Mutex<std::collections::HashMap<String, i64>>,
    /// What running builds use; held by garbage collection while it decides and deletes.
    pins: parking_lot::Mutex<pins::Pins>,
    /// A commit was made without an fsync since the last durable one
    /// (see [`Store::flush`]).
    deferred: std::sync::atomic::AtomicBool,
}

/// The outcome of looking a step up in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(StepRecord),
    Miss,
    /// The record's layer blob was corrupt: it and every record naming it were
    /// dropped, so the step must run again.
    Corrupt {
        digest: String,
        message: String,
    },
}

impl Store {
    /// Opens (creating if needed) the store under `root`.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(root).map_err(|e| StoreError::io(root, e))?;
        let blobs = BlobStore::open(root)?;
        let db_path = root.join("meta.redb");
        let db = Database::create(&db_path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Db(format!(
                "{} is in use by another memobuildd; stop it or use another --data-dir",
                db_path.display()
            )),
            other => db_err(other),
        })?;
        let store = Store {
            root: root.to_path_buf(),
            db,
            blobs,
            recent: Default::default(),
            pins: Default::default(),
            deferred: Default::default(),
        };
        store.create_tables()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn create_tables(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        txn.open_table(STEPS).map_err(db_err)?;
        txn.open_table(IMAGES).map_err(db_err)?;
        txn.open_table(PROJECTS).map_err(db_err)?;
        txn.open_table(HASHES).map_err(db_err)?;
        txn.open_table(LAST_USED).map_err(db_err)?;
        txn.open_table(STAGE_CONTENT).map_err(db_err)?;
        txn.commit().map_err(db_err)
    }

    /// The cached result of a step, with its layer blob verified (see
    /// [`BlobStore::verify_cached`]); a corrupt blob is dropped with its records.
    pub fn lookup_step(&self, key: &str) -> Result<Lookup, StoreError> {
        let Some(record) = self.get::<StepRecord>(STEPS, key)? else {
            return Ok(Lookup::Miss);
        };
        let Some(layer) = &record.layer else {
            return Ok(Lookup::Hit(record));
        };
        match self.blobs.verify_cached(&layer.digest) {
            Ok(()) => Ok(Lookup::Hit(record)),
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(key, digest = %layer.digest, "cache entry names a missing blob; treating as a miss");
                Ok(Lookup::Miss)
            }
            Err(e @ StoreError::Corrupt { .. }) => {
                tracing::warn!(key, digest = %layer.digest, error = %e, "corrupt blob: dropping it and its cache entries");
                self.drop_blob(&layer.digest)?;
                Ok(Lookup::Corrupt {
                    digest: layer.digest.clone(),
                    message: e.to_string(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Removes every step record naming `digest` (committed first, so no
    /// record ever points at a missing blob), then the blob itself.
    pub fn drop_blob(&self, digest: &str) -> Result<usize, StoreError> {
        let keys: Vec<String> = self
            .steps()?
            .into_iter()
            .filter(|(_, r)| r.layer.as_ref().is_some_and(|l| l.digest == digest))
            .map(|(k, _)| k)
            .collect();
        self.remove_steps(&keys)?;
        self.blobs.remove(digest)?;
        Ok(keys.len())
    }

    /// Every step record (key, record).
    pub fn steps(&self) -> Result<Vec<(String, StepRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(STEPS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }

    /// Removes step records and their last-use times in one transaction.
    pub fn remove_steps(&self, keys: &[String]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut steps = txn.open_table(STEPS).map_err(db_err)?;
            let mut used = txn.open_table(LAST_USED).map_err(db_err)?;
            for key in keys {
                steps.remove(key.as_str()).map_err(db_err)?;
                used.remove(key.as_str()).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Notes that a step was used now; written by [`Store::flush`].
    pub fn note_used(&self, key: &str) {
        self.note_used_at(key, crate::now_secs());
    }

    /// Notes that a step was used at Unix second `at` (imports keep their
    /// remote use time; tests order entries).
    pub fn note_used_at(&self, key: &str, at: i64) {
        self.recent.lock().insert(key.to_string(), at);
    }

    /// Writes the noted last-use times in one durable transaction, which also
    /// makes every deferred commit before it durable (after each build, before
    /// its client hears the result, and before garbage collection). So a
    /// cached build costs one write, not one per step, and a build's records
    /// one fsync, not one each.
    pub fn flush(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let recent = std::mem::take(&mut *self.recent.lock());
        let deferred = self.deferred.swap(false, Ordering::SeqCst);
        if recent.is_empty() && !deferred {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(LAST_USED).map_err(db_err)?;
            for (key, at) in &recent {
                table.insert(key.as_str(), *at).map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err).inspect_err(|_| {
            self.deferred.store(true, Ordering::SeqCst);
        })
    }

    /// Last-use times (key -> Unix seconds) as persisted.
    pub fn last_used(&self) -> Result<std::collections::HashMap<String, i64>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(LAST_USED).map_err(db_err)?;
        let mut out = std::collections::HashMap::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.insert(k.value().to_string(), v.value());
        }
        Ok(out)
    }

    /// Step records are committed without an fsync of their own (~2 ms of
    /// every executed step): [`Store::flush`] at the end of the build makes
    /// them durable (so does any durable commit, and a clean shutdown). A
    /// crash before it loses them and the steps run again; never a record
    /// without its blob, which is durable before the record is written.
    pub fn put_step(&self, key: &str, record: &StepRecord) -> Result<(), StoreError> {
        self.put_with(STEPS, key, record, Commit::Deferred)
    }

    pub fn image(&self, name: &str) -> Result<Option<ImageRecord>, StoreError> {
        self.get(IMAGES, name)
    }

    pub fn put_image(&self, name: &str, record: &ImageRecord) -> Result<(), StoreError> {
        self.put(IMAGES, name, record)
    }

    /// A build's tag: durable with the [`Store::flush`] that ends the build,
    /// before its client hears of it.
    pub fn put_image_deferred(&self, name: &str, record: &ImageRecord) -> Result<(), StoreError> {
        self.put_with(IMAGES, name, record, Commit::Deferred)
    }

    pub fn remove_image(&self, name: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let removed = {
            let mut table = txn.open_table(IMAGES).map_err(db_err)?;
            let removed = table.remove(name).map_err(db_err)?.is_some();
            removed
        };
        txn.commit().map_err(db_err)?;
        Ok(removed)
    }

    /// Removes image `name` only if its record (read in the same
    /// transaction) satisfies `remove_if`: an owner check that a concurrent
    /// re-tag cannot slip past. False if there is no such image or it fails.
    pub fn remove_image_if(
        &self,
        name: &str,
        remove_if: impl Fn(&ImageRecord) -> bool,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let removed = {
            let mut table = txn.open_table(IMAGES).map_err(db_err)?;
            let current = match table.get(name).map_err(db_err)? {
                Some(v) => Some(decode::<ImageRecord>(name, v.value())?),
                None => None,
            };
            match current {
                Some(record) if remove_if(&record) => {
                    table.remove(name).map_err(db_err)?;
                    true
                }
                _ => false,
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(removed)
    }

    /// Records `repo_digest` ([`ImageRecord::repo_digest`]) for image `name`
    /// if it (read in the same transaction) still names `manifest_digest`,
    /// so a push or pull never re-points a name a concurrent build re-tagged.
    /// False when it does not.
    pub fn set_repo_digest(
        &self,
        name: &str,
        manifest_digest: &str,
        repo_digest: &str,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let set = {
            let mut table = txn.open_table(IMAGES).map_err(db_err)?;
            let current = match table.get(name).map_err(db_err)? {
                Some(v) => Some(decode::<ImageRecord>(name, v.value())?),
                None => None,
            };
            match current {
                Some(mut record) if record.manifest_digest == manifest_digest => {
                    record.repo_digest = Some(repo_digest.to_string());
                    let bytes = serde_json::to_vec(&record).map_err(db_err)?;
                    table.insert(name, bytes.as_slice()).map_err(db_err)?;
                    true
                }
                _ => false,
            }
        };
        txn.commit().map_err(db_err)?;
        Ok(set)
    }

    pub fn images(&self) -> Result<Vec<(String, ImageRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(IMAGES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let record = decode(k.value(), v.value())?;
            out.push((k.value().to_string(), record));
        }
        Ok(out)
    }

    /// A build's project record: durable with the [`Store::flush`] that ends
    /// the build, before its client hears of it.
    pub fn put_project(&self, id: &str, record: &[u8]) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(db_err)?;
        self.set_commit(&mut txn, Commit::Deferred)?;
        {
            let mut table = txn.open_table(PROJECTS).map_err(db_err)?;
            table.insert(id, record).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    pub fn delete_project(&self, id: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(PROJECTS).map_err(db_err)?;
            table.remove(id).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Persists content hashes in one transaction.
    pub fn put_hashes<const LEN: usize>(
        &self,
        records: &[(String, [u8; LEN])],
    ) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(HASHES).map_err(db_err)?;
            for (path, record) in records {
                table
                    .insert(path.as_str(), record.as_slice())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }

    /// Every persisted content hash (path, record).
    pub fn hashes(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(HASHES).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// A remembered content digest of paths in a stage's result (see
    /// [`Store::put_stage_content`]).
    pub fn stage_content(&self, key: &str) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(STAGE_CONTENT).map_err(db_err)?;
        Ok(table
            .get(key)
            .map_err(db_err)?
            .map(|v| v.value().to_string()))
    }

    /// Remembers the content digest of paths in a stage's result, keyed by the
    /// stage's cache key and the paths: the same key always means the same
    /// result, so the digest is never computed twice.
    pub fn put_stage_content(&self, key: &str, digest: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut table = txn.open_table(STAGE_CONTENT).map_err(db_err)?;
            table.insert(key, digest).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Raw project records (id, JSON).
    pub fn projects(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(PROJECTS).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn get<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(table).map_err(db_err)?;
        let Some(value) = table.get(key).map_err(db_err)? else {
            return Ok(None);
        };
        decode(key, value.value()).map(Some)
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        self.put_with(table, key, value, Commit::Durable)
    }

    fn put_with<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
        commit: Commit,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(db_err)?;
        let mut txn = self.db.begin_write().map_err(db_err)?;
        self.set_commit(&mut txn, commit)?;
        {
            let mut table = txn.open_table(table).map_err(db_err)?;
            table.insert(key, bytes.as_slice()).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Makes `txn` commit as `commit` says (noting a deferred one for [`Store::flush`]).
    fn set_commit(
        &self,
        txn: &mut redb::WriteTransaction,
        commit: Commit,
    ) -> Result<(), StoreError> {
        if commit == Commit::Deferred {
            txn.set_durability(redb::Durability::None).map_err(db_err)?;
            self.deferred
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(())
    }
}

/// When a write reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Commit {
    /// Durable when the call returns.
    Durable,
    /// Without an fsync of its own: durable with the next durable commit, at
    /// the latest [`Store::flush`] (every build ends with one before its
    /// client hears the result) or a clean shutdown. A crash before that
    /// loses it, as if it had not been written.
    Deferred,
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::BadRecord {
        key: key.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_from_before_owners_read_as_unowned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // As an older daemon wrote them: no `owner` field.
        let old_image = br#"{"manifest_digest":"sha256:aa","config_digest":"sha256:bb","size":3,"tagged_at":5}"#;
        let old_step = br#"{"layer":null,"created_at":7}"#;
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(IMAGES)
                .unwrap()
                .insert("app:latest", old_image.as_slice())
                .unwrap();
            txn.open_table(STEPS)
                .unwrap()
                .insert("k", old_step.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let image = store.image("app:latest").unwrap().unwrap();
        assert_eq!((image.owner, image.size), (None, 3));
        assert_eq!(store.steps().unwrap()[0].1.owner, None);
        // Owned records round-trip; the owner check and the removal are one step.
        store
            .put_image(
                "app:latest",
                &ImageRecord {
                    owner: Some(1001),
                    ..image
                },
            )
            .unwrap();
        assert!(!store
            .remove_image_if("app:latest", |r| r.owner == Some(1002))
            .unwrap());
        assert_eq!(
            store.image("app:latest").unwrap().unwrap().owner,
            Some(1001)
        );
        assert!(store
            .remove_image_if("app:latest", |r| r.owner == Some(1001))
            .unwrap());
        assert!(store.image("app:latest").unwrap().is_none());
    }

    /// What a crash leaves of a build's records: nothing written deferred
    /// before the build's flush, everything after it. The child writes and
    /// exits without closing the database, as a daemon killed with -9.
    #[test]
    fn deferred_commits_are_durable_once_flushed() {
        if let Ok(dir) = std::env::var("MEMOBUILD_STORE_CRASH_DIR") {
            let flush = std::env::var("MEMOBUILD_STORE_CRASH_FLUSH").as_deref() == Ok("true");
            crash_after_writing(Path::new(&dir), flush);
        }
        for flush in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let status = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "tests::deferred_commits_are_durable_once_flushed",
                ])
                .env("MEMOBUILD_STORE_CRASH_DIR", dir.path())
                .env("MEMOBUILD_STORE_CRASH_FLUSH", flush.to_string())
                .status()
                .unwrap();
            assert_eq!(status.code(), Some(3), "the child did not get to its exit");
            let store = Store::open(dir.path()).unwrap();
            let kept = matches!(store.lookup_step("k").unwrap(), Lookup::Hit(_));
            assert_eq!(kept, flush, "step record kept (flushed: {flush})");
            assert_eq!(store.image("app:latest").unwrap().is_some(), flush);
        }
    }

    fn crash_after_writing(dir: &Path, flush: bool) -> ! {
        let store = Store::open(dir).unwrap();
        let step = StepRecord {
            layer: None,
            created_at: 1,
            owner: None,
            imported: false,
        };
        store.put_step("k", &step).unwrap();
        let image = ImageRecord {
            manifest_digest: "sha256:aa".into(),
            config_digest: "sha256:bb".into(),
            size: 1,
            tagged_at: 1,
            owner: None,
            repo_digest: None,
        };
        store.put_image_deferred("app:latest", &image).unwrap();
        if flush {
            store.flush().unwrap();
        }
        // No destructor runs: the database is left as a killed daemon leaves it.
        std::process::exit(3)
    }
}
