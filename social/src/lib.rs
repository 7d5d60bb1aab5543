//! Social REST API (wire-compatible with the mjinsta frontend), its SQL store, media storage, and the
//! live pushes it makes through the bus.
//!
//! Layout: [`app`] holds configuration and shared state and assembles the routes; [`routes`] has one
//! module per controller of the original; [`store`] one module per domain with one function per SQL
//! statement; [`http`] the envelope, errors and shared filters. [`accounts`] is the first feature
//! folder of the feature-first layout (Google sign-in); the rest is not reorganised yet.

pub mod accounts;
pub mod app;
pub mod cache;
pub mod chat;
pub mod health;
pub mod http;
pub mod json;
pub mod kv;
pub mod mail;
pub mod media;
pub mod model;
pub mod notify;
pub mod password;
pub mod public_url;
pub mod quotas;
pub mod routes;
pub mod store;
pub mod time;
pub mod tokens;

pub use app::{Ctx, Limits, SocialConfig, StartError};
