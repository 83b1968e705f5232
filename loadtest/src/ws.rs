//! A lean RFC 6455 client connection: the load generator's hot path.
//!
//! Hand-written rather than tokio-tungstenite because the load generator must never be the
//! bottleneck: tungstenite gives every connection a 128 KiB read buffer and an owned `String`
//! per message, which at 10,000 subscribers is 1.3 GB of buffers and one allocation per
//! delivery. Here a connection starts with a 4 KiB buffer, every frame already in it is handed
//! to the caller as a borrowed slice in one pass, and pongs are queued and written together.
//! The handshake's accept key and the masking come from shardcast's sans-IO WebSocket module.
//! Owns one stream (TCP, or TLS over it: `crate::tls`); never spawns, never sleeps.

use std::io;

use crate::tls::Stream;
use base64::Engine as _;
use shardcast::proto::ws::handshake::accept_key;
use shardcast::proto::ws::mask::apply_mask;

/// The permessage-deflate offer `--deflate` makes (RFC 7692): the client advertises that it
/// can use a smaller window, and accepts whatever context-takeover rules the server answers.
pub const DEFLATE_OFFER: &str = "permessage-deflate; client_max_window_bits";

const INITIAL_BUFFER: usize = 4096;

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// One client WebSocket connection.
pub struct WsConn {
    stream: Stream,
    /// Received bytes; `buf[start..]` is not yet consumed.
    buf: Vec<u8>,
    start: usize,
    /// A fragmented message being collected.
    partial: Vec<u8>,
    /// Frames waiting to be written (pongs, close), sent by `flush`.
    out: Vec<u8>,
    mask: [u8; 4],
    closed: bool,
    /// permessage-deflate was agreed: compressed (RSV1) messages are inflated before they are
    /// handed over. `None` on the hot path of every scenario but `conns --deflate`.
    inflate: Option<Box<Inflate>>,
}

/// The client's decompressor and what it counted (only with permessage-deflate).
pub struct Inflate {
    z: flate2::Decompress,
    out: Vec<u8>,
    /// Compressed messages received.
    pub compressed: u64,
    /// The server answered `server_no_context_takeover`: every message starts a fresh window.
    reset_each: bool,
}

/// A cheap per-connection pseudo-random source for keys and masks (xorshift64*); a load
/// generator needs unpredictability against caches, not cryptography.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

impl WsConn {
    /// Performs the opening handshake for `path` (with its query) on a connected stream.
    pub async fn handshake(stream: Stream, host: &str, path: &str) -> io::Result<WsConn> {
        Self::handshake_with(stream, host, path, None).await
    }

