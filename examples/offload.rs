//! Handlers that need I/O, done off the worker: every handler runs on the worker thread that
//! serves all the clients of its core, so a handler that blocks (a database query, a file
//! read, an HTTP call) stalls every one of them. Hand the work to a tokio runtime (or a thread
//! pool) and answer later with the `Send` handles:
//!
//! - `lookup` (with an ack): the handler takes the ack out with `Socket::defer_ack` and returns
//!   at once; a tokio task does the (here simulated) async query and answers the ack.
//! - `report` (with an ack): blocking work goes to `spawn_blocking`, never the worker.
//! - connecting: a deferred middleware checks the `token` of the CONNECT auth on the runtime
//!   and accepts with the user's name attached to the socket (`Socket::data`), or refuses;
//!   the client's packets wait meanwhile. `whoami` answers from that data.
//!
//! `cargo run --release --example offload -- 127.0.0.1:3000`, then connect a Socket.IO client
//! with `auth: { token: "alice-token" }` and `emitWithAck("lookup", 42)`.

use std::time::Duration;

use serde_json::json;
use shardcast::app::{Namespace, Server};

/// Stands for a database: an async lookup that takes a while.
async fn query_user(id: u64) -> serde_json::Value {
    tokio::time::sleep(Duration::from_millis(20)).await;
    json!({ "id": id, "name": format!("user-{id}") })
}

/// Stands for a token check against an auth service.
async fn check_token(token: Option<String>) -> Option<String> {
    tokio::time::sleep(Duration::from_millis(5)).await;
    token.and_then(|t| t.strip_suffix("-token").map(str::to_string))
}

fn main() {
    let bind = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    // The runtime lives beside the workers; handlers only hand it work.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_time().build().expect("a tokio runtime");
    let (r1, r2, r3) = (rt.handle().clone(), rt.handle().clone(), rt.handle().clone());
    let ns = Namespace::new()
        .use_deferred_middleware(move |hs, decision| {
            // The handshake is the worker's; copy what the task needs.
            let token = hs.auth.as_ref().and_then(|a| a.get("token")).and_then(|t| t.as_str()).map(str::to_string);
            r1.spawn(async move {
                match check_token(token).await {
                    Some(user) => decision.accept_with_data(user),
                    None => decision.refuse(json!({ "message": "not authorized" })),
                }
            });
        })
        .on("lookup", move |s, ev| {
            let id = ev.args.first().and_then(|v| v.as_u64()).unwrap_or(0);
            let Some(ack) = ev.ack else { return };
            // Past the socket's pending-ack limit there is no handle: the client gets no answer.
            let Ok(reply) = s.defer_ack(ack) else { return };
            r2.spawn(async move { reply.send(&[query_user(id).await]) });
        })
        .on("report", move |s, ev| {
            let Some(reply) = ev.ack.and_then(|a| s.defer_ack(a).ok()) else { return };
            let rows = ev.args.len();
            r3.spawn_blocking(move || {
                // Blocking is fine here, on tokio's blocking pool.
                std::thread::sleep(Duration::from_millis(10));
                reply.send(&[json!({ "rows": rows })]);
            });
        })
        .on("whoami", |s, _| {
            let me = s.data::<String>().cloned().unwrap_or_default();
            s.emit("me", &[json!(me)]);
        });
    let server = Server::builder().bind(bind.parse().expect("an address like 127.0.0.1:3000")).namespace("/", ns).start().expect("io_uring is available");
    println!("offload example listening on {}", server.local_addr());
    let _ = server.wait_for_signal();
    server.shutdown();
    drop(rt);
}
