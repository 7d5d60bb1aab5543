//! The home feed ([`routes`]), the interest scoring ([`batch`]: the admin trigger and the
//! recompute), the recommendation lists ([`engine`]), where their state lives ([`state`]) and the
//! schedule ([`jobs`]).

pub mod batch;
pub mod engine;
pub mod jobs;
pub mod routes;
pub mod state;

pub use engine::Feed;
