//! Membership configuration: who this node is and how the SWIM protocol is timed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use nodosum_proto::{ENVELOPE_OVERHEAD, Metadata, NodeId};

/// The default UDP port of the gossip socket (the seed's).
pub const DEFAULT_GOSSIP_PORT: u16 = 6969;
/// The default UDP port of the QUIC endpoint, advertised in the member identity.
pub const DEFAULT_QUIC_PORT: u16 = 6970;

/// Configuration of one gossip node.
///
/// Build one with a preset ([`Config::lan`], the default; [`Config::wan`];
/// [`Config::local`]) and adjust fields; [`Config::validate`] reports every problem at once.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's ID, the identity in its certificate.
    pub node_id: NodeId,
    /// Cluster name, bound into every datagram as associated data: nodes of two clusters
    /// sharing a network (and a key) ignore each other. Default `"nodosum"`.
    pub cluster_name: String,
    /// Address the UDP socket binds to. Default `0.0.0.0:6969`.
    pub bind_addr: SocketAddr,
    /// Address other members send datagrams to, if it differs from the bound one (NAT, or
    /// binding a wildcard address). Default: the bound address, which must then not be a
    /// wildcard.
    pub advertise_addr: Option<SocketAddr>,
    /// UDP port of this node's QUIC endpoint, gossiped in its identity. Default 6970.
    pub quic_port: u16,
    /// Application metadata gossiped with the identity (at most 512 bytes).
    pub metadata: Metadata,
    /// Incarnation of this life of the node. Default `None`: milliseconds since the Unix
    /// epoch at start, so a restarted node always comes back with a higher one and is
    /// taken as the same node returning.
    pub incarnation: Option<u64>,

    /// How often a random member is probed. Default 1 s (memberlist's LAN `ProbeInterval`).
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking others to probe indirectly; must be
    /// below `probe_interval`, ideally under half of it. Default 500 ms (memberlist's
    /// `ProbeTimeout`). Set it to a high percentile of your network's round trip.
    pub probe_timeout: Duration,
    /// How many members are asked to probe indirectly when a direct probe times out.
    /// Default 3 (memberlist's `IndirectChecks`).
    pub indirect_checks: NonZeroUsize,
    /// Suspicion timeout multiplier: a suspect is declared failed after
    /// `suspicion_mult * max(1, log10(members)) * probe_interval`. Default 2, which gives
    /// 2 s at 10 members, half of memberlist's 4 (see the crate docs for why).
    pub suspicion_mult: u32,
    /// Retransmission multiplier: each update is piggybacked
    /// `retransmit_mult * ceil(log10(members + 1))` times. Default 4
    /// (memberlist's `RetransmitMult`).
    pub retransmit_mult: u32,
    /// How often pending updates are gossiped to `gossip_nodes` random members, on top of
    /// piggybacking on probes. Default 200 ms (memberlist's `GossipInterval`).
    pub gossip_interval: Duration,
    /// How many members each gossip round goes to. Default 3 (memberlist's `GossipNodes`).
    pub gossip_nodes: NonZeroUsize,
    /// How often one random member is asked for a few dozen random members (foca's
    /// announce). Default 30 s.
    pub announce_interval: Duration,
    /// How often the full member list is pulled from one random member (memberlist's
    /// push-pull): repairs views that missed updates, and lets large clusters converge.
    /// Default 30 s (memberlist's `PushPullInterval`).
    pub sync_interval: Duration,
    /// How often members believed down are contacted, so that a healed partition merges
    /// again. Default 30 s.
    pub announce_down_interval: Duration,
    /// How long a failed or departed member is remembered (refusing its old identity).
    /// Default 24 h.
    pub remove_down_after: Duration,
    /// Largest datagram sent or accepted, envelope included. Default 1400 bytes (fits an
    /// Ethernet MTU). The local identity must fit twice with room to spare.
    pub max_datagram_size: usize,
    /// Upper bound of the local health score (Lifeguard). While the score is `h`, this
    /// node waits `h + 1` times longer between probes and for acks, so an overloaded node
    /// does not accuse healthy ones. Default 8 (memberlist's `AwarenessMaxMultiplier`).
    pub max_health_score: u32,

    /// First delay between join attempts while no seed answers; doubles up to
    /// `join_retry_max`. Default 200 ms.
    pub join_retry_initial: Duration,
    /// Longest delay between join attempts. Default 10 s.
    pub join_retry_max: Duration,
    /// Socket receive buffer (`SO_RCVBUF`) requested, in bytes. Default 4 MiB; the kernel
    /// may cap it (`net.core.rmem_max`).
    pub recv_buffer_size: usize,
    /// Socket send buffer (`SO_SNDBUF`) requested, in bytes. Default 4 MiB.
    pub send_buffer_size: usize,
    /// Capacity of the membership event channel; a receiver lagging further behind loses
    /// the oldest events (and is told how many). Default 1024.
    pub event_capacity: usize,
    /// Dropped datagrams are logged at warn at most once per reason in this interval, and
    /// at debug otherwise. Default 10 s.
    pub drop_log_interval: Duration,
}

