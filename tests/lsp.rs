//! `memobuild-ctl lsp` (issue 13, item 5), driven as an editor drives it: a
//! scripted LSP client on its stdin/stdout, a real daemon behind it, real
//! saves on disk. It checks the messages the server sends after a save.

mod common;
use common::{bin_dir, busybox_context, write_files, Daemon};
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
    // What went into the key (of the last build, which the step is listed
    // from): the instruction, the parent's key, the file with its BLAKE3.
    let status = d.ctl_json(&["status", ctx_path.to_str().unwrap()]);
    let steps = status["projects"][0]["steps"].as_array().unwrap();
    let copy = steps
        .iter()
        .find(|s| s["instruction"] == "COPY f /f")
        .unwrap_or_else(|| panic!("{status:#}"));
    let parent = copy["key_inputs"]["parent_key"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!parent.is_empty(), "{status:#}");
    assert_eq!(copy["key_inputs"]["file_count"], 1, "{status:#}");
    let one = blake3::hash(b"one").to_hex().to_string();
    // The file's BLAKE3, then its mode.
    assert!(
        copy["key_inputs"]["files"]["f"]
            .as_str()
            .is_some_and(|v| v.starts_with(&one)),
        "{status:#}"
    );
    for part in [
        "what went into the key:".to_string(),
        "instruction `COPY f /f`".to_string(),
        format!("parent key `{parent}`"),
        "files (1):".to_string(),
        format!("`f` {}", &one[..16]),
    ] {
        assert!(text.contains(&part), "no {part:?} in the hover:\n{text}");
    }

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

