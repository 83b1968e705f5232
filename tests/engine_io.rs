//! Engine.IO v4 over the wire, against the real binary in `echo` mode (Engine.IO echo on
//! `/engine.io/`): handshake, polling, WebSocket, the upgrade, heartbeats, hand-off between
//! workers, limits and error statuses.

mod support;

use std::time::{Duration, Instant};
use support::*;

const P: &str = "/engine.io/";

fn echo(args: &[&str]) -> Server {
    let mut a = vec!["echo"];
    a.extend_from_slice(args);
    Server::start(&a)
}

#[test]
fn polling_handshake_and_message_roundtrip() {
    let s = echo(&["--threads", "1"]);
    let r = get(s.addr, &format!("{P}?EIO=4&transport=polling&t=abc"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=UTF-8"));
    let open: serde_json::Value = serde_json::from_str(&r.text()[1..]).unwrap();
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!((open["pingInterval"].as_u64(), open["pingTimeout"].as_u64(), open["maxPayload"].as_u64()), (Some(300), Some(200), Some(1_000_000)));
    let sid = open["sid"].as_str().unwrap();
    assert!(sid.len() >= 20, "at least 120 bits of randomness");
    let q = format!("{P}?EIO=4&transport=polling&sid={sid}");
    let mut h = Http::connect(s.addr);
    let r = h.post(&q, b"4hello\x1ebAQIDBA==", "");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let r = h.get(&q, "");
    assert_eq!(r.text(), "4hello\x1ebAQIDBA==");
}

#[test]
fn websocket_direct_echo() {
    // Heartbeats and timeouts: tests/engine_sim.rs.
    let s = echo(&["--threads", "1"]);
    let mut ws = Ws::connect(s.addr, &format!("{P}?EIO=4&transport=websocket"), "");
    assert!(ws.response_head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    let open = ws.recv_text();
    assert!(open.starts_with("0{") && open.contains(r#""upgrades":[]"#), "{open}");
    ws.send_text("4hello");
    assert_eq!(ws.recv_eio(), "4hello");
    ws.send_binary(&[1, 2, 3]);
    let f = ws.recv().unwrap();
    assert_eq!((f.opcode, f.payload), (2, vec![1, 2, 3]));
}

#[test]
fn upgrade_from_polling_to_websocket() {
    let s = echo(&["--threads", "1"]);
    let sid = handshake(s.addr, P);
    let q = format!("{P}?EIO=4&transport=polling&sid={sid}");
    // A poll is pending while the upgrade happens.
    let mut poller = Http::connect(s.addr);
    poller.send_raw(format!("GET {q} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let mut ws = Ws::connect(s.addr, &format!("{P}?EIO=4&transport=websocket&sid={sid}"), "");
    ws.send_text("2probe");
    assert_eq!(ws.recv_text(), "3probe");
    let r = poller.read_response();
    assert_eq!(r.text(), "6", "the pending poll is released with noop");
    ws.send_text("5");
    ws.send_text("4after upgrade");
    assert_eq!(ws.recv_eio(), "4after upgrade");
    // Polling with an upgraded sid: 400.
    let r = get(s.addr, &q);
    assert_eq!((r.status, r.text().as_str()), (400, r#"{"code":3,"message":"Bad request"}"#));
    // A second WebSocket for the upgraded sid is refused.
    let r = Ws::try_connect(s.addr, &format!("{P}?EIO=4&transport=websocket&sid={sid}"), "").err().expect("refused");
    assert_eq!(r.status, 400);
}

#[test]
fn sessions_are_served_by_their_owning_worker() {
    // With 2 workers, a request lands on either; requests for a session owned by the other
    // worker are handed over with the bytes already read.
    let s = echo(&["--threads", "2"]);
    let mut owners = std::collections::HashSet::new();
    for i in 0..60 {
        let sid = handshake(s.addr, P);
        owners.insert(sid[..2].to_string());
        let q = format!("{P}?EIO=4&transport=polling&sid={sid}");
        // Fresh connections each time, so the kernel spreads them over both workers.
        let r = Http::connect(s.addr).post(&q, format!("4msg{i}").as_bytes(), "");
        assert_eq!(r.status, 200, "{}", r.text());
        let r = Http::connect(s.addr).get(&q, "");
        assert_eq!(r.text(), format!("4msg{i}"));
        let mut ws = Ws::connect(s.addr, &format!("{P}?EIO=4&transport=websocket&sid={sid}"), "");
        ws.send_text("2probe");
        assert_eq!(ws.recv_text(), "3probe");
        ws.send_text("5");
        ws.send_text("4ws");
        assert_eq!(ws.recv_eio(), "4ws");
    }
    assert_eq!(owners.len(), 2, "sessions were created on both workers");
}

#[test]
fn reference_error_codes() {
    let s = echo(&["--threads", "1"]);
    let cases = [
        (format!("GET {P}?EIO=4&transport=tobi HTTP/1.1\r\n\r\n"), 400, r#"{"code":0,"message":"Transport unknown"}"#),
        (format!("GET {P}?EIO=4&transport=polling&sid=nope HTTP/1.1\r\n\r\n"), 400, r#"{"code":1,"message":"Session ID unknown"}"#),
        (format!("POST {P}?EIO=4&transport=polling HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), 400, r#"{"code":2,"message":"Bad handshake method"}"#),
        (format!("GET {P}?EIO=4&transport=websocket HTTP/1.1\r\n\r\n"), 400, r#"{"code":3,"message":"Bad request"}"#),
        (format!("GET {P}?EIO=3&transport=polling HTTP/1.1\r\n\r\n"), 400, r#"{"code":5,"message":"Unsupported protocol version"}"#),
    ];
    for (raw, status, body) in cases {
        let r = request(s.addr, raw.as_bytes());
        assert_eq!((r.status, r.text().as_str()), (status, body), "{raw}");
    }
}

#[test]
fn http_limits_and_statuses() {
    let s = echo(&["--threads", "1", "--max-payload", "100"]);
    let sid = handshake(s.addr, P);
    let q = format!("{P}?EIO=4&transport=polling&sid={sid}");
    let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(request(s.addr, big.as_bytes()).status, 431);
    assert_eq!(request(s.addr, format!("POST {q} HTTP/1.1\r\n\r\n").as_bytes()).status, 411);
    assert_eq!(request(s.addr, format!("POST {q} HTTP/1.1\r\nContent-Length: 101\r\n\r\n").as_bytes()).status, 413);
    assert_eq!(request(s.addr, b"BLAH\r\n\r\n").status, 400);
    assert_eq!(get(s.addr, "/elsewhere").status, 404);
    // A bad payload is a 400 and ends only that session.
    let other = handshake(s.addr, P);
    assert_eq!(Http::connect(s.addr).post(&q, b"9zz", "").status, 400);
    let oq = format!("{P}?EIO=4&transport=polling&sid={other}");
    assert_eq!(Http::connect(s.addr).post(&oq, b"4still here", "").status, 200);
    assert_eq!(Http::connect(s.addr).get(&oq, "").text(), "4still here");
}

#[test]
fn cors_origins_preflight_and_websocket_hijacking() {
    let s = echo(&["--threads", "1", "--cors-origin", "http://good.example", "--cors-credentials"]);
    let mut h = Http::connect(s.addr);
    let r = h.get(&format!("{P}?EIO=4&transport=polling"), "Origin: http://good.example\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some("http://good.example"));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let r = h.get(&format!("{P}?EIO=4&transport=polling"), "Origin: http://evil.example\r\n");
    assert_eq!((r.status, r.text().as_str()), (400, "Not an accepted origin."));
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = request(
        s.addr,
        format!("OPTIONS {P}?EIO=4&transport=polling HTTP/1.1\r\nOrigin: http://good.example\r\nAccess-Control-Request-Headers: content-type\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-headers"), Some("content-type"));
    let r = Ws::try_connect(s.addr, &format!("{P}?EIO=4&transport=websocket"), "Origin: http://evil.example\r\n").err().expect("refused");
    assert_eq!((r.status, r.text().as_str()), (400, "Not an accepted origin."));
    Ws::connect(s.addr, &format!("{P}?EIO=4&transport=websocket"), "Origin: http://good.example\r\n");
}

#[test]
fn gzip_polling_responses_and_cookie() {
    use std::io::Read;
    let s = echo(&["--threads", "1", "--cookie", "io"]);
    let r = get(s.addr, &format!("{P}?EIO=4&transport=polling"));
    let sid = serde_json::from_str::<serde_json::Value>(&r.text()[1..]).unwrap()["sid"].as_str().unwrap().to_string();
    assert_eq!(r.header("set-cookie"), Some(format!("io={sid}; Path=/; HttpOnly; SameSite=Lax").as_str()));
    let q = format!("{P}?EIO=4&transport=polling&sid={sid}");
    let msg = format!("4{}", "x".repeat(3000));
    assert_eq!(Http::connect(s.addr).post(&q, msg.as_bytes(), "").status, 200);
    let r = Http::connect(s.addr).get(&q, "Accept-Encoding: gzip\r\n");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let mut out = String::new();
    flate2::read::GzDecoder::new(&r.body[..]).read_to_string(&mut out).unwrap();
    assert_eq!(out, msg);
}

#[test]
fn max_connections_flag_sheds_load_with_503() {
    // The limit itself, exactly: tests/engine_sim.rs. Here the flag reaches the engine; each
    // connection completes a request first, so the server has surely accepted it.
    let s = echo(&["--threads", "1", "--max-connections", "2"]);
    let mut a = Http::connect(s.addr);
    let mut b = Http::connect(s.addr);
    assert_eq!(a.get("/nowhere", "").status, 404);
    assert_eq!(b.get("/nowhere", "").status, 404);
    let r = get(s.addr, &format!("{P}?EIO=4&transport=polling"));
    assert_eq!(r.status, 503);
}

#[test]
fn graceful_shutdown_closes_sessions_and_exits() {
    let mut s = echo(&["--threads", "2"]);
    let mut ws = Ws::connect(s.addr, &format!("{P}?EIO=4&transport=websocket"), "");
    ws.recv_text();
    let t = Instant::now();
    let status = s.stop();
    assert!(status.success());
    assert!(t.elapsed() < Duration::from_secs(5));
    let mut saw_close = false;
    while let Some(f) = ws.recv() {
        if f.opcode == 8 {
            assert_eq!(&f.payload[..2], &1001u16.to_be_bytes());
            saw_close = true;
        }
    }
    assert!(saw_close, "sessions get a close frame (1001 going away)");
}

#[test]
fn the_real_loop_wakes_for_the_http_timeout() {
    // Slow heads, idle and busy connections, exactly: tests/engine_sim.rs. Here the io_uring
    // loop, with no traffic at all, wakes for the deadline and closes the idle connection (a
    // read that times out instead fails the test).
    let s = echo(&["--threads", "1", "--http-timeout", "200"]);
    let mut idle = Http::connect(s.addr);
    assert_eq!(idle.get(&format!("{P}?EIO=4&transport=polling"), "").status, 200);
    assert!(idle.closed_by_server(), "the idle connection is closed");
}
