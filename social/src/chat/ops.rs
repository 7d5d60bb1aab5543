//! The chat write operations: send, read, create, invite, leave, attachments, title and image.
//!
//! Each one: (room lock,) write transaction, room row locked, membership checked against the
//! database, rows written, pushes staged in the outbox, commit, pushes delivered.

use bytes::Bytes;
use serde_json::json;

use super::dto::{self, ChatAlarm, ChatMessageDto, ReadInfoDto};
use super::writer::MessagePushes;
use super::{
    CONTROL_HEADER, CONTROL_QUEUE, CONTROL_TOPIC_HEADER, ChatError, MAX_ROOM_MEMBERS,
    MESSAGE_ID_HEADER, member, room_lock,
};
use crate::ctx::Ctx;
use crate::media::{THUMB_SUFFIX, sniff};
use crate::outbox::{self, Outgoing, Staged};
use crate::store::StoreError;
use crate::store::chat::{
    self as sql, AttachmentRow, DIRECT, GROUP, MessageRow, NewAttachment, ParticipantRow, SenderRow,
};
use crate::time::now_micros;

/// Longest custom title, in characters (`chatroom.title` is `VARCHAR(100)`).
pub const MAX_TITLE_CHARS: usize = 100;
/// Longest stored file name, in characters (`message_attachment.file_name` is `VARCHAR(255)`).
const MAX_FILE_NAME_CHARS: usize = 255;
/// Title of a group nobody else is in any more.
pub const EMPTY_ROOM_TITLE: &str = "대화상대 없음";
/// How often a DM creation is retried after losing a race for the pair's room.
const CREATE_RETRIES: usize = 3;

/// An uploaded file: the client's name and the bytes.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The client's file name.
    pub name: String,
    /// Content.
    pub bytes: Bytes,
}

/// The automatic title for a room whose other shown members have `names` (in join order):
/// one name, `"{first} 외 {n-1}명"`, or [`EMPTY_ROOM_TITLE`].
pub fn auto_title(names: &[&str]) -> String {
    match names {
        [] => EMPTY_ROOM_TITLE.to_owned(),
        [one] => (*one).to_owned(),
        [first, rest @ ..] => format!("{first} 외 {}명", rest.len()),
    }
}

fn visible(p: &ParticipantRow) -> bool {
    p.is_hidden == 0
}

fn chat_topic(room: i64) -> String {
    format!("chat.{room}")
}

fn info_topic(room: i64) -> String {
    format!("members.info.{room}")
}

/// The broadcast of a new message on `/topic/chat.{room}`, with the de-duplication header.
pub(crate) fn message_push(dto: &ChatMessageDto) -> Result<Outgoing, ChatError> {
    Ok(Outgoing::topic(&chat_topic(dto.chat_room_id), dto)?
        .with_header(MESSAGE_ID_HEADER, &dto.message_id.to_string()))
}

/// The `/topic/chat.{room}` broadcast of a stored message without attachments (TEXT, INVITE,
/// LEAVE): the one builder for the writer's sends and the system messages here.
pub(crate) fn broadcast(
    links: &crate::media::Links,
    row: &MessageRow,
    sender: Option<&SenderRow>,
) -> Result<Outgoing, ChatError> {
    message_push(&ChatMessageDto::build(links, row, sender, &[]))
}

pub(crate) fn alarm(user: &str, alarm: &ChatAlarm) -> Result<Outgoing, ChatError> {
    Ok(Outgoing::user(user, "notify", alarm)?)
}

/// The control envelopes telling the gateway to drop `user`'s subscriptions to `room`.
fn revoke(user: &str, room: i64) -> Result<Vec<Outgoing>, ChatError> {
    [chat_topic(room), info_topic(room)]
        .into_iter()
        .map(|topic| {
            let body = json!({ "control": "revoke", "topic": topic });
            Ok(Outgoing::user(user, CONTROL_QUEUE, &body)?
                .with_header(CONTROL_HEADER, "revoke")
                .with_header(CONTROL_TOPIC_HEADER, &topic))
        })
        .collect()
}

/// Ids de-duplicated in order, trimmed, without empty ones and without `me`.
fn clean_ids(ids: &[String], me: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(ids.len());
    for id in ids {
        let id = id.trim();
        if !id.is_empty() && id != me && !out.iter().any(|o| o == id) {
            out.push(id.to_owned());
        }
    }
    out
}

