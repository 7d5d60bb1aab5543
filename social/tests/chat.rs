//! Chat (realtime.md §2, §4, §5): the REST routes, the `/app/send` and `/app/update/read` bus
//! handlers, the outbox, and the gateway's membership queries — each test on SQLite and MariaDB.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Duration;

use broker_bridge::{
    AppCommand, Bus, Delivery, Envelope, InProcessConfig, NodeLink, Registry, SessionEntry, Target,
};
use common::{Db, TestApp};
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A test app with the chat handlers registered.
async fn start(db: Db) -> TestApp {
    let app = TestApp::start(db).await;
    social::chat::register(&app.ctx, &app.bus);
    app
}

/// Creates an account without a password (fast) with the image `https://img/{id}`.
async fn quick_user(app: &TestApp, id: &str, name: &str) -> String {
    let email = format!("{}@example.com", id.to_lowercase());
    let image = format!("https://img/{id}");
    let mut tx = app.ctx.store.write().await.unwrap();
    social::store::users::insert(
        tx.conn(),
        &social::store::users::NewUser {
            id,
            password: None,
            name,
            sex: None,
            email: &email,
            comment: None,
            address: None,
            address_detail: None,
            profile_image: Some(&image),
            kind: "SOCIAL",
            social_id: None,
            created_at: social::time::now_micros(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    app.token(id)
}

async fn send_req(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    (status, body)
}

async fn put_json(app: &TestApp, path: &str, token: &str, body: Value) -> (u16, Value) {
    send_req(app.client.put(app.url(path)).bearer_auth(token).json(&body)).await
}

async fn put_form(
    app: &TestApp,
    path: &str,
    token: &str,
    form: reqwest::multipart::Form,
) -> (u16, Value) {
    send_req(
        app.client
            .put(app.url(path))
            .bearer_auth(token)
            .multipart(form),
    )
    .await
}

async fn delete(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    send_req(app.client.delete(app.url(path)).bearer_auth(token)).await
}

async fn leave(app: &TestApp, token: &str, room: i64) -> (u16, Value) {
    delete(
        app,
        &format!("/api/chat/room/leave?chatRoomId={room}"),
        token,
    )
    .await
}

async fn create(app: &TestApp, token: &str, users: &[&str]) -> i64 {
    let (status, body) = app
        .post("/api/chat/create", Some(token), json!({ "users": users }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], "SC");
    body["chatRoomId"].as_i64().unwrap()
}

async fn rooms(app: &TestApp, token: &str) -> Vec<Value> {
    let (status, body) = app.get("/api/chat/getList", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body["list"].as_array().unwrap().clone()
}

fn room_in(list: &[Value], room: i64) -> Option<Value> {
    list.iter()
        .find(|r| r["chatroomId"].as_i64() == Some(room))
        .cloned()
}

async fn history(app: &TestApp, token: &str, room: i64, cursor: Option<i64>) -> (u16, Value) {
    let path = match cursor {
        Some(c) => format!("/api/chat/history?chatRoomId={room}&messageId={c}"),
        None => format!("/api/chat/history?chatRoomId={room}"),
    };
    app.get(&path, Some(token)).await
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn sorted(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

const MESSAGE_KEYS: &[&str] = &[
    "type",
    "chatRoomId",
    "messageId",
    "senderId",
    "senderName",
    "senderProfileImage",
    "message",
    "createAt",
    "attachments",
];

fn cmd(destination: &str, principal: &str, body: Value) -> AppCommand {
    AppCommand {
        destination: destination.into(),
        principal: principal.into(),
        session: format!("s-{principal}"),
        node: "n1".into(),
        headers: vec![],
        body: serde_json::to_vec(&body).unwrap().into(),
    }
}

async fn poll<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..250 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Sends `text` through the bus as `user` and waits until it is stored and its pushes published;
/// returns its id.
async fn send(app: &TestApp, user: &str, room: i64, text: &str) -> i64 {
    app.bus
        .submit(cmd(
            "/app/send",
            user,
            json!({ "chatRoomId": room, "message": text }),
        ))
        .await
        .unwrap();
    for _ in 0..250 {
        let row: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(id) FROM chatroom_message WHERE chatroom_id = ? AND message = ?",
        )
        .bind(room)
        .bind(text)
        .fetch_one(app.ctx.store.pool())
        .await
        .unwrap();
        if let Some(id) = row {
            // Stored; the pushes are out once the outbox is empty.
            poll("the pushes to be published", || async {
                outbox_len(app).await == 0
            })
            .await;
            return id;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("message {text:?} not stored");
}

/// Submits a command and waits until the bus counted it as handled or failed; true when failed.
async fn run(app: &TestApp, c: AppCommand) -> bool {
    // Earlier commands may still be finishing (their broadcasts go out before they are counted):
    // wait until every one is, so the counters below move for this command only.
    poll("earlier commands to finish", || {
        let m = app.bus.metrics();
        async move { m.commands_handled + m.commands_failed >= m.commands_submitted }
    })
    .await;
    let before = app.bus.metrics();
    app.bus.submit(c).await.unwrap();
    let mut failed = false;
    poll("the command to finish", || {
        let m = app.bus.metrics();
        failed = m.commands_failed > before.commands_failed;
        let done = m.commands_handled > before.commands_handled || failed;
        async move { done }
    })
    .await;
    failed
}

async fn count(app: &TestApp, sql: &str, room: i64) -> i64 {
    sqlx::query_scalar(sql)
        .bind(room)
        .fetch_one(app.ctx.store.pool())
        .await
        .unwrap()
}

/// Waits (2 s at most: well inside the sweeper's grace, so it is not the sweeper that empties it)
/// until every outbox row is gone: the writer deletes delivered batches' rows after a short idle
/// spell or with a later batch.
async fn outbox_drains(app: &TestApp) {
    for _ in 0..100 {
        if outbox_len(app).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("outbox rows left: {}", outbox_len(app).await);
}

async fn outbox_len(app: &TestApp) -> i64 {
    app.ctx.store.outbox_len().await.unwrap()
}

/// Inserts `n` messages from `sender` directly.
async fn insert_messages(app: &TestApp, room: i64, sender: &str, n: usize) -> Vec<i64> {
    let mut tx = app.ctx.store.write().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = social::store::chat::insert_message(
            tx.conn(),
            room,
            sender,
            Some(&format!("m{i}")),
            "TEXT",
            social::time::now_micros(),
        )
        .await
        .unwrap();
        ids.push(id);
    }
    tx.commit().await.unwrap();
    ids
}

/// Alice (whose token this returns) and Bob in a DM, and a node with both their sessions bound to
/// the room's topic, drained of the set-up pushes.
async fn dm_with_link(db: Db) -> (TestApp, String, i64, NodeLink) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    let room = create(&app, &alice, &["bob02"]).await;
    let mut link = node(&app, "n1", &["alice01", "bob02"]).await;
    link.bind(&format!("chat.{room}")).await.unwrap();
    drain(&mut link, 200).await;
    (app, alice, room, link)
}

/// The texts of the room broadcasts arriving on `link` within half a second, in order.
async fn broadcast_texts(link: &mut NodeLink) -> Vec<String> {
    drain(link, 500)
        .await
        .iter()
        .filter(|d| matches!(d.target, Target::Topic(_)))
        .map(|d| json_of(d)["message"].as_str().unwrap().to_owned())
        .collect()
}

async fn node(app: &TestApp, name: &str, user_sessions: &[&str]) -> NodeLink {
    let link = app.bus.open_node(name.into()).await.unwrap();
    for user in user_sessions {
        app.bus
            .registry()
            .register(SessionEntry {
                session: format!("{name}-{user}"),
                user: (*user).into(),
                node: name.into(),
                connected_at_ms: 0,
            })
            .await
            .unwrap();
    }
    link
}

async fn recv(link: &mut NodeLink) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), link.recv())
        .await
        .expect("no delivery within 5 s")
        .expect("bus closed")
}

/// Deliveries arriving within `ms` milliseconds.
async fn drain(link: &mut NodeLink, ms: u64) -> Vec<Delivery> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(Some(d)) = tokio::time::timeout_at(deadline, link.recv()).await {
        out.push(d);
    }
    out
}

fn json_of(d: &Delivery) -> Value {
    serde_json::from_slice(&d.envelope.body).unwrap()
}

fn header<'a>(d: &'a Delivery, name: &str) -> Option<&'a str> {
    d.envelope
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, 99])
    }));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png).unwrap();
    out.into_inner()
}

