//! [`DiscoveryConfig`]: every backend's configuration in one serde-friendly struct.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    ConsulConfig, ConsulDiscovery, DiscovererConfig, Discovery, DnsConfig, DnsDiscovery, Error,
    Multi, StaticConfig, StaticDiscovery,
};

/// The discovery section of a node's configuration: any combination of backends, and the
/// loop's timing.
///
/// ```toml
/// [discovery]
/// interval = "30s"
///
/// [discovery.static]
/// seeds = ["10.0.0.1:6969"]
///
/// [discovery.dns]
/// mode = "srv"
/// name = "_gossip._udp.nodosum.default.svc.cluster.local."
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// The loop's interval, jitter and backoff (flattened: `interval`, `jitter`, ...).
    #[serde(flatten)]
    pub runner: DiscovererConfig,
    /// Static seeds. Default none.
    #[serde(rename = "static")]
    pub static_seeds: Option<StaticConfig>,
    /// DNS-SD or SRV. Default none.
    pub dns: Option<DnsConfig>,
    /// Consul. Default none.
    pub consul: Option<ConsulConfig>,
}

/// The backends built from a [`DiscoveryConfig`].
#[derive(Debug, Clone)]
pub struct Backends {
    /// What the [`Discoverer`](crate::Discoverer) should ask: the single configured backend,
    /// or a [`Multi`] over several (static first, then DNS, then Consul). `None` when no
    /// backend is configured (a node that only waits to be joined).
    pub discovery: Option<Arc<dyn Discovery>>,
    /// The Consul backend, kept apart for
    /// [`spawn_registration`](ConsulDiscovery::spawn_registration).
    pub consul: Option<Arc<ConsulDiscovery>>,
}

impl DiscoveryConfig {
    /// The static seed entries [`build`](Self::build) would refuse, with their index in
    /// the list: every one, found without building anything (no runtime needed), so a
    /// configuration can be checked before a node starts.
    pub fn invalid_seeds(&self) -> Vec<(usize, Error)> {
        self.static_seeds
            .iter()
            .flat_map(|c| c.seeds.iter().enumerate())
            .filter_map(|(i, entry)| crate::static_list::seed_problem(entry).map(|e| (i, e)))
            .collect()
    }

    /// Builds every configured backend; the first invalid one is returned as an error.
    /// Sends nothing. Must be called inside a tokio runtime (the DNS resolver needs one).
    pub fn build(&self) -> Result<Backends, Error> {
        let mut all: Vec<Arc<dyn Discovery>> = Vec::new();
        if let Some(c) = &self.static_seeds {
            all.push(Arc::new(StaticDiscovery::new(c)?));
        }
        if let Some(c) = &self.dns {
            all.push(Arc::new(DnsDiscovery::new(c)?));
        }
        let consul = match &self.consul {
            Some(c) => {
                let consul = Arc::new(ConsulDiscovery::new(c)?);
                all.push(consul.clone());
                Some(consul)
            }
            None => None,
        };
        let discovery = match all.len() {
            0 => None,
            1 => all.pop(),
            _ => Some(Arc::new(Multi::new(all)) as Arc<dyn Discovery>),
        };
        Ok(Backends { discovery, consul })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn builds_one_or_many_backends() {
        let c: DiscoveryConfig =
            serde_json::from_str(r#"{"interval":"10s","static":{"seeds":["127.0.0.1:6969"]}}"#)
                .expect("valid");
        assert_eq!(c.runner.interval, Duration::from_secs(10));
        let b = c.build().expect("builds");
        assert_eq!(b.discovery.expect("one backend").name(), "static");
        assert!(b.consul.is_none());

        let c: DiscoveryConfig = serde_json::from_str(
            r#"{"static":{"seeds":["127.0.0.1:6969"]},"consul":{"service":"nodosum"}}"#,
        )
        .expect("valid");
        let b = c.build().expect("builds");
        assert_eq!(b.discovery.expect("combined").name(), "multi");
        assert!(b.consul.is_some());

        let b = DiscoveryConfig::default().build().expect("builds");
        assert!(b.discovery.is_none());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(serde_json::from_str::<DiscoveryConfig>(r#"{"stattic":{}}"#).is_err());
    }
}
