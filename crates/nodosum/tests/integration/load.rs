//! Load scenarios: delivery and state under volume, never speed.

use std::collections::HashMap;

use bytes::Bytes;
use nodosum::{Incoming, NodeId, Targets};

use crate::util::{cluster, eventually, within};

async fn drain(app: &mut nodosum::Application, count: usize) -> Vec<(NodeId, Bytes)> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        match within("messages", app.receive()).await {
            Some(Incoming::Message { from, payload }) => out.push((from, payload)),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_1kib_messages_arrive_in_order() {
    let (_ca, nodes) = cluster(2).await;
    let mut rx = nodes[0].application("bulk").expect("register");
    let tx = nodes[1].application("bulk").expect("register");
    let to = nodes[0].id().clone();
    let sender = tokio::spawn({
        let tx = tx.sender();
        async move {
            for i in 0..10_000u32 {
                let mut payload = vec![0u8; 1024];
                payload[..4].copy_from_slice(&i.to_le_bytes());
                tx.send(payload, &to).await.expect("send");
            }
        }
    });
    let got = drain(&mut rx, 10_000).await;
    sender.await.expect("sender");
    for (i, (_, p)) in got.iter().enumerate() {
        assert_eq!(p.len(), 1024);
        assert_eq!(p[..4], u32::try_from(i).expect("small").to_le_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_apps_times_a_thousand_messages() {
    let (_ca, nodes) = cluster(2).await;
    let to = nodes[0].id().clone();
    let mut receivers: Vec<_> = (0..10)
        .map(|i| nodes[0].application(&format!("app-{i}")).expect("register"))
        .collect();
    let senders: Vec<_> = (0..10)
        .map(|i| nodes[1].application(&format!("app-{i}")).expect("register"))
        .collect();
    let tasks: Vec<_> = senders
        .iter()
        .map(|s| {
            let s = s.sender();
            let to = to.clone();
            tokio::spawn(async move {
                for i in 0..1000u32 {
                    s.send(Bytes::copy_from_slice(&i.to_le_bytes()), &to)
                        .await
                        .expect("send");
                }
            })
        })
        .collect();
    for rx in &mut receivers {
        let got = drain(rx, 1000).await;
        let seq: Vec<u32> = got
            .iter()
            .map(|(_, p)| u32::from_le_bytes(p[..].try_into().expect("4")))
            .collect();
        assert_eq!(seq, (0..1000).collect::<Vec<_>>(), "app {}", rx.name());
    }
    for t in tasks {
        t.await.expect("sender");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_nodes_all_broadcast() {
    let (_ca, nodes) = cluster(20).await;
    let mut apps: Vec<_> = nodes
        .iter()
        .map(|n| n.application("all").expect("register"))
        .collect();
    for app in &apps {
        app.send(app.name().to_string(), Targets::All)
            .await
            .expect("broadcast");
    }
    for (i, app) in apps.iter_mut().enumerate() {
        let got = drain(app, 19).await;
        let mut from: HashMap<NodeId, usize> = HashMap::new();
        for (f, _) in got {
            *from.entry(f).or_default() += 1;
        }
        assert_eq!(from.len(), 19, "node {i} heard from {from:?}");
        assert!(!from.contains_key(nodes[i].id()), "no message to itself");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_opened_and_closed_repeatedly_leave_nothing_behind() {
    let (_ca, nodes) = cluster(2).await;
    let baseline = [nodes[0].transport_counts(), nodes[1].transport_counts()];
    for round in 0..3 {
        let mut rx: Vec<_> = (0..100)
            .map(|i| {
                nodes[0]
                    .application(&format!("churn-{i}"))
                    .expect("register")
            })
            .collect();
        let tx: Vec<_> = (0..100)
            .map(|i| {
                nodes[1]
                    .application(&format!("churn-{i}"))
                    .expect("register")
            })
            .collect();
        for app in &tx {
            app.send(format!("round {round}"), nodes[0].id())
                .await
                .expect("send");
        }
        for app in &mut rx {
            drain(app, 1).await;
        }
        drop(rx);
        drop(tx);
        eventually("stream and lane counts back at the baseline", || {
            let now = [nodes[0].transport_counts(), nodes[1].transport_counts()];
            now.iter()
                .zip(&baseline)
                .all(|(n, b)| n.streams == b.streams && n.lanes == b.lanes)
        })
        .await;
    }
}
