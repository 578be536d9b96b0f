//! `--build-context NAME=oci-layout://DIR[:TAG][@sha256:DIGEST]`, as buildx
//! takes it: an image in an OCI layout directory (here written by another
//! daemon's `-o type=oci-layout`, two tags merged into one layout) serves
//! `FROM NAME` and `COPY --from=NAME` of a daemon that never saw it; the
//! image is picked by tag or digest, and a missing tag or a corrupt blob
//! fails the build before it starts.

mod common;
use common::{write_files, Daemon};
use std::path::Path;

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A layout holding `x:one` and `x:two` (each `/marker` = its tag), built
/// by `maker`; returns its directory and the two manifest digests.
fn two_tag_layout(maker: &Daemon, dir: &Path) -> (std::path::PathBuf, Vec<String>) {
    let mut layouts = Vec::new();
    for marker in ["one", "two"] {
        let ctx = dir.join(format!("ctx-{marker}"));
        write_files(
            &ctx,
            &[
                ("Dockerfile", "FROM scratch\nCOPY marker /marker\n"),
                ("marker", marker),
            ],
        );
        let layout = dir.join(format!("layout-{marker}"));
        maker.build_ok(
            &ctx,
            &[
                "-t",
                &format!("x:{marker}"),
                "-o",
                &format!("type=oci-layout,dest={}", layout.display()),
            ],
        );
        layouts.push(layout);
    }
    // Merge the second into the first: its blobs and its index.json entry.
    let (first, second) = (&layouts[0], &layouts[1]);
    for entry in std::fs::read_dir(second.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let to = first.join("blobs/sha256").join(entry.file_name());
        if !to.exists() {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
    let mut index = read_json(&first.join("index.json"));
    let other = read_json(&second.join("index.json"));
    let entry = other["manifests"][0].clone();
    index["manifests"].as_array_mut().unwrap().push(entry);
    std::fs::write(
        first.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let digests = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    (first.clone(), digests)
}

#[test]
fn an_oci_layout_serves_from_and_copy_from_by_tag_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let (layout, digests) = two_tag_layout(&maker, dir.path());
    let l = layout.display().to_string();
    let tags: Vec<String> = read_json(&layout.join("index.json"))["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(tags, ["one", "two"]);

    // Another daemon, another store: every blob comes from the layout.
    let d = Daemon::start();
    let app = dir.path().join("app");
    write_files(
        &app,
        &[(
            "Dockerfile",
            "FROM base\nCOPY --from=tools /marker /tools-marker\n",
        )],
    );
    let build = |contexts: &[String], dest: &str| -> std::process::Output {
        let mut args = vec![
            "build".to_string(),
            "--progress".into(),
            "plain".into(),
            "-o".into(),
            format!("type=local,dest={}", dir.path().join(dest).display()),
        ];
        for c in contexts {
            args.push("--build-context".into());
            args.push(c.clone());
        }
        args.push(app.display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        d.ctl(&args)
    };
    let ok = |o: &std::process::Output| {
        assert!(
            o.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&o.stderr),
            d.log()
        );
    };
    let files = |dest: &str| {
        let at = dir.path().join(dest);
        (
            std::fs::read_to_string(at.join("marker")).unwrap(),
            std::fs::read_to_string(at.join("tools-marker")).unwrap(),
        )
    };
    // By tag.
    let o = build(
        &[
            format!("base=oci-layout://{l}:one"),
            format!("tools=oci-layout://{l}:two"),
        ],
        "by-tag",
    );
    ok(&o);
    assert_eq!(files("by-tag"), ("one".into(), "two".into()));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains(&format!("build context tools: oci-layout://{l}:two")),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // By digest (the tag is then not looked at), swapped.
    let o = build(
        &[
            format!("base=oci-layout://{l}@{}", digests[1]),
            format!("tools=oci-layout://{l}:two@{}", digests[0]),
        ],
        "by-digest",
    );
    ok(&o);
    assert_eq!(files("by-digest"), ("two".into(), "one".into()));
    // The images were named for the build only.
    let images = d.ctl_json(&["images"]);
    assert!(
        images.as_array().unwrap().iter().all(|i| !i["name"]
            .as_str()
            .unwrap()
            .starts_with("memobuild-build-context")),
        "{images}"
    );

    // No such tag, and no `latest` among several: said before the build, with the tags.
    for value in [
        format!("oci-layout://{l}:nope"),
        format!("oci-layout://{l}"),
    ] {
        let o = build(
            &[format!("base={value}"), format!("tools={value}")],
            "never",
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(
            stderr.contains("no image tagged") && stderr.contains("its tags: one, two"),
            "{stderr}"
        );
        assert!(!dir.path().join("never").exists());
    }

    // A layer whose bytes changed in the layout is refused.
    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir_all(corrupt.join("blobs/sha256")).unwrap();
    let index = read_json(&layout.join("index.json"));
    let manifest = read_json(&layout.join("blobs").join(digests[0].replacen(':', "/", 1)));
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            corrupt.join("blobs/sha256").join(entry.file_name()),
        )
        .unwrap();
    }
    std::fs::write(
        corrupt.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    std::fs::write(
        corrupt.join("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}",
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let layer_path = corrupt.join("blobs").join(layer.replacen(':', "/", 1));
    let mut bytes = std::fs::read(&layer_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&layer_path, bytes).unwrap();
    // A third daemon, so the layer is not already in its store.
    let fresh = Daemon::start();
    let o = fresh.ctl(&[
        "build",
        "--build-context",
        &format!("base=oci-layout://{}:one", corrupt.display()),
        "--build-context",
        &format!("tools=oci-layout://{}:one", corrupt.display()),
        app.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("--build-context base=oci-layout://"),
        "{stderr}"
    );
}
