//! The contract app (`shared/CONTRACT.md`) on socketioxide 0.18 + hyper, for the side-by-side
//! benchmark (`bench/run-compare.sh`). Built by the benchmark script only; never shipped.
//!
//! `socketioxide-contract ADDR [THREADS] [PING_INTERVAL_MS] [PING_TIMEOUT_MS]`
//!
//! socketioxide runs every handler as its own tokio task (its 0.18 design), so handlers are
//! `async`. Every contract row is here. Events with several arguments are taken as the tuple shapes the
//! load generator and the contract use (`to-room` room + one payload, `join`/`leave` a room);
//! a handler receiving another shape is not called (socketioxide's extractor rule).
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use socketioxide::extract::{AckSender, Data, SocketRef, TryData};
use socketioxide::SocketIo;
use tokio::net::TcpListener;

async fn contract(socket: SocketRef, TryData(auth): TryData<Value>) {
    let auth = match auth {
        Ok(Value::Null) | Err(_) => Value::Object(Default::default()),
        Ok(v) => v,
    };
    socket.on("message", |s: SocketRef, Data::<Value>(d)| async move {
        s.emit("message-back", &d).ok();
    });
    socket.on("message-with-ack", |Data::<Value>(d), ack: AckSender| async move {
        ack.send(&d).ok();
    });
    socket.on("join", |s: SocketRef, Data::<String>(room), ack: AckSender| async move {
        s.join(room);
        ack.send(&true).ok();
    });
    socket.on("leave", |s: SocketRef, Data::<String>(room), ack: AckSender| async move {
        s.leave(room);
        ack.send(&true).ok();
    });
    socket.on("to-room", |io: SocketIo, s: SocketRef, Data::<(String, Value)>((room, d)), ack: AckSender| async move {
        ack.send(&true).ok();
        let _ = io.of(s.ns()).expect("own namespace").to(room).emit("room-message", &d).await;
    });
    socket.on("broadcast", |s: SocketRef, Data::<Value>(d), ack: AckSender| async move {
        ack.send(&true).ok();
        let _ = s.broadcast().emit("broadcast-back", &d).await;
    });
    socket.on("call-me", |s: SocketRef, Data::<Value>(d)| async move {
        let Ok(stream) = s.timeout(Duration::from_secs(5)).emit_with_ack::<_, Value>("ping-back", &d) else { return };
        if let Ok(v) = stream.await {
            s.emit("pong-result", &v).ok();
        }
    });
    socket.on("disconnect-me", |s: SocketRef| async move {
        s.disconnect().ok();
    });
    // Last, once every handler is registered: socketioxide runs this connect handler as a task
    // of its own after answering CONNECT, so an event the client sends right after CONNECT can
    // arrive before the `on(...)` above and be dropped; clients that wait for `auth` (the
    // load generator does) never hit that window.
    socket.emit("auth", &auth).ok();
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:3000".into());
    let threads: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(1);
    let ping_interval: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(300);
    let ping_timeout: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(200);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().expect("a runtime");
    rt.block_on(async move {
        let (svc, io) = SocketIo::builder()
            .ping_interval(Duration::from_millis(ping_interval))
            .ping_timeout(Duration::from_millis(ping_timeout))
            .max_payload(1_000_000)
            .build_svc();
        io.ns("/", contract);
        io.ns("/custom", contract);
        let listener = TcpListener::bind(&addr).await.expect("bind");
        println!("socketioxide-contract listening on {}", listener.local_addr().unwrap());
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let svc = svc.clone();
            tokio::spawn(async move {
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades().await;
            });
        }
    });
}
