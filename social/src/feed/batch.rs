//! The batch triggers `GET /api/batch/run_scheduler` (#30) and `GET /api/auth/test` (#8).
//!
//! The original ran its whole batch synchronously for anyone (contract §7.3). Here both need the JWT
//! of an account whose stored role is `ADMIN`: no or a bad token is 401 `{"code":"AV"}`; any other
//! account (or a token whose account is gone) is 403 `{"code":"NP"}` ("no permission"). While a run
//! is in progress (triggered, or the scheduled one of [`super::jobs`]: they share one lock) another
//! trigger is 409 `{"code":"BR"}`. A run answers 200 with an empty body; a failed one 500 `DE`.
//!
//! A run is the interest-scoring step (contract §6.8, fixed per §7.14): scores are recomputed for
//! their windows (all rows deleted and re-inserted in one transaction, not added to the previous
//! run's), only tags of the interest's own type count, and scores are doubles. Each interest type
//! is one `INSERT … SELECT` over the events inside the window; there is no per-user loop. The
//! later steps (active users, top interests, read history, personalised feed cache) belong to the
//! personalised feed and are not run yet.

use std::future::Future;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::ctx::Ctx;
use crate::ctx::with_ctx;
use crate::http::{ApiError, ApiResult, authed, empty, finish, get};
use crate::jobs::Attempt;
use crate::store::feed::{AI_TAG_WEIGHTS, HASH_TAG_WEIGHTS, clear_interests, insert_interests};
use crate::store::{Store, StoreResult};

/// The routes of this module.
pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let run_scheduler = warp::path!("batch" / "run_scheduler");
    let auth_test = warp::path!("auth" / "test");
    run_scheduler
        .or(auth_test)
        .unify()
        .and(get())
        .and(with_ctx(ctx))
        .and(authed(ctx.tokens.clone(), ctx.revocation.clone()))
        .then(trigger)
        .map(finish)
        .boxed()
}

#[utoipa::path(
    get, path = "/api/batch/run_scheduler", tag = "batch",
    security(("bearer" = [])),
    description = "Runs the interest recompute now (administrators only). Also served at `/api/auth/test`.",
    responses(
        (status = 200, description = "the run finished (empty body)"),
        (status = 403, body = crate::http::doc::Refused, description = "`NP`: the caller is not an administrator"),
        (status = 409, body = crate::http::doc::Refused, description = "`BR`: a run is in progress"),
    )
)]
async fn trigger(ctx: Ctx, user: String) -> ApiResult {
    let admin = ctx
        .store
        .user_by_id(&user)
        .await?
        .is_some_and(|u| u.role == "ADMIN");
    if !admin {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "NP"));
    }
    match super::jobs::run_now(&ctx).await {
        Attempt::Ran | Attempt::Done => {
            tracing::info!(by = %user, "interest recompute triggered");
            empty()
        }
        Attempt::Busy => Err(ApiError::new(StatusCode::CONFLICT, "BR")),
        Attempt::Failed => Err(ApiError::database()),
    }
}

/// Recomputes every interest score at `now` (µs) in one transaction; returns the rows written.
pub async fn run_interest_scoring(store: &Store, now: i64) -> StoreResult<u64> {
    let rows = recompute_interests(store, now, || async { true }).await?;
    Ok(rows.unwrap_or(0))
}

/// [`run_interest_scoring`], committed only if `may_commit` still says yes once the rows are
/// written (`None`: rolled back).
pub async fn recompute_interests<F, Fut>(
    store: &Store,
    now: i64,
    may_commit: F,
) -> StoreResult<Option<u64>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = bool>,
{
    let mut tx = store.write().await?;
    clear_interests(tx.conn()).await?;
    let mut rows = insert_interests(tx.conn(), &HASH_TAG_WEIGHTS, now).await?;
    rows += insert_interests(tx.conn(), &AI_TAG_WEIGHTS, now).await?;
    if !may_commit().await {
        return Ok(None);
    }
    tx.commit().await?;
    Ok(Some(rows))
}
