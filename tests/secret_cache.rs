//! A step that used a secret is never served from cache to a build that did
//! not send that very secret (docs/SECURITY.md, docs/CACHE.md): its key covers
//! a MAC of the secret under the daemon's private key, or the secret's
//! absence. Issue 14: another user building the same Dockerfile without the
//! secret used to get the first user's step from cache, secret inside.
//!
//! Needs `containerd`, `runc` and busybox (Debian `containerd`, `busybox-static`).

mod common;
use common::{busybox_context, ctl_as, oci_file, wait_status, BuildOutcome, Daemon};
use serde_json::Value;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

/// Copies the secret into the image, or `none` when the build has no secret.
const LEAKY: &str =
    "RUN --mount=type=secret,id=s cat /run/secrets/s > /leaked 2>/dev/null || echo none > /leaked
COPY note.txt /note.txt
";
const LEAKY_RUN: &str =
    "RUN --mount=type=secret,id=s cat /run/secrets/s > /leaked 2>/dev/null || echo none > /leaked";

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("/dev/urandom");
    hex::encode(bytes)
}

/// A secret file readable by anyone (the client reads it as its user).
fn secret_file(dir: &Path, name: &str, value: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, value).expect("write secret");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    format!("id=s,src={}", path.display())
}

/// An image archive path in a directory any user may write.
fn out_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

fn build(d: &Daemon, ctx: &Path, out: &Path, secret: Option<&str>) -> BuildOutcome {
    let spec = format!("type=oci,dest={}", out.display());
    let mut args = vec!["-o", spec.as_str()];
    if let Some(s) = secret {
        args.extend(["--secret", s]);
    }
    d.build_ok(ctx, &args)
}

fn leaked(archive: &Path) -> String {
    String::from_utf8(oci_file(archive, "/leaked").expect("/leaked in the image"))
        .expect("utf-8")
        .trim()
        .to_string()
}

