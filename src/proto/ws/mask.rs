//! WebSocket payload masking (RFC 6455 §5.3).
//!
//! Owns: XOR-ing a payload with the client's 4-byte masking key, in place, from any mask
//! *phase* (the index into the key of the payload's first byte), so a payload can be unmasked
//! in pieces as partial reads arrive.
//!
//! Hand-written on purpose: every byte a client sends passes through here, so it is the
//! hottest loop of the server. The dispatcher picks AVX2 or SSE2 on x86_64 (runtime detection)
//! and NEON on aarch64, with a portable word-at-a-time fallback; every path is compared with
//! the naive byte loop by property tests at every length, alignment and phase.
//!
//! Must never: allocate, or read or write outside the slice it is given.

/// Rotates `mask` so that element 0 is the key byte that applies at `phase`.
#[inline]
fn rotated(mask: [u8; 4], phase: usize) -> [u8; 4] {
    let p = phase & 3;
    [mask[p], mask[(p + 1) & 3], mask[(p + 2) & 3], mask[(p + 3) & 3]]
}

/// Unmasks (or masks: XOR is its own inverse) `buf` in place with the fastest path this CPU
/// has. `phase` is the key index of `buf[0]`; the returned value is the phase of the byte that
/// would follow `buf`, to pass to the next call for the same payload.
#[inline]
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], phase: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if buf.len() >= 256 && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the AVX2 feature was detected on this CPU just above.
            return unsafe { apply_mask_avx2(buf, mask, phase) };
        }
        if buf.len() >= 128 {
            // SSE2 is part of the x86_64 baseline, so it is always available.
            return apply_mask_sse2(buf, mask, phase);
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if buf.len() >= 128 {
            return apply_mask_neon(buf, mask, phase);
        }
    }
    apply_mask_word(buf, mask, phase)
}

/// The reference implementation: one byte at a time. Used by the tests as the oracle and by
/// the benches as the baseline.
pub fn apply_mask_naive(buf: &mut [u8], mask: [u8; 4], phase: usize) -> usize {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= mask[(phase + i) & 3];
    }
    (phase + buf.len()) & 3
}

/// The key, rotated to `phase`, as a native-endian `u32` (its bytes in memory are the key
/// bytes in order, so XOR-ing any 4-byte-aligned offset of the payload with it is correct).
#[inline]
fn key32(mask: [u8; 4], phase: usize) -> u32 {
    u32::from_ne_bytes(rotated(mask, phase))
}

/// Portable fallback: unaligned 8-byte words, then the tail bytes. Works on every target.
pub fn apply_mask_word(buf: &mut [u8], mask: [u8; 4], phase: usize) -> usize {
    let end_phase = (phase + buf.len()) & 3;
    let m = rotated(mask, phase);
    let k = key32(mask, phase) as u64;
    let word = k | (k << 32);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8-byte chunk")) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // The tail starts a multiple of 8 bytes in: the rotated key applies from its index 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i & 3];
    }
    end_phase
}

/// SSE2: 16 bytes per step with unaligned loads and stores.
#[cfg(target_arch = "x86_64")]
pub fn apply_mask_sse2(buf: &mut [u8], mask: [u8; 4], phase: usize) -> usize {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_set1_epi32, _mm_storeu_si128, _mm_xor_si128};
    let end_phase = (phase + buf.len()) & 3;
    let mut chunks = buf.chunks_exact_mut(16);
    // SAFETY: SSE2 is in the x86_64 baseline. Each `chunk` is exactly 16 bytes owned by this
    // exclusive borrow; loadu/storeu accept any alignment.
    unsafe {
        let k = _mm_set1_epi32(key32(mask, phase) as i32);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr() as *mut __m128i;
            _mm_storeu_si128(p, _mm_xor_si128(_mm_loadu_si128(p), k));
        }
    }
    // 16 is a multiple of 4: the tail starts at the same phase as the buffer did.
    apply_mask_word(chunks.into_remainder(), mask, phase);
    end_phase
}

