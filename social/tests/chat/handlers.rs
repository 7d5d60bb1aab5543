//! The `/app/send` and `/app/update/read` bus handlers.

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

async fn send_broadcasts_after_commit_with_alarms(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    let room = create_room(&app, &alice, &["bob02", "carol03"]).await;
    let mut link = node(&app, "n1", &["alice01", "bob02"]).await;
    link.bind(&format!("chat.{room}")).await.unwrap();
    drain(&mut link, 100).await;

    let id = send(&app, "alice01", room, "안녕").await;
    let got = drain(&mut link, 500).await;
    let topic: Vec<&Delivery> = got
        .iter()
        .filter(|d| matches!(d.target, Target::Topic(_)))
        .collect();
    assert_eq!(topic.len(), 1);
    let d = topic[0];
    assert_eq!(d.target, Target::topic(format!("chat.{room}")));
    assert_eq!(d.envelope.destination, format!("/topic/chat.{room}"));
    assert_eq!(d.envelope.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        header(d, "x-instar-message-id"),
        Some(id.to_string().as_str())
    );
    let m = json_of(d);
    assert_eq!(object_keys(&m), sorted_strings(MESSAGE_KEYS));
    assert_eq!(m["type"], "TEXT");
    assert_eq!(m["chatRoomId"], room);
    assert_eq!(m["messageId"], id);
    assert_eq!(m["senderId"], "alice01");
    assert_eq!(m["senderName"], "Alice");
    assert_eq!(m["senderProfileImage"], "https://img/alice01");
    assert_eq!(m["message"], "안녕");
    assert_eq!(m["attachments"], Value::Null);
    // The broadcast is exactly what history shows for the message.
    let (_, body) = history_page(&app, &alice, room, None).await;
    assert_eq!(body["list"][0], m);

    // CHAT alarms go to every member, the sender included (alice and bob have sessions here,
    // carol has none), before the broadcast.
    let alarms: Vec<&Delivery> = got
        .iter()
        .filter(|d| matches!(d.target, Target::User { .. }))
        .collect();
    let mut to: Vec<Target> = alarms.iter().map(|d| d.target.clone()).collect();
    to.sort_by_key(|t| format!("{t:?}"));
    assert_eq!(
        to,
        [
            Target::user("alice01", "notify"),
            Target::user("bob02", "notify")
        ]
    );
    let a = json_of(alarms[0]);
    assert_eq!(
        object_keys(&a),
        sorted_strings(&["alarmType", "create_at", "chatRoomId", "message"])
    );
    assert_eq!(a["alarmType"], "CHAT");
    assert_eq!(a["chatRoomId"], room);
    assert_eq!(a["message"], "안녕");
    outbox_drains(&app).await;

    // Messages from one session are published in id order.
    for i in 0..20 {
        app.bus
            .submit(cmd(
                "/app/send",
                "alice01",
                json!({"chatRoomId": room, "message": format!("n{i}")}),
            ))
            .await
            .unwrap();
    }
    let mut ids = Vec::new();
    while ids.len() < 20 {
        let d = recv(&mut link).await;
        if matches!(d.target, Target::Topic(_)) {
            ids.push(json_of(&d)["messageId"].as_i64().unwrap());
        }
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // Empty, over-long or malformed messages are rejected; nothing is stored.
    let n = count_rows(
        &app,
        "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
        room,
    )
    .await;
    for body in [
        json!({"chatRoomId": room, "message": "  "}),
        json!({"chatRoomId": room, "message": "x".repeat(4001)}),
        json!({"chatRoomId": room}),
        json!({"chatRoomId": "abc", "message": "x"}),
        json!({"chatRoomId": 999999, "message": "x"}),
    ] {
        assert!(
            run_command(&app, cmd("/app/send", "alice01", body.clone())).await,
            "{body}"
        );
    }
    assert!(
        run_command(
            &app,
            AppCommand {
                body: bytes::Bytes::from_static(b"not json"),
                ..cmd("/app/send", "alice01", json!({}))
            }
        )
        .await
    );
    assert_eq!(
        count_rows(
            &app,
            "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
            room
        )
        .await,
        n
    );
}
on_both!(send_broadcasts_after_commit_with_alarms);

async fn forged_sender_is_ignored(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    let room = create_room(&app, &alice, &["bob02"]).await;
    let mut link = node(&app, "n1", &[]).await;
    link.bind(&format!("chat.{room}")).await.unwrap();

    // Principal alice, body claiming bob (and trying to inject attachments and a type).
    app.bus
        .submit(cmd(
            "/app/send",
            "alice01",
            json!({
                "chatRoomId": room, "message": "forged?", "senderId": "bob02",
                "senderName": "Bob", "type": "INVITE",
                "attachments": [{"fileName": "x", "fileUrl": "https://evil"}]
            }),
        ))
        .await
        .unwrap();
    let m = json_of(&recv(&mut link).await);
    assert_eq!(m["senderId"], "alice01");
    assert_eq!(m["senderName"], "Alice");
    assert_eq!(m["type"], "TEXT");
    assert_eq!(m["attachments"], Value::Null);
    let sender: String =
        sqlx::query_scalar("SELECT sender_id FROM chatroom_message WHERE chatroom_id = ?")
            .bind(room)
            .fetch_one(app.ctx.store.pool())
            .await
            .unwrap();
    assert_eq!(sender, "alice01");
}
on_both!(forged_sender_is_ignored);

async fn non_member_send_is_rejected_and_nothing_stored(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "eve", "Eve").await;
    let room = create_room(&app, &alice, &["bob02"]).await;
    let mut link = node(&app, "n1", &["alice01", "bob02"]).await;
    link.bind(&format!("chat.{room}")).await.unwrap();
    drain(&mut link, 100).await;

    assert!(
        run_command(
            &app,
            cmd(
                "/app/send",
                "eve",
                json!({"chatRoomId": room, "message": "hi"})
            )
        )
        .await
    );
    // A member who left (DM) cannot send either.
    assert_eq!(leave(&app, &alice, room).await.0, 200);
    drain(&mut link, 200).await;
    assert!(
        run_command(
            &app,
            cmd(
                "/app/send",
                "alice01",
                json!({"chatRoomId": room, "message": "hi"})
            )
        )
        .await
    );
    assert_eq!(
        count_rows(
            &app,
            "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
            room
        )
        .await,
        0
    );
    assert!(drain(&mut link, 200).await.is_empty());
    outbox_drains(&app).await;
    assert!(
        run_command(
            &app,
            cmd("/app/nope", "alice01", json!({"chatRoomId": room}))
        )
        .await
    );
}
on_both!(non_member_send_is_rejected_and_nothing_stored);

