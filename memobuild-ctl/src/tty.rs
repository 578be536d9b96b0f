//! The live progress display (`--progress tty`, and `auto` when stderr is a
//! terminal), shaped like `docker buildx build`'s: a header with the elapsed
//! time and how many steps are complete, one line per step that has started
//! (`=> [stage 2/5] RUN make   1.2s`), the last output lines of each running
//! step under it, runs of cached steps collapsed into one line, and a final
//! frame that stays on the screen when the build ends.
//!
//! The renderer is pure: events and an `Instant` go in, frames (lists of lines)
//! come out, so tests check frames without a terminal. [`Tty::redraw`] adds the
//! cursor movement that replaces the previous frame.

use memobuild_proto::{BuildEvent, StepInfo};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many output lines of a running step stay visible (as buildx).
pub const LOG_LINES: usize = 6;

const BLUE: &str = "\x1b[34m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const GREY: &str = "\x1b[90m";
const RESET: &str = "\x1b[0m";

#[derive(Debug, Clone, PartialEq)]
enum State {
    Pending,
    Running(Instant),
    Cached,
    Done(Duration),
    /// Running when the build failed or was cancelled; how long it had run.
    Error(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Finished,
    Failed,
    Canceled,
}

pub struct Tty {
    start: Instant,
    steps: Vec<StepInfo>,
    states: Vec<State>,
    logs: Vec<VecDeque<String>>,
    /// Lines not tied to a step (warnings, registry notes).
    notes: Vec<String>,
    end: Option<(End, Duration)>,
    color: bool,
    width: usize,
    height: usize,
    /// Lines of the frame last drawn (the cursor is below them).
    drawn: usize,
}

impl Tty {
    pub fn new(start: Instant, color: bool, (width, height): (usize, usize)) -> Tty {
        Tty {
            start,
            steps: Vec::new(),
            states: Vec::new(),
            logs: Vec::new(),
            notes: Vec::new(),
            end: None,
            color,
            width: width.max(20),
            height: height.max(4),
            drawn: 0,
        }
    }

    /// Whether the build has ended (the last frame is drawn for good).
    pub fn ended(&self) -> bool {
        self.end.is_some()
    }

    pub fn event(&mut self, event: &BuildEvent, now: Instant) {
        match event {
            BuildEvent::Planned { steps, .. } => {
                // A build that starts over (planned again) keeps what it knew.
                if steps.len() != self.steps.len() {
                    self.states = vec![State::Pending; steps.len()];
                    self.logs = vec![VecDeque::new(); steps.len()];
                }
                self.steps = steps.clone();
            }
            BuildEvent::StepStarted { step } => self.set(*step, State::Running(now)),
            BuildEvent::StepCached { step } => self.set(*step, State::Cached),
            BuildEvent::StepDone { step, millis } => {
                self.set(*step, State::Done(Duration::from_millis(*millis)))
            }
            BuildEvent::Log {
                step: Some(step),
                line,
            } => {
                if let Some(log) = self.logs.get_mut(*step) {
                    if log.len() == LOG_LINES {
                        log.pop_front();
                    }
                    log.push_back(escape(line));
                }
            }
            BuildEvent::Log { step: None, line } => self.notes.push(escape(line)),
            BuildEvent::Finished { millis, .. } => {
                self.end = Some((End::Finished, Duration::from_millis(*millis)))
            }
            BuildEvent::Failed { .. } => self.stop(End::Failed, now),
        }
    }

    /// Ctrl-C: running steps are shown as cancelled.
    pub fn cancel(&mut self, now: Instant) {
        self.stop(End::Canceled, now);
    }

    fn stop(&mut self, end: End, now: Instant) {
        for s in &mut self.states {
            if let State::Running(t) = s {
                *s = State::Error(now.saturating_duration_since(*t));
            }
        }
        self.end = Some((end, now.saturating_duration_since(self.start)));
    }

    fn set(&mut self, step: usize, state: State) {
        if let Some(s) = self.states.get_mut(step) {
            *s = state;
        }
    }

    /// The frame at `now`: one string per terminal line, each at most `width`
    /// columns, with colours when enabled.
    pub fn frame(&self, now: Instant) -> Vec<String> {
        let complete = self
            .states
            .iter()
            .filter(|s| matches!(s, State::Cached | State::Done(_)))
            .count();
        let (elapsed, suffix) = match self.end {
            None => (now.saturating_duration_since(self.start), ""),
            Some((End::Finished, d)) => (d, " FINISHED"),
            Some((End::Failed, d)) => (d, " FAILED"),
            Some((End::Canceled, d)) => (d, " CANCELED"),
        };
        let header = format!(
            "[+] Building {:.1}s ({complete}/{}){suffix}",
            elapsed.as_secs_f64(),
            self.steps.len()
        );
        let header_color = match self.end {
            Some((End::Finished, _)) => Some(BLUE),
            Some(_) => Some(RED),
            None => None,
        };
        let mut body: Vec<String> = Vec::new();
        let mut stage_seen: Vec<&str> = Vec::new();
        let mut i = 0;
        while i < self.steps.len() {
            let step = &self.steps[i];
            if self.states[i] == State::Pending {
                i += 1;
                continue;
            }
            let (stage, pos, total, from) = self.place(i);
            if !stage_seen.contains(&step.stage.as_str()) {
                stage_seen.push(&step.stage);
                if let Some(from) = from {
                    body.push(self.line(
                        &format!(" => [{stage} 1/{total}] {}", escape(from)),
                        "",
                        Some(BLUE),
                    ));
                }
            }
            match &self.states[i] {
                State::Cached => {
                    // A run of cached steps of one stage is one line.
                    let mut j = i + 1;
                    while j < self.steps.len()
                        && self.states[j] == State::Cached
                        && self.steps[j].stage == step.stage
                    {
                        j += 1;
                    }
                    let text = if j - i == 1 {
                        format!(
                            " => CACHED [{stage} {pos}/{total}] {}",
                            escape(&step.instruction)
                        )
                    } else {
                        format!(
                            " => CACHED [{stage} {pos}-{}/{total}] {} steps",
                            pos + (j - i) - 1,
                            j - i
                        )
                    };
                    body.push(self.line(&text, "", Some(BLUE)));
                    i = j;
                    continue;
                }
                state => {
                    let text = format!(" => [{stage} {pos}/{total}] {}", escape(&step.instruction));
                    let (time, color) = match state {
                        State::Running(t) => (now.saturating_duration_since(*t), None),
                        State::Done(d) => (*d, Some(BLUE)),
                        State::Error(d) => (*d, Some(RED)),
                        State::Pending | State::Cached => (Duration::ZERO, None),
                    };
                    let label = match state {
                        State::Error(_) if matches!(self.end, Some((End::Canceled, _))) => {
                            " CANCELED"
                        }
                        State::Error(_) => " ERROR",
                        _ => "",
                    };
                    body.push(self.line(
                        &text,
                        &format!("{:.1}s{label}", time.as_secs_f64()),
                        color,
                    ));
                    // Output of running and failed steps; finished ones fold away.
                    if matches!(state, State::Running(_) | State::Error(_)) {
                        for l in &self.logs[i] {
                            body.push(self.line(&format!(" => => # {l}"), "", Some(GREY)));
                        }
                    }
                }
            }
            i += 1;
        }
        for n in &self.notes {
            let color = n.starts_with("warning").then_some(YELLOW);
            body.push(self.line(n, "", color));
        }
        // While running, keep the newest lines when the frame is taller than
        // the terminal (the final frame is printed whole).
        if self.end.is_none() && body.len() + 1 >= self.height {
            let keep = self.height - 2;
            body.drain(..body.len() - keep);
        }
        let mut lines = vec![self.paint(&fit(&header, self.width - 1), header_color)];
        lines.extend(body);
        lines
    }

    /// The escape sequences that replace the last frame by the frame at `now`.
    pub fn redraw(&mut self, now: Instant) -> String {
        let lines = self.frame(now);
        let mut out = String::new();
        if self.drawn > 0 {
            // To the first column of the frame's first line.
            out.push_str(&format!("\x1b[{}F", self.drawn));
        }
        for l in &lines {
            out.push_str(l);
            out.push_str("\x1b[K\n");
        }
        // Whatever the old frame had below the new one.
        out.push_str("\x1b[J");
        self.drawn = if self.ended() { 0 } else { lines.len() };
        out
    }

    /// (stage name as Docker prints it, position with FROM as 1, steps in
    /// the stage counting FROM, the stage's FROM).
    fn place(&self, step: usize) -> (String, usize, usize, Option<&str>) {
        let s = &self.steps[step];
        let in_stage: Vec<&StepInfo> = self.steps.iter().filter(|x| x.stage == s.stage).collect();
        let pos = in_stage.iter().position(|x| x.index == step).unwrap_or(0) + 1;
        let from = (!s.from.is_empty()).then_some(s.from.as_str());
        let extra = usize::from(from.is_some());
        let name = if !s.stage.is_empty() && s.stage.bytes().all(|b| b.is_ascii_digit()) {
            format!("stage-{}", s.stage)
        } else {
            escape(&s.stage)
        };
        (name, pos + extra, in_stage.len() + extra, from)
    }

    /// `text` left, `right` right-aligned, cut to the terminal's width.
    fn line(&self, text: &str, right: &str, color: Option<&str>) -> String {
        let width = self.width - 1;
        let right_len = right.chars().count();
        let room = match right_len {
            0 => width,
            n => width.saturating_sub(n + 1),
        };
        let left = fit(text, room);
        let pad = width.saturating_sub(left.chars().count() + right_len);
        let line = if right.is_empty() {
            left
        } else {
            format!("{left}{}{right}", " ".repeat(pad))
        };
        self.paint(&line, color)
    }

    fn paint(&self, text: &str, color: Option<&str>) -> String {
        match color {
            Some(c) if self.color => format!("{c}{text}{RESET}"),
            _ => text.to_string(),
        }
    }
}

/// Cuts `text` to `width` characters, ending with `…` when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Output from RUN steps, made inert: control characters (ESC, CR, BEL, the
/// C1 range, ...) are shown in caret or `\u{..}` form, so a step cannot move
/// the cursor, change colours or retitle the terminal. Tabs become spaces.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push_str("    "),
            '\u{0}'..='\u{1f}' => {
                out.push('^');
                out.push((c as u8 ^ 0x40) as char);
            }
            '\u{7f}' => out.push_str("^?"),
            '\u{80}'..='\u{9f}' => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            _ => out.push(c),
        }
    }
    out
}

