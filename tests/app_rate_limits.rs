//! Limits on what clients send, in the deterministic harness (two workers, the contract app,
//! the harness's clock): a socket's event rate and byte rate (past either, the socket is
//! disconnected with a DISCONNECT), an address's open connections and connection rate over
//! both workers (past either, HTTP 429 before any request is read); each counted.

mod sim_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shardcast::app::namespace::Namespaces;
use shardcast::app::worker::SioWorker;
use shardcast::app::{contract, SocketLimits};
use shardcast::engine::address::AddressLimits;
use shardcast::engine::EngineConfig;
use shardcast::proto::sio::Limits;
use shardcast::rt::sim::ClientId;
use sim_support::*;

type S = EioSim<SioWorker>;

fn server(limits: SocketLimits, address: Option<AddressLimits>) -> S {
    let mut nss = Namespaces::default();
    nss.insert("/", contract::namespace());
    let nss = Arc::new(nss);
    let cfg = EngineConfig { address_limits: address, ..engine_cfg() };
    let rt = worker_cfg(&cfg);
    sim_with_handler(2, cfg, rt, move || SioWorker::with_socket_limits(nss.clone(), Limits::default(), limits))
}

fn joined(s: &mut S, w: usize) -> ClientId {
    let (c, _, _) = ws_session(s, w);
    s.write(c, &client_text("40"));
    s.run();
    let got = texts(&s.read(c));
    assert!(got[0].starts_with("40{"), "{got:?}");
    c
}

fn say(s: &mut S, c: ClientId, text: &str) -> Vec<String> {
    s.write(c, &client_text(text));
    s.run();
    texts(&s.read(c))
}

#[test]
fn a_socket_past_its_event_rate_is_disconnected() {
    let mut s = server(SocketLimits { max_event_rate: Some(2), ..SocketLimits::default() }, None);
    let c = joined(&mut s, 0);
    assert_eq!(say(&mut s, c, r#"42["message",1]"#), [r#"42["message-back",1]"#]);
    assert_eq!(say(&mut s, c, r#"42["message",2]"#), [r#"42["message-back",2]"#], "a burst of 2");
    s.advance(Duration::from_millis(500));
    assert_eq!(say(&mut s, c, r#"42["message",3]"#), [r#"42["message-back",3]"#], "one more per 500 ms");
    assert_eq!(say(&mut s, c, r#"42["message",4]"#), ["41"], "past the rate: DISCONNECT");
    let stats = s.shard(0).service.handler().stats();
    assert_eq!((stats.event_rate_exceeded, stats.byte_rate_exceeded), (1, 0));
}

#[test]
fn a_socket_past_its_byte_rate_is_disconnected() {
    let mut s = server(SocketLimits { max_byte_rate: Some(100), ..SocketLimits::default() }, None);
    let c = joined(&mut s, 1);
    let big = format!(r#"42["message","{}"]"#, "x".repeat(60));
    assert_eq!(say(&mut s, c, &big).len(), 1);
    assert_eq!(say(&mut s, c, &big), ["41"], "120 bytes within a second of a 100 B/s budget");
    assert_eq!(s.shard(1).service.handler().stats().byte_rate_exceeded, 1);
}

fn from(s: &mut S, w: usize, ip: [u8; 4], port: u16) -> (ClientId, u16) {
    let c = s.connect_from(w, SocketAddr::from((ip, port)));
    s.write(c, &get("/engine.io/?EIO=4&transport=polling"));
    s.run();
    (c, one_response(&s.read(c)).status)
}

#[test]
fn an_address_past_its_connection_count_or_rate_gets_429_across_workers() {
    let mut s = server(SocketLimits::default(), Some(AddressLimits::new(Some(2), None)));
    let a = [10, 0, 0, 1];
    let (c1, st1) = from(&mut s, 0, a, 1);
    let (_, st2) = from(&mut s, 1, a, 2);
    let (_, st3) = from(&mut s, 1, a, 3);
    assert_eq!((st1, st2, st3), (200, 200, 429), "two open connections over both workers");
    assert_eq!(from(&mut s, 0, [10, 0, 0, 2], 1).1, 200, "another address");
    s.close(c1);
    s.run();
    assert_eq!(from(&mut s, 0, a, 4).1, 200, "a closed connection frees its place");
    assert_eq!(s.shard(1).service.stats().address_too_many, 1);

    let mut s = server(SocketLimits::default(), Some(AddressLimits::new(None, Some(2))));
    let statuses: Vec<u16> = (0..3).map(|i| from(&mut s, i % 2, a, i as u16).1).collect();
    assert_eq!(statuses, [200, 200, 429], "a burst of 2");
    s.advance(Duration::from_millis(500));
    assert_eq!(from(&mut s, 1, a, 9).1, 200, "one more per 500 ms");
    assert_eq!(s.shard(0).service.stats().address_too_fast, 1);
}
