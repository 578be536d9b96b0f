//! Looking at stored images as Docker users do: `image inspect` agrees with
//! `docker image inspect` of the same image loaded into a real Docker Engine,
//! `history` with `docker history`; `images` shows IMAGE ID and CREATED;
//! `image import -` reads stdin and says when it renames an image.

mod common;
use common::docker::Dockerd;
use common::{bin_dir, write_files, Daemon};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", dir.path().join("busybox")).unwrap();
    write_files(
        dir.path(),
        &[
            (
                "Dockerfile",
                "FROM scratch\nCOPY busybox /bin/busybox\nENV GREETING=hi\nCOPY a.txt /a.txt\nWORKDIR /srv\nLABEL stage=final\nENTRYPOINT [\"/bin/busybox\"]\nCMD [\"cat\", \"/a.txt\"]\n",
            ),
            ("a.txt", "a\n"),
        ],
    );
    dir
}

fn ctl(d: &Daemon, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn ok_json(out: std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn inspect_and_history_agree_with_docker() {
    let d = Daemon::start();
    let engine = Dockerd::start();
    let ctx = context();
    let out = ctl(
        &d,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "mb-insp/app:1",
            "--label",
            "from=cli",
            "--load",
            ctx.path().to_str().unwrap(),
        ],
        &[
            ("DOCKER_HOST", &engine.host()),
            ("SOURCE_DATE_EPOCH", "1700000000"),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ours = ok_json(d.ctl(&["image", "inspect", "mb-insp/app:1"]));
    let theirs: Value =
        serde_json::from_str(&engine.docker_ok(&["image", "inspect", "mb-insp/app:1"])).unwrap();
    let (ours, theirs) = (&ours[0], &theirs[0]);
    assert_eq!(
        ours["Id"], theirs["Id"],
        "the image ID is the config digest"
    );
    for key in ["Architecture", "Os", "Created", "RootFS"] {
        assert_eq!(ours[key], theirs[key], "{key}");
    }
    for key in ["Env", "Entrypoint", "Cmd", "WorkingDir", "Labels"] {
        assert_eq!(ours["Config"][key], theirs["Config"][key], "Config.{key}");
    }
    assert_eq!(ours["Config"]["Labels"]["from"], "cli");
    assert_eq!(ours["RepoTags"], serde_json::json!(["mb-insp/app:1"]));
    // By image ID too, and `image` is optional (`memobuild-ctl images`' ID column).
    let id = ours["Id"].as_str().unwrap();
    let by_id = ok_json(d.ctl(&["image", "inspect", &id[7..19]]));
    assert_eq!(by_id[0]["Id"], ours["Id"]);

    // history: the same steps, newest first, as docker history prints them.
    let ours = ok_json(d.ctl(&["history", "--json", "mb-insp/app:1"]));
    let theirs = engine.docker_ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}",
        "mb-insp/app:1",
    ]);
    let ours_by: Vec<&str> = ours
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["created_by"].as_str().unwrap())
        .collect();
    let theirs_by: Vec<&str> = theirs.lines().collect();
    assert_eq!(ours_by, theirs_by);
    assert!(ours_by[0].contains("CMD"), "{ours_by:?}");
    let layer_rows = ours
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["size"].as_u64().unwrap() > 0)
        .count();
    assert_eq!(
        layer_rows, 3,
        "two COPY layers and WORKDIR's directory: {ours}"
    );
    let text = String::from_utf8_lossy(&d.ctl(&["history", "mb-insp/app:1"]).stdout).into_owned();
    assert!(text.starts_with("IMAGE "), "{text}");
    assert!(text.contains(&id[7..19]), "{text}");

    // images: IMAGE ID is the config digest's start; CREATED the config's time.
    let table = String::from_utf8_lossy(&d.ctl(&["images"]).stdout).into_owned();
    let header = table.lines().next().unwrap();
    assert!(
        header.contains("IMAGE ID") && header.contains("CREATED"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("mb-insp/app:1"))
        .unwrap();
    assert!(row.contains(&id[7..19]), "{table}");
    assert!(row.contains("ago"), "{table}");

    // A name nobody has: typed NotFound, exit 1, JSON error.
    let out = d.ctl(&["image", "inspect", "nope:1"]);
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(err["error"]["kind"], "not_found", "{err}");
}

#[test]
fn image_import_reads_stdin_and_says_what_it_replaced() {
    let d = Daemon::start();
    let ctx = context();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("img.tar");
    d.build_ok(ctx.path(), &["-t", "imp:1"]);
    std::fs::write(ctx.path().join("a.txt"), "changed\n").unwrap();
    let changed = d
        .build_ok(
            ctx.path(),
            &["-o", &format!("type=docker,dest={}", archive.display())],
        )
        .manifest_digest();
    let before = d.ctl_json(&["images"]);
    let old = before[0]["manifest_digest"].as_str().unwrap().to_string();
    assert_ne!(old, changed);
    let mut child = Command::new(bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["image", "import", "--name", "imp:1", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&archive).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("imp:1 {changed}")
    );
    assert!(
        stderr.contains(&format!(
            "imp:1 now names the imported image; it named {old}"
        )),
        "{stderr}"
    );
    let after = d.ctl_json(&["images"]);
    assert_eq!(after[0]["manifest_digest"], changed.as_str());
}
