//! The README's library example as a complete program: a namespace that greets and relays
//! chat, a thread that emits through the `ServerHandle`, and a clean shutdown on Ctrl-C or
//! SIGTERM.
//!
//!     cargo run --example hello -- 127.0.0.1:3000

use serde_json::json;
use shardcast::app::signal::Termination;
use shardcast::app::{Namespace, Server};

fn main() {
    let bind = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let server = Server::builder()
        .bind(bind.parse().expect("an address like 127.0.0.1:3000"))
        .namespace("/", Namespace::new().on_connection(|s| s.emit("hello", &[json!("welcome")])).on("chat", |s, ev| s.broadcast().emit("chat", &ev.args)))
        .start()
        .expect("the server starts (io_uring available, address free)");
    // Catch Ctrl-C and SIGTERM before saying we serve: a signal sent right after this line is
    // then a clean shutdown, never the default action.
    let stop = Termination::catch().expect("catching SIGINT and SIGTERM");
    println!("hello listening on {}", server.local_addr());
    let handle = server.handle(); // Send + Sync + Clone: emit from any thread
    std::thread::spawn(move || {
        // Ends once the server has shut down (every call then answers Err(Stopped)).
        while handle.of("/").emit("news", &[json!({"headline": "shardcast is up"})]).is_ok() {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    });
    stop.wait().expect("waiting for Ctrl-C"); // SIGINT or SIGTERM
    server.shutdown(); // closes every session politely, then the workers exit
}
