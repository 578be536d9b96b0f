//! Resolving `user[:group]` (names or ids) through a stage's /etc/passwd and
//! /etc/group, as Docker does for `--chown` and `WORKDIR` after `USER`.

use super::fsview::FsView;
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UserError(pub String);

/// uid and gid for `spec`. A numeric user without a group gets gid = uid (as
/// BuildKit); a named user without a group gets its primary group.
pub fn resolve(spec: &str, view: &FsView, store: &Store) -> Result<(u32, u32), UserError> {
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
