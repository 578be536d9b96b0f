//! File times and the image's `created`/history, as BuildKit keeps them
//! (issue 11 items 11 and 12): COPY keeps a context file's mtime, a file a
//! RUN writes keeps its mtime in the next RUN and in the image, a cached
//! rebuild gives the same config (history times are those of the first
//! build), `--no-cache` gives new times. Real daemon, containerd and busybox.

mod common;
use common::{busybox_context, Daemon};
use serde_json::Value;
use std::path::Path;

/// Builds `ctx` into an OCI archive at `out`; returns the build's outcome.
fn build_oci(d: &Daemon, ctx: &Path, out: &Path, extra: &[&str]) -> common::BuildOutcome {
    let dest = format!("type=oci,dest={}", out.display());
    let mut args = extra.to_vec();
    args.extend(["-o", dest.as_str()]);
    d.build_ok(ctx, &args)
}

/// The manifest and config of an `-o type=oci` archive.
fn manifest_and_config(archive: &Path) -> (Value, Value) {
    let (index, blobs) = common::oci_archive(archive);
    let digest = index["manifests"][0]["digest"].as_str().expect("manifest");
    let manifest: Value = serde_json::from_slice(&blobs[digest]).expect("manifest JSON");
    let config = manifest["config"]["digest"].as_str().expect("config");
    let config: Value = serde_json::from_slice(&blobs[config]).expect("config JSON");
    (manifest, config)
}

/// The tar header mtime of `path` (relative) in the last layer that has it.
fn layer_mtime(archive: &Path, path: &str) -> Option<u64> {
    let (manifest, _) = manifest_and_config(archive);
    let (_, blobs) = common::oci_archive(archive);
    let mut found = None;
    for layer in manifest["layers"].as_array().expect("layers") {
        let blob = &blobs[layer["digest"].as_str().expect("digest")];
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(blob.as_slice()));
        for entry in tar.entries().expect("entries") {
            let entry = entry.expect("entry");
            let name = entry.path().expect("path").display().to_string();
            if name.trim_start_matches("./").trim_end_matches('/') == path {
                found = entry.header().mtime().ok();
            }
        }
    }
    found
}

fn touch(path: &Path, date: &str) {
    let ok = std::process::Command::new("touch")
        .args(["-h", "-d", date])
        .arg(path)
        .status()
        .expect("touch")
        .success();
    assert!(ok, "touch -d {date} {}", path.display());
}

/// COPY keeps the mtime the context files and directories have (as
/// BuildKit's context transfer and copy do), and a RUN on top sees the same
/// time; the destination directory COPY creates itself has the step's time.
#[test]
fn copy_keeps_a_context_files_mtime() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "COPY app /app\nRUN stat -c %Y /app/data.txt > /seen\n",
        &[("app/data.txt", "hello\n"), ("app/sub/f", "f\n")],
    );
    touch(&ctx.path().join("app/data.txt"), "2001-02-03 04:05:06 UTC");
    touch(&ctx.path().join("app/sub"), "2002-03-04 05:06:07 UTC");
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let out = tempfile::tempdir().expect("tempdir");
    let archive = out.path().join("img.tar");
    build_oci(&d, ctx.path(), &archive, &[]);
    assert_eq!(layer_mtime(&archive, "app/data.txt"), Some(981_173_106));
    assert_eq!(layer_mtime(&archive, "app/sub"), Some(1_015_218_367));
    let created = layer_mtime(&archive, "app").expect("/app");
    assert!(created >= before, "/app: {created} < {before}");
    let seen = common::oci_file(&archive, "/seen").expect("/seen");
    assert_eq!(String::from_utf8_lossy(&seen).trim(), "981173106");
    // A touch alone is not an input: the cached layer keeps the first
    // build's time (docs/CACHE.md).
    touch(&ctx.path().join("app/data.txt"), "2010-01-01 00:00:00 UTC");
    let again = out.path().join("again.tar");
    let o = build_oci(&d, ctx.path(), &again, &[]);
    assert!(o.executed().is_empty(), "re-ran: {:?}", o.executed());
    assert_eq!(layer_mtime(&again, "app/data.txt"), Some(981_173_106));
}

