//! Statements for chat: rooms, participants, messages, attachments, read pointers and the outbox.
//!
//! Membership means a `chatroom_participant` row with `is_hidden = 0`; a hidden row is someone who
//! left (kept for a DM's reuse and for a group's re-invite). `history_from` is the first message id
//! the member may read (NULL: all). Writes that change a room's membership or add messages run in a
//! [`super::WriteTx`] that first locks the room row with [`lock_room`], so concurrent leaves,
//! invites and sends on one room are serialised on MySQL as they are on SQLite.

use sqlx::{AnyConnection, FromRow, Row as _};

use super::dialect::{InsertedEnd, placeholders};
use super::script::{Rows, Script};
use super::{Dialect, Store, StoreError, StoreResult, inserted_id};

/// `chatroom.type` of a one-to-one room.
pub const DIRECT: &str = "DIRECT";
/// `chatroom.type` of a group room.
pub const GROUP: &str = "GROUP";

/// A `chatroom` row (the columns the service reads).
#[derive(Debug, Clone, FromRow)]
pub struct RoomRow {
    /// Room id.
    pub id: i64,
    /// Custom title (`None`: automatic).
    pub title: Option<String>,
    /// `DIRECT` or `GROUP`.
    #[sqlx(rename = "type")]
    pub kind: String,
    /// Group image URL.
    pub profile_image: Option<String>,
}

/// A room in a member's list.
#[derive(Debug, Clone, FromRow)]
pub struct ListRoomRow {
    /// Room id.
    pub id: i64,
    /// Custom title.
    pub title: Option<String>,
    /// `DIRECT` or `GROUP`.
    #[sqlx(rename = "type")]
    pub kind: String,
    /// Group image URL.
    pub profile_image: Option<String>,
    /// Type of the room's newest TEXT, IMAGE or FILE message (`None`: no such message yet).
    pub last_kind: Option<String>,
    /// Its text (TEXT messages).
    pub last_text: Option<String>,
    /// Its attachments (IMAGE and FILE messages).
    pub last_files: i64,
    /// The type of its first attachment (`IMAGE` or `FILE`): attachment messages are stored as
    /// `FILE`, pictures included, so this tells the two previews apart.
    pub last_file_kind: Option<String>,
}

impl ListRoomRow {
    /// The list's preview of the newest message: a TEXT message's text, or for an IMAGE or FILE
    /// message how many pictures or files it carried; `None` before the first such message.
    pub fn last_message(&self) -> Option<String> {
        let pictures = || Some(format!("사진 {}장을 보냈습니다.", self.last_files));
        match self.last_kind.as_deref()? {
            "IMAGE" => pictures(),
            "FILE" if self.last_file_kind.as_deref() == Some("IMAGE") => pictures(),
            "FILE" => Some(format!("파일 {}개를 보냈습니다.", self.last_files)),
            _ => self.last_text.clone(),
        }
    }
}

/// The id of room `r`'s newest message a room list previews (TEXT, IMAGE or FILE; system
/// messages are not shown). The preview is read from the messages rather than stored with the
/// room, so a send writes nothing but its message (docs/chat.md, "Room list").
const NEWEST_SHOWN: &str = "(SELECT x.id FROM chatroom_message x \
     WHERE x.chatroom_id = r.id AND x.type IN ('TEXT', 'IMAGE', 'FILE') \
     ORDER BY x.id DESC LIMIT 1)";

/// Another participant of one of a member's rooms.
#[derive(Debug, Clone, FromRow)]
pub struct PeerRow {
    /// Room id.
    pub chatroom_id: i64,
    /// User id.
    pub user_id: String,
    /// 1 when this participant left.
    pub is_hidden: i64,
    /// Display name.
    pub name: String,
    /// Profile image URL.
    pub profile_image: Option<String>,
}

/// A participant row.
#[derive(Debug, Clone, FromRow)]
pub struct ParticipantRow {
    /// User id.
    pub user_id: String,
    /// 1 when the participant left.
    pub is_hidden: i64,
    /// First readable message id (`None`: all).
    pub history_from: Option<i64>,
}

/// A `chatroom_message` row.
#[derive(Debug, Clone, FromRow)]
pub struct MessageRow {
    /// Message id.
    pub id: i64,
    /// Room id.
    pub chatroom_id: i64,
    /// Author.
    pub sender_id: String,
    /// Text (`None` for attachment messages).
    pub message: Option<String>,
    /// µs since the epoch.
    pub create_at: i64,
    /// `TEXT`, `FILE`, `INVITE` or `LEAVE`.
    #[sqlx(rename = "type")]
    pub kind: String,
}

/// A `message_attachment` row.
#[derive(Debug, Clone, FromRow)]
pub struct AttachmentRow {
    /// Attachment id.
    pub id: i64,
    /// Message id.
    pub message_id: i64,
    /// Public URL.
    pub url: String,
    /// `IMAGE` or `FILE`.
    #[sqlx(rename = "type")]
    pub kind: String,
    /// The client's file name.
    pub file_name: String,
}

/// A sender's display fields.
#[derive(Debug, Clone, FromRow)]
pub struct SenderRow {
    /// User id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Profile image URL.
    pub profile_image: Option<String>,
}

/// A read pointer.
#[derive(Debug, Clone, FromRow)]
pub struct ReadRow {
    /// User id.
    pub user_id: String,
    /// Last read message id (`None`: never read).
    pub last_read_message_id: Option<i64>,
}

/// An object stored for a room (attachment or group image), to delete with the room.
#[derive(Debug, Clone, FromRow)]
pub struct ObjectRow {
    /// Storage key (`None` for rows without one).
    pub object_key: Option<String>,
    /// `IMAGE` or `FILE`.
    #[sqlx(rename = "type")]
    pub kind: String,
}

