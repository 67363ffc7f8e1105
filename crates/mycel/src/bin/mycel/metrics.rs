//! Prometheus metrics of the server, exported by the admin API's `GET /metrics`.

use std::sync::Mutex;

use mycel::Stats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label of per-command series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CommandLabel {
    /// The command's lowercase name (`get`, `set`, ... or `unknown`).
    pub(crate) command: &'static str,
}

/// Every series the server exports. Counters are atomics, so connections update them
/// without locks; store figures are sampled from the handle when scraped.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Commands executed, by name.
    pub(crate) commands: Family<CommandLabel, Counter>,
    /// Error replies sent, by command name.
    pub(crate) errors: Family<CommandLabel, Counter>,
    /// Connections closed for breaking the protocol.
    pub(crate) protocol_errors: Counter,
    /// Connections accepted since start.
    pub(crate) connections_total: Counter,
    /// Connections open now.
    pub(crate) connections: Gauge,
    keys: Gauge,
    expires: Gauge,
    memory_used: Gauge,
    memory_max: Gauge,
    evictions: Counter,
    expirations: Counter,
    /// Store counters already added to `evictions` and `expirations`.
    seen: Mutex<(u64, u64)>,
}

impl Metrics {
    /// The server's series and its store's (`keys`, `memory_*`, ...: in cluster mode what
    /// this node holds, as primary and as backup).
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("mycel");
        let m = Self {
            commands: Family::default(),
            errors: Family::default(),
            protocol_errors: Counter::default(),
            connections_total: Counter::default(),
            connections: Gauge::default(),
            keys: Gauge::default(),
            expires: Gauge::default(),
            memory_used: Gauge::default(),
            memory_max: Gauge::default(),
            evictions: Counter::default(),
            expirations: Counter::default(),
            seen: Mutex::new((0, 0)),
            registry: Registry::default(),
        };
        registry.register("commands", "Commands executed", m.commands.clone());
        registry.register("command_errors", "Error replies sent", m.errors.clone());
        registry.register(
            "protocol_errors",
            "Connections closed for a protocol error",
            m.protocol_errors.clone(),
        );
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            m.connections_total.clone(),
        );
        registry.register(
            "connections",
            "Client connections open",
            m.connections.clone(),
        );
        registry.register("keys", "Live keys held", m.keys.clone());
        registry.register(
            "keys_with_ttl",
            "Live keys with an expiry",
            m.expires.clone(),
        );
        registry.register(
            "memory_used_bytes",
            "Bytes charged to the store's budget",
            m.memory_used.clone(),
        );
        registry.register(
            "memory_max_bytes",
            "The store's byte budget",
            m.memory_max.clone(),
        );
        registry.register(
            "evictions",
            "Entries evicted to respect the byte budget",
            m.evictions.clone(),
        );
        registry.register(
            "expirations",
            "Expired entries removed",
            m.expirations.clone(),
        );
        Self { registry, ..m }
    }

    /// Commands executed since start, all names together (`INFO`'s
    /// `total_commands_processed`), without creating a series for names never seen.
    pub(crate) fn commands_processed(&self) -> u64 {
        mycel::resp::cmd::NAMES
            .iter()
            .chain(&["unknown"])
            .filter_map(|&command| self.commands.get(&CommandLabel { command }))
            .map(|calls| calls.get())
            .sum()
    }

    /// The Prometheus text exposition, with store figures from `stats`.
    pub(crate) fn render(&self, stats: &Stats) -> String {
        self.sample(stats);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    fn sample(&self, stats: &Stats) {
        self.keys.set(i64::try_from(stats.keys).unwrap_or(i64::MAX));
        self.expires
            .set(i64::try_from(stats.expires).unwrap_or(i64::MAX));
        self.memory_used
            .set(i64::try_from(stats.used_bytes).unwrap_or(i64::MAX));
        self.memory_max
            .set(i64::try_from(stats.max_bytes).unwrap_or(i64::MAX));
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            self.evictions.inc_by(stats.evicted.saturating_sub(seen.0));
            self.expirations
                .inc_by(stats.expired.saturating_sub(seen.1));
            *seen = (seen.0.max(stats.evicted), seen.1.max(stats.expired));
        }
    }
}
