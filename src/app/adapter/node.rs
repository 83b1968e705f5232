//! The wire format of Node's `@socket.io/redis-adapter` (8.x, the non-sharded adapter) and of
//! `@socket.io/redis-emitter`, as their sources write it:
//!
//! - A broadcast is published once, msgpack `[uid, packet, opts]`, on `<key>#<nsp>#`, or on
//!   `<key>#<nsp>#<room>#` when it names exactly one room (`key` is `socket.io` by default).
//!   `packet` is the socket.io-parser packet object `{type: 2, data: [event, ...args], nsp}`
//!   with binary values as msgpack `bin`; `opts` is `{rooms: [...], except: [...], flags:
//!   {volatile?, compress?, ...}}`. Node nodes subscribe to `<key>#<nsp>#*`; shardcast to
//!   `<key>#*` (every namespace). A node drops its own messages by `uid` (the emitter's uid is
//!   `"emitter"`).
//! - Requests between nodes go on `<key>-request#<nsp>#` and their answers on
//!   `<key>-response#<nsp>#` (JSON, or msgpack for broadcasts with acks): see
//!   [`request_type`].
//!
//! Must never: trust a message (every field is checked; a malformed one is dropped), or be
//! called on a worker thread (it decodes and re-encodes packets).

use bytes::Bytes;
use rmpv::Value as Mp;
use serde_json::{Map, Number, Value};

use super::{except_all, EventParts};
use crate::app::worker::{Broadcast, Selector};
use crate::engine::SendFlags;
use crate::proto::sio::encode;
use crate::proto::sio::packet::{placeholder, placeholder_num};

/// Why a message from Redis was dropped.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FormatError {
    /// Not valid msgpack / JSON.
    #[error("not a valid message: {0}")]
    Decode(String),
    /// Valid, but not shaped as the format says.
    #[error("unexpected message shape: {0}")]
    Shape(&'static str),
}

/// JSON arguments (placeholders standing for `attachments`) as msgpack, binaries in place.
pub fn json_to_mp(v: &Value, attachments: &[Bytes]) -> Mp {
    if let Some(n) = placeholder_num(v) {
        if let Some(b) = attachments.get(n as usize) {
            return Mp::Binary(b.to_vec());
        }
    }
    match v {
        Value::Null => Mp::Nil,
        Value::Bool(b) => Mp::Boolean(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Mp::from(u)
            } else if let Some(i) = n.as_i64() {
                Mp::from(i)
            } else {
                Mp::F64(n.as_f64().unwrap_or(0.0))
            }
        }
        Value::String(s) => Mp::from(s.as_str()),
        Value::Array(a) => Mp::Array(a.iter().map(|x| json_to_mp(x, attachments)).collect()),
        Value::Object(o) => Mp::Map(o.iter().map(|(k, x)| (Mp::from(k.as_str()), json_to_mp(x, attachments))).collect()),
    }
}

/// msgpack as JSON: each `bin` becomes a placeholder and is appended to `attachments`.
pub fn mp_to_json(v: Mp, attachments: &mut Vec<Bytes>) -> Value {
    match v {
        Mp::Nil | Mp::Ext(..) => Value::Null,
        Mp::Boolean(b) => Value::Bool(b),
        Mp::Integer(i) => i.as_u64().map(Number::from).or_else(|| i.as_i64().map(Number::from)).map_or(Value::Null, Value::Number),
        Mp::F32(f) => Number::from_f64(f as f64).map_or(Value::Null, Value::Number),
        Mp::F64(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Mp::String(s) => Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Mp::Binary(b) => {
            attachments.push(Bytes::from(b));
            placeholder(attachments.len() - 1)
        }
        Mp::Array(a) => Value::Array(a.into_iter().map(|x| mp_to_json(x, attachments)).collect()),
        Mp::Map(m) => {
            let mut o = Map::new();
            for (k, x) in m {
                let key = match k {
                    Mp::String(s) => s.into_str().unwrap_or_default(),
                    other => other.to_string(),
                };
                o.insert(key, mp_to_json(x, attachments));
            }
            Value::Object(o)
        }
    }
}

/// A map's value under a string key.
pub fn get<'a>(m: &'a Mp, key: &str) -> Option<&'a Mp> {
    m.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}

