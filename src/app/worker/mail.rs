//! What crosses workers: the mail a worker (or a `ServerHandle` on any thread) sends another,
//! broadcast fan-out (local delivery plus one post of the same `Arc` per other worker), and
//! applying the mail this worker receives.
//!
//! A broadcast is encoded once by whoever emits it; each worker delivers the same shared
//! packets to its own members.
//!
//! Must never: touch another worker's sockets (it posts mail instead), encode a packet once per
//! recipient, or block on another worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::acks::PendingAck;
use super::{disconnect_client, remove_socket, WorkerCore};
use crate::app::adapter::{AckTarget, Outbound};
use crate::app::handle::SocketInfo;
use crate::app::namespace::{BroadcastAckCallback, DisconnectReason};
use crate::app::pending::{AckSink, Part, RoomNames};
use crate::engine::{Ctx, SendFlags};
use crate::proto::sio::{encode, Encoded};

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
    /// Its connection-state-recovery offset (already in `packet`), when recovery is on: every
    /// worker that delivers it keeps it for the recovery window.
    pub offset: Option<u64>,
}

/// The ack of a broadcast: the id every recipient answers with, and who collects.
#[derive(Debug, Clone)]
pub struct BroadcastAck {
    /// The ack id every recipient answers with.
    pub id: u64,
    /// Who collects the answers.
    pub origin: AckOrigin,
    /// When the collection ends.
    pub deadline: Instant,
}

/// Who collects the answers to a broadcast with ack.
#[derive(Debug, Clone)]
pub enum AckOrigin {
    /// The worker of the emitting socket (`Operator::emit_with_ack` inside a handler).
    Worker(usize),
    /// A `ServerHandle` caller: every worker reports to the shared sink directly.
    Handle(Arc<AckSink>),
}

/// Mail between workers (and from `ServerHandle`s).
pub enum SioMail {
    /// Deliver a broadcast to this worker's matching sockets.
    Broadcast(Arc<Broadcast>),
    /// A broadcast from a `ServerHandle`: delivered like [`SioMail::Broadcast`], and counted
    /// as emitted by the one worker it is posted to this way (the others get `Broadcast`).
    Publish(Arc<Broadcast>),
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
    /// Answer once everything posted before has been handled (a barrier).
    Flush {
        /// This worker's part of the answer.
        part: Part<()>,
    },
    /// Count the selected sockets.
    Count {
        /// Which sockets.
        sel: Arc<Selector>,
        /// This worker's part of the answer.
        part: Part<usize>,
    },
    /// Describe the selected sockets.
    Fetch {
        /// Which sockets.
        sel: Arc<Selector>,
        /// This worker's part of the answer.
        part: Part<Vec<SocketInfo>>,
    },
    /// Name the rooms of a namespace that have a member here.
    Rooms {
        /// The namespace.
        nsp: Arc<str>,
        /// This worker's part of the answer.
        part: Part<RoomNames>,
    },
    /// To a broadcast's origin, from the cluster adapter: the other nodes are `remote` more
    /// reporters (each then reports with [`SioMail::AckCount`] and answers with
    /// [`SioMail::AckAnswer`]).
    AckNodes {
        /// The broadcast's ack id.
        id: u64,
        /// Other nodes that will report.
        remote: usize,
    },
    /// To a broadcast's origin: this worker sent it to `count` sockets.
    AckCount {
        /// The broadcast's ack id.
        id: u64,
        /// Recipients on the reporting worker.
        count: usize,
    },
    /// A deferred ack answer or connect verdict, from user code on any thread.
    Deferred(crate::app::defer::DeferredMail),
    /// Connection state recovery between workers: a client came back on another worker.
    Recovery(RecoveryMail),
    /// A question of the admin UI (`admin_ui`).
    Admin(crate::app::admin_ui::tap::AdminMail),
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

/// A client that came back with a `pid` asks the other workers for its kept state.
pub enum RecoveryMail {
    /// Restore the socket kept under `pid` (in namespace `nsp`) with the packets after
    /// `offset`, answering `Restored` to worker `reply_to`.
    Restore {
        /// The client's private id.
        pid: String,
        /// The namespace it reconnects to.
        nsp: String,
        /// The last offset it saw.
        offset: String,
        /// The worker waiting.
        reply_to: usize,
        /// Its pending connection.
        token: u64,
    },
    /// The answer: the state, or `None` (this worker did not keep it).
    Restored {
        /// The pending connection.
        token: u64,
        /// The kept state and the missed packets.
        state: Option<Box<super::retain::Restored>>,
    },
}

impl WorkerCore {
    /// Keeps a delivered packet for connection state recovery, if it has an offset.
    pub(crate) fn keep_packet(&mut self, ctx: &Ctx<'_, SioMail>, b: &Arc<Broadcast>) {
        if let (Some(store), Some(offset)) = (self.store.as_mut(), b.offset) {
            store.log(ctx.now(), b.clone(), offset);
        }
    }

