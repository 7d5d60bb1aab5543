//! `/api/auth/**`: sign-up with an e-mail code, sign-in, id check (contract §3.1 #3–#6).
//!
//! Fixed against the original (contract §7): sign-up is insert-only and checks the id itself (the
//! client's `duplicateCheckId` flag is ignored; the original overwrote existing accounts), passwords
//! are hashed with argon2id, sign-in and e-mail codes are rate-limited, a code allows a bounded
//! number of wrong guesses, and code keys are namespaced. Google sign-in lives in `accounts::google`.

use std::net::SocketAddr;

use serde::Deserialize;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::app::Ctx;
use crate::http::{ApiError, ApiResult, empty, finish, get, json_body, sc, sc_only};
use crate::routes::with_ctx;
use crate::store::StoreError;
use crate::store::users::{self, NewUser};
use crate::time::now_micros;

/// Longest id (the column is VARCHAR(100)).
pub const MAX_ID_CHARS: usize = 100;
/// Shortest id (the frontend's own rule).
pub const MIN_ID_CHARS: usize = 6;
/// Password length bounds, bytes.
pub const PASSWORD_BYTES: std::ops::RangeInclusive<usize> = 8..=crate::password::MAX_PASSWORD_BYTES;

/// The routes of this module.
pub fn routes(ctx: &Ctx) -> BoxedFilter<(Response,)> {
    let sign_up = warp::path!("auth" / "signUp")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(json_body::<SignUp>())
        .then(sign_up)
        .map(finish);
    let sign_in = warp::path!("auth" / "signIn")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(client_addr())
        .and(json_body::<SignIn>())
        .then(sign_in)
        .map(finish);
    let check_id = warp::path!("auth" / "checkId")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(json_body::<CheckId>())
        .then(check_id)
        .map(finish);
    let send_email = warp::path!("auth" / "send" / "email")
        .and(get())
        .and(with_ctx(ctx))
        .and(client_addr())
        .and(warp::query::<SendEmail>())
        .then(send_email)
        .map(finish);
    sign_up
        .or(sign_in)
        .unify()
        .or(check_id)
        .unify()
        .or(send_email)
        .unify()
        .boxed()
}

/// The client's address: the peer, or the last `X-Forwarded-For` hop when the peer is a proxy on
/// this machine (nginx in front of the service). The last hop is the one that proxy appended (the
/// address it saw, `$proxy_add_x_forwarded_for`); earlier hops come from the client and could be
/// forged to dodge a rate limit or to match another client's address.
pub(crate) fn client_addr() -> impl Filter<Extract = (String,), Error = warp::Rejection> + Clone {
    warp::addr::remote()
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .map(|peer: Option<SocketAddr>, xff: Option<String>| {
            let peer_ip = peer.map(|p| p.ip());
            match (peer_ip, xff) {
                (Some(ip), Some(xff)) if ip.is_loopback() => xff
                    .rsplit(',')
                    .next()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| ip.to_string()),
                (Some(ip), _) => ip.to_string(),
                (None, _) => "unknown".to_owned(),
            }
        })
}

/// `POST /api/auth/signUp` body.
#[derive(Debug, Deserialize)]
pub struct SignUp {
    id: Option<String>,
    password: Option<String>,
    name: Option<String>,
    sex: Option<String>,
    email: Option<String>,
    email_code: Option<String>,
    address: Option<String>,
    #[serde(rename = "addressDetail", alias = "address_detail")]
    address_detail: Option<String>,
}