/// A msgpack array of strings (numbers are written as Node writes room names: decimal).
pub fn strings(v: Option<&Mp>) -> Vec<String> {
    let Some(a) = v.and_then(Mp::as_array) else { return Vec::new() };
    a.iter()
        .filter_map(|x| match x {
            Mp::String(s) => s.as_str().map(str::to_string),
            Mp::Integer(i) => Some(i.to_string()),
            _ => None,
        })
        .collect()
}

fn str_array(v: &[String]) -> Mp {
    Mp::Array(v.iter().map(|s| Mp::from(s.as_str())).collect())
}

/// The channel a broadcast to `sel` is published on.
pub fn channel(prefix: &str, sel: &Selector) -> String {
    match sel.rooms.as_slice() {
        [room] => format!("{prefix}#{}#{room}#", sel.nsp),
        _ => format!("{prefix}#{}#", sel.nsp),
    }
}

/// The pattern that receives every namespace's broadcasts.
pub fn pattern(prefix: &str) -> String {
    format!("{prefix}#*")
}

/// `[uid, packet, opts]` for a broadcast of `ev`.
pub fn encode_broadcast(uid: &str, b: &Broadcast, ev: &EventParts) -> Vec<u8> {
    let mut data = Vec::with_capacity(ev.args.len() + 1);
    data.push(Mp::from(ev.event.as_str()));
    data.extend(ev.args.iter().map(|a| json_to_mp(a, &ev.attachments)));
    let packet = Mp::Map(vec![(Mp::from("type"), Mp::from(2)), (Mp::from("data"), Mp::Array(data)), (Mp::from("nsp"), Mp::from(b.sel.nsp.as_str()))]);
    let mut flags = Vec::new();
    if b.flags.volatile {
        flags.push((Mp::from("volatile"), Mp::Boolean(true)));
    }
    if !b.flags.compress {
        flags.push((Mp::from("compress"), Mp::Boolean(false)));
    }
    let opts =
        Mp::Map(vec![(Mp::from("rooms"), str_array(&b.sel.rooms)), (Mp::from("except"), str_array(&except_all(&b.sel))), (Mp::from("flags"), Mp::Map(flags))]);
    let msg = Mp::Array(vec![Mp::from(uid), packet, opts]);
    let mut out = Vec::with_capacity(64 + ev.attachments.iter().map(Bytes::len).sum::<usize>());
    rmpv::encode::write_value(&mut out, &msg).expect("writing msgpack into memory cannot fail");
    out
}

/// Decodes a broadcast message; `Ok(None)` for this node's own (`uid`) or a packet that is not
/// an event.
pub fn decode_broadcast(uid: &str, payload: &[u8]) -> Result<Option<Broadcast>, FormatError> {
    Ok(decode_broadcast_from(payload)?.and_then(|(from, b)| (from != uid).then_some(b)))
}

