//! DNS-SD browsing and plain SRV discovery through hickory-resolver.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use nodosum_proto::NodeId;
use serde::{Deserialize, Serialize};

use crate::error::truncate;
use crate::{BoxFuture, Candidate, Discovered, Discovery, Error, TxtProblem};

/// TXT key holding the instance's node ID (`id=node-1`).
pub const TXT_KEY_ID: &str = "id";
/// TXT key holding the instance's QUIC port (`quic=6970`).
pub const TXT_KEY_QUIC: &str = "quic";

/// How [`DnsDiscovery`] reads DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsMode {
    /// DNS-SD (RFC 6763) browsing: `name` is a service type such as
    /// `_nodosum._udp.example.com.`; its PTR records name the instances, each instance's SRV
    /// record gives target host and gossip port, its TXT record the metadata
    /// (`id=<node id>`, `quic=<port>`), and the target's A/AAAA records the addresses.
    #[default]
    Browse,
    /// Plain SRV: `name`'s own SRV records give targets and gossip ports directly, as a
    /// Kubernetes headless Service publishes for a named port
    /// (`_gossip._udp.nodosum.default.svc.cluster.local.`). No node IDs or QUIC ports.
    Srv,
}

/// Configuration of [`DnsDiscovery`].
///
/// ```toml
/// [discovery.dns]
/// mode = "browse"                     # or "srv"
/// name = "_nodosum._udp.example.com."
/// # nameserver = "10.0.0.53:53"      # default: the system resolver (/etc/resolv.conf)
/// timeout = "5s"
/// attempts = 2
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Browse a DNS-SD service type, or read one name's SRV records. Default `browse`.
    pub mode: DnsMode,
    /// The service type (browse) or SRV name (srv). A trailing `.` makes it absolute;
    /// otherwise the system resolver's search domains apply. Required.
    pub name: String,
    /// Ask this DNS server (UDP, then TCP for truncated answers) instead of the system
    /// resolver. Default: none (system resolver).
    pub nameserver: Option<SocketAddr>,
    /// Timeout of one DNS query. Default 5 s (resolv.conf's default).
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
    /// Tries per query. Default 2 (resolv.conf's default).
    pub attempts: usize,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            mode: DnsMode::Browse,
            name: String::new(),
            nameserver: None,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

/// Discovery through DNS: DNS-SD browsing or plain SRV records.
///
/// Every round asks the server afresh (the resolver's cache is cleared at the start of each
/// round; within a round it saves repeated queries for a shared target). A PTR or SRV query
/// for the configured name that fails (server unreachable, SERVFAIL, timeout) fails the
/// round; a name with no records yields no candidates. Per-instance problems are skipped
/// and reported in [`Discovered::skipped`]: an instance without SRV
/// ([`Error::InstanceWithoutSrv`]), an SRV target without address
/// ([`Error::SrvTargetWithoutAddress`]), target `.` ([`Error::SrvTargetRoot`]), port 0
/// ([`Error::SrvPortZero`]), and unusable TXT strings ([`Error::MalformedTxt`], the rest of
/// the instance is still used).
#[derive(Debug, Clone)]
pub struct DnsDiscovery {
    mode: DnsMode,
    name: Name,
    resolver: TokioResolver,
}

impl DnsDiscovery {
    /// Validates the configuration and builds the resolver. Must be called inside a tokio
    /// runtime.
    pub fn new(config: &DnsConfig) -> Result<Self, Error> {
        if config.name.trim().is_empty() {
            return Err(Error::Config {
                field: "dns.name",
                problem: "must name a service type or SRV name".into(),
            });
        }
        let name = Name::from_str(config.name.trim()).map_err(|e| Error::Config {
            field: "dns.name",
            problem: format!("{:?} is not a DNS name: {e}", config.name),
        })?;
        if config.attempts == 0 {
            return Err(Error::Config {
                field: "dns.attempts",
                problem: "must be at least 1".into(),
            });
        }
        let resolver = build_resolver(config.nameserver, config.timeout, config.attempts)?;
        Ok(Self {
            mode: config.mode,
            name,
            resolver,
        })
    }

    async fn run(&self) -> Result<Discovered, Error> {
        self.resolver.clear_cache();
        let mut out = Discovered::default();
        match self.mode {
            DnsMode::Srv => {
                let meta = InstanceMeta::default();
                let Some(srvs) = self.srv(&self.name).await? else {
                    return Ok(out);
                };
                self.resolve_targets(&self.name, &srvs, &meta, &mut out)
                    .await;
            }
            DnsMode::Browse => {
                for instance in self.ptr(&self.name).await? {
                    self.browse_instance(&instance, &mut out).await;
                }
            }
        }
        Ok(out)
    }

