//! Every `/api` route (paths relative to `/api`), one submodule per controller of the original.

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::app::Ctx;

pub mod alarms;
pub mod auth;
pub mod batch;
pub mod chat;
pub mod feed;
pub mod posts;
pub mod users;

/// All routes, without the `/api` prefix.
pub fn all(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    auth::routes(ctx)
        .or(users::routes(ctx))
        .unify()
        .or(posts::routes(ctx))
        .unify()
        .or(feed::routes(ctx))
        .unify()
        .or(alarms::routes(ctx))
        .unify()
        .or(batch::routes(ctx))
        .unify()
        .or(chat::routes(ctx))
        .unify()
        .boxed()
}

/// A filter handing out a clone of the context.
pub fn with_ctx(
    ctx: &Ctx,
) -> impl Filter<Extract = (Ctx,), Error = std::convert::Infallible> + Clone + use<> {
    let ctx = ctx.clone();
    warp::any().map(move || ctx.clone())
}
