//! The edge middleware: the first and last code every request meets.
//!
//! In one pass, to keep the hot path short, it:
//! - takes the caller's `X-Request-Id` when it is sane (1–128 characters of
//!   `[A-Za-z0-9._:-]`) or makes one, makes it the current [`RequestContext`]
//!   (so every envelope's `meta.request_id` has it) and echoes it in the response;
//! - takes the caller's W3C `traceparent` when it is valid, so that the events the
//!   request makes continue the caller's trace (otherwise they start one);
//! - opens the request's tracing span, so every log line of the request carries it;
//! - negotiates the API version: `/api/v1/…` is version 1; an unversioned
//!   `/api/…` path is served at the version named by the `Api-Version` header (the
//!   current one when absent); a header that names another version, or contradicts
//!   the path, is refused with `API_VERSION_UNSUPPORTED`;
//! - gives handlers the [`Authenticator`] and the [`ClientAddress`];
//! - bounds the request by `server.request_timeout_ms` (`SERVER_TIMEOUT`);
//! - logs the outcome once: a server fault at `error` with its internal cause (which
//!   the client never sees), everything else at `debug`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_kernel::envelope::API_VERSION;
use agora_kernel::error::ErrorReport;
use agora_kernel::{ApiError, ErrorCode, RequestContext, TraceContext};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue};
use tracing::Instrument;

use crate::auth::Authenticator;

/// The request id header, read and echoed.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The W3C trace context header, read (and carried on with the request's
/// events).
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The API version header, read and echoed.
pub static API_VERSION_HEADER: HeaderName = HeaderName::from_static("api-version");

/// What the edge middleware needs.
#[derive(Clone, Debug)]
pub struct Edge {
    /// Every request gets it in its extensions, for the `Caller` extractor.
    pub authenticator: Authenticator,
    /// Requests running longer are answered `SERVER_TIMEOUT`.
    pub request_timeout: Duration,
    /// Take the client's address from `X-Forwarded-For` (`server.trust_forwarded_for`).
    pub trust_forwarded_for: bool,
}

/// The address of the client that sent the request: the TCP peer, or with
/// `server.trust_forwarded_for` the last `X-Forwarded-For` entry (the one the
/// trusted proxy in front wrote). Unspecified (`0.0.0.0`) when neither is known,
/// as for a router called in-process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddress(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientAddress>()
            .copied()
            .unwrap_or(ClientAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
    }
}

fn client_address(req: &Request, trust_forwarded_for: bool) -> ClientAddress {
    let forwarded = trust_forwarded_for
        .then(|| last_forwarded_for(req.headers()))
        .flatten();
    let peer = || {
        req.extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip())
    };
    ClientAddress(
        forwarded
            .or_else(peer)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
    )
}

/// The last `X-Forwarded-For` entry, if it is an address: the one a trusted
/// proxy in front appended (earlier entries come from the client). The same
/// rule at every hop that trusts a proxy (this edge, the gateway).
pub fn last_forwarded_for(headers: &http::HeaderMap) -> Option<IpAddr> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .next_back()
        .and_then(|last| last.trim().parse::<IpAddr>().ok())
}

/// The middleware function; install with `axum::middleware::from_fn_with_state`.
pub async fn edge(State(edge): State<Arc<Edge>>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let metered = crate::metrics::enabled();
    let _in_flight = metered.then(crate::metrics::InFlight::start);
    let route = metered.then(|| {
        let slot = crate::metrics::RouteSlot::default();
        req.extensions_mut().insert(slot.clone());
        slot
    });
    let request_id = request_id(&req);
    // Only the request id on the span: the fmt layer formats span fields when the
    // span is created, on every request; method and path go on the final line.
    let span = tracing::info_span!("request", request_id = %request_id);
    // Kept for the final log line. Cloning shares the URI's buffer: no copy on a
    // hot path whose line is usually filtered out.
    let method = req.method().clone();
    let uri = req.uri().clone();
    // An invalid `traceparent`, or more than one, is ignored: the request
    // starts a trace.
    let mut given = req.headers().get_all(&TRACEPARENT).iter();
    let parent = match (given.next(), given.next()) {
        (Some(one), None) => one.to_str().ok().and_then(TraceContext::parse),
        _ => None,
    };
    // With spans exported, the request's own trace context is its span's.
    let context = match crate::telemetry::continue_trace(&span, parent) {
        Some(own) => RequestContext::with_trace(request_id.clone(), parent, own),
        None => RequestContext::new(request_id.clone(), parent),
    };
    let version = negotiate_version(&req);
    let client = client_address(&req, edge.trust_forwarded_for);
    req.extensions_mut().insert(client);
    req.extensions_mut().insert(edge.authenticator.clone());
    let mut response = context
        .scope(
            async move {
                if let Err(e) = version {
                    return e.into_response();
                }
                match tokio::time::timeout(edge.request_timeout, next.run(req)).await {
                    Ok(response) => response,
                    Err(_) => ApiError::from_code(ErrorCode::ServerTimeout).into_response(),
                }
            }
            .instrument(span.clone()),
        )
        .await;

    let status = response.status();
    let elapsed = started.elapsed();
    if let Some(route) = &route {
        crate::metrics::record_request(&method, route.route(), status, elapsed);
    }
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    let code = response.extensions().get::<ErrorCode>().map(|c| c.as_str());
    span.in_scope(|| {
        if let Some(ErrorReport(cause)) = response.extensions().get::<ErrorReport>() {
            tracing::error!(%method, path = uri.path(), status = status.as_u16(), code, elapsed_ms, cause = %cause, "request failed");
        } else if status.is_server_error() {
            tracing::warn!(%method, path = uri.path(), status = status.as_u16(), code, elapsed_ms, "request failed");
        } else {
            tracing::debug!(%method, path = uri.path(), status = status.as_u16(), code, elapsed_ms, "request finished");
        }
    });
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(X_REQUEST_ID.clone(), v);
    }
    headers.insert(
        API_VERSION_HEADER.clone(),
        HeaderValue::from_static(API_VERSION),
    );
    response
}

