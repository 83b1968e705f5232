//! RFC 6455 WebSocket, server side, sans-IO: handshake, frames, masking, UTF-8, close codes,
//! permessage-deflate, and the per-connection codec that ties them together: a decoder and an
//! encoder that share nothing.
//!
//! Must never: import the runtime or perform I/O.

pub mod close;
pub mod codec;
pub mod deflate;
pub mod encoder;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;

pub use codec::{CodecConfig, Decoded, Decoder, Message, ServerCodec};
pub use encoder::Encoder;
pub use error::{ProtocolViolation, WsError};
pub use frame::OpCode;
