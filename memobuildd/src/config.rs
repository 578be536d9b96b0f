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
    /// Network for RUN steps without --network: host (as Docker: the step has network) or none [default: host]
    #[arg(long, value_parser = ["host", "none"])]
    pub default_network: Option<String>,
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
    /// A registry spoken to over plain HTTP, HOST:PORT (repeat for more; in the file, a list)
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    #[serde(default)]
    pub insecure_registry: Vec<String>,
    /// Remote step cache (type=registry) every build reads and writes unless it names its own, e.g. registry.example:5000/team/cache:main
    #[arg(long, value_name = "REF")]
    pub cache_ref: Option<String>,
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
    pub step_timeout: u64,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids_limit: i64,
    pub max_parallel_runs: usize,
    pub insecure_registry: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_ref: Option<String>,
    /// Where the file settings came from, if anywhere.
    #[serde(skip)]
    pub file: Option<PathBuf>,
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
            step_timeout: self.step_timeout.or(other.step_timeout),
            memory: self.memory.or(other.memory),
            cpus: self.cpus.or(other.cpus),
            pids_limit: self.pids_limit.or(other.pids_limit),
            max_parallel_runs: self.max_parallel_runs.or(other.max_parallel_runs),
            insecure_registry: if self.insecure_registry.is_empty() {
                other.insecure_registry
            } else {
                self.insecure_registry
            },
            cache_ref: self.cache_ref.or(other.cache_ref),
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
        .map(memobuild_shared::parse_size)
        .transpose()
        .map_err(|e| ConfigError(format!("memory: {e}")))?;
    let default_network = s.default_network.unwrap_or_else(|| "host".into());
    if default_network != "host" && default_network != "none" {
        return Err(ConfigError(format!(
            "default-network = {default_network:?}: use \"host\" or \"none\""
        )));
    }
    if let Some(c) = s.cpus.filter(|c| !(c.is_finite() && *c > 0.0)) {
        return Err(ConfigError(format!(
            "cpus = {c}: must be a positive number"
        )));
    }
    Ok(Config {
        data_dir: s
            .data_dir
            .unwrap_or_else(memobuild_shared::paths::default_data_dir),
        socket: memobuild_shared::paths::socket_path(s.socket),
        socket_group: s.socket_group,
        containerd_socket: s.containerd_socket,
        default_network,
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
        insecure_registry: s.insecure_registry,
        cache_ref: s.cache_ref,
        file,
    })
}

impl Config {
    pub fn run_settings(&self) -> crate::exec::RunSettings {
        crate::exec::RunSettings {
            containerd_socket: self.containerd_socket.clone(),
            default_network_none: self.default_network == "none",
            step_timeout: (self.step_timeout > 0)
                .then(|| std::time::Duration::from_secs(self.step_timeout)),
            memory_bytes: self.memory,
            cpus: self.cpus,
            pids: (self.pids_limit > 0).then_some(self.pids_limit),
            max_parallel: self.max_parallel_runs,
            registries: crate::oci::registry::RegistrySettings {
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
