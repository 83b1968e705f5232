//! The server side of [`@socket.io/admin-ui`](https://socket.io/docs/v4/admin-ui/) (0.5), what
//! Node's `instrument(io, { auth, mode, readonly, serverId, namespaceName })` does, turned on with
//! [`ServerBuilder::admin_ui`](super::ServerBuilder::admin_ui) (`--admin-ui-auth` in the binary).
//!
//! - The admin namespace (`/admin` by default) is an ordinary namespace added to the server: its
//!   clients count against the same limits (slow consumer, send buffer, rate limits) as any.
//! - `auth`: the UI's `{ type: "basic", username, password }` is checked against a bcrypt hash
//!   on one thread of its own (`auth`), never on a worker; a success answers `session` with an
//!   id the UI may reconnect with (at most 1,024 kept, the oldest forgotten).
//!   A failure is Node's CONNECT_ERROR `{"message":"invalid credentials"}`.
//! - On connect: `config` (`supportedFeatures`), and in development mode `all_sockets`.
//! - `server_stats` every 2 s (as Node) from one thread (`stats`) that scrapes the workers'
//!   own counters (the `/metrics` scrape: `rt::threads::Scraper`) and asks each worker for its
//!   namespaces' socket counts (one mail per worker).
//! - Development mode only (as Node): `socket_connected`, `socket_updated`, `room_joined`,
//!   `room_left`, `socket_disconnected`, `event_received`, `event_sent`, emitted by the worker
//!   that owns the socket (`tap`) as ordinary broadcasts to the admin namespace: encoded once,
//!   posted to the other workers' mailboxes, so an admin client on worker 0 sees a socket of
//!   worker 1.
//! - The actions `emit`, `join`, `leave`, `_disconnect` (unless `readonly`) go through the
//!   [`ServerHandle`] (mailbox messages).
//!
//! Across a Redis cluster (as Node with `@socket.io/redis-adapter`): the broadcasts to the admin
//! namespace and the actions reach every node, so an admin client sees every node's
//! `server_stats` (one `serverId` each) and, in development mode, every node's socket events;
//! `all_sockets` lists this node's sockets only (`tests/cluster.rs`,
//! `admin_ui_across_a_node_format_cluster`). In development mode a node publishes its sockets'
//! events only while some node has an admin socket (`tap::WATCHING_ROOM`, a heartbeat), at a
//! lower priority than the application's broadcasts (`Adapter::send_low`), and each worker
//! emits at most `events_per_second` of them (`tap::Budget`; a difference from Node).
//!
//! Must never: cost anything per packet when off (nothing is installed: no check is added to
//! the packet path; in production mode nothing per packet either), run bcrypt or wait on a
//! worker thread, or hold more than a fixed number of sessions and queued logins.

pub(crate) mod auth;
pub(crate) mod stats;
pub(crate) mod tap;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::namespace::{Event, Namespace, Namespaces, Outgoing};
use super::socket::Socket;
use super::ServerHandle;

pub use tap::Tap;

/// The default of [`AdminUi::events_per_second`].
pub const DEFAULT_EVENTS_PER_SECOND: u32 = 1000;

/// How the admin UI logs in.
#[derive(Clone)]
pub enum AdminAuth {
    /// No authentication (Node's `auth: false`): anyone who reaches the server can watch every
    /// socket and disconnect them. Only behind a private network.
    Disabled,
    /// Node's `{ type: "basic", username, password }`, the password as a bcrypt hash.
    Basic {
        /// The user name the UI must send.
        username: String,
        /// The bcrypt hash (`$2a$`, `$2b$` or `$2y$`) of the password.
        password_hash: String,
    },
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminAuth::Disabled => f.write_str("Disabled"),
            AdminAuth::Basic { username, .. } => f.debug_struct("Basic").field("username", username).finish_non_exhaustive(),
        }
    }
}

/// The lowest bcrypt cost accepted (bcrypt's own minimum).
pub const MIN_COST: u32 = 4;
/// The highest bcrypt cost accepted: cost 14 is about a second of CPU per check on one core,
/// already enough for the login thread's queue to take minutes to drain.
pub const MAX_COST: u32 = 14;

/// A bcrypt hash that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--admin-ui-auth: the admin UI password must be a valid bcrypt hash ($2a$, $2b$ or $2y$, cost 4-14; a higher cost lets a few logins hold the login thread for seconds): {0}")]
pub struct InvalidHash(String);

impl AdminAuth {
    /// Basic authentication; the hash is checked now (Node checks it in `instrument`).
    pub fn basic(username: &str, password_hash: &str) -> Result<AdminAuth, InvalidHash> {
        let parts: bcrypt::HashParts = password_hash.parse().map_err(|e: bcrypt::BcryptError| InvalidHash(e.to_string()))?;
        if !(MIN_COST..=MAX_COST).contains(&parts.get_cost()) {
            return Err(InvalidHash(format!("cost {}", parts.get_cost())));
        }
        Ok(AdminAuth::Basic { username: username.to_string(), password_hash: password_hash.to_string() })
    }
}

