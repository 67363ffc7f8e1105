//! Client commands: parsed from a request's arguments into a typed [`Command`], with the
//! error replies Redis gives for bad arity, syntax and numbers, so clients behave alike.

use std::sync::LazyLock;

use bytes::Bytes;

use super::frame::Frame;
use crate::ldouble::LongDouble;
use crate::store::ExpireCondition;

/// An expiry given by a command, before it is turned into a deadline on the node's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Milliseconds from now (`EX`, `PX`, `EXPIRE`, `PEXPIRE`).
    In(u64),
    /// Unix time in milliseconds (`EXAT`, `PXAT`).
    At(u64),
}

/// What `SET` does with an existing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SetCondition {
    /// Always write.
    #[default]
    Always,
    /// Only if the key does not exist (`NX`).
    IfAbsent,
    /// Only if the key exists (`XX`).
    IfPresent,
}

/// `SET key value [NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// The key.
    pub key: Bytes,
    /// The new value.
    pub value: Bytes,
    /// NX / XX.
    pub condition: SetCondition,
    /// The new expiry; `None` clears any TTL unless `keep_ttl`.
    pub expiry: Option<Expiry>,
    /// `KEEPTTL`: keep the key's current TTL.
    pub keep_ttl: bool,
    /// `GET`: reply with the old value.
    pub get: bool,
}

/// `GETEX key [EX s|PX ms|EXAT s|PXAT ms|PERSIST]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetExAction {
    /// Leave the TTL as it is.
    Keep,
    /// Set a new expiry.
    Expire(Expiry),
    /// Remove the TTL.
    Persist,
    /// The expiry time was refused. As in Redis, a missing key still answers a null: the
    /// key is looked up before the time is checked.
    BadTime(BadTime),
}

/// Why an expiry time argument was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadTime {
    /// Not a 64-bit integer.
    NotAnInteger,
    /// Not positive, or its deadline does not fit in a signed 64-bit millisecond time.
    OutOfRange,
}

impl BadTime {
    /// The error reply, in Redis's words, for the command `cmd` (lowercase).
    pub fn frame(self, cmd: &str) -> Frame {
        match self {
            Self::NotAnInteger => not_an_integer(),
            Self::OutOfRange => invalid_expire_time(cmd),
        }
    }
}

/// The attribute `CLIENT SETINFO` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAttr {
    /// `LIB-NAME`: the client library's name.
    LibName,
    /// `LIB-VER`: its version.
    LibVer,
}

/// Which connections `CLIENT KILL` closes: those matching every filter given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KillFilter {
    /// `ID id`: the connection with this ID.
    pub id: Option<u64>,
    /// `ADDR ip:port` (or the old form's address): the client's address, as `CLIENT LIST`
    /// shows it.
    pub addr: Option<Bytes>,
    /// `LADDR ip:port`: the address it connected to.
    pub laddr: Option<Bytes>,
    /// `TYPE master|replica|slave|pubsub`: a kind of connection Mycel never has, so
    /// nothing matches. (`TYPE normal` and `USER default` match every connection.)
    pub none: bool,
    /// `SKIPME yes` (the default of the filter form): the calling connection is spared.
    pub skip_me: bool,
    /// The old form, `CLIENT KILL ip:port`: answers `+OK` or `No such client` rather than
    /// a count, and may close the caller.
    pub old_form: bool,
}

/// The argument of `MYCEL.BUCKET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketArg {
    /// The bucket's name.
    pub name: Bytes,
    /// `CREATE`: make it first, with this default TTL in milliseconds (if `PX` was given).
    pub create: Option<Option<u64>>,
}

/// Longest command name looked up (`mycel.bucket` is the longest known one).
const MAX_NAME_LEN: usize = 16;

/// Every command name [`Command::parse`] knows (those it refuses with a reason, like
/// `MULTI`, included), sorted.
pub const NAMES: &[&str] = &[
    "append",
    "auth",
    "client",
    "command",
    "config",
    "copy",
    "dbsize",
    "decr",
    "decrby",
    "del",
    "discard",
    "echo",
    "exec",
    "exists",
    "expire",
    "expireat",
    "expiretime",
    "flushall",
    "flushdb",
    "get",
    "getdel",
    "getex",
    "getrange",
    "getset",
    "hello",
    "incr",
    "incrby",
    "incrbyfloat",
    "info",
    "keys",
    "memory",
    "mget",
    "mset",
    "msetnx",
    "multi",
    "mycel.bucket",
    "persist",
    "pexpire",
    "pexpireat",
    "pexpiretime",
    "ping",
    "psetex",
    "pttl",
    "quit",
    "rename",
    "renamenx",
    "role",
    "scan",
    "select",
    "set",
    "setex",
    "setnx",
    "setrange",
    "slowlog",
    "strlen",
    "substr",
    "time",
    "touch",
    "ttl",
    "type",
    "unlink",
    "unwatch",
    "watch",
];

/// The command named `name` (any case) as [`NAMES`] spells it: what `CLIENT LIST` and
/// the metrics call it (`incr`, `setex`, `pexpire`; the parsed [`Command`] does not
/// tell them from `incrby`, `set` or `expire`). `None` for a name no command has.
pub fn command_name(name: &[u8]) -> Option<&'static str> {
    // Called for every request: a binary search over integers, not over strings (which
    // cost a `memcmp` call per step, a tenth of a pipelined GET's time on the connection
    // thread).
    let key = packed_name(name)?;
    let names = &*PACKED_NAMES;
    let found = names[names.binary_search_by_key(&key, |&(k, _)| k).ok()?].1;
    // Padding is zeros: `get\0` packs as `get` does.
    (found.len() == name.len()).then_some(found)
}

/// `name` lowercased and zero-padded to [`MAX_NAME_LEN`] bytes, as one integer; `None`
/// if longer.
fn packed_name(name: &[u8]) -> Option<u128> {
    let mut lower = [0u8; MAX_NAME_LEN];
    lower.get_mut(..name.len())?.copy_from_slice(name);
    lower.make_ascii_lowercase();
    Some(u128::from_le_bytes(lower))
}

/// [`NAMES`] as [`packed_name`] packs them, sorted by that integer.
static PACKED_NAMES: LazyLock<Vec<(u128, &'static str)>> = LazyLock::new(|| {
    let mut names: Vec<(u128, &'static str)> = NAMES
        .iter()
        .filter_map(|&n| Some((packed_name(n.as_bytes())?, n)))
        .collect();
    names.sort_unstable();
    names
});

/// The subcommands Redis 7 knows of its container commands, as `CLIENT LIST` names
/// them (`memory|usage`), Mycel's and the ones it refuses alike.
const SUBCOMMANDS: &[(&str, &[&str])] = &[
    (
        "client",
        &[
            "client|caching",
            "client|getname",
            "client|getredir",
            "client|help",
            "client|id",
            "client|info",
            "client|kill",
            "client|list",
            "client|no-evict",
            "client|no-touch",
            "client|pause",
            "client|reply",
            "client|setinfo",
            "client|setname",
            "client|tracking",
            "client|trackinginfo",
            "client|unblock",
            "client|unpause",
        ],
    ),
    (
        "command",
        &[
            "command|count",
            "command|docs",
            "command|getkeys",
            "command|getkeysandflags",
            "command|help",
            "command|info",
            "command|list",
        ],
    ),
    (
        "config",
        &[
            "config|get",
            "config|help",
            "config|resetstat",
            "config|rewrite",
            "config|set",
        ],
    ),
    (
        "memory",
        &[
            "memory|doctor",
            "memory|help",
            "memory|malloc-stats",
            "memory|purge",
            "memory|stats",
            "memory|usage",
        ],
    ),
    (
        "slowlog",
        &[
            "slowlog|get",
            "slowlog|help",
            "slowlog|len",
            "slowlog|reset",
        ],
    ),
];

/// The name `CLIENT LIST` shows for a request [`Command::parse`] refused, as Redis shows
/// it: the command's, or for a container command its subcommand's (`config|get`); `None`
/// for a name, or a subcommand, Redis does not know (shown as `NULL`).
pub fn refused_name(args: &[Bytes]) -> Option<&'static str> {
    let name = command_name(args.first()?)?;
    let Some((_, subs)) = SUBCOMMANDS.iter().find(|(c, _)| *c == name) else {
        return Some(name);
    };
    // Without a subcommand, the container's own arity error.
    let Some(sub) = args.get(1) else {
        return Some(name);
    };
    subs.iter().copied().find(|full| {
        full.split_once('|')
            .is_some_and(|(_, s)| sub.eq_ignore_ascii_case(s.as_bytes()))
    })
}

/// Whether `frame` is the wrong-number-of-arguments error: Redis refuses such a request
/// before running it (it is not counted as processed), unlike a bad argument.
pub fn is_arity_error(frame: &Frame) -> bool {
    matches!(frame, Frame::Error(e) if e.starts_with("ERR wrong number of arguments"))
}

