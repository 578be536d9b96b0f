//! Docker's side of outputs: the `docker save` files (`manifest.json`,
//! `repositories`) that make an OCI archive loadable by `docker load`, and
//! loading such an archive into the Docker Engine (`--load`, `-o type=docker`
//! without dest) through the Engine API's `POST /images/load`.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use memobuild_proto::{BlobRef, RpcError};
use std::path::{Path, PathBuf};

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// `name` as `docker load` wants it in `RepoTags`: `repo:tag` (`:latest` when
/// no tag is given); `None` for a digest reference, which cannot be a tag.
pub fn repo_tag(name: &str) -> Option<(String, String)> {
    if name.contains('@') {
        return None;
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rsplit_once(':') {
        Some((_, tag)) => {
            let repo = &name[..name.len() - tag.len() - 1];
            Some((repo.to_string(), tag.to_string()))
        }
        None => Some((name.to_string(), "latest".to_string())),
    }
}

/// The two `docker save` files for one image whose blobs sit at
/// `blobs/sha256/HEX` in the same archive: `manifest.json` and `repositories`.
pub fn save_files(
    config: &BlobRef,
    layers: &[BlobRef],
    names: &[String],
) -> [(String, Vec<u8>); 2] {
    let path = |b: &BlobRef| format!("blobs/{}", b.digest.replacen(':', "/", 1));
    let tags: Vec<(String, String)> = names.iter().filter_map(|n| repo_tag(n)).collect();
    let manifest = serde_json::json!([{
        "Config": path(config),
        "RepoTags": tags.iter().map(|(r, t)| format!("{r}:{t}")).collect::<Vec<_>>(),
        "Layers": layers.iter().map(path).collect::<Vec<_>>(),
    }]);
    // The legacy file maps each name to the top layer; loaders that read
    // manifest.json (every Docker since 1.10) do not need it.
    let mut repositories = serde_json::Map::new();
    if let Some(top) = layers.last() {
        let id = top.digest.trim_start_matches("sha256:").to_string();
        for (repo, tag) in &tags {
            let entry = repositories
                .entry(repo.clone())
                .or_insert_with(|| serde_json::json!({}));
            entry[tag] = serde_json::Value::String(id.clone());
        }
    }
    [
        (
            "manifest.json".into(),
            serde_json::to_vec(&manifest).unwrap_or_default(),
        ),
        (
            "repositories".into(),
            serde_json::to_vec(&repositories).unwrap_or_default(),
        ),
    ]
}

/// Where the Docker Engine listens.
#[derive(Debug, Clone)]
enum Engine {
    Unix(PathBuf),
    Tcp(String),
}

impl Engine {
    /// `DOCKER_HOST` (`unix://PATH` or plain `tcp://HOST:PORT`), else the default socket.
    fn from_env() -> Result<(Engine, String), RpcError> {
        let host = std::env::var("DOCKER_HOST").unwrap_or_default();
        if host.is_empty() {
            let how = format!("unix://{DEFAULT_SOCKET} (DOCKER_HOST is not set)");
            return Ok((Engine::Unix(DEFAULT_SOCKET.into()), how));
        }
        let how = format!("{host} (DOCKER_HOST)");
        if let Some(path) = host.strip_prefix("unix://") {
            return Ok((Engine::Unix(path.into()), how));
        }
        if let Some(addr) = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))
        {
            if std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty()) {
                return Err(RpcError::with_hint(
                    format!("--load: the Docker Engine at {how} wants TLS (DOCKER_TLS_VERIFY), which memobuild-ctl does not speak yet"),
                    "write the image with -o type=docker,dest=FILE.tar and run `docker load -i FILE.tar`",
                ));
            }
            return Ok((Engine::Tcp(addr.trim_end_matches('/').to_string()), how));
        }
        Err(RpcError::with_hint(
            format!(
                "--load: DOCKER_HOST={host} is not supported (only unix:// and tcp:// without TLS)"
            ),
            "write the image with -o type=docker,dest=FILE.tar and run `docker load -i FILE.tar`",
        ))
    }
}

fn unreachable(how: &str, e: impl std::fmt::Display) -> RpcError {
    RpcError::with_hint(
        format!("--load / -o type=docker: no Docker Engine answers at {how}: {e}"),
        "start Docker (or point DOCKER_HOST at it) or containerd (or point CONTAINERD_ADDRESS \
         at it), or write the image to a file instead: -o type=docker,dest=FILE.tar (for \
         `docker load -i`), -o type=oci,dest=FILE.tar, or keep it in memobuild's store with -t NAME",
    )
}

