//! Encode-once: a Socket.IO packet written straight into one buffer that already holds the
//! Engine.IO prefix and reserves room for the WebSocket frame header.
//!
//! Layout of the one allocation: `[reserved][WS header][4][Socket.IO header][JSON]`. The
//! WebSocket frame header is written right-aligned into the reserved space, so the *same*
//! bytes serve every WebSocket recipient (`ws_frame`) and, without the header, every polling
//! recipient (`text`, the Engine.IO packet text that goes into a polling payload). Both are
//! `Bytes` slices of one reference-counted buffer: handing a broadcast to N sockets is N
//! reference-count increments, never N serializations or copies.
//!
//! Must never: encode per recipient, or compress (per-connection deflate state lives in the
//! WebSocket codec).

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::packet::PacketType;
use crate::proto::eio::{PacketType as EioType, SharedPacket};

/// One Socket.IO packet encoded once for every transport: the header packet and, for binary
/// packets, one shared binary message per attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub packet: SharedPacket,
    pub attachments: Vec<SharedPacket>,
}

impl Encoded {
    /// The complete WebSocket text frame (header + `4` + packet).
    pub fn ws_frame(&self) -> Bytes {
        self.packet.ws_frame().clone()
    }

    /// The Engine.IO packet text (`4` + packet) for polling payloads.
    pub fn text(&self) -> Bytes {
        match &self.packet {
            SharedPacket::Text { text, .. } => text.clone(),
            SharedPacket::Binary { .. } => unreachable!("a Socket.IO packet is text"),
        }
    }

    /// The Socket.IO packet text alone (without the Engine.IO `4`).
    pub fn packet_text(&self) -> Bytes {
        self.text().slice(1..)
    }

    /// A copy in buffers of this thread's own (see [`SharedPacket::to_local`]).
    pub fn to_local(&self) -> Encoded {
        Encoded { packet: self.packet.to_local(), attachments: self.attachments.iter().map(SharedPacket::to_local).collect() }
    }

    /// Every Engine.IO packet to send, in order: the header packet, then the attachments.
    pub fn packets(&self) -> impl Iterator<Item = &SharedPacket> {
        std::iter::once(&self.packet).chain(self.attachments.iter())
    }
}

/// Writes `<type>[<n>-][<nsp>,][<id>]` then lets `data` append the JSON, and frames it.
pub fn encode_with(kind: PacketType, nsp: &str, id: Option<u64>, attachments: Vec<Bytes>, data: impl FnOnce(&mut Vec<u8>)) -> Encoded {
    let kind = match (kind, attachments.is_empty()) {
        (PacketType::Event, false) => PacketType::BinaryEvent,
        (PacketType::Ack, false) => PacketType::BinaryAck,
        (k, _) => k,
    };
    let packet = SharedPacket::text_with(EioType::Message, |buf| {
        buf.push(b'0' + kind as u8);
        if kind.is_binary() {
            buf.extend_from_slice(itoa::Buffer::new().format(attachments.len()).as_bytes());
            buf.push(b'-');
        }
        if nsp != "/" {
            buf.extend_from_slice(nsp.as_bytes());
            buf.push(b',');
        }
        if let Some(id) = id {
            buf.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
        }
        data(buf);
    });
    let attachments = attachments.into_iter().map(SharedPacket::binary).collect();
    Encoded { packet, attachments }
}

fn write_json(out: &mut Vec<u8>, v: &impl Serialize) {
    serde_json::to_writer(out, v).expect("serializing JSON values into memory cannot fail");
}

/// EVENT `[event, ...args]` (BINARY_EVENT when `attachments` is not empty; `args` then hold
/// the placeholders).
pub fn event(nsp: &str, event: &str, args: &[Value], id: Option<u64>, attachments: Vec<Bytes>) -> Encoded {
    event_with_offset(nsp, event, args, None, id, attachments)
}

/// EVENT with a connection-state-recovery offset appended as its last argument (a string),
/// as socket.io 4.6+ sends it.
pub fn event_with_offset(nsp: &str, event: &str, args: &[Value], offset: Option<&str>, id: Option<u64>, attachments: Vec<Bytes>) -> Encoded {
    encode_with(PacketType::Event, nsp, id, attachments, |out| {
        out.push(b'[');
        write_json(out, &event);
        for a in args {
            out.push(b',');
            write_json(out, a);
        }
        if let Some(o) = offset {
            out.push(b',');
            write_json(out, &o);
        }
        out.push(b']');
    })
}

/// ACK `[...args]` answering `id`.
pub fn ack(nsp: &str, id: u64, args: &[Value], attachments: Vec<Bytes>) -> Encoded {
    encode_with(PacketType::Ack, nsp, Some(id), attachments, |out| write_json(out, &args))
}

