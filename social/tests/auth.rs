//! `/api/auth/**`: sign-up with an e-mail code delivered over real SMTP (a local sink), sign-in,
//! id check, rate limits, and the original's account-takeover hole closed.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Db, TestApp};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A minimal SMTP server that accepts every mail and keeps (recipient, body).
#[derive(Clone, Default)]
struct SmtpSink {
    mails: Arc<Mutex<Vec<(String, String)>>>,
}

impl SmtpSink {
    async fn start() -> (SmtpSink, u16) {
        let sink = SmtpSink::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let (r, mut w) = sock.into_split();
                    let mut lines = BufReader::new(r).lines();
                    w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                    let mut rcpt = String::new();
                    while let Ok(Some(line)) = lines.next_line().await {
                        let upper = line.to_ascii_uppercase();
                        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                            w.write_all(b"250-sink\r\n250 8BITMIME\r\n").await.unwrap();
                        } else if upper.starts_with("RCPT TO:") {
                            rcpt = line[8..].trim().trim_matches(['<', '>']).to_owned();
                            w.write_all(b"250 OK\r\n").await.unwrap();
                        } else if upper.starts_with("DATA") {
                            w.write_all(b"354 go\r\n").await.unwrap();
                            let mut body = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                body.push_str(&l);
                                body.push('\n');
                            }
                            s.mails.lock().unwrap().push((rcpt.clone(), body));
                            w.write_all(b"250 queued\r\n").await.unwrap();
                        } else if upper.starts_with("QUIT") {
                            w.write_all(b"221 bye\r\n").await.unwrap();
                            break;
                        } else {
                            w.write_all(b"250 OK\r\n").await.unwrap();
                        }
                    }
                });
            }
        });
        (sink, port)
    }

    /// The 5-digit code of the last mail to `to`.
    fn code_for(&self, to: &str) -> Option<String> {
        let mails = self.mails.lock().unwrap();
        mails
            .iter()
            .rev()
            .find(|(r, _)| r == to)
            .and_then(|(_, body)| {
                body.split(|c: char| !c.is_ascii_digit())
                    .rev()
                    .find(|w| w.len() == 5)
                    .map(str::to_owned)
            })
    }
}

async fn app_with_smtp(db: Db) -> (TestApp, SmtpSink) {
    let (sink, port) = SmtpSink::start().await;
    let app = TestApp::start_with(db, |cfg| {
        cfg.smtp = Some(social::mail::SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            security: "none".into(),
            username: None,
            password: None,
            from: "Instar <no-reply@instar.test>".into(),
        });
    })
    .await;
    (app, sink)
}

async fn request_code(app: &TestApp, sink: &SmtpSink, email: &str) -> String {
    let (status, body) = app
        .get(&format!("/api/auth/send/email?receive_email={email}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, serde_json::Value::Null, "void endpoint: empty body");
    sink.code_for(email).expect("a mail with a code")
}

fn sign_up_body(id: &str, email: &str, code: &str) -> serde_json::Value {
    json!({
        "id": id, "password": "s3cret-pass", "name": "Alice", "sex": "female",
        "email": email, "email_code": code, "address": "Seoul", "addressDetail": "1-2",
        "duplicateCheckId": true, "unknownField": 1
    })
}

async fn sign_up_and_sign_in(db: Db) {
    let (app, sink) = app_with_smtp(db).await;
    let code = request_code(&app, &sink, "alice@example.com").await;
    let (status, body) = app
        .post(
            "/api/auth/signUp",
            None,
            sign_up_body("alice01", "Alice@Example.com", &code),
        )
        .await;
    assert_eq!((status, body), (200, json!({"code": "SC"})));

    // The code is consumed.
    let (status, body) = app
        .post(
            "/api/auth/signUp",
            None,
            sign_up_body("alice02", "other@example.com", &code),
        )
        .await;
    assert_eq!((status, body), (400, json!({"code": "NV"})));

    let (status, body) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "alice01", "password": "s3cret-pass"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["code"], "SC");
    let token = body["token"].as_str().unwrap();
    let claims = app.ctx.tokens.verify(token).unwrap();
    assert_eq!(claims.sub, "alice01");
    assert_eq!(claims.role, "USER");
    assert_eq!(claims.exp - claims.iat, 3600);

    // Stored with argon2id, e-mail lower-cased, last_login_at set.
    let row = app.ctx.store.user_by_id("alice01").await.unwrap().unwrap();
    assert!(row.password.unwrap().starts_with("$argon2id$"));
    assert_eq!(row.email, "alice@example.com");
    assert_eq!(row.comment.as_deref(), Some(""));
    assert_eq!(row.address_detail.as_deref(), Some("1-2"));
    assert!(row.last_login_at.is_some());

    let (status, body) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "nobody99", "password": "x"}),
        )
        .await;
    assert_eq!((status, body), (404, json!({"code": "NEI", "token": null})));
    let (status, body) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "alice01", "password": "wrong-pass"}),
        )
        .await;
    assert_eq!((status, body), (404, json!({"code": "NEP", "token": null})));
}
on_both!(sign_up_and_sign_in);

