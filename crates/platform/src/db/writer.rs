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
//! row through the read pool finds it. End a transaction that returns success
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

/// The savepoint each write transaction runs in on SQLite (they never overlap).
const SAVEPOINT: &str = "SAVEPOINT agora_write";
const RELEASE: &str = "RELEASE agora_write";
const ROLLBACK_TO: &str = "ROLLBACK TO agora_write; RELEASE agora_write";

/// A write transaction. Statements run on it through `&mut *tx` (it dereferences
/// to the connection); [`WriteTx::commit`] makes them durable, and dropping it
/// without committing undoes them.
pub struct WriteTx {
    kind: TxKind,
}

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
        f.write_str(match self.kind {
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
        match std::mem::replace(&mut self.kind, TxKind::Finished) {
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
        match std::mem::replace(&mut self.kind, TxKind::Finished) {
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
            std::mem::replace(&mut self.kind, TxKind::Finished)
        {
            slot.dangling = true;
            drop(slot);
            group.wake.notify_one();
        }
    }
}

impl Deref for WriteTx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        match &self.kind {
            TxKind::Pool(tx) => tx,
            TxKind::Group { slot, .. } => slot
                .conn
                .as_ref()
                .unwrap_or_else(|| unreachable!("a live write transaction holds the connection")),
            TxKind::Finished => unreachable!("a finished write transaction is consumed"),
        }
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match &mut self.kind {
            TxKind::Pool(tx) => tx,
            TxKind::Group { slot, .. } => slot
                .conn
                .as_mut()
                .unwrap_or_else(|| unreachable!("a live write transaction holds the connection")),
            TxKind::Finished => unreachable!("a finished write transaction is consumed"),
        }
    }
}

