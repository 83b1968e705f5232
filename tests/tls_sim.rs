//! TLS in the connection table, in the deterministic harness (`rt::sim`) with a real rustls
//! client on the other end of the simulated socket: handshake and Engine.IO over TLS, a
//! hand-off of a TLS connection between workers, the handshake deadline (injected clock),
//! bad records answered with an alert, close_notify on a polite close, SIGHUP-style reload.
//! The test certificates are generated here with `rcgen`.

mod sim_support;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use shardcast::rt::sim::ClientId;
use shardcast::rt::tls::{Tls, HANDSHAKE_TIMEOUT};
use sim_support::*;

/// A self-signed certificate for `localhost` written to a fresh directory: (cert, key, DER).
fn cert(tag: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
    let dir = std::env::temp_dir().join(format!("shardcast-tls-sim-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, ck.cert.pem()).unwrap();
    std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
    (c, k, ck.cert.der().clone())
}

fn client_config(trust: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(trust.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions().unwrap().with_root_certificates(roots).with_no_client_auth())
}

fn tls_sim(workers: usize, tls: Tls) -> Echo {
    let cfg = engine_cfg();
    let rt = shardcast::rt::WorkerConfig { tls: Some(tls), ..worker_cfg(&cfg) };
    sim_with(workers, cfg, rt)
}

/// A rustls client on a simulated connection.
struct TlsClient {
    id: ClientId,
    conn: ClientConnection,
    plain: Vec<u8>,
    /// The server sent close_notify.
    closed_cleanly: bool,
    /// Every byte the server wrote, as it was on the wire.
    raw: Vec<u8>,
}

impl TlsClient {
    fn connect(s: &mut Echo, w: usize, trust: &CertificateDer<'static>) -> TlsClient {
        let id = s.connect(w);
        let mut conn = ClientConnection::new(client_config(trust), ServerName::try_from("localhost").unwrap()).unwrap();
        conn.set_buffer_limit(None);
        let mut c = TlsClient { id, conn, plain: Vec::new(), closed_cleanly: false, raw: Vec::new() };
        c.pump(s).expect("the handshake");
        assert!(!c.conn.is_handshaking(), "the handshake completes");
        c
    }

    /// Moves bytes both ways until neither side has more; returns rustls's verdict on what the
    /// server sent.
    fn pump(&mut self, s: &mut Echo) -> Result<(), rustls::Error> {
        for _ in 0..100 {
            let mut out = Vec::new();
            while self.conn.wants_write() {
                self.conn.write_tls(&mut out).unwrap();
            }
            if !out.is_empty() {
                s.write(self.id, &out);
            }
            let got = s.read(self.id);
            self.raw.extend_from_slice(&got);
            if got.is_empty() && out.is_empty() {
                return Ok(());
            }
            let mut rd = &got[..];
            while !rd.is_empty() {
                self.conn.read_tls(&mut rd).unwrap();
                let st = self.conn.process_new_packets()?;
                if st.peer_has_closed() {
                    self.closed_cleanly = true;
                }
                let mut buf = vec![0; st.plaintext_bytes_to_read()];
                self.conn.reader().read_exact(&mut buf).unwrap();
                self.plain.extend_from_slice(&buf);
            }
        }
        panic!("the TLS exchange does not settle");
    }

    fn send(&mut self, s: &mut Echo, bytes: &[u8]) {
        self.conn.writer().write_all(bytes).unwrap();
        self.pump(s).unwrap();
    }

    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.plain)
    }
}

