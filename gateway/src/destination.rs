//! The destination grammar clients may use, and the authorisation policy for topics.
//!
//! The original relayed any `/topic/**` or `/queue/**` string to RabbitMQ, so clients could subscribe to
//! wildcards (`/topic/#` tapped every room), publish forged chat messages to `/topic/chat.{id}`, push
//! notifications to `/user/{anyone}/queue/notify`, and read other sessions' guessable queues. Here the
//! grammar is closed:
//!
//! | frame     | accepted destinations                                                    |
//! |-----------|--------------------------------------------------------------------------|
//! | SEND      | `/app/<path>` only, forwarded to application handlers with our principal |
//! | SUBSCRIBE | `/user/queue/<name>` (the session's own user only) and `/topic/<name>` when the [`TopicPolicy`] allows it |
//!
//! Names are made of `[A-Za-z0-9_.-]` (plus `/` between segments for `/app` paths), never empty, never
//! longer than [`MAX_NAME`]; `*`, `#`, `>` and `%` (the wildcard and escape characters of the brokers we sit
//! in front of) are therefore impossible.

use async_trait::async_trait;

/// Longest destination name accepted after its prefix.
pub const MAX_NAME: usize = 200;

/// A parsed SUBSCRIBE destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubscribeTarget {
    /// `/topic/<name>`; `name` excludes the prefix.
    Topic(String),
    /// `/user/queue/<name>`: the session's own user queue.
    UserQueue(String),
}

impl SubscribeTarget {
    /// The destination string as the client wrote it (and as MESSAGE frames carry it).
    pub fn destination(&self) -> String {
        match self {
            Self::Topic(t) => format!("/topic/{t}"),
            Self::UserQueue(q) => format!("/user/queue/{q}"),
        }
    }
}

/// Why a destination was refused; the text goes into the ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("clients may SEND only to /app/** destinations, not '{0}'")]
    SendNotAllowed(String),
    #[error("clients may SUBSCRIBE only to /user/queue/** and /topic/** destinations, not '{0}'")]
    SubscribeNotAllowed(String),
    #[error("invalid destination name '{0}': use letters, digits, '.', '_' and '-' (no wildcards)")]
    InvalidName(String),
    #[error("not authorised to subscribe to '{0}'")]
    Forbidden(String),
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !s.starts_with('.')
        && !s.ends_with('.')
        && !s.contains("..")
}

/// Parses a SUBSCRIBE destination.
pub fn parse_subscribe(dest: &str) -> Result<SubscribeTarget, DestinationError> {
    if let Some(name) = dest.strip_prefix("/topic/") {
        if valid_segment(name) {
            return Ok(SubscribeTarget::Topic(name.to_owned()));
        }
        return Err(DestinationError::InvalidName(dest.to_owned()));
    }
    if let Some(name) = dest.strip_prefix("/user/queue/") {
        if valid_segment(name) {
            return Ok(SubscribeTarget::UserQueue(name.to_owned()));
        }
        return Err(DestinationError::InvalidName(dest.to_owned()));
    }
    Err(DestinationError::SubscribeNotAllowed(dest.to_owned()))
}

/// Checks a SEND destination: `/app/<seg>(/<seg>)*`.
pub fn check_send(dest: &str) -> Result<(), DestinationError> {
    let Some(path) = dest.strip_prefix("/app/") else {
        return Err(DestinationError::SendNotAllowed(dest.to_owned()));
    };
    if path.len() <= MAX_NAME && !path.is_empty() && path.split('/').all(valid_segment) {
        Ok(())
    } else {
        Err(DestinationError::InvalidName(dest.to_owned()))
    }
}