/// The unique key of a DIRECT room: the two ids sorted, joined as `{len(first)}:{first}{second}`
/// (unambiguous whatever characters ids contain).
pub(crate) fn direct_key(a: &str, b: &str) -> String {
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    format!("{}:{first}{second}", first.len())
}

async fn sender_row(conn: &mut sqlx::AnyConnection, user: &str) -> Result<SenderRow, ChatError> {
    sql::users_by_ids(conn, &[user.to_owned()])
        .await?
        .into_iter()
        .next()
        .ok_or(ChatError::Refused("unknown user"))
}

/// DM: hidden participants come back when a message arrives (with a CREATE_ROOM push). Returns
/// the pushes and adds them to `members`.
async fn unhide_direct(
    conn: &mut sqlx::AnyConnection,
    room: i64,
    parts: &[ParticipantRow],
    members: &mut Vec<String>,
    now: i64,
) -> Result<Vec<Outgoing>, ChatError> {
    let mut out = Vec::new();
    for p in parts.iter().filter(|p| !visible(p)) {
        sql::set_hidden(conn, room, &p.user_id, false).await?;
        out.push(alarm(
            &p.user_id,
            &ChatAlarm::CreateRoom { create_at: now },
        )?);
        members.push(p.user_id.clone());
    }
    Ok(out)
}

/// What [`send_command`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Stored now, with this id (and its pushes published).
    Now(i64),
    /// The command's key was stored already, with this message: nothing written or pushed.
    Before(i64),
}

impl Sent {
    /// The message's id.
    pub(crate) fn id(self) -> i64 {
        match self {
            Sent::Now(id) | Sent::Before(id) => id,
        }
    }
}

/// `/app/send`: stores a TEXT message from `sender` (a member) and broadcasts it. With the
/// command's key `command` (unique across the deployment), a command redelivered by the bus after
/// its message was stored finds that message (same sender and room) and is answered with it; it
/// is never stored twice.
pub(crate) async fn send_command(
    ctx: &Ctx,
    sender: &str,
    room: i64,
    text: &str,
    command: Option<&str>,
) -> Result<Sent, ChatError> {
    super::writer::check_text(text)?;
    let _order = room_lock(room).await;
    let store = &ctx.store;
    let mut tx = store.write().await?;
    let Some(r) = sql::lock_room(tx.conn(), store.dialect(), room).await? else {
        return Err(ChatError::Refused("no such room"));
    };
    if let Some(key) = command
        && let Some((id, stored_room, stored_sender)) =
            sql::message_of_command(tx.conn(), key).await?
    {
        // Keys are the gateway's, never the client's; one for another room or sender is not a
        // redelivery of this command.
        if stored_room != room || stored_sender != sender {
            return Err(ChatError::Refused("command key already used"));
        }
        tracing::info!(room, %sender, id, "redelivered send answered with its stored message");
        return Ok(Sent::Before(id));
    }
    let parts = sql::participants(tx.conn(), room).await?;
    if !parts.iter().any(|p| p.user_id == sender && visible(p)) {
        return Err(ChatError::Refused("not a member"));
    }
    let me = sender_row(tx.conn(), sender).await?;
    let now = now_micros();
    let mut members: Vec<String> = parts
        .iter()
        .filter(|p| visible(p))
        .map(|p| p.user_id.clone())
        .collect();
    let mut out = if r.kind == DIRECT {
        unhide_direct(tx.conn(), room, &parts, &mut members, now).await?
    } else {
        Vec::new()
    };
    let id =
        sql::insert_keyed_message(tx.conn(), room, sender, Some(text), dto::TEXT, now, command)
            .await?;
    let row = MessageRow {
        id,
        chatroom_id: room,
        sender_id: sender.to_owned(),
        message: Some(text.to_owned()),
        create_at: now,
        kind: dto::TEXT.to_owned(),
    };
    let mut pushes = MessagePushes::with_capacity(ctx.media.links(), members.len() + 1);
    pushes.text(&row, Some(&me), &members)?;
    out.extend(pushes.into_vec());
    let staged = outbox::stage(tx.conn(), out, now).await?;
    tx.commit().await?;
    ctx.outbox.deliver(staged).await;
    Ok(Sent::Now(id))
}

