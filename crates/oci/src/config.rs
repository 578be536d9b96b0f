//! The image config blob: OCI's `application/vnd.oci.image.config.v1+json` plus the
//! fields Docker and BuildKit add (`Healthcheck`, `Shell`, `OnBuild`), which
//! oci-spec's `Config` does not carry. Maps are `BTreeMap` so the JSON, and so
//! the digest, is stable.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Docker's default PATH for images that start `FROM scratch` (BuildKit sets it too).
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: RunConfig,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
}

/// `map[string]struct{}` in Go, as Docker writes ExposedPorts and Volumes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Empty {}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Empty>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Empty>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
}

/// Durations are nanoseconds, as Docker stores them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".to_string(),
            diff_ids: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// Gives every history entry without a time one, as BuildKit's exporter
/// does (normalizeLayersAndHistory): the entries before the first entry
/// with a time that follows an untimed one get that time (the build's first
/// new layer, not a base image's), later ones the time of the entry before
/// them. Returns the time of the last entry: the config's `created`.
pub fn fill_history_times(history: &mut [History]) -> Option<String> {
    let mut created: Option<String> = None;
    let mut untimed = false;
    for h in history.iter() {
        match &h.created {
            Some(t) => {
                created = Some(t.clone());
                if untimed {
                    break;
                }
            }
            None => untimed = true,
        }
    }
    untimed = false;
    for h in history.iter_mut() {
        match &h.created {
            Some(t) => {
                if untimed {
                    created = Some(t.clone());
                }
            }
            None => {
                untimed = true;
                h.created = created.clone();
            }
        }
    }
    history.iter().rev().find_map(|h| h.created.clone())
}

impl ImageConfig {
    /// The config of an empty image built `FROM scratch` on this host.
    pub fn scratch() -> ImageConfig {
        ImageConfig {
            architecture: host_architecture().to_string(),
            os: "linux".to_string(),
            config: RunConfig {
                env: Some(vec![DEFAULT_PATH_ENV.to_string()]),
                ..RunConfig::default()
            },
            ..ImageConfig::default()
        }
    }

    /// Value of an environment variable in the config.
    pub fn env_get(&self, name: &str) -> Option<&str> {
        self.config.env.as_ref()?.iter().find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
            (k == name).then_some(v)
        })
    }

    /// Sets an environment variable, replacing an earlier value in place as Docker does.
    pub fn env_set(&mut self, name: &str, value: &str) {
        let env = self.config.env.get_or_insert_with(Vec::new);
        let entry = format!("{name}={value}");
        match env
            .iter_mut()
            .find(|kv| kv.split_once('=').map(|(k, _)| k).unwrap_or(kv) == name)
        {
            Some(slot) => *slot = entry,
            None => env.push(entry),
        }
    }
}

/// GOARCH name of the machine we run on.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "arm" => "arm",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(created: Option<&str>) -> History {
        History {
            created: created.map(String::from),
            ..History::default()
        }
    }

    /// BuildKit's normalizeLayersAndHistory: untimed entries before the
    /// first new layer take its time, later ones the previous entry's.
    #[test]
    fn untimed_history_entries_are_filled_as_buildkit_fills_them() {
        let mut history = vec![
            h(Some("base1")),
            h(Some("base2")),
            h(None),
            h(Some("run1")),
            h(None),
            h(Some("copy2")),
            h(None),
        ];
        let created = fill_history_times(&mut history);
        let got: Vec<_> = history.iter().map(|h| h.created.clone().unwrap()).collect();
        assert_eq!(
            got,
            ["base1", "base2", "run1", "run1", "run1", "copy2", "copy2"]
        );
        assert_eq!(created.as_deref(), Some("copy2"));
        // Only metadata on a base image: the base's last time.
        let mut history = vec![h(Some("base1")), h(None)];
        assert_eq!(fill_history_times(&mut history).as_deref(), Some("base1"));
        // Nothing timed at all: no `created`.
        assert_eq!(fill_history_times(&mut [h(None)]), None);
    }
}
