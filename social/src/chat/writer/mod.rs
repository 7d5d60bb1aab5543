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
//! 3. each send is checked as [`super::ops::send_command`] checks it (room exists, sender is a
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
//! [`super::ops::send_command`], so one bad send cannot fail the others.
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

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Any;
use sqlx::pool::PoolConnection;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{ChatError, MAX_MESSAGE_CHARS, ops, room_locks};
use crate::ctx::Ctx;
use crate::outbox;
use crate::store::chat::InsertedIds;

mod known;
mod pushes;
mod read;

use known::{Known, KnownRooms};
use outbox::Outgoing;
pub(crate) use pushes::MessagePushes;
pub use pushes::MessagesRebuild;

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
/// Publishes the outbox rows a dead process left: it may have died between a batch's commit and
/// its pushes. Run when this process takes command shards over ([`broker_bridge::Bus::on_shards_gained`],
/// before their first delivery) and again at the first redelivered send it finds stored, so a
/// room's earlier messages are broadcast before the first one its new owner writes (left to the
/// sweeper, [`outbox::SWEEP_GRACE`] later, they would come after newer ones). Rows younger than
/// [`ORPHAN_AGE`] are left alone (a live writer elsewhere is publishing them; a dead worker's
/// shards move no sooner than its lease, 3 s by default, ran out); a row published twice is
/// dropped by the gateways (they de-duplicate by message id).
pub(crate) async fn republish_orphans(outbox: &outbox::Outbox) {
    match outbox.sweep(ORPHAN_AGE).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            rows = n,
            "published a redelivered send's pushes left by another process"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not publish left-over chat pushes; the sweeper will")
        }
    }
}

/// Outbox rows at least this old are published when a redelivered send is seen
/// ([`republish_orphans`]). Below the least worker lease (a dead process's commands come
/// back no sooner than its lease ran out), above the time a live writer takes to publish a batch.
pub const ORPHAN_AGE: std::time::Duration = std::time::Duration::from_secs(1);

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
    /// Redelivered `/app/send` commands answered with the message stored for them before.
    pub duplicates: AtomicU64,
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

/// `instar_chat_batch_commit_seconds`: recorded per committed batch (a summary).
const COMMIT_SECONDS: (&str, &str) = (
    "instar_chat_batch_commit_seconds",
    "Time from a batch's first statement to its commit.",
);
/// `instar_chat_batch_wait_seconds`: recorded per committed batch (a summary).
const WAIT_SECONDS: (&str, &str) = (
    "instar_chat_batch_wait_seconds",
    "Time the oldest send of a batch waited in the writer's queue.",
);

impl crate::ctx::MetricsSource for WriterStatsList {
    fn update_metrics(&self, registry: &broker_bridge::MetricsRegistry) {
        let writers = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        update_metrics(&writers, registry);
    }
}