fn request_id(req: &Request) -> Arc<str> {
    RequestContext::accept_request_id(
        req.headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok()),
    )
}

fn negotiate_version(req: &Request) -> Result<(), ApiError> {
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix("/api/") else {
        return Ok(());
    };
    let header = req
        .headers()
        .get(&API_VERSION_HEADER)
        .map(|v| v.to_str().unwrap_or("").trim());
    let in_path = rest
        .split('/')
        .next()
        .and_then(|seg| seg.strip_prefix('v'))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let unsupported = |v: &str| {
        ApiError::new(
            ErrorCode::ApiVersionUnsupported,
            format!(
                "API version `{}` is not served here; supported: `{API_VERSION}`",
                v.chars().take(16).collect::<String>()
            ),
        )
    };
    if let Some(v) = in_path
        && v != API_VERSION
    {
        return Err(unsupported(v));
    }
    match header {
        Some(h) if h != API_VERSION => Err(unsupported(h)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::{ClientAddress, client_address};
    use axum::extract::ConnectInfo;

    fn request(peer: Option<&str>, forwarded: &[&str]) -> axum::extract::Request {
        let mut req = axum::extract::Request::new(axum::body::Body::empty());
        if let Some(peer) = peer {
            let addr: std::net::SocketAddr = peer.parse().expect("an address");
            req.extensions_mut().insert(ConnectInfo(addr));
        }
        for value in forwarded {
            req.headers_mut().append(
                "x-forwarded-for",
                http::HeaderValue::from_str(value).expect("a header"),
            );
        }
        req
    }

    fn ip(s: &str) -> ClientAddress {
        ClientAddress(s.parse().expect("an ip"))
    }

    #[test]
    fn the_client_is_the_peer_unless_a_trusted_proxy_says_otherwise() {
        let forged = request(Some("10.0.0.7:5000"), &["203.0.113.9"]);
        assert_eq!(client_address(&forged, false), ip("10.0.0.7"));
        // Behind a proxy, the last entry is the one the proxy appended; earlier
        // ones came from the client and may be forged.
        let proxied = request(
            Some("10.0.0.7:5000"),
            &["198.51.100.1, 203.0.113.9", "2001:db8::5"],
        );
        assert_eq!(client_address(&proxied, true), ip("2001:db8::5"));
        let garbage = request(Some("10.0.0.7:5000"), &["not-an-ip"]);
        assert_eq!(client_address(&garbage, true), ip("10.0.0.7"));
        assert_eq!(client_address(&request(None, &[]), true), ip("0.0.0.0"));
    }

    use super::*;
    use axum::body::Body;

    fn req(path: &str, version: Option<&str>, id: Option<&str>) -> Request {
        let mut b = Request::builder().uri(path);
        if let Some(v) = version {
            b = b.header("api-version", v);
        }
        if let Some(id) = id {
            b = b.header("x-request-id", id);
        }
        b.body(Body::empty()).unwrap_or_default()
    }

    #[test]
    fn versions_in_path_and_header_must_agree_with_what_we_serve() {
        assert!(negotiate_version(&req("/api/v1/products", None, None)).is_ok());
        assert!(negotiate_version(&req("/api/v1/products", Some("1"), None)).is_ok());
        assert!(negotiate_version(&req("/api/products", Some("1"), None)).is_ok());
        assert!(negotiate_version(&req("/api/products", None, None)).is_ok());
        assert!(negotiate_version(&req("/health/live", Some("9"), None)).is_ok());
        for (path, v) in [
            ("/api/v2/products", None),
            ("/api/v1/products", Some("2")),
            ("/api/products", Some("banana")),
        ] {
            let code = negotiate_version(&req(path, v, None))
                .err()
                .map(|e| e.code());
            assert_eq!(code, Some(ErrorCode::ApiVersionUnsupported), "{path} {v:?}");
        }
    }

    #[test]
    fn a_sane_request_id_is_kept_and_anything_else_replaced() {
        assert_eq!(
            &*request_id(&req("/", None, Some("abc-123.x:y_z"))),
            "abc-123.x:y_z"
        );
        for bad in ["", "has space", "semi;colon", &"x".repeat(129)] {
            let id = request_id(&req("/", None, Some(bad)));
            assert_eq!(id.len(), 32, "{bad}");
        }
    }
}
