//! The Socket.IO layer of one worker, as the [`Handler`] the Engine.IO server calls: it decodes
//! each session's packets, routes them to sockets, runs user code, and applies what user code
//! asked for once it has returned.
//!
//! - `sockets`: the slab of this worker's sockets and the clients that own them.
//! - `rooms`: this worker's shard of the room table, and selection.
//! - `acks`: pending acks (bounded per socket) with their deadline heap, and broadcast-ack
//!   collection.
//! - `mail`: what crosses workers: broadcasts, room and disconnect requests, ack reports.
//! - `guard`: runs user code so that a panic never escapes.
//!
//! Every call into user code (connect middleware, the namespace filter, handlers, ack
//! callbacks) goes through `guard`: a panic disconnects only the socket concerned. A socket
//! that user code disconnects is marked as leaving and really disconnected (its disconnect
//! handler run, rooms left, DISCONNECT sent) when the user code that asked returns, never from
//! inside it.
//!
//! Must never: parse bytes itself (it calls `proto::sio`), touch another worker's sockets, let
//! a panic in user code take the worker down, or run user code from inside other user code.

mod acks;
mod connect;
mod guard;
mod mail;
mod retain;
mod rooms;
mod sockets;

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;

pub use mail::{AckOrigin, Broadcast, BroadcastAck, RecoveryMail, Selector, SioMail};
pub use retain::{RecoveryStats, Restored};

pub(crate) use acks::next_handle_broadcast_id;

use super::adapter::Adapter;
use super::handle::{ServerHandle, SocketInfo};
use super::limits::{self, JoinError, SocketLimits};
use super::namespace::{AckCallback, AckTimeout, DisconnectReason, Event, Handshake, Namespaces, PartialResponses};
use super::socket::Socket;
use acks::{Acks, HandleAcks, PendingAck};
use rooms::Rooms;
use sockets::{Client, SocketState, Sockets};

use crate::engine::{sid as ids, Ctx, Handler, OpenInfo, SendFlags, SessionId};
use crate::proto::eio::CloseReason;
use crate::proto::sio::{encode, BinaryAssembler, Decoder, Encoded, Limits, Packet, PacketType};
use crate::rt::timer::Fifo;

/// A map keyed by strings a client chooses (namespace and room names) or sends us to look up
/// (session ids). std's `RandomState` keys SipHash with random keys per map (per thread, then
/// per map), so a client cannot precompute keys that all land in one bucket (HashDoS). Maps
/// keyed by integers this worker chose (slots, ack ids) keep the faster, unkeyed Fx hasher.
pub(crate) type KeyedMap<K, V> = HashMap<K, V, RandomState>;
/// A set of client-chosen strings; see [`KeyedMap`].
pub(crate) type KeyedSet<K> = HashSet<K, RandomState>;

/// What user code asked to happen to a socket once it returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Leave the namespace (`Socket::disconnect`).
    Leave,
    /// Disconnect the whole client (`Socket::disconnect_client`), even if the socket that asked
    /// is gone by then (its handler panicked): its other sockets are already marked leaving.
    CloseClient(SessionId),
    /// A broadcast-ack collection user code started completed at once (no recipient): its
    /// callback runs after that code, not inside it.
    Collected(u64),
}

/// The worker's Socket.IO state; handlers reach it through [`Socket`].
pub struct WorkerCore {
    namespaces: Arc<Namespaces>,
    limits: SocketLimits,
    decoder: Decoder,
    pub(crate) sockets: Sockets,
    rooms: Rooms,
    acks: Acks,
    /// Deadlines of `ServerHandle` broadcasts with ack delivered here.
    pub(crate) handle_acks: HandleAcks,
    /// The handle handlers get from [`Socket::handle`].
    pub(crate) handle: ServerHandle,
    /// Every session gets the same delay: deadlines arrive in order, a FIFO is enough.
    connect_due: Fifo<SessionId>,
    connect_timeout: Duration,
    /// Disconnects user code asked for, done once it returns: (slot, generation, what).
    intents: VecDeque<(u32, u32, Intent)>,
    /// Connections waiting for a deferred middleware's verdict, by token.
    pending: rustc_hash::FxHashMap<u64, connect::PendingConnect>,
    next_token: u64,
    /// Their deadlines (one delay for all: a FIFO). A settled connection's entry stays until
    /// it comes due or is compacted away in `suspend`.
    decision_due: Fifo<u64>,
    /// Bytes of the packets every waiting connection holds, against
    /// `SocketLimits::max_worker_held_bytes`.
    held_bytes: usize,
    stats: AppStats,
    /// Connection state recovery, when on.
    store: Option<retain::Store>,
    /// The other nodes of a cluster; `None` for a single node (the in-process adapter), so a
    /// broadcast then pays one branch and nothing else.
    pub(crate) cluster: Option<Arc<dyn Adapter>>,
    /// Broadcasts emitted here (or published by a handle and counted here), and the sockets
    /// this worker handed one to: plain integers, read when the worker is scraped.
    pub(crate) broadcasts: u64,
    pub(crate) deliveries: u64,
    /// Engine.IO sessions opened and closed (by reason, in [`CLOSE_REASONS`] order) here.
    sessions_opened: u64,
    sessions_closed: [u64; 6],
    /// The admin UI in development mode: told about every socket's life (`admin_ui::tap`).
    pub(crate) admin: Option<Arc<crate::app::admin_ui::Tap>>,
    /// This worker's budget of admin events per second (development mode).
    pub(crate) admin_budget: crate::app::admin_ui::tap::Budget,
}

