//! What a stored chat message publishes ([`MessagePushes`]), the outbox row that names a batch's
//! messages, and the sweeper's rebuild of that row's pushes ([`MessagesRebuild`]).

use std::collections::HashMap;

use super::{MAX_BATCH, MESSAGES_TARGET, Request};
use crate::chat::dto::{self, ChatAlarm, ChatMessageDto};
use crate::chat::{ChatError, ops};
use crate::ctx::Ctx;
use crate::media::Links;
use crate::outbox::{self, Outgoing};
use crate::store::chat::{
    self as sql, AttachmentRow, InsertedIds, MessageRow, NewMessage, NewOutbox, SenderRow,
};
use crate::store::script::Script;
use crate::store::{StoreError, StoreResult};

/// Builds the pushes that announce stored chat messages, the same for every path that stores one
/// (the batch writer's two paths, a send written alone, a message of files) and for the sweeper
/// that re-sends a batch from its outbox row: each message's broadcast on `/topic/chat.{room}`
/// (with [`crate::chat::MESSAGE_ID_HEADER`], by which gateways drop duplicates), then its `CHAT`
/// alarm to each member, in that order.
pub(crate) struct MessagePushes<'a> {
    links: &'a Links,
    out: Vec<Outgoing>,
    /// The `traceparent` the next message's pushes carry ([`Self::trace_next`]).
    trace: Option<String>,
}

impl<'a> MessagePushes<'a> {
    /// An empty set rendering media with `links`, with room for `n` pushes.
    pub(crate) fn with_capacity(links: &'a Links, n: usize) -> Self {
        Self {
            links,
            out: Vec::with_capacity(n),
            trace: None,
        }
    }

    /// The next message's pushes (its broadcast and alarms) carry `traceparent` over the bus.
    pub(crate) fn trace_next(&mut self, traceparent: Option<&str>) {
        self.trace = traceparent.map(str::to_owned);
    }

    /// A TEXT message: its broadcast, then its text as the `CHAT` alarm of each of `members`.
    pub(crate) fn text(
        &mut self,
        row: &MessageRow,
        sender: Option<&SenderRow>,
        members: &[String],
    ) -> Result<(), ChatError> {
        let alarms = Self::alarms(
            row.create_at,
            row.chatroom_id,
            row.message.as_deref().unwrap_or_default(),
            members,
        )?;
        self.text_with_alarms(row, sender, alarms)
    }

    /// A TEXT message whose alarms were built before its id was known ([`Self::alarms`]).
    pub(crate) fn text_with_alarms(
        &mut self,
        row: &MessageRow,
        sender: Option<&SenderRow>,
        alarms: Vec<Outgoing>,
    ) -> Result<(), ChatError> {
        let first = self.out.len();
        self.out.push(ops::message_push(&ChatMessageDto::build(
            self.links,
            row,
            sender,
            &[],
        ))?);
        self.push_alarms(row.id, alarms);
        if let Some(trace) = self.trace.take() {
            for o in &mut self.out[first..] {
                o.envelope
                    .headers
                    .push((broker_bridge::trace::TRACEPARENT.to_owned(), trace.clone()));
            }
        }
        Ok(())
    }

    /// Adds a message's `CHAT` alarms, each marked with the message's id so that a gateway
    /// delivers it once however often it is published.
    fn push_alarms(&mut self, id: i64, alarms: Vec<Outgoing>) {
        let id = id.to_string();
        self.out.extend(
            alarms
                .into_iter()
                .map(|a| a.with_header(crate::chat::MESSAGE_ID_HEADER, &id)),
        );
    }

    /// A message of files: its broadcast with `attachments`, then `summary` as the `CHAT` alarm
    /// of each of `members`.
    pub(crate) fn files(
        &mut self,
        row: &MessageRow,
        sender: Option<&SenderRow>,
        attachments: &[&AttachmentRow],
        summary: &str,
        members: &[String],
    ) -> Result<(), ChatError> {
        self.out.push(ops::message_push(&ChatMessageDto::build(
            self.links,
            row,
            sender,
            attachments,
        ))?);
        let alarms = Self::alarms(row.create_at, row.chatroom_id, summary, members)?;
        self.push_alarms(row.id, alarms);
        Ok(())
    }

    /// The `CHAT` alarms of a message sent at `at` in `room` saying `text`, one per member.
    pub(crate) fn alarms(
        at: i64,
        room: i64,
        text: &str,
        members: &[String],
    ) -> Result<Vec<Outgoing>, ChatError> {
        members
            .iter()
            .map(|m| {
                ops::alarm(
                    m,
                    &ChatAlarm::Chat {
                        create_at: at,
                        chat_room_id: room,
                        message: text.to_owned(),
                    },
                )
            })
            .collect()
    }

    /// The pushes, in order.
    pub(crate) fn into_vec(self) -> Vec<Outgoing> {
        self.out
    }
}

/// The outbox row naming a batch's messages.
pub(super) fn batch_row(body: &'static [u8]) -> NewOutbox<'static> {
    NewOutbox {
        target: MESSAGES_TARGET,
        destination: "/topic/chat",
        content_type: Some("application/json"),
        headers: None,
        body,
    }
}

/// Scripts the insert of a batch's messages (ids `step` apart, [`InsertedIds::Consecutive`])
/// and its outbox row naming them: results `messages` and `outbox`.
pub(super) fn script_messages_with_row(
    script: &mut Script,
    d: crate::store::Dialect,
    rows: &[NewMessage<'_>],
    now: i64,
    step: i64,
    messages: i64,
    outbox: i64,
) {
    let how = InsertedIds::Consecutive(step);
    sql::script_insert_messages(script, d, rows, now, how, messages);
    sql::script_batch_outbox_insert(script, d, &batch_row(b""), rows.len(), step, now, outbox);
}

/// The rows to insert for the accepted sends of a batch.
pub(super) fn new_messages<'a>(batch: &'a [Request], accepted: &[usize]) -> Vec<NewMessage<'a>> {
    accepted
        .iter()
        .map(|&i| NewMessage {
            room: batch[i].room,
            sender: &batch[i].sender,
            message: &batch[i].text,
            kind: dto::TEXT,
            command: batch[i].command.as_deref(),
        })
        .collect()
}

