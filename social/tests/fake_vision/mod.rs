//! A local stand-in for Google Cloud Vision v1 (`POST /v1/images:annotate`, Vision's JSON) and
//! Google's OAuth2 token endpoint (`POST /token`, the JWT bearer grant, the assertion's RS256
//! signature checked with the service account's public key). What it answers is set per test.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use warp::Filter;
use warp::http::StatusCode;

/// What `images:annotate` answers next.
#[derive(Debug, Clone)]
pub enum Mode {
    /// 200 with these labels (descriptions, score descending).
    Labels(Vec<String>),
    /// This status and body (a Vision error document or anything).
    Status(u16, String, Option<u64>),
    /// Waits this long, then answers the labels.
    Slow(Duration, Vec<String>),
    /// 200 with this body.
    Raw(String),
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    /// Modes used first, one per call, before `mode`.
    queue: Vec<Mode>,
    calls: usize,
    token_calls: usize,
    last_request: Option<Value>,
    last_auth: Option<String>,
    last_query: Option<String>,
    public_der: Option<Vec<u8>>,
    tokens: Vec<String>,
}

/// The running fake.
#[derive(Debug)]
pub struct FakeVision {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for FakeVision {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

fn labels_body(labels: &[String]) -> String {
    let list: Vec<Value> = labels
        .iter()
        .enumerate()
        .map(|(i, d)| json!({"mid": format!("/m/{i}"), "description": d, "score": 0.99 - 0.01 * i as f64, "topicality": 0.9}))
        .collect();
    json!({"responses": [{"labelAnnotations": list}]}).to_string()
}

impl FakeVision {
    pub async fn start(mode: Mode) -> FakeVision {
        Self::start_on(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            mode,
        )
        .await
    }

    pub async fn start_on(listener: tokio::net::TcpListener, mode: Mode) -> FakeVision {
        let base = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner {
            mode,
            queue: Vec::new(),
            calls: 0,
            token_calls: 0,
            last_request: None,
            last_auth: None,
            last_query: None,
            public_der: None,
            tokens: Vec::new(),
        }));
        let st = Arc::clone(&inner);
        let annotate = warp::post()
            .and(warp::path!("v1" / "images:annotate"))
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .then(move |query: String, auth: Option<String>, body: Bytes| {
                let st = Arc::clone(&st);
                async move {
                    let mode = {
                        let mut g = st.lock().unwrap();
                        g.calls += 1;
                        g.last_request = serde_json::from_slice(&body).ok();
                        g.last_auth = auth.clone();
                        g.last_query = Some(query);
                        // With a service account, only a token this fake issued is accepted.
                        let bad_token = g.public_der.is_some()
                            && !auth
                                .as_deref()
                                .and_then(|a| a.strip_prefix("Bearer "))
                                .is_some_and(|t| g.tokens.iter().any(|k| k == t));
                        if bad_token {
                            Mode::Status(401, r#"{"error":{"code":401,"message":"bad token","status":"UNAUTHENTICATED"}}"#.into(), None)
                        } else if g.queue.is_empty() {
                            g.mode.clone()
                        } else {
                            g.queue.remove(0)
                        }
                    };
                    let (status, body, retry) = match mode {
                        Mode::Labels(l) => (200, labels_body(&l), None),
                        Mode::Status(s, b, r) => (s, b, r),
                        Mode::Slow(d, l) => {
                            tokio::time::sleep(d).await;
                            (200, labels_body(&l), None)
                        }
                        Mode::Raw(b) => (200, b, None),
                    };
                    let mut res = warp::http::Response::builder()
                        .status(StatusCode::from_u16(status).unwrap())
                        .header("content-type", "application/json");
                    if let Some(r) = retry {
                        res = res.header("retry-after", r.to_string());
                    }
                    res.body(body).unwrap()
                }
            });
        let st = Arc::clone(&inner);
        let token_base = base.clone();
        let token = warp::post()
            .and(warp::path!("token"))
            .and(warp::body::form::<std::collections::HashMap<String, String>>())
            .map(move |form: std::collections::HashMap<String, String>| {
                let mut g = st.lock().unwrap();
                g.token_calls += 1;
                let ok = form.get("grant_type").map(String::as_str)
                    == Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
                    && g.public_der.as_deref().is_some_and(|der| {
                        let key = jsonwebtoken::DecodingKey::from_rsa_der(der);
                        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
                        v.set_audience(&[format!("{token_base}/token")]);
                        v.set_issuer(&["tagger@example.iam.gserviceaccount.com"]);
                        form.get("assertion").is_some_and(|a| {
                            jsonwebtoken::decode::<Value>(a, &key, &v).is_ok_and(|d| {
                                d.claims["scope"] == "https://www.googleapis.com/auth/cloud-vision"
                            })
                        })
                    });
                if !ok {
                    return warp::http::Response::builder()
                        .status(400)
                        .body(r#"{"error":"invalid_grant"}"#.to_owned())
                        .unwrap();
                }
                let t = format!("tok-{}", g.token_calls);
                g.tokens.push(t.clone());
                warp::http::Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(
                        json!({"access_token": t, "expires_in": 3600, "token_type": "Bearer"})
                            .to_string(),
                    )
                    .unwrap()
            });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(annotate.or(token))
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run(),
        );
        FakeVision {
            base,
            inner,
            shutdown: Some(tx),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("{}/v1/images:annotate", self.base)
    }

    pub fn set(&self, mode: Mode) {
        self.inner.lock().unwrap().mode = mode;
    }

    pub fn then(&self, modes: Vec<Mode>) {
        self.inner.lock().unwrap().queue = modes;
    }

    pub fn calls(&self) -> usize {
        self.inner.lock().unwrap().calls
    }

    pub fn token_calls(&self) -> usize {
        self.inner.lock().unwrap().token_calls
    }

    pub fn last_request(&self) -> Option<Value> {
        self.inner.lock().unwrap().last_request.clone()
    }

    pub fn last_query(&self) -> Option<String> {
        self.inner.lock().unwrap().last_query.clone()
    }

    pub fn last_auth(&self) -> Option<String> {
        self.inner.lock().unwrap().last_auth.clone()
    }

    /// Requires bearer tokens from `/token`, whose assertions must verify with `public_der`
    /// (PKCS#1).
    pub fn require_service_account(&self, public_der: &[u8]) {
        self.inner.lock().unwrap().public_der = Some(public_der.to_vec());
    }
}

/// A service account: its JSON key file (token_uri on the fake) and its public key (PKCS#1 DER).
pub fn service_account(base: &str) -> (String, Vec<u8>) {
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let pem = private.to_pkcs8_pem(LineEnding::LF).unwrap().to_string();
    let public = private
        .to_public_key()
        .to_pkcs1_der()
        .unwrap()
        .as_bytes()
        .to_vec();
    let json = json!({
        "type": "service_account",
        "project_id": "instar-test",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "tagger@example.iam.gserviceaccount.com",
        "token_uri": format!("{base}/token"),
    })
    .to_string();
    (json, public)
}
