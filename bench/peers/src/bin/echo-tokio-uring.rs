//! Raw WebSocket echo on tokio-uring (a general async runtime on io_uring), single-threaded,
//! using shardcast's own sans-IO WebSocket codec so that only
//! the runtime differs from shardcast's echo mode.
use std::net::SocketAddr;

use shardcast::proto::ws::{frame, handshake, CodecConfig, Decoded, Message, OpCode, ServerCodec};
use tokio_uring::net::{TcpListener, TcpStream};

async fn serve(stream: TcpStream) {
    let mut buf = vec![0u8; 16384];
    let mut have = Vec::new();
    // Handshake.
    let codec_cfg = loop {
        let (r, b) = stream.read(buf).await;
        buf = b;
        let Ok(n) = r else { return };
        if n == 0 {
            return;
        }
        have.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = req.parse(&have) {
            let Ok(up) = handshake::validate(req.method.unwrap_or(""), req.version.unwrap_or(1), req.headers) else { return };
            let acc = handshake::accept(&up, |_| None, None, "");
            let (r, _) = stream.write_all(acc.response).await;
            if r.is_err() {
                return;
            }
            have.drain(..len);
            break CodecConfig { max_message_size: 1 << 20, deflate: None, compress_threshold: usize::MAX };
        }
    };
    let mut codec = ServerCodec::new(codec_cfg);
    loop {
        let mut out = Vec::new();
        let mut pos = 0;
        loop {
            match codec.decode(&mut have[pos..]) {
                Ok(Decoded::Incomplete { .. }) => break,
                Ok(Decoded::Frame { consumed, message }) => {
                    match message {
                        Some(Message::Text(t)) => out.extend_from_slice(&frame::encode_frame(OpCode::Text, false, t)),
                        Some(Message::Binary(b)) => out.extend_from_slice(&frame::encode_frame(OpCode::Binary, false, b)),
                        Some(Message::Close(_)) => return,
                        _ => {}
                    }
                    pos += consumed;
                }
                Err(_) => return,
            }
        }
        have.drain(..pos);
        if !out.is_empty() {
            let (r, _) = stream.write_all(out).await;
            if r.is_err() {
                return;
            }
        }
        let (r, b) = stream.read(buf).await;
        buf = b;
        match r {
            Ok(0) | Err(_) => return,
            Ok(n) => have.extend_from_slice(&buf[..n]),
        }
    }
}

fn main() {
    let addr: SocketAddr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9002".into()).parse().unwrap();
    tokio_uring::start(async move {
        let listener = TcpListener::bind(addr).expect("bind");
        println!("echo-tokio-uring listening on {addr}");
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio_uring::spawn(serve(stream));
        }
    })
}
