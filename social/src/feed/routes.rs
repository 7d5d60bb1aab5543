//! `GET /api/feed` (contract §3.1 #28, §6.11): the personalised list, then the non-personalised
//! tiers.
//!
//! Cached mode: a user with a recommendation list ([`super::engine`]) is served it in pages of 30
//! by the stored pointer. A request without `pages` (a fresh load) serves the page at the pointer
//! (after rebuilding the list if the profile changed since it was built, so the last like,
//! comment or view shows at once); with `pages`, it must equal the pointer (else 400 `BR`, also
//! when there is no list), except right after a rebuild (pointer 0), which serves the new list's
//! first page so that a frontend scrolling through the old list carries on instead of stopping. The answer carries `pointer` = the page served; the frontend then asks
//! `pages=pointer+1`. Pages keep the list's order; `isLiked` is the viewer's. Served posts become
//! "seen" (left out of the next lists). Once the list is used up, the non-personalised tiers
//! follow without the list's posts: the list's last page is topped up to 30 from them and
//! answered in fallback mode (`pointer` null, the keyset cursor of its last post), so the frontend
//! continues with `postId`/`favoriteCount`: no post twice, none skipped.
//!
//! Fallback (a user with no list, and after the list): posts of the users the caller follows,
//! newest first; then "popular" posts (everyone else's but the caller's own, by `favorite_count`
//! then `id` descending). Pages of 30; the frontend stops below 30.
//!
//! Cursor: the original's pair `postId` + `favoriteCount` (echoed from `lastPostId` and
//! `lastFavoriteCount`), with the tier encoded in it: `favoriteCount = -1` (never a real count)
//! means "in the followed tier, continue below `postId`"; `favoriteCount >= 0` means "in the popular
//! tier, continue after (`favoriteCount`, `postId`)". A page that exhausts the followed tier is
//! filled from the start of the popular tier, and its cursor then points into the popular tier, so
//! no post is repeated or skipped at the boundary (the tiers are disjoint: the popular tier leaves
//! out followed users' posts).
//!
//! A page wholly of the followed tier whose parts all came from the read cache is kept rendered
//! for the viewer's next request (users without a list), and served while none of the change
//! epochs noted as it was rendered has moved (`crate::cache::Watch`).

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use super::engine::Feed;
use super::state::Page;
use crate::cache::{AuthorPosts, Dep, Followees, Watch};
use crate::ctx::Ctx;
use crate::ctx::with_ctx;
use crate::http::{ApiError, ApiResult, authed, finish, get, sc_json, sc_shared};
use crate::json::push_opt_i64;
use crate::posts::routes::{PostRef, build_posts, query_i64};
use crate::posts::view::ShownPost;
use crate::store::StoreError;

/// Posts per page.
pub const FEED_PAGE: i64 = 30;
/// `lastFavoriteCount` of a page ending in the followed tier.
pub const FOLLOWED_TIER: i64 = -1;

/// The routes of this module.
pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    warp::path!("feed")
        .and(get())
        .and(with_ctx(ctx))
        .and(authed(ctx.tokens.clone(), ctx.revocation.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .then(feed)
        .map(finish)
        .boxed()
}

/// The feed response: `{"code":"SC","feed":[…],"pointer":null,"lastPostId":…,"lastFavoriteCount":…}`
/// (fallback mode: `pointer` null).
fn feed_page(
    feed: &[ShownPost],
    last_post_id: Option<i64>,
    last_favorite_count: Option<i64>,
) -> String {
    feed_json(feed, None, last_post_id, last_favorite_count)
}

/// The feed response with `pointer` (cached mode) or the keyset cursor (fallback mode).
fn feed_json(
    feed: &[ShownPost],
    pointer: Option<i64>,
    last_post_id: Option<i64>,
    last_favorite_count: Option<i64>,
) -> String {
    let mut out = String::with_capacity(64 + feed.len() * 640);
    out.push_str("{\"code\":\"SC\",\"feed\":[");
    for (i, post) in feed.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        post.write_json(&mut out);
    }
    out.push_str("],\"pointer\":");
    push_opt_i64(&mut out, pointer);
    out.push_str(",\"lastPostId\":");
    push_opt_i64(&mut out, last_post_id);
    out.push_str(",\"lastFavoriteCount\":");
    push_opt_i64(&mut out, last_favorite_count);
    out.push('}');
    out
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
    const START: Cursor = Cursor::Followed(i64::MAX);

    fn from_query(post_id: Option<i64>, favorite_count: Option<i64>) -> Cursor {
        match (post_id, favorite_count) {
            (Some(id), Some(fc)) if fc >= 0 => Cursor::Popular(fc, id),
            (Some(id), Some(_)) => Cursor::Followed(id),
            _ => Cursor::Followed(i64::MAX),
        }
    }
}

