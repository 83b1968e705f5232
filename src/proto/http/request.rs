//! HTTP/1.1 request heads, parsed with `httparse` into an owned summary of what the server
//! needs: method, target, body framing, keep-alive, the headers CORS, compression and the
//! WebSocket handshake look at.
//!
//! Owns: the head-size limit (431), body framing rules (411 without a length on POST, 413
//! past the body limit), and malformed input (400). Must never: read a socket.

use crate::proto::ws::handshake::{self, HandshakeError};

/// Largest request head accepted.
pub const MAX_HEAD: usize = 8 * 1024;
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Options,
    Head,
    Other,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Options => "OPTIONS",
            Method::Head => "HEAD",
            Method::Other => "OTHER",
        }
    }
}

/// An accepted WebSocket upgrade request, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    pub key: String,
    pub protocols: Vec<String>,
    pub extensions: Vec<String>,
}

/// The summary of one request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The request target as sent (path and query).
    pub target: String,
    /// Bytes of the head, CRLFCRLF included; the body starts here.
    pub head_len: usize,
    /// Body length (0 when none).
    pub content_length: usize,
    pub keep_alive: bool,
    /// An HTTP/1.0 request (a kept-alive one must be told so: `Connection: keep-alive`).
    pub http10: bool,
    pub origin: Option<String>,
    pub accept_encoding: Option<String>,
    pub cookie: Option<String>,
    pub access_control_request_headers: Option<String>,
    /// Every header as sent (name, value), for the layers above (e.g. Socket.IO middleware).
    pub headers: Vec<(String, String)>,
    /// `Some` when the request asks for a WebSocket upgrade: the validated handshake, or why
    /// it is refused.
    pub upgrade: Option<Result<Upgrade, HandshakeError>>,
}

impl Request {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query string (after `?`), empty when there is none.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }
}

/// Why a request head was refused, with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("malformed request")]
    Malformed,
    #[error("request head too large")]
    HeadTooLarge,
    #[error("length required")]
    LengthRequired,
    #[error("payload too large")]
    PayloadTooLarge,
}

impl HttpError {
    pub fn status(self) -> u16 {
        match self {
            HttpError::Malformed => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::LengthRequired => 411,
            HttpError::PayloadTooLarge => 413,
        }
    }
}

/// The origin form (`/path?query`) of a request target: an absolute-form target
/// (`http://host/path?query`, RFC 9112 §3.2.2, which a server must accept) loses its scheme
/// and authority; any other target is kept as it is.
fn origin_form(target: &str) -> std::borrow::Cow<'_, str> {
    let rest = ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme).then(|| &target[scheme.len()..])
    });
    let Some(rest) = rest else { return target.into() };
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => rest[i..].into(),
        // `http://host?q`: the path is `/`.
        Some(i) => format!("/{}", &rest[i..]).into(),
        None => "/".into(),
    }
}

