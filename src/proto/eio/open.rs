//! The Engine.IO v4 handshake data sent in the `open` packet.
//!
//! Owns: its JSON, with the fields in the order the reference server writes them
//! (`sid`, `upgrades`, `pingInterval`, `pingTimeout`, `maxPayload`).

use serde::Serialize;

/// The data of the `open` packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Handshake<'a> {
    pub sid: &'a str,
    pub upgrades: &'a [&'a str],
    pub ping_interval: u64,
    pub ping_timeout: u64,
    pub max_payload: u64,
}

impl Handshake<'_> {
    /// The whole packet text: `0{...}`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.push(b'0');
        serde_json::to_writer(&mut out, self).expect("serializing plain fields cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_document_example() {
        let h = Handshake { sid: "lv_VI97HAXpY6yYWAAAC", upgrades: &["websocket"], ping_interval: 25000, ping_timeout: 20000, max_payload: 1000000 };
        assert_eq!(
            String::from_utf8(h.encode()).unwrap(),
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
    }
}
