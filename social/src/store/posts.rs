//! Statements on posts and what hangs off them: `post`, `post_attachments`,
//! `post_attachments_user_tags`, `post_tags` and `post_view_history`.
//!
//! Writes take a connection of a [`super::WriteTx`]; reads are [`Store`] methods on the pool. Lists
//! load their related rows in batches (`IN (…)`), a fixed number of statements per page.

use sqlx::{AnyConnection, FromRow};

use super::dialect::placeholders;
use super::{Dialect, Store, StoreResult, inserted_id};
use crate::model::{PostPrev, SimpleUser};

/// A `post` row (without the representative image).
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct PostRow {
    /// Post id.
    pub id: i64,
    /// Author.
    pub user_id: String,
    /// Caption.
    pub comment: String,
    /// Place name.
    pub location: Option<String>,
    /// Likes.
    pub favorite_count: i64,
    /// Comments.
    pub comment_count: i64,
    /// Creation time, µs.
    pub create_at: i64,
    /// The row's unchanging fields as JSON, rendered once per row value (see [`RowJson`]).
    #[sqlx(skip)]
    pub json: RowJson,
}

/// `"comment":…,"location":…,"createdAt":"…"` of a [`PostRow`], rendered on first use and kept
/// with the row (a cached row is rendered once, not once per response). Derived from the row's
/// other fields, so it takes no part in equality.
#[derive(Debug, Clone, Default)]
pub struct RowJson(std::sync::OnceLock<Box<str>>);

impl PartialEq for RowJson {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl PostRow {
    /// The rendered `comment`, `location` and `createdAt` members (no braces, no trailing comma).
    pub fn fixed_json(&self) -> &str {
        self.json.0.get_or_init(|| {
            let mut out = String::with_capacity(self.comment.len() + 64);
            out.push_str("\"comment\":");
            crate::json::push_str(&mut out, &self.comment);
            out.push_str(",\"location\":");
            match &self.location {
                Some(l) => crate::json::push_str(&mut out, l),
                None => out.push_str("null"),
            }
            out.push_str(",\"createdAt\":\"");
            out.push_str(&crate::time::format_micros(self.create_at));
            out.push('"');
            out.into_boxed_str()
        })
    }
}

/// Columns of [`PostRow`] on the alias `p`.
pub(crate) const POST_COLUMNS: &str =
    "p.id, p.user_id, p.comment, p.location, p.favorite_count, p.comment_count, p.create_at";

/// A `post_attachments` row.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct AttachmentRow {
    /// Attachment id.
    pub id: i64,
    /// Post id.
    pub post_id: i64,
    /// Image URL.
    pub url: String,
    /// Thumbnail URL.
    pub thumbnail_url: Option<String>,
    /// Blurhash.
    pub blurhash: Option<String>,
    /// Pixels.
    pub width: Option<i64>,
    /// Pixels.
    pub height: Option<i64>,
}

/// A `post_attachments_user_tags` row.
#[derive(Debug, Clone, FromRow, PartialEq)]
pub struct UserTagRow {
    /// Tag row id.
    pub id: i64,
    /// Attachment id.
    pub post_attachment_id: i64,
    /// Tagged user.
    pub user_id: String,
    /// 0–100.
    pub x_coordinate: f64,
    /// 0–100.
    pub y_coordinate: f64,
}

#[derive(Debug, FromRow)]
struct AuthorRow {
    id: String,
    name: String,
    profile_image: Option<String>,
}

#[derive(Debug, FromRow)]
struct PrevRow {
    id: i64,
    comment_count: i64,
    favorite_count: i64,
    profile_image: Option<String>,
}

/// A new post.
#[derive(Debug, Clone)]
pub struct NewPost<'a> {
    /// Author.
    pub user: &'a str,
    /// Caption.
    pub comment: &'a str,
    /// Place name.
    pub location: Option<&'a str>,
    /// URL of the first image (the profile grid tile).
    pub profile_image: Option<&'a str>,
    /// Creation time, µs.
    pub at: i64,
}

/// Inserts a post with zero counters and returns its id.
pub async fn insert(conn: &mut AnyConnection, p: &NewPost<'_>) -> StoreResult<i64> {
    let r = sqlx::query(
        "INSERT INTO post (user_id, comment, location, favorite_count, comment_count, create_at, \
         profile_image) VALUES (?, ?, ?, 0, 0, ?, ?)",
    )
    .bind(p.user)
    .bind(p.comment)
    .bind(p.location)
    .bind(p.at)
    .bind(p.profile_image)
    .execute(&mut *conn)
    .await?;
    inserted_id(conn, &r).await
}

