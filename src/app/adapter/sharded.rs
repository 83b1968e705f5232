//! The wire format of `@socket.io/redis-adapter`'s sharded adapter (`createShardedAdapter`,
//! 8.x, on Redis 7 sharded pub/sub: `SPUBLISH` / `SSUBSCRIBE`), as its source and
//! `socket.io-adapter`'s `ClusterAdapter` write it:
//!
//! - Channels (`key` is `socket.io` by default): every node subscribes to `<key>#<nsp>#` and to
//!   its own answer channel `<key>#<nsp>#<uid>#`; with `subscriptionMode` "dynamic" (the
//!   default) a node also subscribes to `<key>#<nsp>#<room>#` for each public room it has
//!   members in, and a broadcast to exactly one room that does not look like a socket id goes
//!   there ([`broadcast_channel`]); every other message goes on `<key>#<nsp>#`.
//! - Messages: `{uid, nsp, type, data}` ([`kind`]), as JSON, or as msgpack when `data` holds
//!   binary (a broadcast's binary arguments are msgpack `bin`). A broadcast is `data: {packet:
//!   {type: 2, data: [event, ...args]}, opts: {rooms, except, flags}}`, with a `requestId`
//!   when its recipients ack. Questions (`FETCH_SOCKETS`, `SERVER_SIDE_EMIT` with a
//!   `requestId`) are answered on the asker's own channel.
//! - A node drops its own messages by `uid`.
//!
//! Must never: trust a message (a malformed one is an error, dropped by the caller), or be
//! called on a worker thread.

use bytes::Bytes;
use rmpv::Value as Mp;
use serde_json::{json, Value};

use super::node::{self, json_to_mp, FormatError};
use super::{except_all, EventParts, Outbound};
use crate::app::worker::{Broadcast, Selector};

/// Message types (`MessageType` of `socket.io-adapter`'s cluster adapter).
pub mod kind {
    /// A broadcast (with a `requestId`: its recipients ack).
    pub const BROADCAST: u64 = 3;
    /// `socketsJoin`.
    pub const SOCKETS_JOIN: u64 = 4;
    /// `socketsLeave`.
    pub const SOCKETS_LEAVE: u64 = 5;
    /// `disconnectSockets`.
    pub const DISCONNECT_SOCKETS: u64 = 6;
    /// `fetchSockets`.
    pub const FETCH_SOCKETS: u64 = 7;
    /// The answer to `FETCH_SOCKETS`.
    pub const FETCH_SOCKETS_RESPONSE: u64 = 8;
    /// `serverSideEmit` (with a `requestId`: answered).
    pub const SERVER_SIDE_EMIT: u64 = 9;
    /// The answer to `SERVER_SIDE_EMIT`.
    pub const SERVER_SIDE_EMIT_RESPONSE: u64 = 10;
    /// A node's recipient count for an acked broadcast.
    pub const BROADCAST_CLIENT_COUNT: u64 = 11;
    /// One recipient's ack of a broadcast.
    pub const BROADCAST_ACK: u64 = 12;
}

/// The channel of namespace `nsp` every node subscribes to.
pub fn main_channel(prefix: &str, nsp: &str) -> String {
    format!("{prefix}#{nsp}#")
}

/// The channel of public room `room` (subscribed to by the nodes with members in it).
pub fn room_channel(prefix: &str, nsp: &str, room: &str) -> String {
    format!("{prefix}#{nsp}#{room}#")
}

/// The channel node `uid` hears its answers on.
pub fn answer_channel(prefix: &str, nsp: &str, uid: &str) -> String {
    format!("{prefix}#{nsp}#{uid}#")
}

/// Whether `room` is a socket's own room: Node's ids have 20 characters (the adapter's own
/// test), shardcast's 22. A broadcast to one of them goes on the main channel, which every
/// node hears.
pub fn looks_like_a_socket_id(room: &str) -> bool {
    room.len() == 20 || room.len() == 22
}

/// The channel a plain broadcast to `sel` is published on.
pub fn broadcast_channel(prefix: &str, sel: &Selector) -> String {
    match sel.rooms.as_slice() {
        [room] if !looks_like_a_socket_id(room) => room_channel(prefix, &sel.nsp, room),
        _ => main_channel(prefix, &sel.nsp),
    }
}