/// A file a RUN creates keeps its mtime: the next RUN (on the snapshot
/// written from the layer's changes) stats the time the image's layer has.
#[test]
fn a_file_a_run_creates_keeps_its_mtime() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "RUN echo made > /made && touch -d '2003-04-05 06:07:08' /made && echo fresh > /fresh\n\
         RUN stat -c %Y /made > /made.seen && stat -c %Y /fresh > /fresh.seen\n",
        &[],
    );
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let out = tempfile::tempdir().expect("tempdir");
    let archive = out.path().join("img.tar");
    build_oci(&d, ctx.path(), &archive, &[]);
    let made = layer_mtime(&archive, "made").expect("/made in a layer");
    assert_eq!(
        made, 1_049_522_828,
        "busybox's touch -d is local time; the sandbox is UTC"
    );
    let read = |p: &str| {
        String::from_utf8_lossy(&common::oci_file(&archive, p).expect(p))
            .trim()
            .parse::<u64>()
            .expect("a number")
    };
    assert_eq!(read("/made.seen"), made);
    let fresh = layer_mtime(&archive, "fresh").expect("/fresh in a layer");
    assert!(
        fresh >= before,
        "{fresh} < {before}: not the time it was written"
    );
    assert_eq!(read("/fresh.seen"), fresh);
}

/// History as BuildKit writes it: comment `buildkit.dockerfile.v0`, a time
/// on every entry, `created` the last one; a fully cached rebuild gives the
/// byte-identical config (the times are those of the first build), and
/// `--no-cache` gives a newer `created`.
#[test]
fn created_is_kept_by_the_cache_and_renewed_by_no_cache() {
    let d = Daemon::start();
    let ctx = busybox_context("ENV A=1\nRUN echo hi > /hi\nCMD [\"sh\"]\n", &[]);
    let out = tempfile::tempdir().expect("tempdir");
    let first = out.path().join("first.tar");
    build_oci(&d, ctx.path(), &first, &[]);
    let (m1, c1) = manifest_and_config(&first);
    let created = c1["created"].as_str().expect("created").to_string();
    let history = c1["history"].as_array().expect("history");
    assert!(!history.is_empty());
    for h in history {
        assert_eq!(h["comment"], "buildkit.dockerfile.v0", "{h}");
        assert!(h["created"].is_string(), "{h}");
    }
    assert_eq!(history.last().expect("last")["created"], created.as_str());
    // BuildKit's texts (convert.go): the shell in RUN, `# buildkit` on
    // layer steps, Go's %q for CMD.
    let texts: Vec<&str> = history
        .iter()
        .map(|h| h["created_by"].as_str().expect("created_by"))
        .collect();
    assert_eq!(
        texts,
        [
            "COPY busybox /bin/busybox # buildkit",
            "RUN /bin/busybox --install -s /bin # buildkit",
            "ENV A=1",
            "RUN /bin/sh -c echo hi > /hi # buildkit",
            r#"CMD ["sh"]"#,
        ]
    );
    // The ENV entry (no layer) has the time of the layer after it, as
    // BuildKit's exporter fills it.
    assert_eq!(history[2]["created"], history[3]["created"]);
    // No layer is rewritten without SOURCE_DATE_EPOCH.
    for l in m1["layers"].as_array().expect("layers") {
        assert!(
            l["annotations"]["buildkit/rewritten-timestamp"].is_null(),
            "{l}"
        );
    }

    std::thread::sleep(std::time::Duration::from_millis(1100));
    // A restarted daemon answers from its step cache, not from memory.
    let mut d = d;
    d.restart();
    let cached = out.path().join("cached.tar");
    let o = build_oci(&d, ctx.path(), &cached, &[]);
    assert!(o.executed().is_empty(), "re-ran: {:?}", o.executed());
    assert!(!o.cached().is_empty(), "no step came from the cache");
    let (m2, c2) = manifest_and_config(&cached);
    assert_eq!(c1, c2);
    assert_eq!(m1["config"]["digest"], m2["config"]["digest"]);

    let fresh = out.path().join("fresh.tar");
    build_oci(&d, ctx.path(), &fresh, &["--no-cache"]);
    let (_, c3) = manifest_and_config(&fresh);
    let renewed = c3["created"].as_str().expect("created");
    assert!(
        renewed > created.as_str(),
        "{renewed} is not after {created}"
    );
}

