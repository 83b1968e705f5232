//! Incremental UTF-8 validation across fragments (RFC 6455 §8.1).
//!
//! Owns: remembering the up-to-3 bytes of a code point cut by a fragment boundary, so each
//! fragment is checked as it arrives ("fail fast") and a code point may straddle frames.
//! The bulk check is `simdutf8`; only the straddling code point is handled here.
//!
//! Must never: copy a fragment, or accept a sequence the whole-message check would reject.

/// Streaming validator; one per message being received.
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: usize,
}

/// Length of the UTF-8 sequence that a lead byte starts (0 for a byte that cannot start one).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

impl Utf8Validator {
    /// Validates the next chunk of a message. `last` says whether the message ends with it.
    /// Returns `false` as soon as the data cannot be valid UTF-8.
    pub fn feed(&mut self, mut chunk: &[u8], last: bool) -> bool {
        if self.pending_len > 0 {
            let need = sequence_len(self.pending[0]);
            while self.pending_len < need && !chunk.is_empty() {
                self.pending[self.pending_len] = chunk[0];
                self.pending_len += 1;
                chunk = &chunk[1..];
            }
            let seq = &self.pending[..self.pending_len];
            match simdutf8::compat::from_utf8(seq) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_none() && chunk.is_empty() && !last => return true,
                Err(_) => return false,
            }
        }
        match simdutf8::compat::from_utf8(chunk) {
            Ok(_) => true,
            Err(e) => {
                if e.error_len().is_some() || last {
                    return false;
                }
                // An incomplete sequence at the very end: keep it for the next fragment.
                let tail = &chunk[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len();
                true
            }
        }
    }

    /// Forgets any partial code point (after a message ends or fails).
    pub fn reset(&mut self) {
        self.pending_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn feed_split(data: &[u8], cuts: &[usize]) -> bool {
        let mut v = Utf8Validator::default();
        let mut pts: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
        pts.push(0);
        pts.push(data.len());
        pts.sort_unstable();
        let n = pts.len();
        for (i, w) in pts.windows(2).enumerate() {
            if !v.feed(&data[w[0]..w[1]], i == n - 2) {
                return false;
            }
        }
        true
    }

    #[test]
    fn code_point_straddling_fragments() {
        let s = "κόσμε€𝄞".as_bytes();
        for cut in 0..=s.len() {
            assert!(feed_split(s, &[cut]), "cut at {cut}");
            for cut2 in cut..=s.len() {
                assert!(feed_split(s, &[cut, cut2]));
            }
        }
    }

    #[test]
    fn rejects_invalid_and_truncated() {
        assert!(!feed_split(b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited", &[3]));
        assert!(!feed_split(b"abc\xe2\x82", &[]));
        assert!(!feed_split(b"abc\xe2\x82", &[4]));
        assert!(!feed_split(b"\xff", &[]));
        // A fragment that is incomplete but then continues with the wrong byte.
        let mut v = Utf8Validator::default();
        assert!(v.feed(b"\xf0\x9f", false));
        assert!(!v.feed(b"A", true));
    }

    proptest! {
        #[test]
        fn split_validation_agrees_with_whole(data in proptest::collection::vec(any::<u8>(), 0..64),
                                              s in "\\PC{0,20}",
                                              cuts in proptest::collection::vec(any::<usize>(), 0..5),
                                              use_string in any::<bool>()) {
            let bytes = if use_string { s.as_bytes().to_vec() } else { data };
            let whole = std::str::from_utf8(&bytes).is_ok();
            prop_assert_eq!(feed_split(&bytes, &cuts), whole);
        }
    }
}
