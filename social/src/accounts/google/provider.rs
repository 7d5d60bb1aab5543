//! The OpenID provider as a client sees it: discovery, the token endpoint, userinfo and the ID
//! token checked against the provider's JWKS.
//!
//! One HTTP client ([`HttpClient`]: hyper with rustls, the ring provider and the system's roots;
//! redirects are not followed; a connect and a total timeout) makes every call, and every response
//! body is read up to a bound before it is parsed. Endpoints must be `https`, except on a loopback host (tests, a local
//! provider). The JWKS is cached and fetched again when it is older than [`JWKS_MAX_AGE`] or when a
//! token names a key id it lacks (the provider rotated its keys), at most once per
//! `jwks_refetch_interval` so that tokens with made-up key ids cannot make us hammer the provider.
//! ID tokens are verified with `jsonwebtoken`: RS256 (what Google signs with) or ES256 only, the
//! key chosen by `kid` and of the algorithm's family, signature, `iss`, `aud`, `exp` (60 s of
//! leeway for clock skew), `iat`, and `azp` when there are several audiences. The nonce and the
//! e-mail checks are the caller's.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;
use warp::http::{Method, Request, StatusCode, header};

/// Largest discovery document, JWKS or token response read, bytes.
pub const MAX_DOCUMENT: usize = 64 * 1024;
/// Largest userinfo response read, bytes.
pub const MAX_USERINFO: usize = 16 * 1024;
/// Keys in a JWKS at most (Google publishes two or three).
pub const MAX_KEYS: usize = 20;
/// Longest ID token accepted, bytes.
pub const MAX_ID_TOKEN: usize = 16 * 1024;
/// A JWKS is fetched again after this long even when every key id is known.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// Clock skew allowed on `exp` and `iat`, seconds.
pub const LEEWAY_SECS: u64 = 60;

/// Why a call to the provider or a token check failed (logged; the browser sees only the kind).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or answered something unusable (discovery, JWKS, HTTP).
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The token endpoint refused the code (bad, used or expired code; PKCE mismatch).
    #[error("code exchange refused: {0}")]
    Exchange(String),
    /// The ID token failed a check.
    #[error("ID token refused: {0}")]
    IdToken(String),
    /// A setting is unusable.
    #[error("{0}")]
    Config(String),
}

/// The endpoints used, from settings or from the issuer's discovery document.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Where the browser is sent to sign in.
    pub authorization: Url,
    /// Where codes are exchanged.
    pub token: Url,
    /// The provider's public keys.
    pub jwks: Url,
    /// Profile claims (used when the ID token has no `name`).
    pub userinfo: Option<Url>,
}

/// Endpoint settings: the issuer, and any endpoint that overrides discovery.
#[derive(Debug, Clone, Default)]
pub struct EndpointSettings {
    /// The issuer (`iss` of ID tokens; discovery at `{issuer}/.well-known/openid-configuration`).
    pub issuer: String,
    /// Authorization endpoint override.
    pub authorization: Option<String>,
    /// Token endpoint override.
    pub token: Option<String>,
    /// JWKS override.
    pub jwks: Option<String>,
    /// Userinfo endpoint override.
    pub userinfo: Option<String>,
}

/// What a verified ID token says about the user.
#[derive(Debug, Clone)]
pub struct IdClaims {
    /// The provider's stable user id.
    pub sub: String,
    /// E-mail address, when present.
    pub email: Option<String>,
    /// Whether the provider verified the e-mail address.
    pub email_verified: bool,
    /// Display name, when present.
    pub name: Option<String>,
    /// The nonce the token carries.
    pub nonce: Option<String>,
}

/// The token endpoint's answer (RFC 6749 §5.1 plus OpenID's `id_token`).
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    /// The ID token (required for OpenID Connect).
    pub id_token: Option<String>,
    /// An access token (for userinfo).
    pub access_token: Option<String>,
}

/// The provider client.
#[derive(Debug)]
pub struct Provider {
    http: HttpClient,
    settings: EndpointSettings,
    /// Accepted `iss` values (Google's tokens may carry the issuer without the scheme).
    issuers: Vec<String>,
    client_id: String,
    client_secret: String,
    endpoints: tokio::sync::OnceCell<Arc<Endpoints>>,
    jwks: tokio::sync::Mutex<JwksCache>,
    jwks_refetch_interval: Duration,
}

#[derive(Debug, Default)]
struct JwksCache {
    keys: Option<JwkSet>,
    fetched: Option<Instant>,
}

