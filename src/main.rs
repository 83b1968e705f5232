//! The `shardcast` binary: serves the default application (`shared/CONTRACT.md`) or, with
//! `echo`, a raw WebSocket / Engine.IO echo server on the same runtime.

use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use shardcast::cli::ServerOptions;
use shardcast::engine::echo::EioEcho;
use shardcast::engine::{EioServer, Handler};
use shardcast::rt::threads;

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

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread started after), to wait
/// for them with `sigwait`.
fn block_signals() -> libc::sigset_t {
    // SAFETY: `set` is initialised by sigemptyset before use; the calls only touch it and the
    // calling thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn serve<H, F>(opts: &ServerOptions, mut cfg: shardcast::engine::EngineConfig, raw_ws_echo: bool, make: F) -> ExitCode
where
    H: Handler,
    F: Fn(usize) -> H + Send + Sync + 'static,
{
    cfg.raw_ws_echo = raw_ws_echo;
    let set = block_signals();
    let conns = Arc::new(AtomicUsize::new(0));
    let rtcfg = opts.runtime_config();
    let workers = rtcfg.threads;
    let cfg = Arc::new(cfg);
    let started = threads::start(rtcfg, move |i, _poster| {
        EioServer::new(Rc::new((*cfg).clone()), conns.clone(), make(i))
    });
    let mut rt = match started {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shardcast: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("shardcast listening on {} ({} workers)", rt.local_addr(), workers);
    let mut sig: libc::c_int = 0;
    // SAFETY: `set` holds the blocked signals; sigwait writes the received one into `sig`.
    unsafe { libc::sigwait(&set, &mut sig) };
    tracing::info!(signal = sig, "shutting down");
    rt.shutdown();
    rt.join();
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.mode {
        Some(Mode::Echo { opts }) => {
            let mut cfg = opts.engine_config();
            if opts.path == "/socket.io/" {
                cfg.path = "/engine.io/".into();
            }
            serve(&opts, cfg, true, |_| EioEcho)
        }
        None => {
            let cfg = cli.opts.engine_config();
            serve(&cli.opts, cfg, false, |_| EioEcho)
        }
    }
}
