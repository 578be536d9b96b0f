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

// Every module is private: what the daemon (and the benches) use is the
// `pub use` list below; everything else is the engine's own business.
#![warn(unreachable_pub)]

mod api;
mod buildlogs;
mod contexts;
mod eager;
mod exec;
mod failure;
mod gc;
mod image_access;
mod import;
mod inline_cache;
mod localcache;
mod metrics;
mod owner;
mod project;
mod registry_hooks;
mod secret_ids;
mod ssh_agents;
mod tidy;
mod verify;

pub use api::DaemonIdentity;
pub use buildlogs::BuildLogs;
/// The view of a stage's filesystem from its layers' tar headers, which RUN
/// resolves its USER in: public for the phases of benches/run.rs.
pub use exec::fsview::{FsView, LayerCache};
pub use exec::{Engine, RunSettings, Runner, DEFAULT_MAX_PARALLEL_BUILDS};
pub use memobuild_registry::RegistrySettings;
/// The store the engine is opened on, and its error.
pub use memobuild_store::{Store, StoreError};
pub use metrics::scrape;
pub use owner::Caller;
pub use tidy::{DEFAULT_FORGET_AFTER, DEFAULT_MAX_PROJECTS};
