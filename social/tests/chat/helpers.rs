//! Helpers of the chat tests: apps with a user or two, REST and bus calls, and what a node link
//! receives.

#![allow(dead_code)]

use std::time::Duration;

use broker_bridge::{AppCommand, Delivery, NodeLink, SessionEntry, Target};
use serde_json::{Value, json};

use crate::common::{Db, TestApp, wait_until};

/// A test app with the chat handlers registered.
pub(crate) async fn start(db: Db) -> TestApp {
    let app = TestApp::start(db).await;
    social::chat::register(&app.ctx, &app.bus);
    app
}

/// Creates an account without a password (fast) with the image `https://img/{id}`.
pub(crate) async fn quick_user(app: &TestApp, id: &str, name: &str) -> String {
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

pub(crate) async fn send_req(req: reqwest::RequestBuilder) -> (u16, Value) {
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

pub(crate) async fn put_json(app: &TestApp, path: &str, token: &str, body: Value) -> (u16, Value) {
    send_req(app.client.put(app.url(path)).bearer_auth(token).json(&body)).await
}

pub(crate) async fn put_form(
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

pub(crate) async fn delete(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    send_req(app.client.delete(app.url(path)).bearer_auth(token)).await
}

pub(crate) async fn leave(app: &TestApp, token: &str, room: i64) -> (u16, Value) {
    delete(
        app,
        &format!("/api/chat/room/leave?chatRoomId={room}"),
        token,
    )
    .await
}

pub(crate) async fn create_room(app: &TestApp, token: &str, users: &[&str]) -> i64 {
    let (status, body) = app
        .post("/api/chat/create", Some(token), json!({ "users": users }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], "SC");
    body["chatRoomId"].as_i64().unwrap()
}

pub(crate) async fn room_list(app: &TestApp, token: &str) -> Vec<Value> {
    let (status, body) = app.get("/api/chat/getList", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body["list"].as_array().unwrap().clone()
}

pub(crate) fn room_in(list: &[Value], room: i64) -> Option<Value> {
    list.iter()
        .find(|r| r["chatroomId"].as_i64() == Some(room))
        .cloned()
}

pub(crate) async fn history_page(
    app: &TestApp,
    token: &str,
    room: i64,
    cursor: Option<i64>,
) -> (u16, Value) {
    let path = match cursor {
        Some(c) => format!("/api/chat/history?chatRoomId={room}&messageId={c}"),
        None => format!("/api/chat/history?chatRoomId={room}"),
    };
    app.get(&path, Some(token)).await
}

pub(crate) fn object_keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

pub(crate) fn sorted_strings(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

pub(crate) const MESSAGE_KEYS: &[&str] = &[
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

pub(crate) fn cmd(destination: &str, principal: &str, body: Value) -> AppCommand {
    AppCommand {
        destination: destination.into(),
        principal: principal.into(),
        session: format!("s-{principal}"),
        node: "n1".into(),
        headers: vec![],
        body: serde_json::to_vec(&body).unwrap().into(),
    }
}

/// Sends `text` through the bus as `user` and waits until it is stored and its pushes published;
/// returns its id.
pub(crate) async fn send(app: &TestApp, user: &str, room: i64, text: &str) -> i64 {
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
            wait_until("the pushes to be published", || async {
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
pub(crate) async fn run_command(app: &TestApp, c: AppCommand) -> bool {
    // Earlier commands may still be finishing (their broadcasts go out before they are counted):
    // wait until every one is, so the counters below move for this command only.
    wait_until("earlier commands to finish", || {
        let m = app.bus.metrics();
        async move { m.commands_handled + m.commands_failed >= m.commands_submitted }
    })
    .await;
    let before = app.bus.metrics();
    app.bus.submit(c).await.unwrap();
    let mut failed = false;
    wait_until("the command to finish", || {
        let m = app.bus.metrics();
        failed = m.commands_failed > before.commands_failed;
        let done = m.commands_handled > before.commands_handled || failed;
        async move { done }
    })
    .await;
    failed
}

pub(crate) async fn count_rows(app: &TestApp, sql: &str, room: i64) -> i64 {
    sqlx::query_scalar(sql)
        .bind(room)
        .fetch_one(app.ctx.store.pool())
        .await
        .unwrap()
}

/// Waits (2 s at most: well inside the sweeper's grace, so it is not the sweeper that empties it)
/// until every outbox row is gone: the writer deletes delivered batches' rows after a short idle
/// spell or with a later batch.
pub(crate) async fn outbox_drains(app: &TestApp) {
    for _ in 0..100 {
        if outbox_len(app).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("outbox rows left: {}", outbox_len(app).await);
}

pub(crate) async fn outbox_len(app: &TestApp) -> i64 {
    app.ctx.store.outbox_len().await.unwrap()
}

/// Inserts `n` messages from `sender` directly.
pub(crate) async fn insert_messages(app: &TestApp, room: i64, sender: &str, n: usize) -> Vec<i64> {
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
pub(crate) async fn dm_with_link(db: Db) -> (TestApp, String, i64, NodeLink) {
    let app = start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob02", "Bob").await;
    let room = create_room(&app, &alice, &["bob02"]).await;
    let mut link = node(&app, "n1", &["alice01", "bob02"]).await;
    link.bind(&format!("chat.{room}")).await.unwrap();
    drain(&mut link, 200).await;
    (app, alice, room, link)
}

/// The texts of the room broadcasts arriving on `link` within half a second, in order.
pub(crate) async fn broadcast_texts(link: &mut NodeLink) -> Vec<String> {
    drain(link, 500)
        .await
        .iter()
        .filter(|d| matches!(d.target, Target::Topic(_)))
        .map(|d| json_of(d)["message"].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) async fn node(app: &TestApp, name: &str, user_sessions: &[&str]) -> NodeLink {
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

pub(crate) async fn recv(link: &mut NodeLink) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), link.recv())
        .await
        .expect("no delivery within 5 s")
        .expect("bus closed")
}

/// Deliveries arriving within `ms` milliseconds.
pub(crate) async fn drain(link: &mut NodeLink, ms: u64) -> Vec<Delivery> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    while let Ok(Some(d)) = tokio::time::timeout_at(deadline, link.recv()).await {
        out.push(d);
    }
    out
}

pub(crate) fn json_of(d: &Delivery) -> Value {
    serde_json::from_slice(&d.envelope.body).unwrap()
}

pub(crate) fn header<'a>(d: &'a Delivery, name: &str) -> Option<&'a str> {
    d.envelope
        .headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn part(bytes: Vec<u8>, name: &str, mime: &str) -> reqwest::multipart::Part {
    reqwest::multipart::Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str(mime)
        .unwrap()
}
