//! The HTTP foundation shared by every module's API layer.
//!
//! - [`extract`]: `AppJson`, `AppQuery`, `AppPath` — axum's extractors with our
//!   coded errors, so malformed input never gets a plain-text rejection.
//! - [`edge`]: the middleware every request passes first: request id, API version
//!   negotiation, caller authentication hook, timeout, access and error logging.
//! - [`cacheable`]: public reads rendered once, with `ETag` and `304`.
//! - [`health`]: `/health/live` and `/health/ready`.
//! - [`server`]: builds the application router and serves it with graceful shutdown.

pub mod cacheable;
pub mod edge;
pub mod extract;
pub mod health;
pub mod server;

pub use edge::ClientAddress;
pub use extract::{AppJson, AppPath, AppQuery, IdempotencyKey};
pub use server::{build_router, serve, serve_tls};
