//! Liveness and readiness of a process that runs the social service (`instar serve`, `instar
//! social`): `GET /health/live` answers 200 while the process serves; `GET /health/ready` (and
//! `/health`) 200 `ready` only while every dependency the service uses answers (the database, the
//! key-value store, media storage, the bus), else 503 naming each failing part, and 503 while the
//! process drains for shutdown. Each check is bounded by [`CHECK_TIMEOUT`], all run at once.

use std::time::Duration;

use broker_bridge::Health;
use warp::Filter;
use warp::Reply as _;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::ctx::Ctx;

/// The longest one dependency may take to answer a readiness check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One dependency's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `database`, `key-value store`, `media storage` or `bus`.
    pub part: &'static str,
    /// Why it is not ready (`None`: ready).
    pub error: Option<String>,
}

async fn bounded<E: std::fmt::Display>(
    part: &'static str,
    f: impl std::future::Future<Output = Result<(), E>>,
) -> Check {
    let error = match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
    };
    Check { part, error }
}

impl Ctx {
    /// Checks every dependency at once.
    pub async fn readiness(&self) -> Vec<Check> {
        let database = bounded("database", async {
            sqlx::query("SELECT 1")
                .execute(self.store.pool())
                .await
                .map(|_| ())
        });
        let kv = bounded("key-value store", async {
            self.kv.get("health:probe").await.map(|_| ())
        });
        let media = bounded("media storage", self.media.storage().check());
        let (database, kv, media) = tokio::join!(database, kv, media);
        let bus = Check {
            part: "bus",
            error: match self.outbox.bus().health() {
                Health::Down(why) => Some(why),
                Health::Up | Health::Degraded(_) => None,
            },
        };
        vec![database, kv, media, bus]
    }
}

/// The answer to a readiness request: 200 `ready`, or 503 with `draining` or each failing part.
#[must_use]
pub fn report(checks: &[Check], draining: bool) -> (StatusCode, String) {
    if draining {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining\n".to_owned(),
        );
    }
    let failing: Vec<String> = checks
        .iter()
        .filter_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.part)))
        .collect();
    if failing.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", failing.join("; ")),
        )
    }
}

/// `/health/live`, `/health/ready` and `/health` (the same as ready) for `ctx`; `draining` says
/// whether the process is shutting down.
pub fn routes(
    ctx: &Ctx,
    draining: impl Fn() -> bool + Clone + Send + Sync + 'static,
) -> BoxedFilter<(Response,)> {
    let live = warp::path!("health" / "live")
        .and(warp::get())
        .map(|| warp::reply::with_status("live\n", StatusCode::OK).into_response());
    let ctx = ctx.clone();
    let ready = warp::path("health")
        .and(
            warp::path("ready")
                .and(warp::path::end())
                .or(warp::path::end())
                .unify(),
        )
        .and(warp::get())
        .then(move || {
            let (ctx, draining) = (ctx.clone(), draining.clone());
            async move {
                let (status, text) = report(&ctx.readiness().await, draining());
                if status != StatusCode::OK {
                    tracing::warn!(%text, "not ready");
                }
                warp::reply::with_status(text, status).into_response()
            }
        });
    live.or(ready).unify().boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_name_each_failing_part() {
        let ok = |part| Check { part, error: None };
        let checks = vec![
            ok("database"),
            Check {
                part: "bus",
                error: Some("broker unreachable".into()),
            },
            Check {
                part: "media storage",
                error: Some("bucket b: timeout".into()),
            },
        ];
        let (status, text) = report(&checks, false);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            text,
            "not ready: bus: broker unreachable; media storage: bucket b: timeout\n"
        );
        assert_eq!(
            report(&[ok("database")], false),
            (StatusCode::OK, "ready\n".into())
        );
        assert_eq!(
            report(&[ok("database")], true).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
