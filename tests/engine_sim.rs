//! Engine.IO timing and flow control in the deterministic in-memory harness (`rt::sim`):
//! heartbeats, the upgrade and its timeout, the HTTP timeout, `--max-connections`, the
//! slow-consumer policy, close-after-drain and graceful shutdown. Time moves only when a test
//! calls `Sim::advance`, so every deadline is checked exactly: one millisecond before it
//! nothing happens, at it the action is taken. No sleeps, no sockets; what needs a real
//! socket stays in `tests/engine_io.rs`.

mod sim_support;

use std::time::Duration;

use bytes::Bytes;
use shardcast::engine::{Ctx, EngineConfig, Handler, OpenInfo, SendFailure, SendFlags, SessionId, SlowConsumer};
use shardcast::proto::eio::{CloseReason, PacketType, SharedPacket};
use shardcast::rt::WorkerConfig;
use sim_support::*;

const MS: Duration = Duration::from_millis(1);
const PING_INTERVAL: Duration = Duration::from_millis(25_000);
const PING_TIMEOUT: Duration = Duration::from_millis(20_000);
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

const UNKNOWN_SID: &str = r#"{"code":1,"message":"Session ID unknown"}"#;
const BAD_REQUEST: &str = r#"{"code":3,"message":"Bad request"}"#;

/// A handler driven by the messages it gets:
/// - `volatile:N` sends a volatile message of N bytes back;
/// - `close:a,b` sends `a` and `b` back, then closes the session;
/// - anything else is echoed.
///
/// Every send's outcome is recorded.
#[derive(Default)]
struct Scripted {
    sent: Vec<Result<(), SendFailure>>,
}

impl Scripted {
    fn send(&mut self, ctx: &mut Ctx<'_, ()>, sid: SessionId, text: &[u8], volatile: bool) {
        let flags = SendFlags { volatile, ..SendFlags::default() };
        self.sent.push(ctx.send(sid, &SharedPacket::text(PacketType::Message, text), flags));
    }
}

impl Handler for Scripted {
    type Mail = ();

    fn on_open(&mut self, _ctx: &mut Ctx<'_, ()>, _session: SessionId, _info: &OpenInfo<'_>) {}

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, sid: SessionId, text: &mut [u8]) {
        let msg = String::from_utf8(text.to_vec()).unwrap();
        if let Some(n) = msg.strip_prefix("volatile:") {
            self.send(ctx, sid, &vec![b'v'; n.parse().unwrap()], true);
        } else if let Some(list) = msg.strip_prefix("close:") {
            for m in list.split(',') {
                self.send(ctx, sid, m.as_bytes(), false);
            }
            ctx.close(sid);
        } else {
            self.send(ctx, sid, text, false);
        }
    }

    fn on_binary(&mut self, ctx: &mut Ctx<'_, ()>, sid: SessionId, data: Bytes) {
        let _ = ctx.send(sid, &SharedPacket::binary(data), SendFlags::default());
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_, ()>, _session: SessionId, _reason: CloseReason) {}

    fn on_mail(&mut self, _ctx: &mut Ctx<'_, ()>, _mail: ()) {}
}

fn scripted(cfg: EngineConfig, rt: WorkerConfig) -> EioSim<Scripted> {
    sim_with_handler(1, cfg, rt, Scripted::default)
}

#[test]
fn polling_ping_after_ping_interval_and_close_at_ping_timeout() {
    let mut s = sim(1);
    let (c, sid) = polling_session(&mut s, 0);
    let q = polling(&sid);
    s.write(c, &get(&q));
    s.advance(PING_INTERVAL - MS);
    assert!(s.read(c).is_empty(), "no ping before pingInterval");
    s.advance(MS);
    assert_eq!(one_response(&s.read(c)).text(), "2", "the ping answers the parked GET at pingInterval");
    // A pong moves the next ping to pingInterval after it.
    s.advance(Duration::from_secs(5));
    s.write(c, &post(&q, b"3"));
    assert_eq!(one_response(&s.read(c)).text(), "ok");
    s.write(c, &get(&q));
    s.advance(PING_INTERVAL - MS);
    assert!(s.read(c).is_empty(), "the next ping is pingInterval after the pong");
    s.advance(MS);
    assert_eq!(one_response(&s.read(c)).text(), "2");
    // No pong this time: the session is closed at pingTimeout, not before.
    s.write(c, &get(&q));
    s.advance(PING_TIMEOUT - MS);
    assert!(s.read(c).is_empty(), "still open one tick before pingTimeout");
    assert_eq!(s.shard(0).service.session_count(), 1);
    s.advance(MS);
    assert_eq!(one_response(&s.read(c)).text(), "1", "the parked GET gets the close packet");
    s.write(c, &get(&q));
    let r = one_response(&s.read(c));
    assert_eq!((r.status, r.text().as_str()), (400, UNKNOWN_SID));
    assert_eq!(s.shard(0).service.session_count(), 0);
}

