//! Google sign-in and sign-up: the OpenID Connect authorization-code flow with PKCE, `state` bound
//! to the browser, a `nonce`, and a pending sign-up behind a random single-use handle (contract
//! §3.1 #1, #2, #7 and §6.13).
//!
//! How the unmodified frontend is driven (its code cannot change; docs/api.md has the sequence):
//!
//! 1. `GET /api/auth/google/login-url` answers, as text, the URL of `GET /api/auth/google/start` on
//!    this API (the frontend fetches it without credentials, so no cookie could be set there, and
//!    navigates the browser to it).
//! 2. `start` (a top-level navigation to the API's host) keeps `state` → {PKCE verifier, nonce,
//!    hash of a browser binding} in the key-value store (single use, 10 minutes), sets the binding
//!    as an HttpOnly, SameSite=Lax cookie scoped to these routes, and redirects to the provider.
//! 3. The provider redirects the browser to `GET /api/auth/google/callback?code&state` here (the
//!    registered redirect URI). The state is taken (deleted) and must match the cookie; the code is
//!    exchanged with the verifier; the ID token is verified (JWKS, `iss`, `aud`, `exp`, nonce,
//!    `email_verified`). The outcome — a known user, or a new pending sign-up — is kept under a
//!    random ticket (single use, 2 minutes) and the browser is sent to the frontend's
//!    `/oauth/google?code=<ticket>` page (`?error=<reason>` on failure). No token is in a URL.
//! 4. That page calls `GET /api/auth/google/callback?code=<ticket>` (no `state`: that is how the
//!    two legs are told apart) and gets `{"code":"SC","token":<jwt>}` or
//!    `{"code":"NEW_SIGN","token":<pending handle>}`, as the original answered.
//! 5. `POST /api/auth/oauth-signUp` with `socialId` = the handle takes the pending entry
//!    atomically (it dies on first use and after 30 minutes), checks the chosen id, inserts the
//!    account (never an update) and answers `SC` + a JWT.
//!
//! The original handed Google's `sub` to the browser as the handle, kept the pending profile
//! forever, had no `state`, and let `oauth-signUp` overwrite any account (contract §7 #2, #7).
//! `last_login_at` is set at Google sign-up and every Google sign-in (§7 #16).

pub mod provider;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

use crate::accounts::routes::{client_addr, normalise_email, valid_id};
use crate::ctx::Ctx;
use crate::ctx::with_ctx;
use crate::http::{ApiError, ApiResult, finish, get, json_body, json_response, sc};
use crate::store::StoreError;
use crate::store::users::{self, NewUser};
use crate::time::now_micros;

use provider::{EndpointSettings, Provider, ProviderError};

/// Google's issuer.
pub const GOOGLE_ISSUER: &str = "https://accounts.google.com";
/// The cookie binding a sign-in's `state` to the browser that started it.
pub const STATE_COOKIE: &str = "instar_google_state";
/// Scopes asked for.
pub const SCOPES: &str = "openid email profile";
/// The code of every answer while Google is not configured (HTTP 503).
pub const NOT_CONFIGURED: &str = "GNC";

/// Google (or another OpenID provider) settings.
#[derive(Debug, Clone)]
pub struct GoogleConfig {
    /// OAuth client id (Google Cloud console, "OAuth 2.0 Client IDs").
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// This API's callback as registered at the provider, e.g.
    /// `https://api.example.com/api/auth/google/callback`. Its last path segment must be
    /// `callback`; the start URL is the same with `start`.
    pub redirect_uri: String,
    /// The frontend page the browser returns to (`None`: `<cors origin>/oauth/google`).
    pub frontend_url: Option<String>,
    /// The issuer (`iss`); discovery at `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// Authorization endpoint (`None`: discovered).
    pub authorization_endpoint: Option<String>,
    /// Token endpoint (`None`: discovered).
    pub token_endpoint: Option<String>,
    /// JWKS URI (`None`: discovered).
    pub jwks_uri: Option<String>,
    /// Userinfo endpoint (`None`: discovered; asked only when the ID token has no `name`).
    pub userinfo_endpoint: Option<String>,
    /// Lifetime of a pending sign-up.
    pub pending_ttl: Duration,
    /// Lifetime of a started sign-in (`state`, verifier, nonce, cookie).
    pub state_ttl: Duration,
    /// Lifetime of the ticket handed to the frontend page.
    pub ticket_ttl: Duration,
    /// Timeout of each call to the provider.
    pub http_timeout: Duration,
    /// Least time between two JWKS fetches caused by an unknown key id.
    pub jwks_refetch_interval: Duration,
    /// Sign-ins one client address may start per 10 minutes.
    pub starts_per_address: u64,
}

