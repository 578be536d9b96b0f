//! What one build does with registries, phase by phase, for exec/build.rs:
//! before planning, pull the FROM images the needed stages lack (each name
//! resolved once per build) and read the remote step caches; after planning,
//! record the steps a remote cache has; after the build, push and write the
//! caches. Only pulls and pushes can fail a build: a cache that cannot be read
//! or written only means local work, and the progress says so.

use memobuild_dockerfile as dockerfile;
use memobuild_plan::{self as graph, Plan};
use memobuild_proto::{BuildRequest, RpcError};
use memobuild_registry::{PullPolicy, RegistrySettings, RemoteCache, Session};
use memobuild_store::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// Progress lines for the user (they also go to the daemon's log).
pub(crate) type Note<'a> = &'a (dyn Fn(String) + Send + Sync);

/// A build's registry work.
pub(crate) struct BuildRegistry {
    session: Session,
    /// FROM names of the needed stages (their repositories are mount sources).
    bases: Vec<String>,
    caches: Vec<RemoteCache>,
    exports: Vec<memobuild_proto::registry::CacheExport>,
    push: Vec<String>,
    /// Caches whose registry stopped answering in this build (by index).
    failed: parking_lot::Mutex<BTreeSet<usize>>,
    /// Step keys this build imported from a remote cache (the `remote` tier
    /// answered them, though the local lookup then finds them).
    imported: parking_lot::Mutex<BTreeSet<String>>,
    /// Who the build acts for: imported steps are theirs alone.
    caller: crate::Caller,
}

/// A base image of the build, with where its FROM is.
struct Wanted {
    base: graph::BaseImage,
    file: String,
}

impl BuildRegistry {
    /// Before planning: pulls what `request.pull` asks for and reads the remote caches.
    pub(crate) async fn prepare(
        store: &Arc<Store>,
        settings: &RegistrySettings,
        request: &BuildRequest,
        caller: crate::Caller,
        dockerfile: &Path,
        display: &str,
        note: Note<'_>,
    ) -> Result<BuildRegistry, RpcError> {
        let policy = PullPolicy::parse(&request.pull)?;
        let platform = memobuild_registry::Platform::parse(&request.platform)?;
        let session = Session::new(settings, request.registry_auth.clone(), platform, policy);
        let (cache_from, exports) = cache_refs(settings, request);
        let wanted = base_images(store, request, caller, dockerfile, display).await;
        let mut registry = BuildRegistry {
            session,
            bases: wanted.iter().map(|w| w.base.name.clone()).collect(),
            caches: Vec::new(),
            exports,
            push: request.push.clone(),
            failed: Default::default(),
            imported: Default::default(),
            caller,
        };
        let mut seen = BTreeSet::new();
        for w in wanted {
            if seen.insert(w.base.name.clone()) {
                registry.resolve(store, &w, caller, note).await?;
            }
        }
        for name in cache_from {
            match registry.session.load_cache(store, &name).await {
                Ok(cache) => {
                    note(format!(
                        "registry cache {name}: {} steps",
                        cache.index.steps.len()
                    ));
                    registry.caches.push(cache);
                }
                Err(e) => note(format!(
                    "warning: registry cache {name} cannot be read ({e}); steps not cached here are built locally"
                )),
            }
        }
        Ok(registry)
    }

