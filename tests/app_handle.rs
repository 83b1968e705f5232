//! `ServerHandle` from any thread, never hanging: questions (`count`, `flush`,
//! `fetch_sockets`, `rooms`, `emit_with_ack`) are answered through `Pending` — waited for on
//! ordinary threads, given a callback inside handlers (where waiting answers `WouldDeadlock` at
//! once instead of blocking the worker); after shutdown every call answers `Stopped`. Each call runs on a helper thread and the test
//! fails if it has not returned within a bounded time. `ServerBuilder::start` on a port
//! another server holds is an error.

mod support;

use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use shardcast::app::{HandleError, Namespace, RunningServer, Server};
use shardcast::rt::threads::StartError;
use support::Ws;

const BOUND: Duration = Duration::from_secs(5);

fn start(threads: usize, ns: Namespace) -> RunningServer {
    Server::builder().bind("127.0.0.1:0".parse().unwrap()).threads(threads).pin(false).io(support::test_io()).namespace("/", ns).start().expect("server starts")
}

fn connect(server: &RunningServer) -> Ws {
    let mut ws = Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(BOUND);
    assert!(ws.recv_text().starts_with("0{"));
    ws.send_text("40");
    assert!(ws.recv_eio().starts_with("40{\"sid\""));
    ws
}

/// Runs `f` on a thread; fails the test if it does not return within [`BOUND`].
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(BOUND).unwrap_or_else(|_| panic!("{what} did not return within {BOUND:?}"))
}

/// Connects `n` sockets; with two workers both get some (the kernel spreads connections over
/// the workers' listeners; the tests that need both check `SocketInfo::worker`).
fn connect_many(server: &RunningServer, n: usize) -> Vec<Ws> {
    (0..n).map(|_| connect(server)).collect()
}

