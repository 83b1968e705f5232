//! Hostile clients against the engine, in the deterministic in-memory harness (`rt::sim`): the
//! same connection table and engine the io_uring loop drives, with simulated sockets and an
//! injected clock. One test per finding of the hostile-client audit that the harness can
//! reach; each asserts the budget holds (bytes held per byte sent, deadlines per session),
//! that other clients keep being served, and that counters return to zero.

mod sim_support;

use std::time::Duration;

use shardcast::engine::{sid, EngineConfig};
use shardcast::rt::sim::ClientId;
use shardcast::rt::WorkerConfig;
use sim_support::*;

/// Finding 1: bytes sent behind a parked long-poll GET used to be appended to the connection's
/// read buffer without limit. Reading now pauses while the GET is parked: the bytes stay in
/// the kernel (TCP flow control), the server holds none of them.
#[test]
fn bytes_behind_a_parked_poll_are_not_read() {
    let mut s = sim(1);
    let (c, sid) = polling_session(&mut s, 0);
    s.write(c, &get(&format!("/engine.io/?EIO=4&transport=polling&sid={sid}")));
    assert!(s.read(c).is_empty(), "the GET is parked");
    let junk = vec![b'x'; 64 << 20];
    s.write(c, &junk);
    let held = s.shard(0).io.read_held();
    assert!(held <= 64 << 10, "the server holds {held} bytes of 64 MiB sent behind a parked poll");
    assert!(s.unread_by_server(c) >= (64 << 20) - (64 << 10), "the rest stays unread");
    assert_served(&mut s, 0);
}

/// Finding 5 (issue 10, item 5) on the same path: a request pipelined behind a polling GET is
/// answered, in order, as soon as the GET is.
#[test]
fn a_request_pipelined_behind_a_poll_is_answered_after_it() {
    let mut s = sim(1);
    let (c, sid) = polling_session(&mut s, 0);
    let target = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    let mut two = get(&target);
    two.extend_from_slice(&get("/elsewhere"));
    s.write(c, &two);
    assert!(s.read(c).is_empty(), "the GET is parked and the request behind it waits");
    // Another connection posts a message: the parked GET gets the echo, then the 404 follows.
    let other = s.connect(0);
    s.write(other, &post(&target, b"4hi"));
    let r = responses(&s.read(c));
    assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 404]);
    assert_eq!(r[0].body, b"4hi");
}

/// Finding 2: every PONG pushed a heartbeat timer entry. A session now has one deadline,
/// moved in place, however many packets it sends.
#[test]
fn a_pong_flood_keeps_one_deadline_per_session() {
    let mut s = sim(1);
    let (c, sid) = polling_session(&mut s, 0);
    let target = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    let pongs = vec!["3"; 200_000].join("\x1e");
    for _ in 0..4 {
        s.write(c, &post(&target, pongs.as_bytes()));
        assert_eq!(responses(&s.read(c))[0].body, b"ok");
    }
    // One session deadline, one HTTP deadline for the connection waiting for a request.
    assert_eq!(s.shard(0).service.deadline_count(), 2);
    assert_served(&mut s, 0);
}

/// Finding 3: every pipelined request pushed an HTTP-timeout entry. A connection now has one
/// HTTP deadline, moved in place.
#[test]
fn pipelined_requests_keep_one_deadline_per_connection() {
    let mut s = sim(1);
    let c = s.connect(0);
    let burst: Vec<u8> = (0..20_000).flat_map(|_| get("/nowhere")).collect();
    s.write(c, &burst);
    let answered = responses(&s.read(c));
    assert_eq!(answered.len(), 20_000);
    assert!(answered.iter().all(|r| r.status == 404));
    assert_eq!(s.shard(0).service.deadline_count(), 1);
}

/// A client that pipelines requests and never reads its responses is cut once its send queue
/// is full, instead of having responses dropped silently.
#[test]
fn a_client_that_never_reads_its_responses_is_cut() {
    let mut s = sim(1);
    let c = s.connect(0);
    s.set_window(c, 0);
    let burst: Vec<u8> = (0..200_000).flat_map(|_| get("/nowhere")).collect();
    s.write(c, &burst);
    assert!(s.closed_by_server(c), "a client that does not read is closed");
    assert_eq!(s.total_conns(), 0);
    assert_served(&mut s, 0);
}

