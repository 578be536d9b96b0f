//! SOURCE_DATE_EPOCH as BuildKit's Dockerfile frontend resolves it
//! (`dockerfile2llb/epoch.go`): from the client (`--build-arg`, or the
//! environment, which `memobuild-ctl` sends as a number), else from the
//! Dockerfile's global `ARG SOURCE_DATE_EPOCH=...` default. The value is Unix
//! seconds, empty (no epoch), `context` (the build context's time: none for a
//! local directory), or the name of a source-only stage: `FROM scratch`, only
//! ARG, and exactly one `ADD https://...` (the response's `Last-Modified`,
//! else the newest regular file of the archive it downloads, none when it is
//! not an archive) or `ADD REPO.git#REF` (the commit's committer time).
//! Anything else is an error.

use crate::{stage, UrlSource};
use memobuild_dockerfile::{expand, Dockerfile, DockerfileError, Instruction, Loc, Stage};
use std::collections::BTreeMap;

pub(crate) const NAME: &str = "SOURCE_DATE_EPOCH";

/// The build's epoch. `client` is the number the client sent (it wins);
/// `build_args` and `global` (the global args with their defaults) give
/// the text otherwise.
pub(crate) fn resolve(
    df: &Dockerfile,
    client: Option<i64>,
    build_args: &BTreeMap<String, String>,
    global: &BTreeMap<String, String>,
    urls: &dyn UrlSource,
) -> Result<Option<i64>, DockerfileError> {
    if client.is_some() {
        return Ok(client);
    }
    let Some(value) = build_args.get(NAME).or_else(|| global.get(NAME)) else {
        return Ok(None);
    };
    if value.is_empty() || value == "context" {
        // A local context has no time of its own (BuildKit resolves none).
        return Ok(None);
    }
    if let Ok(secs) = value.parse::<i64>() {
        return Ok(Some(secs));
    }
    let declared = df
        .global_args
        .iter()
        .find(|d| d.value.iter().any(|a| a.name == NAME))
        .map_or(Loc { line: 1, column: 1 }, |d| d.loc);
    let Some(source) = df.stages.iter().find(|s| {
        s.name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(value))
    }) else {
        return Err(stage::err(df, declared, format!("invalid {NAME}: {value}")));
    };
    let mut args = global.clone();
    args.remove(NAME);
    stage_epoch(df, source, build_args, args, urls)
}

/// The time of a source-only stage (see the module's note), with BuildKit's
/// errors at the stage's FROM line.
fn stage_epoch(
    df: &Dockerfile,
    source: &Stage,
    build_args: &BTreeMap<String, String>,
    mut env: BTreeMap<String, String>,
    urls: &dyn UrlSource,
) -> Result<Option<i64>, DockerfileError> {
    let loc = source.from.loc;
    let fail = |message: &str| stage::err(df, loc, message);
    let expand = |word: &str, env: &BTreeMap<String, String>| {
        expand::expand_word(word, env, df.escape).map_err(|e| stage::expand_error(df, loc, e))
    };
    if expand(&source.from.value.image, &env)? != "scratch" {
        return Err(fail("SOURCE_DATE_EPOCH stage must use FROM scratch"));
    }
    let mut add = None;
    for ins in &source.instructions {
        match &ins.value {
            Instruction::Arg(decls) => {
                for decl in decls {
                    let value = match (build_args.get(&decl.name), &decl.default) {
                        (Some(v), _) => v.clone(),
                        (None, Some(default)) => expand(default, &env)?,
                        (None, None) => continue,
                    };
                    env.insert(decl.name.clone(), value);
                }
            }
            Instruction::Add(spec) => {
                if add.is_some() {
                    return Err(fail("SOURCE_DATE_EPOCH stage must contain exactly one remote ADD"));
                }
                if !spec.heredocs.is_empty() || spec.sources.len() != 1 {
                    return Err(fail(
                        "SOURCE_DATE_EPOCH stage must contain exactly one remote ADD source",
                    ));
                }
                let src = expand(&spec.sources[0].value, &env)?;
                let checksum = match spec.flag("checksum").and_then(|f| f.value.as_deref()) {
                    Some(c) => Some(expand(c, &env)?),
                    None => None,
                };
                add = Some((src, checksum));
            }
            other => {
                return Err(fail(&format!(
                    "SOURCE_DATE_EPOCH stage does not meet source-only requirements: unsupported {} instruction",
                    other.keyword().to_ascii_lowercase()
                )))
            }
        }
    }
    let Some((src, checksum)) = add else {
        return Err(fail(
            "SOURCE_DATE_EPOCH stage must contain exactly one remote ADD",
        ));
    };
    if stage::is_git_source(&src) {
        let git = memobuild_dockerfile::gitref::parse(&src)
            .map_err(|e| fail(&format!("SOURCE_DATE_EPOCH stage: {src}: {e}")))?;
        // The commit time is read from `.git`; submodules do not change it.
        let options = crate::GitOptions {
            keep_git_dir: true,
            submodules: false,
        };
        let tree = urls
            .git(&git.remote, &git.reference, options)
            .map_err(|e| fail(&format!("SOURCE_DATE_EPOCH stage: {src}: {e}")))?;
        if let Some(want) = checksum.filter(|c| !tree.commit.starts_with(c.as_str())) {
            return Err(fail(&format!(
                "SOURCE_DATE_EPOCH stage: {src}: commit {} does not match the checksum {want}",
                tree.commit
            )));
        }
        return urls
            .git_commit_time(&tree)
            .map(Some)
            .map_err(|e| fail(&format!("SOURCE_DATE_EPOCH stage: {src}: {e}")));
    }
    if !stage::is_http_source(&src) {
        return Err(fail(
            "SOURCE_DATE_EPOCH stage source must be a single HTTP(S) or Git ADD",
        ));
    }
    let fetched = urls
        .fetch(&src)
        .map_err(|e| fail(&format!("SOURCE_DATE_EPOCH stage: {src}: {e}")))?;
    if let Some(want) = checksum {
        let got = format!("sha256:{}", fetched.sha256);
        if want != got {
            return Err(fail(&format!(
                "SOURCE_DATE_EPOCH stage: digest mismatch for {src}: {got} (expected {want})"
            )));
        }
    }
    if fetched.modified.is_some() {
        return Ok(fetched.modified);
    }
    Ok(urls.archive_max_mtime(&fetched))
}