    /// Delivers a broadcast to this worker's matching sockets; returns how many got it.
    pub(crate) fn deliver(&mut self, ctx: &mut Ctx<'_, SioMail>, b: &Broadcast) -> usize {
        let targets = self.select(&b.sel);
        // An `on_any_outgoing` hook sees the event: decoded once here, told per recipient.
        if let Some(&first) = targets.first() {
            if self.sockets.at(first).ns.any_outgoing.is_some() {
                if let Some((event, args)) = decode_event(&b.packet) {
                    for &idx in &targets {
                        self.outgoing(ctx, idx, &event, &args);
                    }
                }
            }
        }
        for &idx in &targets {
            let s = self.sockets.at_mut(idx);
            if let Some(ack) = &b.ack {
                let key = (idx, s.gen);
                // A recipient at its pending-ack limit still gets the event, but its answer is
                // not collected: the collection ends at its deadline without it.
                let collect = PendingAck::Collect { origin: ack.origin.clone() };
                if self.acks.arm(&mut s.acks, key, ack.deadline, collect, Some(ack.id)).is_err() {
                    tracing::debug!(socket = %s.id, "too many pending acks; a broadcast's ack will not be collected");
                }
            }
            let mut delivered = true;
            for p in b.packet.packets() {
                if ctx.send(s.client, p, b.flags).is_err() {
                    delivered = false;
                    break;
                }
            }
            self.deliveries += delivered as u64;
        }
        self.compact_acks();
        targets.len()
    }

    /// Broadcasts: local delivery, plus one post of the same `Arc` to every other worker (and,
    /// in a cluster, to the other nodes).
    pub(crate) fn broadcast(&mut self, ctx: &mut Ctx<'_, SioMail>, b: Broadcast) -> usize {
        self.broadcast_shared(ctx, Arc::new(b))
    }

    fn broadcast_shared(&mut self, ctx: &mut Ctx<'_, SioMail>, b: Arc<Broadcast>) -> usize {
        self.broadcasts += 1;
        let n = self.deliver(ctx, &b);
        self.keep_packet(ctx, &b);
        let me = ctx.worker();
        for w in (0..ctx.workers()).filter(|&w| w != me) {
            ctx.post(w, SioMail::Broadcast(b.clone()));
        }
        // An acked broadcast goes to the other nodes as a request of its own
        // (`broadcast_with_ack`).
        if let (Some(c), None) = (&self.cluster, &b.ack) {
            // The admin UI's events never crowd out the application's broadcasts.
            if self.admin.as_ref().is_some_and(|t| t.nsp == b.sel.nsp) {
                if !c.send_low(Outbound::Broadcast(b)) {
                    self.admin_budget.not_published += 1;
                }
            } else {
                c.send(Outbound::Broadcast(b));
            }
        }
        n
    }

    #[allow(clippy::too_many_arguments)] // one broadcast's whole description; called in one place
    /// Broadcasts an event whose every recipient must ack within `timeout`; `cb` runs on the
    /// emitting socket with every answer, or with those that came before the timeout. Gives
    /// `cb` back, with nothing sent, when the socket is at its pending-ack limit.
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
    ) -> Result<(), BroadcastAckCallback> {
        let worker = ctx.worker();
        let id = self.acks.next_broadcast_id(worker);
        let deadline = ctx.now() + timeout;
        let s = self.sockets.at_mut(idx);
        let key = (idx, s.gen);
        // In a cluster, the other nodes count as one more reporter until the adapter knows how
        // many they are.
        let reporters = ctx.workers() - 1 + usize::from(self.cluster.is_some());
        self.acks.start_collector(&mut s.acks, id, key, reporters, deadline, cb)?;
        let packet = encode::event(&sel.nsp, event, args, Some(id), attachments);
        let b = Arc::new(Broadcast { sel, packet, flags, ack: Some(BroadcastAck { id, origin: AckOrigin::Worker(worker), deadline }), offset: None });
        let n = self.broadcast_shared(ctx, b.clone());
        if let Some(c) = &self.cluster {
            if !c.send(Outbound::AckedBroadcast(b, AckTarget::Worker { worker, id }, timeout)) {
                // Not handed to the adapter: no other node will report.
                self.acks.nodes(id, 0);
            }
        }
        if self.acks.count(id, n, false) {
            // Called from user code: the callback runs once that code has returned.
            self.intents.push_back((key.0, key.1, super::Intent::Collected(id)));
        }
        Ok(())
    }
}

