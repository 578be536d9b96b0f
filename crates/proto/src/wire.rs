//! How messages cross the socket: length-delimited frames of MessagePack
//! with field names (rmp-serde's "named" form). Field names make the encoding
//! self-describing, so a field a newer daemon adds is skipped by an older
//! client instead of breaking it (bincode, used before protocol 3, could not
//! do that). Byte payloads (blob chunks, secrets) are MessagePack `bin`
//! values through `serde_bytes`, so they cost their length plus a few bytes.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use tarpc::tokio_util::codec::length_delimited::LengthDelimitedCodec;
use tokio::net::UnixStream;

/// The item types a codec reads and writes, without owning either (so the
/// codec is Send and Sync whatever they are).
type Marker<Item, SinkItem> = PhantomData<(fn() -> Item, fn(SinkItem))>;

/// A MessagePack codec for tarpc's serde transport.
pub struct MsgPack<Item, SinkItem> {
    _types: Marker<Item, SinkItem>,
}

impl<Item, SinkItem> Default for MsgPack<Item, SinkItem> {
    fn default() -> Self {
        MsgPack {
            _types: PhantomData,
        }
    }
}

impl<Item, SinkItem> tarpc::tokio_serde::Deserializer<Item> for MsgPack<Item, SinkItem>
where
    for<'a> Item: Deserialize<'a>,
{
    type Error = io::Error;

    fn deserialize(self: Pin<&mut Self>, src: &BytesMut) -> Result<Item, io::Error> {
        rmp_serde::from_slice(src).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl<Item, SinkItem: Serialize> tarpc::tokio_serde::Serializer<SinkItem>
    for MsgPack<Item, SinkItem>
{
    type Error = io::Error;

    fn serialize(self: Pin<&mut Self>, item: &SinkItem) -> Result<Bytes, io::Error> {
        rmp_serde::to_vec_named(item)
            .map(Bytes::from)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// The transport both sides speak over a connected Unix socket.
pub type Transport<Item, SinkItem> =
    tarpc::serde_transport::Transport<UnixStream, Item, SinkItem, MsgPack<Item, SinkItem>>;

/// Frames `conn` (at most [`crate::MAX_FRAME_BYTES`] a message) and encodes
/// messages as named MessagePack.
pub fn transport<Item, SinkItem>(conn: UnixStream) -> Transport<Item, SinkItem>
where
    for<'a> Item: Deserialize<'a>,
    SinkItem: Serialize,
{
    let mut codec = LengthDelimitedCodec::builder();
    codec.max_frame_length(crate::MAX_FRAME_BYTES);
    tarpc::serde_transport::new(codec.new_framed(conn), MsgPack::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Old {
        a: u32,
        b: String,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct New {
        a: u32,
        b: String,
        added_later: Vec<String>,
    }

    /// The point of the encoding: what a newer peer adds, an older one skips.
    #[test]
    fn an_older_reader_skips_fields_a_newer_writer_added() {
        let new = New {
            a: 7,
            b: "x".into(),
            added_later: vec!["y".into()],
        };
        let bytes = rmp_serde::to_vec_named(&new).unwrap();
        let old: Old = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            old,
            Old {
                a: 7,
                b: "x".into()
            }
        );
    }

    #[test]
    fn an_unknown_error_kind_reads_as_internal() {
        #[derive(Serialize)]
        struct FutureError {
            kind: &'static str,
            message: &'static str,
        }
        let bytes = rmp_serde::to_vec_named(&FutureError {
            kind: "quota_exceeded",
            message: "m",
        })
        .unwrap();
        let e: crate::RpcError = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(e.kind, crate::ErrorKind::Internal);
        assert_eq!(e.hint, None);
    }

    /// A daemon from before `features` answers `hello` without it: a new
    /// client reads no features (and exports through `read_blob`).
    #[test]
    fn a_hello_without_features_reads_as_none() {
        #[derive(Serialize)]
        struct OldInfo {
            protocol_version: u32,
            daemon_version: &'static str,
            data_dir: &'static str,
            pid: u32,
        }
        let bytes = rmp_serde::to_vec_named(&OldInfo {
            protocol_version: crate::PROTOCOL_VERSION,
            daemon_version: "0.1.0",
            data_dir: "/d",
            pid: 1,
        })
        .unwrap();
        let info: crate::DaemonInfo = rmp_serde::from_slice(&bytes).unwrap();
        assert!(info.features.is_empty());
    }

    #[test]
    fn blob_chunks_cost_their_length() {
        let chunk = serde_bytes::ByteBuf::from(vec![0xffu8; 4096]);
        let bytes = rmp_serde::to_vec_named(&chunk).unwrap();
        assert!(bytes.len() <= 4096 + 5, "{} bytes", bytes.len());
    }
}
