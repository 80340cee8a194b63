//! Agora's ports over gRPC.
//!
//! When a module runs as its own service (`agora service <module>`), the others
//! reach it through its port, as in the monolith, but over the network: this
//! crate holds, for each port in [`agora_contracts`],
//! - a tonic service that answers the port's calls from any `Arc<dyn Port>` (the
//!   module's in-process implementation) — [`server`];
//! - a client that implements the same port trait, so the composition root can
//!   hand a module `Arc<dyn Port>` of either kind — [`client`].
//!
//! The messages are defined in `proto/agora/v1/*.proto`, compiled at build time
//! by protox (no system `protoc`). What travels beside each call (the contract
//! version, the request id, the W3C trace context and the deadline) is described
//! in [`metadata`]. A port's refusals (not enough stock, a declined state, a
//! reused key) are part of its answer message; a gRPC status means the call
//! itself failed, and reaches the caller as a [`agora_contracts::PortError`].
//!
//! A server also answers the standard `grpc.health.v1.Health` service
//! ([`server::PortServer`]), which is what Kubernetes probes and `grpc-health-probe`
//! ask.

pub mod client;
mod convert;
pub mod metadata;
pub mod server;

/// The messages and service stubs generated from `proto/agora/v1`.
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("agora.v1");
}

pub use client::{AccountsClient, CartClient, CatalogClient, InventoryClient, OrdersClient};
pub use client::{PaymentsClient, RemoteSettings, Replicas, ReplicasError};
pub use convert::Malformed;
pub use server::PortServer;
