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
    assert_eq!(s.cli(&["FLUSHDB"]), "OK");
    assert_eq!(s.cli(&["DBSIZE"]), "(integer) 0");
    assert_eq!(s.cli(&["GET", "c"]), "(nil)");
    assert_eq!(s.cli(&["FLUSHALL", "ASYNC"]), "OK");
    assert_eq!(s.cli(&["SELECT", "0"]), "OK");
    assert_eq!(
        s.cli(&["SELECT", "1"]),
        "(error) ERR DB index is out of range"
    );
}

/// MULTI/EXEC as redis-cli sends them, with Redis's replies and errors: queued commands
/// run at EXEC (an array of their replies), DISCARD drops them, a command that cannot be
/// queued fails the transaction at EXEC (EXECABORT) and nothing of it runs.
#[test]
fn multi_exec_discard() {
    let s = Server::start(&[]);
    let session =
        s.cli_session("MULTI\nSET {t}a 1\nINCR {t}a\nGET {t}a\nEXPIRE {t}a 100\nTTL {t}a\nEXEC\n");
    assert_eq!(
        session,
        "OK\nQUEUED\nQUEUED\nQUEUED\nQUEUED\nQUEUED\n1) OK\n2) (integer) 2\n3) \"2\"\n\
         4) (integer) 1\n5) (integer) 100"
    );
    // As in Redis: a bad argument (and a number of arguments that passes the command's
    // arity, as an odd MSET's) is queued and answered at EXEC, the rest runs; PING, ECHO
    // and UNWATCH are queued; WATCH is refused at once and fails nothing.
    let session = s.cli_session(
        "MULTI\nSET {t}a 1\nINCRBY {t}n notanumber\nSET {t}z 1 EX 0\nPING\nECHO hi\n\
         UNWATCH\nWATCH x\nMSET {t}a 2 {t}b\nGET {t}a\nEXEC\nGET {t}z\n",
    );
    assert_eq!(
        session,
        "OK\nQUEUED\nQUEUED\nQUEUED\nQUEUED\nQUEUED\nQUEUED\n\
         (error) ERR WATCH inside MULTI is not allowed\nQUEUED\nQUEUED\n\
         1) OK\n2) (error) ERR value is not an integer or out of range\n\
         3) (error) ERR invalid expire time in 'set' command\n4) PONG\n5) \"hi\"\n6) OK\n\
         7) (error) ERR wrong number of arguments for 'mset' command\n8) \"1\"\n(nil)"
    );
    // DEL and EXISTS of several keys: their sums, as outside a transaction.
    let session =
        s.cli_session("MULTI\nSET {t}x 1\nEXISTS {t}x {t}y {t}x\nDEL {t}x {t}y {t}x\nEXEC\n");
    assert_eq!(
        session,
        "OK\nQUEUED\nQUEUED\nQUEUED\n1) OK\n2) (integer) 2\n3) (integer) 1"
    );
    // Each command gets its own replies, however many operations the ones before it are.
    let session = s.cli_session(
        "MULTI\nSET {t}x 1\nDEL {t}x {t}y {t}z {t}x\nSET {t}x 2\nEXISTS {t}x {t}x\nGET {t}x\nEXEC\n",
    );
    assert_eq!(
        session,
        "OK\nQUEUED\nQUEUED\nQUEUED\nQUEUED\nQUEUED\n\
         1) OK\n2) (integer) 1\n3) OK\n4) (integer) 2\n5) \"2\""
    );
    // MGET, MSET, GETDEL, GETEX and EXPIREAT: each answers as outside a transaction (as
    // Redis 7 does), whatever number of operations it is made of.
    let session = s.cli_session(
        "SET {t}a 1\nMULTI\nMSET {t}m 1 {t}n 2\nMGET {t}m {t}n {t}none\nGETDEL {t}m\n\
         EXISTS {t}m\nGETEX {t}n EX 100\nTTL {t}n\nGETEX {t}n PERSIST\nTTL {t}n\n\
         GETEX {t}n EX -1\nGETEX {t}none EX -1\nGETDEL {t}none\nGETEX {t}n EXAT 4102444800\n\
         EXPIREAT {t}a 1\nEXISTS {t}a\nGETEX {t}n\nEXEC\nEXPIRETIME {t}n\n",
    );
    assert_eq!(
        session,
        "OK\nOK\nQUEUED\nQUEUED\nQUEUED\nQUEUED\nQUEUED\nQUEUED\nQUEUED\nQUEUED\nQUEUED\n\
         QUEUED\nQUEUED\nQUEUED\nQUEUED\nQUEUED\nQUEUED\n \
         1) OK\n 2) 1) \"1\"\n    2) \"2\"\n    3) (nil)\n 3) \"1\"\n 4) (integer) 0\n \
         5) \"2\"\n 6) (integer) 100\n 7) \"2\"\n 8) (integer) -1\n \
         9) (error) ERR invalid expire time in 'getex' command\n10) (nil)\n11) (nil)\n\
         12) \"2\"\n13) (integer) 1\n14) (integer) 0\n15) \"2\"\n(integer) 4102444800"
    );
    let session = s.cli_session(
        "EXEC\nDISCARD\nMULTI\nMULTI\nSET {t}b 1\nDISCARD\nGET {t}b\nMULTI\nEXEC\nUNWATCH\n",
    );
    assert_eq!(
        session,
        "(error) ERR EXEC without MULTI\n(error) ERR DISCARD without MULTI\nOK\n\
         (error) ERR MULTI calls can not be nested\nQUEUED\nOK\n(nil)\nOK\n(empty array)\nOK"
    );
    // Refused while queued, each makes EXEC refuse the whole transaction: a command a
    // transaction does not take, an unknown command, a wrong number of arguments.
    for refused in ["MSETNX {t}c 1 {t}d 2", "NOSUCH {t}c", "GET", "WATCH"] {
        let session = s.cli_session(&format!(
            "MULTI\nSET {{t}}c 1\n{refused}\nEXEC\nGET {{t}}c\n"
        ));
        let lines: Vec<&str> = session.lines().collect();
        assert_eq!(lines.len(), 5, "{session}");
        assert_eq!(lines[..2], ["OK", "QUEUED"], "{refused}: {session}");
        assert!(lines[2].starts_with("(error) ERR"), "{refused}: {session}");
        assert_eq!(
            lines[3..],
            [
                "(error) EXECABORT Transaction discarded because of previous errors.",
                "(nil)"
            ],
            "{refused}: {session}"
        );
    }
    let stats = s.cli(&["INFO", "commandstats"]);
    for command in ["multi", "exec", "incr"] {
        assert!(
            stats.contains(&format!("cmdstat_{command}:calls=")),
            "{command} in {stats}"
        );
    }
    let errors = s.cli(&["INFO", "errorstats"]);
    assert!(errors.contains("errorstat_EXECABORT:count=4"), "{errors}");
}

