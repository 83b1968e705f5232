//! The Redis adapter: one dedicated thread (a single-threaded tokio runtime driving the `redis`
//! crate's async pub/sub and a multiplexed connection for publishing) between the workers and
//! Redis.
//!
//! - Out: a worker (or a `ServerHandle`) hands each message to [`RedisAdapter::send`], a
//!   `try_send` on a bounded queue that never blocks; the thread publishes what it finds queued
//!   as one pipeline (one round trip for a burst). A full queue, or Redis being down, drops
//!   the message and counts it as not delivered.
//! - In: each message from Redis is decoded once, into the same encode-once `Broadcast` (or
//!   room / disconnect mail) the workers already handle, and posted to every worker through
//!   its mailbox (`Poster`). Messages carrying this node's own uid are dropped.
//! - Outage: the thread logs the loss once, keeps retrying with back-off (100 ms doubling to
//!   5 s), resubscribes, and logs the recovery with the count of messages not delivered
//!   meanwhile. The workers keep serving their clients throughout.
//!
//! Must never: be called into from a worker except through [`RedisAdapter::send`], or queue
//! without bound.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde_json::Value;

use super::AckTarget;
use super::{event_of, node, python, Adapter, ClusterStats, Counters, Inbound, Outbound, Question, QuestionKind, RedisConfig, RedisFormat, Reply};
use crate::app::handle::{HandleError, ServerHandle};
use crate::app::namespace::Namespaces;
use crate::app::worker::{Broadcast, Selector, SioMail};
use crate::rt::threads::Poster;

/// How long connecting (and subscribing, and one publish) may take before the attempt counts
/// as a failure.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most messages published in one pipeline.
const BATCH: usize = 256;
/// How a bridge node's uid / host_id begins (`--redis-format bridge`): its own messages, which
/// it publishes in both formats.
pub const BRIDGE_MARK: &str = "bridge~";
/// How the uid / host_id of a relayed copy begins: a foreign broadcast the relaying bridge node
/// republished in the other format.
pub const RELAY_MARK: &str = "relay~";
const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Settles what waits for the other nodes' answers to a message they will never get: a
/// question is answered [`HandleError::TimedOut`], an acked broadcast is told that no other
/// node will report (a worker's through its mailbox, when `poster` is given; without it, the
/// caller of [`Adapter::send`] settles it).
fn unheard(out: Outbound, poster: Option<&Poster<SioMail>>) {
    match out {
        Outbound::Ask(q) => (q.reply)(Err(HandleError::TimedOut)),
        Outbound::AckedBroadcast(_, target, _) => nodes_known(poster, &target, 0),
        _ => {}
    }
}

/// Tells an acked broadcast's collector how many other nodes will report.
fn nodes_known(poster: Option<&Poster<SioMail>>, target: &AckTarget, remote: usize) {
    match (target, poster) {
        (AckTarget::Sink(sink), _) => sink.nodes_known(remote),
        (AckTarget::Worker { worker, id }, Some(p)) => {
            let _ = p.post(*worker, SioMail::AckNodes { id: *id, remote });
        }
        (AckTarget::Worker { .. }, None) => {}
    }
}

/// The workers' side of the Redis adapter.
pub struct RedisAdapter {
    tx: mpsc::Sender<Outbound>,
    up: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

impl Adapter for RedisAdapter {
    fn send(&self, out: Outbound) -> bool {
        let dropped = if self.up.load(Ordering::Relaxed) {
            match self.tx.try_send(out) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Full(o) | mpsc::error::TrySendError::Closed(o)) => o,
            }
        } else {
            out
        };
        Counters::add(&self.counters.not_delivered, 1);
        unheard(dropped, None);
        false
    }

    fn stats(&self) -> ClusterStats {
        ClusterStats { connected: self.up.load(Ordering::Relaxed), ..self.counters.snapshot() }
    }
}

/// The adapter thread, before the workers exist to be posted to.
pub struct Pending {
    client: redis::Client,
    cfg: RedisConfig,
    rx: mpsc::Receiver<Outbound>,
    up: Arc<AtomicBool>,
    counters: Arc<Counters>,
}

/// The running adapter thread.
pub struct RedisThread {
    stop: Arc<Notify>,
    join: Option<JoinHandle<()>>,
}