impl GoogleConfig {
    /// Settings for Google with the defaults.
    pub fn new(client_id: String, client_secret: String, redirect_uri: String) -> Self {
        Self {
            client_id,
            client_secret,
            redirect_uri,
            frontend_url: None,
            issuer: GOOGLE_ISSUER.to_owned(),
            authorization_endpoint: None,
            token_endpoint: None,
            jwks_uri: None,
            userinfo_endpoint: None,
            pending_ttl: Duration::from_secs(30 * 60),
            state_ttl: Duration::from_secs(10 * 60),
            ticket_ttl: Duration::from_secs(120),
            http_timeout: Duration::from_secs(10),
            jwks_refetch_interval: Duration::from_secs(30),
            starts_per_address: 60,
        }
    }
}

/// Why Google could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("Google sign-in: {0}")]
pub struct GoogleSetupError(String);

/// Google sign-in state shared by the handlers.
#[derive(Debug)]
pub struct Google {
    provider: Provider,
    client_id: String,
    redirect_uri: String,
    start_url: String,
    frontend_url: String,
    cookie_path: String,
    secure_cookie: bool,
    pending_ttl: Duration,
    state_ttl: Duration,
    ticket_ttl: Duration,
    starts_per_address: u64,
    stats: Stats,
}

impl crate::ctx::MetricsSource for Google {
    fn update_metrics(&self, registry: &broker_bridge::MetricsRegistry) {
        self.update_google_metrics(registry);
    }
}

impl Google {
    /// Checks the settings and builds the client (nothing is fetched until the first sign-in).
    /// `cors_origin` gives the frontend page when `frontend_url` is not set.
    pub fn new(cfg: &GoogleConfig, cors_origin: Option<&str>) -> Result<Self, GoogleSetupError> {
        let err = |s: String| GoogleSetupError(s);
        if cfg.client_id.trim().is_empty() || cfg.client_secret.is_empty() {
            return Err(err("the client id and secret are required".into()));
        }
        let redirect = provider::check_endpoint("the redirect URI", &cfg.redirect_uri)
            .map_err(|e| err(e.to_string()))?;
        if redirect.query().is_some() || redirect.fragment().is_some() {
            return Err(err("the redirect URI must have no query or fragment".into()));
        }
        let path = redirect.path();
        let Some(parent) = path.strip_suffix("/callback") else {
            return Err(err(format!(
                "the redirect URI's path must end with /callback (e.g. /api/auth/google/callback), \
                 not {path:?}"
            )));
        };
        let mut start = redirect.clone();
        start.set_path(&format!("{parent}/start"));
        let frontend_url = match (&cfg.frontend_url, cors_origin) {
            (Some(u), _) => u.clone(),
            (None, Some(origin)) => format!("{}/oauth/google", origin.trim_end_matches('/')),
            (None, None) => {
                return Err(err(
                    "the frontend page is unknown: set the Google frontend URL or the CORS origin"
                        .into(),
                ));
            }
        };
        let front = url::Url::parse(&frontend_url)
            .map_err(|e| err(format!("the frontend URL {frontend_url:?}: {e}")))?;
        if !matches!(front.scheme(), "http" | "https") || front.query().is_some() {
            return Err(err(format!(
                "the frontend URL {frontend_url:?} must be http(s) without a query"
            )));
        }
        let http = provider::HttpClient::new(cfg.http_timeout).map_err(|e| err(e.to_string()))?;
        let provider = Provider::new(
            http,
            EndpointSettings {
                issuer: cfg.issuer.clone(),
                authorization: cfg.authorization_endpoint.clone(),
                token: cfg.token_endpoint.clone(),
                jwks: cfg.jwks_uri.clone(),
                userinfo: cfg.userinfo_endpoint.clone(),
            },
            cfg.client_id.clone(),
            cfg.client_secret.clone(),
            cfg.jwks_refetch_interval,
        )
        .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            provider,
            client_id: cfg.client_id.clone(),
            redirect_uri: cfg.redirect_uri.clone(),
            start_url: start.to_string(),
            frontend_url,
            cookie_path: if parent.is_empty() { "/" } else { parent }.to_owned(),
            secure_cookie: redirect.scheme() == "https",
            pending_ttl: cfg.pending_ttl,
            state_ttl: cfg.state_ttl,
            ticket_ttl: cfg.ticket_ttl,
            starts_per_address: cfg.starts_per_address,
            stats: Stats::default(),
        })
    }

    /// The URL `login-url` answers (this API's start route).
    pub fn start_url(&self) -> &str {
        &self.start_url
    }

    /// The Google counters in the Prometheus text format.
    fn update_google_metrics(&self, registry: &broker_bridge::MetricsRegistry) {
        registry.set_counter(
            "instar_google_sign_ins_total",
            "Google sign-ins of known accounts.",
            self.stats.sign_ins.load(Ordering::Relaxed),
        );
        registry.set_counter(
            "instar_google_sign_ups_total",
            "Accounts created through Google sign-up.",
            self.stats.sign_ups.load(Ordering::Relaxed),
        );
        for (f, n) in Failure::ALL.iter().zip(&self.stats.failures) {
            registry
                .counter_with(
                    "instar_google_failures_total",
                    &[("reason", f.reason())],
                    "Google sign-in steps refused, by reason.",
                )
                .absolute(n.load(Ordering::Relaxed));
        }
    }

    fn failed(&self, f: Failure) {
        if let Some(n) = self.stats.failures.get(f as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn front(&self, param: &str, value: &str) -> String {
        let mut u = match url::Url::parse(&self.frontend_url) {
            Ok(u) => u,
            Err(_) => return self.frontend_url.clone(),
        };
        u.query_pairs_mut().append_pair(param, value);
        u.to_string()
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        format!(
            "{STATE_COOKIE}={value}; Path={}; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
            self.cookie_path,
            if self.secure_cookie { "; Secure" } else { "" }
        )
    }
}

/// Why a step was refused (the `error` the frontend page gets, and the metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The provider answered `error=…` (the user cancelled, …).
    Denied,
    /// No, unknown, expired, reused or foreign `state` (or no matching cookie).
    State,
    /// No or malformed `code`.
    Request,
    /// The token endpoint refused the code (reused, expired, PKCE mismatch).
    Exchange,
    /// The provider could not be reached or answered nonsense.
    Provider,
    /// The ID token failed a check (signature, `iss`, `aud`, `exp`, key, algorithm).
    IdToken,
    /// The ID token's nonce is not this sign-in's.
    Nonce,
    /// No e-mail, or one Google has not verified.
    EmailUnverified,
    /// The e-mail belongs to another account.
    EmailInUse,
    /// The Google account is bound to a non-Google account (not reachable through this API).
    Account,
    /// The database or the key-value store failed.
    Store,
    /// Too many sign-ins started from one address.
    Limited,
    /// An unknown, used or expired ticket.
    Ticket,
    /// An unknown, used or expired pending sign-up handle.
    Pending,
}

