//! Planning one stage: walking its instructions with Docker's semantics (ARG
//! scoping, ENV over ARG, expansion, SHELL, WORKDIR chaining) and turning each
//! into a [`Step`] with its cache key.

use super::key::KeyHasher;
use super::{
    base_key, Base, CacheSharing, ContentRef, CopyOp, CopySource, Op, Plan, PlanInput, RunMount,
    RunNetwork, RunOp, StagePlan, Step,
};
use memobuild_context::{select, FileKind};
use memobuild_dockerfile::expand::{self, ExpandError};
use memobuild_dockerfile::lint::{self, Warning};
use memobuild_dockerfile::{
    CommandForm, CopySpec, Dockerfile, DockerfileError, Flag, Healthcheck, Instruction, Loc,
    Located, RunSpec, Stage,
};
use memobuild_oci::config::{Empty, HealthConfig};
use memobuild_oci::image::ImageSource;
use memobuild_oci::normalize_image_name;
use memobuild_oci::ImageConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

/// Docker's predefined proxy args: usable without an ARG line, never warned about.
pub fn is_predefined_arg(name: &str) -> bool {
    matches!(
        name.to_ascii_uppercase().as_str(),
        "HTTP_PROXY" | "HTTPS_PROXY" | "FTP_PROXY" | "NO_PROXY" | "ALL_PROXY"
    )
}

pub(super) struct StageInput<'a, 'b> {
    pub input: &'a PlanInput<'b>,
    pub stage: &'a Stage,
    pub base: Base,
    pub global: &'a BTreeMap<String, String>,
    /// Dockerfile stage index -> position in `plan.stages`, for stages planned so far.
    pub planned: &'a BTreeMap<usize, usize>,
    /// Normalised image name -> position in `plan.stages` of the stage that
    /// stands for an image named by `--from` (see [`super::implicit_stage`]).
    pub implicit: &'a BTreeMap<String, usize>,
    /// When planning began (see [`MAX_PLAN_TIME`]).
    pub started: std::time::Instant,
}

/// Bounds on what one stage may accumulate, so a hostile Dockerfile costs
/// little memory and time to plan (each step's key covers the whole image
/// config and the ARGs in scope). BuildKit has none of these limits; real
/// Dockerfiles stay far below them.
pub(crate) const MAX_ARGS: usize = 1000;
/// ENV entries of a stage's image config.
pub(crate) const MAX_ENV: usize = 1000;
/// LABELs of a stage's image config.
pub(crate) const MAX_LABELS: usize = 1000;
/// The image config of a stage as JSON (ENV, LABEL, EXPOSE, VOLUME, ... all count).
pub(crate) const MAX_CONFIG_BYTES: usize = 256 << 10;
/// Longest WORKDIR and COPY/ADD destination (Linux's PATH_MAX).
pub(crate) const MAX_PATH_BYTES: usize = 4096;
/// Longest a plan may take; past it the build fails (the daemon keeps serving).
pub(crate) const MAX_PLAN_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// The limit `state` passes after an instruction, if any, as an error message.
fn over_limit(state: &State<'_>, config_json: &str) -> Option<String> {
    let config = &state.config.config;
    let env = config.env.as_ref().map_or(0, Vec::len);
    let labels = config.labels.as_ref().map_or(0, BTreeMap::len);
    let workdir = config.working_dir.as_ref().map_or(0, String::len);
    if state.args.len() > MAX_ARGS {
        Some(format!("more than {MAX_ARGS} ARGs in scope in one stage"))
    } else if env > MAX_ENV {
        Some(format!("more than {MAX_ENV} ENV variables in one stage"))
    } else if labels > MAX_LABELS {
        Some(format!("more than {MAX_LABELS} LABELs in one stage"))
    } else if workdir > MAX_PATH_BYTES {
        Some(format!(
            "the WORKDIR is {workdir} bytes long; paths have at most {MAX_PATH_BYTES}"
        ))
    } else if config_json.len() > MAX_CONFIG_BYTES {
        Some(format!(
            "the image config grows to {} bytes here; at most {MAX_CONFIG_BYTES} bytes are allowed",
            config_json.len()
        ))
    } else {
        None
    }
}

pub(super) fn expand_error(df: &Dockerfile, loc: Loc, e: ExpandError) -> DockerfileError {
    DockerfileError {
        file: df.name.clone(),
        loc,
        message: e.message,
        hint: None,
        changed_during_build: false,
    }
}

pub(super) fn err(df: &Dockerfile, loc: Loc, message: impl Into<String>) -> DockerfileError {
    DockerfileError {
        file: df.name.clone(),
        loc,
        message: message.into(),
        hint: None,
        changed_during_build: false,
    }
}

fn err_hint(
    df: &Dockerfile,
    loc: Loc,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> DockerfileError {
    DockerfileError {
        file: df.name.clone(),
        loc,
        message: message.into(),
        hint: Some(hint.into()),
        changed_during_build: false,
    }
}

/// What a stage's FROM names. `Ok(None)` when it names an image that is not in
/// the store: only an error if the stage is needed.
pub(super) fn resolve_base(
    df: &Dockerfile,
    stage: &Stage,
    global: &BTreeMap<String, String>,
    images: &dyn ImageSource,
) -> Result<Option<Base>, DockerfileError> {
    let name = expand::expand_word(&stage.from.value.image, global, df.escape)
        .map_err(|e| expand_error(df, stage.from.loc, e))?;
    if name.is_empty() {
        return Err(err_hint(
            df,
            stage.from.loc,
            "FROM names no image (it expanded to an empty string)",
            "set the ARG it uses, or name an image",
        ));
    }
    if let Some(platform) = &stage.from.value.platform {
        let platform = expand::expand_word(platform, global, df.escape)
            .map_err(|e| expand_error(df, stage.from.loc, e))?;
        let host = format!("linux/{}", memobuild_oci::config::host_architecture());
        if platform != host && !platform.starts_with("$") {
            return Err(err_hint(
                df,
                stage.from.loc,
                format!("--platform={platform} is not supported: this host builds {host}"),
                format!("drop --platform or use --platform={host}"),
            ));
        }
    }
    if name.eq_ignore_ascii_case("scratch") {
        return Ok(Some(Base::Scratch));
    }
    let lower = name.to_lowercase();
    if let Some(earlier) = df.stages[..stage.index]
        .iter()
        .find(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        return Ok(Some(Base::Stage(earlier.index)));
    }
    let image_name = normalize_image_name(&name);
    match images.image(&image_name) {
        Ok(Some(image)) => Ok(Some(Base::Image(Box::new(image)))),
        Ok(None) => Ok(None),
        Err(e) => Err(err(df, stage.from.loc, format!("base image {name}: {e}"))),
    }
}

pub(super) fn missing_base_error(df: &Dockerfile, index: usize) -> DockerfileError {
    let stage = &df.stages[index];
    err_hint(
        df,
        stage.from.loc,
        format!("base image {:?} is not in memobuild's image store", stage.from.value.image),
        "check the name; with --pull=never only images already in the store are used (build one with `memobuild-ctl build -t NAME` or load it with `memobuild-ctl image import`)",
    )
}

/// What a `COPY --from` or `RUN --mount=from=` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum FromRef {
    /// An earlier stage (Dockerfile index).
    Stage(usize),
    /// No stage has that name: an image, as FROM would name it (BuildKit).
    Image(String),
}

