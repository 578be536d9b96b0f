//! Moving single blobs between a registry and the blob store: downloads are
//! streamed to disk off the async workers and land only if their sha256 is the
//! digest asked for; uploads skip blobs the registry has (HEAD), try a
//! cross-repository mount, and otherwise send the file in chunks.

use super::{RegistryError, Session};
use futures::StreamExt;
use memobuild_oci::reference::Reference;
use memobuild_store::Store;
use std::sync::Arc;

/// Size of one read from a blob file when uploading (also oci-client's PATCH size).
const UPLOAD_CHUNK: usize = 4 * 1024 * 1024;

impl Session {
    /// Downloads blob `digest` of `reference`'s repository into the store
    /// (nothing to do when it is already there). Corrupt bytes never land.
    pub(super) async fn fetch_blob(
        &self,
        store: &Arc<Store>,
        reference: &Reference,
        digest: &str,
    ) -> Result<(), RegistryError> {
        if store.blobs.contains(digest) {
            return Ok(());
        }
        let what = format!("{} blob {digest}", reference.whole());
        self.client()
            .store_auth_if_needed(reference.resolve_registry(), &self.auth(reference))
            .await;
        self.retry(reference, &what, || async {
            let stream = self.client().pull_blob_stream(reference, digest).await?;
            write_blob(store, digest, stream.stream)
                .await
                .map_err(oci_client::errors::OciDistributionError::IoError)
        })
        .await
    }

    /// Makes blob `digest` (in the store, `size` bytes) present in
    /// `reference`'s repository. Returns how it got there.
    pub(super) async fn send_blob(
        &self,
        store: &Arc<Store>,
        reference: &Reference,
        digest: &str,
        mount_from: &[Reference],
    ) -> Result<Sent, RegistryError> {
        let what = format!("{} blob {digest}", reference.whole());
        let exists = self
            .retry(reference, &what, || {
                self.client().blob_exists(reference, digest)
            })
            .await?;
        if exists {
            return Ok(Sent::Present);
        }
        for source in mount_from.iter().filter(|s| {
            s.registry() == reference.registry() && s.repository() != reference.repository()
        }) {
            // A registry that cannot mount answers 202 and we upload instead.
            if self
                .client()
                .mount_blob(reference, source, digest)
                .await
                .is_ok()
            {
                return Ok(Sent::Mounted);
            }
        }
        let path = store
            .blobs
            .path(digest)
            .map_err(|e| RegistryError::new(&what, e.to_string()))?;
        let size = store
            .blobs
            .size(digest)
            .map_err(|e| RegistryError::new(&what, e.to_string()))?;
        self.retry(reference, &what, || {
            let path = path.clone();
            async move {
                let file = tokio::fs::File::open(&path).await?;
                self.client()
                    .push_blob_stream(reference, file_chunks(file), digest, Some(size))
                    .await
            }
        })
        .await?;
        Ok(Sent::Uploaded(size))
    }
}

/// How a blob reached the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    Present,
    Mounted,
    Uploaded(u64),
}

/// The file as a stream of chunks (tokio's file reads run off the async workers).
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static {
    futures::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut file = file?;
        let mut buf = vec![0u8; UPLOAD_CHUNK];
        let mut n = 0;
        while n < buf.len() {
            match file.read(&mut buf[n..]).await {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Some((Err(e.into()), None)),
            }
        }
        if n == 0 {
            return None;
        }
        buf.truncate(n);
        Some((Ok(bytes::Bytes::from(buf)), Some(file)))
    })
}

/// Writes a downloaded stream into the store through a blocking writer; the
/// blob lands only if its sha256 is `digest`.
async fn write_blob(
    store: &Arc<Store>,
    digest: &str,
    mut stream: impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Unpin,
) -> Result<(), std::io::Error> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let (store2, expected) = (store.clone(), digest.to_string());
    let writer = tokio::task::spawn_blocking(move || {
        let mut upload = store2.blobs.upload().map_err(std::io::Error::other)?;
        while let Some(chunk) = rx.blocking_recv() {
            upload.write(&chunk).map_err(std::io::Error::other)?;
        }
        store2
            .blobs
            .commit_upload(upload, &expected)
            .map_err(std::io::Error::other)
    });
    let mut failed = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => {
                if tx.send(c).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let written = writer.await.map_err(std::io::Error::other)?;
    match failed {
        // The transfer broke off: the partial blob was not committed as it is.
        Some(e) => Err(e),
        None => written.map(|_| ()),
    }
}
