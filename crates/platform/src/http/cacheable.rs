//! Public reads that caches may keep: rendered once into bytes with their
//! `ETag`, answered from those bytes, and `304 Not Modified` when the client
//! already holds them (`If-None-Match`).
//!
//! The stored form is the tag, the list's next cursor and the serialized `data`,
//! one after the other (`[etag: 32 hex][cursor length: u32 LE][cursor][data]`);
//! answering writes the envelope around `data` as it is
//! ([`agora_kernel::envelope::ok_prerendered`]), with no JSON parsed or
//! serialized again. The `ETag` is the first 128 bits of the SHA-256 of `data`
//! and the cursor, so every node gives the same representation the same tag.
//! Responses say `Cache-Control: public, no-cache`: anyone may store them, but
//! must revalidate before each use, so a change is never hidden behind a
//! max-age.

use agora_kernel::envelope::ok_prerendered;
use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// `Cache-Control` of a public, revalidated representation.
pub const PUBLIC: &str = "public, no-cache";
/// `Cache-Control` of an answer that depends on who asked (staff views).
pub const PRIVATE: &str = "private, no-store";

/// Hex digits of the stored tag.
const ETAG_LEN: usize = 32;
/// Where the cursor starts.
const CURSOR_AT: usize = ETAG_LEN + 4;

/// Renders `data` (and a list's next cursor) into the stored form.
pub fn render<T: Serialize>(
    data: &T,
    next_cursor: Option<&str>,
) -> Result<Bytes, serde_json::Error> {
    let json = serde_json::to_vec(data)?;
    let cursor = next_cursor.unwrap_or_default().as_bytes();
    let cursor_len = u32::try_from(cursor.len()).map_err(serde::ser::Error::custom)?;
    let mut hash = Sha256::new();
    hash.update(&json);
    hash.update([0]);
    hash.update(cursor);
    let digest = hash.finalize();
    let mut stored = Vec::with_capacity(CURSOR_AT + cursor.len() + json.len());
    stored.extend_from_slice(hex(&digest[..ETAG_LEN / 2]).as_bytes());
    stored.extend_from_slice(&cursor_len.to_le_bytes());
    stored.extend_from_slice(cursor);
    stored.extend_from_slice(&json);
    Ok(Bytes::from(stored))
}

/// A stored form taken apart: tag, cursor, data.
fn parts(stored: &[u8]) -> Option<(&str, Option<&str>, &[u8])> {
    let etag = std::str::from_utf8(stored.get(..ETAG_LEN)?).ok()?;
    let len = u32::from_le_bytes(stored.get(ETAG_LEN..CURSOR_AT)?.try_into().ok()?);
    let data_at = CURSOR_AT.checked_add(usize::try_from(len).ok()?)?;
    let cursor = std::str::from_utf8(stored.get(CURSOR_AT..data_at)?).ok()?;
    let data = stored.get(data_at..)?;
    Some((etag, (!cursor.is_empty()).then_some(cursor), data))
}

/// The answer to a request with `headers` for the `stored` representation:
/// `304` when `If-None-Match` names its tag, else `200` with the envelope.
pub fn respond(headers: &HeaderMap, stored: &[u8]) -> Response {
    let Some((etag, next_cursor, data)) = parts(stored) else {
        // Only `render` writes these bytes, so this is a fault of ours.
        tracing::error!("a cached representation is malformed");
        return agora_kernel::ApiError::from_code(agora_kernel::ErrorCode::InternalError)
            .into_response();
    };
    let quoted = format!("\"{etag}\"");
    let etag = HeaderValue::from_str(&quoted).ok();
    let mut response = if etag.is_some() && matches(headers, &quoted) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        ok_prerendered(data, next_cursor)
    };
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(PUBLIC));
    response
}

/// Whether `If-None-Match` in `headers` names `etag` (weak tags compare by
/// their opaque part, as RFC 9110 asks for `If-None-Match`; `*` names any).
/// Whether `If-None-Match` in `headers` names `etag` (quoted) or `*`: the
/// client holds the current representation (answer 304).
pub fn matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == etag)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_if_none_match(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(value).expect("a header value"),
        );
        headers
    }

    async fn body(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a body");
        serde_json::from_slice(&bytes).expect("JSON")
    }

    #[tokio::test]
    async fn a_stored_representation_is_answered_in_the_envelope_with_its_etag() {
        let stored =
            render(&serde_json::json!({"id": "prod_1", "n": 2}), Some("next")).expect("rendered");
        let response = respond(&HeaderMap::new(), &stored);
        assert_eq!(response.status(), StatusCode::OK);
        let etag = response.headers()[header::ETAG]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(etag.starts_with('"') && etag.len() == 34, "{etag}");
        assert_eq!(response.headers()[header::CACHE_CONTROL], PUBLIC);
        let body = body(response).await;
        assert_eq!(body["success"], true);
        assert_eq!(body["data"], serde_json::json!({"id": "prod_1", "n": 2}));
        assert_eq!(body["meta"]["next_cursor"], "next");
    }

    #[tokio::test]
    async fn a_matching_if_none_match_gets_304_without_a_body() {
        let stored = render(&vec![1, 2, 3], None).expect("rendered");
        let etag = respond(&HeaderMap::new(), &stored).headers()[header::ETAG]
            .to_str()
            .expect("ascii")
            .to_string();
        for header in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"other\", {etag}"),
            "*".into(),
        ] {
            let response = respond(&with_if_none_match(&header), &stored);
            assert_eq!(response.status(), StatusCode::NOT_MODIFIED, "{header}");
            assert_eq!(response.headers()[header::ETAG], etag.as_str());
            let bytes = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .expect("body");
            assert!(bytes.is_empty());
        }
        let other = respond(&with_if_none_match("\"other\""), &stored);
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[test]
    fn a_truncated_stored_form_is_an_error_not_a_panic() {
        let stored = render(&serde_json::json!({"a": 1}), Some("cursor")).expect("rendered");
        for cut in 0..CURSOR_AT + 6 {
            let response = respond(&HeaderMap::new(), &stored[..cut]);
            assert_eq!(
                response.status(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn the_etag_changes_with_the_data_and_the_cursor_and_only_with_them() {
        let tag = |data: &serde_json::Value, cursor: Option<&str>| {
            let stored = render(data, cursor).expect("rendered");
            respond(&HeaderMap::new(), &stored).headers()[header::ETAG].clone()
        };
        let a = serde_json::json!({"price": 100});
        let b = serde_json::json!({"price": 101});
        assert_eq!(tag(&a, None), tag(&a, None));
        assert_ne!(tag(&a, None), tag(&b, None));
        assert_ne!(tag(&a, None), tag(&a, Some("c")));
    }
}
