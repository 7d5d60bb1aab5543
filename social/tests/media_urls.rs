//! Media URLs leave the service absolute (docs/media.md, "URLs"): rows hold object keys, and every
//! REST body and push renders them under the public origin, so a frontend served from another
//! origin loads them. Each test fails on the behaviour before keys were stored (relative
//! `/media/...` paths in rows and responses).

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::io::Cursor;

use broker_bridge::{Delivery, NodeLink, SessionEntry, Target};
use common::{Db, TestApp};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use social::media::{Backend, S3Settings};

fn png() -> Vec<u8> {
    let img =
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(8, 6, image::Rgb([9, 80, 200])));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn image_form(field: &str) -> Form {
    Form::new().part(
        field.to_owned(),
        Part::bytes(png())
            .file_name("a.png")
            .mime_str("image/png")
            .unwrap(),
    )
}

/// GET `path` as `token`, with `headers` added (e.g. another `Host`).
async fn get_with(app: &TestApp, path: &str, token: &str, headers: &[(&str, &str)]) -> Value {
    let mut req = app.client.get(app.url(path)).bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    res.json().await.unwrap()
}

async fn upload_profile(app: &TestApp, token: &str) -> String {
    let (status, body) = app
        .post_multipart("/api/file/upload/profile", Some(token), image_form("file"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["url"].as_str().unwrap().to_owned()
}

async fn create_post(app: &TestApp, token: &str) -> i64 {
    let form = image_form("images").text("data", json!({"comment": "hi #sea"}).to_string());
    let (status, body) = app
        .post_multipart("/api/post/create", Some(token), form)
        .await;
    assert_eq!(status, 200, "{body}");
    body["postId"].as_i64().unwrap()
}

async fn stored(app: &TestApp, sql: &str, id: &str) -> String {
    sqlx::query_scalar::<_, String>(sql)
        .bind(id)
        .fetch_one(app.ctx.store.pool())
        .await
        .unwrap()
}

/// Every media URL of the responses, pushed alarm included, for `origin`.
fn assert_under(url: &str, origin: &str, prefix: &str) {
    assert!(
        url.starts_with(&format!("{origin}/media/{prefix}/")),
        "{url} is not under {origin}/media/{prefix}/"
    );
}

async fn attach(app: &TestApp, user: &str) -> NodeLink {
    let link = app.bus.open_node("urls-node".into()).await.unwrap();
    app.bus
        .registry()
        .register(SessionEntry {
            session: format!("urls-{user}"),
            user: user.into(),
            node: "urls-node".into(),
            connected_at_ms: 0,
        })
        .await
        .unwrap();
    link
}

async fn next_for(link: &mut NodeLink, target: &Target) -> Delivery {
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let d = link.recv().await.expect("bus open");
            if d.target == *target {
                return d;
            }
        }
    })
    .await
    .expect("a delivery in time")
}

