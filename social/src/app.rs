//! The social service: configuration, shared state, and the assembled `/api` routes.

use std::sync::Arc;
use std::time::Duration;

use broker_bridge::Bus;
use migrations::PoolSettings;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue};
use warp::reply::Response;

use crate::cache::{ReadCache, ReadCacheConfig};
use crate::http::{ApiError, Cors};
use crate::kv::{Kv, KvConfig};
use crate::mail::{LogMailer, Mailer, SmtpConfig, SmtpMailer};
use crate::media::{Media, MediaConfig};
use crate::notify::Notifier;
use crate::store::Store;
use crate::tokens::Tokens;

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

/// Everything the social service needs to start.
#[derive(Debug, Clone)]
pub struct SocialConfig {
    /// `sqlite://PATH` or `mysql://USER:PASS@HOST:PORT/DB`.
    pub database_url: String,
    /// Connection pool settings.
    pub pool: PoolSettings,
    /// HMAC secret for JWTs (at least 32 bytes).
    pub jwt_secret: String,
    /// Token lifetime, seconds.
    pub token_ttl_secs: i64,
    /// The one browser origin allowed cross-origin (`None`: none).
    pub cors_origin: Option<String>,
    /// Media storage.
    pub media: MediaConfig,
    /// Codes, counters and caches.
    pub kv: KvConfig,
    /// SMTP for verification mails (`None`: mails are logged).
    pub smtp: Option<SmtpConfig>,
    /// Rate limits.
    pub limits: Limits,
    /// Read cache of posts, authors and likes.
    pub cache: ReadCacheConfig,
    /// Which origin media URLs carry ([`crate::public_url`]).
    pub public_url: crate::public_url::PublicUrl,
    /// Google sign-in (`None`: its routes answer 503 `GNC`).
    pub google: Option<crate::accounts::google::GoogleConfig>,
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
    /// Outgoing mail.
    pub mailer: Arc<dyn Mailer>,
    /// Pushes through the bus.
    pub notifier: Notifier,
    /// Rate limits.
    pub limits: Arc<Limits>,
    /// CORS policy.
    pub cors: Cors,
    /// Which origin media URLs carry.
    pub public_url: crate::public_url::PublicUrl,
    /// Read cache of posts, authors and likes (invalidated through the bus).
    pub cache: Arc<ReadCache>,
    /// The counters of every chat send writer started on this context (for `/metrics`).
    pub chat_writers: Arc<std::sync::Mutex<Vec<Arc<crate::chat::writer::WriterStats>>>>,
    /// Google sign-in, when configured.
    pub google: Option<Arc<crate::accounts::google::Google>>,
}

