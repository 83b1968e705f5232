//! Test helpers: start the real `shardcast` binary on an ephemeral loopback port and speak raw
//! HTTP and WebSocket bytes to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The line the server printed once listening.
    pub banner: String,
}

/// The I/O backend the suite runs under: `SHARDCAST_TEST_IO` (`uring`, `epoll` or `auto`;
/// `scripts/test` runs the wire and interop tests once with `uring` and once with `epoll`),
/// `auto` when unset.
pub fn test_io() -> shardcast::rt::IoBackend {
    use shardcast::rt::IoBackend;
    match std::env::var("SHARDCAST_TEST_IO").as_deref() {
        Ok("uring") => IoBackend::Uring,
        Ok("epoll") => IoBackend::Epoll,
        Ok("auto") | Ok("") | Err(_) => IoBackend::Auto,
        Ok(other) => panic!("SHARDCAST_TEST_IO={other:?}: expected uring, epoll or auto"),
    }
}

/// `--io $SHARDCAST_TEST_IO` for a binary started with `args`, unless they choose one.
pub fn io_args(args: &[&str]) -> Vec<String> {
    match std::env::var("SHARDCAST_TEST_IO") {
        Ok(io) if !io.is_empty() && !args.contains(&"--io") => vec!["--io".into(), io],
        _ => Vec::new(),
    }
}

impl Server {
    /// Starts the binary with `args` (`--bind 127.0.0.1:0` is added) and waits for its
    /// "listening on" line.
    pub fn start(args: &[&str]) -> Server {
        Server::start_env(args, &[])
    }

    /// Like [`Server::start`], with extra environment variables for the server process.
    /// The test contract's heartbeats (300 ms / 200 ms) are passed explicitly unless `args`
    /// set them: the binary's defaults are the production ones.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut heartbeats = Vec::new();
        if !args.contains(&"--ping-interval") {
            heartbeats.extend(["--ping-interval", "300"]);
        }
        if !args.contains(&"--ping-timeout") {
            heartbeats.extend(["--ping-timeout", "200"]);
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .args(args)
            .args(&heartbeats)
            .args(io_args(args))
            .envs(env.iter().copied())
            .args(["--bind", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start shardcast");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let addr = line.split_whitespace().find_map(|w| w.parse::<SocketAddr>().ok()).unwrap_or_else(|| panic!("no address in {line:?}"));
        std::thread::spawn(move || for _ in out.lines() {});
        Server { child, addr, banner: line.trim_end().to_string() }
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: sending SIGTERM to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Http {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    pub fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // Each write leaves at once (no Nagle wait for the previous segment's ACK), so bytes
        // a test wrote are in the server's receive queue before the test's next step.
        stream.set_nodelay(true).unwrap();
        Http { stream, buf: Vec::new() }
    }

    pub fn send_raw(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    pub fn get(&mut self, target: &str, extra: &str) -> Response {
        self.send_raw(format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n").as_bytes());
        self.read_response()
    }

    pub fn post(&mut self, target: &str, body: &[u8], extra: &str) -> Response {
        let mut raw = format!("POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n{extra}\r\n", body.len()).into_bytes();
        raw.extend_from_slice(body);
        self.send_raw(&raw);
        self.read_response()
    }

    fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 65536];
        let n = self.stream.read(&mut tmp).unwrap_or(0);
        self.buf.extend_from_slice(&tmp[..n]);
        n
    }

    /// Reads one response (Content-Length framed).
    pub fn read_response(&mut self) -> Response {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                let status = r.code.unwrap();
                let hs: Vec<(String, String)> = r.headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).into_owned())).collect();
                let len: usize = hs.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).map_or(0, |(_, v)| v.parse().unwrap());
                while self.buf.len() < n + len {
                    assert!(self.fill() > 0, "connection closed mid-body");
                }
                let body = self.buf[n..n + len].to_vec();
                self.buf.drain(..n + len);
                return Response { status, headers: hs, body };
            }
            assert!(self.fill() > 0, "connection closed before a response: {:?}", String::from_utf8_lossy(&self.buf));
        }
    }

    /// Whether the server closed the connection (reads until EOF or timeout).
    pub fn closed_by_server(&mut self) -> bool {
        self.stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut tmp = [0u8; 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => continue,
                // Still open when the timeout passes; a reset is a close.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return false,
                Err(_) => return true,
            }
        }
    }
}