#[test]
fn questions_asked_inside_handlers_are_answered_through_then() {
    // Every socket's handler asks the whole server at once, on both workers: each worker waits
    // for the other's answer without blocking, and every asker gets it.
    let ns = Namespace::new().on("probe", move |sock, _| {
        let h = sock.handle();
        let me = sock.id().to_string();
        // Waiting here would wait for this very worker: refused at once, the worker runs on.
        assert_eq!(h.of("/").count().wait(), Err(HandleError::WouldDeadlock));
        let h2 = h.clone();
        h.of("/").count().then(move |n| {
            let h3 = h2.clone();
            h2.flush().then(move |f| {
                h3.of("/").socket(&me).emit("probed", &[json!(n.unwrap()), json!(f.is_ok())]).unwrap();
            });
        });
        sock.emit("asked", &[]);
    });
    let server = start(2, ns);
    let mut clients = connect_many(&server, 8);
    for ws in &mut clients {
        ws.send_text(r#"42["probe"]"#);
    }
    for ws in &mut clients {
        let mut got = [ws.recv_eio(), ws.recv_eio()];
        got.sort();
        assert_eq!(got, [r#"42["asked"]"#.to_string(), r#"42["probed",8,true]"#.to_string()]);
    }
    // From outside the workers, waiting works.
    let h = server.handle();
    assert_eq!(bounded("count from a thread", move || h.of("/").count().wait()), Ok(8));
    server.shutdown();
}

#[test]
fn fetch_sockets_and_rooms_see_every_worker() {
    let ns = Namespace::new()
        .on("join", |sock, ev| {
            let room = ev.args[0].as_str().unwrap().to_string();
            sock.join(&room);
            sock.set_shared_data(json!({ "room": room }));
            if let Some(a) = ev.ack {
                sock.ack(a, &[]);
            }
        })
        .on("who", |sock, _| {
            // A question from inside a handler, answered on the asking socket when complete.
            let me = sock.id().to_string();
            let h = sock.handle();
            sock.handle().of("/").to("blue").fetch_sockets().then(move |r| {
                let mut ids: Vec<String> = r.unwrap().into_iter().map(|s| s.id).collect();
                ids.sort();
                h.of("/").socket(&me).emit("who", &[json!(ids)]).unwrap();
            });
        });
    let server = start(2, ns);
    let mut clients = connect_many(&server, 12);
    for (i, ws) in clients.iter_mut().enumerate() {
        let room = if i % 3 == 0 { "blue" } else { "red" };
        ws.send_text(&format!(r#"421["join","{room}"]"#));
        assert_eq!(ws.recv_eio(), "431[]");
    }
    let h = server.handle();
    let blue = bounded("fetch_sockets", move || h.of("/").to("blue").fetch_sockets().wait()).unwrap();
    assert_eq!(blue.len(), 4);
    for s in &blue {
        assert_eq!(s.nsp, "/");
        assert_eq!(s.data, Some(json!({ "room": "blue" })));
        let mut expect = vec!["blue".to_string(), s.id.clone()];
        expect.sort();
        assert_eq!(s.rooms, expect);
        assert!(s.handshake.query.contains("EIO=4"), "{:?}", s.handshake.query);
    }
    let h = server.handle();
    let all = bounded("fetch_sockets of the namespace", move || h.of("/").except("red").fetch_sockets().wait()).unwrap();
    let mut ids: Vec<String> = all.iter().map(|s| s.id.clone()).collect();
    ids.sort();
    let mut blue_ids: Vec<String> = blue.iter().map(|s| s.id.clone()).collect();
    blue_ids.sort();
    assert_eq!(ids, blue_ids);
    let h = server.handle();
    let every = bounded("every socket", move || h.of("/").fetch_sockets().wait()).unwrap();
    assert_eq!(every.len(), 12);
    let workers: std::collections::BTreeSet<usize> = every.iter().map(|s| s.worker).collect();
    assert_eq!(workers.len(), 2, "the sockets landed on one worker; the test needs both");
    let h = server.handle();
    assert_eq!(bounded("rooms", move || h.of("/").rooms().wait()), Ok(vec!["blue".to_string(), "red".to_string()]));
    clients[1].send_text(r#"42["who"]"#);
    assert_eq!(clients[1].recv_eio(), format!(r#"42["who",{}]"#, json!(blue_ids)));
    server.shutdown();
}

#[test]
fn emit_with_ack_from_a_handle_collects_every_answer_across_workers() {
    let server = start(2, Namespace::new());
    let mut clients = connect_many(&server, 6);
    let h = server.handle();
    let asking = std::thread::spawn(move || h.of("/").emit_with_ack("question", &[json!(1)], Duration::from_secs(5)).wait());
    for (i, ws) in clients.iter_mut().enumerate() {
        let m = ws.recv_eio();
        let id: String = m.trim_start_matches("42").chars().take_while(|c| c.is_ascii_digit()).collect();
        assert_eq!(m, format!(r#"42{id}["question",1]"#));
        ws.send_text(&format!("43{id}[{i}]"));
    }
    let mut answers: Vec<i64> =
        bounded("the collection", move || asking.join().unwrap()).unwrap().unwrap().into_iter().map(|(args, _)| args[0].as_i64().unwrap()).collect();
    answers.sort();
    assert_eq!(answers, [0, 1, 2, 3, 4, 5]);

    // Two answer, four stay silent: at the timeout, the two answers come as partial.
    let h = server.handle();
    let asking = std::thread::spawn(move || h.of("/").emit_with_ack("again", &[], Duration::from_millis(300)).wait());
    for (i, ws) in clients.iter_mut().enumerate() {
        let m = ws.recv_eio();
        let id: String = m.trim_start_matches("42").chars().take_while(|c| c.is_ascii_digit()).collect();
        if i < 2 {
            ws.send_text(&format!("43{id}[{i}]"));
        }
    }
    let partial = bounded("the partial collection", move || asking.join().unwrap()).unwrap().unwrap_err();
    assert_eq!(partial.responses.len(), 2);
    server.shutdown();
}

#[test]
fn every_call_after_shutdown_answers_stopped() {
    let server = start(2, Namespace::new());
    let handle = server.handle();
    server.shutdown();
    let h = handle.clone();
    assert_eq!(bounded("count after shutdown", move || h.of("/").count().wait()), Err(HandleError::Stopped));
    let h = handle.clone();
    assert_eq!(bounded("flush after shutdown", move || h.flush().wait()), Err(HandleError::Stopped));
    assert_eq!(handle.of("/").emit("x", &[]), Err(HandleError::Stopped));
    assert_eq!(handle.of("/").sockets_join(&["r"]), Err(HandleError::Stopped));
    assert_eq!(handle.close_room("/", "r"), Err(HandleError::Stopped));
    assert_eq!(handle.of("/").disconnect_sockets(true), Err(HandleError::Stopped));
}

#[test]
fn a_count_waiting_while_the_server_goes_away_returns() {
    let server = start(1, Namespace::new());
    let handle = server.handle();
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let h = handle.clone();
            std::thread::spawn(move || (0..200).map(|_| h.of("/").count().wait()).find(|r| r.is_err()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    server.shutdown();
    for w in waiters {
        let r = bounded("a count racing shutdown", move || w.join().unwrap());
        assert!(matches!(r, None | Some(Err(HandleError::Stopped))), "{r:?}");
    }
}

#[test]
fn start_on_a_port_another_server_serves_is_an_error() {
    let first = start(2, Namespace::new());
    let second = Server::builder().bind(first.local_addr()).threads(2).pin(false).start();
    match second {
        Err(e @ StartError::AddrInUse { .. }) => assert!(e.to_string().contains("address in use"), "{e}"),
        Err(e) => panic!("expected AddrInUse, got {e}"),
        Ok(s) => panic!("a second server started on {}", s.local_addr()),
    }
}

/// The README's example (`examples/hello.rs`, built by `cargo test`) serves until SIGTERM,
/// then shuts down cleanly (exit 0) within a bounded time.
#[test]
fn the_hello_example_serves_until_sigterm_and_exits_cleanly() {
    use std::io::BufRead;
    // `cargo build --examples` (which scripts/test runs first) links the program itself at
    // `examples/hello`; `cargo test` alone builds examples only as test executables.
    let exe = std::env::current_exe().unwrap();
    let hello = exe.parent().and_then(|deps| deps.parent()).map(|d| d.join("examples").join("hello")).unwrap();
    assert!(hello.exists(), "{} is not built: run `cargo build --examples` first (scripts/test does)", hello.display());
    let mut child = std::process::Command::new(&hello).arg("127.0.0.1:0").stdout(std::process::Stdio::piped()).spawn().unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line.split_whitespace().find_map(|w| w.parse().ok()).unwrap_or_else(|| panic!("{line:?}"));
    let mut ws = Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(BOUND);
    assert!(ws.recv_text().starts_with("0{"));
    ws.send_text("40");
    assert!(ws.recv_eio().starts_with("40{\"sid\""));
    assert_eq!(ws.recv_eio(), r#"42["hello","welcome"]"#);
    // SAFETY: signals our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = bounded("the example's exit after SIGTERM", move || child.wait().unwrap());
    assert!(status.success(), "{status}");
}