/// Which events the admin namespace gets (Node's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminMode {
    /// `config` and `server_stats` only: nothing is done per socket or per packet.
    Production,
    /// Also every socket's connection, rooms, events in and out, and disconnection: one
    /// broadcast to the admin namespace per such event (the UI's "Sockets" and "Events" pages).
    Development,
}

/// The admin UI's options (Node's `instrument` options).
#[derive(Debug, Clone)]
pub struct AdminUi {
    /// How the UI logs in.
    pub auth: AdminAuth,
    /// Production (the default here; Node's default follows `NODE_ENV`) or development.
    pub mode: AdminMode,
    /// The admin namespace (`/admin`).
    pub namespace: String,
    /// No actions (emit, join, leave, disconnect): the UI only watches.
    pub readonly: bool,
    /// The `serverId` of `server_stats` (default: the host name, as Node).
    pub server_id: Option<String>,
    /// How often `server_stats` is emitted (Node: 2 s).
    pub stats_interval: Duration,
    /// Development mode: the admin events (`socket_connected`, `event_sent`, ...) each worker
    /// emits per second, at most; the rest are dropped and counted
    /// (`shardcast_admin_ui_events_dropped_total`). Node has no such bound (it buffers).
    pub events_per_second: u32,
}

impl AdminUi {
    /// The admin UI with `auth`, in production mode, on `/admin`, stats every 2 s.
    pub fn new(auth: AdminAuth) -> AdminUi {
        AdminUi {
            auth,
            mode: AdminMode::Production,
            namespace: "/admin".to_string(),
            readonly: false,
            server_id: None,
            stats_interval: Duration::from_secs(2),
            events_per_second: DEFAULT_EVENTS_PER_SECOND,
        }
    }

    /// The development mode's budget of admin events per second and worker.
    pub fn events_per_second(mut self, n: u32) -> Self {
        self.events_per_second = n;
        self
    }

    /// Production or development mode.
    pub fn mode(mut self, mode: AdminMode) -> Self {
        self.mode = mode;
        self
    }

    /// The features the UI is told about (Node's `supportedFeatures`, in its order).
    fn features(&self) -> Vec<&'static str> {
        let mut f = if self.readonly { Vec::new() } else { vec!["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT"] };
        f.push("AGGREGATED_EVENTS");
        if self.mode == AdminMode::Development {
            f.push("ALL_EVENTS");
        }
        f
    }
}

/// The admin UI of a server being started: its login thread, and what the workers need.
pub(crate) struct Prepared {
    cfg: AdminUi,
    auth: Option<auth::AuthThread>,
    tap: Option<Arc<Tap>>,
}

/// The admin UI's threads while the server runs.
pub(crate) struct Running {
    auth: Option<auth::AuthThread>,
    stats: stats::StatsThread,
}

impl Running {
    /// Stops the stats and login threads (logins waiting are refused).
    pub(crate) fn stop(self) {
        self.stats.stop();
        if let Some(a) = self.auth {
            a.stop();
        }
    }
}

impl Prepared {
    /// Adds the admin namespace to `namespaces` and, in development mode, the observers of
    /// every other namespace's events. `secure`: TLS is on (the handshakes' `secure`); `path`:
    /// the Engine.IO path (their `url`).
    pub(crate) fn new(cfg: AdminUi, namespaces: &mut Namespaces, secure: bool, path: &str) -> Prepared {
        let auth = match &cfg.auth {
            AdminAuth::Disabled => {
                tracing::warn!(
                    namespace = cfg.namespace,
                    "admin UI authentication is disabled: anyone who reaches the server can watch and disconnect every socket"
                );
                None
            }
            AdminAuth::Basic { username, password_hash } => Some(auth::AuthThread::spawn(username.clone(), password_hash.clone())),
        };
        let dev = cfg.mode == AdminMode::Development;
        let tap = dev.then(|| Arc::new(Tap::new(&cfg.namespace, secure, path, cfg.events_per_second, cfg.stats_interval * 3)));
        if dev {
            for (name, ns) in namespaces.fixed.iter_mut() {
                if *name != cfg.namespace {
                    *ns = Arc::new(observed(ns));
                }
            }
            if let Some((_, ns)) = namespaces.dynamic.as_mut() {
                *ns = Arc::new(observed(ns));
            }
        }
        let admin = admin_namespace(&cfg, auth.as_ref().map(|a| a.sender()));
        if namespaces.fixed.insert(cfg.namespace.clone(), Arc::new(admin)).is_some() {
            tracing::warn!(namespace = cfg.namespace, "the admin UI's namespace replaces the application's namespace of the same name");
        }
        Prepared { cfg, auth, tap }
    }

    /// What each worker gets: the tap in development mode.
    pub(crate) fn tap(&self) -> Option<Arc<Tap>> {
        self.tap.clone()
    }

    /// Starts the stats thread once the workers run.
    pub(crate) fn start(self, scraper: crate::rt::threads::Scraper, handle: ServerHandle, fixed: Vec<String>) -> Running {
        let stats = stats::StatsThread::spawn(&self.cfg, scraper, handle, fixed, self.tap);
        Running { auth: self.auth, stats }
    }
}

