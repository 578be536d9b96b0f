//! Dockerfiles: parsing (with the parse-dockerfile crate) into an owned model in
//! which every instruction knows where it came from (file:line:col), and
//! Docker's word processing ([`expand`]).
//!
//! This module only checks syntax and flags. What instructions mean (ARG scoping,
//! expansion, paths) is decided when the build graph is planned, in `graph`.

// What other crates may use is what this file exports; the rest is private.
#![warn(unreachable_pub)]

pub mod expand;
pub mod gitref;
mod heredoc;
pub mod lint;
pub mod suggest;

use std::fmt;

/// A position in the Dockerfile, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    pub line: usize,
    pub column: usize,
}

/// A parsed instruction with its position and its source text (continuations joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub loc: Loc,
    pub source: String,
    pub value: T,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// How to name the file in errors (the path the user gave).
    pub name: String,
    pub escape: char,
    /// ARGs before the first FROM.
    pub global_args: Vec<Located<Vec<ArgDecl>>>,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub index: usize,
    /// `AS name`, lowercased as Docker does.
    pub name: Option<String>,
    pub from: Located<From>,
    pub instructions: Vec<Located<Instruction>>,
}

impl Stage {
    /// The stage's name for humans: its `AS` name or its index.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.index.to_string())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    /// Image reference, stage name or `scratch`, not yet expanded.
    pub image: String,
    pub platform: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    /// Raw default, not yet expanded.
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
    pub loc: Loc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    /// JSON array: used as is.
    Exec(Vec<String>),
    /// Shell form: run through the stage's SHELL.
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpec {
    pub flags: Vec<Flag>,
    /// Raw sources, not yet expanded.
    pub sources: Vec<Located<String>>,
    /// Here-documents as sources (`COPY <<EOF /dest`), in order.
    pub heredocs: Vec<Located<InlineFile>>,
    pub dest: Located<String>,
}

/// A here-document used as a COPY/ADD source: a file named after its
/// delimiter (BuildKit), 0644.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineFile {
    /// The delimiter, quotes removed: the file's name.
    pub name: String,
    /// The body (`<<-` already stripped leading tabs), not yet expanded.
    pub content: String,
    /// False when the delimiter was quoted: no variable expansion.
    pub expand: bool,
}

impl CopySpec {
    pub fn flag(&self, name: &str) -> Option<&Flag> {
        self.flags.iter().rev().find(|f| f.name == name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub flags: Vec<Flag>,
    pub command: CommandForm,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Instruction {
    Arg(Vec<ArgDecl>),
    /// Raw key/value pairs, not yet expanded.
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Workdir(String),
    User(String),
    Stopsignal(String),
    Maintainer(String),
    Copy(CopySpec),
    Add(CopySpec),
    /// Raw argument text (split and expanded when planned).
    Expose(String),
    Volume(Vec<String>),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    Shell(Vec<String>),
    /// `None` is `HEALTHCHECK NONE`.
    Healthcheck(Option<Healthcheck>),
    /// The trigger instruction's text, recorded in the image config.
    Onbuild(String),
    Run(RunSpec),
}

/// `RUN [--mount=...] [--network=...] command`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub flags: Vec<Flag>,
    /// Exec form, or shell form (here-documents already folded into the text
    /// the shell gets: a RUN that is only a here-document runs it as the script).
    pub command: CommandForm,
    /// A RUN that is only a here-document starting with `#!`: BuildKit writes
    /// it to a 0755 file mounted read-only at `/dev/pipes/NAME` and executes
    /// that file (`command` is then `["/dev/pipes/NAME"]`).
    pub script: Option<InlineFile>,
}

impl Instruction {
    /// The instruction keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Instruction::Arg(_) => "ARG",
            Instruction::Env(_) => "ENV",
            Instruction::Label(_) => "LABEL",
            Instruction::Workdir(_) => "WORKDIR",
            Instruction::User(_) => "USER",
            Instruction::Stopsignal(_) => "STOPSIGNAL",
            Instruction::Maintainer(_) => "MAINTAINER",
            Instruction::Copy(_) => "COPY",
            Instruction::Add(_) => "ADD",
            Instruction::Expose(_) => "EXPOSE",
            Instruction::Volume(_) => "VOLUME",
            Instruction::Cmd(_) => "CMD",
            Instruction::Entrypoint(_) => "ENTRYPOINT",
            Instruction::Shell(_) => "SHELL",
            Instruction::Healthcheck(_) => "HEALTHCHECK",
            Instruction::Onbuild(_) => "ONBUILD",
            Instruction::Run(_) => "RUN",
        }
    }
}

