//! Several statements sent to the database as one, for the hot write paths where round trips,
//! not the statements, are the cost (`chat::writer`: a batch of sends in three round trips
//! instead of eight).
//!
//! A [`Script`] is SQL text with its values written in as literals, sent with the text protocol
//! (sqlx's `raw_sql`: MySQL's `COM_QUERY` with multi-statements, SQLite's statement loop).
//! Injection is ruled out by construction: integers are formatted numbers, and every string or
//! byte value is written as a hexadecimal literal ([`Dialect::text_literal`]), so no character
//! of a value ever reaches the SQL parser as SQL. Nothing is prepared, so statements whose
//! length changes with the batch do not churn the prepared-statement cache either.
//!
//! The database stops at the first statement that fails; the caller then drops its
//! [`super::ScriptTx`], which closes the connection (the server rolls the transaction back).
//!
//! Rows come back in statement order. Each `SELECT` of a script names its statement in a first
//! column `k` ([`Script::select`]) so that [`Rows::of`] can pick them out.

use futures_util::TryStreamExt as _;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row as _};

use super::{Dialect, StoreResult};

/// Statements to send as one.
#[derive(Debug)]
pub struct Script {
    d: Dialect,
    sql: String,
}

impl Script {
    /// An empty script for `d`.
    pub fn new(d: Dialect) -> Script {
        Script {
            d,
            sql: String::with_capacity(1024),
        }
    }

    /// Appends SQL text (no values: use the value methods for those).
    pub fn sql(&mut self, s: &str) -> &mut Self {
        self.sql.push_str(s);
        self
    }

    /// Ends the current statement.
    pub fn end(&mut self) -> &mut Self {
        self.sql.push_str(";\n");
        self
    }

    /// Starts a `SELECT` whose rows [`Rows::of`] gives back under `k`.
    pub fn select(&mut self, k: i64) -> &mut Self {
        self.sql.push_str("SELECT ");
        self.int(k);
        self.sql.push_str(" AS k, ");
        self
    }

    /// An integer value.
    pub fn int(&mut self, v: i64) -> &mut Self {
        use std::fmt::Write as _;
        let _ = write!(self.sql, "{v}");
        self
    }

    /// Integer values separated by commas (an `IN` list's contents). `vs` must not be empty.
    pub fn ints(&mut self, vs: &[i64]) -> &mut Self {
        for (i, v) in vs.iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.int(*v);
        }
        self
    }

    /// A text value.
    pub fn text(&mut self, v: &str) -> &mut Self {
        self.d.text_literal(&mut self.sql, v);
        self
    }

    /// A text value or `NULL`.
    pub fn opt_text(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            Some(v) => self.text(v),
            None => self.sql("NULL"),
        }
    }

    /// A byte-string value.
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.sql.push_str("X'");
        push_hex(&mut self.sql, v);
        self.sql.push('\'');
        self
    }

    /// The SQL so far.
    pub fn as_str(&self) -> &str {
        &self.sql
    }

    /// Sends the script on `conn` and returns the rows of its `SELECT`s.
    pub async fn run(&self, conn: &mut AnyConnection) -> StoreResult<Rows> {
        let rows: Vec<AnyRow> = sqlx::raw_sql(&self.sql)
            .fetch_many(conn)
            .try_filter_map(|step| async move { Ok(step.right()) })
            .try_collect()
            .await?;
        Ok(Rows(rows))
    }
}

/// The rows a script's `SELECT`s returned, in statement order.
pub struct Rows(Vec<AnyRow>);

impl std::fmt::Debug for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rows({})", self.0.len())
    }
}

impl Rows {
    /// The rows of the `SELECT`s started with [`Script::select`]`(k)`.
    pub fn of(&self, k: i64) -> impl Iterator<Item = &AnyRow> {
        self.0
            .iter()
            .filter(move |r| r.try_get::<i64, _>("k").is_ok_and(|v| v == k))
    }
}

/// Appends `bytes` as lower-case hexadecimal digits.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use migrations::Backend;

    #[test]
    fn values_are_written_as_numbers_and_hex_only() {
        let mut s = Script::new(Dialect(Backend::MySql));
        s.sql("INSERT INTO t VALUES (")
            .int(-7)
            .sql(", ")
            .text("a'); DROP TABLE t; --")
            .sql(", ")
            .opt_text(None)
            .sql(", ")
            .bytes(&[0, 0xff])
            .sql(")")
            .end();
        assert_eq!(
            s.as_str(),
            "INSERT INTO t VALUES (-7, _utf8mb4 X'6127293b2044524f50205441424c4520743b202d2d', NULL, X'00ff');\n"
        );
        let mut s = Script::new(Dialect(Backend::Sqlite));
        s.text("é").sql(" ").text("").sql(" ").ints(&[1, 2, 3]);
        assert_eq!(s.as_str(), "CAST(X'c3a9' AS TEXT) '' 1, 2, 3");
    }
}
