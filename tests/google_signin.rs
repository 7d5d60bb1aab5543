//! Google sign-in through the `instar` binary against a fake OpenID provider on loopback (keys
//! generated at start), configured only by `INSTAR_GOOGLE_*`: on `instar serve` a new user signs
//! up and the token works on REST and on STOMP CONNECT (the pending handle does not), and a
//! returning user gets `SC`; two `instar social` processes sharing Redis (and MariaDB, RabbitMQ)
//! complete on one a sign-up whose pending entry the other created.

#![allow(clippy::unwrap_used)]

#[path = "../social/tests/fake_oidc/mod.rs"]
mod fake_oidc;
mod flow_support;
mod scaleout_support;

use fake_oidc::{
    CLIENT_ID, CLIENT_SECRET, FRONT, FakeOidc, FakeUser, arrive, begin, query, redeem, sign_in,
    sign_up, with_param,
};
use flow_support::{Proc, SECRET, unique_dir};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// The Google settings of a process whose public callback is on `port`.
fn google_env(oidc: &FakeOidc, port: u16) -> Vec<(&'static str, String)> {
    let redirect = format!("http://127.0.0.1:{port}/api/auth/google/callback");
    oidc.register_redirect(&redirect);
    vec![
        ("INSTAR_CORS_ORIGIN", FRONT.into()),
        ("INSTAR_GOOGLE_CLIENT_ID", CLIENT_ID.into()),
        ("INSTAR_GOOGLE_CLIENT_SECRET", CLIENT_SECRET.into()),
        ("INSTAR_GOOGLE_REDIRECT_URI", redirect),
        ("INSTAR_GOOGLE_ISSUER", oidc.issuer.clone()),
    ]
}

/// A STOMP CONNECT over WebSocket with `token`; the first frame the server answers.
async fn stomp_connect(url: &str, token: &str) -> String {
    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
            .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "v12.stomp".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(format!(
        "CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\nAuthorization:Bearer {token}\n\n\0"
    )))
    .await
    .unwrap();
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket stays open until the answer")
            .unwrap();
        if let Message::Text(t) = msg {
            if t.trim().is_empty() {
                continue;
            }
            return t.to_string();
        }
    }
}

