//! Token revocation: every user row has a `token_version`, every token carries the version it was
//! signed at (`ver`, [`crate::tokens::Claims::ver`]), and a token whose version is below the
//! user's current one is refused. A password change and signing out everywhere raise the
//! version, which revokes every token issued before.
//!
//! * **Checked on every authenticated REST request**, against the version this process knows:
//!   each user's version is read from the database once and kept for [`CHECK_TTL`].
//! * **Through the bus at once**: the process that raised a version publishes it on
//!   [`TOKENS_TOPIC`] (a name no STOMP client can subscribe to); every social process applies it
//!   to what it keeps, and every gateway closes the user's live STOMP sessions opened with an
//!   older token and refuses such tokens on CONNECT. A lost message (the bus was down) is caught
//!   up within [`CHECK_TTL`], and the whole cache is dropped when the bus comes back.
//! * **Tokens from before versions** (no `ver` claim) count as version 0, which is every user's
//!   version until the first password change or sign-out-everywhere: they keep working until
//!   then, and are refused after it like any other older token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker_bridge::{Bus, Envelope, Target};
use parking_lot::Mutex;
use quick_cache::sync::Cache;

use crate::store::{Store, StoreError};

/// The bus topic carrying raised token versions to every social process and gateway.
pub const TOKENS_TOPIC: &str = "instar:tokens";
/// Header of a [`TOKENS_TOPIC`] envelope naming the user.
pub const USER_HEADER: &str = "x-instar-user";
/// Header of a [`TOKENS_TOPIC`] envelope carrying the user's new token version (decimal).
pub const VERSION_HEADER: &str = "x-instar-token-version";
/// How long a user's version read from the database is trusted without the bus: it bounds how
/// long a revocation whose bus message was lost goes unnoticed by another process.
pub const CHECK_TTL: Duration = Duration::from_secs(10);
/// Users whose version is kept (about 100 bytes each).
pub const KEPT: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Known {
    version: u64,
    at: Instant,
}

/// Counters on `/metrics`.
#[derive(Debug, Default)]
struct Counters {
    revocations: AtomicU64,
    refused: AtomicU64,
    publish_failures: AtomicU64,
    lookups: AtomicU64,
}

/// The token versions this process knows, and the bus they travel on.
pub struct Revocation {
    store: Store,
    bus: Option<Bus>,
    known: Cache<String, Known>,
    /// Serialises raising a kept version with filling one from the database, so a fill that
    /// read before a raise never replaces the raised version.
    raise: Mutex<()>,
    /// Raises seen so far: a fill started before a raise is not kept.
    raises: AtomicU64,
    counters: Counters,
}

impl std::fmt::Debug for Revocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocation")
            .field("kept", &self.known.len())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The database could not tell the user's version.
    #[error("token version unavailable: {0}")]
    Store(#[from] StoreError),
}

impl Revocation {
    /// Versions read from `store`; raises are published on `bus` when there is one.
    #[must_use]
    pub fn new(store: Store, bus: Option<Bus>) -> Self {
        Self {
            store,
            bus,
            known: Cache::new(KEPT),
            raise: Mutex::new(()),
            raises: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    /// `user`'s current token version (0 for an unknown user: the routes answer for those).
    ///
    /// # Errors
    /// The database failed.
    pub async fn current(&self, user: &str) -> Result<u64, RevocationError> {
        if let Some(k) = self.known.get(user)
            && k.at.elapsed() < CHECK_TTL
        {
            return Ok(k.version);
        }
        let before = self.raises.load(Ordering::Acquire);
        self.counters.lookups.fetch_add(1, Ordering::Relaxed);
        let read = self.store.token_version(user).await?;
        let version = read.map_or(0, |v| u64::try_from(v).unwrap_or(0));
        let _guard = self.raise.lock();
        if self.raises.load(Ordering::Acquire) == before {
            self.known.insert(
                user.to_owned(),
                Known {
                    version,
                    at: Instant::now(),
                },
            );
        }
        Ok(version)
    }

    /// Whether a token of `user` signed at `version` is still valid; counts a refusal.
    ///
    /// # Errors
    /// The database failed (callers refuse the request: revocation fails closed).
    pub async fn accepts(&self, user: &str, version: u64) -> Result<bool, RevocationError> {
        let ok = version >= self.current(user).await?;
        if !ok {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%user, version, "revoked token refused");
        }
        Ok(ok)
    }

    /// Applies a raised version (ours or another process's): kept as is unless a higher one is
    /// known already.
    pub fn note(&self, user: &str, version: u64) {
        let _guard = self.raise.lock();
        self.raises.fetch_add(1, Ordering::AcqRel);
        let kept = self.known.get(user).map_or(0, |k| k.version);
        self.known.insert(
            user.to_owned(),
            Known {
                version: version.max(kept),
                at: Instant::now(),
            },
        );
    }

    /// Call after committing a raised version: applies it here, then tells every process.
    pub async fn raised(&self, user: &str, version: u64) {
        self.counters.revocations.fetch_add(1, Ordering::Relaxed);
        self.note(user, version);
        tracing::info!(%user, version, "earlier tokens revoked");
        let Some(bus) = &self.bus else { return };
        let body = serde_json::json!({ "user": user, "version": version }).to_string();
        let env = Envelope::new(format!("/topic/{TOKENS_TOPIC}"), body)
            .with_content_type("application/json")
            .with_header(USER_HEADER, user)
            .with_header(VERSION_HEADER, version.to_string());
        if let Err(e) = bus.publish(Target::topic(TOKENS_TOPIC), env).await {
            self.counters
                .publish_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, %user, "token revocation not published; other processes notice within the check TTL");
        }
    }

