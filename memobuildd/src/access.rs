//! Who may use the daemon: each accepted connection's peer credentials
//! (SO_PEERCRED) against `allowed-users` and `allowed-groups`. Root, the
//! daemon's own user and, when the socket's mode lets its group in, members of
//! the socket's group are always allowed. A refused client gets one clear
//! error for every request it makes (see [`refuse`]), and the daemon logs it.
//! An allowed peer is an admin (acts on every user's images, logs, projects
//! and cache entries) if it is root, the daemon's own user, or named in
//! `admin-users` / `admin-groups`; anyone else acts on their own only.

use crate::config::Config;
use futures::StreamExt;
use memobuild_proto::{ErrorKind, MemobuildRequest, MemobuildResponse, Reader, RpcError};
use nix::unistd::{Gid, Group, Uid, User};
use parking_lot::RwLock;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tarpc::server::{BaseChannel, Channel};

/// The access rules in effect (replaced as a whole on SIGHUP).
pub struct Access {
    socket: PathBuf,
    daemon_uid: u32,
    rules: RwLock<Arc<Rules>>,
}

#[derive(Debug, PartialEq)]
struct Rules {
    users: Vec<String>,
    groups: Vec<String>,
    admin_users: Vec<String>,
    admin_groups: Vec<String>,
    /// The socket file's group, when its mode grants the group access.
    socket_gid: Option<u32>,
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<i32>,
}

impl Access {
    /// Rules from `config`, for the socket at `socket` (already bound, so its
    /// group and mode are final).
    pub fn new(config: &Config, socket: &Path) -> Access {
        Access {
            socket: socket.to_path_buf(),
            daemon_uid: Uid::effective().as_raw(),
            rules: RwLock::new(Arc::new(Rules::from(config, socket))),
        }
    }

    /// Takes the rules of a reloaded config.
    pub fn update(&self, config: &Config) {
        let rules = Arc::new(Rules::from(config, &self.socket));
        *self.rules.write() = rules;
    }

    /// If `peer` may use the daemon: whose rights its builds read files with
    /// (`None`: root and the daemon's own user, who read with the daemon's)
    /// and whether it is an admin; else the message the client sees.
    pub async fn check(&self, peer: Peer) -> Result<(Option<Reader>, bool), String> {
        let rules = self.rules.read().clone();
        let (daemon_uid, socket) = (self.daemon_uid, self.socket.clone());
        // User and group lookups may go to NSS (files, LDAP): off the async workers.
        tokio::task::spawn_blocking(move || {
            decide(&rules, daemon_uid, &socket, peer)?;
            Ok((
                reader_of(daemon_uid, peer),
                is_admin(&rules, daemon_uid, peer),
            ))
        })
        .await
        .unwrap_or_else(|e| Err(format!("permission check failed: {e}")))
    }
}

impl Rules {
    fn from(config: &Config, socket: &Path) -> Rules {
        let socket_gid = std::fs::metadata(socket)
            .ok()
            .filter(|m| m.mode() & 0o060 != 0)
            .map(|m| m.gid());
        Rules {
            users: config.allowed_users.clone(),
            groups: config.allowed_groups.clone(),
            admin_users: config.admin_users.clone(),
            admin_groups: config.admin_groups.clone(),
            socket_gid,
        }
    }
}

/// The peer credentials of an accepted connection.
pub fn peer_of(conn: &tokio::net::UnixStream) -> std::io::Result<Peer> {
    let cred = conn.peer_cred()?;
    Ok(Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    })
}

/// The filesystem identity a peer's builds read with: its uid, gid and
/// supplementary groups (as at login). Root and the daemon's own user read
/// with the daemon's rights.
fn reader_of(daemon_uid: u32, peer: Peer) -> Option<Reader> {
    if peer.uid == 0 || peer.uid == daemon_uid {
        return None;
    }
    let user = User::from_uid(Uid::from_raw(peer.uid)).ok().flatten();
    let mut groups = groups_of(user.as_ref().map(|u| u.name.as_str()), peer.gid);
    groups.sort_unstable();
    groups.dedup();
    Some(Reader {
        uid: peer.uid,
        gid: peer.gid,
        groups,
    })
}

