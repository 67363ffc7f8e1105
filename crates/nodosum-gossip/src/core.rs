//! The sans-IO membership state machine: foca, the sealed envelope, the member table,
//! local health and join retries. It reads no clock and touches no socket; the tokio
//! shell and the deterministic simulation both drive it.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use foca::{Codec, Foca, Header, Message, NoCustomBroadcast, OwnedNotification, PostcardCodec};
use foca::{Notification, Runtime, State, Timer};
use nodosum_proto::{EnvelopeError, Key, KeyId, Keyring, KeyringError, Member, Metadata};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::config::Config;
use crate::error::Error;
use crate::identity::GossipId;
use crate::metrics::Metrics;
use crate::table::{MemberState, MembershipEvent, Table};

/// Payload kinds inside the envelope. Kinds 1 and 3, the earlier join and sync request
/// formats, are retired: a node receiving one drops it as malformed.
const KIND_FOCA: u8 = 0;
/// The answer to a join request: the seed's identity, which the joiner then announces
/// itself to.
const KIND_JOIN_REPLY: u8 = 2;
/// "Who are you?": asked of seed addresses, whose node IDs a joiner does not know. The body
/// is the asker's gossip address (postcard): the answer goes there.
const KIND_JOIN_REQUEST: u8 = 5;
/// "Send me your member list": asked of a seed after joining and of a random member every
/// `sync_interval` (memberlist's push-pull, pull half). The body is a [`SyncRequest`]
/// (postcard) naming the asker and the member asked; the list goes to the asker's gossip
/// address as this node's table knows it.
///
/// A datagram's source address can be forged and a sealed datagram can be captured and
/// sent again, so requests are never answered at the source. A member list (many
/// datagrams for one) goes only to a member this node knows (alive, suspect or failed,
/// not left), only if the request was meant for this node, and at most once per half
/// probe interval per address ([`Answered`]): a replayed request makes the member it was
/// meant for send the asker what it would get anyway, no faster than that. A join reply
/// (one datagram) goes to the address sealed in the request, with the same kind of limit.
const KIND_SYNC_REQUEST: u8 = 6;
/// One datagram of the sender's member list: `[u16 BE count][count foca members]`.
const KIND_SYNC_STATE: u8 = 4;

/// How often the member table is reconciled with foca's full state, in probe intervals.
const RECONCILE_EVERY: u32 = 10;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transmit {
    pub(crate) dst: SocketAddr,
    pub(crate) bytes: Vec<u8>,
}

/// Why a received datagram was dropped without touching any state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum DropReason {
    TooLarge,
    TooShort,
    UnsupportedVersion,
    UnknownKey,
    Unauthentic,
    Malformed,
    Refused,
    /// A sync request from a node that is not a member here (yet: its announce may still
    /// be on its way), or that left.
    NotMember,
    /// A request whose reply address was answered less than a gap ago (a replay, or a
    /// retry that crossed the answer).
    RateLimited,
}

impl DropReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::TooShort => "too_short",
            Self::UnsupportedVersion => "unsupported_version",
            Self::UnknownKey => "unknown_key",
            Self::Unauthentic => "unauthentic",
            Self::Malformed => "malformed",
            Self::Refused => "refused",
            Self::NotMember => "not_member",
            Self::RateLimited => "rate_limited",
        }
    }

    fn of(e: &EnvelopeError) -> Self {
        match e {
            EnvelopeError::TooShort { .. } => Self::TooShort,
            EnvelopeError::UnsupportedVersion { .. } => Self::UnsupportedVersion,
            EnvelopeError::UnknownKey { .. } => Self::UnknownKey,
            EnvelopeError::Unauthentic => Self::Unauthentic,
        }
    }
}

enum CoreTimer {
    Foca(Timer<GossipId>),
    Join,
    Sync,
    SyncOnce,
    Maintenance,
}

struct Queued {
    at: Instant,
    seq: u64,
    timer: CoreTimer,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
/// Earliest first in a max-heap.
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

type Hint = (GossipId, u16, State);

/// Where the output being absorbed came from.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// A local call or timer.
    Local,
    /// A datagram whose updates foca applied: our identity before it, and the updates.
    Datagram(&'a GossipId, &'a [Hint]),
    /// A member list applied as a whole.
    Sync(&'a [Hint]),
}

/// foca's postcard codec, also recording every member update it decodes so the table
/// can follow suspicions foca does not report.
struct HintCodec(Arc<Mutex<Vec<Hint>>>);

impl Codec<GossipId> for HintCodec {
    type Error = postcard::Error;

