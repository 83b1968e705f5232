//! The server side of the WebSocket opening handshake (RFC 6455 §4.2).
//!
//! Owns: validating an upgrade request already parsed by `httparse`, computing
//! `Sec-WebSocket-Accept` (`sha1` + `base64`), choosing a subprotocol through a caller hook,
//! negotiating permessage-deflate, and formatting the `101` response or the refusal.
//!
//! Must never: read from a socket or parse raw HTTP bytes (the HTTP front does that).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::deflate::{self, DeflateParams, DeflatePolicy};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade request was refused, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("the upgrade request must use GET")]
    NotGet,
    #[error("the upgrade request must be HTTP/1.1 or later")]
    NotHttp11,
    #[error("missing `Upgrade: websocket`")]
    NoUpgradeHeader,
    #[error("missing `Connection: upgrade`")]
    NoConnectionUpgrade,
    #[error("unsupported Sec-WebSocket-Version (only 13 is supported)")]
    BadVersion,
    #[error("Sec-WebSocket-Key must be the base64 encoding of 16 bytes")]
    BadKey,
}

impl HandshakeError {
    /// The HTTP status of the refusal: 426 (with `Sec-WebSocket-Version: 13`) for a wrong
    /// version, 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::BadVersion => 426,
            _ => 400,
        }
    }

    /// The whole HTTP refusal response.
    pub fn response(&self) -> Vec<u8> {
        let body = self.to_string();
        let (status, extra) = match self {
            HandshakeError::BadVersion => ("426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n"),
            _ => ("400 Bad Request", ""),
        };
        format!("HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
    }
}

/// A validated upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest<'a> {
    pub key: &'a str,
    /// Subprotocols the client offered, in its order of preference.
    pub protocols: Vec<&'a str>,
    /// Values of every `Sec-WebSocket-Extensions` header.
    pub extensions: Vec<&'a str>,
}

/// Whether the comma-separated header value contains `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a request asks for a WebSocket upgrade at all (so that the HTTP front can route it).
pub fn is_upgrade_request(headers: &[httparse::Header<'_>]) -> bool {
    headers.iter().any(|h| h.name.eq_ignore_ascii_case("upgrade") && has_token(h.value, "websocket"))
}

/// Validates an upgrade request (method, version and headers as parsed by `httparse`).
pub fn validate<'a>(method: &str, http_minor_version: u8, headers: &[httparse::Header<'a>]) -> Result<UpgradeRequest<'a>, HandshakeError> {
    if method != "GET" {
        return Err(HandshakeError::NotGet);
    }
    if http_minor_version < 1 {
        return Err(HandshakeError::NotHttp11);
    }
    let mut upgrade = false;
    let mut connection = false;
    let mut version_ok = false;
    let mut key = None;
    let mut protocols = Vec::new();
    let mut extensions = Vec::new();
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(h.value, "websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(h.value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version_ok = h.value.trim_ascii() == b"13";
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = std::str::from_utf8(h.value).ok().map(str::trim);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            if let Ok(v) = std::str::from_utf8(h.value) {
                protocols.extend(v.split(',').map(str::trim).filter(|p| !p.is_empty()));
            }
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            if let Ok(v) = std::str::from_utf8(h.value) {
                extensions.push(v);
            }
        }
    }
    if !upgrade {
        return Err(HandshakeError::NoUpgradeHeader);
    }
    if !connection {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if !version_ok {
        return Err(HandshakeError::BadVersion);
    }
    let key = key.ok_or(HandshakeError::BadKey)?;
    match STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::BadKey),
    }
    Ok(UpgradeRequest { key, protocols, extensions })
}

/// `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    STANDARD.encode(h.finalize())
}

/// What the server agreed to for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub protocol: Option<String>,
    pub deflate: Option<DeflateParams>,
    /// The complete `101 Switching Protocols` response.
    pub response: Vec<u8>,
}

/// Accepts a validated request. `select_protocol` is the subprotocol hook: it sees the
/// client's offers and returns the one to use, if any. `deflate_policy` is `None` when the
/// server does not offer compression. `extra_headers` are added verbatim (each ending in CRLF).
pub fn accept(
    req: &UpgradeRequest<'_>,
    select_protocol: impl FnOnce(&[&str]) -> Option<String>,
    deflate_policy: Option<&DeflatePolicy>,
    extra_headers: &str,
) -> Accepted {
    let protocol = select_protocol(&req.protocols);
    let negotiated = deflate_policy.and_then(|p| deflate::negotiate(&deflate::parse_extensions(req.extensions.iter().copied()), p));
    let mut r = String::with_capacity(160);
    r.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    r.push_str(&accept_key(req.key));
    r.push_str("\r\n");
    if let Some(p) = &protocol {
        r.push_str("Sec-WebSocket-Protocol: ");
        r.push_str(p);
        r.push_str("\r\n");
    }
    if let Some((_, header)) = &negotiated {
        r.push_str("Sec-WebSocket-Extensions: ");
        r.push_str(header);
        r.push_str("\r\n");
    }
    r.push_str(extra_headers);
    r.push_str("\r\n");
    Accepted { protocol, deflate: negotiated.map(|(p, _)| p), response: r.into_bytes() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8], f: impl FnOnce(&str, u8, &[httparse::Header<'_>])) {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(raw).unwrap().is_complete());
        f(req.method.unwrap(), req.version.unwrap(), req.headers);
    }

    const GOOD: &[u8] = b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_sample_key() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn accepts_rfc_request_with_protocol_hook() {
        parse(GOOD, |m, v, h| {
            let req = validate(m, v, h).unwrap();
            assert_eq!(req.protocols, ["chat", "superchat"]);
            let acc = accept(&req, |p| p.iter().find(|p| **p == "superchat").map(|s| s.to_string()), None, "");
            let text = String::from_utf8(acc.response).unwrap();
            assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
            assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
            assert!(text.contains("Sec-WebSocket-Protocol: superchat\r\n"));
            assert!(text.ends_with("\r\n\r\n"));
        });
    }

    #[test]
    fn token_lists_are_case_insensitive() {
        let raw = b"GET / HTTP/1.1\r\nUpgrade: h2c, WebSocket\r\nConnection: keep-alive, UPGRADE\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        parse(raw, |m, v, h| assert!(validate(m, v, h).is_ok()));
    }

    #[test]
    fn refusals() {
        let cases: [(&[u8], HandshakeError, u16); 6] = [
            (b"POST / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", HandshakeError::NotGet, 400),
            (b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", HandshakeError::NotHttp11, 400),
            (b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", HandshakeError::NoUpgradeHeader, 400),
            (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", HandshakeError::NoConnectionUpgrade, 400),
            (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", HandshakeError::BadVersion, 426),
            (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n", HandshakeError::BadKey, 400),
        ];
        for (raw, err, status) in cases {
            parse(raw, |m, v, h| {
                let e = validate(m, v, h).unwrap_err();
                assert_eq!((&e, e.status()), (&err, status));
                let resp = String::from_utf8(e.response()).unwrap();
                assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")));
                assert_eq!(resp.contains("Sec-WebSocket-Version: 13\r\n"), status == 426);
            });
        }
    }

    #[test]
    fn negotiates_deflate_in_the_response() {
        let raw = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
        parse(raw, |m, v, h| {
            let req = validate(m, v, h).unwrap();
            let acc = accept(&req, |_| None, Some(&DeflatePolicy::default()), "");
            assert!(acc.deflate.is_some());
            assert!(String::from_utf8(acc.response)
                .unwrap()
                .contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"));
            let acc = accept(&req, |_| None, None, "");
            assert!(acc.deflate.is_none());
        });
    }
}