fn decide(rules: &Rules, daemon_uid: u32, socket: &Path, peer: Peer) -> Result<(), String> {
    if is_admin(rules, daemon_uid, peer) {
        return Ok(());
    }
    let name = User::from_uid(Uid::from_raw(peer.uid)).ok().flatten();
    let user_name = name.as_ref().map(|u| u.name.as_str());
    if listed(&rules.users, &rules.groups, rules.socket_gid, peer) {
        return Ok(());
    }
    Err(denied_message(rules, socket, peer.uid, user_name))
}

/// Root, the daemon's own user and those `admin-users` / `admin-groups`
/// name: they act on every user's images, logs, projects and cache entries.
fn is_admin(rules: &Rules, daemon_uid: u32, peer: Peer) -> bool {
    peer.uid == 0
        || peer.uid == daemon_uid
        || listed(&rules.admin_users, &rules.admin_groups, None, peer)
}

/// Whether `users` names the peer (by name or uid), or one of its groups
/// (primary or supplementary) is in `groups` (by name or gid) or is `gid`.
fn listed(users: &[String], groups: &[String], gid: Option<u32>, peer: Peer) -> bool {
    if users.is_empty() && groups.is_empty() && gid.is_none() {
        return false;
    }
    let name = User::from_uid(Uid::from_raw(peer.uid)).ok().flatten();
    let user_name = name.as_ref().map(|u| u.name.as_str());
    if users
        .iter()
        .any(|u| *u == peer.uid.to_string() || Some(u.as_str()) == user_name)
    {
        return true;
    }
    let allowed_gids: Vec<u32> = groups
        .iter()
        .filter_map(|g| group_id(g))
        .chain(gid)
        .collect();
    !allowed_gids.is_empty()
        && groups_of(user_name, peer.gid)
            .iter()
            .any(|g| allowed_gids.contains(g))
}

/// The user's primary group and, when it has a passwd entry, its
/// supplementary groups (as the kernel does at login: from /etc/group & co).
fn groups_of(user: Option<&str>, gid: u32) -> Vec<u32> {
    let list = user
        .and_then(|u| CString::new(u).ok())
        .and_then(|u| nix::unistd::getgrouplist(&u, Gid::from_raw(gid)).ok())
        .unwrap_or_default();
    std::iter::once(gid)
        .chain(list.into_iter().map(Gid::as_raw))
        .collect()
}

/// A group named by name or number; `None` (never matching) if unknown.
fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse::<u32>() {
        return Some(gid);
    }
    match Group::from_name(name) {
        Ok(Some(g)) => Some(g.gid.as_raw()),
        _ => None,
    }
}

fn group_name(gid: u32) -> String {
    match Group::from_gid(Gid::from_raw(gid)) {
        Ok(Some(g)) => g.name,
        _ => gid.to_string(),
    }
}

