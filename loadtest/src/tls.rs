//! The load generator's byte stream: plain TCP, or TLS (`--tls`) driven sans-IO with a rustls
//! `ClientConnection` over the same tokio `TcpStream`, so the WebSocket client above keeps its
//! one buffer and its non-blocking `try_read` path either way.
//! Owns one socket; never spawns, never sleeps.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client configuration trusting the PEM certificates in `ca` (the server's own
/// self-signed certificate in the benchmarks).
pub fn client_config(ca: &str) -> io::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(io::Error::other)? {
        roots.add(c.map_err(io::Error::other)?).map_err(io::Error::other)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// A connected stream, plain or TLS.
pub struct Stream {
    tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
    /// Ciphertext read from or written to the socket (TLS only).
    scratch: Vec<u8>,
}

impl Stream {
    pub fn plain(tcp: TcpStream) -> Stream {
        Stream { tcp, tls: None, scratch: Vec::new() }
    }

    /// TLS over `tcp`, the handshake completed, the server named `localhost`.
    pub async fn tls(tcp: TcpStream, cfg: Arc<ClientConfig>) -> io::Result<Stream> {
        let mut conn = ClientConnection::new(cfg, ServerName::try_from("localhost").expect("a valid name")).map_err(io::Error::other)?;
        conn.set_buffer_limit(None);
        let mut s = Stream { tcp, tls: Some(Box::new(conn)), scratch: Vec::new() };
        let mut sink = Vec::new();
        loop {
            s.write_pending().await?;
            if !s.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
                return Ok(s);
            }
            let mut tmp = Vec::with_capacity(16 << 10);
            if s.tcp.read_buf(&mut tmp).await? == 0 {
                return Err(io::Error::other("closed during the TLS handshake"));
            }
            Self::decrypt(s.tls.as_mut().expect("set above"), &tmp, &mut sink)?;
        }
    }

    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp.local_addr()
    }

    /// Writes what rustls has encrypted.
    async fn write_pending(&mut self) -> io::Result<()> {
        let Some(t) = self.tls.as_mut() else { return Ok(()) };
        self.scratch.clear();
        while t.wants_write() {
            t.write_tls(&mut self.scratch)?;
        }
        if !self.scratch.is_empty() {
            self.tcp.write_all(&self.scratch).await?;
        }
        Ok(())
    }

    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self.tls.as_mut() {
            None => self.tcp.write_all(data).await,
            Some(t) => {
                t.writer().write_all(data)?;
                self.write_pending().await
            }
        }
    }

    /// Feeds ciphertext to rustls and appends the plaintext to `buf`; returns its length.
    fn decrypt(t: &mut ClientConnection, mut input: &[u8], buf: &mut Vec<u8>) -> io::Result<usize> {
        let mut n = 0;
        while !input.is_empty() {
            t.read_tls(&mut input)?;
            let st = t.process_new_packets().map_err(io::Error::other)?;
            let k = st.plaintext_bytes_to_read();
            if k > 0 {
                let at = buf.len();
                buf.resize(at + k, 0);
                t.reader().read_exact(&mut buf[at..])?;
                n += k;
            }
        }
        Ok(n)
    }

    /// Waits for bytes and appends them to `buf`; 0 at end of stream. For TLS, returns once
    /// some plaintext arrived (handshake records alone do not count).
    pub async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.tcp.read_buf(buf).await;
        }
        loop {
            let mut tmp = std::mem::take(&mut self.scratch);
            tmp.clear();
            tmp.reserve(16 << 10);
            let got = self.tcp.read_buf(&mut tmp).await;
            let n = match got {
                Ok(0) => Ok(None),
                Ok(_) => Self::decrypt(self.tls.as_mut().expect("checked"), &tmp, buf).map(Some),
                Err(e) => Err(e),
            };
            self.scratch = tmp;
            match n? {
                // End of stream.
                None => return Ok(0),
                // Only part of a record, or records without data: wait for more.
                Some(0) => continue,
                Some(n) => return Ok(n),
            }
        }
    }

    /// Appends what is already there without waiting; `WouldBlock` when nothing (or only
    /// part of a record) arrived, 0 at end of stream.
    pub fn try_read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if self.tls.is_none() {
            return self.tcp.try_read_buf(buf);
        }
        let mut tmp = std::mem::take(&mut self.scratch);
        tmp.clear();
        tmp.reserve(16 << 10);
        let res = self.tcp.try_read_buf(&mut tmp);
        let out = match res {
            Ok(0) => Ok(0),
            Ok(_) => match Self::decrypt(self.tls.as_mut().expect("checked"), &tmp, buf) {
                Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
                r => r,
            },
            Err(e) => Err(e),
        };
        self.scratch = tmp;
        out
    }

    pub async fn shutdown(&mut self) -> io::Result<()> {
        if let Some(t) = self.tls.as_mut() {
            t.send_close_notify();
            self.write_pending().await?;
        }
        self.tcp.shutdown().await
    }
}