    /// Pulls one base image if the policy wants it.
    async fn resolve(
        &self,
        store: &Arc<Store>,
        w: &Wanted,
        caller: crate::Caller,
        note: Note<'_>,
    ) -> Result<(), RpcError> {
        let name = &w.base.name;
        let pinned = name.contains('@');
        let pull = match self.session.policy {
            PullPolicy::Never => false,
            PullPolicy::Missing => !w.base.present,
            PullPolicy::Always => !(w.base.present && pinned),
        };
        if !pull || (pinned && name_known_digest(store, name, caller).await) {
            return Ok(());
        }
        // A pull re-points the name: never one the caller may not change
        // (root's bases, with --pull=always); the stored image is used.
        let holder = {
            let (s, n) = (store.clone(), memobuild_oci::normalize_image_name(name));
            tokio::task::spawn_blocking(move || s.image(&n).ok().flatten().and_then(|r| r.owner))
                .await
                .ok()
                .flatten()
        };
        if w.base.present && holder.is_some() && !caller.may_change(holder) {
            note(format!(
                "not pulling {name}: that name belongs to another user here (uid {}); using the stored image",
                holder.unwrap_or_default()
            ));
            return Ok(());
        }
        let started = std::time::Instant::now();
        note(format!("pulling {name} ({})", self.session.platform));
        match self.session.pull(store, name).await {
            Ok(image) => {
                note(format!(
                    "pulled {name}: {} ({} layers, {:.1} MB) in {:.2}s",
                    image.manifest_digest,
                    image.layers.len(),
                    image.size as f64 / 1e6,
                    started.elapsed().as_secs_f64()
                ));
                Ok(())
            }
            // Only a registry that cannot be reached falls back to the stored
            // image; a definite answer (not found, denied, no such platform) is an error.
            Err(e) if w.base.present && e.unreachable => {
                note(format!(
                    "warning: cannot pull {name} ({e}); using the stored image"
                ));
                Ok(())
            }
            Err(e) => {
                let message = format!(
                    "{}:{}:{}: {}{name}: not in memobuild's image store, and pulling it failed: {e}",
                    w.file, w.base.loc.line, w.base.loc.column, w.base.named_by
                );
                Err(RpcError {
                    message,
                    ..RpcError::from(e)
                })
            }
        }
    }

    /// Fast-path builds skip planning; exporting a cache needs the plan.
    pub(crate) fn needs_plan(&self) -> bool {
        !self.exports.is_empty()
    }

    /// After planning: records every planned step the local store lacks and a
    /// remote cache has, so the build finds it as a cache hit.
    pub(crate) async fn import_steps(
        &self,
        store: &Arc<Store>,
        plan: &Plan,
        no_cache: bool,
        note: Note<'_>,
    ) {
        if no_cache || self.caches.is_empty() {
            return;
        }
        let keys: Vec<(usize, String)> = plan
            .steps
            .iter()
            .map(|s| (s.index, s.key.clone()))
            .collect();
        let local = {
            let (store, keys, caller) = (store.clone(), keys.clone(), self.caller);
            tokio::task::spawn_blocking(move || {
                keys.iter()
                    .map(|(_, k)| {
                        // Another user's import is not this build's to use.
                        matches!(store.lookup_step(k), Ok(memobuild_store::Lookup::Hit(r)) if caller.may_use_step(&r))
                    })
                    .collect::<Vec<bool>>()
            })
            .await
            .unwrap_or_default()
        };
        let mut imported = 0;
        for ((_, key), present) in keys.iter().zip(local) {
            if !present && self.import_one(store, key, note).await {
                imported += 1;
            }
        }
        if imported > 0 {
            note(format!("{imported} steps came from the registry cache"));
        }
    }

    /// Whether the build reads remote caches (the `remote` tier is asked).
    pub(crate) fn has_caches(&self) -> bool {
        !self.caches.is_empty()
    }

    /// Whether this build imported step `key` from a remote cache.
    pub(crate) fn imported(&self, key: &str) -> bool {
        self.imported.lock().contains(key)
    }

    /// During the build: records step `key` (a pending step's, resolved) if a
    /// remote cache has it; true if it did.
    pub(crate) async fn import_key(&self, store: &Arc<Store>, key: &str, note: Note<'_>) -> bool {
        let imported = self.import_one(store, key, note).await;
        if imported {
            note("1 step came from the registry cache".to_string());
        }
        imported
    }

