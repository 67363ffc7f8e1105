//! Per-application metrics of the facade, next to what gossip and QUIC register.

use std::time::Duration;

use nodosum_proto::AppId;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AppReason {
    app: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AppOutcome {
    app: String,
    outcome: &'static str,
}

/// Counters per application; cheap to clone (shared cells).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    messages_sent: Family<AppLabel, Counter>,
    bytes_sent: Family<AppLabel, Counter>,
    messages_received: Family<AppLabel, Counter>,
    bytes_received: Family<AppLabel, Counter>,
    send_errors: Family<AppReason, Counter>,
    dropped: Family<AppReason, Counter>,
    requests: Family<AppOutcome, Histogram>,
}

impl Metrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self {
            messages_sent: Family::default(),
            bytes_sent: Family::default(),
            messages_received: Family::default(),
            bytes_received: Family::default(),
            send_errors: Family::default(),
            dropped: Family::default(),
            // 50 µs to about 3 s.
            requests: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 3.0, 11))
            }),
        };
        let r = registry.sub_registry_with_prefix("nodosum_app");
        r.register(
            "messages_sent",
            "Messages sent, per application",
            m.messages_sent.clone(),
        );
        r.register(
            "bytes_sent",
            "Payload bytes sent, per application",
            m.bytes_sent.clone(),
        );
        r.register(
            "messages_received",
            "Messages received, per application",
            m.messages_received.clone(),
        );
        r.register(
            "bytes_received",
            "Payload bytes received, per application",
            m.bytes_received.clone(),
        );
        r.register(
            "send_errors",
            "Sends that failed, by reason",
            m.send_errors.clone(),
        );
        r.register(
            "dropped_frames",
            "Malformed application frames dropped, by reason",
            m.dropped.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Request round trips, by outcome",
            m.requests.clone(),
        );
        m
    }

    pub(crate) fn sent(&self, app: &AppId, bytes: usize) {
        let l = label(app);
        self.messages_sent.get_or_create(&l).inc();
        self.bytes_sent.get_or_create(&l).inc_by(bytes as u64);
    }

    pub(crate) fn received(&self, app: &AppId, bytes: usize) {
        let l = label(app);
        self.messages_received.get_or_create(&l).inc();
        self.bytes_received.get_or_create(&l).inc_by(bytes as u64);
    }

    pub(crate) fn send_error(&self, app: &AppId, reason: &str) {
        self.send_errors
            .get_or_create(&AppReason {
                app: app.to_string(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(crate) fn dropped(&self, app: &AppId, reason: &str) {
        self.dropped
            .get_or_create(&AppReason {
                app: app.to_string(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub(crate) fn request(&self, app: &AppId, took: Duration, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.requests
            .get_or_create(&AppOutcome {
                app: app.to_string(),
                outcome,
            })
            .observe(took.as_secs_f64());
    }
}

fn label(app: &AppId) -> AppLabel {
    AppLabel {
        app: app.to_string(),
    }
}
