//! The response envelope and the per-request context it reads.
//!
//! Success: `{"success":true,"data":…,"meta":{"request_id":…,"api_version":"1"}}`;
//! failure: `{"success":false,"error":{…},"meta":{…}}`. The request id and API
//! version come from a task-local [`RequestContext`] that the HTTP middleware sets
//! for the lifetime of each request, so handlers never pass them around.

use std::sync::{Arc, OnceLock};

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode, header};

use crate::trace::TraceContext;

/// The API version this server speaks.
pub const API_VERSION: &str = "1";

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// What every part of a request's handling may need to know about the request.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The id that ties a response to its log lines: the caller's `X-Request-Id`
    /// when it sent a sane one, otherwise one we made.
    pub request_id: Arc<str>,
    /// The caller's trace context (its `traceparent`), if it sent one.
    parent: Option<TraceContext>,
    /// This request's own span in the trace: a child of `parent`, or the root
    /// of a new trace. Made when first asked for, so that requests that pass
    /// nothing on do not pay for the random ids.
    trace: OnceLock<TraceContext>,
}

impl RequestContext {
    /// The context of a request with this id, continuing the caller's trace
    /// when `parent` is given.
    pub fn new(request_id: Arc<str>, parent: Option<TraceContext>) -> RequestContext {
        RequestContext {
            request_id,
            parent,
            trace: OnceLock::new(),
        }
    }

    /// The context of a request with this id whose own span in the trace is
    /// `own` (made elsewhere: the exported span's), continuing `parent`.
    pub fn with_trace(
        request_id: Arc<str>,
        parent: Option<TraceContext>,
        own: TraceContext,
    ) -> RequestContext {
        RequestContext {
            request_id,
            parent,
            trace: OnceLock::from(own),
        }
    }

    /// The request id to use for a caller that sent `given`: kept when sane (1–128
    /// characters of `[A-Za-z0-9._:-]`), otherwise a new one (a time-ordered
    /// UUID). The same rule at every entry point (HTTP, gRPC).
    pub fn accept_request_id(given: Option<&str>) -> Arc<str> {
        let given = given.filter(|s| {
            (1..=128).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        });
        match given {
            Some(id) => Arc::from(id),
            None => {
                let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
                Arc::from(&*uuid::Uuid::now_v7().simple().encode_lower(&mut buf))
            }
        }
    }

    /// Runs `f` with this context as the current one.
    pub async fn scope<F: Future>(self, f: F) -> F::Output {
        CONTEXT.scope(self, f).await
    }

    /// The current request's id, if called inside a request (a consumer
    /// handling an event that has none runs with an empty one: `None`).
    pub fn current_request_id() -> Option<Arc<str>> {
        CONTEXT
            .try_with(|c| c.request_id.clone())
            .ok()
            .filter(|id| !id.is_empty())
    }

    /// This request's span in its trace.
    pub fn trace(&self) -> TraceContext {
        *self.trace.get_or_init(|| {
            self.parent
                .as_ref()
                .map_or_else(TraceContext::root, TraceContext::child)
        })
    }

    /// The current request's trace context (what goes on as `traceparent`),
    /// if called inside a request.
    pub fn current_trace() -> Option<TraceContext> {
        CONTEXT.try_with(RequestContext::trace).ok()
    }
}

#[derive(serde::Serialize)]
struct Meta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    api_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<&'a str>,
}

/// What an envelope carries: `data` on success, `error` on failure.
pub(crate) enum Payload<'a, T> {
    /// A successful answer's payload.
    Data(&'a T),
    /// A failure's description.
    Error(&'a T),
}

#[derive(serde::Serialize)]
struct Envelope<'a, T: serde::Serialize> {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a T>,
    meta: Meta<'a>,
}

/// Written when our own types fail to serialize (a bug): says so without detail.
const SERIALIZATION_FAILED: &str = r#"{"success":false,"error":{"code":"INTERNAL_ERROR","message":"An unexpected fault on the server."},"meta":{"api_version":"1"}}"#;

/// Serializes the envelope around `payload`.
pub(crate) fn render<T: serde::Serialize>(
    status: StatusCode,
    payload: Payload<'_, T>,
    next_cursor: Option<&str>,
) -> Response {
    let request_id = RequestContext::current_request_id();
    let (data, error) = match payload {
        Payload::Data(d) => (Some(d), None),
        Payload::Error(e) => (None, Some(e)),
    };
    let envelope = Envelope {
        success: data.is_some(),
        data,
        error,
        meta: Meta {
            request_id: request_id.as_deref(),
            api_version: API_VERSION,
            next_cursor,
        },
    };
    let mut buf = Vec::with_capacity(256);
    let written = serde_json::to_writer(&mut buf, &envelope).map(|()| buf);
    json_response(status, written)
}

