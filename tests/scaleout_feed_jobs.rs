//! The feed's recompute as a cluster job across two real `instar social` processes on one MariaDB
//! and one Redis, each with its own scheduler (docs/feed.md, "Jobs"):
//! - every slot runs exactly once in the cluster (one "job run done" per slot, one done mark);
//! - a holder frozen mid-run (SIGSTOP) past its lock's lifetime is taken over by the other process,
//!   and once it wakes up its late list writes are refused (fencing): nothing it would write
//!   appears, and it counts the run as `lost`;
//! - a holder SIGKILLed mid-run is taken over once its lock expires (not before: the lock is not
//!   released), and a write under its owner token after the takeover is refused.
//!
//! The slot comes every few seconds (`INSTAR_FEED_RECOMPUTE_EVERY_SECS`), the lock lives 1.5 s
//! (`INSTAR_FEED_JOB_LOCK_TTL_MS`) and each run pauses before every active user's list
//! (`INSTAR_FEED_TEST_USER_DELAY_MS`, testing only) so that a run lasts long enough to interrupt.
#![allow(clippy::unwrap_used)]

mod flow_support;
mod scaleout_support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use flow_support::{Proc, SECRET, unique_dir};
use scaleout_support::{service, unique};

const PERIOD_SECS: u64 = 8;
const LOCK_TTL_MS: u64 = 1_500;
const USERS: usize = 16;
const USER_DELAY_MS: u64 = 150;
const JOB: &str = "updateUserInterest";

/// The slots of `proc`'s log lines about the recompute job saying `what` (`job run starting`,
/// …).
fn job_lines(proc: &Proc, what: &str) -> Vec<String> {
    slot_lines(proc, what, &format!("job={JOB}"))
}

/// The slots of `proc`'s log lines saying `what` and `also`.
fn slot_lines(proc: &Proc, what: &str, also: &str) -> Vec<String> {
    proc.log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(what) && l.contains(also))
        .filter_map(|l| {
            l.split("slot=")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .map(str::to_owned)
        })
        .collect()
}

