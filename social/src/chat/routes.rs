//! `/api` routes: chat (realtime.md §4.1 #1–#12), ChatRoomController and the chat upload of
//! FileController (`/api/file/upload/chat`).
//!
//! Every room route answers 400 `{"code":"BR"}` when the caller is not a member (a participant
//! who has not left) or the room does not exist. Behaviour and the differences from the original
//! are in `docs/chat.md`.

use bytes::{Buf, BytesMut};
use futures_util::TryStreamExt as _;
use serde::{Deserialize, Deserializer};
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::filters::multipart::FormData;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::chat::{
    self, ChatError, ChatRoomDto, ReadInfoDto, Upload, auto_title, create_room, invite, leave,
    post_files, set_room_image, set_title,
};
use crate::ctx::Ctx;
use crate::ctx::with_ctx;
use crate::http::{ApiError, ApiResult, authed, empty, finish, get, json_body, sc, sc_only};
use crate::media::Links;
use crate::model::SimpleUser;
use crate::quotas::Write;
use crate::store::chat::{DIRECT, GROUP, PeerRow, like_prefix};

/// Messages per history page.
pub const HISTORY_PAGE: i64 = 30;
/// Largest unread count shown.
pub const MAX_UNREAD: i64 = 99;
/// Rooms the invite recommendations are drawn from (the caller's most recently active).
pub const RECOMMEND_ROOMS: i64 = 3;
/// Most invite recommendations.
pub const RECOMMEND_LIMIT: usize = 20;
/// Most invite search results.
pub const INVITE_SEARCH_LIMIT: i64 = 20;
/// Longest invite search keyword (ids are at most 100 characters).
pub const MAX_KEYWORD_CHARS: usize = 100;
/// Most files in one chat upload (the original had none; the frontend lets a user pick any
/// number and drops the answer, so the bound is far above what fits in the 10 MiB request).
pub const MAX_FILES: usize = 100;
/// Room for multipart boundaries and part headers on top of the size limit.
const MULTIPART_SLACK: u64 = 64 * 1024;

/// The routes of this module.
pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let auth = || authed(ctx.tokens.clone(), ctx.revocation.clone());
    let list = warp::path!("chat" / "getList")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .then(list)
        .map(finish);
    let create = warp::path!("chat" / "create")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(auth())
        .and(json_body::<CreateBody>())
        .then(create)
        .map(finish);
    let recommend = warp::path!("chat" / "recommend" / "invite" / "list")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .then(recommend)
        .map(finish);
    let history = warp::path!("chat" / "history")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<HistoryQuery>())
        .then(history)
        .map(finish);
    let read_info = warp::path!("chat" / "get" / "members" / "read_info")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<RoomQuery>())
        .then(read_info)
        .map(finish);
    let limit = ctx.media.limits().max_file_bytes as u64 + MULTIPART_SLACK;
    let image = warp::path!("chat" / "update" / "group" / "profile_image")
        .and(warp::put())
        .and(with_ctx(ctx))
        .and(auth())
        .and(crate::http::multipart_form(limit))
        .then(group_image)
        .map(finish);
    let title = warp::path!("chat" / "update" / "group" / "title")
        .and(warp::put())
        .and(with_ctx(ctx))
        .and(auth())
        .and(json_body::<TitleBody>())
        .then(group_title)
        .map(finish);
    let members = warp::path!("chat" / "get" / "members" / "info")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<RoomQuery>())
        .then(members_info)
        .map(finish);
    let search = warp::path!("chat" / "invite" / "user_search")
        .and(get())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<SearchQuery>())
        .then(invite_search)
        .map(finish);
    let invite_user = warp::path!("chat" / "invite" / "user")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(auth())
        .and(json_body::<InviteBody>())
        .then(invite_user)
        .map(finish);
    let leave_room = warp::path!("chat" / "room" / "leave")
        .and(warp::delete())
        .and(with_ctx(ctx))
        .and(auth())
        .and(warp::query::<RoomQuery>())
        .then(leave_room)
        .map(finish);
    let upload = warp::path!("file" / "upload" / "chat")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(auth())
        .and(crate::http::multipart_form(limit))
        .then(upload_chat)
        .map(finish);
    list.or(create)
        .unify()
        .or(recommend)
        .unify()
        .or(history)
        .unify()
        .or(read_info)
        .unify()
        .or(image)
        .unify()
        .or(title)
        .unify()
        .or(members)
        .unify()
        .or(search)
        .unify()
        .or(invite_user)
        .unify()
        .or(leave_room)
        .unify()
        .or(upload)
        .unify()
        .boxed()
}