impl Config {
    /// LAN preset, the default: memberlist's `DefaultLANConfig` timings, with a shorter
    /// suspicion timeout (see [`Config::suspicion_mult`]).
    pub fn lan(node_id: NodeId) -> Self {
        Self {
            node_id,
            cluster_name: "nodosum".to_owned(),
            bind_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_GOSSIP_PORT),
            advertise_addr: None,
            quic_port: DEFAULT_QUIC_PORT,
            metadata: Metadata::default(),
            incarnation: None,
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: NonZeroUsize::new(3).expect("3 is not zero"),
            suspicion_mult: 2,
            retransmit_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: NonZeroUsize::new(3).expect("3 is not zero"),
            announce_interval: Duration::from_secs(30),
            sync_interval: Duration::from_secs(30),
            announce_down_interval: Duration::from_secs(30),
            remove_down_after: Duration::from_secs(24 * 3600),
            max_datagram_size: 1400,
            max_health_score: 8,
            join_retry_initial: Duration::from_millis(200),
            join_retry_max: Duration::from_secs(10),
            recv_buffer_size: 4 << 20,
            send_buffer_size: 4 << 20,
            event_capacity: 1024,
            drop_log_interval: Duration::from_secs(10),
        }
    }

    /// WAN preset: memberlist's `DefaultWANConfig` (probe 5 s, timeout 3 s, suspicion
    /// multiplier 6, gossip every 500 ms to 4 members).
    pub fn wan(node_id: NodeId) -> Self {
        Self {
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            suspicion_mult: 6,
            gossip_interval: Duration::from_millis(500),
            gossip_nodes: NonZeroUsize::new(4).expect("4 is not zero"),
            announce_interval: Duration::from_secs(60),
            sync_interval: Duration::from_secs(60),
            announce_down_interval: Duration::from_secs(60),
            ..Self::lan(node_id)
        }
    }

    /// Preset for nodes on one machine (tests, development): loopback, any free port,
    /// probe every 300 ms with a 150 ms timeout, gossip every 50 ms.
    pub fn local(node_id: NodeId) -> Self {
        Self {
            bind_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            quic_port: 0,
            probe_interval: Duration::from_millis(300),
            probe_timeout: Duration::from_millis(150),
            suspicion_mult: 4,
            gossip_interval: Duration::from_millis(50),
            announce_interval: Duration::from_secs(5),
            sync_interval: Duration::from_secs(5),
            announce_down_interval: Duration::from_secs(5),
            join_retry_initial: Duration::from_millis(50),
            join_retry_max: Duration::from_secs(1),
            ..Self::lan(node_id)
        }
    }

    /// Checks every cross-field rule and returns all problems found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |field: &'static str, problem: String| {
            problems.push(ConfigProblem { field, problem });
        };
        if self.cluster_name.is_empty() || self.cluster_name.len() > 255 {
            bad(
                "cluster_name",
                format!("must be 1 to 255 bytes, is {}", self.cluster_name.len()),
            );
        }
        if self.advertise_addr.is_none() && self.bind_addr.ip().is_unspecified() {
            bad(
                "advertise_addr",
                format!(
                    "must be set when bind_addr ({}) is a wildcard address",
                    self.bind_addr
                ),
            );
        }
        if let Some(a) = self.advertise_addr
            && (a.ip().is_unspecified() || a.port() == 0)
        {
            bad(
                "advertise_addr",
                format!("{a} is not an address others can send to"),
            );
        }
        for (field, d) in [
            ("probe_interval", self.probe_interval),
            ("probe_timeout", self.probe_timeout),
            ("gossip_interval", self.gossip_interval),
            ("announce_interval", self.announce_interval),
            ("sync_interval", self.sync_interval),
            ("announce_down_interval", self.announce_down_interval),
            ("remove_down_after", self.remove_down_after),
            ("join_retry_initial", self.join_retry_initial),
            ("join_retry_max", self.join_retry_max),
            ("drop_log_interval", self.drop_log_interval),
        ] {
            if d.is_zero() {
                bad(field, "must not be zero".to_owned());
            } else if d > MAX_TIMING {
                // Timers add these to the current instant (and multiply some): bounded, so
                // that no configuration can overflow them.
                bad(field, MAX_TIMING_PROBLEM.to_owned());
            }
        }
        if self.probe_timeout >= self.probe_interval {
            bad(
                "probe_timeout",
                format!(
                    "must be below probe_interval ({:?}), is {:?}",
                    self.probe_interval, self.probe_timeout
                ),
            );
        }
        if self.suspicion_mult == 0 {
            bad("suspicion_mult", "must be at least 1".to_owned());
        }
        if self.retransmit_mult == 0 {
            bad("retransmit_mult", "must be at least 1".to_owned());
        }
        if self.max_health_score > 64 {
            bad(
                "max_health_score",
                format!("must be at most 64, is {}", self.max_health_score),
            );
        }
        if self.join_retry_initial > self.join_retry_max {
            bad(
                "join_retry_initial",
                format!("must not exceed join_retry_max ({:?})", self.join_retry_max),
            );
        }
        let min_datagram = ENVELOPE_OVERHEAD + 512;
        if !(min_datagram..=MAX_UDP_PAYLOAD).contains(&self.max_datagram_size) {
            bad(
                "max_datagram_size",
                format!(
                    "must be {min_datagram} to {MAX_UDP_PAYLOAD} bytes, is {}",
                    self.max_datagram_size
                ),
            );
        }
        if self.event_capacity == 0 {
            bad("event_capacity", "must not be zero".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Largest foca payload: the datagram minus the envelope.
    pub(crate) fn max_payload(&self) -> usize {
        self.max_datagram_size.saturating_sub(ENVELOPE_OVERHEAD)
    }

    /// The foca configuration for a cluster of `members` (this node included).
    pub(crate) fn foca_config(&self, members: usize) -> foca::Config {
        let n = members.max(1);
        #[expect(
            clippy::cast_precision_loss,
            reason = "cluster sizes are far below 2^52"
        )]
        let log_n = (n as f64).log10().max(1.0);
        #[expect(
            clippy::cast_precision_loss,
            reason = "cluster sizes are far below 2^52"
        )]
        let log_n1 = ((n + 1) as f64).log10();
        let suspicion = self
            .probe_interval
            .mul_f64(f64::from(self.suspicion_mult) * log_n);
        // memberlist's retransmitLimit: mult * ceil(log10(n + 1)).
        let tx = (f64::from(self.retransmit_mult) * log_n1.ceil()).clamp(1.0, 255.0);
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "clamped to 1..=255 above"
        )]
        let tx = tx as u8;
        foca::Config {
            probe_period: self.probe_interval,
            probe_rtt: self.probe_timeout,
            num_indirect_probes: self.indirect_checks,
            max_transmissions: std::num::NonZeroU8::new(tx).unwrap_or(std::num::NonZeroU8::MIN),
            suspect_to_down_after: suspicion,
            remove_down_after: Some(self.remove_down_after),
            max_packet_size: NonZeroUsize::new(self.max_payload()).unwrap_or(NonZeroUsize::MIN),
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: self.announce_interval,
                num_members: NonZeroUsize::MIN,
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: self.announce_down_interval,
                num_members: NonZeroUsize::new(2).expect("2 is not zero"),
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_interval,
                num_members: self.gossip_nodes,
            }),
        }
    }
}

