//! A step's stdout and stderr: `runc run` gives the container our pipes; a
//! task per stream reads until EOF (when every process of the container that
//! held the pipe is gone) and forwards chunks to the caller's channel as they
//! come.

use super::{OutputChunk, OutputStream};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Starts reading `pipe` (nothing to read when `None`); the task returns how
/// many bytes came.
pub(crate) fn spawn_pipe_reader<R>(
    pipe: Option<R>,
    stream: OutputStream,
    output: mpsc::Sender<OutputChunk>,
) -> tokio::task::JoinHandle<u64>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let Some(mut pipe) = pipe else { return 0 };
        let mut total = 0u64;
        let mut buf = vec![0u8; 32 * 1024];
        let mut forward = true;
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    total += n as u64;
                    // A caller that stopped listening must not stall the step:
                    // keep draining, drop the bytes.
                    if forward {
                        let chunk = OutputChunk {
                            stream,
                            data: buf[..n].to_vec(),
                        };
                        forward = output.send(chunk).await.is_ok();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        total
    })
}
