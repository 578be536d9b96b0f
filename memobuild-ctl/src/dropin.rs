//! More of `docker buildx build`'s flags: `--annotation`, `--allow`,
//! `--build-context` (an image, a local directory, or an OCI layout).

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

/// `--allow ENTITLEMENT`: one of buildx's entitlements. The daemon grants it
/// only where its administrator enabled it (`insecure-entitlements`).
pub fn allow(entitlement: &str) -> Result<(), RpcError> {
    if memobuild_proto::ENTITLEMENTS.contains(&entitlement) {
        Ok(())
    } else {
        Err(RpcError::with_hint(
            format!("--allow {entitlement:?}: unknown entitlement"),
            "buildx's entitlements are network.host and security.insecure",
        ))
    }
}

/// `--build-context NAME=docker-image://REF|DIR|oci-layout://DIR[:TAG][@DIGEST]`;
/// the other sources buildx takes (URLs, bake targets) are refused by kind.
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
    if let Some(rest) = value.strip_prefix(OCI_LAYOUT) {
        // Read and uploaded before the build (local_contexts).
        let usage = "use --build-context NAME=oci-layout://DIR[:TAG][@sha256:DIGEST]";
        let mut layout = crate::ocilayout::parse(rest)
            .map_err(|e| RpcError::with_hint(format!("--build-context {spec}: {e}"), usage))?;
        layout.dir = std::fs::canonicalize(&layout.dir).map_err(|e| {
            RpcError::with_hint(
                format!("--build-context {spec}: {}: {e}", layout.dir.display()),
                usage,
            )
        })?;
        if !layout.dir.join("index.json").is_file() {
            return Err(RpcError::with_hint(
                format!(
                    "--build-context {spec}: {} is not an OCI image layout (it has no index.json)",
                    layout.dir.display()
                ),
                "write one with -o type=oci-layout,dest=DIR",
            ));
        }
        let mut value = format!("{OCI_LAYOUT}{}", layout.dir.display());
        if let Some(tag) = &layout.tag {
            value.push_str(&format!(":{tag}"));
        }
        if let Some(digest) = &layout.digest {
            value.push_str(&format!("@{digest}"));
        }
        return Ok((name.to_string(), value));
    }
    let kind = if value.starts_with("target:") {
        "a bake target (target:)"
    } else if value.contains("://") || value.starts_with("git@") {
        "a URL"
    } else {
        // A local directory: made into an image before the build (local_contexts).
        let dir = std::fs::canonicalize(value).map_err(|e| {
            RpcError::with_hint(
                format!("--build-context {spec}: {value}: {e}"),
                "give an existing directory, or NAME=docker-image://IMAGE",
            )
        })?;
        if !dir.is_dir() {
            return Err(RpcError::with_hint(
                format!("--build-context {spec}: {value} is not a directory"),
                usage,
            ));
        }
        return Ok((name.to_string(), format!("{LOCAL}{}", dir.display())));
    };
    Err(RpcError::with_hint(
        format!("--build-context {spec}: {kind} as a build context is not supported yet"),
        format!("{usage}, NAME=DIR or NAME=oci-layout://DIR[:TAG][@sha256:DIGEST]"),
    ))
}

/// How the client marks a directory build context until [`local_contexts`]
/// replaces it; the daemon never sees it.
const LOCAL: &str = "local-dir://";

/// An OCI layout build context, also replaced by [`local_contexts`].
const OCI_LAYOUT: &str = "oci-layout://";

/// `--build-context NAME=DIR`: the directory becomes an image first (a build
/// of `FROM scratch` + `COPY . /` with DIR as its context, so DIR's
/// `.dockerignore` applies, its files are hashed and watched like any
/// context's, and unchanged files are cached), named for this build only;
/// the main build then gets `NAME=docker-image://` that name. Returns the
/// names to remove after the build.
pub async fn local_contexts(
    client: &memobuild_proto::MemobuildClient,
    request: &mut BuildRequest,
    mut note: impl FnMut(&str),
) -> Result<Vec<String>, RpcError> {
    use crate::connect::{ctx, rpc_failed};
    let mut made = Vec::new();
    for (name, value) in request.build_contexts.iter_mut() {
        let tag = format!(
            "memobuild-build-context:{}-{}",
            std::process::id(),
            made.len()
        );
        if let Some(rest) = value.strip_prefix(OCI_LAYOUT) {
            let layout = crate::ocilayout::parse(rest).map_err(RpcError::new)?;
            crate::ocilayout::import(client, &layout, &tag)
                .await
                .map_err(|e| RpcError {
                    message: format!("--build-context {name}={value}: {}", e.message),
                    ..e
                })?;
            note(&format!("build context {name}: {value}"));
            *value = format!("docker-image://{tag}");
            made.push(tag);
            continue;
        }
        let Some(dir) = value.strip_prefix(LOCAL) else {
            continue;
        };
        let sub = BuildRequest {
            context: dir.to_string(),
            dockerfile: "-".into(),
            dockerfile_text: Some("FROM scratch\nCOPY . /\n".into()),
            tags: vec![tag.clone()],
            source_date_epoch: request.source_date_epoch,
            ..BuildRequest::default()
        };
        let id = client.start_build(ctx(), sub).await.map_err(rpc_failed)??;
        let mut cursor = 0;
        loop {
            let batch = client
                .events(ctx(), id, cursor)
                .await
                .map_err(rpc_failed)??;
            for event in &batch.events {
                if let memobuild_proto::BuildEvent::Failed { error, .. } = event {
                    return Err(RpcError {
                        message: format!("--build-context {name}={dir}: {}", error.message),
                        ..error.clone()
                    });
                }
            }
            cursor = batch.next_cursor;
            if batch.finished {
                break;
            }
        }
        note(&format!("build context {name}: {dir}"));
        *value = format!("docker-image://{tag}");
        made.push(tag);
    }
    Ok(made)
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
            if !request.entitlements.iter().any(|e| e == entitlement) {
                request.entitlements.push(entitlement.to_string());
            }
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
            ("x=/nonexistent-dir", "No such file"),
            ("x=oci-layout:///nonexistent-layout", "No such file"),
            ("x=oci-layout://.", "not an OCI image layout"),
            ("x=oci-layout:///l@sha256:12", "not a sha256:HEX digest"),
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
        assert!(allow("security.insecure").is_ok());
        assert!(allow("device").is_err());
    }
}