#[utoipa::path(
    get, path = "/api/feed", security(("bearer" = [])), tag = "feed",
    params(("pages" = Option<i64>, Query, description = "the personalised page index (validated, unused for now)"), ("postId" = Option<i64>, Query, description = "cursor: the previous page's `lastPostId`"), ("favoriteCount" = Option<i64>, Query, description = "cursor: the previous page's `lastFavoriteCount`")),
    responses((status = 200, body = crate::posts::doc::FeedPage))
)]
async fn feed(ctx: Ctx, user: String, q: HashMap<String, String>) -> ApiResult {
    let pages = query_i64(&q, "pages")?;
    let post_id = query_i64(&q, "postId")?;
    let favorite_count = query_i64(&q, "favoriteCount")?;
    let cursor = Cursor::from_query(post_id, favorite_count);
    let Some(engine) = ctx.extension::<Arc<Feed>>().cloned() else {
        return plain(ctx, user, cursor).await;
    };
    let state = engine.state();
    let keyset = pages.is_none() && post_id.is_some() && favorite_count.is_some();
    if keyset {
        // A continuation of the fallback: without the list's posts, if there is a list.
        let list = state.list(&user).await.map_err(kv_failed)?;
        return match list {
            None => plain(ctx, user, cursor).await,
            Some(list) => after_list(&ctx, &engine, &user, cursor, &list, Vec::new()).await,
        };
    }
    let now = crate::time::now_micros();
    if pages.is_none()
        && let Err(e) = engine.refresh_if_changed(&user, now).await
    {
        tracing::warn!(user, error = %e, "feed list not refreshed");
    }
    match state
        .take_page(&user, pages, usize::try_from(FEED_PAGE).unwrap_or(30))
        .await
        .map_err(kv_failed)?
    {
        Page::NoList if pages.is_some() => Err(ApiError::bad_request()),
        Page::NoList => plain(ctx, user, cursor).await,
        Page::Mismatch => Err(ApiError::bad_request()),
        Page::UsedUp => {
            let list = state
                .list(&user)
                .await
                .map_err(kv_failed)?
                .unwrap_or_default();
            after_list(&ctx, &engine, &user, Cursor::START, &list, Vec::new()).await
        }
        Page::Served { pointer, ids, last } => {
            if let Err(e) = state.add_seen(&user, &ids, now / 1000).await {
                tracing::warn!(user, error = %e, "served posts not marked seen");
            }
            let full = i64::try_from(ids.len()).unwrap_or(0) >= FEED_PAGE;
            if !last || full {
                engine.stats.cached_pages.fetch_add(1, Ordering::Relaxed);
                let posts = ids.into_iter().map(PostRef::Id).collect();
                let feed = build_posts(&ctx, &user, posts, &mut Watch::off()).await?;
                return Ok(sc_json(feed_json(&feed, Some(pointer), None, None)));
            }
            // The list's end: topped up from the fallback tiers, answered in fallback mode.
            let list = state
                .list(&user)
                .await
                .map_err(kv_failed)?
                .unwrap_or_default();
            after_list(&ctx, &engine, &user, Cursor::START, &list, ids).await
        }
    }
}

