//! `GET /api/alarm/getList` (#29, contract §6.14).

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::io::Cursor;

use common::{Db, TestApp};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use social::model::AlarmType;
use social::time::now_micros;

fn png() -> Vec<u8> {
    let img =
        image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3])));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn create_post(app: &TestApp, token: &str, data: Value) -> i64 {
    let form = Form::new()
        .part(
            "images",
            Part::bytes(png())
                .file_name("a.png")
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

/// `follower` follows `following` with its FOLLOW alarm, written straight to the store; returns
/// the follows row id.
async fn follow_with_alarm(app: &TestApp, follower: &str, following: &str) -> i64 {
    let mut tx = app.ctx.store.write().await.unwrap();
    sqlx::query("INSERT INTO follows (follower_id, following_id, create_at) VALUES (?, ?, ?)")
        .bind(follower)
        .bind(following)
        .bind(now_micros())
        .execute(tx.conn())
        .await
        .unwrap();
    let id: i64 =
        sqlx::query_scalar("SELECT id FROM follows WHERE follower_id = ? AND following_id = ?")
            .bind(follower)
            .bind(following)
            .fetch_one(tx.conn())
            .await
            .unwrap();
    social::store::alarms::insert(tx.conn(), following, AlarmType::Follow, id, now_micros())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn exec(app: &TestApp, sql: &str) {
    sqlx::query(sql)
        .execute(app.ctx.store.pool())
        .await
        .unwrap();
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(app.ctx.store.pool())
        .await
        .unwrap()
}

async fn alarm_list(app: &TestApp, token: &str) -> Vec<Value> {
    let (status, body) = app.get("/api/alarm/getList", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], "SC");
    body["list"].as_array().unwrap().clone()
}

async fn alarm_shapes_and_order(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user_named("alice01", "Alice").await;
    let bob = app.user_named("bob123", "Bob").await;
    exec(
        &app,
        "UPDATE user SET profile_image = 'profile/b' WHERE id = 'bob123'",
    )
    .await;
    // Stored as a key, listed as an absolute URL.
    let bob_image = app.url("/media/profile/b");

    let post = create_post(
        &app,
        &alice,
        json!({"comment": "x", "tags": {"0": [{"userId": "bob123", "x": 1, "y": 2}]}}),
    )
    .await;
    app.post_raw(
        &format!("/api/post/like?postId={post}"),
        Some(&bob),
        "text/plain",
        Vec::new(),
    )
    .await;
    let (_, c) = app
        .post(
            "/api/post/comment",
            Some(&bob),
            json!({"postId": post, "comment": "nice"}),
        )
        .await;
    follow_with_alarm(&app, "bob123", "alice01").await;

    let list = alarm_list(&app, &alice).await;
    assert_eq!(list.len(), 3);
    // Newest first: follow, comment, like.
    assert_eq!(
        list[0],
        json!({"alarmType": "FOLLOW", "create_at": list[0]["create_at"], "senderId": "bob123", "senderProfileImage": bob_image})
    );
    assert_eq!(
        list[1],
        json!({"alarmType": "POST_COMMENT_RECEIVE", "create_at": list[1]["create_at"], "post": {
            "id": c["comment"]["id"], "postId": post, "userId": "bob123", "name": "Bob",
            "profileImage": bob_image, "content": "nice", "createAt": c["comment"]["createAt"]
        }, "postId": post})
    );
    assert_eq!(
        list[2],
        json!({"alarmType": "POST_LIKE_RECEIVE", "create_at": list[2]["create_at"], "user": {
            "id": "bob123", "name": "Bob", "profileImage": bob_image, "following": false
        }, "postId": post})
    );
    for a in &list {
        let s = a["create_at"].as_str().unwrap();
        assert!(s.len() >= 19 && &s[10..11] == "T", "{s}");
    }
    assert!(list[0]["create_at"].as_str() >= list[1]["create_at"].as_str());

    // Bob's POST_TAG: the sender is the post's author (the original showed the recipient).
    let list = alarm_list(&app, &bob).await;
    assert_eq!(
        list,
        vec![
            json!({"alarmType": "POST_TAG", "create_at": list[0]["create_at"], "senderId": "alice01", "senderProfileImage": "", "postId": post})
        ]
    );

    let (status, body) = app.get("/api/alarm/getList", None).await;
    assert_eq!((status, body), (401, json!({"code": "AV"})));
}
on_both!(alarm_shapes_and_order);

async fn alarm_list_survives_vanished_targets(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user("alice01").await;
    let bob = app.user("bob123").await;
    let carol = app.user("carol1").await;
    let post = create_post(
        &app,
        &alice,
        json!({"comment": "x", "tags": {"0": [{"userId": "bob123", "x": 1, "y": 2}]}}),
    )
    .await;
    for t in [&bob, &carol] {
        app.post_raw(
            &format!("/api/post/like?postId={post}"),
            Some(t),
            "text/plain",
            Vec::new(),
        )
        .await;
    }
    app.post(
        "/api/post/comment",
        Some(&bob),
        json!({"postId": post, "comment": "c"}),
    )
    .await;
    let follows = follow_with_alarm(&app, "carol1", "alice01").await;
    // An alarm of a type that is never stored, and one pointing at a like that never existed.
    let now = now_micros();
    for (kind, reference) in [("CHAT", 1), ("POST_LIKE_RECEIVE", 987_654)] {
        sqlx::query("INSERT INTO alarm (user_id, alarm_type, reference_id, create_at) VALUES ('alice01', ?, ?, ?)")
            .bind(kind)
            .bind(reference)
            .bind(now)
            .execute(app.ctx.store.pool())
            .await
            .unwrap();
    }
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM alarm WHERE user_id = 'alice01'").await,
        6
    );

    // Targets vanish behind the alarms' backs (no API deletes them yet; a future delete or a
    // cascade would).
    exec(&app, "DELETE FROM post_comment").await;
    exec(&app, &format!("DELETE FROM follows WHERE id = {follows}")).await;
    exec(&app, "DELETE FROM post_favorite WHERE user_id = 'bob123'").await;
    exec(&app, "DELETE FROM post_attachments_user_tags").await;

    // Only carol's like is left; the list does not fail (the original answered DE).
    let list = alarm_list(&app, &alice).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["alarmType"], "POST_LIKE_RECEIVE");
    assert_eq!(list[0]["user"]["id"], "carol1");
    let list = alarm_list(&app, &bob).await;
    assert!(list.is_empty());
    // Stale alarms are purged; the unknown type is skipped, not touched.
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM alarm WHERE user_id = 'alice01'").await,
        2
    );
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM alarm WHERE user_id = 'bob123'").await,
        0
    );
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM alarm WHERE alarm_type = 'CHAT'").await,
        1
    );
    // Once the last like is gone too, so is its alarm.
    exec(&app, "DELETE FROM post_favorite").await;
    assert!(alarm_list(&app, &alice).await.is_empty());
}
on_both!(alarm_list_survives_vanished_targets);

async fn alarm_list_is_the_newest_twenty(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user("alice01").await;
    let mut order = Vec::new();
    for i in 0..23 {
        let u = format!("fan{i:02}");
        sqlx::query("INSERT INTO user (id, name, email, created_at) VALUES (?, ?, ?, 0)")
            .bind(&u)
            .bind(&u)
            .bind(format!("{u}@example.com"))
            .execute(app.ctx.store.pool())
            .await
            .unwrap();
        follow_with_alarm(&app, &u, "alice01").await;
        order.push(u);
    }
    order.reverse();
    let list = alarm_list(&app, &alice).await;
    let senders: Vec<&str> = list
        .iter()
        .map(|a| a["senderId"].as_str().unwrap())
        .collect();
    assert_eq!(
        senders,
        order[..20].iter().map(String::as_str).collect::<Vec<_>>()
    );
}
on_both!(alarm_list_is_the_newest_twenty);
