//! The Redis adapter: one dedicated thread (a single-threaded tokio runtime driving the `redis`
//! crate's RESP3 multiplexed connection, which both subscribes and publishes) between the
//! workers and Redis.
//!
//! - Out: a worker (or a `ServerHandle`) hands each message to [`RedisAdapter::send`], a
//!   `try_send` on a bounded queue that never blocks; the thread publishes what it finds queued
//!   as one pipeline (one round trip for a burst). A full queue, or Redis being down, drops
//!   the message and counts it as not delivered.
//! - In: the connection's messages (RESP3 pushes) come through a bounded queue of `queue`
//!   places (past it: dropped, counted in `inbound_dropped`); confirmations of subscribing take
//!   no place. Each message is decoded once, into the same encode-once `Broadcast` (or
//!   room / disconnect mail) the workers already handle, and posted to every worker through
//!   its mailbox (`Poster`). Messages carrying this node's own uid are dropped. The workers
//!   hold at most `queue` such messages, and at most `max_answers` answers to other nodes'
//!   requests are in progress (`Tasks`); past either, what comes is dropped and counted.
//! - Outage (Redis unreachable, or closing the connection itself, e.g. its output buffer limit
//!   for a slow subscriber): the thread counts and logs the loss once, keeps retrying with
//!   back-off (100 ms doubling to 5 s), resubscribes, and logs the recovery with the count of
//!   messages not delivered meanwhile. The workers keep serving their clients throughout.
//! - Bridge mode (`RedisFormat::Bridge`): both formats on one thread; each message's sender
//!   decides whether it is delivered and whether the relaying node republishes it in the
//!   other format (`hear`); the relayed copies of what the connection had ready (up to
//!   `BATCH`) go out as one pipeline.
//! - Sharded pub/sub (`RedisConfig::sharded`): `SPUBLISH` / `SSUBSCRIBE` (the `redis` crate has
//!   no sharded subscribe without its cluster feature: raw commands, one channel each), with a
//!   subscription per room this node has members in, reconciled with [`RoomTable`] (the
//!   workers' rooms) when woken, at most once per `ROOM_SYNC`, in pipelines; never from
//!   queued events.
//!
//! Must never: be called into from a worker except through [`RedisAdapter::send`] and
//! [`Adapter::room_changed`] (a mutex held for one map update), or queue without bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde_json::Value;

use super::AckTarget;
use super::{event_of, node, python, sharded, Adapter, ClusterStats, Counters, Inbound, Outbound, Question, QuestionKind, RedisConfig, RedisFormat, Reply};
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
    /// Set while the queue is full (the episode was logged), with the not-delivered count when
    /// it began (`u64::MAX`: no episode).
    full_since: AtomicU64,
    /// Sharded pub/sub: the rooms this node has members in, which the thread subscribes to.
    rooms: Option<Arc<RoomTable>>,
}

impl Adapter for RedisAdapter {
    fn send(&self, out: Outbound) -> bool {
        let dropped = if self.up.load(Ordering::Relaxed) {
            match self.tx.try_send(out) {
                Ok(()) => {
                    // The episode ends once the thread has caught up to half the queue, not at
                    // each batch it takes off a queue that fills again at once.
                    if self.full_since.load(Ordering::Relaxed) != u64::MAX && self.tx.capacity() >= self.tx.max_capacity() / 2 {
                        self.queue_drained();
                    }
                    return true;
                }
                Err(mpsc::error::TrySendError::Full(o)) => {
                    self.queue_full();
                    o
                }
                Err(mpsc::error::TrySendError::Closed(o)) => o,
            }
        } else {
            // (An outage is logged once by the adapter thread.)
            out
        };
        Counters::add(&self.counters.not_delivered, 1);
        unheard(dropped, None);
        false
    }

    fn send_low(&self, out: Outbound) -> bool {
        if self.tx.capacity() < self.tx.max_capacity() / 2 {
            return false;
        }
        self.send(out)
    }

    fn stats(&self) -> ClusterStats {
        ClusterStats { connected: self.up.load(Ordering::Relaxed), ..self.counters.snapshot() }
    }

    fn room_changed(&self, nsp: &str, room: &str, exists: bool) {
        // Kept in the table whether or not Redis is up: the thread subscribes to what it holds
        // when Redis is back.
        if let Some(t) = &self.rooms {
            t.change(nsp, room, exists);
        }
    }
}

/// How often, at most, the thread brings its room subscriptions in line with [`RoomTable`]
/// (sharded pub/sub): a change after a quiet interval is sent at once (one round trip, as
/// Node's adapter does), changes within an interval of the last sync wait for its end, and
/// rooms made and ended meanwhile cost no command at all.
const ROOM_SYNC: Duration = Duration::from_millis(100);
/// Most `SSUBSCRIBE` / `SUNSUBSCRIBE` commands in one pipeline.
const SUB_BATCH: usize = 1024;

/// A room of a namespace: `(nsp, room)`.
type RoomKey = (String, String);

/// The rooms this node has members in (sharded pub/sub), shared by the workers and the
/// adapter thread: per `(nsp, room)`, how many workers have a shard of it. A worker updates it
/// only when its shard of a room is created or deleted (never per packet or broadcast), under a
/// mutex, and raises `changed` (waking the thread once until it takes it); the thread diffs
/// it against what it has subscribed (at most once per [`ROOM_SYNC`]) and sends the
/// differences. Nothing is queued, so no change can be lost:
/// the subscriptions follow the table, whatever happened in between. It holds one entry per
/// room that exists on this node, and the rooms that came to exist or ended on the node since
/// the thread last looked (`touched`, each once), so that a diff holds the mutex for the
/// changes only, not for every room.
#[derive(Default)]
pub struct RoomTable {
    rooms: std::sync::Mutex<Rooms>,
    changed: AtomicBool,
    /// Wakes the thread: raised with `changed` (once until the thread takes it).
    wake: Notify,
}

