//! Prometheus metrics of the cluster layer, registered in the node's registry under
//! `mycel_`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The cluster layer's metrics; cheap to clone (shared cells).
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    pub(crate) epoch: Gauge,
    pub(crate) primaries: Gauge,
    pub(crate) replicas: Gauge,
    pub(crate) synced: Gauge,
    pub(crate) awaiting_release: Gauge,
    pub(crate) partitions_fetched: Counter,
    pub(crate) fetch_bytes: Counter,
    pub(crate) served_bytes: Counter,
    pub(crate) forwarded: Counter,
    pub(crate) not_owner: Counter,
    pub(crate) replicate_failures: Counter,
    pub(crate) replication_batches: Counter,
    pub(crate) carried_writes: Counter,
    pub(crate) forward_batches: Counter,
    pub(crate) bad_messages: Counter,
    pub(crate) loads: Counter,
}

impl Metrics {
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("mycel");
        r.register(
            "table_epoch",
            "Epoch of the installed routing table",
            m.epoch.clone(),
        );
        r.register(
            "partitions_primary",
            "Partitions this node is the primary of",
            m.primaries.clone(),
        );
        r.register(
            "partitions_owned",
            "Partitions this node replicates (primary or backup)",
            m.replicas.clone(),
        );
        r.register(
            "partitions_synced",
            "Replicated partitions that are fully transferred and served",
            m.synced.clone(),
        );
        r.register(
            "partitions_awaiting_release",
            "Partitions handed off but not yet released by their new replicas",
            m.awaiting_release.clone(),
        );
        r.register(
            "partitions_fetched",
            "Partition transfers completed into this node",
            m.partitions_fetched.clone(),
        );
        r.register(
            "fetch_bytes",
            "Bytes of partition data fetched from other nodes",
            m.fetch_bytes.clone(),
        );
        r.register(
            "served_bytes",
            "Bytes of partition data served to other nodes",
            m.served_bytes.clone(),
        );
        r.register(
            "forwarded_ops",
            "Operations forwarded to another node's primary",
            m.forwarded.clone(),
        );
        r.register(
            "not_owner",
            "Not-owner answers given to other nodes",
            m.not_owner.clone(),
        );
        r.register(
            "replicate_failures",
            "Writes whose replication to a backup failed",
            m.replicate_failures.clone(),
        );
        r.register(
            "replicate_messages",
            "Replicate messages sent to backups (concurrent writes share one)",
            m.replication_batches.clone(),
        );
        r.register(
            "carried_writes",
            "Writes handed to the forwarding node, their backup, in the reply rather than a Replicate message",
            m.carried_writes.clone(),
        );
        r.register(
            "forward_batch_messages",
            "Messages of several forwarded operations (Batch or Carry) sent to primaries",
            m.forward_batches.clone(),
        );
        r.register(
            "bad_messages",
            "Messages dropped because they did not decode",
            m.bad_messages.clone(),
        );
        r.register(
            "loads",
            "Loader runs for get_or_load misses at this primary",
            m.loads.clone(),
        );
        m
    }
}
