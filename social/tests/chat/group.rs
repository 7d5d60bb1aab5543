//! Group image (#6) and title (#7).

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

async fn group_title_and_image(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    let group = create_room(&app, &alice, &["bob02", "carol03"]).await;
    let dm = create_room(&app, &alice, &["bob02"]).await;
    let path = "/api/chat/update/group/title";

    let long = "가".repeat(101);
    for body in [
        json!({"chatRoomId": group, "updateTitle": long}),
        json!({"chatRoomId": dm, "updateTitle": "dm"}),
        json!({"chatRoomId": 99999, "updateTitle": "x"}),
    ] {
        assert_eq!(
            put_json(&app, path, &alice, body).await,
            (400, json!({"code": "BR"}))
        );
    }
    let ok = "가".repeat(100);
    assert_eq!(
        put_json(
            &app,
            path,
            &alice,
            json!({"chatRoomId": group, "updateTitle": ok})
        )
        .await,
        (200, json!({"code": "SC", "title": ok}))
    );
    // Empty or null restores the automatic title, which is answered.
    assert_eq!(
        put_json(
            &app,
            path,
            &alice,
            json!({"chatRoomId": group, "updateTitle": ""})
        )
        .await,
        (200, json!({"code": "SC", "title": "Bob 외 1명"}))
    );
    assert_eq!(
        put_json(
            &app,
            path,
            &alice,
            json!({"chatRoomId": group.to_string(), "updateTitle": null})
        )
        .await,
        (200, json!({"code": "SC", "title": "Bob 외 1명"}))
    );

    // The first image of a room works (the original failed with 500 while it was NULL).
    let image_path = "/api/chat/update/group/profile_image";
    let form = |bytes: Vec<u8>, room: i64| {
        reqwest::multipart::Form::new()
            .text("chatRoomId", room.to_string())
            .part("file", part(bytes, "g.png", "image/png"))
    };
    let (status, body) = put_form(&app, image_path, &alice, form(png_bytes(16, 16), group)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(object_keys(&body), sorted_strings(&["code", "url"]));
    let first = body["url"].as_str().unwrap().to_owned();
    assert!(
        first.starts_with(&app.url(&format!("/media/chatRoom/{group}/profile/"))),
        "{first}"
    );
    let list = room_list(&app, &alice).await;
    assert_eq!(room_in(&list, group).unwrap()["profileImages"], first);
    let dir = app
        .dir
        .join("media")
        .join("chatRoom")
        .join(group.to_string());
    let before = files_under(&dir).len();
    assert!(before >= 2);

    // Replacing it deletes the old objects.
    let (status, body) = put_form(&app, image_path, &alice, form(png_bytes(20, 20), group)).await;
    assert_eq!(status, 200);
    assert_ne!(body["url"], first);
    let key = first.trim_start_matches(&app.url("/media/"));
    assert!(!app.dir.join("media").join(key).exists());
    assert_eq!(files_under(&dir).len(), before);
    assert_eq!(app.get(&format!("/media/{key}"), None).await.0, 404);

    // Not a picture, or a DM: refused.
    assert_eq!(
        put_form(&app, image_path, &alice, form(pdf_bytes(), group)).await,
        (400, json!({"code": "BR"}))
    );
    assert_eq!(
        put_form(&app, image_path, &alice, form(png_bytes(8, 8), dm)).await,
        (400, json!({"code": "BR"}))
    );
}
on_both!(group_title_and_image);
