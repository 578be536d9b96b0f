//! A git URL as `ADD` and `docker build` take it (BuildKit's dfgitutil):
//! `REMOTE[?QUERY][#REF[:SUBDIR]]`, with the query keys `ref`, `branch`,
//! `tag`, `commit` (or `checksum`), `subdir`, `keep-git-dir` and
//! `submodules` (the last two also without a value, meaning true).

/// A parsed git URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitRef {
    /// The repository, without query or fragment.
    pub remote: String,
    /// A ref (`v1`, `refs/tags/v1`, a full commit id); empty for the
    /// remote's HEAD. `tag=X` is `refs/tags/X`, `branch=X` `refs/heads/X`.
    pub reference: String,
    /// The directory of the repository to use (cleaned; empty for the root).
    pub subdir: String,
    /// `commit=`/`checksum=`: the commit the ref must resolve to (a prefix
    /// of its hex id).
    pub checksum: Option<String>,
    /// `keep-git-dir=`: keep `.git` (BuildKit's default: no).
    pub keep_git_dir: Option<bool>,
    /// `submodules=`: fetch submodules (BuildKit's default: yes).
    pub submodules: Option<bool>,
}

/// Parses `src` (a URL already known to name a git repository), refusing
/// what BuildKit refuses with its words (`ref conflicts: ...`, `unexpected
/// query ...`).
pub fn parse(src: &str) -> Result<GitRef, String> {
    let (before_fragment, fragment) = src.split_once('#').unwrap_or((src, ""));
    let (remote, query) = before_fragment
        .split_once('?')
        .unwrap_or((before_fragment, ""));
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let mut out = GitRef {
        remote: remote.to_string(),
        reference: reference.to_string(),
        subdir: memobuild_rootpath::clean(subdir),
        ..GitRef::default()
    };
    let mut seen = std::collections::BTreeSet::new();
    let (mut tag, mut branch) = (String::new(), String::new());
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.split_once('=') {
            Some((k, v)) => (decode(k), Some(decode(v))),
            None => (decode(pair), None),
        };
        if !seen.insert(key.clone()) {
            return Err(format!("query {key:?} has multiple values"));
        }
        let value = value.filter(|v| !v.is_empty());
        let flag = |value: &Option<String>| -> Result<bool, String> {
            match value.as_deref() {
                None => Ok(true),
                Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
                Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
                Some(v) => Err(format!("invalid {key} value: {v:?}")),
            }
        };
        match key.as_str() {
            "keep-git-dir" => out.keep_git_dir = Some(flag(&value)?),
            "submodules" => out.submodules = Some(flag(&value)?),
            _ => {
                let Some(value) = value else {
                    return Err(format!("query {key:?} has no value"));
                };
                match key.as_str() {
                    "ref" => {
                        if !out.reference.is_empty() && out.reference != value {
                            return Err(format!("ref conflicts: {:?} vs {value:?}", out.reference));
                        }
                        out.reference = value;
                    }
                    "tag" => tag = value,
                    "branch" => branch = value,
                    "subdir" => {
                        let value = memobuild_rootpath::clean(&value);
                        if !out.subdir.is_empty() && out.subdir != value {
                            return Err(format!("subdir conflicts: {:?} vs {value:?}", out.subdir));
                        }
                        out.subdir = value;
                    }
                    "commit" | "checksum" => out.checksum = Some(value),
                    "mtime" if value == "checkout" => {}
                    "mtime" if value == "commit" => {
                        return Err(
                            "mtime=commit is not supported yet (files get the checkout's times)"
                                .into(),
                        )
                    }
                    "mtime" => {
                        return Err(format!(
                            "invalid mtime value: {value:?} (must be \"checkout\" or \"commit\")"
                        ))
                    }
                    "fetch-by-commit" => {
                        return Err("fetch-by-commit is not supported".into());
                    }
                    _ => return Err(format!("unexpected query {key:?}")),
                }
            }
        }
    }
    if !tag.is_empty() {
        if !tag.starts_with("refs/tags/") {
            tag = format!("refs/tags/{tag}");
        }
        if !out.reference.is_empty() && out.reference != tag {
            return Err(format!("ref conflicts: {:?} vs {tag:?}", out.reference));
        }
        out.reference = tag.clone();
    }
    if !branch.is_empty() {
        if !tag.is_empty() {
            return Err("branch conflicts with tag".into());
        }
        if !branch.starts_with("refs/heads/") {
            branch = format!("refs/heads/{branch}");
        }
        if !out.reference.is_empty() && out.reference != branch {
            return Err(format!("ref conflicts: {:?} vs {branch:?}", out.reference));
        }
        out.reference = branch;
    }
    if let Some(sum) = &out.checksum {
        if !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "invalid checksum {sum:?}: expected hex commit hash"
            ));
        }
    }
    Ok(out)
}

/// Whether git reaches `remote` (a [`GitRef::remote`]) over ssh: an
/// `ssh://` URL (or git's aliases `git+ssh://`, `ssh+git://`), or the
/// scp-like `[USER@]HOST:PATH` (no `://`, and a `:` before any `/`), as git
/// itself tells them apart. Git takes the scp-like form as it is.
pub fn is_ssh_remote(remote: &str) -> bool {
    if let Some((scheme, _)) = remote.split_once("://") {
        return matches!(
            scheme.to_ascii_lowercase().as_str(),
            "ssh" | "git+ssh" | "ssh+git"
        );
    }
    match (remote.find(':'), remote.find('/')) {
        (Some(colon), Some(slash)) => colon < slash,
        (Some(_), None) => true,
        _ => false,
    }
}

