//! Clusters over a real Redis (issue 12): a `redis-server` on a free loopback port (no
//! persistence), two shardcast nodes with `--redis` on their own ports, and a third node of
//! another implementation (Node's socket.io 4.8 with `@socket.io/redis-adapter`, or
//! python-socketio with its `RedisManager`). `tests/interop/js/cluster-check.js` puts official
//! socket.io-client sockets on every node in one room and checks that a broadcast from any
//! node, and an emitter's message, reaches every member on every node exactly once; then
//! redis-server is killed (every node keeps serving its own clients, none crashes) and
//! restarted (broadcasts cross nodes again).
//!
//! `redis-server`, Node's packages and the Python virtualenv are installed by `scripts/test`;
//! a missing one fails these tests, it never skips them.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long a node may take to (re)connect and (re)subscribe.
const READY: Duration = Duration::from_secs(20);

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// A child process whose stdout and stderr lines are read into a channel.
struct Proc {
    name: String,
    child: Child,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, lines) = channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for (stream, tx) in [(Box::new(out) as Box<dyn std::io::Read + Send>, tx.clone()), (Box::new(err), tx)] {
            let tag = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    eprintln!("[{tag}] {line}");
                    let _ = tx.send(line);
                }
            });
        }
        Proc { name: name.to_string(), child, lines }
    }

    /// Waits for a line containing `needle`; fails the test at the deadline.
    fn wait_for(&self, needle: &str) -> String {
        let end = Instant::now() + READY;
        loop {
            match self.lines.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!("{}: no line with {needle:?} within {READY:?}", self.name),
                Err(RecvTimeoutError::Disconnected) => panic!("{}: exited before printing {needle:?}", self.name),
            }
        }
    }

    /// Waits for a line containing each of `needles`, in any order (stdout and stderr are read
    /// apart, so lines of the two may arrive in either order); returns them in `needles`' order.
    fn wait_for_all(&self, needles: &[&str]) -> Vec<String> {
        let end = Instant::now() + READY;
        let mut found: Vec<Option<String>> = vec![None; needles.len()];
        while found.iter().any(Option::is_none) {
            match self.lines.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(l) => {
                    if let Some(i) = needles.iter().enumerate().position(|(i, n)| found[i].is_none() && l.contains(n)) {
                        found[i] = Some(l);
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!("{}: not every one of {needles:?} within {READY:?}", self.name),
                Err(RecvTimeoutError::Disconnected) => panic!("{}: exited before printing {needles:?}", self.name),
            }
        }
        found.into_iter().flatten().collect()
    }

    /// The address in its "listening on" line.
    fn listening(&self) -> SocketAddr {
        address(&self.wait_for("listening on"))
    }

    fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "{} exited", self.name);
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn address(line: &str) -> SocketAddr {
    line.split_whitespace().find_map(|w| w.parse().ok()).unwrap_or_else(|| panic!("no address in {line:?}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn redis_server(port: u16) -> Proc {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    let p = Proc::spawn("redis", &mut cmd);
    p.wait_for("Ready to accept connections");
    p
}

/// `PUBSUB NUMSUB channel`: how many connections subscribe to `channel`.
fn numsub(port: u16, channel: &str) -> i64 {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}/")) else { return -1 };
    let Ok(mut con) = client.get_connection() else { return -1 };
    let r: redis::RedisResult<(String, i64)> = redis::cmd("PUBSUB").arg("NUMSUB").arg(channel).query(&mut con);
    r.map_or(-1, |(_, n)| n)
}

/// Waits until `PUBSUB NUMSUB channel` is `want` (every node of that kind has subscribed).
fn wait_subscribed(port: u16, channel: &str, want: i64) {
    let end = Instant::now() + READY;
    loop {
        let n = numsub(port, channel);
        if n == want {
            return;
        }
        assert!(Instant::now() < end, "{channel} has {n} subscribers after {READY:?}, want {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the in-process node's adapter is connected and subscribed.
fn wait_connected(h: &shardcast::app::ServerHandle) {
    let end = Instant::now() + READY;
    while !h.cluster_stats().expect("a cluster node").connected {
        assert!(Instant::now() < end, "the adapter did not connect within {READY:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn shardcast(name: &str, redis_url: &str, format: &str) -> (Proc, SocketAddr) {
    shardcast_with(name, redis_url, format, &[])
}

/// A shardcast node with `extra` flags (`--redis-relay`, `--redis-sharded`, `--admin-ui-auth`).
fn shardcast_with(name: &str, redis_url: &str, format: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
    cmd.args(extra);
    // Heartbeats long enough that a client process stalled by a loaded CI machine is not
    // dropped in the middle of a check (the contract's 300/200 ms are for the contract suites).
    cmd.args(["--bind", "127.0.0.1:0", "--threads", "2", "--ping-interval", "2000", "--ping-timeout", "5000", "--redis", redis_url, "--redis-format", format]);
    // The backend scripts/test runs this pass on (`--io uring`, then `--io epoll`).
    cmd.args(support::io_args(&[]));
    if let Ok(filter) = std::env::var("CLUSTER_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    let p = Proc::spawn(name, &mut cmd);
    let lines = p.wait_for_all(&["listening on", "cluster adapter connected to Redis"]);
    (p, address(&lines[0]))
}

/// Node's socket.io 4.8 with `@socket.io/redis-adapter` (`createShardedAdapter` when
/// `sharded`) on `redis_url`, with the heartbeats of [`shardcast_with`].
fn node_reference(js: &Path, redis_url: &str, sharded: bool) -> (Proc, SocketAddr) {
    let mut cmd = Command::new("node");
    cmd.current_dir(js).arg("reference-server.js").env("REDIS_URL", redis_url).env("PING_INTERVAL", "2000").env("PING_TIMEOUT", "5000");
    if sharded {
        cmd.env("REDIS_SHARDED", "1");
    }
    let p = Proc::spawn(if sharded { "node-socket.io-sharded" } else { "node-socket.io" }, &mut cmd);
    let addr = p.listening();
    (p, addr)
}

/// Runs `cluster-check.js` against `nodes`.
fn check(nodes: &str, phase: &str, redis_url: &str, emitter: &str) {
    check_with(nodes, phase, redis_url, emitter, &[]);
}

/// Runs `cluster-check.js` against `nodes`, with more environment (`ROOM_SUBSCRIBERS`).
fn check_with(nodes: &str, phase: &str, redis_url: &str, emitter: &str, env: &[(&str, &str)]) {
    let js = interop_dir().join("js");
    assert!(js.join("node_modules/@socket.io/redis-emitter").exists(), "the JS interop packages are not installed: run `scripts/test`");
    let python = interop_dir().join("python/.venv/bin/python");
    let out = Command::new("node")
        .current_dir(&js)
        .arg("cluster-check.js")
        .env("NODES", nodes)
        .env("PHASE", phase)
        .env("REDIS_URL", redis_url)
        .env("EMITTER", emitter)
        .env("PYTHON", &python)
        .envs(env.iter().copied())
        .output()
        .expect("run node cluster-check.js");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success(), "cluster check {phase} failed:\n{text}");
}

/// Kills redis-server, checks every node still serves its own clients, restarts it on the
/// same port, waits for every node to resubscribe (`resubscribed`), and checks the cluster.
fn outage_and_recovery(redis: &mut Proc, port: u16, nodes: &str, emitter: &str, shardcast: &[&Proc], resubscribed: impl Fn()) -> Proc {
    outage_and_recovery_with(redis, port, nodes, emitter, &[], shardcast, resubscribed)
}

/// [`outage_and_recovery`] with more environment for the checks once Redis is back.
fn outage_and_recovery_with(
    redis: &mut Proc,
    port: u16,
    nodes: &str,
    emitter: &str,
    env: &[(&str, &str)],
    shardcast: &[&Proc],
    resubscribed: impl Fn(),
) -> Proc {
    let url = format!("redis://127.0.0.1:{port}/");
    redis.kill();
    for n in shardcast {
        n.wait_for("Redis is unreachable");
    }
    check(nodes, "local", &url, emitter);
    let fresh = redis_server(port);
    for n in shardcast {
        n.wait_for("Redis is reachable again");
    }
    resubscribed();
    check_with(nodes, "all", &url, emitter, env);
    fresh
}

#[test]
fn node_format_cluster_with_node_socket_io_and_the_redis_emitter() {
    let js = interop_dir().join("js");
    assert!(js.join("node_modules/@socket.io/redis-adapter").exists(), "the JS interop packages are not installed: run `scripts/test`");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let mut redis = redis_server(port);
    let (mut a, a_addr) = shardcast("shardcast-a", &url, "node");
    let (mut b, b_addr) = shardcast("shardcast-b", &url, "node");
    let (mut c, c_addr) = node_reference(&js, &url, false);
    // Every node subscribes to the request channel of `/` (the Node adapter counts them so).
    wait_subscribed(port, "socket.io-request#/#", 3);
    let nodes = format!("http://{a_addr},http://{b_addr},http://{c_addr}");
    check(&nodes, "all", &url, "node");
    let _redis = outage_and_recovery(&mut redis, port, &nodes, "node", &[&a, &b], || {
        c.wait_for("redis ready");
        wait_subscribed(port, "socket.io-request#/#", 3);
    });
    for p in [&mut a, &mut b, &mut c] {
        p.assert_alive();
    }
}

#[test]
fn python_format_cluster_with_python_socketio_and_its_write_only_emitter() {
    let py = interop_dir().join("python");
    let python = py.join(".venv/bin/python");
    assert!(python.exists(), "the python-socketio virtualenv is not installed: run `scripts/test`");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let mut redis = redis_server(port);
    let (mut a, a_addr) = shardcast("shardcast-a", &url, "python");
    let (mut b, b_addr) = shardcast("shardcast-b", &url, "python");
    let mut node = Command::new(&python);
    node.current_dir(&py).arg("cluster_node.py").env("REDIS_URL", &url);
    let mut c = Proc::spawn("python-socketio", &mut node);
    let c_addr = c.listening();
    wait_subscribed(port, "socketio", 3);
    let nodes = format!("http://{a_addr},http://{b_addr},http://{c_addr}|polling");
    check(&nodes, "all", &url, "python");
    let _redis = outage_and_recovery(&mut redis, port, &nodes, "python", &[&a, &b], || wait_subscribed(port, "socketio", 3));
    for p in [&mut a, &mut b, &mut c] {
        p.assert_alive();
    }
}

/// Bridge mode (issue 12's "a bridge mode that speaks both"): two shardcast nodes in
/// `--redis-format bridge` (one with `--redis-relay`), a Node socket.io 4.8 node with
/// `@socket.io/redis-adapter` and a python-socketio node with its `RedisManager`, on one Redis.
/// Clients of every node join one room; a to-room broadcast and a skip-sender broadcast from
/// each node, an `@socket.io/redis-emitter` emit and a python write-only emitter emit reach
/// every member exactly once (checked behind a fence, `cluster-check.js`): the Node node's and
/// the Node emitter's reach the Python clients through the relay, the Python node's and the
/// Python emitter's reach the Node clients through it, and no bridge node delivers a relayed
/// copy or its own other-format copy. Then Redis is killed and restarted mid-test.
#[test]
fn bridge_mode_joins_node_python_and_shardcast_nodes_in_one_cluster() {
    let js = interop_dir().join("js");
    assert!(js.join("node_modules/@socket.io/redis-adapter").exists(), "the JS interop packages are not installed: run `scripts/test`");
    let py = interop_dir().join("python");
    let python = py.join(".venv/bin/python");
    assert!(python.exists(), "the python-socketio virtualenv is not installed: run `scripts/test`");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let mut redis = redis_server(port);
    let (mut a, a_addr) = shardcast_with("shardcast-relay", &url, "bridge", &["--redis-relay"]);
    let (mut b, b_addr) = shardcast("shardcast-bridge", &url, "bridge");
    let (mut c, c_addr) = node_reference(&js, &url, false);
    let mut pynode = Command::new(&python);
    pynode.current_dir(&py).arg("cluster_node.py").env("REDIS_URL", &url);
    let mut d = Proc::spawn("python-socketio", &mut pynode);
    let d_addr = d.listening();
    // Both bridge nodes and the Node node on the Node request channel; both bridge nodes and
    // the Python node on python-socketio's channel.
    wait_subscribed(port, "socket.io-request#/#", 3);
    wait_subscribed(port, "socketio", 3);
    let nodes = format!("http://{a_addr},http://{b_addr},http://{c_addr},http://{d_addr}|polling");
    check(&nodes, "all", &url, "node+python");
    // Redis killed and restarted: the bridge nodes resubscribe to both formats' channels and
    // the relay carries broadcasts between the sides again.
    let _redis = outage_and_recovery(&mut redis, port, &nodes, "node+python", &[&a, &b], || {
        c.wait_for("redis ready");
        wait_subscribed(port, "socket.io-request#/#", 3);
        wait_subscribed(port, "socketio", 3);
    });
    for p in [&mut a, &mut b, &mut c, &mut d] {
        p.assert_alive();
    }
}

/// Redis 7 sharded pub/sub (issue 12's optional part): two shardcast nodes with
/// `--redis-sharded` and a Node socket.io 4.8 node with `createShardedAdapter` (subscription
/// mode "dynamic": a room's broadcasts go on the room's own channel, which each node
/// subscribes to while it has members in the room). Clients of every node join one room; a
/// to-room broadcast (room channel) and a skip-sender broadcast (namespace channel) from each
/// node reach every member exactly once; Redis is killed and restarted, and broadcasts cross
/// nodes again. `@socket.io/redis-emitter` 5.1 has no sharded mode (it always `PUBLISH`es),
/// so no emitter takes part.
#[test]
fn sharded_cluster_with_node_socket_io_sharded_adapter() {
    let js = interop_dir().join("js");
    assert!(js.join("node_modules/@socket.io/redis-adapter").exists(), "the JS interop packages are not installed: run `scripts/test`");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let mut redis = redis_server(port);
    let (mut a, a_addr) = shardcast_with("shardcast-a", &url, "node", &["--redis-sharded"]);
    let (mut b, b_addr) = shardcast_with("shardcast-b", &url, "node", &["--redis-sharded"]);
    let (mut c, c_addr) = node_reference(&js, &url, true);
    wait_shard_subscribed(port, "socket.io#/#", 3);
    let nodes = format!("http://{a_addr},http://{b_addr},http://{c_addr}");
    let env = [("ROOM_SUBSCRIBERS", "3")];
    check_with(&nodes, "all", &url, "none", &env);
    // Redis killed and restarted: every node resubscribes (shardcast to its rooms as well).
    let _redis = outage_and_recovery_with(&mut redis, port, &nodes, "none", &env, &[&a, &b], || {
        c.wait_for("redis ready");
        wait_shard_subscribed(port, "socket.io#/#", 3);
    });
    for p in [&mut a, &mut b, &mut c] {
        p.assert_alive();
    }
}

/// Sharded pub/sub under room churn: sockets on node A join and leave fresh rooms as fast as
/// A acks (`room-churn.js`) while a socket on node B sends 1,000 messages to a room A's
/// listener is in. Every one of them arrives exactly once (behind a fence), and afterwards
/// `PUBSUB SHARDCHANNELS` holds exactly the rooms still in use (none once everyone left): A's
/// subscriptions follow its rooms by reconciliation, so neither churn nor a full queue can
/// lose or leak one.
#[test]
fn sharded_room_subscriptions_follow_the_rooms_in_use_under_churn() {
    let js = interop_dir().join("js");
    assert!(js.join("node_modules/redis").exists(), "the JS interop packages are not installed: run `scripts/test`");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let _redis = redis_server(port);
    let (mut a, a_addr) = shardcast_with("shardcast-a", &url, "node", &["--redis-sharded"]);
    let (mut b, b_addr) = shardcast_with("shardcast-b", &url, "node", &["--redis-sharded"]);
    let out = Command::new("node")
        .current_dir(&js)
        .arg("room-churn.js")
        .env("A", format!("http://{a_addr}"))
        .env("B", format!("http://{b_addr}"))
        .env("REDIS_URL", &url)
        .output()
        .expect("run node room-churn.js");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{text}");
    assert!(out.status.success() && text.contains("room churn check ok"), "room churn check failed:\n{text}");
    for p in [&mut a, &mut b] {
        p.assert_alive();
    }
}

/// Redis cutting a node's subscriber connection (as its `client-output-buffer-limit pubsub`
/// does to a slow reader; here `CLIENT KILL TYPE pubsub`) is an outage: counted, logged, and
/// followed by reconnecting and resubscribing. Classic and sharded alike.
#[test]
fn a_subscription_cut_by_redis_is_an_outage_and_the_node_resubscribes() {
    use shardcast::app::adapter::RedisConfig;
    use shardcast::app::{contract, Server};

    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let _redis = redis_server(port);
    for sharded in [false, true] {
        let a = contract::app(Server::builder())
            .bind("127.0.0.1:0".parse().unwrap())
            .threads(2)
            .pin(false)
            .io(support::test_io())
            .redis(RedisConfig { sharded, ..RedisConfig::new(&url) })
            .start()
            .expect("start the in-process shardcast node");
        let h = a.handle();
        wait_connected(&h);
        let resubscribed = || {
            if sharded {
                wait_shard_subscribed(port, "socket.io#/#", 1);
            } else {
                wait_subscribed(port, "socket.io-request#/#", 1);
            }
        };
        resubscribed();
        assert_eq!(h.cluster_stats().unwrap().outages, 0);
        let mut con = redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
        let killed: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query(&mut con).unwrap();
        assert_eq!(killed, 1, "the node's one subscriber connection");
        let end = Instant::now() + READY;
        while h.cluster_stats().unwrap().outages != 1 {
            assert!(Instant::now() < end, "the cut was not counted as an outage within {READY:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
        wait_connected(&h);
        resubscribed();
        assert_eq!(h.cluster_stats().unwrap().outages, 1);
        drop(a);
        if sharded {
            wait_shard_subscribed(port, "socket.io#/#", 0);
        } else {
            wait_subscribed(port, "socket.io-request#/#", 0);
        }
    }
}

/// Waits until `PUBSUB SHARDNUMSUB channel` is `want`.
fn wait_shard_subscribed(port: u16, channel: &str, want: i64) {
    let end = Instant::now() + READY;
    loop {
        let n = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .and_then(|c| c.get_connection())
            .and_then(|mut con| redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel).query::<(String, i64)>(&mut con))
            .map_or(-1, |(_, n)| n);
        if n == want {
            return;
        }
        assert!(Instant::now() < end, "{channel} has {n} shard subscribers after {READY:?}, want {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Cluster-wide questions and operations (issue 12): a shardcast server in this process (its
/// `ServerHandle` asks), a shardcast binary, and a Node socket.io node (`cluster-ops.js`),
/// two clients each in one room. Both sides' `fetchSockets` / `count` / `rooms` and acked
/// broadcasts see every node's sockets; emits, `sockets_join` and `disconnect_sockets` from
/// shardcast's `ServerHandle` act on every node.
#[test]
fn cluster_wide_fetch_count_rooms_join_and_disconnect_with_node_socket_io() {
    cluster_wide_operations(shardcast::app::adapter::RedisFormat::Node, false);
}

/// The same questions and operations asked by a bridge node (`RedisFormat::Bridge`): they keep
/// working with the Node nodes.
#[test]
fn cluster_wide_operations_from_a_bridge_node_with_node_socket_io() {
    cluster_wide_operations(shardcast::app::adapter::RedisFormat::Bridge, false);
}

/// The same over sharded pub/sub, every node on the sharded adapter's messages (FETCH_SOCKETS
/// for fetch, count and rooms; BROADCAST with a request id; SOCKETS_JOIN; DISCONNECT_SOCKETS).
#[test]
fn cluster_wide_operations_over_sharded_pub_sub_with_node_socket_io() {
    cluster_wide_operations(shardcast::app::adapter::RedisFormat::Node, true);
}

fn cluster_wide_operations(format: shardcast::app::adapter::RedisFormat, sharded: bool) {
    use shardcast::app::adapter::RedisConfig;
    use shardcast::app::{contract, Server};
    use std::io::Write;

    let js = interop_dir().join("js");
    assert!(js.join("node_modules/@socket.io/redis-adapter").exists(), "the JS interop packages are not installed: run `scripts/test`");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let _redis = redis_server(port);
    let extra: &[&str] = if sharded { &["--redis-sharded"] } else { &[] };
    let (_b, b_addr) = shardcast_with("shardcast-b", &url, "node", extra);
    // The contract, plus "ask-room": an acked broadcast from a handler to the room, whose
    // answers (every node's recipients') go back to the asker as "acks".
    let ns = contract::namespace().on("ask-room", |s, ev| {
        let room = ev.args[0].as_str().unwrap_or_default().to_string();
        s.within_namespace().to(&room).emit_with_ack("ack-me", &[serde_json::json!(8)], Duration::from_secs(5), |s, r| {
            let answers = r.unwrap_or_else(|p| p.responses);
            let firsts: Vec<serde_json::Value> = answers.into_iter().map(|(args, _)| args.into_iter().next().unwrap_or_default()).collect();
            s.emit("acks", &[serde_json::Value::Array(firsts)]);
        });
    });
    let a = contract::app(Server::builder())
        .namespace("/", ns)
        .bind("127.0.0.1:0".parse().unwrap())
        .threads(2)
        .pin(false)
        .io(support::test_io())
        .redis(RedisConfig { format, sharded, ..RedisConfig::new(&url) })
        .start()
        .expect("start the in-process shardcast node");
    let h = a.handle();
    wait_connected(&h);
    if sharded {
        wait_shard_subscribed(port, "socket.io#/#", 2);
    } else {
        wait_subscribed(port, "socket.io-request#/#", 2);
    }
    let mut cmd = Command::new("node");
    cmd.current_dir(&js).arg("cluster-ops.js").env("NODES", format!("http://{},http://{b_addr}", a.local_addr())).env("REDIS_URL", &url).stdin(Stdio::piped());
    if sharded {
        cmd.env("REDIS_SHARDED", "1");
    }
    let mut ops = Proc::spawn("cluster-ops", &mut cmd);
    let line = ops.wait_for("\"room\"");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let room = v["room"].as_str().unwrap().to_string();
    let mut want: Vec<String> = v["ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect();
    want.sort();
    assert_eq!(want.len(), 6);

    let wait = Duration::from_secs(10);
    let mut got: Vec<String> = h.of("/").to(&room).fetch_sockets().wait_timeout(wait).unwrap().into_iter().map(|s| s.id).collect();
    got.sort();
    assert_eq!(got, want, "fetch_sockets sees every node's sockets");
    let remote = h.of("/").to(&room).fetch_sockets().wait_timeout(wait).unwrap().into_iter().filter(|s| s.node.is_some()).count();
    assert_eq!(remote, 4, "four of them are on other nodes");
    assert_eq!(h.of("/").to(&room).count().wait_timeout(wait).unwrap(), 6);
    assert!(h.of("/").rooms().wait_timeout(wait).unwrap().contains(&room));
    // An acked broadcast from this node: every recipient on every node answers (the other nodes
    // answer the BROADCAST request with their recipient count and each ack).
    let answers = h.of("/").to(&room).emit_with_ack("ack-me", &[serde_json::json!(9)], Duration::from_secs(5)).wait_timeout(wait).unwrap();
    let answers = answers.expect("every recipient answered in time");
    let mut acked: Vec<String> = answers.iter().map(|(args, _)| args[0]["id"].as_str().unwrap().to_string()).collect();
    acked.sort();
    assert_eq!(acked, want);
    assert!(answers.iter().all(|(args, _)| args[0]["x"] == 9));
    ops.wait_for("node_checks");

    if sharded {
        // A one-room broadcast goes on the room's channel: every node (this one, the binary,
        // Node's) subscribes to it once the room exists there, one round trip or so later.
        wait_shard_subscribed(port, &format!("socket.io#/#{room}#"), 3);
    }
    h.of("/").to(&room).emit("handle-news", &[serde_json::json!({"n": 1})]).unwrap();
    h.of("/").to(&room).sockets_join(&["joined"]).unwrap();
    let end = Instant::now() + READY;
    while h.of("/").to("joined").count().wait_timeout(wait).unwrap() != 6 {
        assert!(Instant::now() < end, "sockets_join did not reach every node");
        std::thread::sleep(Duration::from_millis(20));
    }
    h.of("/").to("joined").disconnect_sockets(false).unwrap();
    ops.child.stdin.as_mut().unwrap().write_all(b"disconnect\n").unwrap();
    ops.wait_for("disconnects");
    assert_eq!(h.of("/").to(&room).count().wait_timeout(wait).unwrap(), 0);
    ops.child.stdin.as_mut().unwrap().write_all(b"bye\n").unwrap();
    let stats = h.cluster_stats().unwrap();
    assert!(stats.published > 0 && stats.received > 0, "{stats:?}");
    a.shutdown();
}

/// `server_side_emit` between shardcast and Node socket.io (the adapter's SERVER_SIDE_EMIT):
/// each side's handler runs for the other's events, and with acks each gets the other's answer.
#[test]
fn server_side_events_between_shardcast_and_node_socket_io() {
    server_side_events(false);
}

/// The same over sharded pub/sub (the sharded adapter's SERVER_SIDE_EMIT and its answers on
/// the asker's own channel).
#[test]
fn server_side_events_over_sharded_pub_sub_with_node_socket_io() {
    server_side_events(true);
}

fn server_side_events(sharded: bool) {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use shardcast::app::adapter::RedisConfig;
    use shardcast::app::{contract, Server};

    let js = interop_dir().join("js");
    assert!(js.join("node_modules/@socket.io/redis-adapter").exists(), "the JS interop packages are not installed: run `scripts/test`");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let _redis = redis_server(port);
    let notes: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let n2 = notes.clone();
    let ns = contract::namespace().on_server_side("sse-ping", |args| Some(serde_json::json!({"from": "shardcast", "got": args}))).on_server_side(
        "sse-note",
        move |args| {
            n2.lock().unwrap().push(serde_json::Value::Array(args.to_vec()));
            None
        },
    );
    let a = Server::builder()
        .namespace("/", ns)
        .bind("127.0.0.1:0".parse().unwrap())
        .threads(1)
        .pin(false)
        .io(support::test_io())
        .redis(RedisConfig { sharded, ..RedisConfig::new(&url) })
        .start()
        .unwrap();
    let h = a.handle();
    wait_connected(&h);
    let mut cmd = Command::new("node");
    cmd.current_dir(&js).arg("cluster-sse.js").env("REDIS_URL", &url).stdin(Stdio::piped());
    if sharded {
        cmd.env("REDIS_SHARDED", "1");
    }
    let mut sse = Proc::spawn("cluster-sse", &mut cmd);
    sse.wait_for("ready");
    if sharded {
        wait_shard_subscribed(port, "socket.io#/#", 2);
    } else {
        wait_subscribed(port, "socket.io-request#/#", 2);
    }
    let answers = h.of("/").server_side_emit_with_ack("sse-ping", &[serde_json::json!(3)]).wait_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(answers, vec![serde_json::json!({"from": "node", "x": 3})]);
    sse.child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let line = sse.wait_for("answers");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["answers"], serde_json::json!([{"from": "shardcast", "got": [5]}]));
    // The note was published before the ping, on the same connection: it was handled first.
    assert_eq!(*notes.lock().unwrap(), vec![serde_json::json!([1])]);
    a.shutdown();
}

/// `ServerHandle` requests in python-socketio's format: a shardcast node (in this process, with
/// `RedisFormat::Python`) makes a socket of a python-socketio node join a room, emits to that
/// room and disconnects the socket, by its sid.
#[test]
fn python_format_handle_requests_reach_python_socketio() {
    use std::io::Write;

    use shardcast::app::adapter::{RedisConfig, RedisFormat};
    use shardcast::app::{contract, Server};

    let py = interop_dir().join("python");
    let python = py.join(".venv/bin/python");
    assert!(python.exists(), "the python-socketio virtualenv is not installed: run `scripts/test`");
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let _redis = redis_server(port);
    let a = contract::app(Server::builder())
        .bind("127.0.0.1:0".parse().unwrap())
        .threads(1)
        .pin(false)
        .redis(RedisConfig { format: RedisFormat::Python, ..RedisConfig::new(&url) })
        .start()
        .unwrap();
    let h = a.handle();
    wait_connected(&h);
    let mut node = Command::new(&python);
    node.current_dir(&py).arg("cluster_node.py").env("REDIS_URL", &url);
    let c = Proc::spawn("python-socketio", &mut node);
    let c_addr = c.listening();
    wait_subscribed(port, "socketio", 2);
    let mut cmd = Command::new("node");
    cmd.current_dir(interop_dir().join("js")).arg("cluster-py-ops.js").env("URL", format!("http://{c_addr}")).stdin(Stdio::piped());
    let mut js = Proc::spawn("cluster-py-ops", &mut cmd);
    let v: serde_json::Value = serde_json::from_str(&js.wait_for("\"sid\"")).unwrap();
    let sid = v["sid"].as_str().unwrap();
    // One publishing connection, handled in order by the python node's listener.
    h.of("/").socket(sid).sockets_join(&["x"]).unwrap();
    h.of("/").to("x").emit("news-x", &[serde_json::json!({"n": 2})]).unwrap();
    h.of("/").socket(sid).disconnect_sockets(false).unwrap();
    js.child.stdin.as_mut().unwrap().write_all(b"check\n").unwrap();
    js.wait_for("py_ops");
    a.shutdown();
}

/// Another node's acked broadcasts hold this node's answers open until their acks come or
/// their timeout passes: at most `max_answers` are in progress, the rest are dropped and counted, and
/// a timeout longer than this node's request timeout is cut to it (so the places come back).
#[test]
fn acked_broadcasts_from_another_node_are_bounded_and_their_timeouts_clamped() {
    use shardcast::app::adapter::{node, RedisConfig};
    use shardcast::app::{contract, Server};

    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let _redis = redis_server(port);
    let server = contract::app(Server::builder())
        .bind("127.0.0.1:0".parse().unwrap())
        .threads(1)
        .pin(false)
        .io(support::test_io())
        .redis(RedisConfig { max_answers: 4, request_timeout: Duration::from_secs(1), ..RedisConfig::new(&url) })
        .start()
        .expect("start the node");
    let h = server.handle();
    wait_connected(&h);
    // A member of room r that never answers an ack.
    let mut ws = support::Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", "");
    assert!(ws.recv_text().starts_with("0{"));
    ws.send_text("40");
    assert!(ws.recv_eio().starts_with("40{"));
    let _auth = ws.recv_eio();
    ws.send_text(r#"421["join","r"]"#);
    assert_eq!(ws.recv_eio(), "431[true]");

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut answers = client.get_connection().unwrap();
    answers.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answers = answers.as_pubsub();
    answers.subscribe(node::response_channel("socket.io", "/")).unwrap();
    let mut publisher = client.get_connection().unwrap();
    // Ten acked broadcasts from a node "other", each asking 60 s for its acks.
    let publish = |con: &mut redis::Connection, i: usize| {
        let msg = rmpv::Value::Map(vec![
            ("uid".into(), "other".into()),
            ("requestId".into(), format!("q{i}").into()),
            ("type".into(), 7.into()),
            (
                "packet".into(),
                rmpv::Value::Map(vec![
                    ("type".into(), 2.into()),
                    ("data".into(), rmpv::Value::Array(vec!["ask".into(), (i as u64).into()])),
                    ("nsp".into(), "/".into()),
                ]),
            ),
            (
                "opts".into(),
                rmpv::Value::Map(vec![
                    ("rooms".into(), rmpv::Value::Array(vec!["r".into()])),
                    ("except".into(), rmpv::Value::Array(vec![])),
                    ("flags".into(), rmpv::Value::Map(vec![("timeout".into(), 60_000.into())])),
                ]),
            ),
        ]);
        let mut body = Vec::new();
        rmpv::encode::write_value(&mut body, &msg).unwrap();
        let _: i64 = redis::cmd("PUBLISH").arg(node::request_channel("socket.io", "/")).arg(body).query(con).unwrap();
    };
    for i in 0..10 {
        publish(&mut publisher, i);
    }
    let end = Instant::now() + READY;
    while h.cluster_stats().unwrap().received < 10 {
        assert!(Instant::now() < end, "the node did not hear the ten requests");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(h.cluster_stats().unwrap().inbound_dropped, 6, "four in progress at once, six dropped");
    // The member got exactly the four (a fence: the next frame answers its own ack).
    let got: Vec<String> = (0..4).map(|_| ws.recv_eio()).collect();
    for (i, g) in got.iter().enumerate() {
        assert!(g.starts_with("42") && g.ends_with(&format!(r#"["ask",{i}]"#)), "{got:?}");
    }
    ws.send_text(r#"422["join","fence"]"#);
    assert_eq!(ws.recv_eio(), "432[true]");
    // Each answer is published after this node's 1 s, not the asked 60 s (the read times out
    // after 10 s): for q0..q3, the count of acks that follow (none: the member never answered).
    let mut counted = std::collections::BTreeSet::new();
    while counted.len() < 4 {
        let msg = answers.get_message().expect("an answer within 10 s: the timeout was clamped");
        let payload: Vec<u8> = msg.get_payload().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&payload).or_else(|_| node::decode_body(&payload).map(|(v, _)| v)).unwrap();
        if v["type"] == 8 {
            assert_eq!(v["clientCount"], 0, "{v}");
            counted.insert(v["requestId"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(counted.into_iter().collect::<Vec<_>>(), ["q0", "q1", "q2", "q3"]);
    // The places came back: one more is delivered.
    publish(&mut publisher, 10);
    assert!(ws.recv_eio().ends_with(r#"["ask",10]"#));
    server.shutdown();
}

/// The admin UI across a cluster, as Node's `instrument()` with `@socket.io/redis-adapter`: what
/// a node emits to the admin namespace goes through Redis, so an admin client on node A gets
/// both nodes' `server_stats` (each with its own `serverId`) and sees a socket connect to node
/// B; its `_disconnect` action reaches that socket on B.
#[test]
fn admin_ui_across_a_node_format_cluster() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let _redis = redis_server(port);
    let admin_flags = |id: &'static str| ["--admin-ui-auth", "none", "--admin-ui-mode", "development", "--admin-ui-server-id", id];
    let (_a, a_addr) = shardcast_with("shardcast-a", &url, "node", &admin_flags("node-a"));
    let (_b, b_addr) = shardcast_with("shardcast-b", &url, "node", &admin_flags("node-b"));
    wait_subscribed(port, "socket.io-request#/admin#", 2);
    let open = |addr: SocketAddr| {
        let mut ws = support::Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket", "");
        ws.set_timeout(Duration::from_secs(5));
        assert!(ws.recv_text().starts_with("0{"));
        ws
    };
    let mut admin = open(a_addr);
    admin.send_text("40/admin,");
    let parse = |m: &str| -> (String, Vec<serde_json::Value>) {
        let Some(at) = m.find('[') else { return (String::new(), Vec::new()) };
        let Ok(serde_json::Value::Array(mut all)) = serde_json::from_str(&m[at..]) else { return (String::new(), Vec::new()) };
        (all.remove(0).as_str().unwrap_or_default().to_string(), all)
    };
    // Both nodes' stats arrive (every 2 s each).
    let mut servers = std::collections::BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(10);
    while servers.len() < 2 {
        assert!(Instant::now() < end, "server_stats seen from {servers:?} only");
        let (name, args) = parse(&admin.recv_eio());
        if name == "server_stats" {
            servers.insert(args[0]["serverId"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(servers.into_iter().collect::<Vec<_>>(), ["node-a", "node-b"]);
    // A socket connects to node B: the admin on node A sees it.
    let mut client = open(b_addr);
    client.send_text("40");
    let connect = client.recv_eio();
    let id = connect.split("\"sid\":\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let until = |admin: &mut support::Ws, want: &str, id: &str| {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < end, "no {want} for {id}");
            let (name, args) = parse(&admin.recv_eio());
            let about =
                if name == "socket_connected" { args[0]["id"].as_str().map(str::to_string) } else { args.get(1).and_then(|v| v.as_str()).map(str::to_string) };
            if name == want && about.as_deref() == Some(id) {
                return args;
            }
        }
    };
    let connected = until(&mut admin, "socket_connected", &id);
    assert_eq!(connected[0]["nsp"], "/");
    // The admin's action, sent to node A, disconnects the socket on node B.
    admin.send_text(&format!(r#"42/admin,["_disconnect","/",false,"{id}"]"#));
    loop {
        let m = client.recv_eio();
        if m == "41" {
            break;
        }
        assert!(m.starts_with("42"), "unexpected {m}");
    }
    let gone = until(&mut admin, "socket_disconnected", &id);
    assert_eq!(gone[2], "server namespace disconnect");
}

/// The admin UI's development mode in a cluster does not crowd out the application: node A
/// (its admin UI in development mode, 200 sockets) relays every one of 1,000 broadcasts of one
/// client to node B's listener, with nobody watching anywhere (A then publishes no admin event
/// at all) and with an admin client watching on node B (A's admin events, one `event_sent` per
/// recipient, are refused by its adapter while the queue is half full). Before, every
/// recipient's `event_sent` went to Redis through the same bounded queue as the application's
/// broadcasts, even with nobody watching, and B got about a tenth of them.
#[test]
fn development_admin_ui_does_not_crowd_out_broadcasts_across_the_cluster() {
    for watched in [false, true] {
        admin_ui_beside_broadcasts(watched);
    }
}

fn admin_ui_beside_broadcasts(watched: bool) {
    const PASSIVE: usize = 200;
    const BROADCASTS: usize = 1000;
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let _redis = redis_server(port);
    // No budget worth the name on A: only the adapter's priority keeps its admin events (200
    // per broadcast) from crowding out the broadcasts.
    let (_a, a_addr) = shardcast_with(
        "shardcast-a",
        &url,
        "node",
        &["--admin-ui-auth", "none", "--admin-ui-mode", "development", "--admin-ui-events-per-second", "100000000"],
    );
    let b_flags: &[&str] = if watched { &["--admin-ui-auth", "none", "--admin-ui-mode", "development"] } else { &[] };
    let (_b, b_addr) = shardcast_with("shardcast-b", &url, "node", b_flags);
    wait_subscribed(port, "socket.io-request#/#", 2);
    let open = |addr: SocketAddr| {
        let mut ws = support::Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket", "");
        ws.set_timeout(Duration::from_secs(10));
        assert!(ws.recv_text().starts_with("0{"));
        ws.send_text("40");
        assert!(ws.recv_eio().starts_with("40{"));
        assert_eq!(ws.recv_eio(), r#"42["auth",{}]"#, "the contract's greeting");
        ws
    };
    let mut admin = None;
    if watched {
        let mut ws = support::Ws::connect(b_addr, "/socket.io/?EIO=4&transport=websocket", "");
        ws.set_timeout(Duration::from_secs(10));
        assert!(ws.recv_text().starts_with("0{"));
        ws.send_text("40/admin,");
        let end = Instant::now() + Duration::from_secs(10);
        while !ws.recv_eio().starts_with("40/admin,") {
            assert!(Instant::now() < end, "no CONNECT for the admin");
        }
        // The admin's heartbeat went to Redis before its CONNECT was sent; its `emit` action,
        // published after it, reaching a socket of node A means node A heard the heartbeat.
        let mut probe = open(a_addr);
        ws.send_text(r#"42/admin,["emit","/",null,"ready"]"#);
        loop {
            assert!(Instant::now() < end, "the admin's action never reached node A");
            if probe.recv_eio() == r#"42["ready"]"# {
                break;
            }
        }
        admin = Some((ws, probe));
    }
    let _passive: Vec<support::Ws> = (0..PASSIVE).map(|_| open(a_addr)).collect();
    let mut listener = open(b_addr);
    let mut sender = open(a_addr);
    for i in 0..BROADCASTS {
        sender.send_text(&format!(r#"42["broadcast",{i}]"#));
    }
    // (recv_eio answers the pings, which never stop: a deadline of its own.)
    let end = Instant::now() + Duration::from_secs(30);
    for i in 0..BROADCASTS {
        assert!(Instant::now() < end, "node B's listener got {i} of {BROADCASTS} broadcasts (watched: {watched})");
        assert_eq!(listener.recv_eio(), format!(r#"42["broadcast-back",{i}]"#), "node B's listener, broadcast {i} of {BROADCASTS} (watched: {watched})");
    }
    drop(admin);
}