impl RedisThread {
    /// Stops the thread (it drops what is still queued) and waits for it.
    pub fn stop(&mut self) {
        self.stop.notify_one();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for RedisThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Checks `cfg` (the URL) and makes the workers' side and the thread still to start.
pub fn prepare(cfg: RedisConfig) -> Result<(Arc<RedisAdapter>, Pending), String> {
    let client = redis::Client::open(cfg.url.as_str()).map_err(|e| format!("--redis {}: {e}", cfg.url))?;
    if cfg.relay && cfg.format != RedisFormat::Bridge {
        return Err("--redis-relay needs --redis-format bridge".into());
    }
    if cfg.sharded && cfg.format != RedisFormat::Node {
        return Err("--redis-sharded speaks the Node format only (--redis-format node)".into());
    }
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let up = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    Ok((Arc::new(RedisAdapter { tx, up: up.clone(), counters: counters.clone() }), Pending { client, cfg, rx, up, counters }))
}

/// A random id: `len` characters of `alphabet`.
fn random_id(len: usize, alphabet: &[u8]) -> String {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).expect("the OS random source");
    bytes.iter().map(|b| alphabet[*b as usize % alphabet.len()] as char).collect()
}

impl Pending {
    /// Starts the thread; it posts what it receives to the workers through `poster`.
    pub fn spawn(self, poster: Poster<SioMail>, namespaces: Arc<Namespaces>) -> RedisThread {
        let stop = Arc::new(Notify::new());
        let stop2 = stop.clone();
        let join = std::thread::Builder::new()
            .name("shardcast-redis".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a single-threaded tokio runtime");
                rt.block_on(run(self, poster, namespaces, stop2));
            })
            .expect("spawning the Redis adapter thread");
        RedisThread { stop, join: Some(join) }
    }
}

/// What the thread knows across sessions.
struct Node {
    client: redis::Client,
    cfg: RedisConfig,
    /// This node's uid (Node format) or host_id (Python format); both in bridge mode, where it
    /// starts with [`BRIDGE_MARK`].
    id: String,
    /// In bridge mode, the uid / host_id of the copies this node relays ([`RELAY_MARK`]).
    relay_id: Option<String>,
    /// Relayed copies waiting to be published (bridge mode with `relay`), at most `queue`.
    relays: Vec<(String, Vec<u8>)>,
    /// Whether another relaying bridge node was seen (logged once).
    other_relay_seen: bool,
    rx: mpsc::Receiver<Outbound>,
    up: Arc<AtomicBool>,
    counters: Arc<Counters>,
    poster: Poster<SioMail>,
    /// Set while Redis is unreachable (the outage was logged), with the not-delivered count
    /// when it started.
    down: Option<u64>,
    /// This node's own workers, to answer the other nodes' questions.
    local: ServerHandle,
    /// This node's questions waiting for the other nodes' answers, by request id.
    asks: HashMap<String, Asking>,
    /// Request ids handed out so far.
    next_request: u64,
    /// This node's acked broadcasts collecting the other nodes' acks, by request id, with
    /// their deadlines.
    acking: HashMap<String, (AckTarget, Instant)>,
    /// The server's namespaces, for their server-side event handlers.
    namespaces: Arc<Namespaces>,
    /// Messages from other nodes the workers still hold.
    inflight: Inflight,
}

/// One of this node's questions, collecting answers.
struct Asking {
    /// Answers still expected.
    missing: usize,
    items: Vec<Value>,
    deadline: Instant,
    reply: Reply,
}

async fn run(p: Pending, poster: Poster<SioMail>, namespaces: Arc<Namespaces>, stop: Arc<Notify>) {
    let (id, relay_id) = match p.cfg.format {
        RedisFormat::Node => (random_id(6, ALNUM), None),
        RedisFormat::Python => (random_id(32, b"0123456789abcdef"), None),
        RedisFormat::Bridge => {
            let r = random_id(6, ALNUM);
            (format!("{BRIDGE_MARK}{r}"), Some(format!("{RELAY_MARK}{r}")))
        }
    };
    let local = ServerHandle::new(poster.clone(), None);
    let queue = p.cfg.queue;
    let mut n = Node {
        client: p.client,
        cfg: p.cfg,
        id,
        relay_id,
        relays: Vec::new(),
        other_relay_seen: false,
        rx: p.rx,
        up: p.up,
        counters: p.counters,
        poster,
        down: None,
        local,
        asks: HashMap::new(),
        next_request: 0,
        acking: HashMap::new(),
        inflight: Inflight::new(queue),
        namespaces,
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        let err = match session(&mut n, &stop, &mut backoff).await {
            Ok(()) => return,
            Err(e) => e,
        };
        n.up.store(false, Ordering::Relaxed);
        // Questions in flight lose their answers with the connection.
        for (_, a) in n.asks.drain() {
            (a.reply)(Err(HandleError::TimedOut));
        }
        for (_, (target, _)) in n.acking.drain() {
            // A worker's collection ends at its own deadline.
            if let AckTarget::Sink(sink) = target {
                sink.expire();
            }
        }
        // What was queued for the lost connection is not delivered; from now on `send` counts
        // its drops itself.
        let mut dropped = 0;
        while let Ok(out) = n.rx.try_recv() {
            unheard(out, Some(&n.poster));
            dropped += 1;
        }
        Counters::add(&n.counters.not_delivered, dropped);
        if n.down.is_none() {
            Counters::add(&n.counters.outages, 1);
            let nd = n.counters.snapshot().not_delivered;
            n.down = Some(nd.saturating_sub(dropped));
            tracing::warn!(url = %n.cfg.url, error = %err, "Redis is unreachable: serving local clients only; broadcasts are not delivered to other nodes until it is back (retrying)");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.notified() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "Redis did not answer in time"))
}

