//! Google sign-in over HTTP against a fake OpenID provider on loopback (its keys generated at
//! start): the whole flow as the unmodified frontend drives it (login-url → start → provider →
//! callback → the frontend page's ticket call → oauth-signUp), on SQLite and MariaDB, and every
//! attack refused: missing, foreign, wrong or reused `state`; replayed or injected codes; replayed
//! tickets; ID tokens with a wrong `aud`, `iss`, signature, nonce, or expired; unverified e-mail;
//! replayed, expired or guessed (Google `sub`) pending handles; a handle used to take an existing
//! id. Two services sharing Redis complete a sign-up begun on the other.

#![allow(clippy::unwrap_used)]

mod common;
mod fake_oidc;

use std::time::Duration;

use common::{Db, TestApp};
use fake_oidc::{
    FRONT, FakeOidc, FakeUser, Key, Tamper, arrive, begin, browser, location, query, redeem,
    refused_with, sign_in, sign_up, with_param,
};
use serde_json::json;
use social::accounts::google::GoogleConfig;
use social::app::SocialConfig;

fn google_config(oidc: &FakeOidc, port: u16) -> GoogleConfig {
    let mut g = GoogleConfig::new(
        fake_oidc::CLIENT_ID.to_owned(),
        fake_oidc::CLIENT_SECRET.to_owned(),
        format!("http://127.0.0.1:{port}/api/auth/google/callback"),
    );
    g.issuer = oidc.issuer.clone();
    g.jwks_refetch_interval = Duration::ZERO;
    g
}

/// Starts the app with Google pointed at `oidc` (the app's callback registered there; the
/// listener is bound first because the redirect URI names its port).
async fn app_with(db: Db, oidc: &FakeOidc, tweak: impl FnOnce(&mut SocialConfig)) -> TestApp {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let g = google_config(oidc, port);
    oidc.register_redirect(&g.redirect_uri);
    let app = TestApp::start_on(db, Some(listener), |cfg| {
        cfg.google = Some(g);
        // As `instar serve` and `instar social` by default: a proxy on this machine is trusted,
        // so the tests can speak as clients behind it through X-Forwarded-For.
        cfg.public_url.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
        tweak(cfg);
    })
    .await;
    assert!(app.base.ends_with(&format!(":{port}")));
    app
}

fn alice() -> FakeUser {
    FakeUser::new("109876543210987654321", "alice@gmail.example", "Alice Kim")
}

/// A new Google user: NEW_SIGN with a random handle (not the `sub`), oauth-signUp → SC + a token
/// that works on REST; the account is SOCIAL with the address detail the frontend sends and
/// `last_login_at` set; the next sign-in answers SC and moves `last_login_at`.
async fn new_user_signs_up_then_signs_in(db: Db) {
    let oidc = FakeOidc::start().await;
    let app = app_with(db, &oidc, |_| {}).await;
    let user = alice();
    let (status, body) = sign_in(&app.base, &oidc, &user).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], "NEW_SIGN");
    let handle = body["token"].as_str().unwrap().to_owned();
    assert_ne!(handle, user.sub, "the handle is never Google's sub");
    assert_eq!(handle.len(), 43);

    let (status, body) = sign_up(&app.base, &handle, "alice_g1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], "SC");
    let token = body["token"].as_str().unwrap().to_owned();
    let (status, me) = app.get("/api/user/me", Some(&token)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["id"], "alice_g1");
    assert_eq!(me["user"]["name"], "Alice Kim");
    assert_eq!(me["user"]["type"], "SOCIAL");
    let row = app.ctx.store.user_by_id("alice_g1").await.unwrap().unwrap();
    assert_eq!(row.kind, "SOCIAL");
    assert_eq!(row.social_id.as_deref(), Some(user.sub.as_str()));
    assert_eq!(row.email, "alice@gmail.example");
    assert_eq!(row.password, None);
    assert_eq!(row.address_detail.as_deref(), Some("Gangnam 1"));
    let first_login = row.last_login_at.expect("last_login_at set at sign-up");

    // A Google account has no password: the local sign-in refuses it.
    let (status, _) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "alice_g1", "password": ""}),
        )
        .await;
    assert_ne!(status, 200);

    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, body) = sign_in(&app.base, &oidc, &user).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["code"], "SC");
    let token = body["token"].as_str().unwrap();
    let claims = app.ctx.tokens.verify(token).unwrap();
    assert_eq!(claims.sub, "alice_g1");
    let (status, _) = app.get("/api/alarm/getList", Some(token)).await;
    assert_eq!(status, 200);
    let row = app.ctx.store.user_by_id("alice_g1").await.unwrap().unwrap();
    assert!(row.last_login_at.unwrap() > first_login, "moved at sign-in");

    let metrics = app.ctx.metrics_text();
    assert!(
        metrics.contains("instar_google_sign_ins_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("instar_google_sign_ups_total 1"),
        "{metrics}"
    );
}
on_both!(new_user_signs_up_then_signs_in);

