//! The Socket.IO layer of one worker: the clients (Engine.IO sessions) it owns, their sockets
//! per namespace, this worker's shard of the room table, pending acks, and the mail other
//! workers and `ServerHandle`s send it. It is the [`Handler`] the Engine.IO server calls.
//!
//! A broadcast is encoded once by whoever emits it; this worker delivers the same shared
//! packets to its own members and posts one `Arc` of the broadcast to every other worker.
//!
//! Must never: parse bytes itself (it calls `proto::sio`), touch another worker's sockets, or
//! let a panicking user handler take the worker down.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::Value;

use super::namespace::{AckCallback, AckTimeout, BroadcastAckCallback, DisconnectReason, Event, Handshake, Namespaces, PartialResponses, Responses};
use super::socket::Socket;
use crate::engine::{sid as ids, Ctx, Handler, OpenInfo, SendFlags, Sid};
use crate::proto::eio::CloseReason;
use crate::proto::sio::{encode, BinaryAssembler, Decoder, Encoded, Limits, Packet, PacketType};
use crate::rt::timer::Fifo;

/// Which sockets of a namespace an operation applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// The namespace.
    pub nsp: String,
    /// Sockets in any of these rooms; all sockets of the namespace when empty.
    pub rooms: Vec<String>,
    /// Sockets in any of these rooms are left out.
    pub except_rooms: Vec<String>,
    /// These sockets are left out.
    pub except_ids: Vec<String>,
}

/// A packet for the sockets a selector picks, encoded once.
#[derive(Debug)]
pub struct Broadcast {
    /// Who gets it.
    pub sel: Selector,
    /// The packet, encoded once for every transport.
    pub packet: Encoded,
    /// Emit flags.
    pub flags: SendFlags,
    /// Set when every recipient's ack is collected by the origin worker.
    pub ack: Option<BroadcastAck>,
}

/// The ack of a broadcast: the id every recipient answers with, and who collects.
#[derive(Debug, Clone, Copy)]
pub struct BroadcastAck {
    /// The ack id every recipient answers with.
    pub id: u64,
    /// The worker that collects the answers.
    pub origin: usize,
    /// When the collection ends.
    pub deadline: Instant,
}

/// Mail between workers (and from `ServerHandle`s).
pub enum SioMail {
    /// Deliver a broadcast to this worker's matching sockets.
    Broadcast(Arc<Broadcast>),
    /// Make the selected sockets join rooms.
    Join {
        /// Which sockets.
        sel: Arc<Selector>,
        /// The rooms to join.
        rooms: Arc<Vec<String>>,
    },
    /// Make the selected sockets leave rooms.
    Leave {
        /// Which sockets.
        sel: Arc<Selector>,
        /// The rooms to leave.
        rooms: Arc<Vec<String>>,
    },
    /// Disconnect the selected sockets.
    Disconnect {
        /// Which sockets.
        sel: Arc<Selector>,
        /// Close their whole clients, not only this namespace.
        close_client: bool,
    },
    /// Answer on `reply` once everything posted before has been handled (a barrier).
    Flush {
        /// Where to answer.
        reply: std::sync::mpsc::Sender<()>,
    },
    /// Count the selected sockets; every worker answers on `reply`.
    Count {
        /// Which sockets.
        sel: Arc<Selector>,
        /// Where to answer.
        reply: std::sync::mpsc::Sender<usize>,
    },
    /// To a broadcast's origin: this worker sent it to `count` sockets.
    AckCount {
        /// The broadcast's ack id.
        id: u64,
        /// Recipients on the reporting worker.
        count: usize,
    },
    /// To a broadcast's origin: one recipient's answer.
    AckAnswer {
        /// The broadcast's ack id.
        id: u64,
        /// The answer's arguments.
        args: Vec<Value>,
        /// The answer's attachments.
        attachments: Vec<Bytes>,
    },
}

/// An ack a socket owes: to a callback of this worker, or to a broadcast's collector.
pub(crate) enum PendingAck {
    Callback(AckCallback),
    Collect { origin: usize },
}

/// Gathers the answers to one broadcast with ack, on its origin worker.
struct Collector {
    socket: (u32, u32),
    /// Workers that have not reported their recipient count yet.
    waiting: usize,
    expected: usize,
    responses: Responses,
    cb: BroadcastAckCallback,
}

