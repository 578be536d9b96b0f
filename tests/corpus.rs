//! Malformed Dockerfiles through the daemon (issue 14): the 300 of
//! tests/corpus/generated (made by tests/corpus/generate.py) and the
//! hand-written ones of tests/corpus/nasty. Each builds or fails with an error
//! that says where (`Dockerfile:LINE:COL`), within 10 s; the daemon never
//! panics and keeps serving. Builds use `--pull never`: no registry is asked.

mod common;
use common::Daemon;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(10);

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "Dockerfile"))
        .collect();
    out.sort();
    out
}

/// `Dockerfile:` followed by `LINE:COL`.
fn located(text: &str) -> bool {
    text.match_indices("Dockerfile:").any(|(i, m)| {
        let rest = &text[i + m.len()..];
        let line: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let after = &rest[line.len()..];
        !line.is_empty()
            && after.starts_with(':')
            && after[1..].starts_with(|c: char| c.is_ascii_digit())
    })
}

/// Errors that cannot point into the file: it is not text, or has nothing in it.
fn whole_file_error(text: &str) -> bool {
    text.contains("is not UTF-8 text") || text.contains("dockerfile contains no stages")
}

#[test]
fn malformed_dockerfiles_give_located_errors_fast_and_never_crash_the_daemon() {
    let generated = files("generated");
    let nasty = files("nasty");
    assert!(
        generated.len() >= 300,
        "{} generated files",
        generated.len()
    );
    let d = Daemon::start();
    let pid = d.pid().expect("pid");
    let (mut built, mut failed, mut slowest) = (0, 0, Duration::ZERO);
    let mut problems = Vec::new();
    for file in generated.iter().chain(&nasty) {
        let ctx = tempfile::tempdir().expect("tempdir");
        std::fs::copy(file, ctx.path().join("Dockerfile")).expect("copy");
        let started = Instant::now();
        let out = d.build(ctx.path(), &["--pull=never"]);
        let took = started.elapsed();
        slowest = slowest.max(took);
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if took > LIMIT {
            problems.push(format!("{name}: took {took:?}"));
        }
        if out.success {
            built += 1;
        } else {
            failed += 1;
            // With --progress json the error is an event on stdout.
            let text = out.text();
            if !located(&text) && !whole_file_error(&text) {
                problems.push(format!(
                    "{name}: error without Dockerfile:LINE:COL: {}",
                    text.trim()
                ));
            }
            if text.contains("lost the connection") || text.contains("internal error") {
                problems.push(format!("{name}: {}", text.trim()));
            }
        }
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "the daemon died on {name}\n{}",
            d.log()
        );
    }
    let log = d.log();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    eprintln!("corpus: {built} built, {failed} failed with located errors, slowest {slowest:?}");
    // Still serving.
    let ok = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        ok.path().join("Dockerfile"),
        "FROM scratch\nCOPY Dockerfile /\n",
    )
    .unwrap();
    d.build_ok(ok.path(), &[]);
}
