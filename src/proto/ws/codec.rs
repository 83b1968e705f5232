//! The server side of one WebSocket connection's framing state (RFC 6455 §5, RFC 7692), in
//! two halves that share nothing: the [`Decoder`] (received bytes into messages) here and the
//! [`Encoder`] (outgoing messages into frames) in [`super::encoder`], so a connection can send
//! while it is in the middle of decoding. [`ServerCodec`] holds both for callers that want one
//! value.
//!
//! The decoder owns: header rules that depend on state (masking, RSV bits, fragmentation
//! order), the message size limit, UTF-8 validity of text (checked per fragment, so a code
//! point may straddle frames), close frames, and inflation.
//!
//! Zero copy where possible: an unfragmented, uncompressed frame is unmasked in place in the
//! caller's receive buffer and handed back as a slice of it. Only fragmented or compressed
//! messages are assembled in the codec's own buffer.
//!
//! Bounded: the reassembly buffer never holds (nor has capacity for) more than the message
//! limit plus one byte, counted after decompression and checked as the output grows. It is
//! freed once its message has been handed out (at the next [`Decoder::decode`] or
//! [`Decoder::release_buffers`] call) and on any error, and the zlib states live only as
//! long as the negotiated context takeover needs (see [`super::deflate::Deflate`]), so an
//! idle connection holds neither. [`Decoder::held_bytes`] tells what it holds now.
//!
//! Must never: do I/O, look at a clock, or send anything by itself (a ping is reported to the
//! caller, which decides to answer with [`encode_control`]).

use super::close::{parse_close_payload, CloseFrame};
use super::deflate::{Deflate, DeflateParams, InflateError};
use super::error::{ProtocolViolation, WsError};
use super::frame::{self, parse_header, HeaderStatus, OpCode};
use super::mask::apply_mask;
use super::utf8::Utf8Validator;

pub use super::encoder::{encode_close, encode_control, Encoder};

/// Settings of one connection's codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecConfig {
    /// Largest message accepted, after reassembly and after decompression (else close 1009).
    pub max_message_size: usize,
    /// permessage-deflate parameters, when the handshake negotiated it.
    pub deflate: Option<DeflateParams>,
    /// Outgoing messages smaller than this are sent uncompressed even with deflate on.
    pub compress_threshold: usize,
}

impl Default for CodecConfig {
    fn default() -> Self {
        CodecConfig { max_message_size: 1 << 20, deflate: None, compress_threshold: 1024 }
    }
}

