//! Static seeds: the system resolver for `localhost` (from /etc/hosts, no query leaves the
//! machine), a real dnsmasq for names that appear and fail.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nodosum_discovery::{Discovery, Error, SeedProblem, StaticConfig, StaticDiscovery};

use crate::dnsmasq::Dnsmasq;

fn backend(seeds: &[&str]) -> Result<StaticDiscovery, Error> {
    StaticDiscovery::new(&StaticConfig {
        seeds: seeds.iter().map(|s| (*s).to_owned()).collect(),
        ..StaticConfig::default()
    })
}

#[tokio::test]
async fn resolves_names_and_literals_every_round() {
    let d = backend(&["localhost:6969", "node-9@127.0.0.9:7000", "[::1]:7001"]).expect("valid");
    assert_eq!(d.name(), "static");
    for _round in 0..2 {
        let found = d.discover().await.expect("round");
        assert!(found.skipped.is_empty(), "{:?}", found.skipped);
        // localhost resolves to loopback (127.0.0.1 and/or ::1, as /etc/hosts says).
        let local: Vec<SocketAddr> = found
            .candidates
            .iter()
            .filter(|c| c.gossip_addr.port() == 6969)
            .map(|c| c.gossip_addr)
            .collect();
        assert!(!local.is_empty());
        assert!(local.iter().all(|a| a.ip().is_loopback()), "{local:?}");
        let nine = found
            .candidates
            .iter()
            .find(|c| c.gossip_addr == SocketAddr::from(([127, 0, 0, 9], 7000)))
            .expect("literal seed");
        assert_eq!(
            nine.node_id.clone().map(String::from),
            Some("node-9".to_owned())
        );
        assert!(
            found.candidates.iter().any(|c| c.gossip_addr
                == SocketAddr::new(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 7001))
        );
    }
}

fn via(server: &Dnsmasq, seeds: &[&str]) -> StaticDiscovery {
    StaticDiscovery::new(&StaticConfig {
        seeds: seeds.iter().map(|s| (*s).to_owned()).collect(),
        nameserver: Some(server.addr),
        // Only bounds the case where the server is down; never asserted.
        resolve_timeout: Duration::from_secs(1),
    })
    .expect("valid")
}

#[tokio::test]
async fn a_name_that_starts_resolving_later_is_picked_up() {
    // Names are asked from a real dnsmasq, so that no query leaves the machine.
    let mut server = Dnsmasq::start(&["--host-record=seed-1.hosts.test,127.0.0.2"]);
    let d = via(
        &server,
        &["seed-1.hosts.test:6969", "seed-2.hosts.test:6969"],
    );

    let found = d.discover().await.expect("round");
    let got: Vec<SocketAddr> = found.candidates.iter().map(|c| c.gossip_addr).collect();
    assert_eq!(got, vec![SocketAddr::from(([127, 0, 0, 2], 6969))]);
    assert_eq!(found.skipped.len(), 1);
    match &found.skipped[0] {
        Error::NoAddress { entry } => assert_eq!(entry, "seed-2.hosts.test:6969"),
        other => panic!("expected NoAddress naming the entry, got {other:?}"),
    }

    // seed-2 gets its DNS record (a pod that came up after us): the next round has it.
    server.restart(&[
        "--host-record=seed-1.hosts.test,127.0.0.2",
        "--host-record=seed-2.hosts.test,127.0.0.3",
    ]);
    let found = d.discover().await.expect("round");
    let mut got: Vec<SocketAddr> = found.candidates.iter().map(|c| c.gossip_addr).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            SocketAddr::from(([127, 0, 0, 2], 6969)),
            SocketAddr::from(([127, 0, 0, 3], 6969)),
        ]
    );
    assert!(found.skipped.is_empty(), "{:?}", found.skipped);
}

#[tokio::test]
async fn when_nothing_resolves_the_round_fails_naming_every_entry() {
    let mut server = Dnsmasq::start(&["--host-record=other.hosts.test,127.0.0.2"]);
    let d = via(&server, &["a.hosts.test:1", "b.hosts.test:2"]);
    match d.discover().await {
        Err(Error::NoSeedResolved { errors }) => {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            assert_eq!(errors.len(), 2);
            assert!(text[0].contains("a.hosts.test:1"), "{text:?}");
            assert!(text[1].contains("b.hosts.test:2"), "{text:?}");
        }
        other => panic!("expected NoSeedResolved, got {other:?}"),
    }

    // The DNS server itself down: a resolve error naming the entry.
    server.stop();
    match d.discover().await {
        Err(Error::NoSeedResolved { errors }) => {
            assert!(
                errors
                    .iter()
                    .all(|e| matches!(e, Error::Resolve { .. } | Error::ResolveTimeout { .. })),
                "{errors:?}"
            );
        }
        other => panic!("expected NoSeedResolved, got {other:?}"),
    }
}

#[test]
fn bad_entries_are_typed_errors_naming_the_entry() {
    for (entry, want) in [
        ("localhost", SeedProblem::MissingPort),
        (
            "localhost:",
            SeedProblem::InvalidPort {
                port: String::new(),
            },
        ),
        ("localhost:0", SeedProblem::InvalidPort { port: "0".into() }),
        (":6969", SeedProblem::EmptyHost),
    ] {
        match backend(&["127.0.0.1:1", entry]) {
            Err(Error::InvalidSeed { entry: e, problem }) => {
                assert_eq!(e, entry);
                assert_eq!(problem, want);
            }
            other => panic!("{entry:?}: expected InvalidSeed, got {other:?}"),
        }
    }
}
