//! `ADD https://...` and `ADD REPO.git#REF`: what the planner asks for
//! ([`memobuild_plan::UrlSource`]). A URL is downloaded once into
//! `DATA/downloads/<sha256>`; a later build asks the server again with a HEAD
//! request and reuses the download when its `ETag` is unchanged (BuildKit's
//! HTTP source does the same), else downloads it again. A git repository
//! over ssh (`git@HOST:PATH`, `ssh://`) is fetched with the ssh agent the
//! client forwards as `default` (docs/SECURITY.md, "ssh agents").

use memobuild_plan::{Fetched, UrlSource};
use memobuild_proto::BuildRequest;
use parking_lot::Mutex;
use sha2::Digest as _;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use tokio::io::AsyncWriteExt as _;

/// What this daemon downloaded, by URL, with the `ETag` it came with.
#[derive(Clone)]
struct Known {
    etag: Option<String>,
    fetched: Fetched,
}

fn known() -> &'static Mutex<HashMap<String, Known>> {
    static KNOWN: OnceLock<Mutex<HashMap<String, Known>>> = OnceLock::new();
    KNOWN.get_or_init(Default::default)
}

/// Downloads into `dir`, for one plan.
pub(super) struct Downloads<'a> {
    pub dir: PathBuf,
    /// Reuse what was downloaded before without asking the server (dirty
    /// checks while watching); a URL never downloaded is still fetched.
    pub offline: bool,
    /// How git reaches remotes over ssh for this plan.
    ssh: GitSsh<'a>,
    /// Each URL once per plan.
    seen: Mutex<HashMap<String, Fetched>>,
}

/// Who a plan's `ADD` of a git repository over ssh fetches for.
#[derive(Clone, Copy)]
pub(super) enum GitSsh<'a> {
    /// A client's build request: git authenticates with the agent the
    /// client forwards as `default` (none forwarded: an error), and always
    /// asks the server, so a user gets a checkout only when their own agent
    /// may read the repository.
    Request {
        sessions: &'a crate::ssh_agents::SshSessions,
        request: &'a BuildRequest,
    },
    /// A plan with no client to ask (the daemon's re-plans of a project for
    /// `status`, eager builds, `build --call=check`): no agent and no network; the
    /// checkout an earlier build of the same user made for the same
    /// (remote, ref, options) is reused, else the plan fails saying a build
    /// is needed.
    Offline { owner: u32 },
}

impl<'a> Downloads<'a> {
    pub(super) fn new(dir: PathBuf, offline: bool, ssh: GitSsh<'a>) -> Downloads<'a> {
        Downloads {
            dir,
            offline,
            ssh,
            seen: Mutex::new(HashMap::new()),
        }
    }

    async fn fetch_async(&self, url: &str) -> Result<Fetched, String> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("memobuild/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let before = known().lock().get(url).cloned();
        if let Some(k) = before.filter(|k| k.fetched.path.is_file()) {
            if self.offline {
                return Ok(k.fetched);
            }
            if let Some(etag) = &k.etag {
                let head = client
                    .head(url)
                    .send()
                    .await
                    .map_err(|e| format!("HEAD request: {e}"))?;
                let now = head
                    .headers()
                    .get(reqwest::header::ETAG)
                    .and_then(|v| v.to_str().ok());
                if head.status().is_success() && now == Some(etag.as_str()) {
                    touch(&k.fetched.path);
                    return Ok(k.fetched);
                }
            }
        }
        let mut resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET request: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("the server answered {}", resp.status()));
        }
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let modified = resp
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let temp = tempfile::NamedTempFile::new_in(&self.dir)
            .map_err(|e| format!("creating a file in {}: {e}", self.dir.display()))?;
        let mut file = tokio::fs::File::from_std(
            temp.reopen()
                .map_err(|e| format!("opening {}: {e}", temp.path().display()))?,
        );
        let mut hasher = sha2::Sha256::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the response: {e}"))?
        {
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("writing {}: {e}", temp.path().display()))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("writing {}: {e}", temp.path().display()))?;
        let sha256 = hex::encode(hasher.finalize());
        let path = self.dir.join(&sha256);
        temp.persist(&path)
            .map_err(|e| format!("saving {}: {e}", path.display()))?;
        let fetched = Fetched {
            path,
            sha256,
            modified,
        };
        known().lock().insert(
            url.to_string(),
            Known {
                etag,
                fetched: fetched.clone(),
            },
        );
        Ok(fetched)
    }
}

