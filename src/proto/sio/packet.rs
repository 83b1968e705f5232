//! Socket.IO v5 packets (socket.io-protocol v5): header and JSON data.
//!
//! Wire form: `<type>[<attachments>-][<nsp>,][<ack id>][<JSON data>]`.
//!
//! Who sends what: `Connect` client→server (optional auth object) and server→client (`{"sid"}`);
//! `Disconnect` either way; `Event` either way (`[name, ...args]`, ack id when an answer is
//! wanted); `Ack` either way (`[...args]` with the id it answers); `ConnectError` server→client
//! (`{"message"}`); `BinaryEvent`/`BinaryAck` as Event/Ack, followed by N binary attachments.
//!
//! Owns: decoding with `simd-json` in place in the receive buffer, within [`Limits`] (nesting
//! depth is checked by an iterative scan *before* any recursive parsing), and the validity
//! rules the reference parser applies per packet type.
//!
//! Must never: know about sessions, namespaces' existence, or I/O.

use bytes::Bytes;
use serde_json::Value;

use super::error::SioError;

/// Packet types of Socket.IO v5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Connect = 0,
    Disconnect = 1,
    Event = 2,
    Ack = 3,
    ConnectError = 4,
    BinaryEvent = 5,
    BinaryAck = 6,
}

impl PacketType {
    pub fn from_byte(b: u8) -> Option<PacketType> {
        Some(match b {
            b'0' => PacketType::Connect,
            b'1' => PacketType::Disconnect,
            b'2' => PacketType::Event,
            b'3' => PacketType::Ack,
            b'4' => PacketType::ConnectError,
            b'5' => PacketType::BinaryEvent,
            b'6' => PacketType::BinaryAck,
            _ => return None,
        })
    }

    pub fn is_binary(self) -> bool {
        matches!(self, PacketType::BinaryEvent | PacketType::BinaryAck)
    }
}

/// Decoding limits. Each breach is a typed [`SioError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest JSON nesting accepted (arrays and objects).
    pub max_depth: usize,
    /// Most binary attachments one packet may declare (the reference parser's default is 10).
    pub max_attachments: usize,
    /// Largest packet text accepted, in bytes.
    pub max_packet_size: usize,
    /// Most digits an ack id may have (u64 has at most 20).
    pub max_ack_id_digits: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 64, max_attachments: 10, max_packet_size: 1_000_000, max_ack_id_digits: 20 }
    }
}

/// A decoded packet. For binary packets, `attachments` is filled by the
/// [`super::binary::BinaryAssembler`]; the JSON keeps its `{"_placeholder":true,"num":N}`
/// objects, each of which refers to `attachments[N]` (see [`Packet::binary`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub kind: PacketType,
    pub nsp: String,
    pub id: Option<u64>,
    pub data: Option<Value>,
    /// Attachment count declared in the header (binary types only).
    pub declared_attachments: usize,
    pub attachments: Vec<Bytes>,
}

impl Packet {
    /// The attachment a placeholder value stands for, if `v` is a placeholder.
    pub fn binary(&self, v: &Value) -> Option<&Bytes> {
        placeholder_num(v).and_then(|n| self.attachments.get(n as usize))
    }

    /// The event name and arguments of an EVENT / BINARY_EVENT (`None` for other packets).
    pub fn event(&self) -> Option<(&str, &[Value])> {
        match (&self.kind, &self.data) {
            (PacketType::Event | PacketType::BinaryEvent, Some(Value::Array(a))) => a.first().and_then(Value::as_str).map(|name| (name, &a[1..])),
            _ => None,
        }
    }
}

/// If `v` is `{"_placeholder":true,"num":N}`, returns N.
pub fn placeholder_num(v: &Value) -> Option<u64> {
    let o = v.as_object()?;
    if o.len() == 2 && o.get("_placeholder")? == &Value::Bool(true) {
        o.get("num")?.as_u64()
    } else {
        None
    }
}

/// A placeholder object for attachment `num`.
pub fn placeholder(num: usize) -> Value {
    serde_json::json!({ "_placeholder": true, "num": num })
}

/// Event names reserved by the reference implementation; an EVENT may not use them.
pub const RESERVED_EVENTS: [&str; 6] = ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];

