//! The periodic loop and combined backends: a scripted backend on tokio's paused clock,
//! and real static and Consul backends combined.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodosum_discovery::{
    BoxFuture, Candidate, ConsulConfig, ConsulDiscovery, Discovered, Discoverer, DiscovererConfig,
    Discovery, Error, Multi, StaticConfig, StaticDiscovery, TxtProblem,
};
use nodosum_proto::NodeId;
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::dnsmasq::Dnsmasq;

/// A backend that plays a script of answers and records when it was asked.
#[derive(Debug, Default)]
struct Scripted {
    script: Mutex<VecDeque<Result<Discovered, Error>>>,
    calls: Mutex<Vec<Instant>>,
}

impl Scripted {
    fn new(script: Vec<Result<Discovered, Error>>) -> Arc<Self> {
        Arc::new(Self {
            script: Mutex::new(script.into()),
            calls: Mutex::default(),
        })
    }

    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().expect("lock").clone()
    }
}

impl Discovery for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    fn discover(&self) -> BoxFuture<'_, Result<Discovered, Error>> {
        self.calls.lock().expect("lock").push(Instant::now());
        let next = self
            .script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or_else(|| Ok(Discovered::default()));
        Box::pin(async move { next })
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal")
}

fn cand(a: &str, id: Option<&str>) -> Candidate {
    Candidate {
        gossip_addr: addr(a),
        node_id: id.map(|i| NodeId::new(i).expect("valid")),
        quic_port: None,
    }
}

fn ok(candidates: Vec<Candidate>, skipped: Vec<Error>) -> Result<Discovered, Error> {
    Ok(Discovered {
        candidates,
        skipped,
    })
}

fn server_error() -> Error {
    Error::ConsulStatus {
        url: "http://127.0.0.1:8500/v1/health/service/nodosum".into(),
        status: 500,
        body: "No cluster leader".into(),
    }
}

fn metrics(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("encode");
    text
}

fn metric_line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

/// A round in which part failed (here a backend of a combination: the round itself
/// succeeds) keeps the seeds already published, with what it found added; the next
/// complete round replaces them.
#[tokio::test(start_paused = true)]
async fn a_partly_failed_round_keeps_the_published_seeds() {
    let backend = Scripted::new(vec![
        ok(vec![cand("127.0.0.3:6969", Some("node-3"))], Vec::new()),
        ok(Vec::new(), vec![server_error()]),
        ok(
            vec![cand("127.0.0.4:6969", Some("node-4"))],
            vec![server_error()],
        ),
        ok(vec![cand("127.0.0.5:6969", Some("node-5"))], Vec::new()),
    ]);
    let mut registry = Registry::default();
    let mut discoverer = Discoverer::new(backend, &DiscovererConfig::default(), &mut registry);
    let seeds = discoverer.subscribe();
    let mut published = Vec::new();
    for _ in 0..4 {
        assert!(discoverer.round().await.outcome.is_ok());
        published.push(seeds.borrow().to_vec());
    }
    let (n3, n4, n5) = (
        cand("127.0.0.3:6969", Some("node-3")),
        cand("127.0.0.4:6969", Some("node-4")),
        cand("127.0.0.5:6969", Some("node-5")),
    );
    assert_eq!(
        published,
        [vec![n3.clone()], vec![n3.clone()], vec![n4, n3], vec![n5],]
    );
}

