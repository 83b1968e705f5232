//! TLS on the real binary (`--tls-cert`, `--tls-key`): the official clients over `https://`
//! polling and `wss://` (socket.io-client verifying the test CA through `NODE_EXTRA_CA_CERTS`;
//! python-socketio with `ssl_verify=False`: its threaded client over https:// polling, its
//! asyncio client over wss://), a SIGHUP certificate swap that keeps an
//! established WebSocket exchanging events while new handshakes get the new certificate (and a
//! bad file is refused, keeping the old one), and garbage answered with a TLS alert and a close
//! while other connections keep working. Certificates are generated at test time with `rcgen`
//! (self-signed, for `localhost` and `127.0.0.1`).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A certificate and key for `localhost` and `127.0.0.1`, as PEM files in `dir`.
struct TestCert {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn test_cert(dir: &Path, name: &str) -> TestCert {
    std::fs::create_dir_all(dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    TestCert { cert, key, der: ck.cert.der().clone() }
}

fn tmp(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("shardcast-tls-{tag}-{}", std::process::id()))
}

/// The binary with TLS, its log lines readable by the test.
struct TlsServer {
    child: Child,
    addr: SocketAddr,
    logs: mpsc::Receiver<String>,
}

impl TlsServer {
    fn start(cert: &TestCert, extra: &[&str]) -> TlsServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .args(["--bind", "127.0.0.1:0", "--threads", "2"])
            .arg("--tls-cert")
            .arg(&cert.cert)
            .arg("--tls-key")
            .arg(&cert.key)
            .args(extra)
            // The backend scripts/test runs this pass on (`--io uring`, then `--io epoll`).
            .args(support::io_args(extra))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shardcast");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.contains("TLS"), "the banner says TLS: {line}");
        let addr = line.split_whitespace().find_map(|w| w.parse::<SocketAddr>().ok()).unwrap_or_else(|| panic!("no address in {line:?}"));
        std::thread::spawn(move || for _ in out.lines() {});
        let (tx, logs) = mpsc::channel();
        let err = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for l in err.lines().map_while(Result::ok) {
                eprintln!("server: {l}");
                let _ = tx.send(l);
            }
        });
        TlsServer { child, addr, logs }
    }

    fn sighup(&self) {
        // SAFETY: signals our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }

    /// Waits for a log line containing `needle`; fails the test after 10 s.
    fn expect_log(&self, needle: &str) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line containing {needle:?} within 10 s"),
            }
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_config(trust: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots).with_no_client_auth())
}

