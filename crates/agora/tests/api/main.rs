//! Black-box tests of the monolith over HTTP: one test binary (one link) for all.
//! Each test starts the real application on port 0 with a fresh database — SQLite,
//! or a fresh PostgreSQL schema when `AGORA_TEST_POSTGRES_URL` is set.

mod abuse;
mod api_keys;
mod cart;
mod catalog;
mod cli;
mod edge;
mod events;
mod functions;
mod helpers;
mod identity;
mod images;
mod inventory;
mod loadgen;
mod matrix;
mod meta;
mod metrics;
mod mfa;
mod oidc;
mod orders;
