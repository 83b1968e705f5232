//! The worker's side of the admin UI in development mode: what happens to this worker's sockets
//! (connected, rooms joined and left, events in and out, data and transport changes,
//! disconnected) told to the admin namespace as ordinary broadcasts — encoded once, delivered to
//! this worker's admin sockets and posted to the other workers (and, in a cluster, the other
//! nodes) like any broadcast; and the answers to the stats thread's and `all_sockets`' questions.
//!
//! Installed only in development mode (`WorkerCore::admin` is `None` otherwise); called once per
//! connection, room change, disconnection, and per event only through the namespace hooks the
//! development mode installs.
//!
//! Bounded: each worker emits at most `events_per_second` admin events per second (the rest
//! are dropped and counted), and with no admin socket on this node nor a recent heartbeat from
//! another node ([`WATCHING_ROOM`]) nothing is encoded or published.
//!
//! Must never: be called per packet when the admin UI is off or in production mode, or tell the
//! admin namespace about its own sockets' events (Node does not either).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::app::namespace::Event;
use crate::app::pending::{Merge, Part};
use crate::app::worker::{Broadcast, Selector, SioMail, WorkerCore};
use crate::engine::{Ctx, SendFlags};
use crate::proto::eio::Transport;
use crate::proto::sio::encode;

/// Questions the admin UI asks every worker.
pub enum AdminMail {
    /// Every socket of this worker, serialized as the UI shows them (`all_sockets`).
    Sockets {
        /// This worker's part.
        part: Part<Vec<Value>>,
    },
    /// The sockets per namespace on this worker (`server_stats.namespaces`).
    Namespaces {
        /// This worker's part.
        part: Part<NamespaceCounts>,
    },
}

/// Sockets per namespace, summed over the workers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NamespaceCounts(pub Vec<(String, usize)>);

impl Merge for NamespaceCounts {
    fn merge(&mut self, part: NamespaceCounts) {
        for (name, n) in part.0 {
            match self.0.iter_mut().find(|(k, _)| *k == name) {
                Some((_, m)) => *m += n,
                None => self.0.push((name, n)),
            }
        }
    }
}

/// Answers the admin UI's question on this worker.
pub(crate) fn answer(core: &WorkerCore, ctx: &Ctx<'_, SioMail>, m: AdminMail) {
    match m {
        AdminMail::Sockets { part } => {
            let all = match &core.admin {
                Some(tap) => core.connected_slots().into_iter().map(|idx| tap.serialize(core, ctx, idx)).collect(),
                None => Vec::new(),
            };
            part.answer(all);
        }
        AdminMail::Namespaces { part } => {
            part.answer(NamespaceCounts(core.namespace_sizes().map(|(n, c)| (n.to_string(), c)).collect()));
        }
    }
}

/// The development mode's settings, shared by every worker.
#[derive(Debug)]
pub struct Tap {
    /// The admin namespace.
    pub(crate) nsp: String,
    secure: bool,
    path: String,
    /// Sockets connected to the admin namespace, on every worker. With none (and no other
    /// node to tell), nothing is encoded or posted.
    watchers: AtomicUsize,
    /// Admin events each worker may emit per second (`AdminUi::events_per_second`).
    per_second: u32,
    /// When a node of the cluster last said it has an admin socket (a broadcast to
    /// [`WATCHING_ROOM`]), in milliseconds since `epoch`; `u64::MAX`: never.
    epoch: Instant,
    heard_watching: AtomicU64,
    /// How long such a heartbeat counts (three stats intervals: each node sends one per
    /// interval while it has an admin socket).
    watch_ttl: Duration,
}

/// The room of the admin namespace a node broadcasts to, once per stats interval and when an
/// admin socket connects, while it has admin sockets: the heartbeat that tells the other nodes
/// of a cluster to publish their admin events. Nobody joins it, so no admin client (nor a Node
/// server's) gets it.
pub(crate) const WATCHING_ROOM: &str = "shardcast#admin-ui-watching";