/// The Engine.IO close reasons, in the order `WorkerCore::sessions_closed` counts them.
const CLOSE_REASONS: [CloseReason; 6] = [
    CloseReason::TransportClose,
    CloseReason::PingTimeout,
    CloseReason::TransportError,
    CloseReason::ForcedClose,
    CloseReason::ParseError,
    CloseReason::ServerShutdown,
];

/// Counters of what this worker's Socket.IO layer refused or cut.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AppStats {
    /// Sessions closed for sending more than the held-packet limits to a namespace whose
    /// deferred middleware had not decided.
    pub held_overflow: u64,
    /// Connections refused because a deferred middleware did not decide in time.
    pub connect_decision_timeouts: u64,
    /// Deferred ack answers that found their socket gone or the ack already answered.
    pub late_acks: u64,
    /// Sockets disconnected for sending events faster than `SocketLimits::max_event_rate`.
    pub event_rate_exceeded: u64,
    /// Sockets disconnected for sending bytes faster than `SocketLimits::max_byte_rate`.
    pub byte_rate_exceeded: u64,
    /// Connection state recovery.
    pub recovery: RecoveryStats,
}

/// The Socket.IO [`Handler`] of one worker.
pub struct SioWorker {
    core: WorkerCore,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl SioWorker {
    /// The Socket.IO layer of one worker, serving `namespaces`, with the default
    /// [`SocketLimits`].
    pub fn new(namespaces: Arc<Namespaces>, limits: Limits) -> SioWorker {
        SioWorker::with_socket_limits(namespaces, limits, SocketLimits::default())
    }

    /// The Socket.IO layer of one worker, with explicit per-socket limits.
    pub fn with_socket_limits(namespaces: Arc<Namespaces>, limits: Limits, socket_limits: SocketLimits) -> SioWorker {
        SioWorker {
            core: WorkerCore {
                namespaces,
                limits: socket_limits,
                decoder: Decoder::new(limits),
                sockets: Sockets::default(),
                rooms: Rooms::default(),
                acks: Acks::new(&socket_limits),
                handle_acks: HandleAcks::default(),
                handle: ServerHandle::detached(),
                connect_due: Fifo::default(),
                connect_timeout: Duration::from_secs(45),
                intents: VecDeque::new(),
                cluster: None,
                pending: Default::default(),
                next_token: 0,
                decision_due: Fifo::default(),
                held_bytes: 0,
                stats: AppStats::default(),
                store: None,
                broadcasts: 0,
                deliveries: 0,
                sessions_opened: 0,
                sessions_closed: [0; 6],
                admin: None,
                admin_budget: Default::default(),
            },
        }
    }

    /// Hands what originates on this worker (broadcasts, server-side room and disconnect
    /// requests) to the other nodes of a cluster as well.
    pub fn with_cluster(mut self, cluster: Option<Arc<dyn Adapter>>) -> SioWorker {
        self.core.cluster = cluster;
        self
    }
    /// With connection state recovery (`Some`), shared by the `workers` workers of a server.
    pub fn with_recovery(mut self, recovery: Option<Arc<super::recovery::Recovery>>, workers: usize) -> SioWorker {
        self.core.store = recovery.map(|r| retain::Store::new(r, workers));
        self
    }

    /// Tells the admin UI's namespace about every socket's life (development mode).
    pub fn with_admin_ui(mut self, tap: Option<Arc<crate::app::admin_ui::Tap>>) -> SioWorker {
        self.core.admin = tap;
        self
    }

    /// How long a client may take to join a namespace after its handshake.
    pub fn with_connect_timeout(mut self, d: Duration) -> SioWorker {
        self.core.connect_timeout = d;
        self
    }

    /// What this worker refused or cut so far.
    pub fn stats(&self) -> AppStats {
        let mut s = self.core.stats;
        if let Some(store) = &self.core.store {
            s.recovery = store.stats;
        }
        s
    }
}

impl SioWorker {
    /// Gives handlers this server's handle ([`Socket::handle`]); without it they get a
    /// [detached](ServerHandle::detached) one.
    pub fn with_handle(mut self, handle: ServerHandle) -> SioWorker {
        self.core.handle = handle;
        self
    }
}

impl WorkerCore {
    /// Socket `idx` as `fetch_sockets` reports it.
    pub(crate) fn describe(&self, idx: u32, worker: usize) -> SocketInfo {
        let s = self.sockets.at(idx);
        let mut rooms: Vec<String> = s.rooms.iter().map(|r| r.to_string()).collect();
        rooms.sort_unstable();
        SocketInfo { id: s.id.to_string(), nsp: s.nsp.to_string(), rooms, handshake: (*s.handshake).clone(), data: s.shared.clone(), worker, node: None }
    }