/// A problem in a Dockerfile, with where it is and, if we know, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerfileError {
    pub file: String,
    pub loc: Loc,
    pub message: String,
    pub hint: Option<String>,
    /// Not the Dockerfile's fault: a context file changed while the plan
    /// read it, and the build should start over on a fresh snapshot.
    pub changed_during_build: bool,
}

impl fmt::Display for DockerfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.loc.line, self.loc.column, self.message
        )
    }
}

impl std::error::Error for DockerfileError {}

/// Maps byte offsets to 1-based line:column.
struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    fn loc(&self, offset: usize) -> Loc {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        Loc { line, column }
    }
}

struct Converter<'a> {
    name: &'a str,
    text: &'a str,
    lines: LineIndex<'a>,
    escape: char,
    /// By the offset of a RUN keyword: its shell command with the
    /// here-documents the parser does not take (see `heredoc`).
    run_heredocs: std::collections::BTreeMap<usize, String>,
}

/// Largest Dockerfile the daemon reads.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Reads a Dockerfile: a regular file (a FIFO or device is refused at once,
/// never opened), at most [`MAX_FILE_BYTES`], UTF-8.
pub fn read_file(path: &std::path::Path) -> Result<String, memobuild_rootpath::safefs::ReadError> {
    memobuild_rootpath::safefs::read_text_capped(path, MAX_FILE_BYTES)
}

/// Parses a Dockerfile. `name` is how errors refer to the file.
/// Most instructions (global ARGs, FROMs and the rest) one Dockerfile may
/// hold. BuildKit has no limit; planning costs grow with instructions times
/// the image config's size, so a bound keeps a hostile file cheap.
pub const MAX_INSTRUCTIONS: usize = 5000;

pub fn parse(text: &str, name: &str) -> Result<Dockerfile, DockerfileError> {
    // RUN here-documents the parser does not take (several, or fed to a
    // command) leave the text here, same offsets, and join the command later.
    let (blanked, run_heredocs) = heredoc::split_run_heredocs(text);
    let text = blanked.as_str();
    let parsed = parse_dockerfile::parse(text).map_err(|e| {
        // The crate reports "no stage" at line 0; positions we print are 1-based.
        let loc = Loc {
            line: e.line().max(1),
            column: e.column().max(1),
        };
        let text = e.to_string();
        let message = if e.line() == 0 {
            // BuildKit's text.
            "dockerfile contains no stages to build".to_string()
        } else if let Some(word) = unknown_instruction(&text) {
            suggest::with_suggestion(
                format!("unknown instruction: {word}"),
                &word,
                INSTRUCTIONS,
                false,
            )
        } else {
            format!("syntax error: {text}")
        };
        DockerfileError {
            file: name.to_string(),
            loc,
            hint: syntax_hint(&message),
            message,
            changed_during_build: false,
        }
    })?;
    let escape = parsed
        .parser_directives
        .escape
        .as_ref()
        .map(|d| d.value.value)
        .unwrap_or('\\');
    let conv = Converter {
        name,
        text,
        lines: LineIndex::new(text),
        escape,
        run_heredocs,
    };
    let mut global_args = Vec::new();
    for arg in parsed.global_args() {
        global_args.push(conv.located(arg.arg.span.start, conv.arg_decls(arg)?));
    }
    let mut stages: Vec<Stage> = Vec::new();
    let mut count = global_args.len();
    for (index, stage) in parsed.stages().enumerate() {
        let stage = conv.stage(index, &stage)?;
        count += 1 + stage.instructions.len();
        if count > MAX_INSTRUCTIONS {
            let over = count - MAX_INSTRUCTIONS;
            let loc = stage
                .instructions
                .len()
                .checked_sub(over)
                .and_then(|i| stage.instructions.get(i))
                .map_or(stage.from.loc, |ins| ins.loc);
            return Err(DockerfileError {
                file: name.to_string(),
                loc,
                message: format!(
                    "the Dockerfile has more than {MAX_INSTRUCTIONS} instructions; this is the first one past the limit"
                ),
                hint: Some(
                    "split the build, or merge instructions (one ENV or LABEL sets many values)"
                        .into(),
                ),
                changed_during_build: false,
            });
        }
        stages.push(stage);
    }
    Ok(Dockerfile {
        name: name.to_string(),
        escape,
        global_args,
        stages,
    })
}