impl Failure {
    const ALL: [Failure; 14] = [
        Failure::Denied,
        Failure::State,
        Failure::Request,
        Failure::Exchange,
        Failure::Provider,
        Failure::IdToken,
        Failure::Nonce,
        Failure::EmailUnverified,
        Failure::EmailInUse,
        Failure::Account,
        Failure::Store,
        Failure::Limited,
        Failure::Ticket,
        Failure::Pending,
    ];

    fn reason(self) -> &'static str {
        match self {
            Failure::Denied => "denied",
            Failure::State => "state",
            Failure::Request => "request",
            Failure::Exchange => "exchange",
            Failure::Provider => "provider",
            Failure::IdToken => "id_token",
            Failure::Nonce => "nonce",
            Failure::EmailUnverified => "email_unverified",
            Failure::EmailInUse => "email_in_use",
            Failure::Account => "account",
            Failure::Store => "store",
            Failure::Limited => "too_many",
            Failure::Ticket => "ticket",
            Failure::Pending => "pending",
        }
    }
}

impl From<&ProviderError> for Failure {
    fn from(e: &ProviderError) -> Self {
        match e {
            ProviderError::Exchange(_) => Failure::Exchange,
            ProviderError::IdToken(_) => Failure::IdToken,
            ProviderError::Unavailable(_) | ProviderError::Config(_) => Failure::Provider,
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    sign_ins: AtomicU64,
    sign_ups: AtomicU64,
    /// By [`Failure`], in the order of [`Failure::ALL`].
    failures: [AtomicU64; Failure::ALL.len()],
}

/// What `start` keeps under `state`.
#[derive(Debug, Serialize, Deserialize)]
struct Started {
    /// SHA-256 (base64url) of the browser binding in the cookie.
    binding: String,
    /// PKCE code verifier.
    verifier: String,
    /// The nonce the ID token must carry.
    nonce: String,
}

/// What the callback hands the frontend page through a ticket, and the client address that
/// completed the callback (the page's call must come from it).
#[derive(Debug, Serialize, Deserialize)]
struct Ticket {
    outcome: Outcome,
    addr: String,
}

/// A sign-in's outcome.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Outcome {
    /// A known account signed in.
    SignedIn { user: String },
    /// A new Google account: the pending sign-up handle.
    NewSign { handle: String },
}

/// A Google account waiting for `oauth-signUp`.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    sub: String,
    email: String,
    name: String,
    /// When the entry dies, µs (to put it back for its remaining life after a lost id race).
    expires_at: i64,
}

