//! Keeping trees current: one notify (inotify) watcher for the whole daemon,
//! one [`Tree`] per watched root (a context inside an already watched root uses
//! that root's tree), a debounced background pass that re-stats only the paths
//! events named, and a barrier so a build never reads a stale tree.
//!
//! The barrier (as watchman's cookies): write a cookie file into the root and
//! wait until its event comes back through the watcher. inotify delivers events
//! in order, so every change made before the cookie has then been applied.
//!
//! Fallbacks, each logged and shown in `status`: on an event queue overflow
//! (notify's Rescan flag) the tree is rescanned completely once; when a watch
//! cannot be added (inotify watch limit, ENOSPC) or the barrier times out, the
//! tree is rescanned completely at every sync ("polling").

use super::tree::{Tree, COOKIE_PREFIX};
use notify::{RecursiveMode, Watcher as _};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// How long the background pass waits for more events before applying them.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// How long a barrier waits for its cookie before falling back to a rescan.
const COOKIE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// Events keep the tree current.
    Watching,
    /// Watching, but a full rescan is due (queue overflow); the reason says why.
    RescanPending(String),
    /// No usable watch: every sync rescans; the reason says why.
    Polling(String),
}

/// A change to a tree, for whoever tracks what is dirty.
#[derive(Debug, Clone)]
pub struct Change {
    pub root: PathBuf,
    pub generation: u64,
    /// Paths relative to the tree root.
    pub paths: Vec<String>,
}

struct TreeState {
    tree: Tree,
    mode: Mode,
    generation: u64,
    pending: BTreeSet<String>,
    rescans: u64,
}

/// Health numbers for `status`.
#[derive(Debug, Clone, Default)]
pub struct Health {
    pub trees: Vec<TreeHealth>,
    pub events: u64,
}

#[derive(Debug, Clone)]
pub struct TreeHealth {
    pub root: PathBuf,
    pub mode: Mode,
    pub entries: usize,
    pub generation: u64,
    pub rescans: u64,
}

pub struct Watcher {
    trees: Mutex<HashMap<PathBuf, TreeState>>,
    notify: Mutex<Option<notify::RecommendedWatcher>>,
    cookies: Mutex<HashMap<PathBuf, oneshot::Sender<()>>>,
    changes: broadcast::Sender<Change>,
    cookie_seq: AtomicU64,
    events: AtomicU64,
}

type Msg = notify::Result<notify::Event>;

fn lock<T>(m: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    m.lock()
}

