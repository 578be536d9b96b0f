//! `ADD ssh://...` and `ADD git@HOST:PATH` (docs/SECURITY.md, "ssh agents"):
//! the daemon's `git` fetches the repository over ssh with the agent the
//! client forwards as `default` (`build --ssh default`), as BuildKit does.
//! Against a real daemon, OpenSSH's `sshd` (started here on a free port of
//! 127.0.0.1 with its own configuration, host key and authorized keys),
//! `ssh-agent` and `git`: the files land in the image, a new commit is
//! fetched, a build without an agent or with a key the server refuses fails
//! at once with a clear error, and a user whose key is refused gets nothing
//! of another user's checkout. Needs openssh-server, openssh-client and git.

mod common;
use common::{oci_file, Agent, BuildOutcome, Daemon};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const A: u32 = 4242;
const B: u32 = 65534;

/// How long a build may take before the test calls it a hang.
const NO_HANG: Duration = Duration::from_secs(90);

/// Runs `cmd`, panicking with its output when it fails.
fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A private `sshd` on 127.0.0.1 letting root in with the keys in its
/// `authorized_keys` (empty at first); stopped when dropped.
struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Sshd {
    fn start() -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("mb-sshd")
            .tempdir()
            .unwrap();
        let host_key = dir.path().join("host_key");
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&host_key));
        std::fs::write(dir.path().join("authorized_keys"), "").unwrap();
        // Privilege separation needs its directory (the service makes it).
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPidFile none\nLogLevel VERBOSE\n",
                host_key.display(),
                dir.path().join("authorized_keys").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("/usr/sbin/sshd (apt-get install openssh-server)");
        let sshd = Sshd { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not start: {}",
                sshd.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }

    fn authorize(&self, public_key: &Path) {
        use std::io::Write;
        let key = std::fs::read_to_string(public_key).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("authorized_keys"))
            .unwrap()
            .write_all(key.as_bytes())
            .unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The `ssh://` URL of a repository at `path` on this server.
    fn url(&self, path: &Path) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, path.display())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare repository (`repo.git`) and a work tree that pushes to it.
struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::Builder::new()
            .prefix("mb-gitssh")
            .tempdir()
            .unwrap();
        let repo = Repo { dir };
        repo.git(&["init", "--quiet", "--bare", "repo.git"], None);
        repo.git(&["init", "--quiet", "-b", "main", "work"], None);
        repo
    }

    fn bare(&self) -> PathBuf {
        self.dir.path().join("repo.git")
    }

    fn git(&self, args: &[&str], dir: Option<&str>) -> String {
        let mut cmd = Command::new("git");
        cmd.current_dir(self.dir.path().join(dir.unwrap_or(".")))
            .args(["-c", "user.email=test", "-c", "user.name=test"])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null");
        String::from_utf8_lossy(&run(&mut cmd).stdout)
            .trim()
            .to_string()
    }

    /// Commits `files` (path, content) and pushes the branch (and `tag`).
    fn commit(&self, files: &[(&str, &str)], tag: Option<&str>) -> String {
        let work = self.dir.path().join("work");
        common::write_files(&work, files);
        self.git(&["add", "-A"], Some("work"));
        self.git(&["commit", "--quiet", "-m", "change"], Some("work"));
        let bare = self.bare();
        let bare = bare.to_str().unwrap();
        self.git(&["push", "--quiet", bare, "main"], Some("work"));
        if let Some(tag) = tag {
            self.git(&["tag", tag], Some("work"));
            self.git(&["push", "--quiet", bare, tag], Some("work"));
        }
        self.git(&["rev-parse", "HEAD"], Some("work"))
    }
}

