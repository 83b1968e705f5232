//! shardcast: a Socket.IO v5 / Engine.IO v4 server built thread-per-core on io_uring.
//!
//! # Layout
//! - [`proto`]: the sans-IO protocol core — WebSocket (RFC 6455 + permessage-deflate),
//!   Engine.IO v4 and Socket.IO v5 codecs and state machines. Bytes in, events and bytes out;
//!   no sockets, threads or clocks, so every rule is unit-tested, property-tested and fuzzed.
//!
//! - [`admin`]: the operators' endpoint (`--admin-bind`): `/metrics`, `/health`, the publish
//!   API; on its own thread, above `app`.
//!
//! Dependencies point one way: `proto` imports nothing else of the crate.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod engine;
pub mod proto;
pub mod rt;
