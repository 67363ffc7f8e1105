//! Executes parsed commands against the [`Mycel`](mycel::Mycel) handle and builds their
//! replies, in Redis's formats and words.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mycel::store::entry_weight;
use mycel::{
    BatchOp, BatchReply, BucketId, BucketOptions, Condition, Error, Expiry, GetEx, KeyStamp, Mycel,
    Partition, Renamed, SetOptions, Timestamp, Ttl,
};

use super::cmd::{
    self, BadTime, BucketArg, ClientAttr, Command, Credentials, GetExAction, SetCondition,
};
use super::frame::{Frame, Protocol};
use crate::auth;
use crate::slowlog;
use crate::state::{Activity, Client, KillSwitch, Registration, Shared};

/// Protocol version Redis compatibility is claimed at (`INFO`'s `redis_version`, `HELLO`).
pub(crate) const REDIS_COMPAT_VERSION: &str = "7.2.0";

/// One client connection's state.
#[derive(Debug)]
pub(crate) struct Session {
    /// `CLIENT ID`.
    pub(crate) id: u64,
    /// The client's entry in `CLIENT LIST` (its name, library and protocol).
    client: Registration,
    /// RESP2 until `HELLO 3`.
    pub(crate) proto: Protocol,
    /// The bucket commands act on (`MYCEL.BUCKET`), the default bucket at first.
    pub(crate) bucket: BucketId,
    /// Its name.
    pub(crate) bucket_name: Arc<str>,
    /// What `CLIENT LIST` shows of its activity, and the command name last stored there.
    activity: Arc<Activity>,
    last_cmd: &'static str,
    /// Pulled when another connection kills this one (`CLIENT KILL`).
    pub(crate) kill: Arc<KillSwitch>,
    /// Whether it may run commands: from the start on a server without a password,
    /// after `AUTH` (or `HELLO ... AUTH`) on one with (see [`crate::auth`]).
    pub(crate) authenticated: bool,
    /// The commands queued since `MULTI`, until `EXEC` or `DISCARD`.
    pub(crate) transaction: Option<Transaction>,
    /// The keys watched since `WATCH`, until `EXEC`, `DISCARD` or `UNWATCH`.
    pub(crate) watched: Watched,
}

/// Most keys one connection watches at a time, and most bytes of them: each is checked
/// in the transaction's message to the primary, which a message's size bounds, and they
/// are held for as long as the client likes.
pub(crate) const MAX_WATCHED_KEYS: usize = 4096;
pub(crate) const MAX_WATCHED_BYTES: usize = 1024 * 1024;

/// Keys watched (`WATCH`), of the session's bucket, each with the stamp it had: `EXEC`
/// runs the transaction only if every one still has it (`Mycel::transaction_if`),
/// and answers a null array otherwise, running nothing. While keys are watched the
/// session keeps its bucket (`MYCEL.BUCKET` is refused), so the stamps are of the
/// transaction's bucket.
#[derive(Debug, Default)]
pub(crate) struct Watched {
    /// The keys and their stamps.
    pub(crate) keys: HashMap<Bytes, KeyStamp>,
    /// The keys' bytes.
    pub(crate) bytes: usize,
    /// Their partition (in a cluster, where a transaction's keys are of one).
    pub(crate) partition: Option<Partition>,
    /// A `WATCH` failed, so a key may be missing: the next `EXEC` runs nothing.
    pub(crate) failed: bool,
}

/// A transaction being queued (`MULTI` ... `EXEC`): the commands as batch operations,
/// which `EXEC` runs with `Mycel::transaction`: in order, no other client's command
/// between them. In a cluster every key must be in one partition (Redis Cluster's rule,
/// with partitions for slots), whose primary applies them under one hold of its lock.
#[derive(Debug, Default)]
pub(crate) struct Transaction {
    /// The operations, in order.
    pub(crate) ops: Vec<BatchOp>,
    /// The commands, in order.
    pub(crate) queued: Vec<Queued>,
    /// The partition of the first key (in a cluster).
    pub(crate) partition: Option<Partition>,
    /// A command could not be queued: `EXEC` answers `EXECABORT`.
    pub(crate) aborted: bool,
    /// Operations given an absolute expiry time (`EXPIREAT`, `GETEX ... EXAT`): the
    /// index of a [`BatchOp::Expire`] in `ops` and the time, turned into its `after`
    /// when `EXEC` runs rather than when the command was queued.
    pub(crate) deadlines: Vec<(usize, Timestamp)>,
}

impl Transaction {
    /// The operations, the absolute expiry times turned into durations from now.
    pub(crate) fn into_ops(self) -> (Vec<BatchOp>, Vec<Queued>) {
        let Self {
            mut ops,
            queued,
            deadlines,
            ..
        } = self;
        let now = mycel::now().as_millis();
        for (i, at) in deadlines {
            if let Some(BatchOp::Expire { after, .. }) = ops.get_mut(i) {
                *after = Duration::from_millis(at.as_millis().saturating_sub(now));
            }
        }
        (ops, queued)
    }
}

/// A command of a [`Transaction`].
#[derive(Debug)]
pub(crate) enum Queued {
    /// The next `n` of the transaction's operations, each answered as `shape`, the
    /// answers made one as `combine` says.
    Ops {
        shape: Shape,
        combine: Combine,
        name: &'static str,
        n: usize,
    },
    /// A reply known when queued: a bad argument's error (answered at `EXEC`, as Redis
    /// does), or that of a command that reads no data (`PING`, `ECHO`, `UNWATCH`).
    Reply { frame: Frame, name: &'static str },
}

/// How the replies of a queued command's operations make its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Combine {
    /// One operation: its reply.
    One,
    /// Their integer replies summed (`DEL`, `EXISTS` of several keys), or the first
    /// error.
    Sum,
    /// An array of their replies (`MGET`).
    Array,
    /// `OK`, or the first error (`MSET`).
    Ok,
    /// The first one's reply, or a later one's error (`GETDEL`, `GETEX`: a read, then a
    /// change of the key read).
    First,
}

impl Combine {
    /// The reply of a command from the results of its operations, answered as `shape`.
    pub(crate) fn reply(self, shape: Shape, results: Vec<Result<BatchReply, Error>>) -> Frame {
        let first_error = |results: &[Result<BatchReply, Error>]| {
            results
                .iter()
                .find_map(|r| r.as_ref().err().map(error_frame))
        };
        match self {
            Self::One | Self::First => {
                if let Some(e) = results.get(1..).and_then(first_error) {
                    return e;
                }
                results.into_iter().next().map_or_else(
                    || Frame::err("no answer for the operation"),
                    |r| batch_frame(shape, r),
                )
            }
            Self::Sum => {
                let mut sum = 0;
                for r in results {
                    match batch_frame(shape, r) {
                        Frame::Integer(n) => sum += n,
                        error => return error,
                    }
                }
                Frame::Integer(sum)
            }
            Self::Array => {
                Frame::Array(results.into_iter().map(|r| batch_frame(shape, r)).collect())
            }
            Self::Ok => first_error(&results).unwrap_or(OK),
        }
    }
}

impl Session {
    /// A new connection's session, listed by `CLIENT LIST` until it is dropped.
    pub(crate) fn new(shared: &Shared, client: Client) -> Self {
        let activity = Arc::clone(&client.activity);
        let kill = Arc::clone(&client.kill);
        let client = shared.register_client(client);
        Self {
            id: client.id(),
            client,
            proto: Protocol::Resp2,
            bucket: shared.mycel.default_bucket(),
            bucket_name: mycel::DEFAULT_BUCKET.into(),
            activity,
            last_cmd: "NULL",
            kill,
            authenticated: !shared.requirepass.is_set(),
            transaction: None,
            watched: Watched::default(),
        }
    }

