//! The platform: adapters every module stands on, behind small interfaces.
//!
//! # Layout
//! - [`bus`]: events, the bus that carries them (in-process, or NATS
//!   JetStream), each module's outbox, relay and inbox that make delivery
//!   reliable, the event log, and the dead letters.
//! - [`cache`]: the cache (in-process moka) and cache-aside reads with single
//!   flight.
//! - [`config`]: layered configuration (defaults → TOML file → `AGORA_*` environment
//!   → command-line flags), validated at start-up with the offending key named.
//! - [`telemetry`]: `tracing` subscriber, readable or JSON logs.
//! - [`db`]: the database — sqlx over SQLite or PostgreSQL, one writer and read
//!   connections, per-module migrations, a `$n` SQL builder, constraint mapping.
//! - [`http`]: the HTTP foundation — our extractors (coded errors for malformed
//!   input), the edge middleware (request id, API version, timeout, logging), the
//!   server with graceful shutdown, health routes.
//! - [`auth`]: who is calling (until the identity module lands: the bootstrap
//!   staff token).
//! - [`mail`]: outgoing mail (SMTP, or `.eml` files in the mail directory).
//! - [`metrics`]: request, saga, bus and cache metrics, served in Prometheus'
//!   text format at `/metrics`.
//! - [`shutdown`]: the shutdown signal shared by every long-running task.
//! - [`storage`]: object storage (local files or an S3-compatible bucket).
//! - `testing` (feature `test-support`): a fresh database per test.

pub mod auth;
pub mod bus;
pub mod cache;
pub mod config;
pub mod db;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod shutdown;
pub mod storage;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

pub use config::Config;
pub use db::Database;
pub use shutdown::Shutdown;
