//! Token signing: structure, claims, and a fixed vector computed independently (Python's `hmac`).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use loadtest::jwt::{hmac_sha256, sign_hs256};

#[test]
fn matches_an_independently_computed_token() {
    // Claims {"exp":1700003600,"iat":1700000000,"role":"USER","sub":"alice"}.
    let expected = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
eyJleHAiOjE3MDAwMDM2MDAsImlhdCI6MTcwMDAwMDAwMCwicm9sZSI6IlVTRVIiLCJzdWIiOiJhbGljZSJ9.\
VM5Wq9dpPii_97zYNYsYMs_j8uSz0h1lH8NXpWpiviI";
    assert_eq!(
        sign_hs256(b"bench", "alice", 1_700_000_000, 1_700_003_600),
        expected
    );
}

#[test]
fn has_three_parts_with_the_expected_header_and_claims() {
    let token = sign_hs256(b"s3cret", "bench-sub-42", 10, 3610);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "{token}");
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(parts[0])
            .expect("header is base64url"),
    )
    .expect("header JSON");
    assert_eq!(header, serde_json::json!({"alg": "HS256", "typ": "JWT"}));
    let claims: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(parts[1])
            .expect("claims are base64url"),
    )
    .expect("claims JSON");
    assert_eq!(
        claims,
        serde_json::json!({"sub": "bench-sub-42", "role": "USER", "iat": 10, "exp": 3610})
    );
    let signature = URL_SAFE_NO_PAD
        .decode(parts[2])
        .expect("signature is base64url");
    assert_eq!(signature.len(), 32);
    assert_eq!(
        signature,
        hmac_sha256(b"s3cret", format!("{}.{}", parts[0], parts[1]).as_bytes())
    );
}

#[test]
fn a_different_secret_gives_a_different_signature() {
    let a = sign_hs256(b"one", "u", 1, 2);
    let b = sign_hs256(b"two", "u", 1, 2);
    assert_eq!(
        a.rsplit_once('.').map(|p| p.0),
        b.rsplit_once('.').map(|p| p.0)
    );
    assert_ne!(a, b);
}

#[test]
fn hmac_matches_rfc_4231_case_2() {
    let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
    let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}