    /// The connection read requests now (`CLIENT LIST`'s `idle` restarts).
    pub(crate) fn touch(&self) {
        self.activity.touch();
    }

    /// It runs `cmd` now (`CLIENT LIST`'s `cmd`).
    pub(crate) fn command(&mut self, cmd: &'static str) {
        self.activity.command(&mut self.last_cmd, cmd);
    }

    /// Who the slow log names for a command that took `took`: this client's address and
    /// name; `None` when that is not slow enough to log (or the connection was killed:
    /// its entry is gone).
    pub(crate) fn slow_client(
        &self,
        log: &slowlog::SlowLog,
        took: Duration,
    ) -> Option<(SocketAddr, Bytes)> {
        if !log.is_slow(took) {
            return None;
        }
        let client = self.client.get()?;
        Some((client.addr, client.name.unwrap_or_default()))
    }

    /// `CLIENT SETNAME` and `HELLO`'s `SETNAME`: an empty name removes it.
    fn set_name(&self, name: Bytes) {
        self.client
            .update(|c| c.name = (!name.is_empty()).then_some(name));
    }
}

/// What the connection does after sending a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Read the next request.
    Continue,
    /// Close the connection (after `QUIT`'s `+OK`).
    Close,
}

const OK: Frame = Frame::Simple("OK");

