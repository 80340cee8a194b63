//! Forwarding a request to an instance, and the gateway's own answers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_kernel::{ApiError, ApiResponse, ErrorCode, RequestContext};
use agora_platform::Shutdown;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

use crate::config::{GatewayConfig, prefix_key};
use crate::pool::Pool;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Headers that describe one hop's connection, not the message (RFC 9110
/// §7.6.1): never forwarded, in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The gateway: its routes and pools, ready to serve.
pub struct Gateway {
    listen: SocketAddr,
    trust_forwarded_for: bool,
    grace: Duration,
    /// (prefix, pool index), longest prefix first.
    routes: Vec<(String, usize)>,
    pools: Vec<Pool>,
    /// One client per pool: its connect timeout is the pool's.
    clients: Vec<Client<HttpConnector, Body>>,
}

impl Gateway {
    /// The gateway `config` describes (already validated).
    pub fn new(config: GatewayConfig) -> Gateway {
        let names: Vec<String> = config.upstreams.keys().cloned().collect();
        let mut routes: Vec<(String, usize)> = config
            .routes
            .iter()
            .filter_map(|r| {
                let pool = names.iter().position(|n| *n == r.upstream)?;
                Some((prefix_key(&r.prefix).to_owned(), pool))
            })
            .collect();
        routes.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let clients = config
            .upstreams
            .values()
            .map(|pool| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(Duration::from_millis(pool.connect_timeout_ms)));
                connector.set_nodelay(true);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(60))
                    .build(connector)
            })
            .collect();
        let pools = config
            .upstreams
            .into_iter()
            .map(|(name, pool)| Pool::new(&name, pool))
            .collect();
        Gateway {
            listen: config.listen,
            trust_forwarded_for: config.trust_forwarded_for,
            grace: Duration::from_millis(config.shutdown_timeout_ms),
            routes,
            pools,
            clients,
        }
    }

    /// Binds `listen` and serves until `shutdown`, checking the instances'
    /// health meanwhile; in-flight requests get the grace period to finish.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let listener = TcpListener::bind(self.listen)
            .await
            .map_err(|e| anyhow::anyhow!("Failed to listen on {} (`listen`): {e}", self.listen))?;
        self.serve(listener, shutdown).await
    }

    /// As [`Gateway::run`], on a listener already bound.
    pub async fn serve(self, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
        let grace = self.grace;
        let gateway = Arc::new(self);
        let mut checks = tokio::task::JoinSet::new();
        for pool in 0..gateway.pools.len() {
            checks.spawn(health_checks(gateway.clone(), pool, shutdown.clone()));
        }
        tracing::info!(addr = %listener.local_addr()?, routes = gateway.routes.len(), "agora gateway is ready");
        let router = Router::new()
            .route(
                "/health/live",
                get(|| async { ApiResponse::ok(serde_json::json!({ "status": "live" })) }),
            )
            .route("/health/ready", get(ready))
            .fallback(proxy)
            .with_state(gateway);
        let outcome = agora_platform::http::serve(listener, router, shutdown.clone(), grace).await;
        shutdown.trigger();
        checks.join_all().await;
        outcome
    }

    fn route(&self, path: &str) -> Option<usize> {
        self.routes.iter().find_map(|(prefix, pool)| {
            let matches = prefix == "/"
                || path
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            matches.then_some(*pool)
        })
    }
}

/// Ready while every pool has an instance that can take requests; otherwise
/// `SERVICE_NOT_READY` naming the pools that have none.
async fn ready(State(gateway): State<Arc<Gateway>>) -> Response {
    let pools: serde_json::Map<String, serde_json::Value> = gateway
        .pools
        .iter()
        .map(|p| {
            let state = if p.any_available() {
                "ok"
            } else {
                "unavailable"
            };
            (p.name.clone(), state.into())
        })
        .collect();
    if pools.values().all(|state| state == "ok") {
        ApiResponse::ok(serde_json::json!({ "status": "ready", "upstreams": pools }))
            .into_response()
    } else {
        ApiError::from_code(ErrorCode::ServiceNotReady)
            .with_details(serde_json::json!({ "upstreams": pools }))
            .into_response()
    }
}