async fn within<T>(f: impl std::future::Future<Output = redis::RedisResult<T>>) -> redis::RedisResult<T> {
    tokio::time::timeout(IO_TIMEOUT, f).await.map_err(|_| timed_out())?
}

/// One connection's life: subscribe, then publish and receive until Redis goes away (`Err`) or
/// the server stops (`Ok`).
async fn session(n: &mut Node, stop: &Notify, backoff: &mut Duration) -> redis::RedisResult<()> {
    let mut pubsub = within(n.client.get_async_pubsub()).await?;
    let prefix = n.cfg.channel().to_string();
    if n.cfg.format.speaks_node() {
        within(pubsub.psubscribe(node::pattern(&prefix))).await?;
        // Plain subscriptions (not a pattern), so that a Node node asking counts this one
        // (`PUBSUB NUMSUB` of the request channel).
        for nsp in &n.cfg.namespaces {
            let response = node::response_channel(&prefix, nsp);
            let specific = format!("{response}{}#", n.id);
            within(pubsub.subscribe(&[node::request_channel(&prefix, nsp), response, specific])).await?;
        }
    }
    if n.cfg.format.speaks_python() {
        within(pubsub.subscribe(n.cfg.python_channel())).await?;
    }
    let mut conn = within(n.client.get_multiplexed_async_connection()).await?;
    n.up.store(true, Ordering::Relaxed);
    *backoff = BACKOFF_MIN;
    if let Some(at) = n.down.take() {
        let lost = n.counters.snapshot().not_delivered.saturating_sub(at);
        tracing::warn!(url = %n.cfg.url, not_delivered = lost, "Redis is reachable again; resubscribed");
    } else {
        tracing::info!(url = %n.cfg.url, format = ?n.cfg.format, "cluster adapter connected to Redis");
    }
    let mut stream = pubsub.into_on_message();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let next_deadline = n.asks.values().map(|a| a.deadline).chain(n.acking.values().map(|a| a.1)).min();
        tokio::select! {
            _ = stop.notified() => return Ok(()),
            _ = tokio::time::sleep_until(next_deadline.unwrap_or_else(Instant::now).into()), if next_deadline.is_some() => expire(n),
            msg = stream.next() => {
                let Some(msg) = msg else {
                    return Err(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the subscription connection closed")));
                };
                receive(n, &prefix, &conn, msg.get_channel_name(), msg.get_payload_bytes());
                if !n.relays.is_empty() {
                    publish_relays(n, &mut conn).await?;
                }
            }
            out = n.rx.recv() => {
                let Some(out) = out else { return Ok(()) };
                batch.push(out);
                while batch.len() < BATCH {
                    match n.rx.try_recv() {
                        Ok(o) => batch.push(o),
                        Err(_) => break,
                    }
                }
                let r = publish(n, &prefix, &mut conn, &batch).await;
                let asked: Vec<Outbound> = batch.drain(..).filter(|o| matches!(o, Outbound::Ask(_) | Outbound::AckedBroadcast(..))).collect();
                r?;
                for o in asked {
                    match o {
                        Outbound::Ask(q) => ask(n, &prefix, &mut conn, q).await?,
                        Outbound::AckedBroadcast(b, target, timeout) => ask_acks(n, &prefix, &mut conn, &b, target, timeout).await?,
                        _ => {}
                    }
                }
            }
        }
    }
}

/// Encodes what the workers queued and publishes it as one pipeline.
async fn publish(n: &Node, prefix: &str, conn: &mut redis::aio::MultiplexedConnection, batch: &[Outbound]) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    let mut count = 0u64;
    let (node, python) = (n.cfg.format.speaks_node(), n.cfg.format.speaks_python());
    let python_channel = n.cfg.python_channel();
    for out in batch {
        match out {
            Outbound::Broadcast(b) if b.ack.is_some() => {} // acked broadcasts: local only for now
            Outbound::Broadcast(b) => {
                let Some(ev) = event_of(b) else { continue };
                // In bridge mode, once in each format.
                if node {
                    pipe.publish(node::channel(prefix, &b.sel), node::encode_broadcast(&n.id, b, &ev)).ignore();
                    count += 1;
                }
                if python {
                    pipe.publish(python_channel, python::encode_broadcast(&n.id, b, &ev)).ignore();
                    count += 1;
                }
            }
            Outbound::Ask(_) | Outbound::AckedBroadcast(..) => {} // asked one by one after the pipeline
            other => {
                if node {
                    if let Some((channel, payload)) = node::encode_request(&n.id, prefix, other) {
                        pipe.publish(channel, payload).ignore();
                        count += 1;
                    }
                }
                if python {
                    for payload in python::encode_request(&n.id, other) {
                        pipe.publish(python_channel, payload).ignore();
                        count += 1;
                    }
                }
            }
        }
    }
    if count == 0 {
        return Ok(());
    }
    match within(pipe.query_async::<()>(conn)).await {
        Ok(()) => {
            Counters::add(&n.counters.published, count);
            Ok(())
        }
        Err(e) => {
            Counters::add(&n.counters.not_delivered, count);
            Err(e)
        }
    }
}