/// `/app/update/read`: moves `user`'s read pointer in `room` forward to `message` (a message of
/// that room) and broadcasts it on `/topic/members.info.{room}`. Not forward: nothing happens.
/// Returns whether the pointer moved. A user who is not (or no longer) a member moves nothing
/// and is not refused: the frontend acknowledges the last message it saw right after leaving a
/// room, and a refusal there would only be noise.
///
/// The broadcast is published directly after the commit (not through the outbox): a lost read
/// receipt is superseded by the next one, and `GET …/read_info` has the state.
pub(crate) async fn update_read(
    ctx: &Ctx,
    user: &str,
    room: i64,
    message: i64,
) -> Result<bool, ChatError> {
    if member(ctx, room, user).await?.is_none() {
        tracing::debug!(%user, room, "read receipt from a non-member ignored");
        return Ok(false);
    }
    let mut tx = ctx.store.write().await?;
    let moved = sql::advance_read(tx.conn(), room, user, message).await?;
    tx.commit().await?;
    if moved {
        let info = ReadInfoDto {
            chat_room_id: room,
            user_id: user.to_owned(),
            last_read_message_id: Some(message),
        };
        let push = Outgoing::topic(&info_topic(room), &info)?;
        let bus = ctx.outbox.bus();
        match tokio::time::timeout(
            outbox::PUBLISH_TIMEOUT,
            bus.publish(push.target, push.envelope),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(room, %user, error = %e, "read receipt not published"),
            Err(_) => tracing::warn!(room, %user, "read receipt publish timed out"),
        }
    }
    Ok(moved)
}

/// `POST /api/chat/create`: one other user → the pair's DIRECT room (created, or re-opened:
/// both participants visible again); several → a new GROUP. Every user must exist; the creator
/// and duplicates are dropped from `users`. Returns the room id.
pub(crate) async fn create_room(
    ctx: &Ctx,
    creator: &str,
    users: &[String],
) -> Result<i64, ChatError> {
    let users = clean_ids(users, creator);
    if users.is_empty() {
        return Err(ChatError::Refused("nobody to chat with"));
    }
    if users.len() + 1 > MAX_ROOM_MEMBERS {
        return Err(ChatError::Refused("too many members"));
    }
    for _ in 0..CREATE_RETRIES {
        match try_create(ctx, creator, &users).await {
            Err(ChatError::Store(StoreError::Conflict(_))) => {
                // Lost a race for the pair's DIRECT room: the other request made it; reuse it.
                continue;
            }
            other => return other,
        }
    }
    Err(ChatError::Refused("could not create the room"))
}

async fn try_create(ctx: &Ctx, creator: &str, users: &[String]) -> Result<i64, ChatError> {
    let store = &ctx.store;
    let mut tx = store.write().await?;
    let mut wanted: Vec<String> = users.to_vec();
    wanted.push(creator.to_owned());
    let found = sql::users_by_ids(tx.conn(), &wanted).await?;
    if found.len() != wanted.len() {
        return Err(ChatError::Refused("unknown user"));
    }
    let now = now_micros();
    let mut out = Vec::new();
    let room = if let [other] = users {
        let key = direct_key(creator, other);
        if let Some(room) = sql::lock_direct_room(tx.conn(), store.dialect(), &key).await? {
            // Re-open: the creator sees it again (CREATE_ROOM), and so does a partner who had
            // left, exactly as for a new DM.
            let parts = sql::participants(tx.conn(), room).await?;
            for user in [creator, other.as_str()] {
                match parts.iter().find(|p| p.user_id == user) {
                    Some(p) if visible(p) => {
                        if user == creator {
                            out.push(alarm(user, &ChatAlarm::CreateRoom { create_at: now })?);
                        }
                    }
                    Some(_) => {
                        sql::set_hidden(tx.conn(), room, user, false).await?;
                        out.push(alarm(user, &ChatAlarm::CreateRoom { create_at: now })?);
                    }
                    None => {
                        sql::insert_participant(tx.conn(), room, user, now, None, None).await?;
                        out.push(alarm(user, &ChatAlarm::CreateRoom { create_at: now })?);
                    }
                }
            }
            let staged = outbox::stage(tx.conn(), out, now).await?;
            tx.commit().await?;
            ctx.outbox.deliver(staged).await;
            return Ok(room);
        }
        sql::insert_room(tx.conn(), DIRECT, Some(&key), now).await?
    } else {
        sql::insert_room(tx.conn(), GROUP, None, now).await?
    };
    for user in std::iter::once(creator).chain(users.iter().map(String::as_str)) {
        sql::insert_participant(tx.conn(), room, user, now, None, None).await?;
        out.push(alarm(user, &ChatAlarm::CreateRoom { create_at: now })?);
    }
    let staged = outbox::stage(tx.conn(), out, now).await?;
    tx.commit().await?;
    ctx.outbox.deliver(staged).await;
    Ok(room)
}

