//! Docker's Dockerfile word processing: variable expansion, quote removal and
//! word splitting, plus the splitting of ENV/LABEL/ARG arguments into names and
//! values.
//!
//! A build is only reproducible against Docker if every word means exactly what
//! it means to Docker, quirks included, so this is a faithful port of BuildKit:
//!
//! * `frontend/dockerfile/shell/lex.go` (`ProcessWord`, `ProcessWords`): `$VAR`,
//!   `${VAR}`, `${VAR:-w}`, `${VAR-w}`, `${VAR:+w}`, `${VAR+w}`, `${VAR:?m}`,
//!   `${VAR?m}`, `${VAR#p}`, `${VAR##p}`, `${VAR%p}`, `${VAR%%p}`,
//!   `${VAR/p/r}`, `${VAR//p/r}`, quotes and the escape character;
//! * `frontend/dockerfile/parser/line_parsers.go` (`parseWords`, `parseNameVal`,
//!   `parseNameOrNameVal`) together with the checks BuildKit makes on their
//!   result in `frontend/dockerfile/instructions/parse.go` (`parseKvps`,
//!   `parseArg`).
//!
//! Error messages are BuildKit's (without its `failed to process "<word>": `
//! prefix; [`ExpandError::offset`] says where the problem is instead).
//!
//! Everything works on `char`s, never on byte slices of user input, so no input
//! can make it panic.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Looks up a variable; `None` = unset (distinct from set-but-empty).
pub trait Vars {
    /// The value of `name`, or `None` if it is not set.
    fn get(&self, name: &str) -> Option<&str>;
}

impl Vars for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        BTreeMap::get(self, name).map(String::as_str)
    }
}

impl Vars for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        HashMap::get(self, name).map(String::as_str)
    }
}

/// A word or an argument list Docker would reject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    /// BuildKit's message, e.g. `syntax error: missing '}'` or `HOME: is required`.
    pub message: String,
    /// Byte offset in the input where the problem is: the `$` of the failing
    /// expansion, the opening quote of an unterminated string, or the start of
    /// the offending word of an argument list.
    pub offset: usize,
}

impl ExpandError {
    fn new(message: impl Into<String>, offset: usize) -> Self {
        ExpandError {
            message: message.into(),
            offset,
        }
    }
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExpandError {}

/// BuildKit `ProcessWord`: expands variables, removes quotes and escapes.
/// Whitespace between words is kept as it is.
pub fn expand_word(word: &str, vars: &dyn Vars, escape: char) -> Result<String, ExpandError> {
    Lexer::new(word, vars, escape)
        .process()
        .map(|(result, _)| result)
}

/// The content of a here-document whose delimiter is not quoted, as BuildKit
/// expands it (`ExpandRaw`: a lexer with `\\` as escape and
/// `SkipProcessQuotes`): variables are expanded, quotes stay as they are.
pub fn expand_heredoc(text: &str, vars: &dyn Vars) -> Result<String, ExpandError> {
    let mut lexer = Lexer::new(text, vars, '\\');
    lexer.skip_quotes = true;
    lexer.process().map(|(result, _)| result)
}

/// BuildKit `ProcessWords`: like [`expand_word`], then splits on whitespace that
/// was neither quoted nor escaped. Whitespace coming from a variable's value
/// splits too (outside double quotes), and BuildKit drops empty words, so `""`
/// alone yields no word at all.
pub fn expand_words(word: &str, vars: &dyn Vars, escape: char) -> Result<Vec<String>, ExpandError> {
    Lexer::new(word, vars, escape)
        .process()
        .map(|(_, words)| words)
}

/// BuildKit `parseWords`: splits an instruction's arguments on whitespace,
/// respecting quotes and the escape character, and keeps both in the words
/// (they are removed later by [`expand_word`]).
pub fn split_words(args: &str, escape: char) -> Vec<String> {
    split_word_spans(args, escape)
        .into_iter()
        .map(|(_, word)| word)
        .collect()
}

/// ENV and LABEL arguments (BuildKit `parseNameVal` + `parseKvps`): either
/// `k=v k2="v 2"` or the legacy `k v w` (one pair whose value is the rest of
/// the line). Keys and values are returned raw, still to be expanded.
pub fn parse_name_vals(
    instruction: &str,
    args: &str,
    escape: char,
) -> Result<Vec<(String, String)>, ExpandError> {
    let (lead, rest) = trim_space(args);
    let words = split_word_spans(rest, escape);
    let Some((_, first)) = words.first() else {
        return Err(ExpandError::new(
            format!("{instruction} requires at least one argument"),
            lead,
        ));
    };
    let pairs = if first.contains('=') {
        name_val_pairs(&words)
    } else {
        legacy_name_val(instruction, rest).map(|pair| vec![pair])
    }
    .map_err(|e| ExpandError::new(e.message, lead + e.offset))?;
    // BuildKit checks for blank names only after the parser accepted every word.
    if let Some((off, _, _)) = pairs.iter().find(|(_, key, _)| key.is_empty()) {
        return Err(ExpandError::new(
            format!("{instruction} names can not be blank"),
            lead + off,
        ));
    }
    Ok(pairs
        .into_iter()
        .map(|(_, key, value)| (key, value))
        .collect())
}

/// ARG arguments (BuildKit `parseNameOrNameVal` + `parseArg`): each word is
/// `name` or `name=value` (value raw, still to be expanded).
pub fn parse_arg_decls(
    args: &str,
    escape: char,
) -> Result<Vec<(String, Option<String>)>, ExpandError> {
    let (lead, rest) = trim_space(args);
    let words = split_word_spans(rest, escape);
    if words.is_empty() {
        return Err(ExpandError::new("ARG requires at least one argument", lead));
    }
    let mut decls = Vec::with_capacity(words.len());
    for (off, word) in words {
        match word.split_once('=') {
            Some(("", _)) => {
                return Err(ExpandError::new("ARG names can not be blank", lead + off))
            }
            Some((name, value)) => decls.push((name.to_string(), Some(value.to_string()))),
            None => decls.push((word, None)),
        }
    }
    Ok(decls)
}

// ---------------------------------------------------------------------------
// Argument splitting (line_parsers.go)
// ---------------------------------------------------------------------------

/// `strings.TrimSpace`, which BuildKit's `splitCommand` applies to the
/// arguments; also returns how many bytes were cut in front, for offsets.
fn trim_space(s: &str) -> (usize, &str) {
    let start = s.trim_start();
    (s.len() - start.len(), start.trim_end())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Spaces,
    Word,
    Quote(char),
}

/// `parseWords`, also returning each word's byte offset in `rest`.
fn split_word_spans(rest: &str, escape: char) -> Vec<(usize, String)> {
    let chars: Vec<(usize, char)> = rest.char_indices().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut blank_ok = false;
    let mut word = String::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let (off, ch) = chars[i];
        let is_last = i + 1 == chars.len();
        i += 1;
        if phase == Phase::Spaces {
            if ch.is_whitespace() {
                continue;
            }
            phase = Phase::Word;
            start = off;
        }
        if let Phase::Quote(quote) = phase {
            if ch == quote {
                phase = Phase::Word;
            }
            // Nothing can be escaped inside single quotes.
            if ch == escape && quote != '\'' {
                if is_last {
                    phase = Phase::Word;
                    continue;
                }
                word.push(ch);
                word.push(chars[i].1);
                i += 1;
            } else {
                word.push(ch);
            }
        } else if ch.is_whitespace() {
            phase = Phase::Spaces;
            let finished = std::mem::take(&mut word);
            if blank_ok || !finished.is_empty() {
                words.push((start, finished));
            }
            blank_ok = false;
        } else {
            if ch == '\'' || ch == '"' {
                phase = Phase::Quote(ch);
                blank_ok = true;
            }
            if ch == escape {
                // An escape at the very end is dropped; otherwise it is kept
                // together with the character it escapes, even a quote.
                if is_last {
                    continue;
                }
                word.push(ch);
                word.push(chars[i].1);
                i += 1;
            } else {
                word.push(ch);
            }
        }
    }
    // An unterminated quote still ends the word; BuildKit reports it only
    // when the word is expanded.
    if phase != Phase::Spaces && (blank_ok || !word.is_empty()) {
        words.push((start, word));
    }
    words
}

type Pair = (usize, String, String);

/// The `name=value ...` form: every word must contain `=`.
fn name_val_pairs(words: &[(usize, String)]) -> Result<Vec<Pair>, ExpandError> {
    words
        .iter()
        .map(|(off, word)| match word.split_once('=') {
            Some((key, value)) => Ok((*off, key.to_string(), value.to_string())),
            None => Err(ExpandError::new(
                format!(
                    "Syntax error - can't find = in {}. Must be of the form: name=value",
                    go_quote(word)
                ),
                *off,
            )),
        })
        .collect()
}

/// The legacy `name value...` form: the name is cut at the first run of
/// `[\t\v\f\r ]` (BuildKit's `reWhitespace`), the value is the rest of the line.
fn legacy_name_val(instruction: &str, rest: &str) -> Result<Pair, ExpandError> {
    let is_sep = |c: char| matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ');
    let Some(key_end) = rest.find(is_sep) else {
        return Err(ExpandError::new(
            format!("{instruction} must have two arguments"),
            0,
        ));
    };
    let value = rest[key_end..].trim_start_matches(is_sep);
    Ok((0, rest[..key_end].to_string(), value.to_string()))
}

