//! Recommendations (#3), invite search (#9) and invitations (#10).

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

async fn invite_search_is_bounded_and_escaped(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    for i in 0..25 {
        quick_user(&app, &format!("ann{i:02}"), "Ann").await;
    }
    quick_user(&app, "a_b", "Underscore").await;
    quick_user(&app, "axb", "NotAWildcard").await;
    let room = create_room(&app, &alice, &["bob02", "ann00"]).await;
    let search = |kw: &str| format!("/api/chat/invite/user_search?keyword={kw}&chatRoomId={room}");

    let (status, body) = app.get(&search("ann"), Some(&alice)).await;
    assert_eq!(status, 200);
    let list = body["list"].as_array().unwrap();
    assert_eq!(list.len(), 20);
    assert_eq!(list[0]["id"], "ann01"); // ann00 is a member
    assert_eq!(
        object_keys(&list[0]),
        sorted_strings(&["id", "name", "profileImage", "following"])
    );
    assert_eq!(list[0]["following"], false);

    let (_, body) = app.get(&search("a_"), Some(&alice)).await;
    let ids: Vec<&str> = body["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a_b"]);
    let (_, body) = app.get(&search("%25"), Some(&alice)).await;
    assert_eq!(body["list"], json!([]));
    let (_, body) = app.get(&search("ALI"), Some(&alice)).await;
    assert_eq!(body["list"], json!([])); // the caller is a member
    let (_, body) = app.get(&search(""), Some(&alice)).await;
    assert_eq!(body["list"], json!([]));
}
on_both!(invite_search_is_bounded_and_escaped);

async fn recommendations_favour_recent_rooms(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    for u in ["bob02", "carol03", "dan04", "erin05"] {
        quick_user(&app, u, u).await;
    }
    let old = create_room(&app, &alice, &["dan04"]).await;
    send(&app, "alice01", old, "old").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mid = create_room(&app, &alice, &["carol03", "erin05"]).await;
    send(&app, "alice01", mid, "mid").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new = create_room(&app, &alice, &["bob02"]).await;
    send(&app, "alice01", new, "new").await;

    let (status, body) = app
        .get("/api/chat/recommend/invite/list", Some(&alice))
        .await;
    assert_eq!(status, 200);
    let list = body["list"].as_array().unwrap();
    let ids: Vec<&str> = list.iter().map(|u| u["id"].as_str().unwrap()).collect();
    // The most recent room ranks first (the original ranked older rooms higher).
    assert_eq!(ids, ["bob02", "carol03", "erin05", "dan04"]);
    assert_eq!(
        object_keys(&list[0]),
        sorted_strings(&["id", "name", "profileImage", "following"])
    );
    assert_eq!(list[0]["following"], true);
}
on_both!(recommendations_favour_recent_rooms);

async fn invite_adds_members_with_a_system_message(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    let carol = quick_user(&app, "carol03", "Carol").await;
    quick_user(&app, "dan04", "Dan").await;
    quick_user(&app, "erin05", "Erin").await;
    let room = create_room(&app, &alice, &["bob02", "erin05"]).await;
    let dm = create_room(&app, &alice, &["bob02"]).await;
    let before = send(&app, "alice01", room, "before carol joined").await;

    let mut link = node(&app, "n1", &["carol03", "dan04", "bob02"]).await;
    link.bind(&format!("chat.{room}")).await.unwrap();

    // Unknown user: nothing at all happens (the original committed the earlier invitees).
    let (status, _) = app
        .post(
            "/api/chat/invite/user",
            Some(&alice),
            json!({"chatRoomId": room, "users": ["carol03", "nobody"]}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(drain(&mut link, 200).await.is_empty());
    assert_eq!(
        count_rows(
            &app,
            "SELECT COUNT(*) FROM chatroom_participant WHERE chatroom_id = ?",
            room
        )
        .await,
        3
    );
    // DM: refused.
    let (status, _) = app
        .post(
            "/api/chat/invite/user",
            Some(&alice),
            json!({"chatRoomId": dm, "users": ["carol03"]}),
        )
        .await;
    assert_eq!(status, 400);

    // An existing member in the list is skipped, the others are all invited.
    let (status, body) = app
        .post(
            "/api/chat/invite/user",
            Some(&alice),
            json!({"chatRoomId": room, "users": ["bob02", "carol03", "dan04"]}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"code": "SC"})));
    let got = drain(&mut link, 500).await;
    let topic: Vec<&Delivery> = got
        .iter()
        .filter(|d| d.target == Target::topic(format!("chat.{room}")))
        .collect();
    assert_eq!(topic.len(), 1);
    let m = json_of(topic[0]);
    assert_eq!(object_keys(&m), sorted_strings(MESSAGE_KEYS));
    assert_eq!(m["type"], "INVITE");
    assert_eq!(m["message"], "alice01님이 Carol님, Dan님을 초대하였습니다.");
    assert_eq!(m["senderId"], "alice01");
    assert_eq!(m["senderProfileImage"], "");
    let mut invited: Vec<String> = got
        .iter()
        .filter_map(|d| match &d.target {
            Target::User { user, .. } => {
                assert_eq!(json_of(d)["alarmType"], "INVITE_ROOM");
                Some(user.clone())
            }
            Target::Topic(_) => None,
        })
        .collect();
    invited.sort();
    assert_eq!(invited, ["carol03", "dan04"]); // not bob, already a member

    // The invitee reads from the invitation on, not before; it is in their list, unread 0.
    let (status, body) = history_page(&app, &carol, room, None).await;
    assert_eq!(status, 200);
    let list = body["list"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["type"], "INVITE");
    assert!(list[0]["messageId"].as_i64().unwrap() > before);
    let r = room_in(&room_list(&app, &carol).await, room).unwrap();
    assert_eq!(r["unreadCount"], 0);
    assert_eq!(r["title"], "Alice 외 3명"); // the others in join order
    // Bob (member since the start) sees everything.
    let (_, body) = history_page(&app, &bob, room, None).await;
    assert_eq!(body["list"].as_array().unwrap().len(), 2);

    // Inviting only members: nothing happens.
    let (status, _) = app
        .post(
            "/api/chat/invite/user",
            Some(&alice),
            json!({"chatRoomId": room, "users": ["carol03"]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        count_rows(
            &app,
            "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
            room
        )
        .await,
        2
    );
}
on_both!(invite_adds_members_with_a_system_message);
