//! The binary against a real server: a tiny fanout through RabbitMQ Web-STOMP
//! (`INSTAR_TEST_RABBIT_WEB_STOMP`, default `ws://127.0.0.1:15674/ws`; `scripts/test` starts it), and
//! the loopback guard.

use std::process::Command;

fn loadtest() -> Command {
    Command::new(env!("CARGO_BIN_EXE_loadtest"))
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

#[test]
fn fanout_through_rabbitmq_web_stomp_delivers_everything() {
    let url = std::env::var("INSTAR_TEST_RABBIT_WEB_STOMP")
        .unwrap_or_else(|_| "ws://127.0.0.1:15674/ws".to_owned());
    let dir = std::env::temp_dir().join(format!("loadtest-e2e-{}", unique()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("report.json");
    let svg = dir.join("latency.svg");
    let topic = format!("/topic/instar-t-{}.bench", unique());
    let out = loadtest()
        .args([
            "fanout",
            "--url",
            &url,
            "--login",
            "guest",
            "--passcode",
            "guest",
        ])
        .args([
            "--subscribers",
            "5",
            "--max-messages",
            "50",
            "--rate",
            "500",
            "--duration",
            "5",
        ])
        .args([
            "--topic",
            &topic,
            "--drain",
            "10",
            "--timeout",
            "60",
            "--quiet",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("run loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadtest failed ({:?}); is RabbitMQ Web-STOMP at {url}? Run through scripts/test.\n{stdout}\n{stderr}",
        out.status
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written"))
            .expect("report is JSON");
    let m = &report["messages"];
    assert_eq!(m["sent"], 50, "{stdout}");
    assert_eq!(m["expected"], 250, "{stdout}");
    assert_eq!(m["delivered"], 250, "{stdout}");
    assert_eq!(m["lost"], 0, "{stdout}");
    assert_eq!(m["duplicated"], 0, "{stdout}");
    assert_eq!(m["misrouted"], 0, "{stdout}");
    assert_eq!(report["latency"]["count"], 250);
    assert!(
        report["latency"]["p99_ms"]
            .as_f64()
            .is_some_and(|p| p > 0.0)
    );
    assert!(stdout.contains("lost 0"), "{stdout}");
    let svg = std::fs::read_to_string(&svg).expect("svg written");
    assert!(svg.contains("<polyline"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Competing consumers: every message is acknowledged by exactly one of the four consumers.
#[test]
fn queue_through_rabbitmq_web_stomp_acknowledges_everything_once() {
    let url = std::env::var("INSTAR_TEST_RABBIT_WEB_STOMP")
        .unwrap_or_else(|_| "ws://127.0.0.1:15674/ws".to_owned());
    let dir = std::env::temp_dir().join(format!("loadtest-e2e-q-{}", unique()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json = dir.join("report.json");
    let queue = format!("/queue/instar-t-{}.q", unique());
    let out = loadtest()
        .args([
            "queue",
            "--url",
            &url,
            "--login",
            "guest",
            "--passcode",
            "guest",
        ])
        .args([
            "--consumers",
            "4",
            "--max-messages",
            "200",
            "--rate",
            "1000",
        ])
        .args(["--duration", "5", "--prefetch", "10", "--queue", &queue])
        // The broker deletes the queue a minute after its last use.
        .args(["--queue-header", "x-expires:60000", "--drain", "10"])
        .args(["--timeout", "60", "--quiet"])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "loadtest failed ({:?}); is RabbitMQ Web-STOMP at {url}? Run through scripts/test.\n{stdout}\n{stderr}",
        out.status
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report written"))
            .expect("report is JSON");
    let m = &report["messages"];
    assert_eq!(m["sent"], 200, "{stdout}");
    assert_eq!(m["delivered"], 200, "{stdout}");
    assert_eq!(m["lost"], 0, "{stdout}");
    assert_eq!(m["duplicated"], 0, "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn refuses_a_non_loopback_url_before_connecting() {
    let out = loadtest()
        .args([
            "idle",
            "--url",
            "ws://192.0.2.1:80/stomp",
            "--anonymous",
            "-n",
            "1",
            "--quiet",
        ])
        .output()
        .expect("run loadtest");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("non-loopback"), "{stderr}");
}

#[test]
fn needs_credentials_or_anonymous() {
    let out = loadtest()
        .env_remove("INSTAR_JWT_SECRET")
        .args([
            "idle",
            "--url",
            "ws://127.0.0.1:9/stomp",
            "-n",
            "1",
            "--quiet",
        ])
        .output()
        .expect("run loadtest");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jwt-secret"));
}
