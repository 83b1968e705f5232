//! Close codes (RFC 6455 §7.4) and close-frame payloads (§5.5.1).
//!
//! Owns: the table of codes that may appear on the wire and the parsing of a close payload
//! (`code` + UTF-8 `reason`). Must never: decide *when* to close; that is the codec's job.

use super::error::ProtocolViolation;

/// Named close codes of RFC 6455 §7.4.1 (plus the IANA-registered 1012–1014).
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Reserved: "no status received"; never sent on the wire.
    pub const NO_STATUS: u16 = 1005;
    /// Reserved: "abnormal closure"; never sent on the wire.
    pub const ABNORMAL: u16 = 1006;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    pub const MANDATORY_EXTENSION: u16 = 1010;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Whether `c` may appear in a close frame on the wire. Invalid: below 1000, 1004–1006,
/// 1015, 1016–2999 (unassigned protocol range) and 5000 and above.
pub fn is_valid_wire_code(c: u16) -> bool {
    matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A decoded close frame payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    pub code: u16,
    pub reason: &'a str,
}

/// Parses a close payload: empty (no status), or a 2-byte code and a UTF-8 reason.
pub fn parse_close_payload(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolViolation> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolViolation::CloseOneByte),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_wire_code(code) {
                return Err(ProtocolViolation::InvalidCloseCode(code));
            }
            let reason = simdutf8::basic::from_utf8(&payload[2..]).map_err(|_| ProtocolViolation::CloseReasonNotUtf8)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// Builds a close payload (code + reason, reason cut to fit the 125-byte control limit on a
/// character boundary).
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut v = Vec::with_capacity(2 + end);
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(&reason.as_bytes()[..end]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_code_table() {
        for c in 0..=1u32 << 16 {
            let Ok(c) = u16::try_from(c) else { continue };
            let expected = (1000..=1003).contains(&c) || (1007..=1014).contains(&c) || (3000..=4999).contains(&c);
            assert_eq!(is_valid_wire_code(c), expected, "code {c}");
        }
        for c in [999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert!(!is_valid_wire_code(c));
        }
    }

    #[test]
    fn close_payloads() {
        assert_eq!(parse_close_payload(&[]), Ok(None));
        assert_eq!(parse_close_payload(&[3]), Err(ProtocolViolation::CloseOneByte));
        assert_eq!(parse_close_payload(&[0x03, 0xe8]), Ok(Some(CloseFrame { code: 1000, reason: "" })));
        assert_eq!(parse_close_payload(&[0x03, 0xed]), Err(ProtocolViolation::InvalidCloseCode(1005)));
        assert_eq!(parse_close_payload(&[0x03, 0xe8, 0xff]), Err(ProtocolViolation::CloseReasonNotUtf8));
        let p = close_payload(4000, &"é".repeat(100));
        assert!(p.len() <= 125);
        assert!(parse_close_payload(&p).unwrap().is_some());
    }
}
