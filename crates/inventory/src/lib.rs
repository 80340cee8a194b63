//! The inventory module: stock levels, the ledger of their changes, and
//! reservations for checkouts.
//!
//! Owns the tables `inventory_stock`, `inventory_movements` and
//! `inventory_reservations`. Staff set and adjust stock; the orders module reserves,
//! commits and releases units through [`agora_contracts::inventory::InventoryPort`]
//! (implemented by [`Inventory`]), each call idempotent by the caller's key.
//! Overselling is impossible by construction: every reservation is a conditional
//! update (`… WHERE on_hand - reserved >= $n`), and CHECK constraints keep
//! `0 <= reserved <= on_hand`.
//!
//! # Layout
//! - [`store`]: SQL for stock, movements and reservations.
//! - [`service`]: the operations, the port implementation, and the expiry sweeper.
//! - [`http`]: the staff routes and their OpenAPI description.
//! - [`error`]: `StockError` and its public codes.

pub mod error;
pub mod http;
pub mod service;
pub mod store;

use agora_platform::db::ModuleMigrations;
use sqlx::migrate::Migrator;

pub use service::Inventory;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The inventory's migrations.
pub static MIGRATIONS: ModuleMigrations = ModuleMigrations {
    module: "inventory",
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};