#[derive(Default)]
struct Rooms {
    /// Workers with a shard of each room.
    count: HashMap<RoomKey, usize>,
    /// Rooms created or ended on this node since the last diff: at most as many as `count`
    /// holds (or [`SUB_BATCH`]); past that (churn while Redis is down), they are forgotten and
    /// the next diff compares every room (`all`).
    touched: std::collections::HashSet<RoomKey>,
    /// The next diff compares every room.
    all: bool,
}

impl RoomTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A worker's shard of `room` came to exist (`exists`) or ended. An end the table never
    /// saw begin is ignored.
    fn change(&self, nsp: &str, room: &str, exists: bool) {
        let key = (nsp.to_string(), room.to_string());
        let mut t = self.lock();
        let node_level = if exists {
            let c = t.count.entry(key.clone()).or_insert(0);
            *c += 1;
            *c == 1
        } else if let Some(c) = t.count.get_mut(&key) {
            *c -= 1;
            let ended = *c == 0;
            if ended {
                t.count.remove(&key);
            }
            ended
        } else {
            false
        };
        if node_level {
            if t.all || t.touched.len() >= t.count.len().max(SUB_BATCH) {
                t.touched.clear();
                t.all = true;
            } else {
                t.touched.insert(key);
            }
            drop(t);
            if !self.changed.swap(true, Ordering::AcqRel) {
                self.wake.notify_one();
            }
        }
    }

    /// Whether the table changed since the last call (and clears it): the diff that follows
    /// sees at least every change made before.
    fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::AcqRel)
    }

    /// What to subscribe to (rooms in the table, not in `subscribed`) and unsubscribe from
    /// (the other way round): among the rooms touched since the last diff, or among all of
    /// them (`all`: after a reconnection).
    fn diff(&self, subscribed: &std::collections::HashSet<RoomKey>, all: bool) -> (Vec<RoomKey>, Vec<RoomKey>) {
        let mut t = self.lock();
        let touched = std::mem::take(&mut t.touched);
        if all || std::mem::take(&mut t.all) {
            t.all = false;
            return room_diff(&t.count, subscribed);
        }
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for key in touched {
            match (t.count.contains_key(&key), subscribed.contains(&key)) {
                (true, false) => add.push(key),
                (false, true) => remove.push(key),
                _ => {}
            }
        }
        (add, remove)
    }

    /// How many rooms the table holds, and how many it holds as touched.
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let t = self.lock();
        (t.count.len(), t.touched.len())
    }
}

/// The rooms of `have` missing from `subscribed`, and those of `subscribed` no longer in `have`.
fn room_diff(have: &HashMap<RoomKey, usize>, subscribed: &std::collections::HashSet<RoomKey>) -> (Vec<RoomKey>, Vec<RoomKey>) {
    let add = have.keys().filter(|k| !subscribed.contains(*k)).cloned().collect();
    let remove = subscribed.iter().filter(|k| !have.contains_key(*k)).cloned().collect();
    (add, remove)
}

impl RedisAdapter {
    /// A full queue: the first drop of an episode logs it (once, not per message).
    fn queue_full(&self) {
        let at = self.counters.not_delivered.load(Ordering::Relaxed);
        if self.full_since.compare_exchange(u64::MAX, at, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            tracing::warn!(
                queue = self.tx.max_capacity(),
                "cluster adapter queue full: messages for the other nodes are dropped (shardcast_cluster_not_delivered_total) until it drains"
            );
        }
    }

    /// The queue took a message again with half of it free: the episode is over, logged with
    /// what it dropped.
    fn queue_drained(&self) {
        let since = self.full_since.swap(u64::MAX, Ordering::Relaxed);
        if since != u64::MAX {
            let lost = self.counters.not_delivered.load(Ordering::Relaxed).saturating_sub(since);
            tracing::warn!(not_delivered = lost, "cluster adapter queue has room again");
        }
    }
}

/// The adapter thread, before the workers exist to be posted to.
pub struct Pending {
    client: redis::Client,
    cfg: RedisConfig,
    rx: mpsc::Receiver<Outbound>,
    up: Arc<AtomicBool>,
    counters: Arc<Counters>,
    rooms: Arc<RoomTable>,
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
    let rooms = Arc::new(RoomTable::default());
    let adapter =
        RedisAdapter { tx, up: up.clone(), counters: counters.clone(), full_since: AtomicU64::new(u64::MAX), rooms: cfg.sharded.then(|| rooms.clone()) };
    Ok((Arc::new(adapter), Pending { client, cfg, rx, up, counters, rooms }))
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
    /// Answers to other nodes' questions and acked broadcasts still being made.
    tasks: Tasks,
    /// Sharded pub/sub: the rooms this node has members in (the workers').
    rooms: Arc<RoomTable>,
    /// Sharded pub/sub: the rooms whose channels this session has subscribed (emptied with
    /// each new connection).
    subscribed: std::collections::HashSet<RoomKey>,
}

