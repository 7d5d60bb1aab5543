//! Chat under a real process crash, scaled out: two `instar gateway` nodes and two `instar social`
//! processes on MariaDB, RabbitMQ and Redis, driven by `loadtest faults` with two senders in every
//! room (one on each gateway, so the room's commands come from two sessions on two nodes). Three
//! seconds in, one social process is killed with SIGKILL while it holds half of the command shards
//! and has commands in flight. The survivor takes its shards over; the report, counted in the
//! database, must show nothing accepted and lost, nothing stored twice, nothing delivered twice,
//! every stored message delivered, and no room's messages delivered out of message-id order.
#![allow(clippy::unwrap_used)]

mod flow_support;
mod scaleout_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flow_support::{Proc, SECRET, unique_dir};
use scaleout_support::{Services, eventually, service};

/// Rooms of the run. Rooms 1..=6 of a fresh database hash to six different command shards of
/// eight, so each of the two social processes (four shards each) owns some of them.
const ROOMS: usize = 6;

/// A value from a process's `/metrics`, if it answers.
async fn metric(http: &reqwest::Client, proc: &Proc, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{}/metrics", proc.base()))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_social_process_killed_under_chat_load_loses_repeats_and_reorders_nothing() {
    let Some(services) = Services::get("cf") else {
        return;
    };
    let Some(mysql) = service("INSTAR_TEST_MYSQL_URL") else {
        return;
    };
    let loadtest = std::path::Path::new(env!("CARGO_BIN_EXE_instar")).with_file_name("loadtest");
    if !loadtest.exists() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "{} is missing: build the workspace",
            loadtest.display()
        );
        eprintln!("note: {} is not built; skipping", loadtest.display());
        return;
    }
    let db_url = format!("{}/{}", mysql.trim_end_matches('/'), services.prefix);
    migrations::create_database(&db_url).await.unwrap();
    let common = |extra: &[(&'static str, String)]| {
        let mut v: Vec<(&'static str, String)> = vec![
            ("INSTAR_AMQP_URL", services.amqp.clone()),
            ("INSTAR_REDIS_URL", services.redis.clone()),
            ("INSTAR_BUS_PREFIX", services.prefix.clone()),
            ("INSTAR_JWT_SECRET", SECRET.into()),
            ("INSTAR_DATABASE_URL", db_url.clone()),
            ("INSTAR_LISTEN", "127.0.0.1:0".into()),
            ("INSTAR_TCP_LISTEN", "off".into()),
        ];
        v.extend_from_slice(extra);
        v
    };
    let social_env = common(&[
        ("INSTAR_REDIS_PREFIX", format!("{}:", services.prefix)),
        ("INSTAR_WORKER_LEASE_TTL_MS", "1500".into()),
    ]);
    // One after the other: the first migrates the database.
    let social_1 = Proc::spawn("social-1", &["social"], &social_env).await;
    let mut social_2 = Proc::spawn("social-2", &["social"], &social_env).await;
    let gw_a = Proc::spawn(
        "gw-a",
        &["gateway"],
        &common(&[("INSTAR_NODE_ID", format!("{}a", services.prefix))]),
    )
    .await;
    let gw_b = Proc::spawn(
        "gw-b",
        &["gateway"],
        &common(&[("INSTAR_NODE_ID", format!("{}b", services.prefix))]),
    )
    .await;

    // The rooms' members (the harness signs their tokens; no password needed).
    {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&db_url)
            .await
            .unwrap();
        for i in 1..=2 * ROOMS {
            let id = format!("chat{i:05}");
            sqlx::query(
                "INSERT INTO `user` (id, password, name, email, created_at) \
                 VALUES (?, NULL, ?, ?, 1700000000000000)",
            )
            .bind(&id)
            .bind(format!("Chat {i}"))
            .bind(format!("{id}@example.com"))
            .execute(&pool)
            .await
            .unwrap();
        }
        pool.close().await;
    }

    let http = reqwest::Client::new();
    let owned = "instar_bus_work_shards_owned";
    eventually(
        Duration::from_secs(20),
        "the two social processes share the shards",
        || {
            let (http, s1, s2) = (&http, &social_1, &social_2);
            async move {
                metric(http, s1, owned).await == Some(4.0)
                    && metric(http, s2, owned).await == Some(4.0)
            }
        },
    )
    .await;

    // What the victim handled before it died: it must have had a share of the load.
    let handled_by_victim = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (http, handled, base) = (http.clone(), handled_by_victim.clone(), social_2.base());
        tokio::spawn(async move {
            loop {
                let text = match http
                    .get(format!("{base}/metrics"))
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(_) => return,
                };
                if let Some(n) = text.lines().find_map(|l| {
                    l.strip_prefix("instar_bus_commands_handled_total ")?
                        .trim()
                        .parse::<f64>()
                        .ok()
                }) {
                    handled.store(n as u64, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let victim = social_2.child.id().unwrap();
    let dir = unique_dir("chat-faults");
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("report.json");
    let out = tokio::process::Command::new(&loadtest)
        .arg("faults")
        .arg("--url")
        .arg(format!("ws://{}/stomp", gw_a.addr))
        .arg("--url")
        .arg(format!("ws://{}/stomp", gw_b.addr))
        .arg("--api")
        .arg(social_1.base())
        .args(["--jwt-secret", SECRET])
        .args(["--rooms", &ROOMS.to_string(), "--senders-per-room", "2"])
        .args(["--rate", "400", "--duration", "8", "--drain", "25"])
        .args(["--backoff-min-ms", "50", "--backoff-max-ms", "500"])
        .arg("--fault")
        .arg(format!("3:kill -9 {victim}"))
        .arg("--database-url")
        .arg(&db_url)
        .args(["--connect-timeout", "10", "--timeout", "120", "--quiet"])
        .arg("--json")
        .arg(&json_path)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exited = tokio::time::timeout(Duration::from_secs(5), social_2.child.wait()).await;
    assert!(
        exited.is_ok_and(|s| s.is_ok()),
        "the fault did not kill social-2"
    );
    watcher.abort();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    eprintln!("{stdout}");
    let f = &report["faults"];
    let t = &f["tally"];
    let n = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k}: {stdout}"));
    let planned = report["parameters"]["messages_planned"].as_u64().unwrap();
    assert!(planned > 1500, "{stdout}");
    assert_eq!(n("attempted"), planned, "{stdout}");
    // Gateways stayed up: every SEND was written and answered.
    assert_eq!(n("not_sent"), 0, "{stdout}");
    assert_eq!(n("refused"), 0, "{stdout}");
    assert_eq!(n("unanswered"), 0, "{stdout}");
    assert_eq!(n("accepted"), planned, "{stdout}");
    assert_eq!(f["stored_from"], "database", "{stdout}");
    for k in [
        "lost",
        "stored_twice",
        "stored_unconfirmed",
        "stored_refused",
        "duplicated",
        "undelivered",
        "phantom",
    ] {
        assert_eq!(n(k), 0, "{k}: {stdout}");
    }
    assert_eq!(n("stored"), planned, "{stdout}");
    assert_eq!(n("delivered"), planned, "{stdout}");
    assert_eq!(f["out_of_order"], 0, "messages out of id order: {stdout}");
    // Nothing of the gateways broke: no session had to reconnect.
    assert_eq!(f["sender_reconnects"], 0, "{stdout}");
    assert_eq!(f["receiver_reconnects"], 0, "{stdout}");
    assert!(
        handled_by_victim.load(Ordering::SeqCst) > 0,
        "the killed process handled no command before it died: {stdout}"
    );
    // The survivor took every shard; deliveries resumed within the worker lease and some slack.
    assert_eq!(metric(&http, &social_1, owned).await, Some(8.0));
    let fault = &f["faults"][0];
    assert_eq!(fault["exit_code"], 0, "{stdout}");
    for k in ["accepting_again_s", "delivering_again_s"] {
        if let Some(s) = fault[k].as_f64() {
            assert!(s < 15.0, "{k} = {s}: {stdout}");
        }
    }
    drop((gw_a, gw_b, social_1));
    services.clean().await;
    let _ = std::fs::remove_dir_all(&dir);
}
