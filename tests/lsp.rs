//! `memobuild-ctl lsp` (issue 13, item 5), driven as an editor drives it: a
//! scripted LSP client on its stdin/stdout, a real daemon behind it, real
//! saves on disk. It checks the messages the server sends after a save.

mod common;
use common::{bin_dir, write_files, Daemon};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

struct Client {
    child: Child,
    stdin: ChildStdin,
    rx: mpsc::Receiver<Value>,
    next_id: u64,
    /// Messages read while waiting for something else.
    seen: Vec<Value>,
}

impl Client {
    fn start(d: &Daemon) -> Client {
        let mut child = Command::new(bin_dir().join("memobuild-ctl"))
            .arg("--socket")
            .arg(&d.socket)
            .arg("lsp")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        length = v.parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                r.read_exact(&mut body).unwrap();
                let _ = tx.send(serde_json::from_slice(&body).unwrap());
            }
        });
        Client {
            child,
            stdin,
            rx,
            next_id: 0,
            seen: Vec::new(),
        }
    }

    fn send(&mut self, message: Value) {
        let body = message.to_string();
        write!(self.stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn notify(&mut self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    /// The first message (seen before or arriving within 10 s) that `ok` takes.
    fn wait(&mut self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.seen.iter().position(&ok) {
            return self.seen.remove(i);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(m) if ok(&m) => return m,
                Ok(m) => self.seen.push(m),
                Err(_) => panic!("no {what} within 10 s; got {:#?}", self.seen),
            }
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let reply = self.wait(&format!("reply to {method}"), |m| {
            m["id"] == id && m.get("method").is_none()
        });
        assert!(reply.get("error").is_none(), "{method}: {reply:#}");
        reply["result"].clone()
    }

    fn lens_titles(&mut self, uri: &str) -> Vec<(u64, String)> {
        let lenses = self.request(
            "textDocument/codeLens",
            json!({"textDocument": {"uri": uri}}),
        );
        lenses
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["range"]["start"]["line"].as_u64().unwrap(),
                    l["command"]["title"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

#[test]
fn code_lenses_and_diagnostics_follow_saves() {
    let d = Daemon::start();
    let ctx = tempfile::tempdir().unwrap();
    let good = "FROM scratch\nCOPY f /f\nCOPY g /g\n";
    write_files(
        ctx.path(),
        &[("Dockerfile", good), ("f", "one"), ("g", "g")],
    );
    let ctx_path = ctx.path().canonicalize().unwrap();
    d.build_ok(&ctx_path, &[]);
    let dockerfile = ctx_path.join("Dockerfile");
    let uri = format!("file://{}", dockerfile.display());

    let mut c = Client::start(&d);
    let init = c.request(
        "initialize",
        json!({"processId": null, "rootUri": null,
               "capabilities": {"workspace": {"codeLens": {"refreshSupport": true}}}}),
    );
    assert_eq!(
        init["capabilities"]["codeLensProvider"]["resolveProvider"],
        false
    );
    assert_eq!(init["capabilities"]["hoverProvider"], true);
    c.notify("initialized", json!({}));
    c.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": "dockerfile", "version": 1, "text": good}}),
    );
    // Both COPY lines (0-based lines 1 and 2) are cached.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut titles = c.lens_titles(&uri);
    while titles.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        titles = c.lens_titles(&uri);
    }
    assert_eq!(
        titles,
        vec![(1, "cached".to_string()), (2, "cached".to_string())]
    );

    // A save of a file the first COPY reads: the server asks for new lenses.
    let saved = Instant::now();
    std::fs::write(ctx_path.join("f"), "two").unwrap();
    let refresh = c.wait("workspace/codeLens/refresh", |m| {
        m["method"] == "workspace/codeLens/refresh"
    });
    eprintln!("save -> codeLens/refresh: {:?}", saved.elapsed());
    c.send(json!({"jsonrpc": "2.0", "id": refresh["id"], "result": null}));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let titles = c.lens_titles(&uri);
        if titles
            == vec![
                (1, "dirty: file changed: f".to_string()),
                (2, "dirty: parent step changed".to_string()),
            ]
        {
            break;
        }
        assert!(Instant::now() < deadline, "lenses: {titles:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let hover = c.request(
        "textDocument/hover",
        json!({"textDocument": {"uri": uri}, "position": {"line": 1, "character": 2}}),
    );
    let text = hover["contents"]["value"].as_str().unwrap();
    assert!(
        text.contains("**dirty**") && text.contains("file changed: f"),
        "{text}"
    );
    assert!(text.contains("cache key `"), "{text}");

    // A syntax error saved: a diagnostic at its exact place.
    std::fs::write(&dockerfile, "FROM scratch\nCOPY f /f\nBOGUS g\n").unwrap();
    c.notify(
        "textDocument/didSave",
        json!({"textDocument": {"uri": uri}}),
    );
    let diag = c.wait("a diagnostic", |m| {
        m["method"] == "textDocument/publishDiagnostics"
            && m["params"]["diagnostics"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
    });
    let first = &diag["params"]["diagnostics"][0];
    assert_eq!(diag["params"]["uri"], uri.as_str());
    assert_eq!(
        first["range"]["start"],
        json!({"line": 2, "character": 0}),
        "{diag:#}"
    );
    assert_eq!(first["severity"], 1);
    assert!(
        first["message"].as_str().unwrap().contains("BOGUS"),
        "{diag:#}"
    );

    // Fixed: the diagnostic goes; the build command builds; lenses are cached.
    std::fs::write(&dockerfile, good).unwrap();
    c.wait("the diagnostics cleared", |m| {
        m["method"] == "textDocument/publishDiagnostics" && m["params"]["diagnostics"] == json!([])
    });
    c.request(
        "workspace/executeCommand",
        json!({"command": "memobuild.build", "arguments": [dockerfile.display().to_string()]}),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let titles = c.lens_titles(&uri);
        if titles.iter().all(|(_, t)| t == "cached" || t == "built") && titles.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the build command: {titles:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let built = d.ctl_json(&["status", ctx_path.to_str().unwrap()]);
    assert_eq!(built["projects"][0]["state"], "clean", "{built:#}");

    c.request("shutdown", Value::Null);
    c.notify("exit", Value::Null);
    let status = c.child.wait().unwrap();
    assert!(status.success(), "{status}");
}
