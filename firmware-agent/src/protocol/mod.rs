//! Wire types shared by the agent and the server: the tap exchange and the agent channel.
//!
//! Both are sequences of frames: a 4-byte big-endian payload length, then one CBOR-encoded
//! message (RFC 8949). Each side enforces a hard cap on the length before reading the payload.
//! [`frame`] does the framing (sans-io and async helpers), [`tap`] holds the local NFC-like
//! exchange, [`channel`] the TLS channel to the server. Decoding never panics: any malformed
//! input becomes a [`FrameError`]. `PROTOCOL.md` beside the crate is the prose version.

pub mod channel;
pub mod frame;
pub mod tap;

pub use frame::{FrameDecoder, FrameError, read_frame, write_frame};

/// Version carried in the tap challenge and the channel handshake.
pub const PROTOCOL_VERSION: u16 = 1;

/// Decode one CBOR message, refusing trailing bytes.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    let mut rest = payload;
    let value: T = ciborium::de::from_reader(&mut rest).map_err(|_| FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed);
    }
    Ok(value)
}

/// Encode one message as CBOR.
pub fn encode<T: serde::Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(msg, &mut out).map_err(|_| FrameError::Encode)?;
    Ok(out)
}

/// A byte string that must have exactly `N` bytes; the length is checked when decoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bytes<const N: usize>(pub [u8; N]);

impl<const N: usize> std::fmt::Debug for Bytes<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

impl<const N: usize> serde::Serialize for Bytes<N> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de, const N: usize> serde::Deserialize<'de> for Bytes<N> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let buf = serde_bytes::ByteBuf::deserialize(d)?;
        let arr = <[u8; N]>::try_from(buf.as_slice()).map_err(|_| {
            serde::de::Error::invalid_length(buf.len(), &"a fixed-size byte string")
        })?;
        Ok(Self(arr))
    }
}
