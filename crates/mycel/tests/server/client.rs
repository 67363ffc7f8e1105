//! A Rust Redis client library (the `redis` crate, synchronous API) against `mycel --dev`:
//! its connection handshake, typed replies, pipelines and error mapping work unchanged.

use std::time::Duration;

use redis::{Commands, RedisResult};

use crate::util::Server;

fn connect(s: &Server, query: &str) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{}/{query}", s.resp)).expect("url");
    client
        .get_connection_with_timeout(crate::util::GUARD)
        .expect("connect")
}

#[test]
fn typed_commands_pipelines_and_errors() {
    let s = Server::start(&[]);
    let mut con = connect(&s, "");
    let () = con.set("greeting", "hello").expect("set");
    let v: Option<String> = con.get("greeting").expect("get");
    assert_eq!(v.as_deref(), Some("hello"));
    let missing: Option<String> = con.get("missing").expect("get");
    assert_eq!(missing, None);
    let n: i64 = con.incr("counter", 5).expect("incr");
    assert_eq!(n, 5);
    let err: RedisResult<i64> = con.incr("greeting", 1);
    let err = err.expect_err("not an integer");
    assert!(
        err.to_string()
            .contains("value is not an integer or out of range"),
        "{err}"
    );
    let () = con.set_ex("temp", "v", 100).expect("set_ex");
    let ttl: i64 = con.ttl("temp").expect("ttl");
    assert!((1..=100).contains(&ttl), "{ttl}");
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg("greeting")
        .arg("missing")
        .arg("counter")
        .query(&mut con)
        .expect("mget");
    assert_eq!(
        values,
        [Some("hello".to_owned()), None, Some("5".to_owned())]
    );
    let (a, b, c): (i64, i64, Option<String>) = redis::pipe()
        .incr("p", 1)
        .incr("p", 2)
        .get("none")
        .query(&mut con)
        .expect("pipeline");
    assert_eq!((a, b, c), (1, 3, None));
    let deleted: i64 = con.del(&["greeting", "temp", "missing"]).expect("del");
    assert_eq!(deleted, 2);
}

#[test]
fn resp3_connections_work() {
    let s = Server::start(&[]);
    let mut con = connect(&s, "?protocol=resp3");
    let () = con.set("k", "v").expect("set");
    let v: Option<String> = con.get("k").expect("get");
    assert_eq!(v.as_deref(), Some("v"));
    let missing: Option<String> = con.get("nope").expect("get");
    assert_eq!(missing, None);
    // Verbatim text replies (RESP3 `=`) reach the client as strings.
    let info: String = redis::cmd("INFO")
        .arg("replication")
        .query(&mut con)
        .expect("info");
    assert!(info.contains("role:master"), "{info}");
    let me: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query(&mut con)
        .expect("client info");
    assert!(me.contains(" resp=3 "), "{me}");
}

#[test]
fn string_commands_beyond_get_and_set() {
    let s = Server::start(&[]);
    let mut con = connect(&s, "");
    let old: Option<String> = con.getset("k", "hello").expect("getset");
    assert_eq!(old, None);
    let len: usize = con.strlen("k").expect("strlen");
    assert_eq!(len, 5);
    let kind: String = con.key_type("k").expect("type");
    assert_eq!(kind, "string");
    let kind: String = con.key_type("nope").expect("type");
    assert_eq!(kind, "none");
    let () = con.set_ex("k", "v", 100).expect("set_ex");
    let at: i64 = con.expire_time("k").expect("expiretime");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let now = i64::try_from(now).expect("seconds");
    assert!((now..=now + 101).contains(&at), "{at} vs {now}");
}

/// A password in the URL: the client authenticates on connecting; without it, or with a
/// wrong one, commands are refused with the error the library maps to an authentication
/// failure.
#[test]
fn password_in_the_url() {
    let s = Server::start(&["--requirepass", "s3cret"]);
    let mut con = redis::Client::open(format!("redis://:s3cret@{}/", s.resp))
        .expect("url")
        .get_connection_with_timeout(crate::util::GUARD)
        .expect("connect with the password");
    let () = con.set("k", "v").expect("set");
    let v: Option<String> = con.get("k").expect("get");
    assert_eq!(v.as_deref(), Some("v"));

    let wrong = redis::Client::open(format!("redis://:nope@{}/", s.resp))
        .expect("url")
        .get_connection_with_timeout(crate::util::GUARD);
    let err = wrong.err().expect("a wrong password is refused");
    assert_eq!(err.kind(), redis::ErrorKind::AuthenticationFailed, "{err}");

    let mut anonymous = connect(&s, "");
    let refused: RedisResult<Option<String>> = anonymous.get("k");
    let err = refused.expect_err("refused before AUTH");
    assert!(err.to_string().contains("Authentication required"), "{err}");
}

