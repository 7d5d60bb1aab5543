//! Bearer tokens checked on CONNECT.
//!
//! The original backend issues HMAC-signed JWTs (`sub` = user id, `role`, `iat`, `exp`; one hour). We
//! verify exactly that shape, and nothing more: only the HS256/384/512 algorithms, with the secret from
//! configuration. The `alg` of the token header must be one of the algorithms the verifier was
//! configured to accept, so a token can never pick its own algorithm (no `none`, no RSA/HMAC confusion).
//!
//! A small hand-written verifier instead of a general JWT crate: we need one family of algorithms, and
//! the general crates bring RSA and elliptic-curve code we would compile and never run. The token format
//! (claims below) is the one wire type the gateway shares with the social service, which signs tokens;
//! each side keeps its own code for its half (verify here, sign there), with tests on both sides against
//! the same fixed token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Sha256, Sha384, Sha512};

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
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "HS256" => Some(Self::Hs256),
            "HS384" => Some(Self::Hs384),
            "HS512" => Some(Self::Hs512),
            _ => None,
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

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: &'a str,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<serde_json::Value>,
    role: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
}

/// Checks tokens against one secret.
#[derive(Clone)]
pub struct Verifier {
    secret: Vec<u8>,
    accepted: Vec<Algorithm>,
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
        Self {
            secret: secret.into(),
            accepted: vec![Algorithm::Hs256, Algorithm::Hs384, Algorithm::Hs512],
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
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header_json = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| TokenError::Malformed)?;
        let header: Header<'_> =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
        let alg = Algorithm::from_name(header.alg)
            .filter(|a| self.accepted.contains(a))
            .ok_or(TokenError::Algorithm)?;
        let signature = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        let signed = &token[..h.len() + 1 + p.len()];
        if !self.check(alg, signed.as_bytes(), &signature) {
            return Err(TokenError::Signature);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
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
        })
    }

    fn check(&self, alg: Algorithm, data: &[u8], signature: &[u8]) -> bool {
        match alg {
            Algorithm::Hs256 => verify::<Hmac<Sha256>>(&self.secret, data, signature),
            Algorithm::Hs384 => verify::<Hmac<Sha384>>(&self.secret, data, signature),
            Algorithm::Hs512 => verify::<Hmac<Sha512>>(&self.secret, data, signature),
        }
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
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{}","typ":"JWT"}}"#, alg.name()));
        let mut claims = serde_json::json!({ "sub": sub, "iat": iat, "exp": exp });
        if let (Some(role), Some(obj)) = (role, claims.as_object_mut()) {
            obj.insert("role".into(), role.into());
        }
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signed = format!("{header}.{payload}");
        let sig = match alg {
            Algorithm::Hs256 => mac::<Hmac<Sha256>>(&self.secret, signed.as_bytes()),
            Algorithm::Hs384 => mac::<Hmac<Sha384>>(&self.secret, signed.as_bytes()),
            Algorithm::Hs512 => mac::<Hmac<Sha512>>(&self.secret, signed.as_bytes()),
        };
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
    }
}

/// Checks an HMAC in constant time (`verify_slice`).
fn verify<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8], signature: &[u8]) -> bool {
    match <M as hmac::digest::KeyInit>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.verify_slice(signature).is_ok()
        }
        Err(_) => false,
    }
}

fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
    match <M as hmac::digest::KeyInit>::new_from_slice(key) {
        Ok(mut m) => {
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        // HMAC accepts keys of any length.
        Err(_) => Vec::new(),
    }
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

    #[test]
    fn numeric_subject_accepted() {
        let v = Verifier::new("k");
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256"}"#);
        let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":42,"exp":{}}}"#, NOW + 5));
        let signed = format!("{header}.{payload}");
        let sig = URL_SAFE_NO_PAD.encode(mac::<Hmac<Sha256>>(b"k", signed.as_bytes()));
        assert_eq!(
            v.verify(&format!("{signed}.{sig}"), NOW).unwrap().user,
            "42"
        );
    }
}
