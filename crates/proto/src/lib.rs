//! The contract between `memobuildd` and `memobuild-ctl`.
//!
//! Both binaries depend on this crate and nothing else of each other: the tarpc
//! service trait ([`Memobuild`]), the request and response types, the progress
//! events, and the rules for finding the daemon's socket.
//!
//! Everything here crosses the socket as named MessagePack ([`wire`]): fields
//! are found by name, so a field added with `#[serde(default)]` is compatible
//! both ways (an older peer skips it; a newer one defaults it). Removing or
//! renaming a field, or adding an enum variant an older peer must decode,
//! needs a [`PROTOCOL_VERSION`] bump. The same types are printed as JSON by
//! `--json` outputs, which makes their field names part of the stable JSON
//! schema documented in docs/CLI.md.

// What other crates may use is what this file exports; the rest is private.
#![warn(unreachable_pub)]

pub mod fds;
pub mod handoff;
pub mod paths;
pub mod registry;
pub mod sshfwd;
mod states;
pub mod wire;

use serde::{Deserialize, Serialize};
pub use serde_bytes::ByteBuf;
pub use states::{BuildLogState, ProjectState, StepOutcome, StepState, TreeMode};
use std::collections::BTreeMap;

/// Bump when the RPC contract changes incompatibly; the client refuses to talk to a
/// daemon with another version and says how to restart it.
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest frame on the socket. Blob reads are chunked well below this.
pub const MAX_FRAME_BYTES: usize = 32 * 1024 * 1024;

/// Size of one chunk when the client downloads a blob to write `-o` outputs.
pub const BLOB_CHUNK_BYTES: u64 = 4 * 1024 * 1024;