fn denied_message(rules: &Rules, socket: &Path, uid: u32, user: Option<&str>) -> String {
    let who = match user {
        Some(name) => format!("user {name} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    let group = rules
        .socket_gid
        .map(group_name)
        .or_else(|| rules.groups.first().cloned());
    let ask = match group {
        Some(g) => format!("allowed-users or to group {g}"),
        None => "allowed-users (or one of your groups to allowed-groups)".to_string(),
    };
    format!(
        "permission denied: {who} is not allowed to use memobuildd at {}; ask an admin to add you to {ask} in memobuildd.toml",
        socket.display()
    )
}

/// Serves a refused connection: every request gets `message` as a
/// PermissionDenied error, which memobuild-ctl prints as it is, until the
/// client hangs up.
pub async fn refuse<T>(transport: T, message: String)
where
    T: tarpc::Transport<tarpc::Response<MemobuildResponse>, tarpc::ClientMessage<MemobuildRequest>>
        + Send
        + 'static,
{
    // `hello`, every client's first call, gets the refusal as a typed error;
    // anything else gets a transport error with the same text.
    let answer = move |_: tarpc::context::Context, request: MemobuildRequest| {
        let message = message.clone();
        async move {
            match request {
                MemobuildRequest::Hello {} => Ok(MemobuildResponse::Hello(Err(RpcError::of(
                    ErrorKind::PermissionDenied,
                    message,
                )))),
                _ => Err(tarpc::ServerError::new(
                    std::io::ErrorKind::PermissionDenied,
                    message,
                )),
            }
        }
    };
    BaseChannel::with_defaults(transport)
        .execute(tarpc::server::serve(answer))
        .for_each(|response| response)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(users: &[&str], groups: &[&str], socket_gid: Option<u32>) -> Rules {
        Rules {
            users: users.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            admin_users: Vec::new(),
            admin_groups: Vec::new(),
            socket_gid,
        }
    }

    #[test]
    fn admins_are_root_the_daemons_user_and_those_configured() {
        let mut r = rules(&["nobody"], &[], None);
        assert!(is_admin(&r, 1234, peer(0, 0)));
        assert!(is_admin(&r, 1234, peer(1234, 1234)));
        assert!(!is_admin(&r, 1234, peer(65534, 65534)));
        r.admin_users = vec!["65534".into()];
        assert!(is_admin(&r, 1234, peer(65534, 65534)));
        // An admin need not be in allowed-users: admins may use the daemon.
        r.users.clear();
        assert!(decide(&r, 1234, Path::new("/s"), peer(65534, 65534)).is_ok());
        r.admin_users.clear();
        r.admin_groups = vec!["4242".into()];
        assert!(is_admin(&r, 1234, peer(54321, 4242)));
        assert!(!is_admin(&r, 1234, peer(54321, 4243)));
    }

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer {
            uid,
            gid,
            pid: None,
        }
    }

    #[test]
    fn root_and_the_daemons_user_are_always_allowed() {
        let r = rules(&[], &[], None);
        let s = Path::new("/run/m.sock");
        assert!(decide(&r, 1234, s, peer(0, 0)).is_ok());
        assert!(decide(&r, 1234, s, peer(1234, 1234)).is_ok());
        let e = decide(&r, 1234, s, peer(65534, 65534)).unwrap_err();
        assert!(
            e.starts_with("permission denied: user nobody (uid 65534) is not allowed to use memobuildd at /run/m.sock"),
            "{e}"
        );
    }

    #[test]
    fn users_and_groups_match_by_name_or_id() {
        let s = Path::new("/s");
        assert!(decide(&rules(&["nobody"], &[], None), 0, s, peer(65534, 65534)).is_ok());
        assert!(decide(&rules(&["65534"], &[], None), 0, s, peer(65534, 65534)).is_ok());
        assert!(decide(&rules(&[], &["65534"], None), 0, s, peer(65534, 65534)).is_ok());
        assert!(decide(&rules(&[], &[], Some(65534)), 0, s, peer(65534, 65534)).is_ok());
        // The primary group of a uid with no passwd entry still counts.
        assert!(decide(&rules(&[], &["4242"], None), 0, s, peer(54321, 4242)).is_ok());
        let e = decide(&rules(&["root2"], &["4242"], None), 0, s, peer(54321, 1)).unwrap_err();
        assert!(e.contains("uid 54321") && e.contains("group 4242"), "{e}");
    }

    #[test]
    fn builds_read_with_the_peers_rights_unless_root_or_the_daemons_user() {
        assert_eq!(reader_of(1234, peer(0, 0)), None);
        assert_eq!(reader_of(1234, peer(1234, 1234)), None);
        let r = reader_of(0, peer(54321, 4242)).unwrap();
        assert_eq!((r.uid, r.gid, r.groups), (54321, 4242, vec![4242]));
        let nobody = reader_of(0, peer(65534, 65534)).unwrap();
        assert!(nobody.groups.contains(&65534));
    }
}
