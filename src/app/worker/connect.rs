//! Joining a namespace: the checks (namespace limit, the namespace exists), the connect
//! middleware in order — synchronous ones at once, a deferred one suspending the connection
//! until its `ConnectDecision` arrives by mail (or its deadline passes) — then the socket, its
//! CONNECT, the connection handler, and the packets the client sent meanwhile, in order.
//!
//! A connection waiting for a verdict holds the client's packets for that namespace, within
//! `SocketLimits::{max_held_packets, max_held_bytes}`; one more closes the session (Node closes
//! a client that sends to a namespace it has not joined). Every connection of the worker holds
//! within `max_worker_held_bytes` together: past it the largest holders are closed first.
//!
//! Must never: run a middleware before the previous one accepted, keep a waiting connection
//! past its deadline or its client, or hold more than the limits.

use std::any::Any;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use serde_json::{json, Value};

use super::retain::Restored;
use super::{guard, guarded, now_ms, refuse, RecoveryMail, SioMail, SioWorker};
use crate::app::admin_ui::auth::EmitFirst;
use crate::app::defer::{ConnectDecision, Verdict, Waiting};
use crate::app::namespace::{Gate, Handshake, Namespace};
use crate::engine::{Ctx, SendFlags, SessionId};
use crate::proto::sio::{encode, Packet};

/// A connection on its way into a namespace, suspended on a deferred middleware.
pub(crate) struct PendingConnect {
    pub(crate) client: SessionId,
    pub(crate) nsp: String,
    pub(crate) ns: Arc<Namespace>,
    pub(crate) hs: Handshake,
    /// The next middleware to run.
    pub(crate) next: usize,
    /// What a middleware attached (the socket's data slot).
    pub(crate) data: Option<Box<dyn Any + Send>>,
    /// The client's packets for the namespace, with their sizes, in order.
    pub(crate) held: VecDeque<(Packet, usize)>,
    pub(crate) held_bytes: usize,
    /// Workers yet to answer whether they kept the state this client asks to recover (0 when
    /// it waits for a middleware instead).
    pub(crate) restoring: usize,
    /// While a deferred middleware decides: dropped with the connection, which its
    /// `ConnectDecision::is_waiting` then tells.
    pub(crate) waiting: Option<Waiting>,
}

impl PendingConnect {
    pub(crate) fn new(client: SessionId, nsp: String, ns: Arc<Namespace>, hs: Handshake) -> PendingConnect {
        PendingConnect { client, nsp, ns, hs, next: 0, data: None, held: VecDeque::new(), held_bytes: 0, restoring: 0, waiting: None }
    }
}

impl SioWorker {
    /// A CONNECT from the client.
    pub(super) fn connect(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: SessionId, p: Packet) {
        let core = &mut self.core;
        if core.sockets.client_socket(sid, &p.nsp).is_some() || core.pending_token(sid, &p.nsp).is_some() {
            return; // already connected (or connecting) to this namespace
        }
        let Some(client) = core.sockets.clients.get(&sid) else { return };
        if client.sockets.len() + client.pending.len() >= core.limits.max_namespaces_per_client {
            tracing::debug!(session = ?sid, "too many namespaces for one client");
            return refuse(ctx, sid, &p.nsp, &json!({ "message": "Too many namespaces" }));
        }
        let namespaces = core.namespaces.clone();
        // The dynamic-namespace filter is user code.
        let Some(ns) = guard::catch("namespace filter", "", || namespaces.resolve(&p.nsp)) else {
            return refuse(ctx, sid, &p.nsp, &json!({ "message": "Internal server error" }));
        };
        let Some(ns) = ns else {
            return refuse(ctx, sid, &p.nsp, &json!({ "message": "Invalid namespace" }));
        };
        let hs = Handshake {
            nsp: p.nsp.clone(),
            auth: p.data,
            query: client.query.clone(),
            origin: client.origin.clone(),
            headers: client.headers.clone(),
            issued: now_ms(),
            address: client.address,
            peer: client.peer,
        };
        let pc = PendingConnect::new(sid, p.nsp, ns, hs);
        if let Some((pid, offset)) = self.core.store.as_ref().and_then(|_| recovery_auth(pc.hs.auth.as_ref())) {
            return self.recover(ctx, pc, pid, offset);
        }
        self.gates(ctx, pc);
    }

