//! Incremental parsing of client requests: RESP arrays of bulk strings, as every client
//! library and `redis-cli` send them, and inline commands (`PING\r\n`) as typed by hand.
//!
//! [`parse_request`] looks at what has arrived, returns `Ok(None)` while a request is
//! incomplete (that is not an error) without consuming anything, and consumes exactly one
//! request when it is complete. Arguments share the input buffer's allocation. Nothing is
//! allocated ahead of data that has actually arrived, whatever lengths a client claims, and
//! every length is checked against [`RequestLimits`] as soon as it is read.

use bytes::{Buf, Bytes, BytesMut};

/// Bounds on one request, checked before anything is buffered for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest bulk argument buffered, in bytes. Default 512 MiB, Redis's
    /// `proto-max-bulk-len`.
    pub max_bulk_len: usize,
    /// Largest bulk argument read at all, in bytes. A request with an argument over
    /// `max_bulk_len` but within this is read and dropped as it arrives, and answered
    /// with [`ProtocolError::TooLarge`] (the connection stays usable); a longer one is a
    /// protocol error. Default 512 MiB, Redis's `proto-max-bulk-len`.
    pub max_discard_len: usize,
    /// Most arguments in one request. Default 1,048,576, Redis's multibulk limit.
    pub max_args: usize,
    /// Longest inline command line and longest header line, in bytes. Default 64 KiB,
    /// Redis's `PROTO_INLINE_MAX_SIZE`.
    pub max_inline_len: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_bulk_len: 512 * 1024 * 1024,
            max_discard_len: 512 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_inline_len: 64 * 1024,
        }
    }
}

/// A request that breaks the protocol. Redis replies `-ERR Protocol error: ...` and closes
/// the connection; so does Mycel, except after [`TooLarge`](Self::TooLarge) (see
/// [`is_fatal`](Self::is_fatal)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Inline command or header line without a line end within the limit.
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    /// The `*N` count is not a number or is beyond the limit.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// A `$N` length is not a number or is beyond the limit.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// An array element is not a bulk string.
    #[error("Protocol error: expected '$', got '{}'", char::from(*found))]
    ExpectedBulk {
        /// The byte found instead of `$`.
        found: u8,
    },
    /// A bulk string is not followed by CRLF.
    #[error("Protocol error: bulk string is not terminated by CRLF")]
    MissingCrlf,
    /// An inline command with an unterminated quote.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// A request with an argument over [`RequestLimits::max_bulk_len`] (within
    /// [`RequestLimits::max_discard_len`]): it was read and dropped, and only it fails.
    #[error("argument is {len} bytes, at most {max} allowed")]
    TooLarge {
        /// The argument's length.
        len: usize,
        /// [`RequestLimits::max_bulk_len`].
        max: usize,
    },
}

impl ProtocolError {
    /// Whether the connection must be closed: true for every error but
    /// [`TooLarge`](Self::TooLarge), after which the next request follows.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, Self::TooLarge { .. })
    }
}

