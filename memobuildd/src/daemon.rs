//! The daemon process: start-up (the socket: passed by systemd, or bound here
//! with its permissions, stale files, another daemon already listening), the
//! serve loop, and signals: SIGTERM/SIGINT stop gracefully (running builds get
//! the shutdown grace), SIGHUP reloads the config file.

use crate::access::Access;
use crate::config::{self, Config};
use crate::sdnotify;
use crate::server::{serve, Server};
use memobuild_engine::Engine;
use memobuild_proto::{DaemonInfo, PROTOCOL_VERSION};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] memobuild_engine::StoreError),
}

fn setup(msg: impl Into<String>) -> DaemonError {
    DaemonError::Setup(msg.into())
}

/// How long cancelled builds get to wind down (containers killed and
/// removed) after the shutdown grace ran out.
const CANCEL_WAIT: Duration = Duration::from_secs(30);

/// After the last build ended, how long clients get to fetch its final event
/// before the socket closes.
const DRAIN: Duration = Duration::from_millis(500);

/// Runs the daemon until SIGTERM or SIGINT (then stops gracefully); SIGHUP
/// reloads the config file.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    // Before anything else: a stop during start-up must not kill us mid-way.
    let mut signals = Signals::new()?;
    let data_dir = config.data_dir.clone();
    secure_data_dir(&data_dir, &config.socket, config.socket_group.as_deref())?;
    let store = tokio::task::spawn_blocking({
        let data_dir = data_dir.clone();
        move || memobuild_engine::Store::open(&data_dir)
    })
    .await
    .map_err(|e| setup(e.to_string()))??;
    let (listener, socket, owned) = listen(&config).await?;
    let info = DaemonInfo {
        protocol_version: PROTOCOL_VERSION,
        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        data_dir: data_dir.display().to_string(),
        pid: std::process::id(),
        features: memobuild_proto::FEATURES
            .iter()
            .map(|f| f.to_string())
            .collect(),
    };
    let server = Server {
        engine: Engine::new(Arc::new(store), config.run_settings()),
        info: Arc::new(info),
        handoffs: Arc::new(crate::handoff::Handoffs::default()),
        peer_uid: u32::MAX,
        admin: false,
        reader: None,
    };
    let engine = server.engine.clone();
    observe(&engine, &config).await?;
    engine.set_limits(config.max_parallel_builds, config.max_storage);
    engine.set_project_limits(config.forget_projects_after, config.max_projects);
    let access = Arc::new(Access::new(&config, &socket));
    let mut serving = tokio::spawn(serve(listener, server, access.clone()));
    tracing::info!(socket = %socket.display(), data_dir = %data_dir.display(), activated = !owned, "memobuildd serving");
    sdnotify::ready("serving").await;
    let watchdog = sdnotify::spawn_watchdog();
    let mut config = config;
    let result = loop {
        tokio::select! {
            r = &mut serving => break Err(serve_failed(&socket, r)),
            signal = signals.next() => match signal {
                Signal::Reload => config = reload(config, &engine, &access).await,
                Signal::Stop => break Ok(()),
            },
        }
    };
    if result.is_ok() {
        stop_builds(&engine, config.shutdown_grace, &mut signals).await;
    }
    serving.abort();
    if owned {
        // A socket-activated one belongs to systemd, which keeps it for the next start.
        let _ = std::fs::remove_file(&socket);
    }
    engine.persist_hashes().await;
    engine.shutdown().await;
    if let Some(w) = watchdog {
        w.abort();
    }
    tracing::info!("memobuildd stopped");
    result
}

/// Per-build logs and the metrics listener (docs/OBSERVABILITY.md).
async fn observe(engine: &Arc<Engine>, config: &Config) -> Result<(), DaemonError> {
    let (dir, keep) = (config.log_dir.join("builds"), config.build_logs_keep);
    let logs = tokio::task::spawn_blocking(move || memobuild_engine::BuildLogs::open(&dir, keep))
        .await
        .map_err(|e| setup(e.to_string()))?
        .map_err(|e| setup(e.to_string()))?;
    engine.attach_build_logs(logs);
    if let Some(addr) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            setup(format!(
                "metrics listener on {addr}: {e}\nhint: pick a free port with --metrics-listen (or metrics-listen in the config file)"
            ))
        })?;
        let local = listener.local_addr().unwrap_or(addr);
        tracing::info!(address = %local, "metrics at http://{local}/metrics");
        tokio::spawn(crate::metrics_http::serve_http(listener, engine.clone()));
    }
    Ok(())
}

/// Why the serve loop ended (it only ends on an accept error, or a panic).
fn serve_failed(
    socket: &Path,
    outcome: Result<std::io::Result<()>, tokio::task::JoinError>,
) -> DaemonError {
    let why = match outcome {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => "the listener closed".to_string(),
        Err(e) => e.to_string(),
    };
    setup(format!("accepting on {}: {why}", socket.display()))
}

