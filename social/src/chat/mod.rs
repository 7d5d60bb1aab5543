//! Chat: the application handlers (`/app/send`, `/app/update/read`), the write operations shared
//! with the REST routes (`routes::chat`), the outbox that carries every chat push, and the
//! membership queries the gateway uses (subscription policy, missed-message replay).
//!
//! Rules (see `docs/chat.md` for the whole picture):
//! * a **member** of a room is a participant whose row is not hidden; only members send, read,
//!   list, subscribe and replay. Someone who left is hidden until invited again (group) or until
//!   the DM is re-opened or receives a message (direct);
//! * the sender of a message is always the authenticated principal; anything else the client puts
//!   in the body besides `chatRoomId` and `message` is ignored;
//! * every push is written to the outbox in the transaction that makes the change, published after
//!   the commit and deleted once the bus accepted it; rows left behind are re-sent by a sweeper
//!   ([`register`] starts it). Chat messages carry [`MESSAGE_ID_HEADER`] so the gateway can drop
//!   duplicates;
//! * `/app/send` messages are written in batches, one transaction for all the sends queued at
//!   the moment ([`writer`]);
//! * changes to one room are serialised in this process (a lock per room shard held from before
//!   the transaction until the pushes are published), so a room's messages are published in id
//!   order; across processes the bus hands a room's STOMP commands to one process at a time (the
//!   gateway keys them by `chatRoomId`), and the room row lock orders the commits.

pub mod doc;
pub mod dto;
mod ops;
pub mod routes;
pub mod writer;

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use broker_bridge::{AppCommand, AppHandler, Bus, Completion, HandlerError};
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};

use crate::ctx::Ctx;
use crate::http::ApiError;
use crate::media::{Links, MediaError};
use crate::outbox;
use crate::store::chat::{MessageRow, ParticipantRow};
use crate::store::{Store, StoreError};

pub use dto::{AttachmentDto, ChatAlarm, ChatMessageDto, ChatRoomDto, ReadInfoDto};
pub use ops::{EMPTY_ROOM_TITLE, MAX_TITLE_CHARS, Upload, auto_title};
pub(crate) use ops::{
    create_room, invite, leave, post_files, set_room_image, set_title, update_read,
};

/// Command header with the key the gateway gives every `/app/` SEND (unique across the
/// deployment; clients cannot set it): a redelivered `/app/send` is stored once.
pub const COMMAND_KEY_HEADER: &str = broker_bridge::COMMAND_KEY_HEADER;
/// Envelope header carrying the numeric message id on `/topic/chat.{id}` broadcasts.
pub const MESSAGE_ID_HEADER: &str = "x-instar-message-id";
/// Control header on `/user/queue/$control` envelopes (value `revoke`).
pub const CONTROL_HEADER: &str = "x-instar-control";
/// The topic (without `/topic/`) a control envelope is about.
pub const CONTROL_TOPIC_HEADER: &str = "x-instar-topic";
/// User queue of control envelopes for the gateway (never delivered to clients).
pub const CONTROL_QUEUE: &str = "$control";
/// Longest text message, in characters (`chatroom_message.message` is `VARCHAR(4000)`).
pub const MAX_MESSAGE_CHARS: usize = 4000;
/// Most members a room may have.
pub const MAX_ROOM_MEMBERS: usize = 100;
/// Most messages one replay call returns.
pub const MAX_REPLAY: usize = 500;

/// Why a chat operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// Not allowed or invalid (not a member, no such room, bad input): 400 `BR`, or
    /// [`HandlerError::Rejected`].
    #[error("refused: {0}")]
    Refused(&'static str),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A payload could not be serialised.
    #[error("serialising: {0}")]
    Json(#[from] serde_json::Error),
    /// Media storage failed (client errors become [`ChatError::Refused`]).
    #[error("media: {0}")]
    Media(String),
}

impl From<MediaError> for ChatError {
    fn from(e: MediaError) -> Self {
        if e.is_client_error() {
            tracing::debug!(error = %e, "chat upload refused");
            ChatError::Refused("upload refused")
        } else {
            ChatError::Media(e.to_string())
        }
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::Refused(why) => {
                tracing::debug!(why, "chat request refused");
                ApiError::bad_request()
            }
            ChatError::Store(e) => e.into(),
            ChatError::Json(e) => {
                tracing::error!(error = %e, "serialising a chat payload");
                ApiError::database()
            }
            ChatError::Media(why) => {
                tracing::error!(%why, "storing a chat upload");
                ApiError::database()
            }
        }
    }
}

