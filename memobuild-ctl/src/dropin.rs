//! More of `docker buildx build`'s flags: `--annotation`, `--allow`,
//! `--build-context`.

use crate::BuildArgs;
use memobuild_proto::{BuildRequest, RpcError};

/// Annotation types buildx takes before the key (`manifest:KEY=VALUE`).
const ANNOTATION_TYPES: &[&str] = &[
    "manifest",
    "manifest-descriptor",
    "index",
    "index-descriptor",
];

/// `--annotation [TYPE[PLATFORM]:]KEY=VALUE` as buildx reads it; memobuild
/// writes one manifest, so only `manifest` (the default) applies.
pub fn annotation(spec: &str) -> Result<(String, String), RpcError> {
    let (key, value) = spec.split_once('=').ok_or_else(|| {
        RpcError::with_hint(
            format!("--annotation {spec:?} has no value"),
            "use --annotation KEY=VALUE, e.g. --annotation org.opencontainers.image.title=app",
        )
    })?;
    let mut key = key;
    if let Some((kind, rest)) = key.split_once(':') {
        let (name, platform) = match kind.split_once('[') {
            Some((name, p)) => (name, Some(p.trim_end_matches(']'))),
            None => (kind, None),
        };
        if ANNOTATION_TYPES.contains(&name) {
            if name != "manifest" {
                return Err(RpcError::with_hint(
                    format!("--annotation {spec:?}: {name} annotations are not supported"),
                    "memobuild writes a single image manifest, not an index: use --annotation KEY=VALUE (or manifest:KEY=VALUE)",
                ));
            }
            if let Some(p) = platform {
                let host = format!(
                    "linux/{}",
                    match std::env::consts::ARCH {
                        "x86_64" => "amd64",
                        "aarch64" => "arm64",
                        other => other,
                    }
                );
                if p != host {
                    return Err(RpcError::with_hint(
                        format!("--annotation {spec:?}: this build makes only a {host} image"),
                        format!("drop [{p}] or use manifest[{host}]:KEY=VALUE"),
                    ));
                }
            }
            key = rest;
        }
    }
    if key.is_empty() {
        return Err(RpcError::with_hint(
            format!("--annotation {spec:?}: the key is empty"),
            "use --annotation KEY=VALUE",
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// `--allow ENTITLEMENT`: what buildx's entitlements ask for, checked against
/// what memobuild does.
pub fn allow(entitlement: &str) -> Result<(), RpcError> {
    match entitlement {
        // RUN --network=host and --network host need no entitlement here.
        "network.host" => Ok(()),
        "security.insecure" => Err(RpcError::with_hint(
            "--allow security.insecure: memobuild never runs a step privileged, so it cannot grant this",
            "drop --allow security.insecure and RUN --security=insecure; a step that needs privileges cannot be built with memobuild",
        )),
        other => Err(RpcError::with_hint(
            format!("--allow {other:?}: unknown entitlement"),
            "buildx's entitlements are network.host and security.insecure",
        )),
    }
}

/// `--build-context NAME=docker-image://REF`; the other sources buildx takes
/// are refused by kind.
pub fn build_context(spec: &str) -> Result<(String, String), RpcError> {
    let usage = "use --build-context NAME=docker-image://IMAGE[:TAG|@DIGEST]";
    let (name, value) = spec
        .split_once('=')
        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        .ok_or_else(|| {
            RpcError::with_hint(format!("--build-context {spec:?}: want NAME=VALUE"), usage)
        })?;
    if let Some(reference) = value.strip_prefix("docker-image://") {
        if reference.is_empty() || reference.contains(char::is_whitespace) {
            return Err(RpcError::with_hint(
                format!("--build-context {spec}: no image after docker-image://"),
                usage,
            ));
        }
        return Ok((name.to_string(), value.to_string()));
    }
    let kind = if value.starts_with("oci-layout://") {
        "an OCI layout (oci-layout://)"
    } else if value.starts_with("target:") {
        "a bake target (target:)"
    } else if value.contains("://") || value.starts_with("git@") {
        "a URL"
    } else {
        "a local directory"
    };
    Err(RpcError::with_hint(
        format!("--build-context {spec}: {kind} as a build context is not supported yet"),
        format!("{usage}; for files, copy them into the main context"),
    ))
}

/// Adds `--annotation` and `--build-context`, and checks `--allow`.
pub fn add_options(args: &BuildArgs, request: &mut BuildRequest) -> Result<(), RpcError> {
    for spec in &args.build_contexts {
        let (name, value) = build_context(spec)?;
        request.build_contexts.insert(name, value);
    }
    for spec in &args.allow {
        for entitlement in spec.split(',').filter(|e| !e.is_empty()) {
            allow(entitlement)?;
        }
    }
    for spec in &args.annotations {
        let (k, v) = annotation(spec)?;
        request.annotations.insert(k, v);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_parse_as_buildx() {
        assert_eq!(annotation("a.b=c").unwrap(), ("a.b".into(), "c".into()));
        assert_eq!(
            annotation("manifest:a.b=c=d").unwrap(),
            ("a.b".into(), "c=d".into())
        );
        // A colon in a key that is not a type stays in the key.
        assert_eq!(annotation("vnd:x=1").unwrap(), ("vnd:x".into(), "1".into()));
        assert!(annotation("index:a=b").is_err());
        assert!(annotation("manifest[linux/s390x]:a=b").is_err());
        assert!(annotation("novalue").is_err());
        assert!(annotation("=v").is_err());
    }

    #[test]
    fn build_contexts() {
        assert_eq!(
            build_context("base=docker-image://busybox:1").unwrap(),
            ("base".into(), "docker-image://busybox:1".into())
        );
        for (spec, says) in [
            ("x=./dir", "a local directory"),
            ("x=oci-layout://d", "OCI layout"),
            ("x=https://h/r.git", "a URL"),
            ("x=docker-image://", "no image"),
            ("novalue", "NAME=VALUE"),
        ] {
            let e = build_context(spec).unwrap_err();
            assert!(e.message.contains(says), "{spec}: {}", e.message);
        }
    }

    #[test]
    fn entitlements() {
        assert!(allow("network.host").is_ok());
        assert!(allow("security.insecure").is_err());
        assert!(allow("device").is_err());
    }
}
