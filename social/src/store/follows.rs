//! Statements on the `follows` table: follow, unfollow, and the friends-of-friends recommendation.
//!
//! Counters on `user` and the FOLLOW alarm change in the same transaction as the `follows` row
//! (see `routes::users`); the user rows are locked first, in id order, by
//! [`super::users::lock_pair`].

use sqlx::AnyConnection;

use super::{Store, StoreError, StoreResult};
use crate::model::AlarmType;

/// The id of the `follows` row `follower` → `following`, if there is one.
pub async fn find(
    conn: &mut AnyConnection,
    follower: &str,
    following: &str,
) -> StoreResult<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT id FROM follows WHERE follower_id = ? AND following_id = ?")
            .bind(follower)
            .bind(following)
            .fetch_optional(conn)
            .await?,
    )
}

/// Inserts `follower` → `following` and returns the row id (the FOLLOW alarm's reference). An
/// existing pair gives `StoreError::Conflict`.
///
/// The id is read back by the unique pair rather than from the insert result: sqlx's `Any`
/// driver never reports generated ids on SQLite (`last_insert_id` is always `None` there, so
/// [`super::inserted_id`] fails).
pub async fn insert(
    conn: &mut AnyConnection,
    follower: &str,
    following: &str,
    at: i64,
) -> StoreResult<i64> {
    sqlx::query("INSERT INTO follows (follower_id, following_id, create_at) VALUES (?, ?, ?)")
        .bind(follower)
        .bind(following)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    find(conn, follower, following).await?.ok_or_else(|| {
        StoreError::Db(sqlx::Error::Protocol(
            "inserted follows row not found".into(),
        ))
    })
}

/// Stores the FOLLOW alarm of `user` for the `follows` row `follows_id` (in the follow's
/// transaction).
///
/// Same statement as [`super::alarms::insert`], which cannot be used on SQLite for now: it returns
/// the alarm id through [`super::inserted_id`], which always fails there (see [`insert`]).
pub async fn insert_follow_alarm(
    conn: &mut AnyConnection,
    user: &str,
    follows_id: i64,
    at: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO alarm (user_id, alarm_type, reference_id, create_at) VALUES (?, ?, ?, ?)",
    )
    .bind(user)
    .bind(AlarmType::Follow.as_str())
    .bind(follows_id)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes the `follows` row `id`; returns how many rows went (0 or 1).
pub async fn delete(conn: &mut AnyConnection, id: i64) -> StoreResult<u64> {
    let r = sqlx::query("DELETE FROM follows WHERE id = ?")
        .bind(id)
        .execute(conn)
        .await?;
    Ok(r.rows_affected())
}

impl Store {
    /// Friends of friends of `user` (contract §6.5): every user followed by someone `user` follows,
    /// except `user` and the users `user` already follows, with the number of `user`'s followees
    /// following them; best `limit` by that score descending, then id ascending.
    pub async fn follow_recommendations(
        &self,
        user: &str,
        limit: i64,
    ) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as::<_, (String, i64)>(
            "SELECT f2.following_id, COUNT(*) AS score \
             FROM follows f1 JOIN follows f2 ON f2.follower_id = f1.following_id \
             WHERE f1.follower_id = ? AND f2.following_id <> ? \
               AND NOT EXISTS (SELECT 1 FROM follows f3 \
                               WHERE f3.follower_id = ? AND f3.following_id = f2.following_id) \
             GROUP BY f2.following_id \
             ORDER BY score DESC, f2.following_id \
             LIMIT ?",
        )
        .bind(user)
        .bind(user)
        .bind(user)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }
}
