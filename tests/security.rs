//! Attacks on a shared build host (issue 14), each run against a real daemon,
//! containerd and runc, each asserting the defence:
//!
//! - a stage holding `esc -> /host/dir` plus entries under `esc/`, bind-mounted
//!   into a RUN, never writes, creates or chmods anything on the host;
//! - a setuid binary a RUN leaves in a cache mount is out of reach of other
//!   host users (the data dir is 0700, whatever the daemon's umask), and cache
//!   mounts are nosuid,nodev in the step;
//! - `--mount=type=tmpfs` is a real tmpfs and honours `size=`;
//! - a `.dockerignore` linked to a file its user cannot read never shows that
//!   file in an error; a FIFO or device where a Dockerfile or ignore file is
//!   expected fails at once with a clear error, and the daemon keeps serving;
//! - `--socket-group` lets the group into the socket's directory;
//! - huge RUN output (one endless line, 100 MB of lines) is clipped per step
//!   and never breaks the client's connection.
//!
//! Needs root, `containerd`, `runc`, busybox-static; the `nobody` user and
//! `nogroup` group (Debian's defaults).

mod common;
use common::{busybox_context, ctl_as, BuildOutcome, Daemon};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

/// What a build may take at most in the input tests: "fails fast".
const GUARD: Duration = Duration::from_secs(20);

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `build --progress json` that must end within [`GUARD`]; panics otherwise.
fn build_within_guard(d: &Daemon, context: &Path, extra: &[&str]) -> (BuildOutcome, Duration) {
    let started = Instant::now();
    let child = d.spawn_build(context, extra);
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(GUARD) {
        Ok(out) => {
            let out = out.expect("memobuild-ctl output");
            let outcome = BuildOutcome {
                success: out.status.success(),
                events: String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            (outcome, started.elapsed())
        }
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!(
                "the build still ran after {GUARD:?}\n--- daemon log ---\n{}",
                d.log()
            );
        }
    }
}

/// The RUN output lines of a build, in order.
fn log_lines(out: &BuildOutcome) -> Vec<String> {
    out.events
        .iter()
        .filter(|e| e["event"] == "log" && e["step"].is_u64())
        .filter_map(|e| e["line"].as_str().map(String::from))
        .collect()
}

/// The daemon still answers and builds.
fn assert_serving(d: &Daemon) {
    let ctx = busybox_context("RUN echo still-serving\n", &[]);
    let out = d.build_ok(ctx.path(), &["--no-cache"]);
    assert!(
        log_lines(&out).iter().any(|l| l == "still-serving"),
        "{}",
        out.text()
    );
}

fn tar_append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    link: Option<&str>,
    data: &[u8],
) {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    if let Some(link) = link {
        header.set_link_name(link).expect("link name");
    }
    header.set_path(path).expect("path");
    header.set_cksum();
    tar.append(&header, data).expect("tar entry");
}

/// The tar-slip shapes of issue 14 item 0, aimed at `host` (a directory on the
/// host): through `esc` (top level) and `sub/esc` (below a bind source).
fn evil_tar(host: &Path) -> Vec<u8> {
    use tar::EntryType::{Directory, Regular, Symlink};
    let host = host.to_str().expect("utf-8 path");
    let mut tar = tar::Builder::new(Vec::new());
    tar_append(&mut tar, "ok.txt", Regular, 0o644, None, b"fine\n");
    tar_append(&mut tar, "esc", Symlink, 0o777, Some(host), b"");
    tar_append(&mut tar, "esc/pwned", Regular, 0o644, None, b"owned\n");
    tar_append(&mut tar, "esc/newdir", Directory, 0o777, None, b"");
    tar_append(&mut tar, "esc/existing", Directory, 0o777, None, b"");
    tar_append(&mut tar, "sub", Directory, 0o755, None, b"");
    tar_append(&mut tar, "sub/ok2.txt", Regular, 0o644, None, b"fine too\n");
    tar_append(&mut tar, "sub/esc", Symlink, 0o777, Some(host), b"");
    tar_append(
        &mut tar,
        "sub/esc/pwned2",
        Regular,
        0o4755,
        None,
        b"owned\n",
    );
    tar_append(&mut tar, "sub/esc/newdir2", Directory, 0o777, None, b"");
    tar.into_inner().expect("tar")
}

