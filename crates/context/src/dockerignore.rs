//! `.dockerignore` parsing and matching for build contexts.
//!
//! The daemon must send a build exactly the files `docker build` (BuildKit)
//! would send, and the effective pattern list is part of cache keys, so this
//! ports Docker's rules rather than gitignore's:
//!
//! * Reading follows `moby/patternmatcher/ignorefile.ReadAll`: a UTF-8 BOM is
//!   stripped from the first line, a line whose first byte is `#` is a comment
//!   (checked *before* trimming, so `  #x` is the pattern `#x`), lines are
//!   trimmed, a leading `!` marks an exception, and the rest is cleaned like
//!   Go's `filepath.Clean` with a leading `/` dropped (everything is anchored
//!   at the context root).
//! * Compiling follows `patternmatcher.New` and `Pattern.compile`: the pattern
//!   is trimmed and cleaned again, a lone `!` is an error, syntax is checked
//!   with Go's `filepath.Match` rules, and the pattern is translated to the very
//!   regexp string upstream builds (`*` → `[^/]*`, `?` → `[^/]`, `**/` →
//!   `(.*/)?`, trailing `**` → `.*`), including its exact/prefix/suffix fast
//!   paths, whose semantics differ from the regexp (`**file` matches `myfile`).
//!   That regexp is read by a parser of Go's RE2 syntax (`regexp` below) into
//!   a `regex-syntax` HIR that regex-automata's meta engine matches, so
//!   upstream's quirks are kept: in a wildcard pattern
//!   `^` is an anchor, `|` an alternation (upstream fails to escape `|`, `{`,
//!   `}`, so `*|` matches everything) and `{2}` a repetition, `\d` is a digit
//!   class, `*` inside `[...]` produces the odd class upstream produces,
//!   `[[:alpha:]]` is a POSIX class and `**` does not cross a newline.
//! * Matching follows `PatternMatcher.MatchesOrParentMatches`: a pattern
//!   matches a path if it matches the path or any parent directory of it, and
//!   the last matching pattern decides (exceptions re-include).
//! * [`DockerIgnore::may_reinclude_below`] follows the directory-skipping
//!   shortcut of fsutil's `filterFS.Walk` (BuildKit's context transfer).
//!
//! Deliberate differences: every pattern error is reported by
//! [`DockerIgnore::parse`] with its line number (upstream compiles regexps
//! lazily, so it fails the transfer mid-way, or never if the bad pattern is
//! an exception that is never consulted); Unicode class escapes (`\p{..}`)
//! and a counted repetition of a repeated item (only reachable through
//! `\Q\E`) are rejected rather than supported; lines are not limited to
//! 64 KiB; the context root itself is never excluded; only Unix path rules
//! apply.

use std::borrow::Cow;
use std::fmt;

/// fsutil's `patternChars` (Unix): an exception containing one of these
/// outside a trailing `/*` or `/**` may match anywhere, so no excluded
/// directory can be skipped.
const WALK_PATTERN_CHARS: &[char] = &['*', '[', ']', '?', '^', '\\'];

/// A syntax error in one line of a `.dockerignore` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// 1-based line in the `.dockerignore` file.
    pub line: usize,
    /// The line as written, trimmed.
    pub pattern: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: bad pattern {:?}: {}",
            self.line, self.pattern, self.message
        )
    }
}

impl std::error::Error for PatternError {}

impl PatternError {
    /// What is wrong, without any text of the line (the daemon may have read
    /// the file with rights its user lacks): what precedes a quoted fragment.
    #[must_use]
    pub fn redacted_message(&self) -> String {
        let head = self.message.split('`').next().unwrap_or_default().trim();
        format!("malformed pattern ({head})")
    }
}

/// How many parsed ignore files [`DockerIgnore::parse_cached`] keeps.
pub const PARSED_CACHE_ENTRIES: usize = 256;

/// A compiled `.dockerignore`: decides which context paths are excluded.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    rules: Vec<Rule>,
    /// Some pattern starts with `!`.
    has_exceptions: bool,
    /// Some exception has a wildcard before its trailing glob (fsutil then
    /// walks every excluded directory).
    exception_has_wildcards: bool,
}

impl DockerIgnore {
    /// [`DockerIgnore::parse`], remembered by the text's digest: compiling the
    /// patterns' regexes costs about 50 µs a wildcard pattern, and every build
    /// and dirty check of a project reads the same file. Bounded: at most
    /// [`PARSED_CACHE_ENTRIES`] files are remembered.
    pub fn parse_cached(text: &str) -> Result<DockerIgnore, PatternError> {
        static PARSED: std::sync::OnceLock<
            parking_lot::Mutex<std::collections::HashMap<blake3::Hash, DockerIgnore>>,
        > = std::sync::OnceLock::new();
        let parsed = PARSED.get_or_init(Default::default);
        let digest = blake3::hash(text.as_bytes());
        if let Some(hit) = parsed.lock().get(&digest) {
            return Ok(hit.clone());
        }
        let fresh = DockerIgnore::parse(text)?;
        let mut parsed = parsed.lock();
        if parsed.len() >= PARSED_CACHE_ENTRIES {
            parsed.clear();
        }
        parsed.insert(digest, fresh.clone());
        Ok(fresh)
    }

    /// Parses the text of a `.dockerignore` file, compiling every pattern.
    ///
    /// # Errors
    ///
    /// The first line whose pattern is malformed (a lone `!`, an unclosed
    /// `[`, a trailing `\`, a class or escape Docker's matcher rejects).
    pub fn parse(text: &str) -> Result<DockerIgnore, PatternError> {
        let mut rules = Vec::new();
        for (index, raw) in text.split('\n').enumerate() {
            let first = index == 0;
            let Some(pattern) = read_line(raw, first) else {
                continue;
            };
            let error = |message: String| PatternError {
                line: index + 1,
                pattern: strip_bom(raw, first).trim().to_string(),
                message,
            };
            if let Some(rule) = Rule::compile(&pattern).map_err(error)? {
                rules.push(rule);
            }
        }
        Ok(Self::from_rules(rules))
    }

    /// An ignore file with no patterns: nothing is excluded.
    #[must_use]
    pub fn empty() -> DockerIgnore {
        Self::default()
    }

    fn from_rules(rules: Vec<Rule>) -> DockerIgnore {
        let mut exceptions = rules.iter().filter(|r| r.exception).peekable();
        let has_exceptions = exceptions.peek().is_some();
        let exception_has_wildcards =
            exceptions.any(|r| r.walk_prefix.contains(WALK_PATTERN_CHARS));
        DockerIgnore {
            rules,
            has_exceptions,
            exception_has_wildcards,
        }
    }

    /// True if there are no effective patterns.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// True if `rel_path` (slash-separated, relative to the context root) is
    /// excluded: the last pattern matching it or one of its parent
    /// directories is not an exception.
    #[must_use]
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let path = clean_cow(rel_path);
        if path == "." {
            // Upstream refuses to exclude the context root itself.
            return false;
        }
        let parent = parent_dir(&path);
        // Walking backwards and stopping at the first match gives the same
        // answer as upstream's forward loop, where the last match wins.
        self.rules
            .iter()
            .rev()
            .find(|rule| rule.matches_or_parent_matches(&path, parent))
            .is_some_and(|rule| !rule.exception)
    }

    /// True when some exception (`!`) pattern could re-include something
    /// below directory `rel_dir`, so a walker must descend into an excluded
    /// directory instead of skipping it (as fsutil does).
    #[must_use]
    pub(crate) fn may_reinclude_below(&self, rel_dir: &str) -> bool {
        if !self.has_exceptions {
            return false;
        }
        if self.exception_has_wildcards {
            return true;
        }
        let dir = clean_cow(rel_dir);
        if dir == "." {
            return true;
        }
        self.rules
            .iter()
            .filter(|rule| rule.exception)
            .any(|rule| is_same_or_ancestor(&dir, &rule.walk_prefix))
    }

    /// Stable textual form of the effective patterns (for cache keys): one
    /// normalised pattern per line, each ending in `\n`, exceptions keeping
    /// their `!`.
    #[must_use]
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        for rule in &self.rules {
            if rule.exception {
                out.push('!');
            }
            out.push_str(&rule.text);
            out.push('\n');
        }
        out
    }
}

