//! The feed's scheduled work: the interest recompute (contract §6.8, fixed per §7), once per
//! cluster at its slot (daily at 03:00 by default, `instar social`/`serve` settings), and on
//! demand through `GET /api/batch/run_scheduler` under the same lock, so a manual run and the
//! scheduled one never overlap (the trigger answers 409 `BR` while a run holds the lock).

use std::time::Duration;

use crate::ctx::Ctx;
use crate::jobs::{Attempt, ClusterJob, Lease, Schedule};
use crate::store::Store;
use crate::time::now_micros;

/// The job's name: its lock is `job:updateUserInterest` in the key-value store, its metrics
/// carry `job="updateUserInterest"`.
pub const INTEREST_JOB: &str = "updateUserInterest";
/// How long the lock lives without a renewal (renewed every third of it while a run goes on).
const LOCK_TTL: Duration = Duration::from_secs(60);

/// The recompute as a cluster job on `schedule`.
#[must_use]
pub fn interest_job(schedule: Schedule) -> ClusterJob {
    let mut job = ClusterJob::new(INTEREST_JOB, schedule);
    job.lock_ttl = LOCK_TTL;
    job
}

/// Schedules the recompute on `ctx`'s jobs.
pub fn schedule(ctx: &Ctx, schedule: Schedule) {
    let store = ctx.store.clone();
    ctx.jobs
        .once_per_cluster(interest_job(schedule), move |lease| {
            recompute(store.clone(), lease)
        });
}

/// Runs the recompute now under the job's lock ([`Attempt::Busy`] while another run holds it).
pub async fn run_now(ctx: &Ctx) -> Attempt {
    let store = ctx.store.clone();
    let job = interest_job(Schedule::Every(Duration::from_secs(24 * 60 * 60)));
    ctx.jobs
        .run_now(&job, &move |lease| recompute(store.clone(), lease))
        .await
}

/// One recompute: every interest score rewritten in one transaction, committed only while the
/// run still holds the lock (a run that stalled past its lease rolls back).
async fn recompute(store: Store, lease: Lease) -> Result<(), String> {
    let now = now_micros();
    let rows = super::batch::recompute_interests(&store, now, || async {
        !lease.lost().is_cancelled() && lease.still_held(LOCK_TTL).await.unwrap_or(false)
    })
    .await
    .map_err(|e| e.to_string())?;
    match rows {
        Some(rows) => {
            tracing::info!(rows, fence = lease.fence(), "interest scores recomputed");
            Ok(())
        }
        None => Err("the lock was lost before the commit; rolled back".to_owned()),
    }
}
