//! Reassembly of binary packets: a BINARY_EVENT / BINARY_ACK header packet followed by N
//! binary messages.
//!
//! Owns: collecting the attachments and checking, once the last arrives, that the JSON's
//! placeholders and the attachments agree (every `num` in range, each attachment referenced,
//! as many placeholders as declared). The walk over the JSON is iterative.
//!
//! Bounded: the attachments of one packet together may hold at most `max_bytes` (the
//! packet-size limit, like socket.io's `maxHttpBufferSize` for the whole packet), and their
//! count is the header's, itself capped by [`super::packet::Limits::max_attachments`]. One more
//! byte is [`SioError::TooLarge`], which closes the session (close 1009 / HTTP 413).
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
    /// Attachment bytes held so far.
    held: usize,
    /// Most attachment bytes the whole packet may hold.
    max_bytes: usize,
}

impl BinaryAssembler {
    /// Starts assembling `packet` (a binary type with `declared_attachments >= 1`); its
    /// attachments together may hold at most `max_bytes`.
    pub fn new(mut packet: Packet, max_bytes: usize) -> BinaryAssembler {
        debug_assert!(packet.kind.is_binary() && packet.declared_attachments > 0);
        packet.attachments = Vec::with_capacity(packet.declared_attachments);
        BinaryAssembler { packet, held: 0, max_bytes }
    }

    /// Attachment bytes held so far (the payloads; each attachment's `Bytes` is exactly its
    /// length, see [`BinaryAssembler::push`]).
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// How many attachments are still awaited.
    pub fn missing(&self) -> usize {
        self.packet.declared_attachments - self.packet.attachments.len()
    }

    /// Adds one attachment. Returns the complete, validated packet with the last one, or
    /// [`SioError::TooLarge`] once the attachments together pass `max_bytes`.
    ///
    /// `data` should own exactly its bytes (e.g. `Bytes::from(slice.to_vec())`): a `Bytes`
    /// sliced from a larger buffer would keep that whole buffer alive.
    pub fn push(mut self, data: Bytes) -> Result<Result<Packet, BinaryAssembler>, SioError> {
        let size = self.held.saturating_add(data.len());
        if size > self.max_bytes {
            return Err(SioError::TooLarge { size, max: self.max_bytes });
        }
        self.held = size;
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
        BinaryAssembler::new(Decoder::new(Limits::default()).decode(&mut s.as_bytes().to_vec()).unwrap(), 1000)
    }

    #[test]
    fn attachments_together_are_capped() {
        // Each attachment alone is within the limit; together they are not.
        let a = start(r#"53-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1},{"_placeholder":true,"num":2}]"#);
        let a = a.push(Bytes::from(vec![0u8; 400])).unwrap().unwrap_err();
        let a = a.push(Bytes::from(vec![0u8; 400])).unwrap().unwrap_err();
        assert_eq!(a.held_bytes(), 800);
        assert_eq!(a.push(Bytes::from(vec![0u8; 201])).unwrap_err(), SioError::TooLarge { size: 1001, max: 1000 });
        // Exactly the limit is fine.
        let a = start(r#"52-["a",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#);
        let a = a.push(Bytes::from(vec![0u8; 999])).unwrap().unwrap_err();
        let p = a.push(Bytes::from(vec![0u8; 1])).unwrap().unwrap();
        assert_eq!(p.attachments.iter().map(Bytes::len).sum::<usize>(), 1000);
        // The error closes the session as "too big" (1009 / 413), like an oversized packet.
        assert!(matches!(
            SioError::TooLarge { size: 1001, max: 1000 }.answer(),
            crate::proto::sio::error::ProtocolAnswer::CloseSession { ws_close: 1009, http_status: 413 }
        ));
    }

    proptest::proptest! {
        /// Whatever the attachment sizes, the assembler never holds more than its limit.
        #[test]
        fn never_holds_more_than_the_limit(sizes in proptest::collection::vec(0usize..600, 1..10)) {
            let n = sizes.len();
            let refs: Vec<String> = (0..n).map(|i| format!(r#"{{"_placeholder":true,"num":{i}}}"#)).collect();
            let mut a = start(&format!(r#"5{n}-["a",{}]"#, refs.join(",")));
            let mut total = 0;
            for s in sizes {
                total += s;
                match a.push(Bytes::from(vec![0u8; s])) {
                    Ok(Ok(p)) => { proptest::prop_assert!(total <= 1000); proptest::prop_assert_eq!(p.attachments.len(), n); break; }
                    Ok(Err(next)) => { proptest::prop_assert!(next.held_bytes() <= 1000); a = next; }
                    Err(e) => { proptest::prop_assert!(total > 1000); let too_large = matches!(e, SioError::TooLarge { .. }); proptest::prop_assert!(too_large); break; }
                }
            }
        }
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
