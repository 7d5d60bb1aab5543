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

use crate::ctx::Ctx;
use crate::ctx::with_ctx;
use crate::http::{ApiError, ApiResult, empty, finish, get, json_body, sc, sc_only};
use crate::public_url::rate_key;
use crate::store::StoreError;
use crate::store::users::{self, NewUser};
use crate::time::now_micros;

/// Longest id (the column is VARCHAR(100)).
pub const MAX_ID_CHARS: usize = 100;
/// Shortest id (the frontend's own rule).
pub const MIN_ID_CHARS: usize = 6;
/// Password length bounds, bytes: any non-empty password, as the original (the frontend has no
/// message for a refused one; guessing is bounded by the sign-in limits and the hash is argon2id,
/// see docs/api.md "Refusals the frontend can show").
pub const PASSWORD_BYTES: std::ops::RangeInclusive<usize> = 1..=crate::password::MAX_PASSWORD_BYTES;

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
        .and(client_addr(ctx))
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
        .and(client_addr(ctx))
        .and(warp::query::<SendEmail>())
        .then(send_email)
        .map(finish);
    let sign_out_everywhere = warp::path!("auth" / "signOutEverywhere")
        .and(warp::post())
        .and(with_ctx(ctx))
        .and(crate::http::authed(
            ctx.tokens.clone(),
            ctx.revocation.clone(),
        ))
        .then(sign_out_everywhere)
        .map(finish);
    sign_up
        .or(sign_in)
        .unify()
        .or(sign_out_everywhere)
        .unify()
        .or(check_id)
        .unify()
        .or(send_email)
        .unify()
        .boxed()
}

/// The client's address as a rate-limit key ([`crate::public_url::PublicUrl::client_ip`], [`rate_key`]): the socket
/// peer, or the nearest untrusted `X-Forwarded-For` hop when the peer is a trusted proxy.
pub(crate) fn client_addr(
    ctx: &Ctx,
) -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone + use<> {
    let public = ctx.public_url.clone();
    crate::public_url::peer()
        .and(
            warp::header::optional::<String>("x-forwarded-for")
                .or(warp::any().map(|| None))
                .unify(),
        )
        .map(move |peer: Option<SocketAddr>, xff: Option<String>| {
            public
                .client_ip(peer, xff.as_deref())
                .map_or_else(|| "unknown".to_owned(), rate_key)
        })
}

/// `POST /api/auth/signUp` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
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

/// A valid login id: 6–100 characters of letters and digits of any script (Hangul included),
/// `.`, `_`, `-` and `@`, in Unicode normal form C. Everything else is refused because the
/// frontend puts ids into its own routes and query strings unencoded (`/`, `?`, `#`, `%`, `&`,
/// `+`, `\`, spaces break them) and because a trailing space would compare equal on MariaDB.
pub fn valid_id(id: &str) -> bool {
    let n = id.chars().count();
    (MIN_ID_CHARS..=MAX_ID_CHARS).contains(&n)
        && id
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
        && unicode_normalization::is_nfc(id)
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

#[utoipa::path(
    post, path = "/api/auth/signUp", tag = "accounts",
    request_body = SignUp,
    responses(
        (status = 200, body = crate::http::doc::Done),
        (status = 400, body = crate::http::doc::Refused, description = "`DU`: id taken or not a valid id; `DUE`: e-mail taken; `NV`: wrong or expired e-mail code; `BR`: a field missing or too long"),
    )
)]
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
    // An id signUp cannot take is `DU`, the frontend's "check the id for duplicates first"
    // (checkId answers DU for it too, so the user is sent back to the check and told it is taken).
    if !valid_id(id) {
        return Err(ApiError::bad_request_code("DU"));
    }
    if !PASSWORD_BYTES.contains(&password.len())
        || name.is_empty()
        || name.chars().count() > 100
        || !bounded(&body.sex, 50)
        || !bounded(&body.address, 100)
        || !bounded(&body.address_detail, 100)
    {
        return Err(bad());
    }
    // No code can have been sent to an address that is not one: the frontend's "wrong code".
    let email = normalise_email(email).ok_or_else(|| ApiError::bad_request_code("NV"))?;
    // The id is checked here, whatever the client's `duplicateCheckId` says (the original trusted it).
    if ctx.store.user_exists(id).await.map_err(|_| bad())? {
        return Err(ApiError::bad_request_code("DU"));
    }
    if ctx.store.email_taken(&email).await.map_err(|_| bad())? {
        return Err(ApiError::bad_request_code("DUE"));
    }
    check_email_code(&ctx, &email, code).await?;
    let hash = crate::password::hash(password).await?;
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
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SignIn {
    id: Option<String>,
    password: Option<String>,
}

