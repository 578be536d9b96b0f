//! Registries, against a real Distribution registry (Debian's docker-registry)
//! on 127.0.0.1: FROM pulls by tag, digest and platform, with and without
//! htpasswd auth and token auth (a token server on 127.0.0.1); pushes that
//! pull back with the same digest; a step cache shared by two daemons through
//! the registry; and faults (the registry killed mid-build, a corrupt blob on
//! its disk) that never fail a build that can be done locally.

mod common;
use common::registry::{
    build_env, busybox_layout, daemon_for, docker_config, registry_with_base, Registry,
};
use common::{write_files, Daemon};
use std::path::Path;

const EPOCH: &str = "1700000000";

/// The manifest digest the image store names `name` with.
fn stored_digest(d: &Daemon, name: &str) -> Option<String> {
    let out = d.ctl(&["images", "--json"]);
    let images: serde_json::Value = serde_json::from_slice(&out.stdout).expect("images JSON");
    images
        .as_array()?
        .iter()
        .find(|i| i["name"] == name)
        .and_then(|i| i["manifest_digest"].as_str().map(String::from))
}

fn context(dir: &Path, name: &str, dockerfile: &str) -> std::path::PathBuf {
    let ctx = dir.join(name);
    write_files(&ctx, &[("Dockerfile", dockerfile), ("file.txt", name)]);
    ctx
}

#[test]
fn from_pulls_by_tag_and_by_digest_and_run_uses_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let mut reg = registry_with_base(&maker, dir.path());
    let digest = reg.digest("base:1");
    let d = daemon_for(&reg);

    let by_tag = context(
        dir.path(),
        "by-tag",
        &format!(
            "FROM {}\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox cat /marker > /seen\"]\n",
            reg.image("base:1")
        ),
    );
    let out = d.build_ok(&by_tag, &[]);
    assert!(
        out.logs()
            .iter()
            .any(|l| l.starts_with("pulled") && l.contains(&digest)),
        "{}",
        out.text()
    );
    assert_eq!(out.executed().len(), 1, "the RUN ran on the pulled image");
    assert_eq!(
        stored_digest(&d, &reg.image("base:1")),
        Some(digest.clone())
    );

    // By digest: already present under the tag's manifest, so no network.
    reg.kill();
    let pinned = format!("{}/base@{digest}", reg.host);
    let by_digest = context(
        dir.path(),
        "by-digest",
        &format!("FROM {pinned}\nCOPY file.txt /\n"),
    );
    let out = d.build_ok(&by_digest, &["--pull=always"]);
    assert!(
        !out.logs().iter().any(|l| l.starts_with("pulling")),
        "{}",
        out.text()
    );
    assert_eq!(stored_digest(&d, &pinned), Some(digest.clone()));
    // --pull=always with the registry down: the stored image, and a warning.
    let out = d.build_ok(&by_tag, &["--pull=always"]);
    assert!(
        out.logs().iter().any(|l| l.contains("cannot pull")),
        "{}",
        out.text()
    );

    // A fresh daemon pulls by digest from the registry.
    reg.spawn();
    let d2 = daemon_for(&reg);
    let out = d2.build_ok(&by_digest, &[]);
    assert!(
        out.logs().iter().any(|l| l.starts_with("pulled")),
        "{}",
        out.text()
    );
    assert_eq!(stored_digest(&d2, &pinned), Some(digest));

    // --pull=never: only the store; a clear error for what is not there.
    let missing = context(
        dir.path(),
        "missing",
        &format!("FROM {}\n", reg.image("nothere:1")),
    );
    let err = d2.build(&missing, &["--pull=never"]).error();
    assert!(
        err["message"].as_str().unwrap().contains("Dockerfile:1:1"),
        "{err}"
    );
    // And with pulling, the registry's answer, located at the FROM.
    let err = d2.build(&missing, &[]).error();
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("Dockerfile:1:1: FROM") && message.contains("was not found"),
        "{err}"
    );
}

