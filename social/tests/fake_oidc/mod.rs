//! A fake OpenID provider on a loopback port, for the Google sign-in tests: discovery,
//! authorization (the "user" consents at once and is sent back with a code), token (with PKCE,
//! client authentication and single-use codes), userinfo and JWKS endpoints. Its signing keys are
//! generated when it starts (RSA 2048 for RS256, as Google signs, or P-256 for ES256). Tests set
//! who signs in next and can tamper with the next ID token.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use warp::Filter;
use warp::http::StatusCode;

/// The frontend's origin the tests configure (its `/oauth/google` page gets the tickets).
pub const FRONT: &str = "http://localhost:3000";

pub const CLIENT_ID: &str = "instar-test-client.apps.example";
pub const CLIENT_SECRET: &str = "instar-test-client-secret";

/// Who signs in at the provider next.
#[derive(Debug, Clone)]
pub struct FakeUser {
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub name: Option<String>,
}

impl FakeUser {
    pub fn new(sub: &str, email: &str, name: &str) -> Self {
        Self {
            sub: sub.to_owned(),
            email: email.to_owned(),
            email_verified: true,
            name: Some(name.to_owned()),
        }
    }
}

/// Changes to the next ID token (each taken once).
#[derive(Debug, Clone, Default)]
pub struct Tamper {
    pub aud: Option<String>,
    pub iss: Option<String>,
    pub nonce: Option<String>,
    /// Seconds added to `exp` (negative: expired).
    pub exp_offset: Option<i64>,
    /// Signed by a key the JWKS does not hold, under a key id it does.
    pub foreign_key: bool,
    /// Signed with `alg: none` (no signature at all).
    pub unsigned: bool,
    /// Bytes of padding added to the token response.
    pub pad_token_response: usize,
    /// How long the token endpoint waits before it answers.
    pub stall: Option<std::time::Duration>,
}