/// What a stage reads through `COPY --from` and `RUN --mount=from=`, with
/// where each is named.
pub(super) fn copy_from_stages(
    df: &Dockerfile,
    stage: &Stage,
) -> Result<Vec<(FromRef, Loc, FromUse)>, DockerfileError> {
    let mut out = Vec::new();
    for ins in &stage.instructions {
        match &ins.value {
            Instruction::Copy(spec) => {
                if let Some(from) = spec.flag("from") {
                    let name = from.value.as_deref().unwrap_or("");
                    out.push((
                        resolve_from(df, stage, name, from.loc, FromUse::Copy)?,
                        from.loc,
                        FromUse::Copy,
                    ));
                }
            }
            // RUN --mount=...,from=STAGE reads that stage too.
            Instruction::Run(spec) => {
                for flag in spec.flags.iter().filter(|f| f.name == "mount") {
                    let value = flag.value.as_deref().unwrap_or("");
                    let from = value.split(',').find_map(|p| {
                        let (k, v) = p.split_once('=')?;
                        k.eq_ignore_ascii_case("from").then_some(v)
                    });
                    if let Some(name) = from {
                        out.push((
                            resolve_from(df, stage, name, flag.loc, FromUse::Mount)?,
                            flag.loc,
                            FromUse::Mount,
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FromUse {
    Copy,
    Mount,
}

/// Resolves a `--from` name as BuildKit does: never expanded (a variable is
/// refused with BuildKit's reason), a stage name (any case) or index, which
/// must be defined before this stage; any other name is an image.
pub(super) fn resolve_from(
    df: &Dockerfile,
    stage: &Stage,
    raw: &str,
    loc: Loc,
    usage: FromUse,
) -> Result<FromRef, DockerfileError> {
    match usage {
        FromUse::Copy => {
            let unchanged =
                expand::expand_word(raw, &BTreeMap::new(), df.escape).is_ok_and(|word| word == raw);
            if !unchanged {
                return Err(err_hint(
                    df,
                    loc,
                    "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
                    "name a stage with `FROM ${VAR} AS name` (ARG before the first FROM) and copy --from that name",
                ));
            }
        }
        FromUse::Mount => {
            if raw.find('$').is_some_and(|i| i != raw.len() - 1) {
                return Err(err_hint(
                    df,
                    loc,
                    "'from' doesn't support variable expansion, define alias stage instead",
                    "name a stage with `FROM ${VAR} AS name` (ARG before the first FROM) and mount from that name",
                ));
            }
        }
    }
    let lower = raw.to_lowercase();
    let found = match lower.parse::<usize>() {
        Ok(i) => match df.stages.get(i) {
            Some(s) => s,
            None => {
                return Err(err_hint(
                    df,
                    loc,
                    format!(
                        "invalid stage index {i}: the Dockerfile has {} stages",
                        df.stages.len()
                    ),
                    "stages are numbered from 0 in the order of their FROM lines",
                ))
            }
        },
        Err(_) => match df
            .stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            Some(s) => s,
            None => return Ok(FromRef::Image(raw.to_string())),
        },
    };
    if found.index < stage.index {
        return Ok(FromRef::Stage(found.index));
    }
    let current = stage
        .name
        .clone()
        .unwrap_or_else(|| format!("stage-{}", stage.index));
    let message = match usage {
        FromUse::Copy => format!(
            "cannot copy from stage {raw:?}, it needs to be defined before current stage {current:?}"
        ),
        FromUse::Mount => format!(
            "cannot mount from stage {raw:?}, stage needs to be defined before current command"
        ),
    };
    Err(err_hint(
        df,
        loc,
        message,
        "move that stage above this one in the Dockerfile",
    ))
}

/// The error for a `--from` image that is not in the image store.
pub(super) fn missing_from_image(
    df: &Dockerfile,
    loc: Loc,
    usage: FromUse,
    name: &str,
) -> DockerfileError {
    let what = match usage {
        FromUse::Copy => "COPY --from",
        FromUse::Mount => "RUN --mount=from",
    };
    err_hint(
        df,
        loc,
        format!("{what}={name}: not in memobuild's image store (no stage has that name, so it names an image)"),
        "no stage has that name, so it names an image; check the name, or build one with `memobuild-ctl build -t NAME` or load it with `memobuild-ctl image import`",
    )
}

/// The position in `plan.stages` of what a `--from` names: a planned stage,
/// or the stage standing for an image (see [`super::implicit_stage`]).
fn from_position(
    si: &StageInput<'_, '_>,
    raw: &str,
    loc: Loc,
    usage: FromUse,
) -> Result<usize, DockerfileError> {
    let df = si.input.dockerfile;
    match resolve_from(df, si.stage, raw, loc, usage)? {
        FromRef::Stage(index) => Ok(si.planned[&index]),
        FromRef::Image(name) => si
            .implicit
            .get(&normalize_image_name(&name))
            .copied()
            .ok_or_else(|| missing_from_image(df, loc, usage, &name)),
    }
}

/// The evolving state of a stage while its instructions are planned.
struct State<'a> {
    df: &'a Dockerfile,
    config: ImageConfig,
    /// ARGs declared in this stage so far, with their values (unset ones absent).
    args: BTreeMap<String, String>,
    cmd_set: bool,
    parent_key: String,
    /// Files the current instruction selected (see `StepInputs::files`).
    files: BTreeMap<String, String>,
    /// `files` holds only the paths the plan was asked to focus on.
    partial: bool,
    /// `parent_key` is pending (see `Step::pending`).
    parent_pending: bool,
    /// Stage paths the current instruction reads, and their content digests
    /// (pending stand-ins where unknown).
    contents: Vec<(ContentRef, String, bool)>,
    /// The current instruction's history text, as BuildKit writes it.
    created_by: Option<String>,
    /// ARG names declared in the stage, with or without a value, in order
    /// (BuildKit's `d.buildArgs`: `RUN`'s history text lists them, and a
    /// reference to one is not `UndefinedVar`).
    declared: Vec<String>,
    /// `UndefinedVar` warnings of the instructions expanded so far.
    undefined: std::cell::RefCell<Vec<Warning>>,
}

/// The variables of an expansion, noting every name looked up but unset
/// (BuildKit's "unmatched" variables).
struct Noting<'v> {
    vars: &'v BTreeMap<String, String>,
    unset: std::cell::RefCell<BTreeSet<String>>,
}

impl expand::Vars for Noting<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        let found = self.vars.get(name).map(String::as_str);
        if found.is_none() {
            self.unset.borrow_mut().insert(name.to_string());
        }
        found
    }
}

/// Build args BuildKit never reports as undefined (its `nonEnvArgs`).
const NOT_ENV_ARGS: &[&str] = &["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

impl State<'_> {
    /// Records that the instruction reads `paths` of stage `position` and
    /// returns what `StepInputs::files` shows for it.
    fn read_stage(
        &mut self,
        si: &StageInput<'_, '_>,
        plan: &Plan,
        position: usize,
        paths: Vec<String>,
    ) -> String {
        let stage = &plan.stages[position];
        let stage_key = stage.final_key(&plan.steps);
        let known = if stage.final_pending(&plan.steps) {
            None
        } else {
            si.input
                .stage_contents
                .content_digest(&super::key::content_ref_key(&stage_key, &paths))
        };
        let (digest, pending) = match known {
            Some(d) => (d, false),
            None => (super::key::pending_content(&stage_key, &paths), true),
        };
        let shown = if pending {
            format!("pending:{stage_key}")
        } else {
            digest.clone()
        };
        self.contents.push((
            ContentRef {
                stage: position,
                paths,
            },
            digest,
            pending,
        ));
        shown
    }
}

impl State<'_> {
    /// Variables for expansion: ARGs, overridden by ENV as in Docker.
    fn vars(&self) -> BTreeMap<String, String> {
        let mut vars = self.args.clone();
        for kv in self.config.config.env.iter().flatten() {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            vars.insert(k.to_string(), v.to_string());
        }
        vars
    }

    fn expand(&self, word: &str, loc: Loc) -> Result<String, DockerfileError> {
        self.expanding(loc, |vars| expand::expand_word(word, vars, self.df.escape))
    }

    /// Runs one expansion of the instruction at `loc` with the stage's
    /// variables, and notes the names it found unset that no ARG of the
    /// stage declares (`UndefinedVar`, with BuildKit's "did you mean").
    fn expanding<T>(
        &self,
        loc: Loc,
        f: impl FnOnce(&dyn expand::Vars) -> Result<T, ExpandError>,
    ) -> Result<T, DockerfileError> {
        let vars = self.vars();
        let noting = Noting {
            vars: &vars,
            unset: Default::default(),
        };
        let result = f(&noting).map_err(|e| expand_error(self.df, loc, e))?;
        let unset = noting.unset.into_inner();
        if unset.is_empty() {
            return Ok(result);
        }
        let known: Vec<&str> = vars.keys().map(String::as_str).collect();
        for name in unset {
            if self.declared.contains(&name) || NOT_ENV_ARGS.contains(&name.as_str()) {
                continue;
            }
            let detail = match memobuild_dockerfile::suggest::closest(&name, &known, true) {
                Some(s) => format!("Usage of undefined variable '${name}' (did you mean ${s}?)"),
                None => format!("Usage of undefined variable '${name}'"),
            };
            self.undefined.borrow_mut().push(Warning {
                rule: &lint::UNDEFINED_VAR,
                detail,
                loc,
            });
        }
        Ok(result)
    }

    fn shell(&self) -> Vec<String> {
        self.config
            .config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    fn command(&self, form: &CommandForm) -> Vec<String> {
        match form {
            CommandForm::Exec(args) => args.clone(),
            CommandForm::Shell(text) => {
                let mut v = self.shell();
                v.push(text.clone());
                v
            }
        }
    }

    fn workdir(&self) -> String {
        self.config
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }
}

pub(super) fn plan_stage(
    si: &StageInput<'_, '_>,
    plan: &mut Plan,
    used_args: &mut BTreeSet<String>,
) -> Result<StagePlan, DockerfileError> {
    let df = si.input.dockerfile;
    let platform = format!("linux/{}", memobuild_oci::config::host_architecture());
    let base_key = base_key(&si.base, plan, si.planned, &platform, si.input.epoch);
    let base_pending = match &si.base {
        Base::Stage(s) => plan.stages[si.planned[s]].final_pending(&plan.steps),
        _ => false,
    };
    let config = match &si.base {
        Base::Scratch => ImageConfig::scratch(),
        Base::Stage(s) => plan.stages[si.planned[s]].config.clone(),
        Base::Image(image) => image.config.clone(),
    };
    let mut config = config;
    // ONBUILD triggers of the base are not inherited; they run first, as the
    // stage's first instructions (placed there by `super::with_triggers`).
    config.config.on_build = None;
    // BuildKit's empty image (FROM scratch) has WorkingDir "/"; a stage built
    // on an image or a stage keeps its base's value, an empty one too (RUN and
    // relative paths still use "/" then, see `State::workdir`).
    if matches!(si.base, Base::Scratch) {
        config.config.working_dir = Some("/".into());
    }
    let mut deps = Vec::new();
    if let Base::Stage(s) = &si.base {
        deps.push(si.planned[s]);
    }
    // A stage on an earlier stage starts with its ARGs (BuildKit).
    let args = match &si.base {
        Base::Stage(s) => plan.stages[si.planned[s]].args.clone(),
        _ => BTreeMap::new(),
    };
    let mut state = State {
        df,
        config,
        args,
        cmd_set: false,
        parent_key: base_key.clone(),
        files: BTreeMap::new(),
        partial: false,
        parent_pending: base_pending,
        contents: Vec::new(),
        created_by: None,
        declared: Vec::new(),
        undefined: Default::default(),
    };
    state.declared = state.args.keys().cloned().collect();
    let mut steps = Vec::new();
    let mut shared_args: Option<Arc<BTreeMap<String, String>>> = None;
    for ins in &si.stage.instructions {
        state.files.clear();
        state.partial = false;
        state.contents.clear();
        state.created_by = None;
        if si
            .input
            .cancelled
            .is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed))
        {
            return Err(err(
                df,
                ins.loc,
                "planning stopped here: the build was cancelled",
            ));
        }
        if si.started.elapsed() > MAX_PLAN_TIME {
            return Err(err(
                df,
                ins.loc,
                format!(
                    "planning the build took more than {} s; stopped here",
                    MAX_PLAN_TIME.as_secs()
                ),
            ));
        }
        let (op, extra_key) = apply(si, &mut state, ins, plan, &mut deps, used_args)?;
        let config_json = serde_json::to_string(&state.config).unwrap_or_default();
        if let Some(message) = over_limit(&state, &config_json) {
            return Err(err(df, ins.loc, message));
        }
        let own_key = own_key(&state, &config_json, ins, &extra_key);
        let digests: Vec<String> = state.contents.iter().map(|(_, d, _)| d.clone()).collect();
        let key = super::key::step_key(&state.parent_key, &own_key, &digests);
        let pending = state.parent_pending || state.contents.iter().any(|(_, _, p)| *p);
        state.parent_pending = pending;
        let contents = state.contents.drain(..).map(|(c, _, _)| c).collect();
        // Steps share one copy of the ARGs in scope until an ARG changes them
        // (a copy per step made ARG lines cost memory quadratically).
        if shared_args.as_deref() != Some(&state.args) {
            shared_args = Some(Arc::new(state.args.clone()));
        }
        let inputs = super::StepInputs {
            parent_key: std::mem::replace(&mut state.parent_key, key.clone()),
            args: shared_args.clone().unwrap_or_default(),
            files: std::mem::take(&mut state.files),
            partial: state.partial,
        };
        let index = plan.steps.len();
        plan.steps.push(Step {
            index,
            stage: plan.stages.len(),
            display: ins.source.clone(),
            loc: ins.loc,
            key,
            own_key,
            contents,
            pending,
            op,
            // ONBUILD has no history entry in BuildKit; every other
            // instruction has, with BuildKit's text.
            history: match ins.value {
                Instruction::Onbuild(_) => None,
                _ => Some(
                    state
                        .created_by
                        .take()
                        .unwrap_or_else(|| ins.source.clone()),
                ),
            },
            inputs,
        });
        steps.push(index);
    }
    deps.sort_unstable();
    deps.dedup();
    plan.lint_found.append(state.undefined.get_mut());
    Ok(StagePlan {
        index: si.stage.index,
        label: si.stage.label(),
        base: si.base.clone(),
        base_key,
        base_pending,
        steps,
        deps,
        config: state.config,
        args: state.args,
    })
}

/// COPY/ADD's history text as BuildKit writes it: the keyword,
/// `--parents`, `--chown=`, `--chmod=` (as given, expanded), the sources and
/// `<<NAME` for here-documents, the destination, `# buildkit`.
fn copy_history(
    st: &State<'_>,
    spec: &CopySpec,
    keyword: &str,
    dest: &str,
) -> Result<String, DockerfileError> {
    let mut text = keyword.to_string();
    if let Some(f) = spec.flag("parents") {
        if parse_bool_flag(st.df, f, "parents")? {
            text.push_str(" --parents");
        }
    }
    for name in ["chown", "chmod"] {
        if let Some(f) = spec.flag(name) {
            let value = st.expand(f.value.as_deref().unwrap_or(""), f.loc)?;
            if !value.is_empty() {
                text.push_str(&format!(" --{name}={value}"));
            }
        }
    }
    for s in &spec.sources {
        text.push(' ');
        text.push_str(&st.expand(&s.value, s.loc)?);
    }
    for doc in &spec.heredocs {
        text.push_str(&format!(" <<{}", doc.value.name));
    }
    text.push_str(&format!(" {dest} # buildkit"));
    Ok(text)
}

/// Parses the base's ONBUILD triggers as instructions placed at the FROM line.
pub(super) fn onbuild_triggers(
    df: &Dockerfile,
    stage: &Stage,
    triggers: Vec<String>,
) -> Result<Vec<Located<Instruction>>, DockerfileError> {
    let mut out = Vec::new();
    for trigger in triggers {
        let text = format!("FROM scratch\n{trigger}\n");
        let parsed = memobuild_dockerfile::parse(&text, &df.name).map_err(|e| {
            err(
                df,
                stage.from.loc,
                format!(
                    "ONBUILD trigger {trigger:?} of the base image: {}",
                    e.message
                ),
            )
        })?;
        for mut ins in parsed.stages.into_iter().flat_map(|s| s.instructions) {
            ins.loc = stage.from.loc;
            ins.source = format!("ONBUILD {}", ins.source);
            out.push(ins);
        }
    }
    Ok(out)
}

/// The step's own key: the instruction's effect (as the resulting config plus
/// the op's own canonical inputs) and the ARGs in scope; the step's key adds
/// the parent key and stage content digests (`key::step_key`).
fn own_key(
    state: &State<'_>,
    config_json: &str,
    ins: &Located<Instruction>,
    extra: &KeyHasher,
) -> String {
    let mut k = KeyHasher::new("own");
    k.str(ins.value.keyword());
    k.str(config_json);
    k.u64(state.args.len() as u64);
    for (name, value) in &state.args {
        k.str(name).str(value);
    }
    k.str(&extra.finish());
    k.finish()
}

type Applied = (Op, KeyHasher);

fn apply(
    si: &StageInput<'_, '_>,
    st: &mut State<'_>,
    ins: &Located<Instruction>,
    plan: &Plan,
    deps: &mut Vec<usize>,
    used_args: &mut BTreeSet<String>,
) -> Result<Applied, DockerfileError> {
    let df = st.df;
    let loc = ins.loc;
    let meta = || (Op::Meta, KeyHasher::new("meta"));
    match &ins.value {
        Instruction::Arg(decls) => {
            for d in decls {
                used_args.insert(d.name.clone());
                let value = match (si.input.build_args.get(&d.name), &d.default) {
                    (Some(v), _) => Some(v.clone()),
                    (None, Some(default)) => Some(st.expand(default, loc)?),
                    (None, None) => si.global.get(&d.name).cloned(),
                };
                match value {
                    Some(v) => st.args.insert(d.name.clone(), v),
                    None => st.args.remove(&d.name),
                };
                if !st.declared.contains(&d.name) {
                    st.declared.push(d.name.clone());
                }
            }
            let words: Vec<String> = decls
                .iter()
                .map(|d| match st.args.get(&d.name) {
                    Some(v) => format!("{}={v}", d.name),
                    None => d.name.clone(),
                })
                .collect();
            st.created_by = Some(format!("ARG {}", words.join(" ")));
            Ok(meta())
        }
        Instruction::Env(pairs) => {
            let mut expanded = Vec::new();
            for (k, v) in pairs {
                let k = st.expand(k, loc)?;
                let v = st.expand(v, loc)?;
                if k.is_empty() {
                    return Err(err(df, loc, "ENV names can not be blank"));
                }
                expanded.push((k, v));
            }
            let mut text = String::from("ENV");
            for (k, v) in expanded {
                text.push_str(&format!(" {k}={v}"));
                st.config.env_set(&k, &v);
            }
            st.created_by = Some(text);
            Ok(meta())
        }
        Instruction::Label(pairs) => {
            let mut text = String::from("LABEL");
            for (k, v) in pairs {
                let k = st.expand(k, loc)?;
                let v = st.expand(v, loc)?;
                if k.is_empty() {
                    return Err(err(df, loc, "LABEL names can not be blank"));
                }
                text.push_str(&format!(" {k}={v}"));
                st.config
                    .config
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(k, v);
            }
            st.created_by = Some(text);
            Ok(meta())
        }
        Instruction::Maintainer(name) => {
            st.config.author = Some(name.clone());
            st.created_by = Some(format!("MAINTAINER {name}"));
            Ok(meta())
        }
        Instruction::Workdir(raw) => {
            let dir = st.expand(raw, loc)?;
            if dir.is_empty() {
                return Err(err(df, loc, "WORKDIR needs a path"));
            }
            let path = absolute_clean(&st.workdir(), &dir);
            st.config.config.working_dir = Some(path.clone());
            st.created_by = Some(format!("WORKDIR {path}"));
            let user = st.config.config.user.clone().filter(|u| !u.is_empty());
            let mut k = KeyHasher::new("workdir");
            k.str(&path).str(user.as_deref().unwrap_or(""));
            Ok((Op::Workdir { path, user }, k))
        }
        Instruction::User(raw) => {
            let user = st.expand(raw, loc)?;
            if user.is_empty() {
                return Err(err(df, loc, "USER needs a user name or id"));
            }
            st.created_by = Some(format!("USER {user}"));
            st.config.config.user = Some(user);
            Ok(meta())
        }
        Instruction::Expose(raw) => {
            let words = st.expanding(loc, |vars| expand::expand_words(raw, vars, df.escape))?;
            let mut ports = Vec::new();
            for word in words {
                for port in parse_ports(&word).map_err(|m| {
                    err_hint(
                        df,
                        loc,
                        m,
                        "EXPOSE takes PORT, PORT/tcp, PORT/udp or a range such as 8000-8010",
                    )
                })? {
                    ports.push(port.clone());
                    st.config
                        .config
                        .exposed_ports
                        .get_or_insert_with(BTreeMap::new)
                        .insert(port, Empty {});
                }
            }
            st.created_by = Some(format!("EXPOSE {}", super::history::go_list(&ports)));
            Ok(meta())
        }
        Instruction::Volume(items) => {
            let mut volumes = Vec::new();
            for item in items {
                let v = st.expand(item, loc)?;
                if v.trim().is_empty() {
                    return Err(err(df, loc, "VOLUME specified can not be an empty string"));
                }
                volumes.push(v.clone());
                st.config
                    .config
                    .volumes
                    .get_or_insert_with(BTreeMap::new)
                    .insert(v, Empty {});
            }
            st.created_by = Some(format!("VOLUME {}", super::history::go_list(&volumes)));
            Ok(meta())
        }
        Instruction::Cmd(form) => {
            let cmd = st.command(form);
            st.created_by = Some(format!("CMD {}", super::history::go_quoted_list(&cmd)));
            st.config.config.cmd = Some(cmd);
            st.cmd_set = true;
            Ok(meta())
        }
        Instruction::Entrypoint(form) => {
            let entrypoint = st.command(form);
            st.created_by = Some(format!(
                "ENTRYPOINT {}",
                super::history::go_quoted_list(&entrypoint)
            ));
            st.config.config.entrypoint = Some(entrypoint);
            if !st.cmd_set {
                st.config.config.cmd = None;
            }
            Ok(meta())
        }
        Instruction::Shell(args) => {
            if args.is_empty() {
                return Err(err(df, loc, "SHELL requires at least one argument, in JSON form: SHELL [\"/bin/sh\", \"-c\"]"));
            }
            st.config.config.shell = Some(args.clone());
            st.created_by = Some(format!("SHELL {}", super::history::go_list(args)));
            Ok(meta())
        }
        Instruction::Stopsignal(raw) => {
            let sig = st.expand(raw, loc)?;
            if !valid_signal(&sig) {
                return Err(err_hint(
                    df,
                    loc,
                    format!("invalid signal {sig:?}"),
                    "use a signal name such as SIGTERM or a number such as 15",
                ));
            }
            st.created_by = Some(format!("STOPSIGNAL {sig}"));
            st.config.config.stop_signal = Some(sig);
            Ok(meta())
        }
        Instruction::Healthcheck(check) => {
            let health = match check {
                None => HealthConfig {
                    test: Some(vec!["NONE".into()]),
                    ..HealthConfig::default()
                },
                Some(h) => health_config(df, h)?,
            };
            st.created_by = Some(super::history::healthcheck(&health));
            st.config.config.healthcheck = Some(health);
            Ok(meta())
        }
        Instruction::Onbuild(trigger) => {
            st.config
                .config
                .on_build
                .get_or_insert_with(Vec::new)
                .push(trigger.clone());
            Ok(meta())
        }
        Instruction::Run(spec) => run_op(si, st, spec, loc, plan, deps),
        Instruction::Copy(spec) => copy_op(si, st, spec, false, loc, plan, deps),
        Instruction::Add(spec) => copy_op(si, st, spec, true, loc, plan, deps),
    }
}

fn copy_op(
    si: &StageInput<'_, '_>,
    st: &mut State<'_>,
    spec: &CopySpec,
    add: bool,
    loc: Loc,
    plan: &Plan,
    deps: &mut Vec<usize>,
) -> Result<Applied, DockerfileError> {
    let df = st.df;
    let keyword = if add { "ADD" } else { "COPY" };
    let raw_dest = st.expand(&spec.dest.value, spec.dest.loc)?;
    st.created_by = Some(copy_history(st, spec, keyword, &raw_dest)?);
    if raw_dest.len() > MAX_PATH_BYTES {
        return Err(err(
            df,
            spec.dest.loc,
            format!(
                "the destination is {} bytes long; paths have at most {MAX_PATH_BYTES}",
                raw_dest.len()
            ),
        ));
    }
    let dest_is_dir =
        raw_dest.ends_with('/') || raw_dest == "." || raw_dest.ends_with("/.") || raw_dest == "..";
    let mut dest = absolute_clean(&st.workdir(), &raw_dest);
    if dest_is_dir && !dest.ends_with('/') {
        dest.push('/');
    }
    let chown = match spec.flag("chown") {
        Some(f) => {
            Some(st.expand(f.value.as_deref().unwrap_or(""), f.loc)?).filter(|s| !s.is_empty())
        }
        None => None,
    };
    let chmod = match spec.flag("chmod") {
        Some(f) => {
            let text = st.expand(f.value.as_deref().unwrap_or(""), f.loc)?;
            Some(super::Chmod::parse(&text).map_err(|m| {
                err_hint(
                    df,
                    f.loc,
                    m,
                    "give an octal mode such as 0644 or 755, or a symbolic one such as u+x or go-w",
                )
            })?)
        }
        None => None,
    };
    let parents = match spec.flag("parents") {
        None => false,
        Some(f) => parse_bool_flag(df, f, "parents")?,
    };
    let mut exclude = Vec::new();
    for f in spec.flags.iter().filter(|f| f.name == "exclude") {
        exclude.push(st.expand(f.value.as_deref().unwrap_or(""), f.loc)?);
    }
    if let Err(e) = memobuild_context::dockerignore::DockerIgnore::parse(&exclude.join("\n")) {
        let loc = spec.flag("exclude").map_or(loc, |f| f.loc);
        return Err(err(df, loc, format!("--exclude: {}", e.message)));
    }
    let unpack = match spec.flag("unpack") {
        None => None,
        Some(f) => Some(parse_bool_flag(df, f, "unpack")?),
    };
    let checksum = match spec.flag("checksum") {
        Some(f) => Some(st.expand(f.value.as_deref().unwrap_or(""), f.loc)?),
        None => None,
    };
    let keep_git_dir = match spec.flag("keep-git-dir") {
        None => false,
        Some(f) => parse_bool_flag(df, f, "keep-git-dir")?,
    };
    let mut sources = Vec::new();
    let mut urls = Vec::new();
    let mut gits = Vec::new();
    for s in &spec.sources {
        let v = st.expand(&s.value, s.loc)?;
        if is_git_source(&v) {
            if !add {
                return Err(err(df, s.loc, "source can't be a git ref for COPY"));
            }
            gits.push((v, s.loc));
            continue;
        }
        if is_http_source(&v) {
            if !add {
                // BuildKit's text.
                return Err(err(df, s.loc, "source can't be a URL for COPY"));
            }
            urls.push((v, s.loc));
            continue;
        }
        sources.push((v, s.loc));
    }
    if let (Some(sum), Some(f)) = (&checksum, spec.flag("checksum")) {
        if urls.is_empty() && gits.is_empty() {
            return Err(err(df, f.loc, "checksum requires HTTP(S) or Git sources"));
        }
        if gits.is_empty() {
            parse_checksum(sum).map_err(|m| err(df, f.loc, m))?;
        } else if sum.is_empty() || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            // BuildKit's text.
            return Err(err(
                df,
                f.loc,
                format!("invalid checksum {sum:?}: expected hex commit hash"),
            ));
        }
    }
    if !gits.is_empty()
        && (gits.len() > 1 || !urls.is_empty() || !sources.is_empty() || !spec.heredocs.is_empty())
    {
        return Err(err_hint(
            df,
            loc,
            format!("{keyword} of a git repository with other sources is not supported"),
            "add each repository with an ADD of its own",
        ));
    }
    if !urls.is_empty() && (!sources.is_empty() || !spec.heredocs.is_empty()) {
        return Err(err_hint(
            df,
            loc,
            format!("{keyword} of URLs and of other sources in one instruction is not supported"),
            "split it into one ADD for the URLs and one for the other sources",
        ));
    }
    let mut inline = Vec::new();
    for doc in &spec.heredocs {
        let content = if doc.value.expand {
            st.expanding(doc.loc, |vars| {
                expand::expand_heredoc(&doc.value.content, vars)
            })?
        } else {
            doc.value.content.clone()
        };
        inline.push((doc.value.name.clone(), content.into_bytes()));
    }
    let mut k = KeyHasher::new(keyword);
    k.u64(inline.len() as u64);
    for (name, content) in &inline {
        k.str(name).field(content);
    }
    k.str(&dest).str(chown.as_deref().unwrap_or("")).str(
        chmod
            .as_ref()
            .map(|c| c.key_text())
            .as_deref()
            .unwrap_or("-"),
    );
    k.strs(sources.iter().map(|(s, _)| s.as_str()));
    // Absent from keys without them, so those keep their keys.
    if parents {
        k.str("parents");
    }
    if let Some(unpack) = unpack {
        k.str("unpack").u64(u64::from(unpack));
    }
    if !exclude.is_empty() {
        k.str("exclude").strs(exclude.iter().map(String::as_str));
    }

    let (source, root_patterns) = if let Some((repo, gloc)) = gits.first() {
        let git_ref = memobuild_dockerfile::gitref::parse(repo)
            .map_err(|m| err(df, *gloc, format!("{keyword} {repo}: {m}")))?;
        let (remote, reference, subdir) = (git_ref.remote, git_ref.reference, git_ref.subdir);
        // BuildKit: the flag and the URL's query must agree.
        if let (Some(f), Some(q)) = (spec.flag("keep-git-dir"), git_ref.keep_git_dir) {
            if q != keep_git_dir {
                return Err(err(df, f.loc, "inconsistent keep-git-dir configuration"));
            }
        }
        let keep_git_dir = git_ref.keep_git_dir.unwrap_or(keep_git_dir);
        let checksum = match (&checksum, git_ref.checksum) {
            (Some(flag), Some(query)) if *flag != query => {
                return Err(err(
                    df,
                    *gloc,
                    format!("checksum mismatch {flag:?} != {query:?}"),
                ))
            }
            (Some(flag), _) => Some(flag.clone()),
            (None, query) => query,
        };
        let options = super::GitOptions {
            keep_git_dir,
            submodules: git_ref.submodules.unwrap_or(true),
        };
        let tree = si
            .input
            .urls
            .git(&remote, &reference, options)
            .map_err(|m| {
                let message = format!("{keyword} {repo}: {m}");
                // Over ssh, git authenticates with the agent forwarded as
                // `default` (BuildKit's), and only with it.
                if memobuild_dockerfile::gitref::is_ssh_remote(&remote) {
                    err_hint(df, *gloc, message, SSH_GIT_HINT)
                } else {
                    err(df, *gloc, message)
                }
            })?;
        if let Some(sum) = &checksum {
            if !tree.commit.starts_with(sum.as_str()) {
                return Err(err(
                    df,
                    *gloc,
                    format!(
                        "{keyword} {repo}: expected checksum to match {sum}, got {}",
                        tree.commit
                    ),
                ));
            }
        }
        // The commit is the key input, as BuildKit keys a git source by it.
        k.str("git")
            .str(&tree.commit)
            .str(&subdir)
            .u64(u64::from(keep_git_dir))
            .u64(u64::from(options.submodules));
        st.files
            .insert(remote.clone(), format!("git:{}", tree.commit));
        (CopySource::Git { tree, subdir }, Vec::new())
    } else if !urls.is_empty() {
        if urls.len() > 1 && !dest_is_dir {
            return Err(multi_source_error(df, keyword, spec.dest.loc));
        }
        let mut files = Vec::new();
        for (url, uloc) in &urls {
            let fetched = si
                .input
                .urls
                .fetch(url)
                .map_err(|m| err(df, *uloc, format!("{keyword} {url}: {m}")))?;
            if let Some(sum) = &checksum {
                verify_checksum(sum, &fetched).map_err(|m| err(df, *uloc, m))?;
            }
            let name = url_file_name(url);
            // The downloaded content is the key input, as BuildKit keys an
            // HTTP source by its checksum.
            k.str("url").str(&name).str(&fetched.sha256);
            st.files.insert(url.clone(), fetched.sha256.clone());
            files.push(super::UrlFile {
                url: url.clone(),
                name,
                fetched,
            });
        }
        (CopySource::Url { files }, Vec::new())
    } else if let Some(from) = spec.flag("from") {
        let position = from_position(
            si,
            from.value.as_deref().unwrap_or(""),
            from.loc,
            FromUse::Copy,
        )?;
        deps.push(position);
        if sources.len() + inline.len() > 1 && !dest_is_dir {
            return Err(multi_source_error(df, keyword, spec.dest.loc));
        }
        let paths: Vec<String> = sources.into_iter().map(|(s, _)| s).collect();
        // The stage's content at these paths is a key input (not its key).
        let shown = st.read_stage(si, plan, position, paths.clone());
        st.files
            .insert(format!("stage:{}", plan.stages[position].label), shown);
        (
            CopySource::Stage {
                stage: position,
                paths,
            },
            Vec::new(),
        )
    } else {
        let index = si.input.context.clone();
        let mut roots = Vec::new();
        let mut root_patterns = Vec::new();
        let not_found = |e: select::SelectError, sloc: Loc| {
            err_hint(
                df,
                sloc,
                format!("{keyword} source: {e}"),
                "check the path (relative to the build context) and the .dockerignore",
            )
        };
        for (s, sloc) in &sources {
            let (root, pattern) = if parents {
                let (root, pattern) = split_parents(s);
                // BuildKit requires the path to exist unless it has wildcards.
                if !has_wildcard(root) && !has_wildcard(pattern) {
                    select::select(&index, &format!("{root}/{pattern}"))
                        .map_err(|e| not_found(e, *sloc))?;
                }
                (root, Some(pattern))
            } else {
                (s.as_str(), None)
            };
            let selected = match select::select(&index, root) {
                Ok(selected) => selected,
                // A wildcard pattern may match nothing (AllowEmptyWildcard).
                Err(select::SelectError::NotFound(_))
                    if pattern.is_some_and(has_wildcard) || has_wildcard(root) =>
                {
                    Vec::new()
                }
                Err(e) => return Err(not_found(e, *sloc)),
            };
            if let Some(pattern) = pattern {
                root_patterns.extend(selected.iter().map(|_| pattern.to_string()));
            }
            roots.extend(selected);
        }
        // BuildKit counts the sources as written: a wildcard matching several
        // roots copies each in turn to the destination.
        if sources.len() + inline.len() > 1 && !dest_is_dir {
            return Err(multi_source_error(df, keyword, spec.dest.loc));
        }
        // Patterns were checked above; what --exclude leaves out is no input.
        let excluded = memobuild_context::dockerignore::DockerIgnore::parse(&exclude.join("\n"))
            .unwrap_or_else(|_| memobuild_context::dockerignore::DockerIgnore::empty());
        let selection = hash_sources(&mut k, si.input, &index, &roots, &excluded).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                DockerfileError {
                    changed_during_build: true,
                    ..err(
                        df,
                        loc,
                        format!(
                            "{keyword}: a file of the build context {} ({e})",
                            memobuild_context::CHANGED_DURING_BUILD
                        ),
                    )
                }
            } else {
                err(
                    df,
                    loc,
                    format!("{keyword}: reading the build context: {e}"),
                )
            }
        })?;
        st.files = selection.shown;
        st.partial = selection.partial;
        (
            CopySource::Context {
                index,
                roots,
                digests: Arc::new(selection.files),
            },
            root_patterns,
        )
    };
    // BuildKit: ADD extracts local archives unless --unpack=false, and URLs
    // only with --unpack=true.
    let add = add && unpack.unwrap_or(urls.is_empty());
    Ok((
        Op::Copy(CopyOp {
            add,
            parents,
            root_patterns,
            exclude,
            source,
            dest,
            chown,
            chmod,
            inline,
        }),
        k,
    ))
}