#[test]
fn a_multi_platform_index_gives_the_requested_platform() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let host_arch = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let other_arch = if host_arch == "amd64" {
        "arm64"
    } else {
        "amd64"
    };
    let native = busybox_layout(&maker, dir.path(), host_arch);
    let foreign = busybox_layout(&maker, dir.path(), other_arch);
    let (index, digests) =
        merge_layouts(dir.path(), &[(&native, host_arch), (&foreign, other_arch)]);
    let reg = Registry::start();
    reg.push_layout(&index, "multi:1", &["--all"]);
    let d = daemon_for(&reg);
    let image = reg.image("multi:1");
    let ctx = context(
        dir.path(),
        "multi",
        &format!("FROM {image}\nCOPY file.txt /\n"),
    );

    d.build_ok(&ctx, &[]);
    assert_eq!(
        stored_digest(&d, &image).as_ref(),
        Some(&digests[0]),
        "host platform by default"
    );

    d.build_ok(
        &ctx,
        &[
            "--pull=always",
            "--platform",
            &format!("linux/{other_arch}"),
        ],
    );
    assert_eq!(
        stored_digest(&d, &image).as_ref(),
        Some(&digests[1]),
        "--platform picks"
    );

    let err = d
        .build(&ctx, &["--pull=always", "--platform", "linux/s390x"])
        .error();
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("no linux/s390x variant")
            && message.contains(&format!("linux/{other_arch}")),
        "{err}"
    );
}

/// One OCI layout whose index lists the (single) image of each layout, with
/// its platform; returns it and the manifest digests in order.
fn merge_layouts(dir: &Path, layouts: &[(&Path, &str)]) -> (std::path::PathBuf, Vec<String>) {
    let out = dir.join("layout-index");
    let blobs = out.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let mut manifests = Vec::new();
    let mut digests = Vec::new();
    for (layout, arch) in layouts {
        for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), blobs.join(entry.file_name())).unwrap();
        }
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let mut m = index["manifests"][0].clone();
        m["platform"] = serde_json::json!({"os": "linux", "architecture": arch});
        m.as_object_mut().unwrap().remove("annotations");
        digests.push(m["digest"].as_str().unwrap().to_string());
        manifests.push(m);
    }
    // The multi-platform index is a blob; the layout's index.json names it.
    let media = "application/vnd.oci.image.index.v1+json";
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": media, "manifests": manifests})
        .to_string();
    use sha2::Digest;
    let hex = hex::encode(sha2::Sha256::digest(index.as_bytes()));
    std::fs::write(blobs.join(&hex), &index).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": media, "digest": format!("sha256:{hex}"), "size": index.len(),
    }]});
    std::fs::write(out.join("index.json"), top.to_string()).unwrap();
    std::fs::write(out.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}").unwrap();
    (out, digests)
}

#[test]
fn htpasswd_registry_needs_the_users_docker_login() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let reg = Registry::start_with_auth("builder", "s3cret-pw");
    reg.push_layout(
        &busybox_layout(&maker, dir.path(), "auth"),
        "private/base:1",
        &[],
    );
    let d = daemon_for(&reg);
    let ctx = context(
        dir.path(),
        "auth",
        &format!("FROM {}\nCOPY file.txt /\n", reg.image("private/base:1")),
    );

    let no_login = tempfile::tempdir().unwrap();
    let out = build_env(
        &d,
        &ctx,
        &[],
        &[("DOCKER_CONFIG", no_login.path().to_str().unwrap())],
    );
    let err = out.error();
    assert!(
        err["message"].as_str().unwrap().contains("denied access"),
        "{err}"
    );
    assert!(
        err["hint"].as_str().unwrap().contains("docker login"),
        "{err}"
    );

    let login = docker_config(&reg.host, "builder", "s3cret-pw");
    let out = build_env(
        &d,
        &ctx,
        &[],
        &[("DOCKER_CONFIG", login.path().to_str().unwrap())],
    );
    assert!(out.success, "{}\n{}", out.text(), d.log());
    assert!(
        !d.log().contains("s3cret-pw"),
        "credentials never reach the log"
    );

    let wrong = docker_config(&reg.host, "builder", "wrong");
    let out = build_env(
        &d,
        &ctx,
        &["--pull=always"],
        &[("DOCKER_CONFIG", wrong.path().to_str().unwrap())],
    );
    let err = out.error();
    assert!(
        err["hint"].as_str().unwrap().contains("were rejected"),
        "{err}"
    );
}

