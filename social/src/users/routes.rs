//! `/api` routes: users (contract §3.1 #9–#18) — the caller's profile, follow/unfollow, search,
//! another user's details, recommendations, profile editing, password change and the profile
//! image upload (`/api/file/upload/profile`, FileController in the original).
//!
//! Differences from the original are listed in `docs/api.md` ("Users").

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::TryStreamExt as _;
use serde::Deserialize;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::filters::multipart::FormData;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::cache::Change;
use crate::ctx::Ctx;
use crate::ctx::with_ctx;
use crate::http::{ApiError, ApiResult, authed, finish, get, json_body, sc, sc_only};
use crate::media::{MediaError, THUMB_SUFFIX};
use crate::model::Linked;
use crate::model::{Alarm, AlarmType, EditUser, MeUser, SimpleUser, UserDetails};
use crate::password::MAX_PASSWORD_BYTES;
use crate::quotas::Write;
use crate::store::dialect::like_contains;
use crate::store::{StoreError, alarms, follows, users};
use crate::time::now_micros;

/// Most users a search returns (followed users first).
pub const SEARCH_LIMIT: usize = 10;
/// Longest search keyword (ids and names are at most 100 characters, so nothing longer matches).
pub const MAX_KEYWORD_CHARS: usize = 100;
/// Recommendations computed and cached (`isAll=true`).
pub const RECOMMEND_ALL: usize = 20;
/// Recommendations returned for `isAll=false` (or absent).
pub const RECOMMEND_SHORT: usize = 5;
/// Lifetime of a cached recommendation list; the caller's own follow/unfollow drops it at once.
pub const RECOMMEND_TTL: Duration = Duration::from_secs(30 * 60);
/// Shortest new password, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 1;
/// Longest display name, in characters (`user.name` is `VARCHAR(100)`).
pub const MAX_NAME_CHARS: usize = 100;
/// Longest `sex` value, in characters (`VARCHAR(50)`).
pub const MAX_SEX_CHARS: usize = 50;
/// Longest address and address detail, in characters (`VARCHAR(100)`).
pub const MAX_ADDRESS_CHARS: usize = 100;
/// Longest bio, in characters (`user.comment` is `VARCHAR(2200)`; the frontend's textarea has no
/// limit and shows only "edit failed" for a refusal).
pub const MAX_COMMENT_CHARS: usize = 2200;
/// Room for multipart boundaries and part headers on top of the file-size limit.
const MULTIPART_SLACK: u64 = 64 * 1024;
/// Key prefix of profile images.
const PROFILE_PREFIX: &str = "profile";

