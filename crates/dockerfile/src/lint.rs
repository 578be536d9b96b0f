//! Lint warnings with BuildKit's rule names and messages (`docker build
//! --call=check`): casing, stage names, deprecated or legacy forms, secrets in
//! ARG/ENV, EXPOSE formats, COPY of ignored files. Pure: the text and parsed
//! Dockerfile in, warnings out. The caller passes what it knows of the
//! context's `.dockerignore` (for `CopyIgnoredFile`).
//!
//! Like BuildKit, `# check=skip=RULE,...|all;error=true;experimental=RULE|all`
//! as a parser directive (or the `BUILDKIT_DOCKERFILE_CHECK` build arg, which
//! replaces it) configures the checks, and a `# check=skip=...` comment right
//! above an instruction skips rules for that instruction only. Rules BuildKit
//! checks while dispatching a stage (`LegacyKeyValueFormat`,
//! `JSONArgsRecommended`, ...) run only on the stages the target needs.
//!
//! Three rules need what only planning knows (base image configs and
//! platforms, variable values, image reference syntax): `UndefinedVar`,
//! `InvalidDefaultArgInFrom` and `InvalidBaseImagePlatform`. The planner finds
//! them and passes them in as [`Options::planned`]; they go through the same
//! `# check=` settings as the others. tests/lint/ holds BuildKit's test cases.

use crate::{CommandForm, Dockerfile, Instruction, Loc, Stage};
use std::collections::{BTreeMap, BTreeSet};

/// One of BuildKit's lint rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    pub description: &'static str,
    pub url: &'static str,
    /// Off unless `experimental=NAME` (or `all`) turns it on.
    pub experimental: bool,
}

const fn rule(name: &'static str, description: &'static str, url: &'static str) -> Rule {
    Rule {
        name,
        description,
        url,
        experimental: false,
    }
}