/// A message or control frame received from the client. Data borrow either the caller's
/// receive buffer (unmasked in place) or the codec's reassembly buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A complete text message, already checked to be UTF-8.
    Text(&'a mut [u8]),
    /// A complete binary message.
    Binary(&'a mut [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// The client's close frame; `None` when it carried no status code.
    Close(Option<CloseFrame<'a>>),
}

/// Result of one [`Decoder::decode`] step.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// The input holds no whole frame yet; at least `needed` more bytes are required.
    Incomplete { needed: usize },
    /// One frame was consumed from the front of the input. `message` is `None` for a
    /// fragment that does not finish its message.
    Frame { consumed: usize, message: Option<Message<'a>> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataKind {
    Text,
    Binary,
}

#[derive(Debug)]
struct Partial {
    kind: DataKind,
    compressed: bool,
    /// Bytes received on the wire for this message so far.
    wire_size: u64,
}

/// Both halves of one server-side connection's framing state.
#[derive(Debug)]
pub struct ServerCodec {
    /// Received bytes into messages.
    pub decoder: Decoder,
    /// Outgoing messages into frames.
    pub encoder: Encoder,
}

impl ServerCodec {
    pub fn new(cfg: CodecConfig) -> ServerCodec {
        ServerCodec { decoder: Decoder::new(cfg), encoder: Encoder::new(&cfg) }
    }

    /// The two halves, to be kept apart.
    pub fn into_parts(self) -> (Decoder, Encoder) {
        (self.decoder, self.encoder)
    }

    pub fn config(&self) -> &CodecConfig {
        self.decoder.config()
    }

    /// See [`Decoder::is_closed`].
    pub fn is_closed(&self) -> bool {
        self.decoder.is_closed()
    }

    /// See [`Decoder::decode`].
    pub fn decode<'a>(&'a mut self, input: &'a mut [u8]) -> Result<Decoded<'a>, WsError> {
        self.decoder.decode(input)
    }

    /// What both halves hold.
    pub fn held_bytes(&self) -> usize {
        self.decoder.held_bytes() + self.encoder.held_bytes()
    }

    /// See [`Decoder::release_buffers`].
    pub fn release_buffers(&mut self) {
        self.decoder.release_buffers()
    }

    /// See [`Encoder::compresses`].
    pub fn compresses(&self, len: usize) -> bool {
        self.encoder.compresses(len)
    }

    /// See [`Encoder::encode_message`].
    pub fn encode_message(&mut self, binary: bool, payload: &[u8], out: &mut Vec<u8>) {
        self.encoder.encode_message(binary, payload, out)
    }
}

/// The receiving half of one server-side connection's framing state.
#[derive(Debug)]
pub struct Decoder {
    cfg: CodecConfig,
    /// Boxed: most connections never negotiate deflate, and its state inline would quadruple
    /// the size of every connection's codec.
    deflate: Option<Box<Deflate>>,
    partial: Option<Partial>,
    assembled: Vec<u8>,
    utf8: Utf8Validator,
    /// The UTF-8 check of an uncompressed text frame whose payload has only partly arrived.
    peek: Option<Peek>,
    closed: bool,
}

/// How far the payload of the (uncompressed, text) frame at the front of the input has been
/// validated while it was still incomplete, so that invalid UTF-8 fails the connection as
/// soon as it arrives, not once the whole frame is in (Autobahn 6.4.3/6.4.4, "fail fast").
/// The bytes stay masked in the input; each read checks only what is new.
#[derive(Debug, Clone)]
struct Peek {
    checked: usize,
    utf8: Utf8Validator,
}

/// Bytes unmasked at a time into a stack buffer by [`Decoder::peek_text`].
const PEEK_CHUNK: usize = 4096;

impl Decoder {
    pub fn new(cfg: CodecConfig) -> Decoder {
        Decoder {
            cfg,
            deflate: cfg.deflate.map(|p| Box::new(Deflate::new(p))),
            partial: None,
            assembled: Vec::new(),
            utf8: Utf8Validator::default(),
            peek: None,
            closed: false,
        }
    }

    pub fn config(&self) -> &CodecConfig {
        &self.cfg
    }

    /// Whether a close frame has been received.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Compressed frames may exceed the message limit by deflate's framing overhead on
    /// incompressible data; the inflated size is what the limit really bounds.
    fn wire_limit(&self, compressed: bool) -> u64 {
        let max = self.cfg.max_message_size as u64;
        if compressed {
            max + max / 256 + 64
        } else {
            max
        }
    }

    /// Bytes this decoder holds beyond its own struct's inline size: the reassembly buffer's
    /// capacity and the zlib state it keeps (estimated, see [`super::deflate::DECOMPRESSOR_BYTES`]).
    /// Between messages this is a small constant.
    pub fn held_bytes(&self) -> usize {
        self.assembled.capacity() + self.deflate.as_ref().map_or(0, |d| d.held_bytes())
    }

    /// Frees the reassembly buffer of a message already handed out. The caller should call
    /// it once it is done with the messages of one read; [`Decoder::decode`] also does.
    pub fn release_buffers(&mut self) {
        if self.partial.is_none() && self.assembled.capacity() > 0 {
            self.assembled = Vec::new();
        }
    }

    /// The connection is failing: frees everything held and passes the error on.
    fn fail(&mut self, e: WsError) -> WsError {
        self.partial = None;
        self.peek = None;
        self.assembled = Vec::new();
        if let Some(d) = self.deflate.as_mut() {
            d.release();
        }
        e
    }

    /// Decodes at most one frame from the front of `input`, unmasking it in place.
    pub fn decode<'a>(&'a mut self, input: &'a mut [u8]) -> Result<Decoded<'a>, WsError> {
        if self.closed {
            return Err(ProtocolViolation::FrameAfterClose.into());
        }
        self.release_buffers();
        let (h, header_len) = match parse_header(input) {
            Err(e) => return Err(self.fail(e.into())),
            Ok(HeaderStatus::Incomplete { needed }) => return Ok(Decoded::Incomplete { needed }),
            Ok(HeaderStatus::Complete { header, header_len }) => (header, header_len),
        };
        if let Err(e) = self.check_header(&h) {
            return Err(self.fail(e));
        }
        let mask = h.mask.expect("checked by check_header");
        let total = header_len + h.payload_len as usize;
        if input.len() < total {
            if let Err(e) = self.peek_text(&h, &input[header_len..], mask) {
                return Err(self.fail(e));
            }
            return Ok(Decoded::Incomplete { needed: total - input.len() });
        }
        self.peek = None;
        let payload = &mut input[header_len..total];
        apply_mask(payload, mask, 0);

        let message = match h.opcode {
            OpCode::Ping => Some(Message::Ping(payload)),
            OpCode::Pong => Some(Message::Pong(payload)),
            OpCode::Close => {
                let close = match parse_close_payload(payload) {
                    Ok(c) => c,
                    Err(e) => return Err(self.fail(e.into())),
                };
                self.closed = true;
                self.partial = None;
                self.assembled = Vec::new();
                Some(Message::Close(close))
            }
            OpCode::Text | OpCode::Binary if h.fin && !h.rsv1 => {
                if h.opcode == OpCode::Text && simdutf8::basic::from_utf8(payload).is_err() {
                    return Err(self.fail(WsError::InvalidUtf8));
                }
                Some(if h.opcode == OpCode::Text { Message::Text(payload) } else { Message::Binary(payload) })
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                if h.opcode != OpCode::Continuation {
                    let kind = if h.opcode == OpCode::Text { DataKind::Text } else { DataKind::Binary };
                    self.partial = Some(Partial { kind, compressed: h.rsv1, wire_size: 0 });
                    self.assembled = Vec::new();
                    self.utf8.reset();
                }
                if let Err(e) = self.absorb(payload, h.fin) {
                    return Err(self.fail(e));
                }
                if !h.fin {
                    return Ok(Decoded::Frame { consumed: total, message: None });
                }
                let kind = self.partial.take().expect("a message is in progress").kind;
                let data = &mut self.assembled[..];
                let message = match kind {
                    DataKind::Text => Message::Text(data),
                    DataKind::Binary => Message::Binary(data),
                };
                return Ok(Decoded::Frame { consumed: total, message: Some(message) });
            }
        };
        Ok(Decoded::Frame { consumed: total, message })
    }

    /// Validates the newly arrived part of an incomplete text frame's payload (`avail`, still
    /// masked): uncompressed text only, as compressed data cannot be checked before inflating.
    fn peek_text(&mut self, h: &frame::FrameHeader, avail: &[u8], mask: [u8; 4]) -> Result<(), WsError> {
        let text = match h.opcode {
            OpCode::Text => !h.rsv1,
            OpCode::Continuation => {
                matches!(self.partial, Some(Partial { kind: DataKind::Text, compressed: false, .. }))
            }
            _ => false,
        };
        if !text || avail.is_empty() {
            return Ok(());
        }
        let continued = h.opcode == OpCode::Continuation;
        let utf8 = &self.utf8;
        let peek = self.peek.get_or_insert_with(|| Peek { checked: 0, utf8: if continued { utf8.clone() } else { Utf8Validator::default() } });
        let mut buf = [0u8; PEEK_CHUNK];
        while peek.checked < avail.len() {
            let n = (avail.len() - peek.checked).min(PEEK_CHUNK);
            let chunk = &mut buf[..n];
            chunk.copy_from_slice(&avail[peek.checked..peek.checked + n]);
            apply_mask(chunk, mask, peek.checked);
            peek.checked += n;
            if !peek.utf8.feed(chunk, false) {
                return Err(WsError::InvalidUtf8);
            }
        }
        Ok(())
    }

    /// The header rules that depend on the connection's state (RFC 6455 §5.1–5.4, RFC 7692
    /// §6) and the message limit on the wire size.
    fn check_header(&self, h: &frame::FrameHeader) -> Result<(), WsError> {
        h.mask.ok_or(ProtocolViolation::UnmaskedClientFrame)?;
        if h.rsv2 || h.rsv3 {
            return Err(ProtocolViolation::ReservedBits.into());
        }
        let starts_data = matches!(h.opcode, OpCode::Text | OpCode::Binary);
        if h.rsv1 && !(starts_data && self.deflate.is_some()) {
            return Err(ProtocolViolation::ReservedBits.into());
        }
        match (h.opcode, &self.partial) {
            (OpCode::Continuation, None) => return Err(ProtocolViolation::UnexpectedContinuation.into()),
            (OpCode::Text | OpCode::Binary, Some(_)) => return Err(ProtocolViolation::ExpectedContinuation.into()),
            _ => {}
        }
        if !h.opcode.is_control() {
            let (so_far, compressed) = match &self.partial {
                Some(p) => (p.wire_size, p.compressed),
                None => (0, h.rsv1),
            };
            let size = so_far.saturating_add(h.payload_len);
            if size > self.wire_limit(compressed) {
                return Err(WsError::MessageTooBig { size, max: self.cfg.max_message_size });
            }
        }
        Ok(())
    }

    /// Appends (or inflates) one data fragment into the reassembly buffer.
    fn absorb(&mut self, payload: &[u8], fin: bool) -> Result<(), WsError> {
        let partial = self.partial.as_mut().expect("a message is in progress");
        partial.wire_size += payload.len() as u64;
        let (kind, compressed) = (partial.kind, partial.compressed);
        let before = self.assembled.len();
        let max = self.cfg.max_message_size;
        if compressed {
            let deflate = self.deflate.as_mut().expect("RSV1 is only accepted with deflate negotiated");
            deflate.decompress_fragment(payload, fin, &mut self.assembled, max).map_err(|e| match e {
                InflateError::TooBig { limit } => WsError::MessageTooBig { size: limit as u64 + 1, max },
                InflateError::Corrupt(m) => WsError::BadCompression(m),
            })?;
        } else {
            // check_header bounded the total at `max`: grow at most to it, not past it.
            let need = before + payload.len();
            if need > self.assembled.capacity() {
                let target = need.max((self.assembled.capacity() * 2).min(max));
                self.assembled.reserve_exact(target - before);
            }
            self.assembled.extend_from_slice(payload);
        }
        if kind == DataKind::Text && !self.utf8.feed(&self.assembled[before..], fin) {
            return Err(WsError::InvalidUtf8);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ws::close::code;
    use crate::proto::ws::deflate::{negotiate, parse_extensions, DeflatePolicy};
    use crate::proto::ws::frame::encode_client_frame;
    use proptest::prelude::*;

    const M: [u8; 4] = [1, 2, 3, 4];

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    /// Feeds `wire` in chunks split at `cuts`, like partial reads into a growing buffer.
    fn run(codec: &mut ServerCodec, wire: &[u8], cuts: &[usize]) -> Result<Vec<Owned>, WsError> {
        let mut pts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        pts.push(wire.len());
        pts.sort_unstable();
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut fed = 0;
        for p in pts {
            buf.extend_from_slice(&wire[fed..p]);
            fed = p;
            while !(codec.is_closed() && buf.is_empty()) {
                match codec.decode(&mut buf)? {
                    Decoded::Incomplete { needed } => {
                        assert!(needed > 0);
                        break;
                    }
                    Decoded::Frame { consumed, message } => {
                        if let Some(m) = message {
                            out.push(match m {
                                Message::Text(d) => Owned::Text(d.to_vec()),
                                Message::Binary(d) => Owned::Binary(d.to_vec()),
                                Message::Ping(d) => Owned::Ping(d.to_vec()),
                                Message::Pong(d) => Owned::Pong(d.to_vec()),
                                Message::Close(c) => Owned::Close(c.map(|c| (c.code, c.reason.to_string()))),
                            });
                        }
                        buf.drain(..consumed);
                    }
                }
            }
        }
        Ok(out)
    }

    fn codec() -> ServerCodec {
        ServerCodec::new(CodecConfig { max_message_size: 1000, ..Default::default() })
    }

    /// A codec with deflate as `offer` negotiates under the policy that keeps context both
    /// ways unless the client asks otherwise (the RFC 7692 examples rely on it).
    fn deflate_codec(offer: &str) -> ServerCodec {
        let pol = DeflatePolicy { server_no_context_takeover: false, client_no_context_takeover: false, ..Default::default() };
        let p = negotiate(&parse_extensions([offer]), &pol).unwrap().0;
        ServerCodec::new(CodecConfig { max_message_size: 1000, deflate: Some(p), compress_threshold: 0 })
    }

    fn cf(fin: bool, op: OpCode, p: &[u8]) -> Vec<u8> {
        encode_client_frame(fin, false, op, M, p)
    }

    fn err(codec: &mut ServerCodec, wire: &[u8]) -> u16 {
        run(codec, wire, &[]).unwrap_err().close_code()
    }

    #[test]
    fn rfc_examples_and_fragmentation_with_interleaved_ping() {
        let mut wire = vec![0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        wire.extend(cf(false, OpCode::Text, b"Hel"));
        wire.extend(cf(true, OpCode::Ping, b"p"));
        wire.extend(cf(true, OpCode::Continuation, b"lo"));
        wire.extend(cf(true, OpCode::Binary, &[0, 1, 2]));
        wire.extend(cf(true, OpCode::Close, &[0x03, 0xe8, b'b', b'y', b'e']));
        let got = run(&mut codec(), &wire, &[]).unwrap();
        assert_eq!(
            got,
            vec![
                Owned::Text(b"Hello".to_vec()),
                Owned::Ping(b"p".to_vec()),
                Owned::Text(b"Hello".to_vec()),
                Owned::Binary(vec![0, 1, 2]),
                Owned::Close(Some((1000, "bye".into()))),
            ]
        );
    }

    #[test]
    fn protocol_violations_close_1002() {
        // Unmasked client frame.
        assert_eq!(err(&mut codec(), &[0x81, 0x01, b'a']), code::PROTOCOL_ERROR);
        // RSV1 without deflate; RSV2; RSV3.
        for rsv in [0x40u8, 0x20, 0x10] {
            let mut f = cf(true, OpCode::Text, b"a");
            f[0] |= rsv;
            assert_eq!(err(&mut codec(), &f), code::PROTOCOL_ERROR);
        }
        // RSV1 on a control frame even with deflate.
        let mut f = cf(true, OpCode::Ping, b"a");
        f[0] |= 0x40;
        assert_eq!(err(&mut deflate_codec("permessage-deflate"), &f), code::PROTOCOL_ERROR);
        // Continuation with nothing started; new data frame inside a fragmented message.
        assert_eq!(err(&mut codec(), &cf(true, OpCode::Continuation, b"a")), code::PROTOCOL_ERROR);
        let mut w = cf(false, OpCode::Text, b"a");
        w.extend(cf(true, OpCode::Text, b"b"));
        assert_eq!(err(&mut codec(), &w), code::PROTOCOL_ERROR);
        // Fragmented and oversized control frames; reserved opcodes.
        assert_eq!(err(&mut codec(), &cf(false, OpCode::Ping, b"a")), code::PROTOCOL_ERROR);
        assert_eq!(err(&mut codec(), &cf(true, OpCode::Ping, &[0; 126])), code::PROTOCOL_ERROR);
        assert_eq!(err(&mut codec(), &[0x83, 0x80, 1, 2, 3, 4]), code::PROTOCOL_ERROR);
        // Close frames: 1-byte payload, codes that may not be sent, non-UTF-8 reason.
        assert_eq!(err(&mut codec(), &cf(true, OpCode::Close, &[3])), code::PROTOCOL_ERROR);
        for c in [999u16, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(err(&mut codec(), &cf(true, OpCode::Close, &c.to_be_bytes())), code::PROTOCOL_ERROR, "{c}");
        }
        assert_eq!(err(&mut codec(), &cf(true, OpCode::Close, &[0x03, 0xe8, 0xc0])), code::PROTOCOL_ERROR);
        // Anything after the close frame.
        let mut w = cf(true, OpCode::Close, &[]);
        w.extend(cf(true, OpCode::Text, b"x"));
        assert_eq!(err(&mut codec(), &w), code::PROTOCOL_ERROR);
    }

    #[test]
    fn size_limit_1009_before_the_payload_arrives() {
        let f = cf(true, OpCode::Binary, &[0; 1001]);
        // Only the header is given: the codec refuses without waiting for the payload.
        assert_eq!(codec().decode(&mut f[..8].to_vec()).unwrap_err().close_code(), code::MESSAGE_TOO_BIG);
        let mut w = cf(false, OpCode::Binary, &[0; 600]);
        w.extend(cf(true, OpCode::Continuation, &[0; 401]));
        assert_eq!(err(&mut codec(), &w), code::MESSAGE_TOO_BIG);
        assert!(run(&mut codec(), &cf(true, OpCode::Binary, &[0; 1000]), &[]).is_ok());
    }

    #[test]
    fn invalid_utf8_1007_fails_fast_in_a_fragment() {
        assert_eq!(err(&mut codec(), &cf(true, OpCode::Text, b"\xff")), code::INVALID_PAYLOAD);
        let mut c = codec();
        // The first fragment alone is already invalid: the error comes before the message ends.
        let mut f = cf(false, OpCode::Text, b"ab\xc0\xafcd");
        assert_eq!(c.decode(&mut f).unwrap_err().close_code(), code::INVALID_PAYLOAD);
        // A message truncated inside a code point.
        let mut w = cf(false, OpCode::Text, b"\xe2\x82");
        w.extend(cf(true, OpCode::Continuation, b""));
        assert_eq!(err(&mut codec(), &w), code::INVALID_PAYLOAD);
        // A code point straddling two fragments is fine.
        let mut w = cf(false, OpCode::Text, b"\xe2\x82");
        w.extend(cf(true, OpCode::Continuation, b"\xac"));
        assert_eq!(run(&mut codec(), &w, &[]).unwrap(), vec![Owned::Text("€".as_bytes().to_vec())]);
    }

    #[test]
    fn invalid_utf8_1007_fails_fast_inside_an_incomplete_frame() {
        // Autobahn 6.4.3: one text frame arriving in chops; the second chop is invalid.
        let wire = cf(true, OpCode::Text, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited");
        let mut c = codec();
        let mut buf = wire[..2 + 4 + 11].to_vec();
        assert!(matches!(c.decode(&mut buf), Ok(Decoded::Incomplete { .. })));
        buf.extend_from_slice(&wire[17..21]);
        assert_eq!(c.decode(&mut buf).unwrap_err().close_code(), code::INVALID_PAYLOAD);
        // Autobahn 6.4.4: the invalid byte alone, the frame still far from complete.
        let mut c = codec();
        let mut buf = wire[..2 + 4 + 12].to_vec();
        assert!(matches!(c.decode(&mut buf), Ok(Decoded::Incomplete { .. })));
        buf.push(wire[18]);
        assert_eq!(c.decode(&mut buf).unwrap_err().close_code(), code::INVALID_PAYLOAD);
        // In a continuation frame, with a code point straddling the fragments.
        let mut wire = cf(false, OpCode::Text, b"ab\xe2\x82");
        let first = wire.len();
        wire.extend(cf(true, OpCode::Continuation, b"\xacxyz\xffmore"));
        let mut c = codec();
        let mut buf = wire[..first + 2 + 4 + 3].to_vec();
        assert!(matches!(c.decode(&mut buf), Ok(Decoded::Frame { message: None, .. })));
        buf.drain(..first);
        assert!(matches!(c.decode(&mut buf), Ok(Decoded::Incomplete { .. })));
        buf.extend_from_slice(&wire[first + 9..first + 11]);
        assert_eq!(c.decode(&mut buf).unwrap_err().close_code(), code::INVALID_PAYLOAD);
        // Valid text arriving a byte at a time is delivered whole and unchanged.
        let text = "κόσμε€𝄞 hello".repeat(700);
        let wire = cf(true, OpCode::Text, text.as_bytes());
        let cuts: Vec<usize> = (1..wire.len()).step_by(97).collect();
        assert_eq!(run(&mut codec_max(1 << 16), &wire, &cuts).unwrap(), vec![Owned::Text(text.into_bytes())]);
        let cuts: Vec<usize> = (1..200).collect();
        let short = cf(true, OpCode::Text, "κόσμε€𝄞".repeat(20).as_bytes());
        assert_eq!(run(&mut codec_max(1 << 16), &short, &cuts).unwrap(), vec![Owned::Text("κόσμε€𝄞".repeat(20).into_bytes())]);
        // Compressed frames are not peeked (they cannot be checked before inflating).
    }

    fn codec_max(max: usize) -> ServerCodec {
        ServerCodec::new(CodecConfig { max_message_size: max, ..Default::default() })
    }

    #[test]
    fn inflates_compressed_messages_and_stops_bombs() {
        // RFC 7692 §7.2.3.1/2: "Hello" then a back-reference to it (context takeover).
        let mut c = deflate_codec("permessage-deflate");
        let mut w = encode_client_frame(true, true, OpCode::Text, M, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
        w.extend(encode_client_frame(true, true, OpCode::Text, M, &[0xf2, 0x00, 0x11, 0x00, 0x00]));
        // §7.2.3.3 compressed data split over two fragments.
        w.extend(encode_client_frame(false, true, OpCode::Text, M, &[0xf2, 0x48, 0xcd]));
        w.extend(encode_client_frame(true, false, OpCode::Continuation, M, &[0xc9, 0xc9, 0x07, 0x00]));
        let got = run(&mut c, &w, &[]).unwrap();
        assert_eq!(got, vec![Owned::Text(b"Hello".to_vec()); 3]);
        // RSV1 on a continuation frame is a protocol error.
        let mut w = encode_client_frame(false, true, OpCode::Text, M, &[0xf2]);
        w.extend(encode_client_frame(true, true, OpCode::Continuation, M, &[0x48]));
        assert_eq!(err(&mut deflate_codec("permessage-deflate"), &w), code::PROTOCOL_ERROR);
        // A bomb: 1 MB of zeros compresses to ~1 KB; the limit is 1000 bytes inflated.
        let mut server = Deflate::new(*c.decoder.deflate.as_ref().unwrap().params());
        let mut bomb = Vec::new();
        server.compress_message(&vec![0u8; 1 << 20], &mut bomb);
        let w = encode_client_frame(true, true, OpCode::Binary, M, &bomb);
        assert_eq!(err(&mut deflate_codec("permessage-deflate"), &w), code::MESSAGE_TOO_BIG);
        // Corrupt deflate data.
        let w = encode_client_frame(true, true, OpCode::Binary, M, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(err(&mut deflate_codec("permessage-deflate"), &w), code::INVALID_PAYLOAD);
    }

    #[test]
    fn encodes_compressed_frames_the_client_can_inflate() {
        for offer in ["permessage-deflate", "permessage-deflate; server_no_context_takeover; server_max_window_bits=10"] {
            let mut server = deflate_codec(offer);
            let params = *server.decoder.deflate.as_ref().unwrap().params();
            // A mirror codec plays the client: it inflates with the server's window.
            let mut client = ServerCodec::new(CodecConfig {
                max_message_size: 1 << 20,
                deflate: Some(DeflateParams {
                    client_max_window_bits: params.server_max_window_bits,
                    client_no_context_takeover: params.server_no_context_takeover,
                    ..params
                }),
                compress_threshold: 0,
            });
            for msg in ["hello hello hello hello", "second message, hello again", ""] {
                let mut out = Vec::new();
                server.encode_message(false, msg.as_bytes(), &mut out);
                assert_eq!(out[0], 0xC1, "FIN + RSV1 + text");
                // Re-mask the server frame as a client frame for the mirror.
                let (h, n) = match parse_header(&out).unwrap() {
                    HeaderStatus::Complete { header, header_len } => (header, header_len),
                    _ => unreachable!(),
                };
                assert_eq!(h.payload_len as usize, out.len() - n);
                let wire = encode_client_frame(true, true, OpCode::Text, M, &out[n..]);
                assert_eq!(run(&mut client, &wire, &[]).unwrap(), vec![Owned::Text(msg.as_bytes().to_vec())]);
            }
        }
    }

    /// A codec under the default policy (no context takeover both ways), `max` bytes limit.
    fn bounded_codec(max: usize) -> ServerCodec {
        let p = negotiate(&parse_extensions(["permessage-deflate; client_max_window_bits"]), &DeflatePolicy::default()).unwrap().0;
        ServerCodec::new(CodecConfig { max_message_size: max, deflate: Some(p), compress_threshold: 0 })
    }

    /// Raw deflate data inflating to `mb` MiB of zeros, about 1 KiB per MiB: one compressed
    /// MiB, then a second MiB compressed against a window of zeros repeated (it only
    /// refers back into zeros, so it is a valid continuation of any all-zero window).
    fn zero_bomb(mb: usize) -> Vec<u8> {
        let p = DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            level: 9,
        };
        let mut d = Deflate::new(p);
        let zeros = vec![0u8; 1 << 20];
        let (mut first, mut next) = (Vec::new(), Vec::new());
        d.compress_message(&zeros, &mut first);
        first.extend_from_slice(&[0, 0, 0xff, 0xff]); // compress_message strips the sync tail
        d.compress_message(&zeros, &mut next);
        next.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut bomb = first;
        for _ in 1..mb {
            bomb.extend_from_slice(&next);
        }
        bomb
    }

    #[test]
    fn zero_bomb_inflates_as_built() {
        let mut c = bounded_codec(3 << 20);
        let wire = encode_client_frame(true, true, OpCode::Binary, M, &zero_bomb(3));
        assert_eq!(run(&mut c, &wire, &[]).unwrap(), vec![Owned::Binary(vec![0; 3 << 20])]);
    }

    /// A 100 MiB bomb (~100 KiB on the wire) sent in 1 KiB fragments against a 1 MiB limit:
    /// the codec closes with 1009 once the inflated size passes the limit, never holding more
    /// than the limit plus one decompressor and a small constant, and frees it all on error.
    #[test]
    fn bomb_in_fragments_holds_at_most_the_limit() {
        const MAX: usize = 1 << 20;
        let bomb = zero_bomb(100);
        let mut c = bounded_codec(MAX);
        let (mut sent, mut peak, mut result) = (0usize, 0usize, None);
        for (i, chunk) in bomb.chunks(1024).enumerate() {
            let op = if i == 0 { OpCode::Binary } else { OpCode::Continuation };
            let mut f = encode_client_frame(false, i == 0, op, M, chunk);
            sent += f.len();
            match c.decode(&mut f) {
                Ok(Decoded::Frame { message: None, .. }) => peak = peak.max(c.held_bytes()),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => {
                    result = Some(e.close_code());
                    break;
                }
            }
        }
        assert_eq!(result, Some(code::MESSAGE_TOO_BIG), "the limit was reached after {sent} bytes");
        // Each half of the codec has its own (boxed) deflate state.
        assert!(peak <= MAX + 1 + crate::proto::ws::deflate::DECOMPRESSOR_BYTES + 2 * std::mem::size_of::<Deflate>(), "peak {peak}");
        eprintln!("bomb: {sent} bytes sent, peak held {peak}");
        assert!(sent < 4 * 1024, "stopped early: {sent} bytes sent");
        assert_eq!(c.held_bytes(), 2 * std::mem::size_of::<Deflate>(), "everything freed on error");
        assert_eq!((c.decoder.deflate.as_ref().unwrap().holds_state().1, c.encoder.holds_state()), (false, false));
    }

    #[test]
    fn one_frame_bomb_never_grows_past_the_limit() {
        // The whole bomb in one frame: the error comes from inside inflation, not after it.
        const MAX: usize = 100_000;
        let mut c = bounded_codec(MAX);
        let mut f = encode_client_frame(true, true, OpCode::Binary, M, &zero_bomb(1));
        assert_eq!(c.decode(&mut f).unwrap_err().close_code(), code::MESSAGE_TOO_BIG);
        assert_eq!(c.held_bytes(), 2 * std::mem::size_of::<Deflate>());
    }

    /// An unfinished fragmented message holds what it inflated so far (within the limit),
    /// and nothing more: its buffer has no spare capacity past the limit.
    #[test]
    fn unfinished_fragment_is_bounded_by_the_limit() {
        const MAX: usize = 300_000;
        let bomb = zero_bomb(1);
        let mut c = bounded_codec(MAX);
        let mut f = encode_client_frame(false, true, OpCode::Text, M, &bomb[..200]);
        assert!(matches!(c.decode(&mut f).unwrap(), Decoded::Frame { message: None, .. }));
        let held = c.held_bytes();
        assert!(held <= MAX + 1 + crate::proto::ws::deflate::DECOMPRESSOR_BYTES + std::mem::size_of::<Deflate>(), "{held}");
        assert!(c.decoder.assembled.len() * 2 + 2048 >= c.decoder.assembled.capacity(), "capacity proportional to content");
    }

    proptest! {
        /// After every completed message, compressed or not, fragmented any way, the codec
        /// holds no reassembly buffer and (no context takeover) no zlib state: only its
        /// `Deflate` header. Outgoing compressed messages leave no state either.
        #[test]
        fn nothing_held_between_messages(msgs in proptest::collection::vec((proptest::collection::vec(0u8..3, 0..5000), 1usize..4, any::<bool>()), 1..5)) {
            let mut c = bounded_codec(1 << 16);
            let p = *c.decoder.deflate.as_ref().unwrap().params();
            let mut client = Deflate::new(DeflateParams { server_no_context_takeover: p.client_no_context_takeover, ..p });
            for (payload, frags, compress) in &msgs {
                let body = if *compress {
                    let mut z = Vec::new();
                    client.compress_message(payload, &mut z);
                    z
                } else {
                    payload.clone()
                };
                let step = body.len().div_ceil(*frags).max(1);
                let chunks: Vec<&[u8]> = if body.is_empty() { vec![&body[..]] } else { body.chunks(step).collect() };
                let mut got = None;
                for (i, ch) in chunks.iter().enumerate() {
                    let op = if i == 0 { OpCode::Binary } else { OpCode::Continuation };
                    let mut f = encode_client_frame(i == chunks.len() - 1, i == 0 && *compress, op, M, ch);
                    match c.decode(&mut f).unwrap() {
                        Decoded::Frame { message: Some(Message::Binary(d)), .. } => got = Some(d.to_vec()),
                        Decoded::Frame { message: None, .. } => {}
                        other => panic!("{other:?}"),
                    }
                }
                prop_assert_eq!(got.as_ref(), Some(payload));
                c.release_buffers();
                prop_assert_eq!(c.held_bytes(), 2 * std::mem::size_of::<Deflate>());
                let mut out = Vec::new();
                c.encode_message(true, payload, &mut out);
                prop_assert_eq!((c.decoder.deflate.as_ref().unwrap().holds_state().1, c.encoder.holds_state()), (false, false));
            }
        }
    }

    fn arb_message() -> impl Strategy<Value = (u8, Vec<u8>, usize)> {
        // (kind: 0 text, 1 binary, 2 ping; payload; fragments)
        (0u8..3, proptest::collection::vec(any::<u8>(), 0..300), 1usize..4).prop_map(|(k, p, f)| {
            let p = if k == 0 { String::from_utf8_lossy(&p).into_owned().into_bytes() } else { p };
            let p = if k == 2 { p[..p.len().min(125)].to_vec() } else { p };
            (k, p, if k == 2 { 1 } else { f })
        })
    }

    proptest! {
        /// Encode → decode is the identity for any messages, fragmented any way, with the
        /// wire cut into partial reads at any positions.
        #[test]
        fn roundtrip_any_split(msgs in proptest::collection::vec(arb_message(), 1..6),
                               cuts in proptest::collection::vec(any::<usize>(), 0..8),
                               mask in any::<[u8; 4]>()) {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for (k, p, frags) in &msgs {
                match k {
                    2 => { wire.extend(encode_client_frame(true, false, OpCode::Ping, mask, p)); expected.push(Owned::Ping(p.clone())); }
                    _ => {
                        let op = if *k == 0 { OpCode::Text } else { OpCode::Binary };
                        let step = p.len().div_ceil(*frags).max(1);
                        let chunks: Vec<&[u8]> = if p.is_empty() { vec![&p[..]] } else { p.chunks(step).collect() };
                        for (i, c) in chunks.iter().enumerate() {
                            let o = if i == 0 { op } else { OpCode::Continuation };
                            wire.extend(encode_client_frame(i == chunks.len() - 1, false, o, mask, c));
                        }
                        expected.push(if *k == 0 { Owned::Text(p.clone()) } else { Owned::Binary(p.clone()) });
                    }
                }
            }
            let mut c = ServerCodec::new(CodecConfig { max_message_size: 1 << 16, ..Default::default() });
            prop_assert_eq!(run(&mut c, &wire, &cuts).unwrap(), expected);
        }
    }
}