/// The name comes from userinfo when the ID token has none; ES256 keys work too.
async fn name_from_userinfo_and_es256(db: Db) {
    let oidc = FakeOidc::start_with_key(Key::ec("ec-1")).await;
    let app = app_with(db, &oidc, |_| {}).await;
    let mut user = FakeUser::new("2001", "bob@gmail.example", "unused");
    user.name = None;
    let (_, body) = sign_in(&app.base, &oidc, &user).await;
    assert_eq!(body["code"], "NEW_SIGN", "{body}");
    let (_, body) = sign_up(&app.base, body["token"].as_str().unwrap(), "bob_g01").await;
    assert_eq!(body["code"], "SC", "{body}");
    let row = app.ctx.store.user_by_id("bob_g01").await.unwrap().unwrap();
    assert_eq!(row.name, "Name From Userinfo");
}
on_both!(name_from_userinfo_and_es256);

/// `state`: required, this browser's, single use. The original had none (login CSRF).
async fn state_is_required_bound_and_single_use(db: Db) {
    let oidc = FakeOidc::start().await;
    let app = app_with(db, &oidc, |_| {}).await;
    let user = alice();

    // Missing state: the provider's code alone is not a ticket.
    let s = begin(&app.base, &oidc, &user).await;
    let (status, body) = redeem(&app.base, &s.code()).await;
    assert_eq!((status, body), (400, json!({"code": "BR", "token": null})));
    let no_state = with_param(&s.callback, "state", None);
    let (status, body) = app.get(no_state.trim_start_matches(&app.base), None).await;
    assert_eq!((status, &body["code"]), (400, &json!("BR")));

    // A state we never issued.
    let forged = with_param(&s.callback, "state", Some(&"A".repeat(43)));
    assert_eq!(
        query(&arrive(&forged, Some(&s.cookie)).await, "error").as_deref(),
        Some("state")
    );
    // The right state without the browser's cookie (an attacker's link opened by a victim)…
    let s = begin(&app.base, &oidc, &user).await;
    assert_eq!(
        query(&arrive(&s.callback, None).await, "error").as_deref(),
        Some("state")
    );
    // …or with another browser's cookie.
    let attacker = begin(&app.base, &oidc, &user).await;
    let victim = begin(&app.base, &oidc, &user).await;
    assert_eq!(
        query(
            &arrive(&attacker.callback, Some(&victim.cookie)).await,
            "error"
        )
        .as_deref(),
        Some("state")
    );
    // The victim's own flow still works, once; the same redirect replayed is refused.
    let front = arrive(&victim.callback, Some(&victim.cookie)).await;
    assert!(query(&front, "code").is_some(), "{front}");
    assert_eq!(
        query(
            &arrive(&victim.callback, Some(&victim.cookie)).await,
            "error"
        )
        .as_deref(),
        Some("state")
    );
    // A provider error spends the state too.
    let s = begin(&app.base, &oidc, &user).await;
    let denied = format!(
        "{}?error=access_denied&state={}",
        app.url("/api/auth/google/callback"),
        s.state()
    );
    assert_eq!(
        query(&arrive(&denied, Some(&s.cookie)).await, "error").as_deref(),
        Some("denied")
    );
    assert_eq!(
        query(&arrive(&s.callback, Some(&s.cookie)).await, "error").as_deref(),
        Some("state")
    );
    let metrics = app.ctx.metrics_text();
    assert!(
        metrics.contains("instar_google_failures_total{reason=\"state\"} 5"),
        "{metrics}"
    );
}
on_both!(state_is_required_bound_and_single_use);

