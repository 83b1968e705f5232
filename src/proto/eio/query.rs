//! The Engine.IO request query (`EIO`, `transport`, `sid`) and the reference server's
//! verification rules, with its error codes and messages.
//!
//! Owns: deciding, from the query, the method and whether the request is a WebSocket upgrade,
//! whether a request is a new handshake or belongs to an existing session — or which error it
//! gets. Session existence is asked through a closure, so this stays pure.
//!
//! Must never: hold sessions or write HTTP responses (it gives the status and body to send).

/// The two transports of Engine.IO v4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Polling,
    WebSocket,
}

impl Transport {
    pub fn from_name(s: &str) -> Option<Transport> {
        match s {
            "polling" => Some(Transport::Polling),
            "websocket" => Some(Transport::WebSocket),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Polling => "polling",
            Transport::WebSocket => "websocket",
        }
    }
}

/// The query parameters Engine.IO cares about (values are not percent-decoded: none of the
/// values the protocol defines needs it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query<'a> {
    pub eio: Option<&'a str>,
    pub transport: Option<&'a str>,
    pub sid: Option<&'a str>,
}

/// Parses the query string (the part after `?`, or a whole request target).
pub fn parse_query(target: &str) -> Query<'_> {
    let qs = match target.split_once('?') {
        Some((_, q)) => q,
        None if target.starts_with('/') => "",
        None => target,
    };
    let mut q = Query::default();
    for pair in qs.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "EIO" => q.eio = Some(v),
            "transport" => q.transport = Some(v),
            "sid" if !v.is_empty() => q.sid = Some(v),
            _ => {}
        }
    }
    q
}

/// The reference server's errors: `{"code":N,"message":"..."}` with HTTP 400 (403 for
/// `Forbidden`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EioError {
    #[error("Transport unknown")]
    UnknownTransport = 0,
    #[error("Session ID unknown")]
    UnknownSid = 1,
    #[error("Bad handshake method")]
    BadHandshakeMethod = 2,
    #[error("Bad request")]
    BadRequest = 3,
    #[error("Forbidden")]
    Forbidden = 4,
    #[error("Unsupported protocol version")]
    UnsupportedProtocolVersion = 5,
}

impl EioError {
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn http_status(self) -> u16 {
        if self == EioError::Forbidden {
            403
        } else {
            400
        }
    }

    /// The JSON body, e.g. `{"code":0,"message":"Transport unknown"}`.
    pub fn body(self) -> String {
        format!("{{\"code\":{},\"message\":\"{}\"}}", self.code(), self)
    }
}

/// What a verified request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified<'a> {
    /// A new session over this transport.
    Handshake(Transport),
    /// A request for an existing session: a poll/post, or a WebSocket upgrade of it.
    Session { sid: &'a str, transport: Transport },
}

