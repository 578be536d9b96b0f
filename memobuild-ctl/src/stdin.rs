//! `docker build` inputs beyond the context directory: `-f -` (the Dockerfile
//! on stdin), context `-` (a tar archive, or a Dockerfile alone, on stdin),
//! and the flags that shape RUN steps and the image (`--label`, `--network`,
//! `--add-host`, `--shm-size`, `--ulimit`, `--no-cache-filter`).

use crate::BuildArgs;
use memobuild_proto::{BuildRequest, RpcError};
use std::io::Read;

/// Most bytes read from stdin (a context archive or a Dockerfile).
const MAX_STDIN_BYTES: u64 = 4 << 30;
/// A Dockerfile on stdin is capped like one read from disk.
const MAX_DOCKERFILE_BYTES: usize = 16 << 20;

/// What stdin supplied.
pub struct StdinContext {
    /// A tar archive's contents, unpacked (deleted when dropped).
    pub dir: Option<tempfile::TempDir>,
    /// The Dockerfile's text (`-f -`, or context `-` holding a Dockerfile alone).
    pub dockerfile: Option<String>,
    /// The context inside `dir` (a git context's `#REF:DIR`); empty: `dir` itself.
    pub subdir: std::path::PathBuf,
}

fn is_stdin(p: &std::path::Path) -> bool {
    p.as_os_str() == "-"
}

/// Reads stdin when the context or the Dockerfile is `-`.
pub fn read(args: &BuildArgs) -> Result<Option<StdinContext>, RpcError> {
    let context = args.context.to_string_lossy();
    if let Some(git) = crate::git::parse(&context) {
        if args.file.as_deref().is_some_and(is_stdin) {
            return Ok(Some(StdinContext {
                dockerfile: read_dockerfile()?.dockerfile,
                ..crate::git::fetch(&git)?
            }));
        }
        return crate::git::fetch(&git).map(Some);
    }
    if let Some(e) = crate::git::unsupported_url(&context) {
        return Err(e);
    }
    let file_stdin = args.file.as_deref().is_some_and(is_stdin);
    let context_stdin = is_stdin(&args.context);
    if !file_stdin && !context_stdin {
        return Ok(None);
    }
    if file_stdin && context_stdin {
        return Err(RpcError::with_hint(
            "the context and the Dockerfile cannot both come from stdin",
            "give a context directory with -f -, or -f FILE (inside the archive) with context -",
        ));
    }
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_STDIN_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| RpcError::new(format!("cannot read stdin: {e}")))?;
    if file_stdin {
        return Ok(Some(StdinContext {
            dir: None,
            dockerfile: Some(dockerfile_text(bytes)?),
            subdir: Default::default(),
        }));
    }
    // Context `-`: a tar (plain or gzip), else the bytes are a Dockerfile.
    let gzip = bytes.starts_with(&[0x1f, 0x8b]);
    let tar = bytes.len() >= 262 && &bytes[257..262] == b"ustar";
    if !gzip && !tar {
        if args.file.is_some() {
            return Err(RpcError::with_hint(
                "stdin is not a tar archive, so there is no file for -f to name",
                "send a tar archive (e.g. `tar -c . |`), or leave out -f to send a Dockerfile alone",
            ));
        }
        // A Dockerfile alone: an empty context.
        let dir = tempdir()?;
        return Ok(Some(StdinContext {
            dir: Some(dir),
            dockerfile: Some(dockerfile_text(bytes)?),
            subdir: Default::default(),
        }));
    }
    let dir = tempdir()?;
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(&bytes[..]))
    } else {
        Box::new(&bytes[..])
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    // tar's unpack refuses entries that would land outside the directory.
    archive.unpack(dir.path()).map_err(|e| {
        RpcError::with_hint(
            format!("cannot unpack the context archive from stdin: {e}"),
            "send a tar archive (plain or gzip), e.g. `tar -c . | memobuild-ctl build -`",
        )
    })?;
    Ok(Some(StdinContext {
        dir: Some(dir),
        dockerfile: None,
        subdir: Default::default(),
    }))
}

/// `-f -` beside a context that is not stdin.
fn read_dockerfile() -> Result<StdinContext, RpcError> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .take(MAX_DOCKERFILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| RpcError::new(format!("cannot read stdin: {e}")))?;
    Ok(StdinContext {
        dir: None,
        dockerfile: Some(dockerfile_text(bytes)?),
        subdir: Default::default(),
    })
}

/// A directory for a context read from stdin. The daemon reads it, so it must
/// run as this user or as root.
fn tempdir() -> Result<tempfile::TempDir, RpcError> {
    tempfile::Builder::new()
        .prefix("memobuild-stdin-")
        .tempdir()
        .map_err(|e| {
            RpcError::new(format!(
                "cannot create a directory for the stdin context: {e}"
            ))
        })
}