/// Asks every other node `q` (Node format): as many answers are expected as the request
/// channel has other subscribers.
async fn ask(n: &mut Node, prefix: &str, conn: &mut redis::aio::MultiplexedConnection, q: Question) -> redis::RedisResult<()> {
    if !n.cfg.format.speaks_node() {
        // python-socketio's managers have no questions between nodes: the answer is this
        // node's alone.
        (q.reply)(Ok(Vec::new()));
        return Ok(());
    }
    n.next_request += 1;
    let request_id = format!("{}-{}", n.id, n.next_request);
    let (channel, body) = node::encode_question(&n.id, prefix, &request_id, q.kind, &q.sel, &q.data);
    let subs: Vec<(String, usize)> = match within(redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query_async(conn)).await {
        Ok(s) => s,
        Err(e) => {
            (q.reply)(Err(HandleError::TimedOut));
            return Err(e);
        }
    };
    let me = usize::from(n.cfg.namespaces.contains(&q.sel.nsp));
    let missing = subs.first().map_or(0, |s| s.1).saturating_sub(me);
    if missing == 0 {
        (q.reply)(Ok(Vec::new()));
        return Ok(());
    }
    n.asks.insert(request_id.clone(), Asking { missing, items: Vec::new(), deadline: Instant::now() + n.cfg.request_timeout, reply: q.reply });
    if let Err(e) = within(redis::cmd("PUBLISH").arg(&channel).arg(body).query_async::<()>(conn)).await {
        if let Some(a) = n.asks.remove(&request_id) {
            (a.reply)(Err(HandleError::TimedOut));
        }
        return Err(e);
    }
    Counters::add(&n.counters.published, 1);
    Ok(())
}

/// How many other nodes listen on request channel `channel` (`PUBSUB NUMSUB`, less this node).
async fn other_nodes(n: &Node, conn: &mut redis::aio::MultiplexedConnection, channel: &str, nsp: &str) -> redis::RedisResult<usize> {
    let subs: Vec<(String, usize)> = within(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query_async(conn)).await?;
    let me = usize::from(n.cfg.namespaces.iter().any(|x| x == nsp));
    Ok(subs.first().map_or(0, |s| s.1).saturating_sub(me))
}

/// Sends this node's acked broadcast to the other nodes (Node format): each answers with its
/// recipient count and each ack, to `target`, until the timeout.
async fn ask_acks(
    n: &mut Node,
    prefix: &str,
    conn: &mut redis::aio::MultiplexedConnection,
    b: &crate::app::worker::Broadcast,
    target: AckTarget,
    timeout: Duration,
) -> redis::RedisResult<()> {
    let ev = match (n.cfg.format, event_of(b)) {
        (f, Some(ev)) if f.speaks_node() => ev,
        // python-socketio's format has no acked broadcasts between nodes.
        _ => {
            nodes_known(Some(&n.poster), &target, 0);
            return Ok(());
        }
    };
    let channel = node::request_channel(prefix, &b.sel.nsp);
    let remote = match other_nodes(n, conn, &channel, &b.sel.nsp).await {
        Ok(r) => r,
        Err(e) => {
            nodes_known(Some(&n.poster), &target, 0);
            return Err(e);
        }
    };
    nodes_known(Some(&n.poster), &target, remote);
    if remote == 0 {
        return Ok(());
    }
    n.next_request += 1;
    let request_id = format!("{}-{}", n.id, n.next_request);
    let body = node::encode_acked_broadcast(&n.id, &request_id, b, &ev, timeout.as_millis() as u64);
    n.acking.insert(request_id.clone(), (target, Instant::now() + timeout));
    within(redis::cmd("PUBLISH").arg(&channel).arg(body).query_async::<()>(conn)).await?;
    Counters::add(&n.counters.published, 1);
    Ok(())
}

/// Answers the questions whose time is up with [`HandleError::TimedOut`], and ends the acked
/// broadcasts whose time is up with the acks that came.
fn expire(n: &mut Node) {
    let now = Instant::now();
    n.acking.retain(|_, (target, deadline)| match target {
        AckTarget::Sink(sink) => {
            if *deadline <= now {
                sink.expire();
            }
            *deadline > now && !sink.is_done()
        }
        // A worker's collection ends at its own deadline.
        AckTarget::Worker { .. } => *deadline > now,
    });
    let due: Vec<String> = n.asks.iter().filter(|(_, a)| a.deadline <= now).map(|(k, _)| k.clone()).collect();
    for k in due {
        if let Some(a) = n.asks.remove(&k) {
            tracing::debug!(request = %k, missing = a.missing, "a question to the other nodes timed out");
            (a.reply)(Err(HandleError::TimedOut));
        }
    }
}

