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

/// What a user did to a post, for the incremental interest update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterestEvent {
    /// A like.
    Like,
    /// A comment.
    Comment,
    /// A view.
    View,
}

impl InterestWeights {
    /// The weight and window (µs) of `event` for this type.
    fn of(&self, event: InterestEvent) -> (f64, i64) {
        match event {
            InterestEvent::Like => (self.like, self.window_days * DAY_MICROS),
            InterestEvent::Comment => (self.comment, self.window_days * DAY_MICROS),
            InterestEvent::View => (self.view, self.view_window_days * DAY_MICROS),
        }
    }
}

/// The linear decay of contract §6.8 for an event `age` µs old in a window of `window` µs:
/// `max(0.1, 1 − age / window × 0.9)`, and `None` outside the window (or in the future).
#[must_use]
pub fn decay(age: i64, window: i64) -> Option<f64> {
    if age < 0 || age > window || window <= 0 {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let d = 1.0 - (age as f64 / window as f64) * 0.9;
    Some(d.max(0.1))
}

/// Adds one event of `user` on `post` at `at` (µs), seen at `now`, to `user`'s interest scores:
/// for each tag of the post, `weight × decay` to the score of its own type (contract §6.8, fixed
/// per §7.14). Run in the transaction that records the event, so the full recompute (which
/// deletes and recounts in one transaction) counts it exactly once. Returns the rows touched.
pub async fn add_interest_event(
    conn: &mut AnyConnection,
    dialect: super::Dialect,
    user: &str,
    post: i64,
    event: InterestEvent,
    at: i64,
    now: i64,
) -> StoreResult<u64> {
    let mut touched = 0;
    for w in [&HASH_TAG_WEIGHTS, &AI_TAG_WEIGHTS] {
        let (weight, window) = w.of(event);
        let Some(decay) = decay(now - at, window) else {
            continue;
        };
        let sql = format!(
            "INSERT INTO user_interest (user_id, interest_keyword, type, score) \
             SELECT ?, t.tag_name, t.type, ? FROM post_tags t WHERE t.post_id = ? AND t.type = ?{}",
            dialect.on_conflict_update(
                "user_id, interest_keyword, type",
                &format!("score = score + {}", dialect.excluded("score"))
            )
        );
        let r = sqlx::query(&sql)
            .bind(user)
            .bind(weight * decay)
            .bind(post)
            .bind(w.tag_type)
            .execute(&mut *conn)
            .await?;
        touched += r.rows_affected();
    }
    Ok(touched)
}

/// `NOT EXISTS` clauses leaving out the posts `p` that the user (the next three bound values,
/// each followed by a since-time) viewed, liked or commented on since then.
const NOT_SEEN: &str = "NOT EXISTS (SELECT 1 FROM post_view_history v WHERE v.user_id = ? \
     AND v.post_id = p.id AND v.viewed_at >= ?) \
     AND NOT EXISTS (SELECT 1 FROM post_favorite l WHERE l.user_id = ? AND l.post_id = p.id \
     AND l.create_at >= ?) \
     AND NOT EXISTS (SELECT 1 FROM post_comment c WHERE c.user_id = ? AND c.post_id = p.id \
     AND c.create_at >= ?)";

impl Store {
    /// The ids of users who signed in (by password or Google) at or after `since`, above `after`
    /// by id, `limit` at most, by id.
    pub async fn active_users(
        &self,
        since: i64,
        after: &str,
        limit: i64,
    ) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar::<_, String>(
            "SELECT id FROM user WHERE last_login_at >= ? AND id > ? ORDER BY id LIMIT ?",
        )
        .bind(since)
        .bind(after)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// `user`'s `limit` best interest scores of `kind`, best first (ties by keyword).
    pub async fn top_interests(
        &self,
        user: &str,
        kind: &str,
        limit: i64,
    ) -> StoreResult<Vec<(String, f64)>> {
        Ok(sqlx::query_as::<_, (String, f64)>(
            "SELECT interest_keyword, score FROM user_interest WHERE user_id = ? AND type = ? \
             ORDER BY score DESC, interest_keyword LIMIT ?",
        )
        .bind(user)
        .bind(kind)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Followed tier candidates (contract §6.10 step 2): posts of the users `user` follows (not
    /// the user's own) that the user has not viewed, liked or commented on since `seen_since`,
    /// newest first, `limit` at most. No time window (as the original).
    pub async fn followed_candidates(
        &self,
        user: &str,
        seen_since: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, i64)>> {
        let sql = format!(
            "SELECT p.id, p.create_at FROM follows f JOIN post p \
             ON p.user_id = f.following_id WHERE f.follower_id = ? AND p.user_id <> ? AND {NOT_SEEN} \
             ORDER BY p.create_at DESC, p.id DESC LIMIT ?"
        );
        Ok(sqlx::query_as::<_, (i64, i64)>(&sql)
            .bind(user)
            .bind(user)
            .bind(user)
            .bind(seen_since)
            .bind(user)
            .bind(seen_since)
            .bind(user)
            .bind(seen_since)
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    /// Interest tier candidates (contract §6.10 step 3): others' posts, not seen since
    /// `seen_since`, with at least one tag named in `keywords`, ranked by the sum over their
    /// matching tag rows of `w_type + favorite_count + 10 / (days since posted + 1)` (`w_type` 100
    /// for a hashtag, 50 for an image tag; whole days elapsed at `now`), best first (ties: newer
    /// id first), `limit` at most. `keywords` must not be empty.
    pub async fn interest_candidates(
        &self,
        user: &str,
        keywords: &[String],
        now: i64,
        seen_since: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, f64)>> {
        let sql = format!(
            "SELECT p.id, SUM(CASE WHEN t.type = 'HASH_TAG' THEN ? ELSE ? END \
             + p.favorite_count + ? / (((? - p.create_at) - (? - p.create_at) % ?) / ? + 1)) AS r \
             FROM post_tags t JOIN post p ON p.id = t.post_id \
             WHERE t.tag_name IN ({}) AND p.user_id <> ? AND {NOT_SEEN} \
             GROUP BY p.id ORDER BY r DESC, p.id DESC LIMIT ?",
            super::dialect::placeholders(keywords.len())
        );
        let now = now.max(0);
        let mut q = sqlx::query_as::<_, (i64, f64)>(&sql)
            .bind(100.0_f64)
            .bind(50.0_f64)
            .bind(10.0_f64)
            .bind(now)
            .bind(now)
            .bind(DAY_MICROS)
            .bind(DAY_MICROS);
        for k in keywords {
            q = q.bind(k.as_str());
        }
        Ok(q.bind(user)
            .bind(user)
            .bind(seen_since)
            .bind(user)
            .bind(seen_since)
            .bind(user)
            .bind(seen_since)
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::decay;

    const DAY: i64 = super::DAY_MICROS;

    #[test]
    fn decay_is_linear_inside_the_window_and_floored() {
        assert_eq!(decay(0, 30 * DAY), Some(1.0));
        let d29 = decay(29 * DAY, 30 * DAY).unwrap();
        assert!((d29 - (1.0 - 29.0 / 30.0 * 0.9)).abs() < 1e-12, "{d29}");
        assert!((decay(30 * DAY, 30 * DAY).unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(decay(30 * DAY + 1, 30 * DAY), None);
        assert!((decay(7 * DAY, 7 * DAY).unwrap() - 0.1).abs() < 1e-12);
        assert_eq!(decay(8 * DAY, 7 * DAY), None);
        assert_eq!(decay(-1, 7 * DAY), None);
    }
}