/// (the requesting uid for an ssh remote, else `None`; remote, ref,
/// options) of a checkout this daemon made.
type GitKey = (Option<u32>, String, String, memobuild_plan::GitOptions);

/// The ssh client git runs for an ssh remote (BuildKit's, with no known
/// hosts given): no configuration file (not the daemon user's, not the
/// system's), host keys not checked (BuildKit pins what an `ssh-keyscan`
/// found as the request was made), no prompts, and no key file: `~` is the
/// daemon user's home whatever `HOME` says, so its default keys are
/// switched off and only the forwarded agent authenticates. Dead servers
/// and connections end the fetch instead of hanging it.
const GIT_SSH_COMMAND: &str = "ssh -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null -o BatchMode=yes -o IdentityFile=none -o CertificateFile=none -o ControlMaster=no -o ControlPath=none -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -o LogLevel=ERROR";

/// Runs `git ARGS` (in `dir` when given); its stdout, or its stderr as the
/// error. `agent`: the socket of the forwarded agent, for an ssh remote.
fn git(
    home: &std::path::Path,
    dir: Option<&std::path::Path>,
    agent: Option<&std::path::Path>,
    args: &[&str],
) -> Result<String, String> {
    let mut cmd = std::process::Command::new("git");
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    // No prompts, no configuration, credentials or keys of the daemon's
    // user (HOME is an empty directory: no ~/.netrc, ~/.ssh, ~/.gitconfig),
    // and only the network transports ADD names.
    cmd.args(args)
        .env("HOME", home)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ASKPASS", "/bin/false")
        .env("SSH_ASKPASS", "/bin/false")
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("GIT_SSH")
        .env_remove("GIT_SSH_VARIANT");
    match agent {
        // ssh too, with the client's agent and nothing of the daemon's.
        Some(socket) => cmd
            .env("GIT_ALLOW_PROTOCOL", "http:https:git:ssh")
            .env("GIT_SSH_COMMAND", GIT_SSH_COMMAND)
            .env("SSH_AUTH_SOCK", socket),
        None => cmd
            .env("GIT_ALLOW_PROTOCOL", "http:https:git")
            .env_remove("GIT_SSH_COMMAND"),
    };
    let out = cmd.output().map_err(|e| {
        format!("running git: {e} (ADD of a git repository needs git on the daemon's host)")
    })?;
    if !out.status.success() {
        return Err(format!(
            "git {}: {}",
            args.first().copied().unwrap_or(""),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Downloads<'_> {
    /// Clones `remote`, resolves `reference` to a commit and keeps its
    /// checkout in `DATA/downloads/git-COMMIT[-keep][-submodules]`, reused
    /// by later builds. An ssh remote is fetched with the request's agent
    /// ([`GitSsh::Request`]).
    fn git_tree(
        &self,
        remote: &str,
        reference: &str,
        options: memobuild_plan::GitOptions,
    ) -> Result<memobuild_plan::GitTree, String> {
        let forward = if memobuild_dockerfile::gitref::is_ssh_remote(remote) {
            Some(self.agent_socket()?)
        } else {
            None
        };
        let agent = forward.as_ref().map(|f| f.socket.as_path());
        let result = self.git_tree_with(remote, reference, options, agent);
        match (result, forward) {
            // What the forwarding saw, after git's own words.
            (Err(e), Some(f)) => Err(f.explain(e)),
            (result, _) => result,
        }
    }

    /// A socket forwarding to the request's `default` agent, for one fetch.
    fn agent_socket(&self) -> Result<AgentSocket, String> {
        let GitSsh::Request { sessions, request } = self.ssh else {
            return Err("internal: no ssh agent for this plan".into());
        };
        let agent = sessions
            .agent(request, "default")
            .map_err(|e| e.message)?
            .ok_or_else(|| {
                // BuildKit's words, then ours.
                "no SSH key \"default\" forwarded from the client: ADD of a git repository over ssh needs an ssh agent".to_string()
            })?;
        AgentSocket::open(agent)
    }

    fn git_tree_with(
        &self,
        remote: &str,
        reference: &str,
        options: memobuild_plan::GitOptions,
        agent: Option<&std::path::Path>,
    ) -> Result<memobuild_plan::GitTree, String> {
        let keep_git_dir = options.keep_git_dir;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let work = tempfile::tempdir_in(&self.dir)
            .map_err(|e| format!("creating a directory in {}: {e}", self.dir.display()))?;
        let clone = work.path().join("tree");
        let clone_arg = clone.to_string_lossy().into_owned();
        // HOME: an empty directory of the daemon's own (see `git`).
        let home = work.path().join("home");
        std::fs::create_dir(&home).map_err(|e| format!("creating {}: {e}", home.display()))?;
        git(
            &home,
            None,
            agent,
            &[
                "clone",
                "--quiet",
                "--no-checkout",
                "--",
                remote,
                &clone_arg,
            ],
        )?;
        // As BuildKit: the remote's HEAD, a full commit id, or a ref the
        // remote lists (`git ls-remote` matching, so `v1` finds
        // refs/tags/v1 and refs/heads/v1, but an abbreviated id nothing).
        let wanted = if reference.is_empty() {
            "HEAD".to_string()
        } else if is_full_commit(reference) {
            reference.to_string()
        } else {
            let listed = git(
                &home,
                Some(&clone),
                agent,
                &["ls-remote", "--", "origin", reference],
            )?;
            listed
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().next())
                .map(str::to_string)
                .ok_or_else(|| format!("repository does not contain ref {reference}"))?
        };
        let commit = git(
            &home,
            Some(&clone),
            agent,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{wanted}^{{commit}}"),
            ],
        )
        .map_err(|_| format!("repository does not contain ref {reference}"))?;
        let name = format!(
            "git-{commit}{}{}",
            if keep_git_dir { "-keep" } else { "" },
            if options.submodules {
                "-submodules"
            } else {
                ""
            }
        );
        let dir = self.dir.join(name);
        // Used again: `prune --filter until=` keeps it.
        touch(&dir);
        if !dir.is_dir() {
            git(
                &home,
                Some(&clone),
                agent,
                &["checkout", "--quiet", "--detach", &commit],
            )?;
            if options.submodules {
                git(
                    &home,
                    Some(&clone),
                    agent,
                    &["submodule", "update", "--quiet", "--init", "--recursive"],
                )?;
            }
            if !keep_git_dir {
                std::fs::remove_dir_all(clone.join(".git"))
                    .map_err(|e| format!("removing .git: {e}"))?;
            }
            // Another build may have placed the same commit meanwhile.
            if let Err(e) = std::fs::rename(&clone, &dir) {
                if !dir.is_dir() {
                    return Err(format!("saving {}: {e}", dir.display()));
                }
            }
        }
        Ok(memobuild_plan::GitTree { dir, commit })
    }
}

/// Marks a download as used now (its mtime), for `prune --filter until=`.
fn touch(path: &std::path::Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// A full hex commit id (SHA-1 or SHA-256), as BuildKit's IsCommitSHA.
fn is_full_commit(reference: &str) -> bool {
    matches!(reference.len(), 40 | 64) && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A socket of the daemon's that forwards each connection to a client's
/// agent (`ssh_agents::listen`, as a RUN step's agent mount), in a 0700
/// directory on tmpfs only the daemon's user enters; the forwarding ends and
/// the socket goes when this drops (after the fetch).
struct AgentSocket {
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
    /// Why connections to the agent failed, for the error.
    notes: std::sync::Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl AgentSocket {
    fn open(agent: crate::ssh_agents::Agent) -> Result<AgentSocket, String> {
        // Plans are made on blocking threads of the runtime, which serves the
        // forwarding while git runs.
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "internal: no runtime to forward the ssh agent with".to_string())?;
        let _in_runtime = handle.enter();
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("memobuild-git-ssh-")
            .tempdir_in(&base)
            .map_err(|e| format!("creating a directory in {}: {e}", base.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.path().display()))?;
        let socket = dir.path().join("agent.sock");
        let notes = std::sync::Arc::new(Mutex::new(Vec::new()));
        let seen = notes.clone();
        let task = crate::ssh_agents::listen(
            &socket,
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
            0o600,
            agent,
            move |line| seen.lock().push(line),
        )
        .map_err(|e| format!("ssh agent socket {}: {e}", socket.display()))?;
        Ok(AgentSocket {
            socket,
            task,
            notes,
            _dir: dir,
        })
    }

    /// `error`, followed by what went wrong reaching the agent, if anything.
    fn explain(&self, error: String) -> String {
        let notes = self.notes.lock();
        if notes.is_empty() {
            error
        } else {
            format!("{error} ({})", notes.join("; "))
        }
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl UrlSource for Downloads<'_> {
    fn git(
        &self,
        remote: &str,
        reference: &str,
        options: memobuild_plan::GitOptions,
    ) -> Result<memobuild_plan::GitTree, String> {
        static TREES: OnceLock<Mutex<HashMap<GitKey, memobuild_plan::GitTree>>> = OnceLock::new();
        let trees = TREES.get_or_init(Default::default);
        if memobuild_dockerfile::gitref::is_ssh_remote(remote) {
            // Per user: a checkout is reused only by plans of the user whose
            // agent fetched it, and only by plans no client waits for.
            let (owner, request) = match self.ssh {
                GitSsh::Request { request, .. } => {
                    (crate::owner::owner_of(request).unwrap_or(0), true)
                }
                GitSsh::Offline { owner } => (owner, false),
            };
            let key = (
                Some(owner),
                remote.to_string(),
                reference.to_string(),
                options,
            );
            if !request {
                return trees
                    .lock()
                    .get(&key)
                    .filter(|t| t.dir.is_dir())
                    .cloned()
                    .ok_or_else(|| {
                        "no client waits for this plan (a re-plan for status, an eager build, --call=check), so there is no ssh agent to fetch it with, and this daemon holds no checkout of it that a build of this user fetched: build the project (memobuild-ctl build --ssh default)".to_string()
                    });
            }
            // A build request always asks the server with its own agent.
            let tree = self.git_tree(remote, reference, options)?;
            trees.lock().insert(key, tree.clone());
            return Ok(tree);
        }
        let key = (None, remote.to_string(), reference.to_string(), options);
        if self.offline {
            if let Some(t) = trees.lock().get(&key).filter(|t| t.dir.is_dir()) {
                return Ok(t.clone());
            }
        }
        let tree = self.git_tree(remote, reference, options)?;
        trees.lock().insert(key, tree.clone());
        Ok(tree)
    }

    fn archive_max_mtime(&self, fetched: &Fetched) -> Option<i64> {
        super::copy::archive_max_mtime(&fetched.path)
    }

    fn git_commit_time(&self, tree: &memobuild_plan::GitTree) -> Result<i64, String> {
        let home = tempfile::tempdir_in(&self.dir)
            .map_err(|e| format!("creating a directory in {}: {e}", self.dir.display()))?;
        let at = git(
            home.path(),
            Some(&tree.dir),
            None,
            &["show", "-s", "--format=%ct", &tree.commit],
        )?;
        at.parse()
            .map_err(|_| format!("git gave {at:?} as the commit time"))
    }

    fn fetch(&self, url: &str) -> Result<Fetched, String> {
        if let Some(f) = self.seen.lock().get(url) {
            return Ok(f.clone());
        }
        // Plans are made on blocking threads, where waiting on the runtime is allowed.
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| "internal: no runtime to download with".to_string())?;
        let fetched = handle.block_on(self.fetch_async(url))?;
        self.seen.lock().insert(url.to_string(), fetched.clone());
        Ok(fetched)
    }
}

/// reqwest is built against rustls without a default crypto provider; install
/// ring's once (as the registry client does).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
