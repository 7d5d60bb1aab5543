//! The home feed ([`routes`]), the interest scoring ([`batch`]: the admin trigger and the
//! recompute) and its schedule ([`jobs`]).

pub mod batch;
pub mod jobs;
pub mod routes;
