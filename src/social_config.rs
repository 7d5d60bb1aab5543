//! Settings of the social service (REST API, store, media, mail), shared by `instar serve` (where
//! they default to the embedded setup: a SQLite file and a media directory under `--data-dir`) and
//! `instar social` (scale-out: MariaDB, Redis, S3). Flags and `INSTAR_*` variables, over a `[social]`
//! table of the TOML file, over the defaults.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use serde::Deserialize;
use social::accounts::google::GoogleConfig;
use social::kv::KvConfig;
use social::mail::SmtpConfig;
use social::media::{Backend, MediaConfig};

/// Social service flags.
#[derive(Debug, Args, Default, Clone)]
pub(crate) struct SocialArgs {
    /// Directory for the embedded database and local media. [default: ./instar-data]
    #[arg(long, env = "INSTAR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite://PATH or mysql://USER:PASS@HOST:PORT/DB. [default: sqlite://<data-dir>/instar.db]
    #[arg(long, env = "INSTAR_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Largest number of pooled database connections. [default: 16]
    #[arg(long, env = "INSTAR_DATABASE_POOL")]
    pub database_pool: Option<u32>,
    /// The browser origin of the frontend allowed cross-origin with credentials (e.g. http://localhost:3000). [default: none]
    #[arg(long, env = "INSTAR_CORS_ORIGIN")]
    pub cors_origin: Option<String>,
    /// Redis URL for e-mail codes, rate limits and caches shared by several social processes. [default: in-process]
    #[arg(long, env = "INSTAR_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key the service writes. [default: instar:]
    #[arg(long, env = "INSTAR_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// Local media directory (when no S3 bucket is set). [default: <data-dir>/media]
    #[arg(long, env = "INSTAR_MEDIA_DIR")]
    pub media_dir: Option<PathBuf>,
    /// URL prefix of local media. [default: /media]
    #[arg(long, env = "INSTAR_MEDIA_URL_PREFIX")]
    pub media_url_prefix: Option<String>,
    /// S3 bucket for media; setting it switches from the local directory to S3. [default: none]
    #[arg(long, env = "INSTAR_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// S3-compatible endpoint URL (omit for AWS). [default: none]
    #[arg(long, env = "INSTAR_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// S3 region. [default: us-east-1]
    #[arg(long, env = "INSTAR_S3_REGION")]
    pub s3_region: Option<String>,
    /// S3 access key id.
    #[arg(long, env = "INSTAR_S3_ACCESS_KEY", hide_env_values = true)]
    pub s3_access_key: Option<String>,
    /// S3 secret access key.
    #[arg(long, env = "INSTAR_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
    /// Path-style S3 addressing (most S3-compatible servers need it). [default: true with an endpoint]
    #[arg(long, env = "INSTAR_S3_PATH_STYLE", value_parser = clap::builder::BoolishValueParser::new())]
    pub s3_path_style: Option<bool>,
    /// Public base URL of media objects (e.g. a CDN). [default: derived from endpoint and bucket]
    #[arg(long, env = "INSTAR_S3_PUBLIC_URL")]
    pub s3_public_url: Option<String>,
    /// SMTP host for verification mails; without it mails are logged. [default: none]
    #[arg(long, env = "INSTAR_SMTP_HOST")]
    pub smtp_host: Option<String>,
    /// SMTP port. [default: 587]
    #[arg(long, env = "INSTAR_SMTP_PORT")]
    pub smtp_port: Option<u16>,
    /// SMTP security: starttls, tls or none. [default: starttls]
    #[arg(long, env = "INSTAR_SMTP_SECURITY")]
    pub smtp_security: Option<String>,
    /// SMTP user name.
    #[arg(long, env = "INSTAR_SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// SMTP password.
    #[arg(long, env = "INSTAR_SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<String>,
    /// From address of verification mails. [default: no-reply@localhost]
    #[arg(long, env = "INSTAR_SMTP_FROM")]
    pub smtp_from: Option<String>,
    /// Chat send writers: tasks writing batches of /app/send messages, sends sharded by room. [default: 1]
    #[arg(long, env = "INSTAR_CHAT_WRITERS")]
    pub chat_writers: Option<usize>,
    /// Least time from the start of one chat send batch to the next while sends keep coming, microseconds (0: none; at most 100000). [default: 0]
    #[arg(long, env = "INSTAR_CHAT_BATCH_LINGER_US")]
    pub chat_batch_linger_us: Option<u64>,
    /// Read cache of posts and images (entries each; authors and likes get a quarter); 0 turns it off. [default: 100000]
    #[arg(long, env = "INSTAR_READ_CACHE_ENTRIES")]
    pub read_cache_entries: Option<usize>,
    /// Lifetime of a read cache entry, seconds (bounds staleness when an invalidation is lost). [default: 600]
    #[arg(long, env = "INSTAR_READ_CACHE_TTL_SECS")]
    pub read_cache_ttl_secs: Option<u64>,
    /// Rendered feed pages kept by the read cache (about 13 KB each, 64 KB at most); 0 keeps none. [default: 1024]
    #[arg(long, env = "INSTAR_FEED_PAGE_CACHE")]
    pub feed_page_cache: Option<usize>,
    /// Public URL browsers reach this service at (e.g. https://api.example.com): every media URL carries it. [default: each REST response the name its request used, pushes the listen address]
    #[arg(long, env = "INSTAR_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Proxies (addresses or CIDRs, comma-separated; `none` for none) whose X-Forwarded-For, -Host and -Proto are believed. [default: 127.0.0.0/8,::1]
    #[arg(long, env = "INSTAR_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
    /// Google sign-in: the OAuth client id; setting it turns Google sign-in on (then the secret and redirect URI are required). [default: off]
    #[arg(long, env = "INSTAR_GOOGLE_CLIENT_ID")]
    pub google_client_id: Option<String>,
    /// Google sign-in: the OAuth client secret.
    #[arg(long, env = "INSTAR_GOOGLE_CLIENT_SECRET", hide_env_values = true)]
    pub google_client_secret: Option<String>,
    /// Google sign-in: this API's callback as registered at Google, ending in /callback (e.g. https://api.example.com/api/auth/google/callback).
    #[arg(long, env = "INSTAR_GOOGLE_REDIRECT_URI")]
    pub google_redirect_uri: Option<String>,
    /// Google sign-in: the frontend page the browser returns to. [default: <cors-origin>/oauth/google]
    #[arg(long, env = "INSTAR_GOOGLE_FRONTEND_URL")]
    pub google_frontend_url: Option<String>,
    /// Google sign-in: the OpenID issuer; endpoints are discovered from it (another OpenID provider, tests). [default: https://accounts.google.com]
    #[arg(long, env = "INSTAR_GOOGLE_ISSUER")]
    pub google_issuer: Option<String>,
    /// Google sign-in: authorization endpoint, instead of the discovered one. [default: discovered]
    #[arg(long, env = "INSTAR_GOOGLE_AUTHORIZATION_ENDPOINT")]
    pub google_authorization_endpoint: Option<String>,
    /// Google sign-in: token endpoint, instead of the discovered one. [default: discovered]
    #[arg(long, env = "INSTAR_GOOGLE_TOKEN_ENDPOINT")]
    pub google_token_endpoint: Option<String>,
    /// Google sign-in: JWKS URI, instead of the discovered one. [default: discovered]
    #[arg(long, env = "INSTAR_GOOGLE_JWKS_URI")]
    pub google_jwks_uri: Option<String>,
    /// Google sign-in: userinfo endpoint, instead of the discovered one. [default: discovered]
    #[arg(long, env = "INSTAR_GOOGLE_USERINFO_ENDPOINT")]
    pub google_userinfo_endpoint: Option<String>,
    /// Google sign-in: lifetime of a pending sign-up (new Google account choosing its id), seconds. [default: 1800]
    #[arg(long, env = "INSTAR_GOOGLE_PENDING_TTL_SECS")]
    pub google_pending_ttl_secs: Option<u64>,
}

