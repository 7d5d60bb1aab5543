//! Leaving, hiding and rejoining rooms (#11).

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

async fn dm_leave_keeps_the_room_for_the_partner(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    let room = create_room(&app, &alice, &["bob02"]).await;
    send(&app, "bob02", room, "hi").await;
    let mut link = node(&app, "n1", &["alice01"]).await;

    assert_eq!(
        leave(&app, &alice, room).await,
        (200, json!({"code": "SC"}))
    );
    // Leaving again: refused (the original carried on).
    assert_eq!(leave(&app, &alice, room).await.0, 400);
    let got = drain(&mut link, 300).await;
    let alarm = got
        .iter()
        .find(|d| d.target == Target::user("alice01", "notify"))
        .expect("LEAVE_ROOM");
    assert_eq!(json_of(alarm)["alarmType"], "LEAVE_ROOM");

    // The original hid the DM from the partner too.
    let r = room_in(&room_list(&app, &bob).await, room).expect("still in bob's list");
    assert_eq!(r["title"], "Alice");
    assert!(room_in(&room_list(&app, &alice).await, room).is_none());
    // No system message for a DM leave.
    assert_eq!(
        count_rows(
            &app,
            "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
            room
        )
        .await,
        1
    );
    // The leaver cannot read or subscribe any more.
    assert_eq!(history_page(&app, &alice, room, None).await.0, 400);
    assert!(
        !app.ctx
            .may_subscribe_topic("alice01", &format!("chat.{room}"))
            .await
    );

    // The partner writes: the leaver is back, told by CREATE_ROOM, then CHAT.
    send(&app, "bob02", room, "come back").await;
    let got = drain(&mut link, 500).await;
    let types: Vec<Value> = got
        .iter()
        .map(|d| json_of(d)["alarmType"].clone())
        .collect();
    assert_eq!(types, [json!("CREATE_ROOM"), json!("CHAT")]);
    let r = room_in(&room_list(&app, &alice).await, room).expect("back in alice's list");
    assert_eq!(r["unreadCount"], 2);
    let (status, body) = history_page(&app, &alice, room, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["list"].as_array().unwrap().len(), 2); // the whole DM
}
on_both!(dm_leave_keeps_the_room_for_the_partner);

async fn reopened_dm_is_visible_to_both(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    let room = create_room(&app, &alice, &["bob02"]).await;
    send(&app, "alice01", room, "hi").await;
    assert_eq!(leave(&app, &alice, room).await.0, 200);

    // The non-leaver re-opens it (the original kept it invisible to them).
    let mut link = node(&app, "n1", &["alice01", "bob02"]).await;
    assert_eq!(create_room(&app, &bob, &["alice01"]).await, room);
    assert!(room_in(&room_list(&app, &bob).await, room).is_some());
    assert!(room_in(&room_list(&app, &alice).await, room).is_some());
    let mut told: Vec<String> = drain(&mut link, 300)
        .await
        .iter()
        .map(|d| match &d.target {
            Target::User { user, .. } => user.clone(),
            Target::Topic(t) => panic!("topic {t}"),
        })
        .collect();
    told.sort();
    assert_eq!(told, ["alice01", "bob02"]);

    // Both leave, the leaver re-opens: visible to both again, history kept.
    assert_eq!(leave(&app, &alice, room).await.0, 200);
    assert_eq!(leave(&app, &bob, room).await.0, 200);
    assert_eq!(create_room(&app, &alice, &["bob02"]).await, room);
    assert!(room_in(&room_list(&app, &bob).await, room).is_some());
    assert!(room_in(&room_list(&app, &alice).await, room).is_some());
    let (_, body) = history_page(&app, &bob, room, None).await;
    assert_eq!(body["list"].as_array().unwrap().len(), 1);
}
on_both!(reopened_dm_is_visible_to_both);

