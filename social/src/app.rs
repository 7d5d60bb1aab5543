//! The composition root: the service's configuration, [`Ctx::start`] (opens the machinery and
//! gives each feature what it keeps), and the assembled `/api` routes ([`crate::api`]) with CORS
//! and the per-request renaming of media URLs.

use std::sync::Arc;

use broker_bridge::Bus;
use migrations::PoolSettings;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue};
use warp::reply::Response;

use crate::cache::{ReadCache, ReadCacheConfig};
use crate::ctx::{Ctx, CtxInner, Limits};
use crate::http::Cors;
use crate::jobs::Jobs;
use crate::kv::KvConfig;
use crate::mail::{LogMailer, Mailer, SmtpConfig, SmtpMailer};
use crate::media::{Media, MediaConfig};
use crate::outbox::Outbox;
use crate::store::Store;
use crate::tokens::Tokens;

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
    /// When the interest recompute runs, once per cluster (`None`: only when an administrator
    /// triggers it).
    pub interest_recompute: Option<crate::jobs::Schedule>,
    /// How the feed's cluster jobs run (lock lifetime; a test-only pause).
    pub feed_jobs: crate::feed::jobs::FeedJobSettings,
    /// Google sign-in (`None`: its routes answer 503 `GNC`).
    pub google: Option<crate::accounts::google::GoogleConfig>,
    /// Automatic tags: the noun rule's dictionary.
    pub tags: crate::tagging::TagsConfig,
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
    /// The noun rule's dictionary.
    #[error("tags dictionary: {0}")]
    Tags(#[from] crate::tagging::mecab::DictError),
    /// Vision settings.
    #[error("Vision: {0}")]
    Vision(String),
}

impl Ctx {
    /// Opens the database (migrating it), the key-value store and media storage; `/metrics`
    /// comes from a registry of the context's own.
    pub async fn start(cfg: &SocialConfig, bus: Bus) -> Result<Ctx, StartError> {
        Self::start_with_metrics(cfg, bus, broker_bridge::MetricsRegistry::new()).await
    }

    /// [`Ctx::start`] counting into `metrics` (which other parts of the process may share).
    pub async fn start_with_metrics(
        cfg: &SocialConfig,
        bus: Bus,
        metrics: broker_bridge::MetricsRegistry,
    ) -> Result<Ctx, StartError> {
        let tokens = Arc::new(Tokens::new(cfg.jwt_secret.as_bytes(), cfg.token_ttl_secs)?);
        let mut extensions = warp::http::Extensions::new();
        let google = match &cfg.google {
            Some(g) => Some(Arc::new(crate::accounts::google::Google::new(
                g,
                cfg.cors_origin.as_deref(),
            )?)),
            None => None,
        };
        if let Some(google) = &google {
            extensions.insert(Arc::clone(google));
        }
        let chat_writers = crate::chat::writer::WriterStatsList::default();
        extensions.insert(chat_writers.clone());
        let nouns = crate::tagging::load_nouns(&cfg.tags).await?;
        if let Some(nouns) = &nouns {
            extensions.insert(nouns.clone());
        }
        let tag_metrics = Arc::new(crate::tagging::worker::TagMetrics::default());
        let tagger = match &cfg.tags.vision {
            Some(v) => {
                let vision =
                    crate::tagging::labels::Vision::new(v.clone()).map_err(StartError::Vision)?;
                Some(crate::tagging::worker::Tagger::new(
                    Arc::new(vision),
                    nouns,
                    Arc::clone(&tag_metrics),
                ))
            }
            None => None,
        };
        if let Some(tagger) = &tagger {
            extensions.insert(tagger.clone());
        }
        let store = Store::open(&cfg.database_url, &cfg.pool).await?;
        let kv = crate::kv::open(&cfg.kv).await?;
        let feed = Arc::new(
            crate::feed::Feed::new(store.clone(), crate::feed::state::open(&cfg.kv).await?)
                .with_job_settings(cfg.feed_jobs),
        );
        extensions.insert(Arc::clone(&feed));
        let listener: Arc<dyn crate::ctx::InteractionListener> = feed.clone();
        extensions.insert(listener);
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
        let jobs = Jobs::with_metrics(Arc::clone(&kv), metrics.clone());
        let cache = Arc::new(ReadCache::new(&cfg.cache, Some(bus.clone())));
        if cfg.cache.entries > 0 {
            Arc::clone(&cache).listen(bus.clone(), &jobs).await?;
        }
        let revocation = Arc::new(crate::revocation::Revocation::new(
            store.clone(),
            Some(bus.clone()),
        ));
        Arc::clone(&revocation).listen(bus.clone(), &jobs).await?;
        let outbox = Outbox::new(store.clone(), bus);
        let ctx = Ctx::new(CtxInner {
            store,
            kv,
            media,
            tokens,
            revocation: Arc::clone(&revocation),
            mailer,
            outbox,
            jobs: jobs.clone(),
            limits: Arc::new(cfg.limits.clone()),
            cors: Cors::new(cfg.cors_origin.clone()),
            public_url: cfg.public_url.clone(),
            cache,
            metrics,
            metric_sources: Arc::default(),
            extensions: Arc::new(extensions),
        });
        ctx.add_metrics(Arc::new(chat_writers));
        ctx.add_metrics(revocation);
        crate::feed::jobs::schedule(&ctx, cfg.interest_recompute.clone());
        ctx.add_metrics(feed);
        ctx.add_metrics(Arc::new(jobs));
        ctx.add_metrics(tag_metrics);
        if let Some(tagger) = tagger {
            tagger.start(&ctx);
        }
        if let Some(google) = google {
            ctx.add_metrics(google);
        }
        Ok(ctx)
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
    // Each request runs in a `request` span (request id, method, path, user), and answers with
    // its request id.
    let main = crate::http::request_id()
        .and(crate::public_url::rewrite_target(&ctx.public_url))
        .and(
            warp::header::value("origin")
                .map(Some)
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(crate::api::all(ctx).recover(crate::http::recover).unify())
        .then(
            move |id: HeaderValue,
                  to: Option<String>,
                  origin: Option<HeaderValue>,
                  mut res: Response| {
                cors.decorate(&mut res, origin.as_ref());
                res.headers_mut().insert(crate::http::X_REQUEST_ID, id);
                let canonical = canonical.clone();
                async move {
                    match to {
                        Some(to) => crate::public_url::relink(res, &canonical, &to).await,
                        None => res,
                    }
                }
            },
        )
        .with(warp::trace(crate::http::request_span))
        .map(warp::Reply::into_response);
    let main = warp::path("api").and(main);
    early.or(main).unify().boxed()
}

/// Token revocation's counters on `/metrics` (implemented here: `revocation.rs` sits below
/// `ctx.rs`).
impl crate::ctx::MetricsSource for crate::revocation::Revocation {
    fn update_metrics(&self, registry: &broker_bridge::MetricsRegistry) {
        crate::revocation::Revocation::update_metrics(self, registry);
    }
}

/// The jobs' counters on `/metrics` (implemented here: `jobs.rs` sits below `ctx.rs`).
impl crate::ctx::MetricsSource for Jobs {
    fn update_metrics(&self, registry: &broker_bridge::MetricsRegistry) {
        Jobs::update_metrics(self, registry);
    }
}