/// The `[social]` table of the TOML file (same names, without the `--`, with `_`).
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct SocialFile {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    database_pool: Option<u32>,
    cors_origin: Option<String>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    media_dir: Option<PathBuf>,
    media_url_prefix: Option<String>,
    s3_bucket: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_access_key: Option<String>,
    s3_secret_key: Option<String>,
    s3_path_style: Option<bool>,
    s3_public_url: Option<String>,
    smtp_host: Option<String>,
    smtp_port: Option<u16>,
    smtp_security: Option<String>,
    smtp_username: Option<String>,
    smtp_password: Option<String>,
    smtp_from: Option<String>,
    chat_writers: Option<usize>,
    chat_batch_linger_us: Option<u64>,
    read_cache_entries: Option<usize>,
    read_cache_ttl_secs: Option<u64>,
    feed_page_cache: Option<usize>,
    public_url: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    google_client_id: Option<String>,
    google_client_secret: Option<String>,
    google_redirect_uri: Option<String>,
    google_frontend_url: Option<String>,
    google_issuer: Option<String>,
    google_authorization_endpoint: Option<String>,
    google_token_endpoint: Option<String>,
    google_jwks_uri: Option<String>,
    google_userinfo_endpoint: Option<String>,
    google_pending_ttl_secs: Option<u64>,
}