/// The command's name as `CLIENT LIST` shows it (`cmd=`): Redis 7's, `name` (as
/// [`cmd::command_name`] gives it) with a container command's subcommand (`client|list`).
pub(crate) fn full_name(cmd: &Command, name: &'static str) -> &'static str {
    match cmd {
        Command::ClientSetName(_) => "client|setname",
        Command::ClientGetName => "client|getname",
        Command::ClientId => "client|id",
        Command::ClientSetInfo(..) => "client|setinfo",
        Command::ClientInfo => "client|info",
        Command::ClientList(_) => "client|list",
        Command::ClientKill(_) => "client|kill",
        Command::ClientHelp => "client|help",
        Command::ConfigHelp => "config|help",
        Command::ConfigGet(_) => "config|get",
        Command::ConfigSet(_) => "config|set",
        Command::MemoryUsage(_) => "memory|usage",
        Command::MemoryHelp => "memory|help",
        Command::SlowlogGet(_) => "slowlog|get",
        Command::SlowlogLen => "slowlog|len",
        Command::SlowlogReset => "slowlog|reset",
        Command::SlowlogHelp => "slowlog|help",
        Command::Command(args) => {
            let sub = args.first().map(|a| a.to_ascii_lowercase());
            match sub.as_deref() {
                Some(b"count") => "command|count",
                Some(b"info") => "command|info",
                Some(b"docs") => "command|docs",
                Some(b"list") => "command|list",
                _ => "command",
            }
        }
        _ => name,
    }
}

/// The error reply for a failed operation, in Redis's words where Redis has them.
pub(crate) fn error_frame(e: &Error) -> Frame {
    match e {
        Error::NotAnInteger => cmd::not_an_integer(),
        Error::Overflow => Frame::err("increment or decrement would overflow"),
        Error::NotAFloat => Frame::err("value is not a valid float"),
        Error::NotFinite => Frame::err("increment would produce NaN or Infinity"),
        Error::NotOwner { .. } => Frame::Error(format!("TRYAGAIN {e}")),
        Error::Timeout => Frame::Error(format!("TIMEOUT {e}")),
        Error::QuorumLost => Frame::Error(format!("CLUSTERDOWN {e}")),
        Error::TryAgain { .. } => Frame::Error(format!("TRYAGAIN {e}")),
        Error::Cluster { .. } => Frame::Error(format!("CLUSTERDOWN {e}")),
        Error::CrossSlot => {
            Frame::Error("CROSSSLOT Keys in request don't hash to the same slot".into())
        }
        _ => Frame::err(e),
    }
}

/// Executes `cmd` for `session`.
pub(crate) async fn execute(
    cmd: Command,
    session: &mut Session,
    shared: &Shared,
) -> (Frame, After) {
    let m = &shared.mycel;
    let b = session.bucket;
    let reply = match cmd {
        Command::Ping(None) => Ok(Frame::Simple("PONG")),
        Command::Ping(Some(msg)) | Command::Echo(msg) => Ok(Frame::Bulk(msg)),
        Command::Quit => return (OK, After::Close),
        // The connection runs transactions (see `conn::transaction`).
        Command::Multi | Command::Exec | Command::Discard => Ok(OK),
        Command::Unwatch => {
            session.watched = Watched::default();
            Ok(OK)
        }
        Command::Watch(keys) => watch(keys, session, shared).await,
        // The single-key commands `batchable` takes: a connection runs them in batches,
        // and one that reaches here runs as a batch of one, so each has one
        // implementation.
        cmd @ (Command::Get(_)
        | Command::Set(_)
        | Command::SetNx(..)
        | Command::Expire(..)
        | Command::Ttl(..)
        | Command::ExpireTime(..)
        | Command::Type(_)
        | Command::StrLen(_)
        | Command::GetRange(..)
        | Command::MemoryUsage(_)
        | Command::Persist(_)
        | Command::IncrBy(..)) => {
            return (batch_of_one(cmd, session, shared).await, After::Continue);
        }
        Command::GetDel(key) => m.get_del(b, key).await.map(bulk_or_null),
        Command::GetEx(key, action) => {
            let action = match action {
                GetExAction::Keep => GetEx::Keep,
                GetExAction::Persist => GetEx::Persist,
                GetExAction::Expire(cmd::Expiry::In(ms)) => GetEx::After(Duration::from_millis(ms)),
                GetExAction::Expire(cmd::Expiry::At(ms)) => GetEx::At(Timestamp::from_millis(ms)),
                // Redis looks the key up first: a missing key is a null whatever the time.
                GetExAction::BadTime(bad) => {
                    let reply = m.exists(b, &key).await.map(|exists| {
                        if exists {
                            bad.frame("getex")
                        } else {
                            Frame::Null
                        }
                    });
                    return (reply.unwrap_or_else(|e| error_frame(&e)), After::Continue);
                }
            };
            m.get_ex(b, key, action).await.map(bulk_or_null)
        }
        Command::Del(keys) => count(keys, |k| m.delete(b, k)).await,
        Command::Exists(keys) => {
            let mut n = 0;
            let mut result = Ok(());
            for k in &keys {
                match m.exists(b, k).await {
                    Ok(true) => n += 1,
                    Ok(false) => {}
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            result.map(|()| Frame::Integer(n))
        }
        Command::MGet(keys) => m
            .mget(b, &keys)
            .await
            .map(|vs| Frame::Array(vs.into_iter().map(bulk_or_null).collect())),
        Command::MSet(pairs) => m.mset(b, pairs).await.map(|()| OK),
        Command::MSetNx(pairs) => m
            .mset_nx(b, pairs)
            .await
            .map(|x| Frame::Integer(i64::from(x))),
        Command::ExpireAt(key, ms, condition) => {
            let at = Timestamp::from_millis(u64::try_from(ms).unwrap_or(0));
            m.expire_at_if(b, key, at, condition)
                .await
                .map(|x| Frame::Integer(i64::from(x)))
        }
        Command::MemoryHelp => Ok(help(MEMORY_HELP)),
        Command::ClientHelp => Ok(help(CLIENT_HELP)),
        Command::ConfigHelp => Ok(help(CONFIG_HELP)),
        Command::SlowlogGet(count) => Ok(shared.slowlog.get(count)),
        Command::SlowlogLen => Ok(Frame::Integer(
            i64::try_from(shared.slowlog.len()).unwrap_or(i64::MAX),
        )),
        Command::SlowlogReset => {
            shared.slowlog.reset();
            Ok(OK)
        }
        Command::SlowlogHelp => Ok(help(slowlog::HELP)),
        Command::SetRange(key, offset, value) => m
            .set_range(b, key, offset, value)
            .await
            .map(|n| Frame::Integer(i64::try_from(n).unwrap_or(i64::MAX))),
        Command::Rename { from, to, replace } => {
            m.rename(b, from, to, replace)
                .await
                .map(|done| match (done, replace) {
                    (Renamed::Missing, _) => Frame::err("no such key"),
                    (_, true) => OK,
                    (Renamed::Done, false) => Frame::Integer(1),
                    (Renamed::TargetExists, false) => Frame::Integer(0),
                })
        }
        Command::Copy { from, to, replace } => m
            .copy(b, from, to, replace)
            .await
            .map(|x| Frame::Integer(i64::from(x))),
        Command::IncrByFloat(key, increment) => {
            m.incr_by_float(b, key, increment).await.map(Frame::Bulk)
        }
        Command::Append(key, value) => m
            .append(b, key, value)
            .await
            .map(|n| Frame::Integer(i64::try_from(n).unwrap_or(i64::MAX))),
        Command::Time => Ok(time_frame()),
        Command::Role => Ok(Frame::Array(vec![
            Frame::bulk("master"),
            Frame::Integer(0),
            Frame::Array(Vec::new()),
        ])),
        Command::DbSize => m
            .len()
            .await
            .map(|n| Frame::Integer(i64::try_from(n).unwrap_or(i64::MAX))),
        Command::Scan(scan) => m
            .scan(b, scan.cursor, scan.count, scan.pattern.as_deref())
            .await
            .map(|page| {
                let keys = if scan.strings { page.keys } else { Vec::new() };
                Frame::Array(vec![
                    Frame::bulk(page.cursor.to_string()),
                    Frame::Array(keys.into_iter().map(Frame::Bulk).collect()),
                ])
            }),
        Command::Keys(pattern) => keys(m, b, pattern.as_deref())
            .await
            .map(|keys| Frame::Array(keys.into_iter().map(Frame::Bulk).collect())),
        Command::FlushDb => m.flush().await.map(|()| OK),
        Command::Select(0) => Ok(OK),
        Command::Select(_) => Ok(Frame::err("DB index is out of range")),
        Command::Info(sections) => info(shared, &sections).await.map(Frame::Text),
        Command::ClientSetName(name) => {
            session.set_name(name);
            Ok(OK)
        }
        Command::ClientGetName => Ok(session
            .client
            .get()
            .and_then(|c| c.name)
            .map_or(Frame::Null, Frame::Bulk)),
        Command::ClientId => Ok(Frame::Integer(
            i64::try_from(session.id).unwrap_or(i64::MAX),
        )),
        Command::ClientSetInfo(attr, value) => {
            let value = (!value.is_empty()).then_some(value);
            session.client.update(|c| match attr {
                ClientAttr::LibName => c.lib_name = value,
                ClientAttr::LibVer => c.lib_ver = value,
            });
            Ok(OK)
        }
        Command::ClientInfo => {
            let mut line = String::new();
            if let Some(c) = session.client.get() {
                c.line(session.id, &mut line);
            }
            Ok(Frame::Text(Bytes::from(line)))
        }
        Command::ClientList(ids) => {
            Ok(Frame::Text(Bytes::from(shared.client_list(ids.as_deref()))))
        }
        Command::ClientKill(filter) => {
            let (killed, myself) = shared.kill_clients(&filter, session.id);
            let frame = match (filter.old_form, killed) {
                (true, 0) => Frame::err("No such client"),
                (true, _) => OK,
                (false, n) => Frame::Integer(i64::try_from(n).unwrap_or(i64::MAX)),
            };
            // A connection that killed itself gets its reply, then closes.
            return (
                frame,
                if myself {
                    After::Close
                } else {
                    After::Continue
                },
            );
        }
        Command::Command(args) => Ok(command_reply(&args)),
        Command::ConfigGet(patterns) => Ok(config_get(shared, &patterns)),
        Command::ConfigSet(pairs) => Ok(config_set(shared, &pairs)),
        Command::Bucket(arg) => bucket(shared, session, arg).await,
        Command::Hello { proto, name, auth } => {
            Ok(hello(session, shared, proto, name, auth.as_ref()))
        }
        Command::Auth(credentials) => Ok(authenticate(session, shared, &credentials)
            .err()
            .unwrap_or(OK)),
    };
    let frame = reply.unwrap_or_else(|e| error_frame(&e));
    (frame, After::Continue)
}

fn bulk_or_null(v: Option<Bytes>) -> Frame {
    v.map_or(Frame::Null, Frame::Bulk)
}

async fn count<F, Fut>(keys: Vec<Bytes>, mut op: F) -> Result<Frame, Error>
where
    F: FnMut(Bytes) -> Fut,
    Fut: Future<Output = Result<bool, Error>>,
{
    let mut n = 0;
    for k in keys {
        if op(k).await? {
            n += 1;
        }
    }
    Ok(Frame::Integer(n))
}

/// The store's options for a parsed `SET`.
fn set_options(set: &cmd::Set) -> SetOptions {
    let expiry = match (set.expiry, set.keep_ttl) {
        (Some(cmd::Expiry::In(ms)), _) => Expiry::After(Duration::from_millis(ms)),
        (Some(cmd::Expiry::At(ms)), _) => Expiry::At(Timestamp::from_millis(ms)),
        (None, true) => Expiry::Keep,
        (None, false) => Expiry::BucketDefault,
    };
    let condition = match set.condition {
        SetCondition::Always => Condition::Always,
        SetCondition::IfAbsent => Condition::IfAbsent,
        SetCondition::IfPresent => Condition::IfPresent,
    };
    SetOptions {
        expiry,
        condition,
        get: set.get,
    }
}

/// `SET`'s reply: the previous value with `GET`, else `OK` or a null when a condition
/// was not met.
fn set_frame(get: bool, written: bool, previous: Option<Bytes>) -> Frame {
    if get {
        bulk_or_null(previous)
    } else if written {
        OK
    } else {
        Frame::Null
    }
}

/// Runs `cmd`, one of the commands [`batchable`] takes, as a batch of one.
async fn batch_of_one(cmd: Command, session: &Session, shared: &Shared) -> Frame {
    match batchable(cmd) {
        Ok((op, shape)) => match shared.mycel.batch(session.bucket, vec![op]).await.pop() {
            Some(result) => batch_frame(shape, result),
            None => Frame::err("internal error: a batch of one answered nothing"),
        },
        Err(_) => Frame::err("internal error: not a single-key command"),
    }
}

/// How a batched command's reply is rendered from its [`BatchReply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// A bulk string or null (`GET`).
    Bulk,
    /// `SET` (with or without its `GET` option).
    Set { get: bool },
    /// An integer 1 or 0 (`SETNX`, `DEL`/`EXISTS` of one key, `EXPIRE`, `PERSIST`).
    Flag,
    /// `TTL` (`millis` false) or `PTTL`.
    Ttl { millis: bool },
    /// `EXPIRETIME` (`millis` false) or `PEXPIRETIME`.
    ExpireTime { millis: bool },
    /// `TYPE`: `string` or `none`.
    Type,
    /// `STRLEN`: the value's length.
    Len,
    /// `GETRANGE`: the bytes from `start` to `end` (inclusive; see [`range_frame`]).
    Range { start: i64, end: i64 },
    /// `MEMORY USAGE` of a `key_len`-byte key: its entry's weight, or null.
    Weight { key_len: usize },
    /// An integer (`INCRBY` and friends).
    Integer,
    /// `GETEX` with a refused expiry time: the time's error if the key exists, else a
    /// null (Redis looks the key up first).
    BadTime(BadTime),
}

/// `cmd` as one single-key operation that can run in a batch with its neighbours, or the
/// command back if it cannot (multi-key, connection state, server commands).
pub(crate) fn batchable(cmd: Command) -> Result<(BatchOp, Shape), Command> {
    Ok(match cmd {
        Command::Get(key) => (BatchOp::Get { key }, Shape::Bulk),
        Command::Set(set) => {
            let options = set_options(&set);
            let get = set.get;
            (
                BatchOp::Set {
                    key: set.key,
                    value: set.value,
                    options,
                },
                Shape::Set { get },
            )
        }
        Command::SetNx(key, value) => (
            BatchOp::Set {
                key,
                value,
                options: SetOptions {
                    condition: Condition::IfAbsent,
                    ..SetOptions::default()
                },
            },
            Shape::Flag,
        ),
        Command::Del(mut keys) if keys.len() == 1 => (
            BatchOp::Delete {
                key: keys.pop().expect("invariant: one key"),
            },
            Shape::Flag,
        ),
        Command::Exists(mut keys) if keys.len() == 1 => (
            BatchOp::Exists {
                key: keys.pop().expect("invariant: one key"),
            },
            Shape::Flag,
        ),
        Command::Expire(key, ms, condition) => (
            BatchOp::Expire {
                key,
                after: Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
                condition,
            },
            Shape::Flag,
        ),
        Command::Ttl(key, millis) => (BatchOp::Ttl { key }, Shape::Ttl { millis }),
        Command::ExpireTime(key, millis) => (BatchOp::Ttl { key }, Shape::ExpireTime { millis }),
        Command::Type(key) => (BatchOp::Exists { key }, Shape::Type),
        Command::StrLen(key) => (BatchOp::Get { key }, Shape::Len),
        Command::GetRange(key, start, end) => (BatchOp::Get { key }, Shape::Range { start, end }),
        Command::MemoryUsage(key) => {
            let key_len = key.len();
            (BatchOp::Get { key }, Shape::Weight { key_len })
        }
        Command::Persist(key) => (BatchOp::Persist { key }, Shape::Flag),
        Command::IncrBy(key, delta) => (BatchOp::IncrBy { key, delta }, Shape::Integer),
        cmd => return Err(cmd),
    })
}

/// The reply frame of a batched command.
pub(crate) fn batch_frame(shape: Shape, result: Result<BatchReply, Error>) -> Frame {
    match (shape, result) {
        (_, Err(e)) => error_frame(&e),
        (Shape::Bulk, Ok(BatchReply::Value(v))) => bulk_or_null(v),
        (Shape::Set { get }, Ok(BatchReply::Set(r))) => set_frame(get, r.applied, r.previous),
        (Shape::Flag, Ok(BatchReply::Set(r))) => Frame::Integer(i64::from(r.applied)),
        (Shape::Flag, Ok(BatchReply::Bool(b))) => Frame::Integer(i64::from(b)),
        (Shape::Ttl { millis }, Ok(BatchReply::Ttl(t))) => ttl_frame(t, millis),
        (Shape::ExpireTime { millis }, Ok(BatchReply::Ttl(t))) => expire_time_frame(t, millis),
        (Shape::Type, Ok(BatchReply::Bool(b))) => type_frame(b),
        (Shape::Len, Ok(BatchReply::Value(v))) => strlen_frame(v.as_ref()),
        (Shape::Range { start, end }, Ok(BatchReply::Value(v))) => {
            range_frame(v.as_ref(), start, end)
        }
        (Shape::Weight { key_len }, Ok(BatchReply::Value(v))) => weight_frame(key_len, v.as_ref()),
        (Shape::Integer, Ok(BatchReply::Int(v))) => Frame::Integer(v),
        (Shape::BadTime(bad), Ok(BatchReply::Bool(exists))) => {
            if exists {
                bad.frame("getex")
            } else {
                Frame::Null
            }
        }
        (_, Ok(_)) => Frame::err("internal error: unexpected reply kind"),
    }
}

fn ttl_frame(t: Ttl, millis: bool) -> Frame {
    expiry_frame(t, millis, false)
}

/// `EXPIRETIME`/`PEXPIRETIME`: the Unix time of the deadline.
fn expire_time_frame(t: Ttl, millis: bool) -> Frame {
    expiry_frame(t, millis, true)
}

/// A key's expiry as the time left (`TTL`) or, `absolute`, as the deadline's Unix time:
/// milliseconds, or seconds rounded to the nearest as Redis does; -2 for a missing key, -1
/// for one that does not expire.
fn expiry_frame(t: Ttl, millis: bool, absolute: bool) -> Frame {
    Frame::Integer(match t {
        Ttl::Missing => -2,
        Ttl::Persistent => -1,
        Ttl::Expires { at, remaining } => {
            let ms = if absolute {
                u128::from(at.as_millis())
            } else {
                remaining.as_millis()
            };
            let ms = i64::try_from(ms).unwrap_or(i64::MAX);
            if millis {
                ms
            } else {
                ms.saturating_add(500) / 1000
            }
        }
    })
}

/// `TYPE`: every Mycel value is a string.
fn type_frame(exists: bool) -> Frame {
    Frame::Simple(if exists { "string" } else { "none" })
}

fn strlen_frame(v: Option<&Bytes>) -> Frame {
    Frame::Integer(v.map_or(0, |v| i64::try_from(v.len()).unwrap_or(i64::MAX)))
}

/// A `HELP` subcommand's reply: its lines as simple strings.
fn help(lines: &'static [&'static str]) -> Frame {
    Frame::Array(lines.iter().map(|&line| Frame::Simple(line)).collect())
}

/// `MEMORY HELP`, in Redis's layout, for the one subcommand Mycel serves.
const MEMORY_HELP: &[&str] = &[
    "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "USAGE <key> [SAMPLES <count>]",
    "    Return the bytes <key> weighs against the memory budget (maxmemory): the key,",
    "    its value and a fixed overhead per entry. SAMPLES is accepted and ignored.",
    "HELP",
    "    Print this help.",
];

/// `CLIENT HELP`, in Redis's layout, for the subcommands Mycel serves.
const CLIENT_HELP: &[&str] = &[
    "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GETNAME",
    "    Return the name of the current connection.",
    "ID",
    "    Return the ID of the current connection.",
    "INFO",
    "    Return information about the current client connection.",
    "KILL <ip:port>",
    "    Kill connection made from <ip:port>.",
    "KILL <option> <value> [<option> <value> [...]]",
    "    Kill connections. Options are:",
    "    * ID <client-id>",
    "      Kill connections by client id.",
    "    * ADDR <ip:port>",
    "      Kill connections made from the specified address",
    "    * LADDR <ip:port>",
    "      Kill connections made to specified local address",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    "      Kill connections by type.",
    "    * USER <username>",
    "      Kill connections authenticated by <username>.",
    "    * SKIPME (YES|NO)",
    "      Skip killing current connection (default: yes).",
    "LIST [options ...]",
    "    Return information about client connections. Options:",
    "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
    "      Return clients of specified type.",
    "    * ID <client-id> [<client-id> ...]",
    "      Return clients with the given ids.",
    "SETINFO <option> <value>",
    "    Set client meta attributes (LIB-NAME, LIB-VER) of the current connection.",
    "SETNAME <name>",
    "    Assign the name <name> to the current connection.",
    "HELP",
    "    Print this help.",
];

/// `CONFIG HELP`, in Redis's layout, for what Mycel's `CONFIG` does.
const CONFIG_HELP: &[&str] = &[
    "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "GET <pattern>",
    "    Return parameters matching the glob-like <pattern> and their values.",
    "SET <directive> <value>",
    "    Set the configuration <directive> to <value> (slowlog-log-slower-than and",
    "    slowlog-max-len; the others are set at start).",
    "HELP",
    "    Print this help.",
];

/// `COMMAND HELP`, in Redis's layout, for the subcommands Mycel serves.
const COMMAND_HELP: &[&str] = &[
    "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
    "(no subcommand)",
    "    Return details about all commands.",
    "COUNT",
    "    Return the total number of commands in this server.",
    "LIST",
    "    Return a list of all commands in this server.",
    "INFO [<command-name> ...]",
    "    Return details about multiple commands.",
    "    If no command names are given, details for all commands are returned.",
    "DOCS [<command-name> ...]",
    "    Return documentation details about multiple commands (none is kept).",
    "GETKEYS <full-command>",
    "    Return the keys from a full command.",
    "HELP",
    "    Print this help.",
];

/// `MEMORY USAGE`: what the key's entry weighs against the memory budget, null for a
/// missing key.
fn weight_frame(key_len: usize, v: Option<&Bytes>) -> Frame {
    v.map_or(Frame::Null, |v| {
        Frame::Integer(i64::try_from(entry_weight(key_len, v.len())).unwrap_or(i64::MAX))
    })
}

/// `GETRANGE key start end`: the bytes from `start` to `end`, both included, a negative
/// index counting from the end (-1 the last byte), clamped to the value as Redis does; an
/// empty string for a missing key or an empty range.
fn range_frame(v: Option<&Bytes>, start: i64, end: i64) -> Frame {
    let empty = || Frame::Bulk(Bytes::new());
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return empty();
    };
    if start < 0 && end < 0 && start > end {
        return empty();
    }
    let len = i64::try_from(v.len()).unwrap_or(i64::MAX);
    let index = |i: i64| {
        if i < 0 {
            len.saturating_add(i).max(0)
        } else {
            i
        }
    };
    let (start, end) = (index(start), index(end).min(len - 1));
    if start > end {
        return empty();
    }
    // Both within 0..len here.
    let (start, end) = (
        usize::try_from(start).unwrap_or(0),
        usize::try_from(end).unwrap_or(0),
    );
    Frame::Bulk(v.slice(start..=end))
}

