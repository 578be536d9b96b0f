//! Slash-separated paths inside a root (a build context, an image filesystem):
//! cleaning them so they cannot climb above the root, and following symlinks
//! with the root standing in for `/`, so resolution can never leave it.

// What other crates may use is what this file exports; the rest is private.
#![warn(unreachable_pub)]

/// Relative path without `.`, `..` or empty components; `..` stops at the root.
pub fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

/// Follows symlinks in every component of `path`. `link_target(p)` returns the
/// target of `p` if it is a symlink. An absolute target restarts at the root.
/// `None` after 40 links (a loop).
pub fn resolve(path: &str, link_target: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut pending: Vec<String> = components_reversed(path);
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => done.push(part),
        }
        let Some(target) = link_target(&done.join("/")) else {
            continue;
        };
        hops += 1;
        if hops > 40 {
            return None;
        }
        done.pop();
        if target.starts_with('/') {
            done.clear();
        }
        pending.extend(components_reversed(&target));
    }
    Some(done.join("/"))
}

fn components_reversed(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|p| !p.is_empty())
        .rev()
        .map(String::from)
        .collect()
}

/// Removes every key strictly below directory `dir` (all keys for `""`) from a
/// path-keyed map; returns them.
pub fn remove_below<V>(map: &mut std::collections::BTreeMap<String, V>, dir: &str) -> Vec<String> {
    let prefix = if dir.is_empty() {
        String::new()
    } else {
        format!("{dir}/")
    };
    let doomed: Vec<String> = map
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, _)| k.clone())
        .collect();
    for k in &doomed {
        map.remove(k);
    }
    doomed
}

pub mod creds;
pub mod safefs;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_never_climbs_above_the_root() {
        assert_eq!(clean("../../etc/passwd"), "etc/passwd");
        assert_eq!(clean("/a/./b//c/../d/"), "a/b/d");
        assert_eq!(clean(""), "");
    }

    #[test]
    fn resolve_keeps_links_inside_the_root() {
        let links = |p: &str| match p {
            "abs" => Some("/etc".to_string()),
            "up" => Some("../../../x".to_string()),
            "loop" => Some("loop".to_string()),
            "dir/rel" => Some("../abs/f".to_string()),
            _ => None,
        };
        assert_eq!(resolve("abs/passwd", links).as_deref(), Some("etc/passwd"));
        assert_eq!(resolve("up", links).as_deref(), Some("x"));
        assert_eq!(resolve("dir/rel", links).as_deref(), Some("etc/f"));
        assert_eq!(resolve("loop", links), None);
    }
}