/// Go's `%q` (`strconv.Quote`), used in BuildKit's messages.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Format characters (category Cf) that are common enough to matter.
const FORMAT_CHARS: [(char, char); 7] = [
    ('\u{ad}', '\u{ad}'),
    ('\u{200b}', '\u{200f}'),
    ('\u{202a}', '\u{202e}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{feff}', '\u{feff}'),
    ('\u{e0001}', '\u{e0001}'),
    ('\u{e0020}', '\u{e007f}'),
];

/// Approximates Go's `unicode.IsPrint` (std has no general-category lookup):
/// controls, non-ASCII spaces and the common format characters are not printable.
fn is_go_printable(c: char) -> bool {
    let format_char = FORMAT_CHARS.iter().any(|&(lo, hi)| (lo..=hi).contains(&c));
    c == ' ' || !(c.is_control() || c.is_whitespace() || format_char)
}

// ---------------------------------------------------------------------------
// Expansion (lex.go)
// ---------------------------------------------------------------------------

/// What Go prints for `string(scanner.EOF)` in messages.
const GO_EOF_CHAR: char = '\u{fffd}';

/// The part of Go's `text/scanner` that lex.go uses: `Peek` and `Next` over
/// characters, which also skip a byte-order mark at the very start.
struct Scanner {
    chars: Vec<(usize, char)>,
    pos: usize,
    len: usize,
}

impl Scanner {
    fn new(s: &str) -> Self {
        let mut chars: Vec<(usize, char)> = s.char_indices().collect();
        if chars.first().is_some_and(|&(_, c)| c == '\u{feff}') {
            chars.remove(0);
        }
        Scanner {
            chars,
            pos: 0,
            len: s.len(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).map(|&(_, c)| c)
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Byte offset of the next character (the input's length at the end).
    fn offset(&self) -> usize {
        self.chars.get(self.pos).map_or(self.len, |&(off, _)| off)
    }
}

/// `wordsStruct`: collects the words of `ProcessWords` while the result string
/// is being built. (Its `inWord` flag is true exactly when the word is not
/// empty, so it is left out.)
#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
}

impl Words {
    /// An unquoted, unescaped character: whitespace ends the current word.
    fn add_char(&mut self, ch: char) {
        if !ch.is_whitespace() {
            self.word.push(ch);
        } else if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
    }

    /// An escaped character: kept even if it is whitespace.
    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
    }

    /// A variable's value: split like unquoted text.
    fn add_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    /// A quoted string: kept whole.
    fn add_raw_str(&mut self, s: &str) {
        self.word.push_str(s);
    }

    /// `getWords`: empty words are dropped, even quoted ones.
    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(self.word);
        }
        self.words
    }
}

/// `shellWord` with BuildKit's default options (quotes processed, unset
/// variables expand to nothing, quotes and escapes removed).
struct Lexer<'a> {
    sc: Scanner,
    vars: &'a dyn Vars,
    escape: char,
    /// Keep escape characters in the output: BuildKit sets this while reading
    /// the pattern and replacement of `#`, `%` and `/`, whose escapes the
    /// pattern matcher interprets itself.
    raw_escapes: bool,
    /// Quotes are ordinary characters (BuildKit `SkipProcessQuotes`).
    skip_quotes: bool,
    /// How many `${` are open.
    depth: usize,
    /// Bytes substituted so far (see [`MAX_EXPANSION`]).
    expanded: usize,
}

/// Most bytes the variables of one word may expand to. BuildKit has no
/// limit; without one, `$a$a$a...` over a large value, or doubling ENVs,
/// make a 16 MiB Dockerfile ask for terabytes.
pub const MAX_EXPANSION: usize = 1 << 20;

fn too_large(start: usize) -> ExpandError {
    ExpandError::new(
        format!("the variables in this word expand to more than {MAX_EXPANSION} bytes"),
        start,
    )
}

/// Deepest nesting of `${...}` accepted (BuildKit has no limit; real
/// Dockerfiles nest a few levels).
const MAX_NESTING: usize = 64;

type Processed = (String, Vec<String>);

impl<'a> Lexer<'a> {
    fn new(word: &str, vars: &'a dyn Vars, escape: char) -> Self {
        Lexer {
            sc: Scanner::new(word),
            vars,
            escape,
            raw_escapes: false,
            skip_quotes: false,
            depth: 0,
            expanded: 0,
        }
    }

    fn process(mut self) -> Result<Processed, ExpandError> {
        self.process_stop_on(None, false)
    }

    fn lookup(&self, name: &str) -> Option<String> {
        self.vars.get(name).map(str::to_string)
    }

