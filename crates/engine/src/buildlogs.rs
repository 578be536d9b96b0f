//! Per-build logs on disk: every event of a build (steps, their status and
//! time, RUN output, the result or error), appended as it happens to
//! `LOG_DIR/builds/ID.jsonl`, so `memobuild-ctl logs` works after the build's
//! events left memory and after the daemon restarted.
//!
//! One writer thread owns the files: a build's task only sends events down a
//! channel, never touches the disk. Bounded: the newest `keep` builds stay, and
//! a build's RUN output stops being recorded past [`MAX_FILE_BYTES`].
//!
//! File format: a header line ([`Header`]), then one [`Line`] per event, JSON.

use memobuild_proto::{BuildEvent, BuildId, BuildLogReport, BuildLogState, LogEntry};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::Arc;

/// Output lines stop being recorded once a build's file reaches this size
/// (step events and the result are always recorded).
pub(crate) const MAX_FILE_BYTES: u64 = 4 << 20;

const SUFFIX: &str = ".jsonl";

#[derive(Debug, thiserror::Error)]
pub enum BuildLogsError {
    #[error("build log directory {}: {source}\nhint: pass a writable directory with --log-dir", dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("no log of build {0}")]
    Missing(BuildId),
    #[error("reading the log of build {build}: {source}")]
    Read {
        build: BuildId,
        source: std::io::Error,
    },
}

/// What a build was, the first line of its file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Header {
    pub build: BuildId,
    pub project: String,
    pub context: String,
    pub dockerfile: String,
    pub target: String,
    pub started_at_ms: i64,
    /// The uid whose build it is; `None` for root's background builds and
    /// logs written before owners were recorded (admins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
}

/// One event line.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    at_ms: i64,
    event: BuildEvent,
}

enum Msg {
    Begin(Header),
    Event { build: BuildId, line: Line },
}

/// The directory of per-build logs.
pub struct BuildLogs {
    dir: PathBuf,
    tx: Mutex<Sender<Msg>>,
    /// Headers of the builds on disk, by id: answers `last` and "latest build
    /// of a project" without opening files.
    index: Arc<Mutex<BTreeMap<BuildId, Header>>>,
}

/// Where one build's events go.
pub(crate) struct Journal {
    build: BuildId,
    tx: Sender<Msg>,
}

