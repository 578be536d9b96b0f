//! Ownership (docs/SECURITY.md, "Ownership"): images, build logs, projects,
//! step cache entries and cache mounts belong to the uid whose request made
//! them. Another allowed user gets `permission denied` (exit status 77, error
//! kind `permission_denied`) for acting on them; admins (root, `admin-users`)
//! act on everything. The tests run as root and act as two users, uid 4242
//! ("A", no passwd entry) and `nobody` ("B"), and as admin uid 4343, through a
//! socket open to all, so only the daemon's checks stand in the way.

mod common;
use common::{busybox_context, ctl_as, BuildOutcome, Daemon};
use serde_json::Value;
use std::path::Path;
use std::process::Output;

const A: u32 = 4242;
const B: u32 = 65534;
const ADMIN: u32 = 4343;
/// memobuild-ctl's exit status for an error of kind `permission_denied`.
const DENIED: i32 = 77;

fn daemon() -> (Daemon, tempfile::TempDir) {
    daemon_with(&[])
}

/// A daemon that lets A and B in and counts ADMIN as an admin, with `extra`
/// flags; the temp dir holds its config.
fn daemon_with(extra: &[&str]) -> (Daemon, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("memobuildd.toml");
    std::fs::write(
        &config,
        format!("allowed-users = [{A}, {B}]\nadmin-users = [{ADMIN}]\n"),
    )
    .unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let d = Daemon::start_with(&args);
    d.open_socket_to_all();
    (d, dir)
}