#[tokio::test(start_paused = true)]
async fn publishes_new_candidates_and_keeps_them_when_a_round_fails() {
    let self_id = NodeId::new("node-self").expect("valid");
    let backend = Scripted::new(vec![
        ok(
            vec![
                cand("127.0.0.1:6969", None),              // self, by address
                cand("127.0.0.9:6969", Some("node-self")), // self, by ID
                cand("127.0.0.2:6969", Some("node-2")),    // already a member
                cand("127.0.0.3:6969", Some("node-3")),    // new
            ],
            vec![Error::MalformedTxt {
                instance: "x._nodosum._udp.test.".into(),
                entry: "quic=x".into(),
                problem: TxtProblem::InvalidPort { value: "x".into() },
            }],
        ),
        Err(server_error()),
        ok(vec![cand("127.0.0.4:6969", Some("node-4"))], Vec::new()),
    ]);
    let known: Arc<Mutex<HashSet<SocketAddr>>> =
        Arc::new(Mutex::new([addr("127.0.0.2:6969")].into()));
    let mut registry = Registry::default();
    let config = DiscovererConfig {
        jitter: 0.0,
        ..DiscovererConfig::default()
    };
    let mut discoverer = Discoverer::new(backend.clone(), &config, &mut registry)
        .exclude_self(Some(self_id), [addr("127.0.0.1:6969")])
        .exclude_known({
            let known = Arc::clone(&known);
            move |c| known.lock().expect("lock").contains(&c.gossip_addr)
        });
    let mut seeds = discoverer.subscribe();

    let report = discoverer.round().await;
    assert!(report.outcome.is_ok());
    assert_eq!((report.found, report.new, report.skipped), (4, 1, 1));
    assert_eq!(report.next_in, Duration::from_secs(30));
    assert!(seeds.has_changed().expect("open"));
    assert_eq!(
        &*seeds.borrow_and_update().clone(),
        &[cand("127.0.0.3:6969", Some("node-3"))]
    );
    let text = metrics(&registry);
    let last_success = metric_line(
        &text,
        "discovery_last_success_timestamp_seconds{backend=\"scripted\"}",
    )
    .expect("last success")
    .to_owned();
    assert!(!last_success.ends_with(" 0.0"), "{last_success}");
    assert!(
        text.contains("discovery_skipped_total{backend=\"scripted\",kind=\"malformed_txt\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("discovery_candidates{backend=\"scripted\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("discovery_new_candidates{backend=\"scripted\"} 1"),
        "{text}"
    );

    // The backend fails: nothing is published, the old seeds stay, the error is counted.
    let report = discoverer.round().await;
    assert!(matches!(
        report.outcome,
        Err(Error::ConsulStatus { status: 500, .. })
    ));
    assert_eq!(report.next_in, Duration::from_secs(1));
    assert!(!seeds.has_changed().expect("open"));
    assert_eq!(seeds.borrow().len(), 1);
    let text = metrics(&registry);
    assert!(
        text.contains("discovery_errors_total{backend=\"scripted\",kind=\"consul_status\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("discovery_rounds_total{backend=\"scripted\",outcome=\"error\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("discovery_consecutive_failures{backend=\"scripted\"} 1"),
        "{text}"
    );
    assert_eq!(
        metric_line(
            &text,
            "discovery_last_success_timestamp_seconds{backend=\"scripted\"}"
        ),
        Some(last_success.as_str())
    );

    // Node 3 joined in the meantime; the next round brings node 4 only.
    known.lock().expect("lock").insert(addr("127.0.0.3:6969"));
    let report = discoverer.round().await;
    assert!(report.outcome.is_ok());
    assert_eq!(
        &*seeds.borrow_and_update().clone(),
        &[cand("127.0.0.4:6969", Some("node-4"))]
    );
    let text = metrics(&registry);
    assert!(
        text.contains("discovery_rounds_total{backend=\"scripted\",outcome=\"ok\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("discovery_consecutive_failures{backend=\"scripted\"} 0"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn loop_runs_every_interval_backs_off_on_errors_and_can_be_triggered() {
    let backend = Scripted::new(vec![
        Err(server_error()),
        Err(server_error()),
        Err(server_error()),
        Err(server_error()),
        ok(vec![cand("127.0.0.3:6969", None)], Vec::new()),
        Err(server_error()),
    ]);
    let config = DiscovererConfig {
        interval: Duration::from_secs(30),
        jitter: 0.0,
        retry_initial: Duration::from_secs(1),
        retry_max: Duration::from_secs(4),
    };
    let mut registry = Registry::default();
    let handle = Discoverer::new(backend.clone(), &config, &mut registry).spawn();
    let mut seeds = handle.subscribe();

    let wait_for_calls = |n: usize| {
        let backend = Arc::clone(&backend);
        async move {
            tokio::time::timeout(Duration::from_secs(3600), async {
                while backend.calls().len() < n {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
            .expect("loop keeps running");
        }
    };
    wait_for_calls(8).await;
    let calls = backend.calls();
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).take(7).collect();
    let s = Duration::from_secs;
    // Four failures back off 1, 2, 4, 4 (capped) s; success waits the interval; a failure
    // after a success starts the backoff again; then the interval once more.
    assert_eq!(gaps, vec![s(1), s(2), s(4), s(4), s(30), s(1), s(30)]);
    // The last successful rounds found nothing, and published exactly that.
    assert!(seeds.borrow_and_update().is_empty());

    // trigger() starts a round without waiting for the interval.
    let before = backend.calls().len();
    let at = Instant::now();
    handle.trigger();
    wait_for_calls(before + 1).await;
    assert!(backend.calls()[before] - at < s(30));

    tokio::time::timeout(s(60), handle.shutdown())
        .await
        .expect("shutdown finishes");
    let after = backend.calls().len();
    tokio::time::sleep(s(600)).await;
    assert_eq!(
        backend.calls().len(),
        after,
        "loop still running after shutdown"
    );
}

#[tokio::test(start_paused = true)]
async fn published_seeds_survive_a_failure_in_the_spawned_loop() {
    let backend = Scripted::new(vec![
        ok(vec![cand("127.0.0.3:6969", Some("node-3"))], Vec::new()),
        Err(server_error()),
        Err(server_error()),
    ]);
    let config = DiscovererConfig {
        jitter: 0.0,
        ..DiscovererConfig::default()
    };
    let mut registry = Registry::default();
    let handle = Discoverer::new(backend.clone(), &config, &mut registry).spawn();
    let mut seeds = handle.subscribe();
    seeds.changed().await.expect("first round publishes");
    assert_eq!(seeds.borrow_and_update().len(), 1);
    tokio::time::timeout(Duration::from_secs(3600), async {
        while backend.calls().len() < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("loop keeps running");
    assert!(!seeds.has_changed().expect("open"));
    assert_eq!(seeds.borrow().len(), 1);
    let text = metrics(&registry);
    assert!(
        text.contains("discovery_errors_total{backend=\"scripted\",kind=\"consul_status\"} 2"),
        "{text}"
    );
    handle.shutdown().await;
}

fn closed_port_consul() -> Arc<ConsulDiscovery> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = listener.local_addr().expect("addr");
    drop(listener);
    Arc::new(
        ConsulDiscovery::new(&ConsulConfig {
            address: format!("http://{closed}"),
            blocking: false,
            ..ConsulConfig::default()
        })
        .expect("config"),
    )
}

fn static_backend(seeds: &[&str], nameserver: Option<SocketAddr>) -> Arc<StaticDiscovery> {
    Arc::new(
        StaticDiscovery::new(&StaticConfig {
            seeds: seeds.iter().map(|s| (*s).to_owned()).collect(),
            nameserver,
            ..StaticConfig::default()
        })
        .expect("valid"),
    )
}

#[tokio::test]
async fn multi_merges_backends_and_a_failing_one_does_not_hide_the_others() {
    let multi = Multi::new(vec![
        static_backend(&["127.0.0.5:6969", "127.0.0.6:6969"], None),
        closed_port_consul(),
        static_backend(&["node-6@127.0.0.6:6969"], None),
    ]);
    assert_eq!(multi.len(), 3);
    let mut registry = Registry::default();
    let mut discoverer =
        Discoverer::new(Arc::new(multi), &DiscovererConfig::default(), &mut registry);
    let seeds = discoverer.subscribe();
    let report = tokio::time::timeout(crate::GUARD, discoverer.round())
        .await
        .expect("round finishes");
    assert!(report.outcome.is_ok(), "{:?}", report.outcome);
    let mut got: Vec<Candidate> = seeds.borrow().to_vec();
    got.sort_by_key(|c| c.gossip_addr);
    // De-duplicated by address, the ID merged in from the third backend.
    assert_eq!(
        got,
        vec![
            cand("127.0.0.5:6969", None),
            cand("127.0.0.6:6969", Some("node-6"))
        ]
    );
    let text = metrics(&registry);
    assert!(
        text.contains("discovery_errors_total{backend=\"consul\",kind=\"consul_request\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("discovery_rounds_total{backend=\"multi\",outcome=\"ok\"} 1"),
        "{text}"
    );

    // Every backend failing fails the round, and each failure is counted by backend.
    let dns = Dnsmasq::start(&["--host-record=other.hosts.test,127.0.0.2"]);
    let multi = Multi::new(vec![
        static_backend(&["missing.hosts.test:1"], Some(dns.addr)),
        closed_port_consul(),
    ]);
    let mut registry = Registry::default();
    let mut discoverer =
        Discoverer::new(Arc::new(multi), &DiscovererConfig::default(), &mut registry);
    let report = tokio::time::timeout(crate::GUARD, discoverer.round())
        .await
        .expect("round finishes");
    match report.outcome {
        Err(Error::AllBackendsFailed { errors }) => {
            let names: Vec<String> = errors
                .iter()
                .map(|e| match e {
                    Error::Backend { backend, .. } => backend.clone(),
                    other => panic!("expected Backend, got {other:?}"),
                })
                .collect();
            assert_eq!(names, vec!["static", "consul"]);
        }
        other => panic!("expected AllBackendsFailed, got {other:?}"),
    }
    let text = metrics(&registry);
    assert!(
        text.contains("discovery_errors_total{backend=\"consul\",kind=\"consul_request\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("discovery_errors_total{backend=\"static\",kind=\"no_seed_resolved\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("discovery_rounds_total{backend=\"multi\",outcome=\"error\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn spawned_loop_over_real_dns_publishes_a_node_that_appears_later() {
    let record = |name: &str, ip: &str, port: u16, id: &str| {
        let service = "_nodosum._udp.test";
        let fqdn = format!("{name}.{service}");
        let host = format!("{name}.hosts.test");
        vec![
            format!("--ptr-record={service},{fqdn}"),
            format!("--srv-host={fqdn},{host},{port}"),
            format!("--host-record={host},{ip}"),
            format!("--txt-record={fqdn},id={id}"),
        ]
    };
    let mut dns = Dnsmasq::start(&record("a", "127.0.0.2", 7001, "node-a"));
    let backend = Arc::new(
        nodosum_discovery::DnsDiscovery::new(&nodosum_discovery::DnsConfig {
            name: "_nodosum._udp.test.".into(),
            nameserver: Some(dns.addr),
            timeout: Duration::from_secs(1),
            attempts: 1,
            ..nodosum_discovery::DnsConfig::default()
        })
        .expect("config"),
    );
    // Real time here (real sockets); the short interval only keeps the test quick.
    let config = DiscovererConfig {
        interval: Duration::from_millis(50),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        ..DiscovererConfig::default()
    };
    let members: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let mut registry = Registry::default();
    let handle = Discoverer::new(backend, &config, &mut registry)
        .exclude_known({
            let members = Arc::clone(&members);
            move |c| members.lock().expect("lock").contains(&c.gossip_addr)
        })
        .spawn();
    let seeds = handle.subscribe();

    let next_with = |want: SocketAddr| {
        let mut seeds = seeds.clone();
        async move {
            tokio::time::timeout(crate::GUARD, async {
                loop {
                    seeds.changed().await.expect("loop alive");
                    let now = seeds.borrow_and_update().clone();
                    if now.iter().any(|c| c.gossip_addr == want) {
                        return now;
                    }
                }
            })
            .await
            .expect("candidate published")
        }
    };
    let first = next_with(addr("127.0.0.2:7001")).await;
    assert_eq!(
        first[0].node_id.as_ref().map(NodeId::as_str),
        Some("node-a")
    );
    // The facade joins through node-a: it becomes a member and is no longer published.
    members.lock().expect("lock").insert(addr("127.0.0.2:7001"));

    // Node b appears in DNS (dnsmasq restarts: rounds during the gap fail and are retried).
    dns.restart(
        &[
            record("a", "127.0.0.2", 7001, "node-a"),
            record("b", "127.0.0.3", 7002, "node-b"),
        ]
        .concat(),
    );
    let now = next_with(addr("127.0.0.3:7002")).await;
    assert_eq!(&*now, &[cand("127.0.0.3:7002", Some("node-b"))]);
    handle.shutdown().await;
}
