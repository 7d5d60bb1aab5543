//! Group commit for `/app/send`: the text messages sent at the same time are written together.
//!
//! One `/app/send` costs about nine statements and a commit (flushed to disk) when written alone.
//! Under load that, not the bus, limits the messages per second, so sends are queued to a writer
//! task that takes everything queued (up to [`MAX_BATCH`]) and writes it in one transaction:
//!
//! 1. the outbox rows of earlier batches that were delivered are deleted, once
//!    [`CLEANUP_ROWS`] of them have gathered (the clean-up rides on a later transaction instead
//!    of costing one of its own; when no send has come for [`CLEANUP_IDLE`] it runs on its own,
//!    well before the sweeper would take the rows for undelivered);
//! 2. the batch's rooms are locked (one statement, rows in id order, reading each room's
//!    membership version) and their participants read with their display fields (one statement;
//!    senders are members, so this gives the senders'), unless the writer remembers every room's
//!    participants from an earlier batch ([`KnownRoom`]): then only the senders' display fields
//!    are read, and the batch commits only if every room still has the version remembered;
//! 3. each send is checked as [`super::ops::send_text`] checks it (room exists, sender is a
//!    member); refused ones are answered and left out; a hidden DM participant is brought back
//!    with its `CREATE_ROOM` push staged in the outbox;
//! 4. the messages are inserted with one statement (the room list reads its previews from the
//!    messages, so nothing of the room is written);
//! 5. one outbox row names the batch's message ids (`target` = [`MESSAGES_TARGET`]), so a crash or
//!    a bus outage after the commit leaves the pushes to the sweeper, which rebuilds them from
//!    the stored messages;
//! 6. commit (on MySQL in the same script as the rest when every room is remembered: the server
//!    compares the versions, [`sql::script_check_versions`]), then each message's
//!    `/topic/chat.{id}` broadcast and its `CHAT` alarms are published (in order per
//!    destination, destinations concurrently: [`outbox::Outbox::publish_all`]), and every sender is
//!    answered with its message id.
//!
//! The rooms' process locks ([`super::room_locks`]) are held from before the transaction until the
//! pushes are published, as for every other chat write, so a room's broadcasts leave in id order.
//! Sends are sharded over the writers by room, which keeps one room's messages in arrival order.
//! A batch whose transaction fails is retried one send at a time through
//! [`super::ops::send_text`], so one bad send cannot fail the others.
//!
//! **Linger** (the setting `chat_batch_linger_us`, off by default). With a linger, a writer
//! starts a batch at most once per linger, counted from the start of the batch before: while
//! sends keep coming, the next batch waits out the rest of that time (to the runtime timer's next
//! millisecond tick) unless [`LINGER_SKIP`] sends are queued already; a send to a writer idle for
//! the linger or longer is written at once. Without it a writer that finishes a batch in 0.8 ms
//! starts the next at once with whatever arrived meanwhile: at 10,000 msg/s about 900 small
//! transactions a second instead of about 650 larger ones with 1 ms. On a database that flushes
//! pages during the load that lowered p99; on one that does not, it raised p50 by about 1 ms
//! and rarely lowered p99 (docs/benchmarks.md), hence off by default.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use sqlx::Any;
use sqlx::pool::PoolConnection;
use tokio::sync::{mpsc, oneshot};

use super::dto::{self, ChatAlarm};
use super::{ChatError, MAX_MESSAGE_CHARS, ops, room_locks};
use crate::ctx::Ctx;
use crate::media::Links;
use crate::outbox::{self, Outgoing};
use crate::store::chat::{
    self as sql, DIRECT, InsertedIds, MessageRow, NewMessage, NewOutbox, SenderRow,
};
use crate::store::script::Script;
use crate::store::{StoreError, StoreResult};
use crate::time::now_micros;