impl Journal {
    /// Queues the event for the build's file (never blocks on the disk).
    pub(crate) fn record(&self, event: &BuildEvent) {
        let line = Line {
            at_ms: now_ms(),
            event: event.clone(),
        };
        // The writer only stops with the process.
        let _ = self.tx.send(Msg::Event {
            build: self.build,
            line,
        });
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(m: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    m.lock()
}

impl BuildLogs {
    /// Opens (creates) `dir`, indexes the logs in it and starts the writer
    /// thread. Blocking: call it off the async workers.
    pub fn open(dir: &Path, keep: usize) -> Result<Arc<BuildLogs>, BuildLogsError> {
        let dir_error = |source| BuildLogsError::Dir {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_error)?;
        let mut index = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(dir_error)?.flatten() {
            if let Some(header) = read_header(&entry.path()) {
                index.insert(header.build, header);
            }
        }
        let index = Arc::new(Mutex::new(index));
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            index: index.clone(),
            open: HashMap::new(),
        };
        std::thread::Builder::new()
            .name("build-logs".into())
            .spawn(move || writer.run(rx))
            .map_err(dir_error)?;
        Ok(Arc::new(BuildLogs {
            dir: dir.to_path_buf(),
            tx: Mutex::new(tx),
            index,
        }))
    }

    /// The highest build id with a log: new ids must start above it, so an id
    /// never names two builds' logs.
    pub(crate) fn last_id(&self) -> BuildId {
        lock(&self.index).keys().next_back().copied().unwrap_or(0)
    }

    /// Starts the log of a build.
    pub(crate) fn begin(&self, header: Header) -> Journal {
        let build = header.build;
        lock(&self.index).insert(build, header.clone());
        let tx = lock(&self.tx).clone();
        let _ = tx.send(Msg::Begin(header));
        Journal { build, tx }
    }

    /// The newest build, of any project.
    pub fn latest(&self) -> Option<BuildId> {
        self.latest_where(|_| true)
    }

    /// The newest build whose header matches.
    pub(crate) fn latest_where(&self, matches: impl Fn(&Header) -> bool) -> Option<BuildId> {
        lock(&self.index)
            .values()
            .rev()
            .find(|h| matches(h))
            .map(|h| h.build)
    }

    /// The header of build `build`'s log, if the daemon has it.
    pub fn header(&self, build: BuildId) -> Option<Header> {
        lock(&self.index).get(&build).cloned()
    }

    /// Reads a build's log. `running` says whether the build is still going;
    /// a log without a result of a build that is not running was cut short by
    /// the daemon stopping. Blocking.
    pub fn read(&self, build: BuildId, running: bool) -> Result<BuildLogReport, BuildLogsError> {
        let path = file_of(&self.dir, build);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BuildLogsError::Missing(build))
            }
            Err(source) => return Err(BuildLogsError::Read { build, source }),
        };
        let mut lines = std::io::BufReader::new(file).lines();
        let header: Header = lines
            .next()
            .and_then(|l| l.ok())
            .and_then(|l| serde_json::from_str(&l).ok())
            .ok_or(BuildLogsError::Missing(build))?;
        // A line cut by a crash is skipped; the rest is still worth showing.
        let entries: Vec<LogEntry> = lines
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Line>(&l).ok())
            .map(|l| LogEntry {
                at_ms: l.at_ms,
                event: l.event,
            })
            .collect();
        let ended = entries.iter().any(|e| is_terminal(&e.event));
        let state = match (ended, running) {
            (true, _) => BuildLogState::Finished,
            (false, true) => BuildLogState::Running,
            (false, false) => BuildLogState::Interrupted,
        };
        Ok(BuildLogReport {
            build,
            project: header.project,
            context: header.context,
            dockerfile: header.dockerfile,
            target: header.target,
            started_at_ms: header.started_at_ms,
            state,
            entries,
        })
    }
}

fn is_terminal(event: &BuildEvent) -> bool {
    matches!(
        event,
        BuildEvent::Finished { .. } | BuildEvent::Failed { .. }
    )
}

fn file_of(dir: &Path, build: BuildId) -> PathBuf {
    dir.join(format!("{build}{SUFFIX}"))
}

fn read_header(path: &Path) -> Option<Header> {
    let name = path.file_name()?.to_str()?;
    let id: BuildId = name.strip_suffix(SUFFIX)?.parse().ok()?;
    let mut first = String::new();
    std::io::BufReader::new(std::fs::File::open(path).ok()?)
        .read_line(&mut first)
        .ok()?;
    serde_json::from_str::<Header>(&first)
        .ok()
        .filter(|h| h.build == id)
}