/// Adds `delta` to the `post_count` of `user`.
pub async fn add_post_count(conn: &mut AnyConnection, user: &str, delta: i64) -> StoreResult<()> {
    sqlx::query("UPDATE user SET post_count = post_count + ? WHERE id = ?")
        .bind(delta)
        .bind(user)
        .execute(conn)
        .await?;
    Ok(())
}

/// A new `post_attachments` row.
#[derive(Debug, Clone)]
pub struct NewAttachment<'a> {
    /// Post id.
    pub post_id: i64,
    /// Image URL.
    pub url: &'a str,
    /// Thumbnail URL.
    pub thumbnail_url: &'a str,
    /// Blurhash.
    pub blurhash: &'a str,
    /// Pixels.
    pub width: i64,
    /// Pixels.
    pub height: i64,
}

/// Inserts an attachment and returns its id.
pub async fn insert_attachment(
    conn: &mut AnyConnection,
    a: &NewAttachment<'_>,
) -> StoreResult<i64> {
    let r = sqlx::query(
        "INSERT INTO post_attachments (post_id, url, thumbnail_url, blurhash, width, height) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(a.post_id)
    .bind(a.url)
    .bind(a.thumbnail_url)
    .bind(a.blurhash)
    .bind(a.width)
    .bind(a.height)
    .execute(&mut *conn)
    .await?;
    inserted_id(conn, &r).await
}

/// Inserts a user tag on an attachment and returns its id.
pub async fn insert_user_tag(
    conn: &mut AnyConnection,
    attachment: i64,
    user: &str,
    x: f64,
    y: f64,
    at: i64,
) -> StoreResult<i64> {
    let r = sqlx::query(
        "INSERT INTO post_attachments_user_tags (user_id, post_attachment_id, x_coordinate, \
         y_coordinate, create_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(user)
    .bind(attachment)
    .bind(x)
    .bind(y)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    inserted_id(conn, &r).await
}

/// Stores `names` (already normalised and distinct) as `HASH_TAG` rows of `post`. A name the post
/// already has keeps its row (no silent type change, unlike the original).
pub async fn insert_hashtags(
    conn: &mut AnyConnection,
    d: Dialect,
    post: i64,
    names: &[String],
) -> StoreResult<()> {
    if names.is_empty() {
        return Ok(());
    }
    let rows = vec!["(?, ?, 'HASH_TAG')"; names.len()].join(", ");
    let sql = format!(
        "{} INTO post_tags (post_id, tag_name, type) VALUES {rows}",
        d.insert_ignore()
    );
    let mut q = sqlx::query(&sql);
    for name in names {
        q = q.bind(post).bind(name.as_str());
    }
    q.execute(conn).await?;
    Ok(())
}

/// Which of `ids` are accounts (inside a transaction, so tags cannot point at a missing user).
pub async fn existing_users(conn: &mut AnyConnection, ids: &[String]) -> StoreResult<Vec<String>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT id FROM user WHERE id IN ({})",
        placeholders(ids.len())
    );
    let mut q = sqlx::query_scalar::<_, String>(&sql);
    for id in ids {
        q = q.bind(id.as_str());
    }
    Ok(q.fetch_all(conn).await?)
}

/// Locks the post row until the transaction ends and returns its author (`None`: no such post).
pub async fn lock(conn: &mut AnyConnection, d: Dialect, post: i64) -> StoreResult<Option<String>> {
    let sql = format!("SELECT user_id FROM post WHERE id = ?{}", d.for_update());
    Ok(sqlx::query_scalar::<_, String>(&sql)
        .bind(post)
        .fetch_optional(conn)
        .await?)
}

