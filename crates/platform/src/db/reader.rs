//! SQLite reads on the calling thread, through rusqlite (ADR 0002, ADR 0006).
//!
//! sqlx runs every SQLite connection on its own thread, so each query costs at
//! least two cross-thread wake-ups, and each row another hand-over. Agora's
//! reads are index lookups and bounded pages whose SQLite work takes
//! microseconds, so the wake-ups cost far more than the reads: under the
//! checkout load they were a third of the server's CPU. Here a read runs inside
//! one poll of the caller, on one of a few read-only connections.
//!
//! [`Reader`] is the executor stores read through: on SQLite it runs the query
//! here (answering with the same `AnyRow`s as sqlx-sqlite, see
//! [`super::local_exec`]); on PostgreSQL it is the pool. Reads that may visit
//! many rows to fill a page (filtered lists, text search) take the offloaded
//! reader instead, which runs the same way on a blocking thread, so a long one
//! never holds a runtime worker.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use rusqlite::{Connection, OpenFlags};
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::{Any, AnyPool, Either, Error, Execute, Executor};

use tokio::sync::Semaphore;

use super::local_exec::{self, Produced, Rows};
use super::timing;

/// How long a read waits for a lock before failing. In WAL mode readers do not
/// wait for writers, so this only bounds rare cases (WAL recovery after a
/// crash); it is short because the wait blocks a runtime worker thread.
const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// Prepared statements each read connection keeps: more than all the modules'
/// read statements together, so none is parsed again under load.
const STATEMENT_CACHE: usize = 256;

/// Idle read-only connections to one SQLite file, opened on demand.
#[derive(Debug)]
pub(super) struct ReadConnections {
    path: PathBuf,
    /// Connections not in use. A read takes one and puts it back. Reads run on
    /// the runtime's worker threads, and reads that may scan on at most
    /// `max_idle` blocking threads, so about that many are in use at once.
    idle: Mutex<Vec<Connection>>,
    /// Connections beyond this many are closed instead of kept.
    max_idle: usize,
    closed: AtomicBool,
}

/// A connection taken from the idle ones, given back when dropped.
pub(super) struct Leased<'a> {
    conn: Option<Connection>,
    from: &'a ReadConnections,
}

impl Deref for Leased<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("a leased connection is present until dropped")
    }
}

impl Drop for Leased<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.from.release(conn);
        }
    }
}

impl ReadConnections {
    /// Read connections to the database file at `path`, opening one to check it.
    pub(super) fn open(path: &Path, max_idle: usize) -> rusqlite::Result<Self> {
        let reads = Self {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
            closed: AtomicBool::new(false),
        };
        let first = reads.connect()?;
        reads.release(first);
        Ok(reads)
    }

    /// An idle connection, or a new one. `None` once closed.
    pub(super) fn lease(&self) -> rusqlite::Result<Option<Leased<'_>>> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(None);
        }
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.connect()?,
        };
        if self.closed.load(Ordering::Acquire) {
            // Closed while this one was being opened.
            return Ok(None);
        }
        Ok(Some(Leased {
            conn: Some(conn),
            from: self,
        }))
    }

    /// Closes the idle connections; reads after this fail. A read already
    /// running finishes, and its connection is closed when it ends.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn release(&self, conn: Connection) {
        // A connection left inside a transaction (a `BEGIN` sent as a read)
        // would answer every later read from an old snapshot and keep the WAL
        // from being checkpointed: it is closed instead.
        if !conn.is_autocommit() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle && !self.closed.load(Ordering::Acquire) {
            idle.push(conn);
        }
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "query_only", true)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(conn)
    }

    /// Runs `sql` with its `arguments` on a read connection, on this thread.
    fn run(
        &self,
        sql: &str,
        persistent: bool,
        arguments: Option<AnyArguments>,
        rows: Rows,
    ) -> Result<Produced, Error> {
        let conn = self
            .lease()
            .map_err(local_exec::database_error)?
            .ok_or(Error::PoolClosed)?;
        local_exec::run(&conn, sql, persistent, arguments, rows)
    }
}

/// Reads that may scan: run on a blocking thread, at most `slots` at once.
#[derive(Debug)]
struct Offloaded {
    reads: Arc<ReadConnections>,
    slots: Semaphore,
    /// How long a read waits for a slot before failing with `PoolTimedOut`
    /// (`SERVICE_NOT_READY`), as a busy pool would.
    wait: Duration,
}

/// Runs `query` on the caller's thread.
fn read_here<'q>(
    reads: &ReadConnections,
    mut query: impl Execute<'q, Any>,
    rows: Rows,
) -> Result<Produced, Error> {
    let arguments = query.take_arguments().map_err(Error::Encode)?;
    let persistent = query.persistent();
    reads.run(query.sql().as_str(), persistent, arguments, rows)
}

/// Runs `query` on a blocking thread, once a slot is free.
async fn read_offloaded<'q>(
    offloaded: &Offloaded,
    mut query: impl Execute<'q, Any>,
    rows: Rows,
) -> Result<Produced, Error> {
    let arguments = query.take_arguments().map_err(Error::Encode)?;
    let persistent = query.persistent();
    let sql = query.sql();
    let _slot = tokio::time::timeout(offloaded.wait, offloaded.slots.acquire())
        .await
        .map_err(|_| Error::PoolTimedOut)?
        .map_err(|_| Error::PoolClosed)?;
    let reads = Arc::clone(&offloaded.reads);
    tokio::task::spawn_blocking(move || reads.run(sql.as_str(), persistent, arguments, rows))
        .await
        .map_err(|e| Error::AnyDriverError(Box::new(e)))?
}

