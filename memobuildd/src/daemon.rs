//! Daemon start-up: the socket (permissions, stale files, another
//! daemon already listening), and the serve loop with signal handling.

use crate::config::Config;
use crate::exec::Engine;
use crate::server::{serve, Server};
use crate::store::Store;
use memobuild_shared::{DaemonInfo, PROTOCOL_VERSION};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn setup(msg: impl Into<String>) -> DaemonError {
    DaemonError::Setup(msg.into())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let data_dir = config.data_dir.clone();
    let socket = config.socket.clone();
    let store = tokio::task::spawn_blocking({
        let data_dir = data_dir.clone();
        move || Store::open(&data_dir)
    })
    .await
    .map_err(|e| setup(e.to_string()))??;
    let listener = bind(&socket, config.socket_group.as_deref()).await?;
    let info = DaemonInfo {
        protocol_version: PROTOCOL_VERSION,
        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        data_dir: data_dir.display().to_string(),
        pid: std::process::id(),
    };
    let server = Server {
        engine: Engine::new(Arc::new(store), config.run_settings()),
        info: Arc::new(info),
    };
    let engine = server.engine.clone();
    engine.set_limits(config.max_parallel_builds, config.max_storage);
    tracing::info!(socket = %socket.display(), data_dir = %data_dir.display(), "memobuildd serving");
    let result = tokio::select! {
        r = serve(listener, server) => r.map_err(|e| setup(format!("accepting on {}: {e}", socket.display()))),
        _ = shutdown_signal() => Ok(()),
    };
    let _ = std::fs::remove_file(&socket);
    engine.shutdown().await;
    tracing::info!("memobuildd stopped");
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Binds the socket: creates its directory (0700 when we create it), refuses to
/// steal a socket another daemon is serving, replaces a stale one.
async fn bind(socket: &Path, group: Option<&str>) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = socket.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .map_err(|e| setup(format!("creating {}: {e}", dir.display())))?;
            let mode = if group.is_some() { 0o750 } else { 0o700 };
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode));
        }
    }
    if socket.exists() {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return Err(setup(format!(
                "another memobuildd is already listening on {}; stop it first or pass another --socket",
                socket.display()
            )));
        }
        std::fs::remove_file(socket)
            .map_err(|e| setup(format!("removing stale socket {}: {e}", socket.display())))?;
    }
    let listener = UnixListener::bind(socket)
        .map_err(|e| setup(format!("listening on {}: {e}", socket.display())))?;
    let mode = match group {
        Some(name) => {
            let group = nix::unistd::Group::from_name(name)
                .map_err(|e| setup(format!("looking up group {name}: {e}")))?
                .ok_or_else(|| setup(format!("group {name:?} does not exist")))?;
            nix::unistd::chown(socket, None, Some(group.gid))
                .map_err(|e| setup(format!("chown {}: {e}", socket.display())))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode))
        .map_err(|e| setup(format!("chmod {}: {e}", socket.display())))?;
    Ok(listener)
}
