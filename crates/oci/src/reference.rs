//! Image references, parsed as Docker parses them: oci-client's `Reference`
//! implements distribution/reference (default registry `docker.io`, `library/`
//! for one-word Hub names, `HOST[:PORT]/` prefixes, `:tag`, `@sha256:…`).
//! The tests below pin the cases users meet.

pub use oci_client::Reference;

#[derive(Debug, thiserror::Error)]
#[error("{name:?} is not a valid image reference: {message}")]
pub struct ReferenceError {
    pub name: String,
    pub message: String,
}

/// Parses `name` (as written in FROM, `-t` or `ref=`).
pub fn parse(name: &str) -> Result<Reference, ReferenceError> {
    let error = |message: String| ReferenceError {
        name: name.to_string(),
        message: format!("{message} (names are [HOST[:PORT]/]PATH[:TAG][@sha256:DIGEST])"),
    };
    let reference = Reference::try_from(name).map_err(|e| error(e.to_string()))?;
    // As Docker: "repository name must be lowercase" (the regex alone allows it).
    if reference
        .repository()
        .chars()
        .any(|c| c.is_ascii_uppercase())
    {
        return Err(error("the repository name must be lower case".into()));
    }
    Ok(reference)
}

/// The name a pulled image gets in the local image store: the reference in
/// Docker's familiar form, as `FROM` lookups normalise it.
pub fn store_name(name: &str) -> String {
    normalize_image_name(name)
}

/// `HOST[:PORT]` as written in docker config.json keys and `--insecure-registry`.
pub fn registry_host(reference: &Reference) -> &str {
    reference.registry()
}

/// `name` -> `name:latest` unless a tag or digest is given, as Docker resolves it.
pub fn normalize_image_name(name: &str) -> String {
    // Docker's familiar form: the default registry and `library/` are implied.
    let name = name
        .strip_prefix("docker.io/")
        .or_else(|| name.strip_prefix("index.docker.io/"))
        .unwrap_or(name);
    let name = name.strip_prefix("library/").unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    if name.contains('@') || last.contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(name: &str) -> (String, String, Option<String>, Option<String>) {
        let r = parse(name).unwrap();
        (
            r.registry().to_string(),
            r.repository().to_string(),
            r.tag().map(String::from),
            r.digest().map(String::from),
        )
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_defaults_registry_namespace_and_tag() {
        let hub = |repo: &str, tag: &str| {
            (
                "docker.io".to_string(),
                repo.to_string(),
                Some(tag.to_string()),
                None,
            )
        };
        assert_eq!(parts("busybox"), hub("library/busybox", "latest"));
        assert_eq!(parts("busybox:1.36"), hub("library/busybox", "1.36"));
        assert_eq!(parts("user/app"), hub("user/app", "latest"));
        assert_eq!(parts("docker.io/busybox"), hub("library/busybox", "latest"));
        assert_eq!(parts("index.docker.io/user/app:2"), hub("user/app", "2"));
        // A first component without '.', ':' or "localhost" is a Hub namespace.
        assert_eq!(parts("myhost/app"), hub("myhost/app", "latest"));
    }

    #[test]
    fn hosts_ports_and_digests() {
        assert_eq!(
            parts("localhost:5000/a/b:t"),
            (
                "localhost:5000".into(),
                "a/b".into(),
                Some("t".into()),
                None
            )
        );
        assert_eq!(
            parts("localhost/app"),
            (
                "localhost".into(),
                "app".into(),
                Some("latest".into()),
                None
            )
        );
        assert_eq!(
            parts("127.0.0.1:5000/app"),
            (
                "127.0.0.1:5000".into(),
                "app".into(),
                Some("latest".into()),
                None
            )
        );
        assert_eq!(
            parts(&format!("ghcr.io/o/app@{D}")),
            ("ghcr.io".into(), "o/app".into(), None, Some(D.into()))
        );
        assert_eq!(
            parts(&format!("busybox:1@{D}")),
            (
                "docker.io".into(),
                "library/busybox".into(),
                Some("1".into()),
                Some(D.into())
            )
        );
    }

    #[test]
    fn bad_references_are_clear_errors() {
        for bad in [
            "",
            "Ubuntu",
            "user/App:1",
            "a:b:c",
            "app@sha256:short",
            "-leading/x",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains("not a valid image reference"), "{bad}: {e}");
        }
    }

    #[test]
    fn store_names_are_the_familiar_form() {
        assert_eq!(store_name("busybox"), "busybox:latest");
        assert_eq!(store_name("docker.io/library/busybox:1"), "busybox:1");
        assert_eq!(
            store_name("127.0.0.1:5000/app"),
            "127.0.0.1:5000/app:latest"
        );
    }
}