pub(crate) struct SocketState {
    pub(crate) id: Rc<str>,
    pub(crate) nsp: Rc<str>,
    pub(crate) client: Sid,
    pub(crate) rooms: HashSet<Rc<str>>,
    pub(crate) handshake: Rc<Handshake>,
    pub(crate) data: Option<Box<dyn std::any::Any>>,
    pub(crate) next_ack: u64,
    pub(crate) acks: HashMap<u64, PendingAck>,
    pub(crate) ns: Arc<super::namespace::Namespace>,
    gen: u32,
    stamp: u64,
    pub(crate) connected: bool,
}

#[derive(Default)]
struct NsState {
    members: HashSet<u32>,
    rooms: HashMap<Rc<str>, HashSet<u32>>,
}

struct Client {
    /// Sockets in the order they connected: (namespace, slot).
    sockets: Vec<(Rc<str>, u32)>,
    /// Boxed: only a client in the middle of a binary packet has one, and inline it would
    /// more than double every client's entry.
    assembler: Option<Box<BinaryAssembler>>,
    query: Rc<str>,
    origin: Option<Rc<str>>,
    headers: Rc<[(String, String)]>,
    /// Set when this layer closes the session, so its sockets get the right reason.
    closing_reason: Option<DisconnectReason>,
}

/// The worker's Socket.IO state; handlers reach it through [`Socket`].
pub struct WorkerCore {
    namespaces: Arc<Namespaces>,
    decoder: Decoder,
    clients: HashMap<Sid, Client>,
    pub(crate) sockets: Vec<Option<SocketState>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    by_id: HashMap<Rc<str>, u32>,
    nsps: HashMap<Rc<str>, NsState>,
    ack_due: Fifo<(u32, u32, u64)>,
    connect_due: Fifo<Sid>,
    connect_timeout: Duration,
    stamp: u64,
    ack_counter: u64,
    collectors: HashMap<u64, Collector>,
    collect_due: Fifo<u64>,
}

/// A socket's own acks are numbered from 0 like the reference server's. A broadcast's ack id
/// (the same for every recipient, on every worker) comes from a range no socket reaches, and
/// names its worker: `BROADCAST_ACK_BASE + n * MAX_WORKERS + worker`, so it never collides with
/// an id a recipient already waits on. All stay below 2^53, exact in JavaScript.
const BROADCAST_ACK_BASE: u64 = 1 << 40;
const MAX_WORKERS: u64 = 4096;

/// The Socket.IO [`Handler`] of one worker.
pub struct SioWorker {
    core: WorkerCore,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl SioWorker {
    /// The Socket.IO layer of one worker, serving `namespaces`.
    pub fn new(namespaces: Arc<Namespaces>, limits: Limits) -> SioWorker {
        SioWorker {
            core: WorkerCore {
                namespaces,
                decoder: Decoder::new(limits),
                clients: HashMap::default(),
                sockets: Vec::new(),
                gens: Vec::new(),
                free: Vec::new(),
                by_id: HashMap::default(),
                nsps: HashMap::default(),
                ack_due: Fifo::default(),
                connect_due: Fifo::default(),
                connect_timeout: Duration::from_secs(45),
                stamp: 0,
                ack_counter: 0,
                collectors: HashMap::default(),
                collect_due: Fifo::default(),
            },
        }
    }
}

impl WorkerCore {
    pub(crate) fn socket(&self, idx: u32) -> &SocketState {
        self.sockets[idx as usize].as_ref().expect("a live socket")
    }

    pub(crate) fn socket_mut(&mut self, idx: u32) -> &mut SocketState {
        self.sockets[idx as usize].as_mut().expect("a live socket")
    }

    /// Sends an encoded packet (and its attachments) to one socket's client.
    pub(crate) fn send_to(&mut self, ctx: &mut Ctx<'_, SioMail>, idx: u32, enc: &Encoded, flags: SendFlags) {
        let client = self.socket(idx).client.clone();
        for p in enc.packets() {
            if ctx.send(&client, p, flags).is_err() {
                break;
            }
        }
    }

    fn next_broadcast_ack_id(&mut self, worker: usize) -> u64 {
        self.ack_counter += 1;
        BROADCAST_ACK_BASE + self.ack_counter * MAX_WORKERS + worker as u64
    }