fn pdf() -> Vec<u8> {
    b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n".to_vec()
}

fn part(bytes: Vec<u8>, name: &str, mime: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str(mime)
        .unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// #1 room list, #2 create

async fn room_list_shape_titles_and_unread(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    quick_user(&app, "dan04", "Dan").await;

    let dm = create(&app, &alice, &["bob02"]).await;
    let group = create(&app, &alice, &["bob02", "carol03", "dan04"]).await;
    assert_ne!(dm, group);

    let list = rooms(&app, &alice).await;
    assert_eq!(list.len(), 2);
    for r in &list {
        assert_eq!(
            keys(r),
            sorted(&[
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
    let list = rooms(&app, &alice).await;
    assert_eq!(list[0]["chatroomId"], dm);
    assert_eq!(list[0]["lastMessage"], "hello bob");
    assert_eq!(list[0]["unreadCount"], 0);
    let list = rooms(&app, &bob).await;
    assert_eq!(room_in(&list, dm).unwrap()["unreadCount"], 1);
    assert_eq!(room_in(&list, dm).unwrap()["title"], "Alice");

    insert_messages(&app, group, "carol03", 120).await;
    let list = rooms(&app, &bob).await;
    assert_eq!(room_in(&list, group).unwrap()["unreadCount"], 99);

    // Reading moves the count.
    let last = send(&app, "carol03", group, "latest").await;
    assert!(
        !run(
            &app,
            cmd(
                "/app/update/read",
                "bob02",
                json!({"chatRoomId": group, "messageId": last})
            )
        )
        .await
    );
    let list = rooms(&app, &bob).await;
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
        room_in(&rooms(&app, &bob).await, group).unwrap()["title"],
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

    let a = create(&app, &alice, &["bob02"]).await;
    let b = create(&app, &alice, &["bob02", "alice01", "bob02"]).await; // self and duplicates dropped
    let c = create(&app, &bob, &["alice01"]).await;
    assert_eq!((a, b), (a, a));
    assert_eq!(c, a);
    assert_eq!(
        count(
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
        count(&app, "SELECT COUNT(*) FROM chatroom WHERE id >= ?", 0).await,
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
        count(
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
    create(&app, &alice, &["bob02"]).await;
    let got = drain(&mut link, 500).await;
    let mut who: Vec<String> = got
        .iter()
        .map(|d| match &d.target {
            Target::User { user, queue } => {
                assert_eq!(queue, "notify");
                assert_eq!(d.envelope.destination, "/user/queue/notify");
                let v = json_of(d);
                assert_eq!(keys(&v), sorted(&["alarmType", "create_at"]));
                assert_eq!(v["alarmType"], "CREATE_ROOM");
                user.clone()
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    who.sort();
    assert_eq!(who, ["alice01", "bob02"]);
    // Re-opening an open DM: only the creator is told.
    create(&app, &alice, &["bob02"]).await;
    let got = drain(&mut link, 300).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].target, Target::user("alice01", "notify"));
    outbox_drains(&app).await;
}
on_both!(create_pushes_create_room);

// ---------------------------------------------------------------------------------------------
// #4 history, #5 read info, #8 members

async fn history_pages_visit_every_message_once(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    let room = create(&app, &alice, &["bob02"]).await;
    let ids = insert_messages(&app, room, "bob02", 75).await;

    let (status, body) = history(&app, &alice, room, None).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&body), sorted(&["code", "list"]));
    let first = body["list"].as_array().unwrap();
    assert_eq!(first.len(), 30);
    let m = &first[0];
    assert_eq!(keys(m), sorted(MESSAGE_KEYS));
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
        let (status, body) = history(&app, &alice, room, cursor).await;
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
    let room = create(&app, &alice, &["carol03", "Bob02"]).await;

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
            keys(e),
            sorted(&["chatRoomId", "userId", "lastReadMessageId"])
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
            keys(u),
            sorted(&["id", "name", "profileImage", "following"])
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
    let room = create(&app, &alice, &["bob02", "carol03"]).await;
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
        .part("file", part(png(8, 8), "a.png", "image/png"));
    assert_eq!(
        put_form(&app, "/api/chat/update/group/profile_image", &eve, form).await,
        (400, br.clone())
    );
    let form = reqwest::multipart::Form::new()
        .part("files", part(png(8, 8), "a.png", "image/png"))
        .text("chatRoomId", room.to_string());
    assert_eq!(
        app.post_multipart("/api/file/upload/chat", Some(&eve), form)
            .await,
        (400, br.clone())
    );
    // Nothing stored for the refused upload (checked before storing), nothing changed.
    assert!(files_under(&app.dir.join("media")).is_empty());
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
            room
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM chatroom_participant WHERE chatroom_id = ?",
            room
        )
        .await,
        3
    );
}
on_both!(non_members_are_refused_everywhere);

// ---------------------------------------------------------------------------------------------
// #6 image, #7 title

async fn group_title_and_image(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    let group = create(&app, &alice, &["bob02", "carol03"]).await;
    let dm = create(&app, &alice, &["bob02"]).await;
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
    let (status, body) = put_form(&app, image_path, &alice, form(png(16, 16), group)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), sorted(&["code", "url"]));
    let first = body["url"].as_str().unwrap().to_owned();
    assert!(
        first.starts_with(&app.url(&format!("/media/chatRoom/{group}/profile/"))),
        "{first}"
    );
    let list = rooms(&app, &alice).await;
    assert_eq!(room_in(&list, group).unwrap()["profileImages"], first);
    let dir = app
        .dir
        .join("media")
        .join("chatRoom")
        .join(group.to_string());
    let before = files_under(&dir).len();
    assert!(before >= 2);

    // Replacing it deletes the old objects.
    let (status, body) = put_form(&app, image_path, &alice, form(png(20, 20), group)).await;
    assert_eq!(status, 200);
    assert_ne!(body["url"], first);
    let key = first.trim_start_matches(&app.url("/media/"));
    assert!(!app.dir.join("media").join(key).exists());
    assert_eq!(files_under(&dir).len(), before);
    assert_eq!(app.get(&format!("/media/{key}"), None).await.0, 404);

    // Not a picture, or a DM: refused.
    assert_eq!(
        put_form(&app, image_path, &alice, form(pdf(), group)).await,
        (400, json!({"code": "BR"}))
    );
    assert_eq!(
        put_form(&app, image_path, &alice, form(png(8, 8), dm)).await,
        (400, json!({"code": "BR"}))
    );
}
on_both!(group_title_and_image);

// ---------------------------------------------------------------------------------------------
// #3 recommendations, #9 invite search, #10 invite

async fn invite_search_is_bounded_and_escaped(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    for i in 0..25 {
        quick_user(&app, &format!("ann{i:02}"), "Ann").await;
    }
    quick_user(&app, "a_b", "Underscore").await;
    quick_user(&app, "axb", "NotAWildcard").await;
    let room = create(&app, &alice, &["bob02", "ann00"]).await;
    let search = |kw: &str| format!("/api/chat/invite/user_search?keyword={kw}&chatRoomId={room}");

    let (status, body) = app.get(&search("ann"), Some(&alice)).await;
    assert_eq!(status, 200);
    let list = body["list"].as_array().unwrap();
    assert_eq!(list.len(), 20);
    assert_eq!(list[0]["id"], "ann01"); // ann00 is a member
    assert_eq!(
        keys(&list[0]),
        sorted(&["id", "name", "profileImage", "following"])
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
    let old = create(&app, &alice, &["dan04"]).await;
    send(&app, "alice01", old, "old").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mid = create(&app, &alice, &["carol03", "erin05"]).await;
    send(&app, "alice01", mid, "mid").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new = create(&app, &alice, &["bob02"]).await;
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
        keys(&list[0]),
        sorted(&["id", "name", "profileImage", "following"])
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
    let room = create(&app, &alice, &["bob02", "erin05"]).await;
    let dm = create(&app, &alice, &["bob02"]).await;
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
        count(
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
    assert_eq!(keys(&m), sorted(MESSAGE_KEYS));
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
    let (status, body) = history(&app, &carol, room, None).await;
    assert_eq!(status, 200);
    let list = body["list"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["type"], "INVITE");
    assert!(list[0]["messageId"].as_i64().unwrap() > before);
    let r = room_in(&rooms(&app, &carol).await, room).unwrap();
    assert_eq!(r["unreadCount"], 0);
    assert_eq!(r["title"], "Alice 외 3명"); // the others in join order
    // Bob (member since the start) sees everything.
    let (_, body) = history(&app, &bob, room, None).await;
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
        count(
            &app,
            "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
            room
        )
        .await,
        2
    );
}
on_both!(invite_adds_members_with_a_system_message);

// ---------------------------------------------------------------------------------------------
// #11 leave, hide, rejoin

async fn dm_leave_keeps_the_room_for_the_partner(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    let room = create(&app, &alice, &["bob02"]).await;
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
    let r = room_in(&rooms(&app, &bob).await, room).expect("still in bob's list");
    assert_eq!(r["title"], "Alice");
    assert!(room_in(&rooms(&app, &alice).await, room).is_none());
    // No system message for a DM leave.
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
            room
        )
        .await,
        1
    );
    // The leaver cannot read or subscribe any more.
    assert_eq!(history(&app, &alice, room, None).await.0, 400);
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
    let r = room_in(&rooms(&app, &alice).await, room).expect("back in alice's list");
    assert_eq!(r["unreadCount"], 2);
    let (status, body) = history(&app, &alice, room, None).await;
    assert_eq!(status, 200);
    assert_eq!(body["list"].as_array().unwrap().len(), 2); // the whole DM
}
on_both!(dm_leave_keeps_the_room_for_the_partner);

async fn reopened_dm_is_visible_to_both(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    let room = create(&app, &alice, &["bob02"]).await;
    send(&app, "alice01", room, "hi").await;
    assert_eq!(leave(&app, &alice, room).await.0, 200);

    // The non-leaver re-opens it (the original kept it invisible to them).
    let mut link = node(&app, "n1", &["alice01", "bob02"]).await;
    assert_eq!(create(&app, &bob, &["alice01"]).await, room);
    assert!(room_in(&rooms(&app, &bob).await, room).is_some());
    assert!(room_in(&rooms(&app, &alice).await, room).is_some());
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
    assert_eq!(create(&app, &alice, &["bob02"]).await, room);
    assert!(room_in(&rooms(&app, &bob).await, room).is_some());
    assert!(room_in(&rooms(&app, &alice).await, room).is_some());
    let (_, body) = history(&app, &bob, room, None).await;
    assert_eq!(body["list"].as_array().unwrap().len(), 1);
}
on_both!(reopened_dm_is_visible_to_both);

async fn group_leave_and_deletion_with_files(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    let carol = quick_user(&app, "carol03", "Carol").await;
    let room = create(&app, &alice, &["bob02", "carol03"]).await;
    let other = create(&app, &alice, &["bob02", "carol03"]).await;
    send(&app, "alice01", room, "hello").await;
    let form = reqwest::multipart::Form::new()
        .part("files", part(png(12, 12), "cat.png", "image/png"))
        .part("files", part(pdf(), "doc.pdf", "application/pdf"))
        .text("chatRoomId", room.to_string());
    assert_eq!(
        app.post_multipart("/api/file/upload/chat", Some(&bob), form)
            .await,
        (200, Value::Null)
    );
    let image = reqwest::multipart::Form::new()
        .text("chatRoomId", room.to_string())
        .part("file", part(png(9, 9), "g.png", "image/png"));
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
    assert!(room_in(&rooms(&app, &bob).await, room).is_none());
    assert_eq!(
        room_in(&rooms(&app, &alice).await, room).unwrap()["title"],
        "Carol"
    );

    // The last two leave: the room goes with its messages, attachments and objects.
    assert_eq!(leave(&app, &carol, room).await.0, 200);
    let r = room_in(&rooms(&app, &alice).await, room).expect("the last member still sees it");
    assert_eq!(r["title"], social::chat::EMPTY_ROOM_TITLE);
    assert_eq!(leave(&app, &alice, room).await.0, 200);
    for table in [
        "SELECT COUNT(*) FROM chatroom WHERE id = ?",
        "SELECT COUNT(*) FROM chatroom_participant WHERE chatroom_id = ?",
        "SELECT COUNT(*) FROM chatroom_last_read WHERE chatroom_id = ?",
        "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
    ] {
        assert_eq!(count(&app, table, room).await, 0, "{table}");
    }
    assert_eq!(
        count(
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
        count(
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
    let room = create(&app, &alice, &["bob02", "carol03"]).await;
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
    let (_, body) = history(&app, &bob, room, None).await;
    let list = body["list"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["type"], "INVITE");
    assert_eq!(list[0]["message"], "alice01님이 Bob님을 초대하였습니다.");
    assert_eq!(
        room_in(&rooms(&app, &bob).await, room).unwrap()["unreadCount"],
        0
    );
}
on_both!(rejoining_a_group_starts_at_the_new_invitation);

// ---------------------------------------------------------------------------------------------
// #12 chat upload

async fn chat_upload_broadcasts_images_and_files(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    let room = create(&app, &alice, &["bob02"]).await;
    let mut link = node(&app, "n1", &["bob02", "alice01"]).await;
    link.bind(&format!("chat.{room}")).await.unwrap();

    let form = reqwest::multipart::Form::new()
        .text("chatRoomId", room.to_string())
        .part("files", part(png(10, 10), "cat.jpeg", "image/png"))
        .part("files", part(png(11, 11), "dog.png", "image/png"))
        .part("files", part(pdf(), "report.pdf", "application/pdf"))
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
    assert_eq!(keys(&atts[0]), sorted(&["fileName", "fileUrl"]));
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

    let list = rooms(&app, &alice).await;
    assert_eq!(
        room_in(&list, room).unwrap()["lastMessage"],
        "파일 1개를 보냈습니다."
    );
    let (_, body) = history(&app, &alice, room, None).await;
    let list = body["list"].as_array().unwrap();
    assert_eq!(list[0]["type"], "FILE");
    assert_eq!(list[1]["type"], "IMAGE");
    assert_eq!(list[1]["attachments"], topic[0]["attachments"]);

    // When the newest is a picture, the list previews it as one (it said "파일" after a reload,
    // while the live CHAT alarm said "사진").
    let form = reqwest::multipart::Form::new()
        .text("chatRoomId", room.to_string())
        .part("files", part(png(9, 9), "sky.png", "image/png"));
    let (status, _) = app
        .post_multipart("/api/file/upload/chat", Some(&alice), form)
        .await;
    assert_eq!(status, 200);
    let list = rooms(&app, &alice).await;
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

// ---------------------------------------------------------------------------------------------
// Bus handlers

async fn send_broadcasts_after_commit_with_alarms(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    let room = create(&app, &alice, &["bob02", "carol03"]).await;
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
    assert_eq!(keys(&m), sorted(MESSAGE_KEYS));
    assert_eq!(m["type"], "TEXT");
    assert_eq!(m["chatRoomId"], room);
    assert_eq!(m["messageId"], id);
    assert_eq!(m["senderId"], "alice01");
    assert_eq!(m["senderName"], "Alice");
    assert_eq!(m["senderProfileImage"], "https://img/alice01");
    assert_eq!(m["message"], "안녕");
    assert_eq!(m["attachments"], Value::Null);
    // The broadcast is exactly what history shows for the message.
    let (_, body) = history(&app, &alice, room, None).await;
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
        keys(&a),
        sorted(&["alarmType", "create_at", "chatRoomId", "message"])
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
    let n = count(
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
            run(&app, cmd("/app/send", "alice01", body.clone())).await,
            "{body}"
        );
    }
    assert!(
        run(
            &app,
            AppCommand {
                body: bytes::Bytes::from_static(b"not json"),
                ..cmd("/app/send", "alice01", json!({}))
            }
        )
        .await
    );
    assert_eq!(
        count(
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
    let room = create(&app, &alice, &["bob02"]).await;
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
    let room = create(&app, &alice, &["bob02"]).await;
    let mut link = node(&app, "n1", &["alice01", "bob02"]).await;
    link.bind(&format!("chat.{room}")).await.unwrap();
    drain(&mut link, 100).await;

    assert!(
        run(
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
        run(
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
        count(
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
        run(
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
    let room = create(&app, &alice, &["bob02"]).await;
    let other = create(&app, &alice, &["eve"]).await;
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

    assert!(!run(&app, read("bob02", json!(ids[3]))).await);
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
        assert!(!run(&app, read("bob02", json!(id))).await);
    }
    assert_eq!(pointer().await, ids[3]);
    // Not (or no longer) a member: nothing moves, nothing is broadcast, and it is not counted as
    // a failed command (the frontend acknowledges a room's last message right after leaving it).
    assert!(!run(&app, read("eve", json!(ids[4]))).await);
    assert!(run(&app, read("bob02", Value::Null)).await);
    assert!(drain(&mut link, 300).await.is_empty());

    // Forward again (as a string id too).
    assert!(!run(&app, read("bob02", json!(ids[4].to_string()))).await);
    assert_eq!(json_of(&recv(&mut link).await)["lastReadMessageId"], ids[4]);
    assert_eq!(pointer().await, ids[4]);
}
on_both!(read_pointer_only_moves_forward);

// ---------------------------------------------------------------------------------------------
// Gateway queries

async fn subscription_policy_and_replay(db: Db) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    quick_user(&app, "eve", "Eve").await;
    let room = create(&app, &alice, &["bob02", "carol03"]).await;
    let ctx = &app.ctx;

    for topic in [format!("chat.{room}"), format!("members.info.{room}")] {
        assert!(ctx.may_subscribe_topic("alice01", &topic).await, "{topic}");
        assert!(!ctx.may_subscribe_topic("eve", &topic).await, "{topic}");
    }
    for topic in [
        format!("chat/{room}"),
        format!("members/info/{room}"),
        "chat.*".to_owned(),
        "#".to_owned(),
        format!("chat.0{room}"),
        "chat.999999".to_owned(),
        "other".to_owned(),
    ] {
        assert!(!ctx.may_subscribe_topic("alice01", &topic).await, "{topic}");
    }

    let mut link = node(&app, "n1", &[]).await;
    link.bind(&format!("chat.{room}")).await.unwrap();
    let mut broadcast = Vec::new();
    for i in 0..5 {
        send(&app, "alice01", room, &format!("r{i}")).await;
        let d = recv(&mut link).await;
        let id: i64 = header(&d, "x-instar-message-id").unwrap().parse().unwrap();
        broadcast.push((id, d.envelope.body.to_vec()));
    }
    let replay = ctx
        .chat_messages_after("bob02", room, broadcast[1].0, 100)
        .await
        .unwrap();
    assert_eq!(replay, broadcast[2..].to_vec());
    let replay = ctx.chat_messages_after("bob02", room, 0, 2).await.unwrap();
    assert_eq!(replay, broadcast[..2].to_vec());
    assert!(matches!(
        ctx.chat_messages_after("eve", room, 0, 10).await,
        Err(social::chat::ReplayError::NotMember)
    ));

    // After leaving: no subscription, no replay.
    assert_eq!(leave(&app, &bob, room).await.0, 200);
    assert!(
        !ctx.may_subscribe_topic("bob02", &format!("chat.{room}"))
            .await
    );
    assert!(ctx.chat_messages_after("bob02", room, 0, 10).await.is_err());
}
on_both!(subscription_policy_and_replay);

// ---------------------------------------------------------------------------------------------
// Outbox

async fn outbox_rows_left_behind_are_resent(db: Db) {
    let app = start(db).await;
    let mut link = node(&app, "n1", &[]).await;
    link.bind("chat.77").await.unwrap();
    let mut tx = app.ctx.store.write().await.unwrap();
    let headers = serde_json::to_string(&[("x-instar-message-id", "5")]).unwrap();
    social::store::chat::outbox_insert(
        tx.conn(),
        &social::store::chat::NewOutbox {
            target: "topic:chat.77",
            destination: "/topic/chat.77",
            content_type: Some("application/json"),
            headers: Some(&headers),
            body: b"{\"left\":\"behind\"}",
        },
        social::time::now_micros() - 10_000_000,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // The sweeper started by `register` picks it up.
    let d = recv(&mut link).await;
    assert_eq!(d.envelope.destination, "/topic/chat.77");
    assert_eq!(&d.envelope.body[..], b"{\"left\":\"behind\"}");
    assert_eq!(header(&d, "x-instar-message-id"), Some("5"));
    assert_eq!(d.envelope.content_type.as_deref(), Some("application/json"));
    poll("the row to be deleted", || async {
        outbox_len(&app).await == 0
    })
    .await;
}
on_both!(outbox_rows_left_behind_are_resent);

async fn a_stalled_bus_leaves_the_push_for_the_sweeper(db: Db) {
    let app = TestApp::start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    let room = create(&app, &alice, &["bob02"]).await;

    // A second bus whose only node has a one-slot inbox, already full: publishes to it stall
    // (in-process backpressure) until the publish timeout.
    let bus = Bus::in_process(
        Registry::in_process(),
        InProcessConfig {
            node_inbox_capacity: 1,
            ..InProcessConfig::default()
        },
    );
    let mut link = bus.open_node("slow".into()).await.unwrap();
    link.bind(&format!("chat.{room}")).await.unwrap();
    bus.publish(
        Target::topic(format!("chat.{room}")),
        Envelope::new(format!("/topic/chat.{room}"), "filler"),
    )
    .await
    .unwrap();
    let ctx = app.ctx.with_bus(bus.clone());
    social::chat::register(&ctx, &bus);
    bus.submit(cmd(
        "/app/send",
        "alice01",
        json!({"chatRoomId": room, "message": "stalled"}),
    ))
    .await
    .unwrap();
    // Committed although the bus did not take the broadcast: the row stays.
    poll("the message to be stored", || async {
        count(
            &app,
            "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ?",
            room,
        )
        .await
            == 1
    })
    .await;
    tokio::time::sleep(social::outbox::PUBLISH_TIMEOUT + Duration::from_millis(500)).await;
    assert!(outbox_len(&app).await >= 1);

    // The node drains; a sweep re-sends the broadcast, then the row is gone.
    let filler = recv(&mut link).await;
    assert_eq!(&filler.envelope.body[..], b"filler");
    let mut delivered = 0;
    for _ in 0..100 {
        delivered += ctx.outbox.sweep(Duration::ZERO).await.unwrap();
        if delivered > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered > 0);
    let d = recv(&mut link).await;
    let m = json_of(&d);
    assert_eq!(m["message"], "stalled");
    assert_eq!(
        header(&d, "x-instar-message-id"),
        Some(m["messageId"].to_string().as_str())
    );
    poll("the outbox to empty", || async {
        ctx.outbox.sweep(Duration::ZERO).await.unwrap();
        outbox_len(&app).await == 0
    })
    .await;
}
on_both!(a_stalled_bus_leaves_the_push_for_the_sweeper);

// ---------------------------------------------------------------------------------------------
// Batched sends

/// Runs `futs` concurrently, polling them in order (so the first poll of each, which queues a
/// send, happens in order); their outputs in order.
async fn in_order<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in futs.iter_mut().zip(out.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *slot = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

/// alice01's sends of `texts` to `room`, queued in order at once; their answers in order.
async fn alice_sends<T: AsRef<str>>(
    writer: &social::chat::writer::SendWriter,
    room: i64,
    texts: &[T],
) -> Vec<Result<i64, social::chat::ChatError>> {
    in_order(
        texts
            .iter()
            .map(|t| writer.send("alice01", room, t.as_ref()))
            .collect(),
    )
    .await
}

async fn batched_sends_keep_order_and_refuse_one_by_one(db: Db) {
    use std::sync::atomic::Ordering;
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    quick_user(&app, "dave04", "Dave").await;
    let group = create(&app, &alice, &["bob02", "carol03"]).await;
    let dm = create(&app, &alice, &["bob02"]).await;
    let other = create(&app, &alice, &["carol03"]).await;
    // Bob hides the DM: the first batched message brings it back for him.
    let (status, _) = leave(&app, &bob, dm).await;
    assert_eq!(status, 200);
    let rooms = [group, dm, other];
    let mut link = node(&app, "n1", &["alice01", "bob02", "carol03"]).await;
    for r in rooms {
        link.bind(&format!("chat.{r}")).await.unwrap();
    }
    drain(&mut link, 200).await;

    let writer = social::chat::writer::SendWriter::start(&app.ctx, 2).unwrap();
    let members = |room: i64| -> &'static [&'static str] {
        if room == group {
            &["alice01", "bob02", "carol03"]
        } else if room == dm {
            &["alice01"]
        } else {
            &["alice01", "carol03"]
        }
    };
    // 300 sends queued at once, every tenth from a non-member.
    let sends: Vec<(i64, String, String)> = (0..300)
        .map(|i| {
            let room = rooms[i % 3];
            let sender = if i % 10 == 9 {
                "dave04".to_owned()
            } else {
                let m = members(room);
                m[(i / 3) % m.len()].to_owned()
            };
            (room, sender, format!("batch {i}"))
        })
        .collect();
    let answers = in_order(
        sends
            .iter()
            .map(|(room, sender, text)| writer.send(sender, *room, text))
            .collect(),
    )
    .await;

    let mut expected: std::collections::HashMap<i64, Vec<(i64, String)>> = Default::default();
    for ((room, sender, text), answer) in sends.iter().zip(&answers) {
        if sender == "dave04" {
            assert!(
                matches!(
                    answer,
                    Err(social::chat::ChatError::Refused("not a member"))
                ),
                "{answer:?}"
            );
        } else {
            let id = *answer.as_ref().unwrap();
            expected.entry(*room).or_default().push((id, text.clone()));
        }
    }
    let stats = writer.stats();
    assert_eq!(stats.refused.load(Ordering::Relaxed), 30);
    assert_eq!(stats.messages.load(Ordering::Relaxed), 270);
    assert_eq!(stats.fallbacks.load(Ordering::Relaxed), 0);
    let batches = stats.batches.load(Ordering::Relaxed);
    assert!(batches < 20, "{batches} transactions for 270 messages");

    // Per room: ids rise in the order the sends were queued, the store holds exactly those
    // rows, the broadcasts arrive once each in id order, and the preview is the last one.
    let mut broadcast: std::collections::HashMap<i64, Vec<i64>> = Default::default();
    let mut alarms: std::collections::HashMap<String, usize> = Default::default();
    let mut create_room = 0;
    for d in drain(&mut link, 1500).await {
        match &d.target {
            Target::Topic(t) => {
                let m = json_of(&d);
                let room = m["chatRoomId"].as_i64().unwrap();
                assert_eq!(t, &format!("chat.{room}"));
                assert_eq!(
                    header(&d, "x-instar-message-id"),
                    Some(m["messageId"].to_string().as_str())
                );
                broadcast
                    .entry(room)
                    .or_default()
                    .push(m["messageId"].as_i64().unwrap());
            }
            Target::User { user, .. } => {
                let a = json_of(&d);
                if a["alarmType"] == "CREATE_ROOM" {
                    assert_eq!(user, "bob02");
                    create_room += 1;
                } else {
                    assert_eq!(a["alarmType"], "CHAT");
                    *alarms.entry(user.clone()).or_default() += 1;
                }
            }
        }
    }
    assert_eq!(create_room, 1);
    for r in rooms {
        let want = &expected[&r];
        let ids: Vec<i64> = want.iter().map(|(id, _)| *id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert_eq!(broadcast[&r], ids);
        let stored: Vec<(i64, String)> = sqlx::query_as(
            "SELECT id, message FROM chatroom_message WHERE chatroom_id = ? AND type = 'TEXT' \
             ORDER BY id",
        )
        .bind(r)
        .fetch_all(app.ctx.store.pool())
        .await
        .unwrap();
        assert_eq!(&stored, want);
        let listed = room_in(&crate::rooms(&app, &alice).await, r).unwrap();
        assert_eq!(listed["lastMessage"], want.last().unwrap().1.as_str());
    }
    // CHAT alarms: one per message to each member (bob is back in the DM).
    let n = |r: i64| expected[&r].len();
    assert_eq!(alarms["alice01"], n(group) + n(dm) + n(other));
    assert_eq!(alarms["bob02"], n(group) + n(dm));
    assert_eq!(alarms["carol03"], n(group) + n(other));
    let hidden: i64 = sqlx::query_scalar(
        "SELECT is_hidden FROM chatroom_participant WHERE chatroom_id = ? AND user_id = 'bob02'",
    )
    .bind(dm)
    .fetch_one(app.ctx.store.pool())
    .await
    .unwrap();
    assert_eq!(hidden, 0);
    outbox_drains(&app).await;
    // Checks that need no database are made before queueing.
    assert!(writer.send("alice01", group, " ").await.is_err());
    assert!(writer.send("alice01", 999_999, "x").await.is_err());
}
on_both!(batched_sends_keep_order_and_refuse_one_by_one);

/// The writer sends a batch's values as literals in a multi-statement script
/// (`social::store::script`): every text arrives byte for byte, none is read as SQL.
async fn batched_texts_are_stored_byte_for_byte(db: Db) {
    let (app, alice, room, mut link) = dm_with_link(db).await;
    let writer = social::chat::writer::SendWriter::start(&app.ctx, 1).unwrap();
    let long: String = "가".repeat(social::chat::MAX_MESSAGE_CHARS);
    let texts: Vec<String> = vec![
        "it's".into(),
        "'); DROP TABLE chatroom_message; --".into(),
        "back\\slash \\' \\\"".into(),
        "nul \0 inside".into(),
        "quote \" and ` and ;\n; COMMIT;".into(),
        "100% _under_ %".into(),
        "안녕하세요 😀 👩‍👩‍👧".into(),
        "X'41' _utf8mb4 X'41' CAST(X'41' AS TEXT)".into(),
        "\r\n\ttabs".into(),
        long,
    ];
    let answers = alice_sends(&writer, room, &texts).await;
    let ids: Vec<i64> = answers.into_iter().map(Result::unwrap).collect();
    let stored: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, message FROM chatroom_message WHERE chatroom_id = ? AND type = 'TEXT' \
         ORDER BY id",
    )
    .bind(room)
    .fetch_all(app.ctx.store.pool())
    .await
    .unwrap();
    let want: Vec<(i64, String)> = ids.iter().copied().zip(texts.iter().cloned()).collect();
    assert_eq!(stored, want);
    let listed = room_in(&rooms(&app, &alice).await, room).unwrap();
    assert_eq!(
        listed["lastMessage"].as_str(),
        texts.last().map(String::as_str)
    );
    let broadcast = broadcast_texts(&mut link).await;
    assert_eq!(broadcast, texts);
    outbox_drains(&app).await;
}
on_both!(batched_texts_are_stored_byte_for_byte);

/// A writer starts a batch at most once per linger while sends keep coming: after a first batch,
/// two sends queued 20 ms apart inside a 300 ms linger are written together; with no linger the
/// second is written alone.
async fn sends_inside_the_linger_share_a_batch(db: Db) {
    use social::chat::writer::SendWriter;
    use std::sync::atomic::Ordering;
    let (app, _alice, room, _link) = dm_with_link(db).await;
    for (linger_ms, batches) in [(300, 2), (0, 3)] {
        let writer = SendWriter::start_with(&app.ctx, 1, Duration::from_millis(linger_ms)).unwrap();
        writer.send("alice01", room, "first").await.unwrap();
        let second = writer.enqueue("alice01", room, "second").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let third = writer.enqueue("alice01", room, "third").await.unwrap();
        let (second, third) = (second.await.unwrap(), third.await.unwrap());
        assert!(third > second);
        assert_eq!(
            writer.stats().batches.load(Ordering::Relaxed),
            batches,
            "linger {linger_ms} ms"
        );
    }
}
on_both!(sends_inside_the_linger_share_a_batch);

/// Delivered batches' outbox rows are not deleted one statement per batch: they ride on a later
/// batch once `CLEANUP_ROWS` have gathered, and go on their own after an idle spell, before the
/// sweeper would take them for undelivered (every broadcast arrives once).
async fn delivered_rows_are_deleted_together(db: Db) {
    use social::chat::writer::{CLEANUP_ROWS, SendWriter};
    use std::sync::atomic::Ordering;
    let (app, _alice, room, mut link) = dm_with_link(db).await;
    let writer = SendWriter::start(&app.ctx, 1).unwrap();
    let n = CLEANUP_ROWS + 8;
    let texts: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    for t in &texts {
        // One at a time: a batch each.
        writer.send("alice01", room, t).await.unwrap();
    }
    let stats = writer.stats();
    assert_eq!(stats.batches.load(Ordering::Relaxed), n as u64);
    let after_sends = stats.cleanups.load(Ordering::Relaxed);
    // One riding clean-up (plus one for each idle spell of 200 ms between two sends, if the
    // machine was that slow), not one per batch.
    assert!(
        (1..n as u64 / 4).contains(&after_sends),
        "{after_sends} clean-ups for {n} batches"
    );
    outbox_drains(&app).await;
    assert!(stats.cleanups.load(Ordering::Relaxed) > after_sends);
    assert_eq!(broadcast_texts(&mut link).await, texts);
    // The counters reach /metrics, summed over the context's writers.
    let text = app.ctx.metrics_text();
    assert!(
        text.contains(&format!("\ninstar_chat_messages_total {n}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "\ninstar_chat_outbox_cleanups_total {}\n",
            stats.cleanups.load(Ordering::Relaxed)
        )),
        "{text}"
    );
}
on_both!(delivered_rows_are_deleted_together);

/// A batch's outbox row names its messages; the sweeper rebuilds their pushes from the store.
async fn a_batch_row_left_behind_is_rebuilt_from_the_store(db: Db) {
    let (app, alice, room, mut link) = dm_with_link(db).await;
    let ids = insert_messages(&app, room, "alice01", 2).await;
    let mut tx = app.ctx.store.write().await.unwrap();
    let body = serde_json::to_vec(&ids).unwrap();
    social::store::chat::outbox_insert(
        tx.conn(),
        &social::store::chat::NewOutbox {
            target: social::chat::writer::MESSAGES_TARGET,
            destination: "/topic/chat",
            content_type: Some("application/json"),
            headers: None,
            body: &body,
        },
        social::time::now_micros() - 10_000_000,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let mut topic = Vec::new();
    let mut alarms = Vec::new();
    while topic.len() < 2 || alarms.len() < 4 {
        let d = recv(&mut link).await;
        match &d.target {
            Target::Topic(_) => topic.push(d),
            Target::User { .. } => alarms.push(d),
        }
    }
    let (_, hist) = history(&app, &alice, room, None).await;
    for (d, id) in topic.iter().zip(&ids) {
        assert_eq!(
            header(d, "x-instar-message-id"),
            Some(id.to_string().as_str())
        );
        let m = json_of(d);
        assert_eq!(m["messageId"], *id);
        // The same JSON as the history (newest first there).
        let same = hist["list"].as_array().unwrap().contains(&m);
        assert!(same, "{m} not in {hist}");
    }
    for a in &alarms {
        assert_eq!(json_of(a)["alarmType"], "CHAT");
    }
    poll("the row to be deleted", || async {
        outbox_len(&app).await == 0
    })
    .await;
}
on_both!(a_batch_row_left_behind_is_rebuilt_from_the_store);

/// A batch whose script fails part-way (here a trigger refuses one message) leaves nothing: the
/// transaction is rolled back with its connection, and the sends are written one at a time, so
/// only the bad one is refused and the others are stored and broadcast once each.
async fn a_failed_batch_is_rolled_back_and_retried_one_by_one(db: Db) {
    use std::sync::atomic::Ordering;
    let (app, _, room, mut link) = dm_with_link(db).await;
    let trigger = match db {
        Db::Sqlite => {
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON chatroom_message \
             WHEN NEW.message = 'boom' BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
        }
        Db::MySql => {
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON chatroom_message FOR EACH ROW \
             IF NEW.message = 'boom' THEN \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'boom refused'; END IF"
        }
    };
    sqlx::raw_sql(trigger)
        .execute(app.ctx.store.pool())
        .await
        .unwrap();

    let writer = social::chat::writer::SendWriter::start(&app.ctx, 1).unwrap();
    let texts = ["first", "boom", "last"];
    let answers = alice_sends(&writer, room, &texts).await;
    assert!(answers[0].is_ok() && answers[2].is_ok(), "{answers:?}");
    assert!(answers[1].is_err(), "{answers:?}");
    assert_eq!(writer.stats().fallbacks.load(Ordering::Relaxed), 1);
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT message FROM chatroom_message WHERE chatroom_id = ? AND type = 'TEXT' ORDER BY id",
    )
    .bind(room)
    .fetch_all(app.ctx.store.pool())
    .await
    .unwrap();
    assert_eq!(stored, ["first", "last"]);
    let broadcast = broadcast_texts(&mut link).await;
    assert_eq!(broadcast, ["first", "last"]);
    outbox_drains(&app).await;
    // The failed transaction's connection did not come back to the pool half-open, and (SQLite)
    // the writer queue was released: the next batch goes through.
    let id = writer.send("alice01", room, "after").await.unwrap();
    assert!(id > *answers[2].as_ref().unwrap());
    assert_eq!(writer.stats().fallbacks.load(Ordering::Relaxed), 1);
}
on_both!(a_failed_batch_is_rolled_back_and_retried_one_by_one);

/// The writer's own outbox row (its body computed by the database from the insert's id, in the
/// same script as the messages) is rebuilt by the sweeper when the pushes were not published.
async fn a_batch_row_written_by_the_database_is_rebuilt(db: Db) {
    use social::store::chat::{self as sql, InsertedIds, NewMessage, NewOutbox};
    use social::store::script::Script;
    let (app, _, room, mut link) = dm_with_link(db).await;

    let store = &app.ctx.store;
    let d = store.dialect();
    let mut tx = store.script_write().await.unwrap();
    let how = InsertedIds::probe(tx.conn().unwrap(), d).await.unwrap();
    let InsertedIds::Consecutive(step) = how else {
        panic!("the test servers give consecutive ids");
    };
    let texts = ["one", "two", "three"];
    let rows: Vec<NewMessage<'_>> = texts
        .iter()
        .map(|t| NewMessage {
            room,
            sender: "alice01",
            message: t,
            kind: "TEXT",
        })
        .collect();
    let at = social::time::now_micros() - 10_000_000;
    let mut script = Script::new(d);
    script.sql(tx.begin()).end();
    sql::script_insert_messages(&mut script, d, &rows, at, how, 3);
    sql::script_batch_outbox_insert(
        &mut script,
        d,
        &NewOutbox {
            target: social::chat::writer::MESSAGES_TARGET,
            destination: "/topic/chat",
            content_type: Some("application/json"),
            headers: None,
            body: b"",
        },
        rows.len(),
        step,
        at,
        4,
    );
    script.sql("COMMIT").end();
    let result = script.run(tx.conn().unwrap()).await.unwrap();
    tx.committed();
    drop(tx);
    let ids = sql::inserted_message_ids(&result, d, &rows, how, 3).unwrap();
    let row = sql::inserted_row_id(&result, 4).unwrap();
    let body: Vec<u8> = sqlx::query_scalar("SELECT body FROM outbox WHERE id = ?")
        .bind(row)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(body).unwrap(),
        format!(r#"{{"first":{},"count":3,"step":{step}}}"#, ids[0])
    );

    let mut topic = Vec::new();
    while topic.len() < 3 {
        let d = recv(&mut link).await;
        if let Target::Topic(_) = &d.target {
            topic.push(json_of(&d));
        }
    }
    let got: Vec<(i64, String)> = topic
        .iter()
        .map(|m| {
            (
                m["messageId"].as_i64().unwrap(),
                m["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(i64, String)> = ids
        .iter()
        .copied()
        .zip(texts.iter().map(|t| (*t).to_owned()))
        .collect();
    assert_eq!(got, want);
    poll("the row to be deleted", || async {
        outbox_len(&app).await == 0
    })
    .await;
}
on_both!(a_batch_row_written_by_the_database_is_rebuilt);

/// An app with alice01, bob02 and carol03, and alice's DMs with bob02 and with carol03.
async fn two_dms(db: Db) -> (TestApp, i64, i64) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    let a = create(&app, &alice, &["bob02"]).await;
    let b = create(&app, &alice, &["carol03"]).await;
    (app, a, b)
}

/// Both ways of finding a multi-row insert's ids give each row its own id, rooms interleaved.
async fn multi_row_insert_ids_match_their_rows(db: Db) {
    use social::store::chat::{self as sql, InsertedIds, NewMessage};
    let (app, a, b) = two_dms(db).await;
    let d = app.ctx.store.dialect();
    let mut tx = app.ctx.store.write().await.unwrap();
    let probed = InsertedIds::probe(tx.conn(), d).await.unwrap();
    tx.commit().await.unwrap();
    for how in [probed, InsertedIds::ReadBack] {
        let texts: Vec<String> = (0..9).map(|i| format!("{how:?} {i}")).collect();
        let rows: Vec<NewMessage<'_>> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| NewMessage {
                room: if i % 3 == 0 { b } else { a },
                sender: "alice01",
                message: t,
                kind: "TEXT",
            })
            .collect();
        let mut tx = app.ctx.store.script_write().await.unwrap();
        let mut script = social::store::script::Script::new(d);
        script.sql(tx.begin()).end();
        sql::script_lock_rooms(&mut script, d, &[a, b], 1);
        sql::script_insert_messages(&mut script, d, &rows, social::time::now_micros(), how, 2);
        let result = tx.commit_with(&mut script).await.unwrap();
        let ids = sql::inserted_message_ids(&result, d, &rows, how, 2).unwrap();
        assert_eq!(ids.len(), rows.len());
        for (id, row) in ids.iter().zip(&rows) {
            let (room, text): (i64, String) =
                sqlx::query_as("SELECT chatroom_id, message FROM chatroom_message WHERE id = ?")
                    .bind(id)
                    .fetch_one(app.ctx.store.pool())
                    .await
                    .unwrap();
            assert_eq!((room, text.as_str()), (row.room, row.message), "{how:?}");
        }
    }
}
on_both!(multi_row_insert_ids_match_their_rows);

/// On MySQL a batch script ends with its own `COMMIT`, guarded by a statement that stops the
/// script (transaction still open, nothing after it run) unless every room has the membership
/// version expected: a changed version and a room that is gone both stop it, recognisably, and
/// the rollback that follows leaves nothing behind. On SQLite the guard is not used (the writer
/// compares the versions it read before committing).
async fn version_check_stops_a_script_before_its_commit(db: Db) {
    use social::store::chat as sql;
    use social::store::script::Script;
    let (app, a, b) = two_dms(db).await;
    let d = app.ctx.store.dialect();
    let versions: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, member_version FROM chatroom WHERE id IN (?, ?) ORDER BY id")
            .bind(a)
            .bind(b)
            .fetch_all(app.ctx.store.pool())
            .await
            .unwrap();
    let messages = |room: i64| {
        let pool = app.ctx.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM chatroom_message WHERE chatroom_id = ? AND message LIKE 'guarded%'",
            )
            .bind(room)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // A membership change moves room b's version on.
    sqlx::query("UPDATE chatroom SET member_version = member_version + 1 WHERE id = ?")
        .bind(b)
        .execute(app.ctx.store.pool())
        .await
        .unwrap();
    let moved_on = versions.clone();
    let versions = vec![versions[0], (versions[1].0, versions[1].1 + 1)];
    // Expected versions, then one wrong, then a room that does not exist, then room b as read
    // before its change, then a missing room in place of b with the same sum of versions (only
    // the count differs).
    let wrong = vec![versions[0], (versions[1].0, versions[1].1 + 1)];
    let gone = vec![versions[0], versions[1], (b + 1000, 1)];
    let short = vec![versions[0], (b + 1000, 0)];
    for (case, expected) in [
        ("current", versions.clone()),
        ("wrong", wrong),
        ("gone", gone),
        ("moved on", moved_on),
        ("short", short),
    ] {
        let rooms: Vec<i64> = expected.iter().map(|e| e.0).collect();
        let mut tx = app.ctx.store.script_write().await.unwrap();
        let mut script = Script::new(d);
        script.sql(tx.begin()).end();
        sql::script_lock_rooms(&mut script, d, &rooms, 1);
        let checked = sql::script_check_versions(&mut script, d, &expected, 2);
        assert_eq!(checked, d.0 == migrations::Backend::MySql, "{case}");
        if !checked {
            return;
        }
        script
            .sql("INSERT INTO chatroom_message (chatroom_id, sender_id, message, create_at, type) VALUES (")
            .int(a)
            .sql(", ")
            .text("alice01")
            .sql(", ")
            .text(&format!("guarded {case}"))
            .sql(", 1, 'TEXT')")
            .end();
        script.sql("COMMIT").end();
        match script.run(tx.conn().unwrap()).await {
            Ok(_) => {
                assert_eq!(case, "current");
                tx.committed();
            }
            Err(e) => {
                assert_ne!(case, "current", "{e}");
                assert!(sql::is_stale_rooms(&e), "{case}: {e}");
                tx.rollback().await.unwrap();
            }
        }
    }
    assert_eq!(
        messages(a).await,
        1,
        "only the script with current versions committed"
    );
    // An unrelated failure is not taken for a changed room.
    let mut conn = app.ctx.store.pool().acquire().await.unwrap();
    let mut script = Script::new(d);
    script.sql("SELECT no_such_column FROM chatroom").end();
    let e = script.run(&mut conn).await.unwrap_err();
    assert!(!sql::is_stale_rooms(&e), "{e}");
}
on_both!(version_check_stops_a_script_before_its_commit);

/// The writer remembers each room's participants between batches instead of reading them for
/// every batch, and trusts them only while the room's membership version is the one it read:
/// a leave, and a rejoin by invitation, made through another process are both seen by the
/// writer's very next batch (rolled back and written again after reading the participants).
async fn remembered_members_follow_changes_made_elsewhere(db: Db) {
    use social::chat::ChatError;
    use std::sync::atomic::Ordering;
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob02", "Bob").await;
    quick_user(&app, "carol03", "Carol").await;
    let group = create(&app, &alice, &["bob02", "carol03"]).await;
    let version = |app: &TestApp| {
        let pool = app.ctx.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT member_version FROM chatroom WHERE id = ?")
                .bind(group)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let created = version(&app).await;
    assert!(created >= 3, "one change per participant added: {created}");
    let other = app.second().await;
    let writer = social::chat::writer::SendWriter::start(&app.ctx, 1).unwrap();
    let stats = writer.stats();

    writer.send("bob02", group, "one").await.unwrap();
    assert_eq!(stats.known_batches.load(Ordering::Relaxed), 0);
    writer.send("bob02", group, "two").await.unwrap();
    assert_eq!(stats.known_batches.load(Ordering::Relaxed), 1);

    // Bob leaves through the other process: his next send is refused and nothing is stored.
    let (status, body) = leave(&other, &bob, group).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(version(&app).await, created + 1);
    let refused = writer.send("bob02", group, "after leaving").await;
    assert!(
        matches!(refused, Err(ChatError::Refused("not a member"))),
        "{refused:?}"
    );
    assert_eq!(stats.stale_batches.load(Ordering::Relaxed), 1);
    // Carol's sends go on from what was read again.
    writer.send("carol03", group, "three").await.unwrap();
    assert_eq!(stats.known_batches.load(Ordering::Relaxed), 2);

    // Alice invites Bob back through the other process: his next send is taken.
    let (status, body) = other
        .post(
            "/api/chat/invite/user",
            Some(&alice),
            json!({ "users": ["bob02"], "chatRoomId": group }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    writer.send("bob02", group, "back again").await.unwrap();
    assert_eq!(stats.stale_batches.load(Ordering::Relaxed), 1);
    assert_eq!(stats.known_batches.load(Ordering::Relaxed), 2);
    // Remembered again with Bob: his next send needs no participant read.
    writer.send("bob02", group, "and again").await.unwrap();
    assert_eq!(stats.known_batches.load(Ordering::Relaxed), 3);
    assert_eq!(stats.fallbacks.load(Ordering::Relaxed), 0);

    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT message FROM chatroom_message WHERE chatroom_id = ? AND type = 'TEXT' ORDER BY id",
    )
    .bind(group)
    .fetch_all(app.ctx.store.pool())
    .await
    .unwrap();
    assert_eq!(stored, ["one", "two", "three", "back again", "and again"]);
}
on_both!(remembered_members_follow_changes_made_elsewhere);
