//! Command-line options shared by every mode of the binary, and how they become the
//! runtime's and the engine's configuration.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::app::adapter::{AdapterConfig, RedisConfig, RedisFormat};
use crate::engine::{EngineConfig, SlowConsumer};
use crate::proto::eio::{SessionConfig, Transport};
use crate::proto::http::{AllowedOrigins, CorsConfig};
use crate::rt::threads::RuntimeConfig;
use crate::rt::{IoBackend, WorkerConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    Polling,
    Websocket,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (colours only when stderr is a terminal).
    Text,
    /// One JSON object per line.
    Json,
}

/// The I/O backend (`--io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IoArg {
    /// io_uring if a probe at start shows it can be used; epoll otherwise, with one warning
    /// line that names the cause.
    Auto,
    /// io_uring, or exit at start with the reason it cannot be used.
    Uring,
    /// epoll, even where io_uring works.
    Epoll,
}

impl From<IoArg> for IoBackend {
    fn from(a: IoArg) -> Self {
        match a {
            IoArg::Auto => IoBackend::Auto,
            IoArg::Uring => IoBackend::Uring,
            IoArg::Epoll => IoBackend::Epoll,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowConsumerArg {
    /// Close the session of a client whose send buffer is full.
    Disconnect,
    /// Drop volatile messages for it; close it when a regular message does not fit.
    DropVolatile,
}

/// Server options. The heartbeat defaults are the reference servers' production values
/// (25 s / 20 s); the test suites select the contract's test values explicitly
/// (`--ping-interval 300 --ping-timeout 200`).
#[derive(Debug, Clone, Args)]
pub struct ServerOptions {
    /// Address to listen on.
    #[arg(long, env = "SHARDCAST_BIND", default_value = "0.0.0.0:3000")]
    pub bind: SocketAddr,
    /// Worker threads, one per core, each with its own io_uring (default: the CPUs this
    /// process may run on, as `taskset` or a cgroup sets them).
    #[arg(long, env = "SHARDCAST_THREADS", value_parser = in_range::<usize>(1, MAX_THREADS))]
    pub threads: Option<usize>,
    /// Do not pin worker threads to cores.
    #[arg(long, env = "SHARDCAST_NO_PIN")]
    pub no_pin: bool,
    /// Engine.IO endpoint path (given a leading and a trailing slash, as Node does: `/sock`
    /// serves `/sock/`).
    #[arg(long, env = "SHARDCAST_PATH", default_value = "/socket.io/", value_parser = parse_path)]
    pub path: String,
    /// Milliseconds between server pings (the test contract uses 300).
    #[arg(long, env = "SHARDCAST_PING_INTERVAL", default_value_t = 25_000, value_parser = in_range::<u64>(MIN_MILLIS, MAX_MILLIS))]
    pub ping_interval: u64,
    /// Milliseconds to wait for a pong before closing the session (the test contract uses 200).
    #[arg(long, env = "SHARDCAST_PING_TIMEOUT", default_value_t = 20_000, value_parser = in_range::<u64>(MIN_MILLIS, MAX_MILLIS))]
    pub ping_timeout: u64,
    /// Milliseconds a WebSocket upgrade may take.
    #[arg(long, env = "SHARDCAST_UPGRADE_TIMEOUT", default_value_t = 10_000, value_parser = in_range::<u64>(MIN_MILLIS, MAX_MILLIS))]
    pub upgrade_timeout: u64,
    /// Largest Engine.IO packet or polling body, in bytes.
    #[arg(long, env = "SHARDCAST_MAX_PAYLOAD", default_value_t = 1_000_000, value_parser = in_range::<usize>(64, 1 << 30))]
    pub max_payload: usize,
    /// Transports offered.
    #[arg(long, env = "SHARDCAST_TRANSPORTS", value_enum, value_delimiter = ',', default_value = "polling,websocket")]
    pub transports: Vec<TransportArg>,
    /// Allowed origin (repeatable), or `*` for any.
    #[arg(long = "cors-origin", env = "SHARDCAST_CORS_ORIGIN", value_delimiter = ',', default_value = "*")]
    pub cors_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true`.
    #[arg(long, env = "SHARDCAST_CORS_CREDENTIALS")]
    pub cors_credentials: bool,
    /// Offer permessage-deflate on WebSockets.
    #[arg(long, env = "SHARDCAST_WEBSOCKET_COMPRESSION")]
    pub websocket_compression: bool,
    /// Compress polling responses of at least this many bytes (0 turns it off).
    #[arg(long, env = "SHARDCAST_HTTP_COMPRESSION_THRESHOLD", default_value_t = 1024)]
    pub http_compression_threshold: usize,
    /// Set a cookie with this name carrying the session id.
    #[arg(long, env = "SHARDCAST_COOKIE")]
    pub cookie: Option<String>,
    /// Refuse connections beyond this many with 503.
    #[arg(long, env = "SHARDCAST_MAX_CONNECTIONS", default_value_t = 1_000_000, value_parser = in_range::<usize>(1, 100_000_000))]
    pub max_connections: usize,
    /// Bytes that may wait in one client's send queue.
    #[arg(long, env = "SHARDCAST_MAX_SEND_BUFFER", default_value_t = 4 << 20, value_parser = in_range::<usize>(1024, 1 << 40))]
    pub max_send_buffer: usize,
    /// Milliseconds an HTTP connection may take to send a complete request (idle keep-alive
    /// connections and slowloris heads are closed after it).
    #[arg(long, env = "SHARDCAST_HTTP_TIMEOUT", default_value_t = 30_000, value_parser = in_range::<u64>(MIN_MILLIS, MAX_MILLIS))]
    pub http_timeout: u64,
    /// What to do with a client that does not read fast enough.
    #[arg(long, env = "SHARDCAST_SLOW_CONSUMER", value_enum, default_value = "disconnect")]
    pub slow_consumer: SlowConsumerArg,
    /// Resident memory of the process (bytes, or with a K/M/G suffix) past which new
    /// connections are refused with 503 and the largest holders are shed (default: no limit).
    #[arg(long, env = "SHARDCAST_MAX_MEMORY", value_parser = parse_size)]
    pub max_memory: Option<usize>,
    /// Write the process id to this file once listening (removed at a clean exit); the load
    /// generator's `--server-pidfile` reads it.
    #[arg(long, env = "SHARDCAST_PIDFILE", value_name = "PATH")]
    pub pidfile: Option<std::path::PathBuf>,
    /// Connection state recovery (socket.io 4.6+ `connectionStateRecovery`): milliseconds a
    /// disconnected socket (id, rooms, data) and the packets it missed are kept for its client
    /// to come back (default: off, as in Node).
    #[arg(long, env = "SHARDCAST_RECOVERY_WINDOW", value_name = "MS", value_parser = in_range::<u64>(MIN_MILLIS, MAX_MILLIS))]
    pub recovery_window: Option<u64>,
    /// With --recovery-window: packets kept at most over the whole server (the oldest go first).
    #[arg(long, env = "SHARDCAST_RECOVERY_MAX_PACKETS", default_value_t = 100_000, value_parser = in_range::<usize>(1, 1 << 32))]
    pub recovery_max_packets: usize,
    /// With --recovery-window: bytes of kept packets at most over the whole server (bytes, or
    /// with a K/M/G suffix); the kept sockets' ids and room names have a budget of the same size.
    #[arg(long, env = "SHARDCAST_RECOVERY_MAX_BYTES", default_value = "64M", value_parser = parse_size)]
    pub recovery_max_bytes: usize,
    /// With --recovery-window: disconnected sockets kept at most over the whole server (the
    /// oldest are forgotten first).
    #[arg(long, env = "SHARDCAST_RECOVERY_MAX_SOCKETS", default_value_t = 100_000, value_parser = in_range::<usize>(1, 1 << 32))]
    pub recovery_max_sockets: usize,
    /// A proxy (address or CIDR, repeatable) whose `Forwarded` / `X-Forwarded-For` headers
    /// give the client's address.
    #[arg(long = "trusted-proxy", env = "SHARDCAST_TRUSTED_PROXY", value_delimiter = ',', value_name = "CIDR", value_parser = parse_net)]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Do not let polling sessions upgrade to WebSocket (Node's `allowUpgrades: false`).
    #[arg(long, env = "SHARDCAST_NO_UPGRADES")]
    pub no_upgrades: bool,
    /// Milliseconds a client may take to join a namespace after its Engine.IO handshake
    /// (Node's `connectTimeout`); then it is closed.
    #[arg(long, env = "SHARDCAST_CONNECT_TIMEOUT", default_value_t = 45_000, value_parser = in_range::<u64>(MIN_MILLIS, MAX_MILLIS))]
    pub connect_timeout: u64,
    /// `Path` of the --cookie (`none` leaves it out).
    #[arg(long, env = "SHARDCAST_COOKIE_PATH", default_value = "/")]
    pub cookie_path: String,
    /// `SameSite` of the --cookie.
    #[arg(long, env = "SHARDCAST_COOKIE_SAME_SITE", value_enum, default_value = "lax")]
    pub cookie_same_site: SameSiteArg,
    /// Mark the --cookie `Secure`.
    #[arg(long, env = "SHARDCAST_COOKIE_SECURE")]
    pub cookie_secure: bool,
    /// Leave `HttpOnly` out of the --cookie.
    #[arg(long, env = "SHARDCAST_COOKIE_NO_HTTP_ONLY")]
    pub cookie_no_http_only: bool,
    /// Connections one client address may hold open at once; more are answered 429. An IPv6
    /// client is counted by its /64 network (an IPv4-mapped address as IPv4).
    #[arg(long, env = "SHARDCAST_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N", value_parser = in_range::<u32>(1, u32::MAX))]
    pub max_connections_per_address: Option<u32>,
    /// New connections one client address may open per second (a burst of as many); faster
    /// ones are answered 429. An IPv6 client is counted by its /64 network.
    #[arg(long, env = "SHARDCAST_MAX_CONNECTION_RATE_PER_ADDRESS", value_name = "N", value_parser = in_range::<u32>(1, 1_000_000))]
    pub max_connection_rate_per_address: Option<u32>,
    /// Events one socket may send per second (a burst of as many); past it the socket is
    /// disconnected.
    #[arg(long, env = "SHARDCAST_MAX_EVENT_RATE", value_name = "N", value_parser = in_range::<u32>(1, u32::MAX))]
    pub max_event_rate: Option<u32>,
    /// Bytes of events one socket may send per second (a burst of as many, and at least one
    /// packet); past it the socket is disconnected.
    #[arg(long, env = "SHARDCAST_MAX_BYTE_RATE", value_name = "BYTES", value_parser = parse_size)]
    pub max_byte_rate: Option<usize>,
    /// The I/O backend: `auto` uses io_uring when a probe at start shows it works (a
    /// container's seccomp profile, the `kernel.io_uring_disabled` sysctl or an old kernel may
    /// refuse it) and epoll otherwise, saying why in one warning line.
    #[arg(long, env = "SHARDCAST_IO", value_enum, default_value = "auto")]
    pub io: IoArg,
    /// Log lines as text or as JSON objects (one per line). The level is set by `RUST_LOG`
    /// (default `info`; `debug` adds sessions opened, upgraded and closed with their reasons,
    /// and protocol errors).
    #[arg(long, env = "SHARDCAST_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Serve TLS (https://, wss://) on the public port with this PEM certificate chain, leaf
    /// first (needs --tls-key). SIGHUP reloads the certificate and key from the same files
    /// without dropping connections; a file that does not load is logged and the old pair kept.
    #[arg(long, env = "SHARDCAST_TLS_CERT", value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "SHARDCAST_TLS_KEY", value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Serve the admin endpoint on this address: `GET /metrics` (Prometheus), `GET /health`,
    /// `POST /api/emit` (default: off). Keep it off the public network.
    #[arg(long, env = "SHARDCAST_ADMIN_BIND", value_name = "ADDR")]
    pub admin_bind: Option<SocketAddr>,
    /// The key `POST /api/emit` requires as `Authorization: Bearer KEY` (without one the publish
    /// API is refused; an empty key is refused at start). Prefer the environment variable: a
    /// flag shows in the process list.
    #[arg(long, env = "SHARDCAST_API_KEY", value_name = "KEY", hide_env_values = true, value_parser = parse_api_key)]
    pub api_key: Option<String>,
    /// Join a cluster over Redis (`redis://host:port/`): broadcasts, room and disconnect
    /// requests reach the clients of every node, and emitters publishing to Redis reach this
    /// node's clients (docs/cluster.md). Without it the server is a single node.
    #[arg(long, env = "SHARDCAST_REDIS", value_name = "URL")]
    pub redis: Option<String>,
    /// The wire format spoken on Redis: Node's `@socket.io/redis-adapter`, python-socketio's
    /// `RedisManager`, or both (bridge).
    #[arg(long, env = "SHARDCAST_REDIS_FORMAT", value_enum, default_value = "node", requires = "redis")]
    pub redis_format: RedisFormatArg,
    /// With `--redis-format bridge`: this node relays foreign broadcasts between the formats
    /// (a Node node's or emitter's to the Python nodes, a Python node's or emitter's to the
    /// Node nodes). Run it on exactly one bridge node of a cluster.
    #[arg(long, env = "SHARDCAST_REDIS_RELAY", requires = "redis")]
    pub redis_relay: bool,
    /// Redis 7 sharded pub/sub (`SPUBLISH` / `SSUBSCRIBE`), as `@socket.io/redis-adapter`'s
    /// `createShardedAdapter` (Node format only).
    #[arg(long, env = "SHARDCAST_REDIS_SHARDED", requires = "redis")]
    pub redis_sharded: bool,
    /// Serve `@socket.io/admin-ui` (the hosted UI, or a self-hosted copy) on its namespace, as
    /// Node's `instrument()`: `USER:BCRYPT_HASH` (quote it: the hash holds `$`; make one with
    /// `htpasswd -nbBC 10 "" PASSWORD | tr -d ':\n'` or any bcrypt tool), or `none` for no
    /// login at all (anyone who reaches the port can watch and disconnect every socket; a
    /// warning is logged). The UI runs in a browser on another origin: allow it with
    /// --cors-origin and --cors-credentials (docs/deploy.md, "The admin UI").
    #[arg(long, env = "SHARDCAST_ADMIN_UI_AUTH", value_name = "USER:HASH|none", value_parser = parse_admin_auth, hide_env_values = true)]
    pub admin_ui_auth: Option<crate::app::AdminAuth>,
    /// `production`: the UI gets the server stats only (nothing is done per socket or per
    /// packet); `development`: also every socket, its rooms and every event in and out (one
    /// broadcast to the admin namespace each).
    #[arg(long, env = "SHARDCAST_ADMIN_UI_MODE", value_enum, default_value = "production", requires = "admin_ui_auth")]
    pub admin_ui_mode: AdminUiModeArg,
    /// The admin UI may only watch: no emit, join, leave or disconnect actions.
    #[arg(long, env = "SHARDCAST_ADMIN_UI_READONLY", requires = "admin_ui_auth")]
    pub admin_ui_readonly: bool,
    /// The admin UI's namespace (the UI's "Admin namespace" setting).
    #[arg(long, env = "SHARDCAST_ADMIN_UI_NAMESPACE", default_value = "/admin", requires = "admin_ui_auth")]
    pub admin_ui_namespace: String,
    /// The name of this server in the admin UI's `server_stats` (default: the host name, as
    /// Node): give each node of a cluster its own when several run on one host.
    #[arg(long, env = "SHARDCAST_ADMIN_UI_SERVER_ID", value_name = "NAME", requires = "admin_ui_auth")]
    pub admin_ui_server_id: Option<String>,
    /// Development mode: the admin events (socket_connected, event_sent, ...) each worker emits
    /// per second at most; the rest are dropped and counted
    /// (shardcast_admin_ui_events_dropped_total). Node buffers them instead.
    #[arg(long, env = "SHARDCAST_ADMIN_UI_EVENTS_PER_SECOND", default_value_t = crate::app::admin_ui::DEFAULT_EVENTS_PER_SECOND, value_name = "N", requires = "admin_ui_auth")]
    pub admin_ui_events_per_second: u32,
}

/// `--admin-ui-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdminUiModeArg {
    Production,
    Development,
}

/// `--admin-ui-auth`: `none`, or `USER:BCRYPT_HASH`.
pub fn parse_admin_auth(s: &str) -> Result<crate::app::AdminAuth, String> {
    if s == "none" {
        return Ok(crate::app::AdminAuth::Disabled);
    }
    let (user, hash) = s.split_once(':').ok_or("expected USER:BCRYPT_HASH or none")?;
    crate::app::AdminAuth::basic(user, hash).map_err(|e| e.to_string())
}

/// `--redis-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisFormatArg {
    /// msgpack on `socket.io#<nsp>#...`, as `@socket.io/redis-adapter` and
    /// `@socket.io/redis-emitter`.
    Node,
    /// JSON on `socketio`, as python-socketio's `RedisManager` (5.14+).
    Python,
    /// Both at once: a member of a Node cluster and of a python-socketio cluster on the same
    /// Redis (see `--redis-relay`).
    Bridge,
}

/// `--cookie-same-site`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SameSiteArg {
    Strict,
    Lax,
    None,
    /// No `SameSite` attribute.
    Off,
}