#[test]
fn pushed_images_pull_back_with_the_same_digest_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let reg = registry_with_base(&maker, dir.path());
    let d = daemon_for(&reg);
    let app = reg.image("team/app:1");
    let ctx = context(
        dir.path(),
        "app",
        &format!(
            "FROM {}\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo built > /built\"]\nCOPY file.txt /\n",
            reg.image("base:1")
        ),
    );
    let out = d.build_ok(&ctx, &["-t", &app, "--push"]);
    let digest = out.manifest_digest();
    assert_eq!(reg.digest("team/app:1"), digest);
    assert!(
        out.logs().iter().any(|l| l.starts_with("pushed")),
        "{}",
        out.text()
    );

    // Again under another name: every blob is already there (or mounted).
    let out = d.build_ok(
        &ctx,
        &[
            "-o",
            &format!("type=registry,name={}", reg.image("team/app:2")),
        ],
    );
    let line = pushed_line(&out);
    assert!(line.contains("0 blobs uploaded"), "{line}");
    assert_eq!(reg.digest("team/app:2"), digest);
    // Into another repository: the base's layers are mounted from its repository.
    let out = d.build_ok(
        &ctx,
        &[
            "-o",
            &format!("type=registry,name={}", reg.image("other/app:1")),
        ],
    );
    let line = pushed_line(&out);
    assert!(line.contains("; 2 mounted"), "{line}");
    assert_eq!(reg.digest("other/app:1"), digest);

    // A second host pulls it and runs on it.
    let d2 = daemon_for(&reg);
    let child = context(
        dir.path(),
        "child",
        &format!("FROM {app}\nRUN [\"/bin/busybox\", \"grep\", \"built\", \"/built\"]\n"),
    );
    let out = d2.build_ok(&child, &[]);
    assert_eq!(stored_digest(&d2, &app), Some(digest));
    assert_eq!(out.executed().len(), 1);

    // --push without a name is a clear error.
    let out = d.ctl(&["build", "--push", ctx.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--push needs an image name"));
}

/// A project with a base from the registry, a RUN and a COPY.
fn cached_project(dir: &Path, reg: &Registry, name: &str, run: &str) -> std::path::PathBuf {
    context(
        dir,
        name,
        &format!(
            "FROM {}\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"{run}\"]\nCOPY file.txt /\n",
            reg.image("base:1")
        ),
    )
}

fn runs(out: &common::BuildOutcome) -> usize {
    out.executed()
        .iter()
        .filter(|i| i.starts_with("RUN"))
        .count()
}

#[test]
fn a_second_host_builds_from_the_registry_cache_without_running() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let reg = registry_with_base(&maker, dir.path());
    let cache = reg.image("cache:main");
    let first = daemon_for(&reg);
    let ctx = cached_project(dir.path(), &reg, "shared", "echo from-host-1 > /out");
    let out = first.build_ok(
        &ctx,
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
    );
    assert_eq!(runs(&out), 1);
    assert!(
        out.logs().iter().any(|l| l.contains("wrote")),
        "{}",
        out.text()
    );
    let digest = out.manifest_digest();

    // Another host: its own daemon and store, the same project in another place.
    let second = daemon_for(&reg);
    let copy = dir.path().join("elsewhere");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["Dockerfile", "file.txt"] {
        std::fs::copy(ctx.join(f), copy.join(f)).unwrap();
    }
    let out = second.build_ok(
        &copy,
        &["--cache-from", &format!("type=registry,ref={cache}")],
    );
    assert_eq!(runs(&out), 0, "no RUN executes: {:?}", out.executed());
    assert_eq!(out.manifest_digest(), digest, "the identical image");
    assert!(
        out.logs()
            .iter()
            .any(|l| l.contains("came from the registry cache")),
        "{}",
        out.text()
    );
    // The metrics say which tier answered: every step the registry cache
    // gave is a remote hit (and a local miss), none a remote miss.
    let metrics = String::from_utf8(second.ctl(&["metrics"]).stdout).unwrap();
    let count = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    };
    let remote_hits = count("memobuild_cache_hits_total{tier=\"remote\"}");
    assert!(remote_hits >= 1, "{metrics}");
    assert_eq!(count("memobuild_cache_misses_total{tier=\"remote\"}"), 0);
    assert!(count("memobuild_cache_misses_total{tier=\"local\"}") >= remote_hits);
}