#[test]
fn a_bind_mount_from_a_stage_with_an_escaping_symlink_never_writes_on_the_host() {
    let host = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(host.path().join("existing")).expect("mkdir");
    chmod(&host.path().join("existing"), 0o700);
    chmod(host.path(), 0o755);
    let ctx = busybox_context(
        "FROM scratch AS evil
ADD evil.tar /
FROM base
RUN --mount=type=bind,from=evil,target=/m ls -la /m && cat /m/ok.txt
RUN --mount=type=bind,from=evil,source=sub,target=/s,rw cat /s/ok2.txt && ls -la /s
",
        &[],
    );
    std::fs::write(ctx.path().join("evil.tar"), evil_tar(host.path())).expect("write tar");
    let d = Daemon::start();
    let out = d.build_ok(ctx.path(), &[]);
    // The stage's real content is there, and its links are links.
    let lines = log_lines(&out);
    for wanted in ["fine", "fine too"] {
        assert!(lines.iter().any(|l| l == wanted), "{}", out.text());
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("esc -> ") && l.contains(host.path().to_str().unwrap())),
        "{}",
        out.text()
    );
    // Nothing was created in, nor changed on, the host directory.
    let mut names: Vec<String> = std::fs::read_dir(host.path())
        .expect("read host dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["existing"], "the build wrote on the host");
    assert_eq!(
        mode(&host.path().join("existing")),
        0o700,
        "chmodded on the host"
    );
    assert_eq!(mode(host.path()), 0o755, "chmodded on the host");
    assert!(
        std::fs::read_dir(host.path().join("existing"))
            .expect("read")
            .next()
            .is_none(),
        "the build wrote on the host"
    );
}

#[test]
fn a_setuid_binary_left_in_a_cache_mount_is_out_of_reach_of_other_users() {
    // umask 000: what the daemon creates must not depend on how it was started.
    let d = Daemon::start_with_umask("000", &[]);
    // Like /var/lib: the data dir's parent lets everyone through.
    chmod(d.dir.path(), 0o755);
    let ctx = busybox_context(
        "RUN --mount=type=cache,id=suid,target=/cache cp /bin/busybox /cache/sh && chmod 4755 /cache/sh && grep ' /cache ' /proc/self/mountinfo
RUN --mount=type=secret,id=s,target=/run/secrets/s grep ' /run/secrets/s ' /proc/self/mountinfo
",
        &[("s.txt", "a secret\n")],
    );
    let out = d.build_ok(
        ctx.path(),
        &[
            "--secret",
            &format!("id=s,src={}/s.txt", ctx.path().display()),
        ],
    );
    // Both mounts are nosuid and nodev in the step (mountinfo field 6: the
    // mount's own options).
    for target in ["/cache", "/run/secrets/s"] {
        let line = log_lines(&out)
            .into_iter()
            .find(|l| l.split_whitespace().nth(4) == Some(target))
            .unwrap_or_else(|| panic!("no mountinfo line for {target}:\n{}", out.text()));
        let options: Vec<&str> = line
            .split_whitespace()
            .nth(5)
            .expect("options")
            .split(',')
            .collect();
        for flag in ["nosuid", "nodev"] {
            assert!(options.contains(&flag), "{target} is not {flag}: {line}");
        }
    }
    // The binary is there, setuid root...
    let cache_root = d.data.join("cache-mounts");
    let dirs: Vec<_> = std::fs::read_dir(&cache_root)
        .expect("cache-mounts")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let binary = dirs[0].join("sh");
    let meta = std::fs::metadata(&binary).expect("the step's binary");
    assert!(
        meta.mode() & 0o4000 != 0 && meta.uid() == 0,
        "{:o}",
        meta.mode()
    );
    // ...and the data dir and the cache mounts' dir are root's alone.
    assert_eq!(mode(&d.data), 0o700);
    assert_eq!(mode(&cache_root), 0o700);
    for dir in ["blobs", "tmp", "logs", "containerd"] {
        let path = d.data.join(dir);
        assert!(
            mode(&path) & 0o077 == 0,
            "{} is {:o}",
            path.display(),
            mode(&path)
        );
    }
    // uid 65534 cannot reach it: not to list, not to run.
    for args in [
        vec!["ls", cache_root.to_str().unwrap()],
        vec!["ls", "-l", binary.to_str().unwrap()],
        vec![binary.to_str().unwrap(), "true"],
    ] {
        let (program, rest) = if args[0].starts_with('/') {
            (args[0], &args[1..])
        } else {
            ("/bin/busybox", &args[..])
        };
        let out = {
            use std::os::unix::process::CommandExt;
            Command::new(program)
                .args(rest)
                .uid(NOBODY)
                .gid(NOGROUP)
                .output()
        };
        let out = match out {
            // exec(2) itself refused: the path cannot be reached.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => continue,
            other => other.expect("run as nobody"),
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} as nobody succeeded");
        assert!(
            stderr.contains("Permission denied") || stderr.contains("permission denied"),
            "{args:?}: {stderr}"
        );
    }
    // The data dir stays 0700 across a restart that found it 0755.
    let mut d = d;
    d.stop();
    chmod(&d.data, 0o755);
    d.spawn();
    assert_eq!(mode(&d.data), 0o700);
}

