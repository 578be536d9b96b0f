//! Forwarding the client's ssh agents to `RUN --mount=type=ssh` (`build
//! --ssh`; docs/SECURITY.md, "ssh agents"). The daemon never opens an agent
//! socket itself: the client connects to its own agents, with its own
//! rights, and hands each connection to the daemon.
//!
//! 1. The client opens a connection to the daemon's socket and writes
//!    [`MAGIC`]. The daemon answers with a token ([`TOKEN_BYTES`] random
//!    bytes as lower-case hex), bound to the uid of the connection's peer
//!    credentials (SO_PEERCRED).
//! 2. The client's build request names the token and the ids it forwards
//!    ([`crate::SshForward`]); the daemon refuses a token of another uid.
//! 3. Each time a step connects to the socket of one of those ids, the
//!    daemon writes [`CONNECT`], the id's length (one byte) and the id. The
//!    client connects to its agent for that id and answers one message: the
//!    byte [`SENT`] carrying the connected descriptor (SCM_RIGHTS), or
//!    [`REFUSED`], a big-endian u16 length and a UTF-8 reason. The daemon
//!    copies bytes between the step's connection and that descriptor.
//! 4. The session ends when either side closes the connection (the client
//!    does when its build ends).
//!
//! The daemon tells this connection from a tarpc one and a blob handoff by
//! its first byte: `S` (a tarpc frame starts with 0x00-0x02, a handoff with
//! `M`). An older daemon reads `SSHF` as a frame length above its limit and
//! closes; a client checks [`FEATURE`] first.

/// First bytes of an ssh forwarding session.
pub const MAGIC: [u8; 4] = *b"SSHF";

/// Named in [`crate::DaemonInfo::features`] by daemons that take `--ssh`.
pub const FEATURE: &str = "ssh";

/// A session token is this many random bytes, written as lower-case hex.
pub const TOKEN_BYTES: usize = 16;

/// The daemon asks for a new connection to an agent.
pub const CONNECT: u8 = b'C';

/// The client's answer carrying the connected descriptor.
pub const SENT: u8 = b'F';

/// The client's answer when it cannot connect (a reason follows).
pub const REFUSED: u8 = b'E';

/// The id BuildKit uses when a mount names none (`RUN --mount=type=ssh`).
pub const DEFAULT_ID: &str = "default";

/// Whether `token` looks like a session token.
pub fn is_token(token: &str) -> bool {
    token.len() == 2 * TOKEN_BYTES
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The daemon's request for a connection to agent `id` (ids are at most 255
/// bytes; longer ones are refused when the build is checked).
pub fn connect_request(id: &str) -> Option<Vec<u8>> {
    let len = u8::try_from(id.len()).ok()?;
    let mut out = Vec::with_capacity(2 + id.len());
    out.push(CONNECT);
    out.push(len);
    out.extend_from_slice(id.as_bytes());
    Some(out)
}

/// The client's refusal with `reason` (cut to 4 KiB).
pub fn refusal(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(4096);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &reason.as_bytes()[..end];
    let mut out = Vec::with_capacity(3 + bytes.len());
    out.push(REFUSED);
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_frames() {
        assert!(is_token(&"0a".repeat(TOKEN_BYTES)));
        assert!(!is_token(&"0A".repeat(TOKEN_BYTES)));
        assert!(!is_token("abc"));
        assert_eq!(connect_request("default").unwrap(), b"C\x07default");
        assert!(connect_request(&"x".repeat(256)).is_none());
        assert_eq!(refusal("no"), b"E\x00\x02no");
        // Cut at a character boundary.
        let long = "é".repeat(3000);
        let r = refusal(&long);
        assert_eq!(u16::from_be_bytes([r[1], r[2]]) as usize, r.len() - 3);
        assert!(std::str::from_utf8(&r[3..]).is_ok());
    }
}