#[test]
fn the_daemons_default_cache_is_shared_by_every_build() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let reg = registry_with_base(&maker, dir.path());
    let cache = reg.image("cache:all");
    let flags = ["--insecure-registry", &reg.host, "--cache-ref", &cache];
    let ctx = cached_project(dir.path(), &reg, "default", "echo default > /out");
    let first = Daemon::start_with(&flags);
    let digest = first.build_ok(&ctx, &[]).manifest_digest();
    let second = Daemon::start_with(&flags);
    let out = second.build_ok(&ctx, &[]);
    assert_eq!((runs(&out), out.manifest_digest()), (0, digest));
}

#[test]
fn a_registry_killed_mid_build_does_not_fail_it() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let mut reg = registry_with_base(&maker, dir.path());
    let cache = format!("type=registry,ref={}", reg.image("cache:k"));
    let d = daemon_for(&reg);
    // The base is pulled while the registry is up.
    d.build_ok(&cached_project(dir.path(), &reg, "warm", "true"), &[]);

    // Killed while the RUN runs: the cache write at the end fails, the build does not.
    let ctx = cached_project(
        dir.path(),
        &reg,
        "killed",
        "/bin/busybox sleep 2; echo x > /x",
    );
    let mut child = std::process::Command::new(common::bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args([
            "build",
            "--progress",
            "json",
            "--cache-from",
            &cache,
            "--cache-to",
            &cache,
        ])
        .arg(&ctx)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("\"step_started\"") && line.contains("\"step\":0") {
            reg.kill();
            break;
        }
    }
    seen.extend(lines.map(|l| l.unwrap()));
    assert!(child.wait().unwrap().success(), "{}", seen.join("\n"));
    let all = seen.join("\n");
    assert!(all.contains("\"finished\""), "{all}");
    assert!(
        all.contains("was not written"),
        "the progress says so: {all}"
    );
    assert!(d.log().contains("was not written"), "and the log");

    // Down from the start: the cache cannot be read, the steps are built here.
    let ctx = cached_project(dir.path(), &reg, "down", "echo down > /d");
    let started = std::time::Instant::now();
    let out = d.build_ok(&ctx, &["--cache-from", &cache]);
    assert_eq!(runs(&out), 1);
    assert!(
        out.logs().iter().any(|l| l.contains("cannot be read")),
        "{}",
        out.text()
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "bounded retries"
    );
}

