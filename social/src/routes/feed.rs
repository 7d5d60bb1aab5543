//! `GET /api/feed` (contract §3.1 #28, §6.11): the non-personalised tiers.
//!
//! Order: posts of the users the caller follows, newest first; then "popular" posts (everyone
//! else's but the caller's own, by `favorite_count` then `id` descending). Pages of 30; the
//! frontend stops below 30.
//!
//! Cursor: the original's pair `postId` + `favoriteCount` (echoed from `lastPostId` and
//! `lastFavoriteCount`), with the tier encoded in it: `favoriteCount = -1` (never a real count)
//! means "in the followed tier, continue below `postId`"; `favoriteCount >= 0` means "in the popular
//! tier, continue after (`favoriteCount`, `postId`)". A page that exhausts the followed tier is
//! filled from the start of the popular tier, and its cursor then points into the popular tier, so
//! no post is repeated or skipped at the boundary (the tiers are disjoint: the popular tier leaves
//! out followed users' posts). `pages` (the personalised cache's page index) is accepted and
//! ignored: no personalised cache exists yet, so `pointer` is always null.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::posts::{build_posts, query_i64};
use super::with_ctx;
use crate::app::Ctx;
use crate::http::{ApiResult, authed, finish, get, sc};
use crate::model::Post;

/// Posts per page.
pub const FEED_PAGE: i64 = 30;
/// `lastFavoriteCount` of a page ending in the followed tier.
pub const FOLLOWED_TIER: i64 = -1;

/// The routes of this module.
pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    warp::path!("feed")
        .and(get())
        .and(with_ctx(ctx))
        .and(authed(ctx.tokens.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .then(feed)
        .map(finish)
        .boxed()
}

/// The feed response (`pointer` is the personalised page index, null in these tiers).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FeedPage {
    feed: Vec<Post>,
    pointer: Option<i64>,
    last_post_id: Option<i64>,
    last_favorite_count: Option<i64>,
}

/// Where a page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    /// Followed tier below this post id (the start is `i64::MAX`).
    Followed(i64),
    /// Popular tier after (favorite count, post id).
    Popular(i64, i64),
}

impl Cursor {
    fn from_query(post_id: Option<i64>, favorite_count: Option<i64>) -> Cursor {
        match (post_id, favorite_count) {
            (Some(id), Some(fc)) if fc >= 0 => Cursor::Popular(fc, id),
            (Some(id), Some(_)) => Cursor::Followed(id),
            _ => Cursor::Followed(i64::MAX),
        }
    }
}

async fn feed(ctx: Ctx, user: String, q: HashMap<String, String>) -> ApiResult {
    // Validated (a malformed value is 400 BR) but unused until the personalised tier exists.
    let _pages = query_i64(&q, "pages")?;
    let cursor = Cursor::from_query(query_i64(&q, "postId")?, query_i64(&q, "favoriteCount")?);
    let mut rows = Vec::new();
    let mut last_in_followed = false;
    let (fc, before) = match cursor {
        Cursor::Followed(before) => {
            rows = ctx.store.feed_followed(&user, before, FEED_PAGE).await?;
            last_in_followed = !rows.is_empty();
            (i64::MAX, i64::MAX)
        }
        Cursor::Popular(fc, before) => (fc, before),
    };
    let room = FEED_PAGE - i64::try_from(rows.len()).unwrap_or(FEED_PAGE);
    if room > 0 {
        let popular = ctx.store.feed_popular(&user, fc, before, room).await?;
        if !popular.is_empty() {
            last_in_followed = false;
        }
        rows.extend(popular);
    }
    let (last_post_id, last_favorite_count) = match rows.last() {
        None => (None, None),
        Some(r) if last_in_followed => (Some(r.id), Some(FOLLOWED_TIER)),
        Some(r) => (Some(r.id), Some(r.favorite_count)),
    };
    let feed = build_posts(&ctx, &user, rows.into_iter().map(Arc::new).collect()).await?;
    sc(&FeedPage {
        feed,
        pointer: None,
        last_post_id,
        last_favorite_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_encode_the_tier() {
        assert_eq!(Cursor::from_query(None, None), Cursor::Followed(i64::MAX));
        assert_eq!(
            Cursor::from_query(Some(5), None),
            Cursor::Followed(i64::MAX)
        );
        assert_eq!(Cursor::from_query(Some(5), Some(-1)), Cursor::Followed(5));
        assert_eq!(Cursor::from_query(Some(5), Some(0)), Cursor::Popular(0, 5));
        assert_eq!(Cursor::from_query(Some(5), Some(7)), Cursor::Popular(7, 5));
    }
}