#[tarpc::service]
pub trait Memobuild {
    /// Who is answering: versions and where the daemon keeps its state.
    async fn hello() -> Result<DaemonInfo, RpcError>;
    /// Starts a build and returns its id at once; progress comes from [`Memobuild::events`].
    async fn start_build(request: BuildRequest) -> Result<BuildId, RpcError>;
    /// Long-polls the events of a build from `cursor` on. Returns when there is at
    /// least one new event, the build has ended, or a few seconds have passed.
    async fn events(build: BuildId, cursor: u64) -> Result<EventBatch, RpcError>;
    /// Images in the daemon's image store.
    async fn images() -> Result<Vec<ImageSummary>, RpcError>;
    /// The manifest and every blob an image needs, for writing `-o` outputs.
    async fn image_blobs(manifest_digest: String) -> Result<ImageBlobs, RpcError>;
    /// Reads part of a verified blob from the daemon's store.
    async fn read_blob(digest: String, offset: u64, len: u64) -> Result<ByteBuf, RpcError>;
    /// Projects, their steps' state and the daemon's health, from memory.
    /// `filter`: a project id or a context path; empty = all.
    async fn status(filter: String) -> Result<StatusReport, RpcError>;
    /// Drops a project (by id or context path): its watch and its records.
    async fn forget(filter: String) -> Result<Vec<String>, RpcError>;
    /// Why each step of the project's last build was cached or rebuilt.
    async fn explain(filter: String) -> Result<Explanation, RpcError>;
    /// Waits (up to a few seconds) until the project's state changes after
    /// `generation`; returns the current generation.
    async fn wait_change(project: String, generation: u64) -> Result<u64, RpcError>;
    /// Cancels a running build: its RUN containers are killed and removed.
    async fn cancel(build: BuildId) -> Result<(), RpcError>;
    /// Starts uploading a blob (for `image import`); returns the upload id.
    async fn upload_begin() -> Result<u64, RpcError>;
    async fn upload_chunk(upload: u64, data: ByteBuf) -> Result<(), RpcError>;
    /// Ends an upload: the blob is stored only if its sha256 is `digest`.
    async fn upload_commit(upload: u64, digest: String) -> Result<u64, RpcError>;
    /// Names an image made of uploaded blobs.
    async fn import_image(name: String, spec: ImportSpec) -> Result<ImageSummary, RpcError>;
    /// Removes an image name (blobs stay until garbage collection).
    async fn remove_image(name: String) -> Result<(), RpcError>;
    /// One build's persisted log (every step, RUN output, the result). `build`:
    /// a build id, `last`, or a project id / context path (its latest build).
    async fn build_log(build: String) -> Result<BuildLogReport, RpcError>;
    /// The daemon's metrics in the Prometheus text exposition format.
    async fn metrics() -> Result<String, RpcError>;
    /// What the blob store holds, by use (`memobuild-ctl du`).
    async fn disk_usage() -> Result<DiskUsage, RpcError>;
    /// Garbage collection (`memobuild-ctl prune`).
    async fn prune(request: PruneRequest) -> Result<PruneResult, RpcError>;
    /// Hashes every blob and checks every record (`memobuild-ctl verify`).
    async fn verify_store() -> Result<VerifyResult, RpcError>;
    /// Opens every blob of the image `manifest_digest` (the blobs
    /// [`Memobuild::image_blobs`] names, each once) read-only for an `-o`
    /// export and returns a one-time token: a second connection on the same
    /// socket that presents it receives them as file descriptors ([`handoff`]).
    /// Only daemons whose [`DaemonInfo::features`] lists [`FEATURE_BLOB_FDS`]
    /// have it; the client falls back to [`Memobuild::read_blob`] otherwise.
    /// (Added last: the variants before it keep their place on the wire.)
    async fn open_blobs(manifest_digest: String) -> Result<BlobHandoff, RpcError>;
    /// Long-polls `status` (`status --follow`): answers once the daemon's
    /// status generation has moved past `generation` (any project changed
    /// state or was forgotten), or after about 30 seconds, with the report
    /// for `filter` as [`Memobuild::status`] gives it. Added within protocol
    /// 3 (a method is added, nothing changed): older clients never call it; a
    /// daemon older than it closes the connection when asked.
    async fn status_wait(filter: String, generation: u64) -> Result<StatusReport, RpcError>;
    /// Opts the projects `filter` names (id or context path) in or out of
    /// eager builds; returns their ids. Added within protocol 3 like
    /// `status_wait`.
    async fn set_eager(filter: String, on: bool) -> Result<Vec<String>, RpcError>;
    /// The step results of a finished build (`--cache-to type=local`): every
    /// step (`max`) or those of the target stage and the stages it is built on.
    async fn cache_steps(build: BuildId, max: bool) -> Result<Vec<CacheStep>, RpcError>;
    /// Records step results whose layers were uploaded (`--cache-from
    /// type=local`); each layer's diff_id is checked. Returns how many.
    async fn import_cache_steps(steps: Vec<CacheStep>) -> Result<u64, RpcError>;
    /// BuildKit's lint rules on the request's Dockerfile, nothing built
    /// (`build --call=check`). Added within protocol 3 (a method is added at
    /// the end): only daemons whose [`DaemonInfo::features`] lists `check`
    /// have it.
    async fn check(request: BuildRequest) -> Result<LintReport, RpcError>;
}

/// What `check` found.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LintReport {
    /// By line, then message.
    pub warnings: Vec<LintWarning>,
    /// `# check=error=true` and some warning: the build would fail with this
    /// (BuildKit's `lint violation found for rules: ...`).
    pub error: Option<String>,
}

/// One step result of a local cache (the remote cache's format, docs/CACHE.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheStep {
    /// The step's cache key (hex BLAKE3).
    pub key: String,
    /// The layer it added; `None` for a step that only changes the config.
    pub layer: Option<CacheLayer>,
    /// When the step's result was first built (Unix seconds): the time its
    /// image history entry gets. `None` from older clients and caches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheLayer {
    pub digest: String,
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
}

/// A [`DaemonInfo::features`] entry: the daemon has [`Memobuild::open_blobs`]
/// and answers [`handoff`] connections.
pub const FEATURE_BLOB_FDS: &str = "blob_fds";

/// What an imported archive holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub enum ImportSpec {
    /// An OCI image manifest (uploaded, with everything it names).
    Manifest { digest: String },
    /// A `docker save` image: its config and uncompressed layer tars, in order.
    Docker { config: String, layers: Vec<String> },
}