/// The original trusted the client's `duplicateCheckId` and *updated* the existing row: anyone could
/// take over an account by signing up with its id. Here the id is checked and the insert never
/// updates.
async fn sign_up_cannot_take_over_an_existing_account(db: Db) {
    let (app, sink) = app_with_smtp(db).await;
    app.user("victim01").await;
    let code = request_code(&app, &sink, "attacker@example.com").await;
    let mut body = sign_up_body("victim01", "attacker@example.com", &code);
    body["duplicateCheckId"] = json!(true);
    let (status, res) = app.post("/api/auth/signUp", None, body).await;
    assert_eq!((status, res), (400, json!({"code": "DU"})));
    let (status, res) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "victim01", "password": "password1!"}),
        )
        .await;
    assert_eq!(status, 200, "{res}");
    let row = app.ctx.store.user_by_id("victim01").await.unwrap().unwrap();
    assert_eq!(row.email, "victim01@example.com");
}
on_both!(sign_up_cannot_take_over_an_existing_account);

async fn sign_up_errors(db: Db) {
    let (app, sink) = app_with_smtp(db).await;
    app.user("taken001").await;
    let code = request_code(&app, &sink, "new@example.com").await;
    // Duplicate e-mail (case-insensitively).
    let (s, b) = app
        .post(
            "/api/auth/signUp",
            None,
            sign_up_body("fresh001", "TAKEN001@example.com", &code),
        )
        .await;
    assert_eq!((s, b), (400, json!({"code": "DUE"})));
    // Wrong code.
    let (s, b) = app
        .post(
            "/api/auth/signUp",
            None,
            sign_up_body("fresh001", "new@example.com", "00000"),
        )
        .await;
    assert_eq!((s, b), (400, json!({"code": "NV"})));
    // Missing fields, bad id (DU, see refusals_the_frontend_can_show), empty password, bad JSON.
    let (s, b) = app
        .post("/api/auth/signUp", None, json!({"id": "fresh001"}))
        .await;
    assert_eq!((s, b), (400, json!({"code": "BR"})));
    let (s, b) = app
        .post(
            "/api/auth/signUp",
            None,
            sign_up_body("bad id!", "new@example.com", &code),
        )
        .await;
    assert_eq!((s, b), (400, json!({"code": "DU"})));
    let mut empty = sign_up_body("fresh001", "new@example.com", &code);
    empty["password"] = json!("");
    let (s, b) = app.post("/api/auth/signUp", None, empty).await;
    assert_eq!((s, b), (400, json!({"code": "BR"})));
    let (s, b) = app
        .post_raw(
            "/api/auth/signUp",
            None,
            "application/json",
            b"[1,2".to_vec(),
        )
        .await;
    assert_eq!((s, b), (400, json!({"code": "BR"})));
    // Still usable after all that.
    let (s, b) = app
        .post(
            "/api/auth/signUp",
            None,
            sign_up_body("fresh001", "new@example.com", &code),
        )
        .await;
    assert_eq!((s, b), (200, json!({"code": "SC"})));
}
on_both!(sign_up_errors);

/// The original allowed unlimited guesses of a 5-digit code within its 3 minutes.
async fn email_codes_survive_only_a_few_wrong_guesses(db: Db) {
    let (app, sink) = app_with_smtp(db).await;
    let code = request_code(&app, &sink, "guess@example.com").await;
    let wrong = if code == "11111" { "22222" } else { "11111" };
    for _ in 0..5 {
        let (s, b) = app
            .post(
                "/api/auth/signUp",
                None,
                sign_up_body("guess001", "guess@example.com", wrong),
            )
            .await;
        assert_eq!((s, b), (400, json!({"code": "NV"})));
    }
    let (s, b) = app
        .post(
            "/api/auth/signUp",
            None,
            sign_up_body("guess001", "guess@example.com", &code),
        )
        .await;
    assert_eq!(
        (s, b),
        (400, json!({"code": "NV"})),
        "code discarded after 5 misses"
    );
}
on_both!(email_codes_survive_only_a_few_wrong_guesses);

