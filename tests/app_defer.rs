//! Answering later, from another thread, against the library server on the wire: an ack
//! answered after its handler returned, its place in the pending-ack limit, an answer after the
//! socket left, an ack answered twice; a connect middleware that decides later (accept with
//! data, refuse, a dropped decision, a deadline) while the client's packets wait, bounded.
//!
//! The test thread plays the thread pool: handlers and middleware hand their `AckReply` /
//! `ConnectDecision` over a channel, and the test settles them when it chooses. Ordering
//! between a settled value and later client packets is made certain with
//! `ServerHandle::flush` (mail is FIFO per worker), never with sleeps.

mod support;

use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use shardcast::app::{AckReply, ConnectDecision, DeferError, Namespace, RunningServer, Server, SocketLimits};
use support::Ws;

const BOUND: Duration = Duration::from_secs(5);

fn start(ns: Namespace, limits: SocketLimits) -> RunningServer {
    // Two workers: a reply posted from a foreign thread must reach the socket's own worker.
    start_on(2, ns, limits)
}

fn start_on(threads: usize, ns: Namespace, limits: SocketLimits) -> RunningServer {
    Server::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .threads(threads)
        .pin(false)
        .io(support::test_io())
        .socket_limits(limits)
        .namespace("/", ns)
        .start()
        .expect("server starts")
}

fn open(server: &RunningServer) -> Ws {
    let mut ws = Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(BOUND);
    assert!(ws.recv_text().starts_with("0{"));
    ws
}

fn connect(server: &RunningServer) -> Ws {
    let mut ws = open(server);
    ws.send_text("40");
    assert!(ws.recv_eio().starts_with("40{\"sid\""));
    ws
}

/// A namespace whose `slow` handler hands its ack out; `echo` answers at once.
fn deferring(tx: mpsc::Sender<Result<AckReply, DeferError>>, ack_now: bool) -> Namespace {
    let tx = Mutex::new(tx);
    Namespace::new()
        .on("slow", move |s, ev| {
            let ack = ev.ack.expect("asked for an ack");
            let reply = s.defer_ack(ack);
            if ack_now {
                s.ack(ack, &[json!("now")]);
            }
            tx.lock().unwrap().send(reply).unwrap();
        })
        .on("echo", |s, ev| s.emit("echo-back", &ev.args))
}

fn next_reply(rx: &Receiver<Result<AckReply, DeferError>>) -> Result<AckReply, DeferError> {
    rx.recv_timeout(BOUND).expect("the handler ran")
}

