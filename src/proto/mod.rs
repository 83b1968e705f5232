//! The sans-IO protocol core: bytes in, events and bytes out. No sockets, no threads, no clocks.
//!
//! - [`ws`]: RFC 6455 WebSocket (server side) with permessage-deflate.
//! - [`eio`]: Engine.IO v4 packets, long-polling payloads, the handshake query and open packet.
//! - [`http`]: HTTP/1.1 request heads, responses and CORS for the Engine.IO endpoint.
//! - [`sio`]: Socket.IO v5 packets, binary attachments, and encode-once frames.
//!
//! Must never: import anything else of this crate, or perform I/O.

pub mod eio;
#[doc(hidden)]
pub mod harness;
pub mod http;
pub mod sio;
pub mod ws;