/// URL query decoding: `%XX` and `+` as a space.
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_forms_as_buildkit_reads_them() {
        let g = parse("http://h/.git?tag=v0.0.2#refs/tags/v0.0.2").unwrap();
        assert_eq!(g.reference, "refs/tags/v0.0.2");
        let g = parse("http://h/.git?subdir=sub&ref=feature").unwrap();
        assert_eq!(
            (g.reference.as_str(), g.subdir.as_str()),
            ("feature", "sub")
        );
        let g = parse("http://h/.git#feature:/sub/").unwrap();
        assert_eq!(
            (g.reference.as_str(), g.subdir.as_str()),
            ("feature", "sub")
        );
        let g = parse("http://h/.git?keep-git-dir&submodules").unwrap();
        assert_eq!((g.keep_git_dir, g.submodules), (Some(true), Some(true)));
        let g = parse("http://h/.git?keep-git-dir=false&submodules=0").unwrap();
        assert_eq!((g.keep_git_dir, g.submodules), (Some(false), Some(false)));
        let g = parse("http://h/.git?branch=base").unwrap();
        assert_eq!(g.reference, "refs/heads/base");
        let g = parse("http://h/.git?commit=abc123").unwrap();
        assert_eq!(g.checksum.as_deref(), Some("abc123"));
        assert_eq!(g.remote, "http://h/.git");
        let e = parse("http://h/.git?tag=v0.0.2#refs/heads/master").unwrap_err();
        assert!(e.contains("ref conflicts"), "{e}");
        assert!(parse("http://h/.git?tag=a&branch=b").is_err());
        assert!(parse("http://h/.git?ref")
            .unwrap_err()
            .contains("has no value"));
        assert!(parse("http://h/.git?ref=a&ref=b")
            .unwrap_err()
            .contains("multiple values"));
        assert!(parse("http://h/.git?frob=1")
            .unwrap_err()
            .contains("unexpected query"));
        assert!(parse("http://h/.git?keep-git-dir=maybe").is_err());
        assert_eq!(parse("http://h/.git?ref=a%2Fb").unwrap().reference, "a/b");
    }

    /// BuildKit's identifier_test.go cases for ssh remotes: the scp-like
    /// form keeps its `:` (git takes it as it is), a fragment's ref and
    /// subdir come off, `ssh://` keeps user and port.
    #[test]
    fn ssh_remotes_as_buildkit_reads_them() {
        let g = parse("git@github.com:moby/buildkit.git").unwrap();
        assert_eq!(g.remote, "git@github.com:moby/buildkit.git");
        assert_eq!((g.reference.as_str(), g.subdir.as_str()), ("", ""));
        let g = parse("git@github.com:user/repo.git#mybranch:mydir/mysubdir/").unwrap();
        assert_eq!(g.remote, "git@github.com:user/repo.git");
        assert_eq!(
            (g.reference.as_str(), g.subdir.as_str()),
            ("mybranch", "mydir/mysubdir")
        );
        let g = parse("git@github.com:user/repo.git?ref=main&subdir=sub&keep-git-dir").unwrap();
        assert_eq!(g.remote, "git@github.com:user/repo.git");
        assert_eq!(
            (g.reference.as_str(), g.subdir.as_str(), g.keep_git_dir),
            ("main", "sub", Some(true))
        );
        let g = parse(
            "ssh://root@subdomain.example.hostname:2222/root/my/really/weird/path/foo.git#main",
        )
        .unwrap();
        assert_eq!(
            g.remote,
            "ssh://root@subdomain.example.hostname:2222/root/my/really/weird/path/foo.git"
        );
        assert_eq!(g.reference, "main");
        let g = parse("ssh://foo%40barcorp.com@github.com/user/repo.git#mybranch:mydir/mysubdir/")
            .unwrap();
        assert_eq!(g.remote, "ssh://foo%40barcorp.com@github.com/user/repo.git");
        assert_eq!(g.subdir, "mydir/mysubdir");
        // A subdir cannot climb out of the checkout.
        assert_eq!(
            parse("git@github.com:user/repo.git#main:../../escape")
                .unwrap()
                .subdir,
            "escape"
        );
        assert_eq!(
            parse("ssh://github.com/user/repo.git#main:/absolute/path")
                .unwrap()
                .subdir,
            "absolute/path"
        );

        for ssh in [
            "git@github.com:user/repo.git",
            "github.com:user/repo.git",
            "ssh://github.com/user/repo.git",
            "ssh://root@127.0.0.1:2222/tmp/repo.git",
            "SSH://h/r.git",
            "git+ssh://h/r.git",
            "ssh+git://h/r.git",
            "host:repo",
        ] {
            assert!(is_ssh_remote(ssh), "{ssh}");
        }
        for other in [
            "https://github.com/user/repo.git",
            "http://h:8080/r.git",
            "git://h/r.git",
            "/srv/repo.git",
            "./a:b/repo.git",
            "file:///srv/repo.git",
        ] {
            assert!(!is_ssh_remote(other), "{other}");
        }
    }
}
