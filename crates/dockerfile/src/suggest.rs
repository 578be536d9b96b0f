//! "did you mean X?": the closest of the valid names to a misspelled one, as
//! BuildKit's `util/suggest` chooses it (Levenshtein distance below 3, the
//! first of the closest; an exact match suggests nothing).

/// The suggestion for `value` among `options`. Case-insensitive matching
/// gives the option in the case `value` was written in (all lower or all
/// upper), as BuildKit does.
pub fn closest(value: &str, options: &[&str], case_sensitive: bool) -> Option<String> {
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_lowercase()
        }
    };
    let wanted = fold(value);
    let mut best: Option<String> = None;
    let mut min = 3;
    for option in options {
        let option = fold(option);
        if option == wanted {
            return None;
        }
        let distance = strsim::levenshtein(&wanted, &option);
        if distance < min {
            min = distance;
            best = Some(option);
        }
    }
    let found = best?;
    Some(if case_sensitive {
        found
    } else if value == value.to_lowercase() {
        found.to_lowercase()
    } else if value == value.to_uppercase() {
        found.to_uppercase()
    } else {
        found
    })
}

/// `message (did you mean X?)` when there is a suggestion, else `message`.
pub fn with_suggestion(
    message: String,
    value: &str,
    options: &[&str],
    case_sensitive: bool,
) -> String {
    match closest(value, options, case_sensitive) {
        Some(s) => format!("{message} (did you mean {s}?)"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_as_buildkit() {
        let ins = ["ENTRYPOINT", "ENV", "EXPOSE"];
        assert_eq!(
            closest("FNTRYPOINT", &ins, false).as_deref(),
            Some("ENTRYPOINT")
        );
        assert_eq!(
            closest("fntrypoint", &ins, false).as_deref(),
            Some("entrypoint")
        );
        assert_eq!(
            closest("mont", &["mount", "network"], true).as_deref(),
            Some("mount")
        );
        assert_eq!(
            closest("tmp", &["bind", "cache", "tmpfs"], true).as_deref(),
            Some("tmpfs")
        );
        assert_eq!(closest("xyzzy", &["mount"], true), None);
        assert_eq!(closest("mount", &["mount"], true), None);
    }
}
