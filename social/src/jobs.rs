//! Every background task of the service, in one place: named, tracked, and stopped in order at
//! shutdown ([`Jobs::shutdown`]: the last started is cancelled and awaited first, so a task never
//! outlives what it uses).
//!
//! Three kinds:
//! * [`Jobs::spawn`]: a long-running task (a queue's worker, a bus listener) that watches its
//!   cancellation token;
//! * [`Jobs::every`]: a periodic task in every process (the outbox sweeper);
//! * [`Jobs::once_per_cluster`]: scheduled work that must run once per slot in the whole cluster
//!   (the feed's daily recompute): at each slot every process tries a lock in the key-value store
//!   (Redis in scale-out, in process for the embedded default) with a random owner token; the
//!   holder renews it while it runs and releases it only if it still holds it; a slot that
//!   finished is marked done, so a process that gets the lock later in the same slot skips it; a
//!   holder that died leaves the lock to expire, and another process takes the slot over. The
//!   holder's [`Lease`] carries a fencing token (larger for every new holder) and writes guarded
//!   by the lock ([`Lease::set`]) so a holder that stalled past its lease cannot overwrite its
//!   successor's work; [`Lease::lost`] fires when a renewal fails.
//!
//! Runs, failures, durations and lock contention are counted for `/metrics`
//! (`instar_job_runs_total{job,outcome}`, and the summary `instar_job_seconds{job}`, recorded per run).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kv::{Kv, KvError};

/// When a cluster job's slots start.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Every period, slots aligned to the Unix epoch (so every process agrees on them).
    Every(Duration),
    /// Once a day at a wall-clock time in a time zone (a daylight-saving gap moves the slot to the
    /// first valid time after it; a repeated hour runs once).
    Daily {
        /// Local time of day.
        at: jiff::civil::Time,
        /// Time zone of `at`.
        tz: jiff::tz::TimeZone,
    },
}

impl Schedule {
    /// Daily at `at` (`HH:MM` or `HH:MM:SS`) in the IANA time zone `tz` (`Asia/Seoul`, `UTC`).
    ///
    /// # Errors
    /// A malformed time or an unknown zone, said in words.
    pub fn daily(at: &str, tz: &str) -> Result<Schedule, String> {
        let at: jiff::civil::Time = at
            .parse()
            .map_err(|e| format!("time of day {at:?}: {e} (want HH:MM)"))?;
        let tz = jiff::tz::TimeZone::get(tz).map_err(|e| format!("time zone {tz:?}: {e}"))?;
        Ok(Schedule::Daily { at, tz })
    }

    /// Daily at `at` (`HH:MM`) in this machine's time zone (`TZ`, else `/etc/localtime`, else
    /// UTC).
    ///
    /// # Errors
    /// A malformed time, said in words.
    pub fn daily_here(at: &str) -> Result<Schedule, String> {
        let at: jiff::civil::Time = at
            .parse()
            .map_err(|e| format!("time of day {at:?}: {e} (want HH:MM)"))?;
        Ok(Schedule::Daily {
            at,
            tz: jiff::tz::TimeZone::system(),
        })
    }

    /// The start of the slot that contains `now` (the latest start at or before it).
    #[must_use]
    pub fn slot_at(&self, now: jiff::Timestamp) -> jiff::Timestamp {
        match self {
            Schedule::Every(period) => {
                let p = i64::try_from(period.as_millis()).unwrap_or(i64::MAX).max(1);
                let ms = now.as_millisecond();
                jiff::Timestamp::from_millisecond(ms - ms.rem_euclid(p)).unwrap_or(now)
            }
            Schedule::Daily { at, tz } => {
                let today = now.to_zoned(tz.clone()).date();
                let start = |d: jiff::civil::Date| {
                    d.to_datetime(*at)
                        .to_zoned(tz.clone())
                        .map(|z| z.timestamp())
                        .ok()
                };
                match start(today) {
                    Some(t) if t <= now => t,
                    _ => today.yesterday().ok().and_then(start).unwrap_or(now),
                }
            }
        }
    }

