//! Exact bytes over a raw TCP connection.

use std::io::{Read, Write};
use std::time::Duration;

use mycel::resp::encode_request;

use crate::util::{Server, eventually, expect_bytes, expect_closed, roundtrip};

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let mut batch = Vec::new();
    batch.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$2\r\n10\r\n");
    batch.extend_from_slice(b"*2\r\n$4\r\nINCR\r\n$1\r\na\r\n");
    batch.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n");
    batch.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$4\r\nnone\r\n");
    batch.extend_from_slice(b"PING\r\n");
    batch.extend_from_slice(b"*1\r\n$3\r\nGET\r\n");
    batch.extend_from_slice(b"*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nz\r\n");
    roundtrip(
        &mut c,
        &batch,
        b"+OK\r\n:11\r\n$2\r\n11\r\n$-1\r\n+PONG\r\n-ERR wrong number of arguments for 'get' command\r\n*2\r\n$2\r\n11\r\n$-1\r\n",
    );
}

/// Runs of single-key commands execute as one batch; commands between them that change
/// the connection (HELLO, MYCEL.BUCKET) apply exactly from their position, failures stay
/// with their command, and nothing after QUIT runs. Standalone and cluster alike.
#[test]
fn pipelined_batches_keep_order_and_connection_state() {
    for s in [Server::standalone(&[]), Server::start(&[])] {
        let mut c = s.connect();
        let mut batch = Vec::new();
        batch.extend_from_slice(b"SET n 1\r\nINCR n\r\nSET s text\r\nINCR s\r\n");
        batch.extend_from_slice(b"SETNX n 9\r\nEXPIRE n 100\r\nTTL n\r\nPERSIST n\r\n");
        batch.extend_from_slice(b"TTL n\r\nEXISTS n\r\nGET n\r\nHELLO 3\r\nGET none\r\n");
        batch.extend_from_slice(b"DEL n\r\nGET n\r\nSET s x GET\r\nQUIT\r\nSET after 1\r\n");
        let mut c2 = s.connect();
        let mut want = Vec::new();
        want.extend_from_slice(b"+OK\r\n:2\r\n+OK\r\n");
        want.extend_from_slice(b"-ERR value is not an integer or out of range\r\n");
        want.extend_from_slice(b":0\r\n:1\r\n:100\r\n:1\r\n:-1\r\n:1\r\n$1\r\n2\r\n");
        c.write_all(&batch).expect("write");
        expect_bytes(&mut c, &want);
        // HELLO 3's map, then RESP3 nulls.
        let mut hello = [0u8; 4];
        c.read_exact(&mut hello).expect("hello");
        assert_eq!(&hello, b"%7\r\n");
        let mut rest = Vec::new();
        while !rest.ends_with(b"master\r\n$7\r\nmodules\r\n*0\r\n") {
            let mut byte = [0u8; 1];
            c.read_exact(&mut byte).expect("hello map");
            rest.push(byte[0]);
        }
        expect_bytes(&mut c, b"_\r\n:1\r\n_\r\n$4\r\ntext\r\n+OK\r\n");
        expect_closed(&mut c);
        roundtrip(&mut c2, b"EXISTS after\r\nGET s\r\n", b":0\r\n$1\r\nx\r\n");
    }
}

#[test]
fn error_replies_are_byte_exact() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    roundtrip(
        &mut c,
        b"NOPE a b\r\n",
        b"-ERR unknown command 'NOPE', with args beginning with: 'a' 'b' \r\n",
    );
    roundtrip(
        &mut c,
        b"SET k notanumber\r\nINCR k\r\n",
        b"+OK\r\n-ERR value is not an integer or out of range\r\n",
    );
    roundtrip(
        &mut c,
        b"*1\r\n$6\r\nEXPIRE\r\n",
        b"-ERR wrong number of arguments for 'expire' command\r\n",
    );
}

