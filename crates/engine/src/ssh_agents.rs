//! The client's ssh agents for `RUN --mount=type=ssh` (`build --ssh`; the
//! protocol is in `memobuild_proto::sshfwd`, the reasoning in
//! docs/SECURITY.md, "ssh agents").
//!
//! A client holds a forwarding session open for its build. A step that mounts
//! an agent gets a socket of the daemon's (in a directory only root enters,
//! bind-mounted at the mount's target, with the mount's owner and mode);
//! each connection a process of the step makes to it is answered by asking
//! the client, over its session, for a new connection to its agent: the
//! client connects with its own rights and sends the connected descriptor,
//! and the daemon copies bytes between the two. The daemon never opens a
//! path a client names, so no user reaches a socket they could not reach
//! themselves.

use crate::Engine;
use memobuild_proto::sshfwd::{self, MAGIC, REFUSED, SENT, TOKEN_BYTES};
use memobuild_proto::{BuildRequest, ErrorKind, RpcError};
use parking_lot::Mutex;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// How long a new session gets to send its first bytes.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the client gets to answer a request for a connection.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Sessions open at most per uid; beyond, new ones are refused.
const MAX_SESSIONS_PER_UID: usize = 64;

/// A request for a connection to one agent, and where its answer goes.
struct Ask {
    id: String,
    reply: oneshot::Sender<Result<OwnedFd, String>>,
}

struct Session {
    uid: u32,
    asks: mpsc::Sender<Ask>,
}

/// The forwarding sessions open, by token.
#[derive(Default)]
pub(crate) struct SshSessions {
    open: Mutex<HashMap<String, Session>>,
}

/// One forwarded agent of a build, as a step's mount uses it.
#[derive(Clone)]
pub(crate) struct Agent {
    id: String,
    asks: mpsc::Sender<Ask>,
}

impl Agent {
    /// A new connection to the client's agent.
    async fn connect(&self) -> Result<OwnedFd, String> {
        let (reply, answer) = oneshot::channel();
        let ask = Ask {
            id: self.id.clone(),
            reply,
        };
        if self.asks.send(ask).await.is_err() {
            return Err("the client's ssh forwarding session has ended".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Err("the client's ssh forwarding session has ended".into()))
    }
}

fn session_ended() -> RpcError {
    RpcError::of(
        ErrorKind::InvalidInput,
        "--ssh: the client's ssh forwarding session is not open (it ended, or belongs to another user)",
    )
    .hint("run the build again; memobuild-ctl keeps the session open while the build runs")
}

impl SshSessions {
    /// Checks the request's `ssh` before its build starts: a session of the
    /// requesting uid, and ids a session can name.
    pub(crate) fn check(&self, request: &BuildRequest) -> Result<(), RpcError> {
        let Some(ssh) = &request.ssh else {
            return Ok(());
        };
        if let Some(id) = ssh.ids.iter().find(|id| id.is_empty() || id.len() > 255) {
            return Err(
                RpcError::of(ErrorKind::InvalidInput, format!("--ssh: invalid id {id:?}")).hint(
                    "an id is 1 to 255 bytes, e.g. --ssh default or --ssh github=$SSH_AUTH_SOCK",
                ),
            );
        }
        let owner = request.owner.unwrap_or(0);
        match self.open.lock().get(&ssh.token) {
            Some(s) if s.uid == owner => Ok(()),
            _ => Err(session_ended()),
        }
    }