/// `{type, data, uid, nsp}` as the adapter encodes it: msgpack when `data` holds binary
/// (`attachments`, referred to by placeholders in `data`), JSON otherwise.
fn message(uid: &str, nsp: &str, kind: u64, data: Value, attachments: &[Bytes]) -> Vec<u8> {
    let msg = json!({ "type": kind, "data": data, "uid": uid, "nsp": nsp });
    if attachments.is_empty() {
        return serde_json::to_vec(&msg).expect("JSON into memory");
    }
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &json_to_mp(&msg, attachments)).expect("writing msgpack into memory cannot fail");
    out
}

fn packet(nsp: &str, ev: &EventParts) -> Value {
    let mut data = Vec::with_capacity(ev.args.len() + 1);
    data.push(Value::String(ev.event.clone()));
    data.extend(ev.args.iter().cloned());
    json!({ "type": 2, "data": data, "nsp": nsp })
}

fn opts(sel: &Selector, flags: Value) -> Value {
    json!({ "rooms": sel.rooms, "except": except_all(sel), "flags": flags })
}

/// A plain broadcast of `ev`, and its channel.
pub fn encode_broadcast(uid: &str, prefix: &str, b: &Broadcast, ev: &EventParts) -> (String, Vec<u8>) {
    let mut flags = serde_json::Map::new();
    if b.flags.volatile {
        flags.insert("volatile".into(), Value::Bool(true));
    }
    if !b.flags.compress {
        flags.insert("compress".into(), Value::Bool(false));
    }
    let data = json!({ "packet": packet(&b.sel.nsp, ev), "opts": opts(&b.sel, Value::Object(flags)) });
    (broadcast_channel(prefix, &b.sel), message(uid, &b.sel.nsp, kind::BROADCAST, data, &ev.attachments))
}

/// A broadcast whose recipients ack (always on the main channel: the asker counts every node).
pub fn encode_acked_broadcast(uid: &str, prefix: &str, request_id: &str, b: &Broadcast, ev: &EventParts, timeout_ms: u64) -> (String, Vec<u8>) {
    let mut flags = json!({ "timeout": timeout_ms });
    if b.flags.volatile {
        flags["volatile"] = Value::Bool(true);
    }
    let data = json!({ "packet": packet(&b.sel.nsp, ev), "requestId": request_id, "opts": opts(&b.sel, flags) });
    (main_channel(prefix, &b.sel.nsp), message(uid, &b.sel.nsp, kind::BROADCAST, data, &ev.attachments))
}

/// A fire-and-forget request (join, leave, disconnect, a server-side event without answers),
/// and its channel; `None` for what is not one.
pub fn encode_request(uid: &str, prefix: &str, out: &Outbound) -> Option<(String, Vec<u8>)> {
    let (nsp, kind, data) = match out {
        Outbound::Join(sel, rooms) => (&sel.nsp, kind::SOCKETS_JOIN, json!({ "opts": opts(sel, json!({})), "rooms": &**rooms })),
        Outbound::Leave(sel, rooms) => (&sel.nsp, kind::SOCKETS_LEAVE, json!({ "opts": opts(sel, json!({})), "rooms": &**rooms })),
        Outbound::Disconnect(sel, close) => (&sel.nsp, kind::DISCONNECT_SOCKETS, json!({ "opts": opts(sel, json!({})), "close": close })),
        Outbound::ServerSideEmit(nsp, data) => (nsp, kind::SERVER_SIDE_EMIT, json!({ "packet": data })),
        Outbound::Broadcast(_) | Outbound::Ask(_) | Outbound::AckedBroadcast(..) => return None,
    };
    Some((main_channel(prefix, nsp), message(uid, nsp, kind, data, &[])))
}

/// `FETCH_SOCKETS` for the sockets of `sel`.
pub fn encode_fetch(uid: &str, prefix: &str, request_id: &str, sel: &Selector) -> (String, Vec<u8>) {
    let data = json!({ "opts": opts(sel, json!({})), "requestId": request_id });
    (main_channel(prefix, &sel.nsp), message(uid, &sel.nsp, kind::FETCH_SOCKETS, data, &[]))
}

/// `SERVER_SIDE_EMIT` of `[event, args...]` asking every node for an answer.
pub fn encode_server_side_with_ack(uid: &str, prefix: &str, nsp: &str, request_id: &str, data: &[Value]) -> (String, Vec<u8>) {
    (main_channel(prefix, nsp), message(uid, nsp, kind::SERVER_SIDE_EMIT, json!({ "requestId": request_id, "packet": data }), &[]))
}