#[test]
fn a_corrupt_blob_in_the_registry_is_rejected_and_built_locally() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let reg = registry_with_base(&maker, dir.path());
    let cache = reg.image("cache:c");
    let epoch = [("SOURCE_DATE_EPOCH", EPOCH)];
    let first = daemon_for(&reg);
    let ctx = cached_project(dir.path(), &reg, "corrupt", "echo data > /data");
    let out = build_env(
        &first,
        &ctx,
        &["--cache-to", &format!("type=registry,ref={cache},mode=max")],
        &epoch,
    );
    assert!(out.success, "{}", out.text());
    let digest = out.manifest_digest();

    // Flip bytes of every cached layer the base does not have, on the registry's disk.
    let base_layers = layer_digests(&reg, "base:1");
    let mut corrupted = 0;
    for layer in layer_digests(&reg, "cache:c") {
        if !base_layers.contains(&layer) {
            let path = reg.blob_path(&layer);
            let mut bytes = std::fs::read(&path).unwrap();
            for b in bytes.iter_mut().take(64) {
                *b ^= 0xff;
            }
            std::fs::write(&path, bytes).unwrap();
            corrupted += 1;
        }
    }
    assert!(corrupted > 0);

    let second = daemon_for(&reg);
    let out = build_env(
        &second,
        &ctx,
        &["--cache-from", &format!("type=registry,ref={cache}")],
        &epoch,
    );
    assert!(out.success, "{}", out.text());
    assert_eq!(
        runs(&out),
        1,
        "the corrupt layer was not used; the RUN ran here"
    );
    assert_eq!(out.manifest_digest(), digest, "and the image is the same");
    assert!(
        out.logs()
            .iter()
            .any(|l| l.contains("building the step locally")),
        "{}",
        out.text()
    );
}

/// Layer digests of `repo:tag` in the registry.
fn layer_digests(reg: &Registry, repo_tag: &str) -> Vec<String> {
    layer_fields(reg, repo_tag, "digest")
}

/// Layer media types of `repo:tag` in the registry.
fn layer_types(reg: &Registry, repo_tag: &str) -> Vec<String> {
    layer_fields(reg, repo_tag, "mediaType")
}

