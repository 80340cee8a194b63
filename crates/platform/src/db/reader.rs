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

use super::local_exec::{self, Produced};

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
    /// Connections not in use. A read takes one and puts it back; reads run on
    /// the runtime's worker threads, so there are about as many in use as there
    /// are workers.
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
        Ok(Some(Leased {
            conn: Some(conn),
            from: self,
        }))
    }

    /// Closes the idle connections; reads after this fail.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    fn release(&self, conn: Connection) {
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
    fn run(&self, sql: &str, arguments: Option<AnyArguments>) -> Result<Produced, Error> {
        let conn = self
            .lease()
            .map_err(local_exec::database_error)?
            .ok_or(Error::PoolClosed)?;
        local_exec::run(&conn, sql, arguments)
    }
}

/// Runs `query` on `reads`: on this thread, or on a blocking thread when `offload`.
async fn read<'q>(
    reads: &Arc<ReadConnections>,
    mut query: impl Execute<'q, Any>,
    offload: bool,
) -> Result<Produced, Error> {
    let arguments = query.take_arguments().map_err(Error::Encode)?;
    let sql = query.sql();
    if !offload {
        return reads.run(sql.as_str(), arguments);
    }
    let reads = Arc::clone(reads);
    tokio::task::spawn_blocking(move || reads.run(sql.as_str(), arguments))
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
    Blocking(Arc<ReadConnections>),
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
    /// run on a blocking thread instead of the caller's.
    pub(super) fn offloaded(&self) -> Reader {
        Reader {
            kind: match &self.kind {
                ReaderKind::Pool(pool) => ReaderKind::Pool(pool.clone()),
                ReaderKind::Local(reads) | ReaderKind::Blocking(reads) => {
                    ReaderKind::Blocking(Arc::clone(reads))
                }
            },
        }
    }

    /// The SQLite read connections.
    pub(super) fn connections(&self) -> Option<&ReadConnections> {
        match &self.kind {
            ReaderKind::Pool(_) => None,
            ReaderKind::Local(reads) | ReaderKind::Blocking(reads) => Some(reads),
        }
    }

    pub(super) async fn close(&self) {
        match &self.kind {
            ReaderKind::Pool(pool) => pool.close().await,
            ReaderKind::Local(reads) | ReaderKind::Blocking(reads) => reads.close(),
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
        match &self.kind {
            ReaderKind::Pool(pool) => pool.fetch_many(query),
            ReaderKind::Local(reads) => local_exec::stream_of(read(reads, query, false)),
            ReaderKind::Blocking(reads) => local_exec::stream_of(read(reads, query, true)),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<AnyRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match &self.kind {
            ReaderKind::Pool(pool) => pool.fetch_optional(query),
            ReaderKind::Local(reads) | ReaderKind::Blocking(reads) => {
                let offload = matches!(self.kind, ReaderKind::Blocking(_));
                Box::pin(async move {
                    Ok(read(reads, query, offload)
                        .await?
                        .into_iter()
                        .find_map(Either::right))
                })
            }
        }
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
