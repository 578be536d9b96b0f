//! `--cache-to/--cache-from type=local`: the client keeps the cache in a
//! directory (an OCI layout in the registry cache's format, docs/CACHE.md);
//! the daemon only lists a finished build's step results and records the
//! ones a client uploaded, checking each layer's diff_id as the registry
//! cache does, so a cache that lies about a layer is refused.

use crate::project::StepSummary;
use memobuild_proto::{CacheLayer, CacheStep, ErrorKind, RpcError};
use memobuild_store::{LayerRecord, Lookup, StepRecord, Store};
use sha2::{Digest, Sha256};
use std::io::Read;

/// The steps of the last stage and of the stages it is built on (by the
/// `FROM` each step's stage starts with), as `mode=min` exports them.
pub(crate) fn target_chain(steps: Vec<StepSummary>) -> Vec<StepSummary> {
    let mut stages = std::collections::BTreeSet::new();
    let mut at = steps.last().map(|s| s.stage.clone());
    while let Some(stage) = at.take() {
        if !stages.insert(stage.clone()) {
            break;
        }
        at = steps
            .iter()
            .find(|s| s.stage == stage)
            .and_then(|s| s.from.strip_prefix("FROM "))
            .filter(|base| steps.iter().any(|s| s.stage == *base))
            .map(String::from);
    }
    steps
        .into_iter()
        .filter(|s| stages.contains(&s.stage))
        .collect()
}

/// Each step's stored result (steps no longer stored are left out).
pub(crate) fn cache_steps(
    store: &Store,
    steps: &[StepSummary],
) -> Result<Vec<CacheStep>, RpcError> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for s in steps {
        if !seen.insert(s.key.clone()) {
            continue;
        }
        if let Lookup::Hit(record) = store
            .lookup_step(&s.key)
            .map_err(|e| RpcError::new(e.to_string()))?
        {
            out.push(CacheStep {
                created_at: Some(record.created_at),
                key: s.key.clone(),
                layer: record.layer.map(|l| CacheLayer {
                    digest: l.digest,
                    diff_id: l.diff_id,
                    size: l.size,
                    media_type: l.media_type,
                }),
            });
        }
    }
    Ok(out)
}

fn refused(key: &str, why: String) -> RpcError {
    RpcError::of(
        ErrorKind::InvalidInput,
        format!("local cache step {key}: {why}; the entry was rejected"),
    )
    .hint("the cache directory is damaged: remove it and write it again with --cache-to type=local,dest=DIR")
}

/// Records `steps` whose layer blobs are in the store, as imported by
/// `caller` (its builds alone use them); every layer must uncompress to its
/// diff_id, and be one `may_use_layer` allows (uploaded by the caller, or
/// part of what it may read), so a cache cannot name another user's layer.
pub(crate) fn import(
    store: &Store,
    steps: &[CacheStep],
    caller: crate::Caller,
    may_use_layer: &dyn Fn(&str) -> bool,
) -> Result<u64, RpcError> {
    let mut n = 0;
    for step in steps {
        let valid_key = step.key.len() == 64 && step.key.chars().all(|c| c.is_ascii_hexdigit());
        if !valid_key {
            return Err(refused(&step.key, "not a step cache key".into()));
        }
        if matches!(store.lookup_step(&step.key), Ok(Lookup::Hit(r)) if caller.may_use_step(&r)) {
            continue;
        }
        let layer = match &step.layer {
            Some(l) => {
                if !store.blobs.contains(&l.digest) || !may_use_layer(&l.digest) {
                    return Err(refused(
                        &step.key,
                        format!("layer {} was not uploaded", l.digest),
                    ));
                }
                let mut reader = memobuild_oci::layer::open_layer(&store.blobs, &l.digest)
                    .map_err(|e| refused(&step.key, e.to_string()))?;
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let k = reader.read(&mut buf).map_err(|e| {
                        refused(
                            &step.key,
                            format!("layer {} does not decompress: {e}", l.digest),
                        )
                    })?;
                    if k == 0 {
                        break;
                    }
                    hasher.update(&buf[..k]);
                }
                let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
                if actual != l.diff_id {
                    return Err(refused(
                        &step.key,
                        format!("layer {} uncompresses to {actual}, not the diff_id {} the cache claims", l.digest, l.diff_id),
                    ));
                }
                let size = store
                    .blobs
                    .size(&l.digest)
                    .map_err(|e| RpcError::new(e.to_string()))?;
                Some(LayerRecord {
                    digest: l.digest.clone(),
                    diff_id: l.diff_id.clone(),
                    size,
                    media_type: l.media_type.clone(),
                })
            }
            None => None,
        };
        let record = StepRecord {
            layer,
            created_at: step.created_at.unwrap_or_else(memobuild_store::now_secs),
            owner: Some(caller.uid),
            imported: true,
        };
        store
            .put_step(&step.key, &record)
            .map_err(|e| RpcError::new(e.to_string()))?;
        store.note_used(&step.key);
        n += 1;
    }
    Ok(n)
}
