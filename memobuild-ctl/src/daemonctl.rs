//! `memobuild-ctl daemon status|stop`: the daemon at the socket, as a user
//! who started it (or `build`'s auto-start did) sees and stops it.

use crate::connect::{ctx, rpc_failed};
use memobuild_proto::{ErrorKind, RpcError};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Exit status of `daemon status` when no daemon runs (LSB's "not running").
const NOT_RUNNING: u8 = 3;

async fn hello(socket: &Path) -> Result<Option<memobuild_proto::DaemonInfo>, RpcError> {
    match crate::connect::connect(socket, false).await {
        Ok(client) => Ok(Some(client.hello(ctx()).await.map_err(rpc_failed)??)),
        Err(e) if e.is(ErrorKind::Unavailable) => Ok(None),
        Err(e) => Err(e),
    }
}

pub async fn status(socket: &Path, json: bool) -> Result<ExitCode, RpcError> {
    let info = hello(socket).await?;
    if json {
        let value = match &info {
            Some(i) => serde_json::json!({
                "running": true,
                "socket": socket,
                "pid": i.pid,
                "version": i.daemon_version,
                "protocol": i.protocol_version,
                "data_dir": i.data_dir,
                "features": i.features,
            }),
            None => serde_json::json!({ "running": false, "socket": socket }),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&value).unwrap_or_default()
        );
    } else {
        match &info {
            Some(i) => println!(
                "memobuildd {} is running: pid {}, socket {}, data in {}",
                i.daemon_version,
                i.pid,
                socket.display(),
                i.data_dir
            ),
            None => println!(
                "memobuildd is not running (nothing answers at {})",
                socket.display()
            ),
        }
    }
    Ok(match info {
        Some(_) => ExitCode::SUCCESS,
        None => ExitCode::from(NOT_RUNNING),
    })
}

/// SIGTERM (the daemon's graceful stop: running builds get its
/// shutdown-grace), then waits up to `timeout` for the socket to go quiet.
/// The process is gone, or a zombie its parent has not reaped yet.
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `PID (COMM) STATE ...`; COMM may hold spaces and parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

pub async fn stop(socket: &Path, timeout: Duration) -> Result<ExitCode, RpcError> {
    let Some(info) = hello(socket).await? else {
        println!(
            "memobuildd is not running (nothing answers at {})",
            socket.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let pid = nix::unistd::Pid::from_raw(info.pid as i32);
    match nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
        Ok(()) => {}
        Err(nix::errno::Errno::EPERM) => {
            return Err(RpcError::of(
                ErrorKind::PermissionDenied,
                format!("memobuildd (pid {}) at {} runs as another user; this user may not stop it", info.pid, socket.display()),
            )
            .hint("a system service is stopped with `sudo systemctl stop memobuildd.socket memobuildd.service`"))
        }
        Err(nix::errno::Errno::ESRCH) => {
            return Err(RpcError::with_hint(
                format!("memobuildd answered at {} with pid {}, but no such process is visible here", socket.display(), info.pid),
                "it runs in another pid namespace (a container?): stop it there",
            ))
        }
        Err(e) => return Err(RpcError::new(format!("signalling memobuildd (pid {}): {e}", info.pid))),
    }
    let deadline = Instant::now() + timeout;
    loop {
        let gone = tokio::net::UnixStream::connect(socket).await.is_err();
        let exited = exited(info.pid);
        if gone && exited {
            println!("stopped memobuildd (pid {})", info.pid);
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() > deadline {
            return Err(RpcError::with_hint(
                format!(
                    "memobuildd (pid {}) is still running {}s after SIGTERM",
                    info.pid,
                    timeout.as_secs()
                ),
                "builds may still be finishing (shutdown-grace); wait, or `kill -KILL` it (the cache survives kill -9)",
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