    async fn browse_instance(&self, instance: &Name, out: &mut Discovered) {
        let srvs = match self.srv(instance).await {
            Ok(Some(srvs)) if !srvs.is_empty() => srvs,
            Ok(_) => {
                out.skip(
                    self.name(),
                    Error::InstanceWithoutSrv {
                        instance: instance.to_string(),
                    },
                );
                return;
            }
            Err(e) => {
                out.skip(self.name(), e);
                return;
            }
        };
        let meta = match self.txt(instance).await {
            Ok(strings) => InstanceMeta::parse(instance, &strings, self.name(), out),
            // A missing or failing TXT lookup leaves the instance usable without metadata.
            Err(e) => {
                out.skip(self.name(), e);
                InstanceMeta::default()
            }
        };
        self.resolve_targets(instance, &srvs, &meta, out).await;
    }

    async fn resolve_targets(
        &self,
        owner: &Name,
        srvs: &[(Name, u16)],
        meta: &InstanceMeta,
        out: &mut Discovered,
    ) {
        for (target, port) in srvs {
            if target.is_root() {
                out.skip(
                    self.name(),
                    Error::SrvTargetRoot {
                        name: owner.to_string(),
                    },
                );
                continue;
            }
            if *port == 0 {
                out.skip(
                    self.name(),
                    Error::SrvPortZero {
                        name: owner.to_string(),
                        target: target.to_string(),
                    },
                );
                continue;
            }
            match self.addresses(target).await {
                Ok(ips) if !ips.is_empty() => {
                    for ip in ips {
                        out.push(Candidate {
                            gossip_addr: SocketAddr::new(ip, *port),
                            node_id: meta.node_id.clone(),
                            quic_port: meta.quic_port,
                        });
                    }
                }
                Ok(_) => out.skip(
                    self.name(),
                    Error::SrvTargetWithoutAddress {
                        name: owner.to_string(),
                        target: target.to_string(),
                    },
                ),
                Err(e) => out.skip(self.name(), e),
            }
        }
    }

    /// PTR targets of `name`; empty when the name has none.
    async fn ptr(&self, name: &Name) -> Result<Vec<Name>, Error> {
        let lookup = match self.resolver.lookup(name.clone(), RecordType::PTR).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
            Err(e) => return Err(dns_error(name, "PTR", e)),
        };
        let mut out = Vec::new();
        for r in lookup.answers() {
            if let RData::PTR(ptr) = &r.data
                && !out.contains(&ptr.0)
            {
                out.push(ptr.0.clone());
            }
        }
        Ok(out)
    }

    /// SRV (target, port) pairs of `name`, ordered by priority then weight (highest first);
    /// `None` when the name has none.
    async fn srv(&self, name: &Name) -> Result<Option<Vec<(Name, u16)>>, Error> {
        let lookup = match self.resolver.lookup(name.clone(), RecordType::SRV).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() => return Ok(None),
            Err(e) => return Err(dns_error(name, "SRV", e)),
        };
        let mut srvs: Vec<(u16, u16, Name, u16)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some((s.priority, s.weight, s.target.clone(), s.port)),
                _ => None,
            })
            .collect();
        srvs.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        Ok(Some(srvs.into_iter().map(|(_, _, t, p)| (t, p)).collect()))
    }

    /// TXT strings of `name`; empty when it has none.
    async fn txt(&self, name: &Name) -> Result<Vec<Box<[u8]>>, Error> {
        let lookup = match self.resolver.lookup(name.clone(), RecordType::TXT).await {
            Ok(l) => l,
            Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
            Err(e) => return Err(dns_error(name, "TXT", e)),
        };
        Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(t.txt_data.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect())
    }

    /// A and AAAA addresses of `target`; empty when it has none.
    async fn addresses(&self, target: &Name) -> Result<Vec<IpAddr>, Error> {
        match self.resolver.lookup_ip(target.clone()).await {
            Ok(ips) => {
                let mut out = Vec::new();
                for ip in ips.iter() {
                    if !out.contains(&ip) {
                        out.push(ip);
                    }
                }
                Ok(out)
            }
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(dns_error(target, "A/AAAA", e)),
        }
    }
}

impl Discovery for DnsDiscovery {
    fn name(&self) -> &str {
        "dns"
    }

    fn discover(&self) -> BoxFuture<'_, Result<Discovered, Error>> {
        Box::pin(self.run())
    }
}

/// A resolver for the system configuration, or for one explicit server (UDP, TCP on
/// truncation) without /etc/hosts or search domains.
pub(crate) fn build_resolver(
    nameserver: Option<SocketAddr>,
    timeout: Duration,
    attempts: usize,
) -> Result<TokioResolver, Error> {
    let setup = |e| Error::DnsSetup {
        source: Box::new(e),
    };
    let mut builder = match nameserver {
        None => TokioResolver::builder_tokio().map_err(setup)?,
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let server = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            let mut b = Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![server]),
                TokioRuntimeProvider::default(),
            );
            // An explicit server is the only source of truth: no /etc/hosts.
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        }
    };
    let opts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = attempts.max(1);
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(setup)
}

