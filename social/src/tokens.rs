//! JWTs for REST and STOMP: HMAC-signed, `sub` = user id, `role`, `iat`, `exp`, and `ver`, the
//! user's token version when it was signed (a token whose `ver` is below the user's current one
//! is revoked, see [`crate::revocation`]; a token without `ver`, signed before versions existed,
//! counts as version 0).
//!
//! The gateway verifies the same tokens with its own small verifier (gateway/src/auth.rs); this side
//! signs them and verifies REST calls. The algorithm follows the secret's length as the original's
//! jjwt did (HS512 from 64 bytes, HS384 from 48, else HS256), and verification accepts only that
//! algorithm, with no clock skew.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};

/// Token lifetime (the original's: one hour).
pub const DEFAULT_TTL_SECS: i64 = 3600;
/// Verified tokens remembered (each about 300 bytes): a client sends the same token on every
/// request, so its signature and claims are checked once, not per request.
pub const VERIFIED_CACHE: usize = 10_000;

/// Claims we sign and read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// `USER` or `ADMIN` (informational; authorisation reads the database).
    pub role: String,
    /// Issued at, seconds.
    pub iat: i64,
    /// Expiry, seconds.
    pub exp: i64,
    /// The user's token version at signing (0 when absent: tokens from before versions).
    #[serde(default)]
    pub ver: u64,
}

/// Signs and verifies tokens.
#[derive(Clone)]
pub struct Tokens {
    alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: i64,
    /// Tokens whose signature and claims were verified, by their exact text. Only tokens signed
    /// with this secret get in, and each hit checks the expiry again.
    verified: Arc<Cache<String, Arc<Claims>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("alg", &self.alg)
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The secret is shorter than 32 bytes (HS256's minimum, as jjwt enforced).
    #[error("the JWT secret must be at least 32 bytes")]
    WeakSecret,
    /// Bad, expired or foreign token.
    #[error("invalid token: {0}")]
    Invalid(String),
}

impl Tokens {
    /// Tokens signed with `secret`, valid for `ttl_secs`.
    pub fn new(secret: &[u8], ttl_secs: i64) -> Result<Tokens, TokenError> {
        let alg = match secret.len() {
            n if n >= 64 => Algorithm::HS512,
            n if n >= 48 => Algorithm::HS384,
            n if n >= 32 => Algorithm::HS256,
            _ => return Err(TokenError::WeakSecret),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Tokens {
            alg,
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
            verified: Arc::new(Cache::new(VERIFIED_CACHE)),
        })
    }

    /// The signing algorithm chosen for the secret.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// A token for `user` issued now, at token version 0 (a user who never revoked tokens).
    pub fn issue(&self, user: &str, role: &str) -> Result<String, TokenError> {
        self.issue_version(user, role, 0)
    }

    /// A token for `user` issued now, carrying `version` (the user row's `token_version`).
    pub fn issue_version(
        &self,
        user: &str,
        role: &str,
        version: u64,
    ) -> Result<String, TokenError> {
        let iat = crate::time::now_micros() / 1_000_000;
        self.issue_full(user, role, iat, version)
    }

    /// A token for `user` issued at `iat` (seconds), version 0.
    pub fn issue_at(&self, user: &str, role: &str, iat: i64) -> Result<String, TokenError> {
        self.issue_full(user, role, iat, 0)
    }

    fn issue_full(&self, user: &str, role: &str, iat: i64, ver: u64) -> Result<String, TokenError> {
        let claims = Claims {
            sub: user.to_owned(),
            role: role.to_owned(),
            iat,
            exp: iat + self.ttl_secs,
            ver,
        };
        let mut header = Header::new(self.alg);
        header.typ = None;
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        self.verify_at(token, crate::time::now_micros() / 1_000_000)
    }

    /// [`Tokens::verify`] at `now` (seconds): a token is valid up to and including its `exp`
    /// second, as jsonwebtoken's check with no leeway has it.
    fn verify_at(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > 4096 {
            return Err(TokenError::Invalid("token too long".into()));
        }
        if let Some(claims) = self.verified.get(token) {
            if claims.exp >= now {
                return Ok(Claims::clone(&claims));
            }
            self.verified.remove(token);
            return Err(TokenError::Invalid("ExpiredSignature".into()));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        if claims.exp >= now {
            self.verified
                .insert(token.to_owned(), Arc::new(claims.clone()));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn round_trip_and_algorithm_by_secret_length() {
        let t = Tokens::new(SECRET, 3600).unwrap();
        assert_eq!(t.algorithm(), Algorithm::HS256);
        let token = t.issue("alice01", "USER").unwrap();
        let claims = t.verify(&token).unwrap();
        assert_eq!(claims.sub, "alice01");
        assert_eq!(claims.exp - claims.iat, 3600);
        assert_eq!(
            Tokens::new(&[7u8; 64], 1).unwrap().algorithm(),
            Algorithm::HS512
        );
        assert_eq!(
            Tokens::new(&[7u8; 48], 1).unwrap().algorithm(),
            Algorithm::HS384
        );
        assert!(Tokens::new(b"short", 1).is_err());
    }

    #[test]
    fn expired_foreign_and_tampered_tokens_are_refused() {
        let t = Tokens::new(SECRET, 3600).unwrap();
        let old = t.issue_at("alice01", "USER", 1_000).unwrap();
        assert!(t.verify(&old).is_err());
        let other = Tokens::new(b"another-secret-another-secret-xx", 3600).unwrap();
        assert!(t.verify(&other.issue("alice01", "USER").unwrap()).is_err());
        let mut token = t.issue("alice01", "USER").unwrap();
        token.push('x');
        assert!(t.verify(&token).is_err());
    }

    #[test]
    fn a_remembered_token_still_expires_and_others_are_still_checked() {
        let t = Tokens::new(SECRET, 60).unwrap();
        let now = crate::time::now_micros() / 1_000_000;
        let token = t.issue_at("alice01", "USER", now).unwrap();
        assert_eq!(t.verify_at(&token, now).unwrap().sub, "alice01");
        assert!(t.verified.get(token.as_str()).is_some());
        // Remembered, it is valid through its exp second and refused after it, then forgotten.
        assert_eq!(t.verify_at(&token, now + 60).unwrap().sub, "alice01");
        assert!(t.verify_at(&token, now + 61).is_err());
        assert!(t.verified.get(token.as_str()).is_none());
        // A remembered token vouches for nothing else: not a tampered text, not another secret.
        let mut tampered = token.clone();
        tampered.pop();
        assert!(t.verify_at(&tampered, now).is_err());
        assert!(t.verified.get(tampered.as_str()).is_none());
        assert!(t.verify_at(&token, now).is_ok());
        let other = Tokens::new(b"another-secret-another-secret-xx", 60).unwrap();
        assert!(other.verify_at(&token, now).is_err());
        // Expired tokens are not remembered.
        let old = t.issue_at("alice01", "USER", 1_000).unwrap();
        assert!(t.verify_at(&old, now).is_err());
        assert!(t.verified.get(old.as_str()).is_none());
    }

    /// The gateway verifies what we sign (same fixed token on both sides).
    #[test]
    fn fixed_token_matches_the_gateways_test_vector() {
        let t = Tokens::new(SECRET, 3600).unwrap();
        let token = t.issue_at("alice01", "USER", 1_700_000_000).unwrap();
        let mut parts = token.split('.');
        assert_eq!(parts.next(), Some("eyJhbGciOiJIUzI1NiJ9"));
    }
}