    fn encode_header(
        &mut self,
        header: &Header<GossipId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        PostcardCodec.encode_header(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<GossipId>, Self::Error> {
        PostcardCodec.decode_header(buf)
    }

    fn encode_member(
        &mut self,
        member: &foca::Member<GossipId>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        PostcardCodec.encode_member(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<foca::Member<GossipId>, Self::Error> {
        let m: foca::Member<GossipId> = PostcardCodec.decode_member(buf)?;
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push((
            m.id().clone(),
            m.incarnation(),
            m.state(),
        ));
        Ok(m)
    }
}

#[derive(Default)]
struct Outbox {
    sends: Vec<(GossipId, Vec<u8>)>,
    timers: Vec<(Duration, Timer<GossipId>)>,
    notes: Vec<OwnedNotification<GossipId>>,
}

impl Runtime<GossipId> for Outbox {
    fn notify(&mut self, n: Notification<'_, GossipId>) {
        self.notes.push(n.to_owned());
    }
    fn send_to(&mut self, to: GossipId, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }
    fn submit_after(&mut self, event: Timer<GossipId>, after: Duration) {
        self.timers.push((after, event));
    }
}

struct Join {
    seeds: Vec<SocketAddr>,
    delay: Duration,
}

/// The body of a [`KIND_SYNC_REQUEST`].
#[derive(serde::Serialize, serde::Deserialize)]
struct SyncRequest<'a> {
    /// The asking node's ID.
    asker: &'a str,
    /// The ID of the node asked.
    answerer: &'a str,
}

/// When each address was last answered a request of one kind: a request is answered at
/// most once per `gap` per address.
#[derive(Debug, Default)]
struct Answered {
    at: HashMap<SocketAddr, Instant>,
    /// When expired entries were last swept.
    swept: Option<Instant>,
}

impl Answered {
    /// Entries kept before the expired ones are swept. Reply addresses come from sealed
    /// requests, so only members (and would-be members) ever get an entry.
    const SWEEP_ABOVE: usize = 1024;

    /// Whether `to` may be answered now, recording it if so.
    fn allow(&mut self, now: Instant, to: SocketAddr, gap: Duration) -> bool {
        // At most one sweep per gap: entries expire only that often.
        if self.at.len() > Self::SWEEP_ABOVE
            && self
                .swept
                .is_none_or(|t| now.saturating_duration_since(t) >= gap)
        {
            self.at
                .retain(|_, at| now.saturating_duration_since(*at) < gap);
            self.swept = Some(now);
        }
        match self.at.get(&to) {
            Some(at) if now.saturating_duration_since(*at) < gap => false,
            _ => {
                self.at.insert(to, now);
                true
            }
        }
    }
}

/// One node's membership state machine.
pub(crate) struct Core {
    config: Config,
    foca: Foca<GossipId, HintCodec, StdRng, NoCustomBroadcast>,
    decoded: Arc<Mutex<Vec<Hint>>>,
    keyring: Keyring,
    rng: StdRng,
    table: Table,
    timers: BinaryHeap<Queued>,
    seq: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<MembershipEvent>,
    metrics: Metrics,
    health: u32,
    probing: Option<(GossipId, u8)>,
    swim_inc: u16,
    join: Option<Join>,
    /// The seeds of the last `join`, for joining again when every member is gone.
    seeds: Vec<SocketAddr>,
    left: bool,
    /// `(members, health)` the foca config was last computed for.
    sized_for: (usize, u32),
    last_warn: HashMap<DropReason, Instant>,
    scratch: Vec<MembershipEvent>,
    /// Join requests answered, by reply address.
    joins_answered: Answered,
    /// Sync requests answered, by reply address.
    syncs_answered: Answered,
    /// The seed asked for its member list after joining, until a list arrives.
    list_from: Option<(nodosum_proto::NodeId, SocketAddr)>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("identity", self.foca.identity())
            .field("members", &self.table.num_active())
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A node that is `member`, not yet in any cluster.
    pub(crate) fn new(
        config: Config,
        member: Member,
        keyring: Keyring,
        seed: u64,
        now: Instant,
        metrics: Metrics,
    ) -> Result<Self, Error> {
        config.validate()?;
        let id = GossipId::new(member);
        check_identity_size(&id, &config)?;
        let decoded = Arc::new(Mutex::new(Vec::new()));
        let mut rng = StdRng::seed_from_u64(seed);
        let foca_rng = StdRng::from_rng(&mut rng);
        let foca = Foca::new(
            id,
            config.foca_config(1),
            foca_rng,
            HintCodec(decoded.clone()),
        );
        let mut core = Self {
            foca,
            decoded,
            keyring,
            rng,
            table: Table::default(),
            timers: BinaryHeap::new(),
            seq: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            metrics,
            health: 0,
            probing: None,
            swim_inc: 0,
            join: None,
            seeds: Vec::new(),
            left: false,
            sized_for: (1, 0),
            last_warn: HashMap::new(),
            scratch: Vec::new(),
            joins_answered: Answered::default(),
            syncs_answered: Answered::default(),
            list_from: None,
            config,
        };
        let every = core.config.probe_interval * RECONCILE_EVERY;
        core.schedule(now + every, CoreTimer::Maintenance);
        let sync = core.config.sync_interval;
        core.schedule(now + sync, CoreTimer::Sync);
        core.update_gauges();
        Ok(core)
    }

    /// This node's current identity.
    pub(crate) fn local_member(&self) -> &Member {
        self.foca.identity().member()
    }

    /// Starts joining through `seeds`, retrying with backoff until one answers; they are
    /// also asked again whenever every member is gone.
    pub(crate) fn join(&mut self, now: Instant, seeds: Vec<SocketAddr>) {
        self.seeds.clone_from(&seeds);
        self.join_through(now, seeds);
    }

    fn join_through(&mut self, now: Instant, seeds: Vec<SocketAddr>) {
        if self.left {
            return;
        }
        let own = self.local_member().gossip_addr;
        let seeds: Vec<_> = seeds.into_iter().filter(|s| *s != own).collect();
        if seeds.is_empty() {
            return;
        }
        let restart = self.join.is_none();
        self.join = Some(Join {
            seeds,
            delay: self.config.join_retry_initial,
        });
        if restart {
            self.try_join(now);
        }
    }

    fn try_join(&mut self, now: Instant) {
        let Some(join) = &mut self.join else { return };
        let seeds = join.seeds.clone();
        let delay = join.delay;
        join.delay = (join.delay * 2).min(self.config.join_retry_max);
        let reply_to = postcard::to_allocvec(&self.local_member().gossip_addr)
            .expect("invariant: a socket address always encodes");
        for s in seeds {
            self.send_sealed(s, KIND_JOIN_REQUEST, &reply_to);
        }
        // Jitter keeps nodes started together from retrying in lockstep.
        let jitter = rand::RngExt::random_range(&mut self.rng, 0..=delay.as_millis() / 4);
        let jitter = Duration::from_millis(u64::try_from(jitter).unwrap_or(0));
        self.schedule(now + delay + jitter, CoreTimer::Join);
    }

    /// Leaves the cluster: announces the departure so that others mark this node left at
    /// once. Afterwards nothing is processed; flush the transmits and stop.
    pub(crate) fn leave(&mut self, now: Instant) {
        if self.left {
            return;
        }
        self.left = true;
        self.join = None;
        let leaving = self.foca.identity().leaving();
        let mut out = Outbox::default();
        if let Err(e) = self.foca.change_identity(leaving, &mut out) {
            tracing::debug!(error = %e, "marking identity as leaving failed");
        }
        if let Err(e) = self.foca.leave_cluster(&mut out) {
            tracing::debug!(error = %e, "leave announcement failed");
        }
        // A second round to other random members: a leave should not hinge on three
        // datagrams.
        if let Err(e) = self.foca.gossip(&mut out) {
            tracing::debug!(error = %e, "leave gossip failed");
        }
        self.absorb(now, out, Source::Local);
        self.timers.clear();
    }

    /// Whether [`leave`](Self::leave) was called.
    pub(crate) fn has_left(&self) -> bool {
        self.left
    }

    /// Replaces this node's metadata; others see an `Updated` event.
    pub(crate) fn update_metadata(
        &mut self,
        now: Instant,
        metadata: Metadata,
    ) -> Result<(), Error> {
        if self.left {
            return Err(Error::Left);
        }
        let mut m = self.local_member().clone();
        m.metadata = metadata;
        let next = self.foca.identity().successor(m);
        check_identity_size(&next, &self.config)?;
        let mut out = Outbox::default();
        if let Err(e) = self.foca.change_identity(next, &mut out) {
            tracing::debug!(error = %e, "changing identity failed");
        }
        self.absorb(now, out, Source::Local);
        Ok(())
    }

    /// Adds a key that opens datagrams.
    pub(crate) fn install_key(&mut self, key: Key) -> KeyId {
        self.keyring.install(key)
    }

    /// Makes an installed key the one that seals.
    pub(crate) fn use_key(&mut self, id: KeyId) -> Result<(), KeyringError> {
        self.keyring.use_key(id)
    }

    /// Removes a key that is not the primary.
    pub(crate) fn remove_key(&mut self, id: KeyId) -> Result<(), KeyringError> {
        self.keyring.remove(id)
    }

    /// Replaces every installed key at once.
    pub(crate) fn set_keyring(&mut self, keyring: Keyring) {
        self.keyring = keyring;
    }

    /// IDs of the installed keys and the primary.
    pub(crate) fn keys(&self) -> (Vec<KeyId>, KeyId) {
        (self.keyring.key_ids().collect(), self.keyring.primary())
    }

    /// Handles a datagram received from `from`.
    pub(crate) fn handle_datagram(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.metrics.datagrams_in.inc();
        self.metrics.bytes_in.inc_by(datagram.len() as u64);
        if self.left {
            return;
        }
        if datagram.len() > self.config.max_datagram_size {
            return self.dropped(
                now,
                from,
                DropReason::TooLarge,
                "datagram exceeds the limit",
            );
        }
        let plain = match self.keyring.open(&self.config.cluster_name, datagram) {
            Ok(p) => p,
            Err(e) => {
                let reason = DropReason::of(&e);
                return self.dropped(now, from, reason, &e.to_string());
            }
        };
        let Some((&kind, body)) = plain.split_first() else {
            return self.dropped(now, from, DropReason::Malformed, "empty payload");
        };
        match kind {
            KIND_FOCA => self.handle_foca(now, from, body),
            KIND_JOIN_REQUEST => {
                let Ok(to) = postcard::from_bytes::<SocketAddr>(body) else {
                    return self.dropped(now, from, DropReason::Malformed, "bad join request");
                };
                if !self
                    .joins_answered
                    .allow(now, to, self.config.join_retry_initial / 2)
                {
                    let what = "join request for an address answered moments ago";
                    return self.dropped(now, from, DropReason::RateLimited, what);
                }
                let me = match postcard::to_allocvec(self.foca.identity()) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot encode own identity");
                        return;
                    }
                };
                self.send_sealed(to, KIND_JOIN_REPLY, &me);
            }
            KIND_JOIN_REPLY => {
                let Ok(id) = postcard::from_bytes::<GossipId>(body) else {
                    return self.dropped(now, from, DropReason::Malformed, "bad join reply");
                };
                if self.join.is_none() || id.id() == self.foca.identity().id() {
                    return;
                }
                let (seed_id, seed) = (id.id().clone(), id.member().gossip_addr);
                let mut out = Outbox::default();
                if let Err(e) = self.foca.announce(id, &mut out) {
                    tracing::debug!(error = %e, "announce failed");
                }
                self.absorb(now, out, Source::Local);
                // The announce's reply holds a few dozen members; the full list comes
                // from a sync. Asked again with the next sync if none has arrived by then
                // (the request may have overtaken the announce and been refused).
                self.ask_for_list(seed_id.as_str(), seed);
                self.list_from = Some((seed_id, seed));
            }
            KIND_SYNC_REQUEST => self.handle_sync_request(now, from, body),
            KIND_SYNC_STATE => self.handle_state(now, from, body),
            _ => self.dropped(now, from, DropReason::Malformed, "unknown payload kind"),
        }
    }

    fn handle_foca(&mut self, now: Instant, from: SocketAddr, body: &[u8]) {
        self.decoded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let me = self.foca.identity().clone();
        let mut out = Outbox::default();
        let res = self.foca.handle_data(body, &mut out);
        let applied = match &res {
            Ok(()) => true,
            // These are raised after the updates were applied.
            Err(foca::Error::IndirectForOurselves | foca::Error::CustomBroadcast(_)) => true,
            Err(_) => false,
        };
        if let Err(e) = res {
            match e {
                foca::Error::Decode(_) | foca::Error::MalformedPacket | foca::Error::DataTooBig => {
                    self.dropped(now, from, DropReason::Malformed, &e.to_string());
                }
                foca::Error::DataFromOurselves => {
                    self.dropped(now, from, DropReason::Refused, &e.to_string());
                }
                _ => tracing::debug!(%from, error = %e, "datagram not fully handled"),
            }
        }
        let decoded =
            std::mem::take(&mut *self.decoded.lock().unwrap_or_else(PoisonError::into_inner));
        let source = if applied {
            Source::Datagram(&me, &decoded)
        } else {
            Source::Local
        };
        self.absorb(now, out, source);
    }

    fn send_state(&mut self, to: SocketAddr) {
        let me = foca::Member::new(self.foca.identity().clone(), self.swim_inc, State::Alive);
        let max = self.config.max_payload() - 3;
        let mut chunk: Vec<u8> = Vec::new();
        let mut count: u16 = 0;
        let mut chunks = Vec::new();
        for m in std::iter::once(&me).chain(self.foca.iter_membership_state()) {
            let Ok(bytes) = postcard::to_allocvec(m) else {
                continue;
            };
            if bytes.len() > max {
                continue;
            }
            if chunk.len() + bytes.len() > max || count == u16::MAX {
                chunks.push((count, std::mem::take(&mut chunk)));
                count = 0;
            }
            chunk.extend_from_slice(&bytes);
            count += 1;
        }
        if count > 0 {
            chunks.push((count, chunk));
        }
        for (count, members) in chunks {
            let mut body = Vec::with_capacity(members.len() + 2);
            body.extend_from_slice(&count.to_be_bytes());
            body.extend_from_slice(&members);
            self.send_sealed(to, KIND_SYNC_STATE, &body);
        }
    }

    fn handle_state(&mut self, now: Instant, from: SocketAddr, body: &[u8]) {
        let Some((count, mut rest)) = body
            .split_first_chunk::<2>()
            .map(|(c, r)| (u16::from_be_bytes(*c), r))
        else {
            return self.dropped(now, from, DropReason::Malformed, "short member list");
        };
        let mut members = Vec::new();
        for _ in 0..count {
            match postcard::take_from_bytes::<foca::Member<GossipId>>(rest) {
                Ok((m, r)) => {
                    members.push(m);
                    rest = r;
                }
                Err(_) => {
                    return self.dropped(now, from, DropReason::Malformed, "bad member list");
                }
            }
        }
        if !rest.is_empty() {
            return self.dropped(
                now,
                from,
                DropReason::Malformed,
                "trailing bytes in member list",
            );
        }
        let own = self.foca.identity().id().clone();
        // Skip what this node already knows: foca looks each member up linearly, and
        // a periodic sync mostly repeats known state.
        members.retain(|m| {
            *m.id().id() == own || !self.table.knows(m.id(), m.incarnation(), m.state())
        });
        let hints: Vec<Hint> = members
            .iter()
            .map(|m| (m.id().clone(), m.incarnation(), m.state()))
            .collect();
        let mut out = Outbox::default();
        // Not re-broadcast: this is knowledge the cluster already has.
        if let Err(e) = self.foca.apply_many(members.into_iter(), false, &mut out) {
            tracing::debug!(error = %e, "applying a member list failed");
        }
        self.list_from = None;
        self.absorb(now, out, Source::Sync(&hints));
    }

    fn sync_with_random_member(&mut self) {
        let n = self.table.num_active();
        if n == 0 {
            return;
        }
        let pick = rand::RngExt::random_range(&mut self.rng, 0..n);
        let target = self
            .table
            .members()
            .filter(|(_, s)| s.is_active())
            .nth(pick)
            .map(|(m, _)| (m.id.clone(), m.gossip_addr));
        if let Some((id, addr)) = target {
            self.ask_for_list(id.as_str(), addr);
        }
    }

    /// Sends a sync request to the member `answerer` at `addr`.
    fn ask_for_list(&mut self, answerer: &str, addr: SocketAddr) {
        let request = SyncRequest {
            asker: self.foca.identity().id().as_str(),
            answerer,
        };
        let body = postcard::to_allocvec(&request).expect("invariant: two strings always encode");
        self.send_sealed(addr, KIND_SYNC_REQUEST, &body);
    }

    /// Answers a sync request with the member list, if it is meant for this node and
    /// comes from a member (alive, suspect or failed; not one that left) not answered
    /// moments ago (see [`KIND_SYNC_REQUEST`]).
    fn handle_sync_request(&mut self, now: Instant, from: SocketAddr, body: &[u8]) {
        let Ok(request) = postcard::from_bytes::<SyncRequest<'_>>(body) else {
            return self.dropped(now, from, DropReason::Malformed, "bad sync request");
        };
        if request.answerer != self.foca.identity().id().as_str() {
            let what = "sync request meant for another node";
            return self.dropped(now, from, DropReason::Refused, what);
        }
        // A failed member is answered too: a node cut off by a partition learns from the
        // list that it was declared failed, and renews its identity to come back.
        let asker = nodosum_proto::NodeId::new(request.asker).ok();
        let to = asker
            .as_ref()
            .filter(|id| self.table.state(id).is_some_and(|s| s != MemberState::Left))
            .and_then(|id| self.table.identity(id))
            .map(|id| id.member().gossip_addr);
        let Some(to) = to else {
            let what = "sync request from a node that is not a member";
            return self.dropped(now, from, DropReason::NotMember, what);
        };
        if !self
            .syncs_answered
            .allow(now, to, self.config.probe_interval / 2)
        {
            let what = "sync request for a member answered moments ago";
            return self.dropped(now, from, DropReason::RateLimited, what);
        }
        self.send_state(to);
    }