impl JwksCache {
    fn fresh(&self) -> bool {
        self.fetched.is_some_and(|t| t.elapsed() < JWKS_MAX_AGE)
    }

    fn may_refetch(&self, interval: Duration) -> bool {
        self.fetched.is_none_or(|t| t.elapsed() >= interval)
    }
}

/// `https`, or `http` on a loopback host.
pub fn check_endpoint(what: &str, url: &str) -> Result<Url, ProviderError> {
    let u = Url::parse(url)
        .map_err(|e| ProviderError::Config(format!("{what} {url:?} is not a URL: {e}")))?;
    let loopback = match u.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    };
    match u.scheme() {
        "https" => Ok(u),
        "http" if loopback => Ok(u),
        _ => Err(ProviderError::Config(format!(
            "{what} {url:?} must be an https URL (http only on a loopback host)"
        ))),
    }
}

/// The HTTP client every provider call shares (cheap to clone: one connection pool).
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The body (at most the bound asked for).
    pub body: Bytes,
    /// `Retry-After` in seconds, when the answer carries one.
    pub retry_after: Option<Duration>,
}

impl HttpClient {
    /// A client whose every call (connect, request, whole body) ends within `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, ProviderError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            let _ = roots.add(cert);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProviderError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout.min(Duration::from_secs(5))));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(https);
        Ok(Self { inner, timeout })
    }

    /// Sends `req` and reads at most `max` bytes of the answer (more is an error, not a
    /// truncation). Redirects are answers like any other.
    pub async fn send(&self, req: Request<Full<Bytes>>, max: usize) -> Result<Answer, String> {
        let call = async {
            let res = self.inner.request(req).await.map_err(|e| e.to_string())?;
            let status = res.status();
            let retry_after = res
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let declared = res
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max as u64) {
                return Err(format!("response over {max} bytes"));
            }
            let body = Limited::new(res.into_body(), max)
                .collect()
                .await
                .map_err(|e| format!("response body: {e}"))?
                .to_bytes();
            Ok(Answer {
                status,
                body,
                retry_after,
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
    }

    /// GET `url` (with a bearer token).
    async fn get(&self, url: &Url, bearer: Option<&str>, max: usize) -> Result<Answer, String> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(url.as_str())
            .header(header::ACCEPT, "application/json");
        if let Some(t) = bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        self.send(req, max).await
    }

    /// POST `form` to `url`.
    async fn post_form(
        &self,
        url: &Url,
        form: &[(&str, &str)],
        max: usize,
    ) -> Result<Answer, String> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let req = Request::builder()
            .method(Method::POST)
            .uri(url.as_str())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        self.send(req, max).await
    }
}

/// The start of a body, for a log line.
fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned()
}

/// A successful JSON answer, parsed.
fn json_of<T: DeserializeOwned>(answer: Result<Answer, String>) -> Result<T, String> {
    let a = answer?;
    if !a.status.is_success() {
        return Err(format!("HTTP {}: {}", a.status, excerpt(&a.body)));
    }
    serde_json::from_slice(&a.body).map_err(|e| format!("unreadable JSON: {e}"))
}

#[derive(Debug, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
}

/// The claims read from an ID token (unknown ones ignored).
#[derive(Debug, Deserialize)]
struct RawClaims {
    sub: String,
    aud: serde_json::Value,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

impl Provider {
    /// A client for `client_id` at the provider of `settings`; nothing is fetched yet.
    pub fn new(
        http: HttpClient,
        settings: EndpointSettings,
        client_id: String,
        client_secret: String,
        jwks_refetch_interval: Duration,
    ) -> Result<Self, ProviderError> {
        let issuer = settings.issuer.trim_end_matches('/').to_owned();
        check_endpoint("the issuer", &issuer)?;
        for (what, url) in [
            ("the authorization endpoint", &settings.authorization),
            ("the token endpoint", &settings.token),
            ("the JWKS URI", &settings.jwks),
            ("the userinfo endpoint", &settings.userinfo),
        ] {
            if let Some(url) = url {
                check_endpoint(what, url)?;
            }
        }
        let mut issuers = vec![issuer.clone()];
        // Google documents both forms of its `iss`.
        if issuer == "https://accounts.google.com" {
            issuers.push("accounts.google.com".to_owned());
        }
        Ok(Self {
            http,
            settings: EndpointSettings { issuer, ..settings },
            issuers,
            client_id,
            client_secret,
            endpoints: tokio::sync::OnceCell::new(),
            jwks: tokio::sync::Mutex::new(JwksCache::default()),
            jwks_refetch_interval,
        })
    }