/// What kind of failure an [`RpcError`] is. The kind, never the message
/// text, decides what happens next: retries, metrics, the client's exit code
/// and the hint it prints. Kinds a newer daemon adds arrive as `Internal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request, the Dockerfile, an ignore file or a flag is wrong: fix the input.
    InvalidInput,
    /// Something named does not exist: an image, a project, a build, a blob.
    NotFound,
    /// The caller may not do this (access control).
    PermissionDenied,
    /// The build was cancelled: by its client, or by a daemon shutdown.
    Cancelled,
    /// A context file changed while the build read it; the engine starts over.
    ContextChanged,
    /// A step ran and failed: a non-zero exit, a limit, a step timeout.
    StepFailed,
    /// A registry or the daemon itself cannot serve now; trying again may work.
    Unavailable,
    /// Anything else: an environment problem or a bug.
    #[default]
    #[serde(other)]
    Internal,
}

/// An error the daemon reports to the client: its kind, what went wrong and,
/// where it can, where (file:line:col) and what to do about it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RpcError {
    #[serde(default)]
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default)]
    pub hint: Option<String>,
    /// Where in the Dockerfile the error is, when it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
}

/// A place in a file: 1-based line and column.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

/// Why a build failed, as data for editors (docs/CLI.md, "Failures"): in
/// `status --json` (`last_build.failure` and the failed step's `failure`),
/// `explain --json` and the `failed` progress event. Every field is one line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailureInfo {
    /// What kind of failure it is (the error's kind).
    #[serde(default)]
    pub kind: ErrorKind,
    /// The step that failed (index into the plan's steps), if one did: a
    /// Dockerfile that cannot be parsed or planned fails before any step.
    pub step: Option<usize>,
    /// The Dockerfile: absolute, without `.` or `..` components.
    pub file: String,
    /// 1-based line and column of the instruction (or of the parse error);
    /// 0 when the failure has no place in the Dockerfile (a registry error).
    pub line: usize,
    pub column: usize,
    /// What went wrong, one line, without the `FILE:LINE:COL:` prefix.
    pub message: String,
    /// The exit code of a RUN step that exited non-zero (a shell's 128+N
    /// for a signal); `None` for other failures (a limit, a timeout, COPY).
    pub exit_code: Option<i32>,
    /// The last lines a failed RUN step printed, oldest first.
    pub output: Vec<String>,
}

impl RpcError {
    /// An error of kind [`ErrorKind::Internal`].
    pub fn new(message: impl Into<String>) -> Self {
        RpcError {
            kind: ErrorKind::Internal,
            message: message.into(),
            hint: None,
            location: None,
        }
    }

