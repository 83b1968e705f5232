//! Knowing the client, against the library server on the wire: `allow_request` refusing a
//! handshake as Node does (403 JSON for polling, 400 text for a WebSocket) and seeing method,
//! path, headers and address; the client's address (the peer, or behind a trusted proxy what
//! `X-Forwarded-For` / `Forwarded` say, never what an untrusted peer says); a CORS origin
//! predicate beside the fixed list; cookie attributes; `allow_upgrades`; the connect timeout.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use shardcast::app::{Namespace, RunningServer, Server, ServerBuilder};
use shardcast::engine::{CookieAttrs, EngineConfig, SameSite};
use shardcast::proto::http::{AllowedOrigins, CorsConfig};
use support::{Http, Ws};

const BOUND: Duration = Duration::from_secs(5);

fn start(f: impl FnOnce(ServerBuilder) -> ServerBuilder) -> RunningServer {
    let ns = Namespace::new().on_connection(|s| {
        let hs = s.handshake();
        let (address, peer) = (hs.address.map(|a| a.to_string()), hs.peer.map(|p| p.ip().to_string()));
        s.emit("whoami", &[json!(address), json!(peer)]);
    });
    f(Server::builder().bind("127.0.0.1:0".parse().unwrap()).threads(1).pin(false).io(support::test_io()).namespace("/", ns)).start().expect("server starts")
}

/// Connects over WebSocket with extra request headers; returns the `whoami` event.
fn whoami(server: &RunningServer, headers: &str) -> String {
    let mut ws = Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", headers);
    ws.set_timeout(BOUND);
    assert!(ws.recv_text().starts_with("0{"));
    ws.send_text("40");
    assert!(ws.recv_eio().starts_with("40{\"sid\""));
    ws.recv_eio()
}

#[test]
fn allow_request_sees_the_request_and_refuses_as_node_does() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let server = start(|b| {
        b.allow_request(move |r| {
            let agent = r.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("user-agent")).map(|(_, v)| v.clone());
            s2.lock().unwrap().push((r.method.to_string(), r.path.to_string(), r.address.map(|a| a.to_string())));
            match agent.as_deref() {
                Some("bot") => Err(Some("no bots".into())),
                Some("anon") => Err(None),
                _ => Ok(()),
            }
        })
    });
    let addr = server.local_addr();
    let r = Http::connect(addr).get("/socket.io/?EIO=4&transport=polling", "User-Agent: bot\r\n");
    assert_eq!((r.status, r.text().as_str(), r.header("content-type")), (403, r#"{"code":4,"message":"no bots"}"#, Some("application/json")));
    let r = Http::connect(addr).get("/socket.io/?EIO=4&transport=polling", "User-Agent: anon\r\n");
    assert_eq!((r.status, r.text().as_str()), (403, r#"{"code":4,"message":"Forbidden"}"#));
    // A WebSocket handshake is refused as Node's abortUpgrade does: 400, the message as text.
    let r = Ws::try_connect(addr, "/socket.io/?EIO=4&transport=websocket", "User-Agent: bot\r\n").err().expect("refused");
    assert_eq!((r.status, r.text().as_str()), (400, "no bots"));
    // Allowed: a session opens. Requests of an existing session are not asked about again.
    let sid = support::handshake(addr, "/socket.io/");
    let n = seen.lock().unwrap().len();
    let r = Http::connect(addr).post(&format!("/socket.io/?EIO=4&transport=polling&sid={sid}"), b"40", "");
    assert_eq!(r.status, 200);
    assert_eq!(seen.lock().unwrap().len(), n, "only handshakes are filtered");
    assert_eq!(seen.lock().unwrap()[0], ("GET".to_string(), "/socket.io/".to_string(), Some("127.0.0.1".to_string())));
    server.shutdown();
}

#[test]
fn the_client_address_is_the_peer_unless_a_trusted_proxy_says_otherwise() {
    let direct = start(|b| b);
    let xff = "X-Forwarded-For: 203.0.113.9\r\n";
    assert_eq!(whoami(&direct, ""), r#"42["whoami","127.0.0.1","127.0.0.1"]"#);
    assert_eq!(whoami(&direct, xff), r#"42["whoami","127.0.0.1","127.0.0.1"]"#, "an untrusted peer's header is ignored");
    direct.shutdown();

    let proxied = start(|b| b.engine(EngineConfig { trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()], ..EngineConfig::default() }));
    assert_eq!(whoami(&proxied, xff), r#"42["whoami","203.0.113.9","127.0.0.1"]"#);
    assert_eq!(whoami(&proxied, "X-Forwarded-For: 1.2.3.4, 203.0.113.9, 127.0.0.5\r\n"), r#"42["whoami","203.0.113.9","127.0.0.1"]"#);
    assert_eq!(whoami(&proxied, "Forwarded: for=\"[2001:db8::7]:4711\"\r\n"), r#"42["whoami","2001:db8::7","127.0.0.1"]"#);
    proxied.shutdown();
}

#[test]
fn a_cors_predicate_allows_origins_beside_the_fixed_list() {
    let cors = CorsConfig { origins: AllowedOrigins::List(vec!["http://fixed".into()]), ..CorsConfig::default() };
    let server = start(|b| b.engine(EngineConfig { cors, ..EngineConfig::default() }).cors_origin(|o| o.ends_with(".example.com")));
    let addr = server.local_addr();
    let target = "/socket.io/?EIO=4&transport=polling";
    for (origin, ok) in [("http://fixed", true), ("https://app.example.com", true), ("https://evil.test", false)] {
        let r = Http::connect(addr).get(target, &format!("Origin: {origin}\r\n"));
        assert_eq!(r.status == 200, ok, "{origin}: {} {}", r.status, r.text());
        if ok {
            assert_eq!(r.header("access-control-allow-origin"), Some(origin));
        }
    }
    server.shutdown();
}

#[test]
fn cookie_attributes_upgrades_off_and_the_connect_timeout() {
    let engine = EngineConfig {
        cookie: Some("io".into()),
        cookie_attrs: CookieAttrs { path: Some("/app".into()), same_site: Some(SameSite::None), secure: true, http_only: false },
        allow_upgrades: false,
        ..EngineConfig::default()
    };
    let server = start(|b| b.engine(engine).connect_timeout(Duration::from_millis(200)));
    let addr = server.local_addr();
    let r = support::get(addr, "/socket.io/?EIO=4&transport=polling");
    let open: serde_json::Value = serde_json::from_str(&r.text()[1..]).unwrap();
    let sid = open["sid"].as_str().unwrap();
    assert_eq!(r.header("set-cookie"), Some(format!("io={sid}; Path=/app; Secure; SameSite=None").as_str()));
    assert_eq!(open["upgrades"], json!([]), "no upgrade offered");
    let refused = Ws::try_connect(addr, &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"), "").err().expect("no upgrade");
    assert_eq!((refused.status, refused.text().as_str()), (400, r#"{"code":3,"message":"Bad request"}"#));

    // A WebSocket client that never joins a namespace is closed after the connect timeout.
    let mut ws = Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(BOUND);
    assert!(ws.recv_text().starts_with("0{"));
    let f = ws.recv().expect("a close frame");
    assert_eq!(f.opcode, 8, "{f:?}");
    server.shutdown();
}