/// The listening socket: the one systemd passed, else our own. Also returns
/// its path and whether we created it (and so remove it at exit).
async fn listen(config: &Config) -> Result<(UnixListener, PathBuf, bool), DaemonError> {
    match sdnotify::activated_listener().map_err(|e| setup(e.to_string()))? {
        Some(listener) => {
            let path = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_path_buf))
                .unwrap_or_else(|| config.socket.clone());
            Ok((listener, path, false))
        }
        None => Ok((
            bind(&config.socket, config.socket_group.as_deref()).await?,
            config.socket.clone(),
            true,
        )),
    }
}

/// Stops taking builds, gives the running ones `grace` to finish, then
/// cancels them (a second SIGTERM/SIGINT cancels at once) and waits for their
/// containers to be removed.
async fn stop_builds(engine: &Arc<Engine>, grace: Duration, signals: &mut Signals) {
    engine.begin_shutdown();
    let running = engine.unfinished_builds();
    sdnotify::stopping(&format!("stopping: {running} builds running")).await;
    if running > 0 {
        tracing::info!(
            running,
            grace = %humantime::format_duration(grace),
            "waiting for running builds (new builds are refused)"
        );
    }
    let finished = tokio::select! {
        done = engine.wait_idle(grace) => done,
        _ = wait_stop(signals) => {
            tracing::info!("second stop signal: cancelling running builds now");
            false
        }
    };
    if !finished {
        tracing::warn!(
            running = engine.unfinished_builds(),
            "shutdown grace over: cancelling running builds"
        );
        engine.cancel_all(grace);
        if !engine.wait_idle(CANCEL_WAIT).await {
            tracing::warn!("some builds did not stop after being cancelled");
        }
    }
    engine.release_runs().await;
    if running > 0 {
        // Their clients are long-polling: let them read the final event.
        tokio::time::sleep(DRAIN).await;
    }
}

async fn wait_stop(signals: &mut Signals) {
    while let Signal::Reload = signals.next().await {}
}

/// SIGHUP: re-reads the config file. Access rules and RUN defaults take
/// effect at once; options that need a restart are logged as such. A bad file
/// keeps the old config.
async fn reload(old: Config, engine: &Engine, access: &Access) -> Config {
    sdnotify::reloading().await;
    let new = match config::reload(&old) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("SIGHUP: config not reloaded, keeping the old one: {e}");
            sdnotify::ready("serving (config reload failed)").await;
            return old;
        }
    };
    for option in restart_only_changes(&old, &new) {
        tracing::warn!("SIGHUP: {option} changed; it needs restart to take effect");
    }
    access.update(&new);
    engine.set_run_settings(new.run_settings());
    engine.set_limits(new.max_parallel_builds, new.max_storage);
    engine.set_project_limits(new.forget_projects_after, new.max_projects);
    tracing::info!(
        file = ?new.file,
        allowed_users = ?new.allowed_users,
        allowed_groups = ?new.allowed_groups,
        admin_users = ?new.admin_users,
        admin_groups = ?new.admin_groups,
        "SIGHUP: config reloaded"
    );
    sdnotify::ready("serving").await;
    // The restart-only options keep their running values.
    Config {
        data_dir: old.data_dir,
        socket: old.socket,
        socket_group: old.socket_group,
        containerd_socket: old.containerd_socket,
        max_parallel_runs: old.max_parallel_runs,
        ..new
    }
}

/// Options whose new value only a restart applies.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.data_dir != new.data_dir {
        changed.push("data-dir");
    }
    if old.socket != new.socket {
        changed.push("socket");
    }
    if old.socket_group != new.socket_group {
        changed.push("socket-group");
    }
    if old.containerd_socket != new.containerd_socket {
        changed.push("containerd-socket");
    }
    if old.max_parallel_runs != new.max_parallel_runs {
        changed.push("max-parallel-runs");
    }
    changed
}

enum Signal {
    Stop,
    Reload,
}

/// SIGTERM, SIGINT (stop) and SIGHUP (reload).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, DaemonError> {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind| {
            signal(kind).map_err(|e| setup(format!("installing signal handlers: {e}")))
        };
        Ok(Signals {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => { tracing::info!("SIGTERM: shutting down"); Signal::Stop }
            _ = self.int.recv() => { tracing::info!("SIGINT: shutting down"); Signal::Stop }
            _ = self.hup.recv() => { tracing::info!("SIGHUP: reloading the config"); Signal::Reload }
        }
    }
}

fn group_id(name: &str) -> Result<nix::unistd::Gid, DaemonError> {
    Ok(nix::unistd::Group::from_name(name)
        .map_err(|e| setup(format!("looking up group {name}: {e}")))?
        .ok_or_else(|| setup(format!("group {name:?} does not exist")))?
        .gid)
}

