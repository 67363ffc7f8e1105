//! Real nodes on loopback, in one process: gossip over UDP, data over mutual-TLS QUIC.
//! Tests assert delivery and state; timeouts only guard against hangs.

mod cluster;
mod load;
mod messaging;
mod requests;
mod rotation;
mod security;
mod util;
