//! `RUN --mount=type=ssh` with `build --ssh` (docs/SECURITY.md, "ssh
//! agents") against a real daemon, containerd, runc and OpenSSH's
//! `ssh-agent`: a step talks to the client's agent through the mount (a
//! static agent-protocol client lists the keys the agent holds), the step's
//! key does not depend on which agent is forwarded, `required=` fails
//! without one, and one user cannot reach another's agent. Needs
//! containerd, runc, busybox-static, gcc with libc6-dev, and openssh-client.

mod common;
use common::{busybox_context, oci_file, Agent, BuildOutcome, Daemon};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const A: u32 = 4242;
const B: u32 = 65534;

/// Lists the identities of the agent at `argv[1]` (else `$SSH_AUTH_SOCK`):
/// `keys N`, then each key's comment (SSH_AGENTC_REQUEST_IDENTITIES).
const AGENT_LS: &str = r#"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
static int readn(int fd, unsigned char *b, size_t n) {
  size_t got = 0;
  while (got < n) { ssize_t r = read(fd, b + got, n - got); if (r <= 0) return -1; got += r; }
  return 0;
}
static uint32_t be32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
int main(int argc, char **argv) {
  const char *path = argc > 1 ? argv[1] : getenv("SSH_AUTH_SOCK");
  if (!path) { puts("no SSH_AUTH_SOCK"); return 2; }
  int s = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
  strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 3; }
  unsigned char req[5] = {0, 0, 0, 1, 11};
  if (write(s, req, 5) != 5) { perror("write"); return 4; }
  unsigned char h[4];
  if (readn(s, h, 4)) { puts("no answer"); return 5; }
  uint32_t len = be32(h);
  if (len < 5 || len > 1 << 20) return 6;
  unsigned char *m = malloc(len);
  if (!m || readn(s, m, len)) return 6;
  if (m[0] != 12) { printf("answer %d\n", m[0]); return 7; }
  uint32_t n = be32(m + 1); size_t off = 5;
  printf("keys %u\n", n);
  for (uint32_t i = 0; i < n; i++) {
    if (off + 4 > len) return 8;
    off += 4 + be32(m + off);
    if (off + 4 > len) return 8;
    uint32_t cl = be32(m + off); off += 4;
    if (off + cl > len) return 8;
    printf("%.*s\n", (int)cl, m + off); off += cl;
  }
  return 0;
}
"#;

fn compile_agent_ls(dir: &Path) {
    common::compile_static(dir, "agentls", AGENT_LS);
}

fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A context whose step lists the forwarded agent's keys into /keys.
fn listing_context(mount: &str) -> tempfile::TempDir {
    let ctx = busybox_context(
        &format!("COPY agentls /agentls\nRUN --mount=type=ssh{mount} /agentls > /keys; echo \"status $?\" >> /keys\n"),
        &[],
    );
    compile_agent_ls(ctx.path());
    ctx
}

/// Builds `ctx` into an OCI archive; returns the outcome and /keys.
fn build_keys(d: &Daemon, ctx: &Path, extra: &[&str]) -> (BuildOutcome, String) {
    let out_dir = tempfile::tempdir().unwrap();
    let archive = out_dir.path().join("out.tar");
    let dest = format!("type=oci,dest={}", archive.display());
    let mut args = extra.to_vec();
    args.extend(["-o", &dest]);
    let out = d.build_ok(ctx, &args);
    let keys = oci_file(&archive, "keys").expect("/keys in the image");
    (out, String::from_utf8(keys).unwrap())
}

#[test]
fn a_step_lists_the_keys_of_the_forwarded_agent_and_its_key_ignores_the_socket() {
    let d = Daemon::start();
    let comment = format!("memobuild-ssh-test-{}", unique());
    let agent = Agent::start(0, Some(&comment));
    let ctx = listing_context("");
    let ssh = format!("default={}", agent.socket.display());
    let (first, keys) = build_keys(&d, ctx.path(), &["--ssh", &ssh]);
    assert_eq!(
        keys,
        format!("keys 1\n{comment}\nstatus 0\n"),
        "{}",
        first.text()
    );

    // Another agent (no keys) forwarded: the step's key is the same, so the
    // step is cached, as in BuildKit (the socket is not an input).
    let other = Agent::start(0, None);
    let ssh = format!("default={}", other.socket.display());
    let (again, keys) = build_keys(&d, ctx.path(), &["--ssh", &ssh]);
    assert!(
        again.cached().iter().any(|s| s.contains("agentls >")),
        "{}",
        again.text()
    );
    assert!(keys.contains(&comment));
    // With --no-cache it runs again and sees the other agent.
    let (_, keys) = build_keys(&d, ctx.path(), &["--ssh", &ssh, "--no-cache"]);
    assert_eq!(keys, "keys 0\nstatus 0\n");
    // Without --ssh an optional mount is absent: the step runs without it.
    let (_, keys) = build_keys(&d, ctx.path(), &["--no-cache"]);
    // ($SSH_AUTH_SOCK is still set, as BuildKit sets it; connect fails.)
    assert_eq!(keys, "status 3\n", "optional mount without --ssh");
}

