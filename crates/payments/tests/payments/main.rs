//! The payments module against a real database (SQLite, or PostgreSQL when
//! `AGORA_TEST_POSTGRES_URL` is set): the port the checkout relies on, the
//! provider's webhooks, and the staff routes. One test binary (one link) for all.

mod helpers;
mod port;
mod staff;
mod webhooks;
