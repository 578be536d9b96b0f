//! Rendering build events: a line per step for people, a live display on a
//! terminal (`tty.rs`), a JSON object per event for scripts and editors
//! (`--progress json`).

use crate::tty::Tty;
use memobuild_proto::{BuildEvent, LintWarning, StepInfo};
use std::io::{IsTerminal, Write};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A line per step on stderr.
    Plain,
    /// The live display on stderr (a terminal).
    Tty,
    /// One JSON object per event on stdout (`json`) or stderr (`rawjson`).
    Json { stderr: bool },
    /// Nothing but the result.
    Quiet,
}

pub struct Printer {
    mode: Mode,
    /// Print the manifest digest on stdout when the build finishes.
    digest_on_stdout: bool,
    steps: Vec<StepInfo>,
    tty: Option<Tty>,
    /// The build's project id, added to every JSON event.
    project: String,
    /// The Dockerfile's lint warnings, listed when the build ends.
    warnings: Vec<LintWarning>,
}

/// Whether `auto` means the live display: stderr is a terminal that is not `dumb`.
pub fn auto_is_tty() -> bool {
    std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

impl Printer {
    /// `mode`: `auto`, `tty`, `plain`, `json`, `rawjson` or `quiet`.
    pub fn new(mode: &str, digest_on_stdout: bool) -> Printer {
        let mode = match mode {
            "json" => Mode::Json { stderr: false },
            "rawjson" => Mode::Json { stderr: true },
            "quiet" => Mode::Quiet,
            "tty" => Mode::Tty,
            "auto" if auto_is_tty() => Mode::Tty,
            _ => Mode::Plain,
        };
        let tty = (mode == Mode::Tty).then(|| {
            Tty::new(
                Instant::now(),
                crate::tty::color_wanted(),
                crate::tty::size(),
            )
        });
        Printer {
            mode,
            digest_on_stdout,
            steps: Vec::new(),
            tty,
            project: String::new(),
            warnings: Vec::new(),
        }
    }

    /// The build's project (from the daemon's event batches).
    pub fn set_project(&mut self, project: &str) {
        if self.project != project {
            self.project = project.to_string();
        }
    }

    pub fn note(&self, line: &str) {
        match self.mode {
            Mode::Json { .. } => self.json(&BuildEvent::Log {
                step: None,
                line: line.to_string(),
            }),
            Mode::Plain => eprintln!("{line}"),
            // After the build the display's last frame stays; notes go below it.
            Mode::Tty => eprintln!("{}", crate::tty::escape(line)),
            Mode::Quiet => {}
        }
    }

    /// Whether the live display wants redrawing on a timer.
    pub fn live(&self) -> bool {
        self.tty.as_ref().is_some_and(|t| !t.ended())
    }

    /// Redraws the live display (its timers move on).
    pub fn tick(&mut self) {
        if let Some(tty) = self.tty.as_mut() {
            let frame = tty.redraw(Instant::now());
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(frame.as_bytes());
            let _ = err.flush();
        }
    }

    /// Ctrl-C: the display's last frame shows the running steps cancelled.
    pub fn cancelled(&mut self) {
        if let Some(tty) = self.tty.as_mut() {
            if !tty.ended() {
                tty.cancel(Instant::now());
                self.tick();
            }
        }
    }

    fn json(&self, event: &BuildEvent) {
        let mut line = event.to_json();
        if let (Some(fields), false) = (line.as_object_mut(), self.project.is_empty()) {
            fields
                .entry("project")
                .or_insert_with(|| serde_json::Value::String(self.project.clone()));
        }
        match self.mode {
            Mode::Json { stderr: true } => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
            _ => {
                let _ = writeln!(std::io::stdout().lock(), "{line}");
            }
        }
    }

    pub fn event(&mut self, event: &BuildEvent) {
        if let BuildEvent::Planned { warnings, .. } = event {
            self.warnings = warnings.clone();
        }
        self.show(event);
        // As buildx: the Dockerfile's warnings after the build, failed or not.
        if matches!(
            event,
            BuildEvent::Finished { .. } | BuildEvent::Failed { .. }
        ) && matches!(self.mode, Mode::Plain | Mode::Tty)
        {
            if let Some(text) = warnings_text(&self.warnings) {
                eprint!("{text}");
            }
        }
    }

    fn show(&mut self, event: &BuildEvent) {
        match self.mode {
            Mode::Json { stderr: false } => return self.json(event),
            // stdout has the digest, as in plain mode.
            Mode::Json { stderr: true } | Mode::Quiet => {
                if self.mode != Mode::Quiet {
                    self.json(event);
                }
                if let (
                    BuildEvent::Finished {
                        manifest_digest, ..
                    },
                    true,
                ) = (event, self.digest_on_stdout)
                {
                    println!("{manifest_digest}");
                }
                return;
            }
            Mode::Plain => {}
            Mode::Tty => return self.tty_event(event),
        }
        match event {
            BuildEvent::Planned { steps, build, .. } => {
                // The id `memobuild-ctl logs` takes (once, though a build
                // that starts over is planned again).
                if self.steps.is_empty() {
                    eprintln!("build {build}");
                }
                self.steps = steps.clone()
            }
            BuildEvent::StepStarted { .. } => {}
            BuildEvent::StepCached { step } => eprintln!("{} CACHED", self.label(*step)),
            BuildEvent::StepDone { step, millis } => {
                eprintln!("{} DONE {:.2}s", self.label(*step), *millis as f64 / 1000.0)
            }
            BuildEvent::Log {
                step: Some(step),
                line,
            } => eprintln!("#{} {line}", step + 1),
            BuildEvent::Log { step: None, line } => eprintln!("{line}"),
            BuildEvent::Finished {
                manifest_digest,
                tags,
                millis,
                ..
            } => {
                for t in tags {
                    eprintln!("naming to {t}");
                }
                eprintln!("built in {:.2}s", *millis as f64 / 1000.0);
                if self.digest_on_stdout {
                    println!("{manifest_digest}");
                }
            }
            BuildEvent::Failed { .. } => {}
        }
    }

    fn tty_event(&mut self, event: &BuildEvent) {
        let Some(tty) = self.tty.as_mut() else { return };
        // A refusal before the build has nothing to show live: main prints it.
        if matches!(event, BuildEvent::Failed { .. }) && self.steps.is_empty() {
            return;
        }
        if let BuildEvent::Planned { steps, .. } = event {
            self.steps = steps.clone();
        }
        if tty.ended() {
            return;
        }
        tty.event(event, Instant::now());
        self.tick();
        if let BuildEvent::Finished {
            manifest_digest,
            tags,
            ..
        } = event
        {
            for t in tags {
                eprintln!("naming to {}", crate::tty::escape(t));
            }
            if self.digest_on_stdout {
                println!("{manifest_digest}");
            }
        }
    }

    fn label(&self, step: usize) -> String {
        match self.steps.get(step) {
            Some(_) => format!(
                "#{} {}",
                step + 1,
                crate::steplabel::label(&self.steps, step)
            ),
            None => format!("#{}", step + 1),
        }
    }
}

/// buildx's list of lint warnings at the end of a build (`docker build`
/// prints the same lines), or `None` when there are none.
fn warnings_text(warnings: &[LintWarning]) -> Option<String> {
    let mut text = match warnings.len() {
        0 => return None,
        1 => "\n 1 warning found (use `memobuild-ctl build --call=check` to expand):\n".to_string(),
        n => format!("\n {n} warnings found (use `memobuild-ctl build --call=check` to expand):\n"),
    };
    for w in warnings {
        // Rule and message come from the Dockerfile's text: no control characters.
        let (rule, detail) = (crate::tty::escape(&w.rule), crate::tty::escape(&w.detail));
        text.push_str(&format!(" - {rule}: {detail} (line {})\n", w.line));
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warning(rule: &str, detail: &str, line: usize) -> LintWarning {
        LintWarning {
            rule: rule.into(),
            description: String::new(),
            url: String::new(),
            detail: detail.into(),
            line,
            column: 1,
        }
    }

    #[test]
    fn warnings_are_listed_as_buildx_lists_them() {
        assert_eq!(warnings_text(&[]), None);
        let one = [warning(
            "MaintainerDeprecated",
            "Maintainer instruction is deprecated in favor of using label",
            3,
        )];
        assert_eq!(
            warnings_text(&one).unwrap(),
            "\n 1 warning found (use `memobuild-ctl build --call=check` to expand):\n \
             - MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 3)\n"
        );
        let two = [warning("A", "a", 1), warning("B", "b", 2)];
        let text = warnings_text(&two).unwrap();
        assert!(text.starts_with("\n 2 warnings found"), "{text}");
        assert!(
            text.ends_with(" - A: a (line 1)\n - B: b (line 2)\n"),
            "{text}"
        );
    }
}
