//! Rendering build events: a line per step for people, a JSON object per event
//! for scripts and editors (`--progress json`).

use memobuild_proto::{BuildEvent, StepInfo};
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A line per step on stderr.
    Plain,
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
}

impl Printer {
    /// `mode`: `auto`/`plain`, `json`, `rawjson` or `quiet`.
    pub fn new(mode: &str, digest_on_stdout: bool) -> Printer {
        let mode = match mode {
            "json" => Mode::Json { stderr: false },
            "rawjson" => Mode::Json { stderr: true },
            "quiet" => Mode::Quiet,
            _ => Mode::Plain,
        };
        Printer {
            mode,
            digest_on_stdout,
            steps: Vec::new(),
        }
    }

    pub fn note(&self, line: &str) {
        match self.mode {
            Mode::Json { .. } => self.json(&BuildEvent::Log {
                step: None,
                line: line.to_string(),
            }),
            Mode::Plain => eprintln!("{line}"),
            Mode::Quiet => {}
        }
    }

    fn json(&self, event: &BuildEvent) {
        let line = event.to_json();
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
        }
        match event {
            BuildEvent::Planned { steps, build } => {
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

    fn label(&self, step: usize) -> String {
        match self.steps.get(step) {
            Some(s) => {
                let in_stage: Vec<&StepInfo> =
                    self.steps.iter().filter(|x| x.stage == s.stage).collect();
                let pos = in_stage.iter().position(|x| x.index == step).unwrap_or(0) + 1;
                format!(
                    "#{} [{} {}/{}] {}",
                    step + 1,
                    s.stage,
                    pos,
                    in_stage.len(),
                    s.instruction
                )
            }
            None => format!("#{}", step + 1),
        }
    }
}
