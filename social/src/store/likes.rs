//! Statements on `post_favorite` (likes).

use sqlx::AnyConnection;

use super::dialect::placeholders;
use super::{Store, StoreResult, inserted_id};

/// The id of `user`'s like of `post`, if any.
pub async fn find(conn: &mut AnyConnection, post: i64, user: &str) -> StoreResult<Option<i64>> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT id FROM post_favorite WHERE post_id = ? AND user_id = ?",
    )
    .bind(post)
    .bind(user)
    .fetch_optional(conn)
    .await?)
}

/// Stores a like and returns its id.
pub async fn insert(conn: &mut AnyConnection, post: i64, user: &str, at: i64) -> StoreResult<i64> {
    let r = sqlx::query("INSERT INTO post_favorite (user_id, post_id, create_at) VALUES (?, ?, ?)")
        .bind(user)
        .bind(post)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    inserted_id(conn, &r).await
}

/// Deletes the like with `id`.
pub async fn delete(conn: &mut AnyConnection, id: i64) -> StoreResult<u64> {
    let r = sqlx::query("DELETE FROM post_favorite WHERE id = ?")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(r.rows_affected())
}

/// A like as an alarm shows it: the liker and the post.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct LikeRef {
    /// Like id.
    pub id: i64,
    /// Liked post.
    pub post_id: i64,
    /// The liker.
    pub user_id: String,
    /// The liker's name.
    pub name: String,
    /// The liker's image.
    pub profile_image: Option<String>,
}

impl Store {
    /// Which of `posts` `user` likes.
    pub async fn liked_among(&self, user: &str, posts: &[i64]) -> StoreResult<Vec<i64>> {
        if posts.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT post_id FROM post_favorite WHERE user_id = ? AND post_id IN ({})",
            placeholders(posts.len())
        );
        let mut q = sqlx::query_scalar::<_, i64>(&sql).bind(user);
        for id in posts {
            q = q.bind(*id);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    /// Up to `limit` ids of the posts `user` likes, in no particular order.
    pub async fn liked_by(&self, user: &str, limit: i64) -> StoreResult<Vec<i64>> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT post_id FROM post_favorite WHERE user_id = ? LIMIT ?",
        )
        .bind(user)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// The likes with `ids` that still exist, with their likers.
    pub async fn likes_by_ids(&self, ids: &[i64]) -> StoreResult<Vec<LikeRef>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT f.id, f.post_id, u.id AS user_id, u.name, u.profile_image \
             FROM post_favorite f JOIN user u ON u.id = f.user_id WHERE f.id IN ({})",
            placeholders(ids.len())
        );
        let mut q = sqlx::query_as::<_, LikeRef>(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }
}
