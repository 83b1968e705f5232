//! The admin UI's development mode against the library server on the wire (raw WebSockets):
//! the user's own `on_any` and `on_any_outgoing` hooks keep running beside the admin UI's, data
//! a handler shares is told as `socket_updated`, and a binary event reaches the admin client as
//! a binary `event_received` with its attachment. (`tests/interop.rs`,
//! `admin_ui_matches_node_instrument`, compares the whole protocol with Node's.)

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use shardcast::app::{AdminAuth, AdminMode, AdminUi, Namespace, RunningServer, Server};
use shardcast::engine::EngineConfig;
use support::Ws;

fn start(ns: Namespace) -> RunningServer {
    Server::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .threads(2)
        .pin(false)
        .io(support::test_io())
        .namespace("/", ns)
        .admin_ui(AdminUi::new(AdminAuth::Disabled).mode(AdminMode::Development))
        .start()
        .expect("server starts")
}

fn open(server: &RunningServer) -> Ws {
    let mut ws = Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(Duration::from_secs(5));
    assert!(ws.recv_text().starts_with("0{"));
    ws
}

/// The admin client's next text message that is not `server_stats` (emitted every 2 s).
fn next_admin(admin: &mut Ws) -> String {
    loop {
        let m = admin.recv_eio();
        if !m.contains("\"server_stats\"") {
            return m;
        }
    }
}

/// The event name and arguments of `42/admin,[...]` (or `451-/admin,[...]`).
fn event(m: &str) -> (String, Vec<Value>) {
    let json = &m[m.find('[').unwrap_or_else(|| panic!("no event in {m:?}"))..];
    let Value::Array(mut all) = serde_json::from_str(json).unwrap() else { panic!("{m}") };
    let name = all.remove(0).as_str().unwrap().to_string();
    (name, all)
}