/// Sets the counters of `writers`, summed, in `registry` (the batch timings are recorded per
/// batch by the writers; registered here so they show before the first batch).
fn update_metrics(writers: &[Arc<WriterStats>], registry: &broker_bridge::MetricsRegistry) {
    let sum = |field: fn(&WriterStats) -> &AtomicU64| -> u64 {
        writers
            .iter()
            .map(|w| field(w).load(Ordering::Relaxed))
            .sum()
    };
    let counters: [(&str, &str, u64); 8] = [
        (
            "chat_batches_total",
            "Transactions committed by the chat send writers.",
            sum(|w| &w.batches),
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
            "chat_duplicate_commands_total",
            "Redelivered /app/send commands answered with the message stored for them before.",
            sum(|w| &w.duplicates),
        ),
        (
            "chat_outbox_cleanups_total",
            "Statements that deleted delivered batches' outbox rows.",
            sum(|w| &w.cleanups),
        ),
    ];
    for (name, help, value) in counters {
        registry.set_counter(&format!("instar_{name}"), help, value);
    }
    for (name, help) in [COMMIT_SECONDS, WAIT_SECONDS] {
        let _ = registry.histogram(name, help);
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
    /// The `/app/send` command's key (unique across the deployment), if it came with one: a
    /// redelivered command finds the message stored for it instead of storing it again.
    command: Option<String>,
    /// The command's W3C `traceparent`, passed on with the message's pushes.
    trace: Option<String>,
    reply: oneshot::Sender<Result<i64, ChatError>>,
    /// When it was queued (the batch log reports its oldest send's wait).
    queued: std::time::Instant,
}

impl SendWriter {
    /// Starts `writers` writer tasks (at least one) on the current Tokio runtime, with the
    /// [`DEFAULT_LINGER`]; `None` without a runtime. They stop when every handle is dropped, or
    /// at shutdown ([`crate::jobs::Jobs::shutdown`]) once the sends already queued are written.
    pub fn start(ctx: &Ctx, writers: usize) -> Option<SendWriter> {
        Self::start_with(ctx, writers, DEFAULT_LINGER)
    }

    /// [`SendWriter::start`] with another linger (zero: none; at most [`MAX_LINGER`]).
    pub fn start_with(
        ctx: &Ctx,
        writers: usize,
        linger: std::time::Duration,
    ) -> Option<SendWriter> {
        // The writers are tasks of the context's jobs, which need a runtime.
        tokio::runtime::Handle::try_current().ok()?;
        let stats = Arc::new(WriterStats::default());
        if let Some(list) = ctx.extension::<WriterStatsList>() {
            list.add(Arc::clone(&stats));
        }
        let linger = linger.min(MAX_LINGER);
        let shards: Vec<_> = (0..writers.max(1))
            .map(|i| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let writer = Writer::new(ctx.clone(), Arc::clone(&stats), linger);
                ctx.jobs.spawn(&format!("chat-writer-{i}"), move |cancel| {
                    writer.run(rx, cancel)
                });
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
    /// [`ops::send_command`], batched with the other sends of the moment. Returns its id.
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
        self.enqueue_command(sender, room, text, None, None).await
    }

    /// [`SendWriter::enqueue`] for the `/app/send` command with key `command`: when a message was
    /// stored for that key already (the bus redelivered the command), its id is the answer and
    /// nothing is written or pushed again (the first write's pushes are in the outbox). A W3C
    /// `traceparent` (`trace`) is carried on with the message's broadcast and alarms.
    pub async fn enqueue_command(
        &self,
        sender: &str,
        room: i64,
        text: &str,
        command: Option<&str>,
        trace: Option<&str>,
    ) -> Result<impl Future<Output = Result<i64, ChatError>> + Send + 'static, ChatError> {
        check_text(text)?;
        let n = i64::try_from(self.shards.len()).unwrap_or(1);
        let shard = usize::try_from(room.rem_euclid(n)).unwrap_or(0);
        let (reply, answer) = oneshot::channel();
        let req = Request {
            sender: sender.to_owned(),
            room,
            text: text.to_owned(),
            command: command.map(str::to_owned),
            trace: trace.map(str::to_owned),
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

/// What one committed batch publishes.
pub(super) struct Written {
    /// `CREATE_ROOM` pushes of DMs brought back, staged in the outbox on their own.
    pub(super) unhidden: outbox::Staged,
    /// The batch's outbox row (`None`: its id did not come back; the sweeper deletes it).
    pub(super) outbox_row: Option<i64>,
    /// The messages' pushes, in order.
    pub(super) pushes: Vec<Outgoing>,
    /// Answers: per request, its message id or why it was refused.
    pub(super) answers: Vec<Result<i64, ChatError>>,
}

/// One writer task: its queue's batches, written one after another, and what it keeps between
/// them.
struct Writer {
    ctx: Ctx,
    stats: Arc<WriterStats>,
    linger: std::time::Duration,
    /// Outbox rows of delivered batches, deleted together by a later batch.
    delivered_rows: Vec<i64>,
    /// How the ids of a multi-row insert are found, asked of the server once.
    inserted_ids: Option<InsertedIds>,
    /// The participants of the rooms written to, with their membership versions.
    known: KnownRooms,
    /// The connection of the last batch, kept for the next while sends keep coming (given back to
    /// the pool when the queue runs dry, and dropped with a transaction that failed).
    kept: Option<PoolConnection<Any>>,
    /// `instar_chat_batch_commit_seconds` and `instar_chat_batch_wait_seconds`.
    commit_seconds: metrics::Histogram,
    wait_seconds: metrics::Histogram,
}

/// A batch being written: its sends, their rooms (sorted, distinct) and the delivered outbox
/// rows its transaction deletes.
struct BatchWrite<'a> {
    ctx: &'a Ctx,
    sends: &'a [Request],
    rooms: &'a [i64],
    delivered_rows: &'a [i64],
}

impl Writer {
    fn new(ctx: Ctx, stats: Arc<WriterStats>, linger: std::time::Duration) -> Writer {
        let commit_seconds = ctx.metrics.histogram(COMMIT_SECONDS.0, COMMIT_SECONDS.1);
        let wait_seconds = ctx.metrics.histogram(WAIT_SECONDS.0, WAIT_SECONDS.1);
        Writer {
            commit_seconds,
            wait_seconds,
            ctx,
            stats,
            linger,
            delivered_rows: Vec::new(),
            inserted_ids: None,
            known: KnownRooms::default(),
            kept: None,
        }
    }

    /// Writes what `rx` brings until every sender is gone; once `cancel` fires, takes no new
    /// send and ends when the queued ones are written.
    async fn run(mut self, mut rx: mpsc::Receiver<Request>, cancel: CancellationToken) {
        let linger = self.linger;
        let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
        // When the batch before started (`None`: no batch yet).
        let mut last_start: Option<tokio::time::Instant> = None;
        let mut closed = false;
        loop {
            if let Some(at) = last_start.map(|t| t + linger)
                && !linger.is_zero()
                && rx.len() < LINGER_SKIP
                && at > tokio::time::Instant::now()
            {
                tokio::time::sleep_until(at).await;
            }
            if !self.delivered_rows.is_empty() && rx.is_empty() {
                match tokio::time::timeout(CLEANUP_IDLE, rx.recv_many(&mut batch, MAX_BATCH)).await
                {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => {
                        // Idle: the rows go now, on a connection of their own.
                        if self
                            .ctx
                            .store
                            .outbox_remove(&self.delivered_rows)
                            .await
                            .is_ok()
                        {
                            self.delivered_rows.clear();
                            self.stats.cleanups.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                }
            } else {
                let n = tokio::select! {
                    n = rx.recv_many(&mut batch, MAX_BATCH) => n,
                    () = cancel.cancelled(), if !closed => {
                        // Shutdown: no new sends; what is queued is still written.
                        rx.close();
                        closed = true;
                        continue;
                    }
                };
                if n == 0 {
                    break;
                }
            }
            last_start = Some(tokio::time::Instant::now());
            self.write_and_publish(std::mem::take(&mut batch)).await;
            if rx.is_empty() {
                self.kept = None;
            }
        }
        if !self.delivered_rows.is_empty() {
            let _ = self.ctx.store.outbox_remove(&self.delivered_rows).await;
        }
    }

    /// Writes `batch` (one transaction, or one send at a time if that fails), publishes its
    /// pushes and answers its senders.
    async fn write_and_publish(&mut self, batch: Vec<Request>) {
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
        let cleanup = self.delivered_rows.len() >= CLEANUP_ROWS;
        match self.write(&batch, &rooms, cleanup).await {
            Ok(written) => {
                let committed = started.elapsed();
                self.stats
                    .commit_micros
                    .fetch_add(micros_u64(committed), Ordering::Relaxed);
                self.stats
                    .wait_micros
                    .fetch_add(micros_u64(waited), Ordering::Relaxed);
                self.commit_seconds.record(committed.as_secs_f64());
                self.wait_seconds.record(waited.as_secs_f64());
                if cleanup {
                    self.delivered_rows.clear();
                    self.stats.cleanups.fetch_add(1, Ordering::Relaxed);
                }
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.ctx.outbox.deliver(written.unhidden).await;
                // A failure leaves the row to the sweeper, which re-sends the batch (the gateway
                // drops the broadcasts already delivered by their message id).
                if self.ctx.outbox.publish_all(written.pushes).await
                    && let Some(row) = written.outbox_row
                {
                    self.delivered_rows.push(row);
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
                        Ok(_) => self.stats.messages.fetch_add(1, Ordering::Relaxed),
                        Err(_) => self.stats.refused.fetch_add(1, Ordering::Relaxed),
                    };
                    let _ = req.reply.send(answer);
                }
            }
            Err(e) => {
                drop(locks);
                for room in &rooms {
                    self.known.forget(*room);
                }
                self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, sends = batch.len(), "batched chat write failed; sending one at a time");
                // The clean-up of earlier batches' rows rolled back with the failed transaction:
                // those were published, so they go now rather than to the sweeper, which would send
                // them again.
                if self
                    .ctx
                    .store
                    .outbox_remove(&self.delivered_rows)
                    .await
                    .is_ok()
                {
                    self.delivered_rows.clear();
                }
                // A redelivered command (its key stored already) fails the batch's insert: one at a
                // time, it finds its message and is answered with it.
                let mut swept = false;
                for req in batch {
                    let answer = ops::send_command(
                        &self.ctx,
                        &req.sender,
                        req.room,
                        &req.text,
                        req.command.as_deref(),
                    )
                    .await;
                    if let Ok(ops::Sent::Before(_)) = answer {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        if !swept {
                            swept = true;
                            republish_orphans(&self.ctx.outbox.clone()).await;
                        }
                    }
                    let _ = req.reply.send(answer.map(ops::Sent::id));
                }
            }
        }
    }

    /// Writes a batch: from what the writer knows of its rooms when it knows them all
    /// ([`BatchWrite::write_known`]), else (or when one of them changed) reading their participants
    /// first ([`BatchWrite::write_read`]); with the delivered outbox rows when `cleanup`.
    async fn write(
        &mut self,
        sends: &[Request],
        rooms: &[i64],
        cleanup: bool,
    ) -> Result<Written, ChatError> {
        let Writer {
            ctx,
            stats,
            delivered_rows,
            inserted_ids,
            known,
            kept,
            ..
        } = self;
        let batch = BatchWrite {
            ctx,
            sends,
            rooms,
            delivered_rows: if cleanup { delivered_rows } else { &[] },
        };
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
            match batch.write_known(&mut tx, known, step).await? {
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
        let written = batch.write_read(&mut tx, how, known).await?;
        *kept = tx.into_connection();
        Ok(written)
    }
}
