//! The wire format of python-socketio's `PubSubManager` / `RedisManager` (5.14 and later, JSON
//! only; pickled messages of older versions are never read): one JSON object per message on
//! one channel (`socketio` by default), `method` naming what to do:
//!
//! - `emit`: `{event, data, binary, namespace, room, skip_sid, callback, host_id}`. `data` is
//!   the argument list; with `binary`, `data` is `[args with placeholders, base64 attachment,
//!   ...]`. `room` is null (the whole namespace), a room, or a list of rooms; `skip_sid` a sid
//!   or a list of them.
//! - `disconnect` `{sid, namespace}`, `enter_room` / `leave_room` `{sid, room, namespace}`,
//!   `close_room` `{room, namespace}`.
//!
//! A node drops its own messages by `host_id`. The format has no "except rooms": a shardcast
//! broadcast's except rooms travel in `skip_sid` (which covers socket ids, each socket's own
//! room); other except rooms are honoured by shardcast nodes only.
//!
//! Must never: unpickle, trust a message (a malformed one is dropped), or run on a worker.

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use super::node::FormatError;
use super::{except_all, EventParts, Inbound, Outbound};
use crate::app::worker::{Broadcast, Selector};
use crate::engine::SendFlags;
use crate::proto::sio::encode;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A room selection as python-socketio writes it: null, one room, or a list.
fn rooms_value(rooms: &[String]) -> Value {
    match rooms {
        [] => Value::Null,
        [one] => Value::String(one.clone()),
        many => json!(many),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    }
}

/// The `emit` message for a broadcast.
pub fn encode_broadcast(host_id: &str, b: &Broadcast, ev: &EventParts) -> Vec<u8> {
    let binary = !ev.attachments.is_empty();
    let data = if binary {
        let mut d = vec![Value::Array(ev.args.clone())];
        d.extend(ev.attachments.iter().map(|a| Value::String(B64.encode(a))));
        Value::Array(d)
    } else {
        Value::Array(ev.args.clone())
    };
    let skip = except_all(&b.sel);
    let msg = json!({
        "method": "emit",
        "event": ev.event,
        "data": data,
        "binary": binary,
        "namespace": b.sel.nsp,
        "room": rooms_value(&b.sel.rooms),
        "skip_sid": if skip.is_empty() { Value::Null } else { json!(skip) },
        "callback": Value::Null,
        "host_id": host_id,
    });
    serde_json::to_vec(&msg).expect("JSON into memory")
}

/// The messages for a room or disconnect request (python-socketio addresses one sid each).
pub fn encode_request(host_id: &str, out: &Outbound) -> Vec<Vec<u8>> {
    let mut msgs = Vec::new();
    let mut push = |v: Value| msgs.push(serde_json::to_vec(&v).expect("JSON into memory"));
    match out {
        Outbound::Broadcast(_) | Outbound::Ask(_) | Outbound::AckedBroadcast(..) | Outbound::ServerSideEmit(..) => {}
        Outbound::Leave(sel, rooms) if sel.rooms.len() == 1 && **rooms == sel.rooms && sel.except_rooms.is_empty() && sel.except_ids.is_empty() => {
            push(json!({"method": "close_room", "room": rooms[0], "namespace": sel.nsp, "host_id": host_id}))
        }
        Outbound::Join(sel, rooms) | Outbound::Leave(sel, rooms) => {
            let method = if matches!(out, Outbound::Join(..)) { "enter_room" } else { "leave_room" };
            for sid in &sel.rooms {
                for room in rooms.iter() {
                    push(json!({"method": method, "sid": sid, "room": room, "namespace": sel.nsp, "host_id": host_id}));
                }
            }
        }
        Outbound::Disconnect(sel, _) => {
            for sid in &sel.rooms {
                push(json!({"method": "disconnect", "sid": sid, "namespace": sel.nsp, "host_id": host_id}));
            }
        }
    }
    msgs
}