fn kv_failed(e: crate::kv::KvError) -> ApiError {
    tracing::error!(error = %e, "feed state unavailable");
    ApiError::database()
}

/// A fallback-mode page after (or ending) the list: `head` (the list's last posts), then the
/// fallback tiers from `cursor` without the posts of `list`, 30 in all.
async fn after_list(
    ctx: &Ctx,
    engine: &Feed,
    user: &str,
    cursor: Cursor,
    list: &[i64],
    head: Vec<i64>,
) -> ApiResult {
    engine.stats.fallback_pages.fetch_add(1, Ordering::Relaxed);
    let exclude: HashSet<i64> = list.iter().copied().collect();
    let room = FEED_PAGE - i64::try_from(head.len()).unwrap_or(FEED_PAGE);
    let (rest, last_post_id, last_favorite_count) =
        fallback_excluding(ctx, user, cursor, &exclude, room).await?;
    let mut posts: Vec<PostRef> = head.into_iter().map(PostRef::Id).collect();
    posts.extend(rest);
    let feed = build_posts(ctx, user, posts, &mut Watch::off()).await?;
    Ok(sc_json(feed_page(&feed, last_post_id, last_favorite_count)))
}

/// Up to `room` posts of the fallback tiers from `cursor`, leaving out `exclude`, with the keyset
/// cursor of the last one. Each statement moves past what it read, so excluded posts cost a
/// little more reading, never a gap.
async fn fallback_excluding(
    ctx: &Ctx,
    user: &str,
    mut cursor: Cursor,
    exclude: &HashSet<i64>,
    room: i64,
) -> Result<(Vec<PostRef>, Option<i64>, Option<i64>), ApiError> {
    let mut out: Vec<PostRef> = Vec::new();
    let (mut last_post_id, mut last_favorite_count) = (None, None);
    let mut need = room;
    while need > 0 {
        match cursor {
            Cursor::Followed(before) => {
                let rows = ctx.store.feed_followed(user, before, FEED_PAGE).await?;
                let exhausted = i64::try_from(rows.len()).unwrap_or(0) < FEED_PAGE;
                for r in rows {
                    cursor = Cursor::Followed(r.id);
                    if need > 0 && !exclude.contains(&r.id) {
                        (last_post_id, last_favorite_count) = (Some(r.id), Some(FOLLOWED_TIER));
                        out.push(PostRef::Row(Arc::new(r)));
                        need -= 1;
                    }
                    if need == 0 {
                        break;
                    }
                }
                if exhausted && need > 0 {
                    cursor = Cursor::Popular(i64::MAX, i64::MAX);
                }
            }
            Cursor::Popular(fc, before) => {
                let rows = ctx.store.feed_popular(user, fc, before, FEED_PAGE).await?;
                let exhausted = i64::try_from(rows.len()).unwrap_or(0) < FEED_PAGE;
                for r in rows {
                    cursor = Cursor::Popular(r.favorite_count, r.id);
                    if need > 0 && !exclude.contains(&r.id) {
                        (last_post_id, last_favorite_count) = (Some(r.id), Some(r.favorite_count));
                        out.push(PostRef::Row(Arc::new(r)));
                        need -= 1;
                    }
                    if need == 0 {
                        break;
                    }
                }
                if exhausted {
                    break;
                }
            }
        }
    }
    Ok((out, last_post_id, last_favorite_count))
}

