//! `ServerHandle` from any thread, never hanging: inside a handler the waiting calls
//! (`count`, `flush`) answer `WouldDeadlock` at once instead of blocking their own worker;
//! after shutdown every call answers `Stopped`. Each call runs on a helper thread and the test
//! fails if it has not returned within a bounded time. `ServerBuilder::start` on a port
//! another server holds is an error.

mod support;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use shardcast::app::{HandleError, Namespace, RunningServer, Server, ServerHandle};
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

#[test]
fn count_and_flush_inside_a_handler_answer_would_deadlock_at_once() {
    let slot: Arc<Mutex<Option<ServerHandle>>> = Arc::default();
    let results = Arc::new(Mutex::new(Vec::new()));
    let (s, r) = (slot.clone(), results.clone());
    let ns = Namespace::new().on("probe", move |sock, _| {
        let h = s.lock().unwrap().clone().expect("handle set");
        let count = h.of("/").count();
        let flush = h.flush();
        // Posting calls work from a handler.
        let emit = h.of("/").emit("probed", &[json!(1)]);
        r.lock().unwrap().push((count, flush, emit));
        sock.emit("done", &[]);
    });
    let server = start(2, ns);
    *slot.lock().unwrap() = Some(server.handle());
    let mut ws = connect(&server);
    ws.send_text(r#"42["probe"]"#);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(ws.recv_eio());
    }
    got.sort();
    assert_eq!(got, [r#"42["done"]"#, r#"42["probed",1]"#], "the worker still runs");
    assert_eq!(results.lock().unwrap().as_slice(), [(Err(HandleError::WouldDeadlock), Err(HandleError::WouldDeadlock), Ok(()))]);
    // From outside the workers both still work.
    let h = server.handle();
    assert_eq!(bounded("count from a thread", move || h.of("/").count()), Ok(1));
    server.shutdown();
}

#[test]
fn every_call_after_shutdown_answers_stopped() {
    let server = start(2, Namespace::new());
    let handle = server.handle();
    server.shutdown();
    let h = handle.clone();
    assert_eq!(bounded("count after shutdown", move || h.of("/").count()), Err(HandleError::Stopped));
    let h = handle.clone();
    assert_eq!(bounded("flush after shutdown", move || h.flush()), Err(HandleError::Stopped));
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
            std::thread::spawn(move || (0..200).map(|_| h.of("/").count()).find(|r| r.is_err()))
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