/// Decodes one message; `Ok(None)` for this node's own and for methods with nothing to do here
/// (`callback`).
pub fn decode(host_id: &str, payload: &[u8]) -> Result<Option<Inbound>, FormatError> {
    Ok(decode_from(payload)?.and_then(|(from, i)| (from != host_id).then_some(i)))
}

/// Decodes one message with the `host_id` of its sender (empty when it has none); `Ok(None)`
/// for methods with nothing to do here (`callback`).
pub fn decode_from(payload: &[u8]) -> Result<Option<(String, Inbound)>, FormatError> {
    let msg: Value = serde_json::from_slice(payload).map_err(|e| FormatError::Decode(e.to_string()))?;
    if !msg.is_object() {
        return Err(FormatError::Shape("not an object"));
    }
    let from = msg.get("host_id").and_then(Value::as_str).unwrap_or_default().to_string();
    let nsp = msg.get("namespace").and_then(Value::as_str).unwrap_or("/").to_string();
    let one = |sid: Option<&Value>| Selector { nsp: nsp.clone(), rooms: strings(sid), ..Default::default() };
    let room = || strings(msg.get("room"));
    let inbound = match msg.get("method").and_then(Value::as_str) {
        Some("emit") => Inbound::Broadcast(decode_emit(&msg, &nsp)?),
        Some("disconnect") => Inbound::Disconnect(one(msg.get("sid")), false),
        Some("enter_room") => Inbound::Join(one(msg.get("sid")), room()),
        Some("leave_room") => Inbound::Leave(one(msg.get("sid")), room()),
        Some("close_room") => Inbound::Leave(one(msg.get("room")), room()),
        _ => return Ok(None),
    };
    Ok(Some((from, inbound)))
}

