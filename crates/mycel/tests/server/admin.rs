//! The HTTP admin API.

use crate::util::Server;

#[test]
fn health_ready_members_partitions() {
    let s = Server::start(&[]);
    let (status, body) = s.http("GET", "/health");
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["node_id"], s.node_id.as_str());

    // The ready line follows the first routing table; the partitions are marked synced
    // a moment after it is installed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = s.http("GET", "/ready");
        if status == 200 || std::time::Instant::now() > deadline {
            break (status, body);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status, 200, "{body}");

    let (status, body) = s.http("GET", "/members");
    assert_eq!(status, 200);
    let members: serde_json::Value = serde_json::from_str(&body).expect("json");
    let me = &members.as_array().expect("array")[0];
    assert_eq!(me["id"], s.node_id.as_str());
    assert_eq!(me["state"], "alive");
    for field in ["gossip_addr", "quic_addr", "incarnation", "metadata"] {
        assert!(!me[field].is_null(), "{field} in {me}");
    }
    // The cluster layer's metadata, decoded.
    assert_eq!(me["metadata"]["replication_factor"], 2, "{me}");
    assert_eq!(me["metadata"]["leaving"], false, "{me}");
    assert!(
        me["metadata"]["started_at_ms"]
            .as_u64()
            .is_some_and(|t| t > 0),
        "{me}"
    );

    // INFO memory: this node's store in cluster mode too.
    assert_eq!(s.cli(&["SET", "k", "v"]), "OK");
    let memory = s.cli(&["INFO", "memory"]);
    for want in ["used_memory:", "mycel_local_keys:1", "maxmemory:"] {
        assert!(memory.contains(want), "{want:?} missing from:\n{memory}");
    }

    let (status, body) = s.http("GET", "/partitions");
    assert_eq!(status, 200);
    let parts: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(parts["nodes"][&s.node_id]["primary"], parts["partitions"]);
    assert_eq!(me["metadata"]["partitions"], parts["partitions"], "{me}");
    assert_eq!(parts["maintenance"], false);

    let (status, _) = s.http("POST", "/maintenance?freeze=true");
    assert_eq!(status, 200);
    let (_, body) = s.http("GET", "/ready");
    let ready: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(ready["maintenance"], true);
    let (_, body) = s.http("GET", "/partitions");
    assert!(body.contains("\"maintenance\":true"), "{body}");
    let (status, _) = s.http("POST", "/maintenance?freeze=maybe");
    assert_eq!(status, 400);
    // Without the query the error says how to ask.
    let (status, body) = s.http("POST", "/maintenance");
    assert_eq!(status, 400);
    assert!(body.contains("POST /maintenance?freeze=true"), "{body}");
    let (status, _) = s.http("POST", "/maintenance?freeze=false");
    assert_eq!(status, 200);
    let (_, body) = s.http("GET", "/ready");
    assert!(body.contains("\"maintenance\":false"), "{body}");
}