    /// `processStopOn`: processes up to `stop` (consumed) or the end of input.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<Processed, ExpandError> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let result = self.stop_on(stop);
        self.raw_escapes = saved;
        result
    }

    fn stop_on(&mut self, stop: Option<char>) -> Result<Processed, ExpandError> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.sc.peek() {
            if Some(ch) == stop {
                self.sc.next();
                return Ok((result, words.finish()));
            }
            // Special characters win over the escape character, as in BuildKit.
            let text = match ch {
                '$' => self.process_dollar()?,
                '\'' if !self.skip_quotes => self.process_single_quote()?,
                '"' if !self.skip_quotes => self.process_double_quote()?,
                _ => {
                    if !self.plain_char(&mut result, &mut words) {
                        break;
                    }
                    continue;
                }
            };
            // A variable's value is split into words, a quoted string is not.
            if ch == '$' {
                words.add_str(&text);
            } else {
                words.add_raw_str(&text);
            }
            result.push_str(&text);
        }
        match stop {
            Some(stop) => Err(ExpandError::new(
                format!("unexpected end of statement while looking for matching {stop}"),
                self.sc.offset(),
            )),
            None => Ok((result, words.finish())),
        }
    }

    /// An ordinary character, or the escape character and what it escapes.
    /// Returns false when an escape character ends the input (it is dropped).
    fn plain_char(&mut self, result: &mut String, words: &mut Words) -> bool {
        let Some(ch) = self.sc.next() else {
            return false;
        };
        if ch != self.escape {
            words.add_char(ch);
            result.push(ch);
            return true;
        }
        if self.raw_escapes {
            words.add_raw_char(ch);
            result.push(ch);
        }
        let Some(escaped) = self.sc.next() else {
            return false;
        };
        words.add_raw_char(escaped);
        result.push(escaped);
        true
    }

    /// Everything up to the next `'` is literal; nothing can be escaped.
    fn process_single_quote(&mut self) -> Result<String, ExpandError> {
        let start = self.sc.offset();
        self.sc.next();
        let mut result = String::new();
        loop {
            match self.sc.next() {
                None => {
                    return Err(ExpandError::new(
                        "unexpected end of statement while looking for matching single-quote",
                        start,
                    ))
                }
                Some('\'') => return Ok(result),
                Some(c) => result.push(c),
            }
        }
    }

    /// Literal up to the next `"`, except that `$` expands and the escape
    /// character escapes only `"`, `$` and itself (otherwise it stays).
    fn process_double_quote(&mut self) -> Result<String, ExpandError> {
        let start = self.sc.offset();
        self.sc.next();
        let mut result = String::new();
        loop {
            match self.sc.peek() {
                None => {
                    return Err(ExpandError::new(
                        "unexpected end of statement while looking for matching double-quote",
                        start,
                    ))
                }
                Some('"') => {
                    self.sc.next();
                    return Ok(result);
                }
                Some('$') => result.push_str(&self.process_dollar()?),
                Some(_) => self.double_quoted_char(&mut result),
            }
        }
    }

    fn double_quoted_char(&mut self, result: &mut String) {
        let Some(mut ch) = self.sc.next() else {
            return;
        };
        if ch == self.escape {
            if self.raw_escapes {
                result.push(ch);
            }
            match self.sc.peek() {
                // The escape is dropped; the missing quote is reported next.
                None => return,
                Some(c) if c == '"' || c == '$' || c == self.escape => {
                    self.sc.next();
                    ch = c;
                }
                Some(_) => {}
            }
        }
        result.push(ch);
    }

    /// `processDollar`: `$name`, `${name}` and `${name<modifier>...}`.
    fn process_dollar(&mut self) -> Result<String, ExpandError> {
        let start = self.sc.offset();
        let value = self.process_dollar_inner()?;
        self.expanded = self.expanded.saturating_add(value.len());
        if self.expanded > MAX_EXPANSION {
            return Err(too_large(start));
        }
        Ok(value)
    }

    fn process_dollar_inner(&mut self) -> Result<String, ExpandError> {
        let start = self.sc.offset();
        self.sc.next();
        if self.sc.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(self.lookup(&name).unwrap_or_default());
        }
        self.sc.next();
        // BuildKit recurses on Go's growable stacks; ours are fixed, so bound
        // the nesting instead of overflowing on hostile input.
        if self.depth >= MAX_NESTING {
            let message = format!("syntax error: more than {MAX_NESTING} nested ${{...}}");
            return Err(ExpandError::new(message, start));
        }
        self.depth += 1;
        let result = self.process_braced(start);
        self.depth -= 1;
        result
    }

    /// The rest of `processDollar` once `${` is read.
    fn process_braced(&mut self, start: usize) -> Result<String, ExpandError> {
        match self.sc.peek() {
            None => return Err(missing_brace(start)),
            Some('{' | '}' | ':') => {
                return Err(ExpandError::new("syntax error: bad substitution", start))
            }
            Some(_) => {}
        }
        let name = self.process_name();
        match self.sc.next() {
            Some('}') => Ok(self.lookup(&name).unwrap_or_default()),
            Some(':') => {
                let op = self.sc.next();
                self.modifier(start, &name, op, true)
            }
            Some(op @ ('+' | '-' | '?' | '#' | '%')) => {
                self.modifier(start, &name, Some(op), false)
            }
            Some('/') => self.substitute(start, &name),
            // BuildKit says "unsupported modifier (\u{fffd})" here; the input
            // simply ended, so say that instead.
            None => Err(missing_brace(start)),
            Some(op) => Err(unsupported_modifier(&op.to_string(), start)),
        }
    }

    /// `${name:op word}` (`null_is_unset`) and `${name op word}`. After a `:`
    /// any character is read as the operator, as BuildKit does.
    fn modifier(
        &mut self,
        start: usize,
        name: &str,
        op: Option<char>,
        null_is_unset: bool,
    ) -> Result<String, ExpandError> {
        let op_text = op.unwrap_or(GO_EOF_CHAR).to_string();
        let shown_op = if null_is_unset {
            format!(":{op_text}")
        } else {
            op_text
        };
        let raw = matches!(op, Some('#' | '%'));
        let (word, _) = self
            .process_stop_on(Some('}'), raw)
            .map_err(|e| self.at_end_or(e, missing_brace(start)))?;
        let value = self.lookup(name);
        let empty = match &value {
            None => true,
            Some(v) => null_is_unset && v.is_empty(),
        };
        match op {
            Some('-') if empty => Ok(word),
            Some('-') => Ok(value.unwrap_or_default()),
            Some('+') if empty => Ok(String::new()),
            Some('+') => Ok(word),
            Some('?') => required(name, value, null_is_unset, word, start),
            Some(op @ ('#' | '%')) => trim(op, &word, &value.unwrap_or_default(), start),
            _ => Err(unsupported_modifier(&shown_op, start)),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`.
    fn substitute(&mut self, start: usize, name: &str) -> Result<String, ExpandError> {
        let all = self.sc.peek() == Some('/');
        if all {
            self.sc.next();
        }
        let missing_slash = ExpandError::new("syntax error: missing '/' in ${}", start);
        let (pattern, _) = self
            .process_stop_on(Some('/'), true)
            .map_err(|e| self.at_end_or(e, missing_slash))?;
        let (replacement, _) = self
            .process_stop_on(Some('}'), true)
            .map_err(|e| self.at_end_or(e, missing_brace(start)))?;
        let value: Vec<char> = self.lookup(name).unwrap_or_default().chars().collect();
        let toks = compile_pattern(&pattern).map_err(|e| invalid_pattern(&pattern, &e, start))?;
        let ends = match_ends(&toks, &value, true);
        if all {
            replace_all(&ends, &value, &replacement).ok_or_else(|| too_large(start))
        } else {
            Ok(replace_first(&ends, &value, &replacement))
        }
    }

    /// BuildKit reports any failure that ran into the end of input as the
    /// missing delimiter of the enclosing `${...}`.
    fn at_end_or(&self, err: ExpandError, at_end: ExpandError) -> ExpandError {
        if self.sc.peek().is_none() {
            at_end
        } else {
            err
        }
    }

    /// `processName`: a run of digits (positional parameter), one special
    /// parameter character, or letters, digits and `_`.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.sc.peek() {
            if name.is_empty() && is_go_digit(ch) {
                while let Some(d) = self.sc.peek().filter(|&c| is_go_digit(c)) {
                    name.push(d);
                    self.sc.next();
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.sc.next();
                return ch.to_string();
            }
            if !is_name_char(ch) {
                break;
            }
            name.push(ch);
            self.sc.next();
        }
        name
    }
}

fn missing_brace(offset: usize) -> ExpandError {
    ExpandError::new("syntax error: missing '}'", offset)
}

fn unsupported_modifier(op: &str, offset: usize) -> ExpandError {
    ExpandError::new(
        format!("unsupported modifier ({op}) in substitution"),
        offset,
    )
}

fn invalid_pattern(pattern: &str, err: &str, offset: usize) -> ExpandError {
    ExpandError::new(
        format!("invalid pattern ({pattern}) in substitution: {err}"),
        offset,
    )
}

/// `${name?msg}` / `${name:?msg}`.
fn required(
    name: &str,
    value: Option<String>,
    null_is_unset: bool,
    word: String,
    start: usize,
) -> Result<String, ExpandError> {
    let problem = match &value {
        None => "is not allowed to be unset",
        Some(v) if null_is_unset && v.is_empty() => "is not allowed to be empty",
        Some(_) => return Ok(value.unwrap_or_default()),
    };
    let message = if word.is_empty() {
        problem.to_string()
    } else {
        word
    };
    Err(ExpandError::new(format!("{name}: {message}"), start))
}

/// `${name#pat}` / `${name##pat}` / `${name%pat}` / `${name%%pat}`: a doubled
/// operator (the word starting with the operator again) makes it greedy.
fn trim(op: char, word: &str, value: &str, start: usize) -> Result<String, ExpandError> {
    let (greedy, pattern) = match word.strip_prefix(op) {
        Some(p) => (true, p),
        None => (false, word),
    };
    let trimmed = if op == '%' {
        trim_suffix(pattern, value, greedy)
    } else {
        trim_prefix(pattern, value, greedy)
    };
    trimmed.map_err(|e| ExpandError::new(e, start))
}

/// First code points of the runs of ten decimal digits (category Nd) beyond
/// ASCII, as in Unicode 15.0 (what Go's `unicode` package has); std cannot
/// tell Nd from the other numeric categories.
const ND_RUNS: [u32; 62] = [
    0x660, 0x6f0, 0x7c0, 0x966, 0x9e6, 0xa66, 0xae6, 0xb66, 0xbe6, 0xc66, 0xce6, 0xd66, 0xde6,
    0xe50, 0xed0, 0xf20, 0x1040, 0x1090, 0x17e0, 0x1810, 0x1946, 0x19d0, 0x1a80, 0x1a90, 0x1b50,
    0x1bb0, 0x1c40, 0x1c50, 0xa620, 0xa8d0, 0xa900, 0xa9d0, 0xa9f0, 0xaa50, 0xabf0, 0xff10,
    0x104a0, 0x10d30, 0x11066, 0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0, 0x11650,
    0x116c0, 0x11730, 0x118e0, 0x11950, 0x11c50, 0x11d50, 0x11da0, 0x11f50, 0x16a60, 0x16ac0,
    0x16b50, 0x1e140, 0x1e2f0, 0x1e4f0, 0x1e950, 0x1fbf0,
];

/// Go's `unicode.IsDigit` (category Nd).
fn is_go_digit(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    let cp = c as u32;
    // The mathematical digits U+1D7CE..=U+1D7FF are five runs in a row.
    (0x1d7ce..=0x1d7ff).contains(&cp)
        || ND_RUNS
            .iter()
            .any(|&start| (start..start + 10).contains(&cp))
}

/// Go's `unicode.IsLetter` (category L). The Alphabetic property is L plus
/// letter numbers (excluded here, being numeric) and a few marks and symbols
/// (e.g. U+093E, U+24B6), which remain a known difference.
fn is_go_letter(c: char) -> bool {
    c.is_alphabetic() && !c.is_numeric()
}

/// A character of a variable name (and of a Go regexp template reference).
fn is_name_char(c: char) -> bool {
    is_go_letter(c) || is_go_digit(c) || c == '_'
}

/// POSIX special parameters; they are never set in a Dockerfile.
fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

// ---------------------------------------------------------------------------
// Shell patterns (lex.go convertShellPatternToRegex and its users)
// ---------------------------------------------------------------------------

/// A compiled shell pattern: BuildKit turns `*` into `.*` (or `.*?`), `?` into
/// `.` and everything else into a literal, then uses Go's regexp. Go's `.` does
/// not match a newline, and neither do these wildcards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatTok {
    Lit(char),
    AnyChar,
    Star,
}

/// `convertShellPatternToRegex`. The escape here is always `\`, whatever the
/// Dockerfile's escape character: only `\*`, `\?` and `\\` are valid, while
/// `\}` and `\/` stand for `}` and `/`. Errors are Go's `invalid escape` text.
fn compile_pattern(pattern: &str) -> Result<Vec<PatTok>, String> {
    let mut sc = Scanner::new(pattern);
    let mut toks = Vec::new();
    while let Some(tok) = sc.next() {
        toks.push(match tok {
            '*' => PatTok::Star,
            '?' => PatTok::AnyChar,
            '\\' if matches!(sc.peek(), Some('}' | '/')) => continue,
            '\\' => match sc.next() {
                Some(c @ ('*' | '?' | '\\')) => PatTok::Lit(c),
                other => {
                    return Err(format!(
                        "invalid escape '\\{}'",
                        other.unwrap_or(GO_EOF_CHAR)
                    ))
                }
            },
            c => PatTok::Lit(c),
        });
    }
    Ok(toks)
}

/// For every start index in `value`, where the match of `toks` beginning
/// exactly there ends, as Go's leftmost-first regexp engine would choose it
/// (the first match a backtracking matcher finds: greedy stars prefer to
/// consume, lazy ones not to). Dynamic programming over pattern suffixes, so
/// it is linear in `value` per token and never recurses.
fn match_ends(toks: &[PatTok], value: &[char], greedy: bool) -> Vec<Option<usize>> {
    let n = value.len();
    let wild = |i: usize| i < n && value[i] != '\n';
    // Matches of the empty pattern suffix: end where they start.
    let mut next: Vec<Option<usize>> = (0..=n).map(Some).collect();
    for tok in toks.iter().rev() {
        let mut cur = vec![None; n + 1];
        for i in (0..=n).rev() {
            cur[i] = match *tok {
                PatTok::Lit(c) if i < n && value[i] == c => next[i + 1],
                PatTok::AnyChar if wild(i) => next[i + 1],
                PatTok::Star => {
                    let more = if wild(i) { cur[i + 1] } else { None };
                    if greedy {
                        more.or(next[i])
                    } else {
                        next[i].or(more)
                    }
                }
                _ => None,
            };
        }
        next = cur;
    }
    next
}

/// `trimPrefix`: removes the (shortest or greedy) match anchored at the start.
fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let toks = compile_pattern(pattern)
        .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
    let chars: Vec<char> = value.chars().collect();
    Ok(match match_ends(&toks, &chars, greedy)[0] {
        Some(end) => chars[end..].iter().collect(),
        None => value.to_string(),
    })
}

/// `trimSuffix`: BuildKit reverses pattern and value to reuse `trimPrefix`
/// (so error messages show the reversed pattern, as BuildKit's do).
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, String> {
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// `reversePattern`: reverses a pattern but keeps each `\x` pair in order.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut units: Vec<&[char]> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let width = if chars[i] == '\\' && i + 1 < chars.len() {
            2
        } else {
            1
        };
        units.push(&chars[i..i + width]);
        i += width;
    }
    units.iter().rev().flat_map(|unit| unit.iter()).collect()
}

