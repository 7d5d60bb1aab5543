//! The node's buffer of `/app/**` commands the bus cannot take right now (RabbitMQ down or
//! blocking publishers).
//!
//! Without it a SEND during a broker outage waited up to 5 s for the reconnect and then one ERROR
//! closed the session. Now, while the bus does not accept commands at once
//! ([`broker_bridge::Bus::accepts_commands_now`]), or while the buffer still holds commands (so
//! nothing overtakes them), a command goes into this buffer instead, in arrival order, bounded in
//! count and bytes ([`SendBufferConfig`]). One task per node flushes it in that order once the bus
//! accepts commands again; the SEND's `RECEIPT` (when the client asked for one) is written only
//! after the broker confirmed the command, exactly as for a command submitted at once, so a
//! receipt still means "in the durable work queue". When the buffer is full the SEND is refused:
//! with a `receipt` header the client gets a `RECEIPT` for it carrying `x-instar-error` (and the
//! session stays open, so it can retry); without one, an `ERROR` that ends the session, as before
//! (the client has no other way to learn that its message was not taken).
//!
//! What the buffer does not promise: commands held when the node itself dies are lost (their
//! senders never got a receipt); a session that closes before the flush still has its buffered
//! commands submitted, but nobody is told.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use broker_bridge::{AppCommand, Bus, BusError};
use bytes::Bytes;
use parking_lot::Mutex;

use crate::queue::Outbound;

/// Header of a `RECEIPT` that answers a SEND the node could not take (the buffer was full): the
/// reason. A `RECEIPT` without it means the command is in the durable work queue.
pub const ERROR_HEADER: &str = "x-instar-error";

/// Bounds of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendBufferConfig {
    /// Commands held at most (0 turns the buffer off: a SEND the bus cannot take fails as before).
    pub max_commands: usize,
    /// Bytes (bodies and headers) held at most.
    pub max_bytes: usize,
}

