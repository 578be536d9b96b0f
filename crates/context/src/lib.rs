//! The build context: which files a build may read and what they contain.
//!
//! [`scan`] walks the context once per build (stat only) applying
//! `.dockerignore`; [`hash`] computes BLAKE3 digests of exactly the files a step
//! selects, reusing earlier results for files whose stat has not changed;
//! [`merkle`] digests directories, reusing earlier results for directories
//! nothing below has changed in; [`select`] resolves COPY/ADD sources to
//! entries, never leaving the context.

// What other crates may use is what this file exports; the rest is private.
#![warn(unreachable_pub)]

pub mod access;
pub mod dockerignore;
pub mod hash;
pub mod merkle;
pub mod scan;
pub mod select;
pub mod tree;
pub mod watch;

pub use hash::HashCache;
pub use scan::{not_utf8_error, ContextIndex, FileKind, FileMeta};
pub use select::{SelectError, Selected};
pub use tree::Tree;
pub use watch::Watcher;

/// Helpers for tests that need real files (for this crate's tests and, with
/// the `testutil` feature, for the crates above).
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Part of every error that means "a context file changed while a build read
/// it"; such builds start over from a fresh snapshot.
pub const CHANGED_DURING_BUILD: &str = "changed while the build was reading it";
