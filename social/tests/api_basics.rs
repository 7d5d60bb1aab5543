//! Envelope, CORS, authentication and framework-error behaviour shared by every route.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Db, TestApp};
use serde_json::json;

async fn protected_routes_need_a_valid_token(db: Db) {
    let app = TestApp::start(db).await;
    let (status, body) = app.get("/api/user/me", None).await;
    assert_eq!((status, body), (401, json!({"code": "AV"})));
    let (status, _) = app.get("/api/user/me", Some("garbage")).await;
    assert_eq!(status, 401);
    // A token signed with another secret.
    let other = social::tokens::Tokens::new(b"another-secret-another-secret-xx", 3600).unwrap();
    let forged = other.issue("alice01", "USER").unwrap();
    let (status, _) = app.get("/api/user/me", Some(&forged)).await;
    assert_eq!(status, 401);
    // Expired.
    let expired = app.ctx.tokens.issue_at("alice01", "USER", 1_000).unwrap();
    let (status, _) = app.get("/api/user/me", Some(&expired)).await;
    assert_eq!(status, 401);
}
on_both!(protected_routes_need_a_valid_token);

async fn unknown_routes_and_bad_input_get_envelope_errors(db: Db) {
    let app = TestApp::start(db).await;
    let (status, body) = app.get("/api/no/such/route", None).await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "NF");
    // Routes are grouped by their first segment: an unknown route under a known one, or a bare
    // known one, is still 404, and a known route with the wrong method still 405.
    for path in [
        "/api/post/nope",
        "/api/post",
        "/api/feed/extra",
        "/api/file/upload/x",
    ] {
        let (status, body) = app.get(path, None).await;
        assert_eq!((status, &body["code"]), (404, &json!("NF")), "{path}");
    }
    let token = app.ctx.tokens.issue("alice01", "USER").unwrap();
    let (status, body) = app.get("/api/post/like", Some(&token)).await;
    assert_eq!((status, body), (405, json!({"code": "BR"})));
    // Bad JSON on a public route: 400 BR (the original answered 401 AV, contract §1.3).
    let (status, body) = app
        .post_raw(
            "/api/auth/checkId",
            None,
            "application/json",
            b"{nope".to_vec(),
        )
        .await;
    assert_eq!((status, body), (400, json!({"code": "BR"})));
    // Oversized JSON is refused before it is buffered.
    let big = vec![b' '; 200 * 1024];
    let (status, body) = app
        .post_raw("/api/auth/checkId", None, "application/json", big)
        .await;
    assert_eq!(status, 413);
    assert_eq!(body["code"], "BR");
}
on_both!(unknown_routes_and_bad_input_get_envelope_errors);

async fn cors_allows_exactly_the_configured_origin(db: Db) {
    let app = TestApp::start(db).await;
    let res = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/user/me"))
        .header("Origin", "http://localhost:3000")
        .header("Access-Control-Request-Method", "GET")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-methods"], "GET");
    assert_eq!(
        h["access-control-allow-headers"],
        "authorization,content-type"
    );

    let res = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/user/me"))
        .header("Origin", "http://evil.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);

    let res = app
        .client
        .get(app.url("/api/user/me"))
        .header("Origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert_eq!(
        res.headers()["access-control-expose-headers"],
        "Authorization"
    );
}
on_both!(cors_allows_exactly_the_configured_origin);
