//! SQLite statements run on the calling thread, through rusqlite, for the one
//! writer connection (ADR 0005) and the read connections (ADR 0006).
//!
//! sqlx's SQLite driver hands each statement to the connection's own thread and
//! each row back, through channels: two cross-thread wake-ups per statement, paid
//! while the one writer is held, and after each of them the holder waits its turn
//! on the runtime. Here a statement runs to its end inside one poll of the
//! caller, so the writer is held only for SQLite's own work.
//!
//! Stores keep writing sqlx queries: this module takes a query's SQL text and
//! its `AnyArguments` and answers with `AnyRow`s and `AnyQueryResult`s, exactly
//! as sqlx-sqlite's Any driver would (values typed by their storage class:
//! INTEGER as `BigInt`, REAL as `Double`, TEXT, BLOB, NULL). That uses the
//! `#[doc(hidden)]` public fields of sqlx-core's Any types, hence its exact
//! version pin in the workspace manifest.

use std::borrow::Cow;
use std::sync::Arc;

use futures_core::stream::BoxStream;
use futures_util::{StreamExt as _, TryStreamExt as _};
use rusqlite::fallible_iterator::FallibleIterator as _;
use rusqlite::types::{Value, ValueRef};
use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow, AnyTypeInfo, AnyTypeInfoKind};
use sqlx::error::{DatabaseError, ErrorKind};
use sqlx::{Either, Error};
use sqlx_core::any::{AnyColumn, AnyValue, AnyValueKind};
use sqlx_core::ext::ustr::UStr;

/// What one query produced, in sqlx's order: its rows, then its result.
pub(super) type Produced = Vec<Either<AnyQueryResult, AnyRow>>;

/// What a query produced, once it has all been produced, as the stream sqlx's
/// `fetch_many` answers with.
pub(super) fn stream_of<'e>(
    produced: impl Future<Output = Result<Produced, Error>> + Send + 'e,
) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, Error>> {
    futures_util::stream::once(produced)
        .map_ok(|items| futures_util::stream::iter(items.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

/// The error for what sqlx's executors offer but these connections do not.
pub(super) fn unsupported(what: &str) -> Error {
    Error::Protocol(format!(
        "{what} is not supported on SQLite's calling-thread connections; run the query instead"
    ))
}

/// Runs one query (`sql` with its bound `arguments`) on `conn`. A query without
/// arguments (`sqlx::raw_sql`; `sqlx::query` always carries arguments, and with
/// them one statement only) may hold several statements: each is
/// prepared only when the ones before it have run (a table created by the
/// first is there for the second). With `rows` = [`Rows::First`] a read stops
/// at its first row (`fetch_optional`); a write always runs to its end. A
/// `persistent` statement stays in the connection's statement cache; another
/// (`Query::persistent(false)`) is prepared for this one run.
pub(super) fn run(
    conn: &rusqlite::Connection,
    sql: &str,
    persistent: bool,
    arguments: Option<AnyArguments>,
    rows: Rows,
) -> Result<Produced, Error> {
    let mut produced = Vec::new();
    if arguments.is_none() && sql.contains(';') {
        let mut batch = rusqlite::Batch::new(conn, sql);
        while let Some(mut statement) = batch.next().map_err(database_error)? {
            step(conn, &mut statement, rows, &mut produced)?;
        }
    } else {
        let mut once;
        let mut cached;
        let statement: &mut rusqlite::Statement<'_> = if persistent {
            cached = conn.prepare_cached(sql).map_err(database_error)?;
            &mut cached
        } else {
            once = conn.prepare(sql).map_err(database_error)?;
            &mut once
        };
        bind(statement, arguments)?;
        step(conn, statement, rows, &mut produced)?;
    }
    Ok(produced)
}

/// Which rows of a query the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rows {
    /// Every row.
    All,
    /// The first row only, if the statement only reads.
    First,
}

/// Runs a prepared, bound statement to its end (or, for a read, to the rows
/// wanted): its rows, then its result.
fn step(
    conn: &rusqlite::Connection,
    statement: &mut rusqlite::Statement<'_>,
    wanted: Rows,
    produced: &mut Produced,
) -> Result<(), Error> {
    let names: Vec<UStr> = statement
        .column_names()
        .into_iter()
        .map(UStr::new)
        .collect();
    let index: Arc<sqlx_core::HashMap<UStr, usize>> = Arc::new(
        names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), i))
            .collect(),
    );
    let writes = !statement.readonly();
    let mut rows = statement.raw_query();
    while let Some(row) = rows.next().map_err(database_error)? {
        let mut any = AnyRow {
            column_names: Arc::clone(&index),
            columns: Vec::with_capacity(names.len()),
            values: Vec::with_capacity(names.len()),
        };
        for (ordinal, name) in names.iter().enumerate() {
            let kind = value(row.get_ref(ordinal).map_err(database_error)?, ordinal)?;
            any.columns.push(AnyColumn {
                ordinal,
                name: name.clone(),
                type_info: AnyTypeInfo {
                    kind: kind_of(&kind),
                },
            });
            any.values.push(AnyValue { kind });
        }
        produced.push(Either::Right(any));
        if wanted == Rows::First && !writes {
            // Dropping the rows resets the statement: no read stays open.
            break;
        }
    }
    drop(rows);
    produced.push(Either::Left(AnyQueryResult {
        // `changes()` keeps the count of the last writing statement, so a read
        // reports none rather than a stale count.
        rows_affected: if writes { conn.changes() } else { 0 },
        last_insert_id: writes.then(|| conn.last_insert_rowid()),
    }));
    Ok(())
}