    /// The endpoints: the overrides, the rest from the discovery document (fetched once; a failed
    /// fetch is tried again on the next call).
    pub async fn endpoints(&self) -> Result<Arc<Endpoints>, ProviderError> {
        self.endpoints
            .get_or_try_init(|| async { self.resolve_endpoints().await.map(Arc::new) })
            .await
            .cloned()
    }

    async fn resolve_endpoints(&self) -> Result<Endpoints, ProviderError> {
        let s = &self.settings;
        let discovered = if s.authorization.is_some() && s.token.is_some() && s.jwks.is_some() {
            None
        } else {
            let url = format!("{}/.well-known/openid-configuration", s.issuer);
            let parsed = Url::parse(&url).map_err(|e| ProviderError::Config(e.to_string()))?;
            let doc: Discovery = json_of(self.http.get(&parsed, None, MAX_DOCUMENT).await)
                .map_err(|e| ProviderError::Unavailable(format!("discovery at {url}: {e}")))?;
            if doc.issuer.trim_end_matches('/') != s.issuer {
                return Err(ProviderError::Unavailable(format!(
                    "discovery at {url} names issuer {:?}, not {:?}",
                    doc.issuer, s.issuer
                )));
            }
            Some(doc)
        };
        let pick = |what: &str, over: &Option<String>, found: Option<&String>| {
            let url = over
                .as_ref()
                .or(found)
                .ok_or_else(|| ProviderError::Unavailable(format!("no {what}")))?;
            check_endpoint(what, url).map_err(|e| ProviderError::Unavailable(e.to_string()))
        };
        let d = discovered.as_ref();
        Ok(Endpoints {
            authorization: pick(
                "authorization endpoint",
                &s.authorization,
                d.map(|d| &d.authorization_endpoint),
            )?,
            token: pick("token endpoint", &s.token, d.map(|d| &d.token_endpoint))?,
            jwks: pick("JWKS URI", &s.jwks, d.map(|d| &d.jwks_uri))?,
            userinfo: match (&s.userinfo, d.and_then(|d| d.userinfo_endpoint.as_ref())) {
                (None, None) => None,
                (over, found) => Some(pick("userinfo endpoint", over, found)?),
            },
        })
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    pub async fn exchange(
        &self,
        code: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> Result<TokenResponse, ProviderError> {
        let ep = self.endpoints().await?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.as_str()),
            ("code_verifier", verifier),
        ];
        let answer = self
            .http
            .post_form(&ep.token, &form, MAX_DOCUMENT)
            .await
            .map_err(|e| ProviderError::Unavailable(format!("token endpoint: {e}")))?;
        if answer.status.is_client_error() {
            // 400 `invalid_grant` and friends: the code or its verifier is wrong (or reused).
            return Err(ProviderError::Exchange(format!(
                "HTTP {}: {}",
                answer.status,
                excerpt(&answer.body)
            )));
        }
        json_of(Ok(answer)).map_err(|e| ProviderError::Unavailable(format!("token endpoint: {e}")))
    }

    /// The `name` claim of userinfo for `access_token`, checked to be about `sub`.
    pub async fn userinfo_name(
        &self,
        access_token: &str,
        sub: &str,
    ) -> Result<Option<String>, ProviderError> {
        #[derive(Deserialize)]
        struct UserInfo {
            sub: String,
            #[serde(default)]
            name: Option<String>,
        }
        let ep = self.endpoints().await?;
        let Some(url) = ep.userinfo.clone() else {
            return Ok(None);
        };
        let info: UserInfo = json_of(self.http.get(&url, Some(access_token), MAX_USERINFO).await)
            .map_err(|e| ProviderError::Unavailable(format!("userinfo: {e}")))?;
        if info.sub != sub {
            return Err(ProviderError::IdToken(
                "userinfo is about another subject".into(),
            ));
        }
        Ok(info.name)
    }

