//! TLS on the connection table, for every backend: a [`rustls::ServerConnection`] per
//! connection driven sans-IO by [`super::conn::Shard`] (ciphertext in from the backend's receive
//! buffers, plaintext out to the service; the service's queued frames encrypted into one
//! ciphertext buffer per connection per loop pass), and the certificate store that SIGHUP
//! reloads.
//!
//! Owns: loading PEM certificates and keys, the process-wide rustls configuration, the
//! swappable certificate ([`CertStore`], read at each new handshake), and each connection's
//! TLS state ([`TlsConn`]: the rustls session, its ciphertext send queue, close-notify and
//! failure flags).
//!
//! Bounded by construction: rustls holds at most one record (16 KiB + overhead) of
//! undecrypted input and at most [`RUSTLS_BUFFER_LIMIT`] of ciphertext or pre-handshake
//! plaintext per connection; decrypted input is handed to the service at once and counted in
//! the connection's read buffer like plain input; ciphertext moved out of the send queue is at
//! most [`FLUSH_MAX`] per connection per pass (plus one record); a peer that has not finished
//! its handshake after [`HANDSHAKE_TIMEOUT`] is closed. Bad records get a TLS alert, then a
//! close.
//!
//! Must never: parse anything above TLS (HTTP, WebSocket), read the clock, block, or touch a
//! socket (the backend does the I/O).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::sendq::SendQueue;

/// A peer that has not completed its handshake this long after connecting is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most plaintext bytes encrypted for one connection in one loop pass (the rest waits in its
/// send queue for the next pass, after the write completes).
pub const FLUSH_MAX: usize = 256 << 10;
/// What rustls itself may buffer per connection (ciphertext not yet taken, plaintext written
/// before the handshake ended).
pub const RUSTLS_BUFFER_LIMIT: usize = 64 << 10;

/// A plaintext TLS record: alert, TLS 1.2 record version, length 2, level fatal (2),
/// description decode_error (50), as rustls sends it before the handshake.
const DECODE_ERROR_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 50];

/// Why a certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {source}")]
    Cert { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("no certificate in {path}")]
    NoCert { path: PathBuf },
    #[error("cannot read the private key {path}: {source}")]
    Key { path: PathBuf, source: rustls_pki_types::pem::Error },
    #[error("the certificate {cert} and the key {key} cannot be used together: {source}")]
    Pair { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The certificate new handshakes get, and where it came from. [`CertStore::reload`] swaps it
/// in place: handshakes already done keep theirs, later ones get the new one.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl CertStore {
    fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(cert).and_then(|it| it.collect::<Result<_, _>>()).map_err(|source| TlsError::Cert { path: cert.into(), source })?;
        if chain.is_empty() {
            return Err(TlsError::NoCert { path: cert.into() });
        }
        let der = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key { path: key.into(), source })?;
        CertifiedKey::from_der(chain, der, provider).map_err(|source| TlsError::Pair { cert: cert.into(), key: key.into(), source })
    }

    /// Reads the certificate chain and key from their files again. On any error the current
    /// pair stays in use and the error is returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = Self::load_pair(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Held for one reference-count increment; a reload holds it for one pointer swap.
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// TLS settings of the public port: the rustls configuration every worker shares, and the
/// certificate store behind it.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ServerConfig>,
    store: Arc<CertStore>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("cert", &self.store.cert_path).field("key", &self.store.key_path).finish()
    }
}

