//! Measures the store's memory per entry: resident set growth divided by entries.
//!
//! `cargo run --release -p mycel --example memory [entries] [ttl]` inserts `entries`
//! (default 1 000 000) keys like `key:123456` with 100-byte values, with a TTL if the
//! second argument is `ttl`, and prints bytes per entry. One measurement per process, since
//! freed memory stays resident and would flatter a second run. Redis 7 uses about 200 bytes per entry for the same
//! data (`used_memory` growth, jemalloc). Linux only (reads `/proc/self/statm`).

#![allow(
    clippy::print_stdout,
    reason = "an example that reports to the terminal"
)]

use std::time::Duration;

use bytes::Bytes;
use mycel::store::{BucketOptions, Expiry, SetOptions};
use mycel::{Store, StoreConfig, Timestamp};

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm has a resident field");
    pages * 4096
}

fn measure(entries: usize, ttl: bool) -> f64 {
    let config = StoreConfig {
        max_bytes: 1 << 40,
        estimated_items: entries,
        ..StoreConfig::default()
    };
    let before = rss_bytes();
    let mut store = Store::new(config);
    let bucket = store
        .create_bucket("main", BucketOptions::default())
        .expect("new bucket");
    let now = Timestamp::from_millis(1_700_000_000_000);
    let options = SetOptions {
        expiry: if ttl {
            Expiry::After(Duration::from_secs(3600))
        } else {
            Expiry::Never
        },
        ..SetOptions::default()
    };
    let value = [b'v'; 100];
    for i in 0..entries {
        let key = Bytes::copy_from_slice(format!("key:{i}").as_bytes());
        store
            .set(bucket, key, Bytes::copy_from_slice(&value), options, now, 1)
            .expect("fits the budget");
    }
    let after = rss_bytes();
    assert_eq!(store.len(), entries);
    let per_entry = (after - before) as f64 / entries as f64;
    drop(store);
    per_entry
}

fn main() {
    let mut args = std::env::args().skip(1);
    let entries: usize = args
        .next()
        .map_or(1_000_000, |s| s.parse().expect("entries is a number"));
    let ttl = args.next().as_deref() == Some("ttl");
    let per_entry = measure(entries, ttl);
    println!(
        "{entries} entries, key `key:N` (~10 bytes), value 100 bytes, TTL {}: {per_entry:.0} bytes per entry",
        if ttl { "yes" } else { "no" }
    );
}