#[test]
fn an_ack_is_answered_from_another_thread_after_the_handler_returned() {
    let (tx, rx) = mpsc::channel();
    let server = start(deferring(tx, false), SocketLimits::default());
    let mut ws = connect(&server);
    ws.send_text(r#"421["slow","r"]"#);
    let reply = next_reply(&rx).expect("a reply handle");
    // The handler has returned; the worker serves the client meanwhile.
    ws.send_text(r#"42["echo",1]"#);
    assert_eq!(ws.recv_eio(), r#"42["echo-back",1]"#);
    std::thread::spawn(move || reply.send(&[json!({"rows": 3})])).join().unwrap();
    assert_eq!(ws.recv_eio(), r#"431[{"rows":3}]"#);
    server.shutdown();
}

#[test]
fn a_deferred_ack_holds_a_place_in_the_pending_ack_limit_until_sent_or_dropped() {
    let (tx, rx) = mpsc::channel();
    let server = start(deferring(tx, false), SocketLimits { max_pending_acks: 1, ..SocketLimits::default() });
    let mut ws = connect(&server);
    ws.send_text(r#"421["slow"]"#);
    let first = next_reply(&rx).expect("room for one");
    ws.send_text(r#"422["slow"]"#);
    assert_eq!(next_reply(&rx).err(), Some(DeferError::TooManyPendingAcks));
    // Dropped unanswered: the place is free again once the worker has the news.
    drop(first);
    server.handle().flush().wait().unwrap();
    ws.send_text(r#"423["slow"]"#);
    let third = next_reply(&rx).expect("room again after the drop");
    third.send(&[json!(3)]);
    assert_eq!(ws.recv_eio(), "433[3]");
    server.shutdown();
}

#[test]
fn an_answer_after_the_socket_left_or_after_a_direct_ack_sends_nothing() {
    let (tx, rx) = mpsc::channel();
    let server = start(deferring(tx, true), SocketLimits::default());
    let mut ws = connect(&server);
    ws.send_text(r#"427["slow"]"#);
    let reply = next_reply(&rx).expect("a handle");
    assert_eq!(ws.recv_eio(), r#"437["now"]"#, "the handler answered directly");
    // The deferred answer comes second: the ack was answered already, nothing more is sent.
    reply.send(&[json!("late")]);
    server.handle().flush().wait().unwrap();
    ws.send_text(r#"42["echo","after"]"#);
    assert_eq!(ws.recv_eio(), r#"42["echo-back","after"]"#, "no second answer to ack 7");

    // A socket that left: its reply goes nowhere, the worker carries on.
    let mut other = connect(&server);
    other.send_text(r#"428["slow"]"#);
    let reply = next_reply(&rx).expect("a handle");
    assert_eq!(other.recv_eio(), r#"438["now"]"#);
    other.send_text("41");
    server.handle().flush().wait().unwrap();
    reply.send(&[json!("to nobody")]);
    server.handle().flush().wait().unwrap();
    ws.send_text(r#"42["echo","still"]"#);
    assert_eq!(ws.recv_eio(), r#"42["echo-back","still"]"#);
    server.shutdown();
}

type Decisions = Arc<Mutex<Option<mpsc::Sender<(Option<serde_json::Value>, ConnectDecision)>>>>;

/// A namespace whose only middleware hands its decision to the test; `whoami` answers with
/// the data the decision attached.
fn gated(decisions: &Decisions) -> Namespace {
    let d = decisions.clone();
    Namespace::new()
        .use_deferred_middleware(move |hs, decision| {
            let tx = d.lock().unwrap().clone().expect("set");
            // The handshake stays on the worker (it is not `Send`): what the pool needs is copied.
            tx.send((hs.auth.clone(), decision)).unwrap();
        })
        .on("whoami", |s, _| {
            let who = s.data::<String>().cloned().unwrap_or_default();
            s.emit("me", &[json!(who)]);
        })
}

fn decisions() -> (Decisions, Receiver<(Option<serde_json::Value>, ConnectDecision)>) {
    let (tx, rx) = mpsc::channel();
    (Arc::new(Mutex::new(Some(tx))), rx)
}

#[test]
fn a_deferred_middleware_accepts_with_data_and_the_held_packets_follow_in_order() {
    let (d, rx) = decisions();
    let server = start(gated(&d), SocketLimits::default());
    let mut ws = open(&server);
    ws.send_text(r#"40{"token":"t-1"}"#);
    // Sent before the verdict: held, then handled in order after the CONNECT.
    ws.send_text(r#"42["whoami"]"#);
    ws.send_text(r#"42["whoami"]"#);
    let (auth, decision) = rx.recv_timeout(BOUND).expect("the middleware ran");
    assert_eq!(auth, Some(json!({"token": "t-1"})));
    server.handle().flush().wait().unwrap(); // the two events are in before the verdict
    std::thread::spawn(move || decision.accept_with_data("alice".to_string())).join().unwrap();
    assert!(ws.recv_eio().starts_with("40{\"sid\""));
    assert_eq!(ws.recv_eio(), r#"42["me","alice"]"#);
    assert_eq!(ws.recv_eio(), r#"42["me","alice"]"#);
    server.shutdown();
}

#[test]
fn a_deferred_middleware_refuses_with_a_connect_error_payload() {
    let (d, rx) = decisions();
    let server = start(gated(&d), SocketLimits::default());
    let mut ws = open(&server);
    ws.send_text("40");
    let (_, decision) = rx.recv_timeout(BOUND).unwrap();
    decision.refuse(json!({"message": "not authorized", "data": {"retry": false}}));
    assert_eq!(ws.recv_eio(), r#"44{"message":"not authorized","data":{"retry":false}}"#);
    // A dropped decision is a refusal too.
    ws.send_text("40");
    let (_, decision) = rx.recv_timeout(BOUND).unwrap();
    drop(decision);
    assert_eq!(ws.recv_eio(), r#"44{"message":"Internal server error"}"#);
    server.shutdown();
}

#[test]
fn a_deferred_middleware_that_never_decides_is_refused_at_its_deadline() {
    let (d, rx) = decisions();
    let limits = SocketLimits { connect_decision_timeout: Duration::from_millis(100), ..SocketLimits::default() };
    let server = start(gated(&d), limits);
    let mut ws = open(&server);
    ws.send_text("40");
    let (_, late) = rx.recv_timeout(BOUND).unwrap();
    assert_eq!(ws.recv_eio(), r#"44{"message":"Connection timed out"}"#);
    // Accepting after the deadline does nothing.
    late.accept();
    server.handle().flush().wait().unwrap();
    ws.send_text(r#"42["whoami"]"#);
    // The client is not connected to "/": the event is a protocol error, the session closes.
    let f = ws.recv();
    assert!(f.is_none() || f.as_ref().is_some_and(|f| f.opcode == 8), "{f:?}");
    server.shutdown();
}

#[test]
fn packets_held_past_the_limit_close_the_session() {
    let (d, rx) = decisions();
    let limits = SocketLimits { max_held_packets: 2, ..SocketLimits::default() };
    let server = start(gated(&d), limits);
    let mut ws = open(&server);
    ws.send_text("40");
    for _ in 0..3 {
        ws.send_text(r#"42["whoami"]"#);
    }
    let (_, decision) = rx.recv_timeout(BOUND).unwrap();
    // The third held packet closed the session: a close frame, then the end of the stream.
    let f = ws.recv().expect("a close frame");
    assert_eq!(f.opcode, 8, "{f:?}");
    decision.accept(); // too late: nothing happens, nothing panics
    server.handle().flush().wait().unwrap();
    // The server still serves others.
    let mut again = open(&server);
    again.send_text("40");
    let (_, decision) = rx.recv_timeout(BOUND).unwrap();
    decision.accept();
    assert!(again.recv_eio().starts_with("40{\"sid\""));
    server.shutdown();
}

#[test]
fn packets_held_past_the_worker_budget_close_the_session_that_passes_it() {
    // One worker whose connections may hold 30 bytes together (each of them 1 MiB): two
    // clients each hold two 11-byte events; whichever comes second passes the budget with its
    // second event and is closed, the other is served in full. Once its packets are handled,
    // the budget is free again for a third client.
    let (d, rx) = decisions();
    let limits = SocketLimits { max_worker_held_bytes: 30, ..SocketLimits::default() };
    let server = start_on(1, gated(&d), limits);
    let mut clients: Vec<Ws> = ["a", "b"]
        .iter()
        .map(|name| {
            let mut ws = open(&server);
            ws.send_text(&format!(r#"40{{"who":"{name}"}}"#));
            ws.send_text(r#"42["whoami"]"#);
            ws.send_text(r#"42["whoami"]"#);
            ws
        })
        .collect();
    let decisions: Vec<_> = (0..2).map(|_| rx.recv_timeout(BOUND).expect("both middleware ran")).collect();
    server.handle().flush().wait().unwrap(); // every held packet is in before the verdicts
    for (auth, decision) in decisions {
        decision.accept_with_data(auth.unwrap()["who"].as_str().unwrap().to_string());
    }
    // The one that passed the budget was closed (a close frame, its verdict came too late);
    // the other is served in full.
    let mut served = Vec::new();
    for (ws, name) in clients.iter_mut().zip(["a", "b"]) {
        let f = ws.recv().expect("a frame");
        if f.opcode == 8 {
            continue;
        }
        assert!(String::from_utf8_lossy(&f.payload).starts_with("40{\"sid\""), "{f:?}");
        assert_eq!(ws.recv_eio(), format!(r#"42["me","{name}"]"#));
        assert_eq!(ws.recv_eio(), format!(r#"42["me","{name}"]"#));
        served.push(name);
    }
    assert_eq!(served.len(), 1, "exactly one client passed the worker's budget: served {served:?}");
    // The budget came back: a third client holds as much and is served.
    let mut c = open(&server);
    c.send_text(r#"40{"who":"c"}"#);
    c.send_text(r#"42["whoami"]"#);
    c.send_text(r#"42["whoami"]"#);
    let (_, decision) = rx.recv_timeout(BOUND).unwrap();
    server.handle().flush().wait().unwrap();
    decision.accept_with_data("c".to_string());
    assert!(c.recv_eio().starts_with("40{\"sid\""));
    assert_eq!(c.recv_eio(), r#"42["me","c"]"#);
    assert_eq!(c.recv_eio(), r#"42["me","c"]"#);
    server.shutdown();
}

#[test]
fn past_the_worker_budget_the_largest_holder_is_closed_not_the_next_client() {
    // One worker, 60 bytes of held packets together: client a holds five 11-byte events, then
    // client b's first event passes the budget. a, the connection that filled it, is closed;
    // b is served.
    let (d, rx) = decisions();
    let limits = SocketLimits { max_worker_held_bytes: 60, ..SocketLimits::default() };
    let server = start_on(1, gated(&d), limits);
    let mut a = open(&server);
    a.send_text(r#"40{"who":"a"}"#);
    for _ in 0..5 {
        a.send_text(r#"42["whoami"]"#);
    }
    let (_, a_decision) = rx.recv_timeout(BOUND).unwrap();
    server.handle().flush().wait().unwrap(); // a's five are held
    let mut b = open(&server);
    b.send_text(r#"40{"who":"b"}"#);
    b.send_text(r#"42["whoami"]"#);
    let (_, b_decision) = rx.recv_timeout(BOUND).unwrap();
    server.handle().flush().wait().unwrap();
    a_decision.accept_with_data("a".to_string()); // too late: a was closed
    b_decision.accept_with_data("b".to_string());
    let f = a.recv().expect("a close frame");
    assert_eq!(f.opcode, 8, "the largest holder is closed: {f:?}");
    assert!(b.recv_eio().starts_with("40{\"sid\""));
    assert_eq!(b.recv_eio(), r#"42["me","b"]"#);
    server.shutdown();
}
