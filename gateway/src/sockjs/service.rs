//! Request routing, CORS and the static answers (`/`, `/info`, OPTIONS).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Buf, Bytes};
use warp::Reply;
use warp::http::header::{self, HeaderMap, HeaderValue};
use warp::http::{Method, StatusCode};
use warp::reply::Response;

use super::Server;
use super::{ws, xhr};

/// Longest accepted `<server>` and `<session>` path segment.
pub(crate) const MAX_ID_LEN: usize = 64;

pub(crate) const CT_TEXT: &str = "text/plain;charset=UTF-8";
pub(crate) const CT_JSON: &str = "application/json;charset=UTF-8";
pub(crate) const CT_JS: &str = "application/javascript;charset=UTF-8";
/// Without a charset: SockJS 0.3.3 expects the bare type, and event streams are UTF-8 by
/// definition (browsers' `EventSource` and Node's `eventsource` ignore the parameter).
pub(crate) const CT_EVENT_STREAM: &str = "text/event-stream";
/// Answers carrying session data: not stored, and not transformed (recompressed, re-encoded) by
/// proxies on the way, which would break streaming.
const NO_CACHE: &str = "no-store, no-cache, no-transform, must-revalidate, max-age=0";
const ONE_YEAR: &str = "31536000";
const ONE_YEAR_SECS: u64 = 31_536_000;

/// What the filter extracted from a request, apart from its body.
pub(crate) struct Request {
    /// Path after `/<prefix>/`, e.g. `"info"`, `""` (for `/<prefix>` and `/<prefix>/`) or `"/"`
    /// (for `/<prefix>//`).
    pub(crate) path: String,
    pub(crate) method: Method,
    pub(crate) headers: HeaderMap,
    pub(crate) peer: Option<SocketAddr>,
    /// Present on HTTP/1.1 requests that asked for an upgrade.
    pub(crate) upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// CORS answer for one request.
pub(crate) struct Cors {
    origin: Option<HeaderValue>,
    request_headers: Option<HeaderValue>,
}

impl Cors {
    /// `Err(())` when the request's `Origin` is not allowed.
    fn check(server: &Server, headers: &HeaderMap) -> Result<Self, ()> {
        let request_headers = headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .filter(|v| !v.is_empty())
            .cloned();
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(Self {
                origin: None,
                request_headers,
            });
        };
        let allowed = &server.config.allowed_origins;
        let ok = allowed.is_empty()
            || origin
                .to_str()
                .is_ok_and(|o| allowed.iter().any(|a| a.trim_end_matches('/') == o));
        if ok {
            Ok(Self {
                origin: Some(origin.clone()),
                request_headers,
            })
        } else {
            Err(())
        }
    }

    pub(crate) fn apply(&self, h: &mut HeaderMap) {
        if let Some(origin) = &self.origin {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        if let Some(req) = &self.request_headers {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, req.clone());
        }
    }
}

/// A response with a fixed body.
pub(crate) fn fixed(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: impl Into<Bytes>,
) -> Response {
    let mut res = warp::http::Response::new(body.into()).into_response();
    *res.status_mut() = status;
    if let Some(ct) = content_type {
        res.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    }
    res
}

/// Headers common to the session transports: CORS, no caching, and the
/// `JSESSIONID` cookie when configured.
pub(crate) fn transport_headers(
    server: &Server,
    cors: &Cors,
    req_headers: &HeaderMap,
    h: &mut HeaderMap,
) {
    cors.apply(h);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    if server.config.cookie_needed {
        let value = jsessionid(req_headers).unwrap_or("dummy");
        if let Ok(v) = HeaderValue::from_str(&format!("JSESSIONID={value};path=/")) {
            h.insert(header::SET_COOKIE, v);
        }
    }
}

/// The request's `JSESSIONID` cookie, when it is a plain token.
fn jsessionid(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().strip_prefix("JSESSIONID="))
        .find(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_LEN && !s.contains('.')
}

fn not_found() -> Result<Box<dyn Reply>, warp::Rejection> {
    Err(warp::reject::not_found())
}

fn boxed(res: Response) -> Result<Box<dyn Reply>, warp::Rejection> {
    Ok(Box::new(res))
}

fn method_not_allowed(allow: &'static str) -> Response {
    let mut res = fixed(StatusCode::METHOD_NOT_ALLOWED, None, Bytes::new());
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}

