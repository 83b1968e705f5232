//! Starting the workers: one thread per core, each pinned, each with its own `SO_REUSEPORT`
//! listener; a handle to post mail to them, shut them down and join them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::backend::epoll;
use super::backend::epoll::EpollBackend;
use super::backend::probe::{self, ProbeError};
use super::backend::uring::UringBackend;
use super::backend::{Chosen, IoBackend, Unavailable};
use super::bus::Mailbox;
use super::conn::{RtMail, Service};
use super::listener;
use super::memory::{self, MemoryGuard};
use super::metrics::WorkerMetrics;
use super::ring::RingError;
use super::worker::{Worker, WorkerConfig};

/// Why the runtime did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another process (or socket) already serves the address.
    #[error("cannot listen on {addr}: address in use (is another server already running on this port?)")]
    AddrInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot create the mailbox eventfd: {0}")]
    Mailbox(std::io::Error),
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A setting that cannot work (named in the message), found at start.
    #[error("{0}")]
    Config(String),
    /// io_uring was asked for (`--io uring`) and cannot be used here.
    #[error("{0}; `--io auto` falls back to epoll by itself")]
    IoUringUnavailable(Unavailable),
    /// Out of memory or descriptors while setting up I/O (fatal under either backend).
    #[error("cannot set up I/O: {0}")]
    Io(std::io::Error),
}

impl From<ProbeError> for StartError {
    fn from(e: ProbeError) -> Self {
        match e {
            ProbeError::Unavailable(u) => StartError::IoUringUnavailable(u),
            ProbeError::Fatal(e) => StartError::Io(e),
        }
    }
}

/// Runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub bind: SocketAddr,
    pub threads: usize,
    pub pin: bool,
    pub backlog: i32,
    pub worker: WorkerConfig,
    /// The I/O backend (`--io`): io_uring when it can be used (default), epoll otherwise.
    pub io: IoBackend,
}

impl Default for RuntimeConfig {
    /// 127.0.0.1:3000, one worker per CPU this process may run on, pinned, a backlog of 4096,
    /// the default worker settings, io_uring where it can be used (epoll otherwise).
    fn default() -> Self {
        RuntimeConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 3000)),
            threads: default_threads(),
            pin: true,
            backlog: 4096,
            worker: WorkerConfig::default(),
            io: IoBackend::Auto,
        }
    }
}

/// Whether the runtime still runs, shared by its handle and its posters.
#[derive(Default)]
struct Liveness {
    /// Set by [`Runtime::shutdown`] (and so by dropping the runtime).
    stopping: AtomicBool,
    /// Worker threads that have returned.
    exited: AtomicUsize,
    /// Which workers have returned (a scrape asks only the others).
    gone: Vec<AtomicBool>,
}

/// The running workers.
pub struct Runtime<M: Send + 'static> {
    addr: SocketAddr,
    mailboxes: Arc<Vec<Arc<Mailbox<RtMail<M>>>>>,
    live: Arc<Liveness>,
    threads: Vec<JoinHandle<()>>,
    backend: Chosen,
}

/// Posts mail to the workers from any thread.
pub struct Poster<M: Send + 'static> {
    mailboxes: Arc<Vec<Arc<Mailbox<RtMail<M>>>>>,
    live: Arc<Liveness>,
}

impl<M: Send + 'static> Clone for Poster<M> {
    fn clone(&self) -> Self {
        Poster { mailboxes: self.mailboxes.clone(), live: self.live.clone() }
    }
}

/// Why a post was not delivered: the runtime was shut down or a worker has exited, so the
/// mail would never be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server has shut down")]
pub struct Stopped;

impl<M: Send + 'static> Poster<M> {
    pub fn workers(&self) -> usize {
        self.mailboxes.len()
    }

    /// Whether shutdown was asked for or any worker has exited: mail posted now may never be
    /// read, so nobody should wait for an answer to it.
    pub fn stopped(&self) -> bool {
        self.live.stopping.load(Ordering::Acquire) || self.live.exited.load(Ordering::Acquire) > 0
    }

    /// A poster for no runtime: no workers, and [`stopped`](Self::stopped) from the start.
    pub fn detached() -> Poster<M> {
        let live = Liveness { stopping: AtomicBool::new(true), exited: AtomicUsize::new(0), gone: Vec::new() };
        Poster { mailboxes: Arc::new(Vec::new()), live: Arc::new(live) }
    }

    /// Posts `m` to `worker`, unless the runtime has [`stopped`](Self::stopped).
    pub fn post(&self, worker: usize, m: M) -> Result<(), Stopped> {
        if self.stopped() {
            return Err(Stopped);
        }
        self.mailboxes[worker].post(RtMail::User(m));
        Ok(())
    }
}

/// The workers' mailboxes, whatever their service's mail type (for a [`Scraper`]).
trait Inboxes: Send + Sync {
    fn workers(&self) -> usize;
    fn depth(&self, worker: usize) -> usize;
    fn ask(&self, worker: usize, depth: usize, reply: std::sync::mpsc::Sender<WorkerMetrics>);
}

