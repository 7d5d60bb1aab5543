//! Statements on `post_comment`.

use sqlx::{AnyConnection, FromRow};

use super::dialect::placeholders;
use super::{Store, StoreResult, inserted_id};
use crate::model::Comment;

#[derive(Debug, FromRow)]
struct CommentRow {
    id: i64,
    post_id: i64,
    user_id: String,
    name: String,
    profile_image: Option<String>,
    content: String,
    create_at: i64,
}

impl From<CommentRow> for Comment {
    fn from(r: CommentRow) -> Self {
        Comment {
            id: r.id,
            post_id: r.post_id,
            user_id: r.user_id,
            name: r.name,
            profile_image: r.profile_image,
            content: r.content,
            create_at: r.create_at,
        }
    }
}

/// Comment columns with the author's name and image (aliases `c` and `u`).
const COMMENT_SELECT: &str = "SELECT c.id, c.post_id, c.user_id, u.name, u.profile_image, \
     c.content, c.create_at FROM post_comment c JOIN user u ON u.id = c.user_id";

/// Stores a comment and returns its id.
pub async fn insert(
    conn: &mut AnyConnection,
    user: &str,
    post: i64,
    content: &str,
    at: i64,
) -> StoreResult<i64> {
    let r = sqlx::query(
        "INSERT INTO post_comment (user_id, post_id, content, create_at) VALUES (?, ?, ?, ?)",
    )
    .bind(user)
    .bind(post)
    .bind(content)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    inserted_id(conn, &r).await
}

impl Store {
    /// `user`'s own newest `limit` comments on `post` (the "top list").
    pub async fn comments_top(
        &self,
        post: i64,
        user: &str,
        limit: i64,
    ) -> StoreResult<Vec<Comment>> {
        let sql = format!(
            "{COMMENT_SELECT} WHERE c.post_id = ? AND c.user_id = ? ORDER BY c.id DESC LIMIT ?"
        );
        let rows = sqlx::query_as::<_, CommentRow>(&sql)
            .bind(post)
            .bind(user)
            .bind(limit)
            .fetch_all(self.pool())
            .await?;
        Ok(rows.into_iter().map(Comment::from).collect())
    }

    /// The ids of `user`'s newest `limit` comments on `post` (what the top list shows).
    pub async fn comment_top_ids(
        &self,
        post: i64,
        user: &str,
        limit: i64,
    ) -> StoreResult<Vec<i64>> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT id FROM post_comment WHERE post_id = ? AND user_id = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(post)
        .bind(user)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// A page of `post`'s comments with `id < before`, newest first, leaving out `exclude`.
    pub async fn comment_page(
        &self,
        post: i64,
        before: i64,
        exclude: &[i64],
        limit: i64,
    ) -> StoreResult<Vec<Comment>> {
        let not_in = if exclude.is_empty() {
            String::new()
        } else {
            format!(" AND c.id NOT IN ({})", placeholders(exclude.len()))
        };
        let sql = format!(
            "{COMMENT_SELECT} WHERE c.post_id = ? AND c.id < ?{not_in} ORDER BY c.id DESC LIMIT ?"
        );
        let mut q = sqlx::query_as::<_, CommentRow>(&sql)
            .bind(post)
            .bind(before);
        for id in exclude {
            q = q.bind(*id);
        }
        let rows = q.bind(limit).fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(Comment::from).collect())
    }

    /// The comments with `ids` that still exist.
    pub async fn comments_by_ids(&self, ids: &[i64]) -> StoreResult<Vec<Comment>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "{COMMENT_SELECT} WHERE c.id IN ({})",
            placeholders(ids.len())
        );
        let mut q = sqlx::query_as::<_, CommentRow>(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(Comment::from).collect())
    }
}