#[test]
fn websocket_echo_heartbeat_and_ping_timeout() {
    let mut s = sim(1);
    let (c, _, open) = ws_session(&mut s, 0);
    assert!(open.contains(r#""upgrades":[]"#) && open.contains(r#""pingInterval":25000"#) && open.contains(r#""pingTimeout":20000"#), "{open}");
    s.write(c, &client_text("4hello"));
    assert_eq!(texts(&s.read(c)), ["4hello"]);
    s.write(c, &client_binary(&[1, 2, 3]));
    assert_eq!(frames(&s.read(c)), [Frame { fin: true, opcode: 2, payload: vec![1, 2, 3] }]);
    // Pings every pingInterval after the last pong, as long as they are answered.
    for round in 0..3 {
        s.advance(PING_INTERVAL - MS);
        assert!(s.read(c).is_empty(), "round {round}: no ping before pingInterval");
        s.advance(MS);
        assert_eq!(texts(&s.read(c)), ["2"], "round {round}");
        s.advance(PING_TIMEOUT - MS);
        s.write(c, &client_text("3"));
        assert!(s.read(c).is_empty());
    }
    assert!(!s.closed_by_server(c));
    // Not answered: closed at pingTimeout, not before.
    s.advance(PING_INTERVAL);
    assert_eq!(texts(&s.read(c)), ["2"]);
    s.advance(PING_TIMEOUT - MS);
    assert!(!s.closed_by_server(c), "still open one tick before pingTimeout");
    assert!(s.read(c).is_empty());
    s.advance(MS);
    assert!(s.closed_by_server(c), "closed at pingTimeout");
    let rest = frames(&s.read(c));
    assert!(rest.iter().all(|f| f.opcode == 8), "nothing but a close frame after the timeout: {rest:?}");
    assert_eq!(s.shard(0).service.session_count(), 0);
    assert_eq!(s.total_conns(), 0);
}

#[test]
fn upgrade_releases_the_parked_poll_and_moves_the_session_to_the_websocket() {
    let mut s = sim(1);
    let (p, sid) = polling_session(&mut s, 0);
    let q = polling(&sid);
    s.write(p, &get(&q));
    let ws = s.connect(0);
    s.write(ws, &ws_request(&format!("/engine.io/?EIO=4&transport=websocket&sid={sid}")));
    let out = s.read(ws);
    let (_, rest) = switching_protocols(&out);
    assert!(rest.is_empty(), "a probe gets no open packet: {rest:?}");
    assert!(s.read(p).is_empty(), "the poll stays parked until the probe");
    s.write(ws, &client_text("2probe"));
    assert_eq!(texts(&s.read(ws)), ["3probe"]);
    assert_eq!(one_response(&s.read(p)).text(), "6", "the parked poll is released with a noop");
    // A message echoed while the upgrade is under way is queued, then goes over the WebSocket.
    s.write(p, &post(&q, b"4during"));
    assert_eq!(one_response(&s.read(p)).text(), "ok");
    assert!(s.read(ws).is_empty(), "nothing on the probe before the upgrade packet");
    s.write(ws, &client_text("5"));
    assert_eq!(texts(&s.read(ws)), ["4during"]);
    s.write(ws, &client_text("4after upgrade"));
    assert_eq!(texts(&s.read(ws)), ["4after upgrade"]);
    // The heartbeat runs over the WebSocket now.
    s.advance(PING_INTERVAL);
    assert_eq!(texts(&s.read(ws)), ["2"]);
    assert!(s.read(p).is_empty());
    s.write(ws, &client_text("3"));
    // Polling with the upgraded sid, or a second WebSocket for it: 400.
    s.write(p, &get(&q));
    let r = one_response(&s.read(p));
    assert_eq!((r.status, r.text().as_str()), (400, BAD_REQUEST));
    let second = s.connect(0);
    s.write(second, &ws_request(&format!("/engine.io/?EIO=4&transport=websocket&sid={sid}")));
    assert_eq!(one_response(&s.read(second)).status, 400);
    s.write(ws, &client_text("4still here"));
    assert_eq!(texts(&s.read(ws)), ["4still here"]);
}

#[test]
fn the_upgrade_timeout_aborts_the_probe_and_polling_goes_on() {
    let mut s = sim(1);
    // One probe never says anything, the other is accepted but never sends the upgrade packet.
    let (p1, sid1) = polling_session(&mut s, 0);
    let (p2, sid2) = polling_session(&mut s, 0);
    let probe1 = s.connect(0);
    s.write(probe1, &ws_request(&format!("/engine.io/?EIO=4&transport=websocket&sid={sid1}")));
    let probe2 = s.connect(0);
    s.write(probe2, &ws_request(&format!("/engine.io/?EIO=4&transport=websocket&sid={sid2}")));
    for c in [probe1, probe2] {
        let out = s.read(c);
        assert!(switching_protocols(&out).1.is_empty());
    }
    s.write(probe2, &client_text("2probe"));
    assert_eq!(texts(&s.read(probe2)), ["3probe"]);
    s.advance(UPGRADE_TIMEOUT - MS);
    for c in [probe1, probe2] {
        assert!(s.read(c).is_empty() && !s.closed_by_server(c), "still probing one tick before the upgrade timeout");
    }
    s.advance(MS);
    for c in [probe1, probe2] {
        let f = frames(&s.read(c));
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].opcode, f[0].payload.len()), (8, 0), "a close frame without a status code, as the reference's ws.close(): {f:?}");
        assert!(s.closed_by_server(c), "the probe is closed at the upgrade timeout");
    }
    // The sessions stay on polling.
    for (p, sid) in [(p1, &sid1), (p2, &sid2)] {
        s.write(p, &post(&polling(sid), b"4polling"));
        assert_eq!(one_response(&s.read(p)).text(), "ok");
        s.write(p, &get(&polling(sid)));
        assert_eq!(one_response(&s.read(p)).text(), "4polling");
    }
    assert_eq!(s.shard(0).service.session_count(), 2);
}

