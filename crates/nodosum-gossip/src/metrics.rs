//! Prometheus metrics of the membership layer.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::table::MemberState;

/// Labels with one `(name, value)` pair.
pub(crate) type Label = [(&'static str, &'static str); 1];

/// The counters and gauges one node keeps. Cloning shares the underlying values.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    pub(crate) members: Family<Label, Gauge>,
    pub(crate) probes_sent: Counter,
    pub(crate) probes_failed: Counter,
    pub(crate) suspicions: Counter,
    pub(crate) refutations: Counter,
    pub(crate) self_refutations: Counter,
    pub(crate) datagrams_in: Counter,
    pub(crate) datagrams_out: Counter,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    pub(crate) dropped: Family<Label, Counter>,
    pub(crate) health_score: Gauge,
    pub(crate) view_corrections: Counter,
}

impl Metrics {
    /// Registers every metric under the `nodosum_gossip` prefix.
    pub(crate) fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("nodosum_gossip");
        r.register(
            "members",
            "Members known to this node, by state (this node excluded)",
            self.members.clone(),
        );
        r.register(
            "probes_sent",
            "Direct probes sent",
            self.probes_sent.clone(),
        );
        r.register(
            "probes_failed",
            "Probes that got no direct or indirect ack in time",
            self.probes_failed.clone(),
        );
        r.register(
            "suspicions",
            "Members this node came to suspect",
            self.suspicions.clone(),
        );
        r.register(
            "refutations",
            "Suspected members seen refuting the suspicion",
            self.refutations.clone(),
        );
        r.register(
            "self_refutations",
            "Times this node refuted a suspicion about itself",
            self.self_refutations.clone(),
        );
        r.register(
            "datagrams_in",
            "Datagrams received, dropped ones included",
            self.datagrams_in.clone(),
        );
        r.register(
            "datagrams_out",
            "Datagrams sent",
            self.datagrams_out.clone(),
        );
        r.register("bytes_in", "Bytes received", self.bytes_in.clone());
        r.register("bytes_out", "Bytes sent", self.bytes_out.clone());
        r.register(
            "dropped",
            "Datagrams dropped, by reason (decrypt failures, foreign cluster, malformed)",
            self.dropped.clone(),
        );
        r.register(
            "health_score",
            "Local health score (0 healthy, higher means this node's own probes time out)",
            self.health_score.clone(),
        );
        r.register(
            "view_corrections",
            "Member view entries corrected by reconciling with the protocol state",
            self.view_corrections.clone(),
        );
    }

    pub(crate) fn set_members(&self, state: MemberState, n: usize) {
        self.members
            .get_or_create(&[("state", state.as_str())])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    #[cfg(test)]
    pub(crate) fn drop_count(&self, reason: &'static str) -> u64 {
        self.dropped.get_or_create(&[("reason", reason)]).get()
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn registered_under_prefix() {
        let m = Metrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        m.set_members(MemberState::Alive, 3);
        m.dropped.get_or_create(&[("reason", "unknown_key")]).inc();
        let mut text = String::new();
        encode(&mut text, &reg).unwrap();
        assert!(text.contains("nodosum_gossip_members{state=\"alive\"} 3"));
        assert!(text.contains("nodosum_gossip_dropped_total{reason=\"unknown_key\"} 1"));
        assert!(text.contains("nodosum_gossip_health_score 0"));
    }
}