/// `TIME`: seconds and microseconds since the Unix epoch, as bulk strings.
fn time_frame() -> Frame {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Frame::Array(vec![
        Frame::Bulk(Bytes::from(now.as_secs().to_string())),
        Frame::Bulk(Bytes::from(now.subsec_micros().to_string())),
    ])
}

/// `WATCH`: remembers each key's stamp, the new keys' read together at their primary. In
/// a cluster every watched key must be in one partition, as a transaction's (`CROSSSLOT`
/// otherwise). A refused `WATCH` leaves keys unwatched, so it makes the next `EXEC` run
/// nothing too (a client that went on regardless does not get an unguarded transaction).
async fn watch(keys: Vec<Bytes>, session: &mut Session, shared: &Shared) -> Result<Frame, Error> {
    let watched = &mut session.watched;
    if shared.mycel.cluster().is_some() {
        let partitioning = shared.mycel.config().store.partitioning;
        let mut partition = watched.partition;
        for key in &keys {
            let p = partitioning.partition_of(key);
            if *partition.get_or_insert(p) != p {
                watched.failed = true;
                return Ok(Frame::Error(
                    "CROSSSLOT Keys in request don't hash to the same slot".to_owned(),
                ));
            }
        }
        watched.partition = partition;
    }
    let mut new: HashSet<Bytes> = HashSet::new();
    let mut bytes = watched.bytes;
    let max_key_len = shared.mycel.config().store.max_key_len;
    for key in keys {
        if key.len() > max_key_len {
            watched.failed = true;
            return Err(Error::KeyTooLarge {
                len: key.len(),
                max: max_key_len,
            });
        }
        if watched.keys.contains_key(&key) {
            continue;
        }
        let len = key.len();
        if new.insert(key) {
            bytes += len;
        }
        if watched.keys.len() + new.len() > MAX_WATCHED_KEYS || bytes > MAX_WATCHED_BYTES {
            watched.failed = true;
            return Ok(Frame::err(format!(
                "WATCH of more than {MAX_WATCHED_KEYS} keys or {} KiB of keys on one \
                 connection",
                MAX_WATCHED_BYTES / 1024
            )));
        }
    }
    if new.is_empty() {
        return Ok(OK);
    }
    let new: Vec<Bytes> = new.into_iter().collect();
    match shared.mycel.stamps(session.bucket, new.clone()).await {
        Ok(stamps) => {
            watched.keys.extend(new.into_iter().zip(stamps));
            watched.bytes = bytes;
            Ok(OK)
        }
        Err(e) => {
            watched.failed = true;
            Err(e)
        }
    }
}