/// Most sends written in one transaction.
pub const MAX_BATCH: usize = 256;
/// The least time from the start of one batch to the start of the next by default: none (see
/// the module docs).
pub const DEFAULT_LINGER: std::time::Duration = std::time::Duration::ZERO;
/// The longest linger accepted.
pub const MAX_LINGER: std::time::Duration = std::time::Duration::from_millis(100);
/// Sends queued at which the next batch starts without lingering.
pub const LINGER_SKIP: usize = 64;
/// A batch taking this long to commit is logged as a warning.
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(100);
/// Delivered batches' outbox rows gathered before a batch deletes them (one `DELETE` per this
/// many batches rather than one per batch).
pub const CLEANUP_ROWS: usize = 32;
/// A writer with delivered rows left and no send for this long deletes them on its own. Far below
/// [`outbox::SWEEP_GRACE`], so the sweeper never sees them.
pub const CLEANUP_IDLE: std::time::Duration = std::time::Duration::from_millis(200);
/// Sends queued per writer before `/app/send` handlers wait.
const QUEUE: usize = 4096;
/// `outbox.target` of a row naming a batch of TEXT messages (its body: their ids, a JSON array)
/// whose broadcasts and `CHAT` alarms are still to be published.
pub const MESSAGES_TARGET: &str = "messages";

/// Counters of the writers, for metrics and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Messages written by them.
    pub messages: AtomicU64,
    /// Sends refused (not a member, no such room).
    pub refused: AtomicU64,
    /// Batches whose transaction failed and were retried one send at a time.
    pub fallbacks: AtomicU64,
    /// Batches written from the participants the writer remembered (no participant read).
    pub known_batches: AtomicU64,
    /// Statements that deleted delivered batches' outbox rows (riding on a batch, or on their own
    /// after an idle spell).
    pub cleanups: AtomicU64,
    /// Batches that found a remembered room changed, rolled back and were written again after
    /// reading its participants.
    pub stale_batches: AtomicU64,
    /// Time the committed batches took from their first statement to their commit, µs.
    pub commit_micros: AtomicU64,
    /// Time the oldest send of each committed batch had waited in the queue, µs.
    pub wait_micros: AtomicU64,
}

/// The counters of every writer started on one context ([`crate::app`] keeps one per context
/// and shows it on `/metrics`).
#[derive(Debug, Default, Clone)]
pub struct WriterStatsList(Arc<std::sync::Mutex<Vec<Arc<WriterStats>>>>);

impl WriterStatsList {
    fn add(&self, stats: Arc<WriterStats>) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(stats);
    }
}

impl crate::ctx::MetricsSource for WriterStatsList {
    fn write_metrics(&self, out: &mut String) {
        let writers = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        metrics_text(&writers, out);
    }
}

/// Appends the counters of `writers`, summed, to `out` in the Prometheus text format.
fn metrics_text(writers: &[Arc<WriterStats>], out: &mut String) {
    use std::fmt::Write as _;
    let sum = |field: fn(&WriterStats) -> &AtomicU64| -> u64 {
        writers
            .iter()
            .map(|w| field(w).load(Ordering::Relaxed))
            .sum()
    };
    let batches = sum(|w| &w.batches);
    let counters: [(&str, &str, u64); 7] = [
        (
            "chat_batches_total",
            "Transactions committed by the chat send writers.",
            batches,
        ),
        (
            "chat_messages_total",
            "Chat messages stored and published by the send writers.",
            sum(|w| &w.messages),
        ),
        (
            "chat_sends_refused_total",
            "Sends the writers refused (not a member, no such room).",
            sum(|w| &w.refused),
        ),
        (
            "chat_batch_fallbacks_total",
            "Batches whose transaction failed and were sent again one message at a time.",
            sum(|w| &w.fallbacks),
        ),
        (
            "chat_batches_remembered_total",
            "Batches written from remembered participants (no participant read).",
            sum(|w| &w.known_batches),
        ),
        (
            "chat_batches_stale_total",
            "Batches that found a remembered room changed and were written again.",
            sum(|w| &w.stale_batches),
        ),
        (
            "chat_outbox_cleanups_total",
            "Statements that deleted delivered batches' outbox rows.",
            sum(|w| &w.cleanups),
        ),
    ];
    for (name, help, value) in counters {
        crate::ctx::write_counter(out, name, help, value);
    }
    #[allow(clippy::cast_precision_loss)]
    let seconds = |us: u64| us as f64 / 1e6;
    for (name, help, sum) in [
        (
            "chat_batch_commit_seconds",
            "Time from a batch's first statement to its commit.",
            sum(|w| &w.commit_micros),
        ),
        (
            "chat_batch_wait_seconds",
            "Time the oldest send of a batch waited in the writer's queue.",
            sum(|w| &w.wait_micros),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP instar_{name} {help}\n# TYPE instar_{name} summary\n\
             instar_{name}_sum {}\ninstar_{name}_count {batches}",
            seconds(sum),
        );
    }
}

