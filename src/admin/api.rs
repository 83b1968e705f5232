//! The publish API: `POST /api/emit` (one event, or a JSON array of events) and
//! `POST /api/emit/batch` (an array), for backends in any language. Each event is emitted
//! through a [`ServerHandle`] (encoded once, posted to every worker and, in a cluster, handed to
//! the cluster adapter), and the answer is sent once every worker has handled it
//! ([`ServerHandle::flush`]): its recipients' packets are queued by then. The answer counts
//! what every worker took and what the cluster adapter could not take ([`Published::answer`]).
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

/// What became of a publish request's events, and how the answer says it ([`Published::answer`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Events handed to every worker of this node (all of them, unless the server stopped).
    pub emitted: usize,
    /// With a cluster adapter, how many of them it could not take (its queue was full or its
    /// backend is unreachable): this node's clients got them, the other nodes' did not. `None`
    /// on a single node.
    pub not_delivered_to_cluster: Option<usize>,
    /// Whether every worker had handled them within the flush timeout.
    pub confirmed: bool,
    /// The server stopped before every event was handed on (or confirmed).
    pub stopped: bool,
}

impl Published {
    /// The HTTP status and JSON body:
    /// - 200 `{"emitted":N}` (with a cluster adapter also `"not_delivered_to_cluster":0`);
    /// - 207 `{"emitted":N,"not_delivered_to_cluster":M,"error":..}` when the cluster adapter
    ///   could not take M of them: resending would repeat them to this node's clients;
    /// - 202 `{"emitted":N,"confirmed":false,"error":..}` when every worker was handed them but
    ///   not all had handled them within 5 s: they are queued, not lost, and must not be resent;
    /// - 503 `{"error":..,"emitted":N}` when the server stopped, N being those handed on before.
    pub fn answer(&self) -> (u16, String) {
        let mut body = serde_json::Map::new();
        let (n, m) = (self.emitted, self.not_delivered_to_cluster.unwrap_or(0));
        let status = if self.stopped {
            body.insert("error".into(), "the server has shut down".into());
            503
        } else if m > 0 {
            207
        } else if !self.confirmed {
            202
        } else {
            200
        };
        body.insert("emitted".into(), n.into());
        if let Some(m) = self.not_delivered_to_cluster {
            body.insert("not_delivered_to_cluster".into(), m.into());
        }
        if !self.stopped && !self.confirmed {
            body.insert("confirmed".into(), false.into());
        }
        let mut why = Vec::new();
        if !self.stopped && m > 0 {
            why.push(format!(
                "{m} of the {n} events were not taken by the cluster adapter (its queue was full or Redis is unreachable): this node's clients got them, the other nodes' did not; resending them repeats them here"
            ));
        }
        if !self.stopped && !self.confirmed {
            why.push(format!(
                "every worker was handed the {n} events but not all had handled them within {} s: they are queued, not lost; do not resend them",
                FLUSH_TIMEOUT.as_secs()
            ));
        }
        if !why.is_empty() {
            body.insert("error".into(), why.join("; ").into());
        }
        (status, Value::Object(body).to_string())
    }
}

/// Emits every event, then waits until every worker has handled them.
pub fn emit(handle: &ServerHandle, events: &[EmitRequest]) -> Published {
    let mut out = Published { emitted: 0, not_delivered_to_cluster: None, confirmed: false, stopped: false };
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
        match op.emit_reporting(&e.event, &e.args) {
            Ok(sent) => {
                out.emitted += 1;
                if let Some(taken) = sent.cluster {
                    *out.not_delivered_to_cluster.get_or_insert(0) += usize::from(!taken);
                }
            }
            Err(_) => {
                out.stopped = true;
                return out;
            }
        }
    }
    match handle.flush().wait_timeout(FLUSH_TIMEOUT) {
        Ok(()) => out.confirmed = true,
        Err(HandleError::TimedOut) => {}
        Err(HandleError::Stopped | HandleError::WouldDeadlock) => out.stopped = true,
    }
    if let Some(m) = out.not_delivered_to_cluster.filter(|&m| m > 0) {
        tracing::warn!(emitted = out.emitted, not_delivered_to_cluster = m, "publish API: events not taken by the cluster adapter");
    }
    out
}

/// Compares a presented key with the configured one in constant time: both are hashed first,
/// so neither the contents nor the length of the configured key shows in the time taken. An
/// empty configured key matches nothing ([`super::AdminServer::start`] refuses one anyway).
pub fn key_matches(presented: &str, expected: &str) -> bool {
    use sha1::{Digest, Sha1};
    use subtle::ConstantTimeEq;
    let (a, b) = (Sha1::digest(presented.as_bytes()), Sha1::digest(expected.as_bytes()));
    !expected.is_empty() && bool::from(a.as_slice().ct_eq(b.as_slice()))
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
        assert!(!key_matches("", ""), "an empty key matches nothing");
    }

    #[test]
    fn answers_say_what_reached_whom() {
        let p = |emitted, ndc, confirmed, stopped| Published { emitted, not_delivered_to_cluster: ndc, confirmed, stopped }.answer();
        assert_eq!(p(3, None, true, false), (200, r#"{"emitted":3}"#.to_string()));
        assert_eq!(p(3, Some(0), true, false), (200, r#"{"emitted":3,"not_delivered_to_cluster":0}"#.to_string()));
        let (status, body) = p(3, Some(2), true, false);
        assert_eq!(status, 207);
        assert!(body.starts_with(r#"{"emitted":3,"not_delivered_to_cluster":2,"error":"2 of the 3 events were not taken by the cluster adapter"#), "{body}");
        let (status, body) = p(3, None, false, false);
        assert_eq!(status, 202);
        assert!(body.starts_with(r#"{"emitted":3,"confirmed":false,"error":"every worker was handed the 3 events"#), "{body}");
        assert!(body.contains("do not resend"), "{body}");
        let (status, body) = p(3, Some(1), false, false);
        assert_eq!(status, 207, "not delivered to the cluster weighs more than unconfirmed");
        assert!(body.contains("\"confirmed\":false") && body.contains("1 of the 3") && body.contains("do not resend"), "{body}");
        assert_eq!(p(1, None, false, true), (503, r#"{"error":"the server has shut down","emitted":1}"#.to_string()));
    }
}