/// A signing key and its public JWK.
#[derive(Clone)]
pub struct Key {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

impl Key {
    /// A fresh RSA 2048 key (RS256).
    pub fn rsa(kid: &str) -> Key {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let der = private.to_pkcs1_der().unwrap();
        let public = private.to_public_key();
        Key {
            kid: kid.to_owned(),
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            }),
        }
    }

    /// A fresh P-256 key (ES256).
    pub fn ec(kid: &str) -> Key {
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256::SecretKey::random(&mut rsa::rand_core::OsRng);
        let der = secret.to_pkcs8_der().unwrap();
        let point = p256::EncodedPoint::from(secret.public_key());
        Key {
            kid: kid.to_owned(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(der.as_bytes()),
            jwk: json!({
                "kty": "EC", "use": "sig", "alg": "ES256", "crv": "P-256", "kid": kid,
                "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
                "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
            }),
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

struct Grant {
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    user: FakeUser,
    used: bool,
}

struct Inner {
    keys: Vec<Key>,
    /// A key of the same kind and id as the current one, not in the JWKS (for `foreign_key`).
    foreign: Option<Key>,
    next_user: Option<FakeUser>,
    tamper: Tamper,
    codes: HashMap<String, Grant>,
    access: HashMap<String, FakeUser>,
    jwks_fetches: usize,
    extra_jwks_keys: usize,
    token_calls: usize,
    redirect_uris: Vec<String>,
    seq: u64,
}

/// The running provider (stopped on drop).
pub struct FakeOidc {
    pub issuer: String,
    inner: Arc<Mutex<Inner>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for FakeOidc {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Debug, Deserialize)]
struct AuthorizeQuery {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(&json!({ "error": error })), status)
        .into_response_boxed()
}

trait IntoResponseBoxed {
    fn into_response_boxed(self) -> warp::reply::Response;
}

impl<T: warp::Reply> IntoResponseBoxed for T {
    fn into_response_boxed(self) -> warp::reply::Response {
        self.into_response()
    }
}

impl FakeOidc {
    /// Starts with one RS256 key (Google's algorithm).
    pub async fn start() -> FakeOidc {
        Self::start_with_key(Key::rsa("rsa-1")).await
    }

    /// Starts with `key`.
    pub async fn start_with_key(key: Key) -> FakeOidc {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner {
            keys: vec![key],
            foreign: None,
            next_user: None,
            tamper: Tamper::default(),
            codes: HashMap::new(),
            access: HashMap::new(),
            jwks_fetches: 0,
            extra_jwks_keys: 0,
            token_calls: 0,
            redirect_uris: Vec::new(),
            seq: 0,
        }));
        let routes = Self::routes(issuer.clone(), Arc::clone(&inner));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(routes)
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run(),
        );
        FakeOidc {
            issuer,
            inner,
            shutdown: Some(tx),
        }
    }

    /// Allows `uri` as a redirect URI (as registering it in the console does).
    pub fn register_redirect(&self, uri: &str) {
        self.inner
            .lock()
            .unwrap()
            .redirect_uris
            .push(uri.to_owned());
    }

    /// The user who consents at the next authorization.
    pub fn next_user(&self, user: FakeUser) {
        self.inner.lock().unwrap().next_user = Some(user);
    }

    /// Tampers with the next ID token (a foreign key is generated here, not while the token
    /// endpoint answers).
    pub fn tamper(&self, t: Tamper) {
        let current = self.inner.lock().unwrap().keys[0].clone();
        let foreign = t.foreign_key.then(|| {
            let mut k = if current.alg == Algorithm::RS256 {
                Key::rsa(&current.kid)
            } else {
                Key::ec(&current.kid)
            };
            k.jwk = Value::Null;
            k
        });
        let mut g = self.inner.lock().unwrap();
        g.tamper = t;
        g.foreign = foreign;
    }

    /// Replaces the signing keys with `key` (the old ones leave the JWKS).
    pub fn rotate(&self, key: Key) {
        self.inner.lock().unwrap().keys = vec![key];
    }

    /// Publishes `n` more keys in the JWKS (copies of the current one under other ids).
    pub fn extra_jwks_keys(&self, n: usize) {
        self.inner.lock().unwrap().extra_jwks_keys = n;
    }

    /// JWKS fetches so far.
    pub fn jwks_fetches(&self) -> usize {
        self.inner.lock().unwrap().jwks_fetches
    }

    /// Token endpoint calls so far.
    pub fn token_calls(&self) -> usize {
        self.inner.lock().unwrap().token_calls
    }

    fn routes(
        issuer: String,
        inner: Arc<Mutex<Inner>>,
    ) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone + 'static
    {
        let with = move || {
            let inner = Arc::clone(&inner);
            warp::any().map(move || Arc::clone(&inner))
        };
        let iss = issuer.clone();
        let discovery = warp::path!(".well-known" / "openid-configuration")
            .and(warp::get())
            .map(move || {
                warp::reply::json(&json!({
                    "issuer": iss,
                    "authorization_endpoint": format!("{iss}/authorize"),
                    "token_endpoint": format!("{iss}/token"),
                    "userinfo_endpoint": format!("{iss}/userinfo"),
                    "jwks_uri": format!("{iss}/jwks"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    "code_challenge_methods_supported": ["S256"],
                }))
                .into_response_boxed()
            });
        let authorize = warp::path!("authorize")
            .and(warp::get())
            .and(with())
            .and(warp::query::<AuthorizeQuery>())
            .map(|inner: Arc<Mutex<Inner>>, q: AuthorizeQuery| {
                let mut g = inner.lock().unwrap();
                let registered = q
                    .redirect_uri
                    .as_ref()
                    .is_some_and(|r| g.redirect_uris.contains(r));
                if q.response_type.as_deref() != Some("code")
                    || q.client_id.as_deref() != Some(CLIENT_ID)
                    || !registered
                    || q.code_challenge_method.as_deref() != Some("S256")
                    || q.code_challenge.is_none()
                    || !q
                        .scope
                        .as_deref()
                        .unwrap_or("")
                        .split(' ')
                        .any(|s| s == "openid")
                {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
                }
                let Some(user) = g.next_user.clone() else {
                    return oauth_error(StatusCode::BAD_REQUEST, "no_user");
                };
                g.seq += 1;
                let code = format!("4/code-{}-{}", g.seq, rand::random::<u64>());
                g.codes.insert(
                    code.clone(),
                    Grant {
                        redirect_uri: q.redirect_uri.clone().unwrap(),
                        challenge: q.code_challenge.clone().unwrap(),
                        nonce: q.nonce.clone(),
                        user,
                        used: false,
                    },
                );
                let mut to = url::Url::parse(q.redirect_uri.as_deref().unwrap()).unwrap();
                to.query_pairs_mut().append_pair("code", &code);
                if let Some(state) = &q.state {
                    to.query_pairs_mut().append_pair("state", state);
                }
                warp::redirect::found(warp::http::Uri::try_from(to.as_str()).unwrap())
                    .into_response_boxed()
            });
        let iss = issuer.clone();
        let token = warp::path!("token")
            .and(warp::post())
            .and(with())
            .then(|inner: Arc<Mutex<Inner>>| async move {
                let stall = inner.lock().unwrap().tamper.stall;
                if let Some(d) = stall {
                    tokio::time::sleep(d).await;
                }
                inner
            })
            .and(warp::body::form::<HashMap<String, String>>())
            .map(
                move |inner: Arc<Mutex<Inner>>, form: HashMap<String, String>| {
                    let mut g = inner.lock().unwrap();
                    g.token_calls += 1;
                    let f = |k: &str| form.get(k).map(String::as_str);
                    if f("grant_type") != Some("authorization_code") {
                        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
                    }
                    if f("client_id") != Some(CLIENT_ID)
                        || f("client_secret") != Some(CLIENT_SECRET)
                    {
                        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
                    }
                    let Some(grant) = f("code").and_then(|c| g.codes.get_mut(c)) else {
                        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                    };
                    if grant.used {
                        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                    }
                    grant.used = true;
                    let challenge = f("code_verifier")
                        .map(|v| URL_SAFE_NO_PAD.encode(Sha256::digest(v.as_bytes())));
                    if challenge.as_deref() != Some(grant.challenge.as_str())
                        || f("redirect_uri") != Some(grant.redirect_uri.as_str())
                    {
                        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                    }
                    let user = grant.user.clone();
                    let nonce = grant.nonce.clone();
                    let t = std::mem::take(&mut g.tamper);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs() as i64;
                    let mut claims = json!({
                        "iss": t.iss.clone().unwrap_or_else(|| iss.clone()),
                        "aud": t.aud.clone().unwrap_or_else(|| CLIENT_ID.to_owned()),
                        "azp": CLIENT_ID,
                        "sub": user.sub,
                        "email": user.email,
                        "email_verified": user.email_verified,
                        "iat": now,
                        "exp": now + 3600 + t.exp_offset.unwrap_or(0),
                    });
                    if let Some(n) = t.nonce.clone().or(nonce) {
                        claims["nonce"] = json!(n);
                    }
                    if let Some(name) = &user.name {
                        claims["name"] = json!(name);
                    }
                    let key = g.keys[0].clone();
                    let id_token = if t.unsigned {
                        let header = URL_SAFE_NO_PAD
                            .encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid));
                        let body = URL_SAFE_NO_PAD.encode(claims.to_string());
                        format!("{header}.{body}.")
                    } else if let Some(other) = g.foreign.take().filter(|_| t.foreign_key) {
                        other.sign(&claims)
                    } else {
                        key.sign(&claims)
                    };
                    g.seq += 1;
                    let access = format!("access-{}-{}", g.seq, rand::random::<u64>());
                    g.access.insert(access.clone(), user);
                    warp::reply::json(&json!({
                        "access_token": access,
                        "token_type": "Bearer",
                        "expires_in": 3599,
                        "scope": "openid email profile",
                        "id_token": id_token,
                        "padding": "x".repeat(t.pad_token_response),
                    }))
                    .into_response_boxed()
                },
            );
        let userinfo = warp::path!("userinfo")
            .and(warp::get())
            .and(with())
            .and(warp::header::optional::<String>("authorization"))
            .map(|inner: Arc<Mutex<Inner>>, auth: Option<String>| {
                let g = inner.lock().unwrap();
                let user = auth
                    .as_deref()
                    .and_then(|a| a.strip_prefix("Bearer "))
                    .and_then(|t| g.access.get(t));
                match user {
                    Some(u) => warp::reply::json(&json!({
                        "sub": u.sub,
                        "email": u.email,
                        "email_verified": u.email_verified,
                        "name": "Name From Userinfo",
                    }))
                    .into_response_boxed(),
                    None => oauth_error(StatusCode::UNAUTHORIZED, "invalid_token"),
                }
            });
        let jwks =
            warp::path!("jwks")
                .and(warp::get())
                .and(with())
                .map(|inner: Arc<Mutex<Inner>>| {
                    let mut g = inner.lock().unwrap();
                    g.jwks_fetches += 1;
                    let mut keys: Vec<Value> = g.keys.iter().map(|k| k.jwk.clone()).collect();
                    for i in 0..g.extra_jwks_keys {
                        let mut k = keys[0].clone();
                        k["kid"] = json!(format!("extra-{i}"));
                        keys.push(k);
                    }
                    warp::reply::json(&json!({ "keys": keys })).into_response_boxed()
                });
        discovery
            .or(authorize)
            .unify()
            .or(token)
            .unify()
            .or(userinfo)
            .unify()
            .or(jwks)
            .unify()
    }
}

