//! Embedding Mycel in a Rust service: the standalone backend, buckets with a default TTL,
//! Redis-like `SET` options and counters.
//!
//! Run with `cargo run -p mycel --example embed`.

#![allow(clippy::print_stdout, reason = "an example prints what it does")]

use std::time::Duration;

use mycel::{BucketOptions, Condition, Config, Mycel, SetOptions, Ttl};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), mycel::Error> {
    // One node holding everything; cluster mode is `Mycel::start(node, cluster_config)`
    // with the same methods.
    let cache = Mycel::standalone(Config::default()).await?;
    let sessions = cache
        .create_bucket(
            "sessions",
            BucketOptions {
                default_ttl: Some(Duration::from_secs(30 * 60)),
                ..BucketOptions::default()
            },
        )
        .await?;

    cache
        .set(
            sessions,
            "user:42".into(),
            "alice".into(),
            SetOptions::default(),
        )
        .await?;
    let only_once = SetOptions {
        condition: Condition::IfAbsent,
        ..SetOptions::default()
    };
    let second = cache
        .set(sessions, "user:42".into(), "mallory".into(), only_once)
        .await?;
    println!("second NX write applied: {}", second.written);
    println!("user:42 = {:?}", cache.get(sessions, b"user:42").await?);
    if let Ttl::Expires { remaining, .. } = cache.ttl(sessions, b"user:42").await? {
        println!(
            "expires in about {} s (the bucket's default TTL)",
            remaining.as_secs()
        );
    }

    let counters = cache.default_bucket();
    for _ in 0..3 {
        cache.incr_by(counters, "visits".into(), 1).await?;
    }
    println!(
        "visits = {}",
        cache.incr_by(counters, "visits".into(), 0).await?
    );
    println!("stats: {:?}", cache.stats().await?);
    cache.shutdown(Duration::from_secs(1)).await;
    Ok(())
}
