//! Password hashing: argon2id (the original used bcrypt; §7 asks for argon2id).
//!
//! Hashing runs on the blocking pool so a burst of sign-ins cannot stall the async workers, at most
//! one hash per core at a time with a short queue; beyond it requests are refused at once
//! ([`PasswordError::Busy`]), so concurrent sign-ins cannot take memory without bound.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Longest password accepted (hashing cost must not be client-controlled).
pub const MAX_PASSWORD_BYTES: usize = 256;

fn hasher() -> Argon2<'static> {
    // OWASP's argon2id baseline: 19 MiB, 2 iterations, 1 lane.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Why a password could not be hashed or checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// Every hashing slot is busy and the queue is full: refused at once (HTTP 503), so a burst
    /// of sign-ins costs at most [`slots`] × 19 MiB and a short wait, never unbounded memory.
    #[error("password hashing is saturated")]
    Busy,
    /// The hasher failed (never for valid input).
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// Bounds concurrent argon2 work: one slot per core, and at most [`QUEUE_PER_SLOT`] waiters per
/// slot (each hash takes ~19 MiB and tens of milliseconds of a core).
struct Slots {
    sem: tokio::sync::Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// Waiters allowed per hashing slot before new requests are refused.
pub const QUEUE_PER_SLOT: usize = 4;

static SLOTS: LazyLock<Slots> = LazyLock::new(|| {
    let n = slots();
    Slots {
        sem: tokio::sync::Semaphore::new(n),
        waiting: AtomicUsize::new(0),
        max_waiting: n * QUEUE_PER_SLOT,
    }
});

/// Hashes run to completion (hash and verify).
static RUN: AtomicU64 = AtomicU64::new(0);
/// Requests refused because hashing was saturated.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Concurrent hashes allowed: the machine's cores.
#[must_use]
pub fn slots() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
}

/// `(hashes run, requests refused as busy)` since the process started (for `/metrics`).
#[must_use]
pub fn stats() -> (u64, u64) {
    (RUN.load(Ordering::Relaxed), REFUSED.load(Ordering::Relaxed))
}

/// Runs `work` on the blocking pool once a hashing slot is free, or refuses at once when the
/// queue for slots is full.
async fn bounded<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PasswordError> {
    let slots = &*SLOTS;
    let permit = match slots.sem.try_acquire() {
        Ok(p) => p,
        Err(_) => {
            if slots.waiting.fetch_add(1, Ordering::AcqRel) >= slots.max_waiting {
                slots.waiting.fetch_sub(1, Ordering::AcqRel);
                REFUSED.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("password hashing saturated; request refused");
                return Err(PasswordError::Busy);
            }
            let p = slots.sem.acquire().await;
            slots.waiting.fetch_sub(1, Ordering::AcqRel);
            p.map_err(|e| PasswordError::Failed(e.to_string()))?
        }
    };
    let out = tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PasswordError::Failed(e.to_string()));
    drop(permit);
    RUN.fetch_add(1, Ordering::Relaxed);
    out
}

/// Hashes `password` as a PHC string (`$argon2id$…`).
///
/// # Errors
/// [`PasswordError::Busy`] when hashing is saturated.
pub async fn hash(password: String) -> Result<String, PasswordError> {
    bounded(move || {
        let mut salt = [0u8; 16];
        rand::fill(&mut salt);
        let salt =
            SaltString::encode_b64(&salt).map_err(|e| PasswordError::Failed(e.to_string()))?;
        hasher()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PasswordError::Failed(e.to_string()))
    })
    .await?
}

/// Whether `password` matches the stored PHC `hash`. Malformed hashes never match.
///
/// # Errors
/// [`PasswordError::Busy`] when hashing is saturated (nothing was checked).
pub async fn verify(password: String, hash: String) -> Result<bool, PasswordError> {
    bounded(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                hasher()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2id_round_trip() {
        let h = hash("correct horse".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify("correct horse".into(), h.clone()).await.unwrap());
        assert!(!verify("wrong".into(), h).await.unwrap());
        assert!(!verify("x".into(), "not a hash".into()).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_beyond_the_queue_is_refused_at_once() {
        let h = hash("pw".into()).await.unwrap();
        let burst = slots() * (QUEUE_PER_SLOT + 1) + 8;
        let tasks: Vec<_> = (0..burst)
            .map(|_| tokio::spawn(verify("nope".into(), h.clone())))
            .collect();
        let mut busy = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(ok) => assert!(!ok),
                Err(PasswordError::Busy) => busy += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(busy >= 8, "{busy} of {burst} refused");
        // Afterwards there is room again.
        assert!(verify("pw".into(), h).await.unwrap());
    }
}
