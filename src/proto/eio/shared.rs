//! Encode-once Engine.IO packets: one buffer holding `[reserved][WS header][type][data]`, from
//! which every WebSocket recipient gets the whole frame and every polling recipient the packet
//! text, as `Bytes` slices of the same allocation.
//!
//! Must never: encode per recipient.

use bytes::Bytes;

use super::packet::PacketType;
use crate::proto::ws::frame::{self, OpCode, MAX_SERVER_HEADER};

/// One outgoing Engine.IO packet, ready for either transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedPacket {
    /// A text packet: `ws` is the complete WebSocket text frame, `text` the packet text
    /// (`<type digit><data>`) for polling; both slices of one buffer.
    Text { ws: Bytes, text: Bytes },
    /// A binary message: `ws` is the complete WebSocket binary frame, `raw` the bytes (sent as
    /// `b<base64>` over polling).
    Binary { ws: Bytes, raw: Bytes },
}

impl SharedPacket {
    /// Builds a text packet of type `ty`; `data` appends the packet's data to the buffer.
    pub fn text_with(ty: PacketType, data: impl FnOnce(&mut Vec<u8>)) -> SharedPacket {
        let mut buf = Vec::with_capacity(64);
        buf.resize(MAX_SERVER_HEADER, 0);
        buf.push(ty.as_byte());
        data(&mut buf);
        Self::frame(buf)
    }

    /// Frames a buffer laid out as `[MAX_SERVER_HEADER reserved bytes][packet text]`.
    pub fn frame(mut buf: Vec<u8>) -> SharedPacket {
        let start = frame::frame_in_place(&mut buf, MAX_SERVER_HEADER, false, OpCode::Text);
        let all = Bytes::from(buf);
        SharedPacket::Text { ws: all.slice(start..), text: all.slice(MAX_SERVER_HEADER..) }
    }

    /// A text frame carrying `text` exactly (already a whole packet text, or any text for the
    /// raw WebSocket echo).
    pub fn raw_text(text: &[u8]) -> SharedPacket {
        let mut buf = Vec::with_capacity(MAX_SERVER_HEADER + text.len());
        buf.resize(MAX_SERVER_HEADER, 0);
        buf.extend_from_slice(text);
        Self::frame(buf)
    }

    /// A text packet with the given data.
    pub fn text(ty: PacketType, data: &[u8]) -> SharedPacket {
        Self::text_with(ty, |b| b.extend_from_slice(data))
    }

    /// A binary message.
    pub fn binary(raw: Bytes) -> SharedPacket {
        let ws = Bytes::from(frame::encode_frame(OpCode::Binary, false, &raw));
        SharedPacket::Binary { ws, raw }
    }

    /// The same packet in a buffer of its own. A worker receiving a broadcast from another
    /// core makes one such copy, so the reference counting of its many recipients stays on its
    /// own cache lines instead of bouncing one counter between cores.
    pub fn to_local(&self) -> SharedPacket {
        match self {
            SharedPacket::Text { text, .. } => SharedPacket::raw_text(text),
            SharedPacket::Binary { raw, .. } => SharedPacket::binary(Bytes::copy_from_slice(raw)),
        }
    }

    /// The complete WebSocket frame.
    pub fn ws_frame(&self) -> &Bytes {
        match self {
            SharedPacket::Text { ws, .. } | SharedPacket::Binary { ws, .. } => ws,
        }
    }

    /// The payload a WebSocket frame carries (for per-connection compression).
    pub fn ws_payload(&self) -> (&[u8], bool) {
        match self {
            SharedPacket::Text { text, .. } => (text, false),
            SharedPacket::Binary { raw, .. } => (raw, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_share_one_buffer() {
        let p = SharedPacket::text(PacketType::Message, b"hello");
        let SharedPacket::Text { ws, text } = &p else { panic!() };
        assert_eq!(&text[..], b"4hello");
        assert_eq!(&ws[..], b"\x81\x064hello");
        assert_eq!(ws[2..].as_ptr(), text.as_ptr());
        let b = SharedPacket::binary(Bytes::from_static(&[1, 2]));
        assert_eq!(&b.ws_frame()[..], &[0x82, 2, 1, 2]);
    }
}