#[test]
fn default_comes_from_ssh_auth_sock_and_key_files_go_through_a_private_agent() {
    let d = Daemon::start();
    let comment = format!("memobuild-ssh-default-{}", unique());
    let agent = Agent::start(0, Some(&comment));
    // A key file for id `deploy`, loaded by the client into its own ssh-agent.
    let keydir = tempfile::tempdir().unwrap();
    let key = keydir.path().join("deploy_key");
    let key_comment = format!("memobuild-ssh-keyfile-{}", unique());
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", &key_comment, "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let ctx = busybox_context(
        "COPY agentls /agentls\nRUN --mount=type=ssh --mount=type=ssh,id=deploy,target=/deploy.sock sh -c '/agentls > /keys; /agentls /deploy.sock >> /keys'\n",
        &[],
    );
    compile_agent_ls(ctx.path());
    let out_dir = tempfile::tempdir().unwrap();
    let archive = out_dir.path().join("out.tar");
    let deploy = format!("deploy={}", key.display());
    let out = Command::new(common::bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args([
            "build",
            "--progress",
            "json",
            "--ssh",
            "default",
            "--ssh",
            &deploy,
        ])
        .arg("-o")
        .arg(format!("type=oci,dest={}", archive.display()))
        .arg(ctx.path())
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output()
        .unwrap();
    let out = BuildOutcome::from_output(out);
    assert!(out.success, "{}\n{}", out.text(), d.log());
    let keys = String::from_utf8(oci_file(&archive, "keys").unwrap()).unwrap();
    assert_eq!(keys, format!("keys 1\n{comment}\nkeys 1\n{key_comment}\n"));
}

/// BuildKit: "no SSH key default forwarded from the client".
#[test]
fn a_required_agent_that_is_not_forwarded_fails_the_step() {
    let d = Daemon::start();
    let ctx = busybox_context("RUN --mount=type=ssh,required=true true\n", &[]);
    let out = d.build(ctx.path(), &[]);
    assert!(!out.success, "{}", out.text());
    let message = out.error()["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("no SSH key \"default\" forwarded from the client"),
        "{}",
        out.text()
    );
    // A missing $SSH_AUTH_SOCK is the client's error.
    let bare = Command::new(common::bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["build", "--ssh", "default"])
        .arg(ctx.path())
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap();
    assert!(!bare.status.success());
    assert!(
        String::from_utf8_lossy(&bare.stderr).contains("SSH_AUTH_SOCK is not set"),
        "{bare:?}"
    );
}

