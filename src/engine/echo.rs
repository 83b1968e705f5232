//! The echo handler of `shardcast echo`: every Engine.IO message is sent back unchanged (the
//! server the official engine.io-protocol test suite expects), and a WebSocket upgrade on any
//! other path is a raw WebSocket echo (for Autobahn|Testsuite and echo benchmarks). It is an
//! ordinary [`Handler`]: the engine has no echo mode of its own.

use bytes::Bytes;

use super::{Ctx, Handler, OpenInfo, RawConn, SendFlags, SessionId};
use crate::proto::eio::{CloseReason, PacketType, SharedPacket};

#[derive(Debug, Default)]
/// Sends every Engine.IO message back to its sender.
pub struct EioEcho;

impl Handler for EioEcho {
    type Mail = ();

    fn on_open(&mut self, _ctx: &mut Ctx<'_, ()>, _session: SessionId, _info: &OpenInfo<'_>) {}

    fn on_message(&mut self, ctx: &mut Ctx<'_, ()>, session: SessionId, text: &mut [u8]) {
        let _ = ctx.send(session, &SharedPacket::text(PacketType::Message, text), SendFlags::default());
    }

    fn on_binary(&mut self, ctx: &mut Ctx<'_, ()>, session: SessionId, data: Bytes) {
        let _ = ctx.send(session, &SharedPacket::binary(data), SendFlags::default());
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_, ()>, _session: SessionId, _reason: CloseReason) {}

    fn on_mail(&mut self, _ctx: &mut Ctx<'_, ()>, _mail: ()) {}

    fn raw_websocket(&self, _path: &str) -> bool {
        true
    }

    fn on_raw_message(&mut self, ctx: &mut Ctx<'_, ()>, conn: RawConn, binary: bool, data: &mut [u8]) {
        let p = if binary { SharedPacket::binary(Bytes::copy_from_slice(data)) } else { SharedPacket::raw_text(data) };
        let _ = ctx.send_raw(conn, &p);
    }
}