    async fn import_one(&self, store: &Arc<Store>, key: &str, note: Note<'_>) -> bool {
        for (i, cache) in self.caches.iter().enumerate() {
            // A cache whose registry stopped answering is not asked again in this build.
            if self.failed.lock().contains(&i) {
                continue;
            }
            // A layer the store holds but the caller may not read (another
            // user's private image) is not fetched, so a cache naming it
            // cannot hand it over.
            if let Some(Some(layer)) = cache.index.steps.get(key) {
                let (s, digest, caller) = (store.clone(), layer.digest.clone(), self.caller);
                let foreign = tokio::task::spawn_blocking(move || {
                    s.blobs.contains(&digest)
                        && !crate::image_access::image_blob_readable(&s, caller, &digest)
                })
                .await
                .unwrap_or(true);
                if foreign {
                    note(format!(
                        "warning: registry cache {}: step {key} names layer {} of an image you may not read; building the step locally",
                        cache.reference.whole(),
                        layer.digest
                    ));
                    continue;
                }
            }
            match self
                .session
                .import_step(store, cache, key, Some(self.caller.uid))
                .await
            {
                Ok(true) => {
                    self.imported.lock().insert(key.to_string());
                    return true;
                }
                Ok(false) => {}
                Err(e) => {
                    if e.unreachable {
                        self.failed.lock().insert(i);
                    }
                    note(format!(
                        "warning: registry cache {}: {e}; building the step locally",
                        cache.reference.whole()
                    ))
                }
            }
        }
        false
    }

    /// After a successful build: pushes the image (failures fail the build) and
    /// writes the remote caches (failures are warnings).
    pub(crate) async fn finish(
        &self,
        store: &Arc<Store>,
        plan: Option<&Plan>,
        manifest_digest: &str,
        note: Note<'_>,
    ) -> Result<(), RpcError> {
        for target in &self.push {
            let started = std::time::Instant::now();
            note(format!("pushing {target}"));
            let stats = self
                .session
                .push(store, manifest_digest, target, &self.bases)
                .await
                .map_err(|e| RpcError {
                    message: format!("pushing {target}: {e}"),
                    ..RpcError::from(e)
                })?;
            note(format!(
                "pushed {target}: {manifest_digest} in {:.2}s ({} blobs uploaded, {:.1} MB; {} already there; {} mounted)",
                started.elapsed().as_secs_f64(),
                stats.uploaded,
                stats.uploaded_bytes as f64 / 1e6,
                stats.present,
                stats.mounted
            ));
        }
        let Some(plan) = plan else {
            return Ok(());
        };
        for export in &self.exports {
            let steps = cached_steps(store, plan, export.max).await;
            let previous = self
                .caches
                .iter()
                .find(|c| c.reference.whole() == reference_whole(&export.reference))
                .map(|c| &c.index);
            let n = steps.len();
            match self
                .session
                .export_cache(store, &export.reference, steps, previous)
                .await
            {
                Ok(uploaded) => note(format!(
                    "registry cache {}: wrote {n} steps ({uploaded} layers uploaded)",
                    export.reference
                )),
                Err(e) => note(format!(
                    "warning: registry cache {} was not written: {e}",
                    export.reference
                )),
            }
        }
        Ok(())
    }
}

fn reference_whole(name: &str) -> String {
    memobuild_oci::reference::parse(name)
        .map(|r| r.whole())
        .unwrap_or_default()
}

/// `--cache-from` and `--cache-to` of the request, else the daemon's default cache.
fn cache_refs(
    settings: &RegistrySettings,
    request: &BuildRequest,
) -> (Vec<String>, Vec<memobuild_proto::registry::CacheExport>) {
    if request.cache_from.is_empty() && request.cache_to.is_empty() {
        if let Some(default) = &settings.cache_ref {
            let export = memobuild_proto::registry::CacheExport {
                reference: default.clone(),
                max: true,
            };
            return (vec![default.clone()], vec![export]);
        }
    }
    let mut from = request.cache_from.clone();
    // Writing merges over what the cache holds, so read it too.
    for e in &request.cache_to {
        if !from.contains(&e.reference) {
            from.push(e.reference.clone());
        }
    }
    (from, request.cache_to.clone())
}

