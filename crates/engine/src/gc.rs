//! Disk garbage collection: what the store's blobs are used for (`du`), and
//! dropping least-recently-used step cache entries and every blob nothing
//! references any more (`prune`, and automatically above `max-storage`).
//!
//! Rules (docs/CACHE.md, "Garbage collection"):
//! - roots are never removed: every named image (manifest, config, layers) and,
//!   unless `all`, the image of every project's last build;
//! - what a running build uses is pinned: the step records it looked up (and
//!   their layers), and every blob written or touched since the oldest running
//!   build started (a blob is written before the record naming it commits; the
//!   time fence covers that gap without locking the writers);
//! - records are removed (one committed transaction) before the blobs they
//!   name, so a crash in between leaves only unreferenced blobs.

use memobuild_store::{Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

/// What to prune.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Also drop what projects' last builds use (named images always stay).
    pub all: bool,
    /// Drop least-recently-used entries only until the blobs total at most this.
    pub keep_bytes: Option<u64>,
    /// Drop only entries not used (or made) within this many seconds.
    pub unused_for_secs: Option<u64>,
    /// A user's prune (`Some(uid)`): only the step entries that user's builds
    /// made are dropped, and `all` gives up only what that user's projects'
    /// last builds keep. `None`: an admin's, or the daemon's own GC.
    pub owner: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub records_removed: u64,
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    pub bytes_after: u64,
}

/// What the blob store holds, by use (`max_storage` is the engine's to fill in).
pub(crate) type Usage = memobuild_proto::DiskUsage;

/// Digests every blob of the image `manifest` (manifest, config, layers); an
/// unreadable manifest contributes only itself.
pub(crate) fn image_digests(store: &Store, manifest: &str, out: &mut HashSet<String>) {
    out.insert(manifest.to_string());
    match memobuild_oci::image::read_image(store, manifest) {
        Ok(image) => {
            out.insert(image.config_digest);
            out.extend(image.layers.into_iter().map(|l| l.digest));
        }
        Err(e) => tracing::debug!(manifest, error = %e, "image not readable for GC roots"),
    }
}

/// Blobs of named images.
fn image_roots(store: &Store) -> Result<(HashSet<String>, u64), StoreError> {
    let mut roots = HashSet::new();
    let images = store.images()?;
    for (_, record) in &images {
        image_digests(store, &record.manifest_digest, &mut roots);
    }
    Ok((roots, images.len() as u64))
}

/// Blobs of every project's remembered builds (their manifests, configs,
/// layers), of the projects whose owner (the uid the project reads as, `None`
/// for root's) `of_owner` accepts.
fn project_roots(
    store: &Store,
    of_owner: impl Fn(Option<u32>) -> bool,
) -> Result<HashSet<String>, StoreError> {
    let mut roots = HashSet::new();
    for (_, raw) in store.projects()? {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&raw) else {
            continue;
        };
        let owner = value["key"]["read_as"]["uid"]
            .as_u64()
            .and_then(|uid| u32::try_from(uid).ok());
        if !of_owner(owner) {
            continue;
        }
        for build in ["last", "previous"] {
            if let Some(m) = value[build]["manifest_digest"].as_str() {
                image_digests(store, m, &mut roots);
            }
        }
    }
    Ok(roots)
}

/// Bytes on disk below `dir` as `du -sb` counts them: the apparent size of
/// every entry (files, directories, symlinks), a file with several names
/// once. Entries that vanish or cannot be read meanwhile are skipped.
pub(crate) fn dir_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = HashSet::new();
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.metadata().ok())
        .filter(|meta| meta.is_dir() || meta.nlink() < 2 || seen.insert((meta.dev(), meta.ino())))
        .map(|meta| meta.len())
        .sum()
}

/// The private containerd's directory under the data dir.
pub(crate) fn containerd_dir(store: &Store) -> std::path::PathBuf {
    store.root().join("containerd")
}