fn run_op(
    si: &StageInput<'_, '_>,
    st: &mut State<'_>,
    spec: &RunSpec,
    loc: Loc,
    plan: &Plan,
    deps: &mut Vec<usize>,
) -> Result<Applied, DockerfileError> {
    let df = st.df;
    let args = st.command(&spec.command);
    // BuildKit's history text lists the stage's declared ARGs, each with
    // the value the RUN sees (an ENV of the same name wins).
    let build_args: Vec<(String, String)> = st
        .declared
        .iter()
        .map(|name| {
            let value = st
                .config
                .env_get(name)
                .map(String::from)
                .or_else(|| st.args.get(name).cloned())
                .unwrap_or_default();
            (name.clone(), value)
        })
        .collect();
    st.created_by = Some(super::history::run(&args, &build_args));
    let mut env: Vec<String> = st.config.config.env.clone().unwrap_or_default();
    for (name, value) in &st.args {
        if st.config.env_get(name).is_none() {
            env.push(format!("{name}={value}"));
        }
    }
    let mut network = RunNetwork::Default;
    let mut insecure = false;
    let mut mounts = Vec::new();
    for flag in &spec.flags {
        let value = st.expand(flag.value.as_deref().unwrap_or(""), flag.loc)?;
        match flag.name.as_str() {
            "network" => {
                network = match value.as_str() {
                    "default" => RunNetwork::Default,
                    "none" => RunNetwork::None,
                    "host" => RunNetwork::Host,
                    other => {
                        return Err(err_hint(
                            df,
                            flag.loc,
                            format!("unknown RUN --network={other}"),
                            "use --network=default, none or host",
                        ))
                    }
                }
            }
            "security" => {
                insecure = match value.as_str() {
                    "sandbox" => false,
                    "insecure" => true,
                    other => {
                        return Err(err_hint(
                            df,
                            flag.loc,
                            format!("unknown RUN --security={other}"),
                            "use --security=sandbox or insecure",
                        ))
                    }
                }
            }
            "mount" => mounts.push(parse_mount(si, st, flag, &value, deps)?),
            _ => {}
        }
    }
    ssh_defaults(&mut mounts, &mut env);
    if let Some(script) = &spec.script {
        mounts.push(RunMount::File {
            target: format!("/dev/pipes/{}", script.name),
            content: script.content.clone().into_bytes(),
            mode: 0o755,
        });
    }
    let mut k = KeyHasher::new("RUN");
    k.strs(args.iter().map(String::as_str));
    k.strs(env.iter().map(String::as_str));
    let user = st.config.config.user.clone().filter(|u| !u.is_empty());
    k.str(user.as_deref().unwrap_or(""));
    let cwd = st.workdir();
    k.str(&cwd);
    k.str(match network {
        RunNetwork::Default => "default",
        RunNetwork::None => "none",
        RunNetwork::Host => "host",
    });
    // Present only for a privileged step, so other keys stay as they were.
    if insecure {
        k.str("security=insecure");
    }
    // Absent (not empty) when unset, so keys without these options stay as they were.
    if !si.input.run_options.is_empty() {
        k.str(si.input.run_options);
    }
    mount_key(&mut k, &mounts, si, st, plan).map_err(|e| {
        err(
            df,
            loc,
            format!("RUN --mount: reading the build context: {e}"),
        )
    })?;
    Ok((
        Op::Run(RunOp {
            args,
            env,
            user,
            cwd,
            network,
            insecure,
            mounts,
        }),
        k,
    ))
}

