//! Chat (realtime.md §2, §4, §5): the REST routes, the `/app/send` and `/app/update/read` bus
//! handlers, the outbox, and the gateway's membership queries, each test on SQLite and MariaDB;
//! one module per section.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../common/mod.rs"]
mod common;

mod helpers;

mod batches;
mod gateway_queries;
mod group;
mod handlers;
mod history;
mod invite;
mod leave;
mod outbox;
mod rooms;
mod upload;
