//! A feed publisher: a thread outside the workers (it could be a tokio task reading a market
//! data feed) publishes to rooms through the `ServerHandle`; clients subscribe by joining.
//!
//! `cargo run --release --example feed -- 127.0.0.1:3000`, then connect a Socket.IO client,
//! emit `subscribe` with `"prices"` and watch `price` events arrive.

use std::time::Duration;

use serde_json::json;
use shardcast::app::{Namespace, Server};

fn main() {
    let bind = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:3000".into());
    let ns = Namespace::new()
        .on("subscribe", |s, ev| {
            if let Some(topic) = ev.args.first().and_then(|t| t.as_str()).map(str::to_string) {
                s.join(&topic);
            }
        })
        .on("unsubscribe", |s, ev| {
            if let Some(topic) = ev.args.first().and_then(|t| t.as_str()).map(str::to_string) {
                s.leave(&topic);
            }
        });
    let server = Server::builder().bind(bind.parse().expect("an address like 127.0.0.1:3000")).namespace("/", ns).start().expect("io_uring is available");
    println!("feed listening on {}", server.local_addr());
    let handle = server.handle();
    let publisher = std::thread::spawn(move || {
        let mut price = 100.0_f64;
        for seq in 0u64.. {
            price += ((seq * 7919) % 11) as f64 / 10.0 - 0.5;
            // Encoded once here; every worker sends the same bytes to its subscribers.
            if handle.of("/").to("prices").volatile().emit("price", &[json!({"seq": seq, "price": price})]).is_err() {
                break; // the server has shut down
            }
            if seq % 50 == 0 {
                match handle.of("/").to("prices").count().wait() {
                    Ok(n) => println!("seq {seq}: {n} subscribers"),
                    Err(_) => break,
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    publisher.join().unwrap();
}
