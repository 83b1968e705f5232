//! The server builder: Engine.IO options, runtime options and namespaces, started as one
//! `SioWorker` per worker thread.

use std::rc::Rc;
use std::sync::Arc;

use super::adapter::{redis, Adapter, AdapterConfig, RedisConfig};
use super::admin_ui::{self, AdminUi};
use super::handle::ServerHandle;
use super::limits::SocketLimits;
use super::namespace::{Namespace, Namespaces};
use super::recovery::{Recovery, RecoveryConfig};
use super::worker::{SioMail, SioWorker};
use crate::engine::{EioServer, EngineConfig};
use crate::proto::sio::Limits;
use crate::rt::threads::{self, Runtime, RuntimeConfig, StartError};
use crate::rt::tls::{Tls, TlsError};
use crate::rt::IoBackend;

/// An Engine.IO path as Node's servers use it: `/sock`, `sock` and `/sock/` all become
/// `/sock/`.
pub fn normalize_path(s: &str) -> String {
    let trimmed = s.trim_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        format!("/{trimmed}/")
    }
}

/// Entry point: `Server::builder()`.
pub struct Server;

impl Server {
    /// A builder with the default options ([`EngineConfig::default`],
    /// [`RuntimeConfig::default`]): 127.0.0.1:3000, one pinned worker per CPU this process may
    /// run on.
    pub fn builder() -> ServerBuilder {
        ServerBuilder {
            engine: EngineConfig::default(),
            runtime: RuntimeConfig::default(),
            namespaces: Namespaces::default(),
            limits: Limits::default(),
            socket_limits: SocketLimits::default(),
            adapter: AdapterConfig::Local,
            recovery: None,
            allow_request: None,
            origin_predicate: None,
            connect_timeout: None,
            admin_ui: None,
        }
    }
}

/// Collects options and namespaces; [`ServerBuilder::start`] starts the workers.
///
/// Each method owns its settings and no other method touches them, so the order of the calls
/// does not matter: [`engine`](Self::engine) every Engine.IO option, [`bind`](Self::bind),
/// [`threads`](Self::threads), [`pin`](Self::pin), [`backlog`](Self::backlog),
/// [`worker`](Self::worker) and [`io`](Self::io) the runtime's.
pub struct ServerBuilder {
    engine: EngineConfig,
    runtime: RuntimeConfig,
    namespaces: Namespaces,
    limits: Limits,
    socket_limits: SocketLimits,
    adapter: AdapterConfig,
    recovery: Option<RecoveryConfig>,
    allow_request: Option<crate::engine::AllowRequest>,
    origin_predicate: Option<crate::proto::http::OriginPredicate>,
    connect_timeout: Option<std::time::Duration>,
    admin_ui: Option<AdminUi>,
}

impl ServerBuilder {
    /// Which nodes hear this server's broadcasts besides its own workers: the in-process
    /// adapter (a single node, the default) or Redis ([`ServerBuilder::redis`]).
    pub fn adapter(mut self, adapter: AdapterConfig) -> Self {
        self.adapter = adapter;
        self
    }

    /// Joins a cluster over Redis (`redis://host:port/`), in the wire format of Node's
    /// `@socket.io/redis-adapter` or of python-socketio's `RedisManager` (see
    /// [`RedisConfig`]). The server starts whether or not Redis is reachable, and keeps
    /// serving its own clients while it is not.
    pub fn redis(self, cfg: RedisConfig) -> Self {
        self.adapter(AdapterConfig::Redis(cfg))
    }

    /// Every Engine.IO option (path, ping interval and timeout, max payload, transports, CORS,
    /// compression, cookie, connection limit, slow-consumer policy).
    pub fn engine(mut self, cfg: EngineConfig) -> Self {
        self.engine = cfg;
        self
    }

    /// The address to listen on.
    pub fn bind(mut self, addr: std::net::SocketAddr) -> Self {
        self.runtime.bind = addr;
        self
    }

    /// Worker threads, one per core (default: the CPUs this process may run on; at least 1).
    pub fn threads(mut self, threads: usize) -> Self {
        self.runtime.threads = threads.max(1);
        self
    }

    /// Whether each worker pins itself to one of the CPUs this process may run on (default
    /// true).
    pub fn pin(mut self, pin: bool) -> Self {
        self.runtime.pin = pin;
        self
    }

    /// The listen backlog of each worker's socket (default 4096).
    pub fn backlog(mut self, backlog: i32) -> Self {
        self.runtime.backlog = backlog;
        self
    }

