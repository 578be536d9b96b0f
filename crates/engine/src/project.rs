//! Projects: a (context, Dockerfile, target, build args) the daemon has built.
//! For each it remembers the last two builds with every step's key components,
//! what changed in the context since, and which steps are dirty and why — the
//! answers to `status`, `explain` and the no-op build's "nothing changed".
//!
//! Everything here is in memory and answered without touching the disk; the
//! build summaries are also persisted (redb) so `explain` survives a restart.

use memobuild_plan::{Plan, StepInputs, ABSENT};
use memobuild_proto::paths::normalize;
use memobuild_proto::{
    BuildRequest, Explanation, FailureInfo, LastBuild, ProjectState, ProjectStatus,
    StepExplanation, StepOutcome, StepState, StepStatus,
};
use memobuild_store::Store;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Most changed paths `status` lists per project.
const MAX_CHANGED_SHOWN: usize = 1000;
/// Most reasons listed for one step.
const MAX_WHY: usize = 20;

/// What identifies a project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ProjectKey {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    pub target: String,
    pub build_args: BTreeMap<String, String>,
    /// The user whose rights the project's context is read with (`None`:
    /// root's). Users' projects are apart: one user's clean result or dirty
    /// re-plan never answers for another's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_as: Option<memobuild_proto::Reader>,
}

/// The Dockerfile of a build without `-f`: `CONTEXT/Dockerfile`, else
/// `CONTEXT/dockerfile` when only that exists (BuildKit's dockerui).
pub(crate) fn default_dockerfile(context: &Path) -> PathBuf {
    let upper = context.join("Dockerfile");
    let lower = context.join("dockerfile");
    if std::fs::symlink_metadata(&upper).is_err() && std::fs::symlink_metadata(&lower).is_ok() {
        lower
    } else {
        upper
    }
}

impl ProjectKey {
    pub(crate) fn of(request: &BuildRequest) -> ProjectKey {
        let context = PathBuf::from(&request.context);
        let dockerfile = normalize(&match request.dockerfile.as_str() {
            "" => default_dockerfile(&context),
            p if Path::new(p).is_absolute() => PathBuf::from(p),
            p => context.join(p),
        });
        ProjectKey {
            context,
            dockerfile,
            target: request.target.clone(),
            build_args: request.build_args.clone(),
            read_as: request.read_as.clone(),
        }
    }

    /// Short stable id: BLAKE3 of the key's fields.
    pub(crate) fn id(&self) -> String {
        let mut k = memobuild_plan::key::KeyHasher::new("project");
        k.str(&self.context.display().to_string())
            .str(&self.dockerfile.display().to_string())
            .str(&self.target);
        for (name, value) in &self.build_args {
            k.str(name).str(value);
        }
        // Root's projects keep the ids they always had.
        if let Some(reader) = &self.read_as {
            k.str("read-as").str(&reader.uid.to_string());
        }
        k.finish()[..12].to_string()
    }
}