/// Waits until one of `procs` logs `what` for the recompute at a slot not in `seen`; returns
/// (the process's index, the slot).
async fn next_slot(procs: &[&Proc], what: &str, seen: &HashSet<String>) -> (usize, String) {
    let deadline = Instant::now() + Duration::from_secs(3 * PERIOD_SECS + 10);
    loop {
        for (i, p) in procs.iter().enumerate() {
            if let Some(slot) = job_lines(p, what).into_iter().find(|s| !seen.contains(s)) {
                return (i, slot);
            }
        }
        assert!(Instant::now() < deadline, "no new slot logged {what:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `proc` logs `what` for `slot`, for the recompute job (the minute job shares
/// slots with it on minute boundaries).
async fn logged(proc: &Proc, what: &str, slot: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    // "job run ..." lines name their job; other lines (warnings, results) are the recompute's.
    let also = if what.starts_with("job run") {
        format!("job={JOB}")
    } else {
        String::new()
    };
    while !slot_lines(proc, what, &also).iter().any(|s| s == slot) {
        assert!(
            Instant::now() < deadline,
            "not logged in time: {what:?} for slot {slot}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signal(proc: &Proc, sig: &str) {
    let pid = proc.child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

async fn metrics(proc: &Proc) -> String {
    reqwest::get(format!("{}/metrics", proc.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, row: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(row)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{row} missing: {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recompute_runs_once_per_slot_and_survives_a_frozen_and_a_killed_holder() {
    let (Some(amqp), Some(redis_url), Some(mysql)) = (
        service("INSTAR_TEST_AMQP_URL"),
        service("INSTAR_TEST_REDIS_URL"),
        service("INSTAR_TEST_MYSQL_URL"),
    ) else {
        return;
    };
    let prefix = unique("feedjob");
    let db_url = format!("{}/{prefix}", mysql.trim_end_matches('/'));
    migrations::create_database(&db_url).await.unwrap();
    let media = unique_dir("feedjob-media");
    let env = vec![
        ("INSTAR_AMQP_URL", amqp.clone()),
        ("INSTAR_REDIS_URL", redis_url.clone()),
        ("INSTAR_REDIS_PREFIX", format!("{prefix}:")),
        ("INSTAR_BUS_PREFIX", prefix.clone()),
        ("INSTAR_JWT_SECRET", SECRET.into()),
        ("INSTAR_DATABASE_URL", db_url.clone()),
        ("INSTAR_MEDIA_DIR", media.display().to_string()),
        ("INSTAR_LISTEN", "127.0.0.1:0".into()),
        ("INSTAR_FEED_RECOMPUTE_EVERY_SECS", PERIOD_SECS.to_string()),
        ("INSTAR_FEED_JOB_LOCK_TTL_MS", LOCK_TTL_MS.to_string()),
        ("INSTAR_FEED_TEST_USER_DELAY_MS", USER_DELAY_MS.to_string()),
    ];
    // The first migrates the database; the active users are seeded before the second starts.
    let mut a = Proc::spawn("social-a", &["social"], &env).await;
    let db = sqlx::MySqlPool::connect(&db_url).await.unwrap();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    let users: Vec<String> = (0..USERS).map(|i| format!("fj{i:02}")).collect();
    for u in &users {
        sqlx::query(
            "INSERT INTO user (id, name, email, last_login_at, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(u)
        .bind(u)
        .bind(format!("{u}@example.com"))
        .bind(now)
        .bind(now)
        .execute(&db)
        .await
        .unwrap();
    }
    let mut b = Proc::spawn("social-b", &["social"], &env).await;
    let redis = redis::Client::open(redis_url.as_str()).unwrap();
    let mut r = redis.get_multiplexed_async_connection().await.unwrap();
    let list_keys: Vec<String> = users
        .iter()
        .map(|u| format!("{prefix}:feed:list:{u}"))
        .collect();
    let lock_key = format!("{prefix}:job:{JOB}");
    let mut seen: HashSet<String> = HashSet::new();
    // Slots that started before both processes were up are left out.
    for p in [&a, &b] {
        seen.extend(job_lines(p, "job run starting"));
    }

    // 1. A slot with both processes up: one runs it, the other finds it busy, then done.
    let (h, slot1) = next_slot(&[&a, &b], "job run starting", &seen).await;
    seen.insert(slot1.clone());
    let (holder, other) = if h == 0 { (&a, &b) } else { (&b, &a) };
    logged(holder, "job run done", &slot1, Duration::from_secs(20)).await;
    let text = metrics(holder).await;
    assert!(metric(&text, "instar_feed_users_processed_total") >= USERS as f64);
    assert!(metric(&text, &format!("instar_job_seconds_sum{{job=\"{JOB}\"}}")) > 0.0);
    let listed: i64 = redis::cmd("EXISTS")
        .arg(&list_keys)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(listed, USERS as i64, "every active user's list written");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !job_lines(other, "job run starting").contains(&slot1),
        "the other process ran slot {slot1} too"
    );

    // 2. The holder freezes mid-run: the other takes the slot over once the lock expires; the
    //    frozen one, woken up, writes nothing.
    let (h, slot2) = next_slot(&[&a, &b], "job run starting", &seen).await;
    seen.insert(slot2.clone());
    let (frozen, survivor) = if h == 0 { (&a, &b) } else { (&b, &a) };
    // Frozen in the list rebuilds, after the scores' transaction (a transaction frozen open would
    // hold its row locks until MariaDB's lock wait timeout).
    logged(
        frozen,
        "interest scores recomputed",
        &slot2,
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(frozen, "-STOP");
    let stopped = Instant::now();
    logged(
        survivor,
        "job run starting",
        &slot2,
        Duration::from_secs(10),
    )
    .await;
    let taken_over = stopped.elapsed();
    assert!(
        taken_over >= Duration::from_millis(LOCK_TTL_MS / 2),
        "taken over {taken_over:?} after the freeze: before the lock expired"
    );
    logged(survivor, "job run done", &slot2, Duration::from_secs(20)).await;
    // What the frozen holder would still write: the lists are cleared so any late write shows.
    let _: i64 = redis::cmd("DEL")
        .arg(&list_keys)
        .query_async(&mut r)
        .await
        .unwrap();
    signal(frozen, "-CONT");
    logged(
        frozen,
        "job lost its lock while running",
        &slot2,
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3 * USER_DELAY_MS)).await;
    let late: i64 = redis::cmd("EXISTS")
        .arg(&list_keys)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(
        late, 0,
        "the fenced-off holder wrote lists after it woke up"
    );
    let text = metrics(frozen).await;
    assert_eq!(
        metric(
            &text,
            &format!("instar_job_runs_total{{job=\"{JOB}\",outcome=\"lost\"}}")
        ),
        1.0
    );

    // 3. The holder is SIGKILLed mid-run: its lock is not released, so the other takes over
    //    only once it expires; a write under the dead owner's token is refused afterwards.
    let (h, slot3) = next_slot(&[&a, &b], "job run starting", &seen).await;
    seen.insert(slot3.clone());
    let owner: String = redis::cmd("GET")
        .arg(&lock_key)
        .query_async(&mut r)
        .await
        .unwrap();
    let (killed, survivor) = if h == 0 { (&mut a, &b) } else { (&mut b, &a) };
    logged(
        killed,
        "interest scores recomputed",
        &slot3,
        Duration::from_secs(10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    killed.kill().await;
    let killed_at = Instant::now();
    logged(
        survivor,
        "job run starting",
        &slot3,
        Duration::from_secs(10),
    )
    .await;
    let taken_over = killed_at.elapsed();
    assert!(
        taken_over >= Duration::from_millis(LOCK_TTL_MS / 2),
        "taken over {taken_over:?} after the kill: before the lock expired"
    );
    logged(survivor, "job run done", &slot3, Duration::from_secs(20)).await;
    let state = social::feed::state::RedisFeedState::connect(&redis_url, &format!("{prefix}:"))
        .await
        .unwrap();
    let before: Vec<String> = redis::cmd("LRANGE")
        .arg(&list_keys[0])
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    let wrote = state
        .put_list_fenced(&users[0], &[42], Some((&format!("job:{JOB}"), &owner)))
        .await
        .unwrap();
    assert!(
        !wrote,
        "a write under the killed holder's token went through"
    );
    let after: Vec<String> = redis::cmd("LRANGE")
        .arg(&list_keys[0])
        .arg(0)
        .arg(-1)
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(before, after);
    assert_eq!(after.len(), 1, "the survivor's (empty) list: {after:?}");

    // Exactly once per slot: one "done" per slot in the whole cluster (the killed process's log
    // included), each with its mark in Redis (slots up to the third: a later one may be under
    // way).
    let ms = |slot: &str| slot.parse::<jiff::Timestamp>().unwrap().as_millisecond();
    let last = ms(&slot3);
    let mut done = Vec::new();
    for p in [&a, &b] {
        done.extend(job_lines(p, "job run done").into_iter().map(|s| ms(&s)));
    }
    done.retain(|&t| t <= last);
    let distinct: HashSet<i64> = done.iter().copied().collect();
    assert_eq!(distinct.len(), done.len(), "a slot ran twice: {done:?}");
    for slot in [&slot1, &slot2, &slot3] {
        assert!(
            distinct.contains(&ms(slot)),
            "slot {slot} not done: {done:?}"
        );
    }
    let marks: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:job:{JOB}:done:*"))
        .query_async(&mut r)
        .await
        .unwrap();
    let marked: HashSet<i64> = marks
        .iter()
        .filter_map(|k| k.rsplit(':').next()?.parse().ok())
        .filter(|&t| t <= last)
        .collect();
    assert_eq!(marked, distinct, "done marks in Redis");

    drop((a, b));
    db.close().await;
    let _ = migrations::drop_database(&db_url).await;
    let _ = std::fs::remove_dir_all(&media);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut r)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut r)
            .await
            .unwrap();
    }
    let config = broker_bridge::AmqpConfig::new(&amqp).with_prefix(&prefix);
    if let Err(e) = config.delete_topology().await {
        eprintln!("note: could not delete the test's AMQP topology: {e}");
    }
}
