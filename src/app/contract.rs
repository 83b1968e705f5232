//! The default application: exactly `shared/CONTRACT.md`, on `/` and `/custom`.

use std::time::Duration;

use serde_json::{json, Value};

use super::namespace::{Event, Namespace};
use super::server::ServerBuilder;
use super::socket::Socket;

fn room_name(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn ack_true(s: &mut Socket<'_, '_>, ev: &Event) {
    if let Some(a) = ev.ack {
        s.ack(a, &[json!(true)]);
    }
}

/// The contract's handlers for one namespace.
pub fn namespace() -> Namespace {
    Namespace::new()
        .on_connection(|s| {
            let auth = s.handshake().auth.clone().unwrap_or_else(|| json!({}));
            s.emit("auth", &[auth]);
        })
        .on("message", |s, ev| s.emit_binary("message-back", &ev.args, ev.attachments))
        .on("message-with-ack", |s, ev| {
            if let Some(a) = ev.ack {
                s.ack_binary(a, &ev.args, ev.attachments);
            }
        })
        .on("join", |s, ev| {
            // Past the per-socket room limits the join is refused and the ack says `false`.
            let joined = room_name(ev.args.first()).is_none_or(|room| s.try_join(&room).is_ok());
            if let Some(a) = ev.ack {
                s.ack(a, &[json!(joined)]);
            }
        })
        .on("leave", |s, ev| {
            if let Some(room) = room_name(ev.args.first()) {
                s.leave(&room);
            }
            ack_true(s, &ev);
        })
        .on("to-room", |s, ev| {
            ack_true(s, &ev);
            if let Some(room) = room_name(ev.args.first()) {
                let args = ev.args.get(1..).unwrap_or(&[]).to_vec();
                s.within_namespace().to(&room).emit_binary("room-message", &args, ev.attachments);
            }
        })
        .on("broadcast", |s, ev| {
            ack_true(s, &ev);
            s.broadcast().emit_binary("broadcast-back", &ev.args, ev.attachments);
        })
        .on("call-me", |s, ev| {
            s.emit_binary_with_ack("ping-back", &ev.args, ev.attachments, Duration::from_secs(5), |s, answer| {
                if let Ok((vals, attachments)) = answer {
                    s.emit_binary("pong-result", &vals, attachments);
                }
            });
        })
        .on("disconnect-me", |s, _ev| s.disconnect_client())
}

/// A builder serving the contract on `/` and `/custom`; any other namespace is refused with
/// `{"message":"Invalid namespace"}`.
pub fn app(builder: ServerBuilder) -> ServerBuilder {
    builder.namespace("/", namespace()).namespace("/custom", namespace())
}
