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
/// How long the lock lives without a renewal (renewed every third of it while a run goes on).
const LOCK_TTL: Duration = Duration::from_secs(60);

/// The recompute as a cluster job on `schedule`.
#[must_use]
pub fn interest_job(schedule: Schedule) -> ClusterJob {
    let mut job = ClusterJob::new(INTEREST_JOB, schedule);
    job.lock_ttl = LOCK_TTL;
    job
}

/// Schedules the recompute on `ctx`'s jobs (and, always, the changed-profiles job).
pub fn schedule(ctx: &Ctx, schedule: Option<Schedule>) {
    let Some(feed) = ctx.extension::<Arc<Feed>>().cloned() else {
        return;
    };
    if let Some(schedule) = schedule {
        let store = ctx.store.clone();
        let f = Arc::clone(&feed);
        ctx.jobs
            .once_per_cluster(interest_job(schedule), move |lease| {
                recompute(store.clone(), Some(Arc::clone(&f)), lease)
            });
    }
    ctx.jobs.once_per_cluster(
        ClusterJob::new(CHANGED_JOB, Schedule::Every(CHANGED_EVERY)),
        move |lease| rebuild_changed(Arc::clone(&feed), lease),
    );
}

/// Runs the recompute now under the job's lock ([`Attempt::Busy`] while another run holds it).
pub async fn run_now(ctx: &Ctx) -> Attempt {
    let store = ctx.store.clone();
    let feed = ctx.extension::<Arc<Feed>>().cloned();
    let job = interest_job(Schedule::Every(Duration::from_secs(24 * 60 * 60)));
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
    let rows = super::batch::recompute_interests(&store, now, || async {
        !lease.lost().is_cancelled() && lease.still_held(LOCK_TTL).await.unwrap_or(false)
    })
    .await
    .map_err(|e| e.to_string())?;
    let Some(rows) = rows else {
        return Err("the lock was lost before the commit; rolled back".to_owned());
    };
    tracing::info!(rows, fence = lease.fence(), "interest scores recomputed");
    if let Some(feed) = feed {
        let (users, failed) = feed.rebuild_active(now, &lease).await?;
        tracing::info!(users, failed, fence = lease.fence(), "feed lists rebuilt");
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