/// Appends one counter, `instar_{name}`, in the Prometheus text format.
pub(crate) fn write_counter(out: &mut String, name: &str, help: &str, value: u64) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP instar_{name} {help}\n# TYPE instar_{name} counter\ninstar_{name} {value}"
    );
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Database.
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
    /// JWT secret.
    #[error("{0}")]
    Tokens(#[from] crate::tokens::TokenError),
    /// Media storage.
    #[error("media: {0}")]
    Media(#[from] crate::media::MediaError),
    /// Key-value store.
    #[error("{0}")]
    Kv(#[from] crate::kv::KvError),
    /// Mail.
    #[error("{0}")]
    Mail(#[from] crate::mail::MailError),
    /// The bus (the read cache's invalidation listener).
    #[error("bus: {0}")]
    Bus(#[from] broker_bridge::BusError),
    /// Google sign-in settings.
    #[error("{0}")]
    Google(#[from] crate::accounts::google::GoogleSetupError),
}

impl Ctx {
    /// A copy of this context whose pushes go through `notifier` (another bus).
    #[must_use]
    pub fn with_notifier(&self, notifier: Notifier) -> Ctx {
        let mut inner = (*self.0).clone();
        inner.notifier = notifier;
        Ctx(Arc::new(inner))
    }

    /// Opens the database (migrating it), the key-value store and media storage.
    pub async fn start(cfg: &SocialConfig, bus: Bus) -> Result<Ctx, StartError> {
        let tokens = Arc::new(Tokens::new(cfg.jwt_secret.as_bytes(), cfg.token_ttl_secs)?);
        let google = match &cfg.google {
            Some(g) => Some(Arc::new(crate::accounts::google::Google::new(
                g,
                cfg.cors_origin.as_deref(),
            )?)),
            None => None,
        };
        let store = Store::open(&cfg.database_url, &cfg.pool).await?;
        let kv = crate::kv::open(&cfg.kv).await?;
        let mut media_cfg = cfg.media.clone();
        if media_cfg.origin.is_none() {
            media_cfg.origin = cfg.public_url.canonical();
        }
        let media = Media::new(media_cfg).await?;
        // Migration 0005 converted the default prefix; any other base is converted here (a scan
        // of the media columns, changing nothing once done).
        let base = media.storage().base_url();
        if base.trim_end_matches('/') != crate::media::DEFAULT_URL_PREFIX {
            store.adopt_media_keys(base).await?;
        }
        let mailer: Arc<dyn Mailer> = match &cfg.smtp {
            Some(smtp) => Arc::new(SmtpMailer::new(smtp)?),
            None => Arc::new(LogMailer),
        };
        let cache = Arc::new(ReadCache::new(&cfg.cache, Some(bus.clone())));
        if cfg.cache.entries > 0 {
            Arc::clone(&cache).listen(bus.clone()).await?;
        }
        Ok(Ctx(Arc::new(CtxInner {
            store,
            kv,
            media,
            tokens,
            mailer,
            notifier: Notifier::new(bus),
            limits: Arc::new(cfg.limits.clone()),
            cors: Cors::new(cfg.cors_origin.clone()),
            public_url: cfg.public_url.clone(),
            cache,
            chat_writers: Arc::default(),
            google,
        })))
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

    /// The social service's counters in the Prometheus text format (appended to `/metrics`).
    pub fn metrics_text(&self) -> String {
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
        let mut out = String::with_capacity(3072);
        for (name, help, value) in rows {
            write_counter(&mut out, name, help, value);
        }
        out.push_str(
            "# HELP instar_quota_refusals_total Writes refused because the user's quota for the window was used up.\n# TYPE instar_quota_refusals_total counter\n",
        );
        for (write, n) in crate::quotas::refusals() {
            use std::fmt::Write as _;
            let _ = writeln!(out, "instar_quota_refusals_total{{write=\"{write}\"}} {n}");
        }
        let (hashes, busy) = crate::password::stats();
        write_counter(
            &mut out,
            "password_hashes_total",
            "Password hashes run (sign-up, sign-in, password changes).",
            hashes,
        );
        write_counter(
            &mut out,
            "password_busy_total",
            "Requests refused at once because password hashing was saturated.",
            busy,
        );
        let writers = self
            .chat_writers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        crate::chat::writer::metrics_text(&writers, &mut out);
        if let Some(g) = &self.google {
            g.metrics_text(&mut out);
        }
        out
    }

    /// The `/api/**` routes (with CORS, the envelope for every failure) and `/media/**` when media
    /// is stored locally.
    pub fn routes(&self) -> BoxedFilter<(Response,)> {
        let api = api_routes(self);
        match self.media.routes() {
            Some(media) => api.or(media).unify().boxed(),
            None => api,
        }
    }
}

fn api_routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let cors = ctx.cors.clone();
    // Preflights and foreign origins are answered before routing or authentication. Only requests
    // that carry an `Origin` get here (the rest skip the header copy).
    let early = warp::path("api")
        .and(warp::header::value("origin"))
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and_then(move |_origin: HeaderValue, method, headers: HeaderMap| {
            let cors = cors.clone();
            async move {
                if let Some(res) = cors.preflight(&method, &headers) {
                    return Ok(res);
                }
                cors.refuse(&headers).ok_or_else(warp::reject::not_found)
            }
        });
    let cors = ctx.cors.clone();
    let canonical = ctx.public_url.canonical().unwrap_or_default();
    let main = warp::path("api")
        .and(crate::public_url::rewrite_target(&ctx.public_url))
        .and(
            warp::header::value("origin")
                .map(Some)
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(
            crate::routes::all(ctx)
                .recover(crate::http::recover)
                .unify(),
        )
        .then(
            move |to: Option<String>, origin: Option<HeaderValue>, mut res: Response| {
                cors.decorate(&mut res, origin.as_ref());
                let canonical = canonical.clone();
                async move {
                    match to {
                        Some(to) => crate::public_url::relink(res, &canonical, &to).await,
                        None => res,
                    }
                }
            },
        );
    early.or(main).unify().boxed()
}