/// `POST /api/chat/invite/user`: `inviter` (a member) adds `users` to a GROUP. Everyone must
/// exist (else nothing changes); users already in the room are skipped; nobody new → nothing
/// happens. One INVITE message is stored and broadcast, each invitee gets INVITE_ROOM. Invitees
/// read from the INVITE message on (not what was said before they joined) and start with
/// everything before it counted as read.
pub(crate) async fn invite(
    ctx: &Ctx,
    inviter: &str,
    room: i64,
    users: &[String],
) -> Result<(), ChatError> {
    let users = clean_ids(users, inviter);
    if users.is_empty() {
        return Err(ChatError::Refused("nobody to invite"));
    }
    if users.len() >= MAX_ROOM_MEMBERS {
        return Err(ChatError::Refused("too many members"));
    }
    let _order = room_lock(room).await;
    let store = &ctx.store;
    let mut tx = store.write().await?;
    let Some(r) = sql::lock_room(tx.conn(), store.dialect(), room).await? else {
        return Err(ChatError::Refused("no such room"));
    };
    if r.kind != GROUP {
        return Err(ChatError::Refused("not a group"));
    }
    let parts = sql::participants(tx.conn(), room).await?;
    if !parts.iter().any(|p| p.user_id == inviter && visible(p)) {
        return Err(ChatError::Refused("not a member"));
    }
    let found = sql::users_by_ids(tx.conn(), &users).await?;
    if found.len() != users.len() {
        return Err(ChatError::Refused("unknown user"));
    }
    let new: Vec<&SenderRow> = users
        .iter()
        .filter(|u| !parts.iter().any(|p| &p.user_id == *u && visible(p)))
        .filter_map(|u| found.iter().find(|f| &f.id == u))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    let members_now = parts.iter().filter(|p| visible(p)).count();
    if members_now + new.len() > MAX_ROOM_MEMBERS {
        return Err(ChatError::Refused("too many members"));
    }
    let me = sender_row(tx.conn(), inviter).await?;
    let now = now_micros();
    let before = sql::last_message_id(tx.conn(), room).await?;
    let names: Vec<String> = new.iter().map(|u| format!("{}님", u.name)).collect();
    let text = format!("{inviter}님이 {}을 초대하였습니다.", names.join(", "));
    let id = sql::insert_message(tx.conn(), room, inviter, Some(&text), dto::INVITE, now).await?;
    let mut out = Vec::new();
    for u in &new {
        if parts.iter().any(|p| p.user_id == u.id) {
            sql::rejoin(tx.conn(), room, &u.id, now, Some(id)).await?;
            sql::raise_last_read(tx.conn(), store.dialect(), room, &u.id, before).await?;
        } else {
            sql::insert_participant(tx.conn(), room, &u.id, now, Some(id), before).await?;
        }
    }
    let row = MessageRow {
        id,
        chatroom_id: room,
        sender_id: inviter.to_owned(),
        message: Some(text),
        create_at: now,
        kind: dto::INVITE.to_owned(),
    };
    out.push(broadcast(ctx.media.links(), &row, Some(&me))?);
    for u in &new {
        out.push(alarm(&u.id, &ChatAlarm::InviteRoom { create_at: now })?);
    }
    let staged = outbox::stage(tx.conn(), out, now).await?;
    tx.commit().await?;
    ctx.outbox.deliver(staged).await;
    Ok(())
}