fn state_key(state: &str) -> String {
    format!("google:state:{state}")
}

fn ticket_key(ticket: &str) -> String {
    format!("google:ticket:{ticket}")
}

fn pending_key(handle: &str) -> String {
    format!("google:pending:{handle}")
}

/// 256 random bits, base64url (43 characters).
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Whether `s` can be one of our random tokens (checked before it becomes part of a key).
fn is_token(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn sha256_b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(s.as_bytes()))
}

/// The routes of Google sign-in (paths relative to `/api`).
pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let login_url = warp::path!("auth" / "google" / "login-url")
        .and(get())
        .and(with_ctx(ctx))
        .map(login_url);
    // GET only (no HEAD): each call spends or creates single-use state.
    let start = warp::path!("auth" / "google" / "start")
        .and(warp::get())
        .and(with_ctx(ctx))
        .and(client_addr(ctx))
        .then(start);
    let callback = warp::path!("auth" / "google" / "callback")
        .and(warp::get())
        .and(with_ctx(ctx))
        .and(warp::query::<CallbackQuery>())
        .and(warp::cookie::optional::<String>(STATE_COOKIE))
        .and(client_addr(ctx))
        .then(callback);
    let sign_up = warp::path!("auth" / "oauth-signUp")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(json_body::<OauthSignUp>())
        .then(oauth_sign_up)
        .map(finish);
    login_url
        .or(start)
        .unify()
        .or(callback)
        .unify()
        .or(sign_up)
        .unify()
        .boxed()
}

fn not_configured() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, NOT_CONFIGURED)
}

fn text(status: StatusCode, body: String) -> Response {
    let mut res = Response::new(body.into());
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain;charset=UTF-8"),
    );
    res
}

/// A 302 to `location`, setting `cookie`, never cached, sending no `Referer` onwards.
fn redirect(location: &str, cookie: &str) -> Response {
    let mut res = Response::new(bytes::Bytes::new().into());
    *res.status_mut() = StatusCode::FOUND;
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(cookie) {
        h.insert(header::SET_COOKIE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    res
}

/// `GET /api/auth/google/login-url`: the start URL as text (the frontend navigates to the body).
/// Unconfigured: 503, with the frontend's own Google page and an error as the body when the
/// frontend's origin is known (the page then shows a failure and returns to sign-in), else
/// `{"code":"GNC"}`.
#[utoipa::path(
    get, path = "/api/auth/google/login-url", tag = "google",
    responses(
        (status = 200, body = String, content_type = "text/plain", description = "the absolute URL of `/api/auth/google/start`"),
        (status = 503, description = "not configured: the frontend's Google page with an error (text), or `GNC` (JSON) when the frontend's origin is unknown",
            content((String = "text/plain"), (crate::http::doc::Refused = "application/json"))),
    )
)]
fn login_url(ctx: Ctx) -> Response {
    match ctx.extension::<Arc<Google>>() {
        Some(g) => text(StatusCode::OK, g.start_url.clone()),
        None => match ctx.cors.origin() {
            Some(origin) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{origin}/oauth/google?error=google_not_configured"),
            ),
            None => not_configured().into_response(),
        },
    }
}