/// This node's answer to `FETCH_SOCKETS` (socket objects as [`node::socket_json`] makes them).
pub fn encode_fetch_response(uid: &str, nsp: &str, request_id: &str, sockets: Vec<Value>) -> Vec<u8> {
    message(uid, nsp, kind::FETCH_SOCKETS_RESPONSE, json!({ "requestId": request_id, "sockets": sockets }), &[])
}

/// This node's answer to a `SERVER_SIDE_EMIT` with a request id (one argument).
pub fn encode_server_side_response(uid: &str, nsp: &str, request_id: &str, answer: &Value) -> Vec<u8> {
    message(uid, nsp, kind::SERVER_SIDE_EMIT_RESPONSE, json!({ "requestId": request_id, "packet": answer }), &[])
}

/// This node's answers to an acked broadcast: its recipient count, then each ack's first
/// argument.
pub fn encode_ack_answers(uid: &str, nsp: &str, request_id: &str, answers: &[(Vec<Value>, Vec<Bytes>)]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(answers.len() + 1);
    out.push(message(uid, nsp, kind::BROADCAST_CLIENT_COUNT, json!({ "requestId": request_id, "clientCount": answers.len() }), &[]));
    for (args, atts) in answers {
        let arg = args.first().cloned().unwrap_or(Value::Null);
        out.push(message(uid, nsp, kind::BROADCAST_ACK, json!({ "requestId": request_id, "packet": arg }), atts));
    }
    out
}

/// A message from another node.
#[derive(Debug)]
pub enum Message {
    /// Deliver to the selected sockets.
    Broadcast(Broadcast),
    /// Deliver, and answer node `from` with the recipient count and each ack.
    AckedBroadcast {
        /// The asking node.
        from: String,
        /// The broadcast.
        b: node::AckedBroadcast,
    },
    /// The selected sockets join rooms.
    Join(Selector, Vec<String>),
    /// The selected sockets leave rooms.
    Leave(Selector, Vec<String>),
    /// The selected sockets are disconnected (their whole clients with `true`).
    Disconnect(Selector, bool),
    /// Node `from` asks for the selected sockets.
    Fetch {
        /// The asking node.
        from: String,
        /// Its request id.
        request_id: String,
        /// Which sockets.
        sel: Selector,
    },
    /// A server-side event `[event, args...]`; with a request id, node `from` waits for the
    /// answer.
    ServerSide {
        /// The sending node.
        from: String,
        /// The namespace.
        nsp: String,
        /// `[event, args...]`.
        data: Vec<Value>,
        /// Set when an answer is asked for.
        request_id: Option<String>,
    },
    /// An answer to one of this node's requests: its id, the message type, and its `data`.
    Answer {
        /// The request it answers.
        request_id: String,
        /// One of the `*_RESPONSE`, `BROADCAST_CLIENT_COUNT`, `BROADCAST_ACK` types.
        kind: u64,
        /// The message's `data`.
        data: Value,
        /// Binary values of `data`.
        attachments: Vec<Bytes>,
    },
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string).or_else(|| x.as_number().map(|n| n.to_string()))).collect())
        .unwrap_or_default()
}

