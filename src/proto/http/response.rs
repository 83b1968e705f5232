//! HTTP/1.1 responses: status line, headers, body; optional gzip/deflate of bodies over a
//! threshold when the client accepts it (as both reference servers do for polling).
//!
//! Must never: write to a socket.

use std::io::Write as _;

pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Content codings the server can apply to a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Deflate,
}

/// Whether a coding's parameters give it a weight of zero (`q=0`, `q=0.0`, `Q=0.000`: "not
/// acceptable", RFC 9110 §12.4.2). A weight that does not parse counts as not acceptable.
fn zero_weight<'a>(params: impl Iterator<Item = &'a str>) -> bool {
    for p in params {
        let Some((name, value)) = p.split_once('=') else { continue };
        if name.trim().eq_ignore_ascii_case("q") {
            return value.trim().parse::<f32>().map_or(true, |q| q <= 0.0);
        }
    }
    false
}

/// Picks gzip, else deflate, from an `Accept-Encoding` value: a coding is accepted when it is
/// listed, or covered by `*`, with a non-zero weight (an explicit entry overrides `*`).
pub fn choose_encoding(accept: Option<&str>) -> Option<Encoding> {
    let accept = accept?;
    let weight_of = |name: &str| -> Option<bool> {
        accept.split(',').find_map(|part| {
            let mut it = part.split(';').map(str::trim);
            it.next().is_some_and(|n| n.eq_ignore_ascii_case(name)).then(|| !zero_weight(it))
        })
    };
    let accepts = |name: &str| weight_of(name).or_else(|| weight_of("*")).unwrap_or(false);
    if accepts("gzip") {
        Some(Encoding::Gzip)
    } else if accepts("deflate") {
        Some(Encoding::Deflate)
    } else {
        None
    }
}

/// Compresses `body` with `enc`.
pub fn compress(enc: Encoding, body: &[u8]) -> Vec<u8> {
    let level = flate2::Compression::default();
    match enc {
        Encoding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 2), level);
            e.write_all(body).expect("writing to memory");
            e.finish().expect("writing to memory")
        }
        Encoding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::with_capacity(body.len() / 2), level);
            e.write_all(body).expect("writing to memory");
            e.finish().expect("writing to memory")
        }
    }
}

/// Builds a response. `headers` is a block of `Name: value\r\n` lines.
pub fn build(status: u16, headers: &str, content_type: Option<&str>, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + headers.len() + body.len());
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, reason(status));
    if let Some(ct) = content_type {
        let _ = write!(out, "Content-Type: {ct}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n", body.len());
    out.extend_from_slice(headers.as_bytes());
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// What a request asks of its response beyond status, headers and body, applied to a response
/// made by [`build`]: a HEAD request gets the head alone (Content-Length kept, RFC 9110 §9.3.2);
/// a kept-alive HTTP/1.0 request is told so with `Connection: keep-alive` (HTTP/1.0 closes by
/// default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reply {
    /// The request was a HEAD.
    pub head_only: bool,
    /// An HTTP/1.0 request that asked to be kept alive.
    pub http10_keep_alive: bool,
}

impl Reply {
    /// What `req` asks of its response.
    pub fn of(req: &super::Request) -> Reply {
        Reply { head_only: req.method == super::Method::Head, http10_keep_alive: req.http10 && req.keep_alive }
    }

    /// Adapts `resp` (made by [`build`]) to the request.
    pub fn apply(self, resp: &mut Vec<u8>) {
        if self == Reply::default() {
            return;
        }
        let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else { return };
        if self.head_only {
            resp.truncate(end + 4);
        }
        if self.http10_keep_alive {
            resp.splice(end + 2..end + 2, b"Connection: keep-alive\r\n".iter().copied());
        }
    }
}

/// A plain-text error response.
pub fn error(status: u16, headers: &str, message: &str, keep_alive: bool) -> Vec<u8> {
    build(status, headers, Some("text/plain; charset=UTF-8"), message.as_bytes(), keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn encoding_choice() {
        assert_eq!(choose_encoding(Some("gzip, deflate, br")), Some(Encoding::Gzip));
        assert_eq!(choose_encoding(Some("deflate")), Some(Encoding::Deflate));
        assert_eq!(choose_encoding(Some("gzip;q=0, deflate")), Some(Encoding::Deflate));
        assert_eq!(choose_encoding(Some("gzip;q=0.0, deflate;Q=0.000")), None);
        assert_eq!(choose_encoding(Some("gzip; q=0.5")), Some(Encoding::Gzip));
        assert_eq!(choose_encoding(Some("*")), Some(Encoding::Gzip));
        assert_eq!(choose_encoding(Some("gzip;q=0, *")), Some(Encoding::Deflate));
        assert_eq!(choose_encoding(Some("br")), None);
        assert_eq!(choose_encoding(None), None);
    }

    #[test]
    fn gzip_roundtrip() {
        let body = b"4hello".repeat(500);
        let z = compress(Encoding::Gzip, &body);
        let mut d = Vec::new();
        flate2::read::GzDecoder::new(&z[..]).read_to_end(&mut d).unwrap();
        assert_eq!(d, body);
        let z = compress(Encoding::Deflate, &body);
        let mut d = Vec::new();
        flate2::read::ZlibDecoder::new(&z[..]).read_to_end(&mut d).unwrap();
        assert_eq!(d, body);
    }

    #[test]
    fn builds_responses() {
        let r = build(200, "X-A: 1\r\n", Some("text/plain"), b"ok", false);
        assert_eq!(r, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nX-A: 1\r\nConnection: close\r\n\r\nok");
    }
}
