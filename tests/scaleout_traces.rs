//! One chat message's trace across processes: two `instar gateway` nodes and an `instar social`
//! process on RabbitMQ (MariaDB, Redis), all logging JSON (`INSTAR_LOG_FORMAT=json`). Alice on
//! gateway A sends to a room; Bob on gateway B receives it; the log lines the message leaves on
//! gateway A (the command submitted), on the social process (the chat command) and on gateway B
//! (the delivery) share one W3C trace id, and a REST request's lines carry its request id.
//!
//! The processes also export their spans (`INSTAR_OTLP_ENDPOINT`) to a fake OpenTelemetry
//! collector in the test (OTLP/HTTP, protobuf): the message's spans on the three processes form
//! one trace, each naming its process; the social process's spans, held back by a long batch
//! delay, arrive when it shuts down.
#![allow(clippy::unwrap_used)]

mod scaleout_support;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scaleout_support::{Client, SECRET, Services, header, service};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One span as a collector received it.
#[derive(Debug, Clone)]
struct Exported {
    service: String,
    instance: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

/// A fake OpenTelemetry collector: `POST /v1/traces` with an OTLP protobuf body; the spans kept.
struct Collector {
    url: String,
    spans: Arc<Mutex<Vec<Exported>>>,
}

impl Collector {
    async fn start() -> Collector {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
        use prost::Message as _;
        use warp::Filter as _;
        fn text(v: Option<&AnyValue>) -> String {
            match v.and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            }
        }
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        let route = warp::post()
            .and(warp::path!("v1" / "traces"))
            .and(warp::header::exact(
                "content-type",
                "application/x-protobuf",
            ))
            .and(warp::body::bytes())
            .map(move |body: bytes::Bytes| {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                let mut got = sink.lock().unwrap();
                for rs in req.resource_spans {
                    let resource: HashMap<String, String> = rs
                        .resource
                        .map(|r| r.attributes)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|kv| (kv.key, text(kv.value.as_ref())))
                        .collect();
                    for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                        got.push(Exported {
                            service: resource["service.name"].clone(),
                            instance: resource["service.instance.id"].clone(),
                            name: span.name,
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent_span_id: hex(&span.parent_span_id),
                            attributes: span
                                .attributes
                                .into_iter()
                                .map(|kv| (kv.key, text(kv.value.as_ref())))
                                .collect(),
                        });
                    }
                }
                warp::http::Response::builder()
                    .header("content-type", "application/x-protobuf")
                    .body(Vec::<u8>::new())
                    .unwrap()
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(warp::serve(route).incoming(listener).run());
        Collector {
            url: format!("http://{addr}"),
            spans,
        }
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }

    /// The first span `pick` finds among those received within 20 s.
    async fn eventually(&self, what: &str, pick: impl Fn(&Exported) -> bool) -> Exported {
        for _ in 0..400 {
            if let Some(s) = self.spans().into_iter().find(|s| pick(s)) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no exported span: {what}; got {:#?}", self.spans());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A process logging JSON, its lines kept.
struct Proc {
    child: Child,
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
        Proc { child, addr, lines }
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
    let collector = Collector::start().await;
    let common = |extra: &[(&'static str, String)]| {
        let shared = [
            ("INSTAR_DATABASE_URL", db_url.clone()),
            ("INSTAR_OTLP_ENDPOINT", collector.url.clone()),
            // Batches every 100 ms (the social process overrides it).
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ];
        services.process_env(SECRET, &[&shared[..], extra].concat())
    };
    let social = Proc::spawn(
        "social",
        &["social"],
        &common(&[
            ("INSTAR_REDIS_PREFIX", format!("{}:", services.prefix)),
            ("INSTAR_DATA_DIR", data.display().to_string()),
            // Its spans wait for the shutdown's flush.
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000".into()),
            ("INSTAR_DRAIN_SECS", "1".into()),
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

    // The exported spans: gateway A's command (its trace id is the one logged and passed on)...
    let submit = collector
        .eventually("gateway A's submit", |s| {
            s.name == "submit" && s.trace_id == trace
        })
        .await;
    assert_eq!(submit.service, "instar-gateway");
    assert_eq!(submit.instance, format!("{}a", services.prefix));
    assert_eq!(submit.attributes["user"], "alice01");
    assert_eq!(submit.attributes["session"], alice.session);
    assert_eq!(submit.attributes["destination"], "/app/send");
    assert_eq!(
        submit.parent_span_id, "",
        "a trace of its own, not the session's"
    );
    // ... gateway B's delivery, in the same trace ...
    let deliver = collector
        .eventually("gateway B's delivery to the room", |s| {
            s.name == "deliver"
                && s.trace_id == trace
                && s.instance == format!("{}b", services.prefix)
                && s.attributes.get("destination") == Some(&topic)
        })
        .await;
    assert_eq!(deliver.service, "instar-gateway");
    // ... and the social process's, sent at its shutdown (its batch delay is an hour).
    assert!(
        !collector
            .spans()
            .iter()
            .any(|s| s.service == "instar-social"),
        "the social process's spans wait for its shutdown"
    );
    let mut social = social;
    let pid = social.child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), social.child.wait())
        .await
        .expect("the social process stops on SIGTERM")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let command = collector
        .eventually("the social process's chat command", |s| {
            s.name == "command" && s.trace_id == trace
        })
        .await;
    assert_eq!(command.service, "instar-social");
    assert_eq!(command.attributes["user"], "alice01");
    assert_eq!(command.attributes["room"], room.to_string());
    assert_eq!(
        command.parent_span_id, submit.span_id,
        "the chat command is a child of gateway A's span"
    );
    assert_eq!(
        deliver.parent_span_id, command.span_id,
        "the delivery is a child of the chat command's span"
    );
    // REST requests are spans too, with their request id.
    let request = collector
        .eventually("a sign-up request", |s| {
            s.name == "request"
                && s.attributes.get("request_id").map(String::as_str) == Some("req-alice01")
        })
        .await;
    assert_eq!(request.service, "instar-social");

    drop((alice, bob, gw_a, gw_b, social));
    let _ = std::fs::remove_dir_all(&data);
    services.clean().await;
}
