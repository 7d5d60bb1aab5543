//! User routes (contract §3.1 #9–#18): me, follow/unfollow (counters, alarms, pushes, no
//! deadlocks), search, details, recommendations, profile editing, password change and the
//! profile image upload — each test on SQLite and MariaDB.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use broker_bridge::{SessionEntry, Target};
use common::{Db, TestApp, files_under, jpeg_bytes, png_bytes};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Creates an account without hashing a password (fast; argon2 is slow in debug builds).
async fn quick_user(app: &TestApp, id: &str, name: &str) -> String {
    insert_user(app, id, name, None, "SOCIAL").await;
    app.token(id)
}

async fn insert_user(app: &TestApp, id: &str, name: &str, password: Option<&str>, kind: &str) {
    let email = format!("{}@example.com", id.to_lowercase());
    let mut tx = app.ctx.store.write().await.unwrap();
    social::store::users::insert(
        tx.conn(),
        &social::store::users::NewUser {
            id,
            password,
            name,
            sex: None,
            email: &email,
            comment: None,
            address: None,
            address_detail: None,
            profile_image: Some(""),
            kind,
            social_id: None,
            created_at: social::time::now_micros(),
        },
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

async fn follow(app: &TestApp, token: &str, target: &str) -> (u16, Value) {
    app.post(
        "/api/user/follow",
        Some(token),
        json!({ "followingId": target }),
    )
    .await
}

async fn unfollow(app: &TestApp, token: &str, target: &str) -> (u16, Value) {
    app.post(
        "/api/user/un_follow",
        Some(token),
        json!({ "unFollowingId": target }),
    )
    .await
}

async fn me(app: &TestApp, token: &str) -> Value {
    let (status, body) = app.get("/api/user/me", Some(token)).await;
    assert_eq!(status, 200, "{body}");
    body["user"].clone()
}

/// Alarms stored for `user`: (type, reference id).
async fn alarms_of(app: &TestApp, user: &str) -> Vec<(String, i64)> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT alarm_type, reference_id FROM alarm WHERE user_id = ? ORDER BY id",
    )
    .bind(user)
    .fetch_all(app.ctx.store.pool())
    .await
    .unwrap()
}

