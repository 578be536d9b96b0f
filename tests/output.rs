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
        flate2::read::MultiGzDecoder::new(&bytes[..])
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

/// Every name is recorded, once each, as containerd's exporter behind
/// BuildKit's outputs writes index.json: the output's `name=`s, else the
/// `-t`s; without either, one record without a name.
#[test]
fn the_oci_index_names_the_image_once_per_name() {
    let d = Daemon::start();
    let p = project();
    let out_dir = tempfile::tempdir().unwrap();
    let names_of = |tar: &Path| {
        let entries = archive_entries(tar);
        let index: serde_json::Value = serde_json::from_slice(&entries["index.json"]).unwrap();
        let records = index["manifests"].as_array().unwrap().clone();
        let digests: std::collections::BTreeSet<String> = records
            .iter()
            .map(|r| r["digest"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(digests.len(), 1, "every record is the one manifest");
        records
            .iter()
            .map(|r| {
                let a = &r["annotations"];
                (
                    a["io.containerd.image.name"].as_str().map(String::from),
                    a["org.opencontainers.image.ref.name"]
                        .as_str()
                        .map(String::from),
                )
            })
            .collect::<Vec<_>>()
    };
    let owned = |name: &str, tag: &str| (Some(name.to_string()), Some(tag.to_string()));

    let named = out_dir.path().join("named.tar");
    let dest = format!("type=oci,dest={},name=foo/bar:2,name=baz", named.display());
    d.build_ok(p.path(), &["-t", "ignored:1", "-o", &dest]);
    assert_eq!(
        names_of(&named),
        vec![owned("foo/bar:2", "2"), owned("baz:latest", "latest")]
    );

    let tagged = out_dir.path().join("tagged.tar");
    let dest = format!("type=oci,dest={}", tagged.display());
    d.build_ok(p.path(), &["-t", "p1", "-t", "p1:x", "-o", &dest]);
    assert_eq!(
        names_of(&tagged),
        vec![owned("p1:latest", "latest"), owned("p1:x", "x")]
    );

    let bare = out_dir.path().join("bare.tar");
    let dest = format!("type=oci,dest={}", bare.display());
    d.build_ok(p.path(), &["-o", &dest]);
    assert_eq!(names_of(&bare), vec![(None, None)]);
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
    // Pinned: without SOURCE_DATE_EPOCH each daemon's steps get the time
    // they ran (as in BuildKit), so the two agree only within one second.
    let pinned = ["--build-arg", "SOURCE_DATE_EPOCH=1600000000"];
    let a = d1.build_ok(p.path(), &pinned).manifest_digest();
    let b = d2.build_ok(p.path(), &pinned).manifest_digest();
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

// ---- The final filesystem (-o type=local|tar, -o DIR, -o -), several
// outputs at once, stdout, --iidfile/--metadata-file/-q, flag errors. ----

/// An image with owners, modes, a symlink, and a file a later RUN removed
/// (a whiteout) and one it made.
fn filesystem_project() -> tempfile::TempDir {
    common::busybox_context(
        "COPY --chown=1234:5678 --chmod=0741 data/ /data/\n\
         RUN rm /data/gone.txt && mkdir /made && echo made > /made/by-run && ln -s ../data/keep.txt /made/link\n",
        &[("data/keep.txt", "kept bytes\n"), ("data/gone.txt", "removed later\n")],
    )
}

fn ctl_plain(d: &Daemon, args: &[&str]) -> std::process::Output {
    let mut all = vec!["build", "--progress", "plain"];
    all.extend_from_slice(args);
    d.ctl(&all)
}

/// path -> (mode & 0o7777, uid, gid, link target or file bytes) of a filesystem tar.
fn tar_tree(bytes: &[u8]) -> HashMap<String, (u32, u64, u64, Vec<u8>)> {
    let mut archive = tar::Archive::new(bytes);
    let mut out = HashMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let h = e.header().clone();
        let mut data = Vec::new();
        if let Some(l) = e.link_name().unwrap() {
            data = l.display().to_string().into_bytes();
        } else {
            e.read_to_end(&mut data).unwrap();
        }
        let name = name.trim_end_matches('/').to_string();
        out.insert(
            name,
            (
                h.mode().unwrap() & 0o7777,
                h.uid().unwrap(),
                h.gid().unwrap(),
                data,
            ),
        );
    }
    out
}

#[test]
fn local_output_writes_the_final_filesystem_with_bytes_modes_owners_and_links() {
    use std::os::unix::fs::MetadataExt;
    let d = Daemon::start();
    let p = filesystem_project();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("rootfs");
    let plain_dir = out.path().join("plain");
    d.build_ok(
        p.path(),
        &[
            "-o",
            &format!("type=local,dest={}", dir.display()),
            "-o",
            plain_dir.to_str().unwrap(),
        ],
    );
    for root in [&dir, &plain_dir] {
        let keep = root.join("data/keep.txt");
        assert_eq!(std::fs::read_to_string(&keep).unwrap(), "kept bytes\n");
        let meta = std::fs::symlink_metadata(&keep).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o741);
        // The tests run as root, so owners are kept.
        assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
        assert!(
            !root.join("data/gone.txt").exists(),
            "a file the RUN removed must not be in the output"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("made/by-run")).unwrap(),
            "made\n"
        );
        assert_eq!(
            std::fs::read_link(root.join("made/link")).unwrap(),
            Path::new("../data/keep.txt")
        );
        assert_eq!(
            std::fs::read_link(root.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        let busybox = std::fs::read(root.join("bin/busybox")).unwrap();
        assert_eq!(busybox, std::fs::read("/bin/busybox").unwrap());
    }
}

#[test]
fn tar_output_to_a_file_and_to_stdout() {
    let d = Daemon::start();
    let p = filesystem_project();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("fs.tar");
    let o = ctl_plain(
        &d,
        &[
            "-o",
            &format!("type=tar,dest={}", file.display()),
            p.path().to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tree = tar_tree(&std::fs::read(&file).unwrap());
    assert_eq!(
        tree["data/keep.txt"],
        (0o741, 1234, 5678, b"kept bytes\n".to_vec())
    );
    assert!(!tree.contains_key("data/gone.txt"), "{:?}", tree.keys());
    assert_eq!(tree["made/link"].3, b"../data/keep.txt");
    assert_eq!(tree["made/by-run"].3, b"made\n");
    // dest=- and `-o -`: the same tar on stdout, and nothing else there.
    for spec in ["type=tar,dest=-", "-"] {
        let o = d.ctl_in(
            &["build", "--progress", "plain", "-o", spec, "."],
            Some(p.path()),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout, std::fs::read(&file).unwrap(), "-o {spec}");
        assert!(
            !p.path().join("-").exists(),
            "dest=- must not create a file named -"
        );
    }
    // An OCI archive on stdout is the same archive as one written to a file.
    let oci = out.path().join("image.tar");
    let o = ctl_plain(
        &d,
        &[
            "-o",
            &format!("type=oci,dest={}", oci.display()),
            p.path().to_str().unwrap(),
        ],
    );
    assert!(o.status.success());
    let o = ctl_plain(&d, &["-o", "type=oci,dest=-", p.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, std::fs::read(&oci).unwrap());
}

#[test]
fn a_missing_output_directory_fails_before_the_build() {
    let d = Daemon::start();
    let p = project();
    let out = tempfile::tempdir().unwrap();
    let missing = out.path().join("no/such/dir/image.tar");
    let o = ctl_plain(
        &d,
        &[
            "-o",
            &format!("type=oci,dest={}", missing.display()),
            p.path().to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(
        stderr.contains(&out.path().join("no/such/dir").display().to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains("build "), "no build may start: {stderr}");
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = d.ctl(&[
        "build",
        "--iidfile",
        &missing.display().to_string(),
        p.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--iidfile"));
}

/// A build refused before it starts (by the client's checks, the daemon's,
/// or no daemon at all) is still one `failed` event on stdout with
/// `--progress json`, whose kind says what went wrong, and the exit status
/// follows the kind (docs/CLI.md, "Exit status").
#[test]
fn a_build_refused_before_it_starts_is_a_failed_event_with_its_kind() {
    let d = Daemon::start();
    let p = project();
    let out = tempfile::tempdir().unwrap();
    let missing_dir = out.path().join("nope").join("iid");
    let missing_dir = missing_dir.to_str().unwrap();
    for (args, kind, status) in [
        (&["-t", "Bad"][..], "invalid_input", 1),
        (&["--iidfile", missing_dir], "invalid_input", 1),
        (&["-o", "type=oci,dest=-"], "invalid_input", 1),
        (&["-f", "no-such-Dockerfile"], "not_found", 1),
    ] {
        let o = d.build(p.path(), args);
        let last = o
            .events
            .last()
            .unwrap_or_else(|| panic!("{args:?}: no event:\n{}", o.text()));
        assert_eq!(last["event"], "failed", "{args:?}: {}", o.text());
        assert_eq!(last["error"]["kind"], kind, "{args:?}: {}", o.text());
        let code = d
            .ctl_command()
            .args(["build", "--progress", "json"])
            .args(args)
            .arg(p.path())
            .output()
            .unwrap()
            .status
            .code();
        assert_eq!(code, Some(status), "{args:?}");
    }
    // No daemon at the socket (and no auto-start): `unavailable`, status 69.
    let o = Command::new(common::bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(out.path().join("no-daemon.sock"))
        .env("MEMOBUILD_NO_AUTOSTART", "1")
        .args(["build", "--progress", "json"])
        .arg(p.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(69));
    let outcome = common::BuildOutcome::from_output(o);
    assert_eq!(outcome.error()["kind"], "unavailable", "{}", outcome.text());
    // The person watching reads it on stderr as well.
    assert!(
        outcome.stderr.starts_with("error: cannot reach memobuildd"),
        "{}",
        outcome.text()
    );
}

#[test]
fn quiet_iidfile_and_metadata_file_hold_the_image_digests() {
    let d = Daemon::start();
    let p = project();
    let out = tempfile::tempdir().unwrap();
    let iid = out.path().join("iid");
    let meta = out.path().join("meta.json");
    let o = d.ctl(&[
        "build",
        "-q",
        "-t",
        "demo:q",
        "-t",
        "demo:r",
        "--iidfile",
        iid.to_str().unwrap(),
        "--metadata-file",
        meta.to_str().unwrap(),
        p.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let images = d.ctl_json(&["images"]);
    let image = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "demo:q")
        .unwrap()
        .clone();
    let config = image["config_digest"].as_str().unwrap();
    let manifest = image["manifest_digest"].as_str().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), format!("{config}\n"));
    assert!(
        o.stderr.is_empty(),
        "-q prints no progress: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read_to_string(&iid).unwrap(), config);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    assert_eq!(m["containerimage.digest"], manifest);
    assert_eq!(m["containerimage.config.digest"], config);
    assert_eq!(m["containerimage.descriptor"]["digest"], manifest);
    assert_eq!(m["image.name"], "demo:q,demo:r");
}

#[test]
fn progress_modes_and_unsupported_flags_say_what_they_do() {
    let d = Daemon::start();
    let p = project();
    let ctx = p.path().to_str().unwrap();
    // BUILDKIT_PROGRESS=rawjson: the JSON events, on stderr.
    let o = Command::new(common::bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["build", ctx])
        .env("BUILDKIT_PROGRESS", "rawjson")
        .output()
        .unwrap();
    assert!(o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let finished = events
        .iter()
        .find(|e| e["event"] == "finished")
        .expect(&stderr);
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        finished["manifest_digest"].as_str().unwrap()
    );
    // --progress=quiet: only the digest.
    let o = d.ctl(&["build", "--progress=quiet", ctx]);
    assert!(o.status.success());
    assert!(
        o.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("sha256:"));
    // auto without a terminal (a pipe here) is plain: a line per step, no
    // cursor movement (tests/progress_tty.rs covers the terminal).
    let o = d.ctl(&["build", "--progress=auto", ctx]);
    assert!(o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains(" CACHED") && !stderr.contains('\x1b'),
        "{stderr}"
    );
    // A docker flag memobuild does not take is named, without clap's "-- --x" tip.
    for flag in [
        &["--squash"][..],
        &["--isolation=default"],
        &["--security-opt", "seccomp=unconfined"],
    ] {
        let mut args = vec!["build"];
        args.extend_from_slice(flag);
        args.push(ctx);
        let o = d.ctl(&args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        let name = flag[0].split('=').next().unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(
            stderr.contains(&format!(
                "{name} is a `docker build` flag that memobuild-ctl does not support yet"
            )),
            "{stderr}"
        );
        assert!(!stderr.contains("-- --"), "{stderr}");
    }
    let o = d.ctl(&["build", "--frobnicate", ctx]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown flag --frobnicate"));
}

// ---- How blobs leave the daemon (issue 10 item 5): as its read-only files
// over SCM_RIGHTS, copied by the client; the read_blob chunks stay the
// fallback and give the same bytes. ----

/// `memobuild_export_blobs_total{via}` from the daemon's metrics.
fn exported_blobs(d: &Daemon, via: &str) -> u64 {
    let out = d.ctl(&["metrics"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let want = format!("memobuild_export_blobs_total{{via=\"{via}\"}} ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(&want)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {want} in the metrics"))
}

/// A project whose layer spans several 4 MiB read_blob chunks.
fn big_project(rng: &mut common::Rng) -> (tempfile::TempDir, Vec<u8>) {
    let dir = project();
    let big = rng.bytes(9 * 1024 * 1024 + 17);
    std::fs::write(dir.path().join("app/big.bin"), &big).unwrap();
    (dir, big)
}

/// Every `blobs/sha256/HEX` of a layout hashes to HEX; returns them by digest.
fn layout_blobs(layout: &Path) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            sha(&bytes),
            digest,
            "{} does not hash to its name",
            entry.path().display()
        );
        out.insert(digest, bytes);
    }
    out
}

#[test]
fn outputs_from_handed_over_files_are_the_bytes_the_chunked_reads_give() {
    let mut rng = common::Rng::from_time();
    let d = Daemon::start();
    let (p, big) = big_project(&mut rng);
    let out = tempfile::tempdir().unwrap();
    let path = |name: &str| out.path().join(name).display().to_string();
    let fd_outputs = [
        format!("type=oci,dest={}", path("fd.tar")),
        format!("type=docker,dest={}", path("fd-docker.tar")),
        format!("type=oci-layout,dest={}", path("layout")),
        format!("type=tar,dest={}", path("fs.tar")),
    ];
    let mut args = vec!["-t", "demo:1"];
    for o in &fd_outputs {
        args.extend(["-o", o.as_str()]);
    }
    let digest = d.build_ok(p.path(), &args).manifest_digest();
    let by_fd = exported_blobs(&d, "fd");
    assert!(
        by_fd >= 3,
        "manifest, config and layers go by descriptor: {by_fd}"
    );
    assert_eq!(
        exported_blobs(&d, "rpc"),
        0,
        "no chunked reads when descriptors work"
    );

    // The same outputs through read_blob chunks (what older daemons serve).
    let chunked = Command::new(common::bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["build", "--progress", "plain", "-t", "demo:1"])
        .args(["-o", &format!("type=oci,dest={}", path("rpc.tar"))])
        .args([
            "-o",
            &format!("type=docker,dest={}", path("rpc-docker.tar")),
        ])
        .arg(p.path())
        .env("MEMOBUILD_BLOB_FDS", "0")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    assert!(
        chunked.status.success(),
        "{}",
        String::from_utf8_lossy(&chunked.stderr)
    );
    assert!(exported_blobs(&d, "rpc") >= 3);
    assert_eq!(
        exported_blobs(&d, "fd"),
        by_fd,
        "MEMOBUILD_BLOB_FDS=0 takes no descriptors"
    );
    for (a, b) in [("fd.tar", "rpc.tar"), ("fd-docker.tar", "rpc-docker.tar")] {
        assert!(
            std::fs::read(out.path().join(a)).unwrap()
                == std::fs::read(out.path().join(b)).unwrap(),
            "{a} and {b} differ"
        );
    }

    // The archive's blobs hash to their names (checked by oci_archive's reader
    // below too), the layout holds the same blobs, and the file is whole.
    let (index, archive_blobs) = common::oci_archive(&out.path().join("fd.tar"));
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    for (name, bytes) in &archive_blobs {
        assert_eq!(&sha(bytes), name, "archive blob {name}");
    }
    assert_eq!(layout_blobs(&out.path().join("layout")), archive_blobs);
    let layout_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("layout/index.json")).unwrap())
            .unwrap();
    assert_eq!(layout_index["manifests"][0]["digest"], digest.as_str());
    assert_eq!(
        common::oci_file(&out.path().join("fd.tar"), "/app/big.bin").as_deref(),
        Some(&big[..])
    );
    let fs = tar_tree(&std::fs::read(out.path().join("fs.tar")).unwrap());
    assert_eq!(
        fs["app/big.bin"].3, big,
        "type=tar from the handed-over layer"
    );
}

#[test]
fn a_user_exports_blobs_they_cannot_open_into_files_they_own() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    const NOBODY: u32 = 65534;
    let conf = tempfile::tempdir().unwrap();
    let config = conf.path().join("memobuildd.toml");
    std::fs::write(&config, "allowed-users = [\"nobody\"]\n").unwrap();
    let d = Daemon::start_with(&["--config", config.to_str().unwrap()]);
    d.open_socket_to_all();
    let p = project();
    std::fs::set_permissions(p.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mine = out.path().join("nobody");
    std::fs::create_dir(&mine).unwrap();
    std::os::unix::fs::chown(&mine, Some(NOBODY), Some(NOBODY)).unwrap();
    let tar = mine.join("image.tar");
    let layout = mine.join("layout");
    let o = common::ctl_as(
        NOBODY,
        NOBODY,
        &d.socket,
        &[
            "build",
            "--progress",
            "plain",
            "-o",
            &format!("type=oci,dest={}", tar.display()),
            "-o",
            &format!("type=oci-layout,dest={}", layout.display()),
            p.path().to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "{}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log()
    );
    // The store is root's (0700): nobody got the blobs as descriptors.
    assert!(exported_blobs(&d, "fd") >= 3);
    assert_eq!(exported_blobs(&d, "rpc"), 0);
    let blobs = layout_blobs(&layout);
    let (_, archive_blobs) = common::oci_archive(&tar);
    assert_eq!(blobs, archive_blobs);
    for entry in std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .chain([tar.clone(), layout.join("index.json")])
    {
        let meta = std::fs::metadata(&entry).unwrap();
        assert_eq!(meta.uid(), NOBODY, "{} is not the user's", entry.display());
        assert_eq!(
            meta.mode() & 0o022,
            0,
            "{} writable by others",
            entry.display()
        );
    }
}

/// The handoff itself, spoken to the daemon as a client would: a token names
/// an image's blobs only, works once, and nothing but a token is served.
#[test]
fn handoff_tokens_work_once_and_name_only_an_images_blobs() {
    use memobuild_proto::{handoff, MemobuildClient};
    use std::io::Write;
    let d = Daemon::start();
    let p = project();
    let digest = d.build_ok(p.path(), &[]).manifest_digest();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client: MemobuildClient = rt.block_on(async {
        let conn = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        let transport = memobuild_proto::wire::transport(conn);
        MemobuildClient::new(tarpc::client::Config::default(), transport).spawn()
    });
    let ctx = tarpc::context::current;
    let info = rt.block_on(client.hello(ctx())).unwrap().unwrap();
    assert!(info
        .features
        .iter()
        .any(|f| f == memobuild_proto::FEATURE_BLOB_FDS));
    let offer = rt
        .block_on(client.open_blobs(ctx(), digest.clone()))
        .unwrap()
        .unwrap();
    let blobs = rt
        .block_on(client.image_blobs(ctx(), digest.clone()))
        .unwrap()
        .unwrap();
    let mut expected = vec![blobs.config.clone()];
    expected.extend(blobs.layers.iter().cloned());
    expected.push(blobs.manifest.clone());
    expected.dedup_by(|a, b| a.digest == b.digest);
    assert_eq!(
        offer.blobs, expected,
        "the image's blobs, config first, manifest last"
    );
    // A layer is no image: open_blobs names no blob outside an image's set.
    let layer = rt
        .block_on(client.open_blobs(ctx(), blobs.layers[0].digest.clone()))
        .unwrap();
    assert!(
        layer.is_err(),
        "a layer digest was accepted as an image: {layer:?}"
    );
    let missing = format!("sha256:{}", "0".repeat(64));
    assert!(rt
        .block_on(client.open_blobs(ctx(), missing))
        .unwrap()
        .is_err());

    // First answer byte of a handoff connection for `request`.
    let answer = |request: &[u8]| -> Vec<u8> {
        let mut conn = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        conn.write_all(request).unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut conn, &mut got).unwrap();
        got
    };
    let request = handoff::request(&offer.token).unwrap();
    // Descriptors the test does not take are closed by the kernel; the bytes remain.
    let messages = offer.blobs.len().div_ceil(handoff::FDS_PER_MESSAGE);
    assert_eq!(answer(&request), vec![handoff::SENT; messages]);
    assert_eq!(
        answer(&request),
        vec![handoff::REFUSED],
        "a token works once"
    );
    let guessed = handoff::request(&"ab".repeat(handoff::TOKEN_BYTES)).unwrap();
    assert_eq!(answer(&guessed), vec![handoff::REFUSED]);
    assert!(d.log().contains("refused a blob handoff"));
    // The daemon still serves RPC on the same socket.
    assert!(rt.block_on(client.images(ctx())).unwrap().is_ok());
}