/// A room id sent as a JSON number or a numeric string.
fn flex_id<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Num(i64),
        Str(String),
    }
    match Id::deserialize(d)? {
        Id::Num(n) => Ok(n),
        Id::Str(s) => s.trim().parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct CreateBody {
    #[serde(default)]
    users: Vec<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct InviteBody {
    #[serde(default)]
    users: Vec<String>,
    #[serde(rename = "chatRoomId", deserialize_with = "flex_id")]
    chat_room_id: i64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
struct TitleBody {
    #[serde(rename = "chatRoomId", deserialize_with = "flex_id")]
    chat_room_id: i64,
    #[serde(rename = "updateTitle")]
    update_title: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct RoomQuery {
    #[serde(rename = "chatRoomId")]
    chat_room_id: i64,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    #[serde(rename = "chatRoomId")]
    chat_room_id: i64,
    #[serde(rename = "messageId")]
    message_id: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    keyword: Option<String>,
    #[serde(rename = "chatRoomId")]
    chat_room_id: i64,
}

/// The caller's member row, or 400 `BR`.
async fn require_member(ctx: &Ctx, room: i64, user: &str) -> Result<Option<i64>, ApiError> {
    match chat::member(ctx, room, user).await? {
        Some(p) => Ok(p.history_from),
        None => Err(ApiError::bad_request()),
    }
}

fn simple(
    links: &Links,
    id: String,
    name: String,
    profile_image: Option<&str>,
    following: bool,
) -> SimpleUser {
    SimpleUser {
        id,
        name,
        profile_image: links.link_opt(profile_image),
        following,
    }
}

/// #1 `GET /api/chat/getList`: the rooms the caller has not left, newest activity first. Title:
/// the custom one, else the other members' names (DIRECT: the partner even after they left;
/// GROUP: the members still in it, in join order); `profileImages`: the group image URL when set,
/// else a JSON array (as a string) of those members' images; `unreadCount`: TEXT/IMAGE/FILE
/// messages from others after the caller's read pointer, at most 99.
#[utoipa::path(
    get, path = "/api/chat/getList", security(("bearer" = [])), tag = "chat",
    responses((status = 200, body = crate::http::doc::ListOf<super::dto::ChatRoomDto>))
)]
async fn list(ctx: Ctx, user: String) -> ApiResult {
    let rooms = ctx.store.chat_rooms_of(&user).await?;
    let peers = ctx.store.chat_peers_of(&user).await?;
    let unread = ctx.store.chat_unread_counts(&user).await?;
    let mut out = Vec::with_capacity(rooms.len());
    for r in rooms {
        let shown: Vec<&PeerRow> = peers
            .iter()
            .filter(|p| p.chatroom_id == r.id && (r.kind == DIRECT || p.is_hidden == 0))
            .collect();
        let last_message = r.last_message();
        let title = match r.title.filter(|t| !t.is_empty()) {
            Some(t) => t,
            None => auto_title(&shown.iter().map(|p| p.name.as_str()).collect::<Vec<_>>()),
        };
        let links = ctx.media.links();
        let profile_images = match r.profile_image.filter(|u| !u.is_empty() && r.kind == GROUP) {
            Some(stored) => links.link(&stored),
            None => serde_json::to_string(
                &shown
                    .iter()
                    .map(|p| links.link_opt(p.profile_image.as_deref()))
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| ApiError::from(ChatError::Json(e)))?,
        };
        let unread_count = unread
            .iter()
            .find(|(room, _)| *room == r.id)
            .map_or(0, |(_, n)| (*n).min(MAX_UNREAD));
        out.push(ChatRoomDto {
            chatroom_id: r.id,
            title,
            last_message,
            profile_images,
            unread_count,
            kind: r.kind,
        });
    }
    sc(&json!({ "list": out }))
}

/// #2 `POST /api/chat/create`: `{"users": [...]}` without the caller. One user: the pair's DM
/// (re-opened if it exists); more: a new group. 400 `BR` for an empty list, an unknown user or
/// more than 99 others. `chatRoomId` is an addition (the frontend reads only `code`).
#[utoipa::path(
    post, path = "/api/chat/create", security(("bearer" = [])), tag = "chat",
    request_body = CreateBody,
    responses((status = 200, body = super::doc::RoomCreated))
)]
async fn create(ctx: Ctx, user: String, body: CreateBody) -> ApiResult {
    ctx.quota(&user, Write::Room, 1).await?;
    let room = create_room(&ctx, &user, &body.users).await?;
    sc(&json!({ "chatRoomId": room }))
}

