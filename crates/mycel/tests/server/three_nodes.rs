//! Three `mycel` processes forming a cluster on loopback (`--dev --seed`), driven with the
//! real `redis-cli`: any node serves any key, counters accumulate across nodes, keys
//! written before a node is killed (SIGKILL) stay readable through the survivors (RF=2),
//! and a node stopped with SIGTERM hands its partitions off before exiting 0.

use std::time::{Duration, Instant};

use crate::tls::Pki;
use crate::util::{GUARD, Server, roundtrip};

/// How long the survivors may take to detect a killed node, publish a new routing table
/// and re-replicate: a failure guard only.
const SETTLE_GUARD: Duration = Duration::from_secs(45);

fn json(s: &Server, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = s.http("GET", path);
    let value = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
    (status, value)
}

fn alive_members(s: &Server) -> usize {
    let (_, members) = json(s, "/members");
    members.as_array().map_or(0, |list| {
        list.iter().filter(|m| m["state"] == "alive").count()
    })
}

/// Whether `s` has installed a routing table naming `n` members and synced every
/// partition it replicates.
fn settled(s: &Server, n: usize) -> bool {
    let (status, parts) = json(s, "/partitions");
    status == 200
        && parts["ready"] == true
        && parts["table_members"].as_array().map(Vec::len) == Some(n)
}

/// Polls `f` until it returns true, failing after `guard`.
fn within(guard: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < guard,
            "{what} did not happen within {guard:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_three() -> Vec<Server> {
    let first = Server::start(&["--replicas", "2"]);
    let seed = first
        .gossip
        .expect("a cluster node's gossip address")
        .to_string();
    let second = Server::start(&["--replicas", "2", "--seed", &seed]);
    let third = Server::start(&["--replicas", "2", "--seed", &seed]);
    let nodes = vec![first, second, third];
    for n in &nodes {
        within(GUARD, "every node sees 3 alive members", || {
            alive_members(n) == 3
        });
    }
    for n in &nodes {
        within(GUARD, "a 3-member routing table, in sync", || settled(n, 3));
    }
    nodes
}

