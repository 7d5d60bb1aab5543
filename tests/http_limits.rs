//! The HTTP listener's timeouts and caps on a real `instar serve` process (`gateway::listen`, the
//! accept loop `instar gateway` and `instar social` share): slow and idle connections are closed
//! within their timeouts while another client is served, a connection flood is refused beyond
//! the caps while `/health/live` answers, and an oversized request head is refused without the
//! process growing.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};

const SECRET: &str = "http-limits-secret-http-limits-secret";

/// Starts `instar serve` on a free port with `envs`; returns it and its HTTP address.
async fn start(name: &str, envs: &[(&str, &str)]) -> (Child, SocketAddr) {
    let dir =
        std::env::temp_dir().join(format!("instar-http-limits-{name}-{}", std::process::id()));
    let mut child = Command::new(env!("CARGO_BIN_EXE_instar"))
        .arg("serve")
        .env("INSTAR_LISTEN", "127.0.0.1:0")
        .env("INSTAR_TCP_LISTEN", "off")
        .env("INSTAR_JWT_SECRET", SECRET)
        .env("INSTAR_DATA_DIR", &dir)
        .env("INSTAR_LOG", "info")
        .envs(envs.iter().copied())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("instar starts");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("HTTP listening")
                && let Some(a) = line.split("addr=").nth(1)
            {
                return a.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("instar exited before listening");
    })
    .await
    .expect("instar listens in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr.parse().unwrap())
}

/// A connection to `to` from the loopback address `from` (127.0.0.0/8 is all this machine).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads until the peer closes (or resets) the connection; what was read.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status of one `GET path` sent from `from` on a fresh connection.
async fn get_from(from: &str, to: SocketAddr, path: &str) -> u16 {
    let mut s = connect_from(from, to).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut s))
        .await
        .expect("an answer in time");
    status(&reply)
        .unwrap_or_else(|| panic!("no HTTP answer: {:?}", String::from_utf8_lossy(&reply)))
}

