//! Namespaces as the user defines them: connect middleware, the connection handler, event
//! handlers, a catch-all, and the disconnect handler. Definitions are shared by every worker
//! (`Arc`); the callbacks run on the worker that owns the socket.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::defer::ConnectDecision;
use super::socket::Socket;

/// An incoming event: name, arguments (binary arguments stay as placeholders that refer to
/// `attachments`, see [`Event::binary`]), and the ack id when the client asked for an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event name.
    pub name: String,
    /// The arguments after the name.
    pub args: Vec<Value>,
    /// Binary attachments, referenced by placeholders in `args`.
    pub attachments: Vec<Bytes>,
    /// Present when the client asked for an answer.
    pub ack: Option<AckId>,
}

impl Event {
    /// The attachment an argument (or a value inside one) stands for, if it is a placeholder.
    pub fn binary(&self, v: &Value) -> Option<&Bytes> {
        crate::proto::sio::packet::placeholder_num(v).and_then(|n| self.attachments.get(n as usize))
    }
}

/// The id of an incoming event that wants an ack; answer with [`Socket::ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AckId(pub u64);

/// Why a socket left its namespace (the reference server's reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client left the namespace (it sent DISCONNECT).
    ClientNamespaceDisconnect,
    /// The server disconnected the socket.
    ServerNamespaceDisconnect,
    /// The connection was closed (or the client sent an Engine.IO close).
    TransportClose,
    /// The connection failed (protocol error, write error, slow consumer).
    TransportError,
    /// The client stopped answering pings.
    PingTimeout,
    /// The client sent something that could not be decoded.
    ParseError,
    /// The server is shutting down.
    ServerShuttingDown,
    /// The handler panicked; the socket was disconnected to protect the worker.
    HandlerPanic,
}

impl DisconnectReason {
    /// Whether a socket that left for this reason is kept for connection state recovery
    /// (Node's `RECOVERABLE_DISCONNECT_REASONS`).
    pub fn recoverable(self) -> bool {
        matches!(
            self,
            DisconnectReason::TransportClose | DisconnectReason::TransportError | DisconnectReason::PingTimeout | DisconnectReason::ServerShuttingDown
        )
    }

    /// The reference server's text for this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectReason::ClientNamespaceDisconnect => "client namespace disconnect",
            DisconnectReason::ServerNamespaceDisconnect => "server namespace disconnect",
            DisconnectReason::TransportClose => "transport close",
            DisconnectReason::TransportError => "transport error",
            DisconnectReason::PingTimeout => "ping timeout",
            DisconnectReason::ParseError => "parse error",
            DisconnectReason::ServerShuttingDown => "server shutting down",
            DisconnectReason::HandlerPanic => "server namespace disconnect",
        }
    }
}

/// What the client sent when connecting to a namespace, for middleware to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct Handshake {
    /// The namespace joined.
    pub nsp: String,
    /// The CONNECT packet's auth payload, if any.
    pub auth: Option<Value>,
    /// The Engine.IO handshake request's query string.
    pub query: Arc<str>,
    /// The `Origin` of the Engine.IO handshake request.
    pub origin: Option<Arc<str>>,
    /// Every header of the Engine.IO handshake request (name as sent, value). Shared by every
    /// socket of the client (kept once per connection, not once per namespace).
    pub headers: Arc<[(String, String)]>,
    /// Milliseconds since the Unix epoch when the socket connected.
    pub issued: u64,
    /// The client's address (Node's `handshake.address`): the TCP peer, or, when the peer is a
    /// trusted proxy (`EngineConfig::trusted_proxies`), the address its `Forwarded` /
    /// `X-Forwarded-For` header gives.
    pub address: Option<std::net::IpAddr>,
    /// The TCP peer of the Engine.IO handshake request.
    pub peer: Option<std::net::SocketAddr>,
}

/// An ack that did not come back in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("operation has timed out")]
pub struct AckTimeout;

/// Connect middleware: `Err(data)` refuses with CONNECT_ERROR `data`.
pub type Middleware = Arc<dyn Fn(&Handshake) -> Result<(), Value> + Send + Sync>;
/// Connect middleware that gives its verdict later, from any thread, through the
/// [`ConnectDecision`].
pub type DeferredMiddleware = Arc<dyn Fn(&Handshake, ConnectDecision) + Send + Sync>;

