//! `/api/post/**`: create, profile grid, details, like, comments and view history (contract §3.1
//! #20–#27, §6.1, §6.3, §6.6, §6.7).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::TryStreamExt as _;
use serde::Deserialize;
use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::multipart::{FormData, Part};
use warp::reply::Response;

use super::view::{Post, ShownPost};
use crate::cache::{
    Change, Dep, Json, Liked, MAX_LIKED, PostView, TagsJson, Ticket, ViewTicket, Watch, to_json,
};
use crate::ctx::Ctx;
use crate::ctx::with_ctx;
use crate::http::{ApiError, ApiResult, authed, empty, finish, get, json_body, sc, sc_json};
use crate::media::Links;
use crate::media::{MediaError, StoredImage};
use crate::model::{Alarm, AlarmType, Comment, ImageTags, Linked, PostTag, SimpleUser};
use crate::quotas::Write;
use crate::store::feed::InterestEvent;
use crate::store::posts::{AttachmentRow, NewAttachment, NewPost, PostRow, UserTagRow};
use crate::store::{Store, StoreError, alarms, comments, feed, likes, posts};
use crate::time::{now_micros, parse_client_time};

/// Largest multipart request (and so largest file) of a post: 10 MiB (contract §0).
pub const MAX_UPLOAD_BYTES: u64 = 10 * 1024 * 1024;
/// Largest `data` part (the JSON of the post).
const MAX_DATA_BYTES: usize = 256 * 1024;
/// Images per post.
pub const MAX_IMAGES: usize = 10;
/// Caption length in characters (the frontend's limit).
pub const MAX_CAPTION_CHARS: usize = 2_200;
/// Location length in characters (`post.location` is VARCHAR(100)).
pub const MAX_LOCATION_CHARS: usize = 100;
/// Hashtag length in characters (`post_tags.tag_name` is VARCHAR(100)).
pub const MAX_HASHTAG_CHARS: usize = 100;
/// Distinct hashtags kept per post (the first ones; more are ignored, not refused: the frontend
/// sends every `#word` of the caption and can only say "creating the post failed").
pub const MAX_HASHTAGS: usize = 30;
/// User tags per image.
pub const MAX_TAGS_PER_IMAGE: usize = 20;
/// Comment length in characters.
pub const MAX_COMMENT_CHARS: usize = 2_200;
/// Profile grid page.
pub const GRID_PAGE: i64 = 9;
/// Comment page.
pub const COMMENT_PAGE: i64 = 30;
/// The caller's own comments shown first (and left out of the pages).
pub const TOP_COMMENTS: i64 = 3;
/// Media key prefix of post images.
const MEDIA_PREFIX: &str = "post";

/// The routes of this module.
pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let auth = || authed(ctx.tokens.clone(), ctx.revocation.clone());
    let create = warp::path!("post" / "create")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::multipart::form().max_length(MAX_UPLOAD_BYTES))
        .then(create)
        .map(finish);
    let list = warp::path!("post" / "get" / "list")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<HashMap<String, String>>())
        .then(list)
        .map(finish);
    let details = warp::path!("post" / "get" / "details_info")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<HashMap<String, String>>())
        .then(details)
        .map(finish);
    let like = warp::path!("post" / "like")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<HashMap<String, String>>())
        .then(like)
        .map(finish);
    let comment = warp::path!("post" / "comment")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(auth())
        .and(json_body::<Value>())
        .then(comment)
        .map(finish);
    let top = warp::path!("post" / "comment" / "top-list")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<HashMap<String, String>>())
        .then(top_list)
        .map(finish);
    let page = warp::path!("post" / "comment" / "pagination-list")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<HashMap<String, String>>())
        .then(comment_page)
        .map(finish);
    let view = warp::path!("post" / "view_history")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(auth())
        .and(json_body::<Value>())
        .then(view_history)
        .map(finish);
    create
        .or(list)
        .unify()
        .or(details)
        .unify()
        .or(like)
        .unify()
        .or(comment)
        .unify()
        .or(top)
        .unify()
        .or(page)
        .unify()
        .or(view)
        .unify()
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Input helpers

/// An optional integer query parameter: absent, empty, `null` or `undefined` is `None`; anything
/// else that is not an integer is 400 `BR`.
pub(crate) fn query_i64(q: &HashMap<String, String>, key: &str) -> Result<Option<i64>, ApiError> {
    match q.get(key).map(|s| s.trim()) {
        None | Some("" | "null" | "undefined") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| ApiError::bad_request()),
    }
}

/// A required integer query parameter.
fn required_i64(q: &HashMap<String, String>, key: &str) -> Result<i64, ApiError> {
    query_i64(q, key)?.ok_or_else(ApiError::bad_request)
}

