//! BuildKit's lint tests (frontend/dockerfile/dockerfile_check_test.go),
//! ported as data: tests/lint/buildkit_cases.json holds each case's
//! Dockerfile, .dockerignore, build args and the warnings BuildKit expects
//! (rule, message, line); tests/lint/extract_buildkit_cases.py regenerates it
//! from a BuildKit checkout. Every case runs here, except those listed in
//! `NOT_PORTED` with the reason.

mod common;
use memobuild_context::dockerignore::DockerIgnore;
use serde_json::Value;
use std::collections::BTreeMap;

/// (test, case number) -> why the case is not checked.
const NOT_PORTED: &[(&str, u64, &str)] = &[
    (
        "testDuplicateStageName",
        1,
        "memobuild's parser refuses a duplicate stage name (an error at its line, which the \
         LSP and `--call=check` show) where BuildKit warns and builds",
    ),
    (
        "testWarningsBeforeError",
        1,
        "a syntax error fails the parse before any rule runs: the LSP shows the error instead",
    ),
];

/// Rules only a plan checks (base images, variable values): their cases run
/// through the daemon ([`buildkit_lint_cases_through_the_daemon`]).
const PLANNED_RULES: &[&str] = &["UndefinedVar", "InvalidBaseImagePlatform"];

/// The cases that run: not skipped by the extraction, not in `NOT_PORTED`.
fn cases() -> Vec<Value> {
    let data: Value = serde_json::from_str(include_str!("lint/buildkit_cases.json")).unwrap();
    data["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|case| {
            let (test, number) = (
                case["test"].as_str().unwrap(),
                case["case"].as_u64().unwrap(),
            );
            case.get("skipped").is_none()
                && !NOT_PORTED
                    .iter()
                    .any(|(t, n, _)| *t == test && *n == number)
        })
        .cloned()
        .collect()
}

