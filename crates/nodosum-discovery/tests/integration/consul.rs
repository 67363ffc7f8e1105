//! ConsulDiscovery against the stand-in agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nodosum_discovery::{
    ConsulConfig, ConsulDiscovery, Discovered, Discovery, EntryProblem, Error, META_NODE_ID,
    META_QUIC_PORT, RegistrationConfig,
};
use nodosum_proto::NodeId;

use crate::GUARD;
use crate::consul_stand_in::{Instance, StandIn};

fn config(server: &StandIn) -> ConsulConfig {
    ConsulConfig {
        address: server.url.clone(),
        request_timeout: Duration::from_secs(5),
        ..ConsulConfig::default()
    }
}

async fn discover(d: &ConsulDiscovery) -> Result<Discovered, Error> {
    tokio::time::timeout(GUARD, d.discover())
        .await
        .expect("round finishes")
}

fn addrs(found: &Discovered) -> Vec<SocketAddr> {
    let mut a: Vec<SocketAddr> = found.candidates.iter().map(|c| c.gossip_addr).collect();
    a.sort();
    a
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal")
}

/// Polls `cond` until it holds (a guard, not a timing assertion).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn reads_healthy_instances_with_address_fallback_tags_and_meta() {
    let mut a = Instance::new("a", "127.0.0.2", 7001);
    a.meta.insert(META_NODE_ID.into(), "node-a".into());
    a.meta.insert(META_QUIC_PORT.into(), "7101".into());
    a.tags = vec!["prod".into(), "eu".into()];
    // Empty Service.Address: the node's address is used.
    let mut b = Instance::new("b", "", 7002);
    b.node_address = "127.0.0.3".into();
    b.tags = vec!["prod".into()];
    // Critical: filtered by passing=true.
    let mut c = Instance::new("c", "127.0.0.4", 7003);
    c.status = "critical";
    c.tags = vec!["prod".into()];
    // Without the tag.
    let d = Instance::new("d", "127.0.0.5", 7004);
    // Another datacenter.
    let mut e = Instance::new("e", "127.0.0.6", 7005);
    e.datacenter = "dc2".into();
    e.tags = vec!["prod".into()];
    // Malformed entries: no address at all, port out of range, bad meta.
    let mut f = Instance::new("f", "", 7006);
    f.node_address = String::new();
    f.tags = vec!["prod".into()];
    let mut g = Instance::new("g", "127.0.0.8", 70000);
    g.tags = vec!["prod".into()];
    let mut h = Instance::new("h", "127.0.0.9", 7009);
    h.tags = vec!["prod".into()];
    h.meta.insert(META_NODE_ID.into(), "-bad id".into());
    h.meta.insert(META_QUIC_PORT.into(), "x".into());
    let server = StandIn::start(vec![a, b, c, d, e, f, g, h]).await;

    let backend = ConsulDiscovery::new(&ConsulConfig {
        tags: vec!["prod".into()],
        blocking: false,
        ..config(&server)
    })
    .expect("config");
    assert_eq!(backend.name(), "consul");
    let found = discover(&backend).await.expect("round");
    assert_eq!(
        addrs(&found),
        vec![
            addr("127.0.0.2:7001"),
            addr("127.0.0.3:7002"),
            addr("127.0.0.9:7009")
        ]
    );
    let a = &found.candidates[0];
    assert_eq!(a.node_id.as_ref().map(NodeId::as_str), Some("node-a"));
    assert_eq!(a.quic_port, Some(7101));
    let h = found
        .candidates
        .iter()
        .find(|c| c.gossip_addr == addr("127.0.0.9:7009"))
        .expect("h kept");
    assert_eq!((h.node_id.as_ref(), h.quic_port), (None, None));
    let mut problems: Vec<String> = found
        .skipped
        .iter()
        .map(|e| match e {
            Error::ConsulEntry {
                service_id,
                problem,
                ..
            } => format!(
                "{service_id}:{}",
                match problem {
                    EntryProblem::NoAddress => "no_address",
                    EntryProblem::InvalidPort { .. } => "port",
                    EntryProblem::InvalidNodeId(_) => "id",
                    EntryProblem::InvalidQuicPort { .. } => "quic",
                    _ => "other",
                }
            ),
            other => panic!("unexpected skip {other:?}"),
        })
        .collect();
    problems.sort();
    assert_eq!(problems, vec!["f:no_address", "g:port", "h:id", "h:quic"]);

    let req = server.health_requests().pop().expect("one request");
    assert_eq!(req.path, "/v1/health/service/nodosum");
    assert_eq!(req.param("passing"), Some("true"));
    assert_eq!(req.param("tag"), Some("prod"));
    assert_eq!(req.param("index"), None);

    // The datacenter option.
    let backend = ConsulDiscovery::new(&ConsulConfig {
        datacenter: Some("dc2".into()),
        blocking: false,
        ..config(&server)
    })
    .expect("config");
    let found = discover(&backend).await.expect("round");
    assert_eq!(addrs(&found), vec![addr("127.0.0.6:7005")]);
    assert_eq!(
        server.health_requests().pop().expect("req").param("dc"),
        Some("dc2")
    );
}

