//! BuildKit's lint tests (frontend/dockerfile/dockerfile_check_test.go),
//! ported as data: tests/lint/buildkit_cases.json holds each case's
//! Dockerfile, .dockerignore, build args and the warnings BuildKit expects
//! (rule, message, line); tests/lint/extract_buildkit_cases.py regenerates it
//! from a BuildKit checkout. Every case runs here, except those listed in
//! `NOT_PORTED` with the reason.

use memobuild_context::dockerignore::DockerIgnore;
use serde_json::Value;
use std::collections::BTreeMap;

/// (test, case number) -> why the case is not checked.
const NOT_PORTED: &[(&str, u64, &str)] = &[
    (
        "testAllTargetUnmarshal",
        1,
        "UndefinedVar needs the variables a stage's base image defines: not checked",
    ),
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

#[test]
fn buildkit_lint_cases() {
    let data: Value = serde_json::from_str(include_str!("lint/buildkit_cases.json")).unwrap();
    let mut ran = 0;
    let mut failures = Vec::new();
    for case in data["cases"].as_array().unwrap() {
        let test = case["test"].as_str().unwrap();
        let number = case["case"].as_u64().unwrap();
        if case.get("skipped").is_some()
            || NOT_PORTED
                .iter()
                .any(|(t, n, _)| *t == test && *n == number)
        {
            continue;
        }
        let text = case["dockerfile"].as_str().unwrap();
        let ignore = match case.get("dockerignore").and_then(Value::as_str) {
            Some(t) => DockerIgnore::parse(t).unwrap(),
            None => DockerIgnore::empty(),
        };
        let args: BTreeMap<String, String> = case["build_args"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let df = match memobuild_dockerfile::parse(text, "Dockerfile") {
            Ok(df) => df,
            Err(e) => {
                failures.push(format!("{test} case {number}: {e}"));
                continue;
            }
        };
        let report = memobuild_plan::lint::lint(text, &df, "", &args, &ignore);
        let got: Vec<(u64, String, String)> = report
            .warnings
            .iter()
            .map(|w| (w.loc.line as u64, w.rule.name.to_string(), w.detail.clone()))
            .collect();
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
        // BuildKit's test sorts by line, then message.
        want.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
        if got != want {
            failures.push(format!(
                "{test} case {number}:\n{text}\n  want {want:#?}\n  got  {got:#?}"
            ));
        }
        let want_error = case.get("build_err").and_then(Value::as_str);
        if want_error.is_some_and(|e| e.starts_with("lint violation"))
            && report.error.as_deref() != want_error
        {
            failures.push(format!(
                "{test} case {number}: error {:?}, want {want_error:?}",
                report.error
            ));
        }
        ran += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(ran >= 60, "only {ran} cases ran");
    eprintln!("{ran} BuildKit lint cases pass");
}
