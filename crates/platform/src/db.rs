//! The database: sqlx queries over SQLite or PostgreSQL, one SQL text for both.
//!
//! Conventions every module follows: `$1` placeholders, TEXT UUID ids, BIGINT money
//! in minor units, BIGINT epoch-millisecond timestamps, INTEGER 0/1 flags (the Any
//! driver has no portable boolean), JSON as TEXT.
//!
//! SQLite runs in WAL mode with `synchronous=FULL` (a committed write survives power
//! loss), a busy timeout and foreign keys on. Writes go through exactly one
//! connection, so writers queue in the application instead of fighting over the
//! file lock; their transactions are committed in groups, one `fsync` for many
//! (ADR 0004, [`WriteTx`]). The shared transaction starts with `BEGIN IMMEDIATE`
//! so another process (a CLI command beside the server) waits its turn rather than
//! failing. Reads go through separate read-only connections, on the calling
//! thread ([`Reader`], ADR 0006). On PostgreSQL both are the same pool.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyConnection, Arguments, AssertSqlSafe, Encode, Row, Type};

use crate::config::Config;

mod local_exec;
mod reader;
mod timing;
mod writer;

use reader::ReadConnections;
pub use reader::Reader;
pub use writer::{CommitStats, TxConn, WriteTx, Writer};

/// Which engine is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// The database handle every store holds. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Database {
    /// The only connection allowed to write, with group commit (SQLite), or the
    /// pool (PostgreSQL).
    writer: Writer,
    /// Read-only connections on the calling thread (SQLite), or the same pool
    /// (PostgreSQL).
    reader: Reader,
    /// The same connections, for reads that may visit many rows.
    scan_reader: Reader,
    backend: Backend,
}

/// One module's migrations, for each engine, and the table recording which ran.
#[derive(Debug)]
pub struct ModuleMigrations {
    /// The module's name; its history lives in `<module>_schema_migrations`.
    pub module: &'static str,
    /// Migrations for SQLite.
    pub sqlite: &'static Migrator,
    /// Migrations for PostgreSQL.
    pub postgres: &'static Migrator,
}