/// An outbox row.
#[derive(Debug, Clone, FromRow)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// Encoded target (see `chat::outbox`).
    pub target: String,
    /// Envelope destination.
    pub destination: String,
    /// Envelope content type.
    pub content_type: Option<String>,
    /// Envelope headers, JSON `[[name, value], …]`.
    pub headers: Option<String>,
    /// Body.
    pub body: Vec<u8>,
    /// µs since the epoch.
    pub create_at: i64,
    /// Sweeper attempts so far.
    pub attempts: i64,
}

const MESSAGE_COLUMNS: &str = "id, chatroom_id, sender_id, message, create_at, type";

// ---------------------------------------------------------------------------------------------
// Rooms

/// Locks the room row until the transaction ends; `None` when there is no such room.
pub async fn lock_room(
    conn: &mut AnyConnection,
    d: Dialect,
    room: i64,
) -> StoreResult<Option<RoomRow>> {
    Ok(sqlx::query_as::<_, RoomRow>(&format!(
        "SELECT id, title, type, profile_image FROM chatroom WHERE id = ?{}",
        d.for_update()
    ))
    .bind(room)
    .fetch_optional(conn)
    .await?)
}

/// The DIRECT room of a pair (by its `direct_key`), locked.
pub async fn lock_direct_room(
    conn: &mut AnyConnection,
    d: Dialect,
    direct_key: &str,
) -> StoreResult<Option<i64>> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT id FROM chatroom WHERE direct_key = ?{}",
        d.for_update()
    ))
    .bind(direct_key)
    .fetch_optional(conn)
    .await?)
}

/// Inserts a room (`last_message_time` = creation time); a taken `direct_key` gives
/// `StoreError::Conflict`.
pub async fn insert_room(
    conn: &mut AnyConnection,
    kind: &str,
    direct_key: Option<&str>,
    at: i64,
) -> StoreResult<i64> {
    let r = sqlx::query(
        "INSERT INTO chatroom (title, type, create_at, last_message_time, last_message, \
         profile_image, direct_key) VALUES (NULL, ?, ?, ?, NULL, NULL, ?)",
    )
    .bind(kind)
    .bind(at)
    .bind(at)
    .bind(direct_key)
    .execute(&mut *conn)
    .await?;
    inserted_id(conn, &r).await
}

/// Sets (or with `None` clears) the custom title.
pub async fn set_title(
    conn: &mut AnyConnection,
    room: i64,
    title: Option<&str>,
) -> StoreResult<()> {
    sqlx::query("UPDATE chatroom SET title = ? WHERE id = ?")
        .bind(title)
        .bind(room)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets the group image URL.
pub async fn set_room_image(conn: &mut AnyConnection, room: i64, url: &str) -> StoreResult<()> {
    sqlx::query("UPDATE chatroom SET profile_image = ? WHERE id = ?")
        .bind(url)
        .bind(room)
        .execute(conn)
        .await?;
    Ok(())
}

/// The stored objects of a room's attachments.
pub async fn room_objects(conn: &mut AnyConnection, room: i64) -> StoreResult<Vec<ObjectRow>> {
    Ok(sqlx::query_as::<_, ObjectRow>(
        "SELECT a.object_key, a.type FROM message_attachment a \
         JOIN chatroom_message m ON m.id = a.message_id WHERE m.chatroom_id = ?",
    )
    .bind(room)
    .fetch_all(conn)
    .await?)
}

/// Deletes a room with everything in it: attachments, messages, read pointers, participants.
pub async fn delete_room(conn: &mut AnyConnection, room: i64) -> StoreResult<()> {
    sqlx::query(
        "DELETE FROM message_attachment WHERE message_id IN \
         (SELECT id FROM chatroom_message WHERE chatroom_id = ?)",
    )
    .bind(room)
    .execute(&mut *conn)
    .await?;
    for sql in [
        "DELETE FROM chatroom_message WHERE chatroom_id = ?",
        "DELETE FROM chatroom_last_read WHERE chatroom_id = ?",
        "DELETE FROM chatroom_participant WHERE chatroom_id = ?",
        "DELETE FROM chatroom WHERE id = ?",
    ] {
        sqlx::query(sql).bind(room).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The newest message id of a room.
pub async fn last_message_id(conn: &mut AnyConnection, room: i64) -> StoreResult<Option<i64>> {
    Ok(
        sqlx::query_scalar("SELECT MAX(id) FROM chatroom_message WHERE chatroom_id = ?")
            .bind(room)
            .fetch_one(conn)
            .await?,
    )
}

// ---------------------------------------------------------------------------------------------
// Participants

/// Every participant of a room, hidden ones included, by user id.
pub async fn participants(conn: &mut AnyConnection, room: i64) -> StoreResult<Vec<ParticipantRow>> {
    Ok(sqlx::query_as::<_, ParticipantRow>(
        "SELECT user_id, is_hidden, history_from FROM chatroom_participant \
         WHERE chatroom_id = ? ORDER BY user_id",
    )
    .bind(room)
    .fetch_all(conn)
    .await?)
}

/// Adds a participant (visible) with its read pointer row.
pub async fn insert_participant(
    conn: &mut AnyConnection,
    room: i64,
    user: &str,
    at: i64,
    history_from: Option<i64>,
    last_read: Option<i64>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO chatroom_participant (chatroom_id, user_id, joined_at, is_hidden, history_from) \
         VALUES (?, ?, ?, 0, ?)",
    )
    .bind(room)
    .bind(user)
    .bind(at)
    .bind(history_from)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO chatroom_last_read (chatroom_id, user_id, last_read_message_id) \
         VALUES (?, ?, ?)",
    )
    .bind(room)
    .bind(user)
    .bind(last_read)
    .execute(&mut *conn)
    .await?;
    members_changed(conn, room).await
}

/// Records that `room`'s participants changed (`chatroom.member_version` + 1), in the
/// transaction that changed them. Every write to `chatroom_participant` calls it: the send
/// writers trust the members they remember only while the version is the one they read.
async fn members_changed(conn: &mut AnyConnection, room: i64) -> StoreResult<()> {
    sqlx::query("UPDATE chatroom SET member_version = member_version + 1 WHERE id = ?")
        .bind(room)
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes a hidden participant visible again, joining now with `history_from`.
pub async fn rejoin(
    conn: &mut AnyConnection,
    room: i64,
    user: &str,
    at: i64,
    history_from: Option<i64>,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE chatroom_participant SET is_hidden = 0, joined_at = ?, history_from = ? \
         WHERE chatroom_id = ? AND user_id = ?",
    )
    .bind(at)
    .bind(history_from)
    .bind(room)
    .bind(user)
    .execute(&mut *conn)
    .await?;
    members_changed(conn, room).await
}

/// Hides (`true`: the user left) or shows a participant, keeping its history window.
pub async fn set_hidden(
    conn: &mut AnyConnection,
    room: i64,
    user: &str,
    hidden: bool,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE chatroom_participant SET is_hidden = ? WHERE chatroom_id = ? AND user_id = ?",
    )
    .bind(i64::from(hidden))
    .bind(room)
    .bind(user)
    .execute(&mut *conn)
    .await?;
    members_changed(conn, room).await
}