/// Applies the reference server's checks, in its order: transport, then (with a sid) the
/// session and transport match, else (a handshake) the method, the WebSocket-needs-upgrade
/// rule and the protocol version. `session_transport` returns the current transport of a
/// known session, `None` for an unknown sid.
pub fn verify<'a>(
    q: &Query<'a>,
    method: &str,
    is_upgrade: bool,
    enabled: &[Transport],
    session_transport: impl FnOnce(&str) -> Option<Transport>,
) -> Result<Verified<'a>, EioError> {
    let transport = q.transport.and_then(Transport::from_name).filter(|t| enabled.contains(t)).ok_or(EioError::UnknownTransport)?;
    if let Some(sid) = q.sid {
        let current = session_transport(sid).ok_or(EioError::UnknownSid)?;
        // The one mismatch allowed: a polling session's WebSocket upgrade. Anything else (a
        // polling request for a WebSocket session, with or without upgrade headers) is wrong.
        let upgrading = is_upgrade && transport == Transport::WebSocket && current == Transport::Polling;
        if current != transport && !upgrading {
            return Err(EioError::BadRequest);
        }
        return Ok(Verified::Session { sid, transport });
    }
    if method != "GET" {
        return Err(EioError::BadHandshakeMethod);
    }
    if transport == Transport::WebSocket && !is_upgrade {
        return Err(EioError::BadRequest);
    }
    if q.eio != Some("4") {
        return Err(EioError::UnsupportedProtocolVersion);
    }
    Ok(Verified::Handshake(transport))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Transport::*;

    const BOTH: &[Transport] = &[Polling, WebSocket];

    fn v<'a>(target: &'a str, method: &str, upgrade: bool) -> Result<Verified<'a>, EioError> {
        verify(&parse_query(target), method, upgrade, BOTH, |sid| match sid {
            "poll" => Some(Polling),
            "ws" => Some(WebSocket),
            _ => None,
        })
    }

    #[test]
    fn reference_error_codes_and_bodies() {
        assert_eq!(v("/socket.io/?EIO=4&transport=tobi", "GET", false), Err(EioError::UnknownTransport));
        assert_eq!(v("/socket.io/?EIO=4", "GET", false), Err(EioError::UnknownTransport));
        assert_eq!(v("/socket.io/?EIO=4&transport=polling&sid=nope", "GET", false), Err(EioError::UnknownSid));
        assert_eq!(v("/socket.io/?EIO=4&transport=polling", "POST", false), Err(EioError::BadHandshakeMethod));
        assert_eq!(v("/socket.io/?EIO=4&transport=websocket", "GET", false), Err(EioError::BadRequest));
        assert_eq!(v("/socket.io/?EIO=4&transport=websocket&sid=poll", "GET", false), Err(EioError::BadRequest));
        assert_eq!(v("/socket.io/?EIO=3&transport=polling", "GET", false), Err(EioError::UnsupportedProtocolVersion));
        assert_eq!(v("/socket.io/?transport=polling", "GET", false), Err(EioError::UnsupportedProtocolVersion));
        assert_eq!(EioError::UnknownTransport.body(), r#"{"code":0,"message":"Transport unknown"}"#);
        assert_eq!(EioError::UnknownSid.body(), r#"{"code":1,"message":"Session ID unknown"}"#);
        assert_eq!(EioError::BadHandshakeMethod.body(), r#"{"code":2,"message":"Bad handshake method"}"#);
        assert_eq!(EioError::BadRequest.body(), r#"{"code":3,"message":"Bad request"}"#);
        assert_eq!(EioError::Forbidden.body(), r#"{"code":4,"message":"Forbidden"}"#);
        assert_eq!(EioError::UnsupportedProtocolVersion.body(), r#"{"code":5,"message":"Unsupported protocol version"}"#);
        assert_eq!((EioError::Forbidden.http_status(), EioError::BadRequest.http_status()), (403, 400));
    }

    #[test]
    fn accepted_requests() {
        assert_eq!(v("/socket.io/?EIO=4&transport=polling&t=N8hyd6w", "GET", false), Ok(Verified::Handshake(Polling)));
        assert_eq!(v("/socket.io/?EIO=4&transport=websocket", "GET", true), Ok(Verified::Handshake(WebSocket)));
        assert_eq!(v("/socket.io/?EIO=4&transport=polling&sid=poll", "POST", false), Ok(Verified::Session { sid: "poll", transport: Polling }));
        assert_eq!(v("/socket.io/?EIO=4&transport=websocket&sid=poll", "GET", true), Ok(Verified::Session { sid: "poll", transport: WebSocket }));
        // A polling request for a WebSocket session is wrong even with upgrade headers (it
        // used to be parked forever).
        assert_eq!(v("/socket.io/?EIO=4&transport=polling&sid=ws", "GET", true), Err(EioError::BadRequest));
        assert_eq!(v("/socket.io/?EIO=4&transport=polling&sid=ws", "GET", false), Err(EioError::BadRequest));
        // A disabled transport is unknown.
        assert_eq!(verify(&parse_query("?EIO=4&transport=websocket"), "GET", true, &[Polling], |_| None), Err(EioError::UnknownTransport));
    }
}
