//! `instar serve --static DIR`: the built frontend on the API's own origin.
//!
//! * A request for an existing file gets that file; a directory gets its `index.html`.
//! * Any other path that looks like a page (no file extension in its last segment, or a client
//!   that accepts `text/html`) gets `DIR/index.html`: the frontend routes it on the client (SPA
//!   fallback). A missing asset (`/assets/app-3f2a.js`) is a plain 404, never HTML.
//! * Precompressed copies next to a file (`app.js.br`, `app.js.gz`) are sent instead of it when the
//!   client accepts that encoding (br first), with `Content-Encoding` and `Vary: Accept-Encoding`;
//!   the type is the original file's.
//! * `Cache-Control`: files under `/assets/` (Vite) and `/static/` (Create React App), whose names
//!   carry a content hash, are `public, max-age=31536000, immutable`; everything else, index.html
//!   above all, is `no-cache` (revalidated with `If-Modified-Since` on every load, so a new
//!   deployment shows at once). `X-Content-Type-Options: nosniff` everywhere.
//! * The paths of the other routes (`/api`, `/media`, `/ws`, `/stomp`, `/health`, `/metrics`) are
//!   never answered from here; hidden files and `..` segments are 404.
//!
//! Why not tower-http's `ServeDir`: warp 0.4 has no public way to build a streaming response body
//! from another body type, so its responses would have to be read whole into memory first. The
//! file itself is sent by warp's own `warp::fs::file` (streaming, `Last-Modified` and
//! `If-Modified-Since`, `Range`, the type from `mime_guess`), run as a service in a task of its own
//! (warp does not nest filter runs); this module only picks the file and sets the headers.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tower_service::Service as _;
use warp::Filter as _;
use warp::Reply as _;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::Response;

/// Path prefixes of the other routes of `instar serve`: never served from the directory.
const RESERVED: [&str; 6] = ["api", "media", "ws", "stomp", "health", "metrics"];

/// Prefixes whose files carry a content hash in their names.
const HASHED: [&str; 2] = ["/assets/", "/static/"];

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The request headers passed on to `warp::fs::file`: conditionals and ranges.
const PASSED: [header::HeaderName; 4] = [
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::RANGE,
    header::IF_RANGE,
];

/// The built frontend in `dir` (which must hold an `index.html`).
#[derive(Debug)]
pub(crate) struct StaticFiles {
    root: PathBuf,
}

/// A content coding of a precompressed copy, best first.
const CODINGS: [(&str, &str); 2] = [("br", "br"), ("gzip", "gz")];

impl StaticFiles {
    pub(crate) fn open(dir: &Path) -> anyhow::Result<StaticFiles> {
        let root = dir
            .canonicalize()
            .with_context(|| format!("static directory {}", dir.display()))?;
        let index = root.join("index.html");
        anyhow::ensure!(
            index.is_file(),
            "static directory {} has no index.html (point INSTAR_STATIC_DIR at a built frontend)",
            root.display()
        );
        Ok(StaticFiles { root })
    }

    /// GET and HEAD for every path outside [`RESERVED`]; mount it after the other routes.
    pub(crate) fn routes(self) -> BoxedFilter<(Box<dyn warp::Reply>,)> {
        let me = Arc::new(self);
        warp::get()
            .or(warp::head())
            .unify()
            .and(warp::method())
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and_then(
                move |method: Method, path: warp::path::FullPath, headers: HeaderMap| {
                    let me = me.clone();
                    async move {
                        match me.pick(path.as_str(), &headers).await {
                            Some(pick) => Ok(Box::new(me.send(method, pick, &headers).await)
                                as Box<dyn warp::Reply>),
                            None => Err(warp::reject::not_found()),
                        }
                    }
                },
            )
            .boxed()
    }

    /// The file answering `path`, or `None` (404 / another route).
    async fn pick(&self, path: &str, headers: &HeaderMap) -> Option<Pick> {
        let (segments, encoded) = segments(path)?;
        if segments.first().is_some_and(|s| RESERVED.contains(s)) {
            return None;
        }
        let mut file = self.root.clone();
        file.extend(&segments);
        let found = match tokio::fs::metadata(&file).await {
            Ok(_) if encoded => None,
            Ok(m) if m.is_file() => Some(file),
            Ok(m) if m.is_dir() => {
                let index = file.join("index.html");
                is_file(&index).await.then_some(index)
            }
            _ => None,
        };
        let hashed = HASHED.iter().any(|p| path.starts_with(p));
        let (file, fallback) = match found {
            Some(file) => (file, false),
            None if !hashed && wants_page(&segments, headers) => {
                (self.root.join("index.html"), true)
            }
            None => return None,
        };
        let accepted = accepted_codings(headers);
        let mut variants = false;
        let mut chosen = None;
        for (coding, ext) in CODINGS {
            let mut name = file.clone().into_os_string();
            name.push(".");
            name.push(ext);
            let copy = PathBuf::from(name);
            if is_file(&copy).await {
                variants = true;
                if chosen.is_none() && accepted.contains(&coding) {
                    chosen = Some((copy, coding));
                }
            }
        }
        let mime = mime_guess::from_path(&file).first_or_octet_stream();
        Some(Pick {
            send: chosen
                .as_ref()
                .map_or_else(|| file.clone(), |(p, _)| p.clone()),
            content_type: mime.essence_str().to_owned()
                + if mime.type_() == mime_guess::mime::TEXT
                    || mime.subtype() == mime_guess::mime::JAVASCRIPT
                {
                    "; charset=utf-8"
                } else {
                    ""
                },
            encoding: chosen.map(|(_, c)| c),
            varies: variants,
            immutable: hashed && !fallback,
        })
    }