    /// The start of the first slot after `now`.
    #[must_use]
    pub fn next_after(&self, now: jiff::Timestamp) -> jiff::Timestamp {
        match self {
            Schedule::Every(period) => {
                let p =
                    jiff::SignedDuration::try_from(*period).unwrap_or(jiff::SignedDuration::MAX);
                self.slot_at(now).checked_add(p).unwrap_or(now)
            }
            Schedule::Daily { at, tz } => {
                let mut day = now.to_zoned(tz.clone()).date();
                for _ in 0..3 {
                    if let Ok(z) = day.to_datetime(*at).to_zoned(tz.clone())
                        && z.timestamp() > now
                    {
                        return z.timestamp();
                    }
                    match day.tomorrow() {
                        Ok(d) => day = d,
                        Err(_) => break,
                    }
                }
                now
            }
        }
    }
}

/// What a cluster job's run is given: its slot and its hold on the lock.
#[derive(Debug)]
pub struct Lease {
    kv: Arc<dyn Kv>,
    key: String,
    owner: String,
    fence: u64,
    slot: jiff::Timestamp,
    lost: CancellationToken,
}

impl Lease {
    /// The fencing token: larger than every earlier holder's. Writes outside the key-value store
    /// (SQL) can store it and refuse a smaller one.
    #[must_use]
    pub fn fence(&self) -> u64 {
        self.fence
    }

    /// The lock's key in the key-value store (before the store's prefix): `job:{name}`.
    #[must_use]
    pub fn lock_key(&self) -> &str {
        &self.key
    }

    /// This run's owner token (what the lock holds while the run has it).
    #[must_use]
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The start of the slot this run is for.
    #[must_use]
    pub fn slot(&self) -> jiff::Timestamp {
        self.slot
    }

    /// Cancelled when a renewal found the lock taken over (or the store unreachable until the
    /// lease ran out), or by the run itself when a fenced write was refused: stop writing (a run
    /// that ends after it is counted as `lost`).
    #[must_use]
    pub fn lost(&self) -> &CancellationToken {
        &self.lost
    }

    /// Whether this run still holds the lock (asks the store).
    ///
    /// # Errors
    /// The store failed.
    pub async fn still_held(&self, ttl: Duration) -> Result<bool, KvError> {
        self.kv.renew(&self.key, &self.owner, ttl).await
    }

    /// Writes `key` = `value` only while this run holds the lock (false: it was taken over and
    /// nothing was written).
    ///
    /// # Errors
    /// The store failed.
    pub async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<bool, KvError> {
        self.kv
            .set_if_owner(&self.key, &self.owner, key, value, ttl)
            .await
    }
}

/// How a cluster job runs.
#[derive(Debug, Clone)]
pub struct ClusterJob {
    /// Name (metrics, logs, lock key `job:{name}`).
    pub name: String,
    /// When its slots start.
    pub schedule: Schedule,
    /// Lock lifetime; renewed every third of it while the run goes on.
    pub lock_ttl: Duration,
    /// How often a process that did not get the lock looks again while the slot is not done
    /// (so a dead holder's slot is taken over soon after its lock expires).
    pub retry: Duration,
}

impl ClusterJob {
    /// A job `name` on `schedule` with a 30-second lock, retried every 5 seconds.
    #[must_use]
    pub fn new(name: &str, schedule: Schedule) -> ClusterJob {
        ClusterJob {
            name: name.to_owned(),
            schedule,
            lock_ttl: Duration::from_secs(30),
            retry: Duration::from_secs(5),
        }
    }
}

/// What one attempt at a slot came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// This process ran the slot to the end.
    Ran,
    /// The run failed (logged); the slot stays open and is tried again.
    Failed,
    /// Another process holds the lock.
    Busy,
    /// The slot was already done.
    Done,
}

#[derive(Debug, Default, Clone, Copy)]
struct JobStats {
    ran: u64,
    failed: u64,
    busy: u64,
    lost: u64,
}

struct Task {
    name: String,
    cancel: CancellationToken,
    handle: JoinHandle<()>,
}

struct JobsInner {
    kv: Arc<dyn Kv>,
    tracker: TaskTracker,
    tasks: Mutex<Vec<Task>>,
    stats: Mutex<BTreeMap<String, JobStats>>,
    /// Where run durations are recorded (`instar_job_seconds`) and the run counts copied.
    metrics: broker_bridge::MetricsRegistry,
}