/// Makes sure `user` has a read pointer row in `room` and that it is at least `at_least`.
pub async fn raise_last_read(
    conn: &mut AnyConnection,
    d: Dialect,
    room: i64,
    user: &str,
    at_least: Option<i64>,
) -> StoreResult<()> {
    sqlx::query(&format!(
        "{} INTO chatroom_last_read (chatroom_id, user_id, last_read_message_id) VALUES (?, ?, ?)",
        d.insert_ignore()
    ))
    .bind(room)
    .bind(user)
    .bind(at_least)
    .execute(&mut *conn)
    .await?;
    if let Some(id) = at_least {
        sqlx::query(
            "UPDATE chatroom_last_read SET last_read_message_id = ? \
             WHERE chatroom_id = ? AND user_id = ? \
               AND (last_read_message_id IS NULL OR last_read_message_id < ?)",
        )
        .bind(id)
        .bind(room)
        .bind(user)
        .bind(id)
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Moves the read pointer of a visible member forward to `message`, a message of the same room
/// the member may read. Returns whether it moved (0 rows: not a member, not forward, or not a
/// message of this room).
pub async fn advance_read(
    conn: &mut AnyConnection,
    room: i64,
    user: &str,
    message: i64,
) -> StoreResult<bool> {
    let r = sqlx::query(
        "UPDATE chatroom_last_read SET last_read_message_id = ? \
         WHERE chatroom_id = ? AND user_id = ? \
           AND (last_read_message_id IS NULL OR last_read_message_id < ?) \
           AND EXISTS (SELECT 1 FROM chatroom_participant p \
                       WHERE p.chatroom_id = ? AND p.user_id = ? AND p.is_hidden = 0 \
                         AND (p.history_from IS NULL OR p.history_from <= ?)) \
           AND EXISTS (SELECT 1 FROM chatroom_message m WHERE m.id = ? AND m.chatroom_id = ?)",
    )
    .bind(message)
    .bind(room)
    .bind(user)
    .bind(message)
    .bind(room)
    .bind(user)
    .bind(message)
    .bind(message)
    .bind(room)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// The users among `ids` that exist, with their display fields.
pub async fn users_by_ids(conn: &mut AnyConnection, ids: &[String]) -> StoreResult<Vec<SenderRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT id, name, profile_image FROM user WHERE id IN ({})",
        placeholders(ids.len())
    );
    let mut q = sqlx::query_as::<_, SenderRow>(&sql);
    for id in ids {
        q = q.bind(id);
    }
    Ok(q.fetch_all(conn).await?)
}

// ---------------------------------------------------------------------------------------------
// Messages

/// Inserts a message and returns its id.
pub async fn insert_message(
    conn: &mut AnyConnection,
    room: i64,
    sender: &str,
    message: Option<&str>,
    kind: &str,
    at: i64,
) -> StoreResult<i64> {
    insert_keyed_message(conn, room, sender, message, kind, at, None).await
}

/// [`insert_message`] with the key of the `/app/send` command it stores (`command_key`, unique):
/// a key stored already gives `StoreError::Conflict`.
pub async fn insert_keyed_message(
    conn: &mut AnyConnection,
    room: i64,
    sender: &str,
    message: Option<&str>,
    kind: &str,
    at: i64,
    command: Option<&str>,
) -> StoreResult<i64> {
    let r = sqlx::query(
        "INSERT INTO chatroom_message (chatroom_id, sender_id, message, create_at, type, command_key) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(room)
    .bind(sender)
    .bind(message)
    .bind(at)
    .bind(kind)
    .bind(command)
    .execute(&mut *conn)
    .await?;
    inserted_id(conn, &r).await
}

/// The message stored for the `/app/send` command with key `command`, with its room and sender.
pub async fn message_of_command(
    conn: &mut AnyConnection,
    command: &str,
) -> StoreResult<Option<(i64, i64, String)>> {
    Ok(sqlx::query_as(
        "SELECT id, chatroom_id, sender_id FROM chatroom_message WHERE command_key = ?",
    )
    .bind(command)
    .fetch_optional(conn)
    .await?)
}

/// An attachment to insert.
#[derive(Debug, Clone)]
pub struct NewAttachment<'a> {
    /// Public URL.
    pub url: &'a str,
    /// `IMAGE` or `FILE`.
    pub kind: &'a str,
    /// Bytes stored.
    pub size: i64,
    /// The client's file name.
    pub file_name: &'a str,
    /// Storage key.
    pub object_key: &'a str,
}

/// Inserts an attachment of `message`.
pub async fn insert_attachment(
    conn: &mut AnyConnection,
    message: i64,
    a: &NewAttachment<'_>,
) -> StoreResult<i64> {
    let r = sqlx::query(
        "INSERT INTO message_attachment (message_id, url, type, size, file_name, object_key) \
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(message)
    .bind(a.url)
    .bind(a.kind)
    .bind(a.size)
    .bind(a.file_name)
    .bind(a.object_key)
    .execute(&mut *conn)
    .await?;
    inserted_id(conn, &r).await
}

// ---------------------------------------------------------------------------------------------
// Outbox

/// An outbox row to insert.
#[derive(Debug, Clone)]
pub struct NewOutbox<'a> {
    /// Encoded target.
    pub target: &'a str,
    /// Envelope destination.
    pub destination: &'a str,
    /// Envelope content type.
    pub content_type: Option<&'a str>,
    /// Envelope headers as JSON.
    pub headers: Option<&'a str>,
    /// Body.
    pub body: &'a [u8],
}

/// Inserts an outbox row and returns its id.
pub async fn outbox_insert(
    conn: &mut AnyConnection,
    row: &NewOutbox<'_>,
    at: i64,
) -> StoreResult<i64> {
    let r = sqlx::query(
        "INSERT INTO outbox (target, destination, content_type, headers, body, create_at, attempts) \
         VALUES (?, ?, ?, ?, ?, ?, 0)",
    )
    .bind(row.target)
    .bind(row.destination)
    .bind(row.content_type)
    .bind(row.headers)
    .bind(row.body.to_vec())
    .bind(at)
    .execute(&mut *conn)
    .await?;
    inserted_id(conn, &r).await
}

/// Deletes delivered outbox rows.
pub async fn outbox_delete(conn: &mut AnyConnection, ids: &[i64]) -> StoreResult<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "DELETE FROM outbox WHERE id IN ({})",
        placeholders(ids.len())
    );
    let mut q = sqlx::query(&sql);
    for id in ids {
        q = q.bind(id);
    }
    Ok(q.execute(conn).await?.rows_affected())
}