    /// Sends the picked file with warp's file filter, then sets the headers.
    async fn send(&self, method: Method, pick: Pick, headers: &HeaderMap) -> Response {
        let mut req = warp::http::Request::new(String::new());
        *req.method_mut() = method;
        *req.uri_mut() = warp::http::Uri::from_static("/");
        for name in PASSED {
            if let Some(v) = headers.get(&name) {
                req.headers_mut().insert(name, v.clone());
            }
        }
        let mut service = warp::service(warp::fs::file(pick.send.clone()));
        // In a task of its own: warp refuses to run a filter inside another filter's run.
        let res = match tokio::spawn(async move { service.call(req).await }).await {
            Ok(Ok(res)) => res,
            Ok(Err(never)) => match never {},
            Err(e) => {
                tracing::error!(file = %pick.send.display(), error = %e, "static file task failed");
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        };
        let mut res = res.into_response();
        let status = res.status();
        let h = res.headers_mut();
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            if let Ok(v) = HeaderValue::from_str(&pick.content_type) {
                h.insert(header::CONTENT_TYPE, v);
            }
            if let Some(coding) = pick.encoding {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
            }
            h.insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static(if pick.immutable {
                    IMMUTABLE
                } else {
                    "no-cache"
                }),
            );
        }
        if pick.varies {
            h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        res
    }
}

/// What to send for one request.
#[derive(Debug)]
struct Pick {
    send: PathBuf,
    content_type: String,
    encoding: Option<&'static str>,
    varies: bool,
    immutable: bool,
}

async fn is_file(p: &Path) -> bool {
    tokio::fs::metadata(p).await.is_ok_and(|m| m.is_file())
}

/// The path's segments and whether any is percent-encoded, or `None` for anything that could
/// leave the directory or name a hidden file: `..`, `.`, segments starting with `.`, backslashes.
/// Paths are never decoded: built frontends use plain file names, so an encoded path (`%2e%2e`,
/// `%2f`, or a client route with a non-ASCII user id) names no file and can only get the SPA
/// fallback.
fn segments(path: &str) -> Option<(Vec<&str>, bool)> {
    let mut out = Vec::new();
    let mut encoded = false;
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        if raw.starts_with('.') || raw.contains('\\') {
            return None;
        }
        encoded |= raw.contains('%');
        out.push(raw);
    }
    Some((out, encoded))
}

/// Whether a missing path should get the frontend's index.html: its last segment has no file
/// extension (a client route such as `/profile/alice`), or the client asks for HTML.
fn wants_page(segments: &[&str], headers: &HeaderMap) -> bool {
    let no_extension = segments.last().is_none_or(|s| !s.contains('.'));
    let html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    no_extension || html
}

/// The codings of `Accept-Encoding` with a non-zero weight (`*` stands for every coding).
fn accepted_codings(headers: &HeaderMap) -> Vec<&'static str> {
    let mut out = Vec::new();
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let zero = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            if zero {
                continue;
            }
            for (c, _) in CODINGS {
                if (coding == c || coding == "*") && !out.contains(&c) {
                    out.push(c);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn accept_encoding_weights() {
        assert_eq!(
            accepted_codings(&accept("gzip, deflate, br")),
            ["gzip", "br"]
        );
        assert_eq!(accepted_codings(&accept("br;q=0, gzip;q=0.5")), ["gzip"]);
        assert_eq!(accepted_codings(&accept("GZIP")), ["gzip"]);
        assert_eq!(accepted_codings(&accept("*")), ["br", "gzip"]);
        assert_eq!(accepted_codings(&accept("identity")), Vec::<&str>::new());
        assert_eq!(accepted_codings(&HeaderMap::new()), Vec::<&str>::new());
    }

    #[test]
    fn segments_refuse_escapes_and_hidden_files() {
        assert_eq!(segments("/a/b.js"), Some((vec!["a", "b.js"], false)));
        assert_eq!(segments("/"), Some((vec![], false)));
        assert_eq!(
            segments("/a/%2e%2e/b"),
            Some((vec!["a", "%2e%2e", "b"], true))
        );
        for bad in ["/../etc/passwd", "/a/./b", "/.env", "/a\\b"] {
            assert_eq!(segments(bad), None, "{bad}");
        }
    }

    #[test]
    fn pages_fall_back_and_assets_do_not() {
        let none = HeaderMap::new();
        assert!(wants_page(&["profile", "alice"], &none));
        assert!(wants_page(&[], &none));
        assert!(!wants_page(&["app.js"], &none));
        let mut html = HeaderMap::new();
        html.insert(header::ACCEPT, HeaderValue::from_static("text/html,*/*"));
        assert!(wants_page(&["user.name"], &html));
    }
}
