//! Blob file descriptors for `-o` exports: how a client receives the daemon's
//! open, read-only blob files instead of reading them through
//! [`crate::Memobuild::read_blob`] in chunks.
//!
//! 1. The client calls [`crate::Memobuild::open_blobs`] with the image's
//!    manifest digest and gets a [`crate::BlobHandoff`]: a one-time token and
//!    the blobs, in order.
//! 2. It opens a second connection to the same socket and writes
//!    [`request`]: [`MAGIC`] followed by the token (36 bytes).
//! 3. The daemon answers with messages of one byte each: [`SENT`] carrying up
//!    to [`FDS_PER_MESSAGE`] descriptors (SCM_RIGHTS), until every blob's is
//!    sent, then closes; or a single [`REFUSED`] (unknown, used or expired
//!    token, or another user's) and closes.
//!
//! The daemon tells the two kinds of connection apart by their first byte:
//! a tarpc connection starts with the big-endian length of a frame of at most
//! [`crate::MAX_FRAME_BYTES`] (first byte 0x00-0x02), never with `M`. An
//! older daemon reads `MBFD` as a frame length far above its limit and closes
//! the connection, so a client that tries anyway just falls back.

use std::time::Duration;

/// First bytes of a handoff connection.
pub const MAGIC: [u8; 4] = *b"MBFD";

/// A token is this many random bytes, written as lower-case hex.
pub const TOKEN_BYTES: usize = 16;

/// Length of the client's request: [`MAGIC`] and the hex token.
pub const REQUEST_LEN: usize = MAGIC.len() + 2 * TOKEN_BYTES;

/// Descriptors per message (the kernel takes at most 253 per SCM_RIGHTS).
pub const FDS_PER_MESSAGE: usize = 32;

/// How long a token stays valid after `open_blobs` answered.
pub const TTL: Duration = Duration::from_secs(30);

/// The byte of each message that carries descriptors.
pub const SENT: u8 = b'F';

/// The daemon's only byte when it does not honour the token.
pub const REFUSED: u8 = b'E';

/// The client's request for `token`; `None` when `token` is not a token.
pub fn request(token: &str) -> Option<[u8; REQUEST_LEN]> {
    if !is_token(token) {
        return None;
    }
    let mut out = [0u8; REQUEST_LEN];
    out[..MAGIC.len()].copy_from_slice(&MAGIC);
    out[MAGIC.len()..].copy_from_slice(token.as_bytes());
    Some(out)
}

/// The token in a client's request; `None` when it is not a request.
pub fn parse_request(bytes: &[u8; REQUEST_LEN]) -> Option<&str> {
    let (magic, token) = bytes.split_at(MAGIC.len());
    let token = std::str::from_utf8(token).ok()?;
    (magic == MAGIC && is_token(token)).then_some(token)
}

fn is_token(token: &str) -> bool {
    token.len() == 2 * TOKEN_BYTES
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_and_nothing_else_parses() {
        let token = "0123456789abcdef0123456789abcdef";
        let req = request(token).unwrap();
        assert_eq!(parse_request(&req), Some(token));
        assert!(request("0123").is_none());
        assert!(request("0123456789ABCDEF0123456789ABCDEF").is_none());
        let mut bad = req;
        bad[0] = 0;
        assert_eq!(parse_request(&bad), None);
    }

    /// The first byte of a handoff request can never start a tarpc frame.
    #[test]
    fn the_magic_is_no_frame_length() {
        let as_length = u32::from_be_bytes(MAGIC) as usize;
        assert!(as_length > crate::MAX_FRAME_BYTES);
        assert!(MAGIC[0] > (crate::MAX_FRAME_BYTES >> 24) as u8);
    }
}
