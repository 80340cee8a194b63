//! The database: sqlx `AnyPool` over SQLite or PostgreSQL, one SQL text for both.
//!
//! Conventions every module follows: `$1` placeholders, TEXT UUID ids, BIGINT money
//! in minor units, BIGINT epoch-millisecond timestamps, INTEGER 0/1 flags (the Any
//! driver has no portable boolean), JSON as TEXT.
//!
//! SQLite runs in WAL mode with `synchronous=FULL` (a committed write survives power
//! loss), a busy timeout and foreign keys on. Writes go through a pool of exactly
//! one connection, so writers queue in the application instead of fighting over the
//! file lock, and transactions start with `BEGIN IMMEDIATE` so another process (a
//! CLI command beside the server) waits its turn rather than failing. Reads go
//! through a separate pool of read-only connections. On PostgreSQL both are the same
//! pool.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Arguments, AssertSqlSafe, Encode, Row, Transaction, Type};

use crate::config::Config;

mod point_reads;

use point_reads::PointReader;

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
    /// The only connection allowed to write (SQLite), or the pool (PostgreSQL).
    writer: AnyPool,
    /// Read-only connections (SQLite), or the same pool (PostgreSQL).
    reader: AnyPool,
    /// Read-only connections for reads by key on the calling thread (SQLite only).
    point_reader: Option<Arc<PointReader>>,
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
            let writer = sqlite_pool(
                url,
                1,
                acquire_timeout,
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                 PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
            )
            .await?;
            let reader = sqlite_pool(
                url,
                config.database.max_connections,
                acquire_timeout,
                "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA query_only = ON;",
            )
            .await?;
            // Opened after the writer has created the file and switched it to WAL.
            let point_reader = PointReader::open(file, config.database.max_connections as usize)
                .with_context(|| format!("Failed to open the SQLite database {url} for reading"))?;
            Ok(Database {
                writer,
                reader,
                point_reader: Some(Arc::new(point_reader)),
                backend: Backend::Sqlite,
            })
        } else {
            let pool = AnyPoolOptions::new()
                .max_connections(config.database.max_connections)
                .acquire_timeout(acquire_timeout)
                .connect(url)
                .await
                .context("Failed to connect to PostgreSQL")?;
            Ok(Database {
                writer: pool.clone(),
                reader: pool,
                point_reader: None,
                backend: Backend::Postgres,
            })
        }
    }

    /// The engine in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool for reads. A read sees every commit that finished before it
    /// started, this request's own included (SQLite in WAL mode; the PostgreSQL
    /// primary), so reads go here and leave the one SQLite writer connection to
    /// writes. (Read replicas, when they come, will need a primary-only reader
    /// for read-your-writes.)
    pub fn reader(&self) -> &AnyPool {
        &self.reader
    }

    /// The pool for writes (and reads inside a write transaction).
    pub fn writer(&self) -> &AnyPool {
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
        match &self.point_reader {
            Some(reader) => reader
                .read(|conn| {
                    let mut statement = conn.prepare_cached(sql)?;
                    let mut rows = statement.query([key])?;
                    Ok(rows.next()?.map(|row| map(row)))
                })
                .map_err(driver_error)?
                .transpose(),
            None => {
                let row = sqlx::query(sql)
                    .bind(key)
                    .fetch_optional(&self.reader)
                    .await?;
                row.as_ref().map(|row| map(row)).transpose()
            }
        }
    }

    /// Begins a write transaction (`BEGIN IMMEDIATE` on SQLite).
    pub async fn begin(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.writer.begin().await,
        }
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
        migrator
            .run(&self.writer)
            .await
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

/// A SQLite pool whose every new connection first runs `pragmas`. A pool of one
/// connection keeps it open, so the WAL stays in place between requests.
async fn sqlite_pool(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
    pragmas: &'static str,
) -> anyhow::Result<AnyPool> {
    AnyPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(acquire_timeout)
        .after_connect(move |conn, _| {
            Box::pin(async move { sqlx::raw_sql(pragmas).execute(conn).await.map(drop) })
        })
        .connect(url)
        .await
        .with_context(|| format!("Failed to open the SQLite database {url}"))
}

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
}

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

    /// The SQL text so far (for tests and logs).
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The finished query.
    pub fn build(self) -> sqlx::query::Query<'static, Any, AnyArguments> {
        // Safe: the text is made only of 'static fragments and `$n` placeholders.
        sqlx::query_with(AssertSqlSafe(self.sql), self.args)
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
}