/// The queue in front of the writers.
#[derive(Debug, Clone)]
pub struct SendWriter {
    shards: Arc<[mpsc::Sender<Request>]>,
    stats: Arc<WriterStats>,
}

#[derive(Debug)]
struct Request {
    sender: String,
    room: i64,
    text: String,
    reply: oneshot::Sender<Result<i64, ChatError>>,
    /// When it was queued (the batch log reports its oldest send's wait).
    queued: std::time::Instant,
}

impl SendWriter {
    /// Starts `writers` writer tasks (at least one) on the current Tokio runtime, with the
    /// [`DEFAULT_LINGER`]; `None` without a runtime. They stop when every handle is dropped.
    pub fn start(ctx: &Ctx, writers: usize) -> Option<SendWriter> {
        Self::start_with(ctx, writers, DEFAULT_LINGER)
    }

    /// [`SendWriter::start`] with another linger (zero: none; at most [`MAX_LINGER`]).
    pub fn start_with(
        ctx: &Ctx,
        writers: usize,
        linger: std::time::Duration,
    ) -> Option<SendWriter> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let stats = Arc::new(WriterStats::default());
        if let Some(list) = ctx.extension::<WriterStatsList>() {
            list.add(Arc::clone(&stats));
        }
        let linger = linger.min(MAX_LINGER);
        let shards: Vec<_> = (0..writers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(QUEUE);
                rt.spawn(run(ctx.clone(), rx, Arc::clone(&stats), linger));
                tx
            })
            .collect();
        Some(SendWriter {
            shards: shards.into(),
            stats,
        })
    }

    /// The writers' counters.
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Stores a TEXT message from `sender` in `room` and broadcasts it, like
    /// [`ops::send_text`], batched with the other sends of the moment. Returns its id.
    pub async fn send(&self, sender: &str, room: i64, text: &str) -> Result<i64, ChatError> {
        self.enqueue(sender, room, text).await?.await
    }

    /// Queues a send (waiting while the writer's queue is full) and returns the future of its
    /// answer. Sends queued one after another are written, and their broadcasts published, in
    /// that order when they are for the same room.
    pub async fn enqueue(
        &self,
        sender: &str,
        room: i64,
        text: &str,
    ) -> Result<impl Future<Output = Result<i64, ChatError>> + Send + 'static, ChatError> {
        check_text(text)?;
        let n = i64::try_from(self.shards.len()).unwrap_or(1);
        let shard = usize::try_from(room.rem_euclid(n)).unwrap_or(0);
        let (reply, answer) = oneshot::channel();
        let req = Request {
            sender: sender.to_owned(),
            room,
            text: text.to_owned(),
            reply,
            queued: std::time::Instant::now(),
        };
        if self.shards[shard].send(req).await.is_err() {
            return Err(ChatError::Refused("the chat writer has stopped"));
        }
        Ok(async move {
            answer
                .await
                .unwrap_or(Err(ChatError::Refused("the chat writer has stopped")))
        })
    }
}

fn micros_u64(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The checks that need no database.
pub(crate) fn check_text(text: &str) -> Result<(), ChatError> {
    if text.trim().is_empty() {
        return Err(ChatError::Refused("empty message"));
    }
    if text.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ChatError::Refused("message too long"));
    }
    Ok(())
}