/// CONNECT answer `{"sid":"..."}`.
pub fn connect(nsp: &str, sid: &str) -> Encoded {
    encode_with(PacketType::Connect, nsp, None, Vec::new(), |out| write_json(out, &serde_json::json!({ "sid": sid })))
}

/// CONNECT answer with connection state recovery on: `{"sid":"...","pid":"..."}`.
pub fn connect_with_pid(nsp: &str, sid: &str, pid: &str) -> Encoded {
    encode_with(PacketType::Connect, nsp, None, Vec::new(), |out| write_json(out, &serde_json::json!({ "sid": sid, "pid": pid })))
}

/// CONNECT_ERROR with `data` (normally `{"message": ...}`).
pub fn connect_error(nsp: &str, data: &Value) -> Encoded {
    encode_with(PacketType::ConnectError, nsp, None, Vec::new(), |out| write_json(out, data))
}

/// DISCONNECT for a namespace.
pub fn disconnect(nsp: &str) -> Encoded {
    encode_with(PacketType::Disconnect, nsp, None, Vec::new(), |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::sio::packet::{placeholder, Decoder, Limits};
    use crate::proto::ws::frame::{parse_header, HeaderStatus};
    use proptest::prelude::*;
    use serde_json::json;

    fn frame_payload(f: &[u8]) -> &[u8] {
        match parse_header(f).unwrap() {
            HeaderStatus::Complete { header, header_len } => {
                assert_eq!(header.payload_len as usize, f.len() - header_len);
                &f[header_len..]
            }
            _ => panic!("incomplete"),
        }
    }

    #[test]
    fn one_buffer_serves_both_transports() {
        let e = event("/", "hello", &[json!(1), json!("x")], None, vec![]);
        assert_eq!(&e.text()[..], br#"42["hello",1,"x"]"#);
        assert_eq!(frame_payload(&e.ws_frame()), &e.text()[..]);
        // Same allocation: both slices point into one buffer.
        let (t, f) = (e.text(), e.ws_frame());
        assert_eq!(t.as_ptr(), f[f.len() - t.len()..].as_ptr());
    }

    #[test]
    fn encodes_like_the_reference() {
        assert_eq!(&event("/admin", "a", &[], Some(12), vec![]).text()[..], br#"42/admin,12["a"]"#);
        assert_eq!(&ack("/", 7, &[json!(true)], vec![]).text()[..], b"437[true]");
        assert_eq!(&connect("/", "abc").text()[..], br#"40{"sid":"abc"}"#);
        assert_eq!(&connect_error("/x", &json!({"message":"Invalid namespace"})).text()[..], br#"44/x,{"message":"Invalid namespace"}"#);
        assert_eq!(&disconnect("/custom").text()[..], b"41/custom,");
        assert_eq!(&disconnect("/").text()[..], b"41");
        let b = event("/", "bin", &[placeholder(0)], None, vec![Bytes::from_static(&[1, 2, 3])]);
        assert_eq!(&b.text()[..], br#"451-["bin",{"_placeholder":true,"num":0}]"#);
        assert_eq!(b.attachments[0].ws_frame().as_ref(), &[0x82, 3, 1, 2, 3]);
        assert_eq!(&ack("/", 1, &[placeholder(0)], vec![Bytes::from_static(b"z")]).text()[..], br#"461-1[{"_placeholder":true,"num":0}]"#);
    }

    proptest! {
        /// encode → decode is the identity for events and acks.
        #[test]
        fn roundtrip(name in "[a-z]{1,8}", nsp in prop_oneof![Just("/".to_string()), "/[a-z]{1,6}"],
                     id in proptest::option::of(any::<u64>()), ints in proptest::collection::vec(any::<i64>(), 0..4),
                     s in "\\PC{0,12}", is_ack in any::<bool>()) {
            let mut args: Vec<Value> = ints.iter().map(|i| json!(i)).collect();
            args.push(json!({"s": s, "nested": [1, [2, {"k": null}]]}));
            let (enc, expected_data) = if is_ack {
                let id = id.unwrap_or(0);
                (ack(&nsp, id, &args, vec![]), Value::Array(args.clone()))
            } else {
                let mut all = vec![json!(name)];
                all.extend(args.clone());
                (event(&nsp, &name, &args, id, vec![]), Value::Array(all))
            };
            let mut text = enc.packet_text().to_vec();
            let p = Decoder::new(Limits::default()).decode(&mut text).unwrap();
            prop_assert_eq!(p.nsp, nsp);
            prop_assert_eq!(p.data, Some(expected_data));
            if is_ack { prop_assert_eq!(p.id, Some(id.unwrap_or(0))); } else { prop_assert_eq!(p.id, id); }
        }
    }
}
