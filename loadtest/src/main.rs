//! `shardcast-loadtest`: the load generator for large-fanout benchmarks against any server that
//! implements `shared/CONTRACT.md` (and raw WebSocket echo servers).
//!
//! Scenarios: `fanout`, `echo`, `conns`, `churn`; `compare a.json b.json` prints two runs side
//! by side. Every run prints its own CPU use, and with `--server-pid` the server's CPU per
//! delivery and memory per connection. Loopback only unless pointed elsewhere; bounded in count
//! and time; Ctrl-C prints the partial results.

mod client;
mod metrics;
mod report;
mod tls;
mod ws;

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;

use client::{Incoming, RawWs, Sio, Target};
use metrics::{histogram, Counters};
use report::{Latency, Report, ServerCost};

/// How long a client may take to connect (and join) before it counts as an error.
const SETUP_LIMIT: Duration = Duration::from_secs(10);

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

#[derive(Parser)]
#[command(name = "shardcast-loadtest", about = "Load generator for Socket.IO servers (shared/CONTRACT.md)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Transport {
    Websocket,
    Polling,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Protocol {
    /// Socket.IO over Engine.IO (the contract app).
    Sio,
    /// A plain WebSocket echo server.
    Raw,
}

#[derive(Args, Clone, Debug)]
struct Common {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:3000")]
    target: SocketAddr,
    /// More nodes of the same cluster (repeatable): `fanout` spreads its subscribers over
    /// `--target` and these, round robin; publishers stay on `--target`.
    #[arg(long = "also-target", value_name = "ADDR")]
    also_target: Vec<SocketAddr>,
    /// Endpoint path (`/socket.io/` for Socket.IO; any path for a raw echo server).
    #[arg(long, default_value = "/socket.io/")]
    path: String,
    /// Client threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, value_enum, default_value = "websocket")]
    transport: Transport,
    /// Sample this server process's CPU time and memory.
    #[arg(long, conflicts_with = "server_pidfile")]
    server_pid: Option<u32>,
    /// Like `--server-pid`, reading the pid from this file (as `shardcast --pidfile PATH`
    /// writes it).
    #[arg(long, value_name = "PATH")]
    server_pidfile: Option<String>,
    /// Exit non-zero when more than this percentage of the expected deliveries (or
    /// connections) was lost. Any failed connection also makes the exit non-zero.
    #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
    max_loss: f64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<String>,
    /// Write an SVG report (latency percentiles and throughput over time) to this file.
    #[arg(long)]
    svg: Option<String>,
    /// A label for the report (e.g. the server's name).
    #[arg(long, default_value = "")]
    label: String,
    /// Connect with TLS (`wss://`; rustls), trusting the PEM certificate(s) of `--tls-ca`
    /// for the name `localhost`. WebSocket transports only.
    #[arg(long, requires = "tls_ca")]
    tls: bool,
    /// The certificate the server is trusted by (with `--tls`), e.g. its self-signed one.
    #[arg(long, value_name = "PATH")]
    tls_ca: Option<String>,
}

impl Common {
    /// Where the clients connect, with the TLS configuration of `--tls`.
    fn target(&self) -> Target {
        let tls = self.tls.then(|| {
            if self.transport == Transport::Polling {
                eprintln!("shardcast-loadtest: --tls supports the WebSocket transport only");
                std::process::exit(2);
            }
            let ca = self.tls_ca.as_deref().expect("clap requires --tls-ca with --tls");
            tls::client_config(ca).unwrap_or_else(|e| {
                eprintln!("shardcast-loadtest: --tls-ca {ca}: {e}");
                std::process::exit(2);
            })
        });
        Target { addr: self.target, path: self.path.clone(), tls }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// C subscribers in K rooms; publishers emit `to-room` at R messages/s for D seconds.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Messages per second, all publishers together.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Payload bytes per message.
        #[arg(long, default_value_t = 100)]
        size: usize,
        /// Subscriber connections per second while ramping up (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        ramp_rate: f64,
    },
    /// C clients in a closed `message` → `message-back` loop (or raw WebSocket echo).
    Echo {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 100)]
        size: usize,
        #[arg(long, value_enum, default_value = "sio")]
        protocol: Protocol,
    },
    /// Ramp to N idle connections, hold them, report connect rate and memory per connection.
    Conns {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Seconds to hold them.
        #[arg(long, default_value_t = 10)]
        hold: u64,
        #[arg(long, value_enum, default_value = "sio")]
        protocol: Protocol,
        /// Connections per second during the ramp (0: as fast as possible).
        #[arg(long, default_value_t = 0.0)]
        ramp_rate: f64,
        /// Offer permessage-deflate (`permessage-deflate; client_max_window_bits`), and have each
        /// connection exchange one compressed message each way (`message` → `message-back`,
        /// 2 KiB) before it idles, so the server's lazily allocated zlib state is exercised.
        /// Socket.IO over WebSocket only.
        #[arg(long)]
        deflate: bool,
    },
    /// connect → join → disconnect cycles, with the latency of each step.
    Churn {
        #[command(flatten)]
        common: Common,
        /// Concurrent cycling clients.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
    },
    /// Prints two JSON reports side by side with ratios.
    Compare { a: String, b: String },
}