    /// The earliest moment [`handle_timeout`](Self::handle_timeout) has work.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|q| q.at)
    }

    /// Fires every timer due at `now`.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        while self.timers.peek().is_some_and(|q| q.at <= now) {
            let Some(q) = self.timers.pop() else { break };
            match q.timer {
                CoreTimer::Foca(t) => {
                    let removed = match &t {
                        Timer::RemoveDown(id) => Some(id.clone()),
                        _ => None,
                    };
                    let mut out = Outbox::default();
                    if let Err(e) = self.foca.handle_timer(t, &mut out) {
                        tracing::debug!(error = %e, "timer handling failed");
                    }
                    if let Some(id) = removed {
                        self.table.remove_inactive(&id);
                    }
                    self.absorb(now, out, Source::Local);
                }
                CoreTimer::Join => {
                    if self.foca.num_members() == 0 {
                        self.try_join(now);
                    } else {
                        self.join = None;
                    }
                }
                CoreTimer::SyncOnce => {
                    if let Some((id, addr)) = self.list_from.take() {
                        self.ask_for_list(id.as_str(), addr);
                    }
                    self.sync_with_random_member();
                }
                CoreTimer::Sync => {
                    self.sync_with_random_member();
                    let every = self.config.sync_interval;
                    self.schedule(now + every, CoreTimer::Sync);
                }
                CoreTimer::Maintenance => {
                    self.reconcile();
                    self.flush_events();
                    let every = self.config.probe_interval * RECONCILE_EVERY;
                    self.schedule(now + every, CoreTimer::Maintenance);
                }
            }
        }
    }

    /// Next datagram to send.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next membership event.
    pub(crate) fn poll_event(&mut self) -> Option<MembershipEvent> {
        self.events.pop_front()
    }

    /// Every other member this node knows, with its state.
    pub(crate) fn members(&self) -> Vec<(Member, MemberState)> {
        self.table.members().map(|(m, s)| (m.clone(), s)).collect()
    }

    /// State of one member.
    #[cfg(test)]
    pub(crate) fn member_state(&self, id: &nodosum_proto::NodeId) -> Option<MemberState> {
        self.table.state(id)
    }

    /// Alive and suspect members, this node included.
    pub(crate) fn num_members(&self) -> usize {
        self.table.num_active() + 1
    }

    /// Alive members, this node excluded.
    #[cfg(test)]
    pub(crate) fn num_alive(&self) -> usize {
        self.table.count(MemberState::Alive)
    }

    /// The local health score: 0 is healthy.
    pub(crate) fn health_score(&self) -> u32 {
        self.health
    }

    /// This node's metrics.
    #[cfg(test)]
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Compares the member table with foca's state and fixes any difference, returning the
    /// number of corrections (zero while the table follows foca exactly).
    pub(crate) fn reconcile(&mut self) -> usize {
        let me = self.foca.identity().id().clone();
        let state: Vec<(GossipId, u16, State)> = self
            .foca
            .iter_membership_state()
            .filter(|m| *m.id().id() != me)
            .map(|m| (m.id().clone(), m.incarnation(), m.state()))
            .collect();
        let mut ev = std::mem::take(&mut self.scratch);
        let n = self.table.reconcile(&state, &mut ev);
        if n > 0 {
            tracing::debug!(
                corrections = n,
                "member view reconciled with protocol state"
            );
            self.metrics.view_corrections.inc_by(n as u64);
        }
        self.emit(ev);
        n
    }

    fn schedule(&mut self, at: Instant, timer: CoreTimer) {
        self.seq += 1;
        self.timers.push(Queued {
            at,
            seq: self.seq,
            timer,
        });
    }

    fn send_sealed(&mut self, dst: SocketAddr, kind: u8, body: &[u8]) {
        let mut plain = Vec::with_capacity(body.len() + 1);
        plain.push(kind);
        plain.extend_from_slice(body);
        let bytes = self
            .keyring
            .seal(&self.config.cluster_name, &plain, &mut self.rng);
        self.metrics.datagrams_out.inc();
        self.metrics.bytes_out.inc_by(bytes.len() as u64);
        self.transmits.push_back(Transmit { dst, bytes });
    }

    fn dropped(&mut self, now: Instant, from: SocketAddr, reason: DropReason, what: &str) {
        self.metrics
            .dropped
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
        // A rate-limited request is mostly a retry that crossed its answer, and a
        // non-member's sync request one that overtook its announce: counted, but not worth
        // a warning.
        let warn = !matches!(reason, DropReason::RateLimited | DropReason::NotMember)
            && self
                .last_warn
                .get(&reason)
                .is_none_or(|t| now.saturating_duration_since(*t) >= self.config.drop_log_interval);
        if warn {
            self.last_warn.insert(reason, now);
            tracing::warn!(%from, reason = reason.as_str(), detail = what, "dropped gossip datagram (further drops for this reason are logged at debug for a while)");
        } else {
            tracing::debug!(%from, reason = reason.as_str(), detail = what, "dropped gossip datagram");
        }
    }

    /// Turns what foca produced into transmits, timers, table changes and events.
    /// `data` is set for a handled datagram whose updates foca applied: the identity we
    /// had before and the member updates it decoded.
    fn absorb(&mut self, now: Instant, out: Outbox, source: Source<'_>) {
        let Outbox {
            sends,
            timers,
            notes,
        } = out;
        let mut ev = std::mem::take(&mut self.scratch);
        let mut header: Option<Header<GossipId>> = None;
        let mut local_suspects: Vec<Hint> = Vec::new();

        for (delay, timer) in timers {
            let delay = match &timer {
                // Lifeguard local health: a node whose own probes time out slows its
                // probing and waits longer for acks.
                Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } => {
                    delay * (self.health + 1)
                }
                Timer::ChangeSuspectToDown {
                    member_id,
                    incarnation,
                    ..
                } => {
                    local_suspects.push((member_id.clone(), *incarnation, State::Suspect));
                    delay
                }
                _ => delay,
            };
            self.schedule(now + delay, CoreTimer::Foca(timer));
        }

        let hint_of = |id: &GossipId, hints: &[Hint]| {
            hints
                .iter()
                .rev()
                .find(|(h, _, _)| h == id)
                .map(|(_, inc, st)| (*inc, *st))
        };
        let decoded: &[Hint] = match source {
            Source::Local => &[],
            Source::Datagram(_, d) | Source::Sync(d) => d,
        };
        for note in notes {
            match note {
                OwnedNotification::MemberUp(id) => {
                    let (inc, st) = hint_of(&id, decoded)
                        .or_else(|| {
                            header
                                .as_ref()
                                .filter(|h| h.src == id)
                                .map(|h| (h.src_incarnation, State::Alive))
                        })
                        .unwrap_or((0, State::Alive));
                    let st = if st == State::Down { State::Alive } else { st };
                    self.table
                        .set(&id, Some(inc), crate::table::state_of(&id, st), &mut ev);
                }
                OwnedNotification::MemberDown(id) => {
                    let st = crate::table::state_of(&id, State::Down);
                    self.table.set(&id, None, st, &mut ev);
                }
                OwnedNotification::Rename(_, new) => {
                    if let Some(prev) = self.table.state(new.id())
                        && prev.is_active()
                    {
                        let (inc, st) = hint_of(&new, decoded)
                            .or_else(|| {
                                header
                                    .as_ref()
                                    .filter(|h| h.src == new)
                                    .map(|h| (h.src_incarnation, State::Alive))
                            })
                            .unwrap_or((0, State::Alive));
                        if st != State::Down {
                            self.table.set(
                                &new,
                                Some(inc),
                                crate::table::state_of(&new, st),
                                &mut ev,
                            );
                        }
                    }
                }
                OwnedNotification::Active => {
                    tracing::debug!("connected to the cluster");
                    if self.join.take().is_some() {
                        // The seed's list predates members joining at the same moment,
                        // whose announcements may have finished spreading before anyone
                        // knew this node: ask a random member again shortly.
                        let at = now + self.config.probe_interval * 2;
                        self.schedule(at, CoreTimer::SyncOnce);
                    }
                }
                OwnedNotification::Idle => {
                    // foca sends nothing while it knows no active member: a node cut off
                    // from every other until it declared them all failed would never merge
                    // again. It joins again through them and its seeds until one answers
                    // (members that left are not asked).
                    let mut again: Vec<SocketAddr> = self
                        .table
                        .members()
                        .filter(|(_, state)| *state == MemberState::Failed)
                        .map(|(m, _)| m.gossip_addr)
                        .chain(self.seeds.iter().copied())
                        .collect();
                    again.sort_unstable();
                    again.dedup();
                    if again.is_empty() {
                        tracing::debug!("no active members left");
                    } else {
                        tracing::info!(
                            addresses = again.len(),
                            "no active members left; joining again through failed members and seeds"
                        );
                        self.join_through(now, again);
                    }
                }
                OwnedNotification::Defunct => {
                    if !self.left {
                        tracing::warn!("this node was declared down and cannot rejoin");
                    }
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::info!(identity = ?id, "declared down by the cluster; rejoined with a renewed identity");
                }
                OwnedNotification::DataReceived(h) => header = Some(h),
                OwnedNotification::DataSent(h) => self.on_sent(&h),
                OwnedNotification::ProbeFailed(_, id) => {
                    self.metrics.probes_failed.inc();
                    self.probing = None;
                    self.health = (self.health + 1).min(self.config.max_health_score);
                    tracing::debug!(member = ?id, health = self.health, "probe failed");
                }
            }
        }

        if let Some(h) = &header {
            self.on_received(h);
        }
        if let Source::Sync(decoded) = source {
            let own = self.foca.identity().id().clone();
            for (id, inc, st) in decoded {
                if *id.id() != own {
                    self.table.hint(id, *inc, *st, &mut ev);
                }
            }
        }
        if let (Source::Datagram(me, decoded), Some(h)) = (source, &header) {
            let accepted =
                h.dst == *me || (h.message == Message::Announce && h.dst.id() == me.id());
            if accepted {
                self.table
                    .hint(&h.src, h.src_incarnation, State::Alive, &mut ev);
                let sender_active = self.table.identity(h.src.id()) == Some(&h.src)
                    && self
                        .table
                        .state(h.src.id())
                        .is_some_and(MemberState::is_active);
                if sender_active {
                    let own = self.foca.identity().id().clone();
                    for (id, inc, st) in decoded {
                        if *id.id() != own {
                            self.table.hint(id, *inc, *st, &mut ev);
                        }
                    }
                }
            }
        }
        for (id, inc, st) in &local_suspects {
            self.table.hint(id, *inc, *st, &mut ev);
        }

        for (dst, bytes) in sends {
            let addr = dst.member().gossip_addr;
            let mut plain = Vec::with_capacity(bytes.len() + 1);
            plain.push(KIND_FOCA);
            plain.extend_from_slice(&bytes);
            let sealed = self
                .keyring
                .seal(&self.config.cluster_name, &plain, &mut self.rng);
            self.metrics.datagrams_out.inc();
            self.metrics.bytes_out.inc_by(sealed.len() as u64);
            self.transmits.push_back(Transmit {
                dst: addr,
                bytes: sealed,
            });
        }

        self.emit(ev);
        self.resize();
    }

    fn on_sent(&mut self, h: &Header<GossipId>) {
        if let Message::Ping(n) = h.message {
            self.metrics.probes_sent.inc();
            self.probing = Some((h.dst.clone(), n));
        }
        if h.src_incarnation > self.swim_inc {
            // foca bumps its incarnation only to refute a suspicion about us. Lifeguard
            // counts that against our own health: others could not reach us in time.
            self.metrics.self_refutations.inc();
            self.health = (self.health + 1).min(self.config.max_health_score);
        }
        self.swim_inc = h.src_incarnation;
    }

    fn on_received(&mut self, h: &Header<GossipId>) {
        let Some((target, n)) = &self.probing else {
            return;
        };
        let success = match &h.message {
            Message::Ack(k) => h.src == *target && k == n,
            Message::ForwardedAck {
                origin,
                probe_number,
            } => origin == target && probe_number == n,
            _ => false,
        };
        if success {
            self.probing = None;
            self.health = self.health.saturating_sub(1);
        }
    }

    fn emit(&mut self, mut ev: Vec<MembershipEvent>) {
        for e in ev.drain(..) {
            match &e {
                MembershipEvent::Suspect(m) => {
                    self.metrics.suspicions.inc();
                    tracing::info!(member = %m.id, "member suspected");
                }
                MembershipEvent::Alive(m) => {
                    self.metrics.refutations.inc();
                    tracing::info!(member = %m.id, "member refuted suspicion");
                }
                MembershipEvent::Joined(m) => {
                    tracing::info!(member = %m.id, addr = %m.gossip_addr, "member joined");
                }
                MembershipEvent::Updated(m) => {
                    tracing::debug!(member = %m.id, incarnation = m.incarnation, "member updated");
                }
                MembershipEvent::Failed(m) => tracing::info!(member = %m.id, "member failed"),
                MembershipEvent::Left(m) => tracing::info!(member = %m.id, "member left"),
            }
            self.events.push_back(e);
        }
        self.scratch = ev;
        self.update_gauges();
    }

    fn flush_events(&mut self) {
        self.update_gauges();
    }

    fn update_gauges(&self) {
        for s in [
            MemberState::Alive,
            MemberState::Suspect,
            MemberState::Failed,
            MemberState::Left,
        ] {
            self.metrics.set_members(s, self.table.count(s));
        }
        self.metrics.health_score.set(i64::from(self.health));
    }

    /// Scales suspicion timeout and retransmissions with the cluster size, as memberlist
    /// does, and stretches the suspicion timeout by the local health multiplier: a node
    /// that cannot get its own probes answered in time also gives the members it
    /// suspects longer to refute.
    fn resize(&mut self) {
        let key = (self.num_members(), self.health);
        if key == self.sized_for {
            return;
        }
        self.sized_for = key;
        let mut next = self.config.foca_config(key.0);
        next.suspect_to_down_after *= key.1 + 1;
        if let Err(e) = self.foca.set_config(next) {
            tracing::debug!(error = %e, "resizing protocol config failed");
        }
    }
}