impl From<ChatError> for HandlerError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::Refused(why) => HandlerError::Rejected(why.to_owned()),
            ChatError::Store(e) => HandlerError::Transient(e.to_string()),
            ChatError::Json(e) => HandlerError::Other(Box::new(e)),
            ChatError::Media(why) => HandlerError::Transient(why),
        }
    }
}

/// Why [`Ctx::chat_messages_after`] returned nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The user is not a member of the room (or it does not exist).
    #[error("not a member of the room")]
    NotMember,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A payload could not be serialised.
    #[error("serialising: {0}")]
    Json(#[from] serde_json::Error),
}

// ---------------------------------------------------------------------------------------------
// Per-room ordering

const ROOM_SHARDS: usize = 64;

static ROOM_LOCKS: LazyLock<[Mutex<()>; ROOM_SHARDS]> =
    LazyLock::new(|| std::array::from_fn(|_| Mutex::new(())));

/// Serialises changes to `room` in this process, from before the transaction until its pushes
/// are published. Take it before [`crate::store::Store::write`], never after.
pub(crate) async fn room_lock(room: i64) -> MutexGuard<'static, ()> {
    ROOM_LOCKS[room_shard(room)].lock().await
}

fn room_shard(room: i64) -> usize {
    usize::try_from(room.rem_euclid(ROOM_SHARDS as i64)).unwrap_or(0)
}

/// [`room_lock`] for several rooms at once: their shards are taken in ascending order, so two
/// holders of several shards cannot deadlock (and everyone else holds one at a time).
pub(crate) async fn room_locks(rooms: &[i64]) -> Vec<MutexGuard<'static, ()>> {
    let mut shards: Vec<usize> = rooms.iter().map(|&r| room_shard(r)).collect();
    shards.sort_unstable();
    shards.dedup();
    let mut guards = Vec::with_capacity(shards.len());
    for s in shards {
        guards.push(ROOM_LOCKS[s].lock().await);
    }
    guards
}

/// The member row of `user` in `room` when `user` is a member (participant, not hidden).
pub(crate) async fn member(
    ctx: &Ctx,
    room: i64,
    user: &str,
) -> Result<Option<ParticipantRow>, StoreError> {
    member_in(&ctx.store, room, user).await
}

/// [`member`] on a bare store.
async fn member_in(
    store: &Store,
    room: i64,
    user: &str,
) -> Result<Option<ParticipantRow>, StoreError> {
    Ok(store
        .chat_participant(room, user)
        .await?
        .filter(|p| p.is_hidden == 0))
}

/// DTOs of stored messages, with their senders and attachments loaded in two batched queries.
pub(crate) async fn message_dtos(
    ctx: &Ctx,
    rows: &[MessageRow],
) -> Result<Vec<ChatMessageDto>, StoreError> {
    message_dtos_in(&ctx.store, ctx.media.links(), rows).await
}

/// [`message_dtos`] on a bare store.
async fn message_dtos_in(
    store: &Store,
    media: &Links,
    rows: &[MessageRow],
) -> Result<Vec<ChatMessageDto>, StoreError> {
    let file_ids: Vec<i64> = rows
        .iter()
        .filter(|r| r.kind == dto::FILE)
        .map(|r| r.id)
        .collect();
    let attachments = store.chat_attachments(&file_ids).await?;
    let mut sender_ids: Vec<String> = rows.iter().map(|r| r.sender_id.clone()).collect();
    sender_ids.sort();
    sender_ids.dedup();
    let senders = store.chat_users(&sender_ids).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let sender = senders.iter().find(|s| s.id == row.sender_id);
            let atts: Vec<_> = attachments
                .iter()
                .filter(|a| a.message_id == row.id)
                .collect();
            ChatMessageDto::build(media, row, sender, &atts)
        })
        .collect())
}

