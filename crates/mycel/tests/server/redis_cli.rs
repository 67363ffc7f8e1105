//! The real `redis-cli` against `mycel --dev`: replies compared with what Redis documents
//! (redis-cli's `--no-raw` formatting: `"bulk"`, `(integer) n`, `(nil)`, `(error) ...`).

use crate::util::{Server, eventually};

#[test]
fn ping_set_get() {
    let s = Server::start(&[]);
    assert_eq!(s.cli(&["PING"]), "PONG");
    assert_eq!(s.cli(&["PING", "hello"]), "\"hello\"");
    assert_eq!(s.cli(&["ECHO", "hi there"]), "\"hi there\"");
    assert_eq!(s.cli(&["SET", "greeting", "hello world"]), "OK");
    assert_eq!(s.cli(&["GET", "greeting"]), "\"hello world\"");
    assert_eq!(s.cli(&["GET", "missing"]), "(nil)");
    assert_eq!(s.cli(&["SETNX", "greeting", "x"]), "(integer) 0");
    assert_eq!(s.cli(&["SETNX", "fresh", "x"]), "(integer) 1");
    assert_eq!(s.cli(&["GETDEL", "fresh"]), "\"x\"");
    assert_eq!(s.cli(&["GET", "fresh"]), "(nil)");
}

#[test]
fn set_options() {
    let s = Server::start(&[]);
    assert_eq!(s.cli(&["SET", "k", "v1", "NX"]), "OK");
    assert_eq!(s.cli(&["SET", "k", "v2", "NX"]), "(nil)");
    assert_eq!(s.cli(&["SET", "absent", "v", "XX"]), "(nil)");
    assert_eq!(s.cli(&["GET", "absent"]), "(nil)");
    assert_eq!(s.cli(&["SET", "k", "v3", "XX", "GET"]), "\"v1\"");
    assert_eq!(s.cli(&["SET", "new", "v", "GET"]), "(nil)");
    assert_eq!(s.cli(&["GET", "new"]), "\"v\"");
    assert_eq!(s.cli(&["SET", "k", "v4", "EX", "100"]), "OK");
    let ttl: i64 = s
        .cli(&["TTL", "k"])
        .trim_start_matches("(integer) ")
        .parse()
        .expect("ttl");
    assert!((1..=100).contains(&ttl), "{ttl}");
    // KEEPTTL keeps it, a plain SET clears it.
    assert_eq!(s.cli(&["SET", "k", "v5", "KEEPTTL"]), "OK");
    let ttl: i64 = s
        .cli(&["TTL", "k"])
        .trim_start_matches("(integer) ")
        .parse()
        .expect("ttl");
    assert!((1..=100).contains(&ttl), "{ttl}");
    assert_eq!(s.cli(&["SET", "k", "v6"]), "OK");
    assert_eq!(s.cli(&["TTL", "k"]), "(integer) -1");
    // PX with a small value: the key goes away (polled with a generous bound).
    assert_eq!(s.cli(&["SET", "short", "v", "PX", "50"]), "OK");
    eventually("a PX 50 key expiring", || {
        s.cli(&["GET", "short"]) == "(nil)"
    });
    assert_eq!(
        s.cli(&["SET", "k", "v", "NX", "XX"]),
        "(error) ERR syntax error"
    );
    assert_eq!(
        s.cli(&["SET", "k", "v", "EX", "0"]),
        "(error) ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        s.cli(&["SET", "k", "v", "EX", "soon"]),
        "(error) ERR value is not an integer or out of range"
    );
}

#[test]
fn incr_family() {
    let s = Server::start(&[]);
    assert_eq!(s.cli(&["INCR", "n"]), "(integer) 1");
    assert_eq!(s.cli(&["INCRBY", "n", "10"]), "(integer) 11");
    assert_eq!(s.cli(&["DECR", "n"]), "(integer) 10");
    assert_eq!(s.cli(&["DECRBY", "n", "15"]), "(integer) -5");
    assert_eq!(s.cli(&["GET", "n"]), "\"-5\"");
    assert_eq!(s.cli(&["SET", "word", "abc"]), "OK");
    assert_eq!(
        s.cli(&["INCR", "word"]),
        "(error) ERR value is not an integer or out of range"
    );
    assert_eq!(
        s.cli(&["INCRBY", "n", "ten"]),
        "(error) ERR value is not an integer or out of range"
    );
    assert_eq!(s.cli(&["SET", "max", "9223372036854775807"]), "OK");
    assert_eq!(
        s.cli(&["INCR", "max"]),
        "(error) ERR increment or decrement would overflow"
    );
}

#[test]
fn mget_mset() {
    let s = Server::start(&[]);
    assert_eq!(s.cli(&["MSET", "a", "1", "b", "2", "c", "3"]), "OK");
    assert_eq!(
        s.cli(&["MGET", "a", "nope", "c"]),
        "1) \"1\"\n2) (nil)\n3) \"3\""
    );
    assert_eq!(
        s.cli(&["MSET", "a", "1", "b"]),
        "(error) ERR wrong number of arguments for 'mset' command"
    );
}