/// An answer to one of this node's questions or acked broadcasts.
fn answered(n: &mut Node, payload: &[u8]) {
    if let Ok((v, atts)) = node::decode_body(payload) {
        if let Some((target, _)) = v.get("requestId").and_then(Value::as_str).and_then(|id| n.acking.get(id)) {
            let count = || v.get("clientCount").and_then(Value::as_u64).unwrap_or(0) as usize;
            let arg = || vec![v.get("packet").cloned().unwrap_or(Value::Null)];
            match (v.get("type").and_then(Value::as_u64), target) {
                (Some(node::request_type::BROADCAST_CLIENT_COUNT), AckTarget::Sink(sink)) => sink.report(count()),
                (Some(node::request_type::BROADCAST_ACK), AckTarget::Sink(sink)) => sink.answer(arg(), atts),
                (Some(node::request_type::BROADCAST_CLIENT_COUNT), AckTarget::Worker { worker, id }) => {
                    let _ = n.poster.post(*worker, SioMail::AckCount { id: *id, count: count() });
                }
                (Some(node::request_type::BROADCAST_ACK), AckTarget::Worker { worker, id }) => {
                    let _ = n.poster.post(*worker, SioMail::AckAnswer { id: *id, args: arg(), attachments: atts });
                }
                _ => {}
            }
            if matches!(target, AckTarget::Sink(sink) if sink.is_done()) {
                let id = v["requestId"].as_str().unwrap_or_default().to_string();
                n.acking.remove(&id);
            }
            return;
        }
    }
    let Some((id, items)) = node::decode_answer(payload) else { return };
    let Some(a) = n.asks.get_mut(&id) else { return };
    a.items.extend(items);
    a.missing -= 1;
    if a.missing == 0 {
        let a = n.asks.remove(&id).expect("just found");
        (a.reply)(Ok(a.items));
    }
}

/// Answers another node's question from this node's workers, on a task of its own (the
/// workers answer through their mailboxes; nothing here waits for them).
fn answer(n: &Node, conn: &redis::aio::MultiplexedConnection, prefix: &str, request_id: String, kind: QuestionKind, sel: crate::app::worker::Selector) {
    let mut op = n.local.of(&sel.nsp);
    for r in &sel.rooms {
        op = op.to(r);
    }
    for r in &sel.except_rooms {
        op = op.except(r);
    }
    let channel = node::response_channel(prefix, &sel.nsp);
    let mut conn = conn.clone();
    let counters = n.counters.clone();
    tokio::spawn(async move {
        let items: Vec<Value> = match kind {
            QuestionKind::Rooms => match op.rooms().await {
                Ok(r) => r.into_iter().map(Value::String).collect(),
                Err(_) => return,
            },
            QuestionKind::Sockets => match op.fetch_sockets().await {
                Ok(s) => s.into_iter().map(|s| Value::String(s.id)).collect(),
                Err(_) => return,
            },
            QuestionKind::Fetch => match op.fetch_sockets().await {
                Ok(s) => s.iter().map(node::socket_json).collect(),
                Err(_) => return,
            },
            QuestionKind::ServerSideEmit => return, // answered by `server_side`
        };
        let body = node::encode_answer(&request_id, kind, items);
        match within(redis::cmd("PUBLISH").arg(&channel).arg(body).query_async::<()>(&mut conn)).await {
            Ok(()) => Counters::add(&counters.published, 1),
            Err(_) => Counters::add(&counters.not_delivered, 1),
        }
    });
}

/// Runs the namespace's handler for another node's server-side event (user code, on this
/// thread, under `catch_unwind`) and publishes its answer when one was asked for.
fn server_side(n: &Node, conn: &redis::aio::MultiplexedConnection, prefix: &str, nsp: &str, data: Vec<Value>, request_id: Option<String>) {
    let Some(Value::String(event)) = data.first() else { return };
    let run = || n.namespaces.resolve(nsp).and_then(|ns| ns.server_side.get(event).cloned()).and_then(|h| h(&data[1..]));
    let answer = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(a) => a,
        Err(_) => {
            tracing::warn!(nsp, event = %event, "a server-side event handler panicked");
            return;
        }
    };
    let (Some(request_id), Some(answer)) = (request_id, answer) else { return };
    let channel = node::response_channel(prefix, nsp);
    let body = node::encode_server_side_answer(&request_id, &answer);
    let mut conn = conn.clone();
    let counters = n.counters.clone();
    tokio::spawn(async move {
        match within(redis::cmd("PUBLISH").arg(&channel).arg(body).query_async::<()>(&mut conn)).await {
            Ok(()) => Counters::add(&counters.published, 1),
            Err(_) => Counters::add(&counters.not_delivered, 1),
        }
    });
}