/// Runs `f(thread)` on `threads` OS threads, each with its own single-threaded runtime, and
/// returns what each produced.
fn on_threads<T: Send + 'static, F, Fut>(threads: usize, f: F) -> Vec<T>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    let f = Arc::new(f);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let f = f.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, f(t))
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("a client thread")).collect()
}

/// Keeps a client thread's tasks running until `done` (or Ctrl-C): returning drops them.
async fn run_until(done: &AtomicBool) {
    while !done.load(Ordering::Relaxed) && !STOP.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Loopback source address for connection `i`: 4,096 per address, so no address's ephemeral
/// port range gets crowded (the kernel's port search slows down as it fills) and counts past
/// one address's ~28,000 ports work.
fn source(i: usize, target: &SocketAddr) -> Option<IpAddr> {
    if !target.ip().is_loopback() || !target.is_ipv4() {
        return None;
    }
    let n = i / 4096;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 1 + (n / 250) as u8, 1 + (n % 250) as u8)))
}

fn payload(size: usize) -> String {
    "x".repeat(size)
}

fn wait_until(cond: impl Fn() -> bool, limit: Duration) -> bool {
    let t = Instant::now();
    while !cond() {
        if STOP.load(Ordering::Relaxed) || t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Live progress on stderr while a phase runs.
fn progress(counters: Arc<Counters>, label: &'static str) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let h = std::thread::spawn(move || {
        let bar = indicatif::ProgressBar::new_spinner();
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let mut ticks = 0u64;
        let mut last = (Instant::now(), counters.received.load(Ordering::Relaxed));
        while !d.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(500));
            let now = (Instant::now(), counters.received.load(Ordering::Relaxed));
            let rate = (now.1 - last.1) as f64 / now.0.duration_since(last.0).as_secs_f64();
            last = now;
            let line = format!(
                "{label}: connected {} | sent {} | received {} | {:.0}/s | errors {}",
                counters.connected.load(Ordering::Relaxed),
                counters.sent.load(Ordering::Relaxed),
                now.1,
                rate,
                counters.errors.load(Ordering::Relaxed)
            );
            // Not a terminal (a script's log): a plain line every 5 s instead of the spinner.
            ticks += 1;
            if !tty && ticks % 10 == 0 {
                eprintln!("{line}");
            }
            bar.set_message(line);
            bar.tick();
        }
        bar.finish_and_clear();
    });
    (done, h)
}

struct Window {
    t0: Instant,
    own0: u64,
    server0: Option<metrics::ProcSample>,
}

impl Window {
    fn open(pid: Option<u32>) -> Window {
        Window { t0: Instant::now(), own0: metrics::own_cpu_us(), server0: pid.and_then(metrics::sample) }
    }

    /// Closes the window: (seconds, own CPU µs, server (CPU µs, RSS before, RSS after)).
    fn close(&self, pid: Option<u32>) -> (f64, u64, Option<(u64, u64, u64)>) {
        let own = metrics::own_cpu_us() - self.own0;
        let server = match (self.server0, pid.and_then(metrics::sample)) {
            (Some(a), Some(b)) => Some((b.cpu_us - a.cpu_us, a.rss, b.rss)),
            _ => None,
        };
        (self.t0.elapsed().as_secs_f64(), own, server)
    }
}

fn merge(hs: Vec<Histogram<u64>>) -> Histogram<u64> {
    let mut all = histogram();
    for h in hs {
        all.add(h).expect("same bounds");
    }
    all
}

