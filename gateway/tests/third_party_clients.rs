//! The gateway driven by STOMP clients written by others: `@stomp/stompjs` (over `/stomp` and over
//! `sockjs-client` on `/ws`, every SockJS transport the frontend may fall back to) and `stomp.py` over
//! TCP. The test command installs them (`INSTAR_NODE_PATH`, `INSTAR_PYTHON`).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{TestGateway, token};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with scripts/test"))
}

/// Runs a client script; publishes a notification to `user` when it says "ready"; returns its final
/// JSON line and exit status.
async fn drive(gw: &TestGateway, mut cmd: Command, user: &str) -> serde_json::Value {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("client starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut last = serde_json::Value::Null;
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
            match v["event"].as_str() {
                Some("ready") => {
                    gw.wait_online(user).await;
                    gw.to_user(user, "notify", r#"{"alarmType":"FOLLOW","senderId":"bob","create_at":"2025-03-01T21:15:07.2"}"#).await;
                    gw.to_user(
                        user,
                        "notify",
                        r#"{"alarmType":"POST_TAG","senderId":"bob","postId":7}"#,
                    )
                    .await;
                }
                Some("done") | Some("failed") => last = v,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("client finished in time");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "client failed: {last}");
    last
}

async fn stompjs(mode: &str, path: &str, transport: Option<&str>) {
    let gw = TestGateway::start().await;
    let mut cmd = Command::new("node");
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/js/stompjs_flow.mjs"
    ))
    .arg(mode)
    .arg(format!(
        "{}://{}{path}",
        if mode == "ws" { "ws" } else { "http" },
        gw.http
    ))
    .arg(token("alice01", 3600))
    .env("INSTAR_NODE_PATH", env("INSTAR_NODE_PATH"));
    if let Some(t) = transport {
        cmd.arg(t);
    }
    let done = drive(&gw, cmd, "alice01").await;
    assert_eq!(done["ok"], true, "{done}");
    assert_eq!(done["version"], "1.2");
    assert_eq!(done["user"], "alice01");
    assert_eq!(
        done["receiptSeen"], true,
        "DISCONNECT receipt before close: {done}"
    );
    // Every session ended and left the registry.
    for _ in 0..200 {
        if gw.gw.open_sessions() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("sessions left open: {}", gw.gw.open_sessions());
}

#[tokio::test]
async fn stompjs_over_websocket() {
    stompjs("ws", "/stomp", None).await;
}

#[tokio::test]
async fn stompjs_over_sockjs_websocket() {
    stompjs("sockjs", "/ws", Some("websocket")).await;
}

#[tokio::test]
async fn stompjs_over_sockjs_xhr_streaming() {
    stompjs("sockjs", "/ws", Some("xhr-streaming")).await;
}

#[tokio::test]
async fn stompjs_over_sockjs_xhr_polling() {
    stompjs("sockjs", "/ws", Some("xhr-polling")).await;
}

#[tokio::test]
async fn stomppy_over_tcp() {
    let gw = TestGateway::start().await;
    let mut cmd = Command::new(env("INSTAR_PYTHON"));
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/stomppy_flow.py"
    ))
    .arg(gw.tcp.ip().to_string())
    .arg(gw.tcp.port().to_string())
    .arg(token("pyuser", 3600))
    .arg("pyuser");
    let done = drive(&gw, cmd, "pyuser").await;
    assert_eq!(done["ok"], true, "{done}");
}

/// The close handshake with the `ws` package, which reports `wasClean` as browsers do: closing
/// first, the client gets its 1000 back, cleanly (it saw 1006, `wasClean=false`, on `/stomp`);
/// after a STOMP ERROR the server's 1002 ends the connection cleanly too.
#[tokio::test]
async fn ws_client_sees_clean_closes() {
    let gw = TestGateway::start().await;
    for (path, protocol) in [
        ("/stomp", Some("v12.stomp")),
        ("/ws/websocket", None),
        ("/ws/000/nodeclose/websocket", None),
    ] {
        for (mode, code) in [("client", 1000), ("error", 1002)] {
            let mut cmd = Command::new("node");
            cmd.arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/js/ws_close.mjs"
            ))
            .arg(format!("ws://{}{path}", gw.http))
            .arg(mode)
            .env("INSTAR_NODE_PATH", env("INSTAR_NODE_PATH"))
            .kill_on_drop(true);
            if let Some(p) = protocol {
                cmd.arg(p);
            }
            let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
                .await
                .expect("node finished in time")
                .expect("node runs");
            let line = String::from_utf8_lossy(&out.stdout);
            let v: serde_json::Value = serde_json::from_str(line.trim())
                .unwrap_or_else(|_| panic!("{path} {mode}: {line}"));
            assert_eq!(v["code"], code, "{path} {mode}: {v}");
            assert_eq!(v["wasClean"], true, "{path} {mode}: {v}");
        }
    }
}
