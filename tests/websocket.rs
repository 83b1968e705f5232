//! RFC 6455 over the wire, against the raw WebSocket echo of `shardcast echo` (every path but
//! `/engine.io/`): handshake refusals, echo of text and binary, fragmentation, control frames,
//! close codes, UTF-8, size limit, permessage-deflate.

mod support;

use support::*;

fn server(args: &[&str]) -> Server {
    let mut a = vec!["echo", "--threads", "1"];
    a.extend_from_slice(args);
    Server::start(&a)
}

fn close_code(ws: &mut Ws) -> Option<u16> {
    while let Some(f) = ws.recv() {
        if f.opcode == 8 {
            return Some(if f.payload.len() >= 2 { u16::from_be_bytes([f.payload[0], f.payload[1]]) } else { 1005 });
        }
    }
    None
}

#[test]
fn handshake_refusals() {
    let s = server(&[]);
    let base = "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    let r = request(s.addr, format!("{base}Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n").as_bytes());
    assert_eq!((r.status, r.header("sec-websocket-version")), (426, Some("13")));
    let r = request(s.addr, format!("{base}Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes());
    assert_eq!(r.status, 400);
    let r = request(
        s.addr,
        format!("GET /chat HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn echoes_text_binary_and_fragmented_messages() {
    let s = server(&[]);
    let mut ws = Ws::connect(s.addr, "/anything", "");
    ws.send_text("héllo");
    assert_eq!(ws.recv().unwrap(), Frame { fin: true, rsv1: false, opcode: 1, payload: "héllo".into() });
    ws.send_binary(&[0, 255, 7]);
    assert_eq!(ws.recv().unwrap().payload, vec![0, 255, 7]);
    // Fragmented, with a ping in the middle and a code point split across fragments.
    let euro = "€".as_bytes();
    ws.send_frame(false, 1, &[b'a', euro[0]]);
    ws.send_frame(true, 9, b"mid");
    ws.send_frame(false, 0, &euro[1..]);
    ws.send_frame(true, 0, b"z");
    let pong = ws.recv().unwrap();
    assert_eq!((pong.opcode, pong.payload.as_slice()), (10, &b"mid"[..]));
    assert_eq!(ws.recv().unwrap().payload, "a€z".as_bytes());
    // A large message (over 64 KiB, split over many reads).
    let big = vec![b'x'; 200_000];
    ws.send_frame(true, 2, &big);
    assert_eq!(ws.recv().unwrap().payload.len(), 200_000);
    // Close: the server echoes the code.
    ws.send_frame(true, 8, &4000u16.to_be_bytes());
    assert_eq!(close_code(&mut ws), Some(4000));
}

#[test]
fn protocol_errors_get_their_close_codes() {
    let s = server(&["--max-payload", "1000"]);
    type Send<'a> = &'a dyn Fn(&mut Ws);
    let cases: [(Send, u16); 6] = [
        (&|ws| ws.send_frame(true, 1, b"\xff\xfe"), 1007),
        (&|ws| ws.send_frame(true, 3, b""), 1002),
        (&|ws| ws.send_frame(true, 0, b"orphan"), 1002),
        (&|ws| ws.send_frame_rsv(true, true, 1, b"x"), 1002),
        (&|ws| ws.send_frame(true, 2, &[0; 1001]), 1009),
        (&|ws| ws.send_frame(true, 8, &1005u16.to_be_bytes()), 1002),
    ];
    for (send, code) in cases {
        let mut ws = Ws::connect(s.addr, "/x", "");
        send(&mut ws);
        assert_eq!(close_code(&mut ws), Some(code));
    }
    // An unmasked client frame.
    let mut ws = Ws::connect(s.addr, "/x", "");
    use std::io::Write;
    ws.stream.write_all(&[0x81, 0x01, b'a']).unwrap();
    assert_eq!(close_code(&mut ws), Some(1002));
    // Other connections were not affected.
    let mut ok = Ws::connect(s.addr, "/x", "");
    ok.send_text("fine");
    assert_eq!(ok.recv().unwrap().payload, b"fine");
}

#[test]
fn permessage_deflate_both_ways() {
    let s = server(&["--websocket-compression"]);
    let mut ws = Ws::connect(s.addr, "/x", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
    // No context takeover either way (RFC 7692 §7.1.1): no zlib state outlives a message.
    assert!(
        ws.response_head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
        "{}",
        ws.response_head
    );
    // RFC 7692 §7.2.3.1: "Hello" compressed.
    ws.send_frame_rsv(true, true, 1, &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]);
    let f = ws.recv().unwrap();
    assert_eq!((f.rsv1, f.payload.as_slice()), (false, &b"Hello"[..]), "small replies are not compressed");
    // A large message comes back compressed.
    let text = "hello world ".repeat(500);
    ws.send_text(&text);
    let f = ws.recv().unwrap();
    assert!(f.rsv1 && f.payload.len() < text.len() / 4);
    let mut d = flate2::Decompress::new(false);
    let mut input = f.payload.clone();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(text.len() + 64);
    d.decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync).unwrap();
    assert_eq!(out, text.as_bytes());
    // The next one is compressed on its own: a fresh inflater (no shared window) reads it.
    ws.send_text(&text);
    let f = ws.recv().unwrap();
    assert!(f.rsv1);
    let mut input = f.payload.clone();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(text.len() + 64);
    flate2::Decompress::new(false).decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync).unwrap();
    assert_eq!(out, text.as_bytes());
    // Without the offer, no extension.
    let ws = Ws::connect(s.addr, "/x", "");
    assert!(!ws.response_head.contains("Sec-WebSocket-Extensions"));
}