/// A worker's admin events in the current second: past the budget, events are dropped and
/// counted (`shardcast_admin_ui_events_dropped_total`), so that a few broadcasts to many
/// sockets (one `event_sent` per recipient) cannot flood the admin clients.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    window: Option<Instant>,
    used: u32,
    /// Events dropped for the budget since the start.
    pub(crate) dropped: u64,
    /// Admin events the cluster adapter refused (its queue half full, or not delivered).
    pub(crate) not_published: u64,
}

impl Budget {
    /// Takes one event from the budget of the second `now` falls in; false (and counted) when
    /// it is spent.
    fn take(&mut self, now: Instant, per_second: u32) -> bool {
        if self.window.is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(1)) {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used < per_second {
            self.used += 1;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Tap {
    pub(crate) fn new(nsp: &str, secure: bool, path: &str, per_second: u32, watch_ttl: Duration) -> Tap {
        Tap {
            nsp: nsp.to_string(),
            secure,
            path: path.to_string(),
            watchers: AtomicUsize::new(0),
            per_second,
            epoch: Instant::now(),
            heard_watching: AtomicU64::new(u64::MAX),
            watch_ttl,
        }
    }

    /// A socket joins (`+1`) or leaves (`-1`) namespace `nsp`: counted when it is the admin
    /// namespace.
    pub(crate) fn watch(&self, nsp: &str, joined: bool) {
        if nsp == self.nsp {
            if joined {
                self.watchers.fetch_add(1, Ordering::Relaxed);
            } else {
                self.watchers.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether this node has an admin socket (on any worker).
    pub(crate) fn watched_here(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) > 0
    }

    /// A broadcast reached this worker: when it is a heartbeat ([`WATCHING_ROOM`]), some node
    /// of the cluster has an admin socket now.
    pub(crate) fn note(&self, sel: &Selector, now: Instant) {
        if sel.nsp == self.nsp && sel.rooms.iter().any(|r| r == WATCHING_ROOM) {
            let ms = now.saturating_duration_since(self.epoch).as_millis() as u64;
            self.heard_watching.store(ms, Ordering::Relaxed);
        }
    }

    /// Whether a node of the cluster said it had an admin socket within the last `watch_ttl`.
    fn watched_elsewhere(&self, now: Instant) -> bool {
        let at = self.heard_watching.load(Ordering::Relaxed);
        at != u64::MAX && (now.saturating_duration_since(self.epoch).as_millis() as u64).saturating_sub(at) <= self.watch_ttl.as_millis() as u64
    }

    /// Tells the other nodes of a cluster that this node has an admin socket (an admin socket
    /// just connected here; the stats thread repeats it every interval).
    pub(crate) fn announce(&self, core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>) {
        if core.cluster.is_some() {
            let packet = encode::event(&self.nsp, "watching", &[], None, Vec::new());
            let sel = Selector { nsp: self.nsp.clone(), rooms: vec![WATCHING_ROOM.to_string()], ..Default::default() };
            core.broadcast(ctx, Broadcast { sel, packet, flags: SendFlags::default(), ack: None, offset: None });
        }
    }

    /// Whether anyone may hear: an admin socket on some worker of this node, or, in a
    /// cluster, a recent heartbeat from a node that has one (with none anywhere, nothing is
    /// encoded or published); and whether this worker's budget of events for this second has
    /// room (else the event is dropped and counted).
    fn heard(&self, core: &mut WorkerCore, ctx: &Ctx<'_, SioMail>) -> bool {
        let now = ctx.now();
        (self.watched_here() || (core.cluster.is_some() && self.watched_elsewhere(now))) && core.admin_budget.take(now, self.per_second)
    }

    fn emit(&self, core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, event: &str, args: &[Value], attachments: Vec<Bytes>) {
        let packet = encode::event(&self.nsp, event, args, None, attachments);
        let sel = Selector { nsp: self.nsp.clone(), ..Default::default() };
        core.broadcast(ctx, Broadcast { sel, packet, flags: SendFlags::default(), ack: None, offset: None });
    }

    /// `room_joined` (nsp, room, id, date).
    pub(crate) fn joined(&self, core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, idx: u32, room: &str) {
        if !self.heard(core, ctx) {
            return;
        }
        let s = core.sockets.at(idx);
        let args = [json!(&*s.nsp), json!(room), json!(&*s.id), iso_date(now_ms())];
        self.emit(core, ctx, "room_joined", &args, Vec::new());
    }

    /// `room_left` (nsp, room, id, date).
    pub(crate) fn left(&self, core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, nsp: &str, room: &str, id: &str) {
        if !self.heard(core, ctx) {
            return;
        }
        let args = [json!(nsp), json!(room), json!(id), iso_date(now_ms())];
        self.emit(core, ctx, "room_left", &args, Vec::new());
    }

    /// `socket_connected` (serialized socket, date).
    pub(crate) fn connected(&self, core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, idx: u32) {
        if !self.heard(core, ctx) {
            return;
        }
        let args = [self.serialize(core, ctx, idx), iso_date(now_ms())];
        self.emit(core, ctx, "socket_connected", &args, Vec::new());
    }

    /// `socket_disconnected` (nsp, id, reason, date).
    pub(crate) fn disconnected(&self, core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, nsp: &str, id: &str, reason: &str) {
        if !self.heard(core, ctx) {
            return;
        }
        let args = [json!(nsp), json!(id), json!(reason), iso_date(now_ms())];
        self.emit(core, ctx, "socket_disconnected", &args, Vec::new());
    }

    /// `socket_updated` with `fields` besides `id` and `nsp`.
    pub(crate) fn updated(&self, core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, idx: u32, field: &str, value: Value) {
        if !self.heard(core, ctx) {
            return;
        }
        let s = core.sockets.at(idx);
        let args = [json!({ "id": &*s.id, "nsp": &*s.nsp, field: value })];
        self.emit(core, ctx, "socket_updated", &args, Vec::new());
    }

    /// `event_received` (nsp, id, [event, ...args], date); binary arguments travel as
    /// attachments, as Node sends them.
    pub(crate) fn received(&self, core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, idx: u32, ev: &Event) {
        if *core.sockets.at(idx).nsp == *self.nsp || !self.heard(core, ctx) {
            return;
        }
        let s = core.sockets.at(idx);
        let mut all = Vec::with_capacity(ev.args.len() + 1);
        all.push(json!(ev.name));
        all.extend(ev.args.iter().cloned());
        let args = [json!(&*s.nsp), json!(&*s.id), Value::Array(all), iso_date(now_ms())];
        self.emit(core, ctx, "event_received", &args, ev.attachments.clone());
    }

    /// `event_sent` (nsp, id, [event, ...args], date). The hook sees binary arguments as
    /// placeholders without their bytes: they are sent as `null`.
    pub(crate) fn sent(&self, core: &mut WorkerCore, ctx: &mut Ctx<'_, SioMail>, idx: u32, event: &str, args: &[Value]) {
        if *core.sockets.at(idx).nsp == *self.nsp || !self.heard(core, ctx) {
            return;
        }
        let s = core.sockets.at(idx);
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(json!(event));
        all.extend(args.iter().map(|a| if crate::proto::sio::packet::placeholder_num(a).is_some() { Value::Null } else { a.clone() }));
        let args = [json!(&*s.nsp), json!(&*s.id), Value::Array(all), iso_date(now_ms())];
        self.emit(core, ctx, "event_sent", &args, Vec::new());
    }

    /// A socket as the UI shows it (Node's `serialize`): id, clientId (the Engine.IO session
    /// id's first 12 characters), transport, nsp, data, handshake, rooms (its own id first).
    pub(crate) fn serialize(&self, core: &WorkerCore, ctx: &Ctx<'_, SioMail>, idx: u32) -> Value {
        let s = core.sockets.at(idx);
        let client_id: String = ctx.sid(s.client).map(|sid| sid.chars().take(12).collect()).unwrap_or_default();
        let transport = match ctx.transport(s.client) {
            Some(Transport::WebSocket) => "websocket",
            _ => "polling",
        };
        let hs = &s.handshake;
        let mut headers = Map::new();
        for (k, v) in hs.headers.iter() {
            headers.entry(k.to_ascii_lowercase()).or_insert_with(|| json!(v));
        }
        let header = |name: &str| headers.get(name).and_then(Value::as_str).map(str::to_string);
        let address = header("cf-connecting-ip").or_else(|| header("x-forwarded-for")).or_else(|| hs.address.map(|a| a.to_string()));
        let mut query = Map::new();
        for (k, v) in form_urlencoded::parse(hs.query.as_bytes()) {
            query.insert(k.into_owned(), json!(v));
        }
        let mut rooms = vec![s.id.to_string()];
        let mut others: Vec<String> = s.rooms.iter().filter(|r| ***r != *s.id).map(|r| r.to_string()).collect();
        others.sort_unstable();
        rooms.extend(others);
        json!({
            "id": &*s.id,
            "clientId": client_id,
            "transport": transport,
            "nsp": &*s.nsp,
            "data": s.shared.clone().unwrap_or_else(|| json!({})),
            "handshake": {
                "address": address,
                "headers": headers,
                "query": query,
                "issued": hs.issued,
                "secure": self.secure,
                "time": js_date_string(hs.issued),
                "url": format!("{}?{}", self.path, hs.query),
                "xdomain": hs.origin.is_some(),
            },
            "rooms": rooms,
        })
    }
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A JavaScript `Date` as JSON writes it: `2026-12-01T15:17:38.123Z`.
pub(crate) fn iso_date(ms: u64) -> Value {
    let (days, rest) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    let (y, mo, d) = civil(days);
    let (h, mi, s, milli) = (rest / 3_600_000, rest / 60_000 % 60, rest / 1000 % 60, rest % 1000);
    Value::String(format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z"))
}

/// `new Date(ms).toString()` in UTC: `Tue Dec 01 2026 15:17:38 GMT+0000 (Coordinated Universal Time)`.
fn js_date_string(ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (days, rest) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    let (y, mo, d) = civil(days);
    let (h, mi, s) = (rest / 3_600_000, rest / 60_000 % 60, rest / 1000 % 60);
    format!("{} {} {d:02} {y:04} {h:02}:{mi:02}:{s:02} GMT+0000 (Coordinated Universal Time)", DAYS[days.rem_euclid(7) as usize], MONTHS[mo as usize - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_written_as_javascript_writes_them() {
        // new Date(1796138258123).toISOString() and .toString() under TZ=UTC.
        assert_eq!(iso_date(1_796_138_258_123), json!("2026-12-01T15:17:38.123Z"));
        assert_eq!(js_date_string(1_796_138_258_123), "Tue Dec 01 2026 15:17:38 GMT+0000 (Coordinated Universal Time)");
        assert_eq!(iso_date(951_782_400_000), json!("2000-02-29T00:00:00.000Z"));
        assert_eq!(iso_date(0), json!("1970-01-01T00:00:00.000Z"));
    }

    #[test]
    fn namespace_counts_add_up_by_name() {
        let mut a = NamespaceCounts(vec![("/".into(), 2)]);
        a.merge(NamespaceCounts(vec![("/admin".into(), 1), ("/".into(), 3)]));
        assert_eq!(a.0, vec![("/".to_string(), 5), ("/admin".to_string(), 1)]);
    }
}
