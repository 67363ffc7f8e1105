//! The two frames of a Nodosum QUIC stream, fixed by the seed's wire format.
//!
//! ```text
//! stream init, once per stream:  [u8 type = 0x01][u16 LE app-id length][app-id UTF-8]
//! each message after it:         [u32 LE length][payload]
//! ```
//!
//! Decoders are incremental: they look at a [`BytesMut`] that holds whatever has arrived,
//! return `Ok(None)` ("need more") without consuming or copying anything while a frame is
//! incomplete, and consume exactly one frame when it is complete. A length above the
//! configured [`Limits`] is rejected as soon as its header is complete, before the body is
//! awaited or any buffer is sized for it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::id::{AppId, IdError};

/// The type byte of a [`StreamInit`] frame.
pub const STREAM_INIT_TYPE: u8 = 0x01;

/// Default limit on an app ID's length in bytes (seed value).
pub const DEFAULT_MAX_APP_ID_LEN: usize = 255;

/// Default limit on one message's payload: 4 MiB.
///
/// Large enough for any cache value or RPC we expect, small enough that a peer claiming the
/// maximum cannot make a node buffer much; raise it per cluster if needed (up to 4 GiB - 1,
/// the format's bound).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Length of a message header: the `u32` length prefix.
pub const MESSAGE_HEADER_LEN: usize = 4;

/// Size limits that are part of the wire format; both peers should agree on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest accepted app ID in bytes (at most `u16::MAX`). Default 255.
    pub max_app_id_len: usize,
    /// Largest accepted message payload in bytes (at most `u32::MAX`). Default 4 MiB.
    pub max_message_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_app_id_len: DEFAULT_MAX_APP_ID_LEN,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// A frame that cannot be encoded or decoded. After a decode error the stream is
/// unusable: the caller resets it; the buffer's contents are unspecified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first byte of a stream is not [`STREAM_INIT_TYPE`].
    #[error("unknown frame type {found:#04x}, expected stream init {STREAM_INIT_TYPE:#04x}")]
    UnknownFrameType {
        /// The type byte that was found.
        found: u8,
    },
    /// The app ID is longer than [`Limits::max_app_id_len`].
    #[error("app id is {len} bytes, at most {max} allowed")]
    AppIdTooLong {
        /// Claimed or actual length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The app ID bytes are not valid UTF-8.
    #[error("app id is not valid UTF-8")]
    AppIdNotUtf8,
    /// The app ID is UTF-8 but not a valid [`AppId`].
    #[error("invalid app id: {0}")]
    InvalidAppId(#[source] IdError),
    /// A message is larger than [`Limits::max_message_size`].
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Claimed or actual payload length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// The first frame of every application stream: which application the stream belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamInit {
    /// The application the stream's messages are for.
    pub app_id: AppId,
}

impl StreamInit {
    /// Bytes of the fixed header: type byte and length.
    pub const HEADER_LEN: usize = 3;

    /// A stream init frame for `app_id`.
    pub fn new(app_id: AppId) -> Self {
        Self { app_id }
    }

    /// Number of bytes [`encode`](Self::encode) writes.
    pub fn encoded_len(&self) -> usize {
        Self::HEADER_LEN + self.app_id.as_str().len()
    }

    /// Appends the frame to `dst`. Fails if the app ID is longer than `limits` allow, so a
    /// node never sends a frame its peers would reject.
    pub fn encode(&self, limits: &Limits, dst: &mut BytesMut) -> Result<(), FrameError> {
        let id = self.app_id.as_str().as_bytes();
        let max = limits.max_app_id_len.min(usize::from(u16::MAX));
        let len = u16::try_from(id.len())
            .ok()
            .filter(|&len| usize::from(len) <= max)
            .ok_or(FrameError::AppIdTooLong { len: id.len(), max })?;
        dst.reserve(Self::HEADER_LEN + id.len());
        dst.put_u8(STREAM_INIT_TYPE);
        dst.put_u16_le(len);
        dst.put_slice(id);
        Ok(())
    }

    /// Decodes a stream init frame from the start of `src`.
    ///
    /// Returns `Ok(None)` with `src` untouched while the frame is incomplete; on success the
    /// frame's bytes are consumed and anything after it (the first messages) stays in `src`.
    /// A wrong type byte or an oversized length is reported as soon as it is visible.
    pub fn decode(src: &mut BytesMut, limits: &Limits) -> Result<Option<Self>, FrameError> {
        let Some(&kind) = src.first() else {
            return Ok(None);
        };
        if kind != STREAM_INIT_TYPE {
            return Err(FrameError::UnknownFrameType { found: kind });
        }
        let Some(len_bytes) = src.get(1..Self::HEADER_LEN) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_le_bytes([len_bytes[0], len_bytes[1]]));
        let max = limits.max_app_id_len.min(usize::from(u16::MAX));
        if len > max {
            return Err(FrameError::AppIdTooLong { len, max });
        }
        let Some(id_bytes) = src.get(Self::HEADER_LEN..Self::HEADER_LEN + len) else {
            return Ok(None);
        };
        let id = std::str::from_utf8(id_bytes).map_err(|_| FrameError::AppIdNotUtf8)?;
        let app_id = AppId::with_max_len(id, max).map_err(FrameError::InvalidAppId)?;
        src.advance(Self::HEADER_LEN + len);
        Ok(Some(Self { app_id }))
    }
}

