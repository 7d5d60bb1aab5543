//! The SQL store: one code path for SQLite and MySQL/MariaDB through sqlx's `Any` driver.
//!
//! Rules every statement follows: one function per statement (grouped by domain in the submodules),
//! `?` placeholders, keyset pagination for lists that grow, list endpoints load related rows in
//! batches (`IN (…)`) instead of one query per item, and every backend difference goes through
//! [`Dialect`]. Writes that must be atomic run in a [`WriteTx`] from [`Store::write`].

pub mod alarms;
pub mod auth;
pub mod chat;
pub mod comments;
pub mod dialect;
pub mod feed;
pub mod follows;
pub mod likes;
pub mod media;
pub mod posts;
pub mod script;
pub mod users;

use std::sync::Arc;

use migrations::{Backend, PoolSettings};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

pub use dialect::Dialect;

/// Store errors. Anything but [`StoreError::Conflict`] means "database error" to callers.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key was hit (duplicate id, e-mail, follow, like…).
    #[error("unique key violated: {0}")]
    Conflict(String),
    /// The database failed.
    #[error("database: {0}")]
    Db(sqlx::Error),
    /// Opening or migrating failed.
    #[error("{0}")]
    Setup(#[from] migrations::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return StoreError::Conflict(db.message().to_owned());
        }
        StoreError::Db(e)
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// Handle to the database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// SQLite allows one writer; queueing writers here (FIFO) instead of in SQLite's busy handler
    /// (which sleeps and polls) keeps write latency flat under contention.
    writer: Option<Arc<Mutex<()>>>,
}

/// A write transaction. Dropping it without [`WriteTx::commit`] rolls back.
#[derive(Debug)]
pub struct WriteTx {
    tx: Transaction<'static, Any>,
    _writer: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// The connection to run statements on.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    /// Commits.
    pub async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

/// A write transaction driven by [`script::Script`]s: the first script sent starts with
/// [`ScriptTx::begin`]'s statement and the last ends with `COMMIT`, so neither costs a round trip
/// of its own. Dropped before [`ScriptTx::committed`], the connection is closed instead of going
/// back to the pool, which rolls the transaction back on the server.
#[derive(Debug)]
pub struct ScriptTx {
    conn: Option<PoolConnection<Any>>,
    dialect: Dialect,
    committed: bool,
    _writer: Option<OwnedMutexGuard<()>>,
}

impl ScriptTx {
    /// The statement (without `;`) that starts the transaction; put it first in the first script.
    pub fn begin(&self) -> &'static str {
        self.dialect.begin_write()
    }

    /// The connection to run scripts and statements on.
    pub fn conn(&mut self) -> StoreResult<&mut AnyConnection> {
        match self.conn.as_mut() {
            Some(c) => Ok(&mut **c),
            None => Err(StoreError::Db(sqlx::Error::PoolClosed)),
        }
    }

    /// Records that a script ending with `COMMIT` succeeded: the connection goes back to the
    /// pool when this is dropped.
    pub fn committed(&mut self) {
        self.committed = true;
    }

    /// Ends `script` with `COMMIT`, sends it, and records the commit.
    pub async fn commit_with(&mut self, script: &mut script::Script) -> StoreResult<script::Rows> {
        script.sql("COMMIT").end();
        let rows = script.run(self.conn()?).await?;
        self.committed();
        Ok(rows)
    }

    /// Rolls back what the scripts did so far and ends the transaction; the connection goes
    /// back to the pool.
    pub async fn rollback(&mut self) -> StoreResult<()> {
        let mut script = script::Script::new(self.dialect);
        script.sql("ROLLBACK").end();
        script.run(self.conn()?).await?;
        self.committed();
        Ok(())
    }

    /// Whether the transaction ended ([`ScriptTx::committed`] or [`ScriptTx::rollback`]).
    pub fn is_committed(&self) -> bool {
        self.committed
    }

    /// The connection, for the next [`Store::script_write_on`], once the transaction ended;
    /// `None` (and the connection closed, rolling back) while it is still open.
    pub fn into_connection(mut self) -> Option<PoolConnection<Any>> {
        if self.committed {
            self.conn.take()
        } else {
            None
        }
    }
}

impl Drop for ScriptTx {
    fn drop(&mut self) {
        if !self.committed
            && let Some(conn) = self.conn.take()
        {
            // Closing the socket (or the SQLite handle) rolls back whatever is open.
            drop(conn.detach());
        }
    }
}

impl Store {
    /// A connection for a write transaction run by scripts (SQLite: behind the in-process writer
    /// queue, like [`Store::write`]).
    pub async fn script_write(&self) -> StoreResult<ScriptTx> {
        self.script_write_on(None).await
    }

    /// [`Store::script_write`] on `conn` (one a finished [`ScriptTx`] gave back with
    /// [`ScriptTx::into_connection`]) when given, saving the pool's hand-over for a caller that
    /// writes one transaction after another.
    pub async fn script_write_on(
        &self,
        conn: Option<PoolConnection<Any>>,
    ) -> StoreResult<ScriptTx> {
        let guard = match &self.writer {
            Some(m) => Some(Arc::clone(m).lock_owned().await),
            None => None,
        };
        let conn = match conn {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        Ok(ScriptTx {
            conn: Some(conn),
            dialect: self.dialect,
            committed: false,
            _writer: guard,
        })
    }

    /// Connects to `url` (`sqlite://…` or `mysql://…`) and applies pending migrations.
    pub async fn open(url: &str, settings: &PoolSettings) -> StoreResult<Store> {
        let (pool, backend) = migrations::connect(url, settings).await?;
        migrations::migrate(&pool, backend).await?;
        Ok(Store {
            pool,
            dialect: Dialect(backend),
            writer: (backend == Backend::Sqlite).then(|| Arc::new(Mutex::new(()))),
        })
    }

    /// The pool, for single statements outside transactions.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The backend's SQL differences.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Starts a write transaction (SQLite: `BEGIN IMMEDIATE` behind the in-process writer queue).
    pub async fn write(&self) -> StoreResult<WriteTx> {
        let guard = match &self.writer {
            Some(m) => Some(Arc::clone(m).lock_owned().await),
            None => None,
        };
        let tx = self.pool.begin_with(self.dialect.begin_write()).await?;
        Ok(WriteTx { tx, _writer: guard })
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The id the `INSERT` that gave `result` generated, asked of the same connection when the driver
/// does not report it (sqlx's `Any` driver drops SQLite's rowid: `last_insert_rowid()` is per
/// connection, hence exact; MySQL always reports the id).
pub async fn inserted_id(
    conn: &mut AnyConnection,
    result: &sqlx::any::AnyQueryResult,
) -> StoreResult<i64> {
    if let Some(id) = result.last_insert_id() {
        return Ok(id);
    }
    Ok(sqlx::query_scalar::<_, i64>("SELECT last_insert_rowid()")
        .fetch_one(conn)
        .await?)
}
