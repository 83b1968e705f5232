//! permessage-deflate (RFC 7692): negotiation of the extension's parameters, and the
//! per-connection compressor and decompressor.
//!
//! Owns: parsing `Sec-WebSocket-Extensions`, choosing the parameters the server agrees to,
//! formatting the response header, and the `flate2` (zlib-rs) streams with the negotiated
//! window sizes and context-takeover rules. Decompression stops at the message size limit, so
//! a decompression bomb costs at most that much memory.
//!
//! Must never: frame data or look at RSV bits; the codec does that.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// One extension offered by the client: its name and parameters in offer order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionOffer {
    pub name: String,
    pub params: Vec<(String, Option<String>)>,
}

/// Parses one or more `Sec-WebSocket-Extensions` header values (RFC 6455 §9.1 grammar:
/// comma-separated extensions, `;`-separated parameters, values optionally quoted).
pub fn parse_extensions<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<ExtensionOffer> {
    let mut out = Vec::new();
    for value in values {
        for ext in value.split(',') {
            let mut parts = ext.split(';').map(str::trim);
            let name = match parts.next() {
                Some(n) if !n.is_empty() => n.to_ascii_lowercase(),
                _ => continue,
            };
            let params = parts
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim().trim_matches('"').to_string())),
                    None => (p.to_ascii_lowercase(), None),
                })
                .collect();
            out.push(ExtensionOffer { name, params });
        }
    }
    out
}

/// What the server is willing to do. The defaults accept any valid offer and always answer
/// with both `server_no_context_takeover` and `client_no_context_takeover`, which RFC 7692
/// lets a server add to any response (§7.1.1.1, §7.1.1.2): no zlib state then outlives a
/// message, so an idle connection costs no more with compression than without. The price
/// is compression of each message on its own (Socket.IO only compresses messages of at
/// least 1 KiB, where that matters little).
///
/// `client_max_window_bits` stays 15 by default: a smaller client window would only shrink
/// a decompressor that zlib-rs sizes for 32 KiB anyway (see [`DECOMPRESSOR_BYTES`]), while
/// costing the client's compression ratio; without context takeover the decompressor exists
/// only while a message is inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflatePolicy {
    /// Answer (and apply) server_no_context_takeover even when the client did not ask: the
    /// server's compressor is then free between messages (shared by the thread's connections).
    pub server_no_context_takeover: bool,
    /// Tell the client not to keep its context even when it did not offer to: the server's
    /// decompressor is then free between messages.
    pub client_no_context_takeover: bool,
    /// Largest LZ77 window the server will compress with (9..=15).
    pub server_max_window_bits: u8,
    /// Window to ask the client for, when it advertised `client_max_window_bits` (9..=15).
    pub client_max_window_bits: u8,
    /// zlib compression level (0..=9).
    pub level: u32,
}

impl Default for DeflatePolicy {
    fn default() -> Self {
        DeflatePolicy { server_no_context_takeover: true, client_no_context_takeover: true, server_max_window_bits: 15, client_max_window_bits: 15, level: 6 }
    }
}

/// The agreed parameters of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    pub server_no_context_takeover: bool,
    pub client_no_context_takeover: bool,
    pub server_max_window_bits: u8,
    pub client_max_window_bits: u8,
    pub level: u32,
}

impl DeflateParams {
    /// The `Sec-WebSocket-Extensions` response value for these parameters.
    pub fn response_header(&self, client_bits_offered: bool) -> String {
        let mut s = String::from("permessage-deflate");
        if self.server_no_context_takeover {
            s.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            s.push_str("; client_no_context_takeover");
        }
        if self.server_max_window_bits < 15 {
            s.push_str(&format!("; server_max_window_bits={}", self.server_max_window_bits));
        }
        if client_bits_offered && self.client_max_window_bits < 15 {
            s.push_str(&format!("; client_max_window_bits={}", self.client_max_window_bits));
        }
        s
    }
}

fn parse_bits(v: &str) -> Option<u8> {
    // RFC 7692 §7.1.2: 1*DIGIT without leading zeros, 8..=15.
    if v.is_empty() || v.len() > 2 || v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u8 = v.parse().ok()?;
    (8..=15).contains(&n).then_some(n)
}