pub const STAGE_NAME_CASING: Rule = rule(
    "StageNameCasing",
    "Stage names should be lowercase",
    "https://docs.docker.com/go/dockerfile/rule/stage-name-casing/",
);
pub const FROM_AS_CASING: Rule = rule(
    "FromAsCasing",
    "The 'as' keyword should match the case of the 'from' keyword",
    "https://docs.docker.com/go/dockerfile/rule/from-as-casing/",
);
pub const NO_EMPTY_CONTINUATION: Rule = rule(
    "NoEmptyContinuation",
    "Empty continuation lines will become errors in a future release",
    "https://docs.docker.com/go/dockerfile/rule/no-empty-continuation/",
);
pub const CONSISTENT_INSTRUCTION_CASING: Rule = rule(
    "ConsistentInstructionCasing",
    "All commands within the Dockerfile should use the same casing (either upper or lower)",
    "https://docs.docker.com/go/dockerfile/rule/consistent-instruction-casing/",
);
pub const DUPLICATE_STAGE_NAME: Rule = rule(
    "DuplicateStageName",
    "Stage names should be unique",
    "https://docs.docker.com/go/dockerfile/rule/duplicate-stage-name/",
);
pub const RESERVED_STAGE_NAME: Rule = rule(
    "ReservedStageName",
    "Reserved words should not be used as stage names",
    "https://docs.docker.com/go/dockerfile/rule/reserved-stage-name/",
);
pub const JSON_ARGS_RECOMMENDED: Rule = rule(
    "JSONArgsRecommended",
    "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals",
    "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/",
);
pub const MAINTAINER_DEPRECATED: Rule = rule(
    "MaintainerDeprecated",
    "The MAINTAINER instruction is deprecated, use a label instead to define an image author",
    "https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/",
);
pub const UNDEFINED_ARG_IN_FROM: Rule = rule(
    "UndefinedArgInFrom",
    "FROM command must use declared ARGs",
    "https://docs.docker.com/go/dockerfile/rule/undefined-arg-in-from/",
);
pub const WORKDIR_RELATIVE_PATH: Rule = rule(
    "WorkdirRelativePath",
    "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes",
    "https://docs.docker.com/go/dockerfile/rule/workdir-relative-path/",
);
pub const MULTIPLE_INSTRUCTIONS_DISALLOWED: Rule = rule(
    "MultipleInstructionsDisallowed",
    "Multiple instructions of the same type should not be used in the same stage",
    "https://docs.docker.com/go/dockerfile/rule/multiple-instructions-disallowed/",
);
pub const LEGACY_KEY_VALUE_FORMAT: Rule = rule(
    "LegacyKeyValueFormat",
    "Legacy key/value format with whitespace separator should not be used",
    "https://docs.docker.com/go/dockerfile/rule/legacy-key-value-format/",
);
pub const REDUNDANT_TARGET_PLATFORM: Rule = rule(
    "RedundantTargetPlatform",
    "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior",
    "https://docs.docker.com/go/dockerfile/rule/redundant-target-platform/",
);
pub const SECRETS_USED_IN_ARG_OR_ENV: Rule = rule(
    "SecretsUsedInArgOrEnv",
    "Sensitive data should not be used in the ARG or ENV commands",
    "https://docs.docker.com/go/dockerfile/rule/secrets-used-in-arg-or-env/",
);
pub const FROM_PLATFORM_FLAG_CONST_DISALLOWED: Rule = rule(
    "FromPlatformFlagConstDisallowed",
    "FROM --platform flag should not use a constant value",
    "https://docs.docker.com/go/dockerfile/rule/from-platform-flag-const-disallowed/",
);
pub const COPY_IGNORED_FILE: Rule = rule(
    "CopyIgnoredFile",
    "Attempting to Copy file that is excluded by .dockerignore",
    "https://docs.docker.com/go/dockerfile/rule/copy-ignored-file/",
);
pub const INVALID_DEFINITION_DESCRIPTION: Rule = Rule {
    experimental: true,
    ..rule(
        "InvalidDefinitionDescription",
        "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment.",
        "https://docs.docker.com/go/dockerfile/rule/invalid-definition-description/",
    )
};
pub const EXPOSE_PROTO_CASING: Rule = rule(
    "ExposeProtoCasing",
    "Protocol in EXPOSE instruction should be lowercase",
    "https://docs.docker.com/go/dockerfile/rule/expose-proto-casing/",
);
pub const UNDEFINED_VAR: Rule = rule(
    "UndefinedVar",
    "Variables should be defined before their use",
    "https://docs.docker.com/go/dockerfile/rule/undefined-var/",
);
pub const INVALID_DEFAULT_ARG_IN_FROM: Rule = rule(
    "InvalidDefaultArgInFrom",
    "Default value for global ARG results in an empty or invalid base image name",
    "https://docs.docker.com/go/dockerfile/rule/invalid-default-arg-in-from/",
);
/// BuildKit gives this rule no documentation page.
pub const INVALID_BASE_IMAGE_PLATFORM: Rule = rule(
    "InvalidBaseImagePlatform",
    "Base image platform does not match expected target platform",
    "",
);
pub const EXPOSE_INVALID_FORMAT: Rule = rule(
    "ExposeInvalidFormat",
    "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release",
    "https://docs.docker.com/go/dockerfile/rule/expose-invalid-format/",
);

/// Every rule checked here.
pub const RULES: &[Rule] = &[
    STAGE_NAME_CASING,
    FROM_AS_CASING,
    NO_EMPTY_CONTINUATION,
    CONSISTENT_INSTRUCTION_CASING,
    DUPLICATE_STAGE_NAME,
    RESERVED_STAGE_NAME,
    JSON_ARGS_RECOMMENDED,
    MAINTAINER_DEPRECATED,
    UNDEFINED_ARG_IN_FROM,
    WORKDIR_RELATIVE_PATH,
    MULTIPLE_INSTRUCTIONS_DISALLOWED,
    LEGACY_KEY_VALUE_FORMAT,
    REDUNDANT_TARGET_PLATFORM,
    SECRETS_USED_IN_ARG_OR_ENV,
    FROM_PLATFORM_FLAG_CONST_DISALLOWED,
    COPY_IGNORED_FILE,
    INVALID_DEFINITION_DESCRIPTION,
    EXPOSE_PROTO_CASING,
    EXPOSE_INVALID_FORMAT,
    UNDEFINED_VAR,
    INVALID_DEFAULT_ARG_IN_FROM,
    INVALID_BASE_IMAGE_PLATFORM,
];

