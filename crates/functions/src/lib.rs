//! Agora's functions: handlers that events trigger, with no API of their own.
//!
//! In the monolith they run in the server's process, subscribed to its bus.
//! `agora functions` runs them as a worker of their own on a shared bus
//! (NATS): its durable consumers keep the events while no worker runs, so the
//! workers can be scaled down to none and back.
//!
//! Each function is idempotent by event id (`functions_inbox`), and its work
//! is harmless to repeat (it writes objects under keys derived from its
//! input), so a crash between the work and the record only repeats the work.
//!
//! # Layout
//! - [`thumbnails`]: on ImageUploaded, 128 and 512 px renditions of a product
//!   image, attached to it through the catalog's port.
//! - [`receipts`]: on OrderConfirmed, a receipt email (text and HTML) to the
//!   customer, over SMTP or into the mail directory.
//! - [`export`]: nightly, the previous day's orders as CSV in the object
//!   storage (and any finished day on demand).

pub mod export;
pub mod receipts;
pub mod thumbnails;

use agora_platform::bus::Inbox;
use agora_platform::db::ModuleMigrations;
use sqlx::migrate::Migrator;

pub use export::Export;
pub use receipts::Receipts;
pub use thumbnails::Thumbnails;

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The functions' migrations (their inbox).
pub static MIGRATIONS: ModuleMigrations = ModuleMigrations {
    module: "functions",
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};

/// Which events each function has handled.
pub const INBOX: Inbox = Inbox::new("functions_inbox");