/// Bind mounts show the files' own times: a stage's (as its layer has
/// them) and the context's, also when the mount is a writable copy.
#[test]
fn bind_mounts_show_the_files_times() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "RUN echo s > /s && touch -d '2004-05-06 07:08:09' /s\n\
         FROM base AS user\n\
         RUN --mount=type=bind,from=base,source=/s,target=/m/s stat -c %Y /m/s > /stage.seen\n\
         RUN --mount=type=bind,source=data.txt,target=/c/data.txt,rw stat -c %Y /c/data.txt > /ctx.seen\n",
        &[("data.txt", "data\n")],
    );
    touch(&ctx.path().join("data.txt"), "2001-02-03 04:05:06 UTC");
    let out = tempfile::tempdir().expect("tempdir");
    let archive = out.path().join("img.tar");
    build_oci(&d, ctx.path(), &archive, &[]);
    let read = |p: &str| {
        String::from_utf8_lossy(&common::oci_file(&archive, p).expect(p))
            .trim()
            .to_string()
    };
    assert_eq!(read("/stage.seen"), "1083827289");
    assert_eq!(read("/ctx.seen"), "981173106");
}

/// `ARG SOURCE_DATE_EPOCH=STAGE` with a stage that ADDs a git repository:
/// the epoch is the commit's committer time (BuildKit's), served here over
/// git's dumb HTTP protocol by python's http.server.
#[test]
fn a_git_source_stage_gives_the_commit_time() {
    use std::io::BufRead;
    let repo = tempfile::tempdir().expect("tempdir");
    let sh = |cmd: &str| {
        let ok = std::process::Command::new("sh")
            .args(["-c", cmd])
            .current_dir(repo.path())
            .env("GIT_COMMITTER_DATE", "2020-01-02T03:04:05Z")
            .env("GIT_AUTHOR_DATE", "2019-01-01T00:00:00Z")
            .status()
            .expect("sh")
            .success();
        assert!(ok, "{cmd}");
    };
    sh("git init -q && git config user.email t@e && git config user.name t");
    sh("echo hi > f && git add f && git commit -qm one && git update-server-info");
    let mut server = std::process::Command::new("python3")
        .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
        .current_dir(repo.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the server's first line");
    let port = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .expect("a port")
        .to_string();
    let d = Daemon::start();
    let ctx = busybox_context(
        &format!(
            "FROM scratch AS src\nADD http://127.0.0.1:{port}/.git /src\nFROM base\nARG SOURCE_DATE_EPOCH\nRUN echo -n $SOURCE_DATE_EPOCH > /epoch\n"
        ),
        &[],
    );
    let df = std::fs::read_to_string(ctx.path().join("Dockerfile")).expect("Dockerfile");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("ARG SOURCE_DATE_EPOCH=src\n{df}"),
    )
    .expect("Dockerfile");
    let out = tempfile::tempdir().expect("tempdir");
    let archive = out.path().join("img.tar");
    build_oci(&d, ctx.path(), &archive, &[]);
    server.kill().ok();
    server.wait().ok();
    let epoch = String::from_utf8(common::oci_file(&archive, "/epoch").expect("/epoch")).unwrap();
    assert_eq!(epoch, "1577934245");
    let (_, config) = manifest_and_config(&archive);
    assert_eq!(config["created"], "2020-01-02T03:04:05Z");
}