/// An address (a one-host network) or a CIDR network.
pub fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is not an address or a CIDR network"))
}

/// `--api-key`: any key but an empty one (which would make the publish API's check
/// meaningless); clap names the flag in its error.
pub fn parse_api_key(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the API key must not be empty (leave --api-key and SHARDCAST_API_KEY unset to turn the publish API off)".into());
    }
    Ok(s.to_string())
}

/// The most worker threads `--threads` accepts.
pub const MAX_THREADS: usize = 1024;
/// The shortest timer a flag in milliseconds accepts (0 would ping in a loop or drop every
/// client at once).
pub const MIN_MILLIS: u64 = 10;
/// The longest: one day.
pub const MAX_MILLIS: u64 = 86_400_000;

/// A clap value parser for a number in `min..=max`; clap names the flag in its error.
pub fn in_range<T>(min: T, max: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |s: &str| {
        let v: T = s.trim().parse().map_err(|_| format!("{s:?} is not a number"))?;
        if v < min || v > max {
            return Err(format!("must be between {min} and {max}"));
        }
        Ok(v)
    }
}

/// `--path`: normalised to a leading and a trailing slash (see [`normalize_path`]).
pub fn parse_path(s: &str) -> Result<String, String> {
    if s.contains(['?', '#', ' ']) {
        return Err(format!("{s:?} is not a path"));
    }
    Ok(normalize_path(s))
}