    /// The workers' I/O settings (send buffer per client, read budget, ring sizes, shutdown
    /// grace, memory limit). Its `max_read_buffer` is derived from the engine's `max_payload`
    /// at start.
    pub fn worker(mut self, cfg: crate::rt::WorkerConfig) -> Self {
        self.runtime.worker = cfg;
        self
    }

    /// TLS on the public port (see [`Tls::from_pem_files`]); [`RunningServer::reload_tls`]
    /// and SIGHUP during [`RunningServer::wait_for_signal`] reload its files.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.runtime.worker.tls = Some(tls);
        self
    }

    /// The I/O backend (default [`IoBackend::Auto`]: io_uring where a probe at start shows it
    /// works, epoll otherwise with one warning line naming the cause; `Uring` makes
    /// [`start`](Self::start) fail instead of falling back).
    pub fn io(mut self, io: IoBackend) -> Self {
        self.runtime.io = io;
        self
    }

    /// Socket.IO decoding limits (nesting depth, attachments, packet size).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// What one socket (or client) can make a worker hold: pending acks, rooms, namespaces.
    pub fn socket_limits(mut self, limits: SocketLimits) -> Self {
        self.socket_limits = limits;
        self
    }

    /// Turns on connection state recovery (off by default, as in Node): see
    /// [`super::recovery`].
    pub fn recovery(mut self, cfg: RecoveryConfig) -> Self {
        self.recovery = Some(cfg);
        self
    }

    /// Decides on every handshake request before a session exists (Node's `allowRequest`):
    /// `Err(message)` refuses it (HTTP 403 `{"code":4,"message":...}` for polling, as Node
    /// answers; `None` says "Forbidden"). Runs on the worker thread: it must not block. Kept
    /// apart from [`engine`](Self::engine), so the order of the calls does not matter.
    pub fn allow_request(mut self, f: impl Fn(&crate::engine::RequestInfo<'_>) -> Result<(), Option<String>> + Send + Sync + 'static) -> Self {
        self.allow_request = Some(crate::engine::AllowRequest(Arc::new(f)));
        self
    }

    /// Allows, beside the fixed list of CORS origins, every origin `f` says yes to (with a
    /// list set in the engine's `cors.origins`; `Any` allows everything anyway).
    pub fn cors_origin(mut self, f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        self.origin_predicate = Some(crate::proto::http::OriginPredicate(Arc::new(f)));
        self
    }

    /// How long a client may take to join a namespace after its handshake (Node's
    /// `connectTimeout`, 45 s by default); then its session is closed.
    pub fn connect_timeout(mut self, d: std::time::Duration) -> Self {
        self.connect_timeout = Some(d);
        self
    }

    /// Serves `@socket.io/admin-ui` (its namespace, login, `server_stats`, and in development
    /// mode every socket's life): what Node's `instrument(io, {...})` does. Off by default, and
    /// nothing of it runs when off. See [`super::admin_ui`].
    pub fn admin_ui(mut self, cfg: AdminUi) -> Self {
        self.admin_ui = Some(cfg);
        self
    }

    /// Adds a namespace.
    pub fn namespace(mut self, name: &str, ns: Namespace) -> Self {
        self.namespaces.fixed.insert(name.to_string(), Arc::new(ns));
        self
    }

    /// Namespaces created on first CONNECT when `accept(name)` says so, all served by `ns`.
    pub fn dynamic_namespaces(mut self, accept: impl Fn(&str) -> bool + Send + Sync + 'static, ns: Namespace) -> Self {
        self.namespaces.dynamic = Some((Arc::new(accept), Arc::new(ns)));
        self
    }

    /// Starts the workers.
    pub fn start(mut self) -> Result<RunningServer, StartError> {
        self.engine.path = normalize_path(&self.engine.path);
        if let Some(a) = self.allow_request.take() {
            self.engine.allow_request = Some(a);
        }
        if let Some(p) = self.origin_predicate.take() {
            self.engine.cors.predicate = Some(p);
        }
        let connect_timeout = self.connect_timeout;
        self.runtime.worker.max_read_buffer = crate::rt::WorkerConfig::read_buffer_for(self.engine.max_payload);
        let mut limits = self.limits;
        limits.max_packet_size = limits.max_packet_size.min(self.engine.max_payload);
        let mut namespaces = self.namespaces;
        let admin = self.admin_ui.map(|cfg| admin_ui::Prepared::new(cfg, &mut namespaces, self.runtime.worker.tls.is_some(), &self.engine.path));
        let tap = admin.as_ref().and_then(admin_ui::Prepared::tap);
        let engine = Arc::new(self.engine);
        let namespaces = Arc::new(namespaces);
        let socket_limits = self.socket_limits;
        let tls = self.runtime.worker.tls.clone();
        let (cluster, pending): (Option<Arc<dyn Adapter>>, _) = match self.adapter {
            AdapterConfig::Local => (None, None),
            AdapterConfig::Redis(mut cfg) => {
                for n in namespaces.fixed.keys() {
                    if !cfg.namespaces.contains(n) {
                        cfg.namespaces.push(n.clone());
                    }
                }
                let (a, p) = redis::prepare(cfg).map_err(StartError::Config)?;
                (Some(a), Some(p))
            }
        };
        let workers_cluster = cluster.clone();
        let adapter_namespaces = namespaces.clone();
        let recovery = self.recovery.map(|cfg| Arc::new(Recovery::new(cfg)));
        let workers = self.runtime.threads;
        let shared = recovery.clone();
        let rt = threads::start_with(self.runtime, move |_, poster| {
            let handle = ServerHandle::new(poster, workers_cluster.clone()).with_recovery(shared.clone());
            let worker = SioWorker::with_socket_limits(namespaces.clone(), limits, socket_limits)
                .with_recovery(shared.clone(), workers)
                .with_handle(handle)
                .with_cluster(workers_cluster.clone())
                .with_admin_ui(tap.clone());
            let worker = match connect_timeout {
                Some(d) => worker.with_connect_timeout(d),
                None => worker,
            };
            EioServer::new(Rc::new((*engine).clone()), worker)
        })?;
        let mut fixed: Vec<String> = adapter_namespaces.fixed.keys().cloned().collect();
        fixed.sort_unstable();
        let adapter_thread = pending.map(|p| p.spawn(rt.poster(), adapter_namespaces));
        let handle = ServerHandle::new(rt.poster(), cluster).with_recovery(recovery);
        let admin_ui = admin.map(|a| a.start(rt.scraper(), handle.clone(), fixed));
        Ok(RunningServer { rt, handle, adapter_thread, tls, admin_ui })
    }
}

