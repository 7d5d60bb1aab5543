//! The whole product scaled out, driven through nginx only, as a browser would: nginx rendered from
//! `deploy/nginx/` in front of two `instar gateway` nodes and two `instar social` processes on
//! MariaDB, Redis, RabbitMQ and S3 (moto). Everything goes to nginx's one origin: sign-up with the
//! mailed code, sign-in, a post with an image (stored in S3, loaded back through nginx's `/media`),
//! follow and feed, like and comment with the alarms pushed over SockJS to a session on the other
//! gateway, and a chat between users on different gateways (`tests/js/nginx_product.mjs`); then
//! one social process is killed and REST keeps answering through nginx.
#![allow(clippy::unwrap_used)]

mod flow_support;
mod scaleout_support;

use std::process::Stdio;
use std::time::Duration;

use flow_support::{PASSWORD, Proc, SECRET, call, unique_dir};
use scaleout_support::{Nginx, Services, free_port, service};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// The verification code mailed to `email`, from whichever social process sent it (without SMTP
/// the mail is logged).
async fn mailed_code(procs: &[&Proc], email: &str) -> String {
    for _ in 0..200 {
        for p in procs {
            let found = p
                .log
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|l| l.contains(email) && l.contains("mail"))
                .and_then(|l| l.split("body=").nth(1))
                .map(|b| {
                    b.chars()
                        .filter(char::is_ascii_digit)
                        .take(5)
                        .collect::<String>()
                });
            if let Some(code) = found.filter(|c| c.len() == 5) {
                return code;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no verification code logged for {email}");
}

/// Signs `id` up and in through `site`; returns the token.
async fn account(site: &str, socials: &[&Proc], http: &reqwest::Client, id: &str) -> String {
    let email = format!("{id}@example.com");
    let (s, _) = call(http.get(format!("{site}/api/auth/send/email?receive_email={email}"))).await;
    assert_eq!(s, 200);
    let code = mailed_code(socials, &email).await;
    let (s, b) = call(http.post(format!("{site}/api/auth/signUp")).json(&json!({
        "id": id, "password": PASSWORD, "name": id, "sex": "female", "email": email,
        "email_code": code, "address": "Seoul", "addressDetail": "1", "duplicateCheckId": true
    })))
    .await;
    assert_eq!((s, &b), (200, &json!({"code": "SC"})));
    let (s, b) = call(
        http.post(format!("{site}/api/auth/signIn"))
            .json(&json!({"id": id, "password": PASSWORD})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b["token"].as_str().unwrap().to_owned()
}

/// The driver's next line (a JSON event); panics on `failed`.
async fn next_event(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the driver answers in time")
        .unwrap()
        .expect("the driver is still running");
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("driver printed {line}"));
    eprintln!("[driver] {v}");
    assert_ne!(v["event"], "failed", "driver failed: {}", v["why"]);
    v
}

/// A counter from a process's own `/metrics` (read directly, not through nginx).
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
async fn the_product_through_nginx_with_two_gateways_and_two_social_processes() {
    let Some(services) = Services::get("prod") else {
        return;
    };
    let (Some(mysql), Some(s3)) = (
        service("INSTAR_TEST_MYSQL_URL"),
        service("INSTAR_TEST_S3_ENDPOINT"),
    ) else {
        return;
    };
    let node_path = std::env::var("INSTAR_NODE_PATH")
        .expect("INSTAR_NODE_PATH is not set: run the tests with scripts/test");
    let db_url = format!("{}/{}", mysql.trim_end_matches('/'), services.prefix);
    migrations::create_database(&db_url).await.unwrap();
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into());
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "test".into());
    // The deployment's bucket, readable by anyone (what the operator sets up; `instar social`
    // never creates buckets).
    let bucket = format!("instar-{}", services.prefix.to_ascii_lowercase());
    social::media::S3Storage::new(&social::media::S3Settings {
        endpoint: Some(s3.clone()),
        region: "us-east-1".into(),
        bucket: bucket.clone(),
        access_key: key.clone(),
        secret_key: secret.clone(),
        path_style: true,
        public_base_url: None,
        create_bucket: true,
    })
    .await
    .unwrap();

    // nginx's port first: it is the public URL every process renders media under.
    let port = free_port();
    let site = format!("http://127.0.0.1:{port}");
    let common = |extra: &[(&'static str, String)]| {
        services.process_env(
            SECRET,
            &[&[("INSTAR_DATABASE_URL", db_url.clone())], extra].concat(),
        )
    };
    let social_env = common(&[
        ("INSTAR_REDIS_PREFIX", format!("{}:", services.prefix)),
        ("INSTAR_PUBLIC_URL", site.clone()),
        ("INSTAR_S3_BUCKET", bucket.clone()),
        ("INSTAR_S3_ENDPOINT", s3.clone()),
        ("INSTAR_S3_ACCESS_KEY", key.clone()),
        ("INSTAR_S3_SECRET_KEY", secret.clone()),
        ("INSTAR_S3_PUBLIC_URL", format!("{site}/media")),
    ]);
    // One after the other: the first migrates the database.
    let social_1 = Proc::spawn("social-1", &["social"], &social_env).await;
    let social_2 = Proc::spawn("social-2", &["social"], &social_env).await;
    let node_a = format!("{}a", services.prefix);
    let node_b = format!("{}b", services.prefix);
    let gateway = |id: &str| {
        common(&[
            ("INSTAR_NODE_ID", id.to_owned()),
            ("INSTAR_MEDIA_URL", format!("{site}/media")),
        ])
    };
    let gw_a = Proc::spawn("gw-a", &["gateway"], &gateway(&node_a)).await;
    let gw_b = Proc::spawn("gw-b", &["gateway"], &gateway(&node_b)).await;
    let nginx = Nginx::start_with(
        &services.nginx,
        port,
        &[
            "--social".into(),
            social_1.addr.clone(),
            "--social".into(),
            social_2.addr.clone(),
            "--media-origin".into(),
            format!("{}/{bucket}", s3.trim_end_matches('/')),
        ],
        &[gw_a.addr.clone(), gw_b.addr.clone()],
    )
    .await;
    assert_eq!(nginx.port, port);
    let http = reqwest::Client::new();

    // The gateways' health through nginx.
    let res = http
        .get(format!("{site}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ready\n");
    let hashes_before = metric(&http, &social_1, "instar_password_hashes_total").await
        + metric(&http, &social_2, "instar_password_hashes_total").await;

    // Sign-up and sign-in through nginx.
    let socials = [&social_1, &social_2];
    let alice = account(&site, &socials, &http, "alice01").await;
    let bob = account(&site, &socials, &http, "bobby02").await;
    // Round robin: both social processes took a share of the REST calls.
    let (h1, h2) = (
        metric(&http, &social_1, "instar_password_hashes_total").await,
        metric(&http, &social_2, "instar_password_hashes_total").await,
    );
    assert_eq!(h1 + h2 - hashes_before, 4.0, "two sign-ups, two sign-ins");
    assert!(h1 > 0.0 && h2 > 0.0, "hashes: {h1} and {h2}");

    // Bob posts a picture: stored in S3, its URLs under the site's /media, loaded through nginx.
    let data = json!({"comment": "sunset", "location": "Busan", "hashtags": [], "tags": {}});
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
        http.post(format!("{site}/api/post/create"))
            .bearer_auth(&bob)
            .multipart(form),
    )
    .await;
    assert_eq!((s, &b["code"]), (200, &json!("SC")), "{b}");
    let (_, list) = call(
        http.get(format!("{site}/api/post/get/list?userId=bobby02"))
            .bearer_auth(&bob),
    )
    .await;
    let post_id = list["list"][0]["postId"].as_i64().unwrap();
    let (_, details) = call(
        http.get(format!("{site}/api/post/get/details_info?postId={post_id}"))
            .bearer_auth(&alice),
    )
    .await;
    let image = &details["post"]["imageTags"][0];
    for field in ["url", "thumbnailUrl"] {
        let url = image[field].as_str().unwrap();
        assert!(url.starts_with(&format!("{site}/media/post/")), "{url}");
        let res = http.get(url).send().await.unwrap();
        assert_eq!(res.status(), 200, "{url}");
        let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(
            ["image/png", "image/jpeg"].contains(&kind.as_str()),
            "{url}: {kind}"
        );
        let bytes = res.bytes().await.unwrap();
        assert!(image::load_from_memory(&bytes).is_ok(), "{url}");
    }
    // Missing objects are 404 (the bucket's 403 is not passed on), writes are refused.
    let res = http
        .get(format!("{site}/media/post/{post_id}/missing"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = http
        .put(format!("{site}/media/post/{post_id}/forged"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);

    // The live half: alice on gateway A, bob on gateway B, both over SockJS through nginx.
    let dir = unique_dir("nginx-product");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&json!({
            "site": site,
            "ids": {"alice": "alice01", "bob": "bobby02"},
            "tokens": {"alice": alice, "bob": bob},
            "nodes": {"alice": node_a, "bob": node_b},
            "alarms": ["FOLLOW", "POST_LIKE_RECEIVE", "POST_COMMENT_RECEIVE"],
        }))
        .unwrap(),
    )
    .unwrap();
    let mut driver = Command::new(std::env::var("INSTAR_NODE").unwrap_or_else(|_| "node".into()))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/js/nginx_product.mjs"
        ))
        .arg(&config)
        .env("INSTAR_NODE_PATH", node_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
    let ready = next_event(&mut lines).await;
    assert_eq!(ready["event"], "ready");
    // The registry agrees: each user's session is on the other gateway.
    let registry = services.registry().await;
    assert_eq!(
        registry.nodes_of("alice01").await.unwrap(),
        [broker_bridge::NodeId::from(node_a.as_str())]
    );
    assert_eq!(
        registry.nodes_of("bobby02").await.unwrap(),
        [broker_bridge::NodeId::from(node_b.as_str())]
    );

    // Follow, feed, like, comment: REST through nginx; the alarms reach bob on gateway B.
    let (s, b) = call(
        http.post(format!("{site}/api/user/follow"))
            .bearer_auth(&alice)
            .json(&json!({"followingId": "bobby02"})),
    )
    .await;
    assert_eq!((s, &b), (200, &json!({"code": "SC"})));
    let (s, feed) = call(http.get(format!("{site}/api/feed")).bearer_auth(&alice)).await;
    assert_eq!(s, 200, "{feed}");
    assert_eq!(feed["feed"][0]["postId"], post_id, "{feed}");
    let (s, _) = call(
        http.post(format!("{site}/api/post/like?postId={post_id}"))
            .bearer_auth(&alice),
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = call(
        http.post(format!("{site}/api/post/comment"))
            .bearer_auth(&alice)
            .json(&json!({"postId": post_id, "comment": "멋져요"})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let mut alarms = Vec::new();
    for _ in 0..3 {
        let v = next_event(&mut lines).await;
        assert_eq!(v["event"], "alarm", "{v}");
        alarms.push(v["body"].clone());
    }
    assert_eq!(alarms[0]["senderId"], "alice01");
    assert_eq!(alarms[1]["postId"], post_id);
    assert_eq!(alarms[2]["post"]["content"], "멋져요");
    // ... and are stored (the driver may already have added a CREATE_ROOM).
    let (_, listed) = call(
        http.get(format!("{site}/api/alarm/getList"))
            .bearer_auth(&bob),
    )
    .await;
    let kinds: Vec<&str> = listed["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["alarmType"].as_str())
        .collect();
    for kind in ["FOLLOW", "POST_LIKE_RECEIVE", "POST_COMMENT_RECEIVE"] {
        assert!(kinds.contains(&kind), "{kind} not listed: {listed}");
    }

    // Chat between the gateways (the driver does it), then the end.
    assert_eq!(next_event(&mut lines).await["event"], "chat");
    assert_eq!(next_event(&mut lines).await["event"], "done");
    assert!(driver.wait().await.unwrap().success());
    // Both social processes answered REST calls, and see every dependency ready.
    for social in [&social_1, &social_2] {
        assert!(metric(&http, social, "instar_http_responses_total{class=\"2xx\"}").await >= 3.0);
        assert!(metric(&http, social, "instar_http_response_seconds_count").await >= 3.0);
        for part in ["database", "key-value store", "media storage", "bus"] {
            let name = format!("instar_ready{{part=\"{part}\"}}");
            assert_eq!(metric(&http, social, &name).await, 1.0, "{name}");
        }
    }
    // Every metric the scale-out processes export is in docs/metrics.md (tests/operations.rs
    // checks the dashboard against the same table and a live `instar serve`).
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md")).unwrap();
    for proc in [&gw_a, &social_1] {
        let text = http
            .get(format!("{}/metrics", proc.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next())
            .collect();
        assert!(names.len() > 10, "{text}");
        for name in names {
            assert!(
                docs.contains(&format!("| `{name}` |")),
                "{name} is not in docs/metrics.md"
            );
        }
    }
    // Both gateways carried sessions and deliveries.
    for gw in [&gw_a, &gw_b] {
        assert!(metric(&http, gw, "instar_sessions_total").await >= 1.0);
        assert!(metric(&http, gw, "instar_deliveries_total").await >= 1.0);
    }

    // A social process dies (SIGKILL): nginx skips it, and REST keeps answering through the site,
    // reads and writes alike.
    let mut social_2 = social_2;
    social_2.kill().await;
    for i in 0..8 {
        let (s, b) = call(http.get(format!("{site}/api/feed")).bearer_auth(&alice)).await;
        assert_eq!(s, 200, "feed {i} after a social process died: {b}");
        if i % 2 == 1 {
            continue; // password hashing is slow in test builds: half as many sign-ins
        }
        let (s, b) = call(
            http.post(format!("{site}/api/auth/signIn"))
                .json(&json!({"id": "bobby02", "password": PASSWORD})),
        )
        .await;
        assert_eq!(s, 200, "sign-in {i} after a social process died: {b}");
    }

    drop((nginx, gw_a, gw_b, social_1, social_2));
    services.clean().await;
    let _ = migrations::drop_database(&db_url).await;
    let _ = std::fs::remove_dir_all(&dir);
}
