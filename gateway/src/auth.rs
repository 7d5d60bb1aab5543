//! Bearer tokens checked on CONNECT.
//!
//! The original backend issues HMAC-signed JWTs (`sub` = user id, `role`, `iat`, `exp`; one hour; and
//! ours `ver`, the token version, read into [`Principal::version`]). We
//! verify exactly that shape, and nothing more: only the HS256/384/512 algorithms, with the secret from
//! configuration. The `alg` of the token header must be one of the algorithms the verifier was
//! configured to accept, so a token can never pick its own algorithm (no `none`, no RSA/HMAC confusion).
//!
//! Signatures are checked by `jsonwebtoken` (the crate the social service signs with), given an HMAC
//! key and only the HMAC algorithms: it refuses any other `alg` before looking at the signature, and
//! compares MACs in constant time. The time claims (`exp`, `nbf`) are checked here against the
//! caller's clock, so a session can re-check its token's expiry at any instant it chooses. This is
//! the gateway's one verification path: STOMP CONNECT over every transport (WebSocket, SockJS, TCP)
//! goes through [`Verifier::verify`] or [`Verifier::verify_bearer`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, EncodingKey, Validation};
use serde::Deserialize;

/// Largest token we look at; longer ones are refused before decoding.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// Which HMAC the token is signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Hs256,
    Hs384,
    Hs512,
}

impl Algorithm {
    fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::Hs256 => jsonwebtoken::Algorithm::HS256,
            Self::Hs384 => jsonwebtoken::Algorithm::HS384,
            Self::Hs512 => jsonwebtoken::Algorithm::HS512,
        }
    }

    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Hs384 => "HS384",
            Self::Hs512 => "HS512",
        }
    }
}

/// The verified identity of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user id (`sub`).
    pub user: String,
    /// The `role` claim, when present.
    pub role: Option<String>,
    /// Expiry, seconds since the Unix epoch. The session is closed when it passes.
    pub expires_at: u64,
    /// The user's token version when the token was signed (`ver`; 0 when absent, a token from
    /// before versions). See [`crate::revocation`].
    pub version: u64,
}

/// Why a token was refused. The text goes into the ERROR frame, so it names the problem without
/// echoing the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token: send 'Authorization: Bearer <token>' (or the token as passcode)")]
    Missing,
    #[error("the Authorization header must start with 'Bearer '")]
    NotBearer,
    #[error("token too long")]
    TooLong,
    #[error("token is not a well-formed JWT")]
    Malformed,
    #[error("token algorithm not accepted")]
    Algorithm,
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token has no subject")]
    NoSubject,
}

/// The header's `alg`, read only to tell an unknown algorithm (`none`, `XS256`) from a malformed
/// token when `jsonwebtoken` refuses a header it cannot represent.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<serde_json::Value>,
    role: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
    ver: Option<u64>,
}

/// Checks tokens against one secret.
#[derive(Clone)]
pub struct Verifier {
    secret: Vec<u8>,
    key: DecodingKey,
    accepted: Vec<Algorithm>,
    /// `jsonwebtoken`'s checks: the accepted algorithms and the signature only (the time claims are
    /// checked in [`Verifier::verify`] against the caller's clock).
    validation: Validation,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    leeway: u64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Verifier")
            .field("accepted", &self.accepted)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier accepting HS256, HS384 and HS512 with `secret`.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self::with_algorithms(
            secret,
            &[Algorithm::Hs256, Algorithm::Hs384, Algorithm::Hs512],
        )
    }

    /// A verifier accepting only `accepted` (all HMAC: the family is pinned by the type).
    pub fn with_algorithms(secret: impl Into<Vec<u8>>, accepted: &[Algorithm]) -> Self {
        let secret = secret.into();
        let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.algorithms = accepted.iter().map(|a| a.jwt()).collect();
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        Self {
            key: DecodingKey::from_secret(&secret),
            secret,
            accepted: accepted.to_vec(),
            validation,
            leeway: 0,
        }
    }

    /// Tolerate this much clock skew.
    pub fn with_leeway(mut self, seconds: u64) -> Self {
        self.leeway = seconds;
        self
    }

    /// Reads the token out of an `Authorization` header value (`Bearer <token>`).
    pub fn verify_bearer(&self, header: &str, now: u64) -> Result<Principal, TokenError> {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(TokenError::NotBearer)?;
        self.verify(token.trim(), now)
    }

    /// Verifies a compact JWT at time `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Principal, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        if token.split('.').count() != 3 {
            return Err(TokenError::Malformed);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| refusal(e.kind(), token))?
            .claims;
        let exp = claims.exp.ok_or(TokenError::Expired)?;
        if now > exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        if let Some(nbf) = claims.nbf
            && now.saturating_add(self.leeway) < nbf
        {
            return Err(TokenError::NotYetValid);
        }
        let user = match claims.sub {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s,
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(TokenError::NoSubject),
        };
        Ok(Principal {
            user,
            role: claims.role,
            expires_at: exp,
            version: claims.ver.unwrap_or(0),
        })
    }

    /// Signs a token; used by tests and the load generator's helpers. The social service has its own
    /// signer for issuing real tokens.
    pub fn sign(
        &self,
        alg: Algorithm,
        sub: &str,
        role: Option<&str>,
        iat: u64,
        exp: u64,
    ) -> String {
        let mut claims = serde_json::json!({ "sub": sub, "iat": iat, "exp": exp });
        if let (Some(role), Some(obj)) = (role, claims.as_object_mut()) {
            obj.insert("role".into(), role.into());
        }
        let header = jsonwebtoken::Header::new(alg.jwt());
        // An HMAC key and an HMAC algorithm: encoding cannot fail.
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&self.secret))
            .unwrap_or_default()
    }
}