/// One parsed client command.
#[allow(
    clippy::enum_variant_names,
    reason = "`Command` is the name of the COMMAND command"
)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `PING [message]`.
    Ping(Option<Bytes>),
    /// `ECHO message`.
    Echo(Bytes),
    /// `QUIT`: reply `+OK`, then close.
    Quit,
    /// `MULTI`: queue the commands that follow until `EXEC` or `DISCARD`.
    Multi,
    /// `EXEC`: run the queued commands as one, answering an array of their replies.
    Exec,
    /// `DISCARD`: drop the queued commands.
    Discard,
    /// `WATCH key [key ...]`: `EXEC` runs the next transaction only if none of these
    /// keys changed meanwhile.
    Watch(Vec<Bytes>),
    /// `UNWATCH`: forget the watched keys.
    Unwatch,
    /// `GET key`.
    Get(Bytes),
    /// `SET ...`, and `SETNX key value` as `SET key value NX` with an integer reply.
    Set(Set),
    /// `SETNX key value`.
    SetNx(Bytes, Bytes),
    /// `GETDEL key`.
    GetDel(Bytes),
    /// `GETEX key ...`.
    GetEx(Bytes, GetExAction),
    /// `DEL key...`.
    Del(Vec<Bytes>),
    /// `EXISTS key...`.
    Exists(Vec<Bytes>),
    /// `MGET key...`.
    MGet(Vec<Bytes>),
    /// `MSET key value [key value ...]`.
    MSet(Vec<(Bytes, Bytes)>),
    /// `EXPIRE key seconds [NX|XX|GT|LT]` / `PEXPIRE key ms [...]`; a non-positive time
    /// deletes the key (if the condition holds).
    Expire(Bytes, i64, ExpireCondition),
    /// `EXPIREAT key unix-seconds [NX|XX|GT|LT]` / `PEXPIREAT key unix-ms [...]`, as
    /// Unix milliseconds; a time not in the future deletes the key (if the condition
    /// holds).
    ExpireAt(Bytes, i64, ExpireCondition),
    /// `TTL key` (`millis` false) / `PTTL key` (true).
    Ttl(Bytes, bool),
    /// `EXPIRETIME key` (`millis` false) / `PEXPIRETIME key` (true): the absolute Unix
    /// time the key expires at.
    ExpireTime(Bytes, bool),
    /// `TYPE key`: `string` or `none` (every Mycel value is a string).
    Type(Bytes),
    /// `COPY source destination [DB 0] [REPLACE]`.
    Copy {
        /// The key copied.
        from: Bytes,
        /// The copy's name (another key).
        to: Bytes,
        /// Whether an existing `to` is overwritten.
        replace: bool,
    },
    /// `MSETNX key value [key value ...]`: all or none, none if a key exists.
    MSetNx(Vec<(Bytes, Bytes)>),
    /// `APPEND key value`: the new length.
    Append(Bytes, Bytes),
    /// `INCRBYFLOAT key increment`: the new value (see [`crate::ldouble`]).
    IncrByFloat(Bytes, LongDouble),
    /// `RENAME key newkey` (`replace`) and `RENAMENX key newkey`.
    Rename {
        /// The key renamed.
        from: Bytes,
        /// Its new name.
        to: Bytes,
        /// Whether an existing `to` is overwritten (`RENAME`).
        replace: bool,
    },
    /// `STRLEN key`: the value's length, 0 for a missing key.
    StrLen(Bytes),
    /// `GETRANGE key start end` (and its old name `SUBSTR`): the bytes from `start` to
    /// `end`, both included; negative indexes count from the end.
    GetRange(Bytes, i64, i64),
    /// `SETRANGE key offset value`: `value` written from byte `offset` on; the new length.
    SetRange(Bytes, u64, Bytes),
    /// `MEMORY USAGE key [SAMPLES count]`: the bytes the key weighs against the memory
    /// budget (`store::entry_weight`), null for a missing key. `SAMPLES` is checked and
    /// ignored: the figure is exact.
    MemoryUsage(Bytes),
    /// `MEMORY HELP`: the subcommands Mycel serves.
    MemoryHelp,
    /// `SLOWLOG GET [count]`: the newest `count` entries of the slow log (10 when not
    /// given; `None` for `-1`, all of them).
    SlowlogGet(Option<usize>),
    /// `SLOWLOG LEN`.
    SlowlogLen,
    /// `SLOWLOG RESET`.
    SlowlogReset,
    /// `SLOWLOG HELP`.
    SlowlogHelp,
    /// `PERSIST key`.
    Persist(Bytes),
    /// `INCR`, `DECR`, `INCRBY`, `DECRBY`: add the delta.
    IncrBy(Bytes, i64),
    /// `DBSIZE`.
    DbSize,
    /// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`: one step of a scan of the
    /// connection's bucket (see `Mycel::scan`).
    Scan(Scan),
    /// `KEYS pattern`: every key of the connection's bucket that matches (`None` for
    /// `*`, every key).
    Keys(Option<Bytes>),
    /// `FLUSHDB [ASYNC|SYNC]`.
    FlushDb,
    /// `SELECT index`: only database 0 exists.
    Select(i64),
    /// `INFO [section...]`.
    Info(Vec<Bytes>),
    /// `CLIENT SETNAME name`.
    ClientSetName(Bytes),
    /// `CLIENT GETNAME`.
    ClientGetName,
    /// `CLIENT ID`.
    ClientId,
    /// `CLIENT SETINFO LIB-NAME|LIB-VER value`: shown by `CLIENT INFO` and `CLIENT LIST`.
    ClientSetInfo(ClientAttr, Bytes),
    /// `CLIENT INFO`: this connection, as one line of `CLIENT LIST`.
    ClientInfo,
    /// `CLIENT LIST [TYPE type | ID id...]`: the connections of this node, all of them, or
    /// those with the IDs given (`Some`), in that order; a `TYPE` other than `normal`
    /// lists none (`Some` of no IDs).
    ClientList(Option<Vec<i64>>),
    /// `CLIENT KILL ip:port` or `CLIENT KILL filter value [filter value...]`: closes the
    /// matching connections of this node.
    ClientKill(KillFilter),
    /// `TIME`: this node's clock, as seconds and microseconds.
    Time,
    /// `ROLE`: a primary without Redis replicas, as Redis answers.
    Role,
    /// `COMMAND [subcommand [arg...]]`: the command table (`COUNT`, `INFO`, `LIST`; `DOCS`
    /// answers no documentation).
    Command(Vec<Bytes>),
    /// `CLIENT HELP`.
    ClientHelp,
    /// `CONFIG HELP`.
    ConfigHelp,
    /// `CONFIG GET pattern...`.
    ConfigGet(Vec<Bytes>),
    /// `CONFIG SET parameter value [parameter value ...]`: the pairs as given (which
    /// parameters exist and what they accept is the server's to say).
    ConfigSet(Vec<(Bytes, Bytes)>),
    /// `MYCEL.BUCKET [name [CREATE [PX ms]]]`: show or switch the connection's bucket,
    /// optionally creating it with a default TTL.
    Bucket(Option<BucketArg>),
    /// `HELLO [protover [AUTH user pass] [SETNAME name]]`.
    Hello {
        /// Requested protocol version.
        proto: Option<i64>,
        /// Client name to set.
        name: Option<Bytes>,
        /// `AUTH user pass`: authenticate first (the server checks them).
        auth: Option<Credentials>,
    },
    /// `AUTH [username] password`: authenticate the connection (the server checks them).
    Auth(Credentials),
}

/// A user name and password given with `AUTH` or `HELLO ... AUTH`. Its `Debug` shows
/// neither, so no log can leak them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name; `None` for the one-argument form, which names the default user.
    pub user: Option<Bytes>,
    /// The password.
    pub password: Bytes,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(redacted)")
    }
}

/// The reply to a command with the wrong number of arguments, in Redis's words.
pub fn wrong_arity(name: &str) -> Frame {
    Frame::err(format!("wrong number of arguments for '{name}' command"))
}

/// The reply to a number argument (or stored value) that is not a 64-bit integer.
pub fn not_an_integer() -> Frame {
    Frame::err("value is not an integer or out of range")
}

fn syntax_error() -> Frame {
    Frame::err("syntax error")
}

