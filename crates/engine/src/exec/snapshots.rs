//! Step results as containerd snapshots: a COPY's or RUN's changes are
//! written straight into a snapshot on the parent's chain (next to the layer
//! blob, from the same changes) and committed under the layer's chain id, so
//! the next RUN finds its root filesystem unpacked. See
//! `memobuild_sandbox::Materialized`.

//!
//! An edited COPY is written as a delta on its previous result (see
//! [`Recent`]): only the files that changed are written, so the RUN after it
//! starts within milliseconds of the layer being ready.

use super::Engine;
use memobuild_oci::ChangeSet;
use memobuild_sandbox::Base;
use std::collections::HashMap;
use std::sync::Arc;

/// Deltas stacked on one full result at most; the next one is full again
/// (each level is one more overlay lower directory for every RUN on it).
const MAX_DELTA_DEPTH: u32 = 8;
/// Recent results remembered, at most.
const RECENT_CAP: usize = 256;

/// The last snapshot written for each step (by the parent chain it stands on
/// and its instruction), so the next result of that step can be written as a
/// delta on it. Any earlier result on the same parent chain would be correct
/// (the delta is computed from that result's own changes); the instruction
/// just picks the one likely to be close.
#[derive(Default)]
pub struct Recent {
    by_step: parking_lot::Mutex<HashMap<(String, String), RecentResult>>,
}

#[derive(Clone)]
struct RecentResult {
    chain_id: String,
    changes: Arc<ChangeSet>,
    mtime: u64,
    depth: u32,
}

/// Which step a result belongs to: its parent chain and its instruction.
pub(super) struct StepSlot {
    pub parent_chain: String,
    pub instruction: String,
}

/// Writes a step's changes straight into a containerd snapshot on its
/// parent's chain (as a delta on the step's previous result when `slot`
/// names one that is close enough), so a later RUN need not unpack the layer.
/// Best effort: on any failure the RUN unpacks the layer as before.
pub(super) async fn materialize(
    engine: &Arc<Engine>,
    parent_layers: &[memobuild_store::LayerRecord],
    changes: Arc<ChangeSet>,
    mtime: u64,
    slot: Option<&StepSlot>,
    linkable: Option<&std::path::Path>,
) -> Option<(memobuild_sandbox::Materialized, u32)> {
    let linkable = linkable.map(|p| p.to_path_buf());
    let sandbox = engine.sandbox().await.ok()?;
    if let Some((previous, delta, removed)) =
        slot.and_then(|s| engine.recent.delta(s, &changes, mtime))
    {
        let base = Base::Previous {
            snapshot: &previous.chain_id,
            removed,
        };
        match sandbox
            .materialize(base, Arc::new(delta), mtime, linkable.clone())
            .await
        {
            Ok(m) => return Some((m, previous.depth + 1)),
            Err(e) => {
                tracing::debug!(error = %e, "step result not written as a delta; writing it whole")
            }
        }
    }
    let inputs = layer_inputs(engine, parent_layers)?;
    match sandbox
        .materialize(Base::Layers(&inputs), changes, mtime, linkable)
        .await
    {
        Ok(m) => {
            engine
                .metrics
                .snapshots("unpacked", m.unpacked_layers.into());
            Some((m, 0))
        }
        Err(e) => {
            tracing::debug!(error = %e, "step result not written as a snapshot; a RUN will unpack its layer");
            None
        }
    }
}

impl Recent {
    /// The previous result of `slot` and the delta from it to `changes`.
    fn delta(
        &self,
        slot: &StepSlot,
        changes: &ChangeSet,
        mtime: u64,
    ) -> Option<(RecentResult, ChangeSet, Vec<String>)> {
        let previous = self
            .by_step
            .lock()
            .get(&(slot.parent_chain.clone(), slot.instruction.clone()))
            .cloned()?;
        if previous.mtime != mtime || previous.depth >= MAX_DELTA_DEPTH {
            return None;
        }
        let (delta, removed) = changes.delta_from(&previous.changes)?;
        Some((previous, delta, removed))
    }

    fn remember(&self, slot: &StepSlot, result: RecentResult) {
        let mut by_step = self.by_step.lock();
        if by_step.len() >= RECENT_CAP {
            by_step.clear();
        }
        by_step.insert(
            (slot.parent_chain.clone(), slot.instruction.clone()),
            result,
        );
    }
}

/// The top chain id of `layers` ("" for none): where a step's result stands.
pub(super) fn chain_top(engine: &Engine, layers: &[memobuild_store::LayerRecord]) -> String {
    layer_inputs(engine, layers)
        .and_then(|inputs| memobuild_sandbox::chain_ids(&inputs).pop())
        .unwrap_or_default()
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn commit(
    engine: &Engine,
    parent_layers: &[memobuild_store::LayerRecord],
    layer: &memobuild_store::LayerRecord,
    (snapshot, depth): (memobuild_sandbox::Materialized, u32),
    changes: Arc<ChangeSet>,
    mtime: u64,
    slot: Option<&StepSlot>,
) {
    let mut layers = parent_layers.to_vec();
    layers.push(layer.clone());
    let Some(inputs) = layer_inputs(engine, &layers) else {
        return;
    };
    let Some(chain_id) = memobuild_sandbox::chain_ids(&inputs).pop() else {
        return;
    };
    match snapshot.commit(&chain_id, &layer.diff_id).await {
        Ok(()) => {
            let how = if depth > 0 { "delta" } else { "written" };
            engine.metrics.snapshots(how, 1);
            if let Some(slot) = slot {
                let result = RecentResult {
                    chain_id,
                    changes,
                    mtime,
                    depth,
                };
                engine.recent.remember(slot, result);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not keep a step's snapshot; a RUN will unpack its layer")
        }
    }
}

fn layer_inputs(
    engine: &Engine,
    layers: &[memobuild_store::LayerRecord],
) -> Option<Vec<memobuild_sandbox::LayerInput>> {
    layers
        .iter()
        .map(|l| super::run::layer_input(&engine.store.blobs, l))
        .collect::<Result<Vec<_>, _>>()
        .ok()
}