    pub fn with_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        RpcError::new(message).hint(hint)
    }

    /// An error of `kind`.
    pub fn of(kind: ErrorKind, message: impl Into<String>) -> Self {
        RpcError::new(message).kind(kind)
    }

    /// A cancelled build.
    pub fn cancelled() -> Self {
        RpcError::of(ErrorKind::Cancelled, "build cancelled")
    }

    /// The same error, of `kind`.
    pub fn kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// The same error, with `hint`.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The same error, with `hint` if there is one.
    pub fn hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    /// The same error, located at `location`.
    pub fn at(mut self, location: Location) -> Self {
        self.location = Some(location);
        self
    }

    pub fn is(&self, kind: ErrorKind) -> bool {
        self.kind == kind
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonInfo {
    pub protocol_version: u32,
    pub daemon_version: String,
    pub data_dir: String,
    pub pid: u32,
    /// Optional requests, request fields and connection kinds this daemon
    /// serves ([`FEATURES`]); empty from daemons older than the list. A client
    /// refuses a request field an older daemon would skip unread.
    #[serde(default)]
    pub features: Vec<String>,
}

/// Request fields added within protocol 3, named for [`DaemonInfo::features`]:
/// `annotations` ([`BuildRequest::annotations`]), `build-contexts`
/// ([`BuildRequest::build_contexts`]), `prune-until` ([`PruneRequest::unused_for_secs`]),
/// `local-cache` (the `cache_steps` and `import_cache_steps` calls),
/// [`FEATURE_BLOB_FDS`] (the `open_blobs` call and blob handoff connections),
/// `check` (the `check` call), `inline-cache` ([`BuildRequest::inline_cache`]),
/// `ssh` ([`BuildRequest::ssh`] and ssh forwarding connections, [`sshfwd`]),
/// and [`HOST_GATEWAY`] (in [`BuildRequest::add_hosts`]).
pub const FEATURES: &[&str] = &[
    FEATURE_BLOB_FDS,
    "annotations",
    "build-contexts",
    "prune-until",
    "local-cache",
    "check",
    "inline-cache",
    sshfwd::FEATURE,
    HOST_GATEWAY,
];

/// `--add-host HOST:host-gateway`: the daemon writes the host's address as
/// RUN steps reach it (the host end of their bridge) for this IP, as Docker
/// does with its host-gateway IP. Also the feature naming that support.
pub const HOST_GATEWAY: &str = "host-gateway";

/// BuildKit's entitlements: `network.host` lets `RUN --network=host` and
/// `build --network host` use the host's network; `security.insecure` lets
/// `RUN --security=insecure` run privileged.
pub const ENTITLEMENTS: &[&str] = &["network.host", "security.insecure"];

/// Everything a build depends on besides the files themselves.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildRequest {
    /// Absolute path of the build context directory.
    pub context: String,
    /// Dockerfile path: absolute, or relative to the context. Empty = `Dockerfile`.
    pub dockerfile: String,
    /// Image names to tag the result with in the daemon's image store.
    pub tags: Vec<String>,
    /// Stage to build; empty = the last stage.
    pub target: String,
    /// `--build-arg K=V`; a value of `None` means "take it from the client's
    /// environment", which the client has already resolved.
    pub build_args: BTreeMap<String, String>,
    /// Ignore the step cache (results are still stored for later builds).
    pub no_cache: bool,
    /// SOURCE_DATE_EPOCH when the client has it as a number (`--build-arg`
    /// or its environment): layer mtimes later than it are clamped to it and
    /// the image's `created` times are set to it. Any other text travels as
    /// the build arg and the daemon resolves it (a stage's name, `context`,
    /// or an error), as does the Dockerfile's `ARG SOURCE_DATE_EPOCH=` default.
    pub source_date_epoch: Option<i64>,
    /// `--secret id=ID,src=FILE`: the secrets' bytes, by id. Only RUN steps that
    /// mount them see them; they never reach a layer, key, log or record.
    pub secrets: BTreeMap<String, Secret>,
    /// Per-build limits for RUN steps (the daemon's defaults otherwise).
    pub memory_bytes: Option<u64>,
    /// CPUs in thousandths (`--cpus 1.5` = 1500).
    pub millicpus: Option<u64>,
    pub pids_limit: Option<i64>,
    // ---- Registries (docs/REGISTRIES.md) ----
    /// `--platform os/arch[/variant]` picked from multi-platform base images; empty = the host's.
    pub platform: String,
    /// `--pull`: `missing` (also when empty), `always` or `never`, as Docker.
    pub pull: String,
    /// Credentials for the registries this build talks to, by registry host
    /// (`docker.io`, `HOST:PORT`), read by the client from its docker config.
    /// Never logged, persisted or written to a layer.
    pub registry_auth: BTreeMap<String, registry::Credential>,
    /// References to push the image to after the build (`--push`, `-o type=registry`).
    pub push: Vec<String>,
    /// `--cache-from type=registry,ref=REF`: remote step caches to read.
    pub cache_from: Vec<String>,
    /// `--cache-to type=registry,ref=REF[,mode=min|max]`: remote step caches to write.
    pub cache_to: Vec<registry::CacheExport>,
    // ---- docker build flags (docs/CLI.md) ----
    /// `--label K=V`: set in the image config over the Dockerfile's LABELs.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `--network`: what RUN without `--network` gets: `default` or empty
    /// (the daemon's `--default-network`), `none` or `host`.
    #[serde(default)]
    pub network: String,
    /// `--add-host HOST:IP`: lines added to RUN's /etc/hosts, in order. IP
    /// may be [`HOST_GATEWAY`].
    #[serde(default)]
    pub add_hosts: Vec<(String, String)>,
    /// `--shm-size`: bytes of RUN's /dev/shm (64 MiB otherwise).
    #[serde(default)]
    pub shm_bytes: Option<u64>,
    /// `--ulimit NAME=SOFT[:HARD]`, by Docker's name (`nofile`, `nproc`, ...).
    #[serde(default)]
    pub ulimits: BTreeMap<String, (u64, u64)>,
    /// `--no-cache-filter STAGE`: stages (by name or index) whose steps all run.
    #[serde(default)]
    pub no_cache_filter: Vec<String>,
    /// `--allow ENTITLEMENT`: [`ENTITLEMENTS`] the build asks for. The daemon
    /// grants one only if its administrator enabled it too
    /// (`insecure-entitlements`).
    #[serde(default)]
    pub entitlements: Vec<String>,
    /// The Dockerfile's text (`-f -`), used instead of reading `dockerfile`.
    #[serde(default)]
    pub dockerfile_text: Option<String>,
    /// `--annotation K=V`: annotations of the image manifest.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// `--build-context NAME=docker-image://REF`: images that FROM, `COPY
    /// --from` and `RUN --mount=from=` get for NAME.
    #[serde(default)]
    pub build_contexts: BTreeMap<String, String>,
    /// `--cache-to type=inline`: the image config carries the step cache
    /// records of the steps whose layers are in the image (mode=min), under
    /// `dev.memobuild.cache.v0` (docs/CACHE.md, "Inline cache").
    #[serde(default)]
    pub inline_cache: bool,
    /// `--ssh ID[=SOCKET|KEY,...]`: the agents the client forwards to `RUN
    /// --mount=type=ssh` (see [`sshfwd`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshForward>,
    /// Whose rights the daemon reads the context, Dockerfile and ignore files
    /// with. Set by the daemon from the connection's peer credentials
    /// (SO_PEERCRED) for every request, whatever a client sends; `None` for
    /// root and the daemon's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_as: Option<Reader>,
    /// The uid that asked for the build: it owns the build's log, its image
    /// names and its cache mounts (docs/SECURITY.md, "Ownership"). Set by the
    /// daemon from the connection's peer credentials, whatever a client sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
}

