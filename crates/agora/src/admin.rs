//! The operators' routes under `/api/v1/admin`: the event log, replays to a
//! consumer, and the dead letters.

use std::sync::Arc;

use agora_kernel::access::require::{EventsManage, EventsRead};
use agora_kernel::pagination::Limit;
use agora_kernel::validation::Problems;
use agora_kernel::{ApiError, ApiResponse, Cursor, ErrorCode, Timestamp};
use agora_platform::auth::Authorized;
use agora_platform::bus::{
    Bus, DeadLetter, DeliverError, EventLog, LogFilter, LoggedEvent, Redrive,
};
use agora_platform::db::database_failure;
use agora_platform::http::{AppJson, AppQuery};
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

/// The longest `kind` or `aggregate_id` a filter may name.
const MAX_FILTER_LEN: usize = 200;

/// The most events one replay request delivers.
const MAX_REPLAY: u32 = 1000;
/// The most dead letters one re-drive request names.
const MAX_REDRIVE: usize = 100;
/// The most failures a replay's answer lists.
const MAX_LISTED_FAILURES: usize = 20;
/// How long one replay request delivers before it answers with `next_offset`
/// (well within the default 15 s request timeout).
const REPLAY_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// What the operators' routes work on.
#[derive(Clone)]
pub struct Operations {
    /// The event log.
    pub log: EventLog,
    /// The bus, for replays and dead letters.
    pub bus: Arc<dyn Bus>,
}

/// The routes under `/api/v1`.
pub fn router(operations: Operations) -> Router {
    Router::new()
        .route("/admin/events", get(events))
        .route("/admin/events/replay", post(replay))
        .route("/admin/dead-letters", get(dead_letters).post(redrive))
        .with_state(operations)
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
    State(Operations { log, .. }): State<Operations>,
    _staff: Authorized<EventsRead>,
    AppQuery(query): AppQuery<EventsQuery>,
) -> Result<ApiResponse<Vec<LoggedEvent>>, ApiError> {
    let after: Option<i64> = query.cursor.as_deref().map(Cursor::decode).transpose()?;
    let mut p = Problems::default();
    let filter = checked(
        &mut p,
        LogFilter {
            kind: query.kind,
            aggregate_id: query.aggregate_id,
            from: query.from,
            to: query.to,
            from_offset: query.from_offset,
            to_offset: None,
        },
    );
    let filter = p.finish(|| filter)?;
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

/// Which logged events to hand to one consumer again.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The consumer's name, e.g. `orders.payment_events`.
    #[schema(example = "orders.payment_events")]
    consumer: String,
    /// Only events of this kind.
    kind: Option<String>,
    /// Only events about this entity.
    aggregate_id: Option<String>,
    /// Only events that happened at or after this time.
    from: Option<Timestamp>,
    /// Only events that happened before this time.
    to: Option<Timestamp>,
    /// Only events at or after this offset.
    from_offset: Option<i64>,
    /// Only events at or before this offset.
    to_offset: Option<i64>,
    /// At most this many events, 1 to 1,000 (default 100); `next_offset` says
    /// where to go on (also when the request's 5 s budget ran out first).
    limit: Option<u32>,
}

/// A delivery that failed during a replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayFailure {
    /// The event's offset.
    offset: i64,
    /// What went wrong.
    error: String,
}

/// What a replay did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayReport {
    /// Events handed to the consumer (in-process: handled; on NATS: queued
    /// for it). Its inbox skips those it had handled already.
    replayed: u32,
    /// Events of kinds the consumer does not take.
    skipped: u32,
    /// Deliveries that failed (at most 20 listed; `failed_count` counts all).
    failed: Vec<ReplayFailure>,
    /// Every failed delivery.
    failed_count: u32,
    /// Where a next request goes on (`from_offset`), when the limit was reached.
    next_offset: Option<i64>,
}