/// Parses a room or message id sent as a JSON number or a numeric string.
fn json_id(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Parses the id in a topic name (`chat.{id}`), decimal without sign or leading zeros.
fn topic_room(topic: &str) -> Option<i64> {
    let id = topic
        .strip_prefix("chat.")
        .or_else(|| topic.strip_prefix("members.info."))?;
    let n: i64 = id.parse().ok()?;
    (n > 0 && n.to_string() == id).then_some(n)
}

// ---------------------------------------------------------------------------------------------
// Application handlers

/// Registers the chat handlers for `/app/` on `bus` and starts the outbox sweeper (on the
/// current Tokio runtime). Pushes go out through `ctx.outbox`'s bus.
pub fn register(ctx: &Ctx, bus: &Bus) {
    register_with(ctx, bus, WriterOptions::default());
}

/// How `/app/send` is written ([`writer`]); `None` fields take the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterOptions {
    /// Send writer tasks (default one).
    pub writers: Option<usize>,
    /// The least time between the starts of two batches of one writer (default
    /// [`writer::DEFAULT_LINGER`]; zero: none).
    pub linger: Option<std::time::Duration>,
}

/// [`register`] with the send writers `options` asks for.
pub fn register_with(ctx: &Ctx, bus: &Bus, options: WriterOptions) {
    let writers = options.writers.unwrap_or(SEND_WRITERS);
    let linger = options.linger.unwrap_or(writer::DEFAULT_LINGER);
    let writer = writer::SendWriter::start_with(ctx, writers, linger);
    bus.register_handler(
        "/app/",
        Arc::new(ChatHandler {
            ctx: ctx.clone(),
            writer,
        }),
    );
    ctx.outbox.register(
        writer::MESSAGES_TARGET,
        Arc::new(writer::MessagesRebuild::new(ctx)),
    );
    // Taking over a dead process's rooms: what it committed and did not publish goes out before
    // the first message this process writes for them.
    let orphans = ctx.outbox.clone();
    bus.on_shards_gained(Arc::new(move || {
        let outbox = orphans.clone();
        Box::pin(async move { writer::republish_orphans(&outbox).await })
    }));
    let sweeper = ctx.outbox.clone();
    ctx.jobs
        .every("chat-outbox-sweeper", outbox::SWEEP_INTERVAL, move || {
            let sweeper = sweeper.clone();
            async move {
                if let Err(e) = sweeper.sweep(outbox::SWEEP_GRACE).await {
                    tracing::warn!(error = %e, "chat outbox sweep failed");
                }
            }
        });
}

/// Handles `/app/send` and `/app/update/read`; any other `/app/` destination is rejected.
#[derive(Debug)]
struct ChatHandler {
    ctx: Ctx,
    /// Batches sends; `None` (no runtime at registration) writes each alone.
    writer: Option<writer::SendWriter>,
}

/// Default send writer tasks. One: SQLite has one writer at a time anyway, and on MariaDB more
/// writers made larger numbers of smaller batches, which measured slower (docs/benchmarks.md).
const SEND_WRITERS: usize = 1;

/// A parsed chat command.
enum ChatCommand {
    Send { room: i64, text: String },
    Read { room: i64, message: i64 },
}

impl ChatCommand {
    fn parse(cmd: &AppCommand) -> Result<ChatCommand, HandlerError> {
        let send = match cmd.destination.as_str() {
            "/app/send" => true,
            "/app/update/read" => false,
            other => {
                return Err(HandlerError::Rejected(format!(
                    "unknown destination {other}"
                )));
            }
        };
        // Bodies are JSON whatever the frame's content type says (contract §1.6).
        let body: Value = serde_json::from_slice(&cmd.body)
            .map_err(|e| HandlerError::Rejected(format!("body is not JSON: {e}")))?;
        let room = json_id(body.get("chatRoomId"))
            .ok_or_else(|| HandlerError::Rejected("chatRoomId missing or not a number".into()))?;
        if send {
            // The sender is the session's principal; `senderId`, `type`, `attachments` and any
            // other field of the body are ignored.
            let text = body
                .get("message")
                .and_then(Value::as_str)
                .ok_or_else(|| HandlerError::Rejected("message missing".into()))?;
            Ok(ChatCommand::Send {
                room,
                text: text.to_owned(),
            })
        } else {
            let message = json_id(body.get("messageId"))
                .ok_or_else(|| HandlerError::Rejected("messageId missing".into()))?;
            Ok(ChatCommand::Read { room, message })
        }
    }
}