impl Command {
    /// Parses a request's arguments (`args[0]` is the command name, any case).
    ///
    /// An `Err` is the error reply to send; the connection stays open.
    pub fn parse(args: &[Bytes]) -> Result<Self, Frame> {
        let Some((name, rest)) = args.split_first() else {
            return Err(Frame::err("empty command"));
        };
        // Command names are short ASCII words: lowercase them on the stack, so dispatch
        // allocates nothing.
        let mut lower = [0u8; MAX_NAME_LEN];
        let Some(slot) = lower.get_mut(..name.len()) else {
            return Err(unknown_command(args));
        };
        slot.copy_from_slice(name);
        slot.make_ascii_lowercase();
        let Ok(name) = std::str::from_utf8(slot) else {
            return Err(unknown_command(args));
        };
        let arity = |ok: bool| if ok { Ok(()) } else { Err(wrong_arity(name)) };
        let key = || rest[0].clone();
        Ok(match name {
            "ping" => {
                arity(rest.len() <= 1)?;
                Self::Ping(rest.first().cloned())
            }
            "echo" => {
                arity(rest.len() == 1)?;
                Self::Echo(key())
            }
            "quit" => Self::Quit,
            "auth" => match rest {
                [] => return Err(wrong_arity(name)),
                [password] => Self::Auth(Credentials {
                    user: None,
                    password: password.clone(),
                }),
                [user, password] => Self::Auth(Credentials {
                    user: Some(user.clone()),
                    password: password.clone(),
                }),
                _ => return Err(syntax_error()),
            },
            "get" => {
                arity(rest.len() == 1)?;
                Self::Get(key())
            }
            "set" => {
                arity(rest.len() >= 2)?;
                Self::Set(parse_set(rest)?)
            }
            "setex" | "psetex" => {
                arity(rest.len() == 3)?;
                let kind: &[u8] = if name == "setex" { b"ex" } else { b"px" };
                Self::Set(Set {
                    key: key(),
                    value: rest[2].clone(),
                    condition: SetCondition::Always,
                    expiry: Some(expiry(kind, &rest[1], name)?),
                    keep_ttl: false,
                    get: false,
                })
            }
            "setnx" => {
                arity(rest.len() == 2)?;
                Self::SetNx(key(), rest[1].clone())
            }
            "getdel" => {
                arity(rest.len() == 1)?;
                Self::GetDel(key())
            }
            "getex" => {
                arity(!rest.is_empty())?;
                Self::GetEx(key(), parse_getex(&rest[1..])?)
            }
            "getset" => {
                arity(rest.len() == 2)?;
                Self::Set(Set {
                    key: key(),
                    value: rest[1].clone(),
                    condition: SetCondition::Always,
                    expiry: None,
                    keep_ttl: false,
                    get: true,
                })
            }
            "del" | "unlink" => {
                arity(!rest.is_empty())?;
                Self::Del(rest.to_vec())
            }
            // `TOUCH` counts the keys that exist, as `EXISTS` (there is no access time to
            // update: eviction follows the cache's own hit tracking).
            "exists" | "touch" => {
                arity(!rest.is_empty())?;
                Self::Exists(rest.to_vec())
            }
            "mget" => {
                arity(!rest.is_empty())?;
                Self::MGet(rest.to_vec())
            }
            "mset" | "msetnx" => {
                arity(!rest.is_empty() && rest.len() % 2 == 0)?;
                let pairs = rest
                    .chunks_exact(2)
                    .map(|kv| (kv[0].clone(), kv[1].clone()))
                    .collect();
                if name == "mset" {
                    Self::MSet(pairs)
                } else {
                    Self::MSetNx(pairs)
                }
            }
            "expire" | "pexpire" | "expireat" | "pexpireat" => {
                arity(rest.len() >= 2)?;
                // Options first: their errors win over a bad time, as in Redis.
                let condition = expire_condition(&rest[2..])?;
                let n = int(&rest[1])?;
                let ms = if name.starts_with('p') {
                    Some(n)
                } else {
                    n.checked_mul(1000)
                };
                if name.ends_with("at") {
                    let at = ms.ok_or_else(|| invalid_expire_time(name))?;
                    Self::ExpireAt(key(), at, condition)
                } else {
                    // As in Redis: the deadline (now plus the time) must fit in an i64; a
                    // time in the past deletes the key.
                    let now = i64::try_from(now_ms()).unwrap_or(i64::MAX);
                    let ms = ms
                        .filter(|ms| ms.checked_add(now).is_some())
                        .ok_or_else(|| invalid_expire_time(name))?;
                    Self::Expire(key(), ms, condition)
                }
            }
            "ttl" | "pttl" => {
                arity(rest.len() == 1)?;
                Self::Ttl(key(), name == "pttl")
            }
            "persist" => {
                arity(rest.len() == 1)?;
                Self::Persist(key())
            }
            "expiretime" | "pexpiretime" => {
                arity(rest.len() == 1)?;
                Self::ExpireTime(key(), name == "pexpiretime")
            }
            "type" => {
                arity(rest.len() == 1)?;
                Self::Type(key())
            }
            "strlen" => {
                arity(rest.len() == 1)?;
                Self::StrLen(key())
            }
            "getrange" | "substr" => {
                arity(rest.len() == 3)?;
                Self::GetRange(key(), int(&rest[1])?, int(&rest[2])?)
            }
            "setrange" => {
                arity(rest.len() == 3)?;
                let offset = u64::try_from(int(&rest[1])?)
                    .map_err(|_| Frame::err("offset is out of range"))?;
                Self::SetRange(key(), offset, rest[2].clone())
            }
            "time" => {
                arity(rest.is_empty())?;
                Self::Time
            }
            "role" => {
                arity(rest.is_empty())?;
                Self::Role
            }
            "copy" => {
                arity(rest.len() >= 2)?;
                parse_copy(rest)?
            }
            "rename" | "renamenx" => {
                arity(rest.len() == 2)?;
                Self::Rename {
                    from: key(),
                    to: rest[1].clone(),
                    replace: name == "rename",
                }
            }
            "append" => {
                arity(rest.len() == 2)?;
                Self::Append(key(), rest[1].clone())
            }
            "incr" | "decr" => {
                arity(rest.len() == 1)?;
                Self::IncrBy(key(), if name == "incr" { 1 } else { -1 })
            }
            "incrby" => {
                arity(rest.len() == 2)?;
                Self::IncrBy(key(), int(&rest[1])?)
            }
            "incrbyfloat" => {
                arity(rest.len() == 2)?;
                // Redis reads the stored value first, but both give the same error.
                let increment = LongDouble::parse(&rest[1])
                    .map_err(|_| Frame::err("value is not a valid float"))?;
                Self::IncrByFloat(key(), increment)
            }
            "decrby" => {
                arity(rest.len() == 2)?;
                let delta = int(&rest[1])?
                    .checked_neg()
                    .ok_or_else(|| Frame::err("decrement would overflow"))?;
                Self::IncrBy(key(), delta)
            }
            "dbsize" => {
                arity(rest.is_empty())?;
                Self::DbSize
            }
            "scan" => {
                arity(!rest.is_empty())?;
                Self::Scan(parse_scan(rest)?)
            }
            "keys" => {
                arity(rest.len() == 1)?;
                Self::Keys(key_pattern(&rest[0]))
            }
            "flushdb" | "flushall" => {
                // As Redis: anything but one `ASYNC` or `SYNC` is a syntax error.
                match rest {
                    [] => {}
                    [mode]
                        if mode.eq_ignore_ascii_case(b"async")
                            || mode.eq_ignore_ascii_case(b"sync") => {}
                    _ => return Err(syntax_error()),
                }
                Self::FlushDb
            }
            "select" => {
                arity(rest.len() == 1)?;
                Self::Select(int(&rest[0])?)
            }
            "info" => Self::Info(rest.to_vec()),
            "client" => parse_client(rest)?,
            "command" => Self::Command(rest.to_vec()),
            "config" => parse_config(rest)?,
            "memory" => parse_memory(rest)?,
            "slowlog" => parse_slowlog(rest)?,
            "hello" => parse_hello(rest)?,
            "mycel.bucket" => parse_bucket(rest)?,
            "multi" => {
                arity(rest.is_empty())?;
                Self::Multi
            }
            "exec" => {
                arity(rest.is_empty())?;
                Self::Exec
            }
            "discard" => {
                arity(rest.is_empty())?;
                Self::Discard
            }
            "unwatch" => {
                arity(rest.is_empty())?;
                Self::Unwatch
            }
            "watch" => {
                arity(!rest.is_empty())?;
                Self::Watch(rest.to_vec())
            }
            _ => return Err(unknown_command(args)),
        })
    }
}

/// Redis's reply to an unknown command: its name cut to 128 bytes, then the arguments
/// while the list is shorter than 128 bytes, each cut to what is left of those.
fn unknown_command(args: &[Bytes]) -> Frame {
    const CUT: usize = 128;
    let name = &args[0][..args[0].len().min(CUT)];
    let mut listed: Vec<u8> = Vec::new();
    for a in &args[1..] {
        if listed.len() >= CUT {
            break;
        }
        let room = CUT - listed.len();
        listed.push(b'\'');
        listed.extend_from_slice(&a[..a.len().min(room)]);
        listed.extend_from_slice(b"' ");
    }
    Frame::err(format!(
        "unknown command '{}', with args beginning with: {}",
        String::from_utf8_lossy(name),
        String::from_utf8_lossy(&listed)
    ))
}

/// Parses a signed 64-bit integer argument the way Redis does (strict decimal).
pub fn int(arg: &[u8]) -> Result<i64, Frame> {
    super::parse::strict_i64(arg).ok_or_else(not_an_integer)
}

fn invalid_expire_time(cmd: &str) -> Frame {
    Frame::err(format!("invalid expire time in '{cmd}' command"))
}

/// Milliseconds since the Unix epoch on this node's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The deadline's milliseconds must fit a signed 64-bit Unix time, as in Redis.
const MAX_DEADLINE_MS: u64 = i64::MAX as u64;

/// Parses the expiry option `kind` (`EX`, `PX`, `EXAT` or `PXAT`) with its argument as
/// Redis does: a positive integer whose deadline in milliseconds fits in an `i64`.
fn expiry(kind: &[u8], arg: &[u8], cmd: &str) -> Result<Expiry, Frame> {
    expiry_time(kind, arg).map_err(|bad| bad.frame(cmd))
}

/// [`expiry`] with the reason for a refusal rather than its reply.
fn expiry_time(kind: &[u8], arg: &[u8]) -> Result<Expiry, BadTime> {
    let n = int(arg).map_err(|_| BadTime::NotAnInteger)?;
    let n = u64::try_from(n)
        .ok()
        .filter(|&n| n > 0)
        .ok_or(BadTime::OutOfRange)?;
    let kind = kind.to_ascii_lowercase();
    let ms = if matches!(kind.as_slice(), b"ex" | b"exat") {
        n.checked_mul(1000).filter(|&ms| ms <= MAX_DEADLINE_MS)
    } else {
        Some(n)
    };
    let relative = matches!(kind.as_slice(), b"ex" | b"px");
    let ms = ms
        .filter(|&ms| ms <= MAX_DEADLINE_MS.saturating_sub(if relative { now_ms() } else { 0 }))
        .ok_or(BadTime::OutOfRange)?;
    Ok(if relative {
        Expiry::In(ms)
    } else {
        Expiry::At(ms)
    })
}

fn is_expiry_kind(arg: &[u8]) -> bool {
    [&b"ex"[..], b"px", b"exat", b"pxat"]
        .iter()
        .any(|k| arg.eq_ignore_ascii_case(k))
}

/// `EXPIRE`'s options, as Redis 7 reads them: any of `NX`, `XX`, `GT`, `LT` (repeats
/// allowed), where `NX` goes with none of the others and `GT` not with `LT`.
fn expire_condition(opts: &[Bytes]) -> Result<ExpireCondition, Frame> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in opts {
        let flag = match opt.to_ascii_lowercase().as_slice() {
            b"nx" => &mut nx,
            b"xx" => &mut xx,
            b"gt" => &mut gt,
            b"lt" => &mut lt,
            _ => {
                return Err(Frame::err(format!(
                    "Unsupported option {}",
                    String::from_utf8_lossy(opt)
                )));
            }
        };
        *flag = true;
    }
    if nx && (xx || gt || lt) {
        return Err(Frame::err(
            "NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Frame::err(
            "GT and LT options at the same time are not compatible",
        ));
    }
    Ok(match (nx, xx, gt, lt) {
        (true, ..) => ExpireCondition::IfNone,
        (_, _, true, _) => ExpireCondition::IfLater,
        (_, true, _, true) => ExpireCondition::IfSomeEarlier,
        (_, false, _, true) => ExpireCondition::IfEarlier,
        (_, true, _, _) => ExpireCondition::IfSome,
        _ => ExpireCondition::Always,
    })
}

/// Whether the expiry option `opt` may follow the expiry option already given, as in
/// Redis: the same one again (the last one wins), never two different ones.
fn expiry_compatible(given: Option<&Bytes>, opt: &[u8]) -> bool {
    given.is_none_or(|g| g.eq_ignore_ascii_case(opt))
}