#[tokio::test]
async fn blocking_query_delivers_a_change_promptly_and_resets_on_a_backwards_index() {
    let server = StandIn::start(vec![Instance::new("a", "127.0.0.2", 7001)]).await;
    let backend = Arc::new(
        ConsulDiscovery::new(&ConsulConfig {
            wait: Duration::from_secs(300),
            ..config(&server)
        })
        .expect("config"),
    );

    // First round: no index yet, so a plain query that learns the index.
    let found = discover(&backend).await.expect("round");
    assert_eq!(addrs(&found), vec![addr("127.0.0.2:7001")]);
    assert_eq!(server.health_requests()[0].param("index"), None);
    let index = backend.blocking_index().expect("index learned");
    assert_eq!(index, server.with(|c| c.index));

    // Second round blocks on that index...
    let round = tokio::spawn({
        let backend = Arc::clone(&backend);
        async move { backend.discover().await }
    });
    eventually("blocking request arrives", || {
        server.health_requests().len() == 2
    })
    .await;
    let req = server.health_requests().pop().expect("req");
    assert_eq!(req.param("index"), Some(index.to_string().as_str()));
    assert_eq!(req.param("wait"), Some("300s"));
    tokio::task::yield_now().await;
    assert!(
        !round.is_finished(),
        "a blocking query returned without a change"
    );

    // ...until the catalog changes: the new node arrives in the same round.
    server.change(|c| c.instances.push(Instance::new("b", "127.0.0.3", 7002)));
    let found = tokio::time::timeout(GUARD, round)
        .await
        .expect("round returns after the change")
        .expect("task")
        .expect("round");
    assert_eq!(
        addrs(&found),
        vec![addr("127.0.0.2:7001"), addr("127.0.0.3:7002")]
    );
    assert_eq!(backend.blocking_index(), Some(index + 1));

    // The index goes backwards (e.g. a snapshot restore): reset to a non-blocking query.
    server.change(|c| c.forced_index = Some(3));
    discover(&backend).await.expect("round");
    assert_eq!(backend.blocking_index(), None);
    discover(&backend).await.expect("round");
    assert_eq!(
        server.health_requests().pop().expect("req").param("index"),
        None
    );

    // An index of 0 is never blocked on (it would return at once, forever): use 1. The
    // first round sees 0 < 3, backwards, and resets; the next one gets 0 after a reset.
    server.change(|c| c.forced_index = Some(0));
    discover(&backend).await.expect("round");
    assert_eq!(backend.blocking_index(), None);
    discover(&backend).await.expect("round");
    assert_eq!(backend.blocking_index(), Some(1));
}

