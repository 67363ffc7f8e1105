//! Mycel's configuration: placement, consistency and the local store.

use std::fmt;
use std::time::Duration;

use crate::placement::DEFAULT_REPLICATION_FACTOR;
use crate::routing::DEFAULT_STABILIZATION_WINDOW;
use crate::store::{ENTRY_OVERHEAD, StoreConfig};

/// Mycel's configuration. Every node of a cluster must use the same partitioning and
/// replication factor; the rest may differ per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Copies of each partition, the primary included. Default 2 (a primary and one
    /// backup): one node can fail without losing an acknowledged write. 3 survives two
    /// failures at 1.5x the memory.
    pub replication_factor: u8,
    /// How long membership must be unchanged before the authority publishes a new routing
    /// table and partitions move. Default 2 s; raise it on flaky networks to avoid moving
    /// data for nodes that come straight back.
    pub stabilization_window: Duration,
    /// Whether a node outside a majority of the last stable view refuses writes. Default
    /// true, so a partitioned minority never acknowledges writes the majority will
    /// overwrite when the partition heals. False trades that safety for availability.
    pub refuse_minority_writes: bool,
    /// The local store, including the cluster's partitioning.
    pub store: StoreConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            replication_factor: DEFAULT_REPLICATION_FACTOR,
            stabilization_window: DEFAULT_STABILIZATION_WINDOW,
            refuse_minority_writes: true,
            store: StoreConfig::default(),
        }
    }
}

/// One problem found by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field's path, e.g. `store.max_value_len`.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl Config {
    /// Checks the rules that span fields; returns every problem, not just the first.
    pub fn validate(&self) -> Result<(), Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let mut bad = |field, problem: String| problems.push(ConfigProblem { field, problem });
        if self.replication_factor == 0 {
            bad("replication_factor", "must be at least 1".into());
        }
        let s = &self.store;
        let min_budget = ENTRY_OVERHEAD * 1024;
        if s.max_bytes < min_budget {
            bad(
                "store.max_bytes",
                format!("{} is below the minimum of {min_budget} bytes", s.max_bytes),
            );
        }
        if s.max_key_len == 0 {
            bad("store.max_key_len", "must be at least 1".into());
        }
        let value_max = u64::try_from(s.max_value_len).unwrap_or(u64::MAX);
        if value_max > s.max_bytes / 2 {
            bad(
                "store.max_value_len",
                format!(
                    "{} must be at most half of store.max_bytes ({}), or one value could evict everything",
                    s.max_value_len, s.max_bytes
                ),
            );
        }
        if s.tombstone_ttl < self.stabilization_window {
            bad(
                "store.tombstone_ttl",
                format!(
                    "{:?} must be at least stabilization_window ({:?}): deletes must outlive a partition move",
                    s.tombstone_ttl, self.stabilization_window
                ),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn every_problem_is_reported_with_its_field() {
        let config = Config {
            replication_factor: 0,
            stabilization_window: Duration::from_secs(120),
            store: StoreConfig {
                max_bytes: 1000,
                max_key_len: 0,
                max_value_len: 600,
                ..StoreConfig::default()
            },
            ..Config::default()
        };
        let problems = config.validate().expect_err("invalid");
        let fields: Vec<&str> = problems.iter().map(|p| p.field).collect();
        assert_eq!(
            fields,
            [
                "replication_factor",
                "store.max_bytes",
                "store.max_key_len",
                "store.max_value_len",
                "store.tombstone_ttl"
            ]
        );
        assert!(problems[0].to_string().starts_with("replication_factor: "));
    }
}
