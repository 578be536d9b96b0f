//! memobuildd's engine: everything the daemon does, as a library, so tests and
//! benchmarks can drive it directly. A build flows one way through the modules:
//!
//! ```text
//! server (RPC) -> exec (scheduler) -> dockerfile (parse) -> context (scan, hash)
//!             -> graph (plan, keys) -> store (cache lookup) -> exec::copy (misses)
//!             -> oci (layers, image) -> store
//! ```

pub mod access;
pub mod buildlogs;
pub mod config;
pub mod context;
pub mod daemon;
pub mod dockerfile;
pub mod exec;
pub mod graph;
pub mod logging;
pub mod metrics;
pub mod oci;
pub mod project;
pub mod rootpath;
pub mod safefs;
pub mod sandbox;
pub mod sdnotify;
pub mod server;
pub mod store;
#[cfg(test)]
mod testutil;
pub mod time;