async fn follows_id(app: &TestApp, follower: &str, following: &str) -> Option<i64> {
    sqlx::query_scalar::<_, i64>(
        "SELECT id FROM follows WHERE follower_id = ? AND following_id = ?",
    )
    .bind(follower)
    .bind(following)
    .fetch_optional(app.ctx.store.pool())
    .await
    .unwrap()
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

fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// #9 me

async fn me_returns_the_callers_profile(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user_named("alice01", "Alice").await;
    let (status, body) = app.get("/api/user/me", Some(&alice)).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&body), sorted(&["code", "user"]));
    assert_eq!(
        body,
        json!({"code": "SC", "user": {
            "id": "alice01", "name": "Alice", "comment": "", "followCount": 0,
            "followerCount": 0, "postCount": 0, "profileImage": "", "type": "LOCAL"
        }})
    );
    // HEAD answers like GET.
    let res = app
        .client
        .head(app.url("/api/user/me"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // A valid token of a user that does not exist (never did, or was deleted): 400 IVT.
    let ghost = app.token("ghost99");
    let (status, body) = app.get("/api/user/me", Some(&ghost)).await;
    assert_eq!((status, body), (400, json!({"code": "IVT", "user": null})));
    sqlx::query("DELETE FROM user WHERE id = ?")
        .bind("alice01")
        .execute(app.ctx.store.pool())
        .await
        .unwrap();
    let (status, body) = app.get("/api/user/me", Some(&alice)).await;
    assert_eq!((status, body), (400, json!({"code": "IVT", "user": null})));
    // No token: 401 AV.
    let (status, body) = app.get("/api/user/me", None).await;
    assert_eq!((status, body), (401, json!({"code": "AV"})));
}
on_both!(me_returns_the_callers_profile);

// ---------------------------------------------------------------------------------------------
// #10, #11 follow / un_follow

async fn follow_and_unfollow_keep_counters_and_alarms(db: Db) {
    let app = TestApp::start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob123", "Bob").await;

    let (status, body) = follow(&app, &alice, "bob123").await;
    assert_eq!((status, body), (200, json!({"code": "SC"})));
    assert_eq!(me(&app, &alice).await["followCount"], 1);
    assert_eq!(me(&app, &alice).await["followerCount"], 0);
    assert_eq!(me(&app, &bob).await["followerCount"], 1);
    assert_eq!(me(&app, &bob).await["followCount"], 0);
    let fid = follows_id(&app, "alice01", "bob123").await.unwrap();
    assert_eq!(
        alarms_of(&app, "bob123").await,
        vec![("FOLLOW".into(), fid)]
    );
    assert!(alarms_of(&app, "alice01").await.is_empty());

    // Already following: BR, nothing changes.
    let (status, body) = follow(&app, &alice, "bob123").await;
    assert_eq!((status, body), (400, json!({"code": "BR"})));
    assert_eq!(me(&app, &bob).await["followerCount"], 1);
    assert_eq!(alarms_of(&app, "bob123").await.len(), 1);

    // Unfollow with the frontend's literal `Application/json`.
    let (status, body) = app
        .post_raw(
            "/api/user/un_follow",
            Some(&alice),
            "Application/json",
            br#"{"unFollowingId":"bob123"}"#.to_vec(),
        )
        .await;
    assert_eq!((status, body), (200, json!({"code": "SC"})));
    assert_eq!(me(&app, &alice).await["followCount"], 0);
    assert_eq!(me(&app, &bob).await["followerCount"], 0);
    assert!(follows_id(&app, "alice01", "bob123").await.is_none());
    assert!(alarms_of(&app, "bob123").await.is_empty());

    // Not following any more: BR.
    let (status, body) = unfollow(&app, &alice, "bob123").await;
    assert_eq!((status, body), (400, json!({"code": "BR"})));
    assert_eq!(me(&app, &alice).await["followCount"], 0);

    // Follow again works (a fresh row and alarm).
    assert_eq!(follow(&app, &alice, "bob123").await.0, 200);
    let fid2 = follows_id(&app, "alice01", "bob123").await.unwrap();
    assert_ne!(fid, fid2);
    assert_eq!(
        alarms_of(&app, "bob123").await,
        vec![("FOLLOW".into(), fid2)]
    );
}
on_both!(follow_and_unfollow_keep_counters_and_alarms);

async fn follow_refuses_bad_requests(db: Db) {
    let app = TestApp::start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob123", "Bob").await;
    let br = json!({"code": "BR"});

    // Self-follow, unknown target, empty id.
    assert_eq!(follow(&app, &alice, "alice01").await, (400, br.clone()));
    assert_eq!(follow(&app, &alice, "nobody").await, (400, br.clone()));
    assert_eq!(follow(&app, &alice, "").await, (400, br.clone()));
    assert_eq!(unfollow(&app, &alice, "alice01").await, (400, br.clone()));
    assert_eq!(unfollow(&app, &alice, "nobody").await, (400, br.clone()));
    assert_eq!(me(&app, &alice).await["followCount"], 0);
    // A deleted caller cannot follow.
    let ghost = app.token("ghost99");
    assert_eq!(follow(&app, &ghost, "bob123").await, (400, br.clone()));
    assert_eq!(me(&app, &app.token("bob123")).await["followerCount"], 0);

    // Missing or mistyped fields, bad JSON, wrong content type: 400 BR.
    for path in ["/api/user/follow", "/api/user/un_follow"] {
        let (status, body) = app.post(path, Some(&alice), json!({})).await;
        assert_eq!((status, body), (400, br.clone()), "{path}");
        let (status, body) = app
            .post(
                path,
                Some(&alice),
                json!({"followingId": 5, "unFollowingId": 5}),
            )
            .await;
        assert_eq!((status, body), (400, br.clone()), "{path}");
        let (status, body) = app
            .post_raw(path, Some(&alice), "application/json", b"{nope".to_vec())
            .await;
        assert_eq!((status, body), (400, br.clone()), "{path}");
        let (status, body) = app
            .post_raw(
                path,
                Some(&alice),
                "text/plain",
                br#"{"followingId":"bob123"}"#.to_vec(),
            )
            .await;
        assert_eq!((status, body), (400, br.clone()), "{path}");
        // No token: 401.
        let (status, body) = app.post(path, None, json!({"followingId": "bob123"})).await;
        assert_eq!((status, body), (401, json!({"code": "AV"})), "{path}");
        // Wrong method.
        let (status, _) = app.get(path, Some(&alice)).await;
        assert_eq!(status, 405, "{path}");
    }
    // Unknown fields are ignored.
    let (status, _) = app
        .post(
            "/api/user/follow",
            Some(&alice),
            json!({"followingId": "bob123", "extra": [1, 2]}),
        )
        .await;
    assert_eq!(status, 200);
}
on_both!(follow_refuses_bad_requests);

async fn unfollow_succeeds_without_its_alarm(db: Db) {
    let app = TestApp::start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob123", "Bob").await;
    assert_eq!(follow(&app, &alice, "bob123").await.0, 200);
    sqlx::query("DELETE FROM alarm")
        .execute(app.ctx.store.pool())
        .await
        .unwrap();
    // The original answered DE and rolled back here (contract §7 item 22).
    assert_eq!(
        unfollow(&app, &alice, "bob123").await,
        (200, json!({"code": "SC"}))
    );
    assert_eq!(me(&app, &alice).await["followCount"], 0);
}
on_both!(unfollow_succeeds_without_its_alarm);

async fn follow_pushes_an_alarm_to_the_target(db: Db) {
    let app = TestApp::start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    quick_user(&app, "bob123", "Bob").await;
    sqlx::query("UPDATE user SET profile_image = ? WHERE id = ?")
        .bind("https://cdn.example/a.png")
        .bind("alice01")
        .execute(app.ctx.store.pool())
        .await
        .unwrap();

    let mut link = app.bus.open_node("t1".into()).await.unwrap();
    app.bus
        .registry()
        .register(SessionEntry {
            session: "s-bob".into(),
            user: "bob123".into(),
            node: "t1".into(),
            connected_at_ms: 0,
        })
        .await
        .unwrap();

    assert_eq!(follow(&app, &alice, "bob123").await.0, 200);
    let delivery = tokio::time::timeout(Duration::from_secs(5), link.recv())
        .await
        .expect("no push within 5 s")
        .expect("bus closed");
    assert_eq!(delivery.target, Target::user("bob123", "notify"));
    assert_eq!(delivery.envelope.destination, "/user/queue/notify");
    let body: Value = serde_json::from_slice(&delivery.envelope.body).unwrap();
    assert_eq!(
        keys(&body),
        sorted(&["alarmType", "create_at", "senderId", "senderProfileImage"])
    );
    assert_eq!(body["alarmType"], "FOLLOW");
    assert_eq!(body["senderId"], "alice01");
    assert_eq!(body["senderProfileImage"], "https://cdn.example/a.png");
    let at = body["create_at"].as_str().unwrap();
    assert!(
        at.len() >= 19 && at.as_bytes()[10] == b'T' && !at.ends_with('Z'),
        "{at}"
    );

    // Unfollowing pushes nothing; a refused follow pushes nothing.
    assert_eq!(unfollow(&app, &alice, "bob123").await.0, 200);
    assert_eq!(unfollow(&app, &alice, "bob123").await.0, 400);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(link.try_recv().is_none());
}
on_both!(follow_pushes_an_alarm_to_the_target);

async fn concurrent_mutual_follows_do_not_deadlock(db: Db) {
    let app = std::sync::Arc::new(TestApp::start(db).await);
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob123", "Bob").await;
    for round in 0..5 {
        let (a, b) = (app.clone(), app.clone());
        let (ta, tb) = (alice.clone(), bob.clone());
        let one = tokio::spawn(async move { follow(&a, &ta, "bob123").await });
        let two = tokio::spawn(async move { follow(&b, &tb, "alice01").await });
        let (one, two) = (one.await.unwrap(), two.await.unwrap());
        assert_eq!(one, (200, json!({"code": "SC"})), "round {round}");
        assert_eq!(two, (200, json!({"code": "SC"})), "round {round}");
        for t in [&alice, &bob] {
            let u = me(&app, t).await;
            assert_eq!(
                (u["followCount"].clone(), u["followerCount"].clone()),
                (json!(1), json!(1))
            );
        }
        let (a, b) = (app.clone(), app.clone());
        let (ta, tb) = (alice.clone(), bob.clone());
        let one = tokio::spawn(async move { unfollow(&a, &ta, "bob123").await });
        let two = tokio::spawn(async move { unfollow(&b, &tb, "alice01").await });
        assert_eq!(one.await.unwrap().0, 200, "round {round}");
        assert_eq!(two.await.unwrap().0, 200, "round {round}");
    }
    // The same follow twice at once: exactly one wins.
    let (a, b) = (app.clone(), app.clone());
    let (ta, tb) = (alice.clone(), alice.clone());
    let one = tokio::spawn(async move { follow(&a, &ta, "bob123").await });
    let two = tokio::spawn(async move { follow(&b, &tb, "bob123").await });
    let mut statuses = [one.await.unwrap().0, two.await.unwrap().0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400]);
    assert_eq!(me(&app, &bob).await["followerCount"], 1);
    assert_eq!(alarms_of(&app, "bob123").await.len(), 1);
}
on_both!(concurrent_mutual_follows_do_not_deadlock);

