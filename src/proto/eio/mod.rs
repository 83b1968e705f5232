//! Engine.IO v4, sans-IO: packets, long-polling payloads, the open handshake, and the request
//! verification rules of the reference server.
//!
//! Must never: import the runtime, hold sessions, or perform I/O.

pub mod open;
pub mod packet;
pub mod payload;
pub mod query;
pub mod session;
pub mod shared;

pub use packet::{decode_text, encode_text, Packet, PacketError, PacketType};
pub use payload::{check_payload, decode_payload, payload_packets, PayloadWriter};
pub use query::{parse_query, verify, EioError, Query, Transport, Verified};
pub use session::{Action, CloseReason, Session, SessionConfig};
pub use shared::SharedPacket;
