//! WebSocket frame headers (RFC 6455 §5.2): parsing and encoding.
//!
//! Owns: the byte layout of a frame header, the opcode table, and the header rules that hold
//! whatever the connection state is (reserved opcodes, control frames small and unfragmented,
//! the 64-bit length's top bit). Rules that depend on state (masking required, RSV bits allowed
//! by an extension, fragmentation order, size limits) live in [`super::codec`].
//!
//! Hand-written on purpose: it is a dozen lines of bit fiddling on the hot path, and the encoder
//! writes the header *in front of* a payload that is already in place, so a payload is never
//! copied to be framed.
//!
//! Must never: touch a payload, allocate, or do I/O.

use super::error::ProtocolViolation;

/// Largest header a server ever writes: 2 bytes + 8-byte extended length (no mask).
pub const MAX_SERVER_HEADER: usize = 10;
/// Largest header a client can send: 2 + 8 + 4-byte masking key.
pub const MAX_CLIENT_HEADER: usize = 14;
/// Control frames carry at most this many payload bytes (§5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Frame opcodes (§5.2). Reserved values are rejected while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    /// Decodes the low nibble of the first header byte.
    pub fn from_u8(v: u8) -> Option<OpCode> {
        Some(match v {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    /// Close, Ping and Pong are control frames.
    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub rsv1: bool,
    pub rsv2: bool,
    pub rsv3: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

/// Result of [`parse_header`] on possibly partial input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStatus {
    /// Not enough bytes yet: at least `needed` more are required.
    Incomplete { needed: usize },
    /// A whole header: `header_len` bytes of input were its header.
    Complete { header: FrameHeader, header_len: usize },
}

/// Parses a frame header from the front of `buf`, which may be partial.
///
/// "Not enough bytes yet" ([`HeaderStatus::Incomplete`]) is distinct from "these bytes are
/// wrong" (`Err`), which an incremental decoder needs.
pub fn parse_header(buf: &[u8]) -> Result<HeaderStatus, ProtocolViolation> {
    if buf.len() < 2 {
        return Ok(HeaderStatus::Incomplete { needed: 2 - buf.len() });
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let opcode = OpCode::from_u8(b0 & 0x0f).ok_or(ProtocolViolation::ReservedOpcode(b0 & 0x0f))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7f;
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    if opcode.is_control() {
        if !fin {
            return Err(ProtocolViolation::FragmentedControl);
        }
        if len7 as usize > MAX_CONTROL_PAYLOAD {
            return Err(ProtocolViolation::ControlTooLong);
        }
    }
    let header_len = 2 + ext + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(HeaderStatus::Incomplete { needed: header_len - buf.len() });
    }
    let payload_len = match ext {
        0 => len7 as u64,
        2 => u16::from_be_bytes([buf[2], buf[3]]) as u64,
        _ => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let v = u64::from_be_bytes(b);
            if v >> 63 != 0 {
                return Err(ProtocolViolation::LengthTopBitSet);
            }
            v
        }
    };
    let mask = if masked {
        let at = 2 + ext;
        Some([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
    } else {
        None
    };
    Ok(HeaderStatus::Complete {
        header: FrameHeader { fin, rsv1: b0 & 0x40 != 0, rsv2: b0 & 0x20 != 0, rsv3: b0 & 0x10 != 0, opcode, mask, payload_len },
        header_len,
    })
}

/// Length of the unmasked (server) header for a payload of `len` bytes.
#[inline]
pub fn server_header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Writes an unmasked server frame header into `out` and returns how many bytes it used.
#[inline]
pub fn write_server_header(out: &mut [u8; MAX_SERVER_HEADER], fin: bool, rsv1: bool, opcode: OpCode, len: usize) -> usize {
    out[0] = (fin as u8) << 7 | (rsv1 as u8) << 6 | opcode as u8;
    if len < 126 {
        out[1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[1] = 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Frames a payload that already sits in `buf[payload_start..]` by writing the header into the
/// space reserved in front of it. Returns the offset where the frame begins; the frame is
/// `buf[start..]`. The payload is not moved.
///
/// # Panics
/// If fewer than [`server_header_len`] bytes are reserved in front of the payload.
pub fn frame_in_place(buf: &mut [u8], payload_start: usize, rsv1: bool, opcode: OpCode) -> usize {
    let len = buf.len() - payload_start;
    let mut hdr = [0u8; MAX_SERVER_HEADER];
    let n = write_server_header(&mut hdr, true, rsv1, opcode, len);
    assert!(payload_start >= n, "not enough headroom reserved for the frame header");
    let start = payload_start - n;
    buf[start..payload_start].copy_from_slice(&hdr[..n]);
    start
}

/// Encodes a whole unmasked server frame into a new buffer (for small control frames and
/// tests; data paths use [`frame_in_place`]).
pub fn encode_frame(opcode: OpCode, rsv1: bool, payload: &[u8]) -> Vec<u8> {
    let mut hdr = [0u8; MAX_SERVER_HEADER];
    let n = write_server_header(&mut hdr, true, rsv1, opcode, payload.len());
    let mut v = Vec::with_capacity(n + payload.len());
    v.extend_from_slice(&hdr[..n]);
    v.extend_from_slice(payload);
    v
}

/// Encodes a masked client frame (used by tests, fuzz seeds and the load generator).
pub fn encode_client_frame(fin: bool, rsv1: bool, opcode: OpCode, mask: [u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut hdr = [0u8; MAX_SERVER_HEADER];
    let n = write_server_header(&mut hdr, fin, rsv1, opcode, payload.len());
    hdr[1] |= 0x80;
    let mut v = Vec::with_capacity(n + 4 + payload.len());
    v.extend_from_slice(&hdr[..n]);
    v.extend_from_slice(&mask);
    let at = v.len();
    v.extend_from_slice(payload);
    super::mask::apply_mask(&mut v[at..], mask, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (FrameHeader, usize) {
        match parse_header(buf).unwrap() {
            HeaderStatus::Complete { header, header_len } => (header, header_len),
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    // The examples of RFC 6455 §5.7.
    #[test]
    fn rfc_single_frame_unmasked_text() {
        let (h, n) = complete(&[0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!((h.fin, h.opcode, h.payload_len, h.mask, n), (true, OpCode::Text, 5, None, 2));
        assert_eq!(encode_frame(OpCode::Text, false, b"Hello"), [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    }

    #[test]
    fn rfc_single_frame_masked_text() {
        let (h, n) = complete(&[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        assert_eq!((h.mask, h.payload_len, n), (Some([0x37, 0xfa, 0x21, 0x3d]), 5, 6));
        assert_eq!(
            encode_client_frame(true, false, OpCode::Text, [0x37, 0xfa, 0x21, 0x3d], b"Hello"),
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
    }

    #[test]
    fn rfc_fragmented_text() {
        let (h, _) = complete(&[0x01, 0x03, 0x48, 0x65, 0x6c]);
        assert_eq!((h.fin, h.opcode), (false, OpCode::Text));
        let (h, _) = complete(&[0x80, 0x02, 0x6c, 0x6f]);
        assert_eq!((h.fin, h.opcode), (true, OpCode::Continuation));
    }

    #[test]
    fn rfc_ping_pong_and_lengths() {
        let (h, _) = complete(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(h.opcode, OpCode::Ping);
        let (h, _) = complete(&[0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(h.opcode, OpCode::Pong);
        // 256 bytes binary message in a single unmasked frame.
        assert_eq!(&encode_frame(OpCode::Binary, false, &[0; 256])[..4], &[0x82, 0x7E, 0x01, 0x00]);
        // 64KiB binary message.
        assert_eq!(&encode_frame(OpCode::Binary, false, &vec![0; 65536])[..10], &[0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]);
        let (h, n) = complete(&[0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]);
        assert_eq!((h.payload_len, n), (65536, 10));
    }

    #[test]
    fn incomplete_says_how_many_bytes_are_missing() {
        assert_eq!(parse_header(&[]).unwrap(), HeaderStatus::Incomplete { needed: 2 });
        assert_eq!(parse_header(&[0x81]).unwrap(), HeaderStatus::Incomplete { needed: 1 });
        assert_eq!(parse_header(&[0x82, 0xFF, 0]).unwrap(), HeaderStatus::Incomplete { needed: 11 });
        assert_eq!(parse_header(&[0x82, 0xFE]).unwrap(), HeaderStatus::Incomplete { needed: 6 });
    }

    #[test]
    fn header_violations() {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            assert_eq!(parse_header(&[0x80 | op, 0x80]), Err(ProtocolViolation::ReservedOpcode(op)));
        }
        assert_eq!(parse_header(&[0x09, 0x80]), Err(ProtocolViolation::FragmentedControl));
        assert_eq!(parse_header(&[0x89, 0xFE]), Err(ProtocolViolation::ControlTooLong));
        assert_eq!(parse_header(&[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]), Err(ProtocolViolation::LengthTopBitSet));
    }

    #[test]
    fn frame_in_place_writes_header_in_front() {
        for len in [0usize, 1, 125, 126, 65535, 65536] {
            let mut buf = vec![0u8; MAX_SERVER_HEADER + len];
            let start = frame_in_place(&mut buf, MAX_SERVER_HEADER, false, OpCode::Text);
            let (h, n) = complete(&buf[start..]);
            assert_eq!((h.payload_len as usize, start + n), (len, MAX_SERVER_HEADER));
            assert_eq!(n, server_header_len(len));
        }
    }
}
