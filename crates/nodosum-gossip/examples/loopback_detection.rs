//! Measures real-socket figures on 127.0.0.1 with the default LAN timings: how long a
//! cluster takes to form, until every member sees a crashed member failed, and until
//! every member sees a graceful leave.
//!
//! `cargo run --release -p nodosum-gossip --example loopback_detection -- [nodes] [rounds]`

#![allow(
    clippy::print_stdout,
    reason = "a measurement tool that reports on stdout"
)]
#![allow(
    clippy::unwrap_used,
    reason = "a measurement tool: failing loudly is fine"
)]

use std::time::{Duration, Instant};

use nodosum_gossip::{Config, Gossip, MemberState};
use nodosum_proto::{Key, Keyring, NodeId};
use prometheus_client::registry::Registry;

fn start(i: usize, round: usize) -> Gossip {
    let mut c = Config::lan(NodeId::new(format!("r{round}-n{i}")).unwrap());
    c.bind_addr = "127.0.0.1:0".parse().unwrap();
    c.cluster_name = format!("measure-{round}");
    Gossip::start(
        c,
        Keyring::new(Key::from_bytes([3; 32])),
        &mut Registry::default(),
    )
    .unwrap()
}

async fn wait(mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(120), "gave up waiting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t.elapsed()
}

fn sees(g: &Gossip, name: &str, state: MemberState) -> bool {
    g.members()
        .iter()
        .any(|(m, s)| m.id.as_str() == name && *s == state)
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "an index into a short vector"
    )]
    let i = ((v.len() - 1) as f64 * p).round() as usize;
    v[i]
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let (mut form, mut crash, mut leave) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut nodes: Vec<Gossip> = (0..n).map(|i| start(i, round)).collect();
        let seed = nodes[0].local_addr();
        let t = Instant::now();
        for g in &nodes[1..] {
            g.join(vec![seed]);
        }
        wait(|| nodes.iter().all(|g| g.num_members() == n)).await;
        form.push(t.elapsed());

        let victim = format!("r{round}-n{}", n - 1);
        drop(nodes.pop());
        crash.push(wait(|| nodes.iter().all(|g| sees(g, &victim, MemberState::Failed))).await);

        let leaver = nodes.pop().unwrap();
        let name = leaver.local_member().id.to_string();
        let t = Instant::now();
        leaver.leave().await.unwrap();
        wait(|| nodes.iter().all(|g| sees(g, &name, MemberState::Left))).await;
        leave.push(t.elapsed());
        println!(
            "round {round}: formed {:?}, crash seen by all {:?}, leave seen by all {:?}",
            form[round], crash[round], leave[round]
        );
    }
    println!(
        "n={n} rounds={rounds}: formation p50 {:?}; crash seen by all p50 {:?} p99 {:?}; leave seen by all p50 {:?} p99 {:?}",
        pct(&mut form, 0.5),
        pct(&mut crash, 0.5),
        pct(&mut crash, 0.99),
        pct(&mut leave, 0.5),
        pct(&mut leave, 0.99),
    );
}