#[test]
fn one_user_cannot_reach_another_users_agent() {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    let (d, _config) = Daemon::start_shared(&[A, B]);
    let comment = format!("memobuild-ssh-owner-{}", unique());
    let agent = Agent::start(A, Some(&comment));
    let ctx = listing_context("");
    let a_sock = format!("default={}", agent.socket.display());

    // B names A's socket: B's own client cannot connect to it, and the
    // daemon never opens a path for a client.
    let out = common::ctl_as(
        B,
        B,
        &d.socket,
        &["build", "--ssh", &a_sock, ctx.path().to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "B's build with A's agent succeeded");
    assert!(
        err.contains(&format!("--ssh default: {}", agent.socket.display()))
            && err.contains("Permission denied"),
        "{err}"
    );

    // A's own build reaches it.
    let out_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(out_dir.path(), Some(A), Some(A)).unwrap();
    let archive = out_dir.path().join("out.tar");
    let dest = format!("type=oci,dest={}", archive.display());
    let out = common::ctl_as(
        A,
        A,
        &d.socket,
        &[
            "build",
            "--ssh",
            &a_sock,
            "-o",
            &dest,
            ctx.path().to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    let keys = String::from_utf8(oci_file(&archive, "keys").unwrap()).unwrap();
    assert_eq!(keys, format!("keys 1\n{comment}\nstatus 0\n"));

    // A session is bound to the uid that opened it: B's request naming A's
    // session is refused, A's is taken.
    let socket = d.socket.clone();
    let (session, token) = common::as_uid(A, move || {
        let mut s = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        s.write_all(&memobuild_proto::sshfwd::MAGIC).unwrap();
        let mut token = [0u8; 32];
        s.read_exact(&mut token).unwrap();
        (s, String::from_utf8(token.to_vec()).unwrap())
    });
    let plain = busybox_context("", &[]);
    let request = memobuild_proto::BuildRequest {
        context: plain.path().display().to_string(),
        ssh: Some(memobuild_proto::SshForward {
            token: token.clone(),
            ids: vec!["default".into()],
        }),
        ..Default::default()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = common::client_as(&rt, &d.socket, B);
    let refused = rt
        .block_on(b.start_build(tarpc::context::current(), request.clone()))
        .unwrap();
    match refused {
        Ok(id) => panic!("B's build with A's ssh session started: {id}"),
        Err(e) => assert_eq!(e.kind, memobuild_proto::ErrorKind::InvalidInput, "{e:?}"),
    }
    let a = common::client_as(&rt, &d.socket, A);
    let taken = rt
        .block_on(a.start_build(tarpc::context::current(), request.clone()))
        .unwrap();
    assert!(taken.is_ok(), "{taken:?}");
    // Closed: the token is gone for A too.
    session.shutdown(std::net::Shutdown::Both).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let again = rt
            .block_on(a.start_build(tarpc::context::current(), request.clone()))
            .unwrap();
        if again.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed session's token still works"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // While A's step runs, the daemon's socket for it is in a directory only
    // root enters: B cannot connect to it on the host.
    let slow = busybox_context("RUN --mount=type=ssh sleep 5\n", &[]);
    let mut child = Command::new(common::bin_dir().join("memobuild-ctl"))
        .arg("--socket")
        .arg(&d.socket)
        .args(["build", "--ssh", &a_sock])
        .arg(slow.path())
        .uid(A)
        .gid(A)
        .current_dir("/")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let proxy = loop {
        let found = std::fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .find_map(|e| {
                let p = e.path().join("agent.sock");
                (e.file_name()
                    .to_string_lossy()
                    .starts_with("memobuild-secret-")
                    && p.exists())
                .then_some(p)
            });
        if let Some(p) = found {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "no agent socket appeared\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let tried = common::as_uid(B, move || {
        std::os::unix::net::UnixStream::connect(&proxy).map(|_| ())
    });
    let e = tried.expect_err("B connected to the socket of A's step");
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    assert!(child.wait().unwrap().success(), "{}", d.log());
}

/// A step that used an agent is keyed on the user whose agents answered
/// (memobuild_plan::SSH_USER): B's build of the same step runs it with B's
/// agent instead of taking A's cached result, which may hold what only A's
/// keys could fetch (BuildKit would reuse it). A's own rebuild stays cached.
#[test]
fn another_users_build_does_not_reuse_a_step_that_used_an_agent() {
    let (d, _config) = Daemon::start_shared(&[A, B]);
    let (a_comment, b_comment) = (format!("a-{}", unique()), format!("b-{}", unique()));
    let (a_agent, b_agent) = (
        Agent::start(A, Some(&a_comment)),
        Agent::start(B, Some(&b_comment)),
    );
    let ctx = listing_context("");
    let build = |uid: u32, agent: &Agent| {
        let (outcome, archive, _out_dir) =
            common::build_as_with_agent(uid, &d.socket, &agent.socket, ctx.path());
        assert!(outcome.success, "{}\n{}", outcome.text(), d.log());
        let keys = String::from_utf8(oci_file(&archive, "keys").unwrap()).unwrap();
        (outcome, keys)
    };
    let (first, keys) = build(A, &a_agent);
    assert!(
        first.executed().iter().any(|s| s.contains("agentls")),
        "{}",
        first.text()
    );
    assert_eq!(keys, format!("keys 1\n{a_comment}\nstatus 0\n"));

    let (other, keys) = build(B, &b_agent);
    assert!(
        other.executed().iter().any(|s| s.contains("agentls")),
        "B reused A's step: {}",
        other.text()
    );
    assert_eq!(keys, format!("keys 1\n{b_comment}\nstatus 0\n"));

    let (again, keys) = build(A, &a_agent);
    assert!(
        again.cached().iter().any(|s| s.contains("agentls")),
        "{}",
        again.text()
    );
    assert_eq!(keys, format!("keys 1\n{a_comment}\nstatus 0\n"));
}
