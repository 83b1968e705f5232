//! The admin endpoint (`--admin-bind`): a small HTTP/1.1 server for operators, on its own
//! address, never on the public port.
//!
//! - `GET /metrics`: every worker's counters in the Prometheus text format ([`prometheus`]), and
//!   the cluster adapter's (`shardcast_cluster_*`) with `--redis`.
//! - `GET /health`: 200 while serving, 503 from the start of shutdown ([`AdminServer::set_draining`]).
//! - `POST /api/emit`, `POST /api/emit/batch`: the publish API ([`api`]), with
//!   `Authorization: Bearer KEY` against `--api-key`.
//!
//! It is not the hot path, so it runs on threads of its own, not on a worker's ring: a scrape
//! or a publish then never adds work to a worker's pass beyond one mailbox message, and a slow
//! operator's client cannot delay a worker. One thread (the reader) accepts and reads request
//! heads, many at once, with `mio` and `httparse`; a request whose head is complete and which
//! needs to wait (a scrape, a publish) gets a thread of its own with blocking `std::net` I/O.
//!
//! Bounded by construction, so that idle or slow peers cannot starve the operators:
//! - a head must be complete within [`AdminConfig::head_timeout`] (1 s) and [`MAX_HEAD`] bytes
//!   (431), or the connection is closed without an answer; at most [`MAX_WAITING`] connections
//!   are read at once, the oldest closed to make room;
//! - `GET /health` (and a wrong method, an unknown path) is answered by the reader itself, at
//!   once, and never waits for a slot;
//! - at most [`AdminConfig::max_connections`] requests with a complete head are served at
//!   once (the next get 503 at once), and one more slot is kept for `GET /metrics`;
//! - the publish API checks the key from the head, on the reader, before a slot is taken or the
//!   body read (401 without reading it); a body is at most [`AdminConfig::max_body`] bytes (413) and must arrive,
//!   with the answer read, within [`AdminConfig::timeout`] (10 s) of the head;
//! - after its answer a connection's unread input is read and discarded for at most 1 s and
//!   `max_body` bytes, so that the close does not destroy the answer.
//!
//! Must never: listen on the public port unless asked, run work on a worker thread, or read a
//! publish request's body before its key is checked.

pub mod api;
pub mod prometheus;

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use crate::app::ServerHandle;
use crate::proto::http::response;
use crate::rt::threads::{ScrapeError, Scraper};

/// The largest request head accepted (431 beyond it).
pub const MAX_HEAD: usize = 8 * 1024;
/// The most headers a request may have (431 beyond it).
const MAX_HEADERS: usize = 32;
/// Connections whose head is being read (or whose refusal is lingering) at once, at most; a new
/// one closes the oldest.
pub const MAX_WAITING: usize = 256;
/// How long a connection's unread input is drained after its answer, at most.
const DRAIN_TIME: Duration = Duration::from_secs(1);
/// How long a scrape waits for every worker's answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The reader's listening socket.
const LISTENER: Token = Token(0);

/// Settings of the admin endpoint.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where to listen.
    pub bind: SocketAddr,
    /// The key `POST /api/emit` requires (`Authorization: Bearer KEY`); the publish API is
    /// refused (403) without one. An empty key is refused by [`AdminServer::start`].
    pub api_key: Option<String>,
    /// The largest request body (413 beyond it).
    pub max_body: usize,
    /// Requests (with a complete head) served at once; more get 503. `GET /metrics` may use
    /// one more, and `GET /health` needs none.
    pub max_connections: usize,
    /// Time a connection has to send its complete request head; then it is closed without an
    /// answer.
    pub head_timeout: Duration,
    /// Time a request with a complete head has to send its body and read the answer.
    pub timeout: Duration,
}

impl AdminConfig {
    /// The defaults: 1 MiB bodies, 16 requests at once, 1 s for a head, 10 s for the rest.
    pub fn new(bind: SocketAddr, api_key: Option<String>) -> AdminConfig {
        AdminConfig { bind, api_key, max_body: 1 << 20, max_connections: 16, head_timeout: Duration::from_secs(1), timeout: Duration::from_secs(10) }
    }
}

struct Shared {
    cfg: AdminConfig,
    scraper: Scraper,
    handle: Option<ServerHandle>,
    draining: AtomicBool,
    stop: AtomicBool,
    active: AtomicUsize,
}

