//! `agora gateway`: the single entry point in front of the services.
//!
//! It routes each request by the longest matching path prefix to a pool of
//! instances of a service ([`config`]), picks an instance by the pool's
//! policy ([`pool`]: round-robin, least-connections, peak-EWMA
//! power-of-two-choices, or consistent-hash IP affinity), and forwards the
//! request with its body streamed both ways ([`proxy`]). Each instance has an
//! active health check and a circuit breaker; idempotent requests without a
//! body are retried on another instance within a budget. Its own failures are
//! answered in Agora's envelope with documented codes: `ROUTE_NOT_FOUND`,
//! `GATEWAY_UPSTREAM_FAILED`, `GATEWAY_UPSTREAM_TIMEOUT`,
//! `GATEWAY_UNAVAILABLE`.
//!
//! Built on hyper (the client and the server) and axum's routing of the
//! gateway's own two endpoints, `/health/live` and `/health/ready`.

pub mod config;
mod edge_auth;
mod limits;
mod pool;
mod proxy;
mod tls;
mod upstream;

pub use config::{GatewayConfig, GatewayConfigError};
pub use proxy::Gateway;
