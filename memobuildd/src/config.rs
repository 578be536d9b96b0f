//! The daemon's settings: command-line flags, over the config file
//! (`/etc/memobuild/memobuildd.toml`, or `--config PATH`), over defaults. Every
//! option of the file is also a flag, with the same name.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const DEFAULT_CONFIG: &str = "/etc/memobuild/memobuildd.toml";

#[derive(Debug, Clone, Default, clap::Parser)]
#[command(
    name = "memobuildd",
    version,
    about = "The memobuild daemon: incremental container image builds"
)]
pub struct Flags {
    /// Config file [default: /etc/memobuild/memobuildd.toml when it exists]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Validate the config, print the effective settings and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Write the man page memobuildd.8 into DIR and exit.
    #[arg(long, value_name = "DIR")]
    pub generate_man: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

/// The options, as flags and as config-file keys (kebab-case). All optional
/// here; [`Config`] holds the resolved values.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Where the cache, blobs and images live [default: $XDG_DATA_HOME/memobuild, /var/lib/memobuild for root]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Unix socket to listen on [default: $MEMOBUILD_SOCKET, else the per-user or system default]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Group allowed to use the socket (mode 0660); without it the socket is 0600
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// containerd socket for RUN steps [default: start a private containerd under the data dir]
    #[arg(long, value_name = "PATH")]
    pub containerd_socket: Option<PathBuf>,
    /// Network for RUN steps without --network: default (as Docker: the step's own network namespace with outbound access through NAT) or none [default: default]
    #[arg(long, value_parser = ["default", "none"])]
    pub default_network: Option<String>,
    /// Entitlements builds may ask for with --allow: network.host, security.insecure, comma-separated [default: none]
    #[arg(long, value_name = "ENTITLEMENTS", value_delimiter = ',')]
    pub insecure_entitlements: Option<Vec<String>>,
    /// Kill a RUN step after this many seconds; 0 = no limit [default: 3600]
    #[arg(long, value_name = "SECONDS")]
    pub step_timeout: Option<u64>,
    /// Memory limit of each RUN step, e.g. 2g or 512m (per build: memobuild-ctl build --memory)
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// CPUs each RUN step may use, e.g. 1.5
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,
    /// Most processes in each RUN step; 0 = no limit [default: 4096]
    #[arg(long, value_name = "N")]
    pub pids_limit: Option<i64>,
    /// Most RUN steps running at once, across builds [default: the number of CPUs]
    #[arg(long, value_name = "N")]
    pub max_parallel_runs: Option<usize>,
    // Logging and metrics (docs/OBSERVABILITY.md).
    /// Log format on stderr and in the log files: text or json (one object per line) [default: text]
    #[arg(long, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Directory for the daily daemon logs and the per-build logs [default: DATA_DIR/logs]
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// Daily daemon log files to keep [default: 14]
    #[arg(long, value_name = "N")]
    pub log_max_files: Option<usize>,
    /// Per-build logs to keep for `memobuild-ctl logs`; the oldest go first [default: 200]
    #[arg(long, value_name = "N")]
    pub build_logs_keep: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9464 [default: off]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Allow --metrics-listen on a non-loopback address (the endpoint has no authentication)
    #[arg(long)]
    #[serde(default)]
    pub metrics_allow_remote: bool,