impl Database {
    /// Connects with the configuration's database URL, creating the SQLite file
    /// (and the data directory) when needed.
    pub async fn connect(config: &Config) -> anyhow::Result<Database> {
        sqlx::any::install_default_drivers();
        let url = config.database_url();
        let url = url.as_str();
        let acquire_timeout = Duration::from_millis(config.database.acquire_timeout_ms);
        if url.starts_with("sqlite:") {
            let file = sqlite_file(url).context("The SQLite database URL names no file")?;
            if let Some(dir) = file.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).with_context(|| {
                    format!("Failed to create the data directory {}", dir.display())
                })?;
            }
            let conn = open_writer(file)
                .with_context(|| format!("Failed to open the SQLite database {url}"))?;
            let writer = Writer::group(writer::Group::start(conn, url, acquire_timeout));
            // Opened after the writer has created the file and switched it to WAL.
            let reads = ReadConnections::open(file, config.database.max_connections as usize)
                .with_context(|| format!("Failed to open the SQLite database {url} for reading"))?;
            let reader = Reader::local(Arc::new(reads));
            Ok(Database {
                writer,
                scan_reader: reader
                    .offloaded(config.database.max_connections as usize, acquire_timeout),
                reader,
                backend: Backend::Sqlite,
            })
        } else {
            let pool = AnyPoolOptions::new()
                .max_connections(config.database.max_connections)
                .acquire_timeout(acquire_timeout)
                .connect(url)
                .await
                .context("Failed to connect to PostgreSQL")?;
            let reader = Reader::pool(pool.clone());
            Ok(Database {
                writer: Writer::pool(pool),
                scan_reader: reader
                    .offloaded(config.database.max_connections as usize, acquire_timeout),
                reader,
                backend: Backend::Postgres,
            })
        }
    }

    /// The engine in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where reads go. A read sees every commit that finished before it
    /// started, this request's own included (SQLite in WAL mode; the PostgreSQL
    /// primary), so reads go here and leave the one SQLite writer connection to
    /// writes. On SQLite a read runs on the calling thread (ADR 0006), so it
    /// must be bounded: an index lookup or a page, never a whole table.
    /// (Read replicas, when they come, will need a primary-only reader for
    /// read-your-writes.)
    pub fn reader(&self) -> &Reader {
        &self.reader
    }

    /// Where reads go that may visit many rows to fill a page: lists with
    /// filters that no index serves, text search. On SQLite they run on a
    /// blocking thread (ADR 0006); on PostgreSQL this is [`Database::reader`].
    pub fn scan_reader(&self) -> &Reader {
        &self.scan_reader
    }

    /// Where single-statement writes go: as an executor, each statement is its
    /// own durable write transaction. Several statements that must succeed or
    /// fail together go in a [`Database::begin`] transaction.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Reads the row whose key is `key` (bound to `$1` in `sql`), if any, and maps it.
    ///
    /// Only for reads whose cost is one index lookup: on SQLite they run on the
    /// calling thread, without the driver's thread hop (ADR 0002).
    pub async fn fetch_by_key<T, E>(
        &self,
        sql: &'static str,
        key: &str,
        map: impl Fn(&dyn Columns) -> Result<T, E>,
    ) -> Result<Option<T>, E>
    where
        E: From<sqlx::Error>,
    {
        match self.reader.connections() {
            Some(reads) => {
                // (The pool's branch below is timed by the reader.)
                let _timer = timing::Timer::query(timing::Role::Read);
                let read = || -> rusqlite::Result<_> {
                    let Some(conn) = reads.lease()? else {
                        return Ok(None);
                    };
                    let mut statement = conn.prepare_cached(sql)?;
                    let mut rows = statement.query([key])?;
                    Ok(Some(rows.next()?.map(|row| map(row))))
                };
                read()
                    .map_err(driver_error)?
                    .ok_or(sqlx::Error::PoolClosed)?
                    .transpose()
            }
            None => {
                let row = sqlx::query(sql)
                    .bind(key)
                    .fetch_optional(&self.reader)
                    .await?;
                row.as_ref().map(|row| map(row)).transpose()
            }
        }
    }

    /// The group commit's counts (SQLite; `None` on PostgreSQL, whose server
    /// groups commits itself).
    pub fn commit_stats(&self) -> Option<CommitStats> {
        self.writer.stats()
    }

    /// Begins a write transaction (on SQLite, a member of the next group commit).
    pub async fn begin(&self) -> Result<WriteTx, sqlx::Error> {
        self.writer.begin().await
    }

    /// Runs a module's pending migrations, recording them in its own history table.
    pub async fn migrate(&self, migrations: &ModuleMigrations) -> anyhow::Result<()> {
        let source = match self.backend {
            Backend::Sqlite => migrations.sqlite,
            Backend::Postgres => migrations.postgres,
        };
        let mut migrator = Migrator {
            migrations: source.migrations.clone(),
            ..Migrator::DEFAULT
        };
        migrator.dangerous_set_table_name(format!("{}_schema_migrations", migrations.module));
        self.writer
            .exclusive(async |conn: &mut AnyConnection| migrator.run(conn).await)
            .await
            .map_err(anyhow::Error::from)
            .and_then(|ran| ran.map_err(anyhow::Error::from))
            .with_context(|| format!("Failed to run the {} migrations", migrations.module))
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map(drop)
    }

    /// Closes every connection, waiting for those in use.
    pub async fn close(&self) {
        self.scan_reader.close().await;
        self.reader.close().await;
        self.writer.close().await;
    }
}

/// A row's columns by position, read the same way from either driver, so that a
/// store maps a row to its domain type in one place.
pub trait Columns {
    /// A non-null TEXT column.
    fn text(&self, index: usize) -> Result<String, sqlx::Error>;
    /// A nullable TEXT column.
    fn optional_text(&self, index: usize) -> Result<Option<String>, sqlx::Error>;
    /// A non-null INTEGER/BIGINT column.
    fn integer(&self, index: usize) -> Result<i64, sqlx::Error>;
    /// A nullable INTEGER/BIGINT column.
    fn optional_integer(&self, index: usize) -> Result<Option<i64>, sqlx::Error>;
}

impl Columns for AnyRow {
    fn text(&self, index: usize) -> Result<String, sqlx::Error> {
        self.try_get(index)
    }

    fn optional_text(&self, index: usize) -> Result<Option<String>, sqlx::Error> {
        self.try_get(index)
    }

    fn integer(&self, index: usize) -> Result<i64, sqlx::Error> {
        self.try_get(index)
    }

    fn optional_integer(&self, index: usize) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(index)
    }
}

impl Columns for rusqlite::Row<'_> {
    fn text(&self, index: usize) -> Result<String, sqlx::Error> {
        self.get(index).map_err(|e| column_error(index, e))
    }

    fn optional_text(&self, index: usize) -> Result<Option<String>, sqlx::Error> {
        self.get(index).map_err(|e| column_error(index, e))
    }

    fn integer(&self, index: usize) -> Result<i64, sqlx::Error> {
        self.get(index).map_err(|e| column_error(index, e))
    }

    fn optional_integer(&self, index: usize) -> Result<Option<i64>, sqlx::Error> {
        self.get(index).map_err(|e| column_error(index, e))
    }
}

