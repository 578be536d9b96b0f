//! Reading zstd-compressed layers (as pulled images may have them): every
//! frame of the stream in turn, skipping skippable frames, since zstd:chunked
//! layers hold one frame per file plus metadata in skippable frames.

use ruzstd::decoding::{FrameDecoder, StreamingDecoder};
use std::io::{self, BufRead, Read};

/// The first bytes of a zstd frame.
pub const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// An uncompressed view of a zstd stream of any number of frames.
pub struct Frames<R: BufRead> {
    /// The frame being read; `None` between frames.
    current: Option<StreamingDecoder<R, FrameDecoder>>,
    /// The source while no frame is open.
    idle: Option<R>,
}

impl<R: BufRead> Frames<R> {
    pub fn new(source: R) -> Frames<R> {
        Frames {
            current: None,
            idle: Some(source),
        }
    }

    /// Opens the next data frame; `false` at the end of the stream.
    fn next_frame(&mut self) -> io::Result<bool> {
        let Some(mut source) = self.idle.take() else {
            return Ok(false);
        };
        loop {
            let head = source.fill_buf()?;
            if head.is_empty() {
                return Ok(false);
            }
            if head.len() < 8 {
                return Err(invalid("a truncated zstd frame header"));
            }
            let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            if (0x184D_2A50..=0x184D_2A5F).contains(&magic) {
                let length = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as u64;
                source.consume(8);
                let skipped = io::copy(&mut (&mut source).take(length), &mut io::sink())?;
                if skipped != length {
                    return Err(invalid("a truncated skippable zstd frame"));
                }
                continue;
            }
            let decoder = StreamingDecoder::new(source).map_err(|e| invalid(&e.to_string()))?;
            self.current = Some(decoder);
            return Ok(true);
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {what}"))
}

impl<R: BufRead> Read for Frames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(frame) = self.current.as_mut() {
                let n = frame.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                // The frame is done: the source goes back to idle for the next one.
                self.idle = self.current.take().map(|f| f.into_inner());
            }
            if !self.next_frame()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};

    #[test]
    fn reads_every_frame_and_skips_skippable_ones() {
        let a: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let b = b"second frame".to_vec();
        let mut stream = compress_to_vec(&a[..], CompressionLevel::Fastest);
        // A skippable frame (magic 0x184D2A5E, 3 bytes), as zstd:chunked writes.
        stream.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
        stream.extend_from_slice(&3u32.to_le_bytes());
        stream.extend_from_slice(b"xyz");
        stream.extend_from_slice(&compress_to_vec(&b[..], CompressionLevel::Fastest));
        let mut out = Vec::new();
        Frames::new(&stream[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, [a, b].concat());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut stream = MAGIC.to_vec();
        stream.extend_from_slice(&[0xff; 32]);
        let mut out = Vec::new();
        assert!(Frames::new(&stream[..]).read_to_end(&mut out).is_err());
        assert!(Frames::new(&[1u8, 2, 3][..]).read_to_end(&mut out).is_err());
    }
}