/// A JSON number or a string holding one, as an integer.
fn json_i64(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A JSON number or a string holding one, as a float.
fn json_f64(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Building posts (shared with the feed)

/// A post to show: its id, or its row when the caller read it already.
#[derive(Debug, Clone)]
pub(crate) enum PostRef {
    /// Only the id (the row is read if the post's view is not cached).
    Id(i64),
    /// The row, read by the caller.
    Row(Arc<PostRow>),
}

impl PostRef {
    pub(crate) fn id(&self) -> i64 {
        match self {
            PostRef::Id(id) => *id,
            PostRef::Row(r) => r.id,
        }
    }
}

/// The posts of `posts` as `viewer` sees them, in order. Each post's shared part is its rendered
/// view from the read cache ([`crate::cache::PostView`]); a post without one is assembled from its
/// row, images and author, and its view stored for the next request. What the cache lacks is
/// loaded in batches, at most five statements whatever the number of posts and none when
/// everything is cached. A post that does not exist, or whose author is gone, is left out.
/// `watch` notes what the posts were rendered from, for a response that may be kept
/// ([`Watch::off`] otherwise).
pub(crate) async fn build_posts(
    ctx: &Ctx,
    viewer: &str,
    posts: Vec<PostRef>,
    watch: &mut Watch,
) -> Result<Vec<ShownPost>, StoreError> {
    if posts.is_empty() {
        return Ok(Vec::new());
    }
    let cache = &ctx.cache;
    let ids: Vec<i64> = posts.iter().map(PostRef::id).collect();
    let mut views: Vec<Option<Arc<PostView>>> = Vec::with_capacity(ids.len());
    for &id in &ids {
        cache.watch(watch, Dep::Post(id));
        let view = cache.view(id);
        match &view {
            Some(v) => cache.watch_view(watch, v),
            None => watch.give_up(),
        }
        views.push(view);
    }
    // The posts without a view are rendered from parts read after their view tickets were taken:
    // a row given by the caller counts only if the cache holds the same row after its ticket; a
    // row read here is read after the ticket's first half, and the author's epoch (the second
    // half) is taken from it before the author is read.
    let mut missing: Vec<(usize, ViewTicket, Arc<PostRow>, bool)> = Vec::new();
    let mut unknown: Vec<(usize, Ticket)> = Vec::new();
    for (i, p) in posts.iter().enumerate() {
        if views[i].is_some() {
            continue;
        }
        match p {
            PostRef::Row(row) => {
                let ticket = cache.view_ticket(row.id, &row.user_id);
                // Read before the ticket: its view is kept only if the cache holds the same row.
                let current = cache.holds_row(row);
                missing.push((i, ticket, Arc::clone(row), current));
            }
            PostRef::Id(id) => unknown.push((i, cache.views_slot_ticket(*id))),
        }
    }
    if !unknown.is_empty() {
        let want: Vec<i64> = unknown.iter().map(|(i, _)| ids[*i]).collect();
        let rows = rows_by_ids(ctx, &want).await?;
        for (i, slot_ticket) in unknown {
            let Some(row) = rows.iter().find(|r| r.id == ids[i]) else {
                continue;
            };
            let ticket = cache.view_ticket_with(slot_ticket, &row.user_id);
            missing.push((i, ticket, Arc::clone(row), true));
        }
    }
    cache.watch(watch, Dep::Likes(viewer));
    let cached_likes = cache.liked(viewer);
    if !matches!(cached_likes.as_deref(), Some(Liked::Set(_))) {
        watch.give_up();
    }
    let likes_ticket = cache.liked_ticket(viewer);
    let load_parts = async {
        if missing.is_empty() {
            return Ok::<_, StoreError>(Vec::new());
        }
        let missing_rows: Vec<Arc<PostRow>> =
            missing.iter().map(|(_, _, r, _)| Arc::clone(r)).collect();
        assemble_posts(ctx, missing_rows).await
    };
    let load_likes = async {
        if let Some(l) = cached_likes {
            return Ok(l);
        }
        let limit = i64::try_from(MAX_LIKED + 1).unwrap_or(i64::MAX);
        let ids = ctx.store.liked_by(viewer, limit).await?;
        let liked = if ids.len() > MAX_LIKED {
            Liked::TooMany
        } else {
            Liked::Set(ids.into_iter().collect())
        };
        Ok(cache.fill_liked(viewer, liked, likes_ticket))
    };
    let (parts, likes) = tokio::try_join!(load_parts, load_likes)?;
    for ((i, ticket, row, current), post) in missing.into_iter().zip(parts) {
        let Some(post) = post else {
            continue;
        };
        let mut head = String::with_capacity(512);
        post.write_head(&mut head);
        views[i] = Some(if current {
            cache.fill_view(row.id, head.into_boxed_str(), ticket)
        } else {
            PostView::unstored(head.into_boxed_str())
        });
    }
    let heavy_liker: HashSet<i64> = match &*likes {
        Liked::Set(_) => HashSet::new(),
        Liked::TooMany => ctx
            .store
            .liked_among(viewer, &ids)
            .await?
            .into_iter()
            .collect(),
    };
    let is_liked = |id: i64| match &*likes {
        Liked::Set(set) => set.contains(&id),
        Liked::TooMany => heavy_liker.contains(&id),
    };
    Ok(ids
        .iter()
        .zip(views)
        .filter_map(|(&id, view)| {
            view.map(|view| ShownPost {
                view,
                is_liked: is_liked(id),
            })
        })
        .collect())
}

/// The rows of `ids` that exist, from the read cache or one statement for those it lacks.
pub(crate) async fn rows_by_ids(ctx: &Ctx, ids: &[i64]) -> Result<Vec<Arc<PostRow>>, StoreError> {
    let cache = &ctx.cache;
    let mut found: Vec<Arc<PostRow>> = Vec::with_capacity(ids.len());
    let mut missing = Vec::new();
    for &id in ids {
        match cache.row(id) {
            Some(r) => found.push(r),
            None => missing.push((id, cache.row_ticket(id))),
        }
    }
    if !missing.is_empty() {
        let want: Vec<i64> = missing.iter().map(|(id, _)| *id).collect();
        for row in ctx.store.posts_by_ids(&want).await? {
            let Some(&(_, ticket)) = missing.iter().find(|(id, _)| *id == row.id) else {
                continue;
            };
            found.push(cache.fill_row(row, ticket));
        }
    }
    Ok(found)
}

/// The posts of `rows` from their cached or loaded images and authors, with `is_liked` unset;
/// `None` for a post whose author is gone.
async fn assemble_posts(
    ctx: &Ctx,
    rows: Vec<Arc<PostRow>>,
) -> Result<Vec<Option<Post>>, StoreError> {
    let (cache, store) = (&ctx.cache, &ctx.store);
    let mut images: Vec<(i64, Arc<Json>)> = Vec::with_capacity(rows.len());
    let mut missing_images: Vec<i64> = Vec::new();
    let mut authors: Vec<(String, Arc<Json>)> = Vec::with_capacity(rows.len());
    let mut missing_authors: Vec<(String, Ticket)> = Vec::new();
    let mut tags: Vec<(i64, Arc<TagsJson>)> = Vec::with_capacity(rows.len());
    let mut missing_tags: Vec<(i64, Ticket)> = Vec::new();
    for r in &rows {
        if !images.iter().any(|(id, _)| *id == r.id) && !missing_images.contains(&r.id) {
            match cache.images(r.id) {
                Some(i) => images.push((r.id, i)),
                None => missing_images.push(r.id),
            }
        }
        if !tags.iter().any(|(id, _)| *id == r.id)
            && !missing_tags.iter().any(|(id, _)| *id == r.id)
        {
            match cache.tags(r.id) {
                Some(t) => tags.push((r.id, t)),
                None => missing_tags.push((r.id, cache.tags_ticket(r.id))),
            }
        }
        if !authors.iter().any(|(a, _)| *a == r.user_id)
            && !missing_authors.iter().any(|(a, _)| *a == r.user_id)
        {
            match cache.author(&r.user_id) {
                Some(a) => authors.push((r.user_id.clone(), a)),
                None => {
                    let t = cache.author_ticket(&r.user_id);
                    missing_authors.push((r.user_id.clone(), t));
                }
            }
        }
    }
    let load_images = async {
        if missing_images.is_empty() {
            return Ok::<_, StoreError>(HashMap::new());
        }
        let attachments = store.post_attachments(&missing_images).await?;
        let attachment_ids: Vec<i64> = attachments.iter().map(|a| a.id).collect();
        let tags = store.post_user_tags(&attachment_ids).await?;
        Ok(assemble_images(ctx.media.links(), attachments, tags))
    };
    let load_authors = async {
        if missing_authors.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = missing_authors.iter().map(|(a, _)| a.clone()).collect();
        store.post_authors(&ids).await
    };
    let load_tags = async {
        if missing_tags.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = missing_tags.iter().map(|(id, _)| *id).collect();
        store.post_tag_names(&ids).await
    };
    let (mut new_images, new_authors, new_tags) =
        tokio::try_join!(load_images, load_authors, load_tags)?;
    for id in missing_images {
        let i = new_images.remove(&id).unwrap_or_default();
        images.push((id, cache.fill_images(id, &i)));
    }
    for (id, ticket) in missing_tags {
        let mine = new_tags.iter().filter(|(post, _, _)| *post == id);
        let part = TagsJson::render(
            mine.clone()
                .filter(|(_, _, t)| t == "HASH_TAG")
                .map(|(_, n, _)| n.as_str()),
            mine.filter(|(_, _, t)| t == "AI_TAG")
                .map(|(_, n, _)| n.as_str()),
        );
        tags.push((id, cache.fill_tags(id, part, ticket)));
    }
    for u in new_authors {
        let u = u.linked(ctx.media.links());
        let ticket = missing_authors
            .iter()
            .find(|(a, _)| *a == u.id)
            .map(|(_, t)| *t);
        let json = match ticket {
            Some(t) => cache.fill_author(&u, t),
            None => Arc::new(to_json(&u)),
        };
        authors.push((u.id, json));
    }
    Ok(rows
        .into_iter()
        .map(|r| {
            let Some((_, user)) = authors.iter().find(|(a, _)| *a == r.user_id) else {
                tracing::warn!(post = r.id, author = %r.user_id, "post without an author left out");
                return None;
            };
            let image_tags = images
                .iter()
                .find(|(id, _)| *id == r.id)
                .map_or_else(|| Arc::new(to_json(&[(); 0])), |(_, i)| Arc::clone(i));
            let tags = tags
                .iter()
                .find(|(id, _)| *id == r.id)
                .map_or_else(|| Arc::new(TagsJson::empty()), |(_, t)| Arc::clone(t));
            Some(Post {
                is_liked: false,
                user: Arc::clone(user),
                image_tags,
                tags,
                row: r,
            })
        })
        .collect())
}

/// Groups attachment and user-tag rows into each post's images, in upload order.
fn assemble_images(
    links: &Links,
    attachments: Vec<AttachmentRow>,
    tags: Vec<UserTagRow>,
) -> HashMap<i64, Vec<ImageTags>> {
    let mut tags_by_attachment: HashMap<i64, Vec<PostTag>> = HashMap::new();
    for t in tags {
        tags_by_attachment
            .entry(t.post_attachment_id)
            .or_default()
            .push(PostTag {
                user_id: t.user_id,
                x: t.x_coordinate,
                y: t.y_coordinate,
            });
    }
    let mut images_by_post: HashMap<i64, Vec<ImageTags>> = HashMap::new();
    for a in attachments {
        images_by_post
            .entry(a.post_id)
            .or_default()
            .push(ImageTags {
                tags: tags_by_attachment.remove(&a.id).unwrap_or_default(),
                url: links.link(&a.url),
                thumbnail_url: links.link_opt(a.thumbnail_url.as_deref()),
                blurhash: a.blurhash,
                width: a.width,
                height: a.height,
            });
    }
    images_by_post
}

/// One user as a [`SimpleUser`] (`None`: no such account).
async fn simple_user(store: &Store, id: &str) -> Result<Option<SimpleUser>, StoreError> {
    Ok(store
        .post_authors(&[id.to_owned()])
        .await?
        .into_iter()
        .next())
}

// ---------------------------------------------------------------------------------------------
// #20 POST /api/post/create

/// The `data` part, validated.
#[derive(Debug, Default, PartialEq)]
struct PostInput {
    comment: String,
    location: Option<String>,
    /// Per image index: (user id, x, y), one entry per user (the last one given wins).
    tags: Vec<Vec<(String, f64, f64)>>,
    hashtags: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct PostData {
    #[serde(default)]
    comment: Option<String>,
    #[serde(default)]
    location: Option<String>,
    #[serde(default)]
    tags: Value,
    #[serde(default)]
    hashtags: Option<Vec<Option<String>>>,
}

/// Normalises a hashtag as the frontend does (contract §6.3): trimmed, leading `#` removed,
/// lower-cased. The last-noun rule follows in `create` when the dictionary is loaded
/// ([`crate::tagging::nouns`]).
pub fn normalize_hashtag(raw: &str) -> String {
    raw.trim().trim_start_matches('#').trim().to_lowercase()
}

/// Parses and validates the `data` part for a post with `images` images.
fn parse_post_data(bytes: &[u8], images: usize) -> Result<PostInput, ApiError> {
    let data: PostData = serde_json::from_slice(bytes).map_err(|e| {
        tracing::debug!(error = %e, "post data");
        ApiError::bad_request()
    })?;
    let comment = data.comment.unwrap_or_default();
    if comment.chars().count() > MAX_CAPTION_CHARS {
        return Err(ApiError::bad_request());
    }
    if data
        .location
        .as_deref()
        .is_some_and(|l| l.chars().count() > MAX_LOCATION_CHARS)
    {
        return Err(ApiError::bad_request());
    }
    let mut hashtags: Vec<String> = Vec::new();
    for raw in data.hashtags.unwrap_or_default().into_iter().flatten() {
        let tag = normalize_hashtag(&raw);
        if tag.is_empty() {
            continue;
        }
        if tag.chars().count() > MAX_HASHTAG_CHARS {
            return Err(ApiError::bad_request());
        }
        if hashtags.len() < MAX_HASHTAGS && !hashtags.contains(&tag) {
            hashtags.push(tag);
        }
    }
    // `tags`: {"0": [..], "1": [..]} (an array of arrays is accepted too); null or absent: none.
    let mut tags: Vec<Vec<(String, f64, f64)>> = vec![Vec::new(); images];
    let entries: Vec<(Option<usize>, &Value)> = match &data.tags {
        Value::Null => Vec::new(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.trim().parse::<usize>().ok(), v))
            .collect(),
        Value::Array(list) => list.iter().enumerate().map(|(i, v)| (Some(i), v)).collect(),
        _ => return Err(ApiError::bad_request()),
    };
    for (index, list) in entries {
        let list = match list {
            Value::Null => continue,
            Value::Array(list) => list,
            _ => return Err(ApiError::bad_request()),
        };
        // Tags for an image that was not sent (or a key that is not an index) are ignored.
        let Some(slot) = index.and_then(|i| tags.get_mut(i)) else {
            continue;
        };
        for tag in list {
            let user = match tag.get("userId") {
                Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_owned(),
                _ => return Err(ApiError::bad_request()),
            };
            let (Some(x), Some(y)) = (json_f64(tag.get("x")), json_f64(tag.get("y"))) else {
                return Err(ApiError::bad_request());
            };
            // Percent positions: a click on the image's very edge can round just outside 0–100,
            // so finite values are clamped (the original stored any number).
            if !x.is_finite() || !y.is_finite() {
                return Err(ApiError::bad_request());
            }
            let (x, y) = (x.clamp(0.0, 100.0), y.clamp(0.0, 100.0));
            slot.retain(|(u, _, _)| *u != user);
            slot.push((user, x, y));
        }
        if slot.len() > MAX_TAGS_PER_IMAGE {
            return Err(ApiError::bad_request());
        }
    }
    Ok(PostInput {
        comment,
        location: data.location,
        tags,
        hashtags,
    })
}

/// Reads one part, refusing it past `limit` bytes.
async fn read_part(part: Part, limit: usize) -> Result<Bytes, ApiError> {
    let mut buf = BytesMut::new();
    let mut stream = Box::pin(part.stream());
    while let Some(mut chunk) = stream.try_next().await.map_err(|e| {
        tracing::debug!(error = %e, "multipart part");
        ApiError::bad_request()
    })? {
        if buf.len() + chunk.remaining() > limit {
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "BR"));
        }
        while chunk.has_remaining() {
            let piece = chunk.chunk();
            let n = piece.len();
            buf.extend_from_slice(piece);
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// The `images` parts (in order) and the `data` part of a post form; other parts are skipped.
async fn read_post_form(mut form: FormData) -> Result<(Vec<Bytes>, Option<Bytes>), ApiError> {
    let mut images = Vec::new();
    let mut data = None;
    let per_file = usize::try_from(MAX_UPLOAD_BYTES).unwrap_or(usize::MAX);
    while let Some(part) = form.try_next().await.map_err(|e| {
        tracing::debug!(error = %e, "multipart form");
        ApiError::bad_request()
    })? {
        match part.name() {
            "images" => {
                if images.len() == MAX_IMAGES {
                    return Err(ApiError::bad_request());
                }
                images.push(read_part(part, per_file).await?);
            }
            "data" => {
                if data.is_some() {
                    return Err(ApiError::bad_request());
                }
                data = Some(read_part(part, MAX_DATA_BYTES).await?);
            }
            _ => {}
        }
    }
    Ok((images, data))
}

fn media_error(e: &MediaError) -> ApiError {
    if e.is_client_error() {
        tracing::debug!(error = %e, "upload refused");
        ApiError::bad_request()
    } else {
        tracing::error!(error = %e, "storing an upload");
        ApiError::database()
    }
}

#[utoipa::path(
    post, path = "/api/post/create", security(("bearer" = [])), tag = "posts",
    request_body(content = super::doc::CreateForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, body = super::doc::Created),
        (status = 413, body = crate::http::doc::Refused, description = "`BR`: the request is over 10 MiB"),
    )
)]
async fn create(ctx: Ctx, user: String, form: FormData) -> ApiResult {
    let (images, data) = read_post_form(form).await?;
    let data = data.ok_or_else(ApiError::bad_request)?;
    if images.is_empty() {
        return Err(ApiError::bad_request());
    }
    let mut input = parse_post_data(&data, images.len())?;
    if let Some(nouns) = ctx.extension::<crate::tagging::nouns::Nouns>() {
        // Contract §6.3: each hashtag becomes its last noun (`서울여행` → `여행`), then repeats go.
        input.hashtags = nouns.normalise_all(input.hashtags.iter().map(String::as_str));
    }
    ctx.quota(&user, Write::Post, 1).await?;
    let bytes: usize = images.iter().map(Bytes::len).sum();
    ctx.upload_quota(&user, images.len() as u64, bytes as u64)
        .await?;
    let Some(author) = simple_user(&ctx.store, &user).await? else {
        return Err(ApiError::bad_request());
    };
    // Every upload first, all at once (decoding is bounded by the media service); any refusal
    // deletes whatever was stored.
    let results = futures_util::future::join_all(
        images
            .into_iter()
            .map(|bytes| ctx.media.store_image(MEDIA_PREFIX, bytes)),
    )
    .await;
    let mut guard = ctx.media.guard();
    let mut stored: Vec<StoredImage> = Vec::with_capacity(results.len());
    let mut failure: Option<ApiError> = None;
    for r in results {
        match r {
            Ok(img) => {
                guard.add_image(&img);
                stored.push(img);
            }
            Err(e) => {
                let err = media_error(&e);
                // A bad upload (400) wins over a storage failure (500) when both happen.
                if failure
                    .as_ref()
                    .is_none_or(|f| f.status() != StatusCode::BAD_REQUEST)
                {
                    failure = Some(err);
                }
            }
        }
    }
    if let Some(err) = failure {
        guard.rollback().await;
        return Err(err);
    }
    let now = now_micros();
    let tagger = ctx.extension::<crate::tagging::worker::Tagger>();
    let inserted = insert_post(&ctx.store, &user, &input, &stored, now, tagger.is_some()).await;
    ctx.cache.changed(&[Change::Posts(user.clone())]).await;
    match inserted {
        Ok((post_id, tagged)) => {
            guard.commit();
            if let Some(tagger) = tagger {
                tagger.wake();
            }
            for recipient in tagged {
                let alarm = Alarm::PostTag {
                    create_at: now,
                    sender_id: author.id.clone(),
                    sender_profile_image: ctx.media.link_opt(author.profile_image.as_deref()),
                    post_id,
                };
                ctx.outbox.notify_user(&recipient, &alarm).await;
            }
            sc(&json!({ "postId": post_id }))
        }
        Err(e) => {
            guard.rollback().await;
            Err(e)
        }
    }
}