fn column_error(index: usize, source: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: index.to_string(),
        source: Box::new(source),
    }
}

fn driver_error(e: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::AnyDriverError(Box::new(e))
}

/// The connections' use, read at each metrics scrape: on PostgreSQL the
/// pool's open and idle connections (SQLite's one writer and calling-thread
/// reads have no pool to watch).
#[async_trait::async_trait]
impl crate::metrics::Gauges for Database {
    async fn record(&self) {
        if let Some(pool) = self.writer.as_pool() {
            let (open, idle) = (pool.size(), pool.num_idle() as u32);
            ::metrics::gauge!("agora_db_connections", "state" => "idle").set(f64::from(idle));
            ::metrics::gauge!("agora_db_connections", "state" => "in_use")
                .set(f64::from(open.saturating_sub(idle)));
        }
    }
}

/// The one SQLite writer connection (ADR 0005): it creates the file, puts it in
/// WAL mode with durable commits, and keeps the statements of every store
/// prepared.
fn open_writer(file: &Path) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open_with_flags(
        file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )?;
    conn.busy_timeout(writer::BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(WRITER_STATEMENT_CACHE);
    Ok(conn)
}

/// Prepared statements the writer keeps: more than every module's write
/// statements together, so none is parsed again under load.
const WRITER_STATEMENT_CACHE: usize = 512;

fn sqlite_file(url: &str) -> Option<&Path> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| Path::new(path))
}

/// A dynamic query with `$n` placeholders, for the few queries whose shape depends
/// on the request (optional filters, sort orders).
///
/// sqlx's own `QueryBuilder` cannot serve here: over the Any driver it writes `?`
/// placeholders, which PostgreSQL refuses. Values are always bound, never pasted
/// into the text.
#[derive(Default)]
pub struct SqlBuilder {
    sql: String,
    args: AnyArguments,
    binds: usize,
    /// The text holds a list too long to keep prepared (see [`Self::push_list`]).
    one_off: bool,
}

/// The longest list (rows of a multi-row insert, keys of an `IN`) whose
/// statement is kept in the statement caches. Every length is a statement of
/// its own: short lists are the common shapes and stay prepared; a longer one
/// is parsed for its one use rather than pushing the hot statements out of
/// the caches (ADR 0005).
pub const PREPARED_LIST_LEN: usize = 8;

impl SqlBuilder {
    /// Starts with a fixed piece of SQL.
    pub fn new(sql: &'static str) -> Self {
        Self {
            sql: sql.to_string(),
            ..Self::default()
        }
    }

    /// Appends fixed SQL text. Only `'static` text: values go through [`Self::bind`].
    pub fn push(&mut self, sql: &'static str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends a placeholder and binds `value` to it.
    pub fn bind<'t, T>(&mut self, value: T) -> Result<&mut Self, sqlx::Error>
    where
        T: Encode<'t, Any> + Type<Any> + 't,
    {
        self.binds += 1;
        let _ = write!(self.sql, "${}", self.binds);
        self.args.add(value).map_err(sqlx::Error::Encode)?;
        Ok(self)
    }

    /// Appends `items` separated by `, `, each written by `item` (a row's
    /// `(…)` of a multi-row insert, a key of an `IN (…)` list). A list longer
    /// than [`PREPARED_LIST_LEN`] makes the query a one-off: not kept prepared.
    pub fn push_list<I, F>(&mut self, items: I, mut item: F) -> Result<&mut Self, sqlx::Error>
    where
        I: IntoIterator,
        F: FnMut(&mut Self, I::Item) -> Result<(), sqlx::Error>,
    {
        let mut count = 0;
        for value in items {
            if count > 0 {
                self.sql.push_str(", ");
            }
            item(self, value)?;
            count += 1;
        }
        self.one_off |= count > PREPARED_LIST_LEN;
        Ok(self)
    }

    /// The SQL text so far (for tests and logs).
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The finished query.
    pub fn build(self) -> sqlx::query::Query<'static, Any, AnyArguments> {
        // Safe: the text is made only of 'static fragments and `$n` placeholders.
        sqlx::query_with(AssertSqlSafe(self.sql), self.args).persistent(!self.one_off)
    }
}

/// The API's answer to a database failure that no domain rule explains, in
/// `module`: every connection busy for the whole acquire timeout is overload
/// (`SERVICE_NOT_READY`, 503), anything else a fault (`INTERNAL_ERROR`, with the
/// cause kept for the log only).
pub fn database_failure(module: &str, e: &sqlx::Error) -> agora_kernel::ApiError {
    use agora_kernel::{ApiError, ErrorCode};
    match e {
        sqlx::Error::PoolTimedOut => ApiError::from_code(ErrorCode::ServiceNotReady)
            .with_details(serde_json::json!({ "checks": { "database": "busy" } }))
            .with_cause(format!(
                "{module}: timed out waiting for a database connection"
            )),
        e => ApiError::internal(format!("{module} database error: {e}")),
    }
}

