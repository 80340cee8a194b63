//! Who is calling.
//!
//! Until the identity module lands, there are two kinds of caller: anonymous, and
//! staff holding the bootstrap token from configuration (`auth.bootstrap_token`).
//! Handlers take a [`Caller`] and ask it for the permission they need; the edge
//! middleware puts the [`Authenticator`] into every request's extensions.

use std::sync::Arc;

use agora_kernel::{ApiError, ErrorCode};
use axum::extract::FromRequestParts;
use http::header::AUTHORIZATION;
use http::request::Parts;

use crate::config::AuthConfig;

/// Checks credentials. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    bootstrap_token: Option<Arc<str>>,
}

impl Authenticator {
    /// An authenticator for the configured credentials.
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            bootstrap_token: config
                .bootstrap_token
                .as_ref()
                .map(|t| Arc::from(t.expose())),
        }
    }

    /// Who sent `authorization` (the header's value, if any).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, ApiError> {
        let Some(value) = authorization else {
            return Ok(Caller::Anonymous);
        };
        let invalid = || ApiError::from_code(ErrorCode::AuthInvalidToken);
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        let token = match value.split_at_checked(7) {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token,
            _ => return Err(invalid()),
        };
        match &self.bootstrap_token {
            Some(expected) if constant_time_eq::constant_time_eq(token, expected.as_bytes()) => {
                Ok(Caller::Staff)
            }
            _ => Err(invalid()),
        }
    }
}

/// The caller of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No credentials.
    Anonymous,
    /// Staff, through the bootstrap token.
    Staff,
}

impl Caller {
    /// Whether the caller may see and change what only staff may.
    pub fn is_staff(self) -> bool {
        matches!(self, Caller::Staff)
    }

    /// Refuses callers that are not staff: `AUTH_REQUIRED` for anonymous ones.
    pub fn require_staff(self) -> Result<(), ApiError> {
        match self {
            Caller::Staff => Ok(()),
            Caller::Anonymous => Err(ApiError::from_code(ErrorCode::AuthRequired)),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let authenticator = parts
            .extensions
            .get::<Authenticator>()
            .ok_or_else(|| ApiError::internal("no Authenticator in the request extensions"))?;
        authenticator.authenticate(parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes()))
    }
}

/// A caller proven to be staff. As the first extractor of a handler, it refuses
/// everyone else before the path or body is even parsed, so an anonymous caller
/// learns nothing about the input rules.
#[derive(Debug, Clone, Copy)]
pub struct Staff;

impl<S: Send + Sync> FromRequestParts<S> for Staff {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Caller::from_request_parts(parts, state)
            .await?
            .require_staff()?;
        Ok(Staff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn with_token() -> Authenticator {
        Authenticator::new(&AuthConfig {
            bootstrap_token: Some(Secret::new("0123456789abcdef-staff")),
        })
    }

    #[test]
    fn no_header_is_anonymous() {
        assert_eq!(
            with_token().authenticate(None).ok(),
            Some(Caller::Anonymous)
        );
    }

    #[test]
    fn the_bootstrap_token_is_staff() {
        let c = with_token().authenticate(Some(b"Bearer 0123456789abcdef-staff"));
        assert_eq!(c.ok(), Some(Caller::Staff));
        let c = with_token().authenticate(Some(b"bEaReR 0123456789abcdef-staff"));
        assert_eq!(c.ok(), Some(Caller::Staff));
        let c = with_token().authenticate(Some(b"bEaReR 0123456789abcdef-staff"));
        assert_eq!(c.ok(), Some(Caller::Staff));
    }

    #[test]
    fn a_wrong_or_malformed_credential_is_refused() {
        for bad in [
            &b"Bearer nope"[..],
            b"Basic abc",
            b"0123456789abcdef-staff",
            b"Bearer ",
        ] {
            let err = with_token().authenticate(Some(bad)).err().map(|e| e.code());
            assert_eq!(err, Some(ErrorCode::AuthInvalidToken));
        }
    }

    #[test]
    fn without_a_configured_token_nobody_is_staff() {
        let err = Authenticator::default()
            .authenticate(Some(b"Bearer anything-at-all-long"))
            .err()
            .map(|e| e.code());
        assert_eq!(err, Some(ErrorCode::AuthInvalidToken));
        assert_eq!(
            Caller::Anonymous.require_staff().err().map(|e| e.code()),
            Some(ErrorCode::AuthRequired)
        );
    }
}