#[test]
fn two_concurrent_polls_close_the_session() {
    let mut s = sim(1);
    let (c, sid) = polling_session(&mut s, 0);
    let q = polling(&sid);
    s.write(c, &get(&q));
    assert!(s.read(c).is_empty(), "the first GET is parked");
    let other = s.connect(0);
    s.write(other, &get(&q));
    let overlap = one_response(&s.read(other));
    assert_eq!((overlap.status, overlap.text().as_str()), (400, ""), "the reference's empty 400");
    assert_eq!(one_response(&s.read(c)).text(), "1", "the first poll gets the close packet");
    s.write(other, &get(&q));
    let r = one_response(&s.read(other));
    assert_eq!((r.status, r.text().as_str()), (400, UNKNOWN_SID));
}

#[test]
fn http_timeout_closes_slow_heads_and_idle_connections_but_not_busy_ones() {
    let cfg = EngineConfig { http_timeout: Duration::from_millis(400), ..engine_cfg() };
    let rt = worker_cfg(&cfg);
    let mut s = sim_with(1, cfg, rt);
    // t = 0: a head trickled in (slowloris); more of it at t = 200 does not move its deadline.
    let slow = s.connect(0);
    s.write(slow, b"GET /engine.io/?EIO=4&transport=polling HTTP/1.1\r\n");
    s.advance(Duration::from_millis(200));
    s.write(slow, b"X-Slow: 1\r\n");
    s.advance(Duration::from_millis(199));
    assert!(!s.closed_by_server(slow), "t = 399: the slow head is still open");
    // t = 399: an idle keep-alive connection after one request, and a busy one.
    let idle = s.connect(0);
    s.write(idle, &get("/engine.io/?EIO=4&transport=polling"));
    assert_eq!(one_response(&s.read(idle)).status, 200);
    let busy = s.connect(0);
    s.advance(MS);
    assert!(s.closed_by_server(slow), "t = 400: the slow head is cut off");
    assert!(s.read(slow).is_empty(), "a head never completed gets no response");
    // The busy connection completes a request every 250 ms.
    s.advance(Duration::from_millis(249));
    s.write(busy, &get("/nowhere"));
    assert_eq!(one_response(&s.read(busy)).status, 404);
    s.advance(Duration::from_millis(149));
    assert!(!s.closed_by_server(idle), "t = 798: the idle connection is still open");
    s.advance(MS);
    assert!(s.closed_by_server(idle), "t = 799: closed 400 ms after its last request");
    assert!(s.read(idle).is_empty());
    // t = 899, 1149, 1399: each 250 ms after the one before.
    for gap in [100, 250, 250] {
        s.advance(Duration::from_millis(gap));
        assert!(!s.closed_by_server(busy));
        s.write(busy, &get("/nowhere"));
        assert_eq!(one_response(&s.read(busy)).status, 404);
    }
    // t = 1399, the last request: the busy connection times out only once it goes idle.
    s.advance(Duration::from_millis(399));
    assert!(!s.closed_by_server(busy), "t = 1798: open, well past the first 400 ms");
    s.advance(MS);
    assert!(s.closed_by_server(busy));
    assert_eq!(s.total_conns(), 0);
}

