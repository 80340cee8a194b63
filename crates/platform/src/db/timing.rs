//! Query and commit latency, for the metrics (`agora_db_query_duration_seconds`
//! by `role`, `agora_db_commit_duration_seconds`): a timer runs from a query's
//! start until its stream or future is done with (dropped), so it covers the
//! wait for a connection or the writer too. Nothing is timed while metrics are
//! off.

use std::time::Instant;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::StreamExt as _;

/// A read through the reader.
pub(super) const READ: &str = "read";
/// A single statement through the writer.
pub(super) const WRITE: &str = "write";
/// A statement inside a write transaction.
pub(super) const TRANSACTION: &str = "transaction";

/// Records the time since its start when dropped.
pub(super) struct Timer {
    metric: &'static str,
    role: Option<&'static str>,
    began: Instant,
}

impl Timer {
    /// A query timer, if metrics are on.
    pub(super) fn query(role: &'static str) -> Option<Self> {
        crate::metrics::enabled().then(|| Self {
            metric: "agora_db_query_duration_seconds",
            role: Some(role),
            began: Instant::now(),
        })
    }

    /// A commit timer, if metrics are on.
    pub(super) fn commit() -> Option<Self> {
        crate::metrics::enabled().then(|| Self {
            metric: "agora_db_commit_duration_seconds",
            role: None,
            began: Instant::now(),
        })
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let seconds = self.began.elapsed().as_secs_f64();
        match self.role {
            Some(role) => ::metrics::histogram!(self.metric, "role" => role).record(seconds),
            None => ::metrics::histogram!(self.metric).record(seconds),
        }
    }
}

/// `stream`, timed as a query of `role`.
pub(super) fn stream<'e, T: Send + 'e>(
    role: &'static str,
    stream: BoxStream<'e, T>,
) -> BoxStream<'e, T> {
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
pub(super) fn future<'e, T: 'e>(role: &'static str, future: BoxFuture<'e, T>) -> BoxFuture<'e, T> {
    match Timer::query(role) {
        None => future,
        Some(timer) => Box::pin(async move {
            let _running = timer;
            future.await
        }),
    }
}