    /// Registers an ack callback and returns its id.
    pub(crate) fn add_ack(&mut self, idx: u32, now: Instant, timeout: Duration, cb: AckCallback) -> u64 {
        let s = self.socket_mut(idx);
        let id = s.next_ack;
        s.next_ack += 1;
        s.acks.insert(id, PendingAck::Callback(cb));
        let gen = s.gen;
        self.ack_due.push(now + timeout, (idx, gen, id));
        id
    }

    pub(crate) fn join(&mut self, idx: u32, room: &str) {
        let s = self.sockets[idx as usize].as_mut().expect("a live socket");
        if s.rooms.contains(room) {
            return;
        }
        let room: Rc<str> = Rc::from(room);
        s.rooms.insert(room.clone());
        let ns = self.nsps.entry(s.nsp.clone()).or_default();
        ns.rooms.entry(room).or_default().insert(idx);
    }

    pub(crate) fn leave(&mut self, idx: u32, room: &str) {
        let s = self.sockets[idx as usize].as_mut().expect("a live socket");
        if !s.rooms.remove(room) {
            return;
        }
        if let Some(ns) = self.nsps.get_mut(&s.nsp) {
            if let Some(set) = ns.rooms.get_mut(room) {
                set.remove(&idx);
                if set.is_empty() {
                    ns.rooms.remove(room);
                }
            }
        }
    }

    /// Delivers a broadcast to this worker's matching sockets; returns how many got it.
    pub(crate) fn deliver(&mut self, ctx: &mut Ctx<'_, SioMail>, b: &Broadcast) -> usize {
        let targets = self.select(&b.sel);
        for &idx in &targets {
            let s = self.sockets[idx as usize].as_mut().expect("selected sockets are live");
            if let Some(ack) = b.ack {
                s.acks.insert(ack.id, PendingAck::Collect { origin: ack.origin });
                self.ack_due.push(ack.deadline, (idx, s.gen, ack.id));
            }
            for p in b.packet.packets() {
                if ctx.send(&s.client, p, b.flags).is_err() {
                    break;
                }
            }
        }
        targets.len()
    }

    /// The slots of this worker's sockets a selector picks, each once.
    fn select(&mut self, sel: &Selector) -> Vec<u32> {
        let Some(ns) = self.nsps.get(sel.nsp.as_str()) else { return Vec::new() };
        self.stamp += 1;
        let stamp = self.stamp;
        let mut out = Vec::new();
        let sockets = &mut self.sockets;
        let mut visit = |idx: u32| {
            let Some(s) = sockets[idx as usize].as_mut() else { return };
            if s.stamp == stamp || !s.connected {
                return;
            }
            s.stamp = stamp;
            if sel.except_rooms.iter().any(|r| s.rooms.contains(r.as_str())) || sel.except_ids.iter().any(|i| **i == *s.id) {
                return;
            }
            out.push(idx);
        };
        if sel.rooms.is_empty() {
            ns.members.iter().for_each(|&i| visit(i));
        } else {
            for r in &sel.rooms {
                if let Some(set) = ns.rooms.get(r.as_str()) {
                    set.iter().for_each(|&i| visit(i));
                }
            }
        }
        out
    }

    /// Broadcasts: local delivery, plus one post of the same `Arc` to every other worker.
    pub(crate) fn broadcast(&mut self, ctx: &mut Ctx<'_, SioMail>, b: Broadcast) -> usize {
        let b = Arc::new(b);
        let n = self.deliver(ctx, &b);
        let me = ctx.worker();
        for w in (0..ctx.workers()).filter(|&w| w != me) {
            ctx.post(w, SioMail::Broadcast(b.clone()));
        }
        n
    }