impl Watcher {
    /// Creates the watcher and its background pass (needs a tokio runtime).
    pub fn start() -> Arc<Watcher> {
        let (tx, rx) = mpsc::unbounded_channel();
        let notify = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        });
        let notify = match notify {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a file watcher; every build will rescan its context");
                None
            }
        };
        let (changes, _) = broadcast::channel(1024);
        let watcher = Arc::new(Watcher {
            trees: Mutex::new(HashMap::new()),
            notify: Mutex::new(notify),
            cookies: Mutex::new(HashMap::new()),
            changes,
            cookie_seq: AtomicU64::new(0),
            events: AtomicU64::new(0),
        });
        tokio::spawn(background(Arc::downgrade(&watcher), rx));
        watcher
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// The watched root covering `path`, if any.
    pub(crate) fn root_of(&self, path: &Path) -> Option<PathBuf> {
        lock(&self.trees)
            .keys()
            .filter(|root| path.starts_with(root))
            .max_by_key(|root| root.as_os_str().len())
            .cloned()
    }

    /// Starts watching `root` (unless a watched tree already covers it) and
    /// returns the root of the tree that covers it.
    pub async fn ensure(&self, root: &Path) -> std::io::Result<PathBuf> {
        if let Some(existing) = self.root_of(root) {
            return Ok(existing);
        }
        let mode = self.add_watch(root);
        let scanned = {
            let root = root.to_path_buf();
            tokio::task::spawn_blocking(move || Tree::scan(&root))
                .await
                .map_err(std::io::Error::other)??
        };
        let mut trees = lock(&self.trees);
        // Trees below the new root are now covered by it. Their directories'
        // kernel watches are the new root's too (inotify keeps one watch per
        // directory): unwatching the inner root would blind the outer one.
        trees.retain(|r, _| !r.starts_with(root));
        tracing::info!(root = %root.display(), entries = scanned.len(), ?mode, "watching");
        trees.insert(
            root.to_path_buf(),
            TreeState {
                tree: scanned,
                mode,
                generation: 1,
                pending: BTreeSet::new(),
                rescans: 0,
            },
        );
        Ok(root.to_path_buf())
    }

    fn add_watch(&self, root: &Path) -> Mode {
        let mut guard = lock(&self.notify);
        let Some(w) = guard.as_mut() else {
            return Mode::Polling("no file watcher could be created".into());
        };
        match w.watch(root, RecursiveMode::Recursive) {
            Ok(()) => Mode::Watching,
            Err(e) => {
                let reason = match &e.kind {
                    notify::ErrorKind::MaxFilesWatch => {
                        "inotify watch limit reached (raise fs.inotify.max_user_watches)"
                            .to_string()
                    }
                    _ => format!("cannot watch: {e}"),
                };
                tracing::warn!(root = %root.display(), %reason, "falling back to a full rescan at every build");
                let _ = w.unwatch(root);
                Mode::Polling(reason)
            }
        }
    }

    /// Stops watching a root (when no project uses it any more).
    pub fn forget(&self, root: &Path) {
        if lock(&self.trees).remove(root).is_some() {
            if let Some(w) = lock(&self.notify).as_mut() {
                let _ = w.unwatch(root);
            }
        }
    }

    /// Makes the tree at `root` reflect every change made before this call and
    /// returns it (a cheap snapshot) with its generation.
    pub async fn sync(&self, root: &Path) -> std::io::Result<(Tree, u64)> {
        let mode = lock(&self.trees).get(root).map(|t| t.mode.clone());
        match mode {
            None => Err(std::io::Error::other(format!(
                "{} is not watched",
                root.display()
            ))),
            Some(Mode::Watching) => {
                if let Err(reason) = self.cookie_barrier(root).await {
                    // The watch may be lost (root replaced, moved, unmounted):
                    // rescan now, and watch again for the next build.
                    tracing::warn!(root = %root.display(), %reason, "barrier failed; rescanning and re-watching");
                    self.rescan(root, &reason).await?;
                    if let Some(w) = lock(&self.notify).as_mut() {
                        let _ = w.unwatch(root);
                    }
                    let mode = self.add_watch(root);
                    if let Some(t) = lock(&self.trees).get_mut(root) {
                        t.mode = mode;
                    }
                }
                self.tree(root)
            }
            Some(Mode::RescanPending(reason)) => {
                self.rescan(root, &reason).await?;
                if let Some(t) = lock(&self.trees).get_mut(root) {
                    t.mode = Mode::Watching;
                }
                self.tree(root)
            }
            Some(Mode::Polling(reason)) => {
                self.rescan(root, &reason).await?;
                self.tree(root)
            }
        }
    }

    /// The tree at `root` as it is now, without a barrier.
    pub fn tree(&self, root: &Path) -> std::io::Result<(Tree, u64)> {
        lock(&self.trees)
            .get(root)
            .map(|t| (t.tree.clone(), t.generation))
            .ok_or_else(|| std::io::Error::other(format!("{} is not watched", root.display())))
    }

    async fn cookie_barrier(&self, root: &Path) -> Result<(), String> {
        let n = self.cookie_seq.fetch_add(1, Ordering::SeqCst);
        let cookie = root.join(format!("{COOKIE_PREFIX}{}-{n}", unguessable_token()));
        let (tx, rx) = oneshot::channel();
        lock(&self.cookies).insert(cookie.clone(), tx);
        let written = create_cookie(&cookie);
        if let Err(e) = written {
            lock(&self.cookies).remove(&cookie);
            return Err(format!(
                "cannot write barrier cookie {}: {e}",
                cookie.display()
            ));
        }
        let arrived = tokio::time::timeout(COOKIE_TIMEOUT, rx).await;
        let _ = std::fs::remove_file(&cookie);
        lock(&self.cookies).remove(&cookie);
        match arrived {
            Ok(Ok(())) => Ok(()),
            _ => Err(format!(
                "barrier cookie not seen within {}s",
                COOKIE_TIMEOUT.as_secs()
            )),
        }
    }

    /// Stats everything again and publishes what changed.
    async fn rescan(&self, root: &Path, reason: &str) -> std::io::Result<()> {
        let fresh = {
            let root = root.to_path_buf();
            tokio::task::spawn_blocking(move || Tree::scan(&root))
                .await
                .map_err(std::io::Error::other)??
        };
        let change = {
            let mut trees = lock(&self.trees);
            let Some(state) = trees.get_mut(root) else {
                return Ok(());
            };
            let paths = diff(&state.tree, &fresh);
            state.tree = fresh;
            state.pending.clear();
            state.rescans += 1;
            state.generation += u64::from(!paths.is_empty());
            tracing::info!(root = %root.display(), %reason, changed = paths.len(), "full rescan");
            Change {
                root: root.to_path_buf(),
                generation: state.generation,
                paths,
            }
        };
        if !change.paths.is_empty() {
            let _ = self.changes.send(change);
        }
        Ok(())
    }

    pub fn health(&self) -> Health {
        let trees = lock(&self.trees)
            .iter()
            .map(|(root, t)| TreeHealth {
                root: root.clone(),
                mode: t.mode.clone(),
                entries: t.tree.len(),
                generation: t.generation,
                rescans: t.rescans,
            })
            .collect();
        Health {
            trees,
            events: self.events.load(Ordering::Relaxed),
        }
    }

    pub fn generation(&self, root: &Path) -> u64 {
        lock(&self.trees)
            .get(root)
            .map(|t| t.generation)
            .unwrap_or(0)
    }

    /// Treats the next sync of every tree as after a queue overflow. Used when
    /// notify reports a Rescan, and by tests to force that path.
    pub(crate) fn overflowed(&self, why: &str) {
        for (root, t) in lock(&self.trees).iter_mut() {
            if t.mode == Mode::Watching {
                tracing::warn!(root = %root.display(), why, "watch events were lost; a full rescan is due");
                t.mode = Mode::RescanPending(why.to_string());
            }
        }
    }

    /// Routes one notify event to the trees (background pass).
    fn route(&self, event: notify::Event, arrived_cookies: &mut Vec<PathBuf>) {
        self.events.fetch_add(1, Ordering::Relaxed);
        // Reads (including our own during builds) change nothing.
        if matches!(event.kind, notify::EventKind::Access(_)) && !event.need_rescan() {
            return;
        }
        if event.need_rescan() {
            self.overflowed("the kernel's inotify queue overflowed (fs.inotify.max_queued_events)");
        }
        let mut trees = lock(&self.trees);
        for path in event.paths {
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(COOKIE_PREFIX))
            {
                arrived_cookies.push(path);
                continue;
            }
            let Some(root) = trees
                .keys()
                .filter(|r| path.starts_with(r))
                .max_by_key(|r| r.as_os_str().len())
                .cloned()
            else {
                continue;
            };
            if let (Some(t), Ok(rel)) = (trees.get_mut(&root), path.strip_prefix(&root)) {
                match rel.to_str() {
                    Some(rel) => t.pending.insert(rel.to_string()),
                    // A name that is not UTF-8: the directory above the first
                    // such component lists it again (tree::escape_name).
                    None => t.pending.insert(utf8_parent(rel)),
                };
            }
        }
    }

    /// Applies pending paths to their trees and publishes the changes.
    fn apply_pending(&self) {
        let mut changes = Vec::new();
        let mut failed = Vec::new();
        {
            // Refreshed in place: the map is only copied if a build still holds
            // a snapshot of it (Arc::make_mut), never for every batch of events.
            let mut trees = lock(&self.trees);
            for (root, state) in trees.iter_mut().filter(|(_, t)| !t.pending.is_empty()) {
                let pending = std::mem::take(&mut state.pending);
                let mut changed = Vec::new();
                for rel in &pending {
                    if let Err(e) = state.tree.refresh(rel, &mut changed) {
                        tracing::warn!(root = %root.display(), path = %rel, error = %e, "cannot re-stat; rescan due");
                        failed.push(format!("cannot re-stat {rel}: {e}"));
                    }
                }
                if changed.is_empty() {
                    continue;
                }
                state.generation += 1;
                changes.push(Change {
                    root: root.clone(),
                    generation: state.generation,
                    paths: changed,
                });
            }
        }
        for why in failed {
            self.overflowed(&why);
        }
        for change in changes {
            let _ = self.changes.send(change);
        }
    }
}