/// A broken integrity constraint, as reported by either engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// A UNIQUE constraint: PostgreSQL's constraint name, or SQLite's
    /// `table.column` list.
    Unique(String),
    /// A FOREIGN KEY constraint (SQLite does not say which).
    ForeignKey(Option<String>),
    /// A CHECK constraint.
    Check(Option<String>),
}

impl Violation {
    /// Whether this is the UNIQUE constraint `name` (PostgreSQL) on `columns`
    /// (SQLite's `table.column` text).
    pub fn is_unique(&self, name: &str, columns: &str) -> bool {
        matches!(self, Violation::Unique(v) if v == name || v == columns)
    }
}

/// Classifies a database error as a constraint violation, so that stores can let
/// the database enforce a rule and turn its refusal into a domain error.
pub fn violation(err: &sqlx::Error) -> Option<Violation> {
    let db = err.as_database_error()?;
    let constraint = db.constraint().map(str::to_string);
    if db.is_unique_violation() {
        let name = constraint.or_else(|| {
            // SQLite: "UNIQUE constraint failed: catalog_products.sku"
            db.message()
                .split_once("UNIQUE constraint failed: ")
                .map(|(_, cols)| cols.to_string())
        });
        return Some(Violation::Unique(name.unwrap_or_default()));
    }
    if db.is_foreign_key_violation() {
        return Some(Violation::ForeignKey(constraint));
    }
    if db.is_check_violation() {
        return Some(Violation::Check(constraint));
    }
    None
}

