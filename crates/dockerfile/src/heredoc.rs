//! RUN here-documents the parse-dockerfile crate does not take: several in
//! one RUN, or one that is not the start of the command (`RUN cat <<EOF |
//! tr ...`, `RUN <<EOF 3<<IN1 awk -f -`). BuildKit hands such a RUN to the
//! shell as its command line followed, for each here-document, by a newline,
//! the body and the delimiter, and lets the shell read them. This pre-pass
//! finds those RUNs, takes their bodies out of the text (blanked with spaces,
//! so every byte offset and line number stays the same) and returns what to
//! append to each one's command.

use std::collections::BTreeMap;

/// A here-document operator in a shell word: `<<EOF`, `<<-EOF`, `3<<'IN'`.
/// Returns (delimiter, strip leading tabs).
fn operator(word: &str) -> Option<(String, bool)> {
    let rest = word.trim_start_matches(|c: char| c.is_ascii_digit());
    let rest = rest.strip_prefix("<<")?;
    let (rest, chomp) = match rest.strip_prefix('-') {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let delim: String = rest.chars().filter(|c| !matches!(c, '"' | '\'')).collect();
    let valid = delim
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && delim.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some((delim, chomp))
}

/// The words of a command line, split at unquoted whitespace, quotes kept.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => {
                quote = None;
                cur.push(c);
            }
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                cur.push(c);
            }
            None if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            None => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The command of a RUN logical line: after the keyword and its `--flags`.
fn command_text(logical: &str) -> String {
    let mut rest = logical.trim_start();
    rest = rest.get(3..).unwrap_or("").trim_start();
    while rest.starts_with("--") {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        rest = rest[end..].trim_start();
    }
    rest.to_string()
}

/// The escape character a `# escape=` directive at the top sets, else `\`.
fn escape_of(text: &str) -> char {
    for line in text.lines() {
        let t = line.trim();
        let Some(directive) = t.strip_prefix('#') else {
            break;
        };
        let directive = directive.trim();
        if let Some((k, v)) = directive.split_once('=') {
            if k.trim().eq_ignore_ascii_case("escape") {
                return v.trim().chars().next().unwrap_or('\\');
            }
        }
    }
    '\\'
}

/// `text` with the bodies of the RUN here-documents described in the module
/// docs blanked, and, by the byte offset of each such RUN keyword, the
/// command its shell gets (command line, then each body and delimiter).
pub(crate) fn split_run_heredocs(text: &str) -> (String, BTreeMap<usize, String>) {
    let escape = escape_of(text);
    let lines: Vec<(usize, &str)> = {
        let mut at = 0;
        text.split('\n')
            .map(|l| {
                let start = at;
                at += l.len() + 1;
                (start, l)
            })
            .collect()
    };
    let mut out = text.as_bytes().to_vec();
    let mut suffixes = BTreeMap::new();
    let mut i = 0;
    while i < lines.len() {
        let (start, line) = lines[i];
        let trimmed = line.trim_start();
        let keyword = trimmed.split_whitespace().next().unwrap_or("");
        if !keyword.eq_ignore_ascii_case("RUN") {
            // Skip this instruction's continuation lines.
            let mut j = i;
            while j < lines.len() && lines[j].1.trim_end().ends_with(escape) {
                j += 1;
            }
            i = j + 1;
            continue;
        }
        // The logical line: continuations joined.
        let mut logical = String::new();
        let mut j = i;
        loop {
            let l = lines[j].1.trim_end_matches('\r');
            match l.trim_end().strip_suffix(escape) {
                Some(body) if j + 1 < lines.len() => {
                    logical.push_str(body);
                    j += 1;
                }
                _ => {
                    logical.push_str(l);
                    break;
                }
            }
        }
        let command_words: Vec<String> = words(&logical)
            .into_iter()
            .skip(1)
            .skip_while(|w| w.starts_with("--"))
            .collect();
        let docs: Vec<(usize, (String, bool))> = command_words
            .iter()
            .enumerate()
            .filter_map(|(n, w)| operator(w).map(|d| (n, d)))
            .collect();
        let handled_by_parser = docs.is_empty() || (docs.len() == 1 && docs[0].0 == 0);
        if handled_by_parser {
            i = j + 1;
            continue;
        }
        // The bodies follow the logical line, in order.
        let mut suffix = String::new();
        let mut k = j + 1;
        let mut complete = true;
        for (_, (delim, chomp)) in &docs {
            let mut body = String::new();
            loop {
                let Some(&(_, l)) = lines.get(k) else {
                    complete = false;
                    break;
                };
                k += 1;
                let l = l.trim_end_matches('\r');
                let candidate = if *chomp {
                    l.trim_start_matches('\t')
                } else {
                    l
                };
                if candidate == delim {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            if !complete {
                break;
            }
            suffix.push('\n');
            suffix.push_str(&body);
            suffix.push_str(delim);
        }
        if !complete {
            // Leave it to the parser, which reports the missing delimiter.
            i = j + 1;
            continue;
        }
        for &(s, l) in &lines[j + 1..k] {
            for b in &mut out[s..s + l.len()] {
                if *b != b'\r' {
                    *b = b' ';
                }
            }
        }
        // The parser insists on reading a body after a leading `<<WORD`:
        // hide that operator from it (the command comes from here instead).
        if docs[0].0 == 0 {
            let first = &command_words[0];
            if let Some(at) = line.find(first.as_str()) {
                let op = start + at + first.find("<<").unwrap_or(0);
                out[op] = b' ';
                out[op + 1] = b' ';
            }
        }
        let keyword_at = start + (line.len() - trimmed.len());
        suffixes.insert(keyword_at, format!("{}{suffix}", command_text(&logical)));
        i = k;
    }
    // Only ASCII spaces replaced whole UTF-8 sequences' bytes... keep it valid:
    // blanked ranges are whole lines, so every multi-byte sequence was replaced
    // entirely.
    let blanked = String::from_utf8(out).unwrap_or_else(|_| text.to_string());
    (blanked, suffixes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_move_to_the_command() {
        let text = "FROM x\nRUN cat <<EOF1 | tr a b; \\\n\tcat <<EOF2\nhello\nEOF1\nworld\nEOF2\nRUN true\n";
        let (blanked, suffixes) = split_run_heredocs(text);
        assert_eq!(blanked.len(), text.len());
        assert!(
            !blanked.contains("hello") && !blanked.contains("world"),
            "{blanked:?}"
        );
        assert!(blanked.contains("RUN true"));
        assert_eq!(
            suffixes.get(&7).map(String::as_str),
            Some("cat <<EOF1 | tr a b; \tcat <<EOF2\nhello\nEOF1\nworld\nEOF2")
        );
    }

    #[test]
    fn a_leading_heredoc_alone_is_left_to_the_parser() {
        let text = "FROM x\nRUN <<EOF\necho hi\nEOF\n";
        let (blanked, suffixes) = split_run_heredocs(text);
        assert_eq!(blanked, text);
        assert!(suffixes.is_empty());
    }

    #[test]
    fn several_with_file_descriptors() {
        let text = "FROM x\nRUN <<EOF 3<<IN1 awk -f -\nBEGIN {}\nEOF\nhello\nIN1\n";
        let (_, suffixes) = split_run_heredocs(text);
        assert_eq!(
            suffixes.get(&7).map(String::as_str),
            Some("<<EOF 3<<IN1 awk -f -\nBEGIN {}\nEOF\nhello\nIN1")
        );
    }
}
