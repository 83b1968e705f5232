//! Codec benches: WebSocket frame decoding, and Socket.IO event encode / decode (simd-json
//! in place against serde_json on the same bytes).
//!
//! `cargo bench --bench codec`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde_json::{json, Value};
use shardcast::proto::sio::{encode, Decoder, Limits};
use shardcast::proto::ws::frame::encode_client_frame;
use shardcast::proto::ws::{CodecConfig, Decoded, OpCode, ServerCodec};
use std::hint::black_box;

fn frame_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("ws_decode");
    for size in [100usize, 16 * 1024] {
        let frames = 64;
        let payload = "x".repeat(size);
        let wire: Vec<u8> = (0..frames).flat_map(|_| encode_client_frame(true, false, OpCode::Text, [1, 2, 3, 4], payload.as_bytes())).collect();
        g.throughput(Throughput::Elements(frames));
        g.bench_with_input(BenchmarkId::new("text_frames_x64", size), &size, |b, _| {
            let mut codec = ServerCodec::new(CodecConfig { max_message_size: 1 << 20, ..Default::default() });
            let mut buf = wire.clone();
            b.iter(|| {
                buf.copy_from_slice(&wire);
                let mut pos = 0;
                while let Ok(Decoded::Frame { consumed, message }) = codec.decode(&mut buf[pos..]) {
                    black_box(message);
                    pos += consumed;
                }
                pos
            })
        });
    }
    g.finish();
}

fn sio(c: &mut Criterion) {
    let args = vec![json!({"room": "r1", "ts": 1700000000123u64, "body": "x".repeat(60)}), json!([1, 2, 3])];
    let mut g = c.benchmark_group("sio_event");
    g.bench_function("encode", |b| b.iter(|| encode::event("/", "room-message", black_box(&args), None, vec![])));
    let text = encode::event("/", "room-message", &args, Some(42), vec![]).packet_text().to_vec();
    let json_at = text.iter().position(|&b| b == b'[').unwrap();
    let mut dec = Decoder::new(Limits::default());
    let mut buf = text.clone();
    g.bench_function("decode_packet_simd_json", |b| {
        b.iter(|| {
            buf.copy_from_slice(&text);
            dec.decode(black_box(&mut buf)).unwrap()
        })
    });
    let mut buffers = simd_json::Buffers::default();
    g.bench_function("parse_json_simd_json", |b| {
        b.iter(|| {
            buf.copy_from_slice(&text);
            let v: Value = simd_json::serde::from_slice_with_buffers(black_box(&mut buf[json_at..]), &mut buffers).unwrap();
            v
        })
    });
    g.bench_function("parse_json_serde_json", |b| b.iter(|| serde_json::from_slice::<Value>(black_box(&text[json_at..])).unwrap()));
    g.finish();
}

criterion_group!(benches, frame_decode, sio);
criterion_main!(benches);
