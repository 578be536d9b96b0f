//! The one BuildKit driver of the benches: `DOCKER_BUILDKIT=1 /usr/bin/docker
//! build` against the Docker daemon at `$DOCKER_HOST`, else
//! unix:///tmp/dockerd/docker.sock if it exists, else /var/run/docker.sock.
//!
//! Docker hygiene. The Docker daemon may be shared, so the driver removes
//! only what its builds made: the images they produced (tags, then ids left
//! untagged) and the build-cache records it can attribute to them, pruned
//! one `--filter id=` at a time (never `docker builder prune -a` unfiltered).
//! Two ways of attributing records ([`Records`]): the ids that appeared in
//! `docker system df -v` during each build, or, where other clients build
//! on the daemon at the same time, [`Docker::claim`]'s narrower rules.

use super::timed;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How the driver finds the build-cache records its builds created.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Records {
    /// Every record that appeared during one of our builds (`docker system df
    /// -v` before and after). A record another client creates on the same
    /// daemon during one of our builds is pruned too.
    Appeared,
    /// Only records tied to our builds (see [`Docker::claim`]): for a daemon
    /// others build on while the bench runs. Needs the API on a unix socket.
    Claimed,
}

/// One build-cache record, from `GET /system/df`.
#[derive(Debug, Clone)]
pub struct CacheRecord {
    pub id: String,
    pub parent: String,
    pub kind: String,
    pub description: String,
    pub size: i64,
    pub created: i128,
    pub last_used: i128,
    pub usage: i64,
}

/// One `docker build` to run.
pub struct BkBuild<'a> {
    pub ctx: &'a Path,
    /// File name of the Dockerfile in `ctx`.
    pub dockerfile: &'a str,
    pub tag: &'a str,
    pub build_args: &'a [String],
    /// [`Records::Claimed`]: description of the exec record of the
    /// Dockerfile's last RUN (unique to the bench).
    pub anchor: &'static str,
    /// [`Records::Claimed`]: the context's size, when it is large enough to
    /// tell its upload record apart.
    pub big_context: Option<i64>,
}

/// What one of our builds did, for attributing its records.
struct BkBuildLog {
    start: i128,
    end: i128,
    anchor: &'static str,
    /// Steps (COPY/RUN) that ran, counted from the last one back to the first
    /// that was `CACHED`: that many records of the chain are this build's.
    executed_tail: usize,
    /// Sizes of what this build sent (Dockerfile, .dockerignore, context).
    dockerfile_len: i64,
    ignore_len: i64,
    big_context: Option<i64>,
}

pub struct BkStep {
    pub name: String,
    pub cached: bool,
    pub secs: Option<f64>,
}

/// What one `docker build --progress plain` did.
pub struct BkRun {
    /// The whole client process, spawn to exit.
    pub wall: Duration,
    /// Image id (`--iidfile`).
    pub image: String,
    /// The COPY and RUN steps, in order.
    pub steps: Vec<BkStep>,
    /// Largest "transferring context: N" of the build.
    pub transferred: u64,
}

impl BkRun {
    pub fn executed(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| !s.cached)
            .map(|s| s.name.as_str())
            .collect()
    }

    pub fn cached_count(&self) -> usize {
        self.steps.iter().filter(|s| s.cached).count()
    }

    /// BuildKit's time for the first executed step starting with `prefix`.
    pub fn step_time(&self, prefix: &str) -> Option<Duration> {
        self.steps
            .iter()
            .find(|s| !s.cached && s.name.starts_with(prefix))
            .and_then(|s| s.secs)
            .map(Duration::from_secs_f64)
    }

    fn executed_tail(&self) -> usize {
        self.steps.iter().rev().take_while(|s| !s.cached).count()
    }
}

