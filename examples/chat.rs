//! A chat server: users join rooms, messages go to everyone else in the room, typing
//! notifications are volatile, and the server says who left.
//!
//! `cargo run --release --example chat -- 127.0.0.1:3000`, then connect any Socket.IO client
//! and emit `join` with a room name, `say` with a text.

use serde_json::json;
use shardcast::app::{Namespace, Server};

fn main() {
    let bind = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let chat = Namespace::new()
        .use_middleware(|hs| match hs.auth.as_ref().and_then(|a| a.get("name")).and_then(|n| n.as_str()) {
            Some(n) if !n.is_empty() => Ok(()),
            _ => Err(json!({"message": "a name is required"})),
        })
        .on_connection(|s| {
            let name = s.handshake().auth.as_ref().and_then(|a| a.get("name")).cloned().unwrap_or_default();
            s.set_data(name.as_str().unwrap_or("?").to_string());
            s.emit("welcome", &[json!("pick a room with `join`")]);
        })
        .on("join", |s, ev| {
            let Some(room) = ev.args.first().and_then(|r| r.as_str()).map(str::to_string) else { return };
            let name = s.data::<String>().cloned().unwrap_or_default();
            s.join(&room);
            s.to(&room).emit("joined", &[json!(name)]);
            if let Some(a) = ev.ack {
                s.ack(a, &[json!(true)]);
            }
        })
        .on("say", |s, ev| {
            let name = s.data::<String>().cloned().unwrap_or_default();
            let rooms: Vec<String> = s.rooms().into_iter().filter(|r| r != s.id()).collect();
            for room in rooms {
                s.to(&room).emit("said", &[json!(name), ev.args.first().cloned().unwrap_or_default()]);
            }
        })
        .on("typing", |s, _| {
            let name = s.data::<String>().cloned().unwrap_or_default();
            s.broadcast().volatile().emit("typing", &[json!(name)]);
        })
        .on_disconnect(|s, reason| {
            let name = s.data::<String>().cloned().unwrap_or_default();
            s.within_namespace().emit("left", &[json!(name), json!(reason.as_str())]);
        });
    let server = Server::builder().bind(bind.parse().expect("an address like 127.0.0.1:3000")).namespace("/", chat).start().expect("io_uring is available");
    println!("chat listening on {}", server.local_addr());
    std::thread::park();
}
