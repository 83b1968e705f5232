//! The Socket.IO layer's guarantees against user code and clients, on the wire: a panic in any
//! user code (middleware, namespace filter, handlers, ack callbacks, disconnect handlers)
//! affects only its own socket; `Socket::disconnect` is carried out after the handler that
//! called it; and one socket cannot make its worker hold unbounded state (pending acks, rooms,
//! namespaces). Every test runs one worker, so the bystanders share the worker that panicked.

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shardcast::app::{Namespace, RunningServer, Server, ServerBuilder, SocketLimits};
use shardcast::engine::EngineConfig;
use support::Ws;

fn start(configure: impl FnOnce(ServerBuilder) -> ServerBuilder) -> RunningServer {
    configure(Server::builder().engine(EngineConfig::default()).bind("127.0.0.1:0".parse().unwrap()).threads(1).pin(false).backlog(1024).io(support::test_io()))
        .start()
        .expect("server starts")
}

/// A raw WebSocket client after the Engine.IO open packet, before any CONNECT.
fn open(server: &RunningServer) -> Ws {
    let mut ws = Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(Duration::from_secs(5));
    assert!(ws.recv_text().starts_with("0{"));
    ws
}

/// Connects to `/` with `auth` (a JSON object or empty), expecting the server's CONNECT.
fn connect(server: &RunningServer, auth: &str) -> Ws {
    let mut ws = open(server);
    ws.send_text(&format!("40{auth}"));
    let ok = ws.recv_eio();
    assert!(ok.starts_with("40{\"sid\""), "{ok}");
    ws
}

