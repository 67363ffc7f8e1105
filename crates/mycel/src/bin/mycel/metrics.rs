//! Prometheus metrics of the server, exported by the admin API's `GET /metrics`.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

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

/// Label of the error-reply series: the error's code, the first word of its message.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabel {
    /// `ERR`, `CROSSSLOT`, ... (one of [`ERROR_CODES`]).
    pub(crate) code: &'static str,
}

/// The codes Mycel's error replies start with (`INFO errorstats`'s `errorstat_<code>`).
/// A message starting with anything else counts as `ERR`.
pub(crate) const ERROR_CODES: &[&str] = &[
    "ERR",
    "CLUSTERDOWN",
    "CROSSSLOT",
    "EXECABORT",
    "NOAUTH",
    "NOPROTO",
    "TIMEOUT",
    "TRYAGAIN",
    "WRONGPASS",
];

/// The code of an error reply's message (see [`ERROR_CODES`]).
pub(crate) fn error_code(message: &str) -> &'static str {
    let first = message.split(' ').next().unwrap_or_default();
    ERROR_CODES
        .iter()
        .copied()
        .find(|&code| code == first)
        .unwrap_or("ERR")
}

/// One command's line of `INFO commandstats`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CommandStat {
    /// The command's name.
    pub(crate) command: &'static str,
    /// Calls: the command ran, or was refused for a bad argument.
    pub(crate) calls: u64,
    /// Microseconds the calls took.
    pub(crate) usec: u64,
    /// Requests refused before running (a wrong number of arguments); not calls.
    pub(crate) rejected: u64,
    /// Calls answered with an error.
    pub(crate) failed: u64,
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
    /// Requests refused before they ran (a wrong number of arguments), by command name;
    /// also among `errors`.
    pub(crate) rejected: Family<CommandLabel, Counter>,
    /// Seconds commands took from execution to reply, by command name (a batch's time
    /// is shared evenly among its commands).
    pub(crate) duration: Family<CommandLabel, Counter<f64, AtomicU64>>,
    /// Error replies sent, by error code.
    pub(crate) error_replies: Family<ErrorLabel, Counter>,
    /// Connections closed for breaking the protocol.
    pub(crate) protocol_errors: Counter,
    /// Connections accepted since start.
    pub(crate) connections_total: Counter,
    /// TLS connections (`--resp-tls`) closed because their handshake failed or took too long.
    pub(crate) tls_handshake_failures: Counter,
    /// Reloads (SIGHUP) of the files a running server rereads.
    pub(crate) reloads: Counter,
    /// Reloads of which a file did not load (its setting was kept).
    pub(crate) reload_failures: Counter,
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
            rejected: Family::default(),
            duration: Family::default(),
            error_replies: Family::default(),
            protocol_errors: Counter::default(),
            connections_total: Counter::default(),
            tls_handshake_failures: Counter::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
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
            "command_rejections",
            "Requests refused before they ran (wrong number of arguments, or not authenticated)",
            m.rejected.clone(),
        );
        registry.register(
            "command_duration_seconds",
            "Time commands took from execution to reply (a batch's shared among its commands)",
            m.duration.clone(),
        );
        registry.register(
            "error_replies",
            "Error replies sent, by error code",
            m.error_replies.clone(),
        );
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
            "tls_handshake_failures",
            "TLS client connections closed for a failed or timed-out handshake",
            m.tls_handshake_failures.clone(),
        );
        registry.register(
            "reloads",
            "Reloads (SIGHUP) of the TLS files and the password file",
            m.reloads.clone(),
        );
        registry.register(
            "reload_failures",
            "Reloads of which a file did not load (its setting was kept)",
            m.reload_failures.clone(),
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

    /// `INFO commandstats`: each command with a call or a refusal, by name.
    pub(crate) fn command_stats(&self) -> Vec<CommandStat> {
        let count = |family: &Family<CommandLabel, Counter>, command| {
            family.get(&CommandLabel { command }).map_or(0, |c| c.get())
        };
        mycel::resp::cmd::NAMES
            .iter()
            .filter_map(|&command| {
                let calls = count(&self.commands, command);
                let rejected = count(&self.rejected, command);
                if calls == 0 && rejected == 0 {
                    return None;
                }
                let seconds = self
                    .duration
                    .get(&CommandLabel { command })
                    .map_or(0.0, |d| d.get());
                Some(CommandStat {
                    command,
                    calls,
                    // Whole microseconds of a sum of seconds: truncation is intended.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    usec: (seconds * 1e6).round() as u64,
                    rejected,
                    failed: count(&self.errors, command).saturating_sub(rejected),
                })
            })
            .collect()
    }

    /// `INFO errorstats`: error replies by code, for the codes sent at least once.
    pub(crate) fn error_stats(&self) -> Vec<(&'static str, u64)> {
        ERROR_CODES
            .iter()
            .filter_map(|&code| {
                let n = self.error_replies.get(&ErrorLabel { code })?.get();
                (n > 0).then_some((code, n))
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_counts_under_its_code_or_err() {
        assert_eq!(error_code("ERR syntax error"), "ERR");
        assert_eq!(error_code("TRYAGAIN table changed"), "TRYAGAIN");
        assert_eq!(
            error_code("CROSSSLOT Keys in request don't hash to the same slot"),
            "CROSSSLOT"
        );
        assert_eq!(error_code("CLUSTERDOWN quorum lost"), "CLUSTERDOWN");
        // Not a code of Mycel's: counted as ERR, so the series stay bounded.
        assert_eq!(error_code("WRONGTYPE Operation"), "ERR");
        assert_eq!(error_code(""), "ERR");
    }

    #[test]
    fn command_stats_split_refusals_from_failures() {
        let m = Metrics::new();
        let label = CommandLabel { command: "get" };
        m.commands.get_or_create(&label).inc_by(5);
        m.errors.get_or_create(&label).inc_by(3);
        m.rejected.get_or_create(&label).inc_by(2);
        m.duration.get_or_create(&label).inc_by(0.000_25);
        // A series created but never counted is not listed.
        drop(m.commands.get_or_create(&CommandLabel { command: "set" }));
        assert_eq!(
            m.command_stats(),
            [CommandStat {
                command: "get",
                calls: 5,
                usec: 250,
                rejected: 2,
                failed: 1,
            }]
        );
        m.error_replies
            .get_or_create(&ErrorLabel { code: "TIMEOUT" })
            .inc();
        drop(m.error_replies.get_or_create(&ErrorLabel { code: "ERR" }));
        assert_eq!(m.error_stats(), [("TIMEOUT", 1)]);
    }
}