/// The post's rows in one transaction. Returns the post id and the users to notify (each
/// distinct tagged user but the author, whose `POST_TAG` alarm references their first tag row).
async fn insert_post(
    store: &Store,
    user: &str,
    input: &PostInput,
    images: &[StoredImage],
    now: i64,
    label: bool,
) -> Result<(i64, Vec<String>), ApiError> {
    let label = label && !images.is_empty();
    let mut tagged: Vec<String> = Vec::new();
    for (u, _, _) in input.tags.iter().flatten() {
        if !tagged.contains(u) {
            tagged.push(u.clone());
        }
    }
    let mut tx = store.write().await?;
    if !tagged.is_empty() {
        let found = posts::existing_users(tx.conn(), &tagged).await?;
        if found.len() != tagged.len() {
            return Err(ApiError::bad_request());
        }
    }
    let post_id = posts::insert(
        tx.conn(),
        &NewPost {
            user,
            comment: &input.comment,
            location: input.location.as_deref(),
            profile_image: images.first().map(|i| i.key.as_str()),
            at: now,
        },
    )
    .await?;
    let mut first_tag_row: HashMap<String, i64> = HashMap::new();
    for (i, img) in images.iter().enumerate() {
        let attachment = posts::insert_attachment(
            tx.conn(),
            &NewAttachment {
                post_id,
                url: &img.key,
                thumbnail_url: &img.thumbnail_key,
                blurhash: &img.blurhash,
                width: i64::from(img.width),
                height: i64::from(img.height),
            },
        )
        .await?;
        for (u, x, y) in input.tags.get(i).into_iter().flatten() {
            let row = posts::insert_user_tag(tx.conn(), attachment, u, *x, *y, now).await?;
            first_tag_row.entry(u.clone()).or_insert(row);
        }
    }
    posts::insert_hashtags(tx.conn(), store.dialect(), post_id, &input.hashtags).await?;
    if label {
        // The first image is labelled after the commit, off the request path (§6.1 d).
        crate::tagging::worker::stage(tx.conn(), post_id, now).await?;
    }
    posts::add_post_count(tx.conn(), user, 1).await?;
    let mut notify = Vec::new();
    for u in tagged {
        if u == user {
            continue;
        }
        if let Some(row) = first_tag_row.get(&u) {
            alarms::insert(tx.conn(), &u, AlarmType::PostTag, *row, now).await?;
            notify.push(u);
        }
    }
    tx.commit().await?;
    Ok((post_id, notify))
}