/// Whether JSON `bytes` nest deeper than `max`. One iterative pass; strings are skipped so
/// brackets inside them do not count.
pub fn nesting_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A reusable decoder: holds simd-json's scratch buffers so decoding does not allocate them
/// per packet. One per worker.
pub struct Decoder {
    limits: Limits,
    buffers: simd_json::Buffers,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").field("limits", &self.limits).finish()
    }
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder { limits, buffers: simd_json::Buffers::default() }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Decodes one packet from the text of an Engine.IO message, parsing its JSON in place
    /// (simd-json rewrites `buf`).
    pub fn decode(&mut self, buf: &mut [u8]) -> Result<Packet, SioError> {
        let lim = self.limits;
        if buf.len() > lim.max_packet_size {
            return Err(SioError::TooLarge { size: buf.len(), max: lim.max_packet_size });
        }
        let first = *buf.first().ok_or(SioError::Empty)?;
        let kind = PacketType::from_byte(first).ok_or(SioError::UnknownType(first as char))?;
        let mut i = 1;
        let mut declared_attachments = 0;
        if kind.is_binary() {
            let start = i;
            while i < buf.len() && buf[i].is_ascii_digit() {
                i += 1;
            }
            if i == start || i >= buf.len() || buf[i] != b'-' || i - start > 20 {
                return Err(SioError::IllegalAttachments);
            }
            let n: u64 = std::str::from_utf8(&buf[start..i]).ok().and_then(|s| s.parse().ok()).ok_or(SioError::IllegalAttachments)?;
            if n < 1 {
                return Err(SioError::IllegalAttachments);
            }
            if n > lim.max_attachments as u64 {
                return Err(SioError::TooManyAttachments { count: n, max: lim.max_attachments });
            }
            declared_attachments = n as usize;
            i += 1;
        }
        let nsp = if buf.get(i) == Some(&b'/') {
            let start = i;
            while i < buf.len() && buf[i] != b',' {
                i += 1;
            }
            let nsp = std::str::from_utf8(&buf[start..i]).map_err(|_| SioError::BadNamespace)?.to_owned();
            if i < buf.len() {
                i += 1; // the comma
            }
            nsp
        } else {
            String::from("/")
        };
        let id = if buf.get(i).is_some_and(u8::is_ascii_digit) {
            let start = i;
            while i < buf.len() && buf[i].is_ascii_digit() {
                i += 1;
            }
            if i - start > lim.max_ack_id_digits {
                return Err(SioError::AckIdTooLarge);
            }
            let digits = std::str::from_utf8(&buf[start..i]).expect("ASCII digits");
            Some(digits.parse::<u64>().map_err(|_| SioError::AckIdTooLarge)?)
        } else {
            None
        };
        let json = &mut buf[i..];
        let data = if json.is_empty() {
            None
        } else {
            if nesting_exceeds(json, lim.max_depth) {
                return Err(SioError::TooDeep { max: lim.max_depth });
            }
            let v: Value = simd_json::serde::from_slice_with_buffers(json, &mut self.buffers).map_err(|e| SioError::BadJson(e.to_string()))?;
            Some(v)
        };
        if !payload_valid(kind, data.as_ref()) {
            return Err(SioError::InvalidPayload);
        }
        Ok(Packet { kind, nsp, id, data, declared_attachments, attachments: Vec::new() })
    }
}