    /// The opening handshake, offering `extensions` (a `Sec-WebSocket-Extensions` value) when
    /// given. When the server agrees to permessage-deflate, compressed messages are inflated.
    pub async fn handshake_with(mut stream: Stream, host: &str, path: &str, extensions: Option<&str>) -> io::Result<WsConn> {
        let mut seed = {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            (t.as_nanos() as u64) ^ (stream.local_addr().map(|a| a.port() as u64).unwrap_or(1) << 32) | 1
        };
        let key_bytes: Vec<u8> = (0..2).flat_map(|_| next_random(&mut seed).to_le_bytes()).collect();
        let key = base64::engine::general_purpose::STANDARD.encode(&key_bytes);
        let ext = extensions.map(|e| format!("Sec-WebSocket-Extensions: {e}\r\n")).unwrap_or_default();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::with_capacity(INITIAL_BUFFER);
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(err("closed during the WebSocket handshake"));
            }
            let mut headers = [httparse::EMPTY_HEADER; 24];
            let mut res = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = res.parse(&buf).map_err(|e| err(e.to_string()))? {
                if res.code != Some(101) {
                    return Err(err(format!("handshake refused with HTTP {}", res.code.unwrap_or(0))));
                }
                let accept = res.headers.iter().find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"));
                if accept.map(|h| h.value) != Some(accept_key(&key).as_bytes()) {
                    return Err(err("wrong Sec-WebSocket-Accept"));
                }
                let agreed = res
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
                    .filter_map(|h| std::str::from_utf8(h.value).ok())
                    .find(|v| v.trim_start().starts_with("permessage-deflate"));
                let inflate = agreed.map(|v| {
                    Box::new(Inflate {
                        z: flate2::Decompress::new(false),
                        out: Vec::new(),
                        compressed: 0,
                        reset_each: v.contains("server_no_context_takeover"),
                    })
                });
                let mask = (next_random(&mut seed) as u32).to_le_bytes();
                return Ok(WsConn { stream, buf, start: n, partial: Vec::new(), out: Vec::new(), mask, closed: false, inflate });
            }
        }
    }

    /// Whether the peer closed (close frame or end of stream).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether permessage-deflate was agreed, and how many compressed messages arrived.
    pub fn deflate(&self) -> Option<u64> {
        self.inflate.as_ref().map(|i| i.compressed)
    }

    /// Appends one masked frame to `out`.
    fn frame_into(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
        Self::frame_rsv_into(out, 0x80 | opcode, payload, mask)
    }

    /// Appends one masked frame with first byte `b0` (FIN, RSV bits, opcode) to `out`.
    fn frame_rsv_into(out: &mut Vec<u8>, b0: u8, payload: &[u8], mask: [u8; 4]) {
        out.push(b0);
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let at = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[at..], mask, 0);
    }

    /// Sends one text message (and whatever pongs are queued) in one write.
    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        Self::frame_into(&mut self.out, 0x1, payload, self.mask);
        self.flush().await
    }

    /// Sends one text message compressed with permessage-deflate (RSV1; RFC 7692 §7.2.1: raw
    /// deflate, sync flush, the trailing 00 00 ff ff removed), each message on its own (no
    /// context kept, which every server's answer allows). Errors if deflate was not agreed.
    pub async fn send_compressed_text(&mut self, payload: &[u8]) -> io::Result<()> {
        if self.inflate.is_none() {
            return Err(err("permessage-deflate was not agreed"));
        }
        let mut z = flate2::Compress::new(flate2::Compression::default(), false);
        let mut data = Vec::with_capacity(payload.len() / 2 + 64);
        loop {
            let consumed = z.total_in() as usize;
            z.compress_vec(&payload[consumed..], &mut data, flate2::FlushCompress::Sync).map_err(|e| err(e.to_string()))?;
            if z.total_in() as usize == payload.len() && data.len() < data.capacity() {
                break;
            }
            data.reserve(data.capacity().max(64));
        }
        if data.ends_with(&[0, 0, 0xff, 0xff]) {
            data.truncate(data.len() - 4);
        }
        Self::frame_rsv_into(&mut self.out, 0x80 | 0x40 | 0x1, &data, self.mask);
        self.flush().await
    }

    /// Queues a text message; `flush` writes it.
    pub fn queue_text(&mut self, payload: &[u8]) {
        Self::frame_into(&mut self.out, 0x1, payload, self.mask);
    }

    /// Writes every queued frame.
    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Waits for more bytes; `false` at end of stream. Cancel-safe.
    pub async fn read_more(&mut self) -> io::Result<bool> {
        self.make_room();
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            self.closed = true;
        }
        Ok(n > 0)
    }

    /// Reads what is already there without waiting; `false` at end of stream.
    pub fn try_read_more(&mut self) -> io::Result<bool> {
        self.make_room();
        match self.stream.try_read_buf(&mut self.buf) {
            Ok(0) => {
                self.closed = true;
                Ok(false)
            }
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    fn make_room(&mut self) {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.buf.capacity() - self.buf.len() < INITIAL_BUFFER / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.capacity() - self.buf.len() < INITIAL_BUFFER / 2 {
            self.buf.reserve(INITIAL_BUFFER);
        }
    }

    /// Hands every complete data message already received to `f` (text and binary alike, as
    /// bytes), answers pings, notes a close. Returns how many messages it handed over.
    pub fn messages(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut count = 0;
        loop {
            let b = &self.buf[self.start..];
            if b.len() < 2 {
                return Ok(count);
            }
            if b[1] & 0x80 != 0 {
                return Err(err("the server sent a masked frame"));
            }
            let (len, head) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize, 10),
                126 | 127 => return Ok(count),
                n => (n as usize, 2),
            };
            if b.len() < head + len {
                if self.buf.capacity() < head + len {
                    self.buf.reserve(head + len - b.len());
                }
                return Ok(count);
            }
            let (fin, opcode) = (b[0] & 0x80 != 0, b[0] & 0x0f);
            let payload = &b[head..head + len];
            match opcode {
                0x1 | 0x2 if fin && b[0] & 0x40 != 0 && self.inflate.is_some() => {
                    let inf = self.inflate.as_mut().expect("checked");
                    inf.compressed += 1;
                    if inf.reset_each {
                        inf.z.reset(false);
                    }
                    inf.out.clear();
                    let mut input = payload.to_vec();
                    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
                    loop {
                        inf.out.reserve(input.len() * 4 + 256);
                        let consumed = inf.z.total_in() as usize;
                        inf.z.decompress_vec(&input[consumed..], &mut inf.out, flate2::FlushDecompress::Sync).map_err(|e| err(format!("inflate: {e}")))?;
                        if inf.z.total_in() as usize == input.len() && inf.out.len() < inf.out.capacity() {
                            break;
                        }
                    }
                    f(&inf.out);
                    count += 1;
                }
                0x1 | 0x2 if fin => {
                    f(payload);
                    count += 1;
                }
                0x1 | 0x2 => self.partial = payload.to_vec(),
                0x0 => {
                    self.partial.extend_from_slice(payload);
                    if fin {
                        f(&self.partial);
                        count += 1;
                        self.partial.clear();
                    }
                }
                0x9 => Self::frame_into(&mut self.out, 0xA, payload, self.mask),
                0x8 => {
                    self.closed = true;
                    let code = payload.get(..2).map(|c| c.to_vec()).unwrap_or_default();
                    Self::frame_into(&mut self.out, 0x8, &code, self.mask);
                }
                _ => {}
            }
            self.start += head + len;
        }
    }

    /// Sends a close frame (1000) and shuts the write side.
    pub async fn close(&mut self) -> io::Result<()> {
        Self::frame_into(&mut self.out, 0x8, &1000u16.to_be_bytes(), self.mask);
        self.flush().await?;
        self.stream.shutdown().await
    }
}