/// `GET /api/auth/google/start`: a new sign-in; redirects the browser to the provider.
#[utoipa::path(
    get, path = "/api/auth/google/start", tag = "google",
    responses(
        (status = 302, description = "to the provider's authorization endpoint, with the state cookie set"),
        (status = 429, body = crate::http::doc::Refused, description = "`TMR`: too many sign-ins from this address"),
        (status = 503, body = crate::http::doc::Refused, description = "`GNC`: Google sign-in is not configured"),
    )
)]
async fn start(ctx: Ctx, addr: String) -> Response {
    let Some(g) = ctx.extension::<Arc<Google>>().cloned() else {
        return not_configured().into_response();
    };
    let expire = g.cookie("", 0);
    let fail = |f: Failure| {
        g.failed(f);
        redirect(&g.front("error", f.reason()), &expire)
    };
    let window = Duration::from_secs(600);
    if ctx
        .limit(
            &format!("google-start:{addr}"),
            g.starts_per_address,
            window,
        )
        .await
        .is_err()
    {
        return fail(Failure::Limited);
    }
    let endpoints = match g.provider.endpoints().await {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "Google sign-in not started");
            return fail(Failure::Provider);
        }
    };
    let state = random_token();
    let binding = random_token();
    let started = Started {
        binding: sha256_b64(&binding),
        verifier: random_token(),
        nonce: random_token(),
    };
    let Ok(value) = serde_json::to_string(&started) else {
        return fail(Failure::Store);
    };
    if let Err(e) = ctx.kv.set(&state_key(&state), &value, g.state_ttl).await {
        tracing::error!(error = %e, "keeping a Google sign-in state");
        return fail(Failure::Store);
    }
    let mut url = endpoints.authorization.clone();
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &g.client_id)
        .append_pair("redirect_uri", &g.redirect_uri)
        .append_pair("scope", SCOPES)
        .append_pair("state", &state)
        .append_pair("nonce", &started.nonce)
        .append_pair("code_challenge", &sha256_b64(&started.verifier))
        .append_pair("code_challenge_method", "S256")
        .append_pair("prompt", "select_account");
    redirect(url.as_str(), &g.cookie(&binding, g.state_ttl.as_secs()))
}

/// `GET /api/auth/google/callback` query: the provider's (`code`, `state` or `error`) or the
/// frontend page's (`code` = the ticket).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

#[utoipa::path(
    get, path = "/api/auth/google/callback", tag = "google",
    params(CallbackQuery),
    responses(
        (status = 200, body = crate::http::doc::Token, description = "the frontend redeems a ticket: `SC` with a JWT (known account) or `NEW_SIGN` with a sign-up handle"),
        (status = 302, description = "the provider's return: to the frontend's `/oauth/google?code=<ticket>` or `?error=<reason>`"),
        (status = 400, body = crate::http::doc::Refused, description = "`BR` (with `token: null`): unknown, used or expired ticket"),
        (status = 503, body = crate::http::doc::Refused, description = "`GNC`: Google sign-in is not configured"),
    )
)]
async fn callback(ctx: Ctx, q: CallbackQuery, cookie: Option<String>, addr: String) -> Response {
    let Some(g) = ctx.extension::<Arc<Google>>().cloned() else {
        return not_configured().into_response();
    };
    if q.state.is_none() && q.error.is_none() {
        return finish(redeem_ticket(&ctx, &g, q.code.as_deref(), &addr).await);
    }
    let expire = g.cookie("", 0);
    match provider_return(&ctx, &g, q, cookie, addr).await {
        Ok(ticket) => redirect(&g.front("code", &ticket), &expire),
        Err(f) => {
            g.failed(f);
            redirect(&g.front("error", f.reason()), &expire)
        }
    }
}

