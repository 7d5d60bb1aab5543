//! The `/api` route table (paths relative to `/api`): one line per feature, each feature's routes
//! in its own folder.

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::ctx::Ctx;
use crate::{accounts, alarms, chat, feed, openapi, posts, users};

/// All routes, without the `/api` prefix.
///
/// Each module's routes sit behind a check of the first path segment, so a request is matched
/// against one module's routes (two for the shared `auth` and `file` prefixes) rather than tried
/// against all sixty in turn: a request for the last route, or for no route at all, used to spend
/// more time in route matching than in its handler. The hottest modules come first.
pub fn all(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    under(&["feed"])
        .and(feed::routes::routes(ctx))
        .or(under(&["post"]).and(posts::routes::routes(ctx)))
        .unify()
        .or(under(&["user", "file"]).and(users::routes::routes(ctx)))
        .unify()
        .or(under(&["chat", "file"]).and(chat::routes::routes(ctx)))
        .unify()
        .or(under(&["alarm"]).and(alarms::routes::routes(ctx)))
        .unify()
        .or(under(&["auth"]).and(accounts::routes::routes(ctx)))
        .unify()
        .or(under(&["auth"]).and(accounts::google::routes(ctx)))
        .unify()
        .or(under(&["batch", "auth"]).and(feed::batch::routes(ctx)))
        .unify()
        .or(under(&["openapi.json", "docs"]).and(openapi::routes()))
        .unify()
        .boxed()
}

/// Passes (consuming nothing) when the first remaining path segment is one of `prefixes`; else
/// rejects as not found, the rejection a route of another path gives.
fn under(
    prefixes: &'static [&'static str],
) -> impl Filter<Extract = (), Error = warp::Rejection> + Clone {
    warp::path::peek()
        .and_then(move |rest: warp::path::Peek| {
            let first = rest.segments().next().unwrap_or("");
            std::future::ready(if prefixes.contains(&first) {
                Ok(())
            } else {
                Err(warp::reject::not_found())
            })
        })
        .untuple_one()
}