    /// A client asks to recover (`pid` and `offset` in its CONNECT auth): from this worker's
    /// store, else from the others' (by mail; its connection waits, as for a middleware).
    fn recover(&mut self, ctx: &mut Ctx<'_, SioMail>, mut pc: PendingConnect, pid: String, offset: String) {
        let store = self.core.store.as_mut().expect("recovery is on");
        match store.restore(ctx.now(), &pid, &pc.nsp, &offset) {
            Ok(r) => return self.establish(ctx, pc, Some(r)),
            Err(Some(kept)) => {
                store.stats.not_recovered += 1;
                guard::drop_quietly(kept);
            }
            Err(None) if ctx.workers() > 1 => {
                pc.restoring = ctx.workers() - 1;
                let (nsp, reply_to) = (pc.nsp.clone(), ctx.worker());
                let token = self.suspend(ctx, pc);
                for w in (0..ctx.workers()).filter(|&w| w != reply_to) {
                    let (pid, nsp, offset) = (pid.clone(), nsp.clone(), offset.clone());
                    ctx.post(w, SioMail::Recovery(RecoveryMail::Restore { pid, nsp, offset, reply_to, token }));
                }
                return;
            }
            Err(None) => store.stats.not_recovered += 1,
        }
        self.gates(ctx, pc);
    }

    /// Recovery mail from another worker.
    pub(super) fn recovery_mail(&mut self, ctx: &mut Ctx<'_, SioMail>, m: RecoveryMail) {
        match m {
            RecoveryMail::Restore { pid, nsp, offset, reply_to, token } => {
                let state = match self.core.store.as_mut().map(|s| s.restore(ctx.now(), &pid, &nsp, &offset)) {
                    Some(Ok(r)) => Some(Box::new(r)),
                    Some(Err(kept)) => {
                        guard::drop_quietly(kept);
                        None
                    }
                    None => None,
                };
                ctx.post(reply_to, SioMail::Recovery(RecoveryMail::Restored { token, state }));
            }
            RecoveryMail::Restored { token, state } => {
                let Some(pc) = self.core.pending.get_mut(&token).filter(|pc| pc.restoring > 0) else {
                    // The connection went on without it (its client left, or it timed out).
                    return guard::drop_quietly(state);
                };
                if let Some(r) = state {
                    let pc = self.core.take_pending(token).expect("found");
                    return self.establish(ctx, pc, Some(*r));
                }
                pc.restoring -= 1;
                if pc.restoring == 0 {
                    let pc = self.core.take_pending(token).expect("found");
                    if let Some(st) = self.core.store.as_mut() {
                        st.stats.not_recovered += 1;
                    }
                    self.gates(ctx, pc);
                }
            }
        }
    }

    /// Parks a connection until mail settles it (a verdict, or recovery answers), with a
    /// deadline; returns its token.
    fn suspend(&mut self, ctx: &mut Ctx<'_, SioMail>, pc: PendingConnect) -> u64 {
        let core = &mut self.core;
        core.next_token += 1;
        let token = core.next_token;
        if let Some(c) = core.sockets.clients.get_mut(&pc.client) {
            c.pending.push((Rc::from(pc.nsp.as_str()), token));
        }
        core.pending.insert(token, pc);
        // Settled connections' entries wait for their deadline: compact them away once they
        // outnumber the waiting ones, so the queue stays within twice the waiting connections
        // however fast a client connects and leaves.
        if core.decision_due.len() > 2 * core.pending.len() {
            let pending = &core.pending;
            core.decision_due.retain(|_, t| pending.contains_key(t));
        }
        core.decision_due.push(ctx.now() + core.limits.connect_decision_timeout, token);
        token
    }