    /// The rooms of `nsp` with a member on this worker, sockets' own-id rooms left out.
    pub(crate) fn room_names(&self, nsp: &str) -> Vec<String> {
        let Some(ns) = self.rooms.nsps.get(nsp) else { return Vec::new() };
        ns.rooms
            .iter()
            .filter(|(name, members)| !(members.len() == 1 && members.iter().all(|&i| self.sockets.get(i).is_some_and(|s| *s.id == ***name))))
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Sends an encoded packet (and its attachments) to one socket's client.
    pub(crate) fn send_to(&mut self, ctx: &mut Ctx<'_, SioMail>, idx: u32, enc: &Encoded, flags: SendFlags) {
        let client = self.sockets.at(idx).client;
        for p in enc.packets() {
            if ctx.send(client, p, flags).is_err() {
                break;
            }
        }
    }

    /// A new recovery offset for a packet sent with `flags`, when recovery is on and the
    /// packet is recoverable (not volatile; packets with an ack never get here).
    pub(crate) fn stamp(&self, flags: SendFlags) -> Option<u64> {
        self.store.as_ref().filter(|_| !flags.volatile).map(|s| s.shared.offset())
    }

    /// Tells the namespace's `on_any_outgoing` hook, if any, about an event for socket `idx`
    /// (and, in the admin UI's development mode, which installs such a hook, the admin
    /// namespace).
    pub(crate) fn outgoing(&mut self, ctx: &mut Ctx<'_, SioMail>, idx: u32, event: &str, args: &[Value]) {
        let s = self.sockets.at(idx);
        if let Some(hook) = &s.ns.any_outgoing {
            let o = super::namespace::Outgoing { socket: &s.id, nsp: &s.nsp, event, args };
            let _ = guard::catch("outgoing hook", &s.id, || hook(&o));
            if let Some(tap) = self.admin.clone() {
                tap.sent(self, ctx, idx, event, args);
            }
        }
    }

    /// [`join`](Self::join), told to the admin UI (development mode) when the socket was not
    /// in the room.
    pub(crate) fn join_noted(&mut self, ctx: &mut Ctx<'_, SioMail>, idx: u32, room: &str) -> Result<(), JoinError> {
        let Some(tap) = self.admin.clone() else { return self.join(idx, room) };
        let new = !self.sockets.at(idx).rooms.contains(room);
        self.join(idx, room)?;
        if new {
            tap.joined(self, ctx, idx, room);
        }
        Ok(())
    }

    /// [`leave`](Self::leave), told to the admin UI (development mode) when the socket was in
    /// the room.
    pub(crate) fn leave_noted(&mut self, ctx: &mut Ctx<'_, SioMail>, idx: u32, room: &str) {
        let Some(tap) = self.admin.clone() else { return self.leave(idx, room) };
        let was = self.sockets.at(idx).rooms.contains(room);
        self.leave(idx, room);
        if was {
            let s = self.sockets.at(idx);
            let (nsp, id) = (s.nsp.clone(), s.id.clone());
            tap.left(self, ctx, &nsp, room, &id);
        }
    }

    /// The connected sockets of this worker (the admin UI's `all_sockets`).
    pub(crate) fn connected_slots(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.rooms.nsps.values().flat_map(|ns| ns.members.iter().copied()).collect();
        v.sort_unstable();
        v
    }

    /// Each namespace with a socket here, and how many.
    pub(crate) fn namespace_sizes(&self) -> impl Iterator<Item = (&str, usize)> + '_ {
        self.rooms.nsps.iter().map(|(n, ns)| (&**n, ns.members.len()))
    }

    /// Charges one incoming event of `size` bytes to socket `idx`'s rate limits; false (and
    /// counted) when it is past one of them.
    fn within_rates(&mut self, idx: u32, size: usize, now: Instant) -> bool {
        let (events, bytes) = (self.limits.max_event_rate, self.limits.max_byte_rate);
        if events.is_none() && bytes.is_none() {
            return true;
        }
        let s = self.sockets.at_mut(idx);
        if let Some(rate) = events.map(u64::from) {
            if !s.event_bucket.get_or_insert_with(|| limits::Bucket::full(rate, now)).take(rate, 1, now) {
                self.stats.event_rate_exceeded += 1;
                return false;
            }
        }
        if let Some(rate) = bytes {
            if !s.byte_bucket.get_or_insert_with(|| limits::Bucket::full(rate, now)).take(rate, size as u64, now) {
                self.stats.byte_rate_exceeded += 1;
                return false;
            }
        }
        true
    }

    /// The most acks one socket may be waiting on.
    pub(crate) fn acks_max(&self) -> usize {
        self.acks.max_per_socket()
    }

    /// Whether socket `(idx, gen)` is connected and not leaving: what user code may act on.
    pub(crate) fn usable(&self, idx: u32, gen: u32) -> bool {
        self.sockets.live(idx, gen).is_some_and(|s| !s.leaving)
    }

