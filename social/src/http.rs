//! The REST envelope, error mapping and the filters every route shares.
//!
//! Envelope (contract §1): a flat JSON object with `code` and the endpoint's fields as siblings.
//! Handlers return [`ApiResult`]; errors become `{"code": …}` responses with the contract's HTTP
//! status, never warp rejections, so one route's failure cannot fall through to another route.
//! Framework-level failures (missing or malformed query parameters, bad JSON, oversized bodies,
//! wrong method) answer 400 `{"code":"BR"}`; unexpected errors 500 `{"code":"DE"}` (the original
//! answered 401 for all of these, contract §1.3).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use warp::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::store::StoreError;
use crate::tokens::Tokens;

/// Largest JSON request body (the longest legitimate one, a 2,200-character caption inside a post,
/// is far smaller; multipart uploads have their own limits).
pub const MAX_JSON_BODY: u64 = 64 * 1024;

/// A handler's outcome.
pub type ApiResult = Result<Response, ApiError>;

/// An error response: HTTP status, contract code, and the endpoint's payload keys to send as `null`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    nulls: &'static [&'static str],
}

impl ApiError {
    /// An error with a code and status.
    pub const fn new(status: StatusCode, code: &'static str) -> Self {
        Self {
            status,
            code,
            nulls: &[],
        }
    }

    /// The same error with the endpoint's payload keys present as `null` (contract §1.1).
    #[must_use]
    pub const fn with_nulls(mut self, keys: &'static [&'static str]) -> Self {
        self.nulls = keys;
        self
    }

    /// 400 `BR`.
    pub const fn bad_request() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BR")
    }

    /// 400 with another code (`DU`, `DUE`, `NV`, …).
    pub const fn bad_request_code(code: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code)
    }

    /// 500 `DE`.
    pub const fn database() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "DE")
    }

    /// 401 `AV`.
    pub const fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "AV")
    }

    /// 429 `TMR` (too many requests; not in the original, which had no limits).
    pub const fn too_many() -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "TMR")
    }

    /// 503 `DE`: password hashing is saturated (refused at once, try again shortly).
    pub const fn busy() -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "DE")
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The response.
    pub fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("code".into(), Value::from(self.code));
        for k in self.nulls {
            body.insert((*k).into(), Value::Null);
        }
        json_response(self.status, &Value::Object(body))
    }
}

