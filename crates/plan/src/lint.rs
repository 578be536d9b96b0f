//! BuildKit's lint rules (`--call=check`) for a Dockerfile in its context:
//! [`memobuild_dockerfile::lint`] with the context's `.dockerignore`.

use memobuild_context::dockerignore::DockerIgnore;
use memobuild_dockerfile::lint::{check, Ignore, Options, Report};
use memobuild_dockerfile::Dockerfile;
use std::collections::BTreeMap;

/// Lints `df` (parsed from `text`) for `target` (empty: the last stage),
/// with the build args and the ignore file the build would use.
pub fn lint(
    text: &str,
    df: &Dockerfile,
    target: &str,
    build_args: &BTreeMap<String, String>,
    ignore: &DockerIgnore,
) -> Report {
    let patterns = ignore.canonical();
    let excluded = |path: &str| ignore.is_excluded(path);
    check(
        text,
        df,
        &Options {
            target,
            build_args: Some(build_args),
            ignore: (!ignore.is_empty()).then_some(Ignore {
                patterns: &patterns,
                excluded: &excluded,
            }),
        },
    )
}
