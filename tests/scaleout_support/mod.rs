//! Shared pieces of the scale-out tests: `instar gateway` processes, nginx rendered from `deploy/`,
//! a small STOMP-over-WebSocket client and a tiny HTTP client for SockJS.
//!
//! Services come from `INSTAR_TEST_AMQP_URL`, `INSTAR_TEST_REDIS_URL` and `INSTAR_NGINX` (set by
//! `scripts/test`): a missing one fails the test when `CI` is set and skips it (with a note)
//! otherwise. Every test uses its own bus prefix (AMQP names and Redis keys) and free ports.
#![allow(dead_code, unreachable_pub)]
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

/// Long enough for the social service too (HS256: at least 32 bytes).
pub const SECRET: &str = "scaleout-test-secret-scaleout-test";

pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{var} is not set: run the tests through scripts/test, which sets it"
            );
            eprintln!("note: {var} is not set; skipping (run through scripts/test)");
            None
        }
    }
}

pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("t{tag}{}x{}", std::process::id(), nanos % 1_000_000_000_000)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn token(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    gateway::auth::Verifier::new(SECRET.as_bytes().to_vec()).sign(
        gateway::auth::Algorithm::Hs256,
        user,
        None,
        now,
        now + 600,
    )
}

/// The services a scale-out test needs.
pub struct Services {
    pub amqp: String,
    pub redis: String,
    pub nginx: String,
    pub prefix: String,
}

impl Services {
    pub fn get(tag: &str) -> Option<Self> {
        Some(Self {
            amqp: service("INSTAR_TEST_AMQP_URL")?,
            redis: service("INSTAR_TEST_REDIS_URL")?,
            nginx: service("INSTAR_NGINX")?,
            prefix: unique(tag),
        })
    }

    /// The settings every `instar gateway` and `instar social` process of the test's deployment
    /// shares (its RabbitMQ, Redis and bus prefix, tokens signed with `secret`, an HTTP listener
    /// on a free loopback port), then `extra`.
    pub fn process_env(
        &self,
        secret: &str,
        extra: &[(&'static str, String)],
    ) -> Vec<(&'static str, String)> {
        let mut v: Vec<(&'static str, String)> = vec![
            ("INSTAR_AMQP_URL", self.amqp.clone()),
            ("INSTAR_REDIS_URL", self.redis.clone()),
            ("INSTAR_BUS_PREFIX", self.prefix.clone()),
            ("INSTAR_JWT_SECRET", secret.to_owned()),
            ("INSTAR_LISTEN", "127.0.0.1:0".into()),
        ];
        v.extend_from_slice(extra);
        v
    }

    /// Deletes the test's exchanges and command queues (after the nodes are gone).
    pub async fn clean(&self) {
        let config = broker_bridge::AmqpConfig::new(&self.amqp).with_prefix(&self.prefix);
        if let Err(e) = config.delete_topology().await {
            eprintln!("note: could not delete the test's AMQP topology: {e}");
        }
    }

    /// A registry client on the same keys as the nodes.
    pub async fn registry(&self) -> broker_bridge::Registry {
        broker_bridge::Registry::redis(
            broker_bridge::RedisRegistryConfig::new(&self.redis)
                .with_prefix(format!("{}:", self.prefix)),
        )
        .await
        .unwrap()
    }
}

/// One `instar gateway` process.
pub struct Node {
    pub id: String,
    pub addr: String,
    pub child: Child,
}

impl Node {
    pub async fn start(services: &Services, id: &str, lease_ttl_ms: u64) -> Node {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_instar"))
            .arg("gateway")
            .env("INSTAR_AMQP_URL", &services.amqp)
            .env("INSTAR_REDIS_URL", &services.redis)
            .env("INSTAR_BUS_PREFIX", &services.prefix)
            .env("INSTAR_NODE_ID", id)
            .env("INSTAR_LISTEN", format!("127.0.0.1:{port}"))
            .env("INSTAR_JWT_SECRET", SECRET)
            .env("INSTAR_BENCH_ECHO", "1")
            .env("INSTAR_LEASE_TTL_MS", lease_ttl_ms.to_string())
            .env("INSTAR_LOG", "info")
            .env_remove("INSTAR_CONFIG")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("instar gateway starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                eprintln!("[{id}] {line}");
                if line.contains("HTTP listening")
                    && let Some(a) = line.split("addr=").nth(1)
                {
                    return a.split_whitespace().next().unwrap().to_owned();
                }
            }
            panic!("instar gateway {id} exited before listening");
        })
        .await
        .expect("instar gateway listens in time");
        let tag = id.to_owned();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{tag}] {line}");
            }
        });
        Node {
            id: id.to_owned(),
            addr,
            child,
        }
    }

    /// SIGKILL: no drain, no lease release, no unregister.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        let _ = self.child.wait().await;
    }
}

/// nginx in front of the nodes, configured by `deploy/nginx/render.sh` from the templates.
pub struct Nginx {
    pub port: u16,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// nginx on a free port in front of gateway `nodes` only (`/api` answers 503).
    pub async fn start(services: &Services, nodes: &[&Node]) -> Nginx {
        let gateways: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
        Nginx::start_with(&services.nginx, free_port(), &[], &gateways).await
    }

