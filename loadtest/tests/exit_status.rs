//! The load generator's exit status and messages, against the contract app served in this
//! process: a clean run exits 0; a wrong `--path` stops at once naming the HTTP status; a run
//! where every connection failed, and `compare` of two different scenarios, exit non-zero.

use std::process::{Command, Output};
use std::time::Duration;

use shardcast::app::{contract, RunningServer, Server};

fn server() -> RunningServer {
    contract::app(Server::builder().bind("127.0.0.1:0".parse().unwrap()).threads(1).pin(false)).start().expect("the contract app starts")
}

fn loadtest(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardcast-loadtest"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("shardcast-loadtest {args:?} ran for more than 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_clean_run_exits_zero_and_writes_a_comparable_report() {
    let s = server();
    let target = s.local_addr().to_string();
    let dir = std::env::temp_dir();
    let json = dir.join(format!("lt-exit-echo-{}.json", std::process::id()));
    let o = loadtest(&["echo", "--clients", "2", "--duration", "1", "--target", &target, "--json", json.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let same = loadtest(&["compare", json.to_str().unwrap(), json.to_str().unwrap()]);
    assert!(same.status.success(), "{}", stderr(&same));
    let conns = dir.join(format!("lt-exit-conns-{}.json", std::process::id()));
    let o = loadtest(&["conns", "--connections", "2", "--hold", "0", "--target", &target, "--json", conns.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mixed = loadtest(&["compare", json.to_str().unwrap(), conns.to_str().unwrap()]);
    assert!(!mixed.status.success());
    assert!(stderr(&mixed).contains("different scenarios"), "{}", stderr(&mixed));
    let _ = (std::fs::remove_file(&json), std::fs::remove_file(&conns));
    s.shutdown();
}

#[test]
fn a_wrong_path_stops_at_once_with_the_http_status() {
    let s = server();
    let o = loadtest(&["echo", "--clients", "2", "--duration", "1", "--target", &s.local_addr().to_string(), "--path", "/wrong/"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("HTTP 4") && e.contains("--path"), "{e}");
    s.shutdown();
}

#[test]
fn every_connection_failing_exits_non_zero() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = loadtest(&["echo", "--protocol", "raw", "--clients", "3", "--duration", "1", "--target", &format!("127.0.0.1:{port}"), "--path", "/echo"]);
    assert!(!o.status.success(), "exited 0 with every connection failed: {}", String::from_utf8_lossy(&o.stdout));
    assert!(stderr(&o).contains("3 connections or setup steps failed"), "{}", stderr(&o));
}
