//! `--cache-to type=inline` and `--cache-from IMAGE`, against a real
//! Distribution registry (Debian's docker-registry) and two daemons with
//! their own data dirs, as two build hosts: the pushed image's config carries
//! the step records of its own steps (`dev.memobuild.cache.v0`, mode=min), and
//! the second host takes those steps from the image instead of running them,
//! producing the same image.

mod common;
use common::registry::{daemon_for, registry_with_base, Registry};
use common::{write_files, Daemon};
use std::path::Path;
use std::process::Command;

const KEY: &str = "dev.memobuild.cache.v0";

fn runs(out: &common::BuildOutcome) -> Vec<String> {
    out.executed()
        .into_iter()
        .filter(|i| i.starts_with("RUN"))
        .collect()
}

/// `skopeo inspect --raw` (`--config` for the config) of an image in `reg`.
fn inspect(reg: &Registry, repo_tag: &str, config: bool) -> serde_json::Value {
    let mut cmd = Command::new("skopeo");
    cmd.args(["inspect", "--tls-verify=false", "--raw"]);
    if config {
        cmd.arg("--config");
    }
    let out = cmd
        .arg(format!("docker://{}", reg.image(repo_tag)))
        .output()
        .expect("skopeo (Debian package skopeo)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// The image config inside an OCI archive (`-o type=oci,dest=FILE`).
fn config_in_archive(archive: &Path) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    let read = |digest: &str| -> serde_json::Value {
        let path = dir
            .path()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
    let manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    read(manifest["config"]["digest"].as_str().unwrap())
}

#[test]
fn an_image_pushed_with_an_inline_cache_gives_another_host_its_steps() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let reg = registry_with_base(&maker, dir.path());
    let base = reg.image("base:1");
    // A builder stage (not in the image: mode=min leaves its RUN out) and
    // the final stage's RUN and COPY (in it).
    let ctx = dir.path().join("app");
    write_files(
        &ctx,
        &[
            (
                "Dockerfile",
                &format!(
                    "FROM {base} AS build\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo built > /out\"]\n\
                     FROM {base}\nCOPY --from=build /out /out\n\
                     RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo final > /final\"]\nCOPY file.txt /\n"
                ),
            ),
            ("file.txt", "app"),
        ],
    );
    let app = reg.image("team/app:1");

    let first = daemon_for(&reg);
    let out = first.build_ok(&ctx, &["-t", &app, "--push", "--cache-to", "type=inline"]);
    assert_eq!(runs(&out).len(), 2, "{:?}", out.executed());
    let digest = out.manifest_digest();
    assert_eq!(reg.digest("team/app:1"), digest, "pushed as built");

    // The pushed config carries the records of the image's own steps, each
    // layer one of the image's layers; the builder stage's RUN is not there.
    let manifest = inspect(&reg, "team/app:1", false);
    let config = inspect(&reg, "team/app:1", true);
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let cache = &config[KEY];
    assert_eq!(cache["version"], 1, "{config}");
    let steps = cache["steps"].as_object().expect("steps");
    assert_eq!(
        steps.len(),
        3,
        "COPY --from, RUN, COPY of the final stage: {cache}"
    );
    for (key, layer) in steps {
        let layer_digest = layer["digest"].as_str().expect("a layer");
        assert!(layers.contains(&layer_digest), "{key}: {layer}");
    }
    // The rest of the config is the image's as without the cache.
    let plain = first.build_ok(&ctx, &[]);
    assert!(plain.executed().is_empty(), "{:?}", plain.executed());
    let plain_digest = plain.manifest_digest();
    assert_ne!(plain_digest, digest, "the inline cache is in the config");

    // Another host, a fresh data dir, the project elsewhere: the image's
    // steps come from it; only the builder stage's RUN runs again.
    let second = daemon_for(&reg);
    let copy = dir.path().join("elsewhere");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["Dockerfile", "file.txt"] {
        std::fs::copy(ctx.join(f), copy.join(f)).unwrap();
    }
    let app2 = reg.image("team/app:2");
    let out = second.build_ok(
        &copy,
        &[
            "-t",
            &app2,
            "--push",
            "--cache-from",
            &app,
            "--cache-to",
            "type=inline",
        ],
    );
    let ran = runs(&out);
    assert_eq!(ran.len(), 1, "only the builder's RUN: {ran:?}");
    assert!(ran[0].contains("echo built"), "{ran:?}");
    assert!(
        out.logs()
            .iter()
            .any(|l| l.contains("came from the registry cache")),
        "{}",
        out.text()
    );
    assert_eq!(out.manifest_digest(), digest, "the identical image");
    assert_eq!(reg.digest("team/app:2"), digest);

    // BuildKit's build-arg spelling of type=inline: the same image.
    let out = second.build_ok(&copy, &["--build-arg", "BUILDKIT_INLINE_CACHE=1"]);
    assert!(runs(&out).is_empty(), "{:?}", out.executed());
    assert_eq!(out.manifest_digest(), digest);

    // buildx's long form, and without type=inline: the image as without a cache.
    let out = second.build_ok(
        &copy,
        &["--cache-from", &format!("type=registry,ref={app}")],
    );
    assert!(runs(&out).is_empty(), "{:?}", out.executed());
    assert_eq!(out.manifest_digest(), plain_digest);

    // Not pushed: the cache is in the image all the same, as BuildKit puts
    // it in every image it exports (here an OCI archive).
    let archive = dir.path().join("app.tar");
    second.build_ok(
        &copy,
        &[
            "--cache-to",
            "type=inline",
            "-o",
            &format!("type=oci,dest={}", archive.display()),
        ],
    );
    assert_eq!(config_in_archive(&archive)[KEY], *cache);

    // An image without an inline cache is a warning, and the build goes on.
    let third = daemon_for(&reg);
    let out = third.build_ok(&copy, &["--cache-from", &base]);
    assert!(
        out.logs()
            .iter()
            .any(|l| l.starts_with("warning:") && l.contains("nor an image with an inline cache")),
        "{}",
        out.text()
    );
    // Built here: the same steps, at this host's times (a different image, as
    // with BuildKit without SOURCE_DATE_EPOCH).
    assert_eq!(runs(&out).len(), 2);
}

#[test]
fn inline_cache_flags_are_checked_before_the_build() {
    let ctx = common::busybox_context("", &[]);
    let d = Daemon::start();
    for (flags, says) in [
        (
            vec!["--cache-to", "type=inline,mode=max"],
            "mode=min, as BuildKit",
        ),
        (
            vec!["--cache-from", "type=inline"],
            "there is no inline cache importer",
        ),
    ] {
        let mut args = vec!["build"];
        args.extend(flags.iter().copied());
        args.push(ctx.path().to_str().unwrap());
        let out = d.ctl(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(says),
            "{flags:?}: {stderr}"
        );
        assert!(stderr.contains("hint:"), "{stderr}");
    }
}

/// The config's extra key is no trouble for Docker: `docker load` takes the
/// image (its ID is still the config digest, key and all) and runs it.
#[test]
fn an_image_with_an_inline_cache_loads_into_docker_and_runs() {
    let d = Daemon::start();
    let engine = common::docker::Dockerd::start();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", ctx.path().join("busybox"))
        .expect("/bin/busybox is missing: apt-get install busybox-static");
    write_files(
        ctx.path(),
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY busybox /bin/busybox\nCOPY hello.txt /\nENTRYPOINT [\"/bin/busybox\"]\n",
            ),
            ("hello.txt", "inline\n"),
        ],
    );
    let archive = ctx.path().join("app.tar");
    let out = d.build_ok(
        ctx.path(),
        &[
            "-t",
            "mb-inline/app:1",
            "--cache-to",
            "type=inline",
            "-o",
            &format!("type=docker,dest={}", archive.display()),
        ],
    );
    let images = d.ctl_json(&["images"]);
    let config = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["manifest_digest"] == out.manifest_digest().as_str())
        .expect("the image")["config_digest"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        config_in_archive(&archive)[KEY]["steps"].is_object(),
        "the archive's config carries the cache"
    );
    let loaded = engine.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains("Loaded image: mb-inline/app:1"), "{loaded}");
    let id = engine.docker_ok(&["image", "inspect", "--format", "{{.Id}}", "mb-inline/app:1"]);
    assert_eq!(id.trim(), config);
    let run = engine.docker_ok(&[
        "run",
        "--rm",
        "--network=none",
        "mb-inline/app:1",
        "cat",
        "/hello.txt",
    ]);
    assert_eq!(run, "inline\n");
}