/// #3 `GET /api/chat/recommend/invite/list`: the people of the caller's three most recently
/// active rooms, the most recent room weighing most (3, 2, 1, summed over rooms), then by id; at
/// most 20; `following: true` as in the original.
#[utoipa::path(
    get, path = "/api/chat/recommend/invite/list", security(("bearer" = [])), tag = "chat",
    responses((status = 200, body = crate::http::doc::ListOf<crate::model::SimpleUser>))
)]
async fn recommend(ctx: Ctx, user: String) -> ApiResult {
    let rooms = ctx.store.chat_recent_rooms(&user, RECOMMEND_ROOMS).await?;
    let peers = ctx.store.chat_room_peers(&rooms, &user).await?;
    let mut scores: Vec<(String, i64)> = Vec::new();
    for (room, peer) in peers {
        let rank = rooms.iter().position(|r| *r == room).unwrap_or(rooms.len());
        let weight = i64::try_from(rooms.len() - rank).unwrap_or(0);
        match scores.iter_mut().find(|(id, _)| *id == peer) {
            Some((_, s)) => *s += weight,
            None => scores.push((peer, weight)),
        }
    }
    scores.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    scores.truncate(RECOMMEND_LIMIT);
    let ids: Vec<String> = scores.iter().map(|(id, _)| id.clone()).collect();
    let users = ctx.store.chat_users(&ids).await?;
    let list: Vec<SimpleUser> = ids
        .iter()
        .filter_map(|id| users.iter().find(|u| u.id == *id))
        .map(|u| {
            simple(
                ctx.media.links(),
                u.id.clone(),
                u.name.clone(),
                u.profile_image.as_deref(),
                true,
            )
        })
        .collect();
    sc(&json!({ "list": list }))
}

/// #4 `GET /api/chat/history?chatRoomId=&messageId=`: 30 messages newest first, older than
/// `messageId` when given (empty: the newest page), ordered by id; an empty list at the end.
/// Members read from when they joined (groups) on.
#[utoipa::path(
    get, path = "/api/chat/history", security(("bearer" = [])), tag = "chat",
    params(HistoryQuery),
    responses((status = 200, body = crate::http::doc::ListOf<super::dto::ChatMessageDto>))
)]
async fn history(ctx: Ctx, user: String, q: HistoryQuery) -> ApiResult {
    let before = match crate::http::non_empty(q.message_id) {
        None => None,
        Some(s) => Some(
            s.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::bad_request())?,
        ),
    };
    let from = require_member(&ctx, q.chat_room_id, &user).await?;
    let rows = ctx
        .store
        .chat_history(q.chat_room_id, from, before, HISTORY_PAGE)
        .await?;
    let list = chat::message_dtos(&ctx, &rows).await?;
    sc(&json!({ "list": list }))
}

/// #5 `GET /api/chat/get/members/read_info?chatRoomId=`: the members' read pointers (`[]`,
/// never `null`, when there are none).
#[utoipa::path(
    get, path = "/api/chat/get/members/read_info", security(("bearer" = [])), tag = "chat",
    params(RoomQuery),
    responses((status = 200, body = crate::http::doc::ListOf<super::dto::ReadInfoDto>))
)]
async fn read_info(ctx: Ctx, user: String, q: RoomQuery) -> ApiResult {
    require_member(&ctx, q.chat_room_id, &user).await?;
    let list: Vec<ReadInfoDto> = ctx
        .store
        .chat_read_info(q.chat_room_id)
        .await?
        .into_iter()
        .map(|r| ReadInfoDto {
            chat_room_id: q.chat_room_id,
            user_id: r.user_id,
            last_read_message_id: r.last_read_message_id,
        })
        .collect();
    sc(&json!({ "list": list }))
}

