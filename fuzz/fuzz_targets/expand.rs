//! The word expander and the argument splitters on arbitrary words and
//! variables: each returns a value or an error whose offset lies inside the
//! word; none panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memobuild_dockerfile::expand;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // First char picks the escape character; then up to three `NAME=value`
    // variables, one per line, and the rest (after a NUL) is the word.
    let mut chars = text.chars();
    let escape = match chars.next() {
        Some(c) if (c as u32) % 2 == 0 => '`',
        _ => '\\',
    };
    let rest = chars.as_str();
    let (defs, word) = rest.split_once('\0').unwrap_or(("", rest));
    let vars: BTreeMap<String, String> = defs
        .lines()
        .take(3)
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let inside = |e: &expand::ExpandError| assert!(e.offset <= word.len(), "{e:?} in {word:?}");
    if let Err(e) = expand::expand_word(word, &vars, escape) {
        inside(&e);
    }
    if let Err(e) = expand::expand_words(word, &vars, escape) {
        inside(&e);
    }
    if let Err(e) = expand::expand_heredoc(word, &vars) {
        inside(&e);
    }
    let _ = expand::split_words(word, escape);
    for instruction in ["ENV", "LABEL"] {
        if let Err(e) = expand::parse_name_vals(instruction, word, escape) {
            inside(&e);
        }
    }
    if let Err(e) = expand::parse_arg_decls(word, escape) {
        inside(&e);
    }
});
