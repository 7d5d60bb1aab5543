//! `instar tags backfill` end to end (docs/tagging.md, "Backfill"): posts created while labelling
//! was off get their image tags from the fake Vision; without Vision settings the command says
//! what to set; a dry run counts and writes nothing; a run stopped by Ctrl-C (SIGINT) stores its
//! checkpoint and exits 130, and the next run resumes there, so every post is sent to Vision once;
//! a finished walk has nothing left. On SQLite (the embedded default) and MariaDB.

#![allow(clippy::unwrap_used)]

#[path = "../social/tests/fake_vision/mod.rs"]
mod fake_vision;
mod flow_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use fake_vision::{FakeVision, Mode};
use flow_support::{Proc, account, call, unique_dir};
use serde_json::json;
use tokio::io::AsyncReadExt as _;

const POSTS: usize = 10;

fn png(seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(16, 12, |x, y| {
        image::Rgb([x as u8 * 8, y as u8 * 9, seed.wrapping_mul(25)])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn now_micros() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

/// Runs `instar tags backfill ARGS` to its end: (exit code, stdout, stderr).
async fn backfill(envs: &[(&str, String)], args: &[&str]) -> (i32, String, String) {
    let child = spawn_backfill(envs, args);
    finish(child).await
}

fn spawn_backfill(envs: &[(&str, String)], args: &[&str]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_instar"));
    cmd.args(["tags", "backfill"])
        .args(args)
        .env("INSTAR_LOG", "info")
        .env_remove("INSTAR_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().expect("instar starts")
}

async fn finish(mut child: tokio::process::Child) -> (i32, String, String) {
    let mut out = String::new();
    let mut err = String::new();
    let (mut o, mut e) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(120), async {
        let (r1, r2) = tokio::join!(o.read_to_string(&mut out), e.read_to_string(&mut err));
        r1.unwrap();
        r2.unwrap();
        child.wait().await.unwrap()
    })
    .await
    .expect("the backfill ends in time");
    eprintln!("[backfill stdout]\n{out}\n[backfill stderr]\n{err}");
    (status.code().unwrap_or(-1), out, err)
}

async fn backfill_resumes_after_ctrl_c(mysql: Option<String>) {
    let dir = unique_dir("tags-backfill");
    std::fs::create_dir_all(&dir).unwrap();
    let db_url = match mysql {
        Some(base) => {
            let url = format!(
                "{}/instar_backfill_{}_{}",
                base.trim_end_matches('/'),
                std::process::id(),
                now_micros()
            );
            migrations::create_database(&url).await.unwrap();
            url
        }
        None => format!("sqlite://{}", dir.join("instar.db").display()),
    };
    let base_envs = vec![
        ("INSTAR_JWT_SECRET", flow_support::SECRET.to_owned()),
        ("INSTAR_DATA_DIR", dir.display().to_string()),
        ("INSTAR_DATABASE_URL", db_url.clone()),
    ];
    // Posts made while labelling is off.
    let mut serve_envs = base_envs.clone();
    serve_envs.push(("INSTAR_LISTEN", "127.0.0.1:0".to_owned()));
    serve_envs.push(("INSTAR_TCP_LISTEN", "off".to_owned()));
    let mut server = Proc::spawn("backfill-serve", &["serve"], &serve_envs).await;
    let http = reqwest::Client::new();
    let token = account(&server.base(), &server.log, &http, "painter01").await;
    let mut posts = Vec::new();
    for i in 0..POSTS {
        let form = reqwest::multipart::Form::new()
            .part(
                "images",
                reqwest::multipart::Part::bytes(png(u8::try_from(i).unwrap()))
                    .file_name("a.png")
                    .mime_str("image/png")
                    .unwrap(),
            )
            .text("data", json!({"comment": format!("post {i}")}).to_string());
        let (s, b) = call(
            http.post(format!("{}/api/post/create", server.base()))
                .bearer_auth(&token)
                .multipart(form),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        posts.push(b["postId"].as_i64().unwrap());
    }
    server.kill().await;
    let (pool, _) = migrations::connect(&db_url, &migrations::PoolSettings::default())
        .await
        .unwrap();
    let ai_tagged = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(DISTINCT post_id) FROM post_tags WHERE type = 'AI_TAG'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        usize::try_from(n).unwrap()
    };
    assert_eq!(ai_tagged().await, 0);

    // Without Vision: a clear refusal, nothing done.
    let (code, _, err) = backfill(&base_envs, &[]).await;
    assert_ne!(code, 0);
    assert!(err.contains("INSTAR_TAGS_VISION_API_KEY"), "{err}");

    let fake = FakeVision::start(Mode::Labels(vec!["Sky".into(), "Cloud".into()])).await;
    let mut envs = base_envs.clone();
    envs.push(("INSTAR_TAGS_VISION_API_KEY", "test-key".to_owned()));
    envs.push(("INSTAR_TAGS_VISION_ENDPOINT", fake.endpoint()));

    // A dry run counts and sends nothing.
    let (code, out, _) = backfill(&envs, &["--dry-run"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("{POSTS} posts to label after post 0")),
        "{out}"
    );
    assert_eq!(fake.calls(), 0);

    // A slow run (5 images/s, one at a time) stopped by Ctrl-C once a few are labelled.
    let child = spawn_backfill(
        &envs,
        &["--rate", "5", "--concurrency", "1", "--batch", "4"],
    );
    let pid = child.id().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.calls() < 3 {
        assert!(
            Instant::now() < deadline,
            "the backfill never called Vision"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let (code, out, err) = finish(child).await;
    assert_eq!(code, 130, "{out}{err}");
    assert!(out.contains("tags backfill stopped"), "{out}");
    // Not a TTY: progress as plain lines.
    assert!(err.contains(&format!("/{POSTS} posts")), "{err}");
    let first_calls = fake.calls();
    let done = ai_tagged().await;
    assert!(
        (3..POSTS).contains(&done),
        "{done} labelled when stopped, {first_calls} calls"
    );
    assert_eq!(done, first_calls, "every answer stored before stopping");
    let after: i64 = sqlx::query_scalar("SELECT after_id FROM tag_backfill")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(after, posts[done - 1]);

    // The next run resumes: the rest, each post sent once.
    let (code, out, _) = backfill(&envs, &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("finished: {} posts", POSTS - done)),
        "{out}"
    );
    assert_eq!(fake.calls(), POSTS, "no post labelled twice");
    assert_eq!(ai_tagged().await, POSTS);
    let (labelled, after): (i64, i64) =
        sqlx::query_as("SELECT labelled, after_id FROM tag_backfill")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(labelled, i64::try_from(POSTS).unwrap());
    assert_eq!(after, *posts.last().unwrap());
    let mut tags: Vec<(String, String)> =
        sqlx::query_as("SELECT tag_name, type FROM post_tags WHERE post_id = ?")
            .bind(posts[0])
            .fetch_all(&pool)
            .await
            .unwrap();
    tags.sort();
    assert_eq!(
        tags,
        vec![
            ("Cloud".to_owned(), "AI_TAG".to_owned()),
            ("Sky".to_owned(), "AI_TAG".to_owned()),
        ]
    );

    // Nothing left: a finished walk sends nothing more.
    let (code, out, _) = backfill(&envs, &[]).await;
    assert_eq!(code, 0);
    assert!(out.contains("finished: 0 posts"), "{out}");
    assert_eq!(fake.calls(), POSTS);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_resumes_after_ctrl_c_sqlite() {
    backfill_resumes_after_ctrl_c(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_resumes_after_ctrl_c_mysql() {
    let url = std::env::var("INSTAR_TEST_MYSQL_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "mysql://instar:instar@127.0.0.1:3306".to_owned());
    backfill_resumes_after_ctrl_c(Some(url)).await;
}
