//! The state every handler shares ([`Ctx`]): the machinery's handles (store, key-value store,
//! media, tokens, mail, pushes, read cache) and the limits. Features take it; it names no feature
//! (what a feature keeps lives in [`CtxInner::extensions`], what it counts in
//! [`CtxInner::metric_sources`]). [`crate::app`] builds it.

use std::sync::Arc;
use std::time::Duration;

use warp::Filter;

use broker_bridge::MetricsRegistry;

use crate::cache::ReadCache;
use crate::http::{ApiError, Cors};
use crate::jobs::Jobs;
use crate::kv::Kv;
use crate::mail::Mailer;
use crate::media::Media;
use crate::outbox::Outbox;
use crate::quotas::Write;
use crate::store::Store;
use crate::tokens::Tokens;

/// Something that shows its own counts on `/metrics`: it copies them into the context's
/// [`MetricsRegistry`] at scrape time.
pub trait MetricsSource: Send + Sync + std::fmt::Debug {
    /// Sets this source's counters and gauges in `registry`.
    fn update_metrics(&self, registry: &MetricsRegistry);
}

/// Told of each like, comment and view once it is committed (the personalised feed listens: the
/// post is seen, the user's list is due for a rebuild). Kept in [`CtxInner::extensions`] as an
/// `Arc<dyn InteractionListener>`.
#[async_trait::async_trait]
pub trait InteractionListener: Send + Sync + std::fmt::Debug {
    /// `user` did `event` to `post`.
    async fn interacted(&self, user: &str, post: i64, event: crate::store::feed::InterestEvent);
}

/// Limits on what a client may do, per window.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Failed sign-ins allowed per user id per window (then 429 until the window ends).
    pub sign_in_failures: u64,
    /// Sign-in attempts allowed per client address per window.
    pub sign_in_per_address: u64,
    /// Window of the sign-in limits.
    pub sign_in_window: Duration,
    /// Verification mails per address per window.
    pub email_sends: u64,
    /// Verification mails per client address per window.
    pub email_sends_per_address: u64,
    /// Window of the mail limits.
    pub email_window: Duration,
    /// Wrong code attempts before the code is discarded.
    pub email_code_attempts: u64,
    /// Lifetime of an e-mail code (the original's: 3 minutes).
    pub email_code_ttl: Duration,
    /// Per-user quotas on writes.
    pub quotas: crate::quotas::Quotas,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            sign_in_failures: 10,
            sign_in_per_address: 60,
            sign_in_window: Duration::from_secs(15 * 60),
            email_sends: 5,
            email_sends_per_address: 20,
            email_window: Duration::from_secs(60 * 60),
            email_code_attempts: 5,
            email_code_ttl: Duration::from_secs(180),
            quotas: crate::quotas::Quotas::default(),
        }
    }
}

/// State shared by every handler: one reference count to clone (every request takes a clone).
#[derive(Debug, Clone)]
pub struct Ctx(Arc<CtxInner>);

impl std::ops::Deref for Ctx {
    type Target = CtxInner;
    fn deref(&self) -> &CtxInner {
        &self.0
    }
}

/// What [`Ctx`] holds.
#[derive(Debug, Clone)]
pub struct CtxInner {
    /// The database.
    pub store: Store,
    /// Codes, counters and caches.
    pub kv: Arc<dyn Kv>,
    /// Images and files.
    pub media: Media,
    /// JWT signing and checking.
    pub tokens: Arc<Tokens>,
    /// Token versions: revoked tokens are refused ([`crate::revocation`]).
    pub revocation: Arc<crate::revocation::Revocation>,
    /// Outgoing mail.
    pub mailer: Arc<dyn Mailer>,
    /// Pushes through the bus.
    pub outbox: Outbox,
    /// Every background task ([`crate::jobs`]).
    pub jobs: Jobs,
    /// Rate limits.
    pub limits: Arc<Limits>,
    /// CORS policy.
    pub cors: Cors,
    /// Which origin media URLs carry.
    pub public_url: crate::public_url::PublicUrl,
    /// Read cache of posts, authors and likes (invalidated through the bus).
    pub cache: Arc<ReadCache>,
    /// Where `/metrics` is rendered from (shared with the gateway in `instar serve`).
    pub metrics: MetricsRegistry,
    /// What features add to `/metrics` (each copies its own counts in).
    pub metric_sources: Arc<std::sync::Mutex<Vec<Arc<dyn MetricsSource>>>>,
    /// State a feature keeps for the service's lifetime, by type (Google sign-in's provider
    /// client, say): the features own their types, the context only carries them.
    pub extensions: Arc<warp::http::Extensions>,
}

impl Ctx {
    /// Wraps the shared state.
    #[must_use]
    pub fn new(inner: CtxInner) -> Ctx {
        Ctx(Arc::new(inner))
    }

