//! Unmasking throughput: SIMD dispatch, word-at-a-time fallback, naive byte loop, and plain
//! `memcpy` of the same buffer as the physical baseline.
//!
//! `cargo bench --bench mask`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use shardcast::proto::ws::mask::{apply_mask, apply_mask_naive, apply_mask_word};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut g = c.benchmark_group("unmask");
    for size in [16usize, 125, 1024, 16 * 1024, 1 << 20] {
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = vec![0xA5u8; size];
        let src = vec![0x5Au8; size];
        g.bench_with_input(BenchmarkId::new("simd", size), &size, |b, _| b.iter(|| apply_mask(black_box(&mut buf), mask, 0)));
        g.bench_with_input(BenchmarkId::new("word", size), &size, |b, _| b.iter(|| apply_mask_word(black_box(&mut buf), mask, 0)));
        g.bench_with_input(BenchmarkId::new("naive", size), &size, |b, _| b.iter(|| apply_mask_naive(black_box(&mut buf), mask, 0)));
        g.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, _| b.iter(|| black_box(&mut buf).copy_from_slice(black_box(&src))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