#[test]
fn max_connections_answers_503_and_frees_its_slot() {
    let cfg = EngineConfig { max_connections: 2, ..engine_cfg() };
    let rt = worker_cfg(&cfg);
    let mut s = sim_with(1, cfg, rt);
    let a = s.connect(0);
    let b = s.connect(0);
    assert_eq!(s.total_conns(), 2);
    let refused = s.connect(0);
    let r = one_response(&s.read(refused));
    assert_eq!(r.status, 503);
    assert!(s.closed_by_server(refused), "refused once the 503 is written");
    assert_eq!(s.total_conns(), 2);
    // Those under the limit are served.
    s.write(a, &get("/engine.io/?EIO=4&transport=polling"));
    assert_eq!(one_response(&s.read(a)).status, 200);
    assert!(!s.closed_by_server(b));
    // A connection that leaves frees its slot.
    s.close(b);
    assert_eq!(s.total_conns(), 1);
    let c = s.connect(0);
    s.write(c, &get("/engine.io/?EIO=4&transport=polling"));
    assert_eq!(one_response(&s.read(c)).status, 200);
}

/// An echo of `4` + 999 bytes is a WebSocket frame of 1004 bytes (a 4-byte header).
const BIG: usize = 1000;
const BIG_FRAME: usize = BIG + 4;
const SEND_LIMIT: usize = 16 << 10;

fn big_message() -> String {
    format!("4{}", "x".repeat(BIG - 1))
}

fn slow_consumer_cfg(policy: SlowConsumer) -> (EngineConfig, WorkerConfig) {
    let cfg = EngineConfig { max_send_buffer: SEND_LIMIT, slow_consumer: policy, ..engine_cfg() };
    let rt = WorkerConfig { max_send_buffer: SEND_LIMIT, ..worker_cfg(&cfg) };
    (cfg, rt)
}

/// Echoes a WebSocket client fits while it does not read: one write in flight (blocked on the
/// closed window) and a full queue behind it.
const FITS: usize = 1 + SEND_LIMIT / BIG_FRAME;

#[test]
fn a_websocket_client_that_stops_reading_is_closed_once_its_queue_is_full() {
    let (cfg, rt) = slow_consumer_cfg(SlowConsumer::Disconnect);
    let mut s = sim_with(1, cfg, rt);
    let (c, _, _) = ws_session(&mut s, 0);
    s.set_window(c, 0);
    let msg = client_text(&big_message());
    for i in 0..FITS {
        s.write(c, &msg);
        assert!(!s.closed_by_server(c), "echo {i} still fits");
    }
    assert_eq!(s.shard(0).service.session_count(), 1);
    s.write(c, &msg);
    assert!(s.closed_by_server(c), "the echo that does not fit closes the session");
    assert_eq!(s.shard(0).service.session_count(), 0);
    assert_eq!(s.total_conns(), 0);
    assert_served(&mut s, 0);
}