    /// Registers an ack callback due at `deadline`; returns its id, or the callback back when
    /// the socket is at its pending-ack limit.
    pub(crate) fn add_ack(&mut self, idx: u32, deadline: Instant, cb: AckCallback) -> Result<u64, AckCallback> {
        let s = self.sockets.at_mut(idx);
        let key = (idx, s.gen);
        let r = self.acks.arm(&mut s.acks, key, deadline, PendingAck::Callback(cb), None);
        self.compact_acks();
        r.map_err(|a| match a {
            PendingAck::Callback(cb) => cb,
            PendingAck::Collect { .. } => unreachable!("armed a callback"),
        })
    }

    /// Drops deadline entries of answered acks once they outnumber the pending ones.
    fn compact_acks(&mut self) {
        if self.acks.needs_compaction() {
            let sockets = &self.sockets;
            self.acks.compact(|k| sockets.live(k.slot, k.gen).is_some_and(|s| s.acks.is_pending(k.id)));
        }
    }

    /// Records that user code wants socket `idx` gone (or its whole client); done when that
    /// code returns (see [`run_intents`]). The socket is marked leaving at once: no more
    /// emits to it, and no selection picks it.
    pub(crate) fn request(&mut self, idx: u32, intent: Intent) {
        let Some(s) = self.sockets.get_mut(idx) else { return };
        s.leaving = true;
        let gen = s.gen;
        if let Intent::CloseClient(client) = &intent {
            for i in self.sockets.of_client(*client) {
                if let Some(s) = self.sockets.get_mut(i) {
                    s.leaving = true;
                }
            }
        }
        self.intents.push_back((idx, gen, intent));
    }

    /// A new socket: a fresh one, or (`restored`) the one a client recovered, with its id and
    /// pid. With recovery on, a fresh socket gets a pid.
    fn new_socket(
        &mut self,
        client: SessionId,
        nsp: &str,
        ns: Arc<super::namespace::Namespace>,
        hs: Handshake,
        worker: usize,
        restored: Option<(String, String)>,
    ) -> u32 {
        let recovered = restored.is_some();
        let (id, pid): (Rc<str>, Option<Rc<str>>) = match restored {
            Some((id, pid)) => (Rc::from(id), Some(Rc::from(pid))),
            None => (Rc::from(ids::generate(worker)), self.store.as_ref().map(|_| Rc::from(ids::generate(worker)))),
        };
        let nsp = self.rooms.intern(nsp);
        let idx = self.sockets.insert(|gen| SocketState {
            id: id.clone(),
            nsp: nsp.clone(),
            client,
            rooms: KeyedSet::default(),
            handshake: Rc::new(hs),
            data: None,
            shared: None,
            acks: Default::default(),
            ns,
            gen,
            stamp: 0,
            connected: true,
            leaving: false,
            pid,
            recovered,
            event_bucket: None,
            byte_bucket: None,
        });
        self.rooms.add_member(&nsp, idx);
        // Every socket is in the room named by its own id, whatever the limits on names.
        self.sockets.at_mut(idx).rooms.insert(id.clone());
        self.rooms.nsps.entry(nsp.clone()).or_default().rooms.entry(id).or_default().insert(idx);
        if let Some(c) = self.sockets.clients.get_mut(&client) {
            c.sockets.push((nsp, idx));
        }
        idx
    }

    /// Takes a socket out of its rooms and namespace; the slot stays until `free_socket`.
    fn detach(&mut self, idx: u32) {
        let rooms: Vec<Rc<str>> = self.sockets.at(idx).rooms.iter().cloned().collect();
        for r in rooms {
            self.leave(idx, &r);
        }
        let s = self.sockets.at_mut(idx);
        s.connected = false;
        let (nsp, client) = (s.nsp.clone(), s.client);
        self.rooms.remove_member(&nsp, idx);
        if let Some(c) = self.sockets.clients.get_mut(&client) {
            c.sockets.retain(|(_, i)| *i != idx);
        }
    }