// ---------------------------------------------------------------------------------------------
// #12 search

async fn search_lists_followed_users_first(db: Db) {
    let app = TestApp::start(db).await;
    let me_token = quick_user(&app, "kimchi_lover", "Me").await;
    quick_user(&app, "kim01", "Alpha").await;
    quick_user(&app, "kim02", "Beta").await;
    quick_user(&app, "zed", "KIMBERLY Z").await;
    quick_user(&app, "park", "Park").await;
    quick_user(&app, "kim_x", "Underscore").await;
    quick_user(&app, "kimAx", "No underscore").await;
    quick_user(&app, "100%real", "Percent").await;
    quick_user(&app, "1000real", "No percent").await;
    assert_eq!(follow(&app, &me_token, "zed").await.0, 200);
    assert_eq!(follow(&app, &me_token, "kim02").await.0, 200);

    let (status, body) = app
        .get("/api/user/search?keyword=KiM", Some(&me_token))
        .await;
    assert_eq!(status, 200);
    assert_eq!(keys(&body), sorted(&["code", "users"]));
    assert_eq!(body["code"], "SC");
    // Followed (by id), then the others (by id); id or name, case-insensitively; caller included.
    assert_eq!(
        ids(&body["users"]),
        ["kim02", "zed", "kim01", "kimAx", "kim_x", "kimchi_lover"]
    );
    let first = &body["users"][0];
    assert_eq!(
        keys(first),
        sorted(&["id", "name", "profileImage", "following"])
    );
    assert_eq!(
        *first,
        json!({"id": "kim02", "name": "Beta", "profileImage": "", "following": true})
    );
    assert_eq!(body["users"][1]["following"], true);
    assert_eq!(body["users"][2]["following"], false);

    // Wildcards are literal.
    let (_, body) = app
        .get("/api/user/search?keyword=kim_", Some(&me_token))
        .await;
    assert_eq!(ids(&body["users"]), ["kim_x"]);
    let (_, body) = app
        .get("/api/user/search?keyword=100%25", Some(&me_token))
        .await;
    assert_eq!(ids(&body["users"]), ["100%real"]);
    // Nothing, blank, and too long: empty lists.
    for q in ["nomatch", "", "%20%20", &"k".repeat(101)] {
        let (status, body) = app
            .get(&format!("/api/user/search?keyword={q}"), Some(&me_token))
            .await;
        assert_eq!(
            (status, body),
            (200, json!({"code": "SC", "users": []})),
            "{q}"
        );
    }
    // Missing keyword: 400 BR; no token: 401.
    let (status, body) = app.get("/api/user/search", Some(&me_token)).await;
    assert_eq!((status, body), (400, json!({"code": "BR"})));
    let (status, _) = app.get("/api/user/search?keyword=kim", None).await;
    assert_eq!(status, 401);
}
on_both!(search_lists_followed_users_first);

