//! Registry flags of `build`: `--push`, `-o type=registry,name=REF`,
//! `--cache-from/--cache-to type=registry,ref=REF`, and the credentials the
//! build needs, read here from the user's docker config (`$DOCKER_CONFIG/config.json`,
//! else `~/.docker/config.json`, and the credential helpers it names) and forwarded only for the registries this
//! build names, so the daemon (often root, serving many users) never reads
//! anyone's home and keeps no credentials.

use base64::Engine as _;
use memobuild_proto::registry::{registry_host, CacheExport, Credential, DOCKER_HUB};
use memobuild_proto::{RpcError, Secret};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// `-o type=registry,name=REF[,push=true]`: the reference, if this output is one.
pub fn registry_output(spec: &str) -> Result<Option<Vec<String>>, RpcError> {
    let parts: Vec<(&str, &str)> = spec
        .split(',')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    if !parts.contains(&("type", "registry")) {
        return Ok(None);
    }
    let names: Vec<String> = parts
        .iter()
        .filter(|(k, _)| *k == "name")
        .map(|(_, v)| v.to_string())
        .collect();
    if names.is_empty() {
        return Err(RpcError::with_hint(
            format!("-o {spec}: type=registry needs name=REF"),
            "e.g. -o type=registry,name=registry.example:5000/app:1",
        ));
    }
    Ok(Some(names))
}

/// A `--cache-from`/`--cache-to` value other than `type=local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheSpec {
    /// `type=registry,ref=REF[,mode=min|max]`, or just `REF` (as buildx):
    /// a registry cache, or (for `--cache-from`) an image with an inline cache.
    Registry(CacheExport),
    /// `--cache-to type=inline`: the cache in the image's own config.
    Inline,
}

/// Parses a `--cache-from`/`--cache-to` value that is not `type=local`.
pub fn cache_spec(flag: &str, spec: &str) -> Result<CacheSpec, RpcError> {
    // buildx: a value without `=` is `type=registry,ref=VALUE`.
    if !spec.contains('=') && !spec.is_empty() {
        return Ok(CacheSpec::Registry(CacheExport {
            reference: spec.to_string(),
            max: false,
        }));
    }
    let to = flag == "--cache-to";
    if spec.split(',').any(|p| p == "type=inline") {
        if !to {
            return Err(RpcError::with_hint(
                format!("{flag} {spec}: there is no inline cache importer"),
                "an inline cache is read from the image that carries it: --cache-from IMAGE (or type=registry,ref=IMAGE)",
            ));
        }
        for part in spec.split(',') {
            match part {
                "type=inline" | "mode=min" => {}
                "mode=max" => {
                    return Err(RpcError::with_hint(
                        format!("{flag} {spec}: an inline cache holds only the image's own steps (mode=min, as BuildKit)"),
                        "for every stage's steps use --cache-to type=registry,ref=REF,mode=max",
                    ))
                }
                _ => {
                    return Err(RpcError::with_hint(
                        format!("{flag} {spec}: {part:?} is not understood"),
                        "type=inline takes no parameters",
                    ))
                }
            }
        }
        return Ok(CacheSpec::Inline);
    }
    let mut reference = None;
    let mut max = false;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("type", "registry")) => {}
            Some(("type", kind)) => {
                let why = match kind {
                    "gha" | "s3" | "azblob" => "this cache backend is not supported",
                    _ => "unknown cache type",
                };
                return Err(RpcError::with_hint(
                    format!("{flag} {spec}: {why}"),
                    format!("memobuild shares its step cache through an OCI registry: {flag} type=registry,ref=REF (a registry on localhost serves one machine, e.g. Debian's docker-registry), in a directory (type=local) or in the image (--cache-to type=inline)"),
                ));
            }
            Some(("ref", r)) => reference = Some(r.to_string()),
            Some(("mode", "max")) => max = true,
            Some(("mode", "min")) => max = false,
            _ => {
                return Err(RpcError::with_hint(
                    format!("{flag} {spec}: {part:?} is not understood"),
                    format!("use {flag} type=registry,ref=REF[,mode=min|max]"),
                ))
            }
        }
    }
    let reference = reference.ok_or_else(|| {
        RpcError::with_hint(
            format!("{flag} {spec} names no ref"),
            format!("use {flag} type=registry,ref=REF"),
        )
    })?;
    Ok(CacheSpec::Registry(CacheExport { reference, max }))
}

