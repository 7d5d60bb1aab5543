//! Social REST API (wire-compatible with the mjinsta frontend), its SQL store, media storage, and the
//! live pushes it makes through the bus.
//!
//! Layout (docs/architecture.md has the map), top to bottom; a module imports only from its own
//! layer or the ones below, which `tests/layout.rs` checks:
//! * **composition**: [`app`] (configuration, start-up, the assembled routes) and [`api`] (the
//!   route table, one line per feature);
//! * **features**, one folder each with its routes and use-cases: [`accounts`], [`users`],
//!   [`posts`], [`feed`], [`alarms`], [`chat`];
//! * **machinery**, which never names a feature and takes the narrow handles it needs:
//!   [`ctx`] (the shared state), [`cache`], [`http`], [`tokens`], [`password`], [`kv`], [`mail`],
//!   [`media`], [`outbox`] (every push after a commit), [`jobs`] (every background
//!   task), [`quotas`], [`public_url`], [`health`], and [`store`] (all SQL);
//! * **plain data**: [`model`] (the contract's JSON objects), [`json`], [`time`].

pub mod api;
pub mod app;
pub mod openapi;

pub mod accounts;
pub mod alarms;
pub mod chat;
pub mod feed;
pub mod posts;
pub mod tagging;
pub mod users;

pub mod cache;
pub mod ctx;
pub mod health;
pub mod http;
pub mod jobs;
pub mod kv;
pub mod mail;
pub mod media;
pub mod outbox;
pub mod password;
pub mod public_url;
pub mod quotas;
pub mod revocation;
pub mod store;
pub mod tokens;

pub mod json;
pub mod model;
pub mod time;

pub use app::{SocialConfig, StartError};
pub use ctx::{Ctx, Limits};