/// Initializes a client and opens `uri` (with `text`); waits for its lenses.
fn open(c: &mut Client, uri: &str, text: &str) {
    c.request(
        "initialize",
        json!({"processId": null, "rootUri": null,
               "capabilities": {"workspace": {"codeLens": {"refreshSupport": true}}}}),
    );
    c.notify("initialized", json!({}));
    c.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": uri, "languageId": "dockerfile", "version": 1, "text": text}}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.lens_titles(uri).is_empty() {
        assert!(Instant::now() < deadline, "no lenses for {uri}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (line, rule, message, severity) of the diagnostics of a publish.
fn diagnostics(m: &Value) -> Vec<(u64, String, String, u64)> {
    m["params"]["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["range"]["start"]["line"].as_u64().unwrap(),
                d["code"].as_str().unwrap_or("").to_string(),
                d["message"].as_str().unwrap().to_string(),
                d["severity"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// BuildKit's lint rules (`--call=check`) as warnings, with their names and
/// messages, updated after a save of the Dockerfile.
#[test]
fn lint_warnings_are_diagnostics_and_follow_saves() {
    let d = Daemon::start();
    let ctx = tempfile::tempdir().unwrap();
    let linted =
        "FROM scratch as Base\nMAINTAINER me@example.org\nCOPY f /f\nENV key value\nCMD run me\n";
    write_files(
        ctx.path(),
        &[("Dockerfile", linted), ("f", "f"), (".dockerignore", "g\n")],
    );
    let ctx_path = ctx.path().canonicalize().unwrap();
    d.build_ok(&ctx_path, &[]);
    let dockerfile = ctx_path.join("Dockerfile");
    let uri = format!("file://{}", dockerfile.display());
    let mut c = Client::start(&d);
    open(&mut c, &uri, linted);
    let publish = c.wait("lint diagnostics", |m| {
        m["method"] == "textDocument/publishDiagnostics"
            && m["params"]["diagnostics"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
    });
    let want =
        |line: u64, rule: &str, message: &str| (line, rule.to_string(), message.to_string(), 2);
    assert_eq!(
        diagnostics(&publish),
        vec![
            want(0, "FromAsCasing", "'as' and 'FROM' keywords' casing do not match"),
            want(0, "StageNameCasing", "Stage name 'Base' should be lowercase"),
            want(1, "MaintainerDeprecated", "Maintainer instruction is deprecated in favor of using label"),
            want(3, "LegacyKeyValueFormat", "\"ENV key=value\" should be used instead of legacy \"ENV key value\" format"),
            want(3, "SecretsUsedInArgOrEnv", "Do not use ARG or ENV instructions for sensitive data (ENV \"key\")"),
            want(4, "JSONArgsRecommended", "JSON arguments recommended for CMD to prevent unintended behavior related to OS signals"),
        ],
        "{publish:#}"
    );
    assert_eq!(
        publish["params"]["diagnostics"][4]["codeDescription"]["href"],
        "https://docs.docker.com/go/dockerfile/rule/secrets-used-in-arg-or-env/"
    );

    // A save that fixes those and adds a COPY of an ignored file: republished
    // from the daemon's re-plan, without a build. (The COPY cannot be
    // planned: that error is shown too, and the warning with it.)
    std::fs::write(
        &dockerfile,
        "FROM scratch AS base\nCOPY f /f\nCOPY g /g\nCMD [\"run\"]\n",
    )
    .unwrap();
    std::fs::write(ctx_path.join("g"), "g").unwrap();
    let publish = c.wait("the new lint diagnostics", |m| {
        m["method"] == "textDocument/publishDiagnostics"
            && diagnostics(m).iter().any(|d| d.1 == "CopyIgnoredFile")
    });
    let warnings: Vec<_> = diagnostics(&publish)
        .into_iter()
        .filter(|d| d.3 == 2)
        .collect();
    assert_eq!(
        warnings,
        vec![(
            2,
            "CopyIgnoredFile".to_string(),
            "Attempting to Copy file \"g\" that is excluded by .dockerignore".to_string(),
            2
        ),],
        "{publish:#}"
    );
    // `# check=skip=all` (BuildKit's directive) turns them off.
    std::fs::write(
        &dockerfile,
        "# check=skip=all\nFROM scratch as base\nCOPY f /f\nCMD run\n",
    )
    .unwrap();
    c.wait("the diagnostics cleared", |m| {
        m["method"] == "textDocument/publishDiagnostics" && m["params"]["diagnostics"] == json!([])
    });
    // A rule only planning can check: the variable is looked up in the
    // stage's ARGs and ENV (and its base image's).
    std::fs::write(
        &dockerfile,
        "FROM scratch AS base
ARG VERSION=1
ENV V=$VERSIN
COPY f /f
",
    )
    .unwrap();
    let publish = c.wait("the UndefinedVar diagnostic", |m| {
        m["method"] == "textDocument/publishDiagnostics"
            && diagnostics(m).iter().any(|d| d.1 == "UndefinedVar")
    });
    assert_eq!(
        diagnostics(&publish),
        vec![want(
            2,
            "UndefinedVar",
            "Usage of undefined variable '$VERSIN' (did you mean $VERSION?)"
        )],
        "{publish:#}"
    );
    c.request("shutdown", Value::Null);
    c.notify("exit", Value::Null);
    assert!(c.child.wait().unwrap().success());
}

/// The `memobuild.eager` command (and its code action) turns eager builds on
/// for the project: a save is then built in the background, its RUN at the
/// lowest CPU weight, and off again.
#[test]
fn the_eager_command_turns_background_builds_on_and_they_run_at_low_priority() {
    let d = Daemon::start();
    // The RUN records its cgroup's CPU weight (v1: cpu.shares, v2: cpu.weight).
    let ctx = busybox_context(
        "FROM base\nCOPY f /f\nRUN cat /sys/fs/cgroup/cpu/cpu.shares /sys/fs/cgroup/cpu,cpuacct/cpu.shares /sys/fs/cgroup/cpu.weight 2>/dev/null | head -n 1 > /weight\n",
        &[("f", "one")],
    );
    let ctx_path = ctx.path().canonicalize().unwrap();
    d.build_ok(&ctx_path, &[]);
    let dockerfile = ctx_path.join("Dockerfile");
    let path = dockerfile.display().to_string();
    let uri = format!("file://{path}");
    let mut c = Client::start(&d);
    open(&mut c, &uri, "");

    let actions = c.request(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": uri},
               "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
               "context": {"diagnostics": []}}),
    );
    let action = &actions[0];
    assert!(
        action["title"]
            .as_str()
            .unwrap()
            .contains("turn eager builds on"),
        "{actions:#}"
    );
    assert_eq!(action["command"]["command"], "memobuild.eager");
    let result = c.request(
        "workspace/executeCommand",
        json!({"command": "memobuild.eager", "arguments": action["command"]["arguments"]}),
    );
    assert_eq!(result["eager"], true, "{result:#}");
    let status = d.ctl_json(&["status", ctx_path.to_str().unwrap()]);
    assert_eq!(status["projects"][0]["eager"], true, "{status:#}");

    // A save: built in the background, nobody asking.
    std::fs::write(ctx_path.join("f"), "two").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.ctl_json(&["status", ctx_path.to_str().unwrap()])["projects"][0]["state"] == "clean" {
        assert!(Instant::now() < deadline, "the save was not seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = d.ctl_json(&["status", ctx_path.to_str().unwrap()]);
        let p = &s["projects"][0];
        if p["state"] == "clean" && p["changed_files"] == json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "no eager build: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = tempfile::tempdir().unwrap();
    let dest = format!("type=local,dest={}", out.path().display());
    let ready = d.build_ok(&ctx_path, &["-o", &dest]);
    assert!(ready.executed().is_empty(), "{}", ready.text());
    let eager_weight = std::fs::read_to_string(out.path().join("weight")).unwrap();
    // cgroup v1 cpu.shares 2, or v2 cpu.weight 1: the smallest there is.
    assert!(
        ["2", "1"].contains(&eager_weight.trim()),
        "the eager RUN had CPU weight {eager_weight:?}"
    );
    // The same RUN in an explicit build: the default weight.
    let out2 = tempfile::tempdir().unwrap();
    let dest2 = format!("type=local,dest={}", out2.path().display());
    d.build_ok(&ctx_path, &["--no-cache", "-o", &dest2]);
    let explicit_weight = std::fs::read_to_string(out2.path().join("weight")).unwrap();
    assert!(
        ["1024", "100"].contains(&explicit_weight.trim()),
        "the explicit RUN had CPU weight {explicit_weight:?}"
    );

    // Off through the command (the code action now offers that).
    let actions = c.request(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": uri},
               "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
               "context": {"diagnostics": []}}),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut actions = actions;
    while !actions[0]["title"]
        .as_str()
        .unwrap()
        .contains("turn eager builds off")
    {
        assert!(Instant::now() < deadline, "{actions:#}");
        std::thread::sleep(Duration::from_millis(50));
        actions = c.request(
            "textDocument/codeAction",
            json!({"textDocument": {"uri": uri},
                   "range": {"start": {"line": 0, "character": 0}, "end": {"line": 0, "character": 0}},
                   "context": {"diagnostics": []}}),
        );
    }
    let result = c.request(
        "workspace/executeCommand",
        json!({"command": "memobuild.eager", "arguments": [path, false]}),
    );
    assert_eq!(result["eager"], false);
    let status = d.ctl_json(&["status", ctx_path.to_str().unwrap()]);
    assert_eq!(status["projects"][0]["eager"], false, "{status:#}");
    // A Dockerfile no project builds: the command answers with an error.
    c.next_id += 1;
    let id = c.next_id;
    c.send(json!({"jsonrpc": "2.0", "id": id, "method": "workspace/executeCommand",
                  "params": {"command": "memobuild.eager", "arguments": ["/nonexistent/Dockerfile", true]}}));
    let reply = c.wait("the error reply", |m| m["id"] == id);
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no project"),
        "{reply:#}"
    );
    c.request("shutdown", Value::Null);
    c.notify("exit", Value::Null);
    assert!(c.child.wait().unwrap().success());
}
