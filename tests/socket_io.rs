//! The Socket.IO library API on the wire: an in-process server built with `Server::builder()`
//! and raw WebSocket clients speaking Engine.IO / Socket.IO bytes. Covers what the contract app
//! does not show: server-side disconnect reasons, bad input closing only its own session,
//! handler panics, broadcast acks across workers, `ServerHandle`, middleware and dynamic
//! namespaces.

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use shardcast::app::{DisconnectReason, Namespace, RunningServer, Server};
use shardcast::engine::EngineConfig;
use shardcast::proto::eio::SessionConfig;
use support::Ws;

fn start(threads: usize, configure: impl FnOnce(shardcast::app::ServerBuilder) -> shardcast::app::ServerBuilder) -> RunningServer {
    let engine = EngineConfig {
        session: SessionConfig { ping_interval: Duration::from_millis(300), ping_timeout: Duration::from_millis(200), ..Default::default() },
        ..Default::default()
    };
    configure(Server::builder().engine(engine).bind("127.0.0.1:0".parse().unwrap()).threads(threads).pin(false).backlog(1024).io(support::test_io()))
        .start()
        .expect("server starts")
}

/// A raw Socket.IO client over WebSocket, connected to `nsp`.
fn client(server: &RunningServer, nsp: &str) -> Ws {
    let mut ws = Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(Duration::from_secs(5));
    assert!(ws.recv_text().starts_with("0{"));
    if nsp == "/" {
        ws.send_text("40");
    } else {
        ws.send_text(&format!("40{nsp},"));
    }
    let ok = ws.recv_eio();
    assert!(ok.starts_with("40"), "{ok}");
    ws
}

/// Whether the server closed this connection.
fn closed(ws: &mut Ws) -> bool {
    ws.set_timeout(Duration::from_secs(3));
    loop {
        match ws.recv() {
            None => return true,
            Some(f) if f.opcode == 8 => return true,
            Some(f) if f.opcode == 1 && f.payload == b"2" => ws.send_text("3"),
            Some(_) => {}
        }
    }
}

fn recording() -> (Namespace, mpsc::Receiver<DisconnectReason>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let ns =
        Namespace::new().on("bye", |s, _| s.disconnect()).on("boom", |_, _| panic!("handler bug")).on("echo", |s, ev| s.emit("echo", &ev.args)).on_disconnect(
            move |_, reason| {
                let _ = tx.lock().unwrap().send(reason);
            },
        );
    (ns, rx)
}

