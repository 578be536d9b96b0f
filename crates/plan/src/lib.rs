//! The build graph: from a parsed Dockerfile, a request and the context to a
//! [`Plan`] — one [`Step`] per instruction of every stage the target needs, each
//! with everything it will do already resolved (variables expanded, paths made
//! absolute, sources selected) and its cache key computed.
//!
//! Planning reads the context's metadata and hashes the files COPY/ADD select
//! (and gets what `ADD https://...` names from a [`UrlSource`]), but never
//! touches the filesystem of an image: what depends on the parent
//! layers (does the destination exist? who is user `app`?) is decided when the
//! step runs, in `exec`, and is covered by the key through the parent's key.

// What other crates may use is what this file exports; the rest is private.
#![warn(unreachable_pub)]

mod chmod;
mod epoch;
mod history;
pub mod key;
pub mod lint;
mod stage;

pub use chmod::Chmod;

pub use stage::{is_predefined_arg, split_parents};

use key::KeyHasher;
use memobuild_context::{ContextIndex, HashCache, Selected};
use memobuild_dockerfile::{expand, suggest, Dockerfile, DockerfileError, Loc};
use memobuild_oci::image::{ImageSource, StoredImage};
use memobuild_oci::ImageConfig;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Everything a plan is made from.
pub struct PlanInput<'a> {
    pub dockerfile: &'a Dockerfile,
    pub target: &'a str,
    pub build_args: &'a BTreeMap<String, String>,
    pub context: Arc<ContextIndex>,
    pub hashes: &'a HashCache,
    /// Directory digests, reused across plans.
    pub merkle: &'a memobuild_context::merkle::DirDigests,
    /// Only for telling which steps are dirty (the plan is never executed):
    /// compute keys, but key components only for these context paths.
    pub focus: Option<&'a std::collections::BTreeSet<String>>,
    /// Where FROM names resolve.
    pub images: &'a dyn ImageSource,
    /// SOURCE_DATE_EPOCH from the client (a number); the plan resolves the
    /// Dockerfile's default when it is `None` (`Plan::epoch`). It changes
    /// layer bytes (clamped mtimes), so the resolved value is a key input.
    pub epoch: Option<i64>,
    /// Build-wide RUN options that change what a RUN sees (`--network`,
    /// `--add-host`, `--shm-size`, `--ulimit`), canonical text; a key input of
    /// every RUN when not empty (see docs/CACHE.md).
    pub run_options: &'a str,
    /// Content digests of stage paths computed by earlier builds.
    pub stage_contents: &'a dyn StageContents,
    /// Where `ADD URL` downloads come from.
    pub urls: &'a dyn UrlSource,
    /// The identity of each secret the build provides, by id: a MAC of its
    /// value under a key only the daemon knows (hex), never the value. A
    /// RUN that mounts a secret is keyed on it, or on its absence, so its
    /// result is never reused by a build without that very secret.
    /// [`SSH_USER`] is no secret: with it, the build forwards ssh agents.
    pub secrets: &'a BTreeMap<String, String>,
    /// Set when nobody waits for the plan any more (its build was
    /// cancelled): planning stops at the next instruction.
    pub cancelled: Option<&'a std::sync::atomic::AtomicBool>,
}

/// The entry of [`PlanInput::secrets`] that says the build forwards ssh
/// agents, for whom: a daemon-keyed MAC of the requesting user. A RUN that
/// mounts an agent is keyed on it, so its result (which may hold what only
/// that user's keys could fetch) is reused by that user's builds only.
/// BuildKit keys no agent; on a shared build host that would hand one user's
/// private clone to another. The daemon refuses secret ids that start with NUL.
pub const SSH_USER: &str = "\0ssh-user";

/// Content digests of paths in stage results that are already known, by
/// [`key::content_ref_key`]; the engine computes them when a stage has run.
pub trait StageContents {
    fn content_digest(&self, ref_key: &str) -> Option<String>;
}

/// Downloads what `ADD https://...` names. The planner asks this with the
/// expanded URL and keys the step by the content it gets, as BuildKit keys an
/// HTTP source by its checksum; the daemon downloads (or revalidates a copy
/// by its ETag), tests answer from a map.
pub trait UrlSource {
    /// The content at `url`, downloaded to a local file.
    fn fetch(&self, url: &str) -> Result<Fetched, String>;

    /// The newest mtime of a regular file in the archive `fetched` holds
    /// (a tar, possibly compressed), or `None` when it is not an archive: a
    /// SOURCE_DATE_EPOCH stage's time when the server sent no `Last-Modified`.
    fn archive_max_mtime(&self, fetched: &Fetched) -> Option<i64> {
        let _ = fetched;
        None
    }

    /// The committer time (Unix seconds) of the commit a checkout made with
    /// its `.git` (`keep_git_dir`) holds: a SOURCE_DATE_EPOCH stage's time
    /// when it ADDs a git repository (BuildKit's).
    fn git_commit_time(&self, tree: &GitTree) -> Result<i64, String> {
        let _ = tree;
        Err("git commit times are not available here".into())
    }