type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// A TLS connection trusting only `trust`; the handshake is completed (or its error returned).
fn tls_connect(addr: SocketAddr, trust: &CertificateDer<'static>) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let conn = ClientConnection::new(client_config(trust), ServerName::try_from("localhost").unwrap()).unwrap();
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// A Socket.IO client on a WebSocket over TLS (minimal: text frames, answers pings).
struct WssClient {
    s: TlsStream,
    buf: Vec<u8>,
}

impl WssClient {
    fn connect(addr: SocketAddr, trust: &CertificateDer<'static>) -> WssClient {
        let mut s = tls_connect(addr, trust).expect("TLS handshake");
        s.write_all(b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
        let mut c = WssClient { s, buf: Vec::new() };
        while !c.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            c.fill();
        }
        let end = c.buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&c.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        c.buf.drain(..end);
        assert!(c.next_text().starts_with("0{"), "the Engine.IO open packet");
        c.send("40");
        assert!(c.next_text().starts_with("40{"), "the Socket.IO connect answer");
        assert_eq!(c.next_text(), r#"42["auth",{}]"#);
        c
    }

    fn fill(&mut self) {
        let mut tmp = [0u8; 16384];
        let n = self.s.read(&mut tmp).expect("read over TLS");
        assert!(n > 0, "the server closed the WebSocket");
        self.buf.extend_from_slice(&tmp[..n]);
    }

    fn send(&mut self, text: &str) {
        let p = text.as_bytes();
        assert!(p.len() < 126);
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![0x81, 0x80 | p.len() as u8];
        f.extend_from_slice(&key);
        f.extend(p.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.s.write_all(&f).unwrap();
        self.s.flush().unwrap();
    }

    /// The next text frame from the server (Engine.IO pings are answered on the way).
    fn next_text(&mut self) -> String {
        loop {
            if self.buf.len() >= 2 {
                let len7 = (self.buf[1] & 0x7f) as usize;
                let (hl, len) = match len7 {
                    126 if self.buf.len() >= 4 => (4, u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize),
                    127 if self.buf.len() >= 10 => (10, u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize),
                    126 | 127 => (usize::MAX, 0),
                    n => (2, n),
                };
                if hl != usize::MAX && self.buf.len() >= hl + len {
                    let op = self.buf[0] & 0x0f;
                    let payload = String::from_utf8_lossy(&self.buf[hl..hl + len]).into_owned();
                    self.buf.drain(..hl + len);
                    assert_eq!(op, 1, "a text frame (got opcode {op})");
                    if payload == "2" {
                        self.send("3");
                        continue;
                    }
                    return payload;
                }
            }
            self.fill();
        }
    }

    /// `message` → `message-back` with the same argument.
    fn round_trip(&mut self, arg: &str) {
        self.send(&format!(r#"42["message","{arg}"]"#));
        assert_eq!(self.next_text(), format!(r#"42["message-back","{arg}"]"#));
    }
}

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "{what} failed:\n{text}");
    text
}

/// The two client suites run one at a time (each starts hundreds of TLS clients; on 2 cores
/// together they would compete for the heartbeat deadlines).
static SUITES: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn socket_io_client_passes_the_contract_over_https_and_wss() {
    let _one = SUITES.lock().unwrap_or_else(|e| e.into_inner());
    let js = interop_dir().join("js");
    assert!(js.join("node_modules/socket.io-client").exists(), "socket.io-client is not installed: run `scripts/test`");
    let dir = tmp("js");
    let cert = test_cert(&dir, "server");
    let s = TlsServer::start(&cert, &["--ping-interval", "300", "--ping-timeout", "200"]);
    let mut cmd = Command::new("node");
    // The client verifies the server's certificate against the test CA (no verification
    // turned off): every mode of the contract suite, over https:// polling and wss://.
    cmd.current_dir(&js)
        // Every contract row in the three modes and the room test across workers (the
        // 500-client test stays with the plain suite: 2 cores, a debug build, 300 ms pings).
        // `--test-force-exit`: done when the tests end, not when idle keep-alives time out.
        .args(["--test", "--test-force-exit", "--test-name-pattern=contract over|across workers", "--test-reporter=spec", "contract.test.js"])
        .env("SHARDCAST_URL", format!("https://localhost:{}", s.addr.port()))
        .env("NODE_EXTRA_CA_CERTS", &cert.cert)
        .env("SHARDCAST_WORKERS", "2");
    let out = run(cmd, "the socket.io-client suite over TLS");
    assert!(out.contains("ℹ pass 28") && out.contains("ℹ fail 0"), "28 tests ran and passed:\n{out}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn python_socketio_passes_the_contract_over_https_and_wss() {
    let _one = SUITES.lock().unwrap_or_else(|e| e.into_inner());
    let py = interop_dir().join("python");
    let python = py.join(".venv/bin/python");
    assert!(python.exists(), "the python-socketio virtualenv is not installed: run `scripts/test`");
    let dir = tmp("py");
    let cert = test_cert(&dir, "server");
    let s = TlsServer::start(&cert, &["--ping-interval", "300", "--ping-timeout", "200"]);
    let mut cmd = Command::new(&python);
    cmd.current_dir(&py)
        // The threaded client over https:// polling (every contract row), the asyncio client
        // over wss:// (the threaded one drops about one wss:// connection in thirty by itself,
        // against Node's socket.io over https too: see test_tls_async.py).
        .args(["-m", "unittest", "-v", "test_contract.ContractPolling", "test_tls_async"])
        .env("SHARDCAST_URL", format!("https://127.0.0.1:{}", s.addr.port()))
        .env("SHARDCAST_SSL_VERIFY", "0")
        // `requests` takes these over `verify=False` when they are set (as on machines with a
        // system CA bundle configured): point them at the test certificate instead.
        .env("REQUESTS_CA_BUNDLE", &cert.cert)
        .env("CURL_CA_BUNDLE", &cert.cert);
    let out = run(cmd, "the python-socketio suite over TLS");
    assert!(out.contains("Ran 9 tests") && out.contains("\nOK"), "every test ran and passed:\n{out}");
    let _ = std::fs::remove_dir_all(dir);
}

fn is_bad_certificate(e: &std::io::Error) -> bool {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()).is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
}

#[test]
fn sighup_swaps_the_certificate_and_keeps_connections() {
    let dir = tmp("hup");
    let a = test_cert(&dir, "a");
    let b = test_cert(&dir, "b");
    let live = TestCert { cert: dir.join("live.crt"), key: dir.join("live.key"), der: a.der.clone() };
    std::fs::copy(&a.cert, &live.cert).unwrap();
    std::fs::copy(&a.key, &live.key).unwrap();
    let s = TlsServer::start(&live, &[]);
    let mut established = WssClient::connect(s.addr, &a.der);
    established.round_trip("before");

    // A broken file: logged, the old certificate stays.
    std::fs::write(&live.cert, "not a certificate").unwrap();
    s.sighup();
    s.expect_log("TLS certificate not reloaded");
    established.round_trip("after-bad-file");
    tls_connect(s.addr, &a.der).expect("still served with the old certificate");

    // The new pair: new handshakes get it, the established connection goes on.
    std::fs::copy(&b.cert, &live.cert).unwrap();
    std::fs::copy(&b.key, &live.key).unwrap();
    s.sighup();
    s.expect_log("TLS certificate reloaded");
    established.round_trip("after-swap");
    let Err(stale) = tls_connect(s.addr, &a.der) else { panic!("a client trusting only the old certificate is refused") };
    assert!(is_bad_certificate(&stale), "{stale:?}");
    let mut fresh = WssClient::connect(s.addr, &b.der);
    fresh.round_trip("new-cert");
    established.round_trip("still");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn garbage_gets_an_alert_and_a_close_while_others_keep_working() {
    let dir = tmp("garbage");
    let cert = test_cert(&dir, "server");
    let s = TlsServer::start(&cert, &[]);
    let mut good = WssClient::connect(s.addr, &cert.der);
    good.round_trip("before");
    for garbage in
        [&b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00][..]]
    {
        let mut raw = TcpStream::connect(s.addr).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        raw.write_all(garbage).unwrap();
        let mut got = Vec::new();
        // Read to the end: the server must close (a timeout fails the test).
        let mut tmp = [0u8; 1024];
        loop {
            match raw.read(&mut tmp) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("the server did not close the connection: {e}"),
            }
        }
        assert_eq!(got.first(), Some(&0x15), "a TLS alert record first: {got:?}");
        assert_eq!(got.len(), 7, "one plaintext alert record, then the close: {got:?}");
    }
    good.round_trip("after");
    let _ = std::fs::remove_dir_all(dir);
}
