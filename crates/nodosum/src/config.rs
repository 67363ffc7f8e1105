//! The node's configuration: one struct, loadable from TOML, checked as a whole before
//! anything binds.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use nodosum_discovery::DiscoveryConfig;
use nodosum_discovery::duration as human;
use nodosum_proto::{DEFAULT_MAX_APP_ID_LEN, DEFAULT_MAX_MESSAGE_SIZE, Key, NodeId};
use nodosum_quic::Congestion;
use serde::{Deserialize, Serialize};

use crate::app::REPLY_APP;

/// Default UDP port of the gossip socket (seed value).
pub const DEFAULT_GOSSIP_PORT: u16 = 6969;
/// Default UDP port of the QUIC endpoint (seed value).
pub const DEFAULT_QUIC_PORT: u16 = 6970;
/// Default ALPN protocol of the QUIC endpoint (seed value).
pub const DEFAULT_ALPN: &str = "mycorrizal-quic";
/// Default cluster name.
pub const DEFAULT_CLUSTER: &str = "nodosum";

/// Everything a node needs to start.
///
/// Load it from TOML with [`Config::load`], build it with [`Config::development`] or
/// [`Config::production`] and adjust fields, then [`validate`](Config::validate) it (which
/// [`Node::start`](crate::Node::start) also does). Durations are written `"30s"`, `"500ms"`.
///
/// ```toml
/// node_id = "node-1"
/// cluster = "prod"
///
/// [gossip]
/// bind = "0.0.0.0:6969"
/// advertise = "10.0.0.1:6969"
/// keys = ["<base64 of 32 random bytes>"]   # first seals, all open
///
/// [quic]
/// bind = "0.0.0.0:6970"
///
/// [tls]
/// ca = "/etc/nodosum/ca.pem"
/// cert = "/etc/nodosum/node-1.pem"
/// key = "/etc/nodosum/node-1-key.pem"
///
/// [discovery.static]
/// seeds = ["10.0.0.2:6969", "10.0.0.3:6969"]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's ID; must equal the identity in its certificate.
    pub node_id: NodeId,
    /// The cluster's name. Gossip datagrams of another cluster name are dropped, so two
    /// clusters can share a network. Default `nodosum`.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Membership over UDP.
    #[serde(default)]
    pub gossip: GossipConfig,
    /// Application data over QUIC.
    #[serde(default)]
    pub quic: QuicConfig,
    /// Certificates for mutual TLS.
    pub tls: TlsConfig,
    /// Where to find seeds to join through.
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Frame size limits; every node of a cluster should use the same.
    #[serde(default)]
    pub limits: LimitsConfig,
}

fn default_cluster() -> String {
    DEFAULT_CLUSTER.to_owned()
}

/// Failure-detection timings: a preset, optionally with single timings overridden.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// A data-centre network: probe every second (memberlist's LAN profile). Default.
    #[default]
    Lan,
    /// Nodes across regions: slower probes, longer suspicion.
    Wan,
    /// One machine or a fast test network: fast probes, quick detection.
    Local,
}

impl GossipConfig {
    /// The gossip configuration of the preset with this section's overrides applied (the
    /// addresses, cluster name and QUIC port are the caller's to set).
    pub(crate) fn timings(&self, id: NodeId) -> nodosum_gossip::Config {
        let mut c = match self.profile {
            Profile::Lan => nodosum_gossip::Config::lan(id),
            Profile::Wan => nodosum_gossip::Config::wan(id),
            Profile::Local => nodosum_gossip::Config::local(id),
        };
        if let Some(d) = self.probe_interval {
            c.probe_interval = d;
        }
        if let Some(d) = self.probe_timeout {
            c.probe_timeout = d;
        }
        if let Some(k) = self.indirect_checks.and_then(std::num::NonZeroUsize::new) {
            c.indirect_checks = k;
        }
        c
    }
}

