//! History pages (#4), read info (#5) and members (#8).

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

async fn history_pages_visit_every_message_once(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    let room = create_room(&app, &alice, &["bob02"]).await;
    let ids = insert_messages(&app, room, "bob02", 75).await;

    let (status, body) = history_page(&app, &alice, room, None).await;
    assert_eq!(status, 200);
    assert_eq!(object_keys(&body), sorted_strings(&["code", "list"]));
    let first = body["list"].as_array().unwrap();
    assert_eq!(first.len(), 30);
    let m = &first[0];
    assert_eq!(object_keys(m), sorted_strings(MESSAGE_KEYS));
    assert_eq!(m["type"], "TEXT");
    assert_eq!(m["chatRoomId"], room);
    assert_eq!(m["messageId"], *ids.last().unwrap());
    assert_eq!(m["senderId"], "bob02");
    assert_eq!(m["senderName"], "Bob");
    assert_eq!(m["senderProfileImage"], "https://img/bob02");
    assert_eq!(m["message"], "m74");
    assert_eq!(m["attachments"], Value::Null);
    let at = m["createAt"].as_str().unwrap();
    assert!(
        at.len() >= 19 && !at.ends_with('Z') && !at.contains('+'),
        "{at}"
    );

    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (status, body) = history_page(&app, &alice, room, cursor).await;
        assert_eq!(status, 200);
        let list = body["list"].as_array().unwrap();
        if list.is_empty() {
            break;
        }
        assert!(list.len() <= 30);
        let page: Vec<i64> = list
            .iter()
            .map(|m| m["messageId"].as_i64().unwrap())
            .collect();
        assert!(
            page.windows(2).all(|w| w[0] > w[1]),
            "newest first: {page:?}"
        );
        cursor = page.last().copied();
        seen.extend(page);
    }
    seen.reverse();
    assert_eq!(seen, ids);

    // Empty cursor = newest page; a non-numeric one is a bad request.
    let (status, body) = app
        .get(
            &format!("/api/chat/history?chatRoomId={room}&messageId="),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["list"].as_array().unwrap().len(), 30);
    let (status, _) = app
        .get(
            &format!("/api/chat/history?chatRoomId={room}&messageId=x"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .get("/api/chat/history?chatRoomId=x", Some(&alice))
        .await;
    assert_eq!(status, 400);
}
on_both!(history_pages_visit_every_message_once);

async fn read_info_and_members_info(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "Bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    let room = create_room(&app, &alice, &["carol03", "Bob02"]).await;

    let (status, body) = app
        .get(
            &format!("/api/chat/get/members/read_info?chatRoomId={room}"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200);
    let list = body["list"].as_array().unwrap();
    assert_eq!(list.len(), 3);
    for e in list {
        assert_eq!(
            object_keys(e),
            sorted_strings(&["chatRoomId", "userId", "lastReadMessageId"])
        );
        assert_eq!(e["chatRoomId"], room);
        assert_eq!(e["lastReadMessageId"], Value::Null);
    }

    let (status, body) = app
        .get(
            &format!("/api/chat/get/members/info?chatRoomId={room}"),
            Some(&alice),
        )
        .await;
    assert_eq!(status, 200);
    let list = body["list"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alice01", "Bob02", "carol03"]); // by id, case-insensitively
    for u in list {
        assert_eq!(
            object_keys(u),
            sorted_strings(&["id", "name", "profileImage", "following"])
        );
        assert_eq!(u["following"], false);
    }

    // After carol leaves she is not listed, and her pointer is not reported.
    let carol = app.token("carol03");
    assert_eq!(leave(&app, &carol, room).await.0, 200);
    let (_, body) = app
        .get(
            &format!("/api/chat/get/members/info?chatRoomId={room}"),
            Some(&alice),
        )
        .await;
    assert_eq!(body["list"].as_array().unwrap().len(), 2);
    let (_, body) = app
        .get(
            &format!("/api/chat/get/members/read_info?chatRoomId={room}"),
            Some(&alice),
        )
        .await;
    assert_eq!(body["list"].as_array().unwrap().len(), 2);
}
on_both!(read_info_and_members_info);

async fn non_members_are_refused_everywhere(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    let eve = quick_user(&app, "eve", "Eve").await;
    let room = create_room(&app, &alice, &["bob02", "carol03"]).await;
    send(&app, "alice01", room, "secret").await;
    let br = json!({"code": "BR"});

    for path in [
        format!("/api/chat/history?chatRoomId={room}"),
        format!("/api/chat/get/members/read_info?chatRoomId={room}"),
        format!("/api/chat/get/members/info?chatRoomId={room}"),
        format!("/api/chat/invite/user_search?keyword=a&chatRoomId={room}"),
        "/api/chat/history?chatRoomId=999999".to_owned(),
    ] {
        assert_eq!(
            app.get(&path, Some(&eve)).await,
            (400, br.clone()),
            "{path}"
        );
        assert_eq!(app.get(&path, None).await.0, 401, "{path}");
    }
    assert_eq!(
        put_json(
            &app,
            "/api/chat/update/group/title",
            &eve,
            json!({"chatRoomId": room, "updateTitle": "mine"})
        )
        .await,
        (400, br.clone())
    );
    assert_eq!(
        app.post(
            "/api/chat/invite/user",
            Some(&eve),
            json!({"chatRoomId": room, "users": ["eve"]})
        )
        .await,
        (400, br.clone())
    );
    assert_eq!(leave(&app, &eve, room).await, (400, br.clone()));
    let form = reqwest::multipart::Form::new()
        .text("chatRoomId", room.to_string())
        .part("file", part(png_bytes(8, 8), "a.png", "image/png"));
    assert_eq!(
        put_form(&app, "/api/chat/update/group/profile_image", &eve, form).await,
        (400, br.clone())
    );
    let form = reqwest::multipart::Form::new()
        .part("files", part(png_bytes(8, 8), "a.png", "image/png"))
        .text("chatRoomId", room.to_string());
    assert_eq!(
        app.post_multipart("/api/file/upload/chat", Some(&eve), form)
            .await,
        (400, br.clone())
    );
    // Nothing stored for the refused upload (checked before storing), nothing changed.
    assert!(files_under(&app.dir.join("media")).is_empty());
    assert_eq!(
        count_rows(
            &app,
            "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
            room
        )
        .await,
        1
    );
    assert_eq!(
        count_rows(
            &app,
            "SELECT COUNT(*) FROM chatroom_participant WHERE chatroom_id = ?",
            room
        )
        .await,
        3
    );
}
on_both!(non_members_are_refused_everywhere);
