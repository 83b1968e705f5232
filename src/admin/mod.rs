//! The admin endpoint (`--admin-bind`): a small HTTP/1.1 server for operators, on its own
//! address, never on the public port.
//!
//! - `GET /metrics`: every worker's counters in the Prometheus text format ([`prometheus`]).
//! - `GET /health`: 200 while serving, 503 from the start of shutdown ([`AdminServer::set_draining`]).
//! - `POST /api/emit`, `POST /api/emit/batch`: the publish API ([`api`]), with
//!   `Authorization: Bearer KEY` against `--api-key`.
//!
//! It is not the hot path, so it runs on its own thread with blocking `std::net` I/O and
//! `httparse`, not on a worker's ring: a scrape or a publish then never adds work to a
//! worker's pass beyond one mailbox message, and a slow operator's client cannot delay a
//! worker. Bounded by construction: at most [`AdminConfig::max_connections`] connections at a
//! time (one thread each; the next ones get 503 at once), one request per connection, a head of
//! at most [`MAX_HEAD`] bytes (431), a body of at most [`AdminConfig::max_body`] bytes (413), and
//! [`AdminConfig::timeout`] for the whole request (then the connection is closed).
//!
//! Must never: listen on the public port unless asked, or run work on a worker thread.

pub mod api;
pub mod prometheus;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::app::ServerHandle;
use crate::proto::http::response;
use crate::rt::threads::{ScrapeError, Scraper};

/// The largest request head accepted (431 beyond it).
pub const MAX_HEAD: usize = 8 * 1024;
/// The most headers a request may have (431 beyond it).
const MAX_HEADERS: usize = 32;
/// How long a connection's unread input is drained after its answer, at most.
const DRAIN_TIME: Duration = Duration::from_secs(1);
/// How long a scrape waits for every worker's answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// Settings of the admin endpoint.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where to listen.
    pub bind: SocketAddr,
    /// The key `POST /api/emit` requires (`Authorization: Bearer KEY`); the publish API is
    /// refused (403) without one.
    pub api_key: Option<String>,
    /// The largest request body (413 beyond it).
    pub max_body: usize,
    /// Connections served at once; more get 503 and are closed.
    pub max_connections: usize,
    /// Time a connection has to send its request and read the answer.
    pub timeout: Duration,
}

impl AdminConfig {
    /// The defaults: 1 MiB bodies, 16 connections, 10 s.
    pub fn new(bind: SocketAddr, api_key: Option<String>) -> AdminConfig {
        AdminConfig { bind, api_key, max_body: 1 << 20, max_connections: 16, timeout: Duration::from_secs(10) }
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
    /// Listens on `cfg.bind` and serves on a thread of its own. `handle` serves the publish
    /// API (without one, as in echo mode, it answers 404).
    pub fn start(cfg: AdminConfig, scraper: Scraper, handle: Option<ServerHandle>) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(cfg.bind)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared { cfg, scraper, handle, draining: AtomicBool::new(false), stop: AtomicBool::new(false), active: AtomicUsize::new(0) });
        let s = shared.clone();
        let thread = std::thread::Builder::new().name("shardcast-admin".into()).spawn(move || accept_loop(listener, s))?;
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