async fn search_is_capped_at_ten(db: Db) {
    let app = TestApp::start(db).await;
    let caller = quick_user(&app, "caller", "Caller").await;
    for i in 0..14 {
        quick_user(&app, &format!("user{i:02}"), "Someone").await;
    }
    for i in [3, 12] {
        assert_eq!(follow(&app, &caller, &format!("user{i:02}")).await.0, 200);
    }
    let (_, body) = app
        .get("/api/user/search?keyword=user", Some(&caller))
        .await;
    assert_eq!(
        ids(&body["users"]),
        [
            "user03", "user12", "user00", "user01", "user02", "user04", "user05", "user06",
            "user07", "user08"
        ]
    );
    // Every match followed: still ten.
    let (_, body) = app
        .get("/api/user/search?keyword=someone", Some(&caller))
        .await;
    assert_eq!(body["users"].as_array().unwrap().len(), 10);
}
on_both!(search_is_capped_at_ten);

// ---------------------------------------------------------------------------------------------
// #13 details/info

async fn details_show_whether_the_caller_follows(db: Db) {
    let app = TestApp::start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob123", "Bob").await;
    assert_eq!(follow(&app, &alice, "bob123").await.0, 200);

    let (status, body) = app
        .get("/api/user/details/info?searchId=bob123", Some(&alice))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"code": "SC", "user": {
            "id": "bob123", "name": "Bob", "profileImage": "", "comment": null,
            "followCount": 0, "followerCount": 1, "postCount": 0, "isFollowed": true
        }})
    );
    let (_, body) = app
        .get("/api/user/details/info?searchId=alice01", Some(&bob))
        .await;
    assert_eq!(body["user"]["isFollowed"], false);
    assert_eq!(body["user"]["followCount"], 1);
    // Yourself: false.
    let (_, body) = app
        .get("/api/user/details/info?searchId=alice01", Some(&alice))
        .await;
    assert_eq!(body["user"]["isFollowed"], false);

    let br = (400, json!({"code": "BR"}));
    assert_eq!(
        app.get("/api/user/details/info?searchId=nobody", Some(&alice))
            .await,
        br
    );
    assert_eq!(
        app.get("/api/user/details/info?searchId=", Some(&alice))
            .await,
        br
    );
    assert_eq!(app.get("/api/user/details/info", Some(&alice)).await, br);
    assert_eq!(
        app.get("/api/user/details/info?searchId=bob123", None)
            .await
            .0,
        401
    );
}
on_both!(details_show_whether_the_caller_follows);

// ---------------------------------------------------------------------------------------------
// #14 recommendations

