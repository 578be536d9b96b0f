//! `build --ssh default|ID[=SOCKET|KEY[,KEY...]]` (as `docker buildx build
//! --ssh`): the client's half of ssh forwarding (`memobuild_proto::sshfwd`).
//! The client holds a session open with the daemon for the build; each time
//! a step connects to an agent socket, the daemon asks for a connection and
//! the client connects to its own agent (with its own rights) and sends the
//! connected descriptor. Key files are loaded into a private `ssh-agent`
//! (OpenSSH's, run as the user) that lives as long as the build.

use memobuild_proto::sshfwd::{self, CONNECT, MAGIC, SENT, TOKEN_BYTES};
use memobuild_proto::{RpcError, SshForward};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the daemon gets to answer a new session.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a private ssh-agent gets to create its socket.
const AGENT_START: Duration = Duration::from_secs(10);

/// What one `--ssh` id forwards.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// An agent's socket.
    Socket(PathBuf),
    /// Private key files, for a private agent.
    Keys(Vec<PathBuf>),
}

/// The ids of `--ssh` specs and what each forwards (buildx's rules: no paths
/// means `$SSH_AUTH_SOCK`; one socket, or key files).
fn parse(specs: &[String]) -> Result<BTreeMap<String, Source>, RpcError> {
    let mut out = BTreeMap::new();
    for spec in specs {
        let (id, paths) = match spec.split_once('=') {
            Some((id, paths)) => (id, paths.split(',').filter(|p| !p.is_empty()).collect()),
            None => (spec.as_str(), Vec::new()),
        };
        if id.is_empty() || id.len() > 255 {
            return Err(RpcError::with_hint(
                format!("--ssh {spec:?}: the id must be 1 to 255 bytes"),
                "use --ssh default, --ssh ID=SOCKET or --ssh ID=KEYFILE[,KEYFILE]",
            ));
        }
        let source = if paths.is_empty() {
            match std::env::var_os("SSH_AUTH_SOCK").filter(|s| !s.is_empty()) {
                Some(sock) => Source::Socket(PathBuf::from(sock)),
                None => {
                    return Err(RpcError::with_hint(
                        format!("--ssh {spec}: SSH_AUTH_SOCK is not set, so there is no agent to forward"),
                        "start an agent (eval $(ssh-agent); ssh-add), or name a socket or key: --ssh ID=PATH",
                    ))
                }
            }
        } else {
            classify(id, &paths)?
        };
        if out.insert(id.to_string(), source).is_some() {
            return Err(RpcError::with_hint(
                format!("--ssh: id {id} is given twice"),
                "give each id once (several keys of one id go in one flag: --ssh ID=KEY1,KEY2)",
            ));
        }
    }
    Ok(out)
}

fn classify(id: &str, paths: &[&str]) -> Result<Source, RpcError> {
    let mut sockets = 0;
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| {
            RpcError::with_hint(
                format!("--ssh {id}: {p}: {e}"),
                "name an agent socket or a private key file",
            )
        })?;
        if meta.file_type().is_socket() {
            sockets += 1;
        }
    }
    match sockets {
        0 => Ok(Source::Keys(paths.iter().map(PathBuf::from).collect())),
        1 if paths.len() == 1 => Ok(Source::Socket(PathBuf::from(paths[0]))),
        _ => Err(RpcError::with_hint(
            format!("--ssh {id}: an agent socket cannot be combined with other paths"),
            "forward one socket, or key files, per id",
        )),
    }
}

