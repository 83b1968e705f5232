//! The load generator's WebSocket client against a scripted server on loopback: fragmented
//! messages are reassembled, 16-bit lengths parsed, a frame split across reads waited for,
//! pings answered with the same payload, and a close echoed — as seen on the wire by the
//! server side of the socket.
use std::io::{Read, Write};
use std::net::TcpListener;

#[allow(dead_code)]
#[path = "../src/tls.rs"]
mod tls;
#[allow(dead_code)]
#[path = "../src/ws.rs"]
mod ws;

fn read_frame(s: &mut std::net::TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[1] & 0x80, 0x80, "client frames are masked");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            u16::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut mask = [0u8; 4];
    s.read_exact(&mut mask).unwrap();
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    for (i, b) in p.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    (h[0], p)
}

#[tokio::test(flavor = "current_thread")]
async fn parses_fragments_long_frames_pings_and_close() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut req = Vec::new();
        let mut b = [0u8; 1];
        while !req.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            req.push(b[0]);
        }
        let text = String::from_utf8(req).unwrap();
        let key = text.lines().find_map(|l| l.strip_prefix("Sec-WebSocket-Key: ")).unwrap().trim().to_string();
        let accept = shardcast::proto::ws::handshake::accept_key(&key);
        let mut out =
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").into_bytes();
        out.extend_from_slice(&[0x01, 3, b'a', b'b', b'c', 0x80, 2, b'd', b'e']); // "abc" + "de", fragmented
        out.extend_from_slice(&[0x89, 2, b'h', b'i']); // ping "hi"
        out.extend_from_slice(&[0x81, 126, 1, 44]); // a 300-byte text message
        out.extend(std::iter::repeat_n(b'x', 300));
        // Split inside the last frame: the client must wait for the rest.
        let (a, rest) = out.split_at(out.len() - 100);
        s.write_all(a).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        s.write_all(rest).unwrap();
        let pong = read_frame(&mut s);
        s.write_all(&[0x88, 2, 0x03, 0xe8]).unwrap(); // close 1000
        let close = read_frame(&mut s);
        (pong, close)
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut c = ws::WsConn::handshake(tls::Stream::plain(stream), &addr.to_string(), "/").await.unwrap();
    let mut got: Vec<Vec<u8>> = Vec::new();
    while got.len() < 2 {
        c.messages(|m| got.push(m.to_vec())).unwrap();
        c.flush().await.unwrap();
        if got.len() < 2 {
            assert!(c.read_more().await.unwrap());
        }
    }
    assert_eq!(got[0], b"abcde");
    assert_eq!(got[1], vec![b'x'; 300]);
    while !c.is_closed() {
        c.read_more().await.unwrap();
        c.messages(|_| panic!("no more messages")).unwrap();
        c.flush().await.unwrap();
    }
    let (pong, close) = server.join().unwrap();
    assert_eq!(pong, (0x8a, b"hi".to_vec()));
    assert_eq!(close, (0x88, vec![0x03, 0xe8]));
}
