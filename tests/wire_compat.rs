//! Wire compatibility with the reference (Node's engine.io 6.6 / socket.io 4.8), one test per
//! difference found: what the reference sends, byte for byte, where shardcast sent something
//! else. Socket.IO behaviour runs an in-process server with the contract app and raw
//! WebSocket clients; Engine.IO timing runs in the in-memory harness.

mod sim_support;
mod support;

use std::time::Duration;

use serde_json::json;
use shardcast::app::{contract, RunningServer, Server};
use shardcast::engine::EngineConfig;
use shardcast::proto::eio::SessionConfig;
use support::{Frame, Ws};

fn start_contract(threads: usize) -> RunningServer {
    let engine = EngineConfig {
        session: SessionConfig { ping_interval: Duration::from_millis(300), ping_timeout: Duration::from_millis(200), ..Default::default() },
        ..Default::default()
    };
    let builder = Server::builder().engine(engine).bind("127.0.0.1:0".parse().unwrap()).threads(threads).pin(false).backlog(1024).io(support::test_io());
    contract::app(builder).start().expect("server starts")
}

/// A raw Socket.IO client over WebSocket, connected to `/`; its `auth` event is consumed.
fn sio_client(server: &RunningServer) -> Ws {
    let mut ws = Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(Duration::from_secs(5));
    assert!(ws.recv_text().starts_with("0{"));
    ws.send_text("40");
    assert!(ws.recv_eio().starts_with("40{"));
    assert_eq!(ws.recv_eio(), r#"42["auth",{}]"#);
    ws
}

/// The next frame that is not an Engine.IO ping (pings are answered).
fn next_frame(ws: &mut Ws) -> Frame {
    loop {
        let f = ws.recv().expect("a frame");
        if f.opcode == 1 && f.payload == b"2" {
            ws.send_text("3");
            continue;
        }
        return f;
    }
}

/// A BINARY_EVENT header text frame, then its one binary attachment `[1, 2, 3]`.
fn expect_binary_event(ws: &mut Ws, header: &str) {
    let f = next_frame(ws);
    assert_eq!((f.opcode, String::from_utf8_lossy(&f.payload).into_owned()), (1, header.to_owned()));
    let f = next_frame(ws);
    assert_eq!((f.opcode, f.payload.as_slice()), (2, &[1u8, 2, 3][..]), "the attachment follows its header");
}

const PLACEHOLDER: &str = r#"{"_placeholder":true,"num":0}"#;

/// Every kind of server emit carries its binary attachments: to the sender, with an ack, to a
/// room, as a broadcast, and from a `ServerHandle`. The emit with an ack (`call-me` →
/// `ping-back`) used to send the placeholder and drop the bytes.
#[test]
fn every_kind_of_emit_sends_its_binary_attachments() {
    let server = start_contract(2);
    let mut a = sio_client(&server);
    let mut b = sio_client(&server);
    let send_bin = |ws: &mut Ws, head: &str| {
        ws.send_text(head);
        ws.send_binary(&[1, 2, 3]);
    };
    // Plain emit back to the sender.
    send_bin(&mut a, &format!(r#"451-["message",{PLACEHOLDER}]"#));
    expect_binary_event(&mut a, &format!(r#"451-["message-back",{PLACEHOLDER}]"#));
    // Emit with an ack: the header carries the ack id, then the attachment; the client's
    // binary answer comes back in `pong-result`.
    send_bin(&mut a, &format!(r#"451-["call-me",{PLACEHOLDER}]"#));
    let f = next_frame(&mut a);
    let header = String::from_utf8(f.payload).unwrap();
    let id: String = header.strip_prefix("451-").expect("a BINARY_EVENT with one attachment").chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(header, format!(r#"451-{id}["ping-back",{PLACEHOLDER}]"#));
    let f = next_frame(&mut a);
    assert_eq!((f.opcode, f.payload.as_slice()), (2, &[1u8, 2, 3][..]), "the ack'd emit's attachment");
    send_bin(&mut a, &format!(r#"461-{id}[{PLACEHOLDER}]"#));
    expect_binary_event(&mut a, &format!(r#"451-["pong-result",{PLACEHOLDER}]"#));
    // To a room (both clients are members; the ack comes first).
    for ws in [&mut a, &mut b] {
        ws.send_text(r#"420["join","r"]"#);
        assert_eq!(ws.recv_eio(), "430[true]");
    }
    send_bin(&mut a, &format!(r#"451-["to-room","r",{PLACEHOLDER}]"#));
    expect_binary_event(&mut a, &format!(r#"451-["room-message",{PLACEHOLDER}]"#));
    expect_binary_event(&mut b, &format!(r#"451-["room-message",{PLACEHOLDER}]"#));
    // Broadcast: everyone but the sender.
    send_bin(&mut a, &format!(r#"451-["broadcast",{PLACEHOLDER}]"#));
    expect_binary_event(&mut b, &format!(r#"451-["broadcast-back",{PLACEHOLDER}]"#));
    // From a ServerHandle.
    server
        .handle()
        .of("/")
        .to("r")
        .emit_binary("tick", &[json!({"_placeholder": true, "num": 0})], vec![bytes::Bytes::from_static(&[1, 2, 3])])
        .expect("the server is running");
    expect_binary_event(&mut a, &format!(r#"451-["tick",{PLACEHOLDER}]"#));
    expect_binary_event(&mut b, &format!(r#"451-["tick",{PLACEHOLDER}]"#));
    server.shutdown();
}

// ------------------------------------------------------------ Engine.IO, in the harness

mod eio {
    use super::sim_support::*;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);
    const PING_INTERVAL: Duration = Duration::from_millis(25_000);
    const PING_TIMEOUT: Duration = Duration::from_millis(20_000);
    const UNKNOWN_SID: &str = r#"{"code":1,"message":"Session ID unknown"}"#;

    fn unknown(r: &Resp) -> bool {
        r.status == 400 && r.text() == UNKNOWN_SID
    }

    /// A polling client that stops polling is forgotten at pingInterval + pingTimeout (its
    /// ping timeout), not a grace period later, and its next poll is told so at once.
    #[test]
    fn an_abandoned_polling_session_is_gone_at_ping_timeout() {
        let mut s = sim(1);
        let (c, sid) = polling_session(&mut s, 0);
        s.advance(PING_INTERVAL);
        s.advance(PING_TIMEOUT - MS);
        assert_eq!(s.shard(0).service.session_count(), 1);
        s.advance(MS);
        assert_eq!(s.shard(0).service.session_count(), 0, "removed at pingInterval + pingTimeout");
        assert_eq!(s.shard(0).service.deadline_count(), 0, "no deadline is left behind");
        assert!(s.closed_by_server(c), "the idle handshake connection went at the HTTP timeout");
        let c = s.connect(0);
        s.write(c, &get(&polling(&sid)));
        let r = one_response(&s.read(c));
        assert!(unknown(&r), "{r:?}");
    }

    /// A session closed for a parse error answers "Session ID unknown" at once.
    #[test]
    fn a_session_closed_for_a_parse_error_is_unknown_at_once() {
        let mut s = sim(1);
        let (c, sid) = polling_session(&mut s, 0);
        s.write(c, &post(&polling(&sid), b"9nonsense"));
        assert_eq!(one_response(&s.read(c)).status, 400);
        assert_eq!(s.shard(0).service.session_count(), 0);
        let c = s.connect(0);
        s.write(c, &get(&polling(&sid)));
        let r = one_response(&s.read(c));
        assert!(unknown(&r), "{r:?}");
    }

    /// The client's close packet while a GET is parked: the GET gets a noop (`6`), as from the
    /// reference's polling transport, and the session is gone.
    #[test]
    fn a_client_close_answers_the_parked_get_with_a_noop() {
        let mut s = sim(1);
        let (c, sid) = polling_session(&mut s, 0);
        s.write(c, &get(&polling(&sid)));
        let other = s.connect(0);
        s.write(other, &post(&polling(&sid), b"1"));
        assert_eq!(one_response(&s.read(other)).text(), "ok");
        assert_eq!(one_response(&s.read(c)).text(), "6");
        assert_eq!(s.shard(0).service.session_count(), 0);
        s.write(c, &get(&polling(&sid)));
        let r = one_response(&s.read(c));
        assert!(unknown(&r), "{r:?}");
    }

    /// A HEAD request's answer has no body (its Content-Length may stay).
    #[test]
    fn a_head_request_gets_no_body() {
        let mut s = sim(1);
        let c = s.connect(0);
        s.write(c, b"HEAD /engine.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = String::from_utf8(s.read(c)).unwrap();
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        assert!(out.ends_with("\r\n\r\n"), "nothing after the head: {out:?}");
        // The connection is still usable: the next request's answer is not mistaken for a body.
        s.write(c, &get("/engine.io/?EIO=4&transport=polling"));
        assert_eq!(one_response(&s.read(c)).status, 200);
    }

    /// A WebSocket session closed by its ping timeout gets a close frame (without a status
    /// code, as the reference's `ws.close()`), not a bare TCP close.
    #[test]
    fn a_websocket_ping_timeout_sends_a_close_frame() {
        let mut s = sim(1);
        let (c, _, _) = ws_session(&mut s, 0);
        s.advance(PING_INTERVAL);
        assert_eq!(texts(&s.read(c)), ["2"]);
        s.advance(PING_TIMEOUT);
        assert!(s.closed_by_server(c));
        assert_eq!(frames(&s.read(c)), [Frame { fin: true, opcode: 8, payload: vec![] }]);
    }

    /// An HTTP/1.0 request with `Connection: keep-alive` is kept alive and told so.
    #[test]
    fn an_http10_keep_alive_request_is_answered_keep_alive() {
        let mut s = sim(1);
        let c = s.connect(0);
        let req = b"GET /engine.io/?EIO=4&transport=polling HTTP/1.0\r\nConnection: keep-alive\r\n\r\n";
        s.write(c, req);
        let r = one_response(&s.read(c));
        assert_eq!(r.status, 200);
        assert!(r.head.to_ascii_lowercase().contains("\r\nconnection: keep-alive"), "{}", r.head);
        assert!(!s.closed_by_server(c));
        s.write(c, req);
        let r = one_response(&s.read(c));
        assert!(r.head.to_ascii_lowercase().contains("\r\nconnection: keep-alive"), "{}", r.head);
        // Without the header, HTTP/1.0 closes.
        s.write(c, b"GET /engine.io/?EIO=4&transport=polling HTTP/1.0\r\n\r\n");
        let r = one_response(&s.read(c));
        assert!(r.head.contains("Connection: close"), "{}", r.head);
        assert!(s.closed_by_server(c));
    }

    /// `Accept-Encoding: gzip;q=0.0` refuses gzip (any zero weight, not only `q=0`).
    #[test]
    fn a_zero_weight_coding_is_not_used() {
        let mut s = sim(1);
        let (c, sid) = polling_session(&mut s, 0);
        let q = polling(&sid);
        let big = format!("4{}", "x".repeat(4000));
        for (accept, coded) in [("gzip;q=0.0, deflate;q=0.000", None), ("gzip; q=0.000, deflate", Some("deflate")), ("gzip;Q=0.5", Some("gzip"))] {
            s.write(c, &post(&q, big.as_bytes()));
            assert_eq!(one_response(&s.read(c)).text(), "ok");
            s.write(c, format!("GET {q} HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {accept}\r\n\r\n").as_bytes());
            let r = one_response(&s.read(c));
            let got = r.head.lines().find_map(|l| l.strip_prefix("Content-Encoding: ").map(str::to_owned));
            assert_eq!(got.as_deref(), coded, "{accept}");
        }
    }

    /// An absolute-form request target (RFC 9112 §3.2.2) is served like its origin form.
    #[test]
    fn an_absolute_form_target_is_served() {
        let mut s = sim(1);
        let c = s.connect(0);
        s.write(c, &get("http://x/engine.io/?EIO=4&transport=polling"));
        let r = one_response(&s.read(c));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().starts_with("0{"), "{}", r.text());
    }

    /// A second POST for a session while another connection's POST body is still coming:
    /// HTTP 400 with an empty body, both POSTs dropped, the session closed (a parked GET gets
    /// the close packet), as the reference ("data request overlap from client").
    #[test]
    fn an_overlapping_post_is_refused_and_closes_the_session() {
        let mut s = sim(1);
        let (parked, sid) = polling_session(&mut s, 0);
        let q = polling(&sid);
        s.write(parked, &get(&q));
        let first = s.connect(0);
        let mut partial = post(&q, b"4first-message");
        partial.truncate(partial.len() - 5);
        s.write(first, &partial);
        assert!(s.read(first).is_empty(), "its body is still coming");
        let second = s.connect(0);
        s.write(second, &post(&q, b"4second"));
        let out = String::from_utf8(s.read(second)).unwrap();
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
        assert!(out.contains("Content-Length: 0\r\n") && out.ends_with("\r\n\r\n"), "an empty body: {out:?}");
        assert!(s.closed_by_server(second));
        assert!(s.closed_by_server(first), "the first POST is dropped");
        assert_eq!(one_response(&s.read(parked)).text(), "1");
        assert_eq!(s.shard(0).service.session_count(), 0);
        // A POST that completes releases the session: the next one is not an overlap.
        let (c, sid) = polling_session(&mut s, 0);
        let q = polling(&sid);
        let a = s.connect(0);
        let body = post(&q, b"4one");
        s.write(a, &body[..body.len() - 2]);
        s.write(a, &body[body.len() - 2..]);
        assert_eq!(one_response(&s.read(a)).text(), "ok");
        s.write(c, &post(&q, b"4two"));
        assert_eq!(one_response(&s.read(c)).text(), "ok");
        // One whose connection goes away mid-body closes the session, as the reference ("data
        // request connection closed prematurely"; `engine_sim.rs` checks the answers after it).
        let b = s.connect(0);
        s.write(b, &body[..body.len() - 2]);
        s.close(b);
        s.advance(std::time::Duration::from_millis(1));
        assert_eq!(s.shard(0).service.session_count(), 0);
    }
}

/// The lingering close in the harness: after refusing an oversize POST by its head (413), the
/// server shuts down its sending side and reads (and discards) what the client still sends, so
/// no unread bytes are left to turn its close into a reset; at most 1 MiB is drained.
#[test]
fn a_refused_body_is_drained_before_the_close() {
    use sim_support::*;
    let mut s = sim(1);
    let c = s.connect(0);
    let head = "POST /engine.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n";
    let mut req = head.as_bytes().to_vec();
    req.resize(req.len() + 500_000, b'4');
    s.write(c, &req);
    assert_eq!(one_response(&s.read(c)).status, 413);
    assert_eq!(s.unread_by_server(c), 0, "what the client sent after the refusal is drained");
    assert!(s.closed_by_server(c), "closed once the client closed its side");
    // Bounded: a client that sends more than 1 MiB after the answer is cut off.
    let c = s.connect(0);
    let mut req = head.as_bytes().to_vec();
    req.resize(req.len() + 3_000_000, b'4');
    s.write(c, &req);
    assert_eq!(one_response(&s.read(c)).status, 413);
    assert!(s.closed_by_server(c));
    assert!(s.unread_by_server(c) > 1_000_000, "at most 1 MiB is drained");
}

// ------------------------------------------------------------ lingering close, real sockets

/// The server refuses oversize input while the client is still sending it: a 1 MB polling
/// POST (413 by its head) and a 1 MB WebSocket frame (close 1009). Its answer must reach the
/// client every time, and end in a clean close: the server shuts down its sending side and
/// drains what the client still sends before closing, so the kernel does not reset the
/// connection (a reset can destroy the answer before the client reads it; clients report it
/// as an error instead of the answer).
/// The client writes everything before it reads, as a simple client does.
#[test]
fn refusals_of_oversize_input_are_not_lost_to_a_reset() {
    use std::io::{Read as _, Write as _};
    let server = support::Server::start(&["--threads", "1", "--max-payload", "1000000"]);
    for round in 0..20 {
        // A polling POST one byte over the limit.
        let sid = support::handshake(server.addr, "/socket.io/");
        let mut body = vec![b'4'; 1_000_001];
        let mut req = format!("POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        req.append(&mut body);
        let mut s = std::net::TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The head and a little of the body, then (once the server has answered) the rest.
        let _ = s.write_all(&req[..64 << 10]);
        std::thread::sleep(Duration::from_millis(30));
        let _ = s.write_all(&req[64 << 10..]);
        let mut got = Vec::new();
        let r = s.read_to_end(&mut got);
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 413 "), "round {round}: {r:?}, got {:?}", String::from_utf8_lossy(&got));
        assert!(r.is_ok(), "round {round}: the answer ends in a clean close, not a reset: {r:?}");
        // A WebSocket frame one byte over the limit, in one frame.
        let mut ws = Ws::connect(server.addr, "/socket.io/?EIO=4&transport=websocket", "");
        ws.set_timeout(Duration::from_secs(10));
        assert!(ws.recv_text().starts_with("0{"));
        let n = 1_000_001usize;
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&(n as u64).to_be_bytes());
        frame.extend_from_slice(&[0, 0, 0, 0]);
        frame.resize(frame.len() + n, b'x');
        let _ = ws.stream.write_all(&frame[..64 << 10]);
        std::thread::sleep(Duration::from_millis(30));
        let _ = ws.stream.write_all(&frame[64 << 10..]);
        let close = std::iter::from_fn(|| ws.recv()).find(|f| f.opcode == 8);
        let close = close.unwrap_or_else(|| panic!("round {round}: the connection ended without the close frame"));
        assert_eq!(u16::from_be_bytes([close.payload[0], close.payload[1]]), 1009, "round {round}");
        let mut rest = Vec::new();
        let r = ws.stream.read_to_end(&mut rest);
        assert!(r.is_ok(), "round {round}: the close frame is followed by a clean close, not a reset: {r:?}");
    }
}
