//! The fast path: a batch written from the participants the writer remembers ([`KnownRooms`]),
//! in one script, committed only if every room still has the membership version remembered.

use std::collections::HashMap;
use std::task::Poll;

use super::pushes::{
    MessagePushes, message_row, new_messages, outbox_row_id, script_messages_with_row,
};
use super::{BatchWrite, Written};
use crate::chat::ChatError;
use crate::outbox::{self, Outgoing};
use crate::store::chat::{self as sql, InsertedIds, SenderRow};
use crate::store::script::Script;
use crate::time::now_micros;

/// A room's participants as a writer last read them, with the room's membership version at that
/// read. Every change of a room's participants adds 1 to the version in its own transaction
/// (`store::chat::members_changed`), so while the locked room row still shows this version, the
/// participants are still these, whichever process changed them.
#[derive(Debug, Clone)]
pub(super) struct KnownRoom {
    pub(super) version: i64,
    pub(super) direct: bool,
    /// Visible participants, by id.
    pub(super) members: Vec<String>,
    /// Whether any participant is hidden (a DM's come back on the next message, which only the
    /// full path does).
    pub(super) any_hidden: bool,
}

/// Rooms a writer remembers at most; past that it forgets them all and reads them again as
/// they come (about 100 bytes and a few ids each).
const KNOWN_ROOMS: usize = 65_536;

/// The rooms a writer remembers ([`KnownRoom`]).
#[derive(Debug, Default)]
pub(super) struct KnownRooms(pub(super) HashMap<i64, KnownRoom>);

impl KnownRooms {
    /// Whether every room of a batch is known and none needs the full path.
    pub(super) fn cover(&self, rooms: &[i64]) -> bool {
        rooms
            .iter()
            .all(|r| self.0.get(r).is_some_and(|k| !(k.direct && k.any_hidden)))
    }

    pub(super) fn remember(&mut self, room: i64, known: KnownRoom) {
        if self.0.len() >= KNOWN_ROOMS && !self.0.contains_key(&room) {
            self.0.clear();
        }
        self.0.insert(room, known);
    }

    pub(super) fn forget(&mut self, room: i64) {
        self.0.remove(&room);
    }
}

/// What [`write_known`] did.
pub(super) enum Known {
    /// Committed.
    Written(Written),
    /// Nothing: the remembered participants accept none of the sends (nothing was sent).
    NoneAccepted,
    /// Rolled back: a room is gone or its membership version changed.
    Changed,
}

