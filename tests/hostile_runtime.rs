//! The runtime's lifecycle under hostile conditions, against the real binary: running out of
//! file descriptors, shutting down with sends stuck in flight, a runtime panic, and seccomp
//! filters that refuse io_uring (`io_uring_setup` with EPERM or ENOSYS, or only
//! `io_uring_enter`): `--io auto` falls back to epoll with one warning naming the cause and
//! serves, `--io uring` exits with that cause. Every wait is bounded and a timeout fails.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{Http, Ws};

/// A server process with its stdout and stderr captured line by line.
struct Proc {
    child: Child,
    stdout: Receiver<String>,
    stderr: Arc<Mutex<Vec<String>>>,
}

#[derive(Default)]
struct Limits {
    nofile: Option<u64>,
    /// A seccomp filter failing this system call with this errno (and allowing the rest).
    refuse: Option<(u32, i32)>,
    env: Vec<(&'static str, &'static str)>,
}

/// io_uring's system call numbers (the same in every architecture's generic table).
const NR_IO_URING_SETUP: u32 = 425;
const NR_IO_URING_ENTER: u32 = 426;

/// Installs a seccomp filter failing system call `nr` with `errno` and allowing the rest.
/// Only async-signal-safe calls: it runs between fork and exec.
fn refuse_syscall(nr: u32, errno: i32) -> std::io::Result<()> {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let filter = [
        // Load the system call number (offset 0 of `struct seccomp_data`).
        libc::sock_filter { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: 0 },
        libc::sock_filter { code: BPF_JMP_JEQ_K, jt: 0, jf: 1, k: nr },
        libc::sock_filter { code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ERRNO | errno as u32 },
        libc::sock_filter { code: BPF_RET_K, jt: 0, jf: 0, k: SECCOMP_RET_ALLOW },
    ];
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: prctl with constant arguments; `prog` points to `filter`, both alive during the
    // call (the kernel copies the program).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Proc {
    fn spawn(args: &[&str], limits: Limits) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_shardcast"));
        cmd.args(args).args(support::io_args(args)).args(["--bind", "127.0.0.1:0"]).stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.env("RUST_LOG", "info");
        for (k, v) in &limits.env {
            cmd.env(k, v);
        }
        let nofile = limits.nofile;
        let refuse = limits.refuse;
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // async-signal-safe system calls (setrlimit, prctl); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(n) = nofile {
                    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some((nr, errno)) = refuse {
                    refuse_syscall(nr, errno)?;
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start shardcast");
        let (tx, stdout) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let sink = stderr.clone();
        let err = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, stdout, stderr }
    }

    /// Waits (bounded) for the "listening on" line and returns the address.
    fn listening(&self) -> SocketAddr {
        let line =
            self.stdout.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("no \"listening\" line within 20 s; stderr: {:?}", self.stderr_text()));
        line.split_whitespace().find_map(|w| w.parse::<SocketAddr>().ok()).unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    fn stderr_lines(&self) -> usize {
        self.stderr.lock().unwrap().len()
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits until `pred` holds on stderr; fails after `limit`.
    fn wait_stderr(&self, limit: Duration, what: &str, pred: impl Fn(&str) -> bool) {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if pred(&self.stderr_text()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{what} not seen on stderr within {limit:?}; stderr: {}", self.stderr_text());
    }

    /// Waits for the process to exit; fails (and kills it) after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the server did not exit within {limit:?}; stderr: {}", self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process's user + system CPU time so far.
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the parenthesised command name: state is the first, utime the 12th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf with a constant name.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    fn sigterm(&self) {
        // SAFETY: sending SIGTERM to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn polling_handshake_ok(addr: SocketAddr) {
    let mut h = Http::connect(addr);
    let r = h.get("/socket.io/?EIO=4&transport=polling", "");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().starts_with("0{\"sid\""), "{}", r.text());
}

#[test]
fn out_of_file_descriptors_pauses_accepts_quietly_and_recovers() {
    let server = Proc::spawn(&["--threads", "1", "--no-pin"], Limits { nofile: Some(64), ..Limits::default() });
    let addr = server.listening();
    // More connections than the server has descriptors: the kernel completes the handshakes
    // into the listen backlog; the server accepts until EMFILE.
    let mut clients = Vec::new();
    for _ in 0..150 {
        clients.push(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect into the backlog"));
    }
    server.wait_stderr(Duration::from_secs(5), "the EMFILE warning", |e| e.contains("pausing accepts"));
    // Over the next 2 s the server keeps running out of descriptors: it must neither flood
    // its log nor spin.
    let (lines0, cpu0, t0) = (server.stderr_lines(), server.cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let (lines1, cpu1, elapsed) = (server.stderr_lines(), server.cpu_time(), t0.elapsed());
    let logged = lines1 - lines0;
    assert!(logged < 50, "{logged} stderr lines in {elapsed:?}: {}", server.stderr_text());
    let cpu = cpu1 - cpu0;
    assert!(cpu < elapsed / 4, "the server used {cpu:?} of CPU in {elapsed:?} while out of descriptors");
    let warnings = server.stderr_text().matches("pausing accepts").count();
    assert!(warnings >= 1);
    // Once the excess clients leave, a fresh one is served.
    drop(clients);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        // The server may still be accepting (and closing) the departed clients' backlog.
        let served = std::panic::catch_unwind(|| polling_handshake_ok(addr));
        if served.is_ok() {
            break;
        }
        assert!(Instant::now() < end, "no handshake served within 10 s after the clients left; stderr: {}", server.stderr_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Socket.IO client on a WebSocket, connected to `/`, that from now on never reads.
fn stuck_reader(addr: SocketAddr) -> Ws {
    let mut ws = Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(Duration::from_secs(10));
    assert!(ws.recv_eio().starts_with("0{"));
    ws.send_text("40");
    assert!(ws.recv_eio().starts_with("40{"));
    ws
}

#[test]
fn shutdown_refuses_new_clients_at_once_and_exits_with_sends_in_flight() {
    let mut server = Proc::spawn(
        &["--threads", "2", "--no-pin", "--ping-interval", "60000", "--ping-timeout", "60000", "--max-send-buffer", "1000000000"],
        Limits::default(),
    );
    let addr = server.listening();
    // Each client asks for ~16 MB of echoes and reads none of them: the server's writes stay
    // in flight (the socket buffers are full), holding its send queues.
    let big = "x".repeat(800_000);
    let msg = format!("42[\"message\",\"{big}\"]");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = stuck_reader(addr);
        ws.stream.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        for _ in 0..20 {
            ws.send_text(&msg);
        }
        clients.push(ws);
    }
    // The echoes are flowing (the first bytes reached the client), and more is queued than
    // the sockets hold.
    for ws in &clients {
        ws.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(ws.stream.peek(&mut b).expect("echoes arrive"), 1);
    }
    let grace = Duration::from_secs(3);
    let t0 = Instant::now();
    server.sigterm();
    // New clients are refused right away (not queued for the grace period).
    let refused_after = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => break t0.elapsed(),
            Err(e) => panic!("connect after SIGTERM: {e} (expected a refusal)"),
            Ok(mut s) => {
                // Slipped into a backlog before the listener closed: it must be reset, not kept.
                let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "a connect was still accepted 1 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(server.child.try_wait().unwrap().is_none(), "refused only because the server had already exited");
    let status = server.wait_exit(grace + Duration::from_secs(2) - t0.elapsed().min(grace));
    let took = t0.elapsed();
    assert!(status.success(), "exit status {status:?}; stderr: {}", server.stderr_text());
    assert!(!server.stderr_text().contains("still in flight"), "teardown did not drain: {}", server.stderr_text());
    eprintln!("refused {refused_after:?} after SIGTERM; exited after {took:?}");
    drop(clients);
}

#[test]
fn a_runtime_panic_aborts_the_process_with_a_message() {
    let mut server = Proc::spawn(&["--threads", "2", "--no-pin"], Limits { env: vec![("SHARDCAST_TEST_PANIC_WORKER", "1")], ..Limits::default() });
    let status = server.wait_exit(Duration::from_secs(20));
    assert_eq!(status.signal(), Some(libc::SIGABRT), "status {status:?}; stderr: {}", server.stderr_text());
    server.wait_stderr(Duration::from_secs(5), "the abort message", |e| e.contains("shardcast: worker 1 panicked:") && e.contains("; aborting"));
}

/// A Socket.IO client on a WebSocket gets its `message` echoed, and a polling handshake works.
fn serves_a_client(addr: SocketAddr) {
    polling_handshake_ok(addr);
    let mut ws = Ws::connect(addr, "/socket.io/?EIO=4&transport=websocket", "");
    ws.set_timeout(Duration::from_secs(10));
    assert!(ws.recv_eio().starts_with("0{"));
    ws.send_text("40");
    assert!(ws.recv_eio().starts_with("40{"));
    assert_eq!(ws.recv_eio(), r#"42["auth",{}]"#);
    ws.send_text(r#"42["message","hi",1]"#);
    assert_eq!(ws.recv_eio(), r#"42["message-back","hi",1]"#);
}

/// Under a filter refusing `nr` with `errno`: `--io auto` warns once (naming `call` and
/// `errno_name`), serves on epoll and exits cleanly; `--io uring` exits non-zero with the
/// cause before saying it listens.
fn refused_io_uring(nr: u32, errno: i32, call: &str, errno_name: &str) {
    let mut server = Proc::spawn(&["--threads", "2", "--no-pin", "--io", "auto"], Limits { refuse: Some((nr, errno)), ..Limits::default() });
    let addr = server.listening();
    serves_a_client(addr);
    server.wait_stderr(Duration::from_secs(5), "the fallback warning", |e| e.contains("serving with epoll instead"));
    let err = server.stderr_text();
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("io_uring is unavailable")).collect();
    assert_eq!(warnings.len(), 1, "one warning line; stderr: {err}");
    let w = warnings[0];
    for needed in [call, errno_name, "seccomp", "serving with epoll instead", "To use io_uring"] {
        assert!(w.contains(needed), "the warning names {needed:?}: {w}");
    }
    assert!(err.contains(r#"backend="epoll""#), "{err}");
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success(), "stderr: {}", server.stderr_text());

    let mut server = Proc::spawn(&["--threads", "2", "--no-pin", "--io", "uring"], Limits { refuse: Some((nr, errno)), ..Limits::default() });
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "status {status:?}");
    assert_eq!(status.signal(), None, "a clean error exit, not a crash: {status:?}; stderr: {}", server.stderr_text());
    server.wait_stderr(Duration::from_secs(5), "the io_uring error", |e| {
        e.contains("io_uring is unavailable") && e.contains(call) && e.contains(errno_name) && e.contains("seccomp")
    });
    let said: Vec<String> = server.stdout.try_iter().collect();
    assert!(said.iter().all(|l| !l.contains("listening")), "it said it was listening: {said:?}");
}

#[test]
fn seccomp_eperm_on_io_uring_setup_falls_back_to_epoll() {
    refused_io_uring(NR_IO_URING_SETUP, libc::EPERM, "io_uring_setup", "EPERM");
}

#[test]
fn seccomp_enosys_on_io_uring_setup_falls_back_to_epoll() {
    refused_io_uring(NR_IO_URING_SETUP, libc::ENOSYS, "io_uring_setup", "ENOSYS");
}

#[test]
fn seccomp_refusing_only_io_uring_enter_falls_back_to_epoll() {
    refused_io_uring(NR_IO_URING_ENTER, libc::EPERM, "io_uring_enter", "EPERM");
}

/// The test-only switch makes the probe fail without a filter: the fallback warns once and
/// serves; out of memory stays fatal (no fallback).
#[test]
fn a_failed_probe_falls_back_with_one_warning_and_enomem_stays_fatal() {
    let mut server =
        Proc::spawn(&["--threads", "1", "--no-pin", "--io", "auto"], Limits { env: vec![("SHARDCAST_TEST_FAIL_URING_PROBE", "opcode")], ..Limits::default() });
    let addr = server.listening();
    serves_a_client(addr);
    server.wait_stderr(Duration::from_secs(5), "the fallback warning", |e| e.contains("serving with epoll instead"));
    let err = server.stderr_text();
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("io_uring is unavailable")).collect();
    assert_eq!(warnings.len(), 1, "one warning line; stderr: {err}");
    assert!(warnings[0].contains("lacks the opcode(s) ACCEPT") && warnings[0].contains("serving with epoll instead"), "{}", warnings[0]);
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).success());

    let mut server =
        Proc::spawn(&["--threads", "1", "--no-pin", "--io", "auto"], Limits { env: vec![("SHARDCAST_TEST_FAIL_URING_PROBE", "enomem")], ..Limits::default() });
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "ENOMEM must be fatal: {status:?}");
    // The stderr reader may still be collecting the last lines of the exited process.
    server.wait_stderr(Duration::from_secs(5), "the ENOMEM error", |e| e.contains("Cannot allocate memory") || e.contains("out of memory"));
    let err = server.stderr_text();
    assert!(!err.contains("serving with epoll"), "no fallback on ENOMEM: {err}");
}