#[test]
fn server_side_disconnect_reasons() {
    let (ns, reasons) = recording();
    let server = start(1, |b| b.namespace("/", ns));
    let next = || reasons.recv_timeout(Duration::from_secs(5)).expect("a disconnect");

    let mut ws = client(&server, "/");
    ws.send_text("41");
    assert_eq!(next(), DisconnectReason::ClientNamespaceDisconnect);

    let mut ws = client(&server, "/");
    ws.send_text(r#"42["bye"]"#);
    assert_eq!(ws.recv_eio(), "41", "the server's DISCONNECT");
    assert_eq!(next(), DisconnectReason::ServerNamespaceDisconnect);

    let ws = client(&server, "/");
    drop(ws);
    assert_eq!(next(), DisconnectReason::TransportClose);

    let mut ws = client(&server, "/");
    ws.send_frame(true, 3, b""); // reserved opcode: a WebSocket protocol error
    assert_eq!(next(), DisconnectReason::TransportError);

    let mut ws = client(&server, "/");
    // Never answer pings.
    ws.set_timeout(Duration::from_secs(2));
    while ws.recv().is_some_and(|f| f.opcode != 8) {}
    assert_eq!(next(), DisconnectReason::PingTimeout);
    server.shutdown();
}

#[test]
fn bad_input_closes_only_that_session() {
    let (ns, _reasons) = recording();
    let server = start(2, |b| b.namespace("/", ns).namespace("/other", Namespace::new()));
    let mut bystander = client(&server, "/");
    let deep = format!(r#"42["echo",{}{}]"#, "[".repeat(200), "]".repeat(200));
    type Send = Box<dyn Fn(&mut Ws)>;
    let bad: Vec<Send> = vec![
        Box::new(|ws| ws.send_text("47")),                               // unknown packet type
        Box::new(|ws| ws.send_text(r#"42["echo",{"a":]"#)),              // bad JSON
        Box::new(move |ws| ws.send_text(&deep)),                         // too deep
        Box::new(|ws| ws.send_text(r#"42/other,["echo"]"#)),             // event before CONNECT
        Box::new(|ws| ws.send_text("4218446744073709551616[\"echo\"]")), // ack id overflows u64
        Box::new(|ws| {
            ws.send_text(r#"451-["echo",{"_placeholder":true,"num":3}]"#); // index out of range
            ws.send_binary(b"x");
        }),
        Box::new(|ws| ws.send_binary(b"unexpected")), // binary with no packet
        Box::new(|ws| {
            ws.send_text(r#"452-["echo",{"_placeholder":true,"num":0}]"#); // attachment never comes
            ws.send_text(r#"42["echo"]"#);
        }),
        Box::new(|ws| ws.send_text("4")),                                  // empty Socket.IO packet
        Box::new(|ws| ws.send_text(r#"44{"message":"clients may not"}"#)), // CONNECT_ERROR from a client
    ];
    for (i, send) in bad.iter().enumerate() {
        let mut ws = client(&server, "/");
        send(&mut ws);
        assert!(closed(&mut ws), "case {i}: the offending session is closed");
        bystander.send_text(&format!(r#"42["echo",{i}]"#));
        assert_eq!(bystander.recv_eio(), format!(r#"42["echo",{i}]"#), "case {i}: others keep working");
    }
    server.shutdown();
}

#[test]
fn a_panicking_handler_disconnects_only_its_socket() {
    let (ns, reasons) = recording();
    let server = start(1, |b| b.namespace("/", ns));
    let mut a = client(&server, "/");
    let mut b = client(&server, "/");
    a.send_text(r#"42["boom"]"#);
    assert_eq!(a.recv_eio(), "41");
    assert_eq!(reasons.recv_timeout(Duration::from_secs(5)).unwrap(), DisconnectReason::HandlerPanic);
    b.send_text(r#"42["echo","still alive"]"#);
    assert_eq!(b.recv_eio(), r#"42["echo","still alive"]"#);
    server.shutdown();
}

#[test]
fn broadcast_ack_collects_every_answer_across_workers() {
    let results = Arc::new(Mutex::new(None));
    let r2 = results.clone();
    let ns = Namespace::new().on("ask", move |s, _| {
        let r = r2.clone();
        s.broadcast().emit_with_ack("question", &[json!(1)], Duration::from_millis(1500), move |s, answers| {
            let got = answers.map(|v| v.len()).map_err(|p| p.responses.len());
            *r.lock().unwrap() = Some(got);
            s.emit("done", &[json!(format!("{got:?}"))]);
        });
    });
    let server = start(2, |b| b.namespace("/", ns));
    let mut asker = client(&server, "/");
    let mut others: Vec<Ws> = (0..12).map(|_| client(&server, "/")).collect();
    asker.send_text(r#"42["ask"]"#);
    for (i, ws) in others.iter_mut().enumerate() {
        let q = ws.recv_eio();
        // `42<id>["question",1]`: answer with the same id.
        let id: String = q[2..].chars().take_while(|c| c.is_ascii_digit()).collect();
        assert!(!id.is_empty(), "{q}");
        ws.send_text(&format!("43{id}[{i}]"));
    }
    assert_eq!(asker.recv_eio(), r#"42["done","Ok(12)"]"#);
    // Again, but one client does not answer: at the timeout the callback gets the 11 answers.
    asker.send_text(r#"42["ask"]"#);
    let silent = others.len() - 1;
    for (i, ws) in others.iter_mut().enumerate() {
        let q = ws.recv_eio();
        if i == silent {
            continue;
        }
        let id: String = q[2..].chars().take_while(|c| c.is_ascii_digit()).collect();
        ws.send_text(&format!("43{id}[{i}]"));
    }
    assert_eq!(asker.recv_eio(), r#"42["done","Err(11)"]"#);
    server.shutdown();
}

#[test]
fn server_handle_from_another_thread() {
    let ns = Namespace::new().on("join", |s, ev| {
        if let Some(r) = ev.args.first().and_then(|v| v.as_str()) {
            s.join(r);
        }
        if let Some(a) = ev.ack {
            s.ack(a, &[json!(true)]);
        }
    });
    let server = start(2, |b| b.namespace("/", ns));
    let handle = server.handle();
    let mut members: Vec<Ws> = (0..6).map(|_| client(&server, "/")).collect();
    let mut outsider = client(&server, "/");
    for ws in &mut members {
        ws.send_text(r#"421["join","feed"]"#);
        assert_eq!(ws.recv_eio(), "431[true]");
    }
    let h = handle.clone();
    std::thread::spawn(move || {
        assert_eq!(h.of("/").to("feed").count().wait(), Ok(6));
        assert_eq!(h.of("/").count().wait(), Ok(7));
        h.of("/").to("feed").emit("tick", &[json!(42)]).unwrap();
    })
    .join()
    .unwrap();
    for ws in &mut members {
        assert_eq!(ws.recv_eio(), r#"42["tick",42]"#);
    }
    handle.of("/").to("feed").sockets_join(&["vip"]).unwrap();
    assert_eq!(handle.of("/").to("vip").count().wait(), Ok(6));
    handle.close_room("/", "vip").unwrap();
    assert_eq!(handle.of("/").to("vip").count().wait(), Ok(0));
    handle.of("/").to("feed").disconnect_sockets(false).unwrap();
    for ws in &mut members {
        assert_eq!(ws.recv_eio(), "41");
    }
    outsider.send_text(r#"421["join","x"]"#);
    assert_eq!(outsider.recv_eio(), "431[true]");
    server.shutdown();
}

#[test]
fn middleware_and_dynamic_namespaces() {
    let guarded = Namespace::new().use_middleware(|hs| match hs.auth.as_ref().and_then(|a| a.get("token")) {
        Some(t) if t == "ok" => Ok(()),
        _ => Err(json!({"message": "not authorized", "data": {"code": 401}})),
    });
    let server = start(1, |b| {
        b.namespace("/admin", guarded).dynamic_namespaces(
            |n| n.starts_with("/room-"),
            Namespace::new().on_connection(|s| {
                let nsp = s.nsp().to_string();
                s.emit("welcome", &[json!(nsp)]);
            }),
        )
    });
    let mut ws = Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", "");
    ws.recv_text();
    ws.send_text(r#"40/admin,{"token":"nope"}"#);
    assert_eq!(ws.recv_eio(), r#"44/admin,{"message":"not authorized","data":{"code":401}}"#);
    ws.send_text(r#"40/admin,{"token":"ok"}"#);
    assert!(ws.recv_eio().starts_with(r#"40/admin,{"sid":""#));
    ws.send_text("40/room-7,");
    assert!(ws.recv_eio().starts_with(r#"40/room-7,{"sid":""#));
    assert_eq!(ws.recv_eio(), r#"42/room-7,["welcome","/room-7"]"#);
    ws.send_text("40/lobby,");
    assert_eq!(ws.recv_eio(), r#"44/lobby,{"message":"Invalid namespace"}"#);
    server.shutdown();
}

#[test]
fn polling_client_collects_disconnects_then_close_after_disconnect_me() {
    // The client has no poll pending when the server disconnects it: its next polls must still
    // get the DISCONNECTs (in connect order), then the close packet, then an unknown session.
    let server = start(1, shardcast::app::contract::app);
    let addr = server.local_addr();
    let sid = support::handshake(addr, "/socket.io/");
    let q = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let mut h = support::Http::connect(addr);
    assert_eq!(h.post(&q, b"40\x1e40/custom,", "").text(), "ok");
    let connects = h.get(&q, "").text();
    assert!(connects.contains(r#"42["auth",{}]"#) && connects.contains(r#"42/custom,["auth",{}]"#), "{connects}");
    assert_eq!(h.post(&q, br#"42/custom,["disconnect-me"]"#, "").text(), "ok");
    assert_eq!(h.get(&q, "").text(), "41\x1e41/custom,");
    assert_eq!(h.get(&q, "").text(), "1");
    let r = h.get(&q, "");
    assert_eq!((r.status, r.text().as_str()), (400, r#"{"code":1,"message":"Session ID unknown"}"#));
    server.shutdown();
}

#[test]
fn middleware_sees_headers_and_error_handler_sees_protocol_errors() {
    let (tx, errors) = mpsc::channel::<String>();
    let tx = Mutex::new(tx);
    let ns = Namespace::new()
        .use_middleware(|hs| {
            let key = hs.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("x-api-key")).map(|(_, v)| v.as_str());
            if key == Some("k1") {
                Ok(())
            } else {
                Err(json!({"message": "bad key"}))
            }
        })
        .on_error(move |_, e| {
            let _ = tx.lock().unwrap().send(e.to_string());
        });
    let server = start(1, |b| b.namespace("/", ns));
    let mut no_key = Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", "");
    no_key.recv_text();
    no_key.send_text("40");
    assert_eq!(no_key.recv_eio(), r#"44{"message":"bad key"}"#);
    let mut ws = Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", "X-Api-Key: k1\r\n");
    ws.recv_text();
    ws.send_text("40");
    assert!(ws.recv_eio().starts_with("40{\"sid\""));
    ws.send_text(r#"42["x",{"a":]"#);
    let e = errors.recv_timeout(Duration::from_secs(5)).expect("the error handler ran");
    assert!(e.starts_with("invalid JSON"), "{e}");
    assert!(closed(&mut ws));
    server.shutdown();
}