    /// Runs the middleware from `pc.next` on; connects when every one accepted.
    fn gates(&mut self, ctx: &mut Ctx<'_, SioMail>, mut pc: PendingConnect) {
        while let Some(gate) = pc.ns.middleware.get(pc.next).cloned() {
            pc.next += 1;
            match gate {
                Gate::Now(m) => match guard::catch("connect middleware", "", || m(&pc.hs)) {
                    Some(Ok(())) => {}
                    Some(Err(data)) => {
                        let data = match data {
                            Value::String(s) => json!({ "message": s }),
                            other => other,
                        };
                        return refuse(ctx, pc.client, &pc.nsp, &data);
                    }
                    None => return refuse(ctx, pc.client, &pc.nsp, &json!({ "message": "Internal server error" })),
                },
                Gate::Later(m) => {
                    let (client, nsp) = (pc.client, pc.nsp.clone());
                    let hs = pc.hs.clone();
                    let waiting = Waiting::new();
                    let flag = waiting.flag();
                    pc.waiting = Some(waiting);
                    // The verdict arrives by mail, never inside this call: register first.
                    let token = self.suspend(ctx, pc);
                    let decision = ConnectDecision::new(ctx.remote(), token, flag);
                    if guard::catch("deferred connect middleware", "", || m(&hs, decision)).is_none() {
                        // The decision was dropped in the unwind: its refusal is on its way.
                        tracing::debug!(session = ?client, nsp, "deferred middleware panicked");
                    }
                    return;
                }
            }
        }
        self.establish(ctx, pc, None);
    }

    /// Every middleware accepted (or the client recovered its socket, `restored`): the socket
    /// joins, gets its CONNECT, the connection handler runs, then the packets held meanwhile
    /// are handled in order. A recovered socket gets its id, rooms and data back, and the
    /// packets it missed before its CONNECT (as Node sends them).
    fn establish(&mut self, ctx: &mut Ctx<'_, SioMail>, pc: PendingConnect, restored: Option<Restored>) {
        let core = &mut self.core;
        if core.sockets.clients.get(&pc.client).is_none_or(|c| c.closing_reason.is_some()) || !ctx.has_session(pc.client) {
            // The client left meanwhile; what it held is user data to drop.
            return guard::drop_quietly((pc, restored));
        }
        let mut data = pc.data;
        let mut rooms = Vec::new();
        let mut identity = None;
        if let Some(r) = restored {
            for enc in &r.missed {
                for p in enc.packets() {
                    if ctx.send(pc.client, p, SendFlags::default()).is_err() {
                        break;
                    }
                }
            }
            rooms = r.rooms;
            data = r.data.or(data);
            identity = Some((r.id, r.pid));
        }
        // What the admin UI's login emits before the CONNECT (its `session`), as Node's
        // middleware does.
        if let Some(first) = data.as_ref().and_then(|d| d.downcast_ref::<EmitFirst>()) {
            for p in encode::event(&pc.nsp, first.event, &first.args, None, Vec::new()).packets() {
                let _ = ctx.send(pc.client, p, SendFlags::default());
            }
            data = None;
        }
        let idx = core.new_socket(pc.client, &pc.nsp, pc.ns.clone(), pc.hs, ctx.worker(), identity);
        let tap = core.admin.clone();
        if let Some(tap) = &tap {
            tap.watch(&pc.nsp, true);
            if pc.nsp == tap.nsp {
                tap.announce(core, ctx);
            }
            // Node's adapter tells `room_joined` for the socket's own room before the CONNECT.
            let id = core.sockets.at(idx).id.clone();
            tap.joined(core, ctx, idx, &id);
        }
        for room in &rooms {
            if let Err(e) = core.join_noted(ctx, idx, room) {
                tracing::debug!(room, error = %e, "a recovered room was refused");
            }
        }
        if let Some(d) = data {
            core.sockets.at_mut(idx).data = Some(d);
        }
        let s = core.sockets.at(idx);
        let enc = match &s.pid {
            Some(pid) => encode::connect_with_pid(&pc.nsp, &s.id, pid),
            None => encode::connect(&pc.nsp, &s.id),
        };
        core.send_to(ctx, idx, &enc, SendFlags::default());
        if let Some(tap) = &tap {
            tap.connected(core, ctx, idx);
        }
        if let Some(h) = pc.ns.on_connection.clone() {
            guarded(core, ctx, idx, "connection handler", |s| h(s));
        }
        for (p, size) in pc.held {
            self.dispatch(ctx, pc.client, p, size);
        }
    }

    /// A deferred middleware's verdict on connection `token`.
    pub(super) fn decided(&mut self, ctx: &mut Ctx<'_, SioMail>, token: u64, verdict: Verdict) {
        let Some(mut pc) = self.core.take_pending(token) else {
            return; // decided already (timed out), or the client left
        };
        match verdict {
            Verdict::Accept(data) => {
                if data.is_some() {
                    pc.data = data;
                }
                self.gates(ctx, pc);
            }
            Verdict::Refuse(data) => refuse(ctx, pc.client, &pc.nsp, &data),
        }
    }