/// Decodes one message; `Ok(None)` for this node's own (`uid`) and for types with nothing to
/// do here (heartbeats of other cluster adapters).
pub fn decode(uid: &str, payload: &[u8]) -> Result<Option<Message>, FormatError> {
    let (msg, attachments) = node::decode_body(payload)?;
    if !msg.is_object() {
        return Err(FormatError::Shape("not an object"));
    }
    let from = msg.get("uid").and_then(Value::as_str).unwrap_or_default().to_string();
    if from == uid {
        return Ok(None);
    }
    let nsp = msg.get("nsp").and_then(Value::as_str).unwrap_or("/").to_string();
    let kind = msg.get("type").and_then(Value::as_u64).ok_or(FormatError::Shape("a message without a type"))?;
    let data = msg.get("data").cloned().unwrap_or(Value::Null);
    let request_id = data.get("requestId").and_then(Value::as_str).map(str::to_string);
    let sel = || node::opts_selector(&nsp, data.get("opts").unwrap_or(&Value::Null));
    Ok(Some(match kind {
        kind::BROADCAST => {
            let Some(packet) = data.get("packet") else { return Err(FormatError::Shape("a broadcast without a packet")) };
            if let Some(request_id) = request_id {
                // The same shape as the classic adapter's request, less the envelope.
                let mut req = data.clone();
                req["type"] = json!(node::request_type::BROADCAST);
                req["requestId"] = json!(request_id);
                let b = node::decode_acked_broadcast("", &nsp, &req, &attachments).ok_or(FormatError::Shape("a malformed acked broadcast"))?;
                return Ok(Some(Message::AckedBroadcast { from, b }));
            }
            // Binary values back in place, then as the classic adapter's packet object (its
            // namespace is the message's).
            let mut packet = json_to_mp(packet, &attachments);
            set_nsp(&mut packet, &nsp);
            let opts = json_to_mp(data.get("opts").unwrap_or(&Value::Null), &[]);
            match node::packet_to_broadcast(packet, &opts) {
                Ok(b) => Message::Broadcast(b),
                Err(FormatError::Shape("not an event")) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        kind::SOCKETS_JOIN => Message::Join(sel(), strings(data.get("rooms"))),
        kind::SOCKETS_LEAVE => Message::Leave(sel(), strings(data.get("rooms"))),
        kind::DISCONNECT_SOCKETS => Message::Disconnect(sel(), data.get("close").and_then(Value::as_bool).unwrap_or(false)),
        kind::FETCH_SOCKETS => {
            let request_id = request_id.ok_or(FormatError::Shape("FETCH_SOCKETS without a request id"))?;
            Message::Fetch { from, request_id, sel: sel() }
        }
        kind::SERVER_SIDE_EMIT => {
            let Some(Value::Array(d)) = data.get("packet") else { return Err(FormatError::Shape("SERVER_SIDE_EMIT without a packet")) };
            Message::ServerSide { from, nsp, data: d.clone(), request_id }
        }
        kind::FETCH_SOCKETS_RESPONSE | kind::SERVER_SIDE_EMIT_RESPONSE | kind::BROADCAST_CLIENT_COUNT | kind::BROADCAST_ACK => {
            let request_id = request_id.ok_or(FormatError::Shape("an answer without a request id"))?;
            Message::Answer { request_id, kind, data, attachments }
        }
        _ => return Ok(None),
    }))
}

fn set_nsp(packet: &mut Mp, nsp: &str) {
    if let Mp::Map(m) = packet {
        match m.iter_mut().find(|(k, _)| k.as_str() == Some("nsp")) {
            Some((_, v)) => *v = Mp::from(nsp),
            None => m.push((Mp::from("nsp"), Mp::from(nsp))),
        }
    }
}

/// The items a `FETCH_SOCKETS` answer carries, for a question of `kind`: socket objects
/// (`Fetch`), their ids (`Sockets`), or the rooms they are in, less their own (`Rooms`).
pub fn answer_items(kind: super::QuestionKind, data: &Value) -> Vec<Value> {
    use super::QuestionKind;
    let sockets = data.get("sockets").and_then(Value::as_array).cloned().unwrap_or_default();
    match kind {
        QuestionKind::Fetch => sockets,
        QuestionKind::Sockets => sockets.iter().filter_map(|s| s.get("id").cloned()).collect(),
        QuestionKind::Rooms => {
            // Each room once, in the order first seen (a set: another node's answer may name
            // many sockets and rooms).
            let mut seen = std::collections::HashSet::new();
            let mut rooms: Vec<Value> = Vec::new();
            for s in &sockets {
                let id = s.get("id").and_then(Value::as_str).unwrap_or_default();
                for r in strings(s.get("rooms")) {
                    if r != id && !seen.contains(&r) {
                        seen.insert(r.clone());
                        rooms.push(Value::String(r));
                    }
                }
            }
            rooms
        }
        QuestionKind::ServerSideEmit => vec![data.get("packet").cloned().unwrap_or(Value::Null)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::adapter::event_of;
    use crate::engine::SendFlags;
    use crate::proto::sio::encode;

    /// Captured from a real run: what Node's socket.io 4.8 with `createShardedAdapter`
    /// (`@socket.io/redis-adapter` 8.3) `SPUBLISH`es for `io.to("room1").emit("room-message",
    /// {a: 1})` (on `socket.io#/#room1#`), for `socket.broadcast.emit("broadcast-back", {b:
    /// 2})` (on `socket.io#/#`), and for `io.to("room1").emit("room-message", Buffer.from([1, 2,
    /// 3]))` (msgpack, on `socket.io#/#room1#`).
    const TO_ROOM: &str = r#"{"type":3,"data":{"packet":{"type":2,"data":["room-message",{"a":1}]},"opts":{"rooms":["room1"],"except":[],"flags":{}}},"uid":"11e51575d9b8b431","nsp":"/"}"#;
    const SKIP_SENDER: &str = r#"{"type":3,"data":{"packet":{"type":2,"data":["broadcast-back",{"b":2}]},"opts":{"rooms":[],"except":["2Qm7WFPXk1tAcXmWAAAA"],"flags":{}}},"uid":"11e51575d9b8b431","nsp":"/"}"#;
    const BINARY_HEX: &str = "84a47479706503a46461746182a67061636b657482a47479706502a46461746192ac726f6f6d2d6d657373616765c403010203a46f70747383a5726f6f6d7391a5726f6f6d31a665786365707490a5666c61677380a3756964b031316535313537356439623862343331a36e7370a12f";

    fn unhex(h: &str) -> Vec<u8> {
        (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect()
    }

    fn broadcast(m: Option<Message>) -> Broadcast {
        match m {
            Some(Message::Broadcast(b)) => b,
            other => panic!("not a broadcast: {other:?}"),
        }
    }

    /// The message less what differs between senders: the uid, and the packet's namespace
    /// (Node leaves it out for `/`; shardcast always writes it).
    fn comparable(payload: &[u8]) -> (Value, Vec<Bytes>) {
        let (mut v, atts) = node::decode_body(payload).unwrap();
        v.as_object_mut().unwrap().remove("uid");
        v["data"]["packet"].as_object_mut().unwrap().remove("nsp");
        (v, atts)
    }

    #[test]
    fn decodes_what_node_s_sharded_adapter_publishes() {
        let b = broadcast(decode("me", TO_ROOM.as_bytes()).unwrap());
        assert_eq!(b.sel, Selector { nsp: "/".into(), rooms: vec!["room1".into()], ..Default::default() });
        assert_eq!(&b.packet.packet_text()[..], br#"2["room-message",{"a":1}]"#);
        let b = broadcast(decode("me", SKIP_SENDER.as_bytes()).unwrap());
        assert!(b.sel.rooms.is_empty());
        assert_eq!(b.sel.except_rooms, vec!["2Qm7WFPXk1tAcXmWAAAA"]);
        let b = broadcast(decode("me", &unhex(BINARY_HEX)).unwrap());
        assert_eq!(&b.packet.packet_text()[..], br#"51-["room-message",{"_placeholder":true,"num":0}]"#);
        assert_eq!(b.packet.attachments.len(), 1);
        assert!(decode("11e51575d9b8b431", TO_ROOM.as_bytes()).unwrap().is_none(), "a node drops its own messages");
    }

    #[test]
    fn encodes_broadcasts_as_node_s_sharded_adapter_does() {
        let room = Selector { nsp: "/".into(), rooms: vec!["room1".into()], ..Default::default() };
        let b = Broadcast {
            packet: encode::event("/", "room-message", &[json!({"a": 1})], None, Vec::new()),
            sel: room.clone(),
            flags: SendFlags::default(),
            ack: None,
            offset: None,
        };
        let (channel, wire) = encode_broadcast("me", "socket.io", &b, &event_of(&b).unwrap());
        assert_eq!(channel, "socket.io#/#room1#");
        assert_eq!(comparable(&wire), comparable(TO_ROOM.as_bytes()));
        assert!(wire.starts_with(b"{"), "JSON without binary");
        // A skip-sender broadcast: the namespace's channel, the sender in `except`.
        let all = Selector { nsp: "/".into(), except_ids: vec!["2Qm7WFPXk1tAcXmWAAAA".into()], ..Default::default() };
        let b = Broadcast {
            packet: encode::event("/", "broadcast-back", &[json!({"b": 2})], None, Vec::new()),
            sel: all,
            flags: SendFlags::default(),
            ack: None,
            offset: None,
        };
        let (channel, wire) = encode_broadcast("me", "socket.io", &b, &event_of(&b).unwrap());
        assert_eq!(channel, "socket.io#/#");
        assert_eq!(comparable(&wire), comparable(SKIP_SENDER.as_bytes()));
        // Binary: msgpack, the buffer as `bin`.
        let args = [crate::proto::sio::packet::placeholder(0)];
        let packet = encode::event("/", "room-message", &args, None, vec![Bytes::from_static(&[1, 2, 3])]);
        let b = Broadcast { packet, sel: room, flags: SendFlags::default(), ack: None, offset: None };
        let (_, wire) = encode_broadcast("me", "socket.io", &b, &event_of(&b).unwrap());
        assert_eq!(wire[0], 0x84, "a msgpack map of four");
        assert_eq!(comparable(&wire), comparable(&unhex(BINARY_HEX)));
    }

    #[test]
    fn socket_ids_go_on_the_namespace_channel() {
        let mut sel = Selector { nsp: "/custom".into(), rooms: vec!["2Qm7WFPXk1tAcXmWAAAA".into()], ..Default::default() };
        assert_eq!(broadcast_channel("socket.io", &sel), "socket.io#/custom#", "a Node socket id");
        sel.rooms = vec![crate::engine::sid::generate(3)];
        assert_eq!(broadcast_channel("socket.io", &sel), "socket.io#/custom#", "a shardcast socket id");
        sel.rooms = vec!["lobby".into()];
        assert_eq!(broadcast_channel("socket.io", &sel), "socket.io#/custom#lobby#");
        sel.rooms.push("other".into());
        assert_eq!(broadcast_channel("socket.io", &sel), "socket.io#/custom#");
        assert_eq!(answer_channel("socket.io", "/", "abc"), "socket.io#/#abc#");
    }

    #[test]
    fn requests_questions_and_answers_round_trip() {
        use crate::app::adapter::QuestionKind;
        use std::sync::Arc;
        let sel = Arc::new(Selector { nsp: "/".into(), rooms: vec!["r".into()], ..Default::default() });
        let (ch, wire) = encode_request("a", "socket.io", &Outbound::Join(sel.clone(), Arc::new(vec!["x".into()]))).unwrap();
        assert_eq!(ch, "socket.io#/#");
        let v: Value = serde_json::from_slice(&wire).unwrap();
        assert_eq!(v, json!({"type": 4, "data": {"opts": {"rooms": ["r"], "except": [], "flags": {}}, "rooms": ["x"]}, "uid": "a", "nsp": "/"}));
        assert!(matches!(decode("b", &wire).unwrap(), Some(Message::Join(s, r)) if s.rooms == ["r"] && r == ["x"]));
        let (_, wire) = encode_fetch("a", "socket.io", "q1", &sel);
        assert!(
            matches!(decode("b", &wire).unwrap(), Some(Message::Fetch { from, request_id, sel }) if from == "a" && request_id == "q1" && sel.rooms == ["r"])
        );
        let sockets = vec![json!({"id": "s1", "rooms": ["s1", "r"]}), json!({"id": "s2", "rooms": ["s2", "r", "q"]})];
        let wire = encode_fetch_response("b", "/", "q1", sockets);
        let Some(Message::Answer { request_id, kind, data, .. }) = decode("a", &wire).unwrap() else { panic!() };
        assert_eq!((request_id.as_str(), kind), ("q1", kind::FETCH_SOCKETS_RESPONSE));
        assert_eq!(answer_items(QuestionKind::Sockets, &data), vec![json!("s1"), json!("s2")]);
        assert_eq!(answer_items(QuestionKind::Rooms, &data), vec![json!("r"), json!("q")]);
        let (_, wire) = encode_server_side_with_ack("a", "socket.io", "/", "q2", &[json!("ping"), json!(1)]);
        assert!(
            matches!(decode("b", &wire).unwrap(), Some(Message::ServerSide { request_id: Some(id), data, .. }) if id == "q2" && data == [json!("ping"), json!(1)])
        );
        let answers = encode_ack_answers("b", "/", "q3", &[(vec![json!({"ok": 1})], Vec::new())]);
        assert_eq!(answers.len(), 2);
        assert!(
            matches!(decode("a", &answers[0]).unwrap(), Some(Message::Answer { kind: kind::BROADCAST_CLIENT_COUNT, data, .. }) if data["clientCount"] == 1)
        );
        assert!(decode("a", b"[1]").is_err());
        assert!(decode("a", br#"{"uid":"b","nsp":"/","type":1}"#).unwrap().is_none(), "a heartbeat");
    }
}