impl Default for SendBufferConfig {
    fn default() -> Self {
        Self {
            max_commands: 10_000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A held command and where its receipt goes.
struct Held {
    cmd: AppCommand,
    size: usize,
    /// The session's outbound queue and the encoded `RECEIPT` frame, if the client asked for one.
    receipt: Option<(Arc<Outbound>, Bytes)>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Held>,
    bytes: usize,
    /// A flusher task runs (started by the push that found none; it ends once the buffer is
    /// empty, so an idle node has no task).
    flushing: bool,
}

/// Counters of the buffer (`instar_send_buffer_*` on `/metrics`).
#[derive(Debug, Default)]
pub struct SendBufferStats {
    /// Commands taken into the buffer.
    pub buffered: AtomicU64,
    /// Buffered commands the broker confirmed.
    pub flushed: AtomicU64,
    /// SENDs refused because the buffer was full.
    pub refused: AtomicU64,
    /// Commands held now.
    pub held: AtomicU64,
}

/// The buffer was full: the command was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferFull;

/// A node's command buffer (see the module documentation).
pub struct SendBuffer {
    config: SendBufferConfig,
    state: Mutex<State>,
    /// Counters.
    pub stats: SendBufferStats,
}

impl std::fmt::Debug for SendBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBuffer")
            .field("config", &self.config)
            .field("held", &self.stats.held.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Most commands submitted together by one flush step.
const FLUSH_BATCH: usize = 256;
/// How often the flusher looks whether the bus accepts commands again.
const POLL: Duration = Duration::from_millis(50);

fn size_of(cmd: &AppCommand) -> usize {
    cmd.body.len()
        + cmd.destination.len()
        + cmd
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
        + 64
}

impl SendBuffer {
    /// An empty buffer.
    pub fn new(config: SendBufferConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
            stats: SendBufferStats::default(),
        }
    }

    /// Whether the buffer is on at all.
    pub fn enabled(&self) -> bool {
        self.config.max_commands > 0 && self.config.max_bytes > 0
    }

    /// True while commands wait in the buffer: a new command must queue behind them.
    pub fn holds_commands(&self) -> bool {
        !self.state.lock().queue.is_empty()
    }

    /// Takes `cmd` (and the receipt to write once it is confirmed), or refuses it when the buffer
    /// is full or off. Starts the flusher task on `bus` if none runs.
    pub fn push(
        self: &Arc<Self>,
        bus: &Bus,
        cmd: AppCommand,
        receipt: Option<(Arc<Outbound>, Bytes)>,
    ) -> Result<(), BufferFull> {
        if !self.enabled() {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            return Err(BufferFull);
        }
        let size = size_of(&cmd);
        {
            let mut st = self.state.lock();
            if st.queue.len() >= self.config.max_commands || st.bytes + size > self.config.max_bytes
            {
                drop(st);
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                return Err(BufferFull);
            }
            st.bytes += size;
            st.queue.push_back(Held { cmd, size, receipt });
            self.stats
                .held
                .store(st.queue.len() as u64, Ordering::Relaxed);
            if !st.flushing {
                st.flushing = true;
                tokio::spawn(Arc::clone(self).flush(bus.clone()));
            }
        }
        self.stats.buffered.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Submits the buffered commands to `bus`, in order, as soon as the bus accepts commands;
    /// ends once the buffer is empty.
    async fn flush(self: Arc<Self>, bus: Bus) {
        let mut logged_outage = false;
        loop {
            {
                let mut st = self.state.lock();
                if st.queue.is_empty() {
                    st.flushing = false;
                    if logged_outage {
                        tracing::info!("the node's command buffer is flushed");
                    }
                    return;
                }
            }
            if !bus.accepts_commands_now() {
                if !logged_outage {
                    tracing::warn!(
                        held = self.stats.held.load(Ordering::Relaxed),
                        "the bus does not take commands; SENDs wait in the node's buffer"
                    );
                    logged_outage = true;
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
            // The first commands, still in the buffer (new ones queue behind them meanwhile).
            let batch: Vec<AppCommand> = {
                let st = self.state.lock();
                st.queue
                    .iter()
                    .take(FLUSH_BATCH)
                    .map(|h| h.cmd.clone())
                    .collect()
            };
            // Submitted together: the bus keeps the order of commands queued on one shard, so a
            // session's commands stay in order.
            let results =
                futures_util::future::join_all(batch.iter().map(|cmd| bus.submit(cmd.clone())))
                    .await;
            let ok = results.iter().take_while(|r| r.is_ok()).count();
            let done: Vec<Held> = {
                let mut st = self.state.lock();
                let done: Vec<Held> = st.queue.drain(..ok).collect();
                st.bytes -= done.iter().map(|h| h.size).sum::<usize>();
                self.stats
                    .held
                    .store(st.queue.len() as u64, Ordering::Relaxed);
                done
            };
            self.stats
                .flushed
                .fetch_add(done.len() as u64, Ordering::Relaxed);
            for held in done {
                if let Some((queue, frame)) = held.receipt {
                    // A session that is gone or stuck does not get it.
                    let _ = queue.try_push(frame);
                }
            }
            if let Some(Err(e)) = results.get(ok) {
                // The rest stays (later commands of the batch that were confirmed anyway come
                // again; their command keys make the repeat harmless).
                tracing::debug!(error = %e, "flushing the command buffer failed; trying again");
                if !matches!(e, BusError::Unavailable(_)) {
                    // Not an outage (no handler route, say): drop the command, as a direct
                    // submit would have refused it.
                    let dropped = {
                        let mut st = self.state.lock();
                        let dropped = st.queue.pop_front();
                        if let Some(h) = &dropped {
                            st.bytes -= h.size;
                        }
                        self.stats
                            .held
                            .store(st.queue.len() as u64, Ordering::Relaxed);
                        dropped
                    };
                    if let Some(h) = dropped {
                        tracing::warn!(destination = %h.cmd.destination, error = %e, "buffered command refused by the bus; dropped");
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        }
    }
}