/// `DELETE /api/chat/room/leave`: `user` (a member) leaves `room`.
///
/// * DIRECT: the user's row is hidden; the partner keeps the room (no message, no push to them).
/// * GROUP with other members left: hidden, and a LEAVE message is stored and broadcast.
/// * GROUP whose last member leaves: the room is deleted with its messages, attachments, read
///   pointers and participants, and the stored objects (attachments, group image) are deleted
///   after the commit.
///
/// The gateways get revoke controls for both room topics first, then the leaver gets LEAVE_ROOM,
/// then the others the LEAVE message: published in that order after the commit, so every node
/// drops the leaver's room subscriptions before the LEAVE reaches it, and the leaver receives
/// nothing more of the room, its own LEAVE included (the frontend would answer it with a read
/// receipt and a `read_info` request for a room it is no longer in).
pub(crate) async fn leave(ctx: &Ctx, user: &str, room: i64) -> Result<(), ChatError> {
    let _order = room_lock(room).await;
    let store = &ctx.store;
    let mut tx = store.write().await?;
    let Some(r) = sql::lock_room(tx.conn(), store.dialect(), room).await? else {
        return Err(ChatError::Refused("no such room"));
    };
    let parts = sql::participants(tx.conn(), room).await?;
    if !parts.iter().any(|p| p.user_id == user && visible(p)) {
        return Err(ChatError::Refused("not a member"));
    }
    let now = now_micros();
    let mut out = revoke(user, room)?;
    out.push(alarm(user, &ChatAlarm::LeaveRoom { create_at: now })?);
    let mut objects = Vec::new();
    if r.kind == DIRECT {
        sql::set_hidden(tx.conn(), room, user, true).await?;
    } else if parts.iter().any(|p| p.user_id != user && visible(p)) {
        sql::set_hidden(tx.conn(), room, user, true).await?;
        let me = sender_row(tx.conn(), user).await?;
        let text = format!("{}님이 퇴장하셨습니다.", me.name);
        let id = sql::insert_message(tx.conn(), room, user, Some(&text), dto::LEAVE, now).await?;
        let row = MessageRow {
            id,
            chatroom_id: room,
            sender_id: user.to_owned(),
            message: Some(text),
            create_at: now,
            kind: dto::LEAVE.to_owned(),
        };
        out.push(broadcast(ctx.media.links(), &row, Some(&me))?);
    } else {
        for o in sql::room_objects(tx.conn(), room).await? {
            if let Some(key) = o.object_key {
                if o.kind == dto::IMAGE {
                    objects.push(format!("{key}{THUMB_SUFFIX}"));
                }
                objects.push(key);
            }
        }
        if let Some(key) = own_room_image_key(ctx, room, r.profile_image.as_deref()) {
            objects.push(format!("{key}{THUMB_SUFFIX}"));
            objects.push(key);
        }
        sql::delete_room(tx.conn(), room).await?;
    }
    let staged = outbox::stage(tx.conn(), out, now).await?;
    tx.commit().await?;
    ctx.outbox.deliver(staged).await;
    if !objects.is_empty() {
        ctx.media.delete(&objects).await;
    }
    Ok(())
}

/// Key prefix of a group's image.
pub(crate) fn room_image_prefix(room: i64) -> String {
    format!("chatRoom/{room}/profile")
}

/// The storage key of a group image URL when the object is ours.
fn own_room_image_key(ctx: &Ctx, room: i64, url: Option<&str>) -> Option<String> {
    let url = url.filter(|u| !u.is_empty())?;
    let prefix = format!("{}/", room_image_prefix(room));
    ctx.media.own_key(url).filter(|k| k.starts_with(&prefix))
}

/// What one attachment message will hold.
struct Stored {
    key: String,
    size: i64,
    name: String,
}

fn file_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    let base = if base.is_empty() { "file" } else { base };
    base.chars().take(MAX_FILE_NAME_CHARS).collect()
}