/// Decodes a broadcast message with the uid of its sender; `Ok(None)` for a packet that is not
/// an event.
pub fn decode_broadcast_from(payload: &[u8]) -> Result<Option<(String, Broadcast)>, FormatError> {
    let msg = rmpv::decode::read_value(&mut &payload[..]).map_err(|e| FormatError::Decode(e.to_string()))?;
    let Mp::Array(mut parts) = msg else { return Err(FormatError::Shape("not an array")) };
    if parts.len() < 3 {
        return Err(FormatError::Shape("fewer than 3 elements"));
    }
    let opts = parts.pop().unwrap_or(Mp::Nil);
    let packet = parts.pop().unwrap_or(Mp::Nil);
    let from = match &parts[0] {
        Mp::String(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => other.to_string(),
    };
    match packet_to_broadcast(packet, &opts) {
        Ok(b) => Ok(Some((from, b))),
        Err(FormatError::Shape("not an event")) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A socket.io-parser packet object and adapter opts as a broadcast.
pub fn packet_to_broadcast(packet: Mp, opts: &Mp) -> Result<Broadcast, FormatError> {
    let nsp = get(&packet, "nsp").and_then(Mp::as_str).unwrap_or("/").to_string();
    match get(&packet, "type").and_then(Mp::as_u64) {
        Some(2) | Some(5) => {}
        Some(_) => return Err(FormatError::Shape("not an event")),
        None => return Err(FormatError::Shape("packet without a type")),
    }
    let data = match packet {
        Mp::Map(m) => m.into_iter().find(|(k, _)| k.as_str() == Some("data")).map(|(_, v)| v),
        _ => None,
    };
    let Some(Mp::Array(data)) = data else { return Err(FormatError::Shape("event data is not an array")) };
    let mut attachments = Vec::new();
    let mut all: Vec<Value> = data.into_iter().map(|x| mp_to_json(x, &mut attachments)).collect();
    if all.is_empty() {
        return Err(FormatError::Shape("event without a name"));
    }
    let event = match all.remove(0) {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let flags_v = get(opts, "flags");
    let flag = |name: &str| flags_v.and_then(|f| get(f, name)).and_then(Mp::as_bool);
    let flags = SendFlags { volatile: flag("volatile").unwrap_or(false), compress: flag("compress").unwrap_or(true) };
    let sel = Selector { nsp: nsp.clone(), rooms: strings(get(opts, "rooms")), except_rooms: strings(get(opts, "except")), except_ids: Vec::new() };
    let packet = encode::event(&nsp, &event, &all, None, attachments);
    Ok(Broadcast { sel, packet, flags, ack: None, offset: None })
}

/// Request types of the Node adapter (`RequestType` in its source).
pub mod request_type {
    /// `allRooms` / `sockets` (ids in rooms).
    pub const SOCKETS: u64 = 0;
    /// Every room of every node.
    pub const ALL_ROOMS: u64 = 1;
    /// `socketsJoin`.
    pub const REMOTE_JOIN: u64 = 2;
    /// `socketsLeave`.
    pub const REMOTE_LEAVE: u64 = 3;
    /// `disconnectSockets`.
    pub const REMOTE_DISCONNECT: u64 = 4;
    /// `fetchSockets`.
    pub const REMOTE_FETCH: u64 = 5;
    /// `serverSideEmit`.
    pub const SERVER_SIDE_EMIT: u64 = 6;
    /// A broadcast whose recipients ack.
    pub const BROADCAST: u64 = 7;
    /// A node's recipient count for an acked broadcast.
    pub const BROADCAST_CLIENT_COUNT: u64 = 8;
    /// One recipient's ack of a broadcast.
    pub const BROADCAST_ACK: u64 = 9;
}

/// The request channel of namespace `nsp`.
pub fn request_channel(prefix: &str, nsp: &str) -> String {
    format!("{prefix}-request#{nsp}#")
}

/// A request body: JSON when it starts with `{`, msgpack otherwise (as the adapter reads it),
/// as JSON.
pub fn decode_body(payload: &[u8]) -> Result<(Value, Vec<Bytes>), FormatError> {
    if payload.first() == Some(&b'{') {
        serde_json::from_slice(payload).map(|v| (v, Vec::new())).map_err(|e| FormatError::Decode(e.to_string()))
    } else {
        let v = rmpv::decode::read_value(&mut &payload[..]).map_err(|e| FormatError::Decode(e.to_string()))?;
        let mut atts = Vec::new();
        Ok((mp_to_json(v, &mut atts), atts))
    }
}

fn json_strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string).or_else(|| x.as_number().map(|n| n.to_string()))).collect())
        .unwrap_or_default()
}

/// The selector of a request's `opts` (`{rooms, except}`) in namespace `nsp`.
pub fn opts_selector(nsp: &str, opts: &Value) -> Selector {
    Selector { nsp: nsp.to_string(), rooms: json_strings(opts.get("rooms")), except_rooms: json_strings(opts.get("except")), except_ids: Vec::new() }
}

/// The namespace a request channel names (`<prefix>-request#<nsp>#`).
pub fn nsp_of_request_channel<'a>(prefix: &str, channel: &'a str) -> Option<&'a str> {
    channel.strip_prefix(prefix)?.strip_prefix("-request#")?.strip_suffix('#')
}