async fn recommendations_are_friends_of_friends(db: Db) {
    let app = TestApp::start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob123", "Bob").await;
    let carol = quick_user(&app, "carol", "Carol").await;
    for id in ["dave", "erin", "frank", "gina", "hank", "ivan"] {
        quick_user(&app, id, &id.to_uppercase()).await;
    }
    // Nobody followed yet: empty.
    let (status, body) = app
        .get("/api/user/get/recommend/list?isAll=false", Some(&alice))
        .await;
    assert_eq!((status, body), (200, json!({"code": "SC", "list": []})));

    for t in ["bob123", "carol"] {
        assert_eq!(follow(&app, &alice, t).await.0, 200);
    }
    // bob → dave, erin, alice (the caller: excluded), carol (already followed: excluded).
    for t in ["dave", "erin", "alice01", "carol", "gina", "hank"] {
        assert_eq!(follow(&app, &bob, t).await.0, 200);
    }
    // carol → dave, frank, ivan.
    for t in ["dave", "frank", "ivan", "hank"] {
        assert_eq!(follow(&app, &carol, t).await.0, 200);
    }
    // Scores: dave 2, hank 2, erin 1, frank 1, gina 1, ivan 1.
    let (status, body) = app
        .get("/api/user/get/recommend/list?isAll=true", Some(&alice))
        .await;
    assert_eq!(status, 200);
    assert_eq!(keys(&body), sorted(&["code", "list"]));
    assert_eq!(
        ids(&body["list"]),
        ["dave", "hank", "erin", "frank", "gina", "ivan"]
    );
    assert_eq!(
        body["list"][0],
        json!({"id": "dave", "name": "DAVE", "profileImage": "", "following": false})
    );
    // isAll=false and absent: the first five.
    for q in ["?isAll=false", ""] {
        let (_, body) = app
            .get(&format!("/api/user/get/recommend/list{q}"), Some(&alice))
            .await;
        assert_eq!(
            ids(&body["list"]),
            ["dave", "hank", "erin", "frank", "gina"],
            "{q}"
        );
    }
    // Following one of them drops it from the (cached) list at once.
    assert_eq!(follow(&app, &alice, "hank").await.0, 200);
    let (_, body) = app
        .get("/api/user/get/recommend/list?isAll=true", Some(&alice))
        .await;
    assert_eq!(
        ids(&body["list"]),
        ["dave", "erin", "frank", "gina", "ivan"]
    );
    assert!(
        body["list"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["following"] == false)
    );
    // And unfollowing brings it back.
    assert_eq!(unfollow(&app, &alice, "hank").await.0, 200);
    let (_, body) = app
        .get("/api/user/get/recommend/list?isAll=true", Some(&alice))
        .await;
    assert_eq!(ids(&body["list"])[1], "hank");

    // A stale cache entry never shows a followed user as not followed.
    app.ctx
        .kv
        .set(
            "recommend:alice01",
            r#"["bob123","dave","nobody"]"#,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let (_, body) = app
        .get("/api/user/get/recommend/list?isAll=true", Some(&alice))
        .await;
    assert_eq!(
        body["list"],
        json!([
            {"id": "bob123", "name": "Bob", "profileImage": "", "following": true},
            {"id": "dave", "name": "DAVE", "profileImage": "", "following": false}
        ])
    );

    let (status, body) = app
        .get("/api/user/get/recommend/list?isAll=maybe", Some(&alice))
        .await;
    assert_eq!((status, body), (400, json!({"code": "BR"})));
    assert_eq!(
        app.get("/api/user/get/recommend/list?isAll=false", None)
            .await
            .0,
        401
    );
}
on_both!(recommendations_are_friends_of_friends);

async fn recommendations_stop_at_twenty(db: Db) {
    let app = TestApp::start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let bob = quick_user(&app, "bob123", "Bob").await;
    assert_eq!(follow(&app, &alice, "bob123").await.0, 200);
    for i in 0..25 {
        let id = format!("cand{i:02}");
        quick_user(&app, &id, "Candidate").await;
        assert_eq!(follow(&app, &bob, &id).await.0, 200);
    }
    let (_, body) = app
        .get("/api/user/get/recommend/list?isAll=true", Some(&alice))
        .await;
    let expected: Vec<String> = (0..20).map(|i| format!("cand{i:02}")).collect();
    assert_eq!(ids(&body["list"]), expected);
    let (_, body) = app
        .get("/api/user/get/recommend/list?isAll=false", Some(&alice))
        .await;
    assert_eq!(ids(&body["list"]), expected[..5]);
}
on_both!(recommendations_stop_at_twenty);

// ---------------------------------------------------------------------------------------------
// #15, #16 edit info

async fn edit_info_round_trips_and_accepts_nulls(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user_named("alice01", "Alice").await;
    let (status, body) = app.get("/api/user/get/edit/info", Some(&alice)).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"code": "SC", "user": {
            "name": "Alice", "sex": "female", "comment": "", "address": "Seoul",
            "addressDetail": "1-1"
        }})
    );

    let (status, body) = app
        .post(
            "/api/user/edit/info",
            Some(&alice),
            json!({"name": "  Alice Kim ", "sex": "male", "comment": "hello 👋",
                   "address": "Busan", "addressDetail": "2-2", "id": "ignored"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"code": "SC"})));
    let (_, body) = app.get("/api/user/get/edit/info", Some(&alice)).await;
    assert_eq!(
        body["user"],
        json!({"name": "Alice Kim", "sex": "male", "comment": "hello 👋",
               "address": "Busan", "addressDetail": "2-2"})
    );
    assert_eq!(me(&app, &alice).await["name"], "Alice Kim");

    // Nulls and absent fields are stored as null; sending the same values twice is fine.
    for _ in 0..2 {
        let (status, _) = app
            .post(
                "/api/user/edit/info",
                Some(&alice),
                json!({"name": "Alice", "sex": null, "comment": null}),
            )
            .await;
        assert_eq!(status, 200);
    }
    let (_, body) = app.get("/api/user/get/edit/info", Some(&alice)).await;
    assert_eq!(
        body["user"],
        json!({"name": "Alice", "sex": null, "comment": null, "address": null,
               "addressDetail": null})
    );
    assert_eq!(me(&app, &alice).await["comment"], Value::Null);

    // A Google account (stored nulls) can read and edit (the original crashed, §7 item 26).
    let social = quick_user(&app, "google1", "G User").await;
    let (status, body) = app.get("/api/user/get/edit/info", Some(&social)).await;
    assert_eq!(status, 200);
    assert_eq!(body["user"]["comment"], Value::Null);
    let (status, _) = app
        .post(
            "/api/user/edit/info",
            Some(&social),
            json!({"name": "G", "sex": "female", "comment": "hi", "address": "Seoul",
                   "addressDetail": null}),
        )
        .await;
    assert_eq!(status, 200);

    // Name required and non-blank; length limits.
    let br = (400, json!({"code": "BR"}));
    for bad in [
        json!({"sex": "male"}),
        json!({"name": null}),
        json!({"name": ""}),
        json!({"name": "   "}),
        json!({"name": "x".repeat(101)}),
        json!({"name": "ok", "sex": "x".repeat(51)}),
        json!({"name": "ok", "address": "x".repeat(101)}),
        json!({"name": "ok", "addressDetail": "x".repeat(101)}),
        json!({"name": "ok", "comment": "x".repeat(2201)}),
        json!({"name": 5}),
    ] {
        assert_eq!(
            app.post("/api/user/edit/info", Some(&alice), bad.clone())
                .await,
            br,
            "{bad}"
        );
    }
    // Exactly at the limits (characters, not bytes).
    let (status, _) = app
        .post(
            "/api/user/edit/info",
            Some(&alice),
            json!({"name": "가".repeat(100), "comment": "나".repeat(2200),
                   "address": "다".repeat(100), "addressDetail": "라".repeat(100),
                   "sex": "마".repeat(50)}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(me(&app, &alice).await["name"], "가".repeat(100));
    assert_eq!(
        app.post_raw(
            "/api/user/edit/info",
            Some(&alice),
            "application/json",
            b"null".to_vec()
        )
        .await,
        br
    );

    // Unknown user: BR; no token: 401.
    let ghost = app.token("ghost99");
    assert_eq!(
        app.post("/api/user/edit/info", Some(&ghost), json!({"name": "x"}))
            .await,
        br
    );
    assert_eq!(
        app.get("/api/user/get/edit/info", Some(&ghost)).await.0,
        400
    );
    assert_eq!(app.get("/api/user/get/edit/info", None).await.0, 401);
    assert_eq!(
        app.post("/api/user/edit/info", None, json!({"name": "x"}))
            .await
            .0,
        401
    );
}
on_both!(edit_info_round_trips_and_accepts_nulls);

// ---------------------------------------------------------------------------------------------
// #17 edit password

async fn stored_hash(app: &TestApp, id: &str) -> Option<String> {
    app.ctx
        .store
        .user_by_id(id)
        .await
        .unwrap()
        .unwrap()
        .password
}

async fn edit_password_checks_the_old_one(db: Db) {
    let app = TestApp::start(db).await;
    let alice = app.user("alice01").await; // password `password1!`
    let path = "/api/user/edit/password";

    // Wrong old password: 200 NEP, nothing changes.
    let before = stored_hash(&app, "alice01").await;
    let (status, body) = app
        .post(
            path,
            Some(&alice),
            json!({"oldPassword": "wrong-one", "newPassword": "brand-new-pw"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"code": "NEP"})));
    assert_eq!(stored_hash(&app, "alice01").await, before);

    // A wrong old password is NEP whatever the new one is (the frontend shows NEP, not BR).
    let (status, body) = app
        .post(
            path,
            Some(&alice),
            json!({"oldPassword": "wrong-one", "newPassword": ""}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"code": "NEP"})));

    // New password empty or too long: BR.
    let br = (400, json!({"code": "BR"}));
    for new in [String::new(), "x".repeat(257)] {
        assert_eq!(
            app.post(
                path,
                Some(&alice),
                json!({"oldPassword": "password1!", "newPassword": new})
            )
            .await,
            br
        );
    }
    // Missing fields, nulls, bad JSON: BR.
    for bad in [
        json!({"oldPassword": "password1!"}),
        json!({"newPassword": "brand-new-pw"}),
        json!({"oldPassword": null, "newPassword": "brand-new-pw"}),
    ] {
        assert_eq!(app.post(path, Some(&alice), bad).await, br);
    }

    // Success, even with a short password (the original's rule): argon2id hash of the new one.
    // Each change revokes the earlier tokens and answers with a new one.
    let (status, body) = app
        .post(
            path,
            Some(&alice),
            json!({"oldPassword": "password1!", "newPassword": "short"}),
        )
        .await;
    assert_eq!((status, &body["code"]), (200, &json!("SC")));
    let alice = body["token"].as_str().unwrap().to_owned();
    let (status, body) = app
        .post(
            path,
            Some(&alice),
            json!({"oldPassword": "short", "newPassword": "brand-new-pw"}),
        )
        .await;
    assert_eq!((status, &body["code"]), (200, &json!("SC")));
    let alice = body["token"].as_str().unwrap().to_owned();
    let hash = stored_hash(&app, "alice01").await.unwrap();
    assert!(hash.starts_with("$argon2id$"));
    assert!(
        social::password::verify("brand-new-pw".into(), hash.clone())
            .await
            .unwrap()
    );
    assert!(
        !social::password::verify("password1!".into(), hash)
            .await
            .unwrap()
    );
    // The old password no longer works.
    let (_, body) = app
        .post(
            path,
            Some(&alice),
            json!({"oldPassword": "password1!", "newPassword": "another-pw-1"}),
        )
        .await;
    assert_eq!(body["code"], "NEP");

    // A Google account has no password: always NEP.
    let social = quick_user(&app, "google1", "G").await;
    let (status, body) = app
        .post(
            path,
            Some(&social),
            json!({"oldPassword": "", "newPassword": "brand-new-pw"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"code": "NEP"})));
    assert_eq!(stored_hash(&app, "google1").await, None);

    // Unknown user: BR; no token: 401.
    let ghost = app.token("ghost99");
    assert_eq!(
        app.post(
            path,
            Some(&ghost),
            json!({"oldPassword": "password1!", "newPassword": "brand-new-pw"})
        )
        .await,
        br
    );
    assert_eq!(
        app.post(
            path,
            None,
            json!({"oldPassword": "a", "newPassword": "brand-new-pw"})
        )
        .await
        .0,
        401
    );
}
on_both!(edit_password_checks_the_old_one);

