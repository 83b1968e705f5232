//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same entry points the
//! fuzz targets use, so CI checks every input the fuzzer ever kept, without the fuzzer.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        f(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "the corpus of {target} is empty");
}

#[test]
fn ws_frame_corpus() {
    replay("ws_frame", shardcast::proto::harness::ws_frames);
}

#[test]
fn eio_payload_corpus() {
    replay("eio_payload", shardcast::proto::harness::eio_payload);
}

#[test]
fn sio_packet_corpus() {
    replay("sio_packet", shardcast::proto::harness::sio_packet);
}