/// Picks the first acceptable permessage-deflate offer. Returns the agreed parameters and the
/// response header value, or `None` to decline (no offer, or none acceptable — the connection
/// then goes on without compression, as RFC 7692 §5 allows).
pub fn negotiate(offers: &[ExtensionOffer], policy: &DeflatePolicy) -> Option<(DeflateParams, String)> {
    'offers: for offer in offers.iter().filter(|o| o.name == "permessage-deflate") {
        let mut p = DeflateParams {
            server_no_context_takeover: policy.server_no_context_takeover,
            client_no_context_takeover: policy.client_no_context_takeover,
            server_max_window_bits: policy.server_max_window_bits,
            client_max_window_bits: 15,
            level: policy.level,
        };
        let mut seen: Vec<&str> = Vec::new();
        let mut client_bits_offered = false;
        for (k, v) in &offer.params {
            if seen.contains(&k.as_str()) {
                continue 'offers; // a parameter may appear once (§7.1)
            }
            seen.push(k);
            match (k.as_str(), v.as_deref()) {
                ("server_no_context_takeover", None) => p.server_no_context_takeover = true,
                ("client_no_context_takeover", None) => p.client_no_context_takeover = true,
                ("server_max_window_bits", Some(v)) => match parse_bits(v) {
                    // zlib cannot compress with an 8-bit window: decline rather than break it.
                    Some(8) | None => continue 'offers,
                    Some(n) => p.server_max_window_bits = p.server_max_window_bits.min(n),
                },
                ("client_max_window_bits", None) => {
                    client_bits_offered = true;
                    p.client_max_window_bits = policy.client_max_window_bits;
                }
                ("client_max_window_bits", Some(v)) => match parse_bits(v) {
                    None => continue 'offers,
                    Some(n) => {
                        client_bits_offered = true;
                        p.client_max_window_bits = policy.client_max_window_bits.min(n);
                    }
                },
                _ => continue 'offers, // unknown parameter or a value where none belongs
            }
        }
        let header = p.response_header(client_bits_offered);
        return Some((p, header));
    }
    None
}

/// Why decompression failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InflateError {
    /// The output would pass the limit (the caller closes with 1009).
    TooBig { limit: usize },
    /// The stream is not valid deflate data (close 1007).
    Corrupt(String),
}

/// Bytes zlib-rs allocates for one compressor with a `bits`-bit window (memLevel 8): about
/// 250 KB at 9 bits and 380 KB at 15 (measured by `tests/deflate_memory.rs`, which checks
/// that this stays an upper bound).
pub fn compressor_bytes(bits: u8) -> usize {
    248 * 1024 + (4usize << bits.clamp(9, 15))
}

/// Bytes zlib-rs allocates for one decompressor: about 47 KB whatever the window (its
/// window buffer is always the 32 KiB maximum). Checked like [`compressor_bytes`].
pub const DECOMPRESSOR_BYTES: usize = 48 * 1024;

/// Idle zlib states kept per thread for reuse (see [`pool_bytes`]).
const POOL_COMPRESSORS: usize = 2;
const POOL_DECOMPRESSORS: usize = 8;

/// zlib states between messages, shared by the connections of one thread. A state enters
/// it reset, so nothing of one connection's data can leak into another's message. With
/// no context takeover a connection holds a state only while it processes a message, and
/// without this pool every message would allocate (and zero) a fresh 48–380 KB.
#[derive(Default)]
struct Pool {
    compressors: Vec<(u32, u8, Compress)>,
    decompressors: Vec<Decompress>,
}

thread_local! {
    static POOL: std::cell::RefCell<Pool> = std::cell::RefCell::new(Pool::default());
}

fn take_compressor(level: u32, bits: u8) -> Compress {
    let pooled = POOL.with_borrow_mut(|p| {
        let at = p.compressors.iter().position(|(l, b, _)| (*l, *b) == (level, bits))?;
        Some(p.compressors.swap_remove(at).2)
    });
    pooled.unwrap_or_else(|| Compress::new_with_window_bits(Compression::new(level), false, bits))
}

fn give_back_compressor(level: u32, bits: u8, mut c: Compress) {
    c.reset();
    POOL.with_borrow_mut(|p| {
        if p.compressors.len() < POOL_COMPRESSORS {
            p.compressors.push((level, bits, c));
        }
    });
}

