//! RESP reply values and their encoding (RESP2, and RESP3 after `HELLO 3`).
//!
//! Pure: no I/O. Replies are appended to a caller-owned `BytesMut` so one connection reuses
//! one output buffer across all its replies.

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol version a connection speaks, switched by `HELLO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2, the default.
    #[default]
    Resp2,
    /// RESP3.
    Resp3,
}

/// A reply to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+OK`: a status line (no CR or LF inside).
    Simple(&'static str),
    /// `-ERR ...`: an error line; the text starts with its code (`ERR`, `WRONGTYPE`, ...).
    Error(String),
    /// `:42`.
    Integer(i64),
    /// `$3\r\nfoo`: a binary-safe string.
    Bulk(Bytes),
    /// Text meant for people (`INFO`, `CLIENT LIST`): a RESP3 verbatim string of format
    /// `txt` (`=7\r\ntxt:foo`), a bulk string in RESP2.
    Text(Bytes),
    /// The null reply: `$-1` in RESP2, `_` in RESP3.
    Null,
    /// `*N` followed by N frames.
    Array(Vec<Self>),
    /// The null array: `*-1` in RESP2, `_` in RESP3 (`EXEC` of a transaction whose
    /// watched key changed).
    NullArray,
    /// A map: `%N` in RESP3, a flat array of 2N frames in RESP2.
    Map(Vec<(Self, Self)>),
}

impl Frame {
    /// An error reply with the generic `ERR` code.
    pub fn err(msg: impl std::fmt::Display) -> Self {
        Self::Error(format!("ERR {msg}"))
    }

    /// A bulk string from anything byte-like.
    pub fn bulk(data: impl Into<Bytes>) -> Self {
        Self::Bulk(data.into())
    }

    /// Appends the encoding of this frame to `dst`.
    pub fn encode(&self, proto: Protocol, dst: &mut BytesMut) {
        match self {
            Self::Simple(s) => line(dst, b'+', s.as_bytes()),
            Self::Error(s) => line(dst, b'-', sanitize(s).as_bytes()),
            Self::Integer(n) => int_line(dst, b':', *n),
            Self::Bulk(data) => bulk(dst, b'$', b"", data),
            Self::Text(data) => match proto {
                Protocol::Resp2 => bulk(dst, b'$', b"", data),
                Protocol::Resp3 => bulk(dst, b'=', b"txt:", data),
            },
            Self::Null => match proto {
                Protocol::Resp2 => dst.put_slice(b"$-1\r\n"),
                Protocol::Resp3 => dst.put_slice(b"_\r\n"),
            },
            Self::NullArray => match proto {
                Protocol::Resp2 => dst.put_slice(b"*-1\r\n"),
                Protocol::Resp3 => dst.put_slice(b"_\r\n"),
            },
            Self::Array(items) => {
                int_line(dst, b'*', len_i64(items.len()));
                for item in items {
                    item.encode(proto, dst);
                }
            }
            Self::Map(pairs) => {
                match proto {
                    Protocol::Resp2 => int_line(dst, b'*', len_i64(pairs.len() * 2)),
                    Protocol::Resp3 => int_line(dst, b'%', len_i64(pairs.len())),
                }
                for (k, v) in pairs {
                    k.encode(proto, dst);
                    v.encode(proto, dst);
                }
            }
        }
    }
}

fn len_i64(len: usize) -> i64 {
    // Lengths of in-memory buffers fit in i64 on every supported platform.
    i64::try_from(len).unwrap_or(i64::MAX)
}

/// A length-prefixed string: `kind`, the length of `prefix` and `data`, then both.
fn bulk(dst: &mut BytesMut, kind: u8, prefix: &[u8], data: &[u8]) {
    int_line(dst, kind, len_i64(prefix.len() + data.len()));
    dst.reserve(prefix.len() + data.len() + 2);
    dst.put_slice(prefix);
    dst.put_slice(data);
    dst.put_slice(b"\r\n");
}

fn line(dst: &mut BytesMut, kind: u8, text: &[u8]) {
    dst.reserve(text.len() + 3);
    dst.put_u8(kind);
    dst.put_slice(text);
    dst.put_slice(b"\r\n");
}

fn int_line(dst: &mut BytesMut, kind: u8, n: i64) {
    let mut buf = itoa::Buffer::new();
    line(dst, kind, buf.format(n).as_bytes());
}

/// Error lines cannot hold CR or LF; Redis replaces them with spaces too.
fn sanitize(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['\r', '\n']) {
        s.replace(['\r', '\n'], " ").into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: &Frame, p: Protocol) -> Vec<u8> {
        let mut b = BytesMut::new();
        f.encode(p, &mut b);
        b.to_vec()
    }

    #[test]
    fn encodes_like_redis() {
        let p = Protocol::Resp2;
        assert_eq!(enc(&Frame::Simple("OK"), p), b"+OK\r\n");
        assert_eq!(
            enc(&Frame::err("unknown command 'x'"), p),
            b"-ERR unknown command 'x'\r\n"
        );
        assert_eq!(
            enc(&Frame::Error("bad\r\nline".into()), p),
            b"-bad  line\r\n"
        );
        assert_eq!(enc(&Frame::Integer(-12), p), b":-12\r\n");
        assert_eq!(enc(&Frame::bulk(&b"a\r\nb"[..]), p), b"$4\r\na\r\nb\r\n");
        assert_eq!(enc(&Frame::bulk(Bytes::new()), p), b"$0\r\n\r\n");
        assert_eq!(enc(&Frame::Null, p), b"$-1\r\n");
        assert_eq!(
            enc(&Frame::Array(vec![Frame::Integer(1), Frame::Null]), p),
            b"*2\r\n:1\r\n$-1\r\n"
        );
    }

    #[test]
    fn maps_and_null_depend_on_protocol() {
        let m = Frame::Map(vec![(Frame::bulk("proto"), Frame::Integer(3))]);
        assert_eq!(enc(&m, Protocol::Resp2), b"*2\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(enc(&m, Protocol::Resp3), b"%1\r\n$5\r\nproto\r\n:3\r\n");
        assert_eq!(enc(&Frame::Null, Protocol::Resp3), b"_\r\n");
        let t = Frame::Text(Bytes::from_static(b"a:1"));
        assert_eq!(enc(&t, Protocol::Resp2), b"$3\r\na:1\r\n");
        assert_eq!(enc(&t, Protocol::Resp3), b"=7\r\ntxt:a:1\r\n");
    }
}
