//! The daemon (root) reads build contexts, Dockerfiles and ignore files with
//! the rights of the user who asks (issue 14 item 2): an allowed user cannot
//! build what they cannot read, neither directly, nor from the cache root
//! filled, nor through a bind mount of the context. Root's builds are as
//! before. The tests run as root and build as `nobody` (allowed by flag).
//!
//! Needs root, `containerd`, `runc`, busybox-static, the `nobody` user and the
//! `nogroup` group (Debian's defaults).

mod common;
use common::{busybox_context, ctl_as, Daemon};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
const SECRET: &str = "ROOT-ONLY-7d1c9e";

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn daemon() -> Daemon {
    let d = Daemon::start_with(&["--allowed-users", "nobody"]);
    d.open_socket_to_all();
    d
}

/// `memobuild-ctl build --progress plain CONTEXT` as nobody: (success, all output).
fn build_as_nobody(d: &Daemon, context: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    args.push(context.to_str().expect("utf-8"));
    let out = ctl_as(NOBODY, NOGROUP, &d.socket, &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A context anyone may list: `Dockerfile` = `dockerfile`, a public
/// `hello.txt` and `private/secret`, root's alone (dir 0700, file 0600).
fn context_with_private_dir(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).expect("write");
    std::fs::write(dir.path().join("hello.txt"), "hello\n").expect("write");
    let private = dir.path().join("private");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::write(private.join("secret"), SECRET).expect("write");
    chmod(&private.join("secret"), 0o600);
    chmod(&private, 0o700);
    chmod(dir.path(), 0o755);
    dir
}

fn assert_denied(ok: bool, text: &str, path_part: &str, d: &Daemon) {
    assert!(!ok, "the build succeeded:\n{text}");
    assert!(
        text.contains("permission denied") && text.contains(path_part),
        "expected a permission error naming {path_part}:\n{text}\n--- daemon log ---\n{}",
        d.log()
    );
    assert!(!text.contains(SECRET), "the secret shows: {text}");
}

#[test]
fn a_user_cannot_build_a_context_or_dockerfile_they_cannot_read() {
    let d = daemon();
    // A context directory that is root's alone: refused before any scan.
    let ctx = context_with_private_dir("FROM scratch\nCOPY . /\n");
    let (ok, text) = build_as_nobody(
        &d,
        &ctx.path().join("private"),
        &["-f", ctx.path().join("Dockerfile").to_str().unwrap()],
    );
    assert_denied(ok, &text, "private", &d);
    assert!(text.contains("may not list it"), "{text}");

    // A root-only directory inside the context that COPY . would take.
    let (ok, text) = build_as_nobody(&d, ctx.path(), &[]);
    assert_denied(ok, &text, "private", &d);

    // A root-only file (in a listable directory) named by COPY.
    let ctx2 = tempfile::tempdir().expect("tempdir");
    std::fs::write(ctx2.path().join("Dockerfile"), "FROM scratch\nCOPY key /\n").unwrap();
    std::fs::write(ctx2.path().join("key"), SECRET).unwrap();
    chmod(&ctx2.path().join("key"), 0o600);
    chmod(ctx2.path(), 0o755);
    let (ok, text) = build_as_nobody(&d, ctx2.path(), &[]);
    assert_denied(ok, &text, "key", &d);

    // A Dockerfile (given with -f) that is root's alone: not read, not quoted.
    let df = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        df.path().join("Dockerfile"),
        format!("FROM scratch\nLABEL x={SECRET}\n"),
    )
    .unwrap();
    chmod(&df.path().join("Dockerfile"), 0o600);
    chmod(df.path(), 0o755);
    let public = tempfile::tempdir().expect("tempdir");
    chmod(public.path(), 0o755);
    let df_path = df.path().join("Dockerfile");
    let (ok, text) = build_as_nobody(&d, public.path(), &["-f", df_path.to_str().unwrap()]);
    assert!(!ok, "{text}");
    assert!(text.contains("Permission denied"), "{text}");
    assert!(!text.contains(SECRET), "{text}");

    // /etc itself, with a Dockerfile of the user's own: /etc/shadow is root's.
    let own = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        own.path().join("Dockerfile"),
        "FROM scratch\nCOPY shadow /s\n",
    )
    .unwrap();
    chmod(own.path(), 0o755);
    let own_df = own.path().join("Dockerfile");
    let (ok, text) = build_as_nobody(&d, Path::new("/etc"), &["-f", own_df.to_str().unwrap()]);
    assert!(!ok, "nobody built /etc: {text}");
    assert!(text.contains("permission denied"), "{text}");
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    for line in shadow.lines().filter(|l| l.contains('$')) {
        assert!(!text.contains(line), "{text}");
    }

    // What the user may read builds: ignoring the private directory, and a
    // file readable through the user's group.
    std::fs::write(ctx.path().join(".dockerignore"), "private\n").unwrap();
    let (ok, text) = build_as_nobody(&d, ctx.path(), &[]);
    assert!(ok, "{text}\n--- daemon log ---\n{}", d.log());
    std::os::unix::fs::chown(ctx2.path().join("key"), Some(0), Some(NOGROUP)).unwrap();
    chmod(&ctx2.path().join("key"), 0o640);
    let (ok, text) = build_as_nobody(&d, ctx2.path(), &[]);
    assert!(
        ok,
        "group-readable file: {text}\n--- daemon log ---\n{}",
        d.log()
    );

    // Root's builds are unchanged: root reads what it likes.
    std::fs::remove_file(ctx.path().join(".dockerignore")).unwrap();
    d.build_ok(ctx.path(), &[]);
}

