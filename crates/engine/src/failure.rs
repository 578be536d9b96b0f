//! A failed build as data (issue 13): which step failed, where in the
//! Dockerfile, with what exit code and last output lines, for `status`,
//! `explain` and the `failed` event. Every field is a single line and the
//! file is an absolute, normalized path, so editors can use them as they are.

use crate::project::{first_line, StepSummary};
use memobuild_proto::paths::normalize;
use memobuild_proto::{FailureInfo, RpcError};
use std::path::Path;

/// What the step that failed a build left behind (noted in its build log).
#[derive(Debug, Clone, Default)]
pub(crate) struct FailedStep {
    pub step: usize,
    /// A RUN's exit code, when it exited non-zero.
    pub exit_code: Option<i32>,
    /// A RUN's last output lines.
    pub output: Vec<String>,
}

/// `error` of a build of `dockerfile`, with the step that failed (if noted)
/// among the build's `planned` steps.
pub(crate) fn failure_info(
    error: &RpcError,
    dockerfile: &Path,
    failed: Option<&FailedStep>,
    planned: Option<&[StepSummary]>,
) -> FailureInfo {
    let step = failed.map(|f| f.step);
    let (line, column) = match (&error.location, step.and_then(|i| planned?.get(i))) {
        (Some(at), _) => (at.line, at.column),
        (None, Some(s)) => (s.line, 1),
        (None, None) => (0, 0),
    };
    // The message without the `FILE:LINE:COL: ` its text starts with.
    let mut message = first_line(&error.message);
    if let Some(at) = &error.location {
        let prefix = format!("{}:{}:{}: ", at.file, at.line, at.column);
        if let Some(rest) = message.strip_prefix(&prefix) {
            message = rest.to_string();
        }
    }
    FailureInfo {
        kind: error.kind,
        step,
        file: absolute(dockerfile),
        line,
        column,
        message,
        exit_code: failed.and_then(|f| f.exit_code),
        output: failed
            .map(|f| f.output.iter().map(|l| one_line(l)).collect())
            .unwrap_or_default(),
    }
}

/// The steps of a failed build: the planned ones, each marked cached, failed
/// or not built. `finished[i]`: step `i` came from the cache or ran.
pub(crate) fn failed_build_steps(
    mut planned: Vec<StepSummary>,
    cached: &[bool],
    finished: &[bool],
    failure: &FailureInfo,
) -> Vec<StepSummary> {
    for (i, s) in planned.iter_mut().enumerate() {
        s.cached = cached.get(i).copied().unwrap_or(false);
        if failure.step == Some(i) {
            s.failure = Some(failure.clone());
        } else if !finished.get(i).copied().unwrap_or(false) {
            s.not_built = true;
        }
    }
    planned
}

fn absolute(path: &Path) -> String {
    let path = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    normalize(&path).display().to_string()
}

/// A line of output without control characters that break a line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use memobuild_proto::{ErrorKind, Location};

    #[test]
    fn the_message_loses_its_location_prefix_and_stays_one_line() {
        let error = RpcError::of(
            ErrorKind::StepFailed,
            "sub/../Dockerfile:4:1: RUN false failed: exit code 1\nlast output:\nboom",
        )
        .at(Location {
            file: "sub/../Dockerfile".into(),
            line: 4,
            column: 1,
        });
        let failed = FailedStep {
            step: 2,
            exit_code: Some(1),
            output: vec!["boom\r".into()],
        };
        let f = failure_info(
            &error,
            Path::new("/ctx/sub/../Dockerfile"),
            Some(&failed),
            None,
        );
        assert_eq!(f.message, "RUN false failed: exit code 1");
        assert_eq!(f.file, "/ctx/Dockerfile");
        assert_eq!(
            (f.step, f.line, f.column, f.exit_code),
            (Some(2), 4, 1, Some(1))
        );
        assert_eq!(f.output, vec!["boom ".to_string()]);
    }
}
