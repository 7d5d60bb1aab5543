//! Third-party STOMP clients using the gateway as a broker for their own publish/subscribe
//! (docs/gateway.md, "Destination rules" and "Queues"): `stomp.py` over TCP and over `/stomp`, and
//! `@stomp/stompjs` over `/stomp` and over `sockjs-client` on `/ws`. Each script runs its checks
//! (receipts, round robin, ACK/NACK and redelivery, transactions, unsubscribe, non-ASCII and escaped
//! headers, order, wildcards) and reports them by name.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::{TestGateway, token};
use gateway::destination::PrefixPolicy;
use gateway::rules::Destinations;
use tokio::process::Command;

const RULES: &str = r#"[
  {"prefix": "/topic/", "subscribe": "signed-in", "send": "signed-in", "wildcards": true},
  {"prefix": "/queue/", "subscribe": "signed-in", "send": "signed-in"},
  {"prefix": "/queue/admin.", "subscribe": "role:ADMIN", "send": "role:ADMIN"}
]"#;

fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with scripts/test"))
}

async fn broker() -> TestGateway {
    TestGateway::start_full(
        |c| c.session.destinations = Arc::new(Destinations::from_json(RULES).unwrap()),
        |_| Arc::new(PrefixPolicy::new(["public."])),
    )
    .await
}

/// Runs a client script to its end; its last JSON line must say `ok`.
async fn run(mut cmd: Command) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("client starts");
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("client finished in time")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    let report: serde_json::Value = serde_json::from_str(last).unwrap_or(serde_json::Value::Null);
    assert!(
        out.status.success() && report["ok"] == true,
        "client failed: {report:#}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checks = report["checks"].as_object().expect("checks");
    assert!(checks.len() >= 8, "{report}");
}

async fn stomppy(mode: &str) {
    let gw = broker().await;
    let addr = if mode == "tcp" { gw.tcp } else { gw.http };
    let mut cmd = Command::new(env("INSTAR_PYTHON"));
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/py/stomppy_broker.py"
    ))
    .arg(mode)
    .arg(addr.ip().to_string())
    .arg(addr.port().to_string())
    .arg(token("pybroker", 3600))
    .arg("pybroker");
    run(cmd).await;
}

async fn stompjs(mode: &str) {
    let gw = broker().await;
    let url = match mode {
        "ws" => format!("ws://{}/stomp", gw.http),
        _ => format!("http://{}/ws", gw.http),
    };
    let mut cmd = Command::new(std::env::var("INSTAR_NODE").unwrap_or_else(|_| "node".into()));
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/js/stompjs_broker.mjs"
    ))
    .arg(mode)
    .arg(url)
    .arg(token("jsbroker", 3600))
    .env("INSTAR_NODE_PATH", env("INSTAR_NODE_PATH"));
    run(cmd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomppy_uses_topics_and_queues_over_tcp() {
    stomppy("tcp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stomppy_uses_topics_and_queues_over_websocket() {
    stomppy("ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_uses_topics_and_queues_over_websocket() {
    stompjs("ws").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stompjs_uses_topics_and_queues_over_sockjs() {
    stompjs("sockjs").await;
}
