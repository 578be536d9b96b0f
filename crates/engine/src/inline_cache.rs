//! `--cache-to type=inline` (docs/CACHE.md, "Inline cache"): the image config
//! carries the step records of the image's own steps, so a build on another
//! host with `--cache-from IMAGE` imports them from the image's repository.
//! Like BuildKit's inline cache it is mode=min: the steps of the target stage
//! and the stages it is built on, and of those only the steps whose layer is
//! in the image (or that add none), since the image's layers are all a
//! registry keeps with it.

use memobuild_plan::Plan;
use memobuild_registry::CacheIndex;
use memobuild_store::{LayerRecord, Lookup, Store};
use std::collections::BTreeSet;

/// The inline cache of an image built from `plan` with `layers`: a
/// [`CacheIndex`] as JSON. Steps whose record is gone (pruned meanwhile) are
/// left out: the importer builds them.
pub(crate) fn record(store: &Store, plan: &Plan, layers: &[LayerRecord]) -> serde_json::Value {
    let mut stages = BTreeSet::new();
    let mut at = Some(plan.target);
    while let Some(i) = at {
        stages.insert(i);
        at = plan.base_stage(i);
    }
    let in_image: BTreeSet<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    let mut index = CacheIndex {
        version: 1,
        ..Default::default()
    };
    for step in plan.steps.iter().filter(|s| stages.contains(&s.stage)) {
        let Ok(Lookup::Hit(record)) = store.lookup_step(&step.key) else {
            continue;
        };
        let in_it = record
            .layer
            .as_ref()
            .is_none_or(|l| in_image.contains(l.digest.as_str()));
        if in_it {
            // The importer's history gets the same times: the same image.
            index.created.insert(step.key.clone(), record.created_at);
            index.steps.insert(step.key.clone(), record.layer);
        }
    }
    serde_json::to_value(&index).unwrap_or_default()
}