/// `redis::pipe().atomic()` wraps its commands in MULTI/EXEC. Each transaction is applied
/// as one: eight connections each increment a counter and read it back in one
/// transaction, and every read sees its own increment and none of another's. A
/// transaction with keys in two partitions is refused whole (`CROSSSLOT`).
#[test]
fn atomic_pipelines_run_as_one_transaction() {
    let s = Server::start(&[]);
    let (threads, rounds) = (8, 100);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let mut con = connect(&s, "");
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    let (after, read): (i64, i64) = redis::pipe()
                        .atomic()
                        .incr("{counter}n", 1)
                        .get("{counter}n")
                        .query(&mut con)
                        .expect("transaction");
                    assert_eq!(after, read, "another increment came between");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let mut con = connect(&s, "");
    let total: i64 = con.get("{counter}n").expect("get");
    assert_eq!(total, threads * rounds);

    // Two keys in different partitions.
    let partitioning = mycel::Config::default().store.partitioning;
    let other = (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| partitioning.partition_of(k.as_bytes()) != partitioning.partition_of(b"key-a"))
        .expect("a key of another partition");
    let refused: RedisResult<(String, String)> = redis::pipe()
        .atomic()
        .set("key-a", "1")
        .set(&other, "2")
        .query(&mut con);
    // The client reads the queued command's CROSSSLOT error, then EXEC's EXECABORT.
    let err = refused.expect_err("refused");
    assert!(err.to_string().contains("CrossSlot"), "{err}");
    let exists: i64 = con.exists(&["key-a", other.as_str()]).expect("exists");
    assert_eq!(exists, 0, "nothing of a refused transaction is applied");
}

/// The `redis` crate's optimistic transactions (`redis::transaction`: `WATCH`, read,
/// `MULTI` ... `EXEC`, again while `EXEC` answers null): eight connections increment one
/// counter by reading it and writing the value plus one, and no increment is lost, each
/// lost race being retried. A write by another connection between `WATCH` and `EXEC`
/// makes `EXEC` answer null and run nothing.
#[test]
fn watch_makes_read_modify_write_safe() {
    let s = Server::start(&[]);
    let (threads, rounds) = (8, 40);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let mut con = connect(&s, "");
            std::thread::spawn(move || {
                for _ in 0..rounds {
                    let () = redis::transaction(&mut con, &["{rmw}n"], |con, pipe| {
                        let n: Option<i64> = con.get("{rmw}n")?;
                        pipe.set("{rmw}n", n.unwrap_or(0) + 1).ignore().query(con)
                    })
                    .expect("transaction");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let mut con = connect(&s, "");
    let total: i64 = con.get("{rmw}n").expect("get");
    assert_eq!(total, threads * rounds, "an increment was lost");

    watched_changes(&s);
    watched_changes(&Server::standalone(&[]));
}

/// Changes by another connection between `WATCH` and `EXEC`, each making `EXEC` answer
/// null and run nothing: a write; a write with a TTL to a key that was absent, expired
/// by `EXEC`; `FLUSHALL`, then the key written again. With nothing written, `EXEC` runs.
fn watched_changes(s: &Server) {
    let mut con = connect(s, "");
    let mut other = connect(s, "");
    let incr = |con: &mut redis::Connection| -> Option<(i64,)> {
        redis::pipe()
            .atomic()
            .incr("{rmw}side", 1)
            .query(con)
            .expect("exec")
    };
    let watch = |con: &mut redis::Connection, key: &str| {
        let ok: String = redis::cmd("WATCH").arg(key).query(con).expect("watch");
        assert_eq!(ok, "OK");
    };
    watch(&mut con, "{rmw}n");
    let () = other.set("{rmw}n", 0).expect("set");
    assert_eq!(
        incr(&mut con),
        None,
        "EXEC ran although the key was written"
    );
    watch(&mut con, "{rmw}absent");
    let () = other.pset_ex("{rmw}absent", 1, 20).expect("psetex");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        incr(&mut con),
        None,
        "EXEC ran although the key was written (expired since)"
    );
    let () = con.set("{rmw}f", "a").expect("set");
    watch(&mut con, "{rmw}f");
    let () = redis::cmd("FLUSHALL").query(&mut other).expect("flushall");
    let () = other.set("{rmw}f", "a").expect("set");
    assert_eq!(
        incr(&mut con),
        None,
        "EXEC ran although the key was flushed and written"
    );
    watch(&mut con, "{rmw}f");
    assert_eq!(incr(&mut con), Some((1,)));
}

/// An absolute expiry time queued in a transaction (`GETEX ... PXAT`, `PEXPIREAT`) is the
/// key's expiry time after `EXEC`, however long the transaction was queued: it is not
/// turned into a duration when queued.
#[test]
fn queued_expiry_times_are_absolute() {
    let s = Server::start(&[]);
    let mut con = connect(&s, "");
    let _: () = con.set("{x}a", "1").expect("set");
    let _: () = con.set("{x}b", "1").expect("set");
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("time");
    let at = now_ms + 60_000;
    let queued: String = redis::cmd("MULTI").query(&mut con).expect("multi");
    assert_eq!(queued, "OK");
    for cmd in [
        redis::cmd("GETEX").arg("{x}a").arg("PXAT").arg(at).clone(),
        redis::cmd("PEXPIREAT").arg("{x}b").arg(at).clone(),
    ] {
        let queued: String = cmd.query(&mut con).expect("queued");
        assert_eq!(queued, "QUEUED");
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (value, set): (String, i64) = redis::cmd("EXEC").query(&mut con).expect("exec");
    assert_eq!((value.as_str(), set), ("1", 1));
    for key in ["{x}a", "{x}b"] {
        let expires: u64 = redis::cmd("PEXPIRETIME")
            .arg(key)
            .query(&mut con)
            .expect("pexpiretime");
        // A few milliseconds of rounding; a time counted from queueing would be 1.5 s
        // late.
        assert!(expires.abs_diff(at) < 500, "{key}: {expires} for {at}");
    }
}