/// The provider's redirect: checks `state` against the cookie, exchanges the code, verifies the
/// ID token, signs a known user in or keeps a pending sign-up; returns the ticket.
async fn provider_return(
    ctx: &Ctx,
    g: &Google,
    q: CallbackQuery,
    cookie: Option<String>,
    addr: String,
) -> Result<String, Failure> {
    if let Some(error) = q.error {
        let error: String = error.chars().take(64).collect();
        tracing::info!(%error, "Google sign-in refused by the provider");
        // The state is still spent, so the same redirect cannot be replayed.
        if let Some(state) = q.state.as_deref().filter(|s| is_token(s)) {
            let _ = ctx.kv.del(&state_key(state)).await;
        }
        return Err(Failure::Denied);
    }
    let state = q.state.as_deref().filter(|s| is_token(s)).ok_or_else(|| {
        tracing::info!("Google callback with a malformed state");
        Failure::State
    })?;
    let started = ctx
        .kv
        .take(&state_key(state))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "reading a Google sign-in state");
            Failure::Store
        })?
        .and_then(|v| serde_json::from_str::<Started>(&v).ok())
        .ok_or_else(|| {
            tracing::info!("Google callback with an unknown, used or expired state");
            Failure::State
        })?;
    let bound = cookie
        .as_deref()
        .is_some_and(|c| is_token(c) && sha256_b64(c) == started.binding);
    if !bound {
        tracing::warn!("Google callback whose state is not this browser's (no or another cookie)");
        return Err(Failure::State);
    }
    let code = q
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 2048)
        .ok_or(Failure::Request)?;
    let tokens = g
        .provider
        .exchange(code, &started.verifier, &g.redirect_uri)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "Google code exchange failed");
            Failure::from(&e)
        })?;
    let id_token = tokens.id_token.as_deref().ok_or_else(|| {
        tracing::warn!("the token endpoint sent no ID token");
        Failure::IdToken
    })?;
    let claims = g.provider.verify_id_token(id_token).await.map_err(|e| {
        tracing::warn!(error = %e, "Google ID token refused");
        Failure::from(&e)
    })?;
    if claims.nonce.as_deref() != Some(started.nonce.as_str()) {
        tracing::warn!("Google ID token with another sign-in's nonce");
        return Err(Failure::Nonce);
    }
    let email = claims
        .email
        .as_deref()
        .filter(|_| claims.email_verified)
        .and_then(normalise_email)
        .ok_or_else(|| {
            tracing::info!("Google sign-in without a verified e-mail address");
            Failure::EmailUnverified
        })?;
    let store_err = |e: StoreError| {
        tracing::error!(error = %e, "Google sign-in");
        Failure::Store
    };
    let outcome = match ctx
        .store
        .user_by_social_id(&claims.sub)
        .await
        .map_err(store_err)?
    {
        Some(user) if user.kind == "SOCIAL" => Outcome::SignedIn { user: user.id },
        Some(user) => {
            tracing::warn!(user = %user.id, "a Google account bound to a local account");
            return Err(Failure::Account);
        }
        None => {
            if ctx.store.email_taken(&email).await.map_err(store_err)? {
                tracing::info!("Google sign-up refused: the e-mail belongs to another account");
                return Err(Failure::EmailInUse);
            }
            let mut name = claims.name.clone().filter(|n| !n.trim().is_empty());
            if name.is_none()
                && let Some(access) = tokens.access_token.as_deref()
            {
                name = g
                    .provider
                    .userinfo_name(access, &claims.sub)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "Google userinfo");
                        None
                    });
            }
            let name = name
                .map(|n| n.trim().chars().take(100).collect::<String>())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| email.split('@').next().unwrap_or("user").to_owned());
            let handle = random_token();
            let ttl_us = i64::try_from(g.pending_ttl.as_micros()).unwrap_or(i64::MAX);
            let pending = Pending {
                sub: claims.sub,
                email,
                name,
                expires_at: now_micros().saturating_add(ttl_us),
            };
            let value = serde_json::to_string(&pending).map_err(|_| Failure::Store)?;
            ctx.kv
                .set(&pending_key(&handle), &value, g.pending_ttl)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "keeping a pending Google sign-up");
                    Failure::Store
                })?;
            tracing::info!("new Google account: sign-up pending");
            Outcome::NewSign { handle }
        }
    };
    let ticket = Ticket { outcome, addr };
    let ticket_id = random_token();
    let value = serde_json::to_string(&ticket).map_err(|_| Failure::Store)?;
    ctx.kv
        .set(&ticket_key(&ticket_id), &value, g.ticket_ttl)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "keeping a Google sign-in ticket");
            Failure::Store
        })?;
    Ok(ticket_id)
}

/// The frontend page's call: the ticket (single use) for `SC` + JWT or `NEW_SIGN` + handle.
///
/// The page's cross-origin `fetch` carries no cookie, so the ticket cannot be bound to the browser
/// the way `state` is; it is bound to the client address that completed the callback instead, so
/// a ticket an attacker obtained in their own browser and slipped into a victim's link (login
/// CSRF) is refused from the victim's address. It is also single use and lives 2 minutes.
async fn redeem_ticket(ctx: &Ctx, g: &Google, code: Option<&str>, addr: &str) -> ApiResult {
    const TOKEN: &[&str] = &["token"];
    let refused = || {
        g.failed(Failure::Ticket);
        ApiError::bad_request().with_nulls(TOKEN)
    };
    let Some(code) = code.filter(|c| is_token(c)) else {
        return Err(refused());
    };
    let ticket = ctx
        .kv
        .take(&ticket_key(code))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "reading a Google sign-in ticket");
            ApiError::database().with_nulls(TOKEN)
        })?
        .and_then(|v| serde_json::from_str::<Ticket>(&v).ok());
    let Some(ticket) = ticket else {
        return Err(refused());
    };
    if ticket.addr != addr {
        tracing::warn!(
            completed_from = %ticket.addr,
            redeemed_from = %addr,
            "a Google sign-in ticket redeemed from another address"
        );
        return Err(refused());
    }
    match ticket.outcome {
        Outcome::SignedIn { user } => {
            let Some(user) = ctx.store.user_by_id(&user).await? else {
                return Err(refused());
            };
            let version = u64::try_from(user.token_version).unwrap_or(0);
            let token = ctx
                .tokens
                .issue_version(&user.id, &user.role, version)
                .map_err(|e| {
                    tracing::error!(error = %e, "signing a token");
                    ApiError::database()
                })?;
            // The sign-in happens here, where the token is handed out.
            ctx.store.set_last_login(&user.id, now_micros()).await?;
            g.stats.sign_ins.fetch_add(1, Ordering::Relaxed);
            tracing::info!(user = %user.id, "signed in with Google");
            sc(&serde_json::json!({ "token": token }))
        }
        Outcome::NewSign { handle } => Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({ "code": "NEW_SIGN", "token": handle }),
        )),
    }
}