/// The routes of this module.
pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let auth = || authed(ctx.tokens.clone(), ctx.revocation.clone());
    let me = warp::path!("user" / "me")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .then(me)
        .map(finish);
    let follow = warp::path!("user" / "follow")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(auth())
        .and(json_body::<FollowBody>())
        .then(follow)
        .map(finish);
    let un_follow = warp::path!("user" / "un_follow")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(auth())
        .and(json_body::<UnFollowBody>())
        .then(un_follow)
        .map(finish);
    let search = warp::path!("user" / "search")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<SearchQuery>())
        .then(search)
        .map(finish);
    let details = warp::path!("user" / "details" / "info")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<DetailsQuery>())
        .then(details)
        .map(finish);
    let recommend = warp::path!("user" / "get" / "recommend" / "list")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<RecommendQuery>())
        .then(recommend)
        .map(finish);
    let get_edit_info = warp::path!("user" / "get" / "edit" / "info")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .then(get_edit_info)
        .map(finish);
    let edit_info = warp::path!("user" / "edit" / "info")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(auth())
        .and(json_body::<EditUser>())
        .then(edit_info)
        .map(finish);
    let edit_password = warp::path!("user" / "edit" / "password")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(auth())
        .and(json_body::<PasswordBody>())
        .then(edit_password)
        .map(finish);
    let limit = ctx.media.limits().max_file_bytes as u64 + MULTIPART_SLACK;
    let upload_profile = warp::path!("file" / "upload" / "profile")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(auth())
        .and(crate::http::multipart_form(limit))
        .then(upload_profile)
        .map(finish);
    me.or(follow)
        .unify()
        .or(un_follow)
        .unify()
        .or(search)
        .unify()
        .or(details)
        .unify()
        .or(recommend)
        .unify()
        .or(get_edit_info)
        .unify()
        .or(edit_info)
        .unify()
        .or(edit_password)
        .unify()
        .or(upload_profile)
        .unify()
        .boxed()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct FollowBody {
    #[serde(rename = "followingId")]
    following_id: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct UnFollowBody {
    #[serde(rename = "unFollowingId")]
    un_following_id: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    keyword: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct DetailsQuery {
    #[serde(rename = "searchId")]
    search_id: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RecommendQuery {
    #[serde(rename = "isAll")]
    is_all: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct PasswordBody {
    #[serde(rename = "oldPassword")]
    old_password: String,
    #[serde(rename = "newPassword")]
    new_password: String,
}

impl std::fmt::Debug for PasswordBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordBody(<redacted>)")
    }
}

/// #9 `GET /api/user/me`: the caller's profile; 400 `IVT` (`user: null`) when the token's user
/// no longer exists.
#[utoipa::path(
    get, path = "/api/user/me", security(("bearer" = [])),
    tag = "users",
    responses(
        (status = 200, body = crate::http::doc::UserOf<crate::model::MeUser>),
        (status = 400, body = crate::http::doc::Refused, description = "`IVT` (with `user: null`): the token's user does not exist; `BR`: malformed request"),
    )
)]
async fn me(ctx: Ctx, user: String) -> ApiResult {
    let Some(u) = ctx.store.user_by_id(&user).await? else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "IVT").with_nulls(&["user"]));
    };
    let me = MeUser {
        id: u.id,
        name: u.name,
        comment: u.comment,
        follow_count: u.follow_count,
        follower_count: u.follower_count,
        post_count: u.post_count,
        profile_image: u.profile_image,
        kind: u.kind,
    };
    sc(&json!({ "user": me.linked(ctx.media.links()) }))
}

/// #10 `POST /api/user/follow`: the caller follows `followingId`. Both user rows are locked in id
/// order, the pair is inserted, both counters move and the FOLLOW alarm is stored in one
/// transaction; the alarm is pushed to the target after the commit.
#[utoipa::path(
    post, path = "/api/user/follow", security(("bearer" = [])),
    tag = "users",
    request_body = FollowBody,
    responses((status = 200, body = crate::http::doc::Done))
)]
async fn follow(ctx: Ctx, caller: String, body: FollowBody) -> ApiResult {
    let target = body.following_id;
    if target.is_empty() || target == caller {
        return Err(ApiError::bad_request());
    }
    ctx.quota(&caller, Write::Follow, 1).await?;
    let store = &ctx.store;
    let mut tx = store.write().await?;
    let locked = users::lock_pair(tx.conn(), store.dialect(), &caller, &target).await?;
    let Some(me) = locked.iter().find(|u| u.id == caller) else {
        return Err(ApiError::bad_request());
    };
    if !locked.iter().any(|u| u.id == target) {
        return Err(ApiError::bad_request());
    }
    let sender_profile_image = ctx.media.link_opt(me.profile_image.as_deref());
    if follows::find(tx.conn(), &caller, &target).await?.is_some() {
        return Err(ApiError::bad_request());
    }
    let now = now_micros();
    let id = match follows::insert(tx.conn(), &caller, &target, now).await {
        Ok(id) => id,
        Err(StoreError::Conflict(_)) => return Err(ApiError::bad_request()),
        Err(e) => return Err(e.into()),
    };
    users::add_follow_count(tx.conn(), &caller, 1).await?;
    users::add_follower_count(tx.conn(), &target, 1).await?;
    follows::insert_follow_alarm(tx.conn(), &target, id, now).await?;
    let committed = tx.commit().await;
    ctx.cache.changed(&[Change::Follows(caller.clone())]).await;
    committed?;

    forget_recommendations(&ctx, &caller).await;
    ctx.outbox
        .notify_user(
            &target,
            &Alarm::Follow {
                create_at: now,
                sender_id: caller,
                sender_profile_image,
            },
        )
        .await;
    sc_only()
}

