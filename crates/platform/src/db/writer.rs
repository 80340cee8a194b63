//! Durable writes, and on SQLite their group commit (ADR 0004).
//!
//! SQLite has one writer at a time, and with `synchronous=FULL` every commit waits
//! for an `fsync` of the WAL. One connection committing each transaction on its
//! own spends most of its time in those waits, while every other writer queues
//! behind it. So on SQLite a write transaction is a *savepoint* inside a shared
//! transaction on the one writer connection: transactions still run one after
//! another, each all-or-nothing, but one `COMMIT` (one `fsync`) makes a whole group
//! of them durable. A caller's [`WriteTx::commit`] returns only after the `COMMIT`
//! that contains its work, so nothing is reported written before it would survive
//! a power loss; when that `COMMIT` fails, every transaction of the group gets the
//! error and none of them is written.
//!
//! A transaction sees the writes of those before it in its group, released but
//! not yet committed. So [`WriteTx::rollback`] waits for the group's `COMMIT`
//! too: a caller that lost a race for a key, rolled back and reads the winner's
//! row through the reader finds it. End a transaction that returns success
//! with `commit` or `rollback`; dropping it is for errors.
//!
//! A committer task ends the shared transaction: woken by the first transaction of
//! a group, it queues for the connection behind those already waiting (the lock is
//! fair), so the group is every transaction that got the connection before it.
//!
//! On PostgreSQL, whose server groups commits itself, a [`WriteTx`] is a plain
//! transaction of the pool.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_util::{StreamExt as _, TryStreamExt as _};
use sqlx::any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::{Any, AnyConnection, AnyPool, Connection as _, Either, Error, Execute, Executor};
use tokio::sync::{Mutex, Notify, OwnedMutexGuard, oneshot};

use super::{local_exec, timing};

/// How long the writer waits for another process's write lock on the file.
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The savepoint each write transaction runs in on SQLite (they never overlap).
const SAVEPOINT: &str = "SAVEPOINT agora_write";
const RELEASE: &str = "RELEASE agora_write";
const ROLLBACK_TO: &str = "ROLLBACK TO agora_write; RELEASE agora_write";

/// A write transaction. Statements run on it through `&mut *tx` (it dereferences
/// to its [`TxConn`]); [`WriteTx::commit`] makes them durable, and dropping it
/// without committing undoes them.
pub struct WriteTx {
    conn: TxConn,
    /// `db.transaction`, from the wait for the writer to the end (when spans
    /// are exported).
    _span: tracing::Span,
}

/// The connection of a write transaction, as an sqlx [`Executor`]: on
/// PostgreSQL the pool transaction's, on SQLite the group's writer, whose
/// statements run on the calling thread (ADR 0005).
pub struct TxConn(TxKind);

enum TxKind {
    /// PostgreSQL: a transaction of the pool.
    Pool(sqlx::Transaction<'static, Any>),
    /// SQLite: a savepoint in the group's shared transaction, holding the
    /// connection.
    Group {
        slot: OwnedMutexGuard<Slot>,
        group: Arc<Group>,
    },
    /// Committed or rolled back.
    Finished,
}

impl std::fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.conn.fmt(f)
    }
}

impl std::fmt::Debug for TxConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            TxKind::Pool(_) => "WriteTx(pool)",
            TxKind::Group { .. } => "WriteTx(group)",
            TxKind::Finished => "WriteTx(finished)",
        })
    }
}

impl WriteTx {
    /// Makes the transaction's writes durable. On SQLite this waits for the
    /// group's `COMMIT`; an error means nothing of this transaction was written.
    pub async fn commit(mut self) -> Result<(), Error> {
        let _timer = timing::Timer::commit();
        match std::mem::replace(&mut self.conn.0, TxKind::Finished) {
            TxKind::Pool(tx) => tx.commit().await,
            TxKind::Group { slot, group } => group.end(slot, End::Commit).await,
            TxKind::Finished => Err(closed()),
        }
    }