/// One warning: which rule, BuildKit's message, and where (1-based line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub rule: &'static Rule,
    pub detail: String,
    pub loc: Loc,
}

/// What the linter knows of the context's ignore file.
pub struct Ignore<'a> {
    /// The effective patterns, one a line (exceptions keep their `!`).
    pub patterns: &'a str,
    /// Whether a context path (slash-separated, relative) is excluded.
    pub excluded: &'a dyn Fn(&str) -> bool,
}

/// What a check needs besides the Dockerfile.
#[derive(Default)]
pub struct Options<'a> {
    /// The target stage's name (empty: the last stage).
    pub target: &'a str,
    /// Build args (`BUILDKIT_DOCKERFILE_CHECK` replaces the file's `# check=`).
    pub build_args: Option<&'a BTreeMap<String, String>>,
    /// `None`: no ignore file (`CopyIgnoredFile` never fires).
    pub ignore: Option<Ignore<'a>>,
    /// Warnings of the rules only planning can check (`UndefinedVar`,
    /// `InvalidDefaultArgInFrom`, `InvalidBaseImagePlatform`), before the
    /// `# check=` settings apply.
    pub planned: &'a [Warning],
}

/// The result of a check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// By line, then message.
    pub warnings: Vec<Warning>,
    /// `check=error=true` and some warning: BuildKit fails the build with
    /// this message (`lint violation found for rules: A, B`).
    pub error: Option<String>,
}

/// `# check=` settings.
#[derive(Debug, Default, Clone)]
struct Config {
    skip_all: bool,
    skip: BTreeSet<String>,
    error: bool,
    experimental_all: bool,
    experimental: BTreeSet<String>,
}

impl Config {
    fn parse(value: &str) -> Config {
        let mut c = Config::default();
        // `skip=A,B;error=true // a remark`: the first word is the setting.
        let value = value.split_whitespace().next().unwrap_or("");
        for part in value.split(';') {
            let Some((key, v)) = part.split_once('=') else {
                continue;
            };
            let list = || v.split(',').map(|s| s.trim().to_string());
            match key.trim().to_ascii_lowercase().as_str() {
                "skip" => {
                    for r in list() {
                        if r.eq_ignore_ascii_case("all") {
                            c.skip_all = true;
                        } else {
                            c.skip.insert(r);
                        }
                    }
                }
                "error" => c.error = v.trim().eq_ignore_ascii_case("true"),
                "experimental" => {
                    for r in list() {
                        if r.eq_ignore_ascii_case("all") {
                            c.experimental_all = true;
                        } else {
                            c.experimental.insert(r);
                        }
                    }
                }
                _ => {}
            }
        }
        c
    }

    fn enabled(&self, rule: &Rule) -> bool {
        if rule.experimental && !self.experimental_all && !self.experimental.contains(rule.name) {
            return false;
        }
        !self.skip_all && !self.skip.contains(rule.name)
    }
}

/// The parser directives (the leading `# key=value` lines): how many lines
/// they take, and the value of `check`.
fn directives(text: &str) -> (usize, Option<String>) {
    let mut check = None;
    let mut count = 0;
    for line in text.lines() {
        let Some(body) = line.trim().strip_prefix('#') else {
            break;
        };
        let Some((key, value)) = body.split_once('=') else {
            break;
        };
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            break;
        }
        if key.eq_ignore_ascii_case("check") && check.is_none() {
            check = Some(value.trim().to_string());
        }
        count += 1;
    }
    (count, check)
}

struct Linter<'a> {
    lines: Vec<&'a str>,
    /// Lines the parser directives take (never comments of an instruction).
    directives: usize,
    config: Config,
    out: Vec<Warning>,
}

