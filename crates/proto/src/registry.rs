//! What the client tells the daemon about registries: credentials (forwarded
//! from the user's docker config, never shown in Debug output), remote cache
//! exports, and Docker's rule for which registry an image name lives in.

use serde::{Deserialize, Serialize};

/// The default registry of names without a host (Docker Hub).
pub const DOCKER_HUB: &str = "docker.io";

/// A user's login at one registry.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Credential {
    /// Empty with a token: the password is then a bearer token.
    pub username: String,
    pub password: crate::Secret,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({:?}, <redacted>)", self.username)
    }
}

/// `--cache-to type=registry,ref=REF,mode=min|max`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheExport {
    pub reference: String,
    /// `mode=max`: every step of every stage; `min` (default): the target stage's steps.
    pub max: bool,
}

/// The registry host of an image name, as Docker decides it: the first
/// path component when it has a `.` or a `:` or is `localhost`, else Docker Hub.
pub fn registry_host(name: &str) -> String {
    match name.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => match first {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            other => other.to_string(),
        },
        _ => DOCKER_HUB.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_host_follows_docker() {
        assert_eq!(registry_host("busybox"), "docker.io");
        assert_eq!(registry_host("library/busybox:1"), "docker.io");
        assert_eq!(registry_host("user/app"), "docker.io");
        assert_eq!(registry_host("docker.io/user/app"), "docker.io");
        assert_eq!(registry_host("index.docker.io/user/app"), "docker.io");
        assert_eq!(registry_host("localhost/app"), "localhost");
        assert_eq!(registry_host("localhost:5000/app:1"), "localhost:5000");
        assert_eq!(
            registry_host("127.0.0.1:5000/a/b@sha256:00"),
            "127.0.0.1:5000"
        );
        assert_eq!(registry_host("ghcr.io/o/r"), "ghcr.io");
    }

    #[test]
    fn credentials_never_show_in_debug() {
        let c = Credential {
            username: "u".into(),
            password: crate::Secret(b"hunter2".to_vec()),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