pub use crate::app::server::normalize_path;

/// A size in bytes: digits with an optional K, M or G suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (digits, shift) = match t.as_bytes().last().map(u8::to_ascii_uppercase) {
        Some(b'K') => (&t[..t.len() - 1], 10),
        Some(b'M') => (&t[..t.len() - 1], 20),
        Some(b'G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: usize = digits.parse().map_err(|_| format!("{s:?} is not a size (e.g. 512M)"))?;
    n.checked_mul(1 << shift).filter(|&v| v > 0).ok_or_else(|| format!("{s:?} is not a usable size"))
}

impl ServerOptions {
    /// The one line the binary prints once it listens: the address (the first word that parses
    /// as one), workers, transports, heartbeats, compression, and what it serves.
    pub fn banner(&self, what: &str, addr: std::net::SocketAddr, workers: usize) -> String {
        let transports: Vec<&str> = self
            .transports
            .iter()
            .map(|t| match t {
                TransportArg::Polling => "polling",
                TransportArg::Websocket => "websocket",
            })
            .collect();
        format!(
            "shardcast listening on {addr} ({workers} workers, transports {}, heartbeat {}/{} ms, websocket compression {}{}): {what}",
            transports.join("+"),
            self.ping_interval,
            self.ping_timeout,
            if self.websocket_compression { "on" } else { "off" },
            if self.tls_cert.is_some() { ", TLS" } else { "" },
        )
    }