/// Item 5 of the abuse work: a password change and signing out everywhere revoke every earlier
/// token, on this process and at once on another one (which had the old version cached), while
/// the new token works; a token from before versions (no `ver`) works until the first revocation.
async fn password_change_and_sign_out_everywhere_revoke_tokens(db: Db) {
    let app = TestApp::start(db).await;
    let other = app.second().await;
    app.user("alice01").await; // password `password1!`
    let (status, body) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "alice01", "password": "password1!"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let signed_in = body["token"].as_str().unwrap().to_owned();
    // A token without a `ver` claim (signed before versions existed) counts as version 0.
    let legacy = legacy_token(&app, "alice01");
    for token in [&signed_in, &legacy] {
        assert_eq!(app.get("/api/user/me", Some(token)).await.0, 200);
        // The other process now keeps version 0 for alice01.
        assert_eq!(other.get("/api/user/me", Some(token)).await.0, 200);
    }

    let (status, body) = app
        .post(
            "/api/user/edit/password",
            Some(&signed_in),
            json!({"oldPassword": "password1!", "newPassword": "brand-new-pw"}),
        )
        .await;
    assert_eq!((status, &body["code"]), (200, &json!("SC")));
    let fresh = body["token"].as_str().unwrap().to_owned();
    let av = (401, json!({"code": "AV"}));
    for token in [&signed_in, &legacy] {
        assert_eq!(app.get("/api/user/me", Some(token)).await, av);
    }
    // The other process heard it through the bus: refused well within its check TTL.
    let started = std::time::Instant::now();
    common::wait_until("the other process refuses the old token", || async {
        other.get("/api/user/me", Some(&signed_in)).await.0 == 401
    })
    .await;
    assert!(
        started.elapsed() < social::revocation::CHECK_TTL / 2,
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(other.get("/api/user/me", Some(&legacy)).await, av);
    // The new token works on both; a sign-in gives a token of the new version.
    assert_eq!(app.get("/api/user/me", Some(&fresh)).await.0, 200);
    assert_eq!(other.get("/api/user/me", Some(&fresh)).await.0, 200);
    let (_, body) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "alice01", "password": "brand-new-pw"}),
        )
        .await;
    let second = body["token"].as_str().unwrap().to_owned();
    assert_eq!(other.get("/api/user/me", Some(&second)).await.0, 200);

    // Signing out everywhere, on the other process, revokes both new tokens everywhere.
    let (status, body) = other
        .post("/api/auth/signOutEverywhere", Some(&second), json!({}))
        .await;
    assert_eq!((status, body), (200, json!({"code": "SC"})));
    for token in [&fresh, &second] {
        assert_eq!(other.get("/api/user/me", Some(token)).await, av);
    }
    let started = std::time::Instant::now();
    common::wait_until("the first process refuses the revoked tokens", || async {
        app.get("/api/user/me", Some(&fresh)).await.0 == 401
    })
    .await;
    assert!(started.elapsed() < social::revocation::CHECK_TTL / 2);
    assert_eq!(app.get("/api/user/me", Some(&second)).await, av);
    // Signing out everywhere needs a valid token; the next sign-in works.
    assert_eq!(
        app.post("/api/auth/signOutEverywhere", Some(&second), json!({}))
            .await,
        av
    );
    let (_, body) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "alice01", "password": "brand-new-pw"}),
        )
        .await;
    let third = body["token"].as_str().unwrap();
    assert_eq!(app.get("/api/user/me", Some(third)).await.0, 200);
    assert_eq!(other.get("/api/user/me", Some(third)).await.0, 200);
    // Another user's tokens are untouched.
    let bob = quick_user(&app, "bob0001", "Bob").await;
    assert_eq!(other.get("/api/user/me", Some(&bob)).await.0, 200);
    let metrics = app.ctx.metrics_text();
    assert!(
        metrics.contains("instar_token_revocations_total 1"),
        "{metrics}"
    );
}
on_both!(password_change_and_sign_out_everywhere_revoke_tokens);