#[test]
fn three_nodes_serve_any_key_and_survive_a_kill() {
    let mut nodes = start_three();

    // Any node serves any key.
    assert_eq!(nodes[0].cli(&["SET", "greeting", "hello"]), "OK");
    assert_eq!(nodes[1].cli(&["GET", "greeting"]), "\"hello\"");
    assert_eq!(nodes[2].cli(&["GET", "greeting"]), "\"hello\"");
    // And any node runs a transaction, at the primary of its keys' partition.
    for (i, n) in nodes.iter().enumerate() {
        let session = n.cli_session("MULTI\nINCR {tx}n\nSET {tx}last v\nGET {tx}n\nEXEC\n");
        let count = i + 1;
        assert_eq!(
            session,
            format!("OK\nQUEUED\nQUEUED\nQUEUED\n1) (integer) {count}\n2) OK\n3) \"{count}\"")
        );
    }
    // And WATCH, checked at the primary: a write after WATCH makes EXEC run nothing.
    for (i, n) in nodes.iter().enumerate() {
        let session = n.cli_session(
            "WATCH {tx}n\nINCR {tx}n\nMULTI\nINCR {tx}n\nEXEC\n\
             WATCH {tx}n\nMULTI\nINCR {tx}n\nEXEC\n",
        );
        let (written, ran) = (4 + 2 * i, 5 + 2 * i);
        assert_eq!(
            session,
            format!(
                "OK\n(integer) {written}\nOK\nQUEUED\n(nil)\nOK\nOK\nQUEUED\n1) (integer) {ran}"
            )
        );
    }

    // A conditional EXPIRE is decided at the primary, whichever node it reaches: every
    // node answers the same for the same key.
    for (i, n) in nodes.iter().enumerate() {
        let key = format!("cond-{i}");
        assert_eq!(n.cli(&["SET", &key, "v"]), "OK");
        assert_eq!(n.cli(&["EXPIRE", &key, "100", "XX"]), "(integer) 0");
        for other in &nodes {
            assert_eq!(other.cli(&["TTL", &key]), "(integer) -1");
        }
        assert_eq!(n.cli(&["EXPIRE", &key, "100", "NX"]), "(integer) 1");
        assert_eq!(
            nodes[(i + 1) % 3].cli(&["EXPIRE", &key, "50", "GT"]),
            "(integer) 0"
        );
        assert_eq!(
            nodes[(i + 2) % 3].cli(&["EXPIRE", &key, "50", "LT"]),
            "(integer) 1"
        );
    }
    // Maintenance set on one node holds cluster-wide, and every node says so.
    let (status, _) = nodes[0].http("POST", "/maintenance?freeze=true");
    assert_eq!(status, 200);
    within(GUARD, "every node reports maintenance", || {
        nodes.iter().all(|n| {
            n.http("GET", "/maintenance")
                .1
                .contains("\"maintenance\":true")
        })
    });
    let (_, body) = nodes[1].http("GET", "/maintenance");
    assert!(body.contains("\"here\":false"), "{body}");
    nodes[0].http("POST", "/maintenance?freeze=false");
    within(GUARD, "maintenance ends everywhere", || {
        nodes.iter().all(|n| {
            n.http("GET", "/maintenance")
                .1
                .contains("\"maintenance\":false")
        })
    });
    assert_eq!(
        nodes[0].cli(&["DEL", "cond-0", "cond-1", "cond-2"]),
        "(integer) 3"
    );

    // INCR through different nodes accumulates at the key's primary.
    assert_eq!(nodes[0].cli(&["INCR", "visits"]), "(integer) 1");
    assert_eq!(nodes[1].cli(&["INCR", "visits"]), "(integer) 2");
    assert_eq!(nodes[2].cli(&["INCRBY", "visits", "10"]), "(integer) 12");
    assert_eq!(nodes[0].cli(&["GET", "visits"]), "\"12\"");
    // So does APPEND.
    assert_eq!(nodes[1].cli(&["APPEND", "trail", "a"]), "(integer) 1");
    assert_eq!(nodes[2].cli(&["APPEND", "trail", "bc"]), "(integer) 3");
    assert_eq!(nodes[0].cli(&["GET", "trail"]), "\"abc\"");
    // And SETRANGE, read back in part by GETRANGE on another node.
    assert_eq!(
        nodes[2].cli(&["SETRANGE", "trail", "1", "XYZ"]),
        "(integer) 4"
    );
    assert_eq!(nodes[1].cli(&["GETRANGE", "trail", "1", "-2"]), "\"XY\"");
    assert_eq!(
        nodes[0].cli(&["SETRANGE", "trail", "6", "!"]),
        "(integer) 7"
    );
    assert_eq!(nodes[1].cli(&["GET", "trail"]), "\"aXYZ\\x00\\x00!\"");
    assert_eq!(nodes[0].cli(&["DEL", "trail"]), "(integer) 1");
    // And INCRBYFLOAT, with Redis's long double digits whichever node computes it.
    let mut total = String::new();
    for (i, step) in ["0.1", "0.2", "-0.05", "1e3"].iter().enumerate() {
        total = nodes[i % 3].cli(&["INCRBYFLOAT", "level", step]);
    }
    assert_eq!(total, "\"1000.25\"");
    assert_eq!(nodes[0].cli(&["SET", "word", "abc"]), "OK");
    assert_eq!(
        nodes[1].cli(&["INCRBYFLOAT", "word", "1"]),
        "(error) ERR value is not a valid float"
    );
    assert_eq!(
        nodes[2].cli(&["INCRBYFLOAT", "level", "inf"]),
        "(error) ERR increment would produce NaN or Infinity"
    );
    assert_eq!(nodes[0].cli(&["DEL", "level", "word"]), "(integer) 2");
    // And RENAME, for keys of one partition.
    assert_eq!(nodes[2].cli(&["SET", "{r}from", "x"]), "OK");
    assert_eq!(nodes[1].cli(&["RENAME", "{r}from", "{r}to"]), "OK");
    assert_eq!(nodes[0].cli(&["GET", "{r}to"]), "\"x\"");
    assert_eq!(nodes[2].cli(&["EXISTS", "{r}from"]), "(integer) 0");
    assert_eq!(nodes[0].cli(&["DEL", "{r}to"]), "(integer) 1");

    // A pipeline through one node over keys of every primary: one batch per primary,
    // replies in request order, each key's commands applied in order.
    {
        let mut c = nodes[0].connect();
        let mut request = String::new();
        let mut want = String::new();
        for i in 0..30 {
            request.push_str(&format!("SET p{i} {i}\r\nINCRBY p{i} 5\r\n"));
            want.push_str(&format!("+OK\r\n:{}\r\n", i + 5));
        }
        for i in 0..30 {
            let v = (i + 5).to_string();
            request.push_str(&format!("GET p{i}\r\nDEL p{i}\r\nEXISTS p{i}\r\n"));
            want.push_str(&format!("${}\r\n{v}\r\n:1\r\n:0\r\n", v.len()));
        }
        roundtrip(&mut c, request.as_bytes(), want.as_bytes());
    }

    // Enough keys that every node is primary of some, written through every node.
    let keys: Vec<String> = (0..40).map(|i| format!("key-{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let value = format!("value-{i}");
        assert_eq!(nodes[i % 3].cli(&["SET", k, &value]), "OK");
    }
    assert_eq!(nodes[2].cli(&["DBSIZE"]), "(integer) 44");
    // Every node lists them all, each once: `KEYS` and a `SCAN` loop read every
    // partition at its primary.
    for n in &nodes {
        let mut listed: Vec<String> = n
            .cli(&["--scan", "--pattern", "key-*"])
            .lines()
            .map(str::to_owned)
            .collect();
        listed.sort();
        // `--no-raw` quotes each key.
        let mut want: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        want.sort();
        assert_eq!(listed, want);
        assert_eq!(n.cli(&["KEYS", "key-3?"]).lines().count(), 10);
    }

    // /partitions on any node shows the whole table: every member's counts, primaries
    // covering every partition once and each partition backed up once (RF=2).
    let (_, parts) = json(&nodes[2], "/partitions");
    let counts = parts["nodes"].as_object().expect("nodes");
    assert_eq!(counts.len(), 3, "{parts}");
    let sum = |field: &str| -> u64 {
        counts
            .values()
            .map(|c| c[field].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(
        Some(sum("primary")),
        parts["partitions"].as_u64(),
        "{parts}"
    );
    assert_eq!(Some(sum("backup")), parts["partitions"].as_u64(), "{parts}");

    let info = nodes[1].cli(&["INFO", "cluster"]);
    for want in [
        "mycel_mode:cluster",
        "mycel_members_alive:3",
        "mycel_ready:1",
    ] {
        assert!(info.contains(want), "{want:?} missing from INFO:\n{info}");
    }

    // SIGKILL the third node: no leave, no hand-off. Every key had a copy elsewhere.
    let victim = nodes.pop().expect("three nodes");
    victim.kill();
    for k in keys.iter().chain([&"greeting".to_owned()]) {
        let want = if k == "greeting" {
            "\"hello\"".to_owned()
        } else {
            format!("\"value-{}\"", &k["key-".len()..])
        };
        for n in &nodes {
            within(SETTLE_GUARD, &format!("GET {k} through a survivor"), || {
                n.try_cli(&["GET", k]) == want
            });
        }
    }
    within(SETTLE_GUARD, "GET visits through a survivor", || {
        nodes[1].try_cli(&["GET", "visits"]) == "\"12\""
    });
    // The survivors settle on a 2-member table and keep accepting writes.
    for n in &nodes {
        within(SETTLE_GUARD, "a 2-member routing table, in sync", || {
            settled(n, 2)
        });
    }
    assert_eq!(nodes[1].cli(&["INCR", "visits"]), "(integer) 13");
    assert_eq!(nodes[0].cli(&["GET", "visits"]), "\"13\"");

    // SIGTERM the second node: it hands its partitions to the first, then exits 0, and
    // the last node serves every key alone.
    let leaving = nodes.pop().expect("two nodes");
    let status = leaving.terminate();
    assert!(status.success(), "{status:?}");
    let last = &nodes[0];
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            last.try_cli(&["GET", k]),
            format!("\"value-{i}\""),
            "{k} after a graceful leave"
        );
    }
    assert_eq!(last.cli(&["GET", "visits"]), "\"13\"");
}

/// A node's credential files, as an operator renews them in place.
struct NodeFiles {
    dir: tempfile::TempDir,
}

/// Gossip keys: 32 bytes of 1s and of 2s, in base64.
const OLD_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const NEW_KEY: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";

impl NodeFiles {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir
            .path()
            .join(file)
            .to_str()
            .expect("utf-8")
            .to_owned()
    }

    fn trust(&self, cas: &[&Pki]) {
        let pem: String = cas
            .iter()
            .map(|ca| std::fs::read_to_string(ca.path("ca.pem")).expect("ca"))
            .collect();
        std::fs::write(self.path("ca.pem"), pem).expect("write");
    }

    fn certificate(&self, ca: &Pki, id: &str) {
        let (cert, key) = ca.node(id);
        std::fs::copy(cert, self.path("cert.pem")).expect("copy");
        std::fs::copy(key, self.path("key.pem")).expect("copy");
    }

    fn keys(&self, keys: &[&str]) {
        std::fs::write(self.path("gossip.keys"), keys.join("\n")).expect("write");
    }

    /// `--node-id ID` and these files as the node's TLS files and gossip key file.
    fn start(&self, id: &str, extra: &[&str]) -> Server {
        let (ca, cert, key, keys) = (
            self.path("ca.pem"),
            self.path("cert.pem"),
            self.path("key.pem"),
            self.path("gossip.keys"),
        );
        let flags = [
            "--node-id",
            id,
            "--replicas",
            "2",
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--gossip-key",
            &keys,
        ];
        Server::start(&[&flags[..], extra].concat())
    }
}

