//! The daemon process around the engine: the socket (bound, or passed by
//! systemd), the RPC server that converts between the wire (`memobuild-proto`)
//! and the engine's facade, access control by peer credentials, settings,
//! logging, sd_notify and the metrics listener. It uses only the engine and
//! the protocol; everything a build does lives in `memobuild-engine`.

pub mod access;
pub mod config;
pub mod daemon;
pub mod handoff;
pub mod logging;
mod metrics_http;
pub mod sdnotify;
pub mod server;