// ---------------------------------------------------------------------------------------------
// #21 GET /api/post/get/list?userId=&postId=

#[utoipa::path(
    get, path = "/api/post/get/list", security(("bearer" = [])), tag = "posts",
    params(("userId" = Option<String>, Query, description = "whose posts (absent or empty: the caller's)"), ("postId" = Option<i64>, Query, description = "cursor: posts with a smaller id")),
    responses((status = 200, body = crate::http::doc::ListOf<crate::model::PostPrev>))
)]
async fn list(ctx: Ctx, user: String, q: HashMap<String, String>) -> ApiResult {
    let owner = crate::http::non_empty(q.get("userId").cloned()).unwrap_or(user);
    let before = query_i64(&q, "postId")?.unwrap_or(i64::MAX);
    let list = ctx.store.post_previews(&owner, before, GRID_PAGE).await?;
    sc(&json!({ "list": list.linked(ctx.media.links()) }))
}

// ---------------------------------------------------------------------------------------------
// #22 GET /api/post/get/details_info?postId=

#[utoipa::path(
    get, path = "/api/post/get/details_info", security(("bearer" = [])), tag = "posts",
    params(("postId" = i64, Query, description = "the post")),
    responses((status = 200, body = super::doc::PostDetails))
)]
async fn details(ctx: Ctx, user: String, q: HashMap<String, String>) -> ApiResult {
    let id = required_i64(&q, "postId")?;
    let posts = build_posts(&ctx, &user, vec![PostRef::Id(id)], &mut Watch::off()).await?;
    let post = posts.first().ok_or_else(ApiError::bad_request)?;
    let mut out = String::with_capacity(1024);
    out.push_str("{\"code\":\"SC\",\"post\":");
    post.write_json(&mut out);
    out.push('}');
    Ok(sc_json(out))
}

