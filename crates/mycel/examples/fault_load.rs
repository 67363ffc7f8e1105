//! Client load and verification for `cargo xtask faults`.
//!
//! A bounded number of client threads issue SET and GET over a bounded key space, through
//! every node given with `--nodes` (RESP addresses), each write with a value no other write
//! uses. Every operation is recorded with its invocation and completion time (one monotonic
//! clock) and its outcome, as [`mycel::checker`] needs it:
//! - an acknowledged write (`+OK`) is `Ok`;
//! - a write the server definitely did not apply is `Failed`: the connection could not be
//!   opened (nothing was sent), `TRYAGAIN` (the cluster layer refused before any effect),
//!   `CLUSTERDOWN quorum lost` (a minority node refuses writes);
//! - any other error after the request was sent (a timeout, a reset connection, `TIMEOUT`,
//!   another `CLUSTERDOWN`) is `Pending`: it may have taken effect.
//!
//! The load runs until a line `stop` (or the end of input) arrives on stdin. Then every key
//! is read once more through every node (retrying refusals for up to `--settle-secs`),
//! and three checks run per key:
//! - lost acknowledged writes: the writes plus the final reads alone must be linearizable,
//!   i.e. the final state explains every acknowledged write;
//! - stale reads: reads that began after a write was acknowledged yet returned the key
//!   absent or a value written before that write began (a stale read, or a write lost at
//!   the serving node and overwritten later, which the final state cannot show);
//! - the whole history, reads during the fault included, must be linearizable; the log
//!   gets the whole history of every key that is not, with the node of each operation.
//!
//! Output on stdout is one JSON object per line: `{"type":"progress",...}` every
//! `--progress-ms`, and one `{"type":"summary",...}` at the end (acknowledged writes,
//! reads, errors by kind, lost keys and writes, stale reads, checker verdicts with the
//! operation each violation stopped at). `cargo xtask faults`
//! runs this inside the namespace that reaches every node, reads the lines, and prints the
//! summary table. Diagnostics go to stderr.
//!
//! Run by hand against a local cluster (`cargo xtask cluster`):
//! `cargo run -p mycel --example fault_load -- --nodes 127.0.0.1:PORT1,127.0.0.1:PORT2`,
//! then type `stop`.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a load tool that reports to xtask through stdout"
)]

use std::collections::BTreeMap;
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use mycel::checker::{self, Op, OpKind, Outcome, Verdict, Violation};
use mycel::resp::encode_request;
use serde_json::json;

/// Client load with a linearizability check, for `cargo xtask faults`.
#[derive(Debug, Parser)]
struct Args {
    /// RESP addresses of the nodes, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<SocketAddr>,
    /// Client threads.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    clients: u16,
    /// Distinct keys (`fx:0` ...).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    keys: u32,
    /// Operations per second, all clients together.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    rate: u32,
    /// Share of writes, in percent.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    writes: u8,
    /// Per-operation connect/read/write timeout, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    timeout_ms: u64,
    /// How long the final reads retry refusals, in seconds.
    #[arg(long, default_value_t = 60)]
    settle_secs: u64,
    /// Interval of the progress lines, in milliseconds.
    #[arg(long, default_value_t = 500)]
    progress_ms: u64,
    /// Seed of the clients' key and node choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Search budget of the checker per key.
    #[arg(long, default_value_t = 2_000_000)]
    max_steps: u64,
}

fn main() {
    let args = Args::parse();
    let summary = run(&args);
    println!("{summary}");
}

/// Counters the clients share.
#[derive(Debug, Default)]
struct Stats {
    acked: AtomicU64,
    write_failed: AtomicU64,
    write_pending: AtomicU64,
    reads: AtomicU64,
    read_errors: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    fn error(&self, op: &str, kind: &str) {
        let mut e = self.errors.lock().expect("stats lock is never poisoned");
        *e.entry(format!("{op} {kind}")).or_insert(0) += 1;
    }

    fn progress(&self) -> serde_json::Value {
        json!({
            "type": "progress",
            "acked": self.acked.load(Ordering::Relaxed),
            "write_failed": self.write_failed.load(Ordering::Relaxed),
            "write_pending": self.write_pending.load(Ordering::Relaxed),
            "reads": self.reads.load(Ordering::Relaxed),
            "read_errors": self.read_errors.load(Ordering::Relaxed),
        })
    }
}