// ---------------------------------------------------------------------------------------------
// Batched sends (`chat::writer`)

/// A participant of one of several rooms with the display fields a message needs.
#[derive(Debug, Clone, FromRow)]
pub struct RoomMemberRow {
    /// Room id.
    pub chatroom_id: i64,
    /// User id.
    pub user_id: String,
    /// 1 when the participant left.
    pub is_hidden: i64,
    /// Display name.
    pub name: String,
    /// Profile image URL.
    pub profile_image: Option<String>,
}

/// A message to insert with [`insert_messages`].
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// Room id.
    pub room: i64,
    /// Author.
    pub sender: &'a str,
    /// Text.
    pub message: &'a str,
    /// `TEXT`.
    pub kind: &'a str,
    /// The key of the `/app/send` command it stores, if it came with one.
    pub command: Option<&'a str>,
}

/// The participants (hidden ones included) of `rooms` with their display fields, by room then
/// user id. A plain read; in a batch write, call it after [`script_lock_rooms`], whose locks every
/// membership change takes.
pub async fn members_of(
    conn: &mut AnyConnection,
    rooms: &[i64],
) -> StoreResult<Vec<RoomMemberRow>> {
    if rooms.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT p.chatroom_id, p.user_id, p.is_hidden, u.name, u.profile_image \
         FROM chatroom_participant p JOIN user u ON u.id = p.user_id \
         WHERE p.chatroom_id IN ({}) ORDER BY p.chatroom_id, p.user_id",
        placeholders(rooms.len())
    );
    let mut q = sqlx::query_as::<_, RoomMemberRow>(&sql);
    for r in rooms {
        q = q.bind(r);
    }
    Ok(q.fetch_all(conn).await?)
}

/// How the ids of one multi-row `INSERT` are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertedIds {
    /// Consecutive from the first, this far apart: SQLite (one writer at a time), and MySQL when
    /// `innodb_autoinc_lock_mode` is 0 or 1, which give a statement with a known row count
    /// consecutive values (`auto_increment_increment` apart).
    Consecutive(i64),
    /// Read back as the rows of the (locked) rooms from the first id on: MySQL's interleaved
    /// mode (2) does not promise consecutive values within a statement.
    ReadBack,
}

impl InsertedIds {
    /// What the server behind `conn` gives.
    pub async fn probe(conn: &mut AnyConnection, d: Dialect) -> StoreResult<InsertedIds> {
        if d.0 == migrations::Backend::Sqlite {
            return Ok(InsertedIds::Consecutive(1));
        }
        let (mode, step): (i64, i64) = sqlx::query_as(
            "SELECT CAST(@@innodb_autoinc_lock_mode AS SIGNED), \
             CAST(@@auto_increment_increment AS SIGNED)",
        )
        .fetch_one(conn)
        .await?;
        Ok(if mode <= 1 && step >= 1 {
            InsertedIds::Consecutive(step)
        } else {
            InsertedIds::ReadBack
        })
    }
}

/// The ids of `rows`, in their order, from the `(id, room)` pairs read back in id order (see
/// [`InsertedIds::ReadBack`]).
fn match_read_back(rows: &[NewMessage<'_>], back: Vec<(i64, i64)>) -> StoreResult<Vec<i64>> {
    if back.len() != rows.len() {
        return Err(StoreError::Db(sqlx::Error::Protocol(format!(
            "inserted {} messages but read back {}",
            rows.len(),
            back.len()
        ))));
    }
    // The k-th inserted row of a room is the k-th read back of that room.
    let mut per_room: std::collections::HashMap<i64, std::collections::VecDeque<i64>> =
        std::collections::HashMap::new();
    for (id, room) in back {
        per_room.entry(room).or_default().push_back(id);
    }
    rows.iter()
        .map(|r| {
            per_room
                .get_mut(&r.room)
                .and_then(std::collections::VecDeque::pop_front)
                .ok_or_else(|| {
                    StoreError::Db(sqlx::Error::Protocol(
                        "inserted messages do not match the rows read back".to_owned(),
                    ))
                })
        })
        .collect()
}

/// Messages by id, in id order.
pub async fn messages_by_ids(
    conn: &mut AnyConnection,
    ids: &[i64],
) -> StoreResult<Vec<MessageRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM chatroom_message WHERE id IN ({}) ORDER BY id",
        placeholders(ids.len())
    );
    let mut q = sqlx::query_as::<_, MessageRow>(&sql);
    for id in ids {
        q = q.bind(id);
    }
    Ok(q.fetch_all(conn).await?)
}