/// A state expires (short TTL here).
async fn state_expires(db: Db) {
    let oidc = FakeOidc::start().await;
    let app = app_with(db, &oidc, |cfg| {
        cfg.google.as_mut().unwrap().state_ttl = Duration::from_secs(1);
    })
    .await;
    let s = begin(&app.base, &oidc, &alice()).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        query(&arrive(&s.callback, Some(&s.cookie)).await, "error").as_deref(),
        Some("state")
    );
}
on_both!(state_expires);

/// Codes and tickets: a code replayed under a fresh state is refused by the provider (and a code
/// injected into another browser's flow fails PKCE); a ticket works once, and only from the
/// address that completed the callback.
async fn codes_and_tickets_are_single_use(db: Db) {
    let oidc = FakeOidc::start().await;
    let app = app_with(db, &oidc, |_| {}).await;
    let user = alice();
    let first = begin(&app.base, &oidc, &user).await;
    let front = arrive(&first.callback, Some(&first.cookie)).await;
    let ticket = query(&front, "code").unwrap();

    // The same code again, with a new state of this browser.
    let again = begin(&app.base, &oidc, &user).await;
    let replay = with_param(&again.callback, "code", Some(&first.code()));
    assert_eq!(
        query(&arrive(&replay, Some(&again.cookie)).await, "error").as_deref(),
        Some("exchange")
    );
    // A fresh, unused code obtained in another flow (code injection): PKCE refuses it.
    let stolen = begin(&app.base, &oidc, &user).await;
    let victim = begin(&app.base, &oidc, &user).await;
    let injected = with_param(&victim.callback, "code", Some(&stolen.code()));
    assert_eq!(
        query(&arrive(&injected, Some(&victim.cookie)).await, "error").as_deref(),
        Some("exchange")
    );

    let (status, body) = redeem(&app.base, &ticket).await;
    assert_eq!((status, &body["code"]), (200, &json!("NEW_SIGN")));
    let (status, body) = redeem(&app.base, &ticket).await;
    assert_eq!((status, body), (400, json!({"code": "BR", "token": null})));

    // A ticket completed in one browser and slipped into another's link (login CSRF through the
    // frontend page): refused from another client address (here through the local proxy's
    // X-Forwarded-For), and spent.
    let s = begin(&app.base, &oidc, &user).await;
    let ticket = query(&arrive(&s.callback, Some(&s.cookie)).await, "code").unwrap();
    let res = browser()
        .get(app.url(&format!("/api/auth/google/callback?code={ticket}")))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let (status, _) = redeem(&app.base, &ticket).await;
    assert_eq!(status, 400);
    // An attacker forging the victim's address as the first X-Forwarded-For hop of the callback
    // (the proxy appends the real one last) gains nothing.
    let s = begin(&app.base, &oidc, &user).await;
    let res = browser()
        .get(&s.callback)
        .header("cookie", &s.cookie)
        .header("x-forwarded-for", "198.51.100.7, 203.0.113.50")
        .send()
        .await
        .unwrap();
    let ticket = query(&location(&res), "code").unwrap();
    let res = browser()
        .get(app.url(&format!("/api/auth/google/callback?code={ticket}")))
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
}
on_both!(codes_and_tickets_are_single_use);