/// One step of a finished build, as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StepSummary {
    pub key: String,
    pub stage: String,
    pub instruction: String,
    pub line: usize,
    pub cached: bool,
    pub inputs: StepInputs,
    /// The stage's base, `FROM NAME` (see [`stage_from`]).
    #[serde(default)]
    pub from: String,
    /// Of a failed build: this step failed, and why.
    #[serde(default)]
    pub failure: Option<FailureInfo>,
    /// Of a failed build: the build stopped before this step finished.
    #[serde(default)]
    pub not_built: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BuildSummary {
    pub ok: bool,
    pub finished_at: i64,
    pub millis: u64,
    pub manifest_digest: Option<String>,
    pub config_digest: Option<String>,
    pub error: Option<String>,
    pub no_cache: bool,
    #[serde(default)]
    pub epoch: Option<i64>,
    pub steps: Vec<StepSummary>,
    /// Image names the build started FROM -> the manifests they named then.
    #[serde(default)]
    pub images: BTreeMap<String, String>,
    /// Digest of the labels, RUN options and Dockerfile text the build had
    /// (`exec::build::options_digest`).
    #[serde(default)]
    pub options: String,
    /// Of a failed build: why, as data.
    #[serde(default)]
    pub failure: Option<FailureInfo>,
    /// The secrets the build had, as the MACs its keys cover (never the
    /// values; see `secret_ids`): a re-plan for `status` keys its secret
    /// steps on them, so they stay clean while nothing else changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

impl BuildSummary {
    pub(crate) fn from_plan(plan: &Plan, cached: &[bool]) -> Vec<StepSummary> {
        plan.steps
            .iter()
            .map(|s| StepSummary {
                key: s.key.clone(),
                stage: plan.stages[s.stage].label.clone(),
                instruction: s.display.clone(),
                line: s.loc.line,
                cached: cached.get(s.index).copied().unwrap_or(false),
                inputs: s.inputs.clone(),
                from: stage_from(plan, s.stage),
                failure: None,
                not_built: false,
            })
            .collect()
    }
}

/// A planned stage's base as progress shows it: `FROM scratch`, `FROM NAME`
/// of the image (as normalized for the image store) or of the earlier stage.
pub(crate) fn stage_from(plan: &Plan, stage: usize) -> String {
    let Some(st) = plan.stages.get(stage) else {
        return String::new();
    };
    match &st.base {
        memobuild_plan::Base::Scratch => "FROM scratch".into(),
        memobuild_plan::Base::Stage(_) => match st.deps.first().and_then(|d| plan.stages.get(*d)) {
            Some(base) => format!("FROM {}", base.label),
            None => String::new(),
        },
        memobuild_plan::Base::Image(image) => plan
            .images
            .iter()
            .find(|(_, digest)| **digest == image.manifest_digest)
            .map(|(name, _)| format!("FROM {name}"))
            .unwrap_or_default(),
    }
}

/// Persisted part of a project.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    key: ProjectKey,
    last: Option<BuildSummary>,
    previous: Option<BuildSummary>,
    /// Unix seconds of the last build (or registration).
    #[serde(default)]
    last_used: i64,
    /// Rebuilt in the background after saves (eager.rs).
    #[serde(default)]
    eager: bool,
    /// The Dockerfile of its last build when it came with the request (`-f -`,
    /// a Dockerfile on stdin): re-plans and eager builds use it, as there
    /// is no file to read. Kept up to [`MAX_KEPT_DOCKERFILE`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dockerfile_text: Option<String>,
}

/// The largest Dockerfile sent with a request that a project keeps (a larger
/// one is re-planned only by building again).
const MAX_KEPT_DOCKERFILE: usize = 256 * 1024;

#[derive(Debug, Clone)]
struct Project {
    record: Record,
    /// Root of the watched tree holding the context.
    root: Option<PathBuf>,
    /// Tree generation at which the project was last known clean.
    clean_at: Option<u64>,
    /// Dirty steps (index -> why), from the last recomputation.
    dirty: BTreeMap<usize, Vec<String>>,
    /// A dirty recomputation could not plan (bad Dockerfile, missing file).
    plan_error: Option<FailureInfo>,
    /// Lint warnings of the Dockerfile as last planned.
    lint: Vec<memobuild_proto::LintWarning>,
    changed: BTreeSet<String>,
    /// Live state of a running build: step index -> `building`/`done`/`cached`.
    building: Option<BTreeMap<usize, StepState>>,
    /// When each step of the running build started (Unix milliseconds).
    started_ms: BTreeMap<usize, i64>,
    /// The steps the running build planned (`status` shows them while it runs;
    /// a failed build keeps them).
    planned: Option<Vec<StepSummary>>,
    /// Tree generation the dirty set was last computed at (a build's, or a
    /// re-plan's): an older re-plan finishing late is dropped.
    planned_at: u64,
    /// Order of last use (ties of `last_used` seconds), for the cap.
    used_seq: u64,
    generation: u64,
}

pub(crate) struct Projects {
    map: Mutex<HashMap<String, Project>>,
    changed: tokio::sync::Notify,
    /// Bumped with every project's generation and when one is forgotten
    /// (`StatusReport::generation`, `status_wait`).
    epoch: AtomicU64,
    /// Source of `Project::used_seq`.
    use_counter: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> parking_lot::MutexGuard<'_, T> {
    m.lock()
}

