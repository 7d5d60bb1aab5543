//! A session's bounded outbound queue.
//!
//! A tokio `mpsc` channel allocates its first block of slots when it is created (about 1.5 KiB), which
//! every idle session would pay. This queue is a `VecDeque` that allocates on the first message and
//! gives its memory back once drained, behind a mutex held only to push or pop (never across an
//! `.await`), plus a `Notify` to wake the session's task.

use std::collections::VecDeque;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its capacity: the session is a slow consumer.
    Full,
    /// The session has ended.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    frames: VecDeque<Bytes>,
    closed: bool,
}

/// Frames waiting to be written to one session.
#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    ready: Notify,
    capacity: usize,
}

/// Capacity kept after draining; more is released so idle sessions hold no buffer.
const KEEP: usize = 16;

impl Outbound {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    /// Queues a frame without waiting.
    pub fn try_push(&self, frame: Bytes) -> Result<(), PushError> {
        {
            let mut st = self.state.lock();
            if st.closed {
                return Err(PushError::Closed);
            }
            if st.frames.len() >= self.capacity {
                return Err(PushError::Full);
            }
            st.frames.push_back(frame);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Moves up to `max` queued frames into `out` without waiting; returns how many.
    pub fn drain(&self, out: &mut Vec<Bytes>, max: usize) -> usize {
        let mut st = self.state.lock();
        let n = st.frames.len().min(max);
        out.extend(st.frames.drain(..n));
        if st.frames.is_empty() && st.frames.capacity() > KEEP {
            st.frames = VecDeque::new();
        }
        n
    }

    /// Waits for at least one frame, then returns up to `max`. Cancel-safe: frames are taken only in
    /// the poll that returns them.
    pub async fn next_batch(&self, max: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        loop {
            // A push between this check and the wait leaves a permit in `ready`, so no wake-up is lost.
            if self.drain(&mut out, max) > 0 {
                return out;
            }
            self.ready.notified().await;
        }
    }

    /// Refuses further pushes and drops what is queued.
    pub fn close(&self) {
        let mut st = self.state.lock();
        st.closed = true;
        st.frames = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_ordered_and_closable() {
        let q = Outbound::new(2);
        q.try_push(Bytes::from_static(b"a")).unwrap();
        q.try_push(Bytes::from_static(b"b")).unwrap();
        assert_eq!(q.try_push(Bytes::from_static(b"c")), Err(PushError::Full));
        let out = q.next_batch(10).await;
        assert_eq!(
            out,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        q.close();
        assert_eq!(q.try_push(Bytes::from_static(b"d")), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn wakes_a_waiting_reader() {
        let q = std::sync::Arc::new(Outbound::new(8));
        let q2 = q.clone();
        let reader = tokio::spawn(async move { q2.next_batch(8).await });
        tokio::task::yield_now().await;
        q.try_push(Bytes::from_static(b"x")).unwrap();
        assert_eq!(reader.await.unwrap(), vec![Bytes::from_static(b"x")]);
    }

    #[test]
    fn releases_memory_once_drained() {
        let q = Outbound::new(1000);
        for _ in 0..100 {
            q.try_push(Bytes::from_static(b"x")).unwrap();
        }
        let mut out = Vec::new();
        q.drain(&mut out, 1000);
        assert_eq!(q.state.lock().frames.capacity(), 0);
    }
}