async fn run(
    ctx: Ctx,
    mut rx: mpsc::Receiver<Request>,
    stats: Arc<WriterStats>,
    linger: std::time::Duration,
) {
    let mut delivered_rows: Vec<i64> = Vec::new();
    // How the ids of a multi-row insert are found, asked of the server once.
    let mut inserted_ids: Option<InsertedIds> = None;
    let mut known = KnownRooms::default();
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    // The connection of the last batch, kept for the next while sends keep coming (given back to
    // the pool when the queue runs dry, and dropped with a transaction that failed).
    let mut kept: Option<PoolConnection<Any>> = None;
    // When the batch before started (`None`: no batch yet).
    let mut last_start: Option<tokio::time::Instant> = None;
    loop {
        if let Some(at) = last_start.map(|t| t + linger)
            && !linger.is_zero()
            && rx.len() < LINGER_SKIP
            && at > tokio::time::Instant::now()
        {
            tokio::time::sleep_until(at).await;
        }
        if !delivered_rows.is_empty() && rx.is_empty() {
            match tokio::time::timeout(CLEANUP_IDLE, rx.recv_many(&mut batch, MAX_BATCH)).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => {
                    // Idle: the rows go now, on a connection of their own.
                    if ctx.store.outbox_remove(&delivered_rows).await.is_ok() {
                        delivered_rows.clear();
                        stats.cleanups.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
            }
        } else if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            break;
        }
        last_start = Some(tokio::time::Instant::now());
        write_and_publish(
            &ctx,
            std::mem::take(&mut batch),
            &mut kept,
            &mut delivered_rows,
            &mut inserted_ids,
            &mut known,
            &stats,
        )
        .await;
        if rx.is_empty() {
            kept = None;
        }
    }
    if !delivered_rows.is_empty() {
        let _ = ctx.store.outbox_remove(&delivered_rows).await;
    }
}

/// What one committed batch publishes.
struct Written {
    /// `CREATE_ROOM` pushes of DMs brought back, staged in the outbox on their own.
    unhidden: outbox::Staged,
    /// The batch's outbox row (`None`: its id did not come back; the sweeper deletes it).
    outbox_row: Option<i64>,
    /// The messages' pushes, in order.
    pushes: Vec<Outgoing>,
    /// Answers: per request, its message id or why it was refused.
    answers: Vec<Result<i64, ChatError>>,
}

#[allow(clippy::too_many_arguments)]
async fn write_and_publish(
    ctx: &Ctx,
    batch: Vec<Request>,
    kept: &mut Option<PoolConnection<Any>>,
    delivered_rows: &mut Vec<i64>,
    inserted_ids: &mut Option<InsertedIds>,
    known: &mut KnownRooms,
    stats: &WriterStats,
) {
    let mut rooms: Vec<i64> = batch.iter().map(|r| r.room).collect();
    rooms.sort_unstable();
    rooms.dedup();
    let waited = batch
        .iter()
        .map(|r| r.queued.elapsed())
        .max()
        .unwrap_or_default();
    let locks = room_locks(&rooms).await;
    let started = std::time::Instant::now();
    let cleanup = delivered_rows.len() >= CLEANUP_ROWS;
    match write(
        ctx,
        &batch,
        &rooms,
        kept,
        if cleanup { delivered_rows } else { &[] },
        inserted_ids,
        known,
        stats,
    )
    .await
    {
        Ok(written) => {
            let committed = started.elapsed();
            stats
                .commit_micros
                .fetch_add(micros_u64(committed), Ordering::Relaxed);
            stats
                .wait_micros
                .fetch_add(micros_u64(waited), Ordering::Relaxed);
            if cleanup {
                delivered_rows.clear();
                stats.cleanups.fetch_add(1, Ordering::Relaxed);
            }
            stats.batches.fetch_add(1, Ordering::Relaxed);
            ctx.outbox.deliver(written.unhidden).await;
            // A failure leaves the row to the sweeper, which re-sends the batch (the gateway
            // drops the broadcasts already delivered by their message id).
            if ctx.outbox.publish_all(written.pushes).await
                && let Some(row) = written.outbox_row
            {
                delivered_rows.push(row);
            }
            drop(locks);
            if committed >= SLOW_BATCH {
                tracing::warn!(
                    sends = batch.len(),
                    commit_ms = committed.as_millis(),
                    "chat batch slow to commit (every send in it waited that long)"
                );
            }
            tracing::debug!(
                sends = batch.len(),
                rooms = rooms.len(),
                waited_us = waited.as_micros(),
                commit_us = committed.as_micros(),
                total_us = started.elapsed().as_micros(),
                "chat batch written"
            );
            for (req, answer) in batch.into_iter().zip(written.answers) {
                match &answer {
                    Ok(_) => stats.messages.fetch_add(1, Ordering::Relaxed),
                    Err(_) => stats.refused.fetch_add(1, Ordering::Relaxed),
                };
                let _ = req.reply.send(answer);
            }
        }
        Err(e) => {
            drop(locks);
            for room in &rooms {
                known.forget(*room);
            }
            stats.fallbacks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, sends = batch.len(), "batched chat write failed; sending one at a time");
            // The clean-up of earlier batches' rows rolled back with the failed transaction:
            // those were published, so they go now rather than to the sweeper, which would send
            // them again.
            if ctx.store.outbox_remove(delivered_rows).await.is_ok() {
                delivered_rows.clear();
            }
            for req in batch {
                let answer = ops::send_text(ctx, &req.sender, req.room, &req.text).await;
                let _ = req.reply.send(answer);
            }
        }
    }
}

