//! One client connection: read, parse every complete request in the buffer, execute them
//! in order, encode every reply into one reused output buffer, write it once.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use mycel::{BatchOp, ExpireCondition, SetOptions, Timestamp};

use super::apply::{self, After, Combine, Queued, Session, Shape, Transaction, Watched};
use super::cmd::{self, Command, GetExAction};
use super::frame::Frame;
use super::parse::RequestParser;
use crate::auth;
use crate::metrics::{self, CommandLabel, ErrorLabel};
use crate::state::{Client, Shared};

/// Bytes kept free in the input buffer before each read, so reads are large.
const READ_CHUNK: usize = 16 * 1024;

/// How long closing a connection may wait to send what its stream still holds.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// An output buffer grown past this by one large reply is replaced by a fresh one, so an
/// idle connection does not keep a big value's worth of memory.
const MAX_IDLE_OUTPUT: usize = 1024 * 1024;

/// This connection's handles to the per-command counters: a short list searched by the
/// command's static name, so counting a command takes no lock and no hashing.
#[derive(Debug, Default)]
struct Counters {
    entries: Vec<CommandCounters>,
}

/// One command's counters (see [`Metrics`](crate::metrics::Metrics)).
#[derive(Debug)]
struct CommandCounters {
    command: &'static str,
    calls: Counter,
    errors: Counter,
    rejected: Counter,
    duration: Counter<f64, AtomicU64>,
}

impl Counters {
    fn get(&mut self, shared: &Shared, command: &'static str) -> &CommandCounters {
        let at = match self.entries.iter().position(|e| e.command == command) {
            Some(at) => at,
            None => {
                let label = CommandLabel { command };
                let m = &shared.metrics;
                self.entries.push(CommandCounters {
                    command,
                    calls: m.commands.get_or_create(&label).clone(),
                    errors: m.errors.get_or_create(&label).clone(),
                    rejected: m.rejected.get_or_create(&label).clone(),
                    duration: m.duration.get_or_create(&label).clone(),
                });
                self.entries.len() - 1
            }
        };
        &self.entries[at]
    }
}

