//! Lean clients: Socket.IO v5 over Engine.IO v4 on WebSocket or long-polling, and a raw
//! WebSocket echo client. Only what the scenarios need: connect to a namespace, emit, acks,
//! answer pings, and hand every received event to a callback without a full JSON parse or a
//! copy (the WebSocket side is `ws::WsConn`).

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

use crate::tls::Stream;
use crate::ws::WsConn;

/// Where to connect.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    /// TLS (`--tls`): the client configuration (WebSocket transports only).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// `tcp`, then the TLS handshake when the target asks for TLS.
pub async fn stream(target: &Target, source: Option<IpAddr>) -> io::Result<Stream> {
    let s = tcp(target, source).await?;
    match &target.tls {
        Some(cfg) => Stream::tls(s, cfg.clone()).await,
        None => Ok(Stream::plain(s)),
    }
}

/// Opens a TCP connection, optionally from a given loopback source address (to get past one
/// address's ephemeral ports).
pub async fn tcp(target: &Target, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let sock = if target.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(ip) = source {
        // Let connect() pick the port for the whole 4-tuple: bound to port 0 without this,
        // the kernel picks a port at bind time, which cannot reuse ports still in TIME_WAIT
        // and searches longer the more there are (churn leaves thousands).
        let one: libc::c_int = 1;
        // SAFETY: setsockopt on a socket we own with a pointer to a live c_int and its size.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let s = sock.connect(target.addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn err(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// An incoming Socket.IO packet, as text after the Engine.IO `4`.
pub enum Incoming<'a> {
    /// `2[...]`: an event; the text is the whole packet (e.g. `2["room-message",{...}]`).
    Event(&'a str),
    /// `3<id>[...]`: an ack, by id.
    Ack(u64),
    /// Anything else (CONNECT answers, DISCONNECT, errors).
    Other,
}

fn classify(p: &str) -> Incoming<'_> {
    let body = match p.find([',', '[']) {
        Some(i) if p.as_bytes()[i] == b',' && p.len() > 1 && p.as_bytes()[1] == b'/' => &p[i + 1..],
        _ => &p[1..],
    };
    match p.as_bytes().first() {
        Some(b'2') => Incoming::Event(p),
        Some(b'3') => {
            let digits: String = body.chars().take_while(|c| c.is_ascii_digit()).collect();
            Incoming::Ack(digits.parse().unwrap_or(u64::MAX))
        }
        _ => Incoming::Other,
    }
}

/// A Socket.IO client on a WebSocket.
pub struct SioWs {
    ws: WsConn,
}

impl SioWs {
    /// Connects, completes the Engine.IO handshake and CONNECTs to namespace `/`.
    pub async fn connect(target: &Target, source: Option<IpAddr>) -> io::Result<SioWs> {
        Self::connect_with(target, source, None).await
    }

    /// `connect`, offering `extensions` in the WebSocket handshake (e.g. permessage-deflate).
    pub async fn connect_with(target: &Target, source: Option<IpAddr>, extensions: Option<&str>) -> io::Result<SioWs> {
        let stream = stream(target, source).await?;
        let path = format!("{}?EIO=4&transport=websocket", target.path);
        let ws = WsConn::handshake_with(stream, &target.addr.to_string(), &path, extensions).await?;
        let mut c = SioWs { ws };
        let mut open = false;
        while !open {
            c.engine_packets(|p| open |= p.first() == Some(&b'0')).await?;
        }
        c.ws.send_text(b"40").await?;
        // Connected once CONNECT is answered and the contract's `auth` event arrived: the app
        // has then run its connection handler, so events sent next are handled.
        let (mut connected, mut authed, mut refused) = (false, false, false);
        while !(connected && authed) {
            c.engine_packets(|p| {
                connected |= p.starts_with(b"40");
                refused |= p.starts_with(b"44");
                authed |= p.starts_with(br#"42["auth""#);
            })
            .await?;
            if refused {
                return Err(err("connect refused"));
            }
        }
        Ok(c)
    }

    /// Waits until at least one Engine.IO packet other than PING arrived and hands every one
    /// received so far to `f`; pings are answered. An error once the connection closed.
    async fn engine_packets(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        loop {
            let mut pongs = 0;
            let n = self.ws.messages(|p| {
                if p == b"2" {
                    pongs += 1;
                } else {
                    f(p)
                }
            })?;
            for _ in 0..pongs {
                self.ws.queue_text(b"3");
            }
            self.ws.flush().await?;
            if n > pongs {
                return Ok(());
            }
            if self.ws.is_closed() || !self.ws.read_more().await? {
                return Err(err("connection closed"));
            }
        }
    }

    /// Emits `42<packet>` where `packet` is `[event,...]` or `<id>[event,...]`.
    pub async fn emit(&mut self, packet: &str) -> io::Result<()> {
        let mut text = Vec::with_capacity(packet.len() + 2);
        text.extend_from_slice(b"42");
        text.extend_from_slice(packet.as_bytes());
        self.ws.send_text(&text).await
    }

    /// Waits for Socket.IO packets and hands every one received so far to `f`; `false` once
    /// the connection closed.
    pub async fn recv(&mut self, mut f: impl FnMut(Incoming<'_>)) -> io::Result<bool> {
        match self
            .engine_packets(|p| {
                if let Some(b'4') = p.first() {
                    if let Ok(t) = std::str::from_utf8(&p[1..]) {
                        f(classify(t));
                    }
                }
            })
            .await
        {
            Ok(()) => Ok(true),
            Err(_) if self.ws.is_closed() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Emits `message` with a compressible `size`-byte string, compressed (permessage-deflate
    /// must have been agreed), and waits for the contract's `message-back`. Returns whether
    /// the answer arrived compressed. Exercises both zlib directions of the server once.
    pub async fn exchange_compressed(&mut self, size: usize) -> io::Result<bool> {
        let text: String = (0..size).map(|i| (b'a' + (i % 7) as u8) as char).collect();
        let packet = format!(r#"42["message","{text}"]"#);
        let before = self.ws.deflate().ok_or_else(|| err("permessage-deflate was not agreed"))?;
        self.ws.send_compressed_text(packet.as_bytes()).await?;
        let mut back = false;
        while !back {
            self.engine_packets(|p| back |= p.starts_with(br#"42["message-back""#)).await?;
        }
        Ok(self.ws.deflate().unwrap_or(0) > before)
    }

    /// Handles whatever already arrived (answering pings) without waiting; `false` once closed.
    pub async fn poll(&mut self) -> io::Result<bool> {
        self.ws.try_read_more()?;
        let mut pongs = 0;
        self.ws.messages(|p| pongs += usize::from(p == b"2"))?;
        for _ in 0..pongs {
            self.ws.queue_text(b"3");
        }
        self.ws.flush().await?;
        Ok(!self.ws.is_closed())
    }

    /// Sends DISCONNECT and closes.
    pub async fn disconnect(mut self) -> io::Result<()> {
        self.ws.queue_text(b"41");
        self.ws.close().await
    }
}

/// A raw WebSocket echo client.
pub struct RawWs {
    ws: WsConn,
}

impl RawWs {
    pub async fn connect(target: &Target, source: Option<IpAddr>) -> io::Result<RawWs> {
        let stream = stream(target, source).await?;
        Ok(RawWs { ws: WsConn::handshake(stream, &target.addr.to_string(), &target.path).await? })
    }

    pub async fn send(&mut self, text: &[u8]) -> io::Result<()> {
        self.ws.send_text(text).await
    }

    /// Waits for at least one message; returns how many arrived (0: closed).
    pub async fn recv(&mut self) -> io::Result<usize> {
        loop {
            let n = self.ws.messages(|_| {})?;
            self.ws.flush().await?;
            if n > 0 {
                return Ok(n);
            }
            if self.ws.is_closed() || !self.ws.read_more().await? {
                return Ok(0);
            }
        }
    }
}

/// A keep-alive HTTP/1.1 connection (for the polling transport).
struct Http {
    s: TcpStream,
    buf: Vec<u8>,
    host: String,
}

impl Http {
    async fn connect(target: &Target, source: Option<IpAddr>) -> io::Result<Http> {
        Ok(Http { s: tcp(target, source).await?, buf: Vec::new(), host: target.addr.to_string() })
    }

    async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n", self.host, body.len());
        let mut req = head.into_bytes();
        req.extend_from_slice(body);
        self.s.write_all(&req).await?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).map_err(|e| err(e.to_string()))? {
                let status = r.code.unwrap_or(0);
                let len: usize = r
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
                    .unwrap_or(0);
                if self.buf.len() >= n + len {
                    let body = self.buf[n..n + len].to_vec();
                    self.buf.drain(..n + len);
                    return Ok((status, body));
                }
            }
            let mut tmp = [0u8; 16384];
            let k = self.s.read(&mut tmp).await?;
            if k == 0 {
                return Err(err("connection closed"));
            }
            self.buf.extend_from_slice(&tmp[..k]);
        }
    }
}

/// A Socket.IO client on HTTP long-polling: one connection long-polls, another posts.
pub struct SioPolling {
    /// Engine.IO packet texts to post.
    pub tx: mpsc::UnboundedSender<String>,
    /// Socket.IO packets received (Engine.IO `4` stripped).
    pub rx: mpsc::UnboundedReceiver<String>,
}

impl SioPolling {
    pub async fn connect(target: &Target, source: Option<IpAddr>) -> io::Result<SioPolling> {
        let mut get = Http::connect(target, source).await?;
        let (status, open) = get.request("GET", &format!("{}?EIO=4&transport=polling", target.path), b"").await?;
        if status != 200 || open.first() != Some(&b'0') {
            return Err(err(format!("polling handshake failed: {status}")));
        }
        let v: serde_json::Value = serde_json::from_slice(&open[1..]).map_err(|e| err(e.to_string()))?;
        let sid = v["sid"].as_str().ok_or_else(|| err("no sid"))?.to_string();
        let q = format!("{}?EIO=4&transport=polling&sid={sid}", target.path);
        let mut post = Http::connect(target, source).await?;
        let (tx, mut out_rx) = mpsc::unbounded_channel::<String>();
        let (in_tx, rx) = mpsc::unbounded_channel::<String>();
        let q2 = q.clone();
        tokio::task::spawn_local(async move {
            while let Some(first) = out_rx.recv().await {
                let mut body = first.into_bytes();
                while let Ok(more) = out_rx.try_recv() {
                    body.push(0x1e);
                    body.extend_from_slice(more.as_bytes());
                }
                if post.request("POST", &q2, &body).await.map(|(s, _)| s != 200).unwrap_or(true) {
                    break;
                }
            }
        });
        let pong = tx.clone();
        tokio::task::spawn_local(async move {
            loop {
                let Ok((200, body)) = get.request("GET", &q, b"").await else { break };
                for p in body.split(|&b| b == 0x1e) {
                    match p.first() {
                        Some(b'2') => {
                            let _ = pong.send("3".into());
                        }
                        Some(b'4') => {
                            let _ = in_tx.send(String::from_utf8_lossy(&p[1..]).into_owned());
                        }
                        Some(b'1') => return,
                        _ => {}
                    }
                }
            }
        });
        let mut c = SioPolling { tx, rx };
        c.tx.send("40".into()).map_err(|_| err("poster gone"))?;
        // As on WebSocket: CONNECT answered and the contract's `auth` event arrived.
        let (mut connected, mut authed) = (false, false);
        while !(connected && authed) {
            let p = c.rx.recv().await.ok_or_else(|| err("closed before CONNECT was answered"))?;
            connected |= p.starts_with('0');
            authed |= p.starts_with(r#"2["auth""#);
            if p.starts_with('4') {
                return Err(err(format!("connect refused: {p}")));
            }
        }
        Ok(c)
    }

    pub fn emit(&self, packet: &str) -> io::Result<()> {
        self.tx.send(format!("42{packet}")).map_err(|_| err("poster gone"))
    }

    /// Waits for packets and hands every one received so far to `f`; `false` once closed.
    pub async fn recv(&mut self, mut f: impl FnMut(Incoming<'_>)) -> io::Result<bool> {
        let Some(p) = self.rx.recv().await else { return Ok(false) };
        f(classify(&p));
        while let Ok(p) = self.rx.try_recv() {
            f(classify(&p));
        }
        Ok(true)
    }

    /// Drops whatever arrived (pings are answered by the polling task).
    pub fn poll(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(_) => {}
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }
}

/// Either transport, behind one interface.
pub enum Sio {
    Ws(Box<SioWs>),
    Polling(SioPolling),
}

impl Sio {
    pub async fn connect(target: &Target, polling: bool, source: Option<IpAddr>) -> io::Result<Sio> {
        if polling {
            Ok(Sio::Polling(SioPolling::connect(target, source).await?))
        } else {
            Ok(Sio::Ws(Box::new(SioWs::connect(target, source).await?)))
        }
    }

    pub async fn emit(&mut self, packet: &str) -> io::Result<()> {
        match self {
            Sio::Ws(c) => c.emit(packet).await,
            Sio::Polling(c) => c.emit(packet),
        }
    }

    pub async fn recv(&mut self, f: impl FnMut(Incoming<'_>)) -> io::Result<bool> {
        match self {
            Sio::Ws(c) => c.recv(f).await,
            Sio::Polling(c) => c.recv(f).await,
        }
    }

    /// Handles what already arrived without waiting (answering pings); `false` once closed.
    pub async fn poll(&mut self) -> io::Result<bool> {
        match self {
            Sio::Ws(c) => c.poll().await,
            Sio::Polling(c) => Ok(c.poll()),
        }
    }

    /// Emits with an ack id and waits for the ack (other packets are passed to `other`).
    pub async fn call(&mut self, id: u64, packet: &str, mut other: impl FnMut(Incoming<'_>)) -> io::Result<()> {
        self.emit(&format!("{id}{packet}")).await?;
        loop {
            let mut done = false;
            let open = self
                .recv(|p| match p {
                    Incoming::Ack(a) if a == id => done = true,
                    p => other(p),
                })
                .await?;
            if done {
                return Ok(());
            }
            if !open {
                return Err(err("closed while waiting for an ack"));
            }
        }
    }
}

/// The send timestamp carried in a payload as `"t":<ns>`, found without parsing the JSON.
pub fn timestamp(packet: &str) -> Option<u64> {
    let at = packet.find("\"t\":")? + 4;
    let digits: &str = &packet[at..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_timestamps_and_acks() {
        assert_eq!(timestamp(r#"2["room-message",{"t":12345,"p":"x"}]"#), Some(12345));
        assert!(matches!(classify("312[true]"), Incoming::Ack(12)));
        assert!(matches!(classify("3/custom,7[true]"), Incoming::Ack(7)));
        assert!(matches!(classify(r#"2["x"]"#), Incoming::Event(_)));
    }
}
