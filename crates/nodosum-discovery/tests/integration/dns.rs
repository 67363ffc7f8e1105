//! DNS-SD browsing and plain SRV against a real dnsmasq.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use nodosum_discovery::{
    Candidate, Discovered, Discovery, DnsConfig, DnsDiscovery, DnsMode, Error,
};

use crate::dnsmasq::Dnsmasq;

const SERVICE: &str = "_nodosum._udp.test";

fn config(server: &Dnsmasq, mode: DnsMode, name: &str) -> DnsConfig {
    DnsConfig {
        mode,
        name: name.to_owned(),
        nameserver: Some(server.addr),
        // Bounds only the server-down case (a UDP query to a closed port gets no answer).
        timeout: Duration::from_secs(1),
        attempts: 1,
    }
}

/// dnsmasq options for one DNS-SD instance: PTR from the service type, SRV, TXT, A.
fn instance(name: &str, ip: &str, port: u16, txt: &[&str]) -> Vec<String> {
    let fqdn = format!("{name}.{SERVICE}");
    let host = format!("{name}.hosts.test");
    let mut out = vec![
        format!("--ptr-record={SERVICE},{fqdn}"),
        format!("--srv-host={fqdn},{host},{port}"),
        format!("--host-record={host},{ip}"),
    ];
    if !txt.is_empty() {
        out.push(format!("--txt-record={fqdn},{}", txt.join(",")));
    }
    out
}

async fn discover(d: &DnsDiscovery) -> Discovered {
    tokio::time::timeout(crate::GUARD, d.discover())
        .await
        .expect("round finishes")
        .expect("round succeeds")
}

fn sorted(mut c: Vec<Candidate>) -> Vec<(SocketAddr, Option<String>, Option<u16>)> {
    c.sort_by_key(|c| c.gossip_addr);
    c.into_iter()
        .map(|c| (c.gossip_addr, c.node_id.map(String::from), c.quic_port))
        .collect()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("literal")
}

#[tokio::test]
async fn browse_reads_ptr_srv_txt_and_addresses() {
    let mut records = instance(
        "a",
        "127.0.0.2",
        7001,
        &["txtvers=1", "id=node-a", "quic=7101"],
    );
    records.extend(instance("b", "127.0.0.3", 7002, &["id=node-b"]));
    // A dual-stack target: both addresses become candidates.
    records.extend(instance(
        "c",
        "127.0.0.4,::1",
        7003,
        &["id=node-c", "quic=7103"],
    ));
    let server = Dnsmasq::start(&records);
    let d = DnsDiscovery::new(&config(&server, DnsMode::Browse, SERVICE)).expect("config");
    assert_eq!(d.name(), "dns");

    let found = discover(&d).await;
    assert!(found.skipped.is_empty(), "{:?}", found.skipped);
    assert_eq!(
        sorted(found.candidates),
        vec![
            (addr("127.0.0.2:7001"), Some("node-a".into()), Some(7101)),
            (addr("127.0.0.3:7002"), Some("node-b".into()), None),
            (addr("127.0.0.4:7003"), Some("node-c".into()), Some(7103)),
            (addr("[::1]:7003"), Some("node-c".into()), Some(7103)),
        ]
    );
}