    fn free_socket(&mut self, idx: u32) {
        if let Some(mut s) = self.sockets.take(idx) {
            let acks = self.acks.forget(&mut s.acks);
            // Unanswered callbacks and the data slot hold user values: their drop is user code.
            guard::drop_quietly((acks, s));
        }
    }
}

/// Runs a user handler on socket `idx`; a panic is caught, logged once, and only that socket
/// is disconnected. Then applies the disconnects the handler asked for.
fn guarded(core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, idx: u32, what: &'static str, f: impl FnOnce(&mut Socket<'_, '_>)) {
    let Some(s) = core.sockets.get(idx) else { return };
    let id = s.id.clone();
    let ok = {
        let mut s = Socket::new(core, ctx, idx);
        guard::catch(what, &id, || f(&mut s)).is_some()
    };
    if !ok && core.sockets.get(idx).is_some_and(|s| s.connected && *s.id == *id) {
        remove_socket(core, ctx, idx, DisconnectReason::HandlerPanic, true);
    }
    run_intents(core, ctx);
}

/// Applies the disconnects user code asked for, in the order it asked.
fn run_intents(core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>) {
    while let Some((idx, gen, intent)) = core.intents.pop_front() {
        match intent {
            Intent::Collected(id) => finish_collector(core, ctx, id, false),
            Intent::Leave if core.sockets.live(idx, gen).is_some() => remove_socket(core, ctx, idx, DisconnectReason::ServerNamespaceDisconnect, true),
            Intent::Leave => {}
            Intent::CloseClient(client) if core.sockets.clients.contains_key(&client) => disconnect_client(core, ctx, client),
            Intent::CloseClient(_) => {}
        }
    }
}

/// A socket leaves its namespace: DISCONNECT sent when the server decided it, rooms left, the
/// disconnect handler called, the slot freed.
pub(crate) fn remove_socket(core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, idx: u32, reason: DisconnectReason, send_packet: bool) {
    let Some(s) = core.sockets.get(idx) else { return };
    if !s.connected {
        return;
    }
    if send_packet {
        let enc = encode::disconnect(&s.nsp);
        core.send_to(ctx, idx, &enc, SendFlags::default());
    }
    // Kept for its client to come back (Node's recoverable reasons), as it is now.
    let s = core.sockets.at(idx);
    let keep = match (&core.store, &s.pid) {
        (Some(_), Some(pid)) if reason.recoverable() => {
            Some((pid.to_string(), s.id.to_string(), s.nsp.to_string(), s.rooms.iter().map(|r| r.to_string()).collect::<Vec<_>>()))
        }
        _ => None,
    };
    // The admin UI hears `socket_disconnected` before the disconnect handler runs, then
    // `room_left` for each room, its own first (Node's order).
    let admin = core.admin.clone().map(|tap| {
        let s = core.sockets.at(idx);
        let mut rooms: Vec<String> = s.rooms.iter().filter(|r| ***r != *s.id).map(|r| r.to_string()).collect();
        rooms.sort_unstable();
        rooms.insert(0, s.id.to_string());
        (tap, s.nsp.to_string(), s.id.to_string(), rooms)
    });
    core.detach(idx);
    if let Some((tap, nsp, id, _)) = &admin {
        tap.disconnected(core, ctx, nsp, id, reason.as_str());
    }
    if let Some(h) = core.sockets.at(idx).ns.on_disconnect.clone() {
        guarded(core, ctx, idx, "disconnect handler", |s| h(s, reason));
    }
    if let Some((tap, nsp, id, rooms)) = &admin {
        for room in rooms {
            tap.left(core, ctx, nsp, room, id);
        }
        tap.watch(nsp, false);
    }
    if let Some((pid, id, nsp, rooms)) = keep {
        let data = core.sockets.get_mut(idx).and_then(|s| s.data.take());
        let kept = retain::Kept { id, nsp, rooms, data, at: ctx.now() };
        if let Some(st) = core.store.as_mut() {
            retain::gone_quietly(st.keep(pid, kept));
        }
    }
    core.free_socket(idx);
}

/// Disconnects every socket of a client in the order they connected (each gets its
/// DISCONNECT), then closes the Engine.IO session.
pub(crate) fn disconnect_client(core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, client: SessionId) {
    for idx in core.sockets.of_client(client) {
        remove_socket(core, ctx, idx, DisconnectReason::ServerNamespaceDisconnect, true);
    }
    if let Some(c) = core.sockets.clients.get_mut(&client) {
        c.closing_reason = Some(DisconnectReason::ServerNamespaceDisconnect);
    }
    ctx.close(client);
}

/// Ends a broadcast-ack collection: its callback runs on the emitting socket, if still there.
fn finish_collector(core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, id: u64, timed_out: bool) {
    let Some(c) = core.acks.finish(id) else { return };
    let (idx, gen) = c.socket;
    let Some(s) = core.sockets.live_mut(idx, gen) else { return guard::drop_quietly(c) };
    s.acks.collecting = s.acks.collecting.saturating_sub(1);
    let result = if timed_out { Err(PartialResponses { responses: c.responses }) } else { Ok(c.responses) };
    let cb = c.cb;
    guarded(core, ctx, idx, "broadcast ack callback", move |s| cb(s, result));
}

fn refuse(ctx: &mut Ctx<'_, SioMail>, sid: SessionId, nsp: &str, data: &Value) {
    for pk in encode::connect_error(nsp, data).packets() {
        let _ = ctx.send(sid, pk, SendFlags::default());
    }
}

impl SioWorker {
    /// A protocol error: logged once, the error handlers told, the session closed.
    fn fail(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: SessionId, why: &dyn std::fmt::Display) {
        let Some(c) = self.core.sockets.clients.get_mut(&sid) else { return };
        if c.closing_reason.is_some() {
            return; // already failing: one log line per session
        }
        c.closing_reason = Some(DisconnectReason::ParseError);
        tracing::debug!(session = ?sid, error = %why, "closing a session after a protocol error");
        let message = why.to_string();
        for idx in self.core.sockets.of_client(sid) {
            let Some(s) = self.core.sockets.get(idx).filter(|s| s.connected) else { continue };
            if let Some(h) = s.ns.on_error.clone() {
                guarded(&mut self.core, ctx, idx, "error handler", |s| h(s, &message));
            }
        }
        ctx.close(sid);
    }