async fn urls_are_absolute_keys_are_stored(db: Db) {
    let app = TestApp::start(db).await;
    let origin = app.base.clone();
    let alice = app.user_named("alice01", "Alice").await;
    let bob = app.user_named("bob0202", "Bob").await;

    // Upload answers an absolute URL that loads; the row holds the key.
    let avatar = upload_profile(&app, &alice).await;
    assert_under(&avatar, &origin, "profile");
    let res = app.client.get(&avatar).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("image/")
    );
    let key = stored(
        &app,
        "SELECT profile_image FROM user WHERE id = ?",
        "alice01",
    )
    .await;
    assert!(key.starts_with("profile/"), "row holds {key}");
    assert_eq!(avatar, format!("{origin}/media/{key}"));

    let me = get_with(&app, "/api/user/me", &alice, &[]).await;
    assert_eq!(me["user"]["profileImage"], avatar.as_str());

    // A post: details, grid, feed and search all carry absolute URLs.
    let post = create_post(&app, &alice).await;
    let details = get_with(
        &app,
        &format!("/api/post/get/details_info?postId={post}"),
        &bob,
        &[],
    )
    .await;
    let image = &details["post"]["imageTags"][0];
    assert_under(image["url"].as_str().unwrap(), &origin, "post");
    assert_under(image["thumbnailUrl"].as_str().unwrap(), &origin, "post");
    assert_eq!(details["post"]["user"]["profileImage"], avatar.as_str());
    let row: String = sqlx::query_scalar("SELECT url FROM post_attachments WHERE post_id = ?")
        .bind(post)
        .fetch_one(app.ctx.store.pool())
        .await
        .unwrap();
    assert!(row.starts_with("post/"), "row holds {row}");
    let grid = get_with(&app, "/api/post/get/list?userId=alice01", &bob, &[]).await;
    assert_under(
        grid["list"][0]["profileImage"].as_str().unwrap(),
        &origin,
        "post",
    );
    let found = get_with(&app, "/api/user/search?keyword=alice", &bob, &[]).await;
    assert_eq!(found["users"][0]["profileImage"], avatar.as_str());

    // Another name for the same server: every URL of that response follows it, cached or not.
    let port = origin.rsplit(':').next().unwrap();
    let other = format!("http://localhost:{port}");
    let host = format!("localhost:{port}");
    for _ in 0..2 {
        let d = get_with(
            &app,
            &format!("/api/post/get/details_info?postId={post}"),
            &bob,
            &[("host", &host)],
        )
        .await;
        let image = &d["post"]["imageTags"][0];
        assert_under(image["url"].as_str().unwrap(), &other, "post");
        assert_eq!(
            d["post"]["user"]["profileImage"],
            avatar.replace(&origin, &other).as_str()
        );
    }
    let me = get_with(&app, "/api/user/me", &alice, &[("host", &host)]).await;
    assert_eq!(
        me["user"]["profileImage"],
        avatar.replace(&origin, &other).as_str()
    );
    // Forwarded headers from a peer that is not a trusted proxy are ignored.
    let d = get_with(
        &app,
        "/api/user/me",
        &alice,
        &[
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(d["user"]["profileImage"], avatar.as_str());

    // The FOLLOW alarm pushed to alice carries bob's image under the canonical origin.
    upload_profile(&app, &bob).await;
    let mut link = attach(&app, "alice01").await;
    let (status, body) = app
        .post(
            "/api/user/follow",
            Some(&bob),
            json!({"followingId": "alice01"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let d = next_for(&mut link, &Target::user("alice01", "notify")).await;
    let pushed: Value = serde_json::from_slice(&d.envelope.body).unwrap();
    assert_eq!(pushed["alarmType"], "FOLLOW");
    assert_under(
        pushed["senderProfileImage"].as_str().unwrap(),
        &origin,
        "profile",
    );
    // And the stored alarm, listed later, the same URL.
    let list = get_with(&app, "/api/alarm/getList", &alice, &[]).await;
    assert_eq!(
        list["list"][0]["senderProfileImage"],
        pushed["senderProfileImage"]
    );
}
on_both!(urls_are_absolute_keys_are_stored);

async fn rows_from_before_keys_still_render(db: Db) {
    let app = TestApp::start(db).await;
    let origin = app.base.clone();
    let alice = app.user_named("alice01", "Alice").await;
    let set = |value: &'static str| {
        let app = &app;
        async move {
            sqlx::query("UPDATE user SET profile_image = ? WHERE id = 'alice01'")
                .bind(value)
                .execute(app.ctx.store.pool())
                .await
                .unwrap();
            app.ctx
                .cache
                .changed(&[social::cache::Change::User("alice01".into())])
                .await;
        }
    };
    // A relative path under another prefix gets the origin; a foreign absolute URL and "" stay.
    for (row, shown) in [
        ("/static/old/p.jpg", format!("{origin}/static/old/p.jpg")),
        (
            "https://bucket.s3.amazonaws.com/profile/x",
            "https://bucket.s3.amazonaws.com/profile/x".to_owned(),
        ),
        ("", String::new()),
    ] {
        set(row).await;
        let me = get_with(&app, "/api/user/me", &alice, &[]).await;
        assert_eq!(me["user"]["profileImage"], shown.as_str(), "{row}");
    }
    // Rows a version before keys wrote (`/media/{key}`) become keys, once.
    set("/media/profile/legacy").await;
    assert_eq!(app.ctx.store.adopt_media_keys("/media").await.unwrap(), 1);
    assert_eq!(app.ctx.store.adopt_media_keys("/media").await.unwrap(), 0);
    let key = stored(
        &app,
        "SELECT profile_image FROM user WHERE id = ?",
        "alice01",
    )
    .await;
    assert_eq!(key, "profile/legacy");
    // A bucket URL with LIKE wildcards in it is matched literally.
    set("http://s3.local/b_1/profile/y").await;
    assert_eq!(
        app.ctx
            .store
            .adopt_media_keys("http://s3.local/bx1")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        app.ctx
            .store
            .adopt_media_keys("http://s3.local/b_1")
            .await
            .unwrap(),
        1
    );
    let me = get_with(&app, "/api/user/me", &alice, &[]).await;
    assert_eq!(
        me["user"]["profileImage"],
        format!("{origin}/media/profile/y").as_str()
    );
}
on_both!(rows_from_before_keys_still_render);

async fn a_public_url_or_a_trusted_proxy_names_the_server(db: Db) {
    // A configured public URL wins over every request's own name.
    let app = TestApp::start_with(db, |cfg| {
        cfg.public_url.fixed = Some("https://api.example.com".into());
    })
    .await;
    let alice = app.user_named("alice01", "Alice").await;
    let url = upload_profile(&app, &alice).await;
    assert_under(&url, "https://api.example.com", "profile");
    let me = get_with(&app, "/api/user/me", &alice, &[("host", "localhost:1")]).await;
    assert_eq!(me["user"]["profileImage"], url.as_str());
    drop(app);

    // Behind a trusted proxy, its X-Forwarded-Host and -Proto name the server.
    let app = TestApp::start_with(db, |cfg| {
        cfg.public_url.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let alice = app.user_named("alice01", "Alice").await;
    let url = upload_profile(&app, &alice).await;
    assert_under(&url, &app.base, "profile");
    let me = get_with(
        &app,
        "/api/user/me",
        &alice,
        &[
            ("x-forwarded-host", "spoofed.example, www.example.org"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_under(
        me["user"]["profileImage"].as_str().unwrap(),
        "https://www.example.org",
        "profile",
    );
}
on_both!(a_public_url_or_a_trusted_proxy_names_the_server);

/// With S3, URLs are the bucket's (absolute whatever the request), and rows hold keys.
async fn s3_urls_are_the_buckets(db: Db) {
    let Ok(endpoint) = std::env::var("INSTAR_TEST_S3_ENDPOINT") else {
        let ci = matches!(std::env::var("CI").as_deref(), Ok("true" | "1"));
        assert!(
            !ci,
            "INSTAR_TEST_S3_ENDPOINT is not set: run through scripts/test"
        );
        eprintln!("SKIPPED: INSTAR_TEST_S3_ENDPOINT is not set");
        return;
    };
    let endpoint = endpoint.trim_end_matches('/').to_owned();
    let bucket = format!(
        "instar-urls-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let settings = S3Settings {
        endpoint: Some(endpoint.clone()),
        region: "us-east-1".into(),
        bucket: bucket.clone(),
        access_key: std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into()),
        secret_key: std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "test".into()),
        path_style: true,
        public_base_url: None,
        create_bucket: true,
    };
    let app = TestApp::start_with(db, |cfg| {
        cfg.media.backend = Backend::S3 {
            endpoint: settings.endpoint.clone(),
            region: settings.region.clone(),
            bucket: settings.bucket.clone(),
            access_key: settings.access_key.clone(),
            secret_key: settings.secret_key.clone(),
            path_style: true,
            public_base_url: None,
            create_bucket: true,
        };
    })
    .await;
    let alice = app.user_named("alice01", "Alice").await;
    let url = upload_profile(&app, &alice).await;
    let base = format!("{endpoint}/{bucket}");
    assert!(url.starts_with(&format!("{base}/profile/")), "{url}");
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 200);
    let key = stored(
        &app,
        "SELECT profile_image FROM user WHERE id = ?",
        "alice01",
    )
    .await;
    assert_eq!(url, format!("{base}/{key}"));
    let post = create_post(&app, &alice).await;
    let d = get_with(
        &app,
        &format!("/api/post/get/details_info?postId={post}"),
        &alice,
        &[("host", "localhost:1")],
    )
    .await;
    let image = d["post"]["imageTags"][0]["url"].as_str().unwrap();
    assert!(image.starts_with(&format!("{base}/post/")), "{image}");
    // A row a version before keys wrote as the bucket's URL becomes its key at start-up.
    sqlx::query("UPDATE user SET profile_image = ? WHERE id = 'alice01'")
        .bind(&url)
        .execute(app.ctx.store.pool())
        .await
        .unwrap();
    assert_eq!(app.ctx.store.adopt_media_keys(&base).await.unwrap(), 1);
    assert_eq!(
        stored(
            &app,
            "SELECT profile_image FROM user WHERE id = ?",
            "alice01"
        )
        .await,
        key
    );
}
on_both!(s3_urls_are_the_buckets);
