//! What a run measured: per request kind, an HDR histogram of latencies and
//! the errors by code; the table printed at the end and its JSON twin.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// A kind of request the virtual customers send, one row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A page of the product list.
    ListProducts,
    /// A text search of the product list.
    Search,
    /// One product by id.
    ViewProduct,
    /// The category tree.
    Categories,
    /// A sign-in with email and password.
    Login,
    /// A product into the cart.
    CartAdd,
    /// A cart line's quantity changed.
    CartUpdate,
    /// A cart line removed.
    CartRemove,
    /// The whole cart emptied.
    CartClear,
    /// The cart, priced.
    ViewCart,
    /// A checkout.
    Checkout,
    /// The customer's own orders.
    ListOrders,
    /// One order.
    ViewOrder,
}

impl Kind {
    /// The row's label: the method and route.
    pub fn label(self) -> &'static str {
        match self {
            Kind::ListProducts => "GET /products",
            Kind::Search => "GET /products?q=",
            Kind::ViewProduct => "GET /products/{id}",
            Kind::Categories => "GET /categories",
            Kind::Login => "POST /auth/login",
            Kind::CartAdd => "POST /cart/items",
            Kind::CartUpdate => "PATCH /cart/items/{id}",
            Kind::CartRemove => "DELETE /cart/items/{id}",
            Kind::CartClear => "DELETE /cart",
            Kind::ViewCart => "GET /cart",
            Kind::Checkout => "POST /checkout",
            Kind::ListOrders => "GET /orders",
            Kind::ViewOrder => "GET /orders/{id}",
        }
    }
}

/// Error codes a shop under load is expected to answer: stock runs out.
/// Counted and shown like any other, but not as a failure of the server.
pub const EXPECTED_CODES: [&str; 2] = ["ORDERS_OUT_OF_STOCK", "INVENTORY_INSUFFICIENT_STOCK"];

/// Latencies are recorded in microseconds, from 1 µs to one hour, to three
/// significant figures.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// One kind's measurements.
#[derive(Debug, Clone)]
struct KindStats {
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl KindStats {
    fn new() -> KindStats {
        KindStats {
            latency: Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)
                .expect("the histogram's fixed bounds are valid"),
            errors: BTreeMap::new(),
        }
    }
}

/// What one virtual customer (or a whole run, once merged) measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    kinds: BTreeMap<Kind, KindStats>,
}

impl Stats {
    /// Records one answered (or failed) request of `kind` that took `took`;
    /// `error` is its code when it failed.
    pub fn record(&mut self, kind: Kind, took: Duration, error: Option<&str>) {
        let stats = self.kinds.entry(kind).or_insert_with(KindStats::new);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        stats
            .latency
            .saturating_record(micros.clamp(1, HIGHEST_MICROS));
        if let Some(code) = error {
            *stats.errors.entry(code.to_string()).or_default() += 1;
        }
    }

    /// Adds `other`'s measurements to these.
    pub fn merge(&mut self, other: Stats) {
        for (kind, theirs) in other.kinds {
            match self.kinds.get_mut(&kind) {
                Some(ours) => {
                    ours.latency
                        .add(&theirs.latency)
                        .expect("histograms of the same bounds add");
                    for (code, n) in theirs.errors {
                        *ours.errors.entry(code).or_default() += n;
                    }
                }
                None => {
                    self.kinds.insert(kind, theirs);
                }
            }
        }
    }

    /// The report of a run of `elapsed` that measured these.
    pub fn report(&self, run: RunInfo, elapsed: Duration) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let mut all = KindStats::new();
        let mut kinds = Vec::new();
        for (kind, stats) in &self.kinds {
            all.latency
                .add(&stats.latency)
                .expect("histograms of the same bounds add");
            for (code, n) in &stats.errors {
                *all.errors.entry(code.clone()).or_default() += n;
            }
            kinds.push(Row::of(kind.label(), stats, secs));
        }
        let total = Row::of("all", &all, secs);
        Report {
            run,
            elapsed_secs: secs,
            kinds,
            total,
        }
    }
}

/// What was run, for the report's heading.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    /// The address loaded.
    pub target: String,
    /// `browse`, `shop` or `checkout-only`.
    pub scenario: String,
    /// Virtual customers.
    pub users: usize,
    /// Iterations started per second in an open-loop run; `None`: closed loop.
    pub rate: Option<f64>,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The request kind (`all` for the total).
    pub kind: String,
    /// Requests answered or failed.
    pub count: u64,
    /// Failed requests by error code: the envelope's `error.code`, `HTTP_<status>`
    /// for an answer without one, `TRANSPORT_…` when no answer came.
    pub errors: BTreeMap<String, u64>,
    /// Failures whose code is not one of the expected ones (stock running out).
    pub unexpected_errors: u64,
    /// Requests per second over the run.
    pub per_sec: f64,
    /// Latency percentiles and the maximum, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// The slowest.
    pub max_ms: f64,
}

