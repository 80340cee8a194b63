//! Metrics, served in Prometheus' text format at `/metrics`.
//!
//! Code counts and times what happens where it happens, with the `metrics`
//! crate's macros (a request ends, a saga finishes, a relay publishes). Levels
//! rather than events — an outbox's backlog, a cache's counts, memory — are read
//! when the endpoint is scraped, by the [`Gauges`] the composition root hands
//! it. Until [`install`] runs, the macros record nothing: with
//! `telemetry.metrics = false` metrics cost nothing.
//!
//! Every metric is described in `docs/operations.md` ("Metrics").

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::shutdown::Shutdown;

/// The upper bounds of every latency histogram (names ending in `_seconds`):
/// 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histograms are folded up when nobody scrapes (their samples
/// would pile up otherwise).
const UPKEEP: Duration = Duration::from_secs(5);

/// How long one part of a scrape may take before it is skipped.
const GAUGE_TIMEOUT: Duration = Duration::from_secs(2);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Installs the process's recorder (once; later calls, as from several apps in
/// one test process, get the same one) and returns the handle that renders it.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    STARTED.get_or_init(Instant::now);
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    // Two first callers at once take turns: the second finds the first's
    // handle (without the turn it could look between the first's recorder
    // going in and its handle being kept, and find neither).
    static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = INSTALLING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_ok() {
        let _ = HANDLE.set(handle);
    }
    HANDLE
        .get()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("another metrics recorder is installed"))
}

/// Whether [`install`] has run: code that must do work to record (a query, a
/// clock read) checks it first.
pub fn enabled() -> bool {
    HANDLE.get().is_some()
}

/// A part of the application whose levels are read at each scrape.
#[async_trait]
pub trait Gauges: Send + Sync {
    /// Sets this part's gauges to their current values.
    async fn record(&self);
}

/// What `/metrics` serves.
#[derive(Clone)]
pub struct Endpoint {
    handle: PrometheusHandle,
    gauges: Arc<Vec<Arc<dyn Gauges>>>,
}

impl Endpoint {
    /// The endpoint of `handle`, reading `gauges` at each scrape.
    pub fn new(handle: PrometheusHandle, gauges: Vec<Arc<dyn Gauges>>) -> Self {
        Self {
            handle,
            gauges: Arc::new(gauges),
        }
    }

    /// `GET /metrics`.
    pub fn routes(&self) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .with_state(self.clone())
    }

    /// Folds histogram samples up every few seconds until `shutdown`.
    pub async fn upkeep(self, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(UPKEEP) => self.handle.run_upkeep(),
            }
        }
    }
}

async fn scrape(State(endpoint): State<Endpoint>) -> Response {
    process_gauges();
    for gauges in endpoint.gauges.iter() {
        if tokio::time::timeout(GAUGE_TIMEOUT, gauges.record())
            .await
            .is_err()
        {
            tracing::warn!(
                "a part of the metrics scrape timed out; its gauges keep their last values"
            );
        }
    }
    let body = endpoint.handle.render();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// The process's uptime and resident memory.
fn process_gauges() {
    if let Some(started) = STARTED.get() {
        metrics::gauge!("agora_process_uptime_seconds").set(started.elapsed().as_secs_f64());
    }
    if let Some(bytes) = resident_bytes() {
        metrics::gauge!("agora_process_resident_memory_bytes").set(bytes as f64);
    }
}

/// Resident memory, from `VmRSS` in `/proc/self/status` (Linux; `None`
/// elsewhere).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Where [`matched_route`] leaves the route a request matched, for the edge's
/// request metrics. Filled from the request before its handler runs, so an
/// answer made around the handler (the edge's timeout, a caught panic) is
/// still counted under its route.
#[derive(Clone, Default)]
pub struct RouteSlot(Arc<OnceLock<MatchedPath>>);

impl RouteSlot {
    /// The route, once matched.
    pub fn route(&self) -> Option<&MatchedPath> {
        self.0.get()
    }
}

/// Route middleware (`Router::route_layer`): fills the request's
/// [`RouteSlot`] with the matched route's template. Requests that match no
/// route are counted under `unmatched`, so a scan of random paths cannot
/// create a series per path.
pub async fn matched_route(req: Request, next: Next) -> Response {
    if let (Some(slot), Some(route)) = (
        req.extensions().get::<RouteSlot>(),
        req.extensions().get::<MatchedPath>(),
    ) {
        let _ = slot.0.set(route.clone());
    }
    next.run(req).await
}

/// The request metrics of one route and method, registered at its first
/// request and kept: a lookup by name and labels on every request would cost
/// more than the recording.
struct RouteMetrics {
    route: Box<str>,
    method: &'static str,
    duration: Histogram,
    /// By status class, 1xx … 5xx, each registered at its first answer (no
    /// series of zeros for classes a route never answers with).
    answered: [OnceLock<Counter>; 5],
}

/// Per route template, per method (in [`METHODS`] order).
type RouteTable = HashMap<Box<str>, Arc<[OnceLock<RouteMetrics>; METHODS.len()]>>;

/// The methods with a label of their own; the last stands for the others.
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other",
];

static ROUTES: LazyLock<RwLock<RouteTable>> = LazyLock::new(RwLock::default);

fn route_metrics(route: &str) -> Arc<[OnceLock<RouteMetrics>; METHODS.len()]> {
    if let Some(found) = ROUTES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(route)
    {
        return Arc::clone(found);
    }
    let mut table = ROUTES.write().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(
        table
            .entry(route.into())
            .or_insert_with(|| Arc::new(std::array::from_fn(|_| OnceLock::new()))),
    )
}

/// Counts an answered request and its latency, by method, route and status
/// class.
pub fn record_request(
    method: &Method,
    route: Option<&MatchedPath>,
    status: StatusCode,
    elapsed: Duration,
) {
    let route = route.map_or("unmatched", MatchedPath::as_str);
    let m = method_index(method);
    let by_method = route_metrics(route);
    let metrics = by_method[m].get_or_init(|| RouteMetrics {
        route: route.into(),
        method: METHODS[m],
        duration: metrics::histogram!("agora_http_request_duration_seconds", "method" => METHODS[m], "route" => route.to_string()),
        answered: Default::default(),
    });
    let class = usize::from(status.as_u16() / 100).clamp(1, 5) - 1;
    metrics.answered[class]
        .get_or_init(|| {
            const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
            metrics::counter!("agora_http_requests_total", "method" => metrics.method, "route" => metrics.route.to_string(), "status" => CLASSES[class])
        })
        .increment(1);
    metrics.duration.record(elapsed.as_secs_f64());
}

/// A request in flight, counted until dropped (also when the client goes away
/// mid-request).
pub struct InFlight(());

/// The in-flight gauge, registered once (it moves twice a request).
static IN_FLIGHT: LazyLock<Gauge> =
    LazyLock::new(|| metrics::gauge!("agora_http_requests_in_flight"));

impl InFlight {
    /// Counts one more request in flight. Only once [`install`] has run (the
    /// gauge is bound to the recorder of its first use).
    pub fn start() -> Self {
        IN_FLIGHT.increment(1.0);
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.decrement(1.0);
    }
}

fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::PATCH => 3,
        Method::DELETE => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// The value of `series` (a name and its labels, as rendered) in a scrape.
#[cfg(test)]
pub(crate) fn rendered(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(resident_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(METHODS[method_index(&Method::GET)], "GET");
        let odd = Method::from_bytes(b"PROPFIND").expect("a method");
        assert_eq!(METHODS[method_index(&odd)], "other");
    }
}