#[test]
fn metrics_count_commands_keys_and_memory() {
    let s = Server::standalone(&["--max-memory", "64mb"]);
    // A standalone node lists itself without the gossip and QUIC addresses it never binds.
    let (status, body) = s.http("GET", "/members");
    assert_eq!(status, 200, "{body}");
    let members: serde_json::Value = serde_json::from_str(&body).expect("json");
    let me = &members.as_array().expect("array")[0];
    assert!(
        me["gossip_addr"].is_null() && me["quic_addr"].is_null(),
        "{me}"
    );
    assert_eq!(me["metadata"]["mode"], "standalone", "{me}");
    assert_eq!(s.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(s.cli(&["GET", "k"]), "\"v\"");
    assert_eq!(
        s.cli(&["GET"]),
        "(error) ERR wrong number of arguments for 'get' command"
    );
    assert!(
        s.cli(&["NOSUCH"])
            .starts_with("(error) ERR unknown command")
    );
    // Each command under its own name (INCR is not INCRBY); a refused request counts
    // as an error of its command, a name no command has as `unknown`.
    assert_eq!(s.cli(&["INCR", "n"]), "(integer) 1");
    let (status, body) = s.http("GET", "/metrics");
    assert_eq!(status, 200);
    for want in [
        "mycel_commands_total{command=\"set\"} 1",
        "mycel_commands_total{command=\"get\"} 1",
        "mycel_commands_total{command=\"incr\"} 1",
        "mycel_command_errors_total{command=\"get\"} 1",
        "mycel_command_errors_total{command=\"unknown\"} 1",
        "mycel_keys 2",
        "mycel_memory_max_bytes 67108864",
        "mycel_memory_used_bytes ",
        "mycel_evictions_total 0",
        "mycel_expirations_total 0",
        "mycel_connections_accepted_total ",
    ] {
        assert!(body.contains(want), "{want:?} missing from:\n{body}");
    }
}

#[test]
fn cluster_mode_exports_node_metrics_and_refuses_what_it_cannot_do() {
    let s = Server::start(&["--max-memory", "64mb"]);
    assert_eq!(s.cli(&["SET", "k", "v"]), "OK");
    let (status, body) = s.http("GET", "/metrics");
    assert_eq!(status, 200);
    for want in [
        "mycel_commands_total{command=\"set\"} 1",
        // The node's registry: gossip, transport and the cluster layer.
        "nodosum_",
        "mycel_table_epoch 1",
        "mycel_partitions_primary ",
        // This node's store: the one key (a lone node is its primary).
        "mycel_keys 1",
        "mycel_memory_max_bytes 67108864",
        "mycel_memory_used_bytes ",
        "mycel_evictions_total 0",
    ] {
        assert!(body.contains(want), "{want:?} missing from:\n{body}");
    }
    assert_eq!(body.matches("# EOF").count(), 1, "{body}");
    // One HELP per family: the server's and the node's registries do not overlap.
    let mut helps: Vec<&str> = body.lines().filter(|l| l.starts_with("# HELP ")).collect();
    let all = helps.len();
    helps.sort_unstable();
    helps.dedup();
    assert_eq!(helps.len(), all, "{body}");

    let info = s.cli(&["INFO"]);
    assert!(!info.contains("redis_mode:cluster"), "{info}");
    for want in [
        // Clients that read `redis_mode` must not take Mycel for a Redis Cluster.
        "redis_mode:standalone",
        "mycel_mode:cluster",
        "mycel_members:1",
        "mycel_ready:1",
        "maxmemory:67108864",
        "db0:keys=1",
    ] {
        assert!(info.contains(want), "{want:?} missing from INFO:\n{info}");
    }
    let epoch_line = info
        .lines()
        .find(|l| l.starts_with("mycel_epoch:"))
        .expect("epoch in INFO");
    assert_ne!(epoch_line, "mycel_epoch:0");
    assert_eq!(
        s.cli(&["MYCEL.BUCKET", "sessions", "CREATE"]),
        "(error) ERR MYCEL.BUCKET CREATE is not supported in cluster mode: declare buckets in the config file of every node"
    );
    assert_eq!(s.cli(&["MYCEL.BUCKET", "default"]), "OK");
}

/// With `--admin-token-file`, every endpoint but the probes needs the token as a bearer
/// token; SIGHUP rereads the file.
#[test]
fn the_admin_token_guards_all_but_the_probes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("admin-token");
    std::fs::write(&file, "t0ken\n").expect("write");
    let s = Server::start(&["--admin-token-file", file.to_str().expect("utf-8")]);
    let bearer = |token: &str| format!("Authorization: Bearer {token}\r\n");
    for probe in ["/health", "/ready"] {
        assert_eq!(s.http("GET", probe).0, 200, "{probe} stays open");
    }
    for (method, path) in [
        ("GET", "/members"),
        ("GET", "/metrics"),
        ("GET", "/partitions"),
        ("GET", "/maintenance"),
        ("POST", "/maintenance?freeze=true"),
    ] {
        let (status, body) = s.http(method, path);
        assert_eq!(status, 401, "{method} {path} without the token: {body}");
        assert!(body.contains("admin token"), "{body}");
        let (status, _) = s.http_with(method, path, &bearer("wrong"));
        assert_eq!(status, 401, "{method} {path} with a wrong token");
        let (status, _) = s.http_with(method, path, "Authorization: Basic dDBrZW4=\r\n");
        assert_eq!(status, 401, "{method} {path} with another scheme");
    }
    // Nothing was frozen by the refused POSTs.
    let (status, body) = s.http_with("GET", "/maintenance", &bearer("t0ken"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"maintenance\":false"), "{body}");
    let (status, body) = s.http_with("GET", "/metrics", &bearer("t0ken"));
    assert_eq!(status, 200);
    assert!(
        body.contains("mycel_commands_total") || body.contains("mycel_keys"),
        "{body}"
    );

    std::fs::write(&file, "n3w\n").expect("write");
    crate::util::signal(s.pid(), "HUP");
    crate::util::eventually("the new token taken", || {
        s.http_with("GET", "/members", &bearer("n3w")).0 == 200
    });
    assert_eq!(s.http_with("GET", "/members", &bearer("t0ken")).0, 401);
}