/// BuildKit's defaults for ssh mounts (llb's ExecOp): the Nth one without
/// `target=` is at `/run/buildkit/ssh_agent.N`, and the step's
/// `SSH_AUTH_SOCK` is the first one's, unless its environment has one.
fn ssh_defaults(mounts: &mut [RunMount], env: &mut Vec<String>) {
    let mut first = None;
    let ssh = mounts.iter_mut().filter_map(|m| match m {
        RunMount::Ssh { target, .. } => Some(target),
        _ => None,
    });
    for (n, target) in ssh.enumerate() {
        if target.is_empty() {
            *target = format!("/run/buildkit/ssh_agent.{n}");
        }
        first.get_or_insert_with(|| target.clone());
    }
    if let Some(first) = first {
        if !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK=")) {
            env.push(format!("SSH_AUTH_SOCK={first}"));
        }
    }
}

/// Parses one `--mount=type=...,k=v,...` as BuildKit does.
fn parse_mount(
    si: &StageInput<'_, '_>,
    st: &State<'_>,
    flag: &Flag,
    value: &str,

    deps: &mut Vec<usize>,
) -> Result<RunMount, DockerfileError> {
    let df = st.df;
    let bad = |msg: String| {
        err_hint(
            df,
            flag.loc,
            msg,
            "see the RUN --mount reference: type=cache|secret|bind|tmpfs,target=PATH,...",
        )
    };
    // BuildKit's keys (any mount type); others are refused with a suggestion.
    const ALL_KEYS: &[&str] = &[
        "type",
        "from",
        "source",
        "target",
        "readonly",
        "id",
        "sharing",
        "required",
        "size",
        "mode",
        "uid",
        "gid",
        "src",
        "dst",
        "destination",
        "ro",
        "rw",
        "readwrite",
        "env",
    ];
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    // Normalised key -> the key as written.
    let mut written: BTreeMap<String, String> = BTreeMap::new();
    for part in value.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let lower = k.to_ascii_lowercase();
        if !ALL_KEYS.contains(&lower.as_str()) {
            return Err(bad(memobuild_dockerfile::suggest::with_suggestion(
                format!("unexpected key '{k}' in '{part}'"),
                k,
                ALL_KEYS,
                true,
            )));
        }
        let k = match lower.as_str() {
            "dst" | "destination" => "target".to_string(),
            "src" => "source".to_string(),
            "ro" | "readonly" => "readonly".to_string(),
            other => other.to_string(),
        };
        let v =
            if v.is_empty() && matches!(k.as_str(), "readonly" | "rw" | "readwrite" | "required") {
                "true"
            } else {
                v
            };
        written.insert(k.clone(), lower);
        fields.insert(k, v.to_string());
    }
    let kind = fields.remove("type").unwrap_or_else(|| "bind".into());
    let truthy = |v: Option<&String>| v.is_some_and(|v| v == "true" || v == "1");
    let workdir = st.workdir();
    let target = fields.get("target").map(|t| absolute_clean(&workdir, t));
    let known: &[&str] = match kind.as_str() {
        "cache" => &[
            "target", "id", "sharing", "readonly", "mode", "uid", "gid", "from", "source",
        ],
        "secret" => &[
            "target", "id", "source", "required", "mode", "uid", "gid", "env",
        ],
        "bind" => &["target", "source", "from", "rw", "readwrite", "readonly"],
        "tmpfs" => &["target", "size"],
        "ssh" => &["target", "id", "required", "mode", "uid", "gid"],
        other => {
            return Err(bad(memobuild_dockerfile::suggest::with_suggestion(
                format!("unsupported mount type {other:?}"),
                other,
                &["bind", "cache", "tmpfs", "secret", "ssh"],
                true,
            )))
        }
    };
    if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        let key = written.get(unknown).unwrap_or(unknown);
        return Err(bad(format!(
            "unexpected key '{key}' for mount type '{kind}'"
        )));
    }
    match kind.as_str() {
        "cache" => {
            let target = target.ok_or_else(|| bad("a cache mount needs target=PATH".into()))?;
            if fields.contains_key("from") {
                return Err(bad(
                    "cache mounts seeded from a stage (from=) are not supported".into(),
                ));
            }
            let source = fields
                .get("source")
                .map(|s| memobuild_rootpath::clean(s))
                .filter(|s| !s.is_empty());
            let sharing = match fields
                .get("sharing")
                .map(String::as_str)
                .unwrap_or("shared")
            {
                "shared" => CacheSharing::Shared,
                "private" => CacheSharing::Private,
                "locked" => CacheSharing::Locked,
                other => {
                    return Err(bad(format!(
                        "unknown sharing={other}: use shared, private or locked"
                    )))
                }
            };
            let owner = mount_owner(&fields, "cache", 0o755, &bad)?;
            Ok(RunMount::Cache {
                id: fields.get("id").cloned().unwrap_or_else(|| target.clone()),
                target,
                sharing,
                readonly: truthy(fields.get("readonly")),
                owner,
                source,
            })
        }
        "secret" => {
            // BuildKit (dispatchSecret): source= wins over id=; without
            // either, the target's base name.
            let id = match (fields.get("source").or(fields.get("id")), &target) {
                (Some(id), _) => id.clone(),
                (None, Some(t)) => t.rsplit('/').next().unwrap_or("").to_string(),
                (None, None) => {
                    return Err(bad("a secret mount needs id=ID or target=PATH".into()))
                }
            };
            let env = fields.get("env").cloned();
            // A file unless only env= was given.
            let target = match (target, &env) {
                (Some(t), _) => Some(t),
                (None, None) => Some(format!(
                    "/run/secrets/{}",
                    id.rsplit('/').next().unwrap_or("")
                )),
                (None, Some(_)) => None,
            };
            let owner = mount_owner(&fields, "secret", 0o400, &bad)?;
            Ok(RunMount::Secret {
                target,
                id,
                required: truthy(fields.get("required")),
                env,
                owner,
            })
        }
        "ssh" => {
            let owner = mount_owner(&fields, "ssh", 0o600, &bad)?.unwrap_or(super::CacheOwner {
                uid: 0,
                gid: 0,
                mode: 0o600,
            });
            Ok(RunMount::Ssh {
                id: fields
                    .get("id")
                    .filter(|id| !id.is_empty())
                    .cloned()
                    .unwrap_or_else(|| "default".to_string()),
                // Empty: the default, set once the step's mounts are known.
                target: target.unwrap_or_default(),
                required: truthy(fields.get("required")),
                owner,
            })
        }
        "bind" => {
            let target = target.ok_or_else(|| bad("a bind mount needs target=PATH".into()))?;
            let from = match fields.get("from") {
                Some(name) => {
                    let position = from_position(si, name, flag.loc, FromUse::Mount)?;
                    deps.push(position);
                    Some(position)
                }
                None => None,
            };
            Ok(RunMount::Bind {
                target,
                source: memobuild_rootpath::clean(
                    fields.get("source").map(String::as_str).unwrap_or(""),
                ),
                from,
                readwrite: truthy(fields.get("rw")) || truthy(fields.get("readwrite")),
            })
        }
        _ => Ok(RunMount::Tmpfs {
            target: target.ok_or_else(|| bad("a tmpfs mount needs target=PATH".into()))?,
            size: match fields.get("size") {
                Some(text) => Some(memobuild_dockerfile::parse_size(text).map_err(bad)?),
                None => None,
            },
        }),
    }
}

