//! Whose image content a user may read (docs/SECURITY.md, "Ownership"):
//! image names are one namespace, but a non-admin's `FROM NAME`, `COPY
//! --from=NAME`, `--build-context x=docker-image://NAME` and export blob
//! requests use only images [`Caller::may_read`] allows (their own, unowned
//! ones, root's); another user's private image is refused with
//! `permission_denied`, never pulled over.

use crate::{Caller, Engine};
use memobuild_oci::image::{read_image, ImageSource, StoredImage};
use memobuild_oci::OciError;
use memobuild_proto::{ErrorKind, RpcError};
use memobuild_store::{Lookup, Store};
use parking_lot::Mutex;
use std::collections::HashSet;

/// The store's images as `caller` may build on them; remembers each name it
/// refused, so the planning error can say "permission denied" and the
/// registry step never pulls over another user's name.
pub(crate) struct Readable<'a> {
    store: &'a Store,
    caller: Caller,
    denied: Mutex<Vec<(String, RpcError)>>,
}

impl<'a> Readable<'a> {
    pub(crate) fn new(store: &'a Store, caller: Caller) -> Readable<'a> {
        Readable {
            store,
            caller,
            denied: Mutex::new(Vec::new()),
        }
    }

    /// Whether `name` (normalized) was refused.
    pub(crate) fn refused(&self, name: &str) -> bool {
        self.denied.lock().iter().any(|(n, _)| n == name)
    }

    /// A planning error, of kind `permission_denied` (with its hint) if an
    /// image was refused.
    pub(crate) fn explain(&self, mut error: RpcError) -> RpcError {
        if let Some((_, denied)) = self.denied.lock().first() {
            error.kind = ErrorKind::PermissionDenied;
            error.hint = denied.hint.clone();
        }
        error
    }
}

impl ImageSource for Readable<'_> {
    fn image(&self, name: &str) -> Result<Option<StoredImage>, OciError> {
        match self.store.image(name)? {
            Some(record) if !self.caller.may_read(record.owner) => {
                let e = self
                    .caller
                    .denied_read(&format!("image {name}"), record.owner);
                let message = e.message.clone();
                self.denied.lock().push((name.to_string(), e));
                Err(OciError::Invalid(message))
            }
            Some(record) => read_image(self.store, &record.manifest_digest).map(Some),
            None => Ok(None),
        }
    }
}

/// Manifest digests of the images `caller` may read.
pub(crate) fn readable_manifests(
    store: &Store,
    caller: Caller,
) -> Result<HashSet<String>, RpcError> {
    let images = store.images().map_err(|e| RpcError::new(e.to_string()))?;
    Ok(images
        .into_iter()
        .filter(|(_, r)| caller.may_read(r.owner))
        .map(|(_, r)| r.manifest_digest)
        .collect())
}

/// The manifest, config and layer digests of `manifests` (images whose blobs
/// went missing name nothing).
fn image_blobs_of(store: &Store, manifests: HashSet<String>) -> HashSet<String> {
    let mut out = HashSet::new();
    for manifest in manifests {
        if let Ok(image) = read_image(store, &manifest) {
            out.insert(image.config_digest.clone());
            out.extend(image.layers.iter().map(|l| l.digest.clone()));
            out.insert(manifest);
        }
    }
    out
}

/// Whether `caller` may read blob `digest` as part of an image it may read
/// (admins: any).
pub(crate) fn image_blob_readable(store: &Store, caller: Caller, digest: &str) -> bool {
    caller.admin
        || readable_manifests(store, caller)
            .map(|m| image_blobs_of(store, m).contains(digest))
            .unwrap_or(false)
}

impl Engine {
    /// Every blob digest `caller` may read through the export requests:
    /// manifests, configs and layers of the images it may read and of its
    /// own projects' last and previous builds (untagged results), and the
    /// layers of those builds' steps (a local cache export). `None` for an
    /// admin: everything.
    pub(crate) fn readable_blobs(
        &self,
        caller: Caller,
    ) -> Result<Option<HashSet<String>>, RpcError> {
        if caller.admin {
            return Ok(None);
        }
        let internal = |e: memobuild_store::StoreError| RpcError::new(e.to_string());
        let mut manifests = readable_manifests(&self.store, caller)?;
        let (built, keys) = self.projects.results_of(caller.uid);
        manifests.extend(built);
        let mut out = image_blobs_of(&self.store, manifests);
        for key in keys {
            if let Lookup::Hit(record) = self.store.lookup_step(&key).map_err(internal)? {
                out.extend(record.layer.map(|l| l.digest));
            }
        }
        Ok(Some(out))
    }

    /// Refuses `digest` unless `caller` may read it ([`Engine::readable_blobs`]).
    pub(crate) fn check_blob_readable(&self, caller: Caller, digest: &str) -> Result<(), RpcError> {
        match self.readable_blobs(caller)? {
            Some(readable) if !readable.contains(digest) => Err(RpcError::of(
                ErrorKind::PermissionDenied,
                format!(
                    "permission denied: blob {digest} is not part of an image uid {} may read",
                    caller.uid
                ),
            )
            .hint("export images you built, pulled, or root's; another user's images are private to them")),
            _ => Ok(()),
        }
    }
}