/// An open build file.
struct Open {
    out: BufWriter<std::fs::File>,
    bytes: u64,
    truncated: bool,
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    keep: usize,
    index: Arc<Mutex<BTreeMap<BuildId, Header>>>,
    open: HashMap<BuildId, Open>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            self.handle(msg);
            // Drain what is queued, then flush once: RUN output arrives in bursts.
            loop {
                match rx.try_recv() {
                    Ok(msg) => self.handle(msg),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.flush();
                        return;
                    }
                }
            }
            self.flush();
        }
        self.flush();
    }

    fn flush(&mut self) {
        for open in self.open.values_mut() {
            let _ = open.out.flush();
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Begin(header) => self.begin(header),
            Msg::Event { build, line } => self.event(build, line),
        }
    }

    fn begin(&mut self, header: Header) {
        let path = file_of(&self.dir, header.build);
        let file = match std::fs::File::create(&path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the build's log");
                return;
            }
        };
        let mut open = Open {
            out: BufWriter::new(file),
            bytes: 0,
            truncated: false,
        };
        write_json(&mut open, &header);
        self.open.insert(header.build, open);
        self.prune();
    }

    fn event(&mut self, build: BuildId, line: Line) {
        let terminal = is_terminal(&line.event);
        let Some(open) = self.open.get_mut(&build) else {
            return;
        };
        let is_output = matches!(line.event, BuildEvent::Log { .. });
        if is_output && open.bytes >= MAX_FILE_BYTES {
            if !open.truncated {
                open.truncated = true;
                let note = Line {
                    at_ms: line.at_ms,
                    event: BuildEvent::Log {
                        step: None,
                        line: format!(
                            "(the build log reached {} MiB: further output is not recorded)",
                            MAX_FILE_BYTES >> 20
                        ),
                    },
                };
                write_json(open, &note);
            }
        } else {
            write_json(open, &line);
        }
        if terminal {
            if let Some(mut open) = self.open.remove(&build) {
                let _ = open.out.flush();
            }
        }
    }

    /// Deletes the oldest logs beyond `keep` (never one still being written).
    fn prune(&mut self) {
        let mut index = lock(&self.index);
        while index.len() > self.keep {
            let Some(oldest) = index.keys().next().copied() else {
                break;
            };
            if self.open.contains_key(&oldest) {
                break;
            }
            index.remove(&oldest);
            let _ = std::fs::remove_file(file_of(&self.dir, oldest));
        }
    }
}

fn write_json(open: &mut Open, value: &impl Serialize) {
    let Ok(mut text) = serde_json::to_string(value) else {
        return;
    };
    text.push('\n');
    if open.out.write_all(text.as_bytes()).is_ok() {
        open.bytes += text.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(build: BuildId) -> Header {
        Header {
            build,
            project: "p".into(),
            context: "/ctx".into(),
            dockerfile: "Dockerfile".into(),
            target: String::new(),
            started_at_ms: 1,
            owner: None,
        }
    }

    fn wait_for(mut f: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "timed out");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn logs_survive_reopening_and_the_oldest_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let logs = BuildLogs::open(dir.path(), 2).unwrap();
        for id in 1..=3 {
            let j = logs.begin(header(id));
            j.record(&BuildEvent::Log {
                step: Some(0),
                line: format!("output of {id}"),
            });
            j.record(&BuildEvent::Failed {
                error: memobuild_proto::RpcError::new("boom"),
                failure: None,
            });
        }
        wait_for(|| {
            logs.read(3, false).is_ok_and(|r| {
                r.state == BuildLogState::Finished && !dir.path().join("1.jsonl").exists()
            })
        });
        drop(logs);
        let again = BuildLogs::open(dir.path(), 2).unwrap();
        assert_eq!(again.last_id(), 3);
        assert_eq!(again.latest(), Some(3));
        assert!(matches!(
            again.read(1, false),
            Err(BuildLogsError::Missing(1))
        ));
        let r = again.read(2, false).unwrap();
        assert_eq!(r.entries.len(), 2);
        assert_eq!(
            r.entries[0].event,
            BuildEvent::Log {
                step: Some(0),
                line: "output of 2".into()
            }
        );
    }

    #[test]
    fn a_log_without_a_result_is_running_or_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let logs = BuildLogs::open(dir.path(), 5).unwrap();
        let j = logs.begin(header(7));
        j.record(&BuildEvent::StepStarted { step: 0 });
        wait_for(|| logs.read(7, true).is_ok_and(|r| r.entries.len() == 1));
        assert_eq!(logs.read(7, true).unwrap().state, BuildLogState::Running);
        assert_eq!(
            logs.read(7, false).unwrap().state,
            BuildLogState::Interrupted
        );
    }
}