// ---------------------------------------------------------------------------------------------
// #23 POST /api/post/like?postId=

#[utoipa::path(
    post, path = "/api/post/like", security(("bearer" = [])), tag = "posts",
    params(("postId" = i64, Query, description = "the post to like or unlike (a toggle)")),
    responses((status = 200, body = crate::http::doc::Done))
)]
async fn like(ctx: Ctx, user: String, q: HashMap<String, String>) -> ApiResult {
    let post = required_i64(&q, "postId")?;
    ctx.quota(&user, Write::Like, 1).await?;
    let now = now_micros();
    let mut tx = ctx.store.write().await?;
    let Some(author) = posts::lock(tx.conn(), ctx.store.dialect(), post).await? else {
        return Err(ApiError::bad_request());
    };
    let mut liked = false;
    let notify = match likes::find(tx.conn(), post, &user).await? {
        None => {
            let like = likes::insert(tx.conn(), post, &user, now).await?;
            posts::add_favorite_count(tx.conn(), post, 1).await?;
            let dialect = ctx.store.dialect();
            feed::add_interest_event(
                tx.conn(),
                dialect,
                &user,
                post,
                InterestEvent::Like,
                now,
                now,
            )
            .await?;
            liked = true;
            if author == user {
                false
            } else {
                alarms::insert(tx.conn(), &author, AlarmType::PostLikeReceive, like, now).await?;
                true
            }
        }
        Some(like) => {
            likes::delete(tx.conn(), like).await?;
            posts::add_favorite_count(tx.conn(), post, -1).await?;
            alarms::delete_for(tx.conn(), &author, AlarmType::PostLikeReceive, like).await?;
            false
        }
    };
    // Invalidated even when the commit's outcome is unknown (an error after it was sent).
    let committed = tx.commit().await;
    ctx.cache
        .changed(&[Change::Post(post), Change::Likes(user.clone())])
        .await;
    committed?;
    if liked {
        ctx.interacted(&user, post, InterestEvent::Like).await;
    }
    if notify {
        match simple_user(&ctx.store, &user).await {
            Ok(Some(liker)) => {
                let alarm = Alarm::PostLike {
                    create_at: now,
                    user: liker.linked(ctx.media.links()),
                    post_id: post,
                };
                ctx.outbox.notify_user(&author, &alarm).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "like push skipped"),
        }
    }
    sc(&())
}