    /// A copy of this context whose pushes go through another bus.
    #[must_use]
    pub fn with_bus(&self, bus: broker_bridge::Bus) -> Ctx {
        let mut inner = (*self.0).clone();
        inner.outbox = inner.outbox.with_bus(bus);
        Ctx(Arc::new(inner))
    }

    /// Adds `source` to what `/metrics` shows.
    pub fn add_metrics(&self, source: Arc<dyn MetricsSource>) {
        self.metric_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(source);
    }

    /// A feature's state kept in [`CtxInner::extensions`].
    #[must_use]
    pub fn extension<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.extensions.get::<T>()
    }

    /// Tells the interaction listener, if any, that `user` did `event` to `post`.
    pub async fn interacted(
        &self,
        user: &str,
        post: i64,
        event: crate::store::feed::InterestEvent,
    ) {
        if let Some(l) = self.extension::<std::sync::Arc<dyn InteractionListener>>() {
            l.interacted(user, post, event).await;
        }
    }

    /// Counts one event against `key` and fails with 429 `TMR` past `max` in `window`. A key-value
    /// store outage fails closed for limits (a 500 `DE`), never silently unlimited.
    pub async fn limit(&self, key: &str, max: u64, window: Duration) -> Result<(), ApiError> {
        match self.kv.incr(&format!("limit:{key}"), window).await {
            Ok(n) if n > max => Err(ApiError::too_many()),
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::error!(error = %e, "rate limit store unavailable");
                Err(ApiError::database())
            }
        }
    }

    /// Counts `amount` of `write` against `user`'s quota; 429 `TMR` once it is used up.
    ///
    /// # Errors
    /// [`ApiError::too_many`] past the quota.
    pub async fn quota(&self, user: &str, write: Write, amount: u64) -> Result<(), ApiError> {
        crate::quotas::charge(self.kv.as_ref(), &self.limits.quotas, user, write, amount).await
    }

    /// [`Ctx::quota`] for `files` uploads of `bytes` bytes in all.
    ///
    /// # Errors
    /// [`ApiError::too_many`] past either quota.
    pub async fn upload_quota(&self, user: &str, files: u64, bytes: u64) -> Result<(), ApiError> {
        self.quota(user, Write::Upload, files).await?;
        self.quota(user, Write::UploadBytes, bytes).await
    }

    /// Copies the social service's counts into its registry (what [`Ctx::metrics_text`]
    /// renders).
    pub fn update_metrics(&self) {
        let m = &self.metrics;
        let c = self.cache.stats();
        let rows: [(&str, &str, u64); 7] = [
            (
                "read_cache_hits_total",
                "Read cache lookups answered from memory.",
                c.hits,
            ),
            (
                "read_cache_feed_pages_served_total",
                "Feed responses served whole from a kept page.",
                c.feed_pages_served,
            ),
            (
                "read_cache_misses_total",
                "Read cache lookups that went to the database.",
                c.misses,
            ),
            (
                "read_cache_rejected_fills_total",
                "Read cache fills dropped because the key changed while it was read.",
                c.rejected_fills,
            ),
            (
                "read_cache_invalidations_total",
                "Read cache keys invalidated (local writes and other processes' messages).",
                c.invalidations,
            ),
            (
                "read_cache_clears_total",
                "Whole read cache clears (the bus came back after an outage).",
                c.clears,
            ),
            (
                "read_cache_publish_failures_total",
                "Read cache invalidations the bus refused (other processes rely on the TTL).",
                c.publish_failures,
            ),
        ];
        for (name, help, value) in rows {
            m.set_counter(&format!("instar_{name}"), help, value);
        }
        for (write, n) in crate::quotas::refusals() {
            m.counter_with(
                "instar_quota_refusals_total",
                &[("write", write)],
                "Writes refused because the user's quota for the window was used up.",
            )
            .absolute(n);
        }
        let (hashes, busy) = crate::password::stats();
        m.set_counter(
            "instar_password_hashes_total",
            "Password hashes run (sign-up, sign-in, password changes).",
            hashes,
        );
        m.set_counter(
            "instar_password_busy_total",
            "Requests refused at once because password hashing was saturated.",
            busy,
        );
        let sources = self
            .metric_sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for source in sources {
            source.update_metrics(m);
        }
    }

    /// Every counter and gauge of the context's registry in the Prometheus text format (the
    /// gateway's too when `instar serve` shares the registry).
    pub fn metrics_text(&self) -> String {
        self.update_metrics();
        self.metrics.render()
    }
}

/// A filter handing out a clone of the context.
pub fn with_ctx(
    ctx: &Ctx,
) -> impl Filter<Extract = (Ctx,), Error = std::convert::Infallible> + Clone + use<> {
    let ctx = ctx.clone();
    warp::any().map(move || ctx.clone())
}
