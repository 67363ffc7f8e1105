//! Wire formats of Nodosum, with no I/O.
//!
//! This crate is the bottom layer of the workspace: the bytes that cross the network and
//! the identities they carry. Everything here is pure: no sockets, no clock, no tokio, no
//! global randomness (callers pass a [`rand_core::CryptoRng`] where a nonce is needed).
//!
//! - [`StreamInit`]: the first frame on every QUIC stream, `[0x01][u16 LE len][app id]`.
//! - [`MessageDecoder`] / [`encode_message`]: message framing on a stream,
//!   `[u32 LE len][payload]`, incremental and bounded by [`Limits`].
//! - [`NodeId`], [`AppId`]: validated identifiers.
//! - [`Member`]: a node's gossip identity (ID, addresses, incarnation, metadata), versioned
//!   postcard encoding.
//! - [`Keyring`]: AES-256-GCM sealing of gossip datagrams with the cluster name as
//!   associated data, and key rotation.
//!
//! What this crate is not: it does not decide *when* anything is sent, does not know about
//! foca or quinn, and does not keep connection state. Decoders never panic, never loop
//! without consuming input, and never allocate more than the configured limits, whatever
//! bytes they are given.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod envelope;
mod frame;
mod id;
mod member;

pub use envelope::{
    ENVELOPE_OVERHEAD, ENVELOPE_VERSION, EnvelopeError, Key, KeyId, Keyring, KeyringError,
};
pub use frame::{
    DEFAULT_MAX_APP_ID_LEN, DEFAULT_MAX_MESSAGE_SIZE, FrameError, Limits, MESSAGE_HEADER_LEN,
    MessageDecoder, STREAM_INIT_TYPE, StreamInit, encode_message, message_header,
};
pub use id::{AppId, IdError, MAX_NODE_ID_LEN, NodeId};
pub use member::{MAX_METADATA_LEN, MEMBER_VERSION, Member, MemberError, Metadata};
pub use rand_core;
