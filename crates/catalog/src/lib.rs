//! The catalog module: categories and products.
//!
//! Owns the tables `catalog_categories`, `catalog_products`,
//! `catalog_product_images` and `catalog_outbox`, and the objects under
//! `images/` and `renditions/` in the object storage. Anyone may browse active
//! products; staff create, change and retire them, and add their images. Other modules read products through
//! [`agora_contracts::catalog::CatalogPort`] (implemented by [`Catalog`]), which
//! returns a price snapshot. Every write publishes `ProductChanged` or
//! `CategoryChanged`; every node's [`Catalog`] handles them by forgetting its
//! cached reads.
//!
//! # Layout
//! - [`domain`]: `Product`, `Category`, and the rules of each field.
//! - [`store`]: SQL over the platform database; constraints become domain errors.
//! - [`images`]: what an image upload must be; product images as shown.
//! - [`service`]: the operations, and the port implementation.
//! - [`http`]: the REST routes and their OpenAPI description.
//! - [`seed`]: the demo catalog.
//! - [`error`]: `CatalogError` and its public codes.

pub mod domain;
pub mod error;
pub mod http;
pub mod images;
pub mod seed;
pub mod service;
pub mod store;

use agora_platform::db::ModuleMigrations;
use sqlx::migrate::Migrator;

pub use error::CatalogError;
pub use service::Catalog;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The catalog's migrations.
pub static MIGRATIONS: ModuleMigrations = ModuleMigrations {
    module: "catalog",
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};
