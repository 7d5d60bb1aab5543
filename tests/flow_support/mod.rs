//! Shared pieces of the end-to-end tests that run `instar` processes: spawning with the log
//! captured (the verification mail is logged when no SMTP server is configured), REST calls,
//! accounts made through the real sign-up, and the @stomp/stompjs chat suite
//! (`tests/js/chat_suite.mjs`).
#![allow(dead_code, unreachable_pub)]
#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// A JWT secret long enough for the social service (>= 32 bytes).
pub const SECRET: &str = "flow-test-secret-flow-test-secret!!";

/// The password of every account made by [`account`].
pub const PASSWORD: &str = "password-123";

/// A process of ours with its stderr captured.
pub struct Proc {
    pub child: Child,
    /// `host:port` it listens on (from its "HTTP listening" log line).
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Runs `instar <args>` with `envs`, echoing its log prefixed with `tag`, until it listens.
    pub async fn spawn(tag: &str, args: &[&str], envs: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_instar"));
        cmd.args(args)
            .env("INSTAR_LOG", "info")
            .env_remove("INSTAR_CONFIG")
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("instar starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let tag = tag.to_owned();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                eprintln!("[{tag}] {line}");
                if line.contains("HTTP listening")
                    && let Some(a) = line.split("addr=").nth(1)
                {
                    return a.split_whitespace().next().unwrap().to_owned();
                }
            }
            panic!("instar {tag} exited before listening");
        })
        .await
        .expect("instar listens in time");
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{tag}] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, addr, log }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL: no drain, nothing released.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }
}

/// `instar serve` on a fresh data directory (removed on drop).
pub struct Server {
    pub proc: Proc,
    pub base: String,
    pub log: Arc<Mutex<Vec<String>>>,
    dir: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn unique_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "instar-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ))
}

pub async fn start() -> Server {
    start_with(&[]).await
}

/// [`start`] with more settings (`INSTAR_*` variables) for the process.
pub async fn start_with(extra: &[(&str, String)]) -> Server {
    let dir = unique_dir("flow");
    let mut envs = vec![
        ("INSTAR_LISTEN", "127.0.0.1:0".to_owned()),
        ("INSTAR_TCP_LISTEN", "off".into()),
        ("INSTAR_JWT_SECRET", SECRET.into()),
        ("INSTAR_DATA_DIR", dir.display().to_string()),
    ];
    envs.extend(extra.iter().cloned());
    let proc = Proc::spawn("serve", &["serve"], &envs).await;
    Server {
        base: proc.base(),
        log: proc.log.clone(),
        proc,
        dir,
    }
}

/// The `loadtest` binary a workspace build puts next to `instar`; `None` (the test skips, with a
/// note) when it is missing outside CI.
pub fn loadtest_bin() -> Option<std::path::PathBuf> {
    let loadtest = std::path::Path::new(env!("CARGO_BIN_EXE_instar")).with_file_name("loadtest");
    if loadtest.exists() {
        return Some(loadtest);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(
        !ci,
        "{} is missing: build the workspace",
        loadtest.display()
    );
    eprintln!("note: {} is not built; skipping", loadtest.display());
    None
}

/// Runs `loadtest <args> --quiet --json <file>` to its end and asserts it succeeded; returns its
/// JSON report and its printed summary (for assertion messages).
pub async fn run_loadtest<I, A>(loadtest: &std::path::Path, args: I) -> (Value, String)
where
    I: IntoIterator<Item = A>,
    A: AsRef<std::ffi::OsStr>,
{
    let dir = unique_dir("loadtest");
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("report.json");
    let out = Command::new(loadtest)
        .args(args)
        .arg("--quiet")
        .arg("--json")
        .arg(&json_path)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (report, stdout)
}

pub async fn call(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, body)
}

/// Without SMTP the verification mail is logged; read the code from the process's log.
pub async fn mailed_code(log: &Mutex<Vec<String>>, email: &str) -> String {
    for _ in 0..100 {
        let found = log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|l| l.contains(email) && l.contains("mail"))
            .and_then(|l| l.split("body=").nth(1))
            .map(|b| {
                b.chars()
                    .filter(char::is_ascii_digit)
                    .take(5)
                    .collect::<String>()
            });
        if let Some(code) = found.filter(|c| c.len() == 5) {
            return code;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no verification code logged for {email}");
}

/// Signs `id` up (with the mailed code) and in; returns the token.
pub async fn account(
    base: &str,
    log: &Mutex<Vec<String>>,
    http: &reqwest::Client,
    id: &str,
) -> String {
    let email = format!("{id}@example.com");
    let (s, _) = call(http.get(format!("{base}/api/auth/send/email?receive_email={email}"))).await;
    assert_eq!(s, 200);
    let code = mailed_code(log, &email).await;
    let (s, b) = call(http.post(format!("{base}/api/auth/signUp")).json(&json!({
        "id": id, "password": PASSWORD, "name": id, "sex": "female", "email": email,
        "email_code": code, "address": "Seoul", "addressDetail": "1", "duplicateCheckId": true
    })))
    .await;
    assert_eq!((s, &b), (200, &json!({"code": "SC"})));
    let (s, b) = call(
        http.post(format!("{base}/api/auth/signIn"))
            .json(&json!({"id": id, "password": PASSWORD})),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    b["token"].as_str().unwrap().to_owned()
}

/// Runs `tests/js/chat_suite.mjs` against `rest` and the SockJS URLs `ws` (alice on the first,
/// bob on the second, carol on the third, round robin). With `kill`, it is called with bob's
/// SockJS URL when the suite asks for bob's node to die, and must kill it. Returns the checks passed.
pub async fn chat_suite<F, Fut>(
    rest: &str,
    ws: &[String],
    ids: &Value,
    tokens: &Value,
    mut kill: Option<F>,
) -> Vec<String>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let node_path = std::env::var("INSTAR_NODE_PATH")
        .expect("INSTAR_NODE_PATH is not set: run the tests with scripts/test");
    let dir = unique_dir("chat-suite");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&json!({
            "rest": rest, "ws": ws, "ids": ids, "tokens": tokens, "kill": kill.is_some()
        }))
        .unwrap(),
    )
    .unwrap();
    let mut child = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/js/chat_suite.mjs"
        ))
        .arg(&config)
        .env("INSTAR_NODE_PATH", node_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut passed = Vec::new();
    tokio::time::timeout(Duration::from_secs(150), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let v: Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("chat suite printed {line}"));
            eprintln!("[chat-suite] {v}");
            match v["event"].as_str() {
                Some("ok") => passed.push(v["check"].as_str().unwrap().to_owned()),
                Some("kill") => {
                    let f = kill.as_mut().expect("the suite asked for a kill");
                    f(v["url"].as_str().unwrap().to_owned()).await;
                    stdin.write_all(b"killed\n").await.unwrap();
                    stdin.flush().await.unwrap();
                }
                Some("done") => return,
                Some("failed") => panic!("chat suite failed: {}", v["why"]),
                _ => {}
            }
        }
        panic!("chat suite exited early");
    })
    .await
    .expect("chat suite finishes in time");
    let status = child.wait().await.unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
    passed
}