    pub fn engine_config(&self) -> EngineConfig {
        let origins = if self.cors_origins.iter().any(|o| o == "*") { AllowedOrigins::Any } else { AllowedOrigins::List(self.cors_origins.clone()) };
        EngineConfig {
            path: self.path.clone(),
            session: SessionConfig {
                ping_interval: Duration::from_millis(self.ping_interval),
                ping_timeout: Duration::from_millis(self.ping_timeout),
                upgrade_timeout: Duration::from_millis(self.upgrade_timeout),
            },
            max_payload: self.max_payload,
            transports: self
                .transports
                .iter()
                .map(|t| match t {
                    TransportArg::Polling => Transport::Polling,
                    TransportArg::Websocket => Transport::WebSocket,
                })
                .collect(),
            cors: CorsConfig { origins, credentials: self.cors_credentials, predicate: None },
            websocket_compression: self.websocket_compression,
            http_compression_threshold: (self.http_compression_threshold > 0).then_some(self.http_compression_threshold),
            cookie: self.cookie.clone(),
            max_connections: self.max_connections,
            slow_consumer: match self.slow_consumer {
                SlowConsumerArg::Disconnect => SlowConsumer::Disconnect,
                SlowConsumerArg::DropVolatile => SlowConsumer::DropVolatile,
            },
            max_send_buffer: self.max_send_buffer,
            http_timeout: Duration::from_millis(self.http_timeout),
            trusted_proxies: self.trusted_proxies.clone(),
            allow_request: None,
            allow_upgrades: !self.no_upgrades,
            address_limits: (self.max_connections_per_address.is_some() || self.max_connection_rate_per_address.is_some())
                .then(|| crate::engine::address::AddressLimits::new(self.max_connections_per_address, self.max_connection_rate_per_address)),
            cookie_attrs: crate::engine::CookieAttrs {
                path: (self.cookie_path != "none").then(|| self.cookie_path.clone()),
                same_site: match self.cookie_same_site {
                    SameSiteArg::Strict => Some(crate::engine::SameSite::Strict),
                    SameSiteArg::Lax => Some(crate::engine::SameSite::Lax),
                    SameSiteArg::None => Some(crate::engine::SameSite::None),
                    SameSiteArg::Off => None,
                },
                secure: self.cookie_secure,
                http_only: !self.cookie_no_http_only,
            },
        }
    }