/// Replay logged events to one consumer (`events:manage`), oldest first: for a
/// consumer whose effects were lost, or one added after the events. Its inbox
/// skips events it has handled, so replaying twice changes nothing.
#[utoipa::path(
    post, path = "/admin/events/replay", tag = "admin",
    request_body = ReplayRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "What was replayed.", body = inline(agora_kernel::envelope::Success<ReplayReport>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 404, description = "`EVENTS_UNKNOWN_CONSUMER`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`, `REQUEST_INVALID_BODY`", body = agora_kernel::envelope::Failure),
    )
)]
async fn replay(
    State(Operations { log, bus }): State<Operations>,
    _admin: Authorized<EventsManage>,
    AppJson(body): AppJson<ReplayRequest>,
) -> Result<ApiResponse<ReplayReport>, ApiError> {
    let mut p = Problems::default();
    let consumer = p.check("consumer", bounded(Some(body.consumer))).flatten();
    let filter = checked(
        &mut p,
        LogFilter {
            kind: body.kind,
            aggregate_id: body.aggregate_id,
            from: body.from,
            to: body.to,
            from_offset: body.from_offset,
            to_offset: body.to_offset,
        },
    );
    let limit = body.limit.unwrap_or(100);
    if !(1..=MAX_REPLAY).contains(&limit) {
        p.add("limit", format!("must be between 1 and {MAX_REPLAY}"));
    }
    let (consumer, filter) = p.finish(|| Some((consumer?, filter?)))?;
    match bus.has_consumer(&consumer).await {
        Ok(true) => {}
        Ok(false) => {
            return Err(ApiError::from_code(ErrorCode::EventsUnknownConsumer)
                .with_details(serde_json::json!({ "consumer": consumer })));
        }
        Err(e) => return Err(bus_down(anyhow::Error::from(e))),
    }
    let events = log
        .page(&filter, None, limit)
        .await
        .map_err(|e| database_failure("events", &e))?;
    let mut report = ReplayReport {
        replayed: 0,
        skipped: 0,
        failed: Vec::new(),
        failed_count: 0,
        next_offset: None,
    };
    let started = std::time::Instant::now();
    for logged in &events {
        if started.elapsed() > REPLAY_BUDGET {
            report.next_offset = Some(logged.offset);
            break;
        }
        match bus.deliver_to(&consumer, &logged.event()).await {
            Ok(()) => report.replayed += 1,
            Err(DeliverError::KindNotSubscribed { .. }) => report.skipped += 1,
            Err(DeliverError::UnknownConsumer(_)) => {
                return Err(ApiError::from_code(ErrorCode::EventsUnknownConsumer)
                    .with_details(serde_json::json!({ "consumer": consumer })));
            }
            Err(DeliverError::Failed(error)) => {
                report.failed_count += 1;
                if report.failed.len() < MAX_LISTED_FAILURES {
                    report.failed.push(ReplayFailure {
                        offset: logged.offset,
                        error,
                    });
                }
            }
        }
    }
    if report.next_offset.is_none() && events.len() == limit as usize {
        report.next_offset = events.last().map(|e| e.offset + 1);
    }
    tracing::info!(
        consumer,
        replayed = report.replayed,
        failed = report.failed_count,
        "events replayed"
    );
    Ok(ApiResponse::ok(report))
}

/// A page of dead letters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeadLettersQuery {
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<Limit>,
    /// `meta.next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Messages consumers gave up on, oldest first (`events:read`).
#[utoipa::path(
    get, path = "/admin/dead-letters", tag = "admin",
    params(DeadLettersQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of dead letters; `meta.next_cursor` when there may be more.", body = inline(agora_kernel::envelope::Success<Vec<DeadLetter>>)),
        (status = 400, description = "`REQUEST_INVALID_QUERY`, `REQUEST_INVALID_CURSOR`", body = agora_kernel::envelope::Failure),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 503, description = "`SERVICE_NOT_READY`: the bus does not answer", body = agora_kernel::envelope::Failure),
    )
)]
async fn dead_letters(
    State(Operations { bus, .. }): State<Operations>,
    _staff: Authorized<EventsRead>,
    AppQuery(query): AppQuery<DeadLettersQuery>,
) -> Result<ApiResponse<Vec<DeadLetter>>, ApiError> {
    let after: Option<u64> = query.cursor.as_deref().map(Cursor::decode).transpose()?;
    let limit = query.limit.unwrap_or_default().get() as usize;
    let page = bus.dead_letters(after, limit).await.map_err(bus_down)?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|d| Cursor::encode(&d.id)))
        .flatten();
    Ok(ApiResponse::ok(page).with_next_cursor(next))
}

/// Dead letters to deliver again.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    /// Their ids, 1 to 100.
    ids: Vec<u64>,
}