/// The ssh agents a build may use: a forwarding session the client holds
/// open for the build ([`sshfwd`]), and the ids it answers for.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SshForward {
    pub token: String,
    pub ids: Vec<String>,
}

/// A user's filesystem identity (see [`BuildRequest::read_as`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reader {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, from the group database (getgrouplist).
    pub groups: Vec<u32>,
}

/// `--ulimit` names Docker takes, with the rlimit each sets.
pub const ULIMITS: &[(&str, &str)] = &[
    ("as", "RLIMIT_AS"),
    ("core", "RLIMIT_CORE"),
    ("cpu", "RLIMIT_CPU"),
    ("data", "RLIMIT_DATA"),
    ("fsize", "RLIMIT_FSIZE"),
    ("locks", "RLIMIT_LOCKS"),
    ("memlock", "RLIMIT_MEMLOCK"),
    ("msgqueue", "RLIMIT_MSGQUEUE"),
    ("nice", "RLIMIT_NICE"),
    ("nofile", "RLIMIT_NOFILE"),
    ("nproc", "RLIMIT_NPROC"),
    ("rss", "RLIMIT_RSS"),
    ("rtprio", "RLIMIT_RTPRIO"),
    ("rttime", "RLIMIT_RTTIME"),
    ("sigpending", "RLIMIT_SIGPENDING"),
    ("stack", "RLIMIT_STACK"),
];

/// Parses a size as Docker does: a number with an optional b/k/m/g/t suffix
/// (binary units, case-insensitive): `512m`, `2g`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(|c: char| !c.is_ascii_digit()))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        Some('b') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid size {text:?}: use a number with b, k, m, g or t, e.g. 512m")
    })?;
    if n < 0.0 {
        return Err(format!("invalid size {text:?}: must not be negative"));
    }
    Ok((n * mult as f64) as u64)
}