#[utoipa::path(
    post, path = "/api/auth/signIn", tag = "accounts",
    request_body = SignIn,
    responses(
        (status = 200, body = crate::http::doc::Token),
        (status = 404, body = crate::http::doc::Refused, description = "`NEI`: no such id; `NEP`: wrong password (with `token: null`)"),
    )
)]
async fn sign_in(ctx: Ctx, addr: String, body: SignIn) -> ApiResult {
    const TOKEN: &[&str] = &["token"];
    let (Some(id), Some(password)) = (body.id, body.password) else {
        return Err(ApiError::bad_request());
    };
    // Bounded before anything else, answered with the codes the frontend shows: no account has
    // such an id, no account such a password.
    if id.len() > 400 {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NEI").with_nulls(TOKEN));
    }
    if password.len() > crate::password::MAX_PASSWORD_BYTES {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NEP").with_nulls(TOKEN));
    }
    let limits = &ctx.limits;
    ctx.limit(
        &format!("sign-in:addr:{addr}"),
        limits.sign_in_per_address,
        limits.sign_in_window,
    )
    .await?;
    // The attempt is counted before any hashing (a reservation, given back by a success), so N
    // concurrent guesses cost at most the limit's number of hashes. Counted per id *and*
    // address: a stranger's failures lock that stranger out, never the owner signing in from
    // elsewhere (and every address is limited overall, above).
    let failures_key = format!("limit:sign-in:fail:{id}:{addr}");
    let attempt = ctx
        .kv
        .incr(&failures_key, limits.sign_in_window)
        .await
        .map_err(|_| ApiError::database())?;
    if attempt > limits.sign_in_failures {
        return Err(ApiError::too_many().with_nulls(TOKEN));
    }
    let Some(user) = ctx.store.user_by_id(&id).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NEI").with_nulls(TOKEN));
    };
    if user.kind != "LOCAL" {
        return Err(ApiError::bad_request());
    }
    let ok = match user.password {
        Some(hash) => crate::password::verify(password, hash)
            .await
            .map_err(|e| ApiError::from(e).with_nulls(TOKEN))?,
        None => false,
    };
    if !ok {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "NEP").with_nulls(TOKEN));
    }
    let _ = ctx.kv.del(&failures_key).await;
    ctx.store.set_last_login(&user.id, now_micros()).await?;
    let version = u64::try_from(user.token_version).unwrap_or(0);
    let token = ctx
        .tokens
        .issue_version(&user.id, &user.role, version)
        .map_err(|e| {
            tracing::error!(error = %e, "signing a token");
            ApiError::database()
        })?;
    sc(&serde_json::json!({ "token": token }))
}

/// `POST /api/auth/signOutEverywhere`: revokes every token of the caller, this one included, on
/// every process: REST refuses them at once and every live STOMP session opened with one is closed
/// with an ERROR ([`crate::revocation`]). Sign in again for a new token.
#[utoipa::path(
    post, path = "/api/auth/signOutEverywhere", tag = "accounts", security(("bearer" = [])),
    responses(
        (status = 200, body = crate::http::doc::Done, description = "every token issued so far is revoked"),
        (status = 400, body = crate::http::doc::Refused, description = "`BR`: the account no longer exists"),
    )
)]
async fn sign_out_everywhere(ctx: Ctx, caller: String) -> ApiResult {
    let Some(version) = ctx.store.bump_token_version(&caller).await? else {
        return Err(ApiError::bad_request());
    };
    ctx.revocation
        .raised(&caller, u64::try_from(version).unwrap_or(0))
        .await;
    tracing::info!(user = %caller, "signed out everywhere");
    sc_only()
}

/// `POST /api/auth/checkId` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CheckId {
    id: Option<String>,
}

#[utoipa::path(
    post, path = "/api/auth/checkId", tag = "accounts",
    request_body = CheckId,
    responses(
        (status = 200, body = crate::http::doc::Done, description = "the id is free"),
        (status = 400, body = crate::http::doc::Refused, description = "`DU`: taken or not a valid id; `BR`: no id"),
    )
)]
async fn check_id(ctx: Ctx, body: CheckId) -> ApiResult {
    let Some(id) = body.id else {
        return Err(ApiError::bad_request());
    };
    // Never "available" for an id signUp would refuse: DU, as for a taken one.
    if !valid_id(&id) {
        return Err(ApiError::bad_request_code("DU"));
    }
    if ctx.store.user_exists(&id).await? {
        return Err(ApiError::bad_request_code("DU"));
    }
    sc_only()
}

/// `GET /api/auth/send/email` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SendEmail {
    receive_email: Option<String>,
}

#[utoipa::path(
    get, path = "/api/auth/send/email", tag = "accounts",
    params(SendEmail),
    responses((status = 200, description = "the code was sent (empty body)"))
)]
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
        // Hangul and e-mail-like ids, as the original accepted them.
        assert!(valid_id("김민준1234"));
        assert!(valid_id("me@naver.com"));
        for bad in [
            "ab!cde1", "alice01 ", "a?bcdef", "a#bcdef", "a%bcdef", "a&bcdef", "a+bcdef",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
        // Decomposed Hangul (jamo) is not normal form C.
        assert!(!valid_id("\u{1100}\u{1161}\u{11A8}민준12"));
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
