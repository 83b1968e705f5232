//! The Engine.IO v4 server: HTTP long-polling, WebSocket, the upgrade between them, heartbeats,
//! CORS and limits — a [`crate::rt::Service`] that the runtime drives, with a [`Handler`] on top
//! (the Socket.IO layer, or the echo handlers of `shardcast echo`).
//!
//! - [`server`]: the service: connection states, the session life cycle, timers.
//! - [`http`]: HTTP routing, one request at a time per connection, hand-offs.
//! - [`polling`]: the long-polling transport.
//! - [`websocket`]: the WebSocket transport and the upgrade probe.
//! - [`sessions`]: the session table, deadlines, sending with the slow-consumer policy.
//! - [`sid`]: session ids that also name their owning worker.
//! - [`echo`]: the Engine.IO echo handler.
//!
//! Must never: parse WebSocket, Engine.IO or HTTP bytes itself (it calls `proto`), or touch
//! io_uring (it calls `rt::Io`).

#![warn(missing_docs)]

pub mod address;
pub mod echo;
mod http;
mod polling;
pub mod server;
pub mod sessions;
pub mod sid;
mod websocket;

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::proto::eio::{CloseReason, SessionConfig, Transport};
use crate::proto::http::CorsConfig;

pub use server::{ConnState, EioServer};
pub use sessions::{Core, SessionId};

/// A session id, cheap to clone within a worker.
pub type Sid = Rc<str>;

/// What to do with a client whose send queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumer {
    /// Close its session.
    Disconnect,
    /// Drop volatile messages for it; close it only when a non-volatile one does not fit.
    DropVolatile,
}

/// Every Engine.IO option.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Engine.IO endpoint, e.g. `/socket.io/`.
    pub path: String,
    /// Heartbeat and upgrade timing.
    pub session: SessionConfig,
    /// Largest Engine.IO packet / polling body accepted.
    pub max_payload: usize,
    /// Transports offered.
    pub transports: Vec<Transport>,
    /// Allowed origins.
    pub cors: CorsConfig,
    /// Offer permessage-deflate on WebSockets.
    pub websocket_compression: bool,
    /// Compress polling responses of at least this many bytes (gzip/deflate as accepted).
    pub http_compression_threshold: Option<usize>,
    /// Name of a cookie carrying the sid (for load balancers routing by cookie).
    pub cookie: Option<String>,
    /// Connections beyond this (across all workers) are refused with 503.
    pub max_connections: usize,
    /// What to do with a client that does not read fast enough.
    pub slow_consumer: SlowConsumer,
    /// Bytes a client may have queued before the slow-consumer policy applies.
    pub max_send_buffer: usize,
    /// An HTTP connection that does not complete a request within this time is closed (idle
    /// keep-alive connections, and heads sent too slowly: slowloris).
    pub http_timeout: Duration,
    /// Peers whose `Forwarded` / `X-Forwarded-For` headers are believed when working out the
    /// client's address ([`OpenInfo::address`]); none by default.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Decides on every handshake request (a new session) before the session exists (Node's
    /// `allowRequest`).
    pub allow_request: Option<AllowRequest>,
    /// Whether a polling session may upgrade to WebSocket (Node's `allowUpgrades`): when false
    /// the handshake offers no upgrade and an upgrade request is answered 400.
    pub allow_upgrades: bool,
    /// Attributes of the session cookie (with [`EngineConfig::cookie`]).
    pub cookie_attrs: CookieAttrs,
    /// Per-address connection count and rate, over every worker (the client address: behind a
    /// trusted proxy, the proxy's; refused with HTTP 429 before any request is read).
    pub address_limits: Option<address::AddressLimits>,
}

/// Counters of what one worker's engine refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EngineStats {
    /// Connections refused (429) because their address held its most connections.
    pub address_too_many: u64,
    /// Connections refused (429) because their address opened connections too fast.
    pub address_too_fast: u64,
}

/// What [`EngineConfig::allow_request`] sees of a handshake request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// `GET`.
    pub method: &'a str,
    /// The request path.
    pub path: &'a str,
    /// The query string (after `?`).
    pub query: &'a str,
    /// Every header (name as sent, value).
    pub headers: &'a [(String, String)],
    /// The TCP peer.
    pub peer: Option<SocketAddr>,
    /// The client's address (behind trusted proxies, what they say).
    pub address: Option<IpAddr>,
}

/// A request filter: `Err(message)` refuses it as Node does — a polling handshake with HTTP
/// 403 `{"code":4,"message":<message or "Forbidden">}`, a WebSocket handshake with
/// `400 Bad Request` and the message as its body. It runs on the worker thread: it must not
/// block.
#[derive(Clone)]
pub struct AllowRequest(pub std::sync::Arc<AllowRequestFn>);

/// The function inside [`AllowRequest`].
pub type AllowRequestFn = dyn Fn(&RequestInfo<'_>) -> Result<(), Option<String>> + Send + Sync;

impl std::fmt::Debug for AllowRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AllowRequest(..)")
    }
}

/// The `SameSite` attribute of a cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=Lax` (Node's default for the session cookie).
    Lax,
    /// `SameSite=None` (browsers require `Secure` with it).
    None,
}

/// Attributes of the session cookie; the default is Node's: `Path=/; HttpOnly; SameSite=Lax`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttrs {
    /// `Path` (none when `None`).
    pub path: Option<String>,
    /// `SameSite`, if any.
    pub same_site: Option<SameSite>,
    /// `Secure`.
    pub secure: bool,
    /// `HttpOnly`.
    pub http_only: bool,
}

