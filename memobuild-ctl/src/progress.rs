//! Rendering build events: a line per step for people, a JSON object per event
//! for scripts and editors (`--progress json`).

use memobuild_proto::{BuildEvent, StepInfo};
use std::io::Write;

pub struct Printer {
    json: bool,
    steps: Vec<StepInfo>,
}

impl Printer {
    pub fn new(mode: &str) -> Printer {
        Printer {
            json: mode == "json",
            steps: Vec::new(),
        }
    }

    pub fn note(&self, line: &str) {
        if self.json {
            let event = BuildEvent::Log {
                step: None,
                line: line.to_string(),
            };
            println!("{}", event.to_json());
        } else {
            eprintln!("{line}");
        }
    }

    pub fn event(&mut self, event: &BuildEvent) {
        if self.json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", event.to_json());
            return;
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
                println!("{manifest_digest}");
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