// ---------------------------------------------------------------------------------------------
// #24 POST /api/post/comment

#[utoipa::path(
    post, path = "/api/post/comment", security(("bearer" = [])), tag = "posts",
    request_body = super::doc::CommentBody,
    responses((status = 200, body = super::doc::Commented))
)]
async fn comment(ctx: Ctx, user: String, body: Value) -> ApiResult {
    let post = json_i64(body.get("postId")).ok_or_else(ApiError::bad_request)?;
    let content = match body.get("comment") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => return Err(ApiError::bad_request()),
    };
    if content.chars().count() > MAX_COMMENT_CHARS {
        return Err(ApiError::bad_request());
    }
    ctx.quota(&user, Write::Comment, 1).await?;
    let Some(me) = simple_user(&ctx.store, &user).await? else {
        return Err(ApiError::bad_request());
    };
    let now = now_micros();
    let mut tx = ctx.store.write().await?;
    let Some(author) = posts::lock(tx.conn(), ctx.store.dialect(), post).await? else {
        return Err(ApiError::bad_request());
    };
    let id = comments::insert(tx.conn(), &user, post, &content, now).await?;
    posts::add_comment_count(tx.conn(), post, 1).await?;
    let dialect = ctx.store.dialect();
    feed::add_interest_event(
        tx.conn(),
        dialect,
        &user,
        post,
        InterestEvent::Comment,
        now,
        now,
    )
    .await?;
    let notify = author != user;
    if notify {
        alarms::insert(tx.conn(), &author, AlarmType::PostCommentReceive, id, now).await?;
    }
    let committed = tx.commit().await;
    ctx.cache.changed(&[Change::Post(post)]).await;
    committed?;
    ctx.interacted(&user, post, InterestEvent::Comment).await;
    let comment = Comment {
        id,
        post_id: post,
        user_id: me.id,
        name: me.name,
        profile_image: ctx.media.link_opt(me.profile_image.as_deref()),
        content,
        create_at: now,
    };
    if notify {
        let alarm = Alarm::PostComment {
            create_at: now,
            post: comment.clone(),
            post_id: post,
        };
        ctx.outbox.notify_user(&author, &alarm).await;
    }
    sc(&json!({ "comment": comment }))
}