/// The running admin endpoint.
pub struct AdminServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Listens on `cfg.bind` and serves on threads of its own. `handle` serves the publish
    /// API (without one, as in echo mode, it answers 404). An empty `api_key` is refused
    /// (`InvalidInput`): it would let any `Authorization` header through.
    pub fn start(cfg: AdminConfig, scraper: Scraper, handle: Option<ServerHandle>) -> std::io::Result<AdminServer> {
        if cfg.api_key.as_deref() == Some("") {
            return Err(std::io::Error::new(ErrorKind::InvalidInput, "the API key (--api-key, SHARDCAST_API_KEY) must not be empty"));
        }
        let listener = TcpListener::bind(cfg.bind)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let shared = Arc::new(Shared { cfg, scraper, handle, draining: AtomicBool::new(false), stop: AtomicBool::new(false), active: AtomicUsize::new(0) });
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("shardcast-admin".into()).spawn(move || Reader::new(poll, listener, s).run())?;
        Ok(AdminServer { addr, shared, thread: Some(thread) })
    }

    /// The address it listens on (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shutdown has begun: `/health` answers 503 from now on (the rest keeps working while
    /// the workers drain).
    pub fn set_draining(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    /// Stops accepting and waits for the reader thread (requests in progress on threads of
    /// their own finish on their own, within the timeout).
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Wake the reader's wait with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() { std::net::Ipv4Addr::LOCALHOST.into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_now();
        }
    }
}

/// A connection the reader holds: its head being read, or (`lingering`) its answer sent and
/// its unread input discarded until it closes.
struct Waiting {
    stream: mio::net::TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
    lingering: bool,
    drained: usize,
}

/// What a readable connection needs next.
enum Next {
    /// More input (or its deadline).
    Wait,
    /// Close it.
    Close,
    /// Its head is complete: serve it.
    Serve(Head),
    /// Send this answer, then linger.
    Answer(Vec<u8>),
}

/// The reader: accepts and reads heads, answers `/health` and what needs no waiting, hands
/// the rest to threads of their own.
struct Reader {
    poll: Poll,
    listener: mio::net::TcpListener,
    shared: Arc<Shared>,
    /// By token, in the order they were accepted (tokens only grow).
    waiting: BTreeMap<usize, Waiting>,
    next: usize,
}

