//! Statements of the feed (the non-personalised tiers) and of the interest-scoring batch.

use sqlx::AnyConnection;

use super::posts::{POST_COLUMNS, PostRow};
use super::{Store, StoreResult};

/// Microseconds per day.
const DAY_MICROS: i64 = 86_400_000_000;

impl Store {
    /// Up to `limit` of the users `viewer` follows, in no particular order.
    pub async fn followees_of(&self, viewer: &str, limit: i64) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT following_id FROM follows WHERE follower_id = ? LIMIT ?",
        )
        .bind(viewer)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// The ids of the newest `limit` posts of `author`, newest first.
    pub async fn post_ids_of(&self, author: &str, limit: i64) -> StoreResult<Vec<i64>> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT id FROM post WHERE user_id = ? ORDER BY id DESC LIMIT ?",
        )
        .bind(author)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Followed tier: posts of the users `viewer` follows (never the viewer's own), `id < before`,
    /// newest first.
    pub async fn feed_followed(
        &self,
        viewer: &str,
        before: i64,
        limit: i64,
    ) -> StoreResult<Vec<PostRow>> {
        let sql = format!(
            "SELECT {POST_COLUMNS} FROM follows f JOIN post p ON p.user_id = f.following_id \
             WHERE f.follower_id = ? AND p.user_id <> ? AND p.id < ? \
             ORDER BY p.id DESC LIMIT ?"
        );
        Ok(sqlx::query_as::<_, PostRow>(&sql)
            .bind(viewer)
            .bind(viewer)
            .bind(before)
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    /// Popular tier: posts neither by `viewer` nor by anyone `viewer` follows (those are in the
    /// followed tier), by `favorite_count` then `id` descending, strictly after the cursor
    /// (`favorite_count < fc OR (favorite_count = fc AND id < before)`).
    pub async fn feed_popular(
        &self,
        viewer: &str,
        fc: i64,
        before: i64,
        limit: i64,
    ) -> StoreResult<Vec<PostRow>> {
        let sql = format!(
            "SELECT {POST_COLUMNS} FROM post p WHERE p.user_id <> ? \
             AND NOT EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = ? \
             AND f.following_id = p.user_id) \
             AND (p.favorite_count < ? OR (p.favorite_count = ? AND p.id < ?)) \
             ORDER BY p.favorite_count DESC, p.id DESC LIMIT ?"
        );
        Ok(sqlx::query_as::<_, PostRow>(&sql)
            .bind(viewer)
            .bind(viewer)
            .bind(fc)
            .bind(fc)
            .bind(before)
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }
}

/// Weights of one interest type (contract §6.8): the score of (user, keyword) is the sum over the
/// user's likes, comments and views of posts carrying the keyword as a tag of this type, of
/// `weight × decay`, with `decay = max(0.1, 1 − age / window × 0.9)`.
#[derive(Debug, Clone, Copy)]
pub struct InterestWeights {
    /// `HASH_TAG` or `AI_TAG`: only tags of this type count, and rows are stored with it.
    pub tag_type: &'static str,
    /// Per like.
    pub like: f64,
    /// Per comment.
    pub comment: f64,
    /// Per view.
    pub view: f64,
    /// Window of likes and comments, days.
    pub window_days: i64,
    /// Window of views, days.
    pub view_window_days: i64,
}

/// `HASH_TAG` interests: likes ×1.0 and comments ×2.0 over 30 days, views ×0.5 over 7 days.
pub const HASH_TAG_WEIGHTS: InterestWeights = InterestWeights {
    tag_type: "HASH_TAG",
    like: 1.0,
    comment: 2.0,
    view: 0.5,
    window_days: 30,
    view_window_days: 7,
};

/// `AI_TAG` interests: likes ×0.5, comments ×1.0 and views ×0.05, all over 30 days.
pub const AI_TAG_WEIGHTS: InterestWeights = InterestWeights {
    tag_type: "AI_TAG",
    like: 0.5,
    comment: 1.0,
    view: 0.05,
    window_days: 30,
    view_window_days: 30,
};

/// Deletes every interest score (each run recomputes them for its window instead of adding to
/// the previous run's, as the original did).
pub async fn clear_interests(conn: &mut AnyConnection) -> StoreResult<u64> {
    let r = sqlx::query("DELETE FROM user_interest")
        .execute(conn)
        .await?;
    Ok(r.rows_affected())
}

/// Computes and inserts the scores of one interest type at time `now` (µs), in one statement over
/// the events inside the windows. Run after [`clear_interests`] in the same transaction (each
/// (user, keyword, type) is produced once).
pub async fn insert_interests(
    conn: &mut AnyConnection,
    w: &InterestWeights,
    now: i64,
) -> StoreResult<u64> {
    let window = w.window_days * DAY_MICROS;
    let view_window = w.view_window_days * DAY_MICROS;
    // decay = 1 - age * k, with k = 0.9 / window; floored at 0.1. Computed in DOUBLE on both
    // backends (the bound values are doubles); µs times are exact in a double.
    #[allow(clippy::cast_precision_loss)]
    let (now_f, k, k_view) = (now as f64, 0.9 / window as f64, 0.9 / view_window as f64);
    let r = sqlx::query(
        "INSERT INTO user_interest (user_id, interest_keyword, type, score) \
         SELECT e.user_id, t.tag_name, t.type, \
         SUM(e.w * CASE WHEN 1.0 - (? - e.at) * e.k < 0.1 THEN 0.1 ELSE 1.0 - (? - e.at) * e.k END) \
         FROM (\
         SELECT user_id, post_id, create_at AS at, ? AS w, ? AS k FROM post_favorite \
         WHERE create_at >= ? \
         UNION ALL SELECT user_id, post_id, create_at, ?, ? FROM post_comment WHERE create_at >= ? \
         UNION ALL SELECT user_id, post_id, viewed_at, ?, ? FROM post_view_history \
         WHERE viewed_at >= ?\
         ) e JOIN post_tags t ON t.post_id = e.post_id \
         WHERE t.type = ? \
         GROUP BY e.user_id, t.tag_name, t.type",
    )
    .bind(now_f)
    .bind(now_f)
    .bind(w.like)
    .bind(k)
    .bind(now - window)
    .bind(w.comment)
    .bind(k)
    .bind(now - window)
    .bind(w.view)
    .bind(k_view)
    .bind(now - view_window)
    .bind(w.tag_type)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// An interest score row.
#[derive(Debug, Clone, sqlx::FromRow, PartialEq)]
pub struct InterestRow {
    /// User.
    pub user_id: String,
    /// Keyword (tag name).
    pub interest_keyword: String,
    /// `HASH_TAG` / `AI_TAG`.
    #[sqlx(rename = "type")]
    pub kind: String,
    /// Score.
    pub score: f64,
}

impl Store {
    /// `user`'s interest scores, highest first (for the personalised feed and for tests).
    pub async fn interests_of(&self, user: &str) -> StoreResult<Vec<InterestRow>> {
        Ok(sqlx::query_as::<_, InterestRow>(
            "SELECT user_id, interest_keyword, type, score FROM user_interest WHERE user_id = ? \
             ORDER BY score DESC, interest_keyword, type",
        )
        .bind(user)
        .fetch_all(self.pool())
        .await?)
    }
}