/// Maps `jsonwebtoken`'s refusal to ours.
fn refusal(kind: &ErrorKind, token: &str) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
        // A header `jsonwebtoken` cannot parse: an algorithm it does not know (`none`) is still an
        // algorithm refusal, anything else a malformed token.
        ErrorKind::Json(_) if has_alg(token) => TokenError::Algorithm,
        _ => TokenError::Malformed,
    }
}

/// Whether the token's header is JSON with a string `alg`.
fn has_alg(token: &str) -> bool {
    token
        .split('.')
        .next()
        .and_then(|h| URL_SAFE_NO_PAD.decode(h).ok())
        .and_then(|json| serde_json::from_slice::<RawHeader>(&json).ok())
        .is_some_and(|h| !h.alg.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_750_000_000;

    #[test]
    fn round_trip_every_algorithm() {
        let v = Verifier::new("s3cret");
        for alg in [Algorithm::Hs256, Algorithm::Hs384, Algorithm::Hs512] {
            let t = v.sign(alg, "alice01", Some("ROLE_USER"), NOW, NOW + 3600);
            let p = v.verify(&t, NOW).unwrap();
            assert_eq!(p.user, "alice01");
            assert_eq!(p.role.as_deref(), Some("ROLE_USER"));
            assert_eq!(p.expires_at, NOW + 3600);
            assert_eq!(
                v.verify_bearer(&format!("Bearer {t}"), NOW).unwrap().user,
                "alice01"
            );
        }
    }

    #[test]
    fn refusals() {
        let v = Verifier::new("s3cret");
        let t = v.sign(Algorithm::Hs256, "bob", None, NOW, NOW + 10);
        assert_eq!(v.verify(&t, NOW + 11), Err(TokenError::Expired));
        let other = Verifier::new("other").sign(Algorithm::Hs256, "bob", None, NOW, NOW + 10);
        assert_eq!(v.verify(&other, NOW), Err(TokenError::Signature));
        assert_eq!(v.verify("a.b", NOW), Err(TokenError::Malformed));
        assert_eq!(v.verify("", NOW), Err(TokenError::Missing));
        assert_eq!(v.verify_bearer(&t, NOW), Err(TokenError::NotBearer));
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(v.verify(&long, NOW), Err(TokenError::TooLong));
        // alg "none" with an empty signature is refused.
        let none_header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"x","exp":9999999999}"#);
        assert_eq!(
            v.verify(&format!("{none_header}.{payload}."), NOW),
            Err(TokenError::Algorithm)
        );
        // A tampered payload fails the signature.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(r#"{"sub":"admin","exp":9999999999}"#);
        parts[1] = &forged;
        assert_eq!(v.verify(&parts.join("."), NOW), Err(TokenError::Signature));
    }

    /// A token with the given header and claims, signed with HMAC-SHA256 over `key` whatever the
    /// header says.
    fn hs256_signed(key: &[u8], header: &str, claims: &str) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let sig = jsonwebtoken::crypto::sign(
            signed.as_bytes(),
            &EncodingKey::from_secret(key),
            jsonwebtoken::Algorithm::HS256,
        )
        .unwrap();
        format!("{signed}.{sig}")
    }

    #[test]
    fn numeric_subject_accepted() {
        let v = Verifier::new("k");
        let t = hs256_signed(
            b"k",
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"sub":42,"exp":{}}}"#, NOW + 5),
        );
        assert_eq!(v.verify(&t, NOW).unwrap().user, "42");
    }

    #[test]
    fn another_algorithm_is_refused_before_the_signature() {
        let v = Verifier::new("s3cret");
        let claims = format!(r#"{{"sub":"eve","exp":{}}}"#, NOW + 60);
        // Algorithm confusion: an HMAC made with the secret, under an RSA or EC header.
        for alg in ["RS256", "PS256", "ES256", "EdDSA"] {
            let t = hs256_signed(b"s3cret", &format!(r#"{{"alg":"{alg}"}}"#), &claims);
            assert_eq!(v.verify(&t, NOW), Err(TokenError::Algorithm), "{alg}");
        }
        // Unknown names too.
        let t = hs256_signed(b"s3cret", r#"{"alg":"XS256"}"#, &claims);
        assert_eq!(v.verify(&t, NOW), Err(TokenError::Algorithm));
        // A verifier pinned to HS256 refuses a valid HS512 token.
        let pinned = Verifier::with_algorithms("s3cret", &[Algorithm::Hs256]);
        let hs512 = v.sign(Algorithm::Hs512, "eve", None, NOW, NOW + 60);
        assert_eq!(pinned.verify(&hs512, NOW), Err(TokenError::Algorithm));
        let hs256 = v.sign(Algorithm::Hs256, "eve", None, NOW, NOW + 60);
        assert_eq!(pinned.verify(&hs256, NOW).unwrap().user, "eve");
    }

    #[test]
    fn none_tokens_are_refused_signed_or_not() {
        let v = Verifier::new("s3cret");
        let claims = format!(r#"{{"sub":"eve","exp":{}}}"#, NOW + 60);
        for header in [r#"{"alg":"none"}"#, r#"{"alg":"None","typ":"JWT"}"#] {
            let signed = hs256_signed(b"s3cret", header, &claims);
            assert_eq!(v.verify(&signed, NOW), Err(TokenError::Algorithm));
            let (unsigned, _) = signed.rsplit_once('.').unwrap();
            assert_eq!(
                v.verify(&format!("{unsigned}."), NOW),
                Err(TokenError::Algorithm)
            );
        }
        // A header without `alg` is malformed.
        let t = hs256_signed(b"s3cret", r#"{"typ":"JWT"}"#, &claims);
        assert_eq!(v.verify(&t, NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn tampered_signature_is_refused() {
        let v = Verifier::new("s3cret");
        let t = v.sign(Algorithm::Hs384, "bob", None, NOW, NOW + 60);
        let (signed, sig) = t.rsplit_once('.').unwrap();
        let mut sig = sig.as_bytes().to_vec();
        sig[3] = if sig[3] == b'A' { b'B' } else { b'A' };
        let tampered = format!("{signed}.{}", String::from_utf8(sig).unwrap());
        assert_eq!(v.verify(&tampered, NOW), Err(TokenError::Signature));
        // Cut short, or not base64.
        assert_eq!(
            v.verify(&format!("{signed}.AAAA"), NOW),
            Err(TokenError::Signature)
        );
        assert_eq!(
            v.verify(&format!("{signed}.!!"), NOW),
            Err(TokenError::Malformed)
        );
        assert_eq!(v.verify(&format!("{t}.x"), NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn expiry_with_and_without_leeway() {
        let v = Verifier::new("s3cret");
        let t = v.sign(Algorithm::Hs256, "bob", None, NOW - 100, NOW);
        // Valid up to and including its `exp` second.
        assert_eq!(v.verify(&t, NOW).unwrap().expires_at, NOW);
        assert_eq!(v.verify(&t, NOW + 1), Err(TokenError::Expired));
        let lenient = Verifier::new("s3cret").with_leeway(5);
        assert!(lenient.verify(&t, NOW + 5).is_ok());
        assert_eq!(lenient.verify(&t, NOW + 6), Err(TokenError::Expired));
        // No `exp` at all: refused as expired.
        let no_exp = hs256_signed(b"s3cret", r#"{"alg":"HS256"}"#, r#"{"sub":"bob"}"#);
        assert_eq!(v.verify(&no_exp, NOW), Err(TokenError::Expired));
        // `nbf` in the future.
        let later = hs256_signed(
            b"s3cret",
            r#"{"alg":"HS256"}"#,
            &format!(r#"{{"sub":"bob","exp":{},"nbf":{}}}"#, NOW + 60, NOW + 10),
        );
        assert_eq!(v.verify(&later, NOW), Err(TokenError::NotYetValid));
        assert!(v.verify(&later, NOW + 10).is_ok());
    }
}