/// Microseconds since `epoch`: the one clock of every recorded operation.
fn ticks(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// One recorded operation on key `.0` through node `.1` (an index into `--nodes`).
type Recorded = (u32, usize, Op<u64>);

fn run(args: &Args) -> serde_json::Value {
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Stats::default());
    let timeout = Duration::from_millis(args.timeout_ms.max(1));

    let clients: Vec<_> = (0..args.clients)
        .map(|c| {
            let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
            let client = Client {
                id: c,
                nodes: args.nodes.clone(),
                keys: args.keys,
                writes: args.writes,
                interval: Duration::from_secs_f64(f64::from(args.clients) / f64::from(args.rate)),
                timeout,
                rng: args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (u64::from(c) + 1),
            };
            std::thread::spawn(move || client.run(epoch, &stop, &stats))
        })
        .collect();

    // Progress lines until stdin says stop.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let stdin = io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) if l.trim() == "stop" => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        let _ = tx.send(());
    });
    let interval = Duration::from_millis(args.progress_ms.max(50));
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
        println!("{}", stats.progress());
    }
    stop.store(true, Ordering::SeqCst);
    let mut history: Vec<History> = vec![History::default(); usize_of(args.keys)];
    for c in clients {
        let ops = c.join().unwrap_or_else(|_| {
            eprintln!("fault_load: a client thread panicked");
            Vec::new()
        });
        for (k, node, op) in ops {
            let h = &mut history[usize_of(k)];
            h.ops.push(op);
            h.nodes.push(node);
        }
    }
    println!("{}", stats.progress());

    let finals = final_reads(args, epoch, timeout, &stats);
    verify(args, &stats, history, &finals)
}

fn usize_of(n: u32) -> usize {
    usize::try_from(n).expect("invariant: u32 fits in usize on supported targets")
}

/// One client thread's state.
#[derive(Debug)]
struct Client {
    id: u16,
    nodes: Vec<SocketAddr>,
    keys: u32,
    writes: u8,
    interval: Duration,
    timeout: Duration,
    rng: u64,
}

impl Client {
    fn next(&mut self, m: u64) -> u64 {
        // xorshift64*: the choices need spread, not quality.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) % m.max(1)
    }

    fn run(mut self, epoch: Instant, stop: &AtomicBool, stats: &Stats) -> Vec<Recorded> {
        let mut conns: Vec<Option<Conn>> = self.nodes.iter().map(|_| None).collect();
        let mut ops = Vec::new();
        let mut seq = 0u64;
        let mut next_at = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if next_at > now {
                std::thread::sleep(next_at - now);
            }
            // No bursts after a stall: pace from now on.
            next_at = next_at.max(now) + self.interval;
            let key = u32::try_from(self.next(u64::from(self.keys)))
                .expect("invariant: below keys, a u32");
            let n = usize::try_from(self.next(self.nodes.len() as u64))
                .expect("invariant: below the node count");
            let write = self.next(100) < u64::from(self.writes);
            let name = key_name(key);
            let invoked = ticks(epoch);
            if write {
                seq += 1;
                let value = (u64::from(self.id) + 1) << 40 | seq;
                let text = value.to_string();
                let result = call(
                    &mut conns[n],
                    self.nodes[n],
                    self.timeout,
                    &[b"SET", name.as_bytes(), text.as_bytes()],
                );
                let op = Op::write(Some(value), invoked, ticks(epoch));
                let (outcome, kind) = classify_write(&result);
                match outcome {
                    Outcome::Ok { .. } => {
                        stats.acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Failed => {
                        stats.write_failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Outcome::Pending => {
                        stats.write_pending.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Some(kind) = kind {
                    stats.error("write", kind);
                }
                let op = match outcome {
                    Outcome::Ok { .. } => op,
                    other => op.with_outcome(other),
                };
                ops.push((key, n, op));
            } else {
                let result = call(
                    &mut conns[n],
                    self.nodes[n],
                    self.timeout,
                    &[b"GET", name.as_bytes()],
                );
                match read_value(&result) {
                    Ok(value) => {
                        stats.reads.fetch_add(1, Ordering::Relaxed);
                        ops.push((key, n, Op::read(value, invoked, ticks(epoch))));
                    }
                    Err(kind) => {
                        // A failed read observed nothing; the checker ignores it.
                        stats.read_errors.fetch_add(1, Ordering::Relaxed);
                        stats.error("read", kind);
                    }
                }
            }
        }
        ops
    }
}

fn key_name(k: u32) -> String {
    format!("fx:{k}")
}

/// A RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

/// Why a call got no reply.
#[derive(Debug)]
enum CallError {
    /// The connection could not be opened: nothing was sent.
    Connect,
    /// The reply did not come in time (the request was sent).
    Timeout,
    /// The connection failed after the request was (perhaps) sent.
    Io,
    /// The reply was not RESP this client understands.
    Protocol,
}

/// An open connection to one node.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

/// Sends one command over `slot`'s connection (opening it first if needed) and reads the
/// reply. Any failure but an error reply drops the connection: its state is unknown.
fn call(
    slot: &mut Option<Conn>,
    addr: SocketAddr,
    timeout: Duration,
    args: &[&[u8]],
) -> Result<Reply, CallError> {
    if slot.is_none() {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|_| CallError::Connect)?;
        let setup = stream
            .set_nodelay(true)
            .and_then(|()| stream.set_read_timeout(Some(timeout)))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .and_then(|()| stream.try_clone());
        let reader = setup.map_err(|_| CallError::Connect)?;
        *slot = Some(Conn {
            stream,
            reader: BufReader::new(reader),
        });
    }
    let conn = slot.as_mut().expect("invariant: connected above");
    let result = conn
        .stream
        .write_all(&encode_request(args))
        .map_err(|e| io_error(&e))
        .and_then(|()| read_reply(&mut conn.reader));
    if result.is_err() {
        *slot = None;
    }
    result
}

fn io_error(e: &io::Error) -> CallError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CallError::Timeout,
        _ => CallError::Io,
    }
}

