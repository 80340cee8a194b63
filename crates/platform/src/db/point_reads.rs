//! Point reads on SQLite without a thread hop (ADR 0002).
//!
//! sqlx runs every SQLite connection on its own thread, so each query costs two
//! cross-thread wake-ups. For a read whose cost is one index lookup (a row by its
//! key) the wake-ups cost far more than the lookup itself, so these reads run on
//! the calling thread through their own read-only connections instead.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How long a point read waits for a lock before failing. In WAL mode readers do
/// not wait for writers, so this only bounds rare cases (WAL recovery after a
/// crash); it is short because the wait blocks a runtime worker thread.
const BUSY_TIMEOUT: Duration = Duration::from_millis(250);

/// Idle read-only connections to one SQLite file, opened on demand.
#[derive(Debug)]
pub(super) struct PointReader {
    path: PathBuf,
    /// Connections not in use. A read takes one and puts it back; reads run on
    /// the runtime's worker threads, so there are about as many as there are
    /// workers.
    idle: Mutex<Vec<Connection>>,
    /// Connections beyond this many are closed instead of kept.
    max_idle: usize,
}

impl PointReader {
    /// A reader of the database file at `path`, opening one connection to check it.
    pub(super) fn open(path: &Path, max_idle: usize) -> rusqlite::Result<Self> {
        let reader = Self {
            path: path.to_path_buf(),
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
        };
        let first = reader.connect()?;
        reader.release(first);
        Ok(reader)
    }

    /// Runs `read` on an idle connection (or a new one) on this thread.
    pub(super) fn read<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let out = read(&conn);
        self.release(conn);
        out
    }

    fn release(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
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
        Ok(conn)
    }
}
