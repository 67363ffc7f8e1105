//! Real quinn endpoints on 127.0.0.1: handshakes and refusals, duplicate connections,
//! stream routing, isolation between applications, reconnects, cleanup, migration.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod cleanup;
mod early;
mod handshake;
mod identity;
mod reconnect;
mod simultaneous;
mod streams;
mod util;
