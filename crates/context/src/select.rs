//! Resolving COPY/ADD sources against a [`ContextIndex`] as BuildKit does:
//! paths are relative to the context root (a leading `/` and `..` cannot leave
//! it), wildcards follow Go's `filepath.Match`, a directory source stands for its
//! contents, and a symlink named as a source is followed *inside* the context.

use super::scan::{ContextIndex, FileKind, FileMeta};
use globset::{GlobBuilder, GlobMatcher};

/// One source root that a COPY source selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    /// Path in the context of what is copied (symlinks already followed).
    pub rel: String,
    /// The name the source had as written (the last component before following
    /// symlinks): a file copied into a directory keeps this name.
    pub name: String,
    pub meta: FileMeta,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("{0:?} not found in the build context")]
    NotFound(String),
    #[error("no file in the build context matches {0:?}")]
    NoMatch(String),
    #[error("bad wildcard {pattern:?}: {message}")]
    BadPattern { pattern: String, message: String },
    #[error("{0:?}: too many levels of symbolic links")]
    SymlinkLoop(String),
}

/// Cleans a source path: relative to the root, no `.`/`..`/empty components.
pub fn clean_rel(path: &str) -> String {
    memobuild_rootpath::clean(path)
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Resolves one source as written in the Dockerfile.
pub fn select(index: &ContextIndex, source: &str) -> Result<Vec<Selected>, SelectError> {
    let rel = clean_rel(source);
    if !has_wildcard(&rel) {
        let resolved = resolve(index, &rel, source)?;
        let meta = index
            .get(&resolved)
            .cloned()
            .ok_or_else(|| SelectError::NotFound(source.to_string()))?;
        return Ok(vec![Selected {
            rel: resolved,
            name: rel.rsplit('/').next().unwrap_or("").to_string(),
            meta,
        }]);
    }
    let matcher = glob(&rel)?;
    let mut out = Vec::new();
    for (path, meta) in index.iter() {
        if !matcher.is_match(path) {
            continue;
        }
        let (rel, meta) = if meta.kind == FileKind::Symlink {
            let resolved = resolve(index, path, source)?;
            match index.get(&resolved) {
                Some(m) => (resolved, m.clone()),
                None => continue,
            }
        } else {
            (path.to_string(), meta.clone())
        };
        out.push(Selected {
            rel,
            name: path.rsplit('/').next().unwrap_or("").to_string(),
            meta,
        });
    }
    // BuildKit allows a wildcard that matches nothing (AllowEmptyWildcard).
    Ok(out)
}

fn glob(pattern: &str) -> Result<GlobMatcher, SelectError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|e| SelectError::BadPattern {
            pattern: pattern.to_string(),
            message: e.kind().to_string(),
        })
}

/// Follows symlinks in every component of `rel`, treating the context root as
/// `/`, so resolution can never leave the context.
pub fn resolve(index: &ContextIndex, rel: &str, original: &str) -> Result<String, SelectError> {
    memobuild_rootpath::resolve(rel, |p| {
        index
            .get(p)
            .filter(|m| m.kind == FileKind::Symlink)
            .map(|m| m.link_target.as_deref().unwrap_or_default().to_string())
    })
    .ok_or_else(|| SelectError::SymlinkLoop(original.to_string()))
}
