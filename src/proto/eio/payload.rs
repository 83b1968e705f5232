//! HTTP long-polling payloads (engine.io-protocol v4 §"Payload"): packets joined with the
//! record separator `\x1e`; a binary packet is `b` followed by its base64.
//!
//! Owns: splitting and validating a POST body, and joining outgoing packets for a GET
//! response. Must never: know about HTTP itself (status lines, headers, compression).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use super::packet::{decode_text, Packet, PacketError};

/// The record separator between packets.
pub const SEPARATOR: u8 = 0x1e;

/// Checks a whole POST body without keeping anything of it: at most `max_payload` bytes,
/// UTF-8, every packet non-empty, of a known type, and (for `b`) valid base64. A body that
/// fails is refused before any of its packets is handled, as the reference server does;
/// one that passes is then decoded a packet at a time by [`payload_packets`], so a body of
/// half a million tiny packets never becomes half a million packets in memory.
pub fn check_payload(body: &mut [u8], max_payload: usize) -> Result<(), PacketError> {
    if body.len() > max_payload {
        return Err(PacketError::TooLarge { size: body.len(), max: max_payload });
    }
    if simdutf8::basic::from_utf8(body).is_err() {
        return Err(PacketError::NotUtf8);
    }
    for part in body.split_mut(|&b| b == SEPARATOR) {
        decode_part(part)?;
    }
    Ok(())
}

fn decode_part(part: &mut [u8]) -> Result<Packet<'_>, PacketError> {
    if part.first() == Some(&b'b') {
        Ok(Packet::Binary(STANDARD.decode(&part[1..]).map_err(|_| PacketError::BadBase64)?))
    } else {
        decode_text(part)
    }
}

/// The packets of a body [`check_payload`] accepted, decoded one at a time.
pub fn payload_packets(body: &mut [u8]) -> impl Iterator<Item = Packet<'_>> {
    body.split_mut(|&b| b == SEPARATOR).filter_map(|part| decode_part(part).ok())
}

/// Decodes a whole POST body into packets ([`check_payload`], then [`payload_packets`]).
pub fn decode_payload(body: &mut [u8], max_payload: usize) -> Result<Vec<Packet<'_>>, PacketError> {
    check_payload(body, max_payload)?;
    Ok(payload_packets(body).collect())
}

/// Builds a GET response body one packet at a time.
#[derive(Debug, Default)]
pub struct PayloadWriter {
    buf: Vec<u8>,
}

impl PayloadWriter {
    pub fn new() -> PayloadWriter {
        PayloadWriter::default()
    }

    fn separate(&mut self) {
        if !self.buf.is_empty() {
            self.buf.push(SEPARATOR);
        }
    }

    /// Appends a packet already in text form (`<type digit><data>`), e.g. a shared encoded
    /// Socket.IO packet.
    pub fn push_text(&mut self, packet_text: &[u8]) {
        self.separate();
        self.buf.extend_from_slice(packet_text);
    }

    /// Appends a binary message as `b<base64>`.
    pub fn push_binary(&mut self, data: &[u8]) {
        self.separate();
        self.buf.push(b'b');
        let at = self.buf.len();
        self.buf.resize(at + base64::encoded_len(data.len(), true).unwrap_or(0), 0);
        let n = STANDARD.encode_slice(data, &mut self.buf[at..]).expect("sized above");
        self.buf.truncate(at + n);
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn protocol_document_example() {
        // "4hello\x1ebAQIDBA==" → message "hello" and binary [1,2,3,4].
        let mut body = b"4hello\x1ebAQIDBA==".to_vec();
        let p = decode_payload(&mut body, 100).unwrap();
        assert_eq!(p, vec![Packet::Message(&mut b"hello".to_vec()), Packet::Binary(vec![1, 2, 3, 4])]);
        let mut w = PayloadWriter::new();
        w.push_text(b"4hello");
        w.push_binary(&[1, 2, 3, 4]);
        assert_eq!(w.finish(), b"4hello\x1ebAQIDBA==");
    }

    #[test]
    fn typed_errors() {
        assert_eq!(decode_payload(&mut b"4a\x1e\x1e4b".to_vec(), 100), Err(PacketError::Empty));
        assert_eq!(decode_payload(&mut b"".to_vec(), 100), Err(PacketError::Empty));
        assert_eq!(decode_payload(&mut b"9x".to_vec(), 100), Err(PacketError::UnknownType('9')));
        assert_eq!(decode_payload(&mut b"b!!!".to_vec(), 100), Err(PacketError::BadBase64));
        assert_eq!(decode_payload(&mut b"4aaaa".to_vec(), 4), Err(PacketError::TooLarge { size: 5, max: 4 }));
        assert_eq!(decode_payload(&mut b"4\xff".to_vec(), 100), Err(PacketError::NotUtf8));
        assert_eq!(PacketError::TooLarge { size: 5, max: 4 }.http_status(), 413);
        assert_eq!(PacketError::Empty.http_status(), 400);
    }

    #[derive(Debug, Clone)]
    enum P {
        Text(String),
        Bin(Vec<u8>),
    }

    proptest! {
        #[test]
        fn roundtrip(packets in proptest::collection::vec(prop_oneof![
            "[^\x1e]{0,40}".prop_map(P::Text),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(P::Bin)], 1..8)) {
            let mut w = PayloadWriter::new();
            for p in &packets {
                match p { P::Text(t) => w.push_text(format!("4{t}").as_bytes()), P::Bin(b) => w.push_binary(b) }
            }
            let mut body = w.finish();
            let decoded = decode_payload(&mut body, usize::MAX).unwrap();
            prop_assert_eq!(decoded.len(), packets.len());
            for (d, p) in decoded.iter().zip(&packets) {
                match (d, p) {
                    (Packet::Message(m), P::Text(t)) => prop_assert_eq!(&m[..], t.as_bytes()),
                    (Packet::Binary(b), P::Bin(e)) => prop_assert_eq!(b, e),
                    _ => prop_assert!(false, "kind changed: {:?} vs {:?}", d, p),
                }
            }
        }
    }
}
