//! The batch triggers `GET /api/batch/run_scheduler` (#30) and `GET /api/auth/test` (#8).
//!
//! The original ran its whole batch synchronously for anyone (contract §7.3). Here both need the JWT
//! of an account whose stored role is `ADMIN`: no or a bad token is 401 `{"code":"AV"}`; any other
//! account (or a token whose account is gone) is 403 `{"code":"NP"}` ("no permission"). While a run
//! is in progress another trigger is 409 `{"code":"BR"}`. A run answers 200 with an empty body.
//!
//! A run is the interest-scoring step (contract §6.8, fixed per §7.14): scores are recomputed for
//! their windows (all rows deleted and re-inserted in one transaction, not added to the previous
//! run's), only tags of the interest's own type count, and scores are doubles. Each interest type
//! is one `INSERT … SELECT` over the events inside the window; there is no per-user loop. The
//! later steps (active users, top interests, read history, personalised feed cache) belong to the
//! personalised feed and are not run yet.

use std::time::Duration;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::ctx::Ctx;
use crate::ctx::with_ctx;
use crate::http::{ApiError, ApiResult, authed, empty, finish, get};
use crate::store::feed::{AI_TAG_WEIGHTS, HASH_TAG_WEIGHTS, clear_interests, insert_interests};
use crate::store::{Store, StoreResult};
use crate::time::now_micros;

/// Key of the run lock in the key-value store.
const LOCK_KEY: &str = "batch:updateUserInterest";
/// Longest a run may hold the lock (the original's ShedLock `lockAtMostFor`, 14 minutes).
const LOCK_TTL: Duration = Duration::from_secs(14 * 60);

/// The routes of this module.
pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let run_scheduler = warp::path!("batch" / "run_scheduler");
    let auth_test = warp::path!("auth" / "test");
    run_scheduler
        .or(auth_test)
        .unify()
        .and(get())
        .and(with_ctx(ctx))
        .and(authed(ctx.tokens.clone()))
        .then(trigger)
        .map(finish)
        .boxed()
}

async fn trigger(ctx: Ctx, user: String) -> ApiResult {
    let admin = ctx
        .store
        .user_by_id(&user)
        .await?
        .is_some_and(|u| u.role == "ADMIN");
    if !admin {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "NP"));
    }
    match ctx.kv.incr(LOCK_KEY, LOCK_TTL).await {
        Ok(1) => {}
        Ok(_) => return Err(ApiError::new(StatusCode::CONFLICT, "BR")),
        Err(e) => {
            tracing::error!(error = %e, "batch lock unavailable");
            return Err(ApiError::database());
        }
    }
    let result = run_interest_scoring(&ctx.store, now_micros()).await;
    if let Err(e) = ctx.kv.del(LOCK_KEY).await {
        tracing::warn!(error = %e, "batch lock not released; it expires by itself");
    }
    let rows = result?;
    tracing::info!(rows, by = %user, "interest scores recomputed");
    empty()
}

/// Recomputes every interest score at `now` (µs) in one transaction; returns the rows written.
pub async fn run_interest_scoring(store: &Store, now: i64) -> StoreResult<u64> {
    let mut tx = store.write().await?;
    clear_interests(tx.conn()).await?;
    let mut rows = insert_interests(tx.conn(), &HASH_TAG_WEIGHTS, now).await?;
    rows += insert_interests(tx.conn(), &AI_TAG_WEIGHTS, now).await?;
    tx.commit().await?;
    Ok(rows)
}