/// The FROM images of the stages the build needs. A Dockerfile that does not
/// parse yields none: planning reports that error with its location. An
/// image the caller may not read is never pulled over its owner's name:
/// planning refuses it (image_access.rs).
async fn base_images(
    store: &Arc<Store>,
    request: &BuildRequest,
    caller: crate::Caller,
    dockerfile: &Path,
    display: &str,
) -> Vec<Wanted> {
    let (store, request, path, display) = (
        store.clone(),
        request.clone(),
        dockerfile.to_path_buf(),
        display.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        let reader = crate::exec::reader_of(&request);
        let text = memobuild_rootpath::creds::reading_as(reader, || {
            memobuild_dockerfile::read_file(&path)
        })
        .ok()?;
        let df = dockerfile::parse(&text, &display).ok()?;
        // --build-context NAME=docker-image://REF: REF is what is pulled.
        let aliases = crate::contexts::image_aliases(&request).ok()?;
        let readable = crate::image_access::Readable::new(&store, caller);
        let images = crate::contexts::Aliased {
            inner: &readable,
            aliases: &aliases,
        };
        let bases = graph::base_images(&df, &request.target, &request.build_args, &images).ok()?;
        Some(
            bases
                .into_iter()
                .filter(|base| {
                    let normalized = memobuild_oci::normalize_image_name(&base.name);
                    let looked_up = aliases
                        .get(&normalized)
                        .map(|r| memobuild_oci::normalize_image_name(r))
                        .unwrap_or(normalized);
                    !readable.refused(&looked_up)
                })
                .map(|mut base| {
                    let normalized = memobuild_oci::normalize_image_name(&base.name);
                    if let Some(reference) = aliases.get(&normalized) {
                        base.name = reference.clone();
                    }
                    Wanted {
                        base,
                        file: display.clone(),
                    }
                })
                .collect(),
        )
    })
    .await
    .ok()
    .flatten()
    .unwrap_or_default()
}

/// A FROM pinned by digest whose manifest is already in the blob store (pulled
/// under another name) is named without the network, if an image the caller
/// may read has that manifest (another user's private image is not named).
async fn name_known_digest(store: &Arc<Store>, name: &str, caller: crate::Caller) -> bool {
    let Some((_, digest)) = name.rsplit_once('@') else {
        return false;
    };
    let (store, name, digest) = (store.clone(), name.to_string(), digest.to_string());
    tokio::task::spawn_blocking(move || {
        if !store.blobs.contains(&digest) {
            return None;
        }
        if !crate::image_access::readable_manifests(&store, caller)
            .ok()?
            .contains(&digest)
        {
            return None;
        }
        let image = memobuild_oci::image::read_image(&store, &digest).ok()?;
        memobuild_registry::name_image(
            &store,
            &memobuild_oci::reference::store_name(&name),
            &image,
            Some(&digest),
        )
        .ok()
    })
    .await
    .ok()
    .flatten()
    .is_some()
}

/// The step records the cache export writes: every planned step (`max`), or
/// those of the target stage and the stages it is built on (`min`).
async fn cached_steps(
    store: &Arc<Store>,
    plan: &Plan,
    max: bool,
) -> BTreeMap<String, Option<memobuild_store::LayerRecord>> {
    let mut stages = BTreeSet::new();
    let mut at = Some(plan.target);
    while let Some(i) = at {
        stages.insert(i);
        at = plan.base_stage(i);
    }
    let keys: Vec<String> = plan
        .steps
        .iter()
        .filter(|s| max || stages.contains(&s.stage))
        .map(|s| s.key.clone())
        .collect();
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        keys.into_iter()
            .filter_map(|k| match store.lookup_step(&k) {
                Ok(memobuild_store::Lookup::Hit(record)) => Some((k, record.layer)),
                _ => None,
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}
