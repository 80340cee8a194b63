//! The cart module: what customers and anonymous visitors intend to buy.
//!
//! Owns the tables `cart_carts` and `cart_items`. A signed-in customer has one
//! cart; an anonymous visitor's cart is found by the opaque token it was given
//! (`Cart-Token`), stored only as a hash, and merged into the customer's cart at
//! their first cart request after logging in. Prices are never stored: a cart is
//! priced from the catalog (through `CatalogPort`) each time it is read, and lines
//! whose product is no longer sold are flagged, not dropped. The checkout reads
//! and clears carts through [`agora_contracts::cart::CartPort`].
//!
//! # Layout
//! - [`store`]: SQL for carts and their lines.
//! - [`service`]: the operations, pricing, merging, and the port.
//! - [`http`]: the REST routes and their OpenAPI description.
//! - [`error`]: `CartError` and its public codes.

pub mod error;
pub mod http;
pub mod service;
pub mod store;

use agora_platform::db::ModuleMigrations;
use sqlx::migrate::Migrator;

pub use service::Carts;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The cart's migrations.
pub static MIGRATIONS: ModuleMigrations = ModuleMigrations {
    module: "cart",
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};
