//! Liveness and readiness.
//!
//! `/health/live` answers as long as the process serves HTTP: a failing liveness
//! probe means "restart me". `/health/ready` also checks the dependencies (the
//! database, bounded by a short timeout): a failing readiness probe means "send me
//! no traffic for now" and answers `SERVICE_NOT_READY` (503). A shared cache that
//! does not answer is reported as `degraded` but keeps the process ready: reads
//! then go to the database.

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::{ApiError, ApiResponse, ErrorCode};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Serialize;

use crate::cache::Cache;
use crate::db::Database;

/// How long the readiness check waits for the database.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What readiness checks.
#[derive(Clone)]
struct Dependencies {
    db: Database,
    cache: Option<Arc<dyn Cache>>,
}

/// The health routes, checking `db` and, when there is one, `cache`.
pub fn routes(db: Database, cache: Option<Arc<dyn Cache>>) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .with_state(Dependencies { db, cache })
}

/// The body of a health answer.
#[derive(Debug, Serialize)]
pub struct Health {
    /// `live` or `ready`.
    pub status: &'static str,
    /// Each dependency checked, and `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<Checks>,
}

/// The dependencies checked by readiness.
#[derive(Debug, Serialize)]
pub struct Checks {
    /// `ok` or `unavailable`.
    pub database: &'static str,
    /// `ok`, or `degraded` when a shared cache does not answer; absent without
    /// a cache.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<&'static str>,
}

async fn live() -> ApiResponse<Health> {
    ApiResponse::ok(Health {
        status: "live",
        checks: None,
    })
}

async fn ready(State(deps): State<Dependencies>) -> Result<ApiResponse<Health>, ApiError> {
    let cache = match &deps.cache {
        Some(cache) => Some(
            match tokio::time::timeout(CHECK_TIMEOUT, cache.check()).await {
                Ok(true) => "ok",
                _ => "degraded",
            },
        ),
        None => None,
    };
    match tokio::time::timeout(CHECK_TIMEOUT, deps.db.ping()).await {
        Ok(Ok(())) => Ok(ApiResponse::ok(Health {
            status: "ready",
            checks: Some(Checks {
                database: "ok",
                cache,
            }),
        })),
        outcome => {
            let cause = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_string(),
            };
            tracing::warn!(%cause, "readiness check failed: database");
            Err(ApiError::from_code(ErrorCode::ServiceNotReady)
                .with_details(serde_json::json!({ "checks": { "database": "unavailable" } })))
        }
    }
}