/// `${name/pat/rep}`: the replacement goes in literally, at the leftmost match.
fn replace_first(ends: &[Option<usize>], value: &[char], replacement: &str) -> String {
    match ends.iter().enumerate().find_map(|(i, e)| e.map(|e| (i, e))) {
        Some((start, end)) => {
            let mut out: String = value[..start].iter().collect();
            out.push_str(replacement);
            out.extend(&value[end..]);
            out
        }
        None => value.iter().collect(),
    }
}

/// `${name//pat/rep}`: Go's `Regexp.ReplaceAllString`, including its rules for
/// empty matches and its `$` templates in the replacement. `None` once the
/// result passes [`MAX_EXPANSION`] bytes.
fn replace_all(ends: &[Option<usize>], value: &[char], replacement: &str) -> Option<String> {
    let n = value.len();
    let mut out = String::new();
    let mut last_end = 0;
    let mut search = 0;
    while search <= n {
        let Some((start, end)) = (search..=n).find_map(|i| ends[i].map(|e| (i, e))) else {
            break;
        };
        out.extend(&value[last_end..start]);
        // No replacement for an empty match right after another match.
        if end > last_end || start == 0 {
            let matched: String = value[start..end].iter().collect();
            out.push_str(&expand_template(replacement, &matched));
            if out.len() > MAX_EXPANSION {
                return None;
            }
        }
        last_end = end;
        // Always advance by at least one character.
        search = if end > search { end } else { search + 1 };
    }
    out.extend(&value[last_end..]);
    Some(out)
}

/// Go's `Regexp.Expand` for a pattern without groups: `$$` is `$`, `$0` and
/// `${0}` the whole match, any other `$name`/`${name}` nothing, and a `$` that
/// starts no reference stays.
fn expand_template(template: &str, matched: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        rest = &rest[dollar + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match template_ref(rest) {
            Some((name, after)) => {
                if name == "0" {
                    out.push_str(matched);
                }
                rest = after;
            }
            None => out.push('$'),
        }
    }
    out.push_str(rest);
    out
}

