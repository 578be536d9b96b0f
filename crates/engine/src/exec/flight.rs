//! Single flight: identical build requests made while one is running share that
//! build (same id, same events, same result). Each request is a waiter; a
//! `cancel` from one waiter only leaves, and the build is cancelled when the
//! last waiter leaves. Waiters that vanish without cancelling (a killed client)
//! are caught by a lease: a build nobody has polled events of for
//! [`LEASE`] is cancelled.

use memobuild_proto::{BuildId, BuildRequest};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Clients long-poll every few seconds (`LONG_POLL`); this many seconds of
/// silence means every client is gone.
pub(crate) const LEASE: Duration = Duration::from_secs(30);

#[derive(Default)]
pub(crate) struct Flights {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_key: HashMap<String, BuildId>,
    builds: HashMap<BuildId, Flight>,
    /// Builds waiting for a slot -> their project id (for `status`).
    queued: HashMap<BuildId, String>,
}

struct Flight {
    key: String,
    waiters: u32,
    last_seen: Instant,
}

/// What identifies identical requests: every field, secrets included.
pub(crate) fn key_of(request: &BuildRequest) -> String {
    let bytes = serde_json::to_vec(request).unwrap_or_default();
    blake3::hash(&bytes).to_hex().to_string()
}

impl Flights {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Joins the running build for `key`, if any (one more waiter).
    pub(crate) fn join(&self, key: &str) -> Option<BuildId> {
        let mut inner = self.lock();
        let id = *inner.by_key.get(key)?;
        let flight = inner.builds.get_mut(&id)?;
        flight.waiters += 1;
        flight.last_seen = Instant::now();
        Some(id)
    }

    /// A new build with its first waiter.
    pub(crate) fn insert(&self, key: String, id: BuildId) {
        let mut inner = self.lock();
        inner.by_key.insert(key.clone(), id);
        inner.builds.insert(
            id,
            Flight {
                key,
                waiters: 1,
                last_seen: Instant::now(),
            },
        );
    }

    /// A client polled the build's events: its waiters are still there.
    pub(crate) fn seen(&self, id: BuildId) {
        if let Some(f) = self.lock().builds.get_mut(&id) {
            f.last_seen = Instant::now();
        }
    }

    /// A waiter leaves; true when it was the last one (cancel the build then).
    /// Unknown (finished) builds: true, cancelling them is harmless.
    pub(crate) fn leave(&self, id: BuildId) -> bool {
        let mut inner = self.lock();
        match inner.builds.get_mut(&id) {
            Some(f) => {
                f.waiters = f.waiters.saturating_sub(1);
                f.waiters == 0
            }
            None => true,
        }
    }

    /// The build ended: later identical requests start a new one.
    pub(crate) fn finish(&self, id: BuildId) {
        let mut inner = self.lock();
        if let Some(f) = inner.builds.remove(&id) {
            if inner.by_key.get(&f.key) == Some(&id) {
                inner.by_key.remove(&f.key);
            }
        }
    }

    /// The build waits in the queue (`Some(project)`) or no longer does.
    pub(crate) fn set_queued(&self, id: BuildId, project: Option<String>) {
        let mut inner = self.lock();
        match project {
            Some(p) => inner.queued.insert(id, p),
            None => inner.queued.remove(&id),
        };
    }

    /// Ids of projects with a build waiting in the queue.
    pub(crate) fn queued_projects(&self) -> std::collections::HashSet<String> {
        self.lock().queued.values().cloned().collect()
    }

    /// Builds nobody has polled within the lease.
    pub(crate) fn abandoned(&self) -> Vec<BuildId> {
        self.lock()
            .builds
            .iter()
            .filter(|(_, f)| f.last_seen.elapsed() > LEASE)
            .map(|(id, _)| *id)
            .collect()
    }
}