async fn bucket(
    shared: &Shared,
    session: &mut Session,
    arg: Option<BucketArg>,
) -> Result<Frame, Error> {
    let Some(arg) = arg else {
        return Ok(Frame::Bulk(Bytes::copy_from_slice(
            session.bucket_name.as_bytes(),
        )));
    };
    if !session.watched.keys.is_empty() {
        return Ok(Frame::err(
            "MYCEL.BUCKET while keys are watched: UNWATCH (or EXEC) first",
        ));
    }
    let Ok(name) = std::str::from_utf8(&arg.name) else {
        return Ok(Frame::err("bucket names must be UTF-8"));
    };
    let id = match arg.create {
        Some(ttl) => {
            let options = BucketOptions {
                default_ttl: ttl.map(Duration::from_millis),
                ..BucketOptions::default()
            };
            match shared.mycel.create_bucket(name, options).await {
                Err(Error::Unsupported { .. }) => {
                    return Ok(Frame::err(
                        "MYCEL.BUCKET CREATE is not supported in cluster mode: declare buckets in the config file of every node",
                    ));
                }
                r => r?,
            }
        }
        None => shared.mycel.bucket(name).await?,
    };
    session.bucket = id;
    session.bucket_name = name.into();
    Ok(OK)
}

/// `AUTH`: authenticates the connection, or the error reply (which changes nothing).
fn authenticate(
    session: &mut Session,
    shared: &Shared,
    credentials: &Credentials,
) -> Result<(), Frame> {
    let checked = shared.requirepass.check(credentials);
    match &checked {
        Ok(()) => session.authenticated = true,
        Err(_) => tracing::debug!(client = session.id, "authentication failed"),
    }
    checked
}

fn hello(
    session: &mut Session,
    shared: &Shared,
    proto: Option<i64>,
    name: Option<Bytes>,
    credentials: Option<&Credentials>,
) -> Frame {
    // As in Redis: the credentials first (a failure changes nothing), and a connection
    // that has not authenticated must do it here.
    match credentials {
        Some(c) => {
            if let Err(e) = authenticate(session, shared, c) {
                return e;
            }
        }
        None if !session.authenticated => return Frame::Error(auth::NOAUTH_HELLO.to_owned()),
        None => {}
    }
    match proto {
        None => {}
        Some(2) => session.proto = Protocol::Resp2,
        Some(3) => session.proto = Protocol::Resp3,
        Some(_) => return Frame::Error("NOPROTO unsupported protocol version".into()),
    }
    if let Some(name) = name {
        session.set_name(name);
    }
    let proto = match session.proto {
        Protocol::Resp2 => 2,
        Protocol::Resp3 => 3,
    };
    session.client.update(|c| c.resp = proto);
    Frame::Map(vec![
        (Frame::bulk("server"), Frame::bulk("redis")),
        (Frame::bulk("version"), Frame::bulk(REDIS_COMPAT_VERSION)),
        (Frame::bulk("proto"), Frame::Integer(i64::from(proto))),
        (
            Frame::bulk("id"),
            Frame::Integer(i64::try_from(session.id).unwrap_or(i64::MAX)),
        ),
        // Redis's own modes are standalone, sentinel and cluster (Redis Cluster, whose
        // clients route keys themselves). A Mycel cluster routes for its clients and
        // looks like one standalone Redis to them, whatever Mycel's mode.
        (Frame::bulk("mode"), Frame::bulk("standalone")),
        (Frame::bulk("role"), Frame::bulk("master")),
        (Frame::bulk("modules"), Frame::Array(Vec::new())),
    ])
}