/// One connect middleware, run in the order added.
#[derive(Clone)]
pub(crate) enum Gate {
    Now(Middleware),
    Later(DeferredMiddleware),
}
/// Runs when a socket has joined its namespace.
pub type ConnectionHandler = Arc<dyn Fn(&mut Socket<'_, '_>) + Send + Sync>;
/// Handles one event.
pub type EventHandler = Arc<dyn Fn(&mut Socket<'_, '_>, Event) + Send + Sync>;
/// Sees every incoming event (`on_any`).
pub type AnyHandler = Arc<dyn Fn(&mut Socket<'_, '_>, &Event) + Send + Sync>;
/// Middleware on incoming events (`socket.use`).
pub type PacketMiddleware = Arc<dyn Fn(&mut Socket<'_, '_>, &mut Event) -> Result<(), String> + Send + Sync>;
/// Sees every outgoing event (`onAnyOutgoing`).
pub type OutgoingHook = Arc<dyn Fn(&Outgoing<'_>) + Send + Sync>;

/// An event on its way to a socket, for [`Namespace::on_any_outgoing`].
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The recipient socket's id.
    pub socket: &'a str,
    /// The namespace.
    pub nsp: &'a str,
    /// The event name.
    pub event: &'a str,
    /// Its arguments (binary ones as placeholders; with connection state recovery, a
    /// broadcast's offset last).
    pub args: &'a [Value],
}

/// Runs when a socket leaves its namespace.
pub type DisconnectHandler = Arc<dyn Fn(&mut Socket<'_, '_>, DisconnectReason) + Send + Sync>;
/// Told about a protocol error on the socket's connection, just before it is closed.
pub type ErrorHandler = Arc<dyn Fn(&mut Socket<'_, '_>, &str) + Send + Sync>;
/// Called with an ack's arguments (and attachments), or the timeout.
pub type AckCallback = Box<dyn FnOnce(&mut Socket<'_, '_>, Result<(Vec<Value>, Vec<Bytes>), AckTimeout>)>;

/// Every answer to a broadcast with ack: each recipient's arguments and attachments.
pub type Responses = Vec<(Vec<Value>, Vec<Bytes>)>;

/// Not every recipient answered in time; these did.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("operation has timed out ({} responses arrived)", responses.len())]
pub struct PartialResponses {
    /// The answers that arrived in time.
    pub responses: Responses,
}

/// Called on the emitting socket with every recipient's answer, or with those that arrived
/// before the timeout.
pub type BroadcastAckCallback = Box<dyn FnOnce(&mut Socket<'_, '_>, Result<Responses, PartialResponses>)>;

/// One namespace's handlers.
#[derive(Clone, Default)]
pub struct Namespace {
    pub(crate) middleware: Vec<Gate>,
    pub(crate) on_connection: Option<ConnectionHandler>,
    pub(crate) events: HashMap<String, EventHandler>,
    pub(crate) any: Option<EventHandler>,
    pub(crate) any_incoming: Option<AnyHandler>,
    pub(crate) packet_middleware: Vec<PacketMiddleware>,
    pub(crate) any_outgoing: Option<OutgoingHook>,
    pub(crate) on_disconnect: Option<DisconnectHandler>,
    pub(crate) on_error: Option<ErrorHandler>,
    pub(crate) server_side: HashMap<String, ServerSideHandler>,
}

impl Namespace {
    /// A namespace with no handlers yet.
    pub fn new() -> Namespace {
        Namespace::default()
    }

    /// Adds connect middleware: it sees the handshake (auth, query) and may refuse with the
    /// CONNECT_ERROR data (e.g. `{"message": "not authorized"}`).
    pub fn use_middleware(mut self, f: impl Fn(&Handshake) -> Result<(), Value> + Send + Sync + 'static) -> Self {
        self.middleware.push(Gate::Now(Arc::new(f)));
        self
    }

    /// Adds connect middleware that decides later: it gets the handshake and a
    /// [`ConnectDecision`] (`Send`) to settle from any thread — after a database lookup on a
    /// thread pool or in a tokio task, say — with `accept`, `accept_with_data` (the value lands
    /// in the socket's data slot) or `refuse`. It must not block: it runs on the worker thread.
    /// Meanwhile the client's packets for the namespace are held (bounded by
    /// [`SocketLimits`](super::SocketLimits)), and handled in order once it is accepted.
    pub fn use_deferred_middleware(mut self, f: impl Fn(&Handshake, ConnectDecision) + Send + Sync + 'static) -> Self {
        self.middleware.push(Gate::Later(Arc::new(f)));
        self
    }

    /// Runs when a socket has joined the namespace.
    pub fn on_connection(mut self, f: impl Fn(&mut Socket<'_, '_>) + Send + Sync + 'static) -> Self {
        self.on_connection = Some(Arc::new(f));
        self
    }

