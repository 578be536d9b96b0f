//! `memobuild-ctl lsp`: a language server for Dockerfiles over stdio
//! (docs/EDITORS.md). It shows what the daemon knows, live: a code lens per
//! instruction (`cached`, `dirty: file changed: src/app.py`, `building`,
//! `failed: exit 2`), diagnostics for a Dockerfile the daemon cannot plan
//! (syntax errors, missing files: exact line and column) and for the last
//! build's failure, BuildKit's lint warnings (`--call=check` rules, same
//! names), a hover with why a step is dirty or failed and what went into its
//! cache key, a `memobuild.build` command, and a `memobuild.eager` command
//! (also a code action) that turns eager builds on or off. Updates come from
//! the daemon's status stream (`status_wait`), so a save shows without the
//! editor asking.
//!
//! The JSON-RPC framing (a `Content-Length` header, then the body) is the few
//! lines LSP needs; messages are built with serde_json.

use crate::connect::{connect, ctx};
use memobuild_proto::paths::normalize;
use memobuild_proto::{
    FailureInfo, MemobuildClient, ProjectStatus, RpcError, StatusReport, StepState,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// Largest message the server reads (a Dockerfile's text travels in them).
const MAX_MESSAGE: usize = 64 << 20;

enum Input {
    Message(Value),
    Status(StatusReport),
    /// Messages a background task produced (a command's reply).
    Send(Vec<Value>),
    Closed,
}

/// Serves LSP on stdin/stdout until the client sends `exit` or closes stdin.
pub async fn serve(socket: &Path) -> Result<ExitCode, RpcError> {
    let client = connect(socket, false).await?;
    let (tx, mut rx) = mpsc::channel::<Input>(64);
    tokio::spawn(read_messages(tx.clone()));
    let follower = {
        let (client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let mut generation = 0;
            loop {
                match client.status_wait(ctx(), String::new(), generation).await {
                    Ok(Ok(report)) => {
                        generation = report.generation;
                        if tx.send(Input::Status(report)).await.is_err() {
                            return;
                        }
                    }
                    // The daemon went away: the lenses stay as they were.
                    _ => return,
                }
            }
        })
    };
    let mut out = tokio::io::stdout();
    let mut server = Server {
        socket: socket.to_path_buf(),
        rpc: Some((client.clone(), tx.clone())),
        ..Server::default()
    };
    let mut shutdown = false;
    while let Some(input) = rx.recv().await {
        let replies = match input {
            Input::Closed => break,
            Input::Status(report) => server.status(report),
            Input::Send(messages) => messages,
            Input::Message(m) if m["method"] == "exit" => break,
            Input::Message(m) => {
                if m["method"] == "shutdown" {
                    shutdown = true;
                }
                server.handle(&m)
            }
        };
        for reply in replies {
            let body = reply.to_string();
            let frame = format!("Content-Length: {}\r\n\r\n{body}", body.len());
            if out.write_all(frame.as_bytes()).await.is_err() || out.flush().await.is_err() {
                follower.abort();
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
    follower.abort();
    // LSP: exit without a shutdown first is exit status 1.
    Ok(if shutdown {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn read_messages(tx: mpsc::Sender<Input>) {
    let mut stdin = BufReader::new(tokio::io::stdin());
    loop {
        let mut length = None;
        loop {
            let mut line = String::new();
            match stdin.read_line(&mut line).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send(Input::Closed).await;
                    return;
                }
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let Some(length) = length.filter(|l| *l <= MAX_MESSAGE) else {
            let _ = tx.send(Input::Closed).await;
            return;
        };
        let mut body = vec![0; length];
        if stdin.read_exact(&mut body).await.is_err() {
            let _ = tx.send(Input::Closed).await;
            return;
        }
        // A message that is not JSON is skipped (the spec has no reply for it).
        if let Ok(message) = serde_json::from_slice(&body) {
            if tx.send(Input::Message(message)).await.is_err() {
                return;
            }
        }
    }
}

#[derive(Default)]
struct Server {
    /// The daemon's socket (for builds the command starts).
    socket: PathBuf,
    /// Open documents: URI -> path.
    open: BTreeMap<String, PathBuf>,
    report: Option<StatusReport>,
    /// The client takes `workspace/codeLens/refresh`.
    refresh: bool,
    next_id: u64,
    /// What was last published per document (to send only changes).
    published: BTreeMap<String, Value>,
    /// The daemon, for commands, and where their replies go.
    rpc: Option<(MemobuildClient, mpsc::Sender<Input>)>,
}

impl Server {
    fn handle(&mut self, m: &Value) -> Vec<Value> {
        let id = m.get("id").cloned();
        let params = &m["params"];
        let method = m["method"].as_str().unwrap_or("");
        let result = match method {
            "initialize" => {
                self.refresh = params["capabilities"]["workspace"]["codeLens"]["refreshSupport"]
                    .as_bool()
                    .unwrap_or(false);
                json!({
                    "capabilities": {
                        "textDocumentSync": {"openClose": true, "change": 1, "save": {"includeText": false}},
                        "codeLensProvider": {"resolveProvider": false},
                        "hoverProvider": true,
                        "codeActionProvider": true,
                        "executeCommandProvider": {"commands": ["memobuild.build", "memobuild.eager"]},
                    },
                    "serverInfo": {"name": "memobuild", "version": env!("CARGO_PKG_VERSION")},
                })
            }
            "shutdown" => Value::Null,
            "textDocument/didOpen" | "textDocument/didSave" | "textDocument/didChange" => {
                let uri = params["textDocument"]["uri"].as_str().unwrap_or("");
                if let Some(path) = uri_path(uri) {
                    // The daemon names Dockerfiles under canonical contexts.
                    let path = std::fs::canonicalize(&path).unwrap_or(path);
                    self.open.insert(uri.to_string(), path);
                }
                return self.diagnostics(Some(uri));
            }
            "textDocument/didClose" => {
                let uri = params["textDocument"]["uri"].as_str().unwrap_or("");
                self.open.remove(uri);
                self.published.remove(uri);
                return Vec::new();
            }
            "textDocument/codeLens" => {
                let uri = params["textDocument"]["uri"].as_str().unwrap_or("");
                self.lenses(uri)
            }
            "textDocument/hover" => {
                let uri = params["textDocument"]["uri"].as_str().unwrap_or("");
                let line = params["position"]["line"].as_u64().unwrap_or(0) as usize + 1;
                self.hover(uri, line)
            }
            "textDocument/codeAction" => {
                let uri = params["textDocument"]["uri"].as_str().unwrap_or("");
                self.code_actions(uri)
            }
            "workspace/executeCommand" if params["command"] == "memobuild.eager" => {
                return self.set_eager(id, &params["arguments"]);
            }
            "workspace/executeCommand" if params["command"] == "memobuild.build" => {
                let path = normalize(Path::new(params["arguments"][0].as_str().unwrap_or("")));
                if let Some(p) = self.report.as_ref().and_then(|r| project_for(r, &path)) {
                    build_in_background(&self.socket, p);
                }
                Value::Null
            }
            _ => match id {
                // A request we do not serve: the spec's MethodNotFound.
                Some(id) if !method.is_empty() => {
                    return vec![json!({"jsonrpc": "2.0", "id": id, "error": {
                        "code": -32601, "message": format!("memobuild lsp does not serve {method}")}})]
                }
                // Notifications we do not need, and replies to our requests.
                _ => return Vec::new(),
            },
        };
        match id {
            Some(id) => vec![json!({"jsonrpc": "2.0", "id": id, "result": result})],
            None => Vec::new(),
        }
    }

    /// A new status report: republish what changed, and ask for new lenses.
    fn status(&mut self, report: StatusReport) -> Vec<Value> {
        let changed = |old: Option<&StatusReport>, path: &Path| {
            let generation =
                |r: &StatusReport| project_for(r, path).map(|p| (p.id.clone(), p.generation));
            old.map(generation) != Some(generation(&report))
        };
        let touched: Vec<PathBuf> = self
            .open
            .values()
            .filter(|path| changed(self.report.as_ref(), path))
            .cloned()
            .collect();
        self.report = Some(report);
        if touched.is_empty() {
            return Vec::new();
        }
        let mut out = self.diagnostics(None);
        if self.refresh {
            self.next_id += 1;
            out.push(
                json!({"jsonrpc": "2.0", "id": format!("memobuild-{}", self.next_id),
                "method": "workspace/codeLens/refresh"}),
            );
        }
        out
    }

    fn project(&self, uri: &str) -> Option<&ProjectStatus> {
        let path = self.open.get(uri)?;
        project_for(self.report.as_ref()?, path)
    }

    /// `publishDiagnostics` for one document (or all open ones) whose
    /// diagnostics changed.
    fn diagnostics(&mut self, only: Option<&str>) -> Vec<Value> {
        let uris: Vec<String> = self
            .open
            .keys()
            .filter(|u| match only {
                None => true,
                Some(o) => o == u.as_str(),
            })
            .cloned()
            .collect();
        let mut out = Vec::new();
        for uri in uris {
            let mut list = Vec::new();
            if let Some(p) = self.project(&uri) {
                if let Some(e) = &p.plan_error {
                    list.push(diagnostic(e, "the Dockerfile cannot be planned"));
                } else if let Some(f) = p.last_build.as_ref().and_then(|l| l.failure.as_ref()) {
                    list.push(diagnostic(f, "the last build failed"));
                }
                // The lint warnings of the Dockerfile as saved.
                list.extend(p.lint.iter().map(lint_diagnostic));
            }
            let list = Value::Array(list);
            if self.published.get(&uri) != Some(&list) {
                self.published.insert(uri.clone(), list.clone());
                out.push(
                    json!({"jsonrpc": "2.0", "method": "textDocument/publishDiagnostics",
                    "params": {"uri": uri, "diagnostics": list}}),
                );
            }
        }
        out
    }

    fn lenses(&self, uri: &str) -> Value {
        let Some(p) = self.project(uri) else {
            return json!([]);
        };
        let path = self.open.get(uri).map(|p| p.display().to_string());
        let lenses: Vec<Value> = p
            .steps
            .iter()
            .filter(|s| s.line > 0)
            .map(|s| {
                let title = match &s.state {
                    StepState::Clean | StepState::Cached => "cached".to_string(),
                    StepState::Done => "built".to_string(),
                    StepState::Building => match s.started_at_ms {
                        Some(t) => format!("building {:.1}s", (now_ms() - t).max(0) as f64 / 1000.0),
                        None => "building".to_string(),
                    },
                    StepState::Dirty => match s.why.first() {
                        Some(why) => format!("dirty: {why}"),
                        None => "dirty".to_string(),
                    },
                    StepState::Failed => match s.failure.as_ref() {
                        Some(FailureInfo {
                            exit_code: Some(code),
                            ..
                        }) => format!("failed: exit {code}"),
                        Some(f) => format!("failed: {}", f.message),
                        None => "failed".to_string(),
                    },
                    StepState::Unknown(other) => other.clone(),
                };
                let line = s.line - 1;
                json!({
                    "range": {"start": {"line": line, "character": 0}, "end": {"line": line, "character": 0}},
                    "command": {"title": title, "command": "memobuild.build", "arguments": [path]},
                })
            })
            .collect();
        Value::Array(lenses)
    }

    fn hover(&self, uri: &str, line: usize) -> Value {
        let Some(p) = self.project(uri) else {
            return Value::Null;
        };
        let Some(s) = p.steps.iter().find(|s| s.line == line) else {
            return Value::Null;
        };
        let mut text = format!("**{}** step {} of project `{}`", s.state, s.index + 1, p.id);
        for why in &s.why {
            text.push_str(&format!("\n- {why}"));
        }
        if !s.cache_key.is_empty() {
            text.push_str(&format!("\n\ncache key `{}`", s.cache_key));
        }
        if let Some(k) = &s.key_inputs {
            text.push_str(&key_inputs_text(&s.instruction, k));
        }
        if let Some(f) = &s.failure {
            text.push_str(&format!("\n\n{}", f.message));
            if !f.output.is_empty() {
                text.push_str(&format!("\n```\n{}\n```", f.output.join("\n")));
            }
        }
        json!({"contents": {"kind": "markdown", "value": text}})
    }
}

impl Server {
    /// `memobuild.eager [PATH, ON]`: turns eager builds on or off for the
    /// project of the Dockerfile at PATH (without ON: the opposite of now).
    /// The reply comes once the daemon has answered.
    fn set_eager(&self, id: Option<Value>, arguments: &Value) -> Vec<Value> {
        let reply = |id: &Option<Value>, outcome: Result<Value, String>| match (id, outcome) {
            (Some(id), Ok(result)) => vec![json!({"jsonrpc": "2.0", "id": id, "result": result})],
            (Some(id), Err(message)) => vec![json!({"jsonrpc": "2.0", "id": id, "error": {
                "code": -32603, "message": message}})],
            (None, _) => Vec::new(),
        };
        let path = normalize(Path::new(arguments[0].as_str().unwrap_or("")));
        let Some(p) = self.report.as_ref().and_then(|r| project_for(r, &path)) else {
            return reply(
                &id,
                Err(format!(
                    "no project for {}: build it once (memobuild-ctl build)",
                    path.display()
                )),
            );
        };
        let on = arguments[1].as_bool().unwrap_or(!p.eager);
        let Some((client, tx)) = self.rpc.clone() else {
            return reply(&id, Err("not connected to the daemon".into()));
        };
        let project = p.id.clone();
        tokio::spawn(async move {
            let outcome = match client.set_eager(ctx(), project.clone(), on).await {
                Ok(Ok(_)) => Ok(json!({"project": project, "eager": on})),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("the daemon did not answer: {e}")),
            };
            let _ = tx.send(Input::Send(reply(&id, outcome))).await;
        });
        Vec::new()
    }

    /// One code action per Dockerfile of a project: eager builds on or off.
    fn code_actions(&self, uri: &str) -> Value {
        let (Some(p), Some(path)) = (self.project(uri), self.open.get(uri)) else {
            return json!([]);
        };
        let title = if p.eager {
            "memobuild: turn eager builds off for this project"
        } else {
            "memobuild: turn eager builds on for this project (rebuild in the background after saves)"
        };
        json!([{
            "title": title,
            "kind": "source",
            "command": {"title": title, "command": "memobuild.eager",
                        "arguments": [path.display().to_string(), !p.eager]},
        }])
    }
}

/// The hover's part on what went into a step's key (docs/CACHE.md).
fn key_inputs_text(instruction: &str, k: &memobuild_proto::KeyInputs) -> String {
    let mut text = String::from("\n\nwhat went into the key:");
    text.push_str(&format!("\n- instruction `{instruction}`"));
    if !k.base.is_empty() {
        text.push_str(&format!("\n- base `{}`", k.base));
    }
    if !k.parent_key.is_empty() {
        text.push_str(&format!("\n- parent key `{}`", k.parent_key));
    }
    if !k.args.is_empty() {
        let args: Vec<String> = k.args.iter().map(|(n, v)| format!("`{n}={v}`")).collect();
        text.push_str(&format!("\n- args {}", args.join(", ")));
    }
    if k.file_count > 0 {
        let what = if k.partial {
            "files changed since the last build"
        } else {
            "files"
        };
        text.push_str(&format!("\n- {what} ({}):", k.file_count));
        for (path, digest) in &k.files {
            let digest = digest.get(..16).unwrap_or(digest);
            text.push_str(&format!("\n  - `{path}` {digest}"));
        }
        if k.file_count > k.files.len() {
            text.push_str(&format!("\n  - and {} more", k.file_count - k.files.len()));
        }
    }
    text
}

/// A lint warning as an LSP diagnostic (severity Warning, the rule's name as
/// the code, its documentation as the code's description).
fn lint_diagnostic(w: &memobuild_proto::LintWarning) -> Value {
    let line = w.line.saturating_sub(1);
    json!({
        "range": {"start": {"line": line, "character": w.column.saturating_sub(1)},
                  "end": {"line": line + 1, "character": 0}},
        "severity": 2,
        "source": "memobuild",
        "code": w.rule,
        "codeDescription": {"href": w.url},
        "message": w.detail,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The project of the Dockerfile at `path`: the most recently used of them.
fn project_for<'a>(report: &'a StatusReport, path: &Path) -> Option<&'a ProjectStatus> {
    report
        .projects
        .iter()
        .filter(|p| normalize(Path::new(&p.dockerfile)) == path)
        .max_by_key(|p| p.last_used)
}

fn diagnostic(f: &FailureInfo, what: &str) -> Value {
    let line = f.line.saturating_sub(1);
    let character = f.column.saturating_sub(1);
    json!({
        "range": {"start": {"line": line, "character": character},
                  "end": {"line": line + 1, "character": 0}},
        "severity": 1,
        "source": "memobuild",
        "code": f.kind,
        "message": format!("{what}: {}", f.message),
    })
}

/// The path of a `file://` URI (percent-decoded), normalized.
fn uri_path(uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    let mut bytes = Vec::with_capacity(rest.len());
    let raw = rest.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            if let Ok(b) = u8::from_str_radix(&rest[i + 1..i + 3], 16) {
                bytes.push(b);
                i += 3;
                continue;
            }
        }
        bytes.push(raw[i]);
        i += 1;
    }
    let text = String::from_utf8(bytes).ok()?;
    Some(normalize(Path::new(&text)))
}

/// `memobuild-ctl build` of project `p`, its output to nowhere: the
/// lenses show its progress.
fn build_in_background(socket: &Path, p: &ProjectStatus) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--socket")
        .arg(socket)
        .args(["build", "--progress", "quiet", "-f", &p.dockerfile]);
    if !p.target.is_empty() {
        cmd.args(["--target", &p.target]);
    }
    for (name, value) in &p.build_args {
        cmd.arg("--build-arg").arg(format!("{name}={value}"));
    }
    let _ = cmd
        .arg(&p.context)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}
