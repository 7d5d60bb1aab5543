//! Revoked tokens on the gateway.
//!
//! The social service raises a user's token version when the password changes or the user signs
//! out everywhere, and publishes the new version on [`TOKENS_TOPIC`] (headers [`USER_HEADER`] and
//! [`VERSION_HEADER`]). Every gateway node binds that topic when it starts (a name with `:`, which
//! no STOMP client can subscribe to) and then:
//!
//! * closes each live session of that user whose token carries an older version, with an ERROR
//!   (`token revoked`), at once;
//! * remembers the version as the user's *floor* for [`FLOOR_TTL`] (longer than a token lives),
//!   and refuses a CONNECT whose token is below it.
//!
//! On CONNECT the node also asks its [`TopicPolicy`](crate::destination::TopicPolicy) for the
//! user's current version (the database, when the node has one). The session is entered here
//! *before* that read, so a revocation arriving while the read runs still closes it: no window in
//! which an old token gets in for good.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use broker_bridge::Envelope;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

/// The bus topic carrying raised token versions (the social service's
/// `social::revocation::TOKENS_TOPIC`; the two are checked equal by a test of the binary).
pub const TOKENS_TOPIC: &str = "instar:tokens";
/// Header naming the user.
pub const USER_HEADER: &str = "x-instar-user";
/// Header carrying the user's new token version (decimal).
pub const VERSION_HEADER: &str = "x-instar-token-version";
/// How long a heard version is remembered as the user's floor: tokens live an hour by default,
/// so a token signed before the revocation has expired by then.
pub const FLOOR_TTL: Duration = Duration::from_secs(2 * 3600);
/// Most floors remembered; past it the expired ones go, then the oldest half.
pub const MAX_FLOORS: usize = 100_000;

/// The ERROR message of a session closed, or a CONNECT refused, for a revoked token.
pub const REVOKED_MESSAGE: &str = "token revoked: sign in again";

#[derive(Debug)]
struct Live {
    session: u64,
    version: u64,
    revoke: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    /// User -> their signed-in sessions on this node.
    sessions: HashMap<String, Vec<Live>>,
    /// User -> the highest version heard, and when.
    floors: HashMap<String, (u64, Instant)>,
}

/// The node's live sessions by user and the versions heard on the bus.
#[derive(Debug, Default)]
pub struct Revocations {
    state: Mutex<State>,
    /// Live sessions closed because their token was revoked.
    pub sessions_closed: AtomicU64,
    /// CONNECTs refused for a revoked token.
    pub connects_refused: AtomicU64,
    /// Revocations heard on the bus.
    pub heard: AtomicU64,
}

impl Revocations {
    /// Enters a session of `user` whose token carries `version`; `revoke` is cancelled if that
    /// token is revoked later. False (nothing entered) when the token is revoked already.
    pub fn admit(&self, user: &str, session: u64, version: u64, revoke: CancellationToken) -> bool {
        let mut st = self.state.lock();
        if let Some((floor, at)) = st.floors.get(user)
            && at.elapsed() < FLOOR_TTL
            && version < *floor
        {
            return false;
        }
        st.sessions.entry(user.to_owned()).or_default().push(Live {
            session,
            version,
            revoke,
        });
        true
    }

    /// Counts a CONNECT refused for a revoked token.
    pub fn refused(&self) {
        self.connects_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets a session entered by [`Revocations::admit`].
    pub fn forget(&self, user: &str, session: u64) {
        let mut st = self.state.lock();
        if let Some(list) = st.sessions.get_mut(user) {
            list.retain(|l| l.session != session);
            if list.is_empty() {
                st.sessions.remove(user);
            }
        }
    }

    /// `user`'s tokens below `version` are revoked: closes their sessions here and remembers the
    /// floor. Returns the sessions closed.
    pub fn raised(&self, user: &str, version: u64) -> usize {
        self.heard.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock();
        let now = Instant::now();
        let floor = st
            .floors
            .get(user)
            .filter(|(_, at)| at.elapsed() < FLOOR_TTL)
            .map_or(0, |(v, _)| *v)
            .max(version);
        if st.floors.len() >= MAX_FLOORS && !st.floors.contains_key(user) {
            st.floors.retain(|_, (_, at)| at.elapsed() < FLOOR_TTL);
            if st.floors.len() >= MAX_FLOORS {
                let mut ages: Vec<Instant> = st.floors.values().map(|(_, at)| *at).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() / 2];
                st.floors.retain(|_, (_, at)| *at > cut);
            }
        }
        st.floors.insert(user.to_owned(), (floor, now));
        let mut closed = 0;
        if let Some(list) = st.sessions.get_mut(user) {
            list.retain(|l| {
                if l.version < floor {
                    l.revoke.cancel();
                    closed += 1;
                    false
                } else {
                    true
                }
            });
            if list.is_empty() {
                st.sessions.remove(user);
            }
        }
        drop(st);
        self.sessions_closed
            .fetch_add(closed as u64, Ordering::Relaxed);
        tracing::info!(%user, version = floor, closed, "tokens revoked");
        closed
    }

    /// Applies a [`TOKENS_TOPIC`] envelope; a malformed one is logged and ignored.
    pub fn apply(&self, env: &Envelope) {
        let header = |name: &str| {
            env.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        match (
            header(USER_HEADER).filter(|u| !u.is_empty()),
            header(VERSION_HEADER).and_then(|v| v.parse::<u64>().ok()),
        ) {
            (Some(user), Some(version)) => {
                self.raised(user, version);
            }
            _ => tracing::warn!("malformed token revocation ignored"),
        }
    }

    /// Signed-in sessions entered here (for tests and debugging).
    pub fn sessions(&self) -> usize {
        self.state.lock().sessions.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_sessions_close_and_older_tokens_stay_out() {
        let r = Revocations::default();
        let (old, new, other) = (
            CancellationToken::new(),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        assert!(r.admit("alice", 1, 0, old.clone()));
        assert!(r.admit("alice", 2, 1, new.clone()));
        assert!(r.admit("bob", 3, 0, other.clone()));
        assert_eq!(r.raised("alice", 1), 1);
        assert!(old.is_cancelled());
        assert!(!new.is_cancelled() && !other.is_cancelled());
        assert_eq!(r.sessions(), 2);
        // The floor keeps version-0 tokens out, a version-1 token still gets in.
        assert!(!r.admit("alice", 4, 0, CancellationToken::new()));
        assert!(r.admit("alice", 5, 1, CancellationToken::new()));
        // A late, lower version never lowers the floor.
        r.raised("alice", 0);
        assert!(!r.admit("alice", 6, 0, CancellationToken::new()));
        r.forget("alice", 2);
        r.forget("alice", 5);
        r.forget("bob", 3);
        assert_eq!(r.sessions(), 0);
    }

    #[test]
    fn envelopes_are_read_and_junk_ignored() {
        let r = Revocations::default();
        let t = CancellationToken::new();
        assert!(r.admit("carol", 1, 0, t.clone()));
        r.apply(&Envelope::new("/topic/x", "{}").with_header(USER_HEADER, "carol"));
        r.apply(
            &Envelope::new("/topic/x", "{}")
                .with_header(USER_HEADER, "carol")
                .with_header(VERSION_HEADER, "x"),
        );
        assert!(!t.is_cancelled());
        r.apply(
            &Envelope::new("/topic/x", "{}")
                .with_header(USER_HEADER, "carol")
                .with_header(VERSION_HEADER, "2"),
        );
        assert!(t.is_cancelled());
        assert_eq!(r.sessions_closed.load(Ordering::Relaxed), 1);
    }
}
