//! BuildKit's lint rules (`--call=check`) for a Dockerfile in its context:
//! [`memobuild_dockerfile::lint`] with the context's `.dockerignore`, what
//! planning found ([`crate::Plan::lint_found`]), and `InvalidDefaultArgInFrom`
//! (which needs Docker's image reference syntax, from memobuild-oci).

use memobuild_context::dockerignore::DockerIgnore;
use memobuild_dockerfile::lint::{check, Ignore, Options, Report, Warning};
use memobuild_dockerfile::{expand, Dockerfile};
use std::collections::BTreeMap;

/// Lints `df` (parsed from `text`) for `target` (empty: the last stage),
/// with the build args and the ignore file the build would use. `found`:
/// what planning found ([`crate::Plan::lint_found`]; empty when the
/// Dockerfile was not planned).
pub fn lint(
    text: &str,
    df: &Dockerfile,
    target: &str,
    build_args: &BTreeMap<String, String>,
    ignore: &DockerIgnore,
    found: &[Warning],
) -> Report {
    let patterns = ignore.canonical();
    let excluded = |path: &str| ignore.is_excluded(path);
    let mut planned = invalid_default_bases(df, target);
    planned.extend_from_slice(found);
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
            planned: &planned,
        },
    )
}

/// `InvalidDefaultArgInFrom`: a FROM whose image, with the global ARGs'
/// defaults alone (no build args), is empty or no valid image reference
/// (BuildKit's `validateBaseImagesWithDefaultArgs`, every stage).
fn invalid_default_bases(df: &Dockerfile, target: &str) -> Vec<Warning> {
    let target = crate::find_target(df, target).unwrap_or(df.stages.len().saturating_sub(1));
    // As BuildKit: a default that does not expand abandons this rule.
    let Ok(defaults) = crate::global_args(df, &BTreeMap::new(), target) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for stage in &df.stages {
        let written = &stage.from.value.image;
        let Ok(name) = expand::expand_word(written, &defaults, df.escape) else {
            return out;
        };
        if memobuild_oci::reference::parse(&name).is_err() {
            out.push(Warning {
                rule: &memobuild_dockerfile::lint::INVALID_DEFAULT_ARG_IN_FROM,
                detail: format!(
                    "Default value for ARG {written} results in empty or invalid base image name"
                ),
                loc: stage.from.loc,
            });
        }
    }
    out
}
