//! Two (or more) nodes on one machine find each other and chat.
//!
//! ```sh
//! # terminal 1
//! cargo run -p nodosum --example chat -- alice 127.0.0.1:7001
//! # terminal 2
//! cargo run -p nodosum --example chat -- bob 127.0.0.1:7002 127.0.0.1:7001
//! ```
//!
//! Arguments: a node ID, this node's gossip address, then seeds (other nodes' gossip
//! addresses). Type a line to send it to every other node; Ctrl-D leaves the cluster.
//! Certificates come from the per-user development CA, created on first use.

// An interactive example talks to its terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::time::Duration;

use nodosum::{Config, Incoming, MembershipEvent, Node, NodeEvent, NodeId, Targets};
use tokio::io::{AsyncBufReadExt as _, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let mut args = std::env::args().skip(1);
    let usage = "usage: chat NODE_ID GOSSIP_ADDR [SEED_ADDR...]";
    let id = NodeId::new(args.next().ok_or(usage)?)?;
    let gossip: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let seeds = args
        .map(|s| s.parse())
        .collect::<Result<Vec<SocketAddr>, _>>()?;

    let mut config = Config::development(id);
    config.gossip.bind = gossip;
    let node = Node::start(config).await?;
    println!(
        "{} listening on gossip {} / quic {}",
        node.id(),
        node.gossip_addr(),
        node.quic_addr()
    );
    node.join(seeds);

    let mut events = node.events();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                NodeEvent::Membership(MembershipEvent::Joined(m)) => println!("* {} joined", m.id),
                NodeEvent::Membership(MembershipEvent::Left(m)) => println!("* {} left", m.id),
                NodeEvent::Membership(MembershipEvent::Failed(m)) => println!("* {} failed", m.id),
                _ => {}
            }
        }
    });

    let mut chat = node.application("chat")?;
    let sender = chat.sender();
    tokio::spawn(async move {
        while let Some(incoming) = chat.receive().await {
            if let Incoming::Message { from, payload } = incoming {
                println!("<{from}> {}", String::from_utf8_lossy(&payload));
            }
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.is_empty() {
            continue;
        }
        match sender.send(line, Targets::All).await {
            Ok(()) => {}
            Err(e) => eprintln!("! {e}"),
        }
    }
    node.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
