//! The sending half of one server-side WebSocket connection: outgoing messages into frames,
//! deflated when permessage-deflate was negotiated and the message reaches the threshold, and
//! the server's control frames.
//!
//! It shares nothing with the [`super::codec::Decoder`], so a connection can send while its
//! decoder is busy (a handler answering from inside a received message).
//!
//! Must never: do I/O, or hold a zlib state between messages unless the negotiated context
//! takeover needs it.

use super::codec::CodecConfig;
use super::deflate::Deflate;
use super::frame::{self, OpCode};

/// The sending half of one connection's framing state.
#[derive(Debug)]
pub struct Encoder {
    /// Boxed: most connections never negotiate deflate.
    deflate: Option<Box<Deflate>>,
    threshold: usize,
}

impl Encoder {
    /// An encoder for a connection configured by `cfg`; allocates no zlib state yet.
    pub fn new(cfg: &CodecConfig) -> Encoder {
        Encoder { deflate: cfg.deflate.map(|p| Box::new(Deflate::new(p))), threshold: cfg.compress_threshold }
    }

    /// Whether permessage-deflate was negotiated.
    pub fn deflates(&self) -> bool {
        self.deflate.is_some()
    }

    /// Bytes the zlib state kept between messages holds (none without context takeover).
    pub fn held_bytes(&self) -> usize {
        self.deflate.as_ref().map_or(0, |d| d.held_bytes())
    }

    /// Whether a zlib state is kept between messages (for tests and accounting).
    pub fn holds_state(&self) -> bool {
        self.deflate.as_ref().is_some_and(|d| d.holds_state().0)
    }

    /// Whether an outgoing message of `len` bytes would be compressed on this connection.
    pub fn compresses(&self, len: usize) -> bool {
        self.deflate.is_some() && len >= self.threshold
    }

    /// Appends one complete outgoing data frame to `out`, compressed when negotiated and the
    /// payload reaches the threshold. Uncompressed shared frames (broadcasts) do not need
    /// this: they are framed once with [`frame::frame_in_place`].
    pub fn encode_message(&mut self, binary: bool, payload: &[u8], out: &mut Vec<u8>) {
        let opcode = if binary { OpCode::Binary } else { OpCode::Text };
        let mut hdr = [0u8; frame::MAX_SERVER_HEADER];
        if self.compresses(payload.len()) {
            let deflate = self.deflate.as_mut().expect("checked by compresses()");
            let at = out.len();
            out.extend_from_slice(&hdr);
            deflate.compress_message(payload, out);
            let clen = out.len() - at - frame::MAX_SERVER_HEADER;
            let n = frame::write_server_header(&mut hdr, true, true, opcode, clen);
            // Move the header next to the compressed bytes: drop the unused reserved bytes.
            out.drain(at..at + frame::MAX_SERVER_HEADER - n);
            out[at..at + n].copy_from_slice(&hdr[..n]);
        } else {
            let n = frame::write_server_header(&mut hdr, true, false, opcode, payload.len());
            out.extend_from_slice(&hdr[..n]);
            out.extend_from_slice(payload);
        }
    }
}

/// Encodes a server control frame (ping, pong or close).
pub fn encode_control(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    debug_assert!(opcode.is_control() && payload.len() <= frame::MAX_CONTROL_PAYLOAD);
    frame::encode_frame(opcode, false, payload)
}

/// Encodes a close frame with a code and reason.
pub fn encode_close(code: u16, reason: &str) -> Vec<u8> {
    encode_control(OpCode::Close, &super::close::close_payload(code, reason))
}
