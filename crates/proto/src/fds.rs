//! Descriptors sent over a Unix socket (SCM_RIGHTS). The blob handoff
//! ([`crate::handoff`]) and the ssh agent forwarding ([`crate::sshfwd`]) both
//! answer with one-byte messages that carry descriptors.

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd};

/// The most descriptors one message carries ([`crate::handoff::FDS_PER_MESSAGE`]).
pub const MAX_PER_MESSAGE: usize = crate::handoff::FDS_PER_MESSAGE;

/// Sends one message on `conn`: the byte `byte`, carrying `fds` (at most
/// [`MAX_PER_MESSAGE`]).
pub fn send(conn: impl AsFd, byte: u8, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if fds.len() > MAX_PER_MESSAGE || !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let sent = rustix::net::sendmsg(
        conn,
        &[IoSlice::new(&[byte])],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if sent != 1 {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the descriptor message was not sent",
        ));
    }
    Ok(())
}