/// Finding 4: every cross-worker hand-off counted the connection twice and never released it,
/// until `--max-connections` locked everyone out. 10,000 hand-offs now end at zero.
#[test]
fn ten_thousand_handoffs_end_with_zero_connections_counted() {
    let mut s = sim(2);
    let foreign = sid::generate(1);
    for _ in 0..10_000 {
        let c = s.connect(0);
        s.write(c, &get(&format!("/engine.io/?EIO=4&transport=polling&sid={foreign}")));
        let r = responses(&s.read(c));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, 400, "the owner answers: unknown session");
        assert_eq!(s.worker_of(c), 1);
        s.close(c);
    }
    assert_eq!(s.total_conns(), 0);
    assert_eq!(s.shard(0).live() + s.shard(1).live(), 0);
    assert_served(&mut s, 0);
}

/// Finding 5: a response queued before a pipelined request for another worker's session was
/// dropped with the hand-off. Both are answered now, in order.
#[test]
fn pipelined_requests_across_workers_are_all_answered_in_order() {
    let mut s = sim(2);
    let (_, sid1) = polling_session(&mut s, 1);
    for _ in 0..200 {
        let c = s.connect(0);
        let mut two = get("/engine.io/?EIO=4&transport=polling");
        two.extend_from_slice(&post(&format!("/engine.io/?EIO=4&transport=polling&sid={sid1}"), b"4x"));
        s.write(c, &two);
        let r = responses(&s.read(c));
        assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 200], "{r:?}");
        assert!(r[0].body.starts_with(b"0{\"sid\""));
        assert_eq!(r[1].body, b"ok");
        s.close(c);
    }
    assert_eq!(s.total_conns(), 1, "only the session's own connection is left");
}