impl Linter<'_> {
    /// The comment lines right above `line` (1-based), nearest last.
    fn comments_above(&self, line: usize) -> Vec<&str> {
        let mut out = Vec::new();
        let mut i = line.saturating_sub(1);
        while i > self.directives {
            let l = self.lines[i - 1].trim();
            match l.strip_prefix('#') {
                Some(c) => out.push(c.trim()),
                None => break,
            }
            i -= 1;
        }
        out.reverse();
        out
    }

    fn run(&mut self, rule: &'static Rule, loc: Loc, detail: String) {
        if !self.config.enabled(rule) {
            return;
        }
        // `# check=skip=RULE` right above the instruction: only for it.
        for c in self.comments_above(loc.line) {
            if let Some((key, value)) = c.split_once('=') {
                if key.trim().eq_ignore_ascii_case("check") {
                    let local = Config::parse(value);
                    if local.skip_all || local.skip.contains(rule.name) {
                        return;
                    }
                }
            }
        }
        self.out.push(Warning { rule, detail, loc });
    }
}

/// The keyword of an instruction as written (the first word of its source).
fn keyword(source: &str) -> &str {
    source.split_whitespace().next().unwrap_or("")
}

fn self_consistent(s: &str) -> bool {
    s == s.to_lowercase() || s == s.to_uppercase()
}

/// Checks `df`, parsed from `text`, with BuildKit's lint rules.
pub fn check(text: &str, df: &Dockerfile, options: &Options<'_>) -> Report {
    let (directive_lines, directive) = directives(text);
    let config = match options
        .build_args
        .and_then(|a| a.get("BUILDKIT_DOCKERFILE_CHECK"))
    {
        Some(v) => Config::parse(v),
        None => directive.map(|v| Config::parse(&v)).unwrap_or_default(),
    };
    let mut l = Linter {
        lines: text.split('\n').collect(),
        directives: directive_lines,
        config,
        out: Vec::new(),
    };
    empty_continuations(&mut l, text, df.escape);
    casing(&mut l, df);
    stage_names(&mut l, df);
    from_lines(&mut l, df);
    definitions(&mut l, df);
    let needed = needed_stages(df, options.target);
    for stage in &df.stages {
        parsed_rules(&mut l, stage);
        if needed.contains(&stage.index) {
            dispatched_rules(&mut l, df, stage, options.ignore.as_ref());
        }
    }
    for w in options.planned {
        l.run(w.rule, w.loc, w.detail.clone());
    }
    let mut warnings = l.out;
    warnings.sort_by(|a, b| (a.loc.line, &a.detail).cmp(&(b.loc.line, &b.detail)));
    warnings.dedup();
    let error = (l.config.error && !warnings.is_empty()).then(|| {
        let names: BTreeSet<&str> = warnings.iter().map(|w| w.rule.name).collect();
        format!(
            "lint violation found for rules: {}",
            names.into_iter().collect::<Vec<_>>().join(", ")
        )
    });
    Report { warnings, error }
}

/// `NoEmptyContinuation`: a blank line inside a continued instruction, at
/// the line the instruction goes on.
fn empty_continuations(l: &mut Linter<'_>, text: &str, escape: char) {
    let mut continued = false;
    let mut blank = false;
    let mut found = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim();
        if continued {
            if trimmed.is_empty() {
                blank = true;
                continue;
            }
            // Comment lines inside a continuation are skipped (Docker's parser).
            if trimmed.starts_with('#') {
                continue;
            }
            if blank {
                found.push(i + 1);
            }
        } else if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        blank = false;
        continued = line.trim_end().ends_with(escape);
    }
    for line in found {
        l.run(
            &NO_EMPTY_CONTINUATION,
            Loc { line, column: 1 },
            "Empty continuation line".into(),
        );
    }
}

/// `ConsistentInstructionCasing`: the stages' keywords (global ARGs are not
/// counted, as in BuildKit) against the majority.
fn casing(l: &mut Linter<'_>, df: &Dockerfile) {
    let mut words: Vec<(&str, Loc)> = Vec::new();
    for stage in &df.stages {
        words.push((keyword(&stage.from.source), stage.from.loc));
        for ins in &stage.instructions {
            words.push((keyword(&ins.source), ins.loc));
        }
    }
    let (mut lower, mut upper) = (0, 0);
    for (w, _) in &words {
        if self_consistent(w) {
            if *w == w.to_lowercase() {
                lower += 1;
            } else {
                upper += 1;
            }
        }
    }
    let majority_lower = lower > upper;
    for (w, loc) in words {
        let wrong = if majority_lower {
            (w != w.to_lowercase()).then_some("lowercase")
        } else {
            (w != w.to_uppercase()).then_some("uppercase")
        };
        if let Some(casing) = wrong {
            l.run(
                &CONSISTENT_INSTRUCTION_CASING,
                loc,
                format!("Command '{w}' should match the case of the command majority ({casing})"),
            );
        }
    }
}

