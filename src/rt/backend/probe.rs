//! The start-up probe behind `--io auto|uring`: can this process use io_uring the way the
//! io_uring backend does? It sets up a ring, submits a no-op and waits for it (a seccomp profile
//! may allow `io_uring_setup` and refuse `io_uring_enter`), asks the kernel which opcodes it
//! supports (`IORING_REGISTER_PROBE`) and registers a provided-buffer ring, so that every way
//! io_uring is refused is found before the server says it is listening, and named.
//!
//! Out of memory and out of descriptors are not "io_uring is unavailable": they are fatal
//! whichever backend runs, and reported as such.
//!
//! Owns: the diagnosis (cause and remedy). Must never: fall back silently; `auto` warns once.

use std::io;

use io_uring::{opcode, IoUring, Probe};

use super::{Chosen, IoBackend};
use crate::rt::bufring::BufRing;
use crate::rt::ring::{self, RingError};

/// Test-only switch: makes the probe fail as if the kernel had answered `eperm` (setup),
/// `enosys` (setup), `enter` (EPERM from `io_uring_enter`), `opcode` (an opcode missing) or
/// `enomem` (setup, fatal). Used by `tests/io_backend.rs`; never set in production.
pub const TEST_FAIL_ENV: &str = "SHARDCAST_TEST_FAIL_URING_PROBE";

/// The opcodes the io_uring backend submits.
const OPCODES: [(u8, &str); 6] = [
    (opcode::Nop::CODE, "NOP"),
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Writev::CODE, "WRITEV"),
    (opcode::Read::CODE, "READ"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
];

/// io_uring cannot be used here: why, and what would bring it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    /// What failed and its most likely cause (names the errno and the call).
    pub cause: String,
    /// How to get io_uring back.
    pub remedy: String,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "io_uring is unavailable: {}. To use io_uring: {}", self.cause, self.remedy)
    }
}

/// What the probe found.
#[derive(Debug)]
pub enum ProbeError {
    /// io_uring is refused or missing: `auto` falls back to epoll.
    Unavailable(Unavailable),
    /// Out of memory or descriptors: fatal under either backend.
    Fatal(io::Error),
}

const SECCOMP_REMEDY: &str = "run with a seccomp profile that allows io_uring_setup, io_uring_enter and io_uring_register (Docker: `--security-opt seccomp=<profile>`, see docs/deploy.md), or pass `--io epoll` to choose epoll without this warning";

fn fatal(errno: i32) -> bool {
    matches!(errno, libc::ENOMEM | libc::EMFILE | libc::ENFILE)
}

/// The running kernel's release (`uname -r`) and its major.minor.
fn kernel() -> (String, (u32, u32)) {
    // SAFETY: `u` is a plain struct uname fills with NUL-terminated strings.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return ("unknown".into(), (0, 0));
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr()).to_string_lossy().into_owned()
    };
    let mut parts = release.split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let v = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (release, v)
}

/// Whether a seccomp filter is installed on this process (`Seccomp: 2`).
fn seccomp_filtered() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.lines().any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2')))
}

/// Why `io_uring_setup` said EPERM (or EACCES): the sysctl, or a filter.
fn setup_refused(name: &str) -> Unavailable {
    match std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map(|s| s.trim().to_string()).as_deref() {
        Ok("2") => Unavailable {
            cause: format!("io_uring_setup returned {name}: the sysctl kernel.io_uring_disabled is 2 (io_uring is disabled for every process)"),
            remedy: "set `sysctl -w kernel.io_uring_disabled=0` (or 1 with this user in kernel.io_uring_group), or pass `--io epoll`".into(),
        },
        Ok("1") => Unavailable {
            cause: format!(
                "io_uring_setup returned {name}: the sysctl kernel.io_uring_disabled is 1 and this process is not in the group kernel.io_uring_group names"
            ),
            remedy: "add the server's user to the group `sysctl kernel.io_uring_group` names (or set kernel.io_uring_disabled=0), or pass `--io epoll`".into(),
        },
        _ => Unavailable {
            cause: format!(
                "io_uring_setup returned {name}: refused by {} (Docker's default seccomp profile blocks io_uring since Docker 25, containerd's does too)",
                if seccomp_filtered() { "this process's seccomp filter" } else { "a seccomp filter or a security module (SELinux, AppArmor)" }
            ),
            remedy: SECCOMP_REMEDY.into(),
        },
    }
}

