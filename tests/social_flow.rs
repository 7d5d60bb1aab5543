//! The whole product in one process (`instar serve`): REST sign-up and sign-in, follow, a post with
//! an image and a user tag, a like and a comment; the recipients get each alarm live over STOMP with
//! the frontend's own client stack (@stomp/stompjs over sockjs-client), and the same alarms are
//! listed by `GET /api/alarm/getList`.

#![allow(clippy::unwrap_used)]

mod flow_support;

use std::process::Stdio;
use std::time::Duration;

use flow_support::{Server, account, call, start};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

struct Listener {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

async fn listen(server: &Server, token: &str, count: usize) -> Listener {
    let node_path = std::env::var("INSTAR_NODE_PATH")
        .expect("INSTAR_NODE_PATH is not set: run the tests with scripts/test");
    let mut child = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/js/notify_listener.mjs"
        ))
        .arg(format!("{}/ws", server.base))
        .arg(token)
        .arg(count.to_string())
        .env("INSTAR_NODE_PATH", node_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value = serde_json::from_str(&line).unwrap();
            match v["event"].as_str() {
                Some("ready") => return,
                Some("failed") => panic!("listener failed: {v}"),
                _ => {}
            }
        }
        panic!("listener exited early");
    })
    .await;
    assert!(ready.is_ok(), "listener ready in time");
    Listener { child, lines }
}

impl Listener {
    async fn messages(mut self) -> Vec<Value> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                let v: Value = serde_json::from_str(&line).unwrap();
                match v["event"].as_str() {
                    Some("message") => {
                        assert_eq!(v["destination"], "/user/queue/notify");
                        got.push(v["body"].clone());
                    }
                    Some("done") => break,
                    Some("failed") => panic!("listener failed: {v}"),
                    _ => {}
                }
            }
        })
        .await
        .expect("alarms arrive in time");
        let status = self.child.wait().await.unwrap();
        assert!(status.success());
        got
    }
}

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_post_like_comment_alarms_arrive_live_and_are_listed() {
    let server = start().await;
    let http = reqwest::Client::new();
    let alice = account(&server.base, &server.log, &http, "alice01").await;
    let bob = account(&server.base, &server.log, &http, "bobby02").await;

    // Bob (the author) expects FOLLOW, POST_LIKE_RECEIVE, POST_COMMENT_RECEIVE; Alice (the follower,
    // tagged on Bob's picture) expects POST_TAG.
    let bob_ears = listen(&server, &bob, 3).await;
    let alice_ears = listen(&server, &alice, 1).await;

    let (s, b) = call(
        http.post(format!("{}/api/user/follow", server.base))
            .bearer_auth(&alice)
            .json(&json!({"followingId": "bobby02"})),
    )
    .await;
    assert_eq!((s, &b), (200, &json!({"code": "SC"})));

    let data = json!({"comment": "sunset #바다", "location": "해운대", "hashtags": ["바다"],
                      "tags": {"0": [{"userId": "alice01", "x": 41.5, "y": 62.0}]}});
    let form = reqwest::multipart::Form::new()
        .part(
            "images",
            reqwest::multipart::Part::bytes(png())
                .file_name("a.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text("data", data.to_string());
    let (s, b) = call(
        http.post(format!("{}/api/post/create", server.base))
            .bearer_auth(&bob)
            .multipart(form),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["code"], "SC");
    let (_, list) = call(
        http.get(format!("{}/api/post/get/list?userId=bobby02", server.base))
            .bearer_auth(&alice),
    )
    .await;
    let post_id = list["list"][0]["postId"].as_i64().unwrap();

    let (s, _) = call(
        http.post(format!("{}/api/post/like?postId={post_id}", server.base))
            .bearer_auth(&alice),
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = call(
        http.post(format!("{}/api/post/comment", server.base))
            .bearer_auth(&alice)
            .json(&json!({"postId": post_id, "comment": "멋져요"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");

    let live = bob_ears.messages().await;
    let kinds: Vec<&str> = live
        .iter()
        .map(|m| m["alarmType"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["FOLLOW", "POST_LIKE_RECEIVE", "POST_COMMENT_RECEIVE"]
    );
    assert_eq!(live[0]["senderId"], "alice01");
    assert_eq!(live[1]["user"]["id"], "alice01");
    assert_eq!(live[1]["postId"], post_id);
    assert_eq!(live[2]["post"]["content"], "멋져요");
    assert_eq!(live[2]["post"]["userId"], "alice01");

    let tagged = alice_ears.messages().await;
    assert_eq!(tagged[0]["alarmType"], "POST_TAG");
    assert_eq!(tagged[0]["senderId"], "bobby02");
    assert_eq!(tagged[0]["postId"], post_id);

    let (s, listed) = call(
        http.get(format!("{}/api/alarm/getList", server.base))
            .bearer_auth(&bob),
    )
    .await;
    assert_eq!(s, 200);
    let listed: Vec<&str> = listed["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["alarmType"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        ["POST_COMMENT_RECEIVE", "POST_LIKE_RECEIVE", "FOLLOW"]
    );

    // The stored image is served by the same process.
    let (_, details) = call(
        http.get(format!(
            "{}/api/post/get/details_info?postId={post_id}",
            server.base
        ))
        .bearer_auth(&alice),
    )
    .await;
    let url = details["post"]["imageTags"][0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(url.starts_with(&format!("{}/media/", server.base)), "{url}");
    let img = http.get(&url).send().await.unwrap();
    assert_eq!(img.status(), 200);
    assert_eq!(img.headers()["content-type"], "image/png");
    assert_eq!(details["post"]["isLiked"], true);
}