/// Largest UDP payload over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// The longest any timing may be (365 days): timers add them to the current instant.
pub const MAX_TIMING: Duration = Duration::from_secs(365 * 24 * 3600);

/// The problem reported for a timing over [`MAX_TIMING`].
pub const MAX_TIMING_PROBLEM: &str = "must be at most 365 days";

/// One problem found by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field at fault, e.g. `"probe_timeout"`.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// Every problem [`Config::validate`] found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid gossip config: {}", .problems.iter().map(|p| format!("gossip.{} {}", p.field, p.problem)).collect::<Vec<_>>().join("; "))]
pub struct ConfigError {
    /// The problems, in field order.
    pub problems: Vec<ConfigProblem>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> NodeId {
        NodeId::new("n1").unwrap()
    }

    #[test]
    fn presets_are_valid_where_addresses_are_given() {
        assert!(Config::local(id()).validate().is_ok());
        let mut lan = Config::lan(id());
        lan.advertise_addr = Some("10.0.0.1:6969".parse().unwrap());
        assert!(lan.validate().is_ok());
        let mut wan = Config::wan(id());
        wan.bind_addr = "127.0.0.1:6969".parse().unwrap();
        assert!(wan.validate().is_ok());
    }

    #[test]
    fn validate_reports_every_problem_with_its_field() {
        let mut c = Config::lan(id());
        c.probe_timeout = Duration::from_secs(2);
        c.suspicion_mult = 0;
        c.max_datagram_size = 10;
        c.cluster_name.clear();
        c.sync_interval = Duration::MAX;
        let err = c.validate().unwrap_err();
        let fields: Vec<_> = err.problems.iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "cluster_name",
                "advertise_addr",
                "sync_interval",
                "probe_timeout",
                "suspicion_mult",
                "max_datagram_size"
            ]
        );
        assert!(
            err.to_string()
                .contains("gossip.probe_timeout must be below")
        );
    }

    #[test]
    fn foca_config_scales_with_cluster_size() {
        let c = Config::lan(id());
        let small = c.foca_config(10);
        assert_eq!(small.suspect_to_down_after, Duration::from_secs(2));
        assert_eq!(small.max_transmissions.get(), 8);
        let big = c.foca_config(1000);
        assert_eq!(big.suspect_to_down_after, Duration::from_secs(6));
        assert_eq!(big.max_transmissions.get(), 16);
        assert_eq!(c.foca_config(2).max_transmissions.get(), 4);
        assert_eq!(
            c.foca_config(1).suspect_to_down_after,
            Duration::from_secs(2)
        );
    }
}
