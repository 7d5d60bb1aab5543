//! One chat message's trace across processes: two `instar gateway` nodes and an `instar social`
//! process on RabbitMQ (MariaDB, Redis), all logging JSON (`INSTAR_LOG_FORMAT=json`). Alice on
//! gateway A sends to a room; Bob on gateway B receives it; the log lines the message leaves on
//! gateway A (the command submitted), on the social process (the chat command) and on gateway B
//! (the delivery) share one W3C trace id, and a REST request's lines carry its request id.
#![allow(clippy::unwrap_used)]

mod scaleout_support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scaleout_support::{Client, SECRET, Services, header, service};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A process logging JSON, its lines kept.
struct Proc {
    _child: Child,
    addr: String,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Proc {
    async fn spawn(tag: &str, args: &[&str], envs: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_instar"));
        cmd.args(args)
            .env("INSTAR_LOG", "info,gateway=debug,social=debug")
            .env("INSTAR_LOG_FORMAT", "json")
            .env_remove("INSTAR_CONFIG")
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("instar starts");
        let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let tag = tag.to_owned();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = reader.next_line().await.unwrap() {
                eprintln!("[{tag}] {line}");
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("[{tag}] not a JSON line ({e}): {line}"));
                if v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("HTTP listening"))
                {
                    return v["fields"]["addr"].as_str().unwrap().to_owned();
                }
            }
            panic!("instar {tag} exited before listening");
        })
        .await
        .expect("instar listens in time");
        let sink = lines.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                eprintln!("[{tag}] {line}");
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("[{tag}] not a JSON line ({e}): {line}"));
                sink.lock().unwrap().push(v);
            }
        });
        Proc {
            _child: child,
            addr,
            lines,
        }
    }

    /// The lines whose message is `message`.
    fn logged(&self, message: &str) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["fields"]["message"] == message)
            .cloned()
            .collect()
    }
}

/// `key` among a line's fields or the fields of the spans it was logged in.
fn field<'a>(line: &'a Value, key: &str) -> Option<&'a str> {
    line["fields"][key].as_str().or_else(|| {
        line["spans"]
            .as_array()?
            .iter()
            .find_map(|s| s[key].as_str())
    })
}

async fn eventually_logged(p: &Proc, message: &str, trace: &str) -> Value {
    for _ in 0..100 {
        if let Some(l) = p
            .logged(message)
            .into_iter()
            .find(|l| field(l, "trace_id") == Some(trace))
        {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {message:?} line with trace id {trace}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chat_message_shares_a_trace_id_on_both_gateways_and_the_social_process() {
    let Some(services) = Services::get("trc") else {
        return;
    };
    let Some(mysql) = service("INSTAR_TEST_MYSQL_URL") else {
        return;
    };
    let db_url = format!("{}/{}", mysql.trim_end_matches('/'), services.prefix);
    migrations::create_database(&db_url).await.unwrap();
    let data = std::env::temp_dir().join(format!("instar-{}", services.prefix));
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
    let social = Proc::spawn(
        "social",
        &["social"],
        &common(&[
            ("INSTAR_REDIS_PREFIX", format!("{}:", services.prefix)),
            ("INSTAR_DATA_DIR", data.display().to_string()),
        ]),
    )
    .await;
    let node_a = format!("{}a", services.prefix);
    let node_b = format!("{}b", services.prefix);
    let gw_a = Proc::spawn("gw-a", &["gateway"], &common(&[("INSTAR_NODE_ID", node_a)])).await;
    let gw_b = Proc::spawn("gw-b", &["gateway"], &common(&[("INSTAR_NODE_ID", node_b)])).await;

    // Two accounts, through the social process (the code of the mail logged without SMTP).
    let http = reqwest::Client::new();
    let api = format!("http://{}/api", social.addr);
    let mut tokens = Vec::new();
    for user in ["alice01", "bob0001"] {
        let email = format!("{user}@example.com");
        let res = http
            .get(format!("{api}/auth/send/email?receive_email={email}"))
            .header("x-request-id", format!("req-{user}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()["x-request-id"],
            format!("req-{user}").as_str()
        );
        let mut code = None;
        for _ in 0..100 {
            code = social.lines.lock().unwrap().iter().find_map(|l| {
                let body = l["fields"]["body"].as_str()?;
                (l["fields"].to_string().contains(&email)).then(|| {
                    body.chars()
                        .filter(char::is_ascii_digit)
                        .take(5)
                        .collect::<String>()
                })
            });
            if code.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let code = code.expect("the verification mail is logged");
        // The mail's line was logged inside the request's span, with its request id.
        let mail = social
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l["fields"].to_string().contains(&email))
            .cloned()
            .unwrap();
        assert_eq!(
            field(&mail, "request_id"),
            Some(format!("req-{user}").as_str()),
            "{mail}"
        );
        let res = http
            .post(format!("{api}/auth/signUp"))
            .json(&json!({
                "id": user, "password": "password-123", "name": user, "sex": "female",
                "email": email, "email_code": code, "address": "Seoul", "addressDetail": "1"
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        // No incoming id: a fresh one is made and echoed.
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 32, "{id}");
        let res: Value = http
            .post(format!("{api}/auth/signIn"))
            .json(&json!({"id": user, "password": "password-123"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(res["token"].as_str().unwrap().to_owned());
    }
    let res = http
        .post(format!("{api}/chat/create"))
        .bearer_auth(&tokens[0])
        .header("x-request-id", "bad id with spaces")
        .json(&json!({"users": ["bob0001"]}))
        .send()
        .await
        .unwrap();
    let echoed = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(echoed.len(), 32, "a bad incoming id is replaced: {echoed}");
    let res: Value = res.json().await.unwrap();
    let room = res["chatRoomId"].as_i64().unwrap();

    let mut alice = Client::connect(&format!("ws://{}/stomp", gw_a.addr), "alice01").await;
    let mut bob = Client::connect(&format!("ws://{}/stomp", gw_b.addr), "bob0001").await;
    let topic = format!("/topic/chat.{room}");
    alice.subscribe(&topic).await;
    bob.subscribe(&topic).await;
    alice
        .send(
            "/app/send",
            &[("content-type", "application/json")],
            &json!({"chatRoomId": room, "message": "traced"}).to_string(),
        )
        .await;
    let frame = bob.frame().await;
    assert!(
        frame.starts_with("MESSAGE\n") && frame.contains("traced"),
        "{frame}"
    );
    assert_eq!(
        header(&frame, "traceparent"),
        None,
        "the trace stays between processes"
    );

    // Gateway A: the command, with the session's span (session, user, node) and a trace id.
    let submitted = gw_a.logged("command submitted");
    let sent = submitted
        .iter()
        .find(|l| field(l, "user") == Some("alice01"))
        .unwrap_or_else(|| panic!("no command line on gateway A: {submitted:?}"));
    let trace = field(sent, "trace_id").unwrap().to_owned();
    assert_eq!(trace.len(), 32);
    assert_eq!(field(sent, "session"), Some(alice.session.as_str()));
    // The social process: the chat command, with user, session, node and room.
    let handled = eventually_logged(&social, "chat command", &trace).await;
    assert_eq!(field(&handled, "user"), Some("alice01"));
    assert_eq!(field(&handled, "session"), Some(alice.session.as_str()));
    assert_eq!(handled["spans"][0]["room"], room);
    // Gateway B: the delivery to Bob's subscription.
    eventually_logged(&gw_b, "delivering", &trace).await;

    drop((alice, bob, gw_a, gw_b, social));
    let _ = std::fs::remove_dir_all(&data);
    services.clean().await;
}
