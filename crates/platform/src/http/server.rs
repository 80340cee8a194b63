//! Assembling the application router and serving it.

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::{ApiError, ErrorCode};
use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;

use super::edge::{Edge, edge};
use crate::shutdown::Shutdown;

/// Puts the pieces together: `api` (every module's routes, relative to the API
/// root) is served under `/api/v1` and, for clients that choose the version with
/// the `Api-Version` header, under `/api`; `root` holds routes outside the API
/// (health, docs). Unknown routes and methods get coded errors, panics become a
/// coded 500, bodies are limited, and the edge middleware wraps it all.
pub fn build_router(api: Router, root: Router, edge_config: Edge, body_limit: usize) -> Router {
    Router::new()
        .nest("/api/v1", api.clone())
        .nest("/api", api)
        .merge(root)
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(edge_config),
            edge,
        ))
}

async fn route_not_found() -> ApiError {
    ApiError::from_code(ErrorCode::RouteNotFound)
}

async fn method_not_allowed() -> ApiError {
    ApiError::from_code(ErrorCode::MethodNotAllowed)
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into());
    ApiError::internal(format!("handler panicked: {message}")).into_response()
}

/// Serves `router` on `listener` until `shutdown` fires, then lets in-flight
/// requests finish for at most `grace` before closing what is left.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    grace: Duration,
) -> anyhow::Result<()> {
    // Small JSON answers must not wait for Nagle's algorithm.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let stop = shutdown.clone();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await
    });
    tokio::select! {
        outcome = &mut server => {
            return outcome.context("The HTTP server task failed")?.context("The HTTP server failed");
        }
        () = shutdown.wait() => {}
    }
    match tokio::time::timeout(grace, &mut server).await {
        Ok(outcome) => outcome
            .context("The HTTP server task failed")?
            .context("The HTTP server failed"),
        Err(_) => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "in-flight requests did not finish in time; closing them"
            );
            server.abort();
            Ok(())
        }
    }
}