#[test]
fn expire_ttl_persist() {
    let s = Server::start(&[]);
    assert_eq!(s.cli(&["TTL", "none"]), "(integer) -2");
    assert_eq!(s.cli(&["PTTL", "none"]), "(integer) -2");
    assert_eq!(s.cli(&["EXPIRE", "none", "10"]), "(integer) 0");
    assert_eq!(s.cli(&["SET", "k", "v"]), "OK");
    assert_eq!(s.cli(&["TTL", "k"]), "(integer) -1");
    assert_eq!(s.cli(&["EXPIRE", "k", "100"]), "(integer) 1");
    let pttl: i64 = s
        .cli(&["PTTL", "k"])
        .trim_start_matches("(integer) ")
        .parse()
        .expect("pttl");
    assert!((1..=100_000).contains(&pttl), "{pttl}");
    assert_eq!(s.cli(&["PERSIST", "k"]), "(integer) 1");
    assert_eq!(s.cli(&["PERSIST", "k"]), "(integer) 0");
    assert_eq!(s.cli(&["TTL", "k"]), "(integer) -1");
    assert_eq!(s.cli(&["PEXPIRE", "k", "100000"]), "(integer) 1");
    assert_eq!(s.cli(&["GETEX", "k", "PERSIST"]), "\"v\"");
    assert_eq!(s.cli(&["TTL", "k"]), "(integer) -1");
    // Redis 7's conditions; no expiry counts as infinite for GT and LT.
    for (args, want) in [
        (&["EXPIRE", "k", "100", "XX"][..], "(integer) 0"),
        (&["EXPIRE", "k", "100", "GT"], "(integer) 0"),
        (&["EXPIRE", "k", "100", "NX"], "(integer) 1"),
        (&["EXPIRE", "k", "200", "NX"], "(integer) 0"),
        (&["EXPIRE", "k", "50", "GT"], "(integer) 0"),
        (&["EXPIRE", "k", "50", "LT"], "(integer) 1"),
        (&["TTL", "k"], "(integer) 50"),
        (
            &["EXPIRE", "k", "1", "NX", "LT"],
            "(error) ERR NX and XX, GT or LT options at the same time are not compatible",
        ),
    ] {
        assert_eq!(s.cli(args), want, "{args:?}");
    }
    // A non-positive time deletes the key, as in Redis.
    assert_eq!(s.cli(&["EXPIRE", "k", "-1"]), "(integer) 1");
    assert_eq!(s.cli(&["EXISTS", "k"]), "(integer) 0");
}

#[test]
fn del_exists_dbsize_flushdb() {
    let s = Server::start(&[]);
    assert_eq!(s.cli(&["DBSIZE"]), "(integer) 0");
    assert_eq!(s.cli(&["MSET", "a", "1", "b", "2", "c", "3"]), "OK");
    assert_eq!(s.cli(&["EXISTS", "a", "b", "nope", "a"]), "(integer) 3");
    assert_eq!(s.cli(&["DEL", "a", "b", "nope"]), "(integer) 2");
    assert_eq!(s.cli(&["EXISTS", "a"]), "(integer) 0");
    assert_eq!(s.cli(&["DBSIZE"]), "(integer) 1");
    // A cluster has no cluster-wide flush: a clear error, and nothing deleted.
    assert_eq!(
        s.cli(&["FLUSHDB"]),
        "(error) ERR FLUSHDB is not supported in cluster mode (delete keys one by one)"
    );
    assert_eq!(s.cli(&["DBSIZE"]), "(integer) 1");
    assert_eq!(s.cli(&["SELECT", "0"]), "OK");
    assert_eq!(
        s.cli(&["SELECT", "1"]),
        "(error) ERR DB index is out of range"
    );
}

#[test]
fn flushdb_in_standalone_mode() {
    let s = Server::standalone(&[]);
    assert_eq!(s.cli(&["MSET", "a", "1", "b", "2", "c", "3"]), "OK");
    assert_eq!(s.cli(&["DBSIZE"]), "(integer) 3");
    assert_eq!(s.cli(&["FLUSHDB"]), "OK");
    assert_eq!(s.cli(&["DBSIZE"]), "(integer) 0");
    assert_eq!(s.cli(&["SELECT", "0"]), "OK");
    assert_eq!(
        s.cli(&["SELECT", "1"]),
        "(error) ERR DB index is out of range"
    );
}