/// A request as clients send it, an array of bulk strings: what [`parse_request`] reads
/// back (for tools and tests that talk to a server).
pub fn encode_request(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one request from the start of `buf` with a one-off parser (tests and fuzzing;
/// connections keep a [`RequestParser`]). `Ok(Some(args))` consumed the request,
/// `Ok(None)` consumed nothing; after an error `buf` is unchanged.
pub fn parse_request(
    buf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    // A one-off parser cannot drop a request across calls: too large is a protocol error.
    let mut parser = RequestParser::new(RequestLimits {
        max_discard_len: limits.max_bulk_len,
        ..*limits
    });
    let mut args = Vec::new();
    Ok(parser.parse(buf, &mut args)?.then_some(args))
}

/// A connection's request parser: the limits plus scratch space reused across requests,
/// so that parsing a request allocates nothing beyond what the request holds.
#[derive(Debug)]
pub struct RequestParser {
    limits: RequestLimits,
    spans: Vec<(usize, usize)>,
    /// An incomplete array request's argument count and where its next argument starts
    /// (`spans` holds the complete ones before it), so that the next call goes on from
    /// there instead of parsing every argument again: a request arriving in many small
    /// reads costs time linear in its size.
    resume: Option<(usize, usize)>,
    /// A request with a too large argument being dropped.
    discard: Option<Discard>,
}

/// Progress through a request being dropped (see [`RequestLimits::max_discard_len`]).
#[derive(Debug, Clone, Copy)]
struct Discard {
    /// Bytes of the current argument, with its CRLF, still to drop.
    left: usize,
    /// Arguments after the current one.
    args_left: usize,
    /// The length that was too large.
    len: usize,
}

impl RequestParser {
    /// A parser enforcing `limits`.
    pub fn new(limits: RequestLimits) -> Self {
        Self {
            limits,
            spans: Vec::new(),
            resume: None,
            discard: None,
        }
    }

    /// Enforces `limits` from the next request on (a request under way keeps being read
    /// as the old limits allowed: only looser limits should replace stricter ones).
    pub fn set_limits(&mut self, limits: RequestLimits) {
        self.limits = limits;
    }

    /// Parses one request from the start of `buf` into `args` (cleared first).
    ///
    /// `Ok(true)` consumed the request; `args` may be empty (an empty line or `*0`), which
    /// callers skip. `Ok(false)` needs more data: the next call must pass the same buffer
    /// with more appended (the parser remembers how far it got); it consumed nothing,
    /// unless a request with a too large argument is being dropped. After
    /// [`TooLarge`](ProtocolError::TooLarge) that request was consumed and the next one
    /// follows; after any other error the connection must be closed (`buf` is unchanged,
    /// unless the error came while a request was being dropped).
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        args: &mut Vec<Bytes>,
    ) -> Result<bool, ProtocolError> {
        args.clear();
        if self.discard.is_some() {
            return self.drop_request(buf);
        }
        match buf.first() {
            None => Ok(false),
            Some(b'*') => {
                match parse_multibulk(buf, &self.limits, &mut self.spans, &mut self.resume, args)? {
                    Multibulk::Done(done) => Ok(done),
                    Multibulk::TooLarge(discard) => {
                        self.discard = Some(discard);
                        self.drop_request(buf)
                    }
                }
            }
            Some(_) => match parse_inline(buf, &self.limits)? {
                Some(a) => {
                    *args = a;
                    Ok(true)
                }
                None => Ok(false),
            },
        }
    }
}

impl RequestParser {
    /// Drops what arrived of the request being discarded; [`ProtocolError::TooLarge`]
    /// once all of it has.
    fn drop_request(&mut self, buf: &mut BytesMut) -> Result<bool, ProtocolError> {
        let result = self.drop_some(buf);
        if !matches!(result, Ok(false)) {
            self.discard = None;
        }
        result
    }

    fn drop_some(&mut self, buf: &mut BytesMut) -> Result<bool, ProtocolError> {
        let limits = self.limits;
        let Some(d) = self.discard.as_mut() else {
            return Ok(false);
        };
        loop {
            let n = d.left.min(buf.len());
            buf.advance(n);
            d.left -= n;
            if d.left > 0 {
                return Ok(false);
            }
            if d.args_left == 0 {
                return Err(ProtocolError::TooLarge {
                    len: d.len,
                    max: limits.max_bulk_len,
                });
            }
            match buf.first() {
                None => return Ok(false),
                Some(b'$') => {}
                Some(&found) => return Err(ProtocolError::ExpectedBulk { found }),
            }
            let Some((len, start)) = header(buf, 0, &limits, ProtocolError::InvalidBulkLength)?
            else {
                return Ok(false);
            };
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= limits.max_discard_len.max(limits.max_bulk_len))
                .ok_or(ProtocolError::InvalidBulkLength)?;
            buf.advance(start);
            d.left = len.saturating_add(2);
            d.args_left -= 1;
        }
    }
}

/// The outcome of [`parse_multibulk`].
enum Multibulk {
    /// As [`RequestParser::parse`]'s `Ok`.
    Done(bool),
    /// An argument is over `max_bulk_len`: the request up to its data was consumed, the
    /// rest is to be dropped.
    TooLarge(Discard),
}