async fn mail_and_sign_in_are_rate_limited(db: Db) {
    let (app, _sink) = app_with_smtp(db).await;
    for _ in 0..5 {
        let (s, _) = app
            .get("/api/auth/send/email?receive_email=bomb@example.com", None)
            .await;
        assert_eq!(s, 200);
    }
    let (s, b) = app
        .get("/api/auth/send/email?receive_email=bomb@example.com", None)
        .await;
    assert_eq!((s, b), (429, json!({"code": "TMR"})));
    let (s, b) = app
        .get("/api/auth/send/email?receive_email=not-an-email", None)
        .await;
    assert_eq!((s, b), (400, json!({"code": "BR"})));

    app.user("target01").await;
    for _ in 0..10 {
        let (s, _) = app
            .post(
                "/api/auth/signIn",
                None,
                json!({"id": "target01", "password": "guess"}),
            )
            .await;
        assert_eq!(s, 404);
    }
    // Locked out for the window, even with the right password.
    let (s, b) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "target01", "password": "password1!"}),
        )
        .await;
    assert_eq!((s, b), (429, json!({"code": "TMR", "token": null})));
}
on_both!(mail_and_sign_in_are_rate_limited);

async fn check_id(db: Db) {
    let app = TestApp::start(db).await;
    app.user("exists01").await;
    let (s, b) = app
        .post("/api/auth/checkId", None, json!({"id": "exists01"}))
        .await;
    assert_eq!((s, b), (400, json!({"code": "DU"})));
    let (s, b) = app
        .post("/api/auth/checkId", None, json!({"id": "free0001"}))
        .await;
    assert_eq!((s, b), (200, json!({"code": "SC"})));
    // `Application/json` (capital A) is accepted, as the frontend sends it once.
    let (s, b) = app
        .post_raw(
            "/api/auth/checkId",
            None,
            "Application/json;charset=UTF-8",
            br#"{"id":"free0001"}"#.to_vec(),
        )
        .await;
    assert_eq!((s, b), (200, json!({"code": "SC"})));
    let (s, b) = app
        .post_raw(
            "/api/auth/checkId",
            None,
            "text/plain",
            br#"{"id":"x"}"#.to_vec(),
        )
        .await;
    assert_eq!((s, b), (400, json!({"code": "BR"})));
    let _ = Duration::ZERO;
}
on_both!(check_id);

/// Every refusal of the auth routes that the original did not make answers a code the frontend
/// shows (docs/api.md, "Refusals the frontend can show"); before, these were silent `BR`s, and
/// `checkId` called ids available that `signUp` then refused.
async fn refusals_the_frontend_can_show(db: Db) {
    let (app, sink) = app_with_smtp(db).await;
    // checkId never calls an id available that signUp refuses, and signUp answers DU for it.
    let code = request_code(&app, &sink, "kim@example.com").await;
    for bad in [
        "john doe1",
        "ab!cde1",
        "alice01 ",
        "a/bcdefg",
        "short",
        "x?yz123",
    ] {
        let (s, b) = app
            .post("/api/auth/checkId", None, json!({"id": bad}))
            .await;
        assert_eq!((s, b), (400, json!({"code": "DU"})), "checkId {bad:?}");
        let (s, b) = app
            .post(
                "/api/auth/signUp",
                None,
                sign_up_body(bad, "kim@example.com", &code),
            )
            .await;
        assert_eq!((s, b), (400, json!({"code": "DU"})), "signUp {bad:?}");
    }
    // Hangul and e-mail-like ids, which the original took, are available and can be taken; a
    // password of four characters too (the original's rule: the frontend cannot say why not).
    for id in ["김민준1234", "me@naver.com"] {
        let (s, b) = app.post("/api/auth/checkId", None, json!({"id": id})).await;
        assert_eq!((s, b), (200, json!({"code": "SC"})), "checkId {id}");
    }
    let mut body = sign_up_body("김민준1234", "kim@example.com", &code);
    body["password"] = json!("1234");
    let (s, b) = app.post("/api/auth/signUp", None, body).await;
    assert_eq!((s, b), (200, json!({"code": "SC"})));
    let (s, b) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "김민준1234", "password": "1234"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // No code can have been sent to an address that is not one: NV, the frontend's "wrong code".
    let (s, b) = app
        .post(
            "/api/auth/signUp",
            None,
            sign_up_body("fresh0001", "name@gmailcom", "12345"),
        )
        .await;
    assert_eq!((s, b), (400, json!({"code": "NV"})));
    // Over-long sign-in fields: no such account (NEI) or password (NEP), not a silent BR.
    let (s, b) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "x".repeat(401), "password": "p"}),
        )
        .await;
    assert_eq!((s, b), (404, json!({"code": "NEI", "token": null})));
    let (s, b) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "김민준1234", "password": "p".repeat(257)}),
        )
        .await;
    assert_eq!((s, b), (404, json!({"code": "NEP", "token": null})));
}
on_both!(refusals_the_frontend_can_show);

