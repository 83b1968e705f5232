//! HTTP/1.1 for the Engine.IO endpoint, sans-IO: request heads (`httparse`) with limits,
//! responses with optional compression, and CORS.
//!
//! Must never: import the runtime or perform I/O.

pub mod cors;
pub mod forwarded;
pub mod request;
pub mod response;

pub use cors::{AllowedOrigins, CorsConfig, CorsDecision, OriginPredicate};
pub use request::{parse_request, HttpError, Method, Request, Upgrade};
