//! Nodosum: an embeddable cluster layer for Rust services that run as several instances.
//!
//! A [`Node`] finds other nodes through discovery (static list, DNS-SD, Consul), agrees
//! with them on who is alive with SWIM gossip over encrypted UDP, and exchanges application
//! data with them over QUIC with mandatory mutual TLS. Applications register a named
//! channel ([`Node::application`]) and send bytes to one node, several or all of them, or
//! make requests and get responses; each application is one long-lived QUIC stream per
//! peer, so a slow application never blocks another.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use nodosum::{Config, Incoming, Node, NodeId, Targets};
//!
//! let node = Node::start(Config::development(NodeId::new("node-1")?)).await?;
//! node.join(vec!["127.0.0.1:6969".parse()?]);
//! let mut chat = node.application("chat")?;
//! chat.send("hello", Targets::All).await.ok();
//! while let Some(incoming) = chat.receive().await {
//!     match incoming {
//!         Incoming::Message { from, payload } => println!("{from}: {payload:?}"),
//!         Incoming::Request(req) => { req.respond("pong").await.ok(); }
//!     }
//! }
//! node.shutdown(Duration::from_secs(5)).await;
//! # Ok(())
//! # }
//! ```
//!
//! Lifecycle: [`Node::start`] validates the whole [`Config`] (every problem at once,
//! nothing bound on error), binds QUIC then gossip, starts discovery and joins what it
//! finds. Membership drives connections: an alive member is connected (one connection per
//! pair; the QUIC certificate must name the member's node ID), a failed or departed one is
//! disconnected and requests pending to it fail. [`Node::reload_credentials`] rereads the
//! certificate files and gossip keys for rotations without a restart. [`Node::shutdown`]
//! leaves gracefully.
//!
//! What it is not: a consensus system. Membership is eventually consistent; messages are
//! delivered in order per (sender, application) while a connection lasts, and messages in
//! flight when a connection breaks are lost (requests then fail or time out).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod app;
mod config;
mod dev_ca;
mod error;
mod metrics;
mod node;

pub use app::{AppSender, Application, Incoming, Request, Targets};
pub use config::{
    Config, ConfigError, DEFAULT_ALPN, DEFAULT_CLUSTER, DEFAULT_GOSSIP_PORT, DEFAULT_QUIC_PORT,
    ENV_VARS, GossipConfig, LimitsConfig, LoadError, Problem, Profile, QuicConfig, TlsConfig,
    parse_key,
};
pub use error::{Error, RequestError, SendError, error_chain};
pub use node::{Health, Node, NodeEvent};
pub use nodosum_gossip::{MemberState, MembershipEvent};
pub use nodosum_proto::{AppId, Key, Member, Metadata, NodeId};
pub use nodosum_quic::{AppOptions, Congestion};