/// Delivers another node's acked broadcast to this node's sockets and, once their acks are in
/// (or its timeout passed), answers with the recipient count and each ack, so the asking node
/// counts this one's recipients and answers.
fn answer_acked_broadcast(n: &Node, conn: &redis::aio::MultiplexedConnection, prefix: &str, b: node::AckedBroadcast) {
    let mut op = n.local.of(&b.sel.nsp);
    for r in &b.sel.rooms {
        op = op.to(r);
    }
    for r in &b.sel.except_rooms {
        op = op.except(r);
    }
    if b.volatile {
        op = op.volatile();
    }
    let pending = op.emit_binary_with_ack(&b.event.event, &b.event.args, b.event.attachments.clone(), Duration::from_millis(b.timeout_ms));
    let channel = node::response_channel(prefix, &b.sel.nsp);
    let mut conn = conn.clone();
    let counters = n.counters.clone();
    tokio::spawn(async move {
        // Every ack that came, whether or not all did.
        let answers = match pending.await {
            Ok(Ok(r)) => r,
            Ok(Err(partial)) => partial.responses,
            Err(_) => return,
        };
        for body in node::encode_ack_answers(&b.request_id, &answers) {
            match within(redis::cmd("PUBLISH").arg(&channel).arg(body).query_async::<()>(&mut conn)).await {
                Ok(()) => Counters::add(&counters.published, 1),
                Err(_) => Counters::add(&counters.not_delivered, 1),
            }
        }
    });
}

/// Decodes one message from Redis: a broadcast or request is posted to every worker, a
/// question answered, an answer collected; in bridge mode a foreign broadcast may also be
/// queued for relaying into the other format.
fn receive(n: &mut Node, prefix: &str, conn: &redis::aio::MultiplexedConnection, channel: &str, payload: &[u8]) {
    let from_python = n.cfg.format.speaks_python() && channel == n.cfg.python_channel();
    if !from_python && n.cfg.format.speaks_node() {
        if node::nsp_of_response_channel(prefix, &n.id, channel).is_some() {
            return answered(n, payload);
        }
        if let Some(nsp) = node::nsp_of_request_channel(prefix, channel) {
            if let Ok((req, atts)) = node::decode_body(payload) {
                if let Some((id, kind, sel)) = node::decode_question(&n.id, nsp, &req) {
                    Counters::add(&n.counters.received, 1);
                    return answer(n, conn, prefix, id, kind, sel);
                }
                if let Some((data, request_id)) = node::decode_server_side_emit(&n.id, &req) {
                    Counters::add(&n.counters.received, 1);
                    return server_side(n, conn, prefix, nsp, data, request_id);
                }
                if let Some(b) = node::decode_acked_broadcast(&n.id, nsp, &req, &atts) {
                    Counters::add(&n.counters.received, 1);
                    return answer_acked_broadcast(n, conn, prefix, b);
                }
            }
        }
    }
    let decoded = if from_python {
        python::decode_from(payload)
    } else if channel.starts_with(prefix) && channel[prefix.len()..].starts_with('#') {
        node::decode_broadcast_from(payload).map(|b| b.map(|(from, b)| (from, Inbound::Broadcast(b))))
    } else {
        // Requests: this node's own are dropped by the decoder; none are relayed.
        node::decode_request(&n.id, prefix, channel, payload).map(|r| r.map(|i| (String::new(), i)))
    };
    let (from, inbound) = match decoded {
        Ok(Some(i)) => i,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(channel, error = %e, "dropped a malformed message from Redis");
            return;
        }
    };
    match hear(&n.id, n.relay_id.as_deref(), n.cfg.format, n.cfg.relay, from_python, &from) {
        Heard::Drop => return,
        Heard::OtherRelay => {
            if n.cfg.relay && !n.other_relay_seen {
                n.other_relay_seen = true;
                tracing::warn!(other = %from, "another bridge node relays too: members of one format get the other format's broadcasts twice (run --redis-relay on exactly one node)");
            }
            return;
        }
        Heard::Deliver => {}
        Heard::DeliverAndRelay => {
            if let Inbound::Broadcast(b) = &inbound {
                queue_relay(n, prefix, from_python, b);
            }
        }
    }
    if !n.inflight.admit() {
        Counters::add(&n.counters.inbound_dropped, 1);
        if !n.inflight.dropping {
            n.inflight.dropping = true;
            tracing::warn!(limit = n.inflight.limit, "the workers are behind on messages from other nodes: dropping them until they catch up");
        }
        return;
    }
    n.inflight.dropping = false;
    Counters::add(&n.counters.received, 1);
    tracing::trace!(channel, bytes = payload.len(), "message from Redis posted to the workers");
    let held = post_all(&n.poster, inbound);
    n.inflight.held.push_back(held);
}

/// What a node does with a message heard from another sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// Not for this node's sockets.
    Drop,
    /// Posted to this node's workers.
    Deliver,
    /// Posted to this node's workers and relayed into the other format.
    DeliverAndRelay,
    /// A copy relayed by another bridge node: dropped (and, on a relaying node, a warning).
    OtherRelay,
}

