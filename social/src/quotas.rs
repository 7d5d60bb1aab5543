//! Per-user quotas on writes: follows, likes, comments, posts, chat rooms, invitations and
//! uploads (count and bytes), each counted per user per window in the key-value store (so every
//! `instar social` process shares them through Redis). Past a quota the request is refused with
//! 429 `{"code":"TMR"}` before any work, and the refusal is counted on `/metrics`
//! (`instar_quota_refusals_total{write="…"}`). The defaults are far above what a person does in
//! an hour; they bound what a script with a stolen or throw-away account can do.
//!
//! A key-value store outage lets writes through (logged): quotas protect the service and other
//! users, and refusing every write while Redis is down would be the outage they exist to avoid.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::http::ApiError;
use crate::kv::Kv;

/// A kind of write with a quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// `POST /api/user/follow`.
    Follow,
    /// `POST /api/post/like` (both directions of the toggle).
    Like,
    /// `POST /api/post/comment`.
    Comment,
    /// `POST /api/post/create`.
    Post,
    /// `POST /api/chat/create`.
    Room,
    /// `POST /api/chat/invite/user` (each invited user counts).
    Invite,
    /// Uploads: profile and group images, chat files, post images (each file counts).
    Upload,
    /// Bytes uploaded.
    UploadBytes,
}

impl Write {
    /// Every kind, in `/metrics` order.
    pub const ALL: [Write; 8] = [
        Write::Follow,
        Write::Like,
        Write::Comment,
        Write::Post,
        Write::Room,
        Write::Invite,
        Write::Upload,
        Write::UploadBytes,
    ];

    /// The label value on `/metrics` and the key part.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Write::Follow => "follow",
            Write::Like => "like",
            Write::Comment => "comment",
            Write::Post => "post",
            Write::Room => "room",
            Write::Invite => "invite",
            Write::Upload => "upload",
            Write::UploadBytes => "upload_bytes",
        }
    }

    fn index(self) -> usize {
        Write::ALL.iter().position(|w| *w == self).unwrap_or(0)
    }
}

/// The quotas in force, per user per [`Quotas::window`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// The window every quota counts over.
    pub window: Duration,
    /// Follows.
    pub follows: u64,
    /// Likes and unlikes.
    pub likes: u64,
    /// Comments.
    pub comments: u64,
    /// Posts.
    pub posts: u64,
    /// Chat rooms created.
    pub rooms: u64,
    /// Users invited to groups.
    pub invites: u64,
    /// Files uploaded.
    pub uploads: u64,
    /// Bytes uploaded.
    pub upload_bytes: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60 * 60),
            follows: 1_000,
            likes: 3_000,
            comments: 1_000,
            posts: 100,
            rooms: 200,
            invites: 1_000,
            uploads: 1_000,
            upload_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

impl Quotas {
    /// The quota of `write`.
    #[must_use]
    pub fn of(&self, write: Write) -> u64 {
        match write {
            Write::Follow => self.follows,
            Write::Like => self.likes,
            Write::Comment => self.comments,
            Write::Post => self.posts,
            Write::Room => self.rooms,
            Write::Invite => self.invites,
            Write::Upload => self.uploads,
            Write::UploadBytes => self.upload_bytes,
        }
    }
}

/// Refusals per kind since the process started.
static REFUSED: [AtomicU64; Write::ALL.len()] = [const { AtomicU64::new(0) }; Write::ALL.len()];

/// `(kind, refusals)` for every kind (for `/metrics`).
#[must_use]
pub fn refusals() -> Vec<(&'static str, u64)> {
    Write::ALL
        .iter()
        .map(|w| (w.name(), REFUSED[w.index()].load(Ordering::Relaxed)))
        .collect()
}

/// Counts `amount` of `write` against `user`'s quota in `kv`; 429 `TMR` once it is used up.
///
/// # Errors
/// [`ApiError::too_many`] past the quota.
pub async fn charge(
    kv: &dyn Kv,
    quotas: &Quotas,
    user: &str,
    write: Write,
    amount: u64,
) -> Result<(), ApiError> {
    let key = format!("quota:{}:{user}", write.name());
    match kv.incr_by(&key, amount, quotas.window).await {
        Ok(used) if used > quotas.of(write) => {
            REFUSED[write.index()].fetch_add(1, Ordering::Relaxed);
            tracing::info!(%user, write = write.name(), used, "write quota used up");
            Err(ApiError::too_many())
        }
        Ok(_) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, write = write.name(), "quota store unavailable; write let through");
            Ok(())
        }
    }
}
