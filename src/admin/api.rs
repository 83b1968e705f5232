//! The publish API: `POST /api/emit` (one event, or a JSON array of events) and
//! `POST /api/emit/batch` (an array), for backends in any language. Each event is emitted
//! through a [`ServerHandle`] (encoded once, posted to every worker), and the answer is sent
//! once every worker has handled it ([`ServerHandle::flush`]): its recipients' packets are
//! queued by then.
//!
//! Must never: accept a request without the configured key, or block a worker (the handle only
//! posts mail; waiting happens on the admin thread).

use serde::Deserialize;
use serde_json::Value;

use crate::app::{HandleError, ServerHandle};

/// One event to publish, as the request body names it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitRequest {
    /// The namespace (default `/`).
    #[serde(default = "root")]
    pub namespace: String,
    /// Sockets in any of these rooms (a socket id is a room too); every socket of the
    /// namespace when empty.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Sockets in any of these rooms (or with these ids) are left out.
    #[serde(default)]
    pub except: Vec<String>,
    /// The event name.
    pub event: String,
    /// The event's arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Drop it for clients that cannot take it right now.
    #[serde(default)]
    pub volatile: bool,
}

fn root() -> String {
    "/".to_string()
}

/// Event names Socket.IO reserves (the reference server throws when one is emitted).
const RESERVED: [&str; 6] = ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

/// Why a publish request was refused: the HTTP status and a message for the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// What was wrong, for the `error` field of the JSON body.
    pub message: String,
}

impl ApiError {
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError { status: 400, message: message.into() }
    }
}

/// Parses a body: one event object, or (`batch` or not) an array of them.
pub fn parse(body: &[u8], batch: bool) -> Result<Vec<EmitRequest>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("invalid JSON: {e}")))?;
    let events = match v {
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| serde_json::from_value::<EmitRequest>(item).map_err(|e| ApiError::bad(format!("event {i}: {e}"))))
            .collect::<Result<Vec<_>, _>>()?,
        obj @ Value::Object(_) if !batch => vec![serde_json::from_value(obj).map_err(|e| ApiError::bad(format!("invalid event: {e}")))?],
        _ if batch => return Err(ApiError::bad("expected a JSON array of events")),
        _ => return Err(ApiError::bad("expected a JSON object (one event) or an array of events")),
    };
    for (i, e) in events.iter().enumerate() {
        if !e.namespace.starts_with('/') {
            return Err(ApiError::bad(format!("event {i}: namespace must start with '/'")));
        }
        if e.event.is_empty() {
            return Err(ApiError::bad(format!("event {i}: event must not be empty")));
        }
        if RESERVED.contains(&e.event.as_str()) {
            return Err(ApiError::bad(format!("event {i}: {:?} is a reserved event name", e.event)));
        }
    }
    Ok(events)
}

/// How long a publish waits for every worker to have handled its events.
const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Emits every event, then waits until every worker has handled them.
pub fn emit(handle: &ServerHandle, events: &[EmitRequest]) -> Result<usize, ApiError> {
    let stopped = |e: HandleError| ApiError { status: 503, message: e.to_string() };
    for e in events {
        let mut op = handle.of(&e.namespace);
        for r in &e.rooms {
            op = op.to(r);
        }
        for r in &e.except {
            op = op.except(r);
        }
        if e.volatile {
            op = op.volatile();
        }
        op.emit(&e.event, &e.args).map_err(stopped)?;
    }
    handle.flush().wait_timeout(FLUSH_TIMEOUT).map_err(stopped)?;
    Ok(events.len())
}

/// Compares a presented key with the configured one without stopping at the first difference.
pub fn key_matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_event_an_array_and_the_errors() {
        let one = parse(br#"{"event":"news","args":[1,{"a":2}],"rooms":["r"],"except":["x"]}"#, false).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].namespace.as_str(), one[0].rooms.as_slice(), one[0].except.as_slice()), ("/", &["r".to_string()][..], &["x".to_string()][..]));
        assert_eq!(parse(br#"[{"event":"a"},{"event":"b","namespace":"/custom"}]"#, true).unwrap().len(), 2);
        let bad = |b: &[u8], batch| parse(b, batch).unwrap_err().message;
        assert!(bad(b"{nope", false).starts_with("invalid JSON"));
        assert!(bad(br#"{"event":"a"}"#, true).contains("array"));
        assert!(bad(br#"{"args":[]}"#, false).contains("missing field `event`"));
        assert!(bad(br#"{"event":"a","romos":[]}"#, false).contains("unknown field `romos`"));
        assert!(bad(br#"{"event":"disconnect"}"#, false).contains("reserved"));
        assert!(bad(br#"{"event":"a","namespace":"custom"}"#, false).contains("namespace"));
        assert!(bad(br#"[{"event":"a"},{"event":""}]"#, true).starts_with("event 1"));
    }

    #[test]
    fn keys_compare_whole() {
        assert!(key_matches("secret", "secret"));
        assert!(!key_matches("secreT", "secret"));
        assert!(!key_matches("secret2", "secret"));
        assert!(!key_matches("", "secret"));
    }
}