#[test]
fn tmpfs_mounts_are_tmpfs_and_honour_size() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "RUN --mount=type=tmpfs,target=/t,size=1m grep ' /t ' /proc/self/mountinfo && (dd if=/dev/zero of=/t/big bs=1024 count=2048 2>/dev/null && echo FITS || echo FULL)
RUN --mount=type=tmpfs,target=/u grep ' /u ' /proc/self/mountinfo && touch /u/file && ls /u
",
        &[],
    );
    let out = d.build_ok(ctx.path(), &[]);
    let lines = log_lines(&out);
    let info = |target: &str| -> Vec<String> {
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().nth(4) == Some(target))
            .unwrap_or_else(|| panic!("no mountinfo line for {target}:\n{}", out.text()));
        // After " - ": fstype, source, super options.
        let (own, fs) = line.split_once(" - ").expect("mountinfo separator");
        let mut v: Vec<String> = fs.split_whitespace().map(String::from).collect();
        v.push(
            own.split_whitespace()
                .nth(5)
                .unwrap_or_default()
                .to_string(),
        );
        v
    };
    let t = info("/t");
    assert_eq!(t[0], "tmpfs", "{t:?}");
    assert!(t[2].split(',').any(|o| o == "size=1024k"), "{t:?}");
    assert!(t[3].contains("nosuid") && t[3].contains("nodev"), "{t:?}");
    assert!(
        lines.iter().any(|l| l == "FULL"),
        "2 MiB fit in a 1 MiB tmpfs:\n{}",
        out.text()
    );
    let u = info("/u");
    assert_eq!(u[0], "tmpfs", "{u:?}");
    assert!(lines.iter().any(|l| l == "file"), "{}", out.text());
    // Nothing of a tmpfs lands in the data dir.
    let tmp_entries = std::fs::read_dir(d.data.join("tmp")).expect("tmp").count();
    assert_eq!(tmp_entries, 0);
    // A bad size is a Dockerfile error with its position.
    let bad = busybox_context("RUN --mount=type=tmpfs,target=/t,size=lots true\n", &[]);
    let out = d.build(bad.path(), &[]);
    assert!(!out.success);
    let error = out.error().to_string();
    assert!(
        error.contains("invalid size") && error.contains("Dockerfile:4"),
        "{error}"
    );
}

/// A root-only file: a directory 0700 with a file 0600 in it.
fn root_only_file(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("secret"), text).expect("write");
    chmod(&dir.path().join("secret"), 0o600);
    chmod(dir.path(), 0o700);
    dir
}