    /// `ADD REMOTE#REF`: the tree of the commit `reference` names (the
    /// remote's HEAD when empty; otherwise a ref the remote has, as `git
    /// ls-remote` matches it, or a full commit id), checked out in a local
    /// directory as `options` say.
    fn git(&self, remote: &str, reference: &str, options: GitOptions) -> Result<GitTree, String> {
        let _ = (reference, options);
        Err(format!("{remote}: git repositories are not available here"))
    }
}

/// How a git repository is checked out for `ADD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GitOptions {
    /// Keep `.git` (`--keep-git-dir`, `?keep-git-dir`).
    pub keep_git_dir: bool,
    /// Check out submodules, recursively (BuildKit's default; `?submodules=false`).
    pub submodules: bool,
}

/// A checked-out git commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitTree {
    /// The checkout, kept until the build ends.
    pub dir: std::path::PathBuf,
    /// The full hex commit hash (SHA-1 or SHA-256).
    pub commit: String,
}

/// A downloaded URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The downloaded bytes, in a file that stays until the build ends.
    pub path: std::path::PathBuf,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    /// The response's `Last-Modified`, Unix seconds: the file's mtime in
    /// the layer (BuildKit's HTTP source); not part of the cache key.
    pub modified: Option<i64>,
}

/// Fetches nothing: every URL is an error (for plans that must not touch the
/// network).
pub struct NoUrls;

impl UrlSource for NoUrls {
    fn fetch(&self, url: &str) -> Result<Fetched, String> {
        Err(format!("{url}: downloads are not available here"))
    }
}

/// Knows no content digest: every step reading a stage's paths is pending.
pub struct NoStageContents;