impl From<crate::password::PasswordError> for ApiError {
    fn from(e: crate::password::PasswordError) -> Self {
        match e {
            crate::password::PasswordError::Busy => ApiError::busy(),
            crate::password::PasswordError::Failed(why) => {
                tracing::error!(%why, "password hashing");
                ApiError::database()
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError::database()
    }
}

/// 200 `{"code":"SC", ...fields of payload}`. `payload` must serialise to a JSON object (or unit).
pub fn sc<T: Serialize>(payload: &T) -> ApiResult {
    /// `{"code":"SC", ...payload's fields}`, written straight to bytes.
    #[derive(Serialize)]
    struct Sc<'a, T> {
        code: &'static str,
        #[serde(flatten)]
        payload: &'a T,
    }
    let bytes = serde_json::to_vec(&Sc {
        code: "SC",
        payload,
    })
    .map_err(|e| {
        tracing::error!(error = %e, "serialising a response (the payload must be an object)");
        ApiError::database()
    })?;
    Ok(json_bytes(StatusCode::OK, bytes))
}

/// 200 with `body`, a complete `{"code":"SC",…}` object written by hand (the hottest routes).
pub fn sc_json(body: String) -> Response {
    json_bytes(StatusCode::OK, body.into_bytes())
}

/// 200 with a JSON body already rendered and shared (sent without a copy).
pub fn sc_shared(body: bytes::Bytes) -> Response {
    json_bytes(StatusCode::OK, body)
}

/// 200 `{"code":"SC"}`.
pub fn sc_only() -> ApiResult {
    sc(&())
}

/// 200 with an empty body (the contract's "void" endpoints).
pub fn empty() -> ApiResult {
    Ok(StatusCode::OK.into_response())
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{\"code\":\"DE\"}".to_vec());
    json_bytes(status, bytes)
}

/// A response with an already serialised JSON body.
fn json_bytes(status: StatusCode, bytes: impl Into<bytes::Bytes>) -> Response {
    let bytes: bytes::Bytes = bytes.into();
    let mut res = Response::new(bytes.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// Turns a handler's result into a response.
pub fn finish(result: ApiResult) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// Rejections of our own filters.
#[derive(Debug)]
pub enum Refusal {
    /// No or bad token on a protected route.
    Unauthorized,
    /// Malformed input (JSON, query, multipart).
    BadInput(String),
    /// Body over the limit.
    TooLarge,
    /// A check the request needs could not be made (the database is down).
    Unavailable,
}

impl warp::reject::Reject for Refusal {}

/// JSON body of type `T`: `Content-Type` must be JSON (compared case-insensitively: the frontend
/// sends `Application/json` once), the body at most [`MAX_JSON_BODY`] bytes, checked before it is
/// buffered. Unknown fields are ignored.
pub fn json_body<T: DeserializeOwned + Send>()
-> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::header::optional::<String>("content-type")
        .and(warp::header::optional::<u64>("content-length"))
        .and_then(|ct: Option<String>, len: Option<u64>| async move {
            let is_json = ct.as_deref().is_some_and(|ct| {
                let main = ct.split(';').next().unwrap_or("").trim();
                main.eq_ignore_ascii_case("application/json")
                    || (main.len() > 5 && main.to_ascii_lowercase().ends_with("+json"))
            });
            if !is_json {
                return Err(warp::reject::custom(Refusal::BadInput(
                    "Content-Type must be application/json".into(),
                )));
            }
            if len.is_some_and(|n| n > MAX_JSON_BODY) {
                return Err(warp::reject::custom(Refusal::TooLarge));
            }
            Ok(())
        })
        .untuple_one()
        .and(limited_body(MAX_JSON_BODY))
        .and_then(|bytes: Bytes| async move {
            serde_json::from_slice::<T>(&bytes)
                .map_err(|e| warp::reject::custom(Refusal::BadInput(format!("JSON: {e}"))))
        })
}

/// The body, refused with [`Refusal::TooLarge`] past `limit` bytes whether or not the client sent
/// `Content-Length` (streamed bodies are cut off at the limit, not buffered whole).
pub fn limited_body(limit: u64) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::body::stream().and_then(move |stream| collect_limited(stream, limit))
}

async fn collect_limited<S, B>(stream: S, limit: u64) -> Result<Bytes, Rejection>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures_util::TryStreamExt as _;
    let mut buf = bytes::BytesMut::new();
    let mut stream = Box::pin(stream);
    while let Some(mut chunk) = stream
        .try_next()
        .await
        .map_err(|e| warp::reject::custom(Refusal::BadInput(format!("body: {e}"))))?
    {
        if buf.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(warp::reject::custom(Refusal::TooLarge));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            buf.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(buf.freeze())
}

/// A multipart form: `Content-Length` (when sent) at most `limit`, else 413. warp's own cap is off
/// because the parts are read as a stream and capped again by the route as they arrive, so chunked
/// bodies are bounded too.
pub fn multipart_form(
    limit: u64,
) -> impl Filter<Extract = (warp::multipart::FormData,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(move |len: Option<u64>| async move {
            if len.is_some_and(|n| n > limit) {
                Err(warp::reject::custom(Refusal::TooLarge))
            } else {
                Ok(())
            }
        })
        .untuple_one()
        .and(warp::multipart::form().max_length(None))
}

/// The authenticated user id, from `Authorization: Bearer <jwt>`; 401 `AV` otherwise, also for
/// a revoked token (its version is below the user's, [`crate::revocation`]). When the user's
/// version cannot be read the request fails closed (500 `DE`).
pub fn authed(
    tokens: Arc<Tokens>,
    revocation: Arc<crate::revocation::Revocation>,
) -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |h: Option<String>| {
        let tokens = Arc::clone(&tokens);
        let revocation = Arc::clone(&revocation);
        async move {
            let claims = h
                .as_deref()
                .and_then(|h| h.strip_prefix("Bearer "))
                .map(str::trim)
                .and_then(|t| tokens.verify(t).ok())
                .ok_or_else(|| warp::reject::custom(Refusal::Unauthorized))?;
            match revocation.accepts(&claims.sub, claims.ver).await {
                Ok(true) => {}
                Ok(false) => return Err(warp::reject::custom(Refusal::Unauthorized)),
                Err(e) => {
                    tracing::error!(error = %e, "token version check");
                    return Err(warp::reject::custom(Refusal::Unavailable));
                }
            }
            tracing::Span::current().record("user", claims.sub.as_str());
            Ok(claims.sub)
        }
    })
}