/// `POST /api/file/upload/chat`: `sender` (a member, checked before anything is stored) posts
/// files to `room`. Pictures (JPEG, PNG, GIF, WebP by their bytes) are cleaned by
/// `store_image` and make one IMAGE message; PDF, HWP/OLE and ZIP-based documents are stored
/// as downloads and make one FILE message; anything else is skipped. Nothing acceptable: refused.
/// Each message is broadcast like `/app/send`, with a CHAT alarm `사진 N장을 보냈습니다.` /
/// `파일 N개를 보냈습니다.` to every member (the sender included, as the original).
pub(crate) async fn post_files(
    ctx: &Ctx,
    sender: &str,
    room: i64,
    files: Vec<Upload>,
) -> Result<(), ChatError> {
    if member(ctx, room, sender).await?.is_none() {
        return Err(ChatError::Refused("not a member"));
    }
    let prefix = format!("chat/{room}");
    let mut guard = ctx.media.guard();
    let mut images = Vec::new();
    let mut docs = Vec::new();
    let mut images_first = None;
    for f in files {
        let kind = sniff(&f.bytes);
        if kind.is_image() {
            match ctx.media.store_image(&prefix, f.bytes).await {
                Ok(img) => {
                    guard.add_image(&img);
                    images_first.get_or_insert(true);
                    images.push(Stored {
                        key: img.key,
                        size: i64::try_from(img.size).unwrap_or(i64::MAX),
                        name: file_name(&f.name),
                    });
                }
                Err(e) if e.is_client_error() => {
                    tracing::debug!(error = %e, "chat picture skipped");
                }
                Err(e) => return Err(e.into()),
            }
        } else if kind.label().is_some() {
            let name = file_name(&f.name);
            match ctx.media.store_file(&prefix, f.bytes, &name).await {
                Ok(file) => {
                    guard.add_file(&file);
                    images_first.get_or_insert(false);
                    docs.push(Stored {
                        key: file.key,
                        size: i64::try_from(file.size).unwrap_or(i64::MAX),
                        name,
                    });
                }
                Err(e) if e.is_client_error() => {
                    tracing::debug!(error = %e, "chat file skipped");
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            tracing::debug!(name = %f.name, "chat file of an unsupported kind skipped");
        }
    }
    let Some(images_first) = images_first else {
        return Err(ChatError::Refused("no acceptable file"));
    };
    let mut groups = vec![(dto::IMAGE, images), (dto::FILE, docs)];
    if !images_first {
        groups.reverse();
    }

    let _order = room_lock(room).await;
    let store = &ctx.store;
    let mut tx = store.write().await?;
    let Some(r) = sql::lock_room(tx.conn(), store.dialect(), room).await? else {
        drop(tx);
        guard.rollback().await;
        return Err(ChatError::Refused("no such room"));
    };
    let parts = sql::participants(tx.conn(), room).await?;
    if !parts.iter().any(|p| p.user_id == sender && visible(p)) {
        drop(tx);
        guard.rollback().await;
        return Err(ChatError::Refused("not a member"));
    }
    let me = sender_row(tx.conn(), sender).await?;
    let now = now_micros();
    let mut members: Vec<String> = parts
        .iter()
        .filter(|p| visible(p))
        .map(|p| p.user_id.clone())
        .collect();
    let mut out = if r.kind == DIRECT {
        unhide_direct(tx.conn(), room, &parts, &mut members, now).await?
    } else {
        Vec::new()
    };
    for (kind, stored) in groups.into_iter().filter(|(_, s)| !s.is_empty()) {
        let id = sql::insert_message(tx.conn(), room, sender, None, dto::FILE, now).await?;
        let mut rows = Vec::with_capacity(stored.len());
        for s in &stored {
            let aid = sql::insert_attachment(
                tx.conn(),
                id,
                &NewAttachment {
                    url: &s.key,
                    kind,
                    size: s.size,
                    file_name: &s.name,
                    object_key: &s.key,
                },
            )
            .await?;
            rows.push(AttachmentRow {
                id: aid,
                message_id: id,
                url: s.key.clone(),
                kind: kind.to_owned(),
                file_name: s.name.clone(),
            });
        }
        let summary = if kind == dto::IMAGE {
            format!("사진 {}장을 보냈습니다.", stored.len())
        } else {
            format!("파일 {}개를 보냈습니다.", stored.len())
        };
        let row = MessageRow {
            id,
            chatroom_id: room,
            sender_id: sender.to_owned(),
            message: None,
            create_at: now,
            kind: dto::FILE.to_owned(),
        };
        let refs: Vec<&AttachmentRow> = rows.iter().collect();
        let mut pushes = MessagePushes::with_capacity(ctx.media.links(), members.len() + 1);
        pushes.files(&row, Some(&me), &refs, &summary, &members)?;
        out.extend(pushes.into_vec());
    }
    let staged: Staged = outbox::stage(tx.conn(), out, now).await?;
    tx.commit().await?;
    guard.commit();
    ctx.outbox.deliver(staged).await;
    Ok(())
}

/// `PUT /api/chat/update/group/title`: a member sets (or with an empty value clears) a GROUP's
/// title, at most [`MAX_TITLE_CHARS`]. Returns the title the caller now sees.
pub(crate) async fn set_title(
    ctx: &Ctx,
    user: &str,
    room: i64,
    title: Option<&str>,
) -> Result<String, ChatError> {
    let title = title.map(str::trim).filter(|t| !t.is_empty());
    if title.is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS) {
        return Err(ChatError::Refused("title too long"));
    }
    let store = &ctx.store;
    let mut tx = store.write().await?;
    let Some(r) = sql::lock_room(tx.conn(), store.dialect(), room).await? else {
        return Err(ChatError::Refused("no such room"));
    };
    if r.kind != GROUP {
        return Err(ChatError::Refused("not a group"));
    }
    let parts = sql::participants(tx.conn(), room).await?;
    if !parts.iter().any(|p| p.user_id == user && visible(p)) {
        return Err(ChatError::Refused("not a member"));
    }
    sql::set_title(tx.conn(), room, title).await?;
    tx.commit().await?;
    if let Some(t) = title {
        return Ok(t.to_owned());
    }
    let members = ctx.store.chat_members(room).await?;
    let names: Vec<&str> = members
        .iter()
        .filter(|m| m.id != user)
        .map(|m| m.name.as_str())
        .collect();
    Ok(auto_title(&names))
}

/// `PUT /api/chat/update/group/profile_image`: a member sets a GROUP's image (checked as an
/// image by its bytes, cleaned, stored under `chatRoom/{id}/profile/`). The previous image is
/// deleted after the commit if it was ours. Returns the URL.
pub(crate) async fn set_room_image(
    ctx: &Ctx,
    user: &str,
    room: i64,
    bytes: Bytes,
) -> Result<String, ChatError> {
    let Some(r) = ctx.store.chat_room(room).await? else {
        return Err(ChatError::Refused("no such room"));
    };
    if r.kind != GROUP {
        return Err(ChatError::Refused("not a group"));
    }
    if member(ctx, room, user).await?.is_none() {
        return Err(ChatError::Refused("not a member"));
    }
    let image = ctx
        .media
        .store_image(&room_image_prefix(room), bytes)
        .await?;
    let mut guard = ctx.media.guard();
    guard.add_image(&image);
    let store = &ctx.store;
    let mut tx = store.write().await?;
    let locked = sql::lock_room(tx.conn(), store.dialect(), room).await?;
    let parts = sql::participants(tx.conn(), room).await?;
    let still_member = parts.iter().any(|p| p.user_id == user && visible(p));
    let Some(locked) = locked.filter(|_| still_member) else {
        drop(tx);
        guard.rollback().await;
        return Err(ChatError::Refused("not a member"));
    };
    sql::set_room_image(tx.conn(), room, &image.key).await?;
    tx.commit().await?;
    guard.commit();
    if let Some(old) = own_room_image_key(ctx, room, locked.profile_image.as_deref())
        && old != image.key
    {
        ctx.media
            .delete(&[format!("{old}{THUMB_SUFFIX}"), old])
            .await;
    }
    Ok(ctx.media.url_of(&image.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles() {
        assert_eq!(auto_title(&[]), EMPTY_ROOM_TITLE);
        assert_eq!(auto_title(&["Bob"]), "Bob");
        assert_eq!(auto_title(&["Bob", "Carol", "Dan"]), "Bob 외 2명");
    }

    #[test]
    fn direct_keys_are_symmetric_and_unambiguous() {
        assert_eq!(
            direct_key("bob02", "alice01"),
            direct_key("alice01", "bob02")
        );
        assert_eq!(direct_key("alice01", "bob02"), "7:alice01bob02");
        assert_ne!(direct_key("a|b", "c"), direct_key("a", "b|c"));
        assert_ne!(direct_key("ab", "c"), direct_key("a", "bc"));
    }

    #[test]
    fn id_lists_are_cleaned() {
        let ids = ["bob", " bob ", "me", "", "carol"].map(String::from);
        assert_eq!(clean_ids(&ids, "me"), ["bob", "carol"]);
    }

    #[test]
    fn file_names_keep_the_last_component() {
        assert_eq!(file_name("../../etc/passwd"), "passwd");
        assert_eq!(file_name("C:\\x\\report.pdf"), "report.pdf");
        assert_eq!(file_name(""), "file");
    }
}
