//! Chat under faults, scaled out, driven by `loadtest faults` and counted in the database:
//!
//! * a real process crash: two `instar gateway` nodes and two `instar social` processes on
//!   MariaDB, RabbitMQ and Redis, with two senders in every room (one on each gateway, so the
//!   room's commands come from two sessions on two nodes). Three seconds in, one social process
//!   is killed with SIGKILL while it holds half of the command shards and has commands in flight.
//!   The survivor takes its shards over;
//! * a database outage: a private MariaDB instance (never the machine's own) shut down and started
//!   again 8 s later under load; the social process's commands wait and are retried.
//!
//! Either way the report must show nothing accepted and lost, nothing stored twice, nothing
//! delivered twice, every stored message delivered, and no room's messages delivered out of
//! message-id order.
#![allow(clippy::unwrap_used)]

mod flow_support;
mod scaleout_support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flow_support::{Proc, SECRET, loadtest_bin, run_loadtest, unique_dir};
use scaleout_support::{Services, eventually, service};

/// Rooms of the run. Rooms 1..=6 of a fresh database hash to six different command shards of
/// eight, so each of the two social processes (four shards each) owns some of them.
const ROOMS: usize = 6;

/// Starts `instar <command>` (`gateway` or `social`) of the test's deployment, with `extra`
/// settings.
async fn start(
    command: &str,
    tag: &str,
    services: &Services,
    db_url: &str,
    extra: &[(&'static str, String)],
) -> Proc {
    let mut env = services.process_env(
        SECRET,
        &[
            ("INSTAR_DATABASE_URL", db_url.to_owned()),
            ("INSTAR_TCP_LISTEN", "off".into()),
        ],
    );
    if command == "social" {
        env.push(("INSTAR_REDIS_PREFIX", format!("{}:", services.prefix)));
    } else {
        env.push(("INSTAR_NODE_ID", format!("{}{tag}", services.prefix)));
    }
    env.extend_from_slice(extra);
    Proc::spawn(tag, &[command], &env).await
}

/// What both faults must leave: nothing accepted and lost, nothing stored or delivered twice,
/// every stored message delivered, in message-id order. Nearly every SEND is accepted (the
/// gateways stay up and take a SEND on the broker's word); the few a loaded test machine may
/// leave unsent or unanswered (a session timed out and reconnected) are the harness's, and are
/// only counted. Returns the messages of the run.
fn assert_exactly_once(report: &serde_json::Value, stdout: &str) -> u64 {
    let f = &report["faults"];
    let t = &f["tally"];
    let n = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k}: {stdout}"));
    let planned = report["parameters"]["messages_planned"].as_u64().unwrap();
    assert_eq!(n("attempted"), planned, "{stdout}");
    assert!(n("accepted") * 100 >= planned * 95, "{stdout}");
    assert_eq!(f["stored_from"], "database", "{stdout}");
    for k in [
        "refused",
        "lost",
        "stored_twice",
        "stored_refused",
        "duplicated",
        "undelivered",
        "phantom",
    ] {
        assert_eq!(n(k), 0, "{k}: {stdout}");
    }
    assert!(n("stored") >= n("accepted"), "{stdout}");
    assert_eq!(n("delivered"), n("stored"), "{stdout}");
    assert_eq!(f["out_of_order"], 0, "messages out of id order: {stdout}");
    assert_eq!(f["faults"][0]["exit_code"], 0, "{stdout}");
    planned
}

/// A value from the `/metrics` of the process at `base`, if it answers.
async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{base}/metrics"))
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
    let Some(loadtest) = loadtest_bin() else {
        return;
    };
    let db_url = format!("{}/{}", mysql.trim_end_matches('/'), services.prefix);
    migrations::create_database(&db_url).await.unwrap();
    let lease = [("INSTAR_WORKER_LEASE_TTL_MS", "1500".to_owned())];
    // One after the other: the first migrates the database.
    let social_1 = start("social", "social-1", &services, &db_url, &lease).await;
    let mut social_2 = start("social", "social-2", &services, &db_url, &lease).await;
    let gw_a = start("gateway", "gw-a", &services, &db_url, &[]).await;
    let gw_b = start("gateway", "gw-b", &services, &db_url, &[]).await;
    seed_members(&db_url, 2 * ROOMS).await;

    let http = reqwest::Client::new();
    let owned = "instar_bus_work_shards_owned";
    eventually(
        Duration::from_secs(20),
        "the two social processes share the shards",
        || {
            let (http, s1, s2) = (&http, &social_1, &social_2);
            async move {
                metric(http, &s1.base(), owned).await == Some(4.0)
                    && metric(http, &s2.base(), owned).await == Some(4.0)
            }
        },
    )
    .await;

    // What the victim handled before it died: it must have had a share of the load.
    let handled_by_victim = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (http, handled, base) = (http.clone(), handled_by_victim.clone(), social_2.base());
        tokio::spawn(async move {
            while let Some(n) = metric(&http, &base, "instar_bus_commands_handled_total").await {
                handled.store(n as u64, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let victim = social_2.child.id().unwrap();
    let (urls, fault, rooms) = (
        [gw_a.addr.as_str(), gw_b.addr.as_str()].map(|a| format!("ws://{a}/stomp")),
        format!("3:kill -9 {victim}"),
        ROOMS.to_string(),
    );
    let (report, stdout) = run_loadtest(
        &loadtest,
        [
            "faults",
            "--url",
            &urls[0],
            "--url",
            &urls[1],
            "--api",
            &social_1.base(),
            "--jwt-secret",
            SECRET,
            "--rooms",
            &rooms,
            "--senders-per-room",
            "2",
            "--rate",
            "400",
            "--duration",
            "8",
            "--drain",
            "25",
            "--backoff-min-ms",
            "50",
            "--backoff-max-ms",
            "500",
            "--fault",
            &fault,
            "--database-url",
            &db_url,
            "--connect-timeout",
            "10",
            "--timeout",
            "120",
        ],
    )
    .await;
    let exited = tokio::time::timeout(Duration::from_secs(5), social_2.child.wait()).await;
    assert!(
        exited.is_ok_and(|s| s.is_ok()),
        "the fault did not kill social-2"
    );
    watcher.abort();
    eprintln!("{stdout}");
    let planned = assert_exactly_once(&report, &stdout);
    assert!(planned > 1500, "{stdout}");
    let f = &report["faults"];
    // The gateways stayed up: at most a session the loaded machine timed out reconnected.
    for k in ["sender_reconnects", "receiver_reconnects"] {
        assert!(f[k].as_u64().unwrap() <= 2, "{k}: {stdout}");
    }
    assert!(
        handled_by_victim.load(Ordering::SeqCst) > 0,
        "the killed process handled no command before it died: {stdout}"
    );
    // The survivor took every shard; deliveries resumed within the worker lease and some slack.
    assert_eq!(metric(&http, &social_1.base(), owned).await, Some(8.0));
    for k in ["accepting_again_s", "delivering_again_s"] {
        if let Some(s) = f["faults"][0][k].as_f64() {
            assert!(s < 15.0, "{k} = {s}: {stdout}");
        }
    }
    drop((gw_a, gw_b, social_1));
    services.clean().await;
}

/// Adds users `chat00001 ..= chat{n}` (the harness signs their tokens; no password needed).
async fn seed_members(db_url: &str, n: usize) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(db_url)
        .await
        .unwrap();
    for i in 1..=n {
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

/// A private MariaDB server on a free port with its data under a scratch directory, and a shell
/// script that stops it, waits, and starts it again (the fault). Stopped and removed on drop.
struct PrivateMariaDb {
    dir: PathBuf,
    port: u16,
}

impl PrivateMariaDb {
    /// `None` (skip) when the MariaDB server binaries are missing outside CI.
    fn start() -> Option<PrivateMariaDb> {
        let found = ["mariadbd", "mariadb-install-db", "mariadb"]
            .iter()
            .all(|b| {
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {b} || test -x /usr/sbin/{b}"))
                    .output()
                    .is_ok_and(|o| o.status.success())
            });
        if !found {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "the MariaDB server is not installed: run scripts/test");
            eprintln!("note: no MariaDB server binaries; skipping");
            return None;
        }
        let dir = unique_dir("private-mariadb");
        std::fs::create_dir_all(&dir).unwrap();
        let port = scaleout_support::free_port();
        let user = String::from_utf8(
            std::process::Command::new("id")
                .arg("-un")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_owned();
        let d = dir.display();
        let start = format!(
            "PATH=$PATH:/usr/sbin; (setsid mariadbd --no-defaults --datadir={d}/data --port={port} \
             --bind-address=127.0.0.1 --socket={d}/mysql.sock --pid-file={d}/mysqld.pid \
             --user={user} --innodb-buffer-pool-size=32M --log-error={d}/error.log \
             </dev/null >/dev/null 2>&1 &)"
        );
        let stop = format!(
            "mariadb --no-defaults -S {d}/mysql.sock -u root -e SHUTDOWN; \
             for i in $(seq 300); do [ -e {d}/mysqld.pid ] || break; sleep 0.1; done"
        );
        std::fs::write(dir.join("start.sh"), format!("#!/bin/sh\n{start}\n")).unwrap();
        std::fs::write(dir.join("stop.sh"), format!("#!/bin/sh\n{stop}\n")).unwrap();
        std::fs::write(
            dir.join("restart.sh"),
            format!("#!/bin/sh\nsh {d}/stop.sh\nsleep \"$1\"\nsh {d}/start.sh\n"),
        )
        .unwrap();
        let install = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "PATH=$PATH:/usr/sbin mariadb-install-db --no-defaults --datadir={d}/data \
                 --user={user} --auth-root-authentication-method=normal"
            ))
            .output()
            .unwrap();
        assert!(
            install.status.success(),
            "{}",
            String::from_utf8_lossy(&install.stderr)
        );
        let db = PrivateMariaDb { dir, port };
        db.sh("start.sh", &[]);
        let sock = db.dir.join("mysql.sock");
        let mut ready = false;
        for _ in 0..300 {
            if sock.exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(ready, "the private MariaDB did not start");
        let out = std::process::Command::new("mariadb")
            .args(["--no-defaults", "-S"])
            .arg(&sock)
            .args(["-u", "root", "-e"])
            .arg(
                "CREATE USER 'instar'@'127.0.0.1' IDENTIFIED BY 'instar'; \
                 GRANT ALL ON *.* TO 'instar'@'127.0.0.1';",
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(db)
    }

    fn sh(&self, script: &str, args: &[&str]) {
        let status = std::process::Command::new("sh")
            .arg(self.dir.join(script))
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "{script} failed");
    }

    fn url(&self, db: &str) -> String {
        format!("mysql://instar:instar@127.0.0.1:{}/{db}", self.port)
    }

    /// The fault command: stop the server, wait `seconds`, start it again.
    fn restart_command(&self, seconds: u64) -> String {
        format!("sh {} {seconds}", self.dir.join("restart.sh").display())
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .arg(self.dir.join("stop.sh"))
            .status();
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("mysqld.pid")) {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_chat_load_loses_and_repeats_nothing() {
    let Some(services) = Services::get("cdb") else {
        return;
    };
    let Some(loadtest) = loadtest_bin() else {
        return;
    };
    let Some(mariadb) = PrivateMariaDb::start() else {
        return;
    };
    let db_url = mariadb.url("chat");
    migrations::create_database(&db_url).await.unwrap();
    let social = start("social", "social", &services, &db_url, &[]).await;
    let gw = start("gateway", "gw", &services, &db_url, &[]).await;
    seed_members(&db_url, 4).await;

    let (url, fault) = (
        format!("ws://{}/stomp", gw.addr),
        format!("3:{}", mariadb.restart_command(8)),
    );
    let (report, stdout) = run_loadtest(
        &loadtest,
        [
            "faults",
            "--url",
            &url,
            "--api",
            &social.base(),
            "--jwt-secret",
            SECRET,
            "--rooms",
            "2",
            "--senders-per-room",
            "2",
            "--rate",
            "100",
            "--duration",
            "14",
            "--drain",
            "40",
            "--fault",
            &fault,
            "--database-url",
            &db_url,
            "--connect-timeout",
            "10",
            "--timeout",
            "120",
        ],
    )
    .await;
    eprintln!("{stdout}");
    let planned = assert_exactly_once(&report, &stdout);
    assert!(planned >= 1300, "{stdout}");
    // Deliveries paused while the database was away and resumed once it was back.
    let resumed = report["faults"]["faults"][0]["delivering_again_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("deliveries never resumed: {stdout}"));
    assert!(
        (7.0..30.0).contains(&resumed),
        "delivering again after {resumed} s: {stdout}"
    );
    let http = reqwest::Client::new();
    // Commands waited on the pool (10 s acquire timeout) and, past it, in the bus's retries
    // (`a_command_is_retried_for_the_retry_time_then_dropped`); none was given up.
    let retried = metric(&http, &social.base(), "instar_bus_commands_retried_total").await;
    eprintln!("commands retried by the bus: {retried:?}");
    assert_eq!(
        metric(&http, &social.base(), "instar_bus_commands_failed_total").await,
        Some(0.0)
    );
    drop((gw, social));
    services.clean().await;
}
