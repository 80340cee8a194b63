//! Forwarding a request to an instance, and the gateway's own answers.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use agora_kernel::{ApiError, ApiResponse, ErrorCode, Principal, RequestContext};
use agora_platform::Shutdown;
use arc_swap::ArcSwap;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;

use crate::config::{GatewayConfig, GatewayConfigError, prefix_key};
use crate::edge_auth::{EdgeAuth, EdgeCaller};
use crate::limits::Limits;
use crate::pool::{Instance, Pool};
use crate::tls::Certificate;
use crate::upstream::SendError;

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

/// Headers that carry the identity the gateway checked: whatever a client
/// sends in them is removed, so a service can trust them to come from here.
static X_AGORA_SUBJECT: HeaderName = HeaderName::from_static("x-agora-subject");
static X_AGORA_ROLES: HeaderName = HeaderName::from_static("x-agora-roles");

/// How often idle local rate-limit buckets are forgotten.
const FORGET_IDLE_BUCKETS: Duration = Duration::from_secs(60);

/// The gateway. Cheap to clone: clones share the configuration in force,
/// which [`Gateway::reload`] replaces while it serves.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    listen: SocketAddr,
    /// The certificate, when TLS is terminated here (fixed for the process).
    tls: Option<Arc<Certificate>>,
    current: ArcSwap<Generation>,
    /// Set when serving starts; each generation's background work also stops
    /// with it.
    serving: OnceLock<Shutdown>,
    /// One reload at a time.
    reloading: Mutex<()>,
}

/// What one configuration makes: its routes, pools, checks and limits. A
/// reload builds a new one; requests already forwarded finish on the old.
struct Generation {
    trust_forwarded_for: bool,
    grace: Duration,
    /// (prefix, pool index, require_auth), longest prefix first.
    routes: Vec<(String, usize, bool)>,
    pools: Vec<Pool>,
    auth: Option<EdgeAuth>,
    limits: Option<Limits>,
    /// Stops this generation's health checks and key reads.
    stop: Shutdown,
}

/// The client of the JWKS (instances are reached through their own
/// connections, [`crate::upstream`], ADR 0010).
fn keys_client() -> Client<HttpConnector, Body> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

impl Generation {
    /// The generation `config` describes; what `old` knows of instances that
    /// stay (and its connections to them) carries over.
    fn new(
        config: GatewayConfig,
        old: Option<&Generation>,
    ) -> Result<Generation, GatewayConfigError> {
        let names: Vec<String> = config.upstreams.keys().cloned().collect();
        let mut routes: Vec<(String, usize, bool)> = config
            .routes
            .iter()
            .filter_map(|r| {
                let pool = names.iter().position(|n| *n == r.upstream)?;
                Some((prefix_key(&r.prefix).to_owned(), pool, r.require_auth))
            })
            .collect();
        routes.sort_by_key(|(prefix, _, _)| std::cmp::Reverse(prefix.len()));
        let pools = config
            .upstreams
            .into_iter()
            .map(|(name, pool)| {
                let mut pool = Pool::new(&name, pool);
                if let Some(before) = old.and_then(|old| old.pools.iter().find(|p| p.name == name))
                {
                    pool.keep_instances_of(before);
                }
                pool
            })
            .collect();
        let limits = config.rate_limit.as_ref().map(Limits::new).transpose()?;
        let auth = config.auth.map(|auth| EdgeAuth::new(auth, keys_client()));
        if let (Some(auth), Some(before)) = (&auth, old.and_then(|old| old.auth.as_ref())) {
            auth.keep_keys_of(before);
        }
        Ok(Generation {
            trust_forwarded_for: config.trust_forwarded_for,
            grace: Duration::from_millis(config.shutdown_timeout_ms),
            routes,
            pools,
            auth,
            limits,
            stop: Shutdown::new(),
        })
    }

    fn route(&self, path: &str) -> Option<(usize, bool)> {
        self.routes.iter().find_map(|(prefix, pool, require_auth)| {
            let matches = prefix == "/"
                || path
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            matches.then_some((*pool, *require_auth))
        })
    }

