//! The destination grammar clients may use, and the authorisation policy for topics.
//!
//! The original relayed any `/topic/**` or `/queue/**` string to RabbitMQ, so clients could subscribe to
//! wildcards (`/topic/#` tapped every room), publish forged chat messages to `/topic/chat.{id}`, push
//! notifications to `/user/{anyone}/queue/notify`, and read other sessions' guessable queues. Here the
//! grammar is closed:
//!
//! | frame     | accepted destinations                                                    |
//! |-----------|--------------------------------------------------------------------------|
//! | SEND      | `/app/<path>`, forwarded to application handlers with our principal; `/topic/<name>` and `/queue/<name>` only where a destination rule ([`crate::rules`]) lets the session send |
//! | SUBSCRIBE | `/user/queue/<name>` (the session's own user only); `/topic/<name>` when a rule or the [`TopicPolicy`] allows it; `/queue/<name>` and topic patterns only where a rule allows them |
//!
//! Names are made of `[A-Za-z0-9_.-]` (plus `/` between segments for `/app` paths), never empty, never
//! longer than [`MAX_NAME`]; `>` and `%` are impossible, and `*` and `#` only as whole words of a
//! topic pattern, which needs a rule with wildcards.

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
    /// `/queue/<name>`: a point-to-point queue (competing consumers); `name` excludes the prefix.
    Queue(String),
    /// `/topic/<pattern>` with `*` or `#` words.
    Pattern(String),
}

/// A parsed SEND destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SendTarget {
    /// `/app/<path>`: an application command (the whole destination).
    App(String),
    /// `/topic/<name>`.
    Topic(String),
    /// `/queue/<name>`.
    Queue(String),
}

impl SubscribeTarget {
    /// The destination string as the client wrote it (and as MESSAGE frames carry it).
    pub fn destination(&self) -> String {
        match self {
            Self::Topic(t) => format!("/topic/{t}"),
            Self::UserQueue(q) => format!("/user/queue/{q}"),
            Self::Queue(q) => format!("/queue/{q}"),
            Self::Pattern(p) => format!("/topic/{p}"),
        }
    }
}

/// Why a destination was refused; the text goes into the ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("clients may SEND only to /app/**, /topic/** and /queue/** destinations, not '{0}'")]
    SendNotAllowed(String),
    #[error(
        "clients may SUBSCRIBE only to /user/queue/**, /topic/** and /queue/** destinations, not '{0}'"
    )]
    SubscribeNotAllowed(String),
    #[error(
        "invalid destination name '{0}': use letters, digits, '.', '_' and '-' (and '*' or '#' as whole words of a topic pattern)"
    )]
    InvalidName(String),
    #[error("not authorised to send to '{0}'")]
    SendForbidden(String),
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

/// A topic pattern: `.`-separated words, each `*`, `#` or a plain word, with at least one
/// wildcard.
fn valid_pattern(s: &str) -> bool {
    s.len() <= MAX_NAME
        && s.contains(['*', '#'])
        && s.split('.').all(|w| {
            w == "*"
                || w == "#"
                || (!w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')))
        })
}

/// Parses a SUBSCRIBE destination.
pub fn parse_subscribe(dest: &str) -> Result<SubscribeTarget, DestinationError> {
    if let Some(name) = dest.strip_prefix("/topic/") {
        if valid_segment(name) {
            return Ok(SubscribeTarget::Topic(name.to_owned()));
        }
        if valid_pattern(name) {
            return Ok(SubscribeTarget::Pattern(name.to_owned()));
        }
        return Err(DestinationError::InvalidName(dest.to_owned()));
    }
    if let Some(name) = dest.strip_prefix("/queue/") {
        if valid_segment(name) {
            return Ok(SubscribeTarget::Queue(name.to_owned()));
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

/// Parses a SEND destination: `/app/<seg>(/<seg>)*`, `/topic/<name>` or `/queue/<name>` (whether
/// the session may use the last two is for the rules to say).
pub fn parse_send(dest: &str) -> Result<SendTarget, DestinationError> {
    for (prefix, make) in [
        ("/topic/", SendTarget::Topic as fn(String) -> SendTarget),
        ("/queue/", SendTarget::Queue),
    ] {
        if let Some(name) = dest.strip_prefix(prefix) {
            return if valid_segment(name) {
                Ok(make(name.to_owned()))
            } else {
                Err(DestinationError::InvalidName(dest.to_owned()))
            };
        }
    }
    check_send(dest).map(|()| SendTarget::App(dest.to_owned()))
}

/// Checks an application SEND destination: `/app/<seg>(/<seg>)*`.
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

    /// Whether `topic` belongs to the application (a chat room's topics): destination rules never
    /// open it, clients never publish to it, and wildcard subscriptions never receive it.
    fn owns(&self, topic: &str) -> bool {
        let _ = topic;
        false
    }

    /// Whether the answer for `topic` can change while a session lives (a membership that ends):
    /// such a SUBSCRIBE is checked again once registered, so a membership that ended between the
    /// first check and the registration (its revoke already handled) leaves nothing behind.
    fn rechecks(&self, topic: &str) -> bool {
        let _ = topic;
        false
    }

    /// `user`'s current token version (see [`crate::revocation`]), checked on CONNECT: a token
    /// signed at an older version is refused. `Ok(None)` when this node cannot tell (no
    /// database): only the revocations it heard on the bus are enforced then. An error refuses
    /// the CONNECT (fails closed).
    async fn token_version(&self, user: &str) -> Result<Option<u64>, String> {
        let _ = user;
        Ok(None)
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
        assert_eq!(
            parse_subscribe("/topic/chat.*"),
            Ok(SubscribeTarget::Pattern("chat.*".into()))
        );
        assert_eq!(
            parse_subscribe("/topic/#"),
            Ok(SubscribeTarget::Pattern("#".into()))
        );
        assert_eq!(
            parse_subscribe("/queue/jobs"),
            Ok(SubscribeTarget::Queue("jobs".into()))
        );
        for bad in [
            "/topic/chat*",
            "/topic/a.#b",
            "/queue/a*",
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
        assert_eq!(parse_send("/queue/x"), Ok(SendTarget::Queue("x".into())));
        assert_eq!(
            parse_send("/topic/x.y"),
            Ok(SendTarget::Topic("x.y".into()))
        );
        assert_eq!(
            parse_send("/app/send"),
            Ok(SendTarget::App("/app/send".into()))
        );
        assert!(matches!(
            parse_send("/topic/x.*"),
            Err(DestinationError::InvalidName(_))
        ));
        assert!(matches!(
            parse_send("/exchange/x"),
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