fn parse_set(rest: &[Bytes]) -> Result<Set, Frame> {
    let mut set = Set {
        key: rest[0].clone(),
        value: rest[1].clone(),
        condition: SetCondition::Always,
        expiry: None,
        keep_ttl: false,
        get: false,
    };
    // The expiry option and its argument, checked once every option has been read (a
    // syntax error wins over a bad time, as in Redis).
    let mut given: Option<(&Bytes, &Bytes)> = None;
    let mut i = 2;
    while i < rest.len() {
        let opt = &rest[i];
        if opt.eq_ignore_ascii_case(b"nx") && set.condition != SetCondition::IfPresent {
            set.condition = SetCondition::IfAbsent;
        } else if opt.eq_ignore_ascii_case(b"xx") && set.condition != SetCondition::IfAbsent {
            set.condition = SetCondition::IfPresent;
        } else if opt.eq_ignore_ascii_case(b"get") {
            set.get = true;
        } else if opt.eq_ignore_ascii_case(b"keepttl") && given.is_none() {
            set.keep_ttl = true;
        } else if is_expiry_kind(opt)
            && !set.keep_ttl
            && expiry_compatible(given.map(|g| g.0), opt)
            && let Some(arg) = rest.get(i + 1)
        {
            given = Some((opt, arg));
            i += 1;
        } else {
            return Err(syntax_error());
        }
        i += 1;
    }
    if let Some((kind, arg)) = given {
        set.expiry = Some(expiry(kind, arg, "set")?);
    }
    Ok(set)
}

fn parse_getex(opts: &[Bytes]) -> Result<GetExAction, Frame> {
    let mut persist = false;
    let mut given: Option<(&Bytes, &Bytes)> = None;
    let mut i = 0;
    while i < opts.len() {
        let opt = &opts[i];
        if opt.eq_ignore_ascii_case(b"persist") && given.is_none() {
            persist = true;
        } else if is_expiry_kind(opt)
            && !persist
            && expiry_compatible(given.map(|g| g.0), opt)
            && let Some(arg) = opts.get(i + 1)
        {
            given = Some((opt, arg));
            i += 1;
        } else {
            return Err(syntax_error());
        }
        i += 1;
    }
    Ok(match given {
        // Checked at execution, after the lookup (see `GetExAction::BadTime`).
        Some((kind, arg)) => match expiry_time(kind, arg) {
            Ok(expiry) => GetExAction::Expire(expiry),
            Err(bad) => GetExAction::BadTime(bad),
        },
        None if persist => GetExAction::Persist,
        None => GetExAction::Keep,
    })
}

fn parse_client(rest: &[Bytes]) -> Result<Command, Frame> {
    let Some(sub) = rest.first() else {
        return Err(wrong_arity("client"));
    };
    let sub = String::from_utf8_lossy(sub).to_ascii_lowercase();
    let arity = |ok: bool| {
        if ok {
            Ok(())
        } else {
            Err(wrong_arity(&format!("client|{sub}")))
        }
    };
    Ok(match sub.as_str() {
        "setname" => {
            arity(rest.len() == 2)?;
            check_client_name(&rest[1])?;
            Command::ClientSetName(rest[1].clone())
        }
        "getname" => {
            arity(rest.len() == 1)?;
            Command::ClientGetName
        }
        "id" => {
            arity(rest.len() == 1)?;
            Command::ClientId
        }
        "setinfo" => {
            arity(rest.len() == 3)?;
            let given = &rest[1];
            let attr = if given.eq_ignore_ascii_case(b"lib-name") {
                ClientAttr::LibName
            } else if given.eq_ignore_ascii_case(b"lib-ver") {
                ClientAttr::LibVer
            } else {
                return Err(Frame::err(format!(
                    "Unrecognized option '{}'",
                    String::from_utf8_lossy(given)
                )));
            };
            if !is_client_attr(&rest[2]) {
                return Err(Frame::err(format!(
                    "{} cannot contain spaces, newlines or special characters.",
                    String::from_utf8_lossy(given)
                )));
            }
            Command::ClientSetInfo(attr, rest[2].clone())
        }
        "info" => {
            arity(rest.len() == 1)?;
            Command::ClientInfo
        }
        "list" => parse_client_list(&rest[1..])?,
        "help" => {
            arity(rest.len() == 1)?;
            Command::ClientHelp
        }
        "kill" => {
            arity(rest.len() >= 2)?;
            Command::ClientKill(parse_client_kill(&rest[1..])?)
        }
        _ => {
            return Err(Frame::err(format!(
                "unknown subcommand '{}'. Try CLIENT HELP.",
                String::from_utf8_lossy(&rest[0])
            )));
        }
    })
}

/// `CLIENT LIST`'s options as Redis 7 reads them: none, `TYPE type`, or `ID id...` (any
/// 64-bit integers; those of no connection list nothing).
fn parse_client_list(opts: &[Bytes]) -> Result<Command, Frame> {
    match opts {
        [] => Ok(Command::ClientList(None)),
        [opt, kind] if opt.eq_ignore_ascii_case(b"type") => {
            match kind.to_ascii_lowercase().as_slice() {
                b"normal" => Ok(Command::ClientList(None)),
                // No replica, primary link or Pub/Sub connections exist.
                b"master" | b"replica" | b"slave" | b"pubsub" => {
                    Ok(Command::ClientList(Some(Vec::new())))
                }
                _ => Err(Frame::err(format!(
                    "Unknown client type '{}'",
                    String::from_utf8_lossy(kind)
                ))),
            }
        }
        [opt, ids @ ..] if opt.eq_ignore_ascii_case(b"id") && !ids.is_empty() => ids
            .iter()
            .map(|id| int(id).map_err(|_| Frame::err("Invalid client ID")))
            .collect::<Result<_, _>>()
            .map(|ids| Command::ClientList(Some(ids))),
        _ => Err(syntax_error()),
    }
}

/// `CLIENT KILL`'s arguments as Redis 7.0 reads them: one address (the old form), or
/// filter and value pairs checked in order, the first bad one answering its error.
fn parse_client_kill(args: &[Bytes]) -> Result<KillFilter, Frame> {
    // Redis compares and prints these values as C strings: up to a NUL byte.
    let c_str = |v: &Bytes| v.slice(..v.iter().position(|&b| b == 0).unwrap_or(v.len()));
    if let [addr] = args {
        return Ok(KillFilter {
            addr: Some(c_str(addr)),
            old_form: true,
            ..KillFilter::default()
        });
    }
    let mut filter = KillFilter {
        skip_me: true,
        ..KillFilter::default()
    };
    for pair in args.chunks(2) {
        let [option, value] = pair else {
            return Err(syntax_error());
        };
        match option.to_ascii_lowercase().as_slice() {
            b"id" => {
                let id = int(value)
                    .ok()
                    .and_then(|id| u64::try_from(id).ok())
                    .filter(|&id| id > 0)
                    .ok_or_else(|| Frame::err("client-id should be greater than 0"))?;
                filter.id = Some(id);
            }
            b"type" => match c_str(value).to_ascii_lowercase().as_slice() {
                b"normal" => {}
                b"master" | b"replica" | b"slave" | b"pubsub" => filter.none = true,
                _ => {
                    return Err(Frame::err(format!(
                        "Unknown client type '{}'",
                        String::from_utf8_lossy(&c_str(value))
                    )));
                }
            },
            b"addr" => filter.addr = Some(c_str(value)),
            b"laddr" => filter.laddr = Some(c_str(value)),
            // `default` is the only user, and the user of every connection.
            b"user" if value.as_ref() == b"default" => {}
            b"user" => {
                return Err(Frame::err(format!(
                    "No such user '{}'",
                    String::from_utf8_lossy(&c_str(value))
                )));
            }
            b"skipme" => match c_str(value).to_ascii_lowercase().as_slice() {
                b"yes" => filter.skip_me = true,
                b"no" => filter.skip_me = false,
                _ => return Err(syntax_error()),
            },
            _ => return Err(syntax_error()),
        }
    }
    Ok(filter)
}

/// `COPY`'s options as Redis 7.0 reads them: `REPLACE` and `DB n` in any order and
/// number (only database 0 exists), then the same-key check.
fn parse_copy(rest: &[Bytes]) -> Result<Command, Frame> {
    let mut replace = false;
    let mut opts = &rest[2..];
    while let Some((opt, more)) = opts.split_first() {
        if opt.eq_ignore_ascii_case(b"replace") {
            replace = true;
            opts = more;
        } else if let (true, [db, more @ ..]) = (opt.eq_ignore_ascii_case(b"db"), more) {
            if int(db)? != 0 {
                return Err(Frame::err("DB index is out of range"));
            }
            opts = more;
        } else {
            return Err(syntax_error());
        }
    }
    if rest[0] == rest[1] {
        return Err(Frame::err("source and destination objects are the same"));
    }
    Ok(Command::Copy {
        from: rest[0].clone(),
        to: rest[1].clone(),
        replace,
    })
}

/// A `SCAN` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Where to continue (0: from the start).
    pub cursor: u64,
    /// `MATCH`: a glob pattern the keys must match; `None` for all keys (also for `*`).
    pub pattern: Option<Bytes>,
    /// `COUNT`: how much work a step does (at least 1; Redis's default 10).
    pub count: usize,
    /// `TYPE`: false when it names a type other than `string` (no Mycel key has it).
    pub strings: bool,
}

/// A `KEYS` or `SCAN ... MATCH` pattern: `None` for `*`, which matches every key (and
/// needs no matching).
fn key_pattern(pattern: &Bytes) -> Option<Bytes> {
    (pattern[..] != *b"*").then(|| pattern.clone())
}

/// `SCAN`'s arguments as Redis 7.0 reads them: the cursor as C's `strtoul` with nothing
/// after it, then option pairs in any order and number, the last of a kind winning.
fn parse_scan(rest: &[Bytes]) -> Result<Scan, Frame> {
    let (cursor, mut opts) = rest.split_first().ok_or_else(|| wrong_arity("scan"))?;
    let mut scan = Scan {
        cursor: parse_cursor(cursor).ok_or_else(|| Frame::err("invalid cursor"))?,
        pattern: None,
        count: 10,
        strings: true,
    };
    while let [opt, value, more @ ..] = opts {
        if opt.eq_ignore_ascii_case(b"count") {
            scan.count = usize::try_from(int(value)?)
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(syntax_error)?;
        } else if opt.eq_ignore_ascii_case(b"match") {
            scan.pattern = key_pattern(value);
        } else if opt.eq_ignore_ascii_case(b"type") {
            scan.strings = value.eq_ignore_ascii_case(b"string");
        } else {
            return Err(syntax_error());
        }
        opts = more;
    }
    if opts.is_empty() {
        Ok(scan)
    } else {
        Err(syntax_error())
    }
}