    #[allow(clippy::too_many_arguments)] // one broadcast's whole description; called in one place
    /// Broadcasts an event whose every recipient must ack within `timeout`; `cb` runs on the
    /// emitting socket with every answer, or with those that came before the timeout.
    pub(crate) fn broadcast_with_ack(
        &mut self,
        ctx: &mut Ctx<'_, SioMail>,
        idx: u32,
        sel: Selector,
        event: &str,
        args: &[Value],
        attachments: Vec<Bytes>,
        flags: SendFlags,
        timeout: Duration,
        cb: BroadcastAckCallback,
    ) {
        let worker = ctx.worker();
        let id = self.next_broadcast_ack_id(worker);
        let deadline = ctx.now() + timeout;
        let packet = encode::event(&sel.nsp, event, args, Some(id), attachments);
        let gen = self.socket(idx).gen;
        self.collectors.insert(id, Collector { socket: (idx, gen), waiting: ctx.workers() - 1, expected: 0, responses: Vec::new(), cb });
        self.collect_due.push(deadline, id);
        let b = Broadcast { sel, packet, flags, ack: Some(BroadcastAck { id, origin: worker, deadline }) };
        let n = self.broadcast(ctx, b);
        self.collector_count(ctx, id, n);
    }

    fn collector_count(&mut self, ctx: &mut Ctx<'_, SioMail>, id: u64, count: usize) {
        if let Some(c) = self.collectors.get_mut(&id) {
            c.expected += count;
            self.check_collector(ctx, id);
        }
    }

    fn collector_answer(&mut self, ctx: &mut Ctx<'_, SioMail>, id: u64, answer: (Vec<Value>, Vec<Bytes>)) {
        if let Some(c) = self.collectors.get_mut(&id) {
            c.responses.push(answer);
            self.check_collector(ctx, id);
        }
    }

    fn check_collector(&mut self, ctx: &mut Ctx<'_, SioMail>, id: u64) {
        let done = self.collectors.get(&id).is_some_and(|c| c.waiting == 0 && c.responses.len() >= c.expected);
        if done {
            self.finish_collector(ctx, id, false);
        }
    }

    fn finish_collector(&mut self, ctx: &mut Ctx<'_, SioMail>, id: u64, timed_out: bool) {
        let Some(c) = self.collectors.remove(&id) else { return };
        let (idx, gen) = c.socket;
        let alive = self.sockets.get(idx as usize).and_then(|s| s.as_ref()).is_some_and(|s| s.gen == gen && s.connected);
        if alive {
            let result = if timed_out { Err(PartialResponses { responses: c.responses }) } else { Ok(c.responses) };
            let cb = c.cb;
            guarded(self, ctx, idx, move |s| cb(s, result));
        }
    }

    fn client_socket(&self, sid: &str, nsp: &str) -> Option<u32> {
        self.clients.get(sid)?.sockets.iter().find(|(n, _)| **n == *nsp).map(|(_, i)| *i)
    }

    fn new_socket(&mut self, client: &Sid, nsp: &str, ns: Arc<super::namespace::Namespace>, hs: Handshake, worker: usize) -> u32 {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.sockets.push(None);
                self.gens.push(0);
                (self.sockets.len() - 1) as u32
            }
        };
        self.gens[idx as usize] = self.gens[idx as usize].wrapping_add(1);
        let id: Rc<str> = Rc::from(ids::generate(worker));
        let nsp: Rc<str> = self.nsps.get_key_value(nsp).map_or_else(|| Rc::from(nsp), |(k, _)| k.clone());
        self.sockets[idx as usize] = Some(SocketState {
            id: id.clone(),
            nsp: nsp.clone(),
            client: client.clone(),
            rooms: HashSet::default(),
            handshake: Rc::new(hs),
            data: None,
            next_ack: 0,
            acks: HashMap::default(),
            ns,
            gen: self.gens[idx as usize],
            stamp: 0,
            connected: true,
        });
        self.by_id.insert(id.clone(), idx);
        self.nsps.entry(nsp.clone()).or_default().members.insert(idx);
        // Every socket is in the room named by its own id.
        self.join(idx, &id);
        if let Some(c) = self.clients.get_mut(client) {
            c.sockets.push((nsp, idx));
        }
        idx
    }

    /// Takes a socket out of its rooms and namespace; the slot stays until `free_socket`.
    fn detach(&mut self, idx: u32) {
        let rooms: Vec<Rc<str>> = self.socket(idx).rooms.iter().cloned().collect();
        for r in rooms {
            self.leave(idx, &r);
        }
        let s = self.socket_mut(idx);
        s.connected = false;
        let (nsp, client, id) = (s.nsp.clone(), s.client.clone(), s.id.clone());
        if let Some(ns) = self.nsps.get_mut(&nsp) {
            ns.members.remove(&idx);
            if ns.members.is_empty() && ns.rooms.is_empty() {
                self.nsps.remove(&nsp);
            }
        }
        if let Some(c) = self.clients.get_mut(&client) {
            c.sockets.retain(|(_, i)| *i != idx);
        }
        self.by_id.remove(&id);
    }

    fn free_socket(&mut self, idx: u32) {
        self.sockets[idx as usize] = None;
        self.free.push(idx);
    }
}