/// Opens a polling session over TLS; returns the sid.
fn tls_session(s: &mut Echo, c: &mut TlsClient) -> String {
    c.send(s, &get("/engine.io/?EIO=4&transport=polling"));
    let r = one_response(&c.take());
    assert_eq!(r.status, 200);
    r.text().split("\"sid\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned()
}

#[test]
fn engine_io_over_tls_round_trip() {
    let (c, k, der) = cert("rt");
    let mut s = tls_sim(1, Tls::from_pem_files(c, k).unwrap());
    let mut cl = TlsClient::connect(&mut s, 0, &der);
    let sid = tls_session(&mut s, &mut cl);
    cl.send(&mut s, &post(&polling(&sid), b"4hello"));
    assert_eq!(one_response(&cl.take()).body, b"ok");
    cl.send(&mut s, &get(&polling(&sid)));
    assert_eq!(one_response(&cl.take()).body, b"4hello");
    // Nothing went over the wire in the clear.
    assert!(!cl.raw.windows(6).any(|w| w == b"4hello") && !cl.raw.windows(8).any(|w| w == b"HTTP/1.1"));
    let stats = s.shard(0).io.stats();
    assert_eq!((stats.tls_failed, stats.tls_handshake_timeout), (0, 0));
}

#[test]
fn a_large_response_is_encrypted_across_passes() {
    // More than FLUSH_MAX queued at once (a 1 MB polling payload): it arrives whole and in
    // order, in several ciphertext writes.
    let (c, k, der) = cert("large");
    let mut s = tls_sim(1, Tls::from_pem_files(c, k).unwrap());
    let mut cl = TlsClient::connect(&mut s, 0, &der);
    let sid = tls_session(&mut s, &mut cl);
    let big: String = (0..600_000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    cl.send(&mut s, &post(&polling(&sid), format!("4{big}").as_bytes()));
    assert_eq!(one_response(&cl.take()).body, b"ok");
    // A window smaller than one ciphertext buffer: writes complete in parts.
    s.set_window(cl.id, 70_000);
    cl.conn.writer().write_all(&get(&polling(&sid))).unwrap();
    let mut all = Vec::new();
    for _ in 0..100 {
        cl.pump(&mut s).unwrap();
        all.extend(cl.take());
        if all.len() > big.len() {
            break;
        }
        s.set_window(cl.id, 70_000);
    }
    let r = one_response(&all);
    assert_eq!(r.body.len(), big.len() + 1);
    assert!(r.body[1..] == *big.as_bytes());
}

#[test]
fn a_tls_connection_is_handed_over_with_its_session() {
    let (c, k, der) = cert("handoff");
    let mut s = tls_sim(2, Tls::from_pem_files(c, k).unwrap());
    let mut a = TlsClient::connect(&mut s, 0, &der);
    let sid = tls_session(&mut s, &mut a);
    // A second TLS connection, accepted by worker 1, names worker 0's session: worker 1 hands
    // the connection (and its rustls session) over; worker 0 answers on it.
    let mut b = TlsClient::connect(&mut s, 1, &der);
    b.send(&mut s, &post(&polling(&sid), b"4over"));
    assert_eq!(one_response(&b.take()).body, b"ok");
    assert_eq!(s.worker_of(b.id), 0, "the connection moved to the session's worker");
    b.send(&mut s, &get(&polling(&sid)));
    assert_eq!(one_response(&b.take()).body, b"4over");
    assert_eq!(s.total_conns(), 2);
}

#[test]
fn a_peer_that_never_finishes_its_handshake_is_cut_at_the_deadline() {
    let (c, k, _) = cert("deadline");
    let mut s = tls_sim(1, Tls::from_pem_files(c, k).unwrap());
    let id = s.connect(0);
    // Half a ClientHello, then nothing.
    s.write(id, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]);
    s.advance(HANDSHAKE_TIMEOUT - Duration::from_millis(1));
    assert!(!s.shut_by_server(id));
    s.advance(Duration::from_millis(2));
    assert!(s.closed_by_server(id));
    assert_eq!(s.shard(0).io.stats().tls_handshake_timeout, 1);
    assert_eq!(s.total_conns(), 0);
}

#[test]
fn garbage_gets_an_alert_then_a_close_and_others_keep_working() {
    let (c, k, der) = cert("garbage");
    let mut s = tls_sim(1, Tls::from_pem_files(c, k).unwrap());
    let mut good = TlsClient::connect(&mut s, 0, &der);
    let sid = tls_session(&mut s, &mut good);
    // Plain HTTP on the TLS port.
    let bad = s.connect(0);
    s.write(bad, &get("/engine.io/?EIO=4&transport=polling"));
    let got = s.read(bad);
    assert_eq!(got.first(), Some(&0x15), "a TLS alert record: {got:?}");
    s.close(bad);
    assert!(s.closed_by_server(bad));
    // A handshake record announcing an oversized message.
    let bad = s.connect(0);
    s.write(bad, &[0x16, 0x03, 0x01, 0x00, 0x05, 0xde, 0xad, 0xbe, 0xef, 0x00]);
    let got = s.read(bad);
    assert_eq!(got.first(), Some(&0x15), "a TLS alert record: {got:?}");
    s.close(bad);
    assert!(s.closed_by_server(bad));
    // Garbage after a complete handshake: an (encrypted) alert, then the close.
    let mut hs = TlsClient::connect(&mut s, 0, &der);
    s.write(hs.id, &[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]);
    assert!(hs.pump(&mut s).is_err(), "the client reads the server's alert");
    s.close(hs.id);
    assert!(s.closed_by_server(hs.id));
    assert_eq!(s.shard(0).io.stats().tls_failed, 3);
    // The first client is untouched.
    good.send(&mut s, &post(&polling(&sid), b"4still"));
    assert_eq!(one_response(&good.take()).body, b"ok");
    good.send(&mut s, &get(&polling(&sid)));
    assert_eq!(one_response(&good.take()).body, b"4still");
}

#[test]
fn a_polite_close_sends_close_notify() {
    let (c, k, der) = cert("notify");
    let mut s = tls_sim(1, Tls::from_pem_files(c, k).unwrap());
    let mut cl = TlsClient::connect(&mut s, 0, &der);
    cl.send(&mut s, b"GET /engine.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(one_response(&cl.take()).status, 200);
    assert!(cl.closed_cleanly, "close_notify after the last response");
}

#[test]
fn a_reload_serves_new_handshakes_with_the_new_certificate() {
    let (c, k, der_a) = cert("reload");
    let tls = Tls::from_pem_files(&c, &k).unwrap();
    let mut s = tls_sim(1, tls.clone());
    let mut old = TlsClient::connect(&mut s, 0, &der_a);
    let sid = tls_session(&mut s, &mut old);
    let (c2, k2, der_b) = cert("reload-new");
    std::fs::copy(c2, &c).unwrap();
    std::fs::copy(k2, &k).unwrap();
    tls.reload().unwrap();
    // The established connection goes on.
    old.send(&mut s, &post(&polling(&sid), b"4after"));
    assert_eq!(one_response(&old.take()).body, b"ok");
    // A client trusting only the old certificate is refused; one trusting the new one is not.
    let id = s.connect(0);
    let mut stale = TlsClient {
        id,
        conn: ClientConnection::new(client_config(&der_a), ServerName::try_from("localhost").unwrap()).unwrap(),
        plain: Vec::new(),
        closed_cleanly: false,
        raw: Vec::new(),
    };
    assert!(matches!(stale.pump(&mut s), Err(rustls::Error::InvalidCertificate(_))));
    let mut fresh = TlsClient::connect(&mut s, 0, &der_b);
    tls_session(&mut s, &mut fresh);
}
