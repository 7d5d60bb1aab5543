//! Test harness: a social service on a real loopback port, on SQLite (temp file) or MariaDB (a
//! database of its own, dropped afterwards), with the in-process bus and local media in a temp dir.
//!
//! `on_both!(name)` runs `async fn name(db: Db)` once per backend, as `name::sqlite` and
//! `name::mysql`. MariaDB comes from `INSTAR_TEST_MYSQL_URL` (default
//! `mysql://instar:instar@127.0.0.1:3306`, what `scripts/test` sets up).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use broker_bridge::{Bus, InProcessConfig, Registry};
use serde_json::Value;
use social::kv::KvConfig;
use social::media::{Backend, MediaConfig};
use social::{Ctx, Limits, SocialConfig};
use warp::Filter;

/// The JWT secret of every test app.
pub const SECRET: &str = "test-secret-test-secret-test-secret!";

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    MySql,
}

#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::common::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                super::$name(super::common::Db::MySql).await
            }
        }
    };
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A unique name for this process and call.
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        % 1_000_000_000;
    format!("{prefix}{}_{t}_{n}", std::process::id())
}

fn mysql_base() -> String {
    std::env::var("INSTAR_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://instar:instar@127.0.0.1:3306".to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// A running social service.
pub struct TestApp {
    pub base: String,
    pub ctx: Ctx,
    pub bus: Bus,
    pub client: reqwest::Client,
    pub dir: PathBuf,
    db_url: String,
    db: Db,
    cfg: SocialConfig,
    /// Drops the database and the directory on drop (false for [`TestApp::second`]).
    owner: bool,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApp {
    /// Starts with default settings.
    pub async fn start(db: Db) -> TestApp {
        Self::start_with(db, |_| {}).await
    }

    /// Starts after `tweak` adjusted the configuration.
    pub async fn start_with(db: Db, tweak: impl FnOnce(&mut SocialConfig)) -> TestApp {
        Self::start_on(db, None, tweak).await
    }

    /// [`TestApp::start_with`] on `listener` (when the configuration must name the port).
    pub async fn start_on(
        db: Db,
        listener: Option<std::net::TcpListener>,
        tweak: impl FnOnce(&mut SocialConfig),
    ) -> TestApp {
        let dir = std::env::temp_dir().join(unique("instar-social-"));
        std::fs::create_dir_all(&dir).unwrap();
        let db_url = match db {
            Db::Sqlite => format!("sqlite://{}", dir.join("instar.db").display()),
            Db::MySql => {
                let url = format!("{}/{}", mysql_base(), unique("instar_t"));
                migrations::create_database(&url)
                    .await
                    .unwrap_or_else(|e| panic!("MariaDB at {}: {e}", mysql_base()));
                url
            }
        };
        let mut cfg = SocialConfig {
            database_url: db_url.clone(),
            pool: migrations::PoolSettings::default(),
            jwt_secret: SECRET.to_owned(),
            token_ttl_secs: 3600,
            cors_origin: Some("http://localhost:3000".to_owned()),
            media: MediaConfig {
                backend: Backend::Local {
                    dir: dir.join("media"),
                    url_prefix: "/media".to_owned(),
                },
                ..MediaConfig::default()
            },
            kv: KvConfig::Memory,
            smtp: None,
            limits: Limits::default(),
            cache: social::cache::ReadCacheConfig::default(),
            public_url: social::public_url::PublicUrl::default(),
            google: None,
            interest_recompute: None,
            feed_jobs: social::feed::jobs::FeedJobSettings::default(),
            tags: social::tagging::TagsConfig::default(),
        };
        tweak(&mut cfg);
        let bus = Bus::in_process(Registry::in_process(), InProcessConfig::default());
        Self::serve(cfg, bus, dir, db_url, db, true, listener).await
    }

    /// A second social process on the same database, media directory and bus (scale-out with two
    /// `instar social` behind a balancer).
    pub async fn second(&self) -> TestApp {
        self.second_with(|_| {}).await
    }

    /// [`TestApp::second`] after `tweak` adjusted its configuration.
    pub async fn second_with(&self, tweak: impl FnOnce(&mut SocialConfig)) -> TestApp {
        let mut cfg = SocialConfig {
            database_url: self.db_url.clone(),
            media: MediaConfig {
                backend: Backend::Local {
                    dir: self.dir.join("media"),
                    url_prefix: "/media".to_owned(),
                },
                ..MediaConfig::default()
            },
            ..self.cfg.clone()
        };
        tweak(&mut cfg);
        Self::serve(
            cfg,
            self.bus.clone(),
            self.dir.clone(),
            self.db_url.clone(),
            self.db,
            false,
            None,
        )
        .await
    }

    async fn serve(
        cfg: SocialConfig,
        bus: Bus,
        dir: PathBuf,
        db_url: String,
        db: Db,
        owner: bool,
        listener: Option<std::net::TcpListener>,
    ) -> TestApp {
        // Bound first, as the binaries do: an unconfigured public URL falls back to this address.
        let listener = match listener {
            Some(l) => {
                l.set_nonblocking(true).unwrap();
                tokio::net::TcpListener::from_std(l).unwrap()
            }
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listener.local_addr().unwrap();
        let mut cfg = cfg;
        if cfg.public_url.fallback.is_none() {
            cfg.public_url.fallback = Some(format!("http://{addr}"));
        }
        let ctx = Ctx::start(&cfg, bus.clone()).await.unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let routes = ctx.routes().with(warp::log("social-test"));
        tokio::spawn(
            warp::serve(routes)
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run(),
        );
        TestApp {
            base: format!("http://{addr}"),
            ctx,
            bus,
            client: reqwest::Client::new(),
            dir,
            db_url,
            db,
            owner,
            cfg,
            shutdown: Some(tx),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A token for `user` (the account need not exist).
    pub fn token(&self, user: &str) -> String {
        self.ctx.tokens.issue(user, "USER").unwrap()
    }

    /// GET `path` with an optional bearer token; status and JSON body (`Value::Null` if empty).
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut req = self.client.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        read(req.send().await.unwrap()).await
    }

    /// POST `body` as JSON.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut req = self.client.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        read(req.send().await.unwrap()).await
    }

    /// POST raw bytes with a content type.
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        read(req.send().await.unwrap()).await
    }

    /// POST a multipart form.
    pub async fn post_multipart(
        &self,
        path: &str,
        token: Option<&str>,
        form: reqwest::multipart::Form,
    ) -> (u16, Value) {
        let mut req = self.client.post(self.url(path)).multipart(form);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        read(req.send().await.unwrap()).await
    }

    /// Creates a local account directly in the store (password `password1!`, e-mail
    /// `{id}@example.com`) and returns a token for it.
    pub async fn user(&self, id: &str) -> String {
        self.user_named(id, id).await
    }

    /// Like [`Self::user`] with a display name.
    pub async fn user_named(&self, id: &str, name: &str) -> String {
        let hash = social::password::hash("password1!".to_owned())
            .await
            .unwrap();
        let email = format!("{}@example.com", id.to_lowercase());
        let mut tx = self.ctx.store.write().await.unwrap();
        social::store::users::insert(
            tx.conn(),
            &social::store::users::NewUser {
                id,
                password: Some(&hash),
                name,
                sex: Some("female"),
                email: &email,
                comment: Some(""),
                address: Some("Seoul"),
                address_detail: Some("1-1"),
                profile_image: Some(""),
                kind: "LOCAL",
                social_id: None,
                created_at: social::time::now_micros(),
            },
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        self.token(id)
    }
}

async fn read(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, body)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if !self.owner {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.db == Db::MySql {
            let url = self.db_url.clone();
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = rt.block_on(migrations::drop_database(&url));
                }
            })
            .join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers: image and file makers, file listers, waits.

/// A `w`×`h` PNG with a gradient (no two rows alike, so thumbnails and hashes differ by size).
pub fn png_bytes(w: u32, h: u32) -> Vec<u8> {
    image_bytes(w, h, image::ImageFormat::Png)
}

/// A `w`×`h` JPEG with the same gradient as [`png_bytes`].
pub fn jpeg_bytes(w: u32, h: u32) -> Vec<u8> {
    image_bytes(w, h, image::ImageFormat::Jpeg)
}

fn image_bytes(w: u32, h: u32, format: image::ImageFormat) -> Vec<u8> {
    let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 99])
    }));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// The bytes of a minimal PDF (sniffed as a document).
pub fn pdf_bytes() -> Vec<u8> {
    b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n".to_vec()
}

/// Every file under `dir`, recursively, sorted (none when `dir` does not exist).
pub fn files_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Waits until `check` is true (every 20 ms, at most 5 s); panics naming `what` after that.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..250 {
        if check().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}
