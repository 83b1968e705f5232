//! The official clients against the real binary: `socket.io-client` 4.8 (Node) and
//! `python-socketio` (Python), every CONTRACT row in three transport modes, 500 clients at
//! once, rooms across 2 workers; and a packet-for-packet comparison with Node's own socket.io
//! server running the same contract, and the admin UI's protocol against Node's `instrument()`.
//! The clients are installed by `scripts/test`; a missing
//! one fails these tests, it never skips them.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::Server;

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn require(path: &Path, what: &str) {
    assert!(path.exists(), "{what} is not installed at {}: run `scripts/test` (it installs the interop clients)", path.display());
}

/// How long a client suite may run before it is killed and the test fails (a client that
/// reconnects forever after a failed step would otherwise keep it alive).
const SUITE_BOUND: std::time::Duration = std::time::Duration::from_secs(300);

fn run(mut cmd: Command, what: &str) {
    let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(SUITE_BOUND) {
        Ok(out) => out.unwrap_or_else(|e| panic!("cannot run {what}: {e}")),
        Err(_) => {
            // SAFETY: signals the child this test started (not yet reaped: its waiter is blocked).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let out = rx.recv().expect("the waiter returns once the child is killed").expect("its output");
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            panic!("{what} did not finish within {SUITE_BOUND:?}; killed. Its output:\n{text}");
        }
    };
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "{what} failed:\n{text}");
}

/// Runs `contract.test.js`'s `suite` ("contract" or "scale") against a 2-worker server started
/// with `args`.
fn js_contract_suite(args: &[&str], suite: &str) {
    let js = interop_dir().join("js");
    require(&js.join("node_modules/socket.io-client"), "socket.io-client");
    let s = Server::start(args);
    let mut cmd = Command::new("node");
    cmd.current_dir(&js)
        .args(["--test", "--test-force-exit", "--test-reporter=spec", "contract.test.js"])
        .env("SHARDCAST_URL", format!("http://{}", s.addr))
        .env("SHARDCAST_WORKERS", "2")
        .env("SHARDCAST_SUITE", suite);
    run(cmd, &format!("the socket.io-client {suite} suite"));
}

#[test]
fn official_js_client_passes_the_contract() {
    js_contract_suite(&["--threads", "2"], "contract");
}

/// 500 socket.io-client sockets at once and a room across both workers. Every client lives in
/// one Node process, whose single event loop must answer every PING: under the contract's
/// 200 ms pingTimeout that measures how busy the test machine is, not the server, so this
/// server gets production-like heartbeats.
#[test]
fn official_js_client_at_scale() {
    js_contract_suite(&["--threads", "2", "--ping-interval", "5000", "--ping-timeout", "10000"], "scale");
}

#[test]
fn official_python_client_passes_the_contract() {
    let py = interop_dir().join("python");
    let python = py.join(".venv/bin/python");
    require(&python, "the python-socketio virtualenv");
    let s = Server::start(&["--threads", "2"]);
    let mut cmd = Command::new(&python);
    cmd.current_dir(&py).args(["-m", "unittest", "-v", "test_contract"]).env("SHARDCAST_URL", format!("http://{}", s.addr)).env("PY_CLIENTS", "100");
    run(cmd, "the python-socketio suite");
}

#[test]
fn packets_match_node_socket_io() {
    let js = interop_dir().join("js");
    require(&js.join("node_modules/socket.io"), "Node's socket.io (the reference server)");
    let mut reference = Command::new("node").current_dir(&js).arg("reference-server.js").stdout(Stdio::piped()).spawn().expect("start the reference server");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(reference.stdout.take().unwrap()), &mut line).unwrap();
    let ref_addr = line.trim().trim_start_matches("listening on ").to_string();
    let s = Server::start(&["--threads", "1"]);
    let mut cmd = Command::new("node");
    cmd.current_dir(&js)
        .args(["--test", "--test-force-exit", "wire-compare.test.js"])
        .env("REFERENCE_URL", format!("http://{ref_addr}"))
        .env("SHARDCAST_URL", format!("http://{}", s.addr));
    let _stop = KillOnDrop(reference);
    run(cmd, "the wire comparison");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `--path /sock` (no trailing slash) serves socket.io-client configured with `path: "/sock"`,
