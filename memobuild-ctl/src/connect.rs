//! Finding and talking to the daemon; starting one for this user when none runs.

use memobuild_proto::{ErrorKind, MemobuildClient, RpcError, PROTOCOL_VERSION};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a freshly started daemon gets to open its socket.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A connected client and the socket it reached the daemon on (an export
/// opens a second connection there to receive blob descriptors).
#[derive(Clone, Copy)]
pub struct Conn<'a> {
    pub client: &'a MemobuildClient,
    pub socket: &'a Path,
}

pub fn ctx() -> tarpc::context::Context {
    let mut ctx = tarpc::context::current();
    ctx.deadline = Instant::now() + Duration::from_secs(120);
    ctx
}

pub fn rpc_failed(e: tarpc::client::RpcError) -> RpcError {
    RpcError::of(
        ErrorKind::Unavailable,
        format!("lost the connection to memobuildd: {e}"),
    )
    .hint("check that the daemon is running (its log says why it stopped)")
}

async fn try_connect(socket: &Path) -> std::io::Result<MemobuildClient> {
    let conn = tokio::net::UnixStream::connect(socket).await?;
    let transport = memobuild_proto::wire::transport(conn);
    Ok(MemobuildClient::new(tarpc::client::Config::default(), transport).spawn())
}

/// Turns the auto-start off, for scripts, supervisors and tests that manage
/// the daemon themselves: a daemon that is down (restarting, or killed) must
/// not be replaced by one with the default data dir on its socket.
const NO_AUTOSTART: &str = "MEMOBUILD_NO_AUTOSTART";

/// Connects to the daemon at `socket`; with `autostart` (and without
/// [`NO_AUTOSTART`] in the environment), starts one first if nothing listens there.
pub async fn connect(socket: &Path, autostart: bool) -> Result<MemobuildClient, RpcError> {
    let turned_off = std::env::var_os(NO_AUTOSTART).is_some();
    let client = match try_connect(socket).await {
        Ok(c) => c,
        Err(e) if autostart && !turned_off && is_absent(&e) => start_daemon(socket).await?,
        Err(e) => {
            let hint = if turned_off {
                "start it with `memobuildd` (or `systemctl start memobuildd`); MEMOBUILD_NO_AUTOSTART is set, so `memobuild-ctl build` does not start one"
            } else {
                "start it with `memobuildd` (or `systemctl start memobuildd`), or run `memobuild-ctl build`, which starts one for you"
            };
            return Err(RpcError::of(
                ErrorKind::Unavailable,
                format!("cannot reach memobuildd at {}: {e}", socket.display()),
            )
            .hint(hint));
        }
    };
    // A user the daemon does not allow gets a PermissionDenied error here.
    let info = client.hello(ctx()).await.map_err(rpc_failed)??;
    if info.protocol_version != PROTOCOL_VERSION {
        return Err(RpcError::with_hint(
            format!(
                "memobuildd {} speaks protocol {}, this client speaks {}",
                info.daemon_version, info.protocol_version, PROTOCOL_VERSION
            ),
            format!(
                "restart the daemon (pid {}) so the installed version runs",
                info.pid
            ),
        ));
    }
    Ok(client)
}

fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

/// The daemon binary: next to this one, else on PATH.
fn daemon_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("memobuildd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("memobuildd"))
}

async fn start_daemon(socket: &Path) -> Result<MemobuildClient, RpcError> {
    let data_dir = memobuild_proto::paths::default_data_dir();
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| RpcError::new(format!("creating {}: {e}", data_dir.display())))?;
    let log_path = data_dir.join("memobuildd.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| RpcError::new(format!("opening {}: {e}", log_path.display())))?;
    let log2 = log.try_clone().map_err(|e| RpcError::new(e.to_string()))?;
    let binary = daemon_binary();
    let mut cmd = std::process::Command::new(&binary);
    cmd.arg("--socket")
        .arg(socket)
        .arg("--data-dir")
        .arg(&data_dir)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log2);
    // A new session, so the daemon outlives this shell and its Ctrl-C.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            nix::unistd::setsid()
                .map(|_| ())
                .map_err(std::io::Error::from)
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        RpcError::with_hint(
            format!("starting {}: {e}", binary.display()),
            "install memobuildd next to memobuild-ctl or on PATH, or start it yourself",
        )
    })?;
    eprintln!(
        "started memobuildd (pid {}, data in {}, log {})",
        child.id(),
        data_dir.display(),
        log_path.display()
    );
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(client) = try_connect(socket).await {
            return Ok(client);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(RpcError::with_hint(
                format!("memobuildd exited at start-up ({status})"),
                format!("see {}", log_path.display()),
            ));
        }
        if Instant::now() > deadline {
            return Err(RpcError::with_hint(
                format!(
                    "memobuildd did not open {} within {}s",
                    socket.display(),
                    START_TIMEOUT.as_secs()
                ),
                format!("see {}", log_path.display()),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Refuses, before anything is sent, a request that uses what the daemon
/// does not understand (an older daemon would skip the field unread):
/// `wanted` holds (feature, the flag that needs it).
pub async fn require_features(
    client: &MemobuildClient,
    wanted: &[(&str, &str)],
) -> Result<(), RpcError> {
    if wanted.is_empty() {
        return Ok(());
    }
    let info = client.hello(ctx()).await.map_err(rpc_failed)??;
    for (feature, flag) in wanted {
        if !info.features.iter().any(|f| f == feature) {
            return Err(RpcError::with_hint(
                format!(
                    "{flag}: memobuildd {} (pid {}) is older than this client and does not understand it",
                    info.daemon_version, info.pid
                ),
                "restart the daemon so the installed version runs (`memobuild-ctl daemon stop`), or leave the flag out",
            ));
        }
    }
    Ok(())
}
