//! Helpers for the tests against real Redis and RabbitMQ servers.
//!
//! The shared servers come from `INSTAR_TEST_REDIS_URL` and `INSTAR_TEST_AMQP_URL` (set by
//! `scripts/test`). When a variable is missing the test fails if `CI` is set, and otherwise prints a
//! note and returns early. Every test uses its own key prefix / exchange and queue prefix, so tests
//! can run in parallel against the same servers. Tests that restart a server start their own private
//! one (`redis-server`, `rabbitmq-server`) on free ports.
#![allow(dead_code, unreachable_pub)]
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The value of a test service variable, or `None` (test should return) outside CI.
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "{var} is not set: run the tests through scripts/test, which starts the services"
            );
            eprintln!("note: {var} is not set; skipping (run through scripts/test)");
            None
        }
    }
}

/// A prefix no other test run uses.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "t-{tag}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
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

/// Deletes every key under `prefix` (best effort).
pub async fn clean_redis(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// A private `redis-server` on a free port, without persistence.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
}

impl RedisServer {
    /// `None` (with a note) if `redis-server` is missing outside CI.
    pub fn start() -> Option<Self> {
        let bin = which("redis-server")?;
        let port = free_port();
        let dir = std::env::temp_dir().join(unique("redis"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port,
            child: None,
            dir,
        };
        server.spawn(&bin);
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self, bin: &Path) {
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !port_open(self.port) {
            assert!(Instant::now() < deadline, "redis-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server (its data is gone) and starts an empty one on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let bin = which("redis-server").unwrap();
        self.spawn(&bin);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The path of a program, searched in `PATH` plus `/usr/sbin` and `/usr/lib/rabbitmq/bin`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/lib/rabbitmq/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "{name} not found: scripts/test installs it");
        eprintln!("note: {name} not found; skipping");
    }
    found
}

/// A private RabbitMQ node (no plugins) on free ports, with its data in a temporary directory, so a
/// test can stop and restart it without disturbing the shared broker.
pub struct RabbitServer {
    pub port: u16,
    dist_port: u16,
    name: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl RabbitServer {
    /// `None` (with a note) if RabbitMQ is not installed, outside CI.
    pub fn start() -> Option<Self> {
        let script = Path::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        if !script.is_file() {
            which("rabbitmq-server")?;
        }
        let port = free_port();
        let dist_port = free_port();
        let dir = std::env::temp_dir().join(unique("rabbit"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.1 = 127.0.0.1:{port}\nloopback_users.guest = false\n"),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let mut server = Self {
            port,
            dist_port,
            name: format!("instar-test-{port}@localhost"),
            dir,
            child: None,
        };
        server.spawn();
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn envs(&self, cmd: &mut Command) {
        let d = &self.dir;
        cmd.env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("pid"));
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
        self.envs(&mut cmd);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.out"))
            .unwrap();
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(cmd.spawn().expect("rabbitmq-server starts"));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !port_open(self.port) {
            assert!(
                Instant::now() < deadline,
                "private RabbitMQ did not listen; see {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the node gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Stops the node and starts it again on the same data (durable queues come back).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs `rabbitmqctl` against this node.
    pub fn ctl(&self, args: &[&str]) -> bool {
        let mut cmd = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl");
        self.envs(&mut cmd);
        cmd.arg("-n").arg(&self.name).args(args);
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for RabbitServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