    /// Routes one decoded packet of `size` bytes (its text and attachments).
    fn dispatch(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: SessionId, p: Packet, size: usize) {
        // A namespace whose connection waits for a deferred middleware: its packets wait too
        // (a DISCONNECT cancels it).
        let p = match p.kind {
            PacketType::Connect | PacketType::ConnectError => p,
            _ if self.core.sockets.client_socket(sid, &p.nsp).is_some() => p,
            PacketType::Disconnect => {
                if let Some(t) = self.core.pending_token(sid, &p.nsp) {
                    if let Some(pc) = self.core.take_pending(t) {
                        guard::drop_quietly(pc);
                    }
                }
                return;
            }
            _ => match self.hold(ctx, sid, p, size) {
                None => return,
                Some(p) => p,
            },
        };
        let core = &mut self.core;
        match p.kind {
            PacketType::Connect => self.connect(ctx, sid, p),
            PacketType::Disconnect => {
                if let Some(idx) = core.sockets.client_socket(sid, &p.nsp) {
                    remove_socket(core, ctx, idx, DisconnectReason::ClientNamespaceDisconnect, false);
                }
            }
            PacketType::Event | PacketType::BinaryEvent => {
                let Some(idx) = core.sockets.client_socket(sid, &p.nsp) else {
                    return self.fail(ctx, sid, &"event for a namespace the client is not connected to");
                };
                if !core.within_rates(idx, size, ctx.now()) {
                    tracing::debug!(session = ?sid, nsp = p.nsp, "a socket sent past its rate limits; disconnecting it");
                    return remove_socket(core, ctx, idx, DisconnectReason::ServerNamespaceDisconnect, true);
                }
                let Some(Value::Array(mut all)) = p.data else { return };
                let name = match all.first() {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => return,
                };
                all.remove(0);
                let mut ev = Event { name, args: all, attachments: p.attachments, ack: p.id.map(super::namespace::AckId) };
                let ns = core.sockets.at(idx).ns.clone();
                let gen = core.sockets.at(idx).gen;
                // Node's order: onAny listeners, then the socket.use middleware, then the handler.
                if let Some(any) = &ns.any_incoming {
                    guarded(core, ctx, idx, "on_any handler", |s| any(s, &ev));
                    if !core.usable(idx, gen) {
                        return;
                    }
                }
                for mw in &ns.packet_middleware {
                    let mut verdict = Ok(());
                    guarded(core, ctx, idx, "packet middleware", |s| verdict = mw(s, &mut ev));
                    if !core.usable(idx, gen) {
                        return;
                    }
                    if let Err(message) = verdict {
                        if let Some(h) = &ns.on_error {
                            guarded(core, ctx, idx, "error handler", |s| h(s, &message));
                        }
                        return;
                    }
                }
                let handler = ns.events.get(&ev.name).or(ns.any.as_ref()).cloned();
                if let Some(h) = handler {
                    guarded(core, ctx, idx, "event handler", |s| h(s, ev));
                }
            }
            PacketType::Ack | PacketType::BinaryAck => {
                let Some(idx) = core.sockets.client_socket(sid, &p.nsp) else { return };
                let Some(id) = p.id else { return };
                // A late or unknown ack is ignored.
                let Some(pending) = core.acks.take(&mut core.sockets.at_mut(idx).acks, id) else { return };
                let args = match p.data {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                let atts = p.attachments;
                match pending {
                    PendingAck::Callback(cb) => guarded(core, ctx, idx, "ack callback", |s| cb(s, Ok((args, atts)))),
                    PendingAck::Collect { origin: AckOrigin::Worker(origin) } if origin == ctx.worker() => {
                        if core.acks.answer(id, (args, atts)) {
                            finish_collector(core, ctx, id, false);
                        }
                    }
                    PendingAck::Collect { origin: AckOrigin::Worker(origin) } => ctx.post(origin, SioMail::AckAnswer { id, args, attachments: atts }),
                    PendingAck::Collect { origin: AckOrigin::Handle(sink) } => sink.answer(args, atts),
                }
            }
            PacketType::ConnectError => self.fail(ctx, sid, &"a client may not send CONNECT_ERROR"),
        }
    }
}

impl SioWorker {
    /// A value user code settled on another thread (or later on this one).
    fn deferred(&mut self, ctx: &mut Ctx<'_, SioMail>, d: crate::app::defer::Deferred) {
        use crate::app::defer::Deferred;
        match d {
            Deferred::Connect { token, verdict } => self.decided(ctx, token, verdict),
            Deferred::Ack { slot, gen, id, packet } => {
                let core = &mut self.core;
                let owed = core.sockets.live_mut(slot, gen).is_some_and(|s| s.acks.undefer(id));
                match packet {
                    Some(enc) if owed && core.usable(slot, gen) => core.send_to(ctx, slot, &enc, SendFlags::default()),
                    Some(_) => {
                        core.stats.late_acks += 1;
                        tracing::debug!(ack = id, "a deferred ack answer found its socket gone or the ack answered");
                    }
                    None => {}
                }
            }
        }
    }
}

impl Handler for SioWorker {
    type Mail = SioMail;