/// `WATCH`, as Redis 7 answers it (standalone and on a cluster node): `EXEC` answers
/// null and runs nothing once a watched key was written, deleted, or created and deleted
/// again (by this connection here; by another in `client.rs`); `UNWATCH`, `EXEC` and
/// `DISCARD` forget the keys.
#[test]
fn watch_runs_exec_only_if_unchanged() {
    let script = "SET {w}a 1\nWATCH {w}a\nSET {w}a 2\nMULTI\nSET {w}a 3\nEXEC\nGET {w}a\n\
         WATCH {w}a {w}b\nMULTI\nSET {w}a 4\nGET {w}b\nEXEC\n\
         WATCH {w}a\nUNWATCH\nSET {w}a 5\nMULTI\nINCR {w}a\nEXEC\n\
         WATCH {w}a\nDEL {w}a\nMULTI\nEXEC\n\
         WATCH {w}new\nSET {w}new 1\nDEL {w}new\nMULTI\nEXEC\n\
         WATCH {w}a\nSET {w}a 1\nMULTI\nDISCARD\nMULTI\nSET {w}a 9\nEXEC\n\
         WATCH {w}a\nMYCEL.BUCKET default\nMULTI\nWATCH {w}a\nEXEC\nWATCH\n";
    let want = "OK\nOK\nOK\nOK\nQUEUED\n(nil)\n\"2\"\n\
         OK\nOK\nQUEUED\nQUEUED\n1) OK\n2) (nil)\n\
         OK\nOK\nOK\nOK\nQUEUED\n1) (integer) 6\n\
         OK\n(integer) 1\nOK\n(nil)\n\
         OK\nOK\n(integer) 1\nOK\n(nil)\n\
         OK\nOK\nOK\nOK\nOK\nQUEUED\n1) OK\n\
         OK\n(error) ERR MYCEL.BUCKET while keys are watched: UNWATCH (or EXEC) first\nOK\n\
         (error) ERR WATCH inside MULTI is not allowed\n(empty array)\n\
         (error) ERR wrong number of arguments for 'watch' command";
    for s in [Server::start(&[]), Server::standalone(&[])] {
        assert_eq!(s.cli_session(script), want);
    }
    // In a cluster the watched keys are of one partition, with the transaction's.
    let s = Server::start(&[]);
    assert_eq!(
        s.cli_session("WATCH a b c\nWATCH {w}a\nMULTI\nSET {w}b 1\nSET {z}b 1\nEXEC\n"),
        "(error) CROSSSLOT Keys in request don't hash to the same slot\nOK\nOK\nQUEUED\n\
         (error) CROSSSLOT Keys in request don't hash to the same slot\n\
         (error) EXECABORT Transaction discarded because of previous errors."
    );
    // A refused WATCH left keys unwatched: the next EXEC runs nothing.
    assert_eq!(
        s.cli_session("WATCH a b c\nMULTI\nSET {w}b 2\nEXEC\nGET {w}b\n"),
        "(error) CROSSSLOT Keys in request don't hash to the same slot\nOK\nQUEUED\n(nil)\n(nil)"
    );
    let mut args = vec!["WATCH".to_owned()];
    args.extend((0..=4096).map(|i| format!("{{w}}{i}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(
        s.cli(&args),
        "(error) ERR WATCH of more than 4096 keys or 1024 KiB of keys on one connection"
    );
}

/// Standalone, every key is in the one store: a transaction may span partitions.
#[test]
fn multi_exec_across_partitions_when_standalone() {
    let s = Server::standalone(&[]);
    let session = s.cli_session("MULTI\nSET a 1\nSET b 2\nSET c 3\nEXEC\nDBSIZE\n");
    assert_eq!(
        session,
        "OK\nQUEUED\nQUEUED\nQUEUED\n1) OK\n2) OK\n3) OK\n(integer) 3"
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
    // Only database 0 exists; tools that list databases read this.
    assert_eq!(
        s.cli(&["CONFIG", "GET", "databases"]),
        "1) \"databases\"\n2) \"1\""
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
        "blocked_clients:0",
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
    // What `redis-cli --stat` shows as requests: every command executed (each redis-cli
    // run also sends commands of its own, so the count grows by at least what was sent).
    let processed = || -> u64 {
        redis_cli_raw(&s, &["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("total_commands_processed in INFO")
    };
    // What a redis-cli run adds by itself, then what three commands on a connection of
    // our own add: a bad argument counts (a call that failed, as in Redis), a wrong
    // number of arguments and an unknown command do not.
    let (first, second) = (processed(), processed());
    let own = second - first;
    let mut c = std::net::TcpStream::connect(s.resp).expect("connect");
    assert_eq!(raw_line(&mut c, "EXISTS k\r\n"), ":1");
    assert_eq!(
        raw_line(&mut c, "GETRANGE k a b\r\n"),
        "-ERR value is not an integer or out of range"
    );
    assert_eq!(
        raw_line(&mut c, "SETRANGE k -1 x\r\n"),
        "-ERR offset is out of range"
    );
    assert!(raw_line(&mut c, "GET\r\n").starts_with("-ERR wrong number of arguments"));
    assert!(raw_line(&mut c, "NOSUCH\r\n").starts_with("-ERR unknown command"));
    // Nor does an unknown subcommand.
    assert!(raw_line(&mut c, "MEMORY NOSUCH\r\n").starts_with("-ERR unknown subcommand"));
    assert_eq!(processed() - second, own + 3);
    // The same requests in `INFO commandstats` (which only `all`, `everything` or its
    // name asks for) and `errorstats`: per command its calls, time, requests refused
    // before running (wrong arity) and calls that failed; per error code its replies.
    let everything = redis_cli_raw(&s, &["INFO", "everything"]);
    let stat = |name: &str| -> Vec<(String, String)> {
        let prefix = format!("cmdstat_{name}:");
        let line = everything
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{everything}"));
        line.trim()
            .split(',')
            .map(|kv| {
                let (k, v) = kv.split_once('=').expect("key=value");
                (k.to_owned(), v.to_owned())
            })
            .collect()
    };
    let field = |stats: &[(String, String)], key: &str| -> String {
        stats
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {key} in {stats:?}"))
    };
    let getrange = stat("getrange");
    assert_eq!(field(&getrange, "calls"), "1");
    assert_eq!(field(&getrange, "failed_calls"), "1");
    assert_eq!(field(&getrange, "rejected_calls"), "0");
    let get = stat("get");
    assert_eq!(field(&get, "calls"), "0");
    assert_eq!(field(&get, "rejected_calls"), "1");
    let exists = stat("exists");
    assert_eq!(field(&exists, "calls"), "1");
    assert_eq!(field(&exists, "failed_calls"), "0");
    let set = stat("set");
    assert_eq!(field(&set, "calls"), "2");
    let usec: u64 = field(&set, "usec").parse().expect("usec");
    assert!(usec > 0, "{set:?}");
    assert!(!everything.contains("cmdstat_memory"), "{everything}");
    // Five error replies: two bad arguments, a wrong arity, an unknown command and an
    // unknown subcommand.
    assert!(
        everything.contains("\r\n# Errorstats\r\nerrorstat_ERR:count=5\r\n"),
        "{everything}"
    );
    assert!(
        everything.contains("total_error_replies:5\r\n"),
        "{everything}"
    );
    assert!(!redis_cli_raw(&s, &["INFO"]).contains("# Commandstats"));
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

/// `redis-cli --scan` and `KEYS` list the connection's bucket: every key exactly once,
/// filtered by a pattern, in standalone and cluster mode alike.
#[test]
fn scan_and_keys_list_every_key_once() {
    for (s, standalone) in [(Server::standalone(&[]), true), (Server::start(&[]), false)] {
        let mut mset = vec!["MSET"];
        let names: Vec<String> = (0..150)
            .flat_map(|i| [format!("user:{i}"), format!("order:{i}")])
            .collect();
        for k in &names {
            mset.extend([k.as_str(), "v"]);
        }
        assert_eq!(s.cli(&mset), "OK");
        let listed = |args: &[&str]| {
            // Raw output: one key per line (an empty array prints an empty line).
            let mut keys: Vec<String> = redis_cli_raw(&s, args)
                .lines()
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .collect();
            keys.sort();
            keys
        };
        let mut all = names.clone();
        all.sort();
        assert_eq!(listed(&["--scan"]), all);
        let users: Vec<String> = all
            .iter()
            .filter(|k| k.starts_with("user:"))
            .cloned()
            .collect();
        assert_eq!(listed(&["--scan", "--pattern", "user:*"]), users);
        assert_eq!(listed(&["KEYS", "*"]), all);
        let want: Vec<String> = (10..20).map(|i| format!("user:{i}")).collect();
        assert_eq!(listed(&["KEYS", "user:1?"]), want);
        assert_eq!(listed(&["KEYS", "[uo]*:14[5-9]"]).len(), 10);
        // One step: the next cursor, then the keys found.
        let step = s.cli(&["SCAN", "0", "COUNT", "100000", "TYPE", "hash"]);
        assert_eq!(step, "1) \"0\"\n2) (empty array)");
        if standalone {
            // Another bucket is another keyspace (created at run time standalone only).
            let other = s.cli_session("MYCEL.BUCKET other CREATE\nSET only-here v\nKEYS *\n");
            assert_eq!(other, "OK\nOK\n1) \"only-here\"");
            assert_eq!(listed(&["KEYS", "only-*"]), Vec::<String>::new());
        }
        assert_eq!(
            s.cli(&["SCAN", "0", "COUNT", "0"]),
            "(error) ERR syntax error"
        );
        assert_eq!(s.cli(&["SCAN", "x"]), "(error) ERR invalid cursor");
    }
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

#[test]
fn string_commands_beyond_get_and_set() {
    let s = Server::start(&[]);
    assert_eq!(s.cli(&["TYPE", "k"]), "none");
    assert_eq!(s.cli(&["STRLEN", "k"]), "(integer) 0");
    assert_eq!(s.cli(&["GETSET", "k", "hello"]), "(nil)");
    assert_eq!(s.cli(&["TYPE", "k"]), "string");
    assert_eq!(s.cli(&["STRLEN", "k"]), "(integer) 5");
    // GETSET is SET with GET: the old value back, and the TTL cleared.
    assert_eq!(s.cli(&["EXPIRE", "k", "100"]), "(integer) 1");
    assert_eq!(s.cli(&["GETSET", "k", "hi"]), "\"hello\"");
    assert_eq!(s.cli(&["TTL", "k"]), "(integer) -1");
    // EXPIRETIME rounds to the nearest second, as TTL does.
    assert_eq!(s.cli(&["EXPIRETIME", "k"]), "(integer) -1");
    assert_eq!(s.cli(&["PEXPIRETIME", "missing"]), "(integer) -2");
    assert_eq!(s.cli(&["SET", "e", "v", "PXAT", "4000000000600"]), "OK");
    assert_eq!(s.cli(&["EXPIRETIME", "e"]), "(integer) 4000000001");
    assert_eq!(s.cli(&["PEXPIRETIME", "e"]), "(integer) 4000000000600");
    // GETEX looks the key up before it checks the time.
    assert_eq!(s.cli(&["GETEX", "missing", "EX", "-1"]), "(nil)");
    assert_eq!(
        s.cli(&["GETEX", "k", "EX", "-1"]),
        "(error) ERR invalid expire time in 'getex' command"
    );
    assert_eq!(
        s.cli(&["GETEX", "k", "PX", "soon"]),
        "(error) ERR value is not an integer or out of range"
    );
    assert_eq!(s.cli(&["TTL", "k"]), "(integer) -1");
    // EXPIREAT / PEXPIREAT: an absolute deadline (in cluster mode sent as the time left,
    // so only the second is compared), conditions as EXPIRE's, the past deletes.
    assert_eq!(s.cli(&["SET", "at", "v"]), "OK");
    assert_eq!(s.cli(&["PEXPIREAT", "at", "4000000000000"]), "(integer) 1");
    assert_eq!(s.cli(&["EXPIRETIME", "at"]), "(integer) 4000000000");
    assert_eq!(
        s.cli(&["EXPIREAT", "at", "4000000001", "LT"]),
        "(integer) 0"
    );
    assert_eq!(
        s.cli(&["EXPIREAT", "at", "3000000000", "LT"]),
        "(integer) 1"
    );
    assert_eq!(s.cli(&["EXPIRETIME", "at"]), "(integer) 3000000000");
    assert_eq!(
        s.cli(&["EXPIREAT", "at", "9223372036854776"]),
        "(error) ERR invalid expire time in 'expireat' command"
    );
    assert_eq!(s.cli(&["EXPIREAT", "at", "-5"]), "(integer) 1");
    assert_eq!(s.cli(&["EXISTS", "at"]), "(integer) 0");
    assert_eq!(s.cli(&["EXPIREAT", "at", "1"]), "(integer) 0");
    // APPEND creates, extends and keeps the TTL.
    assert_eq!(s.cli(&["APPEND", "log", "Hello"]), "(integer) 5");
    assert_eq!(s.cli(&["APPEND", "log", " World"]), "(integer) 11");
    assert_eq!(s.cli(&["GET", "log"]), "\"Hello World\"");
    assert_eq!(s.cli(&["EXPIRE", "log", "100"]), "(integer) 1");
    assert_eq!(s.cli(&["APPEND", "log", "!"]), "(integer) 12");
    assert_ne!(s.cli(&["TTL", "log"]), "(integer) -1");
    // GETRANGE (and its old name SUBSTR) and SETRANGE, as Redis documents them; SETRANGE
    // keeps the TTL too, pads with zero bytes, and creates nothing with an empty value.
    assert_eq!(s.cli(&["GETRANGE", "log", "0", "4"]), "\"Hello\"");
    assert_eq!(s.cli(&["GETRANGE", "log", "-6", "-2"]), "\"World\"");
    assert_eq!(s.cli(&["SUBSTR", "log", "6", "100"]), "\"World!\"");
    assert_eq!(s.cli(&["GETRANGE", "nothing", "0", "-1"]), "\"\"");
    assert_eq!(s.cli(&["SETRANGE", "log", "6", "Redis"]), "(integer) 12");
    assert_eq!(s.cli(&["GET", "log"]), "\"Hello Redis!\"");
    assert_ne!(s.cli(&["TTL", "log"]), "(integer) -1");
    assert_eq!(s.cli(&["SETRANGE", "pad", "2", "x"]), "(integer) 3");
    assert_eq!(s.cli(&["GET", "pad"]), "\"\\x00\\x00x\"");
    assert_eq!(s.cli(&["SETRANGE", "none", "5", ""]), "(integer) 0");
    assert_eq!(s.cli(&["EXISTS", "none"]), "(integer) 0");
    assert_eq!(
        s.cli(&["SETRANGE", "pad", "-1", "x"]),
        "(error) ERR offset is out of range"
    );
    assert_eq!(
        s.cli(&["GETRANGE", "pad", "0", "x"]),
        "(error) ERR value is not an integer or out of range"
    );
    // TOUCH counts the keys that exist, each time it is named.
    assert_eq!(s.cli(&["TOUCH", "pad", "none", "pad"]), "(integer) 2");
    // MEMORY USAGE: the entry's weight against the memory budget (3 + 3 + the overhead
    // of an entry), null for a missing key. redis-cli --memkeys uses it.
    assert_eq!(
        s.cli(&["MEMORY", "USAGE", "pad"]),
        format!("(integer) {}", 6 + mycel::store::ENTRY_OVERHEAD)
    );
    assert_eq!(s.cli(&["MEMORY", "USAGE", "none", "SAMPLES", "0"]), "(nil)");
    // INCRBYFLOAT answers Redis's digits (f64 would say 0.30000000000000004) and keeps
    // the TTL.
    assert_eq!(
        s.cli(&["INCRBYFLOAT", "log", "1"]),
        "(error) ERR value is not a valid float"
    );
    assert_eq!(s.cli(&["INCRBYFLOAT", "price", "0.1"]), "\"0.1\"");
    assert_eq!(s.cli(&["INCRBYFLOAT", "price", "0.2"]), "\"0.3\"");
    assert_eq!(s.cli(&["EXPIRE", "price", "100"]), "(integer) 1");
    assert_eq!(s.cli(&["INCRBYFLOAT", "price", "-5.0e-1"]), "\"-0.2\"");
    assert_ne!(s.cli(&["TTL", "price"]), "(integer) -1");
    assert_eq!(
        s.cli(&["INCRBYFLOAT", "price", "x"]),
        "(error) ERR value is not a valid float"
    );
}

/// `RENAME`, `RENAMENX`, `MSETNX` and `COPY` as Redis answers them; in cluster mode
/// (`--dev`) their keys must share a partition (a hash tag), standalone any keys do.
#[test]
fn rename_msetnx_copy() {
    for (s, standalone) in [(Server::standalone(&[]), true), (Server::start(&[]), false)] {
        assert_eq!(
            s.cli(&["RENAME", "{u}nope", "{u}b"]),
            "(error) ERR no such key"
        );
        assert_eq!(
            s.cli(&["RENAMENX", "{u}nope", "{u}b"]),
            "(error) ERR no such key"
        );
        assert_eq!(s.cli(&["SET", "{u}a", "1", "EX", "100"]), "OK");
        assert_eq!(s.cli(&["SET", "{u}c", "3"]), "OK");
        assert_eq!(s.cli(&["RENAMENX", "{u}a", "{u}c"]), "(integer) 0");
        assert_eq!(s.cli(&["RENAMENX", "{u}a", "{u}a"]), "(integer) 0");
        assert_eq!(s.cli(&["RENAME", "{u}a", "{u}a"]), "OK");
        assert_eq!(s.cli(&["RENAME", "{u}a", "{u}c"]), "OK");
        assert_eq!(s.cli(&["GET", "{u}a"]), "(nil)");
        assert_eq!(s.cli(&["GET", "{u}c"]), "\"1\"");
        assert_ne!(
            s.cli(&["TTL", "{u}c"]),
            "(integer) -1",
            "the TTL moves along"
        );
        assert_eq!(s.cli(&["RENAMENX", "{u}c", "{u}d"]), "(integer) 1");
        assert_eq!(s.cli(&["MSETNX", "{u}x", "1", "{u}y", "2"]), "(integer) 1");
        assert_eq!(s.cli(&["MSETNX", "{u}y", "3", "{u}z", "4"]), "(integer) 0");
        assert_eq!(s.cli(&["GET", "{u}y"]), "\"2\"");
        assert_eq!(s.cli(&["GET", "{u}z"]), "(nil)", "all or nothing");
        assert_eq!(
            s.cli(&["MSETNX", "{u}x"]),
            "(error) ERR wrong number of arguments for 'msetnx' command"
        );
        assert_eq!(s.cli(&["COPY", "{u}x", "{u}y"]), "(integer) 0");
        assert_eq!(
            s.cli(&["COPY", "{u}x", "{u}y", "REPLACE", "DB", "0"]),
            "(integer) 1"
        );
        assert_eq!(s.cli(&["MGET", "{u}x", "{u}y"]), "1) \"1\"\n2) \"1\"");
        assert_eq!(s.cli(&["COPY", "{u}nope", "{u}q"]), "(integer) 0");
        assert_eq!(
            s.cli(&["COPY", "{u}x", "{u}x"]),
            "(error) ERR source and destination objects are the same"
        );
        assert_eq!(
            s.cli(&["COPY", "{u}x", "{u}q", "DB", "1"]),
            "(error) ERR DB index is out of range"
        );
        // `{a}` and `{b}` hash to different partitions.
        assert_eq!(s.cli(&["SET", "{a}k", "v"]), "OK");
        let across = [
            s.cli(&["COPY", "{a}k", "{b}c"]),
            s.cli(&["RENAME", "{a}k", "{b}k"]),
            s.cli(&["MSETNX", "{a}new", "1", "{b}new", "2"]),
        ];
        if standalone {
            assert_eq!(across, ["(integer) 1", "OK", "(integer) 1"]);
        } else {
            let crossslot = "(error) CROSSSLOT Keys in request don't hash to the same slot";
            assert_eq!(across, [crossslot, crossslot, crossslot]);
            assert_eq!(
                s.cli(&["EXISTS", "{a}new", "{b}new", "{b}c"]),
                "(integer) 0"
            );
        }
    }
}

#[test]
fn server_commands_time_role_info_config() {
    let s = Server::start(&[]);
    let time = s.cli(&["TIME"]);
    let parts: Vec<u64> = time
        .lines()
        .map(|l| {
            l.split_once(") ")
                .expect("numbered line")
                .1
                .trim_matches('"')
                .parse()
                .expect("a number")
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert_eq!(parts.len(), 2, "{time}");
    assert!(
        parts[0].abs_diff(now) < 60 && parts[1] < 1_000_000,
        "{time}"
    );
    assert_eq!(
        s.cli(&["ROLE"]),
        "1) \"master\"\n2) (integer) 0\n3) (empty array)"
    );
    let persistence = redis_cli_raw(&s, &["INFO", "persistence"]);
    assert!(persistence.contains("loading:0"), "{persistence}");
    assert!(!persistence.contains("# Server"), "{persistence}");
    let replication = redis_cli_raw(&s, &["INFO", "replication"]);
    assert!(replication.contains("role:master"), "{replication}");
    let set = s.cli(&["CONFIG", "SET", "maxmemory", "1gb"]);
    assert!(
        set.starts_with("(error) ERR CONFIG SET failed (possibly related to argument 'maxmemory')")
            && set.contains("--max-memory"),
        "{set}"
    );
    assert_eq!(
        s.cli(&["COMMAND", "INFO", "get", "nosuch"]),
        "1) 1) \"get\"\n   2) (integer) 2\n   3) 1) readonly\n      2) fast\n   4) (integer) 1\n   5) (integer) 1\n   6) (integer) 1\n2) (nil)"
    );
    let list = s.cli(&["COMMAND", "LIST"]);
    assert!(
        list.contains("\"getset\"") && list.contains("\"mycel.bucket\""),
        "{list}"
    );
}

/// `COMMAND GETKEYS` finds keys from the command table's positions, with Redis's errors;
/// `CLIENT`, `CONFIG` and `COMMAND` answer `HELP`; `EXPIRE` takes its options.
#[test]
fn command_getkeys_and_help() {
    let s = Server::start(&[]);
    let keys = |args: &[&str]| {
        let mut all = vec!["COMMAND", "GETKEYS"];
        all.extend_from_slice(args);
        s.cli(&all)
    };
    assert_eq!(keys(&["SET", "k", "v", "EX", "10"]), "1) \"k\"");
    assert_eq!(keys(&["mset", "a", "1", "b", "2"]), "1) \"a\"\n2) \"b\"");
    assert_eq!(
        keys(&["DEL", "a", "b", "c"]),
        "1) \"a\"\n2) \"b\"\n3) \"c\""
    );
    assert_eq!(keys(&["RENAME", "a", "b"]), "1) \"a\"\n2) \"b\"");
    assert_eq!(
        keys(&["GET"]),
        "(error) ERR wrong number of arguments for 'command|getkeys' command"
    );
    assert_eq!(
        keys(&["GET", "a", "b"]),
        "(error) ERR Invalid number of arguments specified for command"
    );
    assert_eq!(
        keys(&["NOSUCH", "a"]),
        "(error) ERR Invalid command specified"
    );
    assert_eq!(
        keys(&["ECHO", "a"]),
        "(error) ERR The command has no key arguments"
    );
    assert_eq!(keys(&["EXPIRE", "k", "10", "NX"]), "1) \"k\"");
    assert!(
        s.cli(&["COMMAND", "INFO", "expire"])
            .starts_with("1) 1) \"expire\"\n   2) (integer) -3"),
    );
    for (cmd, first) in [
        ("CLIENT", "CLIENT <subcommand>"),
        ("CONFIG", "CONFIG <subcommand>"),
        ("COMMAND", "COMMAND <subcommand>"),
    ] {
        let help = redis_cli_raw(&s, &[cmd, "HELP"]);
        assert!(help.starts_with(first), "{help}");
        assert!(help.contains("HELP\n"), "{help}");
    }
    assert_eq!(s.cli(&["FLUSHDB", "a", "b"]), "(error) ERR syntax error");
}

/// Sends a command on a raw connection and reads one line of reply.
fn raw_line(c: &mut std::net::TcpStream, request: &str) -> String {
    use std::io::{BufRead, Write};
    c.write_all(request.as_bytes()).expect("write");
    let mut line = String::new();
    std::io::BufReader::new(c)
        .read_line(&mut line)
        .expect("read");
    line.trim_end().to_owned()
}

#[test]
fn client_list_and_info_show_every_connection() {
    let s = Server::start(&[]);
    let mut a = s.connect();
    let id = raw_line(&mut a, "CLIENT ID\r\n");
    let id = id.trim_start_matches(':').to_owned();
    assert_eq!(raw_line(&mut a, "CLIENT SETNAME worker-a\r\n"), "+OK");
    assert_eq!(raw_line(&mut a, "CLIENT SETINFO LIB-NAME mylib\r\n"), "+OK");
    assert_eq!(raw_line(&mut a, "CLIENT SETINFO LIB-VER 1.2\r\n"), "+OK");
    let mine = format!("id={id} ");
    let list = redis_cli_raw(&s, &["CLIENT", "LIST"]);
    let line = list
        .lines()
        .find(|l| l.starts_with(&mine))
        .unwrap_or_else(|| panic!("client {id} missing:\n{list}"));
    for want in [
        "name=worker-a",
        "lib-name=mylib",
        "lib-ver=1.2",
        "resp=2",
        "db=0",
        "cmd=client|setinfo",
    ] {
        assert!(line.contains(want), "{want} missing: {line}");
    }
    let field = |name: &str| -> u64 {
        let at = line.find(&format!(" {name}=")).expect(name) + name.len() + 2;
        line[at..]
            .split(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect(name)
    };
    assert!(field("idle") <= field("age"), "{line}");
    assert_eq!(
        list.lines().count(),
        2,
        "redis-cli and the raw client:\n{list}"
    );
    // Filters: by ID (in the order given, repeats repeated, unknown IDs skipped, as in
    // Redis), and by a type no connection has.
    let only = redis_cli_raw(&s, &["CLIENT", "LIST", "ID", &id, "0", "-1", &id]);
    assert_eq!(only.lines().count(), 2, "{only}");
    assert!(only.lines().all(|l| l.starts_with(&mine)), "{only}");
    assert_eq!(redis_cli_raw(&s, &["CLIENT", "LIST", "TYPE", "pubsub"]), "");
    // CLIENT INFO is the caller's own line; HELLO 3 shows as resp=3.
    let info = s.cli_session("HELLO 3\nCLIENT INFO\n");
    assert!(info.contains(" resp=3 "), "{info}");
    assert!(info.contains(" cmd=client|info "), "{info}");
    // A new connection has run nothing yet; one that ran a GET shows it.
    let mut b = s.connect();
    // (Its registration may trail the accept when connections run on several threads.)
    eventually(
        "the new connection in CLIENT LIST, having run nothing",
        || {
            redis_cli_raw(&s, &["CLIENT", "LIST"])
                .matches(" cmd=NULL ")
                .count()
                == 1
        },
    );
    assert_eq!(raw_line(&mut b, "GET nothing\r\n"), "$-1");
    let after = redis_cli_raw(&s, &["CLIENT", "LIST"]);
    assert!(after.contains(" cmd=get "), "{after}");
    // Each command by its own name, also one refused for its arguments.
    for (request, shown) in [
        ("INCR counter\r\n", " cmd=incr "),
        ("PSETEX k 1000 v\r\n", " cmd=psetex "),
        ("PEXPIRE k 5000\r\n", " cmd=pexpire "),
        ("DECR\r\n", " cmd=decr "),
        ("SUBSTR k 0 1\r\n", " cmd=substr "),
        ("TOUCH k\r\n", " cmd=touch "),
        ("MEMORY USAGE k\r\n", " cmd=memory|usage "),
        // Refused for their arguments: still shown by their subcommand, as Redis does;
        // a subcommand Redis does not know is NULL.
        ("MEMORY USAGE k x\r\n", " cmd=memory|usage "),
        ("CONFIG GET\r\n", " cmd=config|get "),
        ("MEMORY FOO\r\n", " cmd=NULL "),
        ("MEMORY\r\n", " cmd=memory "),
        ("NOSUCH\r\n", " cmd=NULL "),
    ] {
        raw_line(&mut b, request);
        let list = redis_cli_raw(&s, &["CLIENT", "LIST"]);
        assert!(list.contains(shown), "{shown} missing:\n{list}");
    }
    drop(b);
    // A closed connection leaves the list.
    drop(a);
    eventually("the closed connection leaving CLIENT LIST", || {
        !redis_cli_raw(&s, &["CLIENT", "LIST"]).contains(&mine)
    });
}

/// `CLIENT KILL` closes other connections wherever they are served (two connection
/// threads here), takes them out of `CLIENT LIST` at once, and answers as Redis 7 does in
/// both forms.
#[test]
fn client_kill_closes_matching_connections() {
    use crate::util::{expect_closed, roundtrip};
    let s = Server::start(&["--resp-threads", "2"]);
    let id_of = |c: &mut std::net::TcpStream| {
        raw_line(c, "CLIENT ID\r\n")
            .trim_start_matches(':')
            .to_owned()
    };
    // By ID, from another connection: counted, closed, gone from the list.
    let mut a = s.connect();
    let a_id = id_of(&mut a);
    assert_eq!(s.cli(&["CLIENT", "KILL", "ID", &a_id]), "(integer) 1");
    expect_closed(&mut a);
    let list = redis_cli_raw(&s, &["CLIENT", "LIST"]);
    assert!(!list.contains(&format!("id={a_id} ")), "{list}");
    assert_eq!(s.cli(&["CLIENT", "KILL", "ID", &a_id]), "(integer) 0");
    // The old form, by the client's address: +OK, then "No such client".
    let mut b = s.connect();
    let b_addr = b.local_addr().expect("address").to_string();
    roundtrip(&mut b, b"PING\r\n", b"+PONG\r\n");
    assert_eq!(s.cli(&["CLIENT", "KILL", &b_addr]), "OK");
    expect_closed(&mut b);
    assert_eq!(
        s.cli(&["CLIENT", "KILL", &b_addr]),
        "(error) ERR No such client"
    );
    // Filters spare the caller unless SKIPME no; a type Mycel never has matches nothing.
    let mut c = s.connect();
    let c_id = id_of(&mut c);
    let mut d = s.connect();
    roundtrip(&mut d, b"PING\r\n", b"+PONG\r\n");
    roundtrip(&mut c, b"CLIENT KILL TYPE master\r\n", b":0\r\n");
    let laddr = format!("CLIENT KILL LADDR {} USER default\r\n", s.resp);
    roundtrip(&mut c, laddr.as_bytes(), b":1\r\n");
    expect_closed(&mut d);
    roundtrip(&mut c, b"PING\r\n", b"+PONG\r\n");
    // Killing itself, the caller gets its reply and is closed after it.
    let me = format!("CLIENT KILL ID {c_id} SKIPME no\r\n");
    roundtrip(&mut c, me.as_bytes(), b":1\r\n");
    expect_closed(&mut c);
    eventually("every killed connection leaving CLIENT LIST", || {
        redis_cli_raw(&s, &["CLIENT", "LIST"]).lines().count() == 1
    });
    // A client that stopped reading its replies: the kill closes it at once, it does
    // not first receive every reply (20 MiB here, more than the socket buffers hold).
    let mut a = s.connect();
    let value = "x".repeat(1 << 20);
    let set = format!(
        "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n{value}\r\n",
        value.len()
    );
    roundtrip(&mut a, set.as_bytes(), b"+OK\r\n");
    let mut e = s.connect();
    let e_id = id_of(&mut e);
    std::io::Write::write_all(&mut e, "GET big\r\n".repeat(20).as_bytes()).expect("write");
    eventually("the GETs blocking on the full socket", || {
        redis_cli_raw(&s, &["CLIENT", "LIST"]).contains(" cmd=get ")
    });
    assert_eq!(s.cli(&["CLIENT", "KILL", "ID", &e_id]), "(integer) 1");
    let mut received = Vec::new();
    // What the socket buffers held arrives, then the end.
    let _ = std::io::Read::read_to_end(&mut e, &mut received);
    assert!(
        received.len() < 20 << 20,
        "{} bytes: every reply was sent",
        received.len()
    );
}

/// `SLOWLOG`: with a threshold of 0 every command is logged, newest first, with its
/// arguments as sent, the client's address and name, pipelined ones included; the log
/// keeps `--slowlog-max-len` entries, and `RESET` empties it without reusing IDs.
#[test]
fn slowlog_keeps_the_latest_slow_commands() {
    let s = Server::start(&["--slowlog-log-slower-than", "0", "--slowlog-max-len", "4"]);
    assert_eq!(
        s.cli(&["CONFIG", "GET", "slowlog*"]),
        "1) \"slowlog-log-slower-than\"\n2) \"0\"\n3) \"slowlog-max-len\"\n4) \"4\""
    );
    let mut c = s.connect();
    assert_eq!(raw_line(&mut c, "CLIENT SETNAME sl\r\n"), "+OK");
    // A pipeline: SET and GET run as one batch, both logged.
    {
        use std::io::{BufRead, Write};
        c.write_all(b"SET pipelined 1\r\nGET pipelined\r\n")
            .expect("write");
        let mut reader = std::io::BufReader::new(&mut c);
        for want in ["+OK", "$1", "1"] {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read");
            assert_eq!(line.trim_end(), want);
        }
    }
    let me = c.local_addr().expect("addr").to_string();
    let got = redis_cli_raw(&s, &["SLOWLOG", "GET", "2"]);
    // Raw output, a line per field: each entry's id, time, duration, arguments, address
    // and name (an empty line when it has none). Both ran as one batch: one duration.
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 15, "{got}");
    assert_eq!(
        &lines[3..7],
        ["GET", "pipelined", me.as_str(), "sl"],
        "{got}"
    );
    assert_eq!(
        &lines[10..],
        ["SET", "pipelined", "1", me.as_str(), "sl"],
        "{got}"
    );
    assert_eq!(lines[2], lines[9], "{got}");
    let ids: Vec<u64> = [lines[0], lines[7]]
        .iter()
        .map(|l| l.parse().expect("an id"))
        .collect();
    assert_eq!(ids[0], ids[1] + 1, "{got}");
    assert_eq!(s.cli(&["SLOWLOG", "LEN"]), "(integer) 4", "at most 4 kept");
    assert_eq!(s.cli(&["SLOWLOG", "RESET"]), "OK");
    // The RESET itself is logged after it ran, as Redis does.
    assert_eq!(s.cli(&["SLOWLOG", "LEN"]), "(integer) 1");
    let after = redis_cli_raw(&s, &["SLOWLOG", "GET", "-1"]);
    let first: u64 = after.lines().next().expect("an entry").parse().expect("id");
    assert!(first > ids[0], "IDs are not reused: {after}");
    assert_eq!(
        s.cli(&["SLOWLOG", "GET", "-2"]),
        "(error) ERR count should be greater than or equal to -1"
    );
    assert!(s.cli(&["SLOWLOG", "HELP"]).contains("RESET"));

    // A threshold no command reaches logs nothing.
    let quiet = Server::start(&["--slowlog-log-slower-than", "60000000"]);
    quiet.cli(&["SET", "k", "v"]);
    assert_eq!(quiet.cli(&["SLOWLOG", "LEN"]), "(integer) 0");
    assert_eq!(quiet.cli(&["SLOWLOG", "GET"]), "(empty array)");
}

/// `CONFIG SET` changes the slow log's settings at run time, checks every pair before
/// applying any, and refuses what Mycel cannot change, in Redis's words.
#[test]
fn config_set_changes_the_slow_log_settings() {
    let s = Server::start(&["--slowlog-log-slower-than", "60000000"]);
    s.cli(&["SET", "k", "v"]);
    assert_eq!(s.cli(&["SLOWLOG", "LEN"]), "(integer) 0");
    assert_eq!(
        s.cli(&[
            "CONFIG",
            "SET",
            "slowlog-log-slower-than",
            "0",
            "SLOWLOG-MAX-LEN",
            "3"
        ]),
        "OK"
    );
    // From now on every command is logged, the CONFIG SET itself included.
    assert_eq!(s.cli(&["SLOWLOG", "LEN"]), "(integer) 1");
    s.cli(&["SET", "a", "1"]);
    s.cli(&["SET", "b", "2"]);
    assert_eq!(s.cli(&["SLOWLOG", "LEN"]), "(integer) 3", "at most 3 kept");
    // A shorter log drops its oldest entries at once.
    assert_eq!(s.cli(&["CONFIG", "SET", "slowlog-max-len", "1"]), "OK");
    let only = redis_cli_raw(&s, &["SLOWLOG", "GET"]);
    assert!(only.contains("slowlog-max-len"), "{only}");
    assert!(!only.contains("SET\na\n"), "{only}");
    assert_eq!(
        s.cli(&["CONFIG", "GET", "slowlog*"]),
        "1) \"slowlog-log-slower-than\"\n2) \"0\"\n3) \"slowlog-max-len\"\n4) \"1\""
    );

    // One bad pair: nothing is applied.
    assert_eq!(
        s.cli(&[
            "CONFIG",
            "SET",
            "slowlog-max-len",
            "2",
            "slowlog-log-slower-than",
            "1.5"
        ]),
        "(error) ERR CONFIG SET failed (possibly related to argument 'slowlog-log-slower-than') - argument couldn't be parsed into an integer"
    );
    assert_eq!(
        s.cli(&["CONFIG", "GET", "slowlog-max-len"]),
        "1) \"slowlog-max-len\"\n2) \"1\""
    );
    assert_eq!(
        s.cli(&["CONFIG", "SET", "slowlog-max-len", "100001"]),
        "(error) ERR CONFIG SET failed (possibly related to argument 'slowlog-max-len') - argument must be between 0 and 100000 inclusive"
    );
    assert_eq!(
        s.cli(&["CONFIG", "SET", "slowlog-log-slower-than", "-2"]),
        "(error) ERR CONFIG SET failed (possibly related to argument 'slowlog-log-slower-than') - argument must be between -1 and 9223372036854775807 inclusive"
    );
    assert_eq!(
        s.cli(&[
            "CONFIG",
            "SET",
            "slowlog-max-len",
            "2",
            "slowlog-max-len",
            "3"
        ]),
        "(error) ERR CONFIG SET failed (possibly related to argument 'slowlog-max-len') - duplicate parameter"
    );
    assert_eq!(
        s.cli(&["CONFIG", "SET", "nosuch", "1"]),
        "(error) ERR Unknown option or number of arguments for CONFIG SET - 'nosuch'"
    );
    // What Mycel already does is accepted; persistence is refused.
    assert_eq!(
        s.cli(&["CONFIG", "SET", "save", "", "appendonly", "no"]),
        "OK"
    );
    let aof = s.cli(&["CONFIG", "SET", "appendonly", "yes"]);
    assert!(
        aof.contains("'appendonly'") && aof.contains("no data on disk"),
        "{aof}"
    );

    // -1 turns the log off.
    assert_eq!(
        s.cli(&["CONFIG", "SET", "slowlog-log-slower-than", "-1"]),
        "OK"
    );
    assert_eq!(s.cli(&["SLOWLOG", "RESET"]), "OK");
    s.cli(&["SET", "c", "3"]);
    assert_eq!(s.cli(&["SLOWLOG", "LEN"]), "(integer) 0");
}

/// With `--requirepass`, a connection runs nothing but `AUTH`, `HELLO ... AUTH` and `QUIT`
/// until it gives the password (`redis-cli -a` does it first); a wrong one changes
/// nothing, and neither reaches the slow log.
#[test]
fn requirepass_gates_every_command_until_auth() {
    let s = Server::start(&["--requirepass", "s3cret", "--slowlog-log-slower-than", "0"]);
    let noauth = "(error) NOAUTH Authentication required.";
    let wrongpass = "(error) WRONGPASS invalid username-password pair or user is disabled.";
    assert_eq!(s.cli(&["SET", "a", "1"]), noauth);
    assert_eq!(s.cli(&["PING"]), noauth);
    assert_eq!(s.cli(&["CLIENT", "ID"]), noauth);
    assert_eq!(s.cli(&["MULTI"]), noauth);
    // A number of arguments that passes the command's arity is the call's error, after
    // authentication.
    assert_eq!(s.cli(&["MSET", "a", "1", "b"]), noauth);
    // As in Redis, an unknown command and a wrong number of arguments come first.
    assert_eq!(
        s.cli(&["GET"]),
        "(error) ERR wrong number of arguments for 'get' command"
    );
    assert!(
        s.cli(&["NOSUCH"])
            .starts_with("(error) ERR unknown command 'NOSUCH'")
    );
    let hello = s.cli(&["HELLO", "3"]);
    assert!(
        hello.starts_with(
            "(error) NOAUTH HELLO must be called with the client already authenticated"
        ),
        "{hello}"
    );

    let authed = |args: &[&str]| s.cli(&[&["-a", "s3cret", "--no-auth-warning"], args].concat());
    assert_eq!(authed(&["SET", "a", "1"]), "OK");
    assert_eq!(authed(&["GET", "a"]), "\"1\"");
    // redis-cli reports the failed AUTH and sends the command anyway.
    assert_eq!(
        s.cli(&["-a", "wrong", "--no-auth-warning", "GET", "a"]),
        noauth
    );
    let hello = s.cli(&["-3", "HELLO", "3", "AUTH", "default", "s3cret"]);
    assert!(hello.contains("\"proto\" => (integer) 3"), "{hello}");
    assert_eq!(s.cli(&["HELLO", "3", "AUTH", "bob", "s3cret"]), wrongpass);

    // One connection: the wrong password and the wrong user are refused, the right one
    // (either form) is taken, and a later failure does not log the connection out.
    let session = s.cli_session(
        "AUTH wrong\nGET a\nAUTH bob s3cret\nAUTH default s3cret\nGET a\nAUTH wrong\nGET a\n\
         AUTH a b c\nSLOWLOG GET 20\n",
    );
    let lines: Vec<&str> = session.lines().collect();
    assert_eq!(
        lines[..8],
        [
            wrongpass,
            noauth,
            wrongpass,
            "OK",
            "\"1\"",
            wrongpass,
            "\"1\"",
            "(error) ERR syntax error"
        ],
        "{session}"
    );
    assert!(session.contains("\"(redacted)\""), "{session}");
    assert!(
        !session.contains("s3cret") && !session.contains("wrong"),
        "{session}"
    );

    // Refusals count as Redis counts them.
    let stats = authed(&["INFO", "errorstats"]);
    for want in ["errorstat_NOAUTH:count=", "errorstat_WRONGPASS:count="] {
        assert!(stats.contains(want), "{want} in {stats}");
    }
    let stats = authed(&["INFO", "commandstats"]);
    let set = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_set:"))
        .unwrap_or_else(|| panic!("cmdstat_set in {stats}"));
    assert!(
        set.contains("calls=1,") && set.contains("rejected_calls=1,"),
        "{set}"
    );

    // redis-benchmark authenticates each of its connections with -a.
    let out = crate::util::redis_benchmark()
        .args(["-h", "127.0.0.1", "-p", &s.resp.port().to_string()])
        .args(["-a", "s3cret", "-t", "set", "-n", "200", "-c", "2", "-q"])
        .output()
        .expect("run redis-benchmark");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("SET:"), "{out:?}");
    assert!(authed(&["DBSIZE"]).starts_with("(integer) "));
}

/// Without a password every connection is served, and `AUTH` answers as Redis's
/// passwordless default user does.
#[test]
fn auth_without_a_password_is_redis_default_user() {
    let s = Server::standalone(&[]);
    assert_eq!(
        s.cli(&["AUTH", "x"]),
        "(error) ERR AUTH <password> called without any password configured for the default \
         user. Are you sure your configuration is correct?"
    );
    assert_eq!(s.cli(&["AUTH", "default", "anything"]), "OK");
    assert_eq!(
        s.cli(&["AUTH", "bob", "x"]),
        "(error) WRONGPASS invalid username-password pair or user is disabled."
    );
    assert_eq!(
        s.cli(&["AUTH"]),
        "(error) ERR wrong number of arguments for 'auth' command"
    );
    assert_eq!(s.cli(&["SET", "a", "1"]), "OK");
}

/// SIGHUP rereads `--requirepass-file`: new `AUTH`s need the new password, a connection
/// that authenticated before stays so, and a file that does not load changes nothing.
/// Without a file to reread, SIGHUP ends the server as it would any process.
#[test]
fn sighup_rereads_the_password_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("password");
    std::fs::write(&file, "old\n").expect("write");
    let s = Server::standalone(&["--requirepass-file", file.to_str().expect("utf-8")]);
    let ping = |password: &str| s.cli(&["-a", password, "--no-auth-warning", "PING"]);
    assert_eq!(ping("old"), "PONG");
    let mut early = s.connect();
    crate::util::roundtrip(&mut early, b"AUTH old\r\n", b"+OK\r\n");

    std::fs::write(&file, "new\n").expect("write");
    crate::util::signal(s.pid(), "HUP");
    eventually("the new password taken", || ping("new") == "PONG");
    assert_eq!(ping("old"), "(error) NOAUTH Authentication required.");
    crate::util::roundtrip(&mut early, b"PING\r\n", b"+PONG\r\n");

    std::fs::write(&file, "").expect("write");
    crate::util::signal(s.pid(), "HUP");
    eventually("the failed reload counted", || {
        s.metric("mycel_reload_failures_total") == 1
    });
    assert_eq!(ping("new"), "PONG");

    let plain = Server::standalone(&[]);
    let status = plain.signal_and_wait("HUP");
    assert!(!status.success(), "{status:?}");
}