/// ID tokens with a wrong audience, issuer, signature, algorithm or nonce, or expired, are
/// refused; so is an e-mail Google has not verified.
async fn bad_id_tokens_are_refused(db: Db) {
    let oidc = FakeOidc::start().await;
    let app = app_with(db, &oidc, |_| {}).await;
    let user = alice();
    let cases = [
        (
            "aud",
            Tamper {
                aud: Some("another-client.apps.example".into()),
                ..Tamper::default()
            },
            "id_token",
        ),
        (
            "iss",
            Tamper {
                iss: Some("https://evil.example".into()),
                ..Tamper::default()
            },
            "id_token",
        ),
        (
            "signature",
            Tamper {
                foreign_key: true,
                ..Tamper::default()
            },
            "id_token",
        ),
        (
            "alg none",
            Tamper {
                unsigned: true,
                ..Tamper::default()
            },
            "id_token",
        ),
        (
            "expired",
            Tamper {
                exp_offset: Some(-3600 - 300),
                ..Tamper::default()
            },
            "id_token",
        ),
        (
            "nonce",
            Tamper {
                nonce: Some("another-sign-in-nonce".into()),
                ..Tamper::default()
            },
            "nonce",
        ),
    ];
    for (what, tamper, reason) in cases {
        assert_eq!(
            refused_with(&app.base, &oidc, &user, tamper).await,
            reason,
            "{what}"
        );
    }
    let mut unverified = alice();
    unverified.email_verified = false;
    assert_eq!(
        refused_with(&app.base, &oidc, &unverified, Tamper::default()).await,
        "email_unverified"
    );
    // Nothing was created, and a clean sign-in still works.
    assert!(
        app.ctx
            .store
            .user_by_social_id(&user.sub)
            .await
            .unwrap()
            .is_none()
    );
    let (_, body) = sign_in(&app.base, &oidc, &user).await;
    assert_eq!(body["code"], "NEW_SIGN");
}
on_both!(bad_id_tokens_are_refused);

/// The provider rotates its keys: the unknown `kid` makes us fetch the JWKS again.
async fn rotated_keys_are_fetched(db: Db) {
    let oidc = FakeOidc::start_with_key(Key::ec("ec-old")).await;
    let app = app_with(db, &oidc, |_| {}).await;
    let (_, body) = sign_in(&app.base, &oidc, &alice()).await;
    assert_eq!(body["code"], "NEW_SIGN");
    let (_, body) = sign_in(&app.base, &oidc, &alice()).await;
    assert_eq!(body["code"], "NEW_SIGN");
    assert_eq!(oidc.jwks_fetches(), 1, "the JWKS is cached");
    oidc.rotate(Key::ec("ec-new"));
    let (_, body) = sign_in(&app.base, &oidc, &alice()).await;
    assert_eq!(body["code"], "NEW_SIGN", "{body}");
    assert_eq!(oidc.jwks_fetches(), 2);
}
on_both!(rotated_keys_are_fetched);

/// Every size and wait the provider controls is bounded: a token response over 64 KiB, a JWKS of
/// more than 20 keys and a token endpoint slower than the timeout all fail the sign-in cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_providers_are_cut_off() {
    let oidc = FakeOidc::start_with_key(Key::ec("ec-1")).await;
    let app = app_with(Db::Sqlite, &oidc, |cfg| {
        cfg.google.as_mut().unwrap().http_timeout = Duration::from_secs(1);
    })
    .await;
    let user = alice();
    let huge = Tamper {
        pad_token_response: 70 * 1024,
        ..Tamper::default()
    };
    assert_eq!(
        refused_with(&app.base, &oidc, &user, huge).await,
        "provider"
    );
    let slow = Tamper {
        stall: Some(Duration::from_secs(3)),
        ..Tamper::default()
    };
    let started = std::time::Instant::now();
    assert_eq!(
        refused_with(&app.base, &oidc, &user, slow).await,
        "provider"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off at the timeout"
    );
    oidc.extra_jwks_keys(25);
    assert_eq!(
        refused_with(&app.base, &oidc, &user, Tamper::default()).await,
        "provider"
    );
    oidc.extra_jwks_keys(0);
    let (_, body) = sign_in(&app.base, &oidc, &user).await;
    assert_eq!(body["code"], "NEW_SIGN", "{body}");
}