// ---------------------------------------------------------------------------------------------
// #25 GET /api/post/comment/top-list?postId=

#[utoipa::path(
    get, path = "/api/post/comment/top-list", security(("bearer" = [])), tag = "posts",
    params(("postId" = i64, Query, description = "the post")),
    responses((status = 200, body = crate::http::doc::ListOf<crate::model::Comment>))
)]
async fn top_list(ctx: Ctx, user: String, q: HashMap<String, String>) -> ApiResult {
    let post = required_i64(&q, "postId")?;
    let list = ctx.store.comments_top(post, &user, TOP_COMMENTS).await?;
    sc(&json!({ "list": list.linked(ctx.media.links()) }))
}

// ---------------------------------------------------------------------------------------------
// #26 GET /api/post/comment/pagination-list?postId=&commentId=

#[utoipa::path(
    get, path = "/api/post/comment/pagination-list", security(("bearer" = [])), tag = "posts",
    params(("postId" = i64, Query, description = "the post"), ("commentId" = Option<i64>, Query, description = "cursor: comments with a smaller id")),
    responses((status = 200, body = crate::http::doc::ListOf<crate::model::Comment>))
)]
async fn comment_page(ctx: Ctx, user: String, q: HashMap<String, String>) -> ApiResult {
    let post = required_i64(&q, "postId")?;
    let before = query_i64(&q, "commentId")?.unwrap_or(i64::MAX);
    // The caller's top list is shown above the pages: leave exactly those comments out (computed
    // now, not from a cache that a new comment would make stale).
    let top = ctx.store.comment_top_ids(post, &user, TOP_COMMENTS).await?;
    let list = ctx
        .store
        .comment_page(post, before, &top, COMMENT_PAGE)
        .await?;
    sc(&json!({ "list": list.linked(ctx.media.links()) }))
}