    /// Undoes the transaction's writes. On SQLite it then waits, like a commit,
    /// for the `COMMIT` of the transactions before it, which this one could see:
    /// when it returns, whatever the transaction read is durable and visible to
    /// every reader (a caller that lost a race for a key reads the winner's row
    /// next). End a transaction that found what it came for with this, not by
    /// dropping it; dropping is for errors.
    pub async fn rollback(mut self) -> Result<(), Error> {
        match std::mem::replace(&mut self.conn.0, TxKind::Finished) {
            TxKind::Pool(tx) => tx.rollback().await,
            TxKind::Group { slot, group } => group.end(slot, End::Rollback).await,
            TxKind::Finished => Ok(()),
        }
    }

    /// Ends a one-statement transaction by the statement's outcome: committed
    /// when it succeeded, rolled back (and so, on SQLite, waiting for the
    /// transactions it saw, as a caller that lost a race for a key needs) when
    /// it failed, with the statement's error.
    async fn finish<T>(self, outcome: Result<T, Error>) -> Result<T, Error> {
        match outcome {
            Ok(value) => {
                self.commit().await?;
                Ok(value)
            }
            Err(e) => {
                if let Err(undo) = self.rollback().await {
                    tracing::warn!(error = %undo, "rolling back a failed statement failed");
                }
                Err(e)
            }
        }
    }
}

/// How a write transaction ends on SQLite.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Its savepoint is released into the shared transaction.
    Commit,
    /// Its savepoint is undone.
    Rollback,
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        // PostgreSQL: sqlx rolls the transaction back. SQLite: the next holder of
        // the connection undoes the savepoint before anything else.
        if let TxKind::Group { mut slot, group } =
            std::mem::replace(&mut self.conn.0, TxKind::Finished)
        {
            slot.dangling = true;
            drop(slot);
            group.wake.notify_one();
        }
    }
}

impl Deref for WriteTx {
    type Target = TxConn;

    fn deref(&self) -> &TxConn {
        &self.conn
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut TxConn {
        &mut self.conn
    }
}

impl<'c> Executor<'c> for &'c mut TxConn {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let stream = match &mut self.0 {
            TxKind::Pool(tx) => (&mut **tx).fetch_many(query),
            TxKind::Group { slot, .. } => local_exec::stream_of(async move { local(slot, query) }),
            TxKind::Finished => futures_util::stream::once(async { Err(closed()) }).boxed(),
        };
        timing::stream(timing::Role::Transaction, stream)
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<AnyRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let row = match &mut self.0 {
            TxKind::Pool(tx) => (&mut **tx).fetch_optional(query),
            TxKind::Group { slot, .. } => Box::pin(async move {
                Ok(local(slot, query)?
                    .into_iter()
                    .find_map(|item| item.right()))
            }),
            TxKind::Finished => Box::pin(async { Err(closed()) }),
        };
        timing::future(timing::Role::Transaction, row)
    }

    fn prepare_with<'e>(
        self,
        sql: sqlx::SqlStr,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement, Error>>
    where
        'c: 'e,
    {
        match &mut self.0 {
            TxKind::Pool(tx) => (&mut **tx).prepare_with(sql, parameters),
            _ => Box::pin(async { Err(local_exec::unsupported("preparing a statement")) }),
        }
    }

    fn describe<'e>(self, sql: sqlx::SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<Any>, Error>>
    where
        'c: 'e,
    {
        match &mut self.0 {
            TxKind::Pool(tx) => (&mut **tx).describe(sql),
            _ => Box::pin(async { Err(local_exec::unsupported("describing a statement")) }),
        }
    }
}

/// Runs `query` on the group's writer connection, on this thread.
fn local<'q>(slot: &Slot, mut query: impl Execute<'q, Any>) -> Result<local_exec::Produced, Error> {
    let conn = slot.conn.as_ref().ok_or_else(closed)?;
    if conn.is_autocommit() {
        // Some failures (a full disk, `OR ROLLBACK`) make SQLite roll back the
        // whole shared transaction; a statement run now would commit on its own.
        return Err(group_failed(
            "SQLite rolled back the shared transaction".to_string(),
        ));
    }
    let arguments = query.take_arguments().map_err(Error::Encode)?;
    let persistent = query.persistent();
    local_exec::run(
        conn,
        query.sql().as_str(),
        persistent,
        arguments,
        local_exec::Rows::All,
    )
}