#[test]
fn requests_split_across_writes_are_reassembled() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    c.set_nodelay(true).expect("nodelay");
    let request = b"*3\r\n$3\r\nSET\r\n$5\r\nsplit\r\n$12\r\nhello\r\nworld\r\n*2\r\n$3\r\nGET\r\n$5\r\nsplit\r\n";
    for b in request {
        c.write_all(&[*b]).expect("write one byte");
        c.flush().expect("flush");
    }
    expect_bytes(&mut c, b"+OK\r\n$12\r\nhello\r\nworld\r\n");
}

#[test]
fn inline_commands_work_like_redis() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    roundtrip(&mut c, b"PING\r\n", b"+PONG\r\n");
    roundtrip(&mut c, b"SET \"a key\" 'it\\'s'\r\n", b"+OK\r\n");
    roundtrip(&mut c, b"GET \"a key\"\n", b"$4\r\nit's\r\n");
    // Empty lines are skipped.
    roundtrip(&mut c, b"\r\n\r\nPING\r\n", b"+PONG\r\n");
}

#[test]
fn protocol_errors_reply_then_close() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    roundtrip(
        &mut c,
        b"PING\r\n*1\r\n$x\r\n",
        b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n",
    );
    expect_closed(&mut c);
    let mut c = s.connect();
    roundtrip(
        &mut c,
        b"*1\r\n:5\r\n",
        b"-ERR Protocol error: expected '$', got ':'\r\n",
    );
    expect_closed(&mut c);
    let mut c = s.connect();
    roundtrip(
        &mut c,
        b"SET \"k v\r\n",
        b"-ERR Protocol error: unbalanced quotes in request\r\n",
    );
    expect_closed(&mut c);
    // The server keeps serving others.
    let mut c = s.connect();
    roundtrip(&mut c, b"PING\r\n", b"+PONG\r\n");
}

#[test]
fn oversized_lengths_are_refused_before_any_payload() {
    // A client claiming more than Redis's 512 MiB `proto-max-bulk-len` is refused as soon
    // as the header arrives, without the server waiting for (or reserving) the payload.
    let s = Server::start(&["--max-memory", "64mb"]);
    let mut c = s.connect();
    roundtrip(
        &mut c,
        b"*2\r\n$3\r\nGET\r\n$536870913\r\n",
        b"-ERR Protocol error: invalid bulk length\r\n",
    );
    expect_closed(&mut c);
    let mut c = s.connect();
    roundtrip(
        &mut c,
        b"*99999999999\r\n",
        b"-ERR Protocol error: invalid multibulk length\r\n",
    );
    expect_closed(&mut c);
    let mut c = s.connect();
    let long_inline = vec![b'a'; 70 * 1024];
    roundtrip(
        &mut c,
        &long_inline,
        b"-ERR Protocol error: too big inline request\r\n",
    );
    expect_closed(&mut c);
    let (_, metrics) = s.http("GET", "/metrics");
    assert!(
        metrics.contains("mycel_protocol_errors_total 3"),
        "{metrics}"
    );
}

#[test]
fn hello_never_closes_and_switches_to_resp3() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    roundtrip(
        &mut c,
        b"HELLO 4\r\n",
        b"-NOPROTO unsupported protocol version\r\n",
    );
    roundtrip(
        &mut c,
        b"HELLO x\r\n",
        b"-ERR Protocol version is not an integer or out of range\r\n",
    );
    roundtrip(&mut c, b"GET none\r\n", b"$-1\r\n");
    c.write_all(b"HELLO 3\r\n").expect("write");
    let mut head = [0u8; 4];
    c.read_exact(&mut head).expect("map header");
    assert_eq!(&head, b"%7\r\n");
    // Drain the map's 7 pairs, then RESP3 nulls are `_`.
    let mut rest = Vec::new();
    let mut byte = [0u8; 1];
    while !rest.ends_with(b"*0\r\n") {
        c.read_exact(&mut byte).expect("map body");
        rest.push(byte[0]);
    }
    roundtrip(&mut c, b"GET none\r\n", b"_\r\n");
    roundtrip(&mut c, b"HELLO 2\r\n*1\r\n$4\r\nPING\r\n", b"*14\r\n");
}

