//! Engine.IO v4 packets (engine.io-protocol §"Packet encoding").
//!
//! Owns: the packet types and their text form (`<type digit><data>`), and the two WebSocket
//! forms (a text frame carries the text form; a binary frame carries a raw binary message).
//!
//! Must never: know about polling payloads (see [`super::payload`]) or about sessions.

/// Who sends what: `Open` server→client (handshake); `Close` either way; `Ping`/`Pong` —
/// the server pings and the client pongs, except during the upgrade where the client sends
/// `2probe` and the server answers `3probe`; `Message` either way; `Upgrade` client→server to
/// finish the upgrade; `Noop` server→client to release a pending poll during the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketType {
    Open = 0,
    Close = 1,
    Ping = 2,
    Pong = 3,
    Message = 4,
    Upgrade = 5,
    Noop = 6,
}

impl PacketType {
    pub fn from_byte(b: u8) -> Option<PacketType> {
        Some(match b {
            b'0' => PacketType::Open,
            b'1' => PacketType::Close,
            b'2' => PacketType::Ping,
            b'3' => PacketType::Pong,
            b'4' => PacketType::Message,
            b'5' => PacketType::Upgrade,
            b'6' => PacketType::Noop,
            _ => return None,
        })
    }

    /// The digit that starts the packet's text form.
    pub fn as_byte(self) -> u8 {
        b'0' + self as u8
    }
}

/// A decoded packet. Text data borrows the receive buffer (mutably, so the Socket.IO layer can
/// parse JSON in place); binary data is owned because attachments outlive the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    Open(&'a [u8]),
    Close,
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A text message (valid UTF-8).
    Message(&'a mut [u8]),
    /// A binary message.
    Binary(Vec<u8>),
    Upgrade,
    Noop,
}

/// Why a packet could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    #[error("invalid base64 in a binary packet")]
    BadBase64,
    #[error("payload of {size} bytes is larger than maxPayload ({max})")]
    TooLarge { size: usize, max: usize },
    #[error("payload is not valid UTF-8")]
    NotUtf8,
}

impl PacketError {
    /// HTTP status for a polling request that carried this error.
    pub fn http_status(&self) -> u16 {
        match self {
            PacketError::TooLarge { .. } => 413,
            _ => 400,
        }
    }
}

/// Decodes the text form of one packet (a WebSocket text frame, or one polling packet). The
/// caller guarantees `buf` is UTF-8 (WebSocket text frames and polling bodies are checked).
pub fn decode_text(buf: &mut [u8]) -> Result<Packet<'_>, PacketError> {
    let (&first, _) = buf.split_first().ok_or(PacketError::Empty)?;
    let ty = PacketType::from_byte(first).ok_or(PacketError::UnknownType(first as char))?;
    let data = &mut buf[1..];
    Ok(match ty {
        PacketType::Open => Packet::Open(data),
        PacketType::Close => Packet::Close,
        PacketType::Ping => Packet::Ping(data),
        PacketType::Pong => Packet::Pong(data),
        PacketType::Message => Packet::Message(data),
        PacketType::Upgrade => Packet::Upgrade,
        PacketType::Noop => Packet::Noop,
    })
}

/// Appends the text form of a packet of type `ty` with text `data`.
pub fn encode_text(ty: PacketType, data: &[u8], out: &mut Vec<u8>) {
    out.push(ty.as_byte());
    out.extend_from_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_document_examples() {
        // "4hello", "2probe", "3probe", "5", "6", "1".
        assert_eq!(decode_text(&mut b"4hello".to_vec()).unwrap(), Packet::Message(&mut b"hello".to_vec()));
        assert_eq!(decode_text(&mut b"2probe".to_vec()).unwrap(), Packet::Ping(b"probe"));
        assert_eq!(decode_text(&mut b"3probe".to_vec()).unwrap(), Packet::Pong(b"probe"));
        assert_eq!(decode_text(&mut b"5".to_vec()).unwrap(), Packet::Upgrade);
        assert_eq!(decode_text(&mut b"6".to_vec()).unwrap(), Packet::Noop);
        assert_eq!(decode_text(&mut b"1".to_vec()).unwrap(), Packet::Close);
        assert_eq!(decode_text(&mut b"2".to_vec()).unwrap(), Packet::Ping(b""));
        assert_eq!(decode_text(&mut []), Err(PacketError::Empty));
        assert_eq!(decode_text(&mut b"7".to_vec()), Err(PacketError::UnknownType('7')));
        assert_eq!(decode_text(&mut b"x".to_vec()), Err(PacketError::UnknownType('x')));
        let mut out = Vec::new();
        encode_text(PacketType::Message, b"hello", &mut out);
        assert_eq!(out, b"4hello");
    }
}