impl Store {
    // -----------------------------------------------------------------------------------------
    // Reads for the REST routes

    /// A room.
    pub async fn chat_room(&self, room: i64) -> StoreResult<Option<RoomRow>> {
        Ok(sqlx::query_as::<_, RoomRow>(
            "SELECT id, title, type, profile_image FROM chatroom WHERE id = ?",
        )
        .bind(room)
        .fetch_optional(self.pool())
        .await?)
    }

    /// `user`'s participant row in `room`.
    pub async fn chat_participant(
        &self,
        room: i64,
        user: &str,
    ) -> StoreResult<Option<ParticipantRow>> {
        Ok(sqlx::query_as::<_, ParticipantRow>(
            "SELECT user_id, is_hidden, history_from FROM chatroom_participant \
             WHERE chatroom_id = ? AND user_id = ?",
        )
        .bind(room)
        .bind(user)
        .fetch_optional(self.pool())
        .await?)
    }

    /// The rooms `user` has not left, newest activity first.
    pub async fn chat_rooms_of(&self, user: &str) -> StoreResult<Vec<ListRoomRow>> {
        let sql = format!(
            "SELECT r.id, r.title, r.type, r.profile_image, m.type AS last_kind, \
             m.message AS last_text, \
             (SELECT COUNT(*) FROM message_attachment a WHERE a.message_id = m.id) AS last_files, \
             (SELECT a.type FROM message_attachment a WHERE a.message_id = m.id \
              ORDER BY a.id LIMIT 1) AS last_file_kind \
             FROM chatroom_participant p JOIN chatroom r ON r.id = p.chatroom_id \
             LEFT JOIN chatroom_message m ON m.id = {NEWEST_SHOWN} \
             WHERE p.user_id = ? AND p.is_hidden = 0 \
             ORDER BY COALESCE(m.create_at, r.create_at) DESC, r.id DESC"
        );
        Ok(sqlx::query_as::<_, ListRoomRow>(&sql)
            .bind(user)
            .fetch_all(self.pool())
            .await?)
    }

    /// The other participants (hidden ones included) of the rooms `user` has not left, by room,
    /// then join time, then id.
    pub async fn chat_peers_of(&self, user: &str) -> StoreResult<Vec<PeerRow>> {
        Ok(sqlx::query_as::<_, PeerRow>(
            "SELECT p.chatroom_id, p.user_id, p.is_hidden, u.name, u.profile_image \
             FROM chatroom_participant me \
             JOIN chatroom_participant p ON p.chatroom_id = me.chatroom_id AND p.user_id <> me.user_id \
             JOIN user u ON u.id = p.user_id \
             WHERE me.user_id = ? AND me.is_hidden = 0 \
             ORDER BY p.chatroom_id, p.joined_at, p.user_id",
        )
        .bind(user)
        .fetch_all(self.pool())
        .await?)
    }

    /// Unread TEXT/FILE messages from others per room of `user` (after the read pointer and
    /// within the member's history window). Rooms without any are absent.
    pub async fn chat_unread_counts(&self, user: &str) -> StoreResult<Vec<(i64, i64)>> {
        Ok(sqlx::query_as::<_, (i64, i64)>(
            "SELECT m.chatroom_id, COUNT(*) \
             FROM chatroom_participant me \
             JOIN chatroom_message m ON m.chatroom_id = me.chatroom_id \
             LEFT JOIN chatroom_last_read lr \
               ON lr.chatroom_id = me.chatroom_id AND lr.user_id = me.user_id \
             WHERE me.user_id = ? AND me.is_hidden = 0 \
               AND m.id > COALESCE(lr.last_read_message_id, 0) \
               AND m.id >= COALESCE(me.history_from, 0) \
               AND m.sender_id <> me.user_id AND m.type IN ('TEXT', 'FILE') \
             GROUP BY m.chatroom_id",
        )
        .bind(user)
        .fetch_all(self.pool())
        .await?)
    }

