//! Context files whose names are not UTF-8 (issue 14, "What must work" 7):
//! memobuild keeps paths as UTF-8 strings, so rather than leave such a file
//! out of `COPY .` (what it did), a build that would copy it fails with an
//! error that names it (invalid bytes as `\xNN`), the Dockerfile line, and
//! what to do; `.dockerignore` can leave it out. Builds that do not select it
//! are unaffected. Real daemon, no RUN (no containerd needed).

mod common;
use common::{oci_file, write_files, BuildOutcome, Daemon};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_files(
        dir.path(),
        &[("Dockerfile", dockerfile), ("ok.txt", "fine\n")],
    );
    dir
}

fn latin1_file(dir: &Path) {
    std::fs::write(dir.join(OsStr::from_bytes(b"caf\xe9")), "latin-1 name\n").expect("write");
}

fn build_to(d: &Daemon, ctx: &Path, archive: &Path) -> BuildOutcome {
    let spec = format!("type=oci,dest={}", archive.display());
    d.build(ctx, &["-o", &spec])
}

/// Every entry name (raw bytes) of every layer of an `-o type=oci` archive.
fn layer_names(archive: &Path) -> Vec<Vec<u8>> {
    let (index, blobs) = common::oci_archive(archive);
    let manifest: serde_json::Value =
        serde_json::from_slice(&blobs[index["manifests"][0]["digest"].as_str().expect("manifest")])
            .expect("manifest JSON");
    let mut names = Vec::new();
    for layer in manifest["layers"].as_array().expect("layers") {
        let blob = &blobs[layer["digest"].as_str().expect("digest")];
        let mut tar = tar::Archive::new(flate2::read::MultiGzDecoder::new(blob.as_slice()));
        for entry in tar.entries().expect("entries") {
            let entry = entry.expect("entry");
            names.push(entry.path_bytes().into_owned());
        }
    }
    names
}

fn assert_refused(out: &BuildOutcome, name: &str, line: usize) {
    assert!(
        !out.success,
        "the build copied around {name}:\n{}",
        out.text()
    );
    let error = out.error();
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("\"{name}\": the file name is not UTF-8")),
        "{error:#}"
    );
    assert!(message.contains(".dockerignore"), "{error:#}");
    assert!(
        message.contains(&format!("Dockerfile:{line}:"))
            || error.to_string().contains(&format!("Dockerfile:{line}")),
        "no location in {error:#}"
    );
}

#[test]
fn copy_dot_refuses_a_name_that_is_not_utf8_never_drops_it() {
    let d = Daemon::start();
    let ctx = context("FROM scratch\nCOPY . /app/\n");
    latin1_file(ctx.path());
    let out = tempfile::tempdir().expect("tempdir");
    let archive = out.path().join("image.tar");
    let refused = build_to(&d, ctx.path(), &archive);
    assert_refused(&refused, "caf\\xe9", 2);
    assert!(!archive.exists(), "a refused build wrote an image");

    // Left out on purpose: .dockerignore matches the escaped name.
    std::fs::write(ctx.path().join(".dockerignore"), "caf*\n").expect("write");
    let built = build_to(&d, ctx.path(), &archive);
    assert!(built.success, "{}", built.text());
    assert_eq!(
        oci_file(&archive, "/app/ok.txt").as_deref(),
        Some(&b"fine\n"[..])
    );
    let names = layer_names(&archive);
    assert!(
        !names.iter().any(|n| n.starts_with(b"app/caf")),
        "{:?}",
        names
            .iter()
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .collect::<Vec<_>>()
    );

    // A COPY that does not select it is not affected.
    std::fs::remove_file(ctx.path().join(".dockerignore")).expect("rm");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY ok.txt /app/\n",
    )
    .expect("write");
    let other = build_to(&d, ctx.path(), &archive);
    assert!(other.success, "{}", other.text());
    // A wildcard that matches it refuses too.
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY ca* /app/\n",
    )
    .expect("write");
    assert_refused(&build_to(&d, ctx.path(), &archive), "caf\\xe9", 2);
}

#[test]
fn a_name_that_is_not_utf8_appearing_in_a_watched_context_is_refused() {
    let d = Daemon::start();
    let ctx = context("FROM scratch\nCOPY . /app/\n");
    std::fs::create_dir(ctx.path().join("sub")).expect("mkdir");
    let out = tempfile::tempdir().expect("tempdir");
    let archive = out.path().join("image.tar");
    let first = build_to(&d, ctx.path(), &archive);
    assert!(first.success, "{}", first.text());

    // Created while the daemon watches: a directory with a file in it.
    let bad_dir = ctx.path().join("sub").join(OsStr::from_bytes(b"d\xff\xfe"));
    std::fs::create_dir(&bad_dir).expect("mkdir");
    std::fs::write(bad_dir.join("inner.txt"), "x\n").expect("write");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let refused = loop {
        let out = build_to(&d, ctx.path(), &archive);
        if !out.success || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_refused(&refused, "sub/d\\xff\\xfe", 2);

    // Gone again: the build is the first one's, from cache.
    std::fs::remove_dir_all(&bad_dir).expect("rm");
    let again = build_to(&d, ctx.path(), &archive);
    assert!(again.success, "{}", again.text());
    assert_eq!(again.manifest_digest(), first.manifest_digest());
}
