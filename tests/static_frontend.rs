//! `instar serve --static DIR` serves a built frontend on the API's origin: the files with their
//! types, precompressed copies by `Accept-Encoding`, caching headers, the SPA fallback for client
//! routes (never for missing assets or the API's paths), conditional and range requests. The
//! frontend is a small fake build written by the test (index.html, hashed JS and CSS with `.gz` and
//! `.br` copies, a nested page).
#![allow(clippy::unwrap_used)]

mod flow_support;

use std::path::Path;
use std::time::Duration;

use flow_support::{start_with, unique_dir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const INDEX: &str = "<!doctype html><html><head><script type=\"module\" src=\"/assets/index-B7xq2Lc9.js\"></script><link rel=\"stylesheet\" href=\"/assets/index-Dk3Pq9aZ.css\"></head><body><div id=\"root\"></div></body></html>\n";
const JS: &str = "console.log('instar frontend');\n";

/// A fake `vite build` output. The precompressed copies hold marker bytes (not real compressed
/// data): the test only checks which file is sent.
fn fake_build(dir: &Path) {
    let assets = dir.join("assets");
    std::fs::create_dir_all(&assets).unwrap();
    std::fs::create_dir_all(dir.join("help")).unwrap();
    std::fs::write(dir.join("index.html"), INDEX).unwrap();
    std::fs::write(dir.join("index.html.gz"), b"GZ-INDEX").unwrap();
    std::fs::write(assets.join("index-B7xq2Lc9.js"), JS).unwrap();
    std::fs::write(assets.join("index-B7xq2Lc9.js.gz"), b"GZ-JS").unwrap();
    std::fs::write(assets.join("index-B7xq2Lc9.js.br"), b"BR-JS").unwrap();
    std::fs::write(assets.join("index-Dk3Pq9aZ.css"), "body{margin:0}\n").unwrap();
    std::fs::write(
        assets.join("logo-Q1w2E3r4.svg"),
        "<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
    )
    .unwrap();
    std::fs::write(dir.join("favicon.ico"), [0u8, 0, 1, 0]).unwrap();
    std::fs::write(dir.join("manifest.webmanifest"), "{}").unwrap();
    std::fs::write(dir.join("help/index.html"), "<p>help</p>").unwrap();
    std::fs::write(dir.join(".env"), "SECRET=1").unwrap();
}

/// One raw HTTP/1.1 request (the path is sent as it is); returns (status, head, body).
async fn raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = out[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
    out
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_static_answers_the_frontend_on_the_same_origin() {
    let site = unique_dir("static-site");
    fake_build(&site);
    let server = start_with(&[("INSTAR_STATIC_DIR", site.display().to_string())]).await;
    let addr = server.proc.addr.clone();

    // index.html: HTML, revalidated on every load.
    for path in ["/", "/index.html"] {
        let (status, head, body) = raw(&addr, "GET", path, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            header(&head, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(header(&head, "cache-control"), Some("no-cache"));
        assert_eq!(header(&head, "x-content-type-options"), Some("nosniff"));
        assert_eq!(body, INDEX.as_bytes(), "{path}");
    }
    // Client routes get index.html (SPA fallback), also with a percent-encoded (Korean) user id.
    for path in [
        "/profile/alice01",
        "/chat/room/5",
        "/profile/%ED%95%9C%EA%B8%80",
    ] {
        let (status, head, body) = raw(&addr, "GET", path, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            header(&head, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(header(&head, "cache-control"), Some("no-cache"), "{path}");
        assert_eq!(body, INDEX.as_bytes(), "{path}");
    }
    // ... and a page with a dot in its route when the browser asks for HTML.
    let (status, _, body) = raw(
        &addr,
        "GET",
        "/profile/kim.lee",
        &[("Accept", "text/html,*/*")],
    )
    .await;
    assert_eq!((status, body.as_slice()), (200, INDEX.as_bytes()));
    // A directory answers its own index.html.
    let (status, _, body) = raw(&addr, "GET", "/help/", &[]).await;
    assert_eq!((status, body.as_slice()), (200, b"<p>help</p>".as_slice()));

    // Hashed assets: their types, immutable caching, the best precompressed copy accepted.
    let js = "/assets/index-B7xq2Lc9.js";
    for (accept, want, encoding) in [
        (None, JS.as_bytes(), None),
        (Some("gzip, deflate"), b"GZ-JS".as_slice(), Some("gzip")),
        (Some("gzip, deflate, br"), b"BR-JS".as_slice(), Some("br")),
        (Some("br;q=0, gzip"), b"GZ-JS".as_slice(), Some("gzip")),
        (Some("identity"), JS.as_bytes(), None),
    ] {
        let headers: Vec<(&str, &str)> =
            accept.map(|a| ("Accept-Encoding", a)).into_iter().collect();
        let (status, head, body) = raw(&addr, "GET", js, &headers).await;
        assert_eq!(status, 200, "{accept:?}");
        assert_eq!(body, want, "{accept:?}");
        assert_eq!(header(&head, "content-encoding"), encoding, "{accept:?}");
        assert_eq!(
            header(&head, "content-type"),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            header(&head, "cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(header(&head, "vary"), Some("accept-encoding"));
        assert_eq!(
            header(&head, "content-length"),
            Some(want.len().to_string().as_str())
        );
    }
    for (path, mime) in [
        ("/assets/index-Dk3Pq9aZ.css", "text/css; charset=utf-8"),
        ("/assets/logo-Q1w2E3r4.svg", "image/svg+xml"),
        ("/favicon.ico", "image/x-icon"),
        ("/manifest.webmanifest", "application/manifest+json"),
    ] {
        let (status, head, _) = raw(&addr, "GET", path, &[("Accept-Encoding", "gzip, br")]).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(header(&head, "content-type"), Some(mime), "{path}");
        assert_eq!(
            header(&head, "content-encoding"),
            None,
            "{path}: no copy, no coding"
        );
        assert_eq!(header(&head, "vary"), None, "{path}");
    }
    // index.html has a gzip copy too.
    let (_, head, body) = raw(&addr, "GET", "/", &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(
        (body.as_slice(), header(&head, "content-encoding")),
        (b"GZ-INDEX".as_slice(), Some("gzip"))
    );

    // Missing assets are 404, never index.html; so are hidden files and escapes.
    for path in [
        "/assets/index-missing.js",
        "/assets/route-without-extension",
        "/logo.png",
        "/.env",
        "/../Cargo.toml",
        "/assets/%2e%2e/%2e%2e/Cargo.toml",
    ] {
        let (status, _, body) = raw(&addr, "GET", path, &[]).await;
        assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(!body.starts_with(b"<!doctype"), "{path}");
    }
    // The other routes are not shadowed: the API's own 404, health, SockJS info.
    let (status, _, body) = raw(&addr, "GET", "/api/no/such/route", &[]).await;
    assert_ne!(body, INDEX.as_bytes());
    assert!(status >= 400, "{status}");
    let (status, _, body) = raw(&addr, "GET", "/health/live", &[]).await;
    assert_eq!((status, body.as_slice()), (200, b"live\n".as_slice()));
    let (status, head, _) = raw(&addr, "GET", "/ws/info", &[]).await;
    assert_eq!(status, 200);
    assert!(
        header(&head, "content-type")
            .unwrap()
            .starts_with("application/json")
    );

    // Conditional and range requests, HEAD without a body, other methods refused.
    let (_, head, _) = raw(&addr, "GET", js, &[]).await;
    let modified = header(&head, "last-modified").unwrap().to_owned();
    let (status, head, body) = raw(&addr, "GET", js, &[("If-Modified-Since", &modified)]).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());
    assert_eq!(
        header(&head, "cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    let (status, _, body) = raw(&addr, "GET", js, &[("Range", "bytes=0-6")]).await;
    assert_eq!((status, body.as_slice()), (206, b"console".as_slice()));
    let (status, head, body) = raw(&addr, "HEAD", "/", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "content-length"),
        Some(INDEX.len().to_string().as_str())
    );
    assert!(body.is_empty());
    let (status, _, body) = raw(&addr, "POST", "/index.html", &[("Content-Length", "0")]).await;
    assert!(matches!(status, 404 | 405), "{status}");
    assert_ne!(body, INDEX.as_bytes());

    drop(server);
    let _ = std::fs::remove_dir_all(&site);
}

#[tokio::test]
async fn serve_static_refuses_a_directory_without_index_html() {
    let dir = unique_dir("static-empty");
    std::fs::create_dir_all(&dir).unwrap();
    for (target, why) in [
        (dir.clone(), "has no index.html"),
        (dir.join("missing"), "static directory"),
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_instar"))
            .args(["serve", "--static"])
            .arg(&target)
            .env("INSTAR_LISTEN", "127.0.0.1:0")
            .env("INSTAR_TCP_LISTEN", "off")
            .env("INSTAR_DATA_DIR", dir.join("data"))
            .env_remove("INSTAR_CONFIG")
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(why), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