#[allow(clippy::too_many_arguments)]
fn fanout(c: Common, subscribers: usize, rooms: usize, publishers: usize, rate: u64, duration: u64, size: usize, ramp_rate: f64) -> Report {
    let counters = Arc::new(Counters::new(duration as usize + 60));
    let expected = Arc::new(AtomicU64::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let target = c.target();
    let nodes: Arc<Vec<Target>> =
        Arc::new(std::iter::once(c.target).chain(c.also_target.iter().copied()).map(|addr| Target { addr, ..target.clone() }).collect());
    let polling = c.transport == Transport::Polling;
    let threads = c.threads;
    let body = payload(size);
    let (cs, ex, g, d) = (counters.clone(), expected.clone(), go.clone(), done.clone());
    // Subscribers that joined, per room: a message is expected once by each of them (one that
    // failed to join is an error, not a loss).
    let joined_in: Arc<Vec<AtomicU64>> = Arc::new((0..rooms).map(|_| AtomicU64::new(0)).collect());
    let ji = joined_in.clone();
    // Publishers that have sent their last message.
    let published = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pd = published.clone();
    let (pdone, prog) = progress(counters.clone(), "fanout");
    let runner = std::thread::spawn(move || {
        on_threads(threads, move |t| {
            let (counters, expected, go, done, target, body, joined_in, nodes) =
                (cs.clone(), ex.clone(), g.clone(), d.clone(), target.clone(), body.clone(), ji.clone(), nodes.clone());
            let published = pd.clone();
            async move {
                let hist = Rc::new(RefCell::new(histogram()));
                let mut tasks = Vec::new();
                for i in (t..subscribers).step_by(threads) {
                    let (counters, target, hist, joined_in) = (counters.clone(), nodes[i % nodes.len()].clone(), hist.clone(), joined_in.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        if ramp_rate > 0.0 {
                            tokio::time::sleep_until((counters.start + Duration::from_secs_f64(i as f64 / ramp_rate)).into()).await;
                        }
                        let step = std::cell::Cell::new("connect");
                        let joined = tokio::time::timeout(SETUP_LIMIT, async {
                            let mut s = Sio::connect(&target, polling, source(i, &target.addr)).await.map_err(|e| format!("connect: {e}"))?;
                            step.set("join");
                            s.call(1, &format!(r#"["join","r{}"]"#, i % rooms), |_| {}).await.map_err(|e| format!("join: {e}"))?;
                            Ok::<_, String>(s)
                        });
                        let mut s = match joined.await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => return counters.error(&e),
                            Err(_) => return counters.error(&format!("{}: no answer in {SETUP_LIMIT:?}", step.get())),
                        };
                        joined_in[i % rooms].fetch_add(1, Ordering::Relaxed);
                        counters.connected.fetch_add(1, Ordering::Relaxed);
                        loop {
                            let mut n = 0;
                            let open = s.recv(|p| {
                                if let Incoming::Event(e) = p {
                                    if let Some(ts) = client::timestamp(e) {
                                        let lat = counters.now_ns().saturating_sub(ts) / 1000;
                                        let _ = hist.borrow_mut().record(lat.max(1));
                                        n += 1;
                                    }
                                }
                            });
                            let open = matches!(open.await, Ok(true));
                            counters.delivered_n(n);
                            if !open {
                                counters.closed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }));
                }
                for p in (t..publishers).step_by(threads) {
                    let (counters, expected, go, target, body, joined_in, published) =
                        (counters.clone(), expected.clone(), go.clone(), target.clone(), body.clone(), joined_in.clone(), published.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        let mut s = match Sio::connect(&target, polling, source(subscribers + p, &target.addr)).await {
                            Ok(c) => c,
                            Err(e) => return counters.error(&format!("connect: {e}")),
                        };
                        while !go.load(Ordering::Relaxed) {
                            if !matches!(s.poll().await, Ok(true)) {
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        let per_pub = rate as f64 / publishers as f64;
                        let start = Instant::now();
                        let mut sent = 0u64;
                        let mut tick = tokio::time::interval(Duration::from_millis(1));
                        let mut k = p;
                        while start.elapsed() < Duration::from_secs(duration) {
                            tick.tick().await;
                            let due = (start.elapsed().as_secs_f64() * per_pub) as u64;
                            while sent < due {
                                let room = k % rooms;
                                k += publishers;
                                let pkt = format!(r#"["to-room","r{room}",{{"t":{},"p":"{body}"}}]"#, counters.now_ns());
                                if s.emit(&pkt).await.is_err() {
                                    counters.errors.fetch_add(1, Ordering::Relaxed);
                                    return;
                                }
                                sent += 1;
                                counters.sent.fetch_add(1, Ordering::Relaxed);
                                expected.fetch_add(joined_in[room].load(Ordering::Relaxed), Ordering::Relaxed);
                            }
                            if !matches!(s.poll().await, Ok(true)) {
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                        published.fetch_add(1, Ordering::SeqCst);
                        // Stay connected (answering pings) until the run ends.
                        while matches!(s.poll().await, Ok(true)) {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }));
                }
                run_until(&done).await;
                drop(tasks);
                let h = hist.borrow().clone();
                h
            }
        })
    });
    let joined = wait_until(
        || counters.connected.load(Ordering::Relaxed) as usize + counters.errors.load(Ordering::Relaxed) as usize >= subscribers,
        Duration::from_secs(300),
    );
    if !joined {
        eprintln!("not every subscriber joined in time; publishing anyway");
    }
    // Let connections settle (and give polling clients their first poll) before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let window = Window::open(c.server_pid);
    let t_pub = Instant::now();
    go.store(true, Ordering::SeqCst);
    wait_until(|| t_pub.elapsed() >= Duration::from_secs(duration), Duration::from_secs(duration + 1));
    // Every publisher has sent its last message (its clock started a little after ours)...
    wait_until(|| published.load(Ordering::SeqCst) + counters.errors.load(Ordering::Relaxed) as usize >= publishers, Duration::from_secs(5));
    // ...then drain: until every expected delivery arrived or 5 s passed.
    wait_until(|| counters.received.load(Ordering::Relaxed) >= expected.load(Ordering::Relaxed), Duration::from_secs(5));
    let publish_secs = t_pub.elapsed().as_secs_f64().min(duration as f64).max(0.001);
    let (_secs, own_cpu, server) = window.close(c.server_pid);
    done.store(true, Ordering::SeqCst);
    let hist = merge(runner.join().expect("clients"));
    pdone.store(true, Ordering::SeqCst);
    let _ = prog.join();
    let received = counters.received.load(Ordering::Relaxed);
    let expected = expected.load(Ordering::Relaxed);
    let start_s = (t_pub - counters.start).as_secs() as usize;
    Report::new(
        "fanout",
        &c,
        serde_json::json!({"subscribers": subscribers, "rooms": rooms, "publishers": publishers, "rate": rate, "duration": duration, "size": size}),
        expected,
        received,
        received as f64 / publish_secs,
        &hist,
        counters.per_second.iter().skip(start_s).take(duration as usize + 5).map(|a| a.load(Ordering::Relaxed)).collect(),
        own_cpu,
        server.map(|(cpu, rss0, rss1)| ServerCost::new(cpu, rss0, rss1, received, subscribers + publishers)),
        counters.errors.load(Ordering::Relaxed),
        counters.closed.load(Ordering::Relaxed),
        None,
    )
}

fn echo(c: Common, clients: usize, duration: u64, size: usize, protocol: Protocol) -> Report {
    let counters = Arc::new(Counters::new(duration as usize + 60));
    let go = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let target = c.target();
    let polling = c.transport == Transport::Polling;
    let threads = c.threads;
    let body = payload(size);
    let (cs, g, d) = (counters.clone(), go.clone(), done.clone());
    let (pdone, prog) = progress(counters.clone(), "echo");
    let runner = std::thread::spawn(move || {
        on_threads(threads, move |t| {
            let (counters, go, done, target, body) = (cs.clone(), g.clone(), d.clone(), target.clone(), body.clone());
            async move {
                let hist = Rc::new(RefCell::new(histogram()));
                let mut tasks = Vec::new();
                for i in (t..clients).step_by(threads) {
                    let (counters, go, done, target, body, hist) = (counters.clone(), go.clone(), done.clone(), target.clone(), body.clone(), hist.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        let wait_go = || async {
                            while !go.load(Ordering::Relaxed) && !STOP.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        };
                        let running = || !done.load(Ordering::Relaxed) && !STOP.load(Ordering::Relaxed);
                        match protocol {
                            Protocol::Raw => {
                                let mut ws = match RawWs::connect(&target, source(i, &target.addr)).await {
                                    Ok(c) => c,
                                    Err(e) => return counters.error(&format!("connect: {e}")),
                                };
                                counters.connected.fetch_add(1, Ordering::Relaxed);
                                wait_go().await;
                                while running() {
                                    let t0 = counters.now_ns();
                                    if ws.send(format!(r#"{{"t":{t0},"p":"{body}"}}"#).as_bytes()).await.is_err() || !matches!(ws.recv().await, Ok(1..)) {
                                        counters.closed.fetch_add(1, Ordering::Relaxed);
                                        return;
                                    }
                                    let _ = hist.borrow_mut().record(((counters.now_ns() - t0) / 1000).max(1));
                                    counters.sent.fetch_add(1, Ordering::Relaxed);
                                    counters.delivered();
                                }
                            }
                            Protocol::Sio => {
                                let mut s = match Sio::connect(&target, polling, source(i, &target.addr)).await {
                                    Ok(c) => c,
                                    Err(e) => return counters.error(&format!("connect: {e}")),
                                };
                                counters.connected.fetch_add(1, Ordering::Relaxed);
                                wait_go().await;
                                while running() {
                                    let t0 = counters.now_ns();
                                    if s.emit(&format!(r#"["message",{{"t":{t0},"p":"{body}"}}]"#)).await.is_err() {
                                        counters.closed.fetch_add(1, Ordering::Relaxed);
                                        return;
                                    }
                                    counters.sent.fetch_add(1, Ordering::Relaxed);
                                    let mut got = false;
                                    while !got && running() {
                                        let open = s.recv(|p| {
                                            if let Incoming::Event(e) = p {
                                                got = e.starts_with(r#"2["message-back""#);
                                            }
                                        });
                                        match open.await {
                                            Ok(true) => {}
                                            _ => {
                                                counters.closed.fetch_add(1, Ordering::Relaxed);
                                                return;
                                            }
                                        }
                                    }
                                    let _ = hist.borrow_mut().record(((counters.now_ns() - t0) / 1000).max(1));
                                    counters.delivered();
                                }
                            }
                        }
                    }));
                }
                run_until(&done).await;
                drop(tasks);
                let h = hist.borrow().clone();
                h
            }
        })
    });
    wait_until(|| counters.connected.load(Ordering::Relaxed) as usize + counters.errors.load(Ordering::Relaxed) as usize >= clients, Duration::from_secs(120));
    std::thread::sleep(Duration::from_millis(300));
    let window = Window::open(c.server_pid);
    let r0 = counters.received.load(Ordering::Relaxed);
    let t0 = Instant::now();
    go.store(true, Ordering::SeqCst);
    wait_until(|| t0.elapsed() >= Duration::from_secs(duration), Duration::from_secs(duration + 1));
    let received = counters.received.load(Ordering::Relaxed) - r0;
    let (secs, own_cpu, server) = window.close(c.server_pid);
    done.store(true, Ordering::SeqCst);
    let hist = merge(runner.join().expect("clients"));
    pdone.store(true, Ordering::SeqCst);
    let _ = prog.join();
    let start_s = (t0 - counters.start).as_secs() as usize;
    Report::new(
        "echo",
        &c,
        serde_json::json!({"clients": clients, "duration": duration, "size": size, "protocol": format!("{protocol:?}").to_lowercase()}),
        received,
        received,
        received as f64 / secs,
        &hist,
        counters.per_second.iter().skip(start_s).take(duration as usize).map(|a| a.load(Ordering::Relaxed)).collect(),
        own_cpu,
        server.map(|(cpu, rss0, rss1)| ServerCost::new(cpu, rss0, rss1, received, clients)),
        counters.errors.load(Ordering::Relaxed),
        counters.closed.load(Ordering::Relaxed),
        None,
    )
}

/// Bytes of the message each `conns --deflate` connection exchanges (compressed both ways: the
/// server compresses from 1 KiB).
const DEFLATE_MESSAGE: usize = 2048;

fn conns(c: Common, n: usize, hold: u64, protocol: Protocol, ramp_rate: f64, deflate: bool) -> Report {
    if deflate && (protocol != Protocol::Sio || c.transport != Transport::Websocket) {
        eprintln!("--deflate needs --protocol sio over --transport websocket");
        std::process::exit(2);
    }
    let compressed_back = Arc::new(AtomicU64::new(0));
    let limit = metrics::raise_fd_limit();
    if (n as u64) + 64 > limit {
        eprintln!("warning: {n} connections need more than the open-file limit of {limit}");
    }
    let counters = Arc::new(Counters::new(hold as usize + 600));
    let done = Arc::new(AtomicBool::new(false));
    let target = c.target();
    let polling = c.transport == Transport::Polling;
    let threads = c.threads;
    let before = c.server_pid.and_then(metrics::sample);
    let window = Window::open(c.server_pid);
    let hist_connect = Arc::new(std::sync::Mutex::new(histogram()));
    let (cs, d, hc, cb) = (counters.clone(), done.clone(), hist_connect.clone(), compressed_back.clone());
    let (pdone, prog) = progress(counters.clone(), "conns");
    let t0 = Instant::now();
    let runner = std::thread::spawn(move || {
        on_threads(threads, move |t| {
            let (counters, done, target, hc, cb) = (cs.clone(), d.clone(), target.clone(), hc.clone(), cb.clone());
            async move {
                let gate = Rc::new(tokio::sync::Semaphore::new(128));
                let mut tasks = Vec::new();
                for i in (t..n).step_by(threads) {
                    let (counters, target, gate, hc, cb) = (counters.clone(), target.clone(), gate.clone(), hc.clone(), cb.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        if ramp_rate > 0.0 {
                            tokio::time::sleep_until((t0 + Duration::from_secs_f64(i as f64 / ramp_rate)).into()).await;
                        }
                        let permit = gate.acquire().await;
                        let c0 = Instant::now();
                        let src = source(i, &target.addr);
                        match protocol {
                            Protocol::Raw => {
                                let mut ws = match RawWs::connect(&target, src).await {
                                    Ok(c) => c,
                                    Err(e) => return counters.error(&format!("connect: {e}")),
                                };
                                let _ = hc.lock().unwrap().record(c0.elapsed().as_micros() as u64);
                                counters.connected.fetch_add(1, Ordering::Relaxed);
                                drop(permit);
                                while let Ok(1..) = ws.recv().await {}
                                counters.closed.fetch_add(1, Ordering::Relaxed);
                            }
                            Protocol::Sio if deflate => {
                                let s = client::SioWs::connect_with(&target, src, Some(ws::DEFLATE_OFFER)).await;
                                let mut s = match s {
                                    Ok(c) => c,
                                    Err(e) => return counters.error(&format!("connect: {e}")),
                                };
                                match s.exchange_compressed(DEFLATE_MESSAGE).await {
                                    Ok(compressed) => {
                                        cb.fetch_add(u64::from(compressed), Ordering::Relaxed);
                                    }
                                    Err(_) => {
                                        counters.errors.fetch_add(1, Ordering::Relaxed);
                                        return;
                                    }
                                }
                                let _ = hc.lock().unwrap().record(c0.elapsed().as_micros() as u64);
                                counters.connected.fetch_add(1, Ordering::Relaxed);
                                drop(permit);
                                while let Ok(true) = s.recv(|_| {}).await {}
                                counters.closed.fetch_add(1, Ordering::Relaxed);
                            }
                            Protocol::Sio => {
                                let mut s = match Sio::connect(&target, polling, src).await {
                                    Ok(c) => c,
                                    Err(e) => return counters.error(&format!("connect: {e}")),
                                };
                                let _ = hc.lock().unwrap().record(c0.elapsed().as_micros() as u64);
                                counters.connected.fetch_add(1, Ordering::Relaxed);
                                drop(permit);
                                while let Ok(true) = s.recv(|_| {}).await {}
                                counters.closed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }));
                }
                run_until(&done).await;
                drop(tasks);
            }
        })
    });
    wait_until(|| counters.connected.load(Ordering::Relaxed) as usize + counters.errors.load(Ordering::Relaxed) as usize >= n, Duration::from_secs(600));
    let ramp = t0.elapsed().as_secs_f64();
    let connected = counters.connected.load(Ordering::Relaxed);
    let (_, ramp_cpu, ramp_server) = window.close(c.server_pid);
    // Hold: heartbeats keep flowing; nothing may close.
    std::thread::sleep(Duration::from_millis(500));
    let closed_in_ramp = counters.closed.load(Ordering::Relaxed);
    let hold_window = Window::open(c.server_pid);
    wait_until(|| false, Duration::from_secs(hold));
    let (hold_secs, _, hold_server) = hold_window.close(c.server_pid);
    let after = c.server_pid.and_then(metrics::sample);
    let closed_during_hold = counters.closed.load(Ordering::Relaxed) - closed_in_ramp;
    done.store(true, Ordering::SeqCst);
    let _ = runner.join();
    pdone.store(true, Ordering::SeqCst);
    let _ = prog.join();
    let hist = hist_connect.lock().unwrap().clone();
    let server = match (before, after, ramp_server) {
        (Some(b), Some(a), Some((cpu, _, _))) => {
            let mut s = ServerCost::new(cpu, b.rss, a.rss, connected, connected as usize);
            s.cpu_us_per_connect = Some(cpu as f64 / connected.max(1) as f64);
            s.hold_cpu_percent = hold_server.map(|(cpu, _, _)| cpu as f64 / hold_secs / 10_000.0);
            Some(s)
        }
        _ => None,
    };
    Report::new(
        "conns",
        &c,
        serde_json::json!({"connections": n, "hold": hold, "protocol": format!("{protocol:?}").to_lowercase(), "deflate": deflate}),
        n as u64,
        connected,
        connected as f64 / ramp,
        &hist,
        Vec::new(),
        ramp_cpu,
        server,
        counters.errors.load(Ordering::Relaxed),
        closed_during_hold,
        Some(
            serde_json::json!({"ramp_seconds": ramp, "connect_rate": connected as f64 / ramp, "held_seconds": hold_secs, "closed_during_ramp": closed_in_ramp, "closed_during_hold": closed_during_hold,
                "deflate_answers_compressed": deflate.then(|| compressed_back.load(Ordering::Relaxed))}),
        ),
    )
}

fn churn(c: Common, clients: usize, duration: u64) -> Report {
    let counters = Arc::new(Counters::new(duration as usize + 60));
    let target = c.target();
    let polling = c.transport == Transport::Polling;
    let threads = c.threads;
    let window = Window::open(c.server_pid);
    let cs = counters.clone();
    let (pdone, prog) = progress(counters.clone(), "churn");
    let deadline = Instant::now() + Duration::from_secs(duration);
    let hists = on_threads(threads, move |t| {
        let (counters, target) = (cs.clone(), target.clone());
        async move {
            let hs = Rc::new(RefCell::new([histogram(), histogram(), histogram()]));
            let mut tasks = Vec::new();
            for i in (t..clients).step_by(threads) {
                let (counters, target, hs) = (counters.clone(), target.clone(), hs.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    while Instant::now() < deadline && !STOP.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        let mut s = match Sio::connect(&target, polling, source(i, &target.addr)).await {
                            Ok(s) => s,
                            Err(e) => {
                                counters.error(&format!("connect: {e}"));
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        };
                        let t1 = Instant::now();
                        if let Err(e) = s.call(1, r#"["join","churn"]"#, |_| {}).await {
                            counters.error(&format!("join: {e}"));
                            continue;
                        }
                        let t2 = Instant::now();
                        match s {
                            Sio::Ws(w) => {
                                let _ = w.disconnect().await;
                            }
                            Sio::Polling(p) => {
                                let _ = p.tx.send("41".into());
                                let _ = p.tx.send("1".into());
                            }
                        }
                        let t3 = Instant::now();
                        let mut h = hs.borrow_mut();
                        let _ = h[0].record((t1 - t0).as_micros() as u64 + 1);
                        let _ = h[1].record((t2 - t1).as_micros() as u64 + 1);
                        let _ = h[2].record((t3 - t2).as_micros() as u64 + 1);
                        counters.delivered();
                    }
                }));
            }
            // Every task stops at the deadline; one stuck on a silent server is dropped 5 s later.
            let _ = tokio::time::timeout_at((deadline + Duration::from_secs(5)).into(), async {
                for t in tasks {
                    let _ = t.await;
                }
            })
            .await;
            let h = hs.borrow().clone();
            h
        }
    });
    let (secs, own_cpu, server) = window.close(c.server_pid);
    pdone.store(true, Ordering::SeqCst);
    let _ = prog.join();
    let mut steps = [histogram(), histogram(), histogram()];
    for h in hists {
        for (a, b) in steps.iter_mut().zip(h) {
            a.add(b).expect("same bounds");
        }
    }
    let cycles = counters.received.load(Ordering::Relaxed);
    let mut total = histogram();
    for h in &steps {
        total.add(h).expect("same bounds");
    }
    let mut server = server.map(|(cpu, rss0, rss1)| ServerCost::new(cpu, rss0, rss1, cycles, clients));
    if let Some(s) = server.as_mut() {
        s.cpu_us_per_connect = Some(s.cpu_us as f64 / cycles.max(1) as f64);
    }
    Report::new(
        "churn",
        &c,
        serde_json::json!({"clients": clients, "duration": duration}),
        cycles,
        cycles,
        cycles as f64 / secs,
        &total,
        Vec::new(),
        own_cpu,
        server,
        counters.errors.load(Ordering::Relaxed),
        0,
        Some(serde_json::json!({
            "connect": Latency::from(&steps[0]),
            "join": Latency::from(&steps[1]),
            "disconnect": Latency::from(&steps[2]),
        })),
    )
}

/// Reads a pid from a pidfile (`--server-pidfile`).
fn read_pidfile(path: &str) -> Result<u32, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--server-pidfile {path}: {e}"))?;
    text.trim().parse().map_err(|_| format!("--server-pidfile {path}: {:?} is not a pid", text.trim()))
}

/// A blocking byte stream, plain or TLS.
trait ReadWrite: std::io::Read + std::io::Write {}
impl<T: std::io::Read + std::io::Write> ReadWrite for T {}

/// Before a Socket.IO run: asks the server for an Engine.IO handshake on `--path`, so that a
/// wrong path (or a server that is not there) is reported with what came back instead of as
/// thousands of anonymous connection errors.
fn preflight(target: SocketAddr, path: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<(), String> {
    use std::io::{Read, Write};
    let url = format!("{path}?EIO=4&transport=polling");
    let tcp = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)).map_err(|e| format!("cannot connect to {target}: {e}"))?;
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let mut s: Box<dyn ReadWrite> = match tls {
        Some(cfg) => {
            let conn =
                rustls::ClientConnection::new(cfg, rustls::pki_types::ServerName::try_from("localhost").expect("a valid name")).map_err(|e| e.to_string())?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
        None => Box::new(tcp),
    };
    s.write_all(format!("GET {url} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n").as_bytes()).map_err(|e| format!("{target}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let status = loop {
        let n = s.read(&mut chunk).map_err(|e| format!("GET {url} on {target}: {e}"))?;
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut res = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(_)) = res.parse(&buf) {
            break res.code.unwrap_or(0);
        }
        if n == 0 {
            return Err(format!("GET {url} on {target}: the connection closed without an HTTP response"));
        }
    };
    if status != 200 {
        return Err(format!("GET {url} on {target} answered HTTP {status}: is --path right? (a Socket.IO server answers 200 with an open packet)"));
    }
    Ok(())
}

/// Whether a run passed: no failed connection, and loss within `max_loss_percent`.
fn verdict(r: &Report, max_loss_percent: f64) -> Result<(), String> {
    let mut why = Vec::new();
    if r.errors > 0 {
        why.push(format!("{} connections or setup steps failed", r.errors));
    }
    if r.loss * 100.0 > max_loss_percent {
        why.push(format!("loss {:.4}% is above --max-loss {max_loss_percent}%", r.loss * 100.0));
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

fn main() -> std::process::ExitCode {
    use std::process::ExitCode;
    // SAFETY: installing a plain signal handler that only stores an atomic flag.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let mut cli = Cli::parse();
    let sio = match &cli.cmd {
        Cmd::Fanout { .. } | Cmd::Churn { .. } => true,
        Cmd::Echo { protocol, .. } | Cmd::Conns { protocol, .. } => *protocol == Protocol::Sio,
        Cmd::Compare { .. } => false,
    };
    if let Cmd::Fanout { common, .. } | Cmd::Echo { common, .. } | Cmd::Conns { common, .. } | Cmd::Churn { common, .. } = &mut cli.cmd {
        if let Some(path) = &common.server_pidfile {
            match read_pidfile(path) {
                Ok(pid) => common.server_pid = Some(pid),
                Err(e) => {
                    eprintln!("shardcast-loadtest: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        if sio {
            if let Err(e) = preflight(common.target, &common.path, common.target().tls) {
                eprintln!("shardcast-loadtest: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let (report, common) = match cli.cmd {
        Cmd::Fanout { common, subscribers, rooms, publishers, rate, duration, size, ramp_rate } => {
            (fanout(common.clone(), subscribers, rooms.max(1), publishers.max(1), rate, duration, size, ramp_rate), common)
        }
        Cmd::Echo { common, clients, duration, size, protocol } => (echo(common.clone(), clients, duration, size, protocol), common),
        Cmd::Conns { common, connections, hold, protocol, ramp_rate, deflate } => {
            (conns(common.clone(), connections, hold, protocol, ramp_rate, deflate), common)
        }
        Cmd::Churn { common, clients, duration } => (churn(common.clone(), clients, duration), common),
        Cmd::Compare { a, b } => {
            return match report::compare(&a, &b) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("shardcast-loadtest compare: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    if STOP.load(Ordering::Relaxed) {
        eprintln!("interrupted: partial results");
    }
    report.print();
    if let Some(path) = &common.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).expect("a report serializes")).expect("write the JSON report");
    }
    if let Some(path) = &common.svg {
        std::fs::write(path, report::svg(&report)).expect("write the SVG report");
    }
    match verdict(&report, common.max_loss) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardcast-loadtest: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report of `scenario` as the scenarios build it, with these outcomes.
    fn report(scenario: &str, expected: u64, received: u64, errors: u64) -> Report {
        let cli = Cli::try_parse_from(["shardcast-loadtest", "churn"]).unwrap();
        let Cmd::Churn { common, .. } = cli.cmd else { unreachable!() };
        Report::new(scenario, &common, serde_json::json!({}), expected, received, 0.0, &histogram(), Vec::new(), 0, None, errors, 0, None)
    }

    #[test]
    fn a_run_where_every_connection_failed_fails() {
        // An echo run against nothing: nothing expected, nothing received, every client failed.
        assert!(verdict(&report("echo", 0, 0, 100), 0.0).unwrap_err().contains("100 connections"));
        assert!(verdict(&report("fanout", 1000, 990, 0), 0.0).unwrap_err().contains("loss 1.0000%"));
        assert!(verdict(&report("fanout", 1000, 990, 0), 2.0).is_ok());
        assert!(verdict(&report("fanout", 1000, 1000, 0), 0.0).is_ok());
    }

    #[test]
    fn a_wrong_path_is_reported_with_the_http_status() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            s.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").unwrap();
            head
        });
        let e = preflight(addr, "/wrong/", None).unwrap_err();
        assert!(e.contains("HTTP 404") && e.contains("--path"), "{e}");
        assert!(server.join().unwrap().starts_with("GET /wrong/?EIO=4&transport=polling HTTP/1.1"));
    }

    #[test]
    fn the_preflight_speaks_tls_to_a_tls_server() {
        let dir = std::env::temp_dir().join(format!("shardcast-loadtest-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let tls = shardcast::rt::tls::Tls::from_pem_files(&cert, &key).unwrap();
        let server =
            shardcast::app::contract::app(shardcast::app::Server::builder().bind("127.0.0.1:0".parse().unwrap()).threads(1).pin(false).tls(tls)).start();
        let Ok(server) = server else {
            return; // no io_uring here
        };
        let cfg = tls::client_config(cert.to_str().unwrap()).unwrap();
        assert_eq!(preflight(server.local_addr(), "/socket.io/", Some(cfg)), Ok(()));
        // Plain HTTP to the TLS port gets an alert, not an HTTP response.
        assert!(preflight(server.local_addr(), "/socket.io/", None).is_err());
        server.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_preflight_passes_against_a_real_server_and_fails_on_its_wrong_path() {
        let server = shardcast::app::contract::app(shardcast::app::Server::builder().bind("127.0.0.1:0".parse().unwrap()).threads(1).pin(false)).start();
        let Ok(server) = server else {
            return; // no io_uring here
        };
        assert_eq!(preflight(server.local_addr(), "/socket.io/", None), Ok(()));
        assert!(preflight(server.local_addr(), "/nope/", None).unwrap_err().contains("HTTP 4"));
        server.shutdown();
    }

    #[test]
    fn a_pidfile_gives_the_server_pid() {
        let path = std::env::temp_dir().join(format!("shardcast-loadtest-pidfile-{}", std::process::id()));
        std::fs::write(&path, "4242\n").unwrap();
        assert_eq!(read_pidfile(path.to_str().unwrap()), Ok(4242));
        std::fs::write(&path, "nope").unwrap();
        assert!(read_pidfile(path.to_str().unwrap()).is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(read_pidfile(path.to_str().unwrap()).unwrap_err().contains("--server-pidfile"));
        let cli = Cli::try_parse_from(["shardcast-loadtest", "conns", "--server-pidfile", "/tmp/x"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Conns { common: Common { server_pidfile: Some(_), .. }, .. }));
        assert!(Cli::try_parse_from(["shardcast-loadtest", "conns", "--server-pidfile", "/tmp/x", "--server-pid", "1"]).is_err());
    }

    #[test]
    fn compare_refuses_different_scenarios() {
        let a = report("fanout", 10, 10, 0);
        let b = report("conns", 10, 10, 0);
        assert!(report::comparable(&a, &b).unwrap_err().contains("different scenarios"));
        assert_eq!(report::comparable(&a, &report("fanout", 5, 5, 0)), Ok(()));
        let dir = std::env::temp_dir();
        let (pa, pb) = (dir.join(format!("lt-a-{}.json", std::process::id())), dir.join(format!("lt-b-{}.json", std::process::id())));
        std::fs::write(&pa, serde_json::to_string(&a).unwrap()).unwrap();
        std::fs::write(&pb, serde_json::to_string(&b).unwrap()).unwrap();
        assert!(report::compare(pa.to_str().unwrap(), pb.to_str().unwrap()).is_err());
        let _ = (std::fs::remove_file(&pa), std::fs::remove_file(&pb));
    }

    #[test]
    fn memory_per_connection_is_never_negative() {
        let s = report::ServerCost::new(0, 10_000_000, 9_000_000, 0, 100);
        assert_eq!(s.rss_per_connection, 0.0);
        assert!(s.rss_fell);
        let s = report::ServerCost::new(0, 1_000_000, 2_000_000, 0, 100);
        assert_eq!(s.rss_per_connection, 10_000.0);
        assert!(!s.rss_fell);
    }
}