impl<M: Send + 'static> Inboxes for Vec<Arc<Mailbox<RtMail<M>>>> {
    fn workers(&self) -> usize {
        self.len()
    }

    fn depth(&self, worker: usize) -> usize {
        self[worker].len()
    }

    fn ask(&self, worker: usize, depth: usize, reply: std::sync::mpsc::Sender<WorkerMetrics>) {
        self[worker].post(RtMail::Metrics { depth, reply });
    }
}

/// Why a scrape did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    /// Every worker has exited.
    #[error("the server has stopped")]
    Stopped,
    /// A worker did not answer in time (it is stuck in a long pass).
    #[error("a worker did not answer within {0:?}")]
    Timeout(std::time::Duration),
}

/// Asks every worker for its counters, from any thread (the admin endpoint). A worker answers
/// at its next loop pass, from its own plain counters: nothing is shared with the hot path.
/// Scrapes keep working during the shutdown grace (workers read their mail until they exit);
/// a worker that has already exited (its drain is over) is left out of the answer.
#[derive(Clone)]
pub struct Scraper {
    boxes: Arc<dyn Inboxes>,
    live: Arc<Liveness>,
}

impl Scraper {
    /// Every running worker's counters, in worker order; waits at most `timeout` for the
    /// answers.
    pub fn scrape(&self, timeout: std::time::Duration) -> Result<Vec<WorkerMetrics>, ScrapeError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let gone = |w: usize| self.live.gone[w].load(Ordering::Acquire);
        let asked: Vec<usize> = (0..self.boxes.workers()).filter(|&w| !gone(w)).collect();
        if asked.is_empty() {
            return Err(ScrapeError::Stopped);
        }
        for &w in &asked {
            // Read before asking, so the scrape's own message is not counted.
            let depth = self.boxes.depth(w);
            self.boxes.ask(w, depth, tx.clone());
        }
        drop(tx);
        let deadline = std::time::Instant::now() + timeout;
        let mut answers: Vec<WorkerMetrics> = Vec::with_capacity(asked.len());
        // Until every worker asked has answered, or exited without answering.
        while asked.iter().any(|&w| !gone(w) && !answers.iter().any(|m| m.worker == w)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(ScrapeError::Timeout(timeout));
            }
            match rx.recv_timeout(left.min(std::time::Duration::from_millis(20))) {
                Ok(m) => answers.push(m),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        if answers.is_empty() {
            return Err(ScrapeError::Stopped);
        }
        answers.sort_by_key(|m| m.worker);
        Ok(answers)
    }
}

thread_local! {
    static ON_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is a worker of some runtime (where waiting for a worker's
/// answer could wait for itself, or for a worker waiting for it).
pub fn on_worker_thread() -> bool {
    ON_WORKER.with(|w| w.get())
}

/// Counts a worker thread as exited when its body returns (or unwinds).
struct ExitGuard(Arc<Liveness>, usize);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.gone[self.1].store(true, Ordering::Release);
        self.0.exited.fetch_add(1, Ordering::AcqRel);
    }
}

/// The CPUs this process may run on (`sched_getaffinity`, which `taskset` and cpusets set),
/// in order; empty if the kernel will not say.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bit set the kernel fills; CPU_ISSET reads within its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}

/// The default worker count: one per CPU this process may run on.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pin_to(core: usize) {
    // SAFETY: `set` is a plain bit set initialised by CPU_ZERO; failure leaves the thread
    // unpinned, which is only slower.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs worker `index`'s body; a panic that escapes it (user handlers run under their own
/// `catch_unwind`, so this is a runtime bug) aborts the whole process with a clear message.
/// A half-alive server, with one worker's connections and listener frozen while the others
/// run, is worse than a crash a supervisor restarts.
fn abort_on_panic(index: usize, body: impl FnOnce()) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let msg =
            payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str)).unwrap_or("(a non-string panic payload)");
        eprintln!("shardcast: worker {index} panicked: {msg}; aborting");
        std::process::abort();
    }
}

/// Starts `cfg.threads` workers; `make(i)` builds worker i's service on its own thread.
/// Chooses the I/O backend first (`cfg.io`, see [`probe::select`]). Returns once every
/// worker's backend is up, or the first worker's error.
pub fn start<S, F>(cfg: RuntimeConfig, make: F) -> Result<Runtime<S::Mail>, StartError>
where
    S: Service,
    F: Fn(usize) -> S + Send + Sync + 'static,
{
    start_with(cfg, move |i, _| make(i))
}

