//! `instar serve` as a real process: it starts on the address given by `INSTAR_LISTEN`, checks tokens
//! with `INSTAR_JWT_SECRET`, lists its settings in `--help`, and drains sessions on SIGTERM.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "serve-test-secret-serve-test-secret";

fn token(user: &str) -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    gateway::auth::Verifier::new(SECRET.as_bytes().to_vec()).sign(
        gateway::auth::Algorithm::Hs256,
        user,
        None,
        now,
        now + 600,
    )
}

/// Starts the binary on a free port; returns it and the HTTP address it logged.
async fn start() -> (Child, String) {
    start_with(&[]).await
}

/// [`start`] with extra environment variables.
async fn start_with(envs: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_instar"))
        .arg("serve")
        .env("INSTAR_LISTEN", "127.0.0.1:0")
        .env("INSTAR_TCP_LISTEN", "off")
        .env("INSTAR_JWT_SECRET", SECRET)
        .env(
            "INSTAR_DATA_DIR",
            std::env::temp_dir().join(format!("instar-serve-test-{}", std::process::id())),
        )
        .env("INSTAR_LOG", "info")
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("instar starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("HTTP listening")
                && let Some(a) = line.split("addr=").nth(1)
            {
                return a.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("instar exited before listening");
    })
    .await
    .expect("instar listens in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

#[tokio::test]
async fn help_lists_every_setting_with_its_default() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_instar"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "INSTAR_LISTEN",
        "INSTAR_JWT_SECRET",
        "INSTAR_TCP_LISTEN",
        "[default: 127.0.0.1:8080]",
        "INSTAR_HEARTBEAT_MS",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
}

#[tokio::test]
async fn serves_stomp_and_drains_on_sigterm() {
    let (mut child, addr) = start().await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/stomp"),
    )
    .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "v12.stomp".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let t = token("alice01");
    ws.send(Message::text(format!(
        "CONNECT\naccept-version:1.2\nAuthorization:Bearer {t}\n\n\0"
    )))
    .await
    .unwrap();
    let connected = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(connected.starts_with("CONNECTED\n"), "{connected}");
    assert!(connected.contains("user-name:alice01"));

    // SIGTERM: the session is told why and closed, and the process exits cleanly.
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut saw_error = false;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        if let Message::Text(t) = msg
            && t.starts_with("ERROR")
        {
            assert!(t.contains("message:server shutting down"), "{t}");
            saw_error = true;
        }
    }
    assert!(saw_error, "no ERROR frame before close");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn metrics_list_the_gateway_and_read_cache_counters() {
    let (_child, addr) = start().await;
    let http = reqwest::Client::new();
    // One details lookup of a missing post goes to the database: a read cache miss.
    let res = http
        .get(format!("http://{addr}/api/post/get/details_info?postId=1"))
        .bearer_auth(
            social::tokens::Tokens::new(SECRET.as_bytes(), 600)
                .unwrap()
                .issue("metrics01", "USER")
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = res.text().await.unwrap();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("instar_sessions_open"), 0);
    assert!(value("instar_read_cache_misses_total") >= 1);
    value("instar_read_cache_hits_total");
    value("instar_read_cache_feed_pages_served_total");
    value("instar_read_cache_invalidations_total");
    assert!(text.contains("# TYPE instar_read_cache_hits_total counter"));
}

#[tokio::test]
async fn a_busy_default_tcp_port_is_skipped_but_a_chosen_one_is_an_error() {
    // The default 127.0.0.1:61613 is taken (a local broker's STOMP plugin usually has it; if
    // not, this test holds it): serve still runs, with a warning.
    let _held = std::net::TcpListener::bind("127.0.0.1:61613").ok();
    let mut child = Command::new(env!("CARGO_BIN_EXE_instar"))
        .arg("serve")
        .env("INSTAR_LISTEN", "127.0.0.1:0")
        .env_remove("INSTAR_TCP_LISTEN")
        .env("INSTAR_JWT_SECRET", SECRET)
        .env(
            "INSTAR_DATA_DIR",
            std::env::temp_dir().join(format!("instar-serve-tcp-test-{}", std::process::id())),
        )
        .env("INSTAR_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let warned = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("STOMP over TCP not started") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(warned, "no warning about the busy default port");
    assert!(child.try_wait().unwrap().is_none(), "serve exited");
    drop(child);

    // An address the user chose must bind, or serve stops with the reason.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new(env!("CARGO_BIN_EXE_instar"))
            .arg("serve")
            .env("INSTAR_LISTEN", "127.0.0.1:0")
            .env("INSTAR_TCP_LISTEN", busy.local_addr().unwrap().to_string())
            .env("INSTAR_JWT_SECRET", SECRET)
            .env(
                "INSTAR_DATA_DIR",
                std::env::temp_dir().join(format!("instar-serve-tcp2-test-{}", std::process::id())),
            )
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("binding STOMP/TCP"), "{err}");
}