fn as_user(d: &Daemon, uid: u32, args: &[&str]) -> Output {
    ctl_as(uid, uid, &d.socket, args)
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn json_as(d: &Daemon, uid: u32, args: &[&str]) -> Value {
    let out = as_user(d, uid, args);
    assert!(out.status.success(), "{args:?} as {uid}: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

fn build_as(d: &Daemon, uid: u32, context: &Path, extra: &[&str]) -> BuildOutcome {
    let mut args = vec!["build", "--progress", "json"];
    args.extend_from_slice(extra);
    args.push(context.to_str().unwrap());
    let out = BuildOutcome::from_output(as_user(d, uid, &args));
    assert!(
        out.success,
        "build as {uid} failed:\n{}\n--- daemon log ---\n{}",
        out.text(),
        d.log()
    );
    out
}

/// A context any user can read: `FROM scratch` and a COPY of a file whose
/// content is unique to this run, with the same Dockerfile under each name
/// of `dockerfiles` (each a project of its own, with the same step keys).
fn copy_context(content: &str, dockerfiles: &[&str]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for name in dockerfiles {
        std::fs::write(dir.path().join(name), "FROM scratch\nCOPY f.txt /\n").unwrap();
    }
    std::fs::write(dir.path().join("f.txt"), content).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn unique() -> String {
    format!("{:?}-{}", std::time::SystemTime::now(), std::process::id())
}

/// `-f` for `name` in `dir`: absolute (the client runs in `/`).
fn file(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

/// Every image the daemon lists to root (an admin), by name.
fn all_images(d: &Daemon) -> Vec<Value> {
    d.ctl_json(&["images"])
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn image<'a>(images: &'a [Value], name: &str) -> Option<&'a Value> {
    images.iter().find(|i| i["name"] == name)
}

fn blob_path(d: &Daemon, digest: &str) -> std::path::PathBuf {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    d.data.join("blobs/sha256").join(hex)
}

#[test]
fn another_user_cannot_remove_read_or_retag_what_is_not_theirs() {
    let (d, _config) = daemon();
    let ctx = copy_context(&unique(), &["Dockerfile"]);
    let built = build_as(&d, A, ctx.path(), &["-t", "owned-by-a"]);
    let build_id = built.build_id().to_string();
    let manifest = built.manifest_digest();

    // Listings: A and root see the image, owned by A; B does not see it.
    let mine = json_as(&d, A, &["images", "--json"]);
    let entry = image(mine.as_array().unwrap(), "owned-by-a:latest").expect("A lists it");
    assert_eq!(entry["owner"], A);
    let theirs = json_as(&d, B, &["images", "--json"]);
    assert!(image(theirs.as_array().unwrap(), "owned-by-a:latest").is_none());
    assert_eq!(
        image(&all_images(&d), "owned-by-a:latest").unwrap()["owner"],
        A
    );

    // B cannot remove it: refused with the typed kind, and it is still there.
    let out = as_user(&d, B, &["image", "rm", "owned-by-a"]);
    assert_eq!(out.status.code(), Some(DENIED), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hint:"),
        "{}",
        text(&out)
    );
    let still = all_images(&d);
    assert_eq!(
        image(&still, "owned-by-a:latest").unwrap()["manifest_digest"],
        manifest.as_str()
    );
    assert!(blob_path(&d, &manifest).is_file());

    // B cannot point the name at an image of its own.
    let other = copy_context(&unique(), &["Dockerfile"]);
    let out = as_user(
        &d,
        B,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "owned-by-a",
            other.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(DENIED), "{}", text(&out));
    assert_eq!(
        image(&all_images(&d), "owned-by-a:latest").unwrap()["manifest_digest"],
        manifest.as_str()
    );

    // B cannot read A's build log, by id or as A's project; B's `last` is
    // not A's build.
    let out = as_user(&d, B, &["logs", "--json", &build_id]);
    assert_eq!(out.status.code(), Some(DENIED), "{}", text(&out));
    let error: Value = serde_json::from_slice(&out.stdout).expect("JSON error");
    assert_eq!(error["error"]["kind"], "permission_denied", "{error}");
    let out = as_user(&d, B, &["logs", "--json", ctx.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(DENIED), "{}", text(&out));
    let out = as_user(&d, B, &["logs", "--json", "last"]);
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["error"]["kind"], "not_found", "{}", text(&out));
    // A reads it.
    let log = json_as(&d, A, &["logs", "--json", &build_id]);
    assert_eq!(log["build"].to_string(), build_id);

    // A's project: not in B's status, and B cannot explain or forget it.
    let project = built
        .events
        .iter()
        .find(|e| e["event"] == "planned")
        .and_then(|e| e["project"].as_str())
        .expect("project id")
        .to_string();
    let status = json_as(&d, B, &["status", "--json"]);
    assert!(
        !status["projects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == project.as_str()),
        "{status}"
    );
    let status = json_as(&d, A, &["status", "--json"]);
    assert!(status["projects"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == project.as_str()));
    for args in [["explain", project.as_str()], ["forget", project.as_str()]] {
        let out = as_user(&d, B, &args);
        assert_eq!(out.status.code(), Some(DENIED), "{args:?}: {}", text(&out));
    }
    let status = json_as(&d, A, &["status", "--json"]);
    assert!(status["projects"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == project.as_str()));

    // An admin from the config reads the log and removes the image.
    let log = json_as(&d, ADMIN, &["logs", "--json", &build_id]);
    assert_eq!(log["build"].to_string(), build_id);
    let out = as_user(&d, ADMIN, &["image", "rm", "owned-by-a"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(image(&all_images(&d), "owned-by-a:latest").is_none());

    // Root too; and A removes its own.
    build_as(&d, A, ctx.path(), &["-t", "a-again", "-t", "a-third"]);
    let out = d.ctl(&["image", "rm", "a-again"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = as_user(&d, A, &["image", "rm", "a-third"]);
    assert!(out.status.success(), "{}", text(&out));
    let left = all_images(&d);
    assert!(image(&left, "a-again:latest").is_none() && image(&left, "a-third:latest").is_none());
}

#[test]
fn a_users_prune_removes_only_that_users_cache_entries() {
    let (d, _config) = daemon();
    let names = ["Dockerfile", "Dockerfile.again", "Dockerfile.third"];
    let ctx_a = copy_context(&format!("a {}", unique()), &names);
    let ctx_b = copy_context(&format!("b {}", unique()), &names);
    let a = build_as(&d, A, ctx_a.path(), &["-t", "a-img"]);
    build_as(&d, B, ctx_b.path(), &["-t", "b-img"]);
    let entries_before = d.ctl_json(&["du"])["cache_entries"].as_u64().unwrap();

    // B prunes everything it may: its own entry, nothing of A's.
    let pruned = json_as(&d, B, &["prune", "--all", "--force", "--json"]);
    assert_eq!(pruned["cache_entries_removed"], 1, "{pruned}");
    let entries_after = d.ctl_json(&["du"])["cache_entries"].as_u64().unwrap();
    assert_eq!(entries_after, entries_before - 1);
    // A's image, and the blobs it names, stay.
    let images = all_images(&d);
    let a_img = image(&images, "a-img:latest").expect("A's image stays");
    assert_eq!(a_img["manifest_digest"], a.manifest_digest().as_str());
    assert!(blob_path(&d, &a.manifest_digest()).is_file());
    // A's step entry stays: another project with the same step is cached.
    let again = build_as(
        &d,
        A,
        ctx_a.path(),
        &["-f", &file(ctx_a.path(), "Dockerfile.again")],
    );
    assert_eq!(again.cached(), ["COPY f.txt /"], "{}", again.text());
    // B's is gone: its step runs again.
    let again = build_as(
        &d,
        B,
        ctx_b.path(),
        &["-f", &file(ctx_b.path(), "Dockerfile.again")],
    );
    assert_eq!(again.executed(), ["COPY f.txt /"], "{}", again.text());

    // An admin's prune drops every user's entries.
    let pruned = d.ctl_json(&["prune", "--all", "--force"]);
    assert!(
        pruned["cache_entries_removed"].as_u64().unwrap() >= 2,
        "{pruned}"
    );
    assert_eq!(d.ctl_json(&["du"])["cache_entries"], 0);
    let third = build_as(
        &d,
        A,
        ctx_a.path(),
        &["-f", &file(ctx_a.path(), "Dockerfile.third")],
    );
    assert_eq!(third.executed(), ["COPY f.txt /"], "{}", third.text());
    // Named images are never pruned, whoever prunes.
    assert!(image(&all_images(&d), "a-img:latest").is_some());
    assert!(image(&all_images(&d), "b-img:latest").is_some());
}

/// The directories of cache mounts under `cache-mounts/uid-UID/`.
fn cache_dirs_of(d: &Daemon, uid: u32) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(d.data.join(format!("cache-mounts/uid-{uid}"))) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn cache_mounts_are_per_user() {
    let (d, _config) = daemon();
    let mark = unique();
    let mount = "--mount=type=cache,id=shared-id,target=/cache";
    // A leaves a file in its cache.
    let writer = busybox_context(
        &format!("FROM base\nRUN {mount} echo 'A was here {mark}' > /cache/f\n"),
        &[],
    );
    build_as(&d, A, writer.path(), &[]);
    let a_dirs = cache_dirs_of(&d, A);
    assert_eq!(a_dirs.len(), 1, "{a_dirs:?}");
    let left = std::fs::read_to_string(a_dirs[0].join("f")).unwrap();
    assert_eq!(left.trim(), format!("A was here {mark}"));

    // B's RUN with the same id sees an empty cache: the build fails if the
    // file is there.
    let reader = busybox_context(
        &format!("FROM base\nRUN {mount} test ! -e /cache/f && echo {mark} > /cache/mine\n"),
        &[],
    );
    build_as(&d, B, reader.path(), &[]);
    let b_dirs = cache_dirs_of(&d, B);
    assert_eq!(b_dirs.len(), 1, "{b_dirs:?}");
    assert!(!b_dirs[0].join("f").exists());
    assert!(b_dirs[0].join("mine").is_file());
    // Root's builds have their own, too (where every cache lived before).
    build_as(&d, 0, reader.path(), &["--no-cache"]);
    // A's is untouched, and A's next step sees it (within one user a cache
    // is shared, as before).
    assert_eq!(
        std::fs::read_to_string(a_dirs[0].join("f")).unwrap().trim(),
        format!("A was here {mark}")
    );
    assert!(!a_dirs[0].join("mine").exists());
    let again = busybox_context(
        &format!("FROM base\nRUN {mount} grep -q '{mark}' /cache/f\n"),
        &[],
    );
    build_as(&d, A, again.path(), &[]);
    // The per-user directories are root's alone.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(d.data.join(format!("cache-mounts/uid-{A}"))).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o700));
}

fn kind<T: std::fmt::Debug>(
    answer: Result<T, memobuild_proto::RpcError>,
) -> memobuild_proto::ErrorKind {
    match answer {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.kind,
    }
}

#[test]
fn an_upload_is_written_and_committed_only_by_the_uid_that_began_it() {
    use memobuild_proto::{ByteBuf, ErrorKind};
    use sha2::Digest;
    let (d, _config) = daemon();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let a = common::client_as(&rt, &d.socket, A);
    let b = common::client_as(&rt, &d.socket, B);
    let ctx = tarpc::context::current;
    let first = rt.block_on(a.upload_begin(ctx())).unwrap().unwrap();
    let second = rt.block_on(a.upload_begin(ctx())).unwrap().unwrap();
    let third = rt.block_on(b.upload_begin(ctx())).unwrap().unwrap();
    // Not sequential: the next id cannot be guessed from one's own.
    for (x, y) in [(first, second), (second, third), (first, third)] {
        assert!(x.abs_diff(y) > 1_000_000, "ids {x} and {y} are close");
    }

    let bytes = format!("A's blob {}", unique()).into_bytes();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    // B writes into A's upload, and commits it: both refused.
    let chunk = rt.block_on(b.upload_chunk(ctx(), first, ByteBuf::from(b"B's bytes".to_vec())));
    assert_eq!(kind(chunk.unwrap()), ErrorKind::PermissionDenied);
    let commit = rt.block_on(b.upload_commit(ctx(), first, digest.clone()));
    assert_eq!(kind(commit.unwrap()), ErrorKind::PermissionDenied);
    // A's upload holds exactly A's bytes.
    rt.block_on(a.upload_chunk(ctx(), first, ByteBuf::from(bytes.clone())))
        .unwrap()
        .unwrap();
    let size = rt
        .block_on(a.upload_commit(ctx(), first, digest.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(size, bytes.len() as u64);
    assert_eq!(std::fs::read(blob_path(&d, &digest)).unwrap(), bytes);
    // Committed: gone for everyone.
    let again = rt.block_on(a.upload_commit(ctx(), first, digest.clone()));
    assert_eq!(kind(again.unwrap()), ErrorKind::NotFound);
    // B's own upload is B's: A cannot write into it either.
    let chunk = rt.block_on(a.upload_chunk(ctx(), third, ByteBuf::from(b"A".to_vec())));
    assert_eq!(kind(chunk.unwrap()), ErrorKind::PermissionDenied);
}

/// A context readable by everyone with `dockerfile` and `f.txt` holding `content`.
fn context_with(dockerfile: &str, content: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.path().join("f.txt"), content).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A directory every user may write an export into.
fn open_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

#[test]
fn another_users_image_content_is_not_readable() {
    use memobuild_proto::ErrorKind;
    let (d, _config) = daemon();
    let secret = format!("A's private content {}", unique());
    let a_ctx = context_with("FROM scratch\nCOPY f.txt /a.txt\n", &secret);
    let built = build_as(&d, A, a_ctx.path(), &["-t", "a-private"]);
    let manifest = built.manifest_digest();
    let a_layer = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let a = common::client_as(&rt, &d.socket, A);
        let blobs = rt
            .block_on(a.image_blobs(tarpc::context::current(), manifest.clone()))
            .unwrap()
            .unwrap();
        blobs.layers[0].digest.clone()
    };

    // B names A's image in FROM, COPY --from and a build context: each is
    // refused as permission denied, and nothing is pulled over A's name.
    let out_dir = open_dir();
    for dockerfile in [
        "FROM a-private\nCOPY f.txt /b.txt\n",
        "FROM scratch\nCOPY --from=a-private /a.txt /b.txt\n",
        "FROM x\nCOPY f.txt /b.txt\n",
    ] {
        let ctx = context_with(dockerfile, "b");
        let dest = out_dir.path().join("b.tar");
        let dest_arg = format!("type=oci,dest={}", dest.display());
        let out = as_user(
            &d,
            B,
            &[
                "build",
                "--progress",
                "plain",
                "--build-context",
                "x=docker-image://a-private",
                "-o",
                &dest_arg,
                ctx.path().to_str().unwrap(),
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(DENIED),
            "{dockerfile}: {}",
            text(&out)
        );
        assert!(!dest.exists(), "{dockerfile}: an image was exported");
        let a_img = image(&all_images(&d), "a-private:latest")
            .cloned()
            .expect("A's image stays");
        assert_eq!(a_img["manifest_digest"], manifest.as_str());
        assert_eq!(a_img["owner"], A);
    }

    // B's export requests for A's image and its layer: refused; A's own work.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = common::client_as(&rt, &d.socket, B);
    let a = common::client_as(&rt, &d.socket, A);
    let ctx = tarpc::context::current;
    let answer = rt.block_on(b.image_blobs(ctx(), manifest.clone())).unwrap();
    assert_eq!(kind(answer), ErrorKind::PermissionDenied);
    let answer = rt.block_on(b.open_blobs(ctx(), manifest.clone())).unwrap();
    assert_eq!(kind(answer), ErrorKind::PermissionDenied);
    for digest in [&manifest, &a_layer] {
        let answer = rt
            .block_on(b.read_blob(ctx(), digest.clone(), 0, 1 << 20))
            .unwrap();
        assert_eq!(kind(answer), ErrorKind::PermissionDenied, "{digest}");
        let answer = rt
            .block_on(b.read_blob(ctx(), digest.clone(), 1, 1 << 20))
            .unwrap();
        assert_eq!(kind(answer), ErrorKind::PermissionDenied, "{digest}");
    }
    let bytes = rt
        .block_on(a.read_blob(ctx(), a_layer.clone(), 0, 1 << 20))
        .unwrap()
        .unwrap();
    assert_eq!(
        bytes.into_vec(),
        std::fs::read(blob_path(&d, &a_layer)).unwrap()
    );

    // Root's images are bases for everyone; B's own untagged result exports.
    let root_mark = format!("root's base {}", unique());
    let root_ctx = context_with("FROM scratch\nCOPY f.txt /root.txt\n", &root_mark);
    d.build_ok(root_ctx.path(), &["-t", "root-base"]);
    let listed = json_as(&d, B, &["images", "--json"]);
    let listed = listed.as_array().unwrap();
    assert_eq!(image(listed, "root-base:latest").unwrap()["owner"], 0);
    assert!(image(listed, "a-private:latest").is_none());
    let b_mark = format!("B's file {}", unique());
    let b_ctx = context_with("FROM root-base\nCOPY f.txt /b.txt\n", &b_mark);
    let dest = out_dir.path().join("b-ok.tar");
    build_as(
        &d,
        B,
        b_ctx.path(),
        &["-o", &format!("type=oci,dest={}", dest.display())],
    );
    assert_eq!(
        common::oci_file(&dest, "/root.txt").as_deref(),
        Some(root_mark.as_bytes())
    );
    assert_eq!(
        common::oci_file(&dest, "/b.txt").as_deref(),
        Some(b_mark.as_bytes())
    );

    // An admin builds on A's image and reads its blobs.
    let admin_ctx = context_with("FROM a-private\nCOPY f.txt /admin.txt\n", "admin");
    let admin_dest = open_dir();
    let dest = admin_dest.path().join("admin.tar");
    build_as(
        &d,
        ADMIN,
        admin_ctx.path(),
        &["-o", &format!("type=oci,dest={}", dest.display())],
    );
    assert_eq!(
        common::oci_file(&dest, "/a.txt").as_deref(),
        Some(secret.as_bytes())
    );
}

/// Rewrites cache directory `dir` so its index maps `key` to `layer` (a
/// layer whose blob `dir` holds), as a user crafting a cache would.
fn point_cache_key(dir: &Path, key: &str, layer: &Value) {
    use sha2::Digest;
    let put = |bytes: &[u8]| -> String {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    };
    let read =
        |digest: &str| std::fs::read(dir.join("blobs").join(digest.replacen(':', "/", 1))).unwrap();
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let mut manifest: Value =
        serde_json::from_slice(&read(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    let mut config: Value =
        serde_json::from_slice(&read(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    config["steps"] = serde_json::json!({ key: layer });
    let config = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = put(&config).into();
    manifest["config"]["size"] = config.len().into();
    let manifest = serde_json::to_vec(&manifest).unwrap();
    index["manifests"][0]["digest"] = put(&manifest).into();
    index["manifests"][0]["size"] = manifest.len().into();
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn a_step_imported_from_a_cache_serves_only_its_importer() {
    use std::os::unix::fs::PermissionsExt;
    let (d, _config) = daemon();
    let honest = format!("honest {}", unique());
    let ctx = context_with("FROM scratch\nCOPY f.txt /\n", &honest);
    let other = context_with(
        "FROM scratch\nCOPY f.txt /\n",
        &format!("poisoned {}", unique()),
    );
    let caches = open_dir();
    let (dir_honest, dir_poison) = (caches.path().join("honest"), caches.path().join("poison"));
    for (context, dir) in [(ctx.path(), &dir_honest), (other.path(), &dir_poison)] {
        d.build_ok(
            context,
            &[
                "--cache-to",
                &format!("type=local,dest={},mode=max", dir.display()),
            ],
        );
    }
    // The honest step's key, pointed at the other build's layer: a cache A
    // crafts to seed the shared step cache.
    let honest_steps = common::local_cache_steps(&dir_honest);
    let [(key, _)] = honest_steps.iter().collect::<Vec<_>>()[..] else {
        panic!("one step: {honest_steps:?}");
    };
    let poison_steps = common::local_cache_steps(&dir_poison);
    let [(_, poison_layer)] = poison_steps.iter().collect::<Vec<_>>()[..] else {
        panic!("one step: {poison_steps:?}");
    };
    point_cache_key(&dir_poison, key, poison_layer);
    for entry in walk(caches.path()) {
        let mode = if entry.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let pruned = d.ctl_json(&["prune", "--all", "--force"]);
    assert!(
        pruned["cache_entries_removed"].as_u64().unwrap() >= 2,
        "{pruned}"
    );

    // A imports it: A's own build uses it (A asked for that cache).
    let out = open_dir();
    let oci = |name: &str| out.path().join(name);
    let a = build_as(
        &d,
        A,
        ctx.path(),
        &[
            "--cache-from",
            &format!("type=local,src={}", dir_poison.display()),
            "-o",
            &format!("type=oci,dest={}", oci("a.tar").display()),
        ],
    );
    assert_eq!(a.cached(), ["COPY f.txt /"], "{}", a.text());
    let a_file = common::oci_file(&oci("a.tar"), "/f.txt").unwrap();
    assert!(
        a_file.starts_with(b"poisoned"),
        "{}",
        String::from_utf8_lossy(&a_file)
    );

    // B's build of the same step does not use A's import: it runs, and B's
    // image holds the context's bytes.
    let b = build_as(
        &d,
        B,
        ctx.path(),
        &["-o", &format!("type=oci,dest={}", oci("b.tar").display())],
    );
    assert_eq!(b.executed(), ["COPY f.txt /"], "{}", b.text());
    assert_eq!(
        common::oci_file(&oci("b.tar"), "/f.txt").as_deref(),
        Some(honest.as_bytes())
    );
}

/// Every path under `root` (itself included).
fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            for e in std::fs::read_dir(&out[i]).unwrap() {
                out.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    out
}

#[test]
fn pull_always_never_repoints_a_name_another_user_holds() {
    let reg = common::registry::Registry::start();
    let (d, dir) = daemon_with(&["--insecure-registry", &reg.host]);
    let mark = unique();
    // The registry's base:1 and root's own image under the same name differ.
    let remote = context_with(
        "FROM scratch\nCOPY f.txt /src.txt\n",
        &format!("registry {mark}"),
    );
    let layout = dir.path().join("layout");
    d.build_ok(
        remote.path(),
        &["-o", &format!("type=oci-layout,dest={}", layout.display())],
    );
    reg.push_layout(&layout, "base:1", &[]);
    let name = reg.image("base:1");
    let local_text = format!("root's local {mark}");
    let local = context_with("FROM scratch\nCOPY f.txt /src.txt\n", &local_text);
    let roots = d.build_ok(local.path(), &["-t", &name]).manifest_digest();

    // B builds FROM that name with --pull=always: root's image is used, and
    // the name still names it, root's.
    let ctx = context_with(&format!("FROM {name}\nCOPY f.txt /b.txt\n"), "b");
    let out = open_dir();
    let dest = out.path().join("b.tar");
    let b = build_as(
        &d,
        B,
        ctx.path(),
        &[
            "--pull=always",
            "-o",
            &format!("type=oci,dest={}", dest.display()),
        ],
    );
    assert_eq!(
        common::oci_file(&dest, "/src.txt").as_deref(),
        Some(local_text.as_bytes()),
        "{}",
        b.text()
    );
    let entry = image(&all_images(&d), &name)
        .cloned()
        .expect("the name stays");
    assert_eq!(entry["manifest_digest"], roots.as_str());
    assert_eq!(entry["owner"], 0);

    // Root, who may change the name, re-points it with a pull, as `docker
    // pull` re-points a local tag; the name stays root's.
    let root_ctx = context_with(&format!("FROM {name}\nCOPY f.txt /r.txt\n"), "r");
    d.build_ok(root_ctx.path(), &["--pull=always"]);
    let entry = image(&all_images(&d), &name)
        .cloned()
        .expect("the name stays");
    assert_ne!(
        entry["manifest_digest"],
        roots.as_str(),
        "the registry's image now"
    );
    assert_eq!(entry["owner"], 0, "a pull keeps the name's owner");
}