/// Decides which topics a user may subscribe to. The chat service plugs in room membership; the
/// embedded default allows a configured set of public prefixes.
#[async_trait]
pub trait TopicPolicy: Send + Sync + 'static {
    /// May `user` (None for an anonymous session, when those are allowed) receive `topic`?
    async fn may_subscribe(&self, user: Option<&str>, topic: &str) -> bool;

    /// Whether the answer for `topic` can change while a session lives (a membership that ends):
    /// such a SUBSCRIBE is checked again once registered, so a membership that ended between the
    /// first check and the registration (its revoke already handled) leaves nothing behind.
    fn rechecks(&self, topic: &str) -> bool {
        let _ = topic;
        false
    }

    /// The stored messages of `topic` with an id above `after`, oldest first, at most `limit`, for
    /// a SUBSCRIBE carrying [`LAST_ID_HEADER`](crate::replay::LAST_ID_HEADER) (see
    /// [`crate::replay`]). Topics without history refuse with [`ReplayError::Unsupported`].
    async fn replay(
        &self,
        user: &str,
        topic: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::replay::Replayed>, crate::replay::ReplayError> {
        let _ = (user, topic, after, limit);
        Err(crate::replay::ReplayError::Unsupported)
    }
}

/// Allows topics starting with one of a list of prefixes, to authenticated users (and to anonymous
/// ones when `anonymous` is set). Everything else is refused.
#[derive(Debug, Clone, Default)]
pub struct PrefixPolicy {
    prefixes: Vec<String>,
    anonymous: bool,
}

impl PrefixPolicy {
    pub fn new(prefixes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            prefixes: prefixes.into_iter().map(Into::into).collect(),
            anonymous: false,
        }
    }

    /// Let anonymous sessions subscribe to the same topics.
    pub fn allow_anonymous(mut self, yes: bool) -> Self {
        self.anonymous = yes;
        self
    }
}

#[async_trait]
impl TopicPolicy for PrefixPolicy {
    async fn may_subscribe(&self, user: Option<&str>, topic: &str) -> bool {
        (user.is_some() || self.anonymous) && self.prefixes.iter().any(|p| topic.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_grammar() {
        assert_eq!(
            parse_subscribe("/topic/chat.12"),
            Ok(SubscribeTarget::Topic("chat.12".into()))
        );
        assert_eq!(
            parse_subscribe("/user/queue/notify"),
            Ok(SubscribeTarget::UserQueue("notify".into()))
        );
        for bad in [
            "/topic/chat.*",
            "/topic/#",
            "/topic/chat/12",
            "/topic/",
            "/topic/a..b",
            "/topic/%2F",
            "/user/queue/",
            "/user/queue/a*",
        ] {
            assert!(
                matches!(parse_subscribe(bad), Err(DestinationError::InvalidName(_))),
                "{bad}"
            );
        }
        for bad in [
            "/queue/notify-userabc",
            "/user/alice/queue/notify",
            "/exchange/amq.topic/x",
            "/amq/queue/x",
            "/app/send",
            "chat.1",
        ] {
            assert!(
                matches!(
                    parse_subscribe(bad),
                    Err(DestinationError::SubscribeNotAllowed(_))
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn send_grammar() {
        assert!(check_send("/app/send").is_ok());
        assert!(check_send("/app/update/read").is_ok());
        assert!(matches!(
            check_send("/topic/chat.1"),
            Err(DestinationError::SendNotAllowed(_))
        ));
        assert!(matches!(
            check_send("/user/alice/queue/notify"),
            Err(DestinationError::SendNotAllowed(_))
        ));
        assert!(matches!(
            check_send("/queue/x"),
            Err(DestinationError::SendNotAllowed(_))
        ));
        assert!(matches!(
            check_send("/app/"),
            Err(DestinationError::InvalidName(_))
        ));
        assert!(matches!(
            check_send("/app/a//b"),
            Err(DestinationError::InvalidName(_))
        ));
        assert!(matches!(
            check_send("/app/a*"),
            Err(DestinationError::InvalidName(_))
        ));
    }

    #[tokio::test]
    async fn prefix_policy() {
        let p = PrefixPolicy::new(["public."]);
        assert!(p.may_subscribe(Some("u"), "public.news").await);
        assert!(!p.may_subscribe(Some("u"), "chat.1").await);
        assert!(!p.may_subscribe(None, "public.news").await);
        assert!(
            p.clone()
                .allow_anonymous(true)
                .may_subscribe(None, "public.news")
                .await
        );
    }
}
