//! Static seeds: a list of `[id@]host:port` entries, resolved at every round.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use tokio::task::JoinSet;

use nodosum_proto::NodeId;
use serde::{Deserialize, Serialize};

use crate::{BoxFuture, Candidate, Discovered, Discovery, Error, SeedProblem};

/// Configuration of [`StaticDiscovery`].
///
/// ```toml
/// [discovery.static]
/// seeds = ["10.0.0.1:6969", "node-2@seed.example.com:6969", "[::1]:6969"]
/// resolve_timeout = "5s"
/// # nameserver = "10.0.0.53:53"   # default: the system resolver
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
    /// Resolve names by asking this DNS server (A and AAAA, no /etc/hosts, no search
    /// domains) instead of the system resolver (`getaddrinfo`). Default: none.
    pub nameserver: Option<SocketAddr>,
}

impl Default for StaticConfig {
    fn default() -> Self {
        Self {
            seeds: Vec::new(),
            resolve_timeout: Duration::from_secs(5),
            nameserver: None,
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
    /// `None`: the system resolver.
    resolver: Option<TokioResolver>,
}

impl StaticDiscovery {
    /// Parses every entry; the first malformed one is returned as [`Error::InvalidSeed`].
    /// With a `nameserver`, must be called inside a tokio runtime.
    pub fn new(config: &StaticConfig) -> Result<Self, Error> {
        let seeds = config
            .seeds
            .iter()
            .map(|e| parse_seed(e))
            .collect::<Result<Vec<_>, _>>()?;
        let resolver = match config.nameserver {
            Some(addr) => Some(crate::dns::build_resolver(
                Some(addr),
                config.resolve_timeout,
                1,
            )?),
            None => None,
        };
        Ok(Self {
            seeds,
            resolve_timeout: config.resolve_timeout,
            resolver,
        })
    }

    async fn run(&self) -> Result<Discovered, Error> {
        // Entries resolve concurrently, so one slow name costs one timeout, not one per entry.
        let mut set = JoinSet::new();
        for (i, seed) in self.seeds.iter().enumerate() {
            let seed = seed.clone();
            let resolver = self.resolver.clone();
            let timeout = self.resolve_timeout;
            set.spawn(async move {
                let r = resolve(resolver.as_ref(), timeout, &seed).await;
                (i, seed, r)
            });
        }
        let mut results = Vec::with_capacity(self.seeds.len());
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(r) => results.push(r),
                Err(e) => tracing::error!(error = %e, "static seed resolution task failed"),
            }
        }
        results.sort_by_key(|(i, _, _)| *i);
        let mut out = Discovered::default();
        for (_, seed, result) in results {
            match result {
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
}

async fn resolve(
    resolver: Option<&TokioResolver>,
    resolve_timeout: Duration,
    seed: &Seed,
) -> Result<Vec<SocketAddr>, Error> {
    let host = seed.host.as_str();
    if let Ok(ip) = host.parse() {
        return Ok(vec![SocketAddr::new(ip, seed.port)]);
    }
    let timed_out = |_| Error::ResolveTimeout {
        entry: seed.entry.clone(),
        after: resolve_timeout,
    };
    let failed = |source| Error::Resolve {
        entry: seed.entry.clone(),
        source,
    };
    let found: Vec<SocketAddr> = match resolver {
        None => {
            let lookup = tokio::net::lookup_host((host, seed.port));
            tokio::time::timeout(resolve_timeout, lookup)
                .await
                .map_err(timed_out)?
                .map_err(failed)?
                .collect()
        }
        Some(resolver) => {
            // Absolute: the configured server answers for exactly this name.
            let name = format!("{}.", host.trim_end_matches('.'));
            let lookup = resolver.lookup_ip(name.as_str());
            match tokio::time::timeout(resolve_timeout, lookup)
                .await
                .map_err(timed_out)?
            {
                Ok(ips) => ips
                    .iter()
                    .map(|ip| SocketAddr::new(ip, seed.port))
                    .collect(),
                Err(e) if e.is_no_records_found() => Vec::new(),
                Err(e) => return Err(failed(io::Error::other(e))),
            }
        }
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in found {
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

impl Discovery for StaticDiscovery {
    fn name(&self) -> &str {
        "static"
    }

    fn discover(&self) -> BoxFuture<'_, Result<Discovered, Error>> {
        Box::pin(self.run())
    }
}

/// Why `entry` is not a valid seed, if it is not (see [`StaticDiscovery::new`]).
pub(crate) fn seed_problem(entry: &str) -> Option<Error> {
    parse_seed(entry).err()
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
