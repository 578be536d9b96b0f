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
use memobuild_store::LayerRecord;
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
pub(super) struct Recent {
    by_step: parking_lot::Mutex<HashMap<StepSlot, RecentResult>>,
}

#[derive(Clone)]
struct RecentResult {
    chain_id: String,
    changes: Arc<ChangeSet>,
    depth: u32,
}

/// Which step a result belongs to: its parent chain and its instruction.
pub(super) type StepSlot = (String, String);

/// The slot of `step` standing on `parent_layers`.
pub(super) fn slot(parent_layers: &[LayerRecord], instruction: &str) -> StepSlot {
    let top = chain_ids(parent_layers).pop().unwrap_or_default();
    (top, instruction.to_string())
}

/// A step result written into a snapshot, waiting for its layer's chain id.
pub(super) struct Written {
    snapshot: memobuild_sandbox::Materialized,
    /// How many deltas it stands on (0: written whole).
    depth: u32,
    changes: Arc<ChangeSet>,
    /// Remembered for the step's next delta, if it has a slot.
    slot: Option<StepSlot>,
}

/// Writes a step's changes straight into a containerd snapshot on its
/// parent's chain (as a delta on the step's previous result when `slot`
/// names one that is close enough), so a later RUN need not unpack the layer.
/// Best effort: on any failure the RUN unpacks the layer as before.
pub(super) async fn materialize(
    engine: &Arc<Engine>,
    parent_layers: &[LayerRecord],
    changes: Arc<ChangeSet>,
    slot: Option<StepSlot>,
    linkable: Option<&std::path::Path>,
) -> Option<Written> {
    let linkable = linkable.map(|p| p.to_path_buf());
    let sandbox = engine.sandbox().await.ok()?;
    let written = |snapshot, depth, slot| Written {
        snapshot,
        depth,
        changes: changes.clone(),
        slot,
    };
    if let Some((previous, delta, removed)) =
        slot.as_ref().and_then(|s| engine.recent.delta(s, &changes))
    {
        let base = Base::Previous {
            snapshot: &previous.chain_id,
            removed,
        };
        match sandbox
            .materialize(base, Arc::new(delta), linkable.clone())
            .await
        {
            Ok(m) => return Some(written(m, previous.depth + 1, slot)),
            Err(e) => {
                tracing::debug!(error = %e, "step result not written as a delta; writing it whole")
            }
        }
    }
    let inputs = parent_layers
        .iter()
        .map(|l| super::run::layer_input(&engine.store.blobs, l))
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    match sandbox
        .materialize(Base::Layers(&inputs), changes.clone(), linkable)
        .await
    {
        Ok(m) => {
            engine
                .metrics
                .snapshots("unpacked", m.unpacked_layers.into());
            Some(written(m, 0, slot))
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
    ) -> Option<(RecentResult, ChangeSet, Vec<String>)> {
        let previous = self.by_step.lock().get(slot).cloned()?;
        if previous.depth >= MAX_DELTA_DEPTH {
            return None;
        }
        let (delta, removed) = changes.delta_from(&previous.changes)?;
        Some((previous, delta, removed))
    }

    fn remember(&self, slot: StepSlot, result: RecentResult) {
        let mut by_step = self.by_step.lock();
        if by_step.len() >= RECENT_CAP {
            by_step.clear();
        }
        by_step.insert(slot, result);
    }
}

/// Commits `written` as the chain of `parent_layers` plus the layer
/// `diff_id`; false if it could not.
pub(super) async fn commit(
    engine: &Engine,
    parent_layers: &[LayerRecord],
    diff_id: &str,
    written: Written,
) -> bool {
    let Some(chain_id) = top_chain_id(parent_layers, Some(diff_id)) else {
        return false;
    };
    match written.snapshot.commit(&chain_id, diff_id).await {
        Ok(()) => {
            let how = if written.depth > 0 {
                "delta"
            } else {
                "written"
            };
            engine.metrics.snapshots(how, 1);
            if let Some(slot) = written.slot {
                let result = RecentResult {
                    chain_id,
                    changes: written.changes,
                    depth: written.depth,
                };
                engine.recent.remember(slot, result);
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not keep a step's snapshot; a RUN will unpack its layer");
            false
        }
    }
}

/// The chain id of `layers` plus, if given, one more layer `diff_id`.
pub(super) fn top_chain_id(layers: &[LayerRecord], diff_id: Option<&str>) -> Option<String> {
    let diff_ids = layers.iter().map(|l| l.diff_id.as_str()).chain(diff_id);
    memobuild_sandbox::chain_ids(diff_ids).pop()
}

fn chain_ids(layers: &[LayerRecord]) -> Vec<String> {
    memobuild_sandbox::chain_ids(layers.iter().map(|l| l.diff_id.as_str()))
}