/// The largest bulk reply accepted (values here are a few bytes).
const MAX_BULK: usize = 1 << 20;

fn read_reply(r: &mut impl io::BufRead) -> Result<Reply, CallError> {
    let mut line = String::new();
    let n = r.read_line(&mut line).map_err(|e| io_error(&e))?;
    if n == 0 {
        return Err(CallError::Io);
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (tag, rest) = line.split_at_checked(1).ok_or(CallError::Protocol)?;
    match tag {
        "+" => Ok(Reply::Simple(rest.to_owned())),
        "-" => Ok(Reply::Error(rest.to_owned())),
        ":" => rest
            .parse()
            .map(Reply::Integer)
            .map_err(|_| CallError::Protocol),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| CallError::Protocol)?;
            if len < 0 {
                return Ok(Reply::Bulk(None));
            }
            let len = usize::try_from(len).map_err(|_| CallError::Protocol)?;
            if len > MAX_BULK {
                return Err(CallError::Protocol);
            }
            let mut buf = vec![0; len + 2];
            r.read_exact(&mut buf).map_err(|e| io_error(&e))?;
            if !buf.ends_with(b"\r\n") {
                return Err(CallError::Protocol);
            }
            buf.truncate(len);
            Ok(Reply::Bulk(Some(buf)))
        }
        _ => Err(CallError::Protocol),
    }
}

/// The checker outcome of a SET's result, and the error kind to count (if any).
fn classify_write(result: &Result<Reply, CallError>) -> (Outcome, Option<&'static str>) {
    match result {
        Ok(Reply::Simple(s)) if s == "OK" => (Outcome::Ok { completed: 0 }, None),
        Ok(Reply::Error(e)) => classify_error_reply(e),
        Ok(_) => (Outcome::Pending, Some("unexpected reply")),
        Err(CallError::Connect) => (Outcome::Failed, Some("connect")),
        Err(CallError::Timeout) => (Outcome::Pending, Some("timeout")),
        Err(CallError::Io) => (Outcome::Pending, Some("connection lost")),
        Err(CallError::Protocol) => (Outcome::Pending, Some("protocol")),
    }
}

