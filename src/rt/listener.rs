//! Listening sockets: one per worker on the same address with `SO_REUSEPORT`, so the kernel
//! spreads new connections over the workers and nothing is shared on the hot path.

use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd, RawFd};

use socket2::{Domain, Socket, Type};

/// Binds a listening socket with `SO_REUSEADDR` and `SO_REUSEPORT`, close-on-exec. It stays
/// in blocking mode, as before: the ring's accept never blocks the thread either way.
pub fn bind(addr: SocketAddr, backlog: i32) -> std::io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_cloexec(true)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// The address a socket is bound to (to learn the port after binding port 0).
pub fn local_addr(fd: RawFd) -> std::io::Result<SocketAddr> {
    // SAFETY: the caller owns `fd` and keeps it open for the duration of this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    socket2::SockRef::from(&fd).local_addr()?.as_socket().ok_or_else(|| std::io::Error::other("unknown address family"))
}

/// Sets `TCP_NODELAY` on an accepted connection (frames are already batched per loop turn).
pub fn set_nodelay(fd: RawFd) {
    // SAFETY: `fd` is an accepted connection the worker owns and keeps open during this call.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    // Failure is harmless: the connection is only a little slower.
    let _ = socket2::SockRef::from(&fd).set_tcp_nodelay(true);
}

/// Releases ownership of a descriptor to hand it to a worker.
pub fn into_raw(fd: OwnedFd) -> RawFd {
    fd.into_raw_fd()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    fn flag(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> libc::c_int {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid out-parameters of the sizes given.
        let r = unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut libc::c_int).cast(), &mut len) };
        assert_eq!(r, 0, "getsockopt: {}", std::io::Error::last_os_error());
        v
    }

    #[test]
    fn bind_sets_reuse_cloexec_and_listens_twice_on_one_port() {
        let a = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = local_addr(a.as_raw_fd()).unwrap();
        assert_ne!(addr.port(), 0);
        // SO_REUSEPORT lets a second worker listen on the same port.
        let b = bind(addr, 16).unwrap();
        assert_eq!(local_addr(b.as_raw_fd()).unwrap(), addr);
        for fd in [a.as_raw_fd(), b.as_raw_fd()] {
            assert_ne!(flag(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR), 0);
            assert_ne!(flag(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT), 0);
            assert_ne!(flag(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN), 0);
            // SAFETY: plain fcntl query on our own descriptor.
            let fdflags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_ne!(fdflags & libc::FD_CLOEXEC, 0);
        }
        // A client gets through.
        std::net::TcpStream::connect(addr).unwrap();
    }

    #[test]
    fn local_addr_of_ipv6() {
        let Ok(a) = bind("[::1]:0".parse().unwrap(), 16) else {
            return;
        }; // no IPv6 loopback here
        let addr = local_addr(a.as_raw_fd()).unwrap();
        assert!(addr.is_ipv6());
    }
}