/// The one SQLite writer connection and the state of its shared transaction.
pub(super) struct Slot {
    /// `None` once the database is closed.
    conn: Option<rusqlite::Connection>,
    /// Whether the shared transaction is open.
    open: bool,
    /// A write transaction was dropped unfinished: its savepoint must be undone.
    dangling: bool,
    /// Some transaction's writes were released into the shared transaction, so
    /// its `COMMIT` writes (and `fsync`s) the WAL.
    released: bool,
}

/// SQLite's group commit: the writer connection and the transactions waiting for
/// the next `COMMIT`.
pub(super) struct Group {
    slot: Arc<Mutex<Slot>>,
    /// The database's URL, for migrations, which run on an sqlx connection of
    /// their own while the writer is held.
    url: String,
    pending: std::sync::Mutex<Vec<oneshot::Sender<Result<(), String>>>>,
    wake: Arc<Notify>,
    acquire_timeout: Duration,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    transactions: AtomicU64,
    commits: AtomicU64,
}

/// What the group commit has done since the database was opened (SQLite).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitStats {
    /// Write transactions made durable.
    pub transactions: u64,
    /// `COMMIT`s (each one `fsync`) that made them durable.
    pub commits: u64,
}

impl Drop for Group {
    fn drop(&mut self) {
        // Lets the committer task see that the group is gone, and end.
        self.wake.notify_one();
    }
}

impl Group {
    /// The group over `conn` (opened on the file `url` names), with its
    /// committer task.
    pub(super) fn start(
        conn: rusqlite::Connection,
        url: &str,
        acquire_timeout: Duration,
    ) -> Arc<Group> {
        let wake = Arc::new(Notify::new());
        let group = Arc::new(Group {
            slot: Arc::new(Mutex::new(Slot {
                conn: Some(conn),
                open: false,
                dangling: false,
                released: false,
            })),
            url: url.to_string(),
            pending: std::sync::Mutex::new(Vec::new()),
            wake: Arc::clone(&wake),
            acquire_timeout,
            stats: Stats::default(),
        });
        tokio::spawn(committer(Arc::downgrade(&group), wake));
        group
    }

    /// Starts a write transaction: waits for the connection (at most the acquire
    /// timeout, then `PoolTimedOut` as a pool would), then opens its savepoint.
    ///
    /// Statements run to their end within one poll of the caller (ADR 0005), so
    /// a caller cancelled while waiting here or in [`Group::end`] can never stop
    /// between a statement and the bookkeeping of what it did. The one statement
    /// that can wait on another process, the shared transaction's
    /// `BEGIN IMMEDIATE`, is first tried without waiting; only when another
    /// process holds the lock does it run (and wait) on a blocking thread, with
    /// the transaction it opens: one that nobody takes any more is dropped,
    /// which marks it for undoing like any abandoned one.
    pub(super) async fn begin(self: &Arc<Self>) -> Result<WriteTx, Error> {
        let mut guard = tokio::time::timeout(self.acquire_timeout, self.slot.clone().lock_owned())
            .await
            .map_err(|_| Error::PoolTimedOut)?;
        let opened = if guard.open {
            self.open_savepoint(&mut guard).map(|()| true)
        } else {
            self.try_open(&mut guard)
        };
        match opened {
            Ok(true) => return Ok(self.transaction(guard)),
            Ok(false) => {}
            Err(e) => return Err(self.give_up(guard, e)),
        }
        // Another process holds the file's write lock: wait for it (at most the
        // busy timeout) on a blocking thread.
        let group = Arc::clone(self);
        let opened = tokio::task::spawn_blocking(move || {
            let mut guard = guard;
            match group.open_savepoint(&mut guard) {
                Ok(()) => Ok(group.transaction(guard)),
                Err(e) => Err(group.give_up(guard, e)),
            }
        });
        opened.await.map_err(|e| group_failed(e.to_string()))?
    }

