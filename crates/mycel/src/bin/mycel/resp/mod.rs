//! The Redis-compatible front: RESP2/RESP3 framing ([`frame`]), the incremental request
//! parser with limits ([`parse`]), typed commands with Redis's error wording ([`cmd`]),
//! their execution against the `Mycel` handle ([`apply`]) and the connection loop
//! ([`conn`]).

pub(crate) mod apply;
pub(crate) mod cmd;
pub(crate) mod conn;
pub(crate) mod frame;
pub(crate) mod parse;