fn status(reply: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(reply.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Seconds until the server closes `stream` (reading and discarding what it sends).
async fn closed_after(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    tokio::time::timeout(limit, read_to_close(stream))
        .await
        .expect("the server closes the connection in time");
    start.elapsed()
}

#[tokio::test]
async fn slow_and_idle_connections_are_closed_within_their_timeouts_while_a_client_is_served() {
    let (_child, addr) = start(
        "slow",
        &[
            ("INSTAR_HTTP_HEADER_TIMEOUT_SECS", "1"),
            ("INSTAR_HTTP_BODY_TIMEOUT_SECS", "1"),
            ("INSTAR_HTTP_IDLE_TIMEOUT_SECS", "30"),
        ],
    )
    .await;

    // Slowloris: a header line every 300 ms, never the blank line.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let dribble = {
        let (mut read, mut write) = slow.into_split();
        let writer = tokio::spawn(async move {
            for i in 0..40 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if write
                    .write_all(format!("x-slow-{i}: y\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let start = Instant::now();
            let mut buf = [0u8; 1024];
            while let Ok(n) = read.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            writer.abort();
            start.elapsed()
        })
    };
    // A connection that never sends a byte, and one idle after its first request (keep-alive).
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // A body announced and stalled after ten bytes.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(
            b"POST /api/auth/signIn HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"id\":\"ab",
        )
        .await
        .unwrap();

    // Meanwhile another client is served, over and over.
    for _ in 0..5 {
        assert_eq!(get_from("127.0.0.1", addr, "/health/live").await, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let limit = Duration::from_secs(4);
    let took = closed_after(&mut silent, limit).await;
    assert!(took < Duration::from_millis(2500), "silent: {took:?}");
    let took = closed_after(&mut kept, limit).await;
    assert!(
        took < Duration::from_millis(2500),
        "keep-alive idle: {took:?}"
    );
    let took = closed_after(&mut stalled, limit).await;
    assert!(took < Duration::from_millis(2500), "stalled body: {took:?}");
    let took = tokio::time::timeout(limit, dribble)
        .await
        .expect("the slow client is cut off in time")
        .unwrap();
    assert!(took < Duration::from_millis(2500), "slowloris: {took:?}");

    assert_eq!(get_from("127.0.0.1", addr, "/health/live").await, 200);
    let metrics = metrics(addr).await;
    assert!(
        counter(&metrics, "instar_http_timeouts_total{kind=\"header\"}") >= 2,
        "{metrics}"
    );
    assert!(
        counter(&metrics, "instar_http_timeouts_total{kind=\"body\"}") >= 1,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_connection_moving_no_byte_is_closed_after_the_idle_timeout() {
    let (_child, addr) = start(
        "idle",
        &[
            ("INSTAR_HTTP_HEADER_TIMEOUT_SECS", "30"),
            ("INSTAR_HTTP_BODY_TIMEOUT_SECS", "30"),
            ("INSTAR_HTTP_IDLE_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    // The body timeout is far: only the idle timeout can end this request.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(
            b"POST /api/auth/signIn HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        )
        .await
        .unwrap();
    let took = closed_after(&mut stalled, Duration::from_secs(5)).await;
    assert!(took < Duration::from_millis(2500), "idle: {took:?}");
    let metrics = metrics(addr).await;
    assert!(
        counter(&metrics, "instar_http_timeouts_total{kind=\"idle\"}") >= 1,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_route_working_longer_than_the_idle_timeout_still_answers() {
    // The administrator's synchronous recompute (GET /api/batch/run_scheduler) pauses 400 ms
    // before each of 6 active users: about 2.4 s of the server's silence, more than twice the
    // 1 s idle timeout. That silence is not the client's, so the answer must come (the idle
    // timeout used to close the connection after 1 s with no response at all).
    let (_child, addr) = start(
        "working",
        &[
            ("INSTAR_HTTP_IDLE_TIMEOUT_SECS", "1"),
            ("INSTAR_FEED_TEST_USER_DELAY_MS", "400"),
            ("INSTAR_FEED_RECOMPUTE_AT", "off"),
        ],
    )
    .await;
    let db = std::env::temp_dir()
        .join(format!("instar-http-limits-working-{}", std::process::id()))
        .join("instar.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    for i in 0..6 {
        sqlx::query(
            "INSERT INTO user (id, name, email, role, last_login_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(format!("worker{i:02}"))
        .bind(format!("Worker {i}"))
        .bind(format!("worker{i:02}@example.com"))
        .bind(if i == 0 { "ADMIN" } else { "USER" })
        .bind(now)
        .bind(now)
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let token = {
        let now = u64::try_from(now / 1_000_000).unwrap();
        gateway::auth::Verifier::new(SECRET.as_bytes().to_vec()).sign(
            gateway::auth::Algorithm::Hs256,
            "worker00",
            Some("ADMIN"),
            now,
            now + 600,
        )
    };
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(
            format!(
                "GET /api/batch/run_scheduler HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(30), read_to_close(&mut stream))
        .await
        .expect("the recompute answers");
    let took = started.elapsed();
    assert_eq!(
        status(&reply),
        Some(200),
        "after {took:?}: {}",
        String::from_utf8_lossy(&reply)
    );
    assert!(
        took > Duration::from_millis(2000),
        "the run paused: {took:?}"
    );
    let metrics = metrics(addr).await;
    assert_eq!(
        counter(&metrics, "instar_http_timeouts_total{kind=\"idle\"}"),
        0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_connection_flood_is_refused_beyond_the_caps_while_health_answers() {
    let (_child, addr) = start(
        "flood",
        &[
            ("INSTAR_HTTP_MAX_CONNECTIONS", "60"),
            ("INSTAR_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "20"),
            ("INSTAR_TRUSTED_PROXIES", "none"),
            ("INSTAR_HTTP_HEADER_TIMEOUT_SECS", "60"),
        ],
    )
    .await;

    // 200 idle connections from one address: 20 are held, the rest answered 503 and closed.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        let mut s = connect_from("127.0.0.1", addr).await;
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Err(_) => held.push(s),
            Ok(Ok(n)) if n > 0 => {
                assert_eq!(status(&buf[..n]), Some(503));
                refused += 1;
            }
            Ok(_) => refused += 1,
        }
        if held.len() > 20 {
            break;
        }
    }
    assert_eq!(held.len(), 20, "the per-address cap holds");
    assert_eq!(refused, 180);
    // Another address is served.
    assert_eq!(get_from("127.0.0.2", addr, "/health/live").await, 200);

    // 20 more from each of two other addresses fill the global cap (60): one more is refused.
    for i in 0..40 {
        let from = if i < 20 { "127.0.0.3" } else { "127.0.0.5" };
        held.push(connect_from(from, addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = connect_from("127.0.0.4", addr).await;
    let reply = tokio::time::timeout(Duration::from_secs(2), read_to_close(&mut s))
        .await
        .expect("refused at once");
    assert_eq!(
        status(&reply),
        Some(503),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    // Places come back as connections close.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_from("127.0.0.1", addr, "/health/live").await, 200);
    let metrics = metrics(addr).await;
    assert!(
        counter(
            &metrics,
            "instar_http_connections_refused_total{cap=\"address\"}"
        ) >= 180,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "instar_http_connections_refused_total{cap=\"global\"}"
        ) >= 1,
        "{metrics}"
    );
    assert_eq!(counter(&metrics, "instar_http_connections_limit"), 60);
}

/// The status a fresh HTTP connection from `from` is answered with at once without asking
/// (503 when a cap refuses it), or `None` when it is held open.
async fn refused_http(from: &str, to: SocketAddr) -> Option<u16> {
    let mut s = connect_from(from, to).await;
    let reply = tokio::time::timeout(Duration::from_millis(500), read_to_close(&mut s))
        .await
        .ok()?;
    status(&reply)
}

/// Whether a fresh STOMP/TCP connection from `from` is held open (true) or refused at once
/// with the cap's ERROR (false).
async fn tcp_held(from: &str, to: SocketAddr) -> (bool, Option<TcpStream>) {
    let mut s = connect_from(from, to).await;
    let mut buf = [0u8; 256];
    match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
        Err(_) => (true, Some(s)),
        Ok(Ok(n)) => {
            let text = String::from_utf8_lossy(&buf[..n]);
            assert!(
                n == 0 || text.starts_with("ERROR\nmessage:too many connections"),
                "{text}"
            );
            (false, None)
        }
        Ok(Err(_)) => (false, None),
    }
}

/// The raw STOMP/TCP listener takes its connections from the HTTP listener's budget: the
/// per-address and global caps count both (two budgets let them hold twice the cap together, and
/// each is sized to the open-file limit). A refused TCP connection gets the cap's ERROR, a
/// refused HTTP one a 503; places come back to both as connections close.
#[tokio::test]
async fn the_stomp_tcp_listener_shares_the_http_listeners_connection_caps() {
    let tcp_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcp_listen = format!("127.0.0.1:{tcp_port}");
    let (_child, addr) = start(
        "tcp",
        &[
            ("INSTAR_TCP_LISTEN", &tcp_listen),
            ("INSTAR_HTTP_MAX_CONNECTIONS", "30"),
            ("INSTAR_HTTP_MAX_CONNECTIONS_PER_ADDRESS", "10"),
            ("INSTAR_TRUSTED_PROXIES", "none"),
            ("INSTAR_CONNECT_TIMEOUT_SECS", "60"),
        ],
    )
    .await;
    let tcp: SocketAddr = tcp_listen.parse().unwrap();
    // The TCP listener binds right after the HTTP one.
    for _ in 0..100 {
        if TcpStream::connect(tcp).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 40 connections from one address: 10 held, the rest refused with an ERROR and closed.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match tcp_held("127.0.0.1", tcp).await {
            (true, Some(s)) => held.push(s),
            _ => refused += 1,
        }
    }
    assert_eq!((held.len(), refused), (10, 30), "the per-address cap holds");
    // One budget for both listeners: that address gets no HTTP connection either.
    assert_eq!(refused_http("127.0.0.1", addr).await, Some(503));
    // An address holding HTTP connections has that much less for TCP: 5 + 5 of 10.
    let mut http_held = Vec::new();
    for _ in 0..5 {
        http_held.push(connect_from("127.0.0.2", addr).await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        let (ok, s) = tcp_held("127.0.0.2", tcp).await;
        assert!(ok, "127.0.0.2 is under its cap");
        held.extend(s);
    }
    assert!(
        !tcp_held("127.0.0.2", tcp).await.0,
        "HTTP and TCP share the address's cap"
    );
    // A third address fills the global cap (30 over both listeners): one more connection is
    // refused on either.
    for _ in 0..10 {
        let (ok, s) = tcp_held("127.0.0.3", tcp).await;
        assert!(ok, "127.0.0.3 is under its cap");
        held.extend(s);
    }
    assert!(!tcp_held("127.0.0.4", tcp).await.0, "the global cap holds");
    assert_eq!(refused_http("127.0.0.4", addr).await, Some(503));
    // Places come back as connections close, to both listeners.
    drop(held);
    drop(http_held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tcp_held("127.0.0.1", tcp).await.0);
    assert_eq!(get_from("127.0.0.4", addr, "/health/live").await, 200);
    let metrics = metrics(addr).await;
    assert!(
        counter(
            &metrics,
            "instar_tcp_connections_refused_total{cap=\"address\"}"
        ) >= 30,
        "{metrics}"
    );
    assert!(
        counter(
            &metrics,
            "instar_tcp_connections_refused_total{cap=\"global\"}"
        ) >= 1,
        "{metrics}"
    );
    assert_eq!(counter(&metrics, "instar_tcp_connections_limit"), 30);
}

#[tokio::test]
async fn a_400_kb_header_is_refused_without_the_process_growing() {
    let (child, addr) = start("header", &[]).await;
    let pid = child.id().unwrap();
    assert_eq!(get_from("127.0.0.1", addr, "/health/live").await, 200);
    let before = rss_kb(pid);
    let big = "a".repeat(400 * 1024);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let big = big.clone();
        tasks.push(tokio::spawn(async move {
            let s = TcpStream::connect(addr).await.unwrap();
            let (mut read, mut write) = s.into_split();
            let request = format!("GET /health/live HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n");
            // The server stops reading early: the rest may not be taken.
            let writer = tokio::spawn(async move {
                let _ = write.write_all(request.as_bytes()).await;
                write
            });
            let mut reply = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut reply))
                .await
                .expect("the server ends the connection in time");
            writer.abort();
            reply
        }));
    }
    for t in tasks {
        let reply = t.await.unwrap();
        // Refused: 431 (or the connection reset before the answer could be read); never served.
        if let Some(code) = status(&reply) {
            assert!(code == 431 || code == 400, "answered {code}");
        }
    }
    let after = rss_kb(pid);
    assert!(
        after < before + 10 * 1024,
        "resident memory grew from {before} KB to {after} KB"
    );
    assert_eq!(get_from("127.0.0.1", addr, "/health/live").await, 200);
}

/// `/metrics` (this machine, no proxy: allowed without a token).
async fn metrics(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let reply = read_to_close(&mut s).await;
    String::from_utf8_lossy(&reply).into_owned()
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}