impl Default for CookieAttrs {
    fn default() -> Self {
        CookieAttrs { path: Some("/".into()), same_site: Some(SameSite::Lax), secure: false, http_only: true }
    }
}

impl CookieAttrs {
    /// The `Set-Cookie` header line for cookie `name` = `value`.
    pub fn header(&self, name: &str, value: &str) -> String {
        let mut h = format!("Set-Cookie: {name}={value}");
        if let Some(p) = &self.path {
            h.push_str("; Path=");
            h.push_str(p);
        }
        if self.http_only {
            h.push_str("; HttpOnly");
        }
        if self.secure {
            h.push_str("; Secure");
        }
        match self.same_site {
            Some(SameSite::Strict) => h.push_str("; SameSite=Strict"),
            Some(SameSite::Lax) => h.push_str("; SameSite=Lax"),
            Some(SameSite::None) => h.push_str("; SameSite=None"),
            None => {}
        }
        h.push_str("\r\n");
        h
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            path: "/socket.io/".into(),
            session: SessionConfig::default(),
            max_payload: 1_000_000,
            transports: vec![Transport::Polling, Transport::WebSocket],
            cors: CorsConfig::default(),
            websocket_compression: true,
            http_compression_threshold: Some(1024),
            cookie: None,
            max_connections: 1_000_000,
            slow_consumer: SlowConsumer::Disconnect,
            max_send_buffer: 4 << 20,
            http_timeout: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            allow_request: None,
            allow_upgrades: true,
            cookie_attrs: CookieAttrs::default(),
            address_limits: None,
        }
    }
}

/// What the handshake request said, for the layer above (e.g. Socket.IO's handshake data).
#[derive(Debug, Clone, Copy)]
pub struct OpenInfo<'a> {
    /// The request's query string (after `?`).
    pub query: &'a str,
    /// The request's `Origin` header.
    pub origin: Option<&'a str>,
    /// The transport of the handshake.
    pub transport: Transport,
    /// Every header of the handshake request.
    pub headers: &'a [(String, String)],
    /// The TCP peer of the handshake request.
    pub peer: Option<SocketAddr>,
    /// The client's address: the peer, or behind a trusted proxy what the proxy says
    /// ([`EngineConfig::trusted_proxies`]).
    pub address: Option<IpAddr>,
}

/// What the layer above Engine.IO implements. Callbacks run on the worker that owns the
/// session, synchronously; `ctx` sends, closes and posts mail. Sessions are named by their
/// copyable [`SessionId`] handle (a stale handle never reaches a newer session);
/// [`Ctx::sid`] gives the string id when it is needed.
pub trait Handler: 'static {
    /// Messages other workers (and `ServerHandle`s) send to the handler.
    type Mail: Send + 'static;
    /// A session was opened (its open packet is on its way).
    fn on_open(&mut self, ctx: &mut Ctx<'_, Self::Mail>, session: SessionId, info: &OpenInfo<'_>);
    /// A text message (valid UTF-8, rewritable in place).
    fn on_message(&mut self, ctx: &mut Ctx<'_, Self::Mail>, session: SessionId, text: &mut [u8]);
    /// A binary message.
    fn on_binary(&mut self, ctx: &mut Ctx<'_, Self::Mail>, session: SessionId, data: Bytes);
    /// The session ended.
    fn on_close(&mut self, ctx: &mut Ctx<'_, Self::Mail>, session: SessionId, reason: CloseReason);
    /// Mail from another worker or a `ServerHandle`.
    fn on_mail(&mut self, ctx: &mut Ctx<'_, Self::Mail>, mail: Self::Mail);
    /// Timers of the handler (e.g. ack timeouts).
    fn on_timers(&mut self, _ctx: &mut Ctx<'_, Self::Mail>, _now: Instant) {}
    /// The earliest instant `on_timers` has work.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    /// The server is shutting down.
    fn on_shutdown(&mut self, _ctx: &mut Ctx<'_, Self::Mail>) {}
    /// A polling session finished its upgrade: WebSocket is its transport from now on.
    fn on_upgrade(&mut self, _ctx: &mut Ctx<'_, Self::Mail>, _session: SessionId) {}
    /// A scrape: add the handler's counters and gauges (the engine's are already in `out`).
    fn metrics(&self, _out: &mut crate::rt::metrics::WorkerMetrics) {}
    /// Whether a WebSocket upgrade on `path` (any path but the Engine.IO one) is served as a
    /// raw WebSocket whose messages go to [`Handler::on_raw_message`]. None is by default
    /// (404), as on the reference server.
    fn raw_websocket(&self, _path: &str) -> bool {
        false
    }
    /// A message of a raw WebSocket: text (valid UTF-8) or binary; answer with
    /// [`Ctx::send_raw`].
    fn on_raw_message(&mut self, _ctx: &mut Ctx<'_, Self::Mail>, _conn: RawConn, _binary: bool, _data: &mut [u8]) {}
}

/// A raw WebSocket connection (see [`Handler::raw_websocket`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawConn(pub(crate) crate::rt::ConnId);

/// Per-send options, as the reference's emit flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendFlags {
    /// May be dropped when the client cannot take it right now (no pending poll, or a
    /// WebSocket that already has a backlog), instead of being queued.
    pub volatile: bool,
    /// Compress with permessage-deflate when the connection negotiated it.
    pub compress: bool,
}

impl Default for SendFlags {
    fn default() -> Self {
        SendFlags { volatile: false, compress: true }
    }
}

/// Why a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// No such session (closed, or owned by another worker).
    NoSession,
    /// Volatile message dropped: the client cannot take it now.
    Dropped,
    /// The client was too slow and its session is being closed.
    SlowConsumer,
}

pub use sessions::Ctx;