/// Applies one piece of mail from another worker or a `ServerHandle`.
pub(crate) fn apply(core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, mail: SioMail) {
    match mail {
        SioMail::Publish(b) => {
            core.broadcasts += 1;
            apply(core, ctx, SioMail::Broadcast(b));
        }
        SioMail::Broadcast(b) => {
            if let Some(tap) = &core.admin {
                tap.note(&b.sel, ctx.now());
            }
            // One copy per worker, not per recipient: keeps reference counts core-local.
            let local = Arc::new(Broadcast { sel: b.sel.clone(), packet: b.packet.to_local(), flags: b.flags, ack: b.ack.clone(), offset: b.offset });
            let n = core.deliver(ctx, &local);
            core.keep_packet(ctx, &local);
            match &b.ack {
                Some(BroadcastAck { id, origin: AckOrigin::Worker(origin), .. }) => ctx.post(*origin, SioMail::AckCount { id: *id, count: n }),
                Some(BroadcastAck { origin: AckOrigin::Handle(sink), deadline, .. }) => {
                    sink.report(n);
                    if n > 0 {
                        core.handle_acks.arm(*deadline, sink.clone());
                    }
                }
                None => {}
            }
        }
        SioMail::AckNodes { id, remote } => {
            if core.acks.nodes(id, remote) {
                super::finish_collector(core, ctx, id, false);
            }
        }
        SioMail::AckCount { id, count } => {
            if core.acks.count(id, count, true) {
                super::finish_collector(core, ctx, id, false);
            }
        }
        SioMail::AckAnswer { id, args, attachments } => {
            if core.acks.answer(id, (args, attachments)) {
                super::finish_collector(core, ctx, id, false);
            }
        }
        SioMail::Join { sel, rooms } => {
            for idx in core.select(&sel) {
                for r in rooms.iter() {
                    if let Err(e) = core.join_noted(ctx, idx, r) {
                        tracing::debug!(room = %r, error = %e, "a server-side join was refused");
                    }
                }
            }
        }
        SioMail::Leave { sel, rooms } => {
            for idx in core.select(&sel) {
                for r in rooms.iter() {
                    core.leave_noted(ctx, idx, r);
                }
            }
        }
        SioMail::Disconnect { sel, close_client } => {
            for idx in core.select(&sel) {
                if close_client {
                    // A socket selected earlier may be gone with a client closed before it.
                    let Some(client) = core.sockets.get(idx).filter(|s| s.connected).map(|s| s.client) else { continue };
                    disconnect_client(core, ctx, client);
                } else {
                    remove_socket(core, ctx, idx, DisconnectReason::ServerNamespaceDisconnect, true);
                }
            }
        }
        SioMail::Deferred(_) | SioMail::Recovery(_) | SioMail::Admin(_) => unreachable!("handled by the worker before apply"),
        SioMail::Flush { part } => part.answer(()),
        SioMail::Count { sel, part } => part.answer(core.select(&sel).len()),
        SioMail::Fetch { sel, part } => {
            let worker = ctx.worker();
            let found = core.select(&sel).into_iter().map(|idx| core.describe(idx, worker)).collect();
            part.answer(found);
        }
        SioMail::Rooms { nsp, part } => part.answer(RoomNames(core.room_names(&nsp))),
    }
}

/// The event name and arguments of an encoded EVENT (for the outgoing hook).
fn decode_event(packet: &Encoded) -> Option<(String, Vec<Value>)> {
    let text = packet.packet_text();
    let start = text.iter().position(|&b| b == b'[')?;
    let Value::Array(mut all) = serde_json::from_slice(&text[start..]).ok()? else { return None };
    if all.is_empty() {
        return None;
    }
    let name = match all.remove(0) {
        Value::String(s) => s,
        other => other.to_string(),
    };
    Some((name, all))
}
