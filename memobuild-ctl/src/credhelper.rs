//! Docker credential helpers: `credHelpers` (one helper per registry) and
//! `credsStore` (one for all) in the docker config name a program
//! `docker-credential-NAME` on PATH, asked with Docker's protocol: `get`
//! with the server URL on stdin answers `{"ServerURL","Username","Secret"}`;
//! `list` answers `{URL: username}`.

use memobuild_proto::registry::{Credential, DOCKER_HUB};
use memobuild_proto::{RpcError, Secret};
use std::io::Write;
use std::process::{Command, Stdio};

/// The server URL Docker hands helpers for `host`.
pub fn server_url(host: &str) -> String {
    if host == DOCKER_HUB {
        "https://index.docker.io/v1/".to_string()
    } else {
        host.to_string()
    }
}

fn run(helper: &str, verb: &str, input: &str) -> Result<(bool, String), RpcError> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            RpcError::with_hint(
                format!("the docker config names the credential helper {helper:?}, but {program} cannot be run: {e}"),
                format!("install {program} on PATH, or remove it from the docker config (credsStore / credHelpers)"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| RpcError::new(format!("{program} {verb}: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((out.status.success(), text))
}

/// `docker-credential-HELPER get` for `host`: `Ok(None)` when the helper
/// has no login for it.
pub fn get(helper: &str, host: &str) -> Result<Option<Credential>, RpcError> {
    let url = server_url(host);
    let (ok, text) = run(helper, "get", &url)?;
    if !ok {
        // The protocol's "not found" answer; anything else is a failure.
        if text.contains("credentials not found") {
            return Ok(None);
        }
        return Err(RpcError::with_hint(
            format!("docker-credential-{helper} get {url} failed: {text}"),
            format!("check the helper (`echo {url} | docker-credential-{helper} get`), or log in again with `docker login {host}`"),
        ));
    }
    let answer: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        RpcError::new(format!(
            "docker-credential-{helper} get {url} did not answer JSON: {e}"
        ))
    })?;
    let user = answer["Username"].as_str().unwrap_or_default();
    let secret = answer["Secret"].as_str().unwrap_or_default();
    if secret.is_empty() {
        return Ok(None);
    }
    if user == "<token>" {
        return Err(RpcError::with_hint(
            format!("docker-credential-{helper}: the login for {host} is an OAuth identity token, which memobuild cannot use"),
            format!("log in to {host} with a user name and a password or access token (`docker login {host} -u USER`)"),
        ));
    }
    Ok(Some(Credential {
        username: user.to_string(),
        password: Secret(secret.as_bytes().to_vec()),
    }))
}

/// `docker-credential-HELPER list`: the server URLs it holds logins for.
pub fn list(helper: &str) -> Result<Vec<String>, RpcError> {
    let (ok, text) = run(helper, "list", "")?;
    if !ok {
        return Err(RpcError::new(format!(
            "docker-credential-{helper} list failed: {text}"
        )));
    }
    let answer: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| {
            RpcError::new(format!(
                "docker-credential-{helper} list did not answer JSON: {e}"
            ))
        })?;
    Ok(answer.keys().cloned().collect())
}