async fn group_leave_and_deletion_with_files(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    let carol = quick_user(&app, "carol03", "Carol").await;
    let room = create_room(&app, &alice, &["bob02", "carol03"]).await;
    let other = create_room(&app, &alice, &["bob02", "carol03"]).await;
    send(&app, "alice01", room, "hello").await;
    let form = reqwest::multipart::Form::new()
        .part("files", part(png_bytes(12, 12), "cat.png", "image/png"))
        .part("files", part(pdf_bytes(), "doc.pdf", "application/pdf"))
        .text("chatRoomId", room.to_string());
    assert_eq!(
        app.post_multipart("/api/file/upload/chat", Some(&bob), form)
            .await,
        (200, Value::Null)
    );
    let image = reqwest::multipart::Form::new()
        .text("chatRoomId", room.to_string())
        .part("file", part(png_bytes(9, 9), "g.png", "image/png"));
    assert_eq!(
        put_form(&app, "/api/chat/update/group/profile_image", &carol, image)
            .await
            .0,
        200
    );
    // Something in another room that must survive.
    send(&app, "alice01", other, "elsewhere").await;
    let media = app.dir.join("media");
    assert!(files_under(&media.join("chat").join(room.to_string())).len() >= 3);

    let mut link = node(&app, "n1", &["bob02"]).await;
    link.bind(&format!("chat.{room}")).await.unwrap();
    assert_eq!(leave(&app, &bob, room).await.0, 200);
    let got = drain(&mut link, 500).await;
    let leave_msg = got
        .iter()
        .find(|d| matches!(d.target, Target::Topic(_)))
        .expect("LEAVE broadcast");
    let m = json_of(leave_msg);
    assert_eq!(m["type"], "LEAVE");
    assert_eq!(m["message"], "Bob님이 퇴장하셨습니다.");
    let alarms: Vec<&Delivery> = got
        .iter()
        .filter(|d| d.target == Target::user("bob02", "notify"))
        .collect();
    assert_eq!(alarms.len(), 1);
    assert_eq!(json_of(alarms[0])["alarmType"], "LEAVE_ROOM");
    // Revoke controls for the gateway.
    let controls: Vec<&Delivery> = got
        .iter()
        .filter(|d| d.target == Target::user("bob02", "$control"))
        .collect();
    let mut topics: Vec<&str> = controls
        .iter()
        .map(|d| {
            assert_eq!(d.envelope.destination, "/user/queue/$control");
            assert_eq!(header(d, "x-instar-control"), Some("revoke"));
            header(d, "x-instar-topic").unwrap()
        })
        .collect();
    topics.sort();
    assert_eq!(
        topics,
        [format!("chat.{room}"), format!("members.info.{room}")]
    );
    // The revokes go out before the LEAVE broadcast, so no node hands the leaver its own LEAVE
    // (to which the frontend would answer with requests for a room it left).
    let leave_at = got
        .iter()
        .position(|d| matches!(d.target, Target::Topic(_)))
        .unwrap();
    let last_control = got
        .iter()
        .rposition(|d| d.target == Target::user("bob02", "$control"))
        .unwrap();
    assert!(
        last_control < leave_at,
        "revokes at {last_control}, LEAVE at {leave_at}"
    );

    // Bob is gone for everyone; the others still have the room.
    assert!(room_in(&room_list(&app, &bob).await, room).is_none());
    assert_eq!(
        room_in(&room_list(&app, &alice).await, room).unwrap()["title"],
        "Carol"
    );

    // The last two leave: the room goes with its messages, attachments and objects.
    assert_eq!(leave(&app, &carol, room).await.0, 200);
    let r = room_in(&room_list(&app, &alice).await, room).expect("the last member still sees it");
    assert_eq!(r["title"], social::chat::EMPTY_ROOM_TITLE);
    assert_eq!(leave(&app, &alice, room).await.0, 200);
    for table in [
        "SELECT COUNT(*) FROM chatroom WHERE id = ?",
        "SELECT COUNT(*) FROM chatroom_participant WHERE chatroom_id = ?",
        "SELECT COUNT(*) FROM chatroom_last_read WHERE chatroom_id = ?",
        "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
    ] {
        assert_eq!(count_rows(&app, table, room).await, 0, "{table}");
    }
    assert_eq!(
        count_rows(
            &app,
            "SELECT COUNT(*) FROM message_attachment WHERE id >= ?",
            0
        )
        .await,
        0
    );
    let left: Vec<PathBuf> = files_under(&media.join("chat").join(room.to_string()))
        .into_iter()
        .chain(files_under(&media.join("chatRoom").join(room.to_string())))
        .filter(|p| p.extension().is_none_or(|e| e != "meta"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(leave(&app, &alice, room).await.0, 400);
    // The other room is untouched.
    assert_eq!(
        count_rows(
            &app,
            "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
            other
        )
        .await,
        1
    );
}
on_both!(group_leave_and_deletion_with_files);

async fn rejoining_a_group_starts_at_the_new_invitation(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    let room = create_room(&app, &alice, &["bob02", "carol03"]).await;
    send(&app, "bob02", room, "before").await;
    assert_eq!(leave(&app, &bob, room).await.0, 200);
    send(&app, "alice01", room, "while away").await;
    let (status, _) = app
        .post(
            "/api/chat/invite/user",
            Some(&alice),
            json!({"chatRoomId": room, "users": ["bob02"]}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, body) = history_page(&app, &bob, room, None).await;
    let list = body["list"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["type"], "INVITE");
    assert_eq!(list[0]["message"], "alice01님이 Bob님을 초대하였습니다.");
    assert_eq!(
        room_in(&room_list(&app, &bob).await, room).unwrap()["unreadCount"],
        0
    );
}
on_both!(rejoining_a_group_starts_at_the_new_invitation);
