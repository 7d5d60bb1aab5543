//! Missed-message recovery on SUBSCRIBE.
//!
//! A client that lost its connection knows the id of the last chat message it saw (the
//! `x-instar-message-id` header of every `/topic/chat.{id}` MESSAGE). It may SUBSCRIBE again with
//! [`LAST_ID_HEADER`] naming that id; the gateway then writes every later message from the store,
//! each marked with [`REPLAYED_HEADER`], before any live one, with no gap and no duplicate:
//!
//! 1. the subscription is registered with the hub in *buffering* mode: from then on, live
//!    deliveries for it are held in a per-subscription buffer instead of being sent;
//! 2. the store is read from the client's id on, page by page ([`TopicPolicy::replay`]), and each
//!    stored message is written with the next `message-id` of the subscription;
//! 3. the buffer is flushed: messages whose [`ID_HEADER`] is at or below the newest replayed id are
//!    dropped (they were in the store already), the rest are queued in arrival order, and the
//!    subscription goes live (under the same lock, so no delivery slips between the two).
//!
//! Any message committed before step 2 read the store is replayed; any message committed after it
//! is published after its commit, so after step 1, and is therefore in the buffer. Nothing falls in
//! between. A message the store had but whose publish comes late (an outbox retry) is dropped: the
//! subscription keeps the newest replayed id (or, when nothing was missed, the client's own last id)
//! as a floor for live messages, so a copy the outbox re-publishes after a restart of something the
//! client had before it reconnected is not shown again either. That rule relies on the
//! chat service committing a room's messages in id order (it locks the room row before inserting).
//! A RECEIPT asked for by the SUBSCRIBE is written after the replayed messages.
//!
//! [`TopicPolicy::replay`]: crate::destination::TopicPolicy::replay

use bytes::Bytes;

/// SUBSCRIBE header: the id of the last message the client saw on this topic.
pub const LAST_ID_HEADER: &str = "x-instar-last-message-id";
/// Header naming a chat message's id, on live and replayed MESSAGE frames alike.
pub const ID_HEADER: &str = "x-instar-message-id";
/// Header marking a replayed MESSAGE frame (value `true`).
pub const REPLAYED_HEADER: &str = "x-instar-replayed";
/// Messages one store read returns.
pub const PAGE: usize = 500;

/// One stored message to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The message id (what [`ID_HEADER`] carries).
    pub id: u64,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// Why a replay could not be served; the text goes into the ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The topic keeps no history.
    #[error("this topic has no message history to replay")]
    Unsupported,
    /// The user may not read this history (no longer a member, say).
    #[error("not authorised to replay this topic")]
    Forbidden,
    /// The store failed; the client may retry.
    #[error("message history unavailable, retry later")]
    Unavailable,
    /// More messages were missed than one SUBSCRIBE replays.
    #[error(
        "more than {0} messages were missed: load the history, then subscribe with its newest id"
    )]
    TooMany(usize),
}

/// Live deliveries held while a subscription replays, then flushed by [`ReplayBuffer::finish`].
#[derive(Debug, Default)]
pub struct ReplayBuffer {
    held: Vec<(Option<u64>, Bytes)>,
    overflowed: bool,
}

impl ReplayBuffer {
    /// Most live frames held for one replaying subscription; past it the session is a slow consumer.
    pub const MAX_HELD: usize = 10_000;

    /// Holds one encoded live frame and its message id, if it has one. Returns `false` when the
    /// buffer is full (the frame is dropped and the session must be closed).
    pub fn hold(&mut self, id: Option<u64>, frame: Bytes) -> bool {
        if self.held.len() >= Self::MAX_HELD {
            self.overflowed = true;
            return false;
        }
        self.held.push((id, frame));
        true
    }

    /// Whether a frame was ever refused.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// The held frames to send once `newest` (the newest replayed id, if any) was replayed: those
    /// without an id or with a newer one, in arrival order.
    pub fn finish(self, newest: Option<u64>) -> impl Iterator<Item = Bytes> {
        self.held
            .into_iter()
            .filter(move |(id, _)| match (id, newest) {
                (Some(id), Some(newest)) => *id > newest,
                _ => true,
            })
            .map(|(_, frame)| frame)
    }
}

/// Parses the value of [`ID_HEADER`] or [`LAST_ID_HEADER`]: a decimal id without sign.
pub fn parse_id(value: &str) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(parse_id("0"), Some(0));
        assert_eq!(parse_id("42"), Some(42));
        assert_eq!(parse_id("-1"), None);
        assert_eq!(parse_id("+1"), None);
        assert_eq!(parse_id(""), None);
        assert_eq!(parse_id("1e3"), None);
        assert_eq!(parse_id("99999999999999999999999"), None);
    }

    #[test]
    fn buffer_drops_what_was_replayed_and_keeps_order() {
        let mut b = ReplayBuffer::default();
        for (id, f) in [
            (Some(5), "a"),
            (None, "b"),
            (Some(7), "c"),
            (Some(6), "d"),
            (Some(8), "e"),
        ] {
            assert!(b.hold(id, Bytes::from_static(f.as_bytes())));
        }
        let out: Vec<Bytes> = b.finish(Some(6)).collect();
        assert_eq!(out, vec!["b", "c", "e"]);
        let mut b = ReplayBuffer::default();
        b.hold(Some(1), Bytes::from_static(b"x"));
        assert_eq!(b.finish(None).count(), 1);
    }

    #[test]
    fn buffer_is_bounded() {
        let mut b = ReplayBuffer::default();
        for _ in 0..ReplayBuffer::MAX_HELD {
            assert!(b.hold(None, Bytes::new()));
        }
        assert!(!b.hold(None, Bytes::new()));
        assert!(b.overflowed());
    }
}