/// One field of every layer descriptor of `repo:tag`'s manifest, read by skopeo.
fn layer_fields(reg: &Registry, repo_tag: &str, field: &str) -> Vec<String> {
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw"])
        .arg(format!("docker://{}", reg.image(repo_tag)))
        .output()
        .unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l[field].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn zstd_uncompressed_and_docker_layers_are_read_by_run_and_copy() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let reg = Registry::start();
    let layout = busybox_layout(&maker, dir.path(), "zstd");
    reg.push_layout(&layout, "base:zstd", &["--dest-compress-format", "zstd"]);
    assert!(layer_types(&reg, "base:zstd")
        .iter()
        .all(|t| t.ends_with("+zstd")));
    reg.push_layout(&layout, "base:docker", &["--format", "v2s2"]);
    assert!(layer_types(&reg, "base:docker")
        .iter()
        .all(|t| t.starts_with("application/vnd.docker")));

    // Uncompressed: a `docker save` archive (plain tar layers) imported, then pushed as stored.
    let archive = dir.path().join("docker.tar");
    reg.skopeo_copy(
        &[],
        &format!("oci:{}", layout.display()),
        &format!("docker-archive:{}:plain:1", archive.display()),
    );
    let d = daemon_for(&reg);
    let out = d.ctl(&[
        "image",
        "import",
        "--name",
        "plain:1",
        archive.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain = context(dir.path(), "plain", "FROM plain:1\nCOPY file.txt /\n");
    d.build_ok(&plain, &["-t", &reg.image("base:plain"), "--push"]);
    assert!(layer_types(&reg, "base:plain")
        .iter()
        .any(|t| t.ends_with(".tar") || t.ends_with("diff.tar")));

    let fresh = daemon_for(&reg);
    for tag in ["base:zstd", "base:plain", "base:docker"] {
        let ctx = context(
            dir.path(),
            &format!("on-{}", tag.replace(':', "-")),
            &format!(
                "FROM {} AS base\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox cat /marker > /seen\"]\n\
                 FROM scratch\nCOPY --from=base /marker /seen /\n",
                reg.image(tag)
            ),
        );
        let tar = dir.path().join(format!("{}.tar", tag.replace(':', "-")));
        let out = fresh.build_ok(&ctx, &["-o", &format!("type=oci,dest={}", tar.display())]);
        assert_eq!(
            out.executed()
                .iter()
                .filter(|i| i.starts_with("RUN"))
                .count(),
            1
        );
        let dump = common::fsdump(&tar);
        let paths: Vec<&str> = dump["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["path"].as_str())
            .collect();
        assert_eq!(paths, vec!["/marker", "/seen"], "{tag}");
    }
    // Built on a Docker-format base, the image is OCI throughout.
    let on_docker = context(
        dir.path(),
        "on-docker",
        &format!("FROM {}\nCOPY file.txt /\n", reg.image("base:docker")),
    );
    fresh.build_ok(&on_docker, &["-t", &reg.image("rebuilt:1"), "--push"]);
    let types = layer_types(&reg, "rebuilt:1");
    assert!(
        types
            .iter()
            .all(|t| t.starts_with("application/vnd.oci.image.layer")),
        "{types:?}"
    );
}

#[test]
fn cache_mode_min_writes_the_final_stage_and_max_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let reg = registry_with_base(&maker, dir.path());
    let base = reg.image("base:1");
    let ctx = context(
        dir.path(),
        "stages",
        &format!(
            "FROM {base} AS build\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo built > /out\"]\n\
             FROM {base}\nCOPY --from=build /out /out\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo final > /final\"]\n"
        ),
    );
    for (mode, runs_on_second_host) in [("min", 1), ("max", 0)] {
        let cache = format!("type=registry,ref={}", reg.image(&format!("cache:{mode}")));
        let first = daemon_for(&reg);
        let digest = first
            .build_ok(&ctx, &["--cache-to", &format!("{cache},mode={mode}")])
            .manifest_digest();
        let second = daemon_for(&reg);
        let out = second.build_ok(&ctx, &["--cache-from", &cache]);
        // min: the build stage's RUN is not in the cache; the final stage's steps are.
        assert_eq!(
            runs(&out),
            runs_on_second_host,
            "mode={mode}: {:?}",
            out.executed()
        );
        assert_eq!(out.manifest_digest(), digest);
    }
}

/// A "registry" on 127.0.0.1 that answers every request with 503; counts them.
fn failing_registry() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = conn.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    (host, count)
}

#[test]
fn a_registry_answering_errors_is_retried_with_backoff_then_built_locally() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let reg = registry_with_base(&maker, dir.path());
    let (bad, requests) = failing_registry();
    let d = Daemon::start_with(&[
        "--insecure-registry",
        &reg.host,
        "--insecure-registry",
        &bad,
    ]);
    let ctx = cached_project(dir.path(), &reg, "erroring", "echo e > /e");
    let started = std::time::Instant::now();
    let out = d.build_ok(
        &ctx,
        &["--cache-from", &format!("type=registry,ref={bad}/cache:x")],
    );
    let elapsed = started.elapsed();
    assert_eq!(runs(&out), 1, "built locally");
    let warning = out
        .logs()
        .into_iter()
        .find(|l| l.contains("cannot be read"))
        .unwrap_or_else(|| panic!("{}", out.text()));
    assert!(
        warning.contains("503") && warning.contains("after 5 attempts"),
        "{warning}"
    );
    // 5 attempts (each may first probe /v2/ for auth), waits of ~100+200+400+800 ms with jitter.
    let n = requests.load(std::sync::atomic::Ordering::SeqCst);
    assert!((5..=10).contains(&n), "{n} requests");
    assert!(
        elapsed > std::time::Duration::from_millis(750),
        "{elapsed:?}"
    );
}

/// The progress line that reports a push (`pushed REF: N blobs uploaded...`).
fn pushed_line(out: &common::BuildOutcome) -> String {
    out.logs()
        .into_iter()
        .find(|l| l.starts_with("pushed"))
        .unwrap_or_else(|| panic!("no `pushed` line:\n{}", out.text()))
}

// --- Token auth (Distribution's token flow, a token server on 127.0.0.1) ---