/// Go's `extract`: a leading `name` or `{name}`; returns it and the rest.
fn template_ref(s: &str) -> Option<(&str, &str)> {
    let (braced, body) = match s.strip_prefix('{') {
        Some(body) => (true, body),
        None => (false, s),
    };
    let len = body.find(|c: char| !is_name_char(c)).unwrap_or(body.len());
    if len == 0 {
        return None;
    }
    let rest = &body[len..];
    let rest = if braced {
        rest.strip_prefix('}')?
    } else {
        rest
    };
    Some((&body[..len], rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn buildkit_env() -> BTreeMap<String, String> {
        vars(&[
            ("PWD", "/home"),
            ("SHELL", "bash"),
            ("KOREAN", "한국어"),
            ("NULL", ""),
        ])
    }

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    /// BuildKit's `frontend/dockerfile/shell/envVarTest`, run as its
    /// `TestShellParser4EnvVars` does: `platform|word|expected` (A = all,
    /// U = Unix, W = Windows only), `error` = must fail.
    const ENV_VAR_TEST: &str = r##"
A|hello                    |     hello
A|he'll'o                  |     hello
A|he'llo                   |     error
A|he\'llo                  |     he'llo
A|he\\'llo                 |     error
A|abc\tdef                 |     abctdef
A|"abc\tdef"               |     abc\tdef
A|"abc\\tdef"              |     abc\tdef
A|'abc\tdef'               |     abc\tdef
A|hello\                   |     hello
A|hello\\                  |     hello\
A|"hello                   |     error
A|"hello\"                 |     error
A|"hel'lo"                 |     hel'lo
A|'hello                   |     error
A|'hello\'                 |     hello\
A|'hello\there'            |     hello\there
A|'hello\\there'           |     hello\\there
A|"''"                     |     ''
A|$.                       |     $.
A|he$1x                    |     hex
A|he$.x                    |     he$.x
# Next one is different on Windows as $pwd==$PWD
U|he$pwd.                  |     he.
W|he$pwd.                  |     he/home.
A|he$PWD                   |     he/home
A|he\$PWD                  |     he$PWD
A|he\\$PWD                 |     he\/home
A|"he\$PWD"                |     he$PWD
A|"he\\$PWD"               |     he\/home
A|\${}                     |     ${}
A|\${}aaa                  |     ${}aaa
A|he\${}                   |     he${}
A|he\${}xx                 |     he${}xx
A|${}                      |     error
A|${}aaa                   |     error
A|he${}                    |     error
A|he${}xx                  |     error
A|he${hi}                  |     he
A|he${hi}xx                |     hexx
A|he${PWD}                 |     he/home
A|he${.}                   |     error
A|he${XXX:-000}xx          |     he000xx
A|he${PWD:-000}xx          |     he/homexx
A|he${XXX:-$PWD}xx         |     he/homexx
A|he${XXX:-${PWD:-yyy}}xx  |     he/homexx
A|he${XXX:-${YYY:-yyy}}xx  |     heyyyxx
A|he${XXX:YYY}             |     error
A|he${XXX:+${PWD}}xx       |     hexx
A|he${PWD:+${XXX}}xx       |     hexx
A|he${PWD:+${SHELL}}xx     |     hebashxx
A|he${XXX:+000}xx          |     hexx
A|he${PWD:+000}xx          |     he000xx
A|'he${XX}'                |     he${XX}
A|"he${PWD}"               |     he/home
A|"he'$PWD'"               |     he'/home'
A|"$PWD"                   |     /home
A|'$PWD'                   |     $PWD
A|'\$PWD'                  |     \$PWD
A|'"hello"'                |     "hello"
A|he\$PWD                  |     he$PWD
A|"he\$PWD"                |     he$PWD
A|'he\$PWD'                |     he\$PWD
A|he${PWD                  |     error
A|he${PWD:=000}xx          |     error
A|he${PWD:+${PWD}:}xx      |     he/home:xx
A|he${XXX:-\$PWD:}xx       |     he$PWD:xx
A|he${XXX:-\${PWD}z}xx     |     he${PWDz}xx
A|안녕하세요                 |     안녕하세요
A|안'녕'하세요               |     안녕하세요
A|안'녕하세요                |     error
A|안녕\'하세요               |     안녕'하세요
A|안\\'녕하세요              |     error
A|안녕\t하세요               |     안녕t하세요
A|"안녕\t하세요"             |     안녕\t하세요
A|'안녕\t하세요              |     error
A|안녕하세요\                |     안녕하세요
A|안녕하세요\\               |     안녕하세요\
A|"안녕하세요                |     error
A|"안녕하세요\"              |     error
A|"안녕'하세요"              |     안녕'하세요
A|'안녕하세요                |     error
A|'안녕하세요\'              |     안녕하세요\
A|안녕$1x                    |     안녕x
A|안녕$.x                    |     안녕$.x
# Next one is different on Windows as $pwd==$PWD
U|안녕$pwd.                  |     안녕.
W|안녕$pwd.                  |     안녕/home.
A|안녕$PWD                   |     안녕/home
A|안녕\$PWD                  |     안녕$PWD
A|안녕\\$PWD                 |     안녕\/home
A|안녕\${}                   |     안녕${}
A|안녕\${}xx                 |     안녕${}xx
A|안녕${}                    |     error
A|안녕${}xx                  |     error
A|안녕${hi}                  |     안녕
A|안녕${hi}xx                |     안녕xx
A|안녕${PWD}                 |     안녕/home
A|안녕${.}                   |     error
A|안녕${XXX:-000}xx          |     안녕000xx
A|안녕${PWD:-000}xx          |     안녕/homexx
A|안녕${XXX:-$PWD}xx         |     안녕/homexx
A|안녕${XXX:-${PWD:-yyy}}xx  |     안녕/homexx
A|안녕${XXX:-${YYY:-yyy}}xx  |     안녕yyyxx
A|안녕${XXX:YYY}             |     error
A|안녕${XXX:+${PWD}}xx       |     안녕xx
A|안녕${PWD:+${XXX}}xx       |     안녕xx
A|안녕${PWD:+${SHELL}}xx     |     안녕bashxx
A|안녕${XXX:+000}xx          |     안녕xx
A|안녕${PWD:+000}xx          |     안녕000xx
A|'안녕${XX}'                |     안녕${XX}
A|"안녕${PWD}"               |     안녕/home
A|"안녕'$PWD'"               |     안녕'/home'
A|'"안녕"'                   |     "안녕"
A|안녕\$PWD                  |     안녕$PWD
A|"안녕\$PWD"                |     안녕$PWD
A|'안녕\$PWD'                |     안녕\$PWD
A|안녕${PWD                  |     error
A|안녕${PWD:=000}xx          |     error
A|안녕${PWD:+${PWD}:}xx      |     안녕/home:xx
A|안녕${XXX:-\$PWD:}xx       |     안녕$PWD:xx
A|안녕${XXX:-\${PWD}z}xx     |     안녕${PWDz}xx
A|$KOREAN                    |     한국어
A|안녕$KOREAN                |     안녕한국어
A|${{aaa}                   |     error
A|${aaa}}                   |     }
A|${aaa                     |     error
A|${{aaa:-bbb}              |     error
A|${aaa:-bbb}}              |     bbb}
A|${aaa:-bbb                |     error
A|${aaa:-bbb}               |     bbb
A|${aaa:-${bbb:-ccc}}       |     ccc
A|${aaa:-bbb ${foo}         |     error
A|${aaa:-bbb {foo}          |     bbb {foo
A|${:}                      |     error
A|${:-bbb}                  |     error
A|${:+bbb}                  |     error

# Positional parameters won't be set:
# http://pubs.opengroup.org/onlinepubs/009695399/utilities/xcu_chap02.html#tag_02_05_01
A|$1                        |
A|${1}                      |
A|${1:+bbb}                 |
A|${1:-bbb}                 |     bbb
A|$2                        |
A|${2}                      |
A|${2:+bbb}                 |
A|${2:-bbb}                 |     bbb
A|$3                        |
A|${3}                      |
A|${3:+bbb}                 |
A|${3:-bbb}                 |     bbb
A|$4                        |
A|${4}                      |
A|${4:+bbb}                 |
A|${4:-bbb}                 |     bbb
A|$5                        |
A|${5}                      |
A|${5:+bbb}                 |
A|${5:-bbb}                 |     bbb
A|$6                        |
A|${6}                      |
A|${6:+bbb}                 |
A|${6:-bbb}                 |     bbb
A|$7                        |
A|${7}                      |
A|${7:+bbb}                 |
A|${7:-bbb}                 |     bbb
A|$8                        |
A|${8}                      |
A|${8:+bbb}                 |
A|${8:-bbb}                 |     bbb
A|$9                        |
A|${9}                      |
A|${9:+bbb}                 |
A|${9:-bbb}                 |     bbb
A|$999                      |
A|${999}                    |
A|${999:+bbb}               |
A|${999:-bbb}               |     bbb
A|$999aaa                   |     aaa
A|${999}aaa                 |     aaa
A|${999:+bbb}aaa            |     aaa
A|${999:-bbb}aaa            |     bbbaaa
A|$001                      |
A|${001}                    |
A|${001:+bbb}               |
A|${001:-bbb}               |     bbb
A|$001aaa                   |     aaa
A|${001}aaa                 |     aaa
A|${001:+bbb}aaa            |     aaa
A|${001:-bbb}aaa            |     bbbaaa

# Special parameters won't be set in the Dockerfile:
# http://pubs.opengroup.org/onlinepubs/009695399/utilities/xcu_chap02.html#tag_02_05_02
A|$@                        |
A|${@}                      |
A|${@:+bbb}                 |
A|${@:-bbb}                 |     bbb
A|$@@@                      |     @@
A|$@aaa                     |     aaa
A|${@}aaa                   |     aaa
A|${@:+bbb}aaa              |     aaa
A|${@:-bbb}aaa              |     bbbaaa
A|$*                        |
A|${*}                      |
A|${*:+bbb}                 |
A|${*:-bbb}                 |     bbb
A|$#                        |
A|${#}                      |
A|${#:+bbb}                 |
A|${#:-bbb}                 |     bbb
A|$?                        |
A|${?}                      |
A|${?:+bbb}                 |
A|${?:-bbb}                 |     bbb
A|$-                        |
A|${-}                      |
A|${-:+bbb}                 |
A|${-:-bbb}                 |     bbb
A|$$                        |
A|${$}                      |
A|${$:+bbb}                 |
A|${$:-bbb}                 |     bbb
A|$!                        |
A|${!}                      |
A|${!:+bbb}                 |
A|${!:-bbb}                 |     bbb
A|$0                        |
A|${0}                      |
A|${0:+bbb}                 |
A|${0:-bbb}                 |     bbb
"##;

    #[test]
    fn buildkit_env_var_test() {
        let env = buildkit_env();
        let mut checked = 0;
        for (n, line) in ENV_VAR_TEST.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            let [platform, source, expected] = fields[..] else {
                panic!("bad test line {n}: {line}");
            };
            if platform == "W" {
                continue;
            }
            let got = expand_word(source, &env, '\\');
            if expected == "error" {
                assert!(got.is_err(), "line {n}: {source:?} gave {got:?}");
            } else {
                assert_eq!(got.as_deref(), Ok(expected), "line {n}: {source:?}");
            }
            checked += 1;
        }
        assert_eq!(checked, 222);
    }

    // Expected values of the tables below were produced by BuildKit's own
    // lex.go / line_parsers.go code.

    const LEX_EXTRA: &[(&str, Result<&str, &str>)] = &[
        ("${NULL-x}", Ok("")),
        ("${NULL:-x}", Ok("x")),
        ("${NULL+x}", Ok("x")),
        ("${NULL:+x}", Ok("")),
        ("${NULL?}", Ok("")),
        ("${NULL:?}", Err("NULL: is not allowed to be empty")),
        ("${NULL:?must be set}", Err("NULL: must be set")),
        ("${XXX?}", Err("XXX: is not allowed to be unset")),
        ("${XXX:?}", Err("XXX: is not allowed to be unset")),
        ("${XXX?no $SHELL here}", Err("XXX: no bash here")),
        ("${PWD?x}", Ok("/home")),
        ("${PWD:?x}", Ok("/home")),
        ("${XXX-}", Ok("")),
        ("${XXX:-}", Ok("")),
        ("${PWD#/}", Ok("home")),
        ("${PWD#*o}", Ok("me")),
        ("${PWD##*o}", Ok("me")),
        ("${PWD%e}", Ok("/hom")),
        ("${PWD%o*}", Ok("/h")),
        ("${PWD%%o*}", Ok("/h")),
        ("${PWD%%*}", Ok("")),
        ("${PWD#*}", Ok("/home")),
        ("${PWD##*}", Ok("")),
        ("${PWD/o/0}", Ok("/h0me")),
        ("${PWD//[/x}", Ok("/home")),
        ("${SHELL//?/-}", Ok("----")),
        ("${SHELL/a*/X}", Ok("bX")),
        ("${SHELL//a/$PWD}", Ok("b/homesh")),
        ("${SHELL/}", Err("syntax error: missing '/' in ${}")),
        ("${SHELL/a}", Err("syntax error: missing '/' in ${}")),
        ("${SHELL//b/\\$0\\$0}", Ok("\\b\\bash")),
        ("${SHELL:#b}", Ok("ash")),
        ("${SHELL:%h}", Ok("bas")),
        (
            "${SHELL:/a/b}",
            Err("unsupported modifier (:/) in substitution"),
        ),
        ("${SHELL:}", Err("syntax error: missing '}'")),
        (
            "${SHELL:}x}",
            Err("unsupported modifier (:}) in substitution"),
        ),
        (
            "${SHELL#\\x}",
            Err("invalid pattern (\\x) in substitution: invalid escape '\\x'"),
        ),
        ("${SHELL%x\\}", Err("syntax error: missing '}'")),
        (
            "${SHELL=x}",
            Err("unsupported modifier (=) in substitution"),
        ),
        (
            "${SHELL:=x}",
            Err("unsupported modifier (:=) in substitution"),
        ),
        (
            "${SHELL x}",
            Err("unsupported modifier ( ) in substitution"),
        ),
        ("${ SHELL}", Err("unsupported modifier ( ) in substitution")),
        // BuildKit: "unsupported modifier (\u{fffd}) in substitution".
        ("${SHELL", Err("syntax error: missing '}'")),
        ("${SHELL:", Err("syntax error: missing '}'")),
        ("${SHELL:-", Err("syntax error: missing '}'")),
        ("${SHELL/a", Err("syntax error: missing '/' in ${}")),
        ("${SHELL/a/b", Err("syntax error: missing '}'")),
        ("${SHELL:-${XXX:?boom}}", Err("XXX: boom")),
        ("${SHELL:-${XXX:?boom}", Err("syntax error: missing '}'")),
        ("${XXX:-'a b'}", Ok("a b")),
        ("${XXX:-\"a $SHELL\"}", Ok("a bash")),
        ("\"${XXX:-\"in\"}\"", Ok("in")),
        ("$", Ok("$")),
        ("a$", Ok("a$")),
        ("$ a", Ok("$ a")),
        ("${", Err("syntax error: missing '}'")),
        ("\\", Ok("")),
        ("a\\", Ok("a")),
        (
            "\"a\\",
            Err("unexpected end of statement while looking for matching double-quote"),
        ),
        ("\"\\\"\"", Ok("\"")),
        ("\"a\\b\"", Ok("a\\b")),
        ("\"a\\$b\"", Ok("a$b")),
        ("\"a\\\\b\"", Ok("a\\b")),
        ("\"a\\`b\"", Ok("a\\`b")),
        ("'a\\'", Ok("a\\")),
        ("${PWD}$SHELL${NULL}x", Ok("/homebashx")),
        ("$SHELL_x", Ok("")),
        ("${SHELL}_x", Ok("bash_x")),
        ("$KOREAN한", Ok("")),
        ("${KOREAN%어}", Ok("한국")),
        ("${KOREAN#?}", Ok("국어")),
        ("x${@}y", Ok("xy")),
        ("$1$2", Ok("")),
        ("${10}", Ok("")),
        ("$10", Ok("")),
        ("${PWD:+\"q\"}", Ok("q")),
        ("${PWD:+'$SHELL'}", Ok("$SHELL")),
    ];
    const LEX_BACKTICK: &[(&str, Result<&str, &str>)] = &[
        ("he`$PWD", Ok("he$PWD")),
        ("he``$PWD", Ok("he`/home")),
        ("he\\$PWD", Ok("he\\/home")),
        ("\"he`$PWD\"", Ok("he$PWD")),
        ("\"he`\"x\"", Ok("he\"x")),
        ("\"he\\\"x", Ok("he\\x")),
        ("'a`'", Ok("a`")),
        ("a`", Ok("a")),
        ("a`` b", Ok("a` b")),
        ("\"a`b\"", Ok("a`b")),
        ("${XXX:-`}}", Ok("}")),
        ("${PWD#`/}", Ok("/home")),
        ("${PWD#\\/}", Ok("home")),
        ("${PWD//o/`$0}", Ok("/h`ome")),
    ];
    const WORDS: &[(&str, &[&str])] = &[
        ("hello", &["hello"]),
        ("hello${hi}bye", &["hellohibye"]),
        ("hello${space}bye", &["helloabc", "defbye"]),
        ("hello\"${space}\"bye", &["helloabc  defbye"]),
        ("hello \"${space}\"bye", &["hello", "abc  defbye"]),
        ("hello${leading}def", &["hello", "ab", "cdef"]),
        ("hello\"${leading}\" def", &["hello  ab c", "def"]),
        ("hello\"${leading}\"", &["hello  ab c"]),
        ("hello${leading}", &["hello", "ab", "c"]),
        ("hello${trailing}", &["helloab", "c"]),
        ("hello${trailing}d", &["helloab", "c", "d"]),
        ("hello\"${trailing}\"d", &["helloab c   d"]),
        ("hello\tthere", &["hello", "there"]),
        ("hello\\ there", &["hello there"]),
        ("\"hello\"   \"there\"", &["hello", "there"]),
        ("'hello'   'there'", &["hello", "there"]),
        ("hello\" there\"", &["hello there"]),
        ("\"\"", &[]),
        ("''", &[]),
        ("a \"\" b", &["a", "b"]),
        ("${empty}", &[]),
        ("\"${empty}\"", &[]),
        ("a${empty}b", &["ab"]),
        (" a  b ", &["a", "b"]),
        ("\"a\"\"b\"", &["ab"]),
        ("${XXX:-x y}", &["x", "y"]),
        ("\"${XXX:-x y}\"", &["x y"]),
        ("${XXX:-\"x y\"}", &["x", "y"]),
        ("a\\\tb", &["a\tb"]),
        ("'a b'c d", &["a bc", "d"]),
        ("", &[]),
        ("   ", &[]),
    ];
    const SPLIT: &[(&str, &[&str])] = &[
        ("foo", &["foo"]),
        ("foo bar", &["foo", "bar"]),
        ("foo\\ bar", &["foo\\ bar"]),
        ("foo=bar", &["foo=bar"]),
        ("foo bar 'abc xyz'", &["foo", "bar", "'abc xyz'"]),
        ("foo bar \"abc xyz\"", &["foo", "bar", "\"abc xyz\""]),
        ("àöû", &["àöû"]),
        ("föo bàr \"âbc xÿz\"", &["föo", "bàr", "\"âbc xÿz\""]),
        ("a\\", &["a"]),
        ("\"a\\", &["\"a"]),
        ("\"a b", &["\"a b"]),
        ("'a\\' b", &["'a\\'", "b"]),
        ("a\"b c\"d e", &["a\"b c\"d", "e"]),
        ("x=\"a\\\"b\" y", &["x=\"a\\\"b\"", "y"]),
        ("  lead  trail  ", &["lead", "trail"]),
        ("\"\"", &["\"\""]),
        ("a \"\" b", &["a", "\"\"", "b"]),
        ("a\\\"b c", &["a\\\"b", "c"]),
        ("'a'\\ 'b'", &["'a'\\ 'b'"]),
        ("a\u{a0}b", &["a", "b"]),
        ("\"a\\\\\" b", &["\"a\\\\\"", "b"]),
    ];
    /// Arguments and the pairs (or error message) BuildKit makes of them.
    type NameValCase = (
        &'static str,
        Result<&'static [(&'static str, &'static str)], &'static str>,
    );
    type ArgDeclCase = (
        &'static str,
        Result<&'static [(&'static str, Option<&'static str>)], &'static str>,
    );
    type EnvCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

    const NAME_VALS: &[NameValCase] = &[
        ("name value", Ok(&[("name", "value")])),
        ("name=value", Ok(&[("name", "value")])),
        ("name=value name2=value2", Ok(&[("name", "value"), ("name2", "value2")])),
        ("name=\"value value1\"", Ok(&[("name", "\"value value1\"")])),
        ("name=value\\ value2", Ok(&[("name", "value\\ value2")])),
        ("name=\"value'quote space'value2\"", Ok(&[("name", "\"value'quote space'value2\"")])),
        ("name='value\"double quote\"value2'", Ok(&[("name", "'value\"double quote\"value2'")])),
        ("name=value\\ value2 name2=value2\\ value3", Ok(&[("name", "value\\ value2"), ("name2", "value2\\ value3")])),
        ("name=\"a\\\"b\"", Ok(&[("name", "\"a\\\"b\"")])),
        ("name=\"a\\'b\"", Ok(&[("name", "\"a\\'b\"")])),
        ("name='a\\'b'", Ok(&[("name", "'a\\'b'")])),
        ("name='a\\'b''", Ok(&[("name", "'a\\'b''")])),
        ("name='a\\\"b'", Ok(&[("name", "'a\\\"b'")])),
        ("name=\"''\"", Ok(&[("name", "\"''\"")])),
        ("name=value name1=value1 name2=\"value2a            value2b\" name3=\"value3a\\n\\\"value3b\\\"\" name4=\"value4a\\\\nvalue4b\"", Ok(&[("name", "value"), ("name1", "value1"), ("name2", "\"value2a            value2b\""), ("name3", "\"value3a\\n\\\"value3b\\\"\""), ("name4", "\"value4a\\\\nvalue4b\"")])),
        ("", Err("ENV requires at least one argument")),
        ("   ", Err("ENV requires at least one argument")),
        ("name", Err("ENV must have two arguments")),
        ("name  value  more ", Ok(&[("name", "value  more")])),
        ("a=b c", Err("Syntax error - can't find = in \"c\". Must be of the form: name=value")),
        ("=v", Err("ENV names can not be blank")),
        ("a=1 =2", Err("ENV names can not be blank")),
        ("=a b", Err("Syntax error - can't find = in \"b\". Must be of the form: name=value")),
        ("\"a b\" c", Ok(&[("\"a", "b\" c")])),
        ("a=b=c", Ok(&[("a", "b=c")])),
        ("k\tv", Ok(&[("k", "v")])),
        ("a= b=", Ok(&[("a", ""), ("b", "")])),
        ("a\u{a0}b", Err("ENV must have two arguments")),
        ("  k  v  ", Ok(&[("k", "v")])),
    ];
    const ARG_DECLS: &[ArgDeclCase] = &[
        ("a", Ok(&[("a", None)])),
        ("a b", Ok(&[("a", None), ("b", None)])),
        ("a=1", Ok(&[("a", Some("1"))])),
        (
            "a=1 b c=",
            Ok(&[("a", Some("1")), ("b", None), ("c", Some(""))]),
        ),
        ("a=\"x y\" b", Ok(&[("a", Some("\"x y\"")), ("b", None)])),
        ("=x", Err("ARG names can not be blank")),
        ("a =x", Err("ARG names can not be blank")),
        ("", Err("ARG requires at least one argument")),
        ("  ", Err("ARG requires at least one argument")),
        ("a=b=c", Ok(&[("a", Some("b=c"))])),
        ("a\\ b=c", Ok(&[("a\\ b", Some("c"))])),
        ("'a b'=c", Ok(&[("'a b'", Some("c"))])),
    ];

    #[test]
    fn lex_extra_cases() {
        let env = buildkit_env();
        for (word, expected) in LEX_EXTRA {
            let got = expand_word(word, &env, '\\').map_err(|e| e.message);
            assert_eq!(
                got,
                expected.map(str::to_string).map_err(str::to_string),
                "{word:?}"
            );
        }
    }

    #[test]
    fn backtick_escape() {
        let env = buildkit_env();
        for (word, expected) in LEX_BACKTICK {
            let got = expand_word(word, &env, '`').map_err(|e| e.message);
            assert_eq!(
                got,
                expected.map(str::to_string).map_err(str::to_string),
                "{word:?}"
            );
        }
    }

    /// In the spirit of BuildKit's `wordsTest` (`TestShellParser4Words`).
    #[test]
    fn words_splitting() {
        let env = vars(&[
            ("hi", "hi"),
            ("space", "abc  def"),
            ("leading", "  ab c"),
            ("trailing", "ab c   "),
            ("empty", ""),
        ]);
        for (word, expected) in WORDS {
            assert_eq!(
                expand_words(word, &env, '\\'),
                Ok(strings(expected)),
                "{word:?}"
            );
        }
    }

    #[test]
    fn words_errors_match_word_errors() {
        let env = buildkit_env();
        for word in ["\"open", "'open", "${", "${A:?gone}", "${}"] {
            assert_eq!(
                expand_words(word, &env, '\\').unwrap_err(),
                expand_word(word, &env, '\\').unwrap_err()
            );
        }
    }

    /// BuildKit's `TestProcessWithMatches` (results only).
    #[test]
    fn buildkit_process_with_matches() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
        let foo_bar: &[(&str, &str)] = &[("FOO", "xxx"), ("BAR", "")];
        let cases: &[Case] = &[
            ("x", &[("DUMMY", "dummy")], Some("x")),
            ("x ${UNUSED}", &[("DUMMY", "dummy")], Some("x ")),
            ("x ${FOO}", &[("FOO", "y")], Some("x y")),
            (
                "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
                foo_bar,
                Some("xxx  ccc"),
            ),
            (
                "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
                foo_bar,
                Some("xxx bbb ccc"),
            ),
            ("${FOO:-}", foo_bar, Some("xxx")),
            ("${FOO:-}", &[], Some("")),
            (
                "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
                foo_bar,
                Some("aaa bbb "),
            ),
            (
                "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
                foo_bar,
                Some("aaa  "),
            ),
            ("${FOO?aaa}", foo_bar, Some("xxx")),
            ("${BAR?bbb}", foo_bar, Some("")),
            ("${BAZ?ccc}", foo_bar, None),
            ("${FOO:?aaa}", foo_bar, Some("xxx")),
            ("${BAR:?bbb}", foo_bar, None),
            ("${BAZ:?ccc}", foo_bar, None),
            ("${BAZ:?}", foo_bar, None),
            ("${FOO=aaa}", foo_bar, None),
            ("${FOO=:aaa}", foo_bar, None),
            ("${FOO=}", &[], None),
            (
                "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
                &[("FOO", "()[]{}^$.*?|\\x")],
                Some("x"),
            ),
            ("${FOO%%\\**}", &[("FOO", "xx**")], Some("xx")),
            ("${FOO#*x*y}", &[("FOO", "xxyy")], Some("y")),
            ("${FOO#*}", &[("FOO", "xxyy")], Some("xxyy")),
            ("${FOO#$BAR}", &[("FOO", "xxyy"), ("BAR", "x")], Some("xyy")),
            ("${FOO#$BAR}", &[("FOO", "xxyy"), ("BAR", "")], Some("xxyy")),
            ("${FOO#}", &[("FOO", "xxyy")], Some("xxyy")),
            ("${FOO##*x}", &[("FOO", "xxyy")], Some("yy")),
            ("${FOO##}", &[("FOO", "xxyy")], Some("xxyy")),
            ("${FOO#?\\?}", &[("FOO", "???y")], Some("?y")),
            (
                "${ABC:-.}${FOO%x}${ABC:-.}",
                &[("FOO", "xxyy")],
                Some(".xxyy."),
            ),
            ("${FOO%%\\**\\*}", &[("FOO", "a***yy*")], Some("a")),
            ("${FOO%}", &[("FOO", "xxyy")], Some("xxyy")),
            (
                "${FOO%%$BAR}",
                &[("FOO", "xxyy"), ("BAR", "")],
                Some("xxyy"),
            ),
            (
                "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
                &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")],
                Some("/foo.*/*.txt - /foo..*.txt"),
            ),
            (
                "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
                &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
                Some("/tmp/bar.txt - /bar.txt"),
            ),
            (
                "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
                &[
                    ("FOO", "/a/foo/b/c.txt"),
                    ("NEEDLE", "/?/"),
                    ("REPLACEMENT", "/"),
                ],
                Some("/foo/b/c.txt - /foo/c.txt"),
            ),
            (
                "${FOO/$NEEDLE/$REPLACEMENT}",
                &[
                    ("FOO", "http://google.de"),
                    ("NEEDLE", "http://"),
                    ("REPLACEMENT", "https://"),
                ],
                Some("https://google.de"),
            ),
            (
                "${FOO//\\//\\/}",
                &[("FOO", "/tmp/foo.txt")],
                Some("\\/tmp\\/foo.txt"),
            ),
            (
                "${FOO/$BAR/ww}",
                &[("FOO", "xxyy"), ("BAR", "")],
                Some("wwxxyy"),
            ),
            ("${FOO//ww}", &[("FOO", "xxyy")], None),
            ("${FOO//}", &[("FOO", "xxyy")], None),
            ("${FOO///}", &[("FOO", "xxyy")], Some("xxyy")),
            ("${FOO///}", &[], Some("")),
        ];
        for (word, env, expected) in cases {
            let got = expand_word(word, &vars(env), '\\');
            match expected {
                Some(expected) => assert_eq!(got.as_deref(), Ok(*expected), "{word:?}"),
                None => assert!(got.is_err(), "{word:?} gave {got:?}"),
            }
        }
    }

    /// BuildKit's `TestProcessWithMatchesPlatform`.
    #[test]
    fn buildkit_release_file_name() {
        let word = "something-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz";
        let mut env = vars(&[
            ("VERSION", "v1.2.3"),
            ("TARGETOS", "linux"),
            ("TARGETARCH", "arm"),
            ("TARGETVARIANT", "v7"),
        ]);
        assert_eq!(
            expand_word(word, &env, '\\').unwrap(),
            "something-v1.2.3.linux-arm-v7.tar.gz"
        );
        env.insert("TARGETARCH".into(), "amd64".into());
        env.remove("TARGETVARIANT");
        assert_eq!(
            expand_word(word, &env, '\\').unwrap(),
            "something-v1.2.3.linux-amd64.tar.gz"
        );
    }

    /// BuildKit's `TestShellParserMandatoryEnvVars`.
    #[test]
    fn buildkit_mandatory_env_vars() {
        let set = vars(&[("VAR", "plain"), ("ARG", "x")]);
        let empty = vars(&[("VAR", ""), ("ARG", "x")]);
        let unset = vars(&[("ARG", "x")]);
        let no_empty = "${VAR:?message here$ARG}";
        let no_unset = "${VAR?message here$ARG}";
        assert_eq!(expand_word(no_empty, &set, '\\').unwrap(), "plain");
        assert_eq!(
            expand_word(no_empty, &empty, '\\').unwrap_err().message,
            "VAR: message herex"
        );
        assert_eq!(
            expand_word(no_empty, &unset, '\\').unwrap_err().message,
            "VAR: message herex"
        );
        assert_eq!(expand_word(no_unset, &set, '\\').unwrap(), "plain");
        assert_eq!(expand_word(no_unset, &empty, '\\').unwrap(), "");
        assert_eq!(
            expand_word(no_unset, &unset, '\\').unwrap_err().message,
            "VAR: message herex"
        );
    }

    #[test]
    fn hash_map_vars_and_unset_vs_empty() {
        let mut env: HashMap<String, String> = HashMap::new();
        env.insert("E".into(), String::new());
        assert_eq!(
            expand_word("${E-unset}|${U-unset}", &env, '\\').unwrap(),
            "|unset"
        );
        assert_eq!(
            expand_word("${E:-empty}|${U:-unset}", &env, '\\').unwrap(),
            "empty|unset"
        );
    }

    #[test]
    fn shell_pattern_edge_cases() {
        let cases: &[EnvCase] = &[
            (
                "${V//a/$R}",
                &[("V", "a"), ("R", "[$0|$$|${0}|$x|$-|${x|$00|${0|$]")],
                "[a|$|a||$-|${x||${0|$]",
            ),
            ("${V//$E/-}", &[("V", "abc"), ("E", "")], "-a-b-c-"),
            ("${V/$E/-}", &[("V", "abc"), ("E", "")], "-abc"),
            ("${V//x*/-}", &[("V", "axxbx")], "a-"),
            ("${V//x*?/-}", &[("V", "axxbx")], "a-"),
            ("${V##*}", &[("V", "a\nb")], "\nb"),
            ("${V%%*}", &[("V", "a\nb")], "a\n"),
            ("${V//?/-}", &[("V", "a\nb")], "-\n-"),
            ("${V#a*b}", &[("V", "aXbYb")], "Yb"),
            ("${V##a*b}", &[("V", "aXbYb")], ""),
            ("${V%a*b}", &[("V", "aXbYab")], "aXbY"),
            ("${V%%a*b}", &[("V", "aXbYab")], ""),
            ("${V//b*/$R}", &[("V", "abcb"), ("R", "<$0>")], "a<bcb>"),
            ("${V/b*/$R}", &[("V", "abcb"), ("R", "<$0>")], "a<$0>"),
            ("\u{feff}$V", &[("V", "x")], "x"),
        ];
        for (word, env, expected) in cases {
            assert_eq!(
                expand_word(word, &vars(env), '\\').as_deref(),
                Ok(*expected),
                "{word:?}"
            );
        }
    }

    /// BuildKit's `TestConvertShellPatternToRegex`.
    #[test]
    fn buildkit_convert_shell_pattern() {
        use PatTok::*;
        assert_eq!(compile_pattern("*"), Ok(vec![Star]));
        assert_eq!(compile_pattern("?"), Ok(vec![AnyChar]));
        assert_eq!(compile_pattern("\\*"), Ok(vec![Lit('*')]));
        let literal: Vec<PatTok> = "(()[]{}^$.*?|\\".chars().map(Lit).collect();
        assert_eq!(compile_pattern("(()[]{\\}^$.\\*\\?|\\\\"), Ok(literal));
        for invalid in ["\\", "\\x", "\\\\\\"] {
            assert!(compile_pattern(invalid).is_err(), "{invalid:?}");
        }
        assert_eq!(
            compile_pattern("\\x"),
            Err("invalid escape '\\x'".to_string())
        );
    }

    /// BuildKit's `TestReversePattern` and `TestReverseString`.
    #[test]
    fn buildkit_reverse_pattern() {
        let cases = [
            ("a\\*c", "c\\*a"),
            ("\\\\\\ab", "b\\a\\\\"),
            ("ab\\", "\\ba"),
            ("👽\\🚀🖖", "🖖\\🚀👽"),
            ("\\\\b", "b\\\\"),
        ];
        for (pattern, expected) in cases {
            assert_eq!(reverse_pattern(pattern), expected, "{pattern:?}");
        }
        assert_eq!(trim_suffix("", "🖖🚀👽", false).unwrap(), "🖖🚀👽");
    }

    #[test]
    fn go_template_expansion() {
        assert_eq!(expand_template("$0$$${0}$1$x${x}$", "M"), "M$M$");
        assert_eq!(expand_template("${0", "M"), "${0");
        assert_eq!(expand_template("$", "M"), "$");
    }

    /// BuildKit's parser `TestParseWords` plus quote and escape corner cases.
    #[test]
    fn split_words_cases() {
        for (args, expected) in SPLIT {
            assert_eq!(split_words(args, '\\'), strings(expected), "{args:?}");
        }
        assert_eq!(split_words("a` b c", '`'), strings(&["a` b", "c"]));
        assert_eq!(
            split_words("\"a`\"b\" c", '`'),
            strings(&["\"a`\"b\"", "c"])
        );
        assert_eq!(split_words("a\\ b", '`'), strings(&["a\\", "b"]));
    }

    /// Includes BuildKit's parser testfile `env` (Dockerfile and expected AST).
    #[test]
    fn parse_name_vals_cases() {
        for (args, expected) in NAME_VALS {
            let got = parse_name_vals("ENV", args, '\\').map_err(|e| e.message);
            let expected = expected
                .map(|pairs| {
                    pairs
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                })
                .map_err(str::to_string);
            assert_eq!(got, expected, "{args:?}");
        }
        assert_eq!(
            parse_name_vals("LABEL", "", '\\').unwrap_err().message,
            "LABEL requires at least one argument"
        );
        assert_eq!(
            parse_name_vals("LABEL", "=x", '\\').unwrap_err().message,
            "LABEL names can not be blank"
        );
    }

    #[test]
    fn parse_arg_decls_cases() {
        for (args, expected) in ARG_DECLS {
            let got = parse_arg_decls(args, '\\').map_err(|e| e.message);
            let expected = expected
                .map(|decls| {
                    decls
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                        .collect()
                })
                .map_err(str::to_string);
            assert_eq!(got, expected, "{args:?}");
        }
    }

    #[test]
    fn error_display_and_offsets() {
        let env = vars(&[]);
        let err = expand_word("ab${HOME:?is required}", &env, '\\').unwrap_err();
        assert_eq!(err.to_string(), "HOME: is required");
        assert_eq!(err.offset, 2);
        let err = expand_word("x ${A:-${B:?}}", &env, '\\').unwrap_err();
        assert_eq!(
            (err.message.as_str(), err.offset),
            ("B: is not allowed to be unset", 7)
        );
        let err = expand_word("ab\"cd", &env, '\\').unwrap_err();
        assert_eq!(
            (err.message.as_str(), err.offset),
            (
                "unexpected end of statement while looking for matching double-quote",
                2
            )
        );
        let err = expand_word("é'x", &env, '\\').unwrap_err();
        assert_eq!(
            (err.message.as_str(), err.offset),
            (
                "unexpected end of statement while looking for matching single-quote",
                2
            )
        );
        let err = expand_word("a${b:-c", &env, '\\').unwrap_err();
        assert_eq!(
            (err.message.as_str(), err.offset),
            ("syntax error: missing '}'", 1)
        );
        // BuildKit would say "unsupported modifier (\u{fffd}) in substitution".
        assert_eq!(
            expand_word("${abc", &env, '\\').unwrap_err().message,
            "syntax error: missing '}'"
        );
        let err: Box<dyn std::error::Error> = Box::new(expand_word("${}", &env, '\\').unwrap_err());
        assert_eq!(err.to_string(), "syntax error: bad substitution");

        let err = parse_name_vals("ENV", "  a=b c", '\\').unwrap_err();
        assert_eq!(err.offset, 6);
        assert_eq!(
            parse_name_vals("ENV", " a=1 =2", '\\').unwrap_err().offset,
            5
        );
        assert_eq!(parse_name_vals("ENV", " name", '\\').unwrap_err().offset, 1);
        assert_eq!(parse_arg_decls("a =x", '\\').unwrap_err().offset, 2);
    }

    #[test]
    fn go_quote_matches_strconv_quote() {
        assert_eq!(go_quote("c"), "\"c\"");
        assert_eq!(go_quote("a\"b\\c\td\n"), "\"a\\\"b\\\\c\\td\\n\"");
        assert_eq!(
            go_quote("é\u{1}\u{7f}\u{a0}\u{feff}"),
            "\"é\\x01\\x7f\\u00a0\\ufeff\""
        );
        assert_eq!(go_quote("\u{e0001}"), "\"\\U000e0001\"");
        assert_eq!(
            go_quote("\u{200b}\u{2028}\u{85}\u{3000}x\u{300}😀"),
            "\"\\u200b\\u2028\\u0085\\u3000x\u{300}😀\""
        );
    }

    #[test]
    fn name_characters_follow_go_unicode() {
        let env = vars(&[("\u{663}", "arabic"), ("名前", "name"), ("Ⅷ", "roman")]);
        assert_eq!(expand_word("$\u{663}", &env, '\\').unwrap(), "arabic");
        assert_eq!(expand_word("${名前}", &env, '\\').unwrap(), "name");
        // Not letters or digits for Go: `$` stays literal.
        assert_eq!(expand_word("$Ⅷ $²", &env, '\\').unwrap(), "$Ⅷ $²");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let env = vars(&[]);
        let nested = |depth: usize| "${a:-\"".repeat(depth) + "x" + &"\"}".repeat(depth);
        assert_eq!(expand_word(&nested(MAX_NESTING), &env, '\\').unwrap(), "x");
        let err = expand_word(&nested(100_000), &env, '\\').unwrap_err();
        assert_eq!(err.message, "syntax error: more than 64 nested ${...}");
        assert_eq!(err.offset, 6 * MAX_NESTING);
    }

    #[test]
    fn expansions_past_the_limit_are_an_error() {
        let big = "a".repeat(300_000);
        let env = vars(&[("V", &big)]);
        assert_eq!(expand_word("$V$V$V", &env, '\\').unwrap().len(), 900_000);
        let err = expand_word("x $V$V$V$V", &env, '\\').unwrap_err();
        assert!(
            err.message.contains("more than 1048576 bytes"),
            "{}",
            err.message
        );
        assert_eq!(err.offset, 8);
        // `//` with a long replacement stops as soon as it is past the limit.
        let err = expand_word(&format!("${{V//a/{}}}", "b".repeat(100)), &env, '\\').unwrap_err();
        assert!(err.message.contains("more than"), "{}", err.message);
    }

    #[test]
    fn long_values_are_matched_in_linear_time() {
        let env = vars(&[("V", &"a".repeat(100_000))]);
        let got = expand_word("${V//a/b}${V%%a*a}${V#*a}", &env, '\\').unwrap();
        assert_eq!(got.len(), 100_000 + 99_999);
    }

    /// Tiny xorshift PRNG so the property test needs no crate.
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
    }

    #[test]
    fn never_panics_on_random_input() {
        const ALPHABET: &[&str] = &[
            "$", "{", "}", ":", "-", "+", "?", "'", "\"", "\\", "`", " ", "a", "B", "_", "1", "=",
            "#", "%", "/", "*", "\n", "é", "\u{feff}",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut env = vars(&[("a", "x*y"), ("B", ""), ("_", "a b"), ("1", "/")]);
        for round in 0..4000 {
            let len = rng.below(24);
            let input: String = (0..len)
                .map(|_| ALPHABET[rng.below(ALPHABET.len())])
                .collect();
            if round % 7 == 0 {
                env.insert("a".into(), input.clone());
            }
            for escape in ['\\', '`'] {
                let word = expand_word(&input, &env, escape);
                let words = expand_words(&input, &env, escape);
                // Both come from one pass, so they fail alike.
                assert_eq!(word.as_ref().err(), words.as_ref().err(), "{input:?}");
                if let Err(e) = word {
                    assert!(
                        e.offset <= input.len() && input.is_char_boundary(e.offset),
                        "{input:?}: {e:?}"
                    );
                }
                split_words(&input, escape);
                let _ = parse_name_vals("ENV", &input, escape);
                let _ = parse_arg_decls(&input, escape);
            }
        }
    }
}