/// The pending handle: single use, expires, and Google's `sub` is not one (the original used the
/// raw `sub` as the handle and kept it forever).
async fn pending_handles_are_single_use_and_expire(db: Db) {
    let oidc = FakeOidc::start().await;
    let app = app_with(db, &oidc, |cfg| {
        cfg.google.as_mut().unwrap().pending_ttl = Duration::from_secs(1);
    })
    .await;
    let user = alice();
    let (_, body) = sign_in(&app.base, &oidc, &user).await;
    let handle = body["token"].as_str().unwrap().to_owned();
    // The original's handle: the raw sub.
    let (status, body) = sign_up(&app.base, &user.sub, "alice_g1").await;
    assert_eq!((status, body), (400, json!({"code": "BR", "token": null})));
    let (status, _) = sign_up(&app.base, &handle, "alice_g1").await;
    assert_eq!(status, 200);
    // Replayed (the original let anyone replay it, with any id).
    let (status, body) = sign_up(&app.base, &handle, "alice_g2").await;
    assert_eq!((status, body), (400, json!({"code": "BR", "token": null})));
    assert!(!app.ctx.store.user_exists("alice_g2").await.unwrap());

    let bob = FakeUser::new("3003", "bob@gmail.example", "Bob");
    let (_, body) = sign_in(&app.base, &oidc, &bob).await;
    let handle = body["token"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (status, body) = sign_up(&app.base, &handle, "bob_g001").await;
    assert_eq!((status, body), (400, json!({"code": "BR", "token": null})));
    assert!(!app.ctx.store.user_exists("bob_g001").await.unwrap());
}
on_both!(pending_handles_are_single_use_and_expire);

/// Two sign-ups racing with one handle: exactly one account is made. A second pending sign-up of
/// the same Google account cannot make a second account either.
async fn a_handle_is_taken_once_under_concurrency(db: Db) {
    let oidc = FakeOidc::start().await;
    let app = app_with(db, &oidc, |_| {}).await;
    let user = alice();
    let (_, body) = sign_in(&app.base, &oidc, &user).await;
    let handle = body["token"].as_str().unwrap().to_owned();
    let (_, body) = sign_in(&app.base, &oidc, &user).await;
    let second = body["token"].as_str().unwrap().to_owned();
    let (x, y) = tokio::join!(
        sign_up(&app.base, &handle, "racer_one"),
        sign_up(&app.base, &handle, "racer_two"),
    );
    let mut statuses = [x.0, y.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 400], "{x:?} {y:?}");
    let made = [
        app.ctx.store.user_exists("racer_one").await.unwrap(),
        app.ctx.store.user_exists("racer_two").await.unwrap(),
    ];
    assert_eq!(made.iter().filter(|m| **m).count(), 1);
    let (status, body) = sign_up(&app.base, &second, "racer_three").await;
    assert_eq!((status, body), (400, json!({"code": "BR", "token": null})));
    assert!(!app.ctx.store.user_exists("racer_three").await.unwrap());
}
on_both!(a_handle_is_taken_once_under_concurrency);

