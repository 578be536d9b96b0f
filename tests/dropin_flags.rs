//! More of `docker buildx build`'s flags, each checked by its effect:
//! `--annotation` (in the manifest the registry serves), `--allow`, a git URL
//! context (a local `git daemon`), `--build-context NAME=docker-image://REF`;
//! `--cache-to/--cache-from type=local` between two daemons; and the
//! refusals of what does not apply (other cache types).

mod common;
use common::registry::Registry;
use common::{busybox_context, oci_archive, Daemon};
use serde_json::Value;

#[test]
fn annotations_are_in_the_manifest_written_and_pushed() {
    let reg = Registry::start();
    let d = common::registry::daemon_for(&reg);
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
fn allow_passes_entitlements_and_refuses_unknown_ones() {
    let d = Daemon::start_with(&["--insecure-entitlements", "network.host"]);
    let ctx = busybox_context("RUN --network=host cat /proc/net/dev > /nets\n", &[]);
    let out = d.build_ok(ctx.path(), &["--allow", "network.host"]);
    assert!(out.success);
    for (value, says) in [
        ("security.insecure", "network.host entitlement"),
        ("device", "unknown entitlement"),
    ] {
        let o = d.ctl(&["build", "--allow", value, ctx.path().to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "--allow {value}");
        assert!(stderr.contains(says), "--allow {value}: {stderr}");
    }
    // Cache backends memobuild has no store for are refused by name, before the build
    // (type=inline: tests/inline_cache.rs).
    for (flag, value, says) in [
        (
            "--cache-to",
            "type=gha",
            "this cache backend is not supported",
        ),
        (
            "--cache-from",
            "type=s3,region=x",
            "this cache backend is not supported",
        ),
    ] {
        let o = d.ctl(&["build", flag, value, ctx.path().to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{flag} {value}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
        assert!(stderr.contains("type=registry,ref=REF"), "{stderr}");
    }
}

/// A `git daemon` on 127.0.0.1 serving the repositories under its directory.
struct GitDaemon {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl GitDaemon {
    fn start() -> GitDaemon {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // git-daemon itself (not `git daemon`, whose wrapper would outlive a kill).
        let exec_path = std::process::Command::new("git")
            .arg("--exec-path")
            .output()
            .expect("git (Debian package git)");
        let exec_path = String::from_utf8_lossy(&exec_path.stdout)
            .trim()
            .to_string();
        let child = std::process::Command::new(format!("{exec_path}/git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", dir.path().display()))
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("git daemon (Debian package git)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "git daemon did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        GitDaemon { dir, port, child }
    }

    fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn git(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_git_url_context_builds_the_ref_and_directory_it_names() {
    let server = GitDaemon::start();
    let repo = server.dir.path().join("repo.git");
    std::fs::create_dir_all(repo.join("app")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    let dockerfile = "FROM scratch\nCOPY . /ctx/\n";
    common::write_files(
        &repo,
        &[
            ("app/Dockerfile", dockerfile),
            ("app/version.txt", "one\n"),
            ("top.txt", "top\n"),
            ("Dockerfile", "FROM scratch\nCOPY top.txt /top.txt\n"),
        ],
    );
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    git(&repo, &["tag", "v1"]);
    std::fs::write(repo.join("app/version.txt"), "two\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "two"]);

    let d = Daemon::start();
    let out = tempfile::tempdir().unwrap();
    let build = |context: &str, dest: &str| {
        let dest = out.path().join(dest);
        let o = d.ctl(&[
            "build",
            "--progress",
            "plain",
            "-o",
            &format!("type=local,dest={}", dest.display()),
            context,
        ]);
        assert!(
            o.status.success(),
            "{context}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            d.log()
        );
        dest
    };
    // The tag, in a directory of the repository; no .git in the context.
    let v1 = build(&format!("{}#v1:app", server.url("repo.git")), "v1");
    assert_eq!(
        std::fs::read_to_string(v1.join("ctx/version.txt")).unwrap(),
        "one\n"
    );
    let mut names: Vec<String> = std::fs::read_dir(v1.join("ctx"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["Dockerfile", "version.txt"]);
    // The default branch's head, whole repository.
    let head = build(&server.url("repo.git"), "head");
    assert_eq!(
        std::fs::read_to_string(head.join("top.txt")).unwrap(),
        "top\n"
    );
    let main = build(&format!("{}#main:app", server.url("repo.git")), "main");
    assert_eq!(
        std::fs::read_to_string(main.join("ctx/version.txt")).unwrap(),
        "two\n"
    );
    // A ref that does not exist: BuildKit's words, and a hint.
    let o = d.ctl(&["build", &format!("{}#nope", server.url("repo.git"))]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("git context: repository does not contain ref nope")
            && stderr.contains("hint: "),
        "{stderr}"
    );
    // A remote tarball is refused by name.
    let o = d.ctl(&["build", "http://127.0.0.1:1/context.tar.gz"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not supported"));
}

#[test]
fn build_context_docker_image_replaces_from_and_copy_from_names() {
    let reg = Registry::start();
    let maker = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let layout = common::registry::busybox_layout(&maker, dir.path(), "pulled");
    reg.push_layout(&layout, "ctx/base:1", &[]);
    let d = common::registry::daemon_for(&reg);
    // Two local images, each with its own /marker.
    for marker in ["one", "two"] {
        let ctx = tempfile::tempdir().unwrap();
        common::write_files(
            ctx.path(),
            &[
                ("Dockerfile", "FROM scratch\nCOPY marker /marker\n"),
                ("marker", marker),
            ],
        );
        d.build_ok(ctx.path(), &["-t", &format!("mb-base:{marker}")]);
    }
    let app = tempfile::tempdir().unwrap();
    common::write_files(
        app.path(),
        &[(
            "Dockerfile",
            "FROM base\nCOPY --from=tools /marker /tools-marker\n",
        )],
    );
    let out = tempfile::tempdir().unwrap();
    let build = |contexts: &[&str], dest: &str| {
        let dest = out.path().join(dest);
        let mut args = vec![
            "build".to_string(),
            "--progress".into(),
            "plain".into(),
            "-o".into(),
            format!("type=local,dest={}", dest.display()),
        ];
        for c in contexts {
            args.push("--build-context".into());
            args.push(c.to_string());
        }
        args.push(app.path().display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = d.ctl(&args);
        assert!(
            o.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&o.stderr),
            d.log()
        );
        dest
    };
    let read = |dir: &std::path::Path, f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let a = build(
        &[
            "base=docker-image://mb-base:one",
            "tools=docker-image://mb-base:two",
        ],
        "a",
    );
    assert_eq!(
        (read(&a, "marker"), read(&a, "tools-marker")),
        ("one".into(), "two".into())
    );
    // Swapped: the same Dockerfile, the other images (the fast path must not answer).
    let b = build(
        &[
            "base=docker-image://mb-base:two",
            "tools=docker-image://mb-base:one",
        ],
        "b",
    );
    assert_eq!(
        (read(&b, "marker"), read(&b, "tools-marker")),
        ("two".into(), "one".into())
    );
    // From a registry: the image REF is pulled, never NAME.
    let c = build(
        &[
            &format!("base=docker-image://{}", reg.image("ctx/base:1")),
            "tools=docker-image://mb-base:one",
        ],
        "c",
    );
    assert_eq!(read(&c, "marker"), "pulled");
    assert!(c.join("bin/busybox").is_file());

    // A build context named like a stage is refused, with the stage's line.
    common::write_files(
        app.path(),
        &[("Dockerfile", "FROM scratch AS tools\nFROM tools\n")],
    );
    let o = d.ctl(&[
        "build",
        "--build-context",
        "tools=docker-image://mb-base:one",
        app.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("Dockerfile:1: --build-context tools names the stage"),
        "{stderr}"
    );
    // A URL is not a supported build context yet: said so before the build
    // (OCI layouts: tests/oci_layout_context.rs).
    let o = d.ctl(&[
        "build",
        "--build-context",
        "x=https://example.invalid/ctx.tar",
        app.path().to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("a URL as a build context is not supported yet"));
}

#[test]
fn build_context_dir_serves_copy_from_and_from() {
    let d = Daemon::start();
    let files = tempfile::tempdir().unwrap();
    common::write_files(
        files.path(),
        &[
            ("data.txt", "from the directory\n"),
            ("sub/inner.txt", "inner\n"),
            ("secret.key", "never copied\n"),
            (".dockerignore", "*.key\n"),
        ],
    );
    let app = tempfile::tempdir().unwrap();
    common::write_files(
        app.path(),
        &[(
            "Dockerfile",
            "FROM files AS base\nFROM scratch\nCOPY --from=files / /all/\nCOPY --from=base /data.txt /copied.txt\n",
        )],
    );
    let out = tempfile::tempdir().unwrap();
    let build = |dest: &str| {
        let dest = out.path().join(dest);
        let o = d.ctl(&[
            "build",
            "--progress",
            "plain",
            "--build-context",
            &format!("files={}", files.path().display()),
            "-o",
            &format!("type=local,dest={}", dest.display()),
            app.path().to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{stderr}\n{}", d.log());
        (dest, stderr)
    };
    let (first, stderr) = build("first");
    let canonical = files.path().canonicalize().unwrap();
    assert!(
        stderr.contains(&format!("build context files: {}", canonical.display())),
        "{stderr}"
    );
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap();
    assert_eq!(read(first.join("copied.txt")), "from the directory\n");
    assert_eq!(read(first.join("all/sub/inner.txt")), "inner\n");
    assert!(
        !first.join("all/secret.key").exists(),
        ".dockerignore of the directory applies"
    );
    // The directory's image was for that build only.
    let images = d.ctl_json(&["images"]);
    assert_eq!(images, serde_json::json!([]), "{images}");
    // An edit in the directory reaches the next build.
    std::fs::write(files.path().join("data.txt"), "edited\n").unwrap();
    let (second, _) = build("second");
    assert_eq!(read(second.join("copied.txt")), "edited\n");
}

#[test]
fn a_local_cache_carries_steps_to_an_empty_daemon() {
    use common::registry::build_env;
    let ctx = busybox_context(
        "RUN head -c 32 /dev/urandom | od -x > /rand\nCOPY f /f\n",
        &[("f", "x")],
    );
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("cache");
    let out = tempfile::tempdir().unwrap();
    let a = Daemon::start();
    let first = build_env(
        &a,
        ctx.path(),
        &[
            "--cache-to",
            &format!("type=local,dest={},mode=max", dir.display()),
            "-o",
            &format!("type=local,dest={}", out.path().join("a").display()),
        ],
        &[],
    );
    assert!(first.success, "{}", first.text());
    assert!(
        first
            .logs()
            .iter()
            .any(|l| l.starts_with(&format!("local cache {}: wrote", dir.display()))),
        "{}",
        first.text()
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );

    // Another daemon with an empty store: every step comes from the directory.
    let b = Daemon::start();
    let second = build_env(
        &b,
        ctx.path(),
        &[
            "--cache-from",
            &format!("type=local,src={}", dir.display()),
            "-o",
            &format!("type=local,dest={}", out.path().join("b").display()),
        ],
        &[],
    );
    assert!(second.success, "{}", second.text());
    assert!(
        second.executed().is_empty(),
        "nothing ran: {}",
        second.text()
    );
    assert_eq!(second.manifest_digest(), first.manifest_digest());
    let rand = |d: &str| std::fs::read(out.path().join(d).join("rand")).unwrap();
    assert_eq!(rand("a"), rand("b"), "the RUN's output is the cached one");

    // A cache whose layer does not match: a warning, and the steps run here.
    let c = Daemon::start();
    let manifest = &index["manifests"][0]["digest"];
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(
            dir.join("blobs")
                .join(manifest.as_str().unwrap().replacen(':', "/", 1)),
        )
        .unwrap(),
    )
    .unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    std::fs::write(
        dir.join("blobs").join(layer.replacen(':', "/", 1)),
        b"not the layer",
    )
    .unwrap();
    let third = build_env(
        &c,
        ctx.path(),
        &["--cache-from", &format!("type=local,src={}", dir.display())],
        &[],
    );
    assert!(third.success, "{}", third.text());
    assert!(
        third.logs().iter().any(|l| l.contains("cannot be read")),
        "{}",
        third.text()
    );
    assert!(!third.executed().is_empty(), "{}", third.text());
}

#[test]
fn local_cache_mode_min_keeps_the_target_chain_and_max_every_stage() {
    let ctx = busybox_context(
        "FROM base AS other\nRUN echo other > /o\nFROM base\nRUN echo final > /f\nCOPY --from=other /o /o\n",
        &[],
    );
    let d = Daemon::start();
    let cache = tempfile::tempdir().unwrap();
    for mode in ["min", "max"] {
        d.build_ok(
            ctx.path(),
            &[
                "--cache-to",
                &format!(
                    "type=local,dest={},mode={mode}",
                    cache.path().join(mode).display()
                ),
            ],
        );
    }
    let min = common::local_cache_steps(&cache.path().join("min"));
    let max = common::local_cache_steps(&cache.path().join("max"));
    // base: COPY + RUN; other: RUN; final: RUN + COPY --from.
    assert_eq!(max.len(), 5, "{max:?}");
    assert_eq!(min.len(), 4, "the other stage's RUN is left out: {min:?}");
    assert!(min.keys().all(|k| max.contains_key(k)));
    // Every layer named is in the directory.
    for layer in max.values().filter(|l| !l.is_null()) {
        let digest = layer["digest"].as_str().unwrap();
        assert!(cache
            .path()
            .join("max/blobs")
            .join(digest.replacen(':', "/", 1))
            .is_file());
    }
}

#[test]
fn refused_docker_build_flags_say_why_and_what_to_do_instead() {
    let ctx = busybox_context("", &[]);
    for (args, why, hint) in [
        (
            &["--squash"][..],
            "never merged into one",
            "COPY --from=build / /",
        ),
        (
            &["--sbom=true"],
            "attestation manifests",
            "--provenance=false",
        ),
        (
            &["--provenance=mode=max"],
            "attestation manifests",
            "no attestations",
        ),
        (
            &["--security-opt", "seccomp=unconfined"],
            "seccomp profile",
            "--security=insecure",
        ),
        (
            &["--cgroup-parent", "/x"],
            "daemon's cgroups",
            "--pids-limit",
        ),
        (&["--isolation=hyperv"], "Windows", "leave it out"),
    ] {
        let out = std::process::Command::new(common::bin_dir().join("memobuild-ctl"))
            .args(["--socket", "/nonexistent/memobuild.sock", "build"])
            .args(args)
            .arg(ctx.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Refused by the command line itself, before any daemon is asked.
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("does not support yet: ") && stderr.contains(why),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("hint: ") && l.contains(hint)),
            "{args:?}: {stderr}"
        );
    }
}