/// What mounts contribute to a RUN key: their kind, targets and options; a
/// bind mount's source content (context digest or source stage key); a
/// secret's identity (a MAC the daemon computes, see `PlanInput::secrets`).
/// Never a cache's content or a secret's value.
fn mount_key(
    k: &mut KeyHasher,
    mounts: &[RunMount],
    si: &StageInput<'_, '_>,
    st: &mut State<'_>,
    plan: &Plan,
) -> std::io::Result<()> {
    k.u64(mounts.len() as u64);
    for m in mounts {
        match m {
            RunMount::Cache {
                target,
                id,
                sharing,
                readonly,
                owner,
                source,
            } => {
                k.str("cache")
                    .str(target)
                    .str(id)
                    .str(&format!("{sharing:?}"))
                    .u64(u64::from(*readonly));
                match owner {
                    Some(o) => k
                        .u64(1)
                        .u64(o.uid.into())
                        .u64(o.gid.into())
                        .u64(o.mode.into()),
                    None => k.u64(0),
                };
                // Absent from keys without it, so those keep their keys.
                if let Some(source) = source {
                    k.str("source").str(source);
                }
            }
            RunMount::Secret {
                id,
                target,
                required,
                env,
                owner,
            } => {
                k.str("secret")
                    .str(id)
                    .str(target.as_deref().unwrap_or(""))
                    .u64(u64::from(*required));
                // Absent from keys without them, so those keep their keys.
                if let Some(env) = env {
                    k.str("env").str(env);
                }
                if let Some(o) = owner {
                    k.str("owner")
                        .u64(o.uid.into())
                        .u64(o.gid.into())
                        .u64(o.mode.into());
                }
                // The secret's identity (a daemon-keyed MAC, never its value)
                // or its absence: a step that read a secret is never reused
                // by a build without that very secret (docs/CACHE.md).
                let shown = match si.input.secrets.get(id) {
                    Some(mac) => {
                        k.str("provided").str(mac);
                        format!("provided:{}", mac.get(..16).unwrap_or(mac))
                    }
                    None => {
                        k.str("absent");
                        "absent".to_string()
                    }
                };
                st.files.insert(format!("secret:{id}"), shown);
            }
            // The mount and whose agents may answer (the requesting user's,
            // never which agent: see `SSH_USER`).
            RunMount::Ssh {
                id,
                target,
                required,
                owner,
            } => {
                k.str("ssh")
                    .str(id)
                    .str(target)
                    .u64(u64::from(*required))
                    .u64(owner.uid.into())
                    .u64(owner.gid.into())
                    .u64(owner.mode.into());
                let user = si.input.secrets.get(super::SSH_USER);
                match user {
                    Some(mac) => k.str("agents-of").str(mac),
                    None => k.str("no-agents"),
                };
                let shown = user.map_or("none".to_string(), |mac| {
                    format!("user:{}", mac.get(..16).unwrap_or(mac))
                });
                st.files.insert(format!("ssh:{id}"), shown);
            }
            RunMount::File {
                target,
                content,
                mode,
            } => {
                k.str("file").str(target).field(content).u64((*mode).into());
            }
            RunMount::Tmpfs { target, size } => {
                k.str("tmpfs").str(target);
                // Absent from keys without size=, so those keep their keys.
                if let Some(size) = size {
                    k.str("size").u64(*size);
                }
            }
            RunMount::Bind {
                target,
                source,
                from,
                readwrite,
            } => {
                k.str("bind")
                    .str(target)
                    .str(source)
                    .u64(u64::from(*readwrite));
                match from {
                    Some(stage) => {
                        let shown = st.read_stage(si, plan, *stage, vec![source.clone()]);
                        st.files
                            .insert(format!("stage:{}", plan.stages[*stage].label), shown);
                    }
                    None => {
                        let index = si.input.context.clone();
                        let roots = select::select(&index, source).map_err(|e| {
                            std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
                        })?;
                        let none = memobuild_context::dockerignore::DockerIgnore::empty();
                        let selection = hash_sources(k, si.input, &index, &roots, &none)?;
                        st.partial |= selection.partial;
                        st.files.extend(selection.shown);
                    }
                }
            }
        }
    }
    Ok(())
}