/// What became of one dead letter.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RedriveOutcome {
    /// The dead letter.
    id: u64,
    /// `redriven` (handled, or on NATS queued for its consumer; it left the
    /// list), `not_found`, or `failed` (it stays, with `error`).
    #[schema(example = "redriven")]
    outcome: &'static str,
    /// Why it failed.
    error: Option<String>,
}

/// Deliver dead letters to their consumers again (`events:manage`), once what
/// made them fail is fixed.
#[utoipa::path(
    post, path = "/admin/dead-letters", tag = "admin",
    request_body = RedriveRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One outcome per id, in order.", body = inline(agora_kernel::envelope::Success<Vec<RedriveOutcome>>)),
        (status = 403, description = "`AUTH_FORBIDDEN`", body = agora_kernel::envelope::Failure),
        (status = 422, description = "`VALIDATION_FAILED`, `REQUEST_INVALID_BODY`", body = agora_kernel::envelope::Failure),
        (status = 503, description = "`SERVICE_NOT_READY`: the bus does not answer", body = agora_kernel::envelope::Failure),
    )
)]
async fn redrive(
    State(Operations { bus, .. }): State<Operations>,
    _admin: Authorized<EventsManage>,
    AppJson(body): AppJson<RedriveRequest>,
) -> Result<ApiResponse<Vec<RedriveOutcome>>, ApiError> {
    if body.ids.is_empty() || body.ids.len() > MAX_REDRIVE {
        return Err(ApiError::validation(vec![
            agora_kernel::error::FieldError::new(
                "ids",
                format!("must name 1 to {MAX_REDRIVE} dead letters"),
            ),
        ]));
    }
    let mut outcomes = Vec::with_capacity(body.ids.len());
    for id in body.ids {
        let (outcome, error) = match bus.redrive(id).await {
            Ok(Redrive::Redriven) => ("redriven", None),
            Ok(Redrive::NotFound) => ("not_found", None),
            Ok(Redrive::Failed(error)) => ("failed", Some(error)),
            Err(e) => {
                tracing::warn!(id, error = %format!("{e:#}"), "re-driving a dead letter failed");
                ("failed", Some("the bus did not answer".to_string()))
            }
        };
        outcomes.push(RedriveOutcome { id, outcome, error });
    }
    Ok(ApiResponse::ok(outcomes))
}

/// The bus (or the database behind the in-process one) did not answer.
fn bus_down(e: anyhow::Error) -> ApiError {
    tracing::warn!(error = %format!("{e:#}"), "the bus's dead letters could not be read");
    ApiError::from_code(ErrorCode::ServiceNotReady)
}

/// `filter` as the client sent it, checked: every problem goes to `p`; the
/// filter when its values are acceptable.
fn checked(p: &mut Problems, filter: LogFilter) -> Option<LogFilter> {
    let kind = p.check("kind", bounded(filter.kind));
    let aggregate_id = p.check("aggregate_id", bounded(filter.aggregate_id));
    if let (Some(from), Some(to)) = (filter.from, filter.to)
        && from >= to
    {
        p.add("to", "must be later than `from`");
    }
    for (field, offset) in [
        ("from_offset", filter.from_offset),
        ("to_offset", filter.to_offset),
    ] {
        if offset.is_some_and(|o| o < 0) {
            p.add(field, "must not be negative");
        }
    }
    if let (Some(from), Some(to)) = (filter.from_offset, filter.to_offset)
        && from > to
    {
        p.add("to_offset", "must not be below `from_offset`");
    }
    Some(LogFilter {
        kind: kind?,
        aggregate_id: aggregate_id?,
        ..filter
    })
}

/// A filter value: absent, or 1 to 200 characters.
fn bounded(value: Option<String>) -> Result<Option<String>, String> {
    match value {
        Some(v) if v.is_empty() || v.chars().count() > MAX_FILTER_LEN => {
            Err(format!("must be 1 to {MAX_FILTER_LEN} characters"))
        }
        v => Ok(v),
    }
}

/// The operators' part of the OpenAPI document (paths relative to `/api/v1`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(events, replay, dead_letters, redrive),
    components(schemas(LoggedEvent, ReplayRequest, ReplayReport, ReplayFailure, DeadLetter, RedriveRequest, RedriveOutcome)),
    tags((name = "admin", description = "Operations: the event log, replays and dead letters"))
)]
pub struct AdminApi;