/// The 4-byte header of a message with a payload of `len` bytes.
///
/// Writers that send the payload as its own buffer (vectored writes, no copy) use this.
pub fn message_header(len: usize, limits: &Limits) -> Result<[u8; 4], FrameError> {
    let max = limits.max_message_size.min(u32::MAX as usize);
    u32::try_from(len)
        .ok()
        .filter(|_| len <= max)
        .map(u32::to_le_bytes)
        .ok_or(FrameError::MessageTooLarge { len, max })
}

/// Appends one message frame (header and payload) to `dst`.
pub fn encode_message(
    payload: &[u8],
    limits: &Limits,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    let header = message_header(payload.len(), limits)?;
    dst.reserve(MESSAGE_HEADER_LEN + payload.len());
    dst.put_slice(&header);
    dst.put_slice(payload);
    Ok(())
}

/// Incremental decoder of the `[u32 LE length][payload]` frames that follow a
/// [`StreamInit`].
#[derive(Debug, Clone)]
pub struct MessageDecoder {
    max: usize,
}

impl MessageDecoder {
    /// A decoder that accepts payloads up to `limits.max_message_size` bytes.
    pub fn new(limits: &Limits) -> Self {
        Self {
            max: limits.max_message_size.min(u32::MAX as usize),
        }
    }