/// AVX2: 32 bytes per step with unaligned loads and stores.
///
/// # Safety
/// The CPU must support AVX2 (check with `is_x86_feature_detected!("avx2")`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn apply_mask_avx2(buf: &mut [u8], mask: [u8; 4], phase: usize) -> usize {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_set1_epi32, _mm256_storeu_si256, _mm256_xor_si256};
    let end_phase = (phase + buf.len()) & 3;
    let mut chunks = buf.chunks_exact_mut(32);
    // SAFETY: the caller guarantees AVX2. Each `chunk` is exactly 32 bytes owned by this
    // exclusive borrow; loadu/storeu accept any alignment.
    unsafe {
        let k = _mm256_set1_epi32(key32(mask, phase) as i32);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr() as *mut __m256i;
            _mm256_storeu_si256(p, _mm256_xor_si256(_mm256_loadu_si256(p), k));
        }
    }
    // 32 is a multiple of 4: the tail starts at the same phase as the buffer did.
    apply_mask_word(chunks.into_remainder(), mask, phase);
    end_phase
}

/// NEON: 16 bytes per step (NEON is mandatory on aarch64).
#[cfg(target_arch = "aarch64")]
pub fn apply_mask_neon(buf: &mut [u8], mask: [u8; 4], phase: usize) -> usize {
    use std::arch::aarch64::{vdupq_n_u32, veorq_u8, vld1q_u8, vreinterpretq_u8_u32, vst1q_u8};
    let end_phase = (phase + buf.len()) & 3;
    let mut chunks = buf.chunks_exact_mut(16);
    // SAFETY: NEON is in the aarch64 baseline. Each `chunk` is exactly 16 bytes owned by this
    // exclusive borrow; vld1q/vst1q accept any alignment.
    unsafe {
        let k = vreinterpretq_u8_u32(vdupq_n_u32(key32(mask, phase)));
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            vst1q_u8(p, veorq_u8(vld1q_u8(p), k));
        }
    }
    apply_mask_word(chunks.into_remainder(), mask, phase);
    end_phase
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type MaskFn = fn(&mut [u8], [u8; 4], usize) -> usize;

    fn paths() -> Vec<(&'static str, MaskFn)> {
        let mut v: Vec<(&'static str, MaskFn)> = vec![("dispatch", apply_mask), ("word", apply_mask_word)];
        #[cfg(target_arch = "x86_64")]
        {
            v.push(("sse2", apply_mask_sse2));
            if std::arch::is_x86_feature_detected!("avx2") {
                fn avx2(b: &mut [u8], m: [u8; 4], p: usize) -> usize {
                    // SAFETY: only registered after AVX2 was detected.
                    unsafe { apply_mask_avx2(b, m, p) }
                }
                v.push(("avx2", avx2));
            }
        }
        #[cfg(target_arch = "aarch64")]
        v.push(("neon", apply_mask_neon));
        v
    }

    #[test]
    fn every_path_matches_naive_at_every_length_alignment_and_phase() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let backing: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
        for (name, f) in paths() {
            for offset in 0..32 {
                for len in 0..300 {
                    for phase in 0..4 {
                        let mut expected = backing.clone();
                        let mut got = backing.clone();
                        let pe = apply_mask_naive(&mut expected[offset..offset + len], mask, phase);
                        let pg = f(&mut got[offset..offset + len], mask, phase);
                        assert_eq!(pe, pg, "{name}: phase after len {len}");
                        assert_eq!(expected, got, "{name}: offset {offset} len {len} phase {phase}");
                    }
                }
            }
        }
    }

    #[test]
    fn rfc6455_masked_hello() {
        // RFC 6455 §5.7: a masked "Hello" from a client.
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    proptest! {
        #[test]
        fn split_unmasking_equals_whole(data in proptest::collection::vec(any::<u8>(), 0..2000),
                                        mask in any::<[u8; 4]>(),
                                        cuts in proptest::collection::vec(any::<usize>(), 0..6)) {
            let mut whole = data.clone();
            apply_mask_naive(&mut whole, mask, 0);
            let mut pieces = data.clone();
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
            points.push(0);
            points.push(data.len());
            points.sort_unstable();
            let mut phase = 0;
            for w in points.windows(2) {
                phase = apply_mask(&mut pieces[w[0]..w[1]], mask, phase);
            }
            prop_assert_eq!(whole, pieces);
        }
    }
}
