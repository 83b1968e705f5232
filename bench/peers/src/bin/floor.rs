//! The kernel's own cost per delivery: the same 100-byte WebSocket frame written to N loopback
//! sockets with nothing else — plain `write(2)` per socket, and io_uring sends batched one
//! submission per round. On loopback the receiver's TCP work is charged to the sender, so the
//! sender thread's CPU per write is the floor any server pays per delivery.
//!
//! `floor [sockets] [rounds]` prints µs of sender CPU per delivery for both ways.
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use io_uring::{opcode, types, IoUring};

fn thread_cpu_us() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut u);
        let t = |tv: libc::timeval| tv.tv_sec as f64 * 1e6 + tv.tv_usec as f64;
        t(u.ru_utime) + t(u.ru_stime)
    }
}

/// Drains every receiving socket with epoll until told to stop.
fn drain(rx: Vec<TcpStream>, stop: Arc<AtomicBool>) {
    // SAFETY: plain epoll syscalls on descriptors we own; events buffer is sized below.
    unsafe {
        let ep = libc::epoll_create1(0);
        for (i, s) in rx.iter().enumerate() {
            s.set_nonblocking(true).unwrap();
            let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
            libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev);
        }
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let n = libc::epoll_wait(ep, events.as_mut_ptr(), 1024, 50);
            for e in &events[..n.max(0) as usize] {
                let fd = rx[e.u64 as usize].as_raw_fd();
                while libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
            }
        }
    }
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rounds: usize = std::env::args().nth(2).and_then(|v| v.parse().ok()).unwrap_or(1000);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut tx = Vec::new();
    let mut rx = Vec::new();
    for _ in 0..n {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        c.set_nodelay(true).unwrap();
        tx.push(c);
        rx.push(l.accept().unwrap().0);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let reader = std::thread::spawn(move || drain(rx, s2));
    // A 100-byte Engine.IO/Socket.IO payload in one unmasked text frame.
    let mut frame = vec![0x81u8, 100];
    frame.extend_from_slice(br#"42["room-message",{"t":1234567890123,"p":"#);
    frame.resize(2 + 98, b'x');
    frame.extend_from_slice(b"}]");
    let fds: Vec<i32> = tx.iter().map(|s| s.as_raw_fd()).collect();

    let (t0, c0) = (Instant::now(), thread_cpu_us());
    for _ in 0..rounds {
        for &fd in &fds {
            // SAFETY: writing a valid buffer to a socket we own.
            let w = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
            assert_eq!(w as usize, frame.len());
        }
    }
    let (plain_wall, plain_cpu) = (t0.elapsed().as_secs_f64(), thread_cpu_us() - c0);

    let mut ring = IoUring::new(4096).unwrap();
    let (t0, c0) = (Instant::now(), thread_cpu_us());
    for _ in 0..rounds {
        for chunk in fds.chunks(2048) {
            for &fd in chunk {
                let e = opcode::Send::new(types::Fd(fd), frame.as_ptr(), frame.len() as u32).build();
                // SAFETY: `frame` outlives every send (we wait for all completions below).
                unsafe { ring.submission().push(&e).unwrap() };
            }
            ring.submit_and_wait(chunk.len()).unwrap();
            let done = ring.completion().map(|c| assert_eq!(c.result() as usize, frame.len())).count();
            assert_eq!(done, chunk.len());
        }
    }
    let (uring_wall, uring_cpu) = (t0.elapsed().as_secs_f64(), thread_cpu_us() - c0);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let d = (n * rounds) as f64;
    println!("sockets {n}, rounds {rounds}, {} deliveries of {} bytes each way", n * rounds, frame.len());
    println!("plain write      : {:.2} µs sender CPU per delivery ({:.2} µs wall)", plain_cpu / d, plain_wall * 1e6 / d);
    println!("io_uring batched : {:.2} µs sender CPU per delivery ({:.2} µs wall)", uring_cpu / d, uring_wall * 1e6 / d);
}