/// POST `signIn` for `id`/`password`, from `client` when given (an `X-Forwarded-For` value).
async fn sign_in_from(
    app: &TestApp,
    id: &str,
    password: &str,
    client: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = app
        .client
        .post(app.url("/api/auth/signIn"))
        .json(&json!({"id": id, "password": password}));
    if let Some(c) = client {
        req = req.header("x-forwarded-for", c);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

/// 100 concurrent wrong passwords for one id from one address hash at most the failure limit's
/// number of times (the attempt is counted before hashing; it was checked and counted after), and
/// that address's failures do not lock the owner out when signing in from another one.
async fn guessing_is_bounded_and_locks_out_only_the_guesser(db: Db) {
    let app = TestApp::start_with(db, |cfg| {
        cfg.public_url.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        cfg.limits.sign_in_per_address = 1_000;
    })
    .await;
    app.user("alice01").await; // password `password1!`
    let limit = app.ctx.limits.sign_in_failures;
    let (hashes_before, _) = social::password::stats();
    let guesses: Vec<_> = (0..100)
        .map(|i| {
            let (client, url) = (app.client.clone(), app.url("/api/auth/signIn"));
            tokio::spawn(async move {
                let res = client
                    .post(url)
                    .header("x-forwarded-for", "198.51.100.66")
                    .json(&json!({"id": "alice01", "password": format!("guess-{i}")}))
                    .send()
                    .await
                    .unwrap();
                res.status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for g in guesses {
        statuses.push(g.await.unwrap());
    }
    let (hashes_after, _) = social::password::stats();
    let hashed = hashes_after - hashes_before;
    assert!(
        hashed <= limit,
        "{hashed} hashes for 100 guesses (limit {limit})"
    );
    assert!(
        statuses.iter().all(|s| [404, 429, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.iter().filter(|s| **s == 429).count() >= 100 - limit as usize);
    // The guesser stays locked out, even with the right password.
    let (s, _) = sign_in_from(&app, "alice01", "password1!", Some("198.51.100.66")).await;
    assert_eq!(s, 429);
    // The owner, elsewhere, is not.
    let (s, body) = sign_in_from(&app, "alice01", "password1!", Some("203.0.113.5")).await;
    assert_eq!(s, 200, "{body}");
    assert!(body["token"].is_string());
}
on_both!(guessing_is_bounded_and_locks_out_only_the_guesser);

/// Without a trusted proxy, `X-Forwarded-For` is the client's own claim and changes nothing: a
/// client rotating it still meets its address's limit. Through a trusted proxy it names the client.
async fn forwarded_for_counts_only_through_trusted_proxies(db: Db) {
    let app = TestApp::start_with(db, |cfg| cfg.limits.sign_in_per_address = 3).await;
    app.user("alice01").await;
    for i in 0..3 {
        let spoofed = format!("192.0.2.{i}");
        let (s, _) = sign_in_from(&app, "nobody99", "x", Some(&spoofed)).await;
        assert_eq!(s, 404);
    }
    let (s, _) = sign_in_from(&app, "alice01", "password1!", Some("192.0.2.77")).await;
    assert_eq!(
        s, 429,
        "a rotated X-Forwarded-For bypassed the address limit"
    );

    let app = TestApp::start_with(db, |cfg| {
        cfg.limits.sign_in_per_address = 3;
        cfg.public_url.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    app.user("alice01").await;
    for _ in 0..3 {
        let (s, _) = sign_in_from(&app, "nobody99", "x", Some("192.0.2.1")).await;
        assert_eq!(s, 404);
    }
    let (s, _) = sign_in_from(&app, "nobody99", "x", Some("192.0.2.1")).await;
    assert_eq!(s, 429);
    // Another client behind the same proxy has its own count; a value it prepends itself (what
    // nginx's $proxy_add_x_forwarded_for keeps on the left) is not its address.
    let (s, body) = sign_in_from(&app, "alice01", "password1!", Some("192.0.2.1, 192.0.2.2")).await;
    assert_eq!(s, 200, "{body}");
}
on_both!(forwarded_for_counts_only_through_trusted_proxies);