/// A run of batchable commands being collected, reused across reads: the operations,
/// and for each its reply's shape, its name and where its arguments are (for the slow
/// log).
#[derive(Debug, Default)]
struct Run {
    ops: Vec<BatchOp>,
    shapes: Vec<(Shape, &'static str, Range<usize>)>,
}

/// A parsed request: its command's name (`None` for a name no command has, or a request
/// dropped for its size), the command or the error reply to send, and where its
/// arguments are among the read's (for the slow log).
/// A refused request carries the name `CLIENT LIST` shows for it (see
/// [`cmd::refused_name`]).
type Request = (
    Option<&'static str>,
    Result<Command, (Frame, Option<&'static str>)>,
    Range<usize>,
);

/// Executes `requests` (drained; their arguments are in `args`) in order, encoding each
/// reply into `output`; true when the connection is to be closed (`QUIT`: the requests
/// after it are not executed).
async fn run(
    requests: &mut Vec<Request>,
    args: &[Bytes],
    session: &mut Session,
    shared: &Shared,
    counters: &mut Counters,
    batch: &mut Run,
    output: &mut BytesMut,
) -> bool {
    let mut close = false;
    for (name, request, at) in requests.drain(..) {
        if close {
            continue;
        }
        // Before it authenticates, a connection runs only AUTH, HELLO and QUIT. As in
        // Redis, an unknown command or a wrong number of arguments is answered as such
        // first, and a refusal counts as the command's rejected call.
        if !session.authenticated
            && let Some(known) = name.filter(|n| !auth::allowed_before_auth(n))
            && !matches!(&request, Err((frame, shown)) if refused_for_arity(frame, *shown, at.len()))
        {
            session.command(known);
            let c = counters.get(shared, known);
            c.rejected.inc();
            c.errors.inc();
            let reply = Frame::Error(auth::NOAUTH.to_owned());
            count_error(shared, &reply);
            reply.encode(session.proto, output);
            continue;
        }
        let cmd = match request {
            Ok(cmd) => cmd,
            Err((frame, shown)) => {
                // Refused while its arguments were read: counted as the command's error
                // and shown as the last command (its subcommand's name for a container
                // command; an unknown one as `NULL`), as Redis shows it. Like Redis, a
                // bad argument counts as a call that failed, a wrong number of them as
                // a call never made.
                flush_run(batch, args, session, shared, counters, output).await;
                session.command(shown.unwrap_or("NULL"));
                // A wrong number of arguments that passes Redis's arity check (`MSET a b
                // c`) is, as in Redis, an error of the call, not a call refused.
                let refused = refused_for_arity(&frame, shown, at.len());
                // In a transaction, as in Redis: a known command with a bad argument is
                // queued and answers its error at EXEC; an unknown one or a wrong number
                // of arguments fails the transaction.
                if let (Some(tx), Some(known), Some(_)) = (&mut session.transaction, name, shown)
                    && !refused
                {
                    tx.queued.push(Queued::Reply { frame, name: known });
                    Frame::Simple("QUEUED").encode(session.proto, output);
                    continue;
                }
                // An unknown subcommand is, like an unknown command, no command's: Redis
                // neither runs nor rejects it (`INFO commandstats` leaves it out), but
                // counts its error.
                let known = name.filter(|_| shown.is_some());
                let c = counters.get(shared, known.unwrap_or("unknown"));
                if known.is_some() {
                    if refused {
                        c.rejected.inc();
                    } else {
                        c.calls.inc();
                    }
                }
                c.errors.inc();
                count_error(shared, &frame);
                frame.encode(session.proto, output);
                if let Some(tx) = &mut session.transaction {
                    tx.aborted = true;
                }
                continue;
            }
        };
        let name = name.unwrap_or("unknown");
        session.command(apply::full_name(&cmd, name));
        let cmd = match cmd {
            Command::Multi | Command::Exec | Command::Discard => {
                flush_run(batch, args, session, shared, counters, output).await;
                let start = Instant::now();
                let frame = transaction(cmd, session, shared, counters).await;
                let took = start.elapsed();
                if let Some((addr, client_name)) = session.slow_client(&shared.slowlog, took) {
                    shared.slowlog.push(took, &args[at], addr, client_name);
                }
                count(counters, shared, name, &frame, took);
                frame.encode(session.proto, output);
                continue;
            }
            // Refused at once, failing nothing, as in Redis: the keys would be watched
            // only after the transaction's commands were queued.
            Command::Watch(_) if session.transaction.is_some() => {
                let frame = Frame::err("WATCH inside MULTI is not allowed");
                count(counters, shared, name, &frame, Duration::ZERO);
                frame.encode(session.proto, output);
                continue;
            }
            // Queued, not run (`QUIT` still closes at once, as in Redis).
            cmd if session.transaction.is_some() && cmd != Command::Quit => {
                let frame = queue(cmd, name, session, shared);
                if matches!(frame, Frame::Error(_)) {
                    let c = counters.get(shared, name);
                    c.rejected.inc();
                    c.errors.inc();
                    count_error(shared, &frame);
                }
                frame.encode(session.proto, output);
                continue;
            }
            cmd => cmd,
        };
        let cmd = match apply::batchable(cmd) {
            Ok((op, shape)) => {
                batch.ops.push(op);
                batch.shapes.push((shape, name, at));
                continue;
            }
            Err(cmd) => cmd,
        };
        flush_run(batch, args, session, shared, counters, output).await;
        let start = Instant::now();
        let (frame, after) = apply::execute(cmd, session, shared).await;
        let took = start.elapsed();
        if let Some((addr, client_name)) = session.slow_client(&shared.slowlog, took) {
            shared.slowlog.push(took, &args[at], addr, client_name);
        }
        count(counters, shared, name, &frame, took);
        frame.encode(session.proto, output);
        close = after == After::Close;
    }
    flush_run(batch, args, session, shared, counters, output).await;
    close
}

/// `MULTI`, `EXEC` or `DISCARD`: starts, runs or drops the connection's transaction.
/// `EXEC` runs the queued operations as one batch and counts each as its command's call.
async fn transaction(
    cmd: Command,
    session: &mut Session,
    shared: &Shared,
    counters: &mut Counters,
) -> Frame {
    match (cmd, session.transaction.take()) {
        (Command::Multi, None) => {
            session.transaction = Some(Transaction {
                partition: session.watched.partition,
                ..Transaction::default()
            });
            Frame::Simple("OK")
        }
        (Command::Multi, tx @ Some(_)) => {
            session.transaction = tx;
            Frame::err("MULTI calls can not be nested")
        }
        (Command::Exec, None) => Frame::err("EXEC without MULTI"),
        (Command::Discard, None) => Frame::err("DISCARD without MULTI"),
        // `EXEC` and `DISCARD` forget the watched keys, whatever happens.
        (Command::Exec, Some(tx)) if tx.aborted => {
            session.watched = Watched::default();
            Frame::Error("EXECABORT Transaction discarded because of previous errors.".to_owned())
        }
        (Command::Exec, Some(tx)) => {
            let start = Instant::now();
            let (ops, queued) = tx.into_ops();
            let watched = std::mem::take(&mut session.watched);
            if watched.failed {
                return Frame::NullArray;
            }
            // With nothing watched, a plain transaction.
            let watched = watched.keys.into_iter().collect();
            let results = match shared
                .mycel
                .transaction_if(session.bucket, watched, ops)
                .await
            {
                Ok(Some(results)) => results,
                // A watched key changed: nothing ran.
                Ok(None) => return Frame::NullArray,
                Err(e) => return apply::error_frame(&e),
            };
            let share = start.elapsed() / u32::try_from(queued.len()).unwrap_or(u32::MAX).max(1);
            let mut results = results.into_iter();
            Frame::Array(
                queued
                    .into_iter()
                    .map(|queued| {
                        let (frame, name) = match queued {
                            Queued::Ops {
                                shape,
                                combine,
                                name,
                                n,
                            } => {
                                // All `n` taken, whatever they are, so that the next
                                // command gets its own.
                                let mine = results.by_ref().take(n).collect();
                                (combine.reply(shape, mine), name)
                            }
                            Queued::Reply { frame, name } => (frame, name),
                        };
                        count(counters, shared, name, &frame, share);
                        frame
                    })
                    .collect(),
            )
        }
        (_, _) => {
            session.watched = Watched::default();
            Frame::Simple("OK")
        }
    }
}

/// Whether `frame`, a request's error, refuses it for its number of arguments (`argc`,
/// its name included) as Redis's arity check would: a number that passes that check
/// (`MSET a b c`) is, as in Redis, an error of the call instead. `shown` is the command's
/// full name (`client|setname` for a subcommand).
fn refused_for_arity(frame: &Frame, shown: Option<&str>, argc: usize) -> bool {
    cmd::is_arity_error(frame) && !shown.is_some_and(|shown| apply::arity_passes(shown, argc))
}

/// Queues `cmd` (named `name`) in the connection's transaction: `+QUEUED`, or an error
/// that also makes `EXEC` refuse the transaction.
fn queue(cmd: Command, name: &'static str, session: &mut Session, shared: &Shared) -> Frame {
    let Some(tx) = session.transaction.as_mut() else {
        return Frame::err("not in a transaction");
    };
    let at = |key: &Bytes, ms: u64, condition| {
        let op = BatchOp::Expire {
            key: key.clone(),
            after: Duration::ZERO,
            condition,
        };
        (op, Timestamp::from_millis(ms))
    };
    let mut deadline = None;
    let (ops, shape, combine) = match cmd {
        Command::Ping(None) => return queue_reply(tx, Frame::Simple("PONG"), name),
        Command::Ping(Some(message)) | Command::Echo(message) => {
            return queue_reply(tx, Frame::Bulk(message), name);
        }
        Command::Unwatch => return queue_reply(tx, Frame::Simple("OK"), name),
        // `DEL` and `EXISTS` of several keys: one operation per key, their replies summed.
        Command::Del(keys) if keys.len() > 1 => (
            keys.into_iter()
                .map(|key| BatchOp::Delete { key })
                .collect(),
            Shape::Flag,
            Combine::Sum,
        ),
        Command::Exists(keys) if keys.len() > 1 => (
            keys.into_iter()
                .map(|key| BatchOp::Exists { key })
                .collect(),
            Shape::Flag,
            Combine::Sum,
        ),
        Command::MGet(keys) => (
            keys.into_iter().map(|key| BatchOp::Get { key }).collect(),
            Shape::Bulk,
            Combine::Array,
        ),
        Command::MSet(pairs) => (
            pairs
                .into_iter()
                .map(|(key, value)| BatchOp::Set {
                    key,
                    value,
                    options: SetOptions::default(),
                })
                .collect(),
            Shape::Set { get: false },
            Combine::Ok,
        ),
        // A read, then the change, as in `Mycel::get_del` and `Mycel::get_ex`.
        Command::GetDel(key) => (
            vec![BatchOp::Get { key: key.clone() }, BatchOp::Delete { key }],
            Shape::Bulk,
            Combine::First,
        ),
        Command::GetEx(key, GetExAction::Keep) => {
            (vec![BatchOp::Get { key }], Shape::Bulk, Combine::One)
        }
        Command::GetEx(key, GetExAction::BadTime(bad)) => (
            vec![BatchOp::Exists { key }],
            Shape::BadTime(bad),
            Combine::One,
        ),
        Command::GetEx(key, GetExAction::Persist) => (
            vec![BatchOp::Get { key: key.clone() }, BatchOp::Persist { key }],
            Shape::Bulk,
            Combine::First,
        ),
        Command::GetEx(key, GetExAction::Expire(cmd::Expiry::In(ms))) => (
            vec![
                BatchOp::Get { key: key.clone() },
                BatchOp::Expire {
                    key,
                    after: Duration::from_millis(ms),
                    condition: ExpireCondition::Always,
                },
            ],
            Shape::Bulk,
            Combine::First,
        ),
        Command::GetEx(key, GetExAction::Expire(cmd::Expiry::At(ms))) => {
            let (change, time) = at(&key, ms, ExpireCondition::Always);
            deadline = Some((1, time));
            (
                vec![BatchOp::Get { key }, change],
                Shape::Bulk,
                Combine::First,
            )
        }
        Command::ExpireAt(key, ms, condition) => {
            let (op, time) = at(&key, u64::try_from(ms).unwrap_or(0), condition);
            deadline = Some((0, time));
            (vec![op], Shape::Flag, Combine::One)
        }
        cmd => match apply::batchable(cmd) {
            Ok((op, shape)) => (vec![op], shape, Combine::One),
            Err(_) => {
                tx.aborted = true;
                return Frame::err(format!(
                    "'{name}' cannot run in a transaction, which takes GET, MGET, SET, \
                     SETNX, GETSET, SETEX, PSETEX, MSET, GETDEL, GETEX, DEL, UNLINK, EXISTS, \
                     TOUCH, INCR, DECR, INCRBY, DECRBY, EXPIRE, PEXPIRE, EXPIREAT, \
                     PEXPIREAT, PERSIST, TTL, PTTL, EXPIRETIME, PEXPIRETIME, TYPE, STRLEN, \
                     GETRANGE, PING, ECHO and UNWATCH"
                ));
            }
        },
    };
    if shared.mycel.cluster().is_some() {
        let partitioning = shared.mycel.config().store.partitioning;
        for op in &ops {
            let partition = partitioning.partition_of(op.key());
            if *tx.partition.get_or_insert(partition) != partition {
                tx.aborted = true;
                return Frame::Error(
                    "CROSSSLOT Keys in request don't hash to the same slot".to_owned(),
                );
            }
        }
    }
    if let Some((i, time)) = deadline {
        tx.deadlines.push((tx.ops.len() + i, time));
    }
    tx.queued.push(Queued::Ops {
        shape,
        combine,
        name,
        n: ops.len(),
    });
    tx.ops.extend(ops);
    Frame::Simple("QUEUED")
}

/// Queues a command whose reply is known now.
fn queue_reply(tx: &mut Transaction, frame: Frame, name: &'static str) -> Frame {
    tx.queued.push(Queued::Reply { frame, name });
    Frame::Simple("QUEUED")
}

/// Executes the collected run as one batch and encodes the replies in order.
async fn flush_run(
    batch: &mut Run,
    args: &[Bytes],
    session: &mut Session,
    shared: &Shared,
    counters: &mut Counters,
    output: &mut BytesMut,
) {
    if batch.ops.is_empty() {
        return;
    }
    let start = Instant::now();
    let results = shared
        .mycel
        .batch(session.bucket, std::mem::take(&mut batch.ops))
        .await;
    let took = start.elapsed();
    // Each command's share of the batch's time, for the duration counters.
    let share = took / u32::try_from(batch.shapes.len()).unwrap_or(u32::MAX).max(1);
    let slow = session.slow_client(&shared.slowlog, took);
    for ((shape, name, at), result) in batch.shapes.drain(..).zip(results) {
        if let Some((addr, client_name)) = &slow {
            shared
                .slowlog
                .push(took, &args[at], *addr, client_name.clone());
        }
        let frame = apply::batch_frame(shape, result);
        count(counters, shared, name, &frame, share);
        frame.encode(session.proto, output);
    }
}

/// Counts an executed command: a call, its time, and its reply if an error.
fn count(
    counters: &mut Counters,
    shared: &Shared,
    name: &'static str,
    frame: &Frame,
    took: Duration,
) {
    let c = counters.get(shared, name);
    c.calls.inc();
    c.duration.inc_by(took.as_secs_f64());
    if matches!(frame, Frame::Error(_)) {
        c.errors.inc();
        count_error(shared, frame);
    }
}

/// Counts an error reply by its code (`INFO errorstats`).
fn count_error(shared: &Shared, frame: &Frame) {
    if let Frame::Error(message) = frame {
        let code = metrics::error_code(message);
        shared
            .metrics
            .error_replies
            .get_or_create(&ErrorLabel { code })
            .inc();
    }
}

/// Serves `stream`, a connection from `peer` to `local` (plain TCP, or TLS over it),
/// until the client leaves, breaks the protocol, another connection kills it
/// (`CLIENT KILL`), or `shutdown` turns true (then the batch being executed is answered
/// first).
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    (peer, local): (SocketAddr, SocketAddr),
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = Client::new(peer, local);
    let mut session = Session::new(&shared, client);
    // Until it authenticates, a connection's requests must be small (see
    // `auth::unauthenticated_limits`), and they are parsed and run one at a time, so that
    // those after an `AUTH` are read with the limits it lifts.
    let mut parser = RequestParser::new(if session.authenticated {
        shared.limits
    } else {
        auth::unauthenticated_limits(shared.limits)
    });
    let mut strict = !session.authenticated;
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut output = BytesMut::with_capacity(READ_CHUNK);
    let mut args = Vec::new();
    // Every request's arguments of one read, for the slow log.
    let mut read_args: Vec<Bytes> = Vec::new();
    let mut counters = Counters::default();
    let mut requests = Vec::new();
    let mut run_buf = Run::default();
    // Both futures live as long as the connection, so a read registers no waiter; only a
    // kill pulls the switch, so its first notification means killed.
    let stop = shutdown.changed();
    let kill = Arc::clone(&session.kill);
    let killed = kill.wait();
    tokio::pin!(stop, killed);
    // Requests left in `input` unparsed (one at a time, see `strict`): run before reading.
    let mut unparsed = false;
    loop {
        if !std::mem::take(&mut unparsed) {
            if input.capacity() - input.len() < READ_CHUNK / 4 {
                input.reserve(READ_CHUNK);
            }
            let read = tokio::select! {
                r = stream.read_buf(&mut input) => r,
                _ = &mut stop => break,
                () = &mut killed => break,
            };
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(client = session.id, error = %e, "read failed");
                    break;
                }
            }
            session.touch();
        }
        // Parse every complete request of this read, then run them in order: runs of
        // single-key commands go to the handle as one batch (one round trip per primary
        // in cluster mode), the others one by one.
        let mut protocol_error = None;
        loop {
            match parser.parse(&mut input, &mut args) {
                Ok(false) => break,
                Ok(true) if args.is_empty() => {}
                Ok(true) => {
                    let request =
                        Command::parse(&args).map_err(|frame| (frame, cmd::refused_name(&args)));
                    let name = cmd::command_name(&args[0]);
                    let start = read_args.len();
                    read_args.append(&mut args);
                    requests.push((name, request, start..read_args.len()));
                    if strict {
                        unparsed = true;
                        break;
                    }
                }
                // A request with a too large argument was dropped; it alone fails.
                Err(e) if !e.is_fatal() => {
                    let at = read_args.len()..read_args.len();
                    requests.push((None, Err((Frame::err(&e), None)), at));
                }
                Err(e) => {
                    protocol_error = Some(e);
                    break;
                }
            }
        }
        let mut close = run(
            &mut requests,
            &read_args,
            &mut session,
            &shared,
            &mut counters,
            &mut run_buf,
            &mut output,
        )
        .await;
        if strict && session.authenticated {
            parser.set_limits(shared.limits);
            strict = false;
        }
        if let (false, Some(e)) = (close, protocol_error) {
            tracing::debug!(client = session.id, error = %e, "protocol error; closing");
            shared.metrics.protocol_errors.inc();
            let reply = Frame::err(&e);
            count_error(&shared, &reply);
            reply.encode(session.proto, &mut output);
            close = true;
        }
        // The arguments share the input's allocation; drop them so it can be reused.
        args.clear();
        read_args.clear();
        if kill.pulled() {
            // Killed by another connection while running these: nothing more is sent.
            break;
        }
        if !output.is_empty() {
            // Let the thread's other ready connections read and run their requests first,
            // then write: as Redis writes its replies once per event loop turn. A client
            // serving many connections (one thread, like redis-benchmark or a pool) is then
            // woken once for a turn's replies rather than once per connection's, and on a
            // VM each wake-up is an IPI the writer pays for. Measured on one node, 50
            // connections: GET -P 16 +48 %, SET -P 16 +33 %; one connection unchanged.
            tokio::task::yield_now().await;
            if kill.pulled() {
                // Killed by a connection that ran during the yield.
                break;
            }
            // A client that stopped reading is what `CLIENT KILL` is for: the kill does
            // not wait for its replies to drain.
            // Flushed too: a TLS stream may still hold the end of the replies once
            // `write_all` took them (its socket was full), and sends it only when flushed,
            // not while the loop waits for the next request. (A TCP stream's flush does
            // nothing.)
            let written = tokio::select! {
                r = async {
                    stream.write_all(&output).await?;
                    stream.flush().await
                } => r,
                () = &mut killed => break,
            };
            if let Err(e) = written {
                tracing::debug!(client = session.id, error = %e, "write failed");
                break;
            }
            output.clear();
            if output.capacity() > MAX_IDLE_OUTPUT {
                output = BytesMut::with_capacity(READ_CHUNK);
            }
        }
        if close {
            break;
        }
    }
    // Bounded: a TLS stream's shutdown first sends what it holds, which a client that
    // stopped reading (a killed one, say) never takes.
    match tokio::time::timeout(SHUTDOWN_TIMEOUT, stream.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::trace!(client = session.id, error = %e, "shutdown after close"),
        Err(_) => tracing::debug!(client = session.id, "shutdown after close timed out"),
    }
}
