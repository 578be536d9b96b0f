//! Pins: what running builds use, so garbage collection (the engine's `gc`)
//! never removes it: the step records a build looked up (and their layers),
//! and every blob written or touched since the oldest running build started
//! (a blob is written before the record naming it commits; the time fence
//! covers that gap without locking the writers).

use super::{Lookup, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

/// How long blobs of an image upload are protected before `import_image` names them.
const UPLOAD_GRACE: Duration = Duration::from_secs(600);

/// What running builds use.
#[derive(Debug, Default)]
pub struct Pins {
    builds: HashMap<u64, BuildPins>,
    /// Until when uploaded blobs are protected (the last upload plus a grace period).
    uploads_since: Option<SystemTime>,
    /// Blobs kept until a deadline: finished builds' images while their
    /// clients fetch them, images being exported.
    timed: Vec<(SystemTime, HashSet<String>)>,
}

#[derive(Debug)]
struct BuildPins {
    started: SystemTime,
    keys: HashSet<String>,
    digests: HashSet<String>,
}

impl Pins {
    /// Blobs modified at or after this instant may be in flight (written,
    /// record not committed yet), so GC keeps them.
    pub fn fence(&self, now: SystemTime) -> SystemTime {
        let mut starts: Vec<SystemTime> = self.builds.values().map(|b| b.started).collect();
        if let Some(t) = self.uploads_since {
            if now.duration_since(t).unwrap_or_default() < UPLOAD_GRACE {
                starts.push(t);
            }
        }
        match starts.into_iter().min() {
            // mtimes have coarse granularity on some filesystems.
            Some(oldest) => oldest - Duration::from_secs(1),
            // Nothing in flight: every blob is settled.
            None => now + Duration::from_secs(1),
        }
    }
}

impl Pins {
    /// Every blob a running build or a timed pin keeps.
    pub fn digests(&self, now: SystemTime) -> HashSet<String> {
        let timed = self.timed.iter().filter(|(until, _)| *until > now);
        timed
            .flat_map(|(_, digests)| digests.iter())
            .chain(self.builds.values().flat_map(|b| b.digests.iter()))
            .cloned()
            .collect()
    }

    /// How many builds hold pins (running builds), for one who holds the lock.
    pub fn running_builds(&self) -> usize {
        self.builds.len()
    }

    /// Every step key a running build looked up.
    pub fn keys(&self) -> HashSet<String> {
        let keys = self.builds.values().flat_map(|b| b.keys.iter());
        keys.cloned().collect()
    }
}

impl Store {
    /// What running builds use; held, it keeps builds from pinning more (GC
    /// holds it throughout a prune).
    pub fn pins(&self) -> parking_lot::MutexGuard<'_, Pins> {
        self.pins.lock()
    }

    /// A build starts: from now on what it writes or looks up is kept.
    pub fn pin_build(&self, build: u64) {
        self.pins().builds.insert(
            build,
            BuildPins {
                started: SystemTime::now(),
                keys: HashSet::new(),
                digests: HashSet::new(),
            },
        );
    }

    pub fn unpin_build(&self, build: u64) {
        self.pins().builds.remove(&build);
    }

    /// Blobs of an upload are kept until an import can name them.
    pub fn pin_uploads(&self) {
        let now = SystemTime::now();
        let mut pins = self.pins();
        pins.uploads_since = Some(pins.uploads_since.map_or(now, |t| {
            if now.duration_since(t).unwrap_or_default() < UPLOAD_GRACE {
                t
            } else {
                now
            }
        }));
    }

    /// Keeps `digests` (an image's blobs: a result its clients are about to
    /// fetch, or an export in progress) for `grace`.
    pub fn pin_for(&self, digests: HashSet<String>, grace: Duration) {
        let until = SystemTime::now() + grace;
        let mut pins = self.pins();
        pins.timed.retain(|(t, _)| *t > SystemTime::now());
        pins.timed.push((until, digests));
    }

    /// Pins digests a build relies on without a step record (base image layers).
    pub fn pin_digests<'a>(&self, build: u64, digests: impl IntoIterator<Item = &'a String>) {
        if let Some(b) = self.pins().builds.get_mut(&build) {
            b.digests.extend(digests.into_iter().cloned());
        }
    }

    /// Looks a step up for a running build and pins what it found, atomically
    /// with respect to garbage collection.
    pub fn use_step(&self, build: u64, key: &str) -> Result<Lookup, StoreError> {
        let mut pins = self.pins();
        let found = self.lookup_step(key)?;
        if let (Lookup::Hit(record), Some(b)) = (&found, pins.builds.get_mut(&build)) {
            b.keys.insert(key.to_string());
            if let Some(layer) = &record.layer {
                b.digests.insert(layer.digest.clone());
            }
        }
        if matches!(found, Lookup::Hit(_)) {
            self.note_used(key);
        }
        Ok(found)
    }

    /// Records a step a running build executed, and pins it.
    pub fn record_step(
        &self,
        build: u64,
        key: &str,
        record: &super::StepRecord,
    ) -> Result<(), StoreError> {
        // Under the pin lock: GC cannot drop the new entry before it is pinned.
        let mut pins = self.pins();
        self.put_step(key, record)?;
        if let Some(b) = pins.builds.get_mut(&build) {
            b.keys.insert(key.to_string());
            if let Some(layer) = &record.layer {
                b.digests.insert(layer.digest.clone());
            }
        }
        drop(pins);
        self.note_used(key);
        Ok(())
    }

    /// How many builds hold pins (running builds).
    pub fn pinned_builds(&self) -> usize {
        self.pins().builds.len()
    }
}