/// Decodes the fire-and-forget requests (`socketsJoin`, `socketsLeave`, `disconnectSockets`
/// with a selection, as nodes and the emitter send them) on `channel`; `Ok(None)` for this
/// node's own and for the request types handled elsewhere.
pub fn decode_request(uid: &str, prefix: &str, channel: &str, payload: &[u8]) -> Result<Option<super::Inbound>, FormatError> {
    use super::Inbound;
    let Some(nsp) = nsp_of_request_channel(prefix, channel) else { return Ok(None) };
    let (req, _) = decode_body(payload)?;
    if req.get("uid").and_then(Value::as_str) == Some(uid) {
        return Ok(None);
    }
    let Some(opts) = req.get("opts") else { return Ok(None) };
    let sel = opts_selector(nsp, opts);
    Ok(match req.get("type").and_then(Value::as_u64) {
        Some(request_type::REMOTE_JOIN) => Some(Inbound::Join(sel, json_strings(req.get("rooms")))),
        Some(request_type::REMOTE_LEAVE) => Some(Inbound::Leave(sel, json_strings(req.get("rooms")))),
        Some(request_type::REMOTE_DISCONNECT) => Some(Inbound::Disconnect(sel, req.get("close").and_then(Value::as_bool).unwrap_or(false))),
        _ => None,
    })
}

/// A fire-and-forget request for the other nodes, and its channel.
pub fn encode_request(uid: &str, prefix: &str, out: &super::Outbound) -> Option<(String, Vec<u8>)> {
    use super::Outbound;
    let (sel, body) = match out {
        Outbound::Join(sel, rooms) => (sel, serde_json::json!({ "uid": uid, "type": request_type::REMOTE_JOIN, "rooms": &**rooms })),
        Outbound::Leave(sel, rooms) => (sel, serde_json::json!({ "uid": uid, "type": request_type::REMOTE_LEAVE, "rooms": &**rooms })),
        Outbound::Disconnect(sel, close) => (sel, serde_json::json!({ "uid": uid, "type": request_type::REMOTE_DISCONNECT, "close": close })),
        Outbound::ServerSideEmit(nsp, data) => {
            let body = serde_json::json!({ "uid": uid, "type": request_type::SERVER_SIDE_EMIT, "data": data });
            return Some((request_channel(prefix, nsp), serde_json::to_vec(&body).expect("JSON into memory")));
        }
        Outbound::Broadcast(_) | Outbound::Ask(_) | Outbound::AckedBroadcast(..) => return None,
    };
    let mut body = body;
    body["opts"] = serde_json::json!({ "rooms": sel.rooms, "except": except_all(sel) });
    Some((request_channel(prefix, &sel.nsp), serde_json::to_vec(&body).expect("JSON into memory")))
}

/// The response channel of namespace `nsp` (every node answers there).
pub fn response_channel(prefix: &str, nsp: &str) -> String {
    format!("{prefix}-response#{nsp}#")
}

/// The namespace a response channel names (`<prefix>-response#<nsp>#`, or the specific
/// `<prefix>-response#<nsp>#<uid>#`).
pub fn nsp_of_response_channel<'a>(prefix: &str, uid: &str, channel: &'a str) -> Option<&'a str> {
    let rest = channel.strip_prefix(prefix)?.strip_prefix("-response#")?.strip_suffix('#')?;
    Some(rest.strip_suffix(&format!("#{uid}")).unwrap_or(rest))
}

/// The request for a [`super::Question`]: its channel and JSON body.
pub fn encode_question(uid: &str, prefix: &str, request_id: &str, kind: super::QuestionKind, sel: &Selector, data: &[Value]) -> (String, Vec<u8>) {
    use super::QuestionKind;
    let body = match kind {
        QuestionKind::Sockets => serde_json::json!({ "uid": uid, "requestId": request_id, "type": request_type::SOCKETS, "rooms": sel.rooms }),
        QuestionKind::Rooms => serde_json::json!({ "uid": uid, "requestId": request_id, "type": request_type::ALL_ROOMS }),
        QuestionKind::ServerSideEmit => serde_json::json!({ "uid": uid, "requestId": request_id, "type": request_type::SERVER_SIDE_EMIT, "data": data }),
        QuestionKind::Fetch => serde_json::json!({
            "uid": uid, "requestId": request_id, "type": request_type::REMOTE_FETCH,
            "opts": { "rooms": sel.rooms, "except": except_all(sel) },
        }),
    };
    (request_channel(prefix, &sel.nsp), serde_json::to_vec(&body).expect("JSON into memory"))
}