/// The words of a FROM line: (flags, image, `AS` keyword, name as written).
fn from_words(source: &str) -> (Vec<&str>, Option<&str>, Option<&str>, Option<&str>) {
    let mut words = source.split_whitespace().skip(1);
    let mut flags = Vec::new();
    let mut image = None;
    for w in words.by_ref() {
        if w.starts_with("--") {
            flags.push(w);
        } else {
            image = Some(w);
            break;
        }
    }
    let as_ = words.next();
    let name = words.next();
    (flags, image, as_, name)
}

fn stage_names(l: &mut Linter<'_>, df: &Dockerfile) {
    let mut seen = BTreeSet::new();
    for stage in &df.stages {
        let Some(name) = &stage.name else { continue };
        let loc = stage.from.loc;
        let (_, _, as_, written) = from_words(&stage.from.source);
        if let Some(written) = written {
            if written != written.to_lowercase() {
                l.run(
                    &STAGE_NAME_CASING,
                    loc,
                    format!("Stage name '{written}' should be lowercase"),
                );
            }
        }
        if let Some(as_) = as_ {
            let from = keyword(&stage.from.source);
            let mismatch = (from == from.to_uppercase() && as_ != as_.to_uppercase())
                || (from == from.to_lowercase() && as_ != as_.to_lowercase());
            if mismatch {
                l.run(
                    &FROM_AS_CASING,
                    loc,
                    format!("'{as_}' and '{from}' keywords' casing do not match"),
                );
            }
        }
        if name == "scratch" || name == "context" {
            l.run(
                &RESERVED_STAGE_NAME,
                loc,
                format!("Stage name should not use the same name as reserved stage {name:?}"),
            );
        }
        if !seen.insert(name.clone()) {
            l.run(
                &DUPLICATE_STAGE_NAME,
                loc,
                format!("Duplicate stage name {name:?}, stage names should be unique"),
            );
        }
    }
}

/// The ARG and builtin names a FROM may use.
const PLATFORM_ARGS: &[&str] = &[
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
];