    /// Up to `limit` messages of `room` with `id >= from` and `id < before`, newest first.
    pub async fn chat_history(
        &self,
        room: i64,
        from: Option<i64>,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<MessageRow>> {
        Ok(sqlx::query_as::<_, MessageRow>(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM chatroom_message \
             WHERE chatroom_id = ? AND id >= ? AND id < ? ORDER BY id DESC LIMIT ?"
        ))
        .bind(room)
        .bind(from.unwrap_or(0))
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Up to `limit` messages of `room` with `id > after` and `id >= from`, oldest first.
    pub async fn chat_messages_after_id(
        &self,
        room: i64,
        from: Option<i64>,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<MessageRow>> {
        Ok(sqlx::query_as::<_, MessageRow>(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM chatroom_message \
             WHERE chatroom_id = ? AND id > ? AND id >= ? ORDER BY id LIMIT ?"
        ))
        .bind(room)
        .bind(after)
        .bind(from.unwrap_or(0))
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// The attachments of `messages`, in id order.
    pub async fn chat_attachments(&self, messages: &[i64]) -> StoreResult<Vec<AttachmentRow>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT id, message_id, url, type, file_name FROM message_attachment \
             WHERE message_id IN ({}) ORDER BY id",
            placeholders(messages.len())
        );
        let mut q = sqlx::query_as::<_, AttachmentRow>(&sql);
        for id in messages {
            q = q.bind(id);
        }
        Ok(q.fetch_all(self.pool()).await?)
    }

    /// Messages by id, in id order (the outbox sweeper rebuilding a batch's pushes).
    pub async fn chat_messages_by_ids(&self, ids: &[i64]) -> StoreResult<Vec<MessageRow>> {
        let mut conn = self.pool().acquire().await?;
        messages_by_ids(&mut conn, ids).await
    }

    /// The participants of `rooms` with their display fields, hidden ones included.
    pub async fn chat_members_of(&self, rooms: &[i64]) -> StoreResult<Vec<RoomMemberRow>> {
        let mut conn = self.pool().acquire().await?;
        members_of(&mut conn, rooms).await
    }

    /// Display fields of users.
    pub async fn chat_users(&self, ids: &[String]) -> StoreResult<Vec<SenderRow>> {
        let mut conn = self.pool().acquire().await?;
        users_by_ids(&mut conn, ids).await
    }

    /// Read pointers of the visible members of `room`.
    pub async fn chat_read_info(&self, room: i64) -> StoreResult<Vec<ReadRow>> {
        Ok(sqlx::query_as::<_, ReadRow>(
            "SELECT p.user_id, lr.last_read_message_id \
             FROM chatroom_participant p \
             LEFT JOIN chatroom_last_read lr \
               ON lr.chatroom_id = p.chatroom_id AND lr.user_id = p.user_id \
             WHERE p.chatroom_id = ? AND p.is_hidden = 0 ORDER BY p.user_id",
        )
        .bind(room)
        .fetch_all(self.pool())
        .await?)
    }

    /// The visible members of `room` with their display fields.
    pub async fn chat_members(&self, room: i64) -> StoreResult<Vec<SenderRow>> {
        Ok(sqlx::query_as::<_, SenderRow>(
            "SELECT u.id, u.name, u.profile_image \
             FROM chatroom_participant p JOIN user u ON u.id = p.user_id \
             WHERE p.chatroom_id = ? AND p.is_hidden = 0",
        )
        .bind(room)
        .fetch_all(self.pool())
        .await?)
    }

    /// `user`'s `limit` most recently active rooms (left ones included).
    pub async fn chat_recent_rooms(&self, user: &str, limit: i64) -> StoreResult<Vec<i64>> {
        let sql = format!(
            "SELECT r.id FROM chatroom_participant p JOIN chatroom r ON r.id = p.chatroom_id \
             LEFT JOIN chatroom_message m ON m.id = {NEWEST_SHOWN} \
             WHERE p.user_id = ? ORDER BY COALESCE(m.create_at, r.create_at) DESC, r.id DESC \
             LIMIT ?"
        );
        Ok(sqlx::query_scalar(&sql)
            .bind(user)
            .bind(limit)
            .fetch_all(self.pool())
            .await?)
    }

    /// The participants (hidden ones included) of `rooms` other than `user`: (room, user).
    pub async fn chat_room_peers(
        &self,
        rooms: &[i64],
        user: &str,
    ) -> StoreResult<Vec<(i64, String)>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT chatroom_id, user_id FROM chatroom_participant \
             WHERE chatroom_id IN ({}) AND user_id <> ?",
            placeholders(rooms.len())
        );
        let mut q = sqlx::query_as::<_, (i64, String)>(&sql);
        for r in rooms {
            q = q.bind(r);
        }
        Ok(q.bind(user).fetch_all(self.pool()).await?)
    }