/// `instar_job_seconds{job}`: the duration of each run that ran or failed (a summary).
const JOB_SECONDS: (&str, &str) = (
    "instar_job_seconds",
    "Time spent in cluster job runs (those that ran or failed), by job.",
);

/// The service's background tasks (cheap to clone: one shared set).
#[derive(Clone)]
pub struct Jobs(Arc<JobsInner>);

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("tasks", &self.names())
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// An empty set whose cluster jobs lock in `kv`.
    #[must_use]
    pub fn new(kv: Arc<dyn Kv>) -> Jobs {
        Self::with_metrics(kv, broker_bridge::MetricsRegistry::new())
    }

    /// [`Jobs::new`] recording run durations in `metrics`.
    #[must_use]
    pub fn with_metrics(kv: Arc<dyn Kv>, metrics: broker_bridge::MetricsRegistry) -> Jobs {
        Jobs(Arc::new(JobsInner {
            kv,
            tracker: TaskTracker::new(),
            tasks: Mutex::new(Vec::new()),
            stats: Mutex::new(BTreeMap::new()),
            metrics,
        }))
    }

    /// Records one run of `job` that took `seconds`.
    fn record_seconds(&self, job: &str, seconds: f64) {
        self.0
            .metrics
            .histogram_with(JOB_SECONDS.0, &[("job", job)], JOB_SECONDS.1)
            .record(seconds);
    }

    /// The names of the running tasks, in start order.
    #[must_use]
    pub fn names(&self) -> Vec<String> {
        self.0
            .tasks
            .lock()
            .iter()
            .filter(|t| !t.handle.is_finished())
            .map(|t| t.name.clone())
            .collect()
    }

    /// Starts `task` under `name`; it gets a token that is cancelled at shutdown and should
    /// return soon after. Without a Tokio runtime nothing starts (logged).
    pub fn spawn<F, Fut>(&self, name: &str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(job = name, "no Tokio runtime: background task not started");
            return;
        };
        let cancel = CancellationToken::new();
        let fut = task(cancel.clone());
        let job = name.to_owned();
        let handle = rt.spawn(self.0.tracker.track_future(async move {
            fut.await;
            tracing::debug!(%job, "background task ended");
        }));
        let mut tasks = self.0.tasks.lock();
        tasks.retain(|t| !t.handle.is_finished());
        tasks.push(Task {
            name: name.to_owned(),
            cancel,
            handle,
        });
    }

    /// Runs `tick` every `period` in this process (the first after one period) until shutdown;
    /// a tick in progress is finished, not cut.
    pub fn every<F, Fut>(&self, name: &str, period: Duration, mut tick: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.spawn(name, move |cancel| async move {
            let mut interval =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = interval.tick() => tick().await,
                }
            }
        });
    }

    /// Runs `run` once per slot of `job.schedule` in the whole cluster (see the module docs),
    /// from the first slot that starts after now (a process started late does not run the slot
    /// in progress). While the slot is not done and another process holds the lock, or a run
    /// failed, it tries again every `job.retry` until the next slot starts.
    /// `run` returns `Err` with a reason for a failed run.
    pub fn once_per_cluster<F, Fut>(&self, job: ClusterJob, run: F)
    where
        F: Fn(Lease) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        // On `/metrics` (all zeros) from the moment it is scheduled.
        self.count(&job.name, |_| {});
        let jobs = self.clone();
        let name = job.name.clone();
        let run = Arc::new(run);
        self.spawn(&name, move |cancel| async move {
            let mut slot = job.schedule.next_after(jiff::Timestamp::now());
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(until(slot)) => {}
                }
                let next = job.schedule.next_after(slot);
                loop {
                    match jobs.attempt(&job, slot, run.as_ref()).await {
                        Attempt::Ran | Attempt::Done => break,
                        Attempt::Busy | Attempt::Failed => {}
                    }
                    if until(next) <= job.retry {
                        break;
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(job.retry) => {}
                    }
                }
                slot = job.schedule.next_after(jiff::Timestamp::now().max(slot));
            }
        });
    }

    /// Runs `run` now under `job`'s lock, outside its schedule (an operator's "run now"):
    /// [`Attempt::Busy`] while a run of the job holds the lock. No slot is marked done.
    pub async fn run_now<F, Fut>(&self, job: &ClusterJob, run: &F) -> Attempt
    where
        F: Fn(Lease) -> Fut + Send + Sync,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        self.locked(job, jiff::Timestamp::now(), None, run).await
    }

    /// One attempt at `slot` of `job`: takes the lock, skips a slot already done, runs, marks
    /// the slot done and releases the lock. Public so an operator's "run now" and tests use the
    /// same path as the scheduler.
    pub async fn attempt<F, Fut>(&self, job: &ClusterJob, slot: jiff::Timestamp, run: &F) -> Attempt
    where
        F: Fn(Lease) -> Fut + Send + Sync,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let done_key = format!("job:{}:done:{}", job.name, slot.as_millisecond());
        self.locked(job, slot, Some(done_key), run).await
    }

    async fn locked<F, Fut>(
        &self,
        job: &ClusterJob,
        slot: jiff::Timestamp,
        done_key: Option<String>,
        run: &F,
    ) -> Attempt
    where
        F: Fn(Lease) -> Fut + Send + Sync,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        let kv = &self.0.kv;
        let key = format!("job:{}", job.name);
        let owner = owner_token();
        let fence = match kv.lock(&key, &owner, job.lock_ttl).await {
            Ok(Some(fence)) => fence,
            Ok(None) => {
                self.count(&job.name, |s| s.busy += 1);
                return Attempt::Busy;
            }
            Err(e) => {
                tracing::warn!(job = %job.name, error = %e, "job lock store unavailable");
                self.count(&job.name, |s| s.failed += 1);
                return Attempt::Failed;
            }
        };
        if let Some(done_key) = &done_key
            && matches!(kv.get(done_key).await, Ok(Some(_)))
        {
            let _ = kv.unlock(&key, &owner).await;
            return Attempt::Done;
        }
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew(
            Arc::clone(kv),
            key.clone(),
            owner.clone(),
            job.lock_ttl,
            lost.clone(),
        ));
        let lease = Lease {
            kv: Arc::clone(kv),
            key: key.clone(),
            owner: owner.clone(),
            fence,
            slot,
            lost: lost.clone(),
        };
        tracing::info!(job = %job.name, fence, slot = %slot, "job run starting");
        let started = std::time::Instant::now();
        let result = run(lease).await;
        renewer.abort();
        let seconds = started.elapsed().as_secs_f64();
        let outcome = match result {
            Ok(()) if !lost.is_cancelled() => {
                // Marked done through the lock: a holder that lost it marks nothing (a run
                // outside the schedule only checks that it still held the lock).
                let keep = Duration::from_secs(2 * 24 * 60 * 60);
                let marked = match &done_key {
                    Some(done_key) => kv.set_if_owner(&key, &owner, done_key, "1", keep).await,
                    None => kv.renew(&key, &owner, job.lock_ttl).await,
                };
                match marked {
                    Ok(true) => {
                        tracing::info!(job = %job.name, fence, slot = %slot, seconds, "job run done");
                        self.count(&job.name, |s| s.ran += 1);
                        self.record_seconds(&job.name, seconds);
                        Attempt::Ran
                    }
                    _ => {
                        tracing::warn!(job = %job.name, fence, "job lost its lock before it ended; its slot stays open");
                        self.count(&job.name, |s| s.lost += 1);
                        Attempt::Failed
                    }
                }
            }
            Ok(()) => {
                tracing::warn!(job = %job.name, fence, slot = %slot, "job lost its lock while running; its slot stays open");
                self.count(&job.name, |s| s.lost += 1);
                Attempt::Failed
            }
            Err(reason) if lost.is_cancelled() => {
                tracing::warn!(job = %job.name, fence, slot = %slot, %reason, "job lost its lock while running; its slot stays open");
                self.count(&job.name, |s| s.lost += 1);
                Attempt::Failed
            }
            Err(reason) => {
                tracing::error!(job = %job.name, fence, slot = %slot, %reason, "job run failed");
                self.count(&job.name, |s| s.failed += 1);
                self.record_seconds(&job.name, seconds);
                Attempt::Failed
            }
        };
        let _ = kv.unlock(&key, &owner).await;
        outcome
    }

    fn count(&self, job: &str, f: impl FnOnce(&mut JobStats)) {
        f(self.0.stats.lock().entry(job.to_owned()).or_default());
    }

    /// Cancels every task, the last started first, waiting up to `grace` for each; tasks still
    /// running then are named in the log and left to the runtime's end.
    pub async fn shutdown(&self, grace: Duration) {
        let tasks: Vec<Task> = std::mem::take(&mut *self.0.tasks.lock());
        for task in tasks.into_iter().rev() {
            task.cancel.cancel();
            let mut handle = task.handle;
            if tokio::time::timeout(grace, &mut handle).await.is_err() {
                tracing::warn!(job = %task.name, "background task did not stop in time");
                handle.abort();
            }
        }
        self.0.tracker.close();
    }

    /// Binds a node of this process (`{prefix}-` and a random part) to `topic` and, as the
    /// background task `task`, hands every envelope that arrives to `on_envelope` until the bus
    /// shuts down or the jobs stop; calls `on_bus_back` when the bus comes back after being down
    /// (what was published meanwhile may have been missed). The read cache's invalidations and
    /// token revocations listen this way.
    ///
    /// # Errors
    /// The bus refused the node or the binding.
    pub async fn listen_topic<E, B>(
        &self,
        bus: broker_bridge::Bus,
        prefix: &str,
        topic: &'static str,
        task: &'static str,
        mut on_envelope: E,
        mut on_bus_back: B,
    ) -> Result<(), broker_bridge::BusError>
    where
        E: FnMut(&broker_bridge::Envelope) + Send + 'static,
        B: FnMut() + Send + 'static,
    {
        let node =
            broker_bridge::NodeId::from(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
        let mut link = bus.open_node(node.clone()).await?;
        link.bind(topic).await?;
        tracing::info!(%node, topic, task, "listening on the bus");
        self.spawn(task, move |cancel| async move {
            let mut buf = Vec::new();
            let mut health = tokio::time::interval(Duration::from_secs(1));
            let mut was_down = false;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    n = link.recv_many(&mut buf, 256) => {
                        if n == 0 {
                            break;
                        }
                        for d in buf.drain(..) {
                            on_envelope(&d.envelope);
                        }
                    }
                    _ = health.tick() => {
                        let down = matches!(bus.health(), broker_bridge::Health::Down(_));
                        if was_down && !down {
                            on_bus_back();
                        }
                        was_down = down;
                    }
                }
            }
            tracing::debug!(%node, task, "bus listener stopped");
        });
        Ok(())
    }

    /// Copies the jobs' run counts into `registry`.
    pub fn update_metrics(&self, registry: &broker_bridge::MetricsRegistry) {
        let stats = self.0.stats.lock().clone();
        for (job, s) in &stats {
            for (outcome, n) in [
                ("ran", s.ran),
                ("failed", s.failed),
                ("busy", s.busy),
                ("lost", s.lost),
            ] {
                registry
                    .counter_with(
                        "instar_job_runs_total",
                        &[("job", job), ("outcome", outcome)],
                        "Cluster job attempts, by job and outcome (ran, failed, busy: another process held the lock, lost: the lock was taken over).",
                    )
                    .absolute(n);
            }
            // Shown (empty) before the first run too.
            let _ = registry.histogram_with(JOB_SECONDS.0, &[("job", job)], JOB_SECONDS.1);
        }
    }
}

