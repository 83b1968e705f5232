//! Socket.IO decoding errors, each mapped to the protocol answer the server gives.

/// How the server answers an error on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolAnswer {
    /// Close the whole Engine.IO session (the reference server's "parse error"): a WebSocket
    /// gets a close frame with `ws_close`; a polling POST is answered with `http_status`.
    CloseSession { ws_close: u16, http_status: u16 },
    /// Refuse one namespace with a CONNECT_ERROR packet carrying this message; the session
    /// stays open.
    ConnectError(&'static str),
}

/// Everything the Socket.IO decoder and binary assembler can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SioError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    #[error("illegal attachments count")]
    IllegalAttachments,
    #[error("{count} attachments is more than the limit of {max}")]
    TooManyAttachments { count: u64, max: usize },
    #[error("ack id does not fit in 64 bits")]
    AckIdTooLarge,
    #[error("namespace must start with '/'")]
    BadNamespace,
    #[error("JSON nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("invalid JSON: {0}")]
    BadJson(String),
    #[error("payload is not valid for this packet type")]
    InvalidPayload,
    #[error("packet of {size} bytes is larger than the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("binary data received while no binary packet is being assembled")]
    UnexpectedBinary,
    #[error("text packet received while {missing} attachment(s) are still awaited")]
    AttachmentsMissing { missing: usize },
    #[error("placeholder {num} is out of range for {count} attachment(s)")]
    PlaceholderOutOfRange { num: u64, count: usize },
    #[error("{declared} attachment(s) declared but {referenced} placeholder(s) found")]
    AttachmentCountMismatch { declared: usize, referenced: usize },
    #[error("Invalid namespace")]
    InvalidNamespace,
}

impl SioError {
    /// The answer on the wire for this error.
    pub fn answer(&self) -> ProtocolAnswer {
        use crate::proto::ws::close::code;
        match self {
            SioError::InvalidNamespace => ProtocolAnswer::ConnectError("Invalid namespace"),
            SioError::TooLarge { .. } => ProtocolAnswer::CloseSession { ws_close: code::MESSAGE_TOO_BIG, http_status: 413 },
            _ => ProtocolAnswer::CloseSession { ws_close: code::POLICY_VIOLATION, http_status: 400 },
        }
    }
}
