//! A git URL as the build context, as `docker build` takes it:
//! `git://HOST/REPO`, `https://HOST/REPO.git`, `ssh://...`, `git@HOST:REPO`,
//! `github.com/OWNER/REPO`, each optionally with `#REF` and `#REF:SUBDIR`,
//! or BuildKit's query form (`?ref=&branch=&tag=&commit=&subdir=
//! &keep-git-dir=&submodules=`).
//! The client fetches the commit with the user's `git` (and the user's
//! credentials), checks it out without `.git` (as BuildKit's default), and
//! builds that directory as a context read from stdin is built.

use crate::stdin::StdinContext;
use memobuild_proto::RpcError;
use std::path::PathBuf;
use std::process::Command;

/// A git context: where, which ref, which directory inside, and how to
/// check it out (the query form: `?ref=&branch=&tag=&commit=&subdir=
/// &keep-git-dir=&submodules=`, as BuildKit's dfgitutil).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitContext {
    pub url: String,
    pub reference: Option<String>,
    pub subdir: Option<String>,
    /// `commit=`: the commit the ref must resolve to (a prefix of its id).
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    pub submodules: bool,
    /// What the query got wrong (`ref conflicts: ...`), reported when the
    /// context is fetched.
    pub invalid: Option<String>,
}

/// `Some` when `context` names a git repository (buildx's rules).
pub fn parse(context: &str) -> Option<GitContext> {
    let before_fragment = context.split('#').next().unwrap_or(context);
    let (base, has_query) = match before_fragment.split_once('?') {
        Some((b, _)) => (b, true),
        None => (before_fragment, false),
    };
    let has_fragment = context.contains('#');
    let github = base.starts_with("github.com/");
    if !(base.starts_with("git://")
        || base.starts_with("git@")
        || base.starts_with("ssh://")
        || github
        || (base.starts_with("https://") || base.starts_with("http://"))
            && (base.ends_with(".git") || (has_fragment || has_query) && base.contains(".git")))
    {
        return None;
    }
    let parsed = memobuild_dockerfile::gitref::parse(context);
    let g = parsed.clone().unwrap_or_default();
    let remote = if parsed.is_ok() {
        g.remote.clone()
    } else {
        base.to_string()
    };
    let url = match remote.strip_prefix("github.com/") {
        Some(rest) => format!("https://github.com/{rest}"),
        None => remote,
    };
    Some(GitContext {
        url,
        reference: Some(g.reference).filter(|r| !r.is_empty()),
        subdir: Some(g.subdir).filter(|s| !s.is_empty()),
        checksum: g.checksum,
        keep_git_dir: g.keep_git_dir.unwrap_or(false),
        submodules: g.submodules.unwrap_or(true),
        invalid: parsed.err(),
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

fn git(args: &[&str], dir: Option<&std::path::Path>, what: &str) -> Result<String, RpcError> {
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
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A full hex commit id (SHA-1 or SHA-256).
fn is_full_commit(reference: &str) -> bool {
    matches!(reference.len(), 40 | 64) && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Fetches `ctx` into a new temporary directory: the context to build.
pub fn fetch(ctx: &GitContext) -> Result<StdinContext, RpcError> {
    if let Some(why) = &ctx.invalid {
        return Err(RpcError::with_hint(
            format!("git context {}: {why}", ctx.url),
            "the query takes ref=, branch=, tag=, commit=, subdir=, keep-git-dir= and submodules=, each once",
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("memobuild-git-")
        .tempdir()
        .map_err(|e| RpcError::new(format!("git context: cannot create a directory: {e}")))?;
    let path = dir.path();
    git(&["init", "-q"], Some(path), "git init")?;
    // As BuildKit: the remote's HEAD, a full commit id, or a ref the remote
    // lists (`git ls-remote` matching; an abbreviated id is no ref).
    let wanted = match ctx.reference.as_deref() {
        None => "HEAD".to_string(),
        Some(r) if is_full_commit(r) => r.to_string(),
        Some(r) => {
            let listed = git(
                &["ls-remote", "--", &ctx.url, r],
                Some(path),
                &format!("listing the refs of {}", ctx.url),
            )?;
            listed
                .lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .map(str::to_string)
                .ok_or_else(|| {
                    RpcError::with_hint(
                        format!("git context: repository does not contain ref {r}"),
                        "name a branch, a tag or a full commit id (`git ls-remote URL` lists them)",
                    )
                })?
        }
    };
    let what = format!("fetching {wanted} from {}", ctx.url);
    // Shallow first; a server that cannot (git's dumb HTTP) gets a full fetch.
    let fetched = git(
        &["fetch", "-q", "--depth=1", &ctx.url, &wanted],
        Some(path),
        &what,
    )
    .or_else(|_| git(&["fetch", "-q", &ctx.url, &wanted], Some(path), &what));
    match fetched {
        Ok(_) => {
            git(
                &["checkout", "-q", "--detach", "FETCH_HEAD"],
                Some(path),
                &format!("checking out {wanted}"),
            )?;
        }
        // A commit id a server will not serve by itself: fetch everything.
        Err(e) if !is_full_commit(&wanted) => return Err(e),
        Err(_) => {
            git(
                &[
                    "fetch",
                    "-q",
                    &ctx.url,
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                Some(path),
                &format!("fetching {}", ctx.url),
            )?;
            git(
                &["checkout", "-q", "--detach", &wanted],
                Some(path),
                &format!("checking out {wanted}"),
            )?;
        }
    }
    if let Some(sum) = &ctx.checksum {
        let commit = git(&["rev-parse", "HEAD"], Some(path), "reading the commit")?;
        if !commit.starts_with(sum.as_str()) {
            return Err(RpcError::new(format!(
                "git context {}: expected checksum to match {sum}, got {commit}",
                ctx.url
            )));
        }
    }
    if ctx.submodules {
        let update = ["submodule", "update", "-q", "--init", "--recursive"];
        let shallow = [&update[..], &["--depth=1"]].concat();
        git(&shallow, Some(path), "fetching submodules")
            .or_else(|_| git(&update, Some(path), "fetching submodules"))?;
    }
    if !ctx.keep_git_dir {
        std::fs::remove_dir_all(path.join(".git"))
            .map_err(|e| RpcError::new(format!("git context: removing .git: {e}")))?;
    }
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
        let g =
            parse("http://h:1/.git?subdir=sub&ref=feature&keep-git-dir&submodules=false").unwrap();
        assert_eq!(g.url, "http://h:1/.git");
        assert_eq!(
            (g.reference.as_deref(), g.subdir.as_deref()),
            (Some("feature"), Some("sub"))
        );
        assert!(g.keep_git_dir && !g.submodules);
        let g = parse("http://h:1/.git?tag=v1#refs/heads/main").unwrap();
        assert!(g.invalid.unwrap().contains("ref conflicts"));
    }
}
