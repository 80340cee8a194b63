//! What travels beside each port call, in gRPC metadata:
//! - `agora-contract`: the version of the messages the caller speaks
//!   ([`CONTRACT_VERSION`]). A server refuses another version with
//!   `FAILED_PRECONDITION` rather than misread it; fields added within a
//!   version are ignored by older peers, as protobuf does.
//! - `x-request-id`: the id of the request that caused the call, so the
//!   callee's log lines carry it as the caller's do.
//! - `traceparent`: the caller's W3C trace context, so the call is a span of
//!   the caller's trace.
//! - `grpc-timeout`: the deadline (tonic's), after which the callee stops
//!   working on the call and the caller stops waiting (tonic reports
//!   `CANCELLED` on the caller's side).
//! - `authorization`: `Bearer <services.token>`, the secret the services of
//!   one deployment share; a server with a token refuses calls without it
//!   (`UNAUTHENTICATED`). The health service asks for none.

use std::sync::Arc;
use std::time::Duration;

use agora_kernel::{RequestContext, TraceContext};
use tonic::metadata::{AsciiMetadataValue, MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// The contract version this build speaks; bumped when a message changes
/// incompatibly.
pub const CONTRACT_VERSION: &str = "1";
/// The metadata key that carries [`CONTRACT_VERSION`].
pub const CONTRACT_KEY: &str = "agora-contract";
/// The metadata key of the request id.
pub const REQUEST_ID_KEY: &str = "x-request-id";
/// The metadata key of the W3C trace context.
pub const TRACEPARENT_KEY: &str = "traceparent";
/// The metadata key of the shared token.
pub const AUTHORIZATION_KEY: &str = "authorization";

/// A call's request as a client sends it: `message`, the metadata above from
/// the current request (if any), `deadline` as its timeout, and the
/// `authorization` value when there is a token.
pub(crate) fn outgoing<T>(
    message: T,
    deadline: Duration,
    authorization: Option<&AsciiMetadataValue>,
) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    let metadata = request.metadata_mut();
    metadata.insert(CONTRACT_KEY, MetadataValue::from_static(CONTRACT_VERSION));
    if let Some(value) = authorization {
        metadata.insert(AUTHORIZATION_KEY, value.clone());
    }
    if let Some(id) = RequestContext::current_request_id()
        && let Ok(value) = MetadataValue::try_from(&*id)
    {
        metadata.insert(REQUEST_ID_KEY, value);
    }
    if let Some(trace) = RequestContext::current_trace()
        && let Ok(value) = MetadataValue::try_from(trace.to_string())
    {
        metadata.insert(TRACEPARENT_KEY, value);
    }
    request
}

/// Answers `request` by `handle`, run as a request of this process: with the
/// caller's request id (or a new one) as the current [`RequestContext`], inside
/// a `grpc.request` span that continues the caller's trace. A caller of another
/// contract version is refused before `handle` runs.
pub(crate) async fn serve<T, R, F>(
    method: &'static str,
    request: Request<T>,
    handle: impl FnOnce(T) -> F,
) -> Result<Response<R>, Status>
where
    F: Future<Output = Result<R, Status>>,
{
    check_contract(request.metadata())?;
    let metadata = request.metadata();
    let request_id = RequestContext::accept_request_id(text(metadata, REQUEST_ID_KEY));
    let parent = text(metadata, TRACEPARENT_KEY).and_then(TraceContext::parse);
    let span = tracing::info_span!("grpc.request", rpc.method = method, request_id = %request_id);
    let context = match agora_platform::telemetry::continue_trace(&span, parent) {
        Some(own) => RequestContext::with_trace(request_id, parent, own),
        None => RequestContext::new(request_id, parent),
    };
    let outcome = context
        .scope(handle(request.into_inner()).instrument(span))
        .await;
    outcome.map(Response::new)
}

fn check_contract(metadata: &MetadataMap) -> Result<(), Status> {
    match text(metadata, CONTRACT_KEY) {
        Some(CONTRACT_VERSION) => Ok(()),
        Some(other) => Err(Status::failed_precondition(format!(
            "this server speaks agora contract {CONTRACT_VERSION}, the caller {other}"
        ))),
        None => Err(Status::failed_precondition(format!(
            "the `{CONTRACT_KEY}` metadata is missing (this server speaks agora contract {CONTRACT_VERSION})"
        ))),
    }
}

fn text<'a>(metadata: &'a MetadataMap, key: &str) -> Option<&'a str> {
    metadata.get(key).and_then(|v| v.to_str().ok())
}

/// Checks the shared token of each call (`services.token`): a tonic
/// interceptor in front of every port service.
#[derive(Clone)]
pub(crate) struct TokenCheck {
    expected: Option<Arc<[u8]>>,
}

impl TokenCheck {
    pub(crate) fn new(token: Option<&str>) -> TokenCheck {
        TokenCheck {
            expected: token.map(|t| Arc::from(format!("Bearer {t}").into_bytes())),
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get(AUTHORIZATION_KEY)
            .map_or(&[][..], |v| v.as_bytes());
        if equal_in_constant_time(given, expected) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "this call needs the services' token",
            ))
        }
    }
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell how much of a guess was right.
fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