#[tokio::test]
async fn an_answer_that_does_not_decode_leaves_the_index_alone() {
    let server = StandIn::start(vec![Instance::new("a", "127.0.0.2", 7001)]).await;
    let backend = ConsulDiscovery::new(&ConsulConfig {
        wait: Duration::from_secs(300),
        ..config(&server)
    })
    .expect("config");
    discover(&backend).await.expect("round");
    let index = backend.blocking_index().expect("index learned");

    // The catalog changes, but the answer that carries the change does not decode.
    server.change(|c| {
        c.instances.push(Instance::new("b", "127.0.0.3", 7002));
        c.garbage_body = true;
    });
    assert!(matches!(
        discover(&backend).await,
        Err(Error::ConsulDecode { .. })
    ));
    assert_eq!(backend.blocking_index(), Some(index));

    // So the next round asks with the old index and gets the change at once, instead of
    // blocking until a later one (`wait` is 5 minutes; `discover` gives up long before).
    server.with(|c| c.garbage_body = false);
    let found = discover(&backend).await.expect("round");
    assert_eq!(
        addrs(&found),
        vec![addr("127.0.0.2:7001"), addr("127.0.0.3:7002")]
    );
    assert_eq!(backend.blocking_index(), Some(index + 1));
}

#[tokio::test]
async fn blocking_query_returns_the_same_answer_when_wait_elapses() {
    let server = StandIn::start(vec![Instance::new("a", "127.0.0.2", 7001)]).await;
    let backend = ConsulDiscovery::new(&ConsulConfig {
        wait: Duration::from_secs(1),
        ..config(&server)
    })
    .expect("config");
    discover(&backend).await.expect("first round");
    let index = backend.blocking_index();
    let found = discover(&backend).await.expect("blocking round");
    assert_eq!(addrs(&found), vec![addr("127.0.0.2:7001")]);
    assert_eq!(backend.blocking_index(), index);
    assert_eq!(
        server.health_requests().pop().expect("req").param("wait"),
        Some("1s")
    );
}

#[tokio::test]
async fn acl_token_is_sent_and_403_is_a_typed_error() {
    let server = StandIn::start(vec![Instance::new("a", "127.0.0.2", 7001)]).await;
    server.with(|c| c.required_token = Some("s3cr3t".into()));

    let anonymous = ConsulDiscovery::new(&config(&server)).expect("config");
    match discover(&anonymous).await {
        Err(Error::ConsulForbidden { url, body }) => {
            assert!(url.ends_with("/v1/health/service/nodosum"), "{url}");
            assert_eq!(body, "Permission denied");
        }
        other => panic!("expected ConsulForbidden, got {other:?}"),
    }

    let wrong = ConsulDiscovery::new(&ConsulConfig {
        token: Some("guess".into()),
        ..config(&server)
    })
    .expect("config");
    assert!(matches!(
        discover(&wrong).await,
        Err(Error::ConsulForbidden { .. })
    ));

    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cr3t\n").expect("write token");
    let right = ConsulDiscovery::new(&ConsulConfig {
        token_file: Some(token_file),
        ..config(&server)
    })
    .expect("config");
    let found = discover(&right).await.expect("round");
    assert_eq!(addrs(&found), vec![addr("127.0.0.2:7001")]);
    let tokens: Vec<Option<String>> = server
        .health_requests()
        .into_iter()
        .map(|r| r.token)
        .collect();
    assert_eq!(
        tokens,
        vec![None, Some("guess".into()), Some("s3cr3t".into())]
    );
}

