//! Encode-once fan-out: one broadcast to 10,000 Socket.IO sockets split over 2 workers, through
//! the real server (mailbox hand-off to the other worker, room selection, one shared buffer
//! queued for every recipient), against the cost of merely *encoding* the message 10,000
//! times, which any per-recipient encoder would pay before sending anything.
//!
//! The sockets are long-polling sessions, so they are in-process state without a file
//! descriptor each (10,000 WebSockets would need 20,000 descriptors on loopback).
//!
//! The same broadcast with connection state recovery on (`--recovery-window` 2 min, Node's
//! default window): each broadcast also gets an offset and is kept by both workers (the log
//! reaches its cap of 100,000 packets and then drops its oldest), measured in the same run.
//!
//! And with the admin UI on (`--admin-ui-auth none`), in production mode (nothing per socket or
//! per packet: the figure must match the plain one) and in development mode with no admin
//! client watching (each recipient's `on_any_outgoing` hook runs, and the tap finds nobody to
//! tell), in the same run.
//!
//! `cargo bench --bench broadcast`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use shardcast::app::{contract, AdminAuth, AdminMode, AdminUi, RecoveryConfig, Server};
use shardcast::engine::EngineConfig;
use shardcast::proto::eio::SessionConfig;
use shardcast::proto::sio::encode;
use shardcast::rt::WorkerConfig;

const SOCKETS: usize = 10_000;

/// Sends one request on a keep-alive connection and returns the response body.
fn roundtrip(c: &mut TcpStream, req: &[u8]) -> Vec<u8> {
    c.write_all(req).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let n = c.read(&mut tmp).unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&tmp[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(h) = r.parse(&buf).unwrap() {
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= h + len {
                return buf[h..h + len].to_vec();
            }
        }
    }
}

fn connect_sockets(addr: SocketAddr) {
    let mut conns: Vec<TcpStream> = (0..32).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for i in 0..SOCKETS {
        let c = &mut conns[i % 32];
        let open = roundtrip(c, b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n");
        let v: serde_json::Value = serde_json::from_slice(&open[1..]).unwrap();
        let sid = v["sid"].as_str().unwrap();
        let req = format!("POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n40");
        assert_eq!(roundtrip(c, req.as_bytes()), b"ok");
    }
}

/// A server of 10,000 polling sockets, all in room `bench`.
fn start_server(recovery: bool, admin: Option<AdminMode>) -> shardcast::app::RunningServer {
    let engine = EngineConfig {
        session: SessionConfig { ping_interval: Duration::from_secs(3600), ping_timeout: Duration::from_secs(3600), ..Default::default() },
        max_send_buffer: 1 << 30,
        ..Default::default()
    };
    let builder = Server::builder()
        .engine(engine)
        .bind("127.0.0.1:0".parse().unwrap())
        .threads(2)
        .pin(true)
        .backlog(1024)
        .worker(WorkerConfig { max_send_buffer: 1 << 30, ..Default::default() });
    let builder = if recovery { builder.recovery(RecoveryConfig::new(Duration::from_secs(120))) } else { builder };
    let builder = match admin {
        Some(mode) => builder.admin_ui(AdminUi::new(AdminAuth::Disabled).mode(mode)),
        None => builder,
    };
    let server = contract::app(builder).start().unwrap();
    connect_sockets(server.local_addr());
    let handle = server.handle();
    let all = handle.of("/");
    assert_eq!(all.count().wait(), Ok(SOCKETS));
    all.sockets_join(&["bench"]).unwrap();
    assert_eq!(handle.of("/").to("bench").count().wait(), Ok(SOCKETS), "every socket joined the room");
    server
}

fn bench(c: &mut Criterion) {
    let server = start_server(false, None);
    let kept = start_server(true, None);
    let prod = start_server(false, Some(AdminMode::Production));
    let dev = start_server(false, Some(AdminMode::Development));
    let (prod_handle, prod_room) = (prod.handle(), prod.handle().of("/").to("bench"));
    let (dev_handle, dev_room) = (dev.handle(), dev.handle().of("/").to("bench"));
    let handle = server.handle();
    let room = handle.of("/").to("bench");
    let (kept_handle, kept_room) = (kept.handle(), kept.handle().of("/").to("bench"));
    let payload = [json!({"seq": 1, "body": "x".repeat(80)})];

    let mut g = c.benchmark_group("broadcast_10k_sockets_2_workers");
    g.throughput(Throughput::Elements(SOCKETS as u64));
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g.bench_function("encode_once_and_deliver", |b| {
        b.iter(|| {
            room.emit("tick", &payload).unwrap();
            // Mail is FIFO per worker: once both workers pass the barrier, both delivered.
            handle.flush().wait().unwrap()
        })
    });
    g.bench_function("encode_once_and_deliver_recovery_on", |b| {
        b.iter(|| {
            kept_room.emit("tick", &payload).unwrap();
            kept_handle.flush().wait().unwrap()
        })
    });
    g.bench_function("encode_once_and_deliver_admin_ui_production", |b| {
        b.iter(|| {
            prod_room.emit("tick", &payload).unwrap();
            prod_handle.flush().wait().unwrap()
        })
    });
    g.bench_function("encode_once_and_deliver_admin_ui_development_unwatched", |b| {
        b.iter(|| {
            dev_room.emit("tick", &payload).unwrap();
            dev_handle.flush().wait().unwrap()
        })
    });
    g.bench_function("encode_only_10k_times", |b| {
        b.iter(|| {
            for _ in 0..SOCKETS {
                std::hint::black_box(encode::event("/", "tick", &payload, None, Vec::new()));
            }
        })
    });
    g.finish();
    server.shutdown();
    kept.shutdown();
    prod.shutdown();
    dev.shutdown();
}

criterion_group!(benches, bench);
criterion_main!(benches);