// ---------------------------------------------------------------------------------------------
// #27 POST /api/post/view_history

/// The time a view is recorded at: the client's `viewedAt` unless it is absent, unparseable or in
/// the future, then the server's clock.
pub fn view_time(client: Option<&str>, now: i64) -> i64 {
    client
        .and_then(parse_client_time)
        .filter(|t| *t <= now)
        .unwrap_or(now)
}

#[utoipa::path(
    post, path = "/api/post/view_history", security(("bearer" = [])), tag = "posts",
    request_body = super::doc::ViewBody,
    responses((status = 200, description = "empty body, recorded or not"))
)]
async fn view_history(ctx: Ctx, user: String, body: Value) -> ApiResult {
    let Some(post) = json_i64(body.get("postId")) else {
        return empty();
    };
    let now = now_micros();
    let at = view_time(body.get("viewedAt").and_then(Value::as_str), now);
    let seconds = json_i64(body.get("timeSpentSeconds")).filter(|s| (0..=86_400).contains(s));
    let result = async {
        let mut tx = ctx.store.write().await?;
        let n = posts::record_view(tx.conn(), &user, post, at, seconds).await?;
        if n > 0 {
            let dialect = ctx.store.dialect();
            feed::add_interest_event(
                tx.conn(),
                dialect,
                &user,
                post,
                InterestEvent::View,
                at,
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok::<_, StoreError>(n)
    }
    .await;
    match result {
        Ok(n) if n > 0 => ctx.interacted(&user, post, InterestEvent::View).await,
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, post, "view not recorded"),
    }
    empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_data_is_validated_and_normalised() {
        let input = parse_post_data(
            br##"{"comment":"hi #Sea","location":null,"tags":{"0":[{"userId":"bob","x":10,"y":"20.5","id":3},{"userId":"bob","x":1,"y":2}],"5":[{"userId":"x","x":1,"y":1}],"k":[]},"hashtags":[" #Sea ","sea","","Sky"]}"##,
            2,
        )
        .unwrap();
        assert_eq!(input.comment, "hi #Sea");
        assert_eq!(input.tags, vec![vec![("bob".to_owned(), 1.0, 2.0)], vec![]]);
        assert_eq!(input.hashtags, vec!["sea".to_owned(), "sky".to_owned()]);

        let none = parse_post_data(br#"{"comment":"x","tags":null}"#, 1).unwrap();
        assert_eq!(none.tags, vec![Vec::new()]);
        let missing = parse_post_data(br#"{}"#, 1).unwrap();
        assert_eq!(missing.comment, "");

        // Positions just off the image are clamped, not refused; 31 hashtags keep the first 30.
        let edges = parse_post_data(
            br#"{"tags":{"0":[{"userId":"bob","x":100.4,"y":-0.2}]}}"#,
            1,
        )
        .unwrap();
        assert_eq!(edges.tags, vec![vec![("bob".to_owned(), 100.0, 0.0)]]);
        let many: Vec<String> = (0..31).map(|i| format!("\"t{i}\"")).collect();
        let many = format!(r#"{{"hashtags":[{}]}}"#, many.join(","));
        let kept = parse_post_data(many.as_bytes(), 1).unwrap().hashtags;
        assert_eq!(kept.len(), MAX_HASHTAGS);
        assert_eq!(kept.first().map(String::as_str), Some("t0"));
        for bad in [
            &br#"{"tags":{"0":[{"userId":"bob","x":1e999,"y":1}]}}"#[..],
            br#"{"tags":{"0":[{"userId":"","x":1,"y":1}]}}"#,
            br#"{"tags":{"0":[{"userId":"bob","x":1}]}}"#,
            br#"{"tags":"nope"}"#,
            br#"not json"#,
        ] {
            assert!(
                parse_post_data(bad, 1).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long_tag = format!(r#"{{"hashtags":["{}"]}}"#, "a".repeat(101));
        assert!(parse_post_data(long_tag.as_bytes(), 1).is_err());
        let long_caption = format!(r#"{{"comment":"{}"}}"#, "가".repeat(2_201));
        assert!(parse_post_data(long_caption.as_bytes(), 1).is_err());
        let ok_caption = format!(r#"{{"comment":"{}"}}"#, "가".repeat(2_200));
        assert!(parse_post_data(ok_caption.as_bytes(), 1).is_ok());
    }

    #[test]
    fn view_times_fall_back_to_the_server_clock() {
        let now = 1_736_850_531_123_000;
        assert_eq!(view_time(Some("2025-01-14T10:28:51.123Z"), now), now);
        assert_eq!(
            view_time(Some("2025-01-14T10:28:50Z"), now),
            now - 1_123_000
        );
        assert_eq!(view_time(Some("2030-01-01T00:00:00Z"), now), now);
        assert_eq!(view_time(Some("garbage"), now), now);
        assert_eq!(view_time(None, now), now);
    }
}