    // Access and lifecycle (docs/SECURITY.md, docs/OPERATIONS.md).
    /// Users who may use the daemon, names or uids, comma-separated [default: root, the daemon's user, and the socket's group]
    #[arg(long, value_name = "USERS", value_delimiter = ',')]
    #[serde(default, deserialize_with = "names_or_ids")]
    pub allowed_users: Option<Vec<String>>,
    /// Groups whose members (primary or supplementary) may use the daemon, names or gids, comma-separated
    #[arg(long, value_name = "GROUPS", value_delimiter = ',')]
    #[serde(default, deserialize_with = "names_or_ids")]
    pub allowed_groups: Option<Vec<String>>,
    /// Users who may act on every user's images, build logs, projects and cache entries (besides root and the daemon's user), names or uids, comma-separated; they may also use the daemon
    #[arg(long, value_name = "USERS", value_delimiter = ',')]
    #[serde(default, deserialize_with = "names_or_ids")]
    pub admin_users: Option<Vec<String>>,
    /// Groups whose members (primary or supplementary) are admins as admin-users are, names or gids, comma-separated
    #[arg(long, value_name = "GROUPS", value_delimiter = ',')]
    #[serde(default, deserialize_with = "names_or_ids")]
    pub admin_groups: Option<Vec<String>>,
    /// On SIGTERM/SIGINT, how long running builds may take before they are cancelled: seconds or a duration like 1m30s [default: 30s]
    #[arg(long, value_name = "DURATION")]
    #[serde(default, deserialize_with = "duration_text")]
    pub shutdown_grace: Option<String>,
    /// Cap on the blob store, e.g. 20GB: least-recently-used cache entries are pruned after a build above it [default: no cap]
    #[arg(long, value_name = "SIZE")]
    pub max_storage: Option<String>,
    /// Most builds running at once; more wait in a fair queue [default: 4]
    #[arg(long, value_name = "N")]
    pub max_parallel_builds: Option<usize>,
    /// A registry spoken to over plain HTTP, HOST:PORT (repeat for more; in the file, a list)
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    #[serde(default)]
    pub insecure_registry: Vec<String>,
    /// Remote step cache (type=registry) every build reads and writes unless it names its own, e.g. registry.example:5000/team/cache:main
    #[arg(long, value_name = "REF")]
    pub cache_ref: Option<String>,
    /// Forget projects (and stop watching their contexts) not built for this long: seconds or a duration like 7d; 0 = never [default: 7d]
    #[arg(long, value_name = "DURATION")]
    #[serde(default, deserialize_with = "duration_text")]
    pub forget_projects_after: Option<String>,
    /// Most projects kept; beyond it the least recently built are forgotten; 0 = no cap [default: 200]
    #[arg(long, value_name = "N")]
    pub max_projects: Option<usize>,
}

/// The effective settings.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub socket_group: Option<String>,
    pub containerd_socket: Option<PathBuf>,
    pub default_network: String,
    pub insecure_entitlements: Vec<String>,
    pub step_timeout: u64,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids_limit: i64,
    pub max_parallel_runs: usize,
    pub log_format: String,
    pub log_dir: PathBuf,
    pub log_max_files: usize,
    pub build_logs_keep: usize,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub metrics_allow_remote: bool,
    pub allowed_users: Vec<String>,
    pub allowed_groups: Vec<String>,
    pub admin_users: Vec<String>,
    pub admin_groups: Vec<String>,
    #[serde(serialize_with = "humantime_text")]
    pub shutdown_grace: std::time::Duration,
    pub max_storage: Option<u64>,
    pub max_parallel_builds: usize,
    pub insecure_registry: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_ref: Option<String>,
    #[serde(serialize_with = "humantime_text")]
    pub forget_projects_after: std::time::Duration,
    pub max_projects: usize,
    /// Where the file settings came from, if anywhere.
    #[serde(skip)]
    pub file: Option<PathBuf>,
    /// The flags these settings were resolved from, so SIGHUP can re-read
    /// the file with the same flags still winning.
    #[serde(skip)]
    pub flags: Flags,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// `self`, with unset options taken from `other`.
    fn or(self, other: Settings) -> Settings {
        Settings {
            data_dir: self.data_dir.or(other.data_dir),
            socket: self.socket.or(other.socket),
            socket_group: self.socket_group.or(other.socket_group),
            containerd_socket: self.containerd_socket.or(other.containerd_socket),
            default_network: self.default_network.or(other.default_network),
            insecure_entitlements: self.insecure_entitlements.or(other.insecure_entitlements),
            step_timeout: self.step_timeout.or(other.step_timeout),
            memory: self.memory.or(other.memory),
            cpus: self.cpus.or(other.cpus),
            pids_limit: self.pids_limit.or(other.pids_limit),
            max_parallel_runs: self.max_parallel_runs.or(other.max_parallel_runs),
            log_format: self.log_format.or(other.log_format),
            log_dir: self.log_dir.or(other.log_dir),
            log_max_files: self.log_max_files.or(other.log_max_files),
            build_logs_keep: self.build_logs_keep.or(other.build_logs_keep),
            metrics_listen: self.metrics_listen.or(other.metrics_listen),
            metrics_allow_remote: self.metrics_allow_remote || other.metrics_allow_remote,
            allowed_users: self.allowed_users.or(other.allowed_users),
            allowed_groups: self.allowed_groups.or(other.allowed_groups),
            admin_users: self.admin_users.or(other.admin_users),
            admin_groups: self.admin_groups.or(other.admin_groups),
            shutdown_grace: self.shutdown_grace.or(other.shutdown_grace),
            max_storage: self.max_storage.or(other.max_storage),
            max_parallel_builds: self.max_parallel_builds.or(other.max_parallel_builds),
            insecure_registry: if self.insecure_registry.is_empty() {
                other.insecure_registry
            } else {
                self.insecure_registry
            },
            cache_ref: self.cache_ref.or(other.cache_ref),
            forget_projects_after: self.forget_projects_after.or(other.forget_projects_after),
            max_projects: self.max_projects.or(other.max_projects),
        }
    }
}