/// #11 `POST /api/user/un_follow`: the caller stops following `unFollowingId` (400 `BR` when not
/// following). The pair, both counters and the FOLLOW alarm change in one transaction; a missing
/// alarm is not an error.
#[utoipa::path(
    post, path = "/api/user/un_follow", security(("bearer" = [])),
    tag = "users",
    request_body = UnFollowBody,
    responses((status = 200, body = crate::http::doc::Done))
)]
async fn un_follow(ctx: Ctx, caller: String, body: UnFollowBody) -> ApiResult {
    let target = body.un_following_id;
    if target.is_empty() || target == caller {
        return Err(ApiError::bad_request());
    }
    let store = &ctx.store;
    let mut tx = store.write().await?;
    users::lock_pair(tx.conn(), store.dialect(), &caller, &target).await?;
    let Some(id) = follows::find(tx.conn(), &caller, &target).await? else {
        return Err(ApiError::bad_request());
    };
    if follows::delete(tx.conn(), id).await? == 0 {
        return Err(ApiError::bad_request());
    }
    users::add_follow_count(tx.conn(), &caller, -1).await?;
    users::add_follower_count(tx.conn(), &target, -1).await?;
    alarms::delete_for(tx.conn(), &target, AlarmType::Follow, id).await?;
    let committed = tx.commit().await;
    ctx.cache.changed(&[Change::Follows(caller.clone())]).await;
    committed?;

    forget_recommendations(&ctx, &caller).await;
    sc_only()
}

/// #12 `GET /api/user/search?keyword=`: users whose id or name contains the keyword
/// (case-insensitive, wildcards literal): those the caller follows first (`following: true`), then
/// the others, each group by id, at most [`SEARCH_LIMIT`] in all. The caller may appear.
#[utoipa::path(
    get, path = "/api/user/search", security(("bearer" = [])),
    tag = "users",
    params(SearchQuery),
    responses((status = 200, body = crate::http::doc::UsersOf<crate::model::SimpleUser>))
)]
async fn search(ctx: Ctx, caller: String, q: SearchQuery) -> ApiResult {
    let keyword = q.keyword.trim();
    if keyword.is_empty() || keyword.chars().count() > MAX_KEYWORD_CHARS {
        return sc(&json!({ "users": Vec::<SimpleUser>::new() }));
    }
    let pattern = like_contains(&keyword.to_lowercase());
    let limit = SEARCH_LIMIT as i64;
    let mut found = ctx
        .store
        .search_followed_users(&caller, &pattern, limit)
        .await?;
    if found.len() < SEARCH_LIMIT {
        let rest = (SEARCH_LIMIT - found.len()) as i64;
        let others = ctx
            .store
            .search_other_users(&caller, &pattern, rest)
            .await?;
        found.extend(others);
    }
    found.truncate(SEARCH_LIMIT);
    sc(&json!({ "users": found.linked(ctx.media.links()) }))
}

/// #13 `GET /api/user/details/info?searchId=`: another user's profile with `isFollowed`; 400
/// `BR` for an unknown id.
#[utoipa::path(
    get, path = "/api/user/details/info", security(("bearer" = [])),
    tag = "users",
    params(DetailsQuery),
    responses((status = 200, body = crate::http::doc::UserOf<crate::model::UserDetails>))
)]
async fn details(ctx: Ctx, caller: String, q: DetailsQuery) -> ApiResult {
    let Some(u) = ctx.store.user_details(&caller, &q.search_id).await? else {
        return Err(ApiError::bad_request());
    };
    let details = UserDetails {
        id: u.id,
        name: u.name,
        profile_image: u.profile_image,
        comment: u.comment,
        follow_count: u.follow_count,
        follower_count: u.follower_count,
        post_count: u.post_count,
        is_followed: u.is_followed != 0,
    };
    sc(&json!({ "user": details.linked(ctx.media.links()) }))
}

/// Parses `isAll` as Spring converts a `Boolean` (absent or empty: false).
fn parse_flag(v: Option<&str>) -> Result<bool, ApiError> {
    match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "false" | "off" | "no" | "0") => Ok(false),
        Some("true" | "on" | "yes" | "1") => Ok(true),
        Some(_) => Err(ApiError::bad_request()),
    }
}

