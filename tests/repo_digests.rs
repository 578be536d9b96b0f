//! `RepoDigests` of `image inspect` and `images --digests`, against a real
//! Distribution registry (Debian's docker-registry): after a `--push` and a
//! `FROM` pull, the image lists `REPOSITORY@DIGEST` with the digest the
//! registry serves for the name (`skopeo inspect`), as Docker does; a new
//! image under the name has none until it is pushed.

mod common;
use common::registry::registry_with_base;
use common::{write_files, Daemon};

fn inspect(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.ctl(&["image", "inspect", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    all[0].clone()
}

fn repo_digests(d: &Daemon, name: &str) -> Vec<String> {
    inspect(d, name)["RepoDigests"]
        .as_array()
        .expect("RepoDigests is an array")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The row of `images --digests` for `name`.
fn digests_row(d: &Daemon, name: &str) -> Vec<String> {
    let out = d.ctl(&["images", "--digests"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("NAME"), "{text}");
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name}:\n{text}"))
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[test]
fn pushed_and_pulled_names_show_the_registrys_digest() {
    let dir = tempfile::tempdir().unwrap();
    let maker = Daemon::start();
    let reg = registry_with_base(&maker, dir.path());
    let base = reg.image("base:1");
    let d = common::registry::daemon_for(&reg);
    let ctx = dir.path().join("app");
    write_files(
        &ctx,
        &[
            ("Dockerfile", &format!("FROM {base}\nCOPY file.txt /\n")),
            ("file.txt", "one"),
        ],
    );
    let app = reg.image("team/app:1");
    let digest = d.build_ok(&ctx, &["-t", &app, "--push"]).manifest_digest();
    assert_eq!(reg.digest("team/app:1"), digest);

    // Pushed: REPOSITORY@DIGEST, as `docker image inspect` after `docker push`.
    let repo = format!("{}/team/app", reg.host);
    assert_eq!(repo_digests(&d, &app), vec![format!("{repo}@{digest}")]);
    // Pulled by FROM: the digest the tag has in the registry.
    assert_eq!(
        repo_digests(&d, &base),
        vec![format!("{}/base@{}", reg.host, reg.digest("base:1"))]
    );
    let row = digests_row(&d, &app);
    assert_eq!(row[2], digest, "{row:?}");

    // A second name of the image, pushed too: both repositories listed.
    let other = reg.image("other/app:1");
    d.build_ok(&ctx, &["-t", &app, "-t", &other, "--push"]);
    let mut both = vec![
        format!("{repo}@{digest}"),
        format!("{}/other/app@{digest}", reg.host),
    ];
    both.sort();
    assert_eq!(repo_digests(&d, &app), both);

    // Another local name of the same image: the image's RepoDigests; its own
    // row in `images --digests` has none, as Docker's row of that repository.
    d.build_ok(&ctx, &["-t", "local:1"]);
    assert_eq!(
        repo_digests(&d, "local:1"),
        both,
        "same image: same digests"
    );
    assert_eq!(digests_row(&d, "local:1")[2], "<none>");

    // A new image under the pushed name: no registry digest until pushed.
    std::fs::write(ctx.join("file.txt"), "two").unwrap();
    let newer = d.build_ok(&ctx, &["-t", &app]).manifest_digest();
    assert_ne!(newer, digest);
    assert!(
        repo_digests(&d, &app).is_empty(),
        "the new image was never pushed"
    );
    assert_eq!(digests_row(&d, &app)[2], "<none>");
    d.build_ok(&ctx, &["-t", &app, "--push"]);
    assert_eq!(repo_digests(&d, &app), vec![format!("{repo}@{newer}")]);
}