/// Finding 6: a polling GET carrying a WebSocket session's sid and `Upgrade` headers was
/// parked forever. It is a 400 now.
#[test]
fn a_polling_get_for_a_websocket_session_is_refused() {
    let mut s = sim(1);
    let ws = s.connect(0);
    s.write(ws, b"GET /engine.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    let out = s.read(ws);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    let sid = text.split("\"sid\":\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let c = s.connect(0);
    s.write(c, format!("GET /engine.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes());
    let r = responses(&s.read(c));
    assert_eq!(r.len(), 1, "answered at once, not parked");
    assert_eq!(r[0].status, 400);
}

/// Finding 8: stalled POST bodies had no global budget. The worker's unconsumed bytes now stay
/// under its read budget: the largest holders are shed with a 503, everyone else is served.
#[test]
fn stalled_bodies_are_shed_past_the_worker_budget() {
    let cfg = engine_cfg();
    let budget = 16 << 20;
    let rt = WorkerConfig { max_read_buffer: WorkerConfig::read_buffer_for(cfg.max_payload), read_budget: budget, ..WorkerConfig::default() };
    let mut s = sim_with(1, cfg, rt);
    // One session per stalled body: two POST bodies in progress for one session are an
    // overlap, which closes it.
    let mut clients = Vec::new();
    for _ in 0..300 {
        let (c, sid) = polling_session(&mut s, 0);
        let head = format!("POST /engine.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n");
        s.write(c, head.as_bytes());
        s.write(c, &vec![b'4'; 900_000]);
        clients.push(c);
        assert!(s.shard(0).io.read_held() <= budget, "held {} past the budget", s.shard(0).io.read_held());
    }
    let shed: Vec<ClientId> = clients.iter().copied().filter(|&c| s.closed_by_server(c)).collect();
    assert!(shed.len() >= 280, "{} shed", shed.len());
    for &c in &shed {
        let r = responses(&s.read(c));
        assert_eq!(r[0].status, 503);
    }
    assert_eq!(s.shard(0).io.stats().shed_read_budget, shed.len() as u64);
    assert_served(&mut s, 0);
}

/// A read buffer never passes the per-connection limit: a body larger than it is refused by
/// its head (413), and a connection that streams past it is closed.
#[test]
fn one_connection_holds_at_most_its_read_limit() {
    let mut s = sim(1);
    let c = s.connect(0);
    // A head that never ends.
    s.write(c, b"GET /engine.io/?EIO=4&transport=polling HTTP/1.1\r\nX: ");
    s.write(c, &vec![b'a'; 4 << 20]);
    assert!(s.closed_by_server(c));
    let r = responses(&s.read(c));
    assert_eq!(r[0].status, 431);
    assert_eq!(s.shard(0).io.read_held(), 0);
    assert_served(&mut s, 0);
}

/// Heartbeats with the injected clock: a polling session that never answers a ping is closed
/// after pingInterval + pingTimeout, and its memory goes with it (no linger for a session
/// closed for cause) — no sleeps.
#[test]
fn a_silent_polling_session_times_out_and_is_forgotten() {
    let mut s = sim(1);
    let (c, sid) = polling_session(&mut s, 0);
    let target = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
    s.write(c, &get(&target));
    s.advance(Duration::from_millis(25_000));
    assert_eq!(responses(&s.read(c))[0].body, b"2", "the ping answers the parked GET");
    s.advance(Duration::from_millis(19_999));
    assert_eq!(s.shard(0).service.session_count(), 1, "open until pingTimeout");
    s.advance(Duration::from_millis(1));
    assert_eq!(s.shard(0).service.session_count(), 0, "forgotten at pingInterval + pingTimeout");
    assert!(!s.closed_by_server(c), "the keep-alive connection waits for its next request");
    s.advance(Duration::from_millis(30_001));
    assert!(s.closed_by_server(c), "the idle keep-alive connection is closed by the HTTP timeout");
    assert_eq!(s.shard(0).service.deadline_count(), 0);
    assert_eq!(s.total_conns(), 0);
}

/// Finding 13: under memory pressure nothing shed load. Past `--max-memory` new connections
/// now get 503 and the largest holders are shed (a few per check), until memory is back under
/// 90% of the limit.
#[test]
fn over_max_memory_new_connections_are_refused_and_the_largest_holders_shed() {
    let cfg = engine_cfg();
    let rt = WorkerConfig { max_read_buffer: WorkerConfig::read_buffer_for(cfg.max_payload), max_memory: Some(100 << 20), ..WorkerConfig::default() };
    let mut s = sim_with(1, cfg, rt);
    s.set_resident(50 << 20);
    let head = |sid: &str| format!("POST /engine.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n");
    // Twenty stalled bodies of different sizes, and one small one, each for its own session
    // (two bodies in progress for one session are an overlap, which closes it).
    let mut big = Vec::new();
    for i in 0..20 {
        let (c, sid) = polling_session(&mut s, 0);
        s.write(c, head(&sid).as_bytes());
        s.write(c, &vec![b'4'; 100_000 + i * 10_000]);
        big.push(c);
    }
    let (small, sid) = polling_session(&mut s, 0);
    s.write(small, head(&sid).as_bytes());
    s.write(small, b"4");
    s.set_resident(150 << 20);
    s.advance(Duration::from_millis(250));
    // The eight largest were shed with a 503; the small one and the rest wait.
    let shed: Vec<usize> = (0..20).filter(|&i| s.closed_by_server(big[i])).collect();
    assert_eq!(shed, (12..20).collect::<Vec<_>>());
    for &i in &shed {
        assert_eq!(responses(&s.read(big[i]))[0].status, 503);
    }
    assert!(!s.closed_by_server(small));
    assert_eq!(s.shard(0).io.stats().shed_memory, 8);
    // A new connection is refused while the process is over the limit.
    let late = s.connect(0);
    assert!(s.closed_by_server(late));
    assert_eq!(responses(&s.read(late))[0].status, 503);
    // Back under 90%: accepting again, nothing more is shed.
    s.set_resident(80 << 20);
    s.advance(Duration::from_millis(250));
    assert_eq!(s.shard(0).io.stats().shed_memory, 8);
    assert_served(&mut s, 0);
}

/// Finding 7 with the worker budget: a compressed message left unfinished holds its inflated
/// bytes (up to the message limit) for as long as the client answers pings. Those bytes are
/// charged to the worker's read budget: past it the largest holders are closed with 1013.
#[test]
fn unfinished_compressed_messages_count_against_the_worker_budget() {
    use flate2::{Compress, Compression, FlushCompress};
    use shardcast::proto::ws::frame::encode_client_frame;
    use shardcast::proto::ws::OpCode;

    let cfg = EngineConfig { websocket_compression: true, ..engine_cfg() };
    let budget = 16 << 20;
    let rt = WorkerConfig { max_read_buffer: WorkerConfig::read_buffer_for(cfg.max_payload), read_budget: budget, ..WorkerConfig::default() };
    let mut s = sim_with(1, cfg, rt);
    // 900 KB of text compressed to about a kilobyte, sent as a first fragment (FIN=0, RSV1).
    let mut z = Compress::new(Compression::default(), false);
    let mut packed = Vec::with_capacity(4096);
    z.compress_vec(&vec![b'4'; 900_000], &mut packed, FlushCompress::Sync).unwrap();
    let fragment = encode_client_frame(false, true, OpCode::Text, [1, 2, 3, 4], &packed);
    let mut conns = Vec::new();
    for _ in 0..40 {
        let c = s.connect(0);
        s.write(c, b"GET /engine.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
        let hello = s.read(c);
        assert!(String::from_utf8_lossy(&hello).contains("permessage-deflate"));
        s.write(c, &fragment);
        conns.push(c);
        assert!(s.shard(0).io.read_held() <= budget, "held {} past the budget", s.shard(0).io.read_held());
    }
    let cut: Vec<ClientId> = conns.iter().copied().filter(|&c| s.closed_by_server(c)).collect();
    assert!(cut.len() >= 20, "{} cut", cut.len());
    for &c in &cut {
        // The last frame the client got is a close frame with code 1013.
        let out = s.read(c);
        assert!(out.ends_with(&[0x88, 2, 0x03, 0xf5]), "{:?}", &out[out.len().saturating_sub(8)..]);
    }
    assert_served(&mut s, 0);
}

/// The codec is split into a decoder and an encoder: a handler answering from inside the
/// decoding of its connection's bytes sends compressed replies at once and in order (no
/// deferred queue).
#[test]
fn replies_from_inside_decoding_are_compressed_in_order() {
    use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
    use shardcast::proto::ws::frame::encode_client_frame;
    use shardcast::proto::ws::OpCode;

    let mut s = sim_with(1, EngineConfig { websocket_compression: true, ..engine_cfg() }, WorkerConfig::default());
    let c = s.connect(0);
    s.write(c, b"GET /engine.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
    let hello = s.read(c);
    let head_end = hello.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let big = format!("4{}", "a".repeat(3000));
    let mut z = Compress::new(Compression::default(), false);
    let mut packed = Vec::with_capacity(4096);
    z.compress_vec(big.as_bytes(), &mut packed, FlushCompress::Sync).unwrap();
    packed.truncate(packed.len() - 4);
    let mut wire = encode_client_frame(true, true, OpCode::Text, [9, 8, 7, 6], &packed);
    wire.extend(encode_client_frame(true, false, OpCode::Text, [9, 8, 7, 6], b"4b"));
    s.write(c, &wire);
    // Server frames: (rsv1, payload), unmasked, in the order they were written.
    let mut bytes = hello[head_end..].to_vec();
    bytes.extend(s.read(c));
    let mut frames = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let rsv1 = rest[0] & 0x40 != 0;
        let (len, at) = match rest[1] & 0x7f {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        frames.push((rsv1, rest[at..at + len].to_vec()));
        rest = &rest[at + len..];
    }
    assert_eq!(frames.len(), 3, "open packet, then both replies");
    assert!(frames[0].1.starts_with(b"0{\"sid\""));
    assert!(frames[1].0, "the large reply is compressed");
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(8192);
    let mut input = frames[1].1.clone();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync).unwrap();
    assert_eq!(out, big.as_bytes());
    assert_eq!(frames[2], (false, b"4b".to_vec()));
}

/// A connection closing after its last frames (a `Connection: close` response, a close frame)
/// is closed anyway once the close grace passes if its peer never reads them: a client cannot
/// keep a closing connection and its queued bytes alive by not reading.
#[test]
fn a_peer_that_never_reads_its_last_frames_is_closed_after_the_grace() {
    let mut s = sim(1);
    let c = s.connect(0);
    s.set_window(c, 0);
    s.write(c, b"GET /engine.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.advance(Duration::from_millis(4_900));
    assert!(!s.closed_by_server(c), "still within the grace");
    s.advance(Duration::from_millis(100));
    assert!(s.closed_by_server(c), "closed once the grace passed");
    assert_eq!(s.shard(0).io.stats().close_grace_expired, 1, "the cut is counted");
    assert_eq!(s.total_conns(), 0);
}