fn forbidden() -> Response {
    fixed(
        StatusCode::FORBIDDEN,
        Some(CT_TEXT),
        "Origin not allowed.\n",
    )
}

/// `204` answer to a CORS preflight.
fn options(cors: &Cors, methods: &'static str) -> Response {
    let mut res = fixed(StatusCode::NO_CONTENT, None, Bytes::new());
    let h = res.headers_mut();
    cors.apply(h);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(ONE_YEAR),
    );
    // The same year for caches that only know HTTP/1.0's `Expires`.
    let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(ONE_YEAR_SECS));
    if let Ok(v) = HeaderValue::from_str(&expires) {
        h.insert(header::EXPIRES, v);
    }
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static(methods),
    );
    res
}

fn info(server: &Server, cors: &Cors) -> Response {
    let body = serde_json::json!({
        "entropy": rand::random::<u32>(),
        "origins": ["*:*"],
        "cookie_needed": server.config.cookie_needed,
        "websocket": true,
    });
    let mut res = fixed(StatusCode::OK, Some(CT_JSON), body.to_string());
    let h = res.headers_mut();
    cors.apply(h);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    res
}

/// Routes one request under the prefix.
pub(crate) async fn dispatch<S, B>(
    server: Arc<Server>,
    req: Request,
    body: S,
) -> Result<Box<dyn Reply>, warp::Rejection>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: Buf + Send,
{
    let Request {
        path,
        method,
        headers,
        peer,
        upgrade,
    } = req;
    // The tail has no leading separator (`/ws/info` gives `info`, `/ws` and `/ws/` give ``), so an
    // empty first segment is an empty path segment: `/ws//` is a 404, not the greeting.
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        [""] => match method {
            Method::GET | Method::HEAD => {
                boxed(fixed(StatusCode::OK, Some(CT_TEXT), "Welcome to SockJS!\n"))
            }
            _ => boxed(method_not_allowed("GET, HEAD")),
        },
        ["info"] => {
            let Ok(cors) = Cors::check(&server, &headers) else {
                return boxed(forbidden());
            };
            match method {
                Method::GET => boxed(info(&server, &cors)),
                Method::OPTIONS => boxed(options(&cors, "OPTIONS, GET")),
                _ => boxed(method_not_allowed("OPTIONS, GET")),
            }
        }
        ["websocket"] => {
            if Cors::check(&server, &headers).is_err() {
                return boxed(forbidden());
            }
            boxed(ws::upgrade(
                server,
                upgrade,
                &method,
                &headers,
                peer,
                ws::Kind::Raw,
            ))
        }
        [srv, session, transport] => {
            if !valid_segment(srv) || !valid_segment(session) {
                return not_found();
            }
            let known = matches!(
                *transport,
                "websocket" | "xhr" | "xhr_send" | "xhr_streaming" | "eventsource"
            );
            if !known {
                return not_found();
            }
            let Ok(cors) = Cors::check(&server, &headers) else {
                return boxed(forbidden());
            };
            let rq = xhr::Req {
                session,
                headers: &headers,
                peer,
                cors,
            };
            match (*transport, &method) {
                ("websocket", _) => boxed(ws::upgrade(
                    server,
                    upgrade,
                    &method,
                    &headers,
                    peer,
                    ws::Kind::SockJs,
                )),
                ("xhr" | "xhr_send" | "xhr_streaming", &Method::OPTIONS) => {
                    boxed(options(&rq.cors, "OPTIONS, POST"))
                }
                ("xhr", &Method::POST) => {
                    boxed(xhr::receive(server, rq, xhr::Receiver::Polling).await)
                }
                ("xhr_streaming", &Method::POST) => {
                    boxed(xhr::receive(server, rq, xhr::Receiver::XhrStreaming).await)
                }
                ("eventsource", &Method::GET) => {
                    boxed(xhr::receive(server, rq, xhr::Receiver::EventSource).await)
                }
                ("xhr_send", &Method::POST) => boxed(xhr::send(server, rq, body).await),
                ("eventsource", _) => boxed(method_not_allowed("GET")),
                _ => boxed(method_not_allowed("OPTIONS, POST")),
            }
        }
        _ => not_found(),
    }
}