    /// nginx on `port`, rendered with `options` (`--social ADDR`, `--media-origin URL`, `--static
    /// DIR`, `--tls CERT KEY`) in front of the `gateways`.
    pub async fn start_with(
        nginx: &str,
        port: u16,
        options: &[String],
        gateways: &[String],
    ) -> Nginx {
        let dir = std::env::temp_dir().join(unique("nginx"));
        let render = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/nginx/render.sh");
        let mut args = vec!["--standalone".to_owned(), dir.display().to_string()];
        args.extend(options.iter().cloned());
        args.push(format!("127.0.0.1:{port}"));
        args.extend(gateways.iter().cloned());
        let out = std::process::Command::new("bash")
            .arg(&render)
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "render.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.join("nginx.conf");
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(Instant::now() < deadline, "nginx did not listen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Nginx { port, child, dir }
    }

    pub fn stomp_url(&self) -> String {
        format!("ws://127.0.0.1:{}/stomp", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// A STOMP 1.2 client over WebSocket.
pub struct Client {
    ws: Ws,
    pending: std::collections::VecDeque<String>,
    pub session: String,
    next_receipt: u32,
}

impl Client {
    pub async fn connect(url: &str, user: &str) -> Client {
        match Client::connect_token(url, &token(user)).await {
            Ok(client) => client,
            Err(frame) => panic!("{frame}"),
        }
    }

    /// CONNECTs with `token`; the client once CONNECTED, else the frame the server answered.
    pub async fn connect_token(url: &str, token: &str) -> Result<Client, String> {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap();
        req.headers_mut()
            .insert("sec-websocket-protocol", "v12.stomp".parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut client = Client {
            ws,
            pending: Default::default(),
            session: String::new(),
            next_receipt: 0,
        };
        client
            .raw(&format!(
                "CONNECT\naccept-version:1.2\nheart-beat:0,0\nAuthorization:Bearer {token}\n\n\0"
            ))
            .await;
        let connected = client.frame().await;
        if !connected.starts_with("CONNECTED\n") {
            return Err(connected);
        }
        client.session = header(&connected, "session").unwrap_or_default().to_owned();
        Ok(client)
    }

    /// Connects `user` through `url` until the session lands on the node `want` (nginx round robin).
    pub async fn connect_on(url: &str, user: &str, want: &str) -> Client {
        for _ in 0..20 {
            let c = Client::connect(url, user).await;
            if c.on(want) {
                return c;
            }
            c.close().await;
        }
        panic!("{user} never landed on {want}");
    }

    pub fn on(&self, node: &str) -> bool {
        self.session.starts_with(&format!("{node}-"))
    }

    pub async fn raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The next frame (heart-beats skipped).
    pub async fn frame(&mut self) -> String {
        self.try_frame(Duration::from_secs(10))
            .await
            .expect("a frame in time")
    }

    pub async fn try_frame(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Some(f);
            }
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            let Ok(Message::Text(text)) = msg else {
                if matches!(msg, Ok(Message::Close(_)) | Err(_)) {
                    return None;
                }
                continue;
            };
            for part in text.split('\0') {
                let part = part.trim_start_matches(['\n', '\r']);
                if !part.is_empty() {
                    self.pending.push_back(part.to_owned());
                }
            }
        }
    }

    async fn receipt(&mut self) -> String {
        self.next_receipt += 1;
        format!("r{}", self.next_receipt)
    }

    async fn await_receipt(&mut self, id: &str) {
        let f = self.frame().await;
        assert!(
            f.starts_with("RECEIPT\n") && header(&f, "receipt-id") == Some(id),
            "expected RECEIPT {id}, got {f}"
        );
    }

    pub async fn subscribe(&mut self, destination: &str) {
        let r = self.receipt().await;
        self.raw(&format!(
            "SUBSCRIBE\nid:{destination}\ndestination:{destination}\nreceipt:{r}\n\n\0"
        ))
        .await;
        self.await_receipt(&r).await;
    }

    /// SEND with a receipt; returns once the RECEIPT (sent after the broker's confirm) arrived.
    pub async fn send(&mut self, destination: &str, headers: &[(&str, &str)], body: &str) {
        let r = self.receipt().await;
        let mut frame = format!("SEND\ndestination:{destination}\nreceipt:{r}\n");
        for (k, v) in headers {
            frame.push_str(&format!("{k}:{v}\n"));
        }
        frame.push_str(&format!("\n{body}\0"));
        self.raw(&frame).await;
        self.await_receipt(&r).await;
    }

    /// The next MESSAGE frame; returns (destination, body).
    pub async fn message(&mut self) -> (String, String) {
        let f = self.frame().await;
        assert!(f.starts_with("MESSAGE\n"), "expected MESSAGE, got {f}");
        let dest = header(&f, "destination").unwrap().to_owned();
        let body = f.split_once("\n\n").map(|(_, b)| b.to_owned()).unwrap();
        (dest, body)
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Whether the server closed the connection within `wait`.
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return false,
                Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

pub fn header<'a>(frame: &'a str, name: &str) -> Option<&'a str> {
    let head = frame.split_once("\n\n").map_or(frame, |(h, _)| h);
    head.lines()
        .skip(1)
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
}

/// One HTTP/1.1 request (Connection: close); returns (status, body).
pub async fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .expect("HTTP response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `check` until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A private `redis-server` on a free port, without persistence (a restart starts empty).
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    pub fn start() -> Option<Self> {
        let bin = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| Path::new(p).is_file());
        let Some(bin) = bin else {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(!ci, "redis-server not found: scripts/test installs it");
            eprintln!("note: redis-server not found; skipping");
            return None;
        };
        let mut server = Self {
            port: free_port(),
            child: None,
        };
        server.spawn(bin);
        Some(server)
    }

    fn spawn(&mut self, bin: &str) {
        let child = std::process::Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn("redis-server");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