/// A token as signed before token versions: no `ver` claim.
fn legacy_token(app: &TestApp, user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"sub": user, "role": "USER", "iat": now, "exp": now + 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(app.ctx.tokens.algorithm()),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
    )
    .unwrap()
}

async fn edit_password_attempts_are_limited(db: Db) {
    let app = TestApp::start_with(db, |cfg| cfg.limits.sign_in_failures = 2).await;
    let social = quick_user(&app, "google1", "G").await;
    let body = json!({"oldPassword": "guess", "newPassword": "brand-new-pw"});
    for _ in 0..2 {
        let (status, _) = app
            .post("/api/user/edit/password", Some(&social), body.clone())
            .await;
        assert_eq!(status, 200);
    }
    let (status, body) = app
        .post("/api/user/edit/password", Some(&social), body)
        .await;
    assert_eq!((status, body), (429, json!({"code": "TMR"})));
}
on_both!(edit_password_attempts_are_limited);

// ---------------------------------------------------------------------------------------------
// #18 profile image upload

fn file_form(bytes: Vec<u8>, name: &str, mime: &str) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name(name.to_owned())
        .mime_str(mime)
        .unwrap();
    reqwest::multipart::Form::new().part("file", part)
}

/// Stored profile objects (the local backend keeps a `.meta` file beside each; not counted).
fn profile_files(app: &TestApp) -> Vec<PathBuf> {
    files_under(&app.dir.join("media").join("profile"))
        .into_iter()
        .filter(|p| p.extension().is_none_or(|e| e != "meta"))
        .collect()
}

