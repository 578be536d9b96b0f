//! Daemon start-up: options, the socket (permissions, stale files, another
//! daemon already listening), and the serve loop with signal handling.

use crate::exec::Engine;
use crate::server::{serve, Server};
use crate::store::Store;
use memobuild_shared::{DaemonInfo, PROTOCOL_VERSION};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "memobuildd",
    version,
    about = "The memobuild daemon: incremental container image builds"
)]
pub struct Options {
    /// Where the cache, blobs and images live.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Unix socket to listen on [default: $MEMOBUILD_SOCKET, else the per-user or system default].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Group allowed to use the socket (mode 0660); without it the socket is 0600.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// containerd socket for RUN steps [default: start a private containerd under the data dir]
    #[arg(long, value_name = "PATH")]
    pub containerd_socket: Option<PathBuf>,
    /// Network for RUN steps without --network: `host` (as Docker: the step has network) or `none`
    #[arg(long, default_value = "host", value_parser = ["host", "none"])]
    pub default_network: String,
    /// Kill a RUN step after this many seconds (0 = no limit)
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub step_timeout: u64,
    /// Memory limit of each RUN step, e.g. 2g or 512m (per build: memobuild-ctl build --memory)
    #[arg(long, value_name = "SIZE", value_parser = memobuild_shared::parse_size)]
    pub memory: Option<u64>,
    /// CPUs each RUN step may use, e.g. 1.5
    #[arg(long, value_name = "N")]
    pub cpus: Option<f64>,
    /// Most processes in each RUN step [default: 4096]
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub pids_limit: i64,
    /// Most RUN steps running at once, across builds [default: the number of CPUs]
    #[arg(long, value_name = "N")]
    pub max_parallel_runs: Option<usize>,
}

impl Options {
    pub fn run_settings(&self) -> crate::exec::RunSettings {
        crate::exec::RunSettings {
            containerd_socket: self.containerd_socket.clone(),
            default_network_none: self.default_network == "none",
            step_timeout: (self.step_timeout > 0)
                .then(|| std::time::Duration::from_secs(self.step_timeout)),
            memory_bytes: self.memory,
            cpus: self.cpus,
            pids: (self.pids_limit > 0).then_some(self.pids_limit),
            max_parallel: self.max_parallel_runs.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            }),
        }
    }
}

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
pub async fn run(options: Options) -> Result<(), DaemonError> {
    let data_dir = options
        .data_dir
        .clone()
        .unwrap_or_else(memobuild_shared::paths::default_data_dir);
    let socket = memobuild_shared::paths::socket_path(options.socket.clone());
    let store = tokio::task::spawn_blocking({
        let data_dir = data_dir.clone();
        move || Store::open(&data_dir)
    })
    .await
    .map_err(|e| setup(e.to_string()))??;
    let listener = bind(&socket, options.socket_group.as_deref()).await?;
    let info = DaemonInfo {
        protocol_version: PROTOCOL_VERSION,
        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        data_dir: data_dir.display().to_string(),
        pid: std::process::id(),
    };
    let server = Server {
        engine: Engine::new(Arc::new(store), options.run_settings()),
        info: Arc::new(info),
    };
    let engine = server.engine.clone();
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
