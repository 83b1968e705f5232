//! Does io_uring SEND_ZC beat a copying send here? Sends 512 MiB over a loopback TCP
//! connection in frames of 1 KiB to 256 KiB, with `IORING_OP_SEND` and with
//! `IORING_OP_SEND_ZC`, and prints throughput and the sender's CPU time for each, in one run.
//! (shardcast's runtime decides from this whether to use SEND_ZC for large frames.)
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{cqueue, opcode, types, IoUring};

fn thread_cpu() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut u);
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(u.ru_utime) + t(u.ru_stime)
    }
}

fn run(zc: bool, size: usize, total: usize) -> (f64, f64) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let tx = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut rx, _) = l.accept().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < total {
            let n = rx.read(&mut buf).unwrap();
            assert!(n > 0);
            got += n;
        }
    });
    let mut ring = IoUring::new(64).unwrap();
    let data = vec![7u8; size];
    let fd = types::Fd(tx.as_raw_fd());
    let (t0, c0) = (Instant::now(), thread_cpu());
    let mut sent = 0usize;
    let mut notifs_pending = 0usize;
    while sent < total || notifs_pending > 0 {
        if sent < total {
            let e = if zc { opcode::SendZc::new(fd, data.as_ptr(), size as u32).build() } else { opcode::Send::new(fd, data.as_ptr(), size as u32).build() };
            // SAFETY: `data` outlives the operation (and, for SEND_ZC, its notification).
            unsafe { ring.submission().push(&e.user_data(1)).unwrap() };
        }
        ring.submit_and_wait(1).unwrap();
        for cqe in ring.completion() {
            let f = cqe.flags();
            if cqueue::notif(f) {
                notifs_pending -= 1;
                continue;
            }
            assert!(cqe.result() > 0, "send failed: {}", cqe.result());
            sent += cqe.result() as usize;
            if cqueue::more(f) {
                notifs_pending += 1;
            }
        }
    }
    let r = (t0.elapsed().as_secs_f64(), thread_cpu() - c0);
    reader.join().unwrap();
    r
}

fn main() {
    let total = 512 << 20;
    println!("| frame | SEND GB/s | SEND_ZC GB/s | ZC ÷ SEND (throughput) | SEND CPU s | SEND_ZC CPU s |");
    println!("|---|---|---|---|---|---|");
    for size in [1 << 10, 16 << 10, 64 << 10, 256 << 10] {
        let (ts, cs) = run(false, size, total);
        let (tz, cz) = run(true, size, total);
        let gb = total as f64 / 1e9;
        println!("| {} KiB | {:.2} | {:.2} | {:.2}× | {:.3} | {:.3} |", size >> 10, gb / ts, gb / tz, ts / tz, cs, cz);
    }
}