#[tokio::test]
async fn browse_sees_nodes_added_and_removed_between_rounds() {
    let a = instance("a", "127.0.0.2", 7001, &["id=node-a"]);
    let b = instance("b", "127.0.0.3", 7002, &["id=node-b"]);
    let c = instance("c", "127.0.0.4", 7003, &["id=node-c"]);
    let mut server = Dnsmasq::start(&[a.clone(), b].concat());
    let d = DnsDiscovery::new(&config(&server, DnsMode::Browse, SERVICE)).expect("config");

    let ids = |found: Discovered| -> Vec<String> {
        let mut ids: Vec<String> = found
            .candidates
            .into_iter()
            .filter_map(|c| c.node_id.map(String::from))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(ids(discover(&d).await), vec!["node-a", "node-b"]);

    // b leaves, c joins.
    server.restart(&[a, c].concat());
    assert_eq!(ids(discover(&d).await), vec!["node-a", "node-c"]);

    // Everyone leaves: the service type has no PTR record left, which is not an error.
    server.restart(&["--txt-record=unrelated.test,x".to_owned()]);
    let found = discover(&d).await;
    assert!(found.candidates.is_empty());
    assert!(found.skipped.is_empty(), "{:?}", found.skipped);
}

#[tokio::test]
async fn browse_skips_malformed_answers_and_keeps_the_rest() {
    let mut records = instance("good", "127.0.0.2", 7001, &["id=node-good", "quic=7101"]);
    // SRV pointing to a name with no address record.
    records.push(format!("--ptr-record={SERVICE},ghost.{SERVICE}"));
    records.push(format!(
        "--srv-host=ghost.{SERVICE},nowhere.hosts.test,7002"
    ));
    // An instance without SRV record.
    records.push(format!("--ptr-record={SERVICE},nosrv.{SERVICE}"));
    // SRV with target "." (service decidedly not available).
    records.push(format!("--ptr-record={SERVICE},dot.{SERVICE}"));
    records.push(format!("--srv-host=dot.{SERVICE}"));
    // TXT garbage on an otherwise good instance: it is kept without that metadata.
    records.extend(instance(
        "messy",
        "127.0.0.5",
        7005,
        &["=novalue", "id=-not-an-id", "quic=notaport"],
    ));
    let mut args: Vec<OsString> = records.into_iter().map(OsString::from).collect();
    // A TXT string that is not UTF-8 (command-line arguments are bytes on Unix).
    let mut raw = format!("--txt-record=bytes.{SERVICE},").into_bytes();
    raw.extend_from_slice(&[0xff, 0xfe]);
    args.push(OsString::from_vec(raw));
    args.extend(
        instance("bytes", "127.0.0.6", 7006, &[])
            .into_iter()
            .map(OsString::from),
    );
    let server = Dnsmasq::start(&args);
    let d = DnsDiscovery::new(&config(&server, DnsMode::Browse, SERVICE)).expect("config");

    let found = discover(&d).await;
    assert_eq!(
        sorted(found.candidates),
        vec![
            (addr("127.0.0.2:7001"), Some("node-good".into()), Some(7101)),
            (addr("127.0.0.5:7005"), None, None),
            (addr("127.0.0.6:7006"), None, None),
        ]
    );
    let mut kinds: Vec<&str> = found.skipped.iter().map(Error::kind).collect();
    kinds.sort_unstable();
    assert_eq!(
        kinds,
        vec![
            "instance_without_srv",
            "malformed_txt",
            "malformed_txt",
            "malformed_txt",
            "malformed_txt",
            "srv_target_root",
            "srv_target_without_address",
        ],
        "{:#?}",
        found.skipped
    );
    let mut problems: Vec<String> = found
        .skipped
        .iter()
        .filter_map(|e| match e {
            Error::MalformedTxt { problem, .. } => Some(format!("{problem:?}")),
            _ => None,
        })
        .collect();
    problems.sort();
    assert!(problems[0].starts_with("EmptyKey"), "{problems:?}");
    assert!(problems[1].starts_with("InvalidNodeId"), "{problems:?}");
    assert!(problems[2].starts_with("InvalidPort"), "{problems:?}");
    assert!(problems[3].starts_with("NotUtf8"), "{problems:?}");
    let ghost = found
        .skipped
        .iter()
        .find_map(|e| match e {
            Error::SrvTargetWithoutAddress { target, .. } => Some(target.clone()),
            _ => None,
        })
        .expect("ghost skipped");
    assert_eq!(ghost, "nowhere.hosts.test.");
}

#[tokio::test]
async fn srv_mode_reads_a_kubernetes_headless_service() {
    // What CoreDNS serves for a headless Service `nodosum` in namespace `default` with a
    // named UDP port `gossip`: one SRV record per ready pod, each pointing to the pod's
    // own A record.
    let name = "_gossip._udp.nodosum.default.svc.cluster.local";
    let mut records = Vec::new();
    for (i, pod) in ["nodosum-0", "nodosum-1", "nodosum-2"].iter().enumerate() {
        let host = format!("{pod}.nodosum.default.svc.cluster.local");
        records.push(format!("--srv-host={name},{host},6969"));
        records.push(format!("--host-record={host},127.0.1.{}", i + 1));
    }
    let mut server = Dnsmasq::start(&records);
    let d = DnsDiscovery::new(&config(&server, DnsMode::Srv, &format!("{name}."))).expect("config");

    let found = discover(&d).await;
    assert!(found.skipped.is_empty(), "{:?}", found.skipped);
    assert_eq!(
        sorted(found.candidates),
        vec![
            (addr("127.0.1.1:6969"), None, None),
            (addr("127.0.1.2:6969"), None, None),
            (addr("127.0.1.3:6969"), None, None),
        ]
    );

    // Scale down to one pod, and one SRV target that lost its address.
    server.restart(&[
        format!("--srv-host={name},nodosum-0.nodosum.default.svc.cluster.local,6969"),
        "--host-record=nodosum-0.nodosum.default.svc.cluster.local,127.0.1.1".to_owned(),
        format!("--srv-host={name},gone.nodosum.default.svc.cluster.local,6969"),
    ]);
    let found = discover(&d).await;
    assert_eq!(
        sorted(found.candidates),
        vec![(addr("127.0.1.1:6969"), None, None)]
    );
    assert_eq!(found.skipped.len(), 1);
    assert_eq!(found.skipped[0].kind(), "srv_target_without_address");

    // No SRV record at all: no candidates, no error.
    server.restart(&["--txt-record=unrelated.cluster.local,x".to_owned()]);
    let found = discover(&d).await;
    assert!(found.candidates.is_empty() && found.skipped.is_empty());
}

#[tokio::test]
async fn server_down_fails_the_round_with_a_typed_error() {
    let mut server = Dnsmasq::start(&instance("a", "127.0.0.2", 7001, &[]));
    let d = DnsDiscovery::new(&config(&server, DnsMode::Browse, SERVICE)).expect("config");
    assert_eq!(discover(&d).await.candidates.len(), 1);

    server.stop();
    let err = tokio::time::timeout(crate::GUARD, d.discover())
        .await
        .expect("round finishes")
        .expect_err("server is down");
    match err {
        Error::Dns {
            name, record_type, ..
        } => {
            assert_eq!(name, format!("{SERVICE}"));
            assert_eq!(record_type, "PTR");
        }
        other => panic!("expected Error::Dns, got {other:?}"),
    }
}