/// Longest `X-Request-Id` taken from a client or proxy; a longer or odd one is replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// The request header carrying the request id (and echoed in the response).
pub const X_REQUEST_ID: &str = "x-request-id";

/// Whether an incoming request id is kept: 1–[`MAX_REQUEST_ID`] bytes of letters, digits and
/// `-_.:/+=@` (what proxies and tracing systems generate), so it is safe in logs and headers.
pub fn sane_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// The span of one REST request: `request_id` and `user` are recorded by [`request_id`] and
/// [`authed`] as they become known (`warp::trace` enters it around the whole route).
/// Exported spans: a child of the caller's `traceparent` header when it sent a well-formed one.
pub fn request_span(info: warp::trace::Info<'_>) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        request_id = tracing::field::Empty,
        method = %info.method(),
        path = %info.path(),
        user = tracing::field::Empty,
    );
    if let Some(tp) = info
        .request_headers()
        .get(broker_bridge::trace::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
    {
        broker_bridge::trace::set_parent(&span, tp);
    }
    span
}

/// The request id: the incoming `X-Request-Id` when [`sane_request_id`], else a new one (a v4
/// UUID); recorded on the current request span and returned for the response.
pub fn request_id() -> impl Filter<Extract = (HeaderValue,), Error = Infallible> + Clone {
    warp::header::value(X_REQUEST_ID)
        .map(Some)
        .or(warp::any().map(|| None))
        .unify()
        .map(|incoming: Option<HeaderValue>| {
            let id = incoming
                .filter(|v| sane_request_id(v.as_bytes()))
                .unwrap_or_else(|| {
                    let fresh = uuid::Uuid::new_v4().simple().to_string();
                    HeaderValue::from_str(&fresh).unwrap_or(HeaderValue::from_static("-"))
                });
            if let Ok(text) = id.to_str() {
                tracing::Span::current().record("request_id", text);
            }
            id
        })
}

/// GET that also answers HEAD (as Spring's `@GetMapping` does).
pub fn get() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::get().or(warp::head()).unify()
}

/// Maps rejections under `/api` to envelope responses.
pub async fn recover(r: Rejection) -> Result<Response, Infallible> {
    let err = if let Some(refusal) = r.find::<Refusal>() {
        match refusal {
            Refusal::Unauthorized => ApiError::unauthorized(),
            Refusal::BadInput(why) => {
                tracing::debug!(%why, "bad request");
                ApiError::bad_request()
            }
            Refusal::TooLarge => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "BR"),
            Refusal::Unavailable => ApiError::database(),
        }
    } else if r.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "NF")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "BR")
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "BR")
    } else if r.find::<warp::reject::InvalidQuery>().is_some()
        || r.find::<warp::reject::MissingHeader>().is_some()
        || r.find::<warp::reject::InvalidHeader>().is_some()
        || r.find::<warp::reject::LengthRequired>().is_some()
        || r.find::<warp::reject::UnsupportedMediaType>().is_some()
    {
        ApiError::bad_request()
    } else {
        tracing::debug!(?r, "unmapped rejection");
        ApiError::bad_request()
    };
    Ok(err.into_response())
}

/// CORS as the original configured it (contract §0.3): exactly one allowed origin, credentials,
/// requested methods and headers echoed, `Authorization` exposed; preflights answered before
/// authentication; a foreign origin gets 403.
#[derive(Debug, Clone)]
pub struct Cors {
    origin: Option<Arc<str>>,
}

impl Cors {
    /// CORS for `origin` (`None`: cross-origin requests are refused; same-origin ones pass).
    pub fn new(origin: Option<String>) -> Self {
        Self {
            origin: origin.map(|o| Arc::from(o.trim_end_matches('/'))),
        }
    }

