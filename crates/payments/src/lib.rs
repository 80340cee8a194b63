//! The payments module: payment intents against a provider, their captures,
//! cancellations and refunds, and the provider's signed webhooks.
//!
//! Owns the tables `payments_payments`, `payments_operations`,
//! `payments_attempts`, `payments_provider_events`, `payments_outbox` and
//! `payments_inbox`. The orders module authorizes, captures, cancels and refunds
//! through [`agora_contracts::payments::PaymentsPort`] (implemented by
//! [`Payments`]), each call idempotent by the caller's key: the row recording a
//! call is written before the provider is asked, and the provider gets a key
//! derived from it, so a repeat after a timeout or a crash does the work once.
//! Money cannot be refunded twice: a refund first sets its amount aside with a
//! conditional update (`… refunded + pending + $n <= captured`), and CHECK
//! constraints keep `0 <= refunded + pending <= captured <= amount`.
//!
//! Publishes, through its outbox in the transaction of the change:
//! `payments.payment_authorized`, `payments.payment_failed` (a decline) and
//! `payments.payment_refunded` (a refund, a cancel that refunds, or a refund the
//! provider reported by webhook). Consumes nothing.
//!
//! # Layout
//! - [`provider`]: the `PaymentProvider` trait and the built-in simulated
//!   provider (test tokens, card-number rules, latency, error rate, timeouts,
//!   signed webhooks).
//! - [`webhook`]: the signature scheme of provider webhooks — HMAC-SHA256 over the
//!   timestamped body, checked within a tolerance window.
//! - [`provider_event`]: the provider's webhook events, and how one moves a
//!   payment forward (never back).
//! - [`store`]: SQL for payments, operations, attempts, provider events and the
//!   outbox rows that go with them.
//! - [`service`]: the operations, the port implementation, webhook intake, and
//!   the resolver of calls the provider left unanswered.
//! - [`http`]: the webhook and staff routes, and their OpenAPI description.
//! - [`error`]: `PaymentsError` and its public codes.
//! - `testing` (feature `test-support`): the simulated provider with injected
//!   faults.

pub mod error;
pub mod http;
pub mod provider;
pub mod provider_event;
pub mod service;
mod simulator;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod webhook;

use agora_platform::db::ModuleMigrations;
use sqlx::migrate::Migrator;

pub use service::{Payments, WebhookSettings};
pub use store::{OUTBOX_TABLE, PaymentStore};

static SQLITE: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("migrations/postgres");

/// The payments' migrations.
pub static MIGRATIONS: ModuleMigrations = ModuleMigrations {
    module: "payments",
    sqlite: &SQLITE,
    postgres: &POSTGRES,
};