#[test]
fn quit_replies_ok_then_closes() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    roundtrip(&mut c, b"QUIT\r\nPING\r\n", b"+OK\r\n");
    expect_closed(&mut c);
}

#[test]
fn keys_expire_on_read_and_in_the_background() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    roundtrip(&mut c, b"SET short v PX 40\r\n", b"+OK\r\n");
    c.write_all(b"PTTL short\r\n").expect("write");
    let mut reply = [0u8; 5];
    c.read_exact(&mut reply[..1]).expect("read");
    assert_eq!(reply[0], b':');
    eventually("GET of an expired key returning nil", || {
        let mut c = s.connect();
        c.write_all(b"GET short\r\n").expect("write");
        let mut r = [0u8; 5];
        c.read_exact(&mut r).expect("read");
        &r == b"$-1\r\n" || {
            // A hit is "$1\r\nv\r\n": read the rest and try again.
            let mut tail = [0u8; 2];
            c.read_exact(&mut tail).expect("read");
            false
        }
    });
    // Keys nobody reads again are removed by the reaper; DBSIZE counts them until then.
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.extend_from_slice(format!("SET bg{i} v PX 30\r\n").as_bytes());
    }
    c = s.connect();
    roundtrip(&mut c, &batch, &b"+OK\r\n".repeat(50));
    eventually("the reaper removing 50 expired keys", || {
        let mut c = s.connect();
        c.write_all(b"DBSIZE\r\n").expect("write");
        let mut r = [0u8; 4];
        c.read_exact(&mut r).expect("read");
        let done = &r == b":0\r\n";
        if !done {
            let mut drain = [0u8; 8];
            c.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let _ = c.read(&mut drain);
        }
        done
    });
}

#[test]
fn large_values_round_trip_and_values_over_the_limit_fail_alone() {
    let s = Server::start(&["--max-memory", "64mb"]);
    let mut c = s.connect();
    let value: Vec<u8> = (0..2 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    let mut request = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", value.len()).into_bytes();
    request.extend_from_slice(&value);
    request.extend_from_slice(b"\r\n*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n");
    let mut expected = format!("+OK\r\n${}\r\n", value.len()).into_bytes();
    expected.extend_from_slice(&value);
    expected.extend_from_slice(b"\r\n");
    // Write from another thread: the reply to GET may start before the request is read.
    let mut writer = c.try_clone().expect("clone");
    let sender = std::thread::spawn(move || writer.write_all(&request).expect("write"));
    expect_bytes(&mut c, &expected);
    sender.join().expect("writer");
    // 16 MiB is the largest value with a 64 MiB budget. A larger one is not buffered: its
    // request is dropped as it arrives and answered with an error, and the connection
    // goes on.
    let len = 16 * 1024 * 1024 + 1;
    let mut batch = format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${len}\r\n").into_bytes();
    batch.resize(batch.len() + len, b'x');
    batch.extend_from_slice(b"\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n");
    roundtrip(
        &mut c,
        &batch,
        b"-ERR argument is 16777217 bytes, at most 16777216 allowed\r\n$-1\r\n+PONG\r\n",
    );
}

/// The names of process `pid`'s threads.
#[cfg(target_os = "linux")]
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task list")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// `--threads 1 --resp-threads 0` runs the node on one thread: no runtime workers, no
/// connection threads; the thread that started the node serves its connections, several
/// at once, and stops cleanly with some open.
#[test]
fn one_thread_serves_the_node_and_its_connections() {
    let s = Server::start(&["--threads", "1", "--resp-threads", "0"]);
    #[cfg(target_os = "linux")]
    {
        let names = thread_names(s.pid());
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("mycel-resp-") || n.starts_with("tokio-")),
            "neither connection threads nor runtime workers: {names:?}"
        );
    }
    let mut conns: Vec<_> = (0..4).map(|_| s.connect()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        roundtrip(c, format!("SET k{i} v{i}\r\n").as_bytes(), b"+OK\r\n");
    }
    for c in &mut conns {
        roundtrip(c, b"GET k3\r\n", b"$2\r\nv3\r\n");
    }
    assert!(s.terminate().success(), "stops with connections open");
}