    /// The allowed origin, if any.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    fn allowed(&self, origin: &str) -> bool {
        self.origin.as_deref() == Some(origin)
    }

    /// Answers a preflight, or `None` when the request is not one.
    pub fn preflight(&self, method: &Method, headers: &HeaderMap) -> Option<Response> {
        if method != Method::OPTIONS {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
        let requested = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        if !self.allowed(origin) {
            return Some(forbidden());
        }
        let mut res = StatusCode::OK.into_response();
        let h = res.headers_mut();
        self.decorate_headers(h, origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, requested.clone());
        if let Some(req_headers) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, req_headers.clone());
        }
        h.append(
            header::VARY,
            HeaderValue::from_static("Access-Control-Request-Method"),
        );
        h.append(
            header::VARY,
            HeaderValue::from_static("Access-Control-Request-Headers"),
        );
        Some(res)
    }

    /// A 403 response for a foreign `Origin`; `None` when the request may proceed.
    pub fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        match headers.get(header::ORIGIN) {
            None => None,
            Some(v) => match v.to_str() {
                Ok(o) if self.allowed(o) => None,
                _ => Some(forbidden()),
            },
        }
    }

    fn decorate_headers(&self, h: &mut HeaderMap, origin: &str) {
        if let Ok(v) = HeaderValue::from_str(origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Authorization"),
        );
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }

    /// Adds the CORS response headers for an allowed origin.
    pub fn decorate(&self, res: &mut Response, origin: Option<&HeaderValue>) {
        if let Some(origin) = origin.and_then(|o| o.to_str().ok()) {
            self.decorate_headers(res.headers_mut(), origin);
        }
    }
}

fn forbidden() -> Response {
    let mut res = Response::new("Invalid CORS request".into());
    *res.status_mut() = StatusCode::FORBIDDEN;
    res
}

/// Parses an optional query value that the frontend may send empty (`?userId=`), as `None`.
pub fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.trim().is_empty())
}

/// Wire shapes of the envelope for the OpenAPI document (`crate::openapi`); the handlers write
/// these objects through [`sc`] and [`ApiError`], so the types only describe them.
pub mod doc {
    use utoipa::ToSchema;

    /// `{"code":"SC"}`: done, nothing to return.
    #[derive(Debug, ToSchema)]
    #[schema(as = Done)]
    pub struct Done {
        /// `SC`.
        #[schema(example = "SC")]
        pub code: String,
    }

    /// A refusal: `{"code": …}` with the contract's code (`BR` malformed input, `AV` no or bad
    /// token, `DE` server failure, `TMR` too many requests, or the route's own codes), and on some
    /// routes the endpoint's payload keys present as `null`.
    #[derive(Debug, ToSchema)]
    #[schema(as = Refused)]
    pub struct Refused {
        /// The contract's response code.
        #[schema(example = "BR")]
        pub code: String,
    }

    /// `{"code":"SC","list":[…]}`.
    #[derive(Debug, ToSchema)]
    pub struct ListOf<T: ToSchema> {
        /// `SC`.
        #[schema(example = "SC")]
        pub code: String,
        /// The items.
        pub list: Vec<T>,
    }

    /// `{"code":"SC","user":{…}}`.
    #[derive(Debug, ToSchema)]
    pub struct UserOf<T: ToSchema> {
        /// `SC`.
        #[schema(example = "SC")]
        pub code: String,
        /// The user.
        pub user: T,
    }

    /// `{"code":"SC","url":"…"}`: an uploaded image's absolute URL.
    #[derive(Debug, ToSchema)]
    pub struct Uploaded {
        /// `SC`.
        #[schema(example = "SC")]
        pub code: String,
        /// Where the stored image is served.
        pub url: String,
    }

    /// `{"code":"SC","token":"<jwt>"}` (or another code with `token`: the Google sign-in's
    /// `NEW_SIGN` with a sign-up handle).
    #[derive(Debug, ToSchema)]
    pub struct Token {
        /// `SC` (or `NEW_SIGN`).
        #[schema(example = "SC")]
        pub code: String,
        /// A bearer token for `Authorization` (or the Google sign-up handle).
        pub token: String,
    }

    /// `{"code":"SC","users":[…]}`.
    #[derive(Debug, ToSchema)]
    pub struct UsersOf<T: ToSchema> {
        /// `SC`.
        #[schema(example = "SC")]
        pub code: String,
        /// The users.
        pub users: Vec<T>,
    }

    /// A multipart form with one file part `file` (other parts are skipped).
    #[derive(Debug, ToSchema)]
    pub struct FileForm {
        /// The image (JPEG, PNG, GIF or WebP by its bytes).
        #[schema(value_type = String, format = Binary)]
        pub file: Vec<u8>,
    }
}