/// Today's non-personalised feed from `cursor` (a user without a list).
async fn plain(ctx: Ctx, user: String, cursor: Cursor) -> ApiResult {
    if let Some(engine) = ctx.extension::<Arc<Feed>>() {
        engine.stats.fallback_pages.fetch_add(1, Ordering::Relaxed);
    }
    let cache = &ctx.cache;
    // A page wholly of the followed tier and wholly from the read cache is kept, rendered, for
    // the viewer's next request, and served while nothing it was rendered from has changed.
    let mut keep = None;
    if let Cursor::Followed(before) = cursor {
        if let Some(body) = cache.feed_page(&user, before) {
            return Ok(sc_shared(body));
        }
        if cache.keeps_feed_pages() {
            keep = Some((before, cache.feed_page_ticket(&user, before)));
        }
    }
    let mut watch = if keep.is_some() {
        Watch::default()
    } else {
        Watch::off()
    };
    let mut posts: Vec<PostRef> = Vec::new();
    let mut last_in_followed = false;
    let (fc, before) = match cursor {
        Cursor::Followed(before) => {
            posts = match followed_from_cache(&ctx, &user, before, FEED_PAGE, &mut watch).await? {
                Some(ids) => ids.into_iter().map(PostRef::Id).collect(),
                None => {
                    watch.give_up();
                    ctx.store
                        .feed_followed(&user, before, FEED_PAGE)
                        .await?
                        .into_iter()
                        .map(|r| PostRef::Row(Arc::new(r)))
                        .collect()
                }
            };
            last_in_followed = !posts.is_empty();
            (i64::MAX, i64::MAX)
        }
        Cursor::Popular(fc, before) => (fc, before),
    };
    let room = FEED_PAGE - i64::try_from(posts.len()).unwrap_or(FEED_PAGE);
    if room > 0 {
        // The popular tier depends on everyone's counts: a page that reaches it is not kept.
        watch.give_up();
        let popular = ctx.store.feed_popular(&user, fc, before, room).await?;
        if !popular.is_empty() {
            last_in_followed = false;
        }
        posts.extend(popular.into_iter().map(|r| PostRef::Row(Arc::new(r))));
    }
    let (last_post_id, last_favorite_count) = match posts.last() {
        None => (None, None),
        Some(p) if last_in_followed => (Some(p.id()), Some(FOLLOWED_TIER)),
        Some(PostRef::Row(r)) => (Some(r.id), Some(r.favorite_count)),
        // Popular posts are always rows (their counts are the cursor).
        Some(PostRef::Id(id)) => (Some(*id), Some(FOLLOWED_TIER)),
    };
    let feed = build_posts(&ctx, &user, posts, &mut watch).await?;
    let body = feed_page(&feed, last_post_id, last_favorite_count);
    match keep {
        Some((before, ticket)) if watch.complete() => {
            let body = Bytes::from(body);
            cache.fill_feed_page(&user, before, body.clone(), watch, ticket);
            Ok(sc_shared(body))
        }
        _ => Ok(sc_json(body)),
    }
}

fn as_limit(n: usize) -> i64 {
    i64::try_from(n.saturating_add(1)).unwrap_or(i64::MAX)
}

/// The followed tier's post ids from the read cache: whom `viewer` follows and each one's newest
/// post ids, merged newest first below `before`. `None` when the cache cannot answer exactly
/// (more followees than it keeps, or the page reaches past an author's kept ids): the database
/// query answers instead.
async fn followed_from_cache(
    ctx: &Ctx,
    viewer: &str,
    before: i64,
    limit: i64,
    watch: &mut Watch,
) -> Result<Option<Vec<i64>>, StoreError> {
    let cache = &ctx.cache;
    if !cache.enabled() {
        return Ok(None);
    }
    let limit = usize::try_from(limit).unwrap_or(0);
    cache.watch(watch, Dep::Follows(viewer));
    let followees = match cache.followees(viewer) {
        Some(f) => f,
        None => {
            watch.give_up();
            let ticket = cache.followees_ticket(viewer);
            let cap = cache.followees_limit();
            let list = ctx.store.followees_of(viewer, as_limit(cap)).await?;
            let f = if list.len() > cap {
                Followees::TooMany
            } else {
                Followees::List(list)
            };
            cache.fill_followees(viewer, f, ticket)
        }
    };
    let Followees::List(authors) = &*followees else {
        return Ok(None);
    };
    let mut lists = Vec::with_capacity(authors.len());
    for author in authors.iter().filter(|a| *a != viewer) {
        cache.watch(watch, Dep::Posts(author));
        let posts = match cache.author_posts(author) {
            Some(p) => p,
            None => {
                watch.give_up();
                let ticket = cache.author_posts_ticket(author);
                let cap = cache.author_posts_limit();
                let mut ids = ctx.store.post_ids_of(author, as_limit(cap)).await?;
                let complete = ids.len() <= cap;
                ids.truncate(cap);
                cache.fill_author_posts(author, AuthorPosts { ids, complete }, ticket)
            }
        };
        lists.push(posts);
    }
    Ok(merge_newest(&lists, before, limit))
}

