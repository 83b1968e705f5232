//! The README's library example as a complete program: a namespace that greets and relays
//! chat, a thread that emits through the `ServerHandle`, and a clean shutdown on Ctrl-C or
//! SIGTERM.
//!
//!     cargo run --example hello -- 127.0.0.1:3000

use serde_json::json;
use shardcast::app::{Namespace, Server};

fn main() {
    let bind = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let server = Server::builder()
        .bind(bind.parse().expect("an address like 127.0.0.1:3000"))
        .namespace("/", Namespace::new().on_connection(|s| s.emit("hello", &[json!("welcome")])).on("chat", |s, ev| s.broadcast().emit("chat", &ev.args)))
        .start()
        .expect("the server starts (io_uring available, address free)");
    println!("hello listening on {}", server.local_addr());
    let handle = server.handle(); // Send + Sync + Clone: emit from any thread
    std::thread::spawn(move || {
        // Ends once the server has shut down (every call then answers Err(Stopped)).
        while handle.of("/").emit("news", &[json!({"headline": "shardcast is up"})]).is_ok() {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
    server.wait_for_signal().expect("waiting for Ctrl-C");
    server.shutdown(); // closes every session politely, then the workers exit
}