#[tokio::test]
async fn server_errors_slow_answers_and_garbage_are_typed_errors() {
    let server = StandIn::start(vec![Instance::new("a", "127.0.0.2", 7001)]).await;
    let backend = ConsulDiscovery::new(&ConsulConfig {
        blocking: false,
        request_timeout: Duration::from_millis(500),
        ..config(&server)
    })
    .expect("config");

    server.with(|c| c.fail_next = 1);
    match discover(&backend).await {
        Err(Error::ConsulStatus { status, body, .. }) => {
            assert_eq!(status, 500);
            assert!(body.contains("No cluster leader"), "{body}");
        }
        other => panic!("expected ConsulStatus, got {other:?}"),
    }
    // The next answer is fine again.
    assert_eq!(discover(&backend).await.expect("round").candidates.len(), 1);

    server.with(|c| c.delay = Some(Duration::from_secs(20)));
    match discover(&backend).await {
        Err(Error::ConsulTimeout { after, .. }) => assert_eq!(after, Duration::from_millis(500)),
        other => panic!("expected ConsulTimeout, got {other:?}"),
    }
    server.with(|c| c.delay = None);

    server.with(|c| c.garbage_body = true);
    assert!(matches!(
        discover(&backend).await,
        Err(Error::ConsulDecode { .. })
    ));
    server.with(|c| c.garbage_body = false);

    let small = ConsulDiscovery::new(&ConsulConfig {
        blocking: false,
        max_response_bytes: 64,
        ..config(&server)
    })
    .expect("config");
    assert!(matches!(
        discover(&small).await,
        Err(Error::ConsulTooLarge { max: 64, .. })
    ));

    // Nobody listening.
    let url = server.url.clone();
    drop(server);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = listener.local_addr().expect("addr");
    drop(listener);
    let gone = ConsulDiscovery::new(&ConsulConfig {
        address: format!("http://{closed}"),
        blocking: false,
        ..ConsulConfig::default()
    })
    .expect("config");
    assert!(
        matches!(discover(&gone).await, Err(Error::ConsulRequest { .. })),
        "was {url}"
    );
}

