//! Image labels (contract §6.2) behind [`Labeler`], and the Google Cloud Vision v1 client.
//!
//! [`Vision`] sends the image **as bytes** (`image.content`, base64), so media need not be public,
//! with `LABEL_DETECTION` and Vision's default of 10 results, and keeps the first
//! [`MAX_LABELS`] descriptions in Vision's order. Credentials: an API key (`?key=`) or a
//! service-account JSON whose key signs a JWT exchanged for an OAuth2 access token (RFC 7523's JWT
//! bearer grant at the account's `token_uri`, scope `cloud-vision`), cached until a minute before
//! it expires. Every call goes through the project's one HTTP client
//! ([`crate::accounts::google::provider::HttpClient`]: hyper + rustls, bounded bodies, a total
//! timeout). Failures that may pass (no answer, 5xx, 429 `RESOURCE_EXHAUSTED`) are retried with
//! exponential backoff, `Retry-After` respected up to a bound; a refusal (other 4xx) and a
//! malformed answer are not retried. The worker ([`super::worker`]) keeps the job and tries again
//! later in every case but a malformed or refused image.
//!
//! No labeler runs without an outside service: no registry package ships image-classification
//! weights usable here (docs/tagging.md), so labelling is off unless Vision is configured.

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use serde::Deserialize;
use url::Url;
use warp::http::{Method, Request, StatusCode, header};

use crate::accounts::google::provider::{Answer, HttpClient, check_endpoint};

/// Labels kept per image (the original's first five).
pub const MAX_LABELS: usize = 5;
/// Labels asked for (Vision's default).
pub const MAX_RESULTS: usize = 10;
/// Longest label kept, characters (the tag column's size); longer ones are refused as malformed.
pub const MAX_LABEL_CHARS: usize = 100;
/// Largest Vision or token answer read, bytes.
pub const MAX_ANSWER: usize = 256 * 1024;
/// Largest image sent, bytes (Vision's limit for inline content is 10 MB after base64; 4 MiB is
/// already far above a stored post image).
pub const MAX_IMAGE: usize = 4 * 1024 * 1024;
/// Longest `Retry-After` waited inside one call; a longer one ends the call (the worker retries).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// The public endpoint.
pub const VISION_ENDPOINT: &str = "https://vision.googleapis.com/v1/images:annotate";
/// OAuth2 scope of Cloud Vision.
pub const VISION_SCOPE: &str = "https://www.googleapis.com/auth/cloud-vision";

/// Why labelling failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// Worth trying again later: no answer, a timeout, 5xx, quota (429).
    #[error("labeler unavailable: {0}")]
    Unavailable(String),
    /// The service refused this request (bad image, bad key, permission): not retried soon.
    #[error("labeler refused the request: {0}")]
    Refused(String),
    /// The answer does not have Vision's shape: refused, nothing stored.
    #[error("malformed labeler answer: {0}")]
    Malformed(String),
}

/// Something that names what an image shows.
#[async_trait::async_trait]
pub trait Labeler: Send + Sync + std::fmt::Debug {
    /// At most [`MAX_LABELS`] labels, most relevant first.
    async fn labels(&self, image: Bytes) -> Result<Vec<String>, LabelError>;
}

/// How to authenticate to Vision.
#[derive(Clone)]
pub enum Credentials {
    /// An API key (`?key=`).
    ApiKey(String),
    /// A service account: its JSON key file's content.
    ServiceAccount(ServiceAccount),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ApiKey(_) => f.write_str("ApiKey(..)"),
            Self::ServiceAccount(sa) => write!(f, "ServiceAccount({})", sa.client_email),
        }
    }
}

/// The fields of a service-account JSON key that the JWT bearer grant needs.
#[derive(Clone, Deserialize)]
#[allow(missing_debug_implementations)] // holds a private key; `Credentials` prints the e-mail
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key: String,
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".to_owned()
}

impl ServiceAccount {
    /// Parses a service-account JSON key file.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let sa: Self =
            serde_json::from_str(json).map_err(|e| format!("service-account JSON: {e}"))?;
        signing_key(&sa.private_key)?;
        check_endpoint("service-account token_uri", &sa.token_uri).map_err(|e| e.to_string())?;
        Ok(sa)
    }
}

/// The RS256 key of a PEM private key (PKCS#8, as Google issues them, or PKCS#1).
fn signing_key(pem: &str) -> Result<jsonwebtoken::EncodingKey, String> {
    use rsa::pkcs1::{DecodeRsaPrivateKey as _, EncodeRsaPrivateKey as _};
    use rsa::pkcs8::DecodePrivateKey as _;
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|e| format!("service-account private_key: {e}"))?;
    let der = key
        .to_pkcs1_der()
        .map_err(|e| format!("service-account private_key: {e}"))?;
    Ok(jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes()))
}

