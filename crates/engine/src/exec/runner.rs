//! What runs a RUN step: the engine's one port to the sandbox. The daemon's
//! runner is containerd ([`memobuild_sandbox::Sandbox`]); the engine's own
//! tests plug in a fake (`Engine::with_runner`) so planning, the cache,
//! invalidation and failures are tested without containerd.
//!
//! Only running a step goes through here. Writing step results as
//! snapshots, cleaning up a crashed daemon's runs and pruning unpacked
//! chains are containerd optimizations and housekeeping: the engine does
//! them only when its runner is containerd, and a build is the same image
//! without them.

use futures::future::BoxFuture;
use memobuild_sandbox::{LayerInput, OutputChunk, RunOutcome, RunSpec, Sandbox, SandboxError};
use tokio::sync::mpsc;

/// Runs one step on a root filesystem of `layers` (bottom first), streaming
/// its output to `output` as it comes. A step that fails (non-zero exit,
/// timeout, a limit) is an `Ok` with that exit; `Err` is for the runner
/// itself failing. Dropping the future cancels the step.
pub trait Runner: Send + Sync {
    fn run<'a>(
        &'a self,
        layers: &'a [LayerInput],
        spec: &'a RunSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> BoxFuture<'a, Result<RunOutcome, SandboxError>>;
}

impl Runner for Sandbox {
    fn run<'a>(
        &'a self,
        layers: &'a [LayerInput],
        spec: &'a RunSpec,
        output: mpsc::Sender<OutputChunk>,
    ) -> BoxFuture<'a, Result<RunOutcome, SandboxError>> {
        Box::pin(Sandbox::run(self, layers, spec, output))
    }
}