    /// Users whose id starts with the escaped `LIKE` prefix `pattern` (compared lower-cased) and
    /// who are not visible members of `room`, by id, at most `limit`.
    pub async fn chat_invite_candidates(
        &self,
        room: i64,
        pattern: &str,
        limit: i64,
    ) -> StoreResult<Vec<SenderRow>> {
        let d = self.dialect();
        Ok(sqlx::query_as::<_, SenderRow>(&format!(
            "SELECT u.id, u.name, u.profile_image FROM user u \
             WHERE LOWER(u.id) LIKE ?{} \
               AND NOT EXISTS (SELECT 1 FROM chatroom_participant p \
                               WHERE p.chatroom_id = ? AND p.user_id = u.id AND p.is_hidden = 0) \
             ORDER BY u.id LIMIT ?",
            d.like_escape()
        ))
        .bind(pattern)
        .bind(room)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    // -----------------------------------------------------------------------------------------
    // Outbox sweeper

    /// Outbox rows created at or before `created_before` whose backoff has passed at `now`,
    /// oldest first.
    pub async fn outbox_due(
        &self,
        created_before: i64,
        now: i64,
        limit: i64,
    ) -> StoreResult<Vec<OutboxRow>> {
        Ok(sqlx::query_as::<_, OutboxRow>(
            "SELECT id, target, destination, content_type, headers, body, create_at, attempts \
             FROM outbox WHERE create_at <= ? AND (next_at IS NULL OR next_at <= ?) \
             ORDER BY id LIMIT ?",
        )
        .bind(created_before)
        .bind(now)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// Claims one attempt at row `id` (counts it and sets the next attempt's time); false when
    /// another sweeper claimed it first or the row is gone.
    pub async fn outbox_claim(&self, id: i64, now: i64, next_at: i64) -> StoreResult<bool> {
        let mut tx = self.write().await?;
        let r = sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, next_at = ? \
             WHERE id = ? AND (next_at IS NULL OR next_at <= ?)",
        )
        .bind(next_at)
        .bind(id)
        .bind(now)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Deletes delivered outbox rows.
    pub async fn outbox_remove(&self, ids: &[i64]) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut tx = self.write().await?;
        let n = outbox_delete(tx.conn(), ids).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Outbox rows left, for tests and metrics.
    pub async fn outbox_len(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(self.pool())
            .await?)
    }
}

/// A `LIKE` pattern matching values starting with `prefix` (`%`, `_` and the escape character
/// escaped). Use with [`Dialect::like_escape`].
pub fn like_prefix(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '!') {
            out.push('!');
        }
        out.push(c);
    }
    out.push('%');
    out
}

// ---------------------------------------------------------------------------------------------
// The same statements for scripts (`chat::writer`: one round trip for several statements)

/// Appends [`outbox_delete`] for `ids` (nothing when empty).
pub fn script_outbox_delete(s: &mut Script, ids: &[i64]) {
    for chunk in ids.chunks(500) {
        s.sql("DELETE FROM outbox WHERE id IN (")
            .ints(chunk)
            .sql(")")
            .end();
    }
}

/// Appends the locking read of `rooms` (in id order, so two lockers cannot deadlock; the locks
/// last until the transaction ends) as `SELECT` `k`; read the rooms that exist with
/// [`locked_rooms`]. `rooms` must not be empty.
pub fn script_lock_rooms(s: &mut Script, d: Dialect, rooms: &[i64], k: i64) {
    s.select(k)
        .sql("id, type, member_version FROM chatroom WHERE id IN (")
        .ints(rooms)
        .sql(") ORDER BY id")
        .sql(d.for_update())
        .end();
}

/// SQLSTATE of the error [`script_check_versions`] raises when a room changed.
const CARDINALITY_VIOLATION: &str = "21000";

/// On MySQL, appends a statement that fails, ending the script there with the transaction still
/// open, unless every room of `expected` (room id, membership version) exists with that version;
/// `SELECT` `k` otherwise. Run after [`script_lock_rooms`] has locked the rooms, it lets a script
/// end with `COMMIT` that must not commit when a room's participants changed, saving the round
/// trip of deciding in between. Tell its failure from others with [`is_stale_rooms`]. Returns
/// false (and appends nothing) on SQLite, where the caller compares the versions it read instead.
///
/// The failure is portable across MySQL and MariaDB without stored programs: a scalar subquery
/// that yields a second row only when the rooms found differ from those expected (error 1242,
/// SQLSTATE 21000, "Subquery returns more than 1 row").
///
/// The rooms are compared by their count and the sum of their versions, one primary-key lookup
/// each (a disjunction of `id = … AND member_version = …` terms, as before, cost the optimiser
/// about three times as much at 60 rooms). The sum is exact because a version only ever grows
/// ([`members_changed`] adds 1) and room ids are never reused: each room's version now is at least
/// the one expected, so the sums are equal only when every version is.
pub fn script_check_versions(s: &mut Script, d: Dialect, expected: &[(i64, i64)], k: i64) -> bool {
    if d.0 != migrations::Backend::MySql || expected.is_empty() {
        return false;
    }
    let n = i64::try_from(expected.len()).unwrap_or(i64::MAX);
    let sum = expected
        .iter()
        .fold(0i64, |acc, &(_, version)| acc.saturating_add(version));
    s.select(k).sql(
        "(SELECT 0 UNION ALL SELECT 1 FROM DUAL WHERE \
         (SELECT COUNT(*), COALESCE(SUM(member_version), -1) FROM chatroom WHERE id IN (",
    );
    let rooms: Vec<i64> = expected.iter().map(|&(room, _)| room).collect();
    s.ints(&rooms)
        .sql(")) <> (")
        .int(n)
        .sql(", ")
        .int(sum)
        .sql(")) AS stale")
        .end();
    true
}

/// Whether `e` is the failure of [`script_check_versions`]: a room is gone or its participants
/// changed.
pub fn is_stale_rooms(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(sqlx::Error::Database(db))
        if db.code().as_deref() == Some(CARDINALITY_VIOLATION))
}

/// A room [`script_lock_rooms`] locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedRoom {
    /// Room id.
    pub id: i64,
    /// `DIRECT` or `GROUP`.
    pub kind: String,
    /// Its membership version ([`members_changed`]).
    pub member_version: i64,
}

/// The rooms [`script_lock_rooms`] returned, in id order.
pub fn locked_rooms(rows: &Rows, k: i64) -> StoreResult<Vec<LockedRoom>> {
    rows.of(k)
        .map(|r| {
            Ok(LockedRoom {
                id: r.try_get("id")?,
                kind: r.try_get("type")?,
                member_version: r.try_get("member_version")?,
            })
        })
        .collect()
}

/// Appends the read of `users`' display fields as `SELECT` `k`; read with [`user_rows`].
/// `users` must not be empty.
pub fn script_users(s: &mut Script, users: &[&str], k: i64) {
    s.select(k)
        .sql("id, name, profile_image FROM user WHERE id IN (");
    for (i, u) in users.iter().enumerate() {
        if i > 0 {
            s.sql(", ");
        }
        s.text(u);
    }
    s.sql(")").end();
}

/// The users [`script_users`] returned.
pub fn user_rows(rows: &Rows, k: i64) -> StoreResult<Vec<SenderRow>> {
    rows.of(k)
        .map(|r| SenderRow::from_row(r).map_err(StoreError::from))
        .collect()
}

/// Appends [`members_of`] as `SELECT` `k`; read with [`members_rows`]. `rooms` must not be empty.
pub fn script_members_of(s: &mut Script, rooms: &[i64], k: i64) {
    s.select(k)
        .sql(
            "p.chatroom_id, p.user_id, p.is_hidden, u.name, u.profile_image \
             FROM chatroom_participant p JOIN user u ON u.id = p.user_id \
             WHERE p.chatroom_id IN (",
        )
        .ints(rooms)
        .sql(") ORDER BY p.chatroom_id, p.user_id")
        .end();
}

/// The participants [`script_members_of`] returned.
pub fn members_rows(rows: &Rows, k: i64) -> StoreResult<Vec<RoomMemberRow>> {
    rows.of(k)
        .map(|r| RoomMemberRow::from_row(r).map_err(StoreError::from))
        .collect()
}

