//! `GET /api/alarm/getList` (contract §3.1 #29, §6.14).
//!
//! The newest 20 alarms of the caller. Targets are loaded in batches, one statement per alarm type
//! present (not 2–3 per alarm as in the original). An alarm whose target is gone (an unfollow, an
//! unlike, a deleted comment or post) is left out and deleted; a type whose batch fails to load is
//! left out for this call (logged). The list itself never fails because of one row.

use std::collections::HashMap;

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::ctx::Ctx;
use crate::ctx::with_ctx;
use crate::http::{ApiResult, authed, finish, get, sc};
use crate::model::Linked;
use crate::model::{Alarm, AlarmType, SimpleUser};
use crate::store::StoreResult;
use crate::store::alarms::{self, AlarmRow};

/// Alarms per list.
pub const ALARM_LIST: i64 = 20;

/// The routes of this module.
pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    warp::path!("alarm" / "getList")
        .and(get())
        .and(with_ctx(ctx))
        .and(authed(ctx.tokens.clone(), ctx.revocation.clone()))
        .then(list)
        .map(finish)
        .boxed()
}

/// A batch load: `Some(map)` by reference id, or `None` when it failed (the rows are skipped,
/// not purged).
fn loaded<T>(
    kind: &str,
    r: StoreResult<Vec<T>>,
    id: impl Fn(&T) -> i64,
) -> Option<HashMap<i64, T>> {
    match r {
        Ok(rows) => Some(rows.into_iter().map(|t| (id(&t), t)).collect()),
        Err(e) => {
            tracing::error!(error = %e, kind, "alarm targets not loaded");
            None
        }
    }
}

fn refs(rows: &[AlarmRow], kind: AlarmType) -> Vec<i64> {
    let mut ids: Vec<i64> = rows
        .iter()
        .filter(|r| AlarmType::parse(&r.alarm_type) == Some(kind))
        .map(|r| r.reference_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[utoipa::path(
    get, path = "/api/alarm/getList", tag = "alarms",
    security(("bearer" = [])),
    responses((status = 200, body = crate::http::doc::ListOf<crate::model::Alarm>))
)]
async fn list(ctx: Ctx, user: String) -> ApiResult {
    let store = &ctx.store;
    let rows = store.alarms_latest(&user, ALARM_LIST).await?;
    let follow_ids = refs(&rows, AlarmType::Follow);
    let tag_ids = refs(&rows, AlarmType::PostTag);
    let like_ids = refs(&rows, AlarmType::PostLikeReceive);
    let comment_ids = refs(&rows, AlarmType::PostCommentReceive);
    let (follows, tags, likes, comments) = tokio::join!(
        store.alarm_follow_refs(&follow_ids),
        store.alarm_tag_refs(&tag_ids),
        store.likes_by_ids(&like_ids),
        store.comments_by_ids(&comment_ids),
    );
    let follows = loaded("FOLLOW", follows, |f| f.id);
    let tags = loaded("POST_TAG", tags, |t| t.id);
    let likes = loaded("POST_LIKE_RECEIVE", likes, |l| l.id);
    let comments = loaded("POST_COMMENT_RECEIVE", comments, |c| c.id);

    let mut out: Vec<Alarm> = Vec::with_capacity(rows.len());
    let mut stale: Vec<i64> = Vec::new();
    for row in &rows {
        let at = row.create_at;
        let r = row.reference_id;
        // Outer None: the type's batch failed (skip); inner None: the target is gone (purge).
        let alarm: Option<Option<Alarm>> = match AlarmType::parse(&row.alarm_type) {
            Some(AlarmType::Follow) => follows.as_ref().map(|m| {
                m.get(&r).map(|f| Alarm::Follow {
                    create_at: at,
                    sender_id: f.sender_id.clone(),
                    sender_profile_image: f.sender_profile_image.clone(),
                })
            }),
            Some(AlarmType::PostTag) => tags.as_ref().map(|m| {
                m.get(&r).map(|t| Alarm::PostTag {
                    create_at: at,
                    sender_id: t.sender_id.clone(),
                    sender_profile_image: t.sender_profile_image.clone(),
                    post_id: t.post_id,
                })
            }),
            Some(AlarmType::PostLikeReceive) => likes.as_ref().map(|m| {
                m.get(&r).map(|l| Alarm::PostLike {
                    create_at: at,
                    user: SimpleUser {
                        id: l.user_id.clone(),
                        name: l.name.clone(),
                        profile_image: l.profile_image.clone(),
                        following: false,
                    },
                    post_id: l.post_id,
                })
            }),
            Some(AlarmType::PostCommentReceive) => comments.as_ref().map(|m| {
                m.get(&r).map(|c| Alarm::PostComment {
                    create_at: at,
                    post: c.clone(),
                    post_id: c.post_id,
                })
            }),
            None => None,
        };
        match alarm {
            Some(Some(a)) => out.push(a),
            Some(None) => stale.push(row.id),
            None => {}
        }
    }
    if !stale.is_empty() {
        let purge = async {
            let mut tx = store.write().await?;
            let n = alarms::delete_ids(tx.conn(), &stale).await?;
            tx.commit().await?;
            StoreResult::Ok(n)
        };
        match purge.await {
            Ok(n) => tracing::debug!(n, "stale alarms purged"),
            Err(e) => tracing::warn!(error = %e, "stale alarms not purged"),
        }
    }
    sc(&json!({ "list": out.linked(ctx.media.links()) }))
}