/// Colours unless NO_COLOR is set to anything non-empty (no-color.org) or
/// TERM is `dumb`.
pub fn color_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    !no_color && !dumb
}

/// The terminal's (columns, rows) on stderr, 80x24 when unknown.
pub fn size() -> (usize, usize) {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass.
    let ok = unsafe { nix::libc::ioctl(2, nix::libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 && ws.ws_row > 0 {
        (ws.ws_col as usize, ws.ws_row as usize)
    } else {
        (80, 24)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(index: usize, stage: &str, instruction: &str, from: &str) -> StepInfo {
        StepInfo {
            index,
            stage: stage.into(),
            instruction: instruction.into(),
            location: format!("Dockerfile:{}", index + 2),
            cache_key: String::new(),
            from: from.into(),
        }
    }

    fn planned() -> BuildEvent {
        BuildEvent::Planned {
            build: 7,
            project: String::new(),
            warnings: Vec::new(),
            steps: vec![
                step(0, "base", "WORKDIR /src", "FROM busybox"),
                step(1, "base", "COPY a /src/a", "FROM busybox"),
                step(2, "base", "COPY b /src/b", "FROM busybox"),
                step(3, "base", "RUN make", "FROM busybox"),
                step(4, "1", "COPY --from=base /src /out", "FROM scratch"),
            ],
        }
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn running_steps_show_a_timer_and_their_last_output_lines() {
        let t0 = Instant::now();
        let mut tty = Tty::new(t0, false, (60, 40));
        tty.event(&planned(), t0);
        for s in 0..3 {
            tty.event(&BuildEvent::StepCached { step: s }, at(t0, 10));
        }
        tty.event(&BuildEvent::StepStarted { step: 3 }, at(t0, 100));
        for n in 0..8 {
            tty.event(
                &BuildEvent::Log {
                    step: Some(3),
                    line: format!("line {n}"),
                },
                at(t0, 200),
            );
        }
        let frame = tty.frame(at(t0, 2_600));
        let want = [
            "[+] Building 2.6s (3/5)",
            " => [base 1/5] FROM busybox",
            " => CACHED [base 2-4/5] 3 steps",
            " => [base 5/5] RUN make                                2.5s",
            " => => # line 2",
            " => => # line 3",
            " => => # line 4",
            " => => # line 5",
            " => => # line 6",
            " => => # line 7",
        ];
        assert_eq!(frame, want);
        // Lines with a time are as wide as the terminal allows (59 of 60 columns).
        assert_eq!(frame[3].chars().count(), 59);
        // The timer moves on; a step not started is not shown.
        let later = tty.frame(at(t0, 4_100));
        assert_eq!(later[0], "[+] Building 4.1s (3/5)");
        assert!(later[3].ends_with(" 4.0s"), "{later:?}");
        assert!(!later.iter().any(|l| l.contains("COPY --from")));
    }

    #[test]
    fn finished_steps_fold_their_output_and_the_end_is_summed_up() {
        let t0 = Instant::now();
        let mut tty = Tty::new(t0, false, (60, 40));
        tty.event(&planned(), t0);
        tty.event(&BuildEvent::StepCached { step: 0 }, t0);
        for s in 1..5 {
            tty.event(&BuildEvent::StepStarted { step: s }, t0);
            tty.event(
                &BuildEvent::Log {
                    step: Some(s),
                    line: "out".into(),
                },
                t0,
            );
            tty.event(
                &BuildEvent::StepDone {
                    step: s,
                    millis: 1_250,
                },
                t0,
            );
        }
        tty.event(
            &BuildEvent::Log {
                step: None,
                line: "warning: unused build arg X".into(),
            },
            t0,
        );
        tty.event(
            &BuildEvent::Finished {
                manifest_digest: "sha256:m".into(),
                config_digest: "sha256:c".into(),
                tags: vec![],
                millis: 5_040,
            },
            at(t0, 5_100),
        );
        let frame = tty.frame(at(t0, 9_000));
        assert_eq!(
            frame,
            [
                "[+] Building 5.0s (5/5) FINISHED",
                " => [base 1/5] FROM busybox",
                " => CACHED [base 2/5] WORKDIR /src",
                " => [base 3/5] COPY a /src/a                           1.2s",
                " => [base 4/5] COPY b /src/b                           1.2s",
                " => [base 5/5] RUN make                                1.2s",
                " => [stage-1 1/2] FROM scratch",
                " => [stage-1 2/2] COPY --from=base /src /out           1.2s",
                "warning: unused build arg X",
            ]
        );
        // The last frame stays: the next redraw does not move the cursor up.
        assert!(tty.redraw(at(t0, 9_000)).starts_with("[+] Building 5.0s"));
        assert!(tty.redraw(at(t0, 9_000)).starts_with("[+] Building 5.0s"));
    }

    #[test]
    fn a_failure_keeps_the_failed_steps_output_and_marks_it() {
        let t0 = Instant::now();
        let mut tty = Tty::new(t0, false, (60, 40));
        tty.event(&planned(), t0);
        tty.event(&BuildEvent::StepStarted { step: 0 }, t0);
        tty.event(
            &BuildEvent::Log {
                step: Some(0),
                line: "make: *** no rule".into(),
            },
            t0,
        );
        tty.event(
            &BuildEvent::Failed {
                error: memobuild_proto::RpcError::new("RUN failed"),
                failure: None,
            },
            at(t0, 1_500),
        );
        let frame = tty.frame(at(t0, 3_000));
        assert_eq!(frame[0], "[+] Building 1.5s (0/5) FAILED");
        assert_eq!(
            frame[2],
            " => [base 2/5] WORKDIR /src                      1.5s ERROR"
        );
        assert_eq!(frame[3], " => => # make: *** no rule");
        let mut cancelled = Tty::new(t0, false, (60, 40));
        cancelled.event(&planned(), t0);
        cancelled.event(&BuildEvent::StepStarted { step: 3 }, t0);
        cancelled.cancel(at(t0, 700));
        let frame = cancelled.frame(at(t0, 800));
        assert_eq!(frame[0], "[+] Building 0.7s (0/5) CANCELED");
        assert!(frame[2].ends_with("0.7s CANCELED"), "{frame:?}");
    }

    #[test]
    fn control_sequences_in_output_are_shown_not_obeyed() {
        let t0 = Instant::now();
        let mut tty = Tty::new(t0, true, (80, 40));
        tty.event(&planned(), t0);
        tty.event(&BuildEvent::StepStarted { step: 3 }, t0);
        tty.event(
            &BuildEvent::Log {
                step: Some(3),
                line: "\x1b[2J\x1b]0;owned\x07red\x1b[31m\r\u{9b}1A".into(),
            },
            t0,
        );
        let out = tty.redraw(t0);
        let log_line = out
            .lines()
            .find(|l| l.contains("=> => #"))
            .expect("a log line");
        assert!(
            log_line.contains("^[[2J^[]0;owned^Gred^[[31m^M\\u{9b}1A"),
            "{log_line:?}"
        );
        // The only ESC bytes are ours: colour, erase-line, erase-below.
        let ours = ["\x1b[90m", "\x1b[0m", "\x1b[K", "\x1b[34m", "\x1b[J"];
        let mut rest = out.clone();
        for o in ours {
            rest = rest.replace(o, "");
        }
        assert!(!rest.contains('\x1b'), "{rest:?}");
    }

    #[test]
    fn colours_only_when_enabled_and_lines_fit_the_terminal() {
        let t0 = Instant::now();
        let mut plain = Tty::new(t0, false, (30, 40));
        let mut coloured = Tty::new(t0, true, (30, 40));
        for tty in [&mut plain, &mut coloured] {
            tty.event(&planned(), t0);
            tty.event(&BuildEvent::StepCached { step: 0 }, t0);
            tty.event(&BuildEvent::StepStarted { step: 1 }, t0);
            tty.event(&BuildEvent::StepDone { step: 1, millis: 3 }, t0);
            tty.event(&BuildEvent::StepStarted { step: 2 }, t0);
        }
        let p = plain.frame(at(t0, 50));
        assert!(p.iter().all(|l| !l.contains('\x1b')), "{p:?}");
        assert!(p.iter().all(|l| l.chars().count() <= 29), "{p:?}");
        assert_eq!(p[4], " => [base 4/5] COPY b /… 0.1s");
        let c = coloured.frame(at(t0, 50));
        assert_eq!(c[2], format!("{BLUE} => CACHED [base 2/5] WORKDI…{RESET}"));
        // The running step has no colour.
        assert_eq!(c[4], p[4]);
    }

    #[test]
    fn a_frame_taller_than_the_terminal_keeps_the_newest_lines() {
        let t0 = Instant::now();
        let mut tty = Tty::new(t0, false, (60, 6));
        tty.event(&planned(), t0);
        tty.event(&BuildEvent::StepStarted { step: 3 }, t0);
        for n in 0..6 {
            tty.event(
                &BuildEvent::Log {
                    step: Some(3),
                    line: format!("l{n}"),
                },
                t0,
            );
        }
        let frame = tty.frame(t0);
        assert_eq!(frame.len(), 5);
        assert!(frame[0].starts_with("[+] Building"));
        assert_eq!(frame[4], " => => # l5");
        // The redraw moves up exactly the lines it drew the time before.
        let first = tty.redraw(t0);
        assert!(!first.contains("\x1b[5F"));
        assert!(tty.redraw(t0).starts_with("\x1b[5F"));
    }
}
