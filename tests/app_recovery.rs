//! Connection state recovery in the deterministic harness, two workers, the contract app: a
//! client cut on worker 0 comes back on worker 1 (the state is fetched across workers by mail)
//! with the same id and pid, its rooms, and the packets it missed before its CONNECT; past the
//! window, or once its offset was dropped to stay within the caps, it gets a fresh socket; the
//! worker's stats count it all. The clock is the harness's: no sleeps.

mod sim_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use shardcast::app::namespace::Namespaces;
use shardcast::app::recovery::Recovery;
use shardcast::app::worker::SioWorker;
use shardcast::app::{contract, RecoveryConfig, SocketLimits};
use shardcast::proto::sio::Limits;
use shardcast::rt::sim::ClientId;
use sim_support::*;

type S = EioSim<SioWorker>;

fn server(cfg: RecoveryConfig) -> S {
    let mut nss = Namespaces::default();
    nss.insert("/", contract::namespace());
    let nss = Arc::new(nss);
    let shared = Arc::new(Recovery::new(cfg));
    let ecfg = engine_cfg();
    let rt = worker_cfg(&ecfg);
    sim_with_handler(2, ecfg, rt, move || {
        SioWorker::with_socket_limits(nss.clone(), Limits::default(), SocketLimits::default()).with_recovery(Some(shared.clone()), 2)
    })
}

fn say(s: &mut S, c: ClientId, text: &str) {
    s.write(c, &client_text(text));
    s.run();
}

fn heard(s: &mut S, c: ClientId) -> Vec<String> {
    s.run();
    texts(&s.read(c))
}

/// A WebSocket client on worker `w` connected to "/" with `auth`: (client, sid, pid, offset of
/// the `auth` event).
fn connect(s: &mut S, w: usize, auth: &str) -> (ClientId, Vec<String>) {
    let (c, _, _) = ws_session(s, w);
    say(s, c, &format!("40{auth}"));
    (c, heard(s, c))
}

fn field<'a>(packet: &'a str, name: &str) -> &'a str {
    packet.split(&format!("\"{name}\":\"")).nth(1).unwrap_or_else(|| panic!("no {name} in {packet}")).split('"').next().unwrap()
}

/// The offset a packet carries as its last argument.
fn offset(packet: &str) -> String {
    let inner = packet.trim_end_matches(']');
    inner.rsplit(",\"").next().unwrap().trim_end_matches('"').to_string()
}

fn config(window_ms: u64, max_packets: usize) -> RecoveryConfig {
    RecoveryConfig { window: Duration::from_millis(window_ms), max_packets, max_bytes: 1 << 20, max_sockets: 1000 }
}