    /// Handles one event name.
    ///
    /// The handler runs on the worker thread that serves every client of its core: it must
    /// not block (no database call, file or network I/O, `sleep`, waiting on a channel or a
    /// lock held elsewhere). Hand such work to another thread or a tokio runtime and answer
    /// later with [`Socket::defer_ack`] or a [`ServerHandle`](super::ServerHandle) — see
    /// [`super::defer`] and `examples/offload.rs`.
    pub fn on(mut self, event: &str, f: impl Fn(&mut Socket<'_, '_>, Event) + Send + Sync + 'static) -> Self {
        self.events.insert(event.to_string(), Arc::new(f));
        self
    }

    /// Handles every event without a handler of its own (the fallback).
    pub fn on_fallback(mut self, f: impl Fn(&mut Socket<'_, '_>, Event) + Send + Sync + 'static) -> Self {
        self.any = Some(Arc::new(f));
        self
    }

    /// Sees every incoming event, before the packet middleware and the event's own handler (or
    /// the fallback) — Node's `socket.onAny`.
    pub fn on_any(mut self, f: impl Fn(&mut Socket<'_, '_>, &Event) + Send + Sync + 'static) -> Self {
        self.any_incoming = Some(Arc::new(f));
        self
    }

    /// Adds middleware on incoming events, run in order before the handler — Node's
    /// `socket.use`. It may change the event; `Err(message)` drops it: the handler does not
    /// run, and, as on Node (where it becomes the socket's `error` event), the message goes to
    /// the [`on_error`](Self::on_error) handler and nothing is sent to the client (an ack it
    /// asked for is never answered). The socket stays connected unless that handler
    /// disconnects it.
    pub fn use_packet_middleware(mut self, f: impl Fn(&mut Socket<'_, '_>, &mut Event) -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.packet_middleware.push(Arc::new(f));
        self
    }

    /// Sees every event sent to a socket of the namespace (Node's `socket.onAnyOutgoing`): an
    /// emit to the socket, or a broadcast that reaches it (decoded once per worker, then told
    /// per recipient). It gets a read-only view and runs on the worker thread: keep it short.
    pub fn on_any_outgoing(mut self, f: impl Fn(&Outgoing<'_>) + Send + Sync + 'static) -> Self {
        self.any_outgoing = Some(Arc::new(f));
        self
    }

    /// Runs when the client sent something that breaks the protocol (bad packet, bad JSON,
    /// attachments that do not match, ...), with the error, just before its session is closed;
    /// and when a packet middleware refused an event (the socket stays connected).
    pub fn on_error(mut self, f: impl Fn(&mut Socket<'_, '_>, &str) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(f));
        self
    }

    /// Handles `event` sent by another node of the cluster with `server_side_emit` (see
    /// [`ServerSideHandler`]).
    pub fn on_server_side(mut self, event: &str, f: impl Fn(&[Value]) -> Option<Value> + Send + Sync + 'static) -> Self {
        self.server_side.insert(event.to_string(), Arc::new(f));
        self
    }

    /// Runs when a socket leaves the namespace, with the reason.
    pub fn on_disconnect(mut self, f: impl Fn(&mut Socket<'_, '_>, DisconnectReason) + Send + Sync + 'static) -> Self {
        self.on_disconnect = Some(Arc::new(f));
        self
    }
}

/// Handles an event another node of the cluster sent with `server_side_emit` (the reference's
/// `io.on(event, ...)` for server-side events): gets its arguments; what it returns answers the
/// sender when it asked for acks (`server_side_emit_with_ack`), `None` leaves it unanswered.
/// Runs on the cluster adapter's thread, never on a worker.
pub type ServerSideHandler = Arc<dyn Fn(&[Value]) -> Option<Value> + Send + Sync>;

/// The namespaces of a server.
#[derive(Clone, Default)]
pub struct Namespaces {
    pub(crate) fixed: HashMap<String, Arc<Namespace>>,
    pub(crate) dynamic: Option<(NamespaceFilter, Arc<Namespace>)>,
}

/// Decides whether a dynamic namespace exists.
pub type NamespaceFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl Namespaces {
    /// Adds namespace `name` (for a `SioWorker` built by hand, as the test harness does).
    pub fn insert(&mut self, name: &str, ns: Namespace) {
        self.fixed.insert(name.to_string(), Arc::new(ns));
    }

    /// The definition serving `nsp`, if it exists.
    pub fn resolve(&self, nsp: &str) -> Option<Arc<Namespace>> {
        if let Some(n) = self.fixed.get(nsp) {
            return Some(n.clone());
        }
        match &self.dynamic {
            Some((accept, ns)) if accept(nsp) => Some(ns.clone()),
            _ => None,
        }
    }
}
