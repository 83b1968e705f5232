//! WebSocket errors, split by concern, each mapped to the close code the server sends.
//!
//! Must never: carry I/O errors; the protocol layer has none.

use super::close::code;

/// A rule of RFC 6455 that the peer broke (close 1002).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolViolation {
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("control frame is fragmented")]
    FragmentedControl,
    #[error("control frame payload is longer than 125 bytes")]
    ControlTooLong,
    #[error("64-bit payload length has its most significant bit set")]
    LengthTopBitSet,
    #[error("client frame is not masked")]
    UnmaskedClientFrame,
    #[error("RSV bits set without a negotiated extension that defines them")]
    ReservedBits,
    #[error("continuation frame without a message in progress")]
    UnexpectedContinuation,
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    #[error("close frame with a 1-byte payload")]
    CloseOneByte,
    #[error("close code {0} may not be sent on the wire")]
    InvalidCloseCode(u16),
    #[error("close reason is not valid UTF-8")]
    CloseReasonNotUtf8,
    #[error("frame received after the close frame")]
    FrameAfterClose,
}

/// Everything the decoder can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProtocolViolation),
    #[error("message of {size} bytes is larger than the {max}-byte limit")]
    MessageTooBig { size: u64, max: usize },
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    #[error("compressed data is corrupt: {0}")]
    BadCompression(String),
}

impl WsError {
    /// The close code the server answers this error with.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => code::PROTOCOL_ERROR,
            WsError::MessageTooBig { .. } => code::MESSAGE_TOO_BIG,
            WsError::InvalidUtf8 => code::INVALID_PAYLOAD,
            WsError::BadCompression(_) => code::INVALID_PAYLOAD,
        }
    }
}