async fn read_pointer_only_moves_forward(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "eve", "Eve").await;
    let room = create_room(&app, &alice, &["bob02"]).await;
    let other = create_room(&app, &alice, &["eve"]).await;
    let ids = insert_messages(&app, room, "alice01", 5).await;
    let foreign = insert_messages(&app, other, "alice01", 1).await[0];
    let mut link = node(&app, "n1", &[]).await;
    link.bind(&format!("members.info.{room}")).await.unwrap();
    let read = |user: &str, id: Value| {
        cmd(
            "/app/update/read",
            user,
            json!({"chatRoomId": room, "messageId": id}),
        )
    };
    let pointer = || async {
        let (_, body) = app
            .get(
                &format!("/api/chat/get/members/read_info?chatRoomId={room}"),
                Some(&bob),
            )
            .await;
        body["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["userId"] == "bob02")
            .unwrap()["lastReadMessageId"]
            .clone()
    };

    assert!(!run_command(&app, read("bob02", json!(ids[3]))).await);
    let d = recv(&mut link).await;
    assert_eq!(
        d.envelope.destination,
        format!("/topic/members.info.{room}")
    );
    assert_eq!(d.envelope.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        json_of(&d),
        json!({"chatRoomId": room, "userId": "bob02", "lastReadMessageId": ids[3]})
    );
    assert_eq!(pointer().await, ids[3]);

    // Backwards, equal, a message of another room, an unknown id: no change, no broadcast.
    for id in [ids[1], ids[3], foreign, 999_999] {
        assert!(!run_command(&app, read("bob02", json!(id))).await);
    }
    assert_eq!(pointer().await, ids[3]);
    // Not (or no longer) a member: nothing moves, nothing is broadcast, and it is not counted as
    // a failed command (the frontend acknowledges a room's last message right after leaving it).
    assert!(!run_command(&app, read("eve", json!(ids[4]))).await);
    assert!(run_command(&app, read("bob02", Value::Null)).await);
    assert!(drain(&mut link, 300).await.is_empty());

    // Forward again (as a string id too).
    assert!(!run_command(&app, read("bob02", json!(ids[4].to_string()))).await);
    assert_eq!(json_of(&recv(&mut link).await)["lastReadMessageId"], ids[4]);
    assert_eq!(pointer().await, ids[4]);
}
on_both!(read_pointer_only_moves_forward);
