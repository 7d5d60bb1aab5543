//! HS256 bearer tokens, signed here so the harness needs nothing but the server's secret.
//!
//! The gateway accepts `{"sub", "iat", "exp"}` claims signed with HMAC-SHA256 (see
//! `gateway/src/auth.rs`); the social service's REST API also wants `role` (`USER`), so every token
//! carries it. This is the signing half, a dozen lines. (The social service signs with HS256 when
//! its secret is 32 to 63 bytes long.)

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// `base64url({"alg":"HS256","typ":"JWT"})`, the same for every token.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Signs a token for `sub`, issued at `iat` and expiring at `exp` (seconds since the Unix epoch).
pub fn sign_hs256(secret: &[u8], sub: &str, iat: u64, exp: u64) -> String {
    let claims = serde_json::json!({ "sub": sub, "role": "USER", "iat": iat, "exp": exp });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{HEADER}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(hmac_sha256(secret, signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

/// HMAC-SHA256 of `data` under `secret`.
pub fn hmac_sha256(secret: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
