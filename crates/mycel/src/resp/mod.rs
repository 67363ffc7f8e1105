//! The Redis protocol (RESP) as the `mycel` binary speaks it, pure and free of I/O so that
//! it can be unit-tested and fuzzed:
//!
//! - [`frame`]: replies ([`Frame`]) and their RESP2/RESP3 encoding into a caller-owned
//!   buffer.
//! - [`parse`]: the incremental request parser ([`RequestParser`]): arrays of bulk strings
//!   and inline commands, every length checked against [`RequestLimits`] before anything
//!   is buffered for it; an incomplete request is not an error.
//! - [`cmd`]: typed commands ([`Command`]) with Redis's exact error wording for bad arity,
//!   syntax and numbers.
//!
//! Executing commands against a [`Mycel`](crate::Mycel) handle and the connection loop live
//! in the binary.

pub mod cmd;
pub mod frame;
pub mod parse;

pub use cmd::Command;
pub use frame::{Frame, Protocol};
pub use parse::{ProtocolError, RequestLimits, RequestParser, encode_request, parse_request};