/// Parses a request head from the front of `buf`. `Ok(None)`: incomplete, read more.
/// `max_body` bounds Content-Length (413 beyond it).
pub fn parse_request(buf: &[u8], max_body: usize) -> Result<Option<Request>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD { Err(HttpError::HeadTooLarge) } else { Ok(None) };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(_) => return Err(HttpError::Malformed),
    };
    if head_len > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let method = match req.method.unwrap_or("") {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "OPTIONS" => Method::Options,
        "HEAD" => Method::Head,
        _ => Method::Other,
    };
    let minor = req.version.unwrap_or(1);
    let mut content_length = None;
    let mut chunked = false;
    let mut keep_alive = minor >= 1;
    let mut out = Request {
        method,
        target: origin_form(req.path.unwrap_or("/")).into_owned(),
        head_len,
        content_length: 0,
        keep_alive,
        http10: minor == 0,
        origin: None,
        accept_encoding: None,
        cookie: None,
        access_control_request_headers: None,
        headers: Vec::with_capacity(req.headers.len()),
        upgrade: None,
    };
    let text = |v: &[u8]| std::str::from_utf8(v).map(|s| s.trim().to_owned()).map_err(|_| HttpError::Malformed);
    for h in req.headers.iter() {
        let n = h.name;
        out.headers.push((n.to_owned(), String::from_utf8_lossy(h.value).into_owned()));
        if n.eq_ignore_ascii_case("content-length") {
            // RFC 9110 §8.6: 1*DIGIT. `str::parse` would also take a sign (`+2`).
            let t = text(h.value)?;
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::Malformed);
            }
            let v: usize = t.parse().map_err(|_| HttpError::Malformed)?;
            if content_length.is_some_and(|c| c != v) {
                return Err(HttpError::Malformed);
            }
            content_length = Some(v);
        } else if n.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if n.eq_ignore_ascii_case("connection") {
            if handshake::has_token(h.value, "close") {
                keep_alive = false;
            } else if handshake::has_token(h.value, "keep-alive") {
                keep_alive = true;
            }
        } else if n.eq_ignore_ascii_case("origin") {
            out.origin = Some(text(h.value)?);
        } else if n.eq_ignore_ascii_case("accept-encoding") {
            out.accept_encoding = Some(text(h.value)?);
        } else if n.eq_ignore_ascii_case("cookie") {
            out.cookie = Some(text(h.value)?);
        } else if n.eq_ignore_ascii_case("access-control-request-headers") {
            out.access_control_request_headers = Some(text(h.value)?);
        }
    }
    if chunked && content_length.is_some() {
        return Err(HttpError::Malformed); // request smuggling shape (RFC 9112 §6.1)
    }
    if method == Method::Post && (chunked || content_length.is_none()) {
        return Err(HttpError::LengthRequired);
    }
    if chunked {
        return Err(HttpError::LengthRequired);
    }
    let len = content_length.unwrap_or(0);
    if len > max_body {
        return Err(HttpError::PayloadTooLarge);
    }
    out.content_length = len;
    out.keep_alive = keep_alive;
    if handshake::is_upgrade_request(req.headers) {
        out.upgrade = Some(handshake::validate(req.method.unwrap_or(""), minor, req.headers).map(|u| Upgrade {
            key: u.key.to_owned(),
            protocols: u.protocols.iter().map(|s| s.to_string()).collect(),
            extensions: u.extensions.iter().map(|s| s.to_string()).collect(),
        }));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_form_targets_are_served_as_their_origin_form() {
        let t = |target: &str| parse_request(format!("GET {target} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes(), 10).unwrap().unwrap().target;
        assert_eq!(t("http://h:3000/socket.io/?EIO=4&transport=polling"), "/socket.io/?EIO=4&transport=polling");
        assert_eq!(t("HTTPS://h/x"), "/x");
        assert_eq!(t("http://h?a=1"), "/?a=1");
        assert_eq!(t("http://h"), "/");
        assert_eq!(t("/socket.io/"), "/socket.io/");
    }

    #[test]
    fn parses_a_polling_post() {
        let raw = b"POST /socket.io/?EIO=4&transport=polling&sid=abc HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nOrigin: http://a\r\nAccept-Encoding: gzip, deflate\r\n\r\n4helloEXTRA";
        let r = parse_request(raw, 100).unwrap().unwrap();
        assert_eq!((r.method, r.path(), r.content_length, r.keep_alive), (Method::Post, "/socket.io/", 5, true));
        assert_eq!(&raw[r.head_len..r.head_len + 5], b"4hello"[..5].as_ref());
        assert_eq!(r.origin.as_deref(), Some("http://a"));
        assert!(r.upgrade.is_none());
    }

    #[test]
    fn statuses() {
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n", 10), Ok(None));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(9000));
        assert_eq!(parse_request(big.as_bytes(), 10).unwrap_err().status(), 431);
        assert_eq!(parse_request(b"POST / HTTP/1.1\r\n\r\n", 10).unwrap_err().status(), 411);
        assert_eq!(parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 10).unwrap_err().status(), 411);
        assert_eq!(parse_request(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", 10).unwrap_err().status(), 413);
        assert_eq!(parse_request(b"GARBAGE\r\n\r\n", 10).unwrap_err().status(), 400);
        assert_eq!(parse_request(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 10).unwrap_err().status(), 400);
        // Only digits: a sign or inner spaces are not a length (finding 15 of the audit).
        for bad in ["+2", "-0", " 2 2", "0x2", ""] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\nab");
            assert_eq!(parse_request(raw.as_bytes(), 10).unwrap_err().status(), 400, "{bad:?}");
        }
        let r = parse_request(b"GET / HTTP/1.0\r\n\r\n", 10).unwrap().unwrap();
        assert!(!r.keep_alive);
        let r = parse_request(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", 10).unwrap().unwrap();
        assert!(!r.keep_alive);
    }

    #[test]
    fn carries_the_websocket_handshake() {
        let raw = b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let r = parse_request(raw, 10).unwrap().unwrap();
        assert_eq!(r.upgrade.unwrap().unwrap().key, "dGhlIHNhbXBsZSBub25jZQ==");
        let raw =
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n\r\n";
        assert_eq!(parse_request(raw, 10).unwrap().unwrap().upgrade, Some(Err(HandshakeError::BadVersion)));
    }
}