pub struct Docker {
    bench: &'static str,
    records_by: Records,
    pub host: String,
    socket: Option<PathBuf>,
    pub version: String,
    pub driver: String,
    /// [`Records::Claimed`]: size of a context upload that is not unique to
    /// this bench (see [`Docker::claim`], rule 3); 0 for none.
    pub shared_upload: i64,
    /// Parent of the private DOCKER_CONFIG dirs (one per client identity).
    config_root: PathBuf,
    config_dir: PathBuf,
    identities: usize,
    pub builds: usize,
    logs: Vec<BkBuildLog>,
    /// [`Records::Appeared`]: the records that appeared during our builds.
    appeared: BTreeSet<String>,
    images: BTreeSet<String>,
    tags: BTreeSet<String>,
    /// Records pruned, and records of ours still there after pruning.
    pub pruned: usize,
    pub failed: BTreeSet<String>,
    pub images_removed: usize,
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn file_len(p: &Path) -> i64 {
    fs::metadata(p).map(|m| m.len() as i64).unwrap_or(0)
}

/// Runs a command with a deadline: its stdout, `None` if it failed or timed out.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> Option<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                if let Some(mut s) = child.stdout.take() {
                    let _ = s.read_to_string(&mut out);
                }
                return status.success().then_some(out);
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

impl Docker {
    /// The Docker daemon to compare with, or why there is none
    /// (`MEMOBUILD_BENCH_NO_DOCKER=1`, no client, no daemon answering).
    /// `work`: the bench's temp dir (holds the private client configs).
    pub fn detect(bench: &'static str, work: &Path, records_by: Records) -> Result<Docker, String> {
        if std::env::var("MEMOBUILD_BENCH_NO_DOCKER").is_ok_and(|v| !v.is_empty() && v != "0") {
            return Err("MEMOBUILD_BENCH_NO_DOCKER is set".into());
        }
        if !Path::new("/usr/bin/docker").is_file() {
            return Err("/usr/bin/docker is not installed".into());
        }
        let host = match std::env::var("DOCKER_HOST") {
            Ok(h) if !h.is_empty() => h,
            _ if Path::new("/tmp/dockerd/docker.sock").exists() => {
                "unix:///tmp/dockerd/docker.sock".into()
            }
            _ => "unix:///var/run/docker.sock".into(),
        };
        let socket = host.strip_prefix("unix://").map(PathBuf::from);
        if records_by == Records::Claimed && socket.is_none() {
            return Err(format!("DOCKER_HOST={host}: this bench finds its own cache records through the API on a unix socket"));
        }
        let config_root = work.join("docker-config");
        let mut d = Docker {
            bench,
            records_by,
            host,
            socket,
            version: String::new(),
            driver: String::new(),
            shared_upload: 0,
            config_dir: config_root.join("id0"),
            config_root,
            identities: 0,
            builds: 0,
            logs: Vec::new(),
            appeared: BTreeSet::new(),
            images: BTreeSet::new(),
            tags: BTreeSet::new(),
            pruned: 0,
            failed: BTreeSet::new(),
            images_removed: 0,
        };
        d.new_identity();
        let version = run_with_timeout(
            d.cmd().args(["version", "--format", "{{.Server.Version}}"]),
            Duration::from_secs(20),
        )
        .ok_or_else(|| format!("no Docker daemon answered at {}", d.host))?;
        d.version = version.trim().to_string();
        d.driver = run_with_timeout(
            d.cmd().args(["info", "--format", "{{.Driver}}"]),
            Duration::from_secs(20),
        )
        .unwrap_or_default()
        .trim()
        .to_string();
        if records_by == Records::Claimed {
            d.records()?;
        }
        Ok(d)
    }

    /// "Docker V (D storage driver) at HOST, …": for the report's head.
    pub fn describe(&self) -> String {
        format!(
            "Docker {} ({} storage driver) at {}, `docker build --network host`",
            self.version, self.driver, self.host
        )
    }