fn recommend_key(user: &str) -> String {
    format!("recommend:{user}")
}

/// Drops the caller's cached recommendations (after their follows changed). A key-value store
/// failure is logged: the entry expires with [`RECOMMEND_TTL`] anyway, and `following` is always
/// read fresh.
async fn forget_recommendations(ctx: &Ctx, user: &str) {
    if let Err(e) = ctx.kv.del(&recommend_key(user)).await {
        tracing::warn!(%user, error = %e, "could not drop cached recommendations");
    }
}

/// The ordered recommended ids for `user`: cached, or computed and cached.
async fn recommended_ids(ctx: &Ctx, user: &str) -> Result<Vec<String>, ApiError> {
    let key = recommend_key(user);
    match ctx.kv.get(&key).await {
        Ok(Some(cached)) => match serde_json::from_str::<Vec<String>>(&cached) {
            Ok(ids) => return Ok(ids),
            Err(e) => {
                tracing::warn!(%user, error = %e, "ignoring a malformed recommendation cache")
            }
        },
        Ok(None) => {}
        Err(e) => tracing::warn!(%user, error = %e, "recommendation cache unavailable"),
    }
    let ids: Vec<String> = ctx
        .store
        .follow_recommendations(user, RECOMMEND_ALL as i64)
        .await?
        .into_iter()
        .map(|(id, _score)| id)
        .collect();
    match serde_json::to_string(&ids) {
        Ok(v) => {
            if let Err(e) = ctx.kv.set(&key, &v, RECOMMEND_TTL).await {
                tracing::warn!(%user, error = %e, "could not cache recommendations");
            }
        }
        Err(e) => tracing::warn!(%user, error = %e, "could not serialise recommendations"),
    }
    Ok(ids)
}

/// #14 `GET /api/user/get/recommend/list?isAll=`: friends of friends by score, then id; 20 with
/// `isAll=true`, else 5. Names, images and `following` are read fresh on every call.
#[utoipa::path(
    get, path = "/api/user/get/recommend/list", security(("bearer" = [])),
    tag = "users",
    params(RecommendQuery),
    responses((status = 200, body = crate::http::doc::ListOf<crate::model::SimpleUser>))
)]
async fn recommend(ctx: Ctx, caller: String, q: RecommendQuery) -> ApiResult {
    let all = parse_flag(q.is_all.as_deref())?;
    let mut ids = recommended_ids(&ctx, &caller).await?;
    ids.truncate(if all { RECOMMEND_ALL } else { RECOMMEND_SHORT });
    let mut found = ctx.store.simple_users_by_ids(&caller, &ids).await?;
    let rank = |u: &SimpleUser| ids.iter().position(|id| *id == u.id);
    found.sort_by_key(rank);
    sc(&json!({ "list": found.linked(ctx.media.links()) }))
}

/// #15 `GET /api/user/get/edit/info`: the editable profile fields (nulls as stored).
#[utoipa::path(
    get, path = "/api/user/get/edit/info", security(("bearer" = [])),
    tag = "users",
    responses((status = 200, body = crate::http::doc::UserOf<crate::model::EditUser>))
)]
async fn get_edit_info(ctx: Ctx, caller: String) -> ApiResult {
    let Some(u) = ctx.store.user_by_id(&caller).await? else {
        return Err(ApiError::bad_request().with_nulls(&["user"]));
    };
    let info = EditUser {
        name: Some(u.name),
        sex: u.sex,
        comment: u.comment,
        address: u.address,
        address_detail: u.address_detail,
    };
    sc(&json!({ "user": info }))
}

fn too_long(v: Option<&str>, max: usize) -> bool {
    v.is_some_and(|s| s.chars().count() > max)
}