impl Reader {
    fn new(poll: Poll, listener: mio::net::TcpListener, shared: Arc<Shared>) -> Reader {
        Reader { poll, listener, shared, waiting: BTreeMap::new(), next: 1 }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        loop {
            let now = Instant::now();
            let timeout = self.waiting.values().map(|w| w.deadline.saturating_duration_since(now)).min();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != ErrorKind::Interrupted {
                    // This thread is not a worker: it may wait a little instead of spinning on
                    // an error that repeats.
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    Token(t) => self.readable(t),
                }
            }
            let now = Instant::now();
            let expired: Vec<usize> = self.waiting.iter().filter(|(_, w)| w.deadline <= now).map(|(t, _)| *t).collect();
            for t in expired {
                // A head not complete in time: closed without an answer.
                self.remove(t);
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if self.waiting.len() >= MAX_WAITING {
                        if let Some(oldest) = self.waiting.keys().next().copied() {
                            self.remove(oldest);
                        }
                    }
                    let t = self.next;
                    self.next += 1;
                    if self.poll.registry().register(&mut stream, Token(t), Interest::READABLE).is_ok() {
                        let deadline = Instant::now() + self.shared.cfg.head_timeout;
                        self.waiting.insert(t, Waiting { stream, buf: Vec::new(), deadline, lingering: false, drained: 0 });
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // Out of descriptors, say: wait a little rather than spin.
                    std::thread::sleep(Duration::from_millis(10));
                    return;
                }
            }
        }
    }

    fn remove(&mut self, t: usize) -> Option<Waiting> {
        let mut w = self.waiting.remove(&t)?;
        let _ = self.poll.registry().deregister(&mut w.stream);
        Some(w)
    }

    fn readable(&mut self, t: usize) {
        let Some(w) = self.waiting.get_mut(&t) else { return };
        let next = if w.lingering { linger(w, self.shared.cfg.max_body) } else { read_head(w) };
        match next {
            Next::Wait => {}
            Next::Close => {
                self.remove(t);
            }
            Next::Answer(resp) => self.answer(t, &resp),
            Next::Serve(head) => {
                let metrics = head.method == "GET" && head.path == "/metrics";
                let publish = head.method == "POST" && is_publish(&head.path);
                if !metrics && !publish {
                    // `/health`, a wrong method, an unknown path: answered at once, without a
                    // slot.
                    let resp = route(&self.shared, &head);
                    self.answer(t, &resp);
                    return;
                }
                // A publish request is refused from its head, without a slot, before its body
                // is read.
                if publish {
                    if let Some(resp) = refuse_publish(&self.shared, &head) {
                        self.answer(t, &resp);
                        return;
                    }
                }
                // `/metrics` may take one slot more than the others.
                let cap = self.shared.cfg.max_connections + usize::from(metrics);
                if self.shared.active.fetch_add(1, Ordering::AcqRel) >= cap {
                    self.shared.active.fetch_sub(1, Ordering::AcqRel);
                    self.answer(t, &json_response(503, r#"{"error":"too many admin connections"}"#, ""));
                    return;
                }
                let slot = Slot(self.shared.clone());
                let Some(w) = self.remove(t) else { return };
                let stream = TcpStream::from(w.stream);
                let buf = w.buf;
                if stream.set_nonblocking(false).is_err() {
                    return;
                }
                // A failed spawn drops the closure, and with it the slot.
                let _ = std::thread::Builder::new().name("shardcast-admin-conn".into()).spawn(move || serve(&slot.0, stream, head, buf));
            }
        }
    }

    /// Sends a short answer without waiting (it fits in the socket's buffer: a peer that has not
    /// read anything yet has the whole window open), stops sending, and lingers.
    fn answer(&mut self, t: usize, resp: &[u8]) {
        let Some(w) = self.waiting.get_mut(&t) else { return };
        let _ = w.stream.write_all(resp);
        let _ = w.stream.shutdown(std::net::Shutdown::Write);
        w.lingering = true;
        w.deadline = Instant::now() + DRAIN_TIME;
        w.buf = Vec::new();
        // What already arrived may have been its last input.
        if let Next::Close = linger(w, self.shared.cfg.max_body) {
            self.remove(t);
        }
    }
}

/// Reads what is there (edge-triggered: until it would block) and parses the head.
fn read_head(w: &mut Waiting) -> Next {
    let mut chunk = [0u8; 4096];
    loop {
        match w.stream.read(&mut chunk) {
            Ok(0) => return Next::Close,
            Ok(n) => {
                w.buf.extend_from_slice(&chunk[..n]);
                match parse_head(&w.buf) {
                    Ok(Some(head)) => return Next::Serve(head),
                    Ok(None) => {}
                    Err(resp) => return Next::Answer(resp),
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
}

/// Discards what the peer still sends after its answer, until it closes or `max` bytes.
fn linger(w: &mut Waiting, max: usize) -> Next {
    let mut sink = [0u8; 4096];
    loop {
        match w.stream.read(&mut sink) {
            Ok(0) => return Next::Close,
            Ok(n) => {
                w.drained += n;
                if w.drained >= max {
                    return Next::Close;
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Next::Wait,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Next::Close,
        }
    }
}

/// One of the `max_connections` slots, given back when dropped (however the connection's
/// thread ends).
struct Slot(Arc<Shared>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A parsed request head: method, path (without the query), the bearer token, the body's
/// length, where the body starts.
struct Head {
    method: String,
    path: String,
    /// The key of an `Authorization: Bearer KEY` header; `None` without one, or with another
    /// scheme, an empty key, or bytes that are not UTF-8.
    bearer: Option<String>,
    content_length: usize,
    expect_continue: bool,
    head_len: usize,
}

/// The head, once `buf` holds it all (`Ok(None)`: not yet); `Err` is the answer to send instead.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let mut bearer = None;
            let mut length = None;
            let mut expect_continue = false;
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("authorization") {
                    let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                    bearer = match v.split_once(' ') {
                        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() => Some(key.trim().to_string()),
                        _ => None,
                    };
                } else if h.name.eq_ignore_ascii_case("content-length") {
                    let parsed = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
                    length = Some(parsed.ok_or_else(|| json_response(400, r#"{"error":"bad Content-Length"}"#, ""))?);
                } else if h.name.eq_ignore_ascii_case("expect") {
                    expect_continue = h.value.eq_ignore_ascii_case(b"100-continue");
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(json_response(411, r#"{"error":"send a Content-Length, not a chunked body"}"#, ""));
                }
            }
            let target = req.path.unwrap_or("/");
            let path = target.split('?').next().unwrap_or("/").to_string();
            let method = req.method.unwrap_or("").to_string();
            Ok(Some(Head { method, path, bearer, content_length: length.unwrap_or(0), expect_continue, head_len: n }))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(json_response(431, r#"{"error":"request head too large"}"#, "")),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(json_response(431, r#"{"error":"too many headers"}"#, "")),
        Err(e) => Err(json_response(400, &error_body(&format!("bad request: {e}")), "")),
    }
}

/// Reads what is there within the deadline; `Err(empty)` when the peer is gone or too slow
/// (nothing is answered then).
fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, chunk: &mut [u8], deadline: Instant) -> Result<(), Vec<u8>> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
        return Err(Vec::new());
    }
    match stream.read(chunk) {
        Ok(0) | Err(_) => Err(Vec::new()),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// Serves a request whose head is complete, on its own thread, holding a slot.
fn serve(shared: &Shared, mut stream: TcpStream, head: Head, buf: Vec<u8>) {
    let _ = stream.set_write_timeout(Some(shared.cfg.timeout));
    let deadline = Instant::now() + shared.cfg.timeout;
    let resp = if head.method == "POST" && is_publish(&head.path) { publish(shared, &mut stream, &head, buf, deadline) } else { route(shared, &head) };
    if !resp.is_empty() {
        let _ = stream.write_all(&resp);
        let _ = stream.flush();
    }
    // Ours is the last word; the peer's unread bytes (a refused body) must not turn the close
    // into a reset that destroys the answer: stop sending, then read a little until it closes.
    // At most DRAIN_TIME and max_body bytes.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + DRAIN_TIME;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < shared.cfg.max_body {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

fn is_publish(path: &str) -> bool {
    path == "/api/emit" || path == "/api/emit/batch"
}

fn health(shared: &Shared) -> Vec<u8> {
    if shared.draining.load(Ordering::Acquire) {
        text_response(503, "shutting down\n", "text/plain; charset=utf-8")
    } else {
        text_response(200, "ok\n", "text/plain; charset=utf-8")
    }
}

/// Every request but `POST /api/emit` (see [`publish`]); only `GET /metrics` waits (for the
/// workers' answers), so the reader answers the others itself.
fn route(shared: &Shared, head: &Head) -> Vec<u8> {
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/health") => health(shared),
        ("GET", "/metrics") => match shared.scraper.scrape(SCRAPE_TIMEOUT) {
            Ok(workers) => {
                let mut text = prometheus::render(&workers);
                if let Some(stats) = shared.handle.as_ref().and_then(ServerHandle::cluster_stats) {
                    prometheus::render_cluster(&mut text, &stats);
                }
                text_response(200, &text, prometheus::CONTENT_TYPE)
            }
            Err(e @ (ScrapeError::Stopped | ScrapeError::Timeout(_))) => json_response(503, &error_body(&e.to_string()), ""),
        },
        (_, "/health" | "/metrics") => json_response(405, r#"{"error":"method not allowed"}"#, "Allow: GET\r\n"),
        (_, "/api/emit" | "/api/emit/batch") => json_response(405, r#"{"error":"method not allowed"}"#, "Allow: POST\r\n"),
        _ => json_response(404, r#"{"error":"not found: the admin endpoint serves /metrics, /health, /api/emit and /api/emit/batch"}"#, ""),
    }
}

/// The answer that refuses a publish request from its head alone (no application to publish
/// to, no key configured, a wrong or missing key, a body too large), or `None`.
fn refuse_publish(shared: &Shared, head: &Head) -> Option<Vec<u8>> {
    if shared.handle.is_none() {
        return Some(json_response(404, r#"{"error":"this mode serves no Socket.IO application to publish to"}"#, ""));
    }
    let Some(key) = &shared.cfg.api_key else {
        return Some(json_response(403, r#"{"error":"the publish API is disabled: start the server with --api-key (or SHARDCAST_API_KEY)"}"#, ""));
    };
    match &head.bearer {
        Some(k) if api::key_matches(k, key) => {}
        Some(_) => return Some(json_response(401, r#"{"error":"wrong API key"}"#, "WWW-Authenticate: Bearer\r\n")),
        None => return Some(json_response(401, r#"{"error":"missing Authorization: Bearer <key>"}"#, "WWW-Authenticate: Bearer\r\n")),
    }
    if head.content_length > shared.cfg.max_body {
        return Some(json_response(413, &error_body(&format!("body larger than {} bytes", shared.cfg.max_body)), ""));
    }
    None
}

/// `POST /api/emit[/batch]`: the key is checked from the head, then the body is read (within
/// the deadline; an empty answer when the peer is gone or too slow) and published.
fn publish(shared: &Shared, stream: &mut TcpStream, head: &Head, mut buf: Vec<u8>, deadline: Instant) -> Vec<u8> {
    if let Some(resp) = refuse_publish(shared, head) {
        return resp;
    }
    let Some(handle) = &shared.handle else { return Vec::new() };
    let end = head.head_len + head.content_length;
    if head.expect_continue && buf.len() < end {
        // curl asks before sending a body over 1 KiB; without this it waits a second.
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let mut chunk = [0u8; 4096];
    while buf.len() < end {
        if let Err(resp) = read_more(stream, &mut buf, &mut chunk, deadline) {
            return resp;
        }
    }
    let batch = head.path == "/api/emit/batch";
    match api::parse(&buf[head.head_len..end], batch) {
        Ok(events) => {
            let (status, body) = api::emit(handle, &events).answer();
            json_response(status, &body, "")
        }
        Err(e) => json_response(e.status, &error_body(&e.message), ""),
    }
}

fn error_body(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

fn json_response(status: u16, body: &str, headers: &str) -> Vec<u8> {
    response::build(status, headers, Some("application/json"), body.as_bytes(), false)
}

fn text_response(status: u16, body: &str, content_type: &str) -> Vec<u8> {
    response::build(status, "", Some(content_type), body.as_bytes(), false)
}