/// What an error reply says about a write: refusals before any effect are `Failed`.
fn classify_error_reply(e: &str) -> (Outcome, Option<&'static str>) {
    let code = e.split(' ').next().unwrap_or_default();
    match code {
        // The cluster layer refused (no table, syncing, primary unreachable, not the
        // owner): nothing changed.
        "TRYAGAIN" => (Outcome::Failed, Some("TRYAGAIN")),
        // A node outside the majority refuses writes before touching anything.
        "CLUSTERDOWN" if e.contains("quorum lost") => {
            (Outcome::Failed, Some("CLUSTERDOWN quorum lost"))
        }
        "CLUSTERDOWN" => (Outcome::Pending, Some("CLUSTERDOWN")),
        "TIMEOUT" => (Outcome::Pending, Some("TIMEOUT")),
        _ => (Outcome::Pending, Some("other error")),
    }
}

/// The value a GET returned, or the error kind.
fn read_value(result: &Result<Reply, CallError>) -> Result<Option<u64>, &'static str> {
    match result {
        Ok(Reply::Bulk(None)) => Ok(None),
        Ok(Reply::Bulk(Some(b))) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            // Not a value this load wrote: record it as such so the checker flags it.
            .map_or(Ok(Some(u64::MAX)), Ok),
        Ok(Reply::Error(e)) => Err(classify_error_reply(e).1.unwrap_or("other error")),
        Ok(_) => Err("unexpected reply"),
        Err(CallError::Connect) => Err("connect"),
        Err(CallError::Timeout) => Err("timeout"),
        Err(CallError::Io) => Err("connection lost"),
        Err(CallError::Protocol) => Err("protocol"),
    }
}

