//! The feed's scheduled work, each once per cluster under its lock in the key-value store:
//! - `updateUserInterest`: the interest recompute (contract §6.8, fixed per §7), then every active
//!   user's list (§6.9–6.10, fixed), daily at its slot (03:00 by default, `instar social`/`serve`
//!   settings), and on demand through `GET /api/batch/run_scheduler` under the same lock, so a
//!   manual run and the scheduled one never overlap (the trigger answers 409 `BR` while a run
//!   holds the lock);
//! - `rebuildChangedFeeds`: every [`CHANGED_EVERY`], the lists of users whose profile changed
//!   (a like, comment or view) and who have not loaded their feed since (a fresh load rebuilds
//!   it at once).
//!
//! Lists are written fenced: only while the run still holds its lock.

use std::sync::Arc;
use std::time::Duration;

use super::engine::Feed;
use crate::ctx::Ctx;
use crate::jobs::{Attempt, ClusterJob, Lease, Schedule};
use crate::store::Store;
use crate::time::now_micros;

/// The job's name: its lock is `job:updateUserInterest` in the key-value store, its metrics
/// carry `job="updateUserInterest"`.
pub const INTEREST_JOB: &str = "updateUserInterest";
/// The changed-profiles job's name.
pub const CHANGED_JOB: &str = "rebuildChangedFeeds";
/// How often the changed-profiles job runs.
pub const CHANGED_EVERY: Duration = Duration::from_secs(60);
/// Users per changed-profiles run.
const CHANGED_BATCH: usize = 1_000;
/// How long the lock lives without a renewal by default (renewed every third of it while a run
/// goes on).
pub const LOCK_TTL: Duration = Duration::from_secs(60);
/// The shortest lock lifetime accepted.
pub const MIN_LOCK_TTL: Duration = Duration::from_millis(300);

/// How the feed's cluster jobs run (settings `feed_job_lock_ttl_ms`, `feed_test_user_delay_ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedJobSettings {
    /// Lifetime of the jobs' lock without a renewal: how long a dead holder keeps its run from
    /// the other processes (at least [`MIN_LOCK_TTL`]).
    pub lock_ttl: Duration,
    /// Testing only: a pause before each user's list in the recompute's rebuild of every
    /// active user, so that a run lasts long enough to be interrupted. Zero in production.
    pub user_delay: Duration,
}

impl Default for FeedJobSettings {
    fn default() -> Self {
        FeedJobSettings {
            lock_ttl: LOCK_TTL,
            user_delay: Duration::ZERO,
        }
    }
}

impl FeedJobSettings {
    /// `job` with these settings: the lock's lifetime, and a retry within a quarter of it (at
    /// most the default 5 s), so a dead holder's slot is taken over soon after its lock expires.
    #[must_use]
    pub fn apply(&self, mut job: ClusterJob) -> ClusterJob {
        job.lock_ttl = self.lock_ttl.max(MIN_LOCK_TTL);
        job.retry = (job.lock_ttl / 4).min(job.retry);
        job
    }
}

/// The recompute as a cluster job on `schedule`, with the default settings.
#[must_use]
pub fn interest_job(schedule: Schedule) -> ClusterJob {
    FeedJobSettings::default().apply(ClusterJob::new(INTEREST_JOB, schedule))
}

/// Schedules the recompute on `ctx`'s jobs (and, always, the changed-profiles job).
pub fn schedule(ctx: &Ctx, schedule: Option<Schedule>) {
    let Some(feed) = ctx.extension::<Arc<Feed>>().cloned() else {
        return;
    };
    let settings = feed.job_settings();
    if let Some(schedule) = schedule {
        let store = ctx.store.clone();
        let f = Arc::clone(&feed);
        tracing::info!(job = INTEREST_JOB, ?schedule, lock_ttl = ?settings.lock_ttl, "job scheduled");
        ctx.jobs.once_per_cluster(
            settings.apply(ClusterJob::new(INTEREST_JOB, schedule)),
            move |lease| recompute(store.clone(), Some(Arc::clone(&f)), lease),
        );
    }
    ctx.jobs.once_per_cluster(
        settings.apply(ClusterJob::new(CHANGED_JOB, Schedule::Every(CHANGED_EVERY))),
        move |lease| rebuild_changed(Arc::clone(&feed), lease),
    );
}

/// Runs the recompute now under the job's lock ([`Attempt::Busy`] while another run holds it).
pub async fn run_now(ctx: &Ctx) -> Attempt {
    let store = ctx.store.clone();
    let feed = ctx.extension::<Arc<Feed>>().cloned();
    let settings = feed.as_ref().map(|f| f.job_settings()).unwrap_or_default();
    let job = settings.apply(ClusterJob::new(
        INTEREST_JOB,
        Schedule::Every(Duration::from_secs(24 * 60 * 60)),
    ));
    ctx.jobs
        .run_now(&job, &move |lease| {
            recompute(store.clone(), feed.clone(), lease)
        })
        .await
}

/// One run: every interest score rewritten in one transaction, committed only while the run
/// still holds the lock (a run that stalled past its lease rolls back); then every active user's
/// list, each written only while the run holds the lock.
async fn recompute(store: Store, feed: Option<Arc<Feed>>, lease: Lease) -> Result<(), String> {
    let now = now_micros();
    let ttl = feed
        .as_ref()
        .map_or(LOCK_TTL, |f| f.job_settings().lock_ttl.max(MIN_LOCK_TTL));
    let rows = super::batch::recompute_interests(&store, now, || async {
        !lease.lost().is_cancelled() && lease.still_held(ttl).await.unwrap_or(false)
    })
    .await
    .map_err(|e| e.to_string())?;
    let Some(rows) = rows else {
        lease.lost().cancel();
        return Err("the lock was lost before the commit; rolled back".to_owned());
    };
    tracing::info!(rows, fence = lease.fence(), slot = %lease.slot(), "interest scores recomputed");
    if let Some(feed) = feed {
        let (users, failed) = feed.rebuild_active(now, &lease).await?;
        tracing::info!(users, failed, fence = lease.fence(), slot = %lease.slot(), "feed lists rebuilt");
    }
    Ok(())
}

async fn rebuild_changed(feed: Arc<Feed>, lease: Lease) -> Result<(), String> {
    let n = feed
        .rebuild_changed(now_micros(), CHANGED_BATCH, &lease)
        .await?;
    if n > 0 {
        tracing::debug!(users = n, "changed feed lists rebuilt");
    }
    Ok(())
}