/// Names of the variables `word` refers to (`$NAME`, `${NAME...}`).
fn variables(word: &str, escape: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        if c == escape {
            chars.next();
            continue;
        }
        if c != '$' {
            continue;
        }
        let braced = chars.peek() == Some(&'{');
        if braced {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

fn from_lines(l: &mut Linter<'_>, df: &Dockerfile) {
    let declared: BTreeSet<&str> = df
        .global_args
        .iter()
        .flat_map(|a| a.value.iter().map(|d| d.name.as_str()))
        .chain(PLATFORM_ARGS.iter().copied())
        .collect();
    let options: Vec<&str> = declared.iter().copied().collect();
    for stage in &df.stages {
        let loc = stage.from.loc;
        let mut used = variables(&stage.from.value.image, df.escape);
        if let Some(platform) = &stage.from.value.platform {
            used.extend(variables(platform, df.escape));
            if platform == "$TARGETPLATFORM" || platform == "${TARGETPLATFORM}" {
                l.run(
                    &REDUNDANT_TARGET_PLATFORM,
                    loc,
                    format!("Setting platform to predefined {platform} in FROM is redundant as this is the default behavior"),
                );
            }
            if !platform.contains('$') {
                let mut parts = platform.split('/');
                let os = parts.next().unwrap_or("");
                let arch = parts.next().unwrap_or("");
                let name = stage.name.as_deref().unwrap_or("");
                let named = (!os.is_empty() && name.contains(os))
                    || (!arch.is_empty() && name.contains(arch));
                if !os.is_empty() && !named {
                    l.run(
                        &FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                        loc,
                        format!("FROM --platform flag should not use constant value {platform:?}"),
                    );
                }
            }
        }
        let mut reported = BTreeSet::new();
        for name in used {
            if declared.contains(name.as_str()) || !reported.insert(name.clone()) {
                continue;
            }
            let detail = match crate::suggest::closest(&name, &options, true) {
                Some(s) => format!("FROM argument '{name}' is not declared (did you mean {s}?)"),
                None => format!("FROM argument '{name}' is not declared"),
            };
            l.run(&UNDEFINED_ARG_IN_FROM, loc, detail);
        }
    }
}

/// `InvalidDefinitionDescription` (experimental): a comment right above an
/// ARG or a named FROM must start with the name it describes.
fn definitions(l: &mut Linter<'_>, df: &Dockerfile) {
    let check = |l: &mut Linter<'_>, loc: Loc, what: &str, names: Vec<&str>| {
        let comments: Vec<String> = l
            .comments_above(loc.line)
            .into_iter()
            .filter(|c| !c.is_empty() && !c.to_ascii_lowercase().starts_with("check="))
            .map(str::to_string)
            .collect();
        // Parser directives at the top of the file are not descriptions.
        let Some(first) = comments.first() else {
            return;
        };
        let word = first.split_whitespace().next().unwrap_or("");
        if names.contains(&word) {
            return;
        }
        let shown = match names.as_slice() {
            [one] => one.to_string(),
            _ => "<arg_key>".to_string(),
        };
        l.run(
            &INVALID_DEFINITION_DESCRIPTION,
            loc,
            format!("Comment for {what} should follow the format: `# {shown} <description>`"),
        );
    };
    let args = df
        .global_args
        .iter()
        .map(|a| (a.loc, a.value.iter().map(|d| d.name.as_str()).collect()))
        .chain(df.stages.iter().flat_map(|s| {
            s.instructions.iter().filter_map(|i| match &i.value {
                Instruction::Arg(decls) => {
                    Some((i.loc, decls.iter().map(|d| d.name.as_str()).collect()))
                }
                _ => None,
            })
        }));
    for (loc, names) in args.collect::<Vec<(Loc, Vec<&str>)>>() {
        check(l, loc, "ARG", names);
    }
    for stage in &df.stages {
        if let Some(name) = &stage.name {
            check(l, stage.from.loc, "FROM", vec![name.as_str()]);
        }
    }
}

/// Rules BuildKit checks when it parses the instructions (every stage).
fn parsed_rules(l: &mut Linter<'_>, stage: &Stage) {
    for ins in &stage.instructions {
        if let Instruction::Maintainer(_) = ins.value {
            l.run(
                &MAINTAINER_DEPRECATED,
                ins.loc,
                "Maintainer instruction is deprecated in favor of using label".into(),
            );
        }
    }
}

/// The stages the target needs: the target, the stages it is built FROM, and
/// those COPY --from and RUN --mount from= name (transitively).
fn needed_stages(df: &Dockerfile, target: &str) -> BTreeSet<usize> {
    let find = |name: &str| -> Option<usize> {
        let name = name.to_lowercase();
        df.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(name.as_str()))
            .map(|s| s.index)
            .or_else(|| name.parse::<usize>().ok().filter(|i| *i < df.stages.len()))
    };
    let target = if target.is_empty() {
        df.stages.len().checked_sub(1)
    } else {
        find(target)
    };
    let mut needed = BTreeSet::new();
    let mut todo: Vec<usize> = target.into_iter().collect();
    while let Some(i) = todo.pop() {
        if !needed.insert(i) {
            continue;
        }
        let stage = &df.stages[i];
        let mut refs = Vec::new();
        if let Some(j) = find(&stage.from.value.image).filter(|j| *j < i) {
            refs.push(j);
        }
        for ins in &stage.instructions {
            match &ins.value {
                Instruction::Copy(c) | Instruction::Add(c) => {
                    if let Some(v) = c.flag("from").and_then(|f| f.value.as_deref()) {
                        refs.extend(find(v));
                    }
                }
                Instruction::Run(r) => {
                    for f in r.flags.iter().filter(|f| f.name == "mount") {
                        let v = f.value.as_deref().unwrap_or("");
                        for part in v.split(',') {
                            if let Some(from) = part.strip_prefix("from=") {
                                refs.extend(find(from));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        todo.extend(refs);
    }
    needed
}

/// The stage `stage` is built FROM, if it is one of the Dockerfile's.
fn base_stage<'d>(df: &'d Dockerfile, stage: &Stage) -> Option<&'d Stage> {
    let image = stage.from.value.image.to_lowercase();
    df.stages[..stage.index]
        .iter()
        .rev()
        .find(|s| s.name.as_deref() == Some(image.as_str()))
}

/// Whether `stage` or a stage it is built on sets what `pred` looks for.
fn chain_sets(df: &Dockerfile, stage: &Stage, pred: &dyn Fn(&Instruction) -> bool) -> bool {
    let mut s = Some(stage);
    while let Some(st) = s {
        if st.instructions.iter().any(|i| pred(&i.value)) {
            return true;
        }
        s = base_stage(df, st);
    }
    false
}

/// Secret-looking names: an `_`-separated part is a secret word, and none is
/// an allowed one (BuildKit's word lists).
fn secret_name(key: &str) -> bool {
    const DENY: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    const ALLOW: &[&str] = &["public", "file", "version"];
    let parts: Vec<String> = key.split('_').map(|p| p.to_lowercase()).collect();
    let any = |list: &[&str]| parts.iter().any(|p| list.contains(&p.as_str()));
    any(DENY) && !any(ALLOW)
}

/// Rules BuildKit checks while it dispatches a stage the target needs.
fn dispatched_rules(l: &mut Linter<'_>, df: &Dockerfile, stage: &Stage, ignore: Option<&Ignore>) {
    // A WORKDIR set to an absolute path by this stage or a stage it is built
    // on, so far.
    let mut workdir_set = base_stage(df, stage)
        .is_some_and(|b| chain_sets(df, b, &|i| matches!(i, Instruction::Workdir(_))));
    let inherited_shell = base_stage(df, stage)
        .is_some_and(|b| chain_sets(df, b, &|i| matches!(i, Instruction::Shell(_))));
    let mut shell_set = inherited_shell;
    let mut once: BTreeMap<&str, Loc> = BTreeMap::new();
    for ins in &stage.instructions {
        let kw = keyword(&ins.source);
        match &ins.value {
            Instruction::Env(pairs) | Instruction::Label(pairs) => {
                let first = ins.source.split_whitespace().nth(1).unwrap_or("");
                if !first.contains('=') {
                    let name = ins.value.keyword();
                    l.run(
                        &LEGACY_KEY_VALUE_FORMAT,
                        ins.loc,
                        format!("\"{name} key=value\" should be used instead of legacy \"{name} key value\" format"),
                    );
                }
                if matches!(ins.value, Instruction::Env(_)) {
                    for (key, _) in pairs {
                        if secret_name(key) {
                            l.run(
                                &SECRETS_USED_IN_ARG_OR_ENV,
                                ins.loc,
                                format!("Do not use ARG or ENV instructions for sensitive data (ENV {key:?})"),
                            );
                        }
                    }
                }
            }
            Instruction::Arg(decls) => {
                for d in decls {
                    if secret_name(&d.name) {
                        l.run(
                            &SECRETS_USED_IN_ARG_OR_ENV,
                            ins.loc,
                            format!(
                                "Do not use ARG or ENV instructions for sensitive data (ARG {:?})",
                                d.name
                            ),
                        );
                    }
                }
            }
            Instruction::Workdir(path) => {
                if !workdir_set && !path.starts_with('/') && !path.starts_with('$') {
                    l.run(
                        &WORKDIR_RELATIVE_PATH,
                        ins.loc,
                        format!("Relative workdir {path:?} can have unexpected results if the base image changes"),
                    );
                }
                workdir_set = true;
            }
            Instruction::Shell(_) => shell_set = true,
            Instruction::Cmd(form) | Instruction::Entrypoint(form) => {
                if let Some(previous) = once.insert(ins.value.keyword(), ins.loc) {
                    l.run(
                        &MULTIPLE_INSTRUCTIONS_DISALLOWED,
                        previous,
                        format!("Multiple {} instructions should not be used in the same stage because only the last one will be used", ins.value.keyword()),
                    );
                }
                if matches!(form, CommandForm::Shell(_)) && !shell_set {
                    l.run(
                        &JSON_ARGS_RECOMMENDED,
                        ins.loc,
                        format!("JSON arguments recommended for {kw} to prevent unintended behavior related to OS signals"),
                    );
                }
            }
            Instruction::Healthcheck(_) => {
                if let Some(previous) = once.insert("HEALTHCHECK", ins.loc) {
                    l.run(
                        &MULTIPLE_INSTRUCTIONS_DISALLOWED,
                        previous,
                        "Multiple HEALTHCHECK instructions should not be used in the same stage because only the last one will be used".into(),
                    );
                }
            }
            Instruction::Expose(text) => {
                for port in text.split_whitespace() {
                    if port.contains(':') {
                        l.run(
                            &EXPOSE_INVALID_FORMAT,
                            ins.loc,
                            format!("EXPOSE instruction should not define an IP address or host-port mapping, found '{port}'"),
                        );
                    } else if let Some((_, proto)) = port.split_once('/') {
                        if proto != proto.to_lowercase() {
                            l.run(
                                &EXPOSE_PROTO_CASING,
                                ins.loc,
                                format!("Defined protocol '{port}' in EXPOSE instruction should be lowercase"),
                            );
                        }
                    }
                }
            }
            Instruction::Copy(spec) | Instruction::Add(spec) => {
                let Some(ignore) = ignore else { continue };
                if spec.flag("from").is_some() {
                    continue;
                }
                let has_exceptions = ignore.patterns.lines().any(|p| p.starts_with('!'));
                if has_exceptions {
                    continue;
                }
                let verb = if matches!(ins.value, Instruction::Add(_)) {
                    "Add"
                } else {
                    "Copy"
                };
                for src in &spec.sources {
                    let src = src.value.as_str();
                    if src.contains('$') || src.contains("://") || src.starts_with("git@") {
                        continue;
                    }
                    let cleaned = clean(src);
                    let ignored = if cleaned == "." || cleaned == "/" {
                        ignore
                            .patterns
                            .lines()
                            .any(|p| matches!(p, "*" | "**" | "**/*"))
                    } else {
                        (ignore.excluded)(cleaned.trim_start_matches('/'))
                    };
                    if ignored {
                        l.run(
                            &COPY_IGNORED_FILE,
                            ins.loc,
                            format!("Attempting to {verb} file {cleaned:?} that is excluded by .dockerignore"),
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

/// A path cleaned lexically (`./a/../b/` -> `b`), as Go's `filepath.Clean`.
fn clean(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lint(text: &str) -> Vec<(usize, &'static str, String)> {
        let df = crate::parse(text, "Dockerfile").unwrap();
        check(text, &df, &Options::default())
            .warnings
            .into_iter()
            .map(|w| (w.loc.line, w.rule.name, w.detail))
            .collect()
    }

    #[test]
    fn secret_names_follow_buildkits_word_lists() {
        assert!(secret_name("SECRET_PASSPHRASE"));
        assert!(secret_name("super_duper_secret_token"));
        assert!(secret_name("apikey"));
        assert!(!secret_name("sunflower"));
        assert!(!secret_name("SECRET_PASSPHRASE_FILE"));
        assert!(!secret_name("AUTH_MODULE_VERSION"));
        assert!(!secret_name("PUBLIC_KEY"));
    }

    #[test]
    fn clean_is_go_filepath_clean() {
        assert_eq!(clean("./Dockerfile"), "Dockerfile");
        assert_eq!(clean("."), ".");
        assert_eq!(clean("/"), "/");
        assert_eq!(clean("a/../b/"), "b");
    }

    #[test]
    fn a_local_skip_comment_skips_only_its_instruction() {
        let got =
            lint("FROM scratch\n# check=skip=MaintainerDeprecated\nMAINTAINER a\nMAINTAINER b\n");
        assert_eq!(
            got,
            vec![(
                4,
                "MaintainerDeprecated",
                "Maintainer instruction is deprecated in favor of using label".to_string()
            )]
        );
    }
}
