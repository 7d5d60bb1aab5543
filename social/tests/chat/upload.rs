//! Chat uploads (#12).

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

async fn chat_upload_broadcasts_images_and_files(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    let room = create_room(&app, &alice, &["bob02"]).await;
    let mut link = node(&app, "n1", &["bob02", "alice01"]).await;
    link.bind(&format!("chat.{room}")).await.unwrap();

    let form = reqwest::multipart::Form::new()
        .text("chatRoomId", room.to_string())
        .part("files", part(png_bytes(10, 10), "cat.jpeg", "image/png"))
        .part("files", part(png_bytes(11, 11), "dog.png", "image/png"))
        .part("files", part(pdf_bytes(), "report.pdf", "application/pdf"))
        .part(
            "files",
            part(b"just text".to_vec(), "notes.txt", "text/plain"),
        );
    let (status, body) = app
        .post_multipart("/api/file/upload/chat", Some(&alice), form)
        .await;
    assert_eq!((status, body), (200, Value::Null));
    let got = drain(&mut link, 600).await;
    let topic: Vec<Value> = got
        .iter()
        .filter(|d| matches!(d.target, Target::Topic(_)))
        .map(json_of)
        .collect();
    assert_eq!(topic.len(), 2);
    assert_eq!(topic[0]["type"], "IMAGE");
    assert_eq!(topic[0]["message"], Value::Null);
    let atts = topic[0]["attachments"].as_array().unwrap();
    assert_eq!(atts.len(), 2);
    assert_eq!(
        object_keys(&atts[0]),
        sorted_strings(&["fileName", "fileUrl"])
    );
    assert_eq!(atts[0]["fileName"], "cat.jpeg");
    let url = atts[0]["fileUrl"].as_str().unwrap();
    assert!(
        url.starts_with(&app.url(&format!("/media/chat/{room}/"))),
        "{url}"
    );
    assert_eq!(app.get(&url[app.base.len()..], None).await.0, 200);
    assert_eq!(topic[1]["type"], "FILE");
    assert_eq!(topic[1]["attachments"][0]["fileName"], "report.pdf");
    let chats: Vec<Value> = got
        .iter()
        .filter(|d| d.target == Target::user("bob02", "notify"))
        .map(json_of)
        .collect();
    let texts: Vec<&str> = chats
        .iter()
        .map(|c| c["message"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["사진 2장을 보냈습니다.", "파일 1개를 보냈습니다."]);
    assert!(
        chats
            .iter()
            .all(|c| c["alarmType"] == "CHAT" && c["chatRoomId"] == room)
    );
    // The sender gets the CHAT alarms too (its list shows the new preview, as the original).
    let own = got
        .iter()
        .filter(|d| d.target == Target::user("alice01", "notify"))
        .count();
    assert_eq!(own, 2);

    let list = room_list(&app, &alice).await;
    assert_eq!(
        room_in(&list, room).unwrap()["lastMessage"],
        "파일 1개를 보냈습니다."
    );
    let (_, body) = history_page(&app, &alice, room, None).await;
    let list = body["list"].as_array().unwrap();
    assert_eq!(list[0]["type"], "FILE");
    assert_eq!(list[1]["type"], "IMAGE");
    assert_eq!(list[1]["attachments"], topic[0]["attachments"]);

    // When the newest is a picture, the list previews it as one (it said "파일" after a reload,
    // while the live CHAT alarm said "사진").
    let form = reqwest::multipart::Form::new()
        .text("chatRoomId", room.to_string())
        .part("files", part(png_bytes(9, 9), "sky.png", "image/png"));
    let (status, _) = app
        .post_multipart("/api/file/upload/chat", Some(&alice), form)
        .await;
    assert_eq!(status, 200);
    let list = room_list(&app, &alice).await;
    assert_eq!(
        room_in(&list, room).unwrap()["lastMessage"],
        "사진 1장을 보냈습니다."
    );
    drain(&mut link, 300).await;

    // Only unsupported files: refused, nothing stored.
    let before = files_under(&app.dir.join("media")).len();
    let form = reqwest::multipart::Form::new()
        .text("chatRoomId", room.to_string())
        .part("files", part(b"hello".to_vec(), "a.txt", "text/plain"));
    assert_eq!(
        app.post_multipart("/api/file/upload/chat", Some(&alice), form)
            .await
            .0,
        400
    );
    assert_eq!(files_under(&app.dir.join("media")).len(), before);
    outbox_drains(&app).await;
}
on_both!(chat_upload_broadcasts_images_and_files);