/// Paths whose entries differ between two scans of one root.
fn diff(old: &Tree, new: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in new.entries.iter() {
        match old.entries.get(k) {
            Some(o) if o == v => {}
            Some(o) if o.kind == super::FileKind::Dir && super::tree::same_dir(o, v) => {}
            _ => out.push(k.clone()),
        }
    }
    for k in old.entries.keys() {
        if !new.entries.contains_key(k) {
            out.push(k.clone());
        }
    }
    out
}

async fn background(watcher: std::sync::Weak<Watcher>, mut rx: mpsc::UnboundedReceiver<Msg>) {
    while let Some(first) = rx.recv().await {
        let Some(w) = watcher.upgrade() else { return };
        let mut cookies = Vec::new();
        let handle = |msg: Msg, cookies: &mut Vec<PathBuf>| match msg {
            Ok(event) => w.route(event, cookies),
            Err(e) => {
                tracing::warn!(error = %e, "file watcher error");
                w.overflowed(&format!("watcher error: {e}"));
            }
        };
        handle(first, &mut cookies);
        // Debounce: take whatever else arrives within a short quiet period,
        // unless a build is waiting on a cookie.
        let deadline = Instant::now() + DEBOUNCE * 4;
        while cookies.is_empty() && Instant::now() < deadline {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(msg)) => handle(msg, &mut cookies),
                _ => break,
            }
        }
        while let Ok(msg) = rx.try_recv() {
            handle(msg, &mut cookies);
        }
        let w2 = w.clone();
        let _ = tokio::task::spawn_blocking(move || w2.apply_pending()).await;
        for cookie in cookies {
            if let Some(tx) = lock(&w.cookies).remove(&cookie) {
                let _ = tx.send(());
            }
        }
    }
}

