//! `/api/post/**`: create, profile grid, details, like, comments, view history (contract #20–#27).

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod common;

use std::time::Duration;

use broker_bridge::{NodeId, NodeLink, SessionEntry};
use common::{Db, TestApp, files_under, jpeg_bytes, png_bytes};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers

const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n";

fn image_part(bytes: Vec<u8>, name: &str) -> Part {
    Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str("image/png")
        .unwrap()
}

fn post_form(images: Vec<Vec<u8>>, data: &Value) -> Form {
    let mut form = Form::new();
    for (i, img) in images.into_iter().enumerate() {
        form = form.part("images", image_part(img, &format!("{i}.png")));
    }
    form.text("data", data.to_string())
}

/// Creates a post through the API and returns its id.
async fn create_post(app: &TestApp, token: &str, data: Value) -> i64 {
    let (status, body) = app
        .post_multipart(
            "/api/post/create",
            Some(token),
            post_form(vec![png_bytes(8, 6)], &data),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["postId"].as_i64().unwrap()
}

/// Objects in the local media directory (each has a `.meta` sidecar, not counted; anything
/// else, leftovers included, is).
fn media_files(app: &TestApp) -> usize {
    files_under(&app.dir.join("media"))
        .iter()
        .filter(|p| p.extension().is_none_or(|e| e != "meta"))
        .count()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(app.ctx.store.pool())
        .await
        .unwrap()
}

/// An account inserted without a password (hashing is slow in debug builds); returns a token.
async fn quick_user(app: &TestApp, id: &str) -> String {
    sqlx::query(
        "INSERT INTO user (id, name, email, profile_image, created_at) VALUES (?, ?, ?, '', 0)",
    )
    .bind(id)
    .bind(id)
    .bind(format!("{id}@example.com"))
    .execute(app.ctx.store.pool())
    .await
    .unwrap();
    app.token(id)
}

/// Sends a multipart post create declaring 10 MiB + 1 byte and only the start of the body, and
/// reads the answer: status and JSON body.
async fn oversized_post(app: &TestApp, token: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let addr = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/post/create HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n--XyZ\r\nContent-Disposition: form-data; name=\"images\"; \
         filename=\"a.png\"\r\n\r\n",
        10 * 1024 * 1024 + 1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    (status, serde_json::from_str(body.trim()).unwrap())
}

/// Opens a bus node with one session of `user` on it.
async fn listen(app: &TestApp, user: &str) -> NodeLink {
    let node = NodeId::from(format!("node-{user}"));
    let link = app.bus.open_node(node.clone()).await.unwrap();
    app.bus
        .registry()
        .register(SessionEntry {
            session: format!("session-{user}"),
            user: user.to_owned(),
            node,
            connected_at_ms: 1,
        })
        .await
        .unwrap();
    link
}

async fn next_push(link: &mut NodeLink) -> Value {
    let d = tokio::time::timeout(Duration::from_secs(5), link.recv())
        .await
        .expect("a push")
        .expect("bus open");
    assert_eq!(d.envelope.destination, "/user/queue/notify");
    serde_json::from_slice(&d.envelope.body).unwrap()
}

async fn no_push(link: &mut NodeLink) {
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(link.try_recv().is_none(), "unexpected push");
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

fn sorted(list: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
    k.sort();
    k
}

fn is_datetime(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    s.len() >= 19 && s.as_bytes()[10] == b'T' && !s.ends_with('Z')
}

// ---------------------------------------------------------------------------------------------
// #20 create, #21 list, #22 details

async fn create_post_and_read_it_back(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user_named("alice01", "Alice").await;
    let bob = app.user("bob123").await;
    let mut bob_link = listen(&app, "bob123").await;
    let mut alice_link = listen(&app, "alice01").await;

    let data = json!({
        "comment": "sunset #Sea #sky",
        "location": "해운대해수욕장",
        "tags": {
            "0": [{"userId": "bob123", "x": 41.5, "y": 62, "id": 9}, {"userId": "alice01", "x": 1, "y": 2}],
            "1": [{"userId": "bob123", "x": 0, "y": 100}]
        },
        "hashtags": ["Sea", " sky ", "sea", "#바다"]
    });
    let form = post_form(vec![png_bytes(40, 30), jpeg_bytes(16, 16)], &data);
    let (status, body) = app
        .post_multipart("/api/post/create", Some(&alice), form)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), sorted(&["code", "postId"]));
    assert_eq!(body["code"], "SC");
    let post_id = body["postId"].as_i64().unwrap();

    // Two images, each with a thumbnail.
    assert_eq!(media_files(&app), 4);
    assert_eq!(
        count(&app, "SELECT post_count FROM user WHERE id = 'alice01'").await,
        1
    );
    let tags: Vec<(String, String)> =
        sqlx::query_as("SELECT tag_name, type FROM post_tags ORDER BY tag_name")
            .fetch_all(app.ctx.store.pool())
            .await
            .unwrap();
    assert_eq!(
        tags,
        vec![
            ("sea".to_owned(), "HASH_TAG".to_owned()),
            ("sky".to_owned(), "HASH_TAG".to_owned()),
            ("바다".to_owned(), "HASH_TAG".to_owned()),
        ]
    );

    // POST_TAG push to bob (once, though tagged on two images), sender = the author; none to the
    // self-tagged author.
    let push = next_push(&mut bob_link).await;
    assert_eq!(push["alarmType"], "POST_TAG");
    assert_eq!(push["senderId"], "alice01");
    assert_eq!(push["postId"], post_id);
    assert_eq!(
        keys(&push),
        sorted(&[
            "alarmType",
            "create_at",
            "senderId",
            "senderProfileImage",
            "postId"
        ])
    );
    no_push(&mut bob_link).await;
    no_push(&mut alice_link).await;
    assert_eq!(count(&app, "SELECT COUNT(*) FROM alarm").await, 1);

    // Details, as bob.
    let (status, body) = app
        .get(
            &format!("/api/post/get/details_info?postId={post_id}"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), sorted(&["code", "post"]));
    let post = &body["post"];
    assert_eq!(
        keys(post),
        sorted(&[
            "postId",
            "user",
            "comment",
            "location",
            "favoriteCount",
            "commentCount",
            "createdAt",
            "imageTags",
            "hashtags",
            "aiTags",
            "isLiked"
        ])
    );
    assert_eq!(post["postId"], post_id);
    // No dictionary and no labeler here: the hashtags as normalised, no image tags.
    assert_eq!(post["hashtags"], json!(["sea", "sky", "바다"]));
    assert_eq!(post["aiTags"], json!([]));
    assert_eq!(
        post["user"],
        json!({"id": "alice01", "name": "Alice", "profileImage": "", "following": false})
    );
    assert_eq!(post["comment"], "sunset #Sea #sky");
    assert_eq!(post["location"], "해운대해수욕장");
    assert_eq!(post["favoriteCount"], 0);
    assert_eq!(post["commentCount"], 0);
    assert_eq!(post["isLiked"], false);
    assert!(is_datetime(&post["createdAt"]), "{}", post["createdAt"]);
    let images = post["imageTags"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for img in images {
        assert_eq!(
            keys(img),
            sorted(&["url", "thumbnailUrl", "blurhash", "width", "height", "tags"])
        );
        assert!(
            img["url"]
                .as_str()
                .unwrap()
                .starts_with(&app.url("/media/post/"))
        );
        assert!(img["thumbnailUrl"].as_str().unwrap().ends_with("_thumb"));
    }
    assert_eq!(images[0]["width"], 40);
    assert_eq!(images[0]["height"], 30);
    assert_eq!(
        images[0]["tags"],
        json!([{"userId": "bob123", "x": 41.5, "y": 62.0}, {"userId": "alice01", "x": 1.0, "y": 2.0}])
    );
    assert_eq!(
        images[1]["tags"],
        json!([{"userId": "bob123", "x": 0.0, "y": 100.0}])
    );
    // The image is served.
    let res = app
        .client
        .get(images[0]["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // The profile grid.
    let (status, body) = app.get("/api/post/get/list", Some(&alice)).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&body), sorted(&["code", "list"]));
    assert_eq!(
        body["list"],
        json!([{"postId": post_id, "commentCount": 0, "favoriteCount": 0, "profileImage": images[0]["url"]}])
    );

    // Tags and hashtags optional; `tags` null is fine (the original failed with DE).
    let second = create_post(
        &app,
        &alice,
        json!({"comment": "", "location": null, "tags": null}),
    )
    .await;
    assert!(second > post_id);
    let third = create_post(&app, &bob, json!({"comment": "x"})).await;
    assert!(third > second);
    assert_eq!(
        count(&app, "SELECT post_count FROM user WHERE id = 'alice01'").await,
        2
    );
}
on_both!(create_post_and_read_it_back);

async fn create_refusals_leave_nothing_behind(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user("alice01").await;
    app.user("bob123").await;
    let ok = json!({"comment": "hi"});

    // No token.
    let (status, body) = app
        .post_multipart(
            "/api/post/create",
            None,
            post_form(vec![png_bytes(4, 4)], &ok),
        )
        .await;
    assert_eq!((status, body), (401, json!({"code": "AV"})));

    let cases: Vec<(&str, Form)> = vec![
        (
            "no data part",
            Form::new().part("images", image_part(png_bytes(4, 4), "a.png")),
        ),
        ("no images", Form::new().text("data", ok.to_string())),
        (
            "data not JSON",
            post_form(vec![png_bytes(4, 4)], &json!("{nope")).text("x", "y"),
        ),
        (
            "data not JSON (raw)",
            Form::new()
                .part("images", image_part(png_bytes(4, 4), "a.png"))
                .text("data", "{nope"),
        ),
        (
            "tag position not a number",
            post_form(
                vec![png_bytes(4, 4)],
                &json!({"tags": {"0": [{"userId": "bob123", "x": "left", "y": 1}]}}),
            ),
        ),
        (
            "tagged user unknown",
            post_form(
                vec![png_bytes(4, 4), png_bytes(5, 5)],
                &json!({"tags": {"1": [{"userId": "nobody", "x": 1, "y": 1}]}}),
            ),
        ),
        ("pdf", post_form(vec![PDF.to_vec()], &ok)),
        (
            "pdf after an image",
            post_form(vec![png_bytes(4, 4), PDF.to_vec()], &ok),
        ),
        (
            "zip",
            post_form(vec![b"PK\x03\x04rest-of-zip".to_vec()], &ok),
        ),
        (
            "ole (hwp)",
            post_form(vec![b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1rest".to_vec()], &ok),
        ),
        (
            "unknown bytes",
            post_form(vec![b"hello world".to_vec()], &ok),
        ),
        ("empty file", post_form(vec![Vec::new()], &ok)),
        (
            "corrupt png",
            post_form(vec![png_bytes(4, 4)[..20].to_vec()], &ok),
        ),
        ("eleven images", post_form(vec![png_bytes(2, 2); 11], &ok)),
        (
            "caption too long",
            post_form(
                vec![png_bytes(4, 4)],
                &json!({"comment": "가".repeat(2_201)}),
            ),
        ),
        (
            "location too long",
            post_form(vec![png_bytes(4, 4)], &json!({"location": "a".repeat(101)})),
        ),
        (
            "hashtag too long",
            post_form(
                vec![png_bytes(4, 4)],
                &json!({"hashtags": ["a".repeat(101)]}),
            ),
        ),
    ];
    for (what, form) in cases {
        let (status, body) = app
            .post_multipart("/api/post/create", Some(&alice), form)
            .await;
        assert_eq!((status, &body), (400, &json!({"code": "BR"})), "{what}");
        assert_eq!(media_files(&app), 0, "{what}: objects left behind");
    }

    // Not multipart at all.
    let (status, body) = app
        .post("/api/post/create", Some(&alice), json!({"comment": "x"}))
        .await;
    assert_eq!((status, body), (400, json!({"code": "BR"})));

    // Over 10 MB: refused from the declared length, before the body is read. (Written by hand:
    // an HTTP client streaming the whole body may see the early 413 as a broken pipe.)
    let (status, body) = oversized_post(&app, &alice).await;
    assert_eq!((status, body), (413, json!({"code": "BR"})));
    assert_eq!(media_files(&app), 0);

    assert_eq!(count(&app, "SELECT COUNT(*) FROM post").await, 0);
    assert_eq!(
        count(&app, "SELECT COUNT(*) FROM post_attachments").await,
        0
    );
    assert_eq!(count(&app, "SELECT COUNT(*) FROM alarm").await, 0);
    assert_eq!(
        count(&app, "SELECT post_count FROM user WHERE id = 'alice01'").await,
        0
    );
    // Still works afterwards.
    create_post(&app, &alice, ok).await;
    assert_eq!(media_files(&app), 2);
}
on_both!(create_refusals_leave_nothing_behind);

async fn profile_grid_pages_of_nine(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user("alice01").await;
    let bob = app.user("bob123").await;
    let mut ids = Vec::new();
    for i in 0..11 {
        ids.push(create_post(&app, &alice, json!({"comment": format!("p{i}")})).await);
    }
    create_post(&app, &bob, json!({"comment": "bob's"})).await;
    ids.reverse();

    let (status, body) = app
        .get("/api/post/get/list?userId=&postId=", Some(&alice))
        .await;
    assert_eq!(status, 200);
    let page: Vec<i64> = body["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["postId"].as_i64().unwrap())
        .collect();
    assert_eq!(page, ids[..9]);
    let (_, body) = app
        .get(
            &format!("/api/post/get/list?userId=alice01&postId={}", ids[8]),
            Some(&bob),
        )
        .await;
    let page: Vec<i64> = body["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["postId"].as_i64().unwrap())
        .collect();
    assert_eq!(page, ids[9..]);
    let (_, body) = app
        .get(
            &format!("/api/post/get/list?userId=alice01&postId={}", ids[10]),
            Some(&bob),
        )
        .await;
    assert_eq!(body, json!({"code": "SC", "list": []}));
    let (_, body) = app
        .get("/api/post/get/list?userId=nobody", Some(&bob))
        .await;
    assert_eq!(body, json!({"code": "SC", "list": []}));
    let (status, body) = app.get("/api/post/get/list?postId=abc", Some(&bob)).await;
    assert_eq!((status, body), (400, json!({"code": "BR"})));
    let (status, _) = app.get("/api/post/get/list", None).await;
    assert_eq!(status, 401);

    // details_info errors.
    let (status, body) = app
        .get("/api/post/get/details_info?postId=999999", Some(&bob))
        .await;
    assert_eq!((status, body), (400, json!({"code": "BR"})));
    let (status, body) = app.get("/api/post/get/details_info", Some(&bob)).await;
    assert_eq!((status, body), (400, json!({"code": "BR"})));
    let (status, body) = app
        .get("/api/post/get/details_info?postId=x", Some(&bob))
        .await;
    assert_eq!((status, body), (400, json!({"code": "BR"})));
    let (status, _) = app
        .get(
            &format!("/api/post/get/details_info?postId={}", ids[0]),
            None,
        )
        .await;
    assert_eq!(status, 401);
}
on_both!(profile_grid_pages_of_nine);

// ---------------------------------------------------------------------------------------------
// #23 like

async fn likes_toggle_and_is_liked_is_the_viewers(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user("alice01").await;
    let bob = app.user_named("bob123", "Bob").await;
    let carol = app.user("carol1").await;
    let mut alice_link = listen(&app, "alice01").await;
    let post = create_post(&app, &alice, json!({"comment": "x"})).await;
    let details = |token: String| {
        let app = &app;
        async move {
            let (status, body) = app
                .get(
                    &format!("/api/post/get/details_info?postId={post}"),
                    Some(&token),
                )
                .await;
            assert_eq!(status, 200);
            body["post"].clone()
        }
    };

    // Bob likes: the like alarm is stored and pushed to alice.
    let (status, body) = app
        .post_raw(
            &format!("/api/post/like?postId={post}"),
            Some(&bob),
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!((status, body), (200, json!({"code": "SC"})));
    let push = next_push(&mut alice_link).await;
    assert_eq!(
        push,
        json!({
            "alarmType": "POST_LIKE_RECEIVE",
            "create_at": push["create_at"],
            "user": {"id": "bob123", "name": "Bob", "profileImage": "", "following": false},
            "postId": post
        })
    );
    assert!(is_datetime(&push["create_at"]));

    // isLiked is the viewer's (the original computed it for the author).
    let p = details(bob.clone()).await;
    assert_eq!(
        (p["isLiked"].clone(), p["favoriteCount"].clone()),
        (json!(true), json!(1))
    );
    assert_eq!(details(alice.clone()).await["isLiked"], false);
    assert_eq!(details(carol.clone()).await["isLiked"], false);

    let (_, list) = app.get("/api/alarm/getList", Some(&alice)).await;
    assert_eq!(list["list"].as_array().unwrap().len(), 1);
    assert_eq!(list["list"][0]["alarmType"], "POST_LIKE_RECEIVE");

    // Bob unlikes: the alarm goes too (the original left an orphan that broke getList).
    let (status, _) = app
        .post_raw(
            &format!("/api/post/like?postId={post}"),
            Some(&bob),
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!(status, 200);
    no_push(&mut alice_link).await;
    assert_eq!(count(&app, "SELECT COUNT(*) FROM alarm").await, 0);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM post_favorite").await, 0);
    let p = details(bob.clone()).await;
    assert_eq!(
        (p["isLiked"].clone(), p["favoriteCount"].clone()),
        (json!(false), json!(0))
    );
    let (status, body) = app.get("/api/alarm/getList", Some(&alice)).await;
    assert_eq!((status, body), (200, json!({"code": "SC", "list": []})));

    // Liking one's own post: counted, no alarm.
    let (status, _) = app
        .post_raw(
            &format!("/api/post/like?postId={post}"),
            Some(&alice),
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!(status, 200);
    no_push(&mut alice_link).await;
    assert_eq!(count(&app, "SELECT COUNT(*) FROM alarm").await, 0);
    assert_eq!(details(alice.clone()).await["isLiked"], true);
    assert_eq!(details(bob.clone()).await["isLiked"], false);

    // Like and unlike again: a second alarm cycle works and leaves nothing.
    for _ in 0..2 {
        app.post_raw(
            &format!("/api/post/like?postId={post}"),
            Some(&carol),
            "text/plain",
            Vec::new(),
        )
        .await;
    }
    let _ = next_push(&mut alice_link).await;
    assert_eq!(count(&app, "SELECT COUNT(*) FROM alarm").await, 0);
    assert_eq!(
        count(
            &app,
            &format!("SELECT favorite_count FROM post WHERE id = {post}")
        )
        .await,
        1
    );

    // Errors.
    let (status, body) = app
        .post_raw(
            "/api/post/like?postId=999999",
            Some(&bob),
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!((status, body), (400, json!({"code": "BR"})));
    let (status, body) = app
        .post_raw("/api/post/like", Some(&bob), "text/plain", Vec::new())
        .await;
    assert_eq!((status, body), (400, json!({"code": "BR"})));
    let (status, body) = app
        .post_raw(
            &format!("/api/post/like?postId={post}"),
            None,
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!((status, body), (401, json!({"code": "AV"})));
}
on_both!(likes_toggle_and_is_liked_is_the_viewers);

async fn concurrent_likes_keep_the_counter_exact(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user("alice01").await;
    let post = create_post(&app, &alice, json!({"comment": "x"})).await;
    let mut tokens = Vec::new();
    for i in 0..8 {
        tokens.push(quick_user(&app, &format!("liker{i}")).await);
    }
    let path = format!("/api/post/like?postId={post}");
    let results = futures_util::future::join_all(
        tokens
            .iter()
            .map(|t| app.post_raw(&path, Some(t), "text/plain", Vec::new())),
    )
    .await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert_eq!(
        count(
            &app,
            &format!("SELECT favorite_count FROM post WHERE id = {post}")
        )
        .await,
        8
    );
    assert_eq!(count(&app, "SELECT COUNT(*) FROM alarm").await, 8);
}
on_both!(concurrent_likes_keep_the_counter_exact);

// ---------------------------------------------------------------------------------------------
// #24 comment, #25 top-list, #26 pagination-list

async fn comments_alarms_and_errors(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user("alice01").await;
    let bob = app.user_named("bob123", "Bob").await;
    let mut alice_link = listen(&app, "alice01").await;
    let post = create_post(&app, &alice, json!({"comment": "x"})).await;

    let (status, body) = app
        .post(
            "/api/post/comment",
            Some(&bob),
            json!({"postId": post, "comment": "nice", "userId": "mallory"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), sorted(&["code", "comment"]));
    let c = &body["comment"];
    assert_eq!(
        keys(c),
        sorted(&[
            "id",
            "postId",
            "userId",
            "name",
            "profileImage",
            "content",
            "createAt"
        ])
    );
    assert_eq!(c["postId"], post);
    assert_eq!(c["userId"], "bob123");
    assert_eq!(c["name"], "Bob");
    assert_eq!(c["profileImage"], "");
    assert_eq!(c["content"], "nice");
    assert!(is_datetime(&c["createAt"]));

    let push = next_push(&mut alice_link).await;
    assert_eq!(
        push,
        json!({"alarmType": "POST_COMMENT_RECEIVE", "create_at": push["create_at"], "post": c, "postId": post})
    );
    let (_, list) = app.get("/api/alarm/getList", Some(&alice)).await;
    assert_eq!(list["list"], json!([push]));
    assert_eq!(
        count(
            &app,
            &format!("SELECT comment_count FROM post WHERE id = {post}")
        )
        .await,
        1
    );

    // Own comment: no alarm.
    let (status, _) = app
        .post(
            "/api/post/comment",
            Some(&alice),
            json!({"postId": post, "comment": "thanks"}),
        )
        .await;
    assert_eq!(status, 200);
    no_push(&mut alice_link).await;
    assert_eq!(count(&app, "SELECT COUNT(*) FROM alarm").await, 1);

    // Errors: unknown post is BR (the original answered DE), empty, blank, too long, missing.
    for body in [
        json!({"postId": 999_999, "comment": "x"}),
        json!({"postId": post, "comment": ""}),
        json!({"postId": post, "comment": "   "}),
        json!({"postId": post, "comment": "가".repeat(2_201)}),
        json!({"postId": post}),
        json!({"comment": "x"}),
        json!({"postId": "abc", "comment": "x"}),
    ] {
        let (status, res) = app
            .post("/api/post/comment", Some(&bob), body.clone())
            .await;
        assert_eq!((status, res), (400, json!({"code": "BR"})), "{body}");
    }
    let (status, res) = app
        .post_raw(
            "/api/post/comment",
            Some(&bob),
            "application/json",
            b"{nope".to_vec(),
        )
        .await;
    assert_eq!((status, res), (400, json!({"code": "BR"})));
    let (status, res) = app
        .post(
            "/api/post/comment",
            None,
            json!({"postId": post, "comment": "x"}),
        )
        .await;
    assert_eq!((status, res), (401, json!({"code": "AV"})));
    // 2,200 characters exactly is fine.
    let (status, _) = app
        .post(
            "/api/post/comment",
            Some(&bob),
            json!({"postId": post, "comment": "가".repeat(2_200)}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        count(
            &app,
            &format!("SELECT comment_count FROM post WHERE id = {post}")
        )
        .await,
        3
    );
}
on_both!(comments_alarms_and_errors);

async fn comment_top_list_and_pages(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user("alice01").await;
    let bob = app.user("bob123").await;
    let carol = app.user("carol1").await;
    let post = create_post(&app, &alice, json!({"comment": "x"})).await;
    let other = create_post(&app, &alice, json!({"comment": "y"})).await;

    let comment = |token: String, text: String, on: i64| {
        let app = &app;
        async move {
            let (status, body) = app
                .post(
                    "/api/post/comment",
                    Some(&token),
                    json!({"postId": on, "comment": text}),
                )
                .await;
            assert_eq!(status, 200);
            body["comment"]["id"].as_i64().unwrap()
        }
    };
    let mut all = Vec::new();
    let mut bobs = Vec::new();
    for i in 0..36 {
        let id = if i % 7 == 3 {
            let id = comment(bob.clone(), format!("bob {i}"), post).await;
            bobs.push(id);
            id
        } else {
            comment(carol.clone(), format!("carol {i}"), post).await
        };
        all.push(id);
    }
    comment(bob.clone(), "elsewhere".into(), other).await;
    all.reverse();
    bobs.reverse();
    assert_eq!(bobs.len(), 5);

    let ids = |v: &Value| -> Vec<i64> {
        v["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_i64().unwrap())
            .collect()
    };
    // Top list: bob's own newest 3.
    let (status, body) = app
        .get(
            &format!("/api/post/comment/top-list?postId={post}"),
            Some(&bob),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(keys(&body), sorted(&["code", "list"]));
    assert_eq!(ids(&body), bobs[..3]);
    assert_eq!(body["list"][0]["userId"], "bob123");
    // Alice has none.
    let (_, body) = app
        .get(
            &format!("/api/post/comment/top-list?postId={post}"),
            Some(&alice),
        )
        .await;
    assert_eq!(body, json!({"code": "SC", "list": []}));

    // Pages for bob: everything but his top 3, 30 at a time, newest first.
    let expected: Vec<i64> = all
        .iter()
        .copied()
        .filter(|id| !bobs[..3].contains(id))
        .collect();
    assert_eq!(expected.len(), 33);
    let (_, body) = app
        .get(
            &format!("/api/post/comment/pagination-list?postId={post}"),
            Some(&bob),
        )
        .await;
    let page1 = ids(&body);
    assert_eq!(page1, expected[..30]);
    let (_, body) = app
        .get(
            &format!(
                "/api/post/comment/pagination-list?postId={post}&commentId={}",
                page1[29]
            ),
            Some(&bob),
        )
        .await;
    assert_eq!(ids(&body), expected[30..]);
    // Alice sees all 36 across pages (no exclusions).
    let (_, body) = app
        .get(
            &format!("/api/post/comment/pagination-list?postId={post}"),
            Some(&alice),
        )
        .await;
    assert_eq!(ids(&body), all[..30]);

    // A new comment by bob changes his top list and the exclusions at once (no stale cache).
    let newest = comment(bob.clone(), "latest".into(), post).await;
    let (_, body) = app
        .get(
            &format!("/api/post/comment/top-list?postId={post}"),
            Some(&bob),
        )
        .await;
    assert_eq!(ids(&body), vec![newest, bobs[0], bobs[1]]);
    let (_, body) = app
        .get(
            &format!("/api/post/comment/pagination-list?postId={post}"),
            Some(&bob),
        )
        .await;
    let page = ids(&body);
    assert!(page.contains(&bobs[2]));
    assert!(!page.contains(&newest) && !page.contains(&bobs[0]) && !page.contains(&bobs[1]));

    // Errors.
    for path in [
        "/api/post/comment/top-list",
        "/api/post/comment/top-list?postId=x",
        "/api/post/comment/pagination-list",
        "/api/post/comment/pagination-list?postId=1&commentId=x",
    ] {
        let (status, body) = app.get(path, Some(&bob)).await;
        assert_eq!((status, body), (400, json!({"code": "BR"})), "{path}");
        let (status, _) = app.get(path, None).await;
        assert_eq!(status, 401, "{path}");
    }
}
on_both!(comment_top_list_and_pages);

// ---------------------------------------------------------------------------------------------
// #27 view_history

async fn view_history_is_recorded_with_sane_times(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user("alice01").await;
    let bob = app.user("bob123").await;
    let post = create_post(&app, &alice, json!({"comment": "x"})).await;
    let before = social::time::now_micros();

    let views = [
        json!({"postId": post, "viewedAt": "2025-01-14T01:28:51.123Z", "timeSpentSeconds": 3}),
        json!({"postId": post, "viewedAt": "2999-01-01T00:00:00Z", "timeSpentSeconds": 2}),
        json!({"postId": post, "viewedAt": "yesterday"}),
        json!({"postId": post}),
        json!({"postId": post.to_string(), "viewedAt": null, "timeSpentSeconds": -5}),
    ];
    for v in &views {
        let (status, body) = app
            .post("/api/post/view_history", Some(&bob), v.clone())
            .await;
        assert_eq!((status, body), (200, Value::Null), "{v}");
    }
    // Unknown post or no post id: ignored, still 200 with an empty body.
    for v in [
        json!({"postId": 999_999}),
        json!({}),
        json!({"postId": "x"}),
    ] {
        let (status, body) = app
            .post("/api/post/view_history", Some(&bob), v.clone())
            .await;
        assert_eq!((status, body), (200, Value::Null), "{v}");
    }
    let (status, body) = app
        .post("/api/post/view_history", None, json!({"postId": post}))
        .await;
    assert_eq!((status, body), (401, json!({"code": "AV"})));

    let rows: Vec<(i64, Option<i64>)> = sqlx::query_as(
        "SELECT viewed_at, time_spent_seconds FROM post_view_history WHERE user_id = 'bob123' ORDER BY id",
    )
    .fetch_all(app.ctx.store.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[0], (1_736_818_131_123_000, Some(3)));
    let after = social::time::now_micros();
    for (at, _) in &rows[1..] {
        assert!(
            (before..=after).contains(at),
            "server time expected, got {at}"
        );
    }
    assert_eq!(rows[1].1, Some(2));
    assert_eq!(rows[4].1, None);
}
on_both!(view_history_is_recorded_with_sane_times);

// ---------------------------------------------------------------------------------------------
// The read cache behind details_info and the feed

async fn details_of(app: &TestApp, token: &str, post: i64) -> Value {
    let (status, body) = app
        .get(
            &format!("/api/post/get/details_info?postId={post}"),
            Some(token),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["post"].clone()
}

async fn in_feed(app: &TestApp, token: &str, post: i64) -> Value {
    let (status, body) = app.get("/api/feed", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body["feed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["postId"] == post)
        .cloned()
        .unwrap_or_else(|| panic!("post {post} not in {body}"))
}

async fn toggle_like(app: &TestApp, token: &str, post: i64) {
    let (status, _) = app
        .post_raw(
            &format!("/api/post/like?postId={post}"),
            Some(token),
            "text/plain",
            Vec::new(),
        )
        .await;
    assert_eq!(status, 200);
}

async fn sql(app: &TestApp, statement: &str) {
    sqlx::query(statement)
        .execute(app.ctx.store.pool())
        .await
        .unwrap();
}

/// Details and the feed are answered from memory once read, and every write through the API
/// (like, unlike, comment, profile edit, profile image) shows at once in the next read. A change
/// made behind the service's back (straight into the database) is *not* seen until something
/// invalidates the row, which proves the reads really come from the cache.
async fn cached_reads_follow_every_write(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user_named("alice01", "Alice").await;
    let bob = quick_user(&app, "bob123").await;
    let post = create_post(&app, &alice, json!({"comment": "x"})).await;

    let first = details_of(&app, &bob, post).await;
    assert_eq!(first["user"]["name"], "Alice");
    let before = app.ctx.cache.stats();
    assert_eq!(details_of(&app, &bob, post).await, first);
    let after = app.ctx.cache.stats();
    // The post's rendered view and bob's likes: both from memory.
    assert_eq!((after.hits - before.hits, after.misses), (2, before.misses));

    sql(
        &app,
        &format!("UPDATE post SET comment_count = 40 WHERE id = {post}"),
    )
    .await;
    assert_eq!(details_of(&app, &bob, post).await["commentCount"], 0);

    // Bob likes: his next reads (details and feed) show it, alice's show the count only.
    toggle_like(&app, &bob, post).await;
    let p = details_of(&app, &bob, post).await;
    assert_eq!(
        (&p["favoriteCount"], &p["isLiked"], &p["commentCount"]),
        (&json!(1), &json!(true), &json!(40))
    );
    let p = details_of(&app, &alice, post).await;
    assert_eq!(
        (&p["favoriteCount"], &p["isLiked"]),
        (&json!(1), &json!(false))
    );
    let f = in_feed(&app, &bob, post).await;
    assert_eq!(
        (&f["favoriteCount"], &f["isLiked"]),
        (&json!(1), &json!(true))
    );

    // A comment moves the counter.
    let (status, _) = app
        .post(
            "/api/post/comment",
            Some(&bob),
            json!({"postId": post, "comment": "nice"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(details_of(&app, &bob, post).await["commentCount"], 41);

    // The author renames herself and uploads a profile image: every post of hers shows both.
    let (status, body) = app
        .post(
            "/api/user/edit/info",
            Some(&alice),
            json!({"name": "Alice Two"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        details_of(&app, &bob, post).await["user"]["name"],
        "Alice Two"
    );
    assert_eq!(in_feed(&app, &bob, post).await["user"]["name"], "Alice Two");
    let (status, body) = app
        .post_multipart(
            "/api/file/upload/profile",
            Some(&alice),
            Form::new().part("file", image_part(png_bytes(32, 32), "me.png")),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        details_of(&app, &bob, post).await["user"]["profileImage"],
        body["url"]
    );

    // Bob unlikes.
    toggle_like(&app, &bob, post).await;
    let p = details_of(&app, &bob, post).await;
    assert_eq!(
        (&p["favoriteCount"], &p["isLiked"]),
        (&json!(0), &json!(false))
    );
    assert_eq!(in_feed(&app, &bob, post).await["isLiked"], false);
}
on_both!(cached_reads_follow_every_write);

/// Two social processes on one database and one bus (scale-out): each caches what it read, and a
/// write through one reaches the other's next read through the invalidation topic.
async fn a_write_through_one_process_reaches_the_others_cache(db: Db) {
    let a = TestApp::start(db).await;
    let b = a.second().await;
    let alice = a.user_named("alice01", "Alice").await;
    let bob = quick_user(&a, "bob123").await;
    let post = create_post(&a, &alice, json!({"comment": "x"})).await;
    assert_eq!(details_of(&b, &bob, post).await["favoriteCount"], 0);
    assert_eq!(details_of(&a, &bob, post).await["favoriteCount"], 0);
    let hits = b.ctx.cache.stats().hits;
    details_of(&b, &bob, post).await;
    assert!(b.ctx.cache.stats().hits > hits, "b answers from its cache");

    toggle_like(&a, &bob, post).await;
    let (status, _) = a
        .post(
            "/api/user/edit/info",
            Some(&alice),
            json!({"name": "Alice Two"}),
        )
        .await;
    assert_eq!(status, 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let p = details_of(&b, &bob, post).await;
        if p["favoriteCount"] == 1 && p["isLiked"] == true && p["user"]["name"] == "Alice Two" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "b still shows {p} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.ctx.cache.stats().invalidations >= 3);
}
on_both!(a_write_through_one_process_reaches_the_others_cache);