    fn transaction(self: &Arc<Self>, slot: OwnedMutexGuard<Slot>) -> WriteTx {
        WriteTx {
            conn: TxConn(TxKind::Group {
                slot,
                group: Arc::clone(self),
            }),
            _span: tracing::Span::none(),
        }
    }

    /// Gives the connection back after a failed start; the shared transaction
    /// may be open with nobody to end it.
    fn give_up(&self, slot: OwnedMutexGuard<Slot>, e: Error) -> Error {
        drop(slot);
        self.wake.notify_one();
        e
    }

    /// Opens the shared transaction and a savepoint in it without waiting:
    /// `false` when another process holds the file's write lock (a CLI command
    /// beside the server), which is rare, so the common case needs no thread.
    fn try_open(&self, slot: &mut Slot) -> Result<bool, Error> {
        self.settle(slot)?;
        let conn = slot.conn.as_ref().ok_or_else(closed)?;
        let no_wait = |c: &rusqlite::Connection, wait: Duration| {
            c.busy_timeout(wait).map_err(local_exec::database_error)
        };
        no_wait(conn, Duration::ZERO)?;
        let began = conn.execute_batch("BEGIN IMMEDIATE");
        no_wait(conn, BUSY_TIMEOUT)?;
        match began {
            Ok(()) => {
                slot.open = true;
                run(slot, SAVEPOINT).map(|()| true)
            }
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => Ok(false),
            Err(e) => Err(local_exec::database_error(e)),
        }
    }

    fn open_savepoint(&self, slot: &mut Slot) -> Result<(), Error> {
        self.settle(slot)?;
        if !slot.open {
            run(slot, "BEGIN IMMEDIATE")?;
            slot.open = true;
        }
        run(slot, SAVEPOINT)
    }