/// Every instruction keyword, for "did you mean" suggestions.
const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// The word of parse-dockerfile's "unknown instruction 'WORD'" error.
fn unknown_instruction(message: &str) -> Option<String> {
    let rest = &message[message.find("unknown instruction")? + "unknown instruction".len()..];
    let rest = rest.trim_start_matches([':', ' ']);
    let word = match rest.strip_prefix('\'') {
        Some(quoted) => quoted.split('\'').next()?,
        None => rest.split_whitespace().next()?,
    };
    (!word.is_empty()).then(|| word.to_string())
}

fn syntax_hint(message: &str) -> Option<String> {
    if message.contains("unknown instruction") {
        return Some("instructions are FROM, ARG, ENV, LABEL, WORKDIR, COPY, ADD, RUN, USER, EXPOSE, VOLUME, CMD, ENTRYPOINT, SHELL, STOPSIGNAL, HEALTHCHECK, ONBUILD, MAINTAINER".into());
    }
    if message.contains("no stages") {
        return Some(
            "a Dockerfile needs a FROM instruction (only ARG and comments may come before it)"
                .into(),
        );
    }
    if message.contains("FROM") {
        return Some(
            "a Dockerfile must start with FROM (only ARG and comments may come before it)".into(),
        );
    }
    None
}

