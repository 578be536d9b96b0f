//! Who owns what (docs/SECURITY.md, "Ownership"): images, build logs,
//! projects, cache mounts and step cache entries belong to the uid whose
//! request made them. A [`Caller`] may act on what is its own; an admin on
//! everything. What has no recorded owner (base images pulled from a
//! registry, records from before owners were recorded, root's projects) is
//! an admin's to change.

use memobuild_proto::{BuildRequest, ErrorKind, RpcError};

/// Who makes a request: the uid from the connection's peer credentials
/// (SO_PEERCRED), and whether the daemon counts it as an admin (root, the
/// daemon's own user, `admin-users` / `admin-groups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub admin: bool,
}

impl Caller {
    /// Root: an admin (the daemon's own work, tests).
    pub const ROOT: Caller = Caller {
        uid: 0,
        admin: true,
    };

    /// Whether the caller may remove or change something owned by `owner`.
    pub(crate) fn may_change(&self, owner: Option<u32>) -> bool {
        self.admin || owner == Some(self.uid)
    }

    /// Whether the caller may read (build FROM, export) an image owned by
    /// `owner`: its own, one nobody owns (pulled from a registry, named
    /// before owners were recorded), root's (bases every user may use), or
    /// any for an admin.
    pub(crate) fn may_read(&self, owner: Option<u32>) -> bool {
        self.admin || matches!(owner, None | Some(0)) || owner == Some(self.uid)
    }

    /// Whether the caller's builds may use a step cache entry: one built by
    /// any build (shared by key), or one imported from a cache
    /// (`--cache-from`) by the caller itself; an admin's, any.
    pub(crate) fn may_use_step(&self, record: &memobuild_store::StepRecord) -> bool {
        !record.imported || self.admin || record.owner == Some(self.uid)
    }

    /// The error for reading `what` (an image), which belongs to `owner`.
    pub(crate) fn denied_read(&self, what: &str, owner: Option<u32>) -> RpcError {
        let mut e = self.denied(what, owner);
        e.hint = Some(
            "another user's images are private to them: build FROM an image of your own, one pulled from a registry, or root's; or ask its owner to push it to a registry you can pull from"
                .into(),
        );
        e
    }

    /// The uid whose things a request is limited to: `None` for an admin
    /// (everything), else the caller's own uid.
    pub fn scope(&self) -> Option<u32> {
        (!self.admin).then_some(self.uid)
    }

    /// The error for acting on `what`, which belongs to `owner`.
    pub fn denied(&self, what: &str, owner: Option<u32>) -> RpcError {
        let whose = match owner {
            Some(uid) => format!("user {}", user_label(uid)),
            None => "no user (only admins may change it)".to_string(),
        };
        RpcError::of(
            ErrorKind::PermissionDenied,
            format!(
                "permission denied: {what} belongs to {whose}, not to {}",
                user_label(self.uid)
            ),
        )
        .hint("you may act only on what your own builds made; ask its owner, or an admin (root, admin-users, admin-groups in memobuildd.toml)")
    }
}

/// `name (uid N)`, or `uid N` for a uid without a passwd entry.
fn user_label(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("{} (uid {uid})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// The uid that owns what a build makes: the one the daemon set from the
/// peer credentials, else (a background re-build of a project) the user the
/// project reads as; `None` for root's projects rebuilt in the background.
pub(crate) fn owner_of(request: &BuildRequest) -> Option<u32> {
    request
        .owner
        .or_else(|| request.read_as.as_ref().map(|r| r.uid))
}

/// Who a build acts for: the caller that asked for it, else (a background
/// build) the project's user as a non-admin, or root for root's projects.
pub(crate) fn build_caller(asked_by: Option<Caller>, request: &BuildRequest) -> Caller {
    acting_for(asked_by, owner_of(request))
}

/// [`build_caller`] from a build's caller and owner (`BuildLog`).
pub(crate) fn acting_for(asked_by: Option<Caller>, owner: Option<u32>) -> Caller {
    asked_by.unwrap_or(match owner {
        Some(uid) => Caller {
            uid,
            admin: uid == 0,
        },
        None => Caller::ROOT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_change_their_own_and_admins_everything() {
        let alice = Caller {
            uid: 1001,
            admin: false,
        };
        assert!(alice.may_change(Some(1001)));
        assert!(!alice.may_change(Some(1002)));
        assert!(!alice.may_change(Some(0)));
        assert!(!alice.may_change(None), "no owner: admins only");
        assert!(Caller::ROOT.may_change(Some(1001)) && Caller::ROOT.may_change(None));
        let e = alice.denied("image app:latest", Some(4242));
        assert!(e.is(ErrorKind::PermissionDenied));
        assert!(e.message.contains("uid 4242") && e.message.contains("uid 1001"));
        assert!(e.hint.is_some());
        assert_eq!(alice.scope(), Some(1001));
        assert_eq!(Caller::ROOT.scope(), None);
    }

    #[test]
    fn users_read_their_own_unowned_and_roots_images() {
        let alice = Caller {
            uid: 1001,
            admin: false,
        };
        assert!(alice.may_read(Some(1001)) && alice.may_read(None) && alice.may_read(Some(0)));
        assert!(!alice.may_read(Some(1002)));
        assert!(Caller::ROOT.may_read(Some(1002)));
        let e = alice.denied_read("image x:latest", Some(1002));
        assert!(e.is(ErrorKind::PermissionDenied) && e.hint.is_some());
    }
}
