//! The only place SQL differs between SQLite and MySQL/MariaDB.
//!
//! Everything else in the store is one SQL string per statement, written in the common subset
//! (`?` placeholders, `LIMIT`, integer times, no booleans, no `SUM` over integers on MySQL — it
//! returns DECIMAL, which the `Any` driver cannot decode; cast instead).

use migrations::Backend;

/// SQL fragments that differ per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect(pub Backend);

impl Dialect {
    /// Suffix locking the selected rows until the transaction ends. SQLite has no row locks; its
    /// write transactions start with `BEGIN IMMEDIATE` (one writer at a time) instead.
    pub fn for_update(self) -> &'static str {
        match self.0 {
            Backend::Sqlite => "",
            Backend::MySql => " FOR UPDATE",
        }
    }

    /// `INSERT` that skips rows hitting a unique key: the statement prefix.
    pub fn insert_ignore(self) -> &'static str {
        match self.0 {
            Backend::Sqlite => "INSERT OR IGNORE",
            Backend::MySql => "INSERT IGNORE",
        }
    }

    /// Upsert clause for a conflict on `key` (comma-separated key columns), updating `set`
    /// (a `col = <expr>` list where `excluded(col)` names the proposed value; see [`Self::excluded`]).
    pub fn on_conflict_update(self, key: &str, set: &str) -> String {
        match self.0 {
            Backend::Sqlite => format!(" ON CONFLICT ({key}) DO UPDATE SET {set}"),
            Backend::MySql => format!(" ON DUPLICATE KEY UPDATE {set}"),
        }
    }

    /// The proposed value of `col` inside [`Self::on_conflict_update`]'s `set`.
    pub fn excluded(self, col: &str) -> String {
        match self.0 {
            Backend::Sqlite => format!("excluded.{col}"),
            Backend::MySql => format!("VALUES({col})"),
        }
    }

    /// Statement that starts a write transaction.
    pub fn begin_write(self) -> &'static str {
        match self.0 {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::MySql => "BEGIN",
        }
    }

    /// Appends `v` as a text literal that holds only hexadecimal digits (see
    /// [`super::script`]): MySQL's `_utf8mb4 X'…'`, SQLite's `CAST(X'…' AS TEXT)`.
    pub fn text_literal(self, out: &mut String, v: &str) {
        if v.is_empty() {
            out.push_str("''");
            return;
        }
        match self.0 {
            Backend::Sqlite => {
                out.push_str("CAST(X'");
                super::script::push_hex(out, v.as_bytes());
                out.push_str("' AS TEXT)");
            }
            Backend::MySql => {
                out.push_str("_utf8mb4 X'");
                super::script::push_hex(out, v.as_bytes());
                out.push('\'');
            }
        }
    }

    /// Expression giving an id the previous `INSERT` on this connection generated, and whether
    /// it is the first row's (MySQL's `LAST_INSERT_ID()`) or the last row's (SQLite's
    /// `last_insert_rowid()`) of a multi-row insert.
    pub fn last_insert_id(self) -> (&'static str, InsertedEnd) {
        match self.0 {
            Backend::Sqlite => ("last_insert_rowid()", InsertedEnd::Last),
            Backend::MySql => ("CAST(LAST_INSERT_ID() AS SIGNED)", InsertedEnd::First),
        }
    }

    /// An expression joining SQL expressions `parts` as text, as a byte string (for a BLOB
    /// column): MySQL's `CONCAT(…)`, SQLite's `CAST((… || …) AS BLOB)`.
    pub fn bytes_concat(self, parts: &[&str]) -> String {
        match self.0 {
            Backend::Sqlite => format!("CAST(({}) AS BLOB)", parts.join(" || ")),
            Backend::MySql => format!("CONCAT({})", parts.join(", ")),
        }
    }

    /// Escape character clause for `LIKE` patterns built by [`like_contains`].
    pub fn like_escape(self) -> &'static str {
        " ESCAPE '!'"
    }
}

/// Which row of a multi-row `INSERT` [`Dialect::last_insert_id`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertedEnd {
    /// The first row's id.
    First,
    /// The last row's id.
    Last,
}

/// A `LIKE` pattern matching `needle` anywhere, with `%`, `_` and the escape character escaped
/// (the original passed them through as wildcards). Use with [`Dialect::like_escape`].
pub fn like_contains(needle: &str) -> String {
    let mut out = String::with_capacity(needle.len() + 2);
    out.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// `?, ?, ?` with `n` placeholders (for `IN (…)` lists). `n` must be at least 1.
pub fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_contains("a%b_c!"), "%a!%b!_c!!%");
    }

    #[test]
    fn placeholder_lists() {
        assert_eq!(placeholders(1), "?");
        assert_eq!(placeholders(3), "?, ?, ?");
    }
}
