//! The binary's start-up and logs, as an operator sees them: production heartbeats by default,
//! one banner line, sessions logged at debug with their close reasons, no colour codes when
//! stderr is not a terminal, and `--log-format json`.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{Http, Ws};

/// Starts the binary with exactly `args` (no test heartbeats added) and returns it with its
/// banner line.
fn start(args: &[&str], env: &[(&str, &str)]) -> (Child, String, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(args)
        .args(["--bind", "127.0.0.1:0", "--threads", "1"])
        .args(support::io_args(args))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shardcast");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    out.read_line(&mut banner).unwrap();
    let addr = banner.split_whitespace().find_map(|w| w.parse::<SocketAddr>().ok()).unwrap_or_else(|| panic!("no address in {banner:?}"));
    (child, banner, addr)
}

/// Stops the server with SIGTERM and returns everything it wrote to stderr.
fn stop(mut child: Child) -> String {
    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(child.wait().unwrap().success());
    err
}

#[test]
fn defaults_are_the_production_heartbeats_and_the_banner_says_what_runs() {
    let (child, banner, addr) = start(&[], &[]);
    assert_eq!(banner.lines().count(), 1);
    for part in ["1 workers", "transports polling+websocket", "heartbeat 25000/20000 ms", "websocket compression off", "docs/default-app.md"] {
        assert!(banner.contains(part), "{part:?} missing from {banner:?}");
    }
    let open = Http::connect(addr).get("/socket.io/?EIO=4&transport=polling", "").text();
    assert!(open.contains(r#""pingInterval":25000"#) && open.contains(r#""pingTimeout":20000"#), "{open}");
    stop(child);
}

#[test]
fn sessions_are_logged_at_debug_with_reasons_and_without_colour_codes() {
    let (child, _, addr) = start(&[], &[("RUST_LOG", "debug")]);
    let mut ws = Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(Duration::from_secs(5));
    ws.recv_text();
    ws.send_frame(true, 8, &1000u16.to_be_bytes());
    while ws.recv().is_some() {}
    let err = stop(child);
    assert!(!err.contains('\u{1b}'), "no ANSI escapes when stderr is a pipe:\n{err}");
    let opened = err.lines().find(|l| l.contains("session opened")).unwrap_or_else(|| panic!("no open line in\n{err}"));
    assert!(opened.contains("transport=\"websocket\"") || opened.contains("transport=websocket"), "{opened}");
    let closed = err.lines().find(|l| l.contains("session closed")).unwrap_or_else(|| panic!("no close line in\n{err}"));
    assert!(closed.contains("transport close"), "the reason is logged: {closed}");
}

#[test]
fn log_format_json_writes_one_object_per_line() {
    let (child, _, addr) = start(&["--log-format", "json"], &[("RUST_LOG", "debug")]);
    Http::connect(addr).get("/socket.io/?EIO=4&transport=polling", "");
    let err = stop(child);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}"));
        assert!(v.get("level").is_some(), "{l}");
    }
    assert!(lines.iter().any(|l| l.contains("session opened")));
}