/// Deletions of replaced images run after the response; wait for the directory to settle.
async fn settle_files(app: &TestApp, expected: usize) -> Vec<PathBuf> {
    for _ in 0..50 {
        let f = profile_files(app);
        if f.len() == expected {
            return f;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    profile_files(app)
}

/// POSTs a multipart form with one `file` part using `Transfer-Encoding: chunked` (no
/// `Content-Length`), written by hand; returns the response status.
async fn post_chunked_multipart(app: &TestApp, path: &str, token: &str, file: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let boundary = "XyZboundary42";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(256 * 1024) {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(chunk);
        frame.extend_from_slice(b"\r\n");
        // The server may answer and close before reading everything.
        if sock.write_all(&frame).await.is_err() {
            break;
        }
    }
    let _ = sock.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = sock.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1).unwrap_or("0");
    status.parse().unwrap()
}

/// The status of GET `url` (absolute, as the API answers them).
async fn fetch_status(app: &TestApp, url: &str) -> u16 {
    app.client.get(url).send().await.unwrap().status().as_u16()
}

async fn profile_upload_replaces_the_image(db: Db) {
    let app = TestApp::start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let path = "/api/file/upload/profile";

    let (status, body) = app
        .post_multipart(
            path,
            Some(&alice),
            file_form(png_bytes(64, 48), "me.png", "image/png"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(keys(&body), sorted(&["code", "url"]));
    assert_eq!(body["code"], "SC");
    let first = body["url"].as_str().unwrap().to_owned();
    assert!(first.starts_with(&app.url("/media/profile/")), "{first}");
    assert_eq!(me(&app, &alice).await["profileImage"], first);
    assert_eq!(fetch_status(&app, &first).await, 200);
    assert_eq!(settle_files(&app, 2).await.len(), 2); // image + thumbnail

    // A JPEG (declared with a misleading type) replaces it; the old objects go.
    let (status, body) = app
        .post_multipart(
            path,
            Some(&alice),
            file_form(jpeg_bytes(40, 40), "x.txt", "text/plain"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let second = body["url"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    assert_eq!(me(&app, &alice).await["profileImage"], second);
    let files = settle_files(&app, 2).await;
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| {
        f.to_string_lossy()
            .contains(second.rsplit('/').next().unwrap())
    }));
    assert_eq!(fetch_status(&app, &first).await, 404);
    assert_eq!(fetch_status(&app, &second).await, 200);
    // Shown to others and in the follow push.
    let bob = quick_user(&app, "bob123", "Bob").await;
    let (_, body) = app
        .get("/api/user/details/info?searchId=alice01", Some(&bob))
        .await;
    assert_eq!(body["user"]["profileImage"], second);

    // A foreign URL (not ours) is left alone when replaced.
    sqlx::query("UPDATE user SET profile_image = ?, profile_thumbnail = NULL WHERE id = ?")
        .bind("https://minjoon-bucket-1.s3.us-east-2.amazonaws.com/profile/legacy")
        .bind("alice01")
        .execute(app.ctx.store.pool())
        .await
        .unwrap();
    let (status, _) = app
        .post_multipart(
            path,
            Some(&alice),
            file_form(png_bytes(8, 8), "a.png", "image/png"),
        )
        .await;
    assert_eq!(status, 200);
    // The previous upload is no longer referenced, but was not "the old image" either: it stays.
    assert_eq!(settle_files(&app, 4).await.len(), 4);
}
on_both!(profile_upload_replaces_the_image);

async fn profile_upload_refuses_bad_files(db: Db) {
    let app = TestApp::start(db).await;
    let alice = quick_user(&app, "alice01", "Alice").await;
    let path = "/api/file/upload/profile";
    let (status, body) = app
        .post_multipart(
            path,
            Some(&alice),
            file_form(png_bytes(16, 16), "me.png", "image/png"),
        )
        .await;
    assert_eq!(status, 200);
    let url = body["url"].as_str().unwrap().to_owned();
    let br = json!({"code": "BR"});

    // Not an image (HTML claiming to be a PNG), a PDF, garbage after PNG magic.
    let mut broken = png_bytes(16, 16);
    broken.truncate(20);
    for (bytes, mime) in [
        (
            b"<html><script>alert(1)</script></html>".to_vec(),
            "image/png",
        ),
        (b"%PDF-1.4\n%...".to_vec(), "application/pdf"),
        (broken, "image/png"),
        (Vec::new(), "image/png"),
    ] {
        let (status, body) = app
            .post_multipart(path, Some(&alice), file_form(bytes, "f.png", mime))
            .await;
        assert_eq!((status, body), (400, br.clone()), "{mime}");
    }
    // Over 10 MiB: refused from Content-Length, and when streamed without one.
    let big = vec![0x89u8; 10 * 1024 * 1024 + 1];
    let (status, body) = app
        .post_multipart(
            path,
            Some(&alice),
            file_form(big.clone(), "big.png", "image/png"),
        )
        .await;
    assert_eq!((status, body["code"].clone()), (413, json!("BR")));
    let status = post_chunked_multipart(&app, path, &alice, &big).await;
    assert_eq!(status, 413);

    // No `file` part; not multipart at all.
    let form = reqwest::multipart::Form::new().text("other", "x");
    assert_eq!(
        app.post_multipart(path, Some(&alice), form).await,
        (400, br.clone())
    );
    let (status, body) = app.post(path, Some(&alice), json!({"file": "x"})).await;
    assert_eq!((status, body), (400, br.clone()));

    // Other parts before `file` are skipped.
    let form = reqwest::multipart::Form::new().text("note", "hello").part(
        "file",
        reqwest::multipart::Part::bytes(png_bytes(4, 4)).file_name("p.png"),
    );
    let (status, body) = app.post_multipart(path, Some(&alice), form).await;
    assert_eq!(status, 200, "{body}");
    let newest = body["url"].as_str().unwrap().to_owned();
    assert_eq!(me(&app, &alice).await["profileImage"], newest);
    assert_eq!(fetch_status(&app, &url).await, 404);

    // No token: 401, nothing stored. Unknown user: BR and the upload is removed.
    let (status, _) = app
        .post_multipart(path, None, file_form(png_bytes(4, 4), "p.png", "image/png"))
        .await;
    assert_eq!(status, 401);
    let ghost = app.token("ghost99");
    let (status, body) = app
        .post_multipart(
            path,
            Some(&ghost),
            file_form(png_bytes(4, 4), "p.png", "image/png"),
        )
        .await;
    assert_eq!((status, body), (400, br));
    let files = settle_files(&app, 2).await;
    assert_eq!(files.len(), 2, "{files:?}");
}
on_both!(profile_upload_refuses_bad_files);