#[test]
fn a_client_cycling_connect_join_close_cannot_make_a_worker_keep_more_than_its_share() {
    // 4 sockets per server: 2 per worker. A hostile client connects, joins rooms and cuts its
    // connection 50 times within the window: the worker keeps its 2 newest, forgets the rest
    // (counted), and the newest still recovers.
    let mut s = server(RecoveryConfig { max_sockets: 4, ..config(60_000, 1000) });
    let mut last = None;
    for i in 0..50 {
        let (c, got) = connect(&mut s, 0, "");
        for r in 0..20 {
            say(&mut s, c, &format!(r#"42["join","cycle-{i}-room-{r}"]"#));
        }
        last = Some((field(&got[0], "sid").to_string(), field(&got[0], "pid").to_string(), offset(&got[1])));
        s.close(c);
        s.run();
    }
    let stats = s.shard(0).service.handler().stats().recovery;
    assert_eq!((stats.kept_sockets, stats.evicted_sockets), (2, 48), "{stats:?}");
    assert!(stats.kept_socket_bytes > 0 && stats.kept_socket_bytes < 4096, "{stats:?}");
    let (sid, pid, off) = last.unwrap();
    let (_, got) = connect(&mut s, 1, &format!(r#"{{"pid":"{pid}","offset":"{off}"}}"#));
    assert_eq!(field(&got[0], "sid"), sid, "the newest kept socket recovers: {got:?}");
}

#[test]
fn a_client_cut_on_one_worker_recovers_on_the_other_with_what_it_missed() {
    let mut s = server(config(10_000, 1000));
    let (a, got) = connect(&mut s, 0, "");
    assert_eq!(got.len(), 2, "{got:?}");
    let (sid, pid) = (field(&got[0], "sid").to_string(), field(&got[0], "pid").to_string());
    assert!(got[0].starts_with(&format!("40{{\"sid\":\"{sid}\",\"pid\":\"")), "{got:?}");
    assert!(got[1].starts_with(r#"42["auth",{},""#), "the auth emit carries an offset: {got:?}");
    say(&mut s, a, r#"421["join","r"]"#);
    assert_eq!(heard(&mut s, a), ["431[true]"]);
    let last = offset(&got[1]);

    let (b, _) = connect(&mut s, 1, "");
    s.close(a);
    s.run();
    say(&mut s, b, r#"42["to-room","r","m1"]"#);
    say(&mut s, b, r#"42["to-room","r",{"n":2}]"#);
    say(&mut s, b, r#"42["broadcast","all"]"#);

    let (c, got) = connect(&mut s, 1, &format!(r#"{{"pid":"{pid}","offset":"{last}"}}"#));
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got[0].starts_with(r#"42["room-message","m1",""#), "{got:?}");
    assert!(got[1].starts_with(r#"42["room-message",{"n":2},""#), "{got:?}");
    assert!(got[2].starts_with(r#"42["broadcast-back","all",""#), "{got:?}");
    assert_eq!(got[3], format!(r#"40{{"sid":"{sid}","pid":"{pid}"}}"#), "same id and pid, after the missed packets");
    assert!(got[4].starts_with(r#"42["auth",{"pid":""#), "{got:?}");
    // Still in room r, now on worker 1.
    say(&mut s, b, r#"42["to-room","r","after"]"#);
    assert!(heard(&mut s, c)[0].starts_with(r#"42["room-message","after",""#));
    let stats = s.shard(0).service.handler().stats().recovery;
    assert_eq!((stats.recovered, stats.kept_sockets), (1, 0), "{stats:?}");
}

#[test]
fn past_the_window_or_past_the_caps_the_client_gets_a_fresh_socket() {
    let mut s = server(config(1_000, 4)); // 2 packets per worker
    let (a, got) = connect(&mut s, 0, "");
    let (sid, pid, last) = (field(&got[0], "sid").to_string(), field(&got[0], "pid").to_string(), offset(&got[1]));
    say(&mut s, a, r#"42["join","r"]"#);
    s.close(a);
    s.run();
    s.advance(Duration::from_millis(1_001));
    let (c, got) = connect(&mut s, 0, &format!(r#"{{"pid":"{pid}","offset":"{last}"}}"#));
    assert!(got[0].starts_with("40{") && field(&got[0], "sid") != sid, "a fresh socket: {got:?}");
    let stats = s.shard(0).service.handler().stats().recovery;
    assert_eq!((stats.not_recovered, stats.kept_sockets, stats.kept_packets), (1, 0, 1), "only the new auth emit is kept: {stats:?}");

    // The offset was dropped to stay within 2 packets on this worker: no gap is ever sent.
    let (pid, last) = (field(&got[0], "pid").to_string(), offset(&got[1]));
    say(&mut s, c, r#"42["join","r"]"#);
    let (b, _) = connect(&mut s, 0, "");
    s.close(c);
    s.run();
    for m in ["m1", "m2", "m3"] {
        say(&mut s, b, &format!(r#"42["to-room","r","{m}"]"#));
    }
    let stats = s.shard(0).service.handler().stats().recovery;
    assert_eq!(stats.kept_packets, 2, "{stats:?}");
    assert!(stats.evicted_packets >= 2, "{stats:?}");
    let (_, got) = connect(&mut s, 1, &format!(r#"{{"pid":"{pid}","offset":"{last}"}}"#));
    assert_eq!(got.len(), 2, "no missed packets, a fresh CONNECT and auth: {got:?}");
    assert!(got[0].starts_with("40{"), "{got:?}");
    assert_eq!(s.shard(1).service.handler().stats().recovery.not_recovered, 1, "counted once, by the worker the client came to");
    assert_eq!(s.shard(0).service.handler().stats().recovery.not_recovered, 1);
}

/// On the wire, the library server: with recovery on, the CONNECT answer carries a pid, and an
/// emit from a `ServerHandle` (encoded off the workers) carries an offset like a handler's;
/// a volatile one does not (it is never kept).
#[test]
fn server_handle_emits_carry_offsets_with_recovery_on() {
    let server = shardcast::app::Server::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .threads(2)
        .pin(false)
        .io(support::test_io())
        .recovery(config(10_000, 1000))
        .namespace("/", shardcast::app::Namespace::new())
        .start()
        .expect("server starts");
    let mut ws = support::Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(Duration::from_secs(5));
    assert!(ws.recv_text().starts_with("0{"));
    ws.send_text("40");
    let connect = ws.recv_eio();
    assert!(connect.starts_with("40{\"sid\":") && connect.contains("\"pid\":\""), "{connect}");
    let handle = server.handle();
    handle.flush().wait().unwrap(); // the socket is connected on its worker
    handle.of("/").volatile().emit("v", &[serde_json::json!(0)]).unwrap();
    handle.of("/").emit("news", &[serde_json::json!(1)]).unwrap();
    assert_eq!(ws.recv_eio(), r#"42["v",0]"#, "volatile: no offset");
    let news = ws.recv_eio();
    assert!(news.starts_with(r#"42["news",1,""#) && offset(&news).parse::<u64>().is_ok(), "{news}");
    server.shutdown();
}
