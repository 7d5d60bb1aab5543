//! Token revocation across processes: an `instar social` process and `instar gateway` nodes on
//! MariaDB, Redis and RabbitMQ. A password change and a sign-out-everywhere made through the
//! social process close the user's live STOMP sessions on every gateway (with an ERROR), and the
//! old token is refused on CONNECT: by a node with the database (it reads the version), by a node
//! without one (it heard the revocation on the bus), and on REST; the new token works.
#![allow(clippy::unwrap_used)]

mod flow_support;
mod scaleout_support;

use std::time::Duration;

use flow_support::{Proc, SECRET, account, call, unique_dir};
use scaleout_support::{Client, Services, header, service};
use serde_json::json;

/// A STOMP 1.2 header value as the client reads it (`\c` is an escaped colon).
fn unescape(value: &str) -> String {
    value.replace("\\c", ":")
}

/// Waits for the ERROR closing a session whose token was revoked, then for the close itself.
async fn closed_as_revoked(client: &mut Client, what: &str) {
    let frame = client
        .try_frame(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("{what}: no ERROR before the close"));
    assert!(frame.starts_with("ERROR\n"), "{what}: {frame}");
    assert_eq!(
        header(&frame, "message").map(unescape).as_deref(),
        Some("token revoked: sign in again"),
        "{what}: {frame}"
    );
    assert!(
        client.closed_within(Duration::from_secs(10)).await,
        "{what}: still open"
    );
}

/// A CONNECT with `token` through `node` is refused with the revocation ERROR.
async fn connect_refused(node: &Proc, token: &str, what: &str) {
    match Client::connect_token(&format!("ws://{}/stomp", node.addr), token).await {
        Ok(_) => panic!("{what}: a revoked token was let in"),
        Err(frame) => {
            assert!(frame.starts_with("ERROR\n"), "{what}: {frame}");
            assert_eq!(
                header(&frame, "message").map(unescape).as_deref(),
                Some("token revoked: sign in again"),
                "{what}: {frame}"
            );
        }
    }
}

/// A counter from a process's own `/metrics`.
async fn metric(http: &reqwest::Client, proc: &Proc, name: &str) -> f64 {
    let text = http
        .get(format!("{}/metrics", proc.base()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_close_live_sessions_and_are_refused_on_every_process() {
    let Some(services) = Services::get("revoke") else {
        return;
    };
    let Some(mysql) = service("INSTAR_TEST_MYSQL_URL") else {
        return;
    };
    let db_url = format!("{}/{}", mysql.trim_end_matches('/'), services.prefix);
    migrations::create_database(&db_url).await.unwrap();
    let media = unique_dir("revoke-media");
    let common = |extra: &[(&'static str, String)]| services.process_env(SECRET, extra);
    let social = Proc::spawn(
        "social",
        &["social"],
        &common(&[
            ("INSTAR_DATABASE_URL", db_url.clone()),
            ("INSTAR_REDIS_PREFIX", format!("{}:", services.prefix)),
            ("INSTAR_MEDIA_DIR", media.display().to_string()),
        ]),
    )
    .await;
    // Node a reads versions from the database; node b has no database and knows only what the
    // bus tells it.
    let a = Proc::spawn(
        "gw-a",
        &["gateway"],
        &common(&[
            ("INSTAR_NODE_ID", format!("{}a", services.prefix)),
            ("INSTAR_DATABASE_URL", db_url.clone()),
        ]),
    )
    .await;
    let b = Proc::spawn(
        "gw-b",
        &["gateway"],
        &common(&[("INSTAR_NODE_ID", format!("{}b", services.prefix))]),
    )
    .await;
    let http = reqwest::Client::new();
    let rest = social.base();
    let alice = account(&rest, &social.log, &http, "alice_rv").await;
    let bob = account(&rest, &social.log, &http, "bob_rvk").await;
    let stomp = |p: &Proc| format!("ws://{}/stomp", p.addr);

    let mut alice_a = Client::connect_token(&stomp(&a), &alice).await.unwrap();
    let mut alice_b = Client::connect_token(&stomp(&b), &alice).await.unwrap();
    let mut bob_a = Client::connect_token(&stomp(&a), &bob).await.unwrap();

    // The password change revokes the token it was made with.
    let (s, body) = call(
        http.post(format!("{rest}/api/user/edit/password"))
            .bearer_auth(&alice)
            .json(&json!({"oldPassword": flow_support::PASSWORD, "newPassword": "another-pw-9"})),
    )
    .await;
    assert_eq!((s, &body["code"]), (200, &json!("SC")), "{body}");
    let fresh = body["token"].as_str().unwrap().to_owned();
    closed_as_revoked(&mut alice_a, "alice on a").await;
    closed_as_revoked(&mut alice_b, "alice on b").await;
    assert!(
        !bob_a.closed_within(Duration::from_millis(300)).await,
        "another user's session was closed"
    );
    connect_refused(&a, &alice, "old token on a").await;
    connect_refused(&b, &alice, "old token on b").await;
    let (s, body) = call(http.get(format!("{rest}/api/user/me")).bearer_auth(&alice)).await;
    assert_eq!((s, body), (401, json!({"code": "AV"})));

    // A node started after the change reads the version from the database.
    let c = Proc::spawn(
        "gw-c",
        &["gateway"],
        &common(&[
            ("INSTAR_NODE_ID", format!("{}c", services.prefix)),
            ("INSTAR_DATABASE_URL", db_url.clone()),
        ]),
    )
    .await;
    connect_refused(&c, &alice, "old token on a fresh node").await;

    // The new token works everywhere.
    let (s, _) = call(http.get(format!("{rest}/api/user/me")).bearer_auth(&fresh)).await;
    assert_eq!(s, 200);
    let mut fresh_a = Client::connect_token(&stomp(&a), &fresh).await.unwrap();
    let mut fresh_c = Client::connect_token(&stomp(&c), &fresh).await.unwrap();
    Client::connect_token(&stomp(&b), &fresh)
        .await
        .unwrap()
        .close()
        .await;

    // Signing out everywhere closes the sessions of the new token too.
    let (s, body) = call(
        http.post(format!("{rest}/api/auth/signOutEverywhere"))
            .bearer_auth(&fresh),
    )
    .await;
    assert_eq!((s, body), (200, json!({"code": "SC"})));
    closed_as_revoked(&mut fresh_a, "new token on a").await;
    closed_as_revoked(&mut fresh_c, "new token on c").await;
    connect_refused(&b, &fresh, "signed-out token on b").await;
    let (s, _) = call(http.get(format!("{rest}/api/user/me")).bearer_auth(&fresh)).await;
    assert_eq!(s, 401);
    assert!(!bob_a.closed_within(Duration::from_millis(100)).await);

    assert_eq!(
        metric(&http, &a, "instar_revoked_token_sessions_closed_total").await,
        2.0
    );
    assert_eq!(
        metric(&http, &b, "instar_revoked_token_connects_refused_total").await,
        2.0
    );
    assert_eq!(
        metric(&http, &social, "instar_token_revocations_total").await,
        2.0
    );
    bob_a.close().await;
    drop((a, b, c, social));
    services.clean().await;
    let _ = std::fs::remove_dir_all(&media);
}