/// Reloads the TLS certificate and key, logging the outcome (a failure keeps the old pair).
pub fn reload_tls_logged(tls: &Tls) {
    let (cert, key) = tls.paths();
    match tls.reload() {
        Ok(()) => tracing::info!(cert = %cert.display(), key = %key.display(), "TLS certificate reloaded; new handshakes use it"),
        Err(e) => tracing::error!(error = %e, "TLS certificate not reloaded; the previous one stays in use"),
    }
}

/// A started server.
pub struct RunningServer {
    rt: Runtime<SioMail>,
    handle: ServerHandle,
    adapter_thread: Option<redis::RedisThread>,
    tls: Option<Tls>,
    admin_ui: Option<admin_ui::Running>,
}

impl RunningServer {
    /// The address the server listens on (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.rt.local_addr()
    }

    /// A handle usable from any thread.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Reloads the TLS certificate and key from their files: new handshakes use them,
    /// established connections keep theirs. `None` without TLS; on an error the previous pair
    /// stays in use.
    pub fn reload_tls(&self) -> Option<Result<(), TlsError>> {
        self.tls.as_ref().map(Tls::reload)
    }

    /// Collects every worker's counters, from any thread (`/metrics` of the admin endpoint).
    pub fn scraper(&self) -> threads::Scraper {
        self.rt.scraper()
    }

    /// Blocks the calling thread until the process receives SIGINT (Ctrl-C) or SIGTERM and
    /// returns the signal; call [`shutdown`](Self::shutdown) next. With TLS on, each SIGHUP
    /// meanwhile reloads the certificate and key ([`reload_tls`](Self::reload_tls)). Works
    /// whatever other threads the program runs (see [`super::signal`]).
    pub fn wait_for_signal(&self) -> std::io::Result<i32> {
        let mut reload = || {
            if let Some(tls) = &self.tls {
                reload_tls_logged(tls);
            }
        };
        let sig = super::signal::wait_for_termination_or_hup(self.tls.is_some().then_some(&mut reload as &mut dyn FnMut()))?;
        tracing::info!(signal = sig, "shutting down");
        Ok(sig)
    }

    /// Closes every session politely and waits for the workers to exit.
    pub fn shutdown(mut self) {
        if let Some(a) = self.admin_ui.take() {
            a.stop();
        }
        if let Some(mut t) = self.adapter_thread.take() {
            t.stop();
        }
        self.rt.shutdown();
        self.rt.join();
    }
}