    fn on_open(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: SessionId, info: &OpenInfo<'_>) {
        self.core.sockets.clients.insert(
            sid,
            Client {
                sockets: Vec::new(),
                assembler: None,
                query: info.query.into(),
                origin: info.origin.map(Arc::from),
                headers: info.headers.into(),
                peer: info.peer,
                address: info.address,
                closing_reason: None,
                pending: Vec::new(),
                assembling: 0,
            },
        );
        let deadline = ctx.now() + self.core.connect_timeout;
        self.core.connect_due.push(deadline, sid);
        self.core.sessions_opened += 1;
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: SessionId, text: &mut [u8]) {
        let Some(client) = self.core.sockets.clients.get(&sid) else { return };
        if let Some(a) = &client.assembler {
            let e = crate::proto::sio::SioError::AttachmentsMissing { missing: a.missing() };
            return self.fail(ctx, sid, &e);
        }
        match self.core.decoder.decode(text) {
            Err(e) => self.fail(ctx, sid, &e),
            Ok(p) if p.kind.is_binary() => {
                // The attachments of the whole packet share the packet-size limit.
                let max_bytes = self.core.decoder.limits().max_packet_size;
                if let Some(c) = self.core.sockets.clients.get_mut(&sid) {
                    c.assembler = Some(Box::new(BinaryAssembler::new(p, max_bytes)));
                    c.assembling = text.len();
                }
            }
            Ok(p) => self.dispatch(ctx, sid, p, text.len()),
        }
    }