    /// Starts the health checks, key reads and bucket upkeep; they end when
    /// this generation is replaced or `serving` fires.
    fn start(self: &Arc<Self>, serving: &Shutdown) {
        let (stop, serving) = (self.stop.clone(), serving.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = serving.wait() => stop.trigger(),
                () = stop.wait() => {}
            }
        });
        for pool in 0..self.pools.len() {
            tokio::spawn(health_checks(self.clone(), pool));
        }
        if self.auth.is_some() {
            let generation = self.clone();
            tokio::spawn(async move {
                if let Some(auth) = &generation.auth {
                    auth.keep_keys(generation.stop.clone()).await;
                }
            });
        }
        if self.limits.is_some() {
            let generation = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(FORGET_IDLE_BUCKETS) => {}
                        () = generation.stop.wait() => return,
                    }
                    if let Some(limits) = &generation.limits {
                        limits.forget_idle();
                    }
                }
            });
        }
    }
}

impl Gateway {
    /// The gateway `config` describes (already validated). Fails when the
    /// TLS certificate or key cannot be read, or the rate limits' Redis URL
    /// is unusable, naming the key.
    pub fn new(config: GatewayConfig) -> Result<Gateway, GatewayConfigError> {
        let tls = config
            .tls
            .as_ref()
            .map(|tls| Certificate::load(tls).map(Arc::new))
            .transpose()?;
        let listen = config.listen;
        let generation = Generation::new(config, None)?;
        Ok(Gateway {
            inner: Arc::new(Inner {
                listen,
                tls,
                current: ArcSwap::from_pointee(generation),
                serving: OnceLock::new(),
                reloading: Mutex::new(()),
            }),
        })
    }

    /// Replaces the configuration in force with `config` (already validated)
    /// without closing a connection: new requests take the new routes, pools
    /// and limits; requests in flight finish as they began; instances that
    /// stay keep their health and breaker state. `listen` cannot change, nor
    /// can TLS be turned on or off; the certificate files are read again.
    /// On an error nothing changes.
    pub fn reload(&self, config: GatewayConfig) -> Result<(), GatewayConfigError> {
        let _one_at_a_time = self
            .inner
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if config.listen != self.inner.listen {
            return Err(GatewayConfigError::new(
                "listen",
                "cannot change while the gateway runs: restart it",
            ));
        }
        if config.tls.is_some() != self.inner.tls.is_some() {
            return Err(GatewayConfigError::new(
                "tls",
                "cannot be turned on or off while the gateway runs: restart it",
            ));
        }
        let old = self.inner.current.load_full();
        let tls = config.tls.clone();
        let generation = Arc::new(Generation::new(config, Some(&old))?);
        if let (Some(certificate), Some(tls)) = (&self.inner.tls, &tls) {
            certificate.replace(tls)?;
        }
        self.inner.current.store(generation.clone());
        old.stop.trigger();
        if let Some(serving) = self.inner.serving.get() {
            generation.start(serving);
        }
        tracing::info!(
            routes = generation.routes.len(),
            "the gateway's configuration was reloaded"
        );
        Ok(())
    }

    /// On every SIGHUP, reads `path` again and [reloads](Gateway::reload) it;
    /// a file that is unreadable or invalid is logged, naming the key, and
    /// the configuration in force stays.
    #[cfg(unix)]
    pub fn reload_on_hangup(&self, path: std::path::PathBuf) -> anyhow::Result<()> {
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let gateway = self.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let outcome = GatewayConfig::load(&path).and_then(|config| gateway.reload(config));
                if let Err(e) = outcome {
                    tracing::error!(path = %path.display(), error = %e, "reload refused: the configuration in force stays");
                }
            }
        });
        Ok(())
    }

    /// Binds `listen` and serves until `shutdown`, checking the instances'
    /// health meanwhile; in-flight requests get the grace period to finish.
    pub async fn run(self, shutdown: Shutdown) -> anyhow::Result<()> {
        let listen = self.inner.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("Failed to listen on {listen} (`listen`): {e}"))?;
        self.serve(listener, shutdown).await
    }

    /// As [`Gateway::run`], on a listener already bound.
    pub async fn serve(self, listener: TcpListener, shutdown: Shutdown) -> anyhow::Result<()> {
        if self.inner.serving.set(shutdown.clone()).is_err() {
            anyhow::bail!("this gateway is serving already");
        }
        let generation = self.inner.current.load_full();
        generation.start(&shutdown);
        let grace = generation.grace;
        drop(generation);
        tracing::info!(
            addr = %listener.local_addr()?,
            tls = self.inner.tls.is_some(),
            "agora gateway is ready"
        );
        let tls = self
            .inner
            .tls
            .as_ref()
            .map(Certificate::server_config)
            .transpose()?;
        let router = Router::new()
            .route(
                "/health/live",
                get(|| async { ApiResponse::ok(serde_json::json!({ "status": "live" })) }),
            )
            .route("/health/ready", get(ready))
            .fallback(proxy)
            .with_state(self);
        let outcome = match tls {
            None => agora_platform::http::serve(listener, router, shutdown.clone(), grace).await,
            Some(tls) => {
                agora_platform::http::serve_tls(listener, router, shutdown.clone(), grace, tls)
                    .await
            }
        };
        shutdown.trigger();
        outcome
    }
}

