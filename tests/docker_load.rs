//! The image reaches Docker: `-o type=docker,dest=FILE` is a `docker save`
//! archive that Debian's Docker (20.10) loads, and `--load` / `-o type=docker`
//! put the image into a running Docker Engine; `docker run` then prints the
//! image's bytes. A private dockerd (tests/common/docker.rs) plays the engine.

mod common;
use common::docker::Dockerd;
use common::{bin_dir, write_files, Daemon};
use std::path::Path;
use std::process::Command;

const HELLO: &str = "hello from a memobuild image\n";

/// A context whose image can run: busybox as the entrypoint, and a data file.
fn runnable() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", dir.path().join("busybox"))
        .expect("/bin/busybox is missing: apt-get install busybox-static");
    write_files(
        dir.path(),
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY busybox /bin/busybox\nCOPY data/ /data/\nENTRYPOINT [\"/bin/busybox\"]\n",
            ),
            ("data/hello.txt", HELLO),
        ],
    );
    dir
}

/// memobuild-ctl against `d` with DOCKER_HOST set to `host`.
fn ctl_with_docker_host(d: &Daemon, host: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env("DOCKER_HOST", host)
        // No fallback to a containerd on this machine (tests/containerd_load.rs).
        .env("CONTAINERD_ADDRESS", "/nonexistent/containerd.sock")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

fn config_digest_of(d: &Daemon, name: &str) -> String {
    let images = d.ctl_json(&["images"]);
    images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in `images --json`: {images}"))["config_digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn archive_names(path: &Path) -> Vec<String> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

#[test]
fn docker_load_accepts_the_type_docker_archive_and_docker_run_prints_the_file() {
    let d = Daemon::start();
    let engine = Dockerd::start();
    let ctx = runnable();
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("app.tar");
    let oci = out.path().join("app-oci.tar");
    d.build_ok(
        ctx.path(),
        &[
            "-t",
            "mb-test/app:1",
            "-o",
            &format!("type=docker,dest={}", archive.display()),
            "-o",
            &format!("type=oci,dest={}", oci.display()),
        ],
    );
    let names = archive_names(&archive);
    for want in ["manifest.json", "repositories", "index.json", "oci-layout"] {
        assert!(
            names.contains(&want.to_string()),
            "{want} missing: {names:?}"
        );
    }
    let oci_names = archive_names(&oci);
    assert!(
        !oci_names.contains(&"manifest.json".to_string()),
        "type=oci stays plain OCI: {oci_names:?}"
    );
    let loaded = engine.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains("Loaded image: mb-test/app:1"), "{loaded}");
    let id = engine.docker_ok(&["image", "inspect", "--format", "{{.Id}}", "mb-test/app:1"]);
    assert_eq!(id.trim(), config_digest_of(&d, "mb-test/app:1"));
    let run = engine.docker_ok(&[
        "run",
        "--rm",
        "--network=none",
        "mb-test/app:1",
        "cat",
        "/data/hello.txt",
    ]);
    assert_eq!(run, HELLO);
}

#[test]
fn load_puts_the_image_into_the_engine_of_docker_host() {
    let d = Daemon::start();
    let engine = Dockerd::start();
    let ctx = runnable();
    let ctx_path = ctx.path().to_str().unwrap();
    let out = ctl_with_docker_host(
        &d,
        &engine.host(),
        &[
            "build",
            "--progress",
            "plain",
            "--load",
            "-t",
            "mb-test/loaded:2",
            ctx_path,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{stderr}\n--- dockerd ---\n{}",
        engine.log()
    );
    assert!(
        stderr.contains("Loaded image: mb-test/loaded:2"),
        "{stderr}"
    );
    let run = engine.docker_ok(&[
        "run",
        "--rm",
        "--network=none",
        "mb-test/loaded:2",
        "cat",
        "/data/hello.txt",
    ]);
    assert_eq!(run, HELLO);
    // -o type=docker,name=...: the name in Docker is the output's, not -t's.
    let out = ctl_with_docker_host(
        &d,
        &engine.host(),
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "mb-test/loaded:2",
            "-o",
            "type=docker,name=mb-test/renamed:3",
            ctx_path,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = engine.docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "mb-test/renamed:3",
    ]);
    assert_eq!(id.trim(), config_digest_of(&d, "mb-test/loaded:2"));
}

#[test]
fn load_without_an_engine_fails_before_the_build_and_names_the_choices() {
    let d = Daemon::start();
    let ctx = runnable();
    let nowhere = tempfile::tempdir().unwrap();
    let host = format!("unix://{}/docker.sock", nowhere.path().display());
    let out = ctl_with_docker_host(
        &d,
        &host,
        &[
            "build",
            "--progress",
            "plain",
            "--load",
            "-t",
            "x:1",
            ctx.path().to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no Docker Engine answers at"), "{stderr}");
    assert!(stderr.contains(&host), "{stderr}");
    assert!(stderr.contains("-o type=docker,dest=FILE.tar"), "{stderr}");
    assert!(
        !stderr.contains("build "),
        "the build must not start: {stderr}"
    );
    // --progress json: the refusal is a `failed` event, and no `planned` one.
    let out = ctl_with_docker_host(
        &d,
        &host,
        &[
            "build",
            "--progress",
            "json",
            "--load",
            ctx.path().to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "failed");
    assert!(events[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no Docker Engine answers at"));
    assert_eq!(d.ctl_json(&["images"]), serde_json::json!([]));
}