/// over both transports, as Node's server does (it used to answer 404).
#[test]
fn js_client_with_a_path_without_trailing_slash_connects() {
    let js = interop_dir().join("js");
    require(&js.join("node_modules/socket.io-client"), "socket.io-client");
    let s = Server::start(&["--threads", "1", "--path", "/sock"]);
    for transport in ["polling", "websocket"] {
        let script = format!(
            r#"const {{ io }} = require("socket.io-client");
const s = io("http://{addr}", {{ path: "/sock", transports: ["{transport}"], reconnection: false }});
s.on("connect", () => {{ console.log("connected"); s.close(); process.exit(0); }});
s.on("connect_error", (e) => {{ console.error("connect_error: " + e.message); process.exit(1); }});
setTimeout(() => {{ console.error("timed out"); process.exit(2); }}, 5000);"#,
            addr = s.addr
        );
        let mut cmd = Command::new("node");
        cmd.current_dir(&js).args(["-e", &script]);
        run(cmd, &format!("socket.io-client with path /sock over {transport}"));
    }
}

/// Connection state recovery with socket.io-client 4.8 (`recovery.test.js`): against shardcast
/// started with `--recovery-window 10000` (and a second one with 300 ms for the expiry case),
/// two workers so that a client may come back on the other one.
#[test]
fn js_client_recovers_connection_state() {
    let js = interop_dir().join("js");
    require(&js.join("node_modules/socket.io-client"), "socket.io-client");
    let long = Server::start(&["--threads", "2", "--recovery-window", "10000"]);
    let short = Server::start(&["--threads", "2", "--recovery-window", "300"]);
    let mut cmd = Command::new("node");
    cmd.current_dir(&js)
        .args(["--test", "--test-force-exit", "--test-reporter=spec", "recovery.test.js"])
        .env("SHARDCAST_URL", format!("http://{}", long.addr))
        .env("SHARDCAST_SHORT_URL", format!("http://{}", short.addr));
    run(cmd, "the recovery suite against shardcast");
}

/// The same recovery suite passes against Node's socket.io 4.8 with `connectionStateRecovery`
/// (the reference server with `RECOVERY_WINDOW`): the suite checks the protocol, not shardcast.
#[test]
fn js_recovery_suite_passes_against_node_socket_io() {
    let js = interop_dir().join("js");
    require(&js.join("node_modules/socket.io"), "Node's socket.io (the reference server)");
    let start = |window: &str| reference_server(&js, &[("RECOVERY_WINDOW", window)]);
    let (_long, long) = start("10000");
    let (_short, short) = start("300");
    let mut cmd = Command::new("node");
    cmd.current_dir(&js)
        .args(["--test", "--test-force-exit", "--test-reporter=spec", "recovery.test.js"])
        .env("SHARDCAST_URL", format!("http://{long}"))
        .env("SHARDCAST_SHORT_URL", format!("http://{short}"));
    run(cmd, "the recovery suite against Node's socket.io");
}

/// Connection state recovery packet for packet (`wire-compare-recovery.test.js`): raw
/// WebSockets against Node's socket.io 4.8 with `connectionStateRecovery` and shardcast with
/// `--recovery-window`; the transcripts must match once ids and offsets are normalised.
#[test]
fn recovery_packets_match_node_socket_io() {
    let js = interop_dir().join("js");
    require(&js.join("node_modules/socket.io"), "Node's socket.io (the reference server)");
    let mut reference = Command::new("node")
        .current_dir(&js)
        .arg("reference-server.js")
        .env("RECOVERY_WINDOW", "10000")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the reference server");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(reference.stdout.take().unwrap()), &mut line).unwrap();
    let ref_addr = line.trim().trim_start_matches("listening on ").to_string();
    let _stop = KillOnDrop(reference);
    let s = Server::start(&["--threads", "2", "--recovery-window", "10000"]);
    let mut cmd = Command::new("node");
    cmd.current_dir(&js)
        .args(["--test", "--test-force-exit", "--test-reporter=spec", "wire-compare-recovery.test.js"])
        .env("REFERENCE_URL", format!("http://{ref_addr}"))
        .env("SHARDCAST_URL", format!("http://{}", s.addr));
    run(cmd, "the recovery wire comparison");
}