/// With several connection threads, connections are spread over them and share one
/// store and one client registry; a connection's entry goes when it closes, and the node
/// still stops cleanly with connections open on every thread.
#[test]
fn connections_on_several_threads_share_one_node() {
    let s = Server::start(&["--resp-threads", "3"]);
    #[cfg(target_os = "linux")]
    {
        let threads = thread_names(s.pid())
            .iter()
            .filter(|name| name.starts_with("mycel-resp-"))
            .count();
        assert_eq!(threads, 3, "one thread per --resp-threads");
    }
    let mut conns: Vec<_> = (0..6).map(|_| s.connect()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        roundtrip(c, format!("SET k{i} v{i}\r\n").as_bytes(), b"+OK\r\n");
    }
    for c in &mut conns {
        for i in 0..6 {
            roundtrip(
                c,
                format!("GET k{i}\r\n").as_bytes(),
                format!("$2\r\nv{i}\r\n").as_bytes(),
            );
        }
    }
    let listed = |s: &Server| s.cli(&["CLIENT", "LIST"]).lines().count();
    assert_eq!(listed(&s), 7, "six connections and redis-cli's");
    conns.truncate(3);
    eventually("closed connections leave the registry", || listed(&s) == 4);
    assert!(s.terminate().success(), "stops with connections open");
}

/// Before `AUTH`, requests are held to Redis's unauthenticated limits (10 arguments of
/// 16 KiB); a pipeline sent in one write after its `AUTH` is read with the limits the
/// `AUTH` lifted, because unauthenticated requests run one at a time.
#[test]
fn unauthenticated_requests_are_small_until_auth() {
    let s = Server::standalone(&["--requirepass", "s3cret"]);
    let big = vec![b'x'; 20_000];
    // A large argument before AUTH: a protocol error, and the connection closes.
    let mut c = s.connect();
    roundtrip(
        &mut c,
        &encode_request(&[b"SET", b"k", &big]),
        b"-ERR Protocol error: invalid bulk length\r\n",
    );
    expect_closed(&mut c);
    let mut c = s.connect();
    let many: Vec<&[u8]> = std::iter::repeat_n(&b"k"[..], 11).collect();
    roundtrip(
        &mut c,
        &encode_request(&many),
        b"-ERR Protocol error: invalid multibulk length\r\n",
    );
    expect_closed(&mut c);
    // Small ones are answered NOAUTH, and the connection stays.
    let mut c = s.connect();
    roundtrip(
        &mut c,
        &encode_request(&[b"GET", b"k"]),
        b"-NOAUTH Authentication required.\r\n",
    );
    // AUTH, a large SET and a GET in one write.
    let mut pipeline = encode_request(&[b"AUTH", b"s3cret"]);
    pipeline.extend(encode_request(&[b"SET", b"k", &big]));
    pipeline.extend(encode_request(&[b"GET", b"k"]));
    let mut reply = b"+OK\r\n+OK\r\n$20000\r\n".to_vec();
    reply.extend_from_slice(&big);
    reply.extend_from_slice(b"\r\n");
    roundtrip(&mut c, &pipeline, &reply);
    // Authenticated, the full limits apply: 11 arguments are fine.
    let mut mset: Vec<&[u8]> = vec![b"MSET"];
    mset.extend(std::iter::repeat_n(&b"k"[..], 10));
    roundtrip(&mut c, &encode_request(&mset), b"+OK\r\n");
}