/// A question another node asks this one (`SOCKETS`, `ALL_ROOMS`, `REMOTE_FETCH`), from a
/// request body; `None` for other requests and this node's own.
pub fn decode_question(uid: &str, nsp: &str, req: &Value) -> Option<(String, super::QuestionKind, Selector)> {
    use super::QuestionKind;
    if req.get("uid").and_then(Value::as_str) == Some(uid) {
        return None;
    }
    let id = req.get("requestId").and_then(Value::as_str)?.to_string();
    let (kind, sel) = match req.get("type").and_then(Value::as_u64)? {
        request_type::SOCKETS => (QuestionKind::Sockets, Selector { nsp: nsp.to_string(), rooms: json_strings(req.get("rooms")), ..Default::default() }),
        request_type::ALL_ROOMS => (QuestionKind::Rooms, Selector { nsp: nsp.to_string(), ..Default::default() }),
        request_type::REMOTE_FETCH => (QuestionKind::Fetch, opts_selector(nsp, req.get("opts")?)),
        // Answered by the namespace's server-side handlers, not by the sockets.
        request_type::SERVER_SIDE_EMIT => return None,
        _ => return None,
    };
    Some((id, kind, sel))
}

/// A broadcast whose recipients ack (`BROADCAST`, a Node node's `emitWithAck()` to a
/// selection), from a request body decoded by [`decode_body`].
#[derive(Debug, Clone, PartialEq)]
pub struct AckedBroadcast {
    /// The request id the answers carry.
    pub request_id: String,
    /// Who gets it.
    pub sel: Selector,
    /// The event.
    pub event: EventParts,
    /// `flags.volatile`.
    pub volatile: bool,
    /// `flags.timeout`, in milliseconds (5 s when absent).
    pub timeout_ms: u64,
}

/// The `BROADCAST` request (msgpack) for an acked broadcast of this node.
pub fn encode_acked_broadcast(uid: &str, request_id: &str, b: &Broadcast, ev: &EventParts, timeout_ms: u64) -> Vec<u8> {
    let mut data = Vec::with_capacity(ev.args.len() + 1);
    data.push(Mp::from(ev.event.as_str()));
    data.extend(ev.args.iter().map(|a| json_to_mp(a, &ev.attachments)));
    let packet = Mp::Map(vec![(Mp::from("type"), Mp::from(2)), (Mp::from("data"), Mp::Array(data)), (Mp::from("nsp"), Mp::from(b.sel.nsp.as_str()))]);
    let mut flags = vec![(Mp::from("timeout"), Mp::from(timeout_ms))];
    if b.flags.volatile {
        flags.push((Mp::from("volatile"), Mp::Boolean(true)));
    }
    let opts =
        Mp::Map(vec![(Mp::from("rooms"), str_array(&b.sel.rooms)), (Mp::from("except"), str_array(&except_all(&b.sel))), (Mp::from("flags"), Mp::Map(flags))]);
    let msg = Mp::Map(vec![
        (Mp::from("uid"), Mp::from(uid)),
        (Mp::from("requestId"), Mp::from(request_id)),
        (Mp::from("type"), Mp::from(request_type::BROADCAST)),
        (Mp::from("packet"), packet),
        (Mp::from("opts"), opts),
    ]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &msg).expect("writing msgpack into memory cannot fail");
    out
}

/// Decodes a `BROADCAST` request; `None` for other requests and this node's own.
pub fn decode_acked_broadcast(uid: &str, nsp: &str, req: &Value, attachments: &[Bytes]) -> Option<AckedBroadcast> {
    if req.get("uid").and_then(Value::as_str) == Some(uid) || req.get("type").and_then(Value::as_u64) != Some(request_type::BROADCAST) {
        return None;
    }
    let request_id = req.get("requestId")?.as_str()?.to_string();
    let packet = req.get("packet")?;
    let mut data = packet.get("data")?.as_array()?.clone();
    if data.is_empty() {
        return None;
    }
    let event = match data.remove(0) {
        Value::String(s) => s,
        other => other.to_string(),
    };
    let opts = req.get("opts")?;
    let flags = opts.get("flags");
    Some(AckedBroadcast {
        request_id,
        sel: opts_selector(nsp, opts),
        event: EventParts { event, args: data, attachments: attachments.to_vec() },
        volatile: flags.and_then(|f| f.get("volatile")).and_then(Value::as_bool).unwrap_or(false),
        timeout_ms: flags.and_then(|f| f.get("timeout")).and_then(Value::as_u64).unwrap_or(5000),
    })
}