/// Commands `COMMAND` describes: name, arity (negative: at least), flags, first key, last
/// key, key step, as Redis's command table.
type CommandInfo = (&'static str, i64, &'static [&'static str], i64, i64, i64);

/// Whether `argc` arguments (the command's name included) pass Redis's arity check of
/// command `name` (the arity `COMMAND` reports: exactly that many, or at least as many
/// when negative). A subcommand (`client|setname`) is not in the table: no.
pub(crate) fn arity_passes(name: &str, argc: usize) -> bool {
    COMMANDS.iter().find(|c| c.0 == name).is_some_and(|c| {
        let arity = usize::try_from(c.1.unsigned_abs()).unwrap_or(usize::MAX);
        if c.1 < 0 {
            argc >= arity
        } else {
            argc == arity
        }
    })
}

const COMMANDS: &[CommandInfo] = &[
    ("ping", -1, &["fast"], 0, 0, 0),
    ("echo", 2, &["fast"], 0, 0, 0),
    ("quit", -1, &["fast"], 0, 0, 0),
    ("get", 2, &["readonly", "fast"], 1, 1, 1),
    ("set", -3, &["write", "denyoom"], 1, 1, 1),
    ("setnx", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("setex", 4, &["write", "denyoom"], 1, 1, 1),
    ("psetex", 4, &["write", "denyoom"], 1, 1, 1),
    ("getdel", 2, &["write", "fast"], 1, 1, 1),
    ("getex", -2, &["write", "fast"], 1, 1, 1),
    ("del", -2, &["write"], 1, -1, 1),
    ("unlink", -2, &["write", "fast"], 1, -1, 1),
    ("exists", -2, &["readonly", "fast"], 1, -1, 1),
    ("mget", -2, &["readonly", "fast"], 1, -1, 1),
    ("mset", -3, &["write", "denyoom"], 1, -1, 2),
    ("msetnx", -3, &["write", "denyoom"], 1, -1, 2),
    ("expire", -3, &["write", "fast"], 1, 1, 1),
    ("pexpire", -3, &["write", "fast"], 1, 1, 1),
    ("expireat", -3, &["write", "fast"], 1, 1, 1),
    ("pexpireat", -3, &["write", "fast"], 1, 1, 1),
    ("ttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("pttl", 2, &["readonly", "fast"], 1, 1, 1),
    ("persist", 2, &["write", "fast"], 1, 1, 1),
    ("expiretime", 2, &["readonly", "fast"], 1, 1, 1),
    ("pexpiretime", 2, &["readonly", "fast"], 1, 1, 1),
    ("type", 2, &["readonly", "fast"], 1, 1, 1),
    ("strlen", 2, &["readonly", "fast"], 1, 1, 1),
    ("append", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("getrange", 4, &["readonly"], 1, 1, 1),
    ("substr", 4, &["readonly"], 1, 1, 1),
    ("setrange", 4, &["write", "denyoom"], 1, 1, 1),
    ("touch", -2, &["readonly", "fast"], 1, -1, 1),
    ("memory", -2, &[], 0, 0, 0),
    ("slowlog", -2, &[], 0, 0, 0),
    ("rename", 3, &["write"], 1, 2, 1),
    ("renamenx", 3, &["write", "fast"], 1, 2, 1),
    ("copy", -3, &["write", "denyoom"], 1, 2, 1),
    ("getset", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("incr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("decr", 2, &["write", "denyoom", "fast"], 1, 1, 1),
    ("incrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("incrbyfloat", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("decrby", 3, &["write", "denyoom", "fast"], 1, 1, 1),
    ("dbsize", 1, &["readonly", "fast"], 0, 0, 0),
    ("scan", -2, &["readonly"], 0, 0, 0),
    ("keys", 2, &["readonly"], 0, 0, 0),
    ("flushdb", -1, &["write"], 0, 0, 0),
    ("flushall", -1, &["write"], 0, 0, 0),
    (
        "multi",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    ("exec", 1, &["noscript", "loading", "stale"], 0, 0, 0),
    (
        "discard",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    (
        "unwatch",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    (
        "watch",
        -2,
        &["noscript", "loading", "stale", "fast"],
        1,
        -1,
        1,
    ),
    ("select", 2, &["loading", "stale", "fast"], 0, 0, 0),
    ("time", 1, &["loading", "stale", "fast"], 0, 0, 0),
    (
        "role",
        1,
        &["noscript", "loading", "stale", "fast"],
        0,
        0,
        0,
    ),
    ("info", -1, &["loading", "stale"], 0, 0, 0),
    ("client", -2, &["loading", "stale"], 0, 0, 0),
    ("command", -1, &["loading", "stale"], 0, 0, 0),
    ("config", -2, &["admin", "loading", "stale"], 0, 0, 0),
    (
        "hello",
        -1,
        &["fast", "loading", "stale", "no_auth"],
        0,
        0,
        0,
    ),
    (
        "auth",
        -2,
        &["fast", "loading", "stale", "no_auth"],
        0,
        0,
        0,
    ),
    ("mycel.bucket", -1, &["fast"], 0, 0, 0),
];

fn command_reply(args: &[Bytes]) -> Frame {
    let info = |&(name, arity, flags, first, last, step): &CommandInfo| {
        Frame::Array(vec![
            Frame::bulk(name),
            Frame::Integer(arity),
            Frame::Array(flags.iter().map(|&f| Frame::Simple(f)).collect()),
            Frame::Integer(first),
            Frame::Integer(last),
            Frame::Integer(step),
        ])
    };
    let Some((sub, rest)) = args.split_first() else {
        return Frame::Array(COMMANDS.iter().map(info).collect());
    };
    let sub = sub.to_ascii_lowercase();
    match sub.as_slice() {
        b"count" if rest.is_empty() => {
            Frame::Integer(i64::try_from(COMMANDS.len()).unwrap_or(i64::MAX))
        }
        // Minimal: no documentation, which clients treat as "no hints".
        b"docs" => Frame::Map(Vec::new()),
        // Every command, or those named (a null for a name Mycel does not know).
        b"info" if rest.is_empty() => Frame::Array(COMMANDS.iter().map(info).collect()),
        b"info" => Frame::Array(
            rest.iter()
                .map(|name| {
                    COMMANDS
                        .iter()
                        .find(|c| name.eq_ignore_ascii_case(c.0.as_bytes()))
                        .map_or(Frame::Null, info)
                })
                .collect(),
        ),
        // A plain list names every command.
        b"list" if rest.is_empty() => {
            Frame::Array(COMMANDS.iter().map(|c| Frame::bulk(c.0)).collect())
        }
        // `FILTERBY` is not supported.
        b"list" => Frame::err("syntax error"),
        b"count" => cmd::wrong_arity("command|count"),
        b"help" if rest.is_empty() => help(COMMAND_HELP),
        b"help" => cmd::wrong_arity("command|help"),
        b"getkeys" => command_getkeys(rest),
        _ => Frame::err(format!(
            "unknown subcommand '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&args[0])
        )),
    }
}

/// `COMMAND GETKEYS command arg...`: the keys of a full command, from its key positions
/// in the command table (first, last, step), with Redis's errors.
fn command_getkeys(full: &[Bytes]) -> Frame {
    // As Redis: the command and at least one argument.
    let [name, _, ..] = full else {
        return cmd::wrong_arity("command|getkeys");
    };
    let Some(&(_, arity, _, first, last, step)) = COMMANDS
        .iter()
        .find(|c| name.eq_ignore_ascii_case(c.0.as_bytes()))
    else {
        return Frame::err("Invalid command specified");
    };
    let argc = i64::try_from(full.len()).unwrap_or(i64::MAX);
    if (arity > 0 && argc != arity) || argc < -arity {
        return Frame::err("Invalid number of arguments specified for command");
    }
    if first == 0 {
        return Frame::err("The command has no key arguments");
    }
    // A negative last counts from the end (-1: the last argument).
    let last = if last < 0 {
        argc + last
    } else {
        last.min(argc - 1)
    };
    let keys = (first..=last)
        .step_by(usize::try_from(step.max(1)).unwrap_or(1))
        .filter_map(|i| usize::try_from(i).ok().and_then(|i| full.get(i)))
        .map(|k| Frame::Bulk(k.clone()))
        .collect();
    Frame::Array(keys)
}

/// `KEYS pattern`: a scan over every partition.
async fn keys(m: &Mycel, b: BucketId, pattern: Option<&[u8]>) -> Result<Vec<Bytes>, Error> {
    let mut keys = Vec::new();
    let mut cursor = 0;
    loop {
        let page = m.scan(b, cursor, usize::MAX, pattern).await?;
        keys.extend(page.keys);
        cursor = page.cursor;
        if cursor == 0 {
            return Ok(keys);
        }
    }
}

fn config_get(shared: &Shared, patterns: &[Bytes]) -> Frame {
    let max = shared.mycel.config().store.max_bytes.to_string();
    let slowlog = shared.slowlog.config();
    // `databases`: only database 0 exists (buckets are chosen with `MYCEL.BUCKET`).
    let params = [
        ("save", String::new()),
        ("appendonly", "no".into()),
        ("maxmemory", max),
        ("databases", "1".into()),
        (
            "slowlog-log-slower-than",
            slowlog.slower_than_micros().to_string(),
        ),
        ("slowlog-max-len", slowlog.max_len.to_string()),
    ];
    // As Redis: a name without `[`, `*` or `?` is looked up (without case) and answered
    // as typed; the others are patterns matched without case. Each setting once.
    let mut out = Vec::new();
    let mut listed = vec![false; params.len()];
    for p in patterns {
        let pattern = p.iter().any(|b| b"[*?".contains(b));
        for ((name, value), listed) in params.iter().zip(&mut listed) {
            let hit = if pattern {
                mycel::glob::matches_nocase(p, name.as_bytes())
            } else {
                p.eq_ignore_ascii_case(name.as_bytes())
            };
            if hit && !*listed {
                *listed = true;
                let shown = if pattern {
                    Frame::bulk(*name)
                } else {
                    Frame::Bulk(p.clone())
                };
                out.push((shown, Frame::bulk(value.clone())));
            }
        }
    }
    Frame::Map(out)
}

/// `CONFIG SET`: the slow log's two settings change at run time; `save ""` and
/// `appendonly no` are accepted as what Mycel already does; everything else is refused
/// naming the parameter, in Redis's words. All pairs are checked before any applies.
fn config_set(shared: &Shared, pairs: &[(Bytes, Bytes)]) -> Frame {
    let failed = |name: &str, why: &str| {
        Frame::err(format!(
            "CONFIG SET failed (possibly related to argument '{name}') - {why}"
        ))
    };
    let integer_in = |name: &str, value: &[u8], min: i64, max: i64| {
        let n = cmd::int(value)
            .map_err(|_| failed(name, "argument couldn't be parsed into an integer"))?;
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(failed(
                name,
                &format!("argument must be between {min} and {max} inclusive"),
            ))
        }
    };
    let mut config = shared.slowlog.config();
    let mut seen: Vec<String> = Vec::with_capacity(pairs.len());
    for (name, value) in pairs {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        if seen.contains(&name) {
            return failed(&name, "duplicate parameter");
        }
        let outcome = match name.as_str() {
            "slowlog-log-slower-than" => integer_in(&name, value, -1, i64::MAX).map(|n| {
                config.slower_than = slowlog::SlowLogConfig::slower_than_from_micros(n);
            }),
            "slowlog-max-len" => {
                let max = i64::try_from(slowlog::MAX_LEN_LIMIT).unwrap_or(i64::MAX);
                integer_in(&name, value, 0, max).map(|n| {
                    config.max_len = usize::try_from(n).unwrap_or(usize::MAX);
                })
            }
            "save" if value.is_empty() => Ok(()),
            "appendonly" if value.eq_ignore_ascii_case(b"no") => Ok(()),
            "save" | "appendonly" => Err(failed(&name, "Mycel keeps no data on disk")),
            "maxmemory" => Err(failed(
                &name,
                "the memory budget is set at start (--max-memory)",
            )),
            "databases" => Err(failed(&name, "can't set immutable config")),
            _ => Err(Frame::err(format!(
                "Unknown option or number of arguments for CONFIG SET - '{name}'"
            ))),
        };
        if let Err(e) = outcome {
            return e;
        }
        seen.push(name);
    }
    shared.slowlog.set_config(config);
    OK
}

async fn info(shared: &Shared, sections: &[Bytes]) -> Result<Bytes, Error> {
    // Memory and stats: this node's store (in cluster mode what it holds as primary and
    // backup). Keyspace: the store's keys standalone, the cluster-wide count otherwise.
    let local = shared.mycel.local_stats().await;
    let stats = match shared.mycel.cluster() {
        None => Some(local),
        Some(_) => None,
    };
    let named = |name: &str| {
        sections
            .iter()
            .any(|s| s.eq_ignore_ascii_case(name.as_bytes()))
    };
    // As Redis: `all` and `everything` add `commandstats` to the default sections.
    let everything = named("all") || named("everything");
    let all = sections.is_empty() || everything || named("default");
    let want = |name: &str| all || named(name);
    let node = &shared.node;
    let uptime = shared.started.elapsed().as_secs();
    let mut s = String::new();
    // Writing into a String cannot fail; `let _` keeps clippy quiet about the Result.
    if want("server") {
        // `redis_mode` as in `HELLO`: clients see one standalone Redis (Mycel's own mode
        // is `mycel_mode` in the cluster section).
        let _ = write!(
            s,
            "# Server\r\nredis_version:{REDIS_COMPAT_VERSION}\r\nmycel_version:{}\r\nredis_mode:standalone\r\nos:{} {}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::OS,
            std::env::consts::ARCH,
            std::process::id(),
            node.resp_addr.port(),
            uptime / 86400,
        );
    }
    if want("clients") {
        // No command blocks (Mycel has no BLPOP and the like).
        let _ = write!(
            s,
            "# Clients\r\nconnected_clients:{}\r\nblocked_clients:0\r\n\r\n",
            shared.clients()
        );
    }
    if want("memory") {
        let max = local.max_bytes;
        s.push_str("# Memory\r\n");
        let _ = write!(
            s,
            "used_memory:{}\r\nused_memory_human:{}\r\n",
            local.used_bytes,
            human_bytes(local.used_bytes),
        );
        if shared.mycel.cluster().is_some() {
            let _ = write!(s, "mycel_local_keys:{}\r\n", local.keys);
        }
        let _ = write!(
            s,
            "maxmemory:{max}\r\nmaxmemory_human:{}\r\nmaxmemory_policy:mycel-quick-cache\r\n\r\n",
            human_bytes(max),
        );
    }
    if want("persistence") {
        // Nothing is ever loaded from or saved to disk.
        s.push_str(
            "# Persistence\r\nloading:0\r\nasync_loading:0\r\nrdb_bgsave_in_progress:0\r\naof_enabled:0\r\naof_rewrite_in_progress:0\r\n\r\n",
        );
    }
    if want("stats") {
        let _ = write!(
            s,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n",
            shared.metrics.connections_total.get(),
            shared.metrics.commands_processed(),
        );
        let errors: u64 = shared.metrics.error_stats().iter().map(|e| e.1).sum();
        let _ = write!(
            s,
            "expired_keys:{}\r\nevicted_keys:{}\r\ntotal_error_replies:{errors}\r\n\r\n",
            local.expired, local.evicted,
        );
    }
    if want("replication") {
        // Redis replication: none. A cluster's replicas are per partition, inside Mycel
        // (see the cluster section), and clients never talk to them.
        s.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n\r\n");
    }
    if everything || named("commandstats") {
        // Redis's format; a command's subcommands are counted under the command.
        s.push_str("# Commandstats\r\n");
        for c in shared.metrics.command_stats() {
            #[allow(clippy::cast_precision_loss, reason = "a two-decimal average")]
            let per_call = if c.calls == 0 {
                0.0
            } else {
                c.usec as f64 / c.calls as f64
            };
            let _ = write!(
                s,
                "cmdstat_{}:calls={},usec={},usec_per_call={per_call:.2},rejected_calls={},failed_calls={}\r\n",
                c.command, c.calls, c.usec, c.rejected, c.failed,
            );
        }
        s.push_str("\r\n");
    }
    if want("errorstats") {
        s.push_str("# Errorstats\r\n");
        for (code, count) in shared.metrics.error_stats() {
            let _ = write!(s, "errorstat_{code}:count={count}\r\n");
        }
        s.push_str("\r\n");
    }
    if want("cluster")
        && let Some(c) = shared.mycel.cluster()
    {
        let st = c.status();
        let members = c.node().members();
        let alive = members
            .iter()
            .filter(|(_, state)| *state == nodosum::MemberState::Alive)
            .count();
        let _ = write!(
            s,
            "# Cluster\r\ncluster_enabled:0\r\nmycel_mode:{}\r\nmycel_node_id:{}\r\nmycel_cluster:{}\r\nmycel_members:{}\r\nmycel_members_alive:{alive}\r\nmycel_table_members:{}\r\nmycel_epoch:{}\r\nmycel_ready:{}\r\nmycel_replicas:{}\r\nmycel_partitions:{}\r\nmycel_partitions_primary:{}\r\nmycel_partitions_replicated:{}\r\nmycel_partitions_synced:{}\r\nmycel_maintenance:{}\r\n\r\n",
            shared.mycel.mode().as_str(),
            node.id,
            node.cluster,
            members.len(),
            st.members.len(),
            st.epoch,
            u8::from(st.ready),
            node.replicas,
            node.partitions,
            st.primaries,
            st.replicas,
            st.synced,
            u8::from(shared.in_maintenance()),
        );
    } else if want("cluster") {
        let _ = write!(
            s,
            "# Cluster\r\ncluster_enabled:0\r\nmycel_mode:{}\r\nmycel_node_id:{}\r\nmycel_cluster:{}\r\nmycel_members:1\r\nmycel_replicas:{}\r\nmycel_partitions:{}\r\nmycel_partitions_owned:{}\r\nmycel_maintenance:{}\r\n\r\n",
            shared.mycel.mode().as_str(),
            node.id,
            node.cluster,
            node.replicas,
            node.partitions,
            node.partitions,
            u8::from(shared.in_maintenance()),
        );
    }
    if want("keyspace") {
        s.push_str("# Keyspace\r\n");
        match &stats {
            Some(st) if st.keys > 0 => {
                let _ = write!(
                    s,
                    "db0:keys={},expires={},avg_ttl=0\r\n",
                    st.keys, st.expires
                );
            }
            Some(_) => {}
            None => {
                // The cluster-wide count; expiries are not counted across the cluster, so
                // `expires` is left out rather than reported as 0.
                let keys = shared.mycel.len().await?;
                if keys > 0 {
                    let _ = write!(s, "db0:keys={keys}\r\n");
                }
            }
        }
        s.push_str("\r\n");
    }
    // Redis ends the text with the last section's lines, without the blank separator.
    let trimmed = s.strip_suffix("\r\n").unwrap_or(&s).to_owned();
    Ok(Bytes::from(trimmed))
}

fn human_bytes(n: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (unit, size) in UNITS {
        if n >= size {
            // Display only: two decimals of a byte count.
            #[allow(clippy::cast_precision_loss, reason = "display rounding")]
            let v = n as f64 / size as f64;
            return format!("{v:.2}{unit}");
        }
    }
    format!("{n}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `COMMAND` describes every command served, and only those.
    #[test]
    fn command_table_covers_the_parser() {
        for name in cmd::NAMES {
            assert!(COMMANDS.iter().any(|c| c.0 == *name), "{name}");
        }
        for (i, c) in COMMANDS.iter().enumerate() {
            assert!(cmd::NAMES.contains(&c.0), "{} is not parsed", c.0);
            assert!(
                COMMANDS[..i].iter().all(|d| d.0 != c.0),
                "{} is described twice",
                c.0
            );
        }
    }

    #[test]
    fn get_range_clamps_like_redis() {
        let v = Bytes::from_static(b"This is a string");
        let r = |start, end| match range_frame(Some(&v), start, end) {
            Frame::Bulk(b) => b,
            other => panic!("not a bulk string: {other:?}"),
        };
        // The examples of Redis's documentation.
        assert_eq!(r(0, 3), "This");
        assert_eq!(r(-3, -1), "ing");
        assert_eq!(r(0, -1), v);
        assert_eq!(r(10, 100), "string");
        // Clamping at both ends, empty ranges.
        assert_eq!(r(-100, 1), "Th");
        assert_eq!(r(5, 2), "");
        assert_eq!(r(-1, -2), "");
        assert_eq!(r(16, 20), "");
        assert_eq!(r(-100, -50), "T");
        assert_eq!(r(i64::MIN, i64::MAX), v);
        assert_eq!(r(i64::MAX, i64::MAX), "");
        // A missing or empty value.
        assert_eq!(range_frame(None, 0, -1), Frame::Bulk(Bytes::new()));
        assert_eq!(
            range_frame(Some(&Bytes::new()), 0, -1),
            Frame::Bulk(Bytes::new())
        );
    }

    #[test]
    fn ttl_rounds_to_seconds_like_redis() {
        let t = |ms| Ttl::Expires {
            at: Timestamp::from_millis(0),
            remaining: Duration::from_millis(ms),
        };
        assert_eq!(ttl_frame(t(1499), false), Frame::Integer(1));
        assert_eq!(ttl_frame(t(1500), false), Frame::Integer(2));
        assert_eq!(ttl_frame(t(1500), true), Frame::Integer(1500));
        assert_eq!(ttl_frame(Ttl::Missing, false), Frame::Integer(-2));
        assert_eq!(ttl_frame(Ttl::Persistent, true), Frame::Integer(-1));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(256 << 20), "256.00M");
    }
}