    /// Ends a write transaction's savepoint, then waits for the `COMMIT` of the
    /// shared transaction: when it returns `Ok`, what the transaction wrote, and
    /// what it read of the transactions before it, is durable.
    async fn end(self: Arc<Self>, mut guard: OwnedMutexGuard<Slot>, how: End) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        let sql = match how {
            End::Commit => RELEASE,
            End::Rollback => ROLLBACK_TO,
        };
        // Until its statement has run the savepoint counts as abandoned.
        guard.dangling = true;
        let ran = run(&mut guard, sql);
        if ran.is_ok() {
            guard.dangling = false;
            guard.released |= how == End::Commit;
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(done);
        }
        drop(guard);
        self.wake.notify_one();
        ran?;
        let outcome = match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(group_failed(message)),
            Err(_) => Err(group_failed(
                "the writer stopped before committing".to_string(),
            )),
        };
        if how == End::Commit && outcome.is_ok() {
            self.stats.transactions.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    /// Runs `f` on an sqlx connection of its own, outside any transaction
    /// (migrations), after committing what is pending; the writer is held
    /// meanwhile, so nothing else writes.
    pub(super) async fn exclusive<T>(
        self: &Arc<Self>,
        f: impl AsyncFnOnce(&mut AnyConnection) -> T,
    ) -> Result<T, Error> {
        let guard = self.flushed().await?;
        if guard.conn.is_none() {
            return Err(closed());
        }
        let mut conn = AnyConnection::connect(&self.url).await?;
        sqlx::raw_sql("PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")
            .execute(&mut conn)
            .await?;
        let out = f(&mut conn).await;
        if let Err(e) = conn.close().await {
            tracing::warn!(error = %e, "closing the SQLite migration connection failed");
        }
        // A migration may have changed the tables the writer's statements read.
        if let Some(writer) = &guard.conn {
            writer.flush_prepared_statement_cache();
        }
        drop(guard);
        Ok(out)
    }

    /// Commits what is pending and closes the connection.
    pub(super) async fn close(self: &Arc<Self>) {
        let Ok(mut guard) = self.flushed().await else {
            return;
        };
        if let Some(conn) = guard.conn.take()
            && let Err((_, e)) = conn.close()
        {
            tracing::warn!(error = %e, "closing the SQLite writer connection failed");
        }
    }

    /// Takes the connection and commits what is pending on it (on a blocking
    /// thread: a `COMMIT` waits for the disk).
    async fn flushed(self: &Arc<Self>) -> Result<OwnedMutexGuard<Slot>, Error> {
        self.flush_then(|guard| guard).await
    }

    /// Takes the connection, commits what is pending on it and hands the
    /// connection to `then`, all on a blocking thread.
    async fn flush_then<T: Send + 'static>(
        self: &Arc<Self>,
        then: impl FnOnce(OwnedMutexGuard<Slot>) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let guard = self.slot.clone().lock_owned().await;
        let group = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let mut guard = guard;
            group.flush(&mut guard);
            then(guard)
        })
        .await
        .map_err(|e| group_failed(e.to_string()))
    }

    /// Undoes the savepoint of a transaction dropped unfinished. If even that
    /// fails, the whole shared transaction is rolled back and its waiters told.
    fn settle(&self, slot: &mut Slot) -> Result<(), Error> {
        if !slot.dangling {
            return Ok(());
        }
        match run(slot, ROLLBACK_TO) {
            Ok(()) => {
                slot.dangling = false;
                Ok(())
            }
            Err(e) => {
                self.abort(slot, &e);
                Err(e)
            }
        }
    }

    /// Ends the shared transaction: commits it and answers every transaction
    /// waiting for it. Blocks for the `fsync`: call it on a blocking thread.
    fn flush(&self, slot: &mut Slot) {
        if self.settle(slot).is_err() {
            return;
        }
        let waiting =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if !slot.open {
            // Transactions wait only inside an open shared transaction, which
            // ends only here or in `abort` (both answer them); never reached.
            answer(waiting, Err("the shared transaction had ended".to_string()));
            return;
        }
        match run(slot, "COMMIT") {
            Ok(()) => {
                slot.open = false;
                if std::mem::take(&mut slot.released) {
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                }
                answer(waiting, Ok(()));
            }
            Err(e) => {
                tracing::error!(error = %e, transactions = waiting.len(), "group commit failed");
                self.pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(waiting);
                self.abort(slot, &e);
            }
        }
    }

    /// Rolls the shared transaction back and fails every transaction in it.
    fn abort(&self, slot: &mut Slot, cause: &Error) {
        if slot.open && run(slot, "ROLLBACK").is_err() {
            tracing::error!("rolling back the shared write transaction failed");
        }
        slot.open = false;
        slot.dangling = false;
        slot.released = false;
        let waiting =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        answer(waiting, Err(cause.to_string()));
    }
}

/// Commits each group once its transactions are in; ends with the group.
async fn committer(group: Weak<Group>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        let Some(group) = group.upgrade() else {
            return;
        };
        // The connection is given back on the blocking thread, as soon as the
        // `COMMIT` returns, not after this task is scheduled again.
        if group.flush_then(drop).await.is_err() {
            tracing::error!("the group committer's blocking task failed");
        }
    }
}

fn answer(waiting: Vec<oneshot::Sender<Result<(), String>>>, result: Result<(), String>) {
    for done in waiting {
        // A caller that stopped waiting has nothing to be told.
        let _ = done.send(result.clone());
    }
}

fn run(slot: &mut Slot, sql: &'static str) -> Result<(), Error> {
    let conn = slot.conn.as_ref().ok_or_else(closed)?;
    conn.execute_batch(sql).map_err(local_exec::database_error)
}

fn closed() -> Error {
    Error::PoolClosed
}

/// The group commit a transaction belonged to failed; the cause was logged.
#[derive(Debug, thiserror::Error)]
#[error("the group commit failed: {0}")]
struct GroupCommitFailed(String);