/// What a case expects: (line, rule, detail) sorted as BuildKit's test
/// sorts them (by line, then message), and the build error, if any.
fn expected(case: &Value) -> Vec<(u64, String, String)> {
    let mut want: Vec<(u64, String, String)> = case["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["line"].as_u64().unwrap(),
                w["rule"].as_str().unwrap().to_string(),
                w["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    want.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
    want
}

/// BuildKit's `lint violation found for rules: ...`, when the case fails so.
fn expected_violation(case: &Value) -> Option<&str> {
    case.get("build_err")
        .and_then(Value::as_str)
        .filter(|e| e.starts_with("lint violation"))
}

fn build_args(case: &Value) -> BTreeMap<String, String> {
    case["build_args"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Adds to `failures` where `got` (line, rule, message) and `error` differ
/// from what `case` expects.
fn compare(
    case: &Value,
    got: Vec<(u64, String, String)>,
    error: Option<&str>,
    failures: &mut Vec<String>,
) {
    let (test, number) = (
        case["test"].as_str().unwrap(),
        case["case"].as_u64().unwrap(),
    );
    let want = expected(case);
    if got != want {
        let text = case["dockerfile"].as_str().unwrap();
        failures.push(format!(
            "{test} case {number}:\n{text}\n  want {want:#?}\n  got  {got:#?}"
        ));
    }
    let want_error = expected_violation(case);
    if want_error.is_some() && error != want_error {
        failures.push(format!(
            "{test} case {number}: error {error:?}, want {want_error:?}"
        ));
    }
}

#[test]
fn buildkit_lint_cases() {
    let mut ran = 0;
    let mut failures = Vec::new();
    for case in cases() {
        let test = case["test"].as_str().unwrap();
        let number = case["case"].as_u64().unwrap();
        let want = expected(&case);
        if want
            .iter()
            .any(|(_, rule, _)| PLANNED_RULES.contains(&rule.as_str()))
        {
            continue;
        }
        let text = case["dockerfile"].as_str().unwrap();
        let ignore = match case.get("dockerignore").and_then(Value::as_str) {
            Some(t) => DockerIgnore::parse(t).unwrap(),
            None => DockerIgnore::empty(),
        };
        let df = match memobuild_dockerfile::parse(text, "Dockerfile") {
            Ok(df) => df,
            Err(e) => {
                failures.push(format!("{test} case {number}: {e}"));
                continue;
            }
        };
        let report = memobuild_plan::lint::lint(text, &df, "", &build_args(&case), &ignore, &[]);
        let got: Vec<(u64, String, String)> = report
            .warnings
            .iter()
            .map(|w| (w.loc.line as u64, w.rule.name.to_string(), w.detail.clone()))
            .collect();
        compare(&case, got, report.error.as_deref(), &mut failures);
        ran += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(ran >= 70, "only {ran} cases ran");
    eprintln!("{ran} BuildKit lint cases pass");
}

/// Every case again, as `memobuild-ctl build --call=check` runs it: the
/// daemon plans the Dockerfile in its context (`FROM alpine` and `FROM
/// busybox` name a stand-in with the official image's PATH), so the rules
/// that need a plan are checked too. A Dockerfile that cannot be planned
/// (an image not in the store) is linted without them.
#[test]
fn buildkit_lint_cases_through_the_daemon() {
    let d = common::Daemon::start();
    let work = tempfile::tempdir().unwrap();
    common::stand_in_images(&d, work.path(), &["busybox:latest", "alpine:latest"]);
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in cases() {
        let test = case["test"].as_str().unwrap();
        let number = case["case"].as_u64().unwrap();
        let ctx = work.path().join(format!("{test}-{number}"));
        std::fs::create_dir_all(&ctx).unwrap();
        let text = case["dockerfile"].as_str().unwrap();
        std::fs::write(ctx.join("Dockerfile"), text).unwrap();
        if let Some(ignore) = case.get("dockerignore").and_then(Value::as_str) {
            std::fs::write(ctx.join(".dockerignore"), ignore).unwrap();
        }
        let mut args = vec![
            "build".to_string(),
            "--call=check".into(),
            "--progress".into(),
            "json".into(),
        ];
        for (k, v) in build_args(&case) {
            args.push("--build-arg".into());
            args.push(format!("{k}={v}"));
        }
        args.push(ctx.to_str().unwrap().to_string());
        let out = d.ctl(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let Ok(report) = serde_json::from_slice::<Value>(&out.stdout) else {
            failures.push(format!(
                "{test} case {number}: no report: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
            continue;
        };
        let got: Vec<(u64, String, String)> = report["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| {
                (
                    w["line"].as_u64().unwrap_or(0),
                    w["rule"].as_str().unwrap_or("").to_string(),
                    w["detail"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        compare(&case, got, report["error"].as_str(), &mut failures);
        ran += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(ran >= 80, "only {ran} cases ran");
    eprintln!("{ran} BuildKit lint cases pass through the daemon");
}

/// testBaseImagePlatformMismatch (computed in Go, ported by hand): a base
/// image made for another platform than the build's gets
/// `InvalidBaseImagePlatform` at its FROM. BuildKit pushes an image built
/// for the other architecture; here the stand-in's config is rewritten to
/// name it and imported.
#[test]
fn test_base_image_platform_mismatch() {
    use sha2::{Digest, Sha256};
    let d = common::Daemon::start();
    let work = tempfile::tempdir().unwrap();
    common::write_files(
        &work.path().join("base"),
        &[
            ("Dockerfile", "FROM scratch\nCOPY foo /foo\n"),
            ("foo", "test"),
        ],
    );
    let layout = work.path().join("layout");
    d.build_ok(
        &work.path().join("base"),
        &["-o", &format!("type=oci-layout,dest={}", layout.display())],
    );
    let host = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let other = if host == "arm64" { "amd64" } else { "arm64" };
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let write_blob = |bytes: &[u8]| -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        std::fs::write(blob(&digest), bytes).unwrap();
        digest
    };
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(blob(&manifest_digest)).unwrap()).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(blob(&config_digest)).unwrap()).unwrap();
    assert_eq!(config["architecture"], host, "{config:#}");
    config["architecture"] = other.into();
    let config = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = write_blob(&config).into();
    manifest["config"]["size"] = config.len().into();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    index["manifests"][0]["digest"] = write_blob(&manifest).into();
    index["manifests"][0]["size"] = manifest.len().into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let archive = work.path().join("other.tar");
    let tar = std::process::Command::new("tar")
        .args([
            "-C",
            layout.to_str().unwrap(),
            "-cf",
            archive.to_str().unwrap(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(tar.success());
    let target = "localhost/buildkit/testbaseimageplatform:latest";
    let out = d.ctl(&[
        "image",
        "import",
        "--name",
        target,
        archive.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ctx = work.path().join("check");
    common::write_files(
        &ctx,
        &[("Dockerfile", &format!("\nFROM {target}\nENV foo=bar\n\t"))],
    );
    let out = d.ctl(&[
        "build",
        "--call=check",
        "--progress",
        "json",
        ctx.to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let warnings = report["warnings"].as_array().cloned().unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{report:#}");
    assert_eq!(warnings[0]["rule"], "InvalidBaseImagePlatform");
    assert_eq!(
        warnings[0]["detail"],
        format!("Base image {target} was pulled with platform \"linux/{other}\", expected \"linux/{host}\" for current build")
    );
    assert_eq!(warnings[0]["line"], 2);
}