/// Every byte of an image archive (all layers decompressed), for searching.
fn image_bytes(archive: &Path) -> Vec<u8> {
    let (_, blobs) = common::oci_archive(archive);
    let mut all = Vec::new();
    for blob in blobs.values() {
        all.extend_from_slice(blob);
        let mut plain = Vec::new();
        if flate2::read::MultiGzDecoder::new(blob.as_slice())
            .read_to_end(&mut plain)
            .is_ok()
        {
            all.extend_from_slice(&plain);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn step_state(project: &Value, instruction: &str) -> String {
    project["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["instruction"] == instruction)
        .and_then(|s| s["state"].as_str())
        .unwrap_or_else(|| panic!("no step {instruction:?} in {project:#}"))
        .to_string()
}

#[test]
fn a_step_that_used_a_secret_is_reused_only_with_the_same_secret() {
    let d = Daemon::start_with(&["--allowed-users", "nobody"]);
    d.open_socket_to_all();
    let ctx = busybox_context(LEAKY, &[("note.txt", "one\n")]);
    // Readable by `nobody` too (busybox_context makes the directory 0755).
    for name in ["Dockerfile", "note.txt"] {
        std::fs::set_permissions(
            ctx.path().join(name),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
    }
    let secrets = out_dir();
    let out = out_dir();
    let (token_a, token_b) = (random_token(), random_token());
    let secret_a = secret_file(secrets.path(), "a", &token_a);
    let secret_b = secret_file(secrets.path(), "b", &token_b);

    // Root builds with secret A: the step copies it into its layer.
    let archive_a = out.path().join("a.tar");
    let first = build(&d, ctx.path(), &archive_a, Some(&secret_a));
    assert!(
        first.executed().contains(&LEAKY_RUN.to_string()),
        "{}",
        first.text()
    );
    assert_eq!(leaked(&archive_a), token_a);
    let key_file = d.data.join("secret-mac.key");
    let meta = std::fs::metadata(&key_file).expect("the daemon made its MAC key");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);

    // Another user, same Dockerfile and context, no secret: the step runs
    // again and their image holds no trace of A.
    let archive_nobody = out.path().join("nobody.tar");
    let spec = format!("type=oci,dest={}", archive_nobody.display());
    let ctx_arg = ctx.path().to_str().expect("utf-8 path");
    let theirs = BuildOutcome::from_output(ctl_as(
        NOBODY,
        NOGROUP,
        &d.socket,
        &["build", "--progress", "json", "-o", &spec, ctx_arg],
    ));
    assert!(theirs.success, "{}\n{}", theirs.text(), d.log());
    assert!(
        theirs.executed().contains(&LEAKY_RUN.to_string()),
        "the secret step came from cache for a build without the secret:\n{}",
        theirs.text()
    );
    assert!(
        !theirs.cached().contains(&LEAKY_RUN.to_string()),
        "{}",
        theirs.text()
    );
    assert_eq!(leaked(&archive_nobody), "none");
    assert!(
        !contains(&image_bytes(&archive_nobody), token_a.as_bytes()),
        "secret A is in the image of a build without it"
    );

    // A different secret value: the step runs again, with B.
    let archive_b = out.path().join("b.tar");
    let with_b = build(&d, ctx.path(), &archive_b, Some(&secret_b));
    assert!(
        with_b.executed().contains(&LEAKY_RUN.to_string()),
        "{}",
        with_b.text()
    );
    assert_eq!(leaked(&archive_b), token_b);
    assert!(!contains(&image_bytes(&archive_b), token_a.as_bytes()));

    // Secret A again: everything from cache, the very image of the first build.
    let archive_a2 = out.path().join("a2.tar");
    let again = build(&d, ctx.path(), &archive_a2, Some(&secret_a));
    assert!(again.executed().is_empty(), "{}", again.text());
    assert!(
        again.cached().contains(&LEAKY_RUN.to_string()),
        "{}",
        again.text()
    );
    assert_eq!(again.manifest_digest(), first.manifest_digest());
    assert_eq!(leaked(&archive_a2), token_a);

    // The dirty check keys the secret step on the last build's secret: an
    // edit after it leaves it clean.
    std::fs::write(ctx.path().join("note.txt"), "two\n").expect("write");
    let project = wait_status(&d, ctx.path(), "the COPY dirty", |p| p["state"] == "dirty");
    assert_eq!(step_state(&project, "COPY note.txt /note.txt"), "dirty");
    assert_eq!(step_state(&project, LEAKY_RUN), "clean", "{project:#}");
    let edited = build(&d, ctx.path(), &archive_a2, Some(&secret_a));
    assert_eq!(
        edited.executed(),
        ["COPY note.txt /note.txt"],
        "{}",
        edited.text()
    );

    // Neither value is in the daemon's data dir (keys and records hold MACs).
    for token in [&token_a, &token_b] {
        let redb = std::fs::read(d.data.join("meta.redb")).expect("meta.redb");
        assert!(!contains(&redb, token.as_bytes()));
        assert!(!d.log().contains(token.as_str()));
    }
}

#[test]
fn a_required_secret_missing_fails_even_when_the_step_is_cached() {
    let d = Daemon::start();
    let run = "RUN --mount=type=secret,id=s,required cp /run/secrets/s /leaked";
    let ctx = busybox_context(&format!("{run}\n"), &[]);
    let secrets = out_dir();
    let out = out_dir();
    let token = random_token();
    let secret = secret_file(secrets.path(), "a", &token);
    let archive = out.path().join("a.tar");
    let first = build(&d, ctx.path(), &archive, Some(&secret));
    assert!(
        first.executed().contains(&run.to_string()),
        "{}",
        first.text()
    );
    assert_eq!(leaked(&archive), token);

    // Without the secret the step is not in the cache under its key: it runs
    // and fails as BuildKit's does, never handing out A's layer.
    let missing = out.path().join("missing.tar");
    let spec = format!("type=oci,dest={}", missing.display());
    let without = d.build(ctx.path(), &["-o", &spec]);
    assert!(!without.success, "{}", without.text());
    assert!(
        !without.cached().contains(&run.to_string()),
        "{}",
        without.text()
    );
    let error = without.error();
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("secret s: not found (the mount is required)"),
        "{error:#}"
    );
    assert!(!missing.exists(), "a failed build wrote an image");
}
