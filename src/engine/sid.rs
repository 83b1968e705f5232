//! Session ids: 120 random bits (base64url, 20 characters) behind a 2-character prefix that
//! names the worker owning the session, so any worker can route a request for a session to
//! its owner without a shared table.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn digit(c: u8) -> Option<usize> {
    ALPHABET.iter().position(|&a| a == c)
}

/// A new session id owned by `worker` (< 4096).
pub fn generate(worker: usize) -> String {
    let mut random = [0u8; 15];
    getrandom::fill(&mut random).expect("the OS random source is available");
    let mut s = String::with_capacity(22);
    s.push(ALPHABET[(worker >> 6) & 63] as char);
    s.push(ALPHABET[worker & 63] as char);
    s.push_str(&URL_SAFE_NO_PAD.encode(random));
    s
}

/// The worker a session id belongs to, if it is well formed.
pub fn owner(sid: &str) -> Option<usize> {
    let b = sid.as_bytes();
    if b.len() != 22 {
        return None;
    }
    Some(digit(b[0])? << 6 | digit(b[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_their_worker_and_differ() {
        for w in [0, 1, 63, 64, 4095] {
            let s = generate(w);
            assert_eq!(s.len(), 22);
            assert_eq!(owner(&s), Some(w));
        }
        assert_ne!(generate(0), generate(0));
        assert_eq!(owner("short"), None);
    }
}