/// The one SQLite writer connection and the state of its shared transaction.
pub(super) struct Slot {
    /// `None` once the database is closed.
    conn: Option<AnyConnection>,
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
    /// The group over `conn`, with its committer task.
    pub(super) fn start(conn: AnyConnection, acquire_timeout: Duration) -> Arc<Group> {
        let wake = Arc::new(Notify::new());
        let group = Arc::new(Group {
            slot: Arc::new(Mutex::new(Slot {
                conn: Some(conn),
                open: false,
                dangling: false,
                released: false,
            })),
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
    /// The statements that open it run in a task of their own, as do those that
    /// end it ([`Group::end`]): sqlx runs a statement to its end even when its
    /// caller stops waiting (a cancelled request), so a caller must never be able
    /// to stop between a statement and the bookkeeping of what it did. A
    /// transaction that nobody takes any more is dropped, which marks it for
    /// undoing like any abandoned one.
    pub(super) async fn begin(self: &Arc<Self>) -> Result<WriteTx, Error> {
        let guard = tokio::time::timeout(self.acquire_timeout, self.slot.clone().lock_owned())
            .await
            .map_err(|_| Error::PoolTimedOut)?;
        let group = Arc::clone(self);
        let opened = tokio::spawn(async move {
            let mut guard = guard;
            match group.open_savepoint(&mut guard).await {
                Ok(()) => Ok(WriteTx {
                    kind: TxKind::Group { slot: guard, group },
                }),
                Err(e) => {
                    // The shared transaction may be open with nobody to end it.
                    drop(guard);
                    group.wake.notify_one();
                    Err(e)
                }
            }
        });
        opened.await.map_err(|e| group_failed(e.to_string()))?
    }

    async fn open_savepoint(&self, slot: &mut Slot) -> Result<(), Error> {
        self.settle(slot).await?;
        if !slot.open {
            run(slot, "BEGIN IMMEDIATE").await?;
            slot.open = true;
        }
        run(slot, SAVEPOINT).await
    }

    /// Ends a write transaction's savepoint, then waits for the `COMMIT` of the
    /// shared transaction: when it returns `Ok`, what the transaction wrote, and
    /// what it read of the transactions before it, is durable.
    async fn end(self: Arc<Self>, guard: OwnedMutexGuard<Slot>, how: End) -> Result<(), Error> {
        let (done, answer) = oneshot::channel();
        let group = Arc::clone(&self);
        // In a task of its own, so that it always finishes (see `begin`).
        let ended = tokio::spawn(async move {
            let mut guard = guard;
            // Until its statement has run the savepoint counts as abandoned.
            guard.dangling = true;
            let sql = match how {
                End::Commit => RELEASE,
                End::Rollback => ROLLBACK_TO,
            };
            let ran = run(&mut guard, sql).await;
            if ran.is_ok() {
                guard.dangling = false;
                guard.released |= how == End::Commit;
                group
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(done);
            }
            drop(guard);
            group.wake.notify_one();
            ran
        });
        ended.await.map_err(|e| group_failed(e.to_string()))??;
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

    /// Runs `f` with the connection outside any transaction (migrations), after
    /// committing what is pending.
    pub(super) async fn exclusive<T>(
        &self,
        f: impl AsyncFnOnce(&mut AnyConnection) -> T,
    ) -> Result<T, Error> {
        let mut guard = self.slot.clone().lock_owned().await;
        self.flush(&mut guard).await;
        let conn = guard.conn.as_mut().ok_or_else(closed)?;
        Ok(f(conn).await)
    }

    /// Commits what is pending and closes the connection.
    pub(super) async fn close(&self) {
        let mut guard = self.slot.clone().lock_owned().await;
        self.flush(&mut guard).await;
        if let Some(conn) = guard.conn.take()
            && let Err(e) = conn.close().await
        {
            tracing::warn!(error = %e, "closing the SQLite writer connection failed");
        }
    }

    /// Undoes the savepoint of a transaction dropped unfinished. If even that
    /// fails, the whole shared transaction is rolled back and its waiters told.
    async fn settle(&self, slot: &mut Slot) -> Result<(), Error> {
        if !slot.dangling {
            return Ok(());
        }
        match run(slot, ROLLBACK_TO).await {
            Ok(()) => {
                slot.dangling = false;
                Ok(())
            }
            Err(e) => {
                self.abort(slot, &e).await;
                Err(e)
            }
        }
    }

    /// Ends the shared transaction: commits it and answers every transaction
    /// waiting for it.
    async fn flush(&self, slot: &mut Slot) {
        if self.settle(slot).await.is_err() {
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
        match run(slot, "COMMIT").await {
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
                self.abort(slot, &e).await;
            }
        }
    }

    /// Rolls the shared transaction back and fails every transaction in it.
    async fn abort(&self, slot: &mut Slot, cause: &Error) {
        if slot.open && run(slot, "ROLLBACK").await.is_err() {
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
        let mut guard = group.slot.clone().lock_owned().await;
        group.flush(&mut guard).await;
    }
}

fn answer(waiting: Vec<oneshot::Sender<Result<(), String>>>, result: Result<(), String>) {
    for done in waiting {
        // A caller that stopped waiting has nothing to be told.
        let _ = done.send(result.clone());
    }
}

async fn run(slot: &mut Slot, sql: &'static str) -> Result<(), Error> {
    let conn = slot.conn.as_mut().ok_or_else(closed)?;
    sqlx::raw_sql(sql).execute(conn).await.map(drop)
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
        match &self.kind {
            WriterKind::Pool(pool) => Ok(WriteTx {
                kind: TxKind::Pool(pool.begin().await?),
            }),
            WriterKind::Group(group) => group.begin().await,
        }
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
        match &self.kind {
            WriterKind::Pool(pool) => pool.fetch_many(query),
            WriterKind::Group(group) => futures_util::stream::once(async move {
                let mut tx = group.begin().await?;
                let items: Result<Vec<_>, _> = tx.fetch_many(query).try_collect().await;
                let items = tx.finish(items).await?;
                Ok::<_, Error>(futures_util::stream::iter(items.into_iter().map(Ok)))
            })
            .try_flatten()
            .boxed(),
        }
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<AnyRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Any>,
    {
        match &self.kind {
            WriterKind::Pool(pool) => pool.fetch_optional(query),
            WriterKind::Group(group) => Box::pin(async move {
                let mut tx = group.begin().await?;
                let row = tx.fetch_optional(query).await;
                tx.finish(row).await
            }),
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
            WriterKind::Pool(pool) => pool.prepare_with(sql, parameters),
            WriterKind::Group(group) => Box::pin(async move {
                let mut tx = group.begin().await?;
                let statement = tx.prepare_with(sql, parameters).await?;
                tx.rollback().await?;
                Ok(statement)
            }),
        }
    }

    fn describe<'e>(self, sql: sqlx::SqlStr) -> BoxFuture<'e, Result<sqlx::Describe<Any>, Error>>
    where
        'c: 'e,
    {
        match &self.kind {
            WriterKind::Pool(pool) => pool.describe(sql),
            WriterKind::Group(group) => Box::pin(async move {
                let mut tx = group.begin().await?;
                let described = tx.describe(sql).await?;
                tx.rollback().await?;
                Ok(described)
            }),
        }
    }
}
