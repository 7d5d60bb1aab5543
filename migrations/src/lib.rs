//! SQL schema for SQLite and MySQL/MariaDB, and the migrator every binary and test uses.
//!
//! The schema lives in `sqlite/` and `mysql/`, one file per version, column-for-column identical
//! between the two flavours (checked by a test). Both are embedded in the binary at build time, so
//! a deployment never needs the SQL files on disk. Conventions the store relies on:
//!
//! * times are `BIGINT` microseconds since the Unix epoch, UTC, so both backends compare, sort and
//!   return them identically (no zone conversions, no `DATETIME` precision differences);
//! * flags are integer 0/1; identifiers compare byte-for-byte (`utf8mb4_bin` on MySQL, the default
//!   `BINARY` collation on SQLite); every table is `utf8mb4` on MySQL.
//!
//! [`connect`] opens a pool for either backend from a URL (`sqlite://path`, `mysql://…`), with the
//! per-connection settings the store needs (SQLite: WAL, foreign keys, busy timeout); [`migrate`]
//! brings the schema up to date (MySQL/MariaDB runs hold a named lock of their own, so several
//! processes may start at once against a fresh database).

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, ConnectOptions, Connection, Executor};

/// Migrations for SQLite.
pub static SQLITE: Migrator = sqlx::migrate!("./sqlite");
/// Migrations for MySQL / MariaDB.
pub static MYSQL: Migrator = sqlx::migrate!("./mysql");

/// Which SQL backend a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (embedded default).
    Sqlite,
    /// MySQL or MariaDB (scale-out).
    MySql,
}

impl Backend {
    /// The backend a database URL names.
    pub fn of_url(url: &str) -> Result<Self, Error> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Ok(Self::MySql)
        } else {
            Err(Error::UnsupportedUrl(redact(url)))
        }
    }

    /// The migrator for this backend.
    pub fn migrator(self) -> &'static Migrator {
        match self {
            Self::Sqlite => &SQLITE,
            Self::MySql => &MYSQL,
        }
    }
}

/// Errors from connecting or migrating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL names no supported backend.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or mysql://USER:PASS@HOST/DB")]
    UnsupportedUrl(String),
    /// The database refused or failed.
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Another process held the migration lock for too long.
    #[error("migration: another process held the migration lock for over {0:?}")]
    MigrateLock(Duration),
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Most connections held at once.
    pub max_connections: u32,
    /// How long a caller waits for a free connection.
    pub acquire_timeout: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// A pooled connection idle this long is pinged before it is handed out again.
pub const PING_IDLE: Duration = Duration::from_secs(1);

/// Opens a pool for `url`. SQLite files are created when missing (`mode=rwc` is implied).
pub async fn connect(url: &str, settings: &PoolSettings) -> Result<(AnyPool, Backend), Error> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of_url(url)?;
    let url = match backend {
        Backend::Sqlite if !url.contains("mode=") && !url.contains(":memory:") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        }
        Backend::MySql if url.starts_with("mariadb:") => url.replacen("mariadb:", "mysql:", 1),
        _ => url.to_owned(),
    };
    let options = AnyConnectOptions::from_str(&url)?
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
    let pool = AnyPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        // A connection handed out again soon after its last use is not pinged first: the ping is
        // a round trip to the server on every acquire, about a fifth of a chat batch's time.
        // One idle for longer (when a restarted server or a dropped link is likelier) still is,
        // and is replaced when the ping fails.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IDLE {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                match backend {
                    Backend::Sqlite => {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .await?;
                    }
                    Backend::MySql => {
                        conn.execute("SET NAMES utf8mb4 COLLATE utf8mb4_bin, time_zone = '+00:00'")
                            .await?;
                        conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                            .await?;
                    }
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    Ok((pool, backend))
}

/// How long a process waits for another one's migration run on the same MySQL database.
pub const MIGRATE_LOCK_WAIT: Duration = Duration::from_secs(600);