/// Runs a user handler; a panic is caught, logged, and only that socket is disconnected.
fn guarded(core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, idx: u32, f: impl FnOnce(&mut Socket<'_, '_>)) {
    let result = {
        let mut s = Socket::new(core, ctx, idx);
        catch_unwind(AssertUnwindSafe(|| f(&mut s)))
    };
    if let Err(panic) = result {
        let msg = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %msg, "a handler panicked; disconnecting its socket");
        if core.sockets.get(idx as usize).is_some_and(|s| s.as_ref().is_some_and(|s| s.connected)) {
            remove_socket(core, ctx, idx, DisconnectReason::HandlerPanic, true);
        }
    }
}

/// A socket leaves its namespace: DISCONNECT sent when the server decided it, rooms left, the
/// disconnect handler called, the slot freed.
pub(crate) fn remove_socket(core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, idx: u32, reason: DisconnectReason, send_packet: bool) {
    let Some(s) = core.sockets.get(idx as usize).and_then(|s| s.as_ref()) else { return };
    if !s.connected {
        return;
    }
    if send_packet {
        let enc = encode::disconnect(&s.nsp);
        core.send_to(ctx, idx, &enc, SendFlags::default());
    }
    core.detach(idx);
    if let Some(h) = core.socket(idx).ns.on_disconnect.clone() {
        let r = {
            let mut sock = Socket::new(core, ctx, idx);
            catch_unwind(AssertUnwindSafe(|| h(&mut sock, reason)))
        };
        if r.is_err() {
            tracing::error!("a disconnect handler panicked");
        }
    }
    core.free_socket(idx);
}

/// Disconnects every socket of a client in the order they connected (each gets its
/// DISCONNECT), then closes the Engine.IO session.
pub(crate) fn disconnect_client(core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, client: &Sid) {
    let socks: Vec<u32> = core.clients.get(client).map(|c| c.sockets.iter().map(|(_, i)| *i).collect()).unwrap_or_default();
    for idx in socks {
        remove_socket(core, ctx, idx, DisconnectReason::ServerNamespaceDisconnect, true);
    }
    if let Some(c) = core.clients.get_mut(client) {
        c.closing_reason = Some(DisconnectReason::ServerNamespaceDisconnect);
    }
    ctx.close(client);
}

impl SioWorker {
    /// A protocol error: logged once, the error handlers told, the session closed.
    fn fail(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: &Sid, why: &dyn std::fmt::Display) {
        let Some(c) = self.core.clients.get_mut(sid) else { return };
        if c.closing_reason.is_some() {
            return; // already failing: one log line per session
        }
        c.closing_reason = Some(DisconnectReason::ParseError);
        tracing::info!(sid = %sid, error = %why, "closing a session after a protocol error");
        let message = why.to_string();
        let socks: Vec<u32> = c.sockets.iter().map(|(_, i)| *i).collect();
        for idx in socks {
            if let Some(h) = self.core.socket(idx).ns.on_error.clone() {
                guarded(&mut self.core, ctx, idx, |s| h(s, &message));
            }
        }
        ctx.close(sid);
    }