/// The `[gossip]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GossipConfig {
    /// UDP address the gossip socket binds to. Default `0.0.0.0:6969`.
    pub bind: SocketAddr,
    /// Address other nodes reach this node's gossip socket at. Required when `bind` is an
    /// unspecified address (`0.0.0.0`, `::`); defaults to the bound address otherwise.
    pub advertise: Option<SocketAddr>,
    /// Timing preset. Default `lan`.
    pub profile: Profile,
    /// Overrides the preset's probe interval (one protocol period).
    #[serde(with = "human::option", skip_serializing_if = "Option::is_none")]
    pub probe_interval: Option<Duration>,
    /// Overrides the preset's direct probe timeout; must be below the probe interval.
    #[serde(with = "human::option", skip_serializing_if = "Option::is_none")]
    pub probe_timeout: Option<Duration>,
    /// Overrides the preset's number of members asked for indirect probes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub indirect_checks: Option<usize>,
    /// Encryption keys, base64 of 32 bytes each. The first seals; all open (for rotation).
    /// Required in production; development derives one from the development CA.
    pub keys: Vec<String>,
    /// A file holding more keys, one base64 key per line, appended to `keys`.
    pub key_file: Option<PathBuf>,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_GOSSIP_PORT)),
            advertise: None,
            profile: Profile::Lan,
            probe_interval: None,
            probe_timeout: None,
            indirect_checks: None,
            keys: Vec::new(),
            key_file: None,
        }
    }
}

/// The `[quic]` section. Defaults are the seed's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuicConfig {
    /// UDP address the QUIC endpoint binds to. Default `0.0.0.0:6970`. Other nodes reach it
    /// at the gossip address's IP and this port (or `advertise_port`).
    pub bind: SocketAddr,
    /// The QUIC port other nodes dial, if it differs from the bound port (port mapping).
    pub advertise_port: Option<u16>,
    /// ALPN protocol both sides must speak. Default `mycorrizal-quic`.
    pub alpn: String,
    /// A connection without traffic for this long is closed. Default 30 s.
    #[serde(with = "human")]
    pub max_idle_timeout: Duration,
    /// Keep-alive ping interval on idle connections; below `max_idle_timeout`. Default 10 s.
    #[serde(with = "human")]
    pub keep_alive_interval: Duration,
    /// A handshake, dialled or accepted, that has not completed after this long is given
    /// up (a replayed 0-RTT flight never completes one). Default 10 s.
    #[serde(with = "human")]
    pub handshake_timeout: Duration,
    /// Streams (applications) a peer may have open at once. Default 1000.
    pub max_concurrent_bidi_streams: u32,
    /// UDP socket send and receive buffer size in bytes. Default 4 MiB: the kernel's
    /// 208 KiB default drops packets at full speed even on loopback.
    pub udp_buffer_bytes: usize,
    /// Messages queued per (peer, application) before `send` waits. Default 1024.
    pub send_queue_len: usize,
    /// Congestion controller of this node's connections: `cubic` (default) or `bbr` for
    /// links that drop packets at random (see [`Congestion`]).
    pub congestion: Congestion,
    /// Longest time a peer may hold back an acknowledgement; it also bounds how long a
    /// lost packet at the end of a burst goes unnoticed. `1ms` to `16383ms`, default
    /// `1ms` (QUIC's own default of 25 ms stalls a sub-millisecond link at such a loss);
    /// see `nodosum_quic::Config::max_ack_delay`.
    #[serde(with = "human")]
    pub max_ack_delay: Duration,
}

impl Default for QuicConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, DEFAULT_QUIC_PORT)),
            advertise_port: None,
            alpn: DEFAULT_ALPN.to_owned(),
            max_idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_bidi_streams: 1000,
            udp_buffer_bytes: 4 * 1024 * 1024,
            send_queue_len: 1024,
            congestion: Congestion::default(),
            max_ack_delay: Duration::from_millis(1),
        }
    }
}