    /// The agent `id` of `request`'s build: `None` when the client forwards
    /// no such id; an error when it does but its session is gone.
    pub(crate) fn agent(
        &self,
        request: &BuildRequest,
        id: &str,
    ) -> Result<Option<Agent>, RpcError> {
        let Some(ssh) = &request.ssh else {
            return Ok(None);
        };
        if !ssh.ids.iter().any(|i| i == id) {
            return Ok(None);
        }
        let owner = request.owner.unwrap_or(0);
        match self.open.lock().get(&ssh.token) {
            Some(s) if s.uid == owner => Ok(Some(Agent {
                id: id.to_string(),
                asks: s.asks.clone(),
            })),
            _ => Err(session_ended()),
        }
    }
}

impl Engine {
    /// Serves one ssh forwarding connection from `uid` (already allowed by
    /// access control) until either side closes it.
    pub async fn serve_ssh_session(self: &Arc<Self>, mut conn: UnixStream, uid: u32) {
        let mut magic = [0u8; MAGIC.len()];
        match tokio::time::timeout(HELLO_TIMEOUT, conn.read_exact(&mut magic)).await {
            Ok(Ok(_)) if magic == MAGIC => {}
            _ => return,
        }
        let mut bytes = [0u8; TOKEN_BYTES];
        if getrandom::getrandom(&mut bytes).is_err() {
            return;
        }
        let token = hex::encode(bytes);
        let (asks, mut rx) = mpsc::channel::<Ask>(16);
        {
            let mut open = self.ssh.open.lock();
            if open.values().filter(|s| s.uid == uid).count() >= MAX_SESSIONS_PER_UID {
                tracing::warn!(uid, "refused an ssh forwarding session: too many open");
                return;
            }
            open.insert(token.clone(), Session { uid, asks });
        }
        if conn.write_all(token.as_bytes()).await.is_ok() {
            tracing::debug!(uid, "ssh forwarding session opened");
            session(&mut conn, &mut rx).await;
        }
        self.ssh.open.lock().remove(&token);
        tracing::debug!(uid, "ssh forwarding session closed");
    }
}

/// Answers asks over `conn` until the client closes it or sends something
/// out of turn.
async fn session(conn: &mut UnixStream, rx: &mut mpsc::Receiver<Ask>) {
    loop {
        tokio::select! {
            ask = rx.recv() => {
                let Some(ask) = ask else { return };
                let answer = match sshfwd::connect_request(&ask.id) {
                    Some(request) => {
                        match tokio::time::timeout(ANSWER_TIMEOUT, exchange(conn, &request)).await {
                            Ok(Ok(answer)) => answer,
                            Ok(Err(e)) => {
                                let _ = ask.reply.send(Err(format!("the client's ssh forwarding session failed: {e}")));
                                return;
                            }
                            Err(_) => {
                                let _ = ask.reply.send(Err("the client did not answer for its ssh agent in time".into()));
                                return;
                            }
                        }
                    }
                    None => Err(format!("ssh id {:?} is too long", ask.id)),
                };
                let _ = ask.reply.send(answer);
            }
            ready = conn.readable() => {
                if ready.is_err() {
                    return;
                }
                // The client only answers; anything else (EOF included) ends it.
                let mut byte = [0u8; 1];
                match conn.try_io(Interest::READABLE, || {
                    rustix::net::recv(&*conn, &mut byte[..], RecvFlags::PEEK)
                        .map(|(n, _)| n)
                        .map_err(io::Error::from)
                }) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => return,
                }
            }
        }
    }
}

/// Sends one connect request and reads the client's answer: the descriptor,
/// or its reason for refusing.
async fn exchange(conn: &mut UnixStream, request: &[u8]) -> io::Result<Result<OwnedFd, String>> {
    conn.write_all(request).await?;
    let (byte, fd) = loop {
        conn.readable().await?;
        let got = conn.try_io(Interest::READABLE, || {
            let mut byte = [0u8; 1];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let got = rustix::net::recvmsg(
                &*conn,
                &mut [IoSliceMut::new(&mut byte)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            )
            .map_err(io::Error::from)?;
            let mut fd = None;
            for message in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = message {
                    // Any beyond the first are closed as they drop.
                    for f in fds {
                        fd.get_or_insert(f);
                    }
                }
            }
            Ok((got.bytes, byte[0], fd))
        });
        match got {
            Ok((0, _, _)) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed its ssh forwarding session",
                ))
            }
            Ok((_, byte, fd)) => break (byte, fd),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    match (byte, fd) {
        (SENT, Some(fd)) => Ok(Ok(fd)),
        (REFUSED, None) => {
            let len = conn.read_u16().await?;
            let mut reason = vec![0u8; usize::from(len)];
            conn.read_exact(&mut reason).await?;
            Ok(Err(String::from_utf8_lossy(&reason).into_owned()))
        }
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected answer on the ssh forwarding session",
        )),
    }
}

/// A step's agent socket: a listener at `path` that forwards each connection
/// to `agent`. `note` tells the step's log why a connection failed. The
/// forwarding ends when the returned task is aborted (the step ended).
pub(crate) fn listen(
    path: &Path,
    uid: u32,
    gid: u32,
    mode: u32,
    agent: Agent,
    note: impl Fn(String) + Send + Sync + 'static,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let listener = UnixListener::bind(path)?;
    nix::unistd::chown(path, Some(uid.into()), Some(gid.into())).map_err(io::Error::from)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))?;
    Ok(tokio::spawn(async move {
        let mut forwards = tokio::task::JoinSet::new();
        let note = Arc::new(note);
        loop {
            let Ok((step_conn, _)) = listener.accept().await else {
                return;
            };
            let (agent, note) = (agent.clone(), note.clone());
            // Finished forwards are collected as new ones start.
            while forwards.try_join_next().is_some() {}
            forwards.spawn(async move {
                match agent.connect().await {
                    Ok(fd) => {
                        if let Err(e) = forward(step_conn, fd).await {
                            tracing::debug!(error = %e, "ssh agent forwarding ended");
                        }
                    }
                    Err(reason) => note(format!("ssh agent {}: {reason}", agent.id)),
                }
            });
        }
    }))
}

/// Copies bytes both ways between a step's connection and the agent's.
async fn forward(mut step_conn: UnixStream, agent: OwnedFd) -> io::Result<()> {
    let agent = std::os::unix::net::UnixStream::from(agent);
    agent.set_nonblocking(true)?;
    let mut agent = UnixStream::from_std(agent)?;
    tokio::io::copy_bidirectional(&mut step_conn, &mut agent).await?;
    Ok(())
}