/// A handle cannot take an existing id (the original upserted: the account became the attacker's
/// Google account); the handle survives so the user can choose another id. An e-mail of another
/// account is refused.
async fn handle_cannot_take_an_existing_id(db: Db) {
    let oidc = FakeOidc::start().await;
    let app = app_with(db, &oidc, |_| {}).await;
    app.user("victim01").await;
    let (_, body) = sign_in(&app.base, &oidc, &alice()).await;
    let handle = body["token"].as_str().unwrap().to_owned();
    let (status, body) = sign_up(&app.base, &handle, "victim01").await;
    assert_eq!((status, body), (400, json!({"code": "DU", "token": null})));
    let victim = app.ctx.store.user_by_id("victim01").await.unwrap().unwrap();
    assert_eq!(victim.kind, "LOCAL");
    assert_eq!(victim.social_id, None);
    assert_eq!(victim.email, "victim01@example.com");
    let (status, body) = app
        .post(
            "/api/auth/signIn",
            None,
            json!({"id": "victim01", "password": "password1!"}),
        )
        .await;
    assert_eq!((status, &body["code"]), (200, &json!("SC")));
    // Malformed ids are refused before the handle is spent.
    let (status, _) = sign_up(&app.base, &handle, "a b").await;
    assert_eq!(status, 400);
    let (status, body) = sign_up(&app.base, &handle, "alice_new").await;
    assert_eq!((status, &body["code"]), (200, &json!("SC")), "{body}");

    // The Google address is another account's: no pending sign-up at all.
    let taken = FakeUser::new("4004", "victim01@example.com", "Mallory");
    assert_eq!(
        refused_with(&app.base, &oidc, &taken, Tamper::default()).await,
        "email_in_use"
    );
}
on_both!(handle_cannot_take_an_existing_id);

/// Not configured: each route answers a clear 503 (login-url sends the frontend to its own page
/// with an error instead of to `{"code":"NF"}`).
async fn unconfigured_routes_say_so(db: Db) {
    let app = TestApp::start(db).await;
    let res = browser()
        .get(app.url("/api/auth/google/login-url"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.text().await.unwrap(),
        format!("{FRONT}/oauth/google?error=google_not_configured")
    );
    for path in ["/api/auth/google/start", "/api/auth/google/callback?code=x"] {
        let (status, body) = app.get(path, None).await;
        assert_eq!((status, &body["code"]), (503, &json!("GNC")), "{path}");
    }
    let (status, body) = sign_up(&app.base, &"A".repeat(43), "someone1").await;
    assert_eq!((status, &body["code"]), (503, &json!("GNC")));
}
on_both!(unconfigured_routes_say_so);

/// Two services sharing Redis (scale-out): the sign-in starts on one, the provider's redirect
/// lands on the other, the ticket is redeemed on the first and the sign-up completes on the second.
async fn two_services_share_the_flow_through_redis(db: Db) {
    let redis = std::env::var("INSTAR_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let kv = social::kv::KvConfig::Redis {
        url: redis,
        prefix: format!("{}:", common::unique("instar-google-")),
    };
    let oidc = FakeOidc::start().await;
    let kv1 = kv.clone();
    let a = app_with(db, &oidc, move |cfg| cfg.kv = kv1).await;
    let b = a.second().await;
    assert!(format!("{:?}", b.ctx.kv).contains("RedisKv"));
    let user = alice();
    let s = begin(&a.base, &oidc, &user).await;
    let on_b = s.callback.replace(&a.base, &b.base);
    let front = arrive(&on_b, Some(&s.cookie)).await;
    let ticket = query(&front, "code").unwrap_or_else(|| panic!("{front}"));
    let (_, body) = redeem(&a.base, &ticket).await;
    assert_eq!(body["code"], "NEW_SIGN", "{body}");
    let handle = body["token"].as_str().unwrap().to_owned();
    let (status, body) = sign_up(&b.base, &handle, "alice_rd").await;
    assert_eq!((status, &body["code"]), (200, &json!("SC")), "{body}");
    // Spent on both.
    let (status, _) = sign_up(&a.base, &handle, "alice_r2").await;
    assert_eq!(status, 400);
    let (_, body) = sign_in(&b.base, &oidc, &user).await;
    assert_eq!(body["code"], "SC");
    let (status, _) = a
        .get("/api/user/me", Some(body["token"].as_str().unwrap()))
        .await;
    assert_eq!(status, 200);
}
on_both!(two_services_share_the_flow_through_redis);