fn parse_multibulk(
    buf: &mut BytesMut,
    limits: &RequestLimits,
    spans: &mut Vec<(usize, usize)>,
    resume: &mut Option<(usize, usize)>,
    args: &mut Vec<Bytes>,
) -> Result<Multibulk, ProtocolError> {
    let (count, mut pos) = match resume.take() {
        Some(progress) => progress,
        None => {
            spans.clear();
            let Some((count, pos)) = header(buf, 0, limits, ProtocolError::InvalidMultibulkLength)?
            else {
                return Ok(Multibulk::Done(false));
            };
            // Zero or negative counts are an empty request, as in Redis.
            let count = usize::try_from(count).unwrap_or(0);
            if count > limits.max_args {
                return Err(ProtocolError::InvalidMultibulkLength);
            }
            (count, pos)
        }
    };
    while spans.len() < count {
        let incomplete = || Ok(Some((count, pos)));
        let step = match buf.get(pos) {
            None => incomplete(),
            Some(b'$') => match header(buf, pos, limits, ProtocolError::InvalidBulkLength)? {
                None => incomplete(),
                Some((len, start)) => {
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|&l| l <= limits.max_discard_len.max(limits.max_bulk_len))
                        .ok_or(ProtocolError::InvalidBulkLength)?;
                    if len > limits.max_bulk_len {
                        buf.advance(start);
                        let args_left = count - spans.len() - 1;
                        spans.clear();
                        return Ok(Multibulk::TooLarge(Discard {
                            left: len.saturating_add(2),
                            args_left,
                            len,
                        }));
                    }
                    let end = start + len;
                    match buf.get(end..end + 2) {
                        None => incomplete(),
                        Some(b"\r\n") => {
                            spans.push((start, end));
                            pos = end + 2;
                            Ok(None)
                        }
                        Some(_) => Err(ProtocolError::MissingCrlf),
                    }
                }
            },
            Some(&found) => Err(ProtocolError::ExpectedBulk { found }),
        };
        if let Some(progress) = step? {
            *resume = Some(progress);
            return Ok(Multibulk::Done(false));
        }
    }
    let frame = buf.split_to(pos).freeze();
    args.extend(spans.iter().map(|&(s, e)| frame.slice(s..e)));
    Ok(Multibulk::Done(true))
}

