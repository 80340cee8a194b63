//! The kernel: Agora's shared vocabulary, with no I/O.
//!
//! Every other crate speaks in these types, so they are small, strict and stable.
//!
//! # Layout
//! - [`id`]: typed, prefixed identifiers over UUIDv7 (`prod_…`, `cat_…`, `usr_…`, `key_…`).
//! - [`access`]: roles, the permissions they grant, and the authenticated [`Principal`].
//! - [`money`]: [`Money`] in integer minor units with an ISO 4217 [`Currency`]. No floats.
//! - [`time`]: [`Timestamp`] (epoch milliseconds, RFC 3339 on the wire) and the
//!   injectable [`Clock`].
//! - [`error`]: the table of public error codes ([`ErrorCode`]) and [`ApiError`].
//! - [`envelope`]: the response envelope every API answer is wrapped in, and the
//!   per-request context (request id, API version) it reads its `meta` from.
//! - [`pagination`]: opaque cursors and page limits for keyset pagination.
//! - [`validation`]: [`validation::Problems`], which collects every field error of a request.

pub mod access;
pub mod envelope;
pub mod error;
pub mod id;
pub mod money;
pub mod pagination;
pub mod time;
pub mod trace;
pub mod validation;

pub use access::{Permission, Permissions, Principal, Role, Subject};
pub use envelope::{ApiResponse, RequestContext};
pub use error::{ApiError, ErrorCode};
pub use id::{
    ApiKeyId, CategoryId, EventId, IdParseError, ImageId, OrderId, PaymentId, ProductId, SessionId,
    UserId,
};
pub use money::{Currency, Money, MoneyError};
pub use pagination::{Cursor, Limit, Page};
pub use time::{Clock, ManualClock, SystemClock, Timestamp};
pub use trace::TraceContext;