#[test]
fn drop_volatile_drops_what_does_not_fit_and_keeps_the_session() {
    for policy in [SlowConsumer::DropVolatile, SlowConsumer::Disconnect] {
        let (cfg, rt) = slow_consumer_cfg(policy);
        let mut s = scripted(cfg, rt);
        let (c, _, _) = ws_session(&mut s, 0);
        s.set_window(c, 0);
        let msg = big_message();
        // Fill the queue to one echo short of the limit (well under the 64 KiB backlog at which
        // a volatile send is dropped whatever the policy).
        for _ in 0..FITS {
            s.write(c, &client_text(&msg));
        }
        assert!(s.shard(0).service.handler().sent.iter().all(Result::is_ok));
        s.write(c, &client_text(&format!("4volatile:{}", BIG - 1)));
        let last = *s.shard(0).service.handler().sent.last().unwrap();
        if policy == SlowConsumer::Disconnect {
            assert_eq!(last, Err(SendFailure::SlowConsumer), "{policy:?}");
            assert_eq!(dropped(&mut s, "slow_consumer"), 1);
            assert_eq!(dropped(&mut s, "volatile"), 0);
            assert!(s.closed_by_server(c), "{policy:?}: a volatile send that does not fit closes the session");
            continue;
        }
        assert_eq!(last, Err(SendFailure::Dropped), "{policy:?}");
        assert_eq!(dropped(&mut s, "volatile"), 1, "counted for /metrics");
        assert_eq!(dropped(&mut s, "slow_consumer"), 0);
        assert!(!s.closed_by_server(c), "{policy:?}: the session stays");
        assert_eq!(s.shard(0).service.session_count(), 1);
        // The client reads again: it gets every echo and not the dropped volatile message.
        s.set_window(c, usize::MAX);
        let got = texts(&s.read(c));
        assert_eq!(got.len(), FITS);
        assert!(got.iter().all(|t| *t == msg));
        s.write(c, &client_text("4after"));
        assert_eq!(texts(&s.read(c)), ["4after"]);
        // A non-volatile send that does not fit still closes it.
        s.set_window(c, 0);
        for _ in 0..=FITS {
            s.write(c, &client_text(&msg));
        }
        assert_eq!(*s.shard(0).service.handler().sent.last().unwrap(), Err(SendFailure::SlowConsumer));
        assert_eq!(dropped(&mut s, "slow_consumer"), 1);
        assert!(s.closed_by_server(c));
        assert_eq!(s.shard(0).service.session_count(), 0);
    }
}

#[test]
fn a_polling_client_that_stops_polling_is_closed_once_its_outbox_is_full() {
    let (cfg, rt) = slow_consumer_cfg(SlowConsumer::Disconnect);
    let mut s = sim_with(1, cfg, rt);
    let (c, sid) = polling_session(&mut s, 0);
    let q = polling(&sid);
    let msg = big_message();
    // The outbox holds SEND_LIMIT / BIG_FRAME echoes; the next one closes the session.
    let fit = SEND_LIMIT / BIG_FRAME;
    let payload = vec![msg.as_str(); fit].join("\x1e");
    s.write(c, &post(&q, payload.as_bytes()));
    assert_eq!(one_response(&s.read(c)).text(), "ok");
    s.write(c, &post(&q, msg.as_bytes()));
    assert_eq!(one_response(&s.read(c)).text(), "ok");
    // Closed for cause (as a ping timeout would): what was queued is dropped with the session,
    // and the next poll is told the session is unknown.
    assert_eq!(s.shard(0).service.session_count(), 0);
    s.write(c, &get(&q));
    let r = one_response(&s.read(c));
    assert_eq!((r.status, r.text().as_str()), (400, UNKNOWN_SID));
}