/// #16 `POST /api/user/edit/info`: overwrites name (required, non-blank), sex, comment, address
/// and address detail (each may be null).
#[utoipa::path(
    post, path = "/api/user/edit/info", security(("bearer" = [])),
    tag = "users",
    request_body = crate::model::EditUser,
    responses((status = 200, body = crate::http::doc::Done))
)]
async fn edit_info(ctx: Ctx, caller: String, mut body: EditUser) -> ApiResult {
    let name = body.name.as_deref().map(str::trim).unwrap_or_default();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::bad_request());
    }
    body.name = Some(name.to_owned());
    if too_long(body.sex.as_deref(), MAX_SEX_CHARS)
        || too_long(body.comment.as_deref(), MAX_COMMENT_CHARS)
        || too_long(body.address.as_deref(), MAX_ADDRESS_CHARS)
        || too_long(body.address_detail.as_deref(), MAX_ADDRESS_CHARS)
    {
        return Err(ApiError::bad_request());
    }
    let updated = ctx.store.update_profile_info(&caller, &body).await;
    ctx.cache.changed(&[Change::User(caller.clone())]).await;
    if updated? == 0 && !ctx.store.user_exists(&caller).await? {
        return Err(ApiError::bad_request());
    }
    sc_only()
}

/// #17 `POST /api/user/edit/password`: 200 `NEP` when the old password does not match (always for
/// Google accounts, which have none), checked first; then the new one must be 1..=256 bytes
/// (400 `BR`, which an empty one from a client other than the frontend gets). Attempts are
/// limited like failed sign-ins. A change revokes every earlier token of the user, the caller's
/// included, on every process ([`crate::revocation`]): the answer carries a new `token` for the
/// caller to continue with.
#[utoipa::path(
    post, path = "/api/user/edit/password", security(("bearer" = [])),
    tag = "users",
    request_body = PasswordBody,
    responses(
        (status = 200, body = crate::http::doc::Token, description = "`SC` with a new `token` (every earlier token is revoked), or `NEP`: the old password is wrong"),
        (status = 429, body = crate::http::doc::Refused, description = "`TMR`: too many attempts"),
    )
)]
async fn edit_password(ctx: Ctx, caller: String, body: PasswordBody) -> ApiResult {
    let new_len = body.new_password.len();
    ctx.limit(
        &format!("edit-password:{caller}"),
        ctx.limits.sign_in_failures,
        ctx.limits.sign_in_window,
    )
    .await?;
    let Some(u) = ctx.store.user_by_id(&caller).await? else {
        return Err(ApiError::bad_request());
    };
    let nep = ApiError::new(StatusCode::OK, "NEP");
    let Some(stored) = u.password else {
        return Err(nep);
    };
    if body.old_password.len() > MAX_PASSWORD_BYTES
        || !crate::password::verify(body.old_password, stored).await?
    {
        return Err(nep);
    }
    if !(MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&new_len) {
        return Err(ApiError::bad_request());
    }
    let hash = crate::password::hash(body.new_password).await?;
    let Some(version) = ctx.store.set_password(&caller, &hash).await? else {
        return Err(ApiError::bad_request());
    };
    let version = u64::try_from(version).unwrap_or(0);
    ctx.revocation.raised(&caller, version).await;
    let token = ctx
        .tokens
        .issue_version(&caller, &u.role, version)
        .map_err(|e| {
            tracing::error!(error = %e, "signing a token");
            ApiError::database()
        })?;
    sc(&serde_json::json!({ "token": token }))
}

/// Why the `file` part could not be read.
enum PartError {
    /// No `file` part.
    Missing,
    /// The file or the whole form is over the limit.
    TooLarge,
    /// The form is malformed.
    Malformed(String),
}

impl From<PartError> for ApiError {
    fn from(e: PartError) -> Self {
        match e {
            PartError::Missing => ApiError::bad_request(),
            PartError::TooLarge => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "BR"),
            PartError::Malformed(why) => {
                tracing::debug!(%why, "malformed multipart form");
                ApiError::bad_request()
            }
        }
    }
}

