//! The home feed ([`routes`]) and the interest scoring batch ([`batch`]).

pub mod batch;
pub mod routes;