fn read_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        ConfigError(format!(
            "config file {}: {e}\nhint: options are the daemon's flags without the dashes, e.g. step-timeout = 600 (see `memobuildd --help`)",
            path.display()
        ))
    })
}

/// Resolves flags, the config file and defaults into the effective settings.
pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
    let (file_settings, file) = match &flags.config {
        Some(path) => (read_file(path)?, Some(path.clone())),
        None if Path::new(DEFAULT_CONFIG).is_file() => (
            read_file(Path::new(DEFAULT_CONFIG))?,
            Some(PathBuf::from(DEFAULT_CONFIG)),
        ),
        None => (Settings::default(), None),
    };
    let s = flags.settings.clone().or(file_settings);
    let memory = s
        .memory
        .as_deref()
        .map(memobuild_proto::parse_size)
        .transpose()
        .map_err(|e| ConfigError(format!("memory: {e}")))?;
    let max_storage = s
        .max_storage
        .as_deref()
        .map(memobuild_proto::parse_size)
        .transpose()
        .map_err(|e| ConfigError(format!("max-storage: {e}")))?;
    let default_network = s.default_network.unwrap_or_else(|| "default".into());
    if default_network == "host" {
        return Err(ConfigError(
            "default-network = \"host\" is no longer offered: RUN steps get their own network namespace with outbound access\nhint: to let builds use the host's network, set insecure-entitlements = [\"network.host\"] and build with --allow network.host --network host (docs/SECURITY.md)".into(),
        ));
    }
    if default_network != "default" && default_network != "none" {
        return Err(ConfigError(format!(
            "default-network = {default_network:?}: use \"default\" or \"none\""
        )));
    }
    let insecure_entitlements = s.insecure_entitlements.unwrap_or_default();
    if let Some(bad) = insecure_entitlements
        .iter()
        .find(|e| !memobuild_proto::ENTITLEMENTS.contains(&e.as_str()))
    {
        return Err(ConfigError(format!(
            "insecure-entitlements: unknown entitlement {bad:?}: use network.host or security.insecure"
        )));
    }
    if let Some(c) = s.cpus.filter(|c| !(c.is_finite() && *c > 0.0)) {
        return Err(ConfigError(format!(
            "cpus = {c}: must be a positive number"
        )));
    }
    let data_dir = s
        .data_dir
        .unwrap_or_else(memobuild_proto::paths::default_data_dir);
    let log_format = s.log_format.unwrap_or_else(|| "text".into());
    if log_format != "text" && log_format != "json" {
        return Err(ConfigError(format!(
            "log-format = {log_format:?}: use \"text\" or \"json\""
        )));
    }
    check_metrics_listen(s.metrics_listen, s.metrics_allow_remote)?;
    Ok(Config {
        log_format,
        log_dir: s.log_dir.unwrap_or_else(|| data_dir.join("logs")),
        log_max_files: s.log_max_files.unwrap_or(14).max(1),
        build_logs_keep: s.build_logs_keep.unwrap_or(200).max(1),
        metrics_listen: s.metrics_listen,
        metrics_allow_remote: s.metrics_allow_remote,
        data_dir,
        socket: memobuild_proto::paths::socket_path(s.socket),
        socket_group: s.socket_group,
        containerd_socket: s.containerd_socket,
        default_network,
        insecure_entitlements,
        step_timeout: s.step_timeout.unwrap_or(3600),
        memory,
        cpus: s.cpus,
        pids_limit: s.pids_limit.unwrap_or(4096),
        max_parallel_runs: s
            .max_parallel_runs
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            })
            .max(1),
        allowed_users: non_empty("allowed-users", s.allowed_users)?,
        allowed_groups: non_empty("allowed-groups", s.allowed_groups)?,
        admin_users: non_empty("admin-users", s.admin_users)?,
        admin_groups: non_empty("admin-groups", s.admin_groups)?,
        shutdown_grace: parse_grace(s.shutdown_grace.as_deref())?,
        max_storage,
        max_parallel_builds: s
            .max_parallel_builds
            .unwrap_or(memobuild_engine::DEFAULT_MAX_PARALLEL_BUILDS)
            .max(1),
        insecure_registry: s.insecure_registry,
        cache_ref: s.cache_ref,
        forget_projects_after: parse_forget_after(s.forget_projects_after.as_deref())?,
        max_projects: s
            .max_projects
            .unwrap_or(memobuild_engine::DEFAULT_MAX_PROJECTS),
        file,
        flags: flags.clone(),
    })
}

