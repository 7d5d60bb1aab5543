//! The chat suite (`tests/js/chat_suite.mjs`, @stomp/stompjs over sockjs-client, three users) run
//! twice: against `instar serve` (SQLite, in-process bus), and across two `instar gateway` nodes
//! with an `instar social` worker on MariaDB, RabbitMQ and Redis, where bob's gateway is killed
//! with SIGKILL mid-conversation and bob recovers every message on the other node by resubscribing
//! with the last message id he saw.
#![allow(clippy::unwrap_used)]

mod flow_support;
mod scaleout_support;

use flow_support::{
    Proc, SECRET, account, chat_suite, loadtest_bin, run_loadtest, start, unique_dir,
};
use serde_json::json;
use tokio::sync::Mutex;

const CHECKS: usize = 8;

/// The suite's three users and their account ids.
const USERS: [(&str, &str); 3] = [
    ("alice", "alice01"),
    ("bob", "bobby02"),
    ("carol", "carol03"),
];

fn ids() -> serde_json::Value {
    json!(
        USERS
            .into_iter()
            .collect::<std::collections::HashMap<_, _>>()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_suite_on_the_embedded_server() {
    let server = start().await;
    let http = reqwest::Client::new();
    let mut tokens = serde_json::Map::new();
    for (name, id) in USERS {
        tokens.insert(
            name.into(),
            account(&server.base, &server.log, &http, id).await.into(),
        );
    }
    let ws = vec![format!("{}/ws", server.base)];
    let passed = chat_suite(
        &server.base,
        &ws,
        &ids(),
        &tokens.into(),
        None::<fn(String) -> std::future::Ready<()>>,
    )
    .await;
    assert_eq!(passed.len(), CHECKS, "{passed:?}");
    assert!(passed.last().unwrap().contains("replayed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_suite_across_two_gateway_nodes_with_a_node_killed() {
    let Some(services) = scaleout_support::Services::get("chat") else {
        return;
    };
    let Some(mysql) = scaleout_support::service("INSTAR_TEST_MYSQL_URL") else {
        return;
    };
    let db_url = format!("{}/{}", mysql.trim_end_matches('/'), services.prefix);
    migrations::create_database(&db_url).await.unwrap();
    let media = unique_dir("chat-media");
    let common = |extra: &[(&'static str, String)]| {
        let mut v: Vec<(&'static str, String)> = vec![
            ("INSTAR_AMQP_URL", services.amqp.clone()),
            ("INSTAR_REDIS_URL", services.redis.clone()),
            ("INSTAR_BUS_PREFIX", services.prefix.clone()),
            ("INSTAR_JWT_SECRET", SECRET.into()),
            ("INSTAR_DATABASE_URL", db_url.clone()),
            ("INSTAR_LISTEN", "127.0.0.1:0".into()),
        ];
        v.extend_from_slice(extra);
        v
    };
    // The social worker first: it migrates the database.
    let social = Proc::spawn(
        "social",
        &["social"],
        &common(&[
            ("INSTAR_REDIS_PREFIX", format!("{}:", services.prefix)),
            ("INSTAR_MEDIA_DIR", media.display().to_string()),
        ]),
    )
    .await;
    let a_id = format!("{}a", services.prefix);
    let b_id = format!("{}b", services.prefix);
    let a = Proc::spawn(
        "gw-a",
        &["gateway"],
        &common(&[("INSTAR_NODE_ID", a_id.clone())]),
    )
    .await;
    let b = Proc::spawn(
        "gw-b",
        &["gateway"],
        &common(&[("INSTAR_NODE_ID", b_id.clone())]),
    )
    .await;

    let http = reqwest::Client::new();
    // Every process says it is alive and ready: the social worker has its database, Redis, media
    // and RabbitMQ; the nodes their bus.
    for base in [social.base(), a.base(), b.base()] {
        for (path, want) in [("/health/live", "live\n"), ("/health/ready", "ready\n")] {
            let res = http.get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(res.status(), 200, "{base}{path}");
            assert_eq!(res.text().await.unwrap(), want, "{base}{path}");
        }
    }
    let mut tokens = serde_json::Map::new();
    for (name, id) in USERS {
        tokens.insert(
            name.into(),
            account(&social.base(), &social.log, &http, id).await.into(),
        );
    }
    let ws = vec![format!("{}/ws", a.base()), format!("{}/ws", b.base())];
    let nodes = Mutex::new(vec![a, b]);
    let passed = chat_suite(&social.base(), &ws, &ids(), &json!(tokens), {
        let nodes = &nodes;
        Some(move |url: String| async move {
            let mut nodes = nodes.lock().await;
            let victim = nodes
                .iter_mut()
                .find(|n| url.starts_with(&n.base()))
                .expect("bob's node");
            victim.kill().await;
        })
    })
    .await;
    assert_eq!(passed.len(), CHECKS, "{passed:?}");
    assert!(passed.last().unwrap().contains("killed"));
    // The social worker's own /metrics lists its read cache and nothing of a gateway.
    let metrics = http
        .get(format!("{}/metrics", social.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("\ninstar_read_cache_hits_total "), "{text}");
    assert!(!text.contains("instar_sessions_open"), "{text}");
    // ... and its chat send writers: the suite's messages went through them.
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {text}"))
    };
    assert!(value("instar_chat_messages_total") >= 1.0, "{text}");
    assert!(value("instar_chat_batches_total") >= 1.0, "{text}");
    assert!(
        value("instar_chat_batch_commit_seconds_sum") > 0.0,
        "{text}"
    );
    assert_eq!(
        value("instar_chat_batch_commit_seconds_count"),
        value("instar_chat_batches_total")
    );
    assert!(text.contains("# TYPE instar_chat_batch_commit_seconds summary"));

    drop(nodes);
    drop(social);
    services.clean().await;
    let _ = migrations::drop_database(&db_url).await;
    let _ = std::fs::remove_dir_all(&media);
}

/// `loadtest chat` (built next to `instar` by a workspace build) against `instar serve`: two DMs,
/// everything delivered once and in order, and every message found in the rooms' history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_chat_scenario_counts_deliveries_and_persistence() {
    let Some(loadtest) = loadtest_bin() else {
        return;
    };
    let server = start().await;
    let http = reqwest::Client::new();
    for k in 1..=4 {
        account(&server.base, &server.log, &http, &format!("chat{k:05}")).await;
    }
    let url = format!("ws://{}/stomp", server.proc.addr);
    let (report, stdout) = run_loadtest(
        &loadtest,
        [
            "chat",
            "--url",
            &url,
            "--jwt-secret",
            SECRET,
            "--rooms",
            "2",
            "--room-size",
            "2",
            "--rate",
            "200",
            "--max-messages",
            "200",
            "--duration",
            "5",
            "--drain",
            "10",
            "--timeout",
            "60",
        ],
    )
    .await;
    let m = &report["messages"];
    assert_eq!(m["sent"], 200, "{stdout}");
    assert_eq!(m["delivered"], 200, "{stdout}");
    for k in ["lost", "duplicated", "reordered", "misrouted"] {
        assert_eq!(m[k], 0, "{k}: {stdout}");
    }
    let p = &report["persistence"];
    assert_eq!(p["persisted"], 200, "{stdout}");
    assert_eq!(p["missing"], 0, "{stdout}");
    assert_eq!(p["duplicated"], 0, "{stdout}");
}

/// `loadtest faults` against `instar serve`, which is killed with SIGKILL two seconds into the
/// run (the fault command) and started again by this test on the same port and data: the senders
/// and receivers reconnect, the receivers re-subscribe with their last message id, and the report
/// accounts for every message (counted in the SQLite file) with nothing stored or delivered twice,
/// every stored message delivered, and the time until answers and deliveries resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_fault_mode_accounts_for_a_killed_and_restarted_server() {
    let Some(loadtest) = loadtest_bin() else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let data = unique_dir("loadtest-faults-data");
    let envs = [
        ("INSTAR_LISTEN", format!("127.0.0.1:{port}")),
        ("INSTAR_DATA_DIR", data.display().to_string()),
    ];
    let mut server = flow_support::start_with(&envs).await;
    let http = reqwest::Client::new();
    for k in 1..=4 {
        account(&server.base, &server.log, &http, &format!("chat{k:05}")).await;
    }
    let pid = server.proc.child.id().unwrap();
    let url = format!("ws://127.0.0.1:{port}/stomp");
    let fault = format!("2:kill -9 {pid}");
    let db = format!("sqlite://{}", data.join("instar.db").display());
    let run = run_loadtest(
        &loadtest,
        [
            "faults",
            "--url",
            &url,
            "--jwt-secret",
            SECRET,
            "--rooms",
            "2",
            "--rate",
            "100",
            "--duration",
            "8",
            "--drain",
            "20",
            "--backoff-min-ms",
            "50",
            "--backoff-max-ms",
            "500",
            "--gap-ms",
            "50",
            "--fault",
            &fault,
            "--database-url",
            &db,
            "--connect-timeout",
            "5",
            "--timeout",
            "90",
        ],
    );
    let restart = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        // The fault kills the server; start it again on the same port and data.
        let _ = server.proc.child.wait().await;
        Proc::spawn("serve-again", &["serve"], &{
            let mut e: Vec<(&str, String)> = vec![
                ("INSTAR_TCP_LISTEN", "off".into()),
                ("INSTAR_JWT_SECRET", SECRET.into()),
            ];
            e.extend(envs.iter().cloned());
            e
        })
        .await
    });
    let ((report, stdout), again) = tokio::join!(run, restart);
    assert!(again.is_ok(), "the server was not killed by the fault");
    let f = &report["faults"];
    let t = &f["tally"];
    let n = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("{k}: {stdout}"));
    let planned = report["parameters"]["messages_planned"].as_u64().unwrap();
    assert!(planned > 700, "{stdout}");
    assert_eq!(n("attempted"), planned, "{stdout}");
    assert_eq!(n("written") + n("not_sent"), n("attempted"), "{stdout}");
    assert_eq!(
        n("accepted") + n("refused") + n("unanswered"),
        n("written"),
        "{stdout}"
    );
    assert!(n("accepted") > 400, "most were accepted: {stdout}");
    assert_eq!(f["stored_from"], "database", "{stdout}");
    assert!(n("stored") >= n("accepted") - n("lost"), "{stdout}");
    for k in [
        "stored_twice",
        "stored_refused",
        "duplicated",
        "undelivered",
        "phantom",
    ] {
        assert_eq!(n(k), 0, "{k}: {stdout}");
    }
    assert_eq!(n("delivered"), n("stored"), "{stdout}");
    // Every session lost its connection and came back; receivers named their last id.
    assert!(f["sender_reconnects"].as_u64().unwrap() >= 2, "{stdout}");
    assert!(f["receiver_reconnects"].as_u64().unwrap() >= 2, "{stdout}");
    assert!(
        f["resubscribed_with_last_id"].as_u64().unwrap() >= 2,
        "{stdout}"
    );
    let fault = &f["faults"][0];
    assert_eq!(fault["exit_code"], 0, "{stdout}");
    for k in ["accepting_again_s", "delivering_again_s"] {
        let s = fault[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k}: never recovered: {stdout}"));
        assert!(s > 0.0 && s < 30.0, "{k} = {s}: {stdout}");
    }
    let _ = std::fs::remove_dir_all(&data);
}
