//! Extractors that answer malformed input with a documented error code.

use agora_kernel::{ApiError, ErrorCode};
use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use http::StatusCode;
use http::request::Parts;
use serde::de::DeserializeOwned;

/// A JSON body. Malformed JSON → `REQUEST_MALFORMED_JSON` (400); well-formed but of
/// the wrong shape → `REQUEST_INVALID_BODY` (422); missing content type →
/// `REQUEST_UNSUPPORTED_MEDIA_TYPE` (415); too large → `REQUEST_BODY_TOO_LARGE` (413).
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<T, S> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(AppJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::new(
            ErrorCode::RequestInvalidBody,
            strip_axum_prefix(&e.body_text()),
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::new(
            ErrorCode::RequestMalformedJson,
            strip_axum_prefix(&e.body_text()),
        ),
        JsonRejection::MissingJsonContentType(_) => {
            ApiError::from_code(ErrorCode::RequestUnsupportedMediaType)
        }
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::from_code(ErrorCode::RequestBodyTooLarge)
        }
        other => ApiError::new(
            ErrorCode::RequestMalformedJson,
            strip_axum_prefix(&other.body_text()),
        ),
    }
}

/// axum prefixes every message with what failed ("Failed to deserialize the JSON
/// body into the target type: "); the code already says that.
///
/// The rest quotes the offending value, which can be as long as the body: it is
/// cut to [`MAX_MESSAGE_CHARS`].
fn strip_axum_prefix(text: &str) -> String {
    let rest = text
        .split_once(": ")
        .filter(|(head, _)| head.starts_with("Failed to"))
        .map_or(text, |(_, rest)| rest);
    if rest.chars().count() <= MAX_MESSAGE_CHARS {
        return rest.to_string();
    }
    let mut cut: String = rest.chars().take(MAX_MESSAGE_CHARS).collect();
    cut.push('…');
    cut
}

/// The longest message built from a rejection.
const MAX_MESSAGE_CHARS: usize = 240;

/// A query string. Malformed, out-of-range or unknown parameters →
/// `REQUEST_INVALID_QUERY` (400).
#[derive(Debug, Clone, Copy, Default)]
pub struct AppQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for AppQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(AppQuery(value)),
            Err(rejection) => Err(query_rejection(&rejection)),
        }
    }
}

fn query_rejection(rejection: &QueryRejection) -> ApiError {
    ApiError::new(
        ErrorCode::RequestInvalidQuery,
        strip_axum_prefix(&rejection.body_text()),
    )
}

/// Path parameters. An id of the wrong kind or shape → `REQUEST_INVALID_PATH` (400).
#[derive(Debug, Clone, Copy, Default)]
pub struct AppPath<T>(pub T);

impl<T, S> FromRequestParts<S> for AppPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(AppPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(ApiError::new(
                ErrorCode::RequestInvalidPath,
                strip_axum_prefix(&e.body_text()),
            )),
            Err(other) => Err(ApiError::internal(strip_axum_prefix(&other.body_text()))),
        }
    }
}

/// The `Idempotency-Key` header of a request that changes money or stock: 1 to
/// 255 printable ASCII characters. Missing → `REQUEST_IDEMPOTENCY_KEY_MISSING`
/// (400); empty, too long or not printable → `REQUEST_IDEMPOTENCY_KEY_INVALID`
/// (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(pub String);

/// The longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

impl IdempotencyKey {
    /// Checks a header value.
    pub fn parse(raw: Option<&[u8]>) -> Result<IdempotencyKey, ApiError> {
        let raw =
            raw.ok_or_else(|| ApiError::from_code(ErrorCode::RequestIdempotencyKeyMissing))?;
        if raw.is_empty()
            || raw.len() > MAX_IDEMPOTENCY_KEY
            || !raw.iter().all(|b| (0x20..0x7f).contains(b))
            || raw.iter().all(|b| *b == b' ')
        {
            return Err(ApiError::from_code(ErrorCode::RequestIdempotencyKeyInvalid));
        }
        Ok(IdempotencyKey(String::from_utf8_lossy(raw).into_owned()))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        IdempotencyKey::parse(
            parts
                .headers
                .get("idempotency-key")
                .map(http::HeaderValue::as_bytes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_checked() {
        assert_eq!(
            IdempotencyKey::parse(Some(b"abc-123")).map(|k| k.0).ok(),
            Some("abc-123".to_string())
        );
        let code = |raw: Option<&[u8]>| IdempotencyKey::parse(raw).map_err(|e| e.code());
        assert_eq!(code(None), Err(ErrorCode::RequestIdempotencyKeyMissing));
        for bad in [
            &b""[..],
            b"   ",
            b"tab\there",
            "caf\u{e9}".as_bytes(),
            &[b'k'; 256],
        ] {
            assert_eq!(
                code(Some(bad)),
                Err(ErrorCode::RequestIdempotencyKeyInvalid),
                "{bad:?}"
            );
        }
        assert!(code(Some(&[b'k'; 255])).is_ok());
    }

    #[test]
    fn axum_prefixes_are_removed_from_messages() {
        assert_eq!(
            strip_axum_prefix("Failed to deserialize query string: unknown field `x`"),
            "unknown field `x`"
        );
        assert_eq!(strip_axum_prefix("name: too long"), "name: too long");
        let long = format!("Failed to parse: {}", "é".repeat(1000));
        assert_eq!(
            strip_axum_prefix(&long).chars().count(),
            MAX_MESSAGE_CHARS + 1
        );
    }
}