/// The bytes of the first part named `file` (at most `file_limit`); other parts before it are
/// skipped, counting towards `form_limit`.
async fn read_file_part(
    mut form: FormData,
    file_limit: usize,
    form_limit: u64,
) -> Result<Bytes, PartError> {
    let mut seen: u64 = 0;
    while let Some(part) = form
        .try_next()
        .await
        .map_err(|e| PartError::Malformed(e.to_string()))?
    {
        let is_file = part.name() == "file";
        let mut buf = BytesMut::new();
        let mut stream = Box::pin(part.stream());
        while let Some(mut chunk) = stream
            .try_next()
            .await
            .map_err(|e| PartError::Malformed(e.to_string()))?
        {
            let n = chunk.remaining();
            seen += n as u64;
            if seen > form_limit || (is_file && buf.len() + n > file_limit) {
                return Err(PartError::TooLarge);
            }
            if is_file {
                while chunk.has_remaining() {
                    let piece = chunk.chunk();
                    buf.extend_from_slice(piece);
                    let len = piece.len();
                    chunk.advance(len);
                }
            }
        }
        if is_file {
            return Ok(buf.freeze());
        }
    }
    Err(PartError::Missing)
}

/// The key of a profile image URL when the object is ours (under `profile/`).
fn own_profile_key(ctx: &Ctx, url: Option<&str>) -> Option<String> {
    let url = url.filter(|u| !u.is_empty())?;
    ctx.media
        .own_key(url)
        .filter(|k| k.starts_with(&format!("{PROFILE_PREFIX}/")))
}

/// #18 `POST /api/file/upload/profile` (multipart part `file`): the image is checked (magic
/// bytes, 10 MiB, decodable) and stored first, then the user row points at it, then — only after
/// the commit — the previous image is deleted if it was ours. A failed update deletes the new one.
#[utoipa::path(
    post, path = "/api/file/upload/profile", security(("bearer" = [])),
    tag = "users",
    request_body(content = crate::http::doc::FileForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, body = crate::http::doc::Uploaded),
        (status = 413, body = crate::http::doc::Refused, description = "`BR`: over the size limit"),
    )
)]
async fn upload_profile(ctx: Ctx, caller: String, form: FormData) -> ApiResult {
    let file_limit = ctx.media.limits().max_file_bytes;
    let bytes = read_file_part(form, file_limit, file_limit as u64 + MULTIPART_SLACK).await?;
    ctx.upload_quota(&caller, 1, bytes.len() as u64).await?;
    let image = ctx
        .media
        .store_image(PROFILE_PREFIX, bytes)
        .await
        .map_err(|e| match e {
            MediaError::Storage(why) => {
                tracing::error!(%why, "storing a profile image");
                ApiError::database()
            }
            other => {
                tracing::debug!(error = %other, "profile image refused");
                ApiError::bad_request()
            }
        })?;
    let mut guard = ctx.media.guard();
    guard.add_image(&image);

    let store = &ctx.store;
    let mut tx = store.write().await?;
    let Some(old) = users::lock_profile_image(tx.conn(), store.dialect(), &caller).await? else {
        drop(tx);
        guard.rollback().await;
        return Err(ApiError::bad_request());
    };
    users::set_profile_image(
        tx.conn(),
        &caller,
        &image.key,
        &image.thumbnail_key,
        &image.blurhash,
    )
    .await?;
    let committed = tx.commit().await;
    ctx.cache.changed(&[Change::User(caller.clone())]).await;
    committed?;
    guard.commit();

    let old_image = own_profile_key(&ctx, old.profile_image.as_deref());
    let old_thumb = own_profile_key(&ctx, old.profile_thumbnail.as_deref())
        .or_else(|| old_image.as_ref().map(|k| format!("{k}{THUMB_SUFFIX}")));
    let old_keys: Vec<String> = [old_image, old_thumb]
        .into_iter()
        .flatten()
        .filter(|k| *k != image.key && *k != image.thumbnail_key)
        .collect();
    if !old_keys.is_empty() {
        ctx.media.delete(&old_keys).await;
    }
    sc(&json!({ "url": ctx.media.url_of(&image.key) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_all_flag_parsing() {
        assert!(!parse_flag(None).unwrap());
        assert!(!parse_flag(Some("")).unwrap());
        assert!(!parse_flag(Some("false")).unwrap());
        assert!(parse_flag(Some("TRUE")).unwrap());
        assert!(parse_flag(Some("1")).unwrap());
        assert!(parse_flag(Some("maybe")).is_err());
    }
}
