//! Step results as containerd snapshots: a COPY's or RUN's changes are
//! written straight into a snapshot on the parent's chain (next to the layer
//! blob, from the same changes) and committed under the layer's chain id, so
//! the next RUN finds its root filesystem unpacked. See
//! `memobuild_sandbox::Materialized`.

use super::Engine;
use memobuild_oci::ChangeSet;
use std::sync::Arc;

/// Writes a step's changes straight into a containerd snapshot on its
/// parent's chain, so a later RUN need not unpack the layer. Best effort: on
/// any failure the RUN unpacks the layer as before.
pub(super) async fn materialize(
    engine: &Arc<Engine>,
    parent_layers: &[memobuild_store::LayerRecord],
    changes: Arc<ChangeSet>,
    mtime: u64,
) -> Option<memobuild_sandbox::Materialized> {
    let sandbox = engine.sandbox().await.ok()?;
    let inputs = layer_inputs(engine, parent_layers)?;
    match sandbox.materialize(&inputs, changes, mtime).await {
        Ok(m) => {
            engine
                .metrics
                .snapshots("unpacked", m.unpacked_layers.into());
            Some(m)
        }
        Err(e) => {
            tracing::debug!(error = %e, "step result not written as a snapshot; a RUN will unpack its layer");
            None
        }
    }
}

pub(super) async fn commit(
    engine: &Engine,
    parent_layers: &[memobuild_store::LayerRecord],
    layer: &memobuild_store::LayerRecord,
    snapshot: memobuild_sandbox::Materialized,
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
        Ok(()) => engine.metrics.snapshots("written", 1),
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