/// Renews the lock every third of `ttl`; cancels `lost` once a renewal finds it taken over, or
/// once the store has been unreachable for a whole lease.
async fn renew(
    kv: Arc<dyn Kv>,
    key: String,
    owner: String,
    ttl: Duration,
    lost: CancellationToken,
) {
    let step = (ttl / 3).max(Duration::from_millis(10));
    let mut last_ok = std::time::Instant::now();
    loop {
        tokio::time::sleep(step).await;
        match kv.renew(&key, &owner, ttl).await {
            Ok(true) => last_ok = std::time::Instant::now(),
            Ok(false) => {
                lost.cancel();
                return;
            }
            Err(e) => {
                tracing::warn!(%key, error = %e, "job lock renewal failed");
                if last_ok.elapsed() >= ttl {
                    lost.cancel();
                    return;
                }
            }
        }
    }
}

fn until(t: jiff::Timestamp) -> Duration {
    let ms = t.as_millisecond() - jiff::Timestamp::now().as_millisecond();
    Duration::from_millis(u64::try_from(ms).unwrap_or(0)).max(Duration::from_millis(10))
}

/// A random owner token (128 bits, hex).
fn owner_token() -> String {
    use std::fmt::Write as _;
    let bytes: [u8; 16] = rand::random();
    let mut s = String::with_capacity(32);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemoryKv;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn daily_slots_follow_the_zone() {
        let s = Schedule::daily("03:00", "Asia/Seoul").unwrap();
        // 03:00 in Seoul is 18:00 UTC the day before.
        assert_eq!(
            s.slot_at(ts("2026-12-07T18:30:00Z")),
            ts("2026-12-07T18:00:00Z")
        );
        assert_eq!(
            s.slot_at(ts("2026-12-07T17:59:59Z")),
            ts("2026-12-06T18:00:00Z")
        );
        assert_eq!(
            s.next_after(ts("2026-12-07T17:59:59Z")),
            ts("2026-12-07T18:00:00Z")
        );
        assert_eq!(
            s.next_after(ts("2026-12-07T18:00:00Z")),
            ts("2026-12-08T18:00:00Z")
        );
        assert!(Schedule::daily("25:00", "UTC").is_err());
        assert!(Schedule::daily("03:00", "Mars/Olympus").is_err());
    }

    #[test]
    fn periodic_slots_are_aligned() {
        let s = Schedule::Every(Duration::from_secs(60));
        assert_eq!(
            s.slot_at(ts("2026-12-07T10:00:59Z")),
            ts("2026-12-07T10:00:00Z")
        );
        assert_eq!(
            s.next_after(ts("2026-12-07T10:00:59Z")),
            ts("2026-12-07T10:01:00Z")
        );
    }

    #[tokio::test]
    async fn a_slot_runs_once_and_a_busy_lock_is_left_alone() {
        let kv: Arc<dyn Kv> = Arc::new(MemoryKv::default());
        let (a, b) = (Jobs::new(Arc::clone(&kv)), Jobs::new(kv));
        let job = ClusterJob::new("t", Schedule::Every(Duration::from_secs(3600)));
        let slot = job.schedule.slot_at(jiff::Timestamp::now());
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        let run = move |_lease: Lease| {
            let r = Arc::clone(&r);
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(())
            }
        };
        let (x, y) = tokio::join!(a.attempt(&job, slot, &run), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            b.attempt(&job, slot, &run).await
        });
        assert_eq!((x, y), (Attempt::Ran, Attempt::Busy));
        assert_eq!(b.attempt(&job, slot, &run).await, Attempt::Done);
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        let registry = broker_bridge::MetricsRegistry::new();
        a.update_metrics(&registry);
        let text = registry.render();
        assert!(
            text.contains("instar_job_runs_total{job=\"t\",outcome=\"ran\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_failed_run_leaves_the_slot_open() {
        let jobs = Jobs::new(Arc::new(MemoryKv::default()));
        let job = ClusterJob::new("f", Schedule::Every(Duration::from_secs(3600)));
        let slot = job.schedule.slot_at(jiff::Timestamp::now());
        let fail = |_l: Lease| async { Err::<(), _>("boom".to_owned()) };
        assert_eq!(jobs.attempt(&job, slot, &fail).await, Attempt::Failed);
        let ok = |_l: Lease| async { Ok(()) };
        assert_eq!(jobs.attempt(&job, slot, &ok).await, Attempt::Ran);
    }

    #[tokio::test]
    async fn a_holder_that_stalls_past_its_lease_is_fenced_off() {
        let kv: Arc<dyn Kv> = Arc::new(MemoryKv::default());
        let (a, b) = (Jobs::new(Arc::clone(&kv)), Jobs::new(Arc::clone(&kv)));
        let mut job = ClusterJob::new("s", Schedule::Every(Duration::from_secs(3600)));
        job.lock_ttl = Duration::from_millis(150);
        let slot = job.schedule.slot_at(jiff::Timestamp::now());
        // The renewer cannot help a holder whose lock was stolen: simulate a stall past the
        // lease by deleting the lock, as its expiry would, and letting another holder take it.
        let kv2 = Arc::clone(&kv);
        let stalled = move |lease: Lease| {
            let kv = Arc::clone(&kv2);
            async move {
                let _ = kv.del("job:s").await;
                let other = kv
                    .lock("job:s", "successor", Duration::from_secs(5))
                    .await
                    .map_err(|e| e.0)?;
                assert!(other.is_some_and(|f| f > lease.fence()));
                let wrote = lease
                    .set("result", "late", Duration::from_secs(5))
                    .await
                    .map_err(|e| e.0)?;
                assert!(!wrote, "a fenced-off holder must not write");
                Ok(())
            }
        };
        assert_eq!(a.attempt(&job, slot, &stalled).await, Attempt::Failed);
        assert_eq!(kv.get("result").await.unwrap(), None);
        // The successor's lock was not released by the stalled run.
        assert_eq!(
            b.attempt(&job, slot, &|_l: Lease| async { Ok(()) }).await,
            Attempt::Busy
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_schedulers_run_each_slot_once() {
        let kv: Arc<dyn Kv> = Arc::new(MemoryKv::default());
        let slots = Arc::new(Mutex::new(Vec::new()));
        let mut all = Vec::new();
        for _ in 0..2 {
            let jobs = Jobs::new(Arc::clone(&kv));
            let mut job = ClusterJob::new("tick", Schedule::Every(Duration::from_millis(300)));
            job.retry = Duration::from_millis(20);
            let slots = Arc::clone(&slots);
            jobs.once_per_cluster(job, move |lease: Lease| {
                let slots = Arc::clone(&slots);
                async move {
                    slots.lock().push(lease.slot());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(())
                }
            });
            all.push(jobs);
        }
        tokio::time::sleep(Duration::from_millis(1400)).await;
        for jobs in &all {
            jobs.shutdown(Duration::from_secs(1)).await;
        }
        let ran = slots.lock().clone();
        let mut distinct = ran.clone();
        distinct.dedup();
        assert_eq!(ran, distinct, "a slot ran twice: {ran:?}");
        assert!(ran.len() >= 3, "slots run: {ran:?}");
    }

    #[tokio::test]
    async fn a_run_now_is_refused_while_the_lock_is_held() {
        let kv: Arc<dyn Kv> = Arc::new(MemoryKv::default());
        let jobs = Jobs::new(Arc::clone(&kv));
        let job = ClusterJob::new("manual", Schedule::Every(Duration::from_secs(60)));
        let ok = |_l: Lease| async { Ok(()) };
        kv.lock("job:manual", "someone", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(jobs.run_now(&job, &ok).await, Attempt::Busy);
        kv.unlock("job:manual", "someone").await.unwrap();
        assert_eq!(jobs.run_now(&job, &ok).await, Attempt::Ran);
        // Manual runs mark no slot: the scheduled run of this slot still happens.
        let slot = job.schedule.slot_at(jiff::Timestamp::now());
        assert_eq!(jobs.attempt(&job, slot, &ok).await, Attempt::Ran);
    }

    #[tokio::test]
    async fn shutdown_stops_tasks_last_started_first() {
        let jobs = Jobs::new(Arc::new(MemoryKv::default()));
        let order = Arc::new(Mutex::new(Vec::new()));
        for name in ["first", "second"] {
            let order = Arc::clone(&order);
            jobs.spawn(name, move |cancel| async move {
                cancel.cancelled().await;
                order.lock().push(name);
            });
        }
        let ticks = Arc::new(AtomicU32::new(0));
        let t = Arc::clone(&ticks);
        jobs.every("ticker", Duration::from_millis(10), move || {
            let t = Arc::clone(&t);
            async move {
                t.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(jobs.names(), ["first", "second", "ticker"]);
        jobs.shutdown(Duration::from_secs(1)).await;
        assert_eq!(*order.lock(), ["second", "first"]);
        assert!(ticks.load(Ordering::SeqCst) >= 2);
        assert!(jobs.names().is_empty());
    }
}
