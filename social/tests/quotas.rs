//! Per-user write quotas (docs/social.md, "Limits"): past a quota a write is refused with 429
//! `TMR` before any work, other users are not affected, and refusals are counted on `/metrics`.
//! Before quotas, one account could follow, like, comment, post and upload without any bound.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Cursor;

use common::{Db, TestApp};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use social::quotas::Quotas;

fn png() -> Vec<u8> {
    let img =
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(6, 6, image::Rgb([1, 2, 3])));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn image_part() -> Part {
    Part::bytes(png())
        .file_name("a.png")
        .mime_str("image/png")
        .unwrap()
}

async fn post(app: &TestApp, token: &str) -> (u16, Value) {
    let form = Form::new()
        .part("images", image_part())
        .text("data", json!({"comment": "hi"}).to_string());
    app.post_multipart("/api/post/create", Some(token), form)
        .await
}

const TMR: (u16, &str) = (429, "TMR");

fn code(r: (u16, Value)) -> (u16, String) {
    (r.0, r.1["code"].as_str().unwrap_or_default().to_owned())
}

async fn writes_stop_at_the_users_quota(db: Db) {
    let app = TestApp::start_with(db, |cfg| {
        cfg.limits.quotas = Quotas {
            follows: 2,
            likes: 2,
            comments: 1,
            posts: 1,
            rooms: 1,
            ..Quotas::default()
        };
    })
    .await;
    let alice = app.user("alice01").await;
    let bob = app.user("bob0002").await;
    for u in ["carol03", "dave004"] {
        app.user(u).await;
    }
    let follow = |token: String, target: &'static str| {
        let app = &app;
        async move {
            code(
                app.post(
                    "/api/user/follow",
                    Some(&token),
                    json!({"followingId": target}),
                )
                .await,
            )
        }
    };
    assert_eq!(follow(alice.clone(), "bob0002").await, (200, "SC".into()));
    assert_eq!(follow(alice.clone(), "carol03").await, (200, "SC".into()));
    let refused = follow(alice.clone(), "dave004").await;
    assert_eq!((refused.0, refused.1.as_str()), TMR);
    // Nothing was written for the refused follow, and bob's own quota is untouched.
    let (_, me) = app.get("/api/user/me", Some(&alice)).await;
    assert_eq!(me["user"]["followCount"], 2);
    assert_eq!(follow(bob.clone(), "alice01").await, (200, "SC".into()));

    // One post, then refused (its image is not stored).
    let (s, b) = post(&app, &alice).await;
    assert_eq!(s, 200, "{b}");
    let id = b["postId"].as_i64().unwrap();
    let refused = code(post(&app, &alice).await);
    assert_eq!((refused.0, refused.1.as_str()), TMR);
    let (_, grid) = app.get("/api/post/get/list", Some(&alice)).await;
    assert_eq!(grid["list"].as_array().unwrap().len(), 1);

    // Likes (a toggle counts each way) and comments.
    let like = format!("/api/post/like?postId={id}");
    for _ in 0..2 {
        let (s, _) = app
            .post_raw(&like, Some(&alice), "text/plain", Vec::new())
            .await;
        assert_eq!(s, 200);
    }
    let refused = code(
        app.post_raw(&like, Some(&alice), "text/plain", Vec::new())
            .await,
    );
    assert_eq!((refused.0, refused.1.as_str()), TMR);
    let comment = json!({"postId": id, "comment": "nice"});
    assert_eq!(
        app.post("/api/post/comment", Some(&alice), comment.clone())
            .await
            .0,
        200
    );
    let refused = code(app.post("/api/post/comment", Some(&alice), comment).await);
    assert_eq!((refused.0, refused.1.as_str()), TMR);

    // Chat rooms.
    let (s, _) = app
        .post(
            "/api/chat/create",
            Some(&alice),
            json!({"users": ["bob0002"]}),
        )
        .await;
    assert_eq!(s, 200);
    let refused = code(
        app.post(
            "/api/chat/create",
            Some(&alice),
            json!({"users": ["carol03"]}),
        )
        .await,
    );
    assert_eq!((refused.0, refused.1.as_str()), TMR);

    let metrics = app.ctx.metrics_text();
    for write in ["follow", "post", "like", "comment", "room"] {
        let line = format!("instar_quota_refusals_total{{write=\"{write}\"}} 1");
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
}
on_both!(writes_stop_at_the_users_quota);

async fn uploads_are_bounded_by_count_and_bytes(db: Db) {
    let app = TestApp::start_with(db, |cfg| {
        cfg.limits.quotas = Quotas {
            uploads: 2,
            upload_bytes: 1_000_000,
            ..Quotas::default()
        };
    })
    .await;
    let alice = app.user("alice01").await;
    let upload = || {
        let app = &app;
        let alice = alice.clone();
        async move {
            code(
                app.post_multipart(
                    "/api/file/upload/profile",
                    Some(&alice),
                    Form::new().part("file", image_part()),
                )
                .await,
            )
        }
    };
    assert_eq!(upload().await.0, 200);
    assert_eq!(upload().await.0, 200);
    let refused = upload().await;
    assert_eq!((refused.0, refused.1.as_str()), TMR);

    // Bytes: one large file uses the byte quota up at once.
    let app = TestApp::start_with(db, |cfg| {
        cfg.limits.quotas = Quotas {
            upload_bytes: 64,
            ..Quotas::default()
        };
    })
    .await;
    let bob = app.user("bob0002").await;
    let refused = code(
        app.post_multipart(
            "/api/file/upload/profile",
            Some(&bob),
            Form::new().part("file", image_part()),
        )
        .await,
    );
    assert_eq!((refused.0, refused.1.as_str()), TMR);
}
on_both!(uploads_are_bounded_by_count_and_bytes);
