//! Assembling the application router and serving it.

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::{ApiError, ErrorCode};
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceExt as _;
use tower_http::catch_panic::CatchPanicLayer;

use super::edge::{Edge, edge};
use crate::shutdown::Shutdown;

/// Puts the pieces together: `api` (every module's routes, relative to the API
/// root) is served under `/api/v1` and, for clients that choose the version with
/// the `Api-Version` header, under `/api`; `root` holds routes outside the API
/// (health, docs). Unknown routes and methods get coded errors, panics become a
/// coded 500, bodies are limited, and the edge middleware wraps it all.
pub fn build_router(api: Router, root: Router, edge_config: Edge, body_limit: usize) -> Router {
    // Each route names itself on its response, for the request metrics.
    let named = |router: Router| {
        if router.has_routes() {
            router.route_layer(axum::middleware::from_fn(crate::metrics::matched_route))
        } else {
            router
        }
    };
    let (api, root) = (named(api), named(root));
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

/// How long a client may take to send a request's headers before the connection
/// is closed: slow or idle clients cannot hold connections open for free.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client has to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` fires. Then it stops accepting,
/// asks every connection to finish its in-flight request and close, waits for at
/// most `grace`, and closes whatever is left.
///
/// A hyper-util accept loop rather than `axum::serve`, which offers neither a
/// header-read timeout nor a way to close connections that outlive the grace
/// period.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    grace: Duration,
) -> anyhow::Result<()> {
    serve_connections(listener, router, shutdown, grace, None).await
}

/// As [`serve`], over TLS: each connection's handshake (within
/// [`TLS_HANDSHAKE_TIMEOUT`]) uses `tls`, whose certificate resolver may hand
/// out a new certificate for new connections without a restart.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    grace: Duration,
    tls: Arc<rustls::ServerConfig>,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_connections(listener, router, shutdown, grace, Some(acceptor)).await
}

async fn serve_connections(
    listener: TcpListener,
    router: Router,
    shutdown: Shutdown,
    grace: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small JSON answers must not wait for Nagle's algorithm.
                let (stream, peer) = stream;
                let _ = stream.set_nodelay(true);
                // The peer's address, for the edge's `ClientAddress`.
                let service = TowerToHyperService::new(router.clone().map_request(
                    move |mut req: http::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(ConnectInfo(peer));
                        req
                    },
                ));
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let tls = tls.clone();
                connections.spawn(async move {
                    let outcome = match tls {
                        None => {
                            let connection = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service);
                            watcher.watch(connection.into_owned()).await
                        }
                        Some(acceptor) => {
                            let handshake =
                                tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                            let stream = match handshake.await {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                            let connection = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service);
                            watcher.watch(connection.into_owned()).await
                        }
                    };
                    if let Err(e) = outcome {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = shutdown.wait() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            open = connections.len(),
            "in-flight requests did not finish in time; closing their connections"
        );
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}