/// A context (readable by every user) with `dockerfile` and `note.txt`.
fn context(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::write_files(
        dir.path(),
        &[("Dockerfile", dockerfile), ("note.txt", "one\n")],
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `memobuild-ctl build --progress json ARGS CONTEXT -o type=oci,dest=...`
/// as root with `SSH_AUTH_SOCK` set to `agent` (unset when `None`); the
/// outcome and the archive. Panics when it runs past [`NO_HANG`].
fn build(
    d: &Daemon,
    ctx: &Path,
    agent: Option<&Agent>,
    args: &[&str],
) -> (BuildOutcome, PathBuf, tempfile::TempDir) {
    let out_dir = tempfile::tempdir().unwrap();
    let archive = out_dir.path().join("out.tar");
    let mut cmd = Command::new(common::bin_dir().join("memobuild-ctl"));
    cmd.arg("--socket")
        .arg(&d.socket)
        .args(["build", "--progress", "json"])
        .args(args)
        .arg("-o")
        .arg(format!("type=oci,dest={}", archive.display()))
        .arg(ctx)
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match agent {
        Some(a) => cmd.env("SSH_AUTH_SOCK", &a.socket),
        None => cmd.env_remove("SSH_AUTH_SOCK"),
    };
    let mut child = cmd.spawn().expect("memobuild-ctl");
    let deadline = Instant::now() + NO_HANG;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("memobuild-ctl build {args:?} hung:\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = BuildOutcome::from_output(child.wait_with_output().unwrap());
    (out, archive, out_dir)
}

fn file(archive: &Path, path: &str) -> Option<String> {
    oci_file(archive, path).map(|b| String::from_utf8(b).unwrap())
}

fn message_and_hint(out: &BuildOutcome) -> String {
    let e = out.error();
    format!(
        "{}\n{}",
        e["message"].as_str().unwrap_or(""),
        e["hint"].as_str().unwrap_or("")
    )
}

fn step_state(project: &Value, instruction: &str) -> String {
    project["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["instruction"] == instruction)
        .map(|s| s["state"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no step {instruction:?} in {project:#}"))
}

/// testAddGit's checks over ssh: a branch, a tag with `:subdir`, the query
/// form with `keep-git-dir`; then a pushed commit is fetched, a build
/// without `--ssh` or with a key the server refuses fails at once with
/// what to do, and the daemon's re-plans (no client, no agent) reuse the
/// checkout its builds fetched or say that a build is needed.
#[test]
fn add_over_ssh_fetches_with_the_forwarded_agent() {
    let sshd = Sshd::start();
    let agent = Agent::start(0, Some("memobuild-git-ssh"));
    sshd.authorize(agent.public_key.as_ref().unwrap());
    let repo = Repo::new();
    let v1 = repo.commit(
        &[("foo", "foo of v1\n"), ("sub/bar", "bar of v1\n")],
        Some("v1"),
    );
    let url = sshd.url(&repo.bare());
    let add_main = format!("ADD {url}#main /src");
    let add_sub = format!("ADD {url}#v1:sub /sub");
    let add_kept = format!("ADD {url}?ref=v1&keep-git-dir=true /kept");
    let dockerfile = format!(
        "FROM scratch\n{add_sub}\n{add_kept}\nADD --checksum={v1} {url}#v1 /checked\n{add_main}\nCOPY note.txt /note.txt\n"
    );
    let ctx = context(&dockerfile);
    let d = Daemon::start();

    let (first, archive, _o1) = build(&d, ctx.path(), Some(&agent), &["--ssh", "default"]);
    assert!(
        first.success,
        "{}\n{}\n{}",
        first.text(),
        d.log(),
        sshd.log()
    );
    assert_eq!(file(&archive, "src/foo").as_deref(), Some("foo of v1\n"));
    assert_eq!(
        file(&archive, "src/sub/bar").as_deref(),
        Some("bar of v1\n")
    );
    assert_eq!(file(&archive, "src/.git/HEAD"), None, "no .git by default");
    assert_eq!(file(&archive, "sub/bar").as_deref(), Some("bar of v1\n"));
    assert_eq!(file(&archive, "sub/foo"), None, "only the subdir");
    assert_eq!(file(&archive, "kept/foo").as_deref(), Some("foo of v1\n"));
    assert!(file(&archive, "kept/.git/HEAD").is_some(), "--keep-git-dir");
    assert_eq!(
        file(&archive, "checked/foo").as_deref(),
        Some("foo of v1\n")
    );
    assert!(
        sshd.log().contains("Accepted publickey for root"),
        "{}",
        sshd.log()
    );

    // A new commit on main: the next build asks the server again.
    repo.commit(&[("foo", "foo of v2\n")], None);
    let (second, archive, _o2) = build(&d, ctx.path(), Some(&agent), &["--ssh", "default"]);
    assert!(second.success, "{}\n{}", second.text(), d.log());
    assert_eq!(file(&archive, "src/foo").as_deref(), Some("foo of v2\n"));
    assert_eq!(file(&archive, "sub/bar").as_deref(), Some("bar of v1\n"));
    assert!(second.executed().contains(&add_main), "{}", second.text());
    assert!(second.cached().contains(&add_sub), "{}", second.text());

    // The daemon's own re-plan after an edit (no client, so no agent)
    // reuses the checkouts this user's build fetched: only the COPY is dirty.
    std::fs::write(ctx.path().join("note.txt"), "two\n").unwrap();
    let project = common::wait_status(&d, ctx.path(), "the COPY dirty", |p| p["state"] == "dirty");
    assert!(project["plan_error"].is_null(), "{project:#}");
    assert_eq!(step_state(&project, "COPY note.txt /note.txt"), "dirty");
    assert_eq!(step_state(&project, &add_main), "clean", "{project:#}");

    // Without --ssh: BuildKit's words, what is needed and what to do.
    let (bare, _, _o3) = build(&d, ctx.path(), None, &[]);
    assert!(!bare.success, "{}", bare.text());
    let text = message_and_hint(&bare);
    for part in [
        "no SSH key \"default\" forwarded from the client",
        "needs an ssh agent",
        "--ssh default",
        "Dockerfile:2:",
    ] {
        assert!(text.contains(part), "{part:?} in {}", bare.text());
    }
    // An agent forwarded under another id is not `default`'s.
    let other_id = format!("deploy={}", agent.socket.display());
    let (wrong_id, _, _o4) = build(&d, ctx.path(), Some(&agent), &["--ssh", &other_id]);
    assert!(!wrong_id.success, "{}", wrong_id.text());
    assert!(
        message_and_hint(&wrong_id).contains("no SSH key \"default\""),
        "{}",
        wrong_id.text()
    );

    // An agent whose key the server refuses: git's error, no checkout
    // reused (the build asks the server every time).
    let stranger = Agent::start(0, Some("memobuild-git-ssh"));
    let (refused, _, _o5) = build(&d, ctx.path(), Some(&stranger), &["--ssh", "default"]);
    assert!(!refused.success, "{}", refused.text());
    let text = message_and_hint(&refused);
    assert!(text.contains("Permission denied"), "{}", refused.text());
    assert!(text.contains("--ssh default"), "{}", refused.text());

    // After a restart the daemon has fetched nothing yet: its re-plan says
    // a build is needed instead of reaching for an agent.
    let mut d = d;
    d.restart();
    let project = common::wait_status(&d, ctx.path(), "the re-plan's error", |p| {
        !p["plan_error"].is_null()
    });
    let error = project["plan_error"].to_string();
    assert!(error.contains("no ssh agent"), "{project:#}");
    assert!(
        error.contains("memobuild-ctl build --ssh default"),
        "{project:#}"
    );
    // And a build fetches again.
    let (third, archive, _o6) = build(&d, ctx.path(), Some(&agent), &["--ssh", "default"]);
    assert!(third.success, "{}\n{}", third.text(), d.log());
    assert_eq!(file(&archive, "src/foo").as_deref(), Some("foo of v2\n"));
}

/// On a shared host, the step is keyed by the commit (as BuildKit's), so
/// the clone at plan time is what keeps a private repository private: B,
/// whose key the server refuses, names the very repository and commit A
/// built and gets git's refusal, not A's checkout or cached step.
#[test]
fn a_user_the_server_refuses_gets_nothing_of_another_users_checkout() {
    let sshd = Sshd::start();
    let (a_agent, b_agent) = (
        Agent::start(A, Some("memobuild-git-ssh")),
        Agent::start(B, Some("memobuild-git-ssh")),
    );
    sshd.authorize(a_agent.public_key.as_ref().unwrap());
    let repo = Repo::new();
    let commit = repo.commit(&[("secret.txt", "only for A\n")], None);
    let url = sshd.url(&repo.bare());
    let ctx = context(&format!(
        "FROM scratch\nADD {url}#{commit} /src\nENV X=$nope\n"
    ));
    let (d, _config) = Daemon::start_shared(&[A, B]);
    // (ctl_as fails the test when the client runs for 30 s.)
    let build_as = |uid: u32, agent: &Agent| {
        common::build_as_with_agent(uid, &d.socket, &agent.socket, ctx.path())
    };
    let (a, archive, _a) = build_as(A, &a_agent);
    assert!(a.success, "{}\n{}\n{}", a.text(), d.log(), sshd.log());
    assert_eq!(
        file(&archive, "src/secret.txt").as_deref(),
        Some("only for A\n")
    );

    let (b, archive, _b) = build_as(B, &b_agent);
    assert!(!b.success, "B got A's checkout: {}", b.text());
    let text = message_and_hint(&b);
    assert!(text.contains("Permission denied"), "{}", b.text());
    assert!(!archive.exists());
    assert!(
        b.executed().is_empty() && b.cached().is_empty(),
        "{}",
        b.text()
    );

    // A again: still A's (the same commit, from cache).
    let (again, archive, _c) = build_as(A, &a_agent);
    assert!(again.success, "{}", again.text());
    assert_eq!(
        file(&archive, "src/secret.txt").as_deref(),
        Some("only for A\n")
    );

    // `build --call=check` plans without an agent, reusing only the
    // caller's own checkouts: A's plan gets past the ADD (so planning finds
    // UndefinedVar), B's does not, even when B's request names A as owner.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let check_as = |uid: u32, claimed: Option<u32>| -> Vec<String> {
        let client = common::client_as(&rt, &d.socket, uid);
        let request = memobuild_proto::BuildRequest {
            context: ctx.path().display().to_string(),
            owner: claimed,
            ..Default::default()
        };
        let report = rt
            .block_on(client.check(tarpc::context::current(), request))
            .unwrap()
            .unwrap_or_else(|e| panic!("check as {uid}: {e:?}"));
        report.warnings.into_iter().map(|w| w.rule).collect()
    };
    assert_eq!(check_as(A, None), ["UndefinedVar"]);
    assert_eq!(check_as(B, Some(A)), Vec::<String>::new());
    assert_eq!(check_as(B, None), Vec::<String>::new());
}