    /// The TLS settings of `--tls-cert` and `--tls-key` (loaded and checked now), or `None`.
    pub fn tls(&self) -> Result<Option<crate::rt::tls::Tls>, crate::rt::tls::TlsError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => crate::rt::tls::Tls::from_pem_files(cert, key).map(Some),
            _ => Ok(None),
        }
    }

    /// The cluster adapter: Redis with `--redis`, the in-process one otherwise.
    pub fn adapter_config(&self) -> AdapterConfig {
        match &self.redis {
            None => AdapterConfig::Local,
            Some(url) => AdapterConfig::Redis(RedisConfig {
                format: match self.redis_format {
                    RedisFormatArg::Node => RedisFormat::Node,
                    RedisFormatArg::Python => RedisFormat::Python,
                    RedisFormatArg::Bridge => RedisFormat::Bridge,
                },
                relay: self.redis_relay,
                sharded: self.redis_sharded,
                ..RedisConfig::new(url)
            }),
        }
    }

    /// The per-socket limits the flags change (the rest at their defaults).
    pub fn socket_limits(&self) -> crate::app::SocketLimits {
        crate::app::SocketLimits {
            max_event_rate: self.max_event_rate,
            max_byte_rate: self.max_byte_rate.map(|b| b as u64),
            ..crate::app::SocketLimits::default()
        }
    }

    /// Connection state recovery, when `--recovery-window` is set.
    pub fn recovery_config(&self) -> Option<crate::app::RecoveryConfig> {
        self.recovery_window.map(|ms| crate::app::RecoveryConfig {
            window: Duration::from_millis(ms),
            max_packets: self.recovery_max_packets,
            max_bytes: self.recovery_max_bytes,
            max_sockets: self.recovery_max_sockets,
        })
    }

    /// The admin UI, when `--admin-ui-auth` is set.
    pub fn admin_ui(&self) -> Option<crate::app::AdminUi> {
        let auth = self.admin_ui_auth.clone()?;
        let mode = match self.admin_ui_mode {
            AdminUiModeArg::Production => crate::app::AdminMode::Production,
            AdminUiModeArg::Development => crate::app::AdminMode::Development,
        };
        let mut cfg = crate::app::AdminUi::new(auth).mode(mode);
        cfg.readonly = self.admin_ui_readonly;
        cfg.namespace = self.admin_ui_namespace.clone();
        cfg.server_id = self.admin_ui_server_id.clone();
        cfg.events_per_second = self.admin_ui_events_per_second;
        Some(cfg)
    }

    pub fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            bind: self.bind,
            threads: self.threads.unwrap_or_else(crate::rt::threads::default_threads),
            pin: !self.no_pin,
            backlog: 4096,
            worker: WorkerConfig {
                max_send_buffer: self.max_send_buffer,
                max_read_buffer: WorkerConfig::read_buffer_for(self.max_payload),
                max_memory: self.max_memory,
                ..WorkerConfig::default()
            },
            io: self.io.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_a_leading_and_a_trailing_slash() {
        assert_eq!(normalize_path("/sock"), "/sock/");
        assert_eq!(normalize_path("sock"), "/sock/");
        assert_eq!(normalize_path("/sock/"), "/sock/");
        assert_eq!(normalize_path("/a/b"), "/a/b/");
        assert_eq!(normalize_path("/"), "/");
        assert!(parse_path("/x?y").is_err());
    }

    #[test]
    fn the_bridge_and_sharded_flags_reach_the_redis_config() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            o: ServerOptions,
        }
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("shardcast").chain(args.iter().copied())).map(|c| c.o.adapter_config());
        let AdapterConfig::Redis(cfg) = parse(&["--redis", "redis://r/", "--redis-format", "bridge", "--redis-relay"]).unwrap() else { panic!() };
        assert_eq!((cfg.format, cfg.relay, cfg.sharded), (RedisFormat::Bridge, true, false));
        let AdapterConfig::Redis(cfg) = parse(&["--redis", "redis://r/", "--redis-sharded"]).unwrap() else { panic!() };
        assert_eq!((cfg.format, cfg.relay, cfg.sharded), (RedisFormat::Node, false, true));
        assert!(parse(&["--redis-relay"]).is_err(), "--redis-relay needs --redis");
        assert!(parse(&["--redis-sharded"]).is_err(), "--redis-sharded needs --redis");
    }

    #[test]
    fn ranges_refuse_zero_and_absurd_values() {
        let threads = in_range::<usize>(1, MAX_THREADS);
        assert!(threads("0").is_err());
        assert!(threads("1025").is_err());
        assert_eq!(threads("4"), Ok(4));
        assert!(threads("x").is_err());
    }
}
