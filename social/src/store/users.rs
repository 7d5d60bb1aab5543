//! Statements on the `user` table used by sign-up, sign-in and the user routes.

use sqlx::{AnyConnection, FromRow};

use super::dialect::placeholders;
use super::{Dialect, Store, StoreResult};
use crate::model::{EditUser, SimpleUser};

/// A `user` row.
#[derive(Debug, Clone, FromRow)]
pub struct UserRow {
    /// Login id.
    pub id: String,
    /// argon2id PHC string; `None` for Google accounts.
    pub password: Option<String>,
    /// Display name.
    pub name: String,
    /// Free text.
    pub sex: Option<String>,
    /// Lower-cased e-mail.
    pub email: String,
    /// Bio.
    pub comment: Option<String>,
    /// Address.
    pub address: Option<String>,
    /// Address detail.
    pub address_detail: Option<String>,
    /// Users this user follows.
    pub follow_count: i64,
    /// Followers.
    pub follower_count: i64,
    /// Posts.
    pub post_count: i64,
    /// Image URL.
    pub profile_image: Option<String>,
    /// `USER` / `ADMIN`.
    pub role: String,
    /// `LOCAL` / `SOCIAL`.
    #[sqlx(rename = "type")]
    pub kind: String,
    /// Google subject.
    pub social_id: Option<String>,
    /// Last sign-in (local or Google), µs.
    pub last_login_at: Option<i64>,
    /// Raised by a password change and by signing out everywhere: tokens carrying an older
    /// version are refused ([`crate::revocation`]).
    pub token_version: i64,
}

const USER_COLUMNS: &str = "id, password, name, sex, email, comment, address, address_detail, \
     follow_count, follower_count, post_count, profile_image, role, type, social_id, last_login_at, \
     token_version";

/// A new account.
#[derive(Debug, Clone)]
pub struct NewUser<'a> {
    /// Login id.
    pub id: &'a str,
    /// Hashed password (`None` for Google accounts).
    pub password: Option<&'a str>,
    /// Display name.
    pub name: &'a str,
    /// Free text.
    pub sex: Option<&'a str>,
    /// Lower-cased e-mail.
    pub email: &'a str,
    /// Bio (`""` for local sign-up, as the original).
    pub comment: Option<&'a str>,
    /// Address.
    pub address: Option<&'a str>,
    /// Address detail.
    pub address_detail: Option<&'a str>,
    /// Image URL (`""` initially, as the original).
    pub profile_image: Option<&'a str>,
    /// `LOCAL` / `SOCIAL`.
    pub kind: &'a str,
    /// Google subject.
    pub social_id: Option<&'a str>,
    /// Creation time, µs.
    pub created_at: i64,
}