/// `/metrics` is for operators: from this machine without a proxy in between by default, from
/// anywhere with `INSTAR_METRICS_TOKEN`; everything else is "not found". Before, anyone who reached
/// the public listener (nginx included) could read it.
#[tokio::test]
async fn metrics_are_for_operators_only() {
    let http = reqwest::Client::new();
    let get = |addr: String, headers: &'static [(&'static str, &'static str)]| {
        let http = http.clone();
        async move {
            let mut req = http.get(format!("http://{addr}/metrics"));
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.send().await.unwrap().status().as_u16()
        }
    };
    let (_child, addr) = start().await;
    assert_eq!(get(addr.clone(), &[]).await, 200);
    // Through a proxy (which sets X-Forwarded-For): not found.
    assert_eq!(get(addr, &[("x-forwarded-for", "203.0.113.9")]).await, 404);

    let dir = std::env::temp_dir().join(format!("instar-metrics-test-{}", std::process::id()));
    let dir = dir.to_string_lossy().into_owned();
    let (_child, addr) = start_with(&[
        ("INSTAR_METRICS_TOKEN", "scrape-me-please"),
        ("INSTAR_DATA_DIR", &dir),
    ])
    .await;
    assert_eq!(get(addr.clone(), &[]).await, 404);
    assert_eq!(
        get(
            addr.clone(),
            &[("authorization", "Bearer wrong-token-000000")]
        )
        .await,
        404
    );
    assert_eq!(
        get(
            addr,
            &[
                ("authorization", "Bearer scrape-me-please"),
                ("x-forwarded-for", "203.0.113.9")
            ]
        )
        .await,
        200
    );
}

/// `/health/live` answers while the process serves; `/health/ready` (and `/health`) only while
/// every dependency answers, naming the one that does not (here the media directory, removed).
#[tokio::test]
async fn readiness_names_the_dependency_that_does_not_answer() {
    let dir = std::env::temp_dir().join(format!("instar-health-test-{}", std::process::id()));
    let dir_s = dir.to_string_lossy().into_owned();
    let (_child, addr) = start_with(&[("INSTAR_DATA_DIR", &dir_s)]).await;
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let (http, addr) = (http.clone(), addr.clone());
        async move {
            let res = http
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    assert_eq!(get("/health/live").await, (200, "live\n".to_owned()));
    assert_eq!(get("/health/ready").await, (200, "ready\n".to_owned()));
    assert_eq!(get("/health").await, (200, "ready\n".to_owned()));
    std::fs::remove_dir_all(dir.join("media")).unwrap();
    let (status, text) = get("/health/ready").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.starts_with("not ready: media storage: "), "{text}");
    assert_eq!(get("/health/live").await.0, 200);
    std::fs::create_dir_all(dir.join("media")).unwrap();
    assert_eq!(get("/health/ready").await, (200, "ready\n".to_owned()));
}

/// One STOMP session over WebSocket to `addr`, CONNECTed as `user`.
async fn stomp_session(
    addr: &str,
    user: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{addr}/stomp"),
    )
    .unwrap();
    req.headers_mut()
        .insert("sec-websocket-protocol", "v12.stomp".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let t = token(user);
    ws.send(Message::text(format!(
        "CONNECT\naccept-version:1.2\nAuthorization:Bearer {t}\n\n\0"
    )))
    .await
    .unwrap();
    let connected = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(connected.starts_with("CONNECTED\n"), "{connected}");
    ws
}

/// The value of the series `series` (name and labels as written) in a scrape, 0 when absent.
fn series(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn metrics_families_appear_once_and_close_reasons_are_counted() {
    let (_child, addr) = start().await;
    let http = reqwest::Client::new();
    let scrape = || async {
        http.get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // The gateway's and the social service's families in one text, each `# TYPE` and `# HELP`
    // once.
    let text = scrape().await;
    let mut types = std::collections::BTreeMap::<&str, usize>::new();
    for name in text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next())
    {
        *types.entry(name).or_default() += 1;
    }
    assert!(types.len() > 30, "{text}");
    let twice: Vec<_> = types.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "families typed more than once: {twice:?}");
    for name in types.keys() {
        let helps = text
            .lines()
            .filter(|l| {
                l.strip_prefix("# HELP ")
                    .and_then(|l| l.split_whitespace().next())
                    == Some(name)
            })
            .count();
        assert_eq!(helps, 1, "# HELP of {name}:\n{text}");
    }
    for family in [
        "instar_sessions_open",
        "instar_read_cache_hits_total",
        "instar_http_responses_total",
        "instar_sessions_closed_total",
        "instar_connects_refused_total",
    ] {
        assert!(types.contains_key(family), "{family} missing:\n{text}");
    }
    let disconnects = r#"instar_sessions_closed_total{reason="disconnect"}"#;
    let errors = r#"instar_sessions_closed_total{reason="error"}"#;
    assert_eq!(series(&text, disconnects), 0.0, "{text}");
    assert_eq!(series(&text, errors), 0.0, "{text}");

    // A session that says DISCONNECT, and one closed for a frame the server does not know.
    let mut ws = stomp_session(&addr, "closer01").await;
    ws.send(Message::text("DISCONNECT\nreceipt:bye\n\n\0"))
        .await
        .unwrap();
    let receipt = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(receipt.starts_with("RECEIPT\n"), "{receipt}");
    let mut ws = stomp_session(&addr, "closer02").await;
    ws.send(Message::text("BOGUS\n\n\0")).await.unwrap();
    let error = ws.next().await.unwrap().unwrap().into_text().unwrap();
    assert!(error.starts_with("ERROR\n"), "{error}");

    // Each moved by one, and only its own reason (the session ends a moment after the frame).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape().await;
        if series(&text, disconnects) >= 1.0 && series(&text, errors) >= 1.0 {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(series(&text, disconnects), 1.0, "{text}");
    assert_eq!(series(&text, errors), 1.0, "{text}");
    assert_eq!(
        series(&text, r#"instar_sessions_closed_total{reason="heartbeat"}"#),
        0.0
    );
    assert_eq!(series(&text, "instar_errors_sent_total"), 1.0, "{text}");
    assert_eq!(series(&text, "instar_sessions_total"), 2.0, "{text}");
}