/// One of this node's questions, collecting answers.
struct Asking {
    /// What was asked.
    kind: QuestionKind,
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
    let (queue, max_answers) = (p.cfg.queue, p.cfg.max_answers);
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
        tasks: Tasks::new(max_answers),
        namespaces,
        rooms: p.rooms,
        subscribed: std::collections::HashSet::new(),
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
            dropped += offline(&mut n, out);
        }
        Counters::add(&n.counters.not_delivered, dropped);
        if n.down.is_none() {
            Counters::add(&n.counters.outages, 1);
            let nd = n.counters.snapshot().not_delivered;
            n.down = Some(nd.saturating_sub(dropped));
            tracing::warn!(url = %n.cfg.url, error = %err, "Redis is unreachable: serving local clients only; broadcasts are not delivered to other nodes until it is back (retrying)");
        }
        let pause = tokio::time::sleep(backoff);
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                _ = stop.notified() => return,
                out = n.rx.recv() => match out {
                    Some(out) => {
                        let lost = offline(&mut n, out);
                        Counters::add(&n.counters.not_delivered, lost);
                    }
                    None => return,
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// What the thread does with a worker's message while Redis is unreachable: it is not
/// delivered (1, for the count). (Room changes are not messages: see [`RoomTable`].)
fn offline(n: &mut Node, out: Outbound) -> u64 {
    unheard(out, Some(&n.poster));
    1
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
    let prefix = n.cfg.channel().to_string();
    let (mut conn, mut stream) = if n.cfg.sharded { connect_sharded(n, &prefix).await? } else { connect(n, &prefix).await? };
    n.up.store(true, Ordering::Relaxed);
    *backoff = BACKOFF_MIN;
    if let Some(at) = n.down.take() {
        let lost = n.counters.snapshot().not_delivered.saturating_sub(at);
        tracing::warn!(url = %n.cfg.url, not_delivered = lost, "Redis is reachable again; resubscribed");
    } else {
        tracing::info!(url = %n.cfg.url, format = ?n.cfg.format, sharded = n.cfg.sharded, "cluster adapter connected to Redis");
    }
    if n.cfg.sharded {
        // Every room this node has, on the new connection.
        n.subscribed.clear();
        n.rooms.take_changed();
        sync_rooms(n, &prefix, &mut conn, true).await?;
    }
    // Room subscriptions: when the last sync was, and when the next one is due (once woken).
    let (mut synced_at, mut sync_at): (Instant, Option<Instant>) = (Instant::now(), None);
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let next_deadline = n.asks.values().map(|a| a.deadline).chain(n.acking.values().map(|a| a.1)).min();
        tokio::select! {
            _ = stop.notified() => return Ok(()),
            _ = tokio::time::sleep_until(next_deadline.unwrap_or_else(Instant::now).into()), if next_deadline.is_some() => expire(n),
            _ = n.rooms.wake.notified(), if n.cfg.sharded && sync_at.is_none() => {
                sync_at = Some((synced_at + ROOM_SYNC).max(Instant::now()));
            }
            _ = tokio::time::sleep_until(sync_at.unwrap_or_else(Instant::now).into()), if sync_at.is_some() => {
                sync_at = None;
                synced_at = Instant::now();
                if n.rooms.take_changed() {
                    sync_rooms(n, &prefix, &mut conn, false).await?;
                }
            }
            msg = stream.next() => {
                let Some(mut msg) = msg else {
                    return Err(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the subscription connection closed")));
                };
                // What the stream has ready (up to a batch) is handled before one pipeline of
                // relayed copies: the relay keeps up with what it relays.
                for _ in 0..BATCH {
                    if n.cfg.sharded {
                        receive_sharded(n, &prefix, &conn, msg.get_payload_bytes());
                    } else {
                        receive(n, &prefix, &conn, msg.get_channel_name(), msg.get_payload_bytes());
                    }
                    match futures_util::FutureExt::now_or_never(stream.next()) {
                        Some(Some(m)) => msg = m,
                        Some(None) => {
                            if !n.relays.is_empty() {
                                publish_relays(n, &mut conn).await?;
                            }
                            return Err(redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "the subscription connection closed")));
                        }
                        None => break,
                    }
                }
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

/// Brings the room channels subscribed in line with [`RoomTable`]: the differences, in
/// pipelines of at most [`SUB_BATCH`] commands (one channel per command: the connection pairs
/// each with its confirmation).
async fn sync_rooms(n: &mut Node, prefix: &str, conn: &mut redis::aio::MultiplexedConnection, all: bool) -> redis::RedisResult<()> {
    let (add, remove) = n.rooms.diff(&n.subscribed, all);
    for (rooms, command) in [(add, "SSUBSCRIBE"), (remove, "SUNSUBSCRIBE")] {
        for chunk in rooms.chunks(SUB_BATCH) {
            let mut pipe = redis::pipe();
            for (nsp, room) in chunk {
                pipe.cmd(command).arg(sharded::room_channel(prefix, nsp, room)).ignore();
            }
            within(pipe.exec_async(conn)).await?;
            for key in chunk {
                if command == "SSUBSCRIBE" {
                    n.subscribed.insert(key.clone());
                } else {
                    n.subscribed.remove(key);
                }
            }
        }
    }
    tracing::trace!(rooms = n.subscribed.len(), "room subscriptions in line with this node's rooms");
    Ok(())
}

/// What one session receives from Redis.
type Messages = std::pin::Pin<Box<dyn futures_util::Stream<Item = redis::Msg>>>;

/// The classic adapter's connection: one RESP3 connection that publishes and is subscribed to
/// the channels of the format(s); the messages come through [`push_connection`]'s bounded
/// queue.
async fn connect(n: &Node, prefix: &str) -> redis::RedisResult<(redis::aio::MultiplexedConnection, Messages)> {
    let (mut conn, messages) = push_connection(n, &[redis::PushKind::Message, redis::PushKind::PMessage]).await?;
    if n.cfg.format.speaks_node() {
        within(conn.psubscribe(node::pattern(prefix))).await?;
        // Plain subscriptions (not a pattern), so that a Node node asking counts this one
        // (`PUBSUB NUMSUB` of the request channel).
        for nsp in &n.cfg.namespaces {
            let response = node::response_channel(prefix, nsp);
            let specific = format!("{response}{}#", n.id);
            within(conn.subscribe(&[node::request_channel(prefix, nsp), response, specific])).await?;
        }
    }
    if n.cfg.format.speaks_python() {
        within(conn.subscribe(n.cfg.python_channel())).await?;
    }
    Ok((conn, messages))
}

/// The sharded adapter's connection: one RESP3 connection that publishes (`SPUBLISH`) and
/// subscribes (`SSUBSCRIBE`: each fixed namespace's channel and this node's answer channel
/// here, the channel of each room this node has members in from [`sync_rooms`]).
async fn connect_sharded(n: &Node, prefix: &str) -> redis::RedisResult<(redis::aio::MultiplexedConnection, Messages)> {
    let (mut conn, messages) = push_connection(n, &[redis::PushKind::SMessage]).await?;
    let mut channels = Vec::new();
    for nsp in &n.cfg.namespaces {
        channels.push(sharded::main_channel(prefix, nsp));
        channels.push(sharded::answer_channel(prefix, nsp, &n.id));
    }
    // One channel per command: the connection pairs each with its confirmation.
    if !channels.is_empty() {
        let mut pipe = redis::pipe();
        for c in channels {
            pipe.cmd("SSUBSCRIBE").arg(c).ignore();
        }
        within(pipe.exec_async(&mut conn)).await?;
    }
    Ok((conn, messages))
}

/// A RESP3 multiplexed connection whose pushes of the kinds `wanted` (messages) come through a
/// bounded queue of `queue` places, past which they are dropped and counted (never held
/// without bound: Redis may bring messages faster than this thread decodes them). The
/// confirmations of (un)subscribing take no place: the connection pairs them with their
/// commands. The stream ends with the connection (the push sender is dropped, or says so).
async fn push_connection(n: &Node, wanted: &'static [redis::PushKind]) -> redis::RedisResult<(redis::aio::MultiplexedConnection, Messages)> {
    let info = n.client.get_connection_info().clone();
    let settings = info.redis_settings().clone().set_protocol(redis::ProtocolVersion::RESP3);
    let client = redis::Client::open(info.set_redis_settings(settings))?;
    let (tx, rx) = mpsc::channel::<redis::PushInfo>(n.cfg.queue.max(1));
    // The end of the connection takes no place either: it is told even when the queue is full.
    let closed = Arc::new(Notify::new());
    let push = push_sender(tx, closed.clone(), n.counters.clone(), wanted);
    let config = redis::AsyncConnectionConfig::new().set_push_sender(push);
    let conn = within(client.get_multiplexed_async_connection_with_config(&config)).await?;
    // What came before the end is handled first.
    let messages = futures_util::stream::unfold((rx, closed), |(mut rx, closed)| async move {
        loop {
            let p = tokio::select! {
                biased;
                p = rx.recv() => p?,
                _ = closed.notified() => return None,
            };
            if let Some(m) = redis::Msg::from_push_info(p) {
                return Some((m, (rx, closed)));
            }
        }
    });
    Ok((conn, Box::pin(messages)))
}

/// What the connection calls with each push: a message of the kinds `wanted` takes a place in
/// `tx` (none free: dropped and counted as an inbound drop); the end of the connection wakes
/// `closed`; anything else (the confirmations of subscribing) is ignored.
fn push_sender(
    tx: mpsc::Sender<redis::PushInfo>,
    closed: Arc<Notify>,
    counters: Arc<Counters>,
    wanted: &'static [redis::PushKind],
) -> impl Fn(redis::PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static {
    // Dropping since the last message that found a place (logged once per episode).
    let dropping = AtomicBool::new(false);
    move |p: redis::PushInfo| {
        if p.kind == redis::PushKind::Disconnection {
            closed.notify_one();
        } else if wanted.contains(&p.kind) {
            if tx.try_send(p).is_ok() {
                dropping.store(false, Ordering::Relaxed);
            } else {
                Counters::add(&counters.inbound_dropped, 1);
                if !dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(queue = tx.max_capacity(), "Redis brings messages faster than this node decodes them: dropping them until it catches up");
                }
            }
        }
        Ok(())
    }
}

/// Encodes what the workers queued and publishes it as one pipeline.
async fn publish(n: &Node, prefix: &str, conn: &mut redis::aio::MultiplexedConnection, batch: &[Outbound]) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    let mut count = 0u64;
    let (node, python) = (n.cfg.format.speaks_node(), n.cfg.format.speaks_python());
    let python_channel = n.cfg.python_channel();
    for out in batch.iter().filter(|_| n.cfg.sharded) {
        let (channel, payload) = match out {
            Outbound::Broadcast(b) if b.ack.is_none() => {
                let Some(ev) = event_of(b) else { continue };
                sharded::encode_broadcast(&n.id, prefix, b, &ev)
            }
            other => match sharded::encode_request(&n.id, prefix, other) {
                Some(m) => m,
                None => continue,
            },
        };
        pipe.cmd("SPUBLISH").arg(channel).arg(payload).ignore();
        count += 1;
    }
    for out in batch.iter().filter(|_| !n.cfg.sharded) {
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
    send_counted(pipe, conn, &n.counters, count).await
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
    let (channel, body) = if n.cfg.sharded {
        // The sharded adapter's questions: FETCH_SOCKETS (counts and rooms come from the
        // sockets it answers) and SERVER_SIDE_EMIT.
        match q.kind {
            QuestionKind::ServerSideEmit => sharded::encode_server_side_with_ack(&n.id, prefix, &q.sel.nsp, &request_id, &q.data),
            _ => sharded::encode_fetch(&n.id, prefix, &request_id, &q.sel),
        }
    } else {
        node::encode_question(&n.id, prefix, &request_id, q.kind, &q.sel, &q.data)
    };
    let missing = match other_nodes(n, conn, &channel, &q.sel.nsp).await {
        Ok(m) => m,
        Err(e) => {
            (q.reply)(Err(HandleError::TimedOut));
            return Err(e);
        }
    };
    if missing == 0 {
        (q.reply)(Ok(Vec::new()));
        return Ok(());
    }
    n.asks.insert(request_id.clone(), Asking { kind: q.kind, missing, items: Vec::new(), deadline: Instant::now() + n.cfg.request_timeout, reply: q.reply });
    if let Err(e) = within(redis::cmd(publish_command(n)).arg(&channel).arg(body).query_async::<()>(conn)).await {
        if let Some(a) = n.asks.remove(&request_id) {
            (a.reply)(Err(HandleError::TimedOut));
        }
        return Err(e);
    }
    Counters::add(&n.counters.published, 1);
    Ok(())
}

/// `PUBLISH`, or `SPUBLISH` with sharded pub/sub.
fn publish_command(n: &Node) -> &'static str {
    if n.cfg.sharded {
        "SPUBLISH"
    } else {
        "PUBLISH"
    }
}

/// How many other nodes listen on request channel `channel` (`PUBSUB NUMSUB`, or `PUBSUB
/// SHARDNUMSUB` of the namespace's channel with sharded pub/sub; less this node).
async fn other_nodes(n: &Node, conn: &mut redis::aio::MultiplexedConnection, channel: &str, nsp: &str) -> redis::RedisResult<usize> {
    let numsub = if n.cfg.sharded { "SHARDNUMSUB" } else { "NUMSUB" };
    let subs: Vec<(String, usize)> = within(redis::cmd("PUBSUB").arg(numsub).arg(channel).query_async(conn)).await?;
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
    let channel = if n.cfg.sharded { sharded::main_channel(prefix, &b.sel.nsp) } else { node::request_channel(prefix, &b.sel.nsp) };
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
    let body = if n.cfg.sharded {
        sharded::encode_acked_broadcast(&n.id, prefix, &request_id, b, &ev, timeout.as_millis() as u64).1
    } else {
        node::encode_acked_broadcast(&n.id, &request_id, b, &ev, timeout.as_millis() as u64)
    };
    n.acking.insert(request_id.clone(), (target, Instant::now() + timeout));
    within(redis::cmd(publish_command(n)).arg(&channel).arg(body).query_async::<()>(conn)).await?;
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

/// Another node's report on one of this node's acked broadcasts: its recipient count
/// (`count`) or one ack (`data.packet`, binaries in `atts`); false when `request_id` is no
/// acked broadcast of this node's.
fn ack_report(n: &mut Node, request_id: &str, count: bool, data: &Value, atts: Vec<bytes::Bytes>) -> bool {
    let Some((target, _)) = n.acking.get(request_id) else { return false };
    let clients = data.get("clientCount").and_then(Value::as_u64).unwrap_or(0) as usize;
    let arg = || vec![data.get("packet").cloned().unwrap_or(Value::Null)];
    match (count, target) {
        (true, AckTarget::Sink(sink)) => sink.report(clients),
        (false, AckTarget::Sink(sink)) => sink.answer(arg(), atts),
        (true, AckTarget::Worker { worker, id }) => {
            let _ = n.poster.post(*worker, SioMail::AckCount { id: *id, count: clients });
        }
        (false, AckTarget::Worker { worker, id }) => {
            let _ = n.poster.post(*worker, SioMail::AckAnswer { id: *id, args: arg(), attachments: atts });
        }
    }
    if matches!(target, AckTarget::Sink(sink) if sink.is_done()) {
        n.acking.remove(request_id);
    }
    true
}

/// One node's answer to question `id`: its items; the reply goes out once every node answered.
fn question_answered(n: &mut Node, id: &str, items: impl FnOnce(QuestionKind) -> Vec<Value>) {
    let Some(a) = n.asks.get_mut(id) else { return };
    a.items.extend(items(a.kind));
    a.missing -= 1;
    if a.missing == 0 {
        let a = n.asks.remove(id).expect("just found");
        (a.reply)(Ok(a.items));
    }
}

/// An answer to one of this node's questions or acked broadcasts.
fn answered(n: &mut Node, payload: &[u8]) {
    if let Ok((v, atts)) = node::decode_body(payload) {
        let kind = v.get("type").and_then(Value::as_u64);
        if let Some(id) = v.get("requestId").and_then(Value::as_str).filter(|id| n.acking.contains_key(*id)) {
            let id = id.to_string();
            match kind {
                Some(node::request_type::BROADCAST_CLIENT_COUNT) => ack_report(n, &id, true, &v, atts),
                Some(node::request_type::BROADCAST_ACK) => ack_report(n, &id, false, &v, atts),
                _ => false,
            };
            return;
        }
    }
    let Some((id, items)) = node::decode_answer(payload) else { return };
    question_answered(n, &id, |_| items);
}

/// Where this node's answers to another node's request go.
#[derive(Debug, Clone)]
enum AnswerTo {
    /// The classic adapter's response channel of the namespace (`PUBLISH`).
    Classic(String),
    /// The asking node's own channel (the sharded adapter: `SPUBLISH`), with the namespace the
    /// answers carry.
    Sharded {
        /// `<key>#<nsp>#<asker uid>#`.
        channel: String,
        /// The namespace.
        nsp: String,
    },
}

impl AnswerTo {
    fn classic(prefix: &str, nsp: &str) -> AnswerTo {
        AnswerTo::Classic(node::response_channel(prefix, nsp))
    }

    /// Publishes `body`, counting it.
    async fn send(&self, conn: &mut redis::aio::MultiplexedConnection, counters: &Counters, body: Vec<u8>) {
        let (command, channel) = match self {
            AnswerTo::Classic(c) => ("PUBLISH", c),
            AnswerTo::Sharded { channel, .. } => ("SPUBLISH", channel),
        };
        match within(redis::cmd(command).arg(channel).arg(body).query_async::<()>(conn)).await {
            Ok(()) => Counters::add(&counters.published, 1),
            Err(_) => Counters::add(&counters.not_delivered, 1),
        }
    }
}

/// Answers another node's question from this node's workers, on a task of its own (the
/// workers answer through their mailboxes; nothing here waits for them).
fn answer(n: &Node, conn: &redis::aio::MultiplexedConnection, to: AnswerTo, request_id: String, kind: QuestionKind, sel: crate::app::worker::Selector) {
    let Some(task) = n.tasks.start(&n.counters) else { return };
    let mut op = n.local.of(&sel.nsp);
    for r in &sel.rooms {
        op = op.to(r);
    }
    for r in &sel.except_rooms {
        op = op.except(r);
    }
    let mut conn = conn.clone();
    let counters = n.counters.clone();
    let uid = n.id.clone();
    tokio::spawn(async move {
        let _task = task;
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
        let body = match &to {
            AnswerTo::Classic(_) => node::encode_answer(&request_id, kind, items),
            AnswerTo::Sharded { nsp, .. } => sharded::encode_fetch_response(&uid, nsp, &request_id, items),
        };
        to.send(&mut conn, &counters, body).await;
    });
}

/// Runs the namespace's handler for another node's server-side event (user code, on this
/// thread, under `catch_unwind`) and publishes its answer when one was asked for.
fn server_side(n: &Node, conn: &redis::aio::MultiplexedConnection, to: AnswerTo, nsp: &str, data: Vec<Value>, request_id: Option<String>) {
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
    let Some(task) = n.tasks.start(&n.counters) else { return };
    let body = match &to {
        AnswerTo::Classic(_) => node::encode_server_side_answer(&request_id, &answer),
        AnswerTo::Sharded { nsp, .. } => sharded::encode_server_side_response(&n.id, nsp, &request_id, &answer),
    };
    let mut conn = conn.clone();
    let counters = n.counters.clone();
    tokio::spawn(async move {
        let _task = task;
        to.send(&mut conn, &counters, body).await
    });
}

/// Delivers another node's acked broadcast to this node's sockets and, once their acks are in
/// (or its timeout passed), answers with the recipient count and each ack, so the asking node
/// counts this one's recipients and answers.
fn answer_acked_broadcast(n: &Node, conn: &redis::aio::MultiplexedConnection, to: AnswerTo, b: node::AckedBroadcast) {
    let Some(task) = n.tasks.start(&n.counters) else { return };
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
    // The asking node's timeout, within this node's own request timeout: another node cannot
    // make this one's sockets hold an ack longer than its own questions may take.
    let timeout = Duration::from_millis(b.timeout_ms).min(n.cfg.request_timeout);
    let pending = op.emit_binary_with_ack(&b.event.event, &b.event.args, b.event.attachments.clone(), timeout);
    let mut conn = conn.clone();
    let counters = n.counters.clone();
    let uid = n.id.clone();
    tokio::spawn(async move {
        let _task = task;
        // Every ack that came, whether or not all did.
        let answers = match pending.await {
            Ok(Ok(r)) => r,
            Ok(Err(partial)) => partial.responses,
            Err(_) => return,
        };
        let bodies = match &to {
            AnswerTo::Classic(_) => node::encode_ack_answers(&b.request_id, &answers),
            AnswerTo::Sharded { nsp, .. } => sharded::encode_ack_answers(&uid, nsp, &b.request_id, &answers),
        };
        for body in bodies {
            to.send(&mut conn, &counters, body).await;
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
                    return answer(n, conn, AnswerTo::classic(prefix, nsp), id, kind, sel);
                }
                if let Some((data, request_id)) = node::decode_server_side_emit(&n.id, &req) {
                    Counters::add(&n.counters.received, 1);
                    return server_side(n, conn, AnswerTo::classic(prefix, nsp), nsp, data, request_id);
                }
                if let Some(b) = node::decode_acked_broadcast(&n.id, nsp, &req, &atts) {
                    Counters::add(&n.counters.received, 1);
                    return answer_acked_broadcast(n, conn, AnswerTo::classic(prefix, nsp), b);
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
    tracing::trace!(channel, bytes = payload.len(), "message from Redis");
    deliver(n, inbound);
}

/// Posts a message from another node to every worker, unless the workers hold `queue` such
/// messages not handled yet (then it is dropped and counted).
fn deliver(n: &mut Node, inbound: Inbound) {
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
    let held = post_all(&n.poster, inbound);
    n.inflight.held.push_back(held);
}

/// Decodes one message of the sharded adapter's format: a broadcast or request is posted to
/// every worker, a question or acked broadcast answered on the asker's own channel, an answer
/// collected.
fn receive_sharded(n: &mut Node, prefix: &str, conn: &redis::aio::MultiplexedConnection, payload: &[u8]) {
    use sharded::Message;
    let msg = match sharded::decode(&n.id, payload) {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(error = %e, "dropped a malformed message from Redis");
            return;
        }
    };
    let to = |nsp: &str, from: &str| AnswerTo::Sharded { channel: sharded::answer_channel(prefix, nsp, from), nsp: nsp.to_string() };
    match msg {
        Message::Broadcast(b) => deliver(n, Inbound::Broadcast(b)),
        Message::Join(sel, rooms) => deliver(n, Inbound::Join(sel, rooms)),
        Message::Leave(sel, rooms) => deliver(n, Inbound::Leave(sel, rooms)),
        Message::Disconnect(sel, close) => deliver(n, Inbound::Disconnect(sel, close)),
        Message::AckedBroadcast { from, b } => {
            Counters::add(&n.counters.received, 1);
            let to = to(&b.sel.nsp, &from);
            answer_acked_broadcast(n, conn, to, b);
        }
        Message::Fetch { from, request_id, sel } => {
            Counters::add(&n.counters.received, 1);
            let to = to(&sel.nsp, &from);
            answer(n, conn, to, request_id, QuestionKind::Fetch, sel);
        }
        Message::ServerSide { from, nsp, data, request_id } => {
            Counters::add(&n.counters.received, 1);
            let to = to(&nsp, &from);
            server_side(n, conn, to, &nsp, data, request_id);
        }
        Message::Answer { request_id, kind, data, attachments } => match kind {
            sharded::kind::BROADCAST_CLIENT_COUNT => {
                ack_report(n, &request_id, true, &data, attachments);
            }
            sharded::kind::BROADCAST_ACK => {
                ack_report(n, &request_id, false, &data, attachments);
            }
            _ => question_answered(n, &request_id, |k| sharded::answer_items(k, &data)),
        },
    }
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

/// Sends a pipeline of `count` messages, counting them published or not delivered.
async fn send_counted(pipe: redis::Pipeline, conn: &mut redis::aio::MultiplexedConnection, counters: &Counters, count: u64) -> redis::RedisResult<()> {
    let result = within(pipe.query_async::<()>(conn)).await;
    Counters::add(if result.is_ok() { &counters.published } else { &counters.not_delivered }, count);
    result
}

/// Publishes the queued relayed copies as one pipeline, in the order they were heard.
async fn publish_relays(n: &mut Node, conn: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<()> {
    let mut pipe = redis::pipe();
    let count = n.relays.len() as u64;
    for (channel, payload) in n.relays.drain(..) {
        pipe.publish(channel, payload).ignore();
    }
    send_counted(pipe, conn, &n.counters, count).await
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

/// The answers this node is making to other nodes' questions and acked broadcasts (each a task
/// that asks every worker, waits, and publishes), at most `limit` at once: past it a request
/// is dropped, counted with the inbound drops and logged once per episode, so another node
/// cannot make this one hold work without bound.
struct Tasks {
    running: Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
    dropping: AtomicBool,
}

/// One running answer; dropping it (when its task ends) frees its place.
struct Task(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Tasks {
    fn new(limit: usize) -> Tasks {
        Tasks { running: Arc::default(), limit: limit.max(1), dropping: AtomicBool::new(false) }
    }

    /// A place for one more answer, or `None` (counted, logged once) when `limit` run.
    fn start(&self, counters: &Counters) -> Option<Task> {
        if self.running.load(Ordering::Acquire) >= self.limit {
            Counters::add(&counters.inbound_dropped, 1);
            if !self.dropping.swap(true, Ordering::Relaxed) {
                tracing::warn!(limit = self.limit, "other nodes ask faster than this node answers: dropping their requests until it catches up");
            }
            return None;
        }
        self.dropping.store(false, Ordering::Relaxed);
        self.running.fetch_add(1, Ordering::AcqRel);
        Some(Task(self.running.clone()))
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
    fn answers_to_other_nodes_are_bounded_and_their_places_come_back() {
        let counters = Counters::default();
        let tasks = Tasks::new(2);
        let (a, b) = (tasks.start(&counters).unwrap(), tasks.start(&counters).unwrap());
        assert!(tasks.start(&counters).is_none(), "a third answer while two run is dropped");
        assert!(tasks.start(&counters).is_none());
        assert_eq!(counters.snapshot().inbound_dropped, 2);
        drop(a);
        let c = tasks.start(&counters).expect("a place came back");
        drop((b, c));
        assert_eq!(tasks.running.load(Ordering::Acquire), 0);
    }

    #[test]
    fn nothing_is_queued_while_redis_is_down_and_the_queue_is_bounded() {
        let (a, mut p) = prepare(RedisConfig { queue: 2, ..RedisConfig::new("redis://127.0.0.1:1/") }).unwrap();
        // Not connected yet: dropped and counted, never queued; the caller is told.
        assert!(!a.send(join()));
        assert_eq!(a.stats().not_delivered, 1);
        assert!(p.rx.try_recv().is_err());
        // Connected: queued up to the bound, then dropped and counted.
        p.up.store(true, Ordering::Relaxed);
        let taken: Vec<bool> = (0..3).map(|_| a.send(join())).collect();
        assert_eq!(taken, [true, true, false]);
        assert_eq!(a.stats().not_delivered, 2);
        // A full-queue episode began at the first drop (logged then, once) ...
        assert_eq!(a.full_since.load(Ordering::Relaxed), 1);
        assert!(!a.send(join()));
        assert_eq!(a.full_since.load(Ordering::Relaxed), 1, "one episode, however many drops");
        // Room for one: taken, but the queue is full again, so the episode goes on.
        assert!(p.rx.try_recv().is_ok());
        assert!(a.send(join()));
        assert_eq!(a.full_since.load(Ordering::Relaxed), 1);
        assert!(p.rx.try_recv().is_ok() && p.rx.try_recv().is_ok() && p.rx.try_recv().is_err());
        // ... and ends when the queue takes a message again with half of it free.
        assert!(a.send(join()));
        assert_eq!(a.full_since.load(Ordering::Relaxed), u64::MAX);
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

    #[test]
    fn pushes_are_bounded_and_only_messages_take_a_place() {
        use redis::{PushInfo, PushKind, Value as V};
        let (tx, mut rx) = mpsc::channel(2);
        let closed = Arc::new(Notify::new());
        let counters = Arc::new(Counters::default());
        let push = push_sender(tx, closed.clone(), counters.clone(), &[PushKind::SMessage]);
        let p = |kind| PushInfo { kind, data: vec![V::BulkString(b"ch".to_vec()), V::Int(1)] };
        // Confirmations, however many, take no place.
        for _ in 0..10 {
            push(p(PushKind::SSubscribe)).unwrap();
            push(p(PushKind::SUnsubscribe)).unwrap();
        }
        assert!(rx.is_empty());
        // Messages: up to the bound, then dropped and counted.
        for _ in 0..5 {
            push(p(PushKind::SMessage)).unwrap();
        }
        assert_eq!(rx.len(), 2);
        assert_eq!(counters.snapshot().inbound_dropped, 3);
        // The end of the connection is told though the queue is full.
        push(PushInfo { kind: PushKind::Disconnection, data: vec![] }).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), closed.notified()).await }).expect("told");
        assert_eq!(rx.len(), 2);
        assert!(rx.try_recv().is_ok());
    }

    fn keys(v: &[(&str, &str)]) -> std::collections::HashSet<RoomKey> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn a_room_channel_is_wanted_while_any_worker_has_the_room() {
        let t = RoomTable::default();
        assert!(!t.take_changed());
        t.change("/", "r", true);
        t.change("/", "r", true); // a second worker's shard
        t.change("/x", "r", true); // another namespace's room
        assert!(t.take_changed() && !t.take_changed(), "one wake-up for any number of changes");
        let (mut add, remove) = t.diff(&keys(&[]), false);
        add.sort();
        assert_eq!((add, remove), (vec![("/".into(), "r".into()), ("/x".into(), "r".into())], vec![]));
        let subscribed = keys(&[("/", "r"), ("/x", "r")]);
        t.change("/", "r", false);
        assert!(!t.take_changed(), "one worker still has it: no wake-up");
        assert_eq!(t.diff(&subscribed, false), (vec![], vec![]));
        t.change("/", "r", false);
        assert!(t.take_changed());
        assert_eq!(t.diff(&subscribed, false), (vec![], vec![("/".into(), "r".into())]), "the last one ended");
        t.change("/", "gone", false);
        assert!(!t.take_changed());
        assert_eq!(t.len(), (1, 0), "an unknown room's end is ignored; ended rooms leave the table");
    }

    #[test]
    fn churn_within_one_interval_costs_no_command_and_nothing_lingers() {
        let t = RoomTable::default();
        let mut subscribed = keys(&[("/", "keep"), ("/", "old")]);
        t.change("/", "keep", true);
        // Two workers' rooms made and ended between two diffs, in any interleaving.
        for i in 0..1000 {
            let room = format!("r{i}");
            t.change("/", &room, true);
            t.change("/", &room, true);
            t.change("/", &room, false);
            t.change("/", &room, false);
        }
        assert!(t.take_changed());
        assert_eq!(t.diff(&subscribed, false), (vec![], vec![]), "only touched rooms are looked at");
        assert_eq!(t.len(), (1, 0), "the touched rooms are forgotten with the diff");
        // After a reconnection every room is compared: "old" ended while nobody looked.
        let (add, remove) = t.diff(&subscribed, true);
        assert!(add.is_empty(), "{add:?}");
        assert_eq!(remove, vec![("/".to_string(), "old".to_string())]);
        subscribed.remove(&remove[0]);
        assert_eq!(t.diff(&subscribed, true), (vec![], vec![]));
        assert_eq!(t.diff(&keys(&[]), true).0, vec![("/".to_string(), "keep".to_string())], "a new connection subscribes to all");
    }

    #[test]
    fn the_touched_rooms_are_bounded_and_past_the_bound_every_room_is_compared() {
        let t = RoomTable::default();
        let mut subscribed = keys(&[("/", "old")]);
        // Churn while nobody diffs (Redis down): more rooms than SUB_BATCH made and ended.
        for i in 0..3 * SUB_BATCH {
            let room = format!("r{i}");
            t.change("/", &room, true);
            t.change("/", &room, false);
            assert!(t.len().1 <= SUB_BATCH);
        }
        t.change("/", "new", true);
        assert_eq!(t.len(), (1, 0), "the touched rooms were forgotten for a full comparison");
        let (add, remove) = t.diff(&subscribed, false);
        assert_eq!((add.clone(), remove.clone()), (vec![("/".to_string(), "new".to_string())], vec![("/".to_string(), "old".to_string())]));
        subscribed.extend(add);
        subscribed.remove(&remove[0]);
        assert_eq!(t.diff(&subscribed, false), (vec![], vec![]));
    }

    #[test]
    fn only_a_sharded_adapter_keeps_rooms() {
        let (a, p) = prepare(RedisConfig::new("redis://127.0.0.1:1/")).unwrap();
        a.room_changed("/", "r", true);
        assert_eq!(p.rooms.len(), (0, 0));
        let (a, p) = prepare(RedisConfig { sharded: true, ..RedisConfig::new("redis://127.0.0.1:1/") }).unwrap();
        a.room_changed("/", "r", true);
        assert_eq!(p.rooms.len(), (1, 1));
        assert!(p.rx.is_empty(), "a room change is no message: it cannot take a place in the queue or be lost");
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
