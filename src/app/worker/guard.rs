//! Runs user code — connect middleware, the dynamic-namespace filter, handlers, ack callbacks,
//! and the drop of values user code handed over (a socket's data slot, unanswered callbacks) —
//! so that a panic never leaves it: the panic is caught, logged once at warn, and reported to
//! the caller as `None`.
//!
//! Must never: decide what a panic means for a socket (the caller disconnects it), log one
//! panic twice, or let a panic escape, not even one raised while dropping a panic's payload.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `f`; `None` when it panicked (logged here, once). `what` names the user code and
/// `socket` the socket it ran for (empty before there is one), for the log line.
pub(crate) fn catch<R>(what: &'static str, socket: &str, f: impl FnOnce() -> R) -> Option<R> {
    // AssertUnwindSafe: after a panic the caller tears down the only state user code could
    // have left half-updated through its `Socket` (that socket); the worker's own tables are
    // updated by whole operations that never call user code in the middle.
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => Some(r),
        Err(payload) => {
            tracing::warn!(what, socket, panic = %message(payload.as_ref()), "user code panicked; only its socket is affected");
            drop_quietly(payload);
            None
        }
    }
}

/// Drops a value whose `Drop` may be user code; a panic there is logged and swallowed.
pub(crate) fn drop_quietly<T>(value: T) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(value))) {
        tracing::warn!(panic = %message(payload.as_ref()), "dropping a value of user code panicked");
        // The payload's own drop could panic again: leak it instead (a pathological case).
        std::mem::forget(payload);
    }
}

fn message(payload: &(dyn Any + Send)) -> &str {
    payload.downcast_ref::<&str>().copied().or_else(|| payload.downcast_ref::<String>().map(String::as_str)).unwrap_or("(not a string)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_and_reported_as_none() {
        assert_eq!(catch("test", "", || 7), Some(7));
        assert_eq!(catch("test", "s1", || -> u8 { panic!("boom") }), None);
    }

    #[test]
    fn a_panicking_drop_is_swallowed() {
        struct Bomb;
        impl Drop for Bomb {
            fn drop(&mut self) {
                panic!("drop bomb");
            }
        }
        drop_quietly(Bomb);
        drop_quietly(Some(Box::new(Bomb) as Box<dyn Any>));
    }
}
