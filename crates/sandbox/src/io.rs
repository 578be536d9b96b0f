//! A task's stdout and stderr: containerd's shim opens two FIFOs we create and
//! writes the process's output into them; a blocking thread per stream reads
//! until EOF (the shim closes its end when the process and its IO are done) and
//! forwards chunks to the caller's channel as they come.

use super::{OutputChunk, OutputStream, SandboxError};
use std::io::Read;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

pub(crate) fn mkfifo(path: &Path) -> Result<(), SandboxError> {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| {
        SandboxError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        }
    })
}

/// Starts reading `fifo`. The open blocks until the shim opens the write end;
/// [`unblock`] releases it if the task never got that far.
pub(crate) fn spawn_reader(
    fifo: PathBuf,
    stream: OutputStream,
    output: mpsc::Sender<OutputChunk>,
) -> tokio::task::JoinHandle<u64> {
    tokio::task::spawn_blocking(move || {
        let Ok(mut file) = std::fs::File::open(&fifo) else {
            return 0;
        };
        let mut total = 0u64;
        let mut buf = vec![0u8; 32 * 1024];
        let mut forward = true;
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    // A caller that stopped listening must not stall the task:
                    // keep draining, drop the bytes.
                    if forward {
                        let chunk = OutputChunk {
                            stream,
                            data: buf[..n].to_vec(),
                        };
                        forward = output.blocking_send(chunk).is_ok();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        total
    })
}

/// Opens and closes the write end without blocking, so a reader still waiting
/// in `open` sees EOF and ends.
pub(crate) fn unblock(fifo: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo);
}
