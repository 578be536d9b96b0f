//! Handing an image's blob files to the exporting client (the protocol is in
//! `memobuild_proto::handoff`). `open_blobs` opens the blobs of one image
//! read-only and offers them here under a random one-time token, bound to the
//! uid that asked and valid for [`TTL`]; the client's second connection
//! presents the token and receives the descriptors (SCM_RIGHTS). The client
//! then copies from them into files it creates with its own permissions: the
//! daemon never writes a user's output.

use memobuild_proto::handoff::{
    self, FDS_PER_MESSAGE, REFUSED, REQUEST_LEN, SENT, TOKEN_BYTES, TTL,
};
use memobuild_proto::{BlobHandoff, BlobRef, RpcError};
use parking_lot::Mutex;
use rustix::net::RecvFlags;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UnixStream;

/// Offers waiting at most at once; beyond, the oldest is dropped (with its
/// descriptors), so a client that never collects cannot pile them up.
const MAX_PENDING: usize = 64;

/// How long a handoff connection gets to send its request and take the
/// descriptors.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

struct Offer {
    uid: u32,
    files: Vec<File>,
    expires: Instant,
}

/// Blob descriptors offered and not yet collected, by token.
#[derive(Default)]
pub struct Handoffs {
    pending: Mutex<HashMap<String, Offer>>,
}

impl Handoffs {
    /// Offers `opened` to the client with `uid`: the token and the blobs, in
    /// the order the descriptors will be sent.
    pub fn offer(&self, uid: u32, opened: Vec<(BlobRef, File)>) -> Result<BlobHandoff, RpcError> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| RpcError::new(format!("drawing a handoff token: {e}")))?;
        let token = hex(&bytes);
        let (blobs, files): (Vec<BlobRef>, Vec<File>) = opened.into_iter().unzip();
        let now = Instant::now();
        let mut pending = self.pending.lock();
        pending.retain(|_, o| o.expires > now);
        while pending.len() >= MAX_PENDING {
            let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, o)| o.expires)
                .map(|(t, _)| t.clone())
            else {
                break;
            };
            pending.remove(&oldest);
        }
        pending.insert(
            token.clone(),
            Offer {
                uid,
                files,
                expires: now + TTL,
            },
        );
        Ok(BlobHandoff { token, blobs })
    }

    /// The files offered under `token`, if it is unexpired and was offered to
    /// `uid`. The token is spent by any attempt.
    /// Expired offers (and their descriptors) go on every offer and take.
    fn take(&self, token: &str, uid: u32) -> Option<Vec<File>> {
        let now = Instant::now();
        let mut pending = self.pending.lock();
        let offer = pending.remove(token);
        pending.retain(|_, o| o.expires > now);
        drop(pending);
        let offer = offer?;
        (offer.uid == uid && offer.expires > now).then_some(offer.files)
    }

    #[cfg(test)]
    fn pending(&self) -> usize {
        self.pending.lock().len()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first byte the client sent, without consuming it; `None` at EOF.
pub async fn first_byte(conn: &UnixStream) -> io::Result<Option<u8>> {
    loop {
        conn.readable().await?;
        let mut byte = [0u8; 1];
        let peeked = conn.try_io(Interest::READABLE, || {
            rustix::net::recv(conn, &mut byte[..], RecvFlags::PEEK)
                .map(|(n, _)| n)
                .map_err(io::Error::from)
        });
        match peeked {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(byte[0])),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Answers one handoff connection from `uid` (already allowed by access control).
pub async fn serve(conn: UnixStream, uid: u32, handoffs: Arc<Handoffs>) {
    let conn = match conn.into_std() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "blob handoff: cannot take the connection");
            return;
        }
    };
    let answered = tokio::task::spawn_blocking(move || answer(&conn, uid, &handoffs)).await;
    match answered {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(uid, error = %e, "blob handoff failed"),
        Err(e) => tracing::warn!(uid, error = %e, "blob handoff panicked"),
    }
}

fn answer(conn: &std::os::unix::net::UnixStream, uid: u32, handoffs: &Handoffs) -> io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut request = [0u8; REQUEST_LEN];
    (&*conn).read_exact(&mut request)?;
    let files = handoff::parse_request(&request).and_then(|token| handoffs.take(token, uid));
    let Some(files) = files else {
        tracing::warn!(
            uid,
            "refused a blob handoff: unknown, used or expired token, or another user's"
        );
        return (&*conn).write_all(&[REFUSED]);
    };
    for batch in files.chunks(FDS_PER_MESSAGE) {
        send_fds(conn, batch)?;
    }
    tracing::debug!(
        uid,
        blobs = files.len(),
        "handed blob descriptors to a client"
    );
    Ok(())
}

/// One message: the byte [`SENT`] carrying `files`' descriptors.
fn send_fds(conn: &std::os::unix::net::UnixStream, files: &[File]) -> io::Result<()> {
    let fds: Vec<BorrowedFd<'_>> = files.iter().map(|f| f.as_fd()).collect();
    memobuild_proto::fds::send(conn, SENT, &fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened(n: usize) -> Vec<(BlobRef, File)> {
        (0..n)
            .map(|i| {
                (
                    BlobRef {
                        digest: format!("sha256:{i:064x}"),
                        size: 0,
                        media_type: String::new(),
                    },
                    File::open("/dev/null").unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_token_works_once_and_only_for_its_user() {
        let h = Handoffs::default();
        let offer = h.offer(1000, opened(2)).unwrap();
        assert_eq!(offer.token.len(), 2 * TOKEN_BYTES);
        assert!(h.take(&offer.token, 1001).is_none(), "another user's token");
        assert!(
            h.take(&offer.token, 1000).is_none(),
            "spent by the wrong user's try"
        );
        let offer = h.offer(1000, opened(2)).unwrap();
        assert_eq!(h.take(&offer.token, 1000).map(|f| f.len()), Some(2));
        assert!(h.take(&offer.token, 1000).is_none(), "single use");
    }

    #[test]
    fn an_expired_token_is_refused_and_its_files_closed() {
        let h = Handoffs::default();
        let expired = |h: &Handoffs, token: &str| {
            let files = opened(1).into_iter().map(|(_, f)| f).collect();
            h.pending.lock().insert(
                token.to_string(),
                Offer {
                    uid: 0,
                    files,
                    expires: Instant::now() - Duration::from_millis(1),
                },
            );
        };
        expired(&h, "a");
        assert!(h.take("a", 0).is_none(), "expired");
        expired(&h, "b");
        let live = h.offer(0, opened(1)).unwrap();
        assert_eq!(h.pending(), 1, "the expired offer went with the next offer");
        expired(&h, "c");
        assert!(h.take(&live.token, 0).is_some());
        assert_eq!(h.pending(), 0, "and with the next take");
    }

    #[test]
    fn offers_are_bounded() {
        let h = Handoffs::default();
        let tokens: Vec<String> = (0..MAX_PENDING + 5)
            .map(|_| h.offer(0, opened(1)).unwrap().token)
            .collect();
        assert_eq!(h.pending(), MAX_PENDING);
        assert!(h.take(tokens.last().unwrap(), 0).is_some());
    }
}
