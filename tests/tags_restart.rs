//! Pending labelling jobs survive a SIGKILL of `instar serve` (docs/tagging.md): a post created
//! while Vision is down is answered at once and keeps its `tag_job` row; the process is killed
//! while the job waits for its next try; a new process on the same database finishes it once
//! Vision answers. On SQLite (the embedded default) and MariaDB.

#![allow(clippy::unwrap_used)]

#[path = "../social/tests/fake_vision/mod.rs"]
mod fake_vision;
mod flow_support;

use std::time::{Duration, Instant};

use fake_vision::{FakeVision, Mode};
use flow_support::{Proc, account, call, unique_dir};
use serde_json::json;

fn png() -> Vec<u8> {
    let img = image::RgbImage::from_fn(32, 24, |x, y| image::Rgb([x as u8 * 8, y as u8 * 9, 90]));
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

async fn pending_jobs_survive_sigkill(mysql: Option<String>) {
    let fake = FakeVision::start(Mode::Status(503, "down".into(), None)).await;
    let dir = unique_dir("tags");
    let db_url = match mysql {
        Some(base) => {
            let url = format!(
                "{}/instar_tags_{}_{}",
                base.trim_end_matches('/'),
                std::process::id(),
                now_micros()
            );
            migrations::create_database(&url).await.unwrap();
            url
        }
        None => {
            std::fs::create_dir_all(&dir).unwrap();
            format!("sqlite://{}", dir.join("instar.db").display())
        }
    };
    let envs = vec![
        ("INSTAR_LISTEN", "127.0.0.1:0".to_owned()),
        ("INSTAR_TCP_LISTEN", "off".into()),
        ("INSTAR_JWT_SECRET", flow_support::SECRET.into()),
        ("INSTAR_DATA_DIR", dir.display().to_string()),
        ("INSTAR_DATABASE_URL", db_url.clone()),
        ("INSTAR_TAGS_VISION_API_KEY", "test-key".into()),
        ("INSTAR_TAGS_VISION_ENDPOINT", fake.endpoint()),
        ("INSTAR_TAGS_VISION_TIMEOUT_SECS", "2".into()),
    ];
    let mut first = Proc::spawn("tags-1", &["serve"], &envs).await;
    let http = reqwest::Client::new();
    let token = account(&first.base(), &first.log, &http, "tagger01").await;
    let form = reqwest::multipart::Form::new()
        .part(
            "images",
            reqwest::multipart::Part::bytes(png())
                .file_name("a.png")
                .mime_str("image/png")
                .unwrap(),
        )
        .text(
            "data",
            json!({"comment": "sky", "hashtags": ["sky"]}).to_string(),
        );
    let started = Instant::now();
    let (s, b) = call(
        http.post(format!("{}/api/post/create", first.base()))
            .bearer_auth(&token)
            .multipart(form),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let post = b["postId"].as_i64().unwrap();

    let (pool, _) = migrations::connect(&db_url, &migrations::PoolSettings::default())
        .await
        .unwrap();
    // Kill while the job waits for its next try (failed at least once, not claimed now).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT attempts, next_at FROM tag_job WHERE post_id = ?")
                .bind(post)
                .fetch_optional(&pool)
                .await
                .unwrap();
        let (attempts, next_at) = row.expect("the job is queued");
        let wait = next_at - now_micros();
        if attempts >= 1 && (500_000..30_000_000).contains(&wait) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job never waited for a retry"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().await;
    let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tag_job")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 1);

    fake.set(Mode::Labels(vec!["Sky".into(), "Cloud".into()]));
    let _second = Proc::spawn("tags-2", &["serve"], &envs).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut tags: Vec<(String, String)> =
            sqlx::query_as("SELECT tag_name, type FROM post_tags WHERE post_id = ?")
                .bind(post)
                .fetch_all(&pool)
                .await
                .unwrap();
        tags.sort();
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tag_job")
            .fetch_one(&pool)
            .await
            .unwrap();
        if pending == 0 {
            assert_eq!(
                tags,
                vec![
                    ("Cloud".to_owned(), "AI_TAG".to_owned()),
                    ("Sky".to_owned(), "AI_TAG".to_owned()),
                    ("sky".to_owned(), "HASH_TAG".to_owned()),
                ]
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job was not finished after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_jobs_survive_sigkill_sqlite() {
    pending_jobs_survive_sigkill(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_jobs_survive_sigkill_mysql() {
    let url = std::env::var("INSTAR_TEST_MYSQL_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "mysql://instar:instar@127.0.0.1:3306".to_owned());
    pending_jobs_survive_sigkill(Some(url)).await;
}