// ── The browser's side of the flow, as the unmodified frontend drives it ────────────────────

/// A browser without automatic redirects; cookies are carried by hand.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn location(res: &reqwest::Response) -> String {
    res.headers()
        .get("location")
        .unwrap_or_else(|| panic!("no Location in {res:?}"))
        .to_str()
        .unwrap()
        .to_owned()
}

/// `url` with query parameter `name` set to `value` (`None`: removed).
pub fn with_param(url: &str, name: &str, value: Option<&str>) -> String {
    let mut u = url::Url::parse(url).unwrap();
    let kept: Vec<(String, String)> = u
        .query_pairs()
        .filter(|(k, _)| k != name)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    {
        let mut q = u.query_pairs_mut();
        q.clear();
        for (k, v) in &kept {
            q.append_pair(k, v);
        }
        if let Some(v) = value {
            q.append_pair(name, v);
        }
    }
    u.to_string()
}

pub fn query(url: &str, name: &str) -> Option<String> {
    url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The state cookie a response sets (`name=value`), if any.
pub fn set_cookie(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("instar_google_state="))
        .map(|c| c.split(';').next().unwrap().to_owned())
}

/// A started sign-in: the provider's redirect back (`callback` URL with code and state) and the
/// browser's cookie.
pub struct Started {
    pub callback: String,
    pub cookie: String,
}

