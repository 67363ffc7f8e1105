//! The `mycel` binary, started as child processes on loopback (one-node clusters, a
//! three-node cluster, and `--standalone`) and driven by the real
//! `redis-cli` and `redis-benchmark` (Debian package `redis-tools`), the `redis` client
//! crate, raw RESP over TCP and
//! HTTP to its admin API. Timeouts only guard against hangs; nothing asserts timing.

mod admin;
mod binary;
mod client;
mod protocol;
mod redis_cli;
mod three_nodes;
mod tls;
mod util;