    /// Stops accepting and waits for the accept thread (connections in progress finish on
    /// their own, within the timeout).
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own.
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

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut stream) = conn else {
            // Out of descriptors, say: this thread is not a worker, it may wait a little
            // instead of spinning on an error that repeats.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let _ = stream.set_write_timeout(Some(shared.cfg.timeout));
        if shared.active.fetch_add(1, Ordering::AcqRel) >= shared.cfg.max_connections {
            shared.active.fetch_sub(1, Ordering::AcqRel);
            // Without waiting: discard what already arrived (so the close is less likely to be
            // a reset that destroys the answer), answer, stop sending.
            if stream.set_nonblocking(true).is_ok() {
                let (mut sink, mut left) = ([0u8; 4096], MAX_HEAD);
                while left > 0 {
                    match stream.read(&mut sink) {
                        Ok(n) if n > 0 => left = left.saturating_sub(n),
                        _ => break,
                    }
                }
            }
            let _ = stream.set_nonblocking(false);
            let _ = stream.write_all(&json_response(503, r#"{"error":"too many admin connections"}"#, ""));
            let _ = stream.shutdown(std::net::Shutdown::Write);
            continue;
        }
        let slot = Slot(shared.clone());
        // A failed spawn drops the closure, and with it the slot.
        let _ = std::thread::Builder::new().name("shardcast-admin-conn".into()).spawn(move || serve(&slot.0, stream));
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

/// A parsed request: method, path (without the query), the bearer token, the body.
struct Request {
    method: String,
    path: String,
    bearer: Option<String>,
    body: Vec<u8>,
}

/// Reads one request within the deadline; `Err` is the response to send instead.
fn read_request(shared: &Shared, stream: &mut TcpStream, deadline: Instant) -> Result<Request, Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head_len, method, path, bearer, content_length, expect_continue) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let mut bearer = None;
                let mut length = None;
                let mut expect_continue = false;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("authorization") {
                        // `Bearer KEY`; anything else (another scheme, bytes that are not
                        // UTF-8) is a wrong key.
                        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                        bearer = Some(match v.split_once(' ') {
                            Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim().to_string(),
                            _ => String::new(),
                        });
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
                break (n, req.method.unwrap_or("").to_string(), path, bearer, length.unwrap_or(0), expect_continue);
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
                return Err(json_response(431, r#"{"error":"request head too large"}"#, ""));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(json_response(431, r#"{"error":"too many headers"}"#, "")),
            Err(e) => return Err(json_response(400, &error_body(&format!("bad request: {e}")), "")),
        }
        read_more(stream, &mut buf, &mut chunk, deadline)?;
    };
    if content_length > shared.cfg.max_body {
        return Err(json_response(413, &error_body(&format!("body larger than {} bytes", shared.cfg.max_body)), ""));
    }
    if expect_continue && buf.len() < head_len + content_length {
        // curl asks before sending a body over 1 KiB; without this it waits a second.
        let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    while buf.len() < head_len + content_length {
        read_more(stream, &mut buf, &mut chunk, deadline)?;
    }
    let body = buf[head_len..head_len + content_length].to_vec();
    Ok(Request { method, path, bearer, body })
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

fn serve(shared: &Shared, mut stream: TcpStream) {
    let deadline = Instant::now() + shared.cfg.timeout;
    let resp = match read_request(shared, &mut stream, deadline) {
        Ok(req) => route(shared, &req),
        Err(resp) => resp,
    };
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

fn route(shared: &Shared, req: &Request) -> Vec<u8> {
    match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/health") => {
            if shared.draining.load(Ordering::Acquire) {
                text_response(503, "shutting down\n", "text/plain; charset=utf-8")
            } else {
                text_response(200, "ok\n", "text/plain; charset=utf-8")
            }
        }
        ("GET", "/metrics") => match shared.scraper.scrape(SCRAPE_TIMEOUT) {
            Ok(workers) => text_response(200, &prometheus::render(&workers), prometheus::CONTENT_TYPE),
            Err(e @ (ScrapeError::Stopped | ScrapeError::Timeout(_))) => json_response(503, &error_body(&e.to_string()), ""),
        },
        ("POST", "/api/emit" | "/api/emit/batch") => publish(shared, req),
        (_, "/health" | "/metrics") => json_response(405, r#"{"error":"method not allowed"}"#, "Allow: GET\r\n"),
        (_, "/api/emit" | "/api/emit/batch") => json_response(405, r#"{"error":"method not allowed"}"#, "Allow: POST\r\n"),
        _ => json_response(404, r#"{"error":"not found: the admin endpoint serves /metrics, /health, /api/emit and /api/emit/batch"}"#, ""),
    }
}

fn publish(shared: &Shared, req: &Request) -> Vec<u8> {
    let Some(handle) = &shared.handle else {
        return json_response(404, r#"{"error":"this mode serves no Socket.IO application to publish to"}"#, "");
    };
    let Some(key) = &shared.cfg.api_key else {
        return json_response(403, r#"{"error":"the publish API is disabled: start the server with --api-key (or SHARDCAST_API_KEY)"}"#, "");
    };
    match &req.bearer {
        Some(k) if api::key_matches(k, key) => {}
        Some(_) => return json_response(401, r#"{"error":"wrong API key"}"#, "WWW-Authenticate: Bearer\r\n"),
        None => return json_response(401, r#"{"error":"missing Authorization: Bearer <key>"}"#, "WWW-Authenticate: Bearer\r\n"),
    }
    let batch = req.path == "/api/emit/batch";
    let result = api::parse(&req.body, batch).and_then(|events| api::emit(handle, &events));
    match result {
        Ok(n) => json_response(200, &format!(r#"{{"emitted":{n}}}"#), ""),
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
