//! The crate's error type.

use std::io;
use std::net::SocketAddr;

use nodosum_proto::KeyringError;

use crate::config::ConfigError;

/// Why a gossip operation failed. Unless stated otherwise, state is unchanged after an
/// error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The UDP socket could not be set up.
    #[error("cannot bind gossip socket on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        source: io::Error,
    },
    /// [`Gossip::start`](crate::Gossip::start) was called outside a Tokio runtime.
    #[error("gossip must be started from within a Tokio runtime")]
    NoRuntime,
    /// The operating system's random source failed.
    #[error("cannot seed the random generator: {0}")]
    Random(String),
    /// The local identity (node ID, metadata) does not fit the datagram size.
    #[error("identity of {len} bytes does not fit a datagram (at most {max})")]
    IdentityTooLarge {
        /// Encoded identity length in bytes.
        len: usize,
        /// The most that fits `max_datagram_size`.
        max: usize,
    },
    /// A keyring operation was refused.
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    /// This node has left the cluster; start a new one to rejoin.
    #[error("this node has left the cluster")]
    Left,
    /// The gossip task is no longer running.
    #[error("the gossip task has stopped")]
    Stopped,
}