async fn me(api: &str, token: &str) -> serde_json::Value {
    let res = reqwest::Client::new()
        .get(format!("{api}/api/user/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_sign_up_on_instar_serve_then_rest_and_stomp_connect() {
    let oidc = FakeOidc::start().await;
    let port = scaleout_support::free_port();
    let dir = unique_dir("google");
    let mut env = google_env(&oidc, port);
    env.extend([
        ("INSTAR_LISTEN", format!("127.0.0.1:{port}")),
        ("INSTAR_TCP_LISTEN", "off".into()),
        ("INSTAR_JWT_SECRET", SECRET.into()),
        ("INSTAR_DATA_DIR", dir.display().to_string()),
    ]);
    let serve = Proc::spawn("serve", &["serve"], &env).await;
    let api = serve.base();
    let stomp = format!("ws://127.0.0.1:{port}/stomp");
    let user = FakeUser::new("118000000000000000001", "gina@gmail.example", "Gina Park");

    let (status, body) = sign_in(&api, &oidc, &user).await;
    assert_eq!((status, &body["code"]), (200, &json!("NEW_SIGN")), "{body}");
    let handle = body["token"].as_str().unwrap().to_owned();
    // The pending handle is not a session token.
    let refused = stomp_connect(&stomp, &handle).await;
    assert!(refused.starts_with("ERROR"), "{refused}");

    let (status, body) = sign_up(&api, &handle, "gina_g01").await;
    assert_eq!((status, &body["code"]), (200, &json!("SC")), "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let user_me = me(&api, &token).await;
    assert_eq!(user_me["user"]["id"], "gina_g01");
    assert_eq!(user_me["user"]["type"], "SOCIAL");
    let connected = stomp_connect(&stomp, &token).await;
    assert!(connected.starts_with("CONNECTED"), "{connected}");

    // A returning user: SC and a token that works on both.
    let (status, body) = sign_in(&api, &oidc, &user).await;
    assert_eq!((status, &body["code"]), (200, &json!("SC")), "{body}");
    let token = body["token"].as_str().unwrap();
    assert_eq!(me(&api, token).await["user"]["id"], "gina_g01");
    assert!(stomp_connect(&stomp, token).await.starts_with("CONNECTED"));

    let metrics = reqwest::get(format!("{api}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("instar_google_sign_ups_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("instar_google_sign_ins_total 1"),
        "{metrics}"
    );
    drop(serve);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instar_social_processes_share_a_pending_sign_up_through_redis() {
    let Some(amqp) = scaleout_support::service("INSTAR_TEST_AMQP_URL") else {
        return;
    };
    let Some(redis) = scaleout_support::service("INSTAR_TEST_REDIS_URL") else {
        return;
    };
    let Some(mysql) = scaleout_support::service("INSTAR_TEST_MYSQL_URL") else {
        return;
    };
    let prefix = scaleout_support::unique("google");
    let db_url = format!("{}/{prefix}", mysql.trim_end_matches('/'));
    migrations::create_database(&db_url).await.unwrap();
    let media = unique_dir("google-media");
    let oidc = FakeOidc::start().await;
    // Both processes stand behind one public URL: the first one's port here.
    let port = scaleout_support::free_port();
    let env = |listen: String| {
        let mut v = google_env(&oidc, port);
        v.extend([
            ("INSTAR_AMQP_URL", amqp.clone()),
            ("INSTAR_REDIS_URL", redis.clone()),
            ("INSTAR_REDIS_PREFIX", format!("{prefix}:")),
            ("INSTAR_BUS_PREFIX", prefix.clone()),
            ("INSTAR_JWT_SECRET", SECRET.into()),
            ("INSTAR_DATABASE_URL", db_url.clone()),
            ("INSTAR_MEDIA_DIR", media.display().to_string()),
            ("INSTAR_LISTEN", listen),
        ]);
        v
    };
    let a = Proc::spawn("social-a", &["social"], &env(format!("127.0.0.1:{port}"))).await;
    let b = Proc::spawn("social-b", &["social"], &env("127.0.0.1:0".into())).await;
    let user = FakeUser::new("118000000000000000002", "hana@gmail.example", "Hana Lee");

    // Started on A; the balancer sends the provider's redirect and the page's call to B, which
    // creates the pending sign-up; the sign-up completes on A.
    let s = begin(&a.base(), &oidc, &user).await;
    let on_b = s.callback.replace(&a.base(), &b.base());
    let front = arrive(&on_b, Some(&s.cookie)).await;
    let ticket = query(&front, "code").unwrap_or_else(|| panic!("{front}"));
    let (_, body) = redeem(&b.base(), &ticket).await;
    assert_eq!(body["code"], "NEW_SIGN", "{body}");
    let handle = body["token"].as_str().unwrap().to_owned();
    let (status, body) = sign_up(&a.base(), &handle, "hana_g01").await;
    assert_eq!((status, &body["code"]), (200, &json!("SC")), "{body}");
    assert_eq!(
        me(&b.base(), body["token"].as_str().unwrap()).await["user"]["id"],
        "hana_g01"
    );
    // Spent for both.
    let (status, _) = sign_up(&b.base(), &handle, "hana_g02").await;
    assert_eq!(status, 400);
    // A state is single use across processes too: the same redirect replayed on A is refused.
    let replay = with_param(&s.callback, "unused", None);
    assert_eq!(
        query(&arrive(&replay, Some(&s.cookie)).await, "error").as_deref(),
        Some("state")
    );

    drop(a);
    drop(b);
    let _ = migrations::drop_database(&db_url).await;
    let _ = std::fs::remove_dir_all(&media);
    let config = broker_bridge::AmqpConfig::new(&amqp).with_prefix(&prefix);
    if let Err(e) = config.delete_topology().await {
        eprintln!("note: could not delete the test's AMQP topology: {e}");
    }
}
