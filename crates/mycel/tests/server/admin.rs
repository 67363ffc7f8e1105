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

    let (status, body) = s.http("GET", "/ready");
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

    let (status, body) = s.http("GET", "/partitions");
    assert_eq!(status, 200);
    let parts: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(parts["nodes"][&s.node_id]["primary"], parts["partitions"]);
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
    let (status, _) = s.http("POST", "/maintenance?freeze=false");
    assert_eq!(status, 200);
    let (_, body) = s.http("GET", "/ready");
    assert!(body.contains("\"maintenance\":false"), "{body}");
}

#[test]
fn metrics_count_commands_keys_and_memory() {
    let s = Server::start(&["--max-memory", "64mb"]);
    assert_eq!(s.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(s.cli(&["GET", "k"]), "\"v\"");
    assert_eq!(
        s.cli(&["GET"]),
        "(error) ERR wrong number of arguments for 'get' command"
    );
    let (status, body) = s.http("GET", "/metrics");
    assert_eq!(status, 200);
    for want in [
        "mycel_commands_total{command=\"set\"} 1",
        "mycel_commands_total{command=\"get\"} 1",
        "mycel_command_errors_total{command=\"unknown\"} 1",
        "mycel_keys 1",
        "mycel_memory_max_bytes 67108864",
        "mycel_memory_used_bytes ",
        "mycel_evictions_total 0",
        "mycel_expirations_total 0",
        "mycel_connections_accepted_total ",
    ] {
        assert!(body.contains(want), "{want:?} missing from:\n{body}");
    }
}