fn take_decompressor() -> Decompress {
    // Inflating with the largest window is correct whatever window the peer used, and
    // zlib-rs allocates the same for every size: one kind of decompressor fits all.
    POOL.with_borrow_mut(|p| p.decompressors.pop()).unwrap_or_else(|| Decompress::new_with_window_bits(false, 15))
}

fn give_back_decompressor(mut d: Decompress) {
    d.reset(false);
    POOL.with_borrow_mut(|p| {
        if p.decompressors.len() < POOL_DECOMPRESSORS {
            p.decompressors.push(d);
        }
    });
}

/// Bytes held by this thread's idle zlib states (a per-worker constant, at most two
/// compressors and eight decompressors).
pub fn pool_bytes() -> usize {
    POOL.with_borrow(|p| p.compressors.iter().map(|(_, b, _)| compressor_bytes(*b)).sum::<usize>() + p.decompressors.len() * DECOMPRESSOR_BYTES)
}

/// Drops this thread's idle zlib states.
pub fn clear_pool() {
    POOL.with_borrow_mut(|p| *p = Pool::default());
}

/// The compressor and decompressor of one connection, each allocated only when needed.
///
/// A zlib state exists while a compressed message is being inflated or deflated. Between
/// messages it is kept only when the negotiated parameters need it (context takeover in that
/// direction); otherwise it goes back to the thread's pool, so an idle connection holds none.
pub struct Deflate {
    params: DeflateParams,
    compress: Option<Compress>,
    decompress: Option<Decompress>,
}

impl std::fmt::Debug for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deflate")
            .field("params", &self.params)
            .field("compress", &self.compress.is_some())
            .field("decompress", &self.decompress.is_some())
            .finish()
    }
}

const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

impl Deflate {
    /// Allocates nothing: the zlib states come when the first message needs them.
    pub fn new(params: DeflateParams) -> Deflate {
        Deflate { params, compress: None, decompress: None }
    }

    pub fn params(&self) -> &DeflateParams {
        &self.params
    }

    /// The server compresses with at least 9 bits: zlib has no 8-bit raw window.
    fn compress_bits(&self) -> u8 {
        self.params.server_max_window_bits.max(9)
    }

    /// Bytes this connection's deflate state holds now: the zlib states it keeps (none
    /// between messages without context takeover) and itself.
    pub fn held_bytes(&self) -> usize {
        std::mem::size_of::<Deflate>()
            + self.compress.as_ref().map_or(0, |_| compressor_bytes(self.compress_bits()))
            + self.decompress.as_ref().map_or(0, |_| DECOMPRESSOR_BYTES)
    }

    /// Whether a zlib state is held (for tests and accounting).
    pub fn holds_state(&self) -> (bool, bool) {
        (self.compress.is_some(), self.decompress.is_some())
    }

    /// Drops both zlib states (the connection is failing; nothing more will be inflated).
    pub fn release(&mut self) {
        self.compress = None;
        self.decompress = None;
    }

    /// Inflates one fragment of a compressed message, appending to `out`. `last` marks the
    /// message's final fragment (the RFC 7692 tail is then added). Fails once `out` would
    /// exceed `limit` bytes, checked as the output grows: `out` never holds more than
    /// `limit + 1` bytes nor has a larger capacity. On failure the zlib state is dropped.
    pub fn decompress_fragment(&mut self, input: &[u8], last: bool, out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        let mut d = self.decompress.take().unwrap_or_else(take_decompressor);
        Self::inflate_into(&mut d, input, out, limit)?;
        if last {
            Self::inflate_into(&mut d, &TAIL, out, limit)?;
            if self.params.client_no_context_takeover {
                give_back_decompressor(d);
                return Ok(());
            }
        }
        self.decompress = Some(d);
        Ok(())
    }

