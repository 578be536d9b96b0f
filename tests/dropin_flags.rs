//! More of `docker buildx build`'s flags, each checked by its effect:
//! `--annotation` (in the manifest the registry serves), `--allow`.

mod common;
use common::registry::Registry;
use common::{busybox_context, oci_archive, Daemon};
use serde_json::Value;

#[test]
fn annotations_are_in_the_manifest_written_and_pushed() {
    let reg = Registry::start();
    let d = Daemon::start_with(&["--insecure-registry", &reg.host]);
    let ctx = busybox_context("COPY f /f\n", &[("f", "x")]);
    let out_dir = tempfile::tempdir().unwrap();
    let archive = out_dir.path().join("a.tar");
    let plain = d.build_ok(ctx.path(), &[]).manifest_digest();
    let annotated = d
        .build_ok(
            ctx.path(),
            &[
                "--annotation",
                "org.opencontainers.image.title=app",
                "--annotation",
                "manifest:com.example.note=a=b",
                "-o",
                &format!("type=oci,dest={}", archive.display()),
                "-o",
                &format!("type=registry,name={}", reg.image("ann/app:1")),
            ],
        )
        .manifest_digest();
    assert_ne!(plain, annotated, "an annotation changes the manifest");
    let (index, blobs) = oci_archive(&archive);
    assert_eq!(index["manifests"][0]["digest"], annotated.as_str());
    let manifest: Value = serde_json::from_slice(&blobs[&annotated]).unwrap();
    assert_eq!(
        manifest["annotations"],
        serde_json::json!({
            "org.opencontainers.image.title": "app",
            "com.example.note": "a=b",
        })
    );
    // The registry serves the same manifest.
    assert_eq!(reg.digest("ann/app:1"), annotated);
    // Without annotations again: the first manifest, from the fast path.
    assert_eq!(d.build_ok(ctx.path(), &[]).manifest_digest(), plain);
    // Index annotations cannot apply to a single manifest: refused before the build.
    let o = d.ctl(&[
        "build",
        "--annotation",
        "index:a=b",
        ctx.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("index annotations are not supported"),
        "{stderr}"
    );
}

#[test]
fn allow_accepts_network_host_and_refuses_security_insecure() {
    let d = Daemon::start();
    let ctx = busybox_context("RUN --network=host cat /proc/net/dev > /nets\n", &[]);
    let out = d.build_ok(ctx.path(), &["--allow", "network.host"]);
    assert!(out.success);
    for (value, says) in [
        ("security.insecure", "never runs a step privileged"),
        (
            "network.host,security.insecure",
            "never runs a step privileged",
        ),
        ("device", "unknown entitlement"),
    ] {
        let o = d.ctl(&["build", "--allow", value, ctx.path().to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "--allow {value}");
        assert!(stderr.contains(says), "--allow {value}: {stderr}");
    }
}