/// Binds the arguments as sqlx-sqlite does: a `$n` (or `?n`) parameter takes the
/// n-th argument wherever it appears; any other takes the next in order.
fn bind(
    statement: &mut rusqlite::Statement<'_>,
    arguments: Option<AnyArguments>,
) -> Result<(), Error> {
    let values: Vec<Value> = arguments
        .map(|a| a.values.0.into_iter().map(to_sqlite).collect())
        .unwrap_or_default();
    let count = statement.parameter_count();
    let mut next = 0;
    for parameter in 1..=count {
        let position = match statement.parameter_name(parameter) {
            // An anonymous `?` takes the next argument.
            None => {
                next += 1;
                next - 1
            }
            Some(name) => match name.get(1..).and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n >= 1 => n - 1,
                // `:name`, `@name`: refused, as sqlx does.
                _ => {
                    return Err(Error::Protocol(format!(
                        "unsupported SQL parameter {name}: use $1, $2, …"
                    )));
                }
            },
        };
        let value = values.get(position).ok_or_else(|| {
            Error::Protocol(format!(
                "the statement has parameter {parameter} but {} arguments were bound",
                values.len()
            ))
        })?;
        statement
            .raw_bind_parameter(parameter, value)
            .map_err(database_error)?;
    }
    Ok(())
}

fn to_sqlite(kind: AnyValueKind) -> Value {
    match kind {
        AnyValueKind::Bool(b) => Value::Integer(i64::from(b)),
        AnyValueKind::SmallInt(i) => Value::Integer(i64::from(i)),
        AnyValueKind::Integer(i) => Value::Integer(i64::from(i)),
        AnyValueKind::BigInt(i) => Value::Integer(i),
        AnyValueKind::Real(f) => Value::Real(f64::from(f)),
        AnyValueKind::Double(f) => Value::Real(f),
        AnyValueKind::Text(s) => Value::Text(Arc::unwrap_or_clone(s)),
        AnyValueKind::TextSlice(s) => Value::Text(s.to_string()),
        AnyValueKind::Blob(b) => Value::Blob(Arc::unwrap_or_clone(b)),
        // `Null` and any kind a later sqlx-core adds (the enum is non-exhaustive;
        // the exact version pin makes a new one a conscious upgrade).
        _ => Value::Null,
    }
}

fn value(raw: ValueRef<'_>, ordinal: usize) -> Result<AnyValueKind, Error> {
    Ok(match raw {
        ValueRef::Null => AnyValueKind::Null(AnyTypeInfoKind::Null),
        ValueRef::Integer(i) => AnyValueKind::BigInt(i),
        ValueRef::Real(f) => AnyValueKind::Double(f),
        ValueRef::Text(bytes) => {
            let text = std::str::from_utf8(bytes).map_err(|e| Error::ColumnDecode {
                index: ordinal.to_string(),
                source: Box::new(e),
            })?;
            AnyValueKind::Text(Arc::new(text.to_string()))
        }
        ValueRef::Blob(bytes) => AnyValueKind::Blob(Arc::new(bytes.to_vec())),
    })
}

fn kind_of(kind: &AnyValueKind) -> AnyTypeInfoKind {
    match kind {
        AnyValueKind::BigInt(_) => AnyTypeInfoKind::BigInt,
        AnyValueKind::Double(_) => AnyTypeInfoKind::Double,
        AnyValueKind::Text(_) => AnyTypeInfoKind::Text,
        AnyValueKind::Blob(_) => AnyTypeInfoKind::Blob,
        _ => AnyTypeInfoKind::Null,
    }
}

/// A rusqlite error as sqlx reports SQLite's: a constraint failure is a
/// [`sqlx::Error::Database`] of the same kind, so `db::violation` reads either.
pub(super) fn database_error(e: rusqlite::Error) -> Error {
    match e {
        rusqlite::Error::SqliteFailure(failure, message) => {
            Error::Database(Box::new(SqliteFailure {
                message: message.unwrap_or_else(|| failure.to_string()),
                extended_code: failure.extended_code,
                source: failure,
            }))
        }
        other => Error::AnyDriverError(Box::new(other)),
    }
}

/// SQLite refused a statement.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
struct SqliteFailure {
    message: String,
    extended_code: i32,
    source: rusqlite::ffi::Error,
}

impl DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Owned(self.extended_code.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.extended_code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}
