//! The operators' routes under `/api/v1/admin`: the event log.

use agora_kernel::access::require::EventsRead;
use agora_kernel::pagination::Limit;
use agora_kernel::validation::Problems;
use agora_kernel::{ApiError, ApiResponse, Cursor, Timestamp};
use agora_platform::auth::Authorized;
use agora_platform::bus::{EventLog, LogFilter, LoggedEvent};
use agora_platform::db::database_failure;
use agora_platform::http::AppQuery;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;

/// The longest `kind` or `aggregate_id` a filter may name.
const MAX_FILTER_LEN: usize = 200;

/// The routes under `/api/v1`.
pub fn router(log: EventLog) -> Router {
    Router::new()
        .route("/admin/events", get(events))
        .with_state(log)
}

/// A page of the event log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events of this kind, e.g. `orders.order_confirmed`.
    kind: Option<String>,
    /// Only events about this entity (an order, payment or product id).
    aggregate_id: Option<String>,
    /// Only events that happened at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<Timestamp>,
    /// Only events that happened before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<Timestamp>,
    /// Only events at or after this offset.
    #[param(minimum = 0)]
    from_offset: Option<i64>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<Limit>,
    /// `meta.next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The event log, oldest first (`events:read`): every event the relays
/// published, with its offset.
#[utoipa::path(
    get, path = "/admin/events", tag = "admin",
    params(EventsQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of events; `meta.next_cursor` when there may be more.", body = inline(agora_kernel::envelope::Success<Vec<LoggedEvent>>)),
        (status = 400, description = "`REQUEST_INVALID_QUERY`, `REQUEST_INVALID_CURSOR`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`", body = agora_kernel::envelope::Failure),
    )
)]
async fn events(
    State(log): State<EventLog>,
    _staff: Authorized<EventsRead>,
    AppQuery(query): AppQuery<EventsQuery>,
) -> Result<ApiResponse<Vec<LoggedEvent>>, ApiError> {
    let after: Option<i64> = query.cursor.as_deref().map(Cursor::decode).transpose()?;
    let mut p = Problems::default();
    let kind = p.check("kind", bounded(query.kind));
    let aggregate_id = p.check("aggregate_id", bounded(query.aggregate_id));
    if let (Some(from), Some(to)) = (query.from, query.to)
        && from >= to
    {
        p.add("to", "must be later than `from`");
    }
    if query.from_offset.is_some_and(|o| o < 0) {
        p.add("from_offset", "must not be negative");
    }
    let filter = p.finish(|| {
        Some(LogFilter {
            kind: kind?,
            aggregate_id: aggregate_id?,
            from: query.from,
            to: query.to,
            from_offset: query.from_offset,
            to_offset: None,
        })
    })?;
    let limit = query.limit.unwrap_or_default().get();
    let page = log
        .page(&filter, after, limit)
        .await
        .map_err(|e| database_failure("events", &e))?;
    let next = (page.len() == limit as usize)
        .then(|| page.last().map(|e| Cursor::encode(&e.offset)))
        .flatten();
    Ok(ApiResponse::ok(page).with_next_cursor(next))
}

/// A filter value: absent, or 1 to 200 characters.
fn bounded(value: Option<String>) -> Result<Option<String>, String> {
    match value {
        Some(v) if v.is_empty() || v.len() > MAX_FILTER_LEN => {
            Err(format!("must be 1 to {MAX_FILTER_LEN} characters"))
        }
        v => Ok(v),
    }
}

/// The operators' part of the OpenAPI document (paths relative to `/api/v1`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(events),
    components(schemas(LoggedEvent)),
    tags((name = "admin", description = "Operations: the event log (staff)"))
)]
pub struct AdminApi;
