//! Reassembly of binary packets: a BINARY_EVENT / BINARY_ACK header packet followed by N
//! binary messages.
//!
//! Owns: collecting the attachments and checking, once the last arrives, that the JSON's
//! placeholders and the attachments agree (every `num` in range, each attachment referenced,
//! as many placeholders as declared). The walk over the JSON is iterative.
//!
//! Must never: wait on a clock. An attachment that never comes is bounded by the caller: a
//! text packet arriving meanwhile is an error ([`SioError::AttachmentsMissing`]), and closing
//! the session drops the assembler and what it holds.

use bytes::Bytes;
use serde_json::Value;

use super::error::SioError;
use super::packet::{placeholder_num, Packet};

/// Collects the attachments of one binary packet.
#[derive(Debug)]
pub struct BinaryAssembler {
    packet: Packet,
}

impl BinaryAssembler {
    /// Starts assembling `packet` (a binary type with `declared_attachments >= 1`).
    pub fn new(packet: Packet) -> BinaryAssembler {
        debug_assert!(packet.kind.is_binary() && packet.declared_attachments > 0);
        BinaryAssembler { packet }
    }

    /// How many attachments are still awaited.
    pub fn missing(&self) -> usize {
        self.packet.declared_attachments - self.packet.attachments.len()
    }

    /// Adds one attachment. Returns the complete, validated packet with the last one.
    pub fn push(mut self, data: Bytes) -> Result<Result<Packet, BinaryAssembler>, SioError> {
        self.packet.attachments.push(data);
        if self.missing() > 0 {
            return Ok(Err(self));
        }
        let count = self.packet.declared_attachments;
        if let Some(data) = &self.packet.data {
            validate_placeholders(data, count)?;
        }
        Ok(Ok(self.packet))
    }
}

/// Checks that the placeholders in `data` reference exactly attachments `0..count`, each once.
pub fn validate_placeholders(data: &Value, count: usize) -> Result<(), SioError> {
    let mut seen = vec![false; count];
    let mut referenced = 0usize;
    let mut stack: Vec<&Value> = vec![data];
    while let Some(v) = stack.pop() {
        if let Some(num) = placeholder_num(v) {
            match seen.get_mut(num as usize) {
                Some(s) if !*s => {
                    *s = true;
                    referenced += 1;
                }
                Some(_) => return Err(SioError::AttachmentCountMismatch { declared: count, referenced: referenced + 1 }),
                None => return Err(SioError::PlaceholderOutOfRange { num, count }),
            }
            continue;
        }
        match v {
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    if referenced != count {
        return Err(SioError::AttachmentCountMismatch { declared: count, referenced });
    }
    Ok(())
}

/// Counts the placeholders in `data` (iteratively), e.g. to decide whether an outgoing packet
/// is binary.
pub fn count_placeholders(data: &Value) -> usize {
    let mut n = 0;
    let mut stack: Vec<&Value> = vec![data];
    while let Some(v) = stack.pop() {
        if placeholder_num(v).is_some() {
            n += 1;
            continue;
        }
        match v {
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(o) => stack.extend(o.values()),
            _ => {}
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::sio::packet::{Decoder, Limits};

    fn start(s: &str) -> BinaryAssembler {
        BinaryAssembler::new(Decoder::new(Limits::default()).decode(&mut s.as_bytes().to_vec()).unwrap())
    }

    #[test]
    fn reassembles_nested_placeholders() {
        let a = start(r#"52-["upload",{"a":{"_placeholder":true,"num":1}},[{"_placeholder":true,"num":0}]]"#);
        assert_eq!(a.missing(), 2);
        let a = a.push(Bytes::from_static(b"zero")).unwrap().unwrap_err();
        let p = a.push(Bytes::from_static(b"one")).unwrap().unwrap();
        let (name, args) = p.event().unwrap();
        assert_eq!(name, "upload");
        assert_eq!(p.binary(&args[0]["a"]).unwrap().as_ref(), b"one");
        assert_eq!(p.binary(&args[1][0]).unwrap().as_ref(), b"zero");
    }

    #[test]
    fn mismatches_are_errors() {
        let bin = || Bytes::from_static(b"x");
        // Index out of range.
        let e = start(r#"51-["a",{"_placeholder":true,"num":3}]"#).push(bin()).unwrap_err();
        assert_eq!(e, SioError::PlaceholderOutOfRange { num: 3, count: 1 });
        // Declared 2, referenced 1.
        let a = start(r#"52-["a",{"_placeholder":true,"num":0}]"#).push(bin()).unwrap().unwrap_err();
        assert_eq!(a.push(bin()).unwrap_err(), SioError::AttachmentCountMismatch { declared: 2, referenced: 1 });
        // The same attachment referenced twice.
        let a = start(r#"52-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":0}]"#).push(bin()).unwrap().unwrap_err();
        assert!(matches!(a.push(bin()), Err(SioError::AttachmentCountMismatch { .. })));
    }

    #[test]
    fn counts_placeholders() {
        let v: Value = serde_json::from_str(r#"["a",{"x":[{"_placeholder":true,"num":0}]},{"_placeholder":true,"num":1}]"#).unwrap();
        assert_eq!(count_placeholders(&v), 2);
    }
}