fn dns_error(name: &Name, record_type: &'static str, source: NetError) -> Error {
    Error::Dns {
        name: name.to_string(),
        record_type,
        source: Box::new(source),
    }
}

/// Metadata read from an instance's TXT record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct InstanceMeta {
    node_id: Option<NodeId>,
    quic_port: Option<u16>,
}

impl InstanceMeta {
    /// Reads `key=value` strings per RFC 6763 §6: keys are case-insensitive, the first
    /// occurrence of a key wins, strings without `=` are boolean attributes (ignored here),
    /// unknown keys are ignored. Unusable strings are skipped with a reason.
    fn parse(instance: &Name, strings: &[Box<[u8]>], backend: &str, out: &mut Discovered) -> Self {
        let mut meta = Self::default();
        let mut seen_id = false;
        let mut seen_quic = false;
        for raw in strings {
            let malformed = |problem| Error::MalformedTxt {
                instance: instance.to_string(),
                entry: truncate(&String::from_utf8_lossy(raw), 64),
                problem,
            };
            let Ok(text) = std::str::from_utf8(raw) else {
                out.skip(backend, malformed(TxtProblem::NotUtf8));
                continue;
            };
            if text.is_empty() {
                continue;
            }
            let (key, value) = match text.split_once('=') {
                Some((k, v)) => (k, v),
                None => (text, ""),
            };
            if key.is_empty() {
                out.skip(backend, malformed(TxtProblem::EmptyKey));
                continue;
            }
            if key.eq_ignore_ascii_case(TXT_KEY_ID) && !seen_id {
                seen_id = true;
                match NodeId::new(value) {
                    Ok(id) => meta.node_id = Some(id),
                    Err(e) => out.skip(backend, malformed(TxtProblem::InvalidNodeId(e))),
                }
            } else if key.eq_ignore_ascii_case(TXT_KEY_QUIC) && !seen_quic {
                seen_quic = true;
                match value.parse::<u16>() {
                    Ok(p) if p != 0 => meta.quic_port = Some(p),
                    _ => out.skip(
                        backend,
                        malformed(TxtProblem::InvalidPort {
                            value: truncate(value, 16),
                        }),
                    ),
                }
            }
        }
        meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(strings: &[&[u8]]) -> (InstanceMeta, Vec<&'static str>) {
        let name = Name::from_str("a._nodosum._udp.example.").expect("valid");
        let strings: Vec<Box<[u8]>> = strings.iter().map(|s| Box::from(*s)).collect();
        let mut out = Discovered::default();
        let meta = InstanceMeta::parse(&name, &strings, "dns", &mut out);
        let kinds = out
            .skipped
            .iter()
            .map(|e| match e {
                Error::MalformedTxt { problem, .. } => match problem {
                    TxtProblem::NotUtf8 => "utf8",
                    TxtProblem::EmptyKey => "empty",
                    TxtProblem::InvalidNodeId(_) => "id",
                    TxtProblem::InvalidPort { .. } => "port",
                },
                _ => "other",
            })
            .collect();
        (meta, kinds)
    }

    #[test]
    fn txt_reads_documented_keys() {
        let (m, skipped) = parse(&[
            b"txtvers=1",
            b"ID=node-1",
            b"quic=6970",
            b"id=other",
            b"flag",
        ]);
        assert_eq!(m.node_id.as_ref().map(NodeId::as_str), Some("node-1"));
        assert_eq!(m.quic_port, Some(6970));
        assert!(skipped.is_empty());
    }

    #[test]
    fn txt_garbage_is_skipped_with_reason() {
        let (m, skipped) = parse(&[b"\xff\xfe", b"=x", b"id=-bad", b"quic=99999", b"quic=1"]);
        assert_eq!(m, InstanceMeta::default());
        assert_eq!(skipped, vec!["utf8", "empty", "id", "port"]);
    }

    #[test]
    fn config_rejects_empty_name_and_zero_attempts() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let e = DnsDiscovery::new(&DnsConfig::default()).expect_err("empty name");
            assert!(matches!(
                e,
                Error::Config {
                    field: "dns.name",
                    ..
                }
            ));
            let c = DnsConfig {
                name: "x.example.".into(),
                attempts: 0,
                nameserver: Some("127.0.0.1:53".parse().expect("literal")),
                ..DnsConfig::default()
            };
            let e = DnsDiscovery::new(&c).expect_err("zero attempts");
            assert!(matches!(
                e,
                Error::Config {
                    field: "dns.attempts",
                    ..
                }
            ));
        });
    }

    #[test]
    fn config_deserializes() {
        let c: DnsConfig = serde_json::from_str(
            r#"{"mode":"srv","name":"_gossip._udp.nodosum.default.svc.cluster.local.","nameserver":"127.0.0.1:5353","timeout":"2s"}"#,
        )
        .expect("valid");
        assert_eq!(c.mode, DnsMode::Srv);
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.attempts, 2);
    }
}