/// `ns` with the development mode's observers: every incoming event is told to the admin
/// namespace before the user's `on_any` (Node registers its listener first), and an outgoing
/// hook is set so that outgoing events are decoded for the tap.
fn observed(ns: &Namespace) -> Namespace {
    let mut ns = ns.clone();
    let user = ns.any_incoming.take();
    ns.any_incoming = Some(Arc::new(move |s: &mut Socket<'_, '_>, ev: &Event| {
        s.admin_received(ev);
        if let Some(u) = &user {
            u(s, ev);
        }
    }));
    if ns.any_outgoing.is_none() {
        ns.any_outgoing = Some(Arc::new(|_: &Outgoing<'_>| {}));
    }
    ns
}

/// The selection an action names: the whole namespace, or the sockets in room `filter`.
fn select(handle: &ServerHandle, nsp: &str, filter: Option<&Value>) -> super::handle::Operator {
    let op = handle.of(nsp);
    match filter {
        Some(Value::String(room)) if !room.is_empty() => op.to(room),
        _ => op,
    }
}

/// The admin namespace: login, `config` (and `all_sockets`) on connect, the actions.
fn admin_namespace(cfg: &AdminUi, logins: Option<auth::Sender>) -> Namespace {
    let config = json!({ "supportedFeatures": cfg.features() });
    let dev = cfg.mode == AdminMode::Development;
    let admin = cfg.namespace.clone();
    let mut ns = Namespace::new();
    if let Some(logins) = logins {
        ns = ns.use_deferred_middleware(move |hs, decision| logins.submit(hs.auth.as_ref(), hs.address, decision));
    }
    ns = ns.on_connection(move |s| {
        s.emit("config", std::slice::from_ref(&config));
        if dev {
            let (handle, id, admin) = (s.handle(), s.id().to_string(), admin.clone());
            s.handle().admin_sockets().then(move |r| match r {
                Ok(all) => {
                    let _ = handle.of(&admin).socket(&id).emit("all_sockets", &[Value::Array(all)]);
                }
                Err(e) => tracing::debug!(error = %e, "admin UI: all_sockets not answered"),
            });
        }
    });
    if cfg.readonly {
        return ns;
    }
    let arg = |ev: &Event, i: usize| ev.args.get(i).cloned().unwrap_or(Value::Null);
    ns.on("emit", move |s, ev| {
        // (nsp, filter, event, ...args)
        let (Value::String(nsp), Value::String(name)) = (arg(&ev, 0), arg(&ev, 2)) else { return };
        let args = ev.args.get(3..).unwrap_or(&[]).to_vec();
        let _ = select(&s.handle(), &nsp, ev.args.get(1)).emit_binary(&name, &args, ev.attachments);
    })
    .on("join", move |s, ev| {
        // (nsp, room, filter)
        let (Value::String(nsp), Value::String(room)) = (arg(&ev, 0), arg(&ev, 1)) else { return };
        let _ = select(&s.handle(), &nsp, ev.args.get(2)).sockets_join(&[&room]);
    })
    .on("leave", move |s, ev| {
        let (Value::String(nsp), Value::String(room)) = (arg(&ev, 0), arg(&ev, 1)) else { return };
        let _ = select(&s.handle(), &nsp, ev.args.get(2)).sockets_leave(&[&room]);
    })
    .on("_disconnect", move |s, ev| {
        // (nsp, close, filter)
        let Value::String(nsp) = arg(&ev, 0) else { return };
        let close = arg(&ev, 1).as_bool().unwrap_or(false);
        let _ = select(&s.handle(), &nsp, ev.args.get(2)).disconnect_sockets(close);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_follow_the_mode_and_readonly_as_node_lists_them() {
        let cfg = AdminUi::new(AdminAuth::Disabled);
        assert_eq!(cfg.features(), ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT", "AGGREGATED_EVENTS"]);
        let dev = AdminUi { readonly: true, ..AdminUi::new(AdminAuth::Disabled).mode(AdminMode::Development) };
        assert_eq!(dev.features(), ["AGGREGATED_EVENTS", "ALL_EVENTS"]);
    }

    #[test]
    fn a_hash_that_is_not_bcrypt_is_refused() {
        assert!(AdminAuth::basic("admin", "secret").is_err());
        assert!(AdminAuth::basic("admin", "$2a$03$abcdefghijklmnopqrstuuK1yIHzRlgM5.9v4ChdWb7/Z5.y0wW2S").is_err());
        assert!(AdminAuth::basic("admin", &bcrypt::hash("secret", 4).unwrap()).is_ok());
        // A cost beyond 14 would let a few logins hold the login thread for minutes.
        let e = AdminAuth::basic("admin", "$2b$15$abcdefghijklmnopqrstuuK1yIHzRlgM5.9v4ChdWb7/Z5.y0wW2S").unwrap_err();
        assert!(e.to_string().contains("--admin-ui-auth") && e.to_string().contains("cost 15"), "{e}");
    }
}
