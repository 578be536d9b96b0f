//! Image outputs: every digest in the OCI archive verifies, independent tools
//! accept the archive and the layout, and builds are reproducible.

mod common;
use common::{write_files, Daemon};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::Command;

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_files(
        dir.path(),
        &[
            ("Dockerfile", "FROM scratch\nCOPY app/ /app/\nWORKDIR /app\nENV GREETING=hello\nCMD [\"/app/run\"]\n"),
            ("app/run", "#!/bin/sh\necho hi\n"),
            ("app/data/a.txt", "a"),
        ],
    );
    dir
}

fn archive_entries(path: &Path) -> HashMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = HashMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut buf = Vec::new();
        e.read_to_end(&mut buf).unwrap();
        out.insert(name, buf);
    }
    out
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[test]
fn every_digest_in_the_oci_archive_verifies() {
    let d = Daemon::start();
    let p = project();
    let out_dir = tempfile::tempdir().unwrap();
    let tar = out_dir.path().join("image.tar");
    let dest = format!("type=oci,dest={}", tar.display());
    let build = d.build_ok(p.path(), &["-t", "demo:1", "-o", &dest]);
    let entries = archive_entries(&tar);
    assert!(entries.contains_key("oci-layout"));
    let index: serde_json::Value = serde_json::from_slice(&entries["index.json"]).unwrap();
    let manifest_desc = &index["manifests"][0];
    let manifest_digest = manifest_desc["digest"].as_str().unwrap();
    assert_eq!(manifest_digest, build.manifest_digest());
    let blob = |digest: &str| {
        let bytes = entries
            .get(&format!("blobs/{}", digest.replacen(':', "/", 1)))
            .unwrap_or_else(|| panic!("blob {digest} missing from archive"))
            .clone();
        assert_eq!(
            sha(&bytes),
            digest,
            "blob content does not match its digest"
        );
        bytes
    };
    let manifest: serde_json::Value = serde_json::from_slice(&blob(manifest_digest)).unwrap();
    let config_bytes = blob(manifest["config"]["digest"].as_str().unwrap());
    let config: serde_json::Value = serde_json::from_slice(&config_bytes).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    assert_eq!(layers.len(), diff_ids.len());
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let bytes = blob(layer["digest"].as_str().unwrap());
        assert_eq!(layer["size"].as_u64().unwrap(), bytes.len() as u64);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(
            sha(&raw),
            diff_id.as_str().unwrap(),
            "diff_id must be the sha256 of the uncompressed layer"
        );
    }
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["/app/run"]));
    assert_eq!(config["config"]["WorkingDir"], "/app");
}

#[test]
fn skopeo_and_umoci_accept_the_outputs() {
    let d = Daemon::start();
    let p = project();
    let out_dir = tempfile::tempdir().unwrap();
    let tar = out_dir.path().join("image.tar");
    d.build_ok(
        p.path(),
        &[
            "-t",
            "demo:1",
            "-o",
            &format!("type=oci,dest={}", tar.display()),
        ],
    );
    let inspect = Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", tar.display()))
        .output()
        .expect("skopeo (apt-get install skopeo)");
    assert!(
        inspect.status.success(),
        "skopeo rejected the archive: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    // umoci unpacks the layout and checks every blob on the way.
    let layout = out_dir.path().join("layout");
    d.build_ok(
        p.path(),
        &["-o", &format!("type=oci-layout,dest={}", layout.display())],
    );
    let tag = Command::new("umoci")
        .arg("ls")
        .arg("--layout")
        .arg(&layout)
        .output()
        .expect("umoci (apt-get install umoci)");
    assert!(
        tag.status.success(),
        "umoci ls failed: {}",
        String::from_utf8_lossy(&tag.stderr)
    );
    let bundle = out_dir.path().join("bundle");
    let digest = std::fs::read_to_string(layout.join("index.json")).unwrap();
    let index: serde_json::Value = serde_json::from_str(&digest).unwrap();
    // umoci needs a tag; give the manifest one.
    let mut index = index;
    index["manifests"][0]["annotations"] =
        serde_json::json!({"org.opencontainers.image.ref.name": "t"});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let unpack = Command::new("umoci")
        .args(["raw", "unpack", "--rootless", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        unpack.status.success(),
        "umoci unpack failed: {}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(bundle.join("app/data/a.txt")).unwrap(),
        "a"
    );
}

#[test]
fn same_inputs_same_digest_across_daemons_and_source_date_epoch_is_honoured() {
    let p = project();
    let d1 = Daemon::start();
    let d2 = Daemon::start();
    let a = d1.build_ok(p.path(), &[]).manifest_digest();
    let b = d2.build_ok(p.path(), &[]).manifest_digest();
    assert_eq!(
        a, b,
        "two daemons with empty stores must produce the same image"
    );
    let out = std::process::Command::new(common::bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d1.socket)
        .args(["build", "--progress", "json", "--no-cache"])
        .arg(p.path())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let digest = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "finished")
        .map(|e| e["config_digest"].as_str().unwrap().to_string())
        .unwrap();
    let config = std::fs::read(
        d1.data
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(config["created"], "2023-11-14T22:13:20Z");
}