    fn on_binary(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: SessionId, data: Bytes) {
        let Some(client) = self.core.sockets.clients.get_mut(&sid) else { return };
        let Some(asm) = client.assembler.take() else {
            return self.fail(ctx, sid, &crate::proto::sio::SioError::UnexpectedBinary);
        };
        client.assembling += data.len();
        let size = client.assembling;
        match (*asm).push(data) {
            Ok(Ok(p)) => self.dispatch(ctx, sid, p, size),
            Ok(Err(asm)) => client.assembler = Some(Box::new(asm)),
            Err(e) => self.fail(ctx, sid, &e),
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: SessionId, reason: CloseReason) {
        if let Some(i) = CLOSE_REASONS.iter().position(|&r| r == reason) {
            self.core.sessions_closed[i] += 1;
        }
        let Some(client) = self.core.sockets.clients.get(&sid) else { return };
        let reason = client.closing_reason.unwrap_or(match reason {
            CloseReason::TransportClose => DisconnectReason::TransportClose,
            CloseReason::PingTimeout => DisconnectReason::PingTimeout,
            CloseReason::TransportError => DisconnectReason::TransportError,
            CloseReason::ForcedClose => DisconnectReason::ServerNamespaceDisconnect,
            CloseReason::ParseError => DisconnectReason::ParseError,
            CloseReason::ServerShutdown => DisconnectReason::ServerShuttingDown,
        });
        self.core.drop_pending_of(sid);
        for idx in self.core.sockets.of_client(sid) {
            remove_socket(&mut self.core, ctx, idx, reason, false);
        }
        self.core.sockets.clients.remove(&sid);
    }

    fn on_mail(&mut self, ctx: &mut Ctx<'_, SioMail>, mail: SioMail) {
        match mail {
            SioMail::Deferred(d) => self.deferred(ctx, d.0),
            SioMail::Recovery(m) => self.recovery_mail(ctx, m),
            SioMail::Admin(m) => crate::app::admin_ui::tap::answer(&self.core, ctx, m),
            mail => mail::apply(&mut self.core, ctx, mail),
        }
    }

    fn on_upgrade(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: SessionId) {
        if let Some(tap) = self.core.admin.clone() {
            for idx in self.core.sockets.of_client(sid) {
                tap.updated(&mut self.core, ctx, idx, "transport", Value::from("websocket"));
            }
        }
    }

    fn metrics(&self, out: &mut crate::rt::metrics::WorkerMetrics) {
        let core = &self.core;
        out.counter("shardcast_sessions_opened_total", "Engine.IO sessions opened.", &[], core.sessions_opened);
        for (reason, n) in CLOSE_REASONS.iter().zip(core.sessions_closed) {
            out.counter("shardcast_sessions_closed_total", "Engine.IO sessions closed, by reason.", &[("reason", reason.as_str())], n);
        }
        let w = out.worker.to_string();
        let worker = [("worker", w.as_str())];
        out.gauge("shardcast_namespaces", "Namespaces with at least one socket on this worker.", &worker, core.rooms.nsps.len() as u64);
        out.gauge("shardcast_sockets", "Connected Socket.IO sockets (one per client and namespace).", &worker, core.sockets.len() as u64);
        // Every socket is in the room named by its id; those are not counted.
        let rooms: usize = core.rooms.nsps.values().map(|ns| ns.rooms.len()).sum();
        out.gauge(
            "shardcast_rooms",
            "Rooms with a member on this worker (a room with members on two workers counts on each; sockets' own id rooms are not counted).",
            &worker,
            rooms.saturating_sub(core.sockets.len()) as u64,
        );
        out.counter("shardcast_broadcasts_total", "Broadcasts emitted (each encoded once, whatever the number of recipients).", &[], core.broadcasts);
        out.counter(
            "shardcast_deliveries_total",
            "Broadcast packets handed to a recipient's transport (one per recipient per broadcast).",
            &[],
            core.deliveries,
        );
        if core.admin.is_some() {
            out.counter(
                "shardcast_admin_ui_events_dropped_total",
                "Admin UI development-mode events (socket_connected, event_sent, ...) dropped past --admin-ui-events-per-second on their worker.",
                &[],
                core.admin_budget.dropped,
            );
            if core.cluster.is_some() {
                out.counter(
                    "shardcast_admin_ui_events_not_published_total",
                    "Admin UI events not published to the other nodes: the cluster adapter's queue was half full (they never crowd out the application's broadcasts) or the backend was unreachable.",
                    &[],
                    core.admin_budget.not_published,
                );
            }
        }
        let st = self.stats();
        const CUT: &str = "Sockets (or sessions) the Socket.IO layer disconnected for passing a limit, by reason: event_rate and byte_rate (--max-event-rate, --max-byte-rate), held_overflow (packets held for an undecided deferred middleware), connect_decision_timeout.";
        for (reason, n) in [
            ("event_rate", st.event_rate_exceeded),
            ("byte_rate", st.byte_rate_exceeded),
            ("held_overflow", st.held_overflow),
            ("connect_decision_timeout", st.connect_decision_timeouts),
        ] {
            out.counter("shardcast_socket_cuts_total", CUT, &[("reason", reason)], n);
        }
        out.gauge("shardcast_held_bytes", "Bytes of packets held for connections waiting for a deferred connect middleware.", &worker, core.held_bytes as u64);
        let r = st.recovery;
        out.gauge("shardcast_recovery_kept_packets", "Packets kept for connection state recovery.", &worker, r.kept_packets);
        out.gauge("shardcast_recovery_kept_bytes", "Bytes of the packets kept for connection state recovery.", &worker, r.kept_bytes);
        out.gauge("shardcast_recovery_kept_sockets", "Disconnected sockets kept for connection state recovery.", &worker, r.kept_sockets);
        out.counter(
            "shardcast_recovery_evicted_packets_total",
            "Kept packets dropped before their window ended, to stay within the caps.",
            &[],
            r.evicted_packets,
        );
        out.gauge("shardcast_recovery_kept_socket_bytes", "Bytes of the kept sockets' ids and room names.", &worker, r.kept_socket_bytes);
        out.counter(
            "shardcast_recovery_evicted_sockets_total",
            "Kept sockets forgotten before their window ended, to stay within the caps.",
            &[],
            r.evicted_sockets,
        );
        out.counter("shardcast_recovery_total", "Reconnections asking to recover, by outcome.", &[("outcome", "recovered")], r.recovered);
        out.counter("shardcast_recovery_total", "Reconnections asking to recover, by outcome.", &[("outcome", "not_recovered")], r.not_recovered);
    }

    fn on_timers(&mut self, ctx: &mut Ctx<'_, SioMail>, now: Instant) {
        let core = &mut self.core;
        while let Some(key) = core.acks.pop_due(now) {
            let Some(s) = core.sockets.live_mut(key.slot, key.gen) else { continue };
            // A stale entry (answered already) misses here.
            if let Some(PendingAck::Callback(cb)) = core.acks.take(&mut s.acks, key.id) {
                guarded(core, ctx, key.slot, "ack timeout callback", |s| cb(s, Err(AckTimeout)));
            }
        }
        while let Some(id) = core.acks.pop_collect_due(now) {
            finish_collector(core, ctx, id, true);
        }
        core.handle_acks.expire(now);
        while let Some(sid) = core.connect_due.pop_due(now) {
            if core.sockets.clients.get(&sid).is_some_and(|c| c.sockets.is_empty()) {
                tracing::debug!(session = ?sid, "no namespace joined in time; closing");
                ctx.close(sid);
            }
        }
        self.decisions_due(ctx, now);
        if let Some(store) = self.core.store.as_mut() {
            let gone = store.expire(now);
            if !gone.is_empty() {
                guard::drop_quietly(gone);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let store = self.core.store.as_ref().and_then(|s| s.next_deadline());
        [self.core.acks.next_deadline(), self.core.connect_due.next(), self.core.decision_due.next(), self.core.handle_acks.next_deadline(), store]
            .into_iter()
            .flatten()
            .min()
    }
}