/// What this node (`me`, its relayed copies as `my_relay`) does with a message from `from` (a
/// uid, or a python `host_id`) heard in python-socketio's format (`from_python`) or Node's.
///
/// In bridge mode every member must get every broadcast exactly once, whatever format it
/// speaks. A bridge node publishes its own broadcasts in both formats (as `bridge~<id>`), so a
/// bridge node hears each of them twice: it takes the Node copy and drops the Python one. The
/// relaying bridge node republishes each foreign broadcast (a Node node's or emitter's, a
/// Python node's or emitter's) in the other format as `relay~<id>`; every bridge node heard
/// the original, so every bridge node drops relayed copies, and the relay never relays a
/// bridge node's message or a relayed copy (no loops).
fn hear(me: &str, my_relay: Option<&str>, format: RedisFormat, relay: bool, from_python: bool, from: &str) -> Heard {
    if from == me || my_relay == Some(from) {
        return Heard::Drop;
    }
    if format != RedisFormat::Bridge {
        return Heard::Deliver;
    }
    if from.starts_with(RELAY_MARK) {
        return Heard::OtherRelay;
    }
    if from_python && from.starts_with(BRIDGE_MARK) {
        return Heard::Drop;
    }
    if relay && !from.starts_with(BRIDGE_MARK) {
        Heard::DeliverAndRelay
    } else {
        Heard::Deliver
    }
}

/// Queues the copy of a foreign broadcast in the other format (bridge mode, on the relaying
/// node); past `queue` copies not yet published it is dropped and counted.
fn queue_relay(n: &mut Node, prefix: &str, from_python: bool, b: &Broadcast) {
    let Some(ev) = event_of(b) else { return };
    let rid = n.relay_id.as_deref().unwrap_or_default();
    let copy = if from_python {
        (node::channel(prefix, &b.sel), node::encode_broadcast(rid, b, &ev))
    } else {
        (n.cfg.python_channel().to_string(), python::encode_broadcast(rid, b, &ev))
    };
    if n.relays.len() >= n.cfg.queue.max(1) {
        Counters::add(&n.counters.not_delivered, 1);
        return;
    }
    n.relays.push(copy);
}

/// Publishes the queued relayed copies as one pipeline, in the order they were heard.
async fn publish_relays(n: &mut Node, conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    let count = n.relays.len() as u64;
    for (channel, payload) in n.relays.drain(..) {
        pipe.publish(channel, payload).ignore();
    }
    match within(pipe.query_async::<()>(conn)).await {
        Ok(()) => {
            Counters::add(&n.counters.published, count);
            Ok(())
        }
        Err(e) => {
            Counters::add(&n.counters.not_delivered, count);
            Err(e)
        }
    }
}

/// The shared part of a message posted to the workers; the workers are done with it once this
/// thread holds the only reference.
enum Held {
    Broadcast(Arc<Broadcast>),
    Selector(Arc<Selector>),
}

impl Held {
    fn done(&self) -> bool {
        match self {
            Held::Broadcast(a) => Arc::strong_count(a) == 1,
            Held::Selector(a) => Arc::strong_count(a) == 1,
        }
    }
}

/// Messages from other nodes that the workers have not handled yet, at most `limit`: the
/// workers' mailboxes are unbounded, so this thread stops posting (and drops, counted) when
/// they fall that far behind what Redis brings.
struct Inflight {
    held: VecDeque<Held>,
    limit: usize,
    /// Dropping since the last message that was let through (logged once per episode).
    dropping: bool,
}

impl Inflight {
    fn new(limit: usize) -> Inflight {
        Inflight { held: VecDeque::new(), limit: limit.max(1), dropping: false }
    }

    /// Forgets the messages the workers are done with (oldest first); whether one more may
    /// be posted.
    fn admit(&mut self) -> bool {
        while self.held.front().is_some_and(Held::done) {
            self.held.pop_front();
        }
        self.held.len() < self.limit
    }
}