/// The answers to an acked broadcast: `BROADCAST_CLIENT_COUNT` (JSON), then one
/// `BROADCAST_ACK` (msgpack, the first argument of each ack, binaries in place) per answer.
pub fn encode_ack_answers(request_id: &str, answers: &[(Vec<Value>, Vec<Bytes>)]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(answers.len() + 1);
    let count = serde_json::json!({ "type": request_type::BROADCAST_CLIENT_COUNT, "requestId": request_id, "clientCount": answers.len() });
    out.push(serde_json::to_vec(&count).expect("JSON into memory"));
    for (args, atts) in answers {
        let arg = args.first().map_or(Mp::Nil, |a| json_to_mp(a, atts));
        let msg =
            Mp::Map(vec![(Mp::from("type"), Mp::from(request_type::BROADCAST_ACK)), (Mp::from("requestId"), Mp::from(request_id)), (Mp::from("packet"), arg)]);
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, &msg).expect("writing msgpack into memory cannot fail");
        out.push(buf);
    }
    out
}

/// A server-side event from another node: `[event, args...]` and, when it asks for answers,
/// its request id; `None` for other requests and this node's own.
pub fn decode_server_side_emit(uid: &str, req: &Value) -> Option<(Vec<Value>, Option<String>)> {
    if req.get("uid").and_then(Value::as_str) == Some(uid) || req.get("type").and_then(Value::as_u64) != Some(request_type::SERVER_SIDE_EMIT) {
        return None;
    }
    let data = req.get("data")?.as_array()?.clone();
    Some((data, req.get("requestId").and_then(Value::as_str).map(str::to_string)))
}

/// A node's answer to a server-side event (one argument, as the Node adapter sends it).
pub fn encode_server_side_answer(request_id: &str, answer: &Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "type": request_type::SERVER_SIDE_EMIT, "requestId": request_id, "data": answer })).expect("JSON into memory")
}

/// The answer to question `request_id`: `items` under `sockets` (ids or socket objects) or
/// `rooms`.
pub fn encode_answer(request_id: &str, kind: super::QuestionKind, items: Vec<Value>) -> Vec<u8> {
    let key = if kind == super::QuestionKind::Rooms { "rooms" } else { "sockets" };
    serde_json::to_vec(&serde_json::json!({ "requestId": request_id, key: items })).expect("JSON into memory")
}

/// A response: its request id and the items it carries (`sockets` or `rooms`; none for
/// other responses).
pub fn decode_answer(payload: &[u8]) -> Option<(String, Vec<Value>)> {
    let (v, _) = decode_body(payload).ok()?;
    let id = v.get("requestId")?.as_str()?.to_string();
    let items = match v.get("type").and_then(Value::as_u64) {
        Some(request_type::SERVER_SIDE_EMIT) => vec![v.get("data").cloned().unwrap_or(Value::Null)],
        _ => v.get("sockets").or_else(|| v.get("rooms")).and_then(Value::as_array).cloned().unwrap_or_default(),
    };
    Some((id, items))
}

/// A socket as the Node adapter's `REMOTE_FETCH` answer describes it: `{id, handshake, rooms,
/// data}`, the handshake as socket.io's (`headers`, `query` as an object, `auth`, `issued`,
/// `time`, `address`, `xdomain`, `secure`, `url`).
pub fn socket_json(s: &crate::app::handle::SocketInfo) -> Value {
    let h = &s.handshake;
    let headers: serde_json::Map<String, Value> = h.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.clone()))).collect();
    let query: serde_json::Map<String, Value> =
        form_urlencoded::parse(h.query.trim_start_matches('?').as_bytes()).map(|(k, v)| (k.into_owned(), Value::String(v.into_owned()))).collect();
    serde_json::json!({
        "id": s.id,
        "handshake": {
            "headers": headers,
            "time": "",
            "address": h.address.map(|a| a.to_string()).unwrap_or_default(),
            "xdomain": h.origin.is_some(),
            "secure": false,
            "issued": h.issued,
            "url": "",
            "query": query,
            "auth": h.auth.clone().unwrap_or_else(|| serde_json::json!({})),
        },
        "rooms": s.rooms,
        "data": s.data.clone().unwrap_or(Value::Null),
    })
}