#[tokio::test]
async fn tls_to_the_agent_with_a_configured_ca() {
    let (server, ca_pem) = StandIn::start_tls(vec![Instance::new("a", "127.0.0.2", 7001)]).await;
    let trusted = ConsulDiscovery::new(&ConsulConfig {
        ca_pem: Some(ca_pem.clone()),
        ..config(&server)
    })
    .expect("config");
    let found = discover(&trusted).await.expect("round over TLS");
    assert_eq!(addrs(&found), vec![addr("127.0.0.2:7001")]);

    // The same CA from a file.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).expect("write ca");
    let from_file = ConsulDiscovery::new(&ConsulConfig {
        ca_file: Some(ca_file),
        ..config(&server)
    })
    .expect("config");
    discover(&from_file).await.expect("round over TLS");

    // Without the CA the agent's certificate is not trusted.
    let untrusting = ConsulDiscovery::new(&config(&server)).expect("config");
    assert!(matches!(
        discover(&untrusting).await,
        Err(Error::ConsulRequest { .. })
    ));

    // A CA without a certificate is refused at construction, naming its setting and file.
    assert!(matches!(
        ConsulDiscovery::new(&ConsulConfig {
            ca_pem: Some("not a pem".into()),
            ..config(&server)
        }),
        Err(Error::Config {
            field: "consul.ca_pem",
            ..
        })
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, "not a pem").expect("write");
    match ConsulDiscovery::new(&ConsulConfig {
        ca_file: Some(ca_file.clone()),
        ..config(&server)
    }) {
        Err(
            e @ Error::Config {
                field: "consul.ca_file",
                ..
            },
        ) => {
            assert!(
                e.to_string().contains(&ca_file.display().to_string()),
                "{e}"
            );
        }
        other => panic!("expected a consul.ca_file problem, got {other:?}"),
    }
}

#[tokio::test]
async fn client_certificate_for_an_agent_that_verifies_incoming() {
    let (server, ca_pem, identity) =
        StandIn::start_mtls(vec![Instance::new("a", "127.0.0.2", 7001)]).await;
    let without = ConsulDiscovery::new(&ConsulConfig {
        ca_pem: Some(ca_pem.clone()),
        ..config(&server)
    })
    .expect("config");
    assert!(matches!(
        discover(&without).await,
        Err(Error::ConsulRequest { .. })
    ));

    let dir = tempfile::tempdir().expect("tempdir");
    let identity_file = dir.path().join("client.pem");
    // A file without a key is refused at construction, naming its setting.
    std::fs::write(&identity_file, &ca_pem).expect("write");
    assert!(matches!(
        ConsulDiscovery::new(&ConsulConfig {
            ca_pem: Some(ca_pem.clone()),
            client_identity_file: Some(identity_file.clone()),
            ..config(&server)
        }),
        Err(Error::Config {
            field: "consul.client_identity_file",
            ..
        })
    ));
    std::fs::write(&identity_file, identity).expect("write identity");
    let with = ConsulDiscovery::new(&ConsulConfig {
        ca_pem: Some(ca_pem),
        client_identity_file: Some(identity_file),
        ..config(&server)
    })
    .expect("config");
    let found = discover(&with).await.expect("round over mutual TLS");
    assert_eq!(addrs(&found), vec![addr("127.0.0.2:7001")]);
}

#[tokio::test]
async fn self_registration_keeps_the_ttl_check_passing_and_deregisters() {
    let server = StandIn::start(Vec::new()).await;
    let backend = Arc::new(
        ConsulDiscovery::new(&ConsulConfig {
            blocking: false,
            register: Some(RegistrationConfig {
                id: "node-1".into(),
                address: Some("127.0.0.7".into()),
                port: 6969,
                tags: vec!["prod".into()],
                node_id: Some(NodeId::new("node-1").expect("valid")),
                quic_port: Some(6970),
                ttl: Duration::from_secs(1),
                ..RegistrationConfig::default()
            }),
            ..config(&server)
        })
        .expect("config"),
    );

    let handle = backend
        .spawn_registration()
        .expect("registration configured");
    eventually("registered and passed twice", || {
        server.with(|c| c.registrations.len() == 1 && c.passes.len() >= 2)
    })
    .await;
    let body = server.with(|c| c.registrations[0].clone());
    assert_eq!(body["ID"], "node-1");
    assert_eq!(body["Name"], "nodosum");
    assert_eq!(body["Address"], "127.0.0.7");
    assert_eq!(body["Port"], 6969);
    assert_eq!(body["Tags"][0], "prod");
    assert_eq!(body["Meta"][META_NODE_ID], "node-1");
    assert_eq!(body["Meta"][META_QUIC_PORT], "6970");
    assert_eq!(body["Check"]["CheckID"], "service:node-1");
    assert_eq!(body["Check"]["TTL"], "1s");
    assert_eq!(body["Check"]["DeregisterCriticalServiceAfter"], "60s");
    assert!(server.with(|c| c.passes.iter().all(|p| p == "service:node-1")));
    let register_req = server.with(|c| {
        c.requests
            .iter()
            .find(|r| r.path == "/v1/agent/service/register")
            .cloned()
            .expect("recorded")
    });
    assert_eq!(register_req.method, "PUT");
    assert_eq!(register_req.param("replace-existing-checks"), Some("true"));

    // Other nodes now discover this one, with its ID and QUIC port.
    let found = discover(&backend).await.expect("round");
    assert_eq!(found.candidates.len(), 1);
    let me = &found.candidates[0];
    assert_eq!(me.gossip_addr, addr("127.0.0.7:6969"));
    assert_eq!(me.node_id.as_ref().map(NodeId::as_str), Some("node-1"));
    assert_eq!(me.quic_port, Some(6970));

    // The agent forgets the service (e.g. it restarted without state): the failed check
    // pass leads to registering again.
    server.change(|c| c.instances.clear());
    eventually("registered again", || {
        server.with(|c| c.registrations.len() >= 2)
    })
    .await;

    // Graceful shutdown deregisters.
    tokio::time::timeout(GUARD, handle.shutdown())
        .await
        .expect("shutdown finishes")
        .expect("deregistered");
    assert_eq!(
        server.with(|c| c.deregistrations.clone()),
        vec!["node-1".to_owned()]
    );
    assert!(
        discover(&backend)
            .await
            .expect("round")
            .candidates
            .is_empty()
    );
}

#[tokio::test]
async fn registration_calls_need_a_registration_config() {
    let server = StandIn::start(Vec::new()).await;
    let backend = ConsulDiscovery::new(&config(&server)).expect("config");
    assert!(matches!(
        backend.register().await,
        Err(Error::Config {
            field: "consul.register",
            ..
        })
    ));
}
