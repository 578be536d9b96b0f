//! The engine without containerd: RUN steps go to a fake runner that
//! interprets a tiny command language against the step's real root
//! filesystem (the layer blobs the engine hands it). Everything else is real:
//! the store on disk, planning, cache keys and lookups, COPY, the layer
//! writer, image assembly, events. These tests run in milliseconds and pin
//! what the middle of the engine does: what runs, what is cached, what a step
//! sees, what lands in the image, how a failure is reported.
//!
//! The fake's language, one command per `;`-separated part of the shell
//! form's script:
//! - `put PATH TEXT`: write TEXT to PATH;
//! - `cp SRC DST`: copy SRC from the step's root filesystem to DST;
//! - `env NAME PATH`: write the value of environment variable NAME to PATH;
//! - `say TEXT`: print TEXT on stdout;
//! - `fail N`: exit with code N.

use flate2::read::MultiGzDecoder;
use futures::future::BoxFuture;
use memobuild_engine::{Caller, Engine, RunSettings, Runner, Store};
use memobuild_oci::{ChangeSet, Content, EntryKind, LayerEntry};
use memobuild_proto::{BuildEvent, BuildRequest, ErrorKind, FailureInfo, ProjectState, StepState};
use memobuild_sandbox::{
    ExitReason, LayerInput, OutputChunk, OutputStream, RunOutcome, RunSpec, SandboxError,
    SnapshotHold, Timings,
};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What the fake saw of one step.
#[derive(Debug, Clone)]
struct Call {
    script: String,
    env: Vec<String>,
    cwd: String,
    uid: u32,
    layers: usize,
}

#[derive(Default)]
struct FakeRunner {
    calls: Mutex<Vec<Call>>,
}

impl FakeRunner {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().clone()
    }

    fn scripts(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.script).collect()
    }

    async fn execute(
        &self,
        layers: &[LayerInput],
        spec: &RunSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> Result<RunOutcome, SandboxError> {
        let script = spec.args.last().cloned().unwrap_or_default();
        self.calls.lock().push(Call {
            script: script.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            uid: spec.uid,
            layers: layers.len(),
        });
        let rootfs = read_rootfs(layers.iter().map(|l| l.path.as_path()));
        let mut changes = ChangeSet::default();
        let mut exit = ExitReason::Code(0);
        for command in script.split(';').map(str::trim) {
            let words: Vec<&str> = command.splitn(3, ' ').collect();
            match words.as_slice() {
                ["put", path, text] => put(&mut changes, path, text.as_bytes().to_vec()),
                ["cp", src, dst] => {
                    let bytes = rootfs.get(src.trim_start_matches('/')).cloned();
                    match bytes {
                        Some(bytes) => put(&mut changes, dst, bytes),
                        None => {
                            say(
                                &output,
                                OutputStream::Stderr,
                                &format!("cp: {src}: missing"),
                            )
                            .await;
                            exit = ExitReason::Code(1);
                        }
                    }
                }
                ["env", name, path] => {
                    let prefix = format!("{name}=");
                    let value = spec.env.iter().find_map(|e| e.strip_prefix(&prefix));
                    put(&mut changes, path, value.unwrap_or("").as_bytes().to_vec());
                }
                ["say", rest @ ..] => say(&output, OutputStream::Stdout, &rest.join(" ")).await,
                ["fail", code] => exit = ExitReason::Code(code.parse().unwrap_or(1)),
                other => panic!("the fake runner does not know {other:?}"),
            }
            if exit != ExitReason::Code(0) {
                changes = ChangeSet::default();
                break;
            }
        }
        Ok(RunOutcome {
            exit,
            changes,
            snapshot: SnapshotHold::none(),
            timings: Timings::default(),
        })
    }
}

impl Runner for FakeRunner {
    fn run<'a>(
        &'a self,
        layers: &'a [LayerInput],
        spec: &'a RunSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> BoxFuture<'a, Result<RunOutcome, SandboxError>> {
        Box::pin(self.execute(layers, spec, output))
    }
}

fn put(changes: &mut ChangeSet, path: &str, bytes: Vec<u8>) {
    let entry = |kind| LayerEntry {
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
    };
    let path = path.trim_start_matches('/');
    let mut parent = Path::new(path).parent();
    while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
        let dir_entry = LayerEntry {
            mode: 0o755,
            ..entry(EntryKind::Dir)
        };
        changes.insert(dir.to_string_lossy().into_owned(), dir_entry);
        parent = dir.parent();
    }
    changes.insert(path.into(), entry(EntryKind::File(Content::Bytes(bytes))));
}