/// #6 `PUT /api/chat/update/group/profile_image` (multipart `file`, `chatRoomId`): a member sets
/// a group's image; 400 `BR` for a DM, a non-member or anything that is not a picture.
#[utoipa::path(
    put, path = "/api/chat/update/group/profile_image", security(("bearer" = [])), tag = "chat",
    request_body(content = super::doc::GroupImageForm, content_type = "multipart/form-data"),
    responses((status = 200, body = crate::http::doc::Uploaded), (status = 413, body = crate::http::doc::Refused, description = "`BR`: over the size limit"))
)]
async fn group_image(ctx: Ctx, user: String, form: FormData) -> ApiResult {
    let file_limit = ctx.media.limits().max_file_bytes;
    let form = read_form(
        form,
        &["file"],
        1,
        file_limit,
        file_limit as u64 + MULTIPART_SLACK,
    )
    .await?;
    let room = form.room()?;
    let Some(file) = form.files.into_iter().next() else {
        return Err(ApiError::bad_request());
    };
    ctx.upload_quota(&user, 1, file.bytes.len() as u64).await?;
    let url = set_room_image(&ctx, &user, room, file.bytes).await?;
    sc(&json!({ "url": url }))
}

/// #7 `PUT /api/chat/update/group/title`: `{"chatRoomId", "updateTitle"}`; a member of a group
/// sets its title (at most 100 characters); empty or null restores the automatic title. Answers
/// the title now shown to the caller.
#[utoipa::path(
    put, path = "/api/chat/update/group/title", security(("bearer" = [])), tag = "chat",
    request_body = TitleBody,
    responses((status = 200, body = super::doc::TitleSet))
)]
async fn group_title(ctx: Ctx, user: String, body: TitleBody) -> ApiResult {
    let title = set_title(&ctx, &user, body.chat_room_id, body.update_title.as_deref()).await?;
    sc(&json!({ "title": title }))
}

/// #8 `GET /api/chat/get/members/info?chatRoomId=`: the members (the caller included), by id
/// case-insensitively, `following: false`.
#[utoipa::path(
    get, path = "/api/chat/get/members/info", security(("bearer" = [])), tag = "chat",
    params(RoomQuery),
    responses((status = 200, body = crate::http::doc::ListOf<crate::model::SimpleUser>))
)]
async fn members_info(ctx: Ctx, user: String, q: RoomQuery) -> ApiResult {
    require_member(&ctx, q.chat_room_id, &user).await?;
    let mut members = ctx.store.chat_members(q.chat_room_id).await?;
    members.sort_by(|a, b| {
        a.id.to_lowercase()
            .cmp(&b.id.to_lowercase())
            .then_with(|| a.id.cmp(&b.id))
    });
    let list: Vec<SimpleUser> = members
        .into_iter()
        .map(|m| {
            simple(
                ctx.media.links(),
                m.id,
                m.name,
                m.profile_image.as_deref(),
                false,
            )
        })
        .collect();
    sc(&json!({ "list": list }))
}

/// #9 `GET /api/chat/invite/user_search?keyword=&chatRoomId=`: users whose id starts with the
/// keyword (case-insensitive, `%` and `_` literal) and who are not members, by id, at most 20;
/// an empty or over-long keyword finds nobody.
#[utoipa::path(
    get, path = "/api/chat/invite/user_search", security(("bearer" = [])), tag = "chat",
    params(SearchQuery),
    responses((status = 200, body = crate::http::doc::ListOf<crate::model::SimpleUser>))
)]
async fn invite_search(ctx: Ctx, user: String, q: SearchQuery) -> ApiResult {
    require_member(&ctx, q.chat_room_id, &user).await?;
    let keyword = q.keyword.as_deref().map(str::trim).unwrap_or_default();
    if keyword.is_empty() || keyword.chars().count() > MAX_KEYWORD_CHARS {
        return sc(&json!({ "list": Vec::<SimpleUser>::new() }));
    }
    let pattern = like_prefix(&keyword.to_lowercase());
    let list: Vec<SimpleUser> = ctx
        .store
        .chat_invite_candidates(q.chat_room_id, &pattern, INVITE_SEARCH_LIMIT)
        .await?
        .into_iter()
        .map(|u| {
            simple(
                ctx.media.links(),
                u.id,
                u.name,
                u.profile_image.as_deref(),
                false,
            )
        })
        .collect();
    sc(&json!({ "list": list }))
}

/// #10 `POST /api/chat/invite/user`: `{"users", "chatRoomId"}`; groups only; all-or-nothing.
#[utoipa::path(
    post, path = "/api/chat/invite/user", security(("bearer" = [])), tag = "chat",
    request_body = InviteBody,
    responses((status = 200, body = crate::http::doc::Done))
)]
async fn invite_user(ctx: Ctx, user: String, body: InviteBody) -> ApiResult {
    ctx.quota(&user, Write::Invite, body.users.len().max(1) as u64)
        .await?;
    invite(&ctx, &user, body.chat_room_id, &body.users).await?;
    sc_only()
}

