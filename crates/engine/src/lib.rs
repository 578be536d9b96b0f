//! The build engine: everything the daemon does, behind one facade
//! ([`Engine`]) that the daemon's server calls. A build flows one way:
//!
//! ```text
//! request -> prepare (context sync, plan) -> schedule (queue, single flight)
//!         -> per step: cache lookup -> execute misses (copy, run) -> store
//!         -> assemble the image -> finish (tags, registry push, project state)
//! ```
//!
//! It uses only the crates below it: plan, sandbox, registry, oci, store,
//! context, dockerfile, rootpath, and proto for the types it reports in.

mod api;
pub mod buildlogs;
mod contexts;
pub mod eager;
pub mod exec;
pub mod failure;
pub mod gc;
pub mod import;
mod localcache;
pub mod metrics;
pub mod project;
mod registry_hooks;
pub mod secret_ids;
pub mod tidy;
pub mod verify;

pub use api::DaemonIdentity;
pub use exec::{Engine, RunSettings, DEFAULT_MAX_PARALLEL_BUILDS};
pub use memobuild_registry::RegistrySettings;
/// The store the engine is opened on, and its error.
pub use memobuild_store::{Store, StoreError};
