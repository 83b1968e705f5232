//! What the WebSocket codec really allocates, counted by a global allocator that tracks the
//! live bytes (and their peak) of each thread: the zlib state estimates behind
//! `held_bytes()` are upper bounds, a decompression bomb never makes the codec hold more than
//! the message limit plus one decompressor, and nothing of a completed compressed message
//! (buffer or zlib state) stays with the connection.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use shardcast::proto::ws::deflate::{self, compressor_bytes, Deflate, DeflateParams, DeflatePolicy, DECOMPRESSOR_BYTES};
use shardcast::proto::ws::frame::encode_client_frame;
use shardcast::proto::ws::{CodecConfig, Decoded, Message, OpCode, ServerCodec};

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

struct Counting;

fn add(n: isize) {
    // try_with: the thread's counters may already be gone while it exits.
    let _ = LIVE.try_with(|l| {
        l.set(l.get() + n);
        let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds as it does for `System`; the counting only touches
// const-initialised thread-locals without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        add(l.size() as isize);
        // SAFETY: same layout as given to us.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        add(l.size() as isize);
        // SAFETY: same layout as given to us.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        add(-(l.size() as isize));
        // SAFETY: `p` was allocated by `System` with layout `l` (every allocation goes there).
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        add(new as isize - l.size() as isize);
        // SAFETY: `p` was allocated by `System` with layout `l`; `new` is the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Resets the peak to the current live bytes and returns them.
fn mark() -> isize {
    let l = live();
    PEAK.with(|p| p.set(l));
    l
}

fn peak() -> isize {
    PEAK.with(Cell::get)
}

const M: [u8; 4] = [9, 8, 7, 6];

fn params(takeover: bool, bits: u8) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: !takeover,
        client_no_context_takeover: !takeover,
        server_max_window_bits: bits,
        client_max_window_bits: 15,
        level: 6,
    }
}

#[test]
fn zlib_state_estimates_are_upper_bounds() {
    deflate::clear_pool();
    for bits in 9..=15u8 {
        // Context takeover: the state stays with the connection, so it can be counted.
        let mut d = Deflate::new(params(true, bits));
        let before = mark();
        let mut out = Vec::with_capacity(1 << 16);
        let after_out = live();
        d.compress_message(&[b'x'; 5000], &mut out);
        let state = (live() - after_out) as usize;
        assert_eq!(d.holds_state(), (true, false));
        assert!(state <= compressor_bytes(bits), "{bits} bits: {state} > {}", compressor_bytes(bits));
        assert!(state * 5 >= compressor_bytes(bits) * 4, "{bits} bits: the estimate {} is far above {state}", compressor_bytes(bits));
        let mut plain = Vec::with_capacity(8000);
        let after_plain = live();
        let mut inflater = Deflate::new(DeflateParams { client_no_context_takeover: false, ..params(true, bits) });
        inflater.decompress_fragment(&out, true, &mut plain, 1 << 20).unwrap();
        let state = (live() - after_plain) as usize;
        assert_eq!(plain, [b'x'; 5000]);
        assert!(state <= DECOMPRESSOR_BYTES && state * 5 >= DECOMPRESSOR_BYTES * 4, "decompressor: {state}");
        drop((d, inflater, out, plain));
        assert_eq!(live(), before, "all freed");
    }
}

/// Raw deflate data inflating to `mb` MiB of zeros (see the codec's unit tests).
fn zero_bomb(mb: usize) -> Vec<u8> {
    let mut d = Deflate::new(DeflateParams { level: 9, ..params(true, 15) });
    let zeros = vec![0u8; 1 << 20];
    let (mut first, mut next) = (Vec::new(), Vec::new());
    d.compress_message(&zeros, &mut first);
    first.extend_from_slice(&[0, 0, 0xff, 0xff]);
    d.compress_message(&zeros, &mut next);
    next.extend_from_slice(&[0, 0, 0xff, 0xff]);
    for _ in 1..mb {
        first.extend_from_slice(&next);
    }
    first
}

fn codec(max: usize) -> ServerCodec {
    let offer = deflate::parse_extensions(["permessage-deflate; client_max_window_bits"]);
    let p = deflate::negotiate(&offer, &DeflatePolicy::default()).unwrap().0;
    ServerCodec::new(CodecConfig { max_message_size: max, deflate: Some(p), compress_threshold: 0 })
}

#[test]
fn a_bomb_costs_at_most_the_limit_plus_one_decompressor() {
    const MAX: usize = 1 << 20;
    let bomb = zero_bomb(64);
    deflate::clear_pool();
    let mut c = codec(MAX);
    // The frames are built before counting; what the codec allocates is what is measured.
    let mut frames: Vec<Vec<u8>> = bomb
        .chunks(1024)
        .enumerate()
        .map(|(i, ch)| encode_client_frame(false, i == 0, if i == 0 { OpCode::Binary } else { OpCode::Continuation }, M, ch))
        .collect();
    let base = mark();
    let mut code = None;
    for f in frames.iter_mut() {
        if let Err(e) = c.decode(f) {
            code = Some(e.close_code());
            break;
        }
    }
    let held = (peak() - base) as usize;
    eprintln!("bomb: peak {held} bytes allocated by the codec (limit {MAX})");
    assert_eq!(code, Some(1009));
    assert!(held <= MAX + 1 + DECOMPRESSOR_BYTES + 4096, "peak {held}");
    // The failed message's buffer and zlib state are gone (the pool holds nothing: a failed
    // decompressor is dropped, not pooled); what is left is the closed codec's bookkeeping.
    assert!(live() - base <= 256, "{} bytes left after the failed message", live() - base);
    assert_eq!(deflate::pool_bytes(), 0);
}

#[test]
fn nothing_outlives_a_compressed_message() {
    deflate::clear_pool();
    let mut c = codec(1 << 20);
    let msg: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut client = Deflate::new(params(false, 15));
    let mut z = Vec::new();
    client.compress_message(&msg, &mut z);
    let mut wire = encode_client_frame(true, true, OpCode::Binary, M, &z);
    let mut reply = Vec::new();
    let base = live();
    match c.decode(&mut wire).unwrap() {
        Decoded::Frame { message: Some(Message::Binary(d)), .. } => assert!(*d == msg[..]),
        other => panic!("{other:?}"),
    }
    c.release_buffers();
    c.encode_message(true, &msg, &mut reply);
    let reply_bytes = reply.capacity() as isize;
    // What is left: the reply itself and the thread's pooled zlib states, nothing in the codec.
    let left = live() - base - reply_bytes - deflate::pool_bytes() as isize;
    assert!(left <= 0, "{left} bytes left with the connection");
    // Each half of the codec keeps only its (boxed, stateless) deflate bookkeeping.
    assert_eq!(c.held_bytes(), 2 * std::mem::size_of::<Deflate>());
    assert!(deflate::pool_bytes() <= compressor_bytes(15) + DECOMPRESSOR_BYTES);
}
