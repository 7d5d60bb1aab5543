//! Media references in every table that holds one.

use super::{Store, StoreResult};

/// `(table, column)` of every stored media reference.
pub const MEDIA_COLUMNS: &[(&str, &str)] = &[
    ("user", "profile_image"),
    ("user", "profile_thumbnail"),
    ("post", "profile_image"),
    ("post_attachments", "url"),
    ("post_attachments", "thumbnail_url"),
    ("chatroom", "profile_image"),
    ("message_attachment", "url"),
];

/// `s` as a `LIKE` pattern matching itself literally (escape character `!`).
fn like_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(c);
    }
    out
}

impl Store {
    /// Turns references stored as URLs under `base_url` (`{base_url}/{key}`, as versions before
    /// keys wrote them: a bucket's URL, or a local prefix other than the `/media` that migration
    /// 0005 handles) into keys. Idempotent and cheap when there is nothing to change; returns the
    /// number of rows changed.
    pub async fn adopt_media_keys(&self, base_url: &str) -> StoreResult<u64> {
        let base = base_url.trim_end_matches('/');
        if base.is_empty() {
            return Ok(0);
        }
        let prefix = format!("{base}/");
        let pattern = format!("{}%", like_literal(&prefix));
        let start = i64::try_from(prefix.chars().count() + 1).unwrap_or(i64::MAX);
        let mut changed = 0;
        let mut tx = self.write().await?;
        for (table, column) in MEDIA_COLUMNS {
            let sql = format!(
                "UPDATE {table} SET {column} = SUBSTR({column}, ?) WHERE {column} LIKE ? ESCAPE '!'"
            );
            let done = sqlx::query(&sql)
                .bind(start)
                .bind(&pattern)
                .execute(tx.conn())
                .await?;
            changed += done.rows_affected();
        }
        tx.commit().await?;
        if changed > 0 {
            tracing::info!(changed, base, "stored media URLs turned into keys");
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_are_literal() {
        assert_eq!(like_literal("http://h/b_1%!"), "http://h/b!_1!%!!");
    }
}