/// Registry hosts a build talks to: those of its FROM lines (all configured
/// ones when a FROM uses a variable), pushes and caches.
pub fn hosts_used(dockerfile: &Path, refs: &[String]) -> Option<BTreeSet<String>> {
    let hosts: BTreeSet<String> = refs.iter().map(|r| registry_host(r)).collect();
    // Only a regular file, and only its head: `-f /dev/zero` or a FIFO must not
    // hang the client here (the daemon reports what is wrong with it).
    let text = match std::fs::metadata(dockerfile) {
        Ok(meta) if meta.is_file() => {
            use std::io::Read;
            let mut text = String::new();
            let _ = std::fs::File::open(dockerfile)
                .and_then(|f| f.take(16 << 20).read_to_string(&mut text));
            text
        }
        _ => String::new(),
    };
    hosts_in(&text, hosts)
}

/// [`hosts_used`] for a Dockerfile's text (`-f -`).
/// `FROM scratch` and `FROM` an earlier stage name no registry.
pub fn hosts_in(text: &str, mut hosts: BTreeSet<String>) -> Option<BTreeSet<String>> {
    let mut stages = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let mut rest = words.skip_while(|w| w.starts_with("--"));
        let Some(image) = rest.next() else {
            continue;
        };
        if image.contains('$') {
            return None;
        }
        let lower = image.to_lowercase();
        if lower != "scratch" && !stages.contains(&lower) {
            hosts.insert(registry_host(image));
        }
        if rest.next().is_some_and(|w| w.eq_ignore_ascii_case("AS")) {
            if let Some(name) = rest.next() {
                stages.insert(name.to_lowercase());
            }
        }
    }
    Some(hosts)
}

/// The docker config's path: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Credentials for `hosts` (every host when `None`) from the docker config:
/// a host's `credHelpers` entry first, else `credsStore`, else `auths`, as
/// Docker looks them up. A config that cannot be read or parsed is a warning:
/// the registries may not need a login (the daemon says so if one does).
pub fn credentials(
    hosts: Option<&BTreeSet<String>>,
) -> Result<BTreeMap<String, Credential>, RpcError> {
    if hosts.is_some_and(|h| h.is_empty()) {
        return Ok(BTreeMap::new());
    }
    let Some(path) = config_path() else {
        return Ok(BTreeMap::new());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => {
            eprintln!(
                "warning: {}: {e}; no registry credentials are used",
                path.display()
            );
            return Ok(BTreeMap::new());
        }
    };
    let config: serde_json::Value = match serde_json::from_str(&text) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "warning: {} is not valid JSON ({e}); no registry credentials are used (fix it, or log in again with `docker login`)",
                path.display()
            );
            return Ok(BTreeMap::new());
        }
    };
    let mut out = BTreeMap::new();
    // credHelpers: one helper per registry host.
    let mut helped = BTreeSet::new();
    for (key, helper) in config["credHelpers"].as_object().into_iter().flatten() {
        let host = config_key_host(key);
        let Some(helper) = helper.as_str().filter(|h| !h.is_empty()) else {
            continue;
        };
        helped.insert(host.clone());
        if hosts.is_some_and(|h| !h.contains(&host)) {
            continue;
        }
        if let Some(c) = crate::credhelper::get(helper, &host)? {
            out.insert(host, c);
        }
    }
    // credsStore: every other host's login lives in that helper.
    if let Some(store) = config["credsStore"].as_str().filter(|s| !s.is_empty()) {
        let wanted: Vec<String> = match hosts {
            Some(h) => h.iter().cloned().collect(),
            None => crate::credhelper::list(store)?
                .iter()
                .map(|url| config_key_host(url))
                .collect(),
        };
        for host in wanted {
            if helped.contains(&host) || out.contains_key(&host) {
                continue;
            }
            if let Some(c) = crate::credhelper::get(store, &host)? {
                out.insert(host, c);
            }
        }
        return Ok(out);
    }
    for (key, entry) in config["auths"].as_object().into_iter().flatten() {
        let host = config_key_host(key);
        if helped.contains(&host) || hosts.is_some_and(|h| !h.contains(&host)) {
            continue;
        }
        if has_identity_token(entry) {
            // A host named by the build: say why its login cannot be used.
            // All hosts (a FROM with a variable): it may not be needed.
            match hosts {
                Some(_) => return Err(identity_token_unsupported(&path, &host)),
                None => continue,
            }
        }
        if let Some(c) = credential(entry) {
            out.insert(host, c);
        }
    }
    Ok(out)
}

/// `https://index.docker.io/v1/` -> `docker.io`; `http://h:5000/` -> `h:5000`.
fn config_key_host(key: &str) -> String {
    let host = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default();
    match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
        other => other.to_string(),
    }
}

/// An OAuth login (`identitytoken`, a refresh token Docker trades at the
/// registry's token realm with `grant_type=refresh_token`). oci-client only
/// asks the realm with basic credentials, and the `auth` next to an identity
/// token (`<token>:`) is no password, so sending it would only be refused.
fn has_identity_token(entry: &serde_json::Value) -> bool {
    let token = |k: &str| entry[k].as_str().is_some_and(|t| !t.is_empty());
    token("identitytoken") && !token("registrytoken")
}

