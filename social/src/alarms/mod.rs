//! Alarms: the stored list and its read marks ([`routes`]); pushes go through the outbox.

pub mod routes;
