//! Helpers for tests on the deterministic in-memory harness (`rt::sim`): an engine with a
//! handler on top, HTTP requests and responses as raw bytes, polling sessions, WebSocket
//! handshakes, masked client frames and parsed (unmasked) server frames.
#![allow(dead_code)]

use std::rc::Rc;
use std::time::Duration;

use shardcast::engine::echo::EioEcho;
use shardcast::engine::{EioServer, EngineConfig, Handler};
use shardcast::proto::eio::SessionConfig;
use shardcast::proto::ws::frame::encode_client_frame;
use shardcast::proto::ws::OpCode;
use shardcast::rt::sim::{ClientId, Sim};
use shardcast::rt::WorkerConfig;

/// The engine with handler `H`, in the harness.
pub type EioSim<H> = Sim<EioServer<H>>;
/// The engine with the echo handler, in the harness.
pub type Echo = EioSim<EioEcho>;

/// The engine settings of these tests: the reference server's heartbeat (25 s / 20 s), an
/// upgrade timeout of 10 s.
pub fn engine_cfg() -> EngineConfig {
    EngineConfig {
        path: "/engine.io/".into(),
        session: SessionConfig {
            ping_interval: Duration::from_millis(25_000),
            ping_timeout: Duration::from_millis(20_000),
            upgrade_timeout: Duration::from_secs(10),
        },
        ..EngineConfig::default()
    }
}

/// The runtime settings for `cfg`.
pub fn worker_cfg(cfg: &EngineConfig) -> WorkerConfig {
    WorkerConfig { max_read_buffer: WorkerConfig::read_buffer_for(cfg.max_payload), ..WorkerConfig::default() }
}

/// `workers` workers, each running the engine with a handler from `make`.
pub fn sim_with_handler<H: Handler>(workers: usize, cfg: EngineConfig, rt: WorkerConfig, mut make: impl FnMut() -> H) -> EioSim<H> {
    let cfg = Rc::new(cfg);
    Sim::new(workers, rt, move |_| EioServer::new(cfg.clone(), make()))
}

/// `workers` workers running the echo engine.
pub fn sim_with(workers: usize, cfg: EngineConfig, rt: WorkerConfig) -> Echo {
    sim_with_handler(workers, cfg, rt, || EioEcho)
}

/// `workers` workers running the echo engine with [`engine_cfg`].
pub fn sim(workers: usize) -> Echo {
    let cfg = engine_cfg();
    let rt = worker_cfg(&cfg);
    sim_with(workers, cfg, rt)
}

/// One HTTP response parsed from the bytes a client received.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Splits every complete response out of `bytes`; panics on a partial one.
pub fn responses(bytes: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
        let len = head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())).unwrap_or(0);
        let body = rest[end + 4..end + 4 + len].to_vec();
        rest = &rest[end + 4 + len..];
        out.push(Resp { status, head, body });
    }
    assert!(rest.is_empty(), "a partial response is left: {:?}", String::from_utf8_lossy(rest));
    out
}

/// The one response in `bytes`.
pub fn one_response(bytes: &[u8]) -> Resp {
    let mut r = responses(bytes);
    assert_eq!(r.len(), 1, "{r:?}");
    r.pop().unwrap()
}

pub fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes()
}

pub fn post(target: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    r.extend_from_slice(body);
    r
}

/// The polling target of session `sid`.
pub fn polling(sid: &str) -> String {
    format!("/engine.io/?EIO=4&transport=polling&sid={sid}")
}

/// Opens a polling session from a fresh connection on worker `w`; returns the client and sid.
pub fn polling_session<H: Handler>(s: &mut EioSim<H>, w: usize) -> (ClientId, String) {
    let c = s.connect(w);
    s.write(c, &get("/engine.io/?EIO=4&transport=polling"));
    let r = responses(&s.read(c));
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, 200);
    let body = String::from_utf8(r[0].body.clone()).unwrap();
    let sid = body.split("\"sid\":\"").nth(1).expect("an open packet").split('"').next().unwrap().to_owned();
    (c, sid)
}

/// A client of worker `w` does a full round trip: handshake, a message, its echo. The handler
/// must echo messages.
pub fn assert_served<H: Handler>(s: &mut EioSim<H>, w: usize) {
    let (c, sid) = polling_session(s, w);
    s.write(c, &post(&polling(&sid), b"4hello"));
    assert_eq!(responses(&s.read(c))[0].body, b"ok");
    s.write(c, &get(&polling(&sid)));
    let r = responses(&s.read(c));
    assert_eq!(r[0].body, b"4hello", "the echo comes back");
    s.close(c);
}

/// A WebSocket upgrade request for `target`.
pub fn ws_request(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").into_bytes()
}

/// Splits a `101` head off what the client received; panics on anything else.
pub fn switching_protocols(bytes: &[u8]) -> (String, &[u8]) {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head") + 4;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    (head, &bytes[end..])
}

/// One server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The Engine.IO packet of a text frame.
    pub fn text(&self) -> String {
        assert_eq!(self.opcode, 1, "a text frame: {self:?}");
        String::from_utf8(self.payload.clone()).unwrap()
    }

    /// The code of a close frame.
    pub fn close_code(&self) -> u16 {
        assert_eq!(self.opcode, 8, "a close frame: {self:?}");
        u16::from_be_bytes([self.payload[0], self.payload[1]])
    }
}

/// Parses every server frame in `bytes`: each must be unmasked and complete.
pub fn frames(bytes: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        assert!(rest.len() >= 2, "a partial frame header: {rest:?}");
        assert_eq!(rest[1] & 0x80, 0, "server frames are never masked");
        let (len, at) = match rest[1] & 0x7f {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        assert!(rest.len() >= at + len, "a partial frame");
        out.push(Frame { fin: rest[0] & 0x80 != 0, opcode: rest[0] & 0x0f, payload: rest[at..at + len].to_vec() });
        rest = &rest[at + len..];
    }
    out
}

/// The text payloads of `bytes`, which must hold only text frames.
pub fn texts(bytes: &[u8]) -> Vec<String> {
    frames(bytes).iter().map(Frame::text).collect()
}

/// A masked client text frame.
pub fn client_text(payload: &str) -> Vec<u8> {
    encode_client_frame(true, false, OpCode::Text, [0x11, 0x22, 0x33, 0x44], payload.as_bytes())
}

/// A masked client binary frame.
pub fn client_binary(payload: &[u8]) -> Vec<u8> {
    encode_client_frame(true, false, OpCode::Binary, [0x11, 0x22, 0x33, 0x44], payload)
}

/// Opens a WebSocket session from a fresh connection on worker `w`; returns the client, the
/// sid and the open packet.
pub fn ws_session<H: Handler>(s: &mut EioSim<H>, w: usize) -> (ClientId, String, String) {
    let c = s.connect(w);
    s.write(c, &ws_request("/engine.io/?EIO=4&transport=websocket"));
    let out = s.read(c);
    let (_, rest) = switching_protocols(&out);
    let t = texts(rest);
    assert_eq!(t.len(), 1, "the open packet alone: {t:?}");
    let open = t[0].clone();
    assert!(open.starts_with("0{"), "{open}");
    let sid = open.split("\"sid\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    (c, sid, open)
}
