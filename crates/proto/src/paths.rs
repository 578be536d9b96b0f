//! Where the daemon's socket and data live when nobody says otherwise.
//!
//! Order of precedence for the socket: `--socket`, then `MEMOBUILD_SOCKET`, then the
//! per-user default. Root uses the system service's paths.

use std::path::{Component, Path, PathBuf};

pub const SOCKET_ENV: &str = "MEMOBUILD_SOCKET";
pub const SYSTEM_SOCKET: &str = "/run/memobuild/memobuildd.sock";
pub const SYSTEM_DATA_DIR: &str = "/var/lib/memobuild";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The socket to use given an explicit `--socket` value, if any.
pub fn socket_path(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(path) = explicit {
        return path;
    }
    if let Some(path) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    default_socket_path()
}

/// `$XDG_RUNTIME_DIR/memobuild/memobuildd.sock`, or the system socket for root.
pub(crate) fn default_socket_path() -> PathBuf {
    if is_root() {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    runtime_dir().join("memobuild").join("memobuildd.sock")
}

/// `$XDG_DATA_HOME/memobuild`; without XDG_DATA_HOME, the system data dir for root
/// and `~/.local/share/memobuild` for everyone else.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(dir).join("memobuild");
    }
    if is_root() {
        return PathBuf::from(SYSTEM_DATA_DIR);
    }
    home_dir().join(".local/share/memobuild")
}

fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(dir);
    }
    // No session runtime dir (cron, ssh without PAM): fall back to a per-user dir
    // under /tmp, which the daemon creates with mode 0700.
    PathBuf::from(format!("/tmp/memobuild-{}", nix::unistd::geteuid()))
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// `path` without `.` and `..` components (`/a/b/../c` is `/a/c`): the one
/// spelling of a Dockerfile path in project ids, `status` and reports, so a
/// client picking a project by path names it as the daemon does.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}