fn group_failed(message: String) -> Error {
    Error::AnyDriverError(Box::new(GroupCommitFailed(message)))
}

/// Where writes go: the pool (PostgreSQL) or the group's connection (SQLite).
/// As an [`Executor`], each statement is its own durable write transaction.
#[derive(Clone)]
pub struct Writer {
    kind: WriterKind,
}

#[derive(Clone)]
enum WriterKind {
    Pool(AnyPool),
    Group(Arc<Group>),
}

impl Writer {
    /// The pool, on PostgreSQL.
    pub(super) fn as_pool(&self) -> Option<&AnyPool> {
        match &self.kind {
            WriterKind::Pool(pool) => Some(pool),
            WriterKind::Group(_) => None,
        }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            WriterKind::Pool(_) => "Writer(pool)",
            WriterKind::Group(_) => "Writer(group commit)",
        })
    }
}

impl Writer {
    pub(super) fn pool(pool: AnyPool) -> Writer {
        Writer {
            kind: WriterKind::Pool(pool),
        }
    }

    pub(super) fn group(group: Arc<Group>) -> Writer {
        Writer {
            kind: WriterKind::Group(group),
        }
    }

    pub(super) async fn begin(&self) -> Result<WriteTx, Error> {
        let span = if crate::telemetry::tracing_here() {
            tracing::debug_span!("db.transaction")
        } else {
            tracing::Span::none()
        };
        let mut tx = match &self.kind {
            WriterKind::Pool(pool) => WriteTx {
                conn: TxConn(TxKind::Pool(pool.begin().await?)),
                _span: tracing::Span::none(),
            },
            WriterKind::Group(group) => group.begin().await?,
        };
        tx._span = span;
        Ok(tx)
    }

    /// Runs `f` on a connection outside any transaction (migrations).
    pub(super) async fn exclusive<T>(
        &self,
        f: impl AsyncFnOnce(&mut AnyConnection) -> T,
    ) -> Result<T, Error> {
        match &self.kind {
            WriterKind::Pool(pool) => {
                let mut conn = pool.acquire().await?;
                Ok(f(&mut conn).await)
            }
            WriterKind::Group(group) => group.exclusive(f).await,
        }
    }

    pub(super) fn stats(&self) -> Option<CommitStats> {
        match &self.kind {
            WriterKind::Pool(_) => None,
            WriterKind::Group(group) => Some(CommitStats {
                transactions: group.stats.transactions.load(Ordering::Relaxed),
                commits: group.stats.commits.load(Ordering::Relaxed),
            }),
        }
    }

    pub(super) async fn close(&self) {
        match &self.kind {
            WriterKind::Pool(pool) => pool.close().await,
            WriterKind::Group(group) => group.close().await,
        }
    }
}

impl<'c> Executor<'c> for &'c Writer {
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
            WriterKind::Pool(pool) => pool.fetch_many(query),
            WriterKind::Group(group) => local_exec::stream_of(async move {
                let mut tx = group.begin().await?;
                let items = tx.fetch_many(query).try_collect().await;
                tx.finish(items).await
            }),
        };
        timing::stream(timing::Role::Write, stream)
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<AnyRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        let row = match &self.kind {
            WriterKind::Pool(pool) => pool.fetch_optional(query),
            WriterKind::Group(group) => Box::pin(async move {
                let mut tx = group.begin().await?;
                let row = tx.fetch_optional(query).await;
                tx.finish(row).await
            }),
        };
        timing::future(timing::Role::Write, row)
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
            WriterKind::Pool(pool) => pool.prepare_with(sql, parameters),
            WriterKind::Group(_) => {
                Box::pin(async { Err(local_exec::unsupported("preparing a statement")) })
            }
        }
    }

    fn describe<'e>(self, sql: sqlx::SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<Any>, Error>>
    where
        'c: 'e,
    {
        match &self.kind {
            WriterKind::Pool(pool) => pool.describe(sql),
            WriterKind::Group(_) => {
                Box::pin(async { Err(local_exec::unsupported("describing a statement")) })
            }
        }
    }
}