/// Where reads go: read-only connections on the calling thread (SQLite) or the
/// pool (PostgreSQL). A read sees every commit that finished before it started.
#[derive(Clone)]
pub struct Reader {
    kind: ReaderKind,
}

#[derive(Clone)]
enum ReaderKind {
    Pool(AnyPool),
    /// SQLite, on the calling thread.
    Local(Arc<ReadConnections>),
    /// SQLite, on a blocking thread: for reads that may visit many rows.
    Blocking(Arc<Offloaded>),
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            ReaderKind::Pool(_) => "Reader(pool)",
            ReaderKind::Local(_) => "Reader(SQLite, calling thread)",
            ReaderKind::Blocking(_) => "Reader(SQLite, blocking thread)",
        })
    }
}

impl Reader {
    pub(super) fn pool(pool: AnyPool) -> Reader {
        Reader {
            kind: ReaderKind::Pool(pool),
        }
    }

    pub(super) fn local(reads: Arc<ReadConnections>) -> Reader {
        Reader {
            kind: ReaderKind::Local(reads),
        }
    }

    /// The same connections, for reads that may visit many rows: on SQLite they
    /// run on a blocking thread instead of the caller's, at most `slots` at
    /// once, each waiting at most `wait` for its turn.
    pub(super) fn offloaded(&self, slots: usize, wait: Duration) -> Reader {
        Reader {
            kind: match &self.kind {
                ReaderKind::Pool(pool) => ReaderKind::Pool(pool.clone()),
                ReaderKind::Local(reads) => ReaderKind::Blocking(Arc::new(Offloaded {
                    reads: Arc::clone(reads),
                    slots: Semaphore::new(slots.max(1)),
                    wait,
                })),
                ReaderKind::Blocking(offloaded) => ReaderKind::Blocking(Arc::clone(offloaded)),
            },
        }
    }

    /// The SQLite read connections.
    pub(super) fn connections(&self) -> Option<&ReadConnections> {
        match &self.kind {
            ReaderKind::Pool(_) => None,
            ReaderKind::Local(reads) => Some(reads),
            ReaderKind::Blocking(offloaded) => Some(&offloaded.reads),
        }
    }

    pub(super) async fn close(&self) {
        match &self.kind {
            ReaderKind::Pool(pool) => pool.close().await,
            ReaderKind::Local(reads) => reads.close(),
            ReaderKind::Blocking(offloaded) => {
                offloaded.slots.close();
                offloaded.reads.close();
            }
        }
    }
}

impl<'c> Executor<'c> for &'c Reader {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let stream = match &self.kind {
            ReaderKind::Pool(pool) => pool.fetch_many(query),
            ReaderKind::Local(reads) => {
                local_exec::stream_of(async move { read_here(reads, query, Rows::All) })
            }
            ReaderKind::Blocking(offloaded) => {
                local_exec::stream_of(read_offloaded(offloaded, query, Rows::All))
            }
        };
        timing::stream(timing::Role::Read, stream)
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<AnyRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let row = match &self.kind {
            ReaderKind::Pool(pool) => pool.fetch_optional(query),
            ReaderKind::Local(reads) => {
                Box::pin(async move { Ok(first_row(read_here(reads, query, Rows::First)?)) })
            }
            ReaderKind::Blocking(offloaded) => Box::pin(async move {
                Ok(first_row(
                    read_offloaded(offloaded, query, Rows::First).await?,
                ))
            }),
        };
        timing::future(timing::Role::Read, row)
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement, Error>>
    where
        'c: 'e,
    {
        match &self.kind {
            ReaderKind::Pool(pool) => pool.prepare_with(sql, parameters),
            ReaderKind::Local(_) | ReaderKind::Blocking(_) => {
                Box::pin(async { Err(local_exec::unsupported("preparing a statement")) })
            }
        }
    }

    fn describe<'e>(self, sql: sqlx::SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<Any>, Error>>
    where
        'c: 'e,
    {
        match &self.kind {
            ReaderKind::Pool(pool) => pool.describe(sql),
            ReaderKind::Local(_) | ReaderKind::Blocking(_) => {
                Box::pin(async { Err(local_exec::unsupported("describing a statement")) })
            }
        }
    }
}

fn first_row(produced: Produced) -> Option<AnyRow> {
    produced.into_iter().find_map(Either::right)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read that counts to `n`: long enough to hold its connection a while.
    const COUNT_TO: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
         WHERE x < $1) SELECT COUNT(*) FROM c";

    /// Reads that may scan run a bounded number at a time; one that waits too
    /// long for its turn fails as a busy pool does (`PoolTimedOut`, which the
    /// API answers with `SERVICE_NOT_READY`), instead of queueing without end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_that_may_scan_wait_their_turn_and_give_up() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("reads.db");
        Connection::open(&file)?.execute_batch("PRAGMA journal_mode = WAL;")?;
        let reader = Reader::local(Arc::new(ReadConnections::open(&file, 2)?));
        let scans = reader.offloaded(1, Duration::from_millis(50));
        let count = |n: i64| sqlx::query_scalar::<_, i64>(COUNT_TO).bind(n);

        assert_eq!(count(10).fetch_one(&scans).await?, 10);
        assert_eq!(count(10).fetch_one(&reader).await?, 10);
        let long = tokio::spawn({
            let scans = scans.clone();
            async move { count(5_000_000).fetch_one(&scans).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let turned_away = count(10).fetch_one(&scans).await;
        assert!(
            matches!(turned_away, Err(Error::PoolTimedOut)),
            "{turned_away:?}"
        );
        // Reads on the caller's thread do not queue behind scans.
        assert_eq!(count(10).fetch_one(&reader).await?, 10);
        assert_eq!(long.await??, 5_000_000);
        assert_eq!(count(10).fetch_one(&scans).await?, 10);
        Ok(())
    }
}
