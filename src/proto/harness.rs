//! Entry points shared by the `cargo fuzz` targets (`fuzz/`) and the corpus-replay test
//! (`tests/fuzz_corpus.rs`), so CI checks the committed corpus without the fuzzer.
//!
//! Each takes arbitrary bytes and drives one decoder the way the runtime does; any panic is a
//! bug. Must never: do I/O.

use super::eio;
use super::sio;
use super::ws::{self, deflate, Decoded};

/// WebSocket codec: the first byte picks the options (deflate on/off, size limit) and where
/// the input is split into two reads; the rest is the wire.
pub fn ws_frames(data: &[u8]) {
    let Some((&opts, wire)) = data.split_first() else { return };
    let params = (opts & 1 == 1).then(|| {
        deflate::negotiate(&deflate::parse_extensions(["permessage-deflate; client_max_window_bits"]), &Default::default())
            .expect("a plain offer is accepted")
            .0
    });
    let max = if opts & 2 == 0 { 1 << 16 } else { 64 };
    let mut codec = ws::ServerCodec::new(ws::CodecConfig { max_message_size: max, deflate: params, compress_threshold: 0 });
    let cut = if wire.is_empty() { 0 } else { (opts as usize >> 2) % (wire.len() + 1) };
    let mut buf: Vec<u8> = wire[..cut].to_vec();
    for next in [&wire[cut..], &[][..]] {
        loop {
            match codec.decode(&mut buf) {
                Err(e) => {
                    let _ = e.close_code();
                    return;
                }
                Ok(Decoded::Incomplete { needed }) => {
                    assert!(needed > 0);
                    break;
                }
                Ok(Decoded::Frame { consumed, message }) => {
                    if let Some(ws::Message::Text(t)) = message {
                        assert!(std::str::from_utf8(t).is_ok(), "text messages are always UTF-8");
                    }
                    assert!(consumed > 0 && consumed <= buf.len());
                    buf.drain(..consumed);
                    if codec.is_closed() {
                        return;
                    }
                }
            }
        }
        buf.extend_from_slice(next);
    }
}

/// Long-polling POST body decoding.
pub fn eio_payload(data: &[u8]) {
    let mut body = data.to_vec();
    if let Err(e) = eio::decode_payload(&mut body, 4096) {
        let _ = e.http_status();
    }
}

/// Socket.IO packet decoding, then binary reassembly with one-byte attachments.
pub fn sio_packet(data: &[u8]) {
    let mut buf = data.to_vec();
    let mut dec = sio::Decoder::new(sio::Limits { max_depth: 32, max_attachments: 4, max_packet_size: 8192, max_ack_id_digits: 20 });
    match dec.decode(&mut buf) {
        Err(e) => {
            let _ = e.answer();
        }
        Ok(p) if p.kind.is_binary() => {
            let mut asm = sio::BinaryAssembler::new(p, 8192);
            loop {
                match asm.push(bytes::Bytes::from_static(b"x")) {
                    Ok(Ok(_)) | Err(_) => break,
                    Ok(Err(next)) => asm = next,
                }
            }
        }
        Ok(_) => {}
    }
}