/// What the blobs are used for, and what the data dir holds on disk.
pub(crate) fn usage(store: &Store) -> Result<Usage, StoreError> {
    let (images, image_count) = image_roots(store)?;
    let mut cache = project_roots(store, |_| true)?;
    let steps = store.steps()?;
    cache.extend(
        steps
            .iter()
            .filter_map(|(_, r)| r.layer.as_ref().map(|l| l.digest.clone())),
    );
    let mut u = Usage {
        cache_entries: steps.len() as u64,
        images: image_count,
        disk_bytes: dir_bytes(store.root()),
        containerd_bytes: dir_bytes(&containerd_dir(store)),
        ..Usage::default()
    };
    for blob in store.blobs.list()? {
        u.total_bytes += blob.size;
        u.blobs += 1;
        let (bytes, count) = if images.contains(&blob.digest) {
            (&mut u.image_bytes, &mut u.image_blobs)
        } else if cache.contains(&blob.digest) {
            (&mut u.cache_bytes, &mut u.cache_blobs)
        } else {
            (&mut u.unreferenced_bytes, &mut u.unreferenced_blobs)
        };
        *bytes += blob.size;
        *count += 1;
    }
    Ok(u)
}

/// Removes cache entries (least recently used first) and unreferenced blobs.
/// Blocking: call from a blocking thread.
pub(crate) fn prune(store: &Store, opts: &PruneOptions) -> Result<PruneReport, StoreError> {
    store.flush()?;
    // Held throughout: no build can look a step up (and pin it) meanwhile.
    let pins = store.pins();
    let fence = pins.fence(SystemTime::now());
    let (mut protected, _) = image_roots(store)?;
    match (opts.all, opts.owner) {
        (false, _) => protected.extend(project_roots(store, |_| true)?),
        // A user's --all: other users' projects keep theirs.
        (true, Some(uid)) => protected.extend(project_roots(store, |o| o != Some(uid))?),
        (true, None) => {}
    }
    protected.extend(pins.digests(SystemTime::now()));
    let pinned_keys = pins.keys();
    let blobs = store.blobs.list()?;
    let is_new = |modified: SystemTime| modified >= fence;
    let steps = store.steps()?;
    let last_used = store.last_used()?;
    // How many remaining records name each blob.
    let mut refs: HashMap<&str, u32> = HashMap::new();
    for (_, r) in &steps {
        if let Some(l) = &r.layer {
            *refs.entry(l.digest.as_str()).or_default() += 1;
        }
    }
    let modified: HashMap<&str, SystemTime> = blobs
        .iter()
        .map(|b| (b.digest.as_str(), b.modified))
        .collect();
    let freeable = |digest: &str| {
        !protected.contains(digest) && modified.get(digest).is_some_and(|m| !is_new(*m))
    };
    let size_of: HashMap<&str, u64> = blobs.iter().map(|b| (b.digest.as_str(), b.size)).collect();
    let total: u64 = blobs.iter().map(|b| b.size).sum();
    // Already free: blobs no record names (and not protected, not new).
    let mut projected = total
        - blobs
            .iter()
            .filter(|b| !refs.contains_key(b.digest.as_str()) && freeable(&b.digest))
            .map(|b| b.size)
            .sum::<u64>();
    let mut candidates: Vec<&(String, memobuild_store::StepRecord)> = steps
        .iter()
        .filter(|(k, r)| {
            !pinned_keys.contains(k)
                && opts.owner.is_none_or(|uid| r.owner == Some(uid))
                && match &r.layer {
                    Some(l) => opts.all || !protected.contains(&l.digest),
                    // Config-only entries use no disk: only --all drops them.
                    None => opts.all,
                }
        })
        .collect();
    if let Some(secs) = opts.unused_for_secs {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let cutoff = now.saturating_sub(secs as i64);
        candidates.retain(|(k, r)| last_used.get(k).copied().unwrap_or(r.created_at) <= cutoff);
    }
    // Least recently used first; never-noted entries by when they were made.
    candidates.sort_by_key(|(k, r)| last_used.get(k).copied().unwrap_or(r.created_at));
    let mut drop_keys = Vec::new();
    for (key, record) in candidates {
        if opts.keep_bytes.is_some_and(|keep| projected <= keep) {
            break;
        }
        drop_keys.push(key.clone());
        if let Some(l) = &record.layer {
            let n = refs.entry(l.digest.as_str()).or_default();
            *n = n.saturating_sub(1);
            if *n == 0 && freeable(&l.digest) {
                projected -= size_of.get(l.digest.as_str()).copied().unwrap_or(0);
            }
        }
    }
    store.remove_steps(&drop_keys)?;
    let mut report = PruneReport {
        records_removed: drop_keys.len() as u64,
        ..PruneReport::default()
    };
    for blob in &blobs {
        let referenced = refs.get(blob.digest.as_str()).is_some_and(|n| *n > 0);
        if referenced || !freeable(&blob.digest) {
            continue;
        }
        store.blobs.remove(&blob.digest)?;
        report.blobs_removed += 1;
        report.bytes_freed += blob.size;
    }
    drop(pins);
    report.bytes_after = total - report.bytes_freed;
    if report.records_removed + report.blobs_removed > 0 {
        tracing::info!(
            records = report.records_removed,
            blobs = report.blobs_removed,
            freed = report.bytes_freed,
            "garbage collection"
        );
    }
    Ok(report)
}