/// What to do when `ADD` of a git repository over ssh fails.
const SSH_GIT_HINT: &str = "ADD of a git repository over ssh authenticates with the ssh agent forwarded as `default` only: build with --ssh default (the agent at $SSH_AUTH_SOCK) or --ssh default=KEYFILE, with a key the server accepts";

/// BuildKit's isHTTPSource.
pub(crate) fn is_http_source(src: &str) -> bool {
    src.starts_with("http://") || src.starts_with("https://")
}

/// A git repository as ADD names one (BuildKit's gitutil): `git@host:...`,
/// `git://`, `ssh://`, or an HTTP(S) URL whose path ends in `.git` (with an
/// optional `#ref`).
pub(crate) fn is_git_source(src: &str) -> bool {
    if src.starts_with("git@") || src.starts_with("git://") || src.starts_with("ssh://") {
        return true;
    }
    if !is_http_source(src) {
        return false;
    }
    let without_ref = src.split('#').next().unwrap_or(src);
    let path = without_ref.split('?').next().unwrap_or(without_ref);
    path.trim_end_matches('/').ends_with(".git")
}

/// The file name an `ADD URL` writes: the URL path's last component, or
/// `__unnamed__` (BuildKit).
fn url_file_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .split_once('/')
        .map_or("", |(_, p)| p);
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() && name != "." && name != ".." => name.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

