//! Eager builds (issue 13, item 6): a project that opted in (`memobuild-ctl
//! eager on`) is rebuilt in the background after a save, so that the next
//! `build` finds its image ready (the fast path). An eager build is cancelled
//! by the project's next save (another one starts once that save is
//! planned), and every eager build yields to an explicit build: it is
//! cancelled when one starts, so it never holds a slot a user waits for.
//! Projects nobody opted in never build by themselves.

use crate::Engine;
use memobuild_proto::{BuildId, ErrorKind, RpcError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Eager builds running, by project.
#[derive(Default)]
pub(crate) struct EagerBuilds {
    running: Mutex<HashMap<String, BuildId>>,
    /// Explicit builds started and not yet ended.
    explicit: AtomicUsize,
}

/// An explicit build, from its start to its end: no eager build starts
/// meanwhile, and when the last one ends the eager projects get theirs.
pub(crate) struct Explicit(Arc<Engine>);

impl Explicit {
    pub(crate) fn begin(engine: &Arc<Engine>) -> Explicit {
        engine.eager.explicit.fetch_add(1, Ordering::SeqCst);
        Explicit(engine.clone())
    }
}

impl Drop for Explicit {
    fn drop(&mut self) {
        if self.0.eager.explicit.fetch_sub(1, Ordering::SeqCst) == 1 {
            for project in self.0.projects.eager_projects() {
                self.0.maybe_eager(&project);
            }
        }
    }
}

impl Engine {
    /// Turns eager builds on or off for the projects `filter` names.
    pub async fn set_eager(
        self: &Arc<Self>,
        filter: &str,
        on: bool,
        caller: crate::Caller,
    ) -> Result<Vec<String>, RpcError> {
        if filter.is_empty() {
            return Err(
                RpcError::of(ErrorKind::InvalidInput, "eager needs a project")
                    .hint("pass a project id or context path (see `memobuild-ctl projects`)"),
            );
        }
        let ids = self.matching_for(filter, caller)?;
        for id in &ids {
            // Persisting the setting is a redb commit: off the async workers.
            let (engine, project) = (self.clone(), id.clone());
            tokio::task::spawn_blocking(move || {
                engine.projects.set_eager(&engine.store, &project, on)
            })
            .await
            .map_err(|e| RpcError::new(format!("internal error: {e}")))?;
            if on {
                self.maybe_eager(id);
            } else {
                self.eager_cancel(id);
            }
        }
        Ok(ids)
    }

    /// Starts an eager build of `project` if it opted in, is dirty, and no
    /// build of it runs.
    pub(crate) fn maybe_eager(self: &Arc<Self>, project: &str) {
        if self.is_shutting_down()
            || self.eager.explicit.load(Ordering::SeqCst) > 0
            || !self.projects.wants_eager_build(project)
        {
            return;
        }
        let Some(request) = self.projects.request(project) else {
            return;
        };
        let mut running = self.eager.running.lock();
        if running.get(project).is_some_and(|id| self.is_running(*id)) {
            return;
        }
        let id = self.start_eager(request);
        tracing::info!(build = id, project, "eager build started");
        running.insert(project.to_string(), id);
        // Nobody polls an eager build's events: keep its lease alive.
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let Some(e) = engine.upgrade() else { return };
                if !e.is_running(id) {
                    return;
                }
                e.flights.seen(id);
            }
        });
    }

    /// The project's files changed: its eager build is out of date.
    pub(crate) fn eager_cancel(&self, project: &str) {
        if let Some(id) = self.eager.running.lock().remove(project) {
            if self.is_running(id) {
                tracing::info!(build = id, project, "a save cancels the eager build");
                let _ = self.abort_build(id);
            }
        }
    }

    /// An explicit build starts: every eager build yields.
    pub(crate) fn eager_yield(&self) {
        let running: Vec<(String, BuildId)> = self.eager.running.lock().drain().collect();
        for (project, id) in running {
            if self.is_running(id) {
                tracing::info!(
                    build = id,
                    project,
                    "an explicit build starts: the eager build yields"
                );
                let _ = self.abort_build(id);
            }
        }
    }
}
