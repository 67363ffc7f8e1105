//! Static seeds through the system resolver (`localhost` comes from /etc/hosts).

use std::net::{IpAddr, SocketAddr};

use nodosum_discovery::{Discovery, Error, SeedProblem, StaticConfig, StaticDiscovery};

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

#[tokio::test]
async fn a_name_that_does_not_resolve_is_reported_by_entry_and_the_rest_kept() {
    // `.invalid` never resolves (RFC 6761).
    let d = backend(&["localhost:6969", "nodosum-seed.invalid:6969"]).expect("valid");
    let found = d.discover().await.expect("round");
    assert!(!found.candidates.is_empty());
    assert_eq!(found.skipped.len(), 1);
    match &found.skipped[0] {
        Error::Resolve { entry, .. } | Error::NoAddress { entry } => {
            assert_eq!(entry, "nodosum-seed.invalid:6969");
        }
        other => panic!("expected a resolve error naming the entry, got {other:?}"),
    }

    // When nothing resolves, the round fails and names every entry.
    let d = backend(&["a.invalid:1", "b.invalid:2"]).expect("valid");
    match d.discover().await {
        Err(Error::NoSeedResolved { errors }) => {
            let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
            assert_eq!(errors.len(), 2);
            assert!(text[0].contains("a.invalid:1"), "{text:?}");
            assert!(text[1].contains("b.invalid:2"), "{text:?}");
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