/// A valid login id: 6–100 characters of letters, digits, `.`, `_`, `-` (ids travel in STOMP user
/// destinations and URLs).
pub fn valid_id(id: &str) -> bool {
    let n = id.chars().count();
    (MIN_ID_CHARS..=MAX_ID_CHARS).contains(&n)
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A plausible e-mail address (lower-cased on the way in).
pub fn normalise_email(email: &str) -> Option<String> {
    let e = email.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && e.len() <= 200
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(e)
}

fn bounded(s: &Option<String>, max_chars: usize) -> bool {
    s.as_ref().is_none_or(|s| s.chars().count() <= max_chars)
}

fn code_key(email: &str) -> String {
    format!("auth:email-code:{email}")
}

fn code_attempts_key(email: &str) -> String {
    format!("auth:email-code-attempts:{email}")
}

async fn sign_up(ctx: Ctx, body: SignUp) -> ApiResult {
    let bad = || ApiError::bad_request();
    let (Some(id), Some(password), Some(name), Some(email), Some(code)) = (
        body.id.as_deref(),
        body.password,
        body.name.as_deref().map(str::trim),
        body.email.as_deref(),
        body.email_code.as_deref().map(str::trim),
    ) else {
        return Err(bad());
    };
    if !valid_id(id)
        || !PASSWORD_BYTES.contains(&password.len())
        || name.is_empty()
        || name.chars().count() > 100
        || !bounded(&body.sex, 50)
        || !bounded(&body.address, 100)
        || !bounded(&body.address_detail, 100)
    {
        return Err(bad());
    }
    let email = normalise_email(email).ok_or_else(bad)?;
    // The id is checked here, whatever the client's `duplicateCheckId` says (the original trusted it).
    if ctx.store.user_exists(id).await.map_err(|_| bad())? {
        return Err(ApiError::bad_request_code("DU"));
    }
    if ctx.store.email_taken(&email).await.map_err(|_| bad())? {
        return Err(ApiError::bad_request_code("DUE"));
    }
    check_email_code(&ctx, &email, code).await?;
    let hash = crate::password::hash(password).await.map_err(|e| {
        tracing::error!(error = %e, "hashing a password");
        bad()
    })?;
    let mut tx = ctx.store.write().await.map_err(|_| bad())?;
    let inserted = users::insert(
        tx.conn(),
        &NewUser {
            id,
            password: Some(&hash),
            name,
            sex: body.sex.as_deref(),
            email: &email,
            comment: Some(""),
            address: body.address.as_deref(),
            address_detail: body.address_detail.as_deref(),
            profile_image: Some(""),
            kind: "LOCAL",
            social_id: None,
            created_at: now_micros(),
        },
    )
    .await;
    match inserted {
        Ok(()) => {}
        // A concurrent sign-up won the id or the e-mail: never an update of the existing row.
        Err(StoreError::Conflict(what)) if what.contains("email") => {
            return Err(ApiError::bad_request_code("DUE"));
        }
        Err(StoreError::Conflict(_)) => return Err(ApiError::bad_request_code("DU")),
        Err(e) => {
            tracing::error!(error = %e, "sign-up insert");
            return Err(bad());
        }
    }
    tx.commit().await.map_err(|_| bad())?;
    let _ = ctx.kv.del(&code_key(&email)).await;
    let _ = ctx.kv.del(&code_attempts_key(&email)).await;
    tracing::info!(user = %id, "account created");
    sc_only()
}

/// Checks the e-mail code; a code survives at most `email_code_attempts` wrong guesses.
async fn check_email_code(ctx: &Ctx, email: &str, code: &str) -> Result<(), ApiError> {
    let nv = || ApiError::bad_request_code("NV");
    let stored = ctx
        .kv
        .get(&code_key(email))
        .await
        .map_err(|_| ApiError::bad_request())?;
    let Some(stored) = stored else {
        return Err(nv());
    };
    if stored == code {
        return Ok(());
    }
    let attempts = ctx
        .kv
        .incr(&code_attempts_key(email), ctx.limits.email_code_ttl)
        .await
        .map_err(|_| ApiError::bad_request())?;
    if attempts >= ctx.limits.email_code_attempts {
        let _ = ctx.kv.del(&code_key(email)).await;
        tracing::warn!(%email, "e-mail code discarded after too many wrong guesses");
    }
    Err(nv())
}

/// `POST /api/auth/signIn` body.
#[derive(Debug, Deserialize)]
pub struct SignIn {
    id: Option<String>,
    password: Option<String>,
}

async fn sign_in(ctx: Ctx, addr: String, body: SignIn) -> ApiResult {
    const TOKEN: &[&str] = &["token"];
    let (Some(id), Some(password)) = (body.id, body.password) else {
        return Err(ApiError::bad_request());
    };
    if id.len() > 400 || password.len() > crate::password::MAX_PASSWORD_BYTES {
        return Err(ApiError::bad_request());
    }
    let limits = &ctx.limits;
    ctx.limit(
        &format!("sign-in:addr:{addr}"),
        limits.sign_in_per_address,
        limits.sign_in_window,
    )
    .await?;
    let failures_key = format!("limit:sign-in:fail:{id}");
    let failures = ctx
        .kv
        .get(&failures_key)
        .await
        .map_err(|_| ApiError::database())?
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    if failures >= limits.sign_in_failures {
        return Err(ApiError::too_many().with_nulls(TOKEN));
    }
    let Some(user) = ctx.store.user_by_id(&id).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NEI").with_nulls(TOKEN));
    };
    if user.kind != "LOCAL" {
        return Err(ApiError::bad_request());
    }
    let ok = match user.password {
        Some(hash) => crate::password::verify(password, hash).await,
        None => false,
    };
    if !ok {
        let _ = ctx.kv.incr(&failures_key, limits.sign_in_window).await;
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NEP").with_nulls(TOKEN));
    }
    let _ = ctx.kv.del(&failures_key).await;
    ctx.store.set_last_login(&user.id, now_micros()).await?;
    let token = ctx.tokens.issue(&user.id, &user.role).map_err(|e| {
        tracing::error!(error = %e, "signing a token");
        ApiError::database()
    })?;
    sc(&serde_json::json!({ "token": token }))
}

