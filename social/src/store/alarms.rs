//! Statements on the `alarm` table.

use sqlx::AnyConnection;

use super::{StoreResult, inserted_id};
use crate::model::AlarmType;

/// Stores an alarm for `user` pointing at `reference` (the follows / favorite / comment / tag row id)
/// and returns its id. Runs inside the transaction that made the change, so both commit together.
pub async fn insert(
    conn: &mut AnyConnection,
    user: &str,
    kind: AlarmType,
    reference: i64,
    at: i64,
) -> StoreResult<i64> {
    let r = sqlx::query(
        "INSERT INTO alarm (user_id, alarm_type, reference_id, create_at) VALUES (?, ?, ?, ?)",
    )
    .bind(user)
    .bind(kind.as_str())
    .bind(reference)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    inserted_id(conn, &r).await
}

/// Deletes the alarms of `user` of `kind` pointing at `reference` (an unfollow or unlike takes its
/// alarm back; the type is bound as its name, not its ordinal as in the original).
pub async fn delete_for(
    conn: &mut AnyConnection,
    user: &str,
    kind: AlarmType,
    reference: i64,
) -> StoreResult<u64> {
    let r =
        sqlx::query("DELETE FROM alarm WHERE user_id = ? AND alarm_type = ? AND reference_id = ?")
            .bind(user)
            .bind(kind.as_str())
            .bind(reference)
            .execute(conn)
            .await?;
    Ok(r.rows_affected())
}

/// A stored alarm row.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct AlarmRow {
    /// Alarm id.
    pub id: i64,
    /// Stored type name.
    pub alarm_type: String,
    /// Id of the follows / tag / favorite / comment row.
    pub reference_id: i64,
    /// Time, µs.
    pub create_at: i64,
}

/// The sender of a `FOLLOW` alarm.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct FollowRef {
    /// `follows.id`.
    pub id: i64,
    /// The follower.
    pub sender_id: String,
    /// The follower's image.
    pub sender_profile_image: Option<String>,
}

/// The post and author behind a `POST_TAG` alarm.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct TagRef {
    /// `post_attachments_user_tags.id`.
    pub id: i64,
    /// The post.
    pub post_id: i64,
    /// The post's author (the alarm's sender).
    pub sender_id: String,
    /// The author's image.
    pub sender_profile_image: Option<String>,
}

impl super::Store {
    /// The newest `limit` alarms of `user`.
    pub async fn alarms_latest(&self, user: &str, limit: i64) -> StoreResult<Vec<AlarmRow>> {
        Ok(sqlx::query_as::<_, AlarmRow>(
            "SELECT id, alarm_type, reference_id, create_at FROM alarm WHERE user_id = ? \
             ORDER BY create_at DESC, id DESC LIMIT ?",
        )
        .bind(user)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// The follows rows with `ids` that still exist, with the follower's image.
    pub async fn alarm_follow_refs(&self, ids: &[i64]) -> StoreResult<Vec<FollowRef>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT f.id, u.id AS sender_id, u.profile_image AS sender_profile_image \
             FROM follows f JOIN user u ON u.id = f.follower_id WHERE f.id IN ({})",
            super::dialect::placeholders(ids.len())
        );
        let mut q = sqlx::query_as::<_, FollowRef>(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    /// The user-tag rows with `ids` that still exist, with their post and its author.
    pub async fn alarm_tag_refs(&self, ids: &[i64]) -> StoreResult<Vec<TagRef>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT t.id, p.id AS post_id, u.id AS sender_id, \
             u.profile_image AS sender_profile_image \
             FROM post_attachments_user_tags t \
             JOIN post_attachments a ON a.id = t.post_attachment_id \
             JOIN post p ON p.id = a.post_id JOIN user u ON u.id = p.user_id \
             WHERE t.id IN ({})",
            super::dialect::placeholders(ids.len())
        );
        let mut q = sqlx::query_as::<_, TagRef>(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }
}

/// Deletes the alarms with `ids` (those whose target vanished).
pub async fn delete_ids(conn: &mut AnyConnection, ids: &[i64]) -> StoreResult<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "DELETE FROM alarm WHERE id IN ({})",
        super::dialect::placeholders(ids.len())
    );
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(*id);
    }
    Ok(q.execute(conn).await?.rows_affected())
}