#[async_trait]
impl AppHandler for ChatHandler {
    async fn handle(&self, cmd: AppCommand) -> Result<(), HandlerError> {
        self.start(cmd).await?.await
    }

    /// A send is queued to the writer in the session's order and answered later, so a session's
    /// next send can join the same batch; read receipts are handled to the end.
    async fn start(&self, mut cmd: AppCommand) -> Result<Completion, HandlerError> {
        use tracing::Instrument as _;
        // One span a command: every line its handling logs names the user, session, node and room
        // and, when the sending gateway passed one on, the trace (`traceparent`).
        let span = tracing::info_span!(
            "command",
            user = %cmd.principal,
            session = %cmd.session,
            node = %cmd.node,
            room = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        if let Some(trace) = broker_bridge::trace::trace_id_in(&cmd.headers) {
            span.record("trace_id", trace);
        }
        // Exported spans: this one is a child of the gateway's, and the message's pushes name it
        // as their parent (same trace id either way).
        if let Some((_, tp)) = cmd
            .headers
            .iter_mut()
            .find(|(k, _)| k == broker_bridge::trace::TRACEPARENT)
            && broker_bridge::trace::trace_id(tp).is_some()
        {
            broker_bridge::trace::set_parent(&span, tp);
            if let Some(own) = broker_bridge::trace::traceparent_of(&span) {
                *tp = own;
            }
        }
        self.start_in(cmd).instrument(span).await
    }
}

impl ChatHandler {
    async fn start_in(&self, cmd: AppCommand) -> Result<Completion, HandlerError> {
        let parsed = ChatCommand::parse(&cmd)?;
        let room = match &parsed {
            ChatCommand::Send { room, .. } | ChatCommand::Read { room, .. } => *room,
        };
        tracing::Span::current().record("room", room);
        tracing::debug!(destination = %cmd.destination, "chat command");
        match (parsed, &self.writer) {
            (ChatCommand::Send { room, text }, Some(w)) => {
                let trace = cmd
                    .headers
                    .iter()
                    .find(|(k, _)| k == broker_bridge::trace::TRACEPARENT)
                    .map(|(_, v)| v.as_str())
                    .filter(|v| broker_bridge::trace::trace_id(v).is_some());
                let answer = w
                    .enqueue_command(&cmd.principal, room, &text, command_key(&cmd), trace)
                    .await?;
                Ok(Box::pin(async move {
                    answer.await?;
                    Ok(())
                }))
            }
            (ChatCommand::Send { room, text }, None) => {
                ops::send_command(&self.ctx, &cmd.principal, room, &text, command_key(&cmd))
                    .await?;
                Ok(done())
            }
            (ChatCommand::Read { room, message }, _) => {
                update_read(&self.ctx, &cmd.principal, room, message).await?;
                Ok(done())
            }
        }
    }
}

/// The command's key ([`COMMAND_KEY_HEADER`]), when it has a sane one.
fn command_key(cmd: &AppCommand) -> Option<&str> {
    cmd.headers
        .iter()
        .find(|(k, _)| k == COMMAND_KEY_HEADER)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty() && v.len() <= 64)
}

fn done() -> Completion {
    Box::pin(std::future::ready(Ok(())))
}

// ---------------------------------------------------------------------------------------------
// Gateway queries

/// What the gateway asks about rooms: who may subscribe to a room's topics, and which messages a
/// reconnecting member missed. Needs only the database, so a scale-out gateway node can open one
/// with [`Rooms::open`] without the rest of the social service.
#[derive(Debug, Clone)]
pub struct Rooms {
    store: Store,
    links: Links,
}

impl Rooms {
    /// A view on an already open store; replayed messages carry media URLs rendered by `links`
    /// (the social service's own [`crate::media::Media::links`]).
    pub fn new(store: Store, links: Links) -> Self {
        Self { store, links }
    }

    /// Opens the database at `url`, applying pending migrations like every process that opens the
    /// store does (they are idempotent and serialised by the migrator).
    pub async fn open(
        url: &str,
        pool: &migrations::PoolSettings,
        links: Links,
    ) -> Result<Self, StoreError> {
        Ok(Self::new(Store::open(url, pool).await?, links))
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.store.close().await;
    }