/// Temporary entries in `downloads/` younger than this are a download or
/// clone in progress (a dirty check's, which no pin covers) and stay.
const DOWNLOAD_TEMP_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes what `ADD https://...` and `ADD REPO.git` left in `DATA/downloads`
/// (downloads by SHA-256, checkouts `git-COMMIT...`): a cache a later build
/// fills again from the network. Only while no build runs (the pins' lock is
/// held throughout, so none starts meanwhile): a running build may have
/// planned with a download its COPY has yet to read. With `unused_for_secs`,
/// only entries not used within it (a reuse sets an entry's mtime). Returns
/// (entries removed, bytes freed); `None` when a build runs. Blocking.
pub(crate) fn prune_downloads(store: &Store, unused_for_secs: Option<u64>) -> Option<(u64, u64)> {
    let pins = store.pins();
    if pins.running_builds() > 0 {
        return None;
    }
    let dir = store.root().join("downloads");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Some((0, 0));
    };
    let now = SystemTime::now();
    let older_than = |modified: SystemTime, secs: u64| {
        now.duration_since(modified)
            .is_ok_and(|age| age.as_secs() >= secs)
    };
    let (mut removed, mut freed) = (0, 0);
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let modified = meta.modified().unwrap_or(now);
        let temp = entry.file_name().to_string_lossy().starts_with(".tmp");
        if temp && !older_than(modified, DOWNLOAD_TEMP_GRACE.as_secs()) {
            continue;
        }
        if unused_for_secs.is_some_and(|secs| !older_than(modified, secs)) {
            continue;
        }
        let bytes = dir_bytes(&path);
        let gone = if meta.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match gone {
            Ok(()) => {
                removed += 1;
                freed += bytes;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a download")
            }
        }
    }
    drop(pins);
    if removed > 0 {
        tracing::info!(entries = removed, freed, "garbage collection of downloads");
    }
    Some((removed, freed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use memobuild_store::Lookup;
    use memobuild_store::{LayerRecord, StepRecord};
    use std::time::Duration;

    fn step_with_blob(store: &Store, key: &str, content: &[u8]) -> String {
        let (digest, size) = store.blobs.put_bytes(content).unwrap();
        let record = StepRecord {
            layer: Some(LayerRecord {
                digest: digest.clone(),
                diff_id: digest.clone(),
                size,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            }),
            created_at: 1,
            owner: None,
            imported: false,
        };
        store.put_step(key, &record).unwrap();
        digest
    }

    fn all() -> PruneOptions {
        PruneOptions {
            all: true,
            ..PruneOptions::default()
        }
    }

    #[test]
    fn pinned_entries_and_blobs_written_during_a_build_survive() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = step_with_blob(&store, "k1", b"one");
        let used = step_with_blob(&store, "k2", b"two");
        // Both written well before the build starts (the fence has a 1 s margin).
        for d in [&old, &used] {
            let file = std::fs::File::options()
                .write(true)
                .open(store.blobs.path(d).unwrap())
                .unwrap();
            file.set_modified(SystemTime::now() - Duration::from_secs(10))
                .unwrap();
        }
        store.pin_build(7);
        assert!(matches!(store.use_step(7, "k2").unwrap(), Lookup::Hit(_)));
        // Written while build 7 runs; its record is not committed yet.
        let (fresh, _) = store.blobs.put_bytes(b"three").unwrap();
        let report = prune(&store, &all()).unwrap();
        assert_eq!(report.records_removed, 1);
        assert!(!store.blobs.contains(&old));
        assert!(store.blobs.contains(&used) && store.blobs.contains(&fresh));
        assert!(matches!(store.lookup_step("k2").unwrap(), Lookup::Hit(_)));
        store.unpin_build(7);
        prune(&store, &all()).unwrap();
        assert!(!store.blobs.contains(&used) && !store.blobs.contains(&fresh));
        assert!(store.steps().unwrap().is_empty());
    }

    #[test]
    fn a_users_prune_drops_only_that_users_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mine = step_with_blob(&store, "mine", b"one");
        let theirs = step_with_blob(&store, "theirs", b"two");
        let old = step_with_blob(&store, "old", b"three");
        for (key, owner) in [("mine", Some(1001)), ("theirs", Some(1002)), ("old", None)] {
            let (_, mut record) = store
                .steps()
                .unwrap()
                .into_iter()
                .find(|(k, _)| k == key)
                .unwrap();
            record.owner = owner;
            store.put_step(key, &record).unwrap();
        }
        for d in [&mine, &theirs, &old] {
            let file = std::fs::File::options()
                .write(true)
                .open(store.blobs.path(d).unwrap())
                .unwrap();
            file.set_modified(SystemTime::now() - Duration::from_secs(10))
                .unwrap();
        }
        let as_1001 = PruneOptions {
            owner: Some(1001),
            ..all()
        };
        let report = prune(&store, &as_1001).unwrap();
        assert_eq!(report.records_removed, 1);
        assert!(!store.blobs.contains(&mine));
        assert!(store.blobs.contains(&theirs) && store.blobs.contains(&old));
        let keys: Vec<String> = store.steps().unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"theirs".to_string()) && keys.contains(&"old".to_string()));
        // An admin's prune (no owner) drops the rest.
        assert_eq!(prune(&store, &all()).unwrap().records_removed, 2);
    }

    #[test]
    fn keep_storage_goes_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = step_with_blob(&store, "a", &[1; 100]);
        let b = step_with_blob(&store, "b", &[2; 100]);
        let c = step_with_blob(&store, "c", &[3; 100]);
        for (key, at) in [("a", 30), ("b", 10), ("c", 20)] {
            store.note_used_at(key, at);
        }
        let opts = PruneOptions {
            all: true,
            keep_bytes: Some(150),
            ..PruneOptions::default()
        };
        let report = prune(&store, &opts).unwrap();
        assert_eq!(report.records_removed, 2);
        assert_eq!(report.bytes_after, 100);
        assert!(store.blobs.contains(&a) && !store.blobs.contains(&b) && !store.blobs.contains(&c));
    }

    #[test]
    fn until_drops_only_what_was_not_used_recently() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let recent = step_with_blob(&store, "recent", &[1; 100]);
        let old = step_with_blob(&store, "old", &[2; 100]);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        store.note_used_at("recent", now - 60);
        store.note_used_at("old", now - 2 * 86_400);
        let opts = PruneOptions {
            all: true,
            unused_for_secs: Some(86_400),
            ..PruneOptions::default()
        };
        let report = prune(&store, &opts).unwrap();
        assert_eq!(report.records_removed, 1);
        assert!(store.blobs.contains(&recent) && !store.blobs.contains(&old));
    }

    #[test]
    fn a_corrupt_blob_is_dropped_with_every_entry_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = step_with_blob(&store, "k1", b"layer bytes");
        let (_, size) = store.blobs.put_bytes(b"other").unwrap();
        assert!(size > 0);
        std::fs::write(store.blobs.path(&digest).unwrap(), b"layer bytez").unwrap();
        match store.lookup_step("k1").unwrap() {
            Lookup::Corrupt { digest: d, .. } => assert_eq!(d, digest),
            other => panic!("{other:?}"),
        }
        assert!(!store.blobs.contains(&digest));
        assert_eq!(store.lookup_step("k1").unwrap(), Lookup::Miss);
        assert!(crate::verify::verify(&store).unwrap().problems.is_empty());
    }
}