#[test]
fn a_cached_result_of_roots_build_is_never_served_to_a_user_who_cannot_read_it() {
    let d = daemon();
    let ctx = context_with_private_dir("FROM scratch\nCOPY private/secret /secret\n");
    // Root builds first: the step, its layer and the project's clean result
    // are all cached, the files' digests warm.
    let first = d.build_ok(ctx.path(), &[]);
    assert!(first.success);
    // nobody asks for the very same build: no fast path, no cache hit.
    let (ok, text) = build_as_nobody(&d, ctx.path(), &[]);
    assert_denied(ok, &text, "private", &d);
    // Again (the daemon's memory of the first refusal changes nothing).
    let (ok, text) = build_as_nobody(&d, ctx.path(), &[]);
    assert_denied(ok, &text, "private", &d);
}

#[test]
fn a_bind_mount_of_the_context_shows_a_user_only_what_they_may_read() {
    let d = daemon();
    let ctx = busybox_context(
        "RUN --mount=type=bind,target=/ctx cat /ctx/hello.txt /ctx/private/secret\n",
        &[("hello.txt", "hello\n")],
    );
    let private = ctx.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::write(private.join("secret"), SECRET).unwrap();
    chmod(&private.join("secret"), 0o600);
    chmod(&private, 0o700);
    // The plan does not need private/ (it is ignored), but the bind mount
    // would show the live directory to the step, root in its container.
    std::fs::write(ctx.path().join(".dockerignore"), "private\n").unwrap();
    let (ok, text) = build_as_nobody(&d, ctx.path(), &[]);
    assert!(!ok, "{text}");
    assert!(
        !text.contains(SECRET),
        "the step read a root-only file: {text}"
    );
    assert!(
        text.contains("Permission denied"),
        "{text}\n--- daemon log ---\n{}",
        d.log()
    );
    // A readable context binds as before, for nobody and for root.
    std::fs::remove_dir_all(&private).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "{}RUN --mount=type=bind,target=/ctx cat /ctx/hello.txt\n",
            common::BUSYBOX_BASE
        ),
    )
    .unwrap();
    let (ok, text) = build_as_nobody(&d, ctx.path(), &["--no-cache"]);
    assert!(ok, "{text}\n--- daemon log ---\n{}", d.log());
    assert!(text.contains("hello"), "{text}");
    d.build_ok(ctx.path(), &["--no-cache"]);
}

#[test]
fn a_user_adds_archives_and_copies_from_stages_they_built() {
    // The daemon's own staging files (an extracted archive, a stage's files)
    // are read with its rights; only the user's files with theirs.
    let d = daemon();
    let ctx = tempfile::tempdir().expect("tempdir");
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(6);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "inside/a.txt", &b"inner\n"[..])
        .expect("tar");
    let bytes = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &bytes).expect("gzip");
    std::fs::write(ctx.path().join("a.tar.gz"), gz.finish().expect("gzip")).unwrap();
    std::fs::write(ctx.path().join("hello.txt"), "hello\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch AS one\nADD a.tar.gz /x/\nCOPY hello.txt /\n\
         FROM scratch\nCOPY --from=one /x /y\nCOPY --from=one /hello.txt /\n",
    )
    .unwrap();
    chmod(ctx.path(), 0o755);
    let out_dir = tempfile::tempdir().expect("tempdir");
    chmod(out_dir.path(), 0o777);
    let dest = out_dir.path().join("image.tar");
    let spec = format!("type=tar,dest={}", dest.display());
    let (ok, text) = build_as_nobody(&d, ctx.path(), &["-o", &spec]);
    assert!(ok, "{text}\n--- daemon log ---\n{}", d.log());
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(std::fs::File::open(&dest).expect("output"));
    for entry in archive.entries().expect("tar") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").display().to_string();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry, &mut text).unwrap_or_default();
        names.push(format!("{name}={text}"));
    }
    assert!(
        names.iter().any(|n| n == "y/inside/a.txt=inner\n"),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "hello.txt=hello\n"), "{names:?}");
}