    /// `user`'s current token version, read from the database (0 for an unknown user), for the
    /// gateway's check of a CONNECT's token ([`crate::revocation`]).
    ///
    /// # Errors
    /// The database failed.
    pub async fn token_version(&self, user: &str) -> Result<u64, StoreError> {
        Ok(self
            .store
            .token_version(user)
            .await?
            .map_or(0, |v| u64::try_from(v).unwrap_or(0)))
    }

    /// Whether `user` may subscribe to `topic` (given without `/topic/`): `chat.{id}` and
    /// `members.info.{id}` for the current members of room `id` (participants who have not left);
    /// every other topic is refused. A database error refuses (and is logged).
    pub async fn may_subscribe_topic(&self, user: &str, topic: &str) -> bool {
        let Some(room) = topic_room(topic) else {
            return false;
        };
        match member_in(&self.store, room, user).await {
            Ok(m) => m.is_some(),
            Err(e) => {
                tracing::warn!(%user, %topic, error = %e, "subscription check failed; refused");
                false
            }
        }
    }

    /// Messages of `room` with an id above `after_id`, oldest first, at most `limit` (capped at
    /// [`MAX_REPLAY`]), for a member catching up after a reconnect: `(message id, ChatMessageDto
    /// JSON)`, the same bytes the broadcast carried unless the sender renamed themselves since.
    /// Messages before the member joined are not included.
    pub async fn messages_after(
        &self,
        user: &str,
        room: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Vec<u8>)>, ReplayError> {
        let Some(me) = member_in(&self.store, room, user).await? else {
            return Err(ReplayError::NotMember);
        };
        let limit = i64::try_from(limit.min(MAX_REPLAY)).unwrap_or(0);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .store
            .chat_messages_after_id(room, me.history_from, after_id, limit)
            .await?;
        let dtos = message_dtos_in(&self.store, &self.links, &rows).await?;
        dtos.into_iter()
            .map(|d| Ok((d.message_id, serde_json::to_vec(&d)?)))
            .collect()
    }

    /// The room a chat topic (`chat.{id}`, without `/topic/`) belongs to; `None` for any other
    /// topic, `members.info.{id}` included (it has nothing to replay).
    pub fn chat_topic_room(topic: &str) -> Option<i64> {
        topic.strip_prefix("chat.").and_then(|_| topic_room(topic))
    }
}

impl Ctx {
    /// The gateway's view on the rooms, sharing this service's pool.
    pub fn rooms(&self) -> Rooms {
        Rooms::new(self.store.clone(), self.media.links().clone())
    }

    /// [`Rooms::may_subscribe_topic`].
    pub async fn may_subscribe_topic(&self, user: &str, topic: &str) -> bool {
        self.rooms().may_subscribe_topic(user, topic).await
    }

    /// [`Rooms::messages_after`].
    pub async fn chat_messages_after(
        &self,
        user: &str,
        room: i64,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Vec<u8>)>, ReplayError> {
        self.rooms()
            .messages_after(user, room, after_id, limit)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert_eq!(topic_room("chat.5"), Some(5));
        assert_eq!(topic_room("members.info.12"), Some(12));
        assert_eq!(topic_room("chat.05"), None);
        assert_eq!(topic_room("chat.-1"), None);
        assert_eq!(topic_room("chat.0"), None);
        assert_eq!(topic_room("chat.*"), None);
        assert_eq!(topic_room("chat/5"), None);
        assert_eq!(topic_room("members/info/5"), None);
        assert_eq!(topic_room("other.5"), None);
        assert_eq!(Rooms::chat_topic_room("chat.7"), Some(7));
        assert_eq!(Rooms::chat_topic_room("members.info.7"), None);
    }

    #[test]
    fn ids_from_json() {
        assert_eq!(json_id(Some(&Value::from(12))), Some(12));
        assert_eq!(json_id(Some(&Value::from("12"))), Some(12));
        assert_eq!(json_id(Some(&Value::from("x"))), None);
        assert_eq!(json_id(Some(&Value::Null)), None);
        assert_eq!(json_id(None), None);
    }
}