/// Reads a `<kind><integer>\r\n` header line at `at`, returning the integer and the
/// position after the line.
fn header(
    buf: &[u8],
    at: usize,
    limits: &RequestLimits,
    invalid: ProtocolError,
) -> Result<Option<(i64, usize)>, ProtocolError> {
    let rest = &buf[at..];
    let Some(nl) = memchr(b'\n', rest) else {
        return if rest.len() > limits.max_inline_len {
            Err(ProtocolError::TooBigInline)
        } else {
            Ok(None)
        };
    };
    if nl < 2 || rest[nl - 1] != b'\r' {
        return Err(invalid);
    }
    let n = strict_i64(&rest[1..nl - 1]).ok_or(invalid)?;
    Ok(Some((n, at + nl + 1)))
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Strict decimal parse like Redis's `string2ll`: an optional `-`, then `0` alone or
/// digits without a leading zero; no spaces, no `+`, no `-0`, nothing beyond `i64`. Read
/// byte by byte: it runs for every length header of every request.
pub(crate) fn strict_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    match digits {
        [b'0'] if !negative => return Some(0),
        [] | [b'0', ..] => return None,
        _ => {}
    }
    let mut magnitude: u64 = 0;
    for &b in digits {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        magnitude = magnitude.checked_mul(10)?.checked_add(u64::from(digit))?;
    }
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

fn parse_inline(
    buf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(nl) = memchr(b'\n', buf) else {
        return if buf.len() > limits.max_inline_len {
            Err(ProtocolError::TooBigInline)
        } else {
            Ok(None)
        };
    };
    if nl > limits.max_inline_len {
        return Err(ProtocolError::TooBigInline);
    }
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let args = split_args(line)?;
    if args.len() > limits.max_args {
        return Err(ProtocolError::InvalidMultibulkLength);
    }
    buf.advance(nl + 1);
    Ok(Some(args))
}

/// Whitespace as C's `isspace` sees it (Rust's ASCII whitespace lacks the vertical tab).
fn is_space(b: &u8) -> bool {
    b.is_ascii_whitespace() || *b == 0x0b
}

/// Splits an inline command line like Redis's `sdssplitargs`: arguments are separated by
/// any whitespace but end only at a space, tab, CR or LF (a form feed or vertical tab
/// inside an argument is part of it); `"..."` supports `\n \r \t \b \a \\ \" \xHH` escapes (any other escaped
/// character stands for itself); `'...'` supports `\'`. A closing quote must be followed by
/// whitespace or the end of the line.
fn split_args(line: &[u8]) -> Result<Vec<Bytes>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(is_space) {
            i += 1;
        }
        if i >= line.len() {
            return Ok(args);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            let c = line.get(i).copied();
            if in_dq {
                match c {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\')
                        if line.get(i + 1) == Some(&b'x')
                            && line
                                .get(i + 2..i + 4)
                                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
                    {
                        let hex = |d: u8| match d {
                            b'0'..=b'9' => d - b'0',
                            _ => (d | 0x20) - b'a' + 10,
                        };
                        cur.push(hex(line[i + 2]) << 4 | hex(line[i + 3]));
                        i += 3;
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        cur.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        if line.get(i + 1).is_some_and(|b| !is_space(b)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        in_dq = false;
                        i += 1;
                        break;
                    }
                    Some(b) => cur.push(b),
                }
            } else if in_sq {
                match c {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        cur.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|b| !is_space(b)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        in_sq = false;
                        i += 1;
                        break;
                    }
                    Some(b) => cur.push(b),
                }
            } else {
                match c {
                    None => break,
                    Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => in_dq = true,
                    Some(b'\'') => in_sq = true,
                    Some(b) => cur.push(b),
                }
            }
            i += 1;
        }
        debug_assert!(!in_dq && !in_sq);
        args.push(Bytes::from(cur));
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn an_encoded_request_parses_back() {
        let args: [&[u8]; 3] = [b"SET", b"k", b"a value\r\nwith a line end"];
        let mut buf = BytesMut::from(&encode_request(&args)[..]);
        assert_eq!(&buf[..10], b"*3\r\n$3\r\nSE");
        let parsed = parse_request(&mut buf, &RequestLimits::default())
            .expect("valid")
            .expect("complete");
        assert_eq!(parsed, args.map(Bytes::copy_from_slice));
        assert!(buf.is_empty());
    }

    fn parse(input: &[u8]) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        parse_request(&mut BytesMut::from(input), &RequestLimits::default())
    }

    fn args(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    #[test]
    fn multibulk_and_pipelining() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nPING\r\n"[..]);
        let l = RequestLimits::default();
        assert_eq!(
            parse_request(&mut buf, &l).unwrap(),
            Some(args(&["GET", "k"]))
        );
        assert_eq!(parse_request(&mut buf, &l).unwrap(), Some(args(&["PING"])));
        assert_eq!(parse_request(&mut buf, &l).unwrap(), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn incomplete_consumes_nothing() {
        let full = b"*2\r\n$3\r\nSET\r\n$5\r\nv\r\nlu\r\n";
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(
                parse_request(&mut buf, &RequestLimits::default()),
                Ok(None),
                "cut {cut}"
            );
            assert_eq!(buf.len(), cut);
        }
        assert_eq!(parse(full).unwrap(), Some(args(&["SET", "v\r\nlu"])));
    }

    #[test]
    fn a_request_arriving_in_pieces_is_parsed_once() {
        let mut parser = RequestParser::new(RequestLimits::default());
        let mut args = Vec::new();
        let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv"[..]);
        assert_eq!(parser.parse(&mut buf, &mut args), Ok(false));
        // Two arguments are complete; the next call starts at the third one.
        assert_eq!(parser.resume, Some((3, 20)));
        assert_eq!(parser.spans.len(), 2);
        buf.extend_from_slice(b"v");
        assert_eq!(parser.parse(&mut buf, &mut args), Ok(false));
        assert_eq!(parser.resume, Some((3, 20)));
        buf.extend_from_slice(b"\r\n*1\r\n$4\r\nPING\r\n");
        assert_eq!(parser.parse(&mut buf, &mut args), Ok(true));
        assert_eq!(args, self::args(&["SET", "k", "vv"]));
        assert_eq!(parser.resume, None);
        assert_eq!(parser.parse(&mut buf, &mut args), Ok(true));
        assert_eq!(args, self::args(&["PING"]));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_request_with_a_too_large_argument_is_dropped_as_it_arrives() {
        let limits = RequestLimits {
            max_bulk_len: 4,
            max_discard_len: 100,
            ..RequestLimits::default()
        };
        let mut parser = RequestParser::new(limits);
        let mut args = Vec::new();
        // The too large value in the middle, an argument after it, then the next request.
        let wire: &[u8] =
            b"*4\r\n$3\r\nSET\r\n$50\r\n01234567890123456789012345678901234567890123456789\r\n$1\r\nk\r\n$2\r\nEX\r\n*1\r\n$4\r\nPING\r\n";
        let mut buf = BytesMut::new();
        let mut outcomes = Vec::new();
        for piece in wire.chunks(7) {
            buf.extend_from_slice(piece);
            loop {
                match parser.parse(&mut buf, &mut args) {
                    Ok(false) => break,
                    Ok(true) => outcomes.push(Ok(args.clone())),
                    Err(e) => {
                        assert!(!e.is_fatal(), "{e}");
                        outcomes.push(Err(e));
                    }
                }
            }
            // Nothing of the dropped request is kept beyond a header line.
            assert!(buf.len() < 16, "{buf:?}");
        }
        assert_eq!(
            outcomes,
            vec![
                Err(ProtocolError::TooLarge { len: 50, max: 4 }),
                Ok(self::args(&["PING"])),
            ]
        );
        assert!(buf.is_empty());
        assert_eq!(
            ProtocolError::TooLarge { len: 50, max: 4 }.to_string(),
            "argument is 50 bytes, at most 4 allowed"
        );
        // Beyond the discard limit it is a protocol error, as before.
        let mut buf = BytesMut::from(&b"*1\r\n$101\r\n"[..]);
        assert_eq!(
            parser.parse(&mut buf, &mut args),
            Err(ProtocolError::InvalidBulkLength)
        );
        // A one-off parse cannot drop across calls: too large is a protocol error there.
        let mut buf = BytesMut::from(&b"*1\r\n$5\r\n"[..]);
        assert_eq!(
            parse_request(&mut buf, &limits),
            Err(ProtocolError::InvalidBulkLength)
        );
    }

    #[test]
    fn inline_commands() {
        assert_eq!(parse(b"PING\r\n").unwrap(), Some(args(&["PING"])));
        assert_eq!(
            parse(b"set  k   v\n").unwrap(),
            Some(args(&["set", "k", "v"]))
        );
        assert_eq!(parse(b"\r\n").unwrap(), Some(vec![]));
        assert_eq!(
            parse(b"SET k \"a b\\x41\\n\" 'it\\'s'\r\n").unwrap(),
            Some(args(&["SET", "k", "a bA\n", "it's"]))
        );
        // As Redis: form feeds and vertical tabs separate arguments but do not end one;
        // `\x` without two hex digits is an `x`.
        assert_eq!(
            parse(b"\x0b\x0cSET k\x0b \"\\x+f\\xG1\\x4a\"\x0c\x0b\r\n").unwrap(),
            Some(args(&["SET", "k\x0b", "x+fxG1J"]))
        );
        assert_eq!(parse(b"SET \"k\r\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(
            parse(b"SET \"k\"x\r\n"),
            Err(ProtocolError::UnbalancedQuotes)
        );
        assert_eq!(parse(b"PING"), Ok(None));
    }

    #[test]
    fn empty_multibulk_is_an_empty_request() {
        assert_eq!(parse(b"*0\r\n").unwrap(), Some(vec![]));
        assert_eq!(parse(b"*-1\r\n").unwrap(), Some(vec![]));
        // Not a number to Redis either.
        assert_eq!(
            parse(b"*-0\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
    }

    #[test]
    fn hostile_lengths_are_refused_before_buffering() {
        let l = RequestLimits {
            max_bulk_len: 10,
            max_discard_len: 10,
            max_args: 3,
            max_inline_len: 16,
        };
        let p = |i: &[u8]| parse_request(&mut BytesMut::from(i), &l);
        assert_eq!(p(b"*4\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(p(b"*1\r\n$11\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(p(b"*1\r\n$-1\r\n"), Err(ProtocolError::InvalidBulkLength));
        assert_eq!(p(b"*x\r\n"), Err(ProtocolError::InvalidMultibulkLength));
        assert_eq!(
            p(b"*1\r\n:1\r\n"),
            Err(ProtocolError::ExpectedBulk { found: b':' })
        );
        assert_eq!(p(b"*1\r\n$1\r\nab\r\n"), Err(ProtocolError::MissingCrlf));
        assert_eq!(
            p(b"*99999999999999999999\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(p(&[b'a'; 17]), Err(ProtocolError::TooBigInline));
        assert_eq!(p(&[b'*'; 17]), Err(ProtocolError::TooBigInline));
        assert_eq!(p(b"*1\n"), Err(ProtocolError::InvalidMultibulkLength));
        // Redis's default bulk limit is accepted as a claim without reserving it.
        let mut buf = BytesMut::from(&b"*1\r\n$536870912\r\nabc"[..]);
        assert_eq!(parse_request(&mut buf, &RequestLimits::default()), Ok(None));
        assert!(buf.capacity() < 1024);
    }

    /// Redis's `string2ll` rules, spelled out on text: what [`strict_i64`] must agree with.
    fn string2ll(s: &[u8]) -> Option<i64> {
        let text = std::str::from_utf8(s).ok()?;
        let digits = text.strip_prefix('-').unwrap_or(text);
        let plain = !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" && digits.len() == text.len() || !digits.starts_with('0'));
        if plain { text.parse().ok() } else { None }
    }

    #[test]
    fn integers_follow_redis_string2ll() {
        for (text, want) in [
            ("0", Some(0)),
            ("7", Some(7)),
            ("-7", Some(-7)),
            ("9223372036854775807", Some(i64::MAX)),
            ("-9223372036854775808", Some(i64::MIN)),
            ("9223372036854775808", None),
            ("-9223372036854775809", None),
            ("99999999999999999999", None),
            ("-0", None),
            ("00", None),
            ("01", None),
            ("+1", None),
            ("", None),
            ("-", None),
            (" 1", None),
            ("1 ", None),
            ("1a", None),
            ("\u{663}", None),
        ] {
            assert_eq!(strict_i64(text.as_bytes()), want, "{text:?}");
            assert_eq!(string2ll(text.as_bytes()), want, "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn integers_agree_with_the_text_rules(s in "-?[0-9+ a]{0,21}") {
            prop_assert_eq!(strict_i64(s.as_bytes()), string2ll(s.as_bytes()));
        }

        #[test]
        fn round_trips_any_args_through_any_split(
            reqs in proptest::collection::vec(proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6), 1..8),
            chunk in 1usize..50,
        ) {
            let mut wire = Vec::new();
            for r in &reqs {
                wire.extend_from_slice(format!("*{}\r\n", r.len()).as_bytes());
                for a in r {
                    wire.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                    wire.extend_from_slice(a);
                    wire.extend_from_slice(b"\r\n");
                }
            }
            // One parser for the whole stream, as a connection has: it goes on from
            // where an incomplete request stopped.
            let mut parser = RequestParser::new(RequestLimits::default());
            let mut args = Vec::new();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                while parser.parse(&mut buf, &mut args).unwrap() {
                    out.push(args.iter().map(|b| b.to_vec()).collect::<Vec<_>>());
                }
            }
            prop_assert_eq!(out, reqs);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn garbage_never_panics_and_errors_consume_nothing(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&data[..]);
            let l = RequestLimits { max_bulk_len: 100, max_discard_len: 100, max_args: 10, max_inline_len: 100 };
            loop {
                let before = buf.len();
                match parse_request(&mut buf, &l) {
                    Ok(Some(a)) => {
                        prop_assert!(buf.len() < before);
                        prop_assert!(a.len() <= 10);
                    }
                    Ok(None) | Err(_) => { prop_assert_eq!(buf.len(), before); break; }
                }
            }
        }
    }
}