/// The `[tls]` section: PEM files, or the development CA.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) peers' certificates must chain to.
    pub ca: Option<PathBuf>,
    /// PEM file of this node's certificate chain (node ID in a SAN DNS name or the CN).
    pub cert: Option<PathBuf>,
    /// PEM file of this node's private key.
    pub key: Option<PathBuf>,
    /// Use the development CA instead of files: created on first use in `dev_ca_dir`,
    /// shared by every node of the machine, never for production.
    pub development: bool,
    /// Where the development CA lives. Default: `$XDG_DATA_HOME/nodosum/dev-ca` (or
    /// `~/.local/share/nodosum/dev-ca`).
    pub dev_ca_dir: Option<PathBuf>,
}

/// The `[limits]` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest message on a stream in bytes, the facade's frame header included (1 byte
    /// for a message, 9 for a request or response): the largest payload is that much
    /// smaller, and [`SendError::MessageTooLarge`](crate::SendError::MessageTooLarge)
    /// reports lengths with the header. Default 4 MiB.
    pub max_message_size: usize,
    /// Longest application name in bytes. Default 255.
    pub max_app_id_len: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_app_id_len: DEFAULT_MAX_APP_ID_LEN,
        }
    }
}

impl From<LimitsConfig> for nodosum_proto::Limits {
    fn from(l: LimitsConfig) -> Self {
        Self {
            max_app_id_len: l.max_app_id_len,
            max_message_size: l.max_message_size,
        }
    }
}

/// One thing wrong with a configuration, with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the field, e.g. `quic.max_idle_timeout`, or an environment variable.
    pub field: String,
    /// What is wrong, lowercase.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in a configuration. Nothing was bound or started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:{}", render(.problems))]
pub struct ConfigError {
    /// The problems, in field order.
    pub problems: Vec<Problem>,
}

fn render(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

/// A configuration file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a [`Config`] (the message names the field and line).
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
}

/// Environment variables [`Config::apply_env`] reads: the fields operators set per instance.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("NODOSUM_NODE_ID", "node_id"),
    ("NODOSUM_CLUSTER", "cluster"),
    ("NODOSUM_GOSSIP_BIND", "gossip.bind"),
    ("NODOSUM_GOSSIP_ADVERTISE", "gossip.advertise"),
    ("NODOSUM_QUIC_BIND", "quic.bind"),
    ("NODOSUM_SEEDS", "discovery.static.seeds (comma-separated)"),
];

impl Config {
    /// A node on this machine with nothing on disk: loopback addresses on ephemeral ports,
    /// the `local` timing profile, certificates from the development CA, and a gossip key
    /// derived from it. Nodes made this way on one machine can form a cluster.
    pub fn development(node_id: NodeId) -> Self {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Self {
            node_id,
            cluster: "nodosum-dev".to_owned(),
            gossip: GossipConfig {
                bind: SocketAddr::new(loopback, 0),
                profile: Profile::Local,
                ..GossipConfig::default()
            },
            quic: QuicConfig {
                bind: SocketAddr::new(loopback, 0),
                ..QuicConfig::default()
            },
            tls: TlsConfig {
                development: true,
                ..TlsConfig::default()
            },
            discovery: DiscoveryConfig::default(),
            limits: LimitsConfig::default(),
        }
    }

    /// A production node: seed defaults (gossip `0.0.0.0:6969`, QUIC `0.0.0.0:6970`, `lan`
    /// profile) with real certificates, an encryption key, and the address others reach
    /// this node at.
    pub fn production(
        node_id: NodeId,
        advertise: SocketAddr,
        tls: (PathBuf, PathBuf, PathBuf),
        gossip_key: &Key,
    ) -> Self {
        let (ca, cert, key) = tls;
        Self {
            node_id,
            cluster: DEFAULT_CLUSTER.to_owned(),
            gossip: GossipConfig {
                advertise: Some(advertise),
                keys: vec![BASE64.encode(gossip_key.as_bytes())],
                ..GossipConfig::default()
            },
            quic: QuicConfig::default(),
            tls: TlsConfig {
                ca: Some(ca),
                cert: Some(cert),
                key: Some(key),
                ..TlsConfig::default()
            },
            discovery: DiscoveryConfig::default(),
            limits: LimitsConfig::default(),
        }
    }