    fn dispatch(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: &Sid, p: Packet) {
        let core = &mut self.core;
        match p.kind {
            PacketType::Connect => self.connect(ctx, sid, p),
            PacketType::Disconnect => {
                if let Some(idx) = core.client_socket(sid, &p.nsp) {
                    remove_socket(core, ctx, idx, DisconnectReason::ClientNamespaceDisconnect, false);
                }
            }
            PacketType::Event | PacketType::BinaryEvent => {
                let Some(idx) = core.client_socket(sid, &p.nsp) else {
                    return self.fail(ctx, sid, &"event for a namespace the client is not connected to");
                };
                let Some(Value::Array(mut all)) = p.data else { return };
                let name = match all.first() {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                    None => return,
                };
                all.remove(0);
                let ev = Event { name, args: all, attachments: p.attachments, ack: p.id.map(super::namespace::AckId) };
                let ns = core.socket(idx).ns.clone();
                let handler = ns.events.get(&ev.name).or(ns.any.as_ref()).cloned();
                if let Some(h) = handler {
                    guarded(core, ctx, idx, |s| h(s, ev));
                }
            }
            PacketType::Ack | PacketType::BinaryAck => {
                let Some(idx) = core.client_socket(sid, &p.nsp) else { return };
                let Some(id) = p.id else { return };
                // A late or unknown ack is ignored.
                let Some(pending) = core.socket_mut(idx).acks.remove(&id) else { return };
                let args = match p.data {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                let atts = p.attachments;
                match pending {
                    PendingAck::Callback(cb) => guarded(core, ctx, idx, |s| cb(s, Ok((args, atts)))),
                    PendingAck::Collect { origin } if origin == ctx.worker() => core.collector_answer(ctx, id, (args, atts)),
                    PendingAck::Collect { origin } => ctx.post(origin, SioMail::AckAnswer { id, args, attachments: atts }),
                }
            }
            PacketType::ConnectError => self.fail(ctx, sid, &"a client may not send CONNECT_ERROR"),
        }
    }

    fn connect(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: &Sid, p: Packet) {
        let core = &mut self.core;
        if core.client_socket(sid, &p.nsp).is_some() {
            return; // already connected to this namespace
        }
        let Some(ns) = core.namespaces.resolve(&p.nsp) else {
            let enc = encode::connect_error(&p.nsp, &serde_json::json!({ "message": "Invalid namespace" }));
            for pk in enc.packets() {
                let _ = ctx.send(sid, pk, SendFlags::default());
            }
            return;
        };
        let Some(client) = core.clients.get(sid) else { return };
        let hs = Handshake {
            nsp: p.nsp.clone(),
            auth: p.data,
            query: client.query.clone(),
            origin: client.origin.clone(),
            headers: client.headers.clone(),
            issued: now_ms(),
        };
        for m in &ns.middleware {
            if let Err(data) = m(&hs) {
                let data = match data {
                    Value::String(s) => serde_json::json!({ "message": s }),
                    other => other,
                };
                let enc = encode::connect_error(&p.nsp, &data);
                for pk in enc.packets() {
                    let _ = ctx.send(sid, pk, SendFlags::default());
                }
                return;
            }
        }
        let idx = core.new_socket(sid, &p.nsp, ns.clone(), hs, ctx.worker());
        let enc = encode::connect(&p.nsp, &core.socket(idx).id.clone());
        core.send_to(ctx, idx, &enc, SendFlags::default());
        if let Some(h) = ns.on_connection.clone() {
            guarded(core, ctx, idx, |s| h(s));
        }
    }

    fn apply_mail(&mut self, ctx: &mut Ctx<'_, SioMail>, mail: SioMail) {
        let core = &mut self.core;
        match mail {
            SioMail::Broadcast(b) => {
                // One copy per worker, not per recipient: keeps reference counts core-local.
                let local = Broadcast { sel: b.sel.clone(), packet: b.packet.to_local(), flags: b.flags, ack: b.ack };
                let n = core.deliver(ctx, &local);
                if let Some(ack) = b.ack {
                    ctx.post(ack.origin, SioMail::AckCount { id: ack.id, count: n });
                }
            }
            SioMail::AckCount { id, count } => {
                if let Some(c) = core.collectors.get_mut(&id) {
                    c.waiting = c.waiting.saturating_sub(1);
                }
                core.collector_count(ctx, id, count);
            }
            SioMail::AckAnswer { id, args, attachments } => core.collector_answer(ctx, id, (args, attachments)),
            SioMail::Join { sel, rooms } => {
                for idx in core.select(&sel) {
                    for r in rooms.iter() {
                        core.join(idx, r);
                    }
                }
            }
            SioMail::Leave { sel, rooms } => {
                for idx in core.select(&sel) {
                    for r in rooms.iter() {
                        core.leave(idx, r);
                    }
                }
            }
            SioMail::Disconnect { sel, close_client } => {
                for idx in core.select(&sel) {
                    if close_client {
                        let client = core.socket(idx).client.clone();
                        disconnect_client(core, ctx, &client);
                    } else {
                        remove_socket(core, ctx, idx, DisconnectReason::ServerNamespaceDisconnect, true);
                    }
                }
            }
            SioMail::Flush { reply } => {
                let _ = reply.send(());
            }
            SioMail::Count { sel, reply } => {
                let _ = reply.send(core.select(&sel).len());
            }
        }
    }
}

impl Handler for SioWorker {
    type Mail = SioMail;

