//! The admin endpoint (`--admin-bind`) of the real binary: `/metrics` after a known workload
//! (exact counter values), `/health` turning 503 when shutdown begins while the drain runs,
//! the publish API reaching the right raw-wire Socket.IO clients (rooms, except, namespaces,
//! batches) and refusing bad keys and bodies, and configuration from `SHARDCAST_*` variables.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use shardcast::engine::sid;
use support::{Server, Ws};

/// The admin endpoint's address, from the banner.
fn admin_addr(server: &Server) -> SocketAddr {
    let rest = server.banner.split("admin endpoint on ").nth(1).unwrap_or_else(|| panic!("no admin address in {:?}", server.banner));
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// One request to the admin endpoint: (status, head, body).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &[u8]) -> (u16, String, String) {
    try_request(addr, method, path, headers, body).expect("a complete answer (the endpoint closes after it)")
}

/// [`request`], with the connection's error instead of a panic: a request sent while every
/// admin connection is taken is answered 503 and closed unread, which the kernel may turn
/// into a reset before the client reads the answer.
fn try_request(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &[u8]) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{headers}Content-Length: {}\r\n\r\n", body.len());
    // The endpoint may answer and close before it reads the request: a failed write still
    // leaves its answer to read.
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8(out).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Ok((status, head.to_string(), body.to_string()))
}

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = request(addr, "GET", path, "", b"");
    (status, body)
}

/// A parsed exposition: metric line (`name{labels}`, labels in the order printed) -> value,
/// after checking the format: every sample's family has one `# HELP` and one `# TYPE` line
/// before it, and counters end in `_total`.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut helps = BTreeMap::new();
    let mut values = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split_whitespace().next().unwrap();
            assert!(helps.insert(name.to_string(), ()).is_none(), "two HELP lines for {name}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (name, kind) = (w.next().unwrap(), w.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(helps.contains_key(name), "TYPE before HELP for {name}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} does not end in _total");
            }
            assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "two TYPE lines for {name}");
        } else {
            let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let name = key.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s).filter(|f| types.get(*f).is_some_and(|k| k == "histogram")));
            let family = family.unwrap_or(name);
            assert!(types.contains_key(family), "sample {name} has no TYPE line before it");
            assert!(name.starts_with("shardcast_"), "{name}");
            values.insert(key.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("bad value in {line:?}")));
        }
    }
    values
}

fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, head, body) = request(addr, "GET", "/metrics", "", b"");
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    parse_metrics(&body)
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> u64 {
    *m.get(key).unwrap_or_else(|| panic!("no {key} in the scrape: {m:#?}")) as u64
}

/// A raw Socket.IO client over WebSocket that counts the bytes it writes and reads.
struct Client {
    ws: Ws,
    /// The Engine.IO session id (its first 2 characters name the owning worker).
    sid: String,
    /// The Socket.IO socket id in `/`.
    socket: String,
    sent: u64,
    received: u64,
}

fn frame_len(payload: usize, masked: bool) -> u64 {
    let ext = if payload < 126 {
        0
    } else if payload < 65536 {
        2
    } else {
        8
    };
    (2 + ext + if masked { 4 } else { 0 } + payload) as u64
}

impl Client {
    fn connect(addr: SocketAddr, nsp: &str) -> Client {
        let target = "/socket.io/?EIO=4&transport=websocket";
        let ws = Ws::connect(addr, target, "");
        ws.set_timeout(Duration::from_secs(10));
        let mut c = Client {
            sent: Ws::upgrade_request(target, "").len() as u64,
            received: ws.response_head.len() as u64,
            ws,
            sid: String::new(),
            socket: String::new(),
        };
        let open = c.recv();
        let v: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
        c.sid = v["sid"].as_str().unwrap().to_string();
        c.send(&if nsp == "/" { "40".to_string() } else { format!("40{nsp},") });
        let ok = c.recv();
        let prefix = if nsp == "/" { "40".to_string() } else { format!("40{nsp},") };
        let v: serde_json::Value = serde_json::from_str(ok.strip_prefix(&prefix).unwrap_or_else(|| panic!("{ok}"))).unwrap();
        c.socket = v["sid"].as_str().unwrap().to_string();
        let auth = c.recv();
        assert!(auth.contains("[\"auth\",{}]"), "{auth}");
        c
    }

