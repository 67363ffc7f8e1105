//! Rough single-thread speed of the local store's hot operations.
//!
//! `cargo run --release -p mycel --example ops` runs SET and GET of 100-byte values over
//! 100 000 keys and prints nanoseconds per operation. A sanity figure for the RESP front's
//! budget, not a benchmark (criterion benches live in the `benches` crate).

#![allow(
    clippy::print_stdout,
    reason = "an example that reports to the terminal"
)]

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use mycel::store::BucketOptions;
use mycel::{SetOptions, Store, StoreConfig, Timestamp};

fn main() {
    const KEYS: usize = 100_000;
    const OPS: usize = 2_000_000;
    let mut store = Store::new(StoreConfig {
        estimated_items: KEYS,
        ..StoreConfig::default()
    });
    let bucket = store
        .create_bucket("main", BucketOptions::default())
        .expect("new bucket");
    let now = Timestamp::from_millis(1_700_000_000_000);
    let keys: Vec<Bytes> = (0..KEYS)
        .map(|i| Bytes::from(format!("key:{i:06}")))
        .collect();
    let value = Bytes::from(vec![b'v'; 100]);

    let start = Instant::now();
    for i in 0..OPS {
        let key = keys[i % KEYS].clone();
        let out = store
            .set(bucket, key, value.clone(), SetOptions::default(), now, 1)
            .expect("fits");
        black_box(out);
    }
    let set_ns = start.elapsed().as_nanos() as f64 / OPS as f64;

    let start = Instant::now();
    for i in 0..OPS {
        black_box(store.get(bucket, &keys[(i * 7) % KEYS], now));
    }
    let get_ns = start.elapsed().as_nanos() as f64 / OPS as f64;
    println!("{KEYS} keys, 100-byte values: SET {set_ns:.0} ns/op, GET {get_ns:.0} ns/op");
}