/// The newest `limit` ids below `before` across the authors' lists (each newest first), or `None`
/// when an author's uncached older posts could belong on the page.
fn merge_newest(lists: &[Arc<AuthorPosts>], before: i64, limit: usize) -> Option<Vec<i64>> {
    let mut heads = BinaryHeap::with_capacity(lists.len());
    for (i, l) in lists.iter().enumerate() {
        let pos = l.ids.partition_point(|&id| id >= before);
        if let Some(&id) = l.ids.get(pos) {
            heads.push((id, i, pos));
        }
    }
    let mut ids = Vec::with_capacity(limit);
    while ids.len() < limit {
        let Some((id, i, pos)) = heads.pop() else {
            break;
        };
        ids.push(id);
        if let Some(&next) = lists[i].ids.get(pos + 1) {
            heads.push((next, i, pos + 1));
        }
    }
    // An incomplete list's missing posts are all older than its oldest kept id: they are off
    // the page only if the page is full and that oldest id is not newer than the page's last.
    let floor = if ids.len() == limit {
        ids.last().copied()
    } else {
        None
    };
    for l in lists.iter().filter(|l| !l.complete) {
        let oldest = l.ids.last().copied().unwrap_or(i64::MAX);
        match floor {
            Some(f) if oldest <= f => {}
            _ => return None,
        }
    }
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(ids: &[i64], complete: bool) -> Arc<AuthorPosts> {
        Arc::new(AuthorPosts {
            ids: ids.to_vec(),
            complete,
        })
    }

    #[test]
    fn followed_lists_merge_newest_first_below_the_cursor() {
        let lists = [
            list(&[9, 5, 2], true),
            list(&[8, 7, 1], true),
            list(&[], true),
        ];
        assert_eq!(merge_newest(&lists, i64::MAX, 4), Some(vec![9, 8, 7, 5]));
        assert_eq!(merge_newest(&lists, 5, 4), Some(vec![2, 1]));
        assert_eq!(merge_newest(&lists, 1, 4), Some(vec![]));
    }

    #[test]
    fn an_incomplete_list_answers_only_when_its_gap_is_off_the_page() {
        // The second author has older posts than 7 that are not kept.
        let lists = [list(&[9, 5, 2], true), list(&[8, 7], false)];
        // Page 9, 8: 7 is kept and older than the page's last, so nothing missing belongs here.
        assert_eq!(merge_newest(&lists, i64::MAX, 2), Some(vec![9, 8]));
        // Page 9, 8, 7, 5 would need to know the author's posts between 7 and 5.
        assert_eq!(merge_newest(&lists, i64::MAX, 4), None);
        // A short page needs everything.
        assert_eq!(merge_newest(&[list(&[3], false)], i64::MAX, 4), None);
    }

    #[test]
    fn a_page_carries_its_cursor_beside_the_posts() {
        let page: serde_json::Value =
            serde_json::from_str(&feed_page(&[], None, None)).expect("valid JSON");
        assert_eq!(
            page,
            serde_json::json!({"code": "SC", "feed": [], "pointer": null,
                               "lastPostId": null, "lastFavoriteCount": null})
        );
        let page: serde_json::Value =
            serde_json::from_str(&feed_page(&[], Some(9), Some(FOLLOWED_TIER))).expect("valid");
        assert_eq!(page["lastPostId"], 9);
        assert_eq!(page["lastFavoriteCount"], -1);
    }

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