impl Projects {
    /// Loads persisted projects.
    pub(crate) fn load(store: &Store) -> Projects {
        let mut map = HashMap::new();
        match store.projects() {
            Ok(rows) => {
                for (id, bytes) in rows {
                    match serde_json::from_slice::<Record>(&bytes) {
                        Ok(mut record) => {
                            // A record from before `last_used` existed: used now.
                            if record.last_used == 0 {
                                record.last_used = memobuild_store::now_secs();
                            }
                            map.insert(id, Project::new(record));
                        }
                        Err(e) => {
                            tracing::warn!(project = %id, error = %e, "dropping unreadable project record")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read projects"),
        }
        Projects {
            map: Mutex::new(map),
            changed: tokio::sync::Notify::new(),
            epoch: AtomicU64::new(1),
            use_counter: AtomicU64::new(1),
        }
    }

    fn used(&self, p: &mut Project) {
        p.record.last_used = memobuild_store::now_secs();
        p.used_seq = self.use_counter.fetch_add(1, Ordering::SeqCst);
    }

    /// Projects to forget: those not built for `unused` (none when zero),
    /// then the least recently used beyond `max` (none when zero). A project
    /// whose build runs stays.
    pub(crate) fn stale(&self, now: i64, unused: std::time::Duration, max: usize) -> Vec<String> {
        let map = lock(&self.map);
        let mut idle: Vec<(&String, &Project)> =
            map.iter().filter(|(_, p)| p.building.is_none()).collect();
        let mut out = Vec::new();
        if !unused.is_zero() {
            let cutoff = now.saturating_sub(unused.as_secs().min(i64::MAX as u64) as i64);
            idle.retain(|(id, p)| {
                let old = p.record.last_used <= cutoff;
                if old {
                    out.push((*id).clone());
                }
                !old
            });
        }
        if max > 0 {
            let kept = map.len() - out.len();
            if kept > max {
                idle.sort_by_key(|(_, p)| (p.record.last_used, p.used_seq));
                out.extend(idle.iter().take(kept - max).map(|(id, _)| (*id).clone()));
            }
        }
        out
    }

    fn bump(&self, p: &mut Project) {
        p.generation += 1;
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// The status generation (see [`Projects::wait_any`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Waits until any project changes after status generation `after`, or
    /// `timeout` passes; returns the status generation then.
    pub(crate) async fn wait_any(&self, after: u64, timeout: std::time::Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let now = self.epoch();
            if now != after {
                return now;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.epoch();
            }
        }
    }

    /// Registers (or finds) the project for a request; returns its id.
    pub(crate) fn register(&self, request: &BuildRequest, root: &Path) -> String {
        let key = ProjectKey::of(request);
        let id = key.id();
        let mut map = lock(&self.map);
        let p = map.entry(id.clone()).or_insert_with(|| {
            Project::new(Record {
                key,
                last: None,
                previous: None,
                last_used: memobuild_store::now_secs(),
                eager: false,
                dockerfile_text: None,
            })
        });
        p.record.dockerfile_text = request
            .dockerfile_text
            .clone()
            .filter(|text| text.len() <= MAX_KEPT_DOCKERFILE);
        p.root = Some(root.to_path_buf());
        self.used(p);
        id
    }

    /// Opts project `id` in or out of eager builds (persisted).
    pub(crate) fn set_eager(&self, store: &Store, id: &str, on: bool) {
        let record = {
            let mut map = lock(&self.map);
            let Some(p) = map.get_mut(id) else { return };
            p.record.eager = on;
            self.bump(p);
            p.record.clone()
        };
        persist(store, id, &record);
    }

    /// Projects opted in to eager builds.
    pub(crate) fn eager_projects(&self) -> Vec<String> {
        lock(&self.map)
            .iter()
            .filter(|(_, p)| p.record.eager)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A build of `id` ended without a result worth keeping (an eager build
    /// cancelled): the last build stays the baseline.
    pub(crate) fn build_abandoned(&self, id: &str) {
        if let Some(p) = lock(&self.map).get_mut(id) {
            p.building = None;
            p.planned = None;
            self.bump(p);
        }
    }

    /// Project `id` opted in to eager builds, is dirty (and plannable), and
    /// no build of it runs.
    pub(crate) fn wants_eager_build(&self, id: &str) -> bool {
        lock(&self.map).get(id).is_some_and(|p| {
            p.record.eager
                && p.building.is_none()
                && p.record.last.is_some()
                && p.plan_error.is_none()
                && !p.dirty.is_empty()
        })
    }

    /// The request that re-plans project `id` (for dirty tracking).
    pub(crate) fn request(&self, id: &str) -> Option<BuildRequest> {
        lock(&self.map).get(id).map(|p| request_of(&p.record))
    }

    /// The secret MACs of project `id`'s last build (see [`BuildSummary::secrets`]).
    pub(crate) fn last_secrets(&self, id: &str) -> BTreeMap<String, String> {
        lock(&self.map)
            .get(id)
            .and_then(|p| p.record.last.as_ref())
            .map(|l| l.secrets.clone())
            .unwrap_or_default()
    }

    /// A build of project `id` planned `plan`: `status` shows its steps.
    pub(crate) fn build_planned(&self, id: &str, plan: &Plan) {
        let steps = BuildSummary::from_plan(plan, &[]);
        let lint = lint_warnings(&plan.lint);
        if let Some(p) = lock(&self.map).get_mut(id) {
            p.planned = Some(steps);
            p.lint = lint;
            self.bump(p);
        }
    }

    /// The lint warnings of project `id`'s Dockerfile as last planned.
    pub(crate) fn lint(&self, id: &str) -> Vec<memobuild_proto::LintWarning> {
        lock(&self.map)
            .get(id)
            .map(|p| p.lint.clone())
            .unwrap_or_default()
    }

    /// The lint warnings of a Dockerfile that cannot be planned (a plan
    /// brings its own).
    pub(crate) fn set_lint(&self, id: &str, warnings: &[memobuild_dockerfile::lint::Warning]) {
        if let Some(p) = lock(&self.map).get_mut(id) {
            p.lint = lint_warnings(warnings);
        }
    }

    /// The steps the running build of `id` planned, if it got that far.
    pub(crate) fn planned_steps(&self, id: &str) -> Option<Vec<StepSummary>> {
        lock(&self.map).get(id).and_then(|p| p.planned.clone())
    }

    /// The last successful build, if nothing it depends on changed since: the
    /// tree is still at the generation it was clean at.
    pub(crate) fn clean_result(&self, id: &str, generation: u64) -> Option<BuildSummary> {
        let map = lock(&self.map);
        let p = map.get(id)?;
        let last = p.record.last.as_ref()?;
        (last.ok && p.clean_at == Some(generation) && p.dirty.is_empty() && p.plan_error.is_none())
            .then(|| last.clone())
    }

    pub(crate) fn build_started(&self, id: &str) {
        if let Some(p) = lock(&self.map).get_mut(id) {
            p.building = Some(BTreeMap::new());
            p.started_ms.clear();
            p.planned = None;
            p.changed.clear();
            self.bump(p);
        }
    }

    pub(crate) fn step_state(&self, id: &str, step: usize, state: StepState) {
        if let Some(p) = lock(&self.map).get_mut(id) {
            if let Some(b) = p.building.as_mut() {
                let building = state == StepState::Building;
                b.insert(step, state);
                if building {
                    p.started_ms.insert(step, now_ms());
                }
            }
            self.bump(p);
        }
    }

    /// Records a finished build; `generation` is the tree generation it read.
    pub(crate) fn build_finished(
        &self,
        store: &Store,
        id: &str,
        summary: BuildSummary,
        generation: u64,
    ) {
        let record = {
            let mut map = lock(&self.map);
            let Some(p) = map.get_mut(id) else { return };
            p.building = None;
            p.planned = None;
            let ok = summary.ok;
            p.record.previous = p.record.last.take();
            p.record.last = Some(summary);
            self.used(p);
            p.dirty.clear();
            p.plan_error = None;
            p.clean_at = ok.then_some(generation);
            // The new baseline: dirty sets computed before it are void.
            p.planned_at = generation;
            self.bump(p);
            p.record.clone()
        };
        persist(store, id, &record);
    }

    /// Notes changed tree paths; returns the projects (id, request) to re-plan.
    pub(crate) fn paths_changed(
        &self,
        root: &Path,
        paths: &[String],
    ) -> Vec<(String, BuildRequest)> {
        let mut out = Vec::new();
        let mut map = lock(&self.map);
        for (id, p) in map.iter_mut() {
            if p.root.as_deref() != Some(root) {
                continue;
            }
            let Ok(rel) = p.record.key.context.strip_prefix(root) else {
                continue;
            };
            let prefix = rel.to_str().unwrap_or("").to_string();
            let mut touched = false;
            for path in paths {
                let inside = if prefix.is_empty() {
                    Some(path.as_str())
                } else {
                    path.strip_prefix(&prefix).and_then(|r| r.strip_prefix('/'))
                };
                let dockerfile_hit = p.record.key.dockerfile == root.join(path);
                if let Some(inside) = inside.filter(|i| !i.is_empty()) {
                    // Bounded, but the newest change is always listed: a full set
                    // gives up another path for it.
                    if p.changed.len() >= MAX_CHANGED_SHOWN && !p.changed.contains(inside) {
                        p.changed.pop_last();
                    }
                    p.changed.insert(inside.to_string());
                    touched = true;
                } else if dockerfile_hit {
                    touched = true;
                }
            }
            if touched {
                p.clean_at = None;
                self.bump(p);
                out.push((id.clone(), request_of(&p.record)));
            }
        }
        out
    }

    /// The paths a dirty re-plan of project `id` must show key components
    /// for: those changed since its last build. `None` asks for a complete
    /// re-plan: nothing recorded (a restart), too many changes to list, or an
    /// ignore file changed (which changes what every step selects).
    pub(crate) fn focus(&self, id: &str) -> Option<BTreeSet<String>> {
        let map = lock(&self.map);
        let changed = &map.get(id)?.changed;
        let complete = changed.is_empty()
            || changed.len() >= MAX_CHANGED_SHOWN
            || changed.iter().any(|p| p.ends_with(".dockerignore"));
        (!complete).then(|| changed.clone())
    }

    /// Stores the result of re-planning a project against the current tree.
    pub(crate) fn set_dirty(
        &self,
        id: &str,
        generation: u64,
        plan: Result<&Plan, &memobuild_proto::RpcError>,
    ) {
        // Summarising a plan copies every step's inputs: do it before locking,
        // so `status` never waits for it.
        let new = plan
            .as_ref()
            .ok()
            .map(|plan| BuildSummary::from_plan(plan, &[]));
        let lint = plan.as_ref().ok().map(|plan| lint_warnings(&plan.lint));
        // `# check=error=true` with warnings: the build would fail, so the
        // project is not clean (a directive changes no step's key).
        let violation = plan
            .as_ref()
            .ok()
            .and_then(|plan| plan.lint_error.as_deref())
            .map(lint_violation);
        let mut map = lock(&self.map);
        let Some(p) = map.get_mut(id) else { return };
        // A re-plan of an older tree than the one the dirty set (or the last
        // build) was computed from finished late: it would bring back old news.
        if generation < p.planned_at {
            return;
        }
        p.planned_at = generation;
        match (plan, new) {
            (Err(e), _) => {
                let failure = crate::failure::failure_info(e, &p.record.key.dockerfile, None, None);
                p.plan_error = Some(failure);
                p.dirty.clear();
                p.clean_at = None;
            }
            (Ok(_), new) => {
                let new = new.unwrap_or_default();
                p.plan_error = violation
                    .as_ref()
                    .map(|e| crate::failure::failure_info(e, &p.record.key.dockerfile, None, None));
                p.lint = lint.unwrap_or_default();
                let old = p
                    .record
                    .last
                    .as_ref()
                    .map(|l| l.steps.as_slice())
                    .unwrap_or(&[]);
                p.dirty = dirty_steps(old, &new);
                let ok = p.record.last.as_ref().is_some_and(|l| l.ok);
                p.clean_at =
                    (p.dirty.is_empty() && ok && violation.is_none()).then_some(generation);
            }
        }
        self.bump(p);
    }

    /// Waits until some project changes after `generation` (or a timeout).
    pub(crate) async fn wait_change(
        &self,
        id: &str,
        generation: u64,
        timeout: std::time::Duration,
    ) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            let current = lock(&self.map).get(id).map(|p| p.generation)?;
            if current != generation {
                return Some(current);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Some(current);
            }
        }
    }

    /// The uid owning project `id`: the user its context is read as
    /// (`None`: root's, an admin's to act on). `None` if there is no such project.
    pub(crate) fn owner(&self, id: &str) -> Option<Option<u32>> {
        let map = lock(&self.map);
        let p = map.get(id)?;
        Some(p.record.key.read_as.as_ref().map(|r| r.uid))
    }

    /// What the last and previous builds of `uid`'s projects made: their
    /// manifest digests, and the cache keys of their steps.
    pub(crate) fn results_of(&self, uid: u32) -> (Vec<String>, Vec<String>) {
        let map = lock(&self.map);
        let (mut manifests, mut keys) = (Vec::new(), Vec::new());
        let builds = map
            .values()
            .filter(|p| p.record.key.read_as.as_ref().map(|r| r.uid) == Some(uid))
            .flat_map(|p| [&p.record.last, &p.record.previous])
            .flatten();
        for build in builds {
            manifests.extend(build.manifest_digest.clone());
            keys.extend(build.steps.iter().map(|s| s.key.clone()));
        }
        (manifests, keys)
    }

    /// Ids matching a filter: an id, an id prefix, or a context path.
    pub(crate) fn matching(&self, filter: &str) -> Vec<String> {
        let map = lock(&self.map);
        let mut ids: Vec<String> = map
            .iter()
            .filter(|(id, p)| {
                filter.is_empty()
                    || id.starts_with(filter)
                    || p.record.key.context == Path::new(filter)
            })
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    pub(crate) fn status(&self, ids: &[String]) -> Vec<ProjectStatus> {
        let map = lock(&self.map);
        ids.iter()
            .filter_map(|id| map.get(id).map(|p| p.status(id)))
            .collect()
    }

    /// The steps of project `id`'s last build, if it was built.
    pub(crate) fn last_steps(&self, id: &str) -> Option<Vec<StepSummary>> {
        let map = lock(&self.map);
        Some(map.get(id)?.record.last.as_ref()?.steps.clone())
    }

    pub(crate) fn explain(&self, id: &str) -> Option<Explanation> {
        let map = lock(&self.map);
        let p = map.get(id)?;
        let last = p.record.last.as_ref()?;
        let before = p
            .record
            .previous
            .as_ref()
            .map(|b| b.steps.as_slice())
            .unwrap_or(&[]);
        let mut parent_rebuilt = false;
        let steps = last
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let why = if s.cached || s.not_built {
                    Vec::new()
                } else if last.no_cache {
                    vec!["--no-cache".to_string()]
                } else {
                    match before.iter().find(|b| b.key == s.key) {
                        Some(_) => {
                            vec!["the cache entry was missing (pruned or never stored)".into()]
                        }
                        None => why_differs(before.get(i), s, parent_rebuilt),
                    }
                };
                parent_rebuilt |= !s.cached;
                let outcome = if s.failure.is_some() {
                    StepOutcome::Failed
                } else if s.not_built {
                    StepOutcome::NotBuilt
                } else if s.cached {
                    StepOutcome::Cached
                } else {
                    StepOutcome::Rebuilt
                };
                StepExplanation {
                    index: i,
                    stage: s.stage.clone(),
                    instruction: s.instruction.clone(),
                    line: s.line,
                    outcome,
                    why,
                    failure: s.failure.clone(),
                }
            })
            .collect();
        Some(Explanation {
            project: id.to_string(),
            steps,
            failed: if last.ok {
                None
            } else {
                Some(first_line(last.error.as_deref().unwrap_or("failed")))
            },
            failure: last.failure.clone(),
        })
    }

    /// Forgets projects; returns (ids, tree roots no project uses any more).
    pub(crate) fn forget(&self, store: &Store, ids: &[String]) -> Vec<PathBuf> {
        let mut map = lock(&self.map);
        let mut roots = Vec::new();
        for id in ids {
            if let Some(p) = map.remove(id) {
                if let Err(e) = store.delete_project(id) {
                    tracing::warn!(project = %id, error = %e, "cannot delete project record");
                }
                roots.extend(p.root);
            }
        }
        roots.retain(|r| !map.values().any(|p| p.root.as_ref() == Some(r)));
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        roots
    }

    /// Contexts of all projects (to start watching them again after a restart).
    pub(crate) fn contexts(&self) -> Vec<PathBuf> {
        lock(&self.map)
            .values()
            .map(|p| p.record.key.context.clone())
            .collect()
    }

    /// Records the watched root of every project with this context; returns them.
    pub(crate) fn set_root(&self, context: &Path, root: &Path) -> Vec<(String, BuildRequest)> {
        let mut out = Vec::new();
        for (id, p) in lock(&self.map).iter_mut() {
            if p.record.key.context == context {
                p.root = Some(root.to_path_buf());
                out.push((id.clone(), request_of(&p.record)));
            }
        }
        out
    }

    pub(crate) fn running(&self) -> u64 {
        lock(&self.map)
            .values()
            .filter(|p| p.building.is_some())
            .count() as u64
    }
}

fn persist(store: &Store, id: &str, record: &Record) {
    match serde_json::to_vec(record) {
        Ok(bytes) => {
            if let Err(e) = store.put_project(id, &bytes) {
                tracing::warn!(project = id, error = %e, "cannot persist project");
            }
        }
        Err(e) => tracing::warn!(project = id, error = %e, "cannot encode project"),
    }
}

/// The request that rebuilds a project (for re-planning).
fn request_of(record: &Record) -> BuildRequest {
    let key = &record.key;
    BuildRequest {
        context: key.context.display().to_string(),
        dockerfile: key.dockerfile.display().to_string(),
        target: key.target.clone(),
        build_args: key.build_args.clone(),
        read_as: key.read_as.clone(),
        dockerfile_text: record.dockerfile_text.clone(),
        ..BuildRequest::default()
    }
}

impl Project {
    fn new(record: Record) -> Project {
        Project {
            record,
            root: None,
            clean_at: None,
            dirty: BTreeMap::new(),
            plan_error: None,
            lint: Vec::new(),
            changed: BTreeSet::new(),
            building: None,
            started_ms: BTreeMap::new(),
            planned: None,
            planned_at: 0,
            used_seq: 0,
            generation: 1,
        }
    }

    fn status(&self, id: &str) -> ProjectStatus {
        let last = self.record.last.as_ref();
        let state = if self.building.is_some() {
            ProjectState::Building
        } else if last.is_none() {
            ProjectState::NeverBuilt
        } else if self.plan_error.is_some() || !self.dirty.is_empty() {
            ProjectState::Dirty
        } else if last.is_some_and(|l| !l.ok) {
            ProjectState::Failed
        } else {
            ProjectState::Clean
        };
        // While a build runs, the steps it planned; else the last build's.
        let shown = match (&self.building, &self.planned, last) {
            (Some(_), Some(planned), _) => Some(planned.as_slice()),
            (_, _, Some(l)) => Some(l.steps.as_slice()),
            _ => None,
        };
        let stopped_at = last
            .and_then(|l| l.failure.as_ref())
            .and_then(|f| f.step)
            .map(|i| format!("not built: the last build failed at step {}", i + 1));
        let steps = shown
            .map(|steps| {
                steps
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let live = self.building.as_ref().and_then(|b| b.get(&i)).cloned();
                        let (state, why, failure) = match (live, self.dirty.get(&i)) {
                            (Some(live), _) => (live, Vec::new(), None),
                            (None, Some(why)) => (StepState::Dirty, why.clone(), None),
                            (None, None) if s.failure.is_some() => {
                                (StepState::Failed, Vec::new(), s.failure.clone())
                            }
                            (None, None) if s.not_built => (
                                StepState::Dirty,
                                vec![stopped_at
                                    .clone()
                                    .unwrap_or_else(|| "not built: the last build failed".into())],
                                None,
                            ),
                            _ => (StepState::Clean, Vec::new(), None),
                        };
                        let started_at_ms = (state == StepState::Building)
                            .then(|| self.started_ms.get(&i).copied())
                            .flatten();
                        StepStatus {
                            index: i,
                            stage: s.stage.clone(),
                            instruction: s.instruction.clone(),
                            line: s.line,
                            state,
                            why,
                            failure,
                            cache_key: s.key.clone(),
                            started_at_ms,
                            key_inputs: Some(key_inputs(s)),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut steps: Vec<StepStatus> = steps;
        if let Some(e) = &self.plan_error {
            for s in &mut steps {
                s.state = StepState::Dirty;
                s.why = vec![format!("the build cannot be planned now: {}", e.message)];
            }
        }
        ProjectStatus {
            id: id.to_string(),
            context: self.record.key.context.display().to_string(),
            dockerfile: self.record.key.dockerfile.display().to_string(),
            target: self.record.key.target.clone(),
            build_args: self.record.key.build_args.clone(),
            state,
            steps,
            changed_files: self.changed.iter().cloned().collect(),
            last_build: last.map(|l| LastBuild {
                result: if l.ok { "success" } else { "failed" }.into(),
                finished_at: l.finished_at,
                millis: l.millis,
                manifest_digest: l.manifest_digest.clone(),
                error: l.error.as_deref().map(first_line),
                failure: l.failure.clone(),
            }),
            generation: self.generation,
            last_used: self.record.last_used,
            plan_error: self.plan_error.clone(),
            eager: self.record.eager,
            lint: self.lint.clone(),
        }
    }
}

/// The error of a build whose Dockerfile breaks its own `# check=error=true`
/// (BuildKit fails it before any step runs, with `violation` as the message).
pub(crate) fn lint_violation(violation: &str) -> memobuild_proto::RpcError {
    memobuild_proto::RpcError::of(memobuild_proto::ErrorKind::InvalidInput, violation).hint(
        "fix what the warnings say (`memobuild-ctl build --call=check` lists them), \
         or skip those rules with `# check=skip=RULE`",
    )
}

/// A plan's lint warnings as the wire carries them.
pub(crate) fn lint_warnings(
    warnings: &[memobuild_dockerfile::lint::Warning],
) -> Vec<memobuild_proto::LintWarning> {
    warnings
        .iter()
        .map(|w| memobuild_proto::LintWarning {
            rule: w.rule.name.to_string(),
            description: w.rule.description.to_string(),
            url: w.rule.url.to_string(),
            detail: w.detail.clone(),
            line: w.loc.line,
            column: w.loc.column,
        })
        .collect()
}

/// What went into a step's key, for people (`status`, the LSP hover).
fn key_inputs(s: &StepSummary) -> memobuild_proto::KeyInputs {
    memobuild_proto::KeyInputs {
        base: s.from.clone(),
        parent_key: s.inputs.parent_key.clone(),
        args: (*s.inputs.args).clone(),
        files: s
            .inputs
            .files
            .iter()
            .take(memobuild_proto::KEY_FILES_SHOWN)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        file_count: s.inputs.files.len(),
        partial: s.inputs.partial,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The first line of a message (single-line fields of the JSON schema).
pub(crate) fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim_end().to_string()
}

/// Steps of `new` whose keys differ from the last build's, with reasons.
fn dirty_steps(old: &[StepSummary], new: &[StepSummary]) -> BTreeMap<usize, Vec<String>> {
    let mut out = BTreeMap::new();
    let mut parent_dirty = false;
    for (i, step) in new.iter().enumerate() {
        let same = old.get(i).is_some_and(|o| o.key == step.key);
        if !same {
            out.insert(i, why_differs(old.get(i), step, parent_dirty));
        }
        parent_dirty |= !same;
    }
    out
}

/// Names the inputs that differ between a step's earlier and current version.
pub(crate) fn why_differs(
    old: Option<&StepSummary>,
    new: &StepSummary,
    parent_changed: bool,
) -> Vec<String> {
    let Some(old) = old else {
        return vec!["new step (no earlier build of it)".into()];
    };
    let mut why = Vec::new();
    if old.instruction != new.instruction {
        why.push(format!(
            "instruction changed (line {}): `{}` -> `{}`",
            new.line, old.instruction, new.instruction
        ));
    }
    for (name, value) in new.inputs.args.iter() {
        match old.inputs.args.get(name) {
            Some(v) if v == value => {}
            Some(v) => why.push(format!("build arg {name} changed: {v:?} -> {value:?}")),
            None => why.push(format!("build arg {name} set to {value:?}")),
        }
    }
    for name in old
        .inputs
        .args
        .keys()
        .filter(|n| !new.inputs.args.contains_key(*n))
    {
        why.push(format!("build arg {name} unset"));
    }
    let mut files = Vec::new();
    for (path, digest) in &new.inputs.files {
        match (old.inputs.files.get(path), digest.as_str()) {
            (Some(d), _) if d == digest => {}
            (None, ABSENT) => {}
            (Some(_), ABSENT) => files.push(format!("file removed: {path}")),
            (Some(_), _) if path.starts_with("stage:") => {
                files.push(format!("source stage {} changed", &path[6..]))
            }
            (Some(_), _) if path.starts_with("secret:") => files.push(format!(
                "secret {} changed, or given to one build and not the other",
                &path[7..]
            )),
            (Some(_), _) => files.push(format!("file changed: {path}")),
            (None, _) => files.push(format!("file added: {path}")),
        }
    }
    // A partial listing names every path it looked at, so only a complete
    // one tells what is gone by leaving it out.
    let gone = old
        .inputs
        .files
        .keys()
        .filter(|p| !new.inputs.partial && !new.inputs.files.contains_key(*p));
    for path in gone {
        files.push(format!("file removed: {path}"));
    }
    if files.len() > MAX_WHY {
        let more = files.len() - MAX_WHY;
        files.truncate(MAX_WHY);
        files.push(format!("... and {more} more files"));
    }
    why.extend(files);
    if why.is_empty() {
        why.push(
            if parent_changed || old.inputs.parent_key != new.inputs.parent_key {
                "parent step changed".to_string()
            } else {
                "inputs changed".to_string()
            },
        );
    }
    why
}