    fn on_open(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: &Sid, info: &OpenInfo<'_>) {
        self.core.clients.insert(
            sid.clone(),
            Client {
                sockets: Vec::new(),
                assembler: None,
                query: info.query.into(),
                origin: info.origin.map(Rc::from),
                headers: info.headers.into(),
                closing_reason: None,
            },
        );
        let deadline = ctx.now() + self.core.connect_timeout;
        self.core.connect_due.push(deadline, sid.clone());
    }

    fn on_message(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: &Sid, text: &mut [u8]) {
        let Some(client) = self.core.clients.get(sid) else { return };
        if let Some(a) = &client.assembler {
            let e = crate::proto::sio::SioError::AttachmentsMissing { missing: a.missing() };
            return self.fail(ctx, sid, &e);
        }
        match self.core.decoder.decode(text) {
            Err(e) => self.fail(ctx, sid, &e),
            Ok(p) if p.kind.is_binary() => {
                // The attachments of the whole packet share the packet-size limit.
                let max_bytes = self.core.decoder.limits().max_packet_size;
                if let Some(c) = self.core.clients.get_mut(sid) {
                    c.assembler = Some(Box::new(BinaryAssembler::new(p, max_bytes)));
                }
            }
            Ok(p) => self.dispatch(ctx, sid, p),
        }
    }

    fn on_binary(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: &Sid, data: Bytes) {
        let Some(client) = self.core.clients.get_mut(sid) else { return };
        let Some(asm) = client.assembler.take() else {
            return self.fail(ctx, sid, &crate::proto::sio::SioError::UnexpectedBinary);
        };
        match (*asm).push(data) {
            Ok(Ok(p)) => self.dispatch(ctx, sid, p),
            Ok(Err(asm)) => client.assembler = Some(Box::new(asm)),
            Err(e) => self.fail(ctx, sid, &e),
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: &Sid, reason: CloseReason) {
        let Some(client) = self.core.clients.get(sid) else { return };
        let reason = client.closing_reason.unwrap_or(match reason {
            CloseReason::TransportClose => DisconnectReason::TransportClose,
            CloseReason::PingTimeout => DisconnectReason::PingTimeout,
            CloseReason::TransportError => DisconnectReason::TransportError,
            CloseReason::ForcedClose => DisconnectReason::ServerNamespaceDisconnect,
            CloseReason::ParseError => DisconnectReason::ParseError,
            CloseReason::ServerShutdown => DisconnectReason::ServerShuttingDown,
        });
        let socks: Vec<u32> = client.sockets.iter().map(|(_, i)| *i).collect();
        for idx in socks {
            remove_socket(&mut self.core, ctx, idx, reason, false);
        }
        self.core.clients.remove(sid);
    }

    fn on_mail(&mut self, ctx: &mut Ctx<'_, SioMail>, mail: SioMail) {
        self.apply_mail(ctx, mail);
    }

    fn on_timers(&mut self, ctx: &mut Ctx<'_, SioMail>, now: Instant) {
        while let Some((idx, gen, id)) = self.core.ack_due.pop_due(now) {
            let live = self.core.sockets.get(idx as usize).and_then(|s| s.as_ref()).is_some_and(|s| s.gen == gen && s.connected);
            if !live {
                continue;
            }
            if let Some(PendingAck::Callback(cb)) = self.core.socket_mut(idx).acks.remove(&id) {
                guarded(&mut self.core, ctx, idx, |s| cb(s, Err(AckTimeout)));
            }
        }
        while let Some(id) = self.core.collect_due.pop_due(now) {
            self.core.finish_collector(ctx, id, true);
        }
        while let Some(sid) = self.core.connect_due.pop_due(now) {
            if self.core.clients.get(&sid).is_some_and(|c| c.sockets.is_empty()) {
                tracing::debug!(sid = %sid, "no namespace joined in time; closing");
                ctx.close(&sid);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        [self.core.ack_due.next(), self.core.connect_due.next(), self.core.collect_due.next()].into_iter().flatten().min()
    }
}
