//! Prometheus metrics of the QUIC transport, registered into the caller's registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub(crate) kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AppLabel {
    pub(crate) app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AppDirLabel {
    pub(crate) app: String,
    pub(crate) direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AppReasonLabel {
    pub(crate) app: String,
    pub(crate) reason: &'static str,
}

/// All metrics of one node. Cheap to clone (every metric is an `Arc` inside).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub(crate) connections: Gauge,
    pub(crate) handshakes: Family<KindLabel, Counter>,
    pub(crate) handshake_failures: Family<ReasonLabel, Counter>,
    pub(crate) rejected: Family<ReasonLabel, Counter>,
    pub(crate) streams: Family<AppLabel, Gauge>,
    pub(crate) messages: Family<AppDirLabel, Counter>,
    pub(crate) bytes: Family<AppDirLabel, Counter>,
    pub(crate) send_errors: Family<AppReasonLabel, Counter>,
    pub(crate) stream_errors: Family<ReasonLabel, Counter>,
    pub(crate) rtt: Histogram,
    pub(crate) sent_packets: Counter,
    pub(crate) lost_packets: Counter,
    pub(crate) lost_bytes: Counter,
    pub(crate) congestion_events: Counter,
}

/// A connection's path counters as last added to the metrics.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PathCounts {
    sent_packets: u64,
    lost_packets: u64,
    lost_bytes: u64,
    congestion_events: u64,
}

impl Metrics {
    pub(crate) fn new(registry: Option<&mut Registry>) -> Self {
        let m = Self {
            connections: Gauge::default(),
            handshakes: Family::default(),
            handshake_failures: Family::default(),
            rejected: Family::default(),
            streams: Family::default(),
            messages: Family::default(),
            bytes: Family::default(),
            send_errors: Family::default(),
            stream_errors: Family::default(),
            // 50 µs to about 3.3 s.
            rtt: Histogram::new(exponential_buckets(0.000_05, 2.0, 17)),
            sent_packets: Counter::default(),
            lost_packets: Counter::default(),
            lost_bytes: Counter::default(),
            congestion_events: Counter::default(),
        };
        if let Some(registry) = registry {
            let r = registry.sub_registry_with_prefix("nodosum_quic");
            r.register(
                "connections",
                "Open QUIC connections",
                m.connections.clone(),
            );
            r.register(
                "handshakes",
                "Completed handshakes by kind (full, resumed, zero_rtt)",
                m.handshakes.clone(),
            );
            r.register(
                "handshake_failures",
                "Failed handshakes by reason",
                m.handshake_failures.clone(),
            );
            r.register(
                "connections_rejected",
                "Established connections closed by identity checks or the acceptance policy",
                m.rejected.clone(),
            );
            r.register("streams", "Open streams per application", m.streams.clone());
            r.register(
                "messages",
                "Messages per application and direction",
                m.messages.clone(),
            );
            r.register(
                "bytes",
                "Payload bytes per application and direction",
                m.bytes.clone(),
            );
            r.register(
                "send_errors",
                "Messages that could not be sent, by application and reason",
                m.send_errors.clone(),
            );
            r.register(
                "stream_errors",
                "Streams reset or refused, by reason",
                m.stream_errors.clone(),
            );
            r.register("rtt_seconds", "Sampled round-trip times", m.rtt.clone());
            r.register(
                "packets_sent",
                "Packets sent, over all connections (sampled every 5 s and at close)",
                m.sent_packets.clone(),
            );
            r.register(
                "packets_lost",
                "Packets declared lost and sent again, over all connections",
                m.lost_packets.clone(),
            );
            r.register(
                "lost_bytes",
                "Bytes in packets declared lost, over all connections",
                m.lost_bytes.clone(),
            );
            r.register(
                "congestion_events",
                "Congestion window reductions, over all connections",
                m.congestion_events.clone(),
            );
        }
        m
    }

    /// Adds what a connection's path `stats` counted since `last`; returns the new mark.
    pub(crate) fn path(&self, last: PathCounts, stats: &quinn::PathStats) -> PathCounts {
        let now = PathCounts {
            sent_packets: stats.sent_packets,
            lost_packets: stats.lost_packets,
            lost_bytes: stats.lost_bytes,
            congestion_events: stats.congestion_events,
        };
        // quinn's counters only grow; `saturating_sub` keeps a surprise from wrapping.
        self.sent_packets
            .inc_by(now.sent_packets.saturating_sub(last.sent_packets));
        self.lost_packets
            .inc_by(now.lost_packets.saturating_sub(last.lost_packets));
        self.lost_bytes
            .inc_by(now.lost_bytes.saturating_sub(last.lost_bytes));
        self.congestion_events
            .inc_by(now.congestion_events.saturating_sub(last.congestion_events));
        now
    }

    pub(crate) fn send_error(&self, app: &str, reason: &'static str, n: u64) {
        self.send_errors
            .get_or_create(&AppReasonLabel {
                app: app.to_owned(),
                reason,
            })
            .inc_by(n);
    }

    pub(crate) fn stream_error(&self, reason: &'static str) {
        self.stream_errors
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The message and byte counters of one application and direction, looked up once so
    /// the per-message path only increments atomics.
    pub(crate) fn traffic(&self, app: &str, direction: &'static str) -> Traffic {
        let label = AppDirLabel {
            app: app.to_owned(),
            direction,
        };
        Traffic {
            messages: self.messages.get_or_create(&label).clone(),
            bytes: self.bytes.get_or_create(&label).clone(),
        }
    }
}

/// Counters of one (application, direction).
#[derive(Debug, Clone)]
pub(crate) struct Traffic {
    messages: Counter,
    bytes: Counter,
}

impl Traffic {
    pub(crate) fn add(&self, messages: u64, bytes: u64) {
        self.messages.inc_by(messages);
        self.bytes.inc_by(bytes);
    }
}