/// A private `ssh-agent` holding key files; stopped when dropped.
struct KeyAgent {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for KeyAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn missing_openssh(what: &str, e: std::io::Error) -> RpcError {
    RpcError::with_hint(
        format!("--ssh with key files runs {what}, which cannot start: {e}"),
        "install OpenSSH's client tools (Debian/Ubuntu: apt-get install openssh-client), or forward a running agent: --ssh ID=$SSH_AUTH_SOCK",
    )
}

impl KeyAgent {
    fn start(id: &str, keys: &[PathBuf]) -> Result<KeyAgent, RpcError> {
        let dir = tempfile::Builder::new()
            .prefix("memobuild-ssh-")
            .tempdir()
            .map_err(|e| RpcError::new(format!("--ssh {id}: creating a directory: {e}")))?;
        let socket = dir.path().join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| missing_openssh("ssh-agent", e))?;
        let agent = KeyAgent {
            child,
            socket,
            _dir: dir,
        };
        let started = Instant::now();
        while UnixStream::connect(&agent.socket).is_err() {
            if started.elapsed() > AGENT_START {
                return Err(RpcError::new(format!(
                    "--ssh {id}: ssh-agent did not start in {}s",
                    AGENT_START.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // ssh-add asks for a passphrase on the terminal (or SSH_ASKPASS).
        let added = Command::new("ssh-add")
            .arg("-q")
            .args(keys)
            .env("SSH_AUTH_SOCK", &agent.socket)
            .stdout(Stdio::null())
            .output()
            .map_err(|e| missing_openssh("ssh-add", e))?;
        if !added.status.success() {
            return Err(RpcError::with_hint(
                format!(
                    "--ssh {id}: ssh-add could not load {}: {}",
                    keys.iter()
                        .map(|k| k.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    String::from_utf8_lossy(&added.stderr).trim()
                ),
                "name private key files in OpenSSH or PEM format (a passphrase is asked for on the terminal)",
            ));
        }
        Ok(agent)
    }
}

/// An open forwarding session; it ends (and private agents stop) when dropped.
pub struct Forwarding {
    conn: UnixStream,
    _agents: Vec<KeyAgent>,
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
    }
}

/// Starts forwarding `specs` over a session with the daemon at `socket`: the
/// request's `ssh` field and the guard that keeps the session open.
pub fn forward(socket: &Path, specs: &[String]) -> Result<(SshForward, Forwarding), RpcError> {
    let sources = parse(specs)?;
    let mut agents = Vec::new();
    let mut sockets = BTreeMap::new();
    for (id, source) in &sources {
        let path = match source {
            Source::Socket(path) => {
                UnixStream::connect(path).map_err(|e| {
                    RpcError::with_hint(
                        format!("--ssh {id}: cannot connect to the agent at {}: {e}", path.display()),
                        "check that the agent runs (ssh-add -l) and SSH_AUTH_SOCK or the path is right",
                    )
                })?;
                path.clone()
            }
            Source::Keys(keys) => {
                let agent = KeyAgent::start(id, keys)?;
                let path = agent.socket.clone();
                agents.push(agent);
                path
            }
        };
        sockets.insert(id.clone(), path);
    }
    let session_failed = |e: std::io::Error| {
        RpcError::new(format!(
            "--ssh: cannot open an ssh forwarding session with memobuildd at {}: {e}",
            socket.display()
        ))
    };
    let mut conn = UnixStream::connect(socket).map_err(session_failed)?;
    conn.set_read_timeout(Some(HELLO_TIMEOUT))
        .map_err(session_failed)?;
    conn.write_all(&MAGIC).map_err(session_failed)?;
    let mut token = [0u8; 2 * TOKEN_BYTES];
    conn.read_exact(&mut token).map_err(session_failed)?;
    let token = String::from_utf8_lossy(&token).into_owned();
    if !sshfwd::is_token(&token) {
        return Err(RpcError::new(
            "--ssh: memobuildd answered the ssh forwarding session with something other than a token",
        ));
    }
    conn.set_read_timeout(None).map_err(session_failed)?;
    let serving = conn.try_clone().map_err(session_failed)?;
    std::thread::spawn(move || serve(serving, sockets));
    let ids = sources.keys().cloned().collect();
    Ok((
        SshForward { token, ids },
        Forwarding {
            conn,
            _agents: agents,
        },
    ))
}

/// Answers the daemon's requests for agent connections until the session ends.
fn serve(mut conn: UnixStream, sockets: BTreeMap<String, PathBuf>) {
    loop {
        let mut head = [0u8; 2];
        if conn.read_exact(&mut head).is_err() || head[0] != CONNECT {
            return;
        }
        let mut id = vec![0u8; usize::from(head[1])];
        if conn.read_exact(&mut id).is_err() {
            return;
        }
        let id = String::from_utf8_lossy(&id).into_owned();
        let answered = match sockets.get(&id) {
            None => conn.write_all(&sshfwd::refusal(&format!(
                "the client forwards no ssh agent {id:?}"
            ))),
            Some(path) => match UnixStream::connect(path) {
                Ok(agent) => send_fd(&conn, &agent),
                Err(e) => conn.write_all(&sshfwd::refusal(&format!(
                    "cannot connect to {}: {e}",
                    path.display()
                ))),
            },
        };
        if answered.is_err() {
            return;
        }
    }
}

/// The byte [`SENT`] carrying `agent`'s descriptor.
fn send_fd(conn: &UnixStream, agent: &UnixStream) -> std::io::Result<()> {
    memobuild_proto::fds::send(conn, SENT, &[agent.as_fd()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_as_buildx() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "k").unwrap();
        let s = sock.display().to_string();
        let k = key.display().to_string();
        let parsed = parse(&[format!("a={s}"), format!("b={k},{k}")]).unwrap();
        assert_eq!(parsed["a"], Source::Socket(sock.clone()));
        assert_eq!(parsed["b"], Source::Keys(vec![key.clone(), key.clone()]));
        assert!(
            parse(&[format!("a={s},{k}")]).is_err(),
            "socket and key mixed"
        );
        assert!(
            parse(&[format!("a={s}"), format!("a={s}")]).is_err(),
            "id twice"
        );
        assert!(parse(&[format!("a={}/missing", dir.path().display())]).is_err());
        assert!(parse(&[format!("={s}")]).is_err(), "empty id");
    }
}
