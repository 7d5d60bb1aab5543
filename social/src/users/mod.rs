//! Users: profiles, follows, search and recommendations ([`routes`]).

pub mod routes;