/// `POST /api/auth/oauth-signUp` body (`addressDetail` as the frontend sends it, or
/// `address_detail` as the original read it).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct OauthSignUp {
    #[serde(rename = "socialId")]
    social_id: Option<String>,
    id: Option<String>,
    sex: Option<String>,
    address: Option<String>,
    #[serde(rename = "addressDetail", alias = "address_detail")]
    address_detail: Option<String>,
}

/// The key or column named by a unique-violation message (MariaDB: `Duplicate entry '…' for key
/// 'ux_user_email'`; SQLite: `UNIQUE constraint failed: user.email`), without the duplicated value,
/// which may itself contain `email`.
fn conflict_key(what: &str) -> &str {
    what.rsplit_once("for key ")
        .or_else(|| what.rsplit_once("constraint failed: "))
        .map_or(what, |(_, key)| key)
}

fn bounded(s: &Option<String>, max_chars: usize) -> bool {
    s.as_ref().is_none_or(|s| s.chars().count() <= max_chars)
}

#[utoipa::path(
    post, path = "/api/auth/oauth-signUp", tag = "google",
    request_body = OauthSignUp,
    responses(
        (status = 200, body = crate::http::doc::Token),
        (status = 400, body = crate::http::doc::Refused, description = "`DU`: id taken; `DUE`: e-mail taken; `BR`: unknown, used or expired handle, or a malformed field (all with `token: null`)"),
        (status = 503, body = crate::http::doc::Refused, description = "`GNC`: Google sign-in is not configured"),
    )
)]
async fn oauth_sign_up(ctx: Ctx, body: OauthSignUp) -> ApiResult {
    const TOKEN: &[&str] = &["token"];
    let Some(g) = ctx.extension::<Arc<Google>>().cloned() else {
        return Err(not_configured().with_nulls(TOKEN));
    };
    let bad = || ApiError::bad_request().with_nulls(TOKEN);
    let (Some(handle), Some(id)) = (body.social_id.as_deref(), body.id.as_deref()) else {
        return Err(bad());
    };
    if !valid_id(id)
        || !bounded(&body.sex, 50)
        || !bounded(&body.address, 100)
        || !bounded(&body.address_detail, 100)
    {
        return Err(bad());
    }
    let expired = || {
        g.failed(Failure::Pending);
        tracing::info!("oauth-signUp with an unknown, used or expired handle");
        bad()
    };
    if !is_token(handle) {
        return Err(expired());
    }
    let key = pending_key(handle);
    let kv_err = |e: crate::kv::KvError| {
        tracing::error!(error = %e, "reading a pending Google sign-up");
        ApiError::database().with_nulls(TOKEN)
    };
    // A taken id leaves the handle usable, so the user can pick another id.
    if ctx.kv.get(&key).await.map_err(kv_err)?.is_none() {
        return Err(expired());
    }
    if ctx.store.user_exists(id).await? {
        return Err(ApiError::bad_request_code("DU").with_nulls(TOKEN));
    }
    // Taken atomically: of two concurrent calls with one handle, one gets it.
    let Some(pending) = ctx
        .kv
        .take(&key)
        .await
        .map_err(kv_err)?
        .and_then(|v| serde_json::from_str::<Pending>(&v).ok())
    else {
        return Err(expired());
    };
    // The Google account signed up meanwhile through another handle: sign in instead.
    if ctx.store.user_by_social_id(&pending.sub).await?.is_some() {
        tracing::info!("oauth-signUp for a Google account that already has an account");
        return Err(bad());
    }
    let now = now_micros();
    let mut tx = ctx.store.write().await?;
    let inserted = users::insert(
        tx.conn(),
        &NewUser {
            id,
            password: None,
            name: &pending.name,
            sex: body.sex.as_deref(),
            email: &pending.email,
            comment: Some(""),
            address: body.address.as_deref(),
            address_detail: body.address_detail.as_deref(),
            profile_image: Some(""),
            kind: "SOCIAL",
            social_id: Some(&pending.sub),
            created_at: now,
        },
    )
    .await;
    match inserted {
        Ok(()) => {}
        Err(StoreError::Conflict(what)) if conflict_key(&what).contains("email") => {
            return Err(ApiError::bad_request_code("DUE").with_nulls(TOKEN));
        }
        Err(StoreError::Conflict(what)) if conflict_key(&what).contains("social_id") => {
            tracing::info!("oauth-signUp for a Google account that already has an account");
            return Err(bad());
        }
        Err(StoreError::Conflict(_)) => {
            // Another sign-up took the id in between: the handle stays usable for its remaining life.
            drop(tx);
            let left = u64::try_from(pending.expires_at.saturating_sub(now_micros())).unwrap_or(0);
            if left > 0
                && let Ok(v) = serde_json::to_string(&pending)
            {
                let _ = ctx.kv.set(&key, &v, Duration::from_micros(left)).await;
            }
            return Err(ApiError::bad_request_code("DU").with_nulls(TOKEN));
        }
        Err(e) => return Err(e.into()),
    }
    users::set_last_login_on(tx.conn(), id, now).await?;
    tx.commit().await?;
    g.stats.sign_ups.fetch_add(1, Ordering::Relaxed);
    tracing::info!(user = %id, "account created with Google");
    let token = ctx.tokens.issue(id, "USER").map_err(|e| {
        tracing::error!(error = %e, "signing a token");
        ApiError::database()
    })?;
    sc(&serde_json::json!({ "token": token }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(redirect: &str) -> GoogleConfig {
        GoogleConfig::new("client".into(), "secret".into(), redirect.into())
    }

    #[test]
    fn start_url_and_cookie_follow_the_redirect_uri() {
        let g = Google::new(
            &cfg("https://api.example.com/api/auth/google/callback"),
            Some("https://app.example.com/"),
        )
        .unwrap();
        assert_eq!(
            g.start_url(),
            "https://api.example.com/api/auth/google/start"
        );
        assert_eq!(g.frontend_url, "https://app.example.com/oauth/google");
        let c = g.cookie("abc", 600);
        assert!(c.contains("Path=/api/auth/google;"), "{c}");
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.ends_with("Secure"));
        assert_eq!(
            g.front("error", "state"),
            "https://app.example.com/oauth/google?error=state"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let origin = Some("https://app.example.com");
        assert!(Google::new(&cfg("https://api.example.com/api/auth/google/back"), origin).is_err());
        assert!(
            Google::new(
                &cfg("http://api.example.com/api/auth/google/callback"),
                origin
            )
            .is_err()
        );
        assert!(
            Google::new(
                &cfg("https://api.example.com/api/auth/google/callback"),
                None
            )
            .is_err()
        );
        let mut c = cfg("https://api.example.com/api/auth/google/callback");
        c.client_secret.clear();
        assert!(Google::new(&c, origin).is_err());
    }

    #[test]
    fn conflicts_name_their_key_not_the_value() {
        let m = "Duplicate entry 'email_fan' for key 'PRIMARY'";
        assert_eq!(conflict_key(m), "'PRIMARY'");
        let m = "Duplicate entry 'a@b.c' for key 'user.ux_user_email'";
        assert!(conflict_key(m).contains("email"));
        assert!(conflict_key("UNIQUE constraint failed: user.social_id").contains("social_id"));
        assert_eq!(conflict_key("UNIQUE constraint failed: user.id"), "user.id");
    }

    #[test]
    fn failure_counters_line_up_with_the_reasons() {
        for (i, f) in Failure::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i, "{f:?}");
        }
        let g = Google::new(
            &cfg("https://api.example.com/api/auth/google/callback"),
            Some("https://app.example.com"),
        )
        .unwrap();
        g.failed(Failure::Pending);
        let registry = broker_bridge::MetricsRegistry::new();
        g.update_google_metrics(&registry);
        let out = registry.render();
        assert!(out.contains("instar_google_failures_total{reason=\"pending\"} 1\n"));
        assert!(out.contains("instar_google_failures_total{reason=\"denied\"} 0\n"));
    }

    #[test]
    fn tokens_are_random_and_recognised() {
        let a = random_token();
        assert!(is_token(&a));
        assert_ne!(a, random_token());
        assert!(!is_token("short"));
        assert!(!is_token(&format!("{}!", &a[..42])));
    }
}