/// Ready while every pool has an instance that can take requests; otherwise
/// `SERVICE_NOT_READY` naming the pools that have none.
async fn ready(State(gateway): State<Gateway>) -> Response {
    let generation = gateway.inner.current.load_full();
    let pools: serde_json::Map<String, serde_json::Value> = generation
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

/// Asks each instance of a pool `GET <health.path>` every interval, until
/// the generation stops.
async fn health_checks(generation: Arc<Generation>, pool: usize) {
    let pool = &generation.pools[pool];
    let every = Duration::from_millis(pool.config.health.interval_ms);
    let timeout = Duration::from_millis(pool.config.health.timeout_ms);
    let connect_timeout = Duration::from_millis(pool.config.connect_timeout_ms);
    loop {
        let checks = pool.instances.iter().map(|instance| async move {
            let check = async {
                let request = instance_request(
                    Method::GET,
                    instance,
                    &pool.config.health.path,
                    HeaderMap::new(),
                    Body::empty(),
                )?;
                let answer = instance.send(connect_timeout, request).await.ok()?;
                let ok = answer.status().is_success();
                // Read to its end, the connection serves the next check.
                answer.into_body().collect().await.ok()?;
                Some(ok)
            };
            let healthy = matches!(tokio::time::timeout(timeout, check).await, Ok(Some(true)));
            instance.set_healthy(healthy);
        });
        futures_util::future::join_all(checks).await;
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = generation.stop.wait() => return,
        }
    }
}

