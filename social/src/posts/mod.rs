//! Posts: create, like, comment, view ([`routes`]), and how a post is rendered for the feed and
//! the detail view ([`view`]).

pub mod doc;
pub mod routes;
pub mod view;
