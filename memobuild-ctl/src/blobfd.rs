//! The client's half of a blob handoff (`memobuild_proto::handoff`): receive
//! the daemon's read-only descriptors of an image's blobs over a second
//! connection on the socket, and copy from them with `copy_file_range` (the
//! kernel copies, or shares extents where the filesystem can), falling back to
//! read/write where the destination does not support it (a pipe, another
//! filesystem on old kernels).

use memobuild_proto::handoff::{self, FDS_PER_MESSAGE, REFUSED, SENT};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use std::fs::File;
use std::io::{self, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// How long the daemon gets to answer the handoff connection.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `MEMOBUILD_BLOB_FDS=0` makes exports read blobs through `read_blob` chunks
/// (for comparison and troubleshooting).
pub fn enabled() -> bool {
    std::env::var("MEMOBUILD_BLOB_FDS").map_or(true, |v| v != "0")
}

/// Presents `token` on a new connection to `socket` and receives `count`
/// descriptors, in the daemon's order.
pub fn receive(socket: &Path, token: &str, count: usize) -> io::Result<Vec<File>> {
    let request = handoff::request(token)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed handoff token"))?;
    let mut conn = UnixStream::connect(socket)?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    conn.write_all(&request)?;
    let mut files = Vec::with_capacity(count);
    while files.len() < count {
        let mut byte = [0u8; 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(FDS_PER_MESSAGE))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &conn,
            &mut [IoSliceMut::new(&mut byte)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )?;
        if got.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the daemon closed the handoff after {} of {count} blobs",
                    files.len()
                ),
            ));
        }
        match byte[0] {
            SENT => {}
            REFUSED => {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "the daemon refused the handoff token",
                ))
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected handoff byte {other:#x}"),
                ))
            }
        }
        if got.flags.contains(rustix::net::ReturnFlags::CTRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the daemon sent more descriptors than one message holds",
            ));
        }
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                files.extend(fds.map(File::from));
            }
        }
    }
    if files.len() != count {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "the daemon sent {} descriptors for {count} blobs",
                files.len()
            ),
        ));
    }
    Ok(files)
}

/// Appends the first `len` bytes of `src` to `dst` at its current position.
/// `src`'s own file position is neither used nor moved.
pub fn copy<W: Write + AsFd>(src: &File, len: u64, dst: &mut W) -> io::Result<()> {
    let mut offset = 0u64;
    while offset < len {
        let want = (len - offset).min(1 << 30) as usize;
        match rustix::fs::copy_file_range(src, Some(&mut offset), &*dst, None, want) {
            Ok(0) => return Err(short(offset, len)),
            Ok(_) => {}
            Err(e) if unsupported(e) => return copy_rw(src, offset, len, dst),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The errors after which read/write still works: a destination or a pair of
/// filesystems `copy_file_range` does not handle.
fn unsupported(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    [
        Errno::XDEV,
        Errno::NOSYS,
        Errno::INVAL,
        Errno::OPNOTSUPP,
        Errno::BADF,
        Errno::PERM,
        Errno::TXTBSY,
    ]
    .contains(&e)
}

fn copy_rw<W: Write>(src: &File, mut offset: u64, len: u64, dst: &mut W) -> io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while offset < len {
        let want = (len - offset).min(buf.len() as u64) as usize;
        let n = src.read_at(&mut buf[..want], offset)?;
        if n == 0 {
            return Err(short(offset, len));
        }
        dst.write_all(&buf[..n])?;
        offset += n as u64;
    }
    Ok(())
}

fn short(at: u64, len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the blob ended after {at} of {len} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek};

    #[test]
    fn copies_to_a_file_and_to_a_pipe_from_any_source_position() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(dir.path().join("src"), &data).unwrap();
        let mut src = File::open(dir.path().join("src")).unwrap();
        src.seek(io::SeekFrom::Start(123)).unwrap();
        let mut dst = File::create(dir.path().join("dst")).unwrap();
        dst.write_all(b"head").unwrap();
        copy(&src, data.len() as u64, &mut dst).unwrap();
        dst.write_all(b"tail").unwrap();
        let out = std::fs::read(dir.path().join("dst")).unwrap();
        assert_eq!(&out[..4], b"head");
        assert_eq!(&out[4..4 + data.len()], &data[..]);
        assert_eq!(&out[4 + data.len()..], b"tail");
        assert_eq!(
            src.stream_position().unwrap(),
            123,
            "the source position stays"
        );
        // A pipe: copy_file_range refuses, read/write takes over.
        let (mut reader, mut writer) = std::io::pipe().unwrap();
        let reading = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        copy(&src, 100_000, &mut writer).unwrap();
        drop(writer);
        assert_eq!(reading.join().unwrap(), &data[..100_000]);
        let mut dst = File::create(dir.path().join("short")).unwrap();
        let e = copy(&src, data.len() as u64 + 1, &mut dst).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