#[test]
fn a_polling_session_closed_with_packets_queued_delivers_them_before_the_close_packet() {
    let cfg = engine_cfg();
    let rt = worker_cfg(&cfg);
    let mut s = scripted(cfg, rt);
    // Nothing parked: the next polls collect the packets, then the close packet.
    let (c, sid) = polling_session(&mut s, 0);
    let q = polling(&sid);
    s.write(c, &post(&q, b"4close:a,b"));
    assert_eq!(one_response(&s.read(c)).text(), "ok");
    assert_eq!(s.shard(0).service.session_count(), 1, "kept until the close packet is collected");
    s.write(c, &get(&q));
    assert_eq!(one_response(&s.read(c)).text(), "4a\x1e4b", "the queued packets first, without the close");
    s.write(c, &get(&q));
    assert_eq!(one_response(&s.read(c)).text(), "1");
    s.write(c, &get(&q));
    assert_eq!(one_response(&s.read(c)).text(), UNKNOWN_SID);
    assert_eq!(s.shard(0).service.session_count(), 0);
    // A parked GET gets the packets; the close packet waits for the next poll.
    let (c, sid) = polling_session(&mut s, 0);
    let q = polling(&sid);
    s.write(c, &get(&q));
    let other = s.connect(0);
    s.write(other, &post(&q, b"4close:x,y"));
    assert_eq!(one_response(&s.read(other)).text(), "ok");
    assert_eq!(one_response(&s.read(c)).text(), "4x\x1e4y");
    s.write(c, &get(&q));
    assert_eq!(one_response(&s.read(c)).text(), "1");
    // The client's own close packet behind a message ends the session at once, as on the
    // reference server: the echo is dropped with it.
    let (c, sid) = polling_session(&mut s, 0);
    let q = polling(&sid);
    s.write(c, &post(&q, b"4last\x1e1"));
    assert_eq!(one_response(&s.read(c)).text(), "ok");
    assert_eq!(s.shard(0).service.session_count(), 0);
    s.write(c, &get(&q));
    assert_eq!(one_response(&s.read(c)).text(), UNKNOWN_SID);
}

#[test]
fn shutdown_closes_websockets_with_1001_and_polling_sessions_with_a_close_packet() {
    let mut s = sim(1);
    let (ws, _, _) = ws_session(&mut s, 0);
    let (parked, sid1) = polling_session(&mut s, 0);
    s.write(parked, &get(&polling(&sid1)));
    let (later, sid2) = polling_session(&mut s, 0);
    s.shutdown();
    let f = frames(&s.read(ws));
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].close_code(), 1001, "going away");
    assert!(s.closed_by_server(ws));
    assert_eq!(one_response(&s.read(parked)).text(), "1", "the parked poll gets the close packet");
    s.write(later, &get(&polling(&sid2)));
    assert_eq!(one_response(&s.read(later)).text(), "1", "the next poll collects it");
    // New connections are refused meanwhile.
    let late = s.connect(0);
    assert_eq!(one_response(&s.read(late)).status, 503);
    assert!(s.closed_by_server(late));
}

#[test]
fn a_post_cut_short_by_its_connection_closes_the_session() {
    // The reference: "data request connection closed prematurely" errors the session (the
    // packets of the cut body would otherwise be lost midway while the session carried on).
    let mut s = sim(1);
    let (c, sid) = polling_session(&mut s, 0);
    let poster = s.connect(0);
    let head = format!("POST /engine.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n4abc");
    s.write(poster, head.as_bytes());
    assert!(s.read(poster).is_empty(), "the body is still coming");
    s.close(poster);
    s.advance(MS);
    s.write(c, &get(&polling(&sid)));
    let r = one_response(&s.read(c));
    assert_eq!((r.status, r.text().as_str()), (400, UNKNOWN_SID), "the session is closed at once");
    // A POST that completes before its connection goes leaves the session alone.
    let (c, sid) = polling_session(&mut s, 0);
    let poster = s.connect(0);
    s.write(poster, &post(&polling(&sid), b"4whole"));
    assert_eq!(one_response(&s.read(poster)).text(), "ok");
    s.close(poster);
    s.advance(MS);
    s.write(c, &get(&polling(&sid)));
    assert_eq!(one_response(&s.read(c)).text(), "4whole");
}

/// `shardcast_dropped_total{reason}` as worker 0 reports it to a scrape.
fn dropped<S: shardcast::rt::Service>(s: &mut shardcast::rt::sim::Sim<S>, reason: &str) -> u64 {
    let m = s.shard(0).metrics(0);
    m.samples
        .iter()
        .find(|x| x.name == "shardcast_dropped_total" && x.labels == [("reason", reason.to_string())])
        .map(|x| x.value)
        .expect("a dropped_total sample")
}