/// `--checksum=ALGO:HEX` as BuildKit (go-digest) accepts it: sha256, sha384
/// or sha512, lowercase hex of the right length.
fn parse_checksum(text: &str) -> Result<(&str, &str), String> {
    let Some((algo, hex)) = text.split_once(':') else {
        return Err(format!("invalid checksum digest format: {text:?}"));
    };
    let len = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("unsupported digest algorithm: {algo:?}")),
    };
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!("invalid checksum digest format: {text:?}"));
    }
    Ok((algo, hex))
}

/// Checks downloaded bytes against `--checksum`.
fn verify_checksum(text: &str, fetched: &super::Fetched) -> Result<(), String> {
    use sha2::Digest as _;
    let (algo, want) = parse_checksum(text)?;
    let got = if algo == "sha256" {
        fetched.sha256.clone()
    } else {
        let bytes =
            std::fs::read(&fetched.path).map_err(|e| format!("reading the download: {e}"))?;
        match algo {
            "sha384" => hex::encode(sha2::Sha384::digest(&bytes)),
            _ => hex::encode(sha2::Sha512::digest(&bytes)),
        }
    };
    if got == want {
        Ok(())
    } else {
        Err(format!("digest mismatch {algo}:{got}: {text}"))
    }
}

fn parse_bool_flag(
    df: &Dockerfile,
    f: &memobuild_dockerfile::Flag,
    name: &str,
) -> Result<bool, DockerfileError> {
    match f.value.as_deref() {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(err(
            df,
            f.loc,
            format!("expecting boolean value for flag {name}, not: {v}"),
        )),
    }
}