impl Row {
    fn of(kind: &str, stats: &KindStats, secs: f64) -> Row {
        let h = &stats.latency;
        let ms = |micros: u64| micros as f64 / 1000.0;
        let unexpected_errors = stats
            .errors
            .iter()
            .filter(|(code, _)| !EXPECTED_CODES.contains(&code.as_str()))
            .map(|(_, n)| n)
            .sum();
        Row {
            kind: kind.to_string(),
            count: h.len(),
            errors: stats.errors.clone(),
            unexpected_errors,
            per_sec: h.len() as f64 / secs,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }

    /// All failed requests of this row.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// A run's results: the table per request kind and its total.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run.
    pub run: RunInfo,
    /// How long the measured part took.
    pub elapsed_secs: f64,
    /// One row per request kind sent, in a fixed order.
    pub kinds: Vec<Row>,
    /// All requests together.
    pub total: Row,
}

impl Report {
    /// The table, as printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let rate = self
            .run
            .rate
            .map_or("closed loop".to_string(), |r| format!("open loop at {r}/s"));
        let _ = writeln!(
            out,
            "{} scenario, {} users, {rate}, {:.1} s against {}",
            self.run.scenario, self.run.users, self.elapsed_secs, self.run.target
        );
        let _ = writeln!(
            out,
            "{:<24} {:>9} {:>7} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "request",
            "count",
            "errors",
            "req/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms"
        );
        for row in self.kinds.iter().chain(std::iter::once(&self.total)) {
            let _ = writeln!(
                out,
                "{:<24} {:>9} {:>7} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                row.kind,
                row.count,
                row.error_count(),
                row.per_sec,
                row.p50_ms,
                row.p90_ms,
                row.p99_ms,
                row.p999_ms,
                row.max_ms
            );
        }
        if self.total.errors.is_empty() {
            let _ = writeln!(out, "no errors");
        } else {
            let _ = writeln!(out, "errors by code:");
            for row in &self.kinds {
                for (code, n) in &row.errors {
                    let note = if EXPECTED_CODES.contains(&code.as_str()) {
                        " (expected: stock ran out)"
                    } else {
                        ""
                    };
                    let _ = writeln!(out, "  {:<24} {code} × {n}{note}", row.kind);
                }
            }
            let _ = writeln!(
                out,
                "unexpected errors: {} of {} requests",
                self.total.unexpected_errors, self.total.count
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> RunInfo {
        RunInfo {
            target: "http://127.0.0.1:1".into(),
            scenario: "shop".into(),
            users: 2,
            rate: None,
        }
    }

    #[test]
    fn merged_stats_add_counts_errors_and_latencies() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for ms in 1..=100 {
            a.record(Kind::ViewProduct, Duration::from_millis(ms), None);
        }
        b.record(
            Kind::Checkout,
            Duration::from_millis(40),
            Some("ORDERS_OUT_OF_STOCK"),
        );
        b.record(Kind::Checkout, Duration::from_millis(50), Some("HTTP_500"));
        b.record(
            Kind::ViewProduct,
            Duration::from_secs(2),
            Some("TRANSPORT_TIMEOUT"),
        );
        a.merge(b);
        let report = a.report(run(), Duration::from_secs(2));
        assert_eq!(report.total.count, 103);
        assert_eq!(report.total.error_count(), 3);
        assert_eq!(
            report.total.unexpected_errors, 2,
            "out of stock is expected"
        );
        let product = &report.kinds[0];
        assert_eq!(product.kind, "GET /products/{id}");
        assert_eq!(product.count, 101);
        assert!((product.p50_ms - 51.0).abs() < 0.1, "{}", product.p50_ms);
        assert!((product.max_ms - 2000.0).abs() < 2.0, "{}", product.max_ms);
        assert!((product.per_sec - 50.5).abs() < 1e-9);
        let table = report.table();
        assert!(
            table.contains("ORDERS_OUT_OF_STOCK × 1 (expected"),
            "{table}"
        );
        assert!(table.contains("HTTP_500 × 1"), "{table}");
        assert!(table.contains("unexpected errors: 2 of 103"), "{table}");
    }

    #[test]
    fn the_json_report_carries_the_same_rows() {
        let mut s = Stats::default();
        s.record(Kind::Login, Duration::from_millis(3), None);
        let json = serde_json::to_value(s.report(run(), Duration::from_secs(1))).unwrap();
        assert_eq!(json["kinds"][0]["kind"], "POST /auth/login");
        assert_eq!(json["kinds"][0]["count"], 1);
        assert_eq!(json["total"]["unexpected_errors"], 0);
        assert_eq!(json["run"]["scenario"], "shop");
    }

    #[test]
    fn a_latency_beyond_the_range_is_clamped_not_lost() {
        let mut s = Stats::default();
        s.record(Kind::Search, Duration::from_secs(100_000), None);
        s.record(Kind::Search, Duration::ZERO, None);
        assert_eq!(s.report(run(), Duration::from_secs(1)).total.count, 2);
    }
}
