//! `instar probe URL`: exits 0 once `GET URL` answers 2xx, for supervisors that have no HTTP
//! client of their own (the container image has no shell or curl; the systemd units wait for
//! `/health/ready` with it before dependants start). Plain `http://host:port/path` only: it is
//! meant for a process's own loopback or container address.
//!
//! Hand-written (one HTTP/1.0 request, the status line read back) rather than a client crate: the
//! binary links no HTTP client, and this needs no TLS, redirects or bodies.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Flags of `instar probe`.
#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// URL to GET, e.g. http://127.0.0.1:8080/health/ready (http only).
    pub url: String,
    /// Keep trying for this many seconds before failing (0: one attempt).
    #[arg(long, default_value_t = 0)]
    pub wait: u64,
}

/// The most of a response read to find its status line.
const MAX_HEAD: usize = 8 * 1024;

/// One attempt bounded by this.
const ATTEMPT: Duration = Duration::from_secs(3);

pub(crate) async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let (host, path) = parse(&args.url)?;
    let deadline = Instant::now() + Duration::from_secs(args.wait);
    loop {
        let result = tokio::time::timeout(ATTEMPT, attempt(host, path))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {ATTEMPT:?}")));
        match result {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("probing {}", args.url)));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// `http://host:port/path` into (`host:port`, `/path`).
fn parse(url: &str) -> anyhow::Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("'{url}': only http:// URLs can be probed"))?;
    let (host, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    anyhow::ensure!(
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b)),
        "'{url}': not a host[:port]"
    );
    anyhow::ensure!(
        path.bytes().all(|b| b.is_ascii_graphic()),
        "'{url}': the path must be plain ASCII without spaces"
    );
    Ok((host, path))
}

async fn attempt(host: &str, path: &str) -> anyhow::Result<()> {
    let addr = if host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !host.ends_with(']')
    {
        host.to_owned()
    } else {
        format!("{host}:80")
    };
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: instar-probe\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {line:?}"))?;
    anyhow::ensure!((200..300).contains(&status), "answered {line}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse("http://127.0.0.1:8080/health/ready").unwrap(),
            ("127.0.0.1:8080", "/health/ready")
        );
        assert_eq!(parse("http://gw:8080").unwrap(), ("gw:8080", "/"));
        for bad in [
            "https://x/",
            "ftp://x",
            "http:///x",
            "http://a b/",
            "http://x/a b",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