impl BatchWrite<'_> {
    /// [`write`] from the participants the writer remembers, in one script: begin; clean up earlier
    /// batches' outbox rows; lock the rooms, reading their membership versions; read the senders'
    /// display fields; insert the messages; the batch's outbox row. Then `COMMIT` if every room is
    /// there with the version remembered, or `ROLLBACK` if not.
    pub(super) async fn write_known(
        &self,
        tx: &mut crate::store::ScriptTx,
        known: &KnownRooms,
        step: i64,
    ) -> Result<Known, ChatError> {
        const ROOMS: i64 = 1;
        const SENDERS: i64 = 2;
        const MESSAGES: i64 = 3;
        const OUTBOX: i64 = 4;
        const CHECK: i64 = 5;
        let d = self.ctx.store.dialect();
        let how = InsertedIds::Consecutive(step);
        let mut answers: Vec<Result<i64, ChatError>> = Vec::with_capacity(self.sends.len());
        let mut accepted: Vec<usize> = Vec::with_capacity(self.sends.len());
        for (i, req) in self.sends.iter().enumerate() {
            if known
                .0
                .get(&req.room)
                .is_some_and(|k| k.members.contains(&req.sender))
            {
                answers.push(Ok(0));
                accepted.push(i);
            } else {
                answers.push(Err(ChatError::Refused("not a member")));
            }
        }
        if accepted.is_empty() {
            return Ok(Known::NoneAccepted);
        }
        let mut sender_ids: Vec<&str> = accepted
            .iter()
            .map(|&i| self.sends[i].sender.as_str())
            .collect();
        sender_ids.sort_unstable();
        sender_ids.dedup();
        let now = now_micros();
        let rows = new_messages(self.sends, &accepted);

        let expected: Vec<(i64, i64)> = self
            .rooms
            .iter()
            .filter_map(|r| known.0.get(r).map(|k| (*r, k.version)))
            .collect();

        let t0 = std::time::Instant::now();
        let mut script = Script::new(d);
        script.sql(tx.begin()).end();
        sql::script_outbox_delete(&mut script, self.delivered_rows);
        sql::script_lock_rooms(&mut script, d, self.rooms, ROOMS);
        // MySQL: the versions are compared by the server, which stops the script before the inserts
        // when one differs, so the script can end with the commit (one round trip for the batch).
        let checked = sql::script_check_versions(&mut script, d, &expected, CHECK);
        sql::script_users(&mut script, &sender_ids, SENDERS);
        script_messages_with_row(&mut script, d, &rows, now, step, MESSAGES, OUTBOX);
        if checked {
            script.sql("COMMIT").end();
        }
        let (ran, alarms) = {
            let run = script.run(tx.conn()?);
            tokio::pin!(run);
            // The first poll sends the script. The `CHAT` alarms need neither the ids nor the
            // senders' names, so they are built while the database works on it.
            let first = std::future::poll_fn(|cx| Poll::Ready(run.as_mut().poll(cx))).await;
            // No early return before the reply: the script may commit.
            let alarms: Result<Vec<Vec<Outgoing>>, ChatError> = accepted
                .iter()
                .map(|&i| {
                    let req = &self.sends[i];
                    let members = known
                        .0
                        .get(&req.room)
                        .map(|k| k.members.as_slice())
                        .unwrap_or_default();
                    MessagePushes::alarms(now, req.room, &req.text, members)
                })
                .collect();
            let ran = match first {
                Poll::Ready(ran) => ran,
                Poll::Pending => run.await,
            };
            (ran, alarms)
        };
        let result = match ran {
            Ok(result) => result,
            Err(e) if checked && sql::is_stale_rooms(&e) => {
                tx.rollback().await?;
                return Ok(Known::Changed);
            }
            Err(e) => return Err(e.into()),
        };
        let written_us = t0.elapsed().as_micros();
        if checked {
            tx.committed();
        } else {
            let locked = sql::locked_rooms(&result, ROOMS)?;
            let current = locked.len() == self.rooms.len()
                && locked.iter().all(|r| {
                    known
                        .0
                        .get(&r.id)
                        .is_some_and(|k| k.version == r.member_version)
                });
            if !current {
                tx.rollback().await?;
                return Ok(Known::Changed);
            }
        }
        let outbox_row = outbox_row_id(&result, OUTBOX);
        let read = sql::user_rows(&result, SENDERS)
            .and_then(|senders| {
                let ids = sql::inserted_message_ids(&result, d, &rows, how, MESSAGES)?;
                Ok((senders, ids))
            })
            .map_err(ChatError::from)
            .and_then(|(senders, ids)| Ok((senders, ids, alarms?)));
        let (senders, ids, alarms) = match read {
            Ok(read) => read,
            Err(e) if tx.is_committed() => {
                // Committed, so never written again: the sweeper publishes the batch from its
                // outbox row.
                tracing::error!(error = %e, "a committed chat batch's rows did not come back");
                for &i in &accepted {
                    answers[i] = Err(ChatError::Refused("stored; delivered by the outbox"));
                }
                return Ok(Known::Written(Written {
                    unhidden: outbox::Staged::default(),
                    outbox_row: None,
                    pushes: Vec::new(),
                    answers,
                }));
            }
            Err(e) => return Err(e),
        };
        let senders: HashMap<String, SenderRow> =
            senders.into_iter().map(|u| (u.id.clone(), u)).collect();
        drop(result);
        if !tx.is_committed() {
            tx.commit_with(&mut Script::new(d)).await?;
        }
        tracing::trace!(
            written_us,
            committed_us = t0.elapsed().as_micros(),
            one_trip = checked,
            "chat batch steps (remembered participants)"
        );

        let mut pushes = MessagePushes::with_capacity(self.ctx.media.links(), accepted.len() * 3);
        for ((&i, &id), alarms) in accepted.iter().zip(&ids).zip(alarms) {
            answers[i] = Ok(id);
            let req = &self.sends[i];
            pushes.trace_next(req.trace.as_deref());
            pushes.text_with_alarms(
                &message_row(req, id, now),
                senders.get(&req.sender),
                alarms,
            )?;
        }
        let pushes = pushes.into_vec();
        Ok(Known::Written(Written {
            unhidden: outbox::Staged::default(),
            outbox_row,
            pushes,
            answers,
        }))
    }
}
