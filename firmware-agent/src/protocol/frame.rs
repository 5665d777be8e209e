//! Length-prefixed framing with a hard size cap.
//!
//! A frame is `len: u32 big-endian ‖ payload[len]`. A length above the caller's cap is an error
//! before any payload byte is read or buffered, so a peer cannot make us allocate more than the
//! cap.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame or message could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds the cap for this kind of frame.
    #[error("frame of {len} bytes exceeds the {cap}-byte cap")]
    TooLarge {
        /// Announced length.
        len: u64,
        /// The cap in force.
        cap: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The payload is not a well-formed message of the expected type.
    #[error("malformed message")]
    Malformed,
    /// A message could not be encoded (a bug, not a peer's fault).
    #[error("could not encode message")]
    Encode,
    /// The underlying stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Prefix `payload` with its length.
pub fn encode_frame(payload: &[u8], cap: usize) -> Result<Vec<u8>, FrameError> {
    if payload.len() > cap {
        return Err(FrameError::TooLarge {
            len: u64::try_from(payload.len()).unwrap_or(u64::MAX),
            cap,
        });
    }
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::Encode)?;
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// A sans-io frame splitter: feed it bytes as they arrive, take whole frames out.
#[derive(Debug)]
pub struct FrameDecoder {
    cap: usize,
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// A decoder refusing frames longer than `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            buf: Vec::new(),
        }
    }

    /// Append received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Take the next whole frame, if one has arrived. After an error the stream is unusable.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let Some((len_bytes, rest)) = self.buf.split_first_chunk::<4>() else {
            return Ok(None);
        };
        let len32 = u32::from_be_bytes(*len_bytes);
        let len = usize::try_from(len32).map_err(|_| FrameError::TooLarge {
            len: u64::from(len32),
            cap: self.cap,
        })?;
        if len > self.cap {
            return Err(FrameError::TooLarge {
                len: u64::from(len32),
                cap: self.cap,
            });
        }
        let Some(payload) = rest.get(..len) else {
            return Ok(None);
        };
        let frame = payload.to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(frame))
    }

    /// Bytes received but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// Read one frame; `Ok(None)` on a clean end of stream before the first length byte.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    cap: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len_bytes = [0u8; 4];
    let mut got = 0usize;
    while got < 4 {
        let Some(dst) = len_bytes.get_mut(got..) else {
            break;
        };
        let n = r.read(dst).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        got += n;
    }
    let len32 = u32::from_be_bytes(len_bytes);
    let len = usize::try_from(len32).unwrap_or(usize::MAX);
    if len > cap {
        return Err(FrameError::TooLarge {
            len: u64::from(len32),
            cap,
        });
    }
    let mut payload = vec![0u8; len];
    match r.read_exact(&mut payload).await {
        Ok(_) => Ok(Some(payload)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(FrameError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Write one frame and flush.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    cap: usize,
) -> Result<(), FrameError> {
    let framed = encode_frame(payload, cap)?;
    w.write_all(&framed).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoder_splits_frames_across_pushes() {
        let mut d = FrameDecoder::new(16);
        let mut wire = encode_frame(b"hello", 16).unwrap();
        wire.extend(encode_frame(b"", 16).unwrap());
        for b in &wire[..6] {
            d.push(&[*b]);
        }
        assert_eq!(d.next_frame().unwrap(), None);
        d.push(&wire[6..]);
        assert_eq!(d.next_frame().unwrap().unwrap(), b"hello");
        assert_eq!(d.next_frame().unwrap().unwrap(), b"");
        assert_eq!(d.next_frame().unwrap(), None);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn oversize_length_is_refused_before_payload() {
        let mut d = FrameDecoder::new(16);
        d.push(&17u32.to_be_bytes());
        assert!(matches!(
            d.next_frame(),
            Err(FrameError::TooLarge { len: 17, .. })
        ));
        assert!(encode_frame(&[0; 17], 16).is_err());
    }

    #[tokio::test]
    async fn async_read_handles_eof_and_truncation() {
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, 8).await.unwrap().is_none());
        let mut short: &[u8] = &[0, 0];
        assert!(matches!(
            read_frame(&mut short, 8).await,
            Err(FrameError::Truncated)
        ));
        let mut cut: &[u8] = &[0, 0, 0, 4, 1, 2];
        assert!(matches!(
            read_frame(&mut cut, 8).await,
            Err(FrameError::Truncated)
        ));
        let mut big: &[u8] = &[0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_frame(&mut big, 8).await,
            Err(FrameError::TooLarge { .. })
        ));
        let mut ok: &[u8] = &[0, 0, 0, 2, 9, 9];
        assert_eq!(read_frame(&mut ok, 8).await.unwrap().unwrap(), vec![9, 9]);
    }

    proptest::proptest! {
        #[test]
        fn any_chunking_yields_the_same_frames(
            frames in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0..8),
            chunk in 1usize..17,
        ) {
            let mut wire = Vec::new();
            for f in &frames {
                wire.extend(encode_frame(f, 64).unwrap());
            }
            let mut d = FrameDecoder::new(64);
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                d.push(piece);
                while let Some(f) = d.next_frame().unwrap() {
                    out.push(f);
                }
            }
            proptest::prop_assert_eq!(out, frames);
            proptest::prop_assert_eq!(d.buffered(), 0);
        }
    }
}