/// A secret's bytes. Its `Debug` never shows them, so no log line can.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

/// A build's id in the daemon, unique for the daemon's lifetime.
pub type BuildId = u64;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventBatch {
    pub events: Vec<BuildEvent>,
    /// Pass this as the next cursor.
    pub next_cursor: u64,
    /// True once the build has ended and every event was delivered.
    pub finished: bool,
    /// The project the build belongs to: `--progress json` adds it to every
    /// event line as `project`.
    #[serde(default)]
    pub project: String,
}

/// One thing that happened in a build, in the order it happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BuildEvent {
    /// The plan is ready: every step the build will go through, in order.
    Planned {
        build: BuildId,
        steps: Vec<StepInfo>,
        /// The project the build belongs to (`status` lists it by this id).
        #[serde(default)]
        project: String,
        /// BuildKit's lint warnings for the Dockerfile (`--call=check`
        /// rules); the client lists them when the build ends, as buildx.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<LintWarning>,
    },
    StepStarted {
        step: usize,
    },
    /// The step's result came from the cache.
    StepCached {
        step: usize,
    },
    /// The step ran; `millis` is how long it took.
    StepDone {
        step: usize,
        millis: u64,
    },
    /// A line of output for the user (warnings, notes).
    Log {
        step: Option<usize>,
        line: String,
    },
    /// The build succeeded.
    Finished {
        manifest_digest: String,
        config_digest: String,
        tags: Vec<String>,
        millis: u64,
    },
    /// The build failed; the error says what, where and what to do.
    Failed {
        error: RpcError,
        /// The failure as data: which step, where, exit code, last output.
        #[serde(default)]
        failure: Option<FailureInfo>,
    },
}