/// Applies every pending migration of `backend` to `pool`.
///
/// On MySQL/MariaDB the run holds a named lock (`GET_LOCK('instar-migrate:<database>')`) on one
/// connection, so processes started at once against a fresh database take turns: the first
/// applies, the others wait (up to [`MIGRATE_LOCK_WAIT`]) and find nothing left to do. sqlx's
/// own migration lock asks `GET_LOCK(name, -1)`, which MySQL takes as "wait for ever" but
/// MariaDB answers at once with NULL, so on MariaDB it locked nothing: a second process saw the
/// first's half-applied migration and stopped with "migration 1 is partially applied".
///
/// # Errors
/// The database failed, a migration failed, or the lock was not had in time.
pub async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), Error> {
    match backend {
        Backend::Sqlite => backend.migrator().run(pool).await?,
        Backend::MySql => {
            let mut conn = pool.acquire().await?;
            let got: Option<i64> =
                sqlx::query_scalar("SELECT GET_LOCK(CONCAT('instar-migrate:', DATABASE()), ?)")
                    .bind(i64::try_from(MIGRATE_LOCK_WAIT.as_secs()).unwrap_or(i64::MAX))
                    .fetch_one(&mut *conn)
                    .await?;
            if got != Some(1) {
                return Err(Error::MigrateLock(MIGRATE_LOCK_WAIT));
            }
            // `run_direct`: `run(&mut *conn)` is not `Send` for callers that spawn (sqlx's
            // "Acquire is not general enough").
            let result = backend.migrator().run_direct(&mut *conn).await;
            // Released here rather than left to the connection's end: the pool keeps it.
            let released =
                sqlx::query("SELECT RELEASE_LOCK(CONCAT('instar-migrate:', DATABASE()))")
                    .execute(&mut *conn)
                    .await;
            result?;
            released?;
        }
    }
    Ok(())
}

/// Creates the database a MySQL URL names (with `utf8mb4`) when it does not exist. SQLite files are
/// created by [`connect`].
pub async fn create_database(url: &str) -> Result<(), Error> {
    use sqlx::migrate::MigrateDatabase as _;
    sqlx::any::install_default_drivers();
    if Backend::of_url(url)? == Backend::MySql && !sqlx::Any::database_exists(url).await? {
        sqlx::Any::create_database(url).await?;
    }
    Ok(())
}

/// Drops the database a URL names (tests clean up with this).
pub async fn drop_database(url: &str) -> Result<(), Error> {
    use sqlx::migrate::MigrateDatabase as _;
    sqlx::any::install_default_drivers();
    if sqlx::Any::database_exists(url).await? {
        sqlx::Any::drop_database(url).await?;
    }
    Ok(())
}

/// The URL with any password replaced by `***`, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_by_url() {
        assert_eq!(Backend::of_url("sqlite://x.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of_url("mysql://a@b/c").unwrap(), Backend::MySql);
        assert_eq!(Backend::of_url("mariadb://a@b/c").unwrap(), Backend::MySql);
        assert!(Backend::of_url("postgres://x").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("mysql://u:secret@h:3306/db"),
            "mysql://u:***@h:3306/db"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    /// The two flavours declare the same tables with the same columns in the same order.
    #[test]
    fn flavours_declare_the_same_columns() {
        fn columns(sql: &str) -> Vec<(String, Vec<String>)> {
            let mut tables = Vec::new();
            let mut current: Option<(String, Vec<String>)> = None;
            for line in sql.lines() {
                let line = line.trim();
                if let Some(rest) = line.strip_prefix("CREATE TABLE ") {
                    let name = rest.trim_end_matches(" (").replace('`', "");
                    current = Some((name, Vec::new()));
                } else if line.starts_with(')') {
                    if let Some(t) = current.take() {
                        tables.push(t);
                    }
                } else if let Some((_, cols)) = current.as_mut()
                    && let Some(word) = line.split_whitespace().next()
                    && word != "PRIMARY"
                    && word != "FOREIGN"
                {
                    cols.push(word.to_owned());
                }
            }
            tables
        }
        let sqlite = columns(include_str!("../sqlite/0001_schema.sql"));
        let mysql = columns(include_str!("../mysql/0001_schema.sql"));
        assert_eq!(sqlite.len(), 17);
        assert_eq!(sqlite, mysql);
    }

    /// MySQL reports TEXT columns as BLOB, which the `Any` driver cannot decode as a string.
    #[test]
    fn no_text_columns() {
        for sql in [
            include_str!("../sqlite/0001_schema.sql"),
            include_str!("../mysql/0001_schema.sql"),
        ] {
            for line in sql.lines().filter(|l| !l.trim_start().starts_with("--")) {
                assert!(!line.contains(" TEXT"), "TEXT column: {line}");
            }
        }
    }
}
