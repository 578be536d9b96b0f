//! A git URL as the build context, as `docker build` takes it:
//! `git://HOST/REPO`, `https://HOST/REPO.git`, `ssh://...`, `git@HOST:REPO`,
//! `github.com/OWNER/REPO`, each optionally with `#REF` and `#REF:SUBDIR`.
//! The client fetches the commit with the user's `git` (and the user's
//! credentials), checks it out without `.git` (as BuildKit's default), and
//! builds that directory as a context read from stdin is built.

use crate::stdin::StdinContext;
use memobuild_proto::RpcError;
use std::path::PathBuf;
use std::process::Command;

/// A git context: where, which ref, which directory inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitContext {
    pub url: String,
    pub reference: Option<String>,
    pub subdir: Option<String>,
}

/// `Some` when `context` names a git repository (buildx's rules).
pub fn parse(context: &str) -> Option<GitContext> {
    let (base, fragment) = match context.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (context, None),
    };
    let url =
        if base.starts_with("git://") || base.starts_with("git@") || base.starts_with("ssh://") {
            base.to_string()
        } else if let Some(rest) = base.strip_prefix("github.com/") {
            format!("https://github.com/{rest}")
        } else if (base.starts_with("https://") || base.starts_with("http://"))
            && (base.ends_with(".git") || fragment.is_some() && base.contains(".git"))
        {
            base.to_string()
        } else {
            return None;
        };
    let (reference, subdir) = match fragment {
        None => (None, None),
        Some(f) => {
            let (r, s) = match f.split_once(':') {
                Some((r, s)) => (r, Some(s)),
                None => (f, None),
            };
            (
                Some(r.to_string()).filter(|r| !r.is_empty()),
                s.map(|s| s.trim_matches('/').to_string())
                    .filter(|s| !s.is_empty()),
            )
        }
    };
    Some(GitContext {
        url,
        reference,
        subdir,
    })
}

/// `Some` for an `http(s)://` context that is not a git repository: a remote
/// tarball or Dockerfile, which memobuild does not fetch.
pub fn unsupported_url(context: &str) -> Option<RpcError> {
    (context.starts_with("http://") || context.starts_with("https://")).then(|| {
        RpcError::with_hint(
            format!("build context {context}: a URL context that is not a git repository (a remote tarball or Dockerfile) is not supported"),
            "download it and pass the directory, or pipe it: `curl -L URL | memobuild-ctl build -`",
        )
    })
}

fn git(args: &[&str], dir: Option<&std::path::Path>, what: &str) -> Result<(), RpcError> {
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.arg("-C").arg(dir);
    }
    let out = cmd
        .args(args)
        // Never wait for a password on the terminal; credential helpers still work.
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| {
            RpcError::with_hint(
                format!("git context: cannot run git: {e}"),
                "install git (Debian package git)",
            )
        })?;
    if !out.status.success() {
        return Err(RpcError::with_hint(
            format!(
                "git context: {what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            "check the URL, the ref after # and your access to the repository (`git ls-remote URL`)",
        ));
    }
    Ok(())
}

/// Fetches `ctx` into a new temporary directory: the context to build.
pub fn fetch(ctx: &GitContext) -> Result<StdinContext, RpcError> {
    let dir = tempfile::Builder::new()
        .prefix("memobuild-git-")
        .tempdir()
        .map_err(|e| RpcError::new(format!("git context: cannot create a directory: {e}")))?;
    let path = dir.path();
    git(&["init", "-q"], Some(path), "git init")?;
    let reference = ctx.reference.as_deref().unwrap_or("HEAD");
    let fetched = git(
        &[
            "fetch",
            "-q",
            "--depth=1",
            "--recurse-submodules=yes",
            &ctx.url,
            reference,
        ],
        Some(path),
        &format!("fetching {reference} from {}", ctx.url),
    );
    if let Err(e) = fetched {
        // A commit id a server will not serve shallowly: fetch everything.
        let is_commit = reference.len() >= 7 && reference.chars().all(|c| c.is_ascii_hexdigit());
        if !is_commit {
            return Err(e);
        }
        git(
            &[
                "fetch",
                "-q",
                &ctx.url,
                "+refs/heads/*:refs/remotes/origin/*",
            ],
            Some(path),
            &format!("fetching {}", ctx.url),
        )?;
        git(
            &["checkout", "-q", "--detach", reference],
            Some(path),
            &format!("checking out {reference}"),
        )?;
    } else {
        git(
            &["checkout", "-q", "--detach", "FETCH_HEAD"],
            Some(path),
            &format!("checking out {reference}"),
        )?;
    }
    git(
        &[
            "submodule",
            "update",
            "-q",
            "--init",
            "--recursive",
            "--depth=1",
        ],
        Some(path),
        "fetching submodules",
    )?;
    std::fs::remove_dir_all(path.join(".git"))
        .map_err(|e| RpcError::new(format!("git context: removing .git: {e}")))?;
    let subdir = PathBuf::from(ctx.subdir.clone().unwrap_or_default());
    if ctx.subdir.is_some() {
        let inside = path.join(&subdir);
        if !inside.is_dir()
            || subdir
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(RpcError::with_hint(
                format!(
                    "git context: {} has no directory {}",
                    ctx.url,
                    subdir.display()
                ),
                "after # give REF:DIR with DIR a directory of the repository",
            ));
        }
    }
    Ok(StdinContext {
        dir: Some(dir),
        dockerfile: None,
        subdir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_as_buildx_reads_them() {
        let g = parse("git://127.0.0.1:9418/repo.git#v1:app").unwrap();
        assert_eq!(g.url, "git://127.0.0.1:9418/repo.git");
        assert_eq!(g.reference.as_deref(), Some("v1"));
        assert_eq!(g.subdir.as_deref(), Some("app"));
        let g = parse("https://example.com/r.git").unwrap();
        assert_eq!((g.reference, g.subdir), (None, None));
        let g = parse("github.com/o/r#:sub").unwrap();
        assert_eq!(g.url, "https://github.com/o/r");
        assert_eq!((g.reference, g.subdir.as_deref()), (None, Some("sub")));
        assert!(parse("git@github.com:o/r.git").is_some());
        assert!(parse("https://example.com/context.tar.gz").is_none());
        assert!(parse("./dir").is_none());
        assert!(unsupported_url("https://example.com/context.tar.gz").is_some());
    }
}