/// The reference parser's per-type data rules (stricter on one point: an EVENT or ACK must
/// carry its array).
fn payload_valid(kind: PacketType, data: Option<&Value>) -> bool {
    match kind {
        PacketType::Connect => matches!(data, None | Some(Value::Object(_))),
        PacketType::Disconnect => data.is_none(),
        PacketType::ConnectError => matches!(data, None | Some(Value::Object(_) | Value::String(_))),
        PacketType::Event | PacketType::BinaryEvent => match data {
            Some(Value::Array(a)) => match a.first() {
                Some(Value::Number(_)) => true,
                Some(Value::String(s)) => !RESERVED_EVENTS.contains(&s.as_str()),
                _ => false,
            },
            _ => false,
        },
        PacketType::Ack | PacketType::BinaryAck => matches!(data, Some(Value::Array(_))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dec(s: &str) -> Result<Packet, SioError> {
        Decoder::new(Limits::default()).decode(&mut s.as_bytes().to_vec())
    }

    fn p(kind: PacketType, nsp: &str, id: Option<u64>, data: Option<Value>, att: usize) -> Packet {
        Packet { kind, nsp: nsp.into(), id, data, declared_attachments: att, attachments: vec![] }
    }

    #[test]
    fn protocol_document_examples() {
        use PacketType::*;
        assert_eq!(dec("0").unwrap(), p(Connect, "/", None, None, 0));
        assert_eq!(dec("0/admin,{\"token\":\"123\"}").unwrap(), p(Connect, "/admin", None, Some(json!({"token":"123"})), 0));
        assert_eq!(dec("0/admin,").unwrap(), p(Connect, "/admin", None, None, 0));
        assert_eq!(dec("1/admin,").unwrap(), p(Disconnect, "/admin", None, None, 0));
        assert_eq!(dec("2[\"hello\",1]").unwrap(), p(Event, "/", None, Some(json!(["hello", 1])), 0));
        assert_eq!(dec("2/admin,456[\"project:delete\",123]").unwrap(), p(Event, "/admin", Some(456), Some(json!(["project:delete", 123])), 0));
        assert_eq!(dec("3/admin,456[]").unwrap(), p(Ack, "/admin", Some(456), Some(json!([])), 0));
        assert_eq!(dec("4/admin,{\"message\":\"Not authorized\"}").unwrap(), p(ConnectError, "/admin", None, Some(json!({"message":"Not authorized"})), 0));
        assert_eq!(
            dec("51-[\"hello\",{\"_placeholder\":true,\"num\":0}]").unwrap(),
            p(BinaryEvent, "/", None, Some(json!(["hello", {"_placeholder":true,"num":0}])), 1)
        );
        assert_eq!(
            dec("61-/admin,456[{\"_placeholder\":true,\"num\":0}]").unwrap(),
            p(BinaryAck, "/admin", Some(456), Some(json!([{"_placeholder":true,"num":0}])), 1)
        );
        assert_eq!(dec("2[123]").unwrap().event(), None);
    }

    #[test]
    fn rejections() {
        assert_eq!(dec(""), Err(SioError::Empty));
        assert_eq!(dec("7"), Err(SioError::UnknownType('7')));
        assert_eq!(dec("5-[\"a\"]"), Err(SioError::IllegalAttachments));
        assert_eq!(dec("50-[\"a\"]"), Err(SioError::IllegalAttachments));
        assert_eq!(dec("51[\"a\"]"), Err(SioError::IllegalAttachments));
        assert_eq!(dec("511-[\"a\"]"), Err(SioError::TooManyAttachments { count: 11, max: 10 }));
        assert_eq!(dec("218446744073709551616[\"a\"]"), Err(SioError::AckIdTooLarge));
        assert_eq!(dec("2999999999999999999999999[\"a\"]"), Err(SioError::AckIdTooLarge));
        assert_eq!(dec("218446744073709551615[\"a\"]").unwrap().id, Some(u64::MAX));
        assert!(matches!(dec("2[\"a\""), Err(SioError::BadJson(_))));
        assert!(matches!(dec("2abc"), Err(SioError::BadJson(_))));
        assert_eq!(dec("2[\"connect\"]"), Err(SioError::InvalidPayload));
        assert_eq!(dec("2{}"), Err(SioError::InvalidPayload));
        assert_eq!(dec("2[]"), Err(SioError::InvalidPayload));
        assert_eq!(dec("2"), Err(SioError::InvalidPayload));
        assert_eq!(dec("0[]"), Err(SioError::InvalidPayload));
        assert_eq!(dec("1{}"), Err(SioError::InvalidPayload));
        assert_eq!(dec("3{}"), Err(SioError::InvalidPayload));
        let deep = format!("2[\"a\",{}{}]", "[".repeat(100), "]".repeat(100));
        assert_eq!(dec(&deep), Err(SioError::TooDeep { max: 64 }));
        let big = format!("2[\"{}\"]", "a".repeat(1_000_000));
        assert!(matches!(dec(&big), Err(SioError::TooLarge { .. })));
    }

    #[test]
    fn depth_scan_ignores_brackets_in_strings() {
        assert!(!nesting_exceeds(br#"["[[[[[[", "\"[[[[["]"#, 2));
        assert!(nesting_exceeds(b"[[[", 2));
        assert!(!nesting_exceeds(b"[[]]", 2));
    }

    #[test]
    fn answers() {
        use crate::proto::sio::error::ProtocolAnswer;
        assert_eq!(SioError::InvalidNamespace.answer(), ProtocolAnswer::ConnectError("Invalid namespace"));
        assert_eq!(SioError::TooLarge { size: 2, max: 1 }.answer(), ProtocolAnswer::CloseSession { ws_close: 1009, http_status: 413 });
        assert_eq!(SioError::Empty.answer(), ProtocolAnswer::CloseSession { ws_close: 1008, http_status: 400 });
    }
}
