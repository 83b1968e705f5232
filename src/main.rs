//! The `shardcast` binary: serves the default application (`shared/CONTRACT.md`) or, with
//! `echo`, a raw WebSocket / Engine.IO echo server on the same runtime.

use std::process::ExitCode;
use std::rc::Rc;

use clap::{Parser, Subcommand};
use shardcast::admin::{AdminConfig, AdminServer};
use shardcast::app::{contract, Server, ServerHandle};
use shardcast::cli::{LogFormat, ServerOptions};
use shardcast::engine::echo::EioEcho;
use shardcast::engine::EioServer;
use shardcast::rt::threads;
use shardcast::rt::tls::Tls;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "shardcast", version, about = "A thread-per-core io_uring Socket.IO server")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    #[command(flatten)]
    opts: ServerOptions,
}

#[derive(Subcommand)]
enum Mode {
    /// Raw RFC 6455 echo on every path, and an Engine.IO echo on /engine.io/.
    Echo {
        #[command(flatten)]
        opts: ServerOptions,
    },
}

/// Blocks SIGINT and SIGTERM (and SIGHUP, with TLS on) in this thread (and so in every thread
/// started after), to wait for them with `sigwait`.
fn block_signals(hup: bool) -> libc::sigset_t {
    // SAFETY: `set` is initialised by sigemptyset before use; the calls only touch it and the
    // calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if hup {
            libc::sigaddset(&mut set, libc::SIGHUP);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for SIGINT or SIGTERM; on SIGHUP (blocked only with TLS on) reloads the certificate
/// and key and waits on.
fn wait_for_signal(set: &libc::sigset_t, tls: Option<&Tls>) {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` holds the blocked signals; sigwait writes the received one into `sig`.
        unsafe { libc::sigwait(set, &mut sig) };
        match (sig, tls) {
            (libc::SIGHUP, Some(tls)) => shardcast::app::server::reload_tls_logged(tls),
            _ => break,
        }
    }
    tracing::info!("shutting down");
}

/// What both modes do before starting: TLS loaded, the signals blocked (SIGHUP too with TLS),
/// the runtime settings with the TLS pair in them.
fn prepare(opts: &ServerOptions) -> Result<(Option<Tls>, libc::sigset_t, threads::RuntimeConfig), ExitCode> {
    let tls = load_tls(opts)?;
    let set = block_signals(tls.is_some());
    let mut rtcfg = opts.runtime_config();
    rtcfg.worker.tls = tls.clone();
    Ok((tls, set, rtcfg))
}

/// `--tls-cert`/`--tls-key`, loaded; an error is printed for the caller to exit with.
fn load_tls(opts: &ServerOptions) -> Result<Option<Tls>, ExitCode> {
    opts.tls().map_err(|e| {
        eprintln!("shardcast: {e}");
        ExitCode::FAILURE
    })
}

/// Writes `--pidfile` (once listening); removes it when dropped, at a clean exit.
struct Pidfile(Option<std::path::PathBuf>);

impl Pidfile {
    fn write(path: Option<&std::path::Path>) -> Result<Pidfile, String> {
        let Some(path) = path else {
            return Ok(Pidfile(None));
        };
        std::fs::write(path, format!("{}\n", std::process::id())).map_err(|e| format!("cannot write --pidfile {}: {e}", path.display()))?;
        Ok(Pidfile(Some(path.to_path_buf())))
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Starts the admin endpoint when `--admin-bind` asks for it.
fn start_admin(opts: &ServerOptions, scraper: threads::Scraper, handle: Option<ServerHandle>) -> Result<Option<AdminServer>, String> {
    let Some(bind) = opts.admin_bind else {
        return Ok(None);
    };
    AdminServer::start(AdminConfig::new(bind, opts.api_key.clone()), scraper, handle)
        .map(Some)
        .map_err(|e| format!("cannot serve the admin endpoint on {bind}: {e}"))
}

/// The banner, with the admin endpoint's address when there is one.
fn with_admin(banner: String, admin: &Option<AdminServer>) -> String {
    match admin {
        Some(a) => format!("{banner}; admin endpoint on {}", a.local_addr()),
        None => banner,
    }
}

fn serve_echo(opts: &ServerOptions) -> ExitCode {
    let mut cfg = opts.engine_config();
    if opts.path == "/socket.io/" {
        cfg.path = "/engine.io/".into();
    }
    let (tls, set, rtcfg) = match prepare(opts) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let workers = rtcfg.threads;
    let started = threads::start(rtcfg, move |_| EioServer::new(Rc::new(cfg.clone()), EioEcho));
    let mut rt = match started {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shardcast: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (addr, scraper) = (rt.local_addr(), rt.scraper());
    let what = "echo mode (raw WebSocket echo on every path, Engine.IO echo on the Engine.IO path)";
    serve_until_signal(opts, what, addr, workers, scraper, None, &set, tls.as_ref(), move || {
        rt.shutdown();
        rt.join();
    })
}

/// Once the workers run, the same for both modes: the admin endpoint and the pidfile, the
/// banner, then serving until SIGINT/SIGTERM (SIGHUP reloads TLS). Load balancers see 503 on
/// /health from the start of the drain; /metrics and the publish API keep answering until
/// `stop` has shut the workers down.
#[allow(clippy::too_many_arguments)] // everything both modes hand over, named once
fn serve_until_signal(
    opts: &ServerOptions,
    what: &str,
    addr: std::net::SocketAddr,
    workers: usize,
    scraper: threads::Scraper,
    handle: Option<ServerHandle>,
    set: &libc::sigset_t,
    tls: Option<&Tls>,
    stop: impl FnOnce(),
) -> ExitCode {
    let admin = match start_admin(opts, scraper, handle) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("shardcast: {e}");
            stop();
            return ExitCode::FAILURE;
        }
    };
    let _pidfile = match Pidfile::write(opts.pidfile.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("shardcast: {e}");
            stop();
            return ExitCode::FAILURE;
        }
    };
    println!("{}", with_admin(opts.banner(what, addr, workers), &admin));
    wait_for_signal(set, tls);
    if let Some(a) = &admin {
        a.set_draining();
    }
    stop();
    if let Some(a) = admin {
        a.stop();
    }
    ExitCode::SUCCESS
}

fn serve_app(opts: &ServerOptions) -> ExitCode {
    let (tls, set, rtcfg) = match prepare(opts) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let workers = rtcfg.threads;
    let mut builder = Server::builder()
        .engine(opts.engine_config())
        .bind(rtcfg.bind)
        .threads(rtcfg.threads)
        .pin(rtcfg.pin)
        .backlog(rtcfg.backlog)
        .worker(rtcfg.worker)
        .io(rtcfg.io);
    if let Some(r) = opts.recovery_config() {
        builder = builder.recovery(r);
    }
    builder = builder.connect_timeout(std::time::Duration::from_millis(opts.connect_timeout)).socket_limits(opts.socket_limits());
    builder = builder.adapter(opts.adapter_config());
    if let Some(cfg) = opts.admin_ui() {
        builder = builder.admin_ui(cfg);
    }
    let server = match contract::app(builder).start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shardcast: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (addr, scraper, handle) = (server.local_addr(), server.scraper(), server.handle());
    let what = "the built-in test application (docs/default-app.md)";
    serve_until_signal(opts, what, addr, workers, scraper, Some(handle), &set, tls.as_ref(), move || server.shutdown())
}

/// Logs to stderr at `RUST_LOG`'s level (default `info`), as text (colours only on a terminal)
/// or JSON.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = match &cli.mode {
        Some(Mode::Echo { opts }) => opts.log_format,
        None => cli.opts.log_format,
    };
    init_logs(format);
    match cli.mode {
        Some(Mode::Echo { opts }) => serve_echo(&opts),
        None => serve_app(&cli.opts),
    }
}
