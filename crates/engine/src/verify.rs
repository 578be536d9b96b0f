//! Store consistency check (`memobuild-ctl verify`): every step cache entry and
//! image names blobs that exist and hash to their digest, and every blob on disk
//! hashes to its name. Read-only: a build drops and rebuilds what is corrupt.

use super::{Store, StoreError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub cache_entries: u64,
    pub images: u64,
    pub blobs: u64,
    /// Files in the temp directory (leftovers, or in use by running builds).
    pub temp_files: u64,
    /// One line per problem: what is wrong with which record or blob.
    pub problems: Vec<String>,
}

/// Hashes every blob and checks every record. Blocking; reads the whole store.
pub(crate) fn verify(store: &Store) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut bad_blobs = std::collections::HashMap::new();
    for blob in store.blobs.list()? {
        match store.blobs.verify(&blob.digest) {
            Ok(()) => report.blobs += 1,
            // Removed meanwhile (garbage collection): not a problem.
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            }
            Err(e) => {
                report.blobs += 1;
                bad_blobs.insert(blob.digest.clone(), e.to_string());
                report.problems.push(format!("blob {}: {e}", blob.digest));
            }
        }
    }
    let check = |what: &str, digest: &str, problems: &mut Vec<String>| {
        if !store.blobs.contains(digest) {
            problems.push(format!("{what} names missing blob {digest}"));
        } else if bad_blobs.contains_key(digest) {
            problems.push(format!("{what} names corrupt blob {digest}"));
        }
    };
    for (key, record) in store.steps()? {
        report.cache_entries += 1;
        if let Some(layer) = &record.layer {
            check(
                &format!("cache entry {key}"),
                &layer.digest,
                &mut report.problems,
            );
        }
    }
    for (name, record) in store.images()? {
        report.images += 1;
        let what = format!("image {name}");
        check(&what, &record.manifest_digest, &mut report.problems);
        check(&what, &record.config_digest, &mut report.problems);
        match memobuild_oci::image::read_image(store, &record.manifest_digest) {
            Ok(image) => {
                for layer in &image.layers {
                    check(&what, &layer.digest, &mut report.problems);
                }
            }
            Err(e) => report.problems.push(format!("{what}: {e}")),
        }
    }
    report.temp_files = store.blobs.temp_entries() as u64;
    Ok(report)
}