/// A fresh client does a full handshake and an event round trip: the worker still serves.
fn worker_serves(server: &RunningServer, n: usize) {
    let mut ws = connect(server, "");
    ws.send_text(&format!(r#"42["echo",{n}]"#));
    assert_eq!(ws.recv_eio(), format!(r#"42["echo",{n}]"#), "case {n}: a new client is served");
}

fn wants(hs_auth: Option<&Value>, what: &str) -> bool {
    hs_auth.and_then(|a| a.get("panic")).is_some_and(|p| p == what)
}

fn panicky() -> Namespace {
    Namespace::new()
        .use_middleware(|hs| if wants(hs.auth.as_ref(), "middleware") { panic!("middleware bug") } else { Ok(()) })
        .on_connection(|s| {
            if wants(s.handshake().auth.as_ref(), "connection") {
                panic!("connection handler bug");
            }
        })
        .on("echo", |s, ev| s.emit("echo", &ev.args))
        .on("boom", |_, _| panic!("event handler bug"))
        .on("bye", |s, _| s.disconnect())
        .on("join", |s, ev| {
            s.join(ev.args[0].as_str().unwrap());
            s.ack(ev.ack.unwrap(), &[]);
        })
        .on("ack-boom", |s, _| s.emit_with_ack("q", &[], Duration::from_secs(30), |_, _| panic!("ack callback bug")))
        .on("timeout-boom", |s, _| s.emit_with_ack("q", &[], Duration::from_millis(50), |_, _| panic!("ack timeout callback bug")))
        .on("bcast-boom", |s, _| s.to("asked").emit_with_ack("q", &[], Duration::from_secs(30), |_, _| panic!("broadcast ack callback bug")))
        .on_disconnect(|s, _| {
            if wants(s.handshake().auth.as_ref(), "disconnect") {
                panic!("disconnect handler bug");
            }
        })
}

#[test]
fn a_panic_in_any_user_code_affects_only_its_socket() {
    let server = start(|b| {
        b.namespace("/", panicky()).dynamic_namespaces(|n| if n == "/explode" { panic!("filter bug") } else { n.starts_with("/dyn-") }, Namespace::new())
    });
    let mut bystander = connect(&server, "");
    bystander.send_text(r#"421["join","asked"]"#);
    assert_eq!(bystander.recv_eio(), "431[]");
    let mut case = 0;
    let mut check = |bystander: &mut Ws| {
        case += 1;
        bystander.send_text(&format!(r#"42["echo","b{case}"]"#));
        assert_eq!(bystander.recv_eio(), format!(r#"42["echo","b{case}"]"#), "case {case}: the bystander is served");
        worker_serves(&server, case);
    };

    // Connect middleware: CONNECT_ERROR, the session stays usable.
    let mut ws = open(&server);
    ws.send_text(r#"40{"panic":"middleware"}"#);
    assert_eq!(ws.recv_eio(), r#"44{"message":"Internal server error"}"#);
    ws.send_text("40");
    assert!(ws.recv_eio().starts_with("40{\"sid\""), "the same client may connect again");
    check(&mut bystander);

    // The same over long-polling.
    let addr = server.local_addr();
    let sid = support::handshake(addr, "/socket.io/");
    let q = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let mut h = support::Http::connect(addr);
    assert_eq!(h.post(&q, br#"40{"panic":"middleware"}"#, "").text(), "ok");
    assert_eq!(h.get(&q, "").text(), r#"44{"message":"Internal server error"}"#);
    check(&mut bystander);

    // The dynamic-namespace filter.
    let mut ws = open(&server);
    ws.send_text("40/explode,");
    assert_eq!(ws.recv_eio(), r#"44/explode,{"message":"Internal server error"}"#);
    check(&mut bystander);

    // The connection handler: connected, then disconnected.
    let mut ws = open(&server);
    ws.send_text(r#"40{"panic":"connection"}"#);
    assert!(ws.recv_eio().starts_with("40{\"sid\""));
    assert_eq!(ws.recv_eio(), "41");
    check(&mut bystander);

    // An event handler.
    let mut ws = connect(&server, "");
    ws.send_text(r#"42["boom"]"#);
    assert_eq!(ws.recv_eio(), "41");
    check(&mut bystander);

    // An ack callback, on the answer.
    let mut ws = connect(&server, "");
    ws.send_text(r#"42["ack-boom"]"#);
    assert_eq!(ws.recv_eio(), r#"420["q"]"#);
    ws.send_text("430[]");
    assert_eq!(ws.recv_eio(), "41");
    check(&mut bystander);

    // An ack callback, on the timeout.
    let mut ws = connect(&server, "");
    ws.send_text(r#"42["timeout-boom"]"#);
    assert_eq!(ws.recv_eio(), r#"420["q"]"#);
    assert_eq!(ws.recv_eio(), "41", "disconnected when the timeout callback panicked");
    check(&mut bystander);

    // A broadcast-ack callback: the bystander is asked, and answers.
    let mut ws = connect(&server, "");
    ws.send_text(r#"42["bcast-boom"]"#);
    let q = bystander.recv_eio();
    let id: String = q[2..].chars().take_while(|c| c.is_ascii_digit()).collect();
    assert!(!id.is_empty(), "{q}");
    bystander.send_text(&format!("43{id}[]"));
    assert_eq!(ws.recv_eio(), "41");
    check(&mut bystander);

    // A disconnect handler: the socket is gone anyway; nothing else is.
    let mut ws = connect(&server, r#"{"panic":"disconnect"}"#);
    ws.send_text(r#"42["bye"]"#);
    assert_eq!(ws.recv_eio(), "41");
    check(&mut bystander);
    server.shutdown();
}

#[test]
fn disconnect_is_carried_out_after_the_handler_returns() {
    let (tx, rx) = mpsc::channel::<String>();
    let (tx1, tx2) = (Mutex::new(tx.clone()), Mutex::new(tx));
    let ns = Namespace::new()
        .on("leave-now", move |s, _| {
            let log = |m: String| tx1.lock().unwrap().send(m).unwrap();
            s.join("r");
            s.disconnect();
            // Everything still answers, with the last values; nothing reaches the client.
            log(format!("after disconnect: id={} nsp={} connected={} rooms={}", s.id(), s.nsp(), s.connected(), s.rooms().len()));
            s.emit("too-late", &[]);
            s.set_data(7u8);
            let data = s.data::<u8>().copied();
            log(format!("data={data:?} auth={:?}", s.handshake().auth));
            s.disconnect(); // twice is once
        })
        .on_disconnect(move |s, reason| {
            tx2.lock().unwrap().send(format!("disconnect handler: id={} reason={}", s.id(), reason.as_str())).unwrap();
        });
    let server = start(|b| b.namespace("/", ns));
    let mut ws = open(&server);
    ws.send_text(r#"40{"k":1}"#);
    let ok = ws.recv_eio();
    let sid: Value = serde_json::from_str(&ok[2..]).unwrap();
    let sid = sid["sid"].as_str().unwrap().to_string();
    ws.send_text(r#"42["leave-now"]"#);
    assert_eq!(ws.recv_eio(), "41", "one DISCONNECT, and no emit after disconnect()");
    let next = || rx.recv_timeout(Duration::from_secs(5)).expect("a log line");
    assert_eq!(next(), format!("after disconnect: id={sid} nsp=/ connected=false rooms=2"));
    assert_eq!(next(), r#"data=Some(7) auth=Some(Object {"k": Number(1)})"#);
    assert_eq!(next(), format!("disconnect handler: id={sid} reason=server namespace disconnect"), "after the handler returned");
    // Exactly one disconnect handler call.
    let mut other = connect(&server, "");
    other.send_text("41");
    let line = next();
    assert!(line.ends_with("reason=client namespace disconnect") && !line.contains(&sid), "no second call for the first socket: {line}");
    server.shutdown();
}

/// `42<id>["q",...]` → the ack id.
fn ack_id(packet: &str) -> String {
    packet[2..].chars().take_while(|c| c.is_ascii_digit()).collect()
}

#[test]
fn pending_acks_are_capped_per_socket() {
    let results = Arc::new(Mutex::new(Vec::new()));
    let r = results.clone();
    let ns = Namespace::new()
        .on("ask", move |s, ev| {
            let n = ev.args.first().and_then(Value::as_u64).unwrap_or(1);
            for _ in 0..n {
                let r = r.clone();
                s.emit_with_ack("q", &[], Duration::from_secs(30), move |s, answer| {
                    let what = if answer.is_ok() { "answered" } else { "refused" };
                    r.lock().unwrap().push(what);
                    s.emit(what, &[]);
                });
            }
        })
        .on("ask-all", |s, _| {
            s.within_namespace().emit_with_ack("q", &[], Duration::from_secs(30), |s, answers| {
                let n = answers.map_or_else(|p| -(p.responses.len() as i64) - 1, |a| a.len() as i64);
                s.emit("collected", &[json!(n)]);
            })
        });
    let server = start(|b| b.namespace("/", ns).socket_limits(SocketLimits { max_pending_acks: 2, ..SocketLimits::default() }));
    let mut ws = connect(&server, "");
    ws.send_text(r#"42["ask",3]"#);
    assert_eq!(ws.recv_eio(), r#"420["q"]"#);
    assert_eq!(ws.recv_eio(), r#"421["q"]"#);
    assert_eq!(ws.recv_eio(), r#"42["refused"]"#, "the third ack is refused at once, nothing sent");
    // A broadcast-ack collection counts too: refused with no answers.
    ws.send_text(r#"42["ask-all"]"#);
    assert_eq!(ws.recv_eio(), r#"42["collected",-1]"#);
    // An answer frees a place; unknown and repeated answers change nothing.
    ws.send_text("4399[]");
    ws.send_text("430[]");
    assert_eq!(ws.recv_eio(), r#"42["answered"]"#);
    ws.send_text("430[]");
    ws.send_text(r#"42["ask",2]"#);
    assert_eq!(ws.recv_eio(), r#"422["q"]"#);
    assert_eq!(ws.recv_eio(), r#"42["refused"]"#);
    ws.send_text("431[]");
    assert_eq!(ws.recv_eio(), r#"42["answered"]"#);
    // With both places free, a collection (one place) of this socket's own answer (the other)
    // works.
    ws.send_text("432[]");
    assert_eq!(ws.recv_eio(), r#"42["answered"]"#);
    ws.send_text(r#"42["ask-all"]"#);
    let q = ws.recv_eio();
    ws.send_text(&format!("43{}[]", ack_id(&q)));
    assert_eq!(ws.recv_eio(), r#"42["collected",1]"#);
    assert_eq!(*results.lock().unwrap(), ["refused", "answered", "refused", "answered", "answered"]);
    server.shutdown();
}

#[test]
fn rooms_and_namespaces_are_capped_per_socket_and_client() {
    let limits = SocketLimits { max_rooms: 3, max_room_name_len: 8, max_namespaces_per_client: 1, ..SocketLimits::default() };
    let server = start(|b| shardcast::app::contract::app(b).socket_limits(limits));
    let mut ws = open(&server);
    ws.send_text("40");
    assert!(ws.recv_eio().starts_with("40{\"sid\""));
    assert_eq!(ws.recv_eio(), r#"42["auth",{}]"#);
    // Its own id's room, then two more.
    ws.send_text(r#"421["join","a"]"#);
    assert_eq!(ws.recv_eio(), "431[true]");
    ws.send_text(r#"422["join","a"]"#);
    assert_eq!(ws.recv_eio(), "432[true]", "joining a room it is in costs nothing");
    ws.send_text(r#"423["join","123456789"]"#);
    assert_eq!(ws.recv_eio(), "433[false]", "name too long");
    ws.send_text(r#"424["join","b"]"#);
    assert_eq!(ws.recv_eio(), "434[true]");
    ws.send_text(r#"425["join","c"]"#);
    assert_eq!(ws.recv_eio(), "435[false]", "too many rooms");
    ws.send_text(r#"426["leave","b"]"#);
    assert_eq!(ws.recv_eio(), "436[true]");
    ws.send_text(r#"427["join","c"]"#);
    assert_eq!(ws.recv_eio(), "437[true]");
    ws.send_text(r#"42["to-room","c","hi"]"#);
    assert_eq!(ws.recv_eio(), r#"42["room-message","hi"]"#);
    // One namespace per client here.
    ws.send_text("40/custom,");
    assert_eq!(ws.recv_eio(), r#"44/custom,{"message":"Too many namespaces"}"#);
    server.shutdown();
}

#[test]
fn a_handler_that_closes_its_client_then_panics_still_closes_the_client() {
    let ns = || {
        Namespace::new().on("echo", |s, ev| s.emit("echo", &ev.args)).on("close-then-boom", |s, _| {
            s.disconnect_client();
            panic!("after disconnect_client");
        })
    };
    let server = start(|b| b.namespace("/", ns()).namespace("/custom", ns()));
    let mut ws = connect(&server, "");
    ws.send_text("40/custom,");
    assert!(ws.recv_eio().starts_with("40/custom,{\"sid\""));
    ws.send_text(r#"42["close-then-boom"]"#);
    assert_eq!(ws.recv_eio(), "41", "the panicking socket first");
    assert_eq!(ws.recv_eio(), "41/custom,", "then the client's other namespace");
    let end = ws.recv().expect("a close frame");
    assert_eq!(end.opcode, 8, "the session is closed: {end:?}");
    worker_serves(&server, 1);
    server.shutdown();
}