    /// Verifies `id_token` (signature by a key of the provider's JWKS, `iss`, `aud`, `exp`,
    /// `iat`, `azp`) and returns its claims.
    pub async fn verify_id_token(&self, id_token: &str) -> Result<IdClaims, ProviderError> {
        let bad = |why: String| ProviderError::IdToken(why);
        if id_token.len() > MAX_ID_TOKEN {
            return Err(bad("too long".into()));
        }
        let header = jsonwebtoken::decode_header(id_token).map_err(|e| bad(e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(bad(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header
            .kid
            .ok_or_else(|| bad("no key id in the header".into()))?;
        let key = self.key_for(&kid, header.alg).await?;
        let mut v = Validation::new(header.alg);
        v.leeway = LEEWAY_SECS;
        v.set_issuer(&self.issuers);
        v.set_audience(&[&self.client_id]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<RawClaims>(id_token, &key, &v)
            .map_err(|e| bad(e.to_string()))?;
        let c = data.claims;
        if c.aud.as_array().is_some_and(|a| a.len() > 1)
            && c.azp.as_deref() != Some(self.client_id.as_str())
        {
            return Err(bad("several audiences and azp is not this client".into()));
        }
        if c.sub.is_empty() || c.sub.len() > 255 {
            return Err(bad("unusable sub".into()));
        }
        let email_verified = match c.email_verified {
            Some(serde_json::Value::Bool(b)) => b,
            Some(serde_json::Value::String(s)) => s == "true",
            _ => false,
        };
        Ok(IdClaims {
            sub: c.sub,
            email: c.email,
            email_verified,
            name: c.name,
            nonce: c.nonce,
        })
    }

    /// The decoding key with `kid`, usable with `alg`; the JWKS is fetched when stale or when it
    /// lacks `kid` (rotation), within the refetch interval.
    async fn key_for(&self, kid: &str, alg: Algorithm) -> Result<DecodingKey, ProviderError> {
        let mut cache = self.jwks.lock().await;
        let known = cache.keys.as_ref().and_then(|k| k.find(kid)).is_some();
        if !cache.fresh() || (!known && cache.may_refetch(self.jwks_refetch_interval)) {
            match self.fetch_jwks().await {
                Ok(keys) => {
                    cache.keys = Some(keys);
                    cache.fetched = Some(Instant::now());
                }
                // A stale set still serves the keys it has; with none at all the sign-in fails.
                Err(e) if cache.keys.is_some() => {
                    tracing::warn!(error = %e, "JWKS refresh failed; keeping the old keys");
                }
                Err(e) => return Err(e),
            }
        }
        let jwk = cache
            .keys
            .as_ref()
            .and_then(|k| k.find(kid))
            .ok_or_else(|| ProviderError::IdToken(format!("no key {kid:?} in the JWKS")))?;
        key_of(jwk, alg)
    }

    async fn fetch_jwks(&self) -> Result<JwkSet, ProviderError> {
        let ep = self.endpoints().await?;
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<serde_json::Value>,
        }
        let raw: RawSet = json_of(self.http.get(&ep.jwks, None, MAX_DOCUMENT).await)
            .map_err(|e| ProviderError::Unavailable(format!("JWKS: {e}")))?;
        if raw.keys.len() > MAX_KEYS {
            return Err(ProviderError::Unavailable(format!(
                "JWKS has {} keys (at most {MAX_KEYS})",
                raw.keys.len()
            )));
        }
        // A key of a kind we do not know is skipped, not a reason to refuse the others.
        let keys: Vec<Jwk> = raw
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value(k).ok())
            .collect();
        tracing::debug!(keys = keys.len(), "JWKS fetched");
        Ok(JwkSet { keys })
    }
}

/// The key of `jwk` for `alg`, refused when the key is of another family or curve, or is marked
/// for another algorithm or use.
fn key_of(jwk: &Jwk, alg: Algorithm) -> Result<DecodingKey, ProviderError> {
    let bad = |why: &str| ProviderError::IdToken(why.to_owned());
    let fits = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        _ => false,
    };
    if !fits {
        return Err(bad("the key does not fit the token's algorithm"));
    }
    if let Some(key_alg) = jwk.common.key_algorithm
        && format!("{key_alg:?}") != format!("{alg:?}")
    {
        return Err(bad("the key is for another algorithm"));
    }
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
    {
        return Err(bad("the key is not a signing key"));
    }
    DecodingKey::from_jwk(jwk).map_err(|e| ProviderError::IdToken(format!("unusable key: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_https_unless_loopback() {
        assert!(check_endpoint("x", "https://accounts.google.com").is_ok());
        assert!(check_endpoint("x", "http://127.0.0.1:8080/token").is_ok());
        assert!(check_endpoint("x", "http://localhost/token").is_ok());
        assert!(check_endpoint("x", "http://[::1]:9/jwks").is_ok());
        assert!(check_endpoint("x", "http://example.com/token").is_err());
        assert!(check_endpoint("x", "ftp://example.com").is_err());
        assert!(check_endpoint("x", "not a url").is_err());
    }
}