async fn say(output: &mpsc::Sender<OutputChunk>, stream: OutputStream, line: &str) {
    let data = format!("{line}\n").into_bytes();
    let _ = output.send(OutputChunk { stream, data }).await;
}

/// The regular files of a stack of gzip layer blobs, bottom first, by path
/// without a leading slash (whiteouts are not needed by these tests and
/// would fail them: none of their steps deletes).
fn read_rootfs<'a>(blobs: impl Iterator<Item = &'a Path>) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    for blob in blobs {
        let file = std::fs::File::open(blob).expect("layer blob");
        let mut archive = tar::Archive::new(MultiGzDecoder::new(file));
        for entry in archive.entries().expect("layer tar") {
            let mut entry = entry.expect("layer entry");
            let path = entry
                .path()
                .expect("entry path")
                .to_string_lossy()
                .into_owned();
            let path = path
                .trim_start_matches("./")
                .trim_start_matches('/')
                .to_string();
            assert!(!path.contains(".wh."), "unexpected whiteout {path}");
            if entry.header().entry_type().is_file() {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).expect("entry bytes");
                files.insert(path, bytes);
            }
        }
    }
    files
}

/// A store, an engine on it with the fake runner, and a build context.
struct Fixture {
    _dir: tempfile::TempDir,
    context: std::path::PathBuf,
    store: Arc<Store>,
    engine: Arc<Engine>,
    runner: Arc<FakeRunner>,
}

impl Fixture {
    fn new(files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let context = dir.path().join("context");
        std::fs::create_dir(&context).expect("context dir");
        let store = Arc::new(Store::open(&dir.path().join("store")).expect("store"));
        let runner = Arc::new(FakeRunner::default());
        let settings = RunSettings {
            max_parallel: 2,
            ..RunSettings::default()
        };
        let engine = Engine::with_runner(store.clone(), settings, runner.clone());
        let fixture = Fixture {
            _dir: dir,
            context,
            store,
            engine,
            runner,
        };
        for (path, text) in files {
            fixture.write(path, text);
        }
        fixture
    }

    fn write(&self, path: &str, text: &str) {
        std::fs::write(self.context.join(path), text).expect("write context file");
    }

    fn request(&self) -> BuildRequest {
        BuildRequest {
            context: self.context.to_string_lossy().into_owned(),
            dockerfile: "Dockerfile".into(),
            ..BuildRequest::default()
        }
    }

    /// Builds and returns what happened. RUN calls are counted from here.
    async fn build(&self, request: BuildRequest) -> Built {
        let before = self.runner.calls().len();
        let id = self.engine.start(request, Caller::ROOT);
        let mut events = Vec::new();
        let mut cursor = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "build did not finish: {events:?}"
            );
            let batch = self
                .engine
                .events(id, cursor, Caller::ROOT)
                .await
                .expect("events");
            cursor = batch.next_cursor;
            events.extend(batch.events);
            if batch.finished {
                break;
            }
        }
        Built {
            runs: self.runner.scripts()[before..].to_vec(),
            events,
        }
    }

    async fn build_ok(&self, request: BuildRequest) -> Built {
        let built = self.build(request).await;
        assert!(
            built.manifest().is_some(),
            "build failed: {:?}",
            built.events
        );
        built
    }

    /// The image's regular files, with what later layers wrote on top.
    fn files(&self, built: &Built) -> BTreeMap<String, String> {
        let manifest = built.manifest().expect("a finished build");
        let image = memobuild_oci::image::read_image(&self.store, &manifest).expect("image");
        let blobs: Vec<_> = image
            .layers
            .iter()
            .map(|l| self.store.blobs.path(&l.digest).expect("layer path"))
            .collect();
        read_rootfs(blobs.iter().map(|p| p.as_path()))
            .into_iter()
            .map(|(path, bytes)| (path, String::from_utf8_lossy(&bytes).into_owned()))
            .collect()
    }
}

struct Built {
    /// The scripts of the RUN steps the runner ran, in order.
    runs: Vec<String>,
    events: Vec<BuildEvent>,
}

impl Built {
    fn manifest(&self) -> Option<String> {
        self.events.iter().find_map(|e| match e {
            BuildEvent::Finished {
                manifest_digest, ..
            } => Some(manifest_digest.clone()),
            _ => None,
        })
    }