/// Members (visible participants) per room after bringing back hidden DM participants.
struct RoomState {
    direct: bool,
    members: Vec<String>,
    hidden: Vec<String>,
}

/// A room's participants as a writer last read them, with the room's membership version at that
/// read. Every change of a room's participants adds 1 to the version in its own transaction
/// (`store::chat::members_changed`), so while the locked room row still shows this version, the
/// participants are still these, whichever process changed them.
#[derive(Debug, Clone)]
struct KnownRoom {
    version: i64,
    direct: bool,
    /// Visible participants, by id.
    members: Vec<String>,
    /// Whether any participant is hidden (a DM's come back on the next message, which only the
    /// full path does).
    any_hidden: bool,
}

/// Rooms a writer remembers at most; past that it forgets them all and reads them again as
/// they come (about 100 bytes and a few ids each).
const KNOWN_ROOMS: usize = 65_536;

/// The rooms a writer remembers ([`KnownRoom`]).
#[derive(Debug, Default)]
struct KnownRooms(HashMap<i64, KnownRoom>);

impl KnownRooms {
    /// Whether every room of a batch is known and none needs the full path.
    fn cover(&self, rooms: &[i64]) -> bool {
        rooms
            .iter()
            .all(|r| self.0.get(r).is_some_and(|k| !(k.direct && k.any_hidden)))
    }

    fn remember(&mut self, room: i64, known: KnownRoom) {
        if self.0.len() >= KNOWN_ROOMS && !self.0.contains_key(&room) {
            self.0.clear();
        }
        self.0.insert(room, known);
    }

    fn forget(&mut self, room: i64) {
        self.0.remove(&room);
    }
}