/// Asks each instance of a pool `GET <health.path>` every interval.
async fn health_checks(gateway: Arc<Gateway>, pool: usize, shutdown: Shutdown) {
    let client = &gateway.clients[pool];
    let pool = &gateway.pools[pool];
    let every = Duration::from_millis(pool.config.health.interval_ms);
    let timeout = Duration::from_millis(pool.config.health.timeout_ms);
    loop {
        let checks = pool.instances.iter().map(|instance| async move {
            let uri = format!(
                "{}{}",
                instance.address.trim_end_matches('/'),
                pool.config.health.path
            );
            let request = http::Request::get(uri).body(Body::empty());
            let healthy = match request {
                Ok(request) => matches!(
                    tokio::time::timeout(timeout, client.request(request)).await,
                    Ok(Ok(answer)) if answer.status().is_success()
                ),
                Err(_) => false,
            };
            instance.set_healthy(healthy);
        });
        futures_util::future::join_all(checks).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// Every request that is not one of the gateway's own.
async fn proxy(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let given = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok());
    let request_id = RequestContext::accept_request_id(given);
    let context = RequestContext::new(request_id.clone(), None);
    let mut response = context
        .scope(forward(&gateway, peer, request, &request_id))
        .await;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
    response
}

/// How the last try of a request failed.
enum Failure {
    NoInstance,
    Unreachable,
    Timeout,
}

async fn forward(
    gateway: &Gateway,
    peer: SocketAddr,
    request: Request,
    request_id: &str,
) -> Response {
    let Some(pool_index) = gateway.route(request.uri().path()) else {
        return ApiError::from_code(ErrorCode::RouteNotFound).into_response();
    };
    let pool = &gateway.pools[pool_index];
    let client = &gateway.clients[pool_index];
    let (parts, body) = request.into_parts();
    let client_ip = client_address(&parts.headers, peer, gateway.trust_forwarded_for);
    let headers = forwarded_headers(&parts.headers, peer.ip(), request_id);
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    // Only a request whose method is idempotent and that has no body can be
    // sent again: nothing of it was consumed by the first try.
    let bodiless = body_is_empty(&parts.headers);
    let retryable = bodiless && is_idempotent(&parts.method);
    let attempts = if retryable {
        pool.config.retry.attempts
    } else {
        1
    };
    let timeout = Duration::from_millis(pool.config.request_timeout_ms);
    let mut body = Some(body);
    let mut tried = Vec::new();
    let mut failure = Failure::NoInstance;
    // An instance's own 502/503/504, kept while another instance is tried:
    // the client gets it if no other answer comes.
    let mut overloaded_answer: Option<Response> = None;
    pool.deposit();
    for attempt in 0..attempts {
        if attempt > 0 && !pool.withdraw() {
            break;
        }
        let Some(index) = pool.pick(client_ip, &tried) else {
            break;
        };
        tried.push(index);
        let instance = &pool.instances[index];
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(instance.authority.clone())
            .path_and_query(path.as_str())
            .build();
        let Ok(uri) = uri else {
            return ApiError::from_code(ErrorCode::RequestInvalidPath).into_response();
        };
        let body = if bodiless {
            Body::empty()
        } else {
            body.take().unwrap_or_else(Body::empty)
        };
        let mut outgoing = http::Request::new(body);
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() = headers.clone();
        let in_flight = instance.start();
        let started = Instant::now();
        match tokio::time::timeout(timeout, client.request(outgoing)).await {
            Ok(Ok(answer)) => {
                let status = answer.status();
                let overloaded = matches!(
                    status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                );
                if overloaded {
                    in_flight.failed(&pool.config.breaker);
                } else {
                    in_flight.succeeded(started.elapsed());
                }
                let (mut parts, incoming) = answer.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let response = Response::from_parts(parts, Body::new(incoming));
                if overloaded && attempt + 1 < attempts && retryable {
                    overloaded_answer = Some(response);
                    continue;
                }
                return response;
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %instance.address, pool = %pool.name, error = %e, "upstream request failed");
                in_flight.failed(&pool.config.breaker);
                failure = Failure::Unreachable;
            }
            Err(_) => {
                tracing::warn!(upstream = %instance.address, pool = %pool.name, "upstream did not answer in time");
                in_flight.failed(&pool.config.breaker);
                failure = Failure::Timeout;
            }
        }
    }
    if let Some(answer) = overloaded_answer {
        return answer;
    }
    match failure {
        Failure::NoInstance if tried.is_empty() => {
            let retry_after = pool.config.breaker.open_ms.div_ceil(1000).max(1);
            ApiError::from_code(ErrorCode::GatewayUnavailable)
                .with_retry_after(retry_after)
                .with_details(serde_json::json!({
                    "upstream": pool.name,
                    "retry_after_secs": retry_after,
                }))
                .into_response()
        }
        Failure::Timeout => ApiError::from_code(ErrorCode::GatewayUpstreamTimeout).into_response(),
        Failure::NoInstance | Failure::Unreachable => {
            ApiError::from_code(ErrorCode::GatewayUpstreamFailed).into_response()
        }
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// Whether the request says it has no body (no length, or length 0, and no
/// chunked transfer).
fn body_is_empty(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    matches!(length, None | Some("0")) && !headers.contains_key(header::TRANSFER_ENCODING)
}

/// The client's address: the peer's, or with `trust_forwarded_for` the last
/// `X-Forwarded-For` entry.
fn client_address(headers: &HeaderMap, peer: SocketAddr, trust_forwarded_for: bool) -> IpAddr {
    trust_forwarded_for
        .then(|| agora_platform::http::edge::last_forwarded_for(headers))
        .flatten()
        .unwrap_or(peer.ip())
}

/// The request's headers as forwarded: hop-by-hop ones (and those the
/// `Connection` header names) removed; the peer appended to
/// `X-Forwarded-For`; `X-Forwarded-Proto` and `X-Forwarded-Host` set; the
/// request id set. `traceparent` and `Authorization` pass unchanged.
fn forwarded_headers(given: &HeaderMap, peer: IpAddr, request_id: &str) -> HeaderMap {
    let mut headers = given.clone();
    strip_hop_by_hop(&mut headers);
    let forwarded_for = match given.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {peer}"),
        None => peer.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = given.get(header::HOST) {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    // The instance's own authority goes in the request line; hyper sets `Host` from it.
    headers.remove(header::HOST);
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert(X_REQUEST_ID.clone(), value);
    }
    headers
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}