/// A CA and gossip key rotation on running nodes: the files edited in place and SIGHUP
/// sent to every node at each step. A node that knows only the new CA and the new key
/// then joins, so both old nodes present certificates of the new CA, trust it, and open
/// the new key; the cluster never loses a member.
#[test]
fn sighup_rotates_the_node_certificates_and_gossip_keys() {
    let (old_ca, new_ca) = (Pki::new("old"), Pki::new("new"));
    let ids = ["node-a", "node-b"];
    let files = [NodeFiles::new(), NodeFiles::new()];
    for (f, id) in files.iter().zip(ids) {
        f.trust(&[&old_ca]);
        f.certificate(&old_ca, id);
        f.keys(&[OLD_KEY]);
    }
    let first = files[0].start(ids[0], &[]);
    let seed = first.gossip.expect("gossip address").to_string();
    let nodes = [first, files[1].start(ids[1], &["--seed", &seed])];
    for n in &nodes {
        within(GUARD, "two alive members", || alive_members(n) == 2);
    }
    assert_eq!(nodes[0].cli(&["SET", "before", "rotation"]), "OK");

    let reload = |step: u64| {
        for n in &nodes {
            crate::util::signal(n.pid(), "HUP");
        }
        for n in &nodes {
            crate::util::eventually("the reload done", || {
                n.metric("mycel_reloads_total") == step
            });
            assert_eq!(n.metric("mycel_reload_failures_total"), 0);
        }
    };
    // 1. Trust both CAs; install the new key next to the old one.
    for f in &files {
        f.trust(&[&old_ca, &new_ca]);
        f.keys(&[OLD_KEY, NEW_KEY]);
    }
    reload(1);
    // 2. Certificates of the new CA; seal with the new key.
    for (f, id) in files.iter().zip(ids) {
        f.certificate(&new_ca, id);
        f.keys(&[NEW_KEY, OLD_KEY]);
    }
    reload(2);
    // 3. The new CA and the new key alone.
    for f in &files {
        f.trust(&[&new_ca]);
        f.keys(&[NEW_KEY]);
    }
    reload(3);

    let newcomer_files = NodeFiles::new();
    newcomer_files.trust(&[&new_ca]);
    newcomer_files.certificate(&new_ca, "node-c");
    newcomer_files.keys(&[NEW_KEY]);
    let newcomer = newcomer_files.start("node-c", &["--seed", &seed]);
    for n in nodes.iter().chain([&newcomer]) {
        within(SETTLE_GUARD, "three alive members, in sync", || {
            alive_members(n) == 3 && settled(n, 3)
        });
    }
    assert_eq!(newcomer.cli(&["GET", "before"]), "\"rotation\"");
    for i in 0..20 {
        let key = format!("after-{i}");
        assert_eq!(newcomer.cli(&["SET", &key, "v"]), "OK");
        assert_eq!(nodes[i % 2].cli(&["GET", &key]), "\"v\"");
    }

    // A key file that does not load: the reload fails, counted, and the node keeps its
    // keys.
    std::fs::write(files[0].path("gossip.keys"), "not a key").expect("write");
    crate::util::signal(nodes[0].pid(), "HUP");
    crate::util::eventually("the failed reload counted", || {
        nodes[0].metric("mycel_reload_failures_total") == 1
    });
    assert_eq!(nodes[0].metric("mycel_reloads_total"), 4);
    assert_eq!(nodes[0].cli(&["SET", "still", "here"]), "OK");
    assert_eq!(alive_members(&nodes[0]), 3);

    // FLUSHDB through one node empties every node's partitions.
    assert_eq!(newcomer.cli(&["DBSIZE"]), "(integer) 22");
    assert_eq!(nodes[1].cli(&["FLUSHDB"]), "OK");
    for n in nodes.iter().chain([&newcomer]) {
        assert_eq!(n.cli(&["DBSIZE"]), "(integer) 0");
        assert_eq!(n.cli(&["GET", "before"]), "(nil)");
    }
}
