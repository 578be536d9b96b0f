//! `memobuild-ctl logs` (one build's persisted log) and `memobuild-ctl
//! metrics` (the daemon's Prometheus metrics).

use crate::connect;
use memobuild_proto::{BuildEvent, BuildLogReport, BuildLogState, RpcError, StepInfo};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

/// Prints the log of `build` (an id, `last`, or a project id / context path).
pub async fn logs(socket: &Path, build: &str, json: bool) -> Result<ExitCode, RpcError> {
    let client = connect::connect(socket, false).await?;
    // A directory is named by its absolute path, as `build` registered it.
    let which = match std::fs::canonicalize(build) {
        Ok(p) if Path::new(build).is_dir() && build != "last" && build.parse::<u64>().is_err() => {
            p.display().to_string()
        }
        _ => build.to_string(),
    };
    let report = client
        .build_log(connect::ctx(), which)
        .await
        .map_err(connect::rpc_failed)??;
    let mut out = std::io::stdout().lock();
    let written = if json {
        writeln!(out, "{}", report_json(&report))
    } else {
        write_text(&mut out, &report)
    };
    // A closed pipe (`| head`) is not an error worth a message.
    let _ = written;
    Ok(ExitCode::SUCCESS)
}

/// Prints the daemon's metrics in the Prometheus text format.
pub async fn metrics(socket: &Path) -> Result<ExitCode, RpcError> {
    let client = connect::connect(socket, false).await?;
    let text = client
        .metrics(connect::ctx())
        .await
        .map_err(connect::rpc_failed)??;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    Ok(ExitCode::SUCCESS)
}

/// The stable `logs --json` schema (docs/CLI.md): the report, with each entry
/// as a flat event object (as `--progress json`) plus `at_ms`.
fn report_json(report: &BuildLogReport) -> serde_json::Value {
    let entries: Vec<serde_json::Value> = report
        .entries
        .iter()
        .map(|e| {
            let mut v = e.event.to_json();
            if let serde_json::Value::Object(m) = &mut v {
                m.insert("at_ms".into(), e.at_ms.into());
            }
            v
        })
        .collect();
    serde_json::json!({
        "build": report.build,
        "project": report.project,
        "context": report.context,
        "dockerfile": report.dockerfile,
        "target": report.target,
        "started_at_ms": report.started_at_ms,
        "state": report.state,
        "entries": entries,
    })
}

fn write_text(out: &mut impl Write, report: &BuildLogReport) -> std::io::Result<()> {
    let dockerfile = match report.dockerfile.as_str() {
        "" => "Dockerfile",
        f => f,
    };
    let target = match report.target.as_str() {
        "" => String::new(),
        t => format!(", target {t}"),
    };
    writeln!(
        out,
        "build {} of {} ({dockerfile}{target}), started {}",
        report.build,
        report.context,
        utc(report.started_at_ms)
    )?;
    let mut steps: Vec<StepInfo> = Vec::new();
    // Steps that never reported CACHED or DONE (failed, cancelled, cut short)
    // show their start, so every step the build reached is in the log.
    let ended: BTreeSet<usize> = report
        .entries
        .iter()
        .filter_map(|e| match e.event {
            BuildEvent::StepCached { step } | BuildEvent::StepDone { step, .. } => Some(step),
            _ => None,
        })
        .collect();
    for entry in &report.entries {
        let at = format!(
            "{:>8.2}s",
            (entry.at_ms - report.started_at_ms) as f64 / 1000.0
        );
        match &entry.event {
            BuildEvent::Planned { steps: s, .. } => steps = s.clone(),
            BuildEvent::StepStarted { step } if !ended.contains(step) => {
                writeln!(out, "{at} {} STARTED", label(&steps, *step))?
            }
            BuildEvent::StepStarted { .. } => {}
            BuildEvent::StepCached { step } => {
                writeln!(out, "{at} {} CACHED", label(&steps, *step))?
            }
            BuildEvent::StepDone { step, millis } => writeln!(
                out,
                "{at} {} DONE {:.2}s",
                label(&steps, *step),
                *millis as f64 / 1000.0
            )?,
            BuildEvent::Log {
                step: Some(step),
                line,
            } => writeln!(out, "{at} #{} {line}", step + 1)?,
            BuildEvent::Log { step: None, line } => writeln!(out, "{at} {line}")?,
            BuildEvent::Finished {
                manifest_digest,
                tags,
                millis,
                ..
            } => {
                for t in tags {
                    writeln!(out, "{at} naming to {t}")?;
                }
                writeln!(
                    out,
                    "{at} FINISHED {manifest_digest} in {:.2}s",
                    *millis as f64 / 1000.0
                )?;
            }
            BuildEvent::Failed { error, .. } => {
                writeln!(out, "{at} FAILED: {}", error.message)?;
                if let Some(hint) = &error.hint {
                    writeln!(out, "{at} hint: {hint}")?;
                }
            }
        }
    }
    match report.state {
        BuildLogState::Running => writeln!(out, "(the build is still running)"),
        BuildLogState::Interrupted => {
            writeln!(out, "(the daemon stopped before this build ended)")
        }
        _ => Ok(()),
    }
}

/// `#3 [stage 2/4] COPY a /b`, as the build's plain progress shows it.
fn label(steps: &[StepInfo], step: usize) -> String {
    match steps.get(step) {
        Some(_) => format!("#{} {}", step + 1, crate::steplabel::label(steps, step)),
        None => format!("#{}", step + 1),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC`. humantime formats years
/// 1970 to 9999 only, so times outside print as the nearest end.
fn utc(ms: i64) -> String {
    /// The last millisecond of 9999-12-31.
    const LAST_MS: u64 = 253_402_300_799_999;
    let after_epoch = Duration::from_millis(u64::try_from(ms).unwrap_or(0).min(LAST_MS));
    let rfc3339 = humantime::format_rfc3339_seconds(UNIX_EPOCH + after_epoch).to_string();
    // `2023-11-14T22:13:20Z`
    let rfc3339 = rfc3339.strip_suffix('Z').unwrap_or(&rfc3339);
    format!("{} UTC", rfc3339.replacen('T', " ", 1))
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_unix_millis() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(1_700_000_000_123), "2023-11-14 22:13:20 UTC");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::utc(253_402_300_799_999), "9999-12-31 23:59:59 UTC");
        assert_eq!(super::utc(-1), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(i64::MAX), "9999-12-31 23:59:59 UTC");
    }
}