/// A socket of another node, from its `REMOTE_FETCH` description; `None` when it has no id.
pub fn socket_info(nsp: &str, v: &Value, node: Option<&str>) -> Option<crate::app::handle::SocketInfo> {
    use crate::app::namespace::Handshake;
    let id = v.get("id")?.as_str()?.to_string();
    let hs = v.get("handshake").cloned().unwrap_or(Value::Null);
    let headers: Vec<(String, String)> = hs
        .get("headers")
        .and_then(Value::as_object)
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_string))).collect())
        .unwrap_or_default();
    let query = hs
        .get("query")
        .and_then(Value::as_object)
        .map(|o| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in o {
                q.append_pair(k, &v.as_str().map_or_else(|| v.to_string(), str::to_string));
            }
            q.finish()
        })
        .unwrap_or_default();
    let origin = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("origin")).map(|(_, v)| std::sync::Arc::from(v.as_str()));
    let mut rooms = json_strings(v.get("rooms"));
    rooms.sort_unstable();
    Some(crate::app::handle::SocketInfo {
        id,
        nsp: nsp.to_string(),
        rooms,
        handshake: Handshake {
            nsp: nsp.to_string(),
            auth: hs.get("auth").cloned(),
            query: std::sync::Arc::from(query.as_str()),
            origin,
            headers: headers.into(),
            issued: hs.get("issued").and_then(Value::as_u64).unwrap_or(0),
            address: hs.get("address").and_then(Value::as_str).and_then(|a| a.parse().ok()),
            peer: None,
        },
        data: v.get("data").cloned().filter(|d| !d.is_null()),
        worker: 0,
        node: node.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::adapter::event_of;
    use std::sync::Arc;

    fn bcast(sel: Selector, args: &[Value], atts: Vec<Bytes>, flags: SendFlags) -> Broadcast {
        Broadcast { packet: encode::event(&sel.nsp, "ev", args, None, atts), sel, flags, ack: None, offset: None }
    }

    #[test]
    fn channels_follow_the_node_adapter() {
        let mut sel = Selector { nsp: "/".into(), ..Default::default() };
        assert_eq!(channel("socket.io", &sel), "socket.io#/#");
        sel.rooms.push("r1".into());
        assert_eq!(channel("socket.io", &sel), "socket.io#/#r1#");
        sel.rooms.push("r2".into());
        assert_eq!(channel("socket.io", &sel), "socket.io#/#");
        assert_eq!(pattern("socket.io"), "socket.io#*");
    }

    /// The bytes `notepack.io` writes for the emitter's
    /// `emitter.of("/custom").to("r").except("x").emit("hello", 1, "two", Buffer.from([1,2]))`
    /// (written out by hand from notepack's encoder: fixarray, fixstr, fixmap, bin8).
    #[test]
    fn decodes_what_the_node_emitter_publishes() {
        let mut b = vec![0x93, 0xa7];
        b.extend_from_slice(b"emitter");
        b.push(0x83);
        b.extend_from_slice(&[0xa4, b't', b'y', b'p', b'e', 0x02]);
        b.extend_from_slice(&[0xa4, b'd', b'a', b't', b'a', 0x94, 0xa5]);
        b.extend_from_slice(b"hello");
        b.extend_from_slice(&[0x01, 0xa3, b't', b'w', b'o', 0xc4, 0x02, 0x01, 0x02]);
        b.extend_from_slice(&[0xa3, b'n', b's', b'p', 0xa7]);
        b.extend_from_slice(b"/custom");
        b.push(0x83);
        b.extend_from_slice(&[0xa5, b'r', b'o', b'o', b'm', b's', 0x91, 0xa1, b'r']);
        b.extend_from_slice(&[0xa5, b'f', b'l', b'a', b'g', b's', 0x80]);
        b.extend_from_slice(&[0xa6, b'e', b'x', b'c', b'e', b'p', b't', 0x91, 0xa1, b'x']);
        let got = decode_broadcast("me", &b).unwrap().unwrap();
        assert_eq!(got.sel, Selector { nsp: "/custom".into(), rooms: vec!["r".into()], except_rooms: vec!["x".into()], except_ids: vec![] });
        assert_eq!(&got.packet.packet_text()[..], br#"51-/custom,["hello",1,"two",{"_placeholder":true,"num":0}]"#);
        assert_eq!(got.packet.attachments.len(), 1);
        assert!(!got.flags.volatile && got.flags.compress);
        assert!(decode_broadcast("emitter", &b).unwrap().is_none(), "a node drops its own messages");
    }

    #[test]
    fn a_broadcast_survives_the_round_trip() {
        let sel = Selector { nsp: "/".into(), rooms: vec!["a".into(), "b".into()], except_rooms: vec!["c".into()], except_ids: vec!["sid1".into()] };
        let args = [serde_json::json!({"k": [1, -2, 1.5, null, true]}), placeholder(0)];
        let b = bcast(sel, &args, vec![Bytes::from_static(b"\xff\x00")], SendFlags { volatile: true, compress: false });
        let ev = event_of(&b).unwrap();
        let wire = encode_broadcast("node1", &b, &ev);
        assert!(decode_broadcast("node1", &wire).unwrap().is_none());
        let back = decode_broadcast("node2", &wire).unwrap().unwrap();
        assert_eq!(back.sel.rooms, vec!["a", "b"]);
        assert_eq!(back.sel.except_rooms, vec!["c", "sid1"]);
        assert_eq!(back.packet.packet_text(), b.packet.packet_text());
        assert_eq!(back.packet.attachments, b.packet.attachments);
        assert!(back.flags.volatile && !back.flags.compress);
    }

    #[test]
    fn emitter_requests_become_room_and_disconnect_mail() {
        use crate::app::adapter::Inbound;
        // What `emitter.of("/custom").in("r").socketsJoin(["a", "b"])` publishes.
        let body = br#"{"type":2,"opts":{"rooms":["r"],"except":[]},"rooms":["a","b"]}"#;
        match decode_request("me", "socket.io", "socket.io-request#/custom#", body).unwrap() {
            Some(Inbound::Join(sel, rooms)) => {
                assert_eq!(sel.nsp, "/custom");
                assert_eq!(sel.rooms, vec!["r"]);
                assert_eq!(rooms, vec!["a", "b"]);
            }
            other => panic!("{other:?}"),
        }
        let body = br#"{"type":4,"opts":{"rooms":[],"except":["x"]},"close":true}"#;
        assert!(
            matches!(decode_request("me", "socket.io", "socket.io-request#/#", body).unwrap(), Some(Inbound::Disconnect(s, true)) if s.except_rooms == ["x"])
        );
        let own = br#"{"uid":"me","type":3,"opts":{"rooms":[],"except":[]},"rooms":["a"]}"#;
        assert!(decode_request("me", "socket.io", "socket.io-request#/#", own).unwrap().is_none());
        let sel = Arc::new(Selector { nsp: "/".into(), rooms: vec!["r".into()], ..Default::default() });
        let (ch, body) = encode_request("me", "socket.io", &crate::app::adapter::Outbound::Leave(sel, Arc::new(vec!["q".into()]))).unwrap();
        assert_eq!(ch, "socket.io-request#/#");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!({"uid": "me", "type": 3, "rooms": ["q"], "opts": {"rooms": ["r"], "except": []}}));
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        assert!(decode_broadcast("me", b"\xc1").is_err());
        assert!(decode_broadcast("me", b"\x91\x01").is_err());
        assert!(decode_broadcast("me", b"\x93\xa1x\x80\x80").is_err());
        // A non-event packet (a CONNECT) is ignored.
        let mut m = vec![0x93, 0xa1, b'x', 0x81, 0xa4, b't', b'y', b'p', b'e', 0x00, 0x80];
        assert!(decode_broadcast("me", &m).unwrap().is_none());
        m.truncate(3);
        assert!(decode_broadcast("me", &m).is_err());
    }
}
