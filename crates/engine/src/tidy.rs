//! Projects stay tidy (issue 13): every Dockerfile, target and build-arg
//! combination ever built is a project with a watched context, so those
//! nobody builds for `forget-projects-after` are forgotten, and beyond
//! `max-projects` the least recently used go first, with their watches.

use crate::Engine;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Default of `forget-projects-after`: a week.
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default of `max-projects`.
pub const DEFAULT_MAX_PROJECTS: usize = 200;

/// The limits, settable at run time (SIGHUP).
#[derive(Debug)]
pub(crate) struct ProjectLimits {
    /// Seconds; 0 = never forget for age.
    forget_after: AtomicU64,
    /// 0 = no cap.
    max: AtomicU64,
    /// Wakes [`tidy_loop`] when the limits change.
    changed: tokio::sync::Notify,
}

impl Default for ProjectLimits {
    fn default() -> Self {
        ProjectLimits {
            forget_after: AtomicU64::new(DEFAULT_FORGET_AFTER.as_secs()),
            max: AtomicU64::new(DEFAULT_MAX_PROJECTS as u64),
            changed: tokio::sync::Notify::new(),
        }
    }
}

impl ProjectLimits {
    fn get(&self) -> (Duration, usize) {
        (
            Duration::from_secs(self.forget_after.load(Ordering::SeqCst)),
            self.max.load(Ordering::SeqCst) as usize,
        )
    }
}

impl Engine {
    /// Sets `forget-projects-after` (zero: never) and `max-projects` (zero:
    /// no cap), and applies them at once.
    pub fn set_project_limits(&self, forget_after: Duration, max: usize) {
        let limits = self.project_limits();
        limits
            .forget_after
            .store(forget_after.as_secs(), Ordering::SeqCst);
        limits.max.store(max as u64, Ordering::SeqCst);
        limits.changed.notify_waiters();
        self.tidy_projects();
    }

    fn project_limits(&self) -> &ProjectLimits {
        &self.project_limits
    }

    /// Forgets the projects the limits leave out, and watches no project
    /// needs any more; returns their ids.
    pub(crate) fn tidy_projects(&self) -> Vec<String> {
        let (after, max) = self.project_limits().get();
        let ids = self.projects.stale(memobuild_store::now_secs(), after, max);
        if ids.is_empty() {
            return ids;
        }
        for root in self.projects.forget(&self.store, &ids) {
            self.watcher.forget(&root);
        }
        tracing::info!(projects = ?ids, "forgot projects unused for forget-projects-after or beyond max-projects");
        ids
    }
}

/// Applies the limits now and then: a quarter of `forget-projects-after`,
/// between a second and ten minutes.
pub(crate) async fn tidy_loop(engine: Weak<Engine>) {
    loop {
        let Some(e) = engine.upgrade() else { return };
        let limits = e.project_limits.clone();
        let changed = limits.changed.notified();
        let (after, _) = limits.get();
        // Forgetting deletes project records (redb commits): off the async workers.
        let _ = tokio::task::spawn_blocking(move || e.tidy_projects()).await;
        let tick = (after / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

/// Starts [`tidy_loop`].
pub(crate) fn spawn(engine: &Arc<Engine>) {
    tokio::spawn(tidy_loop(Arc::downgrade(engine)));
}
