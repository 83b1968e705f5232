//! Listening sockets: one per worker on the same address with `SO_REUSEPORT`, so the kernel
//! spreads new connections over the workers and nothing is shared on the hot path.
//!
//! Only this process's workers may share the port. Linux lets any process of the same
//! effective UID join a `SO_REUSEPORT` group, so a second server started on the same port
//! would silently take half the connections. [`claim`] therefore binds the first listener
//! *without* `SO_REUSEPORT` (the bind fails with `EADDRINUSE` if anything else holds the
//! address, reuse-port group or not), and only then turns `SO_REUSEPORT` on and listens;
//! the other workers [`bind`] into that group. The claim is the bind itself, atomic in the
//! kernel: there is no window between a check and a bind (as a probe socket closed before
//! the real bind would leave) in which two instances could both pass. What stays open is a
//! *different* program that binds with `SO_REUSEPORT` under the same UID after we started:
//! the kernel gives us no way to close the group to it.

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

/// Claims `addr` for this process: binds without `SO_REUSEPORT`, so that the bind fails with
/// `EADDRINUSE` when any other socket (another process's reuse-port group included) holds it,
/// then enables `SO_REUSEPORT` and listens so that this process's other workers can [`bind`]
/// to the same address.
pub fn claim(addr: SocketAddr, backlog: i32) -> std::io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_cloexec(true)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.set_reuse_port(true)?;
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
    fn claim_refuses_an_address_someone_else_serves_and_lets_our_workers_join() {
        // Someone else's reuse-port listener (another instance of us, same UID) holds the port:
        // a claim must fail where a plain reuse-port bind would silently join.
        let other = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = local_addr(other.as_raw_fd()).unwrap();
        let err = claim(addr, 16).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(other);

        // A claimed address takes our own workers' reuse-port listeners...
        let first = claim("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = local_addr(first.as_raw_fd()).unwrap();
        assert_ne!(flag(first.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT), 0);
        let second = bind(addr, 16).unwrap();
        assert_ne!(flag(second.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ACCEPTCONN), 0);
        // ...and refuses a second claim (a second instance of the server).
        assert_eq!(claim(addr, 16).unwrap_err().kind(), std::io::ErrorKind::AddrInUse);
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
