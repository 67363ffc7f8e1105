//! Nodosum membership: who is in the cluster and who is alive.
//!
//! SWIM (with suspicion, indirect probes and infection-style dissemination) from the
//! [`foca`] crate, driven over a UDP socket. Every datagram is sealed with the
//! nodosum-proto [`Keyring`](nodosum_proto::Keyring) (AES-256-GCM, cluster name as
//! associated data); datagrams that do not open, or do not parse, are dropped, counted by
//! reason in the metrics and logged at a rate-limited level, and never touch membership
//! state.
//!
//! - [`Gossip`]: the running node (start, join, leave, view, events, keys, metadata).
//! - [`MembershipEvent`]: `Joined`, `Updated`, `Suspect`, `Alive`, `Failed`, `Left`, each
//!   carrying the member's [`Member`](nodosum_proto::Member) identity (node ID, gossip
//!   address, QUIC port, incarnation, metadata).
//! - [`Config`]: presets [`Config::lan`] (default), [`Config::wan`], [`Config::local`].
//!
//! Identity: a member is its node ID. A restarted node comes back with a higher
//! incarnation (by default the start time in milliseconds) and replaces its previous
//! life; a metadata change is a new incarnation too, seen by others as `Updated`. So is a
//! restart that was quicker than failure detection: only a restart after the member was
//! declared failed is seen as `Failed` then `Joined`.
//!
//! Failure detection and Lifeguard. Probes every `probe_interval`, indirect probes
//! through `indirect_checks` members, then suspicion. foca's suspicion timeout is fixed
//! per configuration, so Lifeguard's *dynamic* suspicion (a timeout starting high and
//! shrinking with independent confirmations) is not available: foca's suspicion updates
//! do not carry who raised them, so confirmations cannot be counted. This crate instead
//! uses memberlist's lower bound, `suspicion_mult * log10(n) * probe_interval`, rescaled as
//! the cluster grows, with a default multiplier of 2 (memberlist: 4, stretched up to 6x
//! without confirmations). Lifeguard's local health *is* applied: the driver stretches
//! this node's probe interval, probe timeout and suspicion timeout by `health + 1` while
//! its own probes fail or it has to refute suspicions about itself.
//!
//! Joining: a joiner does not know its seeds' node IDs, so it first asks each seed address
//! for its identity (sealed like everything else), announces itself to the first that
//! answers, and pulls that seed's full member list. Every `sync_interval` a random member's
//! list is pulled again (memberlist's push-pull), which repairs missed updates and
//! merges healed partitions; foca's periodic announces to down members do the rest.
//!
//! Dropped datagrams are counted in `nodosum_gossip_dropped_total{reason}`: `too_large`,
//! `too_short`, `unsupported_version`, `unknown_key` (sealed with a key not installed),
//! `unauthentic` (tampered, or another cluster's name), `malformed`, `refused` (also a
//! sync request meant for another node), `not_member` (a sync request from a node that is
//! not a member or left, e.g. one that overtook its announce) and `rate_limited` (a join
//! or sync request for an address answered moments ago); the last two are logged at debug
//! only.
//!
//! Requests are never answered at a datagram's source address, which can be forged. A
//! join request carries the joiner's gossip address inside the sealed payload, and its
//! answer (one datagram) goes there. A sync request names the asker and the member asked;
//! only that member answers, only if the asker is a member it knows (alive, suspect or
//! failed: a node cut off by a partition learns from the list that it was declared
//! failed), and at the asker's gossip address as its table knows it. Answers to one address are limited to one per
//! half probe interval (sync) or half `join_retry_initial` (join). So a captured request
//! sent again, from any source and to any member, makes at most the member it was meant
//! for send the asker what it would get anyway, and no faster than that. (foca's own
//! messages name their destination, and foca refuses any meant for another node.)

//! Scale: foca keeps members in a vector and looks them up linearly, so each update costs
//! O(n). Clusters of a few thousand members are fine; the simulation converges 1,000 in
//! about 20 s of CPU time, and 10,000 is out of reach in a test.
//!
//! What this crate is not: it knows nothing about QUIC or the application data path,
//! discovers no seeds by itself, and persists nothing.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod core;
mod error;
mod gossip;
mod identity;
mod metrics;
#[cfg(test)]
mod sim;
mod table;

pub use config::{
    Config, ConfigError, ConfigProblem, DEFAULT_GOSSIP_PORT, DEFAULT_QUIC_PORT, MAX_TIMING,
    MAX_TIMING_PROBLEM,
};
pub use error::Error;
pub use gossip::Gossip;
pub use table::{MemberState, MembershipEvent};
