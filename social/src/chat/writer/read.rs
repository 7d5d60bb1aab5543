//! The full path: a batch that reads its rooms' participants first (two round trips, three when
//! the inserted ids must be read back), brings back hidden DM participants, and remembers the
//! participants for the next batches.

use std::collections::HashMap;

use super::known::{KnownRoom, KnownRooms};
use super::pushes::{
    MessagePushes, batch_row, message_row, new_messages, outbox_row_id, script_messages_with_row,
};
use super::{BatchWrite, Written};
use crate::chat::ChatError;
use crate::chat::dto::ChatAlarm;
use crate::outbox::{self, Outgoing};
use crate::store::chat::{self as sql, DIRECT, InsertedIds, NewOutbox, SenderRow};
use crate::store::script::Script;
use crate::time::now_micros;

/// Members (visible participants) per room after bringing back hidden DM participants.
struct RoomState {
    direct: bool,
    members: Vec<String>,
    hidden: Vec<String>,
}

impl BatchWrite<'_> {
    /// [`write`] reading the rooms' participants (two round trips, see the module docs), and
    /// remembering them for the next batches.
    pub(super) async fn write_read(
        &self,
        tx: &mut crate::store::ScriptTx,
        how: InsertedIds,
        known: &mut KnownRooms,
    ) -> Result<Written, ChatError> {
        const ROOMS: i64 = 1;
        const MEMBERS: i64 = 2;
        const MESSAGES: i64 = 3;
        const OUTBOX: i64 = 4;
        let d = self.ctx.store.dialect();
        let t0 = std::time::Instant::now();

        // Round trip 1: begin, clean up earlier batches' outbox rows, lock the rooms, read members.
        let mut script = Script::new(d);
        script.sql(tx.begin()).end();
        sql::script_outbox_delete(&mut script, self.delivered_rows);
        sql::script_lock_rooms(&mut script, d, self.rooms, ROOMS);
        sql::script_members_of(&mut script, self.rooms, MEMBERS);
        let result = script.run(tx.conn()?).await?;
        let locked_us = t0.elapsed().as_micros();
        let locked = sql::locked_rooms(&result, ROOMS)?;
        let mut state: HashMap<i64, RoomState> = locked
            .iter()
            .map(|r| {
                (
                    r.id,
                    RoomState {
                        direct: r.kind == DIRECT,
                        members: Vec::new(),
                        hidden: Vec::new(),
                    },
                )
            })
            .collect();
        // Senders are members, so the members' display fields are the senders'.
        let mut senders: HashMap<String, SenderRow> = HashMap::new();
        for p in sql::members_rows(&result, MEMBERS)? {
            if let Some(s) = state.get_mut(&p.chatroom_id) {
                if p.is_hidden == 0 {
                    senders
                        .entry(p.user_id.clone())
                        .or_insert_with(|| SenderRow {
                            id: p.user_id.clone(),
                            name: p.name,
                            profile_image: p.profile_image,
                        });
                    s.members.push(p.user_id);
                } else {
                    s.hidden.push(p.user_id);
                }
            }
        }
        drop(result);
        // Remembered as read (the locks make these the participants at this version); a DM brought
        // back below changes its version, so the next batch reads it again.
        for r in &locked {
            if let Some(st) = state.get(&r.id) {
                known.remember(
                    r.id,
                    KnownRoom {
                        version: r.member_version,
                        direct: st.direct,
                        members: st.members.clone(),
                        any_hidden: !st.hidden.is_empty(),
                    },
                );
            }
        }

        let now = now_micros();
        let mut answers: Vec<Result<i64, ChatError>> = Vec::with_capacity(self.sends.len());
        let mut accepted: Vec<usize> = Vec::with_capacity(self.sends.len());
        let mut unhide_pushes = Vec::new();
        for (i, req) in self.sends.iter().enumerate() {
            let Some(s) = state.get_mut(&req.room) else {
                answers.push(Err(ChatError::Refused("no such room")));
                continue;
            };
            if !s.members.contains(&req.sender) {
                answers.push(Err(ChatError::Refused("not a member")));
                continue;
            }
            if s.direct && !s.hidden.is_empty() {
                // A DM comes back for whoever hid it when a message arrives (rare: statements of
                // their own).
                for user in std::mem::take(&mut s.hidden) {
                    sql::set_hidden(tx.conn()?, req.room, &user, false).await?;
                    unhide_pushes.push(Outgoing::user(
                        &user,
                        "notify",
                        &ChatAlarm::CreateRoom { create_at: now },
                    )?);
                    s.members.push(user);
                }
            }
            answers.push(Ok(0));
            accepted.push(i);
        }
        let unhidden = outbox::stage(tx.conn()?, unhide_pushes, now).await?;

        // Round trip 2: the messages, the batch's outbox row and the commit.
        let rows = new_messages(self.sends, &accepted);
        let mut script = Script::new(d);
        let mut outbox_row = None;
        let ids = match how {
            _ if rows.is_empty() => {
                // Everything refused: nothing to store but the clean-up.
                tx.commit_with(&mut script).await?;
                return Ok(Written {
                    unhidden,
                    outbox_row: None,
                    pushes: Vec::new(),
                    answers,
                });
            }
            InsertedIds::Consecutive(step) => {
                // Consecutive ids: the outbox row's body is computed from the insert's id, so the
                // row and the commit go in this round trip too.
                script_messages_with_row(&mut script, d, &rows, now, step, MESSAGES, OUTBOX);
                let result = tx.commit_with(&mut script).await?;
                outbox_row = outbox_row_id(&result, OUTBOX);
                match sql::inserted_message_ids(&result, d, &rows, how, MESSAGES) {
                    Ok(ids) => ids,
                    Err(e) => {
                        // Committed, so never written again: the sweeper publishes the batch from
                        // its outbox row.
                        tracing::error!(error = %e, "a committed chat batch's ids did not come back");
                        for &i in &accepted {
                            answers[i] = Err(ChatError::Refused("stored; delivered by the outbox"));
                        }
                        return Ok(Written {
                            unhidden,
                            outbox_row: None,
                            pushes: Vec::new(),
                            answers,
                        });
                    }
                }
            }
            InsertedIds::ReadBack => {
                sql::script_insert_messages(&mut script, d, &rows, now, how, MESSAGES);
                let result = script.run(tx.conn()?).await?;
                sql::inserted_message_ids(&result, d, &rows, how, MESSAGES)?
            }
        };
        let inserted_us = t0.elapsed().as_micros();

        let mut pushes = MessagePushes::with_capacity(self.ctx.media.links(), accepted.len() * 3);
        for (&i, &id) in accepted.iter().zip(&ids) {
            let req = &self.sends[i];
            answers[i] = Ok(id);
            let members = state
                .get(&req.room)
                .map(|s| s.members.as_slice())
                .unwrap_or_default();
            pushes.trace_next(req.trace.as_deref());
            pushes.text(
                &message_row(req, id, now),
                senders.get(&req.sender),
                members,
            )?;
        }
        let pushes = pushes.into_vec();

        if !tx.is_committed() {
            // Round trip 3 (ids read back): the batch's outbox row naming them, and the commit.
            let body = serde_json::to_vec(&ids)?;
            let mut script = Script::new(d);
            sql::script_outbox_insert(
                &mut script,
                d,
                &NewOutbox {
                    body: &body,
                    ..batch_row(b"")
                },
                now,
                OUTBOX,
            );
            let result = tx.commit_with(&mut script).await?;
            outbox_row = outbox_row_id(&result, OUTBOX);
        }
        tracing::trace!(
            locked_us,
            inserted_us,
            committed_us = t0.elapsed().as_micros(),
            "chat batch steps"
        );
        Ok(Written {
            unhidden,
            outbox_row,
            pushes,
            answers,
        })
    }
}