fn decode_emit(msg: &Value, nsp: &str) -> Result<Broadcast, FormatError> {
    let event = msg.get("event").and_then(Value::as_str).ok_or(FormatError::Shape("emit without an event"))?;
    let Some(Value::Array(data)) = msg.get("data") else { return Err(FormatError::Shape("emit data is not a list")) };
    let (mut args, attachments) = if msg.get("binary").and_then(Value::as_bool).unwrap_or(false) {
        let Some(Value::Array(args)) = data.first() else { return Err(FormatError::Shape("binary emit without its argument list")) };
        let mut atts = Vec::new();
        for a in &data[1..] {
            let s = a.as_str().ok_or(FormatError::Shape("an attachment is not a string"))?;
            atts.push(Bytes::from(B64.decode(s).map_err(|e| FormatError::Decode(e.to_string()))?));
        }
        (args.clone(), atts)
    } else {
        (data.clone(), Vec::new())
    };
    // python-socketio sends `[None]` for an emit without data.
    if args == [Value::Null] {
        args.clear();
    }
    let sel = Selector { nsp: nsp.to_string(), rooms: strings(msg.get("room")), except_rooms: Vec::new(), except_ids: strings(msg.get("skip_sid")) };
    Ok(Broadcast { packet: encode::event(nsp, event, &args, None, attachments), sel, flags: SendFlags::default(), ack: None, offset: None })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::app::adapter::event_of;
    use crate::proto::sio::packet::placeholder;

    /// What python-socketio 5.18's `PubSubManager.emit("ev", (1, b"\x01"), to="r",
    /// skip_sid="s1")` publishes (`json.dumps` of its message dict).
    #[test]
    fn decodes_a_python_binary_emit() {
        let wire = br#"{"method": "emit", "event": "ev", "data": [[1, {"_placeholder": true, "num": 0}], "AQ=="], "binary": true, "namespace": "/", "room": "r", "skip_sid": "s1", "callback": null, "host_id": "abc"}"#;
        let Some(Inbound::Broadcast(b)) = decode("me", wire).unwrap() else { panic!() };
        assert_eq!(b.sel, Selector { nsp: "/".into(), rooms: vec!["r".into()], except_rooms: vec![], except_ids: vec!["s1".into()] });
        assert_eq!(&b.packet.packet_text()[..], br#"51-["ev",1,{"_placeholder":true,"num":0}]"#);
        assert!(decode("abc", wire).unwrap().is_none(), "own messages are dropped");
        // Bridge mode tells senders apart by host_id: a bridge node's, a relayed copy, a
        // python node's.
        assert!(matches!(decode_from(wire).unwrap(), Some((from, Inbound::Broadcast(_))) if from == "abc"));
        // A relayed copy of it, for the Node nodes: the skipped sid becomes an except room.
        let copy = crate::app::adapter::node::encode_broadcast("relay~x", &b, &event_of(&b).unwrap());
        let (from, back) = crate::app::adapter::node::decode_broadcast_from(&copy).unwrap().unwrap();
        assert_eq!(from, "relay~x");
        assert_eq!(back.sel.except_rooms, vec!["s1"]);
        assert_eq!(back.packet.packet_text(), b.packet.packet_text());
        let plain = br#"{"method": "emit", "event": "ev", "data": [null], "binary": false, "namespace": "/custom", "room": null, "skip_sid": null, "callback": null, "host_id": "abc"}"#;
        let Some(Inbound::Broadcast(b)) = decode("me", plain).unwrap() else { panic!() };
        assert_eq!(&b.packet.packet_text()[..], br#"2/custom,["ev"]"#);
        assert!(b.sel.rooms.is_empty());
    }

    #[test]
    fn a_broadcast_round_trips_through_the_python_format() {
        let sel = Selector { nsp: "/".into(), rooms: vec!["a".into(), "b".into()], except_rooms: vec![], except_ids: vec!["me1".into()] };
        let packet = encode::event("/", "ev", &[json!("x"), placeholder(0)], None, vec![Bytes::from_static(b"\x00\xff")]);
        let b = Broadcast { sel, packet, flags: SendFlags::default(), ack: None, offset: None };
        let wire = encode_broadcast("h1", &b, &event_of(&b).unwrap());
        let v: Value = serde_json::from_slice(&wire).unwrap();
        assert_eq!(v["room"], json!(["a", "b"]));
        assert_eq!(v["skip_sid"], json!(["me1"]));
        assert_eq!(v["data"], json!([["x", {"_placeholder": true, "num": 0}], "AP8="]));
        let Some(Inbound::Broadcast(back)) = decode("h2", &wire).unwrap() else { panic!() };
        assert_eq!(back.packet.packet_text(), b.packet.packet_text());
        assert_eq!(back.sel.except_ids, vec!["me1"]);
    }

    #[test]
    fn room_requests_address_sids() {
        let sel = Arc::new(Selector { nsp: "/".into(), rooms: vec!["sid9".into()], ..Default::default() });
        let msgs = encode_request("h", &Outbound::Join(sel.clone(), Arc::new(vec!["r".into()])));
        let v: Value = serde_json::from_slice(&msgs[0]).unwrap();
        assert_eq!(v, json!({"method": "enter_room", "sid": "sid9", "room": "r", "namespace": "/", "host_id": "h"}));
        let close = Arc::new(Selector { nsp: "/".into(), rooms: vec!["r".into()], ..Default::default() });
        let msgs = encode_request("h", &Outbound::Leave(close, Arc::new(vec!["r".into()])));
        assert_eq!(serde_json::from_slice::<Value>(&msgs[0]).unwrap()["method"], "close_room");
        assert!(
            matches!(decode("me", br#"{"method":"close_room","room":"r","namespace":"/","host_id":"x"}"#).unwrap(), Some(Inbound::Leave(s, r)) if s.rooms == ["r"] && r == ["r"])
        );
        assert!(decode("me", b"[1]").is_err());
        assert!(decode("me", b"\x80\x04pickle").is_err());
    }
}
