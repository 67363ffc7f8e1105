//! Drives one transport's hot path for a while, for profiling (`perf record`):
//! `cargo run --release -p benches --example hot_path -- <nodosum|quic> <push|ping> [size] [secs]`.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use benches::nodosum::NodosumLink;
use benches::pki::{Pki, Resume};
use benches::quic::{QuicLink, QuicServer};
use benches::stats::process_cpu;
use benches::{ServerMode, quic};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let transport = args.first().map_or("nodosum", String::as_str).to_owned();
    let mode = args.get(1).map_or("push", String::as_str).to_owned();
    let size: usize = args.get(2).map_or(Ok(1024), |s| s.parse())?;
    let secs: u64 = args.get(3).map_or(Ok(5), |s| s.parse())?;
    let rt = benches::runtime()?;
    let pki = Pki::generate()?;
    let task = rt.spawn(async move {
        let payload = vec![3u8; size];
        let count = (1024 * 1024 / size.max(1)).max(1) as u64;
        let window = Duration::from_secs(secs);
        let mut n = 0u64;
        let start = Instant::now();
        if transport == "quic" {
            let server = QuicServer::start(&pki, ServerMode::EchoData)?;
            let endpoint = quic::client_endpoint()?;
            let mut link = QuicLink::connect(
                &endpoint,
                quic::client_config(&pki, Resume::Never)?,
                server.addr()?,
            )
            .await?;
            while start.elapsed() < window {
                if mode == "ping" {
                    link.ping(&payload).await?;
                    n += 1;
                } else {
                    link.push(&payload, count).await?;
                    n += count;
                }
            }
        } else {
            let mut link = NodosumLink::start(&pki).await?;
            while start.elapsed() < window {
                if mode == "ping" {
                    link.ping(&payload).await?;
                    n += 1;
                } else {
                    link.push(&payload, count).await?;
                    n += count;
                }
            }
        }
        anyhow::Ok(n as f64 / start.elapsed().as_secs_f64())
    });
    let cpu0 = process_cpu().unwrap_or_default();
    let start = Instant::now();
    let rate = rt.block_on(task)??;
    let cpu = process_cpu()
        .unwrap_or_default()
        .saturating_sub(cpu0)
        .as_secs_f64();
    let msgs = rate * start.elapsed().as_secs_f64();
    println!(
        "{rate:.0} msgs/s, {:.2} µs CPU per message ({:.0} % of one core)",
        cpu * 1e6 / msgs,
        cpu * 100.0 / start.elapsed().as_secs_f64()
    );
    Ok(())
}
