//! Running a build: plan it, look every step up in the cache, execute only the
//! misses, store their results, assemble the image. Independent stages run
//! concurrently. Progress goes out as [`BuildEvent`]s that clients long-poll.

pub mod copy;
pub mod fsview;
pub mod users;

mod build;

use crate::context::HashCache;
use crate::store::Store;
use fsview::LayerCache;
use memobuild_shared::{BuildEvent, BuildId, BuildRequest, EventBatch, RpcError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long an `events` call waits for something new before returning empty.
const LONG_POLL: Duration = Duration::from_secs(3);

/// The shared machinery every build uses.
pub struct Engine {
    pub store: Arc<Store>,
    pub layers: LayerCache,
    pub hashes: HashCache,
    builds: Mutex<HashMap<BuildId, Arc<BuildLog>>>,
    next_id: AtomicU64,
}

/// A build's events so far; clients read it from any cursor.
#[derive(Default)]
pub struct BuildLog {
    events: Mutex<Vec<BuildEvent>>,
    finished: std::sync::atomic::AtomicBool,
    changed: tokio::sync::Notify,
}

impl BuildLog {
    pub fn push(&self, event: BuildEvent) {
        let terminal = matches!(
            event,
            BuildEvent::Finished { .. } | BuildEvent::Failed { .. }
        );
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
        if terminal {
            self.finished.store(true, Ordering::SeqCst);
        }
        self.changed.notify_waiters();
    }

    fn batch(&self, cursor: u64) -> EventBatch {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let start = (cursor as usize).min(events.len());
        EventBatch {
            events: events[start..].to_vec(),
            next_cursor: events.len() as u64,
            finished: self.finished.load(Ordering::SeqCst),
        }
    }
}

impl Engine {
    pub fn new(store: Arc<Store>) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            layers: LayerCache::default(),
            hashes: HashCache::new(),
            builds: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
        })
    }

    /// Starts a build in the background and returns its id.
    pub fn start(self: &Arc<Self>, request: BuildRequest) -> BuildId {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let log = Arc::new(BuildLog::default());
        self.builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, log.clone());
        let engine = self.clone();
        let span = tracing::info_span!("build", build = id, context = %request.context);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let started = std::time::Instant::now();
                match build::run(&engine, id, &request, &log).await {
                    Ok(done) => {
                        tracing::info!(digest = %done.manifest_digest, millis = started.elapsed().as_millis() as u64, "build finished");
                        log.push(BuildEvent::Finished {
                            manifest_digest: done.manifest_digest,
                            config_digest: done.config_digest,
                            tags: done.tags,
                            millis: started.elapsed().as_millis() as u64,
                        });
                    }
                    Err(error) => {
                        tracing::warn!(error = %error.message, "build failed");
                        log.push(BuildEvent::Failed { error });
                    }
                }
            },
            span,
        ));
        id
    }

    /// Events of build `id` from `cursor`, waiting briefly for new ones.
    pub async fn events(&self, id: BuildId, cursor: u64) -> Result<EventBatch, RpcError> {
        let log = self
            .builds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or_else(|| {
                RpcError::new(format!(
                    "no build with id {id} (the daemon may have restarted)"
                ))
            })?;
        let notified = log.changed.notified();
        let batch = log.batch(cursor);
        if !batch.events.is_empty() || batch.finished {
            return Ok(batch);
        }
        let _ = tokio::time::timeout(LONG_POLL, notified).await;
        Ok(log.batch(cursor))
    }
}