fn identity_token_unsupported(path: &Path, host: &str) -> RpcError {
    RpcError::with_hint(
        format!(
            "{}: the login for {host} is an OAuth identity token (identitytoken), which memobuild cannot use",
            path.display()
        ),
        format!("log in to {host} with a user name and a password or access token (`docker login {host} -u USER`), or give memobuild-ctl a config with an `auth` entry for {host} through DOCKER_CONFIG"),
    )
}

fn credential(entry: &serde_json::Value) -> Option<Credential> {
    if let Some(token) = entry["registrytoken"].as_str().filter(|t| !t.is_empty()) {
        return Some(Credential {
            username: String::new(),
            password: Secret(token.as_bytes().to_vec()),
        });
    }
    let (user, password) = match entry["auth"].as_str().filter(|a| !a.is_empty()) {
        Some(auth) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (u, p) = text.split_once(':')?;
            (u.to_string(), p.to_string())
        }
        None => (
            entry["username"].as_str()?.to_string(),
            entry["password"].as_str()?.to_string(),
        ),
    };
    Some(Credential {
        username: user,
        password: Secret(password.into_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_and_cache_specs() {
        assert_eq!(
            registry_output("type=registry,name=h:5/a:1").unwrap(),
            Some(vec!["h:5/a:1".to_string()])
        );
        assert_eq!(registry_output("type=oci,dest=x.tar").unwrap(), None);
        assert!(registry_output("type=registry").is_err());
        let registry = |flag, spec| match cache_spec(flag, spec).unwrap() {
            CacheSpec::Registry(c) => (c.reference, c.max),
            CacheSpec::Inline => panic!("{spec} is not inline"),
        };
        assert_eq!(
            registry("--cache-to", "type=registry,ref=h:5/c:1,mode=max"),
            ("h:5/c:1".to_string(), true)
        );
        assert!(!registry("--cache-to", "ref=h/c").1);
        // buildx: a bare value is a registry ref (an image with an inline cache).
        assert_eq!(
            registry("--cache-from", "h:5/app:1"),
            ("h:5/app:1".to_string(), false)
        );
        assert_eq!(
            cache_spec("--cache-to", "type=inline").unwrap(),
            CacheSpec::Inline
        );
        for (flag, spec, says) in [
            (
                "--cache-to",
                "type=inline,mode=max",
                "mode=min, as BuildKit",
            ),
            ("--cache-to", "type=inline,ref=x", "is not understood"),
            ("--cache-from", "type=inline", "no inline cache importer"),
            ("--cache-to", "type=gha", "backend is not supported"),
        ] {
            let e = cache_spec(flag, spec).unwrap_err();
            assert!(e.message.contains(says), "{spec}: {}", e.message);
            assert!(e.hint.is_some());
        }
    }

    #[test]
    fn docker_config_entries() {
        assert_eq!(config_key_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(config_key_host("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(config_key_host("http://r.example:5000/"), "r.example:5000");
        let basic = serde_json::json!({"auth": "dTpwOnc="}); // u:p:w
        let c = credential(&basic).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.0.as_slice()),
            ("u", &b"p:w"[..])
        );
        let token = serde_json::json!({"registrytoken": "t"});
        assert_eq!(credential(&token).unwrap().username, "");
        assert!(credential(&serde_json::json!({})).is_none());
        let oauth = serde_json::json!({"auth": "PHRva2VuPjo=", "identitytoken": "r"});
        assert!(has_identity_token(&oauth));
        assert!(!has_identity_token(
            &serde_json::json!({"identitytoken": "r", "registrytoken": "t"})
        ));
        assert!(!has_identity_token(&basic));
    }

    #[test]
    fn hosts_from_the_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let df = dir.path().join("Dockerfile");
        std::fs::write(
            &df,
            "FROM --platform=linux/amd64 h:5000/a AS x\nfrom busybox\n",
        )
        .unwrap();
        let hosts = hosts_used(&df, &["p:1/x".into()]).unwrap();
        assert_eq!(
            hosts.into_iter().collect::<Vec<_>>(),
            vec!["docker.io", "h:5000", "p:1"]
        );
        std::fs::write(
            &df,
            "FROM scratch AS base\nFROM base\nFROM Base AS two\nFROM two\n",
        )
        .unwrap();
        assert!(hosts_used(&df, &[]).unwrap().is_empty());
        std::fs::write(&df, "ARG B\nFROM $B\n").unwrap();
        assert!(hosts_used(&df, &[]).is_none());
    }
}
