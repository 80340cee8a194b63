//! The Agora binary's library: the composition root.
//!
//! # Layout
//! - [`app`]: [`app::Application`] — builds the monolith from a [`Config`]
//!   (database, migrations, modules, router) and runs it until shutdown.
//! - [`admin`]: the operators' routes: the event log, replays to a consumer,
//!   and the dead letters.
//! - [`up`]: `agora up --services`, a development fleet of services behind
//!   the gateway.
//! - [`api`]: the routes that belong to no module: the error catalogue and the
//!   OpenAPI document, and the Swagger UI.
//!
//! [`Config`]: agora_platform::Config

pub mod admin;
pub mod api;
pub mod app;
pub mod up;