/// Adds `delta` to the post's `favorite_count`.
pub async fn add_favorite_count(
    conn: &mut AnyConnection,
    post: i64,
    delta: i64,
) -> StoreResult<()> {
    sqlx::query("UPDATE post SET favorite_count = favorite_count + ? WHERE id = ?")
        .bind(delta)
        .bind(post)
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds `delta` to the post's `comment_count`.
pub async fn add_comment_count(conn: &mut AnyConnection, post: i64, delta: i64) -> StoreResult<()> {
    sqlx::query("UPDATE post SET comment_count = comment_count + ? WHERE id = ?")
        .bind(delta)
        .bind(post)
        .execute(conn)
        .await?;
    Ok(())
}

impl Store {
    /// The post with `id`.
    pub async fn post_by_id(&self, id: i64) -> StoreResult<Option<PostRow>> {
        let sql = format!("SELECT {POST_COLUMNS} FROM post p WHERE p.id = ?");
        Ok(sqlx::query_as::<_, PostRow>(&sql)
            .bind(id)
            .fetch_optional(self.pool())
            .await?)
    }

    /// The posts with `ids` that exist, in no particular order.
    pub async fn posts_by_ids(&self, ids: &[i64]) -> StoreResult<Vec<PostRow>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {POST_COLUMNS} FROM post p WHERE p.id IN ({})",
            placeholders(ids.len())
        );
        let mut q = sqlx::query_as::<_, PostRow>(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    /// Profile grid page: up to `limit` posts of `user` with `id < before`, newest first.
    pub async fn post_previews(
        &self,
        user: &str,
        before: i64,
        limit: i64,
    ) -> StoreResult<Vec<PostPrev>> {
        let rows = sqlx::query_as::<_, PrevRow>(
            "SELECT id, comment_count, favorite_count, profile_image FROM post \
             WHERE user_id = ? AND id < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(user)
        .bind(before)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| PostPrev {
                post_id: r.id,
                comment_count: r.comment_count,
                favorite_count: r.favorite_count,
                profile_image: r.profile_image,
            })
            .collect())
    }

    /// The authors `ids` as [`SimpleUser`]s (`following` false), in no particular order.
    pub async fn post_authors(&self, ids: &[String]) -> StoreResult<Vec<SimpleUser>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, name, profile_image FROM user WHERE id IN ({})",
            placeholders(ids.len())
        );
        let mut q = sqlx::query_as::<_, AuthorRow>(&sql);
        for id in ids {
            q = q.bind(id.as_str());
        }
        Ok(q.fetch_all(self.pool())
            .await?
            .into_iter()
            .map(|r| SimpleUser {
                id: r.id,
                name: r.name,
                profile_image: r.profile_image,
                following: false,
            })
            .collect())
    }

    /// The automatic tags of `posts` (`post_tags`): `(post_id, tag_name, type)` by post, then
    /// type (`AI_TAG` before `HASH_TAG`), then name.
    pub async fn post_tag_names(&self, posts: &[i64]) -> StoreResult<Vec<(i64, String, String)>> {
        if posts.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT post_id, tag_name, type FROM post_tags WHERE post_id IN ({}) \
             ORDER BY post_id, type, tag_name",
            placeholders(posts.len())
        );
        let mut q = sqlx::query_as::<_, (i64, String, String)>(&sql);
        for id in posts {
            q = q.bind(*id);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    /// The attachments of `posts`, by post then attachment id ascending (upload order).
    pub async fn post_attachments(&self, posts: &[i64]) -> StoreResult<Vec<AttachmentRow>> {
        if posts.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, post_id, url, thumbnail_url, blurhash, width, height \
             FROM post_attachments WHERE post_id IN ({}) ORDER BY post_id, id",
            placeholders(posts.len())
        );
        let mut q = sqlx::query_as::<_, AttachmentRow>(&sql);
        for id in posts {
            q = q.bind(*id);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    /// The user tags on `attachments`, by attachment then tag id ascending.
    pub async fn post_user_tags(&self, attachments: &[i64]) -> StoreResult<Vec<UserTagRow>> {
        if attachments.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, post_attachment_id, user_id, x_coordinate, y_coordinate \
             FROM post_attachments_user_tags WHERE post_attachment_id IN ({}) \
             ORDER BY post_attachment_id, id",
            placeholders(attachments.len())
        );
        let mut q = sqlx::query_as::<_, UserTagRow>(&sql);
        for id in attachments {
            q = q.bind(*id);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }
}

/// Appends a view of `post` by `user` at `at`; a post or user that does not exist is ignored (no
/// row, no error). Returns the rows inserted (0 or 1).
pub async fn record_view(
    conn: &mut AnyConnection,
    user: &str,
    post: i64,
    at: i64,
    seconds: Option<i64>,
) -> StoreResult<u64> {
    let r = sqlx::query(
        "INSERT INTO post_view_history (user_id, post_id, viewed_at, time_spent_seconds) \
         SELECT u.id, p.id, ?, ? FROM post p JOIN user u ON u.id = ? WHERE p.id = ?",
    )
    .bind(at)
    .bind(seconds)
    .bind(user)
    .bind(post)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}