    fn inflate_into(d: &mut Decompress, mut input: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), InflateError> {
        loop {
            if out.len() == out.capacity() {
                if out.len() > limit {
                    return Err(InflateError::TooBig { limit });
                }
                // Grow geometrically, but never past limit + 1 (one byte over is the error).
                let grow = (out.len().max(1024)).min(limit + 1 - out.len());
                out.reserve_exact(grow);
            }
            let before_in = d.total_in();
            let before_out = out.len();
            let status = d.decompress_vec(input, out, FlushDecompress::Sync).map_err(|e| InflateError::Corrupt(e.to_string()))?;
            let used = (d.total_in() - before_in) as usize;
            input = &input[used..];
            if out.len() > limit {
                return Err(InflateError::TooBig { limit });
            }
            let progressed = used > 0 || out.len() > before_out;
            match status {
                Status::StreamEnd => return Ok(()),
                _ if input.is_empty() && out.len() < out.capacity() => return Ok(()),
                Status::BufError if !progressed && out.len() < out.capacity() => return Ok(()),
                _ => {}
            }
        }
    }

    /// Compresses a whole message payload, returning the bytes to send with RSV1 set.
    pub fn compress_message(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let (level, bits) = (self.params.level, self.compress_bits());
        let mut c = self.compress.take().unwrap_or_else(|| take_compressor(level, bits));
        let start = out.len();
        out.reserve(input.len() / 2 + 64);
        let mut rest = input;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(1024));
            }
            let before_in = c.total_in();
            c.compress_vec(rest, out, FlushCompress::Sync).expect("deflate with valid parameters cannot fail");
            rest = &rest[(c.total_in() - before_in) as usize..];
            // Sync flush is complete once all input is taken and zlib left spare output room.
            if rest.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out.len() - start >= 4 && out[out.len() - 4..] == TAIL {
            out.truncate(out.len() - 4);
        }
        // An empty message right after another sync flush makes zlib emit nothing at all, and
        // an empty payload plus the receiver's appended tail is not a valid block: send the
        // single 0x00 of RFC 7692 §7.2.3.6 (an empty stored block without its tail).
        if out.len() == start {
            out.push(0x00);
        }
        if self.params.server_no_context_takeover {
            give_back_compressor(level, bits, c);
        } else {
            self.compress = Some(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offer(s: &str) -> Vec<ExtensionOffer> {
        parse_extensions([s])
    }

    #[test]
    fn parses_offers() {
        let o = offer("permessage-deflate; client_max_window_bits, permessage-deflate; server_max_window_bits=\"10\", x-foo");
        assert_eq!(o.len(), 3);
        assert_eq!(o[0].params, vec![("client_max_window_bits".into(), None)]);
        assert_eq!(o[1].params, vec![("server_max_window_bits".into(), Some("10".into()))]);
        assert_eq!(o[2].name, "x-foo");
    }

    /// The policy that keeps context both ways unless the client asks otherwise.
    fn takeover() -> DeflatePolicy {
        DeflatePolicy { server_no_context_takeover: false, client_no_context_takeover: false, ..DeflatePolicy::default() }
    }

    #[test]
    fn default_policy_answers_no_context_takeover_both_ways() {
        let pol = DeflatePolicy::default();
        for o in ["permessage-deflate", "permessage-deflate; client_max_window_bits", "permessage-deflate; server_no_context_takeover"] {
            let (p, h) = negotiate(&offer(o), &pol).unwrap();
            assert!(p.server_no_context_takeover && p.client_no_context_takeover, "{o}");
            assert_eq!(h, "permessage-deflate; server_no_context_takeover; client_no_context_takeover", "{o}");
        }
        // The client's window limit is still honoured (and echoed, as it was offered).
        let (p, h) = negotiate(&offer("permessage-deflate; client_max_window_bits=10; server_max_window_bits=12"), &pol).unwrap();
        assert_eq!((p.client_max_window_bits, p.server_max_window_bits), (10, 12));
        assert_eq!(h, "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=10");
    }

    #[test]
    fn negotiation_rules() {
        let pol = takeover();
        let (_, h) = negotiate(&offer("permessage-deflate"), &pol).unwrap();
        assert_eq!(h, "permessage-deflate");
        // A bare client_max_window_bits is only a capability: the default 15 is not echoed.
        let (p, h) = negotiate(&offer("permessage-deflate; client_max_window_bits"), &pol).unwrap();
        assert_eq!((p.client_max_window_bits, h.as_str()), (15, "permessage-deflate"));
        let pol10 = DeflatePolicy { client_max_window_bits: 10, ..pol };
        let (_, h) = negotiate(&offer("permessage-deflate; client_max_window_bits"), &pol10).unwrap();
        assert_eq!(h, "permessage-deflate; client_max_window_bits=10");
        // client_max_window_bits may not be sent when the client did not offer it.
        let (_, h) = negotiate(&offer("permessage-deflate"), &pol10).unwrap();
        assert_eq!(h, "permessage-deflate");
        let (p, h) = negotiate(
            &offer("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12"),
            &pol,
        )
        .unwrap();
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
        assert_eq!((p.server_max_window_bits, p.client_max_window_bits), (10, 12));
        assert_eq!(h, "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=12");
        // Invalid offers are declined; a later valid one is taken.
        for bad in [
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=8",
        ] {
            assert_eq!(negotiate(&offer(bad), &pol), None, "{bad}");
        }
        let (p, _) = negotiate(&offer("permessage-deflate; foo, permessage-deflate; server_max_window_bits=9"), &pol).unwrap();
        assert!(!p.server_no_context_takeover && !p.client_no_context_takeover);
        assert_eq!(p.server_max_window_bits, 9);
        assert_eq!(negotiate(&offer("x-webkit-deflate-frame"), &pol), None);
    }

    fn roundtrip(params: DeflateParams, msgs: &[Vec<u8>]) {
        let mut server = Deflate::new(params);
        // The "client" inflates what the server compressed with the server's window.
        let mut client = Deflate::new(DeflateParams {
            client_max_window_bits: params.server_max_window_bits,
            client_no_context_takeover: params.server_no_context_takeover,
            ..params
        });
        for m in msgs {
            let mut c = Vec::new();
            server.compress_message(m, &mut c);
            let mut d = Vec::new();
            client.decompress_fragment(&c, true, &mut d, 1 << 20).unwrap();
            assert_eq!(&d, m);
        }
    }

    /// Found by the roundtrip property: with context takeover, an empty message after another
    /// message compressed to nothing, which the receiver cannot inflate.
    #[test]
    fn empty_messages_with_context_takeover() {
        let p = DeflateParams {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 13,
            client_max_window_bits: 15,
            level: 6,
        };
        roundtrip(p, &[b"abc".to_vec(), Vec::new(), Vec::new(), b"abc".to_vec()]);
    }

    #[test]
    fn rfc7692_hello_examples() {
        // RFC 7692 §7.2.3.1: "Hello" compressed in one block.
        let mut d = Deflate::new(negotiate(&offer("permessage-deflate"), &takeover()).unwrap().0);
        let mut out = Vec::new();
        d.decompress_fragment(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], true, &mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.2: the second "Hello" refers back into the shared context.
        out.clear();
        d.decompress_fragment(&[0xf2, 0x00, 0x11, 0x00, 0x00], true, &mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
        // §7.2.3.3: a non-compressed block.
        let mut d2 = Deflate::new(d.params);
        out.clear();
        d2.decompress_fragment(&[0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00], true, &mut out, 100).unwrap();
        assert_eq!(out, b"Hello");
    }

    #[test]
    fn bomb_is_stopped_at_the_limit() {
        let p = negotiate(&offer("permessage-deflate"), &DeflatePolicy::default()).unwrap().0;
        let mut s = Deflate::new(p);
        let mut bomb = Vec::new();
        s.compress_message(&vec![0u8; 10 << 20], &mut bomb);
        assert!(bomb.len() < 20_000);
        let mut d = Deflate::new(p);
        let mut out = Vec::new();
        assert_eq!(d.decompress_fragment(&bomb, true, &mut out, 65536), Err(InflateError::TooBig { limit: 65536 }));
        assert!(out.capacity() <= 2 * 65536 + 1024, "memory stayed bounded: {}", out.capacity());
        let mut d = Deflate::new(p);
        assert!(matches!(d.decompress_fragment(&[0xff, 0xff, 0xff], true, &mut Vec::new(), 100), Err(InflateError::Corrupt(_))));
    }

    proptest! {
        #[test]
        fn compress_decompress_roundtrip(msgs in proptest::collection::vec(proptest::collection::vec(0u8..4, 0..3000), 1..5),
                                         snct in any::<bool>(), bits in 9u8..=15) {
            roundtrip(DeflateParams { server_no_context_takeover: snct, client_no_context_takeover: false,
                                      server_max_window_bits: bits, client_max_window_bits: 15, level: 6 }, &msgs);
        }
    }
}