macro_rules! pick {
    ($a:ident, $f:ident, $name:ident) => {
        $a.$name.clone().or_else(|| $f.$name.clone())
    };
}

impl SocialArgs {
    /// The chat send writers asked for (`None`: the defaults): at most 64 writers, a linger
    /// of at most 100 ms.
    pub(crate) fn chat_writer_options(&self, file: &SocialFile) -> social::chat::WriterOptions {
        let (a, f) = (self, file);
        social::chat::WriterOptions {
            writers: pick!(a, f, chat_writers).map(|n| n.clamp(1, 64)),
            linger: pick!(a, f, chat_batch_linger_us).map(|us| {
                std::time::Duration::from_micros(us).min(social::chat::writer::MAX_LINGER)
            }),
        }
    }

    /// Resolves the social configuration with the JWT secret shared with the gateway.
    pub(crate) fn resolve(
        &self,
        file: &SocialFile,
        jwt_secret: &str,
    ) -> anyhow::Result<social::SocialConfig> {
        let a = self;
        let f = file;
        let data_dir = pick!(a, f, data_dir).unwrap_or_else(|| PathBuf::from("instar-data"));
        let database_url = match pick!(a, f, database_url) {
            Some(url) => url,
            None => {
                std::fs::create_dir_all(&data_dir)
                    .with_context(|| format!("creating data directory {}", data_dir.display()))?;
                format!("sqlite://{}", data_dir.join("instar.db").display())
            }
        };
        let media = match pick!(a, f, s3_bucket) {
            Some(bucket) => {
                let endpoint = pick!(a, f, s3_endpoint);
                Backend::S3 {
                    path_style: pick!(a, f, s3_path_style).unwrap_or(endpoint.is_some()),
                    endpoint,
                    region: pick!(a, f, s3_region).unwrap_or_else(|| "us-east-1".to_owned()),
                    bucket,
                    access_key: pick!(a, f, s3_access_key).unwrap_or_default(),
                    secret_key: pick!(a, f, s3_secret_key).unwrap_or_default(),
                    public_base_url: pick!(a, f, s3_public_url),
                    create_bucket: false,
                }
            }
            None => Backend::Local {
                dir: pick!(a, f, media_dir).unwrap_or_else(|| data_dir.join("media")),
                url_prefix: pick!(a, f, media_url_prefix)
                    .unwrap_or_else(|| social::media::DEFAULT_URL_PREFIX.to_owned()),
            },
        };
        let kv = match pick!(a, f, redis_url) {
            Some(url) => KvConfig::Redis {
                url,
                prefix: pick!(a, f, redis_prefix).unwrap_or_else(|| "instar:".to_owned()),
            },
            None => KvConfig::Memory,
        };
        let smtp = pick!(a, f, smtp_host).map(|host| SmtpConfig {
            host,
            port: pick!(a, f, smtp_port).unwrap_or(587),
            security: pick!(a, f, smtp_security).unwrap_or_else(|| "starttls".to_owned()),
            username: pick!(a, f, smtp_username),
            password: pick!(a, f, smtp_password),
            from: pick!(a, f, smtp_from).unwrap_or_else(|| "no-reply@localhost".to_owned()),
        });
        let public_url = match pick!(a, f, public_url).filter(|u| !u.trim().is_empty()) {
            Some(u) => {
                let u = u.trim().trim_end_matches('/').to_owned();
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    anyhow::bail!("public_url must start with http:// or https:// (got '{u}')");
                }
                Some(u)
            }
            None => None,
        };
        let mut trusted_proxies = Vec::new();
        // Default: this machine only (nginx in front on loopback); `none` trusts nobody.
        let listed = pick!(a, f, trusted_proxies)
            .unwrap_or_else(|| vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()]);
        for p in listed {
            if p.trim().eq_ignore_ascii_case("none") {
                trusted_proxies.clear();
                break;
            }
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            let net = p
                .parse::<ipnet::IpNet>()
                .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .with_context(|| format!("trusted_proxies: '{p}' is not an address or a CIDR"))?;
            trusted_proxies.push(net);
        }
        let google = match pick!(a, f, google_client_id) {
            None => None,
            Some(id) => {
                let secret = pick!(a, f, google_client_secret)
                    .context("INSTAR_GOOGLE_CLIENT_SECRET is required with a Google client id")?;
                let redirect = pick!(a, f, google_redirect_uri)
                    .context("INSTAR_GOOGLE_REDIRECT_URI is required with a Google client id")?;
                let mut g = GoogleConfig::new(id, secret, redirect);
                g.frontend_url = pick!(a, f, google_frontend_url);
                if let Some(issuer) = pick!(a, f, google_issuer) {
                    g.issuer = issuer;
                }
                g.authorization_endpoint = pick!(a, f, google_authorization_endpoint);
                g.token_endpoint = pick!(a, f, google_token_endpoint);
                g.jwks_uri = pick!(a, f, google_jwks_uri);
                g.userinfo_endpoint = pick!(a, f, google_userinfo_endpoint);
                if let Some(secs) = pick!(a, f, google_pending_ttl_secs) {
                    g.pending_ttl = std::time::Duration::from_secs(secs.clamp(60, 24 * 3600));
                }
                Some(g)
            }
        };
        if jwt_secret.len() < 32 {
            anyhow::bail!(
                "INSTAR_JWT_SECRET must be at least 32 bytes (HS256's minimum); it is {}",
                jwt_secret.len()
            );
        }
        Ok(social::SocialConfig {
            database_url,
            pool: migrations::PoolSettings {
                max_connections: pick!(a, f, database_pool).unwrap_or(16).max(1),
                ..migrations::PoolSettings::default()
            },
            jwt_secret: jwt_secret.to_owned(),
            token_ttl_secs: social::tokens::DEFAULT_TTL_SECS,
            cors_origin: pick!(a, f, cors_origin),
            media: MediaConfig {
                backend: media,
                ..MediaConfig::default()
            },
            kv,
            smtp,
            limits: social::Limits::default(),
            interest_recompute: Some(social::jobs::Schedule::nightly()),
            cache: social::cache::ReadCacheConfig {
                entries: pick!(a, f, read_cache_entries).unwrap_or(social::cache::DEFAULT_ENTRIES),
                ttl: pick!(a, f, read_cache_ttl_secs).map_or(social::cache::DEFAULT_TTL, |s| {
                    std::time::Duration::from_secs(s.max(1))
                }),
                feed_pages: pick!(a, f, feed_page_cache)
                    .unwrap_or(social::cache::DEFAULT_FEED_PAGES),
                ..social::cache::ReadCacheConfig::default()
            },
            public_url: social::public_url::PublicUrl {
                fixed: public_url,
                fallback: None,
                trusted_proxies,
            },
            google,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn args() -> SocialArgs {
        SocialArgs {
            database_url: Some("sqlite://unused.db".into()),
            ..SocialArgs::default()
        }
    }

    #[test]
    fn google_is_off_without_a_client_id() {
        let cfg = args().resolve(&SocialFile::default(), SECRET).unwrap();
        assert!(cfg.google.is_none());
    }

    #[test]
    fn google_settings_from_flags() {
        let mut a = args();
        a.google_client_id = Some("id.apps".into());
        a.google_client_secret = Some("secret".into());
        a.google_redirect_uri = Some("https://api.example.com/api/auth/google/callback".into());
        a.google_pending_ttl_secs = Some(5);
        let g = a
            .resolve(&SocialFile::default(), SECRET)
            .unwrap()
            .google
            .unwrap();
        assert_eq!(g.client_id, "id.apps");
        assert_eq!(g.issuer, social::accounts::google::GOOGLE_ISSUER);
        assert_eq!(g.pending_ttl, std::time::Duration::from_secs(60), "clamped");
        a.google_client_secret = None;
        let e = a.resolve(&SocialFile::default(), SECRET).unwrap_err();
        assert!(e.to_string().contains("INSTAR_GOOGLE_CLIENT_SECRET"), "{e}");
    }

    #[test]
    fn google_settings_from_toml() {
        let f: SocialFile = toml::from_str(
            r#"
            google_client_id = "toml.apps"
            google_client_secret = "s"
            google_redirect_uri = "https://api.example.com/api/auth/google/callback"
            google_frontend_url = "https://app.example.com/oauth/google"
            google_issuer = "https://idp.example.com"
            google_token_endpoint = "https://idp.example.com/token"
            "#,
        )
        .unwrap();
        let g = args().resolve(&f, SECRET).unwrap().google.unwrap();
        assert_eq!(g.client_id, "toml.apps");
        assert_eq!(g.issuer, "https://idp.example.com");
        assert_eq!(
            g.token_endpoint.as_deref(),
            Some("https://idp.example.com/token")
        );
        assert_eq!(
            g.frontend_url.as_deref(),
            Some("https://app.example.com/oauth/google")
        );
        assert_eq!(g.pending_ttl, std::time::Duration::from_secs(1800));
    }
}