/// The outbox row naming a batch's messages.
fn batch_row(body: &'static [u8]) -> NewOutbox<'static> {
    NewOutbox {
        target: MESSAGES_TARGET,
        destination: "/topic/chat",
        content_type: Some("application/json"),
        headers: None,
        body,
    }
}

/// Writes a batch: from what the writer knows of its rooms when it knows them all
/// ([`write_known`]), else (or when one of them changed) reading their participants first.
#[allow(clippy::too_many_arguments)]
async fn write(
    ctx: &Ctx,
    batch: &[Request],
    rooms: &[i64],
    kept: &mut Option<PoolConnection<Any>>,
    delivered_rows: &[i64],
    inserted_ids: &mut Option<InsertedIds>,
    known: &mut KnownRooms,
    stats: &WriterStats,
) -> Result<Written, ChatError> {
    let store = &ctx.store;
    let d = store.dialect();
    let mut tx = store.script_write_on(kept.take()).await?;
    let how = match *inserted_ids {
        Some(how) => how,
        None => *inserted_ids.insert(InsertedIds::probe(tx.conn()?, d).await?),
    };
    if let InsertedIds::Consecutive(step) = how
        && known.cover(rooms)
    {
        match write_known(ctx, &mut tx, batch, rooms, delivered_rows, known, step).await? {
            Known::Written(written) => {
                stats.known_batches.fetch_add(1, Ordering::Relaxed);
                *kept = tx.into_connection();
                return Ok(written);
            }
            // Every send refused by what is remembered: nothing was sent, and the full path
            // below answers each with its reason.
            Known::NoneAccepted => {}
            Known::Changed => {
                // A room's participants changed (or the room went) since they were read:
                // rolled back, and written again below with its participants read afresh.
                stats.stale_batches.fetch_add(1, Ordering::Relaxed);
                for room in rooms {
                    known.forget(*room);
                }
                // Ended first: on SQLite it holds the writer queue the next one waits for.
                tx = store.script_write_on(tx.into_connection()).await?;
            }
        }
    }
    let written = write_read(ctx, &mut tx, batch, rooms, delivered_rows, how, known).await?;
    *kept = tx.into_connection();
    Ok(written)
}

/// What [`write_known`] did.
enum Known {
    /// Committed.
    Written(Written),
    /// Nothing: the remembered participants accept none of the sends (nothing was sent).
    NoneAccepted,
    /// Rolled back: a room is gone or its membership version changed.
    Changed,
}

/// [`write`] from the participants the writer remembers, in one script: begin; clean up earlier
/// batches' outbox rows; lock the rooms, reading their membership versions; read the senders'
/// display fields; insert the messages; the batch's outbox row. Then `COMMIT` if every room is
/// there with the version remembered, or `ROLLBACK` if not.
async fn write_known(
    ctx: &Ctx,
    tx: &mut crate::store::ScriptTx,
    batch: &[Request],
    rooms: &[i64],
    delivered_rows: &[i64],
    known: &KnownRooms,
    step: i64,
) -> Result<Known, ChatError> {
    const ROOMS: i64 = 1;
    const SENDERS: i64 = 2;
    const MESSAGES: i64 = 3;
    const OUTBOX: i64 = 4;
    const CHECK: i64 = 5;
    let d = ctx.store.dialect();
    let how = InsertedIds::Consecutive(step);
    let mut answers: Vec<Result<i64, ChatError>> = Vec::with_capacity(batch.len());
    let mut accepted: Vec<usize> = Vec::with_capacity(batch.len());
    for (i, req) in batch.iter().enumerate() {
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
    let mut sender_ids: Vec<&str> = accepted.iter().map(|&i| batch[i].sender.as_str()).collect();
    sender_ids.sort_unstable();
    sender_ids.dedup();
    let now = now_micros();
    let rows = new_messages(batch, &accepted);

    let expected: Vec<(i64, i64)> = rooms
        .iter()
        .filter_map(|r| known.0.get(r).map(|k| (*r, k.version)))
        .collect();

    let t0 = std::time::Instant::now();
    let mut script = Script::new(d);
    script.sql(tx.begin()).end();
    sql::script_outbox_delete(&mut script, delivered_rows);
    sql::script_lock_rooms(&mut script, d, rooms, ROOMS);
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
                let req = &batch[i];
                let members = known
                    .0
                    .get(&req.room)
                    .map(|k| k.members.as_slice())
                    .unwrap_or_default();
                let mut out = Vec::with_capacity(members.len());
                chat_alarms(now, req.room, &req.text, members, &mut out)?;
                Ok(out)
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
        let current = locked.len() == rooms.len()
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

    // In the order of [`message_pushes`]: each message's broadcast, then its alarms.
    let mut pushes = Vec::with_capacity(accepted.len() * 3);
    for ((&i, &id), alarms) in accepted.iter().zip(&ids).zip(alarms) {
        answers[i] = Ok(id);
        let req = &batch[i];
        pushes.push(ops::broadcast(
            ctx.media.links(),
            &message_row(req, id, now),
            senders.get(&req.sender),
        )?);
        pushes.extend(alarms);
    }
    Ok(Known::Written(Written {
        unhidden: outbox::Staged::default(),
        outbox_row,
        pushes,
        answers,
    }))
}

/// Scripts the insert of a batch's messages (ids `step` apart, [`InsertedIds::Consecutive`])
/// and its outbox row naming them: results `messages` and `outbox`.
fn script_messages_with_row(
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
fn new_messages<'a>(batch: &'a [Request], accepted: &[usize]) -> Vec<NewMessage<'a>> {
    accepted
        .iter()
        .map(|&i| NewMessage {
            room: batch[i].room,
            sender: &batch[i].sender,
            message: &batch[i].text,
            kind: dto::TEXT,
        })
        .collect()
}

/// Appends the pushes of one stored send ([`message_pushes`]).
fn push_message(
    media: &Links,
    req: &Request,
    id: i64,
    at: i64,
    sender: Option<&SenderRow>,
    members: &[String],
    out: &mut Vec<Outgoing>,
) -> Result<(), ChatError> {
    message_pushes(media, &message_row(req, id, at), sender, members, out)
}

/// The stored row of a send written with id `id` at `at`.
fn message_row(req: &Request, id: i64, at: i64) -> MessageRow {
    MessageRow {
        id,
        chatroom_id: req.room,
        sender_id: req.sender.clone(),
        message: Some(req.text.clone()),
        create_at: at,
        kind: dto::TEXT.to_owned(),
    }
}

/// [`write`] reading the rooms' participants (two round trips, see the module docs), and
/// remembering them for the next batches.
async fn write_read(
    ctx: &Ctx,
    tx: &mut crate::store::ScriptTx,
    batch: &[Request],
    rooms: &[i64],
    delivered_rows: &[i64],
    how: InsertedIds,
    known: &mut KnownRooms,
) -> Result<Written, ChatError> {
    const ROOMS: i64 = 1;
    const MEMBERS: i64 = 2;
    const MESSAGES: i64 = 3;
    const OUTBOX: i64 = 4;
    let d = ctx.store.dialect();
    let t0 = std::time::Instant::now();

    // Round trip 1: begin, clean up earlier batches' outbox rows, lock the rooms, read members.
    let mut script = Script::new(d);
    script.sql(tx.begin()).end();
    sql::script_outbox_delete(&mut script, delivered_rows);
    sql::script_lock_rooms(&mut script, d, rooms, ROOMS);
    sql::script_members_of(&mut script, rooms, MEMBERS);
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
    let mut answers: Vec<Result<i64, ChatError>> = Vec::with_capacity(batch.len());
    let mut accepted: Vec<usize> = Vec::with_capacity(batch.len());
    let mut unhide_pushes = Vec::new();
    for (i, req) in batch.iter().enumerate() {
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
    let rows = new_messages(batch, &accepted);
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

    let mut pushes = Vec::with_capacity(accepted.len() * 3);
    for (&i, &id) in accepted.iter().zip(&ids) {
        let req = &batch[i];
        answers[i] = Ok(id);
        let members = state
            .get(&req.room)
            .map(|s| s.members.as_slice())
            .unwrap_or_default();
        push_message(
            ctx.media.links(),
            req,
            id,
            now,
            senders.get(&req.sender),
            members,
            &mut pushes,
        )?;
    }

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

/// The batch's outbox row id from a committed script. A missing id only leaves the row to the
/// sweeper (whose re-sends the gateway drops by message id), never a reason to write again.
fn outbox_row_id(result: &crate::store::script::Rows, k: i64) -> Option<i64> {
    sql::inserted_row_id(result, k)
        .inspect_err(|e| tracing::warn!(error = %e, "no id for a chat batch's outbox row"))
        .ok()
}

/// The pushes announcing one stored TEXT message: its broadcast on `/topic/chat.{room}` (with the
/// de-duplication header), then a `CHAT` alarm to each of `members`.
pub(crate) fn message_pushes(
    media: &Links,
    row: &MessageRow,
    sender: Option<&SenderRow>,
    members: &[String],
    out: &mut Vec<Outgoing>,
) -> Result<(), ChatError> {
    out.push(ops::broadcast(media, row, sender)?);
    chat_alarms(
        row.create_at,
        row.chatroom_id,
        row.message.as_deref().unwrap_or_default(),
        members,
        out,
    )
}

/// Appends the `CHAT` alarm of a TEXT message sent at `at` in `room` to each of `members`.
fn chat_alarms(
    at: i64,
    room: i64,
    text: &str,
    members: &[String],
    out: &mut Vec<Outgoing>,
) -> Result<(), ChatError> {
    for m in members {
        out.push(ops::alarm(
            m,
            &ChatAlarm::Chat {
                create_at: at,
                chat_room_id: room,
                message: text.to_owned(),
            },
        )?);
    }
    Ok(())
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
    let mut out = Vec::new();
    for row in &rows {
        let m = members
            .get(&row.chatroom_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        if message_pushes(links, row, senders.get(&row.sender_id), m, &mut out).is_err() {
            return Err(StoreError::Db(sqlx::Error::Protocol(
                "could not serialise a chat push".to_owned(),
            )));
        }
    }
    Ok(Some(out))
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
