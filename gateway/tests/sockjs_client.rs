//! The real `sockjs-client` (npm, 1.6.x, run by Node) against
//! `gateway::sockjs` with an echo application, once per transport.
//!
//! Needs Node and `INSTAR_NODE_PATH` pointing at a `node_modules` directory
//! holding `sockjs-client` (the repository's test command installs it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gateway::sockjs::{self, SockJsConfig, SockJsConn};

/// Echo application: every message goes back; `close` closes with 3000.
fn echo(conn: SockJsConn) {
    tokio::spawn(async move {
        let mut conn = conn;
        while let Some(msg) = conn.recv().await {
            if msg == "close" {
                conn.close(3000, "Go away!").await;
                break;
            }
            if conn.send(msg).await.is_err() {
                break;
            }
        }
    });
}

async fn start() -> SocketAddr {
    let config = SockJsConfig {
        // Production-like allow-list; Node's client sends no Origin header.
        allowed_origins: vec!["http://front.example".to_owned()],
        heartbeat_interval: Duration::from_secs(2),
        // Small enough that the 61 KiB message forces xhr-streaming to
        // reopen its response.
        max_streaming_bytes: 16 * 1024,
        ..SockJsConfig::default()
    };
    let routes = sockjs::routes("ws", config, echo);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    addr
}

fn node_path() -> String {
    match std::env::var("INSTAR_NODE_PATH") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "INSTAR_NODE_PATH is not set: this test runs the npm sockjs-client under Node. \
             Run the repository's test command (it installs sockjs-client, ws and @stomp/stompjs \
             and sets INSTAR_NODE_PATH to their node_modules directory)."
        ),
    }
}

async fn run_client(addr: SocketAddr, transport: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js/sockjs_echo.mjs");
    let node_path = node_path();
    let url = format!("http://{addr}/ws");
    let child = tokio::process::Command::new("node")
        .arg(&script)
        .arg(&url)
        .arg(transport)
        .env("INSTAR_NODE_PATH", &node_path)
        .env("NODE_PATH", &node_path)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(40), child)
        .await
        .unwrap_or_else(|_| panic!("node sockjs client ({transport}) timed out"))
        .expect("run node (is Node.js installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "sockjs-client over {transport} failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let line = stdout.lines().last().unwrap_or_default();
    println!("{transport}: {line}");
    let v: serde_json::Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("bad JSON from the client ({e}): {stdout}"));
    assert_eq!(v["ok"], true, "{stdout}");
    assert_eq!(v["used"], transport, "{stdout}");
}

#[tokio::test]
async fn sockjs_client_websocket() {
    let addr = start().await;
    run_client(addr, "websocket").await;
}

#[tokio::test]
async fn sockjs_client_xhr_streaming() {
    let addr = start().await;
    run_client(addr, "xhr-streaming").await;
}

#[tokio::test]
async fn sockjs_client_xhr_polling() {
    let addr = start().await;
    run_client(addr, "xhr-polling").await;
}