/// Appends the `INSERT` of `rows` (all stamped `at`, one statement) and, as `SELECT` `k`, what
/// gives their ids back as `ids` says ([`InsertedIds::probe`]); read them with
/// [`inserted_message_ids`]. `rows` must not be empty, and the caller must hold the row locks of
/// every room in `rows` ([`script_lock_rooms`], earlier in the transaction): read back, the ids
/// are the rows of those rooms from the statement's first id on, which are then exactly the
/// inserted ones.
pub fn script_insert_messages(
    s: &mut Script,
    d: Dialect,
    rows: &[NewMessage<'_>],
    at: i64,
    ids: InsertedIds,
    k: i64,
) {
    s.sql(
        "INSERT INTO chatroom_message (chatroom_id, sender_id, message, create_at, type, command_key) \
         VALUES ",
    );
    for (i, r) in rows.iter().enumerate() {
        s.sql(if i > 0 { ", (" } else { "(" })
            .int(r.room)
            .sql(", ")
            .text(r.sender)
            .sql(", ")
            .text(r.message)
            .sql(", ")
            .int(at)
            .sql(", ")
            .text(r.kind)
            .sql(", ")
            .opt_text(r.command)
            .sql(")");
    }
    s.end();
    match ids {
        InsertedIds::Consecutive(_) => {
            s.select(k).sql(d.last_insert_id().0).sql(" AS id").end();
        }
        InsertedIds::ReadBack => {
            // Where the last row's id is what the database gives, rows are consecutive (SQLite:
            // one writer at a time).
            let first = first_inserted_id(d, rows.len(), 1);
            let mut rooms: Vec<i64> = rows.iter().map(|r| r.room).collect();
            rooms.sort_unstable();
            rooms.dedup();
            s.select(k)
                .sql("id, chatroom_id FROM chatroom_message WHERE id >= ")
                .sql(&first)
                .sql(" AND chatroom_id IN (")
                .ints(&rooms)
                .sql(") ORDER BY id")
                .end();
        }
    }
}

/// SQL giving the first id of the `count`-row insert just made, its ids `step` apart.
fn first_inserted_id(d: Dialect, count: usize, step: i64) -> String {
    let (last_id, end) = d.last_insert_id();
    match end {
        InsertedEnd::First => last_id.to_owned(),
        InsertedEnd::Last => {
            let n = i64::try_from(count).unwrap_or(i64::MAX);
            format!("({last_id} - {})", step.saturating_mul(n - 1))
        }
    }
}

/// The ids of the messages [`script_insert_messages`] inserted, in the order of `rows`.
pub fn inserted_message_ids(
    result: &Rows,
    d: Dialect,
    rows: &[NewMessage<'_>],
    ids: InsertedIds,
    k: i64,
) -> StoreResult<Vec<i64>> {
    let n = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    match ids {
        InsertedIds::Consecutive(step) => {
            let id: i64 = result
                .of(k)
                .next()
                .ok_or_else(|| protocol("no id for the inserted messages"))?
                .try_get("id")?;
            let first = match d.last_insert_id().1 {
                InsertedEnd::First => id,
                InsertedEnd::Last => id - step * (n - 1),
            };
            Ok((0..n).map(|i| first + step * i).collect())
        }
        InsertedIds::ReadBack => {
            let back: Vec<(i64, i64)> = result
                .of(k)
                .map(|r| Ok((r.try_get("id")?, r.try_get("chatroom_id")?)))
                .collect::<StoreResult<_>>()?;
            match_read_back(rows, back)
        }
    }
}

fn protocol(msg: &str) -> StoreError {
    StoreError::Db(sqlx::Error::Protocol(msg.to_owned()))
}

/// Appends [`outbox_insert`] and, as `SELECT` `k`, its id (read with [`inserted_row_id`]).
pub fn script_outbox_insert(s: &mut Script, d: Dialect, row: &NewOutbox<'_>, at: i64, k: i64) {
    script_outbox_row(s, d, row, at, k, |s| {
        s.bytes(row.body);
    });
}

/// Appends the outbox row of a batch of `count` messages inserted just before by
/// [`script_insert_messages`] with consecutive ids `step` apart, and, as `SELECT` `k`, the row's
/// id. Its body, `{"first":…,"count":…,"step":…}`, is computed by the database from the insert's
/// id, so the row goes in the same round trip as the messages (`row.body` is not used). `count`
/// must be at least 1.
pub fn script_batch_outbox_insert(
    s: &mut Script,
    d: Dialect,
    row: &NewOutbox<'_>,
    count: usize,
    step: i64,
    at: i64,
    k: i64,
) {
    let n = i64::try_from(count).unwrap_or(i64::MAX);
    let first = first_inserted_id(d, count, step);
    let tail = format!("',\"count\":{n},\"step\":{step}}}'");
    let body = d.bytes_concat(&["'{\"first\":'", &first, &tail]);
    script_outbox_row(s, d, row, at, k, |s| {
        s.sql(&body);
    });
}

/// An outbox row whose body `body` appends, then `SELECT` `k` of its id.
fn script_outbox_row(
    s: &mut Script,
    d: Dialect,
    row: &NewOutbox<'_>,
    at: i64,
    k: i64,
    body: impl FnOnce(&mut Script),
) {
    s.sql(
        "INSERT INTO outbox (target, destination, content_type, headers, body, create_at, attempts) \
         VALUES (",
    )
    .text(row.target)
    .sql(", ")
    .text(row.destination)
    .sql(", ")
    .opt_text(row.content_type)
    .sql(", ")
    .opt_text(row.headers)
    .sql(", ");
    body(s);
    s.sql(", ").int(at).sql(", 0)").end();
    s.select(k).sql(d.last_insert_id().0).sql(" AS id").end();
}

/// The id of the single row whose insert was followed by `SELECT` `k` of its id.
pub fn inserted_row_id(result: &Rows, k: i64) -> StoreResult<i64> {
    Ok(result
        .of(k)
        .next()
        .ok_or_else(|| protocol("no id for the inserted row"))?
        .try_get("id")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_patterns_escape_wildcards() {
        assert_eq!(like_prefix("a%b_c!"), "a!%b!_c!!%");
        assert_eq!(like_prefix(""), "%");
    }
}