fn setup_failed(e: io::Error) -> ProbeError {
    let errno = e.raw_os_error().unwrap_or(0);
    match errno {
        e if fatal(e) => ProbeError::Fatal(io::Error::new(io::ErrorKind::OutOfMemory, format!("io_uring_setup: {}", io::Error::from_raw_os_error(e)))),
        libc::EPERM => ProbeError::Unavailable(setup_refused("EPERM")),
        libc::EACCES => ProbeError::Unavailable(setup_refused("EACCES")),
        libc::ENOSYS => {
            let (release, v) = kernel();
            ProbeError::Unavailable(if v >= (5, 1) {
                Unavailable {
                    cause: format!(
                        "io_uring_setup returned ENOSYS although kernel {release} has io_uring: a seccomp filter that answers ENOSYS (some container runtimes' default profiles do){}, or a kernel built without CONFIG_IO_URING",
                        if seccomp_filtered() { ", and this process has one" } else { "" }
                    ),
                    remedy: SECCOMP_REMEDY.into(),
                }
            } else {
                Unavailable {
                    cause: format!("io_uring_setup returned ENOSYS: kernel {release} has no io_uring"),
                    remedy: "run kernel 5.19 or later (6.1+ recommended), or pass `--io epoll`".into(),
                }
            })
        }
        _ => ProbeError::Unavailable(Unavailable {
            cause: format!("io_uring_setup failed: {e}"),
            remedy: "run kernel 5.19 or later (6.1+ recommended), or pass `--io epoll`".into(),
        }),
    }
}

/// Probes io_uring as the backend uses it, on a throw-away thread. `Ok` when it works.
///
/// Not on the caller's thread: a ring ties its creator's thread to an io_uring task context,
/// and the ring's teardown (asynchronous in the kernel) notifies that thread later, which
/// interrupts a blocking socket call with a timeout on it (EINTR). The caller may be the
/// binary's main thread or an application's own thread; only the workers own rings.
pub fn probe() -> Result<(), ProbeError> {
    std::thread::Builder::new()
        .name("shardcast-probe".into())
        .spawn(probe_here)
        .map_err(ProbeError::Fatal)?
        .join()
        .unwrap_or_else(|_| Err(ProbeError::Fatal(io::Error::other("the io_uring probe panicked"))))
}

