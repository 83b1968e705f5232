//! Catch-all both ways, against the library server on the wire: `on_any` sees every incoming
//! event before its handler (or the fallback); packet middleware (Node's `socket.use`) may
//! change an event or refuse it — the refusal goes to the socket's error handler, as Node's
//! `error` event, nothing to the client, and the socket stays connected; `on_any_outgoing`
//! sees every event sent to a socket, emits and broadcasts alike.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shardcast::app::{Namespace, RunningServer, Server};
use support::Ws;

fn start(ns: Namespace) -> RunningServer {
    Server::builder().bind("127.0.0.1:0".parse().unwrap()).threads(2).pin(false).io(support::test_io()).namespace("/", ns).start().expect("server starts")
}

fn connect(server: &RunningServer) -> (Ws, String) {
    let mut ws = Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(Duration::from_secs(5));
    assert!(ws.recv_text().starts_with("0{"));
    ws.send_text("40");
    let c = ws.recv_eio();
    let id = c.split("\"sid\":\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    (ws, id)
}

#[test]
fn on_any_then_middleware_then_the_handler_and_a_refusal_goes_to_the_error_handler() {
    let ns = Namespace::new()
        .on_any(|s, ev| s.emit("seen", &[json!(ev.name)]))
        .use_packet_middleware(|_, ev| {
            if ev.name == "forbidden" {
                return Err("unauthorized event".into());
            }
            if let Some(Value::String(t)) = ev.args.first_mut() {
                *t = t.to_uppercase();
            }
            Ok(())
        })
        .on("shout", |s, ev| s.emit("shouted", &ev.args))
        .on("forbidden", |s, _| s.emit("ran", &[]))
        .on_fallback(|s, ev| s.emit("fallback", &[json!(ev.name)]))
        .on_error(|s, e| s.emit("error-seen", &[json!(e)]));
    let server = start(ns);
    let (mut ws, _) = connect(&server);
    ws.send_text(r#"42["shout","hi"]"#);
    assert_eq!(ws.recv_eio(), r#"42["seen","shout"]"#);
    assert_eq!(ws.recv_eio(), r#"42["shouted","HI"]"#, "the middleware changed the event");
    ws.send_text(r#"421["forbidden"]"#);
    assert_eq!(ws.recv_eio(), r#"42["seen","forbidden"]"#);
    assert_eq!(ws.recv_eio(), r#"42["error-seen","unauthorized event"]"#, "no handler, no ack, still connected");
    ws.send_text(r#"42["other"]"#);
    assert_eq!(ws.recv_eio(), r#"42["seen","other"]"#);
    assert_eq!(ws.recv_eio(), r#"42["fallback","other"]"#);
    server.shutdown();
}

/// What the outgoing hook saw: socket id, event, arguments.
type Seen = (String, String, Vec<Value>);

#[test]
fn on_any_outgoing_sees_emits_and_broadcasts_to_each_recipient() {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s2 = seen.clone();
    let ns = Namespace::new()
        .on_any_outgoing(move |o| s2.lock().unwrap().push((o.socket.to_string(), o.event.to_string(), o.args.to_vec())))
        .on("join", |s, ev| {
            s.join(ev.args[0].as_str().unwrap());
            s.emit("joined", &[]);
        })
        .on("tell", |s, ev| s.within_namespace().to("r").emit("told", &ev.args));
    let server = start(ns);
    let (mut a, id_a) = connect(&server);
    let (mut b, id_b) = connect(&server);
    for ws in [&mut a, &mut b] {
        ws.send_text(r#"42["join","r"]"#);
        assert_eq!(ws.recv_eio(), r#"42["joined"]"#);
    }
    a.send_text(r#"42["tell",1,{"x":2}]"#);
    assert_eq!(a.recv_eio(), r#"42["told",1,{"x":2}]"#);
    assert_eq!(b.recv_eio(), r#"42["told",1,{"x":2}]"#);
    let mut got = seen.lock().unwrap().clone();
    got.sort_by_key(|e| format!("{e:?}"));
    let mut want = vec![
        (id_a.clone(), "joined".to_string(), vec![]),
        (id_b.clone(), "joined".to_string(), vec![]),
        (id_a, "told".to_string(), vec![json!(1), json!({"x": 2})]),
        (id_b, "told".to_string(), vec![json!(1), json!({"x": 2})]),
    ];
    want.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(got, want);
    server.shutdown();
}