/// Sends one request to the Engine; returns the status and the whole body.
async fn request<B>(req: hyper::Request<B>) -> Result<(hyper::StatusCode, Bytes), RpcError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (engine, how) = Engine::from_env()?;
    macro_rules! send {
        ($stream:expr) => {{
            let io = hyper_util::rt::TokioIo::new($stream);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| unreachable(&how, e))?;
            let driver = tokio::spawn(conn);
            let response = sender
                .send_request(req)
                .await
                .map_err(|e| RpcError::new(format!("the Docker Engine at {how}: {e}")))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| RpcError::new(format!("the Docker Engine at {how}: {e}")))?
                .to_bytes();
            driver.abort();
            Ok((status, body))
        }};
    }
    match engine {
        Engine::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(&path)
                .await
                .map_err(|e| unreachable(&how, e))?;
            send!(stream)
        }
        Engine::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| unreachable(&how, e))?;
            send!(stream)
        }
    }
}

fn builder(method: &str, path: &str) -> hyper::http::request::Builder {
    hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "docker")
        .header(
            hyper::header::USER_AGENT,
            concat!("memobuild-ctl/", env!("CARGO_PKG_VERSION")),
        )
}

/// `DOCKER_HOST` names an engine memobuild-ctl can talk to (checked before
/// falling back to containerd: an unsupported DOCKER_HOST is an error, not
/// "no engine").
pub fn configured() -> Result<(), RpcError> {
    Engine::from_env().map(drop)
}

/// Checks, before a build, that a Docker Engine answers (`GET /_ping`).
pub async fn ping() -> Result<(), RpcError> {
    let (_, how) = Engine::from_env()?;
    let req = builder("GET", "/_ping")
        .body(Full::new(Bytes::new()))
        .map_err(|e| RpcError::new(format!("building the Docker request: {e}")))?;
    let (status, body) = request(req).await?;
    if !status.is_success() {
        return Err(unreachable(
            &how,
            format!(
                "/_ping answered {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        ));
    }
    Ok(())
}

/// Loads a `docker save` archive into the Engine (`POST /images/load`);
/// returns what the Engine said it loaded (`Loaded image: NAME` lines).
pub async fn load(archive: &Path) -> Result<Vec<String>, RpcError> {
    let err = |e: std::io::Error| RpcError::new(format!("reading {}: {e}", archive.display()));
    let file = tokio::fs::File::open(archive).await.map_err(err)?;
    let size = file.metadata().await.map_err(err)?.len();
    let chunks = futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
        match file.read_buf(&mut buf).await {
            Ok(0) => None,
            Ok(_) => Some((Ok(Frame::data(buf.freeze())), file)),
            Err(e) => Some((Err(e), file)),
        }
    });
    let req = builder("POST", "/images/load?quiet=1")
        .header(hyper::header::CONTENT_TYPE, "application/x-tar")
        .header(hyper::header::CONTENT_LENGTH, size)
        .body(StreamBody::new(chunks))
        .map_err(|e| RpcError::new(format!("building the Docker request: {e}")))?;
    let (status, body) = request(req).await?;
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(String::from))
            .unwrap_or_else(|| text.trim().to_string());
        return Err(RpcError::new(format!(
            "the Docker Engine refused the image ({status}): {message}"
        )));
    }
    // The answer is a stream of JSON messages; a failure midway is one with "error".
    let mut loaded = Vec::new();
    let stream = serde_json::Deserializer::from_str(&text).into_iter::<serde_json::Value>();
    for message in stream {
        let message = message.map_err(|e| {
            RpcError::new(format!(
                "the Docker Engine's answer to the load is not JSON: {e}: {text}"
            ))
        })?;
        if let Some(error) = message["error"].as_str() {
            return Err(RpcError::new(format!(
                "the Docker Engine could not load the image: {error}"
            )));
        }
        if let Some(line) = message["stream"].as_str() {
            loaded.extend(line.lines().filter(|l| !l.is_empty()).map(String::from));
        }
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_repo_tags() {
        assert_eq!(repo_tag("demo"), Some(("demo".into(), "latest".into())));
        assert_eq!(repo_tag("demo:1"), Some(("demo".into(), "1".into())));
        assert_eq!(
            repo_tag("localhost:5000/a/b"),
            Some(("localhost:5000/a/b".into(), "latest".into()))
        );
        assert_eq!(
            repo_tag("localhost:5000/a/b:2"),
            Some(("localhost:5000/a/b".into(), "2".into()))
        );
        assert_eq!(repo_tag("a@sha256:00"), None);
    }
}