/// The data dir is 0700, whatever the umask or an earlier version left:
/// blobs, cache mounts (where steps may leave setuid binaries) and containerd's
/// snapshots below it are for root only. A socket with a group placed below
/// the data dir makes the directories down to it 0710 to that group (enter,
/// not list).
fn secure_data_dir(data_dir: &Path, socket: &Path, group: Option<&str>) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    let fail = |e: std::io::Error| {
        setup(format!(
            "securing the data dir {}: {e}; check its owner and path",
            data_dir.display()
        ))
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(fail)?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    let (Some(group), Some(socket_dir)) = (group, socket.parent()) else {
        return Ok(());
    };
    let Ok(below) = socket_dir.strip_prefix(data_dir) else {
        return Ok(());
    };
    let gid = group_id(group)?;
    let mut dir = data_dir.to_path_buf();
    let mut levels = below.components().collect::<Vec<_>>();
    levels.pop(); // the socket's own directory: bind() gives it 0750
    for next in std::iter::once(None).chain(levels.into_iter().map(Some)) {
        if let Some(part) = next {
            dir.push(part);
        }
        group_dir(&dir, Some(gid), 0o710).map_err(fail)?;
    }
    Ok(())
}

/// Makes `dir` (unless it exists; a new one is 0700 until chmod) owned by
/// group `gid`, if given, with `mode`.
fn group_dir(dir: &Path, gid: Option<nix::unistd::Gid>, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(e),
        })?;
    if let Some(gid) = gid {
        nix::unistd::chown(dir, None, Some(gid))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Binds the socket: creates its directory (0700 when we create it; 0750 and
/// the socket's group with one), refuses to steal a socket another daemon is
/// serving, replaces a stale one.
async fn bind(socket: &Path, group: Option<&str>) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = socket.parent() {
        if !dir.exists() {
            create_socket_dirs(dir, group)?;
        } else if let Some(name) = group {
            warn_if_group_locked_out(dir, name);
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
    // Bound under a private name, given its owner and mode, then renamed into
    // place: nobody can connect while the socket still has bind's default mode.
    let staging = socket.with_file_name(format!(
        ".{}.{}",
        socket
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("sock"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&staging);
    let listener = UnixListener::bind(&staging)
        .map_err(|e| setup(format!("listening on {}: {e}", socket.display())))?;
    let mode = match group {
        Some(name) => {
            nix::unistd::chown(&staging, None, Some(group_id(name)?))
                .map_err(|e| setup(format!("chown {}: {e}", socket.display())))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(mode))
        .map_err(|e| setup(format!("chmod {}: {e}", socket.display())))?;
    std::fs::rename(&staging, socket).map_err(|e| {
        setup(format!(
            "moving the socket into place at {}: {e}",
            socket.display()
        ))
    })?;
    Ok(listener)
}

/// Creates the socket's directory `dir` and the missing ones above it: 0700,
/// or with a socket group, owned by it: `dir` 0750 and the ones above 0710
/// (the group passes through them to the socket, and lists nothing).
fn create_socket_dirs(dir: &Path, group: Option<&str>) -> Result<(), DaemonError> {
    let gid = group.map(group_id).transpose()?;
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    for (i, level) in missing.iter().rev().enumerate() {
        let socket_dir = i + 1 == missing.len();
        let mode = match (gid, socket_dir) {
            (None, _) => 0o700,
            (Some(_), true) => 0o750,
            (Some(_), false) => 0o710,
        };
        group_dir(level, gid, mode)
            .map_err(|e| setup(format!("creating {}: {e}", level.display())))?;
    }
    Ok(())
}

/// An existing socket directory is left as its owner made it; say so when the
/// socket's group cannot enter it.
fn warn_if_group_locked_out(dir: &Path, group: &str) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(meta), Ok(gid)) = (std::fs::metadata(dir), group_id(group)) else {
        return;
    };
    let enters =
        meta.mode() & 0o001 != 0 || (meta.gid() == gid.as_raw() && meta.mode() & 0o010 != 0);
    if !enters {
        tracing::warn!(
            dir = %dir.display(),
            group,
            "the socket group cannot enter the socket's directory; `chgrp {group} {0} && chmod g+x {0}`",
            dir.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    /// Every directory the daemon makes on the way to the socket lets the
    /// socket group through (the socket's own lets it list too), or nobody
    /// but root without a group.
    #[test]
    fn socket_dirs_made_on_the_way_let_the_group_through() {
        if !nix::unistd::Uid::effective().is_root() {
            return; // chown to another group needs root, as the daemon has
        }
        let tmp = tempfile::tempdir().unwrap();
        let socket_dir = tmp.path().join("a").join("b").join("run");
        super::create_socket_dirs(&socket_dir, Some("nogroup")).unwrap();
        let nogroup = super::group_id("nogroup").unwrap().as_raw();
        for (dir, mode) in [
            (tmp.path().join("a"), 0o710),
            (tmp.path().join("a/b"), 0o710),
            (socket_dir, 0o750),
        ] {
            let meta = std::fs::metadata(&dir).unwrap();
            assert_eq!(meta.mode() & 0o7777, mode, "{}", dir.display());
            assert_eq!(meta.gid(), nogroup, "{}", dir.display());
        }

        let private = tmp.path().join("c").join("run");
        super::create_socket_dirs(&private, None).unwrap();
        for dir in [tmp.path().join("c"), private] {
            let meta = std::fs::metadata(&dir).unwrap();
            assert_eq!(meta.mode() & 0o7777, 0o700, "{}", dir.display());
        }
    }
}