/// One request on a fresh connection.
pub fn request(addr: SocketAddr, raw: &[u8]) -> Response {
    let mut h = Http::connect(addr);
    h.send_raw(raw);
    h.read_response()
}

pub fn get(addr: SocketAddr, target: &str) -> Response {
    Http::connect(addr).get(target, "")
}

/// Polling handshake: returns the sid.
pub fn handshake(addr: SocketAddr, path: &str) -> String {
    let r = get(addr, &format!("{path}?EIO=4&transport=polling"));
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    assert!(text.starts_with("0{"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text[1..]).unwrap();
    v["sid"].as_str().unwrap().to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// A minimal RFC 6455 client.
pub struct Ws {
    pub stream: TcpStream,
    buf: Vec<u8>,
    pub response_head: String,
}

pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl Ws {
    /// Opens a WebSocket; panics unless the server answers 101.
    pub fn connect(addr: SocketAddr, target: &str, extra: &str) -> Ws {
        match Ws::try_connect(addr, target, extra) {
            Ok(ws) => ws,
            Err(r) => panic!("upgrade refused: {} {}", r.status, r.text()),
        }
    }

    /// The upgrade request [`Ws::try_connect`] sends.
    pub fn upgrade_request(target: &str, extra: &str) -> String {
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")
    }

    pub fn try_connect(addr: SocketAddr, target: &str, extra: &str) -> Result<Ws, Response> {
        let mut h = Http::connect(addr);
        h.send_raw(Ws::upgrade_request(target, extra).as_bytes());
        let r = h.read_response_head_only();
        match r {
            Ok(head) => Ok(Ws { stream: h.stream, buf: h.buf, response_head: head }),
            Err(resp) => Err(resp),
        }
    }

    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.send_frame_rsv(fin, false, opcode, payload);
    }

    pub fn send_frame_rsv(&mut self, fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) {
        self.try_send_frame_rsv(fin, rsv1, opcode, payload).unwrap();
    }

    /// Writes one masked client frame; the write's error is returned (a hostile client does
    /// not care that the server already closed).
    pub fn try_send_frame_rsv(&mut self, fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut f = vec![(fin as u8) << 7 | (rsv1 as u8) << 6 | opcode];
        let n = payload.len();
        if n < 126 {
            f.push(0x80 | n as u8);
        } else if n < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&f)
    }

    pub fn send_text(&mut self, s: &str) {
        self.send_frame(true, 1, s.as_bytes());
    }

    pub fn send_binary(&mut self, b: &[u8]) {
        self.send_frame(true, 2, b);
    }

    /// Reads one frame (`None` on EOF or timeout).
    /// The next frame, or `None` once the server closed or reset the connection. Panics on a
    /// read timeout.
    pub fn recv(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let b0 = self.buf[0];
                let b1 = self.buf[1];
                assert_eq!(b1 & 0x80, 0, "server frames are never masked");
                let (len, at) = match b1 & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10),
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some(Frame { fin: b0 & 0x80 != 0, rsv1: b0 & 0x40 != 0, opcode: b0 & 0x0f, payload });
                }
            }
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                // The connection ended (closed or reset by the server).
                Ok(0) => return None,
                // A read timeout is never an answer: the test fails.
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    panic!("timed out waiting for a frame from the server")
                }
                // A signal (or kernel task work) interrupted the read: not an answer, retry.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Next text frame's payload, answering server pings ("2") on the way when `pong`.
    pub fn recv_text(&mut self) -> String {
        let f = self.recv().expect("a frame");
        assert_eq!(f.opcode, 1, "expected text, got {f:?}");
        String::from_utf8(f.payload).unwrap()
    }

    /// Next Engine.IO text packet other than a ping (pings are answered).
    pub fn recv_eio(&mut self) -> String {
        loop {
            let t = self.recv_text();
            if t == "2" {
                self.send_text("3");
                continue;
            }
            return t;
        }
    }

    pub fn set_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }
}

impl Http {
    /// Reads a response head; `Ok(head)` for 101, `Err(response)` otherwise.
    pub fn read_response_head_only(&mut self) -> Result<String, Response> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                if r.code == Some(101) {
                    let head = String::from_utf8_lossy(&self.buf[..n]).into_owned();
                    self.buf.drain(..n);
                    return Ok(head);
                }
                return Err(self.read_response());
            }
            assert!(self.fill() > 0, "closed during the handshake");
        }
    }
}
