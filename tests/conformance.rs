//! Conformance with Docker BuildKit: every case in tests/conformance/cases is
//! built by memobuild and compared with what BuildKit built from the same
//! Dockerfile and context (tests/conformance/expected, made by regenerate.sh):
//! the final filesystem (paths, types, modes, owners, link targets, contents)
//! and the image config. Cases BuildKit rejects must fail here too.

mod common;
use common::{fsdump, repo_root, Daemon};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn case_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(repo_root().join("tests/conformance/cases"))
        .expect("tests/conformance/cases")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn build_args(case: &Value) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(f) = case["dockerfile"].as_str() {
        args.extend(["-f".to_string(), f.to_string()]);
    }
    if let Some(t) = case["target"].as_str() {
        args.extend(["--target".to_string(), t.to_string()]);
    }
    if let Some(map) = case["build_args"].as_object() {
        for (k, v) in map {
            args.extend([
                "--build-arg".to_string(),
                format!("{k}={}", v.as_str().unwrap_or("")),
            ]);
        }
    }
    args
}

/// Cases where memobuild deliberately differs from the BuildKit in the oracle,
/// with the reason and a text memobuild's error must contain.
const DEVIATIONS: &[(&str, &str, &str)] = &[(
    "copy-multiple-sources-no-slash",
    "Docker's reference and the classic builder reject several sources with a destination \
     that does not end in /; this BuildKit silently keeps only the last source. We reject it.",
    "the destination must be a directory and end with a /",
)];

/// Builds one case; returns a description of the mismatch, if any.
fn check_case(d: &Daemon, name: &str, work: &Path) -> Option<String> {
    let root = repo_root().join("tests/conformance");
    let ctx = work.join(name);
    let prepared = Command::new("bash")
        .arg(root.join("prepare.sh"))
        .arg(root.join("cases").join(name))
        .arg(&ctx)
        .status()
        .expect("bash");
    assert!(prepared.success(), "prepare.sh failed for {name}");
    let case: Value = std::fs::read(root.join("cases").join(name).join("case.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let archive = work.join(format!("{name}.tar"));
    let mut args = build_args(&case);
    // -f is relative to the prepared context, as in the regenerate script.
    if let Some(pos) = args.iter().position(|a| a == "-f") {
        args[pos + 1] = ctx.join(&args[pos + 1]).display().to_string();
    }
    args.extend([
        "-o".to_string(),
        format!("type=oci,dest={}", archive.display()),
    ]);
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = d.build(&ctx, &arg_refs);
    if let Some((_, why, message)) = DEVIATIONS.iter().find(|(n, _, _)| *n == name) {
        let text = if outcome.success {
            String::new()
        } else {
            outcome.error().to_string()
        };
        return (!text.contains(message)).then(|| {
            format!(
                "{name}: expected the deliberate error {message:?} ({why}), got: {}",
                outcome.text()
            )
        });
    }
    let error_file = root.join("expected").join(format!("{name}.error.txt"));
    if error_file.exists() {
        return outcome.success.then(|| {
            format!(
                "{name}: BuildKit rejects this case ({}) but memobuild built it",
                std::fs::read_to_string(&error_file)
                    .unwrap_or_default()
                    .trim()
            )
        });
    }
    if !outcome.success {
        return Some(format!("{name}: memobuild failed: {}", outcome.text()));
    }
    let expected: Value = serde_json::from_slice(
        &std::fs::read(root.join("expected").join(format!("{name}.json")))
            .unwrap_or_else(|_| panic!("expected/{name}.json missing")),
    )
    .expect("expected JSON");
    let actual = fsdump(&archive);
    (actual != expected).then(|| {
        format!(
            "{name}: differs from BuildKit\n{}",
            diff(&expected, &actual)
        )
    })
}

/// A readable diff: entries only in one side, and changed values.
fn diff(expected: &Value, actual: &Value) -> String {
    let mut out = String::new();
    let files = |v: &Value| -> Vec<Value> { v["files"].as_array().cloned().unwrap_or_default() };
    let (e, a) = (files(expected), files(actual));
    for f in &e {
        if !a.contains(f) {
            let same_path = a.iter().find(|x| x["path"] == f["path"]);
            match same_path {
                Some(x) => out.push_str(&format!("  buildkit {f}\n  memobuild {x}\n")),
                None => out.push_str(&format!("  only in buildkit: {f}\n")),
            }
        }
    }
    for f in &a {
        if !e.iter().any(|x| x["path"] == f["path"]) {
            out.push_str(&format!("  only in memobuild: {f}\n"));
        }
    }
    if expected["config"] != actual["config"] {
        out.push_str(&format!(
            "  config buildkit:  {}\n  config memobuild: {}\n",
            expected["config"], actual["config"]
        ));
    }
    out
}

#[test]
fn memobuild_builds_what_buildkit_builds() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();
    let names = case_names();
    assert!(names.len() >= 20, "conformance cases missing");
    let failures: Vec<String> = names
        .iter()
        .filter_map(|n| check_case(&d, n, work.path()))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} conformance cases differ from BuildKit:\n\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}
