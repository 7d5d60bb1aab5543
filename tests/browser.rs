//! The frontend's view, in a real browser: headless Chromium (driven by puppeteer-core) opens a page
//! served from its own origin (`http://localhost:<port>`, not the API's `http://127.0.0.1:<port>`),
//! which uses the real `@stomp/stompjs` and `sockjs-client` bundles and cross-origin `fetch` as the
//! mjinsta frontend does: it signs in, listens for alarms over STOMP/SockJS, uploads profile pictures
//! and a post, gets a FOLLOW alarm pushed, and puts every media URL the API returned into an `<img>`
//! on its own origin. Each must load as an image (`naturalWidth > 0`): a URL that only works on the
//! API's origin (a bare `/media/...` path) is a broken picture in the frontend.
//!
//! The page and the driver are `tests/js/browser_media.html` and `tests/js/browser_media.mjs`.

#![allow(clippy::unwrap_used)]

mod flow_support;

use std::process::Stdio;
use std::time::Duration;

use flow_support::{PASSWORD, account, start_with};
use serde_json::{Value, json};
use tokio::process::Command;

/// The Chromium binary `scripts/test` exports, or `None` (after saying why) to skip outside CI.
fn chromium() -> Option<String> {
    match std::env::var("INSTAR_CHROMIUM") {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "INSTAR_CHROMIUM is not set: run the tests through scripts/test, which installs \
                 Debian's chromium and exports it"
            );
            eprintln!(
                "SKIPPED: INSTAR_CHROMIUM is not set (run through scripts/test, or \
                 `scripts/test --setup-only --keep && source .test-env/env.sh`)"
            );
            None
        }
    }
}

/// A loopback port that is free right now (for the page server the driver starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_shows_every_returned_media_url_as_an_image() {
    let Some(chromium) = chromium() else { return };
    let node_path = std::env::var("INSTAR_NODE_PATH")
        .expect("INSTAR_NODE_PATH is not set: run the tests with scripts/test");
    let node = std::env::var("INSTAR_NODE").unwrap_or_else(|_| "node".into());

    // The frontend's origin: what Instar is configured to allow, as in a real deployment.
    let page_port = free_port();
    let page_origin = format!("http://localhost:{page_port}");
    let server = start_with(&[
        ("INSTAR_CORS_ORIGIN", page_origin.clone()),
        ("INSTAR_ALLOWED_ORIGINS", page_origin.clone()),
    ])
    .await;
    let http = reqwest::Client::new();
    // Sign-up needs the mailed code, which only the server's log shows: made here, signed in by the page.
    account(&server.base, &server.log, &http, "author01").await;
    account(&server.base, &server.log, &http, "follower02").await;

    let config = json!({
        "api": server.base, "pagePort": page_port, "password": PASSWORD,
        "author": "author01", "follower": "follower02",
    });
    let driver = Command::new(&node)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/js/browser_media.mjs"
        ))
        .arg(config.to_string())
        .env("INSTAR_NODE_PATH", &node_path)
        .env("INSTAR_CHROMIUM", &chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), driver)
        .await
        .expect("the browser driver finishes within 90 s")
        .unwrap_or_else(|e| panic!("cannot run {node}: {e}"));
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        eprintln!("[driver] {line}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Option<Value> = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok());
    if !out.status.success() {
        let failures = match report.as_ref().and_then(|r| r["failures"].as_array()) {
            Some(list) => list
                .iter()
                .map(|f| format!("\n  - {}", f.as_str().unwrap_or_default()))
                .collect::<String>(),
            None => " no report (see the driver's log above)".into(),
        };
        panic!(
            "the page at {page_origin} could not use what the API at {} returned (driver {}):\
             {failures}",
            server.base, out.status
        );
    }
    let report = report.expect("the driver printed its report");
    assert_eq!(report["ok"], true);
    let shown = report["images"].as_array().unwrap();
    assert_eq!(shown.len(), 8, "{report}");
    for img in shown {
        assert_eq!(img["outcome"], "load", "{img}");
        assert!(img["naturalWidth"].as_u64().unwrap() > 0, "{img}");
    }
    assert_eq!(report["alarm"]["alarmType"], "FOLLOW");
}