/// `COPY --parents SRC`: the root (before the first `/./`, or `/`) and the
/// pattern of what below it is copied with its path (BuildKit's pivot).
pub fn split_parents(src: &str) -> (&str, &str) {
    match src.split_once("/./") {
        Some((root, pattern)) => (
            if root.is_empty() { "/" } else { root },
            pattern.trim_start_matches('/'),
        ),
        None => ("/", src.trim_start_matches('/')),
    }
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn multi_source_error(df: &Dockerfile, keyword: &str, loc: Loc) -> DockerfileError {
    err_hint(
        df,
        loc,
        format!("when using {keyword} with more than one source file, the destination must be a directory and end with a /"),
        "add a trailing / to the destination",
    )
}

/// Adds the digest of exactly the selected files to the key: for each root, its
/// type, permission bits and symlink target, and its content: a file's BLAKE3
/// or a directory's Merkle digest (see `context::merkle`), which covers every
/// entry below with its path, type, permission bits, symlink target and
/// content. Never mtime, inode or owner.
///
/// A build also gets every selected file's digest (`files`, checked again
/// while the layer is written) and the per-path components `explain` compares
/// (`shown`). The dirty re-plan after a save only needs the key plus the
/// components of the paths that changed ([`PlanInput::focus`]), and gets the
/// key from cached directory digests without visiting unchanged directories.
///
/// With `--exclude` patterns (`exclude` not empty), what they leave out of
/// the copy is left out of the key too, as BuildKit's: an excluded root
/// counts as `excluded`, and a directory root by its entries the copy takes
/// (path, kind, mode, link target, content) instead of its Merkle digest.
fn hash_sources(
    k: &mut KeyHasher,
    input: &PlanInput<'_>,
    index: &memobuild_context::ContextIndex,
    roots: &[memobuild_context::Selected],
    exclude: &memobuild_context::dockerignore::DockerIgnore,
) -> std::io::Result<SelectionDigests> {
    let mut selection = match input.focus {
        None => flat_listing(index, roots, input.hashes)?,
        Some(paths) => focused_listing(index, roots, paths, input.hashes)?,
    };
    if !exclude.is_empty() {
        // Excluded files are no inputs `explain` shows either.
        for root in roots {
            let prefix_len = if root.rel.is_empty() {
                0
            } else {
                root.rel.len() + 1
            };
            let gone: Vec<String> = if root.meta.kind == FileKind::Dir {
                selection
                    .shown
                    .range(root.rel.clone()..)
                    .take_while(|(p, _)| root.rel.is_empty() || p.starts_with(&root.rel))
                    .filter(|(p, _)| {
                        p.len() > prefix_len
                            && (root.rel.is_empty() || p[root.rel.len()..].starts_with('/'))
                            && exclude.is_excluded(&p[prefix_len..])
                    })
                    .map(|(p, _)| p.clone())
                    .collect()
            } else if exclude.is_excluded(&root.name) {
                vec![root.rel.clone()]
            } else {
                Vec::new()
            };
            for p in gone {
                selection.shown.remove(&p);
            }
        }
    }
    let file_digest =
        |path: &str, meta: &memobuild_context::FileMeta| match selection.files.get(path) {
            Some(digest) => Ok(*digest),
            None => input.hashes.hash(&index.host_path(path), meta),
        };
    k.u64(roots.len() as u64);
    for root in roots {
        k.str(&root.name);
    }
    for root in roots {
        let meta = &root.meta;
        if !exclude.is_empty() && meta.kind != FileKind::Dir && exclude.is_excluded(&root.name) {
            k.str("excluded");
            continue;
        }
        k.u64(kind_code(meta.kind))
            .u64(meta.mode as u64)
            .str(meta.link_target.as_deref().unwrap_or(""));
        match meta.kind {
            FileKind::File => k.field(&file_digest(&root.rel, meta)?),
            FileKind::Dir if !exclude.is_empty() => {
                let prefix_len = if root.rel.is_empty() {
                    0
                } else {
                    root.rel.len() + 1
                };
                let mut h = blake3::Hasher::new();
                for (path, m) in index.below(&root.rel) {
                    let rel = &path[prefix_len..];
                    if exclude.is_excluded(rel) {
                        continue;
                    }
                    h.update(rel.as_bytes()).update(&[0]);
                    h.update(&kind_code(m.kind).to_le_bytes());
                    h.update(&u64::from(m.mode).to_le_bytes());
                    h.update(m.link_target.as_deref().unwrap_or("").as_bytes())
                        .update(&[0]);
                    match m.kind {
                        FileKind::File => h.update(&file_digest(path, m)?),
                        FileKind::NotUtf8 => return Err(memobuild_context::not_utf8_error(path)),
                        FileKind::CharDevice | FileKind::BlockDevice => h.update(&m.device_key()),
                        _ => h.update(&[0; 32]),
                    };
                }
                k.str("excluding").field(h.finalize().as_bytes())
            }
            FileKind::Dir => k.field(&input.merkle.digest(index, &root.rel, &file_digest)?),
            FileKind::NotUtf8 => return Err(memobuild_context::not_utf8_error(&root.rel)),
            _ => k.field(&meta.device_key()),
        };
    }
    Ok(selection)
}

/// Every entry of the selection with its key component, every file hashed (on
/// all cores, cache misses only).
fn flat_listing(
    index: &memobuild_context::ContextIndex,
    roots: &[memobuild_context::Selected],
    hashes: &memobuild_context::HashCache,
) -> std::io::Result<SelectionDigests> {
    let mut entries: Vec<(String, &memobuild_context::FileMeta)> = Vec::new();
    for root in roots {
        entries.push((root.rel.clone(), &root.meta));
        if root.meta.kind == FileKind::Dir {
            entries.extend(index.below(&root.rel).map(|(p, m)| (p.to_string(), m)));
        }
    }
    // A name that is not UTF-8 is refused, never left out of the copy.
    if let Some((path, _)) = entries.iter().find(|(_, m)| m.kind == FileKind::NotUtf8) {
        return Err(memobuild_context::not_utf8_error(path));
    }
    let files: Vec<(PathBuf, memobuild_context::FileMeta)> = entries
        .iter()
        .filter(|(_, m)| m.kind == FileKind::File)
        .map(|(path, m)| (index.host_path(path), (*m).clone()))
        .collect();
    let mut digests = hashes.hash_all(&files)?.into_iter();
    let mut selection = SelectionDigests::default();
    for (path, meta) in entries {
        let digest = (meta.kind == FileKind::File).then(|| digests.next().unwrap_or([0; 32]));
        selection.show(path, meta, digest);
    }
    Ok(selection)
}

/// Only the `focus` paths: their components where they are selected, and
/// [`super::ABSENT`] where they are not (gone, ignored or outside every root).
fn focused_listing(
    index: &memobuild_context::ContextIndex,
    roots: &[memobuild_context::Selected],
    focus: &std::collections::BTreeSet<String>,
    hashes: &memobuild_context::HashCache,
) -> std::io::Result<SelectionDigests> {
    let mut selection = SelectionDigests::default();
    for path in focus {
        let selected = roots.iter().any(|r| {
            r.rel.is_empty()
                || path == &r.rel
                || (path.starts_with(&r.rel) && path[r.rel.len()..].starts_with('/'))
        });
        match index.get(path).filter(|_| selected) {
            Some(meta) => {
                let digest = match meta.kind {
                    FileKind::File => Some(hashes.hash(&index.host_path(path), meta)?),
                    _ => None,
                };
                selection.show(path.clone(), meta, digest);
            }
            None => {
                selection
                    .shown
                    .insert(path.clone(), super::ABSENT.to_string());
            }
        }
    }
    selection.partial = true;
    Ok(selection)
}

/// What `hash_sources` learnt about a selection.
#[derive(Default)]
struct SelectionDigests {
    /// Context path -> human-comparable key component (see `StepInputs::files`).
    shown: BTreeMap<String, String>,
    /// Context path -> BLAKE3 of each selected regular file.
    files: BTreeMap<String, [u8; 32]>,
    /// Only some paths are shown (see [`focused_listing`]).
    partial: bool,
}

impl SelectionDigests {
    fn show(&mut self, path: String, meta: &memobuild_context::FileMeta, digest: Option<[u8; 32]>) {
        let component = match (meta.kind, digest) {
            (FileKind::File, Some(digest)) => {
                let component = format!("{} mode {:o}", hex::encode(digest), meta.mode);
                self.files.insert(path.clone(), digest);
                component
            }
            (FileKind::Symlink, _) => {
                format!("symlink:{}", meta.link_target.as_deref().unwrap_or(""))
            }
            (FileKind::Socket, _) => format!("socket mode {:o}", meta.mode),
            (FileKind::Fifo, _) => format!("fifo mode {:o}", meta.mode),
            (FileKind::CharDevice | FileKind::BlockDevice, _) => {
                let (major, minor) = meta.device_numbers().unwrap_or_default();
                let kind = if meta.kind == FileKind::CharDevice {
                    "char"
                } else {
                    "block"
                };
                format!("{kind} device {major}:{minor} mode {:o}", meta.mode)
            }
            _ => format!("dir:{:o}", meta.mode),
        };
        self.shown.insert(path, component);
    }
}

fn kind_code(kind: FileKind) -> u64 {
    match kind {
        FileKind::File => 1,
        FileKind::Dir => 2,
        FileKind::Symlink => 3,
        FileKind::Socket => 5,
        // Refused before any key is made (flat_listing).
        FileKind::NotUtf8 => 6,
        FileKind::Fifo => 7,
        FileKind::CharDevice => 8,
        FileKind::BlockDevice => 9,
    }
}

/// Joins `path` onto `base` (both slash paths) and cleans the result to an
/// absolute path without `.`/`..` components or a trailing slash.
pub(crate) fn absolute_clean(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{base}/{path}")
    };
    let cleaned = memobuild_context::select::clean_rel(&joined);
    format!("/{cleaned}")
}

fn parse_ports(word: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid protocol in EXPOSE {word:?}"));
    }
    let parse = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("invalid port in EXPOSE {word:?}"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => {
            let p = parse(ports)?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(format!("invalid port range in EXPOSE {word:?}"));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

fn valid_signal(sig: &str) -> bool {
    if let Ok(n) = sig.parse::<u32>() {
        return (1..=64).contains(&n);
    }
    let name = sig.strip_prefix("SIG").unwrap_or(sig);
    let name = name.split('+').next().unwrap_or(name);
    nix::sys::signal::Signal::iterator().any(|s| s.as_str().strip_prefix("SIG") == Some(name))
        || name.starts_with("RTMIN")
        || name.starts_with("RTMAX")
}

fn health_config(df: &Dockerfile, h: &Healthcheck) -> Result<HealthConfig, DockerfileError> {
    let mut cfg = HealthConfig {
        test: Some(match &h.command {
            CommandForm::Exec(args) => std::iter::once("CMD".to_string())
                .chain(args.iter().cloned())
                .collect(),
            CommandForm::Shell(text) => vec!["CMD-SHELL".to_string(), text.clone()],
        }),
        ..HealthConfig::default()
    };
    for flag in &h.flags {
        let value = flag.value.clone().unwrap_or_default();
        let dur = || {
            parse_go_duration(&value).ok_or_else(|| {
                err_hint(
                    df,
                    flag.loc,
                    format!("invalid --{}={value}", flag.name),
                    "use a duration such as 30s, 1m30s or 500ms",
                )
            })
        };
        match flag.name.as_str() {
            "interval" => cfg.interval = dur()?,
            "timeout" => cfg.timeout = dur()?,
            "start-period" => cfg.start_period = dur()?,
            "start-interval" => cfg.start_interval = dur()?,
            "retries" => {
                cfg.retries = value
                    .parse::<i64>()
                    .ok()
                    .filter(|r| *r >= 0)
                    .ok_or_else(|| {
                        err(
                            df,
                            flag.loc,
                            format!("invalid --retries={value}: want a whole number"),
                        )
                    })?
            }
            _ => {}
        }
    }
    Ok(cfg)
}

/// Go's time.ParseDuration, in nanoseconds.
pub(crate) fn parse_go_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Some(total as i64)
}

/// A mount's `uid=`, `gid=` (decimal) and `mode=` (octal) options; `None`
/// when none is given, else the missing ones as 0, 0 and `default_mode`.
fn mount_owner(
    fields: &BTreeMap<String, String>,
    kind: &str,
    default_mode: u32,
    bad: &dyn Fn(String) -> DockerfileError,
) -> Result<Option<super::CacheOwner>, DockerfileError> {
    let number = |key: &str, radix: u32| -> Result<Option<u32>, DockerfileError> {
        fields
            .get(key)
            .map(|v| {
                u32::from_str_radix(v, radix)
                    .map_err(|_| bad(format!("invalid {key}={v} for a {kind} mount")))
            })
            .transpose()
    };
    let (uid, gid, mode) = (number("uid", 10)?, number("gid", 10)?, number("mode", 8)?);
    Ok(
        (uid.is_some() || gid.is_some() || mode.is_some()).then(|| super::CacheOwner {
            uid: uid.unwrap_or(0),
            gid: gid.unwrap_or(0),
            mode: mode.unwrap_or(default_mode),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_go_duration("30s"), Some(30_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(parse_go_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_go_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_go_duration("x"), None);
        assert_eq!(parse_go_duration("10"), None);
    }

    #[test]
    fn ports_expand_ranges_and_protocols() {
        assert_eq!(parse_ports("80").unwrap(), vec!["80/tcp"]);
        assert_eq!(parse_ports("53/UDP").unwrap(), vec!["53/udp"]);
        assert_eq!(
            parse_ports("8000-8002").unwrap(),
            vec!["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert!(parse_ports("http").is_err());
    }

    #[test]
    fn paths_join_and_clean_inside_root() {
        assert_eq!(absolute_clean("/app", "a/../b"), "/app/b");
        assert_eq!(absolute_clean("/app", "/x/"), "/x");
        assert_eq!(absolute_clean("/", "../../etc"), "/etc");
        assert_eq!(normalize_image_name("busybox"), "busybox:latest");
        assert_eq!(
            normalize_image_name("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
        assert_eq!(normalize_image_name("x:1"), "x:1");
        assert_eq!(
            normalize_image_name("docker.io/library/busybox"),
            "busybox:latest"
        );
        assert_eq!(
            normalize_image_name("docker.io/saved/base:2"),
            "saved/base:2"
        );
    }
}