    fn cached_steps(&self) -> usize {
        let cached = |e: &&BuildEvent| matches!(e, BuildEvent::StepCached { .. });
        self.events.iter().filter(cached).count()
    }

    fn failure(&self) -> (ErrorKind, Option<FailureInfo>) {
        self.events
            .iter()
            .find_map(|e| match e {
                BuildEvent::Failed { error, failure } => Some((error.kind, failure.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("the build did not fail: {:?}", self.events))
    }
}

#[tokio::test]
async fn run_reads_the_copied_files_and_its_result_lands_in_the_image() {
    let f = Fixture::new(&[
        (
            "Dockerfile",
            "FROM scratch\nCOPY a.txt /a.txt\nRUN cp /a.txt /b.txt\n",
        ),
        ("a.txt", "one"),
    ]);
    let built = f.build_ok(f.request()).await;
    assert_eq!(built.runs, ["cp /a.txt /b.txt"]);
    let files = f.files(&built);
    assert_eq!(files.get("a.txt").map(String::as_str), Some("one"));
    assert_eq!(files.get("b.txt").map(String::as_str), Some("one"));
    let call = &f.runner.calls()[0];
    assert_eq!(call.layers, 1, "the RUN's root is the COPY layer");
    assert_eq!((call.cwd.as_str(), call.uid), ("/", 0));
}

#[tokio::test]
async fn an_edit_reruns_only_the_steps_that_depend_on_it() {
    let f = Fixture::new(&[
        (
            "Dockerfile",
            "FROM scratch\nCOPY a.txt /a\nRUN cp /a /from-a\nCOPY b.txt /b\nRUN cp /b /from-b\n",
        ),
        ("a.txt", "a1"),
        ("b.txt", "b1"),
    ]);
    let first = f.build_ok(f.request()).await;
    assert_eq!(first.runs, ["cp /a /from-a", "cp /b /from-b"]);

    let again = f.build_ok(f.request()).await;
    assert!(
        again.runs.is_empty(),
        "nothing changed, yet {:?} ran",
        again.runs
    );
    assert_eq!(again.cached_steps(), 4);
    assert_eq!(
        again.manifest(),
        first.manifest(),
        "same inputs, same image"
    );

    f.write("b.txt", "b2");
    let b_edited = f.build_ok(f.request()).await;
    assert_eq!(
        b_edited.runs,
        ["cp /b /from-b"],
        "the step before COPY b.txt is cached"
    );
    assert_eq!(
        f.files(&b_edited).get("from-b").map(String::as_str),
        Some("b2")
    );

    f.write("a.txt", "a2");
    let a_edited = f.build_ok(f.request()).await;
    assert_eq!(a_edited.runs, ["cp /a /from-a", "cp /b /from-b"]);
    let files = f.files(&a_edited);
    assert_eq!(files.get("from-a").map(String::as_str), Some("a2"));
    assert_eq!(files.get("from-b").map(String::as_str), Some("b2"));

    f.write("a.txt", "a1");
    f.write("b.txt", "b1");
    let reverted = f.build_ok(f.request()).await;
    assert!(reverted.runs.is_empty(), "reverted inputs hit the cache");
    assert_eq!(reverted.manifest(), first.manifest());
}

#[tokio::test]
async fn a_failed_step_reports_its_exit_and_output_and_is_not_cached() {
    let f = Fixture::new(&[(
        "Dockerfile",
        "FROM scratch\nRUN put /ok yes\nRUN say compiling; say boom; fail 3\n",
    )]);
    let failed = f.build(f.request()).await;
    let (kind, failure) = failed.failure();
    assert_eq!(kind, ErrorKind::StepFailed);
    let failure = failure.expect("failure as data");
    assert_eq!((failure.line, failure.exit_code), (3, Some(3)));
    assert_eq!(failure.output, ["compiling", "boom"]);

    let again = f.build(f.request()).await;
    assert_eq!(
        again.runs,
        ["say compiling; say boom; fail 3"],
        "the step that passed is cached, the failed one runs again"
    );
    assert_eq!(again.failure().0, ErrorKind::StepFailed);
}

#[tokio::test]
async fn the_step_sees_its_env_args_and_workdir_and_args_are_in_its_key() {
    let f = Fixture::new(&[(
        "Dockerfile",
        "FROM scratch\nARG V=x\nENV E=$V-y\nWORKDIR /w\nRUN env E /w/e; env V /w/v\n",
    )]);
    let mut request = f.request();
    request.build_args.insert("V".into(), "z".into());
    let built = f.build_ok(request.clone()).await;
    let call = &f.runner.calls()[0];
    assert_eq!(call.cwd, "/w");
    assert!(call.env.contains(&"E=z-y".to_string()), "{:?}", call.env);
    assert!(
        call.env.contains(&"V=z".to_string()),
        "ARG values reach RUN: {:?}",
        call.env
    );
    let files = f.files(&built);
    assert_eq!(files.get("w/e").map(String::as_str), Some("z-y"));

    assert!(f.build_ok(request.clone()).await.runs.is_empty());
    request.build_args.insert("V".into(), "q".into());
    let changed = f.build_ok(request).await;
    assert_eq!(
        changed.runs.len(),
        1,
        "a different build arg is a different step"
    );
    assert_eq!(
        f.files(&changed).get("w/e").map(String::as_str),
        Some("q-y")
    );
}

#[tokio::test]
async fn no_cache_runs_every_step_and_gives_the_same_image() {
    let f = Fixture::new(&[(
        "Dockerfile",
        "FROM scratch\nRUN put /one 1\nRUN put /two 2\n",
    )]);
    // Pinned: without SOURCE_DATE_EPOCH a step run again gets the time it
    // ran (as in BuildKit), so the two builds agree only within one second.
    let mut request = f.request();
    request
        .build_args
        .insert("SOURCE_DATE_EPOCH".into(), "1700000000".into());
    let first = f.build_ok(request.clone()).await;
    request.no_cache = true;
    let uncached = f.build_ok(request).await;
    assert_eq!(uncached.runs, ["put /one 1", "put /two 2"]);
    assert_eq!(
        uncached.manifest(),
        first.manifest(),
        "layers are deterministic"
    );
}

#[tokio::test]
async fn a_stage_copies_only_what_it_names_from_another() {
    let f = Fixture::new(&[
        (
            "Dockerfile",
            "FROM scratch AS build\nCOPY src.txt /src\nRUN cp /src /out\n\
             FROM scratch\nCOPY --from=build /out /app\nRUN cp /app /final\n",
        ),
        ("src.txt", "v1"),
    ]);
    let built = f.build_ok(f.request()).await;
    assert_eq!(built.runs, ["cp /src /out", "cp /app /final"]);
    let files = f.files(&built);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, ["app", "final"], "the build stage's files stay out");
    assert_eq!(files["final"], "v1");

    f.write("src.txt", "v2");
    let edited = f.build_ok(f.request()).await;
    assert_eq!(edited.runs, ["cp /src /out", "cp /app /final"]);
    assert_eq!(f.files(&edited)["final"], "v2");
}

#[tokio::test]
async fn status_names_the_edited_file_and_only_the_steps_it_dirties() {
    let f = Fixture::new(&[
        (
            "Dockerfile",
            "FROM scratch\nCOPY a.txt /a\nRUN cp /a /b\nCOPY c.txt /c\n",
        ),
        ("a.txt", "1"),
        ("c.txt", "1"),
    ]);
    f.build_ok(f.request()).await;
    let identity = memobuild_engine::DaemonIdentity {
        pid: std::process::id(),
        version: "test".into(),
    };
    let project = |f: &Fixture| {
        let report = f
            .engine
            .status("", &identity, Caller::ROOT)
            .expect("status");
        assert_eq!(report.projects.len(), 1);
        report.projects.into_iter().next().expect("the project")
    };
    assert_eq!(project(&f).state, ProjectState::Clean);

    f.write("c.txt", "2");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let dirty = loop {
        let p = project(&f);
        if p.state == ProjectState::Dirty {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "never dirty: {p:?}");
        let _ = f
            .engine
            .wait_change(&p.id, p.generation, Caller::ROOT)
            .await;
    };
    let states: Vec<(&str, &StepState)> = dirty
        .steps
        .iter()
        .map(|s| (s.instruction.as_str(), &s.state))
        .collect();
    assert_eq!(
        states,
        [
            ("COPY a.txt /a", &StepState::Clean),
            ("RUN cp /a /b", &StepState::Clean),
            ("COPY c.txt /c", &StepState::Dirty),
        ]
    );
    let why = dirty.steps[2].why.join(" ");
    assert!(why.contains("c.txt"), "the reason names the file: {why}");
    assert_eq!(dirty.changed_files, ["c.txt"]);
}
