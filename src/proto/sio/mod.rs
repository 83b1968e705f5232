//! Socket.IO v5, sans-IO: packets, binary attachments, and encode-once output.
//!
//! Must never: import the runtime, hold sockets or rooms, or perform I/O.

pub mod binary;
pub mod encode;
pub mod error;
pub mod packet;

pub use binary::BinaryAssembler;
pub use encode::Encoded;
pub use error::{ProtocolAnswer, SioError};
pub use packet::{Decoder, Limits, Packet, PacketType};
