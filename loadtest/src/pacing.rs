//! Open-loop pacing: message `i` of a stream is *intended* to leave at `offset + i × interval`.
//!
//! Latency is measured from that intended time, not from when the sender actually got round to
//! sending. If the system under test stalls the sender (a full socket, a slow server), the messages
//! that should have gone out meanwhile are sent late and their latency includes the stall. A
//! closed-loop sender would simply send fewer messages and report the stall once, which hides it
//! ("coordinated omission").

use std::time::Duration;

/// The intended send times of one stream, in nanoseconds since the run's time origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Intended time of message 0.
    pub offset_ns: u64,
    /// Gap between consecutive messages (at least 1 ns).
    pub interval_ns: u64,
}

impl Schedule {
    /// `rate` messages per second starting at `offset_ns`. Rates below 1e-9/s are clamped.
    pub fn from_rate(rate: f64, offset_ns: u64) -> Self {
        let interval = if rate.is_finite() && rate > 0.0 {
            (1e9 / rate).round()
        } else {
            1e18
        };
        Schedule {
            offset_ns,
            interval_ns: (interval as u64).max(1),
        }
    }

    /// Intended send time of message `i`.
    pub fn intended_ns(&self, i: u64) -> u64 {
        self.offset_ns
            .saturating_add(i.saturating_mul(self.interval_ns))
    }

    /// How many messages are due at `now_ns` (those with an intended time `<= now_ns`).
    pub fn due(&self, now_ns: u64) -> u64 {
        if now_ns < self.offset_ns {
            0
        } else {
            (now_ns - self.offset_ns) / self.interval_ns + 1
        }
    }

    /// How many messages fall inside `[offset, offset + duration)`.
    pub fn count_within(&self, duration: Duration) -> u64 {
        let d = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        if d == 0 {
            0
        } else {
            (d - 1) / self.interval_ns + 1
        }
    }
}

/// Wakes sender tasks at their intended send times to within tens of microseconds.
///
/// Tokio's timer rounds every deadline up to the next whole millisecond and its driver sleeps in
/// whole milliseconds, so a sender that sleeps with `tokio::time::sleep_until` leaves 0.5–2 ms
/// after its intended time, and every sender due within the same millisecond leaves at the same
/// tick. Both showed up as server latency (measured from the intended time) and as bursts. The
/// pacer is one OS thread that keeps the waiting deadlines in a heap and sleeps with
/// [`std::thread::park_timeout`] (a high-resolution futex wait) until the earliest, then wakes
/// every task due by then. The report's `send lag` line says how late the senders really were.
#[derive(Debug, Clone)]
pub struct Pacer {
    shared: std::sync::Arc<PacerHandle>,
}

/// Stops the pacer's thread when the last [`Pacer`] clone is dropped.
#[derive(Debug)]
struct PacerHandle {
    state: std::sync::Arc<std::sync::Mutex<PacerState>>,
    thread: std::thread::Thread,
}

#[derive(Debug, Default)]
struct PacerState {
    waiting: std::collections::BinaryHeap<std::cmp::Reverse<Waiting>>,
    /// Tie-breaker: registration order.
    next_seq: u64,
    closed: bool,
}

#[derive(Debug)]
struct Waiting {
    at: std::time::Instant,
    seq: u64,
    wake: tokio::sync::oneshot::Sender<()>,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

fn lock(state: &std::sync::Mutex<PacerState>) -> std::sync::MutexGuard<'_, PacerState> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Pacer {
    /// Starts the pacer's thread.
    pub fn start() -> std::io::Result<Pacer> {
        let state = std::sync::Arc::new(std::sync::Mutex::new(PacerState::default()));
        let theirs = std::sync::Arc::clone(&state);
        let handle = std::thread::Builder::new()
            .name("loadtest-pacer".into())
            .spawn(move || pacer_thread(&theirs))?;
        Ok(Pacer {
            shared: std::sync::Arc::new(PacerHandle {
                state,
                thread: handle.thread().clone(),
            }),
        })
    }

    /// Completes at `at` (at once if it has passed). Dropping the future early is fine: its
    /// entry is discarded when its time comes.
    pub fn sleep_until(
        &self,
        at: std::time::Instant,
    ) -> impl Future<Output = ()> + Send + 'static + use<> {
        let rx = if at <= std::time::Instant::now() {
            None
        } else {
            let (wake, rx) = tokio::sync::oneshot::channel();
            let mut st = lock(&self.shared.state);
            let earliest = st.waiting.peek().is_none_or(|w| at < w.0.at);
            let seq = st.next_seq;
            st.next_seq += 1;
            st.waiting
                .push(std::cmp::Reverse(Waiting { at, seq, wake }));
            drop(st);
            if earliest {
                self.shared.thread.unpark();
            }
            Some(rx)
        };
        async move {
            if let Some(rx) = rx {
                let _ = rx.await;
            }
        }
    }
}

impl Drop for PacerHandle {
    fn drop(&mut self) {
        lock(&self.state).closed = true;
        self.thread.unpark();
    }
}

fn pacer_thread(state: &std::sync::Mutex<PacerState>) {
    loop {
        let now = std::time::Instant::now();
        let mut st = lock(state);
        if st.closed {
            return;
        }
        while st.waiting.peek().is_some_and(|w| w.0.at <= now) {
            if let Some(std::cmp::Reverse(w)) = st.waiting.pop() {
                let _ = w.wake.send(());
            }
        }
        let next = st.waiting.peek().map(|w| w.0.at);
        drop(st);
        // A deadline registered meanwhile unparks the thread, and an unpark that comes before
        // the park makes it return at once, so no wake-up is missed.
        match next {
            Some(at) => std::thread::park_timeout(at.saturating_duration_since(now)),
            None => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod pacer_tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn wakes_in_deadline_order_and_never_early() {
        let pacer = Pacer::start().expect("pacer thread");
        let origin = Instant::now();
        let deadlines: Vec<Instant> = [7u64, 2, 5, 3, 11, 1]
            .iter()
            .map(|ms| origin + Duration::from_millis(*ms))
            .collect();
        let woken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tasks: Vec<_> = deadlines
            .iter()
            .map(|&at| {
                let sleep = pacer.sleep_until(at);
                let woken = woken.clone();
                tokio::spawn(async move {
                    sleep.await;
                    let now = Instant::now();
                    assert!(now >= at, "woken {:?} early", at - now);
                    woken.lock().expect("lock").push(at);
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("task");
        }
        let woken = woken.lock().expect("lock").clone();
        let mut sorted = deadlines.clone();
        sorted.sort();
        assert_eq!(woken.len(), sorted.len());
        // Deadlines 1 ms or more apart are woken in their order.
        assert_eq!(woken, sorted);
    }

    #[tokio::test]
    async fn a_past_deadline_is_ready_at_once_and_a_dropped_sleep_is_harmless() {
        let pacer = Pacer::start().expect("pacer thread");
        pacer.sleep_until(Instant::now()).await;
        drop(pacer.sleep_until(Instant::now() + Duration::from_millis(1)));
        pacer
            .sleep_until(Instant::now() + Duration::from_millis(3))
            .await;
    }
}
