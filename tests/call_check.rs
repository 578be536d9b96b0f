//! `memobuild-ctl build --call=check` (and `--check`): BuildKit's lint rules
//! on the Dockerfile, nothing built, with BuildKit's rule names and messages
//! (the rules themselves are checked against BuildKit's own test cases in
//! tests/buildkit_lint.rs).

mod common;
use common::{write_files, Daemon};
use serde_json::Value;

#[test]
fn call_check_prints_buildkits_warnings_and_builds_nothing() {
    let d = Daemon::start();
    let ctx = tempfile::tempdir().unwrap();
    write_files(
        ctx.path(),
        &[
            (
                "Dockerfile",
                "FROM scratch as base\nWORKDIR app\nCOPY secret.txt /\nEXPOSE 80/TCP\n",
            ),
            ("secret.txt", "s"),
            (".dockerignore", "secret.txt\n"),
        ],
    );
    let c = ctx.path().to_str().unwrap();
    let out = d.ctl(&["build", "--call=check", c]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with("Check complete, 4 warnings have been found!"),
        "{text}"
    );
    for part in [
        "FromAsCasing - https://docs.docker.com/go/dockerfile/rule/from-as-casing/\n'as' and 'FROM' keywords' casing do not match\nDockerfile:1",
        "WorkdirRelativePath - https://docs.docker.com/go/dockerfile/rule/workdir-relative-path/\nRelative workdir \"app\" can have unexpected results if the base image changes\nDockerfile:2",
        "CopyIgnoredFile - https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/\nAttempting to Copy file \"secret.txt\" that is excluded by .dockerignore\nDockerfile:3",
        "ExposeProtoCasing - https://docs.docker.com/go/dockerfile/rule/expose-proto-casing/\nDefined protocol '80/TCP' in EXPOSE instruction should be lowercase\nDockerfile:4",
    ] {
        assert!(text.contains(part), "no {part:?} in:\n{text}");
    }
    // Nothing was built or registered.
    let status = d.ctl(&["status", "--json"]);
    let status: Value = serde_json::from_slice(&status.stdout).unwrap_or(Value::Null);
    assert!(
        status["projects"].as_array().is_none_or(|p| p.is_empty()),
        "{status:#}"
    );

    // JSON, and BuildKit's `check=error=true` directive.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "# check=error=true\nFROM scratch as base\nCOPY Dockerfile /\n",
    )
    .unwrap();
    let out = d.ctl(&["build", "--check", "--progress", "json", c]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["warnings"].as_array().unwrap().len(),
        1,
        "{report:#}"
    );
    assert_eq!(report["warnings"][0]["rule"], "FromAsCasing");
    assert_eq!(report["warnings"][0]["line"], 2);
    assert_eq!(
        report["error"],
        "lint violation found for rules: FromAsCasing"
    );

    // Clean: exit 0.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY Dockerfile /\n",
    )
    .unwrap();
    let out = d.ctl(&["build", "--call=check", c]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Check complete, no warnings found."
    );

    // A syntax error is the error it is for a build (file:line:col).
    std::fs::write(ctx.path().join("Dockerfile"), "FROM scratch\nBOGUS x\n").unwrap();
    let out = d.ctl(&["build", "--call=check", c]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Dockerfile:2:1") && err.contains("BOGUS"),
        "{err}"
    );
}

/// A normal build lists the Dockerfile's lint warnings when it ends, as
/// buildx does (a no-op rebuild too), `--progress json` carries them in the
/// `planned` event, and `# check=error=true` fails the build before any step
/// runs, with BuildKit's message.
#[test]
fn builds_list_lint_warnings_and_check_error_true_fails_them() {
    let d = Daemon::start();
    let ctx = tempfile::tempdir().unwrap();
    let dockerfile = "FROM scratch\nMAINTAINER me\nCOPY a /a\nENV X=$nope\n";
    write_files(ctx.path(), &[("Dockerfile", dockerfile), ("a", "a")]);
    let c = ctx.path().to_str().unwrap();
    let listed = " 2 warnings found (use `memobuild-ctl build --call=check` to expand):\n \
        - MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 2)\n \
        - UndefinedVar: Usage of undefined variable '$nope' (line 4)\n";
    for round in ["first build", "no-op rebuild"] {
        let out = d.ctl(&["build", "--progress", "plain", c]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{round}: {err}");
        assert!(err.ends_with(listed), "{round}: {err}");
    }
    let json = d.build(ctx.path(), &[]);
    assert!(json.success, "{}", json.text());
    let planned = json
        .events
        .iter()
        .find(|e| e["event"] == "planned")
        .unwrap();
    let rules: Vec<&str> = planned["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["rule"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["MaintainerDeprecated", "UndefinedVar"]);

    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("# check=error=true\n{dockerfile}"),
    )
    .unwrap();
    let failed = d.build(ctx.path(), &[]);
    assert!(!failed.success, "{}", failed.text());
    assert_eq!(
        failed.error()["message"],
        "lint violation found for rules: MaintainerDeprecated, UndefinedVar"
    );
    assert!(failed.executed().is_empty(), "{}", failed.text());
    // Skipping the rules (here by build arg, which replaces the directive) builds.
    let skipped = d.build(
        ctx.path(),
        &[
            "--build-arg",
            "BUILDKIT_DOCKERFILE_CHECK=skip=MaintainerDeprecated,UndefinedVar;error=true",
        ],
    );
    assert!(skipped.success, "{}", skipped.text());
}
