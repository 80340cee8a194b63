//! The orders module: checkout, the order state machine, and the checkout saga
//! that reserves stock, takes the payment and confirms the order — or undoes
//! what it did.
//!
//! Owns the tables `orders_orders`, `orders_lines`, `orders_sagas`,
//! `orders_saga_log`, `orders_idempotency`, `orders_outbox` and `orders_inbox`.
//! Calls the catalog, cart, inventory and payments only through their ports.
//! docs/checkout.md explains the saga and its guarantees.
//!
//! # Layout
//! - [`domain`]: orders, their lines, and the status state machine.
//! - [`saga`]: the saga's steps, compensations, retries and leases.
//! - [`store`]: SQL for orders, sagas, their log and idempotency records.
//! - [`service`]: checkout, replays, reads, staff actions, recovery, and the
//!   consumer of payment events.
//! - [`http`]: the routes and their OpenAPI description.
//! - [`error`]: `OrderError` and its public codes.

pub mod domain;
pub mod error;
pub mod http;
pub mod saga;
pub mod service;
pub mod store;

use agora_platform::db::ModuleMigrations;
use sqlx::migrate::Migrator;

pub use service::{Orders, Participants};

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The orders module's migrations.
pub static MIGRATIONS: ModuleMigrations = ModuleMigrations {
    module: "orders",
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};