/// Starts Node's reference server with `env` and returns it with its address.
fn reference_server(js: &Path, env: &[(&str, &str)]) -> (KillOnDrop, String) {
    let mut child = Command::new("node")
        .current_dir(js)
        .arg("reference-server.js")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the reference server");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    (KillOnDrop(child), line.trim().trim_start_matches("listening on ").to_string())
}

/// The admin UI's server side (`admin-ui.test.js`): socket.io-client does what the hosted
/// `@socket.io/admin-ui` app does against Node's socket.io 4.8 with `instrument()` and against
/// shardcast with `--admin-ui-auth` (2 workers, so the admin sees sockets of the other one), in
/// development and production mode, and without a login, and the transcripts must match. Both servers get the same
/// bcrypt hash (`$2a$`, cost 4 to keep the test fast).
#[test]
fn admin_ui_matches_node_instrument() {
    let js = interop_dir().join("js");
    require(&js.join("node_modules/@socket.io/admin-ui"), "@socket.io/admin-ui (Node's instrument())");
    let password = "pw-of-the-admin";
    let hash = bcrypt::hash_with_result(password, 4).expect("hash").format_for_version(bcrypt::Version::TwoA);
    // Heartbeats long enough that a client process stalled by a loaded CI machine (the other
    // interop tests run beside this one) is not dropped before its login is answered: nothing
    // compared here depends on them.
    fn with_slow<'a>(env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        env.iter().copied().chain([("PING_INTERVAL", "2000"), ("PING_TIMEOUT", "5000")]).collect()
    }
    let (_dev_ref, dev_ref) = reference_server(&js, &with_slow(&[("ADMIN_UI", "development"), ("ADMIN_USER", "admin"), ("ADMIN_HASH", &hash)]));
    let (_prod_ref, prod_ref) = reference_server(&js, &with_slow(&[("ADMIN_UI", "production"), ("ADMIN_USER", "admin"), ("ADMIN_HASH", &hash)]));
    let (_open_ref, open_ref) = reference_server(&js, &with_slow(&[("ADMIN_UI", "production"), ("ADMIN_HASH", "none")]));
    let auth = format!("admin:{hash}");
    let slow = ["--ping-interval", "2000", "--ping-timeout", "5000"];
    let dev = Server::start(&[&["--threads", "2", "--admin-ui-auth", &auth, "--admin-ui-mode", "development"][..], &slow].concat());
    let prod = Server::start_env(&[&["--threads", "2"][..], &slow].concat(), &[("SHARDCAST_ADMIN_UI_AUTH", &auth), ("SHARDCAST_ADMIN_UI_MODE", "production")]);
    let open = Server::start(&[&["--threads", "1", "--admin-ui-auth", "none"][..], &slow].concat());
    let mut cmd = Command::new("node");
    cmd.current_dir(&js)
        .args(["--test", "--test-force-exit", "--test-reporter=spec", "admin-ui.test.js"])
        .env("REFERENCE_URL", format!("http://{dev_ref}"))
        .env("REFERENCE_PROD_URL", format!("http://{prod_ref}"))
        .env("SHARDCAST_URL", format!("http://{}", dev.addr))
        .env("SHARDCAST_PROD_URL", format!("http://{}", prod.addr))
        .env("REFERENCE_OPEN_URL", format!("http://{open_ref}"))
        .env("SHARDCAST_OPEN_URL", format!("http://{}", open.addr))
        .env("SHARDCAST_WORKERS", "2")
        .env("ADMIN_PASSWORD", password);
    run(cmd, "the admin UI comparison");
}
