//! Query and commit latency, for the metrics (`agora_db_query_duration_seconds`
//! by `role`, `agora_db_commit_duration_seconds`), and the statement's span
//! (`db.query`, when spans are exported; a write transaction has one span for
//! all its statements, `db.transaction`, made by the writer): a timer runs
//! from a query's start until its stream or future is done with (dropped), so
//! it covers the wait for a connection or the writer too. Nothing is timed
//! while metrics are off and spans are not exported.

use std::sync::OnceLock;
use std::time::Instant;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::StreamExt as _;
use metrics::Histogram;

/// What a timed statement is, its label's value.
#[derive(Clone, Copy)]
pub(super) enum Role {
    /// A read through the reader.
    Read,
    /// A single statement through the writer.
    Write,
    /// A statement inside a write transaction.
    Transaction,
}

impl Role {
    const fn label(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Transaction => "transaction",
        }
    }
}

/// The histograms, registered once (looking one up by name and labels on
/// every statement would cost more than recording into it).
struct Histograms {
    /// By [`Role`], in its order.
    query: [Histogram; 3],
    commit: Histogram,
}

static HISTOGRAMS: OnceLock<Histograms> = OnceLock::new();

/// The histograms, once metrics are on (the recorder, installed once, never
/// changes after).
fn histograms() -> Option<&'static Histograms> {
    if !crate::metrics::enabled() {
        return None;
    }
    Some(HISTOGRAMS.get_or_init(|| Histograms {
        query: [Role::Read, Role::Write, Role::Transaction].map(
            |role| ::metrics::histogram!("agora_db_query_duration_seconds", "role" => role.label()),
        ),
        commit: ::metrics::histogram!("agora_db_commit_duration_seconds"),
    }))
}

/// Records the time since its start when dropped (and ends its span).
pub(super) struct Timer {
    histogram: Option<&'static Histogram>,
    began: Instant,
    _span: tracing::Span,
}

impl Timer {
    /// A query timer, if metrics are on or spans exported. A statement of a
    /// transaction has no span of its own: it is in the transaction's.
    pub(super) fn query(role: Role) -> Option<Self> {
        let span = match role {
            Role::Read | Role::Write if crate::telemetry::tracing_here() => {
                tracing::debug_span!("db.query", role = role.label())
            }
            _ => tracing::Span::none(),
        };
        let histogram = histograms().map(|h| &h.query[role as usize]);
        if histogram.is_none() && span.is_none() {
            return None;
        }
        Some(Self {
            histogram,
            began: Instant::now(),
            _span: span,
        })
    }

    /// A commit timer, if metrics are on.
    pub(super) fn commit() -> Option<Self> {
        Some(Self {
            histogram: Some(&histograms()?.commit),
            began: Instant::now(),
            _span: tracing::Span::none(),
        })
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(histogram) = self.histogram {
            histogram.record(self.began.elapsed().as_secs_f64());
        }
    }
}

/// `stream`, timed as a query of `role`.
pub(super) fn stream<'e, T: Send + 'e>(role: Role, stream: BoxStream<'e, T>) -> BoxStream<'e, T> {
    match Timer::query(role) {
        None => stream,
        Some(timer) => stream
            .map(move |item| {
                let _running = &timer;
                item
            })
            .boxed(),
    }
}

/// `future`, timed as a query of `role`.
pub(super) fn future<'e, T: 'e>(role: Role, future: BoxFuture<'e, T>) -> BoxFuture<'e, T> {
    match Timer::query(role) {
        None => future,
        Some(timer) => Box::pin(async move {
            let _running = timer;
            future.await
        }),
    }
}