    fn send(&mut self, text: &str) {
        self.ws.send_text(text);
        self.sent += frame_len(text.len(), true);
    }

    /// The next text frame (heartbeats are 25 s apart here: none arrives during a test).
    fn recv(&mut self) -> String {
        let t = self.ws.recv_text();
        self.received += frame_len(t.len(), false);
        t
    }

    fn worker(&self) -> usize {
        sid::owner(&self.sid).unwrap()
    }
}

const SLOW_HEARTBEAT: [&str; 4] = ["--ping-interval", "25000", "--ping-timeout", "20000"];

fn start(extra: &[&str]) -> Server {
    let mut args = vec!["--threads", "2", "--admin-bind", "127.0.0.1:0"];
    args.extend_from_slice(&SLOW_HEARTBEAT);
    args.extend_from_slice(extra);
    Server::start(&args)
}

#[test]
fn metrics_count_a_known_workload_exactly() {
    let server = start(&[]);
    let admin = admin_addr(&server);
    // N = 6 clients; clients 0..4 join room r (R = 4 recipients, acks asked); client 5 sends
    // M = 3 to-room messages; client 4 sends B = 2 broadcasts (to the N - 1 others).
    let mut clients: Vec<Client> = (0..6).map(|_| Client::connect(server.addr, "/")).collect();
    for c in &mut clients[..4] {
        c.send(r#"421["join","r"]"#);
        assert_eq!(c.recv(), "431[true]");
    }
    for k in 0..3 {
        clients[5].send(&format!(r#"42["to-room","r",{k}]"#));
    }
    for c in &mut clients[..4] {
        for k in 0..3 {
            assert_eq!(c.recv(), format!(r#"42["room-message",{k}]"#));
        }
    }
    for k in 0..2 {
        clients[4].send(&format!(r#"42["broadcast","b",{k}]"#));
    }
    for (i, c) in clients.iter_mut().enumerate().filter(|(i, _)| *i != 4) {
        for k in 0..2 {
            assert_eq!(c.recv(), format!(r#"42["broadcast-back","b",{k}]"#), "client {i}");
        }
    }

    let m = scrape(admin);
    // Process totals.
    assert_eq!(value(&m, "shardcast_accepted_total"), 6);
    assert_eq!(value(&m, "shardcast_packets_received_total"), 6 + 4 + 3 + 2, "CONNECTs, joins, to-rooms, broadcasts");
    assert_eq!(value(&m, "shardcast_packets_sent_total"), 6 + 6 + 4 + 3 * 4 + 2 * 5, "CONNECT answers, auth events, join acks, deliveries");
    assert_eq!(value(&m, "shardcast_broadcasts_total"), 3 + 2);
    assert_eq!(value(&m, "shardcast_deliveries_total"), 3 * 4 + 2 * 5);
    assert_eq!(value(&m, "shardcast_received_bytes_total"), clients.iter().map(|c| c.sent).sum::<u64>(), "every byte the clients wrote");
    assert_eq!(value(&m, "shardcast_sent_bytes_total"), clients.iter().map(|c| c.received).sum::<u64>(), "every byte the clients read");
    for reason in ["volatile", "slow_consumer"] {
        assert_eq!(value(&m, &format!("shardcast_dropped_total{{reason=\"{reason}\"}}")), 0);
    }
    for reason in ["read_overflow", "read_budget", "memory", "close_grace"] {
        assert_eq!(value(&m, &format!("shardcast_cuts_total{{reason=\"{reason}\"}}")), 0);
    }
    // Per worker: each client's session id names its worker.
    for w in 0..2 {
        let mine: Vec<usize> = (0..6).filter(|&i| clients[i].worker() == w).collect();
        let n = mine.len() as u64;
        let members = mine.iter().filter(|&&i| i < 4).count() as u64;
        let wl = format!("worker=\"{w}\"");
        assert_eq!(value(&m, &format!("shardcast_connections{{transport=\"websocket\",{wl}}}")), n);
        assert_eq!(value(&m, &format!("shardcast_connections{{transport=\"polling\",{wl}}}")), 0);
        assert_eq!(value(&m, &format!("shardcast_sessions{{transport=\"websocket\",{wl}}}")), n);
        assert_eq!(value(&m, &format!("shardcast_sessions{{transport=\"polling\",{wl}}}")), 0);
        assert_eq!(value(&m, &format!("shardcast_tcp_connections{{{wl}}}")), n);
        assert_eq!(value(&m, &format!("shardcast_sockets{{{wl}}}")), n);
        assert_eq!(value(&m, &format!("shardcast_namespaces{{{wl}}}")), (n > 0) as u64);
        assert_eq!(value(&m, &format!("shardcast_rooms{{{wl}}}")), (members > 0) as u64);
        assert_eq!(value(&m, &format!("shardcast_send_queue_bytes{{{wl}}}")), 0, "everything was read");
        // An instantaneous gauge, read just before the worker is asked: reported, and small
        // (a quiet server's mailbox is empty but for mail in flight at that instant).
        assert!(value(&m, &format!("shardcast_mailbox_depth{{{wl}}}")) <= 2);
        // The loop histograms: cumulative buckets, +Inf equal to the count. A pass is measured at
        // the top of the next one, so a worker that served none of the six clients (the kernel
        // may hash them all to one listener) may have recorded no pass yet under epoll, whose
        // idle worker sleeps in its first wait; one that served a client has passes and
        // submitted work for it.
        let count = value(&m, &format!("shardcast_loop_pass_seconds_count{{{wl}}}"));
        assert_eq!(value(&m, &format!("shardcast_loop_pass_seconds_bucket{{{wl},le=\"+Inf\"}}")), count);
        let buckets: Vec<u64> =
            m.iter().filter(|(k, _)| k.starts_with(&format!("shardcast_loop_pass_seconds_bucket{{{wl},"))).map(|(_, v)| *v as u64).collect();
        assert!(buckets.len() > 10);
        let subs = value(&m, &format!("shardcast_ring_submissions_per_pass_count{{{wl}}}"));
        assert_eq!(subs, count, "one submissions sample per measured pass");
        if n > 0 {
            assert!(count > 0, "worker {w}");
            assert!(value(&m, &format!("shardcast_ring_submissions_per_pass_sum{{{wl}}}")) > 0, "worker {w}");
        }
    }
    let per_pass = |k: &str| value(&m, k);
    assert!(
        per_pass("shardcast_loop_pass_seconds_bucket{worker=\"0\",le=\"0.001\"}") <= per_pass("shardcast_loop_pass_seconds_bucket{worker=\"0\",le=\"0.1\"}")
    );

    // A second scrape sees the same totals: scraping is not traffic on the public port.
    let again = scrape(admin);
    assert_eq!(value(&again, "shardcast_received_bytes_total"), value(&m, "shardcast_received_bytes_total"));
    assert_eq!(value(&again, "shardcast_deliveries_total"), value(&m, "shardcast_deliveries_total"));

    // A long-polling session is counted under its transport, on the worker its id names.
    let polling = support::handshake(server.addr, "/socket.io/");
    let m = scrape(admin);
    let w = sid::owner(&polling).unwrap();
    assert_eq!(value(&m, &format!("shardcast_sessions{{transport=\"polling\",worker=\"{w}\"}}")), 1);
    assert_eq!(value(&m, &format!("shardcast_sessions{{transport=\"websocket\",worker=\"{w}\"}}")), clients.iter().filter(|c| c.worker() == w).count() as u64);
    assert_eq!(value(&m, "shardcast_accepted_total"), 7);
}

#[test]
fn health_turns_503_when_shutdown_begins_and_the_admin_port_answers_during_the_drain() {
    let mut server = start(&[]);
    let admin = admin_addr(&server);
    assert_eq!(get(admin, "/health"), (200, "ok\n".to_string()));
    // A client that never answers the server's close frame keeps the drain going (up to the
    // lingering-close limit) after the signal.
    let mut silent = Client::connect(server.addr, "/");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "/health never answered 503 after SIGTERM");
        let (status, body) = get(admin, "/health");
        if status == 503 {
            assert_eq!(body, "shutting down\n");
            break;
        }
        assert_eq!(status, 200);
        std::thread::sleep(Duration::from_millis(5));
    }
    // While the workers drain: the public port refuses new clients, the admin port still
    // serves metrics, and the silent client got its close frame (1001, going away).
    // (/health turns first, then the workers are told: the refusal follows within moments.)
    // Connects that reach the listener's backlog before it closes may still be accepted (and
    // are then refused); none after.
    let mut landed = 0;
    while TcpStream::connect(server.addr).is_ok() {
        landed += 1;
        assert!(Instant::now() < deadline, "the public port still accepts during the drain");
        std::thread::sleep(Duration::from_millis(5));
    }
    let m = scrape(admin);
    let accepted = value(&m, "shardcast_accepted_total");
    assert!((1..=1 + landed).contains(&accepted), "accepted {accepted}: the client, and at most the {landed} connects that landed before the listener closed");
    let close = silent.ws.recv().expect("a close frame");
    assert_eq!((close.opcode, &close.payload[..2]), (8, &1001u16.to_be_bytes()[..]));
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(TcpStream::connect(admin).is_err(), "the admin endpoint is gone after exit");
}

fn post_emit(admin: SocketAddr, path: &str, key: &str, body: serde_json::Value) -> (u16, String) {
    let (status, _, body) = admin_raw_post(admin, path, key, body.to_string().as_bytes());
    (status, body)
}

fn admin_raw_post(admin: SocketAddr, path: &str, key: &str, body: &[u8]) -> (u16, String, String) {
    let auth = if key.is_empty() { String::new() } else { format!("Authorization: Bearer {key}\r\n") };
    request(admin, "POST", path, &format!("{auth}Content-Type: application/json\r\n"), body)
}

#[test]
fn api_emit_reaches_rooms_except_and_namespaces_and_refuses_bad_requests() {
    let server = start(&["--api-key", "s3cret"]);
    let admin = admin_addr(&server);
    let mut a = Client::connect(server.addr, "/");
    let mut b = Client::connect(server.addr, "/");
    let mut c = Client::connect(server.addr, "/");
    let mut d = Client::connect(server.addr, "/custom");
    for (cl, room) in [(&mut a, "r"), (&mut b, "r"), (&mut c, "s")] {
        cl.send(&format!(r#"421["join","{room}"]"#));
        assert_eq!(cl.recv(), "431[true]");
    }

    // Room r except b: only a. Answered once every worker has handed it on.
    let (status, body) =
        post_emit(admin, "/api/emit", "s3cret", json!({"namespace": "/", "rooms": ["r"], "except": [b.socket], "event": "news", "args": [1, {"x": "y"}]}));
    assert_eq!((status, body.as_str()), (200, r#"{"emitted":1}"#));
    // A marker to every socket of `/`: whoever did not get "news" sees the marker first.
    assert_eq!(post_emit(admin, "/api/emit", "s3cret", json!({"event": "marker"})).0, 200);
    assert_eq!(a.recv(), r#"42["news",1,{"x":"y"}]"#);
    for cl in [&mut a, &mut b, &mut c] {
        assert_eq!(cl.recv(), r#"42["marker"]"#);
    }

    // A batch: rooms r and s (a, b, c once each), a socket id as a room (c), and `/custom`.
    let batch = json!([
        {"rooms": ["r", "s"], "event": "both"},
        {"rooms": [c.socket], "event": "direct", "args": ["c only"]},
        {"namespace": "/custom", "event": "custom-news", "args": [true]},
    ]);
    let (status, body) = post_emit(admin, "/api/emit/batch", "s3cret", batch);
    assert_eq!((status, body.as_str()), (200, r#"{"emitted":3}"#));
    assert_eq!(d.recv(), r#"42/custom,["custom-news",true]"#);
    assert_eq!(post_emit(admin, "/api/emit", "s3cret", json!({"event": "marker"})).0, 200);
    assert_eq!(post_emit(admin, "/api/emit", "s3cret", json!({"namespace": "/custom", "event": "marker"})).0, 200);
    for cl in [&mut a, &mut b] {
        assert_eq!(cl.recv(), r#"42["both"]"#);
        assert_eq!(cl.recv(), r#"42["marker"]"#);
    }
    assert_eq!(c.recv(), r#"42["both"]"#);
    assert_eq!(c.recv(), r#"42["direct","c only"]"#);
    assert_eq!(c.recv(), r#"42["marker"]"#);
    assert_eq!(d.recv(), r#"42/custom,["marker"]"#, "nothing of `/` reached the /custom socket");

    // Refusals, each with a JSON body that says why.
    let event = json!({"event": "nope"});
    let (status, head, body) = admin_raw_post(admin, "/api/emit", "wrong", event.to_string().as_bytes());
    assert_eq!((status, body.as_str()), (401, r#"{"error":"wrong API key"}"#));
    assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
    assert_eq!(post_emit(admin, "/api/emit", "", event.clone()).0, 401);
    for auth in ["Basic czNjcmV0", "Bearer", "s3cret", "Bearer s3cret2", "Béarer s3cret"] {
        let (status, _, body) = request(admin, "POST", "/api/emit", &format!("Authorization: {auth}\r\n"), event.to_string().as_bytes());
        assert_eq!(status, 401, "{auth}: {body}");
    }
    let (status, _, _) = request(admin, "POST", "/api/emit", "authorization: bearer s3cret\r\n", br#"{"event":"case"}"#);
    assert_eq!(status, 200, "the scheme and the header name are case-insensitive");
    let (status, _, body) = admin_raw_post(admin, "/api/emit", "s3cret", b"{\"event\":");
    assert_eq!(status, 400);
    assert!(body.contains("invalid JSON"), "{body}");
    let (status, body) = post_emit(admin, "/api/emit/batch", "s3cret", event.clone());
    assert_eq!(status, 400);
    assert!(body.contains("array"), "{body}");
    let big = vec![b' '; (1 << 20) + 1];
    let (status, _, body) = admin_raw_post(admin, "/api/emit", "s3cret", &big);
    assert_eq!(status, 413, "{body}");
    assert_eq!(get(admin, "/api/emit").0, 405);
    assert_eq!(get(admin, "/nowhere").0, 404);
    // None of the refused events reached anyone: the next packets each client sees are these.
    assert_eq!(post_emit(admin, "/api/emit", "s3cret", json!({"event": "last"})).0, 200);
    for cl in [&mut a, &mut b, &mut c] {
        assert_eq!(cl.recv(), r#"42["case"]"#);
        assert_eq!(cl.recv(), r#"42["last"]"#);
    }
    let m = scrape(admin);
    assert_eq!(value(&m, "shardcast_broadcasts_total"), 9, "every published event counted once");
}

#[test]
fn api_emit_is_refused_without_a_configured_key() {
    let server = start(&[]);
    let admin = admin_addr(&server);
    let (status, body) = post_emit(admin, "/api/emit", "anything", json!({"event": "x"}));
    assert_eq!(status, 403);
    assert!(body.contains("--api-key"), "{body}");
}

#[test]
fn configuration_from_the_environment() {
    // Every flag has a SHARDCAST_* variable, shown in --help.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast")).arg("--help").output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for var in
        ["SHARDCAST_BIND", "SHARDCAST_THREADS", "SHARDCAST_ADMIN_BIND", "SHARDCAST_API_KEY", "SHARDCAST_PING_INTERVAL", "SHARDCAST_WEBSOCKET_COMPRESSION"]
    {
        assert!(help.contains(&format!("[env: {var}")), "{var} not in --help:\n{help}");
    }
    let server = Server::start_env(
        &SLOW_HEARTBEAT,
        &[
            ("SHARDCAST_THREADS", "3"),
            ("SHARDCAST_ADMIN_BIND", "127.0.0.1:0"),
            ("SHARDCAST_API_KEY", "from-env"),
            ("SHARDCAST_WEBSOCKET_COMPRESSION", "true"),
            ("SHARDCAST_MAX_PAYLOAD", "4321"),
            // A flag beats its variable: the test harness passes --bind 127.0.0.1:0.
            ("SHARDCAST_BIND", "127.0.0.1:1"),
        ],
    );
    assert!(server.banner.contains("(3 workers,"), "{}", server.banner);
    assert!(server.banner.contains("websocket compression on"), "{}", server.banner);
    assert_ne!(server.addr.port(), 1);
    let open = support::get(server.addr, "/socket.io/?EIO=4&transport=polling").text();
    assert!(open.contains("\"maxPayload\":4321"), "{open}");
    let admin = admin_addr(&server);
    let mut c = Client::connect(server.addr, "/");
    assert_eq!(post_emit(admin, "/api/emit", "from-env", json!({"event": "hello"})).0, 200);
    assert_eq!(c.recv(), r#"42["hello"]"#);
    // The key is not printed by --help (only the variable's name).
    assert!(!help.contains("from-env"));
}

/// The endpoint's bounds, with small limits (library API): idle or trickling connections hold
/// nothing but their own socket and are closed at the head deadline without an answer, even
/// while every slot is taken `/health` (no slot) and `/metrics` (a slot of its own) answer, a
/// publish request is refused from its head (401) without its body being read, the slots are
/// capped (the next request gets 503 at once) and a body must arrive within the request
/// deadline; a head limit (431) and a body limit (413).
#[test]
fn admin_connections_are_capped_and_timed_out() {
    use shardcast::admin::{AdminConfig, AdminServer};
    let server =
        shardcast::app::contract::app(shardcast::app::Server::builder().bind("127.0.0.1:0".parse().unwrap()).threads(1).pin(false).io(support::test_io()))
            .start()
            .unwrap();
    let head_timeout = Duration::from_millis(300);
    let cfg = AdminConfig {
        max_connections: 2,
        head_timeout,
        timeout: Duration::from_secs(3),
        max_body: 64,
        ..AdminConfig::new("127.0.0.1:0".parse().unwrap(), Some("k".into()))
    };
    let admin = AdminServer::start(cfg, server.scraper(), Some(server.handle())).unwrap();
    let addr = admin.local_addr();

    // Both slots taken by publish requests whose bodies do not come (their heads are complete
    // and their key is right): a third is refused at once. (The reader takes a moment to see
    // their heads: until then the third one is served.)
    let slow_body = |s: &mut TcpStream| {
        s.write_all(b"POST /api/emit HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k\r\nContent-Length: 40\r\n\r\n{\"ev").unwrap();
    };
    let held_since = Instant::now();
    let mut held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    held.iter_mut().for_each(slow_body);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (status, _, body) = request(addr, "POST", "/api/emit", "Authorization: Bearer k\r\n", br#"{"event":"third"}"#);
        if status == 503 {
            assert_eq!(body, r#"{"error":"too many admin connections"}"#);
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "the two held requests never took the slots");
    }

    // Silent and trickling connections, more than there are slots (the repro's 16 idle ones).
    let opened = Instant::now();
    let silent: Vec<TcpStream> = (0..20).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut trickle = TcpStream::connect(addr).unwrap();
    trickle.write_all(b"GET /health HTTP/1.1\r\n").unwrap();
    // Meanwhile health and metrics answer.
    assert_eq!(get(addr, "/health"), (200, "ok\n".to_string()));
    let (status, head, _) = request(addr, "GET", "/metrics", "", b"");
    assert_eq!(status, 200, "{head}");
    // A wrong key is refused from the head: the answer comes without the body being sent.
    let mut no_body = TcpStream::connect(addr).unwrap();
    no_body.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    no_body.write_all(b"POST /api/emit HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer nope\r\nContent-Length: 60\r\n\r\n").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut no_body), &mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 401 "), "{line:?}");
    let (status, _, body) = request(addr, "POST", "/api/emit", "Authorization: Basic Zm9vOmJhcg==\r\n", br#"{"event":"pwned"}"#);
    assert_eq!((status, body.as_str()), (401, r#"{"error":"missing Authorization: Bearer <key>"}"#), "another scheme is no key");

    // The silent and trickling ones are closed at the head deadline, without an answer, long
    // before the request deadline (3 s).
    for _ in 0..3 {
        let _ = trickle.write_all(b"X-Slow: 1\r\n");
        std::thread::sleep(Duration::from_millis(50));
    }
    for mut s in silent.into_iter().chain([trickle]) {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(out.is_empty(), "an incomplete head got an answer: {:?}", String::from_utf8_lossy(&out));
    }
    let closed_after = opened.elapsed();
    assert!(closed_after >= head_timeout && closed_after < Duration::from_secs(2), "closed after {closed_after:?}");
    // The held ones are closed at the request deadline, without an answer.
    for mut s in held {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(out.is_empty(), "an incomplete body got an answer: {:?}", String::from_utf8_lossy(&out));
    }
    assert!(held_since.elapsed() >= Duration::from_secs(3));
    // (A slot is given back once its thread has seen the client go, just after the client has
    // read its answer: the next request may still find both taken for a moment.)
    let admitted = |method: &str, path: &str, headers: &str, body: &[u8]| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match try_request(addr, method, path, headers, body) {
                Ok(r) if !(r.0 == 503 && r.2.contains("too many admin connections")) => return r,
                // Refused while both slots were taken (the answer, or the reset that lost it).
                _ => {}
            }
            assert!(Instant::now() < deadline, "a slot was never given back");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let (status, _, _) = admitted("GET", "/health", &format!("X-Big: {}\r\n", "a".repeat(9000)), b"");
    assert_eq!(status, 431);
    let (status, _, body) = admitted("POST", "/api/emit", "Authorization: Bearer k\r\n", &[b' '; 65]);
    assert_eq!(status, 413, "{body}");
    let (status, _, body) = admitted("POST", "/api/emit", "Authorization: Bearer k\r\n", br#"{"event":"ok"}"#);
    assert_eq!((status, body.as_str()), (200, r#"{"emitted":1}"#));
    admin.stop();
    server.shutdown();
}

/// An empty API key would let any `Authorization` header through: it is refused at start, from
/// the flag, from the variable, and by the library.
#[test]
fn an_empty_api_key_is_refused_at_start() {
    let refused = |args: &[&str], env: &[(&str, &str)]| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
            .args(["--bind", "127.0.0.1:0", "--admin-bind", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?} {env:?}: the server started with an empty key");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert!(!status.success(), "{args:?} {env:?}: {status:?}");
        assert!(err.contains("--api-key") && err.contains("empty"), "{args:?} {env:?}: {err}");
    };
    refused(&["--api-key", ""], &[]);
    refused(&[], &[("SHARDCAST_API_KEY", "")]);

    use shardcast::admin::{AdminConfig, AdminServer};
    let server =
        shardcast::app::contract::app(shardcast::app::Server::builder().bind("127.0.0.1:0".parse().unwrap()).threads(1).pin(false).io(support::test_io()))
            .start()
            .unwrap();
    let err = AdminServer::start(AdminConfig::new("127.0.0.1:0".parse().unwrap(), Some(String::new())), server.scraper(), Some(server.handle()))
        .err()
        .expect("an empty key is refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("--api-key"), "{err}");
    server.shutdown();
}

/// With a cluster adapter that cannot take anything (no Redis on port 1), a publish says how
/// many events the other nodes will not get (207, not 200), this node's clients still get them,
/// and `/metrics` counts them in `shardcast_cluster_not_delivered_total`.
#[test]
fn api_emit_reports_what_the_cluster_adapter_did_not_take() {
    let server = start(&["--api-key", "k", "--redis", "redis://127.0.0.1:1/"]);
    let admin = admin_addr(&server);
    let mut a = Client::connect(server.addr, "/");
    let before = scrape(admin);
    assert_eq!(value(&before, "shardcast_cluster_connected"), 0);
    let not_delivered = value(&before, "shardcast_cluster_not_delivered_total");
    let (status, body) = post_emit(admin, "/api/emit/batch", "k", json!([{"event": "one"}, {"event": "two", "args": [2]}, {"event": "three"}]));
    assert_eq!(status, 207, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((v["emitted"].as_u64(), v["not_delivered_to_cluster"].as_u64()), (Some(3), Some(3)), "{body}");
    assert!(v["error"].as_str().unwrap().contains("3 of the 3 events were not taken by the cluster adapter"), "{body}");
    for want in [r#"42["one"]"#, r#"42["two",2]"#, r#"42["three"]"#] {
        assert_eq!(a.recv(), want);
    }
    let after = scrape(admin);
    assert_eq!(value(&after, "shardcast_cluster_not_delivered_total") - not_delivered, 3);
    assert_eq!(value(&after, "shardcast_cluster_published_total"), 0);
    assert_eq!(value(&after, "shardcast_cluster_received_total"), 0);
    assert_eq!(value(&after, "shardcast_cluster_inbound_dropped_total"), 0);
    assert_eq!(value(&after, "shardcast_cluster_connected"), 0);
    let (status, body) = post_emit(admin, "/api/emit", "k", json!({"event": "four"}));
    assert_eq!((status, body.contains(r#""not_delivered_to_cluster":1"#)), (207, true), "{body}");
}

/// A single node's scrape has no cluster counters.
#[test]
fn a_single_node_has_no_cluster_metrics() {
    let server = start(&[]);
    let m = scrape(admin_addr(&server));
    assert!(!m.keys().any(|k| k.starts_with("shardcast_cluster_")), "{m:#?}");
}

/// The limits on what clients send show up where an operator looks: a socket over
/// `--max-event-rate` is cut (`shardcast_socket_cuts_total{reason="event_rate"}`), and a second
/// connection from an address at `--max-connections-per-address` is refused with 429
/// (`shardcast_refused_total{reason="address_connections"}`).
#[test]
fn limit_cuts_and_refusals_are_counted() {
    let server = start(&["--max-event-rate", "5", "--max-connections-per-address", "1"]);
    let admin = admin_addr(&server);
    let mut c = Client::connect(server.addr, "/");
    // A second connection while the first is open: refused before any request is read.
    let refused = std::net::TcpStream::connect(server.addr).unwrap();
    refused.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let mut refused = std::io::BufReader::new(refused);
    let mut status = String::new();
    std::io::BufRead::read_line(&mut refused, &mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 429"), "{status:?}");
    for k in 0..20 {
        c.send(&format!(r#"42["message",{k}]"#));
    }
    // The first events are echoed, then the socket is disconnected (DISCONNECT `41`).
    loop {
        let m = c.recv();
        if m == "41" {
            break;
        }
        assert!(m.starts_with(r#"42["message-back","#), "{m}");
    }
    let m = scrape(admin);
    assert_eq!(value(&m, r#"shardcast_socket_cuts_total{reason="event_rate"}"#), 1);
    assert_eq!(value(&m, r#"shardcast_socket_cuts_total{reason="byte_rate"}"#), 0);
    assert_eq!(value(&m, r#"shardcast_refused_total{reason="address_connections"}"#), 1);
    assert_eq!(value(&m, r#"shardcast_refused_total{reason="address_rate"}"#), 0);
}