/// A `LIKE` pattern matching `text` anywhere, with `%`, `_` and `\` escaped
/// (use with `ESCAPE '\'`).
pub fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDatabase;

    fn note(row: &dyn Columns) -> Result<(i64, Option<String>), sqlx::Error> {
        Ok((row.integer(1)?, row.optional_text(2)?))
    }

    const NOTE_BY_ID: &str = "SELECT id, n, note FROM notes WHERE id = $1";

    /// Runs on SQLite (the thread-local path) and, with `AGORA_TEST_POSTGRES_URL`,
    /// on PostgreSQL (the pool path).
    #[tokio::test]
    async fn reads_by_key_see_the_latest_commit_and_map_rows() -> anyhow::Result<()> {
        let test = TestDatabase::new().await?;
        let db = &test.db;
        sqlx::raw_sql("CREATE TABLE notes (id TEXT PRIMARY KEY, n BIGINT NOT NULL, note TEXT)")
            .execute(db.writer())
            .await?;
        assert_eq!(db.fetch_by_key(NOTE_BY_ID, "a", note).await?, None);

        sqlx::query("INSERT INTO notes (id, n, note) VALUES ($1, $2, NULL)")
            .bind("a")
            .bind(7_i64)
            .execute(db.writer())
            .await?;
        assert_eq!(
            db.fetch_by_key(NOTE_BY_ID, "a", note).await?,
            Some((7, None))
        );

        sqlx::query("UPDATE notes SET n = n + 1, note = $1 WHERE id = $2")
            .bind("changed")
            .bind("a")
            .execute(db.writer())
            .await?;
        assert_eq!(
            db.fetch_by_key(NOTE_BY_ID, "a", note).await?,
            Some((8, Some("changed".to_string())))
        );
        Ok(())
    }

    /// A fresh database with a table `notes` for the writer's tests.
    async fn with_notes() -> anyhow::Result<TestDatabase> {
        let test = TestDatabase::new().await?;
        sqlx::raw_sql(
            "CREATE TABLE notes (id TEXT PRIMARY KEY, n BIGINT NOT NULL UNIQUE, note TEXT)",
        )
        .execute(test.db.writer())
        .await?;
        Ok(test)
    }

    async fn notes(db: &Database) -> anyhow::Result<Vec<i64>> {
        Ok(sqlx::query_scalar("SELECT n FROM notes ORDER BY n")
            .fetch_all(db.reader())
            .await?)
    }

    async fn insert_note(tx: &mut WriteTx, n: i64) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO notes (id, n) VALUES ($1, $2)")
            .bind(format!("n{n}"))
            .bind(n)
            .execute(&mut **tx)
            .await
            .map(drop)
    }

    /// Concurrent write transactions: each commits (or not) on its own, a commit
    /// is visible to readers as soon as it returns, and on SQLite they share
    /// `COMMIT`s (one `fsync` for many).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_transactions_commit_alone_and_share_fsyncs() -> anyhow::Result<()> {
        let test = with_notes().await?;
        let db = test.db.clone();
        let before = db.commit_stats();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..60_i64 {
            let db = db.clone();
            tasks.spawn(async move {
                let mut tx = db.begin().await?;
                insert_note(&mut tx, n).await?;
                match n % 3 {
                    // Committed: readable the moment commit returns.
                    0 => {
                        tx.commit().await?;
                        let seen: Option<i64> =
                            sqlx::query_scalar("SELECT n FROM notes WHERE n = $1")
                                .bind(n)
                                .fetch_optional(db.reader())
                                .await?;
                        anyhow::ensure!(seen == Some(n), "commit of {n} not visible");
                    }
                    // Rolled back.
                    1 => tx.rollback().await?,
                    // Dropped mid-way, as on an error or a cancelled request.
                    _ => {
                        insert_note(&mut tx, 1000 + n).await?;
                        drop(tx);
                    }
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let expected: Vec<i64> = (0..60).filter(|n| n % 3 == 0).collect();
        assert_eq!(notes(&db).await?, expected);
        if let (Some(before), Some(after)) = (before, db.commit_stats()) {
            let transactions = after.transactions - before.transactions;
            let commits = after.commits - before.commits;
            assert_eq!(transactions, 20, "committed transactions");
            assert!(commits >= 1 && commits <= transactions, "{commits} commits");
        }
        Ok(())
    }

    /// A transaction that loses a race for a key and rolls back can read the
    /// winner's row through the reader at once (on SQLite the winner may still
    /// be waiting for its group's `COMMIT` when the loser sees the conflict).
    #[tokio::test]
    async fn the_loser_of_a_race_for_a_key_reads_the_winner_after_rollback() -> anyhow::Result<()> {
        let test = with_notes().await?;
        let db = test.db.clone();
        let mut winner = db.begin().await?;
        insert_note(&mut winner, 1).await?;
        // The loser queues for the writer before the winner commits, so it runs
        // before the group's COMMIT.
        let loser = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin().await?;
                let taken = insert_note(&mut tx, 1).await;
                anyhow::ensure!(
                    matches!(
                        taken.as_ref().map_err(violation),
                        Err(Some(Violation::Unique(_)))
                    ),
                    "{taken:?}"
                );
                tx.rollback().await?;
                notes(&db).await
            }
        });
        tokio::task::yield_now().await;
        let committed = tokio::spawn(winner.commit());
        assert_eq!(loser.await??, vec![1], "the loser sees the winner's row");
        committed.await??;
        Ok(())
    }

    /// Requests are cancelled at any point of a transaction (timeouts, clients
    /// that go away): every transaction told committed is written, and the
    /// writer goes on working.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_transactions_lose_nothing_that_was_committed() -> anyhow::Result<()> {
        let test = with_notes().await?;
        let db = test.db.clone();
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..1200_i64 {
            let db = db.clone();
            tasks.spawn(async move {
                let attempt = async {
                    let mut tx = db.begin().await?;
                    insert_note(&mut tx, n).await?;
                    tx.commit().await
                };
                // Cut short at every stage: before the savepoint, mid-statement,
                // during the release, while waiting for the group's COMMIT; one
                // in twelve runs to its end.
                if n % 12 == 11 {
                    return attempt.await.ok().map(|()| n);
                }
                let budget = Duration::from_micros(u64::try_from(n % 12).unwrap_or(0) * 75);
                matches!(tokio::time::timeout(budget, attempt).await, Ok(Ok(()))).then_some(n)
            });
        }
        let committed: Vec<i64> = tasks.join_all().await.into_iter().flatten().collect();
        anyhow::ensure!(!committed.is_empty(), "some transactions got through");
        let mut after = db.begin().await?;
        insert_note(&mut after, 10_000).await?;
        after.commit().await?;
        let stored = notes(&db).await?;
        let lost: Vec<&i64> = committed.iter().filter(|n| !stored.contains(n)).collect();
        assert!(lost.is_empty(), "told committed but not written: {lost:?}");
        assert!(stored.contains(&10_000), "the writer goes on");
        Ok(())
    }

    /// A statement that fails inside a transaction fails that transaction only:
    /// the ones committed around it keep their writes.
    #[tokio::test]
    async fn a_failed_transaction_leaves_its_neighbours_alone() -> anyhow::Result<()> {
        let test = with_notes().await?;
        let db = &test.db;
        let mut first = db.begin().await?;
        insert_note(&mut first, 1).await?;
        let first = tokio::spawn(first.commit());

        let mut failing = db.begin().await?;
        insert_note(&mut failing, 2).await?;
        let duplicate = insert_note(&mut failing, 1).await;
        assert!(
            matches!(
                duplicate.as_ref().map_err(violation),
                Err(Some(Violation::Unique(_)))
            ),
            "{duplicate:?}"
        );
        drop(failing);

        let mut third = db.begin().await?;
        insert_note(&mut third, 3).await?;
        third.commit().await?;
        first.await??;
        assert_eq!(notes(db).await?, vec![1, 3]);
        Ok(())
    }

    /// What commit reported written is on disk: a new connection to the same
    /// database, after the old one closed, reads it.
    #[tokio::test]
    async fn committed_writes_outlive_the_connection() -> anyhow::Result<()> {
        let test = with_notes().await?;
        let mut tx = test.db.begin().await?;
        insert_note(&mut tx, 7).await?;
        tx.commit().await?;
        sqlx::query("UPDATE notes SET note = $1 WHERE n = $2")
            .bind("single statement")
            .bind(7_i64)
            .execute(test.db.writer())
            .await?;
        test.db.close().await;

        let reopened = Database::connect(&test.config).await?;
        let row: (i64, Option<String>) = sqlx::query_as("SELECT n, note FROM notes")
            .fetch_one(reopened.reader())
            .await?;
        assert_eq!(row, (7, Some("single statement".to_string())));
        reopened.close().await;
        Ok(())
    }

    /// On SQLite a constraint checked only at COMMIT (a deferred foreign key)
    /// fails the whole group it is in: every transaction of it gets the error and
    /// none is written. (Agora's schemas have no deferred constraints; see ADR
    /// 0004.)
    #[tokio::test]
    async fn a_failed_group_commit_fails_every_transaction_in_it() -> anyhow::Result<()> {
        let test = TestDatabase::new().await?;
        let db = &test.db;
        if db.backend() != Backend::Sqlite {
            return Ok(());
        }
        sqlx::raw_sql(
            "CREATE TABLE parents (id TEXT PRIMARY KEY); \
             CREATE TABLE notes (id TEXT PRIMARY KEY, n BIGINT NOT NULL UNIQUE, \
               note TEXT REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED);",
        )
        .execute(db.writer())
        .await?;
        // Both join the group before the committer gets the connection, which
        // the second transaction holds while the first waits for the commit.
        let mut good = db.begin().await?;
        insert_note(&mut good, 1).await?;
        let good = tokio::spawn(good.commit());
        let mut orphan = db.begin().await?;
        sqlx::query("INSERT INTO notes (id, n, note) VALUES ('n2', 2, 'no such parent')")
            .execute(&mut *orphan)
            .await?;
        let orphan = orphan.commit().await;
        assert!(orphan.is_err(), "{orphan:?}");
        assert!(good.await?.is_err());
        assert_eq!(notes(db).await?, Vec::<i64>::new());

        // The writer goes on.
        let mut next = db.begin().await?;
        insert_note(&mut next, 3).await?;
        next.commit().await?;
        assert_eq!(notes(db).await?, vec![3]);
        Ok(())
    }

    /// The SQLite writer runs statements itself (ADR 0005); stores must not see
    /// a difference from sqlx's drivers.
    #[tokio::test]
    async fn write_transactions_answer_queries_as_the_drivers_do() -> anyhow::Result<()> {
        let test = with_notes().await?;
        let db = &test.db;
        let mut tx = db.begin().await?;
        // A numbered parameter takes its argument wherever, and however often, it appears.
        let inserted = sqlx::query("INSERT INTO notes (id, n, note) VALUES ($2, $1, $2)")
            .bind(7_i64)
            .bind("x")
            .execute(&mut *tx)
            .await?;
        assert_eq!(inserted.rows_affected(), 1);
        let row = sqlx::query("UPDATE notes SET note = NULL WHERE n = $1 RETURNING id, n, note")
            .bind(7_i32)
            .fetch_one(&mut *tx)
            .await?;
        assert_eq!(row.try_get::<String, _>("id")?, "x");
        assert_eq!(row.try_get::<i32, _>(1)?, 7);
        assert_eq!(row.try_get::<Option<String>, _>("note")?, None);
        assert!(row.try_get::<String, _>("missing").is_err());
        let none = sqlx::query("SELECT id FROM notes WHERE n = $1")
            .bind(8_i64)
            .fetch_optional(&mut *tx)
            .await?;
        assert!(none.is_none());
        let updated = sqlx::query("UPDATE notes SET note = $1 WHERE n > $2")
            .bind(Some("y"))
            .bind(0_i64)
            .execute(&mut *tx)
            .await?;
        assert_eq!(updated.rows_affected(), 1);
        if db.backend() == Backend::Sqlite {
            // A read reports no changes, not the count of the write before it.
            let read = sqlx::query("SELECT n FROM notes").execute(&mut *tx).await?;
            assert_eq!(read.rows_affected(), 0);
        }
        tx.commit().await?;
        assert_eq!(notes(db).await?, [7]);

        // A parameter without its argument is an error, not a panic.
        let mut tx = db.begin().await?;
        let missing_argument = sqlx::query("SELECT id FROM notes WHERE n = $1 AND id = $2")
            .bind(7_i64)
            .fetch_optional(&mut *tx)
            .await;
        assert!(
            missing_argument.is_err(),
            "a parameter without its argument"
        );
        let named = sqlx::query("SELECT id FROM notes WHERE n = :n")
            .bind(7_i64)
            .fetch_optional(&mut *tx)
            .await;
        assert!(named.is_err(), "a named parameter");
        drop(tx);

        // A broken constraint is the database error `violation` recognizes.
        let mut tx = db.begin().await?;
        let duplicate = insert_note(&mut tx, 7).await.expect_err("n is unique");
        drop(tx);
        assert!(
            violation(&duplicate).is_some_and(|v| v.is_unique("notes_n_key", "notes.n")),
            "{duplicate:?}"
        );
        let value = sqlx::query_scalar::<_, String>("SELECT note FROM notes WHERE n = 7")
            .fetch_one(db.reader())
            .await?;
        assert_eq!(value, "y");
        Ok(())
    }

    /// On SQLite, while another process holds the file's write lock (a CLI
    /// command beside the server), a write transaction waits for it, without
    /// holding up the runtime, and then commits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_transaction_waits_for_another_process_holding_the_file() -> anyhow::Result<()> {
        let test = with_notes().await?;
        let db = &test.db;
        if db.backend() != Backend::Sqlite {
            return Ok(());
        }
        let file = sqlite_file(test.config.database_url().as_str())
            .context("a SQLite file")?
            .to_path_buf();
        let other = rusqlite::Connection::open(&file)?;
        other.execute_batch("BEGIN IMMEDIATE; INSERT INTO notes (id, n) VALUES ('other', 100);")?;
        let waiting = tokio::spawn({
            let db = db.clone();
            async move {
                let mut tx = db.begin().await?;
                insert_note(&mut tx, 1).await?;
                tx.commit().await
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the file's write lock is held");
        // The runtime still serves reads meanwhile.
        assert_eq!(notes(db).await?, Vec::<i64>::new());
        other.execute_batch("COMMIT")?;
        waiting.await??;
        assert_eq!(notes(db).await?, [1, 100]);
        Ok(())
    }

    /// Both readers (the caller's thread and the blocking one, on SQLite) answer
    /// as the drivers do, see every commit, refuse writes, and fail once closed.
    #[tokio::test]
    async fn reads_answer_queries_as_the_drivers_do() -> anyhow::Result<()> {
        let test = with_notes().await?;
        let db = &test.db;
        let mut tx = db.begin().await?;
        for n in [3, 1, 2] {
            insert_note(&mut tx, n).await?;
        }
        tx.commit().await?;
        for reader in [db.reader(), db.scan_reader()] {
            let rows = sqlx::query("SELECT id, n, note FROM notes WHERE n >= $1 ORDER BY n")
                .bind(2_i64)
                .fetch_all(reader)
                .await?;
            let read: Vec<(String, i64, Option<String>)> = rows
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get("n")?, r.try_get(2)?)))
                .collect::<Result<_, sqlx::Error>>()?;
            assert_eq!(
                read,
                [("n2".to_string(), 2, None), ("n3".to_string(), 3, None)]
            );
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM notes")
                .fetch_one(reader)
                .await?;
            assert_eq!(count, 3);
            let missing = sqlx::query("SELECT id FROM notes WHERE n = $1")
                .bind(9_i64)
                .fetch_optional(reader)
                .await?;
            assert!(missing.is_none());
            let bad = sqlx::query("SELECT id FROM notes WHERE n = $1 AND id = $2")
                .bind(1_i64)
                .fetch_optional(reader)
                .await;
            assert!(bad.is_err(), "a parameter without its argument");
            let syntax = sqlx::query("SELEC id FROM notes").fetch_all(reader).await;
            assert!(syntax.is_err(), "a syntax error");
        }
        if db.backend() == Backend::Sqlite {
            for reader in [db.reader(), db.scan_reader()] {
                let write = sqlx::query("DELETE FROM notes").execute(reader).await;
                assert!(write.is_err(), "a read connection refuses writes");
            }
            assert_eq!(notes(db).await?, [1, 2, 3]);
            // A transaction begun through a reader does not outlive the read:
            // later reads still see every commit.
            sqlx::raw_sql("BEGIN").execute(db.reader()).await?;
            sqlx::query("INSERT INTO notes (id, n) VALUES ('n4', 4)")
                .execute(db.writer())
                .await?;
            assert_eq!(notes(db).await?, [1, 2, 3, 4]);
            db.close().await;
            for reader in [db.reader(), db.scan_reader()] {
                let closed = sqlx::query("SELECT n FROM notes")
                    .fetch_all(reader)
                    .await
                    .map(|rows| rows.len());
                assert!(matches!(closed, Err(sqlx::Error::PoolClosed)), "{closed:?}");
            }
            let closed = db.fetch_by_key(NOTE_BY_ID, "n1", note).await;
            assert!(matches!(closed, Err(sqlx::Error::PoolClosed)), "{closed:?}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_column_of_the_wrong_type_is_an_error_not_a_panic() -> anyhow::Result<()> {
        let test = TestDatabase::new().await?;
        let db = &test.db;
        sqlx::raw_sql(
            "CREATE TABLE notes (id TEXT PRIMARY KEY, n BIGINT NOT NULL, note TEXT); \
             INSERT INTO notes (id, n, note) VALUES ('a', 1, 'x');",
        )
        .execute(db.writer())
        .await?;
        let read_note_as_integer = |row: &dyn Columns| row.integer(2);
        let result = db.fetch_by_key(NOTE_BY_ID, "a", read_note_as_integer).await;
        assert!(result.is_err(), "{result:?}");
        Ok(())
    }

    #[test]
    fn the_sqlite_file_is_found_in_its_url() {
        assert_eq!(
            sqlite_file("sqlite://a/b.db?mode=rwc"),
            Some(Path::new("a/b.db"))
        );
        assert_eq!(sqlite_file("sqlite:b.db"), Some(Path::new("b.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
    }

    #[test]
    fn a_busy_pool_is_overload_and_other_failures_are_faults() {
        use agora_kernel::ErrorCode;
        let busy = database_failure("catalog", &sqlx::Error::PoolTimedOut);
        assert_eq!(busy.code(), ErrorCode::ServiceNotReady);
        let other = database_failure("catalog", &sqlx::Error::RowNotFound);
        assert_eq!(other.code(), ErrorCode::InternalError);
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }

    #[test]
    fn the_builder_numbers_placeholders() -> Result<(), sqlx::Error> {
        let mut q = SqlBuilder::new("SELECT 1 WHERE a = ");
        q.bind(1_i64)?.push(" AND b = ").bind("x")?;
        assert_eq!(q.sql(), "SELECT 1 WHERE a = $1 AND b = $2");
        Ok(())
    }

    /// A list of `n` numbers, as `IN (…)` keys.
    fn numbers_in(n: i64) -> Result<SqlBuilder, sqlx::Error> {
        let mut q = SqlBuilder::new("SELECT n FROM numbers WHERE n IN (");
        q.push_list(1..=n, |q, k| q.bind(k).map(drop))?
            .push(") ORDER BY n");
        Ok(q)
    }

    #[test]
    fn only_short_lists_stay_prepared() -> Result<(), sqlx::Error> {
        let short = numbers_in(2)?;
        assert_eq!(
            short.sql(),
            "SELECT n FROM numbers WHERE n IN ($1, $2) ORDER BY n"
        );
        let kept = |q: SqlBuilder| sqlx::Execute::persistent(&q.build());
        assert!(kept(short));
        let limit = i64::try_from(PREPARED_LIST_LEN).unwrap_or(i64::MAX);
        assert!(kept(numbers_in(limit)?));
        assert!(!kept(numbers_in(limit + 1)?));
        Ok(())
    }

    /// The one-off statements run on both engines, in and out of a
    /// transaction, next to the cached ones.
    #[tokio::test]
    async fn long_lists_run_unprepared() -> anyhow::Result<()> {
        let test = TestDatabase::new().await?;
        let db = &test.db;
        sqlx::raw_sql("CREATE TABLE numbers (n BIGINT PRIMARY KEY)")
            .execute(db.writer())
            .await?;
        let mut tx = db.begin().await?;
        let mut insert = SqlBuilder::new("INSERT INTO numbers (n) VALUES ");
        insert.push_list(1..=20_i64, |q, n| {
            q.push("(").bind(n)?.push(")");
            Ok(())
        })?;
        assert_eq!(insert.build().execute(&mut *tx).await?.rows_affected(), 20);
        tx.commit().await?;
        for n in [3, 20, 3, 20] {
            let rows: Vec<i64> = numbers_in(n)?
                .build()
                .fetch_all(db.reader())
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
            assert_eq!(rows, (1..=n).collect::<Vec<_>>());
        }
        Ok(())
    }
}