#[test]
fn hello_client_config_command() {
    let s = Server::start(&[]);
    let hello = s.cli(&["-3", "HELLO", "3"]);
    assert!(hello.contains("\"proto\" => (integer) 3"), "{hello}");
    assert!(hello.contains("\"role\" => \"master\""), "{hello}");
    assert_eq!(
        s.cli(&["HELLO", "4"]),
        "(error) NOPROTO unsupported protocol version"
    );
    assert_eq!(s.cli(&["CLIENT", "SETINFO", "LIB-NAME", "redis-cli"]), "OK");
    assert_eq!(s.cli(&["CLIENT", "SETINFO", "LIB-VER", "7.0"]), "OK");
    let session = s.cli_session("CLIENT SETNAME worker-1\nCLIENT GETNAME\nCLIENT ID\n");
    let lines: Vec<&str> = session.lines().collect();
    assert_eq!(lines[..2], ["OK", "\"worker-1\""]);
    assert!(lines[2].starts_with("(integer) "), "{session}");
    assert_eq!(s.cli(&["CONFIG", "GET", "save"]), "1) \"save\"\n2) \"\"");
    assert_eq!(
        s.cli(&["CONFIG", "GET", "appendonly"]),
        "1) \"appendonly\"\n2) \"no\""
    );
    let count = s.cli(&["COMMAND", "COUNT"]);
    assert!(count.starts_with("(integer) "), "{count}");
}

#[test]
fn info_has_the_documented_sections() {
    let s = Server::standalone(&["--max-memory", "64mb"]);
    assert_eq!(s.cli(&["SET", "k", "v", "EX", "100"]), "OK");
    assert_eq!(s.cli(&["SET", "j", "v"]), "OK");
    let out = redis_cli_raw(&s, &["INFO"]);
    for want in [
        "# Server",
        "redis_version:",
        "# Clients",
        "connected_clients:",
        "# Memory",
        "used_memory:",
        "maxmemory:67108864",
        "# Keyspace",
        "db0:keys=2,expires=1",
        "# Cluster",
        "mycel_mode:standalone",
        &format!("mycel_node_id:{}", s.node_id),
    ] {
        assert!(out.contains(want), "{want:?} missing from INFO:\n{out}");
    }
    let memory = redis_cli_raw(&s, &["INFO", "memory"]);
    assert!(
        memory.contains("# Memory") && !memory.contains("# Server"),
        "{memory}"
    );
    assert_eq!(
        s.cli(&["CONFIG", "GET", "maxmemory"]),
        "1) \"maxmemory\"\n2) \"67108864\""
    );
}

fn redis_cli_raw(s: &Server, args: &[&str]) -> String {
    let out = crate::util::redis_cli()
        .args(["-h", "127.0.0.1", "-p", &s.resp.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn unknown_command_and_wrong_arity_use_redis_wording() {
    let s = Server::start(&[]);
    assert_eq!(
        s.cli(&["NOPE", "a", "b"]),
        // Redis ends the message with a space after the last argument; the helper trims
        // redis-cli's output at the end.
        "(error) ERR unknown command 'NOPE', with args beginning with: 'a' 'b'"
    );
    assert_eq!(
        s.cli(&["GET"]),
        "(error) ERR wrong number of arguments for 'get' command"
    );
    assert_eq!(
        s.cli(&["SET", "k"]),
        "(error) ERR wrong number of arguments for 'set' command"
    );
    assert_eq!(
        s.cli(&["CLIENT", "GETNAME", "x"]),
        "(error) ERR wrong number of arguments for 'client|getname' command"
    );
}

#[test]
fn buckets_are_separate_keyspaces() {
    let s = Server::standalone(&[]);
    let out = s.cli_session(
        "MYCEL.BUCKET\nSET k default-value\nMYCEL.BUCKET sessions CREATE PX 100000\nMYCEL.BUCKET\nGET k\nSET k session-value\nTTL k\nMYCEL.BUCKET default\nGET k\nMYCEL.BUCKET nope\n",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..6],
        ["\"default\"", "OK", "OK", "\"sessions\"", "(nil)", "OK"],
        "{out}"
    );
    let ttl: i64 = lines[6]
        .trim_start_matches("(integer) ")
        .parse()
        .expect("ttl");
    assert!(
        (1..=100).contains(&ttl),
        "bucket default TTL applied: {out}"
    );
    assert_eq!(
        lines[7..],
        [
            "OK",
            "\"default-value\"",
            "(error) ERR unknown bucket \"nope\""
        ]
    );
}

#[test]
fn redis_benchmark_smoke() {
    let s = Server::start(&[]);
    let child = crate::util::redis_benchmark()
        .args(["-h", "127.0.0.1", "-p", &s.resp.port().to_string()])
        .args(["-n", "2000", "-c", "4", "-t", "set,get", "-q"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("redis-benchmark");
    let out = crate::util::wait_output(child);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("SET: ") && text.contains("GET: "), "{text}");
    assert!(!text.to_lowercase().contains("error"), "{text}");
    assert!(
        s.cli(&["DBSIZE"]) == "(integer) 1",
        "redis-benchmark writes key:__rand_int__ without -r"
    );
}