    /// Parses a TOML document. Unknown fields are errors (they are usually typos).
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text).map_err(|source| LoadError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Applies the [`ENV_VARS`] that are set in the process environment.
    pub fn apply_env(&mut self) -> Result<(), ConfigError> {
        self.apply_env_from(|name| std::env::var(name).ok())
    }

    /// Applies [`ENV_VARS`] from `lookup`; every bad value is reported, named by variable.
    pub fn apply_env_from(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |var: &str, message: String| {
            problems.push(Problem {
                field: var.to_owned(),
                message,
            });
        };
        if let Some(v) = lookup("NODOSUM_NODE_ID") {
            match NodeId::new(v) {
                Ok(id) => self.node_id = id,
                Err(e) => bad("NODOSUM_NODE_ID", e.to_string()),
            }
        }
        if let Some(v) = lookup("NODOSUM_CLUSTER") {
            self.cluster = v;
        }
        let mut addr = |var: &str, slot: &mut SocketAddr| {
            if let Some(v) = lookup(var) {
                match v.parse() {
                    Ok(a) => *slot = a,
                    Err(_) => bad(var, format!("{v:?} is not an ip:port address")),
                }
            }
        };
        addr("NODOSUM_GOSSIP_BIND", &mut self.gossip.bind);
        addr("NODOSUM_QUIC_BIND", &mut self.quic.bind);
        let mut advertise = self.gossip.advertise.unwrap_or(self.gossip.bind);
        if lookup("NODOSUM_GOSSIP_ADVERTISE").is_some() {
            addr("NODOSUM_GOSSIP_ADVERTISE", &mut advertise);
            self.gossip.advertise = Some(advertise);
        }
        if let Some(v) = lookup("NODOSUM_SEEDS") {
            let seeds = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from);
            self.discovery
                .static_seeds
                .get_or_insert_with(Default::default)
                .seeds = seeds.collect();
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Checks the whole configuration, including that the files it names exist and that
    /// the TLS files are usable (certificates parse, the key is the certificate's, the
    /// certificate names `node_id`), and returns every problem at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut v = Validator::default();
        self.check(&mut v);
        if v.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                problems: v.problems,
            })
        }
    }

    fn check(&self, v: &mut Validator) {
        if self.cluster.is_empty() || self.cluster.len() > 255 {
            v.push("cluster", "must be 1 to 255 bytes");
        }
        for (i, e) in self.discovery.invalid_seeds() {
            v.push(&format!("discovery.static.seeds[{i}]"), e.to_string());
        }

        let g = &self.gossip;
        if g.bind.ip().is_unspecified() && g.advertise.is_none() {
            v.push(
                "gossip.advertise",
                format!(
                    "required when gossip.bind is {} (other nodes cannot reach an unspecified address)",
                    g.bind.ip()
                ),
            );
        }
        if let Some(a) = g.advertise {
            if a.ip().is_unspecified() {
                v.push(
                    "gossip.advertise",
                    format!("{a} is unspecified; advertise a reachable address"),
                );
            }
            if a.port() == 0 {
                v.push("gossip.advertise", "port must not be 0");
            }
        }
        // The effective timings: an override checked against the preset's other one.
        let effective = g.timings(self.node_id.clone());
        let (interval, timeout) = (effective.probe_interval, effective.probe_timeout);
        if timeout >= interval && !interval.is_zero() {
            v.push(
                "gossip.probe_timeout",
                format!(
                    "{} must be below the probe interval {} (gossip.probe_interval, or the {:?} profile's)",
                    human::format(timeout),
                    human::format(interval),
                    g.profile
                ),
            );
        }
        if g.probe_interval.is_some_and(|d| d.is_zero()) {
            v.push("gossip.probe_interval", "must be greater than zero");
        }
        for (field, d) in [
            ("gossip.probe_interval", g.probe_interval),
            ("gossip.probe_timeout", g.probe_timeout),
        ] {
            if d.is_some_and(|d| d > nodosum_gossip::MAX_TIMING) {
                v.push(field, nodosum_gossip::MAX_TIMING_PROBLEM);
            }
        }
        if g.indirect_checks == Some(0) {
            v.push("gossip.indirect_checks", "must be at least 1");
        }
        match self.gossip_keys() {
            Ok(keys) if keys.is_empty() && !self.tls.development => v.push(
                "gossip.keys",
                "required outside development: base64 of 32 random bytes (`head -c 32 /dev/urandom | base64`)",
            ),
            Ok(_) => {}
            Err(problems) => v.problems.extend(problems),
        }

        let q = &self.quic;
        if same_socket(g.bind, q.bind) {
            v.push(
                "quic.bind",
                format!(
                    "{} uses the same UDP port as gossip.bind {}",
                    q.bind, g.bind
                ),
            );
        }
        if q.advertise_port == Some(0) {
            v.push("quic.advertise_port", "must not be 0");
        }
        if q.alpn.is_empty() || q.alpn.len() > 255 {
            v.push("quic.alpn", "must be 1 to 255 bytes");
        }
        if q.max_idle_timeout <= q.keep_alive_interval {
            v.push(
                "quic.max_idle_timeout",
                format!(
                    "must be greater than quic.keep_alive_interval ({})",
                    human::format(q.keep_alive_interval)
                ),
            );
        }
        if q.keep_alive_interval.is_zero() {
            v.push("quic.keep_alive_interval", "must be greater than zero");
        }
        if q.handshake_timeout.is_zero() {
            v.push("quic.handshake_timeout", "must be greater than zero");
        }
        if q.max_concurrent_bidi_streams == 0 {
            v.push("quic.max_concurrent_bidi_streams", "must be at least 1");
        }
        if q.send_queue_len == 0 {
            v.push("quic.send_queue_len", "must be at least 1");
        }
        if !(nodosum_quic::MIN_ACK_DELAY..=nodosum_quic::MAX_ACK_DELAY).contains(&q.max_ack_delay) {
            v.push("quic.max_ack_delay", "must be 1ms to 16383ms");
        }

        let t = &self.tls;
        if t.development {
            for (field, set) in [
                ("tls.ca", &t.ca),
                ("tls.cert", &t.cert),
                ("tls.key", &t.key),
            ] {
                if set.is_some() {
                    v.push(field, "must not be set together with tls.development");
                }
            }
        } else {
            let mut readable = true;
            for (field, path) in [
                ("tls.ca", &t.ca),
                ("tls.cert", &t.cert),
                ("tls.key", &t.key),
            ] {
                readable &= match path {
                    None => {
                        v.push(
                            field,
                            "required (a PEM file), or set tls.development = true",
                        );
                        false
                    }
                    Some(p) => v.readable_file(field, p),
                };
            }
            if readable && let (Some(ca), Some(cert), Some(key)) = (&t.ca, &t.cert, &t.key) {
                self.check_tls_files(v, ca, cert, key);
            }
            if t.dev_ca_dir.is_some() {
                v.push("tls.dev_ca_dir", "only used with tls.development = true");
            }
        }

        let l = &self.limits;
        if l.max_message_size == 0 || u32::try_from(l.max_message_size).is_err() {
            v.push("limits.max_message_size", "must be 1 byte to 4 GiB - 1");
        }
        if l.max_app_id_len < REPLY_APP.len() || u16::try_from(l.max_app_id_len).is_err() {
            v.push(
                "limits.max_app_id_len",
                format!(
                    "must be {} to 65535 bytes (the node's own `{REPLY_APP}` channel needs {})",
                    REPLY_APP.len(),
                    REPLY_APP.len()
                ),
            );
        }
    }

    /// The gossip keys from `gossip.keys` and `gossip.key_file`, primary first. Every bad
    /// entry is a problem naming it.
    pub fn gossip_keys(&self) -> Result<Vec<Key>, Vec<Problem>> {
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        for (i, text) in self.gossip.keys.iter().enumerate() {
            match parse_key(text) {
                Ok(k) => keys.push(k),
                Err(m) => problems.push(Problem {
                    field: format!("gossip.keys[{i}]"),
                    message: m,
                }),
            }
        }
        if let Some(path) = &self.gossip.key_file {
            match std::fs::read_to_string(path) {
                Err(e) => problems.push(Problem {
                    field: "gossip.key_file".to_owned(),
                    message: format!("cannot read {}: {e}", path.display()),
                }),
                Ok(text) => {
                    for (n, line) in text
                        .lines()
                        .enumerate()
                        .filter(|(_, l)| !l.trim().is_empty())
                    {
                        match parse_key(line.trim()) {
                            Ok(k) => keys.push(k),
                            Err(m) => problems.push(Problem {
                                field: "gossip.key_file".to_owned(),
                                message: format!("{} line {}: {m}", path.display(), n + 1),
                            }),
                        }
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(keys)
        } else {
            Err(problems)
        }
    }
}

/// Parses a base64 gossip key.
pub fn parse_key(text: &str) -> Result<Key, String> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| format!("not valid base64 ({e})"))?;
    Key::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Whether two UDP bind addresses would collide: same non-zero port on overlapping IPs.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Config {
    /// What starting the node would refuse in readable TLS files: PEM that does not parse,
    /// a CA that is no trust anchor, a key that is not the certificate's, a certificate
    /// naming another node. Each problem names the setting of the file at fault.
    fn check_tls_files(&self, v: &mut Validator, ca: &Path, cert: &Path, key: &Path) {
        use nodosum_quic::{PemFile, TlsError};
        let identity = match nodosum_quic::TlsIdentity::from_pem_files_checking_all(ca, cert, key) {
            Ok(identity) => identity,
            Err(errors) => {
                for (file, e) in errors {
                    let field = match file {
                        PemFile::Ca => "tls.ca",
                        PemFile::CertChain => "tls.cert",
                        PemFile::Key => "tls.key",
                    };
                    v.push(field, crate::error_chain(&e));
                }
                return;
            }
        };
        match identity.node_id() {
            Ok(id) if id != self.node_id => v.push(
                "tls.cert",
                format!(
                    "{} names node {id}, but node_id is {}",
                    cert.display(),
                    self.node_id
                ),
            ),
            Ok(_) => {}
            Err(e) => v.push(
                "tls.cert",
                format!("{}: {}", cert.display(), crate::error_chain(&e)),
            ),
        }
        match identity.check() {
            // Reported above, as the certificate's problem.
            Ok(()) | Err(TlsError::NoIdentity(_)) => {}
            // rustls refuses the certificate and key together (they do not match).
            Err(e @ TlsError::Rustls(_)) => v.push(
                "tls.key",
                format!(
                    "{} and {}: {}",
                    cert.display(),
                    key.display(),
                    crate::error_chain(&e)
                ),
            ),
            // The roots: no trust anchor, or none to verify clients with.
            Err(e) => v.push(
                "tls.ca",
                format!("{}: {}", ca.display(), crate::error_chain(&e)),
            ),
        }
    }
}

impl Validator {
    fn push(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            field: field.to_owned(),
            message: message.into(),
        });
    }

    /// Whether `path` is a file; a problem for `field` if not.
    fn readable_file(&mut self, field: &str, path: &Path) -> bool {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => return true,
            Ok(_) => self.push(field, format!("{} is not a file", path.display())),
            Err(e) => self.push(field, format!("cannot read {}: {e}", path.display())),
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn fields(err: ConfigError) -> Vec<String> {
        err.problems.into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn development_config_is_valid() {
        Config::development(id("dev-1")).validate().unwrap();
    }

    #[test]
    fn every_malformed_seed_is_named_before_start() {
        let mut c = Config::development(id("dev-1"));
        c.discovery.static_seeds = Some(nodosum_discovery::StaticConfig {
            seeds: vec![
                "127.0.0.1:7000".to_owned(),
                "nope".to_owned(),
                "seed.example:99999".to_owned(),
                "node-2@127.0.0.1:7001".to_owned(),
            ],
            ..Default::default()
        });
        let err = c.validate().unwrap_err();
        assert_eq!(
            fields(err.clone()),
            ["discovery.static.seeds[1]", "discovery.static.seeds[2]"]
        );
        assert!(err.problems[0].message.contains("missing :port"), "{err:?}");
    }

    #[test]
    fn toml_round_trip_and_defaults() {
        let text = r#"
            node_id = "node-1"
            [gossip]
            advertise = "10.0.0.1:6969"
            keys = ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
            probe_interval = "2s"
            [tls]
            development = true
            [discovery.static]
            seeds = ["10.0.0.2:6969"]
        "#;
        let c = Config::from_toml(text).unwrap();
        assert_eq!(c.cluster, "nodosum");
        assert_eq!(c.gossip.bind, "0.0.0.0:6969".parse().unwrap());
        assert_eq!(c.gossip.probe_interval, Some(Duration::from_secs(2)));
        assert_eq!(c.quic.bind, "0.0.0.0:6970".parse().unwrap());
        assert_eq!(c.quic.max_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.quic.keep_alive_interval, Duration::from_secs(10));
        assert_eq!(c.quic.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.quic.max_concurrent_bidi_streams, 1000);
        assert_eq!(c.quic.alpn, "mycorrizal-quic");
        assert_eq!(c.quic.congestion, Congestion::Cubic);
        assert_eq!(c.quic.max_ack_delay, Duration::from_millis(1));
        c.validate().unwrap();
        let again = Config::from_toml(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn unknown_fields_and_bad_ids_fail_to_parse() {
        let err = Config::from_toml("node_id = \"n\"\nclustr = \"x\"\n[tls]\ndevelopment = true")
            .unwrap_err();
        assert!(err.to_string().contains("clustr"), "{err}");
        let err = Config::from_toml("node_id = \"bad id\"\n[tls]\ndevelopment = true").unwrap_err();
        assert!(
            err.to_string().contains("node_id") || err.to_string().contains("bad id"),
            "{err}"
        );
    }

    #[test]
    fn congestion_is_named_in_lowercase() {
        let c = Config::from_toml(
            "node_id = \"n\"\n[quic]\ncongestion = \"bbr\"\n[tls]\ndevelopment = true",
        )
        .unwrap();
        assert_eq!(c.quic.congestion, Congestion::Bbr);
        assert!(
            toml::to_string(&c)
                .unwrap()
                .contains("congestion = \"bbr\"")
        );
        let err = Config::from_toml("node_id = \"n\"\n[quic]\ncongestion = \"reno\"").unwrap_err();
        let err = err.to_string();
        assert!(err.contains("congestion") && err.contains("cubic"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::development(id("n1"));
        c.tls = TlsConfig {
            ca: Some(dir.path().join("missing-ca.pem")),
            cert: None,
            key: Some(dir.path().to_owned()),
            ..TlsConfig::default()
        };
        c.gossip.bind = "0.0.0.0:7000".parse().unwrap();
        c.gossip.keys = vec!["c2hvcnQ=".into(), "!!".into()];
        c.gossip.probe_interval = Some(Duration::from_millis(100));
        c.gossip.probe_timeout = Some(Duration::from_millis(100));
        c.quic.bind = "127.0.0.1:7000".parse().unwrap();
        c.quic.keep_alive_interval = Duration::from_secs(30);
        c.quic.handshake_timeout = Duration::ZERO;
        c.quic.max_ack_delay = Duration::from_micros(500);
        c.limits.max_app_id_len = 70_000;
        let err = c.validate().unwrap_err();
        let text = err.to_string();
        assert_eq!(
            fields(err),
            [
                "gossip.advertise",
                "gossip.probe_timeout",
                "gossip.keys[0]",
                "gossip.keys[1]",
                "quic.bind",
                "quic.max_idle_timeout",
                "quic.handshake_timeout",
                "quic.max_ack_delay",
                "tls.ca",
                "tls.cert",
                "tls.key",
                "limits.max_app_id_len",
            ]
        );
        assert!(
            text.contains("gossip.keys[0]: gossip key is 5 bytes, must be exactly 32"),
            "{text}"
        );
        assert!(
            text.contains(
                "quic.max_idle_timeout: must be greater than quic.keep_alive_interval (30s)"
            ),
            "{text}"
        );
        assert!(text.contains("missing-ca.pem"), "{text}");
    }

    /// One probe timing overridden is checked against the preset's other one, and the
    /// application name limit leaves room for the node's own reply channel.
    #[test]
    fn effective_timings_and_the_reply_channel_are_checked() {
        let mut c = Config::development(id("n1"));
        c.gossip.profile = Profile::Lan;
        c.gossip.probe_interval = Some(Duration::from_millis(400));
        c.limits.max_app_id_len = 13;
        let err = c.validate().unwrap_err();
        let text = err.to_string();
        assert_eq!(
            fields(err),
            ["gossip.probe_timeout", "limits.max_app_id_len"]
        );
        assert!(
            text.contains("500ms must be below the probe interval 400ms"),
            "{text}"
        );
        assert!(text.contains("must be 14 to 65535 bytes"), "{text}");
        c.gossip.probe_timeout = Some(Duration::from_millis(200));
        c.limits.max_app_id_len = 14;
        c.validate().unwrap();
    }

    #[test]
    fn production_requires_a_key_and_real_advertise() {
        let dir = tempfile::tempdir().unwrap();
        let f = |n: &str, text: String| {
            let p = dir.path().join(n);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca = nodosum_quic::DevCa::generate("test CA").unwrap();
        let (cert_pem, key_pem) = ca.issue_pem(&id("n1")).unwrap();
        let key = Key::from_bytes([1; 32]);
        let mut c = Config::production(
            id("n1"),
            "10.0.0.1:6969".parse().unwrap(),
            (
                f("ca.pem", ca.cert_pem()),
                f("n1.pem", cert_pem),
                f("n1-key.pem", key_pem),
            ),
            &key,
        );
        c.validate().unwrap();
        assert_eq!(c.gossip_keys().unwrap(), vec![key]);
        c.gossip.keys.clear();
        c.gossip.advertise = Some("0.0.0.0:6969".parse().unwrap());
        assert_eq!(
            fields(c.validate().unwrap_err()),
            ["gossip.advertise", "gossip.keys"]
        );
    }

    #[test]
    fn key_file_adds_keys_and_names_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        let good = BASE64.encode([2u8; 32]);
        std::fs::write(&path, format!("{good}\n\nnot-base64\n")).unwrap();
        let mut c = Config::development(id("n1"));
        c.gossip.key_file = Some(path);
        let problems = c.gossip_keys().unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].message.contains("line 3"), "{}", problems[0]);
    }

    #[test]
    fn env_overrides_apply_and_name_bad_variables() {
        let mut c = Config::development(id("n1"));
        let env = |name: &str| match name {
            "NODOSUM_NODE_ID" => Some("n2".to_owned()),
            "NODOSUM_GOSSIP_BIND" => Some("127.0.0.1:7001".to_owned()),
            "NODOSUM_QUIC_BIND" => Some("nope".to_owned()),
            "NODOSUM_SEEDS" => Some("127.0.0.1:7002, 127.0.0.1:7003".to_owned()),
            _ => None,
        };
        let err = c.apply_env_from(env).unwrap_err();
        assert_eq!(fields(err), ["NODOSUM_QUIC_BIND"]);
        assert_eq!(c.node_id, id("n2"));
        assert_eq!(c.gossip.bind, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(
            c.discovery.static_seeds.unwrap().seeds,
            ["127.0.0.1:7002", "127.0.0.1:7003"]
        );
    }

    #[test]
    fn udp_port_collisions() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(same_socket(a("0.0.0.0:1"), a("127.0.0.1:1")));
        assert!(same_socket(a("127.0.0.1:1"), a("127.0.0.1:1")));
        assert!(!same_socket(a("127.0.0.1:1"), a("127.0.0.2:1")));
        assert!(!same_socket(a("127.0.0.1:0"), a("127.0.0.1:0")));
    }
}
