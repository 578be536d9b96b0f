//! What a step key knows of a build's secrets: for each secret the build
//! provides, a keyed BLAKE3 MAC of its value under a 256-bit key that only
//! this daemon has (`secret-mac.key` in the data dir, 0600, made on first
//! use). A RUN that mounts a secret is keyed on that MAC, or on the secret's
//! absence (docs/CACHE.md), so its cached result, which may hold the secret
//! (`cp /run/secrets/s /leaked`), is reused only by a build that sends the
//! very same secret. The MAC tells nothing about the value to whoever reads
//! keys, events or records, and without the key it cannot be checked against
//! a guess. BuildKit leaves secrets out of its keys altogether.

use memobuild_proto::{RpcError, Secret};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The key's file in the data dir.
pub(crate) const KEY_FILE: &str = "secret-mac.key";
const KEY_LEN: usize = 32;

/// Secret id -> hex MAC of its value, and with `ssh_user` (the uid of a
/// build that forwards ssh agents) [`memobuild_plan::SSH_USER`] -> a MAC of
/// that uid; empty (and no key file touched) when the build sends neither.
pub(crate) fn secret_ids(
    data_dir: &Path,
    secrets: &BTreeMap<String, Secret>,
    ssh_user: Option<u32>,
) -> Result<BTreeMap<String, String>, RpcError> {
    if secrets.is_empty() && ssh_user.is_none() {
        return Ok(BTreeMap::new());
    }
    let path = data_dir.join(KEY_FILE);
    let key = load_or_create(data_dir, &path).map_err(|e| {
        RpcError::with_hint(
            format!("cannot read or create the secrets' cache key {}: {e}", path.display()),
            format!(
                "the daemon keeps a private key there (32 bytes, mode 0600); remove {} to have a new one made (steps that used secrets then run again)",
                path.display()
            ),
        )
    })?;
    if let Some(id) = secrets.keys().find(|id| id.starts_with('\0')) {
        return Err(RpcError::of(
            memobuild_proto::ErrorKind::InvalidInput,
            format!("secret id {id:?} starts with a NUL character"),
        )
        .hint("name secrets with printable text, e.g. --secret id=token,src=FILE"));
    }
    let mut ids: BTreeMap<String, String> = secrets
        .iter()
        .map(|(id, value)| (id.clone(), mac(&key, SECRET_DOMAIN, &value.0)))
        .collect();
    if let Some(uid) = ssh_user {
        let scope = mac(&key, SSH_USER_DOMAIN, &uid.to_le_bytes());
        ids.insert(memobuild_plan::SSH_USER.to_string(), scope);
    }
    Ok(ids)
}

/// What a MAC is of: no secret's value gives the MAC of a user's ssh scope.
const SECRET_DOMAIN: &[u8] = b"memobuild-secret-v1\0";
const SSH_USER_DOMAIN: &[u8] = b"memobuild-ssh-user-v1\0";

fn mac(key: &[u8; KEY_LEN], domain: &[u8], value: &[u8]) -> String {
    blake3::Hasher::new_keyed(key)
        .update(domain)
        .update(value)
        .finalize()
        .to_hex()
        .to_string()
}

fn load_or_create(data_dir: &Path, path: &Path) -> io::Result<[u8; KEY_LEN]> {
    match read_key(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        other => return other,
    }
    let mut key = [0u8; KEY_LEN];
    getrandom::getrandom(&mut key).map_err(|e| io::Error::other(e.to_string()))?;
    // Written in full under a private name, then linked into place: a
    // concurrent build either wins (and this one reads its key) or loses.
    let tmp = tempfile::Builder::new()
        .prefix(".secret-mac.key.")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(data_dir)?;
    tmp.as_file().write_all(&key)?;
    tmp.as_file().sync_all()?;
    match fs::hard_link(tmp.path(), path) {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read_key(path),
        Err(e) => Err(e),
    }
}

fn read_key(path: &Path) -> io::Result<[u8; KEY_LEN]> {
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() != KEY_LEN as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a regular file of {KEY_LEN} bytes"),
        ));
    }
    if meta.mode() & 0o077 != 0 || meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "mode {:o}, owner uid {}: it must be the daemon's own and 0600",
                meta.mode() & 0o7777,
                meta.uid()
            ),
        ));
    }
    let mut key = [0u8; KEY_LEN];
    file.read_exact(&mut key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn secrets(pairs: &[(&str, &[u8])]) -> BTreeMap<String, Secret> {
        pairs
            .iter()
            .map(|(id, v)| (id.to_string(), Secret(v.to_vec())))
            .collect()
    }

    #[test]
    fn macs_are_stable_per_key_and_differ_per_value() {
        let dir = tempfile::tempdir().unwrap();
        assert!(secret_ids(dir.path(), &BTreeMap::new(), None)
            .unwrap()
            .is_empty());
        assert!(
            !dir.path().join(KEY_FILE).exists(),
            "no key without secrets"
        );
        let a = secret_ids(
            dir.path(),
            &secrets(&[("s", b"alpha"), ("t", b"beta")]),
            None,
        )
        .unwrap();
        let meta = fs::metadata(dir.path().join(KEY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 32);
        let again = secret_ids(dir.path(), &secrets(&[("s", b"alpha")]), None).unwrap();
        assert_eq!(a["s"], again["s"]);
        assert_ne!(a["s"], a["t"]);
        assert!(!a["s"].contains(&hex::encode(b"alpha")));
        // Another daemon (another key) gives another MAC for the same value.
        let other = tempfile::tempdir().unwrap();
        let b = secret_ids(other.path(), &secrets(&[("s", b"alpha")]), None).unwrap();
        assert_ne!(a["s"], b["s"]);
    }

    #[test]
    fn a_key_others_could_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        secret_ids(dir.path(), &secrets(&[("s", b"x")]), None).unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = secret_ids(dir.path(), &secrets(&[("s", b"x")]), None).unwrap_err();
        assert!(e.message.contains("0600"), "{e:?}");
    }
}