impl Started {
    pub fn state(&self) -> String {
        query(&self.callback, "state").unwrap()
    }
    pub fn code(&self) -> String {
        query(&self.callback, "code").unwrap()
    }
}

/// login-url → start → the provider (who signs `user` in) → the redirect back to our callback.
pub async fn begin(api: &str, oidc: &FakeOidc, user: &FakeUser) -> Started {
    let b = browser();
    let res = b
        .get(format!("{api}/api/auth/google/login-url"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let start = res.text().await.unwrap();
    // Several services behind one balancer share one public start URL.
    assert!(start.ends_with("/api/auth/google/start"), "{start}");
    let res = b.get(&start).send().await.unwrap();
    assert_eq!(res.status(), 302);
    let cookie = set_cookie(&res).expect("the start sets the state cookie");
    let raw = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        raw.contains("HttpOnly") && raw.contains("SameSite=Lax"),
        "{raw}"
    );
    let authorize = location(&res);
    assert!(authorize.starts_with(&format!("{}/authorize?", oidc.issuer)));
    for p in ["state", "nonce", "code_challenge"] {
        assert!(query(&authorize, p).is_some_and(|v| v.len() >= 43), "{p}");
    }
    assert_eq!(
        query(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert_eq!(
        query(&authorize, "scope").as_deref(),
        Some("openid email profile")
    );
    oidc.next_user(user.clone());
    let res = b.get(&authorize).send().await.unwrap();
    assert_eq!(res.status(), 302, "the provider redirects back");
    let callback = location(&res);
    assert!(
        callback.contains("/api/auth/google/callback?"),
        "{callback}"
    );
    Started { callback, cookie }
}

/// The browser follows the provider's redirect to our callback with `cookie`; returns where it is
/// sent next (the frontend page).
pub async fn arrive(callback: &str, cookie: Option<&str>) -> String {
    let mut req = browser().get(callback);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 302);
    let to = location(&res);
    // The state cookie is cleared whatever the outcome.
    let cleared = res.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    assert!(to.starts_with(&format!("{FRONT}/oauth/google?")), "{to}");
    to
}

/// The frontend page's call with the ticket it was given, as the frontend makes it.
pub async fn redeem(api: &str, ticket: &str) -> (u16, Value) {
    read(
        browser()
            .get(format!("{api}/api/auth/google/callback?code={ticket}"))
            .send()
            .await
            .unwrap(),
    )
    .await
}

async fn read(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    let bytes = res.bytes().await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

/// A whole sign-in of `user`: (status, body) of the frontend page's call.
pub async fn sign_in(api: &str, oidc: &FakeOidc, user: &FakeUser) -> (u16, Value) {
    let s = begin(api, oidc, user).await;
    let front = arrive(&s.callback, Some(&s.cookie)).await;
    let ticket = query(&front, "code").unwrap_or_else(|| panic!("no ticket in {front}"));
    redeem(api, &ticket).await
}

/// The `error` the frontend page is given after `user`'s sign-in with `tamper` applied.
pub async fn refused_with(api: &str, oidc: &FakeOidc, user: &FakeUser, tamper: Tamper) -> String {
    let s = begin(api, oidc, user).await;
    oidc.tamper(tamper);
    let front = arrive(&s.callback, Some(&s.cookie)).await;
    assert!(query(&front, "code").is_none(), "no ticket on failure");
    query(&front, "error").unwrap()
}

pub async fn sign_up(api: &str, handle: &str, id: &str) -> (u16, Value) {
    read(
        browser()
            .post(format!("{api}/api/auth/oauth-signUp"))
            .json(
                &json!({"socialId": handle, "id": id, "sex": "female", "address": "Seoul",
                          "addressDetail": "Gangnam 1"}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await
}