/// Re-reads the config file `config` came from, with the same flags: what
/// SIGHUP does.
pub fn reload(config: &Config) -> Result<Config, ConfigError> {
    let mut flags = config.flags.clone();
    flags.config = config.file.clone().or(flags.config);
    load(&flags)
}

// ---------------------------------------------------------------------------
// Access and lifecycle options: parsing and validation.

/// Users and groups may be written as names or numeric ids (TOML strings or
/// integers).
fn names_or_ids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NameOrId {
        Id(u32),
        Name(String),
    }
    let items = Vec::<NameOrId>::deserialize(d)?;
    Ok(Some(
        items
            .into_iter()
            .map(|i| match i {
                NameOrId::Id(n) => n.to_string(),
                NameOrId::Name(s) => s,
            })
            .collect(),
    ))
}

/// A duration may be a number of seconds or a text like "1m30s".
fn duration_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum SecondsOrText {
        Seconds(u64),
        Text(String),
    }
    Ok(Some(match SecondsOrText::deserialize(d)? {
        SecondsOrText::Seconds(n) => n.to_string(),
        SecondsOrText::Text(t) => t,
    }))
}

fn humantime_text<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

fn non_empty(key: &str, items: Option<Vec<String>>) -> Result<Vec<String>, ConfigError> {
    let items: Vec<String> = items
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.trim().to_string())
        .collect();
    if items.iter().any(String::is_empty) {
        return Err(ConfigError(format!(
            "{key}: an empty name; list names or numeric ids, e.g. {key} = [\"alice\", \"1001\"]"
        )));
    }
    Ok(items)
}

/// `shutdown-grace`: seconds ("30") or Docker-style ("1m30s", "500ms").
pub fn parse_grace(text: Option<&str>) -> Result<std::time::Duration, ConfigError> {
    let Some(text) = text.map(str::trim) else {
        return Ok(std::time::Duration::from_secs(30));
    };
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| {
        ConfigError(format!(
            "shutdown-grace = {text:?}: {e}; use seconds (30) or a duration like 1m30s"
        ))
    })
}

/// `forget-projects-after`: seconds or a duration; 0 = never.
fn parse_forget_after(text: Option<&str>) -> Result<std::time::Duration, ConfigError> {
    let Some(text) = text.map(str::trim) else {
        return Ok(memobuild_engine::DEFAULT_FORGET_AFTER);
    };
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| {
        ConfigError(format!(
            "forget-projects-after = {text:?}: {e}; use seconds (3600), a duration like 7d, or 0 for never"
        ))
    })
}

/// The metrics endpoint has no authentication: it listens on loopback unless
/// the operator says the network is trusted.
fn check_metrics_listen(
    addr: Option<std::net::SocketAddr>,
    allow_remote: bool,
) -> Result<(), ConfigError> {
    match addr {
        Some(a) if !a.ip().is_loopback() && !allow_remote => Err(ConfigError(format!(
            "metrics-listen = {a}: not a loopback address, and the metrics endpoint has no authentication\nhint: listen on 127.0.0.1 or [::1] (behind a proxy if others must scrape), or set metrics-allow-remote = true (--metrics-allow-remote) on a trusted network"
        ))),
        _ => Ok(()),
    }
}

impl Config {
    pub fn run_settings(&self) -> memobuild_engine::RunSettings {
        memobuild_engine::RunSettings {
            containerd_socket: self.containerd_socket.clone(),
            default_network_none: self.default_network == "none",
            insecure_entitlements: self.insecure_entitlements.clone(),
            step_timeout: (self.step_timeout > 0)
                .then(|| std::time::Duration::from_secs(self.step_timeout)),
            memory_bytes: self.memory,
            cpus: self.cpus,
            pids: (self.pids_limit > 0).then_some(self.pids_limit),
            max_parallel: self.max_parallel_runs,
            registries: memobuild_engine::RegistrySettings {
                insecure: self.insecure_registry.clone(),
                cache_ref: self.cache_ref.clone(),
            },
        }
    }

