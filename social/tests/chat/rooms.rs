//! The room list (#1) and room creation (#2).

#![allow(unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use broker_bridge::{
    AppCommand, Bus, Delivery, Envelope, InProcessConfig, NodeLink, Registry, SessionEntry, Target,
};
use serde_json::{Value, json};

use super::helpers::*;
use crate::common::{self, Db, TestApp, files_under, pdf_bytes, png_bytes, wait_until};
use crate::on_both;

async fn room_list_shape_titles_and_unread(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    quick_user(&app, "dan04", "Dan").await;

    let dm = create_room(&app, &alice, &["bob02"]).await;
    let group = create_room(&app, &alice, &["bob02", "carol03", "dan04"]).await;
    assert_ne!(dm, group);

    let list = room_list(&app, &alice).await;
    assert_eq!(list.len(), 2);
    for r in &list {
        assert_eq!(
            object_keys(r),
            sorted_strings(&[
                "chatroomId",
                "title",
                "lastMessage",
                "profileImages",
                "unreadCount",
                "type"
            ])
        );
    }
    let d = room_in(&list, dm).unwrap();
    assert_eq!(d["type"], "DIRECT");
    assert_eq!(d["title"], "Bob");
    assert_eq!(d["lastMessage"], Value::Null);
    assert_eq!(d["unreadCount"], 0);
    let images: Vec<String> = serde_json::from_str(d["profileImages"].as_str().unwrap()).unwrap();
    assert_eq!(images, ["https://img/bob02"]);
    let g = room_in(&list, group).unwrap();
    assert_eq!(g["type"], "GROUP");
    assert_eq!(g["title"], "Bob 외 2명");
    let images: Vec<String> = serde_json::from_str(g["profileImages"].as_str().unwrap()).unwrap();
    assert_eq!(images.len(), 3);

    // Newest activity first; unread counts messages from others only (the original counted the
    // reader's own and showed 0 while the pointer was NULL), capped at 99.
    send(&app, "alice01", dm, "hello bob").await;
    let list = room_list(&app, &alice).await;
    assert_eq!(list[0]["chatroomId"], dm);
    assert_eq!(list[0]["lastMessage"], "hello bob");
    assert_eq!(list[0]["unreadCount"], 0);
    let list = room_list(&app, &bob).await;
    assert_eq!(room_in(&list, dm).unwrap()["unreadCount"], 1);
    assert_eq!(room_in(&list, dm).unwrap()["title"], "Alice");

    insert_messages(&app, group, "carol03", 120).await;
    let list = room_list(&app, &bob).await;
    assert_eq!(room_in(&list, group).unwrap()["unreadCount"], 99);

    // Reading moves the count.
    let last = send(&app, "carol03", group, "latest").await;
    assert!(
        !run_command(
            &app,
            cmd(
                "/app/update/read",
                "bob02",
                json!({"chatRoomId": group, "messageId": last})
            )
        )
        .await
    );
    let list = room_list(&app, &bob).await;
    assert_eq!(room_in(&list, group).unwrap()["unreadCount"], 0);

    // A custom title wins; a group image replaces the image array by its URL.
    let (status, body) = put_json(
        &app,
        "/api/chat/update/group/title",
        &alice,
        json!({"chatRoomId": group, "updateTitle": "Trip"}),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"code": "SC", "title": "Trip"}))
    );
    assert_eq!(
        room_in(&room_list(&app, &bob).await, group).unwrap()["title"],
        "Trip"
    );

    assert_eq!(app.get("/api/chat/getList", None).await.0, 401);
}
on_both!(room_list_shape_titles_and_unread);

async fn create_validates_and_reuses_the_dm(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;

    let a = create_room(&app, &alice, &["bob02"]).await;
    let b = create_room(&app, &alice, &["bob02", "alice01", "bob02"]).await; // self and duplicates dropped
    let c = create_room(&app, &bob, &["alice01"]).await;
    assert_eq!((a, b), (a, a));
    assert_eq!(c, a);
    assert_eq!(
        count_rows(
            &app,
            "SELECT COUNT(*) FROM chatroom WHERE type = 'DIRECT' AND id >= ?",
            0
        )
        .await,
        1
    );

    for users in [
        json!([]),
        json!(["alice01"]),
        json!(["nobody"]),
        json!(["bob02", "nobody"]),
    ] {
        let (status, body) = app
            .post("/api/chat/create", Some(&alice), json!({ "users": users }))
            .await;
        assert_eq!((status, body), (400, json!({"code": "BR"})), "{users}");
    }
    // Nothing was created by the refused calls.
    assert_eq!(
        count_rows(&app, "SELECT COUNT(*) FROM chatroom WHERE id >= ?", 0).await,
        1
    );

    // Concurrent creates of one pair end in one room.
    let carol = app.token("carol03");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let client = app.client.clone();
        let url = app.url("/api/chat/create");
        let (token, other) = if i % 2 == 0 {
            (carol.clone(), "alice01")
        } else {
            (alice.clone(), "carol03")
        };
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "users": [other] }))
                .send()
                .await
                .unwrap();
            let v: Value = res.json().await.unwrap();
            v["chatRoomId"].as_i64().unwrap()
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        count_rows(
            &app,
            "SELECT COUNT(*) FROM chatroom WHERE type = 'DIRECT' AND id >= ?",
            0
        )
        .await,
        2
    );
}
on_both!(create_validates_and_reuses_the_dm);

async fn create_pushes_create_room(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    let mut link = node(&app, "n1", &["alice01", "bob02"]).await;
    create_room(&app, &alice, &["bob02"]).await;
    let got = drain(&mut link, 500).await;
    let mut who: Vec<String> = got
        .iter()
        .map(|d| match &d.target {
            Target::User { user, queue } => {
                assert_eq!(queue, "notify");
                assert_eq!(d.envelope.destination, "/user/queue/notify");
                let v = json_of(d);
                assert_eq!(object_keys(&v), sorted_strings(&["alarmType", "create_at"]));
                assert_eq!(v["alarmType"], "CREATE_ROOM");
                user.clone()
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    who.sort();
    assert_eq!(who, ["alice01", "bob02"]);
    // Re-opening an open DM: only the creator is told.
    create_room(&app, &alice, &["bob02"]).await;
    let got = drain(&mut link, 300).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].target, Target::user("alice01", "notify"));
    outbox_drains(&app).await;
}
on_both!(create_pushes_create_room);