/// The last read of every key through every node: per key, per node, the read (or `None`
/// if the node never answered within `--settle-secs`).
fn final_reads(
    args: &Args,
    epoch: Instant,
    timeout: Duration,
    stats: &Stats,
) -> Vec<Vec<Option<Op<u64>>>> {
    let deadline = Instant::now() + Duration::from_secs(args.settle_secs);
    let mut conns: Vec<Option<Conn>> = args.nodes.iter().map(|_| None).collect();
    let mut out = Vec::new();
    for k in 0..args.keys {
        let name = key_name(k);
        let mut per_node = Vec::new();
        for (n, &addr) in args.nodes.iter().enumerate() {
            let op = loop {
                let invoked = ticks(epoch);
                let result = call(&mut conns[n], addr, timeout, &[b"GET", name.as_bytes()]);
                match read_value(&result) {
                    Ok(v) => break Some(Op::read(v, invoked, ticks(epoch))),
                    Err(kind) => {
                        stats.error("final read", kind);
                        if Instant::now() > deadline {
                            break None;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            };
            per_node.push(op);
        }
        out.push(per_node);
    }
    out
}

/// One key's operations and, for each, the node it went through.
#[derive(Debug, Clone, Default)]
struct History {
    ops: Vec<Op<u64>>,
    nodes: Vec<usize>,
}

fn verify(
    args: &Args,
    stats: &Stats,
    history: Vec<History>,
    finals: &[Vec<Option<Op<u64>>>],
) -> serde_json::Value {
    let mut lost_keys = Vec::new();
    let mut lost_writes = 0u64;
    let mut divergent_keys = Vec::new();
    let mut unreadable = Vec::new();
    let mut linearizable = 0u64;
    let mut unknown = 0u64;
    let mut violations = Vec::new();
    let mut ops_checked = 0usize;
    let (mut stale_reads, mut absent_reads) = (0u64, 0u64);
    for (k, (mut h, fin)) in history.into_iter().zip(finals).enumerate() {
        let name = key_name(u32::try_from(k).expect("invariant: keys is a u32"));
        for (n, op) in fin.iter().enumerate() {
            if let Some(op) = op {
                h.ops.push(op.clone());
                h.nodes.push(n);
            }
        }
        let reads: Vec<Op<u64>> = fin.iter().flatten().cloned().collect();
        if reads.len() < fin.len() {
            unreadable.push(name.clone());
        }
        let values: Vec<Option<u64>> = reads
            .iter()
            .map(|op| match &op.kind {
                OpKind::Read(v) | OpKind::Write(v) => *v,
            })
            .collect();
        if values.windows(2).any(|w| w[0] != w[1]) {
            divergent_keys.push(name.clone());
        }
        // The final state must explain every acknowledged write.
        let mut writes: Vec<Op<u64>> = h
            .ops
            .iter()
            .filter(|op| matches!(op.kind, OpKind::Write(_)))
            .cloned()
            .collect();
        writes.extend(reads.iter().cloned());
        if let Verdict::NotLinearizable(_) = checker::check(None, &writes, args.max_steps) {
            lost_keys.push(name.clone());
            lost_writes += lost_acknowledged(&writes, values.first().copied().flatten());
        }
        let (missed, absent) = missed_writes(&h.ops);
        stale_reads += missed;
        absent_reads += absent;
        // And the whole history, reads during the fault included.
        ops_checked += h.ops.len();
        match checker::check(None, &h.ops, args.max_steps) {
            Verdict::Linearizable => linearizable += 1,
            Verdict::Unknown { .. } => unknown += 1,
            Verdict::NotLinearizable(v) => {
                let at = match v {
                    Violation::UnwrittenValue { read } | Violation::ReadFromFuture { read } => read,
                    Violation::NoLinearization { stuck_at, .. } => stuck_at,
                };
                // The whole history of the key, for the log.
                eprintln!("fault_load: {name} is not linearizable ({v:?}); its history:");
                let mut order: Vec<usize> = (0..h.ops.len()).collect();
                order.sort_by_key(|&i| h.ops[i].invoked);
                for i in order {
                    eprintln!("  #{i} {}", show(&h.ops[i], args.nodes[h.nodes[i]]));
                }
                violations.push(json!({
                    "key": name,
                    "violation": format!("{v:?}"),
                    "detail": describe(&h, &args.nodes, at),
                }));
            }
        }
    }
    let errors = stats
        .errors
        .lock()
        .expect("stats lock is never poisoned")
        .clone();
    json!({
        "type": "summary",
        "keys": args.keys,
        "clients": args.clients,
        "acked_writes": stats.acked.load(Ordering::Relaxed),
        "failed_writes": stats.write_failed.load(Ordering::Relaxed),
        "pending_writes": stats.write_pending.load(Ordering::Relaxed),
        "reads": stats.reads.load(Ordering::Relaxed),
        "read_errors": stats.read_errors.load(Ordering::Relaxed),
        "errors": errors,
        "ops_checked": ops_checked,
        "lost_keys": lost_keys,
        "lost_writes": lost_writes,
        "stale_reads": stale_reads,
        "absent_reads": absent_reads,
        "divergent_keys": divergent_keys,
        "unreadable_keys": unreadable,
        "linearizable_keys": linearizable,
        "unknown_keys": unknown,
        "violations": violations,
    })
}

/// Reads that missed an acknowledged write: the read began after a write `W` was
/// acknowledged, yet returned the key absent or a value whose write completed before `W`
/// was even invoked (so no order puts it after `W`). Returns how many such reads there
/// are, and how many of them found the key absent. Such a read is stale, or the write was
/// lost at the node that served it; reads during a fault cannot tell which.
fn missed_writes(ops: &[Op<u64>]) -> (u64, u64) {
    let acked: Vec<(u64, u64, u64)> = ops
        .iter()
        .filter_map(|op| match (&op.kind, op.outcome) {
            (OpKind::Write(Some(v)), Outcome::Ok { completed }) => {
                Some((*v, op.invoked, completed))
            }
            _ => None,
        })
        .collect();
    let written_end = |v: u64| -> u64 {
        ops.iter()
            .find(|op| op.kind == OpKind::Write(Some(v)))
            .map_or(u64::MAX, |op| match op.outcome {
                Outcome::Ok { completed } => completed,
                _ => u64::MAX,
            })
    };
    let (mut missed, mut absent) = (0, 0);
    for op in ops {
        let (OpKind::Read(seen), Outcome::Ok { .. }) = (&op.kind, op.outcome) else {
            continue;
        };
        let seen_end = seen.map(written_end);
        let misses = acked.iter().any(|&(w, invoked, completed)| {
            Some(w) != *seen && completed < op.invoked && seen_end.is_none_or(|end| end < invoked)
        });
        if misses {
            missed += 1;
            if seen.is_none() {
                absent += 1;
            }
        }
    }
    (missed, absent)
}

/// How many acknowledged writes of a key the final value `last` cannot explain: those
/// invoked after the write of `last` was acknowledged (they should have replaced it), or
/// every acknowledged write when `last` is absent or was never written.
fn lost_acknowledged(ops: &[Op<u64>], last: Option<u64>) -> u64 {
    let acked = ops.iter().filter_map(|op| match (&op.kind, op.outcome) {
        (OpKind::Write(_), Outcome::Ok { completed }) => Some((op, completed)),
        _ => None,
    });
    let writer_end = last.and_then(|v| {
        ops.iter()
            .find(|op| op.kind == OpKind::Write(Some(v)))
            .map(|op| match op.outcome {
                Outcome::Ok { completed } => completed,
                _ => u64::MAX,
            })
    });
    let n = match writer_end {
        None => acked.count(),
        Some(end) => acked.filter(|(op, _)| op.invoked > end).count(),
    };
    // At least one: the checker found the key's final state unexplained.
    u64::try_from(n).unwrap_or(u64::MAX).max(1)
}

/// Milliseconds, from the microsecond ticks.
fn millis(t: u64) -> String {
    format!("{}.{:03}", t / 1000, t % 1000)
}

fn show(op: &Op<u64>, node: SocketAddr) -> String {
    let (what, value) = match &op.kind {
        OpKind::Write(v) => ("write", v),
        OpKind::Read(v) => ("read", v),
    };
    let value = value.map_or_else(|| "nil".to_owned(), |v| v.to_string());
    let end = match op.outcome {
        Outcome::Ok { completed } => format!("{} ms", millis(completed)),
        Outcome::Failed => "refused".to_owned(),
        Outcome::Pending => "no answer".to_owned(),
    };
    format!(
        "{what} {value} through {node} from {} ms to {end}",
        millis(op.invoked)
    )
}

/// The operation the checker stopped at, and for a read the write of the value it saw and
/// the acknowledged writes that had completed before the read began (they make it stale).
fn describe(h: &History, nodes: &[SocketAddr], at: usize) -> String {
    let Some(op) = h.ops.get(at) else {
        return String::new();
    };
    let node = |i: usize| nodes[h.nodes[i]];
    let mut out = show(op, node(at));
    if let OpKind::Read(seen) = op.kind {
        if let Some(w) = h
            .ops
            .iter()
            .position(|o| o.kind == OpKind::Write(seen) && seen.is_some())
        {
            out.push_str(&format!(
                "; the value's write: {}",
                show(&h.ops[w], node(w))
            ));
        }
        let newer: Vec<usize> = (0..h.ops.len())
            .filter(|&i| {
                matches!(h.ops[i].kind, OpKind::Write(v) if v != seen)
                    && matches!(h.ops[i].outcome, Outcome::Ok { completed } if completed < op.invoked)
            })
            .collect();
        if let Some(&last) = newer.iter().max_by_key(|&&i| match h.ops[i].outcome {
            Outcome::Ok { completed } => completed,
            _ => 0,
        }) {
            out.push_str(&format!(
                "; acknowledged before the read began: {}",
                show(&h.ops[last], node(last))
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(bytes: &[u8]) -> Result<Reply, CallError> {
        read_reply(&mut &bytes[..])
    }

    #[test]
    fn replies_are_parsed() {
        assert_eq!(reply(b"+OK\r\n").unwrap(), Reply::Simple("OK".into()));
        assert_eq!(reply(b":7\r\n").unwrap(), Reply::Integer(7));
        assert_eq!(reply(b"$-1\r\n").unwrap(), Reply::Bulk(None));
        assert_eq!(
            reply(b"$2\r\n42\r\n").unwrap(),
            Reply::Bulk(Some(b"42".to_vec()))
        );
        assert!(matches!(reply(b""), Err(CallError::Io)));
        assert!(matches!(reply(b"*1\r\n"), Err(CallError::Protocol)));
        assert!(matches!(reply(b"$2\r\n42xx"), Err(CallError::Protocol)));
        assert!(matches!(reply(b"$99999999\r\n"), Err(CallError::Protocol)));
    }

    #[test]
    fn writes_are_classified_as_the_checker_needs() {
        let ok = Ok(Reply::Simple("OK".into()));
        assert!(matches!(classify_write(&ok), (Outcome::Ok { .. }, None)));
        // Refused before any effect: Failed.
        for (e, kind) in [
            ("TRYAGAIN no routing table yet; retry", "TRYAGAIN"),
            (
                "CLUSTERDOWN quorum lost: this node is outside a majority",
                "CLUSTERDOWN quorum lost",
            ),
        ] {
            let r = Ok(Reply::Error(e.into()));
            assert_eq!(classify_write(&r), (Outcome::Failed, Some(kind)), "{e}");
        }
        assert_eq!(
            classify_write(&Err(CallError::Connect)),
            (Outcome::Failed, Some("connect"))
        );
        // May have taken effect: Pending.
        for r in [
            Ok(Reply::Error("TIMEOUT operation timed out".into())),
            Ok(Reply::Error("CLUSTERDOWN cluster: peer went away".into())),
            Ok(Reply::Error("ERR something".into())),
            Ok(Reply::Integer(1)),
            Err(CallError::Timeout),
            Err(CallError::Io),
            Err(CallError::Protocol),
        ] {
            assert_eq!(classify_write(&r).0, Outcome::Pending, "{r:?}");
        }
    }

    #[test]
    fn reads_return_values_or_the_error_kind() {
        assert_eq!(read_value(&Ok(Reply::Bulk(None))), Ok(None));
        assert_eq!(
            read_value(&Ok(Reply::Bulk(Some(b"12".to_vec())))),
            Ok(Some(12))
        );
        // A value this load never writes is kept, so the checker flags it.
        assert_eq!(
            read_value(&Ok(Reply::Bulk(Some(b"zz".to_vec())))),
            Ok(Some(u64::MAX))
        );
        assert_eq!(
            read_value(&Ok(Reply::Error("TRYAGAIN x".into()))),
            Err("TRYAGAIN")
        );
        assert_eq!(read_value(&Err(CallError::Timeout)), Err("timeout"));
    }

    #[test]
    fn lost_writes_are_counted_from_the_final_value() {
        let w = |v: u64, a: u64, b: u64| Op::write(Some(v), a, b);
        let ops = [w(1, 0, 10), w(2, 20, 30), w(3, 40, 50)];
        // The final value is the first write's: the two later ones are lost.
        assert_eq!(lost_acknowledged(&ops, Some(1)), 2);
        assert_eq!(lost_acknowledged(&ops, Some(2)), 1);
        // Absent, or a value nobody wrote: every acknowledged write is lost.
        assert_eq!(lost_acknowledged(&ops, None), 3);
        assert_eq!(lost_acknowledged(&ops, Some(9)), 3);
        // Called only for keys the checker failed: at least one.
        assert_eq!(lost_acknowledged(&ops, Some(3)), 1);
    }

    #[test]
    fn reads_that_missed_an_acknowledged_write_are_counted() {
        let w = |v: u64, a: u64, b: u64| Op::write(Some(v), a, b);
        let r = |v: Option<u64>, a: u64, b: u64| Op::read(v, a, b);
        let ops = [
            r(None, 0, 5),
            w(1, 10, 20),
            r(Some(1), 30, 40),
            w(2, 50, 60),
            // Overlaps the write of 3: either value is fine.
            w(3, 70, 100),
            r(Some(2), 80, 90),
            // Stale: 3 was acknowledged at 100.
            r(Some(2), 110, 120),
            // Absent after acknowledged writes.
            r(None, 130, 140),
        ];
        assert_eq!(missed_writes(&ops), (2, 1));
        // A pending write may land late: reading it is not stale.
        let ops = [
            w(1, 0, 10),
            w(2, 20, 0).with_outcome(Outcome::Pending),
            w(3, 30, 40),
            r(Some(2), 50, 60),
        ];
        assert_eq!(missed_writes(&ops), (0, 0));
    }

    #[test]
    fn a_stale_read_is_described() {
        let nodes: Vec<SocketAddr> = vec![
            "10.77.0.1:6379".parse().unwrap(),
            "10.77.0.2:6379".parse().unwrap(),
        ];
        let h = History {
            ops: vec![
                Op::write(Some(1), 0, 1000),
                Op::write(Some(2), 2000, 3000),
                Op::read(Some(1), 4000, 5000),
            ],
            nodes: vec![0, 0, 1],
        };
        assert!(matches!(
            checker::check(None, &h.ops, 1000),
            Verdict::NotLinearizable(_)
        ));
        let d = describe(&h, &nodes, 2);
        assert!(
            d.starts_with("read 1 through 10.77.0.2:6379 from 4.000 ms"),
            "{d}"
        );
        assert!(
            d.contains("the value's write: write 1 through 10.77.0.1:6379"),
            "{d}"
        );
        assert!(
            d.contains("acknowledged before the read began: write 2"),
            "{d}"
        );
    }
}