    /// Forgets every kept version (the bus came back: raises may have been missed).
    pub fn clear(&self) {
        let _guard = self.raise.lock();
        self.raises.fetch_add(1, Ordering::AcqRel);
        self.known.clear();
    }

    /// The user and version of a [`TOKENS_TOPIC`] envelope.
    #[must_use]
    pub fn decode(env: &Envelope) -> Option<(String, u64)> {
        let header = |name: &str| {
            env.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let user = header(USER_HEADER)?;
        let version = header(VERSION_HEADER)?.parse().ok()?;
        (!user.is_empty()).then(|| (user.to_owned(), version))
    }

    /// Binds a node of this process to [`TOKENS_TOPIC`] and applies what arrives until the bus
    /// shuts down; forgets everything when the bus comes back after being down.
    ///
    /// # Errors
    /// The bus refused the node or the binding.
    pub async fn listen(
        self: Arc<Self>,
        bus: Bus,
        jobs: &crate::jobs::Jobs,
    ) -> Result<(), broker_bridge::BusError> {
        let back = Arc::clone(&self);
        jobs.listen_topic(
            bus,
            "social-tokens",
            TOKENS_TOPIC,
            "token-revocations",
            move |envelope| match Self::decode(envelope) {
                Some((user, version)) => self.note(&user, version),
                None => tracing::warn!("malformed token revocation ignored"),
            },
            move || {
                tracing::info!(
                    "bus back: kept token versions dropped (revocations may have been missed)"
                );
                back.clear();
            },
        )
        .await
    }

    /// Copies this component's counters into `registry` (`/metrics`).
    pub fn update_metrics(&self, registry: &broker_bridge::MetricsRegistry) {
        let c = &self.counters;
        let rows: [(&str, &str, u64); 4] = [
            (
                "token_revocations_total",
                "Token versions raised here (password changes, sign-out-everywhere): earlier tokens revoked.",
                c.revocations.load(Ordering::Relaxed),
            ),
            (
                "revoked_token_refusals_total",
                "REST requests refused because their token was revoked.",
                c.refused.load(Ordering::Relaxed),
            ),
            (
                "token_version_lookups_total",
                "Token versions read from the database (not known, or kept past the check TTL).",
                c.lookups.load(Ordering::Relaxed),
            ),
            (
                "token_revocation_publish_failures_total",
                "Token revocations the bus refused (other processes notice within the check TTL).",
                c.publish_failures.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in rows {
            registry.set_counter(&format!("instar_{name}"), help, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_junk_is_ignored() {
        let env = Envelope::new(format!("/topic/{TOKENS_TOPIC}"), "{}")
            .with_header(USER_HEADER, "alice01")
            .with_header(VERSION_HEADER, "3");
        assert_eq!(Revocation::decode(&env), Some(("alice01".into(), 3)));
        let bad = Envelope::new("/topic/x", "{}").with_header(VERSION_HEADER, "-1");
        assert_eq!(Revocation::decode(&bad), None);
        let empty = Envelope::new("/topic/x", "{}")
            .with_header(USER_HEADER, "")
            .with_header(VERSION_HEADER, "1");
        assert_eq!(Revocation::decode(&empty), None);
    }
}
