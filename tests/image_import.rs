//! `memobuild-ctl image import|rm`: OCI archives and `docker save` archives
//! load into the image store, `FROM NAME` finds them offline, `rm` forgets them.

mod common;
use common::{write_files, Daemon};
use std::process::Command;

fn base_archive(d: &Daemon, dir: &std::path::Path) -> std::path::PathBuf {
    let ctx = dir.join("base");
    write_files(
        &ctx,
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY hello.txt /hello.txt\nENV FROM_BASE=yes\n",
            ),
            ("hello.txt", "hello\n"),
        ],
    );
    let tar = dir.join("base.tar");
    d.build_ok(&ctx, &["-o", &format!("type=oci,dest={}", tar.display())]);
    tar
}

fn build_on(d: &Daemon, dir: &std::path::Path, base: &str) -> serde_json::Value {
    let ctx = dir.join(format!("child-{}", base.replace([':', '/'], "-")));
    write_files(
        &ctx,
        &[
            (
                "Dockerfile",
                &format!("FROM {base}\nCOPY more.txt /more.txt\n"),
            ),
            ("more.txt", "more\n"),
        ],
    );
    let out = dir.join(format!("{}.tar", base.replace([':', '/'], "-")));
    d.build_ok(&ctx, &["-o", &format!("type=oci,dest={}", out.display())]);
    common::fsdump(&out)
}

fn paths(dump: &serde_json::Value) -> Vec<String> {
    dump["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn oci_and_docker_archives_import_and_build_offline() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let oci = base_archive(&d, dir.path());

    let out = d.ctl(&[
        "image",
        "import",
        "--name",
        "imported/oci:1",
        oci.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = build_on(&d, dir.path(), "imported/oci:1");
    assert_eq!(paths(&child), vec!["/hello.txt", "/more.txt"]);
    assert!(
        child["config"]["Env"].to_string().contains("FROM_BASE=yes"),
        "the base's config is inherited"
    );

    // The same image as `docker save` writes it (skopeo's docker-archive).
    let docker = dir.path().join("docker.tar");
    let copy = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci-archive:{}", oci.display()))
        .arg(format!("docker-archive:{}:saved/base:2", docker.display()))
        .output()
        .expect("skopeo (apt-get install skopeo)");
    assert!(
        copy.status.success(),
        "{}",
        String::from_utf8_lossy(&copy.stderr)
    );
    let out = d.ctl(&["image", "import", docker.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("saved/base:2"),
        "the archive's own name is used"
    );
    let child = build_on(&d, dir.path(), "saved/base:2");
    assert_eq!(paths(&child), vec!["/hello.txt", "/more.txt"]);

    let listed = d.ctl(&["images", "--json"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("imported/oci:1") && listed.contains("saved/base:2"),
        "{listed}"
    );

    let rm = d.ctl(&["image", "rm", "imported/oci:1"]);
    assert!(rm.status.success());
    let gone = d.build(&dir.path().join("child-imported-oci-1"), &[]);
    assert!(!gone.success);
    assert!(gone.error()["message"]
        .as_str()
        .unwrap()
        .contains("not in memobuild's image store"));
}

#[test]
fn bad_archives_are_clear_errors() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive").unwrap();
    let out = d.ctl(&["image", "import", "--name", "x", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("junk.tar") && stderr.contains("hint:"),
        "{stderr}"
    );
    // A blob whose content does not match its digest is refused.
    let oci = base_archive(&d, dir.path());
    let mut archive = tar::Archive::new(std::fs::File::open(&oci).unwrap());
    let corrupt = dir.path().join("corrupt.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&corrupt).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        let path = entry.path().unwrap().display().to_string();
        if path.starts_with("blobs/") && data.len() > 100 && data[0] == 0x1f {
            let last = data.len() - 20;
            data[last] ^= 0xff;
        }
        header.set_cksum();
        builder
            .append_data(&mut header, &path, data.as_slice())
            .unwrap();
    }
    builder.finish().unwrap();
    let out = d.ctl(&["image", "import", "--name", "y", corrupt.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        d.ctl(&["images"]).status.success(),
        "the daemon keeps serving"
    );
}