#[test]
fn user_hooks_keep_running_shared_data_is_told_and_binary_events_keep_their_bytes() {
    let seen_in = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen_out = Arc::new(Mutex::new(Vec::<String>::new()));
    let (i, o) = (seen_in.clone(), seen_out.clone());
    let ns = Namespace::new()
        .on_connection(|s| s.set_shared_data(json!({ "user": "u1" })))
        .on_any(move |_, ev| i.lock().unwrap().push(ev.name.clone()))
        .on_any_outgoing(move |out| o.lock().unwrap().push(out.event.to_string()))
        .on("hello", |s, ev| s.emit("back", &ev.args));
    let server = start(ns);

    let mut admin = open(&server);
    admin.send_text("40/admin,");
    let mut names = Vec::new();
    while names.last().map(String::as_str) != Some("all_sockets") {
        let m = next_admin(&mut admin);
        names.push(if m.starts_with("40/admin,") { "CONNECT".to_string() } else { event(&m).0 });
    }
    assert_eq!(names, ["room_joined", "CONNECT", "socket_connected", "config", "all_sockets"]);

    let mut client = open(&server);
    client.send_text("40");
    let sid = client.recv_eio();
    let id = sid.split("\"sid\":\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let (e, args) = event(&next_admin(&mut admin));
    assert_eq!((e.as_str(), &args[..2]), ("room_joined", &[json!("/"), json!(id)][..]));
    let (e, args) = event(&next_admin(&mut admin));
    assert_eq!(e, "socket_connected");
    assert_eq!((&args[0]["id"], &args[0]["data"], &args[0]["rooms"]), (&json!(id), &json!({}), &json!([id])));
    let (e, args) = event(&next_admin(&mut admin));
    assert_eq!((e.as_str(), &args[0]), ("socket_updated", &json!({ "id": id, "nsp": "/", "data": { "user": "u1" } })));

    client.send_text(r#"42["hello","x"]"#);
    assert_eq!(client.recv_eio(), r#"42["back","x"]"#);
    let (e, args) = event(&next_admin(&mut admin));
    assert_eq!((e.as_str(), &args[..3]), ("event_received", &[json!("/"), json!(id), json!(["hello", "x"])][..]));
    let (e, args) = event(&next_admin(&mut admin));
    assert_eq!((e.as_str(), &args[..3]), ("event_sent", &[json!("/"), json!(id), json!(["back", "x"])][..]));

    // A binary event: the admin gets it with the same bytes, as a binary packet of its own.
    client.send_text(r#"451-["bin",{"_placeholder":true,"num":0}]"#);
    client.send_binary(&[1, 2, 3]);
    let head = next_admin(&mut admin);
    assert!(head.starts_with("451-/admin,"), "{head}");
    let (e, args) = event(&head);
    assert_eq!((e.as_str(), &args[2]), ("event_received", &json!(["bin", {"_placeholder": true, "num": 0}])));
    let bytes = admin.recv().expect("the attachment");
    assert_eq!((bytes.opcode, bytes.payload), (2, vec![1, 2, 3]), "the attachment, a binary message");

    // The user's hooks saw what they see without the admin UI (the admin client may hear of
    // `bin` before the client's worker has run the user's hook: one more round trip on the
    // client orders them).
    client.send_text(r#"42["hello","y"]"#);
    assert_eq!(client.recv_eio(), r#"42["back","y"]"#);
    assert_eq!(seen_in.lock().unwrap().clone(), ["hello", "bin", "hello"]);
    assert_eq!(seen_out.lock().unwrap().clone(), ["back", "back"]);
    server.shutdown();
}

/// A login flood from one address (wrong password for the right user, more connections than
/// the login queue holds) does not keep the right login from another address out: one address
/// has at most two logins waiting for the bcrypt thread, the others are refused at once.
#[test]
fn a_login_flood_from_one_address_does_not_lock_another_out() {
    let hash = bcrypt::hash("s3cret", 8).unwrap();
    let server = Server::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .threads(2)
        .pin(false)
        .io(support::test_io())
        .engine(EngineConfig { trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()], ..EngineConfig::default() })
        .admin_ui(AdminUi::new(AdminAuth::basic("admin", &hash).unwrap()))
        .start()
        .expect("server starts");
    let open_from = |ip: &str| {
        let mut ws = Ws::connect(server.local_addr(), "/socket.io/?EIO=4&transport=websocket", &format!("X-Forwarded-For: {ip}\r\n"));
        ws.set_timeout(Duration::from_secs(20));
        assert!(ws.recv_text().starts_with("0{"));
        ws
    };
    // More than the whole login queue (64), all open before any login is sent.
    let mut flood: Vec<Ws> = (0..100).map(|_| open_from("203.0.113.9")).collect();
    let mut admin = open_from("198.51.100.7");
    for ws in &mut flood {
        ws.send_text(r#"40/admin,{"type":"basic","username":"admin","password":"wrong"}"#);
    }
    admin.send_text(r#"40/admin,{"type":"basic","username":"admin","password":"s3cret"}"#);

    let first = admin.recv_eio();
    assert!(first.starts_with(r#"42/admin,["session",""#), "the real admin got {first}");
    assert!(admin.recv_eio().starts_with("40/admin,{\"sid\":"));
    let (mut invalid, mut too_many) = (0, 0);
    for ws in &mut flood {
        match ws.recv_eio().as_str() {
            r#"44/admin,{"message":"invalid credentials"}"# => invalid += 1,
            r#"44/admin,{"message":"too many login attempts"}"# => too_many += 1,
            other => panic!("a wrong password got {other}"),
        }
    }
    assert_eq!(invalid + too_many, 100);
    assert!(too_many >= 50, "the flood's address queued at most two at a time: {invalid} checked, {too_many} refused at once");

    // A reconnect with the session id does not wait for the thread.
    let id = event(&first).1[0].as_str().unwrap().to_string();
    let mut again = open_from("198.51.100.7");
    again.send_text(&format!(r#"40/admin,{{"sessionId":"{id}"}}"#));
    assert!(again.recv_eio().starts_with("40/admin,{\"sid\":"));
    server.shutdown();
}

/// The admin events of the workers found in a scrape, dropped for the budget.
fn dropped(server: &RunningServer) -> u64 {
    let workers = server.scraper().scrape(Duration::from_secs(5)).expect("scrape");
    workers.iter().flat_map(|w| &w.samples).filter(|s| s.name == "shardcast_admin_ui_events_dropped_total").map(|s| s.value).sum()
}

/// Development mode: a few broadcasts to many sockets (one `event_sent` per recipient) go past
/// the workers' budget of admin events: the rest are dropped and counted, and the admin client
/// gets exactly the events that were not dropped and stays connected.
#[test]
fn admin_events_past_the_budget_are_dropped_and_counted_and_the_admin_stays() {
    const CLIENTS: usize = 50;
    const BROADCASTS: usize = 4;
    let ns = Namespace::new().on("all", |s, ev| {
        let _ = s.handle().of("/").emit("news", &ev.args);
    });
    let server = Server::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .threads(2)
        .pin(false)
        .io(support::test_io())
        .namespace("/", ns)
        .admin_ui(AdminUi::new(AdminAuth::Disabled).mode(AdminMode::Development).events_per_second(20))
        .start()
        .expect("server starts");
    let mut admin = open(&server);
    admin.send_text("40/admin,");
    // Connected and watching (its own room_joined and socket_connected came before).
    while !next_admin(&mut admin).contains("\"all_sockets\"") {}
    let mut clients: Vec<Ws> = (0..CLIENTS)
        .map(|_| {
            let mut c = open(&server);
            c.send_text("40");
            assert!(c.recv_eio().starts_with("40{\"sid\""));
            c
        })
        .collect();
    for _ in 0..BROADCASTS {
        clients[0].send_text(r#"42["all",1]"#);
    }
    for c in &mut clients {
        for _ in 0..BROADCASTS {
            assert_eq!(c.recv_eio(), r#"42["news",1]"#);
        }
    }
    // Every event the tap produced is produced by now (`event_sent` before the packet left):
    // each client's room_joined and socket_connected, one event_received per `all` and one
    // event_sent per recipient of each broadcast (and the admin's own two, within the budget).
    let produced = 2 * CLIENTS + BROADCASTS * (1 + CLIENTS);
    let dropped = dropped(&server) as usize;
    assert!(dropped > 0 && dropped < produced, "{dropped} of {produced} dropped");
    let mut told = 0;
    while told < produced - dropped {
        let (e, _) = event(&next_admin(&mut admin));
        assert!(["room_joined", "socket_connected", "event_received", "event_sent"].contains(&e.as_str()), "{e}");
        told += 1;
    }
    // Still connected: its action reaches the clients.
    admin.send_text(r#"42/admin,["emit","/",null,"hi"]"#);
    assert_eq!(clients[1].recv_eio(), r#"42["hi"]"#);
    server.shutdown();
}