impl StageContents for NoStageContents {
    fn content_digest(&self, _: &str) -> Option<String> {
        None
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// The Dockerfile's name, for errors (`FILE:LINE:COL`).
    pub file: String,
    pub stages: Vec<StagePlan>,
    pub steps: Vec<Step>,
    /// Index of the stage whose result is the build's image.
    pub target: usize,
    /// Things the user should know (unused build args, ...).
    pub warnings: Vec<String>,
    /// Image names the stages start FROM, and the manifests they resolved to.
    pub images: BTreeMap<String, String>,
    /// BuildKit's lint warnings (`--call=check`); [`plan`] leaves it empty,
    /// the caller fills it with [`lint::lint`] (which needs the text).
    pub lint: Vec<memobuild_dockerfile::lint::Warning>,
    /// What planning found for the lint rules only it can check
    /// (`UndefinedVar`, `InvalidBaseImagePlatform`): pass it to
    /// [`lint::lint`], which applies the `# check=` settings.
    pub lint_found: Vec<memobuild_dockerfile::lint::Warning>,
    /// `# check=error=true` and some warning in [`Plan::lint`]: the build
    /// fails with this (BuildKit's `lint violation found for rules: ...`).
    pub lint_error: Option<String>,
    /// SOURCE_DATE_EPOCH as resolved (the client's number, or the
    /// Dockerfile's default: a number or a source-only stage; see `epoch.rs`):
    /// what clamps file times and sets `created`.
    pub epoch: Option<i64>,
}

impl Plan {
    /// Position in [`Plan::stages`] of the stage that stage `position` is
    /// built FROM, if it is built on an earlier stage. (Not `deps[0]`: deps
    /// are sorted, so a `COPY --from` stage defined before the base comes first.)
    pub fn base_stage(&self, position: usize) -> Option<usize> {
        match self.stages.get(position)?.base {
            Base::Stage(index) => self.stages.iter().position(|s| s.index == index),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StagePlan {
    /// The Dockerfile stage; `usize::MAX` for the stage that stands for an
    /// image named by `COPY --from`/`--mount=from` (no steps, see `implicit_stage`).
    pub index: usize,
    pub label: String,
    pub base: Base,
    /// Key the stage's first step chains from.
    pub base_key: String,
    /// `base_key` is pending (the base is a stage whose key is).
    pub base_pending: bool,
    /// Indexes into [`Plan::steps`], in order.
    pub steps: Vec<usize>,
    /// Stages this one reads (its base and `COPY --from` sources).
    pub deps: Vec<usize>,
    /// The image config after the stage's last instruction (rootfs and history are
    /// filled in when the image is assembled).
    pub config: ImageConfig,
    /// The ARGs in scope after the stage's last instruction: a stage built
    /// FROM this one starts with them (BuildKit inherits the base's build args).
    pub args: BTreeMap<String, String>,
}

impl StagePlan {
    /// The stage's result key is pending (see [`Step::pending`]).
    pub(crate) fn final_pending(&self, steps: &[Step]) -> bool {
        self.steps
            .last()
            .map(|&i| steps[i].pending)
            .unwrap_or(self.base_pending)
    }

    /// Key of the stage's result: its last step's key, or its base's.
    pub(crate) fn final_key(&self, steps: &[Step]) -> String {
        self.steps
            .last()
            .map(|&i| steps[i].key.clone())
            .unwrap_or_else(|| self.base_key.clone())
    }
}

#[derive(Debug, Clone)]
pub enum Base {
    Scratch,
    Stage(usize),
    Image(Box<StoredImage>),
}

#[derive(Debug, Clone)]
pub struct Step {
    pub index: usize,
    pub stage: usize,
    /// The instruction as written (continuations joined).
    pub display: String,
    pub loc: Loc,
    /// Hex BLAKE3 cache key; when `pending`, a stand-in (see [`key::pending_content`]).
    pub key: String,
    /// The key's own inputs (everything but the parent key and `contents`).
    pub own_key: String,
    /// Stage paths whose content digests are key inputs, in order.
    pub contents: Vec<ContentRef>,
    /// The key needs a content digest that is known only once a stage has run
    /// (this step's or an earlier one's): the engine computes the real key
    /// with [`key::step_key`] when it reaches the step.
    pub pending: bool,
    pub op: Op,
    /// `created_by` for the image history, as BuildKit writes it
    /// (`history.rs`); `None` for ONBUILD, which has no entry.
    pub history: Option<String>,
    /// The key's components, kept so `status` and `explain` can name what changed.
    pub inputs: StepInputs,
}

/// Paths (as written, expanded) in the result of stage `stage` (a position in
/// [`Plan::stages`]) that a step reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentRef {
    pub stage: usize,
    pub paths: Vec<String>,
}

/// The key component of a focus path the step does not select (see
/// [`StepInputs::partial`]).
pub const ABSENT: &str = "-";

/// What went into a step's key, in a form a person can compare.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepInputs {
    pub parent_key: String,
    /// ARGs in scope (shared by the steps between two ARG changes).
    pub args: Arc<BTreeMap<String, String>>,
    /// Context path -> BLAKE3 hex (files), `dir`, or `symlink:TARGET`; for
    /// `COPY --from`, `stage:NAME` -> that stage's key; for a secret mount,
    /// `secret:ID` -> `provided:` and the start of its MAC, or `absent`.
    pub files: BTreeMap<String, String>,
    /// `files` lists only the paths of [`PlanInput::focus`], with
    /// [`ABSENT`] for those the step does not select.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

#[derive(Debug, Clone)]
pub enum Op {
    /// Changes only the image config.
    Meta,
    /// `WORKDIR`: create `path` (absolute) and missing parents, owned by `user`.
    Workdir {
        path: String,
        user: Option<String>,
    },
    Copy(CopyOp),
    Run(RunOp),
}

/// A RUN step, resolved except for what needs the parent filesystem (user names).
#[derive(Debug, Clone, PartialEq)]
pub struct RunOp {
    /// The process: exec form as written, shell form as `[SHELL..., text]`.
    pub args: Vec<String>,
    /// ENV of the stage, then ARGs in scope that no ENV overrides (as BuildKit).
    pub env: Vec<String>,
    /// USER (name or id, resolved in the parent's /etc/passwd when run).
    pub user: Option<String>,
    pub cwd: String,
    pub network: RunNetwork,
    /// `--security=insecure`: run privileged (needs the `security.insecure`
    /// entitlement when it runs).
    pub insecure: bool,
    pub mounts: Vec<RunMount>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunNetwork {
    /// No `--network`: the daemon's default.
    Default,
    None,
    Host,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

/// Owner and mode of a cache mount's directory (see [`RunMount::Cache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheOwner {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RunMount {
    /// A directory kept by the daemon across builds, never in a layer or key.
    Cache {
        target: String,
        id: String,
        sharing: CacheSharing,
        readonly: bool,
        /// `uid=`, `gid=`, `mode=`: with any of them the step mounts the
        /// cache's `cache/` subdirectory, created with these (0, 0, 0755 for
        /// those not given), as BuildKit mounts `/cache` of a Mkdir state;
        /// without them, the cache's root (0:0, 0755).
        owner: Option<CacheOwner>,
        /// `source=`: a subdirectory of the cache to mount (cleaned, relative);
        /// a path through a symlink is refused when the step runs.
        source: Option<String>,
    },
    /// A secret the client sent with the build, present only during the step.
    Secret {
        id: String,
        /// The file's path; `None` when only `env=` was given (BuildKit
        /// mounts no file then).
        target: Option<String>,
        required: bool,
        /// `env=NAME`: the secret is also the value of NAME in the step.
        env: Option<String>,
        /// `uid=`, `gid=`, `mode=`: the file's owner and mode (0, 0, 0400 for
        /// those not given); without them, the step's user and 0400.
        owner: Option<CacheOwner>,
    },
    /// A socket forwarding to the client's ssh agent `id` (`build --ssh`),
    /// present only during the step; never in a key (BuildKit's `type=ssh`).
    Ssh {
        /// `id=`, else `default`.
        id: String,
        /// `target=`, else `/run/buildkit/ssh_agent.N` (N counts the step's
        /// ssh mounts from 0).
        target: String,
        /// `required=true`: the step fails when the client forwards no `id`;
        /// otherwise it runs without the socket.
        required: bool,
        /// The socket's owner and mode (`uid=`, `gid=`, `mode=`; 0, 0, 0600).
        owner: CacheOwner,
    },
    /// Files from the context (`from: None`) or another stage, read-only unless `rw`.
    Bind {
        target: String,
        source: String,
        from: Option<usize>,
        readwrite: bool,
    },
    /// An empty tmpfs; `size` in bytes (`size=` accepts Docker's units).
    Tmpfs { target: String, size: Option<u64> },
    /// One file with `content` and `mode`, read-only at `target` (a shebang
    /// here-document RUN executes, at `/dev/pipes/NAME`).
    File {
        target: String,
        content: Vec<u8>,
        mode: u32,
    },
}

#[derive(Debug, Clone)]
pub struct CopyOp {
    /// Archives are extracted: ADD of local files unless `--unpack=false`,
    /// ADD of URLs only with `--unpack=true`.
    pub add: bool,
    /// `COPY --parents`: each source is split at its first `/./` (or at
    /// `/` without one) into a root and a pattern, and the entries below the
    /// root the pattern selects keep their path relative to the root under
    /// the destination (BuildKit's IncludePatterns on the root's contents).
    pub parents: bool,
    /// For a context source with `--parents`: the pattern of each of
    /// `roots`, in order.
    pub root_patterns: Vec<String>,
    /// `--exclude` patterns (.dockerignore syntax), matched against paths
    /// relative to each copied root.
    pub exclude: Vec<String>,
    pub source: CopySource,
    /// Absolute destination; ends with `/` when it names a directory.
    pub dest: String,
    /// `--chown` after expansion (`user[:group]`, names or ids).
    pub chown: Option<String>,
    pub chmod: Option<Chmod>,
    /// Here-document sources: (file name, content after expansion), each a
    /// 0644 file (BuildKit's "inline document").
    pub inline: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
pub enum CopySource {
    /// Selected roots in the build context, per source as written.
    Context {
        index: Arc<ContextIndex>,
        roots: Vec<Selected>,
        /// BLAKE3 of every selected file (context path), as in the cache key.
        digests: Arc<BTreeMap<String, [u8; 32]>>,
    },
    /// Paths (as written, expanded) in another stage's result.
    Stage { stage: usize, paths: Vec<String> },
    /// `ADD URL...`: downloaded files, each named after its URL's last path
    /// component (`__unnamed__` without one), mode 0600 unless `--chmod`.
    Url { files: Vec<UrlFile> },
    /// `ADD` of a git repository: the checkout's tree (a subdirectory of it
    /// with `#ref:subdir`) copied into the destination directory.
    Git { tree: GitTree, subdir: String },
}

#[derive(Debug, Clone)]
pub struct UrlFile {
    pub url: String,
    pub name: String,
    pub fetched: Fetched,
}

/// Plans the build of `input.target` (or the last stage).
pub fn plan(input: &PlanInput<'_>) -> Result<Plan, DockerfileError> {
    let started = std::time::Instant::now();
    let df = input.dockerfile;
    let target = find_target(df, input.target)?;
    let mut global = global_args(df, input.build_args, target)?;
    // SOURCE_DATE_EPOCH resolved once; ARGs see the number (BuildKit's
    // setBuildArgValue), or nothing when it resolved to no time.
    let epoch = epoch::resolve(df, input.epoch, input.build_args, &global, input.urls)?;
    let mut build_args = input.build_args.clone();
    let text = epoch.map(|e| e.to_string()).unwrap_or_default();
    for args in [&mut global, &mut build_args] {
        if let Some(v) = args.get_mut(epoch::NAME) {
            *v = text.clone();
        }
    }
    let build_args = &build_args;
    let bases = df
        .stages
        .iter()
        .map(|s| stage::resolve_base(df, s, &global, input.images))
        .collect::<Result<Vec<_>, _>>()?;
    // The ONBUILD triggers of each stage's base run first in it: they are
    // planned as its first instructions, so what they name (stages, images)
    // is a dependency like what the stage names itself (BuildKit).
    let (effective, trigger_errors) = with_triggers(df, &bases);
    let df = &effective;
    let input = &PlanInput {
        dockerfile: df,
        target: input.target,
        build_args,
        context: input.context.clone(),
        hashes: input.hashes,
        merkle: input.merkle,
        focus: input.focus,
        images: input.images,
        epoch,
        run_options: input.run_options,
        stage_contents: input.stage_contents,
        urls: input.urls,
        secrets: input.secrets,
        cancelled: input.cancelled,
    };
    let needed = needed_stages(df, &bases, target, &trigger_errors)?;

    let mut plan = Plan {
        file: df.name.clone(),
        stages: Vec::new(),
        steps: Vec::new(),
        target: 0,
        warnings: Vec::new(),
        images: BTreeMap::new(),
        lint: Vec::new(),
        lint_found: Vec::new(),
        lint_error: None,
        epoch,
    };
    for &index in &needed {
        if let Some(Base::Image(image)) = &bases[index] {
            let name = expand::expand_word(&df.stages[index].from.value.image, &global, df.escape)
                .unwrap_or_default();
            if let Some(w) = platform_mismatch(&name, image, df.stages[index].from.loc) {
                plan.lint_found.push(w);
            }
            plan.images.insert(
                memobuild_oci::normalize_image_name(&name),
                image.manifest_digest.clone(),
            );
        }
    }
    let mut planned: BTreeMap<usize, usize> = BTreeMap::new();
    let mut implicit: BTreeMap<String, usize> = BTreeMap::new();
    let mut used_args: BTreeSet<String> = global.keys().cloned().collect();
    for &index in &needed {
        for (from, loc, usage) in stage::copy_from_stages(df, &df.stages[index])? {
            if let stage::FromRef::Image(name) = from {
                implicit_stage(input, &mut plan, &mut implicit, &name, loc, usage)?;
            }
        }
        let base = bases[index]
            .clone()
            .ok_or_else(|| unreachable_base(df, index))?;
        let position = plan.stages.len();
        let stage_plan = stage::plan_stage(
            &stage::StageInput {
                input,
                stage: &df.stages[index],
                base,
                global: &global,
                planned: &planned,
                implicit: &implicit,
                started,
            },
            &mut plan,
            &mut used_args,
        )?;
        plan.stages.push(stage_plan);
        planned.insert(index, position);
    }
    plan.target = planned[&target];
    let unused: Vec<&String> = input
        .build_args
        .keys()
        .filter(|k| {
            !used_args.contains(*k) && !stage::is_predefined_arg(k) && !is_frontend_option(k)
        })
        .collect();
    if !unused.is_empty() {
        plan.warnings.push(format!(
            "one or more build args were not consumed: {}",
            unused
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Ok(plan)
}

/// Build args BuildKit's frontend reads itself (`BUILDKIT_SANDBOX_HOSTNAME`,
/// ...): never reported as unused.
fn is_frontend_option(name: &str) -> bool {
    name.starts_with("BUILDKIT_")
}

/// `COPY --from=IMAGE` and `RUN --mount=from=IMAGE` with a name no stage
/// has: a stage of no steps built FROM that image (BuildKit's implicit
/// stage), planned once per image.
fn implicit_stage(
    input: &PlanInput<'_>,
    plan: &mut Plan,
    implicit: &mut BTreeMap<String, usize>,
    name: &str,
    loc: Loc,
    usage: stage::FromUse,
) -> Result<(), DockerfileError> {
    let df = input.dockerfile;
    let normalized = memobuild_oci::normalize_image_name(name);
    if implicit.contains_key(&normalized) {
        return Ok(());
    }
    let image = match input.images.image(&normalized) {
        Ok(Some(image)) => image,
        Ok(None) => return Err(stage::missing_from_image(df, loc, usage, name)),
        Err(e) => {
            return Err(DockerfileError {
                file: df.name.clone(),
                loc,
                message: format!("image {name}: {e}"),
                hint: None,
                changed_during_build: false,
            })
        }
    };
    plan.images
        .insert(normalized.clone(), image.manifest_digest.clone());
    let base = Base::Image(Box::new(image));
    let platform = format!("linux/{}", memobuild_oci::config::host_architecture());
    let base_key = base_key(&base, plan, &BTreeMap::new(), &platform, input.epoch);
    let config = match &base {
        Base::Image(image) => image.config.clone(),
        _ => ImageConfig::scratch(),
    };
    implicit.insert(normalized, plan.stages.len());
    plan.stages.push(StagePlan {
        index: usize::MAX,
        label: name.to_string(),
        base,
        base_key,
        base_pending: false,
        steps: Vec::new(),
        deps: Vec::new(),
        config,
        args: BTreeMap::new(),
    });
    Ok(())
}

fn unreachable_base(df: &Dockerfile, index: usize) -> DockerfileError {
    DockerfileError {
        file: df.name.clone(),
        loc: df.stages[index].from.loc,
        message: "internal error: stage base not resolved".into(),
        hint: None,
        changed_during_build: false,
    }
}

/// BuildKit's automatic args: the platform of the build host and of the
/// target (the same: memobuild builds for the host's platform), and
/// TARGETSTAGE, the target stage's name (`default` for an unnamed last stage).
/// They are in the global scope: FROM lines see them without an ARG line, a
/// stage sees one once it declares it (`ARG TARGETARCH`).
pub(crate) fn automatic_args(df: &Dockerfile, target: usize) -> BTreeMap<String, String> {
    let os = "linux";
    let arch = memobuild_oci::config::host_architecture();
    let variant = if arch == "arm" { "v7" } else { "" };
    let platform = if variant.is_empty() {
        format!("{os}/{arch}")
    } else {
        format!("{os}/{arch}/{variant}")
    };
    let mut args = BTreeMap::new();
    for side in ["BUILD", "TARGET"] {
        args.insert(format!("{side}PLATFORM"), platform.clone());
        args.insert(format!("{side}OS"), os.to_string());
        args.insert(format!("{side}ARCH"), arch.to_string());
        args.insert(format!("{side}VARIANT"), variant.to_string());
    }
    let stage = df.stages.get(target).and_then(|s| s.name.clone());
    args.insert(
        "TARGETSTAGE".into(),
        stage.unwrap_or_else(|| "default".into()),
    );
    args
}

/// `InvalidBaseImagePlatform`: the base image `name` was made for another
/// platform than the build's (the host's). An image whose config names no
/// platform is not reported.
fn platform_mismatch(
    name: &str,
    image: &memobuild_oci::image::StoredImage,
    loc: Loc,
) -> Option<memobuild_dockerfile::lint::Warning> {
    let (os, arch) = (&image.config.os, &image.config.architecture);
    let host = memobuild_oci::config::host_architecture();
    if os.is_empty() || arch.is_empty() || (os == "linux" && arch == host) {
        return None;
    }
    Some(memobuild_dockerfile::lint::Warning {
        rule: &memobuild_dockerfile::lint::INVALID_BASE_IMAGE_PLATFORM,
        detail: format!(
            "Base image {name} was pulled with platform \"{os}/{arch}\", expected \"linux/{host}\" for current build"
        ),
        loc,
    })
}

/// Values of the ARGs declared before the first FROM over the automatic ones
/// ([`automatic_args`]): build args override defaults.
fn global_args(
    df: &Dockerfile,
    build_args: &BTreeMap<String, String>,
    target: usize,
) -> Result<BTreeMap<String, String>, DockerfileError> {
    let mut vars = automatic_args(df, target);
    for decls in &df.global_args {
        for decl in &decls.value {
            let value = match (build_args.get(&decl.name), &decl.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(default)) => Some(
                    expand::expand_word(default, &vars, df.escape)
                        .map_err(|e| stage::expand_error(df, decls.loc, e))?,
                ),
                (None, None) => None,
            };
            if let Some(v) = value {
                vars.insert(decl.name.clone(), v);
            }
        }
    }
    Ok(vars)
}

fn find_target(df: &Dockerfile, target: &str) -> Result<usize, DockerfileError> {
    if target.is_empty() {
        return Ok(df.stages.len() - 1);
    }
    let wanted = target.to_lowercase();
    df.stages
        .iter()
        .position(|s| s.name.as_deref() == Some(wanted.as_str()))
        .ok_or_else(|| {
            let names: Vec<String> = df.stages.iter().filter_map(|s| s.name.clone()).collect();
            DockerfileError {
                file: df.name.clone(),
                loc: Loc { line: 1, column: 1 },
                // BuildKit's text and suggestion.
                message: suggest::with_suggestion(
                    format!("target stage {target:?} could not be found"),
                    target,
                    &names.iter().map(String::as_str).collect::<Vec<_>>(),
                    true,
                ),
                hint: Some(if names.is_empty() {
                    "no stage has a name; name one with `FROM image AS name`".into()
                } else {
                    format!("stages with names: {}", names.join(", "))
                }),
                changed_during_build: false,
            }
        })
}

/// Stages the target depends on, in Dockerfile order (which is a topological
/// order: a stage may only refer to stages before it).
/// `df` with the ONBUILD triggers of each stage's base (an image's
/// `OnBuild`, or the ONBUILD instructions of the stage it is built FROM)
/// placed before the stage's own instructions; a stage whose triggers do not
/// parse has its error instead (reported only if the stage is needed).
fn with_triggers(
    df: &Dockerfile,
    bases: &[Option<Base>],
) -> (Dockerfile, Vec<Option<DockerfileError>>) {
    let mut out = df.clone();
    let mut errors = vec![None; df.stages.len()];
    for (i, stage) in out.stages.iter_mut().enumerate() {
        let texts: Vec<String> = match &bases[i] {
            Some(Base::Image(image)) => image.config.config.on_build.clone().unwrap_or_default(),
            Some(Base::Stage(s)) => df.stages[*s]
                .instructions
                .iter()
                .filter_map(|ins| match &ins.value {
                    memobuild_dockerfile::Instruction::Onbuild(t) => Some(t.clone()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        if texts.is_empty() {
            continue;
        }
        match stage::onbuild_triggers(df, &df.stages[i], texts) {
            Ok(mut triggers) => {
                triggers.append(&mut stage.instructions);
                stage.instructions = triggers;
            }
            Err(e) => errors[i] = Some(e),
        }
    }
    (out, errors)
}

fn needed_stages(
    df: &Dockerfile,
    bases: &[Option<Base>],
    target: usize,
    trigger_errors: &[Option<DockerfileError>],
) -> Result<Vec<usize>, DockerfileError> {
    let mut needed = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if !needed.insert(i) {
            continue;
        }
        if let Some(e) = &trigger_errors[i] {
            return Err(e.clone());
        }
        let base = bases[i]
            .as_ref()
            .ok_or_else(|| stage::missing_base_error(df, i))?;
        if let Base::Stage(s) = base {
            todo.push(*s);
        }
        for (dep, _, _) in stage::copy_from_stages(df, &df.stages[i])? {
            if let stage::FromRef::Stage(dep) = dep {
                todo.push(dep);
            }
        }
    }
    Ok(needed.into_iter().collect())
}

/// Key of a stage's starting point.
pub fn base_key(
    base: &Base,
    plan: &Plan,
    planned: &BTreeMap<usize, usize>,
    platform: &str,
    epoch: Option<i64>,
) -> String {
    let epoch = epoch.map(|e| e.to_string()).unwrap_or_default();
    match base {
        Base::Scratch => KeyHasher::new("scratch").str(platform).str(&epoch).finish(),
        Base::Stage(s) => {
            let stage = &plan.stages[planned[s]];
            stage.final_key(&plan.steps)
        }
        Base::Image(image) => KeyHasher::new("image")
            .str(&image.manifest_digest)
            .str(&epoch)
            .finish(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memobuild_context::dockerignore::DockerIgnore;
    use memobuild_context::merkle::DirDigests;
    use memobuild_context::Tree;

    use memobuild_context::testutil::write_old as write;

    struct Fixture {
        hashes: HashCache,
        merkle: DirDigests,
        dockerfile: Dockerfile,
        args: BTreeMap<String, String>,
    }

    impl Fixture {
        fn keys(&self, tree: &Tree, focus: Option<&BTreeSet<String>>) -> Vec<String> {
            let ignore = DockerIgnore::parse("*.log\n").unwrap();
            let plan = plan(&PlanInput {
                dockerfile: &self.dockerfile,
                target: "",
                build_args: &self.args,
                context: Arc::new(ContextIndex::view(tree, &tree.root, ignore)),
                hashes: &self.hashes,
                merkle: &self.merkle,
                focus,
                images: &BTreeMap::new(),
                epoch: None,
                run_options: "",
                stage_contents: &NoStageContents,
                urls: &NoUrls,
                secrets: &BTreeMap::new(),
                cancelled: None,
            })
            .unwrap();
            plan.steps.iter().map(|s| s.key.clone()).collect()
        }
    }

    /// The WorkingDir of `target`'s image, planned with no context files.
    fn working_dir(
        df: &Dockerfile,
        tree: &Tree,
        images: &BTreeMap<String, StoredImage>,
        target: &str,
    ) -> Option<String> {
        let plan = plan(&PlanInput {
            dockerfile: df,
            target,
            build_args: &BTreeMap::new(),
            context: Arc::new(ContextIndex::view(
                tree,
                &tree.root,
                DockerIgnore::parse("").unwrap(),
            )),
            hashes: &HashCache::new(),
            merkle: &DirDigests::new(),
            focus: None,
            images,
            epoch: None,
            run_options: "",
            stage_contents: &NoStageContents,
            urls: &NoUrls,
            secrets: &BTreeMap::new(),
            cancelled: None,
        })
        .unwrap();
        plan.stages[plan.target].config.config.working_dir.clone()
    }

    /// WorkingDir: "/" for FROM scratch (BuildKit's empty image); a stage on
    /// an image whose config has none keeps none, and one on a stage inherits.
    #[test]
    fn working_dir_is_set_only_for_scratch() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::scan(dir.path()).unwrap();
        let mut images = BTreeMap::new();
        let mut bare = ImageConfig::scratch();
        bare.config.working_dir = None;
        images.insert(
            "bare:latest".to_string(),
            StoredImage {
                manifest_digest: "sha256:00".into(),
                config_digest: "sha256:01".into(),
                config: bare,
                layers: Vec::new(),
                size: 0,
            },
        );
        let df = memobuild_dockerfile::parse(
            "FROM scratch AS a\nFROM bare AS b\nFROM b AS c\nFROM bare AS d\nWORKDIR sub\n",
            "Dockerfile",
        )
        .unwrap();
        let wd = |target: &str| working_dir(&df, &tree, &images, target);
        assert_eq!(wd("a").as_deref(), Some("/"));
        assert_eq!(wd("b"), None);
        assert_eq!(wd("c"), None);
        assert_eq!(wd("d").as_deref(), Some("/sub"));
    }

    /// A stage built FROM an earlier stage starts with that stage's ARGs
    /// (BuildKit's dispatchState inherits `buildArgs` from its base).
    #[test]
    fn args_are_inherited_from_the_base_stage() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Tree::scan(dir.path()).unwrap();
        let df = memobuild_dockerfile::parse(
            "FROM scratch AS one\nARG BASE_DIR=/base\nFROM one AS two\nWORKDIR $BASE_DIR/sub\nFROM scratch\nWORKDIR x$BASE_DIR\n",
            "Dockerfile",
        )
        .unwrap();
        let wd = |target: &str| working_dir(&df, &tree, &BTreeMap::new(), target);
        assert_eq!(wd("two").as_deref(), Some("/base/sub"));
        assert_eq!(wd("").as_deref(), Some("/x"), "not in an unrelated stage");
    }

    /// The dirty check plans with a focus and cached directory digests, a
    /// build plans in full: both must give the same keys for the same tree,
    /// or `status` would call a step dirty that the build finds cached.
    #[test]
    fn focused_and_full_plans_agree_on_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ctx");
        for (rel, text) in [
            ("src/a.c", "a"),
            ("src/lib/b.c", "b"),
            ("x.log", "log"),
            ("README", "r"),
        ] {
            write(&root, rel, text);
        }
        let fixture = Fixture {
            hashes: HashCache::new(),
            merkle: DirDigests::new(),
            dockerfile: memobuild_dockerfile::parse(
                "FROM scratch\nCOPY src/ /src/\nCOPY . /ctx/\nCOPY *.c README /top/\n",
                "Dockerfile",
            )
            .unwrap(),
            args: BTreeMap::new(),
        };
        let mut tree = Tree::scan(&root).unwrap();
        let mut seen = vec![fixture.keys(&tree, None)];
        let edits: [(&str, &dyn Fn()); 5] = [
            ("src/lib/b.c", &|| write(&root, "src/lib/b.c", "b2")),
            ("x.log", &|| write(&root, "x.log", "ignored")),
            ("new.c", &|| write(&root, "new.c", "new")),
            ("src/lib", &|| {
                std::fs::remove_dir_all(root.join("src/lib")).unwrap()
            }),
            ("README", &|| write(&root, "README", "r2")),
        ];
        let mut focus = BTreeSet::new();
        for (path, edit) in edits {
            edit();
            tree.refresh(path, &mut Vec::new()).unwrap();
            focus.insert(path.to_string());
            let focused = fixture.keys(&tree, Some(&focus));
            let full = fixture.keys(&tree, None);
            assert_eq!(focused, full, "after editing {path}");
            assert!(!fixture.merkle.is_empty(), "directory digests were cached");
            assert_eq!(
                seen.contains(&full),
                path == "x.log",
                "only the ignored edit leaves every key as it was ({path})"
            );
            seen.push(full);
        }
    }
}

/// An image a needed stage starts FROM (see [`base_images`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    /// The name as written, variables expanded.
    pub name: String,
    /// Where the FROM is, for errors.
    pub loc: Loc,
    /// The image store already has an image of this name.
    pub present: bool,
    /// What names it, for errors: `FROM `, `COPY --from=` or `RUN --mount=from=`.
    pub named_by: &'static str,
}

/// The images the stages `target` needs start FROM: what the registry step
/// pulls before planning (stages the target does not need pull nothing).
pub fn base_images(
    df: &Dockerfile,
    target: &str,
    build_args: &BTreeMap<String, String>,
    images: &dyn ImageSource,
) -> Result<Vec<BaseImage>, DockerfileError> {
    let target = find_target(df, target)?;
    let global = global_args(df, build_args, target)?;
    let mut needed = BTreeSet::new();
    let mut todo = vec![target];
    let mut out = Vec::new();
    while let Some(i) = todo.pop() {
        if !needed.insert(i) {
            continue;
        }
        let stage = &df.stages[i];
        match stage::resolve_base(df, stage, &global, images)? {
            Some(Base::Stage(s)) => todo.push(s),
            Some(Base::Scratch) => {}
            found => out.push(BaseImage {
                name: expand::expand_word(&stage.from.value.image, &global, df.escape)
                    .unwrap_or_default(),
                loc: stage.from.loc,
                present: found.is_some(),
                named_by: "FROM ",
            }),
        }
        for (from, loc, usage) in stage::copy_from_stages(df, stage)? {
            match from {
                stage::FromRef::Stage(dep) => todo.push(dep),
                stage::FromRef::Image(name) => {
                    let present = images
                        .image(&memobuild_oci::normalize_image_name(&name))
                        .is_ok_and(|found| found.is_some());
                    let named_by = match usage {
                        stage::FromUse::Copy => "COPY --from=",
                        stage::FromUse::Mount => "RUN --mount=from=",
                    };
                    let base = BaseImage {
                        name,
                        loc,
                        present,
                        named_by,
                    };
                    if !out.contains(&base) {
                        out.push(base);
                    }
                }
            }
        }
    }
    Ok(out)
}
