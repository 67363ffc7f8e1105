//! Nodosum: an embeddable cluster layer for Rust services.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;

pub use config::{
    Config, ConfigError, DEFAULT_ALPN, DEFAULT_CLUSTER, DEFAULT_GOSSIP_PORT, DEFAULT_QUIC_PORT,
    ENV_VARS, GossipConfig, LimitsConfig, LoadError, Problem, Profile, QuicConfig, TlsConfig,
    parse_key,
};