/// A `SCAN` cursor as C's `strtoul` reads it for Redis: an optional sign (a minus wraps,
/// as in C), decimal digits, nothing else, at most `u64::MAX`; no digits at all is 0
/// unless a sign is left over. Leading whitespace is refused. Redis reads the argument as
/// a C string, so it ends at a NUL byte.
fn parse_cursor(arg: &[u8]) -> Option<u64> {
    let arg = arg.split(|&b| b == 0).next().unwrap_or_default();
    let (negative, digits) = match arg.split_first() {
        None => return Some(0),
        Some((b'-', d)) => (true, d),
        Some((b'+', d)) => (false, d),
        Some(_) => (false, arg),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?;
    Some(if negative { n.wrapping_neg() } else { n })
}

fn parse_memory(rest: &[Bytes]) -> Result<Command, Frame> {
    let Some((sub, args)) = rest.split_first() else {
        return Err(wrong_arity("memory"));
    };
    if sub.eq_ignore_ascii_case(b"help") && args.is_empty() {
        return Ok(Command::MemoryHelp);
    }
    if !sub.eq_ignore_ascii_case(b"usage") {
        return Err(Frame::err(format!(
            "unknown subcommand '{}'. Try MEMORY HELP.",
            String::from_utf8_lossy(sub)
        )));
    }
    let Some((key, mut options)) = args.split_first() else {
        return Err(wrong_arity("memory|usage"));
    };
    // As Redis: the options are checked before the key is looked up.
    while let Some((option, tail)) = options.split_first() {
        match tail.split_first() {
            Some((count, tail)) if option.eq_ignore_ascii_case(b"samples") => {
                if int(count)? < 0 {
                    return Err(syntax_error());
                }
                options = tail;
            }
            _ => return Err(syntax_error()),
        }
    }
    Ok(Command::MemoryUsage(key.clone()))
}

/// Entries `SLOWLOG GET` lists when no count is given.
const SLOWLOG_DEFAULT_COUNT: usize = 10;

fn parse_slowlog(rest: &[Bytes]) -> Result<Command, Frame> {
    let Some((sub, args)) = rest.split_first() else {
        return Err(wrong_arity("slowlog"));
    };
    let lower = sub.to_ascii_lowercase();
    match (lower.as_slice(), args) {
        (b"get", []) => Ok(Command::SlowlogGet(Some(SLOWLOG_DEFAULT_COUNT))),
        (b"get", [count]) => match int(count) {
            Ok(-1) => Ok(Command::SlowlogGet(None)),
            Ok(n) if n >= 0 => Ok(Command::SlowlogGet(Some(
                usize::try_from(n).unwrap_or(usize::MAX),
            ))),
            _ => Err(Frame::err("count should be greater than or equal to -1")),
        },
        (b"get", _) => Err(Frame::err(format!(
            "unknown subcommand or wrong number of arguments for '{}'. Try SLOWLOG HELP.",
            String::from_utf8_lossy(sub)
        ))),
        (b"len", []) => Ok(Command::SlowlogLen),
        (b"len", _) => Err(wrong_arity("slowlog|len")),
        (b"reset", []) => Ok(Command::SlowlogReset),
        (b"reset", _) => Err(wrong_arity("slowlog|reset")),
        (b"help", []) => Ok(Command::SlowlogHelp),
        (b"help", _) => Err(wrong_arity("slowlog|help")),
        _ => Err(Frame::err(format!(
            "unknown subcommand '{}'. Try SLOWLOG HELP.",
            String::from_utf8_lossy(sub)
        ))),
    }
}

fn parse_config(rest: &[Bytes]) -> Result<Command, Frame> {
    match rest.split_first() {
        Some((sub, [])) if sub.eq_ignore_ascii_case(b"help") => Ok(Command::ConfigHelp),
        Some((sub, _)) if sub.eq_ignore_ascii_case(b"help") => Err(wrong_arity("config|help")),
        Some((sub, patterns)) if sub.eq_ignore_ascii_case(b"get") => {
            if patterns.is_empty() {
                return Err(wrong_arity("config|get"));
            }
            Ok(Command::ConfigGet(patterns.to_vec()))
        }
        Some((sub, args)) if sub.eq_ignore_ascii_case(b"set") => {
            if args.len() < 2 {
                return Err(wrong_arity("config|set"));
            }
            // As Redis: a missing value after the first pair is a syntax error.
            if args.len() % 2 != 0 {
                return Err(syntax_error());
            }
            Ok(Command::ConfigSet(
                args.chunks_exact(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect(),
            ))
        }
        Some((sub, _)) => Err(Frame::err(format!(
            "unknown subcommand '{}'. Try CONFIG HELP.",
            String::from_utf8_lossy(sub)
        ))),
        None => Err(wrong_arity("config")),
    }
}

fn parse_bucket(rest: &[Bytes]) -> Result<Command, Frame> {
    match rest {
        [] => Ok(Command::Bucket(None)),
        [name] => Ok(Command::Bucket(Some(BucketArg {
            name: name.clone(),
            create: None,
        }))),
        [name, create] if create.eq_ignore_ascii_case(b"create") => {
            Ok(Command::Bucket(Some(BucketArg {
                name: name.clone(),
                create: Some(None),
            })))
        }
        [name, create, px, ms]
            if create.eq_ignore_ascii_case(b"create") && px.eq_ignore_ascii_case(b"px") =>
        {
            let ms = u64::try_from(int(ms)?)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| Frame::err("invalid expire time in 'mycel.bucket' command"))?;
            Ok(Command::Bucket(Some(BucketArg {
                name: name.clone(),
                create: Some(Some(ms)),
            })))
        }
        _ => Err(syntax_error()),
    }
}

/// A client attribute (name, library name or version) as Redis accepts it: printable ASCII
/// without spaces.
fn is_client_attr(value: &[u8]) -> bool {
    value.iter().all(|b| (b'!'..=b'~').contains(b))
}

/// A client name as Redis accepts it (see [`is_client_attr`]).
fn check_client_name(name: &[u8]) -> Result<(), Frame> {
    if !is_client_attr(name) {
        return Err(Frame::err(
            "Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

fn parse_hello(rest: &[Bytes]) -> Result<Command, Frame> {
    let Some((ver, mut opts)) = rest.split_first() else {
        return Ok(Command::Hello {
            proto: None,
            name: None,
            auth: None,
        });
    };
    let proto =
        int(ver).map_err(|_| Frame::err("Protocol version is not an integer or out of range"))?;
    // As in Redis, an unsupported version is refused before any option is looked at.
    if !(2..=3).contains(&proto) {
        return Err(Frame::Error(
            "NOPROTO unsupported protocol version".to_owned(),
        ));
    }
    let (mut name, mut auth) = (None, None);
    while let Some((opt, tail)) = opts.split_first() {
        if opt.eq_ignore_ascii_case(b"auth") && tail.len() >= 2 {
            auth = Some(Credentials {
                user: Some(tail[0].clone()),
                password: tail[1].clone(),
            });
            opts = &tail[2..];
        } else if opt.eq_ignore_ascii_case(b"setname") && !tail.is_empty() {
            check_client_name(&tail[0])?;
            name = Some(tail[0].clone());
            opts = &tail[1..];
        } else {
            return Err(Frame::err(format!(
                "Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(opt)
            )));
        }
    }
    Ok(Command::Hello {
        proto: Some(proto),
        name,
        auth,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every command name `Command::parse` knows, and a few it does not.
    fn tried_names() -> Vec<&'static str> {
        NAMES.iter().copied().chain(["nosuch", ""]).collect()
    }

    /// Arguments that steer the parsers into their branches: options, subcommands,
    /// numbers at and past the limits, and bytes that are none of these.
    const TOKENS: &[&str] = &[
        "k",
        "v",
        "",
        "0",
        "1",
        "-1",
        "2",
        "3",
        "100",
        "9223372036854775807",
        "-9223372036854775808",
        "9223372036854775808",
        "1.5",
        "abc",
        "ex",
        "px",
        "exat",
        "pxat",
        "nx",
        "xx",
        "gt",
        "lt",
        "get",
        "keepttl",
        "persist",
        "setname",
        "getname",
        "id",
        "info",
        "list",
        "type",
        "normal",
        "pubsub",
        "setinfo",
        "kill",
        "skipme",
        "addr",
        "lib-name",
        "lib-ver",
        "auth",
        "default",
        "count",
        "match",
        "*",
        "docs",
        "set",
        "create",
        "replace",
        "db",
        "async",
        "sync",
        "a b",
        "\r\n",
        "\u{7f}",
    ];

    /// `Command::parse` of `name` and `args`: a command or an error reply, never a panic.
    fn parses_or_refuses(name: &str, args: &[&str]) -> bool {
        let request: Vec<Bytes> = std::iter::once(name)
            .chain(args.iter().copied())
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        match Command::parse(&request) {
            Ok(_) => true,
            Err(reply) => matches!(reply, Frame::Error(_)),
        }
    }

    /// Each of `NAMES` is a command the parser knows, found in any case; names of no
    /// command are not found.
    #[test]
    fn names_are_the_parsers() {
        assert!(NAMES.windows(2).all(|w| w[0] < w[1]), "sorted, no repeats");
        for name in NAMES {
            let unknown = |n: &str| {
                matches!(Command::parse(&[Bytes::copy_from_slice(n.as_bytes())]),
                    Err(Frame::Error(e)) if e.starts_with("ERR unknown command"))
            };
            assert!(!unknown(name), "{name}");
            assert_eq!(
                command_name(name.to_ascii_uppercase().as_bytes()),
                Some(*name)
            );
            assert!(name.len() <= MAX_NAME_LEN);
        }
        for other in [
            "nosuch",
            "",
            "gets",
            "get\0",
            "\0get",
            "incrbyfloats",
            "mycel.bucketxxxxx",
        ] {
            assert_eq!(command_name(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn every_name_with_up_to_two_arguments_parses_or_is_refused() {
        for name in tried_names() {
            assert!(parses_or_refuses(name, &[]), "{name}");
            for a in TOKENS {
                assert!(parses_or_refuses(name, &[a]), "{name} {a:?}");
                for b in TOKENS {
                    assert!(parses_or_refuses(name, &[a, b]), "{name} {a:?} {b:?}");
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_arguments_parse_without_panicking(
            name in proptest::sample::select(tried_names()),
            args in proptest::collection::vec(proptest::sample::select(TOKENS), 0..7),
            upper in any::<bool>(),
        ) {
            let name = if upper { name.to_ascii_uppercase() } else { name.to_owned() };
            prop_assert!(parses_or_refuses(&name, &args));
        }
    }

    fn parse(line: &str) -> Result<Command, Frame> {
        let args: Vec<Bytes> = line
            .split(' ')
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect();
        Command::parse(&args)
    }

    fn err(msg: &str) -> Result<Command, Frame> {
        Err(Frame::Error(msg.to_string()))
    }

    /// `SCAN`'s cursor and options as Redis 7.0 reads them (checked against
    /// redis-server 7.0.15).
    #[test]
    fn scan_options_like_redis() {
        let scan = |cursor, pattern: Option<&'static str>, count, strings| {
            Ok(Command::Scan(Scan {
                cursor,
                pattern: pattern.map(|p: &str| Bytes::copy_from_slice(p.as_bytes())),
                count,
                strings,
            }))
        };
        assert_eq!(parse("SCAN 0"), scan(0, None, 10, true));
        assert_eq!(
            parse("scan 17 match u:* COUNT 5"),
            scan(17, Some("u:*"), 5, true)
        );
        assert_eq!(
            parse("SCAN 0 MATCH *"),
            scan(0, None, 10, true),
            "* is everything"
        );
        assert_eq!(
            parse("SCAN 0 COUNT 5 COUNT 6 TYPE String"),
            scan(0, None, 6, true)
        );
        assert_eq!(parse("SCAN 0 TYPE hash"), scan(0, None, 10, false));
        // C's strtoul: a sign (a minus wraps), nothing else; no digits at all is 0.
        assert_eq!(parse("SCAN -1"), scan(u64::MAX, None, 10, true));
        assert_eq!(parse("SCAN +5"), scan(5, None, 10, true));
        assert_eq!(parse("SCAN "), scan(0, None, 10, true));
        assert_eq!(
            parse("SCAN 18446744073709551615"),
            scan(u64::MAX, None, 10, true)
        );
        assert_eq!(
            parse("SCAN 1\0x"),
            scan(1, None, 10, true),
            "a C string ends at NUL"
        );
        for bad in ["x", "+", "-", "18446744073709551616", "1x", "\t1", "0x10"] {
            assert_eq!(
                parse(&format!("SCAN {bad}")),
                err("ERR invalid cursor"),
                "{bad}"
            );
        }
        for bad in ["COUNT 0", "COUNT -1", "MATCH", "FOO 1", "COUNT 5 MATCH"] {
            assert_eq!(
                parse(&format!("SCAN 0 {bad}")),
                err("ERR syntax error"),
                "{bad}"
            );
        }
        assert_eq!(
            parse("SCAN 0 COUNT x"),
            err("ERR value is not an integer or out of range")
        );
        assert_eq!(
            parse("SCAN"),
            err("ERR wrong number of arguments for 'scan' command")
        );
        assert_eq!(
            parse("KEYS a*"),
            Ok(Command::Keys(Some(Bytes::from_static(b"a*"))))
        );
        assert_eq!(parse("KEYS *"), Ok(Command::Keys(None)));
        assert_eq!(
            parse("KEYS a b"),
            err("ERR wrong number of arguments for 'keys' command")
        );
    }

    #[test]
    fn arity_errors_use_redis_wording() {
        assert_eq!(
            parse("GET"),
            err("ERR wrong number of arguments for 'get' command")
        );
        assert_eq!(
            parse("get a b"),
            err("ERR wrong number of arguments for 'get' command")
        );
        assert_eq!(
            parse("MSET a"),
            err("ERR wrong number of arguments for 'mset' command")
        );
        assert_eq!(
            parse("CLIENT"),
            err("ERR wrong number of arguments for 'client' command")
        );
        assert_eq!(
            parse("CLIENT GETNAME x"),
            err("ERR wrong number of arguments for 'client|getname' command")
        );
    }

    #[test]
    fn transaction_commands() {
        assert_eq!(parse("MULTI"), Ok(Command::Multi));
        assert_eq!(parse("exec"), Ok(Command::Exec));
        assert_eq!(parse("Discard"), Ok(Command::Discard));
        assert_eq!(parse("UNWATCH"), Ok(Command::Unwatch));
        assert_eq!(
            parse("MULTI x"),
            err("ERR wrong number of arguments for 'multi' command")
        );
        assert_eq!(
            parse("WATCH"),
            err("ERR wrong number of arguments for 'watch' command")
        );
        assert_eq!(
            parse("WATCH k l"),
            Ok(Command::Watch(vec!["k".into(), "l".into()]))
        );
    }

    #[test]
    fn unknown_command_lists_args() {
        assert_eq!(
            parse("FOO a b"),
            err("ERR unknown command 'FOO', with args beginning with: 'a' 'b' ")
        );
        // As Redis: arguments are listed while the list is under 128 bytes, the last one
        // cut to what is left of them.
        let args: Vec<String> = (1..=20).map(|i| format!("arg{i:07}")).collect();
        let Err(Frame::Error(e)) = parse(&format!("nope {}", args.join(" "))) else {
            panic!("an error")
        };
        let listed: Vec<String> = args[..10].iter().map(|a| format!("'{a}' ")).collect();
        assert_eq!(
            e,
            format!(
                "ERR unknown command 'nope', with args beginning with: {}",
                listed.concat()
            )
        );
        let long = "y".repeat(150);
        let Err(Frame::Error(e)) = parse(&format!("{long} {long} b")) else {
            panic!("an error")
        };
        assert_eq!(
            e,
            format!(
                "ERR unknown command '{}', with args beginning with: '{}' ",
                &long[..128],
                &long[..128]
            )
        );
    }

    #[test]
    fn flush_takes_one_mode_at_most() {
        assert_eq!(parse("FLUSHDB"), Ok(Command::FlushDb));
        assert_eq!(parse("flushall sync"), Ok(Command::FlushDb));
        assert_eq!(parse("FLUSHDB a"), err("ERR syntax error"));
        assert_eq!(parse("FLUSHDB async sync"), err("ERR syntax error"));
    }

    #[test]
    fn help_subcommands() {
        assert_eq!(parse("client help"), Ok(Command::ClientHelp));
        assert_eq!(parse("CONFIG HELP"), Ok(Command::ConfigHelp));
        assert_eq!(
            parse("CLIENT HELP x"),
            err("ERR wrong number of arguments for 'client|help' command")
        );
        assert_eq!(
            parse("CONFIG HELP x"),
            err("ERR wrong number of arguments for 'config|help' command")
        );
    }

    #[test]
    fn set_options() {
        let Command::Set(s) = parse("set k v NX px 100 GET").unwrap() else {
            panic!()
        };
        assert_eq!(s.condition, SetCondition::IfAbsent);
        assert_eq!(s.expiry, Some(Expiry::In(100)));
        assert!(s.get);
        let Command::Set(s) = parse("SET k v EXAT 10 XX").unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.condition, s.expiry),
            (SetCondition::IfPresent, Some(Expiry::At(10_000)))
        );
        let Command::Set(s) = parse("SET k v KEEPTTL").unwrap() else {
            panic!()
        };
        assert!(s.keep_ttl);
        assert_eq!(parse("SET k v NX XX"), err("ERR syntax error"));
        assert_eq!(parse("SET k v EX 1 PX 2"), err("ERR syntax error"));
        assert_eq!(parse("SET k v EX 1 KEEPTTL"), err("ERR syntax error"));
        assert_eq!(parse("SET k v EX"), err("ERR syntax error"));
        assert_eq!(
            parse("SET k v EX x"),
            err("ERR value is not an integer or out of range")
        );
        assert_eq!(
            parse("SET k v EX 0"),
            err("ERR invalid expire time in 'set' command")
        );
        assert_eq!(
            parse("SET k v EX -5"),
            err("ERR invalid expire time in 'set' command")
        );
        assert_eq!(
            parse("SET k v EX 9223372036854775807"),
            err("ERR invalid expire time in 'set' command")
        );
    }

    #[test]
    fn set_and_getex_options_follow_redis_rules() {
        // The same expiry option again: the last one wins.
        let Command::Set(s) = parse("SET k v EX 10 ex 20").unwrap() else {
            panic!()
        };
        assert_eq!(s.expiry, Some(Expiry::In(20_000)));
        assert_eq!(
            parse("GETEX k PX 1 PX 2"),
            Ok(Command::GetEx(
                "k".into(),
                GetExAction::Expire(Expiry::In(2))
            ))
        );
        assert_eq!(
            parse("GETEX k PERSIST persist"),
            Ok(Command::GetEx("k".into(), GetExAction::Persist))
        );
        assert_eq!(
            parse("GETEX k"),
            Ok(Command::GetEx("k".into(), GetExAction::Keep))
        );
        assert_eq!(parse("GETEX k PERSIST EX 1"), err("ERR syntax error"));
        assert_eq!(parse("GETEX k EX 1 PERSIST"), err("ERR syntax error"));
        assert_eq!(parse("GETEX k EX 1 PX 1"), err("ERR syntax error"));
        // A syntax error is reported before a bad time.
        assert_eq!(parse("SET k v EX abc NX XX"), err("ERR syntax error"));
        assert_eq!(parse("SET k v EX 0 FOO"), err("ERR syntax error"));
        // The deadline must fit in a signed 64-bit Unix time in milliseconds.
        for bad in [
            "SET k v PX 9223372036854775807",
            "SET k v EX 9223372036854775",
            "SET k v EX 9223372036854776",
        ] {
            assert_eq!(
                parse(bad),
                err("ERR invalid expire time in 'set' command"),
                "{bad}"
            );
        }
        let Command::Set(s) = parse("SET k v PXAT 9223372036854775807").unwrap() else {
            panic!()
        };
        assert_eq!(s.expiry, Some(Expiry::At(9_223_372_036_854_775_807)));
        assert_eq!(
            parse("EXPIRE k 9223372036854775"),
            err("ERR invalid expire time in 'expire' command")
        );
        assert_eq!(
            parse("PEXPIRE k 9223372036854775807"),
            err("ERR invalid expire time in 'pexpire' command")
        );
        assert_eq!(
            parse("EXPIRE k -5"),
            Ok(Command::Expire("k".into(), -5000, ExpireCondition::Always))
        );
    }

    #[test]
    fn expire_options_as_in_redis_7() {
        let e = |m: &str| Err(Frame::Error(m.to_owned()));
        let cond = |line: &str| match parse(line) {
            Ok(Command::Expire(_, _, c)) => Ok(c),
            Ok(other) => panic!("{other:?}"),
            Err(e) => Err(e),
        };
        assert_eq!(cond("EXPIRE k 1 nx"), Ok(ExpireCondition::IfNone));
        assert_eq!(cond("EXPIRE k 1 XX"), Ok(ExpireCondition::IfSome));
        assert_eq!(cond("PEXPIRE k 1 GT"), Ok(ExpireCondition::IfLater));
        assert_eq!(cond("EXPIRE k 1 XX GT"), Ok(ExpireCondition::IfLater));
        assert_eq!(cond("EXPIRE k 1 LT"), Ok(ExpireCondition::IfEarlier));
        assert_eq!(
            cond("EXPIRE k 1 LT XX lt"),
            Ok(ExpireCondition::IfSomeEarlier)
        );
        let incompatible = e("ERR NX and XX, GT or LT options at the same time are not compatible");
        assert_eq!(cond("EXPIRE k 1 NX XX"), incompatible);
        assert_eq!(cond("EXPIRE k 1 GT NX"), incompatible);
        assert_eq!(
            cond("EXPIRE k 1 GT LT"),
            e("ERR GT and LT options at the same time are not compatible")
        );
        assert_eq!(cond("EXPIRE k 10 20"), e("ERR Unsupported option 20"));
        // Option errors come before a bad time.
        assert_eq!(cond("EXPIRE k x FOO"), e("ERR Unsupported option FOO"));
    }

    #[test]
    fn setex_is_set_with_an_expiry() {
        let Command::Set(s) = parse("SETEX k 10 v").unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.expiry, &s.value[..]),
            (Some(Expiry::In(10_000)), &b"v"[..])
        );
        let Command::Set(s) = parse("PSETEX k 10 v").unwrap() else {
            panic!()
        };
        assert_eq!(s.expiry, Some(Expiry::In(10)));
        assert_eq!(
            parse("SETEX k 0 v"),
            err("ERR invalid expire time in 'setex' command")
        );
        assert_eq!(
            parse("SETEX k v"),
            err("ERR wrong number of arguments for 'setex' command")
        );
    }

    #[test]
    fn integers_are_strict() {
        assert_eq!(parse("INCRBY k 5"), Ok(Command::IncrBy("k".into(), 5)));
        assert_eq!(parse("DECRBY k 5"), Ok(Command::IncrBy("k".into(), -5)));
        assert_eq!(parse("DECR k"), Ok(Command::IncrBy("k".into(), -1)));
        for bad in ["+5", "05", " 5", "5.0", "", "99999999999999999999", "-0"] {
            assert_eq!(
                Command::parse(&[
                    "INCRBY".into(),
                    "k".into(),
                    Bytes::copy_from_slice(bad.as_bytes())
                ]),
                err("ERR value is not an integer or out of range"),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse("DECRBY k -9223372036854775808"),
            err("ERR decrement would overflow")
        );
    }

    #[test]
    fn expire_family() {
        assert_eq!(
            parse("EXPIRE k 2"),
            Ok(Command::Expire("k".into(), 2000, ExpireCondition::Always))
        );
        assert_eq!(
            parse("PEXPIRE k -1"),
            Ok(Command::Expire("k".into(), -1, ExpireCondition::Always))
        );
        assert_eq!(parse("PTTL k"), Ok(Command::Ttl("k".into(), true)));
        assert_eq!(
            parse("GETEX k PERSIST"),
            Ok(Command::GetEx("k".into(), GetExAction::Persist))
        );
        assert_eq!(
            parse("GETEX k PX 5"),
            Ok(Command::GetEx(
                "k".into(),
                GetExAction::Expire(Expiry::In(5))
            ))
        );
        assert_eq!(parse("GETEX k PERSIST EX 1"), err("ERR syntax error"));
        // A bad time is checked after the lookup, as in Redis; a syntax error is not.
        assert_eq!(
            parse("GETEX k EX -1"),
            Ok(Command::GetEx(
                "k".into(),
                GetExAction::BadTime(BadTime::OutOfRange)
            ))
        );
        assert_eq!(
            parse("GETEX k PX abc"),
            Ok(Command::GetEx(
                "k".into(),
                GetExAction::BadTime(BadTime::NotAnInteger)
            ))
        );
        assert_eq!(parse("GETEX k EX abc FOO"), err("ERR syntax error"));
        assert_eq!(
            BadTime::OutOfRange.frame("getex"),
            Frame::err("invalid expire time in 'getex' command")
        );
        assert_eq!(
            parse("PEXPIRETIME k"),
            Ok(Command::ExpireTime("k".into(), true))
        );
        assert_eq!(
            parse("expiretime k"),
            Ok(Command::ExpireTime("k".into(), false))
        );
    }

    #[test]
    fn string_and_server_commands() {
        let Command::Set(s) = parse("GETSET k v").unwrap() else {
            panic!("GETSET is SET with GET")
        };
        assert!(s.get && s.expiry.is_none() && !s.keep_ttl);
        assert_eq!(s.condition, SetCondition::Always);
        assert_eq!(
            parse("GETSET k"),
            err("ERR wrong number of arguments for 'getset' command")
        );
        assert_eq!(parse("TYPE k"), Ok(Command::Type("k".into())));
        assert_eq!(parse("STRLEN k"), Ok(Command::StrLen("k".into())));
        assert_eq!(
            parse("APPEND k v"),
            Ok(Command::Append("k".into(), "v".into()))
        );
        assert_eq!(
            parse("APPEND k"),
            err("ERR wrong number of arguments for 'append' command")
        );
        assert_eq!(
            parse("PEXPIREAT k -3 nx"),
            Ok(Command::ExpireAt("k".into(), -3, ExpireCondition::IfNone))
        );
        assert_eq!(
            parse("EXPIREAT k 9223372036854776"),
            err("ERR invalid expire time in 'expireat' command")
        );
        assert_eq!(
            parse("COPY a b db 0 replace"),
            Ok(Command::Copy {
                from: "a".into(),
                to: "b".into(),
                replace: true
            })
        );
        assert_eq!(parse("COPY a b DB"), err("ERR syntax error"));
        assert_eq!(
            parse("COPY a a"),
            err("ERR source and destination objects are the same")
        );
        assert_eq!(
            parse("renameNX a b"),
            Ok(Command::Rename {
                from: "a".into(),
                to: "b".into(),
                replace: false
            })
        );
        assert_eq!(
            parse("RENAME a"),
            err("ERR wrong number of arguments for 'rename' command")
        );
        assert_eq!(parse("TIME"), Ok(Command::Time));
        assert_eq!(parse("ROLE"), Ok(Command::Role));
        assert_eq!(
            parse("TIME now"),
            err("ERR wrong number of arguments for 'time' command")
        );
        let args: Vec<Bytes> = ["config", "set", "slowlog-max-len", "5", "SAVE", ""]
            .into_iter()
            .map(Bytes::from)
            .collect();
        assert_eq!(
            Command::parse(&args),
            Ok(Command::ConfigSet(vec![
                ("slowlog-max-len".into(), "5".into()),
                ("SAVE".into(), "".into()),
            ]))
        );
        assert_eq!(
            parse("CONFIG SET maxmemory"),
            err("ERR wrong number of arguments for 'config|set' command")
        );
        assert_eq!(
            parse("CONFIG SET slowlog-max-len 5 save"),
            err("ERR syntax error")
        );
    }

    #[test]
    fn client_and_hello() {
        assert_eq!(
            parse("CLIENT SETINFO LIB-NAME redis-py"),
            Ok(Command::ClientSetInfo(
                ClientAttr::LibName,
                "redis-py".into()
            ))
        );
        assert_eq!(
            parse("client setinfo lib-ver 5.0"),
            Ok(Command::ClientSetInfo(ClientAttr::LibVer, "5.0".into()))
        );
        let Err(Frame::Error(e)) = Command::parse(&[
            "CLIENT".into(),
            "SETINFO".into(),
            "LIB-NAME".into(),
            "my lib".into(),
        ]) else {
            panic!("a library name with a space is refused")
        };
        assert_eq!(
            e,
            "ERR LIB-NAME cannot contain spaces, newlines or special characters."
        );
        assert_eq!(parse("CLIENT INFO"), Ok(Command::ClientInfo));
        assert_eq!(parse("CLIENT LIST"), Ok(Command::ClientList(None)));
        // As Redis: any 64-bit integers, in the order given; one TYPE or one ID list.
        assert_eq!(
            parse("CLIENT LIST id 7 3 7 0 -1"),
            Ok(Command::ClientList(Some(vec![7, 3, 7, 0, -1])))
        );
        assert_eq!(
            parse("CLIENT LIST TYPE Normal"),
            Ok(Command::ClientList(None))
        );
        assert_eq!(
            parse("CLIENT LIST TYPE pubsub"),
            Ok(Command::ClientList(Some(Vec::new())))
        );
        assert_eq!(
            parse("CLIENT LIST TYPE bogus"),
            err("ERR Unknown client type 'bogus'")
        );
        assert_eq!(parse("CLIENT LIST ID 1 x"), err("ERR Invalid client ID"));
        for bad in [
            "CLIENT LIST ID",
            "CLIENT LIST TYPE normal ID 1",
            "CLIENT LIST TYPE normal TYPE normal",
            "CLIENT LIST TYPE",
            "CLIENT LIST x",
        ] {
            assert_eq!(parse(bad), err("ERR syntax error"), "{bad}");
        }
        assert_eq!(
            parse("CLIENT INFO x"),
            err("ERR wrong number of arguments for 'client|info' command")
        );
        assert_eq!(
            parse("client setname app"),
            Ok(Command::ClientSetName("app".into()))
        );
        assert_eq!(
            parse("CLIENT NOPE"),
            err("ERR unknown subcommand 'NOPE'. Try CLIENT HELP.")
        );
        // MEMORY USAGE, with Redis's errors (checked before the key is looked up).
        assert_eq!(
            parse("MEMORY usage k"),
            Ok(Command::MemoryUsage("k".into()))
        );
        assert_eq!(
            parse("memory USAGE k SAMPLES 0 samples 5"),
            Ok(Command::MemoryUsage("k".into()))
        );
        assert_eq!(
            parse("MEMORY"),
            err("ERR wrong number of arguments for 'memory' command")
        );
        assert_eq!(
            parse("MEMORY USAGE"),
            err("ERR wrong number of arguments for 'memory|usage' command")
        );
        assert_eq!(
            parse("MEMORY STATS"),
            err("ERR unknown subcommand 'STATS'. Try MEMORY HELP.")
        );
        for bad in [
            "MEMORY USAGE k SAMPLES",
            "MEMORY USAGE k SAMPLES -1",
            "MEMORY USAGE k x",
        ] {
            assert_eq!(parse(bad), err("ERR syntax error"), "{bad}");
        }
        assert_eq!(
            parse("MEMORY USAGE k SAMPLES x"),
            err("ERR value is not an integer or out of range")
        );
        assert_eq!(parse("memory help"), Ok(Command::MemoryHelp));
        // SLOWLOG, with Redis 7's errors.
        assert_eq!(parse("SLOWLOG get"), Ok(Command::SlowlogGet(Some(10))));
        assert_eq!(parse("slowlog GET 0"), Ok(Command::SlowlogGet(Some(0))));
        assert_eq!(parse("slowlog get 3"), Ok(Command::SlowlogGet(Some(3))));
        assert_eq!(parse("slowlog get -1"), Ok(Command::SlowlogGet(None)));
        for bad in [
            "slowlog get -2",
            "slowlog get x",
            "slowlog get 99999999999999999999",
        ] {
            assert_eq!(
                parse(bad),
                err("ERR count should be greater than or equal to -1"),
                "{bad}"
            );
        }
        assert_eq!(
            parse("SLOWLOG GET 1 2"),
            err("ERR unknown subcommand or wrong number of arguments for 'GET'. Try SLOWLOG HELP.")
        );
        assert_eq!(parse("slowlog LEN"), Ok(Command::SlowlogLen));
        assert_eq!(parse("slowlog reset"), Ok(Command::SlowlogReset));
        assert_eq!(parse("slowlog help"), Ok(Command::SlowlogHelp));
        assert_eq!(
            parse("SLOWLOG"),
            err("ERR wrong number of arguments for 'slowlog' command")
        );
        assert_eq!(
            parse("slowlog len 1"),
            err("ERR wrong number of arguments for 'slowlog|len' command")
        );
        assert_eq!(
            parse("slowlog reset 1"),
            err("ERR wrong number of arguments for 'slowlog|reset' command")
        );
        assert_eq!(
            parse("slowlog help 1"),
            err("ERR wrong number of arguments for 'slowlog|help' command")
        );
        assert_eq!(
            parse("SLOWLOG foo"),
            err("ERR unknown subcommand 'foo'. Try SLOWLOG HELP.")
        );
        // The names CLIENT LIST shows for refused requests.
        let args = |line: &str| -> Vec<Bytes> {
            line.split(' ')
                .map(|a| Bytes::copy_from_slice(a.as_bytes()))
                .collect()
        };
        assert_eq!(refused_name(&args("MEMORY USAGE")), Some("memory|usage"));
        assert_eq!(refused_name(&args("Config GET")), Some("config|get"));
        assert_eq!(refused_name(&args("CLIENT pause 1")), Some("client|pause"));
        assert_eq!(refused_name(&args("MEMORY nope")), None);
        assert_eq!(refused_name(&args("MEMORY")), Some("memory"));
        assert_eq!(refused_name(&args("SLOWLOG GET x")), Some("slowlog|get"));
        assert_eq!(refused_name(&args("GETRANGE k a b")), Some("getrange"));
        assert_eq!(refused_name(&args("NOSUCH")), None);
        assert!(is_arity_error(&parse("GET").expect_err("arity")));
        assert!(!is_arity_error(
            &parse("GETRANGE k a b").expect_err("bad int")
        ));
        // GETRANGE, SETRANGE, TOUCH.
        assert_eq!(
            parse("SUBSTR k -3 -1"),
            Ok(Command::GetRange("k".into(), -3, -1))
        );
        assert_eq!(
            parse("SETRANGE k 7 v"),
            Ok(Command::SetRange("k".into(), 7, "v".into()))
        );
        assert_eq!(parse("SETRANGE k -1 v"), err("ERR offset is out of range"));
        assert_eq!(
            parse("TOUCH a b a"),
            Ok(Command::Exists(vec!["a".into(), "b".into(), "a".into()]))
        );
        assert_eq!(
            parse("HELLO"),
            Ok(Command::Hello {
                proto: None,
                name: None,
                auth: None
            })
        );
        assert_eq!(
            parse("HELLO 3 AUTH default p SETNAME n"),
            Ok(Command::Hello {
                proto: Some(3),
                name: Some("n".into()),
                auth: Some(Credentials {
                    user: Some("default".into()),
                    password: "p".into()
                })
            })
        );
        // An unsupported version wins over the options, as in Redis.
        assert_eq!(
            parse("HELLO 4 AUTH bob pw"),
            Err(Frame::Error(
                "NOPROTO unsupported protocol version".to_owned()
            ))
        );
        // The server judges the credentials; names follow CLIENT SETNAME's rule.
        assert_eq!(
            parse("HELLO 3 AUTH bob pw"),
            Ok(Command::Hello {
                proto: Some(3),
                name: None,
                auth: Some(Credentials {
                    user: Some("bob".into()),
                    password: "pw".into()
                })
            })
        );
        // AUTH takes a password, or a user and a password, as in Redis.
        assert_eq!(
            parse("AUTH pw"),
            Ok(Command::Auth(Credentials {
                user: None,
                password: "pw".into()
            }))
        );
        assert_eq!(
            parse("auth bob pw"),
            Ok(Command::Auth(Credentials {
                user: Some("bob".into()),
                password: "pw".into()
            }))
        );
        assert_eq!(
            parse("AUTH"),
            Err(Frame::err("wrong number of arguments for 'auth' command"))
        );
        assert_eq!(parse("AUTH a b c"), Err(Frame::err("syntax error")));
        // Neither the user nor the password reaches a log.
        let debug = format!("{:?}", parse("AUTH bob hunter2"));
        assert!(
            !debug.contains("hunter2") && !debug.contains("bob"),
            "{debug}"
        );
        let Err(Frame::Error(e)) =
            Command::parse(&["HELLO".into(), "2".into(), "SETNAME".into(), "a b".into()])
        else {
            panic!("a name with a space is refused")
        };
        assert!(
            e.starts_with("ERR Client names cannot contain spaces"),
            "{e}"
        );
        assert_eq!(
            parse("CONFIG GET save"),
            Ok(Command::ConfigGet(vec!["save".into()]))
        );
        assert_eq!(parse("SELECT 0"), Ok(Command::Select(0)));
    }

    /// `CLIENT KILL`'s two forms and their errors, checked against redis-server 7.0.15.
    #[test]
    fn client_kill_as_redis_reads_it() {
        let kill = |f: KillFilter| Ok(Command::ClientKill(f));
        // The old form: one address, the caller not spared.
        assert_eq!(
            parse("CLIENT KILL 127.0.0.1:5000"),
            kill(KillFilter {
                addr: Some("127.0.0.1:5000".into()),
                old_form: true,
                ..KillFilter::default()
            })
        );
        // Filters in pairs, any case, the caller spared unless SKIPME no; the last of a
        // repeated filter wins.
        assert_eq!(
            parse("client kill id 9 Id 12 laddr 127.0.0.1:6379 TYPE Normal USER default"),
            kill(KillFilter {
                id: Some(12),
                laddr: Some("127.0.0.1:6379".into()),
                skip_me: true,
                ..KillFilter::default()
            })
        );
        assert_eq!(
            parse("CLIENT KILL ADDR 127.0.0.1:1 SKIPME No"),
            kill(KillFilter {
                addr: Some("127.0.0.1:1".into()),
                skip_me: false,
                ..KillFilter::default()
            })
        );
        assert_eq!(
            parse("CLIENT KILL TYPE pubsub"),
            kill(KillFilter {
                none: true,
                skip_me: true,
                ..KillFilter::default()
            })
        );
        assert_eq!(
            parse("CLIENT KILL"),
            err("ERR wrong number of arguments for 'client|kill' command")
        );
        for bad in ["0", "-3", "x", "1.5", "99999999999999999999"] {
            assert_eq!(
                parse(&format!("CLIENT KILL ID {bad}")),
                err("ERR client-id should be greater than 0"),
                "{bad}"
            );
        }
        assert_eq!(
            parse("CLIENT KILL TYPE bogus"),
            err("ERR Unknown client type 'bogus'")
        );
        assert_eq!(
            parse("CLIENT KILL USER alice"),
            err("ERR No such user 'alice'")
        );
        for bad in [
            "CLIENT KILL ID 1 SKIPME",
            "CLIENT KILL ID 1 SKIPME maybe",
            "CLIENT KILL a b",
            "CLIENT KILL MAXAGE 10",
            "CLIENT KILL ID 1 TYPE",
        ] {
            assert_eq!(parse(bad), err("ERR syntax error"), "{bad}");
        }
        // Checked in order: the first bad filter answers.
        assert_eq!(
            parse("CLIENT KILL ID 0 TYPE bogus"),
            err("ERR client-id should be greater than 0")
        );
        assert_eq!(
            parse("CLIENT KILL TYPE bogus ID 0"),
            err("ERR Unknown client type 'bogus'")
        );
        assert_eq!(
            parse("CLIENT KILL SKIPME maybe USER alice"),
            err("ERR syntax error")
        );
        // Values are C strings to Redis: read up to a NUL byte (a user name is not).
        let kill = |args: &[&[u8]]| {
            let mut request = vec![Bytes::from_static(b"CLIENT"), Bytes::from_static(b"KILL")];
            request.extend(args.iter().map(|a| Bytes::copy_from_slice(a)));
            Command::parse(&request)
        };
        assert_eq!(
            kill(&[b"TYPE", b"x\0y"]),
            err("ERR Unknown client type 'x'")
        );
        assert_eq!(
            kill(&[b"ADDR", b"127.0.0.1:5\0zz", b"SKIPME", b"no\0"]),
            Ok(Command::ClientKill(KillFilter {
                addr: Some("127.0.0.1:5".into()),
                ..KillFilter::default()
            }))
        );
        assert_eq!(
            kill(&[b"USER", b"default\0x"]),
            err("ERR No such user 'default'")
        );
    }
}