/// #11 `DELETE /api/chat/room/leave?chatRoomId=`: see `chat::leave`; 400 `BR` when the caller
/// is not a member (already left included).
#[utoipa::path(
    delete, path = "/api/chat/room/leave", security(("bearer" = [])), tag = "chat",
    params(RoomQuery),
    responses((status = 200, body = crate::http::doc::Done))
)]
async fn leave_room(ctx: Ctx, user: String, q: RoomQuery) -> ApiResult {
    leave(&ctx, &user, q.chat_room_id).await?;
    sc_only()
}

/// #12 `POST /api/file/upload/chat` (multipart `files` ×1..100, `chatRoomId`): 200 with an empty
/// body when at least one file was posted; 400 `BR` for a non-member (checked before anything is
/// stored) or when no file is acceptable; 413 past the size limit.
#[utoipa::path(
    post, path = "/api/file/upload/chat", security(("bearer" = [])), tag = "chat",
    request_body(content = super::doc::ChatFilesForm, content_type = "multipart/form-data"),
    responses((status = 200, description = "the files were posted to the room (empty body)"), (status = 413, body = crate::http::doc::Refused, description = "`BR`: over the size limit"))
)]
async fn upload_chat(ctx: Ctx, user: String, form: FormData) -> ApiResult {
    let file_limit = ctx.media.limits().max_file_bytes;
    let form = read_form(
        form,
        &["files", "file"],
        MAX_FILES,
        file_limit,
        file_limit as u64 + MULTIPART_SLACK,
    )
    .await?;
    let room = form.room()?;
    if form.files.is_empty() {
        return Err(ApiError::bad_request());
    }
    let bytes: usize = form.files.iter().map(|f| f.bytes.len()).sum();
    ctx.upload_quota(&user, form.files.len() as u64, bytes as u64)
        .await?;
    post_files(&ctx, &user, room, form.files).await?;
    empty()
}

// ---------------------------------------------------------------------------------------------
// Multipart

/// The parts of a chat form.
struct ChatForm {
    room: Option<String>,
    files: Vec<Upload>,
}

impl ChatForm {
    fn room(&self) -> Result<i64, ApiError> {
        self.room
            .as_deref()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(ApiError::bad_request)
    }
}

fn too_large() -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "BR")
}

/// Reads `chatRoomId` and up to `max_files` file parts named one of `file_fields`, each at most
/// `file_limit` bytes, the whole form at most `form_limit`. Other parts are skipped (counted).
async fn read_form(
    mut form: FormData,
    file_fields: &[&str],
    max_files: usize,
    file_limit: usize,
    form_limit: u64,
) -> Result<ChatForm, ApiError> {
    let mut out = ChatForm {
        room: None,
        files: Vec::new(),
    };
    let mut seen: u64 = 0;
    while let Some(part) = form.try_next().await.map_err(|e| {
        tracing::debug!(error = %e, "malformed multipart form");
        ApiError::bad_request()
    })? {
        let field = part.name().to_owned();
        let is_file = file_fields.contains(&field.as_str());
        let is_room = field == "chatRoomId";
        if is_file && out.files.len() >= max_files {
            return Err(ApiError::bad_request());
        }
        let name = part.filename().unwrap_or_default().to_owned();
        let mut buf = BytesMut::new();
        let mut stream = Box::pin(part.stream());
        while let Some(mut chunk) = stream.try_next().await.map_err(|e| {
            tracing::debug!(error = %e, "malformed multipart form");
            ApiError::bad_request()
        })? {
            let n = chunk.remaining();
            seen += n as u64;
            if seen > form_limit || (is_file && buf.len() + n > file_limit) {
                return Err(too_large());
            }
            if is_room && buf.len() + n > 64 {
                return Err(ApiError::bad_request());
            }
            if is_file || is_room {
                while chunk.has_remaining() {
                    let piece = chunk.chunk();
                    buf.extend_from_slice(piece);
                    let len = piece.len();
                    chunk.advance(len);
                }
            }
        }
        if is_file {
            out.files.push(Upload {
                name,
                bytes: buf.freeze(),
            });
        } else if is_room {
            out.room = Some(String::from_utf8_lossy(&buf).into_owned());
        }
    }
    Ok(out)
}