/// [`start`], where `make(i, poster)` also gets a [`Poster`] to every worker (for a service
/// that hands its users a handle on the whole server).
pub fn start_with<S, F>(cfg: RuntimeConfig, make: F) -> Result<Runtime<S::Mail>, StartError>
where
    S: Service,
    F: Fn(usize, Poster<S::Mail>) -> S + Send + Sync + 'static,
{
    let backend = probe::select(cfg.io)?;
    tracing::info!(backend = backend.name(), "I/O backend");
    let threads = cfg.threads.max(1);
    // The first listener claims the address (see `listener`): a port another process serves
    // fails here instead of being shared with it.
    let first = listener::claim(cfg.bind, cfg.backlog).map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => StartError::AddrInUse { addr: cfg.bind },
        _ => StartError::Bind { addr: cfg.bind, source },
    })?;
    let first_fd = listener::into_raw(first);
    let addr = listener::local_addr(first_fd).map_err(|source| StartError::Bind { addr: cfg.bind, source })?;
    let mut fds = vec![first_fd];
    for _ in 1..threads {
        let l = listener::bind(addr, cfg.backlog).map_err(|source| StartError::Bind { addr, source })?;
        fds.push(listener::into_raw(l));
    }
    let mut boxes = Vec::with_capacity(threads);
    for _ in 0..threads {
        boxes.push(Mailbox::new().map_err(StartError::Mailbox)?);
    }
    let mailboxes = Arc::new(boxes);
    let make = Arc::new(make);
    let conns_total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let memory = MemoryGuard::new(cfg.worker.max_memory, Arc::new(memory::resident_bytes), Arc::default());
    // Worker i pins itself to the i-th CPU the process was given (wrapping), never outside
    // that set: under `taskset -c 1` worker 0 runs on CPU 1, not CPU 0.
    let cpus = Arc::new(allowed_cpus());
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), StartError>>();
    let mut handles = Vec::with_capacity(threads);
    let live = Arc::new(Liveness { gone: (0..threads).map(|_| AtomicBool::new(false)).collect(), ..Default::default() });
    for (i, fd) in fds.into_iter().enumerate() {
        let peers = mailboxes.clone();
        let poster = Poster { mailboxes: mailboxes.clone(), live: live.clone() };
        let make = make.clone();
        let ready = ready_tx.clone();
        let wcfg = cfg.worker.clone();
        let pin = cfg.pin;
        let conns_total = conns_total.clone();
        let memory = memory.clone();
        let cpus = cpus.clone();
        let live = live.clone();
        let h = std::thread::Builder::new()
            .name(format!("shardcast-w{i}"))
            .spawn(move || {
                let _exit = ExitGuard(live, i);
                ON_WORKER.with(|w| w.set(true));
                abort_on_panic(i, || {
                    if pin && !cpus.is_empty() {
                        pin_to(cpus[i % cpus.len()]);
                    }
                    let own = peers[i].clone();
                    let service = make(i, poster);
                    match backend {
                        Chosen::Uring => match UringBackend::new(i, &wcfg) {
                            Ok(b) => {
                                let _ = ready.send(Ok(()));
                                Worker::new(i, b, fd, peers, conns_total, memory, service, wcfg).run();
                            }
                            Err(e) => {
                                let _ = ready.send(Err(e.into()));
                            }
                        },
                        Chosen::Epoll => match EpollBackend::new(wcfg.buf_size * epoll::READS_PER_PASS) {
                            Ok(b) => {
                                let _ = ready.send(Ok(()));
                                Worker::new(i, b, fd, peers, conns_total, memory, service, wcfg).run();
                            }
                            Err(e) => {
                                let _ = ready.send(Err(StartError::Io(e)));
                            }
                        },
                    }
                    // Mail nobody will read any more: dropping it tells whoever waits for an
                    // answer that none will come (see `app::pending`).
                    super::conn::drop_unread(&own);
                })
            })
            .expect("spawning a worker thread");
        handles.push(h);
    }
    drop(ready_tx);
    let mut rt = Runtime { addr, mailboxes, live, threads: handles, backend };
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                rt.shutdown();
                rt.join();
                return Err(e);
            }
            Err(_) => break,
        }
    }
    Ok(rt)
}

impl<M: Send + 'static> Runtime<M> {
    /// The I/O backend the workers run.
    pub fn backend(&self) -> Chosen {
        self.backend
    }

    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn poster(&self) -> Poster<M> {
        Poster { mailboxes: self.mailboxes.clone(), live: self.live.clone() }
    }

    /// A handle that collects every worker's counters (see [`Scraper`]).
    pub fn scraper(&self) -> Scraper {
        let boxes: Arc<Vec<Arc<Mailbox<RtMail<M>>>>> = self.mailboxes.clone();
        Scraper { boxes, live: self.live.clone() }
    }

    /// Asks every worker to stop accepting, close its sessions politely and exit.
    pub fn shutdown(&self) {
        self.live.stopping.store(true, Ordering::Release);
        for m in self.mailboxes.iter() {
            m.post(RtMail::Shutdown);
        }
    }

    /// Waits for every worker to exit.
    pub fn join(&mut self) {
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl<M: Send + 'static> Drop for Runtime<M> {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
            self.join();
        }
    }
}
