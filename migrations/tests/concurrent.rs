//! Several processes starting at once against a fresh MariaDB/MySQL database (a scale-out deploy:
//! gateways and social processes all migrate at start) must all come up: one applies, the others
//! wait for it. Skipped without `INSTAR_TEST_MYSQL_URL` (the test command sets it).

use std::time::{SystemTime, UNIX_EPOCH};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_migrations_of_a_fresh_database_all_succeed() {
    let Ok(base) = std::env::var("INSTAR_TEST_MYSQL_URL") else {
        eprintln!("INSTAR_TEST_MYSQL_URL unset: skipped");
        return;
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let url = format!(
        "{}/instar_migrate_race_{}_{nanos}",
        base.trim_end_matches('/'),
        std::process::id()
    );
    migrations::create_database(&url).await.unwrap();
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let (pool, backend) =
                    migrations::connect(&url, &migrations::PoolSettings::default()).await?;
                let result = migrations::migrate(&pool, backend).await;
                pool.close().await;
                result
            })
        })
        .collect();
    let mut failures = Vec::new();
    for run in runs {
        if let Err(e) = run.await.unwrap() {
            failures.push(e.to_string());
        }
    }
    let (pool, _) = migrations::connect(&url, &migrations::PoolSettings::default())
        .await
        .unwrap();
    let applied: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = TRUE")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    migrations::drop_database(&url).await.unwrap();
    assert!(failures.is_empty(), "migration runs failed: {failures:?}");
    assert_eq!(
        usize::try_from(applied).unwrap(),
        migrations::MYSQL.iter().count(),
        "every migration applied once"
    );
}