impl Converter<'_> {
    fn error(&self, offset: usize, message: impl Into<String>) -> DockerfileError {
        DockerfileError {
            file: self.name.to_string(),
            loc: self.lines.loc(offset),
            message: message.into(),
            hint: None,
            changed_during_build: false,
        }
    }

    fn located<T>(&self, start: usize, value: T) -> Located<T> {
        Located {
            loc: self.lines.loc(start),
            source: logical_line(self.text, start, self.escape),
            value,
        }
    }

    fn stage(
        &self,
        index: usize,
        stage: &parse_dockerfile::Stage<'_, '_>,
    ) -> Result<Stage, DockerfileError> {
        let from = stage.from;
        let flags = self.flags(&from.options, "FROM", &["platform"])?;
        let platform = flags.iter().find(|f| f.name == "platform");
        let platform = platform.and_then(|f| f.value.clone());
        let name = from.as_.as_ref().map(|(_, n)| n.value.to_lowercase());
        let mut instructions = Vec::new();
        for ins in stage.instructions {
            instructions.push(self.instruction(ins)?);
        }
        Ok(Stage {
            index,
            name,
            from: self.located(
                from.from.span.start,
                From {
                    image: from.image.value.to_string(),
                    platform,
                },
            ),
            instructions,
        })
    }

    fn instruction(
        &self,
        ins: &parse_dockerfile::Instruction<'_>,
    ) -> Result<Located<Instruction>, DockerfileError> {
        use parse_dockerfile::Instruction as P;
        let (start, value) = match ins {
            P::Arg(i) => (i.arg.span.start, Instruction::Arg(self.arg_decls(i)?)),
            P::Env(i) => (
                i.env.span.start,
                Instruction::Env(self.name_vals("ENV", &i.arguments)?),
            ),
            P::Label(i) => (
                i.label.span.start,
                Instruction::Label(self.name_vals("LABEL", &i.arguments)?),
            ),
            P::Workdir(i) => (
                i.workdir.span.start,
                Instruction::Workdir(i.arguments.value.to_string()),
            ),
            P::User(i) => (
                i.user.span.start,
                Instruction::User(i.arguments.value.to_string()),
            ),
            P::Stopsignal(i) => (
                i.stopsignal.span.start,
                Instruction::Stopsignal(i.arguments.value.to_string()),
            ),
            P::Maintainer(i) => (
                i.maintainer.span.start,
                Instruction::Maintainer(i.name.value.to_string()),
            ),
            P::Expose(i) => (
                i.expose.span.start,
                Instruction::Expose(self.expose_text(i)),
            ),
            P::Volume(i) => (
                i.volume.span.start,
                Instruction::Volume(string_array(&i.arguments)),
            ),
            P::Cmd(i) => (
                i.cmd.span.start,
                Instruction::Cmd(self.command(&i.arguments)),
            ),
            P::Entrypoint(i) => (
                i.entrypoint.span.start,
                Instruction::Entrypoint(self.command(&i.arguments)),
            ),
            P::Shell(i) => (
                i.shell.span.start,
                Instruction::Shell(i.arguments.iter().map(|s| s.value.to_string()).collect()),
            ),
            P::Copy(i) => (
                i.copy.span.start,
                Instruction::Copy(self.copy_spec(
                    i.copy.span.start,
                    "COPY",
                    &i.options,
                    &i.src,
                    &i.dest,
                    &["from", "chown", "chmod", "link", "parents", "exclude"],
                )?),
            ),
            P::Add(i) => (
                i.add.span.start,
                Instruction::Add(self.copy_spec(
                    i.add.span.start,
                    "ADD",
                    &i.options,
                    &i.src,
                    &i.dest,
                    &[
                        "chown",
                        "chmod",
                        "link",
                        "exclude",
                        "checksum",
                        "unpack",
                        "keep-git-dir",
                    ],
                )?),
            ),
            P::Healthcheck(i) => (
                i.healthcheck.span.start,
                Instruction::Healthcheck(self.healthcheck(i)?),
            ),
            P::Onbuild(i) => (
                i.onbuild.span.start,
                Instruction::Onbuild(self.onbuild_trigger(i)?),
            ),
            P::Run(i) => (i.run.span.start, Instruction::Run(self.run_spec(i)?)),
            P::From(i) => {
                return Err(self.error(i.from.span.start, "FROM inside a stage (parser bug)"))
            }
            _ => return Err(self.error(0, "instruction not supported by memobuild")),
        };
        Ok(self.located(start, value))
    }

    fn flags(
        &self,
        options: &[parse_dockerfile::Flag<'_>],
        keyword: &str,
        allowed: &[&str],
    ) -> Result<Vec<Flag>, DockerfileError> {
        let mut out = Vec::new();
        for opt in options {
            let name = opt.name.value.to_string();
            if !allowed.contains(&name.as_str()) {
                let supported = if allowed.is_empty() {
                    format!("{keyword} takes no flags")
                } else {
                    let list: Vec<String> = allowed.iter().map(|a| format!("--{a}")).collect();
                    format!("{keyword} supports {}", list.join(", "))
                };
                // BuildKit's text, and its suggestion.
                let mut err = self.error(
                    opt.span().start,
                    suggest::with_suggestion(
                        format!("unknown flag: --{name}"),
                        &name,
                        allowed,
                        true,
                    ),
                );
                err.hint = Some(supported);
                return Err(err);
            }
            out.push(Flag {
                name,
                value: opt.value.as_ref().map(|v| v.value.to_string()),
                loc: self.lines.loc(opt.span().start),
            });
        }
        Ok(out)
    }

    fn arg_decls(
        &self,
        arg: &parse_dockerfile::ArgInstruction<'_>,
    ) -> Result<Vec<ArgDecl>, DockerfileError> {
        let decls = expand::parse_arg_decls(&arg.arguments.value, self.escape).map_err(|e| {
            self.error(
                arg.arguments.span.start + e.offset.min(arg.arguments.span.len()),
                e.message,
            )
        })?;
        Ok(decls
            .into_iter()
            .map(|(name, default)| ArgDecl { name, default })
            .collect())
    }

    fn name_vals(
        &self,
        keyword: &str,
        args: &parse_dockerfile::UnescapedString<'_>,
    ) -> Result<Vec<(String, String)>, DockerfileError> {
        expand::parse_name_vals(keyword, &args.value, self.escape)
            .map_err(|e| self.error(args.span.start + e.offset.min(args.span.len()), e.message))
    }

    fn expose_text(&self, i: &parse_dockerfile::ExposeInstruction<'_>) -> String {
        i.arguments
            .iter()
            .map(|a| a.value.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn command(&self, cmd: &parse_dockerfile::Command<'_>) -> CommandForm {
        match cmd {
            parse_dockerfile::Command::Exec(args) => {
                CommandForm::Exec(args.value.iter().map(|a| a.value.to_string()).collect())
            }
            parse_dockerfile::Command::Shell(s) => {
                CommandForm::Shell(join_continuations(s.value, self.escape))
            }
            _ => CommandForm::Shell(String::new()),
        }
    }

    fn copy_spec(
        &self,
        start: usize,
        keyword: &str,
        options: &[parse_dockerfile::Flag<'_>],
        src: &[parse_dockerfile::Source<'_>],
        dest: &parse_dockerfile::UnescapedString<'_>,
        allowed: &[&str],
    ) -> Result<CopySpec, DockerfileError> {
        let flags = self.flags(options, keyword, allowed)?;
        let mut sources = Vec::new();
        let mut heredocs = Vec::new();
        // The delimiters, in order, from the instruction's first line.
        let first_line = self.text[start..].split('\n').next().unwrap_or("");
        let mut delimiters = first_line
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("<<"))
            .map(|w| {
                w.trim_start_matches('-')
                    .chars()
                    .filter(|c| !matches!(c, '"' | '\'' | '\\'))
                    .collect::<String>()
            });
        for s in src {
            match s {
                parse_dockerfile::Source::Path(p) => sources.push(Located {
                    loc: self.lines.loc(p.span.start),
                    source: p.value.to_string(),
                    value: p.value.to_string(),
                }),
                parse_dockerfile::Source::HereDoc(h) => {
                    let name = delimiters.next().filter(|n| !n.is_empty()).ok_or_else(|| {
                        self.error(
                            h.span.start,
                            format!("{keyword}: a here-document without a name"),
                        )
                    })?;
                    heredocs.push(Located {
                        loc: self.lines.loc(h.span.start),
                        source: format!("<<{name}"),
                        value: InlineFile {
                            name,
                            content: h.value.to_string(),
                            expand: h.expand,
                        },
                    });
                }
                _ => {
                    return Err(self.error(dest.span.start, format!("unsupported {keyword} source")))
                }
            }
        }
        Ok(CopySpec {
            flags,
            sources,
            heredocs,
            dest: Located {
                loc: self.lines.loc(dest.span.start),
                source: dest.value.to_string(),
                value: dest.value.to_string(),
            },
        })
    }

    fn healthcheck(
        &self,
        i: &parse_dockerfile::HealthcheckInstruction<'_>,
    ) -> Result<Option<Healthcheck>, DockerfileError> {
        let flags = self.flags(
            &i.options,
            "HEALTHCHECK",
            &[
                "interval",
                "timeout",
                "start-period",
                "start-interval",
                "retries",
            ],
        )?;
        match &i.arguments {
            parse_dockerfile::HealthcheckArguments::Cmd { arguments, .. } => {
                Ok(Some(Healthcheck {
                    flags,
                    command: self.command(arguments),
                }))
            }
            parse_dockerfile::HealthcheckArguments::None { none, .. } => {
                if let Some(f) = flags.first() {
                    return Err(self.error(
                        none.span.start,
                        format!("HEALTHCHECK NONE takes no flags (found --{})", f.name),
                    ));
                }
                Ok(None)
            }
            _ => Err(self.error(i.healthcheck.span.start, "unsupported HEALTHCHECK form")),
        }
    }

    fn run_spec(
        &self,
        i: &parse_dockerfile::RunInstruction<'_>,
    ) -> Result<RunSpec, DockerfileError> {
        // `--security` is checked when planned (its value may use ARGs) and
        // needs the security.insecure entitlement when the step runs.
        let flags = self.flags(&i.options, "RUN", &["mount", "network", "security"])?;
        let mut script = None;
        let command = match (&i.arguments, i.here_docs.as_slice()) {
            (_, []) => self.command(&i.arguments),
            (parse_dockerfile::Command::Shell(s), [only])
                if s.value.trim().is_empty() && only.value.starts_with("#!") =>
            {
                let first_line = self.text[i.run.span.start..]
                    .split('\n')
                    .next()
                    .unwrap_or("");
                let name: String = first_line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("<<"))
                    .unwrap_or("")
                    .trim_start_matches('-')
                    .chars()
                    .filter(|c| !matches!(c, '"' | '\'' | '\\'))
                    .collect();
                if name.is_empty() || name.contains('/') {
                    return Err(self.error(only.span.start, "RUN: a here-document without a name"));
                }
                script = Some(InlineFile {
                    name: name.clone(),
                    content: only.value.to_string(),
                    expand: only.expand,
                });
                CommandForm::Exec(vec![format!("/dev/pipes/{name}")])
            }
            (parse_dockerfile::Command::Shell(s), [only]) if s.value.trim().is_empty() => {
                CommandForm::Shell(only.value.to_string())
            }
            (parse_dockerfile::Command::Shell(s), docs) => {
                // The shell gets the text with its here-documents, as written.
                let end = docs.last().map(|d| d.span.end).unwrap_or(s.span.end);
                let after = self.text.get(end..).unwrap_or("");
                let terminator = after.find('\n').map(|n| end + n).unwrap_or(self.text.len());
                let start = self.text[..s.span.start]
                    .rfind("<<")
                    .filter(|p| *p > i.run.span.end)
                    .unwrap_or(s.span.start);
                let start = start.min(s.span.start);
                CommandForm::Shell(self.text.get(start..terminator).unwrap_or("").to_string())
            }
            (parse_dockerfile::Command::Exec(_), _) => {
                return Err(self.error(
                    i.run.span.start,
                    "here-documents need the shell form of RUN",
                ));
            }
            _ => return Err(self.error(i.run.span.start, "unsupported RUN form")),
        };
        let command = match self.run_heredocs.get(&i.run.span.start) {
            Some(full) => CommandForm::Shell(full.clone()),
            None => command,
        };
        Ok(RunSpec {
            flags,
            command,
            script,
        })
    }

    /// Docker records the trigger as its source text after `ONBUILD `.
    fn onbuild_trigger(
        &self,
        i: &parse_dockerfile::OnbuildInstruction<'_>,
    ) -> Result<String, DockerfileError> {
        let line = logical_line(self.text, i.onbuild.span.start, self.escape);
        let mut trigger = line.get("ONBUILD".len()..).unwrap_or("").trim().to_string();
        // Here-documents follow the line: the trigger keeps their bodies and
        // terminators, so it parses again in the image built FROM this one.
        let docs: Vec<std::ops::Range<usize>> = match &*i.instruction {
            parse_dockerfile::Instruction::Run(r) => {
                r.here_docs.iter().map(|h| h.span.clone()).collect()
            }
            parse_dockerfile::Instruction::Copy(c) => heredoc_spans(&c.src),
            parse_dockerfile::Instruction::Add(a) => heredoc_spans(&a.src),
            _ => Vec::new(),
        };
        if let (Some(first), Some(last)) = (docs.first(), docs.last()) {
            // A span ends where its terminator line starts.
            let end = self.text[last.end..]
                .find('\n')
                .map_or(self.text.len(), |n| last.end + n);
            if let Some(body) = self.text.get(first.start..end) {
                trigger.push('\n');
                trigger.push_str(body);
            }
        }
        let first = trigger
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if matches!(first.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
            return Err(self.error(
                i.onbuild.span.start,
                format!("ONBUILD {first} is not allowed"),
            ));
        }
        Ok(trigger)
    }
}

/// The spans of the here-document sources of a COPY/ADD.
fn heredoc_spans(src: &[parse_dockerfile::Source<'_>]) -> Vec<std::ops::Range<usize>> {
    src.iter()
        .filter_map(|s| match s {
            parse_dockerfile::Source::HereDoc(h) => Some(h.span.clone()),
            _ => None,
        })
        .collect()
}

fn string_array<const N: usize>(arr: &parse_dockerfile::JsonOrStringArray<'_, N>) -> Vec<String> {
    match arr {
        parse_dockerfile::JsonOrStringArray::Json(v) => {
            v.value.iter().map(|s| s.value.to_string()).collect()
        }
        parse_dockerfile::JsonOrStringArray::String(v) => {
            v.iter().map(|s| s.value.to_string()).collect()
        }
    }
}

/// The instruction starting at `start` as one line: continuations joined, comment
/// lines inside it dropped, as Docker's parser does.
pub(crate) fn logical_line(text: &str, start: usize, escape: char) -> String {
    let rest = text.get(start..).unwrap_or("");
    let mut out = String::new();
    for (i, line) in rest.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        // Inside a continuation, comment lines and blank lines are skipped (as
        // Docker's parser does); they never end the instruction.
        if i > 0 && (line.trim_start().starts_with('#') || line.trim().is_empty()) {
            continue;
        }
        let trimmed = line.trim_end();
        match trimmed.strip_suffix(escape) {
            Some(body) => out.push_str(body),
            None => {
                out.push_str(line);
                break;
            }
        }
    }
    out.trim().to_string()
}

/// Removes `escape` + newline pairs (and comment lines between them) from shell-form text.
pub(crate) fn join_continuations(s: &str, escape: char) -> String {
    if !s.contains('\n') {
        return s.to_string();
    }
    logical_line(s, 0, escape)
}

/// Parses a size as Docker does (`--mount=type=tmpfs,size=`; the binaries
/// parse their flags with `memobuild_proto::parse_size`, the same rule): a number with an optional b/k/m/g/t suffix
/// (binary units, case-insensitive): `512m`, `2g`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(|c: char| !c.is_ascii_digit()))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        Some('b') => (&t[..t.len() - 1], 1),
        _ => (t, 1),
    };
    let n: f64 = num.parse().map_err(|_| {
        format!("invalid size {text:?}: use a number with b, k, m, g or t, e.g. 512m")
    })?;
    if n < 0.0 {
        return Err(format!("invalid size {text:?}: must not be negative"));
    }
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_command(text: &str) -> CommandForm {
        let df = parse(text, "Dockerfile").unwrap();
        match &df.stages[0].instructions[0].value {
            Instruction::Run(spec) => spec.command.clone(),
            other => panic!("not a RUN: {other:?}"),
        }
    }

    #[test]
    fn run_forms_and_here_documents() {
        assert_eq!(
            run_command("FROM scratch\nRUN [\"a\", \"b c\"]\n"),
            CommandForm::Exec(vec!["a".into(), "b c".into()])
        );
        assert_eq!(
            run_command("FROM scratch\nRUN echo a \\\n  && echo b\n"),
            CommandForm::Shell("echo a   && echo b".into())
        );
        // A RUN that is only a here-document runs it as the script.
        assert_eq!(
            run_command("FROM scratch\nRUN <<EOF\necho one\necho two\nEOF\n"),
            CommandForm::Shell("echo one\necho two\n".into())
        );
        // Otherwise the shell gets the text with its here-document. (parse-dockerfile
        // recognises a here-document only at the start of the command.)
        assert_eq!(
            run_command("FROM scratch\nRUN <<EOF sh -e\necho hello > /f\nEOF\n"),
            CommandForm::Shell("<<EOF sh -e\necho hello > /f\nEOF".into())
        );
    }

    #[test]
    fn run_flags_are_checked() {
        let e = parse("FROM scratch\nRUN --frobnicate true\n", "Dockerfile").unwrap_err();
        assert!(e.message.contains("unknown flag: --frobnicate"), "{e}");
        assert!(parse("FROM scratch\nRUN --security=insecure true\n", "Dockerfile").is_ok());
    }
}