/// One compiled pattern line.
#[derive(Debug, Clone)]
struct Rule {
    /// Upstream's `cleanedPattern`: cleaned, without the leading `!`.
    text: String,
    /// A `!` line: matching paths are re-included.
    exception: bool,
    matcher: Matcher,
    /// fsutil's `patternWithoutTrailingGlob(text)`.
    walk_prefix: String,
}

/// How a rule tests one path, mirroring upstream's `matchType`.
#[derive(Debug, Clone)]
enum Matcher {
    /// `path == text` (upstream `exactMatch`).
    Exact,
    /// `text` without its trailing `**` is a prefix (upstream `prefixMatch`).
    Prefix,
    /// `text` without its leading `**` is a suffix (upstream `suffixMatch`).
    Suffix,
    /// A regexp that is only literal text.
    Literal(String),
    /// Any other regexp.
    Regex(regex_automata::meta::Regex),
}

/// Upstream's `matchType` as chosen by `Pattern.compile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchKind {
    Exact,
    Prefix,
    Suffix,
    Regexp,
}

impl Rule {
    /// `patternmatcher.New` for one pattern produced by [`read_line`];
    /// `None` for a pattern that trims to nothing.
    fn compile(read: &str) -> Result<Option<Rule>, String> {
        let trimmed = read.trim();
        if trimmed.is_empty() {
            return Ok(None);
        }
        // Cleaning again is what upstream does; it only matters for odd
        // exceptions such as `!../../a`, which cleans to the pattern `a`.
        let cleaned = clean(trimmed);
        let (exception, text) = match cleaned.strip_prefix('!') {
            Some("") => return Err(r#"illegal exclusion pattern: "!""#.to_string()),
            Some(rest) => (true, rest.to_string()),
            None => (false, cleaned),
        };
        validate_glob(&text).map_err(str::to_string)?;
        let matcher = Matcher::compile(&text)?;
        let walk_prefix = without_trailing_glob(&text).to_string();
        Ok(Some(Rule {
            text,
            exception,
            matcher,
            walk_prefix,
        }))
    }

    /// `MatchesOrParentMatches` for this one pattern: `path` is clean and
    /// `parent` is `filepath.Dir(path)` unless that is `.`.
    fn matches_or_parent_matches(&self, path: &str, parent: Option<&str>) -> bool {
        if self.matches(path) {
            return true;
        }
        let Some(parent) = parent else {
            return false;
        };
        // Every leading run of components of `parent`, as slices (upstream
        // splits on `/` and joins each prefix back).
        let mut prefixes = parent.match_indices('/').map(|(end, _)| &parent[..end]);
        prefixes.any(|prefix| self.matches(prefix)) || self.matches(parent)
    }

    /// Upstream's `Pattern.match`.
    fn matches(&self, path: &str) -> bool {
        // The fast paths compare bytes, as Go slices strings by byte.
        let text = self.text.as_bytes();
        match &self.matcher {
            Matcher::Exact => path == self.text,
            Matcher::Prefix => path.as_bytes().starts_with(&text[..text.len() - 2]),
            Matcher::Suffix => {
                let suffix = &text[2..];
                // `**/foo` also matches `foo` itself.
                path.as_bytes().ends_with(suffix)
                    || (suffix.first() == Some(&b'/') && path.as_bytes() == &suffix[1..])
            }
            Matcher::Literal(literal) => path == literal,
            Matcher::Regex(regex) => regex.is_match(path),
        }
    }
}

impl Matcher {
    /// Chooses the cheapest matcher with exactly upstream's semantics.
    fn compile(text: &str) -> Result<Matcher, String> {
        let (kind, regexp) = translate(text);
        Ok(match kind {
            MatchKind::Exact => Matcher::Exact,
            MatchKind::Prefix => Matcher::Prefix,
            MatchKind::Suffix => Matcher::Suffix,
            MatchKind::Regexp => {
                let parsed = regexp::Parsed::parse(&regexp)?;
                match parsed.literal() {
                    Some(literal) => Matcher::Literal(literal),
                    None => Matcher::Regex(parsed.compile()?),
                }
            }
        })
    }
}

/// `ignorefile.ReadAll` for one physical line; `None` for comments and
/// blank lines. The result still goes through [`Rule::compile`].
fn read_line(raw: &str, first: bool) -> Option<String> {
    // bufio.ScanLines drops the `\r` of a CRLF line ending.
    let line = strip_bom(raw.strip_suffix('\r').unwrap_or(raw), first);
    // The comment check comes before trimming, as upstream.
    if line.starts_with('#') {
        return None;
    }
    let line = line.trim();
    if line.is_empty() {
        return None;
    }
    let (invert, rest) = match line.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, line),
    };
    let mut pattern = String::with_capacity(line.len());
    if invert {
        pattern.push('!');
    }
    if !rest.is_empty() {
        let cleaned = clean(rest);
        // `/foo` means `foo`: everything is relative to the context root.
        let relative = match cleaned.strip_prefix('/') {
            Some(tail) if !tail.is_empty() => tail,
            _ => &cleaned,
        };
        pattern.push_str(relative);
    }
    Some(pattern)
}

fn strip_bom(line: &str, first: bool) -> &str {
    if first {
        line.strip_prefix('\u{feff}').unwrap_or(line)
    } else {
        line
    }
}

/// Go's `filepath.Clean` on Unix: the shortest equivalent path, lexically.
fn clean(path: &str) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|last| *last != "..") {
                    parts.pop();
                } else if !rooted {
                    // `..` can only pile up at the front of a relative path.
                    parts.push("..");
                }
            }
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// [`clean`] without allocating for the common, already-clean path.
fn clean_cow(path: &str) -> Cow<'_, str> {
    let body = path.strip_prefix('/').unwrap_or(path);
    let plainly_clean = path == "/"
        || (!body.is_empty()
            && body
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != ".."));
    if plainly_clean {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(clean(path))
    }
}

/// `filepath.Dir` of a clean path, or `None` where Go would return `.`.
fn parent_dir(path: &str) -> Option<&str> {
    match path.rfind('/') {
        None => None,
        Some(0) => Some("/"),
        Some(end) => Some(&path[..end]),
    }
}

/// fsutil's test `strings.HasPrefix(pattern+"/", dir+"/")`, without
/// allocating.
fn is_same_or_ancestor(dir: &str, pattern: &str) -> bool {
    pattern.starts_with(dir)
        && (pattern.len() == dir.len() || pattern.as_bytes()[dir.len()] == b'/')
}

/// fsutil's `patternWithoutTrailingGlob`.
fn without_trailing_glob(text: &str) -> &str {
    let text = text.strip_suffix("/**").unwrap_or(text);
    text.strip_suffix("/*").unwrap_or(text)
}

/// The syntax check upstream gets from `filepath.Match(pattern, ".")`: Go
/// validates the whole pattern, so this is a plain left-to-right scan.
fn validate_glob(pattern: &str) -> Result<(), &'static str> {
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.next().is_none() => return Err("trailing backslash"),
            '[' => validate_class(&mut chars)?,
            _ => {}
        }
    }
    Ok(())
}