    /// Holds a packet for a namespace whose connection waits for a verdict; gives the packet
    /// back when there is no such connection. Past the limits the session is closed.
    pub(super) fn hold(&mut self, ctx: &mut Ctx<'_, SioMail>, sid: SessionId, p: Packet, size: usize) -> Option<Packet> {
        const WHY: &str = "too many packets for a namespace still connecting";
        let Some(token) = self.core.pending_token(sid, &p.nsp) else { return Some(p) };
        let limits = self.core.limits;
        let pc = &self.core.pending[&token];
        let mine = pc.held_bytes + size;
        if pc.held.len() >= limits.max_held_packets || mine > limits.max_held_bytes {
            self.core.stats.held_overflow += 1;
            self.fail(ctx, sid, &WHY);
            return None;
        }
        // Past the worker's budget the largest holders go, this connection included when none
        // holds more: the connections that filled it, not the one that came next.
        while self.core.held_bytes + size > limits.max_worker_held_bytes {
            let largest = self.core.pending.iter().filter(|(t, _)| **t != token).max_by_key(|(_, pc)| pc.held_bytes).map(|(t, pc)| (*t, pc.held_bytes));
            self.core.stats.held_overflow += 1;
            match largest {
                Some((victim, held)) if held > mine => {
                    let pc = self.core.take_pending(victim).expect("found above");
                    let client = pc.client;
                    guard::drop_quietly(pc);
                    self.fail(ctx, client, &WHY);
                }
                _ => {
                    self.fail(ctx, sid, &WHY);
                    return None;
                }
            }
        }
        let pc = self.core.pending.get_mut(&token).expect("registered with its client");
        pc.held_bytes += size;
        pc.held.push_back((p, size));
        self.core.held_bytes += size;
        None
    }

    /// Connections whose verdict did not come in time are refused.
    pub(super) fn decisions_due(&mut self, ctx: &mut Ctx<'_, SioMail>, now: std::time::Instant) {
        while let Some(token) = self.core.decision_due.pop_due(now) {
            if let Some(pc) = self.core.take_pending(token) {
                if pc.restoring > 0 {
                    // Not every worker answered in time: a fresh socket.
                    self.gates(ctx, pc);
                    continue;
                }
                tracing::debug!(session = ?pc.client, nsp = pc.nsp, "a deferred connect middleware did not decide in time");
                self.core.stats.connect_decision_timeouts += 1;
                refuse(ctx, pc.client, &pc.nsp, &json!({ "message": "Connection timed out" }));
            }
        }
    }
}

impl super::WorkerCore {
    /// The token of `client`'s connection to `nsp` waiting for a verdict.
    pub(super) fn pending_token(&self, client: SessionId, nsp: &str) -> Option<u64> {
        self.sockets.clients.get(&client)?.pending.iter().find(|(n, _)| **n == *nsp).map(|(_, t)| *t)
    }

    /// Takes a waiting connection out of the table and its client's list.
    pub(super) fn take_pending(&mut self, token: u64) -> Option<PendingConnect> {
        let pc = self.pending.remove(&token)?;
        self.held_bytes -= pc.held_bytes;
        if let Some(c) = self.sockets.clients.get_mut(&pc.client) {
            c.pending.retain(|(_, t)| *t != token);
        }
        Some(pc)
    }

    /// A client is gone: its waiting connections are dropped (a verdict arriving later misses).
    pub(super) fn drop_pending_of(&mut self, client: SessionId) {
        let tokens: Vec<u64> = self.sockets.clients.get(&client).map(|c| c.pending.iter().map(|(_, t)| *t).collect()).unwrap_or_default();
        for t in tokens {
            if let Some(pc) = self.take_pending(t) {
                // The handshake and held packets hold client data; data a middleware attached
                // is a user value: its drop is user code.
                guard::drop_quietly(pc);
            }
        }
    }
}

/// The `pid` and `offset` a client sends in its CONNECT auth to recover (both strings).
fn recovery_auth(auth: Option<&Value>) -> Option<(String, String)> {
    let a = auth?.as_object()?;
    Some((a.get("pid")?.as_str()?.to_string(), a.get("offset")?.as_str()?.to_string()))
}