    /// A fresh client identity: a new DOCKER_CONFIG, so a new build node id and
    /// new shared keys for BuildKit's local sources (no reuse of earlier uploads).
    pub fn new_identity(&mut self) {
        self.identities += 1;
        self.config_dir = self.config_root.join(format!("id{}", self.identities));
        fs::create_dir_all(&self.config_dir).unwrap();
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.env("DOCKER_HOST", &self.host)
            .env("DOCKER_BUILDKIT", "1")
            .env("DOCKER_CONFIG", &self.config_dir);
        c
    }

    /// `GET path` on the daemon's socket (HTTP/1.0, so no chunking).
    fn api_get(&self, path: &str) -> Result<serde_json::Value, String> {
        let socket = self
            .socket
            .as_ref()
            .ok_or("the Docker API needs a unix socket")?;
        let mut s = std::os::unix::net::UnixStream::connect(socket)
            .map_err(|e| format!("{}: {e}", socket.display()))?;
        s.set_read_timeout(Some(Duration::from_secs(120))).ok();
        write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("no HTTP header end")?;
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!(
                "GET {path}: {}",
                head.lines().next().unwrap_or_default()
            ));
        }
        serde_json::from_slice(&raw[split + 4..]).map_err(|e| format!("GET {path}: {e}"))
    }

    /// Every build-cache record of the daemon (the API's `/system/df`).
    pub fn records(&self) -> Result<Vec<CacheRecord>, String> {
        let v = self.api_get("/system/df")?;
        // RFC 3339 ("2026-11-22T07:56:04.494025446Z") to Unix nanoseconds.
        let t = |x: &serde_json::Value| {
            x.as_str()
                .and_then(|s| humantime::parse_rfc3339(s).ok())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128)
        };
        Ok(v["BuildCache"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| CacheRecord {
                id: r["ID"].as_str().unwrap_or("").to_string(),
                parent: r["Parent"].as_str().unwrap_or("").to_string(),
                kind: r["Type"].as_str().unwrap_or("").to_string(),
                description: r["Description"].as_str().unwrap_or("").to_string(),
                size: r["Size"].as_i64().unwrap_or(-1),
                created: t(&r["CreatedAt"]),
                last_used: t(&r["LastUsedAt"]),
                usage: r["UsageCount"].as_i64().unwrap_or(0),
            })
            .collect())
    }

    /// Ids of every build-cache record in the daemon (`docker system df -v`).
    fn cache_ids(&self) -> BTreeSet<String> {
        let out = self
            .cmd()
            .args(["system", "df", "-v"])
            .stderr(Stdio::null())
            .output()
            .expect("docker system df");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut ids = BTreeSet::new();
        let mut in_cache = false;
        for line in text.lines() {
            if line.starts_with("CACHE ID") {
                in_cache = true;
                continue;
            }
            if in_cache {
                if let Some(id) = line.split_whitespace().next() {
                    ids.insert(id.to_string());
                }
            }
        }
        ids
    }

    /// `docker build --network host --progress plain`: wall time, image id
    /// and the steps; panics if the build fails.
    pub fn build(&mut self, b: &BkBuild) -> BkRun {
        let iid = self.config_root.join("iid");
        let _ = fs::remove_file(&iid);
        let before = (self.records_by == Records::Appeared).then(|| self.cache_ids());
        let mut cmd = self.cmd();
        // A dockerd run with --bridge=none fails BuildKit's default network
        // ("network bridge not found"). Host networking is also memobuild's default.
        cmd.args([
            "build",
            "--network",
            "host",
            "--progress",
            "plain",
            "--iidfile",
        ])
        .arg(&iid)
        .args(["-t", b.tag]);
        for a in b.build_args {
            cmd.arg("--build-arg").arg(a);
        }
        cmd.arg("-f").arg(b.ctx.join(b.dockerfile)).arg(b.ctx);
        let start = now_ns();
        let (wall, out) = timed(&mut cmd);
        let end = now_ns();
        self.builds += 1;
        self.tags.insert(b.tag.to_string());
        if let Some(before) = before {
            let after = self.cache_ids();
            self.appeared.extend(after.difference(&before).cloned());
        }
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        let (steps, transferred) = parse_plain(&text);
        let image = fs::read_to_string(&iid)
            .unwrap_or_default()
            .trim()
            .to_string();
        if !image.is_empty() {
            self.images.insert(image.clone());
        }
        let run = BkRun {
            wall,
            image,
            steps,
            transferred,
        };
        self.logs.push(BkBuildLog {
            start,
            end,
            anchor: b.anchor,
            executed_tail: run.executed_tail(),
            dockerfile_len: file_len(&b.ctx.join(b.dockerfile)),
            ignore_len: file_len(&b.ctx.join(".dockerignore")),
            big_context: b.big_context,
        });
        if !out.status.success() || run.image.is_empty() {
            panic!("docker build failed ({}):\n{text}", out.status);
        }
        run
    }

    /// [`Records::Claimed`]: the records of `all` this bench's builds created.
    /// 1. The step chain: the exec record of the build's last RUN (its
    ///    `anchor`), then its parents, as many as the build ran (a CACHED
    ///    step's record is someone else's).
    /// 2. Local sources (Dockerfile, context) created during one of our builds
    ///    whose size is what it sent; benches pad their Dockerfile and
    ///    .dockerignore to sizes unique to the process for this.
    /// 3. A small context upload whose size anyone's could have
    ///    ([`Docker::shared_upload`] bytes, e.g. a busybox-only context): ours
    ///    only if created during one of our builds and used again by a later one.
    pub fn claim(&self, all: &[CacheRecord]) -> Vec<CacheRecord> {
        let shared = self.shared_upload;
        let by_id: HashMap<&str, &CacheRecord> = all.iter().map(|r| (r.id.as_str(), r)).collect();
        let mut ours: BTreeMap<String, CacheRecord> = BTreeMap::new();
        let inside = |t: i128, b: &BkBuildLog| t >= b.start && t <= b.end;
        for b in &self.logs {
            for anchor in all
                .iter()
                .filter(|r| r.description == b.anchor && inside(r.created, b))
            {
                let mut cur = Some(anchor);
                let mut n = 0;
                while let Some(r) = cur {
                    if n >= b.executed_tail.max(1) || !inside(r.created, b) {
                        break;
                    }
                    ours.insert(r.id.clone(), r.clone());
                    n += 1;
                    cur = by_id.get(r.parent.as_str()).copied();
                }
            }
            for r in all
                .iter()
                .filter(|r| r.kind == "source.local" && inside(r.created, b))
            {
                let sent = |len: i64| len > 0 && (r.size == len || r.size == 2 * len);
                let mine = match r.description.as_str() {
                    "local source for dockerfile" => sent(b.dockerfile_len),
                    "local source for context" => {
                        sent(b.ignore_len) || b.big_context.is_some_and(|big| r.size >= big / 2)
                    }
                    _ => false,
                };
                if mine {
                    ours.insert(r.id.clone(), r.clone());
                }
            }
        }
        for r in all.iter().filter(|r| {
            r.kind == "source.local"
                && r.description == "local source for context"
                && (r.size == shared || r.size == 2 * shared)
                && r.usage >= 2
        }) {
            let created = self.logs.iter().any(|b| inside(r.created, b));
            let last = self.logs.iter().any(|b| inside(r.last_used, b));
            if created && last {
                ours.insert(r.id.clone(), r.clone());
            }
        }
        ours.into_values().collect()
    }

    fn prune(&self, id: &str) -> bool {
        self.cmd()
            .args(["builder", "prune", "-af", "--filter", &format!("id={id}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Removes our images (tags, then the ids our builds produced if left
    /// untagged) and the build-cache records of ours, one `--filter id=` at a
    /// time (this daemon refuses several values for one filter).
    pub fn clean(&mut self) {
        for tag in std::mem::take(&mut self.tags) {
            let _ = self
                .cmd()
                .args(["rmi", &tag])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for id in std::mem::take(&mut self.images) {
            // Only images left untagged: an identical image someone else tagged
            // stays (a plain `rmi ID` would delete it along with its one tag).
            let tags = run_with_timeout(
                self.cmd()
                    .args(["image", "inspect", "--format", "{{len .RepoTags}}", &id]),
                Duration::from_secs(30),
            );
            if tags.as_deref().map(str::trim) != Some("0") {
                continue;
            }
            let ok = self
                .cmd()
                .args(["rmi", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                self.images_removed += 1;
            }
        }
        if self.records_by == Records::Appeared {
            for id in std::mem::take(&mut self.appeared) {
                if self.prune(&id) {
                    self.pruned += 1;
                }
            }
            return;
        }
        for attempt in 0..3 {
            let all = match self.records() {
                Ok(all) => all,
                Err(e) => {
                    eprintln!("{} bench: listing build cache: {e}", self.bench);
                    return;
                }
            };
            let mut ours = self.claim(&all);
            if ours.is_empty() {
                self.failed.clear();
                return;
            }
            if attempt == 2 {
                self.failed = ours.into_iter().map(|r| r.id).collect();
                return;
            }
            // Children before parents.
            ours.sort_by_key(|r| std::cmp::Reverse(r.created));
            for r in &ours {
                if self.prune(&r.id) {
                    self.pruned += 1;
                }
            }
        }
    }

    /// "Docker clean-up: …": what [`Docker::clean`] did, for the report.
    pub fn clean_note(&self) -> String {
        format!(
            "Docker clean-up: {} images removed, {} build-cache records pruned (attributed to this bench's {} builds); {} of ours could not be pruned{}",
            self.images_removed,
            self.pruned,
            self.builds,
            self.failed.len(),
            if self.failed.is_empty() {
                String::new()
            } else {
                format!(": {:?}", self.failed)
            }
        )
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        self.clean();
    }
}

/// "1.98MB", "2B", "100.4MB" (go-units, decimal) to bytes.
fn parse_human_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let scale = match unit {
        "B" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        _ => return None,
    };
    Some((num * scale) as u64)
}

/// Parses `--progress=plain` output: the COPY/RUN steps in order, and the
/// largest context transfer.
fn parse_plain(text: &str) -> (Vec<BkStep>, u64) {
    let mut names: BTreeMap<usize, String> = BTreeMap::new();
    let mut cached: BTreeSet<usize> = BTreeSet::new();
    let mut done: HashMap<usize, f64> = HashMap::new();
    let mut transferred = 0u64;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('#') else {
            continue;
        };
        let Some((num, body)) = rest.split_once(' ') else {
            continue;
        };
        let Ok(n) = num.parse::<usize>() else {
            continue;
        };
        if body.starts_with('[') && !body.starts_with("[internal]") {
            if let Some((_, name)) = body.split_once("] ") {
                if name.starts_with("RUN ") || name.starts_with("COPY ") {
                    names.entry(n).or_insert_with(|| name.to_string());
                }
            }
        } else if body == "CACHED" {
            cached.insert(n);
        } else if let Some(t) = body.strip_prefix("DONE ") {
            if let Ok(s) = t.trim_end_matches('s').parse::<f64>() {
                done.insert(n, s);
            }
        } else if let Some(t) = body.strip_prefix("transferring context: ") {
            if let Some(size) = t.split_whitespace().next().and_then(parse_human_size) {
                transferred = transferred.max(size);
            }
        }
    }
    let steps = names
        .into_iter()
        .map(|(n, name)| BkStep {
            name,
            cached: cached.contains(&n),
            secs: done.get(&n).copied(),
        })
        .collect();
    (steps, transferred)
}