/// Checks one `[...]` class after its `[`, as Go's `matchChunk` does.
fn validate_class(chars: &mut std::str::Chars<'_>) -> Result<(), &'static str> {
    if chars.as_str().starts_with('^') {
        chars.next();
    }
    let mut ranges = 0;
    loop {
        if ranges > 0 && chars.as_str().starts_with(']') {
            chars.next();
            return Ok(());
        }
        class_endpoint(chars, false)?;
        if chars.as_str().starts_with('-') {
            chars.next();
            class_endpoint(chars, true)?;
        }
        ranges += 1;
    }
}

/// Go's `getEsc`: one possibly escaped class character, which must not be
/// the last character of the pattern.
fn class_endpoint(chars: &mut std::str::Chars<'_>, range_end: bool) -> Result<(), &'static str> {
    match chars.next() {
        None => return Err("unclosed character class"),
        Some('-') => return Err("unescaped '-' in character class"),
        Some(']') if range_end => return Err("incomplete range in character class"),
        Some(']') => return Err("empty character class"),
        Some('\\') if chars.next().is_none() => return Err("trailing backslash"),
        Some(_) => {}
    }
    if chars.as_str().is_empty() {
        return Err("unclosed character class");
    }
    Ok(())
}

/// Upstream's `Pattern.compile` (Unix separator): the match kind and, for
/// [`MatchKind::Regexp`], the regexp string it builds.
fn translate(pattern: &str) -> (MatchKind, String) {
    // text/scanner skips a byte order mark at the start of its input.
    let body = pattern.strip_prefix('\u{feff}').unwrap_or(pattern);
    let mut re = String::from("^");
    let mut kind = MatchKind::Exact;
    let mut chars = body.chars().peekable();
    let mut index = 0;
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                // `**/` is treated as `**`.
                if chars.peek() == Some(&'/') {
                    chars.next();
                }
                if chars.peek().is_none() {
                    if kind == MatchKind::Exact {
                        kind = MatchKind::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = MatchKind::Regexp;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = MatchKind::Regexp;
                }
                if index == 0 {
                    kind = MatchKind::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = MatchKind::Regexp;
            }
            '?' => {
                re.push_str("[^/]");
                kind = MatchKind::Regexp;
            }
            // Upstream means to escape `.+()|{}$`, but its bitmap lookup
            // (`escapeBytes[b%8]&(1<<(b/8))` on a byte) only works below
            // 64, so `|`, `{` and `}` reach the regexp unescaped.
            '.' | '+' | '(' | ')' | '$' => {
                re.push('\\');
                re.push(c);
            }
            '\\' => match chars.next() {
                Some(next) => {
                    re.push('\\');
                    re.push(next);
                    kind = MatchKind::Regexp;
                }
                None => re.push('\\'),
            },
            '[' | ']' => {
                re.push(c);
                kind = MatchKind::Regexp;
            }
            _ => re.push(c),
        }
        index += 1;
    }
    if kind == MatchKind::Regexp {
        re.push('$');
    }
    (kind, re)
}

/// A parser for the subset of Go's RE2 syntax that [`translate`] can
/// produce, with Go's flags (`^`/`$` match only at the ends of the text, `.`
/// does not match `\n`, negated classes do, Perl classes and `\b` are
/// ASCII). It builds a `regex-syntax` HIR directly, since Rust's regexp
/// syntax differs from Go's (nested classes, `\<`, `\u`, octal escapes), and
/// regex-automata's meta engine matches it.
mod regexp {
    use regex_automata::meta::{self, Regex};
    use regex_syntax::hir::{Class, ClassUnicode, ClassUnicodeRange, Dot, Hir, Look, Repetition};

    const MAX_CHAR: u32 = char::MAX as u32;

    /// Go's limit on `{n,m}` counts.
    const MAX_REPEAT: u32 = 1000;

    /// A regexp parsed with Go's rules.
    pub(super) struct Parsed {
        /// The alternatives of the top-level `|`, each a sequence of items.
        alternatives: Vec<Vec<(Atom, Rep)>>,
    }

    impl Parsed {
        /// Parses `re`, failing like Go's `regexp.Compile` would (or on the
        /// few constructs not supported here).
        pub(super) fn parse(re: &str) -> Result<Parsed, String> {
            let mut parser = Parser {
                rest: re,
                atoms: Vec::new(),
                alternatives: Vec::new(),
            };
            parser.parse()?;
            let mut alternatives = parser.alternatives;
            alternatives.push(parser.atoms);
            Ok(Parsed { alternatives })
        }

        /// The text matched if the regexp is `^literal$`.
        pub(super) fn literal(&self) -> Option<String> {
            let [items] = self.alternatives.as_slice() else {
                return None;
            };
            let [(Atom::Look(Look::Start), Rep::ONE), body @ .., (Atom::Look(Look::End), Rep::ONE)] =
                items.as_slice()
            else {
                return None;
            };
            body.iter()
                .map(|item| match item {
                    (Atom::Char(c), Rep::ONE) => char::from_u32(*c),
                    _ => None,
                })
                .collect()
        }

        /// Compiles for regex-automata's meta engine; `is_match` is then Go's
        /// `Regexp.MatchString`.
        pub(super) fn compile(self) -> Result<Regex, String> {
            let alternatives = self.alternatives.into_iter().map(|items| {
                Hir::concat(
                    items
                        .into_iter()
                        .map(|(atom, rep)| rep.apply(atom.hir()))
                        .collect(),
                )
            });
            let hir = Hir::alternation(alternatives.collect());
            meta::Builder::new()
                .build_from_hir(&hir)
                .map_err(|err| format!("regexp too large to compile: {err}"))
        }
    }

    /// A class from inclusive code point ranges; surrogates are left out
    /// (no `char` is one, so they match nothing, as in Go).
    fn class(ranges: &[(u32, u32)]) -> ClassUnicode {
        let surrogate = |c: u32| (0xD800..=0xDFFF).contains(&c);
        ClassUnicode::new(ranges.iter().filter_map(|&(lo, hi)| {
            let lo = char::from_u32(if surrogate(lo) { 0xE000 } else { lo })?;
            let hi = char::from_u32(if surrogate(hi) { 0xD7FF } else { hi })?;
            // `ClassUnicodeRange::new` would swap reversed bounds.
            (lo <= hi).then(|| ClassUnicodeRange::new(lo, hi))
        }))
    }

    fn negated(mut set: ClassUnicode) -> ClassUnicode {
        set.negate();
        set
    }

    /// Go's Perl classes (ASCII only).
    fn perl_class(name: char) -> Option<ClassUnicode> {
        let ranges: &[(u32, u32)] = match name.to_ascii_lowercase() {
            'd' => &[(0x30, 0x39)],
            's' => &[(9, 10), (12, 13), (32, 32)],
            'w' => &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
            _ => return None,
        };
        let set = class(ranges);
        Some(if name.is_ascii_uppercase() {
            negated(set)
        } else {
            set
        })
    }

    /// Go's POSIX classes, `[:name:]` or negated `[:^name:]`.
    fn posix_class(name: &str) -> Option<ClassUnicode> {
        let inner = name.strip_prefix("[:")?.strip_suffix(":]")?;
        let (negate, inner) = match inner.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, inner),
        };
        let ranges: &[(u32, u32)] = match inner {
            "alnum" => &[(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
            "alpha" => &[(0x41, 0x5A), (0x61, 0x7A)],
            "ascii" => &[(0, 0x7F)],
            "blank" => &[(9, 9), (32, 32)],
            "cntrl" => &[(0, 0x1F), (0x7F, 0x7F)],
            "digit" => &[(0x30, 0x39)],
            "graph" => &[(0x21, 0x7E)],
            "lower" => &[(0x61, 0x7A)],
            "print" => &[(0x20, 0x7E)],
            "punct" => &[(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
            "space" => &[(9, 13), (32, 32)],
            "upper" => &[(0x41, 0x5A)],
            "word" => &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
            "xdigit" => &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
            _ => return None,
        };
        let set = class(ranges);
        Some(if negate { negated(set) } else { set })
    }

    /// A parsed regexp item before repetition is applied.
    enum Atom {
        /// A code point (possibly a surrogate, which matches nothing).
        Char(u32),
        Set(ClassUnicode),
        /// The `(.*/)` group of upstream's `**` translation.
        AnyDirs,
        /// `^`, `$`, `\b`, `\B` with Go's flags: text ends, ASCII words.
        Look(Look),
    }

    impl Atom {
        fn hir(self) -> Hir {
            match self {
                Atom::Char(c) => match char::from_u32(c) {
                    Some(c) => Hir::literal(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    None => Hir::fail(),
                },
                Atom::Set(set) => Hir::class(Class::Unicode(set)),
                // `.` under Go's default flags: anything but a newline.
                Atom::AnyDirs => Hir::concat(vec![
                    Rep { min: 0, max: None }.apply(Hir::dot(Dot::AnyCharExceptLF)),
                    Hir::literal(*b"/"),
                ]),
                Atom::Look(look) => Hir::look(look),
            }
        }
    }

    /// How often an atom repeats: `min` to `max` times (`None`: unbounded).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Rep {
        min: u32,
        max: Option<u32>,
    }

    impl Rep {
        const ONE: Rep = Rep {
            min: 1,
            max: Some(1),
        };

        /// `(x{inner}){outer}` as one repetition, where that is possible.
        fn nest(self, outer: Rep) -> Option<Rep> {
            if self == Rep::ONE {
                return Some(outer);
            }
            // `*`, `+` and `?` nest into one another.
            let simple = |r: Rep| r.min <= 1 && r.max.is_none_or(|max| max == 1);
            if !simple(self) || !simple(outer) {
                return None;
            }
            let max = self.max.and(outer.max);
            Some(Rep {
                min: self.min * outer.min,
                max,
            })
        }

        fn apply(self, sub: Hir) -> Hir {
            if self == Rep::ONE {
                return sub;
            }
            Hir::repetition(Repetition {
                min: self.min,
                max: self.max,
                greedy: true,
                sub: Box::new(sub),
            })
        }
    }

    struct Parser<'a> {
        rest: &'a str,
        /// The atoms of the alternative being parsed.
        atoms: Vec<(Atom, Rep)>,
        /// Finished alternatives before the last `|`.
        alternatives: Vec<Vec<(Atom, Rep)>>,
    }

    impl Parser<'_> {
        fn bump(&mut self) -> Option<char> {
            let c = self.rest.chars().next()?;
            self.rest = &self.rest[c.len_utf8()..];
            Some(c)
        }

        fn eat(&mut self, prefix: &str) -> bool {
            match self.rest.strip_prefix(prefix) {
                Some(rest) => {
                    self.rest = rest;
                    true
                }
                None => false,
            }
        }

        fn push(&mut self, atom: Atom) {
            self.atoms.push((atom, Rep::ONE));
        }

        fn parse(&mut self) -> Result<(), String> {
            let mut after_repeat = false;
            while let Some(c) = self.bump() {
                let mut repeated = true;
                match c {
                    '*' => self.repeat("*", Rep { min: 0, max: None }, after_repeat)?,
                    '+' => self.repeat("+", Rep { min: 1, max: None }, after_repeat)?,
                    '?' => self.repeat(
                        "?",
                        Rep {
                            min: 0,
                            max: Some(1),
                        },
                        after_repeat,
                    )?,
                    '{' => repeated = self.counted_repeat(after_repeat)?,
                    _ => {
                        repeated = false;
                        self.atom(c)?;
                    }
                }
                after_repeat = repeated;
            }
            Ok(())
        }

        /// Everything but repetition operators.
        fn atom(&mut self, c: char) -> Result<(), String> {
            match c {
                // The translation only ever opens the `(.*/)?` group.
                '(' if self.eat(".*/)") => self.push(Atom::AnyDirs),
                '(' | ')' => return Err(format!("unsupported regexp construct `{c}`")),
                '|' => {
                    let atoms = std::mem::take(&mut self.atoms);
                    self.alternatives.push(atoms);
                }
                '^' => self.push(Atom::Look(Look::Start)),
                '$' => self.push(Atom::Look(Look::End)),
                '.' => self.push(Atom::Set(negated(class(&[(10, 10)])))),
                '[' => {
                    let set = self.class()?;
                    self.push(Atom::Set(set));
                }
                '\\' => self.escape()?,
                _ => self.push(Atom::Char(c as u32)),
            }
            Ok(())
        }

        /// `{n}`, `{n,}` or `{n,m}` after its `{`; anything else makes the
        /// `{` a literal. Returns whether it was a repetition.
        fn counted_repeat(&mut self, after_repeat: bool) -> Result<bool, String> {
            let Some((min, max, rest)) = parse_count(self.rest) else {
                self.push(Atom::Char('{' as u32));
                return Ok(false);
            };
            let text = format!("{{{}", &self.rest[..self.rest.len() - rest.len()]);
            let too_big = |n: u32| n > MAX_REPEAT;
            if too_big(min) || max.is_some_and(too_big) || max.is_some_and(|max| min > max) {
                return Err(format!("invalid repeat count `{text}`"));
            }
            self.rest = rest;
            self.repeat(&text, Rep { min, max }, after_repeat)?;
            Ok(true)
        }

        fn repeat(&mut self, op: &str, rep: Rep, after_repeat: bool) -> Result<(), String> {
            // A trailing `?` only makes it non-greedy: no effect on yes/no.
            self.eat("?");
            if after_repeat {
                return Err(format!("invalid nested repetition operator `{op}`"));
            }
            let Some(last) = self.atoms.last_mut() else {
                return Err(format!("missing argument to repetition operator `{op}`"));
            };
            last.1 = last
                .1
                .nest(rep)
                .ok_or_else(|| format!("unsupported nested counted repetition `{op}`"))?;
            Ok(())
        }

        /// An escape outside a class, after its `\`.
        fn escape(&mut self) -> Result<(), String> {
            let c = self
                .bump()
                .ok_or("trailing backslash at end of expression")?;
            let atom = match c {
                'A' => Atom::Look(Look::Start),
                'z' => Atom::Look(Look::End),
                'b' => Atom::Look(Look::WordAscii),
                'B' => Atom::Look(Look::WordAsciiNegate),
                'Q' => {
                    // `\Q...\E` quotes everything up to `\E` or the end.
                    let (quoted, rest) = self.rest.split_once("\\E").unwrap_or((self.rest, ""));
                    self.rest = rest;
                    for q in quoted.chars() {
                        self.push(Atom::Char(q as u32));
                    }
                    return Ok(());
                }
                'p' | 'P' => return Err(format!("unsupported Unicode class escape `\\{c}`")),
                _ => match perl_class(c) {
                    Some(set) => Atom::Set(set),
                    None => Atom::Char(self.escaped_char(c)?),
                },
            };
            self.push(atom);
            Ok(())
        }

        /// Go's `parseEscape` after the `\` and `c` were consumed.
        fn escaped_char(&mut self, c: char) -> Result<u32, String> {
            let invalid = || format!("invalid escape sequence `\\{c}`");
            let octal = |d: char| matches!(d, '0'..='7');
            match c {
                // A lone `\1`..`\7` would be a backreference.
                '1'..='7' if !self.rest.starts_with(octal) => Err(invalid()),
                '0'..='7' => {
                    let mut value = c as u32 - '0' as u32;
                    for _ in 0..2 {
                        match self.rest.chars().next() {
                            Some(d) if octal(d) => {
                                value = value * 8 + (d as u32 - '0' as u32);
                                self.rest = &self.rest[1..];
                            }
                            _ => break,
                        }
                    }
                    Ok(value)
                }
                'x' => self.hex().ok_or_else(invalid),
                'a' => Ok(7),
                'f' => Ok(12),
                'n' => Ok(10),
                'r' => Ok(13),
                't' => Ok(9),
                'v' => Ok(11),
                c if c.is_ascii() && !c.is_ascii_alphanumeric() => Ok(c as u32),
                _ => Err(invalid()),
            }
        }

        /// `\xHH` or `\x{H...}` after the `x`.
        fn hex(&mut self) -> Option<u32> {
            if self.eat("{") {
                let end = self.rest.find('}')?;
                let digits = &self.rest[..end];
                if digits.is_empty() {
                    return None;
                }
                let mut value: u32 = 0;
                for d in digits.chars() {
                    value = value * 16 + d.to_digit(16)?;
                    if value > MAX_CHAR {
                        return None;
                    }
                }
                self.rest = &self.rest[end + 1..];
                Some(value)
            } else {
                let mut digits = self.rest.chars();
                let high = digits.next()?.to_digit(16)?;
                let low = digits.next()?.to_digit(16)?;
                self.rest = &self.rest[2..];
                Some(high * 16 + low)
            }
        }

        /// A class after its `[`, as Go's `parseClass` reads it.
        fn class(&mut self) -> Result<ClassUnicode, String> {
            let negate = self.eat("^");
            let mut set = ClassUnicode::empty();
            let mut first = true;
            loop {
                if self.rest.is_empty() {
                    return Err("missing closing ]".to_string());
                }
                // `]` right after `[` or `[^` is a literal.
                if !first && self.eat("]") {
                    break;
                }
                first = false;
                if let Some(named) = self.named_class()? {
                    set.union(&named);
                    continue;
                }
                if self.rest.starts_with("\\p") || self.rest.starts_with("\\P") {
                    return Err("unsupported Unicode class escape in class".to_string());
                }
                let perl = self.rest.strip_prefix('\\').and_then(|r| r.chars().next());
                if let Some(perl) = perl.and_then(perl_class) {
                    set.union(&perl);
                    self.rest = &self.rest[2..];
                    continue;
                }
                set.union(&class(&[self.class_range()?]));
            }
            Ok(if negate { negated(set) } else { set })
        }

        /// `[:name:]` inside a class, if the text has that shape.
        fn named_class(&mut self) -> Result<Option<ClassUnicode>, String> {
            if self.rest.len() <= 2 || !self.rest.starts_with("[:") {
                return Ok(None);
            }
            let Some(end) = self.rest[2..].find(":]") else {
                return Ok(None);
            };
            let name = &self.rest[..end + 4];
            let set = posix_class(name)
                .ok_or_else(|| format!("invalid character class range `{name}`"))?;
            self.rest = &self.rest[end + 4..];
            Ok(Some(set))
        }

        /// `a` or `a-z` inside a class.
        fn class_range(&mut self) -> Result<(u32, u32), String> {
            let start = self.rest;
            let lo = self.class_char()?;
            let mut hi = lo;
            // `a-]` is `a` and `-`.
            if self.rest.len() >= 2
                && self.rest.starts_with('-')
                && !self.rest[1..].starts_with(']')
            {
                self.rest = &self.rest[1..];
                hi = self.class_char()?;
                if hi < lo {
                    let used = &start[..start.len() - self.rest.len()];
                    return Err(format!("invalid character class range `{used}`"));
                }
            }
            Ok((lo, hi))
        }

        fn class_char(&mut self) -> Result<u32, String> {
            match self.bump() {
                None => Err("missing closing ]".to_string()),
                Some('\\') => {
                    let c = self
                        .bump()
                        .ok_or("trailing backslash at end of expression")?;
                    self.escaped_char(c)
                }
                Some(c) => Ok(c as u32),
            }
        }
    }

    /// Go's `parseRepeat` on the text after `{`: the counts and the rest if
    /// it reads `n}`, `n,}` or `n,m}`. Counts too big for Go come back as
    /// `u32::MAX`.
    fn parse_count(s: &str) -> Option<(u32, Option<u32>, &str)> {
        let (min, s) = parse_int(s)?;
        let (max, s) = match s.strip_prefix(',') {
            Some(after) if after.starts_with('}') => (None, after),
            Some(after) => {
                let (max, after) = parse_int(after)?;
                (Some(max), after)
            }
            None => (Some(min), s),
        };
        Some((min, max, s.strip_prefix('}')?))
    }

    /// Go's `parseInt`: decimal digits without a leading zero.
    fn parse_int(s: &str) -> Option<(u32, &str)> {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || (digits > 1 && s.starts_with('0')) {
            return None;
        }
        // Anything above Go's limit of 1000 is an error either way.
        let value = if digits > 4 {
            u32::MAX
        } else {
            s[..digits].parse().ok()?
        };
        Some((value, &s[digits..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use globset::GlobBuilder;

    fn ignore(lines: &[&str]) -> DockerIgnore {
        DockerIgnore::parse(&lines.join("\n")).expect("patterns parse")
    }

    /// Upstream's `MatchesExact`: no parent matching, no path cleaning.
    fn matches_exact(di: &DockerIgnore, path: &str) -> bool {
        di.rules
            .iter()
            .rev()
            .find(|rule| rule.matches(path))
            .is_some_and(|rule| !rule.exception)
    }

    fn error_of(text: &str) -> PatternError {
        DockerIgnore::parse(text).expect_err("pattern is rejected")
    }

    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Pass {
        Fail,
        Exact,
        Inexact,
    }

    /// patternmatcher's TestMatches table plus its Unix-only rows.
    const MATCHES: &[(&str, &str, Pass)] = &[
        ("**", "file", Pass::Exact),
        ("**", "file/", Pass::Exact),
        ("**/", "file", Pass::Exact),
        ("**/", "file/", Pass::Exact),
        ("**", "/", Pass::Exact),
        ("**/", "/", Pass::Exact),
        ("**", "dir/file", Pass::Exact),
        ("**/", "dir/file", Pass::Exact),
        ("**", "dir/file/", Pass::Exact),
        ("**/", "dir/file/", Pass::Exact),
        ("**/**", "dir/file", Pass::Exact),
        ("**/**", "dir/file/", Pass::Exact),
        ("dir/**", "dir/file", Pass::Exact),
        ("dir/**", "dir/file/", Pass::Exact),
        ("dir/**", "dir/dir2/file", Pass::Exact),
        ("dir/**", "dir/dir2/file/", Pass::Exact),
        ("**/dir", "dir", Pass::Exact),
        ("**/dir", "dir/file", Pass::Inexact),
        ("**/dir2/*", "dir/dir2/file", Pass::Exact),
        ("**/dir2/*", "dir/dir2/file/", Pass::Inexact),
        ("**/dir2/**", "dir/dir2/dir3/file", Pass::Exact),
        ("**/dir2/**", "dir/dir2/dir3/file/", Pass::Exact),
        ("**file", "file", Pass::Exact),
        ("**file", "dir/file", Pass::Exact),
        ("**/file", "dir/file", Pass::Exact),
        ("**file", "dir/dir/file", Pass::Exact),
        ("**/file", "dir/dir/file", Pass::Exact),
        ("**/file*", "dir/dir/file", Pass::Exact),
        ("**/file*", "dir/dir/file.txt", Pass::Exact),
        ("**/file*txt", "dir/dir/file.txt", Pass::Exact),
        ("**/file*.txt", "dir/dir/file.txt", Pass::Exact),
        ("**/file*.txt*", "dir/dir/file.txt", Pass::Exact),
        ("**/**/*.txt", "dir/dir/file.txt", Pass::Exact),
        ("**/**/*.txt2", "dir/dir/file.txt", Pass::Fail),
        ("**/*.txt", "file.txt", Pass::Exact),
        ("**/**/*.txt", "file.txt", Pass::Exact),
        ("a**/*.txt", "a/file.txt", Pass::Exact),
        ("a**/*.txt", "a/dir/file.txt", Pass::Exact),
        ("a**/*.txt", "a/dir/dir/file.txt", Pass::Exact),
        ("a/*.txt", "a/dir/file.txt", Pass::Fail),
        ("a/*.txt", "a/file.txt", Pass::Exact),
        ("a/*.txt**", "a/file.txt", Pass::Exact),
        ("a[b-d]e", "ae", Pass::Fail),
        ("a[b-d]e", "ace", Pass::Exact),
        ("a[b-d]e", "aae", Pass::Fail),
        ("a[^b-d]e", "aze", Pass::Exact),
        (".*", ".foo", Pass::Exact),
        (".*", "foo", Pass::Fail),
        ("abc.def", "abcdef", Pass::Fail),
        ("abc.def", "abc.def", Pass::Exact),
        ("abc.def", "abcZdef", Pass::Fail),
        ("abc?def", "abcZdef", Pass::Exact),
        ("abc?def", "abcdef", Pass::Fail),
        ("**/foo/bar", "foo/bar", Pass::Exact),
        ("**/foo/bar", "dir/foo/bar", Pass::Exact),
        ("**/foo/bar", "dir/dir2/foo/bar", Pass::Exact),
        ("abc/**", "abc", Pass::Fail),
        ("abc/**", "abc/def", Pass::Exact),
        ("abc/**", "abc/def/ghi", Pass::Exact),
        ("**/.foo", ".foo", Pass::Exact),
        ("**/.foo", "bar.foo", Pass::Fail),
        ("a(b)c/def", "a(b)c/def", Pass::Exact),
        ("a(b)c/def", "a(b)c/xyz", Pass::Fail),
        ("a.|)$(}+{bc", "a.|)$(}+{bc", Pass::Exact),
        (
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            Pass::Exact,
        ),
        (
            "dist/*.whl",
            "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
            Pass::Exact,
        ),
        ("a\\\\", "a\\", Pass::Exact),
        ("a\\*b", "a*b", Pass::Exact),
    ];

    #[test]
    fn upstream_matches_exact_table() {
        for &(pattern, text, pass) in MATCHES {
            let di = ignore(&[pattern]);
            assert_eq!(
                matches_exact(&di, text),
                pass == Pass::Exact,
                "MatchesExact pattern={pattern:?} text={text:?}"
            );
        }
    }

    #[test]
    fn upstream_matches_or_parent_matches_table() {
        for &(pattern, text, pass) in MATCHES {
            let di = ignore(&[pattern]);
            assert_eq!(
                di.is_excluded(text),
                pass != Pass::Fail,
                "MatchesOrParentMatches pattern={pattern:?} text={text:?}"
            );
        }
    }

    #[test]
    fn upstream_multi_pattern_table() {
        let whl = "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl";
        let cases: &[(&[&str], &str, bool)] = &[
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (&["**", &format!("!{whl}")], whl, false),
            (&["**", "!dist/*.whl"], whl, false),
        ];
        for (patterns, text, excluded) in cases {
            assert_eq!(
                ignore(patterns).is_excluded(text),
                *excluded,
                "patterns={patterns:?} text={text:?}"
            );
        }
    }

    /// Go's filepath.Match table, as patternmatcher's TestMatch runs it.
    #[test]
    fn upstream_filepath_match_table() {
        let cases: &[(&str, &str, Option<bool>)] = &[
            ("abc", "abc", Some(true)),
            ("*", "abc", Some(true)),
            ("*c", "abc", Some(true)),
            ("a*", "a", Some(true)),
            ("a*", "abc", Some(true)),
            ("a*", "ab/c", Some(true)),
            ("a*/b", "abc/b", Some(true)),
            ("a*/b", "a/c/b", Some(false)),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", Some(true)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", Some(true)),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", Some(false)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", Some(false)),
            ("a*b?c*x", "abxbbxdbxebxczzx", Some(true)),
            ("a*b?c*x", "abxbbxdbxebxczzy", Some(false)),
            ("ab[c]", "abc", Some(true)),
            ("ab[b-d]", "abc", Some(true)),
            ("ab[e-g]", "abc", Some(false)),
            ("ab[^c]", "abc", Some(false)),
            ("ab[^b-d]", "abc", Some(false)),
            ("ab[^e-g]", "abc", Some(true)),
            ("a\\*b", "a*b", Some(true)),
            ("a\\*b", "ab", Some(false)),
            ("a?b", "a☺b", Some(true)),
            ("a[^a]b", "a☺b", Some(true)),
            ("a???b", "a☺b", Some(false)),
            ("a[^a][^a][^a]b", "a☺b", Some(false)),
            ("[a-ζ]*", "α", Some(true)),
            ("*[a-ζ]", "A", Some(false)),
            ("a?b", "a/b", Some(false)),
            ("a*b", "a/b", Some(false)),
            ("[\\]a]", "]", Some(true)),
            ("[\\-]", "-", Some(true)),
            ("[x\\-]", "x", Some(true)),
            ("[x\\-]", "-", Some(true)),
            ("[x\\-]", "z", Some(false)),
            ("[\\-x]", "x", Some(true)),
            ("[\\-x]", "-", Some(true)),
            ("[\\-x]", "a", Some(false)),
            ("[]a]", "]", None),
            ("[-]", "-", None),
            ("[x-]", "x", None),
            ("[x-]", "-", None),
            ("[x-]", "z", None),
            ("[-x]", "x", None),
            ("[-x]", "-", None),
            ("[-x]", "a", None),
            ("\\", "a", None),
            ("[a-b-c]", "a", None),
            ("[", "a", None),
            ("[^", "a", None),
            ("[^bc", "a", None),
            ("a[", "a", None),
            ("a[", "ab", None),
            ("*x", "xxx", Some(true)),
        ];
        for &(pattern, text, want) in cases {
            let got = DockerIgnore::parse(pattern)
                .ok()
                .map(|di| di.is_excluded(text));
            assert_eq!(got, want, "pattern={pattern:?} text={text:?}");
        }
    }

    /// patternmatcher's TestCompile: the same match kind and regexp string.
    #[test]
    fn upstream_compile_table() {
        use MatchKind::*;
        let cases: &[(&str, MatchKind, &str)] = &[
            ("*", Regexp, "^[^/]*$"),
            ("file*", Regexp, "^file[^/]*$"),
            ("*file", Regexp, "^[^/]*file$"),
            ("a*/b", Regexp, "^a[^/]*/b$"),
            ("**", Suffix, ""),
            ("**/**", Regexp, "^(.*/)?.*$"),
            ("dir/**", Prefix, ""),
            ("**/dir", Suffix, ""),
            ("**/dir2/*", Regexp, "^(.*/)?dir2/[^/]*$"),
            ("**/dir2/**", Regexp, "^(.*/)?dir2/.*$"),
            ("**file", Suffix, ""),
            ("**/file*txt", Regexp, "^(.*/)?file[^/]*txt$"),
            ("**/**/*.txt", Regexp, r"^(.*/)?(.*/)?[^/]*\.txt$"),
            ("a[b-d]e", Regexp, "^a[b-d]e$"),
            (".*", Regexp, r"^\.[^/]*$"),
            ("abc.def", Exact, ""),
            ("abc?def", Regexp, "^abc[^/]def$"),
            ("**/foo/bar", Suffix, ""),
            ("a(b)c/def", Exact, ""),
            ("a.|)$(}+{bc", Exact, ""),
            (
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                Exact,
                "",
            ),
        ];
        for &(pattern, kind, regexp) in cases {
            let (got_kind, got_regexp) = translate(&clean(pattern));
            assert_eq!(got_kind, kind, "pattern {pattern:?}");
            if kind == Regexp {
                assert_eq!(got_regexp, regexp, "pattern {pattern:?}");
            }
        }
    }

    /// ignorefile's TestReadAll, line by line.
    #[test]
    fn upstream_read_all() {
        let content =
            "test1\n/test2\n/a/file/here\n\nlastfile\n# this is a comment\n! /inverted/abs/path\n!\n! ";
        let read: Vec<String> = content
            .split('\n')
            .enumerate()
            .filter_map(|(i, line)| read_line(line, i == 0))
            .collect();
        let expected = [
            "test1",
            "test2",
            "a/file/here",
            "lastfile",
            "!inverted/abs/path",
            "!",
            "!",
        ];
        assert_eq!(read, expected);
        // patternmatcher.New then rejects the lone `!` on line 8.
        let err = error_of(content);
        assert_eq!(err.line, 8);
        assert_eq!(err.message, r#"illegal exclusion pattern: "!""#);
    }

    #[test]
    fn clean_patterns_and_exceptions() {
        let di = ignore(&["docs", "config", ""]);
        assert_eq!(di.canonical(), "docs\nconfig\n");
        for lines in [
            &["docs", "!docs/README.md"][..],
            &["docs", "  !docs/README.md"],
            &["docs", "!docs/README.md  "],
        ] {
            let di = ignore(lines);
            assert!(di.has_exceptions);
            assert_eq!(di.canonical(), "docs\n!docs/README.md\n");
        }
        assert!(!DockerIgnore::empty().has_exceptions);
        assert!(DockerIgnore::empty().is_empty());
    }

    #[test]
    fn single_exclamation_is_an_error() {
        let err = error_of("a\n\n  ! \n");
        assert_eq!(err.line, 3);
        assert_eq!(err.pattern, "!");
        assert_eq!(
            err.to_string(),
            r#"line 3: bad pattern "!": illegal exclusion pattern: "!""#
        );
        // `!/` cleans to `!` the second time round, as upstream.
        assert_eq!(error_of("!/").message, r#"illegal exclusion pattern: "!""#);
    }

    #[test]
    fn malformed_patterns_name_line_and_pattern() {
        let err = error_of("# comment\nok\n  [a  \n");
        assert_eq!(
            err,
            PatternError {
                line: 3,
                pattern: "[a".to_string(),
                message: "unclosed character class".to_string(),
            }
        );
        assert_eq!(
            err.to_string(),
            r#"line 3: bad pattern "[a": unclosed character class"#
        );
        let boxed: Box<dyn std::error::Error> = Box::new(err);
        assert!(boxed.to_string().starts_with("line 3"));
        assert_eq!(error_of("[").message, "unclosed character class");
        assert_eq!(error_of("x\\").message, "trailing backslash");
        assert_eq!(error_of("[]a]").message, "empty character class");
        assert_eq!(
            error_of("[a-]").message,
            "incomplete range in character class"
        );
        assert_eq!(error_of("[-a]").message, "unescaped '-' in character class");
        assert_eq!(error_of("!a[").line, 1);
        // Like current Go, the whole pattern is checked, not just the part
        // needed to reject the name ".".
        assert_eq!(error_of("?[*]**/*[]*").message, "empty character class");
    }

    /// Valid for filepath.Match but rejected by Go's regexp (upstream fails
    /// only when matching; moby/moby#52203).
    #[test]
    fn regexp_errors_are_parse_errors() {
        let err = error_of("[Local-Only]/");
        assert_eq!(err.pattern, "[Local-Only]/");
        assert!(
            err.message.contains("invalid character class range"),
            "{err}"
        );
        assert!(error_of("[z-a]").message.contains("`z-a`"));
        assert!(error_of("a\\e*").message.contains("invalid escape"));
        assert!(error_of("\\1").message.contains("invalid escape"));
        assert!(error_of("[[:nope:]]").message.contains("[:nope:]"));
        assert!(error_of("[[:alpha:]").message.contains("missing closing ]"));
        assert!(error_of("\\pL").message.contains("Unicode"));
        // `[a-*]` is a reversed range once `*` becomes `[^/]*` in the class.
        assert!(error_of("[a-*]").message.contains("range"));
    }

    #[test]
    fn comments_blank_lines_bom_and_crlf() {
        let di = DockerIgnore::parse("\u{feff}# comment\r\n\r\n   \n*.log\r\n  #kept\n").unwrap();
        assert_eq!(di.canonical(), "*.log\n#kept\n");
        assert!(di.is_excluded("a.log"));
        // A `#` after leading blanks is a pattern, as upstream.
        assert!(di.is_excluded("#kept"));
        assert!(!di.is_excluded("# comment"));
        // A BOM only counts on the first line.
        let di = DockerIgnore::parse("a\n\u{feff}b").unwrap();
        assert_eq!(di.canonical(), "a\n\u{feff}b\n");
    }

    #[test]
    fn patterns_are_cleaned_and_rooted() {
        let di = ignore(&[
            "/abs/path",
            "./dot/prefix",
            "trailing/",
            "double//slash",
            "a/./b/../c",
            "!/not/abs",
            "! spaced ",
            "../up",
            "/",
        ]);
        assert_eq!(
            di.canonical(),
            "abs/path\ndot/prefix\ntrailing\ndouble/slash\na/c\n!not/abs\n!spaced\n../up\n/\n"
        );
        assert!(di.is_excluded("abs/path"));
        assert!(di.is_excluded("abs/path/inner"));
        assert!(di.is_excluded("dot/prefix"));
        assert!(di.is_excluded("trailing/file"));
        assert!(di.is_excluded("double/slash"));
        assert!(di.is_excluded("a/c"));
        // Upstream cleans the exception a second time with its `!`:
        // `!../../a` therefore becomes the plain pattern `a`.
        assert_eq!(ignore(&["!../../a"]).canonical(), "a\n");
    }

    #[test]
    fn input_paths_are_cleaned() {
        let di = ignore(&["a/b"]);
        for path in ["a/b", "./a/b", "a//b", "a/b/", "a/./b", "a/b/c", "x/../a/b"] {
            assert!(di.is_excluded(path), "{path}");
        }
        assert!(!di.is_excluded("a"));
        // The context root is never excluded.
        let all = ignore(&["**", "*", "."]);
        for root in [".", "", "./", "a/.."] {
            assert!(!all.is_excluded(root), "{root:?}");
        }
    }

    #[test]
    fn docker_documented_examples() {
        let di = ignore(&["# comment", "*/temp*", "*/*/temp*", "temp?"]);
        assert!(di.is_excluded("somedir/temporary.txt"));
        assert!(di.is_excluded("somedir/temp"));
        assert!(di.is_excluded("somedir/temp/inner.txt"));
        assert!(di.is_excluded("somedir/subdir/temporary.txt"));
        assert!(di.is_excluded("tempa"));
        assert!(di.is_excluded("tempb"));
        assert!(!di.is_excluded("temporary.txt"));
        assert!(!di.is_excluded("temp"));
        assert!(!di.is_excluded("a/b/c/temp.txt"));
        assert!(!di.is_excluded("# comment"));

        let go = ignore(&["**/*.go"]);
        assert!(go.is_excluded("main.go"));
        assert!(go.is_excluded("a/b/c/lib.go"));
        assert!(!go.is_excluded("a/b/c/lib.rs"));

        let md = ignore(&["*.md", "!README*.md", "README-secret.md"]);
        assert!(md.is_excluded("CHANGELOG.md"));
        assert!(!md.is_excluded("README.md"));
        assert!(!md.is_excluded("README-public.md"));
        assert!(md.is_excluded("README-secret.md"));
        assert!(!md.is_excluded("docs/CHANGELOG.md"));

        let md = ignore(&["*.md", "README-secret.md", "!README*.md"]);
        assert!(md.is_excluded("CHANGELOG.md"));
        assert!(!md.is_excluded("README-secret.md"));
    }

    #[test]
    fn exceptions_reinclude_inside_excluded_directories() {
        for lines in [
            &["docs", "!docs/README.md"][..],
            &["docs/", "!docs/README.md"],
            &["docs/*", "!docs/README.md"],
        ] {
            let di = ignore(lines);
            assert!(!di.is_excluded("docs/README.md"), "{lines:?}");
            assert!(di.is_excluded("docs/other.md"), "{lines:?}");
        }
        // The last matching line wins.
        let di = ignore(&["!fileutils.go", "*.go"]);
        assert!(di.is_excluded("fileutils.go"));
        let di = ignore(&["*.go", "!fileutils.go"]);
        assert!(!di.is_excluded("fileutils.go"));
        assert!(di.is_excluded("other.go"));
        // An exception of a directory re-includes what is below it.
        let di = ignore(&["**", "!keep", "keep/tmp"]);
        assert!(di.is_excluded("x"));
        assert!(!di.is_excluded("keep/a/b"));
        assert!(di.is_excluded("keep/tmp/x"));
        // A parent exclusion after an exception wins again.
        let di = ignore(&["!a/b", "a"]);
        assert!(di.is_excluded("a/b"));
    }

    #[test]
    fn may_reinclude_below_follows_fsutil() {
        let di = ignore(&["docs", "!docs/README.md"]);
        assert!(di.may_reinclude_below("docs"));
        assert!(!di.may_reinclude_below("src"));
        assert!(!di.may_reinclude_below("doc"));
        assert!(!di.may_reinclude_below("docs/README.md/x"));

        let di = ignore(&["a", "!a/b/**", "!c/*"]);
        assert!(di.may_reinclude_below("a"));
        assert!(di.may_reinclude_below("a/b"));
        assert!(di.may_reinclude_below("./a/b/"));
        assert!(!di.may_reinclude_below("a/c"));
        assert!(di.may_reinclude_below("c"));
        assert!(!di.may_reinclude_below("c/d"));

        assert!(!ignore(&["node_modules", "target"]).may_reinclude_below("target"));
        // A wildcard in an exception may match anywhere.
        assert!(ignore(&["a", "!**/keep"]).may_reinclude_below("a/b/c"));
        assert!(ignore(&["a", "!x^y"]).may_reinclude_below("z"));
        assert!(!DockerIgnore::empty().may_reinclude_below("a"));
    }

    /// Behaviour that comes from upstream compiling patterns to Go regexps
    /// (and from its fast paths) rather than from filepath.Match.
    #[test]
    fn upstream_regexp_quirks() {
        // Fast paths: `**x` is a plain suffix test, `x**` a prefix test.
        let di = ignore(&["**file"]);
        assert!(di.is_excluded("myfile"));
        assert!(di.is_excluded("a/myfile"));
        let di = ignore(&["a**"]);
        assert!(di.is_excluded("abc"));
        assert!(di.is_excluded("a/b"));
        // `**` inside a name is `(.*/)?`.
        let di = ignore(&["a**b"]);
        assert!(di.is_excluded("ab"));
        assert!(di.is_excluded("a/b"));
        assert!(di.is_excluded("ax/y/b"));
        assert!(!di.is_excluded("axb"));
        // `.` in `(.*/)?` does not match a newline.
        let di = ignore(&["**/x*"]);
        assert!(di.is_excluded("a/b/xy"));
        assert!(!di.is_excluded("a\nb/xy"));
        // `^` is literal in an exact pattern but an anchor in a regexp.
        assert!(ignore(&["^a"]).is_excluded("^a"));
        assert!(!ignore(&["^a"]).is_excluded("a"));
        assert!(ignore(&["^a*"]).is_excluded("abc"));
        assert!(!ignore(&["^a*"]).is_excluded("^abc"));
        // Escaped letters are regexp escapes.
        let di = ignore(&["\\d*"]);
        assert!(di.is_excluded("1abc"));
        assert!(!di.is_excluded("dabc"));
        assert!(ignore(&["a\\tb"]).is_excluded("a\tb"));
        assert!(ignore(&["\\x41?"]).is_excluded("Az"));
        // `*` inside a class becomes `[[^/]*]`: a class of `[`, `^`, `/`
        // repeated, then a literal `]`.
        let di = ignore(&["[*]"]);
        assert!(di.is_excluded("]"));
        assert!(di.is_excluded("[^]"));
        assert!(!di.is_excluded("*"));
        // POSIX classes work through the regexp.
        let di = ignore(&["[[:digit:]]x"]);
        assert!(di.is_excluded("5x"));
        assert!(!di.is_excluded("ax"));
        // `\Q` quotes the rest, including upstream's closing `$`.
        let di = ignore(&["a\\Qb"]);
        assert!(di.is_excluded("ab$"));
        assert!(di.is_excluded("ab$tail"));
        assert!(!di.is_excluded("ab"));
        // `|`, `{` and `}` reach the regexp unescaped: `^a|b[^/]*$` is
        // "starts with a" or "ends in b and a name".
        assert!(ignore(&["*|"]).is_excluded("anything/at/all"));
        let di = ignore(&["a|b*"]);
        assert!(di.is_excluded("axyz/q"));
        assert!(di.is_excluded("x/yb"));
        assert!(!di.is_excluded("xy"));
        let di = ignore(&["x{2}*"]);
        assert!(di.is_excluded("xxa"));
        assert!(!di.is_excluded("xa"));
        assert!(ignore(&["{a,b}*"]).is_excluded("{a,b}c"));
        assert!(error_of("x{1001}*").message.contains("repeat count"));
        assert!(error_of("x{2,1}*").message.contains("repeat count"));
        assert!(error_of("*{2}").message.contains("nested repetition"));
        // Word boundaries.
        let di = ignore(&["*\\bx"]);
        assert!(di.is_excluded("a.x"));
        assert!(!di.is_excluded("ax"));
    }

    #[test]
    fn canonical_is_stable() {
        let text = "# c\n./a/\n!b//c\n\n  d  \n";
        let di = ignore(&[text]);
        assert_eq!(di.canonical(), "a\n!b/c\nd\n");
        assert_eq!(ignore(&[&di.canonical()]).canonical(), di.canonical());
        assert_eq!(DockerIgnore::empty().canonical(), "");
    }

    #[test]
    fn matcher_choice() {
        let kind = |pattern: &str| match ignore(&[pattern]).rules[0].matcher {
            Matcher::Exact => "exact",
            Matcher::Prefix => "prefix",
            Matcher::Suffix => "suffix",
            Matcher::Literal(_) => "literal",
            Matcher::Regex(_) => "regex",
        };
        assert_eq!(kind("node_modules"), "exact");
        assert_eq!(kind("target/**"), "prefix");
        assert_eq!(kind("**/.git"), "suffix");
        assert_eq!(kind("a\\.b"), "literal");
        assert_eq!(kind("*.md"), "regex");
        assert_eq!(kind("*/temp*"), "regex");
        assert_eq!(kind("{a,b}*"), "regex");
        assert_eq!(kind("temp?"), "regex");
        assert_eq!(kind("**/*.go"), "regex");
        assert_eq!(kind("[ab]*"), "regex");
    }

    /// Tiny xorshift PRNG so the randomized tests need no extra crates.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn string(&mut self, alphabet: &[char], max_len: usize) -> String {
            let len = self.below(max_len + 1);
            (0..len)
                .map(|_| alphabet[self.below(alphabet.len())])
                .collect()
        }
    }

    /// The regexp of a pattern made of literals and single `*` is what
    /// globset builds for it with `literal_separator` (`*` is `[^/]*`): an
    /// independent oracle for the Go-syntax parser and the meta engine.
    #[test]
    fn star_patterns_agree_with_globset() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let pattern_chars = ['a', 'b', '*', '.', '/', '{', ',', '}', '!', 'é', '$', '+'];
        let path_chars = ['a', 'b', '.', '/', '{', ',', '}', '!', 'é', '\n', '$', '+'];
        let mut checked = 0;
        for _ in 0..2000 {
            let pattern = rng.string(&pattern_chars, 8);
            if pattern.contains("**") {
                continue;
            }
            let (MatchKind::Regexp, re) = translate(&pattern) else {
                continue;
            };
            let regex = regexp::Parsed::parse(&re).unwrap().compile().unwrap();
            let mut glob = String::new();
            for c in pattern.chars() {
                if c != '*' && !c.is_alphanumeric() {
                    glob.push('\\');
                }
                glob.push(c);
            }
            let glob = GlobBuilder::new(&glob)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .unwrap()
                .compile_matcher();
            for _ in 0..20 {
                let path = rng.string(&path_chars, 8);
                checked += 1;
                assert_eq!(
                    glob.is_match(&path),
                    regex.is_match(&path),
                    "pattern={pattern:?} regexp={re:?} path={path:?}"
                );
            }
        }
        assert!(checked > 10_000, "only {checked} paths checked");
    }

    /// A regexp that is only literal text is matched by string equality;
    /// that must agree with the regexp itself.
    #[test]
    fn literal_fast_path_agrees_with_the_regexp() {
        let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
        let pattern_chars = ['a', 'b', '\\', '.', '/', 'x', '4', '1', 'é', 't'];
        let path_chars = ['a', 'b', '.', '/', 'A', '\t', 'é', '\\'];
        let mut literals = 0;
        for _ in 0..3000 {
            let pattern = rng.string(&pattern_chars, 6);
            let (MatchKind::Regexp, re) = translate(&pattern) else {
                continue;
            };
            let Ok(parsed) = regexp::Parsed::parse(&re) else {
                continue;
            };
            let Some(literal) = parsed.literal() else {
                continue;
            };
            literals += 1;
            let regex = parsed.compile().unwrap();
            assert!(regex.is_match(&literal), "{pattern:?} {literal:?}");
            for _ in 0..30 {
                let path = rng.string(&path_chars, 5);
                assert_eq!(
                    path == literal,
                    regex.is_match(&path),
                    "{pattern:?} {path:?}"
                );
            }
        }
        assert!(literals > 100, "only {literals} literal patterns generated");
    }

    #[test]
    fn random_patterns_never_panic() {
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let pattern_chars = [
            'a', 'b', '*', '*', '?', '[', ']', '^', '-', '!', '\\', '/', '.', '(', ')', '$', '#',
            ' ', '{', '}', ':', 'd', 'x', 'Q', 'E', '0', '\n', '\r', 'é',
        ];
        let path_chars = [
            'a', 'b', '/', '.', '-', '*', '[', ']', '\n', 'd', '0', 'é', '^',
        ];
        let mut parsed = 0;
        for _ in 0..4000 {
            let text = rng.string(&pattern_chars, 14);
            let Ok(di) = DockerIgnore::parse(&text) else {
                continue;
            };
            parsed += 1;
            let canonical = di.canonical();
            assert_eq!(canonical.lines().count(), di.rules.len());
            for _ in 0..8 {
                let path = rng.string(&path_chars, 10);
                let excluded = di.is_excluded(&path);
                assert_eq!(excluded, di.is_excluded(&clean(&path)), "{text:?} {path:?}");
                let _ = di.may_reinclude_below(&path);
            }
        }
        assert!(parsed > 1000, "only {parsed} pattern sets parsed");
    }

    #[test]
    fn long_patterns_use_heap_state_sets() {
        // More than 255 NFA instructions.
        let pattern = "?".repeat(300);
        let di = ignore(&[&pattern]);
        assert!(di.is_excluded(&"x".repeat(300)));
        assert!(!di.is_excluded(&"x".repeat(299)));
        assert!(di.is_excluded(&format!("{}/y", "x".repeat(300))));
    }

    #[test]
    fn parse_cached_gives_what_parse_gives_and_keeps_errors_uncached() {
        let text = "*.log\n!keep.log\nbuild/**\n";
        let cached = DockerIgnore::parse_cached(text).unwrap();
        let again = DockerIgnore::parse_cached(text).unwrap();
        let fresh = DockerIgnore::parse(text).unwrap();
        for path in ["a.log", "keep.log", "build/x/y", "src/main.rs"] {
            assert_eq!(cached.is_excluded(path), fresh.is_excluded(path), "{path}");
            assert_eq!(again.is_excluded(path), fresh.is_excluded(path), "{path}");
        }
        assert!(DockerIgnore::parse_cached("[").is_err());
        assert!(
            DockerIgnore::parse_cached("[").is_err(),
            "an error is never remembered as a result"
        );
    }
}
