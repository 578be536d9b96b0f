//! The systemd service protocol: a listening socket passed by socket
//! activation (`LISTEN_FDS`/`LISTEN_PID`), and sd_notify messages (READY,
//! RELOADING, STOPPING, WATCHDOG pings). Everything here is a no-op when the
//! daemon was not started by systemd (or `systemd-socket-activate`).

use sd_notify::NotifyState;
use std::os::fd::FromRawFd;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("socket activation: {0}; pass exactly one listening Unix stream socket (ListenStream= in memobuildd.socket)")]
    Fds(String),
}

/// The socket systemd passed us, if it did; `None` means bind our own.
pub fn activated_listener() -> Result<Option<tokio::net::UnixListener>, ActivationError> {
    let fds: Vec<_> = sd_notify::listen_fds()
        .map_err(|e| ActivationError::Fds(e.to_string()))?
        .collect();
    let fd = match fds.as_slice() {
        [] => return Ok(None),
        [fd] => *fd,
        more => return Err(ActivationError::Fds(format!("got {} sockets", more.len()))),
    };
    // Safety: LISTEN_PID names this process, so the fd is ours to own; it is
    // taken exactly once (listen_fds is only called here).
    let listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
    // A socket that is not a Unix stream listener fails here, not at accept.
    listener
        .local_addr()
        .map_err(|e| ActivationError::Fds(format!("fd {fd} is not a Unix socket: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| ActivationError::Fds(e.to_string()))?;
    tokio::net::UnixListener::from_std(listener)
        .map(Some)
        .map_err(|e| ActivationError::Fds(e.to_string()))
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// Sends from a blocking thread: the notify socket is a blocking datagram
/// socket, and a manager that does not read it (its queue is full) must not
/// stall the async workers.
async fn send_off_thread(message: impl FnOnce() + Send + 'static) {
    let _ = tokio::task::spawn_blocking(message).await;
}

/// The socket is serving.
pub async fn ready(status: &str) {
    let status = status.to_string();
    send_off_thread(move || send(&[NotifyState::Ready, NotifyState::Status(&status)])).await;
}

/// SIGHUP: reloading the config; [`ready`] follows.
pub async fn reloading() {
    send_off_thread(|| match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    })
    .await;
}

/// SIGTERM/SIGINT: stopping (running builds get the shutdown grace).
pub async fn stopping(status: &str) {
    let status = status.to_string();
    send_off_thread(move || send(&[NotifyState::Stopping, NotifyState::Status(&status)])).await;
}

/// With `WatchdogSec=` in the unit, pings at half the interval for as long as
/// the runtime answers (a wedged runtime stops the pings, and systemd
/// restarts the daemon). One ping at a time: they never pile up.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()? / 2;
    let interval = interval.max(Duration::from_millis(10));
    tracing::info!(
        every_ms = interval.as_millis() as u64,
        "systemd watchdog enabled"
    );
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            send_off_thread(|| send(&[NotifyState::Watchdog])).await;
        }
    }))
}