/// Every request that is not one of the gateway's own.
async fn proxy(
    State(gateway): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let given = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok());
    let request_id = RequestContext::accept_request_id(given);
    let context = RequestContext::new(request_id.clone(), None);
    let generation = gateway.inner.current.load_full();
    let tls = gateway.inner.tls.is_some();
    let mut response = context
        .scope(forward(&generation, tls, peer, request, &request_id))
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
    gateway: &Generation,
    tls: bool,
    peer: SocketAddr,
    request: Request,
    request_id: &str,
) -> Response {
    let client_ip = client_address(request.headers(), peer, gateway.trust_forwarded_for);
    if let Some(limits) = &gateway.limits
        && let Err(limited) = limits.admit_client(client_ip).await
    {
        return limited.response();
    }
    let Some((pool_index, require_auth)) = gateway.route(request.uri().path()) else {
        return ApiError::from_code(ErrorCode::RouteNotFound).into_response();
    };
    // On a route that requires a token, a request without a good one stops
    // here. Elsewhere a bad token goes on without a checked identity, and the
    // service answers as it would without the gateway (a client refreshing
    // its session may still send its expired access token).
    let principal = match &gateway.auth {
        None => None,
        Some(auth) => match auth.caller(request.headers()).await {
            Ok(EdgeCaller::User(principal)) => Some(principal),
            Ok(EdgeCaller::Anonymous) if require_auth => {
                return ApiError::from_code(ErrorCode::AuthRequired).into_response();
            }
            Ok(EdgeCaller::Anonymous | EdgeCaller::ApiKey) => None,
            Err(e) if require_auth && e.code() == ErrorCode::GatewayAuthUnavailable => {
                return e.with_retry_after(2).into_response();
            }
            Err(e) if require_auth => return e.into_response(),
            Err(_) => None,
        },
    };
    if let (Some(limits), Some(principal)) = (&gateway.limits, &principal)
        && limits.limits_subjects()
        && let Err(limited) = limits.admit_subject(&principal.subject.to_string()).await
    {
        return limited.response();
    }
    let pool = &gateway.pools[pool_index];
    let connect_timeout = Duration::from_millis(pool.config.connect_timeout_ms);
    let (parts, body) = request.into_parts();
    let headers = forwarded_headers(
        &parts.headers,
        peer.ip(),
        request_id,
        tls,
        principal.as_ref(),
    );
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let timeout = Duration::from_millis(pool.config.request_timeout_ms);
    // A request can be sent again only if its body can: none, or one small
    // enough to keep (read in full first). A large body streams once.
    // The body's exact length as hyper knows it (Content-Length, or an
    // HTTP/2 stream that ended with its headers); unknown when chunked.
    let exact_length = axum::body::HttpBody::size_hint(&body)
        .exact()
        .and_then(|n| usize::try_from(n).ok());
    let mut body = Some(body);
    let replay: Option<Bytes> = match exact_length {
        Some(0) => Some(Bytes::new()),
        Some(length) if length <= REPLAY_LIMIT => {
            let whole = Limited::new(body.take().unwrap_or_else(Body::empty), REPLAY_LIMIT);
            match tokio::time::timeout(timeout, whole.collect()).await {
                Ok(Ok(collected)) => Some(collected.to_bytes()),
                _ => {
                    return ApiError::from_code(ErrorCode::GatewayRequestIncomplete)
                        .into_response();
                }
            }
        }
        _ => None,
    };
    let idempotent = is_idempotent(&parts.method);
    let attempts = if replay.is_some() {
        pool.config.retry.attempts
    } else {
        1
    };
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
        let body = match &replay {
            Some(bytes) => Body::from(bytes.clone()),
            None => body.take().unwrap_or_else(Body::empty),
        };
        let Some(outgoing) =
            instance_request(parts.method.clone(), instance, &path, headers.clone(), body)
        else {
            return ApiError::from_code(ErrorCode::RequestInvalidPath).into_response();
        };
        let in_flight = instance.start();
        let started = Instant::now();
        match tokio::time::timeout(timeout, instance.send(connect_timeout, outgoing)).await {
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
                if overloaded && attempt + 1 < attempts && idempotent {
                    overloaded_answer = Some(response);
                    continue;
                }
                return response;
            }
            Ok(Err(e)) => {
                tracing::warn!(upstream = %instance.address, pool = %pool.name, error = %e, "upstream request failed");
                in_flight.failed(&pool.config.breaker);
                failure = Failure::Unreachable;
                // No connection: the instance saw nothing, so any request
                // may go to another. Otherwise only an idempotent one.
                if !matches!(e, SendError::Connect(_)) && !idempotent {
                    break;
                }
            }
            Err(_) => {
                tracing::warn!(upstream = %instance.address, pool = %pool.name, "upstream did not answer in time");
                in_flight.failed(&pool.config.breaker);
                failure = Failure::Timeout;
                if !idempotent {
                    break;
                }
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

/// A request to `instance`: `path_and_query` in the request line, its
/// authority as `Host`.
fn instance_request(
    method: Method,
    instance: &Instance,
    path_and_query: &str,
    mut headers: HeaderMap,
    body: Body,
) -> Option<http::Request<Body>> {
    let uri = http::Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .ok()?;
    headers.insert(
        header::HOST,
        HeaderValue::from_str(instance.authority.as_str()).ok()?,
    );
    let mut request = http::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    Some(request)
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// The largest body kept so that its request can be tried again.
const REPLAY_LIMIT: usize = 64 * 1024;

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
/// request id set; `X-Agora-Subject` and `X-Agora-Roles` set from the token
/// checked here, and removed otherwise. `traceparent` and `Authorization`
/// pass unchanged.
fn forwarded_headers(
    given: &HeaderMap,
    peer: IpAddr,
    request_id: &str,
    tls: bool,
    principal: Option<&Principal>,
) -> HeaderMap {
    let mut headers = given.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(&X_AGORA_SUBJECT);
    headers.remove(&X_AGORA_ROLES);
    if let Some(principal) = principal {
        if let Ok(value) = HeaderValue::from_str(&principal.subject.to_string()) {
            headers.insert(X_AGORA_SUBJECT.clone(), value);
        }
        let roles: Vec<&str> = principal.roles.iter().map(|r| r.as_str()).collect();
        if let Ok(value) = HeaderValue::from_str(&roles.join(",")) {
            headers.insert(X_AGORA_ROLES.clone(), value);
        }
    }
    let forwarded_for = match given.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {peer}"),
        None => peer.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    let proto = if tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    // Never the client's own X-Forwarded-Host: the Host it sent, if any.
    headers.remove(&X_FORWARDED_HOST);
    if let Some(host) = given.get(header::HOST) {
        headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    // The instance's own authority goes in `Host` (see `instance_request`).
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