/// 128 random bits as hex: a cookie name a user of the watched tree cannot
/// predict, so they cannot plant anything at it beforehand.
fn unguessable_token() -> String {
    let mut bytes = [0u8; 16];
    // getrandom only fails where the kernel has no entropy source at all; the
    // O_EXCL create below still keeps a predictable name harmless then.
    let _ = getrandom::getrandom(&mut bytes);
    hex::encode(bytes)
}

/// Creates the cookie as a new, empty file. The daemon runs as root inside
/// trees users control: O_EXCL|O_NOFOLLOW means a planted symlink or file at
/// that name makes the barrier fail instead of making root write through it.
fn create_cookie(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map(drop)
}

/// The path of the directory holding the first component of `rel` whose
/// name is not UTF-8 (`""` for the root).
fn utf8_parent(rel: &std::path::Path) -> String {
    let mut parts = Vec::new();
    for part in rel.iter() {
        match part.to_str() {
            Some(p) => parts.push(p),
            None => break,
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(tree: &Tree) -> Vec<String> {
        tree.entries.keys().cloned().collect()
    }

    /// Events that never arrive (as after a queue overflow) leave the tree
    /// stale; notify's Rescan flag must make the next sync repair it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rescan_event_repairs_a_tree_that_missed_events() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::write(root.join("a"), "1").unwrap();
        let w = Watcher::start();
        w.ensure(&root).await.unwrap();
        // Lose events for real: stop watching, change things, then report the loss.
        if let Some(n) = lock(&w.notify).as_mut() {
            n.unwatch(&root).unwrap();
        }
        std::fs::write(root.join("b"), "2").unwrap();
        std::fs::remove_file(root.join("a")).unwrap();
        let (stale, _) = w.tree(&root).unwrap();
        assert_eq!(paths(&stale), vec!["".to_string(), "a".to_string()]);
        let rescan =
            notify::Event::new(notify::EventKind::Other).set_flag(notify::event::Flag::Rescan);
        w.route(rescan, &mut Vec::new());
        assert!(matches!(w.health().trees[0].mode, Mode::RescanPending(_)));
        let (fresh, _) = w.sync(&root).await.unwrap();
        assert_eq!(paths(&fresh), vec!["".to_string(), "b".to_string()]);
        let health = w.health();
        assert_eq!(health.trees[0].rescans, 1);
        assert_eq!(health.trees[0].mode, Mode::Watching);
    }

    /// A root watched first, then a root above it: the outer watch covers the
    /// inner directories, and the inner tree's removal must not take their
    /// kernel watches with it (it did: files made there were never seen,
    /// while the tree said it was watching).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_outer_root_keeps_seeing_the_inner_roots_files() {
        let dir = tempfile::tempdir().unwrap();
        let outer = dir.path().canonicalize().unwrap();
        let inner = outer.join("w").join("p1");
        std::fs::create_dir_all(inner.join("src")).unwrap();
        let w = Watcher::start();
        assert_eq!(w.ensure(&inner).await.unwrap(), inner);
        assert_eq!(w.ensure(&outer).await.unwrap(), outer);
        assert_eq!(
            w.ensure(&inner).await.unwrap(),
            outer,
            "the outer tree covers it"
        );
        std::fs::write(inner.join("new.txt"), "1").unwrap();
        std::fs::write(inner.join("src").join("deeper.txt"), "2").unwrap();
        let (tree, _) = w.sync(&outer).await.unwrap();
        for path in ["w/p1/new.txt", "w/p1/src/deeper.txt"] {
            assert!(tree.entries.contains_key(path), "{path} not seen");
        }
        let health = w.health();
        assert_eq!(health.trees.len(), 1);
        assert_eq!(health.trees[0].rescans, 0, "seen by events, not a rescan");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn barrier_makes_every_earlier_write_visible() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let w = Watcher::start();
        w.ensure(&root).await.unwrap();
        for i in 0..50 {
            let name = format!("f{i}");
            std::fs::write(root.join(&name), i.to_string()).unwrap();
            let (tree, _) = w.sync(&root).await.unwrap();
            assert!(
                tree.entries.contains_key(&name),
                "write {i} not visible after the barrier"
            );
        }
        assert_eq!(
            w.health().trees[0].rescans,
            0,
            "barriers must not fall back to rescans"
        );
    }

    /// The old cookie names were `<prefix><pid>-<n>`: a user who planted
    /// symlinks at them made root truncate any file. Planted links at every
    /// such name are now left alone, and the victim keeps its bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn barrier_never_writes_through_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ctx");
        std::fs::create_dir(&root).unwrap();
        let root = root.canonicalize().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        for n in 0..20 {
            let name = format!("{COOKIE_PREFIX}{}-{n}", std::process::id());
            std::os::unix::fs::symlink(&victim, root.join(name)).unwrap();
        }
        let w = Watcher::start();
        w.ensure(&root).await.unwrap();
        for _ in 0..5 {
            w.sync(&root).await.unwrap();
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }

    #[test]
    fn cookie_creation_refuses_an_existing_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let link = dir.path().join("cookie");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = create_cookie(&link).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_ne!(unguessable_token(), unguessable_token());
    }
}