    /// Decodes the next message from the start of `src`.
    ///
    /// Returns `Ok(None)` with `src` untouched while the message is incomplete; on success
    /// the frame is consumed and the payload is returned without copying (it shares
    /// `src`'s allocation). An oversized length fails as soon as the 4 header bytes are
    /// there.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(header) = src.get(..MESSAGE_HEADER_LEN) else {
            return Ok(None);
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len > self.max {
            return Err(FrameError::MessageTooLarge { len, max: self.max });
        }
        if src.len() < MESSAGE_HEADER_LEN + len {
            return Ok(None);
        }
        src.advance(MESSAGE_HEADER_LEN);
        Ok(Some(src.split_to(len).freeze()))
    }

    /// How many more bytes `src` needs before [`decode`](Self::decode) can make progress,
    /// so a reader can size its next read. Never more than one maximal frame.
    pub fn needed(&self, src: &[u8]) -> usize {
        match src.get(..MESSAGE_HEADER_LEN) {
            None => MESSAGE_HEADER_LEN - src.len(),
            Some(h) => {
                let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
                (MESSAGE_HEADER_LEN + len.min(self.max)).saturating_sub(src.len())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn init(id: &str) -> StreamInit {
        StreamInit::new(AppId::new(id).unwrap())
    }

    #[test]
    fn stream_init_exact_bytes() {
        let mut buf = BytesMut::new();
        init("chat").encode(&Limits::default(), &mut buf).unwrap();
        assert_eq!(&buf[..], b"\x01\x04\x00chat");
    }

    #[test]
    fn stream_init_waits_for_more_without_consuming() {
        let full = b"\x01\x04\x00chatREST";
        for cut in 0..7 {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(
                StreamInit::decode(&mut buf, &Limits::default()),
                Ok(None),
                "cut {cut}"
            );
            assert_eq!(buf.len(), cut);
        }
        let mut buf = BytesMut::from(&full[..]);
        let frame = StreamInit::decode(&mut buf, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(frame, init("chat"));
        assert_eq!(&buf[..], b"REST");
    }

    #[test]
    fn stream_init_rejects_early() {
        let limits = Limits::default();
        let mut buf = BytesMut::from(&b"\x02"[..]);
        assert_eq!(
            StreamInit::decode(&mut buf, &limits),
            Err(FrameError::UnknownFrameType { found: 2 })
        );
        // The oversized length is refused with only the header present.
        let mut buf = BytesMut::from(&b"\x01\xff\xff"[..]);
        assert_eq!(
            StreamInit::decode(&mut buf, &limits),
            Err(FrameError::AppIdTooLong {
                len: 65535,
                max: 255
            })
        );
        let mut buf = BytesMut::from(&b"\x01\x00\x00"[..]);
        assert_eq!(
            StreamInit::decode(&mut buf, &limits),
            Err(FrameError::InvalidAppId(IdError::Empty))
        );
        let mut buf = BytesMut::from(&b"\x01\x02\x00\xc3\x28"[..]);
        assert_eq!(
            StreamInit::decode(&mut buf, &limits),
            Err(FrameError::AppIdNotUtf8)
        );
    }

    #[test]
    fn stream_init_encode_respects_limit() {
        let limits = Limits {
            max_app_id_len: 3,
            ..Limits::default()
        };
        let mut buf = BytesMut::new();
        assert_eq!(
            init("abcd").encode(&limits, &mut buf),
            Err(FrameError::AppIdTooLong { len: 4, max: 3 })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn message_exact_bytes_and_split() {
        let limits = Limits::default();
        let mut buf = BytesMut::new();
        encode_message(b"hi", &limits, &mut buf).unwrap();
        encode_message(b"", &limits, &mut buf).unwrap();
        assert_eq!(&buf[..], b"\x02\x00\x00\x00hi\x00\x00\x00\x00");
        let dec = MessageDecoder::new(&limits);
        assert_eq!(dec.decode(&mut buf).unwrap().unwrap(), &b"hi"[..]);
        assert_eq!(dec.decode(&mut buf).unwrap().unwrap(), &b""[..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
    }

    #[test]
    fn oversized_message_rejected_from_header_alone() {
        let limits = Limits {
            max_message_size: 10,
            ..Limits::default()
        };
        let dec = MessageDecoder::new(&limits);
        let mut buf = BytesMut::from(&11u32.to_le_bytes()[..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::MessageTooLarge { len: 11, max: 10 })
        );
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FrameError::MessageTooLarge { .. })
        ));
        assert!(
            buf.capacity() < 64,
            "decoder must not reserve the claimed length"
        );
        let mut out = BytesMut::new();
        assert_eq!(
            encode_message(&[0; 11], &limits, &mut out),
            Err(FrameError::MessageTooLarge { len: 11, max: 10 })
        );
    }

    #[test]
    fn needed_is_bounded_by_limit() {
        let limits = Limits {
            max_message_size: 10,
            ..Limits::default()
        };
        let dec = MessageDecoder::new(&limits);
        assert_eq!(dec.needed(&[]), 4);
        assert_eq!(dec.needed(&[5, 0]), 2);
        assert_eq!(dec.needed(&[5, 0, 0, 0, 1]), 4);
        assert_eq!(dec.needed(&u32::MAX.to_le_bytes()), 10);
    }

    proptest! {
        #[test]
        fn messages_round_trip_through_any_split(
            msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20),
            chunk in 1usize..64,
        ) {
            let limits = Limits::default();
            let mut wire = BytesMut::new();
            for m in &msgs {
                encode_message(m, &limits, &mut wire).unwrap();
            }
            let dec = MessageDecoder::new(&limits);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(m) = dec.decode(&mut buf).unwrap() {
                    out.push(m.to_vec());
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(out, msgs);
        }

        #[test]
        fn stream_init_round_trips(id in "[^\\p{Cc}]{1,60}", tail in proptest::collection::vec(any::<u8>(), 0..16)) {
            let limits = Limits::default();
            let frame = init(&id);
            let mut buf = BytesMut::new();
            frame.encode(&limits, &mut buf).unwrap();
            prop_assert_eq!(buf.len(), frame.encoded_len());
            buf.extend_from_slice(&tail);
            prop_assert_eq!(StreamInit::decode(&mut buf, &limits).unwrap(), Some(frame));
            prop_assert_eq!(&buf[..], &tail[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_consume_only_whole_frames(
            data in proptest::collection::vec(any::<u8>(), 0..512),
            max in 0usize..300,
        ) {
            let limits = Limits { max_app_id_len: max, max_message_size: max };
            let mut buf = BytesMut::from(&data[..]);
            match StreamInit::decode(&mut buf, &limits) {
                Ok(Some(f)) => {
                    prop_assert!(f.app_id.as_str().len() <= max);
                    prop_assert_eq!(buf.len(), data.len() - f.encoded_len());
                }
                // Nothing is consumed unless a whole, valid frame was there.
                Ok(None) | Err(_) => prop_assert_eq!(buf.len(), data.len()),
            }
            let dec = MessageDecoder::new(&limits);
            let mut buf = BytesMut::from(&data[..]);
            let mut consumed = 0;
            loop {
                let before = buf.len();
                match dec.decode(&mut buf) {
                    Ok(Some(m)) => {
                        prop_assert!(m.len() <= max);
                        consumed += before - buf.len();
                        prop_assert_eq!(before - buf.len(), 4 + m.len());
                    }
                    Ok(None) => { prop_assert_eq!(buf.len(), before); break; }
                    Err(FrameError::MessageTooLarge { len, .. }) => { prop_assert!(len > max); break; }
                    Err(e) => prop_assert!(false, "unexpected {e}"),
                }
            }
            prop_assert_eq!(consumed + buf.len(), data.len());
        }
    }
}