fn check_identity_size(id: &GossipId, config: &Config) -> Result<(), Error> {
    let len = postcard::to_allocvec(id).map_or(usize::MAX, |v| v.len());
    // A header holds two identities (sender and target) plus a few bytes, and leaves
    // room for updates.
    let max = config.max_payload().saturating_sub(64) / 3;
    if len > max {
        return Err(Error::IdentityTooLarge { len, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nodosum_proto::NodeId;

    use super::*;

    fn core(name: &str, port: u16, key: u8, cluster: &str) -> Core {
        let mut c = Config::local(NodeId::new(name).unwrap());
        c.cluster_name = cluster.to_owned();
        let m = Member::new(
            NodeId::new(name).unwrap(),
            SocketAddr::from(([127, 0, 0, 1], port)),
            1,
        );
        Core::new(
            c,
            m,
            Keyring::new(Key::from_bytes([key; 32])),
            u64::from(port),
            Instant::now(),
            Metrics::default(),
        )
        .unwrap()
    }

    fn pump(now: Instant, nodes: &mut [&mut Core]) {
        for _ in 0..20 {
            let mut moved = false;
            for i in 0..nodes.len() {
                while let Some(t) = nodes[i].poll_transmit() {
                    moved = true;
                    let from = nodes[i].local_member().gossip_addr;
                    for n in nodes.iter_mut() {
                        if n.local_member().gossip_addr == t.dst {
                            n.handle_datagram(now, from, &t.bytes);
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    #[test]
    fn join_handshake_then_foreign_datagrams_are_dropped_without_effect() {
        let now = Instant::now();
        let mut a = core("a", 1, 1, "c");
        let mut b = core("b", 2, 1, "c");
        let mut evil = core("evil", 3, 2, "c");
        let mut other = core("other", 4, 1, "other-cluster");
        b.join(now, vec![a.local_member().gossip_addr]);
        evil.join(now, vec![a.local_member().gossip_addr]);
        other.join(now, vec![a.local_member().gossip_addr]);
        pump(now, &mut [&mut a, &mut b, &mut evil, &mut other]);
        assert_eq!(a.num_members(), 2);
        assert_eq!(b.num_members(), 2);
        assert!(matches!(a.poll_event(), Some(MembershipEvent::Joined(m)) if m.id.as_str() == "b"));
        assert_eq!(a.metrics().drop_count("unknown_key"), 1);
        assert_eq!(a.metrics().drop_count("unauthentic"), 1);
        a.handle_datagram(now, "127.0.0.1:9".parse().unwrap(), b"garbage");
        a.handle_datagram(now, "127.0.0.1:9".parse().unwrap(), &[0; 5000]);
        assert_eq!(a.metrics().drop_count("too_short"), 1);
        assert_eq!(a.metrics().drop_count("too_large"), 1);
        assert_eq!(a.num_members(), 2);
        assert_eq!(a.reconcile(), 0);
    }

    /// The payload kind of `t`, opened with `c`'s keys.
    fn kind_of(c: &Core, t: &Transmit) -> u8 {
        c.keyring
            .open(&c.config.cluster_name, &t.bytes)
            .expect("opens")[0]
    }

    fn drain(c: &mut Core) -> Vec<Transmit> {
        std::iter::from_fn(|| c.poll_transmit()).collect()
    }

    #[test]
    fn a_join_is_answered_at_sealed_and_advertised_addresses_only() {
        let now = Instant::now();
        let mut a = core("a", 1, 1, "c");
        let mut b = core("b", 2, 1, "c");
        let (a_addr, b_addr) = (a.local_member().gossip_addr, b.local_member().gossip_addr);
        let forged: SocketAddr = "127.0.0.1:9".parse().unwrap();
        // Every datagram arrives from a forged source: answers go where the sealed
        // contents and the identities say, never back to the source.
        b.join(now, vec![a_addr]);
        let ask = b.poll_transmit().expect("b asks a who it is");
        a.handle_datagram(now, forged, &ask.bytes);
        let reply = drain(&mut a);
        assert_eq!(reply.len(), 1);
        assert_eq!(reply[0].dst, b_addr);
        // Again at once: a retry that crossed the answer, or a replay; counted, not answered.
        a.handle_datagram(now, forged, &ask.bytes);
        assert!(drain(&mut a).is_empty());
        assert_eq!(a.metrics().drop_count("rate_limited"), 1);
        // b announces itself and asks for the member list, both at a's advertised address;
        // a knows b from the announce by the time the request arrives, and answers it.
        b.handle_datagram(now, forged, &reply[0].bytes);
        let out = drain(&mut b);
        assert!(out.len() >= 2, "{out:?}");
        assert!(out.iter().all(|t| t.dst == a_addr), "{out:?}");
        let (list_request, announce) = out.split_last().unwrap();
        for t in announce {
            a.handle_datagram(now, forged, &t.bytes);
        }
        drain(&mut a);
        a.handle_datagram(now, forged, &list_request.bytes);
        let list = drain(&mut a);
        assert!(
            !list.is_empty() && list.iter().all(|t| t.dst == b_addr),
            "{list:?}"
        );
        assert_eq!(a.num_members(), 2);
    }

    #[test]
    fn a_list_request_that_overtakes_its_announce_is_asked_again() {
        let now = Instant::now();
        let mut a = core("a", 1, 1, "c");
        let mut b = core("b", 2, 1, "c");
        let (a_addr, b_addr) = (a.local_member().gossip_addr, b.local_member().gossip_addr);
        b.join(now, vec![a_addr]);
        let ask = b.poll_transmit().expect("b asks a who it is");
        a.handle_datagram(now, b_addr, &ask.bytes);
        let reply = a.poll_transmit().expect("a answers");
        b.handle_datagram(now, a_addr, &reply.bytes);
        let out = drain(&mut b);
        let (list_request, announce) = out.split_last().unwrap();
        // The list request arrives first: b is no member of a's yet.
        a.handle_datagram(now, b_addr, &list_request.bytes);
        assert!(drain(&mut a).is_empty());
        assert_eq!(a.metrics().drop_count("not_member"), 1);
        // Then the announce, and a's answer to it: b is in.
        for t in announce {
            a.handle_datagram(now, b_addr, &t.bytes);
        }
        for t in drain(&mut a) {
            b.handle_datagram(now, a_addr, &t.bytes);
        }
        assert_eq!(a.num_members(), 2);
        assert!(!a.syncs_answered.at.contains_key(&b_addr));
        // b's follow-up sync asks the seed again besides a random member (here a too),
        // and this time gets the list.
        let later = now + b.config.probe_interval * 3;
        b.handle_timeout(later);
        let out = drain(&mut b);
        let asked = out
            .iter()
            .filter(|t| t.dst == a_addr && kind_of(&a, t) == KIND_SYNC_REQUEST)
            .count();
        assert_eq!(asked, 2);
        for t in out {
            a.handle_datagram(later, b_addr, &t.bytes);
        }
        assert!(a.syncs_answered.at.contains_key(&b_addr));
        assert!(drain(&mut a).iter().any(|t| t.dst == b_addr));
    }

    #[test]
    fn a_replayed_sync_request_reaches_only_its_member_and_not_too_often() {
        let now = Instant::now();
        let mut a = core("a", 1, 1, "c");
        let mut b = core("b", 2, 1, "c");
        let mut c = core("c", 3, 1, "c");
        b.join(now, vec![a.local_member().gossip_addr]);
        c.join(now, vec![a.local_member().gossip_addr]);
        pump(now, &mut [&mut a, &mut b, &mut c]);
        assert_eq!(a.num_members(), 3);
        let b_addr = b.local_member().gossip_addr;
        let forged: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let gap = a.config.probe_interval / 2;
        let later = now + a.config.probe_interval;

        // A sync request of b's meant for a, captured and sent again from a forged source.
        b.ask_for_list("a", a.local_member().gossip_addr);
        let request = b.poll_transmit().expect("b asks a for its list");
        a.handle_datagram(later, forged, &request.bytes);
        let answers = drain(&mut a);
        assert!(!answers.is_empty(), "the list is sent");
        assert!(answers.iter().all(|t| t.dst == b_addr), "{answers:?}");
        // Again within the gap: nothing at all, and the drop is counted.
        a.handle_datagram(later, forged, &request.bytes);
        a.handle_datagram(later + gap / 2, forged, &request.bytes);
        assert!(drain(&mut a).is_empty());
        assert_eq!(a.metrics().drop_count("rate_limited"), 2);
        // After the gap b may be answered again.
        a.handle_datagram(later + gap, forged, &request.bytes);
        let answers = drain(&mut a);
        assert!(!answers.is_empty() && answers.iter().all(|t| t.dst == b_addr));

        // The same request replayed to another member is not for it.
        c.handle_datagram(later, forged, &request.bytes);
        assert!(drain(&mut c).is_empty());
        assert_eq!(c.metrics().drop_count("refused"), 1);

        // A node that is not a member (same key) gets nothing.
        let mut stranger = core("stranger", 4, 1, "c");
        stranger.ask_for_list("a", a.local_member().gossip_addr);
        let request = stranger.poll_transmit().expect("request");
        a.handle_datagram(later, forged, &request.bytes);
        assert!(drain(&mut a).is_empty());
        assert_eq!(a.metrics().drop_count("not_member"), 1);

        // Requests of the retired kinds (the earlier formats) and bodies that do not
        // decode are malformed.
        for (kind, body) in [
            (1u8, &[][..]),
            (3, &[][..]),
            (KIND_SYNC_REQUEST, &[0xff][..]),
        ] {
            b.send_sealed(a.local_member().gossip_addr, kind, body);
            let t = b.poll_transmit().expect("sealed");
            a.handle_datagram(later, forged, &t.bytes);
        }
        assert!(drain(&mut a).is_empty());
        assert_eq!(a.metrics().drop_count("malformed"), 3);
        assert_eq!(a.num_members(), 3);
    }

    #[test]
    fn oversized_metadata_is_refused() {
        let now = Instant::now();
        let mut c = core("a", 1, 1, "c");
        c.config.max_datagram_size = 600;
        let big = Metadata::new(vec![7; 400]).unwrap();
        assert!(matches!(
            c.update_metadata(now, big),
            Err(Error::IdentityTooLarge { .. })
        ));
    }

    proptest::proptest! {
        /// Garbage, and valid datagrams with any bit flipped, are dropped and counted
        /// without touching membership.
        #[test]
        fn bad_datagrams_never_change_state(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1500),
            flip in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let now = Instant::now();
            let mut a = core("a", 1, 1, "c");
            let mut b = core("b", 2, 1, "c");
            b.join(now, vec![a.local_member().gossip_addr]);
            pump(now, &mut [&mut a, &mut b]);
            while a.poll_event().is_some() {}
            let before = a.members();
            let from: SocketAddr = "127.0.0.1:9".parse().unwrap();
            a.handle_datagram(now, from, &junk);
            // A genuine datagram from b, then one bit flipped.
            b.handle_timeout(now + Duration::from_secs(2));
            let t = b.poll_transmit();
            proptest::prop_assert!(t.is_some(), "b probes a");
            let mut bytes = t.unwrap().bytes;
            let bit = flip.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            a.handle_datagram(now, from, &bytes);
            proptest::prop_assert_eq!(a.members(), before);
            proptest::prop_assert!(a.poll_event().is_none());
            proptest::prop_assert!(a.poll_transmit().is_none());
            let drops: u64 = ["too_large", "too_short", "unsupported_version", "unknown_key", "unauthentic", "malformed"]
                .iter()
                .map(|r| a.metrics().drop_count(r))
                .sum();
            proptest::prop_assert!(drops >= 1);
        }
    }
}
