//! Content digests of paths in a stage's result: what `COPY --from=STAGE` and
//! `RUN --mount=type=bind,from=STAGE` are keyed on (docs/CACHE.md, "Stage
//! content"), so an edit in a builder stage that leaves the copied files as
//! they were keeps the steps after the copy cached, as in BuildKit.
//!
//! Computed from the stage's layers (a [`FsView`] of their tar headers, then
//! the selected files' bytes), once per (stage key, paths): the digest is
//! remembered in the store, so later builds and the dirty check plan with it.

use super::copy::select_in_view;
use super::fsview::{FsView, ViewKind};
use super::Engine;
use memobuild_oci::layer::{clean_entry_path, open_layer};
use memobuild_oci::{Node, OciError};
use memobuild_plan::key::{content_ref_key, KeyHasher};
use memobuild_store::{LayerRecord, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;

#[derive(Debug, thiserror::Error)]
pub(super) enum ContentError {
    #[error("reading the stage's layers: {0}")]
    Layers(#[from] OciError),
    #[error("the step cache: {0}")]
    Store(#[from] StoreError),
}

/// The content digest of `paths` in the result (`layers`) of the stage whose
/// key is `stage_key`: remembered, or computed and remembered. `glob`: the
/// paths are COPY sources (wildcards match); else a bind mount's source.
pub(super) fn stage_content(
    engine: &Engine,
    stage_key: &str,
    layers: &[LayerRecord],
    paths: &[String],
    glob: bool,
) -> Result<String, ContentError> {
    let ref_key = content_ref_key(stage_key, paths);
    if let Some(known) = engine.store.stage_content(&ref_key)? {
        return Ok(known);
    }
    let view = FsView::load(&engine.store, &engine.layers, layers)?;
    let digest = digest(&engine.store, &view, paths, glob)?;
    engine.store.put_stage_content(&ref_key, &digest)?;
    Ok(digest)
}

/// The digest itself (docs/CACHE.md): per path, what it selects, each root
/// with every entry at and below it (relative path, type, mode, owner, and
/// the BLAKE3 of a file's bytes or a link's target).
fn digest(store: &Store, view: &FsView, paths: &[String], glob: bool) -> Result<String, OciError> {
    let mut selections = Vec::new();
    let mut files = Vec::new();
    for raw in paths {
        let rel = clean_entry_path(raw);
        let roots = if glob {
            select_in_view(view, &rel)
        } else {
            view.resolve(&rel)
                .filter(|r| view.exists(r))
                .map(|r| vec![(r, String::new())])
        };
        for (root, _) in roots.iter().flatten() {
            files.extend(
                entries_at(view, root)
                    .filter(|(_, p)| matches!(view.get(p).map(|e| &e.kind), Some(ViewKind::File)))
                    .map(|(_, p)| p.to_string()),
            );
        }
        selections.push(roots);
    }
    let hashes = hash_files(store, view, &files)?;
    let mut k = KeyHasher::new("stage-content");
    k.u64(paths.len() as u64);
    for (raw, roots) in paths.iter().zip(&selections) {
        k.str(raw);
        let Some(roots) = roots else {
            k.str("missing");
            continue;
        };
        k.u64(roots.len() as u64);
        for (root, name) in roots {
            k.str(name);
            let entries: Vec<(String, &str)> = entries_at(view, root).collect();
            k.u64(entries.len() as u64);
            for (rel, path) in entries {
                let Some(e) = view.get(path) else {
                    // The stage's root directory has no entry of its own.
                    k.str(&rel).str("d").u64(0o755).u64(0).u64(0).str("");
                    continue;
                };
                let (tag, content): (&str, Vec<u8>) = match &e.kind {
                    ViewKind::File => (
                        "f",
                        hashes.get(path).map(|h| h.to_vec()).unwrap_or_default(),
                    ),
                    ViewKind::Dir => ("d", Vec::new()),
                    ViewKind::Symlink(t) => ("l", t.as_bytes().to_vec()),
                    ViewKind::Hardlink(t) => ("h", t.as_bytes().to_vec()),
                    ViewKind::Node(node) => {
                        let (major, minor) = node.numbers();
                        let tag = match node {
                            Node::Fifo => "p",
                            Node::CharDevice { .. } => "c",
                            Node::BlockDevice { .. } => "b",
                        };
                        let numbers = [major.to_le_bytes(), minor.to_le_bytes()].concat();
                        (tag, numbers)
                    }
                    ViewKind::Other => ("o", Vec::new()),
                };
                k.str(&rel)
                    .str(tag)
                    .u64(u64::from(e.mode))
                    .u64(u64::from(e.uid))
                    .u64(u64::from(e.gid))
                    .field(&content);
            }
        }
    }
    Ok(k.finish())
}

/// `root` itself (relative path "") and every entry below it, in path order.
fn entries_at<'a>(view: &'a FsView, root: &'a str) -> impl Iterator<Item = (String, &'a str)> + 'a {
    let prefix = if root.is_empty() { 0 } else { root.len() + 1 };
    std::iter::once((String::new(), root)).chain(
        view.below(root)
            .map(move |(p, _)| (p[prefix..].to_string(), p.as_str())),
    )
}

/// BLAKE3 of each file's bytes, reading each layer at most once.
fn hash_files(
    store: &Store,
    view: &FsView,
    paths: &[String],
) -> Result<HashMap<String, [u8; 32]>, OciError> {
    let mut by_layer: BTreeMap<usize, std::collections::HashSet<&str>> = BTreeMap::new();
    for p in paths {
        if let Some(e) = view.get(p) {
            by_layer.entry(e.layer).or_default().insert(p);
        }
    }
    let mut out = HashMap::new();
    for (layer, wanted) in by_layer {
        let digest = &view.layers[layer].digest;
        let err = |source| OciError::Read {
            digest: digest.clone(),
            source,
        };
        let mut archive = tar::Archive::new(open_layer(&store.blobs, digest)?);
        for entry in archive.entries().map_err(err)? {
            let mut entry = entry.map_err(err)?;
            let path = clean_entry_path(&String::from_utf8_lossy(&entry.path_bytes()));
            if !wanted.contains(path.as_str()) {
                continue;
            }
            let mut hasher = blake3::Hasher::new();
            let mut buf = [0u8; 64 * 1024];
            loop {
                let n = entry.read(&mut buf).map_err(err)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            out.insert(path, *hasher.finalize().as_bytes());
        }
    }
    Ok(out)
}