#[test]
fn a_dockerignore_linked_to_a_root_only_file_never_shows_it() {
    let d = Daemon::start_with(&["--allowed-users", "nobody"]);
    d.open_socket_to_all();
    // A first line that is a malformed pattern, as a password hash may be.
    let secret = root_only_file("TOPSECRET-4f2a[x\nTOPSECRET-second-line\n");
    let ctx = busybox_context("RUN true\n", &[]);
    std::os::unix::fs::symlink(
        secret.path().join("secret"),
        ctx.path().join(".dockerignore"),
    )
    .expect("symlink");
    let args = ["build", "--progress", "plain", ctx.path().to_str().unwrap()];
    let out = ctl_as(NOBODY, NOGROUP, &d.socket, &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    // Read with the user's rights (tests/user_reads.rs), the file is not read at all.
    assert!(
        text.contains(".dockerignore") && text.contains("Permission denied"),
        "{text}"
    );
    assert!(
        !text.contains("TOPSECRET"),
        "the error shows the file: {text}"
    );
    assert!(!d.log().contains("TOPSECRET"), "the log shows the file");
    // The same with /etc/shadow: whatever the outcome, none of its lines shows.
    let ctx = busybox_context("RUN true\n", &[]);
    std::os::unix::fs::symlink("/etc/shadow", ctx.path().join(".dockerignore")).expect("symlink");
    let args = ["build", "--progress", "plain", ctx.path().to_str().unwrap()];
    let out = ctl_as(NOBODY, NOGROUP, &d.socket, &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let shadow = std::fs::read_to_string("/etc/shadow").expect("read /etc/shadow");
    for line in shadow.lines().filter(|l| !l.trim().is_empty()) {
        assert!(!text.contains(line), "a line of /etc/shadow shows: {text}");
        let name_and_hash: String = line.split(':').take(2).collect::<Vec<_>>().join(":");
        assert!(!text.contains(&name_and_hash), "{text}");
    }
}

#[test]
fn fifos_and_devices_as_dockerfile_or_ignore_file_fail_fast() {
    let d = Daemon::start();
    // .dockerignore as a FIFO: nobody ever writes to it.
    let ctx = busybox_context("RUN true\n", &[]);
    let fifo = ctx.path().join(".dockerignore");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    let (out, took) = build_within_guard(&d, ctx.path(), &[]);
    assert!(!out.success, "{}", out.text());
    let error = out.error().to_string();
    assert!(
        error.contains(".dockerignore is a FIFO (named pipe), not a regular file"),
        "{error}"
    );
    assert!(took < GUARD);

    // -f /dev/zero.
    let ctx = busybox_context("RUN true\n", &[]);
    let (out, _) = build_within_guard(&d, ctx.path(), &["-f", "/dev/zero"]);
    assert!(!out.success, "{}", out.text());
    let error = out.error().to_string();
    assert!(
        error.contains("/dev/zero is a character device, not a regular file"),
        "{error}"
    );

    // The Dockerfile a symlink to /dev/zero.
    let ctx = busybox_context("RUN true\n", &[]);
    std::fs::remove_file(ctx.path().join("Dockerfile")).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", ctx.path().join("Dockerfile")).expect("symlink");
    let (out, _) = build_within_guard(&d, ctx.path(), &[]);
    assert!(!out.success, "{}", out.text());
    let error = out.error().to_string();
    assert!(error.contains("character device"), "{error}");

    // A Dockerfile over the cap: a clear error, not a daemon holding it all.
    let ctx = busybox_context("RUN true\n", &[]);
    let mut big = std::fs::read_to_string(ctx.path().join("Dockerfile")).expect("read");
    let comment = format!("# {}\n", "x".repeat(1 << 20));
    while big.len() <= 16 << 20 {
        big.push_str(&comment);
    }
    std::fs::write(ctx.path().join("Dockerfile"), big).expect("write");
    let (out, _) = build_within_guard(&d, ctx.path(), &[]);
    assert!(!out.success, "{}", out.text());
    let error = out.error().to_string();
    assert!(error.contains("at most 16777216 bytes are read"), "{error}");

    // And a .dockerignore over 1 MiB.
    let ctx = busybox_context("RUN true\n", &[]);
    std::fs::write(ctx.path().join(".dockerignore"), "x\n".repeat(600 << 10)).expect("write");
    let (out, _) = build_within_guard(&d, ctx.path(), &[]);
    assert!(!out.success, "{}", out.text());
    let error = out.error().to_string();
    assert!(error.contains("at most 1048576 bytes are read"), "{error}");

    assert_serving(&d);
}

#[test]
fn the_socket_group_can_reach_the_socket() {
    let d = Daemon::start_with(&["--socket-group", "nogroup"]);
    // Only the test's own temp dir is opened up; the socket's directory and the
    // socket keep what the daemon gave them.
    chmod(d.dir.path(), 0o755);
    let run = d.socket.parent().expect("socket dir");
    let meta = std::fs::metadata(run).expect("socket dir");
    assert_eq!(meta.mode() & 0o7777, 0o750);
    assert_eq!(meta.gid(), NOGROUP);
    let out = ctl_as(NOBODY, NOGROUP, &d.socket, &["status"]);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    // Others still cannot enter it.
    let out = ctl_as(4242, 4242, &d.socket, &["status"]);
    assert!(!out.status.success());
}

/// Output a step could use to exhaust the daemon (issue 14, items 7 and 10):
/// a 64 MB line without a newline and 100 MB of ordinary lines. The build
/// succeeds, the client keeps its connection, each step's log is clipped at
/// BuildKit's 2 MiB with BuildKit's marker, and long lines arrive in pieces.
#[test]
fn huge_run_output_is_clipped_and_never_breaks_the_connection() {
    let d = Daemon::start();
    let ctx = busybox_context(
        "RUN head -c 64000000 /dev/zero | tr '\\0' a\n\
         RUN head -c 100000000 /dev/zero | tr '\\0' '\\n' | sed 's/^/line/'\n",
        &[],
    );
    let out = d.build_ok(ctx.path(), &[]);
    let lines = log_lines(&out);
    let clipped: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("[output clipped"))
        .collect();
    assert_eq!(
        clipped,
        vec!["[output clipped, log limit 2MiB reached]"; 2],
        "one marker per step"
    );
    let total: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert!(
        total <= 2 * (2 << 20) + 4096,
        "{total} bytes of log for two steps"
    );
    let longest = lines.iter().map(String::len).max().unwrap_or(0);
    assert_eq!(
        longest,
        16 * 1024,
        "the 64 MB line arrives in 16 KiB pieces"
    );
    assert_serving(&d);
}

/// A secret mounted for a step that runs as uid 1234 is readable in the step,
/// and not by host uid 1234 while the step runs (issue 14, item 4): the file
/// lives in a 0700 directory only the daemon enters.
#[test]
fn a_secret_is_not_readable_on_the_host_by_the_step_uid() {
    let d = Daemon::start();
    let secrets = tempfile::tempdir().unwrap();
    let src = secrets.path().join("tok");
    std::fs::write(&src, "s3cret-token-for-1234").unwrap();
    let ctx = busybox_context(
        "RUN --mount=type=secret,id=tok,uid=1234 \
         cat /run/secrets/tok > /dev/null && echo read-in-step && sleep 4\n",
        &[],
    );
    let secret_arg = format!("id=tok,src={}", src.display());
    let child = d.spawn_build(ctx.path(), &["--secret", &secret_arg]);
    // While the step sleeps, the host side of the secret exists: look for it
    // as uid 1234.
    let deadline = Instant::now() + GUARD;
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        let dirs: Vec<_> = std::fs::read_dir("/dev/shm")
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        for dir in dirs.iter().filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("memobuild-secret-"))
        }) {
            seen = true;
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
            let read = Command::new("setpriv")
                .args(["--reuid=1234", "--regid=1234", "--clear-groups", "cat"])
                .arg(dir.join("secret"))
                .output()
                .expect("setpriv (util-linux)");
            assert!(!read.status.success(), "host uid 1234 read the secret");
            assert!(!String::from_utf8_lossy(&read.stdout).contains("s3cret"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        seen,
        "the step's secret directory never appeared in /dev/shm"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("read-in-step"));
}