/// A JSON response with `body`, or the bare internal error when our own types
/// failed to serialize (a bug).
fn json_response(status: StatusCode, body: serde_json::Result<Vec<u8>>) -> Response {
    let (status, body) = match body {
        Ok(bytes) => (status, Body::from(bytes)),
        Err(e) => {
            tracing::error!(error = %e, "response serialization failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Body::from(SERIALIZATION_FAILED),
            )
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// 200 OK with `data` already serialized: the envelope is written around the
/// bytes as they are (the fields in the order [`ApiResponse`] writes them). For
/// representations rendered once and served many times; `data` must be the
/// JSON that serializing the value would give.
pub fn ok_prerendered(data: &[u8], next_cursor: Option<&str>) -> Response {
    let request_id = RequestContext::current_request_id();
    let meta = Meta {
        request_id: request_id.as_deref(),
        api_version: API_VERSION,
        next_cursor,
    };
    let mut buf = Vec::with_capacity(data.len() + 128);
    buf.extend_from_slice(br#"{"success":true,"data":"#);
    buf.extend_from_slice(data);
    buf.extend_from_slice(br#","meta":"#);
    let written = serde_json::to_writer(&mut buf, &meta).map(|()| {
        buf.push(b'}');
        buf
    });
    json_response(StatusCode::OK, written)
}

/// A successful API answer: `data` wrapped in the envelope.
#[derive(Debug)]
pub struct ApiResponse<T> {
    status: StatusCode,
    data: T,
    next_cursor: Option<String>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl<T: serde::Serialize> ApiResponse<T> {
    /// 200 OK with `data`.
    pub fn ok(data: T) -> Self {
        Self {
            status: StatusCode::OK,
            data,
            next_cursor: None,
            headers: Vec::new(),
        }
    }

    /// 201 Created with `data`, and `Location` pointing at the new resource.
    pub fn created(data: T, location: &str) -> Self {
        let mut r = Self::ok(data);
        r.status = StatusCode::CREATED;
        if let Ok(v) = HeaderValue::from_str(location) {
            r.headers.push((header::LOCATION, v));
        }
        r
    }

    /// Adds a response header (a value that is not a valid header is skipped).
    pub fn with_header(mut self, name: header::HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.push((name, v));
        }
        self
    }

    /// Sets `meta.next_cursor` (a list response with more pages).
    pub fn with_next_cursor(mut self, cursor: Option<String>) -> Self {
        self.next_cursor = cursor;
        self
    }
}

impl<T: serde::Serialize> IntoResponse for ApiResponse<T> {
    fn into_response(self) -> Response {
        let mut response = render(
            self.status,
            Payload::Data(&self.data),
            self.next_cursor.as_deref(),
        );
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// The success envelope, as the OpenAPI document describes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Documentation only: responses are rendered by `ApiResponse`.
pub struct Success<T> {
    /// Always `true`.
    success: bool,
    /// The payload.
    data: T,
    /// About the request.
    meta: MetaDoc,
}

/// The failure envelope, as the OpenAPI document describes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // Documentation only: errors are rendered by `ApiError`.
pub struct Failure {
    /// Always `false`.
    success: bool,
    /// What went wrong.
    error: ErrorDoc,
    /// About the request.
    meta: MetaDoc,
}

/// `meta`, as the OpenAPI document describes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct MetaDoc {
    /// Quote it to find the request in the logs.
    request_id: String,
    /// `1`.
    api_version: String,
    /// On list responses with more pages: send it back as `cursor`.
    next_cursor: Option<String>,
}

/// `error`, as the OpenAPI document describes it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDoc {
    /// A code from `GET /api/v1/errors`.
    #[schema(example = "CATALOG_PRODUCT_NOT_FOUND")]
    code: String,
    /// For humans.
    message: String,
    /// Structured context, such as `fields` for `VALIDATION_FAILED`.
    #[schema(value_type = Option<Object>)]
    details: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ApiError, ErrorCode};

    async fn body_of(response: Response) -> String {
        use http_body_util::BodyExt;
        let bytes = response.into_body().collect().await.map(|c| c.to_bytes());
        String::from_utf8(bytes.map(|b| b.to_vec()).unwrap_or_default()).unwrap_or_default()
    }

    #[tokio::test]
    async fn success_and_failure_have_their_documented_shapes() {
        let context = RequestContext::new(Arc::from("req-1"), None);
        let (ok, failed) = context
            .scope(async {
                let ok = ApiResponse::ok(serde_json::json!({"n": 1}))
                    .with_next_cursor(Some("c".into()))
                    .into_response();
                let failed = ApiError::new(ErrorCode::RouteNotFound, "nope").into_response();
                (ok, failed)
            })
            .await;
        assert_eq!(failed.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            body_of(ok).await,
            r#"{"success":true,"data":{"n":1},"meta":{"request_id":"req-1","api_version":"1","next_cursor":"c"}}"#
        );
        assert_eq!(
            body_of(failed).await,
            r#"{"success":false,"error":{"code":"ROUTE_NOT_FOUND","message":"nope"},"meta":{"request_id":"req-1","api_version":"1"}}"#
        );
    }

    #[tokio::test]
    async fn a_prerendered_answer_is_byte_for_byte_the_serialized_one() {
        let data = serde_json::json!({"id": "prod_1", "tags": ["a", "b"], "price": {"amount": 5}});
        let bytes = serde_json::to_vec(&data).expect("JSON");
        for cursor in [None, Some("next")] {
            let context = RequestContext::new(Arc::from("req-2"), None);
            let (typed, raw) = context
                .scope(async {
                    let typed = ApiResponse::ok(&data)
                        .with_next_cursor(cursor.map(String::from))
                        .into_response();
                    (typed, ok_prerendered(&bytes, cursor))
                })
                .await;
            assert_eq!(raw.status(), StatusCode::OK);
            assert_eq!(raw.headers()[header::CONTENT_TYPE], "application/json");
            assert_eq!(body_of(raw).await, body_of(typed).await);
        }
    }
}
