//! Resolving `user[:group]` (names or ids) through a stage's /etc/passwd and
//! /etc/group, as Docker does for `--chown` and `WORKDIR` after `USER`.

use super::fsview::FsView;
use memobuild_store::Store;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UserError(pub String);

/// uid and gid for `spec`. A numeric user without a group gets gid = uid (as
/// BuildKit); a named user without a group gets its primary group.
pub(crate) fn resolve(spec: &str, view: &FsView, store: &Store) -> Result<(u32, u32), UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            let passwd = read(view, store, "etc/passwd")?;
            let entry = find(&passwd, user).ok_or_else(|| {
                UserError(format!(
                    "user {user:?} not found in the stage's /etc/passwd; use a numeric id or add the user first"
                ))
            })?;
            let uid = field_u32(&entry, 2, user)?;
            let gid = field_u32(&entry, 3, user)?;
            (uid, Some(gid))
        }
    };
    let gid = match group {
        None => primary_gid.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read(view, store, "etc/group")?;
                let entry = find(&groups, g).ok_or_else(|| {
                    UserError(format!(
                        "group {g:?} not found in the stage's /etc/group; use a numeric id or add the group first"
                    ))
                })?;
                field_u32(&entry, 2, g)?
            }
        },
    };
    Ok((uid, gid))
}

fn read(view: &FsView, store: &Store, path: &str) -> Result<String, UserError> {
    match view.read_file(store, path) {
        Ok(Some(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(None) => Ok(String::new()),
        Err(e) => Err(UserError(format!("reading /{path}: {e}"))),
    }
}

fn find(file: &str, name: &str) -> Option<Vec<String>> {
    file.lines()
        .map(|l| l.split(':').map(String::from).collect::<Vec<_>>())
        .find(|fields| fields.first().map(String::as_str) == Some(name))
}

fn field_u32(entry: &[String], i: usize, name: &str) -> Result<u32, UserError> {
    entry
        .get(i)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| UserError(format!("malformed entry for {name:?}")))
}

/// Who a RUN step runs as, resolved as runc/libcontainer does for `USER`:
/// uid, primary gid and supplementary groups (the primary one first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl ExecUser {
    /// uid 0, gid 0, no supplementary groups.
    pub(crate) fn root() -> ExecUser {
        ExecUser {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }
}

/// Who RUN runs as without USER: root, with the supplementary groups
/// /etc/group lists root in (containerd's `WithAdditionalGIDs("root")`, the
/// CVE-2023-25173 fix BuildKit has): `groups=0(root),10(wheel)` in busybox.
/// An image without root in its /etc/passwd runs as 0:0 with no groups.
pub(crate) fn default_exec(view: &FsView, store: &Store) -> Result<ExecUser, UserError> {
    let passwd = read(view, store, "etc/passwd")?;
    if find(&passwd, "root").is_none() {
        return Ok(ExecUser::root());
    }
    let user = resolve_exec("root", view, store)?;
    // 0:0 whatever /etc/passwd says, with root's groups from /etc/group.
    let mut groups = vec![0];
    groups.extend(user.groups.into_iter().filter(|g| *g != 0));
    Ok(ExecUser {
        uid: 0,
        gid: 0,
        groups,
    })
}

/// `USER name`, `USER uid`, `USER x:group`. A numeric user takes its primary
/// group and supplementary groups from /etc/passwd and /etc/group when listed
/// there (gid 0 otherwise); an image with no /etc/passwd at all only accepts
/// `uid:gid` (BuildKit: "unable to find user").
pub(crate) fn resolve_exec(
    spec: &str,
    view: &FsView,
    store: &Store,
) -> Result<ExecUser, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = view
        .read_file(store, "etc/passwd")
        .map_err(|e| UserError(format!("reading /etc/passwd: {e}")))?
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    let entry = passwd.as_deref().and_then(|p| {
        p.lines()
            .map(|l| l.split(':').map(String::from).collect::<Vec<_>>())
            .find(|f| {
                f.first().map(String::as_str) == Some(user)
                    || (user.parse::<u32>().is_ok() && f.get(2).map(String::as_str) == Some(user))
            })
    });
    let (uid, primary, name) = match (user.parse::<u32>(), &entry, &passwd) {
        (_, Some(e), _) => (field_u32(e, 2, user)?, field_u32(e, 3, user)?, e.first().cloned()),
        (Ok(uid), None, Some(_)) => (uid, 0, None),
        (Ok(uid), None, None) if group.is_some() => (uid, 0, None),
        (Ok(uid), None, None) => {
            return Err(UserError(format!(
                "unable to find user {uid}: the image has no /etc/passwd; use USER {uid}:GID"
            )))
        }
        (Err(_), None, _) => {
            return Err(UserError(format!(
                "user {user:?} not found in the image's /etc/passwd; use a numeric id or add the user first"
            )))
        }
    };
    if let Some(g) = group {
        let gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = read(view, store, "etc/group")?;
                let entry = find(&groups, g).ok_or_else(|| {
                    UserError(format!("group {g:?} not found in the image's /etc/group"))
                })?;
                field_u32(&entry, 2, g)?
            }
        };
        return Ok(ExecUser {
            uid,
            gid,
            groups: vec![gid],
        });
    }
    // The primary group leads the supplementary list, as containerd's
    // WithUserID/WithAdditionalGIDs set it (`id` shows `groups=GID,...`).
    let mut groups = vec![primary];
    if let Some(name) = name {
        for line in read(view, store, "etc/group")?.lines() {
            let f: Vec<&str> = line.split(':').collect();
            let members = f.get(3).copied().unwrap_or("");
            if members.split(',').any(|m| m == name) {
                if let Some(gid) = f.get(2).and_then(|g| g.parse::<u32>().ok()) {
                    if gid != primary && !groups.contains(&gid) {
                        groups.push(gid);
                    }
                }
            }
        }
    }
    Ok(ExecUser {
        uid,
        gid: primary,
        groups,
    })
}