use common::registry::{docker_config_identity_token, TokenServer};

#[test]
fn token_auth_registry_pulls_and_pushes_with_the_users_docker_login() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let (reg, tokens) = Registry::start_with_token_auth("builder", "t0ken-pw");
    reg.push_layout(
        &busybox_layout(&maker, dir.path(), "token"),
        "private/base:1",
        &[],
    );
    let d = daemon_for(&reg);
    let app = reg.image("team/app:1");
    let ctx = context(
        dir.path(),
        "token",
        &format!("FROM {}\nCOPY file.txt /\n", reg.image("private/base:1")),
    );
    let env = |config: &tempfile::TempDir| {
        vec![(
            "DOCKER_CONFIG".to_string(),
            config.path().to_str().unwrap().to_string(),
        )]
    };
    let build = |d: &Daemon, ctx: &Path, extra: &[&str], config: &tempfile::TempDir| {
        let env = env(config);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        build_env(d, ctx, extra, &env)
    };

    // No login: the realm refuses an anonymous token, the registry says 401.
    let no_login = tempfile::tempdir().unwrap();
    let err = build(&d, &ctx, &[], &no_login).error();
    assert!(
        err["message"].as_str().unwrap().contains("denied access"),
        "{err}"
    );
    assert!(
        err["hint"].as_str().unwrap().contains("docker login"),
        "{err}"
    );

    // With the login: pulled through a bearer token, then pushed with one.
    let granted = |t: &TokenServer| {
        t.requests()
            .iter()
            .filter(|r| r.contains("ok=True"))
            .count()
    };
    let granted_before = granted(&tokens);
    let login = docker_config(&reg.host, "builder", "t0ken-pw");
    let out = build(&d, &ctx, &["-t", &app, "--push"], &login);
    assert!(out.success, "{}\n{}", out.text(), d.log());
    assert!(
        out.logs().iter().any(|l| l.starts_with("pulled")),
        "{}",
        out.text()
    );
    let digest = out.manifest_digest();
    assert_eq!(reg.digest("team/app:1"), digest);
    assert!(
        granted(&tokens) > granted_before,
        "memobuild got its tokens from the realm: {:?}",
        tokens.requests()
    );
    let pushed = out
        .logs()
        .into_iter()
        .find(|l| l.starts_with("pushed"))
        .unwrap();
    // The token covers team/app only, so the registry refuses to mount the
    // base's layers from private/base: they are uploaded instead.
    assert!(pushed.contains("0 mounted"), "{pushed}");

    // A second host pulls the pushed image back with the same digest.
    let d2 = daemon_for(&reg);
    let child = context(dir.path(), "token-child", &format!("FROM {app}\n"));
    let out = build(&d2, &child, &[], &login);
    assert!(out.success, "{}\n{}", out.text(), d2.log());
    assert_eq!(stored_digest(&d2, &app), Some(digest));

    // A wrong password: the realm answers 401, the build names the cause.
    let wrong = docker_config(&reg.host, "builder", "wrong-pw");
    let err = build(&d, &ctx, &["--pull=always"], &wrong).error();
    assert!(
        err["message"].as_str().unwrap().contains("denied access"),
        "{err}"
    );
    assert!(
        err["hint"].as_str().unwrap().contains("were rejected"),
        "{err}"
    );
    for log in [d.log(), d2.log()] {
        assert!(!log.contains("t0ken-pw"), "credentials never reach the log");
    }

    // An OAuth login (identitytoken) is refused by the client with the way
    // out, before anything is sent to the realm.
    let before = tokens.requests().len();
    let oauth = docker_config_identity_token(&reg.host, &tokens.refresh_token);
    let out = build(&d, &ctx, &["--pull=always"], &oauth);
    assert!(!out.success);
    assert!(
        out.stderr.contains("identitytoken") && out.stderr.contains("docker login"),
        "{}",
        out.text()
    );
    assert_eq!(tokens.requests().len(), before, "{:?}", tokens.requests());
}