/// The stored row of a send written with id `id` at `at`.
pub(super) fn message_row(req: &Request, id: i64, at: i64) -> MessageRow {
    MessageRow {
        id,
        chatroom_id: req.room,
        sender_id: req.sender.clone(),
        message: Some(req.text.clone()),
        create_at: at,
        kind: dto::TEXT.to_owned(),
    }
}

/// The batch's outbox row id from a committed script. A missing id only leaves the row to the
/// sweeper (whose re-sends the gateway drops by message id), never a reason to write again.
pub(super) fn outbox_row_id(result: &crate::store::script::Rows, k: i64) -> Option<i64> {
    sql::inserted_row_id(result, k)
        .inspect_err(|e| tracing::warn!(error = %e, "no id for a chat batch's outbox row"))
        .ok()
}

/// The message ids a batch's outbox row names: a JSON array of ids, or
/// `{"first":…,"count":…,"step":…}` for consecutive ones (written by the database, see
/// [`sql::script_batch_outbox_insert`]). `None` for anything else, or more than a batch holds.
pub(crate) fn batch_ids(body: &[u8]) -> Option<Vec<i64>> {
    #[derive(serde::Deserialize)]
    struct Range {
        first: i64,
        count: usize,
        step: i64,
    }
    if let Ok(ids) = serde_json::from_slice::<Vec<i64>>(body) {
        return Some(ids);
    }
    let r: Range = serde_json::from_slice(body).ok()?;
    if r.count > MAX_BATCH || r.step < 1 {
        return None;
    }
    let count = i64::try_from(r.count).ok()?;
    (0..count)
        .map(|i| r.step.checked_mul(i).and_then(|d| r.first.checked_add(d)))
        .collect()
}

/// Rebuilds the pushes of [`MESSAGES_TARGET`] outbox rows for the sweeper.
#[derive(Debug)]
pub struct MessagesRebuild {
    store: crate::store::Store,
    links: crate::media::Links,
}

impl MessagesRebuild {
    /// Rebuilds from `ctx`'s store, rendering media with its links.
    #[must_use]
    pub fn new(ctx: &Ctx) -> Self {
        Self {
            store: ctx.store.clone(),
            links: ctx.media.links().clone(),
        }
    }
}

#[async_trait::async_trait]
impl outbox::Rebuild for MessagesRebuild {
    async fn rebuild(&self, body: &[u8]) -> StoreResult<Option<Vec<Outgoing>>> {
        rebuild(&self.store, &self.links, body).await
    }
}

/// The pushes of an outbox row written by a batch (its body: the message ids), rebuilt from the
/// store for the sweeper. Messages deleted since (their room was deleted) are skipped.
async fn rebuild(
    store: &crate::store::Store,
    links: &crate::media::Links,
    body: &[u8],
) -> StoreResult<Option<Vec<Outgoing>>> {
    let Some(ids) = batch_ids(body) else {
        return Ok(None);
    };
    let rows = store.chat_messages_by_ids(&ids).await?;
    let mut rooms: Vec<i64> = rows.iter().map(|r| r.chatroom_id).collect();
    rooms.sort_unstable();
    rooms.dedup();
    let mut members: HashMap<i64, Vec<String>> = HashMap::new();
    for p in store.chat_members_of(&rooms).await? {
        if p.is_hidden == 0 {
            members.entry(p.chatroom_id).or_default().push(p.user_id);
        }
    }
    let mut sender_ids: Vec<String> = rows.iter().map(|r| r.sender_id.clone()).collect();
    sender_ids.sort_unstable();
    sender_ids.dedup();
    let senders: HashMap<String, SenderRow> = store
        .chat_users(&sender_ids)
        .await?
        .into_iter()
        .map(|s| (s.id.clone(), s))
        .collect();
    let mut pushes = MessagePushes::with_capacity(links, rows.len() * 3);
    for row in &rows {
        let m = members
            .get(&row.chatroom_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if pushes.text(row, senders.get(&row.sender_id), m).is_err() {
            return Err(StoreError::Db(sqlx::Error::Protocol(
                "could not serialise a chat push".to_owned(),
            )));
        }
    }
    Ok(Some(pushes.into_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_rows_name_their_messages_as_a_list_or_a_range() {
        assert_eq!(batch_ids(b"[3,5,9]"), Some(vec![3, 5, 9]));
        assert_eq!(
            batch_ids(br#"{"first":10,"count":3,"step":2}"#),
            Some(vec![10, 12, 14])
        );
        assert_eq!(
            batch_ids(br#"{"first":10,"count":1,"step":1}"#),
            Some(vec![10])
        );
        // More than a batch holds, a step that is not positive, overflow, junk: refused.
        assert_eq!(batch_ids(br#"{"first":1,"count":100000,"step":1}"#), None);
        assert_eq!(batch_ids(br#"{"first":1,"count":2,"step":0}"#), None);
        assert_eq!(
            batch_ids(format!(r#"{{"first":{},"count":2,"step":1}}"#, i64::MAX).as_bytes()),
            None
        );
        assert_eq!(batch_ids(b"{}"), None);
        assert_eq!(batch_ids(b"not json"), None);
    }
}