fn probe_here() -> Result<(), ProbeError> {
    let fail = std::env::var(TEST_FAIL_ENV).ok();
    let fail = fail.as_deref();
    match fail {
        Some("eperm") => return Err(setup_failed(io::Error::from_raw_os_error(libc::EPERM))),
        Some("enosys") => return Err(setup_failed(io::Error::from_raw_os_error(libc::ENOSYS))),
        Some("enomem") => return Err(setup_failed(io::Error::from_raw_os_error(libc::ENOMEM))),
        _ => {}
    }
    let mut ring = IoUring::new(8).map_err(setup_failed)?;
    // Setup allowed, enter refused: the no-op submitted and waited for tells.
    let entered = if fail == Some("enter") {
        Err(RingError::Enter { errno: "EPERM", error: io::Error::from_raw_os_error(libc::EPERM), hint: "" })
    } else {
        ring::check_enter(&mut ring)
    };
    match entered {
        Ok(()) => {}
        Err(RingError::Enter { error, errno, .. }) => {
            let n = error.raw_os_error().unwrap_or(0);
            if fatal(n) {
                return Err(ProbeError::Fatal(io::Error::new(io::ErrorKind::OutOfMemory, format!("io_uring_enter: {error}"))));
            }
            return Err(ProbeError::Unavailable(Unavailable {
                cause: format!(
                    "io_uring_enter returned {errno} ({error}) although io_uring_setup worked: a seccomp profile or security module that allows setting up a ring but not entering it"
                ),
                remedy: SECCOMP_REMEDY.into(),
            }));
        }
        Err(e) => return Err(ProbeError::Unavailable(Unavailable { cause: format!("a no-op through io_uring failed: {e}"), remedy: SECCOMP_REMEDY.into() })),
    }
    let mut p = Probe::new();
    if let Err(e) = ring.submitter().register_probe(&mut p) {
        let n = e.raw_os_error().unwrap_or(0);
        if fatal(n) {
            return Err(ProbeError::Fatal(e));
        }
        let (release, _) = kernel();
        return Err(ProbeError::Unavailable(match n {
            libc::EINVAL => Unavailable {
                cause: format!("io_uring_register(IORING_REGISTER_PROBE) returned EINVAL: kernel {release} is too old"),
                remedy: "run kernel 5.19 or later (6.1+ recommended), or pass `--io epoll`".into(),
            },
            _ => {
                Unavailable { cause: format!("io_uring_register returned {e}: a seccomp profile or security module refuses it"), remedy: SECCOMP_REMEDY.into() }
            }
        }));
    }
    let pretend_missing = |code: u8| fail == Some("opcode") && code == opcode::Accept::CODE;
    let missing: Vec<&str> = OPCODES.iter().filter(|(code, _)| !p.is_supported(*code) || pretend_missing(*code)).map(|(_, n)| *n).collect();
    if !missing.is_empty() {
        let (release, _) = kernel();
        return Err(ProbeError::Unavailable(Unavailable {
            cause: format!("kernel {release}'s io_uring lacks the opcode(s) {} (IORING_REGISTER_PROBE)", missing.join(", ")),
            remedy: "run kernel 5.19 or later (6.1+ recommended), or pass `--io epoll`".into(),
        }));
    }
    // Provided-buffer rings and multishot accept (both kernel 5.19).
    let (release, v) = kernel();
    if v < (5, 19) {
        return Err(ProbeError::Unavailable(Unavailable {
            cause: format!("kernel {release} is older than 5.19 (multishot accept and provided-buffer rings)"),
            remedy: "run kernel 5.19 or later (6.1+ recommended), or pass `--io epoll`".into(),
        }));
    }
    match BufRing::new(&ring, 8, 4096, 9) {
        Ok(b) => {
            let _ = ring.submitter().unregister_buf_ring(9);
            drop(b);
        }
        Err(RingError::NoBufRing(e)) | Err(RingError::Other(e)) if e.raw_os_error().is_some_and(fatal) => return Err(ProbeError::Fatal(e)),
        Err(e) => {
            return Err(ProbeError::Unavailable(Unavailable {
                cause: format!("registering a provided-buffer ring failed: {e}"),
                remedy: SECCOMP_REMEDY.into(),
            }))
        }
    }
    Ok(())
}

/// Chooses the backend for `requested`: `auto` probes io_uring and falls back to epoll with one
/// warning line naming the cause; `uring` fails with that diagnosis; `epoll` does not probe.
pub fn select(requested: IoBackend) -> Result<Chosen, ProbeError> {
    match requested {
        IoBackend::Epoll => Ok(Chosen::Epoll),
        IoBackend::Uring => probe().map(|()| Chosen::Uring),
        IoBackend::Auto => match probe() {
            Ok(()) => Ok(Chosen::Uring),
            Err(ProbeError::Unavailable(u)) => {
                tracing::warn!("io_uring is unavailable: {}; serving with epoll instead. To use io_uring: {}", u.cause, u.remedy);
                Ok(Chosen::Epoll)
            }
            Err(e) => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diagnosis_names_the_errno_and_a_remedy() {
        for (errno, name) in [(libc::EPERM, "EPERM"), (libc::EACCES, "EACCES"), (libc::ENOSYS, "ENOSYS")] {
            match setup_failed(io::Error::from_raw_os_error(errno)) {
                ProbeError::Unavailable(u) => {
                    assert!(u.cause.contains(name), "{u}");
                    assert!(u.cause.contains("io_uring_setup"), "{u}");
                    assert!(!u.remedy.is_empty());
                }
                ProbeError::Fatal(e) => panic!("{name} must fall back, not be fatal: {e}"),
            }
        }
        for errno in [libc::ENOMEM, libc::EMFILE, libc::ENFILE] {
            assert!(matches!(setup_failed(io::Error::from_raw_os_error(errno)), ProbeError::Fatal(_)), "errno {errno} stays fatal");
        }
    }

    #[test]
    fn epoll_is_chosen_without_probing() {
        assert_eq!(select(IoBackend::Epoll).unwrap(), Chosen::Epoll);
    }
}
