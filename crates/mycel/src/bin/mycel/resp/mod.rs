//! The Redis-compatible front: the pure protocol from the library ([`mycel::resp`]:
//! framing, the request parser with limits, typed commands), their execution against the
//! `Mycel` handle ([`apply`]) and the connection loop ([`conn`]).

pub(crate) mod apply;
pub(crate) mod conn;
pub(crate) mod threads;

pub(crate) use mycel::resp::{cmd, frame, parse};
