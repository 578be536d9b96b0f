//! `--load` / `-o type=docker` when no Docker Engine answers: the image goes
//! into containerd's image store instead, through containerd's own client
//! `ctr images import` (it stores the blobs, creates the image record and
//! unpacks it into the default snapshotter, so `ctr run` and `nerdctl run`
//! can start it at once). Where: `CONTAINERD_ADDRESS` (default
//! `/run/containerd/containerd.sock`) and `CONTAINERD_NAMESPACE` (default
//! `default`), the variables `ctr` and `nerdctl` read.

use memobuild_proto::registry::{registry_host, DOCKER_HUB};
use memobuild_proto::RpcError;
use std::path::{Path, PathBuf};

const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";

/// A containerd that answered on its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub address: PathBuf,
    pub namespace: String,
}

impl Target {
    pub fn from_env() -> Target {
        let address = std::env::var("CONTAINERD_ADDRESS")
            .ok()
            .filter(|a| !a.is_empty())
            .map(|a| a.trim_start_matches("unix://").to_string())
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_string());
        let namespace = std::env::var("CONTAINERD_NAMESPACE")
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        Target {
            address: address.into(),
            namespace,
        }
    }

    /// Where, in words: `containerd at ADDR (namespace NS)`.
    pub fn describe(&self) -> String {
        format!(
            "containerd at {} (namespace {})",
            self.address.display(),
            self.namespace
        )
    }
}

/// Finds `name` on `PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The containerd to load into, if one answers and `ctr` is installed;
/// else why not (for the error that names every choice).
pub async fn reachable() -> Result<Target, String> {
    let target = Target::from_env();
    let how = if std::env::var_os("CONTAINERD_ADDRESS").is_some() {
        format!("{} (CONTAINERD_ADDRESS)", target.address.display())
    } else {
        format!(
            "{} (CONTAINERD_ADDRESS is not set)",
            target.address.display()
        )
    };
    if let Err(e) = tokio::net::UnixStream::connect(&target.address).await {
        return Err(format!("no containerd answers at {how}: {e}"));
    }
    if which("ctr").is_none() {
        return Err(format!(
            "containerd answers at {how}, but its client `ctr` is not on PATH (Debian package containerd)"
        ));
    }
    Ok(target)
}

/// A name as containerd's image store (and Docker's) keeps it:
/// `docker.io/library/demo:latest` for `demo`.
pub fn normalize(name: &str) -> String {
    let host = registry_host(name);
    let mut full = if host == DOCKER_HUB && !name.starts_with("docker.io/") {
        let rest = name
            .strip_prefix("index.docker.io/")
            .or_else(|| name.strip_prefix("registry-1.docker.io/"))
            .unwrap_or(name);
        if rest.contains('/') {
            format!("{DOCKER_HUB}/{rest}")
        } else {
            format!("{DOCKER_HUB}/library/{rest}")
        }
    } else {
        name.to_string()
    };
    let last = full.rsplit('/').next().unwrap_or(&full);
    if !last.contains(':') && !full.contains('@') {
        full.push_str(":latest");
    }
    full
}

/// Imports the OCI archive at `archive` (its index.json names the image with
/// `io.containerd.image.name`) into `target`; returns the names it created.
pub async fn import(
    target: &Target,
    archive: &Path,
    names: &[String],
) -> Result<Vec<String>, RpcError> {
    let mut command = tokio::process::Command::new("ctr");
    command.arg("--address").arg(&target.address).args([
        "--namespace",
        &target.namespace,
        "images",
        "import",
    ]);
    if names.is_empty() {
        // Without a name the image is kept under its digest, as Docker keeps
        // an unnamed image under its ID.
        command.arg("--digests");
    }
    command.arg(archive);
    let out = command.output().await.map_err(|e| {
        RpcError::with_hint(
            format!("--load: cannot run ctr: {e}"),
            "install containerd's client (Debian package containerd)",
        )
    })?;
    if !out.status.success() {
        return Err(RpcError::with_hint(
            format!(
                "--load: `ctr images import` into {} failed ({}): {}",
                target.describe(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            "check that you may use that containerd (root, or its socket's group), \
             or write the image to a file: -o type=oci,dest=FILE.tar",
        ));
    }
    let mut created: Vec<String> = names.iter().map(|n| normalize(n)).collect();
    if created.is_empty() {
        created = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.contains('@'))
            .map(String::from)
            .collect();
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_as_docker_does() {
        assert_eq!(normalize("demo"), "docker.io/library/demo:latest");
        assert_eq!(normalize("demo:1"), "docker.io/library/demo:1");
        assert_eq!(normalize("user/app:2"), "docker.io/user/app:2");
        assert_eq!(normalize("docker.io/user/app"), "docker.io/user/app:latest");
        assert_eq!(normalize("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(normalize("ghcr.io/o/r:3"), "ghcr.io/o/r:3");
    }
}
