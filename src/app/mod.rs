//! What users program against: the server builder, namespaces and their handlers, sockets,
//! rooms, acks, broadcast operators, the thread-safe `ServerHandle`, and the default (contract)
//! application.
//!
//! - [`server`]: `Server::builder()` and the running server.
//! - [`namespace`]: namespace definitions, events, handshake, disconnect reasons.
//! - [`socket`]: the `Socket` handle inside handlers, and broadcast operators.
//! - [`worker`]: one worker's Socket.IO layer (the engine's `Handler`): its clients and sockets,
//!   its shard of the rooms, pending acks, cross-worker mail, and the guard around user code.
//! - [`limits`]: per-socket and per-client bounds, and their errors.
//! - [`handle`]: `ServerHandle`, usable from any thread.
//! - [`pending`]: `Pending`, the answer to a `ServerHandle` question every worker answers a
//!   part of (wait, await, or a callback).
//! - [`recovery`]: connection state recovery (socket.io 4.6+), its options and offsets.
//! - [`defer`]: answering later from any thread: deferred acks and connect decisions.
//! - [`signal`]: waiting for SIGINT or SIGTERM in a library user's program.
//! - [`adapter`]: the seam to the other nodes of a cluster (in-process by default; Redis in the
//!   Node.js or python-socketio format).
//! - [`admin_ui`]: the server side of `@socket.io/admin-ui` (opt-in): its namespace, login,
//!   stats, and in development mode every socket's life told to it.
//! - [`contract`]: the default application of `shared/CONTRACT.md`.
//!
//! Must never: see io_uring or raw bytes; it works through `engine::Ctx` and `proto::sio`.

#![warn(missing_docs)]

pub mod adapter;
pub mod admin_ui;
pub mod contract;
pub mod defer;
pub mod handle;
pub mod limits;
pub mod namespace;
pub mod pending;
pub mod recovery;
pub mod server;
pub mod signal;
pub mod socket;
pub mod worker;

pub use admin_ui::{AdminAuth, AdminMode, AdminUi};
pub use defer::{AckReply, ConnectDecision};
pub use handle::{Emitted, HandleError, ServerHandle, SocketInfo};
pub use limits::{JoinError, SocketLimits};
pub use namespace::{AckId, AckTimeout, DisconnectReason, Event, Handshake, Namespace};
pub use pending::Pending;
pub use recovery::RecoveryConfig;
pub use server::{RunningServer, Server, ServerBuilder};
pub use socket::{DeferError, Operator, Socket};