impl Tls {
    /// Loads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1) and checks that they belong together.
    pub fn from_pem_files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Tls, TlsError> {
        let (cert_path, key_path) = (cert.into(), key.into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let pair = CertStore::load_pair(&cert_path, &key_path, &provider)?;
        let store = Arc::new(CertStore { cert_path, key_path, provider: provider.clone(), current: RwLock::new(Arc::new(pair)) });
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        Ok(Tls { config: Arc::new(config), store })
    }

    /// Reloads the certificate and key from the same files (see [`CertStore::reload`]).
    pub fn reload(&self) -> Result<(), TlsError> {
        self.store.reload()
    }

    /// The files the certificate and key are read from.
    pub fn paths(&self) -> (&Path, &Path) {
        (&self.store.cert_path, &self.store.key_path)
    }

    /// A new connection's TLS state.
    pub(super) fn accept(&self) -> Result<Box<TlsConn>, rustls::Error> {
        let mut conn = ServerConnection::new(self.config.clone())?;
        conn.set_buffer_limit(Some(RUSTLS_BUFFER_LIMIT));
        Ok(Box::new(TlsConn { conn, wire: SendQueue::default(), handshaken: false, notified: false, failed: false }))
    }
}

/// One connection's TLS state. It moves with the connection when a worker hands it over.
pub struct TlsConn {
    pub(super) conn: ServerConnection,
    /// Ciphertext queued for the socket (the connection's own send queue holds plaintext).
    pub(super) wire: SendQueue,
    /// The handshake completed (its deadline was cleared).
    pub(super) handshaken: bool,
    /// A close_notify alert was queued: nothing more is encrypted.
    pub(super) notified: bool,
    /// The peer sent bad TLS: the alert rustls queued is the last thing written.
    pub(super) failed: bool,
}

/// What one receive gave after decryption.
pub(super) struct Decrypted {
    /// The peer sent bad TLS (an alert is queued).
    pub error: Option<rustls::Error>,
    /// The handshake completed during this receive.
    pub handshake_done: bool,
}

impl TlsConn {
    /// Decrypts `input`, appending the plaintext to `plain`. What one call appends is bounded by
    /// the records completed, which is at most `input.len()` plus the part of a record that an
    /// earlier call buffered in rustls (a record's plaintext is never longer than the record).
    pub(super) fn decrypt(&mut self, mut input: &[u8], plain: &mut Vec<u8>) -> Decrypted {
        let was_handshaking = self.conn.is_handshaking();
        let mut error = None;
        while !input.is_empty() && error.is_none() {
            // rustls takes at most what its deframer has room for; processing frees it.
            if let Err(e) = self.conn.read_tls(&mut input) {
                error = Some(rustls::Error::General(format!("reading TLS records: {e}")));
                break;
            }
            match self.conn.process_new_packets() {
                Ok(state) => {
                    let n = state.plaintext_bytes_to_read();
                    if n > 0 {
                        let start = plain.len();
                        plain.resize(start + n, 0);
                        // Exactly what rustls says it holds: cannot come up short.
                        let got = std::io::Read::read(&mut self.conn.reader(), &mut plain[start..]).unwrap_or(0);
                        plain.truncate(start + got);
                    }
                }
                Err(e) => error = Some(e),
            }
        }
        if error.is_some() {
            self.failed = true;
            if !self.conn.wants_write() && self.conn.is_handshaking() {
                // rustls answers most errors with an alert but not all (an oversized
                // handshake message, for one); before the handshake an alert is a plaintext
                // record, so the peer gets a fatal decode_error from here.
                let _ = self.wire.push(Bytes::from_static(&DECODE_ERROR_ALERT), usize::MAX);
            }
        }
        Decrypted { error, handshake_done: was_handshaking && !self.conn.is_handshaking() && !self.failed }
    }

    /// Encrypts plaintext frames taken from `plain` (at most [`FLUSH_MAX`] bytes of them, none
    /// before the handshake ends or after a close_notify or failure) and queues the ciphertext,
    /// with any handshake or alert records rustls has waiting, as one buffer on `wire`.
    pub(super) fn encrypt(&mut self, plain: &mut SendQueue) {
        let mut out = Vec::new();
        loop {
            while self.conn.wants_write() {
                // Writing into a Vec cannot fail.
                if self.conn.write_tls(&mut out).is_err() {
                    break;
                }
            }
            if out.len() >= FLUSH_MAX || self.conn.is_handshaking() || self.notified || self.failed {
                break;
            }
            let Some(frame) = plain.pop_front() else { break };
            let n = std::io::Write::write(&mut self.conn.writer(), &frame).unwrap_or(0);
            if n < frame.len() {
                plain.push_front(frame.slice(n..));
            }
            if n == 0 && !self.conn.wants_write() {
                break;
            }
        }
        if !out.is_empty() {
            let _ = self.wire.push(Bytes::from(out), usize::MAX);
        }
    }

    /// Queues a close_notify alert (a polite close), unless the handshake never finished or
    /// the peer sent bad TLS. Returns whether one was queued.
    pub(super) fn notify_close(&mut self) -> bool {
        if self.notified || self.failed || self.conn.is_handshaking() {
            return false;
        }
        self.notified = true;
        self.conn.send_close_notify();
        true
    }

    /// Nothing left to write: no ciphertext queued or in flight, nothing waiting in rustls.
    pub(super) fn idle(&self) -> bool {
        !self.wire.has_queued() && !self.wire.in_flight() && !self.conn.wants_write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, ck.cert.pem()).unwrap();
        std::fs::write(&k, ck.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shardcast-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_bad_reload_keeps_the_old_certificate() {
        let d = tmpdir("reload");
        let (c, k) = write_pair(&d, "a");
        let tls = Tls::from_pem_files(&c, &k).unwrap();
        let before = tls.store.current.read().unwrap().cert[0].clone();
        std::fs::write(&c, "not a certificate").unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::NoCert { .. })));
        assert_eq!(tls.store.current.read().unwrap().cert[0], before);
        // A key of another pair is refused too.
        let (c2, _) = write_pair(&d, "b");
        std::fs::copy(&c2, &c).unwrap();
        assert!(matches!(tls.reload(), Err(TlsError::Pair { .. })), "{:?}", tls.reload());
        assert_eq!(tls.store.current.read().unwrap().cert[0], before);
        // A good pair is taken.
        let (c3, k3) = write_pair(&d, "c");
        std::fs::copy(&c3, &c).unwrap();
        std::fs::copy(&k3, &k).unwrap();
        tls.reload().unwrap();
        assert_ne!(tls.store.current.read().unwrap().cert[0], before);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn missing_files_are_named() {
        let e = Tls::from_pem_files("/nonexistent/a.crt", "/nonexistent/a.key").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/a.crt"), "{e}");
    }
}