fn dockerfile_text(bytes: Vec<u8>) -> Result<String, RpcError> {
    if bytes.len() > MAX_DOCKERFILE_BYTES {
        return Err(RpcError::new(
            "the Dockerfile on stdin is larger than 16 MiB",
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        RpcError::with_hint(
            "the Dockerfile on stdin is not UTF-8 text",
            "send the Dockerfile itself, or a tar archive of the context",
        )
    })
}

/// `--label`, `--network`, `--add-host`, `--shm-size`, `--ulimit`,
/// `--no-cache-filter`, checked and put into the request.
pub fn add_docker_options(args: &BuildArgs, request: &mut BuildRequest) -> Result<(), RpcError> {
    for label in &args.labels {
        // As docker: `--label KEY` sets an empty value.
        let (k, v) = label.split_once('=').unwrap_or((label, ""));
        if k.is_empty() {
            return Err(RpcError::with_hint(
                format!("--label {label:?}: the key is empty"),
                "use --label KEY=VALUE",
            ));
        }
        request.labels.insert(k.to_string(), v.to_string());
    }
    request.network = args.network.clone().unwrap_or_default();
    for spec in &args.add_hosts {
        request.add_hosts.push(add_host(spec)?);
    }
    request.shm_bytes = args.shm_size;
    for spec in &args.ulimits {
        let (name, limits) = ulimit(spec)?;
        request.ulimits.insert(name, limits);
    }
    request.no_cache_filter = args
        .no_cache_filter
        .iter()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect();
    Ok(())
}

/// `HOST:IP` or `HOST=IP` (IPv6 addresses have colons: split at the first).
fn add_host(spec: &str) -> Result<(String, String), RpcError> {
    let bad = |why: &str| {
        RpcError::with_hint(
            format!("--add-host {spec:?}: {why}"),
            "use --add-host HOST:IP, e.g. --add-host db.local:10.0.0.5",
        )
    };
    let (host, ip) = spec
        .split_once('=')
        .or_else(|| spec.split_once(':'))
        .ok_or_else(|| bad("no IP address"))?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("bad host name"));
    }
    // The daemon puts the host's address on RUN's bridge there (as Docker
    // puts its host-gateway IP).
    if ip == memobuild_proto::HOST_GATEWAY {
        return Ok((host.to_string(), ip.to_string()));
    }
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let addr: std::net::IpAddr = ip.parse().map_err(|_| bad("not an IP address"))?;
    Ok((host.to_string(), addr.to_string()))
}

/// `NAME=SOFT[:HARD]` as docker (`-1` is unlimited).
fn ulimit(spec: &str) -> Result<(String, (u64, u64)), RpcError> {
    let bad = |why: &str| {
        RpcError::with_hint(
            format!("--ulimit {spec:?}: {why}"),
            "use --ulimit NAME=SOFT[:HARD], e.g. --ulimit nofile=1024:2048",
        )
    };
    let (name, value) = spec.split_once('=').ok_or_else(|| bad("no value"))?;
    if !memobuild_proto::ULIMITS.iter().any(|(n, _)| *n == name) {
        let names: Vec<&str> = memobuild_proto::ULIMITS.iter().map(|(n, _)| *n).collect();
        return Err(RpcError::with_hint(
            format!("--ulimit {spec:?}: unknown limit {name:?}"),
            format!("limits: {}", names.join(", ")),
        ));
    }
    let number = |t: &str| -> Result<u64, RpcError> {
        match t {
            "-1" => Ok(u64::MAX),
            t => t.parse().map_err(|_| bad("not a number")),
        }
    };
    let (soft, hard) = match value.split_once(':') {
        Some((s, h)) => (number(s)?, number(h)?),
        None => (number(value)?, number(value)?),
    };
    if soft > hard {
        return Err(bad("the soft limit is above the hard limit"));
    }
    Ok((name.to_string(), (soft, hard)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn add_host_and_ulimit_parse_as_docker() {
        assert_eq!(
            super::add_host("db:10.0.0.5").unwrap(),
            ("db".into(), "10.0.0.5".into())
        );
        assert_eq!(
            super::add_host("v6:::1").unwrap(),
            ("v6".into(), "::1".into())
        );
        assert_eq!(
            super::add_host("x=fe80::1").unwrap(),
            ("x".into(), "fe80::1".into())
        );
        assert!(super::add_host("db:nope").is_err());
        assert_eq!(
            super::add_host("db:host-gateway").unwrap(),
            ("db".into(), "host-gateway".into())
        );
        assert_eq!(
            super::ulimit("nofile=100:200").unwrap(),
            ("nofile".into(), (100, 200))
        );
        assert_eq!(
            super::ulimit("core=-1").unwrap(),
            ("core".into(), (u64::MAX, u64::MAX))
        );
        assert!(super::ulimit("nofile=300:200").is_err());
        assert!(super::ulimit("files=1").is_err());
    }
}