/// `POST /api/auth/checkId` body.
#[derive(Debug, Deserialize)]
pub struct CheckId {
    id: Option<String>,
}

async fn check_id(ctx: Ctx, body: CheckId) -> ApiResult {
    let Some(id) = body.id else {
        return Err(ApiError::bad_request());
    };
    if id.len() > 400 {
        return Err(ApiError::bad_request());
    }
    if ctx.store.user_exists(&id).await? {
        return Err(ApiError::bad_request_code("DU"));
    }
    sc_only()
}

/// `GET /api/auth/send/email` query.
#[derive(Debug, Deserialize)]
pub struct SendEmail {
    receive_email: Option<String>,
}

async fn send_email(ctx: Ctx, addr: String, q: SendEmail) -> ApiResult {
    let email = q
        .receive_email
        .as_deref()
        .and_then(normalise_email)
        .ok_or_else(ApiError::bad_request)?;
    let limits = &ctx.limits;
    ctx.limit(
        &format!("email:addr:{addr}"),
        limits.email_sends_per_address,
        limits.email_window,
    )
    .await?;
    ctx.limit(
        &format!("email:to:{email}"),
        limits.email_sends,
        limits.email_window,
    )
    .await?;
    let code = rand::random_range(10_000..=99_999u32).to_string();
    if let Err(e) = ctx.mailer.send(&email, "인증번호", &code).await {
        tracing::warn!(%email, error = %e, "verification mail not sent");
        return Err(ApiError::database());
    }
    ctx.kv
        .set(&code_key(&email), &code, limits.email_code_ttl)
        .await
        .map_err(|_| ApiError::database())?;
    let _ = ctx.kv.del(&code_attempts_key(&email)).await;
    empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("alice01"));
        assert!(valid_id("a.b_c-d"));
        assert!(!valid_id("short"));
        assert!(!valid_id("has space"));
        assert!(!valid_id("slash/es"));
        assert!(!valid_id(&"x".repeat(101)));
    }

    #[test]
    fn emails() {
        assert_eq!(
            normalise_email(" Bob@Example.COM ").as_deref(),
            Some("bob@example.com")
        );
        assert_eq!(normalise_email("nope"), None);
        assert_eq!(normalise_email("a@b"), None);
        assert_eq!(normalise_email("a b@c.d"), None);
    }
}