/// Inserts an account; never updates one. A taken id or e-mail gives `StoreError::Conflict`.
pub async fn insert(conn: &mut AnyConnection, u: &NewUser<'_>) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO user (id, password, name, sex, email, comment, address, address_detail, \
         profile_image, role, type, social_id, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'USER', ?, ?, ?)",
    )
    .bind(u.id)
    .bind(u.password)
    .bind(u.name)
    .bind(u.sex)
    .bind(u.email)
    .bind(u.comment)
    .bind(u.address)
    .bind(u.address_detail)
    .bind(u.profile_image)
    .bind(u.kind)
    .bind(u.social_id)
    .bind(u.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

impl Store {
    /// The user with `id`.
    pub async fn user_by_id(&self, id: &str) -> StoreResult<Option<UserRow>> {
        Ok(
            sqlx::query_as::<_, UserRow>(&format!("SELECT {USER_COLUMNS} FROM user WHERE id = ?"))
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }

    /// Whether an account with `id` exists.
    pub async fn user_exists(&self, id: &str) -> StoreResult<bool> {
        let n: Option<i64> = sqlx::query_scalar("SELECT 1 FROM user WHERE id = ?")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        Ok(n.is_some())
    }

    /// Whether an account uses `email` (lower-cased).
    pub async fn email_taken(&self, email: &str) -> StoreResult<bool> {
        let n: Option<i64> = sqlx::query_scalar("SELECT 1 FROM user WHERE email = ?")
            .bind(email)
            .fetch_optional(self.pool())
            .await?;
        Ok(n.is_some())
    }

    /// The account bound to the Google subject `sub`.
    pub async fn user_by_social_id(&self, sub: &str) -> StoreResult<Option<UserRow>> {
        Ok(sqlx::query_as::<_, UserRow>(&format!(
            "SELECT {USER_COLUMNS} FROM user WHERE social_id = ?"
        ))
        .bind(sub)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Records a successful sign-in (local or Google).
    pub async fn set_last_login(&self, id: &str, at: i64) -> StoreResult<()> {
        sqlx::query("UPDATE user SET last_login_at = ? WHERE id = ?")
            .bind(at)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Replaces a password hash and raises the token version (every earlier token is revoked);
    /// returns the new version, `None` when there is no such user.
    pub async fn set_password(&self, id: &str, hash: &str) -> StoreResult<Option<i64>> {
        let mut tx = self.write().await?;
        let n = sqlx::query(
            "UPDATE user SET password = ?, token_version = token_version + 1 WHERE id = ?",
        )
        .bind(hash)
        .bind(id)
        .execute(tx.conn())
        .await?
        .rows_affected();
        let version = read_token_version(tx.conn(), id, n).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Raises `id`'s token version (signing out everywhere); returns the new version, `None`
    /// when there is no such user.
    pub async fn bump_token_version(&self, id: &str) -> StoreResult<Option<i64>> {
        let mut tx = self.write().await?;
        let n = sqlx::query("UPDATE user SET token_version = token_version + 1 WHERE id = ?")
            .bind(id)
            .execute(tx.conn())
            .await?
            .rows_affected();
        let version = read_token_version(tx.conn(), id, n).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// `id`'s current token version, `None` when there is no such user.
    pub async fn token_version(&self, id: &str) -> StoreResult<Option<i64>> {
        Ok(
            sqlx::query_scalar::<_, i64>("SELECT token_version FROM user WHERE id = ?")
                .bind(id)
                .fetch_optional(self.pool())
                .await?,
        )
    }
}

/// The token version just written by an update that touched `rows` rows (inside its transaction).
async fn read_token_version(
    conn: &mut AnyConnection,
    id: &str,
    rows: u64,
) -> StoreResult<Option<i64>> {
    if rows == 0 {
        return Ok(None);
    }
    Ok(
        sqlx::query_scalar::<_, i64>("SELECT token_version FROM user WHERE id = ?")
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Records a sign-in inside a transaction (a Google sign-up).
pub async fn set_last_login_on(conn: &mut AnyConnection, id: &str, at: i64) -> StoreResult<()> {
    sqlx::query("UPDATE user SET last_login_at = ? WHERE id = ?")
        .bind(at)
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// A user row locked by [`lock_pair`].
#[derive(Debug, Clone, FromRow)]
pub struct LockedUser {
    /// Login id.
    pub id: String,
    /// Image URL.
    pub profile_image: Option<String>,
}

/// Locks the rows of users `a` and `b` until the transaction ends and returns those that exist.
/// One statement, rows taken in id order, so two transactions locking the same pair (A follows B
/// while B follows A) queue instead of deadlocking.
pub async fn lock_pair(
    conn: &mut AnyConnection,
    dialect: Dialect,
    a: &str,
    b: &str,
) -> StoreResult<Vec<LockedUser>> {
    Ok(sqlx::query_as::<_, LockedUser>(&format!(
        "SELECT id, profile_image FROM user WHERE id IN (?, ?) ORDER BY id{}",
        dialect.for_update()
    ))
    .bind(a)
    .bind(b)
    .fetch_all(conn)
    .await?)
}

/// Adds `delta` to the number of users `id` follows (never below zero).
pub async fn add_follow_count(conn: &mut AnyConnection, id: &str, delta: i64) -> StoreResult<u64> {
    let r = sqlx::query(
        "UPDATE user SET follow_count = follow_count + ? WHERE id = ? AND follow_count + ? >= 0",
    )
    .bind(delta)
    .bind(id)
    .bind(delta)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// Adds `delta` to the number of followers of `id` (never below zero).
pub async fn add_follower_count(
    conn: &mut AnyConnection,
    id: &str,
    delta: i64,
) -> StoreResult<u64> {
    let r = sqlx::query(
        "UPDATE user SET follower_count = follower_count + ? \
         WHERE id = ? AND follower_count + ? >= 0",
    )
    .bind(delta)
    .bind(id)
    .bind(delta)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// The current profile image of `id`, locked until the transaction ends.
#[derive(Debug, Clone, FromRow)]
pub struct ProfileImage {
    /// Image URL (`""` or `NULL` when there is none).
    pub profile_image: Option<String>,
    /// Thumbnail URL.
    pub profile_thumbnail: Option<String>,
}

/// Locks the row of `id` and returns its profile image URLs (`None`: no such user).
pub async fn lock_profile_image(
    conn: &mut AnyConnection,
    dialect: Dialect,
    id: &str,
) -> StoreResult<Option<ProfileImage>> {
    Ok(sqlx::query_as::<_, ProfileImage>(&format!(
        "SELECT profile_image, profile_thumbnail FROM user WHERE id = ?{}",
        dialect.for_update()
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Sets the profile image of `id` (URL, thumbnail URL, blurhash).
pub async fn set_profile_image(
    conn: &mut AnyConnection,
    id: &str,
    url: &str,
    thumbnail: &str,
    blurhash: &str,
) -> StoreResult<u64> {
    let r = sqlx::query(
        "UPDATE user SET profile_image = ?, profile_thumbnail = ?, profile_blurhash = ? \
         WHERE id = ?",
    )
    .bind(url)
    .bind(thumbnail)
    .bind(blurhash)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// A user as lists show it, with whether the viewer follows them (0/1).
#[derive(Debug, Clone, FromRow)]
struct SimpleUserRow {
    id: String,
    name: String,
    profile_image: Option<String>,
    following: i64,
}

impl From<SimpleUserRow> for SimpleUser {
    fn from(r: SimpleUserRow) -> Self {
        SimpleUser {
            id: r.id,
            name: r.name,
            profile_image: r.profile_image,
            following: r.following != 0,
        }
    }
}

/// `GET /api/user/details/info`'s user row with whether the viewer follows them (0/1).
#[derive(Debug, Clone, FromRow)]
pub struct UserDetailsRow {
    /// Login id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Image URL.
    pub profile_image: Option<String>,
    /// Bio.
    pub comment: Option<String>,
    /// Users this user follows.
    pub follow_count: i64,
    /// Followers.
    pub follower_count: i64,
    /// Posts.
    pub post_count: i64,
    /// 1 when the viewer follows this user.
    pub is_followed: i64,
}

impl Store {
    /// The user `id` as `viewer` sees it (`is_followed`: `viewer` follows `id`).
    pub async fn user_details(
        &self,
        viewer: &str,
        id: &str,
    ) -> StoreResult<Option<UserDetailsRow>> {
        Ok(sqlx::query_as::<_, UserDetailsRow>(
            "SELECT u.id, u.name, u.profile_image, u.comment, u.follow_count, u.follower_count, \
                    u.post_count, CASE WHEN f.id IS NULL THEN 0 ELSE 1 END AS is_followed \
             FROM user u LEFT JOIN follows f ON f.follower_id = ? AND f.following_id = u.id \
             WHERE u.id = ?",
        )
        .bind(viewer)
        .bind(id)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Users `viewer` follows whose lower-cased id or name matches `pattern` (a lower-cased
    /// [`super::dialect::like_contains`] pattern), by id, at most `limit`.
    pub async fn search_followed_users(
        &self,
        viewer: &str,
        pattern: &str,
        limit: i64,
    ) -> StoreResult<Vec<SimpleUser>> {
        let esc = self.dialect().like_escape();
        let rows = sqlx::query_as::<_, SimpleUserRow>(&format!(
            "SELECT u.id, u.name, u.profile_image, 1 AS following \
             FROM follows f JOIN user u ON u.id = f.following_id \
             WHERE f.follower_id = ? AND (LOWER(u.id) LIKE ?{esc} OR LOWER(u.name) LIKE ?{esc}) \
             ORDER BY u.id LIMIT ?"
        ))
        .bind(viewer)
        .bind(pattern)
        .bind(pattern)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(SimpleUser::from).collect())
    }

    /// Users `viewer` does not follow whose lower-cased id or name matches `pattern`, by id, at
    /// most `limit` (`viewer` included when it matches).
    pub async fn search_other_users(
        &self,
        viewer: &str,
        pattern: &str,
        limit: i64,
    ) -> StoreResult<Vec<SimpleUser>> {
        let esc = self.dialect().like_escape();
        let rows = sqlx::query_as::<_, SimpleUserRow>(&format!(
            "SELECT u.id, u.name, u.profile_image, 0 AS following \
             FROM user u \
             WHERE (LOWER(u.id) LIKE ?{esc} OR LOWER(u.name) LIKE ?{esc}) \
               AND NOT EXISTS (SELECT 1 FROM follows f \
                               WHERE f.follower_id = ? AND f.following_id = u.id) \
             ORDER BY u.id LIMIT ?"
        ))
        .bind(pattern)
        .bind(pattern)
        .bind(viewer)
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(SimpleUser::from).collect())
    }

    /// The users among `ids` that exist, with whether `viewer` follows each, in no particular
    /// order (one statement for the whole list).
    pub async fn simple_users_by_ids(
        &self,
        viewer: &str,
        ids: &[String],
    ) -> StoreResult<Vec<SimpleUser>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT u.id, u.name, u.profile_image, \
                    CASE WHEN f.id IS NULL THEN 0 ELSE 1 END AS following \
             FROM user u LEFT JOIN follows f ON f.follower_id = ? AND f.following_id = u.id \
             WHERE u.id IN ({})",
            placeholders(ids.len())
        );
        let mut q = sqlx::query_as::<_, SimpleUserRow>(&sql).bind(viewer);
        for id in ids {
            q = q.bind(id);
        }
        let rows = q.fetch_all(self.pool()).await?;
        Ok(rows.into_iter().map(SimpleUser::from).collect())
    }

    /// Overwrites the editable profile fields of `id`; returns the rows matched (0: no such user
    /// — or, on MySQL without `FOUND_ROWS`, nothing changed; callers check existence on 0).
    pub async fn update_profile_info(&self, id: &str, info: &EditUser) -> StoreResult<u64> {
        let r = sqlx::query(
            "UPDATE user SET name = ?, sex = ?, comment = ?, address = ?, address_detail = ? \
             WHERE id = ?",
        )
        .bind(info.name.as_deref())
        .bind(info.sex.as_deref())
        .bind(info.comment.as_deref())
        .bind(info.address.as_deref())
        .bind(info.address_detail.as_deref())
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(r.rows_affected())
    }
}