impl BuildEvent {
    /// The event as one flat JSON object, `{"event": "step_done", "step": 3, ...}`:
    /// the stable `--progress json` schema (docs/CLI.md). On the socket events are
    /// externally tagged, because bincode cannot decode internally tagged enums.
    pub fn to_json(&self) -> serde_json::Value {
        let tagged = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        let mut flat = serde_json::Map::new();
        if let serde_json::Value::Object(outer) = tagged {
            for (name, body) in outer {
                flat.insert("event".into(), serde_json::Value::String(name));
                if let serde_json::Value::Object(fields) = body {
                    flat.extend(fields);
                }
            }
        }
        serde_json::Value::Object(flat)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepInfo {
    pub index: usize,
    /// Stage name (or its index when unnamed).
    pub stage: String,
    /// The instruction as written, e.g. `COPY src/ /app/`.
    pub instruction: String,
    /// `file:line` of the instruction.
    pub location: String,
    /// Hex BLAKE3 cache key of the step.
    pub cache_key: String,
    /// The stage's base as `FROM NAME` (`FROM scratch`, `FROM base` for an
    /// earlier stage), which progress shows as the stage's first step.
    #[serde(default)]
    pub from: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageSummary {
    pub name: String,
    pub manifest_digest: String,
    pub config_digest: String,
    /// Sum of layer and config sizes.
    pub size: u64,
    /// Unix seconds when the name was last set.
    pub tagged_at: i64,
    /// The uid that named the image (a build's `-t`, `image import`); `None`
    /// for base images pulled from a registry and names set before the daemon
    /// recorded owners, which only admins may remove or re-tag.
    #[serde(default)]
    pub owner: Option<u32>,
    /// The manifest digest the registry holds for this name after a push or
    /// a pull (`docker image inspect`'s `RepoDigests`); `None` otherwise and
    /// from daemons older than the field.
    #[serde(default)]
    pub repo_digest: Option<String>,
}

/// What a client needs to write an image out: the manifest and every blob it names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageBlobs {
    pub manifest: BlobRef,
    pub config: BlobRef,
    pub layers: Vec<BlobRef>,
}

/// [`Memobuild::open_blobs`]' answer: present `token` on a [`handoff`]
/// connection within [`handoff::TTL`] to receive one read-only file descriptor
/// per entry of `blobs`, in that order. The token works once.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobHandoff {
    pub token: String,
    pub blobs: Vec<BlobRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
}

/// `memobuild-ctl status --json`: the stable schema documented in docs/CLI.md.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    pub daemon: DaemonHealth,
    pub projects: Vec<ProjectStatus>,
    /// The daemon's status generation: bumped whenever any project's state
    /// changes or a project is forgotten. Pass it to
    /// [`Memobuild::status_wait`] to wait for the next change.
    #[serde(default)]
    pub generation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DaemonHealth {
    pub pid: u32,
    pub version: String,
    /// Every watched tree is kept current by events (none polling or awaiting a rescan).
    pub watching: bool,
    pub trees: Vec<TreeStatus>,
    /// Paths in all in-memory indexes.
    pub index_entries: u64,
    /// Watched roots (each one recursive inotify watch set).
    pub watch_count: u64,
    /// File events received since start.
    pub events: u64,
    /// Bytes read for content hashing since start.
    pub hashed_bytes: u64,
    pub running_builds: u64,
    /// Builds waiting for a slot (`max-parallel-builds`).
    pub queued_builds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TreeStatus {
    pub root: String,
    pub mode: TreeMode,
    /// Why the tree is not simply `watching`.
    pub reason: Option<String>,
    pub entries: u64,
    pub rescans: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProjectStatus {
    pub id: String,
    pub context: String,
    pub dockerfile: String,
    pub target: String,
    pub build_args: BTreeMap<String, String>,
    pub state: ProjectState,
    pub steps: Vec<StepStatus>,
    /// Context paths changed since the last build started (relative, sorted).
    pub changed_files: Vec<String>,
    pub last_build: Option<LastBuild>,
    /// Bumped whenever the state above changes (for `wait_change`).
    pub generation: u64,
    /// Unix seconds of the project's last build (or registration); projects
    /// unused for `forget-projects-after` are forgotten.
    #[serde(default)]
    pub last_used: i64,
    /// The Dockerfile (as saved now) cannot be planned: where and why (a
    /// syntax error, a COPY of a missing file). Steps are then all `dirty`.
    #[serde(default)]
    pub plan_error: Option<FailureInfo>,
    /// The daemon rebuilds the project in the background after saves
    /// (`memobuild-ctl eager on`).
    #[serde(default)]
    pub eager: bool,
    /// BuildKit's lint warnings (`--call=check` rules) for the Dockerfile as
    /// last planned, by line.
    #[serde(default)]
    pub lint: Vec<LintWarning>,
}

/// A lint warning: one of BuildKit's rules (same name, same message).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LintWarning {
    /// The rule's name, e.g. `JSONArgsRecommended`.
    pub rule: String,
    /// What the rule asks for.
    pub description: String,
    /// The rule's documentation.
    pub url: String,
    /// This warning's message.
    pub detail: String,
    /// 1-based.
    pub line: usize,
    pub column: usize,
}

/// What went into a step's cache key (docs/CACHE.md), for people: `explain`
/// and the LSP hover show it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyInputs {
    /// The stage's base (`FROM NAME`) for a stage's first step.
    pub base: String,
    /// The previous step's key (or the base's), hex.
    pub parent_key: String,
    /// Build args in scope.
    pub args: BTreeMap<String, String>,
    /// Context files the step reads: path -> BLAKE3 hex (`dir`,
    /// `symlink:TARGET`; `stage:NAME` -> that stage's content digest), at most
    /// [`KEY_FILES_SHOWN`] of them.
    pub files: BTreeMap<String, String>,
    /// How many files the key covers (`files` may list fewer).
    pub file_count: usize,
    /// `files` names only the paths changed since the last build.
    pub partial: bool,
}

/// Most files [`KeyInputs::files`] lists.
pub const KEY_FILES_SHOWN: usize = 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepStatus {
    pub index: usize,
    pub stage: String,
    pub instruction: String,
    pub line: usize,
    pub state: StepState,
    /// Why the step is dirty: which files, arg, instruction or parent.
    pub why: Vec<String>,
    /// For a `failed` step: why it failed.
    #[serde(default)]
    pub failure: Option<FailureInfo>,
    /// The step's cache key (hex BLAKE3) in the build it is listed from (docs/CACHE.md).
    #[serde(default)]
    pub cache_key: String,
    /// For a `building` step: when it started (Unix milliseconds).
    #[serde(default)]
    pub started_at_ms: Option<i64>,
    /// What went into `cache_key`.
    #[serde(default)]
    pub key_inputs: Option<KeyInputs>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastBuild {
    /// `success` or `failed`.
    pub result: String,
    /// Unix seconds.
    pub finished_at: i64,
    pub millis: u64,
    pub manifest_digest: Option<String>,
    /// The error's first line (the whole message is in the build's log).
    pub error: Option<String>,
    /// A failed build's failure as data.
    #[serde(default)]
    pub failure: Option<FailureInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Explanation {
    pub project: String,
    pub steps: Vec<StepExplanation>,
    /// The last build failed: its error's first line.
    #[serde(default)]
    pub failed: Option<String>,
    /// The last build failed: the failure as data.
    #[serde(default)]
    pub failure: Option<FailureInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StepExplanation {
    pub index: usize,
    pub stage: String,
    pub instruction: String,
    pub line: usize,
    pub outcome: StepOutcome,
    /// For rebuilt and failed steps: the inputs that differ from the build before.
    pub why: Vec<String>,
    /// For the failed step: why it failed.
    #[serde(default)]
    pub failure: Option<FailureInfo>,
}

/// `memobuild-ctl logs`: one build's log, read from the file the daemon wrote
/// while the build ran (so it outlives the build's events in memory and
/// daemon restarts).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BuildLogReport {
    pub build: BuildId,
    pub project: String,
    pub context: String,
    pub dockerfile: String,
    pub target: String,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    pub state: BuildLogState,
    pub entries: Vec<LogEntry>,
}

/// One event of a build's log and when it happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogEntry {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub event: BuildEvent,
}

/// `memobuild-ctl du --json`: the blob store by use. A blob counts once, under
/// the first of images, cache, unreferenced that uses it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskUsage {
    pub total_bytes: u64,
    pub blobs: u64,
    /// Blobs of named images (never pruned).
    pub image_bytes: u64,
    pub image_blobs: u64,
    /// Blobs only step cache entries or projects' last builds use.
    pub cache_bytes: u64,
    pub cache_blobs: u64,
    /// Blobs nothing references (any prune frees them).
    pub unreferenced_bytes: u64,
    pub unreferenced_blobs: u64,
    pub cache_entries: u64,
    pub images: u64,
    /// `max-storage` in bytes, if set.
    pub max_storage: Option<u64>,
    /// Everything on disk under the data dir (as `du -sb` counts it): blobs,
    /// the private containerd's directory, cache mounts, the database, logs.
    #[serde(default)]
    pub disk_bytes: u64,
    /// Of `disk_bytes`: the private containerd's directory (unpacked layer
    /// snapshots and content).
    #[serde(default)]
    pub containerd_bytes: u64,
}

/// `memobuild-ctl prune [--all] [--keep-storage SIZE]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PruneRequest {
    /// Also what projects' last builds use (named images always stay).
    pub all: bool,
    /// Remove least-recently-used entries only until the store is this small.
    pub keep_bytes: Option<u64>,
    /// `--filter until=DURATION`: only entries unused for at least this many seconds.
    #[serde(default)]
    pub unused_for_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PruneResult {
    pub cache_entries_removed: u64,
    pub blobs_removed: u64,
    pub bytes_freed: u64,
    pub bytes_after: u64,
}

/// `memobuild-ctl verify --json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyResult {
    pub cache_entries: u64,
    pub images: u64,
    pub blobs: u64,
    /// Files in the daemon's temp directory (leftovers of a crash, or in use).
    pub temp_files: u64,
    /// One line per problem; empty when the store is consistent.
    pub problems: Vec<String>,
}