/// Posts one decoded message to every worker: one shared `Arc`, decoded and encoded once.
/// Returns that `Arc`, to know when the workers are done with it.
fn post_all(poster: &Poster<SioMail>, inbound: Inbound) -> Held {
    let (each, held): (Box<dyn Fn() -> SioMail>, Held) = match inbound {
        Inbound::Broadcast(b) => {
            let b = Arc::new(b);
            let h = Held::Broadcast(b.clone());
            (Box::new(move || SioMail::Broadcast(b.clone())), h)
        }
        Inbound::Join(sel, rooms) => {
            let (sel, rooms) = (Arc::new(sel), Arc::new(rooms));
            let h = Held::Selector(sel.clone());
            (Box::new(move || SioMail::Join { sel: sel.clone(), rooms: rooms.clone() }), h)
        }
        Inbound::Leave(sel, rooms) => {
            let (sel, rooms) = (Arc::new(sel), Arc::new(rooms));
            let h = Held::Selector(sel.clone());
            (Box::new(move || SioMail::Leave { sel: sel.clone(), rooms: rooms.clone() }), h)
        }
        Inbound::Disconnect(sel, close_client) => {
            let sel = Arc::new(sel);
            let h = Held::Selector(sel.clone());
            (Box::new(move || SioMail::Disconnect { sel: sel.clone(), close_client }), h)
        }
    };
    for w in 0..poster.workers() {
        if poster.post(w, each()).is_err() {
            break;
        }
    }
    held
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::worker::Selector;

    fn join() -> Outbound {
        Outbound::Join(Arc::new(Selector::default()), Arc::new(vec!["r".into()]))
    }

    #[test]
    fn nothing_is_queued_while_redis_is_down_and_the_queue_is_bounded() {
        let (a, mut p) = prepare(RedisConfig { queue: 2, ..RedisConfig::new("redis://127.0.0.1:1/") }).unwrap();
        // Not connected yet: dropped and counted, never queued.
        a.send(join());
        assert_eq!(a.stats().not_delivered, 1);
        assert!(p.rx.try_recv().is_err());
        // Connected: queued up to the bound, then dropped and counted.
        p.up.store(true, Ordering::Relaxed);
        for _ in 0..3 {
            a.send(join());
        }
        assert_eq!(a.stats().not_delivered, 2);
        assert!(p.rx.try_recv().is_ok() && p.rx.try_recv().is_ok() && p.rx.try_recv().is_err());
    }

    #[test]
    fn inbound_messages_the_workers_still_hold_are_bounded() {
        let mut f = Inflight::new(2);
        let a = Arc::new(Selector::default());
        let b = Arc::new(Selector::default());
        // The workers hold `a` and `b` (their clones stand for the workers' mail).
        f.held.push_back(Held::Selector(a.clone()));
        assert!(f.admit());
        f.held.push_back(Held::Selector(b.clone()));
        assert!(!f.admit(), "at the limit");
        drop(a);
        assert!(f.admit(), "the oldest was handled");
        assert_eq!(f.held.len(), 1);
        drop(b);
        assert!(f.admit());
        assert!(f.held.is_empty());
    }

    #[test]
    fn a_bad_url_is_refused_at_start() {
        assert!(prepare(RedisConfig::new("http://nope")).is_err());
        assert!(prepare(RedisConfig { relay: true, ..RedisConfig::new("redis://127.0.0.1/") }).is_err(), "a relay is a bridge node");
        let py = RedisConfig { format: RedisFormat::Python, sharded: true, ..RedisConfig::new("redis://127.0.0.1/") };
        assert!(prepare(py).is_err(), "sharded pub/sub is the Node format's");
    }

    /// Every member gets every broadcast exactly once: for each origin, which copies each kind
    /// of bridge node delivers and relays.
    #[test]
    fn bridge_nodes_deliver_each_broadcast_once_and_never_relay_back() {
        use Heard::*;
        let bridge = |relay, from_python, from| hear("bridge~me", Some("relay~me"), RedisFormat::Bridge, relay, from_python, from);
        // A Node node's (uid `abc123`) or the Node emitter's broadcast: heard once, in Node's
        // format; the relay republishes it for the Python nodes.
        for from in ["abc123", "emitter"] {
            assert_eq!(bridge(false, false, from), Deliver);
            assert_eq!(bridge(true, false, from), DeliverAndRelay);
        }
        // A Python node's or the Python emitter's (a random host_id): heard once, in Python's
        // format; the relay republishes it for the Node nodes.
        assert_eq!(bridge(false, true, "0f3c9a"), Deliver);
        assert_eq!(bridge(true, true, "0f3c9a"), DeliverAndRelay);
        // Another bridge node's own broadcast comes in both formats: the Node copy is taken,
        // the Python copy dropped, neither relayed (the bridge node published both).
        assert_eq!(bridge(true, false, "bridge~other"), Deliver);
        assert_eq!(bridge(true, true, "bridge~other"), Drop);
        // The relay's copies: every bridge node heard the original already.
        assert_eq!(bridge(false, false, "relay~other"), OtherRelay);
        assert_eq!(bridge(false, true, "relay~other"), OtherRelay);
        // This node's own messages and relayed copies come back to it: dropped.
        for from_python in [false, true] {
            assert_eq!(bridge(true, from_python, "bridge~me"), Drop);
            assert_eq!(bridge(true, from_python, "relay~me"), Drop);
        }
        // A single-format node takes a bridge node's and a relay's copies like any other.
        assert_eq!(hear("me", None, RedisFormat::Python, false, true, "relay~x"), Deliver);
        assert_eq!(hear("me", None, RedisFormat::Node, false, false, "bridge~x"), Deliver);
        assert_eq!(hear("me", None, RedisFormat::Node, false, false, "me"), Drop);
    }
}
