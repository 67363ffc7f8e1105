//! Static seeds: a list of `[id@]host:port` entries, resolved at every round.

use std::net::SocketAddr;
use std::time::Duration;

use nodosum_proto::NodeId;
use serde::{Deserialize, Serialize};

use crate::{BoxFuture, Candidate, Discovered, Discovery, Error, SeedProblem};

/// Configuration of [`StaticDiscovery`].
///
/// ```toml
/// [discovery.static]
/// seeds = ["10.0.0.1:6969", "node-2@seed.example.com:6969", "[::1]:6969"]
/// resolve_timeout = "5s"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaticConfig {
    /// Seeds as `host:port`, `[ipv6]:port` or `node-id@host:port`. Host names are resolved
    /// again at every round (through the system resolver), so a name that starts resolving
    /// later is picked up. Default: empty.
    pub seeds: Vec<String>,
    /// How long one entry may take to resolve. Default 5 s (glibc's default DNS timeout).
    #[serde(with = "crate::duration")]
    pub resolve_timeout: Duration,
}

impl Default for StaticConfig {
    fn default() -> Self {
        Self {
            seeds: Vec::new(),
            resolve_timeout: Duration::from_secs(5),
        }
    }
}

/// A parsed static seed entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seed {
    entry: String,
    node_id: Option<NodeId>,
    host: String,
    port: u16,
}

/// Discovery from a fixed list of seeds.
///
/// Each round resolves every entry (IP literals without a lookup); an entry that fails is
/// reported in [`Discovered::skipped`] as [`Error::Resolve`], [`Error::NoAddress`] or
/// [`Error::ResolveTimeout`] naming the entry, and the round fails with
/// [`Error::NoSeedResolved`] only when no entry resolved.
#[derive(Debug, Clone)]
pub struct StaticDiscovery {
    seeds: Vec<Seed>,
    resolve_timeout: Duration,
}

impl StaticDiscovery {
    /// Parses every entry; the first malformed one is returned as [`Error::InvalidSeed`].
    pub fn new(config: &StaticConfig) -> Result<Self, Error> {
        let seeds = config
            .seeds
            .iter()
            .map(|e| parse_seed(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            seeds,
            resolve_timeout: config.resolve_timeout,
        })
    }

    async fn run(&self) -> Result<Discovered, Error> {
        let mut out = Discovered::default();
        for seed in &self.seeds {
            match self.resolve(seed).await {
                Ok(addrs) => {
                    for addr in addrs {
                        out.push(Candidate {
                            gossip_addr: addr,
                            node_id: seed.node_id.clone(),
                            quic_port: None,
                        });
                    }
                }
                Err(e) => out.skip(self.name(), e),
            }
        }
        if out.candidates.is_empty() && !out.skipped.is_empty() {
            return Err(Error::NoSeedResolved {
                errors: out.skipped,
            });
        }
        Ok(out)
    }

    async fn resolve(&self, seed: &Seed) -> Result<Vec<SocketAddr>, Error> {
        let host = seed.host.as_str();
        if let Ok(ip) = host.parse() {
            return Ok(vec![SocketAddr::new(ip, seed.port)]);
        }
        let lookup = tokio::net::lookup_host((host, seed.port));
        let addrs = tokio::time::timeout(self.resolve_timeout, lookup)
            .await
            .map_err(|_| Error::ResolveTimeout {
                entry: seed.entry.clone(),
                after: self.resolve_timeout,
            })?
            .map_err(|source| Error::Resolve {
                entry: seed.entry.clone(),
                source,
            })?;
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in addrs {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        if out.is_empty() {
            return Err(Error::NoAddress {
                entry: seed.entry.clone(),
            });
        }
        Ok(out)
    }
}

impl Discovery for StaticDiscovery {
    fn name(&self) -> &str {
        "static"
    }

    fn discover(&self) -> BoxFuture<'_, Result<Discovered, Error>> {
        Box::pin(self.run())
    }
}

fn parse_seed(entry: &str) -> Result<Seed, Error> {
    let invalid = |problem| Error::InvalidSeed {
        entry: entry.to_owned(),
        problem,
    };
    let text = entry.trim();
    let (node_id, hostport) = match text.split_once('@') {
        Some((id, rest)) => (
            Some(NodeId::new(id).map_err(|e| invalid(SeedProblem::InvalidNodeId(e)))?),
            rest,
        ),
        None => (None, text),
    };
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        // `[v6]:port`
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| invalid(SeedProblem::MissingPort))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| invalid(SeedProblem::MissingPort))?;
        (host, port)
    } else {
        let (host, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| invalid(SeedProblem::MissingPort))?;
        if host.contains(':') {
            // A bare IPv6 address without brackets is ambiguous.
            return Err(invalid(SeedProblem::MissingPort));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(invalid(SeedProblem::EmptyHost));
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p != 0 => p,
        _ => {
            return Err(invalid(SeedProblem::InvalidPort {
                port: port.to_owned(),
            }));
        }
    };
    Ok(Seed {
        entry: entry.to_owned(),
        node_id,
        host: host.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(entry: &str) -> SeedProblem {
        match parse_seed(entry) {
            Err(Error::InvalidSeed { entry: e, problem }) => {
                assert_eq!(e, entry);
                problem
            }
            other => panic!("expected InvalidSeed for {entry:?}, got {other:?}"),
        }
    }

    #[test]
    fn parses_forms() {
        let s = parse_seed("10.0.0.1:6969").expect("valid");
        assert_eq!(
            (s.host.as_str(), s.port, s.node_id),
            ("10.0.0.1", 6969, None)
        );
        let s = parse_seed("[::1]:7000").expect("valid");
        assert_eq!((s.host.as_str(), s.port), ("::1", 7000));
        let s = parse_seed("node-2@seed.example.com:6969").expect("valid");
        assert_eq!(s.host, "seed.example.com");
        assert_eq!(s.node_id.as_ref().map(NodeId::as_str), Some("node-2"));
    }

    #[test]
    fn rejects_malformed_entries() {
        assert_eq!(problem("localhost"), SeedProblem::MissingPort);
        assert_eq!(problem("::1:6969"), SeedProblem::MissingPort);
        assert_eq!(problem("[::1]6969"), SeedProblem::MissingPort);
        assert_eq!(problem(":6969"), SeedProblem::EmptyHost);
        assert!(matches!(problem("host:0"), SeedProblem::InvalidPort { .. }));
        assert!(matches!(
            problem("host:70000"),
            SeedProblem::InvalidPort { .. }
        ));
        assert!(matches!(
            problem("host:http"),
            SeedProblem::InvalidPort { .. }
        ));
        assert!(matches!(
            problem("-bad@host:1"),
            SeedProblem::InvalidNodeId(_)
        ));
    }

    #[test]
    fn config_deserializes_with_defaults() {
        let c: StaticConfig =
            serde_json::from_str(r#"{"seeds":["a:1"],"resolve_timeout":"2s"}"#).expect("valid");
        assert_eq!(c.seeds, vec!["a:1".to_owned()]);
        assert_eq!(c.resolve_timeout, Duration::from_secs(2));
        let c: StaticConfig = serde_json::from_str("{}").expect("valid");
        assert_eq!(c, StaticConfig::default());
    }
}