    /// The settings as TOML, for `--check-config`.
    pub fn to_toml(&self) -> String {
        let source = match &self.file {
            Some(f) => format!("# effective settings (file: {}, then flags)\n", f.display()),
            None => "# effective settings (no config file; flags and defaults)\n".to_string(),
        };
        source + &toml::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "step-timeout = 60\nmemory = \"1g\"\ndefault-network = \"none\"\n",
        )
        .unwrap();
        let flags = Flags::parse_from([
            "memobuildd",
            "--config",
            file.to_str().unwrap(),
            "--step-timeout",
            "5",
            "--socket",
            "/tmp/x.sock",
        ]);
        let c = load(&flags).unwrap();
        assert_eq!(c.step_timeout, 5);
        assert_eq!(c.memory, Some(1 << 30));
        assert_eq!(c.default_network, "none");
        assert_eq!(c.pids_limit, 4096);
        assert!(c.to_toml().contains("step-timeout = 5"));
    }

    #[test]
    fn networks_and_entitlements_are_checked() {
        let c = load(&Flags::parse_from(["memobuildd", "--data-dir", "/d"])).unwrap();
        assert_eq!(c.default_network, "default");
        assert!(c.insecure_entitlements.is_empty());
        assert!(c.run_settings().insecure_entitlements.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("e.toml");
        std::fs::write(&file, "insecure-entitlements = [\"network.host\"]\n").unwrap();
        let path = file.to_str().unwrap();
        let c = load(&Flags::parse_from(["memobuildd", "--config", path])).unwrap();
        assert_eq!(c.run_settings().insecure_entitlements, ["network.host"]);
        assert!(c
            .to_toml()
            .contains("insecure-entitlements = [\"network.host\"]"));
        let both = Flags::parse_from([
            "memobuildd",
            "--insecure-entitlements",
            "network.host,security.insecure",
        ]);
        assert_eq!(load(&both).unwrap().insecure_entitlements.len(), 2);
        let bad = Flags::parse_from(["memobuildd", "--insecure-entitlements", "device"]);
        assert!(load(&bad).unwrap_err().0.contains("unknown entitlement"));
        std::fs::write(&file, "default-network = \"host\"\n").unwrap();
        let e = load(&Flags::parse_from(["memobuildd", "--config", path])).unwrap_err();
        assert!(e.0.contains("network.host"), "{}", e.0);
    }

    #[test]
    fn project_limits_default_to_a_week_and_200_and_read_durations() {
        let flags = Flags::parse_from(["memobuildd", "--data-dir", "/d"]);
        let c = load(&flags).unwrap();
        assert_eq!(
            c.forget_projects_after,
            std::time::Duration::from_secs(7 * 86400)
        );
        assert_eq!(c.max_projects, 200);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(&file, "forget-projects-after = \"90m\"\nmax-projects = 3\n").unwrap();
        let path = file.to_str().unwrap();
        let c = load(&Flags::parse_from(["memobuildd", "--config", path])).unwrap();
        assert_eq!(
            c.forget_projects_after,
            std::time::Duration::from_secs(5400)
        );
        assert_eq!(c.max_projects, 3);
        assert!(c.to_toml().contains("forget-projects-after = \"1h 30m\""));
        let never = Flags::parse_from(["memobuildd", "--forget-projects-after", "0"]);
        assert!(load(&never).unwrap().forget_projects_after.is_zero());
        let bad = Flags::parse_from(["memobuildd", "--forget-projects-after", "soon"]);
        assert!(load(&bad).unwrap_err().0.contains("forget-projects-after"));
    }

    #[test]
    fn logging_and_metrics_settings_resolve_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "log-format = \"json\"\nbuild-logs-keep = 5\nmetrics-listen = \"127.0.0.1:9464\"\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let flags = Flags::parse_from(["memobuildd", "--config", path, "--data-dir", "/d"]);
        let c = load(&flags).unwrap();
        assert_eq!(c.log_format, "json");
        assert_eq!(c.log_dir, PathBuf::from("/d/logs"));
        assert_eq!((c.build_logs_keep, c.log_max_files), (5, 14));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert!(c.to_toml().contains("metrics-listen = \"127.0.0.1:9464\""));
        std::fs::write(&file, "metrics-listen = \"0.0.0.0:9464\"\n").unwrap();
        let e = load(&flags).unwrap_err().to_string();
        assert!(
            e.contains("not a loopback address") && e.contains("hint:"),
            "{e}"
        );
        let forced = Flags::parse_from(["memobuildd", "--config", path, "--metrics-allow-remote"]);
        assert!(load(&forced).is_ok());
        std::fs::write(&file, "log-format = \"xml\"\n").unwrap();
        assert!(load(&flags).unwrap_err().to_string().contains("log-format"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "step-timout = 60\n").unwrap();
        let flags = Flags::parse_from(["memobuildd", "--config", file.to_str().unwrap()]);
        let e = load(&flags).unwrap_err().to_string();
        assert!(e.contains("step-timout") && e.contains("hint:"), "{e}");
        std::fs::write(&file, "memory = \"lots\"\n").unwrap();
        assert!(load(&flags).unwrap_err().to_string().contains("memory"));
    }

    #[test]
    fn access_and_grace_options_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "allowed-users = [\"alice\", 1001]\nallowed-groups = [\"dev\"]\nshutdown-grace = \"1m30s\"\n",
        )
        .unwrap();
        let flags = Flags::parse_from(["memobuildd", "--config", file.to_str().unwrap()]);
        let c = load(&flags).unwrap();
        assert_eq!(c.allowed_users, ["alice", "1001"]);
        assert_eq!(c.allowed_groups, ["dev"]);
        assert!(c.admin_users.is_empty() && c.admin_groups.is_empty());
        assert_eq!(c.shutdown_grace, std::time::Duration::from_secs(90));
        assert!(
            c.to_toml().contains("shutdown-grace = \"1m 30s\""),
            "{}",
            c.to_toml()
        );
        let flags = Flags::parse_from([
            "memobuildd",
            "--config",
            file.to_str().unwrap(),
            "--allowed-users",
            "bob,2002",
            "--shutdown-grace",
            "5",
        ]);
        let c = load(&flags).unwrap();
        assert_eq!(c.allowed_users, ["bob", "2002"]);
        assert_eq!(c.shutdown_grace, std::time::Duration::from_secs(5));
        assert_eq!(
            load(&Flags::default()).map(|c| c.shutdown_grace).ok(),
            Some(std::time::Duration::from_secs(30))
        );
    }

    #[test]
    fn bad_grace_and_empty_names_are_errors_that_say_what_to_write() {
        let e = parse_grace(Some("soon")).unwrap_err().to_string();
        assert!(e.contains("shutdown-grace") && e.contains("1m30s"), "{e}");
        let flags = Flags::parse_from(["memobuildd", "--allowed-users", "alice,,bob"]);
        let e = load(&flags).unwrap_err().to_string();
        assert!(e.contains("allowed-users"), "{e}");
    }

    #[test]
    fn reload_rereads_the_file_and_flags_still_win() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(&file, "allowed-users = [\"alice\"]\nstep-timeout = 10\n").unwrap();
        let flags = Flags::parse_from([
            "memobuildd",
            "--config",
            file.to_str().unwrap(),
            "--step-timeout",
            "5",
        ]);
        let c = load(&flags).unwrap();
        std::fs::write(&file, "allowed-users = [\"bob\"]\nstep-timeout = 20\n").unwrap();
        let r = reload(&c).unwrap();
        assert_eq!(r.allowed_users, ["bob"]);
        assert_eq!(r.step_timeout, 5);
        std::fs::write(&file, "allowed-users = [").unwrap();
        assert!(reload(&c).is_err());
    }

    #[test]
    fn registry_settings_from_file_and_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.toml");
        std::fs::write(
            &file,
            "insecure-registry = [\"10.0.0.1:5000\"]\ncache-ref = \"r:5000/c:main\"\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let c = load(&Flags::parse_from(["memobuildd", "--config", path])).unwrap();
        assert_eq!(c.insecure_registry, vec!["10.0.0.1:5000"]);
        assert_eq!(
            c.run_settings().registries.cache_ref.as_deref(),
            Some("r:5000/c:main")
        );
        let flags = Flags::parse_from([
            "memobuildd",
            "--config",
            path,
            "--insecure-registry",
            "127.0.0.1:1",
            "--insecure-registry",
            "127.0.0.1:2",
        ]);
        let c = load(&flags).unwrap();
        assert_eq!(
            c.run_settings().registries.insecure,
            vec!["127.0.0.1:1", "127.0.0.1:2"]
        );
        assert!(c.to_toml().contains("insecure-registry"));
    }
}
