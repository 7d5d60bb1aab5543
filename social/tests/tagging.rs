//! Automatic post tags through the API (docs/tagging.md): hashtags stored as their last noun
//! (contract §6.3); the Vision client against a local fake speaking Vision's JSON; the first
//! image labelled after the commit from the persisted queue, on SQLite and MariaDB.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;
mod fake_vision;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Db, TestApp, png_bytes, wait_until};
use fake_vision::{FakeVision, Mode, service_account};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use social::tagging::labels::{
    Credentials, LabelError, Labeler, ServiceAccount, Vision, VisionConfig,
};

fn dictionary() -> std::path::PathBuf {
    std::env::var_os("INSTAR_MECAB_KO_DIC")
        .expect("INSTAR_MECAB_KO_DIC is not set: run scripts/test once and source .test-env/env.sh")
        .into()
}

fn labels(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| (*s).to_owned()).collect()
}

fn vision_cfg(fake: &FakeVision) -> VisionConfig {
    let mut cfg = VisionConfig::new(Credentials::ApiKey("test-key".into()));
    cfg.endpoint = fake.endpoint();
    cfg.timeout = Duration::from_millis(700);
    cfg.attempts = 3;
    cfg.backoff = Duration::from_millis(50);
    cfg
}

async fn create(app: &TestApp, token: &str, data: &Value) -> i64 {
    let form = Form::new()
        .part(
            "images",
            Part::bytes(png_bytes(8, 6))
                .file_name("0.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text("data", data.to_string());
    let (status, body) = app
        .post_multipart("/api/post/create", Some(token), form)
        .await;
    assert_eq!(status, 200, "{body}");
    body["postId"].as_i64().unwrap()
}

async fn tags_of(app: &TestApp, post: i64) -> Vec<(String, String)> {
    let mut tags: Vec<(String, String)> =
        sqlx::query_as("SELECT tag_name, type FROM post_tags WHERE post_id = ?")
            .bind(post)
            .fetch_all(app.ctx.store.pool())
            .await
            .unwrap();
    tags.sort();
    tags
}

fn rows(names: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = names
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .collect();
    v.sort();
    v
}

async fn jobs(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM tag_job")
        .fetch_one(app.ctx.store.pool())
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The noun rule on hashtags

async fn hashtags_are_stored_as_their_last_noun(db: Db) {
    let app = TestApp::start_with(db, |cfg| cfg.tags.dictionary = Some(dictionary())).await;
    let alice = app.user("alice01").await;
    let data = json!({
        "comment": "#서울여행 #부산여행 #맛집탐방 #Sea #ㅋㅋㅋ #아이폰15",
        "hashtags": ["서울여행", "부산여행", "맛집탐방", "sea", "ㅋㅋㅋ", "아이폰15", "여행"]
    });
    let post = create(&app, &alice, &data).await;
    let h = "HASH_TAG";
    assert_eq!(
        tags_of(&app, post).await,
        rows(&[
            ("여행", h),
            ("탐방", h),
            ("sea", h),
            ("ㅋㅋㅋ", h),
            ("아이폰", h)
        ])
    );
    // No labeler configured: no job is queued.
    assert_eq!(jobs(&app).await, 0);
}
on_both!(hashtags_are_stored_as_their_last_noun);

// ---------------------------------------------------------------------------------------------
// The Vision client

#[tokio::test]
async fn vision_client_success_sends_the_image_bytes_with_the_key() {
    let fake = FakeVision::start(Mode::Labels(labels(&[
        "Sky",
        "Cloud",
        "Golden retriever",
        "Plant",
        "Tree",
        "Water",
        "Grass",
    ])))
    .await;
    let vision = Vision::new(vision_cfg(&fake)).unwrap();
    let got = vision
        .labels(Bytes::from_static(b"\x89PNG..."))
        .await
        .unwrap();
    assert_eq!(
        got,
        labels(&["Sky", "Cloud", "Golden retriever", "Plant", "Tree"])
    );
    let req = fake.last_request().unwrap();
    assert_eq!(req["requests"][0]["image"]["content"], "iVBORy4uLg==");
    assert_eq!(req["requests"][0]["features"][0]["type"], "LABEL_DETECTION");
    assert_eq!(req["requests"][0]["features"][0]["maxResults"], 10);
    assert_eq!(fake.last_query().unwrap(), "key=test-key");
}

#[tokio::test]
async fn vision_client_refusals_failures_and_slowness() {
    let fake = FakeVision::start(Mode::Status(
        400,
        r#"{"error":{"code":400,"message":"Bad image data.","status":"INVALID_ARGUMENT"}}"#.into(),
        None,
    ))
    .await;
    let vision = Vision::new(vision_cfg(&fake)).unwrap();
    let img = Bytes::from_static(b"img");

    // 4xx: refused at once, not retried.
    let err = vision.labels(img.clone()).await.unwrap_err();
    assert!(
        matches!(&err, LabelError::Refused(m) if m.contains("Bad image data")),
        "{err:?}"
    );
    assert_eq!(fake.calls(), 1);

    // 5xx then success: retried with backoff.
    fake.then(vec![Mode::Status(503, "unavailable".into(), None)]);
    fake.set(Mode::Labels(labels(&["Sky"])));
    assert_eq!(vision.labels(img.clone()).await.unwrap(), labels(&["Sky"]));
    assert_eq!(fake.calls(), 3);

    // 5xx every time: unavailable after the configured attempts.
    fake.set(Mode::Status(500, "boom".into(), None));
    let err = vision.labels(img.clone()).await.unwrap_err();
    assert!(matches!(err, LabelError::Unavailable(_)), "{err:?}");
    assert_eq!(fake.calls(), 6);

    // 429 with Retry-After: waited for, then answered.
    fake.then(vec![Mode::Status(
        429,
        r#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED"}}"#.into(),
        Some(1),
    )]);
    fake.set(Mode::Labels(labels(&["Cloud"])));
    let started = Instant::now();
    assert_eq!(
        vision.labels(img.clone()).await.unwrap(),
        labels(&["Cloud"])
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // A Retry-After beyond the bound ends the call (the worker tries later).
    fake.set(Mode::Status(429, "{}".into(), Some(3600)));
    let calls = fake.calls();
    let err = vision.labels(img.clone()).await.unwrap_err();
    assert!(matches!(err, LabelError::Unavailable(_)), "{err:?}");
    assert_eq!(fake.calls(), calls + 1);

    // Slow: each attempt times out.
    fake.set(Mode::Slow(Duration::from_secs(3), labels(&["Late"])));
    let started = Instant::now();
    let err = vision.labels(img.clone()).await.unwrap_err();
    assert!(
        matches!(&err, LabelError::Unavailable(m) if m.contains("no answer")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Malformed: refused, not retried.
    for body in [
        "<html>oops</html>",
        r#"{"responses":[]}"#,
        r#"{"responses":[{"labelAnnotations":[{"description":42}]}]}"#,
        r#"{"responses":[{"labelAnnotations":[{"description":""}]}]}"#,
    ] {
        fake.set(Mode::Raw(body.into()));
        let calls = fake.calls();
        let err = vision.labels(img.clone()).await.unwrap_err();
        assert!(matches!(err, LabelError::Malformed(_)), "{body}: {err:?}");
        assert_eq!(fake.calls(), calls + 1);
    }

    // An answer larger than the bound is not read.
    fake.set(Mode::Raw(format!(
        r#"{{"responses":[{{"labelAnnotations":[{{"description":"{}"}}]}}]}}"#,
        "x".repeat(400 * 1024)
    )));
    assert!(vision.labels(img).await.is_err());
}

#[tokio::test]
async fn vision_client_with_a_service_account_uses_oauth2_tokens() {
    let fake = FakeVision::start(Mode::Labels(labels(&["Sky"]))).await;
    let (json, public) = service_account(&fake.base);
    fake.require_service_account(&public);
    let mut cfg = vision_cfg(&fake);
    cfg.credentials = Credentials::ServiceAccount(ServiceAccount::from_json(&json).unwrap());
    let vision = Vision::new(cfg).unwrap();
    let img = Bytes::from_static(b"img");
    assert_eq!(vision.labels(img.clone()).await.unwrap(), labels(&["Sky"]));
    assert_eq!(vision.labels(img).await.unwrap(), labels(&["Sky"]));
    // One token, reused.
    assert_eq!(fake.token_calls(), 1);
    assert_eq!(fake.last_auth().unwrap(), "Bearer tok-1");
    assert_eq!(fake.last_query().unwrap(), "");

    // A key that is not the account's: the token endpoint refuses the assertion.
    let (other, _) = service_account(&fake.base);
    let mut cfg = vision_cfg(&fake);
    cfg.credentials = Credentials::ServiceAccount(ServiceAccount::from_json(&other).unwrap());
    let err = Vision::new(cfg)
        .unwrap()
        .labels(Bytes::from_static(b"img"))
        .await
        .unwrap_err();
    assert!(matches!(err, LabelError::Refused(_)), "{err:?}");
    assert!(ServiceAccount::from_json("{}").is_err());
}

// ---------------------------------------------------------------------------------------------
// The worker

async fn labels_are_stored_after_the_commit(db: Db) {
    let fake = FakeVision::start(Mode::Labels(labels(&[
        "Sky",
        "서울여행",
        "Golden retriever",
        "Sea",
        "Cloud",
        "Tree",
        "Water",
    ])))
    .await;
    let cfg = vision_cfg(&fake);
    let app = TestApp::start_with(db, move |c| {
        c.tags.dictionary = Some(dictionary());
        c.tags.vision = Some(cfg);
    })
    .await;
    let alice = app.user("alice01").await;
    let post = create(
        &app,
        &alice,
        &json!({"comment": "#sea", "hashtags": ["sea", "바다"]}),
    )
    .await;
    wait_until("AI tags", || async { jobs(&app).await == 0 }).await;
    let (a, h) = ("AI_TAG", "HASH_TAG");
    assert_eq!(
        tags_of(&app, post).await,
        rows(&[
            ("Sky", a),
            ("여행", a),
            ("Golden retriever", a),
            ("Sea", a),
            ("Cloud", a),
            ("sea", h),
            ("바다", h),
        ])
    );
}
on_both!(labels_are_stored_after_the_commit);

async fn vision_down_then_back(db: Db) {
    let fake = FakeVision::start(Mode::Status(503, "down".into(), None)).await;
    let mut cfg = vision_cfg(&fake);
    cfg.attempts = 1;
    let app = TestApp::start_with(db, move |c| c.tags.vision = Some(cfg)).await;
    let alice = app.user("alice01").await;
    let started = Instant::now();
    let post = create(&app, &alice, &json!({"comment": "x"})).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    wait_until("a failed attempt recorded", || async {
        let e: Option<Option<String>> = sqlx::query_scalar("SELECT last_error FROM tag_job")
            .fetch_optional(app.ctx.store.pool())
            .await
            .unwrap();
        e.flatten().is_some_and(|e| e.contains("503"))
    })
    .await;
    assert_eq!(jobs(&app).await, 1);
    assert!(tags_of(&app, post).await.is_empty());

    fake.set(Mode::Labels(labels(&["Sky"])));
    wait_until("the labels once Vision is back", || async {
        jobs(&app).await == 0
    })
    .await;
    assert_eq!(tags_of(&app, post).await, rows(&[("Sky", "AI_TAG")]));
}
on_both!(vision_down_then_back);

async fn malformed_answers_are_refused(db: Db) {
    let fake = FakeVision::start(Mode::Raw(
        r#"{"responses":[{"labelAnnotations":[{"description":{"x":1}}]}]}"#.into(),
    ))
    .await;
    let cfg = vision_cfg(&fake);
    let app = TestApp::start_with(db, move |c| c.tags.vision = Some(cfg)).await;
    let alice = app.user("alice01").await;
    let post = create(&app, &alice, &json!({"comment": "x", "hashtags": ["sea"]})).await;
    wait_until("a refused answer", || async { fake.calls() >= 1 }).await;
    wait_until("the job to record it", || async {
        let e: Option<Option<String>> = sqlx::query_scalar("SELECT last_error FROM tag_job")
            .fetch_optional(app.ctx.store.pool())
            .await
            .unwrap();
        e.flatten().is_some_and(|e| e.contains("malformed"))
    })
    .await;
    // Nothing stored from it; the hashtag is untouched.
    assert_eq!(tags_of(&app, post).await, rows(&[("sea", "HASH_TAG")]));
}
on_both!(malformed_answers_are_refused);

// ---------------------------------------------------------------------------------------------
// Tags on the post (details and feed) and in interests

fn names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect()
}

async fn details(app: &TestApp, token: &str, post: i64) -> Value {
    let (status, body) = app
        .get(
            &format!("/api/post/get/details_info?postId={post}"),
            Some(token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["post"].clone()
}

async fn tags_show_on_the_post_and_in_the_feed(db: Db) {
    // Vision is down at first: the post is read (and its view cached) before it is labelled.
    let fake = FakeVision::start(Mode::Status(503, "down".into(), None)).await;
    let mut cfg = vision_cfg(&fake);
    cfg.attempts = 1;
    let app = TestApp::start_with(db, move |c| {
        c.tags.dictionary = Some(dictionary());
        c.tags.vision = Some(cfg);
    })
    .await;
    let alice = app.user("alice01").await;
    let bob = app.user("bob01").await;
    let (status, body) = app
        .post(
            "/api/user/follow",
            Some(&bob),
            json!({"followingId": "alice01"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let post = create(
        &app,
        &alice,
        &json!({"comment": "#서울여행 #sea", "hashtags": ["서울여행", "sea"]}),
    )
    .await;
    let before = details(&app, &bob, post).await;
    assert_eq!(names(&before["hashtags"]), ["sea", "여행"]);
    assert_eq!(names(&before["aiTags"]), Vec::<String>::new());
    // Every field the frontend reads is still there.
    for key in [
        "postId",
        "user",
        "comment",
        "location",
        "favoriteCount",
        "commentCount",
        "createdAt",
        "imageTags",
        "isLiked",
    ] {
        assert!(before.get(key).is_some(), "{key} missing: {before}");
    }
    let (_, feed) = app.get("/api/feed", Some(&bob)).await;
    assert_eq!(feed["feed"][0]["postId"], post, "{feed}");

    // Vision comes back: the worker stores the labels and the cached post shows them at once.
    fake.set(Mode::Labels(labels(&["Dog", "강아지산책", "Sea", "sea"])));
    wait_until("the labels", || async { jobs(&app).await == 0 }).await;
    let after = details(&app, &bob, post).await;
    assert_eq!(names(&after["hashtags"]), ["sea", "여행"]);
    // `sea` is a hashtag already (it stays one); `Sea` differs in case and is a label.
    assert_eq!(names(&after["aiTags"]), ["Dog", "Sea", "산책"]);
    let (_, feed) = app.get("/api/feed", Some(&bob)).await;
    let shown = &feed["feed"][0];
    assert_eq!(shown["postId"], post, "{feed}");
    assert_eq!(names(&shown["aiTags"]), ["Dog", "Sea", "산책"]);
    assert_eq!(names(&shown["hashtags"]), ["sea", "여행"]);

    // AI tags feed interests: bob's like counts each AI tag (×0.5) and each hashtag (×1.0).
    let (status, body) = app
        .post(
            &format!("/api/post/like?postId={post}"),
            Some(&bob),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let interests = app.ctx.store.interests_of("bob01").await.unwrap();
    let score = |k: &str, t: &str| {
        interests
            .iter()
            .find(|r| r.interest_keyword == k && r.kind == t)
            .map(|r| r.score)
    };
    let close = |got: Option<f64>, want: f64| got.is_some_and(|g| (g - want).abs() < 1e-3);
    assert!(close(score("Dog", "AI_TAG"), 0.5), "{interests:?}");
    assert!(close(score("산책", "AI_TAG"), 0.5), "{interests:?}");
    assert!(close(score("여행", "HASH_TAG"), 1.0), "{interests:?}");
    assert_eq!(score("Dog", "HASH_TAG"), None, "{interests:?}");
}
on_both!(tags_show_on_the_post_and_in_the_feed);