/// Settings of the Vision client.
#[derive(Debug, Clone)]
pub struct VisionConfig {
    pub credentials: Credentials,
    /// `images:annotate` URL (https, or http on loopback).
    pub endpoint: String,
    /// Bound on each call (connect, request, whole answer).
    pub timeout: Duration,
    /// Attempts per image within one call (at least 1).
    pub attempts: u32,
    /// First backoff between attempts; doubled each time.
    pub backoff: Duration,
}

impl VisionConfig {
    pub fn new(credentials: Credentials) -> Self {
        Self {
            credentials,
            endpoint: VISION_ENDPOINT.to_owned(),
            timeout: Duration::from_secs(10),
            attempts: 3,
            backoff: Duration::from_millis(500),
        }
    }
}

/// The Cloud Vision v1 client.
#[derive(Debug)]
pub struct Vision {
    cfg: VisionConfig,
    endpoint: Url,
    http: HttpClient,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

#[derive(Deserialize)]
struct Annotate {
    responses: Vec<AnnotateOne>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnnotateOne {
    #[serde(default)]
    label_annotations: Option<Vec<LabelAnnotation>>,
    #[serde(default)]
    error: Option<Status>,
}

#[derive(Deserialize)]
struct LabelAnnotation {
    description: String,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: Status,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// gRPC codes that may pass (RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED,
/// ABORTED).
fn transient_code(code: i64) -> bool {
    matches!(code, 4 | 8 | 10 | 13 | 14)
}

fn excerpt(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
}

/// The labels of one `images:annotate` answer, or why it is unusable.
pub fn parse_answer(body: &[u8]) -> Result<Vec<String>, LabelError> {
    let answer: Annotate = serde_json::from_slice(body)
        .map_err(|e| LabelError::Malformed(format!("{e}: {}", excerpt(body))))?;
    let [one] = <[AnnotateOne; 1]>::try_from(answer.responses)
        .map_err(|v| LabelError::Malformed(format!("{} responses for one image", v.len())))?;
    if let Some(err) = one.error {
        let what = format!("code {}: {}", err.code, err.message);
        return Err(if transient_code(err.code) {
            LabelError::Unavailable(what)
        } else {
            LabelError::Refused(what)
        });
    }
    let mut labels = Vec::new();
    for l in one.label_annotations.unwrap_or_default() {
        let d = l.description.trim();
        if d.is_empty() || d.chars().count() > MAX_LABEL_CHARS || d.chars().any(char::is_control) {
            return Err(LabelError::Malformed(format!(
                "label {:?}",
                excerpt(d.as_bytes())
            )));
        }
        if labels.len() < MAX_LABELS {
            labels.push(d.to_owned());
        }
    }
    Ok(labels)
}

impl Vision {
    pub fn new(cfg: VisionConfig) -> Result<Self, String> {
        let endpoint =
            check_endpoint("Vision endpoint", &cfg.endpoint).map_err(|e| e.to_string())?;
        let http = HttpClient::new(cfg.timeout).map_err(|e| e.to_string())?;
        Ok(Self {
            cfg,
            endpoint,
            http,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// A bearer token for the service account (cached).
    async fn access_token(&self, sa: &ServiceAccount) -> Result<String, LabelError> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let now = jsonwebtoken::get_current_timestamp();
        let claims = serde_json::json!({
            "iss": sa.client_email,
            "scope": VISION_SCOPE,
            "aud": sa.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let key = signing_key(&sa.private_key).map_err(LabelError::Refused)?;
        let assertion = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &key,
        )
        .map_err(|e| LabelError::Refused(format!("signing the token request: {e}")))?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer")
            .append_pair("assertion", &assertion)
            .finish();
        let req = Request::builder()
            .method(Method::POST)
            .uri(sa.token_uri.as_str())
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| LabelError::Refused(format!("token request: {e}")))?;
        let answer = self
            .http
            .send(req, MAX_ANSWER)
            .await
            .map_err(|e| LabelError::Unavailable(format!("token endpoint: {e}")))?;
        if !answer.status.is_success() {
            let what = format!(
                "token endpoint: HTTP {}: {}",
                answer.status,
                excerpt(&answer.body)
            );
            return Err(
                if answer.status.is_server_error() || answer.status == StatusCode::TOO_MANY_REQUESTS
                {
                    LabelError::Unavailable(what)
                } else {
                    LabelError::Refused(what)
                },
            );
        }
        let t: TokenAnswer = serde_json::from_slice(&answer.body)
            .map_err(|e| LabelError::Malformed(format!("token answer: {e}")))?;
        if t.access_token.is_empty() || t.access_token.len() > 4096 {
            return Err(LabelError::Malformed(
                "token answer: unusable access_token".into(),
            ));
        }
        let life = Duration::from_secs(t.expires_in.unwrap_or(3600).clamp(60, 24 * 3600));
        *cached = Some((
            t.access_token.clone(),
            Instant::now() + life.saturating_sub(Duration::from_secs(60)),
        ));
        Ok(t.access_token)
    }

    /// One `images:annotate` call.
    async fn annotate_once(
        &self,
        body: &Bytes,
    ) -> (Result<Vec<String>, LabelError>, Option<Duration>) {
        let mut url = self.endpoint.clone();
        let mut req = Request::builder()
            .method(Method::POST)
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/json");
        match &self.cfg.credentials {
            Credentials::ApiKey(key) => {
                url.query_pairs_mut().append_pair("key", key);
            }
            Credentials::ServiceAccount(sa) => match self.access_token(sa).await {
                Ok(token) => req = req.header(header::AUTHORIZATION, format!("Bearer {token}")),
                Err(e) => return (Err(e), None),
            },
        }
        let req = match req.uri(url.as_str()).body(Full::new(body.clone())) {
            Ok(r) => r,
            Err(e) => return (Err(LabelError::Refused(e.to_string())), None),
        };
        let answer: Answer = match self.http.send(req, MAX_ANSWER).await {
            Ok(a) => a,
            Err(e) => return (Err(LabelError::Unavailable(e)), None),
        };
        if answer.status.is_success() {
            return (parse_answer(&answer.body), None);
        }
        let message = serde_json::from_slice::<ErrorBody>(&answer.body)
            .map(|e| format!("{} (code {})", e.error.message, e.error.code))
            .unwrap_or_else(|_| excerpt(&answer.body));
        let what = format!("HTTP {}: {message}", answer.status);
        if answer.status == StatusCode::UNAUTHORIZED {
            // A revoked or expired token: the next attempt signs a fresh one.
            *self.token.lock().await = None;
        }
        if answer.status == StatusCode::TOO_MANY_REQUESTS || answer.status.is_server_error() {
            (Err(LabelError::Unavailable(what)), answer.retry_after)
        } else {
            (Err(LabelError::Refused(what)), None)
        }
    }
}

#[async_trait::async_trait]
impl Labeler for Vision {
    async fn labels(&self, image: Bytes) -> Result<Vec<String>, LabelError> {
        if image.len() > MAX_IMAGE {
            return Err(LabelError::Refused(format!(
                "image of {} bytes",
                image.len()
            )));
        }
        let content = base64::engine::general_purpose::STANDARD.encode(&image);
        let body = serde_json::json!({
            "requests": [{
                "image": {"content": content},
                "features": [{"type": "LABEL_DETECTION", "maxResults": MAX_RESULTS}],
            }]
        });
        let body = Bytes::from(body.to_string());
        let mut backoff = self.cfg.backoff;
        let mut attempt = 1;
        loop {
            let (result, retry_after) = self.annotate_once(&body).await;
            match result {
                Err(LabelError::Unavailable(e)) if attempt < self.cfg.attempts.max(1) => {
                    let wait = match retry_after {
                        Some(w) if w > MAX_RETRY_AFTER => return Err(LabelError::Unavailable(e)),
                        Some(w) => w.max(backoff),
                        None => backoff,
                    };
                    tracing::debug!(error = %e, attempt, ?wait, "vision: retrying");
                    tokio::time::sleep(wait).await;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed_or_refused() {
        let ok = br#"{"responses":[{"labelAnnotations":[
            {"mid":"/m/01bqvp","description":"Sky","score":0.97},
            {"description":"Cloud","score":0.9},{"description":"Golden retriever"},
            {"description":"a"},{"description":"b"},{"description":"c"}]}]}"#;
        assert_eq!(
            parse_answer(ok).unwrap(),
            vec!["Sky", "Cloud", "Golden retriever", "a", "b"]
        );
        assert_eq!(
            parse_answer(br#"{"responses":[{}]}"#).unwrap(),
            Vec::<String>::new()
        );
        for bad in [
            &br#"not json"#[..],
            br#"{"responses":[]}"#,
            br#"{"responses":[{},{}]}"#,
            br#"{"responses":[{"labelAnnotations":[{"description":7}]}]}"#,
            br#"{"responses":[{"labelAnnotations":[{"description":""}]}]}"#,
            br#"{"responses":[{"labelAnnotations":[{"description":"a\u0000b"}]}]}"#,
        ] {
            assert!(
                matches!(parse_answer(bad), Err(LabelError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(
            r#"{{"responses":[{{"labelAnnotations":[{{"description":"{}"}}]}}]}}"#,
            "x".repeat(101)
        );
        assert!(matches!(
            parse_answer(long.as_bytes()),
            Err(LabelError::Malformed(_))
        ));
        assert!(matches!(
            parse_answer(br#"{"responses":[{"error":{"code":8,"message":"quota"}}]}"#),
            Err(LabelError::Unavailable(_))
        ));
        assert!(matches!(
            parse_answer(br#"{"responses":[{"error":{"code":3,"message":"bad image"}}]}"#),
            Err(LabelError::Refused(_))
        ));
    }
}
